//! What survives a crash or a restart: receipted persistent messages, durable subscriptions,
//! stored queues; and what does not get delivered at all: expired messages.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use ferromq_integration_tests::{
    deadline, now_ms, wait_until, BrokerProcess, Frame, Incoming, StompClient, FRAME_TIMEOUT,
};

const LONG: Duration = Duration::from_secs(120);

fn bodies(frames: &[Frame]) -> Vec<String> {
    frames.iter().map(Frame::text).collect()
}

/// What one producer of the kill -9 test saw.
#[derive(Debug, Default)]
struct ProducerRun {
    /// Bodies whose RECEIPT arrived.
    receipted: Vec<String>,
    /// SEND frames written (receipted or not).
    sent: usize,
    /// True if it sent everything and got every receipt: the kill came too late.
    finished: bool,
    /// How the stream ended.
    ended_by: String,
}

/// Test 1: kill -9 in the middle of several producers' streams of receipted persistent sends;
/// after a restart every receipted message is delivered, and none twice.
#[test]
fn kill9_mid_stream_loses_no_receipted_message() -> Result<()> {
    const PRODUCERS: usize = 4;
    /// An upper bound only: the broker is killed long before.
    const MAX_PER_PRODUCER: usize = 20_000;
    const KILL_AFTER_RECEIPTS: u64 = 2_000;
    const WINDOW: usize = 32;
    let dir = tempfile::tempdir()?;
    let mut broker = BrokerProcess::start(dir.path(), "")?;
    let queue = "/queue/kill9";
    let receipts = Arc::new(AtomicU64::new(0));

    // Every producer is connected before any sends: none connects after the kill.
    let connected = Arc::new(std::sync::Barrier::new(PRODUCERS));
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let addr = broker.addr();
        let receipts = receipts.clone();
        let connected = connected.clone();
        producers.push(std::thread::spawn(move || -> Result<ProducerRun> {
            let client = StompClient::connect(addr);
            connected.wait();
            let mut client = client?;
            let mut run = ProducerRun::default();
            let mut outstanding: BTreeMap<String, String> = BTreeMap::new();
            loop {
                if run.sent < MAX_PER_PRODUCER && outstanding.len() < WINDOW {
                    let body = format!("p{p}-{}", run.sent);
                    let receipt = format!("r{}", run.sent);
                    let frame = Frame::new("SEND")
                        .header("destination", queue)
                        .header("persistent", "true")
                        .header("receipt", receipt.clone())
                        .body(body.clone());
                    if let Err(e) = client.send_frame(&frame) {
                        run.ended_by = format!("write failed: {e:#}");
                        return Ok(run);
                    }
                    outstanding.insert(receipt, body);
                    run.sent += 1;
                    continue;
                }
                if outstanding.is_empty() {
                    run.finished = true;
                    run.ended_by = "sent everything".into();
                    return Ok(run);
                }
                match client.poll(Duration::from_secs(30)) {
                    Ok(Incoming::Frame(f)) if f.command == "RECEIPT" => {
                        let id = f.get("receipt-id").unwrap_or_default().to_string();
                        let body = outstanding
                            .remove(&id)
                            .with_context(|| format!("RECEIPT for unknown id {id:?}"))?;
                        run.receipted.push(body);
                        receipts.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Incoming::Frame(f)) => {
                        run.ended_by = format!("unexpected frame {f:?}");
                        return Ok(run);
                    }
                    Ok(Incoming::Closed) => {
                        run.ended_by = "connection closed".into();
                        return Ok(run);
                    }
                    Ok(Incoming::TimedOut) => {
                        run.ended_by = "no RECEIPT for 30s".into();
                        return Ok(run);
                    }
                    Err(e) => {
                        run.ended_by = format!("read failed: {e:#}");
                        return Ok(run);
                    }
                }
            }
        }));
    }

    let reached = wait_until(deadline(LONG), || {
        receipts.load(Ordering::Relaxed) >= KILL_AFTER_RECEIPTS
    });
    let at_kill = receipts.load(Ordering::Relaxed);
    broker.kill9();
    assert!(
        reached,
        "only {at_kill} receipts within {LONG:?}; expected {KILL_AFTER_RECEIPTS}"
    );
    let runs: Vec<ProducerRun> = producers
        .into_iter()
        .map(|h| h.join().expect("producer thread"))
        .collect::<Result<_>>()?;
    for (p, run) in runs.iter().enumerate() {
        eprintln!(
            "producer {p}: sent {}, receipted {}, ended by {}",
            run.sent,
            run.receipted.len(),
            run.ended_by
        );
        assert!(
            !run.finished,
            "producer {p} finished before the kill: the test did not kill mid-stream"
        );
        assert!(
            !run.ended_by.starts_with("unexpected frame")
                && !run.ended_by.starts_with("no RECEIPT"),
            "producer {p}: {}",
            run.ended_by
        );
    }
    let receipted: BTreeSet<String> = runs.iter().flat_map(|r| r.receipted.clone()).collect();
    let total_sent: usize = runs.iter().map(|r| r.sent).sum();

    broker.restart()?;
    let mut consumer = broker.client()?;
    consumer.send_persistent(queue, b"sentinel")?;
    consumer.subscribe("after-crash", queue, &[])?;
    let delivered = consumer.recv_until(b"sentinel", LONG)?;
    let delivered: Vec<String> = bodies(&delivered[..delivered.len() - 1]);

    let mut seen: BTreeSet<String> = BTreeSet::new();
    let duplicates: Vec<&String> = delivered
        .iter()
        .filter(|b| !seen.insert(b.to_string()))
        .collect();
    let missing: Vec<&String> = receipted.difference(&seen).collect();
    let unreceipted = seen.difference(&receipted).count();
    eprintln!(
        "sent {total_sent}, receipted {}, delivered after restart {} ({unreceipted} of them \
         unreceipted)",
        receipted.len(),
        delivered.len()
    );
    assert!(
        missing.is_empty(),
        "{} receipted messages lost by kill -9 (first: {:?})",
        missing.len(),
        missing.iter().take(10).collect::<Vec<_>>()
    );
    assert!(
        duplicates.is_empty(),
        "{} messages delivered twice after kill -9 (first: {:?})",
        duplicates.len(),
        duplicates.iter().take(10).collect::<Vec<_>>()
    );
    for body in &delivered {
        let ok = body
            .strip_prefix('p')
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(p, n)| Some((p.parse::<usize>().ok()?, n.parse::<usize>().ok()?)))
            .is_some_and(|(p, n)| p < PRODUCERS && n < runs[p].sent);
        assert!(ok, "delivered a message nobody sent: {body:?}");
    }
    // Per producer, the stored messages come back in the order they were sent.
    for p in 0..PRODUCERS {
        let prefix = format!("p{p}-");
        let order: Vec<usize> = delivered
            .iter()
            .filter_map(|b| b.strip_prefix(&prefix)?.parse().ok())
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "producer {p}'s messages out of order after recovery"
        );
    }
    Ok(())
}

/// Test 3: a durable topic subscription collects persistent messages while its client is away,
/// across a reconnect and across a broker crash; UNSUBSCRIBE with the subscription name deletes
/// it.
#[test]
fn durable_subscription_survives_reconnect_and_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut broker = BrokerProcess::start(dir.path(), "")?;
    let topic = "/topic/news";
    let durable = [("activemq.subscriptionName", "news-sub")];
    let connect =
        |b: &BrokerProcess| StompClient::connect_with(b.addr(), &[("client-id", "reader")]);

    let mut reader = connect(&broker)?;
    reader.subscribe("d", topic, &durable)?;
    reader.disconnect()?;

    let mut producer = broker.client()?;
    for i in 0..10 {
        producer.send_persistent(topic, format!("a{i}").as_bytes())?;
    }
    let mut reader = connect(&broker)?;
    reader.subscribe("d", topic, &[durable[0], ("ack", "client")])?;
    let mut got = Vec::new();
    for _ in 0..10 {
        got.push(reader.recv_message(FRAME_TIMEOUT)?);
    }
    assert_eq!(
        bodies(&got),
        (0..10).map(|i| format!("a{i}")).collect::<Vec<_>>(),
        "messages published while the durable subscriber was away"
    );
    reader.ack(got.last().expect("ten"))?;
    reader.disconnect()?;

    for i in 0..10 {
        producer.send_persistent(topic, format!("b{i}").as_bytes())?;
    }
    broker.kill9();
    broker.restart()?;

    let mut producer = broker.client()?;
    let mut reader = connect(&broker)?;
    reader.subscribe("d", topic, &[durable[0], ("ack", "client")])?;
    producer.send_persistent(topic, b"sentinel")?;
    let got = reader.recv_until(b"sentinel", FRAME_TIMEOUT)?;
    let mut expected: Vec<String> = (0..10).map(|i| format!("b{i}")).collect();
    expected.push("sentinel".into());
    assert_eq!(
        bodies(&got),
        expected,
        "after a crash, a durable subscription has exactly its unacknowledged messages"
    );
    reader.ack(got.last().expect("non-empty"))?;

    // UNSUBSCRIBE by id, then with the subscription name, deletes it (as in ActiveMQ, naming
    // it while subscribed is refused): what is published next is not kept.
    reader.request(Frame::new("UNSUBSCRIBE").header("id", "d"))?;
    reader.request(
        Frame::new("UNSUBSCRIBE")
            .header("id", "d")
            .header("activemq.subscriptionName", "news-sub"),
    )?;
    reader.disconnect()?;
    for i in 0..5 {
        producer.send_persistent(topic, format!("c{i}").as_bytes())?;
    }
    let mut reader = connect(&broker)?;
    reader.subscribe("d", topic, &durable)?;
    producer.send_persistent(topic, b"sentinel-2")?;
    let got = reader.recv_until(b"sentinel-2", FRAME_TIMEOUT)?;
    assert_eq!(
        bodies(&got),
        ["sentinel-2"],
        "a deleted durable subscription kept collecting messages"
    );
    Ok(())
}

/// Test 10a: stored messages survive a clean restart (SIGTERM), and the broker exits cleanly.
#[test]
fn restart_keeps_persistent_messages() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut broker = BrokerProcess::start(dir.path(), "")?;
    let queue = "/queue/kept";
    let mut producer = broker.client()?;
    let sent: Vec<String> = (0..100).map(|i| format!("kept-{i}")).collect();
    for body in &sent {
        producer.send_persistent(queue, body.as_bytes())?;
    }
    // Half of them consumed and acknowledged before the restart.
    let mut consumer = broker.client()?;
    assert_eq!(consumer.consume_acked(queue, 50)?, sent[..50]);
    consumer.disconnect()?;
    producer.disconnect()?;

    let status = broker.terminate(Duration::from_secs(30))?;
    assert!(
        status.success(),
        "broker exit status after SIGTERM: {status}"
    );
    broker.restart()?;

    assert_eq!(
        broker.remaining_bodies(queue)?,
        sent[50..],
        "after a restart: the unacknowledged half, once, in order"
    );
    Ok(())
}

/// Test 10b: messages whose `expires` time has passed are not delivered, whether they expired
/// before they were sent or while they waited on the queue.
#[test]
fn expired_messages_are_not_delivered() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), "")?;
    let mut producer = broker.client()?;

    // Already expired when sent, to a queue with a consumer waiting.
    let queue = "/queue/expired-on-arrival";
    let mut consumer = broker.client()?;
    consumer.subscribe("c", queue, &[])?;
    let past = (now_ms() - 60_000).to_string();
    producer.send(
        queue,
        b"stale-persistent",
        &[("persistent", "true"), ("expires", &past)],
    )?;
    producer.send(queue, b"stale-transient", &[("expires", &past)])?;
    producer.send_persistent(queue, b"fresh")?;
    producer.send_persistent(queue, b"sentinel")?;
    let got = consumer.recv_until(b"sentinel", FRAME_TIMEOUT)?;
    assert_eq!(bodies(&got), ["fresh", "sentinel"]);

    // Expires while it waits on a queue with no consumer.
    let queue = "/queue/expires-while-waiting";
    let soon = now_ms() + 1_500;
    let later = (now_ms() + 600_000).to_string();
    producer.send(
        queue,
        b"short-lived",
        &[("persistent", "true"), ("expires", &soon.to_string())],
    )?;
    producer.send(
        queue,
        b"long-lived",
        &[("persistent", "true"), ("expires", &later)],
    )?;
    producer.send(
        queue,
        b"short-lived-transient",
        &[("expires", &soon.to_string())],
    )?;
    assert!(
        wait_until(deadline(Duration::from_secs(30)), || now_ms() > soon + 100),
        "clock"
    );
    let mut consumer = broker.client()?;
    consumer.subscribe("c", queue, &[])?;
    producer.send_persistent(queue, b"sentinel")?;
    let got = consumer.recv_until(b"sentinel", FRAME_TIMEOUT)?;
    assert_eq!(bodies(&got), ["long-lived", "sentinel"]);
    assert_eq!(
        got[0].get("expires"),
        Some(later.as_str()),
        "a MESSAGE carries its expires header"
    );
    Ok(())
}

/// Test 10c: a backlog larger than `memory_limit` (ActiveMQ's `memoryUsage`) waits with its
/// bodies in the journal: the broker says so in its log, and after `kill -9` and a restart
/// every receipted message is delivered whole, once, in order.
#[test]
fn a_backlog_larger_than_the_memory_limit_is_delivered_whole_after_kill9() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut broker = BrokerProcess::start(dir.path(), "[broker]\nmemory_limit = \"16KiB\"\n")?;
    let queue = "/queue/backlog";
    let body_of = |i: usize| format!("{i:05}-{}", "b".repeat(2042));
    let mut producer = broker.client()?;
    for i in 0..300 {
        producer.send_persistent(queue, body_of(i).as_bytes())?;
    }
    assert!(
        wait_until(deadline(FRAME_TIMEOUT), || {
            broker.logs_contain("queued message bodies reached memory_limit")
        }),
        "the broker logs that it keeps the backlog's bodies on disk"
    );
    broker.kill9();
    broker.restart()?;

    let remaining = broker.remaining_bodies(queue)?;
    assert_eq!(remaining.len(), 300);
    assert!(
        remaining == (0..300).map(body_of).collect::<Vec<_>>(),
        "after kill -9 and a restart: every message, whole, once, in order"
    );
    Ok(())
}

/// Test 10d: as in ActiveMQ, a persistent send to a temporary queue is not stored: it is
/// delivered while the broker runs, and gone after `kill -9` and a restart (a stored one would
/// keep its journal segment forever once its temporary queue is gone).
#[test]
fn persistent_sends_to_a_temporary_queue_are_not_stored() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut broker = BrokerProcess::start(dir.path(), "")?;
    let mut producer = broker.client()?;
    producer.send_persistent("/temp-queue/replies", b"reply")?;
    producer.send_persistent("/queue/kept", b"kept")?;
    // `/temp-queue/replies` is the producer's own; other connections reach it by the name a
    // `reply-to` gives them, `/remote-temp-queue/ID:...`.
    producer.send("/queue/names", b"", &[("reply-to", "/temp-queue/replies")])?;
    let mut reader = broker.client()?;
    reader.subscribe("names", "/queue/names", &[])?;
    let named = reader.recv_message(FRAME_TIMEOUT)?;
    let replies = named.get("reply-to").context("no reply-to")?.to_string();
    assert_eq!(broker.remaining_bodies(&replies)?, ["reply"]);
    producer.send_persistent("/temp-queue/replies", b"lost with the broker")?;
    broker.kill9();
    broker.restart()?;
    assert_eq!(broker.remaining_bodies("/queue/kept")?, ["kept"]);
    // The journal held the one queue message only (a stored temporary one would count too).
    assert!(
        broker.logs_contain("live_messages=1 "),
        "the restarted store should hold one message"
    );
    // Nothing of the temporary queue came back: it is gone with its connection, and reading
    // it is refused, naming it.
    let gone = broker
        .remaining_bodies(&replies)
        .expect_err("a temporary queue outlived its connection");
    assert!(format!("{gone:#}").contains("does not exist"), "{gone:#}");
    Ok(())
}

/// A store directory that is a file is refused at start with one clear line (the OS error
/// said once) and the exit status supervisors do not retry, 2: a restart cannot mend it.
#[test]
fn a_store_directory_that_is_a_file_is_refused_with_status_2() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, "x")?;
    let config = dir.path().join("ferromq.toml");
    std::fs::write(
        &config,
        format!(
            "[transport]\nconnectors = [\"tcp://127.0.0.1:0\"]\n[store]\ndirectory = {}\n",
            ferromq_integration_tests::toml_string(&file.to_string_lossy())
        ),
    )?;
    let config = config.to_string_lossy();
    // A broker that started instead of refusing is killed at the deadline (an error here).
    let (status, _, stderr) = ferromq_integration_tests::run_cli(
        &["broker", "--config", &config],
        Duration::from_secs(60),
    )?;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("create directory") && stderr.contains("not-a-directory"),
        "the refusal should name the directory: {stderr}"
    );
    assert_eq!(
        stderr.matches("os error").count(),
        1,
        "the OS error should be said once: {stderr}"
    );
    Ok(())
}

/// A standalone store with a corrupt frame in a finished segment (a bad disk, a stray write)
/// holds confirmed records after it: the broker refuses to start, naming the segment and the
/// way out, and exits with status 2, which the shipped systemd unit does not retry
/// (`RestartPreventExitStatus=2`): starting again cannot mend it, a person must.
#[test]
fn a_damaged_store_refuses_to_start_with_the_status_supervisors_do_not_retry() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = format!(
        "[transport]\nconnectors = [\"tcp://127.0.0.1:0\"]\n[store]\ndirectory = {}\nlog_size = \"1MiB\"\n",
        ferromq_integration_tests::toml_string(&dir.path().join("data").to_string_lossy())
    );
    let mut broker = BrokerProcess::start_with_config("damaged", dir.path(), &config)?;
    let mut producer = broker.client()?;
    // 3 MiB of confirmed messages: the first 1 MiB segment is finished, records follow it.
    let body = vec![b'x'; 16 * 1024];
    for _ in 0..192 {
        producer.send_persistent("/queue/kept", &body)?;
    }
    broker.kill9();
    let first = dir.path().join("data").join("0000000000000000.log");
    let mut bytes = std::fs::read(&first)?;
    bytes[200_000] ^= 0x5a;
    std::fs::write(&first, bytes)?;

    let refused = broker.restart();
    assert!(
        refused.is_err(),
        "a store with a corrupt finished segment started"
    );
    let status = broker.exit_status().context("the broker has not exited")?;
    assert_eq!(
        status.code(),
        Some(2),
        "a refusal only a person can mend must exit 2; logs:\n{}",
        broker.logs().join("\n")
    );
    assert!(
        broker.logs_contain("not a torn tail"),
        "the refusal should say why: {}",
        broker.logs().join("\n")
    );
    Ok(())
}

/// SIGHUP (a closed terminal or session, `kill -HUP`) stops the broker as SIGTERM does: an
/// orderly shutdown, status 0, and what it confirmed is there after a restart.
#[test]
fn a_hangup_stops_the_broker_in_order() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut broker = BrokerProcess::start(dir.path(), "")?;
    let mut producer = broker.client()?;
    producer.send_persistent("/queue/hup", b"kept")?;
    broker.signal("HUP")?;
    let deadline = ferromq_integration_tests::deadline(Duration::from_secs(30));
    let stopped = ferromq_integration_tests::wait_until(deadline, || !broker.is_running());
    assert!(stopped, "the broker did not stop on SIGHUP");
    assert_eq!(broker.exit_status().and_then(|s| s.code()), Some(0));
    assert!(broker.logs_contain("shutting down"), "no orderly shutdown");
    broker.restart()?;
    let mut consumer = broker.client()?;
    consumer.subscribe("s", "/queue/hup", &[("ack", "auto")])?;
    assert_eq!(consumer.recv_message(FRAME_TIMEOUT)?.text(), "kept");
    Ok(())
}
