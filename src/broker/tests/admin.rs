//! Admin operations: purge, delete and DLQ retry, in batches.

use super::*;

/// A persistent message for the DLQ that names `origin` as where it was dead-lettered from.
fn dead_letter_from(origin: &str, body: &str) -> NewMessage {
    let mut m = persistent(body);
    m.headers.push(Header::text("original-destination", origin));
    m
}

/// A purge removes what waits and what is delivered and not acknowledged, as ActiveMQ's does:
/// the consumer keeps its delivery, its ack removes nothing more, and going away without one
/// brings nothing back; sends after the purge are kept. A restart shows the same.
#[tokio::test]
async fn a_purge_removes_waiting_and_unacknowledged_messages_for_good() {
    let dir = tempfile::tempdir().unwrap();
    {
        let broker = Broker::start_for_tests(dir.path(), BrokerOptions::default());
        send_numbered(&broker, 4).await;
        let (c, mut rx) = broker.open_session(None);
        subscribe(&c, "s", queue("q"), 1);
        let d = next(&mut rx).await;
        assert_eq!(body(&d), "0");
        assert_eq!(broker.purge_queue("queue://q").await, Ok(4));
        assert_eq!(broker.queue_depth("queue://q"), 0);
        assert_eq!(broker.queue_stats()[0].in_flight, 0);
        drop(c);
        assert_eq!(
            broker.queue_depth("queue://q"),
            0,
            "the unacknowledged one came back"
        );
        assert_eq!(
            broker.purge_queue("queue://nope").await,
            Err(AdminError::UnknownQueue("queue://nope".into()))
        );
        let (p, _) = broker.open_session(None);
        p.send(&queue("q"), persistent("after"), None)
            .unwrap()
            .await
            .unwrap();
    }
    let broker = Broker::start_for_tests(dir.path(), BrokerOptions::default());
    assert_eq!(broker.queue_depth("queue://q"), 1);
    assert_eq!(body(&take_from(&broker, "q").await), "after");
}

/// A purge's acknowledged delivery is not removed twice, and one acknowledged in a
/// transaction rolled back after the purge does not come back.
#[tokio::test]
async fn a_purged_delivery_acknowledged_or_rolled_back_later_stays_gone() {
    let f = fixture(BrokerOptions::default()).await;
    send_numbered(&f.broker, 2).await;
    let (c, mut rx) = consumer_on_q(&f, 2);
    let (d0, d1) = (next(&mut rx).await, next(&mut rx).await);
    c.begin("t").unwrap();
    c.ack(d1.tag, AckScope::Single, Some("t")).unwrap();
    assert_eq!(f.broker.purge_queue("queue://q").await, Ok(2));
    c.ack(d0.tag, AckScope::Single, None)
        .unwrap()
        .await
        .unwrap();
    c.abort("t").unwrap();
    assert_eq!(f.broker.queue_depth("queue://q"), 0);
    drop(c);
    assert_eq!(f.broker.queue_depth("queue://q"), 0);
}

/// A queue deeper than one batch is purged in several lock holds, all of it.
#[tokio::test]
async fn a_purge_of_several_batches_removes_every_message() {
    let dir = tempfile::tempdir().unwrap();
    let n = super::core::ADMIN_BATCH * 2 + 10;
    {
        let broker = Broker::start_for_tests(dir.path(), BrokerOptions::default());
        send_numbered(&broker, n).await;
        assert_eq!(broker.purge_queue("queue://q").await, Ok(n));
        assert_eq!(broker.queue_depth("queue://q"), 0);
    }
    let broker = Broker::start_for_tests(dir.path(), BrokerOptions::default());
    assert_eq!(broker.queue_depth("queue://q"), 0);
}

/// Deleting a queue with a consumer is refused; without one the queue and its messages go,
/// for good.
#[tokio::test]
async fn a_queue_is_deleted_only_without_consumers_and_stays_deleted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let broker = Broker::start_for_tests(dir.path(), BrokerOptions::default());
        send_numbered(&broker, 3).await;
        let (c, _rx) = broker.open_session(None);
        subscribe(&c, "s", queue("q"), 0);
        assert!(matches!(
            broker.delete_queue("queue://q").await,
            Err(AdminError::Conflict(why)) if why.contains("consumer")
        ));
        assert_eq!(broker.queue_depth("queue://q"), 3);
        drop(c);
        assert_eq!(broker.delete_queue("queue://q").await, Ok(3));
        assert!(broker.queue_stats().iter().all(|q| q.name != "queue://q"));
        assert_eq!(
            broker.delete_queue("queue://q").await,
            Err(AdminError::UnknownQueue("queue://q".into()))
        );
    }
    let broker = Broker::start_for_tests(dir.path(), BrokerOptions::default());
    assert!(broker.queue_stats().iter().all(|q| q.name != "queue://q"));
}

/// A retry moves a dead letter back to its queue, where it is delivered with its redelivery
/// count started again and the DLQ as its original destination (ActiveMQ's resend); a message
/// without an original destination stays; a queue that is no DLQ is refused. A restart shows
/// the same.
#[tokio::test]
async fn a_retry_moves_dead_letters_back_with_a_fresh_redelivery_count() {
    let dir = tempfile::tempdir().unwrap();
    let options = BrokerOptions {
        max_redeliveries: 1,
        ..BrokerOptions::default()
    };
    {
        let broker = Broker::start_for_tests(dir.path(), options.clone());
        let (p, _) = broker.open_session(None);
        p.send(&queue("q"), persistent("poison"), None)
            .unwrap()
            .await
            .unwrap();
        for _ in 0..2 {
            let (c, mut rx) = broker.open_session(None);
            subscribe(&c, "s", queue("q"), 1);
            next(&mut rx).await;
        }
        p.send(&queue("ActiveMQ.DLQ"), persistent("stray"), None)
            .unwrap()
            .await
            .unwrap();
        assert_eq!(broker.queue_depth("queue://ActiveMQ.DLQ"), 2);
        assert!(matches!(
            broker.retry_dead_letters("queue://q").await,
            Err(AdminError::Conflict(_))
        ));
        let retried = broker.retry_dead_letters("queue://ActiveMQ.DLQ").await;
        assert_eq!(retried, Ok(Retried { moved: 1, left: 1 }));
        assert_eq!(broker.queue_depth("queue://ActiveMQ.DLQ"), 1);
        let (c, mut rx) = broker.open_session(None);
        subscribe(&c, "s", queue("q"), 1);
        let d = next(&mut rx).await;
        assert_eq!(body(&d), "poison");
        assert_eq!(d.redelivery_count, 0);
        assert_eq!(d.message.destination, "queue://q");
        assert_eq!(
            header(&d, "original-destination"),
            Some("queue://ActiveMQ.DLQ")
        );
        // Unacknowledged, it goes back to q (not to the DLQ: its count starts from 0).
        drop(c);
        assert_eq!(broker.queue_depth("queue://q"), 1);
    }
    let broker = Broker::start_for_tests(dir.path(), options);
    assert_eq!(broker.queue_depth("queue://q"), 1);
    assert_eq!(broker.queue_depth("queue://ActiveMQ.DLQ"), 1);
    assert_eq!(body(&take_from(&broker, "ActiveMQ.DLQ").await), "stray");
    // The stored copy starts from 0 too (a restart counts again from the stored count).
    let back = take_from(&broker, "q").await;
    assert_eq!((body(&back), back.redelivery_count), ("poison", 0));
}

/// A durable subscription's dead letter names the topic: retried, it is published to the
/// topic again, so every current subscriber receives it, durable or not, as ActiveMQ's retry
/// resends it to the topic.
#[tokio::test]
async fn a_retried_topic_message_reaches_every_subscriber_of_the_topic() {
    let f = fixture(BrokerOptions::default()).await;
    let (s, mut rx) = f.broker.open_session(Some("client".into()));
    for name in ["a", "b"] {
        subscribe_to(&s, name, topic("news"), Some(name), None)
            .unwrap()
            .await
            .unwrap();
    }
    let (p, _) = f.broker.open_session(None);
    p.send(&topic("news"), persistent("n"), None)
        .unwrap()
        .await
        .unwrap();
    let (first, second) = (next(&mut rx).await, next(&mut rx).await);
    let (rejected, kept) = if first.subscription == "a" {
        (first, second)
    } else {
        (second, first)
    };
    s.nack(rejected.tag, None).unwrap().await.unwrap();
    s.ack(kept.tag, AckScope::Single, None)
        .unwrap()
        .await
        .unwrap();
    let (listener, mut heard) = f.broker.open_session(None);
    subscribe(&listener, "l", topic("news"), 10);
    let retried = f.broker.retry_dead_letters("queue://ActiveMQ.DLQ").await;
    assert_eq!(retried, Ok(Retried { moved: 1, left: 0 }));
    let mut again: Vec<String> = [next(&mut rx).await, next(&mut rx).await]
        .iter()
        .map(|d| {
            assert_eq!(body(d), "n");
            assert_eq!(d.redelivery_count, 0);
            d.subscription.clone()
        })
        .collect();
    again.sort();
    assert_eq!(again, ["a", "b"]);
    assert_eq!(body(&next(&mut heard).await), "n");
    assert_eq!(f.broker.queue_depth("queue://ActiveMQ.DLQ"), 0);
}

/// A DLQ deeper than one batch is retried in several lock holds and records, every message
/// moved in order.
#[tokio::test]
async fn a_retry_of_several_batches_moves_every_message_in_order() {
    let f = fixture(BrokerOptions::default()).await;
    let n = super::core::ADMIN_BATCH * 2 + 10;
    let (p, _) = f.broker.open_session(None);
    for i in 0..n {
        p.send(
            &queue("ActiveMQ.DLQ"),
            dead_letter_from("queue://q", &i.to_string()),
            None,
        )
        .unwrap()
        .await
        .unwrap();
    }
    let retried = f.broker.retry_dead_letters("queue://ActiveMQ.DLQ").await;
    assert_eq!(retried, Ok(Retried { moved: n, left: 0 }));
    assert_eq!(f.broker.queue_depth("queue://q"), n);
    let (c, mut rx) = consumer_on_q(&f, 10);
    for i in 0..20 {
        let d = next(&mut rx).await;
        assert_eq!(body(&d), i.to_string());
        c.ack(d.tag, AckScope::Single, None).unwrap();
    }
}

#[test]
fn dead_letter_queues_are_recognised_by_the_strategy() {
    let shared = DeadLetterStrategy::Shared;
    assert!(shared.is_dead_letter_queue("queue://ActiveMQ.DLQ"));
    assert!(!shared.is_dead_letter_queue("queue://ActiveMQ.DLQ.Queue.q"));
    let individual = DeadLetterStrategy::individual();
    assert!(individual.is_dead_letter_queue("queue://ActiveMQ.DLQ.Queue.q"));
    assert!(individual.is_dead_letter_queue("queue://ActiveMQ.DLQ.Topic.news"));
    assert!(individual.is_dead_letter_queue("queue://ActiveMQ.DLQ"));
    assert!(!individual.is_dead_letter_queue("queue://q"));
    assert!(!individual.is_dead_letter_queue("queue://ActiveMQ.DLQ.Queue."));
}

/// Large dead letters, their bodies left in the journal past `memory_limit`, are read back
/// and moved in records of bounded size and batches of bounded bytes: all of them arrive
/// whole, and are there after a restart.
#[tokio::test]
async fn a_retry_of_large_messages_moves_them_whole_in_bounded_records() {
    const SIZE: usize = 6 << 20;
    let dir = tempfile::tempdir().unwrap();
    let options = BrokerOptions {
        memory_limit: 1 << 20,
        ..BrokerOptions::default()
    };
    let n = 12; // 72 MiB: more than one retry batch's bytes, many records' worth
    {
        let broker = Broker::start_for_tests(dir.path(), options.clone());
        let (p, _) = broker.open_session(None);
        for i in 0..n {
            let mut m = dead_letter_from("queue://big", "");
            m.body = Bytes::from(vec![i as u8; SIZE]);
            p.send(&queue("ActiveMQ.DLQ"), m, None)
                .unwrap()
                .await
                .unwrap();
        }
        let retried = broker.retry_dead_letters("queue://ActiveMQ.DLQ").await;
        assert_eq!(retried, Ok(Retried { moved: n, left: 0 }));
        assert_eq!(broker.queue_depth("queue://big"), n);
        assert_eq!(broker.queue_depth("queue://ActiveMQ.DLQ"), 0);
    }
    // No record holds more than a few of them (ADMIN_BATCH_BYTES would fit ten).
    let largest = largest_frame(dir.path());
    assert!(
        largest < 3 * SIZE,
        "a record of {largest} bytes holds more than two 6 MiB moves"
    );
    let broker = Broker::start_for_tests(dir.path(), options);
    assert_eq!(broker.queue_depth("queue://ActiveMQ.DLQ"), 0);
    let (c, mut rx) = broker.open_session(None);
    subscribe(&c, "s", queue("big"), 1);
    for i in 0..n {
        let d = next(&mut rx).await;
        assert_eq!(d.message.body.len(), SIZE);
        assert!(d.message.body.iter().all(|b| *b == i as u8), "message {i}");
        c.ack(d.tag, AckScope::Single, None).unwrap();
    }
}

/// The longest journal frame body in the segments (`*.log`) of store directory `dir`.
fn largest_frame(dir: &std::path::Path) -> usize {
    let mut largest = 0;
    for file in std::fs::read_dir(dir).unwrap() {
        let path = file.unwrap().path();
        if path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        // A segment released meanwhile (nothing live in it) is gone: not one of the moves'.
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let mut at = 0;
        while let Some(header) = bytes.get(at..at + 8) {
            let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
            if len == 0 {
                break;
            }
            largest = largest.max(len);
            at += 8 + len;
        }
    }
    largest
}

/// A durable subscription's queue, as `/queues` lists it, is deleted with its subscription
/// while inactive (refused while active): later messages to the topic are not kept for it,
/// and a restart does not bring it back.
#[tokio::test]
async fn deleting_a_durable_subscriptions_queue_removes_the_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let name = "durable://client:news";
    {
        let broker = Broker::start_for_tests(dir.path(), BrokerOptions::default());
        let (s, _rx) = broker.open_session(Some("client".into()));
        subscribe_to(&s, "news", topic("news"), Some("news"), None)
            .unwrap()
            .await
            .unwrap();
        assert!(matches!(
            broker.delete_queue(name).await,
            Err(AdminError::Conflict(_))
        ));
        s.unsubscribe("news").unwrap().await.unwrap();
        let (p, _) = broker.open_session(None);
        for body in ["a", "b"] {
            p.send(&topic("news"), persistent(body), None)
                .unwrap()
                .await
                .unwrap();
        }
        assert_eq!(broker.queue_depth(name), 2);
        assert_eq!(broker.delete_queue(name).await, Ok(2));
        p.send(&topic("news"), persistent("c"), None)
            .unwrap()
            .await
            .unwrap();
        assert!(broker.queue_stats().iter().all(|q| q.name != name));
    }
    let broker = Broker::start_for_tests(dir.path(), BrokerOptions::default());
    assert!(broker.queue_stats().iter().all(|q| q.name != name));
}

/// As ActiveMQ's queue browser: messages delivered to a consumer and not yet acknowledged are
/// still on the queue, and a browse shows them in their place.
#[tokio::test]
async fn a_browse_shows_delivered_unacknowledged_messages_in_their_place() {
    let f = fixture(BrokerOptions::default()).await;
    send_numbered(&f.broker, 5).await;
    let (consumer, mut rx) = f.broker.open_session(None);
    subscribe(&consumer, "s", queue("q"), 2);
    assert_eq!(body(&next(&mut rx).await), "0");
    assert_eq!(body(&next(&mut rx).await), "1");
    let (browser, _) = f.broker.open_session(None);
    assert_eq!(
        browsed_bodies(&browser, &queue("q"), None),
        ["0", "1", "2", "3", "4"]
    );
}

/// A broker whose browse pages hold 3 messages, and a session that sent ten to `queue://q`:
/// `red<i>` for every `red_every`-th, `blue<i>` for the others (property `color`).
async fn browse_fixture(red_every: usize) -> (Fixture, Session) {
    let f = fixture(BrokerOptions {
        max_browse_page_size: 3,
        ..BrokerOptions::default()
    })
    .await;
    let (s, _) = f.broker.open_session(None);
    for i in 0..10 {
        let color = if i % red_every == 0 { "red" } else { "blue" };
        s.send(&queue("q"), colored(color, &format!("{color}{i}")), None)
            .unwrap()
            .await
            .unwrap();
    }
    (f, s)
}

/// A page of a browse holds at most `max_browse_page_size` messages, the first in delivery
/// order among those its selector matches (ActiveMQ's `maxBrowsePageSize`), and a browse
/// consumes none.
#[tokio::test]
async fn a_browse_page_holds_at_most_max_browse_page_size() {
    let (f, s) = browse_fixture(2).await;
    let shown = |selector: Option<&str>| -> Vec<String> {
        let mut cursor = s.open_browse(&queue("q"), selector).unwrap();
        s.browse_next(&mut cursor, usize::MAX)
            .unwrap()
            .iter()
            .map(|(m, _)| String::from_utf8_lossy(&m.body).into_owned())
            .collect()
    };
    assert_eq!(shown(None), ["red0", "blue1", "red2"]);
    assert_eq!(shown(Some("color = 'blue'")), ["blue1", "blue3", "blue5"]);
    let waiting: Vec<(String, usize)> = f
        .broker
        .queue_stats()
        .into_iter()
        .map(|q| (q.name, q.ready))
        .collect();
    assert_eq!(waiting, [("queue://q".to_string(), 10)]);
}

/// A browser reads the whole queue page by page (a page at most `max_browse_page_size`):
/// delivered and unacknowledged messages in their place, nothing sent after it began, and
/// with a selector only the matches; it is done after the last.
#[tokio::test]
async fn a_browser_pages_through_the_whole_queue() {
    let (f, s) = browse_fixture(3).await;
    let (consumer, mut rx) = f.broker.open_session(None);
    subscribe(&consumer, "c", queue("q"), 1);
    assert_eq!(body(&next(&mut rx).await), "red0");
    let pages = |cursor: &mut BrowseCursor| -> Vec<Vec<String>> {
        let mut pages = Vec::new();
        while !cursor.is_done() {
            let page = s.browse_next(cursor, 10).unwrap();
            pages.push(
                page.iter()
                    .map(|(m, _)| String::from_utf8_lossy(&m.body).into_owned())
                    .collect(),
            );
        }
        pages
    };
    let mut cursor = s.open_browse(&queue("q"), None).unwrap();
    // Sent after the browse began: not shown to it.
    s.send(&queue("q"), colored("red", "late"), None)
        .unwrap()
        .await
        .unwrap();
    assert_eq!(
        pages(&mut cursor),
        [
            vec!["red0", "blue1", "blue2"],
            vec!["red3", "blue4", "blue5"],
            vec!["red6", "blue7", "blue8"],
            vec!["red9"],
        ]
    );
    let mut cursor = s.open_browse(&queue("q"), Some("color = 'red'")).unwrap();
    let reds: Vec<String> = pages(&mut cursor).into_iter().flatten().collect();
    assert_eq!(reds, ["red0", "red3", "red6", "red9", "late"]);
    // A page is also at most what the caller has room for.
    let mut cursor = s.open_browse(&queue("q"), None).unwrap();
    assert_eq!(s.browse_next(&mut cursor, 2).unwrap().len(), 2);
    assert!(!cursor.is_done());
}
