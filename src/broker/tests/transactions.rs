//! Transactions: all or nothing, rollbacks, lost connections, NACKs and their limits.

use super::*;

#[tokio::test]
async fn a_transaction_is_all_or_nothing() {
    let f = fixture(BrokerOptions::default()).await;
    let (s, _) = f.broker.open_session(None);
    s.begin("t1").unwrap();
    s.send(&queue("q"), persistent("rolled back"), Some("t1"))
        .unwrap();
    s.abort("t1").unwrap();
    s.begin("t2").unwrap();
    s.send(&queue("q"), persistent("x"), Some("t2")).unwrap();
    s.send(&queue("q"), persistent("y"), Some("t2")).unwrap();
    assert_eq!(f.broker.queue_depth("queue://q"), 0);
    s.commit("t2").unwrap().await.unwrap();
    assert_eq!(f.broker.queue_depth("queue://q"), 2);
    // A transacted ack rolled back makes the message deliverable again.
    let (c, mut rx) = consumer_on_q(&f, 1);
    let d = next(&mut rx).await;
    assert_eq!(body(&d), "x");
    c.begin("t3").unwrap();
    c.ack(d.tag, AckScope::Single, Some("t3")).unwrap();
    let d2 = next(&mut rx).await;
    assert_eq!(body(&d2), "y");
    c.abort("t3").unwrap();
    c.ack(d2.tag, AckScope::Single, None).unwrap();
    let again = next(&mut rx).await;
    assert_eq!(body(&again), "x");
    assert_eq!(again.redelivery_count, 1);
}

#[tokio::test]
async fn a_jms_rollback_keeps_its_acknowledged_messages_delivered_to_the_consumer() {
    let f = fixture(BrokerOptions::default()).await;
    let (session, mut rx, d) = one_delivered(&f).await;
    session.begin("tx").unwrap();
    session.ack(d.tag, AckScope::Single, Some("tx")).unwrap();
    session.rollback_keeping_deliveries("tx").unwrap();
    // Not put back on the queue, not delivered again: the client redelivers it itself.
    assert_eq!(f.broker.queue_depth("queue://q"), 0);
    assert!(rx.try_recv().is_err());
    // Still the consumer's to acknowledge, in a new transaction.
    session.begin("tx2").unwrap();
    session.ack(d.tag, AckScope::Single, Some("tx2")).unwrap();
    session.commit("tx2").unwrap().await.unwrap();
    assert!(session.ack(d.tag, AckScope::Single, None).is_err());
    assert_eq!(f.broker.stats().in_flight_messages, 0);
}

/// A transaction rolled back, or lost with its connection, is sent again by the client with
/// the same message ids: the second one is stored. Only a committed sequence counts as stored.
#[tokio::test]
async fn a_transaction_lost_with_its_connection_can_be_sent_again() {
    let f = fixture(BrokerOptions::default()).await;
    let mut m = persistent("order");
    m.message_id = Some("ID:producer-1:1".into());
    let (a, _) = f.broker.open_session(None);
    a.begin("t").unwrap();
    a.send(&queue("q"), m.clone(), Some("t")).unwrap();
    drop(a); // the connection is lost: its transaction is rolled back
    let (b, _) = f.broker.open_session(None);
    b.begin("t").unwrap();
    b.send(&queue("q"), m.clone(), Some("t")).unwrap();
    b.send(&queue("q"), m.clone(), Some("t")).unwrap(); // a repeat inside one transaction
    b.commit("t").unwrap().await.unwrap();
    assert_eq!(
        f.broker.queue_depth("queue://q"),
        1,
        "{:?}",
        f.broker.stats()
    );
    // Once committed, the same id is a duplicate, in or out of a transaction.
    b.begin("u").unwrap();
    b.send(&queue("q"), m.clone(), Some("u")).unwrap();
    b.commit("u").unwrap().await.unwrap();
    b.send(&queue("q"), m, None).unwrap().await.unwrap();
    assert_eq!(
        f.broker.queue_depth("queue://q"),
        1,
        "{:?}",
        f.broker.stats()
    );
}

/// A connection closed with a transaction holding an ack: the message comes back counted as
/// redelivered once, not twice (the closing session's own consumer must not get it first).
#[tokio::test]
async fn a_connection_closed_with_an_open_transaction_counts_one_redelivery() {
    let f = fixture(BrokerOptions::default()).await;
    let (session, _rx, d) = one_delivered(&f).await;
    session.begin("t").unwrap();
    session.ack(d.tag, AckScope::Single, Some("t")).unwrap();
    drop(session);
    let (_c, mut rx) = consumer_on_q(&f, 10);
    assert_eq!(next(&mut rx).await.redelivery_count, 1);
}

/// A NACK inside a transaction takes effect with it: the message goes to the DLQ at commit,
/// and comes back (redelivered) if the transaction is rolled back.
#[tokio::test]
async fn a_nack_in_a_transaction_takes_effect_at_commit_only() {
    let f = fixture(BrokerOptions::default()).await;
    let (session, mut rx, d) = one_delivered(&f).await;
    session.begin("t").unwrap();
    session.nack(d.tag, Some("t")).unwrap().await.unwrap();
    assert_eq!(f.broker.queue_depth("queue://ActiveMQ.DLQ"), 0);
    session.abort("t").unwrap();
    let again = next(&mut rx).await;
    assert_eq!((body(&again), again.redelivery_count), ("m", 1));
    session.begin("u").unwrap();
    session.nack(again.tag, Some("u")).unwrap().await.unwrap();
    session.commit("u").unwrap().await.unwrap();
    assert_eq!(f.broker.queue_depth("queue://ActiveMQ.DLQ"), 1);
    assert_eq!(f.broker.queue_depth("queue://q"), 0);
}

/// A transaction holds its sends in memory until the commit, at most `memory_limit` bytes of
/// bodies: past that a send is refused with an error that says so, instead of the broker
/// growing without bound.
#[tokio::test]
async fn a_transaction_holds_at_most_memory_limit_of_bodies() {
    let f = fixture_with_memory_limit(1000).await;
    let (s, _) = f.broker.open_session(None);
    s.begin("t").unwrap();
    s.send(&queue("q"), persistent(&"a".repeat(600)), Some("t"))
        .unwrap();
    let refused = s.send(&queue("q"), persistent(&"b".repeat(600)), Some("t"));
    let Err(error) = refused else {
        panic!("a second 600-byte body was taken past a 1000-byte memory_limit");
    };
    assert!(error.to_string().contains("memory_limit"), "{error}");
    s.commit("t").unwrap().await.unwrap();
    assert_eq!(f.broker.queue_depth("queue://q"), 1);
}

/// The open transactions of all connections together hold at most `memory_limit` bytes of
/// bodies, however many there are: one connection opening transaction after transaction, each
/// within the limit, is refused once they add up to it, and what a commit, a rollback or a
/// closed connection frees can be used again.
#[tokio::test]
async fn open_transactions_together_hold_at_most_memory_limit_of_bodies() {
    let f = fixture_with_memory_limit(1000).await;
    let body = |c: &str| persistent(&c.repeat(400));
    let (a, _) = f.broker.open_session(None);
    let (b, _) = f.broker.open_session(None);
    for tx in ["t1", "t2"] {
        a.begin(tx).unwrap();
        a.send(&queue("q"), body("a"), Some(tx)).unwrap();
    }
    b.begin("t3").unwrap();
    let refused = b.send(&queue("q"), body("b"), Some("t3"));
    let Err(error) = refused else {
        panic!("a third 400-byte body was taken with 800 held and a 1000-byte memory_limit");
    };
    assert!(
        matches!(
            error,
            BrokerError::OpenTransactionsFull {
                held: 800,
                limit: 1000,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("memory_limit"), "{error}");
    a.commit("t1").unwrap().await.unwrap();
    b.send(&queue("q"), body("b"), Some("t3")).unwrap();
    a.abort("t2").unwrap();
    b.send(&queue("q"), body("b"), Some("t3")).unwrap();
    // 800 held by t3; a closed connection's transaction frees its share too.
    drop(b);
    a.begin("t4").unwrap();
    for _ in 0..2 {
        a.send(&queue("q"), body("c"), Some("t4")).unwrap();
    }
    a.commit("t4").unwrap().await.unwrap();
    assert_eq!(f.broker.queue_depth("queue://q"), 3);
}

/// A transaction whose commit would not fit one journal record is refused at the commit,
/// naming the limit, and stays open: the client rolls it back (its acknowledged message is
/// then redelivered), nothing of it is stored, and the store keeps working.
#[tokio::test]
async fn a_commit_too_large_for_one_record_is_refused_and_can_be_rolled_back() {
    let f = fixture_with_memory_limit(u64::MAX).await;
    let (producer, _) = f.broker.open_session(None);
    send_settled(&producer, &queue("in"), persistent("work")).await;
    let (s, mut rx) = f.broker.open_session(None);
    subscribe(&s, "s", queue("in"), 10);
    let delivery = next(&mut rx).await;
    s.begin("tx").unwrap();
    s.ack(delivery.tag, AckScope::Single, Some("tx")).unwrap();
    let mut big = persistent("");
    big.body = Bytes::from(vec![0u8; 1 << 20]);
    for _ in 0..260 {
        s.send(&queue("out"), big.clone(), Some("tx")).unwrap();
    }
    let error = s.commit("tx").unwrap_err();
    assert!(
        matches!(&error, BrokerError::TransactionTooLarge(tx, m) if tx == "tx" && m.contains("journal's limit")),
        "{error}"
    );
    assert_eq!(f.broker.store_failure(), None);
    s.abort("tx").unwrap();
    let again = next(&mut rx).await;
    assert_eq!(again.message.body, delivery.message.body);
    assert_eq!(again.redelivery_count, 1);
    assert_eq!(f.broker.queue_depth("queue://out"), 0);
    send_settled(&producer, &queue("out"), persistent("small")).await;
    assert_eq!(f.broker.queue_depth("queue://out"), 1);
}

/// `ferromq_messages_acknowledged_total` is a counter: a transaction's acknowledgements count
/// once it commits, and a rollback (either kind) leaves it where it was.
#[tokio::test]
async fn a_transactions_acknowledgements_count_at_commit_only() {
    let f = fixture(BrokerOptions::default()).await;
    let (session, mut rx, d) = one_delivered(&f).await;
    session.begin("kept").unwrap();
    session.ack(d.tag, AckScope::Single, Some("kept")).unwrap();
    assert_eq!(
        f.broker.stats().acknowledged,
        0,
        "counted before the commit"
    );
    session.rollback_keeping_deliveries("kept").unwrap();
    session.begin("redelivered").unwrap();
    session
        .ack(d.tag, AckScope::Single, Some("redelivered"))
        .unwrap();
    session.abort("redelivered").unwrap();
    assert_eq!(
        f.broker.stats().acknowledged,
        0,
        "counted a rolled-back ack"
    );
    let again = next(&mut rx).await;
    assert_eq!(again.redelivery_count, 1);
    session.begin("committed").unwrap();
    session
        .ack(again.tag, AckScope::Single, Some("committed"))
        .unwrap();
    session.commit("committed").unwrap().await.unwrap();
    assert_eq!(f.broker.stats().acknowledged, 1);
}
