//! The admin endpoint (`[admin] bind`) of a standalone broker: health, readiness, metrics and
//! queues as a monitoring system or a load balancer reads them, bad requests, and the
//! destination operations an operator runs (purge, delete, retry a DLQ) with the token.

use anyhow::Result;
use ferromq_integration_tests::{
    deadline, http_get, http_request, stall, wait_until, BrokerProcess, Frame, FRAME_TIMEOUT,
};

fn metric(text: &str, sample: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn the_admin_endpoint_reports_role_queues_and_metrics_and_refuses_bad_requests() -> Result<()> {
    const BODY: usize = 1024;
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), "[admin]\nbind = \"tcp://127.0.0.1:0\"\n")?;
    let admin = broker
        .admin_addr()
        .expect("the broker logs its admin endpoint");

    let (code, body) = http_get(&admin, "/health")?;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"role\":\"standalone\""), "{body}");
    assert!(body.contains("\"serving\":true"), "{body}");
    assert_eq!(http_get(&admin, "/ready")?.0, 200);

    // Three waiting, then one delivered and not acknowledged. Bodies of 1 KiB: what the
    // journal retains must grow by at least that much per message.
    let (_, text) = http_get(&admin, "/metrics")?;
    let retained_before =
        metric(&text, "ferromq_journal_retained_bytes").expect("the journal retained metric");
    let mut producer = broker.client()?;
    for i in 0..3 {
        producer.send_persistent(
            "/queue/adm",
            format!("m{i}-{}", "x".repeat(BODY)).as_bytes(),
        )?;
    }
    let (_, text) = http_get(&admin, "/metrics")?;
    assert_eq!(
        metric(&text, "ferromq_queue_messages{queue=\"queue://adm\"}"),
        Some(3),
        "{text}"
    );
    let mut consumer = broker.client()?;
    consumer.subscribe(
        "c",
        "/queue/adm",
        &[("ack", "client"), ("activemq.prefetchSize", "1")],
    )?;
    consumer.recv_message(FRAME_TIMEOUT)?;
    let (code, text) = http_get(&admin, "/metrics")?;
    assert_eq!(code, 200);
    assert_eq!(
        metric(&text, "ferromq_queue_messages{queue=\"queue://adm\"}"),
        Some(2),
        "{text}"
    );
    assert_eq!(
        metric(&text, "ferromq_queue_in_flight{queue=\"queue://adm\"}"),
        Some(1),
        "{text}"
    );
    assert_eq!(
        metric(&text, "ferromq_queue_consumers{queue=\"queue://adm\"}"),
        Some(1),
        "{text}"
    );
    assert_eq!(
        metric(&text, "ferromq_messages_enqueued_total"),
        Some(3),
        "{text}"
    );
    assert_eq!(metric(&text, "ferromq_serving"), Some(1), "{text}");
    // /health gives the serving node's current journal end, as /metrics does.
    let end = metric(&text, "ferromq_journal_end_bytes").expect("the journal end metric");
    assert!(end > 0, "{text}");
    let (_, body) = http_get(&admin, "/health")?;
    assert!(body.contains(&format!("\"position\":{end},")), "{body}");
    // The three stored messages are retained in the journal: it grew by at least their bodies
    // and a frame header (length and checksum, 8 bytes) each. Nothing was released (one fresh
    // segment), so it retains no more than was written.
    let retained = metric(&text, "ferromq_journal_retained_bytes").expect("the retained metric");
    assert!(
        retained >= retained_before + 3 * (BODY as u64 + 8),
        "retained {retained} bytes, {retained_before} before three {BODY}-byte messages:\n{text}"
    );
    assert!(
        retained <= end,
        "retained {retained} bytes of a journal ending at {end}"
    );
    let (code, body) = http_get(&admin, "/queues")?;
    assert_eq!(code, 200);
    assert!(
        body.contains("{\"name\":\"queue://adm\",\"ready\":2,\"consumers\":1,\"in_flight\":1}"),
        "{body}"
    );

    // Bad requests get a 4xx and change nothing.
    assert_eq!(http_get(&admin, "/nope")?.0, 404);
    assert_eq!(
        http_request(&admin, "POST /ready HTTP/1.1\r\nContent-Length: 0\r\n\r\n")?.0,
        405
    );
    assert_eq!(http_request(&admin, "\u{1}garbage\r\n\r\n")?.0, 400);
    assert_eq!(http_get(&admin, "/health")?.0, 200);
    Ok(())
}

/// The store of a standalone node fails under a producer (its directory vanishes, so the next
/// journal segment cannot be put in place, as with a full or lost disk): the send is refused
/// with an ERROR naming the store, `/ready` turns 503, `/health` and `/metrics` say why. Once
/// the directory is back and the node restarted, every receipted message is there.
#[test]
fn a_failed_store_turns_ready_off_and_loses_nothing_receipted() -> Result<()> {
    /// 64 KiB bodies: a few hundred fill a 16 MiB test segment.
    const PAD: usize = 64 * 1024;
    let dir = tempfile::tempdir()?;
    let mut broker = BrokerProcess::start(dir.path(), "[admin]\nbind = \"tcp://127.0.0.1:0\"\n")?;
    let admin = broker
        .admin_addr()
        .expect("the broker logs its admin endpoint");
    let data = dir.path().join("data");
    let gone = dir.path().join("data.gone");
    std::fs::rename(&data, &gone)?;

    let mut producer = broker.client()?;
    let pad = "x".repeat(PAD);
    let mut receipted = 0usize;
    let refusal = loop {
        assert!(
            receipted < 1_000,
            "1000 sends of 64 KiB and the store never failed"
        );
        match producer.send_persistent("/queue/disk", format!("m{receipted}-{pad}").as_bytes()) {
            Ok(()) => receipted += 1,
            Err(e) => break format!("{e:#}"),
        }
    };
    assert!(
        refusal.contains("the store failed"),
        "the refusal names the store: {refusal}"
    );
    let (code, body) = http_get(&admin, "/ready")?;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("\"store_failure\":\"the journal failed"),
        "{body}"
    );
    assert_eq!(http_get(&admin, "/health")?.0, 200);
    let (_, text) = http_get(&admin, "/metrics")?;
    assert_eq!(metric(&text, "ferromq_store_failed"), Some(1), "{text}");

    broker.kill9();
    std::fs::rename(&gone, &data)?;
    broker.restart()?;
    let bodies = broker.remaining_bodies("/queue/disk")?;
    let expected: Vec<String> = (0..receipted).map(|i| format!("m{i}-{pad}")).collect();
    assert!(
        bodies.len() >= receipted && bodies[..receipted] == expected[..],
        "{receipted} receipted before the failure, {} recovered",
        bodies.len()
    );
    Ok(())
}

/// The disk of a standalone node stalls (its fsyncs wait, as on a hung NFS mount; no error is
/// ever returned): a receipted send waits, and past `store.stall_timeout` the log says so and
/// the admin endpoint (on a thread of its own, so it answers while the runtime worker that
/// writes the batch waits on the disk) answers `/ready` 503 and shows the stall in `/health`
/// and `/metrics`. Once the disk answers, the receipt comes, the log says so, `/ready` is 200
/// and `/metrics` counts the stall.
#[test]
fn a_stalled_disk_is_reported_until_it_answers() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // One runtime worker, which the stalled batch blocks: an endpoint served on the node's
    // runtime would not answer during the stall.
    let mut launcher = stall::launcher("1s");
    launcher
        .env
        .push(("TOKIO_WORKER_THREADS".into(), "1".into()));
    let broker = BrokerProcess::start_with_launcher(
        launcher,
        dir.path(),
        "[admin]\nbind = \"tcp://127.0.0.1:0\"\n",
    )?;
    let admin = broker
        .admin_addr()
        .expect("the broker logs its admin endpoint");
    let mut producer = broker.client()?;
    producer.send_persistent("/queue/stall", b"before")?;
    let (_, text) = http_get(&admin, "/metrics")?;
    assert_eq!(
        metric(&text, "ferromq_store_stalls_total"),
        Some(0),
        "{text}"
    );

    stall::set_stalled(dir.path(), true);
    // Time passing is the condition here: a session that has been the only sender for 10 ms
    // (`SOLE_SENDER_FOR`) writes and fsyncs its batch on its runtime worker, the one worker,
    // rather than on the journal's thread. (Without this pause the test passed with the
    // endpoint on the node's runtime.)
    std::thread::sleep(std::time::Duration::from_millis(100));
    let receipt = producer.receipt_id();
    producer.send_frame(
        &Frame::new("SEND")
            .header("destination", "/queue/stall")
            .header("persistent", "true")
            .header("receipt", receipt.clone())
            .body(&b"during"[..]),
    )?;
    assert!(
        wait_until(deadline(FRAME_TIMEOUT), || broker
            .logs_contain("the store's disk stalled")),
        "the log never said the disk stalled"
    );
    let (code, body) = http_get(&admin, "/ready")?;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("made no progress"), "{body}");
    let (code, body) = http_get(&admin, "/health")?;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("\"store_stall\":\"the store's disk stalled"),
        "{body}"
    );
    let (_, text) = http_get(&admin, "/metrics")?;
    assert_eq!(metric(&text, "ferromq_store_stalled"), Some(1), "{text}");

    stall::set_stalled(dir.path(), false);
    producer.wait_receipt(&receipt, FRAME_TIMEOUT)?;
    assert!(
        wait_until(deadline(FRAME_TIMEOUT), || broker
            .logs_contain("the store's disk answers again")),
        "the log never said the disk answered"
    );
    assert!(
        wait_until(deadline(FRAME_TIMEOUT), || http_get(&admin, "/ready")
            .is_ok_and(|(code, _)| code == 200)),
        "/ready stayed 503 once the disk answered"
    );
    let (_, text) = http_get(&admin, "/metrics")?;
    assert_eq!(
        metric(&text, "ferromq_store_stalls_total"),
        Some(1),
        "{text}"
    );
    assert_eq!(metric(&text, "ferromq_store_stalled"), Some(0), "{text}");
    assert_eq!(
        broker.remaining_bodies("/queue/stall")?,
        vec!["before".to_string(), "during".to_string()]
    );
    Ok(())
}

/// `method path` with `Authorization: Bearer <token>` when a token is given, and an empty JSON
/// object as its body (as some HTTP clients send one; the endpoint reads and ignores it).
fn admin_write(addr: &str, method: &str, path: &str, token: Option<&str>) -> Result<(u16, String)> {
    let authorization = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    http_request(
        addr,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}Content-Length: 2\r\n\r\n{{}}"
        ),
    )
}

/// Messages poisoned over STOMP (one that was the oldest a client-ack consumer held when it
/// went away, twice, past `max_redeliveries = 1`; two rejected with NACK) land on
/// `ActiveMQ.DLQ`; `POST /queues/ActiveMQ.DLQ/retry` with the
/// token moves them back to their queue, where they are consumed again with a fresh
/// redelivery count. A purge (which takes a delivered, unacknowledged message too) and a
/// delete are refused without the token and done with it; after a kill -9 and a restart the
/// purged and deleted messages stay gone and the retried one waits on its queue.
#[test]
fn dead_letters_are_retried_and_queues_purged_and_deleted_over_http_for_good() -> Result<()> {
    const TOKEN: &str = "t0ken-for-tests";
    let dir = tempfile::tempdir()?;
    let mut broker = BrokerProcess::start(
        dir.path(),
        &format!(
            "[broker]\nmax_redeliveries = 1\n[admin]\nbind = \"tcp://127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"
        ),
    )?;
    let admin = broker
        .admin_addr()
        .expect("the broker logs its admin endpoint");
    let mut producer = broker.client()?;
    for body in ["o1", "o2", "o3"] {
        producer.send_persistent("/queue/orders", body.as_bytes())?;
    }
    // o1, the oldest each consumer held, fails twice; the others only come back.
    for _ in 0..2 {
        let mut consumer = broker.client()?;
        consumer.subscribe("c", "/queue/orders", &[("ack", "client")])?;
        for _ in 0..3 {
            consumer.recv_message(FRAME_TIMEOUT)?;
        }
        consumer.drop_connection();
    }
    // o2 and o3 are rejected.
    let mut rejecting = broker.client()?;
    rejecting.subscribe("r", "/queue/orders", &[("ack", "client-individual")])?;
    for expected in ["o2", "o3"] {
        let message = rejecting.recv_message(FRAME_TIMEOUT)?;
        assert_eq!(message.text(), expected);
        rejecting.nack(&message)?;
    }
    rejecting.disconnect()?;
    // How many wait on `queue`, as /queues lists it (None: not listed).
    let depth = |queue: &str| -> Option<u64> {
        let (_, body) = http_get(&admin, "/queues").ok()?;
        let start = body.find(&format!("{{\"name\":\"{queue}\",\"ready\":"))?;
        let rest = &body[start..];
        let ready = &rest[rest.find("\"ready\":")? + 8..];
        ready[..ready.find(',')?].parse().ok()
    };
    assert!(
        wait_until(deadline(FRAME_TIMEOUT), || depth("queue://ActiveMQ.DLQ")
            == Some(3)),
        "the three poisoned messages did not reach the DLQ: {:?}",
        http_get(&admin, "/queues")?
    );

    // Refused without the token (and with a wrong one), as write operations are.
    let retry = "/queues/ActiveMQ.DLQ/retry";
    assert_eq!(admin_write(&admin, "POST", retry, None)?.0, 401);
    assert_eq!(admin_write(&admin, "POST", retry, Some("wrong"))?.0, 401);
    assert_eq!(admin_write(&admin, "GET", retry, Some(TOKEN))?.0, 405);
    let (code, body) = admin_write(&admin, "POST", retry, Some(TOKEN))?;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"moved\":3"), "{body}");
    assert!(body.contains("\"left\":0"), "{body}");
    assert_eq!(depth("queue://ActiveMQ.DLQ"), Some(0));

    // Back on their queue, delivered as new: not redelivered.
    let mut consumer = broker.client()?;
    consumer.subscribe(
        "again",
        "/queue/orders",
        &[("ack", "client-individual"), ("activemq.prefetchSize", "1")],
    )?;
    for expected in ["o1", "o2"] {
        let m = consumer.recv_message(FRAME_TIMEOUT)?;
        assert_eq!(m.text(), expected);
        assert_eq!(
            m.get("redelivered"),
            None,
            "{expected} came back as redelivered"
        );
        consumer.ack(&m)?;
    }
    consumer.disconnect()?;

    // A purge takes the waiting messages and the one delivered and not acknowledged.
    for i in 0..5 {
        producer.send_persistent("/queue/junk", format!("j{i}").as_bytes())?;
    }
    let mut holder = broker.client()?;
    holder.subscribe(
        "h",
        "/queue/junk",
        &[("ack", "client"), ("activemq.prefetchSize", "1")],
    )?;
    holder.recv_message(FRAME_TIMEOUT)?;
    assert_eq!(
        admin_write(&admin, "POST", "/queues/junk/purge", None)?.0,
        401
    );
    let (code, body) = admin_write(
        &admin,
        "POST",
        "/queues/queue%3A%2F%2Fjunk/purge",
        Some(TOKEN),
    )?;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"removed\":5"), "{body}");
    holder.drop_connection();

    // A delete takes the queue and its messages.
    producer.send_persistent("/queue/gone", b"g")?;
    assert_eq!(
        admin_write(&admin, "DELETE", "/queues/nope", Some(TOKEN))?.0,
        404
    );
    let (code, body) = admin_write(&admin, "DELETE", "/queues/gone", Some(TOKEN))?;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"removed\":1"), "{body}");
    assert_eq!(depth("queue://gone"), None);

    broker.kill9();
    broker.restart()?;
    // The log holds the first run's admin address too (on another port): wait for one that
    // answers.
    let mut admin = String::new();
    assert!(
        wait_until(deadline(FRAME_TIMEOUT), || {
            admin = broker.admin_addr().unwrap_or_default();
            http_get(&admin, "/health").is_ok()
        }),
        "the restarted broker's admin endpoint does not answer"
    );
    let (_, listed) = http_get(&admin, "/queues")?;
    assert!(!listed.contains("queue://gone"), "{listed}");
    assert!(!listed.contains("queue://junk"), "{listed}");
    assert_eq!(broker.remaining_bodies("/queue/orders")?, ["o3"]);
    assert!(broker.remaining_bodies("/queue/ActiveMQ.DLQ")?.is_empty());
    assert!(broker.remaining_bodies("/queue/junk")?.is_empty());
    Ok(())
}
