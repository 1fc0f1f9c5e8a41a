//! Reading: [`JournalReader`] and its iterators [`Frames`] and [`Records`], over the retained
//! segments, each read through one shared handle.
//!
//! It must never let a reader see bytes that are not yet written, nor interpret records beyond
//! checking that their frames decode; a retained segment it cannot read fails the journal.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::segment::{segment_path, FileExt};
use super::{io_error, oldest_of, Segment, SegmentState, Shared, MAX_OPEN_READERS, READ_CHUNK};
use crate::store::record::{
    check_frame, decode_frame, FrameError, Position, Record, FRAME_HEADER_LEN, MAX_RECORD_LEN,
};
use crate::store::StoreError;
/// Reads records below the written watermark. Cheap to clone; Send + Sync.
#[derive(Clone)]
pub struct JournalReader {
    pub(super) shared: Arc<Shared>,
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

    /// The retained segments now (what a status page shows of a journal it does not own).
    pub fn retained(&self) -> super::Retained {
        self.shared.retained()
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
                    drop(reader);
                    self.close_readers_past_the_bound(&map, start);
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

    /// Notes that the segment at `opened` has just had its read handle opened and closes the
    /// handles opened longest ago past [`MAX_OPEN_READERS`] (a read under way keeps its own
    /// handle until it ends; the next read of that segment opens it again). Called with no
    /// segment's handle locked, so two readers never wait on each other's.
    fn close_readers_past_the_bound(&self, map: &BTreeMap<u64, Segment>, opened: u64) {
        let mut opened_readers = self.shared.opened_readers.lock().unwrap();
        opened_readers.push_back(opened);
        while opened_readers.len() > MAX_OPEN_READERS {
            let oldest = opened_readers.pop_front().expect("longer than the bound");
            if oldest == opened {
                continue;
            }
            if let Some(segment) = map.get(&oldest) {
                segment.reader.lock().unwrap().take();
            }
        }
    }

    /// A retained segment could not be opened or read: the disk or the files are broken, and
    /// a journal that cannot read its own records can neither replicate nor deliver them, so
    /// it fails as a failed write does (see [`Journal::failure`](super::Journal::failure)). A
    /// segment released in the meantime is only no longer retained.
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
        self.decode(position, frame)
    }

    /// The record in `frame`, read at `position` (an undecodable body is corruption there).
    fn decode(&self, position: Position, frame: Bytes) -> Result<Record, StoreError> {
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

    /// The record at `position` (a frame boundary below the written watermark), read through
    /// this iterator's read-ahead: reading records in ascending order this way costs one read
    /// per read-ahead chunk (1 MiB) where they lie close together, instead of two per record (what
    /// [`JournalReader::read`] costs). The iterator then goes on after that record.
    pub fn record_at(&mut self, position: Position) -> Result<Record, StoreError> {
        self.position = position.0;
        self.failed = false;
        let written = self.reader.shared.written.load(Ordering::Acquire);
        if position.0 >= written {
            return Err(StoreError::NotWritten {
                position,
                written: Position(written),
            });
        }
        let (position, frame) = self.next_frame()?;
        self.reader.decode(position, frame)
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
        let record = self.frames.reader.decode(position, frame);
        self.frames.failed = record.is_err();
        Some(record.map(|record| (position, record, len)))
    }
}
