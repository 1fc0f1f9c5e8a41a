//! Durable subscriptions: kept while away, on patterns, recovered, removed, client ids.

use super::*;

/// Subscribes `s` durably (subscription "sub", id "d", prefetch 10) to `topic`.
fn durable_sub(s: &Session, topic: &Destination) -> Result<Confirmation, BrokerError> {
    s.subscribe(SubscribeRequest {
        durable_name: Some("sub".into()),
        ..request("d", topic.clone(), 10)
    })
}

#[tokio::test]
async fn a_durable_subscription_keeps_messages_while_away() {
    let f = fixture(BrokerOptions::default()).await;
    let topic = Destination::Topic("news".into());
    let durable = |s: &Session| durable_sub(s, &topic);
    let (s, _) = f.broker.open_session(Some("client-1".into()));
    durable(&s).unwrap().await.unwrap();
    drop(s);
    let (producer, _) = f.broker.open_session(None);
    producer
        .send(&topic, persistent("while away"), None)
        .unwrap()
        .await
        .unwrap();
    let (s, mut rx) = f.broker.open_session(Some("client-1".into()));
    durable(&s).unwrap();
    assert_eq!(body(&next(&mut rx).await), "while away");
    // Active already: a second consumer of it (another subscription id) is refused.
    let again = s.subscribe(SubscribeRequest {
        durable_name: Some("sub".into()),
        ..request("d2", topic.clone(), 10)
    });
    assert_eq!(again.unwrap_err(), BrokerError::DurableInUse("sub".into()));
}

/// A durable subscription to a queue is refused, as ActiveMQ refuses it (a STOMP SUBSCRIBE
/// naming `activemq.subscriptionName` on `/queue/...`), rather than taken as a plain one.
#[tokio::test]
async fn a_durable_subscription_to_a_queue_is_refused() {
    let f = fixture(BrokerOptions::default()).await;
    let (s, _) = f.broker.open_session(Some("client-1".into()));
    let refused = durable_sub(&s, &queue("orders")).unwrap_err();
    assert_eq!(
        refused,
        BrokerError::DurableOnQueue("queue://orders".into())
    );
    assert!(f.broker.queue_stats().iter().all(|q| q.consumers == 0));
}

/// As in ActiveMQ (`keepDurableSubsActive`, on by default), a durable subscription whose
/// subscriber is away keeps non-persistent messages as well as persistent ones, in the order
/// sent; but only while the non-persistent bodies held stay under half of `memory_limit`: past
/// that it misses them, rather than fill the limit and pause every non-persistent producer.
#[tokio::test]
async fn an_offline_durable_subscription_keeps_non_persistent_messages_within_half_the_memory_limit(
) {
    let f = fixture_with_memory_limit(1000).await;
    let topic = Destination::Topic("news".into());
    let durable = |s: &Session| durable_sub(s, &topic);
    let hundred = |i: usize| non_persistent(&format!("{i:0>100}"));
    let (producer, _) = f.broker.open_session(None);
    let (s, rx) = f.broker.open_session(Some("client-1".into()));
    durable(&s).unwrap().await.unwrap();
    drop(s);
    // Five bodies of 100 bytes fill half of the 1000-byte limit; the rest are missed.
    for i in 0..8 {
        send_settled(&producer, &topic, hundred(i)).await;
    }
    send_settled(&producer, &topic, persistent("kept")).await;
    assert_eq!(f.broker.queue_depth("durable://client-1:sub"), 6);
    let (s, mut rx2) = f.broker.open_session(Some("client-1".into()));
    durable(&s).unwrap().await.unwrap();
    let mut got = Vec::new();
    for _ in 0..6 {
        let d = next(&mut rx2).await;
        got.push(body(&d).trim_start_matches('0').to_string());
        s.ack(d.tag, AckScope::Single, None).unwrap();
    }
    assert_eq!(got, ["", "1", "2", "3", "4", "kept"]);
    drop(s);
    drop(rx);
    // Read, they made room: away again, it keeps them again.
    send_settled(&producer, &topic, non_persistent("away again")).await;
    assert_eq!(f.broker.queue_depth("durable://client-1:sub"), 1);
    let (s, mut rx) = f.broker.open_session(Some("client-1".into()));
    durable(&s).unwrap().await.unwrap();
    assert_eq!(body(&next(&mut rx).await), "away again");
}

/// A client id is held by one connection at a time, as in ActiveMQ: a second connection with
/// it is refused (naming where the first connects from) unless the first closes within the
/// grace; once it has closed the id is free again. Sessions without one, or with an empty one,
/// are not limited. In paused time: the grace and the hand-over are timed exactly.
#[tokio::test(start_paused = true)]
async fn a_client_id_is_held_by_one_connection_at_a_time() {
    let f = fixture(BrokerOptions::default()).await;
    let first = f
        .broker
        .connect(Some("app".into()), "tcp://10.0.0.1:5000")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let refused = f
        .broker
        .connect(Some("app".into()), "tcp://10.0.0.2:6000")
        .await;
    assert_eq!(
        refused.err(),
        Some(BrokerError::ClientIdInUse {
            client_id: "app".into(),
            peer: "tcp://10.0.0.1:5000".into()
        })
    );
    assert_eq!(started.elapsed(), crate::broker::CLIENT_ID_GRACE);
    for _ in 0..2 {
        for id in [None, Some(String::new())] {
            f.broker.connect(id, "tcp://10.0.0.3:7000").await.unwrap();
        }
    }
    // A connection that closes while the next one waits hands its id over.
    let broker = f.broker.clone();
    let next = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let connected = broker
            .connect(Some("app".into()), "tcp://10.0.0.2:6001")
            .await;
        (connected.is_ok(), started.elapsed())
    });
    tokio::task::yield_now().await;
    drop(first);
    let (connected, waited) = next.await.unwrap();
    assert!(connected);
    assert_eq!(
        waited,
        Duration::ZERO,
        "waited {waited:?} for a session that closed"
    );
}

/// A durable subscription on a pattern keeps what is published to every matching topic while
/// its subscriber is away, and only that.
#[tokio::test]
async fn a_durable_wildcard_subscription_keeps_matching_messages_while_away() {
    let f = fixture(BrokerOptions::default()).await;
    let (s, _) = f.broker.open_session(Some("collector".into()));
    subscribe_to(&s, "d", topic("logs.>"), Some("logs"), None)
        .unwrap()
        .await
        .unwrap();
    drop(s);
    let (producer, _) = f.broker.open_session(None);
    for (name, b) in [
        ("logs.app1.error", "1"),
        ("metrics.app1", "x"),
        ("logs.app2.info", "2"),
    ] {
        producer
            .send(&topic(name), persistent(b), None)
            .unwrap()
            .await
            .unwrap();
    }
    assert_eq!(f.broker.queue_depth("durable://collector:logs"), 2);
    let (s, mut rx) = f.broker.open_session(Some("collector".into()));
    subscribe_to(&s, "d", topic("logs.>"), Some("logs"), None).unwrap();
    let first = next(&mut rx).await;
    assert_eq!(first.message.destination, "topic://logs.app1.error");
    assert_eq!(body(&next(&mut rx).await), "2");
    assert!(rx.try_recv().is_err());
    // Removed, it stops collecting; the pattern is forgotten.
    s.unsubscribe("d").unwrap().await.unwrap();
    s.remove_durable("logs").unwrap().await.unwrap();
    producer
        .send(&topic("logs.app1.error"), persistent("after"), None)
        .unwrap()
        .await
        .unwrap();
    assert_eq!(f.broker.queue_depth("durable://collector:logs"), 0);
}

/// A durable wildcard subscription comes back from the journal at a restart with its pattern
/// (through the index, then through an index rebuilt from the journal, as a promoted slave's
/// store gives it too): what it kept is still there and what is published after a restart to a
/// matching topic is kept for it too.
#[tokio::test]
async fn a_durable_wildcard_subscription_is_recovered_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    {
        let broker = Broker::start_for_tests(dir.path(), BrokerOptions::default());
        let (s, _) = broker.open_session(Some("collector".into()));
        subscribe_to(&s, "d", topic("logs.*.error"), Some("errors"), None)
            .unwrap()
            .await
            .unwrap();
        drop(s);
        let (p, _) = broker.open_session(None);
        p.send(&topic("logs.app1.error"), persistent("before"), None)
            .unwrap()
            .await
            .unwrap();
    }
    {
        let broker = Broker::start_for_tests(dir.path(), BrokerOptions::default());
        let (p, _) = broker.open_session(None);
        for (name, b) in [("logs.app2.error", "after"), ("logs.app2.info", "x")] {
            p.send(&topic(name), persistent(b), None)
                .unwrap()
                .await
                .unwrap();
        }
        assert_eq!(broker.queue_depth("durable://collector:errors"), 2);
    }
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let broker = Broker::start_for_tests(dir.path(), BrokerOptions::default());
    assert!(lock(&broker.shared).store().stats().index_rebuilt);
    assert_eq!(broker.queue_depth("durable://collector:errors"), 2);
    let (p, _) = broker.open_session(None);
    p.send(&topic("logs.app3.error"), persistent("rebuilt"), None)
        .unwrap()
        .await
        .unwrap();
    let (s, mut rx) = broker.open_session(Some("collector".into()));
    subscribe_to(&s, "d", topic("logs.*.error"), Some("errors"), None).unwrap();
    let first = next(&mut rx).await;
    assert_eq!(
        (body(&first), first.message.destination.as_str()),
        ("before", "topic://logs.app1.error")
    );
    let second = next(&mut rx).await;
    assert_eq!(
        (body(&second), second.message.destination.as_str()),
        ("after", "topic://logs.app2.error")
    );
    assert_eq!(body(&next(&mut rx).await), "rebuilt");
    assert!(rx.try_recv().is_err());
}

/// `p` sends `message` to `topic`; `c` acknowledges its delivery in transaction "t".
async fn ack_in_transaction(
    p: &Session,
    c: &Session,
    rx: &mut UnboundedReceiver<Delivery>,
    topic: &Destination,
    message: NewMessage,
) {
    p.send(topic, message, None).unwrap().await.unwrap();
    let d = next(rx).await;
    c.begin("t").unwrap();
    c.ack(d.tag, AckScope::Single, Some("t")).unwrap();
}

/// A durable subscription removed while a transaction holds one of its messages (acked, then
/// rolled back): the message is gone, and stays gone after a restart.
#[tokio::test]
async fn a_removed_durable_subscription_leaves_no_message_behind() {
    let dir = tempfile::tempdir().unwrap();
    let topic = Destination::Topic("t".into());
    {
        let broker = Broker::start_for_tests(dir.path(), BrokerOptions::default());
        let (c, mut rx) = broker.open_session(Some("cid".into()));
        c.subscribe(SubscribeRequest {
            durable_name: Some("d".into()),
            ..request("s", topic.clone(), 10)
        })
        .unwrap()
        .await
        .unwrap();
        let (p, _) = broker.open_session(None);
        ack_in_transaction(&p, &c, &mut rx, &topic, persistent("old")).await;
        c.unsubscribe("s").unwrap().await.unwrap();
        c.remove_durable("d").unwrap().await.unwrap();
        c.abort("t").unwrap();
        assert_eq!(broker.queue_depth("durable://cid:d"), 0);
        c.flush().await.unwrap();
    }
    let broker = Broker::start_for_tests(dir.path(), BrokerOptions::default());
    assert_eq!(
        broker.queue_depth("durable://cid:d"),
        0,
        "{:?}",
        broker.queue_stats()
    );
}

/// A durable subscription made again under its name with another selector starts afresh, as
/// in ActiveMQ: neither a message acknowledged to the old one in a transaction rolled back
/// after the change, nor one routed to the old one and confirmed after the change, reaches
/// it, now or after a restart (both match the new selector).
#[tokio::test]
async fn a_durable_subscription_made_again_with_another_selector_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let topic = Destination::Topic("t".into());
    let durable = |id: &str, selector: Option<&str>| SubscribeRequest {
        durable_name: Some("d".into()),
        selector: selector.map(str::to_string),
        ..request(id, topic.clone(), 10)
    };
    {
        let broker = Broker::start_for_tests(dir.path(), BrokerOptions::default());
        let (c, mut rx) = broker.open_session(Some("cid".into()));
        c.subscribe(durable("s", None)).unwrap().await.unwrap();
        let (p, _) = broker.open_session(None);
        let rolled_back = colored("red", "acked, rolled back");
        ack_in_transaction(&p, &c, &mut rx, &topic, rolled_back).await;
        c.unsubscribe("s").unwrap().await.unwrap(); // inactive, kept
                                                    // Routed to the old subscription; its confirmation comes after the change.
        let hold = lock(&broker.shared).store().hold_journal();
        let late = p
            .send(&topic, colored("red", "confirmed late"), None)
            .unwrap();
        let remade = c.subscribe(durable("s2", Some("color = 'red'"))).unwrap();
        drop(hold);
        remade.await.unwrap();
        late.await.unwrap();
        c.abort("t").unwrap();
        c.flush().await.unwrap();
        // Whatever reached the new subscriber comes back to its queue, unacknowledged.
        c.unsubscribe("s2").unwrap().await.unwrap(); // inactive, kept
        assert_eq!(broker.queue_depth("durable://cid:d"), 0);
        p.send(&topic, colored("red", "new"), None)
            .unwrap()
            .await
            .unwrap();
        assert_eq!(broker.queue_depth("durable://cid:d"), 1);
    }
    let broker = Broker::start_for_tests(dir.path(), BrokerOptions::default());
    let (c, mut rx) = broker.open_session(Some("cid".into()));
    c.subscribe(durable("s", Some("color = 'red'")))
        .unwrap()
        .await
        .unwrap();
    assert_eq!(body(&next(&mut rx).await), "new");
    assert!(rx.try_recv().is_err());
    assert_eq!(broker.queue_depth("durable://cid:d"), 0);
}

/// A non-persistent copy routed to a durable subscription by a commit still waiting behind
/// earlier records is the subscription's of that moment: made again meanwhile (another
/// selector), the new one does not get it.
#[tokio::test]
async fn a_waiting_non_persistent_copy_is_not_given_to_a_durable_made_again() {
    let f = fixture(BrokerOptions::default()).await;
    let topic = Destination::Topic("t".into());
    let durable = |id: &str, selector: &str| SubscribeRequest {
        durable_name: Some("d".into()),
        selector: Some(selector.into()),
        ..request(id, topic.clone(), 10)
    };
    let (c, _rx) = f.broker.open_session(Some("cid".into()));
    c.subscribe(durable("s", "color = 'red'"))
        .unwrap()
        .await
        .unwrap();
    c.unsubscribe("s").unwrap().await.unwrap(); // inactive, kept
    let (p, _) = f.broker.open_session(None);
    let hold = lock(&f.broker.shared).store().hold_journal();
    // Something earlier waits for its record, so the commit below waits behind it.
    let earlier = p.send(&queue("q"), persistent("earlier"), None).unwrap();
    p.begin("tx").unwrap();
    p.send(
        &topic,
        colored_transient("red", "routed to the old one"),
        Some("tx"),
    )
    .unwrap();
    let committed = p.commit("tx").unwrap();
    let remade = c.subscribe(durable("s2", "color = 'blue'")).unwrap();
    drop(hold);
    earlier.await.unwrap();
    committed.await.unwrap();
    remade.await.unwrap();
    c.unsubscribe("s2").unwrap().await.unwrap();
    assert_eq!(f.broker.queue_depth("durable://cid:d"), 0);
}

/// Removing a durable subscription whose backlog holds more messages than one journal record
/// has entries (65,536) writes its removals in several records: the store goes on, and after a
/// restart none of them is back.
#[tokio::test]
async fn removing_a_durable_subscription_with_a_huge_backlog_keeps_the_store_running() {
    const BACKLOG: usize = crate::store::MAX_ENTRIES + 10;
    let dir = tempfile::tempdir().unwrap();
    let topic = Destination::Topic("t".into());
    {
        let broker = Broker::start_for_tests(dir.path(), BrokerOptions::default());
        let (c, _rx) = broker.open_session(Some("cid".into()));
        c.subscribe(SubscribeRequest {
            durable_name: Some("d".into()),
            ..request("s", topic.clone(), 1)
        })
        .unwrap()
        .await
        .unwrap();
        c.unsubscribe("s").unwrap().await.unwrap(); // inactive, kept
        let (p, _) = broker.open_session(None);
        let mut last = None;
        for i in 0..BACKLOG {
            last = Some(p.send(&topic, persistent(&i.to_string()), None).unwrap());
        }
        last.unwrap().await.unwrap();
        assert_eq!(broker.queue_depth("durable://cid:d"), BACKLOG);
        c.remove_durable("d").unwrap().await.unwrap();
        p.send(&queue("after"), persistent("still stored"), None)
            .unwrap()
            .await
            .unwrap();
        c.flush().await.unwrap();
    }
    let broker = Broker::start_for_tests(dir.path(), BrokerOptions::default());
    assert_eq!(broker.queue_depth("durable://cid:d"), 0);
    assert_eq!(broker.queue_depth("queue://after"), 1);
}

/// ActiveMQ (client and broker) accepts an empty client id, and a durable subscription under
/// it (`setClientID("")`, STOMP `client-id:` with an empty value): it works as any other, and
/// one stored before stays reachable. Only a name a virtual topic consumer queue's record uses
/// (`queue://...`, under the empty client id) is refused, so the records stay apart.
#[tokio::test]
async fn a_durable_subscription_under_an_empty_client_id_works_as_in_activemq() {
    let f = fixture(BrokerOptions::default()).await;
    let (s, mut rx) = f.broker.open_session(Some(String::new()));
    subscribe_to(&s, "d", topic("t"), Some("d"), None)
        .unwrap()
        .await
        .unwrap();
    let (p, _) = f.broker.open_session(None);
    send_confirmed(&p, &topic("t"), "m").await;
    assert_eq!(body(&next(&mut rx).await), "m");
    assert!(matches!(
        subscribe_to(
            &s,
            "v",
            topic("VirtualTopic.Orders"),
            Some("queue://Consumer.A.VirtualTopic.Orders"),
            None
        ),
        Err(BrokerError::DurableNeedsClientId)
    ));
}

/// Message groups are a queue feature: a durable topic subscriber gets grouped messages as
/// any others, none flagged as its group's first (ActiveMQ never sets the flag on topics).
#[tokio::test]
async fn a_durable_subscription_ignores_message_groups() {
    let f = fixture(BrokerOptions::default()).await;
    let (d, mut rx) = f.broker.open_session(Some("c".into()));
    subscribe_to(&d, "d", topic("t"), Some("sub"), None)
        .unwrap()
        .await
        .unwrap();
    let (producer, _) = f.broker.open_session(None);
    for i in 0..3 {
        send_settled(&producer, &topic("t"), grouped(&i.to_string(), "g", None)).await;
    }
    let got = take_all(&mut rx);
    assert_eq!(bodies(&got), ["0", "1", "2"]);
    assert!(
        got.iter().all(|d| !d.group_first),
        "a group flag on a topic subscriber"
    );
}
