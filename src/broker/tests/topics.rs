//! Topics and ActiveMQ's wildcard patterns: matching, subscribers, slow ones, temporary topics.

use super::*;

#[tokio::test]
async fn a_slow_topic_subscriber_loses_its_oldest_messages_not_the_producer() {
    let f = fixture(BrokerOptions {
        topic_pending_limit: 5,
        ..BrokerOptions::default()
    })
    .await;
    let topic = Destination::Topic("t".into());
    let (slow, mut slow_rx) = f.broker.open_session(None);
    subscribe(&slow, "s", topic.clone(), 1);
    let (fast, mut fast_rx) = f.broker.open_session(None);
    subscribe(&fast, "s", topic.clone(), 100);
    let (producer, _) = f.broker.open_session(None);
    for i in 0..50 {
        let m = NewMessage {
            body: Bytes::from(i.to_string()),
            ..NewMessage::default()
        };
        producer.send(&topic, m, None).unwrap().await.unwrap();
    }
    for i in 0..50 {
        let d = next(&mut fast_rx).await;
        assert_eq!(body(&d), i.to_string());
    }
    // The slow one got the first message, then keeps only the newest five.
    let first = next(&mut slow_rx).await;
    assert_eq!(body(&first), "0");
    slow.ack(first.tag, AckScope::Single, None).unwrap();
    let after = next(&mut slow_rx).await;
    assert_eq!(body(&after), "45");
    assert_eq!(f.broker.stats().topic_discarded, 44);
}

/// A subscriber that stops reading holds at most `memory_limit` bytes of bodies whatever its
/// prefetch (ActiveMQ's default topic prefetch of 32,767 large messages would be gigabytes):
/// past that its newest message waits and older ones are discarded; a subscriber that reads
/// and acknowledges, here with the same prefetch, gets every message.
#[tokio::test]
async fn a_stalled_topic_subscriber_holds_at_most_memory_limit_bytes() {
    let f = fixture_with_memory_limit(10_000).await;
    let topic = Destination::Topic("logs".into());
    let (stalled, mut stalled_rx) = f.broker.open_session(None);
    subscribe(&stalled, "s", topic.clone(), 1000);
    let (reader, mut reader_rx) = f.broker.open_session(None);
    subscribe(&reader, "r", topic.clone(), 1000);
    let (producer, _) = f.broker.open_session(None);
    for i in 0..100 {
        producer
            .send(&topic, log_line(i), None)
            .unwrap()
            .await
            .unwrap();
        let d = next(&mut reader_rx).await;
        assert_eq!(body(&d), line_text(i));
        reader.ack(d.tag, AckScope::Single, None).unwrap();
    }
    // Ten 1,000-byte bodies fill its 10,000 bytes; the eleventh and later waited, one at a
    // time, the newest replacing the older.
    let held = take_all(&mut stalled_rx);
    assert_eq!(
        bodies(&held),
        (0..10).map(line_text).collect::<Vec<_>>(),
        "the window holds what fits in memory_limit"
    );
    assert_eq!(f.broker.stats().topic_discarded, 89);
    stalled
        .ack(held[9].tag, AckScope::Cumulative, None)
        .unwrap();
    assert_eq!(body(&next(&mut stalled_rx).await), line_text(99));
}

/// A 1,000-byte body starting with `i`.
fn line_text(i: usize) -> String {
    format!("{i:04}{}", "x".repeat(996))
}

fn log_line(i: usize) -> NewMessage {
    NewMessage {
        body: Bytes::from(line_text(i)),
        ..NewMessage::default()
    }
}

/// Bytes the client reported consumed (OpenWire's delivered ack, as for a CLIENT_ACKNOWLEDGE
/// subscriber that acknowledges in batches) leave the byte window as they leave the count one.
#[tokio::test]
async fn delivered_topic_messages_free_the_byte_window() {
    let f = fixture_with_memory_limit(2_500).await;
    let topic = Destination::Topic("logs".into());
    let (subscriber, mut rx) = f.broker.open_session(None);
    subscribe(&subscriber, "s", topic.clone(), 1000);
    let (producer, _) = f.broker.open_session(None);
    // 20 KB sent, none acknowledged: each arrives only if the delivered report freed its bytes.
    for i in 0..20 {
        producer
            .send(&topic, log_line(i), None)
            .unwrap()
            .await
            .unwrap();
        let d = next(&mut rx).await;
        assert_eq!(body(&d), line_text(i));
        subscriber.delivered("s", d.tag).unwrap();
    }
    assert_eq!(f.broker.stats().topic_discarded, 0);
}

/// ActiveMQ's wildcard rules (`broker::wildcard`).
fn matches(pattern: &str, name: &str) -> bool {
    wildcard::Pattern::parse(pattern).unwrap().matches(name)
}

#[test]
fn a_star_matches_exactly_one_whole_segment() {
    assert!(matches("prices.*.eu", "prices.stock.eu"));
    assert!(
        matches("prices.*.eu", "prices..eu"),
        "an empty segment is one"
    );
    assert!(!matches("prices.*.eu", "prices.eu"));
    assert!(!matches("prices.*.eu", "prices.stock.nasdaq.eu"));
    assert!(!matches("prices.*.eu", "prices.stock.eu.x"));
    assert!(matches("*", "anything"));
    assert!(!matches("*", "two.segments"));
    assert!(matches("*.*", "two.segments"));
}

#[test]
fn a_trailing_descendant_matches_any_number_of_segments_none_included() {
    assert!(matches("logs.>", "logs.app1"));
    assert!(matches("logs.>", "logs.app1.error"));
    assert!(matches("logs.>", "logs"), "ActiveMQ: A matches A.>");
    assert!(!matches("logs.>", "logsx"));
    assert!(!matches("logs.>", "audit.logs.app1"));
    assert!(matches(">", "any.topic.at.all"));
    assert!(matches("logs.*.>", "logs.app1"));
    assert!(matches("logs.*.>", "logs.app1.error.detail"));
    assert!(!matches("logs.*.>", "logs"));
}

#[test]
fn segments_match_whole_never_in_part() {
    assert!(!matches("logs.app.>", "logs.app1.error"));
    assert!(!matches("logs.app.*", "logs.app1.error"));
    assert!(matches("logs.app.*", "logs.app.error"));
    assert!(!matches("logs.*", "logs.app1.error"), "'*' is one segment");
}

#[test]
fn only_whole_wildcard_segments_make_a_pattern() {
    assert!(wildcard::is_pattern("logs.>"));
    assert!(wildcard::is_pattern("*.eu"));
    assert!(wildcard::is_pattern(">"));
    assert!(!wildcard::is_pattern("a*b.c>d"));
    assert!(!wildcard::is_pattern("logs.app1"));
}

#[test]
fn a_descendant_wildcard_must_come_last() {
    let error = wildcard::Pattern::parse("logs.>.error").unwrap_err();
    assert!(
        error.contains("logs.>.error") && error.contains("last"),
        "{error}"
    );
    assert!(wildcard::Pattern::parse(">.>").is_err());
}

/// Everything delivered to `rx` so far, as (subscription, topic published to, body).
fn drain(rx: &mut UnboundedReceiver<Delivery>) -> Vec<(String, String, String)> {
    let mut got = Vec::new();
    while let Ok(d) = rx.try_recv() {
        got.push((
            d.subscription.clone(),
            d.message.destination.clone(),
            body(&d).into(),
        ));
    }
    got
}

fn triple(subscription: &str, topic: &str, body: &str) -> (String, String, String) {
    (subscription.into(), format!("topic://{topic}"), body.into())
}

#[tokio::test]
async fn wildcards_on_queues_and_misplaced_descendants_are_refused_by_name() {
    let f = fixture(BrokerOptions::default()).await;
    let (session, _rx) = f.broker.open_session(Some("c".into()));
    for name in ["orders.>", "prices.*.eu", ">"] {
        let error = subscribe_to(&session, name, queue(name), None, None).unwrap_err();
        assert!(
            matches!(&error, BrokerError::Unsupported(m) if m.contains(name) && m.contains("queues")),
            "{error}"
        );
    }
    for durable in [None, Some("d")] {
        let error =
            subscribe_to(&session, "bad", topic("logs.>.error"), durable, None).unwrap_err();
        assert!(
            matches!(&error, BrokerError::Unsupported(m) if m.contains("logs.>.error") && m.contains("last")),
            "{error}"
        );
    }
    // Names that merely contain the characters are plain names.
    subscribe(&session, "ok", queue("a*b.c>d"), 10);
}

#[tokio::test]
async fn a_send_to_a_wildcard_destination_is_refused_by_name() {
    let f = fixture(BrokerOptions::default()).await;
    let (session, _rx) = f.broker.open_session(None);
    session.begin("tx").unwrap();
    for destination in [topic("logs.>"), topic("prices.*.eu"), queue("orders.>")] {
        for transaction in [None, Some("tx")] {
            let error = session
                .send(&destination, persistent("m"), transaction)
                .unwrap_err();
            assert!(
                matches!(&error, BrokerError::Unsupported(m) if m.contains(&destination.canonical()) && m.contains("wildcard")),
                "{error}"
            );
        }
    }
    session.commit("tx").unwrap().await.unwrap();
    // A plain name with the characters inside a segment is sent as usual.
    session
        .send(&topic("a*b.c>d"), persistent("m"), None)
        .unwrap()
        .await
        .unwrap();
}

/// Non-durable wildcard subscriptions get every message of a matching topic, with the topic it
/// was published to as its destination, through their selectors; two subscriptions of one
/// session that both match each get it; a pattern left without subscribers gets nothing.
#[tokio::test]
async fn wildcard_topic_subscribers_get_every_matching_topic_as_published() {
    let f = fixture(BrokerOptions::default()).await;
    let (a, mut a_rx) = f.broker.open_session(None);
    subscribe_to(&a, "all", topic("logs.>"), None, None).unwrap();
    subscribe_to(&a, "exact", topic("logs.app1.error"), None, None).unwrap();
    let (b, mut b_rx) = f.broker.open_session(None);
    subscribe_to(
        &b,
        "red-errors",
        topic("logs.*.error"),
        None,
        Some("color = 'red'"),
    )
    .unwrap();
    let (producer, _) = f.broker.open_session(None);
    let sends = [
        ("logs.app1.error", "red", "1"),
        ("logs.app2.info", "red", "2"),
        ("logs.app3.error", "blue", "3"),
        ("logs", "red", "4"),
        ("logs.app1.error.detail", "red", "5"),
        ("logsx.app1.error", "red", "6"),
        ("audit.logs.app1.error", "red", "7"),
    ];
    for (name, color, b) in sends {
        let mut m = colored(color, b);
        m.persistent = b == "1"; // stored or not, a topic message reaches its subscribers
        producer.send(&topic(name), m, None).unwrap().await.unwrap();
    }
    // Every send was confirmed after its message was handed to the subscribers.
    let mut deliveries = vec![next(&mut a_rx).await];
    while let Ok(d) = a_rx.try_recv() {
        deliveries.push(d);
    }
    let d = deliveries
        .iter()
        .find(|d| d.subscription == "all")
        .expect("a delivery to the wildcard subscription");
    assert_eq!(d.destination, topic("logs.>"), "the subscription's pattern");
    assert_eq!(
        d.message.destination, "topic://logs.app1.error",
        "the real topic"
    );
    let mut got: Vec<_> = deliveries
        .iter()
        .map(|d| {
            (
                d.subscription.clone(),
                d.message.destination.clone(),
                body(d).to_string(),
            )
        })
        .collect();
    got.sort();
    let mut expected = vec![
        triple("all", "logs.app1.error", "1"),
        triple("all", "logs.app2.info", "2"),
        triple("all", "logs.app3.error", "3"),
        triple("all", "logs", "4"),
        triple("all", "logs.app1.error.detail", "5"),
        triple("exact", "logs.app1.error", "1"),
    ];
    expected.sort();
    assert_eq!(got, expected);
    assert_eq!(
        drain(&mut b_rx),
        [triple("red-errors", "logs.app1.error", "1")]
    );

    a.unsubscribe("all").unwrap();
    b.unsubscribe("red-errors").unwrap();
    producer
        .send(&topic("logs.app1.error"), colored("red", "8"), None)
        .unwrap()
        .await
        .unwrap();
    assert_eq!(body(&next(&mut a_rx).await), "8");
    assert!(drain(&mut a_rx).is_empty() && drain(&mut b_rx).is_empty());
}

/// A slow wildcard subscriber is held to the same pending limit as any topic subscriber.
#[tokio::test]
async fn a_slow_wildcard_subscriber_loses_its_oldest_messages_not_the_producer() {
    let f = fixture(BrokerOptions {
        topic_pending_limit: 2,
        ..BrokerOptions::default()
    })
    .await;
    let (slow, mut rx) = f.broker.open_session(None);
    subscribe(&slow, "s", topic("prices.*"), 1);
    let (producer, _) = f.broker.open_session(None);
    for i in 0..6 {
        let m = NewMessage {
            body: Bytes::from(i.to_string()),
            ..NewMessage::default()
        };
        let name = format!("prices.{i}");
        producer
            .send(&topic(&name), m, None)
            .unwrap()
            .await
            .unwrap();
    }
    let first = next(&mut rx).await;
    assert_eq!(body(&first), "0");
    slow.ack(first.tag, AckScope::Single, None).unwrap();
    let after = next(&mut rx).await;
    assert_eq!(body(&after), "4");
    assert_eq!(after.message.destination, "topic://prices.4");
    assert_eq!(f.broker.stats().topic_discarded, 3);
}

/// A subscriber on `>` gets every topic's messages but those of JMS temporary topics (named
/// after their connection, `ID:...`), which ActiveMQ keeps out of the wildcard tree.
#[tokio::test]
async fn a_wildcard_subscriber_never_sees_temporary_topics() {
    let f = fixture(BrokerOptions::default()).await;
    let (everything, mut rx) = f.broker.open_session(None);
    subscribe_to(&everything, "all", topic(">"), None, None).unwrap();
    let (producer, _) = f.broker.open_session(None);
    for (name, b) in [
        ("ID:host.example-40123-1764150000000-1:1:1", "reply"),
        ("orders", "o"),
    ] {
        producer
            .send(&topic(name), persistent(b), None)
            .unwrap()
            .await
            .unwrap();
    }
    assert_eq!(bodies(&take_all(&mut rx)), ["o"]);
}

/// A producer's persistent topic messages reach a subscriber in the order sent, also when the
/// first is stored for a durable subscription (and waits for its record) and the next one is
/// stored for nobody. Before, the second went out at once, ahead of the first.
#[tokio::test]
async fn persistent_topic_messages_keep_their_order_whether_stored_or_not() {
    let f = fixture(BrokerOptions::default()).await;
    let topic = Destination::Topic("prices".into());
    let (d, _) = f.broker.open_session(Some("c1".into()));
    d.subscribe(SubscribeRequest {
        durable_name: Some("only-a".into()),
        selector: Some("color = 'a'".into()),
        ..request("d", topic.clone(), 100)
    })
    .unwrap()
    .await
    .unwrap();
    let (s, mut rx) = f.broker.open_session(None);
    s.subscribe(request("s", topic.clone(), 100)).unwrap();
    let (p, _) = f.broker.open_session(None);
    let hold = lock(&f.broker.shared).store().hold_journal();
    let first = p.send(&topic, colored("a", "first"), None).unwrap();
    let second = p.send(&topic, colored("b", "second"), None).unwrap();
    drop(hold);
    first.await.unwrap();
    second.await.unwrap();
    assert_eq!(body(&next(&mut rx).await), "first");
    assert_eq!(body(&next(&mut rx).await), "second");
}
