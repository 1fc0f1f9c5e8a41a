//! The durable state of one node: the write-ahead journal, which is the source of truth, and
//! the LevelDB index of what is live, which can always be rebuilt from the journal.
//!
//! - [`record`]: the record and its frame (byte layout shared with replication).
//! - [`journal`]: segment files, the writer thread (group commit), recovery, readers.
//! - `index`: LevelDB on its own thread, its key layout and clean-shutdown marker.
//! - `state`: the live state records add up to, and segment garbage collection (no I/O).
//!
//! The store never knows about clients, protocols or ZooKeeper, and never reports a position
//! durable before it is fsynced (when fsync is on). The caller only appends; the store decides
//! by itself which segments hold nothing live any more and releases them (see `state` for the
//! rules). To keep long-lived items (a durable subscription, a message nobody consumes) from
//! pinning every later segment, the store may append records of its own right after a caller's
//! record that started a new segment: re-adds of durable subscriptions and repeats of earlier
//! removals, and carries of the producer audit out of segments about to be released. They
//! change nothing live; they only move what a rebuild needs forward.
//!
//! Files in the store directory: the segments `%016x.log`, `next-segment.tmp` (the next
//! segment being prepared), `journal.lock` (held while open), `journal.sealed` (present while
//! the journal runs with fsync: every finished segment was fsynced before the next was
//! written), `journal.damaged` (this copy lost records after a corrupt frame; removed once it
//! has caught up with a master), `index/` (LevelDB) and `index.state` (whether the index was
//! closed cleanly). The node adds `node.id` and `zk.registration` (its znode and session, so
//! that a restarted process removes the znode it left; a store that holds it refuses to start
//! standalone).

pub mod journal;
pub mod record;

mod index;
mod producers;
mod replica;
mod state;
mod sync;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use tracing::{error, info, warn};

pub use journal::{
    Appended, DurableCallback, Flusher, Frames, Journal, JournalOptions, JournalReader,
    JournalStats, Records, SegmentInfo, WriteClock, DAMAGED_FILE,
};
pub use record::{
    entry, BodyType, Entry, EpochStart, FrameError, Header, Message, MessageAdd, MessageKey,
    MessageRemove, Position, PropertyType, Record, SubscriptionAdd, SubscriptionRemove,
};

pub use producers::{ProducerAudit, MAX_AUDITED_PRODUCERS};
pub use replica::EpochMark;

use index::{Index, Trust};
use state::LiveState;

/// The LevelDB directory inside the store directory.
const INDEX_DIRECTORY: &str = "index";
/// The most entries one record holds (a message key holds the entry index in 16 bits).
pub const MAX_ENTRIES: usize = 1 << 16;
/// Index operations sent per message while replaying the journal at open.
const REPLAY_BATCH_OPS: usize = 10_000;
/// Stale segments forwarded at most per new segment (bounds the work of one append).
pub(crate) const MAX_FORWARDS_PER_SEGMENT: usize = 4;

#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub directory: PathBuf,
    /// Segment size: a new segment starts when the next frame would pass it.
    pub log_size: u64,
    /// fdatasync each batch before reporting it durable.
    pub fsync: bool,
    /// See [`JournalOptions::only_copy`].
    pub only_copy: bool,
    /// A cluster node's store: a segment is released only once the records that made it
    /// releasable are confirmed by the quorum ([`Store::hold_releases_until_confirmed`]), from
    /// the open on. What made a segment releasable at open may be an unconfirmed tail that a
    /// new master cuts, which would leave this copy without records it needs.
    pub hold_releases: bool,
    /// Bytes of message bodies [`Recovered`] carries; the bodies of later messages are left in
    /// the journal (see [`Recovered::bodies_on_disk_from`]). `u64::MAX`: all of them.
    pub recovered_bodies: u64,
}

/// For tests that reopen a store another test broker just dropped: the journal lock is freed
/// when the last thread holding that broker lets go of it (its journal writer may be in the
/// middle of a durable report), so opening is retried while it is still held.
#[cfg(test)]
pub(crate) fn open_when_unlocked(
    options: StoreOptions,
    mut on_durable: impl FnMut() -> DurableCallback,
) -> (Store, Recovered) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open(options.clone(), on_durable()) {
            Err(StoreError::Locked(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            result => return result.unwrap(),
        }
    }
}

/// What the store held at open.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recovered {
    /// Next append position.
    pub end: Position,
    /// Highest epoch seen in any record.
    pub epoch: u64,
    /// Live messages per queue (queues by name), in key order.
    pub queues: Vec<(String, Vec<(MessageKey, Message)>)>,
    /// Live durable subscriptions, by client id and subscription name.
    pub subscriptions: Vec<SubscriptionAdd>,
    /// Producer id -> highest stored sequence, for the producers the bounded audit remembers
    /// (see [`ProducerAudit`]), least recently stored first.
    pub producers: Vec<(String, u64)>,
    /// The first message whose body was left in the journal (past
    /// [`StoreOptions::recovered_bodies`]; the bodies are kept oldest first): from this key on,
    /// a message with an empty body here has its body, if any, in the journal, where
    /// a [`MessageReader`] reads it. A comparison rather than a set: a backlog of millions
    /// is looked up once per message at a takeover.
    pub bodies_on_disk_from: Option<MessageKey>,
}

/// Counters for logs and status pages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Journal segments holding data.
    pub segments: usize,
    /// Bytes in those segments.
    pub bytes: u64,
    /// First retained position.
    pub oldest: Position,
    /// Next append position.
    pub end: Position,
    /// Everything before this is written to the operating system.
    pub written: Position,
    /// Everything before this is durable.
    pub durable: Position,
    /// Group commits (batches that called fdatasync) since open.
    pub fsyncs: u64,
    /// Batches written since open.
    pub batches: u64,
    /// Segments released since open.
    pub released_segments: u64,
    /// Records the store appended on its own to let stale segments go (see the module docs).
    pub forwarded_records: u64,
    pub live_messages: u64,
    pub live_subscriptions: u64,
    /// The index was rebuilt from the journal at open.
    pub index_rebuilt: bool,
    /// Records replayed into the index at open (catch-up or rebuild).
    pub index_replayed: u64,
    /// The index failed since open (it will be rebuilt at the next open).
    pub index_failed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The OS error is in the message, not a `source` as well: a chain of causes printed in
    /// full (`{:#}`) would say it twice.
    #[error("{operation} {}: {error}", path.display())]
    Io {
        operation: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the store is in use by another process (lock {} is held)", .0.display())]
    Locked(PathBuf),
    #[error("invalid store options: {0}")]
    InvalidOptions(String),
    #[error("journal frame at position {position} in {}: {cause}", path.display())]
    Corrupt {
        path: PathBuf,
        position: Position,
        #[source]
        cause: FrameError,
    },
    #[error(
        "journal frame at position {position} in {} is corrupt ({cause}), and {after} bytes of \
         records follow it (in that segment or later ones): not a torn tail. A standalone store \
         does not cut records it confirmed: restore the store directory from a backup, or, to \
         start without the records from that frame on, truncate {} there and move the \
         segments after it out of the directory",
        path.display(),
        path.display()
    )]
    CorruptBeforeRecords {
        path: PathBuf,
        position: Position,
        cause: String,
        after: u64,
    },
    /// The journal ends before what the index, closed cleanly or left by a process of this
    /// boot, says it applied: its files lost records after they were written, not in a crash.
    #[error(
        "the journal in {} ends at {end}, but its index applied records up to {applied}, and \
         the journal ran with fsync and was not left torn by a crash: journal segment files \
         were deleted or truncated after they were written (a partial restore, say). A \
         standalone store does not start without records it confirmed: put the missing \
         segment files back, or, to start with what is left and lose the rest, delete \
         index.state in that directory (the index is then rebuilt from the journal)",
        directory.display()
    )]
    JournalShort {
        directory: PathBuf,
        applied: u64,
        end: u64,
    },
    #[error("frame offered for position {position} is invalid: {cause}")]
    InvalidFrame {
        position: Position,
        #[source]
        cause: FrameError,
    },
    #[error("position {position} is not retained (the oldest retained position is {oldest})")]
    NotRetained {
        position: Position,
        oldest: Position,
    },
    #[error("position {position} is not written yet (written up to {written})")]
    NotWritten {
        position: Position,
        written: Position,
    },
    #[error("frame for position {position} does not continue the journal, which ends at {end}")]
    NotContiguous { position: Position, end: Position },
    #[error("record of {len} bytes exceeds the frame limit of {limit} bytes")]
    RecordTooLarge { len: usize, limit: usize },
    #[error("record has {0} entries; a message key addresses at most 65536")]
    TooManyEntries(usize),
    #[error("journal segment at {start} cannot be released: {reason}")]
    NotReleasable {
        start: Position,
        reason: &'static str,
    },
    #[error("the journal failed and accepts no more appends: {0}")]
    JournalFailed(String),
    #[error("index {}: {cause}", path.display())]
    Index { path: PathBuf, cause: String },
    #[error("the index disagrees with the journal even after a rebuild: {0}")]
    Inconsistent(String),
}

impl StoreError {
    /// Whether opening the store again cannot succeed without a person: records the store
    /// will not cut follow a corrupt frame, the index disagrees with the journal even after
    /// a rebuild, or the directory is a file or not the node's user's to use.
    pub fn needs_operator(&self) -> bool {
        use std::io::ErrorKind::{AlreadyExists, NotADirectory, PermissionDenied};
        match self {
            StoreError::CorruptBeforeRecords { .. }
            | StoreError::Inconsistent(_)
            | StoreError::JournalShort { .. } => true,
            // The directory is a file, or the node's user may not use it.
            StoreError::Io { error, .. } => {
                matches!(
                    error.kind(),
                    AlreadyExists | NotADirectory | PermissionDenied
                )
            }
            _ => false,
        }
    }
}

/// The journal and the index of one node. `Send`; owned by the broker core behind its mutex.
pub struct Store {
    directory: PathBuf,
    journal: Journal,
    /// The journal's segment size (see [`Store::disk_bytes`]).
    log_size: u64,
    index: Option<Index>,
    state: LiveState,
    /// Largest record the store appends on its own.
    forward_limit: usize,
    forwarded_records: u64,
    /// On a slave: the forward its master appends next (planned here exactly as the master
    /// planned it), and how many more the master may append after it (see `replica`).
    awaiting_forward: Option<(state::Forward, usize)>,
    /// In a cluster (see [`Store::hold_releases_until_confirmed`]): the quorum-confirmed
    /// position as last told, and the segments found releasable, each with the journal end
    /// whose records made it so. `None`: segments are released as soon as they may be.
    confirmed: Option<Position>,
    held_releases: std::collections::VecDeque<(Position, Vec<Position>)>,
    index_rebuilt: bool,
    index_replayed: u64,
    index_trouble_logged: bool,
    closed: bool,
    /// Where each epoch starts in the journal (replication).
    epochs: replica::Epochs,
    recovered_bodies: u64,
}

/// Why opening the index from its contents did not work out.
enum Attempt {
    /// The index is unusable (the reason): rebuild it from the journal.
    Rebuild(String),
    /// The index applied the journal further than it now reaches: rebuild it, unless the
    /// journal cannot have lost those records in a crash (see [`StoreError::JournalShort`]).
    Short {
        applied: u64,
        end: u64,
    },
    Fatal(StoreError),
}

/// Why an index that applied the journal past its end is rebuilt.
fn short_reason(applied: u64, end: u64) -> String {
    format!(
        "the index applied the journal up to {applied}, past its end {end} (the journal tail \
         was lost or truncated)"
    )
}

impl Attempt {
    /// The error when no rebuild is left to try.
    fn into_error(self) -> StoreError {
        match self {
            Attempt::Rebuild(reason) => StoreError::Inconsistent(reason),
            Attempt::Short { applied, end } => StoreError::Inconsistent(short_reason(applied, end)),
            Attempt::Fatal(error) => error,
        }
    }

    /// A journal read error: I/O errors are fatal, anything else means the index pointed at
    /// something the journal does not hold.
    fn from_read(error: StoreError) -> Attempt {
        match error {
            StoreError::Io { .. } => Attempt::Fatal(error),
            other => Attempt::Rebuild(other.to_string()),
        }
    }
}

/// Disk taken by `segments` retained segments holding `bytes`: each is written full of zeros
/// before use, so it takes at least `log_size` (see [`Store::disk_bytes`]).
fn disk_use(segments: usize, bytes: u64, log_size: u64) -> u64 {
    bytes.max(segments as u64 * log_size)
}

/// Reads a store's figures without the store (see [`Store::gauge`]). Cheap to clone.
#[derive(Clone)]
pub struct StoreGauge {
    reader: JournalReader,
    log_size: u64,
}

/// What a [`StoreGauge`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreFigures {
    /// Everything before this is written.
    pub journal_end: u64,
    /// Bytes of the retained segments.
    pub journal_retained: u64,
    /// As [`Store::disk_bytes`].
    pub disk_bytes: u64,
}

impl StoreGauge {
    pub fn figures(&self) -> StoreFigures {
        let retained = self.reader.retained();
        StoreFigures {
            journal_end: retained.written.0,
            journal_retained: retained.bytes,
            disk_bytes: disk_use(retained.segments, retained.bytes, self.log_size),
        }
    }
}

/// The state, what is live, records replayed, and where replay started.
type Opened = (LiveState, Recovered, u64, Position);

impl Store {
    /// Opens the store in `options.directory` (creating it if needed): recovers the journal,
    /// catches the index up (or rebuilds it), and returns what is live. `on_durable` is called
    /// on the journal's writer thread with each new durable end; at open everything before
    /// `Recovered::end` is durable. It must not block on anything that waits for the store.
    pub fn open(
        options: StoreOptions,
        on_durable: DurableCallback,
    ) -> Result<(Store, Recovered), StoreError> {
        // Whether the journal ran with fsync (see `journal::SEALED_FILE`), as it was left.
        let sealed = options.directory.join(journal::SEALED_FILE).exists();
        let journal = Journal::open(
            JournalOptions {
                directory: options.directory.clone(),
                log_size: options.log_size,
                fsync: options.fsync,
                only_copy: options.only_copy,
            },
            on_durable,
        )?;
        let directory = options.directory;
        let trust = index::read_marker(&directory);
        index::mark_open(&directory)?;
        let written = journal.reader();
        let (index, wiped) = Index::open(
            directory.join(INDEX_DIRECTORY),
            Box::new(move || written.written()),
        )?;
        let mut rebuild = match (wiped, trust) {
            (Some(reason), _) | (None, Trust::Untrusted(reason)) => Some(reason),
            (None, Trust::Clean | Trust::SameBoot) => None,
        };
        let reader = journal.reader();
        let segments: Vec<(Position, Position)> = journal
            .segments()
            .iter()
            .map(|s| (s.start, s.end))
            .collect();
        let end = journal.end();
        // A journal without records (a new store) gives an empty index: nothing to report.
        let journal_empty = segments.iter().all(|(start, end)| start == end);
        let (mut state, recovered, replayed, replayed_from) = loop {
            let attempt = match &rebuild {
                None => catch_up(&index, &reader, &segments, end, options.recovered_bodies),
                Some(reason) => {
                    if !journal_empty {
                        warn!(
                            directory = %directory.display(),
                            "rebuilding the index from the journal: {reason}"
                        );
                    }
                    index.wipe()?;
                    rebuild_all(&index, &reader, &segments, end, options.recovered_bodies)
                }
            };
            match attempt {
                Ok(opened) => break opened,
                Err(Attempt::Short { applied, end }) if options.only_copy && sealed => {
                    return Err(StoreError::JournalShort {
                        directory: directory.clone(),
                        applied,
                        end,
                    })
                }
                Err(Attempt::Short { applied, end }) if rebuild.is_none() => {
                    rebuild = Some(short_reason(applied, end))
                }
                Err(Attempt::Rebuild(reason)) if rebuild.is_none() => rebuild = Some(reason),
                Err(attempt) => return Err(attempt.into_error()),
            }
        };

        // Removals held by segments that still depend on older ones are not in the index; read
        // those segments again (few: forwarding keeps them few).
        for (start, segment_end) in state.to_rescan(replayed_from, end) {
            let records = reader
                .records(start, segment_end)
                .map(|item| item.map(|(position, record, _)| (position, record)))
                .collect::<Result<Vec<_>, _>>()?;
            state.rescan(start, &records);
        }

        let epochs = replica::Epochs::scan(&journal)?;
        let mut store = Store {
            directory,
            journal,
            log_size: options.log_size,
            index: Some(index),
            state: LiveState::default(),
            forward_limit: (options.log_size / 2).clamp(64, 16 << 20) as usize,
            forwarded_records: 0,
            awaiting_forward: None,
            confirmed: options.hold_releases.then_some(Position(0)),
            held_releases: std::collections::VecDeque::new(),
            index_rebuilt: rebuild.is_some() && !journal_empty,
            index_replayed: replayed,
            index_trouble_logged: false,
            closed: false,
            epochs,
            recovered_bodies: options.recovered_bodies,
        };
        let mut ops = Vec::new();
        state.consider_all();
        store.state = state;
        store.release_ready(&mut ops);
        store.send_to_index(ops, end);
        let stats = store.stats();
        info!(
            directory = %store.directory.display(),
            end = %end,
            epoch = recovered.epoch,
            segments = stats.segments,
            bytes = stats.bytes,
            live_messages = stats.live_messages,
            live_subscriptions = stats.live_subscriptions,
            index_rebuilt = stats.index_rebuilt,
            index_replayed = stats.index_replayed,
            "store opened"
        );
        Ok((store, recovered))
    }

    /// Appends `record` and returns its position. Cheap: encodes and hands the bytes to the
    /// journal's writer thread; never blocks on I/O. The record is durable once the durable
    /// callback reports an end past it. [`Store::end`] afterwards may lie past this record: when
    /// the record started a new segment the store may append one of its own right behind it
    /// (see the module docs); waiting for that end is harmless (same batch).
    pub fn append(&mut self, record: &Record) -> Result<Position, StoreError> {
        self.append_waking(record, true)
    }

    /// Like [`Store::append`], but the journal's writer thread is not woken: the caller must
    /// run [`Flusher::flush`] of [`Store::flusher`] once it holds no lock the durable callback
    /// takes. A synchronous sender then writes its own record, saving two thread hand-offs.
    pub fn append_deferred(&mut self, record: &Record) -> Result<Position, StoreError> {
        self.append_waking(record, false)
    }

    /// Writes what [`Store::append_deferred`] queued.
    pub fn flusher(&self) -> Flusher {
        self.journal.flusher()
    }

    /// Leaves what [`Store::append_deferred`] queued to the journal's writer thread.
    pub fn wake_writer(&self) {
        self.journal.wake_writer();
    }

    fn append_waking(&mut self, record: &Record, wake: bool) -> Result<Position, StoreError> {
        if record.entries.len() > MAX_ENTRIES {
            return Err(StoreError::TooManyEntries(record.entries.len()));
        }
        let mut ops = Vec::new();
        let appended = self.append_record(record, wake, &mut ops)?;
        if appended.new_segment {
            self.forward_stale(&mut ops);
        }
        self.release_ready(&mut ops);
        self.carry_producers(wake, &mut ops);
        self.send_to_index(ops, self.journal.end());
        Ok(appended.position)
    }

    /// Appends the records that carry forward the producer audit entries of the segments
    /// releasable but for them (see `state`), then releases those segments. A carry that
    /// opens a segment is followed by forwards, as any record that does (a slave plans them
    /// after it too).
    fn carry_producers(&mut self, wake: bool, ops: &mut Vec<index::IndexOp>) {
        let mut carried = false;
        // Each carry moves at least one producer out of those segments: bounded by the audit.
        for _ in 0..MAX_AUDITED_PRODUCERS {
            let Some(record) = self.state.plan_carry(self.forward_limit) else {
                break;
            };
            match self.append_record(&record, wake, ops) {
                Ok(appended) => {
                    carried = true;
                    if appended.new_segment {
                        self.forward_stale(ops);
                    }
                }
                Err(e) => {
                    error!("carrying the producer audit forward: {e}");
                    break;
                }
            }
        }
        if carried {
            self.release_ready(ops);
        }
    }

    fn append_record(
        &mut self,
        record: &Record,
        wake: bool,
        ops: &mut Vec<index::IndexOp>,
    ) -> Result<Appended, StoreError> {
        let appended = if wake {
            self.journal.append(record)?
        } else {
            self.journal.append_deferred(record)?
        };
        self.epochs.note(appended.position, record.epoch);
        if appended.new_segment {
            self.state.segment_started(appended.position);
        }
        self.state.apply(appended.position, record, ops);
        Ok(appended)
    }

    /// Carries the obligations of the oldest stale segments into the current one.
    fn forward_stale(&mut self, ops: &mut Vec<index::IndexOp>) {
        let mut left = MAX_FORWARDS_PER_SEGMENT;
        while let Some(forward) = self.next_forward(&mut left, ops) {
            match self.append_record(&forward.record, true, ops) {
                Ok(appended) => {
                    self.forwarded_records += 1;
                    self.state.forwarded(forward, Some(appended.position), ops);
                }
                Err(e) => {
                    error!("forwarding journal segment at {}: {e}", forward.from);
                    return;
                }
            }
        }
    }

    /// Plans forwards (at most `left` more): one without entries frees its segment at once;
    /// the first with entries is returned, for the master to append (or a slave to await).
    fn next_forward(
        &mut self,
        left: &mut usize,
        ops: &mut Vec<index::IndexOp>,
    ) -> Option<state::Forward> {
        while *left > 0 {
            *left -= 1;
            let forward = self.state.plan_forward(self.forward_limit)?;
            if !forward.record.entries.is_empty() {
                return Some(forward);
            }
            self.state.forwarded(forward, None, ops);
        }
        None
    }

    /// Releases the segments that hold nothing needed any more. The journal deletes them once
    /// everything appended so far is durable. In a cluster, only once the records that made
    /// them releasable are confirmed (see [`Store::hold_releases_until_confirmed`]).
    fn release_ready(&mut self, ops: &mut Vec<index::IndexOp>) {
        let ready = self.state.take_releasable(ops);
        if self.confirmed.is_none() {
            for start in ready {
                self.release_segment(start);
            }
            return;
        }
        if !ready.is_empty() {
            self.held_releases.push_back((self.journal.end(), ready));
        }
        self.release_confirmed();
    }

    fn release_segment(&mut self, start: Position) {
        if let Err(e) = self.journal.release(start) {
            error!("releasing journal segment at {start}: {e}");
        }
    }

    /// From now on, a segment is released only once the records that made it releasable are
    /// confirmed by the quorum ([`Store::set_confirmed`]). A node of a cluster needs this: a
    /// record beyond the confirmed position may be cut when a new master is elected (its tail
    /// diverges), and a segment released because of it (an ack's removal) would then be gone
    /// with messages the cut brought back to life.
    pub fn hold_releases_until_confirmed(&mut self) {
        self.confirmed.get_or_insert(Position(0));
    }

    /// The quorum confirmed every record before `position`. Only notes it (it may be called
    /// on the journal's writer thread); [`Store::release_confirmed`], or the next append,
    /// releases what it allows.
    pub fn set_confirmed(&mut self, position: Position) {
        if let Some(confirmed) = &mut self.confirmed {
            *confirmed = (*confirmed).max(position);
        }
    }

    /// Releases the held segments whose records are now confirmed.
    pub fn release_confirmed(&mut self) {
        let Some(confirmed) = self.confirmed else {
            return;
        };
        while self
            .held_releases
            .front()
            .is_some_and(|(trigger, _)| *trigger <= confirmed)
        {
            let (_, starts) = self.held_releases.pop_front().expect("checked non-empty");
            for start in starts {
                self.release_segment(start);
            }
        }
    }

    /// Queues index operations of records up to `end`: the index applies them once the journal
    /// has written that far (so it never runs ahead of the journal).
    fn send_to_index(&mut self, ops: Vec<index::IndexOp>, end: Position) {
        let sent = self
            .index
            .as_ref()
            .is_some_and(|index| index.queue(ops, end));
        if !sent && !self.index_trouble_logged {
            self.index_trouble_logged = true;
            error!(
                directory = %self.directory.display(),
                "the index is no longer updated; it will be rebuilt from the journal at the next start"
            );
        }
    }

    /// Next append position.
    pub fn end(&self) -> Position {
        self.journal.end()
    }

    /// What this copy lost, if it is marked damaged (a cluster node's journal cut after a
    /// corrupt frame): it may lack records it confirmed, until it is refilled.
    pub fn damage(&self) -> Option<String> {
        self.journal.damage()
    }

    /// Whether this copy is marked damaged, now and as it changes.
    pub fn damage_watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.journal.damage_watch()
    }

    /// Removes the damage mark once this copy holds everything a whole copy holds (see
    /// [`crate::replication`]).
    pub fn clear_damage(&self) -> Result<(), StoreError> {
        self.journal.clear_damage()
    }

    /// A reader of the journal (replication catch-up, tools).
    pub fn reader(&self) -> JournalReader {
        self.journal.reader()
    }

    /// The bytes the retained journal segments take on disk: each is written full of zeros
    /// before use, so the current one (and a finished one not yet cut back at an open) takes
    /// `log_size` however little it holds. This is what `store_limit` is compared with.
    /// Counted from the journal's statistics: a segment whose release is requested counts
    /// until the journal's writer has deleted it.
    pub fn disk_bytes(&self) -> u64 {
        let journal = self.journal.stats();
        disk_use(journal.segments, journal.bytes, self.log_size)
    }

    /// The journal writer's clock, for the disk watchdog (`crate::watchdog`).
    pub fn write_clock(&self) -> WriteClock {
        self.journal.write_clock()
    }

    /// A handle that reads this store's disk use and written end from any thread, for the
    /// status of a node whose store a replication task holds.
    pub fn gauge(&self) -> StoreGauge {
        StoreGauge {
            reader: self.journal.reader(),
            log_size: self.log_size,
        }
    }

    /// The journal's segment size.
    pub fn log_size(&self) -> u64 {
        self.log_size
    }

    /// The store directory.
    pub fn directory(&self) -> &std::path::Path {
        &self.directory
    }

    /// Free space the store could still take on its directory's filesystem (what an
    /// unprivileged process may use), if the system tells.
    pub fn available_space(&self) -> Option<u64> {
        fs2::available_space(&self.directory).ok()
    }

    pub fn stats(&self) -> StoreStats {
        let journal = self.journal.stats();
        StoreStats {
            segments: journal.segments,
            bytes: journal.bytes,
            oldest: journal.oldest,
            end: journal.end,
            written: journal.written,
            durable: journal.durable,
            fsyncs: journal.fsyncs,
            batches: journal.batches,
            released_segments: journal.released,
            forwarded_records: self.forwarded_records,
            live_messages: self.state.live_messages(),
            live_subscriptions: self.state.live_subscriptions(),
            index_rebuilt: self.index_rebuilt,
            index_replayed: self.index_replayed,
            index_failed: self.index.as_ref().is_none_or(|i| i.failed()),
        }
    }

    /// Writes and syncs everything appended, closes the index cleanly (so the next open trusts
    /// it without a rebuild) and releases the directory. Dropping the store does the same but
    /// only logs failures. Waits for the writer thread, which calls the durable callback: do
    /// not call this while holding a lock that callback takes.
    pub fn close(mut self) -> Result<(), StoreError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), StoreError> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        let journal = self.journal.shutdown();
        let index = match self.index.take() {
            Some(index) => index.close(),
            None => Ok(()),
        };
        if index.is_ok() {
            index::mark_clean(&self.directory)?;
        }
        journal.and(index)
    }

    /// Why the journal stopped accepting appends, if it did. A failure of the writer thread
    /// reaches an appender only at its next append; a caller with confirmations waiting polls
    /// this.
    pub fn failure(&self) -> Option<String> {
        self.journal.failure().map(|e| e.to_string())
    }

    /// Records whose index operations wait for the index thread (tests).
    #[cfg(test)]
    pub(crate) fn index_queued(&self) -> usize {
        self.index.as_ref().map_or(0, Index::queued)
    }

    #[cfg(test)]
    pub(crate) fn hold_journal(&self) -> std::sync::mpsc::Sender<()> {
        self.journal.hold_writer()
    }

    /// The journal's writer fails (as on a full disk) at the next command it handles once
    /// `hold` (from [`Store::hold_journal`]) is dropped (tests).
    #[cfg(test)]
    pub(crate) fn fail_journal_after_hold(&self) {
        self.journal.crash_after_hold();
    }

    /// Stops the store as `kill -9` would (tests): the index thread stops with its queue, and
    /// the journal's writer drops whatever `hold` (from [`Store::hold_journal`]) kept it from
    /// writing; the index is not marked clean.
    #[cfg(test)]
    pub(crate) fn simulate_crash(mut self, hold: std::sync::mpsc::Sender<()>) {
        self.closed = true;
        if let Some(index) = self.index.take() {
            index.crash();
        }
        self.journal.crash_after_hold();
        drop(hold);
        let _ = self.journal.shutdown();
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            warn!(directory = %self.directory.display(), "closing the store: {e}");
        }
    }
}

/// Loads the index, replays the journal from the position it applied, and reads what is live.
fn catch_up(
    index: &Index,
    reader: &JournalReader,
    segments: &[(Position, Position)],
    end: Position,
    bodies: u64,
) -> Result<Opened, Attempt> {
    let snapshot = index
        .load()
        .map_err(|e| Attempt::Rebuild(format!("reading the index: {e}")))?;
    if let Some(problem) = snapshot.problems.first() {
        return Err(Attempt::Rebuild(format!("the index holds an {problem}")));
    }
    match snapshot.version {
        Some(index::INDEX_VERSION) => {}
        Some(version) => {
            return Err(Attempt::Rebuild(format!(
                "the index has format {version}, this build uses {}",
                index::INDEX_VERSION
            )))
        }
        None => return Err(Attempt::Rebuild("the index is empty".into())),
    }
    let Some(applied) = snapshot.end else {
        return Err(Attempt::Rebuild(
            "the index does not say which journal position it applied".into(),
        ));
    };
    let oldest = segments.first().map(|s| s.0).unwrap_or_default();
    if applied > end {
        return Err(Attempt::Short {
            applied: applied.0,
            end: end.0,
        });
    }
    if applied < oldest {
        return Err(Attempt::Rebuild(format!(
            "the index applied the journal up to {applied}, before the oldest retained segment \
             at {oldest}"
        )));
    }
    let mut ops = Vec::new();
    let mut state = LiveState::from_snapshot(segments, snapshot, &mut ops);
    if !ops.is_empty() {
        index.apply(ops, applied);
    }
    let replayed = replay(&mut state, index, reader, segments, applied)?;
    if replayed > 0 {
        info!("caught the index up from {applied} to {end} ({replayed} records)");
    }
    let recovered = build_recovered(&state, reader, end, bodies)?;
    Ok((state, recovered, replayed, applied))
}

/// Builds the index afresh from the oldest retained segment.
fn rebuild_all(
    index: &Index,
    reader: &JournalReader,
    segments: &[(Position, Position)],
    end: Position,
    bodies: u64,
) -> Result<Opened, Attempt> {
    let mut state = LiveState::new(segments);
    let oldest = segments.first().map(|s| s.0).unwrap_or_default();
    let replayed = replay(&mut state, index, reader, segments, oldest)?;
    let recovered = build_recovered(&state, reader, end, bodies)?;
    if replayed > 0 {
        info!("rebuilt the index from {oldest} to {end} ({replayed} records)");
    }
    Ok((state, recovered, replayed, oldest))
}

/// Applies the records of the retained segments from `from` to the journal end to `state` and
/// the index. Released ranges are skipped: they held nothing a rebuild needs (see `state`);
/// whatever an index still names in them is caught by [`LiveState::check_placed`].
fn replay(
    state: &mut LiveState,
    index: &Index,
    reader: &JournalReader,
    segments: &[(Position, Position)],
    from: Position,
) -> Result<u64, Attempt> {
    let mut ops = Vec::new();
    let mut replayed = 0;
    for &(start, end) in segments.iter().filter(|(_, end)| *end > from) {
        let mut at = start.max(from);
        for item in reader.records(at, end) {
            let (position, record, len) = item.map_err(Attempt::from_read)?;
            state.apply(position, &record, &mut ops);
            replayed += 1;
            at = Position(position.0 + len);
            if ops.len() >= REPLAY_BATCH_OPS {
                index.apply(std::mem::take(&mut ops), at);
            }
        }
        if at != end {
            return Err(Attempt::Rebuild(format!(
                "replaying the journal segment {start}..{end} stopped at {at}"
            )));
        }
    }
    let end = segments.last().map(|s| s.1).unwrap_or(from).max(from);
    if replayed > 0 || !ops.is_empty() {
        index.apply(ops, end);
    }
    Ok(replayed)
}

impl Store {
    /// The state a broker core starts from, taken from this open store rather than by closing
    /// and reopening it (a slave becoming master): fsync is set to `fsync` (which also waits
    /// until everything appended is written), then every live message is read back.
    pub fn recover_open(&mut self, fsync: bool) -> Result<Recovered, StoreError> {
        self.journal.set_fsync(fsync)?;
        let reader = self.journal.reader();
        let end = self.journal.end();
        build_recovered(&self.state, &reader, end, self.recovered_bodies)
            .map_err(Attempt::into_error)
    }

    /// Turns fsync on or off for what is appended from now on (a replicated node changing
    /// role); returns once everything appended before is written.
    pub fn set_fsync(&mut self, fsync: bool) -> Result<(), StoreError> {
        self.journal.set_fsync(fsync)
    }

    /// Reads stored messages without the store (so without a lock around it).
    pub fn message_reader(&self) -> MessageReader {
        MessageReader {
            reader: self.journal.reader(),
            last: None,
        }
    }
}

/// Reads stored messages back from the journal. It keeps the last record it decoded, so
/// messages read in order (a browse's page) decode each record once, however many messages
/// it holds.
pub struct MessageReader {
    reader: JournalReader,
    last: Option<(Position, Record)>,
}

impl MessageReader {
    /// Reads back the message `key` names (a live message added to some queue), body
    /// included.
    pub fn read(&mut self, key: MessageKey) -> Result<Message, StoreError> {
        let position = key.position();
        let record = match &mut self.last {
            Some((at, record)) if *at == position => record,
            last => &mut last.insert((position, self.reader.read(position)?)).1,
        };
        match added_by(record, key) {
            Some(add) => Ok(add.message.clone().unwrap_or_default()),
            None => Err(StoreError::Inconsistent(format!(
                "message {} is not entry {} of the record at {}",
                key.0,
                key.entry_index(),
                key.position()
            ))),
        }
    }
}

/// The entry of `record` (read at `key`'s position) that added the message `key` names.
fn added_by(record: &mut Record, key: MessageKey) -> Option<&mut MessageAdd> {
    match record.entries.get_mut(key.entry_index())?.kind.as_mut()? {
        entry::Kind::Add(add) => Some(add),
        _ => None,
    }
}

/// Reads every live message from the journal (each record once, in journal order).
fn build_recovered(
    state: &LiveState,
    reader: &JournalReader,
    end: Position,
    bodies: u64,
) -> Result<Recovered, Attempt> {
    let mut bodies_left = bodies;
    let mut bodies_on_disk_from = None;
    state.check_placed().map_err(Attempt::Rebuild)?;
    let live = state.queues();
    let mut wanted: Vec<(MessageKey, usize)> =
        Vec::with_capacity(live.iter().map(|(_, keys)| keys.len()).sum());
    for (queue, (_, keys)) in live.iter().enumerate() {
        wanted.extend(keys.iter().map(|&key| (key, queue)));
    }
    wanted.sort_unstable();
    let mut queues: Vec<(String, Vec<(MessageKey, Message)>)> = live
        .iter()
        .map(|(name, keys)| (name.to_string(), Vec::with_capacity(keys.len())))
        .collect();
    let mut cached: Option<(Position, Record)> = None;
    // Ascending positions, read through one read-ahead buffer: a backlog of small messages
    // lies close together in the journal.
    let mut frames = reader.frames(Position(0), end);
    let mut wanted = wanted.into_iter().peekable();
    while let Some((key, queue)) = wanted.next() {
        let position = key.position();
        let record = match &mut cached {
            Some((at, record)) if *at == position => record,
            _ => {
                let record = frames.record_at(position).map_err(Attempt::from_read)?;
                &mut cached.insert((position, record)).1
            }
        };
        // The last queue that wants this message (the keys are sorted) takes it; others copy.
        let last = wanted.peek().is_none_or(|(next, _)| *next != key);
        let name = &queues[queue].0;
        let message = match added_by(record, key) {
            Some(add) if add.queues.iter().any(|q| q == name) => {
                let mut message = if last {
                    add.message.take()
                } else {
                    add.message.clone()
                }
                .unwrap_or_default();
                // Oldest first (the keys are sorted): the bodies kept are the first delivered.
                let len = message.body.len() as u64;
                if len <= bodies_left {
                    bodies_left -= len;
                } else {
                    bodies_left = 0;
                    message.body = Default::default();
                    bodies_on_disk_from.get_or_insert(key);
                }
                message
            }
            _ => {
                return Err(Attempt::Rebuild(format!(
                    "the index lists message {} on {name}, but entry {} of the record at \
                     {position} does not add it there",
                    key.0,
                    key.entry_index()
                )))
            }
        };
        queues[queue].1.push((key, message));
    }
    Ok(Recovered {
        end,
        epoch: state.epoch(),
        queues,
        subscriptions: state.subscriptions(),
        producers: state.producers(),
        bodies_on_disk_from,
    })
}
