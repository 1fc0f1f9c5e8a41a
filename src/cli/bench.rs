//! `ferromq bench`: P producers and C consumers, each with its own connection.
//!
//! Producers keep W sends in flight and record each send's latency (submitted to RECEIPT).
//! Consumers subscribe before the producers start; once the producers are done, they run until
//! they have received as many messages as were confirmed, or until no message came for the idle
//! timeout. `--drain-only` runs consumers alone against what the destination already holds.

use std::collections::VecDeque;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::{ArgAction, Args};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use super::report::{bar, Latency, Progress, Rate};
use super::{duration_arg, size_arg, AckArg, ConnectArgs};
use crate::client::{
    stomp_destination, AckMode, Client, ClientError, SendOptions, SubscribeOptions, Subscription,
};

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Destination to send to and consume from.
    #[arg(
        long,
        short = 'd',
        default_value = "queue://ferromq.bench",
        value_name = "DESTINATION"
    )]
    destination: String,
    /// Producer tasks, each with its own connection (at least 1; `--drain-only` has none).
    #[arg(long, short = 'p', default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    producers: u32,
    /// Consumer tasks, each with its own connection.
    #[arg(long, short = 'c', default_value_t = 0, value_name = "N")]
    consumers: u32,
    /// Body size (e.g. 1024, 4KiB).
    #[arg(long, short = 's', default_value = "1024", value_parser = size_arg, value_name = "BYTES")]
    size: usize,
    /// Messages to send in all, shared among the producers.
    #[arg(
        long,
        short = 'n',
        default_value_t = 10_000,
        value_name = "N",
        conflicts_with = "duration"
    )]
    count: u64,
    /// Send for this long instead of a number of messages (e.g. 30s).
    #[arg(long, value_parser = duration_arg, value_name = "DURATION")]
    duration: Option<Duration>,
    /// Whether messages are persistent (stored before they are confirmed).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    persistent: bool,
    /// Sends each producer keeps in flight, awaiting their RECEIPT.
    #[arg(long, short = 'w', default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65_536), value_name = "N")]
    inflight: u32,
    /// Consumer acknowledgement mode.
    #[arg(long, value_enum, default_value_t = AckArg::Auto)]
    ack: AckArg,
    /// Consumer prefetch (activemq.prefetchSize).
    #[arg(long, value_name = "N")]
    prefetch: Option<u32>,
    /// Consume only: drain what the destination holds (at least one consumer), to measure the
    /// consume rate against a pre-filled queue.
    #[arg(long, conflicts_with_all = ["duration", "count", "producers"])]
    drain_only: bool,
    /// Consumers stop after this long without a message, once the producers are done.
    #[arg(long, default_value = "10s", value_parser = duration_arg, value_name = "DURATION")]
    idle_timeout: Duration,
    /// Print one JSON object with every figure on stdout instead of the text summary (or
    /// `{"error": ...}` when the run could not start: no broker reachable, say).
    #[arg(long)]
    json: bool,
}

/// Every figure of a run; `--json` prints it as is.
#[derive(Debug, Serialize)]
pub(crate) struct BenchReport {
    pub(crate) url: String,
    pub(crate) destination: String,
    pub(crate) producers: u32,
    pub(crate) consumers: u32,
    pub(crate) size: usize,
    pub(crate) persistent: bool,
    pub(crate) inflight: u32,
    pub(crate) produce: Option<ProduceFigures>,
    pub(crate) consume: Option<ConsumeFigures>,
    /// Connections replaced after a failure, over every client.
    pub(crate) reconnects: u64,
    pub(crate) errors: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ProduceFigures {
    pub(crate) sent: u64,
    pub(crate) confirmed: u64,
    #[serde(flatten)]
    pub(crate) rate: Rate,
    /// Send to RECEIPT.
    pub(crate) latency: Option<Latency>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ConsumeFigures {
    pub(crate) received: u64,
    /// The confirmed sends the consumers waited for (none in `--drain-only`).
    pub(crate) expected: Option<u64>,
    #[serde(flatten)]
    pub(crate) rate: Rate,
}

impl BenchReport {
    /// Whether the run went as asked: no errors, and every confirmed message consumed.
    pub(crate) fn succeeded(&self) -> bool {
        let consumed_all = match &self.consume {
            Some(ConsumeFigures {
                received,
                expected: Some(expected),
                ..
            }) => received >= expected,
            _ => true,
        };
        self.errors.is_empty() && consumed_all
    }
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.producers == 0 {
            writeln!(
                f,
                "bench: draining {} with {} consumer(s)",
                self.destination, self.consumers
            )?;
        } else {
            writeln!(
                f,
                "bench: {} producer(s), {} consumer(s), {}-byte {} messages, {} in flight per producer, {}",
                self.producers,
                self.consumers,
                self.size,
                if self.persistent { "persistent" } else { "non-persistent" },
                self.inflight,
                self.destination
            )?;
        }
        if let Some(produce) = &self.produce {
            writeln!(
                f,
                "produce: {} sent, {} confirmed in {}",
                produce.sent, produce.confirmed, produce.rate
            )?;
            if let Some(latency) = &produce.latency {
                writeln!(f, "latency (send to RECEIPT): {latency}")?;
            }
        }
        if let Some(consume) = &self.consume {
            match consume.expected {
                Some(expected) => write!(f, "consume: {} of {expected}", consume.received)?,
                None => write!(f, "consume: {}", consume.received)?,
            }
            write!(f, " received in {}", consume.rate)?;
            if let Some(extra) = consume
                .expected
                .and_then(|e| consume.received.checked_sub(e))
            {
                if extra > 0 {
                    write!(
                        f,
                        " ({extra} more than sent: the destination held messages before)"
                    )?;
                }
            }
            writeln!(f)?;
        }
        if self.reconnects > 0 {
            writeln!(f, "reconnects: {}", self.reconnects)?;
        }
        for error in &self.errors {
            writeln!(f, "error: {error}")?;
        }
        Ok(())
    }
}

pub(crate) async fn run(args: BenchArgs) -> ExitCode {
    match execute(&args).await {
        Ok(report) => {
            if args.json {
                match serde_json::to_string(&report) {
                    Ok(json) => outln!("{json}"),
                    Err(e) => errln!("ferromq bench: {e}"),
                }
            } else {
                out!("{report}");
            }
            if report.succeeded() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            errln!("ferromq bench: {error:#}");
            if args.json {
                // A script reading standard output gets a document all the same.
                outln!("{}", serde_json::json!({ "error": format!("{error:#}") }));
            }
            ExitCode::FAILURE
        }
    }
}

/// What the consumers are doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The producers are sending; wait for messages however long it takes.
    Producing,
    /// Stop once `target` messages (if any) were received in all, or after the idle timeout.
    Draining { target: Option<u64> },
    /// Stop now.
    Done,
}

/// Counters every task adds to, read by the progress line.
#[derive(Debug, Default)]
struct Counters {
    confirmed: AtomicU64,
    received: AtomicU64,
}

/// How much one producer sends.
#[derive(Debug, Clone, Copy)]
enum Share {
    Count(u64),
    Until(Instant),
}

#[derive(Debug, Default)]
struct ProducerResult {
    sent: u64,
    confirmed: u64,
    /// Nanoseconds from submission to RECEIPT, per confirmed send.
    latencies: Vec<u64>,
    error: Option<ClientError>,
    reconnects: u64,
}

#[derive(Debug, Default)]
struct ConsumerResult {
    received: u64,
    bytes: u64,
    last: Option<Instant>,
    error: Option<ClientError>,
    reconnects: u64,
}

/// Splits `total` into `parts` shares differing by at most one.
fn split(total: u64, parts: u32) -> Vec<u64> {
    let parts = u64::from(parts.max(1));
    (0..parts)
        .map(|i| total / parts + u64::from(i < total % parts))
        .collect()
}

pub(crate) async fn execute(args: &BenchArgs) -> anyhow::Result<BenchReport> {
    stomp_destination(&args.destination)?;
    let (producers, consumers) = if args.drain_only {
        (0, args.consumers.max(1))
    } else {
        (args.producers, args.consumers)
    };
    let counters = Arc::new(Counters::default());
    let initial = if args.drain_only {
        Stage::Draining { target: None }
    } else {
        Stage::Producing
    };
    let stage = Arc::new(watch::Sender::new(initial));

    // Every connection first; then the consumers subscribe (the consume clock starts there, as
    // a pre-filled queue delivers at once), then the producers start.
    let mut consumer_clients = Vec::new();
    for _ in 0..consumers {
        consumer_clients.push(args.connect.connect().await?);
    }
    let mut clients = Vec::new();
    for _ in 0..producers {
        clients.push(args.connect.connect().await?);
    }
    let consume_started = Instant::now();
    let mut consumer_tasks = Vec::new();
    for client in consumer_clients {
        let options = SubscribeOptions {
            ack: args.ack.into(),
            prefetch: args.prefetch,
            ..SubscribeOptions::default()
        };
        let subscription = client.subscribe(&args.destination, options).await?;
        let task = consume(
            client,
            subscription,
            counters.clone(),
            stage.clone(),
            args.idle_timeout,
            AckMode::from(args.ack) != AckMode::Auto,
        );
        consumer_tasks.push(tokio::spawn(task));
    }

    let started = Instant::now();
    let progress = Progress::start(progress_line(args, producers, counters.clone()));
    let shares: Vec<Share> = match args.duration {
        Some(duration) => vec![Share::Until(started + duration); producers as usize],
        None => split(args.count, producers)
            .into_iter()
            .map(Share::Count)
            .collect(),
    };
    let body = Bytes::from(vec![b'x'; args.size]);
    let options = SendOptions {
        persistent: args.persistent,
        headers: Vec::new(),
    };
    let producer_tasks: Vec<_> = clients
        .into_iter()
        .zip(shares)
        .map(|(client, share)| {
            tokio::spawn(produce(
                client,
                args.destination.clone(),
                body.clone(),
                options.clone(),
                args.inflight as usize,
                share,
                counters.clone(),
            ))
        })
        .collect();

    let mut errors = Vec::new();
    let mut reconnects = 0;
    let mut produced = ProducerResult::default();
    for task in producer_tasks {
        let result = task.await?;
        produced.sent += result.sent;
        produced.confirmed += result.confirmed;
        produced.latencies.extend(result.latencies);
        reconnects += result.reconnects;
        if let Some(error) = result.error {
            errors.push(format!("producer: {error}"));
        }
    }
    let produce_elapsed = started.elapsed();
    let expected = (!args.drain_only).then_some(produced.confirmed);
    stage.send_replace(Stage::Draining { target: expected });

    let mut consumed = ConsumerResult::default();
    for task in consumer_tasks {
        let result = task.await?;
        consumed.received += result.received;
        consumed.bytes += result.bytes;
        consumed.last = consumed.last.max(result.last);
        reconnects += result.reconnects;
        if let Some(error) = result.error {
            errors.push(format!("consumer: {error}"));
        }
    }
    if let Some(progress) = progress {
        progress.finish().await;
    }
    errors.dedup();
    if let Some(expected) = expected.filter(|e| consumers > 0 && consumed.received < *e) {
        errors.push(format!(
            "consumers received {} of {expected} confirmed messages: none came for {} ms",
            consumed.received,
            args.idle_timeout.as_millis()
        ));
    }

    Ok(BenchReport {
        url: args.connect.url.clone(),
        destination: args.destination.clone(),
        producers,
        consumers,
        size: args.size,
        persistent: args.persistent,
        inflight: args.inflight,
        produce: (producers > 0).then(|| ProduceFigures {
            sent: produced.sent,
            confirmed: produced.confirmed,
            rate: Rate::new(
                produced.confirmed,
                produced.confirmed * args.size as u64,
                produce_elapsed,
            ),
            latency: Latency::of(std::mem::take(&mut produced.latencies)),
        }),
        consume: (consumers > 0).then(|| ConsumeFigures {
            received: consumed.received,
            expected,
            rate: Rate::new(
                consumed.received,
                consumed.bytes,
                consumed
                    .last
                    .map_or(Duration::ZERO, |last| last - consume_started),
            ),
        }),
        reconnects,
        errors,
    })
}

fn progress_line(
    args: &BenchArgs,
    producers: u32,
    counters: Arc<Counters>,
) -> impl Fn(Duration) -> String + Send + 'static {
    let (count, duration) = (args.count, args.duration);
    move |elapsed| {
        let confirmed = counters.confirmed.load(Ordering::Relaxed);
        let received = counters.received.load(Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64().max(1e-9);
        if producers == 0 {
            return format!(
                "received {received} ({:.0} msg/s)",
                received as f64 / seconds
            );
        }
        let fraction = match duration {
            Some(duration) => elapsed.as_secs_f64() / duration.as_secs_f64().max(1e-9),
            None => confirmed as f64 / count.max(1) as f64,
        };
        format!(
            "{} {:3.0}%  confirmed {confirmed} ({:.0} msg/s)  received {received}",
            bar(fraction, 30),
            fraction.min(1.0) * 100.0,
            confirmed as f64 / seconds
        )
    }
}

async fn produce(
    client: Client,
    destination: String,
    body: Bytes,
    options: SendOptions,
    inflight: usize,
    share: Share,
    counters: Arc<Counters>,
) -> ProducerResult {
    let mut result = ProducerResult::default();
    if let Share::Count(count) = share {
        result.latencies.reserve(count.min(1 << 20) as usize);
    }
    let mut window = VecDeque::with_capacity(inflight);
    let confirm =
        |submitted: Instant, outcome: Result<(), ClientError>, result: &mut ProducerResult| {
            match outcome {
                Ok(()) => {
                    result.latencies.push(submitted.elapsed().as_nanos() as u64);
                    result.confirmed += 1;
                    counters.confirmed.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    result.error.get_or_insert(error);
                }
            }
        };
    loop {
        let more = match share {
            Share::Count(count) => result.sent < count,
            Share::Until(deadline) => Instant::now() < deadline,
        };
        if !more || result.error.is_some() {
            break;
        }
        if window.len() >= inflight {
            if let Some((submitted, handle)) = window.pop_front() {
                let outcome = handle.await;
                confirm(submitted, outcome, &mut result);
                continue;
            }
        }
        let handle = client.send_nowait(&destination, body.clone(), options.clone());
        window.push_back((Instant::now(), handle));
        result.sent += 1;
    }
    for (submitted, handle) in window {
        let outcome = handle.await;
        confirm(submitted, outcome, &mut result);
    }
    result.reconnects = client.reconnects();
    if let Err(e) = client.close().await {
        tracing::debug!(error = %e, "closing a producer connection failed");
    }
    result
}

async fn consume(
    client: Client,
    mut subscription: Subscription,
    counters: Arc<Counters>,
    stage: Arc<watch::Sender<Stage>>,
    idle_timeout: Duration,
    acknowledge: bool,
) -> ConsumerResult {
    let mut result = ConsumerResult::default();
    let mut stage_changes = stage.subscribe();
    loop {
        let current = *stage_changes.borrow_and_update();
        let draining = match current {
            Stage::Producing => false,
            Stage::Draining { target } => {
                if target.is_some_and(|t| counters.received.load(Ordering::Relaxed) >= t) {
                    // Wake the other consumers too.
                    stage.send_replace(Stage::Done);
                    break;
                }
                true
            }
            Stage::Done => break,
        };
        tokio::select! {
            message = subscription.next() => {
                let Some(message) = message else {
                    result.error = Some(subscription.close_reason());
                    break;
                };
                if acknowledge {
                    if let Err(error) = message.ack().await {
                        result.error = Some(error);
                        break;
                    }
                }
                result.received += 1;
                result.bytes += message.body().len() as u64;
                result.last = Some(Instant::now());
                counters.received.fetch_add(1, Ordering::Relaxed);
            }
            _ = stage_changes.changed() => {}
            () = tokio::time::sleep(idle_timeout), if draining => break,
        }
    }
    result.reconnects = client.reconnects();
    drop(subscription);
    if let Err(e) = client.close().await {
        tracing::debug!(error = %e, "closing a consumer connection failed");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{parse_command, CliCommand};
    use crate::client::fake_broker::MemoryBroker;

    fn bench_args(args: &[&str]) -> BenchArgs {
        let argv: Vec<&str> = std::iter::once("bench")
            .chain(args.iter().copied())
            .collect();
        match parse_command(&argv) {
            CliCommand::Bench(args) => args,
            other => panic!("not bench: {other:?}"),
        }
    }

    #[test]
    fn defaults_match_the_documentation() {
        let args = bench_args(&[]);
        assert_eq!(args.connect.url, "tcp://127.0.0.1:61616");
        assert_eq!(args.destination, "queue://ferromq.bench");
        assert_eq!((args.producers, args.consumers), (1, 0));
        assert_eq!((args.size, args.count, args.inflight), (1024, 10_000, 1));
        assert!(args.persistent);
        assert!(!bench_args(&["--persistent", "false"]).persistent);
        assert!(bench_args(&["--persistent"]).persistent);
        assert_eq!(
            bench_args(&["--duration", "2s"]).duration,
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn shares_differ_by_at_most_one() {
        assert_eq!(split(10, 3), vec![4, 3, 3]);
        assert_eq!(split(2, 4), vec![1, 1, 0, 0]);
        assert_eq!(split(7, 1), vec![7]);
    }

    #[tokio::test]
    async fn producers_and_consumers_account_for_every_message() {
        let broker = MemoryBroker::start().await;
        let url = broker.url();
        let args = bench_args(&[
            "-u",
            &url,
            "-p",
            "3",
            "-c",
            "2",
            "-n",
            "300",
            "-w",
            "8",
            "-s",
            "100",
            "--idle-timeout",
            "5s",
        ]);
        let report = execute(&args).await.unwrap();
        assert!(report.succeeded(), "{report}");
        let produce = report.produce.as_ref().unwrap();
        assert_eq!((produce.sent, produce.confirmed), (300, 300));
        assert_eq!(produce.latency.unwrap().samples, 300);
        let consume = report.consume.as_ref().unwrap();
        assert_eq!((consume.received, consume.expected), (300, Some(300)));
        let body_bytes = consume.rate.mb_per_sec * consume.rate.seconds * 1e6;
        assert!((body_bytes - 30_000.0).abs() < 1e-3, "{body_bytes}");
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(json["produce"]["confirmed"], 300);
        assert!(json["produce"]["latency"]["p99_us"].is_number());
        assert!(json["consume"]["msgs_per_sec"].is_number());
        assert_eq!(broker.depth("/queue/ferromq.bench"), 0);
    }

    #[tokio::test]
    async fn drain_only_consumes_a_prefilled_queue() {
        let broker = MemoryBroker::start().await;
        let url = broker.url();
        let fill = bench_args(&["-u", &url, "-d", "/queue/filled", "-n", "50", "-w", "10"]);
        assert!(execute(&fill).await.unwrap().succeeded());
        assert_eq!(broker.depth("/queue/filled"), 50);
        let drain = bench_args(&[
            "-u",
            &url,
            "-d",
            "/queue/filled",
            "--drain-only",
            "--idle-timeout",
            "200ms",
        ]);
        let report = execute(&drain).await.unwrap();
        assert!(report.succeeded(), "{report}");
        assert!(report.produce.is_none());
        let consume = report.consume.unwrap();
        assert_eq!((consume.received, consume.expected), (50, None));
        assert_eq!(report.consumers, 1);
    }
}
