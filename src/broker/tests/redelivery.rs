//! Redelivery, expiry and the dead-letter queues (shared and individual strategies).

use super::*;

/// A broker that dead-letters past one redelivery, with `bodies` sent persistently to queue
/// `q`, in order.
async fn one_redelivery_allowed(bodies: &[&str]) -> Fixture {
    let f = fixture(BrokerOptions {
        max_redeliveries: 1,
        ..BrokerOptions::default()
    })
    .await;
    let (producer, _) = f.broker.open_session(None);
    for body in bodies {
        producer
            .send(&queue("q"), persistent(body), None)
            .unwrap()
            .await
            .unwrap();
    }
    f
}

#[tokio::test]
async fn unacked_messages_are_redelivered_then_dead_lettered() {
    let f = one_redelivery_allowed(&["poison"]).await;
    for expected in 0..2 {
        let (c, mut rx) = f.broker.open_session(None);
        subscribe(&c, "s", queue("q"), 1);
        let d = next(&mut rx).await;
        assert_eq!(d.redelivery_count, expected);
        drop(c);
    }
    let (c, mut rx) = f.broker.open_session(None);
    subscribe(&c, "dlq", Destination::Queue("ActiveMQ.DLQ".into()), 1);
    let d = next(&mut rx).await;
    assert_eq!(body(&d), "poison");
    // Delivered afresh from the DLQ, as ActiveMQ's DLQ copies are.
    assert_eq!(d.redelivery_count, 0);
    assert_eq!(f.broker.queue_depth("queue://q"), 0);
    // Why, and its expiration, as ActiveMQ's DLQ messages say.
    assert_eq!(
        header(&d, "dlqDeliveryFailureCause"),
        Some("java.lang.Throwable: Delivery[2] exceeds redelivery policy limit:RedeliveryPolicy {maximumRedeliveries = 1}")
    );
    assert_eq!(header(&d, "originalExpiration"), Some("0"));
}

/// A consumer that takes one message per connection (a cron job with the default prefetch:
/// it is sent many, acknowledges the first, disconnects) sends nothing to the DLQ: only the
/// oldest delivery it held unacknowledged counts against `max_redeliveries`, the rest of its
/// prefetch comes back marked redelivered. ActiveMQ, without its redelivery plugin, never
/// dead-letters them either.
#[tokio::test]
async fn a_prefetch_returned_by_consumers_that_leave_is_not_dead_lettered() {
    let bodies: Vec<String> = (0..8).map(|i| format!("m{i}")).collect();
    let bodies: Vec<&str> = bodies.iter().map(String::as_str).collect();
    let f = one_redelivery_allowed(&bodies).await;
    for i in 0..8 {
        let (c, mut rx) = f.broker.open_session(None);
        subscribe(&c, "s", queue("q"), 100);
        let first = next(&mut rx).await;
        assert_eq!(body(&first), format!("m{i}"));
        // Each one came back (marked redelivered) once per consumer that held it before.
        assert_eq!(first.redelivery_count, i);
        c.ack(first.tag, AckScope::Single, None)
            .unwrap()
            .await
            .unwrap();
        drop(c);
    }
    assert_eq!(f.broker.queue_depth("queue://q"), 0);
    assert_eq!(f.broker.queue_depth("queue://ActiveMQ.DLQ"), 0);
}

/// A poison ack's cause (an OpenWire client's, which counts redeliveries itself) is what the
/// message says on its DLQ; a rejection without one says nothing.
#[tokio::test]
async fn a_poison_cause_travels_to_the_dlq() {
    let f = fixture(BrokerOptions::default()).await;
    let (session, mut rx, d) = one_delivered(&f).await;
    session
        .poison(
            d.tag,
            Some("java.lang.Throwable: Delivery[7] exceeds redelivery policy limit"),
        )
        .unwrap()
        .await
        .unwrap();
    let (p, _) = f.broker.open_session(None);
    p.send(&queue("q"), persistent("second"), None)
        .unwrap()
        .await
        .unwrap();
    let second = next(&mut rx).await;
    session.nack(second.tag, None).unwrap().await.unwrap();
    subscribe(&session, "dlq", queue("ActiveMQ.DLQ"), 10);
    let first = next(&mut rx).await;
    assert_eq!(body(&first), "m");
    assert_eq!(
        header(&first, "dlqDeliveryFailureCause"),
        Some("java.lang.Throwable: Delivery[7] exceeds redelivery policy limit")
    );
    let second = next(&mut rx).await;
    assert_eq!(body(&second), "second");
    assert_eq!(header(&second, "dlqDeliveryFailureCause"), None);
    assert_eq!(header(&second, "originalExpiration"), Some("0"));
}

/// Polls `condition` every 5 ms for up to 10 s.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within 10 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A broker with `options` (swept for expired messages every 10 ms) where a persistent
/// message "late" sent to `queue://q` has expired and been dead-lettered.
async fn expired_on_q(options: BrokerOptions) -> Fixture {
    let f = fixture(BrokerOptions {
        expiry_sweep: Duration::from_millis(10),
        ..options
    })
    .await;
    let (p, _) = f.broker.open_session(None);
    let mut m = persistent("late");
    m.expiration = now_millis() + 30;
    p.send(&queue("q"), m, None).unwrap().await.unwrap();
    eventually("the message expired", || {
        f.broker.stats().dead_lettered >= 1
    })
    .await;
    f
}

/// An expired message moves to `ActiveMQ.DLQ` once, without its expiration, and can be
/// consumed there (kept, it would expire again on the DLQ at every sweep).
#[tokio::test]
async fn an_expired_message_is_dead_lettered_once_and_consumable_there() {
    let f = expired_on_q(BrokerOptions::default()).await;
    let (c, mut rx) = f.broker.open_session(None);
    subscribe(&c, "dlq", queue("ActiveMQ.DLQ"), 10);
    let d = next(&mut rx).await;
    assert_eq!(body(&d), "late");
    assert_eq!(d.message.expiration, 0);
    assert_eq!(f.broker.stats().dead_lettered, 1);
    let original = header(&d, "originalExpiration").expect("originalExpiration");
    assert!(original.parse::<i64>().unwrap() > 0, "{original}");
    assert_eq!(
        header(&d, "dlqDeliveryFailureCause"),
        Some(format!("java.lang.Throwable: Message Expired. Expiration:{original}").as_str())
    );
}

/// A message that expired in a JMS client's prefetch comes back in the client's expired ack,
/// which names no cause: on the DLQ it says it expired, as from ActiveMQ.
#[tokio::test]
async fn a_message_rejected_after_it_expired_says_so_on_the_dlq() {
    let f = fixture(BrokerOptions::default()).await;
    let (s, mut rx) = f.broker.open_session(None);
    subscribe(&s, "s", queue("q"), 10);
    let mut m = persistent("stale");
    let expiration = now_millis() + 200;
    m.expiration = expiration;
    s.send(&queue("q"), m, None).unwrap().await.unwrap();
    let d = next(&mut rx).await;
    eventually("the delivered message expired", || {
        now_millis() > expiration
    })
    .await;
    s.poison(d.tag, None).unwrap().await.unwrap();
    subscribe(&s, "dlq", queue("ActiveMQ.DLQ"), 10);
    let dead = next(&mut rx).await;
    assert_eq!(body(&dead), "stale");
    assert_eq!(
        header(&dead, "dlqDeliveryFailureCause"),
        Some(format!("java.lang.Throwable: Message Expired. Expiration:{expiration}").as_str())
    );
}

/// A negative expiration means none, as in ActiveMQ (`expireTime > 0`).
#[tokio::test]
async fn a_negative_expiration_never_expires() {
    let f = fixture(BrokerOptions::default()).await;
    let (s, mut rx) = f.broker.open_session(None);
    let mut m = persistent("forever");
    m.expiration = -5;
    s.send(&queue("q"), m, None).unwrap().await.unwrap();
    subscribe(&s, "s", queue("q"), 10);
    assert_eq!(body(&next(&mut rx).await), "forever");
}

/// A message that expires while it waits for a slow non-durable topic subscriber is dropped,
/// not delivered late.
#[tokio::test]
async fn a_topic_message_that_expired_while_waiting_is_not_delivered() {
    let f = fixture(BrokerOptions::default()).await;
    let topic = Destination::Topic("t".into());
    let (slow, mut rx) = f.broker.open_session(None);
    subscribe(&slow, "s", topic.clone(), 1);
    let (producer, _) = f.broker.open_session(None);
    let message = |body: &str, expiration: i64| NewMessage {
        body: Bytes::copy_from_slice(body.as_bytes()),
        expiration,
        ..NewMessage::default()
    };
    let expires = now_millis() + 50;
    for m in [
        message("first", 0),
        message("late", expires),
        message("last", 0),
    ] {
        producer.send(&topic, m, None).unwrap().await.unwrap();
    }
    let first = next(&mut rx).await;
    assert_eq!(body(&first), "first");
    // The scenario is time passing: "late" expires while it waits behind "first".
    while now_millis() <= expires {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    slow.ack(first.tag, AckScope::Single, None).unwrap();
    assert_eq!(body(&next(&mut rx).await), "last");
    assert_eq!(f.broker.stats().expired, 1);
}

/// A persistent message rejected on a temporary queue (where it was never stored) goes to the
/// DLQ as ActiveMQ sends it there, and is stored on it: the DLQ is an ordinary queue. A
/// non-persistent one is dropped, as from any queue.
#[tokio::test]
async fn a_persistent_message_rejected_on_a_temporary_queue_is_stored_on_the_dlq() {
    let f = fixture(BrokerOptions::default()).await;
    let (session, mut rx) = f.broker.open_session(None);
    for (body, persistent) in [("kept", true), ("dropped", false)] {
        let message = NewMessage {
            temporary: true,
            persistent,
            ..super::persistent(body)
        };
        session.send(&queue("temp"), message, None).unwrap();
    }
    subscribe(&session, "s", queue("temp"), 10);
    let journal_end = f.broker.stats().journal_end;
    for _ in 0..2 {
        let d = next(&mut rx).await;
        session.nack(d.tag, None).unwrap().await.unwrap();
    }
    assert!(
        f.broker.stats().journal_end > journal_end,
        "stored on the DLQ"
    );
    assert_eq!(f.broker.queue_depth("queue://ActiveMQ.DLQ"), 1);
    let dead = take_from(&f.broker, "ActiveMQ.DLQ").await;
    assert_eq!(body(&dead), "kept");
    assert!(dead.message.persistent && !dead.message.temporary);
    assert_eq!(header(&dead, "original-destination"), Some("queue://temp"));
}

/// Options with ActiveMQ's `<individualDeadLetterStrategy/>` (default names).
fn individual_dlqs() -> BrokerOptions {
    BrokerOptions {
        dead_letter_strategy: DeadLetterStrategy::individual(),
        ..BrokerOptions::default()
    }
}

#[tokio::test]
async fn the_individual_strategy_gives_a_queue_its_own_dlq() {
    let f = fixture(individual_dlqs()).await;
    let (session, _rx, d) = one_delivered(&f).await;
    session.nack(d.tag, None).unwrap().await.unwrap();
    assert_eq!(f.broker.queue_depth("queue://q"), 0);
    assert_eq!(f.broker.queue_depth("queue://ActiveMQ.DLQ"), 0);
    let dead = take_from(&f.broker, "ActiveMQ.DLQ.Queue.q").await;
    assert_eq!(body(&dead), "m");
    assert_eq!(dead.message.destination, "queue://ActiveMQ.DLQ.Queue.q");
    assert_eq!(header(&dead, "original-destination"), Some("queue://q"));
    assert_eq!(f.broker.stats().dead_lettered, 1);
}

/// Prefix and suffix are the configured ones; the DLQ and its message are in the journal, so a
/// node restarted with another strategy still has them where they went.
#[tokio::test]
async fn an_individual_dlq_takes_the_configured_prefix_and_suffix_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let options = BrokerOptions {
            dead_letter_strategy: DeadLetterStrategy::Individual {
                queue_prefix: "DLQ.".into(),
                queue_suffix: ".dead".into(),
                topic_prefix: "DLT.".into(),
                topic_suffix: String::new(),
            },
            ..BrokerOptions::default()
        };
        let broker = Broker::start_for_tests(dir.path(), options);
        let (p, _) = broker.open_session(None);
        p.send(&queue("orders"), persistent("bad"), None)
            .unwrap()
            .await
            .unwrap();
        let (c, mut rx) = broker.open_session(None);
        subscribe(&c, "s", queue("orders"), 10);
        let d = next(&mut rx).await;
        c.nack(d.tag, None).unwrap().await.unwrap();
        assert_eq!(broker.queue_depth("queue://DLQ.orders.dead"), 1);
        c.flush().await.unwrap();
    }
    let broker = Broker::start_for_tests(dir.path(), BrokerOptions::default());
    assert_eq!(broker.queue_depth("queue://orders"), 0);
    let dead = take_from(&broker, "DLQ.orders.dead").await;
    assert_eq!(body(&dead), "bad");
}

/// A durable subscription's dead letter goes to the DLQ named after the topic it was published
/// to (ActiveMQ's topic prefix; a wildcard subscription's after the matching topic), which is
/// a queue.
#[tokio::test]
async fn the_individual_strategy_names_a_durable_subscriptions_dlq_after_the_topic() {
    let f = fixture(individual_dlqs()).await;
    let (s, mut rx) = f.broker.open_session(Some("collector".into()));
    subscribe_to(&s, "news", topic("news"), Some("news"), None)
        .unwrap()
        .await
        .unwrap();
    subscribe_to(&s, "logs", topic("logs.>"), Some("logs"), None)
        .unwrap()
        .await
        .unwrap();
    let (p, _) = f.broker.open_session(None);
    for (name, b) in [("news", "n"), ("logs.app1.error", "l")] {
        p.send(&topic(name), persistent(b), None)
            .unwrap()
            .await
            .unwrap();
        let d = next(&mut rx).await;
        s.nack(d.tag, None).unwrap().await.unwrap();
    }
    assert_eq!(f.broker.queue_depth("durable://collector:news"), 0);
    assert_eq!(f.broker.queue_depth("durable://collector:logs"), 0);
    let dead = take_from(&f.broker, "ActiveMQ.DLQ.Topic.news").await;
    assert_eq!(body(&dead), "n");
    assert_eq!(header(&dead, "original-destination"), Some("topic://news"));
    let dead = take_from(&f.broker, "ActiveMQ.DLQ.Topic.logs.app1.error").await;
    assert_eq!(body(&dead), "l");
    assert_eq!(f.broker.queue_depth("queue://ActiveMQ.DLQ"), 0);
}

/// A virtual topic's copy was on its consumer queue: that queue names its DLQ, as in ActiveMQ
/// (`ActiveMQ.DLQ.Queue.Consumer.A.VirtualTopic.Orders`).
#[tokio::test]
async fn the_individual_strategy_names_a_virtual_topic_copys_dlq_after_its_consumer_queue() {
    let f = fixture(individual_dlqs()).await;
    let (c, mut rx) = f.broker.open_session(None);
    subscribe_virtual(&c, "a", "Consumer.A.VirtualTopic.Orders", None).await;
    let (p, _) = f.broker.open_session(None);
    send_confirmed(&p, &topic("VirtualTopic.Orders"), "v").await;
    let d = next(&mut rx).await;
    c.nack(d.tag, None).unwrap().await.unwrap();
    let dead = take_from(
        &f.broker,
        "ActiveMQ.DLQ.Queue.Consumer.A.VirtualTopic.Orders",
    )
    .await;
    assert_eq!(body(&dead), "v");
}

#[tokio::test]
async fn the_individual_strategy_sends_an_expired_message_to_its_queues_dlq() {
    let f = expired_on_q(individual_dlqs()).await;
    let dead = take_from(&f.broker, "ActiveMQ.DLQ.Queue.q").await;
    assert_eq!((body(&dead), dead.message.expiration), ("late", 0));
    assert_eq!(f.broker.queue_depth("queue://ActiveMQ.DLQ"), 0);
}

/// A broker with `options` where message "m" was NACKed on `queue://q`, then NACKed again
/// on its DLQ `dlq` (a name without prefix).
async fn nacked_twice(options: BrokerOptions, dlq: &str) -> Fixture {
    let f = fixture(options).await;
    let (session, _rx, d) = one_delivered(&f).await;
    session.nack(d.tag, None).unwrap().await.unwrap();
    let (c, mut rx) = f.broker.open_session(None);
    subscribe(&c, "dlq", queue(dlq), 10);
    let d = next(&mut rx).await;
    c.nack(d.tag, None).unwrap().await.unwrap();
    assert!(rx.try_recv().is_err(), "it came back on {dlq}");
    f
}

/// A message dead-lettered again while on the individual DLQ it was dead-lettered to is
/// discarded, as ActiveMQ 5.17 does (its dead-letter audit has seen the message), not sent on
/// to a DLQ of the DLQ.
#[tokio::test]
async fn a_message_dead_lettered_again_on_its_individual_dlq_is_discarded() {
    let f = nacked_twice(individual_dlqs(), "ActiveMQ.DLQ.Queue.q").await;
    assert_eq!(f.broker.queue_depth("queue://ActiveMQ.DLQ.Queue.q"), 0);
    assert_eq!(
        f.broker
            .queue_depth("queue://ActiveMQ.DLQ.Queue.ActiveMQ.DLQ.Queue.q"),
        0
    );
    assert_eq!(f.broker.stats().dead_lettered, 1);
}

/// Only the DLQ a message was dead-lettered to counts: one carrying its original destination
/// back on that destination (sent again by an application that empties a DLQ), and one a
/// client sent to a DLQ itself, are dead-lettered as any other.
#[tokio::test]
async fn a_message_not_dead_lettered_to_its_queue_is_dead_lettered_again() {
    let f = fixture(individual_dlqs()).await;
    let (p, _) = f.broker.open_session(None);
    let mut retried = persistent("retried");
    retried
        .headers
        .push(Header::text("original-destination", "queue://q"));
    p.send(&queue("q"), retried, None).unwrap().await.unwrap();
    p.send(&queue("ActiveMQ.DLQ.Queue.x"), persistent("direct"), None)
        .unwrap()
        .await
        .unwrap();
    for on in ["q", "ActiveMQ.DLQ.Queue.x"] {
        let (c, mut rx) = f.broker.open_session(None);
        subscribe(&c, "c", queue(on), 10);
        let d = next(&mut rx).await;
        c.nack(d.tag, None).unwrap().await.unwrap();
    }
    assert_eq!(
        body(&take_from(&f.broker, "ActiveMQ.DLQ.Queue.q").await),
        "retried"
    );
    let direct = take_from(&f.broker, "ActiveMQ.DLQ.Queue.ActiveMQ.DLQ.Queue.x").await;
    assert_eq!(body(&direct), "direct");
    assert_eq!(f.broker.stats().dead_lettered, 2);
}

#[tokio::test]
async fn a_message_dead_lettered_on_the_shared_dlq_is_discarded() {
    let f = nacked_twice(BrokerOptions::default(), "ActiveMQ.DLQ").await;
    assert_eq!(f.broker.queue_depth("queue://ActiveMQ.DLQ"), 0);
    assert_eq!(f.broker.stats().dead_lettered, 1);
}

#[test]
fn dead_letter_queue_names() {
    let shared = DeadLetterStrategy::Shared;
    assert_eq!(
        shared.dead_letter_queue("queue://q", "queue://q"),
        DEAD_LETTER_QUEUE
    );
    let individual = DeadLetterStrategy::individual();
    for (queue, destination, dlq) in [
        ("queue://q", "queue://q", "queue://ActiveMQ.DLQ.Queue.q"),
        (
            "durable://c:s",
            "topic://a.b",
            "queue://ActiveMQ.DLQ.Topic.a.b",
        ),
        (
            "queue://Consumer.A.VirtualTopic.X",
            "topic://VirtualTopic.X",
            "queue://ActiveMQ.DLQ.Queue.Consumer.A.VirtualTopic.X",
        ),
        ("durable://c:s", "nonsense", DEAD_LETTER_QUEUE),
    ] {
        assert_eq!(individual.dead_letter_queue(queue, destination), dlq);
    }
}

/// A message carrying another destination's `original-destination` (taken off one DLQ and
/// sent on to a retry queue with its headers) names, once dead-lettered, the queue it was
/// dead-lettered from, as ActiveMQ sets it; dead-lettered again on that DLQ it is discarded,
/// not moved on to a DLQ of the DLQ, and from there to yet another at each rejection.
#[tokio::test]
async fn a_message_with_a_foreign_original_destination_does_not_walk_a_chain_of_dlqs() {
    let f = fixture(individual_dlqs()).await;
    let (p, _) = f.broker.open_session(None);
    let mut retried = persistent("retried");
    retried
        .headers
        .push(Header::text("original-destination", "queue://orders"));
    p.send(&queue("retry"), retried, None)
        .unwrap()
        .await
        .unwrap();
    let mut on = "retry".to_string();
    for _ in 0..3 {
        let (c, mut rx) = f.broker.open_session(None);
        subscribe(&c, "c", queue(&on), 10);
        let d = next(&mut rx).await;
        c.nack(d.tag, None).unwrap().await.unwrap();
        on = format!("ActiveMQ.DLQ.Queue.{on}");
        if f.broker.queue_depth(&format!("queue://{on}")) == 0 {
            break;
        }
    }
    assert_eq!(
        on, "ActiveMQ.DLQ.Queue.ActiveMQ.DLQ.Queue.retry",
        "walked on"
    );
    assert_eq!(f.broker.stats().dead_lettered, 1);
}

/// A backlog that expires at once goes to the DLQ a bounded batch per sweep (each sweep holds
/// the core's lock that every client waits behind), the next sweep going on where the last
/// stopped, until none is left; the queues' other messages stay.
#[tokio::test]
async fn an_expired_backlog_is_dead_lettered_a_batch_per_sweep() {
    use crate::broker::core::EXPIRY_BATCH;
    let f = fixture(BrokerOptions {
        expiry_sweep: Duration::from_secs(3600), // the test runs each sweep itself
        ..BrokerOptions::default()
    })
    .await;
    let (p, _) = f.broker.open_session(None);
    let expires = now_millis() + 200;
    let total = 2 * EXPIRY_BATCH + 10;
    for i in 0..total {
        let m = NewMessage {
            persistent: false,
            expiration: expires,
            ..non_persistent(&i.to_string())
        };
        for q in ["a", "b"] {
            p.send(&queue(q), m.clone(), None).unwrap();
        }
    }
    p.send(&queue("a"), non_persistent("kept"), None).unwrap();
    // The scenario is time passing: the backlog expires.
    while now_millis() <= expires {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Each queue gets its turn: the second sweep starts with b, not where a stopped.
    let depths = || {
        (
            f.broker.queue_depth("queue://a"),
            f.broker.queue_depth("queue://b"),
        )
    };
    lock(&f.broker.shared).expire_messages();
    assert_eq!(depths(), (total + 1 - EXPIRY_BATCH, total));
    lock(&f.broker.shared).expire_messages();
    assert_eq!(depths(), (total + 1 - EXPIRY_BATCH, total - EXPIRY_BATCH));
    let mut sweeps = 2;
    loop {
        let before = f.broker.stats().expired;
        lock(&f.broker.shared).expire_messages();
        let expired = f.broker.stats().expired - before;
        assert!(expired <= EXPIRY_BATCH as u64, "{expired} in one sweep");
        if expired == 0 {
            break;
        }
        sweeps += 1;
    }
    assert_eq!(f.broker.stats().expired, 2 * total as u64);
    assert!(sweeps >= 4, "{sweeps} sweeps");
    assert_eq!(f.broker.queue_depth("queue://a"), 1);
    assert_eq!(f.broker.queue_depth("queue://b"), 0);
}
