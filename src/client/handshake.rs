//! Opening one STOMP connection: TCP connect, CONNECT, CONNECTED (or ERROR), and the
//! heart-beat periods the two sides agree on.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::url::BrokerAddress;
use super::HeartBeat;
use crate::protocol::stomp::frame::{encode, Command, Decoder, Frame, Item, Version};

/// The initial capacity of the read buffer.
const READ_BUFFER: usize = 64 * 1024;

/// Heart-beat periods in force on one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Heartbeats {
    /// Send an EOL when we have written nothing for this long.
    pub(crate) send: Option<Duration>,
    /// The broker promised to write at least this often.
    pub(crate) receive: Option<Duration>,
}

/// The STOMP heart-beat rule: each direction is on only if both sides want it, at the slower
/// of the two periods. `theirs` is the CONNECTED `heart-beat` header (`sx,sy` in ms).
pub(crate) fn negotiate_heartbeat(ours: HeartBeat, theirs: Option<&str>) -> Heartbeats {
    let mut parts = theirs
        .unwrap_or("0,0")
        .split(',')
        .map(|p| p.trim().parse::<u64>().unwrap_or(0));
    let (their_send, their_receive) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    let period = |ours: Duration, theirs: u64| {
        (!ours.is_zero() && theirs > 0).then(|| ours.max(Duration::from_millis(theirs)))
    };
    Heartbeats {
        send: period(ours.send, their_receive),
        receive: period(ours.receive, their_send),
    }
}

/// Why one attempt to connect to one broker failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttemptError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("refused the connection: {0}")]
    Refused(String),
    #[error("{0}")]
    Protocol(String),
    #[error("closed the connection before answering CONNECT")]
    Closed,
    #[error("no CONNECTED within {} ms", .0.as_millis())]
    Timeout(Duration),
}

/// A connected, handshaken STOMP connection.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) reader: OwnedReadHalf,
    pub(crate) writer: OwnedWriteHalf,
    /// Set to the negotiated version.
    pub(crate) decoder: Decoder,
    /// Bytes read after CONNECTED.
    pub(crate) input: BytesMut,
    pub(crate) version: Version,
    pub(crate) heartbeat: Heartbeats,
    pub(crate) address: BrokerAddress,
}

/// The text of an ERROR frame: its `message` header, else the start of its body.
pub(crate) fn error_text(frame: &Frame) -> String {
    match frame.get("message") {
        Some(message) if !message.is_empty() => message.to_string(),
        _ => {
            let body = String::from_utf8_lossy(&frame.body);
            let body = body.trim();
            if body.is_empty() {
                "(ERROR without a message)".to_string()
            } else {
                body.chars().take(200).collect()
            }
        }
    }
}

/// Connects to `address`, sends `connect` and waits for CONNECTED, all within `timeout`.
pub(crate) async fn handshake(
    address: BrokerAddress,
    connect: Frame,
    heartbeat: HeartBeat,
    timeout: Duration,
    max_frame_size: usize,
) -> Result<Link, AttemptError> {
    let attempt = async {
        let stream = TcpStream::connect((address.host.as_str(), address.port)).await?;
        // Frames are written whole; waiting to coalesce them only adds latency.
        let _ = stream.set_nodelay(true);
        let (mut reader, mut writer) = stream.into_split();
        let mut out = BytesMut::new();
        encode(&connect, Version::V1_0, &mut out);
        writer.write_all(&out).await?;
        let mut decoder = Decoder::new(max_frame_size);
        let mut input = BytesMut::with_capacity(READ_BUFFER);
        let answer = loop {
            match decoder.decode(&mut input) {
                Ok(Some(Item::Frame(frame))) => break frame,
                Ok(Some(Item::HeartBeat)) => {}
                Ok(None) => {
                    if reader.read_buf(&mut input).await? == 0 {
                        return Err(AttemptError::Closed);
                    }
                }
                Err(e) => {
                    return Err(AttemptError::Protocol(format!(
                        "undecodable answer to CONNECT: {e}"
                    )))
                }
            }
        };
        match answer.command {
            Command::Connected => {}
            Command::Error => return Err(AttemptError::Refused(error_text(&answer))),
            other => {
                return Err(AttemptError::Protocol(format!(
                    "answered CONNECT with {other} instead of CONNECTED"
                )))
            }
        }
        // No `version` header: a 1.0 broker.
        let version = answer
            .get("version")
            .and_then(Version::parse)
            .unwrap_or(Version::V1_0);
        decoder.set_version(version);
        Ok(Link {
            reader,
            writer,
            decoder,
            input,
            version,
            heartbeat: negotiate_heartbeat(heartbeat, answer.get("heart-beat")),
            address: address.clone(),
        })
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(AttemptError::Timeout(timeout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn heartbeat_negotiation() {
        let off = HeartBeat::default();
        assert_eq!(
            negotiate_heartbeat(off, Some("1000,1000")),
            Heartbeats::default()
        );
        let ours = HeartBeat {
            send: ms(500),
            receive: ms(2000),
        };
        assert_eq!(
            negotiate_heartbeat(ours, Some("1000,3000")),
            Heartbeats {
                send: Some(ms(3000)),
                receive: Some(ms(2000))
            }
        );
        assert_eq!(
            negotiate_heartbeat(ours, Some("0,100")),
            Heartbeats {
                send: Some(ms(500)),
                receive: None
            }
        );
        assert_eq!(negotiate_heartbeat(ours, None), Heartbeats::default());
        assert_eq!(negotiate_heartbeat(ours, Some("x")), Heartbeats::default());
    }

    #[test]
    fn error_text_prefers_the_message_header() {
        let frame = Frame::new(Command::Error)
            .header("message", "no quorum")
            .with_body("details");
        assert_eq!(error_text(&frame), "no quorum");
        let frame = Frame::new(Command::Error).with_body(" only a body \n");
        assert_eq!(error_text(&frame), "only a body");
        assert_eq!(
            error_text(&Frame::new(Command::Error)),
            "(ERROR without a message)"
        );
    }
}
