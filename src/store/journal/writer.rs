//! The writer: what the writer thread (or a caller writing an inline batch or direct writes,
//! under the same mutex) does with queued commands: one write per segment for each batch, one
//! `fdatasync` per batch (group commit), rotation, releases, truncation and reset.
//!
//! It must never report a position durable before its bytes are fsynced (when fsync is on),
//! nor retry a failed write or fsync (the journal stops instead).

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tracing::{debug, error, info, warn};

use super::segment::{
    preallocate, prepare_spare, segment_path, set_sealed, sync_directory, sync_segments, FileExt,
    SPARE_FILE,
};
use super::{
    io_error, Command, DurableCallback, JournalOptions, Segment, SegmentState, Shared,
    MAX_BATCH_BYTES,
};
use crate::store::record::Position;
use crate::store::StoreError;
pub(super) struct Writer {
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
    directory_dirty: bool,
    /// Releases requested during this batch: run after its fsync.
    releases: Vec<u64>,
    /// The next segment, being prepared (see [`prepare_spare`]).
    spare: Option<JoinHandle<Result<File, StoreError>>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.join_spare();
    }
}

impl Writer {
    /// The state of the writer of a journal recovered up to `end`, whose current segment
    /// `file` starts at `file_start`; starts preparing the next segment.
    pub(super) fn new(
        shared: Arc<Shared>,
        options: &JournalOptions,
        on_durable: DurableCallback,
        file: File,
        file_start: u64,
        end: u64,
    ) -> Writer {
        let clock = shared.clock.clone();
        Writer {
            shared,
            fsync: options.fsync,
            log_size: options.log_size,
            on_durable,
            file,
            file_start,
            file_offset: end - file_start,
            buffer: Vec::new(),
            end,
            reported: end,
            unsynced: false,
            directory_dirty: false,
            releases: Vec::new(),
            spare: prepare_spare(&options.directory, options.log_size, options.fsync, clock),
        }
    }

    /// Waits for the next segment's preparation, if one is under way: a journal reopened in
    /// this process must not find a spare still being written.
    pub(super) fn join_spare(&mut self) {
        if let Some(spare) = self.spare.take() {
            let _ = spare.join();
        }
    }

    /// The writer thread: sleeps until commands are queued, then takes the state and handles
    /// them. Ends when the journal closes (after the last queued command) or fails.
    pub(super) fn run(state: &Mutex<Writer>) {
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
            let _busy = shared.clock.busy();
            if let Err(e) = writer.handle_queued() {
                shared.fail(e.to_string());
                return;
            }
        }
    }

    /// Handles every queued command: one write and one fsync per batch of up to
    /// [`MAX_BATCH_BYTES`], the durable end reported after each. Runs under the writer's mutex
    /// (the only place commands leave the queue, so they are handled in queue order), with the
    /// writer's clock marked busy by the caller.
    pub(super) fn handle_queued(&mut self) -> Result<(), StoreError> {
        loop {
            // What was queued while these were handled joins the same batch.
            let commands = std::mem::take(&mut self.shared.inbox.lock().unwrap().commands);
            if commands.is_empty() {
                return self.finish_batch();
            }
            for command in commands {
                // A batch holds at most MAX_BATCH_BYTES, or one larger frame alone: recovery
                // takes what follows a bad frame for a torn write only within that bound.
                if let Command::Append { bytes, .. } = &command {
                    if !self.buffer.is_empty() && self.buffer.len() + bytes.len() > MAX_BATCH_BYTES
                    {
                        self.finish_batch()?;
                    }
                }
                self.handle(command)?;
                if self.buffer.len() >= MAX_BATCH_BYTES {
                    self.finish_batch()?;
                }
            }
        }
    }

    pub(super) fn handle(&mut self, command: Command) -> Result<(), StoreError> {
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
                if !on {
                    // Before anything is written without fsync (see `SEALED_FILE`).
                    set_sealed(&self.shared.directory, false)?;
                }
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
                    // Each segment synced is the disk answering (see `WriteClock`): the page cache
                    // of a slave that wrote without fsync can take long to sync whole.
                    let clock = &self.shared.clock;
                    sync_segments(&self.shared.directory, live, || clock.progressed())?;
                }
                if on {
                    set_sealed(&self.shared.directory, true)?;
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
            .map_err(|error| StoreError::Io {
                operation: "write",
                path: self.current_path(),
                error,
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
        self.spare = prepare_spare(
            &self.shared.directory,
            self.log_size,
            self.fsync,
            self.shared.clock.clone(),
        );
        let previous = std::mem::replace(&mut self.file, file);
        if self.fsync {
            // Sealed before a byte of the next segment is written: a power loss tears only the
            // last segment (see `SEALED_FILE`). One more fsync per `log_size` bytes.
            let path = segment_path(&self.shared.directory, self.file_start);
            previous.sync_data().map_err(io_error("fsync", &path))?;
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
        preallocate(&file, self.log_size, path, &self.shared.clock)?;
        Ok(file)
    }

    /// Writes what is buffered, fsyncs it (group commit), reports the durable end, then runs
    /// the releases requested in this batch.
    pub(super) fn finish_batch(&mut self) -> Result<(), StoreError> {
        self.write_buffer()?;
        self.shared.written.store(self.end, Ordering::Release);
        self.shared.written_watch.send_replace(Position(self.end));
        if self.fsync && (self.unsynced || self.directory_dirty) {
            self.file.sync_data().map_err(|error| StoreError::Io {
                operation: "fsync",
                path: self.current_path(),
                error,
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
            let end = Position(self.end);
            self.shared.clock.outside(|| (self.on_durable)(end));
        }
        self.shared.clock.progressed();
        for start in std::mem::take(&mut self.releases) {
            self.release(start)?;
            // A delete and a directory sync each: hundreds of them (a purged backlog) take a
            // while on a healthy disk.
            self.shared.clock.progressed();
        }
        Ok(())
    }

    /// Deletes a released segment, or truncates it to a tombstone when a segment with data
    /// precedes it (see the journal's module docs). A failure is a failure of the journal, like
    /// a failed write: the live state has already let the segment go, so later releases would
    /// count on it being gone, and a segment left with data before deleted ones would read as
    /// a gap at the next start.
    fn release(&mut self, start: u64) -> Result<(), StoreError> {
        let directory = self.shared.directory.clone();
        // The segment map changes under its lock; the files after it is released: readers (a
        // delivery paging a body in under the broker core's lock, say) never wait for an
        // unlink or a truncating fsync.
        let (delete, next_tombstone) = {
            let mut map = self.shared.segments.write().unwrap();
            let leading_or_after_tombstone = map
                .range(..start)
                .next_back()
                .is_none_or(|(_, s)| s.state == SegmentState::Released);
            let Some(segment) = map.get_mut(&start) else {
                return Ok(());
            };
            segment.reader.lock().unwrap().take();
            if leading_or_after_tombstone {
                map.remove(&start);
            } else {
                segment.state = SegmentState::Released;
            }
            // A tombstone right after what is released now is then redundant.
            let next_tombstone = map
                .range(start + 1..)
                .next()
                .filter(|(_, s)| s.state == SegmentState::Released)
                .map(|(&next, _)| next);
            if let Some(next) = next_tombstone {
                map.remove(&next);
            }
            (leading_or_after_tombstone, next_tombstone)
        };
        let path = segment_path(&directory, start);
        let result = if delete {
            fs::remove_file(&path).map_err(io_error("delete", &path))
        } else {
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
            return Err(e);
        }
        if let Some(next) = next_tombstone {
            let next_path = segment_path(&directory, next);
            if let Err(e) = fs::remove_file(&next_path) {
                error!("deleting journal tombstone {}: {e}", next_path.display());
            }
        }
        if self.fsync {
            // The next release may depend on this one having happened (see store::state).
            sync_directory(&directory).inspect_err(|e| {
                error!("after releasing journal segment {}: {e}", path.display());
            })?;
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
            self.shared.clock.progressed();
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
        preallocate(&self.file, self.log_size, &path, &self.shared.clock)?;
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
        self.shared
            .clock
            .outside(|| (self.on_durable)(Position(position)));
        info!(file = %path.display(), position, "journal truncated");
        Ok(())
    }

    /// Deletes every segment and starts an empty one at `start` (see
    /// [`Journal::reset`](super::Journal::reset)).
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
            self.shared.clock.progressed();
        }
        let path = segment_path(&directory, start);
        self.file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_error("create segment", &path))?;
        map.insert(start, Segment::new(SegmentState::Live));
        drop(map);
        preallocate(&self.file, self.log_size, &path, &self.shared.clock)?;
        self.file.sync_all().map_err(io_error("fsync", &path))?;
        sync_directory(&directory)?;
        self.file_start = start;
        self.file_offset = 0;
        self.buffer.clear();
        self.releases.clear();
        self.unsynced = false;
        self.directory_dirty = false;
        self.end = start;
        self.reported = start;
        self.shared.written.store(start, Ordering::Release);
        self.shared.durable.store(start, Ordering::Release);
        self.shared.written_watch.send_replace(Position(start));
        self.shared
            .clock
            .outside(|| (self.on_durable)(Position(start)));
        info!(file = %path.display(), start, "journal reset");
        Ok(())
    }
}
