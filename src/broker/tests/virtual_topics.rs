//! Virtual topics: fan-out to consumer queues, the configured rule, restarts and browsing.

use super::*;

#[tokio::test]
async fn a_virtual_topic_fans_out_to_each_consumer_queue_with_one_record_per_send() {
    let f = fixture(BrokerOptions::default()).await;
    let (p, _) = f.broker.open_session(None);
    // Sent before any consumer queue exists: it reaches none of them (as in ActiveMQ, where the
    // copies go to the queues that exist at send time).
    send_confirmed(&p, &topic("VirtualTopic.Orders"), "early").await;
    let (a1, mut rx_a1) = f.broker.open_session(None);
    let (a2, mut rx_a2) = f.broker.open_session(None);
    let (b, mut rx_b) = f.broker.open_session(None);
    let (t, mut rx_t) = f.broker.open_session(None);
    // Competing consumers on system A's queue, one on system B's, and a plain topic subscriber.
    subscribe_virtual(&a1, "a1", "Consumer.A.VirtualTopic.Orders", None).await;
    subscribe_virtual(&a2, "a2", "Consumer.A.VirtualTopic.Orders", None).await;
    subscribe_virtual(&b, "b", "Consumer.B.VirtualTopic.Orders", None).await;
    subscribe_to(&t, "t", topic("VirtualTopic.Orders"), None, None).unwrap();
    // Not consumer queues of this virtual topic: an ordinary topic, a deeper consumer name.
    let (o, mut rx_o) = f.broker.open_session(None);
    subscribe_virtual(&o, "o1", "Consumer.A.Orders", None).await;
    subscribe_virtual(&o, "o2", "Consumer.A.x.VirtualTopic.Orders", None).await;

    let start = crate::store::Position(f.broker.stats().journal_end);
    for i in 0..4 {
        send_confirmed(&p, &topic("VirtualTopic.Orders"), &i.to_string()).await;
    }
    let end = crate::store::Position(f.broker.stats().journal_end);
    // One record per send, whose one MessageAdd names both consumer queues (not one per queue).
    let records: Vec<crate::store::Record> = lock(&f.broker.shared)
        .store()
        .reader()
        .records(start, end)
        .map(|r| r.unwrap().1)
        .collect();
    assert_eq!(records.len(), 4);
    for record in &records {
        let [crate::store::Entry {
            kind: Some(crate::store::entry::Kind::Add(add)),
        }] = record.entries.as_slice()
        else {
            panic!("not one MessageAdd: {record:?}");
        };
        assert_eq!(
            add.queues,
            [
                "queue://Consumer.A.VirtualTopic.Orders",
                "queue://Consumer.B.VirtualTopic.Orders"
            ]
        );
    }

    let mut a: Vec<String> = Vec::new();
    for _ in 0..2 {
        a.push(body(&next(&mut rx_a1).await).into());
        a.push(body(&next(&mut rx_a2).await).into());
    }
    a.sort();
    assert_eq!(a, ["0", "1", "2", "3"], "A's consumers share its copies");
    for i in 0..4 {
        let d = next(&mut rx_b).await;
        assert_eq!(body(&d), i.to_string());
        // Addressed to the consumer queue, from the topic (ActiveMQ's setOriginalDestination).
        assert_eq!(
            d.message.destination,
            "queue://Consumer.B.VirtualTopic.Orders"
        );
        assert!(d
            .message
            .headers
            .iter()
            .any(|h| h.name == "original-destination" && h.value == "topic://VirtualTopic.Orders"));
        assert_eq!(body(&next(&mut rx_t).await), i.to_string());
    }
    // Dispatch runs under the core's lock: once it is taken again, nothing more is on its way.
    let _ = p.next_tag();
    assert!(rx_a1.try_recv().is_err() && rx_a2.try_recv().is_err());
    assert!(rx_b.try_recv().is_err() && rx_t.try_recv().is_err());
    assert!(
        rx_o.try_recv().is_err(),
        "only Consumer.<one segment>. queues"
    );
    assert_eq!(
        f.broker
            .queue_depth("queue://Consumer.A.VirtualTopic.Orders"),
        0
    );

    // Non-persistent messages are copied too, in memory.
    p.send(&topic("VirtualTopic.Orders"), non_persistent("np"), None)
        .unwrap()
        .await
        .unwrap();
    assert_eq!(body(&next(&mut rx_b).await), "np");
    assert_eq!(body(&next(&mut rx_t).await), "np");
    let d = tokio::select! {
        d = next(&mut rx_a1) => d,
        d = next(&mut rx_a2) => d,
    };
    assert_eq!(body(&d), "np");
}

#[tokio::test]
async fn virtual_topics_follow_the_configured_rule_or_none() {
    // ActiveMQ's documented alternative: every topic virtual, consumer queues
    // `VirtualTopicConsumers.<system>.<topic>`.
    let rule =
        crate::broker::virtual_topic::VirtualTopics::new(">", "VirtualTopicConsumers.*.", "")
            .unwrap();
    let f = fixture(BrokerOptions {
        virtual_topics: Some(rule),
        ..BrokerOptions::default()
    })
    .await;
    let (p, _) = f.broker.open_session(None);
    let (c, _rx) = f.broker.open_session(None);
    subscribe_virtual(&c, "billing", "VirtualTopicConsumers.billing.orders", None).await;
    subscribe_virtual(&c, "default", "Consumer.A.VirtualTopic.Orders", None).await;
    c.unsubscribe("billing").unwrap();
    c.unsubscribe("default").unwrap();
    send_confirmed(&p, &topic("orders"), "1").await;
    send_confirmed(&p, &topic("VirtualTopic.Orders"), "2").await;
    assert_eq!(
        f.broker
            .queue_depth("queue://VirtualTopicConsumers.billing.orders"),
        1
    );
    assert_eq!(
        f.broker
            .queue_depth("queue://Consumer.A.VirtualTopic.Orders"),
        0,
        "the default rule no longer applies"
    );

    // Off (`use_virtual_topics = false`): a queue named like a consumer queue is only a queue.
    let f = fixture(BrokerOptions {
        virtual_topics: None,
        ..BrokerOptions::default()
    })
    .await;
    let (p, _) = f.broker.open_session(None);
    let (c, _rx) = f.broker.open_session(None);
    subscribe_virtual(&c, "a", "Consumer.A.VirtualTopic.Orders", None).await;
    c.unsubscribe("a").unwrap();
    send_confirmed(&p, &topic("VirtualTopic.Orders"), "3").await;
    assert_eq!(
        f.broker
            .queue_depth("queue://Consumer.A.VirtualTopic.Orders"),
        0
    );
}

#[tokio::test]
async fn a_virtual_topic_consumer_queue_is_an_ordinary_queue_to_its_consumers() {
    let f = fixture(BrokerOptions::default()).await;
    // No client id needed, and any number of consumers at once, with selectors.
    let (c1, mut rx1) = f.broker.open_session(None);
    let (c2, mut rx2) = f.broker.open_session(None);
    subscribe_virtual(
        &c1,
        "red",
        "Consumer.A.VirtualTopic.Orders",
        Some("color = 'red'"),
    )
    .await;
    subscribe_virtual(
        &c2,
        "blue",
        "Consumer.A.VirtualTopic.Orders",
        Some("color = 'blue'"),
    )
    .await;
    let (p, _) = f.broker.open_session(None);
    for (color, b) in [("red", "r"), ("blue", "b")] {
        p.send(&topic("VirtualTopic.Orders"), colored(color, b), None)
            .unwrap()
            .await
            .unwrap();
    }
    let red = next(&mut rx1).await;
    assert_eq!(body(&red), "r");
    assert_eq!(body(&next(&mut rx2).await), "b");
    // Unsubscribing leaves the queue and its messages alone.
    c2.unsubscribe("blue").unwrap().await.unwrap();
    // A NACK dead-letters the copy, naming the consumer queue it was on.
    c1.nack(red.tag, None).unwrap().await.unwrap();
    let (d, mut rx_d) = f.broker.open_session(None);
    subscribe(&d, "dlq", queue("ActiveMQ.DLQ"), 10);
    let dead = next(&mut rx_d).await;
    assert_eq!(body(&dead), "r");
    assert!(dead
        .message
        .headers
        .iter()
        .any(|h| h.name == "original-destination"
            && h.value == "queue://Consumer.A.VirtualTopic.Orders"));
    // Status shows it as a queue.
    let stats = f.broker.queue_stats();
    assert!(stats
        .iter()
        .any(|q| q.name == "queue://Consumer.A.VirtualTopic.Orders" && q.consumers == 1));
    p.send(&topic("VirtualTopic.Orders"), colored("blue", "b2"), None)
        .unwrap()
        .await
        .unwrap();
    // "b", back when its consumer left unacknowledged, and "b2".
    assert_eq!(
        f.broker
            .queue_depth("queue://Consumer.A.VirtualTopic.Orders"),
        2
    );
}

/// A broker on `dir` whose virtual topic consumer queue `Consumer.A.VirtualTopic.Orders` is
/// recorded, with no consumer left on it.
async fn consumer_queue_recorded(dir: &std::path::Path) -> Broker {
    let broker = Broker::start_for_tests(dir, BrokerOptions::default());
    let (c, _) = broker.open_session(None);
    subscribe_virtual(&c, "a", "Consumer.A.VirtualTopic.Orders", None).await;
    c.unsubscribe("a").unwrap();
    broker
}

/// A consumer queue made while virtual topics were on is no longer fed once a restart turns
/// them off: it keeps its messages as an ordinary queue, consumable and deletable. Before, its
/// stored record kept its topic feeding it for good.
#[tokio::test]
async fn a_consumer_queue_is_not_fed_once_virtual_topics_are_off() {
    let dir = tempfile::tempdir().unwrap();
    let q = "queue://Consumer.A.VirtualTopic.Orders";
    {
        let broker = consumer_queue_recorded(dir.path()).await;
        let (p, _) = broker.open_session(None);
        send_confirmed(&p, &topic("VirtualTopic.Orders"), "while on").await;
        assert_eq!(broker.queue_depth(q), 1);
    }
    let off = BrokerOptions {
        virtual_topics: None,
        ..BrokerOptions::default()
    };
    let broker = Broker::start_for_tests(dir.path(), off);
    let (p, _) = broker.open_session(None);
    send_confirmed(&p, &topic("VirtualTopic.Orders"), "while off").await;
    assert_eq!(broker.queue_depth(q), 1, "only the message sent while on");
    let (c, mut rx) = broker.open_session(None);
    subscribe(&c, "a", queue("Consumer.A.VirtualTopic.Orders"), 10);
    assert_eq!(body(&next(&mut rx).await), "while on");
}

/// A consumer queue recorded for one topic, with settings that now make it another topic's
/// (`Consumer.*.VirtualTopic.` as the prefix: `Consumer.A.VirtualTopic.Orders` is `Orders`'s),
/// is recorded again for that topic at its next consumer, and fed by it.
#[tokio::test]
async fn a_consumer_queue_is_fed_by_the_topic_new_settings_give_it() {
    let dir = tempfile::tempdir().unwrap();
    drop(consumer_queue_recorded(dir.path()).await);
    let rule =
        crate::broker::virtual_topic::VirtualTopics::new(">", "Consumer.*.VirtualTopic.", "")
            .unwrap();
    let broker = Broker::start_for_tests(
        dir.path(),
        BrokerOptions {
            virtual_topics: Some(rule),
            ..BrokerOptions::default()
        },
    );
    let (c, mut rx) = broker.open_session(None);
    subscribe_virtual(&c, "a", "Consumer.A.VirtualTopic.Orders", None).await;
    let (p, _) = broker.open_session(None);
    send_confirmed(&p, &topic("Orders"), "fed").await;
    assert_eq!(body(&next(&mut rx).await), "fed");
}

#[tokio::test]
async fn a_virtual_topic_consumer_queue_stays_known_across_restarts_and_index_rebuilds() {
    let dir = tempfile::tempdir().unwrap();
    let q = "queue://Consumer.A.VirtualTopic.Orders";
    drop(consumer_queue_recorded(dir.path()).await);
    {
        // Restarted with no consumer: the queue still receives.
        let broker = Broker::start_for_tests(dir.path(), BrokerOptions::default());
        let (p, _) = broker.open_session(None);
        send_confirmed(&p, &topic("VirtualTopic.Orders"), "after restart").await;
        assert_eq!(broker.queue_depth(q), 1);
    }
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let broker = Broker::start_for_tests(dir.path(), BrokerOptions::default());
    assert!(lock(&broker.shared).store().stats().index_rebuilt);
    assert_eq!(broker.queue_depth(q), 1);
    let (p, _) = broker.open_session(None);
    send_confirmed(&p, &topic("VirtualTopic.Orders"), "after rebuild").await;
    let (c, mut rx) = broker.open_session(None);
    subscribe(&c, "a", queue("Consumer.A.VirtualTopic.Orders"), 10);
    assert_eq!(body(&next(&mut rx).await), "after restart");
    assert_eq!(body(&next(&mut rx).await), "after rebuild");
    // Recorded once: subscribing again writes nothing.
    let end = broker.stats().journal_end;
    let (c2, _) = broker.open_session(None);
    subscribe(&c2, "a", queue("Consumer.A.VirtualTopic.Orders"), 10);
    assert_eq!(broker.stats().journal_end, end);
}

#[tokio::test]
async fn virtual_topic_consumer_queues_do_not_pin_journal_segments() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), BrokerOptions::default());
    let (c, mut rx) = broker.open_session(None);
    subscribe_virtual(&c, "a", "Consumer.A.VirtualTopic.Orders", None).await;
    let (p, _) = broker.open_session(None);
    let big = "x".repeat(64 << 10);
    // Many segments' worth, each consumed: the segment holding the consumer queue's record
    // is forwarded (re-added) like a durable subscription's, not kept for ever.
    // Each message is acknowledged after the next one arrives, so that every segment holds the
    // removal of a message added in the one before it (as a consumer that keeps a backlog).
    let mut previous: Option<Delivery> = None;
    for _ in 0..200 {
        send_confirmed(&p, &topic("VirtualTopic.Orders"), &big).await;
        let d = next(&mut rx).await;
        if let Some(previous) = previous.replace(d) {
            c.ack(previous.tag, AckScope::Single, None)
                .unwrap()
                .await
                .unwrap();
        }
    }
    lock(&broker.shared).release_confirmed();
    let stats = lock(&broker.shared).store().stats();
    assert!(
        stats.bytes < 8 << 20,
        "{} bytes retained after 12.5 MiB consumed",
        stats.bytes
    );
    assert!(stats.forwarded_records > 0);
    drop((c, rx, p, broker));
    // Still known after a restart from what is left; the unacknowledged last one is back too.
    let broker = Broker::start_for_tests(dir.path(), BrokerOptions::default());
    send_confirmed(
        &broker.open_session(None).0,
        &topic("VirtualTopic.Orders"),
        "still",
    )
    .await;
    assert_eq!(
        broker.queue_depth("queue://Consumer.A.VirtualTopic.Orders"),
        2
    );
}

/// A queue browser on a virtual topic's consumer queue sees what its consumers would receive:
/// messages addressed to the queue, with the topic as their original destination (not the
/// stored message, which names the topic all consumer queues share).
#[tokio::test]
async fn a_browser_on_a_virtual_topic_consumer_queue_sees_the_queue_copies() {
    let f = fixture(BrokerOptions::default()).await;
    let (c, _) = f.broker.open_session(None);
    subscribe_virtual(&c, "a", "Consumer.A.VirtualTopic.Orders", None).await;
    c.unsubscribe("a").unwrap().await.unwrap();
    let (p, _) = f.broker.open_session(None);
    send_confirmed(&p, &topic("VirtualTopic.Orders"), "m").await;
    let browsed = browse_all(&p, &queue("Consumer.A.VirtualTopic.Orders"), None);
    assert_eq!(browsed.len(), 1);
    let (message, _) = &browsed[0];
    assert_eq!(
        message.destination,
        "queue://Consumer.A.VirtualTopic.Orders"
    );
    assert!(message
        .headers
        .iter()
        .any(|h| h.name == "original-destination" && h.value == "topic://VirtualTopic.Orders"));
}
