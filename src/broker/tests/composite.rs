//! Composite destinations: sends and subscriptions on several members at once.

use super::*;

/// A composite send reaches each distinct member once (a member named twice gets one copy),
/// queues and topics mixed; each copy names its own member as its destination.
#[tokio::test]
async fn a_composite_send_reaches_each_member_once() {
    let f = fixture(BrokerOptions::default()).await;
    let (listener, mut topic_rx) = f.broker.open_session(None);
    subscribe(&listener, "t", topic("t"), 10);
    let (producer, _) = f.broker.open_session(None);
    let members = [queue("a"), topic("t"), queue("b"), queue("a")];
    send_to_each(&producer, &members, persistent("m")).await;
    assert_eq!(f.broker.queue_depth("queue://a"), 1);
    assert_eq!(f.broker.queue_depth("queue://b"), 1);
    let d = next(&mut topic_rx).await;
    assert_eq!(
        (body(&d), d.message.destination.as_str()),
        ("m", "topic://t")
    );
    let (c, mut rx) = f.broker.open_session(None);
    subscribe(&c, "a", queue("a"), 10);
    subscribe(&c, "b", queue("b"), 10);
    let mut got: Vec<(String, String)> = Vec::new();
    for _ in 0..2 {
        let d = next(&mut rx).await;
        got.push((d.subscription.clone(), d.message.destination.clone()));
    }
    got.sort();
    assert_eq!(
        got,
        [
            ("a".to_string(), "queue://a".to_string()),
            ("b".to_string(), "queue://b".to_string())
        ]
    );
    assert!(take_all(&mut topic_rx).is_empty());
}

/// The copies of a persistent composite send are stored in one record: after a crash that tore
/// that record, no member has the message; an earlier composite send is in every member.
#[tokio::test]
async fn a_composite_send_is_kept_in_all_members_or_none_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let members = [queue("a"), queue("b")];
    {
        let broker = Broker::start_for_tests(dir.path(), BrokerOptions::default());
        let (s, _) = broker.open_session(None);
        send_to_each(&s, &members, persistent("kept")).await;
        send_to_each(&s, &members, persistent("torn")).await;
    }
    let segment = dir.path().join("0000000000000000.log");
    let len = crate::store::journal::data_len(&segment);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let broker = Broker::start_for_tests(dir.path(), BrokerOptions::default());
    let (c, mut rx) = broker.open_session(None);
    subscribe(&c, "a", queue("a"), 10);
    subscribe(&c, "b", queue("b"), 10);
    let got = [next(&mut rx).await, next(&mut rx).await];
    assert_eq!(bodies(&got), ["kept", "kept"]);
    assert_eq!(broker.queue_depth("queue://a"), 0);
    assert_eq!(broker.queue_depth("queue://b"), 0);
    assert!(take_all(&mut rx).is_empty());
}

/// A failover re-send of a composite send (same producer sequence) is confirmed again but
/// stored in no member twice, whether sent alone or in a transaction.
#[tokio::test]
async fn a_resent_composite_send_is_stored_once_in_each_member() {
    let f = fixture(BrokerOptions::default()).await;
    let (s, _) = f.broker.open_session(None);
    let members = [queue("a"), queue("b")];
    let mut m = persistent("once");
    m.message_id = Some("ID:producer-1:7".into());
    send_to_each(&s, &members, m.clone()).await;
    send_to_each(&s, &members, m.clone()).await;
    s.begin("tx").unwrap();
    s.send_to_each(&members, m, Some("tx")).unwrap();
    let mut next_one = persistent("next");
    next_one.message_id = Some("ID:producer-1:8".into());
    s.send_to_each(&members, next_one.clone(), Some("tx"))
        .unwrap();
    s.send_to_each(&members, next_one, Some("tx")).unwrap();
    s.commit("tx").unwrap().await.unwrap();
    assert_eq!(f.broker.queue_depth("queue://a"), 2);
    assert_eq!(f.broker.queue_depth("queue://b"), 2);
    assert_eq!(f.broker.stats().duplicates_dropped, 3);
}

/// In a transaction, a composite send reaches its members at commit, and none at rollback.
#[tokio::test]
async fn a_transacted_composite_send_commits_and_rolls_back_with_the_transaction() {
    let f = fixture(BrokerOptions::default()).await;
    let (s, _) = f.broker.open_session(None);
    let members = [queue("a"), queue("b")];
    s.begin("t1").unwrap();
    s.send_to_each(&members, persistent("rolled back"), Some("t1"))
        .unwrap();
    s.abort("t1").unwrap();
    s.begin("t2").unwrap();
    s.send_to_each(&members, persistent("committed"), Some("t2"))
        .unwrap();
    assert_eq!(f.broker.queue_depth("queue://a"), 0);
    s.commit("t2").unwrap().await.unwrap();
    let (c, mut rx) = f.broker.open_session(None);
    subscribe(&c, "a", queue("a"), 10);
    subscribe(&c, "b", queue("b"), 10);
    let got = [next(&mut rx).await, next(&mut rx).await];
    assert_eq!(bodies(&got), ["committed", "committed"]);
    assert!(take_all(&mut rx).is_empty());
}

/// A wildcard member is refused by name, and the other members get nothing.
#[tokio::test]
async fn a_composite_send_with_a_wildcard_member_is_refused_whole() {
    let f = fixture(BrokerOptions::default()).await;
    let (s, _) = f.broker.open_session(None);
    s.begin("tx").unwrap();
    for transaction in [None, Some("tx")] {
        let error = s
            .send_to_each(&[queue("a"), topic("logs.>")], persistent("m"), transaction)
            .unwrap_err();
        assert!(
            matches!(&error, BrokerError::Unsupported(m) if m.contains("topic://logs.>")),
            "{error}"
        );
    }
    s.commit("tx").unwrap().await.unwrap();
    assert_eq!(f.broker.queue_depth("queue://a"), 0);
}

#[test]
fn composite_names_split_into_trimmed_members_and_empty_members_are_refused() {
    let parse = |m: &str| match m.strip_prefix("bad") {
        Some(_) => Err(format!("member '{m}' is bad")),
        None => Ok(queue(m)),
    };
    assert_eq!(composite_members("orders", parse).unwrap(), None);
    assert_eq!(
        composite_members("a, b ,c", parse).unwrap(),
        Some(vec![queue("a"), queue("b"), queue("c")])
    );
    assert_eq!(
        composite_members("a,bad-b", parse).unwrap_err(),
        BrokerError::InvalidComposite("a,bad-b".into(), "member 'bad-b' is bad".into())
    );
    for bad in ["a,,b", "a,", ",a", "a, ,b"] {
        let error = composite_members(bad, parse).unwrap_err();
        assert!(
            matches!(&error, BrokerError::InvalidComposite(name, why) if name == bad && why.contains("empty member")),
            "{bad}: {error}"
        );
    }
}

/// A subscription on a composite destination receives from every member, each delivery naming
/// its member; a cumulative ack covers the earlier deliveries of all members; unsubscribing
/// returns what is unacknowledged to each member.
#[tokio::test]
async fn a_composite_subscription_receives_from_every_member() {
    let f = fixture(BrokerOptions::default()).await;
    let (producer, _) = f.broker.open_session(None);
    send_settled(&producer, &queue("a"), persistent("a1")).await;
    send_settled(&producer, &queue("b"), persistent("b1")).await;
    let (c, mut rx) = f.broker.open_session(None);
    c.subscribe_to_each(
        request("s", queue("unused"), 10),
        &[queue("a"), topic("t"), queue("b")],
    )
    .unwrap()
    .await
    .unwrap();
    send_settled(&producer, &topic("t"), persistent("t1")).await;
    send_settled(&producer, &queue("a"), persistent("a2")).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        let d = next(&mut rx).await;
        assert_eq!(d.subscription, "s");
        assert_eq!(d.destination.canonical(), d.message.destination);
        got.push(d);
    }
    let mut seen: Vec<(&str, &str)> = got
        .iter()
        .map(|d| (body(d), d.message.destination.as_str()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("a1", "queue://a"),
            ("a2", "queue://a"),
            ("b1", "queue://b"),
            ("t1", "topic://t")
        ]
    );
    // Acknowledging the third delivery cumulatively leaves only the fourth unacknowledged.
    c.ack(got[2].tag, AckScope::Cumulative, None)
        .unwrap()
        .await
        .unwrap();
    c.unsubscribe("s").unwrap().await.unwrap();
    let left = f.broker.queue_depth("queue://a") + f.broker.queue_depth("queue://b");
    let last_on_a_queue = got[3].message.destination.starts_with("queue://");
    assert_eq!(left, usize::from(last_on_a_queue));
    assert!(c
        .subscribe_to_each(request("s", queue("unused"), 10), &[queue("a")])
        .is_ok());
}

/// A pull (prefetch 0) of a composite subscription is answered by one message, from whichever
/// member has one.
#[tokio::test]
async fn a_pull_of_a_composite_subscription_brings_one_message() {
    let f = fixture(BrokerOptions::default()).await;
    let (producer, _) = f.broker.open_session(None);
    send_settled(&producer, &queue("a"), persistent("a1")).await;
    send_settled(&producer, &queue("b"), persistent("b1")).await;
    let (c, mut rx) = f.broker.open_session(None);
    c.subscribe_to_each(request("s", queue("unused"), 0), &[queue("a"), queue("b")])
        .unwrap();
    assert!(take_all(&mut rx).is_empty());
    c.pull("s").unwrap();
    let first = next(&mut rx).await;
    assert!(take_all(&mut rx).is_empty(), "one pull, one message");
    assert!(!c.cancel_pull("s"), "the pull was answered");
    c.ack(first.tag, AckScope::Single, None).unwrap();
    assert!(take_all(&mut rx).is_empty(), "no pull, no message");
    c.pull("s").unwrap();
    let second = next(&mut rx).await;
    let mut both = [body(&first), body(&second)];
    both.sort();
    assert_eq!(both, ["a1", "b1"]);
}

/// A composite subscription whose topic members overlap (`news.>` and `news.*`, or a topic and
/// a pattern matching it) gets each message once, as in ActiveMQ, where the one subscription is
/// added once to each destination any member matches.
#[tokio::test]
async fn a_composite_subscription_with_overlapping_topic_members_gets_each_message_once() {
    let f = fixture(BrokerOptions::default()).await;
    let (c, mut rx) = f.broker.open_session(None);
    c.subscribe_to_each(
        request("s", topic("unused"), 10),
        &[topic("news.>"), topic("news.*"), topic("news.eu")],
    )
    .unwrap()
    .await
    .unwrap();
    let (producer, _) = f.broker.open_session(None);
    for (name, body) in [("news.eu", "eu"), ("news.us", "us"), ("news.eu.fr", "fr")] {
        send_settled(&producer, &topic(name), non_persistent(body)).await;
    }
    assert_eq!(bodies(&take_all(&mut rx)), ["eu", "us", "fr"]);
}

/// A composite destination names at most [`MAX_COMPOSITE_MEMBERS`] destinations: more are
/// refused at once, naming the limit, as a name (without parsing every member), as a send and
/// as a subscription (which would otherwise make a consumer per member), and the work is
/// bounded by the count (no pairwise comparison of a huge member list under the core's lock).
#[tokio::test]
async fn a_composite_destination_with_too_many_members_is_refused_at_once() {
    let f = fixture(BrokerOptions::default()).await;
    let (s, mut rx) = f.broker.open_session(None);
    let names: Vec<String> = (0..150_000).map(|i| format!("q{i}")).collect();
    let many: Vec<Destination> = names.iter().map(|n| queue(n)).collect();
    let limit = MAX_COMPOSITE_MEMBERS.to_string();
    let started = std::time::Instant::now();
    let error = s.send_to_each(&many, persistent("m"), None).unwrap_err();
    assert!(error.to_string().contains(&limit), "{error}");
    s.begin("tx").unwrap();
    let error = s
        .send_to_each(&many, persistent("m"), Some("tx"))
        .unwrap_err();
    assert!(error.to_string().contains(&limit), "{error}");
    let error = s
        .subscribe_to_each(request("s", queue("unused"), 10), &many)
        .unwrap_err();
    assert!(error.to_string().contains(&limit), "{error}");
    let mut parsed = 0;
    let error = composite_members(&names.join(","), |m| {
        parsed += 1;
        Ok(queue(m))
    })
    .unwrap_err();
    assert!(
        matches!(&error, BrokerError::InvalidComposite(name, why) if why.contains(&limit) && name.len() < 200),
        "{error}"
    );
    assert_eq!(parsed, 0, "refused before parsing members");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refusing took {:?}",
        started.elapsed()
    );
    // Just as many members are taken, by a subscription too (its one window fits them all).
    let most = &many[..MAX_COMPOSITE_MEMBERS];
    let window = MAX_COMPOSITE_MEMBERS as u32;
    s.subscribe_to_each(request("s", queue("unused"), window), most)
        .unwrap();
    let (producer, _) = f.broker.open_session(None);
    send_to_each(&producer, most, persistent("m")).await;
    let _ = s.next_tag();
    assert_eq!(take_all(&mut rx).len(), MAX_COMPOSITE_MEMBERS);
    assert_eq!(f.broker.queue_depth("queue://q0"), 0);
}

/// A composite subscription has one prefetch window across its members, as in ActiveMQ (one
/// subscription, one list of dispatched messages, whichever destination they come from): with
/// prefetch 1 it holds one unacknowledged message, and the other members' messages stay for
/// competing consumers; an acknowledgement through any member lets the next one through.
#[tokio::test]
async fn a_composite_subscription_shares_one_prefetch_window_across_its_members() {
    let f = fixture(BrokerOptions::default()).await;
    let (producer, _) = f.broker.open_session(None);
    for member in ["a", "b", "c"] {
        send_settled(&producer, &queue(member), persistent(member)).await;
    }
    send_settled(&producer, &topic("t"), non_persistent("t")).await;
    let (c, mut rx) = f.broker.open_session(None);
    c.subscribe_to_each(
        request("s", queue("unused"), 1),
        &[queue("a"), queue("b"), topic("t"), queue("c")],
    )
    .unwrap()
    .await
    .unwrap();
    let _ = c.next_tag();
    let mut got = take_all(&mut rx);
    assert_eq!(bodies(&got), ["a"], "one window of 1");
    send_settled(&producer, &topic("t"), non_persistent("t1")).await;
    assert!(take_all(&mut rx).is_empty(), "the topic member waits too");
    for _ in 0..3 {
        let last = got.pop().unwrap();
        c.ack(last.tag, AckScope::Single, None)
            .unwrap()
            .await
            .unwrap();
        let _ = c.next_tag();
        got = take_all(&mut rx);
        assert_eq!(got.len(), 1, "{:?}", bodies(&got));
    }
    assert_eq!(
        f.broker.queue_depth("queue://a")
            + f.broker.queue_depth("queue://b")
            + f.broker.queue_depth("queue://c"),
        0
    );
}

/// A composite subscription with a wildcard queue member, or a durable one, is refused whole:
/// no member keeps a consumer.
#[tokio::test]
async fn a_bad_composite_subscription_is_refused_whole() {
    let f = fixture(BrokerOptions::default()).await;
    let (c, mut rx) = f.broker.open_session(Some("client".into()));
    let error = c
        .subscribe_to_each(
            request("s", queue("unused"), 10),
            &[queue("a"), queue("orders.>")],
        )
        .unwrap_err();
    assert!(
        matches!(&error, BrokerError::Unsupported(m) if m.contains("orders.>")),
        "{error}"
    );
    let mut durable = request("d", queue("unused"), 10);
    durable.durable_name = Some("sub".into());
    let error = c
        .subscribe_to_each(durable, &[topic("t"), topic("u")])
        .unwrap_err();
    assert!(
        matches!(&error, BrokerError::Unsupported(m) if m.contains("durable")),
        "{error}"
    );
    let (producer, _) = f.broker.open_session(None);
    send_settled(&producer, &queue("a"), persistent("a1")).await;
    assert_eq!(f.broker.queue_depth("queue://a"), 1);
    assert!(take_all(&mut rx).is_empty());
    assert!(c.unsubscribe("s").is_err());
}

/// A persistent composite send whose copies would not fit one journal record is refused,
/// naming the cause; the store keeps working and the message's producer sequence is not taken
/// as stored (sent to fewer members it is stored).
#[tokio::test]
async fn a_composite_send_too_large_for_one_record_is_refused_and_the_store_carries_on() {
    let f = fixture_with_memory_limit(u64::MAX).await;
    let (s, _) = f.broker.open_session(None);
    let members: Vec<Destination> = (0..260).map(|i| queue(&format!("q{i}"))).collect();
    let mut big = persistent("");
    big.body = Bytes::from(vec![b'x'; 1 << 20]);
    big.message_id = Some("ID:producer-1:1".into());
    let error = s.send_to_each(&members, big.clone(), None).unwrap_err();
    assert!(
        matches!(&error, BrokerError::InvalidMessage(m) if m.contains("260 copies") && m.contains("fewer destinations")),
        "{error}"
    );
    send_to_each(&s, &members[..2], big).await;
    assert_eq!(f.broker.queue_depth("queue://q0"), 1);
    assert_eq!(f.broker.queue_depth("queue://q1"), 1);
    assert_eq!(f.broker.store_failure(), None);
}

/// A composite subscription's consumers (one per member) are one dispatched list, as in
/// ActiveMQ: a closing session's last delivered message, on one member, marks the deliveries
/// of every member up to it as seen.
#[tokio::test]
async fn a_closing_sessions_last_delivery_counts_for_every_member_of_a_composite() {
    let f = fixture(BrokerOptions::default()).await;
    let (producer, _) = f.broker.open_session(None);
    send_settled(&producer, &queue("b"), persistent("b1")).await;
    let (c, mut rx) = f.broker.open_session(None);
    c.subscribe_to_each(request("s", queue("unused"), 10), &[queue("a"), queue("b")])
        .unwrap();
    let b1 = next(&mut rx).await;
    assert_eq!(body(&b1), "b1");
    send_settled(&producer, &queue("a"), persistent("a1")).await;
    let a1 = next(&mut rx).await;
    c.close_consumer("s", Seen::LastOf(a1.tag)).unwrap();
    let (other, mut other_rx) = f.broker.open_session(None);
    subscribe(&other, "o", queue("b"), 10);
    let again = next(&mut other_rx).await;
    assert_eq!(body(&again), "b1");
    assert!(again.redelivery_count > 0, "b1 was seen: {again:?}");
}
