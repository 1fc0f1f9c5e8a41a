//! Selectors, and the bounded selective dispatch walks that the periodic sweep continues.

use super::*;

#[tokio::test]
async fn selectors_route_each_message_to_a_consumer_that_accepts_it() {
    let f = fixture(BrokerOptions::default()).await;
    let subscribe_with = |s: &Session, selector: &str| {
        s.subscribe(SubscribeRequest {
            selector: Some(selector.into()),
            ..request("s", queue("q"), 100)
        })
        .unwrap();
    };
    let (red, mut red_rx) = f.broker.open_session(None);
    subscribe_with(&red, "color = 'red'");
    let (blue, mut blue_rx) = f.broker.open_session(None);
    subscribe_with(&blue, "color = 'blue'");
    let (producer, _) = f.broker.open_session(None);
    // A green message nobody accepts must not hold up the ones behind it.
    for (color, body) in [
        ("green", "g1"),
        ("red", "r1"),
        ("blue", "b1"),
        ("red", "r2"),
    ] {
        producer
            .send(&queue("q"), colored(color, body), None)
            .unwrap()
            .await
            .unwrap();
    }
    assert_eq!(body(&next(&mut red_rx).await), "r1");
    assert_eq!(body(&next(&mut red_rx).await), "r2");
    assert_eq!(body(&next(&mut blue_rx).await), "b1");
    assert_eq!(f.broker.queue_depth("queue://q"), 1, "the green one waits");
    let (any, _) = f.broker.open_session(None);
    assert!(matches!(
        any.subscribe(SubscribeRequest {
            selector: Some("color = ".into()),
            ..request("bad", queue("q"), 1)
        }),
        Err(BrokerError::InvalidSelector(_))
    ));
}

#[tokio::test]
async fn topic_and_durable_subscribers_get_only_what_their_selector_accepts() {
    let f = fixture(BrokerOptions::default()).await;
    let topic = Destination::Topic("t".into());
    let (live, mut live_rx) = f.broker.open_session(None);
    live.subscribe(SubscribeRequest {
        selector: Some("color = 'red'".into()),
        ..request("s", topic.clone(), 100)
    })
    .unwrap();
    let (d, _) = f.broker.open_session(Some("c1".into()));
    let durable = SubscribeRequest {
        durable_name: Some("only-blue".into()),
        selector: Some("color = 'blue'".into()),
        ..request("d", topic.clone(), 100)
    };
    d.subscribe(durable.clone()).unwrap().await.unwrap();
    drop(d);
    let (producer, _) = f.broker.open_session(None);
    for (color, b) in [("red", "r"), ("blue", "b")] {
        producer
            .send(&topic, colored(color, b), None)
            .unwrap()
            .await
            .unwrap();
    }
    assert_eq!(body(&next(&mut live_rx).await), "r");
    let (d, mut d_rx) = f.broker.open_session(Some("c1".into()));
    d.subscribe(durable).unwrap();
    assert_eq!(body(&next(&mut d_rx).await), "b");
    assert!(live_rx.try_recv().is_err() && d_rx.try_recv().is_err());
}

/// A consumer whose selector matches only a message deep in a backlog nobody else takes
/// still gets it: the dispatch stops at `SCAN_LIMIT`, and the periodic sweep walks on.
#[tokio::test]
async fn a_selector_match_deep_in_a_backlog_is_found_by_the_sweep() {
    let f = fixture(BrokerOptions {
        expiry_sweep: Duration::from_millis(20),
        ..BrokerOptions::default()
    })
    .await;
    let (producer, _) = f.broker.open_session(None);
    let mut confirmations = Vec::new();
    for i in 0..3 * super::core::SCAN_LIMIT {
        let sent = producer.send(&queue("q"), colored("green", &format!("g{i}")), None);
        confirmations.push(sent.unwrap());
    }
    confirmations.push(
        producer
            .send(&queue("q"), colored("red", "r"), None)
            .unwrap(),
    );
    for confirmation in confirmations {
        confirmation.await.unwrap();
    }
    let (red, mut red_rx) = f.broker.open_session(None);
    red.subscribe(SubscribeRequest {
        selector: Some("color = 'red'".into()),
        ..request("s", queue("q"), 10)
    })
    .unwrap();
    assert_eq!(body(&next(&mut red_rx).await), "r");
}

/// A consumer's selector matches messages the sweep passed over while its window was full,
/// then the sweep walked on past them to the end of the backlog: once the consumer has room
/// again (its ack dispatches from the head, which stops at `SCAN_LIMIT` before them), the
/// sweep must walk from the head once more instead of leaving them unoffered for ever.
#[tokio::test]
async fn a_match_the_sweep_passed_while_its_consumer_was_full_is_offered_again() {
    const GREEN_BEFORE: usize = super::core::SCAN_LIMIT + 500;
    const GREEN_AFTER: usize = 60_000;
    let f = fixture_swept_by_hand().await;
    let (producer, _) = f.broker.open_session(None);
    let green = |i: usize| colored_transient("green", &format!("g{i}"));
    for i in 0..GREEN_BEFORE {
        producer.send(&queue("q"), green(i), None).unwrap();
    }
    for i in 0..3 {
        let red = colored_transient("red", &format!("r{i}"));
        producer.send(&queue("q"), red, None).unwrap();
    }
    for i in 0..GREEN_AFTER {
        producer
            .send(&queue("q"), green(GREEN_BEFORE + i), None)
            .unwrap();
    }
    let with_selector = |session: &Session, selector: &str, prefetch: u32| {
        session
            .subscribe(SubscribeRequest {
                selector: Some(selector.into()),
                ..request("s", queue("q"), prefetch)
            })
            .unwrap();
    };
    // A consumer with room whose selector matches nothing keeps every walk going.
    let (blue, mut blue_rx) = f.broker.open_session(None);
    with_selector(&blue, "color = 'blue'", 10);
    let (red, mut red_rx) = f.broker.open_session(None);
    with_selector(&red, "color = 'red'", 1);
    assert!(take_all(&mut red_rx).is_empty(), "beyond the scan limit");
    let sweep = || super::lock(&f.broker.shared).continue_scans();
    sweep(); // finds r0, passes r1 and r2 (the window is full) and stops far beyond
    let r0 = next(&mut red_rx).await;
    assert_eq!(body(&r0), "r0");
    red.ack(r0.tag, AckScope::Single, None)
        .unwrap()
        .await
        .unwrap();
    for _ in 0..3 {
        sweep();
    }
    let r1 = take_all(&mut red_rx);
    assert_eq!(bodies(&r1), ["r1"], "r1 was never offered again");
    assert!(take_all(&mut blue_rx).is_empty());
}

/// Many selective consumers on a deep backlog none of them takes: each send, and each sweep,
/// asks a bounded number of selector questions (so a connection subscribing one selector
/// after another cannot hold the core's lock for seconds), and a match deep in the backlog
/// is still found by the sweeps that follow.
#[tokio::test]
async fn many_selective_consumers_on_a_deep_backlog_cost_bounded_work() {
    const CONSUMERS: usize = 100;
    const BACKLOG: usize = 3 * super::core::SCAN_LIMIT;
    let f = fixture_swept_by_hand().await;
    let (producer, _) = f.broker.open_session(None);
    let green = |i: usize| colored_transient("green", &format!("g{i}"));
    for i in 0..BACKLOG {
        producer.send(&queue("q"), green(i), None).unwrap();
    }
    let red = colored_transient("red", "r");
    producer.send(&queue("q"), red, None).unwrap();
    let mut sessions = Vec::new();
    for i in 0..CONSUMERS - 1 {
        let (session, rx) = f.broker.open_session(None);
        session
            .subscribe(SubscribeRequest {
                selector: Some(format!("color = 'blue{i}'")),
                ..request("s", queue("q"), 10)
            })
            .unwrap();
        sessions.push((session, rx));
    }
    let (red_session, mut red_rx) = f.broker.open_session(None);
    red_session
        .subscribe(SubscribeRequest {
            selector: Some("color = 'red'".into()),
            ..request("s", queue("q"), 10)
        })
        .unwrap();
    assert!(
        take_all(&mut red_rx).is_empty(),
        "beyond one dispatch's walk"
    );

    let passed_over = || f.broker.stats().passed_over;
    let before = passed_over();
    producer.send(&queue("q"), green(BACKLOG), None).unwrap();
    let walked = passed_over() - before;
    let most = super::core::SCAN_CHECKS / CONSUMERS + 1;
    assert!(
        walked <= most as u64,
        "one send walked past {walked} messages with {CONSUMERS} selective consumers \
         (at most {most} expected)"
    );

    let sweep = || super::lock(&f.broker.shared).continue_scans();
    let most = super::core::SWEEP_SCAN_CHECKS / CONSUMERS + 1;
    let mut sweeps = 0;
    let got = loop {
        let before = passed_over();
        sweep();
        sweeps += 1;
        let walked = passed_over() - before;
        assert!(
            walked <= most as u64,
            "one sweep walked past {walked} messages (at most {most} expected)"
        );
        let got = take_all(&mut red_rx);
        if !got.is_empty() || sweeps == 10 {
            break got;
        }
    };
    assert_eq!(bodies(&got), ["r"], "after {sweeps} sweeps");
    assert!(sessions.iter_mut().all(|(_, rx)| take_all(rx).is_empty()));
}
