//! Queues: delivery, acks, the prefetch window, restarts, re-sent and deleted destinations.

use super::*;

#[tokio::test]
async fn confirmed_send_is_delivered_and_acked_once() {
    let f = fixture(BrokerOptions::default()).await;
    let (producer, _) = f.broker.open_session(None);
    producer
        .send(&queue("q"), persistent("a"), None)
        .unwrap()
        .await
        .unwrap();
    let (consumer, mut rx) = consumer_on_q(&f, 10);
    let d = next(&mut rx).await;
    assert_eq!(body(&d), "a");
    assert_eq!(d.redelivery_count, 0);
    consumer
        .ack(d.tag, AckScope::Single, None)
        .unwrap()
        .await
        .unwrap();
    assert_eq!(f.broker.queue_depth("queue://q"), 0);
    assert!(consumer.ack(d.tag, AckScope::Single, None).is_err());
}

#[tokio::test]
async fn messages_survive_a_restart_until_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    {
        let broker = Broker::start_for_tests(dir.path(), BrokerOptions::default());
        send_numbered(&broker, 3).await;
        let (c, mut rx) = broker.open_session(None);
        subscribe(&c, "s", queue("q"), 10);
        let first = next(&mut rx).await;
        c.ack(first.tag, AckScope::Single, None)
            .unwrap()
            .await
            .unwrap();
    }
    let broker = Broker::start_for_tests(dir.path(), BrokerOptions::default());
    assert_eq!(broker.queue_depth("queue://q"), 2);
    let (c, mut rx) = broker.open_session(None);
    subscribe(&c, "s", queue("q"), 10);
    assert_eq!(body(&next(&mut rx).await), "1");
    assert_eq!(body(&next(&mut rx).await), "2");
}

#[tokio::test]
async fn a_stuck_consumer_holds_only_its_prefetch() {
    let f = fixture(BrokerOptions::default()).await;
    let (_stuck, mut stuck_rx) = consumer_on_q(&f, 3);
    let (fast, mut fast_rx) = consumer_on_q(&f, 1);
    let (producer, _) = f.broker.open_session(None);
    for i in 0..20 {
        producer
            .send(&queue("q"), persistent(&i.to_string()), None)
            .unwrap()
            .await
            .unwrap();
    }
    let mut got = 0;
    while got < 17 {
        let d = next(&mut fast_rx).await;
        fast.ack(d.tag, AckScope::Single, None).unwrap();
        got += 1;
    }
    let mut held = 0;
    while stuck_rx.try_recv().is_ok() {
        held += 1;
    }
    assert_eq!(held, 3);
}

#[tokio::test]
async fn a_resent_producer_sequence_is_stored_once() {
    let f = fixture(BrokerOptions::default()).await;
    let (s, _) = f.broker.open_session(None);
    let mut m = persistent("once");
    m.message_id = Some("ID:producer-1:7".into());
    s.send(&queue("q"), m.clone(), None).unwrap().await.unwrap();
    s.send(&queue("q"), m, None).unwrap().await.unwrap();
    assert_eq!(f.broker.queue_depth("queue://q"), 1);
    assert_eq!(f.broker.stats().duplicates_dropped, 1);
}

#[tokio::test]
async fn a_deleted_destination_drops_its_unstored_messages_but_never_stored_or_used_ones() {
    let f = fixture(BrokerOptions::default()).await;
    let (session, _rx) = f.broker.open_session(None);
    let transient = NewMessage {
        persistent: false,
        ..persistent("reply")
    };
    session.send(&queue("temp"), transient, None).unwrap();
    let to_temporary = NewMessage {
        temporary: true,
        ..persistent("persistent reply")
    };
    session.send(&queue("temp"), to_temporary, None).unwrap();
    assert_eq!(f.broker.queue_depth("queue://temp"), 2);
    assert!(f.broker.delete_destination(&queue("temp")));
    assert_eq!(f.broker.queue_depth("queue://temp"), 0);

    // A stored message keeps its queue.
    session
        .send(&queue("kept"), persistent("stored"), None)
        .unwrap()
        .await
        .unwrap();
    assert!(!f.broker.delete_destination(&queue("kept")));
    assert_eq!(f.broker.queue_depth("queue://kept"), 1);

    // So does a queue with a consumer.
    subscribe(&session, "s", queue("used"), 10);
    assert!(!f.broker.delete_destination(&queue("used")));
}

/// A persistent message sent to a temporary destination is kept in memory only (ActiveMQ gives
/// temporary destinations no store), and reaches its consumer as persistent, as it was sent:
/// a JMS reply's `JMSDeliveryMode` is the replier's.
#[tokio::test]
async fn a_persistent_message_to_a_temporary_queue_is_not_stored_yet_stays_persistent() {
    let f = fixture(BrokerOptions::default()).await;
    let (session, mut rx) = f.broker.open_session(None);
    let before = f.broker.stats().journal_end;
    let reply = NewMessage {
        temporary: true,
        ..persistent("reply")
    };
    let confirmation = session.send(&queue("temp"), reply, None).unwrap();
    assert!(
        confirmation.is_done(),
        "nothing to wait for: it is not stored"
    );
    assert_eq!(
        f.broker.stats().journal_end,
        before,
        "nothing was journaled"
    );
    let selected = SubscribeRequest {
        selector: Some("JMSDeliveryMode = 'PERSISTENT'".into()),
        ..request("s", queue("temp"), 10)
    };
    session.subscribe(selected).unwrap();
    let delivery = next(&mut rx).await;
    assert_eq!(body(&delivery), "reply");
    assert!(delivery.message.persistent, "delivered as it was sent");
}

/// Pulls waiting for a message do not add up (ActiveMQ sets a pulling consumer's window to
/// the pull): a client that sent many pulls to an empty queue gets one message when messages
/// come, not one per pull.
#[tokio::test]
async fn pulls_waiting_on_an_empty_queue_do_not_add_up() {
    let f = fixture(BrokerOptions::default()).await;
    let (c, mut rx) = f.broker.open_session(None);
    c.subscribe(request("s", queue("q"), 0)).unwrap();
    for _ in 0..3 {
        c.pull("s").unwrap();
    }
    let (producer, _) = f.broker.open_session(None);
    for i in 0..3 {
        send_settled(&producer, &queue("q"), persistent(&i.to_string())).await;
    }
    let first = next(&mut rx).await;
    assert_eq!(body(&first), "0");
    assert!(take_all(&mut rx).is_empty(), "one message for three pulls");
    assert_eq!(f.broker.queue_depth("queue://q"), 2);
}
