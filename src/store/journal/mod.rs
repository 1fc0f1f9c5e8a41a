//! The write-ahead journal: append-only segment files of framed records, the source of truth.
//!
//! Owns the segment files `<first position as 16 hex digits>.log` in the store directory and the
//! `journal.lock` file that keeps a second process out. Positions are assigned synchronously by
//! [`Journal`] (the caller's handle); the bytes go to a queue that one writer thread (or, for
//! inline batches, the appending caller) writes: one write per segment for each batch, one
//! `fdatasync` per batch (group commit), then the durable end is reported through the callback
//! given at open.
//!
//! It must never: report a position durable before its bytes are fsynced (when fsync is on);
//! retry a failed write or fsync (the journal stops instead); interpret records beyond checking
//! that their frames decode; let a reader see bytes that are not yet written.
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

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read};
#[cfg(unix)]
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, RwLock, TryLockError};
use std::thread::JoinHandle;
#[cfg(windows)]
use windows_io::FileExt;

use bytes::{Bytes, BytesMut};
use tracing::{debug, error, info, warn};

use super::record::{
    check_frame, decode_frame, encode_frame, encoded_body_len, FrameError, Position, Record,
    FRAME_HEADER_LEN, MAX_RECORD_LEN,
};
use super::StoreError;

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

/// The file name of the segment starting at `start`.
pub fn segment_file_name(start: Position) -> String {
    format!("{:016x}.log", start.0)
}

fn segment_path(directory: &Path, start: u64) -> PathBuf {
    directory.join(segment_file_name(Position(start)))
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".log")?;
    if hex.len() != 16 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

fn io_error(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io {
        operation,
        path,
        source,
    }
}

/// Extends `file` to `len` bytes of written zeros (never shrinks it). Zeros are written, not
/// `fallocate`d: overwriting an unwritten extent makes every later `fdatasync` update extent
/// metadata too, which costs a third more per fsync on ext4 (see the module docs).
fn preallocate(file: &File, len: u64, path: &Path) -> Result<(), StoreError> {
    let size = file.metadata().map_err(io_error("stat", path))?.len();
    static ZEROS: [u8; 256 << 10] = [0; 256 << 10];
    let mut at = size;
    while at < len {
        let n = (len - at).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], at)
            .map_err(io_error("preallocate", path))?;
        at += n as u64;
    }
    Ok(())
}

/// The file the next segment is prepared in (see the module docs); never read by recovery.
const SPARE_FILE: &str = "next-segment.tmp";

/// Prepares the next segment on its own thread: `SPARE_FILE`, `len` bytes of zeros, fsynced
/// when `fsync` is on. The writer links it into place at rotation.
/// `None` when no thread could be started: the writer then prepares the segment at rotation.
fn prepare_spare(
    directory: &Path,
    len: u64,
    fsync: bool,
) -> Option<JoinHandle<Result<File, StoreError>>> {
    let path = directory.join(SPARE_FILE);
    let prepare = move || {
        // Never an existing file: where a deleted name lingers while a handle is open (Windows
        // without POSIX delete semantics, Wine), `SPARE_FILE` can still name the current
        // segment, linked into place at the last rotation; truncating it would wipe that
        // segment. The writer then creates the segment itself at rotation.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_error("create", &path))?;
        preallocate(&file, len, &path)?;
        if fsync {
            file.sync_data().map_err(io_error("fsync", &path))?;
        }
        Ok(file)
    };
    std::thread::Builder::new()
        .name("ferromq-journal-prealloc".into())
        .spawn(prepare)
        .inspect_err(|e| warn!("could not start the segment preparation thread: {e}"))
        .ok()
}

/// Makes the directory's entries (new, renamed and deleted segments) durable.
fn sync_directory(directory: &Path) -> Result<(), StoreError> {
    super::sync::sync_directory(directory).map_err(io_error("fsync directory", directory))
}

/// Syncs every segment in `starts` and the directory: segments written while fsync was off
/// (a slave under `local_disk`) may be only in the page cache, and once fsync is on their
/// bytes count as durable.
fn sync_segments(
    directory: &Path,
    starts: impl IntoIterator<Item = u64>,
) -> Result<(), StoreError> {
    for start in starts {
        let path = segment_path(directory, start);
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_error("open to fsync", &path))?;
        file.sync_data().map_err(io_error("fsync", &path))?;
    }
    sync_directory(directory)
}

/// `pread`/`pwrite` for Windows, as `std::os::unix::fs::FileExt` names them: `seek_read` and
/// `seek_write` also move the handle's cursor, which the journal never uses.
#[cfg(windows)]
mod windows_io {
    use std::fs::File;
    use std::io::{Error, ErrorKind, Result};
    use std::os::windows::fs::FileExt as _;

    pub trait FileExt {
        fn write_all_at(&self, buf: &[u8], offset: u64) -> Result<()>;
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    }

    impl FileExt for File {
        fn write_all_at(&self, mut buf: &[u8], mut offset: u64) -> Result<()> {
            while !buf.is_empty() {
                match self.seek_write(buf, offset) {
                    Ok(0) => return Err(Error::new(ErrorKind::WriteZero, "wrote nothing")),
                    Ok(n) => {
                        buf = &buf[n..];
                        offset += n as u64;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }

        fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> Result<()> {
            while !buf.is_empty() {
                match self.seek_read(buf, offset) {
                    Ok(0) => return Err(Error::new(ErrorKind::UnexpectedEof, "end of file")),
                    Ok(n) => {
                        buf = &mut buf[n..];
                        offset += n as u64;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
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
        if let Err(e) = writer.handle_queued() {
            self.shared.fail(e.to_string());
        }
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
    /// Held (locked) for the journal's life.
    _lock: File,
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
        preallocate(&file, options.log_size, &current_path)?;
        if options.fsync {
            // A previous run without fsync may have left recovered bytes only in the page cache,
            // in any segment it wrote.
            let live = recovery
                .segments
                .iter()
                .filter(|(_, state)| matches!(state, SegmentState::Live))
                .map(|&(start, _)| start);
            sync_segments(&directory, live)?;
        }
        let segments = recovery
            .segments
            .iter()
            .map(|&(start, state)| (start, Segment::new(state)))
            .collect();
        let shared = Arc::new(Shared {
            directory: directory.clone(),
            segments: RwLock::new(segments),
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
            #[cfg(test)]
            crashed: AtomicBool::new(false),
        });
        let writer = Writer {
            shared: shared.clone(),
            fsync: options.fsync,
            log_size: options.log_size,
            on_durable,
            file,
            file_start: current_start,
            file_offset: recovery.end - current_start,
            buffer: Vec::new(),
            end: recovery.end,
            reported: recovery.end,
            unsynced: false,
            to_sync: Vec::new(),
            directory_dirty: false,
            releases: Vec::new(),
            spare: prepare_spare(&directory, options.log_size, options.fsync),
        };
        let state = Arc::new(Mutex::new(writer));
        let thread_state = state.clone();
        let writer = std::thread::Builder::new()
            .name("ferromq-journal".into())
            .spawn(move || Writer::run(&thread_state))
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
            _lock: lock,
        })
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

    pub fn stats(&self) -> JournalStats {
        let shared = &self.shared;
        let written = shared.written.load(Ordering::Acquire);
        let map = shared.segments.read().unwrap();
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
        JournalStats {
            segments,
            bytes,
            oldest: oldest_of(&map),
            end: Position(self.end),
            written: Position(written),
            durable: Position(shared.durable.load(Ordering::Acquire)),
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

// ---------------------------------------------------------------------------------------------
// Recovery

struct Recovery {
    /// Every remaining segment file, oldest first; the last is the current segment (`Live`).
    segments: Vec<(u64, SegmentState)>,
    end: u64,
}

/// Scans the segments, keeps the longest valid prefix of the journal and normalizes the files.
fn recover(directory: &Path, fsync: bool, only_copy: bool) -> Result<Recovery, StoreError> {
    let mut files = Vec::new();
    for entry in fs::read_dir(directory).map_err(io_error("list", directory))? {
        let entry = entry.map_err(io_error("list", directory))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        match parse_segment_name(name) {
            Some(start) => files.push(start),
            None if name.ends_with(".log") => {
                warn!(file = %entry.path().display(), "ignoring a .log file that is not named like a journal segment")
            }
            None => {}
        }
    }
    files.sort_unstable();
    if files.is_empty() {
        let path = segment_path(directory, 0);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_error("create segment", &path))?;
        if fsync {
            sync_directory(directory)?;
        }
        info!(directory = %directory.display(), "created a new journal");
        return Ok(Recovery {
            segments: vec![(0, SegmentState::Live)],
            end: 0,
        });
    }

    // (start, length, tombstone)
    let mut kept: Vec<(u64, u64, bool)> = Vec::new();
    let mut expected: Option<u64> = None;
    let mut recovered_frames = 0u64;
    for (i, &start) in files.iter().enumerate() {
        let path = segment_path(directory, start);
        let is_last = i + 1 == files.len();
        if let Some(expected) = expected {
            if start != expected {
                warn!(
                    file = %path.display(),
                    position = expected,
                    "journal segment starts at {start} but the previous one ends at {expected}: \
                     the journal ends at the gap"
                );
                delete_unreachable(directory, &files[i..], fsync)?;
                break;
            }
        }
        let scan = scan_segment(&path).map_err(io_error("read", &path))?;
        if scan.size == 0 && !is_last {
            kept.push((start, 0, true));
            expected = None;
            continue;
        }
        let mut problem = scan.problem;
        if problem.is_none() && !is_last && scan.valid_len < scan.size {
            if start + scan.valid_len == files[i + 1] {
                // A finished segment whose preallocated tail was not cut yet.
                cut_to(&path, scan.valid_len, fsync)?;
            } else {
                // Zeros where records should be (the next segment starts later): data lost
                // in the middle, treated as a corrupt frame. Only a zero-length file is a
                // tombstone. With fsync on, a segment is released only once its data is
                // durable and its cut to zero bytes is fsynced before the next batch counts
                // (a skipped range's tombstone is cut and fsynced with the batch after it),
                // so a released segment reads back as its records or as nothing, never as
                // zeros with records after them. Without fsync a power loss can undo that
                // cut and lose the data alike: a released segment and a lost live one then
                // look the same, and only cutting here (or refusing, for the only copy) is
                // safe.
                problem = Some(format!(
                    "zeros from byte {} on, where the records up to the next segment at {} \
                     should be: their data was lost",
                    scan.valid_len,
                    files[i + 1]
                ));
            }
        }
        recovered_frames += scan.frames;
        kept.push((start, scan.valid_len, false));
        expected = Some(start + scan.valid_len);
        if let Some(cause) = problem {
            let position = start + scan.valid_len;
            if only_copy && !is_last {
                // A batch spanning a rotation can tear the end of this segment and leave the
                // start of the next one written; more than that after it was confirmed.
                let mut after = 0u64;
                for &later in &files[i + 1..] {
                    let later_path = segment_path(directory, later);
                    after += scan_segment(&later_path)
                        .map_err(io_error("read", &later_path))?
                        .valid_len;
                }
                if after > MAX_BATCH_BYTES as u64 {
                    return Err(StoreError::CorruptBeforeRecords {
                        path,
                        position: Position(position),
                        cause,
                        after,
                    });
                }
            }
            warn!(
                file = %path.display(),
                position,
                "journal frame at position {position} is torn or corrupt ({cause}); truncating \
                 the segment there"
            );
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_error("open for truncation", &path))?;
            file.set_len(scan.valid_len)
                .map_err(io_error("truncate", &path))?;
            file.sync_all().map_err(io_error("fsync", &path))?;
            if !is_last {
                delete_unreachable(directory, &files[i + 1..], fsync)?;
            }
            break;
        }
    }

    normalize(directory, &mut kept)?;
    let &(last_start, last_len, _) = kept.last().expect("the last kept file is never removed");
    let end = last_start + last_len;
    let segments = kept
        .iter()
        .map(|&(start, _, tombstone)| {
            let state = if tombstone {
                SegmentState::Released
            } else {
                SegmentState::Live
            };
            (start, state)
        })
        .collect();
    info!(
        directory = %directory.display(),
        end,
        frames = recovered_frames,
        "journal recovered"
    );
    Ok(Recovery { segments, end })
}

/// Deletes tombstones that carry no information (leading, or right after another tombstone),
/// and an empty last segment that directly follows a segment with data (so the current segment
/// always holds the last record, if there is one).
fn normalize(directory: &Path, kept: &mut Vec<(u64, u64, bool)>) -> Result<(), StoreError> {
    let mut index = 0;
    while index < kept.len() {
        let (start, _, tombstone) = kept[index];
        let redundant = tombstone && (index == 0 || kept[index - 1].2);
        if redundant {
            let path = segment_path(directory, start);
            debug!(file = %path.display(), "deleting a redundant tombstone");
            fs::remove_file(&path).map_err(io_error("delete", &path))?;
            kept.remove(index);
        } else {
            index += 1;
        }
    }
    if let [.., (previous_start, previous_len, false), (last_start, 0, false)] = kept[..] {
        if previous_start + previous_len == last_start {
            let path = segment_path(directory, last_start);
            fs::remove_file(&path).map_err(io_error("delete", &path))?;
            kept.pop();
        }
    }
    Ok(())
}

fn cut_to(path: &Path, len: u64, fsync: bool) -> Result<(), StoreError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_error("open for truncation", path))?;
    file.set_len(len).map_err(io_error("truncate", path))?;
    if fsync {
        file.sync_all().map_err(io_error("fsync", path))?;
    }
    Ok(())
}

fn delete_unreachable(directory: &Path, starts: &[u64], fsync: bool) -> Result<(), StoreError> {
    let names: Vec<String> = starts
        .iter()
        .map(|&s| segment_file_name(Position(s)))
        .collect();
    error!(
        directory = %directory.display(),
        "deleting journal segments unreachable past a hole: {}",
        names.join(", ")
    );
    for &start in starts {
        let path = segment_path(directory, start);
        fs::remove_file(&path).map_err(io_error("delete", &path))?;
    }
    if fsync {
        sync_directory(directory)?;
    }
    Ok(())
}

struct Scan {
    /// Size of the file.
    size: u64,
    /// Length of the valid frames (the data); zeros may follow up to `size`.
    valid_len: u64,
    frames: u64,
    /// Why the segment stops being valid at `valid_len` (before its end), if it does.
    problem: Option<String>,
}

/// Checks every frame of one segment file.
fn scan_segment(path: &Path) -> std::io::Result<Scan> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut input = BufReader::with_capacity(READ_CHUNK, file);
    let mut offset = 0u64;
    let mut frames = 0;
    let problem = loop {
        let remaining = size - offset;
        if remaining == 0 {
            break None;
        }
        if remaining < FRAME_HEADER_LEN as u64 {
            break Some(format!("torn frame header: {remaining} bytes"));
        }
        let mut header = [0u8; FRAME_HEADER_LEN];
        input.read_exact(&mut header)?;
        if header == [0u8; FRAME_HEADER_LEN] {
            // The end of the data in a preallocated segment: only zeros may follow.
            break first_non_zero(&mut input, remaining - FRAME_HEADER_LEN as u64)?.map(|at| {
                format!(
                    "zero frame header followed by non-zero bytes {} bytes later",
                    at + FRAME_HEADER_LEN as u64
                )
            });
        }
        let len = u32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
        if len > MAX_RECORD_LEN {
            break Some(FrameError::TooLarge(len, MAX_RECORD_LEN).to_string());
        }
        let frame_len = (FRAME_HEADER_LEN + len) as u64;
        if remaining < frame_len {
            break Some(format!(
                "torn frame: {len} body bytes declared, {} present",
                remaining - FRAME_HEADER_LEN as u64
            ));
        }
        let mut frame = vec![0u8; FRAME_HEADER_LEN + len];
        frame[..FRAME_HEADER_LEN].copy_from_slice(&header);
        input.read_exact(&mut frame[FRAME_HEADER_LEN..])?;
        if let Err(e) = check_frame(&frame) {
            break Some(e.to_string());
        }
        if let Err(e) = decode_frame(Bytes::from(frame)) {
            break Some(e.to_string());
        }
        offset += frame_len;
        frames += 1;
    };
    Ok(Scan {
        size,
        valid_len: offset,
        frames,
        problem,
    })
}

/// Length of the data (valid frames) in a segment file, preallocated tail excluded (tests).
#[cfg(test)]
pub(crate) fn data_len(path: &Path) -> u64 {
    scan_segment(path).unwrap().valid_len
}

/// The offset of the first non-zero byte among the next `n` bytes of `input`, if any.
fn first_non_zero(input: &mut impl Read, n: u64) -> std::io::Result<Option<u64>> {
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut at = 0u64;
    while at < n {
        let len = (n - at).min(chunk.len() as u64) as usize;
        input.read_exact(&mut chunk[..len])?;
        if let Some(i) = chunk[..len].iter().position(|&b| b != 0) {
            return Ok(Some(at + i as u64));
        }
        at += len as u64;
    }
    Ok(None)
}

// ---------------------------------------------------------------------------------------------
// The writer thread

struct Writer {
    shared: Arc<Shared>,
    fsync: bool,
    /// Segments are preallocated to this size.
    log_size: u64,
    on_durable: DurableCallback,
    /// The current segment, its start and the bytes already written into it.
    file: File,
    file_start: u64,
    file_offset: u64,
    /// Frames of this batch not yet written to `file`.
    buffer: Vec<u8>,
    /// Position after the last buffered byte.
    end: u64,
    /// Last durable end reported.
    reported: u64,
    /// Bytes written since the last fsync.
    unsynced: bool,
    /// Segments finished during this batch, to fsync with it.
    to_sync: Vec<(u64, File)>,
    directory_dirty: bool,
    /// Releases requested during this batch: run after its fsync.
    releases: Vec<u64>,
    /// The next segment, being prepared (see [`prepare_spare`]).
    spare: Option<JoinHandle<Result<File, StoreError>>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        // A journal reopened in this process must not find a spare still being written.
        if let Some(spare) = self.spare.take() {
            let _ = spare.join();
        }
    }
}

impl Writer {
    /// The writer thread: sleeps until commands are queued, then takes the state and handles
    /// them. Ends when the journal closes (after the last queued command) or fails.
    fn run(state: &Mutex<Writer>) {
        let shared = state.lock().unwrap().shared.clone();
        loop {
            {
                let mut inbox = shared.inbox.lock().unwrap();
                while inbox.commands.is_empty() {
                    if inbox.closed {
                        return;
                    }
                    inbox.sleeping = true;
                    inbox = shared.ready.wait(inbox).unwrap();
                    inbox.sleeping = false;
                }
            }
            let mut writer = state.lock().unwrap();
            if let Err(e) = writer.handle_queued() {
                shared.fail(e.to_string());
                return;
            }
        }
    }

    /// Handles every queued command: one write and one fsync per batch of up to
    /// [`MAX_BATCH_BYTES`], the durable end reported after each. Runs under the writer's mutex
    /// (the only place commands leave the queue, so they are handled in queue order).
    fn handle_queued(&mut self) -> Result<(), StoreError> {
        loop {
            // What was queued while these were handled joins the same batch.
            let commands = std::mem::take(&mut self.shared.inbox.lock().unwrap().commands);
            if commands.is_empty() {
                return self.finish_batch();
            }
            for command in commands {
                self.handle(command)?;
                if self.buffer.len() >= MAX_BATCH_BYTES {
                    self.finish_batch()?;
                }
            }
        }
    }

    fn handle(&mut self, command: Command) -> Result<(), StoreError> {
        #[cfg(test)]
        if self.shared.crashed.load(Ordering::Acquire) {
            self.buffer.clear();
            return Err(StoreError::JournalFailed("crashed (test)".into()));
        }
        match command {
            Command::Append { bytes, new_segment } => {
                if let Some(start) = new_segment {
                    self.rotate(start)?;
                }
                self.buffer.extend_from_slice(&bytes);
                self.end += bytes.len() as u64;
            }
            Command::Release { start } => self.releases.push(start),
            Command::Reset { start, reply } => {
                self.finish_batch()?;
                let result = self.reset(start);
                let failed = result.is_err();
                let _ = reply.send(result);
                if failed {
                    return Err(StoreError::JournalFailed(format!(
                        "reset to {start} failed"
                    )));
                }
            }
            Command::SetFsync { on, reply } => {
                self.finish_batch()?;
                if on && !self.fsync {
                    // As at open: bytes written without fsync may be only in the page cache,
                    // in every segment written since.
                    let live: Vec<u64> = self
                        .shared
                        .segments
                        .read()
                        .unwrap()
                        .iter()
                        .filter(|(_, s)| matches!(s.state, SegmentState::Live))
                        .map(|(&start, _)| start)
                        .collect();
                    sync_segments(&self.shared.directory, live)?;
                }
                self.fsync = on;
                let _ = reply.send(Ok(()));
            }
            Command::Truncate { position, reply } => {
                self.finish_batch()?;
                let result = self.truncate(position);
                let failed = result.is_err();
                let _ = reply.send(result);
                if failed {
                    return Err(StoreError::JournalFailed(format!(
                        "truncation to {position} failed"
                    )));
                }
            }
            #[cfg(test)]
            Command::Hold { held, wait } => {
                let _ = held.send(());
                let _ = wait.recv();
            }
        }
        Ok(())
    }

    fn current_path(&self) -> PathBuf {
        segment_path(&self.shared.directory, self.file_start)
    }

    fn write_buffer(&mut self) -> Result<(), StoreError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.file
            .write_all_at(&self.buffer, self.file_offset)
            .map_err(|source| StoreError::Io {
                operation: "write",
                path: self.current_path(),
                source,
            })?;
        self.file_offset += self.buffer.len() as u64;
        self.buffer.clear();
        self.unsynced = true;
        Ok(())
    }

    fn rotate(&mut self, start: u64) -> Result<(), StoreError> {
        self.write_buffer()?;
        // The finished segment keeps only its data (a tombstone of a skipped range: none).
        self.file.set_len(self.file_offset).map_err(io_error(
            "cut the preallocated tail of",
            &self.current_path(),
        ))?;
        let path = segment_path(&self.shared.directory, start);
        let file = self.take_spare(&path)?;
        self.spare = prepare_spare(&self.shared.directory, self.log_size, self.fsync);
        let previous = std::mem::replace(&mut self.file, file);
        if self.fsync {
            self.to_sync.push((self.file_start, previous));
        }
        self.file_start = start;
        self.file_offset = 0;
        // Equal to `end` except after a replication skip over a released range.
        self.end = start;
        self.directory_dirty = true;
        Ok(())
    }

    /// The prepared spare linked to `path`, or (if its preparation failed) a segment created
    /// and filled here.
    fn take_spare(&mut self, path: &Path) -> Result<File, StoreError> {
        let prepared = match self.spare.take().map(JoinHandle::join) {
            Some(Ok(Ok(file))) => Some(file),
            Some(Ok(Err(e))) => {
                warn!("preparing the next journal segment failed, creating it now: {e}");
                None
            }
            Some(Err(_)) => {
                warn!("the segment preparation thread died, creating the segment now");
                None
            }
            None => None,
        };
        if let Some(file) = prepared {
            let spare = self.shared.directory.join(SPARE_FILE);
            // A link, not a rename: it fails rather than replace a file already at `path`.
            fs::hard_link(&spare, path).map_err(io_error("link the prepared segment to", path))?;
            fs::remove_file(&spare).map_err(io_error("delete", &spare))?;
            return Ok(file);
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io_error("create segment", path))?;
        preallocate(&file, self.log_size, path)?;
        Ok(file)
    }

    /// Writes what is buffered, fsyncs it (group commit), reports the durable end, then runs
    /// the releases requested in this batch.
    fn finish_batch(&mut self) -> Result<(), StoreError> {
        self.write_buffer()?;
        self.shared.written.store(self.end, Ordering::Release);
        self.shared.written_watch.send_replace(Position(self.end));
        if self.fsync && (self.unsynced || !self.to_sync.is_empty() || self.directory_dirty) {
            for (start, file) in self.to_sync.drain(..) {
                let path = segment_path(&self.shared.directory, start);
                file.sync_data().map_err(io_error("fsync", &path))?;
            }
            self.file.sync_data().map_err(|source| StoreError::Io {
                operation: "fsync",
                path: self.current_path(),
                source,
            })?;
            if self.directory_dirty {
                sync_directory(&self.shared.directory)?;
            }
            self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        self.unsynced = false;
        self.directory_dirty = false;
        if self.end != self.reported {
            self.shared.batches.fetch_add(1, Ordering::Relaxed);
            self.reported = self.end;
            self.shared.durable.store(self.end, Ordering::Release);
            (self.on_durable)(Position(self.end));
        }
        for start in std::mem::take(&mut self.releases) {
            self.release(start)?;
        }
        Ok(())
    }

    /// Deletes a released segment, or truncates it to a tombstone when a segment with data
    /// precedes it (see the module docs). A failure here is logged, not fatal: the segment
    /// merely stays on disk until it is released again after the next start.
    fn release(&mut self, start: u64) -> Result<(), StoreError> {
        let directory = self.shared.directory.clone();
        let mut map = self.shared.segments.write().unwrap();
        let leading_or_after_tombstone = map
            .range(..start)
            .next_back()
            .is_none_or(|(_, s)| s.state == SegmentState::Released);
        let Some(segment) = map.get_mut(&start) else {
            return Ok(());
        };
        segment.reader.lock().unwrap().take();
        let path = segment_path(&directory, start);
        let result = if leading_or_after_tombstone {
            map.remove(&start);
            fs::remove_file(&path).map_err(io_error("delete", &path))
        } else {
            segment.state = SegmentState::Released;
            OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| {
                    f.set_len(0)?;
                    if self.fsync {
                        f.sync_all()?;
                    }
                    Ok(())
                })
                .map_err(io_error("truncate released segment", &path))
        };
        if let Err(e) = result {
            error!("releasing journal segment {}: {e}", path.display());
            return Ok(());
        }
        // A tombstone right after what was just released is now redundant.
        let next_tombstone = map
            .range(start + 1..)
            .next()
            .filter(|(_, s)| s.state == SegmentState::Released)
            .map(|(&next, _)| next);
        if let Some(next) = next_tombstone {
            map.remove(&next);
            let next_path = segment_path(&directory, next);
            if let Err(e) = fs::remove_file(&next_path) {
                error!("deleting journal tombstone {}: {e}", next_path.display());
            }
        }
        drop(map);
        if self.fsync {
            // The next release may depend on this one having happened (see store::state).
            if let Err(e) = sync_directory(&directory) {
                error!("after releasing journal segment {}: {e}", path.display());
            }
        }
        self.shared.released.fetch_add(1, Ordering::Relaxed);
        debug!(file = %path.display(), "released journal segment");
        Ok(())
    }

    fn truncate(&mut self, position: u64) -> Result<(), StoreError> {
        let directory = self.shared.directory.clone();
        let mut map = self.shared.segments.write().unwrap();
        let containing = *map
            .range(..=position)
            .next_back()
            .map(|(start, _)| start)
            .expect("the handle checked the segment");
        let later: Vec<u64> = map.range(position + 1..).map(|(&s, _)| s).collect();
        for start in later.into_iter().rev() {
            if let Some(segment) = map.remove(&start) {
                segment.reader.lock().unwrap().take();
            }
            let path = segment_path(&directory, start);
            fs::remove_file(&path).map_err(io_error("delete", &path))?;
        }
        if containing != self.file_start {
            let path = segment_path(&directory, containing);
            self.file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_error("open for append", &path))?;
            self.file_start = containing;
        }
        drop(map);
        let path = self.current_path();
        self.file
            .set_len(position - containing)
            .map_err(io_error("truncate", &path))?;
        preallocate(&self.file, self.log_size, &path)?;
        // Always synced: new frames must never land before stale ones in a file whose
        // truncation was lost.
        self.file.sync_all().map_err(io_error("fsync", &path))?;
        sync_directory(&directory)?;
        self.file_offset = position - containing;
        self.end = position;
        self.reported = position;
        self.shared.written.store(position, Ordering::Release);
        self.shared.durable.store(position, Ordering::Release);
        self.shared.written_watch.send_replace(Position(position));
        // Whoever counts this journal's durable end (a master's quorum, once this node is
        // elected) must not go on counting the records cut.
        (self.on_durable)(Position(position));
        info!(file = %path.display(), position, "journal truncated");
        Ok(())
    }

    /// Deletes every segment and starts an empty one at `start` (see [`Journal::reset`]).
    fn reset(&mut self, start: u64) -> Result<(), StoreError> {
        let directory = self.shared.directory.clone();
        let mut map = self.shared.segments.write().unwrap();
        let all: Vec<u64> = map.keys().copied().collect();
        for segment in all {
            if let Some(segment) = map.remove(&segment) {
                segment.reader.lock().unwrap().take();
            }
            let path = segment_path(&directory, segment);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("delete", &path)(e)),
            }
        }
        let path = segment_path(&directory, start);
        self.file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_error("create segment", &path))?;
        map.insert(start, Segment::new(SegmentState::Live));
        drop(map);
        preallocate(&self.file, self.log_size, &path)?;
        self.file.sync_all().map_err(io_error("fsync", &path))?;
        sync_directory(&directory)?;
        self.file_start = start;
        self.file_offset = 0;
        self.buffer.clear();
        self.to_sync.clear();
        self.releases.clear();
        self.unsynced = false;
        self.directory_dirty = false;
        self.end = start;
        self.reported = start;
        self.shared.written.store(start, Ordering::Release);
        self.shared.durable.store(start, Ordering::Release);
        self.shared.written_watch.send_replace(Position(start));
        (self.on_durable)(Position(start));
        info!(file = %path.display(), start, "journal reset");
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Reading

/// Reads records below the written watermark. Cheap to clone; Send + Sync.
#[derive(Clone)]
pub struct JournalReader {
    shared: Arc<Shared>,
}

/// Where a position's bytes are: the file, its start position and the end of readable bytes.
struct Located {
    file: Arc<File>,
    path: PathBuf,
    start: u64,
    limit: u64,
}

impl JournalReader {
    /// Everything before this is written and readable.
    pub fn written(&self) -> Position {
        Position(self.shared.written.load(Ordering::Acquire))
    }

    /// The first retained position.
    pub fn oldest(&self) -> Position {
        oldest_of(&self.shared.segments.read().unwrap())
    }

    /// The written end, updated by the writer thread after each write (before its fsync).
    pub fn written_watch(&self) -> tokio::sync::watch::Receiver<Position> {
        self.shared.written_watch.subscribe()
    }

    /// Released ranges `(start, end)` after the oldest retained position: positions whose
    /// records are gone although later ones are retained (replication skips them).
    pub fn released_ranges(&self) -> Vec<(Position, Position)> {
        let map = self.shared.segments.read().unwrap();
        let oldest = oldest_of(&map);
        let mut out = Vec::new();
        let mut iter = map.iter().peekable();
        while let Some((&start, segment)) = iter.next() {
            if segment.state == SegmentState::Released {
                if let Some((&next, _)) = iter.peek() {
                    if start > oldest.0 {
                        out.push((Position(start), Position(next)));
                    }
                }
            }
        }
        out
    }

    fn locate(&self, position: u64) -> Result<Located, StoreError> {
        let written = self.shared.written.load(Ordering::Acquire);
        if position >= written {
            return Err(StoreError::NotWritten {
                position: Position(position),
                written: Position(written),
            });
        }
        let map = self.shared.segments.read().unwrap();
        let not_retained = || StoreError::NotRetained {
            position: Position(position),
            oldest: oldest_of(&map),
        };
        let Some((&start, segment)) = map.range(..=position).next_back() else {
            return Err(not_retained());
        };
        if segment.state == SegmentState::Released {
            return Err(not_retained());
        }
        let limit = map
            .range(start + 1..)
            .next()
            .map(|(&next, _)| next)
            .unwrap_or(u64::MAX)
            .min(written);
        let path = segment_path(&self.shared.directory, start);
        let mut reader = segment.reader.lock().unwrap();
        let file = match &*reader {
            Some(file) => file.clone(),
            None => match File::open(&path) {
                Ok(file) => {
                    let file = Arc::new(file);
                    *reader = Some(file.clone());
                    file
                }
                Err(e) => {
                    drop(reader);
                    drop(map);
                    return Err(self.read_failed(position, start, io_error("open", &path)(e)));
                }
            },
        };
        Ok(Located {
            file,
            path,
            start,
            limit,
        })
    }

    /// A retained segment could not be opened or read: the disk or the files are broken, and
    /// a journal that cannot read its own records can neither replicate nor deliver them, so
    /// it fails as a failed write does (see [`Journal::failure`]). A segment released in the
    /// meantime is only no longer retained.
    fn read_failed(&self, position: u64, start: u64, error: StoreError) -> StoreError {
        let map = self.shared.segments.read().unwrap();
        match map.get(&start) {
            Some(segment) if segment.state != SegmentState::Released => {
                drop(map);
                self.shared
                    .fail(format!("cannot read the journal: {error}"));
                error
            }
            _ => StoreError::NotRetained {
                position: Position(position),
                oldest: oldest_of(&map),
            },
        }
    }

    /// Fills `buffer` from `position` in its segment (see [`JournalReader::read_failed`]).
    fn read_exact(
        &self,
        located: &Located,
        buffer: &mut [u8],
        position: u64,
    ) -> Result<(), StoreError> {
        located
            .file
            .read_exact_at(buffer, position - located.start)
            .map_err(|e| {
                let error = io_error("read", &located.path)(e);
                self.read_failed(position, located.start, error)
            })
    }

    /// The frame (header included) of the record at `position`.
    pub fn read_frame(&self, position: Position) -> Result<Bytes, StoreError> {
        let located = self.locate(position.0)?;
        let corrupt = |cause| StoreError::Corrupt {
            path: located.path.clone(),
            position,
            cause,
        };
        let mut header = [0u8; FRAME_HEADER_LEN];
        if position.0 + FRAME_HEADER_LEN as u64 > located.limit {
            return Err(corrupt(FrameError::Undecodable(
                "frame header crosses the end of the segment".into(),
            )));
        }
        self.read_exact(&located, &mut header, position.0)?;
        let len = u32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
        if len > MAX_RECORD_LEN {
            return Err(corrupt(FrameError::TooLarge(len, MAX_RECORD_LEN)));
        }
        let frame_len = FRAME_HEADER_LEN + len;
        if position.0 + frame_len as u64 > located.limit {
            return Err(corrupt(FrameError::Undecodable(format!(
                "frame of {frame_len} bytes crosses the end of the segment"
            ))));
        }
        let mut frame = vec![0u8; frame_len];
        self.read_exact(&located, &mut frame, position.0)?;
        check_frame(&frame).map_err(corrupt)?;
        Ok(Bytes::from(frame))
    }

    /// The record at `position`.
    pub fn read(&self, position: Position) -> Result<Record, StoreError> {
        let frame = self.read_frame(position)?;
        decode_frame(frame).map_err(|cause| StoreError::Corrupt {
            path: self.path_of(position),
            position,
            cause,
        })
    }

    fn path_of(&self, position: Position) -> PathBuf {
        let map = self.shared.segments.read().unwrap();
        let start = map
            .range(..=position.0)
            .next_back()
            .map(|(&s, _)| s)
            .unwrap_or(0);
        segment_path(&self.shared.directory, start)
    }

    /// Frames from `from` (a frame boundary) up to `limit` or the written watermark, whichever
    /// comes first.
    pub fn frames(&self, from: Position, limit: Position) -> Frames {
        Frames {
            reader: self.clone(),
            position: from.0,
            limit: limit.0,
            buffer: Vec::new(),
            buffer_start: 0,
            failed: false,
        }
    }

    /// Decoded records from `from` up to `limit` or the written watermark: (position, record,
    /// frame length).
    pub fn records(&self, from: Position, limit: Position) -> Records {
        Records {
            frames: self.frames(from, limit),
        }
    }
}

/// Iterator over `(position, frame)`; stops after the first error.
pub struct Frames {
    reader: JournalReader,
    position: u64,
    limit: u64,
    buffer: Vec<u8>,
    /// Position of `buffer[0]`.
    buffer_start: u64,
    failed: bool,
}

impl Frames {
    /// Makes `buffer` hold `position .. position + n`.
    fn fill(&mut self, n: usize) -> Result<(), StoreError> {
        let have_from = self.position.checked_sub(self.buffer_start);
        if let Some(offset) = have_from {
            if offset as usize + n <= self.buffer.len() {
                return Ok(());
            }
        }
        let located = self.reader.locate(self.position)?;
        if self.position + n as u64 > located.limit {
            return Err(StoreError::Corrupt {
                path: located.path,
                position: Position(self.position),
                cause: FrameError::Undecodable(format!(
                    "frame of at least {n} bytes crosses the end of the segment"
                )),
            });
        }
        let len = (n.max(READ_CHUNK) as u64).min(located.limit - self.position) as usize;
        self.buffer.resize(len, 0);
        self.reader
            .read_exact(&located, &mut self.buffer, self.position)?;
        self.buffer_start = self.position;
        Ok(())
    }

    fn next_frame(&mut self) -> Result<(Position, Bytes), StoreError> {
        self.fill(FRAME_HEADER_LEN)?;
        let offset = (self.position - self.buffer_start) as usize;
        let header = &self.buffer[offset..offset + FRAME_HEADER_LEN];
        let len = u32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
        let position = Position(self.position);
        if len > MAX_RECORD_LEN {
            return Err(StoreError::Corrupt {
                path: self.reader.path_of(position),
                position,
                cause: FrameError::TooLarge(len, MAX_RECORD_LEN),
            });
        }
        let frame_len = FRAME_HEADER_LEN + len;
        self.fill(frame_len)?;
        let offset = (self.position - self.buffer_start) as usize;
        let frame = &self.buffer[offset..offset + frame_len];
        check_frame(frame).map_err(|cause| StoreError::Corrupt {
            path: self.reader.path_of(position),
            position,
            cause,
        })?;
        // Copied out so a retained frame (or a message body decoded from it) never pins the
        // whole read-ahead chunk.
        let frame = Bytes::copy_from_slice(frame);
        self.position += frame_len as u64;
        Ok((position, frame))
    }
}

impl Iterator for Frames {
    type Item = Result<(Position, Bytes), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        let written = self.reader.shared.written.load(Ordering::Acquire);
        if self.failed || self.position >= self.limit.min(written) {
            return None;
        }
        let result = self.next_frame();
        self.failed = result.is_err();
        Some(result)
    }
}

/// Iterator over `(position, record, frame length)`; stops after the first error.
pub struct Records {
    frames: Frames,
}

impl Iterator for Records {
    type Item = Result<(Position, Record, u64), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (position, frame) = match self.frames.next()? {
            Ok(x) => x,
            Err(e) => return Some(Err(e)),
        };
        let len = frame.len() as u64;
        match decode_frame(frame) {
            Ok(record) => Some(Ok((position, record, len))),
            Err(cause) => {
                self.frames.failed = true;
                Some(Err(StoreError::Corrupt {
                    path: self.frames.reader.path_of(position),
                    position,
                    cause,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::{entry, Entry, Message, MessageAdd};
    use std::time::Duration;

    fn record(n: u64, body_len: usize) -> Record {
        Record {
            epoch: 1,
            entries: vec![Entry {
                kind: Some(entry::Kind::Add(MessageAdd {
                    queues: vec!["queue://q".into()],
                    message: Some(Message {
                        message_id: format!("m{n}"),
                        body: Bytes::from(vec![n as u8; body_len]),
                        ..Message::default()
                    }),
                })),
            }],
        }
    }

    fn frame_len(record: &Record) -> u64 {
        (FRAME_HEADER_LEN + encoded_body_len(record)) as u64
    }

    fn open(dir: &Path, log_size: u64, fsync: bool) -> (Journal, mpsc::Receiver<Position>) {
        let (tx, rx) = mpsc::channel();
        let journal = Journal::open(
            JournalOptions {
                directory: dir.to_path_buf(),
                log_size,
                fsync,
                only_copy: false,
            },
            Box::new(move |p| {
                let _ = tx.send(p);
            }),
        )
        .unwrap();
        (journal, rx)
    }

    fn wait_durable(rx: &mpsc::Receiver<Position>, target: Position) -> Vec<Position> {
        let mut seen = Vec::new();
        while seen.last().is_none_or(|&p| p < target) {
            seen.push(
                rx.recv_timeout(Duration::from_secs(10))
                    .expect("durable report"),
            );
        }
        seen
    }

    fn all_records(journal: &Journal) -> Vec<(Position, Record)> {
        journal
            .reader()
            .records(Position(0), journal.end())
            .map(|r| r.map(|(p, rec, _)| (p, rec)).unwrap())
            .collect()
    }

    fn segment_files(dir: &Path) -> Vec<(u64, u64)> {
        let mut files: Vec<(u64, u64)> = fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| {
                let e = e.unwrap();
                let start = parse_segment_name(e.file_name().to_str()?)?;
                Some((start, data_len(&e.path())))
            })
            .collect();
        files.sort();
        files
    }

    #[test]
    fn positions_are_stable_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, rx) = open(dir.path(), 1 << 20, false);
        let mut expected = Vec::new();
        let mut next = 0;
        for n in 0..20 {
            let r = record(n, n as usize * 7);
            let appended = journal.append(&r).unwrap();
            assert_eq!(appended.position, Position(next));
            assert_eq!(appended.len, frame_len(&r));
            next += appended.len;
            expected.push((appended.position, r));
        }
        assert_eq!(journal.end(), Position(next));
        wait_durable(&rx, Position(next));
        assert_eq!(all_records(&journal), expected);
        assert_eq!(journal.reader().read(expected[7].0).unwrap(), expected[7].1);
        journal.close().unwrap();

        let (mut journal, _rx) = open(dir.path(), 1 << 20, false);
        assert_eq!(journal.end(), Position(next));
        assert_eq!(all_records(&journal), expected);
        let appended = journal.append(&record(99, 1)).unwrap();
        assert_eq!(appended.position, Position(next));
    }

    /// Direct writes (a slave without fsync): durable when `end_direct` returns, on the
    /// caller's thread; in append order with what was queued for the thread before; across a
    /// rotation; and never with fsync on.
    #[test]
    fn direct_writes_are_durable_on_return_and_keep_the_order() {
        let dir = tempfile::tempdir().unwrap();
        let log_size = 4 * frame_len(&record(0, 200));
        let (mut journal, rx) = open(dir.path(), log_size, false);
        let frame = |n: u64| {
            let mut out = BytesMut::new();
            encode_frame(&record(n, 200), &mut out);
            out.freeze()
        };
        let mut expected = Vec::new();
        let first = journal.append(&record(0, 200)).unwrap();
        expected.push((first.position, record(0, 200)));
        wait_durable(&rx, journal.end());
        let batches = journal.stats().batches;
        journal.begin_direct();
        for n in 1..=6 {
            let at = journal.end();
            journal.append_frame(at, frame(n)).unwrap();
            expected.push((at, record(n, 200)));
        }
        journal.end_direct().unwrap();
        assert_eq!(journal.stats().durable, journal.end(), "durable on return");
        assert_eq!(rx.try_iter().last(), Some(journal.end()));
        assert_eq!(
            journal.stats().batches,
            batches + 1,
            "one batch, written here"
        );
        assert!(
            journal.segments().len() >= 2,
            "rotated inside the direct batch"
        );
        // One frame between begin_direct and end_direct.
        let one_direct = |journal: &mut Journal, n: u64, expected: &mut Vec<_>| {
            journal.begin_direct();
            let at = journal.end();
            journal.append_frame(at, frame(n)).unwrap();
            expected.push((at, record(n, 200)));
            journal.end_direct().unwrap();
        };
        // Something queued for the thread first: direct appends wait their turn.
        let queued = journal.append(&record(7, 200)).unwrap();
        expected.push((queued.position, record(7, 200)));
        one_direct(&mut journal, 8, &mut expected);
        wait_durable(&rx, journal.end());
        assert_eq!(all_records(&journal), expected);
        // With fsync on, appends always go through the thread.
        journal.set_fsync(true).unwrap();
        one_direct(&mut journal, 9, &mut expected);
        wait_durable(&rx, journal.end());
        journal.close().unwrap();
        let (journal, _rx) = open(dir.path(), log_size, false);
        assert_eq!(all_records(&journal), expected);
    }

    #[test]
    fn deferred_appends_are_written_by_the_flushing_caller_or_the_busy_writer() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, rx) = open(dir.path(), 1 << 20, true);
        let flusher = journal.flusher();
        // A writer thread just started looks at the queue once before it sleeps; had it not
        // gone to sleep yet, it would take the appends below itself.
        journal.wait_writer_asleep();
        let mut expected = Vec::new();
        for n in 0..3 {
            let appended = journal.append_deferred(&record(n, 100)).unwrap();
            expected.push((appended.position, record(n, 100)));
        }
        let caller = std::thread::current().id();
        flusher.flush();
        // Written, synced and reported before flush returned: by this thread, in one batch.
        assert_eq!(journal.stats().durable, journal.end());
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![journal.end()]);
        assert_eq!(std::thread::current().id(), caller);
        assert_eq!(journal.stats().fsyncs, 1);

        // While another batch is being written, flush leaves the queue to its writer, which
        // takes it once that batch is done, in order.
        let hold = journal.hold_writer();
        let queued = journal.append(&record(3, 100)).unwrap();
        expected.push((queued.position, record(3, 100)));
        let deferred = journal.append_deferred(&record(4, 100)).unwrap();
        expected.push((deferred.position, record(4, 100)));
        flusher.flush();
        assert!(
            journal.stats().durable < journal.end(),
            "nothing written yet"
        );
        drop(hold);
        wait_durable(&rx, journal.end());
        assert_eq!(all_records(&journal), expected);
        journal.close().unwrap();
        let (journal, _rx) = open(dir.path(), 1 << 20, true);
        assert_eq!(all_records(&journal), expected);
    }

    /// The owner of a journal can go away on the journal's own thread: its durable callback
    /// (a broker core confirmed from the writer thread) may hold the last handle. Dropping the
    /// journal there must not try to join that very thread, and what was written stays.
    #[test]
    fn a_journal_dropped_from_its_own_durable_callback_closes_and_keeps_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let slot: Arc<Mutex<Option<Journal>>> = Arc::new(Mutex::new(None));
        let (dropped, was_dropped) = mpsc::channel();
        let in_callback = slot.clone();
        let journal = Journal::open(
            JournalOptions {
                directory: dir.path().to_path_buf(),
                log_size: 1 << 20,
                fsync: true,
                only_copy: false,
            },
            Box::new(move |_| {
                let journal = in_callback.lock().unwrap().take();
                if journal.is_some() {
                    drop(journal);
                    let _ = dropped.send(std::thread::current().id());
                }
            }),
        )
        .unwrap();
        let writer = journal.writer.as_ref().unwrap().thread().id();
        let mut guard = slot.lock().unwrap();
        let journal = guard.insert(journal);
        let appended = journal.append(&record(0, 100)).unwrap();
        drop(guard);
        let on = was_dropped
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the callback dropped the journal and carried on");
        assert_eq!(on, writer, "dropped on the writer thread");
        let (reopened, _rx) = open(dir.path(), 1 << 20, true);
        assert_eq!(
            all_records(&reopened),
            vec![(appended.position, record(0, 100))]
        );
    }

    #[test]
    fn rotates_at_log_size() {
        let dir = tempfile::tempdir().unwrap();
        let len = frame_len(&record(0, 100));
        let (mut journal, _rx) = open(dir.path(), 3 * len + len / 2, false);
        let mut positions = Vec::new();
        for n in 0..10 {
            let appended = journal.append(&record(n, 100)).unwrap();
            assert_eq!(appended.new_segment, n > 0 && n % 3 == 0, "record {n}");
            positions.push(appended.position.0);
        }
        // A record larger than log_size gets a segment of its own.
        let big = journal.append(&record(10, 10_000)).unwrap();
        assert!(big.new_segment);
        let after = journal.append(&record(11, 100)).unwrap();
        assert!(after.new_segment);
        journal.close().unwrap();
        let files = segment_files(dir.path());
        let starts: Vec<u64> = files.iter().map(|f| f.0).collect();
        assert_eq!(
            starts,
            vec![
                0,
                positions[3],
                positions[6],
                positions[9],
                big.position.0,
                after.position.0
            ]
        );
        assert_eq!(
            fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| e.as_ref().unwrap().file_name() == "0000000000000000.log")
                .count(),
            1,
            "named by 16 lowercase hex digits"
        );
        for (start, size) in &files[..3] {
            assert_eq!(*size, 3 * len, "segment {start}");
        }
        let (journal, _rx) = open(dir.path(), 3 * len + len / 2, false);
        assert_eq!(all_records(&journal).len(), 12);
    }

    #[test]
    fn torn_tail_is_truncated_at_every_offset() {
        let dir = tempfile::tempdir().unwrap();
        let records: Vec<Record> = (0..3).map(|n| record(n, 20)).collect();
        let (mut journal, _rx) = open(dir.path(), 1 << 20, false);
        for r in &records {
            journal.append(r).unwrap();
        }
        journal.close().unwrap();
        let path = segment_path(dir.path(), 0);
        let mut full = fs::read(&path).unwrap();
        full.truncate(data_len(&path) as usize);
        let last = full.len() as u64 - frame_len(&records[2]);
        for cut in last..full.len() as u64 {
            fs::write(&path, &full[..cut as usize]).unwrap();
            let (mut journal, rx) = open(dir.path(), 1 << 20, false);
            assert_eq!(journal.end(), Position(last), "cut at {cut}");
            assert_eq!(data_len(&path), last, "cut at {cut}");
            let recovered: Vec<Record> = all_records(&journal).into_iter().map(|r| r.1).collect();
            assert_eq!(recovered, records[..2].to_vec(), "cut at {cut}");
            let appended = journal.append(&record(7, 3)).unwrap();
            assert_eq!(appended.position, Position(last), "cut at {cut}");
            wait_durable(&rx, journal.end());
            journal.close().unwrap();
            let (journal, _rx) = open(dir.path(), 1 << 20, false);
            let recovered: Vec<Record> = all_records(&journal).into_iter().map(|r| r.1).collect();
            assert_eq!(recovered.len(), 3);
            assert_eq!(recovered[2], record(7, 3));
        }
    }

    /// Three full segments of three records each plus a current one; returns the positions.
    fn four_segments(dir: &Path, fsync: bool) -> (Journal, mpsc::Receiver<Position>, Vec<u64>) {
        let len = frame_len(&record(0, 50));
        let (mut journal, rx) = open(dir, 3 * len, fsync);
        let positions: Vec<u64> = (0..10)
            .map(|n| journal.append(&record(n, 50)).unwrap().position.0)
            .collect();
        (journal, rx, positions)
    }

    #[test]
    fn flipped_bit_truncates_there_and_removes_later_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _rx, positions) = four_segments(dir.path(), false);
        journal.close().unwrap();
        // Flip a bit in the body of the middle frame of the second segment.
        let victim = positions[4];
        let path = segment_path(dir.path(), positions[3]);
        let mut bytes = fs::read(&path).unwrap();
        let offset = (victim - positions[3]) as usize + FRAME_HEADER_LEN + 5;
        bytes[offset] ^= 0x10;
        fs::write(&path, &bytes).unwrap();

        let (mut journal, _rx) = open(dir.path(), 1 << 20, false);
        assert_eq!(journal.end(), Position(victim));
        assert_eq!(
            segment_files(dir.path()),
            vec![(0, positions[3]), (positions[3], victim - positions[3])]
        );
        assert_eq!(all_records(&journal).len(), 4);
        assert_eq!(
            journal.append(&record(42, 1)).unwrap().position,
            Position(victim)
        );
    }

    /// A standalone store (the only copy): a bad frame in an early segment with more than a
    /// batch of records after it is not a torn tail, and opening fails naming it, instead of
    /// deleting what follows. Within one batch of the end it is cut as a torn tail.
    #[test]
    fn an_only_copy_refuses_to_cut_records_after_a_corrupt_frame() {
        let open_only_copy = |dir: &Path| {
            Journal::open(
                JournalOptions {
                    directory: dir.to_path_buf(),
                    log_size: 1 << 20,
                    fsync: false,
                    only_copy: true,
                },
                Box::new(|_| {}),
            )
        };
        let flip_first_frame = |dir: &Path| {
            let path = segment_path(dir, 0);
            let mut bytes = fs::read(&path).unwrap();
            bytes[FRAME_HEADER_LEN + 5] ^= 0x10;
            fs::write(&path, &bytes).unwrap();
        };
        // 12 MiB after the first segment: more than a batch.
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _rx) = open(dir.path(), 1 << 20, false);
        for n in 0..200 {
            journal.append(&record(n, 64 << 10)).unwrap();
        }
        journal.close().unwrap();
        let sizes = |dir: &Path| -> Vec<(u64, u64)> {
            segment_files(dir)
                .into_iter()
                .map(|(start, _)| (start, fs::metadata(segment_path(dir, start)).unwrap().len()))
                .collect()
        };
        let files = sizes(dir.path());
        flip_first_frame(dir.path());
        let Err(error) = open_only_copy(dir.path()) else {
            panic!("opened, cutting the records after the corrupt frame");
        };
        assert!(
            matches!(error, StoreError::CorruptBeforeRecords { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("not a torn tail"), "{error}");
        assert_eq!(sizes(dir.path()), files, "nothing cut or deleted");

        // One small segment after it: a batch torn across a rotation; cut there.
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _rx) = open(dir.path(), 1 << 20, false);
        for n in 0..17 {
            journal.append(&record(n, 64 << 10)).unwrap();
        }
        journal.close().unwrap();
        assert!(segment_files(dir.path()).len() >= 2);
        flip_first_frame(dir.path());
        let journal = open_only_copy(dir.path()).expect("a torn tail is cut");
        assert_eq!(journal.end(), Position(0));
    }

    /// A finished segment in the middle whose data was lost but whose size was kept (all
    /// zeros, as a power loss can leave a segment written without fsync) is no tombstone:
    /// recovery cuts there like at a corrupt frame, and a standalone store with more than a
    /// batch of records after it refuses to open instead of skipping it.
    #[test]
    fn a_zero_filled_segment_in_the_middle_is_corruption_not_a_tombstone() {
        let zero_fill = |path: &Path| {
            let len = fs::metadata(path).unwrap().len() as usize;
            assert!(len > 0);
            fs::write(path, vec![0u8; len]).unwrap();
        };
        let dir = tempfile::tempdir().unwrap();
        let (journal, _rx, positions) = four_segments(dir.path(), false);
        journal.close().unwrap();
        zero_fill(&segment_path(dir.path(), positions[3]));
        let (journal, _rx) = open(dir.path(), 1 << 20, false);
        assert_eq!(
            journal.end(),
            Position(positions[3]),
            "cut at the lost segment"
        );
        assert_eq!(all_records(&journal).len(), 3);
        journal.close().unwrap();

        // A standalone store: more than a batch of records after the lost segment.
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _rx) = open(dir.path(), 1 << 20, false);
        for n in 0..200 {
            journal.append(&record(n, 64 << 10)).unwrap();
        }
        journal.close().unwrap();
        let second = segment_files(dir.path())[1].0;
        zero_fill(&segment_path(dir.path(), second));
        let only_copy = Journal::open(
            JournalOptions {
                directory: dir.path().to_path_buf(),
                log_size: 1 << 20,
                fsync: false,
                only_copy: true,
            },
            Box::new(|_| {}),
        );
        let Err(error) = only_copy else {
            panic!("opened, taking a segment of zeros for a released one");
        };
        assert!(
            matches!(error, StoreError::CorruptBeforeRecords { position, .. } if position == Position(second)),
            "{error}"
        );
    }

    #[test]
    fn absurd_length_and_undecodable_body_end_the_journal() {
        for garbage in [
            // Length far beyond the limit.
            vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 1, 2, 3],
            // A valid checksum over a body that is not a record.
            {
                let body = [0xffu8; 5];
                let mut frame = (body.len() as u32).to_le_bytes().to_vec();
                frame.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
                frame.extend_from_slice(&body);
                frame
            },
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (mut journal, _rx) = open(dir.path(), 1 << 20, false);
            let end = {
                journal.append(&record(1, 10)).unwrap();
                journal.end()
            };
            journal.close().unwrap();
            let path = segment_path(dir.path(), 0);
            let mut bytes = fs::read(&path).unwrap();
            bytes.truncate(end.0 as usize);
            bytes.extend_from_slice(&garbage);
            bytes.extend_from_slice(&[0u8; 64]);
            fs::write(&path, &bytes).unwrap();
            let (journal, _rx) = open(dir.path(), 1 << 20, false);
            assert_eq!(journal.end(), end);
            assert_eq!(data_len(&path), end.0);
        }
    }

    #[test]
    fn gap_between_segments_ends_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _rx, positions) = four_segments(dir.path(), false);
        journal.close().unwrap();
        fs::remove_file(segment_path(dir.path(), positions[3])).unwrap();
        let (journal, _rx) = open(dir.path(), 1 << 20, false);
        assert_eq!(journal.end(), Position(positions[3]));
        assert_eq!(segment_files(dir.path()), vec![(0, positions[3])]);
    }

    #[test]
    fn corrupt_first_frame_of_last_segment_continues_in_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _rx, positions) = four_segments(dir.path(), false);
        journal.close().unwrap();
        let path = segment_path(dir.path(), positions[9]);
        let mut bytes = fs::read(&path).unwrap();
        bytes[FRAME_HEADER_LEN] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let (mut journal, _rx) = open(dir.path(), 1 << 20, false);
        assert_eq!(journal.end(), Position(positions[9]));
        assert!(!path.exists(), "the emptied last segment is removed");
        let appended = journal.append(&record(1, 1)).unwrap();
        assert_eq!(appended.position, Position(positions[9]));
        assert!(!appended.new_segment, "log_size is now 1 MiB");
    }

    #[test]
    fn durable_reports_are_monotone_and_reach_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, rx) = open(dir.path(), 4096, true);
        for n in 0..200 {
            journal.append(&record(n, 30)).unwrap();
        }
        let seen = wait_durable(&rx, journal.end());
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert_eq!(*seen.last().unwrap(), journal.end());
        let stats = journal.stats();
        assert_eq!(stats.durable, journal.end());
        assert!(stats.fsyncs >= 1);
    }

    #[test]
    fn group_commit_shares_one_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, rx) = open(dir.path(), 1 << 20, true);
        let hold = journal.hold_writer();
        for n in 0..100 {
            journal.append(&record(n, 30)).unwrap();
        }
        assert!(
            rx.try_recv().is_err(),
            "nothing is durable while the writer is held"
        );
        drop(hold);
        wait_durable(&rx, journal.end());
        let stats = journal.stats();
        assert_eq!(stats.fsyncs, 1, "{stats:?}");
        assert_eq!(stats.batches, 1);
    }

    #[test]
    fn readers_see_only_written_positions() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, rx) = open(dir.path(), 1 << 20, false);
        let hold = journal.hold_writer();
        let position = journal.append(&record(1, 10)).unwrap().position;
        let reader = journal.reader();
        assert!(matches!(
            reader.read(position),
            Err(StoreError::NotWritten { .. })
        ));
        assert_eq!(reader.records(Position(0), journal.end()).count(), 0);
        drop(hold);
        wait_durable(&rx, journal.end());
        let other_thread = std::thread::spawn(move || reader.read(position).unwrap());
        assert_eq!(other_thread.join().unwrap(), record(1, 10));
    }

    #[test]
    fn release_waits_for_the_batch_and_leaves_tombstones_in_the_middle() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, rx, positions) = four_segments(dir.path(), true);
        wait_durable(&rx, journal.end());
        let (a, b, c, d) = (0, positions[3], positions[6], positions[9]);
        let hold = journal.hold_writer();
        journal.append(&record(1, 50)).unwrap(); // same size: no rotation
        journal.release(Position(b)).unwrap();
        assert!(matches!(
            journal.release(Position(d)),
            Err(StoreError::NotReleasable { .. })
        ));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            segment_files(dir.path()).len(),
            4,
            "nothing deleted while held"
        );
        drop(hold);
        wait_durable(&rx, journal.end());
        journal.append(&record(2, 50)).unwrap(); // a later batch: the release ran
        wait_durable(&rx, journal.end());
        let files = segment_files(dir.path());
        assert_eq!(files[1], (b, 0), "b is a tombstone after live a");
        let reader = journal.reader();
        assert!(matches!(
            reader.read(Position(positions[4])),
            Err(StoreError::NotRetained { .. })
        ));
        assert_eq!(journal.stats().segments, 3);
        let end = journal.end();
        journal.close().unwrap();

        // Recovery accepts the released range.
        let (mut journal, rx) = open(dir.path(), 1 << 20, true);
        assert_eq!(journal.end(), end);
        assert_eq!(
            journal.segments(),
            vec![
                SegmentInfo {
                    start: Position(a),
                    end: Position(b)
                },
                SegmentInfo {
                    start: Position(c),
                    end: Position(d)
                },
                SegmentInfo {
                    start: Position(d),
                    end
                },
            ]
        );
        assert_eq!(
            journal.reader().read(Position(positions[7])).unwrap(),
            record(7, 50)
        );
        // Releasing the first deletes it and the tombstone after it.
        journal.release(Position(a)).unwrap();
        journal.append(&record(13, 1)).unwrap();
        wait_durable(&rx, journal.end());
        journal.append(&record(14, 1)).unwrap();
        wait_durable(&rx, journal.end());
        let starts: Vec<u64> = segment_files(dir.path()).iter().map(|f| f.0).collect();
        assert_eq!(starts, vec![c, d]);
        assert_eq!(journal.reader().oldest(), Position(c));
    }

    #[test]
    fn truncate_then_append_frames_from_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, rx, positions) = four_segments(dir.path(), false);
        wait_durable(&rx, journal.end());
        let reader = journal.reader();
        let frames: Vec<(Position, Bytes)> = reader
            .frames(Position(0), journal.end())
            .map(Result::unwrap)
            .collect();
        let cut = Position(positions[4]);
        journal.truncate(cut).unwrap();
        assert_eq!(journal.end(), cut);
        assert_eq!(segment_files(dir.path()).len(), 2);
        assert!(matches!(
            reader.read(Position(positions[5])),
            Err(StoreError::NotWritten { .. })
        ));
        assert!(matches!(
            journal.append_frame(Position(positions[5]), frames[5].1.clone()),
            Err(StoreError::NotContiguous { .. })
        ));
        assert!(matches!(
            journal.append_frame(cut, Bytes::from_static(b"garbage!garbage")),
            Err(StoreError::InvalidFrame { .. })
        ));
        for (position, frame) in &frames[4..] {
            let appended = journal.append_frame(*position, frame.clone()).unwrap();
            assert_eq!(appended.position, *position);
        }
        wait_durable(&rx, journal.end());
        journal.close().unwrap();
        let (journal, _rx) = open(dir.path(), 1 << 20, false);
        let again: Vec<(Position, Bytes)> = journal
            .reader()
            .frames(Position(0), journal.end())
            .map(Result::unwrap)
            .collect();
        assert_eq!(again, frames);
    }

    #[test]
    fn a_retained_segment_that_cannot_be_read_stops_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, rx) = open(dir.path(), 1 << 20, false);
        let position = journal.append(&record(1, 10)).unwrap().position;
        wait_durable(&rx, journal.end());
        // The segment vanishes under the journal (a lost disk, an operator's mistake).
        fs::remove_file(segment_path(dir.path(), 0)).unwrap();
        let reader = journal.reader();
        assert!(matches!(reader.read(position), Err(StoreError::Io { .. })));
        assert!(
            matches!(journal.failure(), Some(StoreError::JournalFailed(m)) if m.contains("cannot read the journal")),
            "{:?}",
            journal.failure()
        );
        assert!(matches!(
            journal.append(&record(2, 10)),
            Err(StoreError::JournalFailed(_))
        ));
        assert!(reader
            .frames(Position(0), journal.end())
            .next()
            .is_some_and(|frame| frame.is_err()));
    }

    /// A journal in `dir` whose writer failed (the next segment's file was in the way) after
    /// the first record, durable up to the returned position.
    fn failed_journal(dir: &Path) -> (Journal, mpsc::Receiver<Position>, Position) {
        let (mut journal, rx) = open(dir, 1, false);
        journal.append(&record(1, 10)).unwrap();
        let durable = journal.end();
        wait_durable(&rx, durable);
        // The next segment's file already exists: creating it fails in the writer.
        fs::write(segment_path(dir, durable.0), b"in the way").unwrap();
        let appended = journal.append(&record(2, 10)).unwrap();
        assert!(appended.new_segment);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while journal.append(&record(3, 10)).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "the journal never failed"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        (journal, rx, durable)
    }

    #[test]
    fn a_failed_write_stops_the_journal_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, rx, durable) = failed_journal(dir.path());
        assert!(matches!(
            journal.append(&record(4, 10)),
            Err(StoreError::JournalFailed(_))
        ));
        assert!(
            rx.try_iter().all(|p| p <= durable),
            "nothing reported after the failure"
        );
        assert_eq!(journal.stats().durable, durable);
        assert!(matches!(journal.close(), Err(StoreError::JournalFailed(_))));
    }

    /// A request that waits for the writer's answer (a truncation, a switch of fsync) made
    /// after the writer stopped on a failure gets that failure; it used to wait for ever.
    #[test]
    fn requests_after_a_failure_get_the_failure() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _rx, durable) = failed_journal(dir.path());
        let (done, answered) = mpsc::channel();
        std::thread::spawn(move || {
            let truncated = journal.truncate(durable);
            let fsync = journal.set_fsync(true);
            let _ = done.send((truncated, fsync));
        });
        let (truncated, fsync) = answered
            .recv_timeout(Duration::from_secs(10))
            .expect("requests made after the failure were never answered");
        assert!(
            matches!(truncated, Err(StoreError::JournalFailed(_))),
            "{truncated:?}"
        );
        assert!(
            matches!(fsync, Err(StoreError::JournalFailed(_))),
            "{fsync:?}"
        );
    }

    fn physical_len(path: &Path) -> u64 {
        fs::metadata(path).unwrap().len()
    }

    #[test]
    fn segments_are_preallocated_and_reopen_finds_the_end_of_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let log_size = 64 << 10;
        let path = segment_path(dir.path(), 0);
        let (mut journal, rx) = open(dir.path(), log_size, true);
        assert_eq!(physical_len(&path), log_size, "preallocated at creation");
        let mut expected = Vec::new();
        for n in 0..5 {
            let appended = journal.append(&record(n, 100)).unwrap();
            expected.push((appended.position, record(n, 100)));
        }
        // A record that prost encodes as nothing still takes a non-empty frame.
        let empty = journal.append(&Record::default()).unwrap();
        assert_eq!(empty.len, FRAME_HEADER_LEN as u64 + 2);
        expected.push((empty.position, Record::default()));
        wait_durable(&rx, journal.end());
        assert_eq!(physical_len(&path), log_size, "frames overwrite in place");
        let end = journal.end();
        journal.close().unwrap();

        let (mut journal, rx) = open(dir.path(), log_size, true);
        assert_eq!(journal.end(), end);
        assert_eq!(all_records(&journal), expected);
        assert_eq!(physical_len(&path), log_size);
        let next = journal.append(&record(9, 10)).unwrap();
        assert_eq!(next.position, end);
        wait_durable(&rx, journal.end());
        journal.close().unwrap();
        let (journal, _rx) = open(dir.path(), log_size, false);
        assert_eq!(all_records(&journal).len(), 7);
        // An old journal without preallocation (data to the end of the file) still opens.
        let end = journal.end();
        journal.close().unwrap();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(end.0)
            .unwrap();
        let (journal, _rx) = open(dir.path(), log_size, false);
        assert_eq!(journal.end(), end);
        assert_eq!(physical_len(&path), log_size);
    }

    #[test]
    fn rotation_takes_the_prepared_zero_filled_segment_and_reopen_ignores_a_leftover() {
        let dir = tempfile::tempdir().unwrap();
        let log_size = 4 << 10;
        let (mut journal, rx) = open(dir.path(), log_size, true);
        let mut expected = Vec::new();
        for n in 0..40 {
            let appended = journal.append(&record(n, 300)).unwrap();
            expected.push((appended.position, record(n, 300)));
        }
        wait_durable(&rx, journal.end());
        let segments: Vec<u64> = journal
            .shared
            .segments
            .read()
            .unwrap()
            .keys()
            .copied()
            .collect();
        assert!(segments.len() >= 3, "rotated: {segments:?}");
        let current = *segments.last().unwrap();
        let current_path = segment_path(dir.path(), current);
        assert_eq!(
            physical_len(&current_path),
            log_size,
            "prepared to log_size"
        );
        let bytes = fs::read(&current_path).unwrap();
        let data = (journal.end().0 - current) as usize;
        assert!(
            bytes[data..].iter().all(|&b| b == 0),
            "zeros after the data"
        );
        let end = journal.end();
        journal.close().unwrap();
        // A spare left by a killed process (here: garbage in it) is not part of the journal.
        fs::write(dir.path().join(SPARE_FILE), b"not a segment").unwrap();
        let (journal, _rx) = open(dir.path(), log_size, true);
        assert_eq!(journal.end(), end);
        assert_eq!(all_records(&journal), expected);
        journal.close().unwrap();
    }

    #[test]
    fn a_torn_frame_inside_a_preallocated_segment_is_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log_size = 64 << 10;
        let path = segment_path(dir.path(), 0);
        let (mut journal, _rx) = open(dir.path(), log_size, false);
        journal.append(&record(1, 100)).unwrap();
        let end = journal.end();
        let torn = record(2, 300);
        journal.append(&torn).unwrap();
        journal.close().unwrap();
        let full = fs::read(&path).unwrap();
        assert_eq!(full.len() as u64, log_size);
        let frame_end = (end.0 + frame_len(&torn)) as usize;
        // Cut the second frame anywhere after its first byte: the rest reads as zeros.
        for cut in [
            end.0 as usize + 1,
            end.0 as usize + 4,
            end.0 as usize + 8,
            frame_end - 1,
        ] {
            let mut bytes = full.clone();
            bytes[cut..frame_end].fill(0);
            fs::write(&path, &bytes).unwrap();
            let (mut journal, rx) = open(dir.path(), log_size, false);
            assert_eq!(journal.end(), end, "cut at {cut}");
            assert_eq!(physical_len(&path), log_size, "cut at {cut}");
            let on_disk = fs::read(&path).unwrap();
            assert!(
                on_disk[end.0 as usize..].iter().all(|&b| b == 0),
                "the torn bytes are gone (cut at {cut})"
            );
            assert_eq!(all_records(&journal).len(), 1);
            journal.append(&record(3, 5)).unwrap();
            wait_durable(&rx, journal.end());
            journal.close().unwrap();
        }
        // A zero header followed by data (a lost write in the middle) also ends the journal.
        let mut bytes = full.clone();
        bytes[end.0 as usize..end.0 as usize + FRAME_HEADER_LEN].fill(0);
        fs::write(&path, &bytes).unwrap();
        let (journal, _rx) = open(dir.path(), log_size, false);
        assert_eq!(journal.end(), end);
        assert!(fs::read(&path).unwrap()[end.0 as usize..]
            .iter()
            .all(|&b| b == 0));
    }

    #[test]
    fn rotation_cuts_finished_segments_and_tolerates_an_uncut_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, rx, positions) = four_segments(dir.path(), true);
        wait_durable(&rx, journal.end());
        let log_size = positions[3];
        let end = journal.end();
        journal.close().unwrap();
        let starts = [0, positions[3], positions[6], positions[9]];
        for pair in starts.windows(2) {
            assert_eq!(
                physical_len(&segment_path(dir.path(), pair[0])),
                pair[1] - pair[0],
                "finished segment {} keeps only its data",
                pair[0]
            );
        }
        let current = segment_path(dir.path(), positions[9]);
        assert_eq!(physical_len(&current), log_size);

        // A crash before the cut reached the disk: a finished segment with a zero tail.
        let middle = segment_path(dir.path(), positions[3]);
        OpenOptions::new()
            .write(true)
            .open(&middle)
            .unwrap()
            .set_len(log_size + 500)
            .unwrap();
        let (journal, _rx) = open(dir.path(), log_size, true);
        assert_eq!(journal.end(), end);
        assert_eq!(all_records(&journal).len(), 10);
        assert_eq!(physical_len(&middle), positions[6] - positions[3]);
    }

    #[test]
    fn skipping_from_an_empty_preallocated_segment_leaves_an_empty_tombstone() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, rx) = open(dir.path(), 1 << 16, true);
        journal.append(&record(1, 10)).unwrap();
        let first_end = journal.end();
        // A fresh segment at the end (no frame yet), then a skip over a released range.
        assert!(!journal.skip_to(Position(1000)).unwrap());
        assert!(journal.skip_to(Position(5000)).unwrap());
        let appended = journal.append(&record(2, 10)).unwrap();
        assert_eq!(appended.position, Position(5000));
        wait_durable(&rx, journal.end());
        let end = journal.end();
        journal.close().unwrap();
        assert_eq!(physical_len(&segment_path(dir.path(), first_end.0)), 0);
        let (journal, _rx) = open(dir.path(), 1 << 16, true);
        assert_eq!(journal.end(), end);
        assert_eq!(
            journal.reader().read(Position(5000)).unwrap(),
            record(2, 10)
        );
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_journal, _rx) = open(dir.path(), 1 << 20, false);
        let second = Journal::open(
            JournalOptions {
                directory: dir.path().to_path_buf(),
                log_size: 1 << 20,
                fsync: false,
                only_copy: false,
            },
            Box::new(|_| {}),
        );
        assert!(matches!(second, Err(StoreError::Locked(_))));
    }
}
