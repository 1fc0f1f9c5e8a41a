//! The write-ahead journal: append-only segment files of framed records, the source of truth.
//!
//! Owns the segment files `<first position as 16 hex digits>.log` in the store directory and the
//! `journal.lock` file that keeps a second journal out (another process, or a reopen in this
//! one before the writer thread has ended: the lock is the thread's). Positions are assigned synchronously by
//! [`Journal`] (the caller's handle); the bytes go to a queue that one writer thread (or, for
//! inline batches, the appending caller) writes: one write per segment for each batch, one
//! `fdatasync` per batch (group commit), then the durable end is reported through the callback
//! given at open.
//!
//! It must never: report a position durable before its bytes are fsynced (when fsync is on);
//! retry a failed write or fsync (the journal stops instead); interpret records beyond checking
//! that their frames decode; let a reader see bytes that are not yet written.
//!
//! This module holds the caller's handle ([`Journal`], [`Flusher`]) and the state it shares
//! with the writer and the readers. Submodules: `segment` (file names, preallocation, the spare
//! segment, fsyncs of segments and of the directory, Windows I/O), `recovery` (the scan at
//! open), `writer` (batches, rotation, releases, truncation, reset), `reader`
//! ([`JournalReader`], [`Frames`], [`Records`]) and `tests`.
//!
//! Preallocation: every segment is filled with `log_size` bytes of written zeros before it
//! becomes the current one, and frames overwrite it in place, so a batch's `fdatasync` writes
//! only data blocks: no new file size, and no unwritten extents to convert (which is what a
//! `fallocate`d file costs; on this project's ext4 disks an overwrite + `fdatasync` takes ~87 µs
//! against ~139 µs for an append or a `fallocate`d file). The next segment is prepared ahead by a
//! background thread as `next-segment.tmp` and linked into place at rotation. The data of
//! a segment therefore ends at its first all-zero frame header (no frame has an empty body, see
//! [`super::record`]), or at the end of the file; everything after that header must be zero, or
//! the tail counts as torn. A segment that stops being the current one is cut to the length of
//! its data.
//!
//! Direct writes: a slave copying its master's frames with fsync off would otherwise wake this
//! thread for every message and be woken back, two thread hand-offs for a `pwrite` into the
//! page cache. Between [`Journal::begin_direct`] and [`Journal::end_direct`] its frames are
//! instead written on the caller's thread, under the same mutex the writer thread holds for a
//! batch, and only when no command is queued for the thread, so the order of writes is the
//! order of appends either way. With fsync on, or on the append path of a master (whose
//! durable callback takes the broker core's lock), it is never used.
//!
//! Inline batches: a synchronous sender's append would wake this thread, which writes and
//! fsyncs and then wakes the sender's task: two thread hand-offs, which on this project's
//! 2-vCPU machines cost about as much as the write itself. [`Journal::append_deferred`] queues
//! without waking the thread; the caller then runs [`Flusher::flush`] (after releasing the
//! broker core's lock, which the durable callback takes). If no batch is being written the
//! caller writes, fsyncs and reports the queue itself, under the writer's mutex; otherwise the
//! thread or caller writing the current batch takes the queue when it is done. Commands leave
//! the queue only under that mutex, so they are written in queue order whoever writes them.
//! The price: the caller's thread (a runtime worker) blocks for one batch's `fdatasync`; should
//! the disk stall, that worker's other tasks wait with it (the runtime's other workers steal
//! what is queued), where the writer thread alone used to wait.
//!
//! Released segments: a segment in the middle of the journal that the store releases is
//! truncated to zero bytes but keeps its name (a *tombstone*), so that recovery can tell a
//! released range from a lost file: a zero-length file that is not the last one covers the
//! positions up to the next file. Tombstones at the front, or right after another tombstone,
//! carry no information and are deleted. Only a zero-length file is a tombstone: a segment of
//! zeros before the next one is data lost, and recovery treats it as a corrupt frame.

mod clock;
mod reader;
mod recovery;
mod segment;
#[cfg(test)]
mod tests;
mod writer;

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, PoisonError, RwLock, TryLockError};
use std::thread::JoinHandle;

use bytes::{Bytes, BytesMut};
use tracing::{error, warn};

use super::record::{
    check_frame, encode_frame, encoded_body_len, FrameError, Position, Record, MAX_RECORD_LEN,
};
use super::StoreError;
pub use clock::WriteClock;
pub use reader::{Frames, JournalReader, Records};
use recovery::recover;
pub use recovery::DAMAGED_FILE;
#[cfg(test)]
pub(crate) use recovery::{data_len, listed_data_len};
use segment::{preallocate, segment_path, sync_segments, SPARE_FILE};
pub use segment::{segment_file_name, SEALED_FILE};
use writer::Writer;

/// Where and how the journal keeps its segments.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    pub directory: PathBuf,
    /// A new segment starts when the next frame would push the current one past this size.
    pub log_size: u64,
    /// Call `fdatasync` before reporting a batch durable. Without it, batches are reported
    /// once written to the operating system.
    pub fsync: bool,
    /// The journal is the only copy of its records (a standalone node): a corrupt frame
    /// followed by more than one batch of records cannot be a torn tail, and recovery refuses
    /// to cut them ([`StoreError::CorruptBeforeRecords`]). A cluster node cuts there and
    /// catches up from its master.
    pub only_copy: bool,
}

/// Called on the writer thread with the new durable end: every byte before it is durable.
/// Values only grow (except across [`Journal::truncate`]).
pub type DurableCallback = Box<dyn Fn(Position) + Send>;

/// What [`Journal::append`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Position of the record's frame.
    pub position: Position,
    /// Length of the frame in bytes; the next record starts at `position + len`.
    pub len: u64,
    /// The frame starts a new segment (named by `position`).
    pub new_segment: bool,
}

/// A segment that still holds data: positions `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    pub start: Position,
    pub end: Position,
}

/// The retained segments now (see [`JournalReader::retained`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retained {
    /// Segments holding data (released ones excluded).
    pub segments: usize,
    /// Bytes in those segments (written so far).
    pub bytes: u64,
    /// First retained position.
    pub oldest: Position,
    /// Everything before this is written (and readable).
    pub written: Position,
}

impl Shared {
    /// What is retained now, read from any thread.
    fn retained(&self) -> Retained {
        let written = self.written.load(Ordering::Acquire);
        let map = self.segments.read().unwrap();
        let mut segments = 0;
        let mut bytes = 0;
        let mut iter = map.iter().peekable();
        while let Some((&start, segment)) = iter.next() {
            if segment.state == SegmentState::Released {
                continue;
            }
            let end = iter.peek().map(|(&next, _)| next).unwrap_or(written);
            segments += 1;
            bytes += end.saturating_sub(start);
        }
        Retained {
            segments,
            bytes,
            oldest: oldest_of(&map),
            written: Position(written),
        }
    }
}

/// Counters for logs and status pages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Segments holding data (released ones excluded).
    pub segments: usize,
    /// Bytes in those segments (written so far).
    pub bytes: u64,
    /// First retained position.
    pub oldest: Position,
    /// Next append position.
    pub end: Position,
    /// Everything before this is written to the operating system (and readable).
    pub written: Position,
    /// Everything before this is durable (reported through the callback).
    pub durable: Position,
    /// Group commits: one per batch that called `fdatasync`.
    pub fsyncs: u64,
    /// Batches written.
    pub batches: u64,
    /// Segments released since open.
    pub released: u64,
}

const LOCK_FILE: &str = "journal.lock";
/// A batch stops draining the channel once this many bytes are buffered, so durability is
/// reported regularly under a flood of appends.
const MAX_BATCH_BYTES: usize = 8 << 20;
/// Bytes a [`Frames`] iterator reads at once.
const READ_CHUNK: usize = 1 << 20;
/// Read handles kept open at once (one per segment read back); opening one more closes the
/// one opened first. Counted in the open files `files` keeps out of clients' reach.
const MAX_OPEN_READERS: usize = 64;

fn io_error(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |error| StoreError::Io {
        operation,
        path,
        error,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SegmentState {
    Live,
    /// Release requested; the writer deletes it after the batch in flight is durable.
    Releasing,
    /// A tombstone: truncated to zero bytes, kept so recovery knows the gap is intended.
    Released,
}

struct Segment {
    state: SegmentState,
    /// Read handle, opened on first read; dropped on release so the space is freed.
    reader: Mutex<Option<Arc<File>>>,
}

impl Segment {
    fn new(state: SegmentState) -> Segment {
        Segment {
            state,
            reader: Mutex::new(None),
        }
    }
}

/// State shared by the handle, the writer thread and the readers.
struct Shared {
    directory: PathBuf,
    /// Every segment file by start position, tombstones included.
    segments: RwLock<BTreeMap<u64, Segment>>,
    /// The segments whose read handle was opened, oldest first: at most
    /// [`MAX_OPEN_READERS`], so a store retaining hundreds of segments does not hold a file
    /// open for each one it ever read back (see [`JournalReader`]).
    opened_readers: Mutex<VecDeque<u64>>,
    written: AtomicU64,
    durable: AtomicU64,
    fsyncs: AtomicU64,
    batches: AtomicU64,
    released: AtomicU64,
    failed: AtomicBool,
    failure: Mutex<Option<String>>,
    /// Commands for the writer, in order; taken only by whoever holds the writer's mutex.
    inbox: Mutex<Inbox>,
    /// Wakes the writer thread.
    ready: Condvar,
    /// The written end, for replication (updated after each write, before the fsync).
    written_watch: tokio::sync::watch::Sender<Position>,
    /// Since when the writer has been at its current work, for the disk watchdog.
    clock: WriteClock,
    /// Tests: the writer stops without writing anything more (a killed process).
    #[cfg(test)]
    crashed: AtomicBool,
}

impl Shared {
    fn failure(&self) -> Option<StoreError> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        let message = self.failure.lock().unwrap().clone();
        Some(StoreError::JournalFailed(
            message.unwrap_or_else(|| "writer thread stopped".into()),
        ))
    }

    /// Queues `command` for the writer; `wake` wakes the writer thread for it (else the caller
    /// runs [`Flusher::flush`] next).
    fn push(&self, command: Command, wake: bool) -> Result<(), ()> {
        let mut inbox = self.inbox.lock().unwrap();
        if inbox.closed {
            return Err(());
        }
        inbox.commands.push_back(command);
        let notify = wake && inbox.sleeping;
        drop(inbox);
        if notify {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Wakes the writer thread if it sleeps.
    fn wake(&self) {
        let sleeping = self.inbox.lock().unwrap().sleeping;
        if sleeping {
            self.ready.notify_one();
        }
    }

    /// Wakes the writer thread if commands wait (after a batch written by another thread, whose
    /// mutex is released: see [`Flusher::flush`]).
    fn hand_over(&self) {
        let inbox = self.inbox.lock().unwrap();
        let notify = inbox.sleeping && !inbox.commands.is_empty();
        drop(inbox);
        if notify {
            self.ready.notify_one();
        }
    }

    /// Records the first failure (later ones are only logged) and closes the queue: nothing
    /// queued will be written, so its commands are dropped, and a caller waiting for a reply
    /// (a truncation, a switch of fsync) gets an error instead of waiting for a writer thread
    /// that has stopped. The writer thread, if it sleeps, wakes and ends.
    fn fail(&self, message: String) {
        {
            let mut failure = self.failure.lock().unwrap();
            if failure.is_some() {
                warn!("journal: {message} (after the failure that stopped it)");
                return;
            }
            error!("journal failed, no further appends are accepted: {message}");
            *failure = Some(message);
            self.failed.store(true, Ordering::Release);
        }
        let dropped = {
            let mut inbox = self.inbox.lock().unwrap();
            inbox.closed = true;
            std::mem::take(&mut inbox.commands)
        };
        drop(dropped);
        self.ready.notify_all();
    }
}

/// The writer's queue.
#[derive(Default)]
struct Inbox {
    commands: VecDeque<Command>,
    /// The journal is closing: the thread ends once the queue is empty.
    closed: bool,
    /// The writer thread waits for commands (only then is a wake-up worth a system call).
    sleeping: bool,
}

enum Command {
    Append {
        bytes: Bytes,
        /// The frame starts a new segment at this position.
        new_segment: Option<u64>,
    },
    Release {
        start: u64,
    },
    Truncate {
        position: u64,
        reply: mpsc::Sender<Result<(), StoreError>>,
    },
    /// Switch fsync on or off (a replicated node changing role); everything before is written
    /// first, and switching on syncs the current segment and the directory.
    SetFsync {
        on: bool,
        reply: mpsc::Sender<Result<(), StoreError>>,
    },
    /// Replication: delete every segment and continue empty at `start`.
    Reset {
        start: u64,
        reply: mpsc::Sender<Result<(), StoreError>>,
    },
    /// Tests: block the writer until the sender side is dropped.
    #[cfg(test)]
    Hold {
        /// Told once the writer holds its mutex and waits.
        held: mpsc::Sender<()>,
        wait: mpsc::Receiver<()>,
    },
}

/// Writes what [`Journal::append_deferred`] queued (see inline batches in the module docs).
#[derive(Clone)]
pub struct Flusher {
    state: Arc<Mutex<Writer>>,
    shared: Arc<Shared>,
}

impl Flusher {
    /// Writes and (with fsync on) syncs every queued command on this thread, reporting the
    /// durable end through the callback, if no batch is being written; otherwise leaves them to
    /// the thread writing it, which looks at the queue again once its batch is done. Blocks for
    /// one batch at most. Must not be called while holding a lock the durable callback takes.
    pub fn flush(&self) {
        let mut writer = match self.state.try_lock() {
            Ok(writer) => writer,
            Err(TryLockError::WouldBlock) => return,
            Err(TryLockError::Poisoned(_)) => {
                self.shared.ready.notify_one();
                return;
            }
        };
        if self.shared.failed.load(Ordering::Acquire) {
            return;
        }
        let busy = self.shared.clock.busy();
        if let Err(e) = writer.handle_queued() {
            self.shared.fail(e.to_string());
        }
        drop(busy);
        drop(writer);
        // Whatever was queued while this batch was written (its senders found the mutex taken)
        // goes to the thread. Looked at after the unlock: a sender that found the mutex free
        // writes its own.
        self.shared.hand_over();
    }
}

/// The caller's handle: assigns positions and hands frames to the writer thread.
pub struct Journal {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    /// The writer's state, locked by its thread for each batch and by direct writes.
    state: Arc<Mutex<Writer>>,
    /// Whether batches are fsynced (as last set; direct writes only without).
    fsync: bool,
    /// Between `begin_direct` and `end_direct`: appends are written on this thread.
    direct: bool,
    log_size: u64,
    end: u64,
    current_start: u64,
    encode_buffer: BytesMut,
    /// Whether [`DAMAGED_FILE`] exists: this copy lost records it held.
    damaged: tokio::sync::watch::Sender<bool>,
}

impl Journal {
    /// Opens (creating if needed) the journal in `options.directory`, recovers it (see the module
    /// docs) and starts the writer thread.
    pub fn open(
        options: JournalOptions,
        on_durable: DurableCallback,
    ) -> Result<Journal, StoreError> {
        if options.log_size == 0 {
            return Err(StoreError::InvalidOptions(
                "log_size must be positive".into(),
            ));
        }
        let directory = options.directory.clone();
        fs::create_dir_all(&directory).map_err(io_error("create directory", &directory))?;
        let lock = lock_directory(&directory)?;
        let spare = directory.join(SPARE_FILE);
        match fs::remove_file(&spare) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_error("delete", &spare)(e));
            }
            _ => {}
        }
        let recovery = recover(&directory, options.fsync, options.only_copy)?;
        let (current_start, _) = *recovery.segments.last().expect("recovery keeps a segment");
        let current_path = segment_path(&directory, current_start);
        let file = OpenOptions::new()
            .write(true)
            .open(&current_path)
            .map_err(io_error("open for append", &current_path))?;
        // Not watched yet (the journal's clock is made below): any clock will do.
        preallocate(
            &file,
            options.log_size,
            &current_path,
            &WriteClock::default(),
        )?;
        if options.fsync {
            // A previous run without fsync may have left recovered bytes only in the page cache,
            // in any segment it wrote.
            let live = recovery
                .segments
                .iter()
                .filter(|(_, state)| matches!(state, SegmentState::Live))
                .map(|&(start, _)| start);
            sync_segments(&directory, live, || {})?;
        }
        // Every retained segment is durable now, and the writer seals each one it finishes.
        segment::set_sealed(&directory, options.fsync)?;
        let segments = recovery
            .segments
            .iter()
            .map(|&(start, state)| (start, Segment::new(state)))
            .collect();
        let shared = Arc::new(Shared {
            directory: directory.clone(),
            segments: RwLock::new(segments),
            opened_readers: Mutex::new(VecDeque::new()),
            written: AtomicU64::new(recovery.end),
            durable: AtomicU64::new(recovery.end),
            fsyncs: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            released: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            inbox: Mutex::new(Inbox::default()),
            ready: Condvar::new(),
            written_watch: tokio::sync::watch::channel(Position(recovery.end)).0,
            clock: WriteClock::default(),
            #[cfg(test)]
            crashed: AtomicBool::new(false),
        });
        let writer = Writer::new(
            shared.clone(),
            &options,
            on_durable,
            file,
            current_start,
            recovery.end,
        );
        let state = Arc::new(Mutex::new(writer));
        let thread_state = state.clone();
        let writer = std::thread::Builder::new()
            .name("ferromq-journal".into())
            .spawn(move || {
                // The directory stays locked until this thread is done with it, not merely
                // until the caller's handle is dropped: a journal dropped on this very thread
                // (by its durable callback) is not joined, and this thread still finishes its
                // batch and its releases. A journal opened there meanwhile gets `Locked`
                // instead of segments being deleted under it.
                let _lock = lock;
                Writer::run(&thread_state);
                thread_state
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .join_spare();
            })
            .map_err(io_error("spawn writer thread for", &directory))?;
        Ok(Journal {
            shared,
            writer: Some(writer),
            state,
            fsync: options.fsync,
            direct: false,
            log_size: options.log_size,
            end: recovery.end,
            current_start,
            encode_buffer: BytesMut::new(),
            damaged: tokio::sync::watch::channel(directory.join(DAMAGED_FILE).exists()).0,
        })
    }

    /// What this copy lost, if it is marked damaged: recovery cut records it held after a
    /// corrupt frame (see the recovery in the module docs), and it has not been refilled since.
    pub fn damage(&self) -> Option<String> {
        if !*self.damaged.borrow() {
            return None;
        }
        let path = self.shared.directory.join(DAMAGED_FILE);
        Some(
            fs::read_to_string(&path)
                .map(|text| text.trim().to_owned())
                .unwrap_or_else(|e| format!("{} ({e})", path.display())),
        )
    }

    /// Whether this copy is marked damaged, now and as it changes.
    pub fn damage_watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.damaged.subscribe()
    }

    /// Removes the damage mark: the caller has refilled this copy with everything another,
    /// whole copy holds (a slave caught up with its master, durably).
    pub fn clear_damage(&self) -> Result<(), StoreError> {
        if !*self.damaged.borrow() {
            return Ok(());
        }
        let path = self.shared.directory.join(DAMAGED_FILE);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_error("delete", &path)(e));
            }
            _ => {}
        }
        segment::sync_directory(&self.shared.directory)?;
        self.damaged.send_replace(false);
        Ok(())
    }

    /// Encodes `record`, assigns it the current end as its position and queues it for the
    /// writer thread. Never blocks on I/O.
    pub fn append(&mut self, record: &Record) -> Result<Appended, StoreError> {
        self.append_waking(record, true)
    }

    /// Like [`Journal::append`] but leaves the writer thread asleep: the caller must run
    /// [`Flusher::flush`] soon after, once it holds no lock the durable callback takes (see
    /// inline batches in the module docs).
    pub fn append_deferred(&mut self, record: &Record) -> Result<Appended, StoreError> {
        self.append_waking(record, false)
    }

    fn append_waking(&mut self, record: &Record, wake: bool) -> Result<Appended, StoreError> {
        self.check_failed()?;
        let len = encoded_body_len(record);
        if len > MAX_RECORD_LEN {
            return Err(StoreError::RecordTooLarge {
                len,
                limit: MAX_RECORD_LEN,
            });
        }
        encode_frame(record, &mut self.encode_buffer);
        let bytes = self.encode_buffer.split().freeze();
        self.push(bytes, wake)
    }

    /// Appends a frame received from elsewhere (a slave copying its master): `position` must be
    /// the current end and `frame` one whole valid frame.
    pub fn append_frame(
        &mut self,
        position: Position,
        frame: Bytes,
    ) -> Result<Appended, StoreError> {
        self.check_failed()?;
        if position.0 != self.end {
            return Err(StoreError::NotContiguous {
                position,
                end: Position(self.end),
            });
        }
        match check_frame(&frame) {
            Ok(Some(n)) if n == frame.len() => {}
            Ok(_) => {
                return Err(StoreError::InvalidFrame {
                    position,
                    cause: FrameError::Undecodable(format!(
                        "{} bytes are not exactly one frame",
                        frame.len()
                    )),
                })
            }
            Err(cause) => return Err(StoreError::InvalidFrame { position, cause }),
        }
        self.push(frame, true)
    }

    fn push(&mut self, bytes: Bytes, wake: bool) -> Result<Appended, StoreError> {
        let len = bytes.len() as u64;
        let position = self.end;
        let current_len = position - self.current_start;
        let new_segment = current_len > 0 && current_len + len > self.log_size;
        if new_segment {
            // Registered before the writer can write it, so readers never see its bytes as
            // part of the previous segment.
            self.shared
                .segments
                .write()
                .unwrap()
                .insert(position, Segment::new(SegmentState::Live));
            self.current_start = position;
        }
        let command = Command::Append {
            bytes,
            new_segment: new_segment.then_some(position),
        };
        if self.direct {
            self.handle_directly(command)?;
        } else {
            self.send_waking(command, wake)?;
        }
        self.end += len;
        Ok(Appended {
            position: Position(position),
            len,
            new_segment,
        })
    }

    fn send(&self, command: Command) -> Result<(), StoreError> {
        self.send_waking(command, true)
    }

    fn send_waking(&self, command: Command, wake: bool) -> Result<(), StoreError> {
        self.shared
            .push(command, wake)
            .map_err(|()| self.writer_gone())
    }

    /// Handles `command` on this thread (see direct writes in the module docs), or sends it to
    /// the writer thread if something is still queued there.
    fn handle_directly(&mut self, command: Command) -> Result<(), StoreError> {
        let mut writer = self.state.lock().unwrap();
        self.check_failed()?;
        // Commands leave the queue only under the writer's mutex, which this thread holds.
        if !self.shared.inbox.lock().unwrap().commands.is_empty() {
            drop(writer);
            return self.send(command);
        }
        // Busy only once this thread writes: a command handed to the writer thread above runs
        // under that thread's own busy mark, which this one's end would otherwise clear.
        let _busy = self.shared.clock.busy();
        writer
            .handle(command)
            .inspect_err(|e| self.shared.fail(e.to_string()))
    }

    /// Starts writing appended frames on this thread instead of the writer's (see direct
    /// writes in the module docs); does nothing with fsync on. [`Journal::end_direct`] writes
    /// them and reports them durable.
    pub fn begin_direct(&mut self) {
        self.direct = !self.fsync;
    }

    /// Writes what was appended since [`Journal::begin_direct`] (on this thread, one write per
    /// segment), reports the durable end, and goes back to handing appends to the thread.
    pub fn end_direct(&mut self) -> Result<(), StoreError> {
        if !std::mem::take(&mut self.direct) {
            return Ok(());
        }
        let mut writer = self.state.lock().unwrap();
        self.check_failed()?;
        let _busy = self.shared.clock.busy();
        writer
            .finish_batch()
            .inspect_err(|e| self.shared.fail(e.to_string()))
    }

    /// Turns fsync on or off for what is appended from now on. Returns once everything
    /// appended before is written (and, when turning it on, synced as at open).
    pub fn set_fsync(&mut self, on: bool) -> Result<(), StoreError> {
        self.end_direct()?;
        self.request(|reply| Command::SetFsync { on, reply })?;
        self.fsync = on;
        Ok(())
    }

    /// The writer's clock, for the disk watchdog: readable while the writer is blocked.
    pub fn write_clock(&self) -> WriteClock {
        self.shared.clock.clone()
    }

    /// A handle that writes queued appends on the caller's thread when the writer is idle.
    pub fn flusher(&self) -> Flusher {
        Flusher {
            state: self.state.clone(),
            shared: self.shared.clone(),
        }
    }

    /// Wakes the writer thread for what [`Journal::append_deferred`] queued.
    pub fn wake_writer(&self) {
        self.shared.wake();
    }

    /// Why the writer thread no longer answers.
    fn writer_gone(&self) -> StoreError {
        self.shared
            .failure()
            .unwrap_or_else(|| StoreError::JournalFailed("writer thread stopped".into()))
    }

    /// Sends the command `make` builds around a reply channel and waits for the writer's answer.
    fn request(
        &self,
        make: impl FnOnce(mpsc::Sender<Result<(), StoreError>>) -> Command,
    ) -> Result<(), StoreError> {
        let (reply, answer) = mpsc::channel();
        self.send(make(reply))?;
        answer.recv().map_err(|_| self.writer_gone())?
    }

    fn check_failed(&self) -> Result<(), StoreError> {
        match self.shared.failure() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Next append position.
    pub fn end(&self) -> Position {
        Position(self.end)
    }

    /// A reader for records below the written watermark.
    pub fn reader(&self) -> JournalReader {
        JournalReader {
            shared: self.shared.clone(),
        }
    }

    /// The segments that hold data, oldest first; the last one is the current segment.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        let map = self.shared.segments.read().unwrap();
        let mut out: Vec<SegmentInfo> = Vec::new();
        let mut iter = map.iter().peekable();
        while let Some((&start, segment)) = iter.next() {
            let end = iter.peek().map(|(&next, _)| next).unwrap_or(self.end);
            if segment.state != SegmentState::Released {
                out.push(SegmentInfo {
                    start: Position(start),
                    end: Position(end),
                });
            }
        }
        out
    }

    /// Releases the whole non-current segment starting at `start`: it is deleted (or made a
    /// tombstone) once everything appended before this call is durable.
    pub fn release(&mut self, start: Position) -> Result<(), StoreError> {
        self.check_failed()?;
        if start.0 == self.current_start {
            return Err(StoreError::NotReleasable {
                start,
                reason: "it is the current segment",
            });
        }
        {
            let mut map = self.shared.segments.write().unwrap();
            match map.get_mut(&start.0) {
                Some(segment) if segment.state == SegmentState::Live => {
                    segment.state = SegmentState::Releasing
                }
                Some(_) => {
                    return Err(StoreError::NotReleasable {
                        start,
                        reason: "it is already released",
                    })
                }
                None => {
                    return Err(StoreError::NotReleasable {
                        start,
                        reason: "no segment starts there",
                    })
                }
            }
        }
        self.send(Command::Release { start: start.0 })
    }

    /// Cuts the journal at `position` (a frame boundary at or after the oldest retained
    /// position): every later byte and segment is deleted, and the next append goes to
    /// `position`. Waits for the writer. Used by a slave whose tail diverged from its master.
    pub fn truncate(&mut self, position: Position) -> Result<(), StoreError> {
        self.check_failed()?;
        if position.0 > self.end {
            return Err(StoreError::NotWritten {
                position,
                written: Position(self.end),
            });
        }
        if position.0 == self.end {
            return Ok(());
        }
        let containing = {
            let map = self.shared.segments.read().unwrap();
            match map.range(..=position.0).next_back() {
                Some((&start, segment)) if segment.state == SegmentState::Live => start,
                _ => {
                    return Err(StoreError::NotRetained {
                        position,
                        oldest: oldest_of(&map),
                    })
                }
            }
        };
        self.request(|reply| Command::Truncate {
            position: position.0,
            reply,
        })?;
        self.end = position.0;
        self.current_start = containing;
        Ok(())
    }

    /// Replication: deletes every segment and continues empty at `start` (a new segment named
    /// by it). Waits for the writer.
    pub fn reset(&mut self, start: Position) -> Result<(), StoreError> {
        self.check_failed()?;
        self.request(|reply| Command::Reset {
            start: start.0,
            reply,
        })?;
        self.end = start.0;
        self.current_start = start.0;
        Ok(())
    }

    /// Replication: the master's journal holds nothing in `end()..to` (a released range);
    /// continues at `to` in a new segment. The range becomes a tombstone (see the module docs):
    /// a new empty file, or the current segment itself when it is empty, in which case this
    /// returns true (the caller's view of the current segment moves to `to`).
    pub fn skip_to(&mut self, to: Position) -> Result<bool, StoreError> {
        self.check_failed()?;
        if to.0 <= self.end {
            return Err(StoreError::NotContiguous {
                position: to,
                end: Position(self.end),
            });
        }
        let moved = self.end == self.current_start;
        {
            let mut map = self.shared.segments.write().unwrap();
            if moved {
                if let Some(segment) = map.get_mut(&self.current_start) {
                    segment.state = SegmentState::Released;
                }
            } else {
                map.insert(self.end, Segment::new(SegmentState::Released));
                self.send(Command::Append {
                    bytes: Bytes::new(),
                    new_segment: Some(self.end),
                })?;
            }
            map.insert(to.0, Segment::new(SegmentState::Live));
        }
        self.send(Command::Append {
            bytes: Bytes::new(),
            new_segment: Some(to.0),
        })?;
        self.current_start = to.0;
        self.end = to.0;
        Ok(moved)
    }

    /// The written end, updated by the writer thread after each write (before its fsync).
    pub fn written_watch(&self) -> tokio::sync::watch::Receiver<Position> {
        self.shared.written_watch.subscribe()
    }

    /// Everything before this position is written (and synced, with fsync): one atomic read,
    /// where [`Journal::stats`] also walks the segments.
    pub fn durable(&self) -> Position {
        Position(self.shared.durable.load(Ordering::Acquire))
    }

    pub fn stats(&self) -> JournalStats {
        let shared = &self.shared;
        let retained = shared.retained();
        JournalStats {
            segments: retained.segments,
            bytes: retained.bytes,
            oldest: retained.oldest,
            end: Position(self.end),
            written: retained.written,
            durable: self.durable(),
            fsyncs: shared.fsyncs.load(Ordering::Relaxed),
            batches: shared.batches.load(Ordering::Relaxed),
            released: shared.released.load(Ordering::Relaxed),
        }
    }

    /// Why the journal stopped accepting appends (a write, fsync or segment preparation of the
    /// writer failed), if it did.
    pub fn failure(&self) -> Option<StoreError> {
        self.shared.failure()
    }

    /// Blocks the writer thread until the returned guard is dropped (tests of group commit).
    #[cfg(test)]
    pub(crate) fn hold_writer(&self) -> mpsc::Sender<()> {
        let (guard, wait) = mpsc::channel();
        let (held, entered) = mpsc::channel();
        self.send(Command::Hold { held, wait }).unwrap();
        entered.recv().unwrap();
        guard
    }

    /// Waits (up to 10 s) until the writer thread sleeps, so that what is queued next is
    /// written by whoever the test means to write it (tests of inline batches).
    #[cfg(test)]
    pub(crate) fn wait_writer_asleep(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !self.shared.inbox.lock().unwrap().sleeping {
            assert!(
                std::time::Instant::now() < deadline,
                "the writer thread never went to sleep"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Makes the writer stop without writing anything it has not written yet, as soon as it
    /// handles its next command (tests: a killed process; see [`Journal::hold_writer`]).
    #[cfg(test)]
    pub(crate) fn crash_after_hold(&self) {
        self.shared.crashed.store(true, Ordering::Release);
    }

    /// Waits for the writer to write and sync everything queued; reports the first failure.
    pub fn close(mut self) -> Result<(), StoreError> {
        self.shutdown()
    }

    pub(crate) fn shutdown(&mut self) -> Result<(), StoreError> {
        self.shared.inbox.lock().unwrap().closed = true;
        self.shared.ready.notify_all();
        if let Some(writer) = self.writer.take() {
            if writer.thread().id() == std::thread::current().id() {
                // Dropped on the writer thread itself: the durable callback released the last
                // handle of the journal's owner (a broker core confirmed from this thread).
                // Joining would be joining itself; the thread ends on its own once it is back
                // in its loop and finds the queue closed and empty.
                return self.check_failed();
            }
            if writer.join().is_err() {
                self.shared.fail("writer thread panicked".into());
            }
        }
        self.check_failed()
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

fn oldest_of(map: &BTreeMap<u64, Segment>) -> Position {
    map.iter()
        .find(|(_, s)| s.state != SegmentState::Released)
        .map(|(&start, _)| Position(start))
        .unwrap_or_default()
}

fn lock_directory(directory: &Path) -> Result<File, StoreError> {
    let path = directory.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error("open lock file", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked(path)),
        Err(std::fs::TryLockError::Error(e)) => Err(io_error("lock", &path)(e)),
    }
}
