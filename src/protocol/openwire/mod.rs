//! OpenWire, the native protocol of ActiveMQ 5.x, spoken by stock ActiveMQ JMS clients.
//!
//! - [`session`]: one client connection, from `WireFormatInfo` to `ShutdownInfo`, on top of a
//!   broker-core session;
//! - [`convert`]: JMS messages to and from the core's protocol-neutral messages;
//! - this module and its private parts: the codec between bytes and [`Command`]s.
//!
//! The codec owns the wire format only: framing (a 4-byte big-endian size prefix, a type
//! byte, the body), the loose encoding of every command and data structure a stock ActiveMQ
//! 5.x (or 4.x) JMS client sends or expects (field order of ActiveMQ's marshallers, versions 1 to 12),
//! the primitive map of `WireFormatInfo` properties and message properties, and wire-format
//! negotiation. Decoding never panics: bad input is a [`CodecError`] naming the field and the
//! byte offset.
//!
//! The codec must never hold broker logic: no sessions, no replies, no state across frames (the
//! marshal cache and tight encoding are deliberately unsupported: ferromq advertises
//! `CacheEnabled=false` and `TightEncodingEnabled=false`, so every client falls back to
//! stateless loose encoding). Deciding what to answer is the job of [`session`].
//!
//! Usage: split frames off the socket buffer with [`FrameReader`], [`decode`] each one with
//! the [`Format`] negotiated from both `WireFormatInfo`s ([`negotiate`]), and [`encode`]
//! replies.

mod command;
pub mod convert;
mod error;
mod marshal;
mod primitive;
pub mod session;
mod wire;

#[cfg(test)]
mod tests;

use bytes::{BufMut, BytesMut};

pub use command::*;
pub use error::CodecError;
pub use primitive::{decode_text_body, encode_text_body, PrimitiveMap, PrimitiveValue};

use wire::Reader;

/// The lowest OpenWire version this codec marshals (version 1: ActiveMQ 4.0 clients).
pub const MIN_VERSION: i32 = 1;
/// The highest OpenWire version this codec marshals (ActiveMQ 5.13 and later speak 12).
pub const MAX_VERSION: i32 = 12;
/// A default for [`FrameReader::new`]: ActiveMQ's transport connectors default to 100 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 100 * 1024 * 1024;

/// What the encoding of a connection depends on, once negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    /// The OpenWire version, [`MIN_VERSION`]..=[`MAX_VERSION`].
    pub version: i32,
    /// Whether throwables carry their stack trace and cause (`StackTraceEnabled`).
    pub stack_trace: bool,
}

impl Format {
    /// A format of `version` without stack traces.
    pub const fn new(version: i32) -> Self {
        Format {
            version,
            stack_trace: false,
        }
    }

    fn check(self) -> Result<(), CodecError> {
        if (MIN_VERSION..=MAX_VERSION).contains(&self.version) {
            Ok(())
        } else {
            Err(CodecError::UnsupportedVersion {
                version: self.version,
                min: MIN_VERSION,
                max: MAX_VERSION,
            })
        }
    }
}

/// Property names of `WireFormatInfo` (Java spells the initial delay `Inital`).
pub mod property {
    #![allow(missing_docs)]
    pub const STACK_TRACE_ENABLED: &str = "StackTraceEnabled";
    pub const CACHE_ENABLED: &str = "CacheEnabled";
    pub const CACHE_SIZE: &str = "CacheSize";
    pub const TCP_NO_DELAY_ENABLED: &str = "TcpNoDelayEnabled";
    pub const TIGHT_ENCODING_ENABLED: &str = "TightEncodingEnabled";
    pub const SIZE_PREFIX_DISABLED: &str = "SizePrefixDisabled";
    pub const MAX_INACTIVITY_DURATION: &str = "MaxInactivityDuration";
    pub const MAX_INACTIVITY_DURATION_INITIAL_DELAY: &str = "MaxInactivityDurationInitalDelay";
    pub const MAX_FRAME_SIZE: &str = "MaxFrameSize";
    pub const PROVIDER_NAME: &str = "ProviderName";
    pub const PROVIDER_VERSION: &str = "ProviderVersion";
    pub const PLATFORM_DETAILS: &str = "PlatformDetails";
}

impl WireFormatInfo {
    /// What ferromq advertises: version 12, loose encoding, no marshal cache, size prefix on,
    /// no stack traces, and the given frame limit and inactivity duration in ms (0 disables
    /// the client's inactivity monitor).
    pub fn ferromq(max_frame_size: i64, max_inactivity_duration: i64, initial_delay: i64) -> Self {
        let mut p = PrimitiveMap::new();
        p.insert(
            property::TIGHT_ENCODING_ENABLED,
            PrimitiveValue::Bool(false),
        );
        p.insert(property::CACHE_ENABLED, PrimitiveValue::Bool(false));
        p.insert(property::SIZE_PREFIX_DISABLED, PrimitiveValue::Bool(false));
        p.insert(property::STACK_TRACE_ENABLED, PrimitiveValue::Bool(false));
        p.insert(property::TCP_NO_DELAY_ENABLED, PrimitiveValue::Bool(true));
        p.insert(property::CACHE_SIZE, PrimitiveValue::Int(0));
        p.insert(
            property::MAX_FRAME_SIZE,
            PrimitiveValue::Long(max_frame_size),
        );
        p.insert(
            property::MAX_INACTIVITY_DURATION,
            PrimitiveValue::Long(max_inactivity_duration),
        );
        p.insert(
            property::MAX_INACTIVITY_DURATION_INITIAL_DELAY,
            PrimitiveValue::Long(initial_delay),
        );
        p.insert(
            property::PROVIDER_NAME,
            PrimitiveValue::String("ferromq".into()),
        );
        p.insert(
            property::PROVIDER_VERSION,
            PrimitiveValue::String(env!("CARGO_PKG_VERSION").into()),
        );
        WireFormatInfo {
            version: MAX_VERSION,
            properties: Some(p),
        }
    }

    /// `Boolean.TRUE == property` (absent or non-boolean is false), as Java tests it.
    pub fn flag(&self, name: &str) -> bool {
        self.properties.as_ref().is_some_and(|p| p.flag(name))
    }

    /// An integer property; absent is 0, as in Java.
    pub fn long(&self, name: &str) -> i64 {
        self.properties
            .as_ref()
            .and_then(|p| p.long(name))
            .unwrap_or(0)
    }
}

/// The outcome of [`negotiate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Version and stack-trace flag: pass to [`decode`] and [`encode`].
    pub format: Format,
    /// Both sides asked for TCP_NODELAY.
    pub tcp_no_delay: bool,
    /// The smaller positive `MaxFrameSize` (0 if neither sent one).
    pub max_frame_size: i64,
    /// The smaller `MaxInactivityDuration` in ms; 0 disables inactivity checks.
    pub max_inactivity_duration: i64,
    /// The smaller `MaxInactivityDurationInitalDelay` in ms.
    pub max_inactivity_duration_initial_delay: i64,
}

/// Java's `OpenWireFormat.min`: the smaller of two values where non-positive means unset.
fn java_min(a: i64, b: i64) -> i64 {
    if (a < b && a > 0) || b <= 0 {
        a
    } else {
        b
    }
}

/// Negotiates a connection's wire format from the client's `WireFormatInfo` and ours, as
/// `OpenWireFormat.renegotiateWireFormat` does: version = min of both, flags = AND of both.
///
/// Fails when the version is below [`MIN_VERSION`], or when both sides would enable tight
/// encoding, the marshal cache or a disabled size prefix (this codec implements none of
/// them; advertise [`WireFormatInfo::ferromq`] and they never are).
pub fn negotiate(client: &WireFormatInfo, ours: &WireFormatInfo) -> Result<Negotiated, CodecError> {
    let version = java_min(i64::from(client.version), i64::from(ours.version));
    let version = i32::try_from(version).unwrap_or(i32::MAX).min(MAX_VERSION);
    let both = |name| client.flag(name) && ours.flag(name);
    let format = Format {
        version,
        stack_trace: both(property::STACK_TRACE_ENABLED),
    };
    format.check()?;
    if both(property::TIGHT_ENCODING_ENABLED) {
        return Err(CodecError::UnsupportedWireFormat("tight encoding"));
    }
    if both(property::CACHE_ENABLED) {
        return Err(CodecError::UnsupportedWireFormat("the marshal cache"));
    }
    if both(property::SIZE_PREFIX_DISABLED) {
        return Err(CodecError::UnsupportedWireFormat(
            "frames without a size prefix",
        ));
    }
    let min = |name| client.long(name).min(ours.long(name));
    Ok(Negotiated {
        format,
        tcp_no_delay: both(property::TCP_NO_DELAY_ENABLED),
        max_frame_size: java_min(
            client.long(property::MAX_FRAME_SIZE),
            ours.long(property::MAX_FRAME_SIZE),
        ),
        max_inactivity_duration: min(property::MAX_INACTIVITY_DURATION),
        max_inactivity_duration_initial_delay: min(property::MAX_INACTIVITY_DURATION_INITIAL_DELAY),
    })
}

/// Splits size-prefixed frames off a stream buffer, enforcing a maximum frame size.
#[derive(Debug, Clone, Copy)]
pub struct FrameReader {
    max_frame_size: usize,
    /// Bytes of a skipped message still to drop (see [`FrameReader::next_or_skip`]).
    discarding: usize,
}

/// What [`FrameReader::next_or_skip`] took off the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A whole frame, size prefix included.
    Frame(BytesMut),
    /// A message over the frame limit, whose bytes are being dropped.
    Skipped(Oversized),
}

/// The head of a message frame over the limit: what the client must be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oversized {
    pub size: u64,
    pub max: usize,
    pub command_id: i32,
    pub response_required: bool,
}

/// Size prefix, type, command id and response flag: the head of a loose-encoded command.
const COMMAND_HEAD_LEN: usize = 10;

impl FrameReader {
    /// A reader refusing frames whose size prefix exceeds `max_frame_size` bytes.
    pub fn new(max_frame_size: usize) -> Self {
        FrameReader {
            max_frame_size,
            discarding: 0,
        }
    }

    /// As [`FrameReader::next_frame`], except that a message (not another command) over the
    /// limit is skipped instead of being an error: its head is returned as soon as it has
    /// arrived and its remaining bytes are dropped as they arrive, never buffered, so the
    /// connection carries on and the client can be told. (The stock client on a failover URL
    /// re-sends a message whose connection closed under it, forever.)
    pub fn next_or_skip(&mut self, buf: &mut BytesMut) -> Result<Option<Next>, CodecError> {
        if self.discarding > 0 {
            let dropped = self.discarding.min(buf.len());
            bytes::Buf::advance(buf, dropped);
            self.discarding -= dropped;
            if self.discarding > 0 {
                return Ok(None);
            }
        }
        match self.next_frame(buf) {
            Err(CodecError::FrameTooLarge { size, max }) => {
                match buf.get(4) {
                    None => return Ok(None),
                    Some(&code) if !marshal::is_message(code) => {
                        return Err(CodecError::FrameTooLarge { size, max })
                    }
                    Some(_) => {}
                }
                let Some(head) = buf.get(..COMMAND_HEAD_LEN) else {
                    return Ok(None);
                };
                let skipped = Oversized {
                    size,
                    max,
                    command_id: i32::from_be_bytes([head[5], head[6], head[7], head[8]]),
                    response_required: head[9] != 0,
                };
                let total = 4 + size as usize;
                let dropped = total.min(buf.len());
                bytes::Buf::advance(buf, dropped);
                self.discarding = total - dropped;
                Ok(Some(Next::Skipped(skipped)))
            }
            other => other.map(|frame| frame.map(Next::Frame)),
        }
    }

    /// Removes one complete frame (size prefix included) from the front of `buf`, or returns
    /// `Ok(None)` while it is incomplete. An oversized or empty frame is an error as soon as
    /// its prefix arrives, before its body is buffered; the connection should then be closed.
    pub fn next_frame(&self, buf: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
        let Some(prefix) = buf.get(..4) else {
            return Ok(None);
        };
        let size = i32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        let body = frame_size(size, self.max_frame_size)?;
        if buf.len() < 4 + body {
            // Grow gradually: a hostile prefix must not make us allocate its size up front.
            buf.reserve((4 + body - buf.len()).min(64 * 1024));
            return Ok(None);
        }
        Ok(Some(buf.split_to(4 + body)))
    }
}

fn frame_size(size: i32, max: usize) -> Result<usize, CodecError> {
    let body = usize::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .ok_or(CodecError::InvalidFrameSize { size })?;
    if body > max {
        return Err(CodecError::FrameTooLarge {
            size: body as u64,
            max,
        });
    }
    Ok(body)
}

/// Decodes one complete frame: the 4-byte size prefix, the type byte and the loose-encoded
/// body, which must end exactly where the frame does.
///
/// `WireFormatInfo` decodes under any format (it is what a format is negotiated from); every
/// other command needs a supported version.
pub fn decode(frame: &[u8], format: Format) -> Result<Command, CodecError> {
    let mut r = Reader::new(frame, 0);
    let size = r.i32("frame size")?;
    let body = frame_size(size, usize::MAX)?;
    let actual = r.remaining();
    if actual < body {
        return Err(CodecError::Truncated {
            what: "frame",
            offset: 4,
            need: body,
            have: actual,
        });
    }
    if actual > body {
        return Err(CodecError::SizeMismatch {
            declared: body,
            actual,
        });
    }
    let at = r.offset();
    let code = r.u8("command type")?;
    if !marshal::is_command(code) {
        let known = marshal::type_name(code) != "unknown";
        return Err(if known && code != type_code::NULL {
            CodecError::UnexpectedType {
                what: "frame",
                type_code: code,
                expected: "a command",
                offset: at,
            }
        } else if code == type_code::NULL {
            CodecError::Malformed {
                what: "frame",
                offset: at,
                reason: "null command",
            }
        } else {
            CodecError::UnknownType {
                what: "frame",
                type_code: code,
                offset: at,
            }
        });
    }
    if code != type_code::WIRE_FORMAT_INFO {
        format.check()?;
    }
    let command = marshal::read_command(&mut r, format, code)?;
    r.finish(marshal::type_name(code))?;
    Ok(command)
}

/// Appends `command` as one frame (size prefix, type byte, loose-encoded body) to `out`.
///
/// Fields the version lacks are dropped, as Java's marshallers do. On error nothing is
/// appended.
pub fn encode(command: &Command, format: Format, out: &mut BytesMut) -> Result<(), CodecError> {
    if !matches!(command, Command::WireFormatInfo(_)) {
        format.check()?;
    }
    let start = out.len();
    out.put_i32(0);
    out.put_u8(command.type_code());
    let result = marshal::write_command(out, format, command).and_then(|()| {
        i32::try_from(out.len() - start - 4).map_err(|_| CodecError::Unencodable {
            what: command.name(),
            reason: "frame longer than 2^31-1 bytes",
        })
    });
    match result {
        Ok(size) => {
            out[start..start + 4].copy_from_slice(&size.to_be_bytes());
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}
