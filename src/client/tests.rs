//! The client against scripted fake servers: handshake, failover, replay, timeouts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::fake_broker::{message_frame, FakeConnection, FakeListener, MemoryBroker};
use super::*;
use crate::protocol::stomp::frame::Command;

/// Failover options that keep tests quick and deterministic.
const FAST: &str = "randomize=false&initialReconnectDelay=1&maxReconnectDelay=20";

/// A client-individual subscription to `destination`.
async fn subscribe_individually(client: &Client, destination: &str) -> Subscription {
    let options = SubscribeOptions {
        ack: AckMode::ClientIndividual,
        ..SubscribeOptions::default()
    };
    client.subscribe(destination, options).await.unwrap()
}

async fn connect(url: &str) -> Client {
    Client::connect(url, ClientOptions::default())
        .await
        .expect("connect")
}

#[tokio::test]
async fn connect_frame_carries_versions_host_heartbeat_and_credentials() {
    let server = FakeListener::bind().await;
    let url = server.url();
    let peer = tokio::spawn(async move {
        let mut connection = server.accept().await;
        let connect = connection.handshake().await;
        let disconnect = connection.expect(Command::Disconnect).await;
        connection.receipt(&disconnect).await;
        connect
    });
    let options = ClientOptions {
        login: Some("app".into()),
        passcode: Some("secret".into()),
        client_id: Some("orders-service".into()),
        ..ClientOptions::default()
    };
    let client = Client::connect(&url, options).await.unwrap();
    assert_eq!(
        client.connected_broker().map(|b| b.to_string()),
        Some(url.clone())
    );
    client.close().await.unwrap();
    let connect = peer.await.unwrap();
    assert_eq!(connect.get("accept-version"), Some("1.0,1.1,1.2"));
    assert_eq!(connect.get("host"), Some("127.0.0.1"));
    assert_eq!(connect.get("heart-beat"), Some("5000,5000"));
    assert_eq!(connect.get("login"), Some("app"));
    assert_eq!(connect.get("passcode"), Some("secret"));
    assert_eq!(connect.get("client-id"), Some("orders-service"));
    assert_eq!(client.connected_broker(), None);
    assert_eq!(
        client
            .send("queue://x", "late", SendOptions::default())
            .await,
        Err(ClientError::Closed)
    );
}

#[tokio::test]
async fn an_error_reply_to_connect_surfaces_the_broker_message() {
    let server = FakeListener::bind().await;
    let url = server.url();
    tokio::spawn(async move {
        server
            .accept()
            .await
            .refuse("User name [bob] or password is invalid.")
            .await;
    });
    let error = Client::connect(&url, ClientOptions::default())
        .await
        .unwrap_err();
    assert_eq!(
        error,
        ClientError::ConnectRefused {
            broker: url.clone(),
            message: "User name [bob] or password is invalid.".into()
        }
    );
    assert!(error.to_string().contains("password is invalid"), "{error}");
}

#[tokio::test]
async fn startup_gives_up_after_its_attempts_naming_the_urls() {
    let port = FakeListener::bind().await.port(); // closed again: connections are refused
    let url = format!("failover:(tcp://127.0.0.1:{port})?startupMaxReconnectAttempts=2&{FAST}");
    let error = Client::connect(&url, ClientOptions::default())
        .await
        .unwrap_err();
    let ClientError::GaveUp {
        passes,
        brokers,
        last_errors,
    } = &error
    else {
        panic!("expected GaveUp, got {error:?}");
    };
    assert_eq!(*passes, 2);
    assert_eq!(brokers, &format!("(tcp://127.0.0.1:{port})"));
    assert!(
        last_errors.starts_with(&format!("tcp://127.0.0.1:{port}: ")),
        "{last_errors}"
    );
    assert!(error.to_string().contains(&format!("127.0.0.1:{port}")));
}

#[tokio::test]
async fn a_slave_that_says_not_master_is_skipped_at_startup() {
    let slave = FakeListener::bind().await;
    let master = FakeListener::bind().await;
    let master_port = master.port();
    let url = format!("failover:({},{})?{FAST}", slave.url(), master.url());
    tokio::spawn(async move {
        slave
            .accept()
            .await
            .refuse("this node is not the master and confirms nothing: slave")
            .await;
    });
    let peer = tokio::spawn(async move {
        let mut connection = master.accept().await;
        connection.handshake().await;
        connection
    });
    let client = connect(&url).await;
    assert_eq!(client.connected_broker().unwrap().port, master_port);
    peer.await.unwrap().close().await;
}

/// The failover case the design is for: the broker dies with sends unconfirmed; they must reach
/// the next broker again, in order, with the same message-ids, after the subscription.
#[tokio::test]
async fn unconfirmed_sends_are_resent_with_the_same_message_ids_on_the_next_broker() {
    let first = FakeListener::bind().await;
    let second = FakeListener::bind().await;
    let url = format!("failover:({},{})?{FAST}", first.url(), second.url());
    let first_broker = tokio::spawn(async move {
        let mut connection = first.accept().await;
        connection.handshake().await;
        let subscribe = connection.expect(Command::Subscribe).await;
        connection.receipt(&subscribe).await;
        let mut sends = Vec::new();
        for _ in 0..5 {
            sends.push(connection.expect(Command::Send).await);
        }
        connection.receipt(&sends[0]).await;
        connection.receipt(&sends[1]).await;
        // Dies mid-stream; its listener goes with it, so the client must move on.
        connection.close().await;
        drop(first);
        (subscribe, sends)
    });

    let client = connect(&url).await;
    let mut orders = client
        .subscribe(
            "queue://orders",
            SubscribeOptions {
                prefetch: Some(10),
                ..SubscribeOptions::default()
            },
        )
        .await
        .unwrap();
    let handles: Vec<SendHandle> = (1..=5)
        .map(|i| client.send_nowait("queue://in", format!("m{i}"), SendOptions::persistent()))
        .collect();
    let (subscribe, sends) = first_broker.await.unwrap();

    let producer = client.producer_id().to_string();
    for (i, (send, handle)) in sends.iter().zip(&handles).enumerate() {
        let expected = format!("ID:{producer}:{}", i + 1);
        assert_eq!(send.get("message-id"), Some(expected.as_str()));
        assert_eq!(handle.message_id(), Some(expected.as_str()));
        assert_eq!(send.get("destination"), Some("/queue/in"));
        assert_eq!(send.get("persistent"), Some("true"));
    }
    assert_eq!(subscribe.get("destination"), Some("/queue/orders"));
    assert_eq!(subscribe.get("activemq.prefetchSize"), Some("10"));

    let mut connection = second.accept().await;
    connection.handshake().await;
    let resubscribe = connection.expect(Command::Subscribe).await;
    assert_eq!(resubscribe.get("id"), subscribe.get("id"));
    assert_eq!(resubscribe.get("destination"), Some("/queue/orders"));
    assert_eq!(resubscribe.get("activemq.prefetchSize"), Some("10"));
    let mut resent = Vec::new();
    for original in &sends[2..] {
        let again = connection.expect(Command::Send).await;
        assert_eq!(again.get("message-id"), original.get("message-id"));
        assert_eq!(again.body, original.body);
        resent.push(again);
    }
    for send in &resent {
        connection.receipt(send).await;
    }
    for handle in handles {
        handle.await.unwrap();
    }
    assert_eq!(client.reconnects(), 1);
    assert_eq!(client.connected_broker().unwrap().to_string(), second.url());

    // The renewed subscription delivers.
    connection
        .send(
            Frame::new(Command::Message)
                .header("subscription", orders.id())
                .header("destination", "/queue/orders")
                .header("message-id", "ID:other:1")
                .with_body("hello"),
        )
        .await;
    let message = orders.next().await.unwrap();
    assert_eq!(message.body().as_ref(), b"hello");
    assert_eq!(message.message_id(), "ID:other:1");
    message.ack().await.unwrap(); // auto-ack: nothing to send

    // A later send continues the sequence.
    let later = client.send_nowait("queue://in", "m6", SendOptions::default());
    let frame = connection.expect(Command::Send).await;
    assert_eq!(
        frame.get("message-id"),
        Some(format!("ID:{producer}:6").as_str())
    );
    assert_eq!(frame.get("persistent"), None);
    connection.receipt(&frame).await;
    later.await.unwrap();
}

#[tokio::test]
async fn a_send_waiting_for_a_broker_fails_after_the_timeout_with_the_last_error() {
    let first = FakeListener::bind().await;
    let second = FakeListener::bind().await;
    let url = format!(
        "failover:({},{})?{FAST}&timeout=300",
        first.url(),
        second.url()
    );
    let brokers = tokio::spawn(async move {
        let mut connection = first.accept().await;
        connection.handshake().await;
        connection.close().await;
        drop(first);
        loop {
            second.accept().await.refuse("no quorum").await;
        }
    });
    let client = connect(&url).await;
    let started = std::time::Instant::now();
    let error = client
        .send("queue://in", "x", SendOptions::persistent())
        .await
        .unwrap_err();
    brokers.abort();
    assert!(started.elapsed() >= Duration::from_millis(300));
    let ClientError::Unreachable {
        waited,
        last_errors,
        ..
    } = &error
    else {
        panic!("expected Unreachable, got {error:?}");
    };
    assert_eq!(*waited, Duration::from_millis(300));
    assert!(last_errors.contains("no quorum"), "{last_errors}");
    let text = error.to_string();
    assert!(text.starts_with("broker unreachable"), "{text}");
    assert!(text.contains("no quorum"), "{text}");
}

/// The failover `timeout` bounds the first connection too, as ActiveMQ's does: a client started
/// while every broker refuses (a cluster without a master) fails with the last error instead
/// of waiting for ever.
#[tokio::test]
async fn the_timeout_bounds_the_first_connection() {
    let server = FakeListener::bind().await;
    let url = format!("failover:({})?{FAST}&timeout=300", server.url());
    let broker = tokio::spawn(async move {
        loop {
            server
                .accept()
                .await
                .refuse("this node is not the master and confirms nothing: no quorum")
                .await;
        }
    });
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        Client::connect(&url, ClientOptions::default()),
    )
    .await;
    broker.abort();
    let Ok(Err(error)) = outcome else {
        panic!("expected the connect to fail after the timeout: {outcome:?}");
    };
    assert!(started.elapsed() >= Duration::from_millis(300));
    let ClientError::Unreachable { last_errors, .. } = &error else {
        panic!("expected Unreachable, got {error:?}");
    };
    assert!(last_errors.contains("no quorum"), "{last_errors}");
}

#[tokio::test]
async fn with_max_reconnect_attempts_zero_a_lost_connection_is_final() {
    let server = FakeListener::bind().await;
    let url = format!("failover:({})?maxReconnectAttempts=0&{FAST}", server.url());
    let peer = tokio::spawn(async move {
        let mut connection = server.accept().await;
        connection.handshake().await;
        let send = connection.expect(Command::Send).await;
        connection.close().await;
        send
    });
    let client = connect(&url).await;
    let error = client
        .send("queue://in", "x", SendOptions::default())
        .await
        .unwrap_err();
    peer.await.unwrap();
    assert!(
        matches!(error, ClientError::GaveUp { passes: 0, .. }),
        "{error:?}"
    );
    // Later requests get the same error.
    let again = client
        .send("queue://in", "y", SendOptions::default())
        .await
        .unwrap_err();
    assert_eq!(again, error);
}

#[tokio::test]
async fn an_error_naming_a_send_refuses_it_but_not_the_others() {
    let server = FakeListener::bind().await;
    let url = format!("failover:({})?{FAST}", server.url());
    let peer = tokio::spawn(async move {
        let mut connection = server.accept().await;
        connection.handshake().await;
        let bad = connection.expect(Command::Send).await;
        let good = connection.expect(Command::Send).await;
        connection
            .send(
                Frame::new(Command::Error)
                    .header("message", "header 'priority' must be 0..9, got '12'")
                    .header("receipt-id", bad.get("receipt").unwrap()),
            )
            .await;
        connection.close().await;
        // The refused send is not sent again; the other one is, and then the broker is gone
        // for a moment: it answers "not the master" by receipt, which must fail over again.
        let mut connection = server.accept().await;
        connection.handshake().await;
        let again = connection.expect(Command::Send).await;
        assert_eq!(again.get("message-id"), good.get("message-id"));
        connection
            .send(
                Frame::new(Command::Error)
                    .header(
                        "message",
                        "this node is not the master and confirms nothing",
                    )
                    .header("receipt-id", again.get("receipt").unwrap()),
            )
            .await;
        connection.close().await;
        let mut connection = server.accept().await;
        connection.handshake().await;
        let third = connection.expect(Command::Send).await;
        assert_eq!(third.get("message-id"), good.get("message-id"));
        connection.receipt(&third).await;
        connection
    });
    let client = connect(&url).await;
    let priority = SendOptions {
        headers: vec![("priority".into(), "12".into())],
        ..SendOptions::default()
    };
    let bad = client.send_nowait("queue://in", "bad", priority);
    let good = client.send_nowait("queue://in", "good", SendOptions::default());
    assert_eq!(
        bad.await,
        Err(ClientError::Rejected {
            message: "header 'priority' must be 0..9, got '12'".into()
        })
    );
    good.await.unwrap();
    assert_eq!(client.reconnects(), 2);
    peer.await.unwrap().close().await;
}

#[tokio::test]
async fn a_transaction_does_not_survive_failover() {
    let server = FakeListener::bind().await;
    let url = format!("failover:({})?{FAST}", server.url());
    let peer = tokio::spawn(async move {
        let mut connection = server.accept().await;
        connection.handshake().await;
        let begin = connection.expect(Command::Begin).await;
        connection.receipt(&begin).await;
        let send = connection.expect(Command::Send).await;
        assert_eq!(send.get("transaction"), begin.get("transaction"));
        connection.receipt(&send).await;
        connection.close().await;
        let mut connection = server.accept().await;
        connection.handshake().await;
        // Nothing of the transaction is replayed: the next frame is the new BEGIN.
        let begin = connection.expect(Command::Begin).await;
        connection.receipt(&begin).await;
        let commit = connection.expect(Command::Commit).await;
        assert_eq!(commit.get("transaction"), begin.get("transaction"));
        connection.receipt(&commit).await;
        connection
    });
    let client = connect(&url).await;
    let transaction = client.begin().await.unwrap();
    transaction
        .send("queue://in", "in tx", SendOptions::default())
        .await
        .unwrap();
    // Wait for the loss to be noticed: the send below must see a dead transaction.
    while client.reconnects() == 0 {
        tokio::task::yield_now().await;
    }
    let id = transaction.id().to_string();
    assert_eq!(
        transaction
            .send("queue://in", "after", SendOptions::default())
            .await,
        Err(ClientError::TransactionRolledBack(id.clone()))
    );
    assert_eq!(
        transaction.commit().await,
        Err(ClientError::TransactionRolledBack(id))
    );
    let transaction = client.begin().await.unwrap();
    transaction.commit().await.unwrap();
    peer.await.unwrap().close().await;
}

#[tokio::test]
async fn acks_for_messages_from_a_lost_connection_are_stale() {
    let server = FakeListener::bind().await;
    let url = format!("failover:({})?{FAST}", server.url());
    let peer = tokio::spawn(async move {
        let (mut connection, subscribe) = server.subscribed("client-individual").await;
        for n in 1..=2 {
            connection
                .send(
                    Frame::new(Command::Message)
                        .header("subscription", subscribe.get("id").unwrap())
                        .header("message-id", format!("ID:p:{n}"))
                        .header("ack", format!("d{n}"))
                        .with_body(format!("m{n}")),
                )
                .await;
        }
        let ack = connection.expect(Command::Ack).await;
        assert_eq!(ack.get("id"), Some("d1"));
        connection.receipt(&ack).await;
        connection.close().await;
        let mut connection = server.accept().await;
        connection.handshake().await;
        let again = connection.expect(Command::Subscribe).await;
        assert_eq!(again.get("id"), subscribe.get("id"));
        // The stale ACK is never written; the next frame is the DISCONNECT.
        let disconnect = connection.expect(Command::Disconnect).await;
        connection.receipt(&disconnect).await;
    });
    let client = connect(&url).await;
    let mut subscription = subscribe_individually(&client, "/queue/work").await;
    let first = subscription.next().await.unwrap();
    let second = subscription.next().await.unwrap();
    first.ack().await.unwrap();
    while client.reconnects() == 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(second.ack().await, Err(ClientError::StaleDelivery));
    client.close().await.unwrap();
    peer.await.unwrap();
    assert!(subscription.next().await.is_none());
    assert_eq!(subscription.close_reason(), ClientError::Closed);
}

#[tokio::test]
async fn silence_beyond_the_heartbeat_fails_over() {
    let server = FakeListener::bind().await;
    let url = format!("failover:({})?{FAST}", server.url());
    let peer = tokio::spawn(async move {
        let mut connection = server.accept().await;
        // Promise a heart-beat every 20 ms, then say nothing; expect ours every 30 ms.
        connection.handshake_with(&[("heart-beat", "20,30")]).await;
        let mut heartbeats = 0;
        while heartbeats < 2 {
            match connection.read_item().await {
                Some(crate::protocol::stomp::frame::Item::HeartBeat) => heartbeats += 1,
                Some(other) => panic!("unexpected {other:?}"),
                None => break,
            }
        }
        // Then the client gives up on us (closes) and comes back.
        while let Some(item) = connection.read_item().await {
            assert_eq!(item, crate::protocol::stomp::frame::Item::HeartBeat);
        }
        let mut connection = server.accept().await;
        connection.handshake().await;
        connection
    });
    let options = ClientOptions {
        heartbeat: HeartBeat {
            send: Duration::from_millis(10),
            receive: Duration::from_millis(50),
        },
        ..ClientOptions::default()
    };
    let client = Client::connect(&url, options).await.unwrap();
    let connection = peer.await.unwrap();
    while client.reconnects() == 0 {
        tokio::task::yield_now().await;
    }
    connection.close().await;
}

#[tokio::test]
async fn durable_subscriptions_need_a_client_id() {
    let broker = MemoryBroker::start().await;
    let client = connect(&broker.url()).await;
    let options = SubscribeOptions {
        durable_name: Some("audit".into()),
        ..SubscribeOptions::default()
    };
    assert_eq!(
        client
            .subscribe("topic://events", options)
            .await
            .unwrap_err(),
        ClientError::MissingClientId
    );
    assert_eq!(
        client
            .send("temp-queue://orders", "x", SendOptions::default())
            .await
            .unwrap_err(),
        ClientError::InvalidDestination("temp-queue://orders".into())
    );
}

#[tokio::test]
async fn round_trip_through_the_memory_broker() {
    let broker = MemoryBroker::start().await;
    let client = connect(&broker.url()).await;
    let mut subscription = client
        .subscribe("queue://orders", SubscribeOptions::default())
        .await
        .unwrap();
    let handles: Vec<SendHandle> = (0..100)
        .map(|i| client.send_nowait("queue://orders", format!("{i}"), SendOptions::persistent()))
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
    for i in 0..100 {
        let message = subscription.next().await.unwrap();
        assert_eq!(message.body().as_ref(), format!("{i}").as_bytes());
        assert_eq!(message.destination(), "/queue/orders");
    }
    subscription.unsubscribe().await.unwrap();
    client
        .send("queue://orders", "kept", SendOptions::default())
        .await
        .unwrap();
    assert_eq!(broker.depth("/queue/orders"), 1);
    assert_eq!(broker.duplicates(), 0);
    client.close().await.unwrap();
}

/// A broker that accepts connections but ends each with an ERROR saying it cannot serve (its
/// store failed): each such connection counts as a failed attempt, so the client backs off and
/// `maxReconnectAttempts` ends it, instead of reconnecting and re-sending in a tight loop.
#[tokio::test]
async fn a_broker_that_refuses_every_send_counts_as_a_failed_attempt() {
    let server = FakeListener::bind().await;
    let url = format!(
        "failover:({})?randomize=false&initialReconnectDelay=1&maxReconnectDelay=50&maxReconnectAttempts=3",
        server.url()
    );
    let connections = Arc::new(AtomicUsize::new(0));
    let peer = tokio::spawn({
        let connections = connections.clone();
        async move {
            loop {
                let mut connection = server.accept().await;
                connections.fetch_add(1, Ordering::SeqCst);
                connection.handshake().await;
                let send = connection.expect(Command::Send).await;
                let mut error = Frame::new(Command::Error).header(
                    "message",
                    "the store failed and accepts no more writes: No space left on device",
                );
                if let Some(receipt) = send.get("receipt") {
                    error = error.header("receipt-id", receipt);
                }
                connection.send(error).await;
                connection.close().await;
            }
        }
    });
    let client = connect(&url).await;
    let error = tokio::time::timeout(
        Duration::from_secs(10),
        client.send("queue://in", "x", SendOptions::default()),
    )
    .await
    .expect("the client gives up instead of retrying forever")
    .unwrap_err();
    peer.abort();
    assert!(matches!(error, ClientError::GaveUp { .. }), "{error:?}");
    assert!(error.to_string().contains("store failed"), "{error}");
    // The first connection, then one per allowed attempt.
    assert_eq!(connections.load(Ordering::SeqCst), 4);
}

// ----- failover edge cases -----------------------------------------------------------------

/// Messages to acknowledge that a lost connection delivered, still unread, are not handed to
/// the application: the broker redelivers them (ActiveMQ's client clears its prefetched
/// messages on a transport interruption), so each reaches it once.
#[tokio::test]
async fn deliveries_of_a_lost_connection_are_not_handed_out() {
    let server = FakeListener::bind().await;
    let url = format!("failover:({})?{FAST}", server.url());
    let peer = tokio::spawn(async move {
        let mut connection = server.accept().await;
        connection.handshake().await;
        let subscribe = connection.expect(Command::Subscribe).await;
        connection.receipt(&subscribe).await;
        let id = subscribe.get("id").unwrap().to_string();
        for n in 1..=2 {
            connection
                .send(message_frame(&id, "/queue/work", n, &format!("a{n}")))
                .await;
        }
        connection.close().await;
        let mut connection = server.accept().await;
        connection.handshake().await;
        connection.expect(Command::Subscribe).await;
        for n in 1..=2 {
            connection
                .send(
                    message_frame(&id, "/queue/work", n, &format!("b{n}"))
                        .header("redelivered", "true"),
                )
                .await;
        }
        connection
    });
    let client = connect(&url).await;
    let mut subscription = subscribe_individually(&client, "/queue/work").await;
    let connection = peer.await.unwrap();
    let mut received = Vec::new();
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(300), subscription.next()).await
    {
        received.push(format!(
            "{} (ack {})",
            String::from_utf8_lossy(message.body()),
            message.header("ack").unwrap_or("")
        ));
    }
    drop(connection);
    assert_eq!(
        received.len(),
        2,
        "each message must reach the application once; got {received:?}"
    );
}

/// A broker that reads the first frame of each connection, answers it with an ERROR carrying
/// `error` (if any) and closes the connection; it counts the connections.
fn ending_every_connection(
    server: FakeListener,
    error: Option<&'static str>,
) -> (tokio::task::JoinHandle<()>, Arc<AtomicUsize>) {
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    let peer = tokio::spawn(async move {
        loop {
            let mut connection = server.accept().await;
            counted.fetch_add(1, Ordering::SeqCst);
            connection.handshake().await;
            let _first = connection.read_frame().await;
            if let Some(message) = error {
                connection
                    .send(Frame::new(Command::Error).header("message", message))
                    .await;
            }
            connection.close().await;
        }
    });
    (peer, connections)
}

/// `timeout` bounds a send even when every new connection is lost before its RECEIPT: the
/// clock starts at the first loss and is not restarted by later connections.
#[tokio::test]
async fn the_timeout_bounds_a_send_on_a_broker_that_drops_every_connection() {
    let server = FakeListener::bind().await;
    let url = format!("failover:({})?{FAST}&timeout=300", server.url());
    let (peer, connections) = ending_every_connection(server, None);
    let client = connect(&url).await;
    let outcome = tokio::time::timeout(
        Duration::from_secs(3),
        client.send("queue://in", "x", SendOptions::persistent()),
    )
    .await;
    peer.abort();
    assert!(
        matches!(outcome, Ok(Err(ClientError::Unreachable { .. }))),
        "timeout=300 ms, yet after 3 s and {} connections: {outcome:?}",
        connections.load(Ordering::SeqCst)
    );
}

/// A SEND the broker answers with an ERROR and a close on every connection (one over its
/// max_frame_size) is re-sent on each reconnect, as ActiveMQ's failover transport does; the
/// failover `timeout` ends it with the broker's message.
#[tokio::test]
async fn a_send_the_broker_ends_every_connection_over_fails_after_the_timeout() {
    let server = FakeListener::bind().await;
    let url = format!("failover:({})?{FAST}&timeout=300", server.url());
    let error = "frame too large: 70000000 bytes exceeds the limit of 67108864 bytes";
    let (peer, connections) = ending_every_connection(server, Some(error));
    let client = connect(&url).await;
    let outcome = tokio::time::timeout(
        Duration::from_secs(3),
        client.send("queue://in", "too big", SendOptions::persistent()),
    )
    .await;
    peer.abort();
    let Ok(Err(error)) = outcome else {
        panic!(
            "not failed after 3 s and {} connections: {outcome:?}",
            connections.load(Ordering::SeqCst)
        );
    };
    assert!(error.to_string().contains("frame too large"), "{error}");
}

/// Writes `count` MESSAGE frames of `body` bytes on `/queue/big` for subscription `id`.
async fn send_big_messages(connection: &mut FakeConnection, id: &str, count: usize, body: usize) {
    for n in 0..count {
        let frame = Frame::new(Command::Message)
            .header("subscription", id)
            .header("destination", "/queue/big")
            .header("message-id", format!("ID:p:{n}"))
            .header("ack", format!("{n}"))
            .with_body(vec![b'x'; body]);
        connection.send(frame).await;
    }
}

/// Takes `count` messages of `body` bytes from `subscription`, each within 10 s.
async fn take_big_messages(subscription: &mut Subscription, count: usize, body: usize) {
    for n in 0..count {
        let message = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .unwrap_or_else(|_| panic!("message {n} did not come"))
            .unwrap();
        assert_eq!(message.body().len(), body);
    }
}

/// An ACK's RECEIPT behind a prefetch of large messages (more than the unread limits) still
/// arrives: messages to acknowledge do not hold the connection back, as the subscription's
/// prefetch bounds them. `ferromq consume` of 40 x 1 MiB (it acknowledges each message and
/// waits for the RECEIPT) hung here for good before.
#[tokio::test]
async fn an_ack_receipt_behind_a_large_prefetch_still_arrives() {
    const MESSAGES: usize = 400;
    const BODY: usize = 100 * 1024;
    const { assert!(MESSAGES * BODY > UNREAD_HARD_LIMIT) };
    let server = FakeListener::bind().await;
    let url = format!("failover:({})?{FAST}", server.url());
    let peer = tokio::spawn(async move {
        let (mut connection, subscribe) = server.subscribed("client-individual").await;
        let id = subscribe.get("id").unwrap().to_string();
        // The whole prefetch first, as a broker does; the ACK is read after it.
        send_big_messages(&mut connection, &id, MESSAGES, BODY).await;
        let ack = connection.expect(Command::Ack).await;
        assert_eq!(ack.get("id"), Some("0"));
        connection.receipt(&ack).await;
        connection
    });
    let client = connect(&url).await;
    let options = SubscribeOptions {
        ack: AckMode::ClientIndividual,
        prefetch: Some(MESSAGES as u32),
        ..SubscribeOptions::default()
    };
    let mut subscription = client.subscribe("/queue/big", options).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), subscription.next())
        .await
        .expect("the first message did not come")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), first.ack())
        .await
        .expect("the ACK's RECEIPT did not arrive behind the prefetched messages")
        .unwrap();
    take_big_messages(&mut subscription, MESSAGES - 1, BODY).await;
    let _connection = peer.await.unwrap();
}

/// An application that does not take its messages holds the connection back: past
/// `UNREAD_HIGH_WATER` bytes received and not taken, the client stops reading (the broker's
/// writes wait), without taking the broker for dead; once the application reads, everything
/// arrives.
#[tokio::test]
async fn a_slow_application_holds_the_broker_back_instead_of_buffering_everything() {
    const MESSAGES: usize = 200;
    const BODY: usize = 100 * 1024;
    let server = FakeListener::bind().await;
    let url = format!("failover:({})?{FAST}", server.url());
    let peer = tokio::spawn(async move {
        let mut connection = server.accept().await;
        connection.handshake().await;
        let subscribe = connection.expect(Command::Subscribe).await;
        connection.receipt(&subscribe).await;
        let id = subscribe.get("id").unwrap().to_string();
        send_big_messages(&mut connection, &id, MESSAGES, BODY).await;
        connection
    });
    let client = connect(&url).await;
    let mut subscription = client
        .subscribe("/queue/big", SubscribeOptions::default())
        .await
        .unwrap();
    let unread = || client.shared.unread.load(Ordering::Acquire);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while unread() < UNREAD_HIGH_WATER {
        assert!(
            tokio::time::Instant::now() < deadline,
            "unread {}",
            unread()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Time passing is the scenario: the client must stay stopped, not read on.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        unread() <= UNREAD_HIGH_WATER + 4 * BODY,
        "{} bytes buffered",
        unread()
    );
    take_big_messages(&mut subscription, MESSAGES, BODY).await;
    let _connection = peer.await.unwrap();
    assert_eq!(unread(), 0);
}

/// A RECEIPT behind more unread messages than `UNREAD_HIGH_WATER` still arrives: the client
/// reads on while a request waits for its RECEIPT (here a SUBSCRIBE whose broker writes the
/// backlog first), where stopping would leave the application waiting for ever.
#[tokio::test]
async fn a_receipt_behind_a_large_backlog_still_arrives() {
    const MESSAGES: usize = 120;
    const BODY: usize = 100 * 1024;
    let server = FakeListener::bind().await;
    let url = format!("failover:({})?{FAST}", server.url());
    let peer = tokio::spawn(async move {
        let mut connection = server.accept().await;
        connection.handshake().await;
        let subscribe = connection.expect(Command::Subscribe).await;
        let id = subscribe.get("id").unwrap().to_string();
        send_big_messages(&mut connection, &id, MESSAGES, BODY).await;
        connection.receipt(&subscribe).await;
        connection
    });
    let client = connect(&url).await;
    const { assert!(MESSAGES * BODY > UNREAD_HIGH_WATER) };
    let mut subscription = tokio::time::timeout(
        Duration::from_secs(20),
        client.subscribe("/queue/big", SubscribeOptions::default()),
    )
    .await
    .expect("the SUBSCRIBE's RECEIPT did not arrive")
    .unwrap();
    take_big_messages(&mut subscription, MESSAGES, BODY).await;
    let _connection = peer.await.unwrap();
}
