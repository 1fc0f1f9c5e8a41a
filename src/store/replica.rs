//! What replication needs from the store: the epoch history of the journal, appending frames
//! copied from a master at the master's positions, skipping a range the master released,
//! truncating a divergent tail, resetting to start empty at a given position, and the written
//! (not yet durable) end.
//!
//! A slave applies copied records exactly as [`Store::append`] applies its own (index, live
//! state, segment release), so a failover needs no long replay. It never appends records of its
//! own: the forwarding records a master appends (see the module docs of `store`) arrive as
//! ordinary frames, so positions stay identical to the master's. Their bookkeeping (which
//! stale segment a forward frees) is not in the frame: the slave plans the same forward from
//! the same state where its master did (after a record that opened a segment), and when the
//! next record is that forward it frees the same segment; otherwise it keeps the segment, as
//! before, until released some other way. A segment that holds producer audit entries is kept
//! until the master's record carrying them forward arrives (see `state`).

use bytes::Bytes;
use tracing::{info, warn};

use super::index::IndexOp;
use super::journal::Journal;
use super::record::{check_frame, decode_frame, FrameError, Position, FRAME_HEADER_LEN};
use super::state::LiveState;
use super::{replay, Store, StoreError, MAX_ENTRIES};

/// Where one epoch starts in a journal: the position of the first retained record written
/// under it (its `EpochStart` record, unless that was released). Records written before any
/// epoch-start carry epoch 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EpochMark {
    pub epoch: u64,
    pub start: Position,
}

/// The epoch history of the journal, tracked as records are appended.
#[derive(Debug, Default, Clone)]
pub(crate) struct Epochs {
    marks: Vec<EpochMark>,
}

impl Epochs {
    /// Builds the history of a recovered journal. Epochs never decrease along a journal, so
    /// only the first frame of each segment is read, plus every frame of the segments in which
    /// the epoch changes (and of the last one).
    pub fn scan(journal: &Journal) -> Result<Epochs, StoreError> {
        let reader = journal.reader();
        let segments: Vec<_> = journal
            .segments()
            .into_iter()
            .filter(|s| s.end > s.start)
            .collect();
        let mut firsts = Vec::with_capacity(segments.len());
        for segment in &segments {
            firsts.push(frame_epoch(&reader.read_frame(segment.start)?));
        }
        let mut epochs = Epochs::default();
        for (i, segment) in segments.iter().enumerate() {
            epochs.note(segment.start, firsts[i]);
            if firsts.get(i + 1) == Some(&firsts[i]) {
                continue;
            }
            for item in reader.frames(segment.start, segment.end) {
                let (position, frame) = item?;
                epochs.note(position, frame_epoch(&frame));
            }
        }
        Ok(epochs)
    }

    /// The record at `position` (the journal's end) has `epoch`.
    pub fn note(&mut self, position: Position, epoch: u64) {
        if self.marks.last().is_none_or(|m| epoch > m.epoch) {
            self.marks.push(EpochMark {
                epoch,
                start: position,
            });
        }
    }

    fn truncate(&mut self, position: Position) {
        self.marks.retain(|m| m.start < position);
    }
}

/// The epoch of the record in a whole frame, read without decoding the record: prost writes
/// `Record.epoch` (field 1, a varint, omitted when 0) first.
pub fn frame_epoch(frame: &[u8]) -> u64 {
    let Some(body) = frame.get(FRAME_HEADER_LEN..) else {
        return 0;
    };
    if body.first() != Some(&0x08) {
        return 0;
    }
    let mut value = 0u64;
    for (i, &byte) in body[1..].iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return value;
        }
    }
    0
}

impl Store {
    /// The epochs in this journal in order, each with the position where it starts (see
    /// [`EpochMark`]); empty if the journal holds no record.
    pub fn history(&self) -> Vec<EpochMark> {
        self.epochs.marks.clone()
    }

    /// The epoch of the last record (0 if there is none). Elections compare this first, then
    /// the end position.
    pub fn last_epoch(&self) -> u64 {
        self.epochs.marks.last().map_or(0, |m| m.epoch)
    }

    /// The written end (not necessarily durable), updated by the journal's writer thread after
    /// each write and before its fsync: a master streams to its slaves from this while its own
    /// fsync runs.
    pub fn written_watch(&self) -> tokio::sync::watch::Receiver<Position> {
        self.journal.written_watch()
    }

    /// Everything before this is durable as the store was opened (fsynced, or written when
    /// fsync is off).
    pub fn durable(&self) -> Position {
        self.journal.durable()
    }

    /// The first retained position.
    pub fn oldest(&self) -> Position {
        self.journal.reader().oldest()
    }

    /// A slave appends whole frames copied from its master; `position` must be [`Store::end`].
    /// Every frame is checked (length, CRC, decoding) and applied like [`Store::append`]
    /// applies a record, at the same positions as on the master. Frames before a bad one are
    /// kept; the error names the bad frame's position.
    pub fn append_frames(&mut self, position: Position, frames: Bytes) -> Result<(), StoreError> {
        let end = self.journal.end();
        if position != end {
            return Err(StoreError::NotContiguous { position, end });
        }
        let mut ops = Vec::new();
        let mut offset = 0;
        let mut result = Ok(());
        // Without fsync the frames are written on this thread: no hand-off to the journal's
        // thread and back before the slave can acknowledge them.
        self.journal.begin_direct();
        while offset < frames.len() {
            let at = Position(position.0 + offset as u64);
            if let Err(e) = self.append_one(at, &frames, offset, &mut ops) {
                result = Err(e);
                break;
            }
            offset = (self.journal.end().0 - position.0) as usize;
        }
        let written = self.journal.end_direct();
        self.release_ready(&mut ops);
        self.send_to_index(ops, self.journal.end());
        result.and(written)
    }

    fn append_one(
        &mut self,
        at: Position,
        frames: &Bytes,
        offset: usize,
        ops: &mut Vec<IndexOp>,
    ) -> Result<(), StoreError> {
        let invalid = |cause| StoreError::InvalidFrame {
            position: at,
            cause,
        };
        let len = match check_frame(&frames[offset..]) {
            Ok(Some(len)) => len,
            Ok(None) => {
                return Err(invalid(FrameError::Undecodable(format!(
                    "only {} bytes of a frame",
                    frames.len() - offset
                ))))
            }
            Err(cause) => return Err(invalid(cause)),
        };
        let frame = frames.slice(offset..offset + len);
        let record = decode_frame(frame.clone()).map_err(invalid)?;
        if record.entries.len() > MAX_ENTRIES {
            return Err(StoreError::TooManyEntries(record.entries.len()));
        }
        let appended = self.journal.append_frame(at, frame)?;
        self.epochs.note(at, record.epoch);
        if appended.new_segment {
            self.state.segment_started(at);
        }
        self.state.apply(at, &record, ops);
        match self.awaiting_forward.take() {
            Some((forward, left)) if forward.record == record => {
                self.state.forwarded(forward, Some(at), ops);
                self.forwarded_records += 1;
                self.follow_forwards(left, ops);
            }
            Some((forward, _)) => warn!(
                segment = %forward.from,
                "the master did not forward a stale segment as this slave expected; it is kept"
            ),
            None if appended.new_segment => {
                self.follow_forwards(super::MAX_FORWARDS_PER_SEGMENT, ops)
            }
            None => {}
        }
        Ok(())
    }

    /// Plans, as the master's `forward_stale` does after a record that opened a segment, the
    /// forwards the master appends next: one without entries frees its segment at once; one
    /// with entries is awaited as the next record.
    fn follow_forwards(&mut self, mut left: usize, ops: &mut Vec<IndexOp>) {
        self.awaiting_forward = self.next_forward(&mut left, ops).map(|f| (f, left));
    }

    /// A slave copying its master skips a range the master released (it held nothing a
    /// rebuild needs): the next append goes to `to`, in a new segment.
    pub fn skip_to(&mut self, to: Position) -> Result<(), StoreError> {
        let from = self.journal.end();
        if self.journal.skip_to(to)? {
            self.state.move_current(from, to);
        } else {
            self.state.segment_started(to);
        }
        let mut ops = Vec::new();
        self.release_ready(&mut ops);
        self.send_to_index(ops, to);
        Ok(())
    }

    /// Drops every record at and after `position` (a frame boundary at or after the oldest
    /// retained position) and rebuilds the index and live state from what remains.
    pub fn truncate(&mut self, position: Position) -> Result<(), StoreError> {
        let end = self.journal.end();
        if position == end {
            return Ok(());
        }
        if position > end {
            return Err(StoreError::NotWritten {
                position,
                written: end,
            });
        }
        let oldest = self.oldest();
        if position < oldest {
            return Err(StoreError::NotRetained { position, oldest });
        }
        let records = self
            .journal
            .reader()
            .frames(position, end)
            .filter(Result::is_ok)
            .count();
        // The index first: should the process die in between, the next open sees an empty
        // index and rebuilds it from the journal.
        self.wipe_index()?;
        if let Err(e) = self.journal.truncate(position) {
            self.rebuild_state()?;
            return Err(e);
        }
        self.epochs.truncate(position);
        warn!(
            directory = %self.directory.display(),
            from = %position,
            to = %end,
            records,
            bytes = end.0 - position.0,
            "truncated the journal tail the master does not have"
        );
        self.rebuild_state()
    }

    /// Wipes the journal and the index: the store is empty and its next append goes to
    /// `start` (a segment named by it).
    pub fn reset(&mut self, start: Position) -> Result<(), StoreError> {
        self.awaiting_forward = None;
        self.held_releases.clear();
        let previous = self.stats();
        self.wipe_index()?;
        self.journal.reset(start)?;
        self.epochs = Epochs::default();
        self.state = LiveState::new(&[(start, start)]);
        self.send_to_index(Vec::new(), start);
        warn!(
            directory = %self.directory.display(),
            start = %start,
            dropped_oldest = %previous.oldest,
            dropped_end = %previous.end,
            dropped_bytes = previous.bytes,
            "reset the store to receive a snapshot"
        );
        Ok(())
    }

    fn wipe_index(&mut self) -> Result<(), StoreError> {
        match &self.index {
            Some(index) => index.wipe(),
            None => Err(StoreError::JournalFailed("the store is closed".into())),
        }
    }

    /// Rebuilds the live state and the (wiped) index from the retained journal.
    fn rebuild_state(&mut self) -> Result<(), StoreError> {
        let Some(index) = &self.index else {
            return Err(StoreError::JournalFailed("the store is closed".into()));
        };
        let reader = self.journal.reader();
        let segments: Vec<(Position, Position)> = self
            .journal
            .segments()
            .iter()
            .map(|s| (s.start, s.end))
            .collect();
        let oldest = segments.first().map(|s| s.0).unwrap_or_default();
        let end = self.journal.end();
        let mut state = LiveState::new(&segments);
        let replayed = match replay(&mut state, index, &reader, &segments, oldest) {
            Ok(replayed) => replayed,
            Err(attempt) => return Err(attempt.into_error()),
        };
        state.consider_all();
        self.state = state;
        self.awaiting_forward = None;
        self.held_releases.clear();
        self.index_rebuilt = true;
        self.index_replayed = replayed;
        let mut ops = Vec::new();
        self.release_ready(&mut ops);
        self.send_to_index(ops, end);
        info!(
            directory = %self.directory.display(),
            from = %oldest,
            to = %end,
            records = replayed,
            "rebuilt the index after truncating the journal"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::{encode_frame, entry, Entry, EpochStart, Record};
    use bytes::BytesMut;

    #[test]
    fn frame_epoch_reads_the_first_field() {
        for epoch in [0u64, 1, 127, 128, 300, u64::MAX] {
            let record = Record {
                epoch,
                entries: vec![Entry {
                    kind: Some(entry::Kind::EpochStart(EpochStart {
                        epoch,
                        node: "n".into(),
                    })),
                }],
            };
            let mut buf = BytesMut::new();
            encode_frame(&record, &mut buf);
            assert_eq!(frame_epoch(&buf), epoch);
        }
    }

    #[test]
    fn epochs_note_only_increases() {
        let mut epochs = Epochs::default();
        epochs.note(Position(0), 0);
        epochs.note(Position(10), 0);
        epochs.note(Position(20), 2);
        epochs.note(Position(30), 1);
        epochs.note(Position(40), 3);
        let marks: Vec<(u64, u64)> = epochs.marks.iter().map(|m| (m.epoch, m.start.0)).collect();
        assert_eq!(marks, vec![(0, 0), (2, 20), (3, 40)]);
        epochs.truncate(Position(40));
        assert_eq!(epochs.marks.len(), 2);
    }
}
