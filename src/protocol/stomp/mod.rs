//! STOMP 1.0, 1.1 and 1.2.
//!
//! - [`frame`]: the frame codec (parsing, encoding, header escaping, size limits); pure, no I/O.
//! - `session`: one client connection, translating frames into broker-core calls.

pub mod frame;
pub mod session;
