//! STOMP 1.0, 1.1 and 1.2.
//!
//! - [`frame`]: the frame codec (parsing, encoding, header escaping, size limits); pure, no I/O.
//! - `session`: one client connection, translating frames into broker-core calls.

pub mod frame;
pub mod session;

/// A SEND header (`ferromq.dedupe:true`) saying that the frame's `message-id` is
/// `<producer>:<sequence>`, the client's own and never reused: a repeat of it (a re-send after
/// a failover) is confirmed and not stored again. Without it the broker ignores a SEND's
/// `message-id` and gives the message an id of its own, as ActiveMQ does, so a script that
/// forwards a MESSAGE with its headers stores a new message instead of a dropped "repeat".
/// ferromq's client sets it on every SEND; the broker never writes it on a MESSAGE.
pub const DEDUPE_HEADER: &str = "ferromq.dedupe";
