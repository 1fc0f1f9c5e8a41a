//! ferromq's own client library (`ferromq::client`) against the real broker binary.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use ferromq::client::{Client, ClientOptions, SendOptions};
use ferromq_integration_tests::{deadline, wait_until, BrokerProcess, Frame, FRAME_TIMEOUT};

fn bodies(frames: &[Frame]) -> Vec<String> {
    frames.iter().map(Frame::text).collect()
}

/// Runs the CLI with `args` (60 s at most), which must succeed; its standard output.
fn cli_ok(args: &[&str]) -> Result<String> {
    let (status, stdout, stderr) =
        ferromq_integration_tests::run_cli(args, Duration::from_secs(60))?;
    assert!(status.success(), "{args:?}: {status}\n{stderr}");
    Ok(stdout)
}

/// The harness is blocking; run it without stalling the runtime's other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The bodies a fresh STOMP consumer of `queue` receives, up to and including `last`.
fn bodies_until(broker: &BrokerProcess, queue: &str, last: &[u8]) -> Result<Vec<String>> {
    blocking(|| {
        let mut consumer = broker.client()?;
        consumer.subscribe("c", queue, &[])?;
        Ok(bodies(&consumer.recv_until(last, FRAME_TIMEOUT)?))
    })
}

/// A failover client keeps sending through a kill -9 and restart of its broker: every send
/// resolves, and the re-sent ones that the broker had already stored are not stored twice.
///
/// The producer keeps a window of sends in flight until the client has reconnected and sent
/// more, so sends are in flight at the kill however fast the machine is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_client_replays_sends_across_kill9_without_duplicates() -> Result<()> {
    const WINDOW: usize = 500;
    const KILL_AFTER: u64 = 1_000;
    const AFTER_RECONNECT: u64 = 1_000;
    let dir = tempfile::tempdir()?;
    // On a port below the ephemeral range: while the broker is down, the client reconnecting to
    // the port must not be given it as its own local port (a connection to itself), nor
    // another socket take it (see `stable_ports`).
    let mut broker = blocking(|| BrokerProcess::start_on_stable_port(dir.path(), ""))?;
    let url = format!(
        "failover:(tcp://{})?initialReconnectDelay=20&maxReconnectDelay=200&randomize=false",
        broker.addr()
    );
    let client = Client::connect(&url, ClientOptions::default()).await?;
    let queue = "queue://failover";
    let submitted = Arc::new(AtomicU64::new(0));
    let confirmed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (client, submitted, confirmed, stop) = (
            client.clone(),
            submitted.clone(),
            confirmed.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut results = Vec::new();
            let mut in_flight = VecDeque::with_capacity(WINDOW);
            while !stop.load(Ordering::SeqCst) {
                let i = submitted.fetch_add(1, Ordering::SeqCst);
                in_flight.push_back(client.send_nowait(
                    queue,
                    format!("m{i}"),
                    SendOptions::persistent(),
                ));
                if in_flight.len() >= WINDOW {
                    if let Some(oldest) = in_flight.pop_front() {
                        results.push(oldest.await);
                        confirmed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            for handle in in_flight {
                results.push(handle.await);
            }
            results
        })
    };
    let reached = blocking(|| {
        wait_until(deadline(Duration::from_secs(60)), || {
            confirmed.load(Ordering::SeqCst) >= KILL_AFTER
        })
    });
    let at_kill = confirmed.load(Ordering::SeqCst);
    assert!(reached, "only {at_kill} sends confirmed within 60s");
    blocking(|| broker.restart_on_same_port())?;
    let reconnected = blocking(|| {
        wait_until(deadline(Duration::from_secs(60)), || {
            client.reconnects() >= 1
        })
    });
    assert!(reconnected, "the client did not reconnect within 60s");
    let at_reconnect = confirmed.load(Ordering::SeqCst);
    let resumed = blocking(|| {
        wait_until(deadline(Duration::from_secs(60)), || {
            confirmed.load(Ordering::SeqCst) >= at_reconnect + AFTER_RECONNECT
        })
    });
    stop.store(true, Ordering::SeqCst);
    assert!(
        resumed,
        "sends did not resume after the reconnect ({} confirmed)",
        confirmed.load(Ordering::SeqCst)
    );

    let results = tokio::time::timeout(Duration::from_secs(120), producer)
        .await
        .context("sends still unresolved 120s after the producer stopped")??;
    let n = results.len();
    let failed: Vec<(usize, String)> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| (i, e.to_string())))
        .collect();
    assert!(
        failed.is_empty(),
        "{} sends failed across the failover (first: {:?})",
        failed.len(),
        failed.first()
    );
    assert!(client.reconnects() >= 1, "the client never reconnected");
    client.close().await?;

    let got = blocking(|| -> Result<Vec<Frame>> {
        let mut consumer = broker.client()?;
        consumer.send_persistent("/queue/failover", b"sentinel")?;
        consumer.subscribe("c", "/queue/failover", &[])?;
        consumer.recv_until(b"sentinel", Duration::from_secs(120))
    })?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for body in bodies(&got[..got.len() - 1]) {
        *counts.entry(body).or_default() += 1;
    }
    let missing: Vec<usize> = (0..n)
        .filter(|i| !counts.contains_key(&format!("m{i}")))
        .collect();
    let duplicated: Vec<(&String, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    eprintln!(
        "{n} sends, {at_kill} confirmed before kill -9, {} reconnects, {} delivered",
        client.reconnects(),
        got.len() - 1
    );
    assert!(
        missing.is_empty(),
        "{} confirmed messages missing (first: {:?})",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        duplicated.is_empty(),
        "{} messages stored twice after the client re-sent them (first: {:?})",
        duplicated.len(),
        &duplicated[..duplicated.len().min(10)]
    );
    Ok(())
}

/// With ferromq's client, a transacted send followed by a plain send on the same client, then
/// COMMIT: both messages are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_transaction_commit_after_a_plain_send_delivers_both() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = blocking(|| BrokerProcess::start(dir.path(), ""))?;
    let client = Client::connect(&broker.url(), ClientOptions::default()).await?;
    let queue = "queue://client-tx";
    let tx = client.begin().await?;
    tx.send(queue, "in-transaction", SendOptions::persistent())
        .await?;
    client
        .send(queue, "plain", SendOptions::persistent())
        .await?;
    tx.commit().await?;
    client
        .send(queue, "sentinel", SendOptions::persistent())
        .await?;
    client.close().await?;
    assert_eq!(
        bodies_until(&broker, "/queue/client-tx", b"sentinel")?,
        ["plain", "in-transaction", "sentinel"],
        "the committed transacted send was lost"
    );
    Ok(())
}

/// A message over the broker's `max_frame_size` is refused with the broker's reason, once:
/// the broker closes the connection after such a frame, and the client does not send it again
/// on the next connection (where it would be refused again, for ever). The sends around it
/// are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_frame_limit_is_refused_not_resent_for_ever() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker =
        blocking(|| BrokerProcess::start(dir.path(), "[broker]\nmax_frame_size = 4096\n"))?;
    let client = Client::connect(&broker.url(), ClientOptions::default()).await?;
    let queue = "queue://frame-limit";
    client
        .send(queue, "before", SendOptions::persistent())
        .await?;
    let refused = tokio::time::timeout(
        Duration::from_secs(30),
        client.send(queue, vec![b'x'; 10_000], SendOptions::persistent()),
    )
    .await
    .context("the oversized send was neither confirmed nor refused within 30 s")?;
    let error = refused.expect_err("a 10 KB frame confirmed by a broker with a 4 KiB limit");
    assert!(
        error.to_string().contains("frame too large"),
        "refused for another reason: {error}"
    );
    client
        .send(queue, "after", SendOptions::persistent())
        .await?;
    client.close().await?;
    assert_eq!(
        bodies_until(&broker, "/queue/frame-limit", b"after")?,
        ["before", "after"]
    );
    Ok(())
}

/// `ferromq bench --json` with no broker to reach still prints one JSON document on standard
/// output, naming the error, and fails: a script reading it learns why.
#[test]
fn bench_json_without_a_broker_is_a_json_error() -> Result<()> {
    use ferromq_integration_tests::run_cli;
    // A port where connections are refused for the whole test: held by a socket that does not
    // listen, so no other test's listener can take it meanwhile (see `RefusingAddr`).
    let refusing = ferromq_integration_tests::RefusingAddr::new()?;
    let port = refusing.addr().port();
    let url = format!("tcp://127.0.0.1:{port}?maxReconnectAttempts=0");
    let (status, stdout, stderr) = run_cli(
        &["bench", "--url", &url, "-n", "1", "--json"],
        Duration::from_secs(60),
    )?;
    assert!(!status.success(), "{stdout}\n{stderr}");
    let line = stdout.trim();
    assert!(
        line.starts_with("{\"error\":\"") && line.ends_with("\"}") && !line.contains('\n'),
        "not one JSON error document: {stdout:?}"
    );
    assert!(line.contains(&port.to_string()), "{line}");
    drop(refusing);
    Ok(())
}

/// `ferromq consume -n 2` (default `--ack auto`) on a queue of 5 takes 2 off it: what the
/// broker pushed beyond the count was not acknowledged and is there for the next consumer.
#[test]
fn consume_with_a_count_leaves_the_rest_on_the_queue() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), "")?;
    let url = broker.url();
    cli_ok(&[
        "produce",
        "--url",
        &url,
        "-d",
        "queue://rest",
        "-n",
        "5",
        "-s",
        "8",
        "--persistent",
    ])?;
    let first = cli_ok(&["consume", "--url", &url, "-d", "queue://rest", "-n", "2"])?;
    let rest = cli_ok(&[
        "consume",
        "--url",
        &url,
        "-d",
        "queue://rest",
        "-n",
        "3",
        "--timeout",
        "5s",
    ])?;
    let mut all: Vec<&str> = first.lines().chain(rest.lines()).collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(
        (first.lines().count(), rest.lines().count(), all.len()),
        (2, 3, 5),
        "first:\n{first}\nrest:\n{rest}"
    );
    Ok(())
}

/// `consume` of large messages, more than the client's unread limits in one prefetch: it
/// acknowledges each message and waits for the RECEIPT, which comes behind the prefetched
/// messages; all 40 x 1 MiB arrive (before, the consumer stopped reading and hung for good).
#[test]
fn consume_takes_a_prefetch_of_large_messages() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), "")?;
    let url = broker.url();
    let queue = "queue://large";
    cli_ok(&[
        "produce",
        "--url",
        &url,
        "-d",
        queue,
        "-n",
        "40",
        "-s",
        "1MiB",
        "--persistent",
    ])?;
    let lines = cli_ok(&["consume", "--url", &url, "-d", queue, "-n", "40"])?;
    let sizes: Vec<usize> = lines.lines().map(str::len).collect();
    assert_eq!(sizes.len(), 40, "messages consumed");
    assert!(sizes.iter().all(|&n| n == 1 << 20), "sizes {sizes:?}");
    Ok(())
}

/// The CLI as an operator uses it: `produce --stdin` ships each line of standard input as one
/// message (a log file's lines) with `--header`s; `consume --browse` prints the queue and
/// leaves it; `consume --selector` takes only the matching ones and leaves the rest;
/// `consume --durable` with `--client-id` receives what a topic got while it was away.
#[test]
fn cli_ships_lines_filters_by_selector_and_keeps_a_durable_subscription() -> Result<()> {
    use ferromq_integration_tests::{run_cli, run_cli_with_input};
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), "")?;
    let url = broker.url();
    let timeout = Duration::from_secs(60);
    let ok = |(status, stdout, stderr): (std::process::ExitStatus, String, String)| {
        assert!(
            status.success(),
            "{status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        stdout
    };
    let produce = |destination: &str, level: &str, input: &[u8]| -> Result<String> {
        let header = format!("level={level}");
        let args = [
            "produce",
            "--url",
            &url,
            "-d",
            destination,
            "--stdin",
            "--persistent",
            "-w",
            "8",
            "-H",
            &header,
        ];
        Ok(ok(run_cli_with_input(&args, input, timeout)?))
    };
    // The info lines are ahead on the queue: only the selector skips them.
    let shipped = produce("queue://logs", "info", b"started\nlistening\nready")?;
    assert!(shipped.contains("confirmed 3"), "{shipped}");
    let shipped = produce("queue://logs", "error", b"disk full\r\nretrying\n")?;
    assert!(shipped.contains("confirmed 2"), "{shipped}");

    let consume = |extra: &[&str]| -> Result<(std::process::ExitStatus, String, String)> {
        let mut args = vec!["consume", "--url", &url];
        args.extend_from_slice(extra);
        if !extra.contains(&"--timeout") {
            args.extend_from_slice(&["--timeout", "3s"]);
        }
        run_cli(&args, timeout)
    };
    // A browse prints what the queue holds and leaves it there.
    let (status, browsed, stderr) = consume(&["-d", "queue://logs", "--browse"])?;
    assert!(
        status.success() && stderr.contains("the end of the browse"),
        "browse: {status}\n{stderr}"
    );
    assert_eq!(browsed, "started\nlistening\nready\ndisk full\nretrying\n");
    let errors = ok(consume(&[
        "-d",
        "queue://logs",
        "-n",
        "2",
        "--selector",
        "level = 'error'",
    ])?);
    assert_eq!(errors, "disk full\nretrying\n");
    let rest = ok(consume(&["-d", "queue://logs", "-n", "3"])?);
    assert_eq!(rest, "started\nlistening\nready\n");

    // A durable subscription: registered once, away while the topic gets messages, back.
    let durable = [
        "-d",
        "topic://events",
        "--durable",
        "audit",
        "--client-id",
        "auditor",
    ];
    let (status, _, stderr) =
        consume(&[&durable[..], &["-n", "1", "--timeout", "200ms"]].concat())?;
    assert!(
        !status.success() && stderr.contains("received 0 of 1"),
        "registering the durable subscription: {status}\n{stderr}"
    );
    ok(run_cli(
        &[
            "produce",
            "--url",
            &url,
            "-d",
            "topic://events",
            "-n",
            "3",
            "-m",
            "event",
            "--persistent",
        ],
        timeout,
    )?);
    let kept = ok(consume(&[&durable[..], &["-n", "3"]].concat())?);
    assert_eq!(kept, "event\nevent\nevent\n");

    // docs/operations.md's virtual-topic recipe: the archive's consumer queue gets every line,
    // the alerting system's durable subscription with a selector keeps only the errors.
    let archive = ["-d", "queue://Consumer.archive.VirtualTopic.logs"];
    let alerting = [
        "-d",
        "topic://VirtualTopic.logs",
        "--client-id",
        "alerting",
        "--durable",
        "errors",
        "--selector",
        "level = 'error'",
    ];
    for first in [&archive[..], &alerting[..]] {
        let (status, _, stderr) = consume(&[first, &["-n", "1", "--timeout", "200ms"]].concat())?;
        assert!(stderr.contains("received 0 of 1"), "{status}\n{stderr}");
    }
    let ship = |level: &str, input: &[u8]| produce("topic://VirtualTopic.logs", level, input);
    ship("info", b"started\nready\n")?;
    ship("error", b"disk full\n")?;
    ship("info", b"stopping\n")?;
    let all = ok(consume(&[&archive[..], &["-n", "4"]].concat())?);
    assert_eq!(all, "started\nready\ndisk full\nstopping\n");
    let errors = ok(consume(&[&alerting[..], &["-n", "1"]].concat())?);
    assert_eq!(errors, "disk full\n");
    let (status, rest, stderr) =
        consume(&[&alerting[..], &["-n", "1", "--timeout", "300ms"]].concat())?;
    assert!(
        rest.is_empty() && stderr.contains("received 0 of 1"),
        "the durable subscription kept lines its selector does not match: {status}\n{rest}\n{stderr}"
    );

    // Usage errors name what is wrong.
    let (status, _, stderr) = consume(&["-d", "topic://events", "--durable", "audit"])?;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--client-id"), "{stderr}");
    let (status, _, stderr) =
        consume(&["-d", "queue://logs", "--durable", "x", "--client-id", "y"])?;
    assert!(
        !status.success() && stderr.contains("--durable subscribes to a topic"),
        "{status}\n{stderr}"
    );
    Ok(())
}
