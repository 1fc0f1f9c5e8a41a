//! `ferromq produce`: send N messages, each confirmed by a RECEIPT, with a bounded window of
//! sends in flight.

use std::collections::VecDeque;
use std::process::ExitCode;

use bytes::Bytes;
use clap::Args;
use tokio::time::Instant;

use super::report::Rate;
use super::{size_arg, ConnectArgs};
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
    /// Mark messages persistent: the broker stores each one before it confirms it.
    #[arg(long)]
    persistent: bool,
    /// How many sends may await their RECEIPT at once (1: each send waits for the previous one).
    #[arg(long, short = 'w', default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65_536), value_name = "N")]
    inflight: u32,
}

/// What a produce run did.
#[derive(Debug)]
pub(crate) struct ProduceReport {
    pub(crate) sent: u64,
    pub(crate) confirmed: u64,
    pub(crate) rate: Rate,
    /// The first failure; sending stops at it.
    pub(crate) error: Option<ClientError>,
}

pub(crate) async fn run(args: ProduceArgs) -> ExitCode {
    match execute(&args).await {
        Ok(report) => {
            println!(
                "sent {}, confirmed {} in {} ({}-byte bodies, {}, {} in flight)",
                report.sent,
                report.confirmed,
                report.rate,
                args.size,
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
                    eprintln!("ferromq produce: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(error) => {
            eprintln!("ferromq produce: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Connects, sends, closes. `Err` only when nothing could be sent (bad destination, no
/// connection).
pub(crate) async fn execute(args: &ProduceArgs) -> Result<ProduceReport, ClientError> {
    stomp_destination(&args.destination)?;
    let client = args.connect.connect().await?;
    let options = SendOptions {
        persistent: args.persistent,
        headers: Vec::new(),
    };
    let started = Instant::now();
    let mut window = VecDeque::with_capacity(args.inflight as usize);
    let (mut sent, mut confirmed, mut error) = (0, 0, None);
    for number in 1..=args.count {
        if window.len() >= args.inflight as usize {
            let Some(oldest) = window.pop_front() else {
                break;
            };
            if let Err(e) = oldest.await {
                error = Some(e);
                break;
            }
            confirmed += 1;
        }
        let body = numbered_body(number, args.size);
        window.push_back(client.send_nowait(&args.destination, body, options.clone()));
        sent += 1;
    }
    for handle in window {
        match handle.await {
            Ok(()) => confirmed += 1,
            Err(e) => {
                error.get_or_insert(e);
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
        rate: Rate::new(confirmed, confirmed * args.size as u64, elapsed),
        error,
    })
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

    #[tokio::test]
    async fn a_bad_destination_is_an_error_before_connecting() {
        let args = produce_args(&["--url", "tcp://127.0.0.1:1", "-d", "orders"]);
        let error = execute(&args).await.unwrap_err();
        assert_eq!(error, ClientError::InvalidDestination("orders".into()));
    }
}
