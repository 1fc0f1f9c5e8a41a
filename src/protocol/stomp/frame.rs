//! The STOMP 1.0 / 1.1 / 1.2 frame codec: parsing, encoding, header escaping and size limits.
//!
//! Pure: no I/O. The session layer reads bytes into a [`BytesMut`], calls [`Decoder::decode`]
//! until it returns `Ok(None)`, and writes frames built with [`Frame`] through [`encode`].
//!
//! A frame is a command line, header lines `name:value`, a blank line, the body and a NUL byte.
//! Lines end with LF or CRLF. With a `content-length` header the body is exactly that many bytes
//! (and may contain NULs); without one it runs to the first NUL. In 1.1 and 1.2, header names and
//! values are escaped (`\\`, `\n`, `\c`, and in 1.2 `\r`), except in `CONNECT` and `CONNECTED`
//! frames; 1.0 has no escaping.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The `content-length` header.
pub const CONTENT_LENGTH: &str = "content-length";

/// What replaces a character that the target encoding cannot carry in a header (see [`encode`]).
const REPLACEMENT: &str = "\u{FFFD}";

/// The longest excerpt of client input quoted in a [`FrameError`] message.
const MAX_QUOTE: usize = 64;

/// A STOMP command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    // Client frames.
    Connect,
    Stomp,
    Send,
    Subscribe,
    Unsubscribe,
    Ack,
    Nack,
    Begin,
    Commit,
    Abort,
    Disconnect,
    // Server frames.
    Connected,
    Message,
    Receipt,
    Error,
}

impl Command {
    /// Every command, client frames first.
    pub const ALL: [Command; 15] = [
        Command::Connect,
        Command::Stomp,
        Command::Send,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Ack,
        Command::Nack,
        Command::Begin,
        Command::Commit,
        Command::Abort,
        Command::Disconnect,
        Command::Connected,
        Command::Message,
        Command::Receipt,
        Command::Error,
    ];

    /// The command as it appears on the wire, e.g. `"SEND"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Connected => "CONNECTED",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    /// Parses a command line (without its line ending); commands are case-sensitive.
    pub fn from_bytes(line: &[u8]) -> Option<Command> {
        Command::ALL
            .into_iter()
            .find(|command| command.as_str().as_bytes() == line)
    }

    /// Whether this frame's headers are never escaped: `CONNECT`, `STOMP` and `CONNECTED`.
    ///
    /// The spec exempts `CONNECT` and `CONNECTED`; `STOMP` is `CONNECT` by another name and is
    /// sent before any version is negotiated, so it is exempt too.
    pub fn is_unescaped(self) -> bool {
        matches!(self, Command::Connect | Command::Stomp | Command::Connected)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A STOMP protocol version; the negotiated version decides header escaping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// No escaping. The version in force until a `CONNECTED` frame negotiates another.
    #[default]
    V1_0,
    /// Escapes `\\`, `\n` and `\c`.
    V1_1,
    /// Escapes `\\`, `\n`, `\c` and `\r`.
    V1_2,
}

impl Version {
    /// Every version, oldest first.
    pub const ALL: [Version; 3] = [Version::V1_0, Version::V1_1, Version::V1_2];

    /// The version as written in `accept-version` and `version` headers, e.g. `"1.2"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    /// Parses `"1.0"`, `"1.1"` or `"1.2"` (surrounding blanks ignored).
    pub fn parse(s: &str) -> Option<Version> {
        Version::ALL
            .into_iter()
            .find(|version| version.as_str() == s.trim())
    }

    /// The highest version both sides speak, given a client's `accept-version` header
    /// (comma-separated; absent means 1.0 only, per the spec). `None`: no common version.
    pub fn negotiate(accept_version: Option<&str>) -> Option<Version> {
        match accept_version {
            None => Some(Version::V1_0),
            Some(list) => list.split(',').filter_map(Version::parse).max(),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One STOMP frame: command, headers in wire order (repeats kept), body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub command: Command,
    /// Unescaped names and values, in the order they appeared; a name may repeat.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Frame {
    /// A frame with no headers and an empty body.
    pub fn new(command: Command) -> Frame {
        Frame {
            command,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// Appends a header (builder style); an existing header of the same name is kept and wins.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Frame {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Replaces the body (builder style).
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Frame {
        self.body = body.into();
        self
    }

    /// The value of the first header called `name` (STOMP 1.2: the first occurrence wins).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The values of every header called `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What [`Decoder::decode`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Frame(Frame),
    /// One EOL (`\n` or `\r\n`) between frames: a heart-beat.
    HeartBeat,
}

/// Why a frame could not be decoded. The stream cannot be resynchronized after one: send an
/// `ERROR` frame (the message is fit for its `message` header) and close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    #[error("malformed header line {0:?}: expected `name:value` with a non-empty name")]
    BadHeader(String),
    #[error("invalid content-length {0:?}: expected a non-negative decimal integer")]
    BadContentLength(String),
    #[error("frame too large: {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("frame body is not followed by a NUL byte where its content-length says it ends")]
    MissingNul,
    #[error("command or header is not valid UTF-8")]
    InvalidUtf8,
    #[error(
        "invalid escape sequence '{0}' in a header: STOMP 1.1 and 1.2 escape only \\\\, \\n, \\c \
         (and \\r in 1.2); send a backslash as \\\\"
    )]
    BadEscape(String),
    #[error("NUL byte in the command or headers (is the blank line after the headers missing?)")]
    NulInHeaders,
    #[error("a header line is longer than {limit} bytes")]
    HeaderTooLong { limit: usize },
    #[error("more than {limit} headers in one frame")]
    TooManyHeaders { limit: usize },
}

/// The longest command or header line a broker accepts (ActiveMQ's STOMP limit, 10 KiB).
pub const MAX_HEADER_LINE: usize = 10 * 1024;
/// The most headers a broker accepts in one frame (ActiveMQ's STOMP limit).
pub const MAX_HEADERS: usize = 1000;

/// Where the decoder is within the frame at the front of the buffer.
#[derive(Debug)]
enum State {
    /// Between frames: heart-beats or the start of a command line.
    Idle,
    /// Looking for the blank line that ends the headers. `line_start` is where the line being
    /// scanned begins; bytes before `scanned` contain neither LF nor NUL beyond that line;
    /// `lines` is how many lines (the command's included) ended before it.
    Head {
        line_start: usize,
        scanned: usize,
        lines: usize,
    },
    /// Headers parsed; waiting for the body and its NUL. `body_start` is the offset of the body
    /// in the buffer; without content-length, bytes in `body_start..scanned` hold no NUL.
    Body {
        command: Command,
        headers: Vec<(String, String)>,
        body_start: usize,
        content_length: Option<usize>,
        scanned: usize,
    },
}

/// An incremental STOMP frame decoder for one connection's inbound byte stream.
///
/// It remembers how far it has scanned the frame at the front of the buffer, so each byte is
/// examined once however the frame is split across reads; the buffer is consumed only when a
/// whole frame (or heart-beat) is returned. Keep feeding the same buffer, appending to it.
#[derive(Debug)]
pub struct Decoder {
    max_frame_size: usize,
    /// Whether [`MAX_HEADER_LINE`] and [`MAX_HEADERS`] apply (a broker's decoder).
    header_limits: bool,
    version: Version,
    state: State,
}

impl Decoder {
    /// A decoder for version 1.0 (no escaping) that rejects frames whose command, headers and
    /// body together exceed `max_frame_size` bytes.
    pub fn new(max_frame_size: usize) -> Decoder {
        Decoder {
            max_frame_size,
            header_limits: false,
            version: Version::V1_0,
            state: State::Idle,
        }
    }

    /// The same decoder, also refusing a command or header line longer than
    /// [`MAX_HEADER_LINE`] and a frame with more than [`MAX_HEADERS`] headers, as ActiveMQ's
    /// broker does: what a broker reads from clients. Without them, a frame within the size
    /// limit could carry millions of headers, each costing the broker far more memory and
    /// work than its bytes on the wire.
    pub fn with_header_limits(mut self) -> Decoder {
        self.header_limits = true;
        self
    }

    /// Sets the negotiated version; it applies to frames whose headers are not yet parsed.
    pub fn set_version(&mut self, v: Version) {
        self.version = v;
    }

    /// The version headers are decoded with.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The limit on a frame's size (command, headers and body; not the trailing NUL).
    pub fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }

    /// Parses one frame from the front of `buf`, consuming it. `Ok(None)`: need more bytes.
    ///
    /// Heart-beat EOLs (`\n` or `\r\n`) between frames are consumed and reported as
    /// `Ok(Some(Item::HeartBeat))`, one per EOL. A frame larger than the limit is rejected as soon
    /// as its declared content-length or the bytes buffered for it exceed the limit. After an
    /// error the decoder is reset but the buffer is left as it was: the stream is unusable.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, FrameError> {
        // Progress is kept as offsets into `buf`; if the caller shrank the buffer behind our
        // back, start the frame over rather than index past its end.
        let progress = match &self.state {
            State::Idle => 0,
            State::Head { scanned, .. } | State::Body { scanned, .. } => *scanned,
        };
        if progress > buf.len() {
            self.state = State::Idle;
        }
        let result = self.step(buf);
        if result.is_err() {
            self.state = State::Idle;
        }
        result
    }

    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, FrameError> {
        loop {
            match &mut self.state {
                State::Idle => match buf.first() {
                    None => return Ok(None),
                    Some(b'\n') => {
                        buf.advance(1);
                        return Ok(Some(Item::HeartBeat));
                    }
                    Some(b'\r') => match buf.get(1) {
                        None => return Ok(None),
                        Some(b'\n') => {
                            buf.advance(2);
                            return Ok(Some(Item::HeartBeat));
                        }
                        // A stray CR starts a command line, which will not parse.
                        Some(_) => {
                            self.state = State::Head {
                                line_start: 0,
                                scanned: 0,
                                lines: 0,
                            }
                        }
                    },
                    Some(_) => {
                        self.state = State::Head {
                            line_start: 0,
                            scanned: 0,
                            lines: 0,
                        }
                    }
                },
                State::Head {
                    line_start,
                    scanned,
                    lines,
                } => {
                    let limits = self.header_limits;
                    let Some(body_start) =
                        find_header_end(buf, line_start, scanned, lines, limits)?
                    else {
                        if buf.len() > self.max_frame_size {
                            return Err(self.too_large(buf.len()));
                        }
                        return Ok(None);
                    };
                    if body_start > self.max_frame_size {
                        return Err(self.too_large(body_start));
                    }
                    let (command, headers) = parse_head(&buf[..body_start], self.version)?;
                    let content_length = content_length(&headers, self.max_frame_size)?;
                    if let Some(length) = content_length {
                        let size = body_start.saturating_add(length);
                        if size > self.max_frame_size {
                            return Err(self.too_large(size));
                        }
                    }
                    self.state = State::Body {
                        command,
                        headers,
                        body_start,
                        content_length,
                        scanned: body_start,
                    };
                }
                State::Body {
                    body_start,
                    content_length,
                    scanned,
                    ..
                } => {
                    let body_start = *body_start;
                    let body_end = match *content_length {
                        Some(length) => {
                            // Checked against the size limit already; saturating for a
                            // limit near usize::MAX (a client may set one).
                            let body_end = body_start.saturating_add(length);
                            match buf.get(body_end) {
                                None => return Ok(None),
                                Some(0) => body_end,
                                Some(_) => return Err(FrameError::MissingNul),
                            }
                        }
                        None => match buf[*scanned..].iter().position(|&b| b == 0) {
                            Some(at) => {
                                let body_end = *scanned + at;
                                if body_end > self.max_frame_size {
                                    return Err(self.too_large(body_end));
                                }
                                body_end
                            }
                            None => {
                                *scanned = buf.len();
                                if buf.len() > self.max_frame_size {
                                    return Err(self.too_large(buf.len()));
                                }
                                return Ok(None);
                            }
                        },
                    };
                    let State::Body {
                        command, headers, ..
                    } = std::mem::replace(&mut self.state, State::Idle)
                    else {
                        unreachable!("state checked above");
                    };
                    let frame = buf.split_to(body_end + 1).freeze();
                    let body = frame.slice(body_start..body_end);
                    return Ok(Some(Item::Frame(Frame {
                        command,
                        headers,
                        body,
                    })));
                }
            }
        }
    }

    fn too_large(&self, size: usize) -> FrameError {
        FrameError::TooLarge {
            size,
            limit: self.max_frame_size,
        }
    }
}

/// Scans for the blank line ending the headers, resuming at `*scanned`; returns the offset just
/// past it (the body's start). A NUL before it is an error: the frame would never end well.
/// With `limits`, a line longer than [`MAX_HEADER_LINE`] (even before its end arrives) or more
/// than [`MAX_HEADERS`] header lines is an error too.
fn find_header_end(
    buf: &[u8],
    line_start: &mut usize,
    scanned: &mut usize,
    lines: &mut usize,
    limits: bool,
) -> Result<Option<usize>, FrameError> {
    // A line's bytes without its EOL: a CR before the LF is not counted.
    let too_long = |len: usize| {
        if limits && len > MAX_HEADER_LINE {
            return Err(FrameError::HeaderTooLong {
                limit: MAX_HEADER_LINE,
            });
        }
        Ok(())
    };
    loop {
        let Some(at) = buf[*scanned..].iter().position(|&b| b == b'\n' || b == 0) else {
            *scanned = buf.len();
            // The line's CR may still come: allow it one byte.
            too_long((buf.len() - *line_start).saturating_sub(1))?;
            return Ok(None);
        };
        let end = *scanned + at;
        if buf[end] == 0 {
            return Err(FrameError::NulInHeaders);
        }
        // The command line is never empty: leading EOLs are heart-beats.
        let line = &buf[*line_start..end];
        if *line_start > 0 && (line.is_empty() || line == b"\r") {
            return Ok(Some(end + 1));
        }
        too_long(line.strip_suffix(b"\r").unwrap_or(line).len())?;
        *lines += 1;
        if limits && *lines > MAX_HEADERS + 1 {
            return Err(FrameError::TooManyHeaders { limit: MAX_HEADERS });
        }
        *line_start = end + 1;
        *scanned = end + 1;
    }
}

/// Headers whose value names something, which must be UTF-8 (see `parse_head`).
const NAMING_HEADERS: [&str; 10] = [
    "destination",
    "id",
    "client-id",
    "login",
    "passcode",
    "activemq.subscriptionName",
    "durable-subscription-name",
    "transaction",
    "reply-to",
    "message-id",
];

/// Parses the command line and the header lines; `head` ends with the blank line.
fn parse_head(
    head: &[u8],
    version: Version,
) -> Result<(Command, Vec<(String, String)>), FrameError> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let command_line = lines.next().unwrap_or_default();
    let command = Command::from_bytes(command_line)
        .ok_or_else(|| FrameError::UnknownCommand(quote(command_line)))?;
    let escaping = Escaping::of(command, version);
    let mut headers = Vec::new();
    for line in lines.take_while(|line| !line.is_empty()) {
        // A header in another encoding than UTF-8 (a script writing Latin-1 or a Windows code
        // page, say; STOMP 1.1 and 1.2 require UTF-8) is read as ActiveMQ reads it, in any
        // version, its bad bytes replaced by U+FFFD. Not one that names something (a
        // destination, a subscription, a client id, a login): two names would become one.
        let line = match std::str::from_utf8(line) {
            Ok(line) => std::borrow::Cow::Borrowed(line),
            Err(_) => {
                let lossy = String::from_utf8_lossy(line);
                let name = lossy.split_once(':').map_or("", |(name, _)| name);
                if NAMING_HEADERS.contains(&name) {
                    return Err(FrameError::InvalidUtf8);
                }
                lossy
            }
        };
        let line = line.as_ref();
        let Some((name, value)) = line.split_once(':') else {
            return Err(FrameError::BadHeader(quote(line.as_bytes())));
        };
        // STOMP 1.0 clients often write `name: value`; ActiveMQ trims 1.0 header values (1.1
        // and 1.2 say spaces belong to the value).
        let value = match version {
            Version::V1_0 => trim_blanks(value),
            _ => value,
        };
        if name.is_empty() {
            return Err(FrameError::BadHeader(quote(line.as_bytes())));
        }
        headers.push((escaping.unescape(name)?, escaping.unescape(value)?));
    }
    Ok((command, headers))
}

fn trim_blanks(text: &str) -> &str {
    text.trim_matches(|c| c == ' ' || c == '\t')
}

/// The first `content-length` header's value, checked against the size limit.
fn content_length(headers: &[(String, String)], limit: usize) -> Result<Option<usize>, FrameError> {
    let Some((_, value)) = headers.iter().find(|(name, _)| name == CONTENT_LENGTH) else {
        return Ok(None);
    };
    let digits = trim_blanks(value);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FrameError::BadContentLength(quote(value.as_bytes())));
    }
    match digits.parse::<usize>() {
        Ok(length) => Ok(Some(length)),
        // All digits but beyond usize: certainly too large.
        Err(_) => Err(FrameError::TooLarge {
            size: usize::MAX,
            limit,
        }),
    }
}

/// Client input for an error message: lossy UTF-8, cut to [`MAX_QUOTE`] characters.
fn quote(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    match text.char_indices().nth(MAX_QUOTE) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.into_owned(),
    }
}

/// How a frame's header names and values are written on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escaping {
    /// 1.0, and `CONNECT`/`CONNECTED` in every version: raw.
    None,
    /// `\\`, `\n`, `\c`.
    V1_1,
    /// `\\`, `\n`, `\c`, `\r`.
    V1_2,
}

impl Escaping {
    fn of(command: Command, version: Version) -> Escaping {
        if command.is_unescaped() {
            return Escaping::None;
        }
        match version {
            Version::V1_0 => Escaping::None,
            Version::V1_1 => Escaping::V1_1,
            Version::V1_2 => Escaping::V1_2,
        }
    }

    fn unescape(self, raw: &str) -> Result<String, FrameError> {
        if self == Escaping::None || !raw.contains('\\') {
            return Ok(raw.to_owned());
        }
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                Some('c') => out.push(':'),
                Some('r') if self == Escaping::V1_2 => out.push('\r'),
                Some(other) => return Err(FrameError::BadEscape(format!("\\{other}"))),
                None => return Err(FrameError::BadEscape("\\".to_owned())),
            }
        }
        Ok(out)
    }

    /// Writes `text` escaped; what this encoding cannot carry becomes U+FFFD.
    fn write(self, out: &mut BytesMut, text: &str, is_name: bool) {
        let mut plain = 0;
        for (at, c) in text.char_indices() {
            let escaped: Option<&str> = match (self, c) {
                (_, '\0') => Some(REPLACEMENT),
                (Escaping::None, '\n' | '\r') => Some(REPLACEMENT),
                (Escaping::None, ':') if is_name => Some(REPLACEMENT),
                (Escaping::None, _) => None,
                (_, '\\') => Some("\\\\"),
                (_, '\n') => Some("\\n"),
                (_, ':') => Some("\\c"),
                (Escaping::V1_2, '\r') => Some("\\r"),
                (Escaping::V1_1, '\r') => Some(REPLACEMENT),
                _ => None,
            };
            if let Some(escaped) = escaped {
                out.extend_from_slice(&text.as_bytes()[plain..at]);
                out.extend_from_slice(escaped.as_bytes());
                plain = at + c.len_utf8();
            }
        }
        out.extend_from_slice(&text.as_bytes()[plain..]);
    }
}

/// Appends `frame` to `out` as `version` requires.
///
/// Header names and values are escaped for 1.1 and 1.2 (not in `CONNECT`, `STOMP` or
/// `CONNECTED` frames). Characters the encoding cannot carry are replaced by U+FFFD rather than
/// let a header break the framing: NUL always; CR in 1.1; CR and LF in 1.0 and unescaped frames,
/// and `:` in their header names.
///
/// A non-empty body gets a `content-length` header unless the frame has one; an existing
/// `content-length` is written with the body's actual length, so the output always frames
/// correctly. An empty body gets none, and neither does an `ERROR` whose body holds no NUL
/// (ActiveMQ sends its ERRORs without one, and a widely used Node client, stompit 1.0, fails
/// on an ERROR with both `content-type: text/plain` and a `content-length`).
pub fn encode(frame: &Frame, version: Version, out: &mut BytesMut) {
    let escaping = Escaping::of(frame.command, version);
    let headers_len: usize = frame
        .headers
        .iter()
        .map(|(name, value)| name.len() + value.len() + 2)
        .sum();
    out.reserve(frame.command.as_str().len() + headers_len + frame.body.len() + 32);
    out.extend_from_slice(frame.command.as_str().as_bytes());
    out.put_u8(b'\n');
    let mut has_length = false;
    for (name, value) in &frame.headers {
        escaping.write(out, name, true);
        out.put_u8(b':');
        if name == CONTENT_LENGTH {
            has_length = true;
            out.extend_from_slice(frame.body.len().to_string().as_bytes());
        } else {
            escaping.write(out, value, false);
        }
        out.put_u8(b'\n');
    }
    if !has_length && gets_a_length(frame) {
        out.extend_from_slice(CONTENT_LENGTH.as_bytes());
        out.put_u8(b':');
        out.extend_from_slice(frame.body.len().to_string().as_bytes());
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.extend_from_slice(&frame.body);
    out.put_u8(0);
}

/// Whether [`encode`] adds a `content-length` to `frame` (when it has none).
fn gets_a_length(frame: &Frame) -> bool {
    match frame.command {
        Command::Error => frame.body.contains(&0),
        _ => !frame.body.is_empty(),
    }
}

/// An `ERROR` frame: `message` header (short), `detail` as its `text/plain` body.
pub fn error_frame(message: &str, detail: &str) -> Frame {
    Frame::new(Command::Error)
        .header("message", message)
        .header("content-type", "text/plain")
        .with_body(Bytes::copy_from_slice(detail.as_bytes()))
}

/// A `RECEIPT` frame acknowledging the frame whose `receipt` header was `id`.
pub fn receipt(id: &str) -> Frame {
    Frame::new(Command::Receipt).header("receipt-id", id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMIT: usize = 64 * 1024;

    /// A decoder without a practical size limit (a client may set `usize::MAX`) given a
    /// content-length near `usize::MAX` waits for the body rather than overflowing.
    #[test]
    fn a_huge_content_length_under_an_unbounded_limit_does_not_overflow() {
        let mut decoder = Decoder::new(usize::MAX);
        let frame = format!("MESSAGE\ncontent-length:{}\n\nabc", usize::MAX);
        let mut buf = BytesMut::from(frame.as_bytes());
        assert_eq!(decoder.decode(&mut buf), Ok(None));
    }

    /// A broker's decoder takes ActiveMQ's limits: 1000 headers of 10 KiB lines at most, the
    /// command line included; past them the frame is refused however small it is, and a long
    /// line as soon as it is longer than the limit, before its end arrives. A client's decoder
    /// (what the broker sends) has no such limits.
    #[test]
    fn a_brokers_decoder_refuses_too_many_or_too_long_header_lines() {
        // A SEND with `headers` headers (2 or more), the last one `long:` and `value` x's.
        let frame = |headers: usize, value: usize| {
            let mut bytes = b"SEND\r\ndestination:/queue/q\r\n".to_vec();
            for i in 2..headers {
                bytes.extend_from_slice(format!("h{i}:v\r\n").as_bytes());
            }
            bytes.extend_from_slice(b"long:");
            bytes.extend(std::iter::repeat_n(b'x', value));
            bytes.extend_from_slice(b"\r\n\r\nbody\0");
            bytes
        };
        let decode = |bytes: &[u8], limits: bool| {
            let mut decoder = Decoder::new(1 << 20);
            if limits {
                decoder = decoder.with_header_limits();
            }
            decoder.set_version(Version::V1_2);
            decoder.decode(&mut BytesMut::from(bytes))
        };
        // "long:" and the value make a line of exactly MAX_HEADER_LINE bytes (the CR apart).
        let longest = MAX_HEADER_LINE - "long:".len();
        let Ok(Some(Item::Frame(f))) = decode(&frame(MAX_HEADERS, longest), true) else {
            panic!("a frame at both limits is refused");
        };
        assert_eq!(f.headers.len(), MAX_HEADERS);
        assert_eq!(
            decode(&frame(MAX_HEADERS + 1, 1), true),
            Err(FrameError::TooManyHeaders { limit: MAX_HEADERS })
        );
        let too_long = Err(FrameError::HeaderTooLong {
            limit: MAX_HEADER_LINE,
        });
        assert_eq!(decode(&frame(1, longest + 1), true), too_long);
        // The start of a line already too long, its end not yet read.
        let partial = &frame(1, longest + 2)[..30 + MAX_HEADER_LINE];
        assert_eq!(decode(partial, true), too_long);
        assert_eq!(
            decode(&frame(1, longest)[..30 + MAX_HEADER_LINE], true),
            Ok(None)
        );
        let mut command = vec![b'S'; MAX_HEADER_LINE + 2];
        command.push(b'\n');
        assert_eq!(decode(&command, true), too_long);
        // Without the limits, the same frames decode.
        for bytes in [frame(MAX_HEADERS + 1, 1), frame(1, 4 * MAX_HEADER_LINE)] {
            assert!(matches!(decode(&bytes, false), Ok(Some(Item::Frame(_)))));
        }
    }

    /// Decodes everything `bytes` holds; the buffer must be left empty.
    fn decode_all(bytes: &[u8], version: Version) -> Result<Vec<Item>, FrameError> {
        let mut decoder = Decoder::new(LIMIT);
        decoder.set_version(version);
        let mut buf = BytesMut::from(bytes);
        let mut items = Vec::new();
        while let Some(item) = decoder.decode(&mut buf)? {
            items.push(item);
        }
        assert!(buf.is_empty(), "left over: {:?}", buf);
        Ok(items)
    }

    fn decode_one(bytes: &[u8], version: Version) -> Result<Frame, FrameError> {
        let mut items = decode_all(bytes, version)?;
        assert_eq!(items.len(), 1, "{items:?}");
        match items.pop() {
            Some(Item::Frame(frame)) => Ok(frame),
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The first error decoding `bytes` (which must fail before running out of input).
    fn decode_err(bytes: &[u8], version: Version, limit: usize) -> FrameError {
        let mut decoder = Decoder::new(limit);
        decoder.set_version(version);
        let mut buf = BytesMut::from(bytes);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("needs more bytes, expected an error"),
                Err(err) => return err,
            }
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn encoded(frame: &Frame, version: Version) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(frame, version, &mut out);
        out.to_vec()
    }

    #[test]
    fn connect_1_0() {
        let frame =
            decode_one(b"CONNECT\nlogin:guest\npasscode:guest\n\n\0", Version::V1_0).unwrap();
        assert_eq!(frame.command, Command::Connect);
        assert_eq!(
            frame.headers,
            headers(&[("login", "guest"), ("passcode", "guest")])
        );
        assert!(frame.body.is_empty());
        assert_eq!(frame.get("accept-version"), None);
        assert_eq!(
            Version::negotiate(frame.get("accept-version")),
            Some(Version::V1_0)
        );
    }

    #[test]
    fn connect_1_2() {
        let bytes = b"CONNECT\naccept-version:1.0,1.1,1.2\nhost:broker\nheart-beat:10000,0\n\n\0";
        let frame = decode_one(bytes, Version::V1_0).unwrap();
        assert_eq!(frame.command, Command::Connect);
        assert_eq!(frame.get("host"), Some("broker"));
        assert_eq!(frame.get("heart-beat"), Some("10000,0"));
        assert_eq!(
            Version::negotiate(frame.get("accept-version")),
            Some(Version::V1_2)
        );
        assert_eq!(Version::negotiate(Some("1.1, 2.0")), Some(Version::V1_1));
        assert_eq!(Version::negotiate(Some("2.0")), None);
        let stomp = decode_one(b"STOMP\naccept-version:1.2\nhost:b\n\n\0", Version::V1_2).unwrap();
        assert_eq!(stomp.command, Command::Stomp);
    }

    #[test]
    fn send_with_content_length_containing_nuls() {
        let bytes = b"SEND\ndestination:/queue/a\ncontent-length:5\n\nab\0\0c\0";
        let frame = decode_one(bytes, Version::V1_2).unwrap();
        assert_eq!(frame.command, Command::Send);
        assert_eq!(frame.get("destination"), Some("/queue/a"));
        assert_eq!(frame.get(CONTENT_LENGTH), Some("5"));
        assert_eq!(&frame.body[..], b"ab\0\0c");
        assert_eq!(encoded(&frame, Version::V1_2), bytes);
    }

    #[test]
    fn send_without_content_length() {
        let bytes = b"SEND\ndestination:/queue/a\n\nhello world\0";
        let frame = decode_one(bytes, Version::V1_0).unwrap();
        assert_eq!(&frame.body[..], b"hello world");
        assert_eq!(frame.get(CONTENT_LENGTH), None);
        // Encoding adds the content-length, as ActiveMQ does.
        assert_eq!(
            encoded(&frame, Version::V1_0),
            b"SEND\ndestination:/queue/a\ncontent-length:11\n\nhello world\0"
        );
        // No body, no content-length.
        assert_eq!(
            encoded(&Frame::new(Command::Disconnect), Version::V1_2),
            b"DISCONNECT\n\n\0"
        );
    }

    #[test]
    fn content_length_zero() {
        let frame = decode_one(b"SEND\ncontent-length:0\n\n\0", Version::V1_2).unwrap();
        assert!(frame.body.is_empty());
        assert_eq!(
            encoded(&frame, Version::V1_2),
            b"SEND\ncontent-length:0\n\n\0"
        );
    }

    #[test]
    fn crlf_line_endings() {
        let bytes = b"SEND\r\ndestination:/queue/a\r\nreceipt:7\r\n\r\nbody\0";
        for version in Version::ALL {
            let frame = decode_one(bytes, version).unwrap();
            assert_eq!(
                frame.headers,
                headers(&[("destination", "/queue/a"), ("receipt", "7")])
            );
            assert_eq!(&frame.body[..], b"body");
        }
        // Mixed endings.
        let frame = decode_one(b"SEND\r\na:1\nb:2\r\n\nx\0", Version::V1_2).unwrap();
        assert_eq!(frame.headers, headers(&[("a", "1"), ("b", "2")]));
        // 1.0: a trailing CR is tolerated on the command line too.
        let frame = decode_one(b"DISCONNECT\r\n\r\n\0", Version::V1_0).unwrap();
        assert_eq!(frame.command, Command::Disconnect);
    }

    #[test]
    fn heart_beats_between_frames() {
        let bytes = b"\n\r\nSEND\ndestination:/q\n\nx\0\n\nBEGIN\ntransaction:t\n\n\0\r\n";
        let items = decode_all(bytes, Version::V1_2).unwrap();
        assert_eq!(items.len(), 7, "{items:?}");
        assert_eq!(items[0], Item::HeartBeat);
        assert_eq!(items[1], Item::HeartBeat);
        assert!(matches!(&items[2], Item::Frame(f) if f.command == Command::Send));
        assert_eq!(items[3], Item::HeartBeat);
        assert_eq!(items[4], Item::HeartBeat);
        assert!(matches!(&items[5], Item::Frame(f) if f.get("transaction") == Some("t")));
        assert_eq!(items[6], Item::HeartBeat);
    }

    #[test]
    fn lone_cr_waits_for_lf() {
        let mut decoder = Decoder::new(LIMIT);
        let mut buf = BytesMut::from(&b"\r"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        buf.extend_from_slice(b"\n");
        assert_eq!(decoder.decode(&mut buf), Ok(Some(Item::HeartBeat)));
        assert!(buf.is_empty());
        assert_eq!(decoder.decode(&mut buf), Ok(None));
    }

    #[test]
    fn escaping_round_trip_1_2() {
        let frame = Frame::new(Command::Send)
            .header("weird:name", "a:b\\c\nd\re")
            .header("destination", "/queue/a");
        let bytes = encoded(&frame, Version::V1_2);
        assert_eq!(
            bytes,
            b"SEND\nweird\\cname:a\\cb\\\\c\\nd\\re\ndestination:/queue/a\n\n\0"
        );
        assert_eq!(decode_one(&bytes, Version::V1_2).unwrap(), frame);
    }

    #[test]
    fn escaping_1_1_has_no_cr_escape() {
        let frame = Frame::new(Command::Message).header("k", "a:b\\\n");
        let bytes = encoded(&frame, Version::V1_1);
        assert_eq!(bytes, b"MESSAGE\nk:a\\cb\\\\\\n\n\n\0");
        assert_eq!(decode_one(&bytes, Version::V1_1).unwrap(), frame);
        assert_eq!(
            decode_err(b"MESSAGE\nk:a\\rb\n\n\0", Version::V1_1, LIMIT),
            FrameError::BadEscape("\\r".into())
        );
        // Unrepresentable in 1.1: CR.
        let frame = Frame::new(Command::Message).header("k", "a\r");
        assert_eq!(
            encoded(&frame, Version::V1_1),
            "MESSAGE\nk:a\u{FFFD}\n\n\0".as_bytes()
        );
    }

    #[test]
    fn no_escaping_on_connect_and_in_1_0() {
        // CONNECT is never unescaped, even in 1.2: backslashes stay as they are.
        let bytes = b"CONNECT\npasscode:a\\cb\\x\nhost:h\n\n\0";
        let frame = decode_one(bytes, Version::V1_2).unwrap();
        assert_eq!(frame.get("passcode"), Some("a\\cb\\x"));
        assert_eq!(encoded(&frame, Version::V1_2), bytes);
        let connected = Frame::new(Command::Connected).header("server", "ferromq\\1:0");
        let bytes = encoded(&connected, Version::V1_2);
        assert_eq!(bytes, b"CONNECTED\nserver:ferromq\\1:0\n\n\0");
        assert_eq!(decode_one(&bytes, Version::V1_2).unwrap(), connected);
        // 1.0: no escaping at all.
        let frame = decode_one(b"SEND\nk:a\\c\\q:x\n\n\0", Version::V1_0).unwrap();
        assert_eq!(frame.get("k"), Some("a\\c\\q:x"));
        // What raw text cannot carry is replaced, never allowed to break the framing.
        let frame = Frame::new(Command::Message)
            .header("a:b", "x\ny\rz\0")
            .with_body(&b"!"[..]);
        let bytes = encoded(&frame, Version::V1_0);
        assert_eq!(
            bytes,
            "MESSAGE\na\u{FFFD}b:x\u{FFFD}y\u{FFFD}z\u{FFFD}\ncontent-length:1\n\n!\0".as_bytes()
        );
        assert_eq!(decode_all(&bytes, Version::V1_0).unwrap().len(), 1);
    }

    #[test]
    fn bad_escapes() {
        for (bytes, escape) in [
            (&b"SEND\nk:a\\t\n\n\0"[..], "\\t"),
            (b"SEND\nk:a\\\n\n\0", "\\"),
            (b"SEND\nk\\x:a\n\n\0", "\\x"),
        ] {
            assert_eq!(
                decode_err(bytes, Version::V1_2, LIMIT),
                FrameError::BadEscape(escape.into())
            );
        }
        // Shown as sent, not quoted with its backslash doubled.
        let shown = decode_err(b"SEND\nk:a\\q\n\n\0", Version::V1_2, LIMIT).to_string();
        assert!(
            shown.starts_with("invalid escape sequence '\\q' in a header"),
            "{shown}"
        );
    }

    #[test]
    fn repeated_headers() {
        let bytes = b"MESSAGE\nfoo:World\nfoo:Hello\nbar:1\n\n\0";
        let frame = decode_one(bytes, Version::V1_2).unwrap();
        assert_eq!(frame.get("foo"), Some("World"));
        assert_eq!(frame.get_all("foo").collect::<Vec<_>>(), ["World", "Hello"]);
        assert_eq!(
            frame.headers,
            headers(&[("foo", "World"), ("foo", "Hello"), ("bar", "1")])
        );
        assert_eq!(encoded(&frame, Version::V1_2), bytes);
        // The first content-length decides.
        let frame = decode_one(
            b"SEND\ncontent-length:2\ncontent-length:9\n\na\0\0",
            Version::V1_2,
        )
        .unwrap();
        assert_eq!(&frame.body[..], b"a\0");
    }

    #[test]
    fn empty_and_colon_values() {
        let frame = decode_one(b"SEND\nk:\nurl:http://x:1/\n\n\0", Version::V1_0).unwrap();
        assert_eq!(frame.headers, headers(&[("k", ""), ("url", "http://x:1/")]));
    }

    /// Several frames and heart-beats, exercising every path of the decoder.
    fn stream() -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"\r\n\nCONNECT\r\naccept-version:1.2\r\nhost:h\r\n\r\n\0\n");
        bytes.extend_from_slice(b"SEND\ndestination:/q\ncontent-length:4\n\n\0\n\0x\0");
        bytes.extend_from_slice(b"SEND\ndestination:/q\nk:a\\cb\\n\n\nno length\0\r\n");
        bytes.extend_from_slice(b"DISCONNECT\nreceipt:9\n\n\0");
        bytes
    }

    #[test]
    fn split_at_every_byte_boundary() {
        let bytes = stream();
        let whole = decode_all(&bytes, Version::V1_2).unwrap();
        assert_eq!(whole.len(), 8, "{whole:?}");
        for split in 0..=bytes.len() {
            let mut decoder = Decoder::new(LIMIT);
            decoder.set_version(Version::V1_2);
            let mut buf = BytesMut::from(&bytes[..split]);
            let mut items = Vec::new();
            while let Some(item) = decoder.decode(&mut buf).unwrap() {
                items.push(item);
            }
            buf.extend_from_slice(&bytes[split..]);
            while let Some(item) = decoder.decode(&mut buf).unwrap() {
                items.push(item);
            }
            assert!(buf.is_empty());
            assert_eq!(items, whole, "split at {split}");
        }
        // One byte at a time.
        let mut decoder = Decoder::new(LIMIT);
        decoder.set_version(Version::V1_2);
        let mut buf = BytesMut::new();
        let mut items = Vec::new();
        for &b in &bytes {
            buf.put_u8(b);
            while let Some(item) = decoder.decode(&mut buf).unwrap() {
                items.push(item);
            }
        }
        assert_eq!(items, whole);
    }

    #[test]
    fn unknown_command() {
        for bytes in [
            &b"FOO\n\n\0"[..],
            b"send\n\n\0",
            b"SEND \n\n\0",
            b"\rSEND\n\n\0",
            b"\xff\xfe\n\n\0",
        ] {
            assert!(
                matches!(
                    decode_err(bytes, Version::V1_2, LIMIT),
                    FrameError::UnknownCommand(_)
                ),
                "{bytes:?}"
            );
        }
        assert_eq!(
            decode_err(b"FOO\n\n\0", Version::V1_2, LIMIT).to_string(),
            "unknown command \"FOO\""
        );
    }

    #[test]
    fn bad_header_lines() {
        assert_eq!(
            decode_err(b"SEND\ndestination\n\n\0", Version::V1_2, LIMIT),
            FrameError::BadHeader("destination".into())
        );
        assert_eq!(
            decode_err(b"SEND\n:value\n\n\0", Version::V1_0, LIMIT),
            FrameError::BadHeader(":value".into())
        );
        assert_eq!(
            decode_err(b"SEND\ndestination:\xff\n\n\0", Version::V1_1, LIMIT),
            FrameError::InvalidUtf8
        );
        // A frame without the blank line runs into its NUL.
        assert_eq!(
            decode_err(b"SEND\ndestination:/q\n\0", Version::V1_0, LIMIT),
            FrameError::NulInHeaders
        );
    }

    /// A header in another encoding than UTF-8 (a Latin-1 script's `café`) is read as ActiveMQ
    /// reads it, in every version, its bad bytes replaced; one that names something is refused.
    #[test]
    fn a_header_that_is_not_utf8_is_read_lossily() {
        for version in [Version::V1_0, Version::V1_1, Version::V1_2] {
            let frame =
                decode_one(b"SEND\ndestination:/queue/q\nname:caf\xe9\n\nx\0", version).unwrap();
            assert_eq!(frame.get("name"), Some("caf\u{FFFD}"));
            for naming in [
                &b"CONNECT\nclient-id:Jos\xe9\n\n\0"[..],
                b"SEND\ndestination:/queue/caf\xe9\n\nx\0",
                b"SUBSCRIBE\ndestination:/topic/t\nactivemq.subscriptionName:caf\xe9\n\n\0",
            ] {
                assert_eq!(decode_err(naming, version, LIMIT), FrameError::InvalidUtf8);
            }
        }
    }

    #[test]
    fn bad_content_length() {
        for value in ["abc", "-1", "", "1.5", "+3", "0x10", "1 2"] {
            let bytes = format!("SEND\ncontent-length:{value}\n\nbody\0");
            assert_eq!(
                decode_err(bytes.as_bytes(), Version::V1_2, LIMIT),
                FrameError::BadContentLength(value.into()),
                "{value:?}"
            );
        }
        let err = decode_err(b"SEND\ncontent-length:-5\n\n\0", Version::V1_2, LIMIT);
        assert_eq!(
            err.to_string(),
            "invalid content-length \"-5\": expected a non-negative decimal integer"
        );
        // Overflowing usize is simply too large.
        let bytes = b"SEND\ncontent-length:99999999999999999999999999\n\n";
        assert!(matches!(
            decode_err(bytes, Version::V1_2, LIMIT),
            FrameError::TooLarge { .. }
        ));
    }

    #[test]
    fn content_length_too_large_rejected_before_body() {
        // Only the headers have arrived: the declared length alone is enough to refuse.
        let head = b"SEND\ndestination:/q\ncontent-length:1000\n\n";
        let err = decode_err(head, Version::V1_2, 100);
        assert_eq!(
            err,
            FrameError::TooLarge {
                size: head.len() + 1000,
                limit: 100
            }
        );
        // Exactly at the limit is fine.
        let mut bytes = format!("SEND\ncontent-length:{}\n\n", 10).into_bytes();
        let limit = bytes.len() + 10;
        bytes.extend_from_slice(&[b'x'; 10]);
        bytes.push(0);
        let mut decoder = Decoder::new(limit);
        let mut buf = BytesMut::from(&bytes[..]);
        assert!(matches!(decoder.decode(&mut buf), Ok(Some(Item::Frame(_)))));
        // One more byte is not.
        let mut decoder = Decoder::new(limit - 1);
        let mut buf = BytesMut::from(&bytes[..]);
        assert!(matches!(
            decoder.decode(&mut buf),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn buffered_bytes_limited_without_content_length() {
        let limit = 100;
        let mut decoder = Decoder::new(limit);
        let mut buf = BytesMut::from(&b"SEND\n\n"[..]);
        // Feed body bytes with no NUL: refused as soon as the buffer passes the limit.
        loop {
            buf.extend_from_slice(b"0123456789");
            match decoder.decode(&mut buf) {
                Ok(None) => assert!(buf.len() <= limit),
                Err(FrameError::TooLarge { size, limit: l }) => {
                    assert_eq!(l, limit);
                    assert!(size > limit && size <= limit + 10);
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        // Endless headers likewise.
        let mut decoder = Decoder::new(limit);
        let mut buf = BytesMut::from(&b"SEND\n"[..]);
        loop {
            buf.extend_from_slice(b"k:vvvvvvv\n");
            match decoder.decode(&mut buf) {
                Ok(None) => assert!(buf.len() <= limit),
                Err(FrameError::TooLarge { .. }) => break,
                other => panic!("{other:?}"),
            }
        }
        // A complete frame whose NUL lies past the limit.
        let err = decode_err(
            &[&b"SEND\n\n"[..], &[b'x'; 200], b"\0"].concat(),
            Version::V1_0,
            100,
        );
        assert_eq!(
            err,
            FrameError::TooLarge {
                size: 206,
                limit: 100
            }
        );
    }

    #[test]
    fn missing_nul_after_content_length_body() {
        assert_eq!(
            decode_err(b"SEND\ncontent-length:3\n\nabcd\0", Version::V1_2, LIMIT),
            FrameError::MissingNul
        );
        // Not an error until the byte after the body has arrived.
        let mut decoder = Decoder::new(LIMIT);
        let mut buf = BytesMut::from(&b"SEND\ncontent-length:3\n\nabc"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        buf.put_u8(b'\n');
        assert_eq!(decoder.decode(&mut buf), Err(FrameError::MissingNul));
    }

    #[test]
    fn shrunk_buffer_does_not_panic() {
        let mut decoder = Decoder::new(LIMIT);
        let mut buf = BytesMut::from(&b"SEND\nk:v\n\nbody"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        buf.clear();
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        buf.extend_from_slice(b"BEGIN\n\n\0");
        let Ok(Some(Item::Frame(frame))) = decoder.decode(&mut buf) else {
            panic!("expected a frame");
        };
        assert_eq!(frame.command, Command::Begin);
    }

    #[test]
    fn large_body_is_not_rescanned() {
        // A body arriving in many small pieces: the decoder resumes where it stopped, and the
        // returned body shares the buffer's memory (no copy).
        let mut decoder = Decoder::new(1 << 20);
        let mut buf = BytesMut::from(&b"SEND\n\n"[..]);
        for _ in 0..1000 {
            buf.extend_from_slice(&[b'x'; 500]);
            assert_eq!(decoder.decode(&mut buf), Ok(None));
        }
        buf.put_u8(0);
        let Ok(Some(Item::Frame(frame))) = decoder.decode(&mut buf) else {
            panic!("expected a frame");
        };
        assert_eq!(frame.body.len(), 500_000);
    }

    #[test]
    fn helpers() {
        let error = error_frame("bad frame", "details\nhere");
        assert_eq!(error.command, Command::Error);
        assert_eq!(error.get("message"), Some("bad frame"));
        assert_eq!(error.get("content-type"), Some("text/plain"));
        assert_eq!(&error.body[..], b"details\nhere");
        // As ActiveMQ's: no content-length on an ERROR, unless its body holds a NUL.
        assert_eq!(
            encoded(&error, Version::V1_2),
            b"ERROR\nmessage:bad frame\ncontent-type:text/plain\n\ndetails\nhere\0"
        );
        let with_nul = error_frame("bad frame", "a\0b");
        assert_eq!(
            encoded(&with_nul, Version::V1_2),
            b"ERROR\nmessage:bad frame\ncontent-type:text/plain\ncontent-length:3\n\na\0b\0"
        );
        let receipt = receipt("77");
        assert_eq!(receipt.command, Command::Receipt);
        assert_eq!(receipt.get("receipt-id"), Some("77"));
        assert_eq!(
            encoded(&receipt, Version::V1_2),
            b"RECEIPT\nreceipt-id:77\n\n\0"
        );
        for command in Command::ALL {
            assert_eq!(
                Command::from_bytes(command.as_str().as_bytes()),
                Some(command)
            );
        }
        // Error messages are single-line, fit for a header.
        let err = decode_err(b"SEND\nx\ry\n\n\0", Version::V1_2, LIMIT);
        assert!(!err.to_string().contains('\n'));
    }

    /// Characters that `escaping` can carry in a header name (`name`) or value.
    fn alphabet(command: Command, version: Version, name: bool) -> Vec<char> {
        let mut chars: Vec<char> = "ab-_ 9/é€".chars().collect();
        match Escaping::of(command, version) {
            Escaping::None => {
                chars.push('\\');
                if !name {
                    chars.push(':');
                }
            }
            Escaping::V1_1 => chars.extend([':', '\\', '\n']),
            Escaping::V1_2 => chars.extend([':', '\\', '\n', '\r']),
        }
        chars
    }

    fn text(chars: Vec<char>, min: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(chars), min..8)
            .prop_map(|chars| chars.into_iter().collect())
    }

    fn frame_and_version() -> impl Strategy<Value = (Frame, Version)> {
        (
            prop::sample::select(Command::ALL.to_vec()),
            prop::sample::select(Version::ALL.to_vec()),
        )
            .prop_flat_map(|(command, version)| {
                let header = (
                    text(alphabet(command, version, true), 1),
                    text(alphabet(command, version, false), 0),
                );
                (
                    prop::collection::vec(header, 0..6),
                    prop::collection::vec(any::<u8>(), 0..64),
                )
                    .prop_map(move |(headers, body)| {
                        let frame = Frame {
                            command,
                            headers,
                            body: body.into(),
                        };
                        (frame, version)
                    })
            })
    }

    /// Byte strings built from STOMP-ish pieces, to reach deep into the decoder.
    fn stompish() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop::sample::select(vec![
            &b"SEND"[..],
            b"CONNECT",
            b"MESSAGE",
            b"\n",
            b"\r\n",
            b"\r",
            b"\0",
            b":",
            b"\\",
            b"\\c",
            b"\\r",
            b"content-length:",
            b"content-length:3",
            b"0",
            b"5",
            b"99999999999999999999999",
            b"-",
            b"k",
            b"\xff",
            b"\xc3",
        ]);
        prop::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
    }

    fn decode_without_panic(bytes: &[u8], version: Version, limit: usize, chunk: usize) {
        let mut decoder = Decoder::new(limit);
        decoder.set_version(version);
        let mut buf = BytesMut::new();
        for piece in bytes.chunks(chunk.max(1)) {
            buf.extend_from_slice(piece);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(err) => {
                        let _ = err.to_string();
                        return;
                    }
                }
            }
        }
    }

    #[test]
    fn stomp_1_0_header_values_are_trimmed_as_activemq_trims_them() {
        let frame = decode_one(b"SEND\ndestination: /queue/x \n\n\0", Version::V1_0).unwrap();
        assert_eq!(frame.get("destination"), Some("/queue/x"));
        let frame = decode_one(b"SEND\ndestination: /queue/x \n\n\0", Version::V1_2).unwrap();
        assert_eq!(frame.get("destination"), Some(" /queue/x "));
    }

    proptest! {
        #[test]
        fn round_trip((frame, version) in frame_and_version()) {
            let bytes = encoded(&frame, version);
            let decoded = decode_one(&bytes, version).unwrap();
            let mut expected = frame.clone();
            if version == Version::V1_0 {
                // 1.0 has no escapes: blanks around a value are the client's padding.
                for (_, value) in &mut expected.headers {
                    *value = trim_blanks(value).to_owned();
                }
            }
            if gets_a_length(&frame) {
                expected
                    .headers
                    .push((CONTENT_LENGTH.to_owned(), frame.body.len().to_string()));
            }
            prop_assert_eq!(decoded, expected);
        }

        #[test]
        fn random_bytes_never_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..512),
            version in prop::sample::select(Version::ALL.to_vec()),
            limit in 0usize..600,
            chunk in 1usize..64,
        ) {
            decode_without_panic(&bytes, version, limit, chunk);
        }

        #[test]
        fn stompish_bytes_never_panic(
            bytes in stompish(),
            version in prop::sample::select(Version::ALL.to_vec()),
            limit in 0usize..300,
            chunk in 1usize..16,
        ) {
            decode_without_panic(&bytes, version, limit, chunk);
        }

        #[test]
        fn encode_always_frames(
            (frame, version) in frame_and_version(),
            name in "\\PC{0,6}",
            value in "(\\PC|[\0\r\n:\\\\]){0,8}",
        ) {
            // Arbitrary text in any header never breaks the framing: one frame comes back.
            let name = if name.is_empty() { "x".to_owned() } else { name };
            let frame = frame.header(name, value);
            let bytes = encoded(&frame, version);
            let decoded = decode_one(&bytes, version).unwrap();
            prop_assert_eq!(decoded.headers.len(), frame.headers.len() + usize::from(gets_a_length(&frame)));
            prop_assert_eq!(decoded.body, frame.body);
        }
    }
}
