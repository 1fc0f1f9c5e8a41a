//! Scheduled (delayed and repeated) delivery.

use super::*;

/// A delayed message is confirmed when stored, kept out of dispatch (and of browsers) until
/// its due time, then delivered at the tail of its queue, as ActiveMQ delivers it: without
/// the scheduling property, with `scheduledJobId`; its body waited in the journal.
#[tokio::test]
async fn a_delayed_message_is_delivered_only_when_due() {
    let f = fixture(scheduling()).await;
    let (c, mut rx) = consumer_on_q(&f, 10);
    let (p, _) = f.broker.open_session(None);
    let sent = now_millis();
    send_settled(&p, &queue("q"), delayed("later", "400")).await;
    send_settled(&p, &queue("q"), persistent("now")).await;
    let first = next(&mut rx).await;
    assert_eq!(body(&first), "now");
    // Still ahead of its due time: neither delivered nor visible to a browser (which shows
    // "now", delivered and not yet acknowledged).
    if in_time_to_tell(sent + 400) {
        assert!(rx.try_recv().is_err());
        assert_eq!(f.broker.stats().scheduled, 1);
        assert_eq!(browsed_bodies(&c, &queue("q"), None), ["now"]);
    }
    let later = next(&mut rx).await;
    assert!(now_millis() >= sent + 400, "delivered early");
    assert_eq!(body(&later), "later");
    assert!(later.message.deliver_at >= sent + 400);
    assert_eq!(header(&later, schedule::SCHEDULED_DELAY), None);
    assert_eq!(
        header(&later, schedule::SCHEDULED_ID),
        Some(later.message.message_id.as_str())
    );
    let stats = f.broker.stats();
    assert_eq!((stats.scheduled, stats.bodies_read_back), (0, 1));
}

/// Without `scheduler_support` (ActiveMQ's default), the delay is an ordinary property.
#[tokio::test]
async fn without_scheduler_support_a_delay_is_an_ordinary_property() {
    let f = fixture(BrokerOptions::default()).await;
    let (_c, mut rx) = consumer_on_q(&f, 10);
    let (p, _) = f.broker.open_session(None);
    let sent = now_millis();
    send_settled(&p, &queue("q"), delayed("at once", "60000")).await;
    let d = next(&mut rx).await;
    assert!(now_millis() < sent + 60_000);
    assert_eq!(header(&d, schedule::SCHEDULED_DELAY), Some("60000"));
    assert_eq!(d.message.deliver_at, 0);
}

/// A delay that is not a whole number, a repeat for ever or of more than 1000 and a cron
/// schedule are refused, naming the property, and nothing is stored; a negative delay is none
/// (as in ActiveMQ).
#[tokio::test]
async fn bad_or_unsupported_scheduling_properties_are_refused_by_name() {
    let f = fixture(scheduling()).await;
    let (p, _) = f.broker.open_session(None);
    let with = |name: &str, value: &str| NewMessage {
        headers: vec![
            Header::text(schedule::SCHEDULED_DELAY, "100"),
            Header::text(name, value),
        ],
        ..persistent("x")
    };
    for (message, name) in [
        (delayed("x", "soon"), schedule::SCHEDULED_DELAY),
        (
            delayed("x", "9223372036854775807"),
            schedule::SCHEDULED_DELAY,
        ),
        (
            with(schedule::SCHEDULED_REPEAT, "-1"),
            schedule::SCHEDULED_REPEAT,
        ),
        (
            with(schedule::SCHEDULED_REPEAT, "1001"),
            schedule::SCHEDULED_REPEAT,
        ),
        (
            with(schedule::SCHEDULED_CRON, "0 * * * *"),
            schedule::SCHEDULED_CRON,
        ),
    ] {
        let error = p.send(&queue("q"), message, None).unwrap_err();
        assert!(error.to_string().contains(name), "{error}");
    }
    p.begin("tx").unwrap();
    let error = p
        .send(&queue("q"), delayed("x", "1.5"), Some("tx"))
        .unwrap_err();
    assert!(
        error.to_string().contains(schedule::SCHEDULED_DELAY),
        "{error}"
    );
    p.commit("tx").unwrap().await.unwrap();
    let stats = f.broker.stats();
    assert_eq!(
        (stats.scheduled, stats.enqueued),
        (0, 0),
        "nothing was stored"
    );
    let (_c, mut rx) = consumer_on_q(&f, 10);
    let sent = now_millis();
    send_settled(&p, &queue("q"), delayed("negative", "-5000")).await;
    assert_eq!(body(&next(&mut rx).await), "negative");
    assert!(now_millis() < sent + 5000);
}

/// A delayed send in a transaction is scheduled when the transaction commits (its delay counts
/// from the commit), and not at all when it rolls back.
#[tokio::test]
async fn a_delayed_send_in_a_transaction_is_scheduled_at_commit() {
    let f = fixture(scheduling()).await;
    let (_c, mut rx) = consumer_on_q(&f, 10);
    let (p, _) = f.broker.open_session(None);
    p.begin("gone").unwrap();
    p.send(&queue("q"), delayed("rolled back", "1"), Some("gone"))
        .unwrap();
    p.abort("gone").unwrap();
    p.begin("tx").unwrap();
    p.send(&queue("q"), delayed("committed", "300"), Some("tx"))
        .unwrap();
    // Time passes between the send and the commit; the delay starts at the commit.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let committed = now_millis();
    p.commit("tx").unwrap().await.unwrap();
    if in_time_to_tell(committed + 300) {
        assert!(rx.try_recv().is_err());
        assert_eq!(f.broker.stats().scheduled, 1);
    }
    let d = next(&mut rx).await;
    assert!(now_millis() >= committed + 300, "delivered early");
    assert_eq!(body(&d), "committed");
    assert!(rx.try_recv().is_err(), "the rolled back send stays unsent");
}

/// A scheduling broker on `dir` that was stopped after `message` was sent to `destination`
/// (and stored), started again; and when the message was sent.
async fn restarted_after_sending(
    dir: &std::path::Path,
    destination: Destination,
    message: NewMessage,
) -> (Broker, i64) {
    let sent = now_millis();
    {
        let broker = Broker::start_for_tests(dir, scheduling());
        let (p, _) = broker.open_session(None);
        send_settled(&p, &destination, message).await;
    }
    (Broker::start_for_tests(dir, scheduling()), sent)
}

/// The next delivery on `rx`, checked to come no earlier than `due` (and not yet there now).
async fn next_when_due(rx: &mut UnboundedReceiver<Delivery>, due: i64) -> Delivery {
    if in_time_to_tell(due) {
        assert!(rx.try_recv().is_err(), "delivered early");
    }
    let d = next(rx).await;
    assert!(now_millis() >= due, "delivered early");
    d
}

/// A stored delayed message survives a restart with its due time: after recovery it is still
/// held until then (not delivered early, not lost), its body read back from the journal.
#[tokio::test]
async fn a_delayed_message_survives_a_restart_and_is_delivered_when_due() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, sent) =
        restarted_after_sending(dir.path(), queue("q"), delayed("kept", "1500")).await;
    let (c, mut rx) = broker.open_session(None);
    subscribe(&c, "s", queue("q"), 10);
    if now_millis() < sent + 1500 {
        assert_eq!(broker.stats().scheduled, 1);
        assert_eq!(broker.queue_depth("queue://q"), 0);
    }
    let d = next_when_due(&mut rx, sent + 1500).await;
    assert_eq!(body(&d), "kept");
}

/// A delayed topic message is published when due: a subscriber that came meanwhile gets it,
/// and so does a durable subscription that existed when it was sent.
#[tokio::test]
async fn a_delayed_topic_message_is_published_when_due() {
    let f = fixture(scheduling()).await;
    let (durable, mut durable_rx) = f.broker.open_session(Some("client".into()));
    subscribe_to(&durable, "d", topic("t"), Some("sub"), None)
        .unwrap()
        .await
        .unwrap();
    let (p, _) = f.broker.open_session(None);
    let sent = now_millis();
    send_settled(&p, &topic("t"), delayed("news", "300")).await;
    let (late, mut late_rx) = f.broker.open_session(None);
    subscribe_to(&late, "s", topic("t"), None, None).unwrap();
    if in_time_to_tell(sent + 300) {
        assert!(durable_rx.try_recv().is_err() && late_rx.try_recv().is_err());
    }
    assert_eq!(body(&next(&mut late_rx).await), "news");
    assert_eq!(body(&next(&mut durable_rx).await), "news");
    assert!(now_millis() >= sent + 300, "delivered early");
}

/// Whether the clock is still before `instant` (ms since the epoch). A check that something
/// has not happened yet tells only while it has not become due; on a loaded machine the test
/// may get there too late, and then skips that check (the ones made after the delivery, that
/// it came no earlier than due, still run).
fn in_time_to_tell(instant: i64) -> bool {
    now_millis() < instant
}

/// Waits (polling, with a deadline) until the clock is past `instant` (ms since the epoch).
async fn wait_past(instant: i64) {
    let deadline = now_millis() + 10_000;
    while now_millis() <= instant {
        assert!(now_millis() < deadline, "the clock did not pass {instant}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// As ActiveMQ routes a scheduled message only when it is due, a delayed topic message goes to
/// the durable subscriptions of that moment: one created after the send gets it (active, or
/// inactive and back later), and one removed meanwhile does not, nor is anything kept for it.
#[tokio::test]
async fn a_delayed_topic_message_goes_to_the_durable_subscriptions_of_its_due_time() {
    let dir = tempfile::tempdir().unwrap();
    let sent = now_millis();
    {
        let broker = Broker::start_for_tests(dir.path(), scheduling());
        let (gone, _) = broker.open_session(Some("gone".into()));
        subscribe_to(&gone, "d", topic("t"), Some("sub"), None)
            .unwrap()
            .await
            .unwrap();
        let (p, _) = broker.open_session(None);
        send_settled(&p, &topic("t"), delayed("news", "500")).await;
        gone.unsubscribe("d").unwrap().await.unwrap();
        gone.remove_durable("sub").unwrap().await.unwrap();
        let (active, mut active_rx) = broker.open_session(Some("active".into()));
        subscribe_to(&active, "d", topic("t"), Some("sub"), None)
            .unwrap()
            .await
            .unwrap();
        let (away, _) = broker.open_session(Some("away".into()));
        subscribe_to(&away, "d", topic("t"), Some("sub"), None)
            .unwrap()
            .await
            .unwrap();
        away.unsubscribe("d").unwrap().await.unwrap();
        if in_time_to_tell(sent + 500) {
            assert!(active_rx.try_recv().is_err());
        }
        assert_eq!(body(&next(&mut active_rx).await), "news");
        assert!(now_millis() >= sent + 500, "delivered early");
        assert_eq!(broker.queue_depth("durable://away:sub"), 1);
        assert_eq!(broker.queue_depth("durable://gone:sub"), 0);
    }
    // Stored for the inactive one, which gets it when back (after a restart too).
    let broker = Broker::start_for_tests(dir.path(), scheduling());
    let (away, mut away_rx) = broker.open_session(Some("away".into()));
    subscribe_to(&away, "d", topic("t"), Some("sub"), None).unwrap();
    assert_eq!(body(&next(&mut away_rx).await), "news");
    assert_eq!(broker.queue_depth("durable://gone:sub"), 0);
}

/// A persistent delayed topic message is stored even when no durable subscription exists (as
/// ActiveMQ's scheduler store keeps every scheduled message): a restart before it is due does
/// not lose it for the subscribers there are when it is.
#[tokio::test]
async fn a_delayed_topic_message_without_durable_subscribers_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, sent) =
        restarted_after_sending(dir.path(), topic("t"), delayed("news", "1500")).await;
    let (s, mut rx) = broker.open_session(None);
    subscribe_to(&s, "s", topic("t"), None, None).unwrap();
    let d = next_when_due(&mut rx, sent + 1500).await;
    assert_eq!(body(&d), "news");
}

/// A delayed non-persistent message waits in the store, as ActiveMQ's does in its scheduler
/// store: a restart keeps it, and it is still delivered as non-persistent.
#[tokio::test]
async fn a_delayed_non_persistent_message_survives_a_restart_and_stays_non_persistent() {
    let dir = tempfile::tempdir().unwrap();
    let transient = NewMessage {
        persistent: false,
        ..delayed("kept", "1500")
    };
    let (broker, sent) = restarted_after_sending(dir.path(), queue("q"), transient).await;
    let (c, mut rx) = broker.open_session(None);
    subscribe(&c, "s", queue("q"), 10);
    let d = next_when_due(&mut rx, sent + 1500).await;
    assert_eq!(body(&d), "kept");
    assert!(!d.message.persistent, "delivered as non-persistent");
}

/// Delayed messages that fall due while the broker is down are delivered after the restart: a
/// non-persistent queue message, and a topic message to a durable subscription created after
/// it was sent (which did not exist when it was sent, and does when it is due).
#[tokio::test]
async fn messages_due_while_the_broker_was_down_are_delivered_after_the_restart() {
    // Long enough for the first broker to be stopped before anything is due, also on a loaded
    // machine.
    const DELAY: i64 = 2_500;
    let dir = tempfile::tempdir().unwrap();
    let sent = now_millis();
    {
        let broker = Broker::start_for_tests(dir.path(), scheduling());
        let (p, _) = broker.open_session(None);
        let transient = NewMessage {
            persistent: false,
            ..delayed("queued", &DELAY.to_string())
        };
        send_settled(&p, &queue("q"), transient).await;
        send_settled(&p, &topic("t"), delayed("published", &DELAY.to_string())).await;
        let (d, _) = broker.open_session(Some("client".into()));
        subscribe_to(&d, "d", topic("t"), Some("sub"), None)
            .unwrap()
            .await
            .unwrap();
        d.unsubscribe("d").unwrap().await.unwrap();
        assert!(
            now_millis() < sent + DELAY,
            "stopping the broker came too late to tell"
        );
    }
    wait_past(sent + DELAY).await;
    let broker = Broker::start_for_tests(dir.path(), scheduling());
    let (c, mut rx) = broker.open_session(None);
    subscribe(&c, "s", queue("q"), 10);
    let d = next(&mut rx).await;
    assert_eq!(body(&d), "queued");
    assert!(!d.message.persistent);
    let (durable, mut durable_rx) = broker.open_session(Some("client".into()));
    subscribe_to(&durable, "d", topic("t"), Some("sub"), None).unwrap();
    assert_eq!(body(&next(&mut durable_rx).await), "published");
    assert_eq!(broker.stats().scheduled, 0);
}

/// A delayed composite send (a queue and a topic) is routed when due, member by member: the
/// queue gets it, and so does a durable subscription on the topic made after the send.
#[tokio::test]
async fn a_delayed_composite_send_reaches_the_members_subscriptions_of_its_due_time() {
    let f = fixture(scheduling()).await;
    let (c, mut queue_rx) = consumer_on_q(&f, 10);
    let (p, _) = f.broker.open_session(None);
    let sent = now_millis();
    p.send_to_each(&[queue("q"), topic("t")], delayed("both", "500"), None)
        .unwrap()
        .await
        .unwrap();
    let (d, mut durable_rx) = f.broker.open_session(Some("client".into()));
    subscribe_to(&d, "d", topic("t"), Some("sub"), None)
        .unwrap()
        .await
        .unwrap();
    assert_eq!(f.broker.stats().scheduled, 2);
    let q = next_when_due(&mut queue_rx, sent + 500).await;
    assert_eq!(
        (body(&q), q.message.destination.as_str()),
        ("both", "queue://q")
    );
    let t = next(&mut durable_rx).await;
    assert_eq!(
        (body(&t), t.message.destination.as_str()),
        ("both", "topic://t")
    );
    drop(c);
}

/// A journal written before the holding area existed keeps a scheduled message at its
/// destination with its due time ahead: it is still held until then, and delivered.
#[tokio::test]
async fn a_delayed_message_stored_at_its_queue_by_an_older_version_is_held_until_due() {
    let dir = tempfile::tempdir().unwrap();
    let due = now_millis() + 1000;
    {
        let (tx, rx) = std::sync::mpsc::channel();
        let (mut store, _) = crate::store::Store::open(
            crate::store::StoreOptions {
                directory: dir.path().to_path_buf(),
                log_size: 1 << 20,
                fsync: false,
                only_copy: false,
                hold_releases: false,
                recovered_bodies: u64::MAX,
            },
            Box::new(move |p| {
                let _ = tx.send(p);
            }),
        )
        .unwrap();
        let message = crate::store::Message {
            message_id: "ID:old:1".into(),
            destination: "queue://q".into(),
            persistent: true,
            body: "old".into(),
            deliver_at: due,
            ..Default::default()
        };
        let add = crate::store::Entry {
            kind: Some(crate::store::entry::Kind::Add(crate::store::MessageAdd {
                queues: vec!["queue://q".into()],
                message: Some(message),
            })),
        };
        store
            .append(&crate::store::Record {
                epoch: 1,
                entries: vec![add],
            })
            .unwrap();
        let end = store.end();
        while rx.recv_timeout(Duration::from_secs(10)).expect("durable") < end {}
    }
    let broker = Broker::start_for_tests(dir.path(), scheduling());
    let (c, mut rx) = broker.open_session(None);
    subscribe(&c, "s", queue("q"), 10);
    if in_time_to_tell(due) {
        assert!(rx.try_recv().is_err());
        assert_eq!(broker.stats().scheduled, 1);
    }
    let d = next(&mut rx).await;
    assert!(now_millis() >= due, "delivered early");
    assert_eq!(body(&d), "old");
}

/// As in ActiveMQ, a delayed message's time to live counts from its due time: one that would
/// have expired while it waited is delivered, and expires that long after it is due.
#[tokio::test]
async fn a_delayed_messages_time_to_live_counts_from_its_due_time() {
    let f = fixture(scheduling()).await;
    let (_c, mut rx) = consumer_on_q(&f, 10);
    let (p, _) = f.broker.open_session(None);
    let mut m = delayed("fresh", "300");
    m.timestamp = now_millis();
    m.expiration = m.timestamp + 100;
    p.send(&queue("q"), m, None).unwrap().await.unwrap();
    let d = next(&mut rx).await;
    assert_eq!(body(&d), "fresh");
    assert_eq!(d.message.timestamp, d.message.deliver_at);
    assert_eq!(d.message.expiration, d.message.deliver_at + 100);
    assert_eq!(f.broker.stats().expired, 0);
}

/// A deleted (temporary) queue's delayed non-persistent messages go with it: when due they
/// would make the queue again, for nobody.
#[tokio::test]
async fn a_deleted_queue_drops_its_delayed_non_persistent_messages() {
    let f = fixture(scheduling()).await;
    let (p, _) = f.broker.open_session(None);
    let transient = NewMessage {
        persistent: false,
        ..delayed("reply", "60000")
    };
    send_settled(&p, &queue("temp"), transient).await;
    assert_eq!(f.broker.stats().scheduled, 1);
    assert!(f.broker.delete_destination(&queue("temp")));
    assert_eq!(f.broker.stats().scheduled, 0);
    // Removed from the store too: a restart does not bring it back.
    let dir = f._dir;
    drop((p, f.broker));
    let broker = Broker::start_for_tests(dir.path(), scheduling());
    assert_eq!(broker.stats().scheduled, 0);
}

/// `AMQ_SCHEDULED_PERIOD` and `AMQ_SCHEDULED_REPEAT`: the message is delivered once more per
/// repeat, a period apart, each time as a message with an id of its own and the same
/// `scheduledJobId`, as ActiveMQ does. All are stored with the send, so a restart keeps them.
#[tokio::test]
async fn a_repeated_message_is_delivered_once_a_period_also_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sent = now_millis();
    {
        let broker = Broker::start_for_tests(dir.path(), scheduling());
        let (p, _) = broker.open_session(None);
        let message = NewMessage {
            headers: vec![
                Header::text(schedule::SCHEDULED_DELAY, "300"),
                Header::text(schedule::SCHEDULED_PERIOD, "300"),
                Header::text(schedule::SCHEDULED_REPEAT, "2"),
            ],
            ..persistent("tick")
        };
        send_settled(&p, &queue("q"), message).await;
        assert_eq!(broker.stats().scheduled, 3);
    }
    let broker = Broker::start_for_tests(dir.path(), scheduling());
    let (c, mut rx) = broker.open_session(None);
    subscribe(&c, "s", queue("q"), 10);
    let mut ids = std::collections::BTreeSet::new();
    let mut jobs = std::collections::BTreeSet::new();
    for k in 0..3 {
        let d = next(&mut rx).await;
        let due = sent + 300 + 300 * k;
        assert!(now_millis() >= due, "delivery {k} came early");
        assert_eq!(body(&d), "tick");
        assert_eq!(header(&d, schedule::SCHEDULED_REPEAT), None);
        assert_eq!(header(&d, schedule::SCHEDULED_PERIOD), None);
        ids.insert(d.message.message_id.clone());
        jobs.insert(header(&d, schedule::SCHEDULED_ID).unwrap().to_string());
    }
    assert_eq!((ids.len(), jobs.len()), (3, 1));
    assert_eq!(broker.stats().scheduled, 0);
    assert!(rx.try_recv().is_err());
}

/// A repeated send in a transaction makes its deliveries when the transaction commits.
#[tokio::test]
async fn a_repeated_send_in_a_transaction_is_delivered_each_period_after_the_commit() {
    let f = fixture(scheduling()).await;
    let (_c, mut rx) = consumer_on_q(&f, 10);
    let (p, _) = f.broker.open_session(None);
    p.begin("tx").unwrap();
    let message = NewMessage {
        headers: vec![
            Header::text(schedule::SCHEDULED_PERIOD, "200"),
            Header::text(schedule::SCHEDULED_REPEAT, "1"),
        ],
        ..persistent("twice")
    };
    p.send(&queue("q"), message, Some("tx")).unwrap();
    assert_eq!(f.broker.stats().scheduled, 0);
    let committed = now_millis();
    p.commit("tx").unwrap().await.unwrap();
    if now_millis() < committed + 200 {
        assert_eq!(f.broker.stats().scheduled, 2);
    }
    for k in 1..=2 {
        let d = next(&mut rx).await;
        assert!(
            now_millis() >= committed + 200 * k,
            "delivery {k} came early"
        );
        assert_eq!(body(&d), "twice");
    }
    assert_eq!(f.broker.stats().scheduled, 0);
}

/// Many delayed messages due at the same time are released a batch at a time, each batch
/// under its own hold of the core lock, not all at once (which kept every client waiting on
/// the lock while 100k messages were dispatched); the sweep task comes back for the rest at
/// once.
#[tokio::test]
async fn many_messages_due_at_once_are_released_a_batch_per_lock() {
    let f = fixture(scheduling()).await;
    let (p, _) = f.broker.open_session(None);
    // Long enough to store them all before the first is due, also on a loaded machine.
    const DELAY: i64 = 3_000;
    let count = super::core::RELEASE_BATCH * 2 + 10;
    let sent = now_millis();
    let mut stored = Vec::new();
    for k in 0..count {
        let message = NewMessage {
            persistent: false,
            ..delayed(&format!("m{k}"), &DELAY.to_string())
        };
        stored.push(p.send(&queue("q"), message, None).unwrap());
    }
    for confirmation in stored {
        confirmation.await.unwrap();
    }
    assert!(now_millis() < sent + DELAY, "storing took too long to tell");
    // The sweep task does not run from here on (no await on this single-threaded runtime).
    assert_eq!(f.broker.stats().scheduled, count);
    let last_due = now_millis() + DELAY;
    while now_millis() <= last_due {
        std::thread::sleep(Duration::from_millis(1));
    }
    let wait = lock(&f.broker.shared).release_due();
    assert_eq!(
        f.broker.stats().scheduled,
        count - super::core::RELEASE_BATCH
    );
    assert_eq!(wait, Some(Duration::ZERO), "more are due already");
    let mut calls = 1;
    loop {
        calls += 1;
        if lock(&f.broker.shared).release_due().is_none() {
            break;
        }
    }
    assert_eq!((calls, f.broker.stats().scheduled), (3, 0));
}

/// Delayed non-persistent messages, queue and topic alike, wait in the store as ActiveMQ's
/// wait in its job scheduler store: not in memory, so they neither fill `memory_limit` nor hold
/// their senders back; each body is read back from the journal when it is due.
#[tokio::test]
async fn delayed_non_persistent_messages_wait_in_the_store_not_in_memory() {
    // Under the 16 KiB sent, over the 8 KiB of topic messages the subscriber is handed at once
    // when due (a topic subscriber's window is bounded by `memory_limit` too).
    let f = fixture(BrokerOptions {
        memory_limit: 12 * 1024,
        ..scheduling()
    })
    .await;
    let (s, mut rx) = f.broker.open_session(None);
    subscribe_to(&s, "t", topic("t"), None, None).unwrap();
    subscribe(&s, "q", queue("q"), 100);
    let (producer, _) = f.broker.open_session(None);
    let gate = producer.flow_gate().memory;
    let sent = now_millis();
    for i in 0..8 {
        for destination in [topic("t"), queue("q")] {
            let message = NewMessage {
                persistent: false,
                ..delayed(&format!("{i:04}:{}", "x".repeat(1019)), "600")
            };
            send_settled(&producer, &destination, message).await;
        }
    }
    if in_time_to_tell(sent + 600) {
        let stats = f.broker.stats();
        assert_eq!((stats.scheduled, stats.transient_bytes), (16, 0));
    }
    assert!(!gate.is_full());
    for _ in 0..16 {
        let d = next(&mut rx).await;
        assert!(!d.message.persistent);
    }
    assert!(now_millis() >= sent + 600, "delivered early");
    assert_eq!(f.broker.stats().bodies_read_back, 16);
}

/// A delayed message is stored (in the holding area) even when not persistent, so a re-send
/// of its producer sequence (a client that lost the receipt) is recognised and stored once.
#[tokio::test]
async fn a_resent_delayed_non_persistent_message_is_stored_once() {
    let f = fixture(scheduling()).await;
    let (s, _) = f.broker.open_session(None);
    let m = NewMessage {
        persistent: false,
        message_id: Some("ID:producer-1:7".into()),
        ..delayed("once", "60000")
    };
    s.send(&queue("q"), m.clone(), None).unwrap().await.unwrap();
    s.send(&queue("q"), m, None).unwrap().await.unwrap();
    assert_eq!(f.broker.stats().duplicates_dropped, 1);
}
