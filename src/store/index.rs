//! The LevelDB index of what is live: message keys per queue, durable subscriptions, the
//! producer dedupe table, the last epoch, the journal position applied, and the segment
//! dependencies of garbage collection. Rebuildable from the journal at any time.
//!
//! It must never be the source of truth (LevelDB here never fsyncs; the journal does), and the
//! database must never be touched outside its own thread (rusty-leveldb's `DB` is not `Sync`).
//! It knows nothing of clients or ZooKeeper.
//!
//! Key layout (all integers big-endian, strings as `u32 length | bytes`, so that the keys of
//! one queue are contiguous and ordered by [`MessageKey`]):
//! - `0x00 'v'` → format version (u32); `0x00 'e'` → journal end applied (u64);
//!   `0x00 'h'` → highest epoch seen (u64)
//! - `'m' queue key` → empty: a live message entry
//! - `'s' client_id subscription_name` → `position of the add (u64) | SubscriptionAdd`
//! - `'p' producer_id` → highest stored producer sequence (u64) | stamp (u64: the message key
//!   of the add that raised it, ordering the bounded audit; absent in older indexes, read as 0)
//!   | holder (u64: the position of the record a rebuild learns it from, see `state`; absent in
//!   older indexes, read as the stamp's position)
//! - `'d' on by` → empty: segment `by` holds removals of things added in segment `on`
//!
//! Next to the database, `index.state` says whether the index was closed cleanly (`clean`) or
//! is in use (`open <boot id>`). LevelDB's log is never fsynced, so after a machine crash its
//! tail may be lost or even partly reordered; an index left open by an earlier boot is
//! therefore rebuilt. After a mere process crash the operating system still holds every write
//! in order, and the index is a consistent (possibly lagging) prefix that is caught up.
//!
//! The operations of appended records are queued ([`Index::queue`]) and applied only once the
//! journal has written those records (its written watermark covers them), so the index never
//! gets ahead of the journal: after a process crash it is caught up, not rebuilt. The thread is
//! not woken per append: it is told when the queue becomes non-empty, then applies whatever is
//! written every [`FLUSH_INTERVAL`] in one write batch, while anything is queued. A batch keeps
//! each key's last operation only ([`Coalesced`]): the state it leaves is the same, and the
//! memtable inserts it saves are the thread's main cost.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use prost::Message as _;
use rusty_leveldb::{LdbIterator, Options, StatusCode, WriteBatch, DB};
use tracing::{error, warn};

use super::record::{MessageKey, Position, SubscriptionAdd};
use super::state::LiveSubscription;
use super::sync::{sync_directory, sync_file};
use super::StoreError;

/// Bumped whenever the key layout changes; an index of another version is rebuilt.
pub(crate) const INDEX_VERSION: u32 = 1;

const META: u8 = 0x00;
const META_VERSION: &[u8] = &[META, b'v'];
const META_END: &[u8] = &[META, b'e'];
const META_EPOCH: &[u8] = &[META, b'h'];
const MESSAGE: u8 = b'm';
const SUBSCRIPTION: u8 = b's';
const PRODUCER: u8 = b'p';
const DEPENDENCY: u8 = b'd';

/// Operations applied in the order given, in one write batch per record (or several records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IndexOp {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub(crate) fn message_key(queue: &str, key: MessageKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 4 + queue.len() + 8);
    out.push(MESSAGE);
    put_str(&mut out, queue);
    out.extend_from_slice(&key.0.to_be_bytes());
    out
}

pub(crate) fn subscription_key(client_id: &str, subscription_name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 8 + client_id.len() + subscription_name.len());
    out.push(SUBSCRIPTION);
    put_str(&mut out, client_id);
    put_str(&mut out, subscription_name);
    out
}

pub(crate) fn subscription_value(position: Position, add: &SubscriptionAdd) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + add.encoded_len());
    out.extend_from_slice(&position.0.to_be_bytes());
    add.encode(&mut out).expect("a Vec grows to fit");
    out
}

pub(crate) fn producer_key(producer_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 4 + producer_id.len());
    out.push(PRODUCER);
    put_str(&mut out, producer_id);
    out
}

pub(crate) fn producer_value(sequence: u64, stamp: u64, holder: Position) -> Vec<u8> {
    [sequence, stamp, holder.0]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect()
}

pub(crate) fn dependency_key(on: Position, by: Position) -> Vec<u8> {
    let mut out = Vec::with_capacity(17);
    out.push(DEPENDENCY);
    out.extend_from_slice(&on.0.to_be_bytes());
    out.extend_from_slice(&by.0.to_be_bytes());
    out
}

pub(crate) fn epoch_op(epoch: u64) -> IndexOp {
    IndexOp::Put(META_EPOCH.to_vec(), epoch.to_be_bytes().to_vec())
}

/// Reads the fields of a key or value front to back.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.0.split_first_chunk::<8>()?;
        self.0 = rest;
        Some(u64::from_be_bytes(*head))
    }

    fn u32(&mut self) -> Option<u32> {
        let (head, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_be_bytes(*head))
    }

    fn str(&mut self) -> Option<String> {
        let len = self.u32()? as usize;
        if self.0.len() < len {
            return None;
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        String::from_utf8(head.to_vec()).ok()
    }

    fn rest(&self) -> &'a [u8] {
        self.0
    }

    fn done(&self) -> Option<()> {
        self.0.is_empty().then_some(())
    }
}

/// Everything an index holds, as read at open.
#[derive(Debug, Default)]
pub(crate) struct IndexSnapshot {
    pub version: Option<u32>,
    /// Journal end applied.
    pub end: Option<Position>,
    pub epoch: u64,
    /// Live message keys per queue, in key order.
    pub messages: Vec<(String, Vec<MessageKey>)>,
    pub subscriptions: Vec<LiveSubscription>,
    /// `(producer id, highest sequence, stamp, holder)`.
    pub producers: Vec<(String, u64, u64, Position)>,
    /// `(on, by)`: see [`dependency_key`].
    pub dependencies: Vec<(Position, Position)>,
    /// Keys or values that do not decode (the first few, as text).
    pub problems: Vec<String>,
}

impl IndexSnapshot {
    fn take(&mut self, key: &[u8], value: &[u8]) -> Option<()> {
        let (&prefix, rest) = key.split_first()?;
        let mut key = Cursor(rest);
        let mut value = Cursor(value);
        match prefix {
            META => match rest {
                b"v" => self.version = Some(value.u32()?),
                b"e" => self.end = Some(Position(value.u64()?)),
                b"h" => self.epoch = value.u64()?,
                _ => return None,
            },
            MESSAGE => {
                let queue = key.str()?;
                let message = MessageKey(key.u64()?);
                key.done()?;
                match self.messages.last_mut() {
                    Some((last, keys)) if *last == queue => keys.push(message),
                    _ => self.messages.push((queue, vec![message])),
                }
            }
            SUBSCRIPTION => {
                let client_id = key.str()?;
                let subscription_name = key.str()?;
                key.done()?;
                let position = Position(value.u64()?);
                let add = SubscriptionAdd::decode(value.rest()).ok()?;
                if add.client_id != client_id || add.subscription_name != subscription_name {
                    return None;
                }
                self.subscriptions.push(LiveSubscription { position, add });
            }
            PRODUCER => {
                let producer = key.str()?;
                key.done()?;
                let sequence = value.u64()?;
                let stamp = value.u64().unwrap_or(0);
                let holder = value.u64().unwrap_or(MessageKey(stamp).position().0);
                self.producers
                    .push((producer, sequence, stamp, Position(holder)));
            }
            DEPENDENCY => {
                let on = Position(key.u64()?);
                let by = Position(key.u64()?);
                key.done()?;
                self.dependencies.push((on, by));
            }
            _ => return None,
        }
        Some(())
    }
}

// ---------------------------------------------------------------------------------------------
// The clean-shutdown marker

const MARKER: &str = "index.state";

/// Whether an index found at open can be caught up, or must be rebuilt.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Trust {
    /// Closed cleanly: everything it holds was fsynced.
    Clean,
    /// Left open by a process that died during this boot: the page cache kept its writes.
    SameBoot,
    Untrusted(String),
}

fn boot_id() -> Option<String> {
    let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_string())
}

pub(crate) fn read_marker(directory: &Path) -> Trust {
    let path = directory.join(MARKER);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Trust::Untrusted(format!("{} does not exist", path.display()))
        }
        Err(e) => return Trust::Untrusted(format!("reading {}: {e}", path.display())),
    };
    let text = text.trim();
    if text == "clean" {
        return Trust::Clean;
    }
    match text.strip_prefix("open ") {
        Some(boot) if boot_id().as_deref() == Some(boot) => Trust::SameBoot,
        Some(boot) => Trust::Untrusted(format!(
            "the index was left open during an earlier boot ({boot}); its unsynced writes may \
             be lost or out of order"
        )),
        None => Trust::Untrusted(format!("{} holds {text:?}", path.display())),
    }
}

fn write_marker(directory: &Path, text: &str) -> Result<(), StoreError> {
    let path = directory.join(MARKER);
    let temporary = directory.join(format!("{MARKER}.tmp"));
    let io = |operation, path: &Path| {
        let path = path.to_path_buf();
        move |error| StoreError::Io {
            operation,
            path,
            error,
        }
    };
    fs::write(&temporary, text).map_err(io("write", &temporary))?;
    sync_file(&temporary).map_err(io("fsync", &temporary))?;
    fs::rename(&temporary, &path).map_err(io("rename into place", &path))?;
    sync_directory(directory).map_err(io("fsync directory", directory))
}

/// Records that the index is in use from now on (before anything writes to it).
pub(crate) fn mark_open(directory: &Path) -> Result<(), StoreError> {
    let boot = boot_id().unwrap_or_else(|| "unknown-boot".into());
    write_marker(directory, &format!("open {boot}\n"))
}

/// Records that the index was closed and fsynced.
pub(crate) fn mark_clean(directory: &Path) -> Result<(), StoreError> {
    write_marker(directory, "clean\n")
}

// ---------------------------------------------------------------------------------------------
// The index thread

enum Command {
    Apply {
        ops: Vec<IndexOp>,
        end: Position,
    },
    /// Something was queued: apply what is written (now, and then periodically).
    Flush,
    /// Tests: stop at once, dropping what is queued, as a killed process would.
    #[cfg(test)]
    Crash(mpsc::Sender<()>),
    Load(mpsc::Sender<Result<IndexSnapshot, StoreError>>),
    Wipe(mpsc::Sender<Result<(), StoreError>>),
    Close(mpsc::Sender<Result<(), StoreError>>),
}

/// The journal's written watermark (everything before it is written to the operating system).
pub(crate) type WrittenFn = Box<dyn Fn() -> Position + Send>;

/// Operations of appended records with the journal end after them, oldest first, waiting for
/// the journal to write them.
type Queue = Arc<Mutex<VecDeque<(Vec<IndexOp>, Position)>>>;

/// Handle to the index thread.
pub(crate) struct Index {
    path: PathBuf,
    sender: Option<mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
    failed: Arc<AtomicBool>,
    queue: Queue,
}

/// Most operations merged into one write batch.
const MAX_BATCH_OPS: usize = 50_000;
/// While operations are queued, the thread applies what the journal has written this often.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_millis(10);
/// LevelDB's memtable: the larger, the rarer the compactions (run inline in a write).
const WRITE_BUFFER_SIZE: usize = 32 << 20;

/// Files the index keeps open (LevelDB's table cache; its default is 1024): bounded, so that
/// the open files the process keeps for its store (`files::RESERVED_MIN`) cover it. A larger
/// index reopens the tables it reads least.
const MAX_OPEN_TABLES: usize = 256;

impl Index {
    /// Opens (or creates) the LevelDB database at `path` on its own thread. A database that
    /// does not open (other than being locked) is wiped and recreated: the reason is returned.
    /// `written` is the journal's written watermark: queued operations wait for it.
    pub fn open(path: PathBuf, written: WrittenFn) -> Result<(Index, Option<String>), StoreError> {
        let failed = Arc::new(AtomicBool::new(false));
        let queue = Queue::default();
        let worker_queue = queue.clone();
        let (sender, receiver) = mpsc::channel();
        let (opened, wait) = mpsc::channel();
        let worker_path = path.clone();
        let worker_failed = failed.clone();
        let thread = std::thread::Builder::new()
            .name("ferromq-index".into())
            .spawn(move || {
                let mut worker = Worker {
                    path: worker_path,
                    db: None,
                    failed: worker_failed,
                    queue: worker_queue,
                    written,
                };
                let result = worker.open();
                let ok = result.is_ok();
                let _ = opened.send(result);
                if ok {
                    worker.run(receiver);
                }
            })
            .map_err(|error| StoreError::Io {
                operation: "spawn index thread for",
                path: path.clone(),
                error,
            })?;
        let wiped = wait.recv().map_err(|_| StoreError::Index {
            path: path.clone(),
            cause: "index thread stopped while opening".into(),
        })??;
        Ok((
            Index {
                path,
                sender: Some(sender),
                thread: Some(thread),
                failed,
                queue,
            },
            wiped,
        ))
    }

    /// Applies operations of records the journal has already written, and the new journal end
    /// applied; false if the thread is gone.
    pub fn apply(&self, ops: Vec<IndexOp>, end: Position) -> bool {
        !self.failed() && self.send(Command::Apply { ops, end }).is_ok()
    }

    /// Queues operations of records just appended, up to journal position `end`: they are
    /// applied once the journal's written watermark reaches `end`. False if the thread is gone.
    pub fn queue(&self, ops: Vec<IndexOp>, end: Position) -> bool {
        if self.failed() || self.sender.is_none() {
            return false;
        }
        let was_empty = {
            let mut queue = self.queue.lock().unwrap();
            let was_empty = queue.is_empty();
            queue.push_back((ops, end));
            was_empty
        };
        !was_empty || self.send(Command::Flush).is_ok()
    }

    /// Records queued and not yet taken by the thread (tests).
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.queue.lock().unwrap().len()
    }

    /// Stops the thread as a crash would: queued operations are lost (tests).
    #[cfg(test)]
    pub fn crash(mut self) {
        let (reply, answer) = mpsc::channel();
        if self.send(Command::Crash(reply)).is_ok() {
            let _ = answer.recv();
        }
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    fn send(&self, command: Command) -> Result<(), StoreError> {
        let sender = self.sender.as_ref().ok_or_else(|| self.gone())?;
        sender.send(command).map_err(|_| self.gone())
    }

    fn gone(&self) -> StoreError {
        StoreError::Index {
            path: self.path.clone(),
            cause: "index thread stopped".into(),
        }
    }

    fn request<T>(
        &self,
        make: impl FnOnce(mpsc::Sender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        let (reply, answer) = mpsc::channel();
        self.send(make(reply))?;
        answer.recv().map_err(|_| self.gone())?
    }

    /// Everything the index holds (after every queued operation).
    pub fn load(&self) -> Result<IndexSnapshot, StoreError> {
        self.request(Command::Load)
    }

    /// Deletes the database and starts an empty one.
    pub fn wipe(&self) -> Result<(), StoreError> {
        self.request(Command::Wipe)
    }

    /// Applies everything queued, closes the database and fsyncs its files.
    pub fn close(mut self) -> Result<(), StoreError> {
        let result = self.request(Command::Close);
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        result
    }
}

impl Drop for Index {
    fn drop(&mut self) {
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Worker {
    path: PathBuf,
    db: Option<DB>,
    failed: Arc<AtomicBool>,
    queue: Queue,
    written: WrittenFn,
}

impl Worker {
    fn error(&self, cause: impl std::fmt::Display) -> StoreError {
        StoreError::Index {
            path: self.path.clone(),
            cause: cause.to_string(),
        }
    }

    fn open_db(&self) -> Result<DB, rusty_leveldb::Status> {
        let options = Options {
            create_if_missing: true,
            write_buffer_size: WRITE_BUFFER_SIZE,
            max_open_files: MAX_OPEN_TABLES,
            ..Options::default()
        };
        DB::open(&self.path, options)
    }

    fn open(&mut self) -> Result<Option<String>, StoreError> {
        match self.open_db() {
            Ok(db) => {
                self.db = Some(db);
                Ok(None)
            }
            Err(status) if status.code == StatusCode::LockError => Err(self.error(status)),
            Err(status) => {
                let reason = format!("LevelDB could not open it: {status}");
                warn!(path = %self.path.display(), "index {reason}; recreating it");
                self.wipe()?;
                Ok(Some(reason))
            }
        }
    }

    fn wipe(&mut self) -> Result<(), StoreError> {
        self.queue.lock().unwrap().clear();
        self.db = None;
        // A file where the index directory should be (a stray copy, say) goes the same way.
        let removed = if self.path.is_dir() {
            fs::remove_dir_all(&self.path)
        } else {
            fs::remove_file(&self.path)
        };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(StoreError::Io {
                    operation: "delete index",
                    path: self.path.clone(),
                    error,
                })
            }
        }
        let db = self.open_db().map_err(|status| self.error(status))?;
        self.db = Some(db);
        self.failed.store(false, Ordering::Release);
        Ok(())
    }

    fn fail(&mut self, cause: impl std::fmt::Display) {
        error!(
            path = %self.path.display(),
            "index write failed ({cause}); it is no longer updated and will be rebuilt from the \
             journal at the next start"
        );
        self.db = None;
        self.failed.store(true, Ordering::Release);
    }

    fn run(&mut self, receiver: mpsc::Receiver<Command>) {
        let mut next = None;
        loop {
            let command = match next.take() {
                Some(command) => command,
                None if self.queue.lock().unwrap().is_empty() => match receiver.recv() {
                    Ok(command) => command,
                    Err(_) => break,
                },
                None => match receiver.recv_timeout(FLUSH_INTERVAL) {
                    Ok(command) => command,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.flush_queue();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
            };
            match command {
                Command::Apply { ops, end } => {
                    let mut batch = Coalesced::default();
                    let mut count = ops.len();
                    let mut end = end;
                    batch.add(ops);
                    while count < MAX_BATCH_OPS {
                        match receiver.try_recv() {
                            Ok(Command::Apply { ops, end: later }) => {
                                count += ops.len();
                                end = later;
                                batch.add(ops);
                            }
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.write(batch.into_batch(end), next.is_none());
                }
                // The queue just became non-empty: its operations are applied at the next
                // tick (the `recv_timeout` above), together with whatever follows, rather
                // than waking this thread (and the journal's waiters) once per record.
                Command::Flush => {}
                #[cfg(test)]
                Command::Crash(reply) => {
                    self.queue.lock().unwrap().clear();
                    self.db = None;
                    let _ = reply.send(());
                    return;
                }
                Command::Load(reply) => {
                    let _ = reply.send(self.load());
                }
                Command::Wipe(reply) => {
                    let _ = reply.send(self.wipe());
                }
                Command::Close(reply) => {
                    self.flush_queue();
                    let _ = reply.send(self.close());
                    return;
                }
            }
        }
        self.flush_queue();
        if let Some(db) = self.db.as_mut() {
            let _ = db.flush();
        }
    }

    /// Applies, in one batch, the queued operations of every record the journal has written.
    fn flush_queue(&mut self) {
        let taken: Vec<(Vec<IndexOp>, Position)> = {
            let mut queue = self.queue.lock().unwrap();
            // Read under the lock: whatever was queued before was appended before this.
            let written = (self.written)();
            let ready = queue.iter().take_while(|(_, end)| *end <= written).count();
            queue.drain(..ready).collect()
        };
        let Some(&(_, end)) = taken.last() else {
            return;
        };
        let mut batch = Coalesced::default();
        for (ops, _) in taken {
            batch.add(ops);
        }
        self.write(batch.into_batch(end), true);
    }

    /// Writes a batch (never synced: the journal is what is durable); hands LevelDB's buffer to
    /// the operating system when `caught_up`.
    fn write(&mut self, batch: WriteBatch, caught_up: bool) {
        let Some(db) = self.db.as_mut() else { return };
        let mut result = db.write(batch, false);
        if result.is_ok() && caught_up {
            result = db.flush();
        }
        if let Err(status) = result {
            self.fail(status);
        }
    }

    fn load(&mut self) -> Result<IndexSnapshot, StoreError> {
        let path = self.path.clone();
        let db = self.db.as_mut().ok_or_else(|| StoreError::Index {
            path,
            cause: "the index failed earlier".into(),
        })?;
        let mut iterator = db.new_iter().map_err(|status| StoreError::Index {
            path: self.path.clone(),
            cause: status.to_string(),
        })?;
        let mut snapshot = IndexSnapshot::default();
        while iterator.advance() {
            let Some((key, value)) = iterator.current() else {
                break;
            };
            if snapshot.take(&key, &value).is_none() && snapshot.problems.len() < 10 {
                snapshot.problems.push(format!(
                    "undecodable entry with key {:02x?}",
                    &key[..key.len().min(32)]
                ));
            }
        }
        Ok(snapshot)
    }

    fn close(&mut self) -> Result<(), StoreError> {
        let Some(mut db) = self.db.take() else {
            return Err(self.error("the index failed earlier"));
        };
        db.close().map_err(|status| self.error(status))?;
        drop(db);
        sync_tree(&self.path)
    }
}

/// The operations of consecutive records, reduced to each key's last one (the state a batch
/// leaves depends on nothing else): a message stored and consumed within one batch costs one
/// delete, a producer's sequence raised by a hundred sends one put. LevelDB's memtable insert is
/// the index thread's main cost, and the same on every node of a cluster.
#[derive(Default)]
struct Coalesced(HashMap<Vec<u8>, Option<Vec<u8>>>);

impl Coalesced {
    fn add(&mut self, ops: Vec<IndexOp>) {
        for op in ops {
            match op {
                IndexOp::Put(key, value) => self.0.insert(key, Some(value)),
                IndexOp::Delete(key) => self.0.insert(key, None),
            };
        }
    }

    /// One write batch, recording that the index now covers the journal up to `end`.
    fn into_batch(self, end: Position) -> WriteBatch {
        let mut batch = WriteBatch::default();
        for (key, value) in self.0 {
            match value {
                Some(value) => batch.put(&key, &value),
                None => batch.delete(&key),
            }
        }
        batch.put(META_VERSION, &INDEX_VERSION.to_be_bytes());
        batch.put(META_END, &end.0.to_be_bytes());
        batch
    }
}

/// Fsyncs every file in `directory` and the directory itself (LevelDB never does).
fn sync_tree(directory: &Path) -> Result<(), StoreError> {
    let io = |operation, path: &Path| {
        let path = path.to_path_buf();
        move |error| StoreError::Io {
            operation,
            path,
            error,
        }
    };
    for entry in fs::read_dir(directory).map_err(io("list", directory))? {
        let entry = entry.map_err(io("list", directory))?;
        let path = entry.path();
        if entry.file_type().map_err(io("stat", &path))?.is_file() {
            sync_file(&path).map_err(io("fsync", &path))?;
        }
    }
    sync_directory(directory).map_err(io("fsync directory", directory))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_keeps_each_keys_last_operation_only() {
        let key = |n: u64| message_key("q", MessageKey(n));
        let mut batch = Coalesced::default();
        batch.add(vec![
            IndexOp::Put(key(1), vec![]),
            IndexOp::Put(key(2), vec![]),
            IndexOp::Put(b"p".to_vec(), vec![1]),
        ]);
        batch.add(vec![
            IndexOp::Delete(key(1)),
            IndexOp::Put(b"p".to_vec(), vec![2]),
            IndexOp::Delete(key(3)),
            IndexOp::Put(key(3), vec![7]),
        ]);
        let mut left: Vec<_> = batch.0.into_iter().collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                (key(1), None),
                (key(2), Some(vec![])),
                (key(3), Some(vec![7])),
                (b"p".to_vec(), Some(vec![2])),
            ]
        );
    }

    #[test]
    fn keys_of_one_queue_are_contiguous_and_ordered_by_message_key() {
        let keys = [
            message_key("a", MessageKey::new(Position(300), 0)),
            message_key("a", MessageKey::new(Position(5), 1)),
            message_key("ab", MessageKey::new(Position(1), 0)),
            message_key("a", MessageKey::new(Position(5), 0)),
            message_key("b", MessageKey::new(Position(0), 0)),
        ];
        let mut sorted = keys.to_vec();
        sorted.sort();
        let decoded: Vec<(String, u64)> = sorted
            .iter()
            .map(|k| {
                let mut c = Cursor(&k[1..]);
                (c.str().unwrap(), c.u64().unwrap())
            })
            .collect();
        let a = |p, i| MessageKey::new(Position(p), i).0;
        assert_eq!(
            decoded,
            vec![
                ("a".to_string(), a(5, 0)),
                ("a".to_string(), a(5, 1)),
                ("a".to_string(), a(300, 0)),
                ("b".to_string(), a(0, 0)),
                ("ab".to_string(), a(1, 0)),
            ]
        );
    }

    #[test]
    fn snapshot_decodes_every_kind_of_key() {
        let add = SubscriptionAdd {
            client_id: "c".into(),
            subscription_name: "s".into(),
            topic: "topic://t".into(),
            selector: "x > 1".into(),
            queue: "q".into(),
            no_local: true,
        };
        let mut snapshot = IndexSnapshot::default();
        let entries: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (META_VERSION.to_vec(), INDEX_VERSION.to_be_bytes().to_vec()),
            (META_END.to_vec(), 77u64.to_be_bytes().to_vec()),
            (META_EPOCH.to_vec(), 3u64.to_be_bytes().to_vec()),
            (message_key("q", MessageKey(9)), vec![]),
            (message_key("q", MessageKey(10)), vec![]),
            (
                subscription_key("c", "s"),
                subscription_value(Position(40), &add),
            ),
            // An index written before the audit had stamps: the stamp reads as 0.
            (producer_key("p"), 12u64.to_be_bytes().to_vec()),
            (
                producer_key("r"),
                [7u64.to_be_bytes(), 655_360u64.to_be_bytes()].concat(),
            ),
            (producer_key("s"), producer_value(2, 655_360, Position(99))),
            (dependency_key(Position(0), Position(100)), vec![]),
        ];
        for (k, v) in &entries {
            assert_eq!(snapshot.take(k, v), Some(()), "{k:?}");
        }
        assert_eq!(snapshot.version, Some(INDEX_VERSION));
        assert_eq!(snapshot.end, Some(Position(77)));
        assert_eq!(snapshot.epoch, 3);
        assert_eq!(
            snapshot.messages,
            vec![("q".to_string(), vec![MessageKey(9), MessageKey(10)])]
        );
        assert_eq!(
            snapshot.subscriptions,
            vec![LiveSubscription {
                position: Position(40),
                add
            }]
        );
        assert_eq!(
            snapshot.producers,
            vec![
                ("p".to_string(), 12, 0, Position(0)),
                ("r".to_string(), 7, 655_360, Position(10)),
                ("s".to_string(), 2, 655_360, Position(99)),
            ]
        );
        assert_eq!(snapshot.dependencies, vec![(Position(0), Position(100))]);
        assert_eq!(snapshot.take(&[MESSAGE, 0, 0], &[]), None);
        assert_eq!(snapshot.take(b"zzz", &[]), None);
    }

    #[test]
    fn index_survives_close_and_wipe_empties_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index");
        let (index, wiped) = Index::open(path.clone(), Box::new(|| Position(u64::MAX))).unwrap();
        assert_eq!(wiped, None);
        index.apply(
            vec![IndexOp::Put(message_key("q", MessageKey(1)), vec![])],
            Position(10),
        );
        index.close().unwrap();
        let (index, _) = Index::open(path.clone(), Box::new(|| Position(u64::MAX))).unwrap();
        let snapshot = index.load().unwrap();
        assert_eq!(snapshot.end, Some(Position(10)));
        assert_eq!(snapshot.messages.len(), 1);
        index.wipe().unwrap();
        let snapshot = index.load().unwrap();
        assert_eq!(snapshot.end, None);
        assert!(snapshot.messages.is_empty());
    }

    #[test]
    fn marker_distinguishes_clean_same_boot_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(read_marker(dir.path()), Trust::Untrusted(_)));
        mark_open(dir.path()).unwrap();
        let expected = if boot_id().is_some() {
            Trust::SameBoot
        } else {
            read_marker(dir.path())
        };
        assert_eq!(read_marker(dir.path()), expected);
        mark_clean(dir.path()).unwrap();
        assert_eq!(read_marker(dir.path()), Trust::Clean);
        fs::write(dir.path().join(MARKER), "open some-other-boot\n").unwrap();
        assert!(matches!(read_marker(dir.path()), Trust::Untrusted(_)));
    }
}
