//! Wire protocols that translate client frames into broker-core calls.
//!
//! - [`stomp`]: STOMP 1.0, 1.1 and 1.2 (the frame codec in [`stomp::frame`]).
//! - [`openwire`]: OpenWire versions 1 to 12, for stock ActiveMQ JMS clients.
//! - [`temps`]: the temporary destinations live on this node, whichever protocol made them.
//! - `write`: writing to a client while still noticing that it went silent.
//! - [`detect`]: tells STOMP from OpenWire by the first bytes a client sends, so that one
//!   listener can serve both.

pub mod openwire;
pub mod stomp;
pub mod temps;
pub(crate) mod write;

/// Free room a connection's input buffer has before each read (see [`room_to_read`]).
const READ_ROOM: usize = 4 * 1024;

/// Makes sure `input` has [`READ_ROOM`] bytes free after its data before a read. Without it a
/// buffer left with a few hundred free bytes (frames split off its front take their room with
/// them) reads a frame in two system calls; with it, one read takes a whole 1 KiB message and
/// more.
pub(crate) fn room_to_read(input: &mut bytes::BytesMut) {
    if input.capacity() - input.len() < READ_ROOM {
        input.reserve(2 * READ_ROOM);
    }
}

/// A destination named in a header, as STOMP writes it and as the core keeps it: ActiveMQ's
/// printed form (`queue://x`, `temp-queue://x`), which is what a JMS selector on JMSReplyTo
/// compares with.
///
/// A temporary destination is written back as ActiveMQ writes one that the reading connection
/// did not create: `/remote-temp-queue/ID:...`. The STOMP session maps its own
/// `/temp-queue/NAME` to and from its `ID:...` names before these forms apply.
const DESTINATION_FORMS: [(&str, &str); 6] = [
    ("/queue/", "queue://"),
    ("/topic/", "topic://"),
    ("/remote-temp-queue/", "temp-queue://"),
    ("/remote-temp-topic/", "temp-topic://"),
    ("/temp-queue/", "temp-queue://"),
    ("/temp-topic/", "temp-topic://"),
];

/// Whether `stomp` starts with one of the STOMP destination prefixes ActiveMQ knows
/// (`/queue/`, `/topic/`, `/temp-queue/`, `/remote-temp-queue/`, and the topics').
pub(crate) fn has_destination_prefix(stomp: &str) -> bool {
    DESTINATION_FORMS.iter().any(|(s, _)| stomp.starts_with(s))
}

/// `/queue/x` → `queue://x` (other text unchanged).
pub(crate) fn destination_to_core(stomp: &str) -> String {
    DESTINATION_FORMS
        .iter()
        .find_map(|(s, c)| stomp.strip_prefix(s).map(|name| format!("{c}{name}")))
        .unwrap_or_else(|| stomp.to_string())
}

/// `queue://x` → `/queue/x`, `temp-queue://x` → `/remote-temp-queue/x` (other text unchanged).
pub(crate) fn destination_to_stomp(core: &str) -> String {
    DESTINATION_FORMS[..4]
        .iter()
        .find_map(|(s, c)| core.strip_prefix(c).map(|name| format!("{s}{name}")))
        .unwrap_or_else(|| core.to_string())
}

/// The protocol a client speaks, as decided by [`detect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Detected {
    /// The client opened with a STOMP `CONNECT` or `STOMP` frame.
    Stomp,
    /// The client opened with an OpenWire `WireFormatInfo` (size, type 1, magic `ActiveMQ`).
    OpenWire,
    /// Neither: the bytes already received rule out both protocols.
    Unknown,
}

/// How many end-of-line bytes (`\r`, `\n`) [`detect`] tolerates before a STOMP command.
const MAX_LEADING_EOLS: usize = 256;

/// Once a client has sent this many bytes, [`detect`] always decides (never returns `None`).
///
/// Up to `MAX_LEADING_EOLS` heart-beat EOLs, then `CONNECT` and its line ending.
pub const DETECT_MAX_BYTES: usize = MAX_LEADING_EOLS + STOMP_CONNECT.len() + 1;

const STOMP_CONNECT: &[u8] = b"CONNECT";
const STOMP_STOMP: &[u8] = b"STOMP";

/// Bytes 4..13 of an OpenWire connection: the `WireFormatInfo` type byte and the magic.
const OPENWIRE_MAGIC: &[u8] = b"\x01ActiveMQ";
/// Bytes 0..4 of an OpenWire frame are its big-endian size, which may be anything.
const OPENWIRE_MAGIC_AT: usize = 4;

/// The verdict of one protocol's matcher on the bytes seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Yes,
    No,
    NeedMore,
}

/// Decides which protocol a client speaks from the first bytes it sent.
///
/// `first_bytes` is everything received so far (call again with more bytes on `None`).
/// Returns `None` while the bytes are still a prefix of a STOMP or an OpenWire opening; once
/// [`DETECT_MAX_BYTES`] bytes are available it always returns `Some`.
///
/// - STOMP: optional EOLs (`\n`, `\r\n`; at most `MAX_LEADING_EOLS` bytes), then the command
///   `CONNECT` or `STOMP` followed by its line ending.
/// - OpenWire: a 4-byte big-endian size, then the `WireFormatInfo` type byte `1` and the magic
///   `ActiveMQ` (bytes 4..13).
///
/// Detection only looks at the bytes; it never consumes them: hand the same bytes to the
/// protocol's decoder afterwards.
pub fn detect(first_bytes: &[u8]) -> Option<Detected> {
    let stomp = detect_stomp(first_bytes);
    let openwire = detect_openwire(first_bytes);
    match (stomp, openwire) {
        (Verdict::Yes, _) => Some(Detected::Stomp),
        (_, Verdict::Yes) => Some(Detected::OpenWire),
        (Verdict::No, Verdict::No) => Some(Detected::Unknown),
        _ => None,
    }
}

fn detect_stomp(bytes: &[u8]) -> Verdict {
    let eols = bytes
        .iter()
        .position(|&b| b != b'\n' && b != b'\r')
        .unwrap_or(bytes.len());
    if eols > MAX_LEADING_EOLS {
        return Verdict::No;
    }
    let rest = &bytes[eols..];
    let mut verdict = Verdict::No;
    for command in [STOMP_CONNECT, STOMP_STOMP] {
        let seen = rest.len().min(command.len());
        if rest[..seen] != command[..seen] {
            continue;
        }
        match rest.get(command.len()) {
            None => verdict = Verdict::NeedMore,
            Some(b'\n' | b'\r') => return Verdict::Yes,
            Some(_) => {}
        }
    }
    verdict
}

fn detect_openwire(bytes: &[u8]) -> Verdict {
    let Some(after_size) = bytes.get(OPENWIRE_MAGIC_AT..) else {
        return Verdict::NeedMore;
    };
    let seen = after_size.len().min(OPENWIRE_MAGIC.len());
    if after_size[..seen] != OPENWIRE_MAGIC[..seen] {
        Verdict::No
    } else if seen == OPENWIRE_MAGIC.len() {
        Verdict::Yes
    } else {
        Verdict::NeedMore
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start of a real OpenWire 5.x connection: WireFormatInfo, size 0x00000106.
    const OPENWIRE_HELLO: &[u8] = b"\x00\x00\x01\x06\x01ActiveMQ\x00\x00\x00\x0c\x01\x00";

    /// A buffer whose free end a split-off frame left short gets room for a whole frame of
    /// 1 KiB and more before the next read, and keeps the bytes it holds.
    #[test]
    fn a_read_buffer_always_has_room_for_a_frame() {
        let mut input = bytes::BytesMut::with_capacity(4096);
        input.extend_from_slice(&[7; 3800]);
        let frame = input.split_to(3700);
        assert!(input.capacity() - input.len() < 1024);
        room_to_read(&mut input);
        assert!(input.capacity() - input.len() >= READ_ROOM);
        assert_eq!(&input[..], &[7; 100][..]);
        drop(frame);
        let room = input.capacity();
        room_to_read(&mut input);
        assert_eq!(input.capacity(), room, "enough room: nothing more reserved");
    }

    #[test]
    fn stomp_connect_and_stomp() {
        assert_eq!(
            detect(b"CONNECT\naccept-version:1.2\n\n\0"),
            Some(Detected::Stomp)
        );
        assert_eq!(detect(b"STOMP\r\nhost:b\r\n\r\n\0"), Some(Detected::Stomp));
        assert_eq!(detect(b"\n\r\nCONNECT\n"), Some(Detected::Stomp));
        assert_eq!(detect(b"CONNECT\r"), Some(Detected::Stomp));
    }

    #[test]
    fn stomp_needs_more_on_every_prefix() {
        let hello = b"\r\nCONNECT\n";
        for end in 0..hello.len() {
            assert_eq!(detect(&hello[..end]), None, "prefix {end}");
        }
        assert_eq!(detect(hello), Some(Detected::Stomp));
        let hello = b"STOMP\n";
        for end in 0..hello.len() {
            assert_eq!(detect(&hello[..end]), None, "prefix {end}");
        }
    }

    #[test]
    fn openwire_wire_format_info() {
        assert_eq!(detect(OPENWIRE_HELLO), Some(Detected::OpenWire));
        assert_eq!(detect(&OPENWIRE_HELLO[..13]), Some(Detected::OpenWire));
        for end in 0..13 {
            assert_eq!(detect(&OPENWIRE_HELLO[..end]), None, "prefix {end}");
        }
        // The size bytes may be anything, even EOLs or letters.
        assert_eq!(detect(b"\n\n\n\n\x01ActiveMQ"), Some(Detected::OpenWire));
        assert_eq!(detect(b"CONN\x01ActiveMQ"), Some(Detected::OpenWire));
    }

    #[test]
    fn garbage_is_unknown() {
        assert_eq!(detect(b"GET / HTTP/1.1\r\n"), Some(Detected::Unknown));
        // Four bytes could still be an OpenWire size; the fifth rules it out.
        assert_eq!(detect(b"XXXX"), None);
        assert_eq!(detect(b"XXXXX"), Some(Detected::Unknown));
        assert_eq!(detect(b"SEND\n"), Some(Detected::Unknown));
        assert_eq!(detect(b"CONNECTED\n"), Some(Detected::Unknown));
        assert_eq!(detect(b"connect\n"), Some(Detected::Unknown));
        assert_eq!(detect(b"\x00\x00\x01\x06\x02"), Some(Detected::Unknown));
        assert_eq!(
            detect(b"\x00\x00\x01\x06\x01ActiveMX"),
            Some(Detected::Unknown)
        );
        // A TLS ClientHello.
        assert_eq!(
            detect(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
            Some(Detected::Unknown)
        );
    }

    #[test]
    fn ambiguous_prefix_waits() {
        // Could still be OpenWire (size bytes) or STOMP (EOLs then CONNECT).
        assert_eq!(detect(b"\n\n\n\n"), None);
        assert_eq!(detect(b"CON"), None);
    }

    #[test]
    fn always_decides_after_max_bytes() {
        let eols = vec![b'\n'; DETECT_MAX_BYTES];
        assert_eq!(detect(&eols), Some(Detected::Unknown));
        let mut hello = vec![b'\n'; MAX_LEADING_EOLS];
        hello.extend_from_slice(b"CONNECT\n");
        assert_eq!(hello.len(), DETECT_MAX_BYTES);
        assert_eq!(detect(&hello), Some(Detected::Stomp));
        let mut hello = vec![b'\r'; MAX_LEADING_EOLS + 1];
        hello.extend_from_slice(b"CONNECT\n");
        assert_eq!(detect(&hello), Some(Detected::Unknown));
    }
}
