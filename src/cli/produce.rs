//! `ferromq produce`: send messages, each confirmed by a RECEIPT, with a bounded window of
//! sends in flight. Bodies are numbered filler of `--size` bytes, one `--message` text, or the
//! lines of standard input (`--stdin`: one message per line until end of input, for shipping a
//! log file's lines).

use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Args;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::time::Instant;

use super::report::Rate;
use super::{duration_arg, size_arg, ConnectArgs};
use crate::client::{stomp_destination, ClientError, SendOptions};

#[derive(Debug, Args)]
pub(crate) struct ProduceArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Destination: queue://NAME, topic://NAME, /queue/NAME or /topic/NAME.
    #[arg(long, short = 'd', value_name = "DESTINATION")]
    destination: String,
    /// How many messages to send.
    #[arg(long, short = 'n', default_value_t = 1000, value_name = "N")]
    count: u64,
    /// Body size (e.g. 1024, 4KiB): the message number, then 'x' up to the size.
    #[arg(long, short = 's', default_value = "1024", value_parser = size_arg, value_name = "BYTES")]
    size: usize,
    /// Send this text as every message's body (instead of numbered filler of --size bytes).
    #[arg(long, short = 'm', value_name = "TEXT", conflicts_with_all = ["size", "stdin"])]
    message: Option<String>,
    /// Send each line of standard input as one message (without its line end), until the end
    /// of input: `tail -F app.log | ferromq produce -d queue://logs --stdin --persistent`.
    #[arg(long, conflicts_with_all = ["size", "count"])]
    stdin: bool,
    /// A header on every message, NAME=VALUE; repeatable. Headers other than STOMP's own are
    /// JMS properties for selectors and OpenWire consumers (`--header region=eu`); ActiveMQ's
    /// are honoured (`priority=9`, `JMSXGroupID=order-7`, `AMQ_SCHEDULED_DELAY=60000`,
    /// `type=...`, `correlation-id=...`, `reply-to=/queue/answers`).
    #[arg(long = "header", short = 'H', value_name = "NAME=VALUE", value_parser = header_arg)]
    headers: Vec<(String, String)>,
    /// Time to live: the message expires this long after it is sent (the `expires` header,
    /// JMSExpiration); e.g. 30s, 10m. 0 (as in JMS): it never expires.
    #[arg(long, value_parser = duration_arg, value_name = "DURATION")]
    ttl: Option<Duration>,
    /// Mark messages persistent: the broker stores each one before it confirms it.
    #[arg(long)]
    persistent: bool,
    /// How many sends may await their RECEIPT at once (1: each send waits for the previous one).
    #[arg(long, short = 'w', default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65_536), value_name = "N")]
    inflight: u32,
}

/// Headers the client writes itself: a second copy would be ambiguous or break the frame.
const RESERVED_HEADERS: [&str; 6] = [
    "destination",
    "content-length",
    "receipt",
    "transaction",
    "persistent",
    "expires",
];

/// Parses `--header NAME=VALUE`.
fn header_arg(value: &str) -> Result<(String, String), String> {
    let (name, header_value) = value
        .split_once('=')
        .ok_or_else(|| format!("{value:?} is not NAME=VALUE"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("{value:?} has no header name before '='"));
    }
    if let Some(reserved) = RESERVED_HEADERS
        .iter()
        .find(|r| r.eq_ignore_ascii_case(name))
    {
        let instead = match *reserved {
            "persistent" => " (use --persistent)",
            "expires" => " (use --ttl)",
            _ => "",
        };
        return Err(format!(
            "header {name:?} is set by ferromq produce itself{instead}"
        ));
    }
    Ok((name.to_owned(), header_value.to_owned()))
}

/// What a produce run did.
#[derive(Debug)]
pub(crate) struct ProduceReport {
    pub(crate) sent: u64,
    pub(crate) confirmed: u64,
    pub(crate) rate: Rate,
    /// The first failure; sending stops at it.
    pub(crate) error: Option<ProduceError>,
}

/// Why sending stopped early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProduceError {
    #[error(transparent)]
    Client(ClientError),
    #[error("reading standard input: {0}")]
    Input(std::io::Error),
}

pub(crate) async fn run(args: ProduceArgs) -> ExitCode {
    let stdin = tokio::io::stdin();
    match execute_from(&args, stdin).await {
        Ok(report) => {
            let bodies = if args.stdin {
                "lines of standard input".to_owned()
            } else if args.message.is_some() {
                "--message bodies".to_owned()
            } else {
                format!("{}-byte bodies", args.size)
            };
            outln!(
                "sent {}, confirmed {} in {} ({bodies}, {}, {} in flight)",
                report.sent,
                report.confirmed,
                report.rate,
                if args.persistent {
                    "persistent"
                } else {
                    "non-persistent"
                },
                args.inflight
            );
            match report.error {
                None => ExitCode::SUCCESS,
                Some(error) => {
                    errln!("ferromq produce: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(error) => {
            errln!("ferromq produce: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Where the bodies come from.
enum Bodies<R> {
    Numbered { next: u64, count: u64, size: usize },
    Fixed { left: u64, body: Bytes },
    Lines(BufReader<R>),
}

impl<R: AsyncRead + Unpin> Bodies<R> {
    fn new(args: &ProduceArgs, input: R) -> Bodies<R> {
        if args.stdin {
            Bodies::Lines(BufReader::new(input))
        } else if let Some(text) = &args.message {
            Bodies::Fixed {
                left: args.count,
                body: Bytes::from(text.clone().into_bytes()),
            }
        } else {
            Bodies::Numbered {
                next: 1,
                count: args.count,
                size: args.size,
            }
        }
    }

    /// The next body; `None` when there is none left.
    async fn next(&mut self) -> Result<Option<Bytes>, ProduceError> {
        match self {
            Bodies::Numbered { next, count, size } => {
                if *next > *count {
                    return Ok(None);
                }
                *next += 1;
                Ok(Some(numbered_body(*next - 1, *size)))
            }
            Bodies::Fixed { left, body } => {
                if *left == 0 {
                    return Ok(None);
                }
                *left -= 1;
                Ok(Some(body.clone()))
            }
            Bodies::Lines(reader) => {
                let mut line = Vec::new();
                let read = reader
                    .read_until(b'\n', &mut line)
                    .await
                    .map_err(ProduceError::Input)?;
                if read == 0 {
                    return Ok(None);
                }
                if line.last() == Some(&b'\n') {
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                }
                Ok(Some(Bytes::from(line)))
            }
        }
    }
}

/// Connects, sends, closes, with bodies of `--size` or `--message` (standard input is not
/// read). `Err` only when nothing could be sent (bad destination, no connection).
#[cfg(test)]
pub(crate) async fn execute(args: &ProduceArgs) -> Result<ProduceReport, ClientError> {
    execute_from(args, tokio::io::empty()).await
}

/// Connects, sends, closes; `--stdin` reads its lines from `input`. `Err` only when nothing
/// could be sent (bad destination, no connection).
pub(crate) async fn execute_from<R: AsyncRead + Unpin>(
    args: &ProduceArgs,
    input: R,
) -> Result<ProduceReport, ClientError> {
    stomp_destination(&args.destination)?;
    let client = args.connect.connect().await?;
    let started = Instant::now();
    let mut bodies = Bodies::new(args, input);
    let mut window = VecDeque::with_capacity(args.inflight as usize);
    let (mut sent, mut confirmed, mut bytes) = (0, 0, 0);
    let mut error: Option<ProduceError> = None;
    loop {
        if window.len() >= args.inflight as usize {
            let Some((oldest, len)) = window.pop_front() else {
                break;
            };
            if let Err(e) = oldest.await {
                error = Some(ProduceError::Client(e));
                break;
            }
            confirmed += 1;
            bytes += len;
        }
        let body = match bodies.next().await {
            Ok(Some(body)) => body,
            Ok(None) => break,
            Err(e) => {
                error = Some(e);
                break;
            }
        };
        let len = body.len() as u64;
        let options = send_options(args);
        window.push_back((client.send_nowait(&args.destination, body, options), len));
        sent += 1;
    }
    for (handle, len) in window {
        match handle.await {
            Ok(()) => {
                confirmed += 1;
                bytes += len;
            }
            Err(e) => {
                error.get_or_insert(ProduceError::Client(e));
            }
        }
    }
    let elapsed = started.elapsed();
    if let Err(e) = client.close().await {
        tracing::debug!(error = %e, "closing the connection failed");
    }
    Ok(ProduceReport {
        sent,
        confirmed,
        rate: Rate::new(confirmed, bytes, elapsed),
        error,
    })
}

/// One send's options: `--persistent`, `--header`s and, with `--ttl`, `expires` counted from
/// now.
fn send_options(args: &ProduceArgs) -> SendOptions {
    let mut headers = args.headers.clone();
    // A time to live of 0 means the message never expires (JMS, ActiveMQ's tools).
    if let Some(ttl) = args.ttl.filter(|ttl| !ttl.is_zero()) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        headers.push(("expires".into(), (now + ttl).as_millis().to_string()));
    }
    SendOptions {
        persistent: args.persistent,
        headers,
    }
}

/// A body of exactly `size` bytes: `"<number> "` then `x`s (the number cut short if it must).
pub(crate) fn numbered_body(number: u64, size: usize) -> Bytes {
    let mut body = format!("{number} ").into_bytes();
    body.truncate(size);
    body.resize(size, b'x');
    Bytes::from(body)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cli::{parse_command, CliCommand};
    use crate::client::fake_broker::MemoryBroker;

    pub(crate) fn produce_args(args: &[&str]) -> ProduceArgs {
        let argv: Vec<&str> = std::iter::once("produce")
            .chain(args.iter().copied())
            .collect();
        match parse_command(&argv) {
            CliCommand::Produce(args) => args,
            other => panic!("not produce: {other:?}"),
        }
    }

    #[test]
    fn bodies_have_the_exact_size() {
        assert_eq!(numbered_body(17, 6).as_ref(), b"17 xxx");
        assert_eq!(numbered_body(12345, 3).as_ref(), b"123");
        assert_eq!(numbered_body(1, 0).as_ref(), b"");
        assert_eq!(numbered_body(1, 1024).len(), 1024);
    }

    #[tokio::test]
    async fn produces_with_a_window_and_counts_confirmations() {
        let broker = MemoryBroker::start().await;
        let url = broker.url();
        let args = produce_args(&[
            "--url",
            &url,
            "-d",
            "queue://orders",
            "-n",
            "250",
            "-s",
            "64",
            "--persistent",
            "-w",
            "16",
        ]);
        let report = execute(&args).await.unwrap();
        assert_eq!((report.sent, report.confirmed), (250, 250));
        assert!(report.error.is_none());
        assert_eq!(broker.depth("/queue/orders"), 250);
    }

    #[test]
    fn headers_are_name_equals_value_and_not_the_clients_own() {
        assert_eq!(
            header_arg("region=eu=west"),
            Ok(("region".into(), "eu=west".into()))
        );
        assert_eq!(header_arg("empty="), Ok(("empty".into(), String::new())));
        assert!(header_arg("novalue").unwrap_err().contains("NAME=VALUE"));
        assert!(header_arg("=x").unwrap_err().contains("no header name"));
        let reserved = header_arg("Expires=1").unwrap_err();
        assert!(reserved.contains("--ttl"), "{reserved}");
        assert!(header_arg("destination=/queue/x").is_err());
    }

    #[test]
    fn ttl_becomes_an_absolute_expires_header() {
        let args = produce_args(&["-d", "queue://q", "--ttl", "30s", "-H", "priority=9"]);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let options = send_options(&args);
        assert_eq!(options.headers[0], ("priority".into(), "9".into()));
        let expires: u128 = options.headers[1].1.parse().unwrap();
        assert_eq!(options.headers[1].0, "expires");
        assert!(
            (now + 29_000..now + 31_000).contains(&expires),
            "{expires} vs {now}"
        );
        // 0 is JMS's "never expires", not "expired on arrival".
        let args = produce_args(&["-d", "queue://q", "--ttl", "0s"]);
        assert!(send_options(&args).headers.is_empty());
    }

    #[tokio::test]
    async fn stdin_lines_are_the_bodies_without_their_line_ends() {
        let broker = MemoryBroker::start().await;
        let url = broker.url();
        let args = produce_args(&["-u", &url, "-d", "queue://logs", "--stdin", "-w", "4"]);
        let input: &[u8] = b"first line\r\nsecond\n\nlast, no line end";
        let report = execute_from(&args, input).await.unwrap();
        assert_eq!((report.sent, report.confirmed), (4, 4));
        assert_eq!(
            broker.bodies("/queue/logs"),
            ["first line", "second", "", "last, no line end"]
        );
    }

    #[tokio::test]
    async fn a_message_text_is_every_body() {
        let broker = MemoryBroker::start().await;
        let url = broker.url();
        let args = produce_args(&["-u", &url, "-d", "queue://q", "-n", "2", "-m", "hello"]);
        let report = execute(&args).await.unwrap();
        assert_eq!(report.confirmed, 2);
        assert_eq!(broker.bodies("/queue/q"), ["hello", "hello"]);
    }

    #[tokio::test]
    async fn a_bad_destination_is_an_error_before_connecting() {
        let args = produce_args(&["--url", "tcp://127.0.0.1:1", "-d", "temp-queue://orders"]);
        let error = execute(&args).await.unwrap_err();
        assert_eq!(
            error,
            ClientError::InvalidDestination("temp-queue://orders".into())
        );
    }
}
