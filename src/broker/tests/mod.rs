//! The core's rules, exercised on a real store in a temporary directory: the fixtures and
//! helpers the tests share are here, the tests in one module per feature.

mod admin;
mod composite;
mod durable;
mod flow_control;
mod groups;
mod journal;
mod no_local;
mod queues;
mod redelivery;
mod scheduler;
mod scheduler_management;
mod selectors;
mod topics;
mod transactions;
mod virtual_topics;

use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

use super::*;

struct Fixture {
    _dir: tempfile::TempDir,
    broker: Broker,
}

async fn fixture(options: BrokerOptions) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), options);
    Fixture { _dir: dir, broker }
}

/// A broker with `memory_limit` at `bytes` and every other option at its default.
async fn fixture_with_memory_limit(bytes: u64) -> Fixture {
    fixture(BrokerOptions {
        memory_limit: bytes,
        ..BrokerOptions::default()
    })
    .await
}

/// A session that sent one persistent message "m" to `queue://q`, subscribed with prefetch 10,
/// and received it as `d`.
async fn one_delivered(f: &Fixture) -> (Session, UnboundedReceiver<Delivery>, Delivery) {
    let (session, mut rx) = f.broker.open_session(None);
    session
        .send(&queue("q"), persistent("m"), None)
        .unwrap()
        .await
        .unwrap();
    subscribe(&session, "s", queue("q"), 10);
    let d = next(&mut rx).await;
    (session, rx, d)
}

/// Everything a browser of `destination` is shown, page after page, with redelivery counts.
fn browse_all(
    s: &Session,
    destination: &Destination,
    selector: Option<&str>,
) -> Vec<(Arc<Message>, u32)> {
    let mut cursor = s.open_browse(destination, selector).unwrap();
    let mut shown = Vec::new();
    while !cursor.is_done() {
        shown.extend(s.browse_next(&mut cursor, usize::MAX).unwrap());
    }
    shown
}

/// The bodies a browser of `destination` is shown (see [`browse_all`]).
fn browsed_bodies(s: &Session, destination: &Destination, selector: Option<&str>) -> Vec<String> {
    browse_all(s, destination, selector)
        .iter()
        .map(|(m, _)| String::from_utf8_lossy(&m.body).into_owned())
        .collect()
}

fn queue(name: &str) -> Destination {
    Destination::Queue(name.into())
}

fn persistent(body: &str) -> NewMessage {
    NewMessage {
        persistent: true,
        body: Bytes::copy_from_slice(body.as_bytes()),
        ..NewMessage::default()
    }
}

/// Sends the persistent messages "0" to "n-1" to `queue://q`, each confirmed.
async fn send_numbered(broker: &Broker, n: usize) {
    let (s, _) = broker.open_session(None);
    for i in 0..n {
        s.send(&queue("q"), persistent(&i.to_string()), None)
            .unwrap()
            .await
            .unwrap();
    }
}

/// A plain subscription request (no selector, not durable, exclusive, noLocal; priority 0).
fn request(id: &str, destination: Destination, prefetch: u32) -> SubscribeRequest {
    SubscribeRequest {
        id: id.into(),
        destination,
        prefetch,
        durable_name: None,
        selector: None,
        exclusive: false,
        priority: 0,
        no_local: false,
    }
}

fn subscribe(session: &Session, id: &str, destination: Destination, prefetch: u32) {
    session
        .subscribe(request(id, destination, prefetch))
        .unwrap();
}

async fn next(rx: &mut UnboundedReceiver<Delivery>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a delivery within 5 s")
        .expect("session open")
}

fn body(d: &Delivery) -> &str {
    std::str::from_utf8(&d.message.body).unwrap()
}

fn colored(color: &str, body: &str) -> NewMessage {
    NewMessage {
        headers: vec![crate::store::Header::text("color", color)],
        ..persistent(body)
    }
}

/// [`colored`], not persistent (sent without waiting for a confirmation).
fn colored_transient(color: &str, body: &str) -> NewMessage {
    NewMessage {
        persistent: false,
        ..colored(color, body)
    }
}

/// A broker whose periodic sweep never runs by itself: the test runs it
/// (`Core::continue_scans`).
async fn fixture_swept_by_hand() -> Fixture {
    fixture(BrokerOptions {
        expiry_sweep: Duration::from_secs(3600),
        ..BrokerOptions::default()
    })
    .await
}

fn topic(name: &str) -> Destination {
    Destination::Topic(name.into())
}

fn subscribe_to(
    session: &Session,
    id: &str,
    destination: Destination,
    durable_name: Option<&str>,
    selector: Option<&str>,
) -> Result<Confirmation, BrokerError> {
    session.subscribe(SubscribeRequest {
        durable_name: durable_name.map(str::to_string),
        selector: selector.map(str::to_string),
        ..request(id, destination, 100)
    })
}

/// A 64 KiB persistent message numbered `i`.
fn large(i: usize) -> NewMessage {
    persistent(&format!("{i:04}:{}", "x".repeat(64 * 1024)))
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Every delivery already handed to `rx` (dispatch runs under the core's lock, so what a
/// confirmed send or an unsubscribe dispatched is there).
fn take_all(rx: &mut UnboundedReceiver<Delivery>) -> Vec<Delivery> {
    let mut out = Vec::new();
    while let Ok(d) = rx.try_recv() {
        out.push(d);
    }
    out
}

fn bodies(deliveries: &[Delivery]) -> Vec<&str> {
    deliveries.iter().map(body).collect()
}

/// A persistent message of group `group`, with `JMSXGroupSeq` `seq` when given.
fn grouped(body: &str, group: &str, seq: Option<i32>) -> NewMessage {
    let mut m = persistent(body);
    m.headers.push(Header::text("JMSXGroupID", group));
    if let Some(seq) = seq {
        m.headers.push(Header {
            name: "JMSXGroupSeq".into(),
            value: seq.to_string(),
            kind: PropertyType::Int as i32,
        });
    }
    m
}

async fn send_to_q(s: &Session, message: NewMessage) {
    send_settled(s, &queue("q"), message).await;
}

/// Sends `message` and waits until its dispatch is over: the confirmation resolves under the
/// core's lock before the confirmed messages are dispatched, so take the lock once more.
async fn send_settled(s: &Session, destination: &Destination, message: NewMessage) {
    s.send(destination, message, None).unwrap().await.unwrap();
    let _ = s.next_tag();
}

/// Sends persistent `body` to `destination` and waits for its confirmation.
async fn send_confirmed(s: &Session, destination: &Destination, body: &str) {
    s.send(destination, persistent(body), None)
        .unwrap()
        .await
        .unwrap();
}

fn non_persistent(body: &str) -> NewMessage {
    NewMessage {
        persistent: false,
        ..persistent(body)
    }
}

/// Subscribes to virtual topic consumer queue `name` and waits until it is recorded.
async fn subscribe_virtual(session: &Session, id: &str, name: &str, selector: Option<&str>) {
    subscribe_to(session, id, queue(name), None, selector)
        .unwrap()
        .await
        .unwrap();
}

/// A new session with subscription `s` on queue `q`.
fn consumer_on_q(f: &Fixture, prefetch: u32) -> (Session, UnboundedReceiver<Delivery>) {
    let (session, rx) = f.broker.open_session(None);
    subscribe(&session, "s", queue("q"), prefetch);
    (session, rx)
}

/// Sends `message` to every member of `members` and waits for its confirmation.
async fn send_to_each(s: &Session, members: &[Destination], message: NewMessage) {
    s.send_to_each(members, message, None)
        .unwrap()
        .await
        .unwrap();
}

/// The value of header `name` on a delivery.
fn header<'a>(d: &'a Delivery, name: &str) -> Option<&'a str> {
    d.message
        .headers
        .iter()
        .find(|h| h.name == name)
        .map(|h| h.value.as_str())
}

/// The one message waiting on queue `name`, taken by a new consumer (acknowledged).
async fn take_from(broker: &Broker, name: &str) -> Delivery {
    let (c, mut rx) = broker.open_session(None);
    subscribe(&c, "dlq", queue(name), 10);
    let d = next(&mut rx).await;
    c.ack(d.tag, AckScope::Single, None).unwrap().await.unwrap();
    d
}

fn scheduling() -> BrokerOptions {
    BrokerOptions {
        scheduler_support: true,
        ..BrokerOptions::default()
    }
}

/// `body`, persistent, with `AMQ_SCHEDULED_DELAY` as a STOMP header gives it (a string).
fn delayed(body: &str, delay_ms: &str) -> NewMessage {
    NewMessage {
        headers: vec![Header::text(schedule::SCHEDULED_DELAY, delay_ms)],
        ..persistent(body)
    }
}
