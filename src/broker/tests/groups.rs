//! Exclusive consumers, message groups and consumer priorities.

use super::*;

fn subscribe_exclusive(session: &Session, id: &str, prefetch: u32) {
    session
        .subscribe(SubscribeRequest {
            exclusive: true,
            ..request(id, queue("q"), prefetch)
        })
        .unwrap();
}

#[tokio::test]
async fn exclusive_consumer_alone_receives_the_queue() {
    let f = fixture(BrokerOptions::default()).await;
    let (_plain, mut plain_rx) = consumer_on_q(&f, 10);
    let (first, mut first_rx) = f.broker.open_session(None);
    subscribe_exclusive(&first, "s", 10);
    // A later exclusive consumer waits behind the first (no priorities: the first wins).
    let (second, mut second_rx) = f.broker.open_session(None);
    subscribe_exclusive(&second, "s", 10);
    let (producer, _) = f.broker.open_session(None);
    for i in 0..6 {
        send_to_q(&producer, persistent(&i.to_string())).await;
    }
    assert_eq!(
        bodies(&take_all(&mut first_rx)),
        ["0", "1", "2", "3", "4", "5"]
    );
    assert!(take_all(&mut plain_rx).is_empty());
    assert!(take_all(&mut second_rx).is_empty());
    // Past its prefetch window the rest waits for it rather than going to the others.
    for i in 6..20 {
        send_to_q(&producer, persistent(&i.to_string())).await;
    }
    assert_eq!(take_all(&mut first_rx).len(), 4);
    assert!(take_all(&mut plain_rx).is_empty() && take_all(&mut second_rx).is_empty());
    assert_eq!(f.broker.queue_depth("queue://q"), 10);
}

#[tokio::test]
async fn next_exclusive_consumer_takes_over_with_the_unacknowledged_in_order() {
    let f = fixture(BrokerOptions::default()).await;
    let (first, mut first_rx) = f.broker.open_session(None);
    subscribe_exclusive(&first, "s", 10);
    let (_plain, mut plain_rx) = consumer_on_q(&f, 10);
    let (second, mut second_rx) = f.broker.open_session(None);
    subscribe_exclusive(&second, "s", 10);
    let (producer, _) = f.broker.open_session(None);
    for i in 0..5 {
        send_to_q(&producer, persistent(&i.to_string())).await;
    }
    let got = take_all(&mut first_rx);
    assert_eq!(bodies(&got), ["0", "1", "2", "3", "4"]);
    first
        .ack(got[0].tag, AckScope::Single, None)
        .unwrap()
        .await
        .unwrap();
    drop(first);
    // The next exclusive consumer gets the unacknowledged ones, in order, redelivered.
    let took = take_all(&mut second_rx);
    assert_eq!(bodies(&took), ["1", "2", "3", "4"]);
    assert!(took.iter().all(|d| d.redelivery_count == 1));
    send_to_q(&producer, persistent("5")).await;
    assert_eq!(bodies(&take_all(&mut second_rx)), ["5"]);
    assert!(take_all(&mut plain_rx).is_empty());
    // With no exclusive consumer left, the others are served again, this one's messages
    // first.
    second.unsubscribe("s").unwrap();
    assert_eq!(bodies(&take_all(&mut plain_rx)), ["1", "2", "3", "4", "5"]);
}

#[tokio::test]
async fn without_an_exclusive_consumer_the_queue_is_shared() {
    let f = fixture(BrokerOptions::default()).await;
    let (exclusive, mut exclusive_rx) = f.broker.open_session(None);
    subscribe_exclusive(&exclusive, "s", 10);
    let (_a, mut a_rx) = consumer_on_q(&f, 10);
    let (_b, mut b_rx) = consumer_on_q(&f, 10);
    // On another queue, plain consumers share as always.
    let (c, mut c_rx) = f.broker.open_session(None);
    subscribe(&c, "s", queue("other"), 10);
    let (d, mut d_rx) = f.broker.open_session(None);
    subscribe(&d, "s", queue("other"), 10);
    let (producer, _) = f.broker.open_session(None);
    for i in 0..4 {
        send_to_q(&producer, persistent(&i.to_string())).await;
        send_settled(&producer, &queue("other"), persistent(&i.to_string())).await;
    }
    assert_eq!(take_all(&mut exclusive_rx).len(), 4);
    assert!(take_all(&mut a_rx).is_empty() && take_all(&mut b_rx).is_empty());
    assert_eq!(bodies(&take_all(&mut c_rx)), ["0", "2"]);
    assert_eq!(bodies(&take_all(&mut d_rx)), ["1", "3"]);
    // An exclusive subscription on a topic is an ordinary one (queues only).
    let (t1, mut t1_rx) = f.broker.open_session(None);
    t1.subscribe(SubscribeRequest {
        exclusive: true,
        ..request("t", Destination::Topic("t".into()), 10)
    })
    .unwrap();
    let (t2, mut t2_rx) = f.broker.open_session(None);
    subscribe(&t2, "t", Destination::Topic("t".into()), 10);
    send_settled(&producer, &Destination::Topic("t".into()), persistent("t")).await;
    assert_eq!(take_all(&mut t1_rx).len(), 1);
    assert_eq!(take_all(&mut t2_rx).len(), 1);
    // Once the exclusive consumer is gone, the remaining ones share the queue.
    for d in take_all(&mut exclusive_rx) {
        exclusive.ack(d.tag, AckScope::Single, None).unwrap();
    }
    exclusive.unsubscribe("s").unwrap();
    // Its four unacknowledged messages are shared round-robin, in order.
    let a_got = take_all(&mut a_rx);
    let b_got = take_all(&mut b_rx);
    assert_eq!((a_got.len(), b_got.len()), (2, 2));
    for i in 4..8 {
        send_to_q(&producer, persistent(&i.to_string())).await;
    }
    assert_eq!(take_all(&mut a_rx).len(), 2);
    assert_eq!(take_all(&mut b_rx).len(), 2);
}

#[tokio::test]
async fn message_groups_stick_to_one_consumer() {
    let f = fixture(BrokerOptions::default()).await;
    let (_a, mut a_rx) = consumer_on_q(&f, 100);
    let (_b, mut b_rx) = consumer_on_q(&f, 100);
    let (producer, _) = f.broker.open_session(None);
    let groups = ["red", "green", "blue"];
    for i in 0..12 {
        let group = groups[i % 3];
        send_to_q(&producer, grouped(&format!("{group}-{i}"), group, None)).await;
    }
    let a_got = take_all(&mut a_rx);
    let b_got = take_all(&mut b_rx);
    assert_eq!(a_got.len() + b_got.len(), 12);
    for group in groups {
        let to_a = a_got.iter().filter(|d| body(d).starts_with(group)).count();
        let to_b = b_got.iter().filter(|d| body(d).starts_with(group)).count();
        assert!(
            (to_a, to_b) == (4, 0) || (to_a, to_b) == (0, 4),
            "group {group} split: {to_a} to one consumer, {to_b} to the other"
        );
        // Only the group's first message to its consumer says so.
        let firsts: Vec<&str> = a_got
            .iter()
            .chain(&b_got)
            .filter(|d| body(d).starts_with(group) && d.group_first)
            .map(body)
            .collect();
        assert_eq!(firsts.len(), 1, "{group}: {firsts:?}");
    }
    // Messages without a group are still shared.
    for i in 0..4 {
        send_to_q(&producer, persistent(&i.to_string())).await;
    }
    assert_eq!(take_all(&mut a_rx).len(), 2);
    assert_eq!(take_all(&mut b_rx).len(), 2);
}

#[tokio::test]
async fn message_group_moves_when_its_consumer_goes_away() {
    let f = fixture(BrokerOptions::default()).await;
    let (a, mut a_rx) = consumer_on_q(&f, 100);
    let (_b, mut b_rx) = consumer_on_q(&f, 100);
    let (producer, _) = f.broker.open_session(None);
    for i in 0..4 {
        send_to_q(&producer, grouped(&i.to_string(), "g", None)).await;
    }
    // Round-robin gave the first to a; the group stays there.
    assert_eq!(bodies(&take_all(&mut a_rx)), ["0", "1", "2", "3"]);
    assert!(take_all(&mut b_rx).is_empty());
    drop(a);
    // b takes the group over, with a's unacknowledged messages in order.
    let took = take_all(&mut b_rx);
    assert_eq!(bodies(&took), ["0", "1", "2", "3"]);
    assert!(took[0].group_first && !took[1].group_first);
    let (_c, mut c_rx) = consumer_on_q(&f, 100);
    for i in 4..8 {
        send_to_q(&producer, grouped(&i.to_string(), "g", None)).await;
    }
    assert_eq!(bodies(&take_all(&mut b_rx)), ["4", "5", "6", "7"]);
    assert!(take_all(&mut c_rx).is_empty());
}

#[tokio::test]
async fn group_sequence_minus_one_closes_the_group() {
    let f = fixture(BrokerOptions::default()).await;
    let (_a, mut a_rx) = consumer_on_q(&f, 100);
    let (_b, mut b_rx) = consumer_on_q(&f, 100);
    let (producer, _) = f.broker.open_session(None);
    send_to_q(&producer, grouped("1", "g", Some(1))).await;
    send_to_q(&producer, grouped("2", "g", Some(2))).await;
    send_to_q(&producer, grouped("last", "g", Some(-1))).await;
    assert_eq!(bodies(&take_all(&mut a_rx)), ["1", "2", "last"]);
    assert!(take_all(&mut b_rx).is_empty());
    // Closed: the group's next message is assigned afresh by round-robin (b's turn), and the
    // group then sticks to b.
    send_to_q(&producer, grouped("again", "g", None)).await;
    send_to_q(&producer, grouped("more", "g", None)).await;
    let to_b = take_all(&mut b_rx);
    assert_eq!(bodies(&to_b), ["again", "more"]);
    assert!(to_b[0].group_first);
    assert!(take_all(&mut a_rx).is_empty());
}

/// Each group keeps its own owner (ActiveMQ's default "cached" group map): closing one group,
/// or starting one afresh, leaves every other group with its consumer. "g16" and "g140" are
/// ids a 1024-bucket FNV-1a hash map (this broker's map before) put in one bucket, where the
/// close of one freed the other too and its next message went to another consumer while its
/// first was still unacknowledged.
#[tokio::test]
async fn closing_or_restarting_a_group_leaves_the_other_groups_alone() {
    let f = fixture(BrokerOptions::default()).await;
    let (_a, mut a_rx) = consumer_on_q(&f, 100);
    let (_b, mut b_rx) = consumer_on_q(&f, 100);
    let (producer, _) = f.broker.open_session(None);
    send_to_q(&producer, grouped("x1", "g16", None)).await;
    send_to_q(&producer, grouped("y1", "g140", None)).await;
    send_to_q(&producer, grouped("z1", "g7", None)).await;
    // Round-robin: g16 to a, g140 to b, g7 to a.
    assert_eq!(bodies(&take_all(&mut a_rx)), ["x1", "z1"]);
    assert_eq!(bodies(&take_all(&mut b_rx)), ["y1"]);
    // g16 closes, then g7 starts again (sequence 1, assigned afresh: b's turn).
    send_to_q(&producer, grouped("x2", "g16", Some(-1))).await;
    send_to_q(&producer, grouped("z2", "g7", Some(1))).await;
    assert_eq!(bodies(&take_all(&mut a_rx)), ["x2"]);
    assert_eq!(bodies(&take_all(&mut b_rx)), ["z2"]);
    // g140 still goes to b, g7 now to b too, and the closed g16 is assigned afresh (a's turn).
    send_to_q(&producer, grouped("y2", "g140", None)).await;
    send_to_q(&producer, grouped("z3", "g7", None)).await;
    send_to_q(&producer, grouped("x3", "g16", None)).await;
    assert_eq!(bodies(&take_all(&mut b_rx)), ["y2", "z3"]);
    assert_eq!(bodies(&take_all(&mut a_rx)), ["x3"]);
}

/// A group whose consumer's window is full, with a backlog behind it, while another consumer
/// has room: each ack makes the core walk the queue for that other consumer, and the walk
/// stops after `SCAN_LIMIT` messages it cannot take instead of going through the whole
/// backlog under the core's lock (which every connection waits for).
#[tokio::test]
async fn a_stuck_group_costs_each_ack_bounded_work() {
    const BACKLOG: usize = 3 * super::core::SCAN_LIMIT;
    let f = fixture(BrokerOptions::default()).await;
    let (owner, mut owner_rx) = consumer_on_q(&f, 1);
    let (_other, mut other_rx) = consumer_on_q(&f, 100);
    let (producer, _) = f.broker.open_session(None);
    let mut confirmations = Vec::new();
    for i in 0..BACKLOG {
        let sent = producer.send(&queue("q"), grouped(&i.to_string(), "g", None), None);
        confirmations.push(sent.unwrap());
    }
    for confirmation in confirmations {
        confirmation.await.unwrap();
    }
    let _ = producer.next_tag(); // the last dispatch is over (see send_settled)
    let first = next(&mut owner_rx).await;
    assert_eq!(body(&first), "0");
    assert!(take_all(&mut other_rx).is_empty(), "the group split");
    let before = f.broker.stats().passed_over;
    owner
        .ack(first.tag, AckScope::Single, None)
        .unwrap()
        .await
        .unwrap();
    assert_eq!(body(&next(&mut owner_rx).await), "1");
    let walked = f.broker.stats().passed_over - before;
    assert!(
        walked <= super::core::SCAN_LIMIT as u64,
        "one ack walked past {walked} messages of a {BACKLOG}-message backlog"
    );
}

/// While a queue has an exclusive consumer, only its window counts: with it full, a
/// selective dispatch (the queue has message groups) has nobody to walk the backlog for, even
/// though the other consumers have room, and the sweep has nothing to go on with.
#[tokio::test]
async fn a_full_exclusive_consumer_makes_no_walk_for_the_others() {
    const BACKLOG: usize = 3 * super::core::SCAN_LIMIT;
    let f = fixture_swept_by_hand().await;
    let (exclusive, mut exclusive_rx) = f.broker.open_session(None);
    subscribe_exclusive(&exclusive, "s", 1);
    let (_plain, mut plain_rx) = consumer_on_q(&f, 100);
    let (producer, _) = f.broker.open_session(None);
    for i in 0..BACKLOG {
        let group = if i % 2 == 0 { "a" } else { "b" };
        producer
            .send(&queue("q"), grouped(&i.to_string(), group, None), None)
            .unwrap();
    }
    let _ = producer.next_tag();
    let first = next(&mut exclusive_rx).await;
    assert_eq!(body(&first), "0");
    let before = f.broker.stats().passed_over;
    exclusive
        .ack(first.tag, AckScope::Single, None)
        .unwrap()
        .await
        .unwrap();
    assert_eq!(body(&next(&mut exclusive_rx).await), "1");
    super::lock(&f.broker.shared).continue_scans();
    let walked = f.broker.stats().passed_over - before;
    assert_eq!(
        walked, 0,
        "walked past messages only the exclusive consumer may take"
    );
    assert!(take_all(&mut plain_rx).is_empty());
}

/// A new session with subscription `s` on queue `q` of consumer priority `priority`,
/// exclusive or not.
fn prioritized_on_q(
    f: &Fixture,
    prefetch: u32,
    priority: i8,
    exclusive: bool,
) -> (Session, UnboundedReceiver<Delivery>) {
    let (session, rx) = f.broker.open_session(None);
    session
        .subscribe(SubscribeRequest {
            priority,
            exclusive,
            ..request("s", queue("q"), prefetch)
        })
        .unwrap();
    (session, rx)
}

#[tokio::test]
async fn higher_priority_consumers_are_served_first_while_they_have_room() {
    let f = fixture(BrokerOptions::default()).await;
    // The low one subscribes first: without priorities it would be served first.
    let (_low, mut low_rx) = prioritized_on_q(&f, 10, 0, false);
    let (high_a, mut a_rx) = prioritized_on_q(&f, 2, 10, false);
    let (_high_b, mut b_rx) = prioritized_on_q(&f, 2, 10, false);
    let (_mid, mut mid_rx) = prioritized_on_q(&f, 1, 5, false);
    let (producer, _) = f.broker.open_session(None);
    for i in 0..8 {
        send_to_q(&producer, persistent(&i.to_string())).await;
    }
    // Round-robin among the highest while they have room, then the next priority, then the
    // lowest.
    let a = take_all(&mut a_rx);
    assert_eq!(bodies(&a), ["0", "2"]);
    assert_eq!(bodies(&take_all(&mut b_rx)), ["1", "3"]);
    assert_eq!(bodies(&take_all(&mut mid_rx)), ["4"]);
    assert_eq!(bodies(&take_all(&mut low_rx)), ["5", "6", "7"]);
    // Room made at a higher priority is filled there first, though the low one has room.
    high_a
        .ack(a[0].tag, AckScope::Single, None)
        .unwrap()
        .await
        .unwrap();
    send_to_q(&producer, persistent("8")).await;
    send_to_q(&producer, persistent("9")).await;
    assert_eq!(bodies(&take_all(&mut a_rx)), ["8"]);
    assert_eq!(bodies(&take_all(&mut low_rx)), ["9"]);
    assert!(take_all(&mut b_rx).is_empty() && take_all(&mut mid_rx).is_empty());
    // A consumer leaving hands its messages to the highest with room: none but the lowest.
    drop(high_a);
    assert_eq!(bodies(&take_all(&mut low_rx)), ["2", "8"]);
}

#[tokio::test]
async fn a_higher_priority_exclusive_consumer_takes_over_and_the_next_highest_follows() {
    let f = fixture(BrokerOptions::default()).await;
    let (_first, mut first_rx) = prioritized_on_q(&f, 10, 0, true);
    let (producer, _) = f.broker.open_session(None);
    send_to_q(&producer, persistent("0")).await;
    assert_eq!(bodies(&take_all(&mut first_rx)), ["0"]);
    // A higher priority takes the queue over; an equal one later does not, a lower neither.
    let (high, mut high_rx) = prioritized_on_q(&f, 10, 5, true);
    let (_equal, mut equal_rx) = prioritized_on_q(&f, 10, 5, true);
    let (_middle, mut middle_rx) = prioritized_on_q(&f, 10, 3, true);
    let (_plain, mut plain_rx) = prioritized_on_q(&f, 10, 9, false);
    send_to_q(&producer, persistent("1")).await;
    assert_eq!(bodies(&take_all(&mut high_rx)), ["1"]);
    // When it leaves, the exclusive consumer of highest priority (the earliest among equals)
    // takes over, with its unacknowledged message.
    drop(high);
    send_to_q(&producer, persistent("2")).await;
    assert_eq!(bodies(&take_all(&mut equal_rx)), ["1", "2"]);
    assert!(take_all(&mut first_rx).is_empty() && take_all(&mut middle_rx).is_empty());
    assert!(take_all(&mut plain_rx).is_empty());
    // 127, the highest, takes over even from an equal one.
    let (_top, mut top_rx) = prioritized_on_q(&f, 10, 127, true);
    let (_top_too, mut top_too_rx) = prioritized_on_q(&f, 10, 127, true);
    send_to_q(&producer, persistent("3")).await;
    assert!(take_all(&mut top_rx).is_empty());
    assert_eq!(bodies(&take_all(&mut top_too_rx)), ["3"]);
}
