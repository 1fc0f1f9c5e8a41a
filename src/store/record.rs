//! The write-ahead record and its frame.
//!
//! Owns the byte layout shared by the journal files and the replication stream:
//! `u32 LE length | u32 LE CRC32C(body) | body`, where the body is a prost-encoded
//! [`Record`]. It never does I/O.
//!
//! A frame's body is never empty, so a header of eight zero bytes (length 0, and the CRC32C of
//! nothing, 0) is never a frame: it marks the end of the data in a preallocated, zero-filled
//! journal segment. A record that prost would encode as nothing (epoch 0, no entries) is written
//! with its epoch field explicit (`08 00`), which decodes to the same record.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message as _;

pub use crate::proto::wal::*;

impl Header {
    /// A string-valued header (all STOMP headers are).
    pub fn text(name: impl Into<String>, value: impl Into<String>) -> Header {
        Header {
            name: name.into(),
            value: value.into(),
            kind: PropertyType::String as i32,
        }
    }
}

impl Message {
    /// Whether its delivery mode has it stored: persistent, and not sent to a temporary
    /// destination (a delayed message is stored whatever this says, in the holding area).
    pub fn stored_for_mode(&self) -> bool {
        self.persistent && !self.temporary
    }
}

/// Bytes before the body of every frame: length then checksum.
pub const FRAME_HEADER_LEN: usize = 8;

/// A byte offset in a node's global journal stream; a record is addressed by the position of
/// its frame. Positions only grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position(pub u64);

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The address of a stored message within its queue: the position of the record that added it
/// and the entry's index in that record. Ordered like the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageKey(pub u64);

impl MessageKey {
    pub fn new(position: Position, entry_index: usize) -> MessageKey {
        MessageKey((position.0 << 16) | (entry_index as u64 & 0xffff))
    }
    pub fn position(self) -> Position {
        Position(self.0 >> 16)
    }
    /// Which entry of the record at [`MessageKey::position`] added the message.
    pub fn entry_index(self) -> usize {
        (self.0 & 0xffff) as usize
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame with an empty body (a zero header marks the end of a journal segment)")]
    Empty,
    #[error("frame of {0} bytes is larger than the limit of {1} bytes")]
    TooLarge(usize, usize),
    #[error("frame checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadChecksum { stored: u32, computed: u32 },
    #[error("frame body does not decode as a record: {0}")]
    Undecodable(String),
}

/// Largest body a frame may declare; anything longer is corruption, not data.
pub const MAX_RECORD_LEN: usize = 256 * 1024 * 1024;

/// Encodes `record` as one frame appended to `out`; returns the frame's length.
pub fn encode_frame(record: &Record, out: &mut BytesMut) -> usize {
    let len = encoded_body_len(record);
    out.reserve(FRAME_HEADER_LEN + len);
    let start = out.len();
    out.put_u32_le(len as u32);
    out.put_u32_le(0);
    if record.encoded_len() == 0 {
        out.put_slice(EMPTY_RECORD_BODY);
    } else {
        record
            .encode(out)
            .expect("BytesMut grows to fit an encoded record");
    }
    let crc = crc32c::crc32c(&out[start + FRAME_HEADER_LEN..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    FRAME_HEADER_LEN + len
}

/// The body written for a record that prost encodes as nothing: field 1 (`epoch`, a varint)
/// explicitly 0. Decodes to `Record::default()`.
const EMPTY_RECORD_BODY: &[u8] = &[0x08, 0x00];

/// Length of the body [`encode_frame`] writes for `record` (never 0).
pub fn encoded_body_len(record: &Record) -> usize {
    match record.encoded_len() {
        0 => EMPTY_RECORD_BODY.len(),
        len => len,
    }
}

/// Checks the frame at the start of `buf` without decoding its body.
/// `Ok(None)` means `buf` holds only part of a frame; `Ok(Some(n))` is the frame's length.
pub fn check_frame(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    if buf.len() < FRAME_HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().unwrap()) as usize;
    if len > MAX_RECORD_LEN {
        return Err(FrameError::TooLarge(len, MAX_RECORD_LEN));
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if buf.len() < FRAME_HEADER_LEN + len {
        return Ok(None);
    }
    let stored = u32::from_le_bytes(buf[4..8].try_into().unwrap());
    let computed = crc32c::crc32c(&buf[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len]);
    if stored != computed {
        return Err(FrameError::BadChecksum { stored, computed });
    }
    Ok(Some(FRAME_HEADER_LEN + len))
}

/// Decodes one whole, checked frame (as returned by [`check_frame`]).
pub fn decode_frame(frame: Bytes) -> Result<Record, FrameError> {
    let mut frame = frame;
    frame.advance(FRAME_HEADER_LEN);
    Record::decode(frame).map_err(|e| FrameError::Undecodable(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            epoch: 3,
            entries: vec![Entry {
                kind: Some(entry::Kind::Remove(MessageRemove {
                    queue: "queue://a".into(),
                    key: 7,
                })),
            }],
        }
    }

    #[test]
    fn frame_round_trips() {
        let mut buf = BytesMut::new();
        let n = encode_frame(&sample(), &mut buf);
        assert_eq!(n, buf.len());
        assert_eq!(check_frame(&buf).unwrap(), Some(n));
        assert_eq!(decode_frame(buf.freeze()).unwrap(), sample());
    }

    #[test]
    fn partial_frame_is_incomplete_not_an_error() {
        let mut buf = BytesMut::new();
        let n = encode_frame(&sample(), &mut buf);
        for cut in 0..n {
            assert_eq!(check_frame(&buf[..cut]).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn flipped_bit_is_a_checksum_error() {
        let mut buf = BytesMut::new();
        let n = encode_frame(&sample(), &mut buf);
        buf[n - 1] ^= 0x01;
        assert!(matches!(
            check_frame(&buf),
            Err(FrameError::BadChecksum { .. })
        ));
    }

    #[test]
    fn absurd_length_is_rejected() {
        let mut buf = BytesMut::new();
        buf.put_u32_le(u32::MAX);
        buf.put_u32_le(0);
        assert!(matches!(check_frame(&buf), Err(FrameError::TooLarge(..))));
    }

    #[test]
    fn an_empty_record_has_a_non_empty_body_and_a_zero_header_is_no_frame() {
        let mut buf = BytesMut::new();
        let n = encode_frame(&Record::default(), &mut buf);
        assert_eq!(n, FRAME_HEADER_LEN + 2);
        assert_eq!(encoded_body_len(&Record::default()), 2);
        assert_eq!(check_frame(&buf).unwrap(), Some(n));
        assert_eq!(decode_frame(buf.freeze()).unwrap(), Record::default());
        assert_eq!(check_frame(&[0u8; 16]), Err(FrameError::Empty));
    }

    #[test]
    fn message_key_orders_like_the_journal() {
        let a = MessageKey::new(Position(100), 2);
        let b = MessageKey::new(Position(101), 0);
        assert!(a < b);
        assert_eq!(a.position(), Position(100));
    }
}
