//! Flow control: `memory_limit` (bodies left on disk, senders held back) and `store_limit`.

use super::*;

/// Persistent messages past `memory_limit` wait with their bodies in the journal, before and
/// after a restart, and every one is delivered whole and in order (to a plain consumer and to
/// one with a selector) and browsed whole; memory goes back down as they are consumed.
#[tokio::test]
async fn a_backlog_past_the_memory_limit_keeps_its_bodies_on_disk_and_delivers_them_whole() {
    let dir = tempfile::tempdir().unwrap();
    let options = BrokerOptions {
        memory_limit: 10 * 1024,
        ..BrokerOptions::default()
    };
    // 1024-byte bodies: ten fit in the limit.
    let body_of = |i: usize| format!("{i:04}:{}", "x".repeat(1019));
    {
        let broker = Broker::start_for_tests(dir.path(), options.clone());
        let (s, _) = broker.open_session(None);
        for i in 0..100 {
            s.send(&queue("q"), persistent(&body_of(i)), None)
                .unwrap()
                .await
                .unwrap();
        }
        let stats = broker.stats();
        assert_eq!(stats.resident_bytes, 10 * 1024, "{stats:?}");
        assert_eq!(stats.bodies_left_on_disk, 90, "{stats:?}");
        let browsed = browse_all(&s, &queue("q"), None);
        assert_eq!(browsed.len(), 100);
        assert_eq!(
            std::str::from_utf8(&browsed[99].0.body).unwrap(),
            body_of(99)
        );
        // Take the first 30 and stop (up to 10 more are in flight, unacknowledged).
        let (c, mut rx) = broker.open_session(None);
        subscribe(&c, "s", queue("q"), 10);
        for i in 0..30 {
            let d = next(&mut rx).await;
            assert_eq!(body(&d), body_of(i));
            c.ack(d.tag, AckScope::Single, None).unwrap().await.unwrap();
        }
    }
    let broker = Broker::start_for_tests(dir.path(), options);
    assert_eq!(broker.queue_depth("queue://q"), 70);
    let stats = broker.stats();
    assert_eq!(stats.resident_bytes, 10 * 1024, "{stats:?}");
    assert_eq!(stats.bodies_left_on_disk, 60, "{stats:?}");
    let (c, mut rx) = broker.open_session(None);
    c.subscribe(SubscribeRequest {
        selector: Some("JMSPriority >= 0".into()),
        ..request("s", queue("q"), 10)
    })
    .unwrap();
    for i in 30..100 {
        let d = next(&mut rx).await;
        assert_eq!(body(&d), body_of(i), "message {i}");
        c.ack(d.tag, AckScope::Single, None).unwrap().await.unwrap();
    }
    let stats = broker.stats();
    assert_eq!(stats.resident_bytes, 0, "{stats:?}");
    assert_eq!(stats.bodies_read_back, 60, "{stats:?}");
}

/// Non-persistent messages are nowhere but in memory: once their queued bodies fill
/// `memory_limit`, a session that has just sent one is held back, unless it has a subscription
/// (its acknowledgements may be what makes room), and the gate opens again when a consumer
/// takes one. Persistent bodies (which can wait on disk) never close it.
#[tokio::test]
async fn non_persistent_bodies_at_the_memory_limit_hold_back_their_senders_until_consumed() {
    let f = fixture_with_memory_limit(4 * 1024).await;
    let (producer, _) = f.broker.open_session(None);
    let gate = producer.flow_gate().memory;
    let body_of = |i: usize| format!("{i:04}:{}", "x".repeat(1019));
    let transient = |i: usize| NewMessage {
        persistent: false,
        ..persistent(&body_of(i))
    };
    for i in 0..20 {
        producer
            .send(&queue("p"), persistent(&body_of(i)), None)
            .unwrap()
            .await
            .unwrap();
    }
    assert!(!gate.is_full(), "persistent bodies page out instead");
    assert!(producer.hold_back().is_none());
    for i in 0..4 {
        assert!(
            producer.hold_back().is_none(),
            "not full before message {i}"
        );
        producer.send(&queue("q"), transient(i), None).unwrap();
    }
    assert!(gate.is_full());
    assert_eq!(f.broker.stats().transient_bytes, 4 * 1024);
    assert_eq!(
        producer.hold_back(),
        Some(Hold {
            memory: true,
            store: false
        }),
        "full, and it has just sent one"
    );
    assert!(producer.hold_back().is_none(), "only after sending one");
    let room = tokio::spawn({
        let gate = gate.clone();
        async move { gate.room().await }
    });
    let (consumer, mut rx) = consumer_on_q(&f, 1);
    consumer.send(&queue("q"), transient(4), None).unwrap();
    assert!(
        consumer.hold_back().is_none(),
        "a session with a subscription is never held back"
    );
    let d = next(&mut rx).await;
    assert_eq!(body(&d), body_of(0));
    assert!(gate.is_full(), "delivered but not yet acknowledged");
    consumer.ack(d.tag, AckScope::Single, None).unwrap();
    let d = next(&mut rx).await;
    consumer.ack(d.tag, AckScope::Single, None).unwrap();
    tokio::time::timeout(Duration::from_secs(5), room)
        .await
        .expect("the gate opens once bodies are consumed")
        .unwrap();
    assert!(!gate.is_full());
}

/// Headers count against `memory_limit` as bodies do: non-persistent messages with empty
/// bodies and 1 KiB of headers each close the gate after four, as 1 KiB bodies do, rather than
/// fill memory without bound.
#[tokio::test]
async fn non_persistent_headers_count_against_the_memory_limit() {
    let f = fixture_with_memory_limit(4 * 1024).await;
    let (producer, _) = f.broker.open_session(None);
    let gate = producer.flow_gate().memory;
    let headers_only = |i: usize| NewMessage {
        headers: vec![Header::text(
            "padding",
            format!("{i:04}:{}", "x".repeat(1012)),
        )],
        ..non_persistent("")
    };
    for i in 0..4 {
        assert!(!gate.is_full(), "not full before message {i}");
        producer.send(&queue("q"), headers_only(i), None).unwrap();
    }
    assert!(gate.is_full());
    assert_eq!(f.broker.stats().transient_bytes, 4 * 1024);
    assert_eq!(f.broker.stats().resident_bytes, 4 * 1024);
}

/// A core whose store may take 2 MiB (two of the test store's 1 MiB segments), measured
/// every 20 ms.
async fn store_limited(send_fail_if_no_space: bool) -> Fixture {
    fixture(BrokerOptions {
        store_limit: 2 << 20,
        send_fail_if_no_space,
        expiry_sweep: Duration::from_millis(20),
        ..BrokerOptions::default()
    })
    .await
}

/// Sends confirmed 64 KiB persistent messages to `queue://q` until the store is at its
/// limit (a second segment begins); answers how many were sent.
async fn fill_store(producer: &Session) -> usize {
    let gate = producer.flow_gate().store;
    for i in 0..64 {
        if gate.is_full() {
            return i;
        }
        producer
            .send(&queue("q"), large(i), None)
            .unwrap()
            .await
            .unwrap();
    }
    panic!("64 messages of 64 KiB did not fill a 2 MiB store");
}

/// Takes and acknowledges `n` messages from `queue://q`, in order.
async fn drain_q(f: &Fixture, n: usize) {
    let (consumer, mut rx) = consumer_on_q(f, 10);
    for i in 0..n {
        let d = next(&mut rx).await;
        assert!(body(&d).starts_with(&format!("{i:04}:")), "message {i}");
        consumer
            .ack(d.tag, AckScope::Single, None)
            .unwrap()
            .await
            .unwrap();
    }
}

/// ActiveMQ's store limit: once the journal takes `store_limit`, a session that has just
/// sent a persistent message is held back (its connection stops reading) until consumers
/// free segments; non-persistent sends and consumption go on meanwhile.
#[tokio::test]
async fn persistent_senders_wait_at_the_store_limit_until_consumers_free_segments() {
    let f = store_limited(false).await;
    let (producer, _) = f.broker.open_session(None);
    let gate = producer.flow_gate().store;
    assert!(producer.hold_back().is_none());
    let sent = fill_store(&producer).await;
    assert!(
        (15..=17).contains(&sent),
        "{sent} messages filled a segment"
    );
    let stats = f.broker.stats();
    assert!(stats.store_full, "{stats:?}");
    assert_eq!(stats.store_limit, 2 << 20);
    assert!(stats.store_bytes >= 2 << 20, "{stats:?}");
    assert_eq!(
        producer.hold_back(),
        Some(Hold {
            memory: false,
            store: true
        }),
        "full, and it has just sent a persistent message"
    );
    let room = tokio::spawn({
        let gate = gate.clone();
        async move { gate.room().await }
    });
    // Non-persistent messages are not held back by the store, and are delivered.
    let (other, mut other_rx) = f.broker.open_session(None);
    subscribe(&other, "np", queue("np"), 10);
    producer
        .send(&queue("np"), non_persistent("light"), None)
        .unwrap()
        .await
        .unwrap();
    assert!(producer.hold_back().is_none(), "a non-persistent send");
    assert_eq!(body(&next(&mut other_rx).await), "light");
    // A transaction's persistent sends and its commit are taken, then held back too.
    let (committer, _) = f.broker.open_session(None);
    committer.begin("t").unwrap();
    committer
        .send(&queue("t"), persistent("in a transaction"), Some("t"))
        .unwrap();
    assert!(committer.hold_back().is_some_and(|h| h.store));
    committer.commit("t").unwrap().await.unwrap();
    assert!(committer.hold_back().is_some_and(|h| h.store));
    assert!(!room.is_finished(), "nothing consumed yet");
    assert!(gate.is_full());
    drain_q(&f, sent).await;
    tokio::time::timeout(Duration::from_secs(10), room)
        .await
        .expect("the gate opens once consumers free a segment")
        .unwrap();
    let stats = f.broker.stats();
    assert!(
        !stats.store_full && stats.store_bytes < 2 << 20,
        "{stats:?}"
    );
    producer
        .send(&queue("q"), large(sent), None)
        .unwrap()
        .await
        .unwrap();
    assert!(producer.hold_back().is_none(), "room again");
}

/// The admin purge goes on while the store is full, and is one way to make room.
#[tokio::test]
async fn purging_a_full_store_makes_room() {
    let f = store_limited(false).await;
    let (producer, _) = f.broker.open_session(None);
    let sent = fill_store(&producer).await;
    assert!(f.broker.stats().store_full);
    assert_eq!(f.broker.purge_queue("queue://q").await, Ok(sent));
    tokio::time::timeout(Duration::from_secs(10), producer.flow_gate().store.room())
        .await
        .expect("room once the purge freed a segment");
    assert!(!f.broker.stats().store_full);
}

/// With `send_fail_if_no_space`, a persistent send (in a transaction too, and a commit
/// carrying one) is refused while the store is at `store_limit`, with an error naming the
/// limit; non-persistent sends and consumption go on, and once consumers free a segment
/// persistent sends (and the refused commit, its transaction still open) succeed.
#[tokio::test]
async fn with_send_fail_if_no_space_persistent_sends_are_refused_at_the_store_limit() {
    let f = store_limited(true).await;
    let (producer, _) = f.broker.open_session(None);
    producer.begin("t").unwrap();
    producer.send(&queue("q"), large(9999), Some("t")).unwrap();
    let sent = fill_store(&producer).await;
    let refused = |result: Result<Confirmation, BrokerError>, what: &str| match result {
        Err(e @ BrokerError::StoreFull { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("store_limit is 2097152 bytes"),
                "{what}: {text}"
            );
        }
        other => panic!("{what}: {other:?}"),
    };
    refused(producer.send(&queue("q"), large(sent), None), "a send");
    refused(
        producer.send(&queue("q"), large(sent), Some("t")),
        "a transacted send",
    );
    refused(producer.commit("t"), "a commit carrying a persistent send");
    assert!(producer.hold_back().is_none(), "refused, not held back");
    producer
        .send(&queue("np"), non_persistent("light"), None)
        .expect("non-persistent sends go on");
    drain_q(&f, sent).await;
    tokio::time::timeout(Duration::from_secs(10), producer.flow_gate().store.room())
        .await
        .expect("room once consumers free a segment");
    producer.commit("t").unwrap().await.unwrap();
    producer
        .send(&queue("q"), large(sent), None)
        .unwrap()
        .await
        .unwrap();
}

/// A delayed message is stored (in the holding area) even when not persistent: with
/// `send_fail_if_no_space` it is refused at the store limit like a persistent one, while
/// plain non-persistent sends go on. Before, delayed non-persistent sends filled the disk.
#[tokio::test]
async fn a_delayed_non_persistent_send_is_refused_at_the_store_limit() {
    let f = fixture(BrokerOptions {
        store_limit: 2 << 20,
        send_fail_if_no_space: true,
        expiry_sweep: Duration::from_millis(20),
        scheduler_support: true,
        ..BrokerOptions::default()
    })
    .await;
    let (producer, _) = f.broker.open_session(None);
    fill_store(&producer).await;
    let delayed_transient = NewMessage {
        persistent: false,
        headers: vec![Header::text(schedule::SCHEDULED_DELAY, "60000")],
        ..non_persistent("later")
    };
    let refused = producer.send(&queue("np"), delayed_transient, None);
    assert!(
        matches!(refused, Err(BrokerError::StoreFull { .. })),
        "{refused:?}"
    );
    producer
        .send(&queue("np"), non_persistent("now"), None)
        .expect("plain non-persistent sends go on");
}
