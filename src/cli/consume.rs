//! `ferromq consume`: receive N messages (or until none comes for a while), printing bodies.

use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tokio::time::Instant;

use super::report::Rate;
use super::{duration_arg, AckArg, ConnectArgs};
use crate::client::{AckMode, ClientError, PendingAck, SubscribeOptions};

#[derive(Debug, Args)]
pub(crate) struct ConsumeArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Destination: queue://NAME, topic://NAME, /queue/NAME or /topic/NAME.
    #[arg(long, short = 'd', value_name = "DESTINATION")]
    destination: String,
    /// How many messages to receive; the exit code is 0 only if all of them arrive (with
    /// --browse, also once the end of the queue is reached; with --follow, see there).
    #[arg(long, short = 'n', default_value_t = 1000, value_name = "N")]
    count: u64,
    /// Keep receiving, however many messages arrive (--count is ignored), until interrupted
    /// or until --timeout passes without a message (exit code 0): a long-running collector.
    /// Each message is written out before it is acknowledged, so one interrupted in between
    /// comes again.
    #[arg(long, short = 'f', conflicts_with = "browse")]
    follow: bool,
    /// Stop after this long without a message (e.g. 5s, 500ms); by default wait indefinitely.
    #[arg(long, short = 't', value_parser = duration_arg, value_name = "DURATION")]
    timeout: Option<Duration>,
    /// Acknowledgement mode: auto, client or client-individual. Whichever it is, each message is
    /// acknowledged once printed (with auto too, as JMS's AUTO_ACKNOWLEDGE does), so what is
    /// not printed stays on the queue; client acknowledges cumulatively, client-individual one
    /// message at a time. Up to 256 acknowledgements wait for their RECEIPT at once, so the
    /// rate is not one message per round trip.
    #[arg(long, value_enum, default_value_t = AckArg::Auto, hide_possible_values = true)]
    ack: AckArg,
    /// How many unacknowledged messages the broker may push at once (activemq.prefetchSize;
    /// by default --count, at most 1000; 1000 with --follow).
    #[arg(long, value_name = "N")]
    prefetch: Option<u32>,
    /// Receive only the messages this JMS selector matches (SQL-92 on headers and properties,
    /// e.g. "region = 'eu' AND priority > 4"); the others stay for other consumers.
    #[arg(long, value_name = "SELECTOR")]
    selector: Option<String>,
    /// Subscribe to a topic durably under this subscription name (needs --client-id): the
    /// broker keeps the topic's messages for it while it is away, and the same --client-id
    /// and --durable get them later.
    #[arg(long, value_name = "NAME", requires = "client_id")]
    durable: Option<String>,
    /// Browse instead of consume (ActiveMQ's STOMP queue browser): print what the queue holds
    /// now, up to --count, and leave it there.
    #[arg(long, conflicts_with = "durable")]
    browse: bool,
    /// Do not print message bodies.
    #[arg(long, short = 'q')]
    quiet: bool,
}

/// Why receiving stopped.
#[derive(Debug, PartialEq)]
pub(crate) enum Stopped {
    /// All the messages asked for arrived.
    Complete,
    /// A browse reached the end of the queue.
    EndOfQueue,
    /// No message within the timeout.
    Idle(Duration),
    /// The client failed (gave up failing over, an ack failed, ...).
    Failed(ClientError),
}

#[derive(Debug)]
pub(crate) struct ConsumeReport {
    pub(crate) received: u64,
    pub(crate) rate: Rate,
    pub(crate) stopped: Stopped,
}

pub(crate) async fn run(args: ConsumeArgs) -> ExitCode {
    let mut stdout = std::io::stdout();
    match execute(&args, &mut stdout).await {
        Ok(report) => {
            let reason = match &report.stopped {
                Stopped::Complete => String::new(),
                Stopped::EndOfQueue => "; the end of the browse (left on the queue)".into(),
                Stopped::Idle(timeout) => {
                    format!("; stopped: no message for {} ms", timeout.as_millis())
                }
                Stopped::Failed(error) => format!("; stopped: {error}"),
            };
            // The rate runs to the last message received: none, no rate.
            let rate = if report.received == 0 {
                String::new()
            } else {
                format!(" in {}", report.rate)
            };
            if args.follow {
                errln!("received {}{rate}{reason}", report.received);
            } else {
                errln!(
                    "received {} of {}{rate}{reason}",
                    report.received,
                    args.count
                );
            }
            // Following, going idle for --timeout is the expected end.
            let idle_end = args.follow && matches!(report.stopped, Stopped::Idle(_));
            if idle_end || matches!(report.stopped, Stopped::Complete | Stopped::EndOfQueue) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            errln!("ferromq consume: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Subscribes and receives, writing each body and a newline to `out` unless quiet.
pub(crate) async fn execute(
    args: &ConsumeArgs,
    out: &mut impl Write,
) -> anyhow::Result<ConsumeReport> {
    if args.durable.is_some()
        && !crate::client::stomp_destination(&args.destination)?.starts_with("/topic/")
    {
        anyhow::bail!(
            "--durable subscribes to a topic; {} is not one (a queue keeps its messages anyway)",
            args.destination
        );
    }
    let client = args.connect.connect().await?;
    // STOMP's auto ack would count as consumed every message the broker pushes, printed or
    // not: past --count, up to a whole prefetch would be lost. Acknowledge what is printed.
    let ack = match AckMode::from(args.ack) {
        // A browser's copies need no acknowledgement.
        _ if args.browse => AckMode::Auto,
        AckMode::Auto => AckMode::ClientIndividual,
        other => other,
    };
    let options = SubscribeOptions {
        ack,
        prefetch: Some(args.prefetch.unwrap_or_else(|| {
            if args.follow {
                1000
            } else {
                args.count.clamp(1, 1000) as u32
            }
        })),
        selector: args.selector.clone(),
        durable_name: args.durable.clone(),
        headers: if args.browse {
            vec![("browser".into(), "true".into())]
        } else {
            Vec::new()
        },
    };
    let started = Instant::now();
    let (mut received, mut bytes) = (0u64, 0u64);
    let mut last = started;
    if args.count == 0 && !args.follow {
        client.close().await.ok();
        return Ok(ConsumeReport {
            received,
            rate: Rate::new(0, 0, Duration::ZERO),
            stopped: Stopped::Complete,
        });
    }
    let mut subscription = client.subscribe(&args.destination, options).await?;
    // A browse renewed after a failover starts again at the head of the queue: what was
    // printed already is skipped, by message id.
    let mut browsed = HashSet::new();
    // Messages whose ACK was in doubt (its connection was lost before the RECEIPT): counted
    // then, since the broker may have applied it and will not deliver them again; one that
    // does come again is acknowledged and neither printed nor counted twice.
    let mut in_doubt = HashSet::new();
    // ACKs sent and not answered yet, oldest first: up to ACKS_IN_FLIGHT of them, so that the
    // rate is not one message per round trip.
    let mut acks = Acks::default();
    let stopped = loop {
        if received >= args.count && !args.follow {
            break Stopped::Complete;
        }
        let next = match args.timeout {
            None => subscription.next().await,
            Some(timeout) => match tokio::time::timeout(timeout, subscription.next()).await {
                Ok(next) => next,
                Err(_) => break Stopped::Idle(timeout),
            },
        };
        let Some(message) = next else {
            break Stopped::Failed(subscription.close_reason());
        };
        if args.browse {
            if message.header("browser") == Some("end") {
                break Stopped::EndOfQueue;
            }
            let id = message.header("message-id").unwrap_or_default();
            if !browsed.insert(id.to_string()) {
                continue;
            }
        }
        let id = message.header("message-id").unwrap_or_default().to_string();
        // Delivered again while its first ACK is unanswered (a failover): that answer decides.
        if let Err(error) = acks.settle_through(&id, &mut in_doubt).await {
            break Stopped::Failed(error);
        }
        let again = in_doubt.remove(&id);
        if !args.quiet && !again {
            out.write_all(message.body())?;
            out.write_all(b"\n")?;
        }
        match message.send_ack() {
            Ok(pending) => acks.push(id, pending),
            // Its connection is lost already.
            Err(ClientError::StaleDelivery) => {
                in_doubt.insert(id);
            }
            Err(error) => break Stopped::Failed(error),
        }
        if let Err(error) = acks.settle_answered(&mut in_doubt).await {
            break Stopped::Failed(error);
        }
        if again {
            continue; // counted when its first ACK went in doubt
        }
        received += 1;
        bytes += message.body().len() as u64;
        last = Instant::now();
    };
    // Every ACK answered before the connection closes (what is acknowledged is then final).
    let stopped = match acks.settle_all(&mut in_doubt).await {
        Err(error) if !matches!(stopped, Stopped::Failed(_)) => Stopped::Failed(error),
        _ => stopped,
    };
    out.flush()?;
    drop(subscription);
    if let Err(e) = client.close().await {
        tracing::debug!(error = %e, "closing the connection failed");
    }
    Ok(ConsumeReport {
        received,
        rate: Rate::new(received, bytes, last - started),
        stopped,
    })
}

/// ACKs waiting for their RECEIPT at most, before `consume` waits for the oldest.
const ACKS_IN_FLIGHT: usize = 256;

/// The ACKs `consume` sent and has no answer for yet, oldest first.
#[derive(Default)]
struct Acks {
    pending: VecDeque<(String, PendingAck)>,
    /// The message ids in `pending`.
    sent: HashSet<String>,
}

impl Acks {
    fn push(&mut self, id: String, pending: PendingAck) {
        self.sent.insert(id.clone());
        self.pending.push_back((id, pending));
    }

    /// Takes the oldest answer, waiting for it if `wait`. Returns whether there was one.
    async fn settle_oldest(
        &mut self,
        in_doubt: &mut HashSet<String>,
        wait: bool,
    ) -> Result<bool, ClientError> {
        let Some((_, pending)) = self.pending.front_mut() else {
            return Ok(false);
        };
        let answer = match pending.try_answer() {
            Some(answer) => answer,
            None if wait => pending.answer().await,
            None => return Ok(false),
        };
        let (id, _) = self.pending.pop_front().expect("a front");
        self.sent.remove(&id);
        match answer {
            Ok(()) => Ok(true),
            // Its connection was lost before the RECEIPT: the message is in doubt.
            Err(ClientError::StaleDelivery) => {
                in_doubt.insert(id);
                Ok(true)
            }
            Err(error) => Err(error),
        }
    }

    /// Takes the answers that came, and waits for the oldest while too many are in flight.
    async fn settle_answered(&mut self, in_doubt: &mut HashSet<String>) -> Result<(), ClientError> {
        while self.settle_oldest(in_doubt, false).await? {}
        while self.pending.len() > ACKS_IN_FLIGHT {
            self.settle_oldest(in_doubt, true).await?;
        }
        Ok(())
    }

    /// Waits for every answer up to that of the ACK of message `id`.
    async fn settle_through(
        &mut self,
        id: &str,
        in_doubt: &mut HashSet<String>,
    ) -> Result<(), ClientError> {
        while self.sent.contains(id) && self.settle_oldest(in_doubt, true).await? {}
        Ok(())
    }

    /// Waits for every answer.
    async fn settle_all(&mut self, in_doubt: &mut HashSet<String>) -> Result<(), ClientError> {
        while self.settle_oldest(in_doubt, true).await? {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::produce::{execute as produce, tests::produce_args};
    use crate::cli::{parse_command, CliCommand};
    use crate::client::fake_broker::MemoryBroker;

    /// A failover URL over `brokers` that reconnects at once, in order.
    fn fast_failover(brokers: &[&crate::client::fake_broker::FakeListener]) -> String {
        let list: Vec<String> = brokers.iter().map(|b| b.url()).collect();
        format!(
            "failover:({})?randomize=false&initialReconnectDelay=1&maxReconnectDelay=20",
            list.join(",")
        )
    }

    fn consume_args(args: &[&str]) -> ConsumeArgs {
        let argv: Vec<&str> = std::iter::once("consume")
            .chain(args.iter().copied())
            .collect();
        match parse_command(&argv) {
            CliCommand::Consume(args) => args,
            other => panic!("not consume: {other:?}"),
        }
    }

    #[tokio::test]
    async fn consumes_what_was_produced_and_prints_bodies() {
        let broker = MemoryBroker::start().await;
        let url = broker.url();
        let produced = produce(&produce_args(&[
            "-u", &url, "-d", "/queue/q", "-n", "3", "-s", "4",
        ]))
        .await
        .unwrap();
        assert_eq!(produced.confirmed, 3);
        let mut out = Vec::new();
        let args = consume_args(&["-u", &url, "-d", "queue://q", "-n", "3", "--ack", "client"]);
        let report = execute(&args, &mut out).await.unwrap();
        assert_eq!(report.stopped, Stopped::Complete);
        assert_eq!(report.received, 3);
        assert_eq!(String::from_utf8(out).unwrap(), "1 xx\n2 xx\n3 xx\n");
    }

    /// The broker fails over in the middle of a browse: the renewed browser shows the queue
    /// from its head again, and what was printed already is not printed twice.
    #[tokio::test]
    async fn a_browse_renewed_by_a_failover_prints_each_message_once() {
        use crate::client::fake_broker::{message_frame, FakeListener};
        use crate::protocol::stomp::frame::{Command, Frame};
        let first = FakeListener::bind().await;
        let second = FakeListener::bind().await;
        let url = fast_failover(&[&first, &second]);
        let brokers = tokio::spawn(async move {
            let mut shown = 0;
            // The first broker dies after two copies; the second shows all three, then the end.
            for (listener, copies, last) in [(first, 2, false), (second, 3, true)] {
                let mut connection = listener.accept().await;
                connection.handshake().await;
                let subscribe = connection.expect(Command::Subscribe).await;
                assert_eq!(subscribe.get("browser"), Some("true"));
                let id = subscribe.get("id").unwrap().to_string();
                if subscribe.get("receipt").is_some() {
                    // The first SUBSCRIBE; the client renews it without one.
                    connection.receipt(&subscribe).await;
                }
                for n in 1..=copies {
                    connection
                        .send(message_frame(&id, "/queue/q", n, &n.to_string()))
                        .await;
                }
                shown += copies;
                if last {
                    let end = Frame::new(Command::Message)
                        .header("subscription", id)
                        .header("browser", "end")
                        .header("message-id", "0");
                    connection.send(end).await;
                    // UNSUBSCRIBE, then DISCONNECT, each with a receipt.
                    connection.receipts_until_disconnect().await;
                } else {
                    connection.close().await;
                }
            }
            shown
        });
        let mut out = Vec::new();
        let args = consume_args(&["-u", &url, "-d", "queue://q", "--browse", "-n", "10"]);
        let report = execute(&args, &mut out).await.unwrap();
        assert_eq!(brokers.await.unwrap(), 5);
        assert_eq!(String::from_utf8(out).unwrap(), "m1\nm2\nm3\n");
        assert_eq!((report.received, report.stopped), (3, Stopped::EndOfQueue));
    }

    /// `--follow` is a collector: it takes every message whatever --count says, and ends only
    /// when --timeout passes without one.
    #[tokio::test]
    async fn follow_receives_past_the_count_until_idle() {
        let broker = MemoryBroker::start().await;
        let url = broker.url();
        produce(&produce_args(&[
            "-u", &url, "-d", "/queue/q", "-n", "5", "-s", "4",
        ]))
        .await
        .unwrap();
        let mut out = Vec::new();
        let args = consume_args(&[
            "-u",
            &url,
            "-d",
            "queue://q",
            "-n",
            "2",
            "--follow",
            "-t",
            "200ms",
        ]);
        let report = execute(&args, &mut out).await.unwrap();
        assert_eq!(report.received, 5);
        assert_eq!(report.stopped, Stopped::Idle(Duration::from_millis(200)));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1 xx\n2 xx\n3 xx\n4 xx\n5 xx\n"
        );
    }

    #[tokio::test]
    async fn stops_after_the_timeout_without_messages() {
        let broker = MemoryBroker::start().await;
        let url = broker.url();
        let args = consume_args(&[
            "-u",
            &url,
            "-d",
            "queue://empty",
            "-n",
            "1",
            "-t",
            "100ms",
            "-q",
        ]);
        let mut out = Vec::new();
        let report = execute(&args, &mut out).await.unwrap();
        assert_eq!(report.stopped, Stopped::Idle(Duration::from_millis(100)));
        assert_eq!(report.received, 0);
        assert!(out.is_empty());
    }

    /// `consume -n 2` over a failover URL: the broker applies the first ACK and dies before
    /// confirming it, so that message never comes again. It was received: consume counts it
    /// and ends once the second arrives, instead of waiting for a third.
    #[tokio::test]
    async fn an_ack_applied_before_a_failover_counts_its_message() {
        use crate::client::fake_broker::{message_frame, FakeListener};
        use crate::protocol::stomp::frame::Command;
        let server = FakeListener::bind().await;
        let url = fast_failover(&[&server]);
        let peer = tokio::spawn(async move {
            let (mut connection, subscribe) = server.subscribed("client-individual").await;
            let id = subscribe.get("id").unwrap().to_string();
            connection
                .send(message_frame(&id, "/queue/q", 1, "a1"))
                .await;
            connection.expect(Command::Ack).await;
            connection.close().await; // applied, never confirmed
            let mut connection = server.accept().await;
            connection.handshake().await;
            connection.expect(Command::Subscribe).await;
            connection
                .send(message_frame(&id, "/queue/q", 2, "b2"))
                .await;
            connection.receipts_until_disconnect().await;
        });
        let args = consume_args(&["-u", &url, "-d", "queue://q", "-n", "2", "-t", "3s"]);
        let mut out = Vec::new();
        let report = execute(&args, &mut out).await.unwrap();
        peer.abort();
        assert_eq!((report.stopped, report.received), (Stopped::Complete, 2));
        assert_eq!(String::from_utf8(out).unwrap(), "m1\nm2\n");
    }

    /// A consumer does not wait for each ACK's RECEIPT before taking the next message: with
    /// one ACK at a time it read one message per round trip (about 80 msg/s from a topic under
    /// load, where the broker then discarded most lines for it as for any slow subscriber).
    /// This broker answers no ACK until it has all five.
    #[tokio::test]
    async fn acknowledgements_are_pipelined() {
        use crate::client::fake_broker::{message_frame, FakeListener};
        use crate::protocol::stomp::frame::Command;
        let server = FakeListener::bind().await;
        let url = server.url();
        let peer = tokio::spawn(async move {
            let (mut connection, subscribe) = server.subscribed("client-individual").await;
            let id = subscribe.get("id").unwrap().to_string();
            for n in 1..=5 {
                let ack = format!("a{n}");
                connection
                    .send(message_frame(&id, "/queue/q", n, &ack))
                    .await;
            }
            let mut acks = Vec::new();
            for _ in 1..=5 {
                acks.push(connection.expect(Command::Ack).await);
            }
            for ack in &acks {
                connection.receipt(ack).await;
            }
            connection.receipts_until_disconnect().await;
        });
        let args = consume_args(&["-u", &url, "-d", "queue://q", "-n", "5"]);
        let mut out = Vec::new();
        let report = tokio::time::timeout(Duration::from_secs(10), execute(&args, &mut out))
            .await
            .expect("consume waited for a RECEIPT the broker gives only once all ACKs are in")
            .unwrap();
        peer.abort();
        assert_eq!((report.stopped, report.received), (Stopped::Complete, 5));
        assert_eq!(String::from_utf8(out).unwrap(), "m1\nm2\nm3\nm4\nm5\n");
    }

    /// `consume --ack client-individual` over a failover URL: the broker dies after the first
    /// ACK is written; the client reconnects and the broker redelivers both messages; consume
    /// ends with both received.
    #[tokio::test]
    async fn consume_with_client_acks_goes_on_through_a_failover() {
        use crate::client::fake_broker::{message_frame, FakeListener};
        use crate::protocol::stomp::frame::Command;
        let server = FakeListener::bind().await;
        let url = fast_failover(&[&server]);
        let message = |id: &str, n: u32, ack: &str| message_frame(id, "/queue/q", n, ack);
        let peer = tokio::spawn(async move {
            let (mut connection, subscribe) = server.subscribed("client-individual").await;
            let id = subscribe.get("id").unwrap().to_string();
            connection.send(message(&id, 1, "a1")).await;
            connection.send(message(&id, 2, "a2")).await;
            connection.expect(Command::Ack).await;
            connection.close().await; // dies before confirming the ACK
            let mut connection = server.accept().await;
            connection.handshake().await;
            connection.expect(Command::Subscribe).await;
            connection.send(message(&id, 1, "b1")).await;
            connection.send(message(&id, 2, "b2")).await;
            connection.receipts_until_disconnect().await;
        });
        let args = consume_args(&[
            "-u",
            &url,
            "-d",
            "queue://q",
            "-n",
            "2",
            "--ack",
            "client-individual",
            "-t",
            "3s",
        ]);
        let mut out = Vec::new();
        let report = execute(&args, &mut out).await.unwrap();
        peer.abort();
        assert_eq!(
            (report.stopped, report.received),
            (Stopped::Complete, 2),
            "output: {:?}",
            String::from_utf8_lossy(&out)
        );
    }
}
