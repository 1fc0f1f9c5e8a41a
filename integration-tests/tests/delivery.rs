//! Delivery semantics as a STOMP client sees them: acknowledgement modes, redelivery,
//! transactions, prefetch isolation, duplicate detection, the dead-letter queue and protocol
//! versions. Each test starts its own broker in a temporary directory.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use ferromq_integration_tests::{
    deadline, wait_until, BrokerProcess, Frame, StompClient, FRAME_TIMEOUT,
};

const LONG: Duration = Duration::from_secs(60);

fn bodies(frames: &[Frame]) -> Vec<String> {
    frames.iter().map(Frame::text).collect()
}

/// Sends a persistent `sentinel` to `destination` from `producer` and checks that it is the
/// next message `consumer` gets: nothing else was left there for it.
fn expect_only_sentinel(
    producer: &mut StompClient,
    consumer: &mut StompClient,
    destination: &str,
    what: &str,
) -> Result<()> {
    producer.send_persistent(destination, b"sentinel")?;
    let rest = bodies(&consumer.recv_until(b"sentinel", FRAME_TIMEOUT)?);
    ensure!(rest == ["sentinel"], "{what}: got {rest:?}");
    Ok(())
}

/// Test 2: a client-ack consumer that disconnects without acknowledging gives its messages
/// back; the next consumer gets them flagged as redelivered.
#[test]
fn client_ack_messages_are_redelivered_after_a_disconnect() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), "")?;
    let queue = "/queue/redeliver";
    let mut producer = broker.client()?;
    let sent: Vec<String> = (0..5).map(|i| format!("m{i}")).collect();
    for body in &sent {
        producer.send_persistent(queue, body.as_bytes())?;
    }

    let mut first = broker.client()?;
    first.subscribe("a", queue, &[("ack", "client")])?;
    let mut got = Vec::new();
    for _ in 0..sent.len() {
        let m = first.recv_message(FRAME_TIMEOUT)?;
        ensure!(
            m.get("redelivered").is_none(),
            "first delivery flagged as redelivered: {m:?}"
        );
        ensure!(
            m.get("subscription") == Some("a"),
            "subscription header: {m:?}"
        );
        ensure!(
            m.get("destination") == Some(queue),
            "destination header: {m:?}"
        );
        ensure!(m.get("message-id").is_some(), "no message-id: {m:?}");
        ensure!(m.get("ack").is_some(), "no ack header in STOMP 1.2: {m:?}");
        got.push(m.text());
    }
    assert_eq!(got, sent, "first consumer's messages");
    first.drop_connection();

    let mut second = broker.client()?;
    second.subscribe("b", queue, &[("ack", "client-individual")])?;
    let mut again = Vec::new();
    for _ in 0..sent.len() {
        let m = second.recv_message(FRAME_TIMEOUT)?;
        assert_eq!(
            m.get("redelivered"),
            Some("true"),
            "a message the first consumer never acknowledged must come back with \
             redelivered:true: {m:?}"
        );
        assert_eq!(
            m.get("redelivery-count"),
            Some("1"),
            "redelivery-count: {m:?}"
        );
        second.ack(&m)?;
        again.push(m.text());
    }
    assert_eq!(again, sent, "redelivered messages, in order");

    // Acknowledged now: nothing is left but what we send next.
    expect_only_sentinel(
        &mut producer,
        &mut second,
        queue,
        "acknowledged messages came back",
    )
}

/// Test 4a: sends in an aborted transaction are never delivered; a committed one is.
#[test]
fn transaction_abort_discards_sends_and_commit_delivers_them() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), "")?;
    let queue = "/queue/tx";
    let mut consumer = broker.client()?;
    consumer.subscribe("c", queue, &[])?;

    let mut producer = broker.client()?;
    producer.request(Frame::new("BEGIN").header("transaction", "tx1"))?;
    for i in 0..3 {
        producer.send(
            queue,
            format!("aborted-{i}").as_bytes(),
            &[("transaction", "tx1"), ("persistent", "true")],
        )?;
    }
    producer.request(Frame::new("ABORT").header("transaction", "tx1"))?;

    producer.request(Frame::new("BEGIN").header("transaction", "tx2"))?;
    producer.send(
        queue,
        b"committed",
        &[("transaction", "tx2"), ("persistent", "true")],
    )?;
    producer.send(queue, b"committed-transient", &[("transaction", "tx2")])?;
    producer.request(Frame::new("COMMIT").header("transaction", "tx2"))?;
    producer.send_persistent(queue, b"sentinel")?;
    let got = consumer.recv_until(b"sentinel", FRAME_TIMEOUT)?;
    assert_eq!(
        bodies(&got),
        ["committed", "committed-transient", "sentinel"],
        "aborted sends must never be delivered, committed ones must"
    );
    Ok(())
}

/// Test 4b: a transacted send becomes visible at COMMIT, even when the same connection sent
/// other (non-transacted) messages after it and before the commit.
#[test]
fn transacted_send_is_delivered_at_commit_after_interleaved_plain_sends() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), "")?;
    let queue = "/queue/tx-interleaved";
    let mut consumer = broker.client()?;
    consumer.subscribe("c", queue, &[])?;

    let mut producer = broker.client()?;
    producer.request(Frame::new("BEGIN").header("transaction", "tx"))?;
    producer.send(
        queue,
        b"committed",
        &[("transaction", "tx"), ("persistent", "true")],
    )?;
    producer.send_persistent(queue, b"outside")?;
    let m = consumer.recv_message(FRAME_TIMEOUT)?;
    assert_eq!(
        m.text(),
        "outside",
        "before COMMIT only the non-transacted message may be delivered"
    );
    producer.request(Frame::new("COMMIT").header("transaction", "tx"))?;
    producer.send_persistent(queue, b"sentinel")?;
    let rest = consumer.recv_until(b"sentinel", FRAME_TIMEOUT)?;
    assert_eq!(
        bodies(&rest),
        ["committed", "sentinel"],
        "the committed transacted send was not delivered (it was sent before the plain \
         'outside' message on the same connection)"
    );
    Ok(())
}

/// Test 4c: an acknowledgement in an aborted transaction is undone. As in ActiveMQ, the
/// message stays delivered to its consumer, whose ack id still acknowledges it (here in a
/// committed transaction, after which it never comes back); a message whose aborted
/// acknowledgement is never repeated is redelivered once its consumer goes away.
#[test]
fn transacted_ack_abort_undoes_the_ack_and_commit_removes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), "")?;
    let queue = "/queue/tx-ack";
    let mut producer = broker.client()?;
    let mut acker = broker.client()?;
    acker.subscribe("k", queue, &[("ack", "client-individual")])?;
    producer.send_persistent(queue, b"m1")?;
    producer.send_persistent(queue, b"m2")?;
    let m1 = acker.recv_message(FRAME_TIMEOUT)?;
    let m2 = acker.recv_message(FRAME_TIMEOUT)?;
    assert_eq!((m1.text(), m2.text()), ("m1".into(), "m2".into()));
    acker.request(Frame::new("BEGIN").header("transaction", "tx3"))?;
    for m in [&m1, &m2] {
        acker.request(acker.ack_frame("ACK", m).header("transaction", "tx3"))?;
    }
    acker.request(Frame::new("ABORT").header("transaction", "tx3"))?;

    // m1 is acknowledged again with its first ack id (an ERROR here would close the
    // connection), in a transaction that commits.
    acker.request(Frame::new("BEGIN").header("transaction", "tx4"))?;
    let ack = acker.ack_frame("ACK", &m1).header("transaction", "tx4");
    acker
        .request(ack)
        .context("the ack id of a message whose acknowledgement was aborted was refused")?;
    acker.request(Frame::new("COMMIT").header("transaction", "tx4"))?;
    acker.disconnect()?;

    // m2's acknowledgement was aborted and never repeated: it comes back, marked redelivered;
    // m1 does not.
    let mut after = broker.client()?;
    after.subscribe("z", queue, &[])?;
    let again = after.recv_message(FRAME_TIMEOUT)?;
    assert_eq!(again.text(), "m2");
    assert_eq!(again.get("redelivered"), Some("true"), "{again:?}");
    expect_only_sentinel(
        &mut producer,
        &mut after,
        queue,
        "a message acknowledged in a committed transaction came back",
    )
}

/// Test 5: a consumer that never acknowledges holds its prefetch window and no more; the other
/// consumer on the queue gets everything else.
#[test]
fn a_stuck_queue_consumer_holds_only_its_prefetch() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), "")?;
    let queue = "/queue/isolation";
    let mut stuck = broker.client()?;
    stuck.subscribe(
        "stuck",
        queue,
        &[("ack", "client"), ("activemq.prefetchSize", "10")],
    )?;
    let mut fast = broker.client()?;
    fast.subscribe("fast", queue, &[])?;

    let mut producer = broker.client()?;
    const N: usize = 200;
    for i in 0..N {
        producer.send_nowait(queue, format!("{i}").as_bytes(), &[])?;
    }
    producer.send(queue, b"last-of-batch-receipt", &[])?;

    let mut fast_got = BTreeSet::new();
    let mut stuck_got = BTreeSet::new();
    // 201 messages in all: 10 for the stuck consumer, the rest for the fast one.
    while fast_got.len() < N + 1 - 10 {
        let m = fast.recv_message(FRAME_TIMEOUT).with_context(|| {
            format!(
                "the auto-ack consumer received {} of the expected {}",
                fast_got.len(),
                N + 1 - 10
            )
        })?;
        assert!(fast_got.insert(m.text()), "duplicate delivery {m:?}");
    }
    while stuck_got.len() < 10 {
        let m = stuck
            .recv_message(FRAME_TIMEOUT)
            .with_context(|| format!("the stuck consumer received only {}", stuck_got.len()))?;
        assert!(stuck_got.insert(m.text()), "duplicate delivery {m:?}");
    }
    assert!(
        fast_got.is_disjoint(&stuck_got),
        "a message went to both consumers"
    );
    assert_eq!(fast_got.len() + stuck_got.len(), N + 1);

    // The stuck consumer's window is full: more messages all go to the other consumer.
    for i in 0..20 {
        producer.send(queue, format!("extra-{i}").as_bytes(), &[])?;
    }
    for i in 0..20 {
        let m = fast.recv_message(FRAME_TIMEOUT)?;
        assert_eq!(
            m.text(),
            format!("extra-{i}"),
            "with the stuck consumer's window full, every new message must go to the other \
             consumer, in order"
        );
    }
    Ok(())
}

/// Subscribes `consumer` to `queue` (auto acknowledged) and checks that its next `n` messages
/// are `body_of(0)` to `body_of(n - 1)`: each once, in order.
fn drain_in_order(
    consumer: &mut StompClient,
    queue: &str,
    n: usize,
    body_of: impl Fn(usize) -> String,
) -> Result<()> {
    consumer.subscribe("drain", queue, &[])?;
    for i in 0..n {
        let m = consumer
            .recv_message(LONG)
            .with_context(|| format!("message {i} of {n}"))?;
        assert_eq!(m.text(), body_of(i), "every message once, in order");
    }
    Ok(())
}

/// ActiveMQ's producer flow control: non-persistent messages exist only in memory, so once
/// their queued bodies fill `memory_limit` the broker stops reading their producer's
/// connection, which holds the producer back through TCP, instead of growing until it runs out
/// of memory. The producer promised heart-beats it cannot deliver while held back: that is not
/// held against it. A consumer on another connection drains the queue and the producer goes
/// on: every message arrives, once, in order.
#[test]
fn a_non_persistent_producer_is_held_back_at_the_memory_limit_until_a_consumer_drains() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(
        dir.path(),
        "[broker]\nmemory_limit = \"32KiB\"\n[admin]\nbind = \"tcp://127.0.0.1:0\"\n",
    )?;
    let admin = broker
        .admin_addr()
        .context("the broker logs its admin endpoint")?;
    let queue = "/queue/flow";
    // 1 KiB bodies: 32 fill the limit.
    let body_of = |i: usize| format!("{i:05}-{}", "n".repeat(1018));
    const N: usize = 2000;
    // Promises a heart-beat every 100 ms: the broker would close it after 200 ms of silence.
    let mut producer = StompClient::connect_with(broker.addr(), &[("heart-beat", "100,0")])?;
    let sending = std::thread::spawn(move || -> Result<()> {
        for i in 0..N {
            producer.send_nowait(queue, body_of(i).as_bytes(), &[])?;
        }
        // Answered only once the broker reads it again.
        producer.send(queue, b"last", &[])
    });
    assert!(
        wait_until(deadline(LONG), || broker.logs_contain(
            "queued non-persistent message bodies reached memory_limit"
        )),
        "the broker logs that it holds non-persistent producers back"
    );
    let queued = |name: &str| -> Result<u64> {
        let (_, text) = ferromq_integration_tests::http_get(&admin, "/metrics")?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .with_context(|| format!("{name} in {text}"))
    };
    let depth = queued("ferromq_queue_messages{queue=\"queue://flow\"}")?;
    assert!(
        (32..=64).contains(&depth),
        "at the limit the producer's connection is no longer read: {depth} messages queued of {N}"
    );
    assert!(
        !sending.is_finished(),
        "the receipt of the producer's last send waits for room"
    );
    // Three of the producer's heart-beat windows pass while it is held back.
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        !broker.logs_contain("no heart-beat from client"),
        "a producer held back by the broker is not closed for silence"
    );

    let mut consumer = broker.client()?;
    drain_in_order(&mut consumer, queue, N, body_of)?;
    assert_eq!(consumer.recv_message(FRAME_TIMEOUT)?.text(), "last");
    sending.join().expect("the producer thread")?;
    // The broker frees an auto-acknowledged body once its write is done, which may come just
    // after the client read the frame.
    let mut left = None;
    assert!(
        wait_until(deadline(LONG), || {
            left = queued("ferromq_queued_non_persistent_body_bytes").ok();
            left == Some(0)
        }),
        "non-persistent bodies still counted after the queue was drained: {left:?}"
    );
    Ok(())
}

/// A broker in `dir` whose journal (1 MiB segments) may take `store_limit = "2MiB"`, with
/// `[broker] extra` and an admin endpoint; the endpoint's address.
fn store_limited_broker(dir: &std::path::Path, extra: &str) -> Result<(BrokerProcess, String)> {
    let config = format!(
        "[transport]\nconnectors = [\"tcp://127.0.0.1:0\"]\n\
         [store]\ndirectory = {}\nlog_size = \"1MiB\"\nstore_limit = \"2MiB\"\n\
         [broker]\n{extra}\n[admin]\nbind = \"tcp://127.0.0.1:0\"\n",
        ferromq_integration_tests::toml_string(&dir.join("data").to_string_lossy()),
    );
    let broker = BrokerProcess::start_with_config("store-limit", dir, &config)?;
    let admin = broker
        .admin_addr()
        .context("the broker logs its admin endpoint")?;
    Ok((broker, admin))
}

/// A sample of the admin endpoint's `/metrics`.
fn metric(admin: &str, name: &str) -> Result<u64> {
    let (_, text) = ferromq_integration_tests::http_get(admin, "/metrics")?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .with_context(|| format!("{name} in {text}"))
}

/// A 32 KiB body numbered `i`: 31 fill a 1 MiB segment.
fn store_body(i: usize) -> String {
    format!("{i:05}-{}", "p".repeat(32 * 1024 - 6))
}

/// Sends persistent message `i` to `queue` with a receipt (not waited for); the receipt id.
fn send_numbered(producer: &mut StompClient, queue: &str, i: usize) -> Result<String> {
    let id = producer.receipt_id();
    producer.send_frame(
        &Frame::new("SEND")
            .header("destination", queue)
            .header("persistent", "true")
            .header("receipt", id.clone())
            .body(store_body(i)),
    )?;
    Ok(id)
}

/// ActiveMQ's store limit (`<storeUsage limit>`): once the journal takes `store_limit`, the
/// broker stops reading the connection of a producer of persistent messages, whose next
/// RECEIPT then does not come, until a consumer frees journal segments; the producer then goes
/// on, and every message is delivered exactly once, in order.
#[test]
fn a_persistent_producer_waits_at_the_store_limit_until_a_consumer_drains() -> Result<()> {
    const N: usize = 150;
    let dir = tempfile::tempdir()?;
    let (broker, admin) = store_limited_broker(dir.path(), "")?;
    assert_eq!(metric(&admin, "ferromq_store_limit_bytes")?, 2 << 20);
    assert_eq!(metric(&admin, "ferromq_store_full")?, 0);
    let queue = "/queue/stored";
    let mut producer = broker.client()?;
    // Receipted sends until one's RECEIPT does not come while the store is full.
    let mut stalled = None;
    for i in 0..N {
        let id = send_numbered(&mut producer, queue, i)?;
        let waited = deadline(LONG);
        loop {
            if producer
                .wait_receipt(&id, Duration::from_millis(500))
                .is_ok()
            {
                break;
            }
            if metric(&admin, "ferromq_store_full")? == 1 {
                stalled = Some((i, id));
                break;
            }
            ensure!(
                Instant::now() < waited,
                "no RECEIPT for message {i}, and the store is not full"
            );
        }
        if stalled.is_some() {
            break;
        }
    }
    let (stalled_at, stalled_id) = stalled.context("150 messages of 32 KiB never filled 2 MiB")?;
    assert!(
        (20..=70).contains(&stalled_at),
        "the store filled after {stalled_at} messages of 32 KiB"
    );
    assert!(
        producer
            .wait_receipt(&stalled_id, Duration::from_secs(1))
            .is_err(),
        "no RECEIPT while the store is full"
    );
    assert!(
        broker.logs_contain("the store is full"),
        "the broker logs that the store is full"
    );
    let producing = std::thread::spawn(move || -> Result<StompClient> {
        producer
            .wait_receipt(&stalled_id, LONG)
            .context("the held-back send, once there is room")?;
        for i in stalled_at + 1..N {
            let id = send_numbered(&mut producer, queue, i)?;
            producer
                .wait_receipt(&id, LONG)
                .with_context(|| format!("message {i}"))?;
        }
        Ok(producer)
    });
    let mut consumer = broker.client()?;
    drain_in_order(&mut consumer, queue, N, store_body)?;
    producing.join().expect("the producer thread")?;
    assert!(
        consumer
            .try_recv_message(Duration::from_millis(500))?
            .is_none(),
        "no message twice"
    );
    assert!(
        broker.logs_contain("the store has room again"),
        "the broker logs that the store has room again"
    );
    assert!(
        wait_until(deadline(LONG), || metric(&admin, "ferromq_store_full").ok()
            == Some(0)),
        "the store is under its limit once drained"
    );
    Ok(())
}

/// With `send_fail_if_no_space` (ActiveMQ's `sendFailIfNoSpace`), a persistent send while the
/// store is at `store_limit` is answered with an ERROR naming the limit instead; once a
/// consumer has taken what was stored (each message once), persistent sends are accepted
/// again.
#[test]
fn with_send_fail_if_no_space_a_persistent_send_at_the_store_limit_gets_an_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (broker, admin) = store_limited_broker(dir.path(), "send_fail_if_no_space = true")?;
    let queue = "/queue/refused";
    let mut producer = broker.client()?;
    let mut error = None;
    let mut receipted = 0;
    for i in 0..150 {
        let id = send_numbered(&mut producer, queue, i)?;
        let frame = producer.expect_frame(LONG)?;
        match frame.command.as_str() {
            "RECEIPT" if frame.get("receipt-id") == Some(id.as_str()) => receipted += 1,
            "ERROR" => {
                error = Some(frame);
                break;
            }
            other => anyhow::bail!("unexpected {other} frame"),
        }
    }
    let error = error.context("150 messages of 32 KiB never filled 2 MiB")?;
    let message = format!("{:?} {}", error.get("message"), error.text());
    assert!(
        message.contains("store_limit is 2097152 bytes")
            && message.contains("send_fail_if_no_space"),
        "the ERROR names the limit: {message}"
    );
    assert!((20..=70).contains(&receipted), "{receipted} receipted");
    assert_eq!(metric(&admin, "ferromq_store_full")?, 1);
    // Non-persistent messages are still taken.
    let mut light = broker.client()?;
    light.send(queue, b"light", &[])?;

    let mut consumer = broker.client()?;
    drain_in_order(&mut consumer, queue, receipted, store_body)?;
    assert_eq!(consumer.recv_message(LONG)?.text(), "light");
    assert!(
        wait_until(deadline(LONG), || metric(&admin, "ferromq_store_full").ok()
            == Some(0)),
        "the store is under its limit once drained"
    );
    light.send_persistent(queue, b"after")?;
    assert_eq!(consumer.recv_message(LONG)?.text(), "after");
    Ok(())
}

/// Test 6: slow non-durable topic subscribers (one that never acknowledges, one that never
/// reads its socket) cost neither the producer nor the fast subscriber anything; the slow
/// client-ack subscriber keeps only the newest `topic_pending_limit` messages beyond its
/// prefetch.
#[test]
fn slow_topic_subscribers_do_not_stall_producers_or_others() -> Result<()> {
    const LIMIT: usize = 50;
    const PREFETCH: usize = 10;
    const N: usize = 4000;
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(
        dir.path(),
        &format!("[broker]\ntopic_pending_limit = {LIMIT}\n"),
    )?;
    let topic = "/topic/firehose";

    // Never acknowledges (until the end).
    let mut slow = broker.client()?;
    slow.subscribe(
        "slow",
        topic,
        &[
            ("ack", "client"),
            ("activemq.prefetchSize", &PREFETCH.to_string()),
        ],
    )?;
    // Never reads its socket after subscribing.
    let mut deaf = broker.client()?;
    deaf.subscribe("deaf", topic, &[("activemq.prefetchSize", "20")])?;
    // Reads everything, in its own thread.
    let mut fast = broker.client()?;
    fast.subscribe("fast", topic, &[])?;
    let reader = std::thread::spawn(move || -> Result<Vec<usize>> {
        let mut got = Vec::with_capacity(N);
        while got.len() < N {
            let m = fast
                .recv_message(LONG)
                .with_context(|| format!("fast subscriber after {} messages", got.len()))?;
            let text = m.text();
            let n = text
                .split(':')
                .next()
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("unexpected body {text:?}"))?;
            got.push(n);
        }
        Ok(got)
    });

    let padding = "x".repeat(4096);
    let mut producer = broker.client()?;
    let started = std::time::Instant::now();
    for i in 0..N - 1 {
        producer.send_nowait(topic, format!("{i}:{padding}").as_bytes(), &[])?;
    }
    producer
        .send(topic, format!("{}:{padding}", N - 1).as_bytes(), &[])
        .context("the producer's last send was not receipted: it was held up")?;
    eprintln!("producer sent {N} messages in {:?}", started.elapsed());

    let got = reader.join().expect("reader thread")?;
    assert_eq!(
        got,
        (0..N).collect::<Vec<_>>(),
        "the fast subscriber must get every message in order"
    );

    // Still responsive while the deaf subscriber stalls.
    let mut other = broker.client()?;
    other.subscribe("q", "/queue/still-alive", &[])?;
    other.send("/queue/still-alive", b"ping", &[])?;
    assert_eq!(other.recv_message(FRAME_TIMEOUT)?.text(), "ping");

    // The slow subscriber got its first window, then (once it acknowledges) the newest
    // LIMIT messages: the older ones were discarded for it.
    let mut slow_got = Vec::new();
    while slow_got.len() < PREFETCH {
        slow_got.push(slow.recv_message(FRAME_TIMEOUT)?);
    }
    let first: Vec<usize> = slow_got
        .iter()
        .map(|m| m.text().split(':').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(first, (0..PREFETCH).collect::<Vec<_>>(), "first window");
    let mut rest = Vec::new();
    let mut last = slow_got.pop().expect("non-empty");
    loop {
        slow.ack(&last)?;
        last = slow
            .recv_message(FRAME_TIMEOUT)
            .with_context(|| format!("slow subscriber after acknowledging, got {rest:?}"))?;
        let n: usize = last.text().split(':').next().unwrap().parse()?;
        rest.push(n);
        if n == N - 1 {
            break;
        }
    }
    assert_eq!(
        rest,
        (N - LIMIT..N).collect::<Vec<_>>(),
        "after its prefetch window, a slow subscriber keeps the newest topic_pending_limit \
         messages"
    );
    assert!(
        wait_until(deadline(Duration::from_secs(5)), || broker
            .logs_contain("slow topic subscriber")),
        "no log line about discarding for a slow topic subscriber"
    );
    drop(deaf);
    Ok(())
}

/// A subscriber with ActiveMQ's default topic prefetch (32,767, more than is sent) that never
/// reads its socket is handed at most `memory_limit` bytes: past them its messages are
/// discarded (logged, and counted in `ferromq_topic_discarded_total`), instead of the broker
/// holding all 16 MB sent, and the producer is not held up. Reading again, it gets exactly
/// the messages not counted as discarded, the newest last.
#[test]
fn a_stalled_topic_subscriber_is_held_to_memory_limit_bytes() -> Result<()> {
    const N: usize = 4000;
    const MEMORY_LIMIT: usize = 1 << 20;
    /// What the kernel may hold of a connection on top of what the broker does: the broker's
    /// send buffer (`tcp_wmem` grows it to 4 MiB by default) and the subscriber's receive
    /// buffer (not grown: it does not read). The broker counts what it wrote there as consumed
    /// (auto ack). Here about 3.7 MB were, so the subscriber got ~1,150 of the 4,000 messages;
    /// without the limit it would get all 16 MB.
    const SOCKET_BUFFERS: usize = 6 << 20;
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(
        dir.path(),
        &format!(
            "[broker]\nmemory_limit = \"{}KiB\"\n\n[admin]\nbind = \"tcp://127.0.0.1:0\"\n",
            MEMORY_LIMIT >> 10
        ),
    )?;
    let admin = broker
        .admin_addr()
        .context("the broker logs its admin endpoint")?;
    let topic = "/topic/firehose";
    let mut hoarder = broker.client()?;
    hoarder.subscribe("hoarder", topic, &[])?;
    let padding = "x".repeat(4096);
    let body = |i: usize| format!("{i}:{padding}");
    let mut producer = broker.client()?;
    for i in 0..N - 1 {
        producer.send_nowait(topic, body(i).as_bytes(), &[])?;
    }
    producer
        .send(topic, body(N - 1).as_bytes(), &[])
        .context("the producer's last send was not receipted: it was held up")?;
    let hoarder_discarded = || {
        broker.logs().iter().any(|line| {
            line.contains("slow topic subscriber") && line.contains("subscription=hoarder")
        })
    };
    assert!(
        wait_until(deadline(Duration::from_secs(5)), hoarder_discarded),
        "a subscriber that stopped reading was handed more than memory_limit"
    );
    // Reading again, it gets what it was handed and what the broker kept for it, in order,
    // up to the last message sent.
    let mut got = Vec::new();
    loop {
        let m = hoarder
            .recv_message(FRAME_TIMEOUT)
            .with_context(|| format!("the hoarder reading again, after {} messages", got.len()))?;
        let n: usize = m.text().split(':').next().unwrap_or_default().parse()?;
        got.push(n);
        if n == N - 1 {
            break;
        }
    }
    ensure!(
        got.windows(2).all(|w| w[0] < w[1]),
        "out of order or repeated: {got:?}"
    );
    let (code, text) = ferromq_integration_tests::http_get(&admin, "/metrics")?;
    ensure!(code == 200, "{text}");
    let discarded = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("ferromq_topic_discarded_total ")?
                .parse::<usize>()
                .ok()
        })
        .with_context(|| format!("no ferromq_topic_discarded_total:\n{text}"))?;
    eprintln!(
        "the hoarder got {} of {N} messages, {discarded} discarded",
        got.len()
    );
    ensure!(
        got.len() + discarded == N,
        "the hoarder got {} of {N} messages, but {discarded} are counted as discarded",
        got.len()
    );
    let handed = got.len() * body(0).len();
    ensure!(
        handed <= MEMORY_LIMIT + SOCKET_BUFFERS,
        "the hoarder was handed {handed} bytes ({} messages), more than memory_limit \
         ({MEMORY_LIMIT}) and what socket buffers hold ({SOCKET_BUFFERS})",
        got.len()
    );
    drop(hoarder);
    Ok(())
}

/// The broker process's resident size in KiB (`VmRSS` of `/proc/PID/status`).
#[cfg(target_os = "linux")]
fn resident_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("no VmRSS value")?
        .parse()?)
}

/// Once a backlog drains, the broker hands the memory it took back to the operating system:
/// an operator watching its resident size after a burst sees it fall, not stay at the peak
/// (glibc keeps freed memory unless asked to trim it).
#[cfg(target_os = "linux")]
#[test]
fn a_drained_backlog_gives_its_memory_back() -> Result<()> {
    use ferromq_integration_tests::run_cli;
    const N: &str = "30000";
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), "[broker]\nmemory_limit = \"512MiB\"\n")?;
    let pid = broker.pid().context("the broker is not running")?;
    let url = broker.url();
    let bench = |extra: &[&str]| -> Result<String> {
        let mut args = vec!["bench", "--url", &url, "-d", "queue://backlog", "--json"];
        args.extend_from_slice(extra);
        let (status, stdout, stderr) = run_cli(&args, Duration::from_secs(120))?;
        ensure!(status.success(), "ferromq bench {extra:?}: {stderr}");
        Ok(stdout)
    };
    // 30,000 non-persistent messages of 4 KiB, all held in memory (~120 MiB of bodies).
    bench(&[
        "-p",
        "4",
        "-w",
        "32",
        "-n",
        N,
        "-s",
        "4096",
        "--persistent",
        "false",
    ])?;
    let peak = resident_kib(pid)?;
    ensure!(
        peak > 100 << 10,
        "the backlog should hold over 100 MiB, the broker is at {peak} KiB"
    );
    let drained = bench(&["--drain-only", "-c", "1", "--idle-timeout", "1s"])?;
    ensure!(
        drained.contains(&format!("\"received\":{N}")),
        "the drain did not receive every message: {drained}"
    );
    let mut now = peak;
    let fell = wait_until(deadline(Duration::from_secs(30)), || {
        now = resident_kib(pid).unwrap_or(peak);
        now < peak / 2
    });
    assert!(
        fell,
        "the broker stayed at {now} KiB resident after its backlog drained (peak {peak} KiB)"
    );
    Ok(())
}

/// A STOMP subscriber on the wildcard topic `/topic/logs.>` (ActiveMQ's log-collection
/// pattern) receives what is published to each matching topic, each with the topic it was
/// published to as its `destination`, and nothing of a topic the pattern does not match. A
/// SEND to a wildcard destination is refused with an ERROR naming it.
#[test]
fn a_wildcard_topic_subscriber_receives_every_matching_topic() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), "")?;
    let mut collector = broker.client()?;
    collector.subscribe("logs", "/topic/logs.>", &[])?;
    let mut producer = broker.client()?;
    for (topic, body) in [
        ("/topic/metrics.app1", "not-logs"),
        ("/topic/logs.app1.error", "app1-error"),
        ("/topic/logsx.app1", "not-logs-either"),
        ("/topic/logs.app2.info", "app2-info"),
    ] {
        producer.send(topic, body.as_bytes(), &[])?;
    }
    let got = collector.recv_until(b"app2-info", FRAME_TIMEOUT)?;
    let seen: Vec<(String, String)> = got
        .iter()
        .map(|m| (m.get("destination").unwrap_or("").to_string(), m.text()))
        .collect();
    assert_eq!(
        seen,
        [
            (
                "/topic/logs.app1.error".to_string(),
                "app1-error".to_string()
            ),
            ("/topic/logs.app2.info".to_string(), "app2-info".to_string()),
        ],
        "the matching topics' messages, each with its own topic, and nothing else"
    );
    ensure!(
        got.iter().all(|m| m.get("subscription") == Some("logs")),
        "subscription header: {got:?}"
    );

    let refused = producer
        .send("/topic/logs.>", b"to a pattern", &[])
        .expect_err("a SEND to a wildcard destination must be refused");
    ensure!(
        format!("{refused:#}").contains("logs.>"),
        "the ERROR names the destination: {refused:#}"
    );
    Ok(())
}

/// A script that moves a message by sending it on with the headers it arrived with (its
/// `message-id` among them) stores a new message: only a SEND that vouches for its
/// `message-id` with `ferromq.dedupe:true` is compared with what its producer sent before,
/// and the broker never writes that header on a MESSAGE. (It used to be dropped as a repeat
/// of the message it was copied from, and still confirmed.)
#[test]
fn a_message_forwarded_with_its_headers_is_stored_again() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), "")?;
    let mut producer = broker.client()?;
    producer.send(
        "/queue/incoming",
        b"move me",
        &[
            ("persistent", "true"),
            ("message-id", "ID:p1:1"),
            ("ferromq.dedupe", "true"),
        ],
    )?;
    let mut mover = broker.client()?;
    mover.subscribe("in", "/queue/incoming", &[("ack", "client-individual")])?;
    let got = mover.recv_until(b"move me", FRAME_TIMEOUT)?;
    let original = got.last().expect("the message");
    ensure!(
        original.get("ferromq.dedupe").is_none(),
        "the broker wrote the marker on a MESSAGE: {original:?}"
    );
    let copied: Vec<(&str, &str)> = original
        .headers
        .iter()
        .filter(|(name, _)| {
            !["destination", "subscription", "ack", "content-length"].contains(&name.as_str())
        })
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    mover.send("/queue/moved", &original.body, &copied)?;
    mover.ack(original)?;
    let mut consumer = broker.client()?;
    consumer.subscribe("out", "/queue/moved", &[])?;
    let moved = consumer.recv_until(b"move me", FRAME_TIMEOUT)?;
    let moved = moved.last().expect("the moved message");
    ensure!(
        moved.get("message-id") != Some("ID:p1:1"),
        "the copy kept the original's id: {moved:?}"
    );
    Ok(())
}

/// Test 8: a persistent message re-sent with the same `<producer>:<n>` message-id (and
/// `ferromq.dedupe:true`, as ferromq's failover client sends) is confirmed again but stored
/// and delivered once, also after a restart.
#[test]
fn a_resent_message_id_is_delivered_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut broker = BrokerProcess::start(dir.path(), "")?;
    let queue = "/queue/dedup";
    let mut producer = broker.client()?;
    for _ in 0..2 {
        producer.send(
            queue,
            b"once",
            &[
                ("persistent", "true"),
                ("message-id", "ID:p1:1"),
                ("ferromq.dedupe", "true"),
            ],
        )?;
    }
    producer.send(
        queue,
        b"next",
        &[
            ("persistent", "true"),
            ("message-id", "ID:p1:2"),
            ("ferromq.dedupe", "true"),
        ],
    )?;
    producer.send_persistent(queue, b"sentinel")?;
    let mut consumer = broker.client()?;
    consumer.subscribe("d", queue, &[("ack", "client-individual")])?;
    let got = consumer.recv_until(b"sentinel", FRAME_TIMEOUT)?;
    assert_eq!(bodies(&got), ["once", "next", "sentinel"]);
    assert_eq!(got[0].get("message-id"), Some("ID:p1:1"));
    for m in &got {
        consumer.ack(m)?;
    }
    consumer.disconnect()?;
    producer.disconnect()?;

    // The broker remembers the producer's sequence across a restart.
    broker.restart()?;
    let mut producer = broker.client()?;
    producer.send(
        queue,
        b"once-again",
        &[
            ("persistent", "true"),
            ("message-id", "ID:p1:1"),
            ("ferromq.dedupe", "true"),
        ],
    )?;
    producer.send_persistent(queue, b"sentinel-2")?;
    let mut consumer = broker.client()?;
    consumer.subscribe("d", queue, &[])?;
    let got = consumer.recv_until(b"sentinel-2", FRAME_TIMEOUT)?;
    assert_eq!(
        bodies(&got),
        ["sentinel-2"],
        "a duplicate sent after a restart was delivered"
    );
    Ok(())
}

/// A new client subscribed to `destination` (with `headers`) and the first message it gets
/// there: a dead letter, in these tests.
fn first_on(
    broker: &BrokerProcess,
    destination: &str,
    headers: &[(&str, &str)],
) -> Result<(StompClient, Frame)> {
    let mut client = broker.client()?;
    client.subscribe("dlq", destination, headers)?;
    let m = client
        .recv_message(FRAME_TIMEOUT)
        .with_context(|| format!("the dead letter did not arrive on {destination}"))?;
    Ok((client, m))
}

/// Test 9a: a NACKed message goes to `/queue/ActiveMQ.DLQ` and not back to its queue.
#[test]
fn nack_moves_a_message_to_the_dead_letter_queue() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), "")?;
    let queue = "/queue/poison";
    let mut producer = broker.client()?;
    producer.send_persistent(queue, b"poison")?;
    let mut consumer = broker.client()?;
    consumer.subscribe("p", queue, &[("ack", "client-individual")])?;
    let m = consumer.recv_message(FRAME_TIMEOUT)?;
    assert_eq!(m.text(), "poison");
    consumer.nack(&m)?;

    let (_dlq, dead) = first_on(&broker, "/queue/ActiveMQ.DLQ", &[])?;
    assert_eq!(dead.text(), "poison");
    assert_eq!(dead.get("message-id"), m.get("message-id"));

    expect_only_sentinel(
        &mut producer,
        &mut consumer,
        queue,
        "the NACKed message came back",
    )
}

/// Test 9b: with `max_redeliveries = 1`, a message whose consumers disconnect twice without
/// acknowledging it goes to the dead-letter queue.
#[test]
fn redelivery_limit_moves_a_message_to_the_dead_letter_queue() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), "[broker]\nmax_redeliveries = 1\n")?;
    let queue = "/queue/flaky";
    let mut dlq = broker.client()?;
    dlq.subscribe("dlq", "/queue/ActiveMQ.DLQ", &[])?;
    let mut producer = broker.client()?;
    producer.send_persistent(queue, b"hot-potato")?;

    let mut c1 = broker.client()?;
    c1.subscribe("c", queue, &[("ack", "client")])?;
    let m = c1.recv_message(FRAME_TIMEOUT)?;
    assert_eq!(m.text(), "hot-potato");
    assert_eq!(m.get("redelivered"), None);
    c1.drop_connection();

    let mut c2 = broker.client()?;
    c2.subscribe("c", queue, &[("ack", "client")])?;
    let m = c2.recv_message(FRAME_TIMEOUT)?;
    assert_eq!(m.text(), "hot-potato");
    assert_eq!(m.get("redelivered"), Some("true"));
    assert_eq!(m.get("redelivery-count"), Some("1"));
    c2.drop_connection();

    let dead = dlq.recv_message(FRAME_TIMEOUT).context(
        "a message redelivered more than max_redeliveries=1 times did not reach the DLQ",
    )?;
    assert_eq!(dead.text(), "hot-potato");

    let mut c3 = broker.client()?;
    c3.subscribe("c", queue, &[])?;
    expect_only_sentinel(
        &mut producer,
        &mut c3,
        queue,
        "the dead-lettered message was also redelivered on its queue",
    )
}

/// Test 9c: with `dead_letter_strategy = "individual"` (ActiveMQ's
/// `<individualDeadLetterStrategy queuePrefix="DLQ."/>`), a queue's dead letter goes to its own
/// DLQ (`DLQ.orders`), a durable subscription's to the topic's (`ActiveMQ.DLQ.Topic.news`, the
/// default topic prefix), and none to `ActiveMQ.DLQ`; one NACKed again on its DLQ is discarded,
/// as ActiveMQ 5.17 does.
#[test]
fn the_individual_dead_letter_strategy_gives_each_destination_its_dlq() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(
        dir.path(),
        "[broker]\ndead_letter_strategy = \"individual\"\ndead_letter_queue_prefix = \"DLQ.\"\n",
    )?;
    let mut producer = broker.client()?;

    // A queue's dead letter, NACKed again on its DLQ.
    producer.send_persistent("/queue/orders", b"bad-order")?;
    let mut consumer = broker.client()?;
    consumer.subscribe("o", "/queue/orders", &[("ack", "client-individual")])?;
    let m = consumer.recv_message(FRAME_TIMEOUT)?;
    consumer.nack(&m)?;
    let (mut dlq, dead) = first_on(
        &broker,
        "/queue/DLQ.orders",
        &[("ack", "client-individual")],
    )?;
    assert_eq!(dead.text(), "bad-order");
    assert_eq!(dead.get("original-destination"), Some("/queue/orders"));
    dlq.nack(&dead)?;
    let mut dlq_of_dlq = broker.client()?;
    dlq_of_dlq.subscribe("dlq2", "/queue/DLQ.DLQ.orders", &[])?;
    for (client, queue) in [
        (&mut dlq, "/queue/DLQ.orders"),
        (&mut dlq_of_dlq, "/queue/DLQ.DLQ.orders"),
    ] {
        let what = format!("the message NACKed on DLQ.orders is on {queue}");
        expect_only_sentinel(&mut producer, client, queue, &what)?;
    }

    // A durable subscription's dead letter.
    let durable = [
        ("activemq.subscriptionName", "news-sub"),
        ("ack", "client-individual"),
    ];
    let mut reader = StompClient::connect_with(broker.addr(), &[("client-id", "reader")])?;
    reader.subscribe("d", "/topic/news", &durable)?;
    producer.send_persistent("/topic/news", b"bad-news")?;
    let m = reader.recv_message(FRAME_TIMEOUT)?;
    reader.nack(&m)?;
    let (_topic_dlq, dead) = first_on(&broker, "/queue/ActiveMQ.DLQ.Topic.news", &[])?;
    assert_eq!(dead.text(), "bad-news");
    assert_eq!(dead.get("original-destination"), Some("/topic/news"));

    // Nothing went to the shared DLQ.
    let mut shared = broker.client()?;
    shared.subscribe("shared", "/queue/ActiveMQ.DLQ", &[])?;
    expect_only_sentinel(
        &mut producer,
        &mut shared,
        "/queue/ActiveMQ.DLQ",
        "a dead letter reached ActiveMQ.DLQ",
    )
}

/// STOMP 1.0, 1.1 and 1.2 clients on the one port, each sending, receiving and acknowledging
/// (1.0/1.1 by message-id and subscription, 1.2 by the MESSAGE's `ack` header).
#[test]
fn stomp_1_0_1_1_and_1_2_share_one_port() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), "")?;
    for version in ["1.0", "1.1", "1.2"] {
        let mut client = if version == "1.0" {
            StompClient::connect_exact(broker.addr(), &[])?
        } else {
            StompClient::connect_with(broker.addr(), &[("accept-version", version)])?
        };
        assert_eq!(client.version, version, "negotiated version");
        let queue = format!("/queue/v{version}");
        client.subscribe("s", &queue, &[("ack", "client-individual")])?;
        client.send_persistent(&queue, format!("hello {version}").as_bytes())?;
        let m = client.recv_message(FRAME_TIMEOUT)?;
        assert_eq!(m.text(), format!("hello {version}"));
        client.ack(&m)?;
        client.disconnect()?;
        // Acknowledged: a new consumer finds only what is sent next.
        let mut check = broker.client()?;
        check.subscribe("s", &queue, &[])?;
        check.send(&queue, b"sentinel", &[])?;
        let rest = check.recv_until(b"sentinel", FRAME_TIMEOUT)?;
        assert_eq!(
            bodies(&rest),
            ["sentinel"],
            "STOMP {version} ACK had no effect"
        );
    }
    Ok(())
}

/// ActiveMQ's exclusive consumer (`activemq.exclusive:true`): while it is subscribed it alone
/// receives the queue, and when it goes away the others get its unacknowledged messages,
/// redelivered, in order. Message groups (`JMSXGroupID`): each group's messages go to one
/// consumer.
#[test]
fn exclusive_consumer_and_message_groups() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), "")?;
    let queue = "/queue/exclusive";
    let mut plain = broker.client()?;
    plain.subscribe("plain", queue, &[("ack", "client-individual")])?;
    let mut exclusive = broker.client()?;
    exclusive.subscribe(
        "excl",
        queue,
        &[("ack", "client-individual"), ("activemq.exclusive", "true")],
    )?;
    let mut producer = broker.client()?;
    let sent: Vec<String> = (0..5).map(|i| format!("m{i}")).collect();
    for body in &sent {
        producer.send_persistent(queue, body.as_bytes())?;
    }
    let mut got = Vec::new();
    for _ in 0..sent.len() {
        got.push(exclusive.recv_message(FRAME_TIMEOUT)?);
    }
    assert_eq!(
        bodies(&got),
        sent,
        "the exclusive consumer gets every message"
    );
    ensure!(
        plain
            .try_recv_message(Duration::from_millis(300))?
            .is_none(),
        "a message went to the other consumer while an exclusive one was subscribed"
    );
    exclusive.ack(&got[0])?;
    exclusive.drop_connection();
    let mut again = Vec::new();
    for _ in 1..sent.len() {
        let m = plain.recv_message(FRAME_TIMEOUT)?;
        ensure!(
            m.get("redelivered") == Some("true"),
            "not flagged as redelivered: {m:?}"
        );
        again.push(m.text());
    }
    assert_eq!(again, sent[1..], "the unacknowledged messages, in order");

    // Message groups: x,x,y,y,... round-robin alone would split each group.
    let groups_queue = "/queue/groups";
    let mut a = broker.client()?;
    a.subscribe("a", groups_queue, &[])?;
    let mut b = broker.client()?;
    b.subscribe("b", groups_queue, &[])?;
    let pattern = ["x", "x", "y", "y", "x", "x", "y", "y"];
    for (i, group) in pattern.iter().enumerate() {
        producer.send(
            groups_queue,
            format!("{group}{i}").as_bytes(),
            &[("JMSXGroupID", group)],
        )?;
    }
    let mut to_a = Vec::new();
    let mut to_b = Vec::new();
    let end = deadline(FRAME_TIMEOUT);
    while to_a.len() + to_b.len() < pattern.len() {
        ensure!(
            std::time::Instant::now() < end,
            "received {to_a:?} and {to_b:?}"
        );
        if let Some(m) = a.try_recv_message(Duration::from_millis(50))? {
            to_a.push(m.text());
        }
        if let Some(m) = b.try_recv_message(Duration::from_millis(50))? {
            to_b.push(m.text());
        }
    }
    for group in ["x", "y"] {
        let on_a = to_a.iter().any(|m| m.starts_with(group));
        let on_b = to_b.iter().any(|m| m.starts_with(group));
        ensure!(on_a != on_b, "group {group} was split: {to_a:?} / {to_b:?}");
    }
    Ok(())
}

/// ActiveMQ's virtual topics: a send to `/topic/VirtualTopic.Orders` reaches every consumer
/// queue `/queue/Consumer.<system>.VirtualTopic.Orders` (shared by that system's competing
/// consumers) and the topic's own subscribers; a consumer queue stays known across a restart.
#[test]
fn a_virtual_topic_copies_each_message_to_every_consumer_queue() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut broker = BrokerProcess::start(dir.path(), "")?;
    let mut a1 = broker.client()?;
    let mut a2 = broker.client()?;
    let mut b = broker.client()?;
    let mut live = broker.client()?;
    a1.subscribe("a1", "/queue/Consumer.A.VirtualTopic.Orders", &[])?;
    a2.subscribe("a2", "/queue/Consumer.A.VirtualTopic.Orders", &[])?;
    b.subscribe("b", "/queue/Consumer.B.VirtualTopic.Orders", &[])?;
    live.subscribe("t", "/topic/VirtualTopic.Orders", &[])?;
    let mut producer = broker.client()?;
    let sent = ["o1", "o2", "o3", "o4"];
    for body in sent {
        producer.send_persistent("/topic/VirtualTopic.Orders", body.as_bytes())?;
    }

    let got_b = b.recv_until(b"o4", FRAME_TIMEOUT)?;
    assert_eq!(bodies(&got_b), sent, "system B gets every message");
    for m in &got_b {
        assert_eq!(
            m.get("destination"),
            Some("/queue/Consumer.B.VirtualTopic.Orders")
        );
        assert_eq!(
            m.get("original-destination"),
            Some("/topic/VirtualTopic.Orders")
        );
    }
    assert_eq!(bodies(&live.recv_until(b"o4", FRAME_TIMEOUT)?), sent);
    // System A's two consumers share its copy of each message.
    let mut got_a = BTreeSet::new();
    let end = deadline(FRAME_TIMEOUT);
    while got_a.len() < sent.len() && std::time::Instant::now() < end {
        for c in [&mut a1, &mut a2] {
            if let Some(m) = c.try_recv_message(Duration::from_millis(50))? {
                ensure!(got_a.insert(m.text()), "{} delivered twice", m.text());
            }
        }
    }
    assert_eq!(got_a, sent.iter().map(|s| s.to_string()).collect());
    for c in [&mut a1, &mut a2, &mut b] {
        ensure!(
            c.try_recv_message(Duration::from_millis(200))?.is_none(),
            "one copy per consumer queue"
        );
    }
    drop((a1, a2, b, live, producer));

    // After a restart, with no consumer connected, the consumer queues still receive.
    broker.restart()?;
    let mut producer = broker.client()?;
    producer.send_persistent("/topic/VirtualTopic.Orders", b"after restart")?;
    for system in ["A", "B"] {
        let mut c = broker.client()?;
        c.subscribe(
            "c",
            &format!("/queue/Consumer.{system}.VirtualTopic.Orders"),
            &[],
        )?;
        assert_eq!(c.recv_message(FRAME_TIMEOUT)?.text(), "after restart");
    }
    Ok(())
}

/// A virtual topic rule of one's own, as in ActiveMQ's documentation (`<virtualTopic name=">"
/// prefix="VirtualTopicConsumers.*."/>`): every topic feeds its `VirtualTopicConsumers.<system>.`
/// queues, and the default `Consumer.*.VirtualTopic.>` queues are ordinary queues.
#[test]
fn a_configured_virtual_topic_rule_replaces_the_default() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = "[broker]\nvirtual_topic_name = \">\"\nvirtual_topic_prefix = \"VirtualTopicConsumers.*.\"\n";
    let mut broker = BrokerProcess::start(dir.path(), config)?;
    let mut billing = broker.client()?;
    billing.subscribe("b", "/queue/VirtualTopicConsumers.billing.orders", &[])?;
    let mut old = broker.client()?;
    old.subscribe("o", "/queue/Consumer.A.VirtualTopic.Orders", &[])?;
    let mut producer = broker.client()?;
    producer.send_persistent("/topic/orders", b"o1")?;
    producer.send_persistent("/topic/VirtualTopic.Orders", b"v1")?;
    let m = billing.recv_message(FRAME_TIMEOUT)?;
    assert_eq!(m.text(), "o1");
    assert_eq!(m.get("original-destination"), Some("/topic/orders"));
    ensure!(
        old.try_recv_message(Duration::from_millis(300))?.is_none(),
        "the default rule should be replaced"
    );
    drop((billing, old));
    // Sent while its consumer is away, kept across a restart.
    producer.send_persistent("/topic/orders", b"o2")?;
    drop(producer);
    broker.restart()?;
    let mut billing = broker.client()?;
    billing.subscribe("b", "/queue/VirtualTopicConsumers.billing.orders", &[])?;
    assert_eq!(billing.recv_message(FRAME_TIMEOUT)?.text(), "o2");
    Ok(())
}

/// ActiveMQ's `/temp-queue/NAME` is the connection's own temporary queue: two clients that
/// both use `/temp-queue/replies` as `reply-to` each get exactly their own replies. The
/// responder sees `/remote-temp-queue/ID:...` and answers there; the owner sees the reply on
/// `/temp-queue/replies`.
#[test]
fn two_clients_with_the_same_temp_queue_name_get_their_own_replies() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), "")?;
    let mut responder = broker.client()?;
    responder.subscribe("r", "/queue/requests", &[])?;
    let mut a = broker.client()?;
    let mut b = broker.client()?;
    for (client, name) in [(&mut a, "a"), (&mut b, "b")] {
        client.subscribe("replies", "/temp-queue/replies", &[])?;
        for n in 1..=2 {
            client.send(
                "/queue/requests",
                format!("{name}{n}").as_bytes(),
                &[("reply-to", "/temp-queue/replies")],
            )?;
        }
    }
    // Replies in the order a1, a2, b1, b2: shared by two consumers, each would get one of
    // each client's.
    let mut reply_tos = BTreeSet::new();
    for m in responder.recv_until(b"b2", FRAME_TIMEOUT)? {
        let reply_to = m.get("reply-to").context("no reply-to")?.to_string();
        ensure!(
            reply_to.starts_with("/remote-temp-queue/ID:"),
            "another connection's temporary queue: {m:?}"
        );
        reply_tos.insert(reply_to.clone());
        responder.send(
            &reply_to,
            format!("reply to {}", m.text()).as_bytes(),
            &[("persistent", "true")],
        )?;
    }
    assert_eq!(
        reply_tos.len(),
        2,
        "one temporary queue per client: {reply_tos:?}"
    );
    for (client, name) in [(&mut a, "a"), (&mut b, "b")] {
        let got = client.recv_until(format!("reply to {name}2").as_bytes(), FRAME_TIMEOUT)?;
        assert_eq!(
            bodies(&got),
            [format!("reply to {name}1"), format!("reply to {name}2")],
            "client {name} gets exactly its own replies"
        );
        for m in &got {
            assert_eq!(m.get("destination"), Some("/temp-queue/replies"));
        }
        ensure!(
            client
                .try_recv_message(Duration::from_millis(200))?
                .is_none(),
            "client {name} got another client's reply"
        );
    }
    Ok(())
}

/// Delayed delivery (`scheduler_support`), as a STOMP client sees it: a SEND with the header
/// `AMQ_SCHEDULED_DELAY` is receipted once stored, long before it is due; the message is
/// delivered no earlier than its due time, which survives a kill -9 and a restart; a delay
/// that is not a number gets an ERROR naming the header.
#[test]
fn a_delayed_message_is_delivered_when_due_even_across_a_kill_and_restart() -> Result<()> {
    // Long enough for the kill, the restart and the new subscription to be over well before
    // the message is due, also on a loaded machine (checked below).
    const DELAY_MS: i64 = 10_000;
    let dir = tempfile::tempdir()?;
    let mut broker = BrokerProcess::start(dir.path(), "[broker]\nscheduler_support = true\n")?;
    let queue = "/queue/delayed";
    let mut consumer = broker.client()?;
    consumer.subscribe("s", queue, &[])?;
    let mut producer = broker.client()?;
    let sent = ferromq_integration_tests::now_ms();
    let delay = DELAY_MS.to_string();
    producer.send(
        queue,
        b"later",
        &[("persistent", "true"), ("AMQ_SCHEDULED_DELAY", &delay)],
    )?;
    producer.send_persistent(queue, b"now")?;
    assert_eq!(consumer.recv_message(FRAME_TIMEOUT)?.text(), "now");
    ensure!(
        ferromq_integration_tests::now_ms() < sent + DELAY_MS,
        "the receipts took longer than the delay: nothing to tell"
    );
    ensure!(
        consumer
            .try_recv_message(Duration::from_millis(10))?
            .is_none(),
        "the delayed message came before its due time"
    );

    broker.kill9();
    broker.restart()?;
    let mut consumer = broker.client()?;
    consumer.subscribe("s", queue, &[])?;
    // Restarted and subscribed before the due time: a delivery before it would be seen (and
    // fail the check below), rather than the check holding because the restart took longer
    // than the delay.
    let subscribed = ferromq_integration_tests::now_ms();
    ensure!(
        subscribed < sent + DELAY_MS,
        "the kill, restart and subscription took {} ms, longer than the {DELAY_MS} ms delay: \
         nothing to tell",
        subscribed - sent
    );
    let m = consumer.recv_message(LONG)?;
    let at = ferromq_integration_tests::now_ms();
    assert_eq!(m.text(), "later");
    ensure!(
        at >= sent + DELAY_MS,
        "delivered {} ms early",
        sent + DELAY_MS - at
    );
    ensure!(m.get("AMQ_SCHEDULED_DELAY").is_none(), "{m:?}");
    ensure!(m.get("scheduledJobId") == m.get("message-id"), "{m:?}");

    let mut bad = broker.client()?;
    bad.send_frame(
        &Frame::new("SEND")
            .header("destination", queue)
            .header("AMQ_SCHEDULED_DELAY", "soon")
            .header("receipt", "r1")
            .body("x"),
    )?;
    let error = bad.expect_frame(FRAME_TIMEOUT)?;
    ensure!(
        error.command == "ERROR"
            && error
                .get("message")
                .is_some_and(|m| m.contains("AMQ_SCHEDULED_DELAY")),
        "{error:?}"
    );
    Ok(())
}

/// ActiveMQ's scheduler management destination over STOMP: a SEND to
/// `/topic/ActiveMQ.Scheduler.Management` with `AMQ_SCHEDULER_ACTION:BROWSE` and a `reply-to`
/// gets a copy of each scheduled message there, carrying its `scheduledJobId`;
/// `AMQ_SCHEDULER_ACTION:REMOVE` with a `scheduledJobId` removes that one, also across a
/// kill -9 and a restart. The requests reach no subscriber of the management topic.
#[test]
fn the_scheduler_management_topic_browses_and_removes_scheduled_messages() -> Result<()> {
    const MANAGEMENT: &str = "/topic/ActiveMQ.Scheduler.Management";
    let dir = tempfile::tempdir()?;
    let mut broker = BrokerProcess::start(dir.path(), "[broker]\nscheduler_support = true\n")?;
    let mut producer = broker.client()?;
    for body in [&b"first"[..], b"second"] {
        producer.send(
            "/queue/later",
            body,
            &[("persistent", "true"), ("AMQ_SCHEDULED_DELAY", "600000")],
        )?;
    }
    // The `n` copies a BROWSE sends (and then no more, nor the request itself).
    let browse = |broker: &BrokerProcess, n: usize| -> Result<Vec<(String, String)>> {
        let mut client = broker.client()?;
        client.subscribe("replies", "/queue/replies", &[])?;
        client.subscribe("mgmt", MANAGEMENT, &[])?;
        client.send(
            MANAGEMENT,
            b"",
            &[
                ("AMQ_SCHEDULER_ACTION", "BROWSE"),
                ("reply-to", "/queue/replies"),
            ],
        )?;
        let mut got = Vec::new();
        for _ in 0..n {
            let m = client.recv_message(FRAME_TIMEOUT)?;
            ensure!(m.get("destination") == Some("/queue/replies"), "{m:?}");
            let id = m.get("scheduledJobId").unwrap_or_default().to_string();
            got.push((m.text(), id));
        }
        ensure!(
            client
                .try_recv_message(Duration::from_millis(200))?
                .is_none(),
            "more than {n} copies, or the request itself"
        );
        Ok(got)
    };
    let copies = browse(&broker, 2)?;
    let bodies: Vec<_> = copies.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!(bodies, ["first", "second"]);
    ensure!(copies.iter().all(|(_, id)| !id.is_empty()), "{copies:?}");
    producer.send(
        MANAGEMENT,
        b"",
        &[
            ("AMQ_SCHEDULER_ACTION", "REMOVE"),
            ("scheduledJobId", &copies[0].1),
        ],
    )?;
    let left = browse(&broker, 1)?;
    assert_eq!(left, copies[1..]);
    broker.kill9();
    broker.restart()?;
    assert_eq!(browse(&broker, 1)?, copies[1..]);
    Ok(())
}
