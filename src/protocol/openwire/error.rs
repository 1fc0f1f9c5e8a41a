//! The one error type of the OpenWire codec.

use thiserror::Error;

/// Why bytes could not be decoded into a command, or a command could not be encoded.
///
/// `what` names the field (`"ConnectionInfo.clientId"`) or structure being read; `offset` is
/// the byte offset from the start of the frame (its size prefix included) where it starts.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    /// The size prefix announces a frame larger than the configured maximum.
    #[error("frame of {size} bytes exceeds the maximum frame size of {max} bytes")]
    FrameTooLarge {
        /// The announced size (bytes after the prefix).
        size: u64,
        /// The configured maximum.
        max: usize,
    },
    /// The size prefix is zero or negative: a frame holds at least its type byte.
    #[error("invalid frame size {size}: a frame holds at least its type byte")]
    InvalidFrameSize {
        /// The announced size.
        size: i32,
    },
    /// More bytes were handed to [`super::decode`] than the size prefix announces.
    #[error("frame size prefix announces {declared} bytes but {actual} bytes follow it")]
    SizeMismatch {
        /// The size the prefix announces.
        declared: usize,
        /// The bytes that follow the prefix.
        actual: usize,
    },
    /// The bytes end in the middle of a field.
    #[error("truncated {what} at offset {offset}: needs {need} bytes, {have} left")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Where the field starts.
        offset: usize,
        /// The bytes the field needs.
        need: usize,
        /// The bytes left.
        have: usize,
    },
    /// A type byte no OpenWire marshaller this codec knows uses.
    #[error("unknown data structure type {type_code} in {what} at offset {offset}")]
    UnknownType {
        /// The field holding the object.
        what: &'static str,
        /// The type byte.
        type_code: u8,
        /// Where the type byte is.
        offset: usize,
    },
    /// A known type where the field allows another (e.g. a queue where a ConsumerId belongs).
    #[error("{what} at offset {offset} holds type {type_code}, expected {expected}")]
    UnexpectedType {
        /// The field holding the object.
        what: &'static str,
        /// The type byte found.
        type_code: u8,
        /// What the field may hold.
        expected: &'static str,
        /// Where the type byte is.
        offset: usize,
    },
    /// A field whose bytes are present but invalid.
    #[error("malformed {what} at offset {offset}: {reason}")]
    Malformed {
        /// The field.
        what: &'static str,
        /// Where the field starts.
        offset: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The command ended before the frame did: the version or field order disagree.
    #[error("{count} trailing bytes after {what} at offset {offset}")]
    TrailingBytes {
        /// The command decoded.
        what: &'static str,
        /// Where the unread bytes start.
        offset: usize,
        /// How many bytes were left unread.
        count: usize,
    },
    /// Objects nested deeper than the codec allows (a guard against hostile input).
    #[error("{what} at offset {offset} nests deeper than {max} levels")]
    TooDeep {
        /// The field that would nest too deep.
        what: &'static str,
        /// Where it starts.
        offset: usize,
        /// The maximum depth.
        max: u32,
    },
    /// More primitive values than the codec decodes in one frame (a guard against hostile
    /// input that would decode into many times its size).
    #[error("{what} at offset {offset} holds more than {max} values")]
    TooManyValues {
        /// The field being decoded.
        what: &'static str,
        /// Where the value past the limit starts.
        offset: usize,
        /// The maximum count.
        max: u32,
    },
    /// An OpenWire version this codec does not marshal.
    #[error(
        "OpenWire version {version} is not supported (ferromq speaks versions {min} to {max})"
    )]
    UnsupportedVersion {
        /// The version asked for.
        version: i32,
        /// The lowest supported version.
        min: i32,
        /// The highest supported version.
        max: i32,
    },
    /// Negotiation would select a wire-format option this codec does not implement.
    #[error("unsupported wire format: {0}")]
    UnsupportedWireFormat(&'static str),
    /// A value that loose encoding cannot represent (e.g. a string over 65535 bytes).
    #[error("cannot encode {what}: {reason}")]
    Unencodable {
        /// The field.
        what: &'static str,
        /// Why.
        reason: &'static str,
    },
}
