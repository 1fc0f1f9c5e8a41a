//! The admin endpoint (`[admin] bind`) of a standalone broker: health, readiness, metrics and
//! queues as a monitoring system or a load balancer reads them, and bad requests.

use anyhow::Result;
use ferromq_integration_tests::{http_get, http_request, BrokerProcess, FRAME_TIMEOUT};

fn metric(text: &str, sample: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn the_admin_endpoint_reports_role_queues_and_metrics_and_refuses_bad_requests() -> Result<()> {
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

    // Three waiting, then one delivered and not acknowledged.
    let mut producer = broker.client()?;
    for i in 0..3 {
        producer.send_persistent("/queue/adm", format!("m{i}").as_bytes())?;
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
    // Three stored messages (and the records before them) are retained in the journal.
    assert!(
        metric(&text, "ferromq_journal_retained_bytes").is_some_and(|b| b > 3 * 2),
        "{text}"
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
