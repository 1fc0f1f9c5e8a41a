//! noLocal: topic subscribers, queue consumers and durable subscriptions, by client connection.

use super::*;

/// A new session subscribed to `destination` as `s`, with noLocal.
fn no_local_on(
    f: &Fixture,
    client_id: Option<&str>,
    destination: Destination,
    durable_name: Option<&str>,
) -> (Session, UnboundedReceiver<Delivery>) {
    let (session, rx) = f.broker.open_session(client_id.map(str::to_string));
    session
        .subscribe(SubscribeRequest {
            no_local: true,
            durable_name: durable_name.map(str::to_string),
            ..request("s", destination, 10)
        })
        .unwrap();
    (session, rx)
}

#[tokio::test]
async fn a_no_local_topic_subscriber_gets_only_other_connections_messages() {
    let f = fixture(BrokerOptions::default()).await;
    let t = topic("news");
    let (own, mut own_rx) = no_local_on(&f, None, t.clone(), None);
    // Another subscription of the same connection without noLocal gets everything.
    subscribe(&own, "plain", t.clone(), 10);
    let (other, _) = f.broker.open_session(None);
    send_settled(&own, &t, non_persistent("mine")).await;
    own.begin("tx").unwrap();
    own.send(&t, non_persistent("mine in a transaction"), Some("tx"))
        .unwrap();
    own.commit("tx").unwrap().await.unwrap();
    send_settled(&other, &t, non_persistent("theirs")).await;
    let got: Vec<(String, String)> = take_all(&mut own_rx)
        .iter()
        .map(|d| (d.subscription.clone(), body(d).to_string()))
        .collect();
    let pair = |s: &str, b: &str| (s.to_string(), b.to_string());
    assert_eq!(
        got,
        [
            pair("plain", "mine"),
            pair("plain", "mine in a transaction"),
            pair("s", "theirs"),
            pair("plain", "theirs")
        ]
    );
}

#[tokio::test]
async fn a_no_local_queue_consumer_leaves_its_connections_messages_to_others() {
    let f = fixture(BrokerOptions::default()).await;
    let (own, mut own_rx) = no_local_on(&f, None, queue("q"), None);
    let (other, _) = f.broker.open_session(None);
    send_to_q(&own, persistent("mine")).await;
    send_to_q(&other, persistent("theirs")).await;
    assert_eq!(bodies(&take_all(&mut own_rx)), ["theirs"]);
    assert_eq!(f.broker.queue_depth("queue://q"), 1);
    let (_plain, mut plain_rx) = consumer_on_q(&f, 10);
    assert_eq!(bodies(&take_all(&mut plain_rx)), ["mine"]);
}

/// A queue whose only consumer is noLocal and whose backlog is all its own connection's: each
/// send costs bounded work (no walk through the whole backlog), nothing is lost, and the
/// messages go to another connection's consumer once there is one, also a message the noLocal
/// consumer's connection had delivered elsewhere and that came back (it keeps its origin).
#[tokio::test]
async fn a_no_local_consumer_alone_with_its_own_backlog_costs_each_send_bounded_work() {
    const BACKLOG: usize = 3 * super::core::SCAN_LIMIT;
    let f = fixture(BrokerOptions::default()).await;
    let (own, mut own_rx) = no_local_on(&f, None, queue("q"), None);
    let (other, mut other_rx) = f.broker.open_session(None);
    subscribe(&other, "plain", queue("q"), 1);
    send_to_q(&own, persistent("first")).await;
    let first = next(&mut other_rx).await;
    let mut confirmations = Vec::new();
    for i in 0..BACKLOG {
        confirmations.push(
            own.send(&queue("q"), persistent(&i.to_string()), None)
                .unwrap(),
        );
    }
    for confirmation in confirmations {
        confirmation.await.unwrap();
    }
    let _ = own.next_tag();
    // The plain consumer leaves: "first" comes back, still the noLocal connection's own.
    drop(other);
    drop(other_rx);
    let before = f.broker.stats().passed_over;
    send_to_q(&own, persistent("last")).await;
    let walked = f.broker.stats().passed_over - before;
    assert!(
        walked <= super::core::SCAN_LIMIT as u64,
        "one send walked past {walked} messages of a {BACKLOG}-message backlog"
    );
    assert!(take_all(&mut own_rx).is_empty());
    assert_eq!(f.broker.queue_depth("queue://q"), BACKLOG + 2);
    let (_plain, mut plain_rx) = consumer_on_q(&f, u32::MAX);
    let got = take_all(&mut plain_rx);
    assert_eq!(got.len(), BACKLOG + 2);
    assert_eq!(body(&got[0]), body(&first));
    assert_eq!(got[0].redelivery_count, 1);
}

/// noLocal is about the client connection when the protocol names it (an OpenWire connection
/// id, kept by a failover client): after a restart, the same connection's noLocal consumer is
/// still not given what it sent before (read back from the stored producer id), while another
/// connection's consumer is.
#[tokio::test]
async fn a_no_local_consumer_skips_its_connections_messages_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let connection = "ID:host-1-2-3:1";
    {
        let broker = Broker::start_for_tests(dir.path(), BrokerOptions::default());
        let (s, _) = broker.open_session(None);
        s.set_connection(connection);
        let mut m = persistent("mine");
        m.message_id = Some(format!("{connection}:1:1:1"));
        send_settled(&s, &queue("q"), m).await;
    }
    let broker = Broker::start_for_tests(dir.path(), BrokerOptions::default());
    let (s, mut rx) = broker.open_session(None);
    s.set_connection(connection);
    s.subscribe(SubscribeRequest {
        no_local: true,
        ..request("s", queue("q"), 10)
    })
    .unwrap();
    let _ = s.next_tag();
    assert!(take_all(&mut rx).is_empty(), "its own connection's message");
    assert_eq!(broker.queue_depth("queue://q"), 1);
    let (other, mut other_rx) = broker.open_session(None);
    subscribe(&other, "s", queue("q"), 10);
    assert_eq!(body(&next(&mut other_rx).await), "mine");
}

#[tokio::test]
async fn a_no_local_durable_subscriber_is_not_kept_its_last_connections_messages() {
    let f = fixture(BrokerOptions::default()).await;
    let t = topic("news");
    let (own, mut own_rx) = no_local_on(&f, Some("c"), t.clone(), Some("d"));
    let (other, _) = f.broker.open_session(None);
    send_settled(&own, &t, persistent("mine")).await;
    send_settled(&other, &t, persistent("theirs")).await;
    assert_eq!(bodies(&take_all(&mut own_rx)), ["theirs"]);
    // Inactive, it is still not kept what its connection sends (as in ActiveMQ).
    own.unsubscribe("s").unwrap();
    send_settled(&own, &t, persistent("mine while away")).await;
    send_settled(&other, &t, persistent("theirs while away")).await;
    drop(own);
    // Back on a new connection: "theirs", unacknowledged, comes back first.
    let (back, mut back_rx) = no_local_on(&f, Some("c"), t.clone(), Some("d"));
    assert_eq!(
        bodies(&take_all(&mut back_rx)),
        ["theirs", "theirs while away"]
    );
    // Now this connection's messages are its own, and only those.
    send_settled(&back, &t, persistent("mine again")).await;
    send_settled(&other, &t, persistent("theirs again")).await;
    assert_eq!(bodies(&take_all(&mut back_rx)), ["theirs again"]);
}

/// A durable subscription keeps its noLocal flag, in the journal: resubscribed with the other
/// value it starts afresh (what it held is dropped), as ActiveMQ does with a store that records
/// noLocal (KahaDB); resubscribed with the same value, after a restart too, it keeps its
/// messages.
#[tokio::test]
async fn a_durable_subscription_resubscribed_with_another_no_local_starts_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let t = topic("news");
    let durable = |no_local: bool| SubscribeRequest {
        no_local,
        durable_name: Some("sub".into()),
        ..request("d", t.clone(), 10)
    };
    {
        let broker = Broker::start_for_tests(dir.path(), BrokerOptions::default());
        let (other, _) = broker.open_session(None);
        let (s, mut rx) = broker.open_session(Some("c".into()));
        s.subscribe(durable(false)).unwrap().await.unwrap();
        send_settled(&other, &t, persistent("theirs, before noLocal")).await;
        assert_eq!(bodies(&take_all(&mut rx)), ["theirs, before noLocal"]);
        s.unsubscribe("d").unwrap();
        s.subscribe(durable(true)).unwrap().await.unwrap();
        assert!(take_all(&mut rx).is_empty(), "started afresh");
        assert_eq!(broker.queue_depth("durable://c:sub"), 0);
        send_settled(&other, &t, persistent("theirs, with noLocal")).await;
        assert_eq!(bodies(&take_all(&mut rx)), ["theirs, with noLocal"]);
        // Deactivated unacknowledged: kept for the subscription.
    }
    let broker = Broker::start_for_tests(dir.path(), BrokerOptions::default());
    let (s, mut rx) = broker.open_session(Some("c".into()));
    s.subscribe(durable(true)).unwrap().await.unwrap();
    assert_eq!(bodies(&take_all(&mut rx)), ["theirs, with noLocal"]);
}
