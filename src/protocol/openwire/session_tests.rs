//! The OpenWire session against a real broker core, over an in-memory stream, speaking the
//! codec the way a stock client does.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;
use crate::broker::BrokerOptions;
use crate::protocol::openwire::{
    encode_text_body, ConnectionId, ConsumerInfo, DataStructure, DestinationInfo, DestinationKind,
    Message, MessageId, MessageKind, ProducerId, SessionId, SessionInfo,
};

const WAIT: Duration = Duration::from_secs(5);

struct Fixture {
    _dir: tempfile::TempDir,
    broker: Broker,
    options: Arc<OpenWireOptions>,
}

fn fixture(users: &[(&str, &str)]) -> Fixture {
    fixture_with(users, BrokerOptions::default())
}

fn fixture_with(users: &[(&str, &str)], broker_options: BrokerOptions) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), broker_options);
    let users = users
        .iter()
        .map(|(u, p)| (u.to_string(), p.to_string()))
        .collect();
    Fixture {
        _dir: dir,
        broker,
        options: Arc::new(OpenWireOptions::new(1 << 20, users, "test")),
    }
}

/// A client speaking the codec over an in-memory stream.
struct Client {
    io: DuplexStream,
    input: BytesMut,
    format: Format,
    next_id: i32,
    /// Sent in ConnectionInfo: this connection replaces one the client lost.
    failover_reconnect: bool,
}

impl Client {
    fn open(f: &Fixture) -> Client {
        Client::open_with_capacity(f, 1 << 20)
    }

    /// Like [`Client::open`], over a pipe that holds `capacity` bytes each way.
    fn open_with_capacity(f: &Fixture, capacity: usize) -> Client {
        Client::open_watched(f, capacity).0
    }

    /// Like [`Client::open_with_capacity`], with the handle of the task serving it (a panic
    /// in the session is its `JoinError::is_panic`).
    fn open_watched(f: &Fixture, capacity: usize) -> (Client, tokio::task::JoinHandle<()>) {
        Client::open_serving(f, capacity, BytesMut::new())
    }

    /// Like [`Client::open_watched`], the session starting with `initial` as its input buffer
    /// (a listener hands over its first read, in a buffer of 4 KiB, as `initial`).
    fn open_serving(
        f: &Fixture,
        capacity: usize,
        initial: BytesMut,
    ) -> (Client, tokio::task::JoinHandle<()>) {
        let (ours, theirs) = tokio::io::duplex(capacity);
        let broker = f.broker.clone();
        let options = f.options.clone();
        let session = tokio::spawn(async move {
            serve(
                theirs,
                initial,
                broker,
                options,
                "127.0.0.1:1".parse().unwrap(),
            )
            .await
        });
        let client = Client {
            io: ours,
            input: BytesMut::new(),
            format: Format::new(12),
            next_id: 1,
            failover_reconnect: false,
        };
        (client, session)
    }

    async fn write(&mut self, command: &Command) {
        let mut out = BytesMut::new();
        encode(command, self.format, &mut out).unwrap();
        self.io.write_all(&out).await.unwrap();
    }

    async fn write_raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
    }

    /// The next command, or `None` once the broker closed the stream.
    async fn read(&mut self) -> Option<Command> {
        let reader = FrameReader::new(1 << 20);
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(frame) = reader.next_frame(&mut self.input).unwrap() {
                    return Some(decode(&frame, self.format).unwrap());
                }
                if self.io.read_buf(&mut self.input).await.unwrap_or(0) == 0 {
                    return None;
                }
            }
        })
        .await
        .expect("the broker answered in time")
    }

    /// The next command that is not a keep-alive.
    async fn next(&mut self) -> Command {
        loop {
            match self.read().await.expect("the connection is open") {
                Command::KeepAliveInfo(_) => continue,
                other => return other,
            }
        }
    }

    fn id(&mut self) -> i32 {
        self.next_id += 1;
        self.next_id
    }

    /// WireFormatInfo both ways, BrokerInfo, then ConnectionInfo answered.
    async fn connect(
        f: &Fixture,
        connection: &str,
        user: Option<(&str, &str)>,
    ) -> (Client, Command) {
        let client_id = Some(format!("client-{connection}"));
        Client::open(f).handshake(connection, client_id, user).await
    }

    /// What [`Client::connect`] does on a client already opened: WireFormatInfo both ways (no
    /// inactivity monitor), BrokerInfo, then ConnectionInfo (with `client_id`) answered.
    async fn handshake(
        mut self,
        connection: &str,
        client_id: Option<String>,
        user: Option<(&str, &str)>,
    ) -> (Client, Command) {
        let c = &mut self;
        assert!(matches!(c.read().await, Some(Command::WireFormatInfo(_))));
        c.write(&Command::WireFormatInfo(WireFormatInfo::ferromq(0, 0, 0)))
            .await;
        assert!(matches!(c.read().await, Some(Command::BrokerInfo(_))));
        let id = c.id();
        c.write(&Command::ConnectionInfo(super::super::ConnectionInfo {
            command_id: id,
            response_required: true,
            connection_id: Some(ConnectionId {
                value: Some(connection.into()),
            }),
            client_id,
            user_name: user.map(|u| u.0.to_string()),
            password: user.map(|u| u.1.to_string()),
            failover_reconnect: c.failover_reconnect,
            ..Default::default()
        }))
        .await;
        let answer = c.next().await;
        (self, answer)
    }

    async fn connected(f: &Fixture, connection: &str) -> Client {
        let (c, answer) = Client::connect(f, connection, None).await;
        assert!(matches!(answer, Command::Response(_)), "{answer:?}");
        c.with_session(connection).await
    }

    /// As [`Client::connected`], by a failover transport replacing a lost connection.
    async fn reconnected(f: &Fixture, connection: &str) -> Client {
        let mut c = Client::open(f);
        c.failover_reconnect = true;
        let client_id = Some(format!("client-{connection}"));
        let (c, answer) = c.handshake(connection, client_id, None).await;
        assert!(matches!(answer, Command::Response(_)), "{answer:?}");
        c.with_session(connection).await
    }

    /// Opens session 1.
    async fn with_session(mut self, connection: &str) -> Client {
        let c = &mut self;
        c.write(&Command::SessionInfo(SessionInfo {
            session_id: Some(SessionId {
                connection_id: Some(connection.into()),
                value: 1,
            }),
            ..Default::default()
        }))
        .await;
        self
    }

    async fn request(&mut self, mut command: Command) -> Command {
        let id = self.id();
        match &mut command {
            Command::Message(m) => {
                m.command_id = id;
                m.response_required = true;
            }
            Command::ConsumerInfo(c) => {
                c.command_id = id;
                c.response_required = true;
            }
            Command::ProducerInfo(p) => {
                p.command_id = id;
                p.response_required = true;
            }
            Command::DestinationInfo(d) => {
                d.command_id = id;
                d.response_required = true;
            }
            _ => unreachable!("not used by these tests"),
        }
        self.write(&command).await;
        loop {
            let answer = self.next().await;
            match &answer {
                Command::Response(r) if r.correlation_id == id => return answer,
                Command::ExceptionResponse(r) if r.correlation_id == id => return answer,
                _ => {}
            }
        }
    }
}

fn producer(connection: &str) -> ProducerId {
    ProducerId {
        connection_id: Some(connection.into()),
        value: 1,
        session_id: 1,
    }
}

fn consumer(connection: &str, value: i64) -> ConsumerId {
    ConsumerId {
        connection_id: Some(connection.into()),
        session_id: 1,
        value,
    }
}

fn text(connection: &str, queue: &str, sequence: i64, body: &str) -> Command {
    let mut content = BytesMut::new();
    encode_text_body(Some(body), &mut content).unwrap();
    Command::Message(Box::new(Message {
        kind: MessageKind::Text,
        producer_id: Some(producer(connection)),
        destination: Some(OwDestination::queue(queue)),
        message_id: Some(MessageId {
            producer_id: Some(producer(connection)),
            producer_sequence_id: sequence,
            ..Default::default()
        }),
        persistent: true,
        priority: 4,
        content: Some(content.freeze()),
        ..Default::default()
    }))
}

/// A MessagePull from consumer `value` of `connection` on `queue`, waiting `timeout` ms.
fn pull(connection: &str, value: i64, queue: &str, timeout: i64) -> Command {
    Command::MessagePull(MessagePull {
        consumer_id: Some(consumer(connection, value)),
        destination: Some(OwDestination::queue(queue)),
        timeout,
        ..Default::default()
    })
}

fn subscribe(connection: &str, value: i64, queue: &str, prefetch: i32) -> Command {
    Command::ConsumerInfo(ConsumerInfo {
        consumer_id: Some(consumer(connection, value)),
        destination: Some(OwDestination::queue(queue)),
        prefetch_size: prefetch,
        ..Default::default()
    })
}

/// The ConsumerControl giving consumer 1 of `connection`, on queue `queue`, a window of
/// `prefetch` (as the stock client sends after a failover's replay).
fn consumer_control(connection: &str, queue: &str, prefetch: i32) -> Command {
    Command::ConsumerControl(crate::protocol::openwire::ConsumerControl {
        consumer_id: Some(consumer(connection, 1)),
        destination: Some(OwDestination::queue(queue)),
        prefetch,
        ..Default::default()
    })
}

fn body_of(command: &Command) -> Option<String> {
    let Command::MessageDispatch(d) = command else {
        panic!("expected a MessageDispatch, got {command:?}");
    };
    let m = d.message.as_ref()?;
    super::super::decode_text_body(m.content.as_ref()?).unwrap()
}

#[tokio::test]
async fn a_persistent_send_replayed_after_failover_is_answered_but_stored_once() {
    let f = fixture(&[]);
    let mut a = Client::connected(&f, "ID:c-1:1").await;
    let answer = a.request(text("ID:c-1:1", "orders", 1, "one")).await;
    assert!(matches!(answer, Command::Response(_)), "{answer:?}");
    drop(a);

    // The failover transport reconnects and replays the send it saw no answer for.
    let mut b = Client::connected(&f, "ID:c-1:1").await;
    let answer = b.request(text("ID:c-1:1", "orders", 1, "one")).await;
    assert!(matches!(answer, Command::Response(_)), "{answer:?}");
    let answer = b.request(text("ID:c-1:1", "orders", 2, "two")).await;
    assert!(matches!(answer, Command::Response(_)), "{answer:?}");
    assert_eq!(f.broker.queue_depth("queue://orders"), 2);

    b.request(subscribe("ID:c-1:1", 1, "orders", 10)).await;
    assert_eq!(body_of(&b.next().await).as_deref(), Some("one"));
    assert_eq!(body_of(&b.next().await).as_deref(), Some("two"));
}

#[tokio::test]
async fn a_connection_id_reused_by_a_replay_replaces_the_stale_connection() {
    let f = fixture(&[]);
    let mut stale = Client::connected(&f, "ID:c-2:1").await;
    stale.request(text("ID:c-2:1", "jobs", 1, "job")).await;
    stale.request(subscribe("ID:c-2:1", 1, "jobs", 10)).await;
    assert_eq!(body_of(&stale.next().await).as_deref(), Some("job"));

    // Same connection id from a new socket: the stale one is closed and its unacknowledged
    // message goes to the new one.
    let mut fresh = Client::connected(&f, "ID:c-2:1").await;
    loop {
        match stale.read().await {
            None => break,
            Some(Command::KeepAliveInfo(_)) => continue,
            Some(other) => panic!("the stale connection got {other:?}"),
        }
    }
    fresh.request(subscribe("ID:c-2:1", 1, "jobs", 10)).await;
    let dispatch = fresh.next().await;
    assert_eq!(body_of(&dispatch).as_deref(), Some("job"));
    let Command::MessageDispatch(d) = dispatch else {
        unreachable!()
    };
    assert_eq!(d.redelivery_counter, 1, "it was delivered once before");
}

#[tokio::test]
async fn a_pull_that_times_out_is_answered_with_an_empty_dispatch() {
    let f = fixture(&[]);
    let mut c = Client::connected(&f, "ID:c-3:1").await;
    c.request(subscribe("ID:c-3:1", 1, "pulled", 0)).await;
    c.request(text("ID:c-3:1", "pulled", 1, "first")).await;
    // Prefetch 0: nothing arrives until pulled.
    c.write(&pull("ID:c-3:1", 1, "pulled", 50)).await;
    assert_eq!(body_of(&c.next().await).as_deref(), Some("first"));
    // Nothing left: the pull times out.
    c.write(&pull("ID:c-3:1", 1, "pulled", 50)).await;
    assert_eq!(body_of(&c.next().await), None);
    // receiveNoWait (-1) is answered at once.
    c.write(&pull("ID:c-3:1", 1, "pulled", -1)).await;
    assert_eq!(body_of(&c.next().await), None);
}

#[tokio::test]
async fn malformed_frames_close_only_their_connection_with_a_reason() {
    let f = fixture(&[]);
    let mut good = Client::connected(&f, "ID:good:1").await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown type", vec![0, 0, 0, 5, 99, 0, 0, 0, 1]),
        ("truncated body", vec![0, 0, 0, 3, 4, 0, 0]),
        ("oversized frame", vec![0x7f, 0xff, 0xff, 0xff, 3]),
        ("zero size", vec![0, 0, 0, 0]),
    ];
    for (what, bytes) in cases {
        let mut bad = Client::connected(&f, &format!("ID:bad-{what}:1")).await;
        bad.write_raw(&bytes).await;
        let reason = match bad.next().await {
            Command::ConnectionError(e) => e.exception.and_then(|t| t.message).unwrap_or_default(),
            other => panic!("{what}: expected a ConnectionError, got {other:?}"),
        };
        assert!(!reason.is_empty(), "{what}: the error names the problem");
        assert!(
            bad.read().await.is_none(),
            "{what}: then the connection closes"
        );
    }
    // A bad magic never gets past detection; here the session sees no WireFormatInfo first.
    let mut odd = Client::open(&f);
    assert!(matches!(odd.read().await, Some(Command::WireFormatInfo(_))));
    odd.write(&Command::KeepAliveInfo(BaseCommand::default()))
        .await;
    assert!(matches!(odd.next().await, Command::ConnectionError(_)));

    let answer = good.request(text("ID:good:1", "still", 1, "fine")).await;
    assert!(matches!(answer, Command::Response(_)), "{answer:?}");
}

#[tokio::test]
async fn a_wrong_password_is_refused_with_a_security_exception() {
    let f = fixture(&[("app", "secret")]);
    let (mut c, answer) = Client::connect(&f, "ID:c-4:1", Some(("app", "wrong"))).await;
    let Command::ExceptionResponse(e) = answer else {
        panic!("expected an ExceptionResponse, got {answer:?}");
    };
    let t = e.exception.unwrap();
    assert_eq!(t.class_name.as_deref(), Some("java.lang.SecurityException"));
    assert!(t.message.unwrap().contains("app"));
    assert!(c.read().await.is_none());
    let (_, answer) = Client::connect(&f, "ID:c-5:1", Some(("app", "secret"))).await;
    assert!(matches!(answer, Command::Response(_)), "{answer:?}");
}

#[tokio::test]
async fn a_consumer_closed_before_the_application_saw_its_prefetch_does_not_count_a_redelivery() {
    // The application consumed only the first before the consumer closed.
    let counters = redelivery_counters_after_a_close(|tags| tags[0]).await;
    assert_eq!(
        counters,
        vec![("m1".into(), 1), ("m2".into(), 0), ("m3".into(), 0)]
    );
}

/// After a failover the stock client reports, as it closes a consumer, the tag of the last
/// message its application got from the old master (`lastDeliveredSequenceId`). Which of this
/// master's deliveries it saw is not known; it was working on one, presumably the oldest: that
/// one comes back counted as redelivered, the rest of the prefetch not (as from ActiveMQ, whose
/// sequence ids are the store's, the same on every broker). From a Spring JMS hunt: a
/// consumer's whole prefetch came back with JMSRedelivered after every failover, since each
/// master's tags started at 1.
#[tokio::test]
async fn a_last_delivered_tag_of_an_earlier_master_counts_only_the_oldest_delivery() {
    // The 1,000th delivery of an earlier master (or of this node before a restart).
    let counters = redelivery_counters_after_a_close(|_| 1_000).await;
    assert_eq!(
        counters,
        vec![("m1".into(), 1), ("m2".into(), 0), ("m3".into(), 0)]
    );
}

/// A session (or connection) closing reports the last message handed to any of its
/// consumers: only the consumer that got it counts its deliveries up to it as seen, as in
/// ActiveMQ. Before, a consumer's whole unread prefetch came back marked redelivered (its
/// tags were all below another consumer's last delivery), and after a few restarts of such
/// an application its messages went to the DLQ unprocessed.
#[tokio::test]
async fn a_closing_sessions_last_delivery_marks_only_the_consumer_that_got_it() {
    let f = fixture(&[]);
    let mut c = Client::connected(&f, "ID:c-8:1").await;
    for n in 1..=3 {
        c.request(text("ID:c-8:1", "unread", n, &format!("u{n}")))
            .await;
    }
    c.request(text("ID:c-8:1", "read", 4, "r1")).await;
    c.request(subscribe("ID:c-8:1", 1, "unread", 10)).await;
    for _ in 0..3 {
        assert!(matches!(c.next().await, Command::MessageDispatch(_)));
    }
    c.request(subscribe("ID:c-8:1", 2, "read", 10)).await;
    let Command::MessageDispatch(d) = c.next().await else {
        panic!("expected a dispatch")
    };
    let last = d.message.unwrap().message_id.unwrap().broker_sequence_id;
    c.write(&Command::RemoveInfo(RemoveInfo {
        object_id: Some(DataStructure::SessionId(SessionId {
            connection_id: Some("ID:c-8:1".into()),
            value: 1,
        })),
        last_delivered_sequence_id: last,
        ..Default::default()
    }))
    .await;
    let mut other = Client::connected(&f, "ID:c-9:1").await;
    other.request(subscribe("ID:c-9:1", 1, "unread", 10)).await;
    let mut counters = Vec::new();
    for _ in 0..3 {
        let Command::MessageDispatch(d) = other.next().await else {
            panic!("expected dispatches")
        };
        counters.push(d.redelivery_counter);
    }
    assert_eq!(counters, vec![0, 0, 0], "nobody read them");
    other.request(subscribe("ID:c-9:1", 2, "read", 10)).await;
    let Command::MessageDispatch(d) = other.next().await else {
        panic!("expected a dispatch")
    };
    assert_eq!(d.redelivery_counter, 1, "the one the application got");
}

/// Three messages dispatched to a consumer, which closes reporting `last_delivered(tags)` as
/// the last its application got; the redelivery counters a second consumer then sees.
async fn redelivery_counters_after_a_close(
    last_delivered: impl FnOnce(&[i64]) -> i64,
) -> Vec<(String, i32)> {
    let f = fixture(&[]);
    let mut c = Client::connected(&f, "ID:c-6:1").await;
    for n in 1..=3 {
        c.request(text("ID:c-6:1", "seen", n, &format!("m{n}")))
            .await;
    }
    c.request(subscribe("ID:c-6:1", 1, "seen", 10)).await;
    let mut tags = Vec::new();
    for _ in 0..3 {
        let Command::MessageDispatch(d) = c.next().await else {
            panic!("expected dispatches")
        };
        tags.push(d.message.unwrap().message_id.unwrap().broker_sequence_id);
    }
    c.write(&Command::RemoveInfo(RemoveInfo {
        object_id: Some(DataStructure::ConsumerId(consumer("ID:c-6:1", 1))),
        last_delivered_sequence_id: last_delivered(&tags),
        ..Default::default()
    }))
    .await;
    c.request(subscribe("ID:c-6:1", 2, "seen", 10)).await;
    let mut counters = Vec::new();
    for _ in 0..3 {
        let Command::MessageDispatch(d) = c.next().await else {
            panic!("expected dispatches")
        };
        counters.push((
            body_of(&Command::MessageDispatch(d.clone())).unwrap(),
            d.redelivery_counter,
        ));
    }
    counters
}

/// A connection whose WireFormatInfo asks for `inactivity` ms (initial delay `delay` ms), its
/// ConnectionInfo answered.
async fn connected_with_inactivity(
    f: &Fixture,
    connection: &str,
    inactivity: i64,
    delay: i64,
) -> Client {
    let mut c = Client::open(f);
    assert!(matches!(c.read().await, Some(Command::WireFormatInfo(_))));
    let mut wire = WireFormatInfo::ferromq(0, inactivity, delay);
    wire.version = 12;
    c.write(&Command::WireFormatInfo(wire)).await;
    assert!(matches!(c.read().await, Some(Command::BrokerInfo(_))));
    let id = c.id();
    c.write(&Command::ConnectionInfo(super::super::ConnectionInfo {
        command_id: id,
        response_required: true,
        connection_id: Some(ConnectionId {
            value: Some(connection.into()),
        }),
        ..Default::default()
    }))
    .await;
    assert!(matches!(c.next().await, Command::Response(_)));
    c
}

/// A connection that negotiated its wire format and then sends nothing (no ConnectionInfo, no
/// keep-alive) is closed once its inactivity period has passed, as ActiveMQ's inactivity
/// monitor closes it: silent connections cannot hold client slots without a login.
#[tokio::test]
async fn a_connection_silent_before_its_connection_info_is_closed() {
    let f = fixture(&[]);
    let mut c = Client::open(&f);
    assert!(matches!(c.read().await, Some(Command::WireFormatInfo(_))));
    let mut wire = WireFormatInfo::ferromq(0, 1_000, 0);
    wire.version = 12;
    c.write(&Command::WireFormatInfo(wire)).await;
    assert!(matches!(c.read().await, Some(Command::BrokerInfo(_))));
    // A keep-alive is something: the connection stays while they come.
    c.write(&Command::KeepAliveInfo(Default::default())).await;
    assert!(matches!(
        c.read().await,
        Some(Command::KeepAliveInfo(_)) | None
    ));
    let closed = loop {
        match c.read().await {
            None => break true,
            Some(Command::KeepAliveInfo(_)) => continue,
            Some(other) => panic!("{other:?}"),
        }
    };
    assert!(closed);
}

#[tokio::test]
async fn absurd_timeouts_from_a_client_are_bounded_not_fatal() {
    let f = fixture(&[]);
    // A client asking for a 1 ms inactivity period.
    let mut c = connected_with_inactivity(&f, "ID:odd:1", 1, 0).await;
    // A pull that would wait past the end of time.
    c.request(subscribe("ID:odd:1", 1, "odd", 0)).await;
    c.write(&pull("ID:odd:1", 1, "odd", i64::MAX)).await;
    // The connection still serves: a message sent now answers the pull.
    let mut producer = Client::connected(&f, "ID:odd-producer:1").await;
    let answer = producer
        .request(text("ID:odd-producer:1", "odd", 1, "still here"))
        .await;
    assert!(matches!(answer, Command::Response(_)), "{answer:?}");
    assert_eq!(body_of(&c.next().await).as_deref(), Some("still here"));
}

// ----- transactions, ranged acks, pulls, unsubscribe ---------------------------------------

use crate::protocol::openwire::{LocalTransactionId, RemoveSubscriptionInfo};

fn local_tx(connection: &str, value: i64) -> TransactionId {
    TransactionId::Local(LocalTransactionId {
        value,
        connection_id: Some(ConnectionId {
            value: Some(connection.into()),
        }),
    })
}

/// A TransactionInfo of `kind` (0 begin, 2 commit, 4 rollback); answered when `id` is not 0.
fn tx_info(connection: &str, tx: &TransactionId, kind: u8, id: i32) -> Command {
    Command::TransactionInfo(TransactionInfo {
        command_id: id,
        response_required: id != 0,
        connection_id: Some(ConnectionId {
            value: Some(connection.into()),
        }),
        transaction_id: Some(tx.clone()),
        transaction_type: kind,
    })
}

fn in_tx(mut send: Command, tx: &TransactionId) -> Command {
    if let Command::Message(m) = &mut send {
        m.transaction_id = Some(tx.clone());
    }
    send
}

/// Commits `tx` and returns the answer to the commit.
async fn commit(c: &mut Client, connection: &str, tx: &TransactionId) -> Command {
    let id = c.id();
    c.write(&tx_info(connection, tx, 2, id)).await;
    loop {
        let answer = c.next().await;
        match &answer {
            Command::Response(r) if r.correlation_id == id => return answer,
            Command::ExceptionResponse(r) if r.correlation_id == id => return answer,
            _ => {}
        }
    }
}

/// Polls `condition` every 5 ms for up to `WAIT`.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not in time: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The failover transport reconnects (to the same broker) and replays an open transaction,
/// BEGIN and sends with their producer sequences; then the application commits. Stored once.
#[tokio::test]
async fn a_transaction_replayed_on_a_new_connection_is_stored_at_commit() {
    let f = fixture(&[]);
    let conn = "ID:t-1:1";
    let tx = local_tx(conn, 1);
    let send = in_tx(text(conn, "txq", 1, "in tx"), &tx);
    let mut a = Client::connected(&f, conn).await;
    a.write(&tx_info(conn, &tx, 0, 0)).await;
    a.write(&send).await;
    a.request(subscribe(conn, 9, "elsewhere", 1)).await; // both handled
    drop(a);
    let mut b = Client::connected(&f, conn).await;
    b.write(&tx_info(conn, &tx, 0, 0)).await;
    b.write(&send).await;
    let answer = commit(&mut b, conn, &tx).await;
    assert!(matches!(answer, Command::Response(_)), "{answer:?}");
    assert_eq!(f.broker.queue_depth("queue://txq"), 1);
}

/// A send the broker refuses inside a transaction (a compressed body) without the client
/// waiting for an answer: the commit is refused with TransactionRolledBackException and
/// nothing of the transaction is stored, as in ActiveMQ.
#[tokio::test]
async fn a_refused_send_in_a_transaction_fails_its_commit() {
    let f = fixture(&[]);
    let conn = "ID:t-2:1";
    let tx = local_tx(conn, 1);
    let mut c = Client::connected(&f, conn).await;
    c.write(&tx_info(conn, &tx, 0, 0)).await;
    for (sequence, compressed) in [(1, true), (2, false)] {
        let mut send = in_tx(text(conn, "txq2", sequence, "body"), &tx);
        if let Command::Message(m) = &mut send {
            m.compressed = compressed;
        }
        c.write(&send).await;
    }
    assert_rolled_back(&commit(&mut c, conn, &tx).await, "the commit was accepted");
    assert_eq!(f.broker.queue_depth("queue://txq2"), 0);
    // The session goes on: a new transaction commits.
    let tx2 = local_tx(conn, 2);
    c.write(&tx_info(conn, &tx2, 0, 0)).await;
    c.write(&in_tx(text(conn, "txq2", 3, "next"), &tx2)).await;
    let answer = commit(&mut c, conn, &tx2).await;
    assert!(matches!(answer, Command::Response(_)), "{answer:?}");
    assert_eq!(f.broker.queue_depth("queue://txq2"), 1);
}

/// A broker whose store takes 2 MiB, refusing persistent sends past it
/// (`send_fail_if_no_space`).
fn refusing_at_2_mib() -> Fixture {
    fixture_with(
        &[],
        BrokerOptions {
            store_limit: 2 << 20,
            send_fail_if_no_space: true,
            ..BrokerOptions::default()
        },
    )
}

/// With `send_fail_if_no_space`, a synchronous persistent send while the store is at
/// `store_limit` is answered as ActiveMQ answers it: a ResourceAllocationException naming the
/// limit; the connection goes on.
#[tokio::test]
async fn a_send_at_the_store_limit_is_refused_with_resource_allocation_exception() {
    let f = refusing_at_2_mib();
    let conn = "ID:t-9:1";
    let mut c = Client::connected(&f, conn).await;
    let body = "b".repeat(64 * 1024);
    let mut refused = None;
    for sequence in 1..64 {
        match c.request(text(conn, "full", sequence, &body)).await {
            Command::Response(_) => {}
            Command::ExceptionResponse(e) => {
                refused = Some((sequence, e));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    let (sequence, e) = refused.expect("64 messages of 64 KiB fill a 2 MiB store");
    assert!(sequence > 10, "refused at message {sequence}");
    let thrown = e.exception.as_ref().expect("an exception");
    assert_eq!(
        thrown.class_name.as_deref(),
        Some("javax.jms.ResourceAllocationException")
    );
    let message = thrown.message.clone().unwrap_or_default();
    assert!(message.contains("store_limit"), "{message}");
    assert_eq!(f.broker.queue_depth("queue://full"), sequence as usize - 1);
    let mut light = text(conn, "light", 100, "light");
    if let Command::Message(m) = &mut light {
        m.persistent = false;
    }
    assert!(matches!(c.request(light).await, Command::Response(_)));
}

/// A commit the store refuses (full, under `send_fail_if_no_space`) rolls the transaction
/// back, as ActiveMQ's does: the stock client then redelivers what it acknowledged in it and
/// acknowledges it again in its next transaction, whose commit consumes it. (The transaction
/// was left open while this connection forgot its acknowledgements, so the second ack was
/// ignored and the message came back when the connection ended.)
#[tokio::test]
async fn a_commit_the_store_refuses_rolls_the_transaction_back() {
    let f = refusing_at_2_mib();
    let conn = "ID:t-11:1";
    let mut c = Client::connected(&f, conn).await;
    let ids = three_dispatched(&mut c, conn).await;
    let acked_in = |tx: &TransactionId| {
        let mut ack = ranged_ack(conn, 2, &ids[0], &ids[0]);
        if let Command::MessageAck(a) = &mut ack {
            a.transaction_id = Some(tx.clone());
        }
        ack
    };
    let tx = local_tx(conn, 1);
    c.write(&tx_info(conn, &tx, 0, 0)).await;
    c.write(&acked_in(&tx)).await;
    c.write(&in_tx(text(conn, "txq", 100, "in tx"), &tx)).await;
    let body = "b".repeat(64 * 1024);
    let filled = async {
        for sequence in 1..64 {
            if let Command::ExceptionResponse(_) =
                c.request(text(conn, "full", sequence, &body)).await
            {
                return true;
            }
        }
        false
    };
    assert!(filled.await, "64 messages of 64 KiB fill a 2 MiB store");
    let answer = commit(&mut c, conn, &tx).await;
    assert!(
        matches!(answer, Command::ExceptionResponse(_)),
        "{answer:?}"
    );
    let tx2 = local_tx(conn, 2);
    c.write(&tx_info(conn, &tx2, 0, 0)).await;
    c.write(&acked_in(&tx2)).await;
    let answer = commit(&mut c, conn, &tx2).await;
    assert!(matches!(answer, Command::Response(_)), "{answer:?}");
    drop(c);
    // m2 and m3 go back to the queue; m1 was consumed by the second transaction.
    eventually("m1 consumed, m2 and m3 back", || {
        f.broker.queue_depth("queue://ranged") == 2
    })
    .await;
    assert_eq!(f.broker.queue_depth("queue://txq"), 0);
}

/// An asynchronous send outside a transaction that the broker refuses is reported to the
/// connection (its exception listener) with a ConnectionError instead of vanishing.
#[tokio::test]
async fn a_refused_asynchronous_send_is_reported_with_a_connection_error() {
    let f = fixture(&[]);
    let conn = "ID:t-3:1";
    let mut c = Client::connected(&f, conn).await;
    let mut send = text(conn, "async", 1, "body");
    if let Command::Message(m) = &mut send {
        m.compressed = true;
    }
    c.write(&send).await;
    let Command::ConnectionError(e) = c.next().await else {
        panic!("no ConnectionError");
    };
    let message = e.exception.and_then(|t| t.message).unwrap_or_default();
    assert!(message.contains("compressed"), "{message}");
    // The connection stays usable.
    let answer = c.request(text(conn, "async", 2, "plain")).await;
    assert!(matches!(answer, Command::Response(_)), "{answer:?}");
}

/// `answer` refuses a send to `name` with `InvalidDestinationException`, saying `problem`.
fn assert_invalid_destination(answer: Command, name: &str, problem: &str) {
    assert_refused(
        answer,
        "javax.jms.InvalidDestinationException",
        name,
        problem,
    );
}

/// `answer` refuses a send to `name` with exception `class`, saying `problem`.
fn assert_refused(answer: Command, class: &str, name: &str, problem: &str) {
    let Command::ExceptionResponse(e) = answer else {
        panic!("{name}: accepted ({answer:?})");
    };
    let e = e.exception.unwrap();
    assert_eq!(e.class_name.as_deref(), Some(class), "{name}");
    let message = e.message.unwrap_or_default();
    assert!(
        message.contains(name) && message.contains(problem),
        "{name}: {message}"
    );
}

/// A send to a temporary destination is taken while the connection that made it lives, and
/// refused with `InvalidDestinationException` once it is deleted, or when it never existed
/// (a client with `watchTopicAdvisories=false` does not check): it is not turned into an
/// ordinary queue anyone could read.
#[tokio::test]
async fn a_send_to_a_deleted_or_unknown_temporary_destination_is_refused() {
    let f = fixture(&[]);
    let (owner, sender) = ("ID:t-tmp-owner:1", "ID:t-tmp-sender:1");
    let mut a = Client::connected(&f, owner).await;
    let mut b = Client::connected(&f, sender).await;
    let temp = |kind, name: &str| OwDestination {
        kind,
        physical_name: Some(name.to_string()),
    };
    let to = |destination: &OwDestination, sequence| {
        let mut send = text(sender, "unused", sequence, "reply");
        if let Command::Message(m) = &mut send {
            m.destination = Some(destination.clone());
        }
        send
    };
    let info = |destination: &OwDestination, operation_type| {
        destination_info(owner, destination, operation_type)
    };
    let refused = |answer, what| {
        // The client's constructor adds "The destination ... does not exist." around it.
        let class = "org.apache.activemq.DestinationDoesNotExistException";
        assert_refused(answer, class, what, what);
    };
    let queue = temp(DestinationKind::TempQueue, "ID:t-tmp-owner:1:1");
    let topic = temp(DestinationKind::TempTopic, "ID:t-tmp-owner:1:2");
    for d in [&queue, &topic] {
        assert!(matches!(a.request(info(d, 0)).await, Command::Response(_)));
    }
    let answer = b.request(to(&queue, 1)).await;
    assert!(matches!(answer, Command::Response(_)), "{answer:?}");
    assert_eq!(f.broker.queue_depth("queue://ID:t-tmp-owner:1:1"), 1);
    let answer = b.request(to(&topic, 2)).await;
    assert!(matches!(answer, Command::Response(_)), "{answer:?}");

    let bogus = temp(DestinationKind::TempQueue, "ID:bogus-1:1:1");
    refused(
        b.request(to(&bogus, 3)).await,
        "temp-queue://ID:bogus-1:1:1",
    );
    let bogus = temp(DestinationKind::TempTopic, "ID:bogus-1:1:2");
    refused(
        b.request(to(&bogus, 4)).await,
        "temp-topic://ID:bogus-1:1:2",
    );
    assert_eq!(f.broker.queue_depth("queue://ID:bogus-1:1:1"), 0);

    for d in [&queue, &topic] {
        assert!(matches!(a.request(info(d, 1)).await, Command::Response(_)));
    }
    refused(
        b.request(to(&queue, 5)).await,
        "temp-queue://ID:t-tmp-owner:1:1",
    );
    refused(
        b.request(to(&topic, 6)).await,
        "temp-topic://ID:t-tmp-owner:1:2",
    );
    assert_eq!(f.broker.queue_depth("queue://ID:t-tmp-owner:1:1"), 0);
}

/// A transacted reply to a temporary queue its requestor deleted before the commit (it gave
/// up waiting) goes nowhere, as in ActiveMQ. Before, the commit routed it and made an ordinary
/// queue of that name, which nobody could read and nothing deleted.
#[tokio::test]
async fn a_transacted_send_to_a_temporary_queue_deleted_before_the_commit_goes_nowhere() {
    let f = fixture(&[]);
    let (owner, sender) = ("ID:t-late-owner:1", "ID:t-late-sender:1");
    let mut a = Client::connected(&f, owner).await;
    let mut b = Client::connected(&f, sender).await;
    let queue = OwDestination {
        kind: DestinationKind::TempQueue,
        physical_name: Some("ID:t-late-owner:1:1".into()),
    };
    let info = |operation_type| destination_info(owner, &queue, operation_type);
    assert!(matches!(a.request(info(0)).await, Command::Response(_)));
    let tx = local_tx(sender, 1);
    b.write(&tx_info(sender, &tx, 0, 0)).await;
    let mut reply = in_tx(text(sender, "unused", 1, "late reply"), &tx);
    if let Command::Message(m) = &mut reply {
        m.destination = Some(queue.clone());
    }
    assert!(matches!(b.request(reply).await, Command::Response(_)));
    assert!(matches!(a.request(info(1)).await, Command::Response(_)));
    let answer = commit(&mut b, sender, &tx).await;
    assert!(matches!(answer, Command::Response(_)), "{answer:?}");
    let names: Vec<String> = f.broker.queue_stats().into_iter().map(|q| q.name).collect();
    assert!(
        !names.iter().any(|n| n.contains("t-late-owner")),
        "{names:?}"
    );
}

/// Connection `owner` adds (`operation_type` 0) or removes (1) temporary `destination`.
fn destination_info(owner: &str, destination: &OwDestination, operation_type: u8) -> Command {
    Command::DestinationInfo(DestinationInfo {
        connection_id: Some(ConnectionId {
            value: Some(owner.into()),
        }),
        destination: Some(destination.clone()),
        operation_type,
        ..Default::default()
    })
}

/// `answer` refuses a commit with `TransactionRolledBackException`; `what` if it does not.
fn assert_rolled_back(answer: &Command, what: &str) {
    let Command::ExceptionResponse(e) = answer else {
        panic!("{what}: {answer:?}");
    };
    let class = e.exception.as_ref().and_then(|t| t.class_name.clone());
    assert_eq!(
        class.as_deref(),
        Some("javax.jms.TransactionRolledBackException"),
        "{what}"
    );
}

fn ranged_ack(connection: &str, kind: u8, first: &MessageId, last: &MessageId) -> Command {
    counted_ack(connection, kind, first, last, 1)
}

fn counted_ack(
    connection: &str,
    kind: u8,
    first: &MessageId,
    last: &MessageId,
    count: i32,
) -> Command {
    Command::MessageAck(MessageAck {
        destination: Some(OwDestination::queue("ranged")),
        consumer_id: Some(consumer(connection, 1)),
        ack_type: kind,
        first_message_id: Some(first.clone()),
        last_message_id: Some(last.clone()),
        message_count: count,
        ..Default::default()
    })
}

/// Queue `ranged`'s messages waiting and in flight.
fn ranged_state(f: &Fixture) -> Option<(usize, usize)> {
    f.broker
        .queue_stats()
        .into_iter()
        .find(|q| q.name == "queue://ranged")
        .map(|q| (q.ready, q.in_flight))
}

/// Sends m1..m3 to queue `ranged`, subscribes to it and returns the ids of the three
/// dispatches.
async fn three_dispatched(c: &mut Client, conn: &str) -> Vec<MessageId> {
    for n in 1..=3 {
        c.request(text(conn, "ranged", n, &format!("m{n}"))).await;
    }
    c.request(subscribe(conn, 1, "ranged", 10)).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let Command::MessageDispatch(d) = c.next().await else {
            panic!("expected three dispatches")
        };
        ids.push(d.message.unwrap().message_id.unwrap());
    }
    ids
}

/// A transaction manager's XA recovery scan (`XAResource.recover`, a TransactionInfo of type
/// RECOVER) is answered with no in-doubt transactions, as nothing is ever prepared here, instead
/// of an error at every scan.
#[tokio::test]
async fn an_xa_recovery_scan_finds_nothing_in_doubt() {
    let f = fixture(&[]);
    let conn = "ID:t-13:1";
    let mut c = Client::connected(&f, conn).await;
    let mut recover = tx_info(conn, &local_tx(conn, 1), 5, 77);
    if let Command::TransactionInfo(t) = &mut recover {
        t.transaction_id = None;
    }
    c.write(&recover).await;
    match c.next().await {
        Command::DataArrayResponse(r) => {
            assert_eq!(r.correlation_id, 77);
            assert_eq!(r.data.map(|d| d.len()), Some(0));
        }
        other => panic!("expected a DataArrayResponse, got {other:?}"),
    }
}

/// The stock client acks each rollback of an already redelivered message as REDELIVERED (type
/// 3). As at ActiveMQ's broker these do not count: a message rolled back three times and then
/// left by its consumer comes back with one redelivery, not four (counted both ways, a
/// transacted consumer that closes without committing had its messages dead-lettered by its
/// client's redelivery policy after four deliveries instead of seven).
#[tokio::test]
async fn redelivered_acks_do_not_add_to_the_delivery_count() {
    let f = fixture(&[]);
    let conn = "ID:t-11:1";
    let mut c = Client::connected(&f, conn).await;
    let ids = three_dispatched(&mut c, conn).await;
    for _ in 0..3 {
        c.write(&ranged_ack(conn, 3, &ids[0], &ids[0])).await;
    }
    drop(c);
    let mut other = Client::connected(&f, "ID:t-12:1").await;
    other.request(subscribe("ID:t-12:1", 1, "ranged", 10)).await;
    let Command::MessageDispatch(d) = other.next().await else {
        panic!("expected m1 again")
    };
    let m = d.message.unwrap();
    assert_eq!(
        m.redelivery_counter, 1,
        "one return, no client rollbacks counted"
    );
}

/// A standard ack covers `firstMessageId..lastMessageId`, not every earlier delivery: with
/// `nonBlockingRedelivery` the client acks m2..m3 while m1 waits for a local redelivery, then
/// poisons m1, which must reach the DLQ.
#[tokio::test]
async fn a_standard_ack_covers_only_its_range() {
    let f = fixture(&[]);
    let conn = "ID:t-4:1";
    let mut c = Client::connected(&f, conn).await;
    let ids = three_dispatched(&mut c, conn).await;
    c.write(&counted_ack(conn, 2, &ids[1], &ids[2], 2)).await;
    c.write(&ranged_ack(conn, 1, &ids[0], &ids[0])).await;
    eventually("m1 on the DLQ", || {
        f.broker.queue_depth("queue://ActiveMQ.DLQ") == 1
    })
    .await;
    eventually("m2 and m3 acknowledged", || {
        ranged_state(&f) == Some((0, 0))
    })
    .await;
}

/// A standard ack whose count is not the number of deliveries outstanding from its first to
/// its last (a client that handed its prefetch over out of order) is refused whole, as
/// ActiveMQ refuses it, and the client's exception listener is told; a plain topic
/// subscriber's is taken as it comes, as ActiveMQ's TopicSubscription takes it.
#[tokio::test]
async fn a_standard_ack_counting_other_deliveries_is_refused() {
    let f = fixture(&[]);
    let conn = "ID:t-14:1";
    let mut c = Client::connected(&f, conn).await;
    let ids = three_dispatched(&mut c, conn).await;
    c.write(&counted_ack(conn, 2, &ids[0], &ids[2], 2)).await;
    match c.next().await {
        Command::ConnectionError(e) => {
            let message = e.exception.and_then(|t| t.message).unwrap_or_default();
            assert!(message.contains("unmatched acknowledge"), "{message}");
        }
        other => panic!("expected a ConnectionError, got {other:?}"),
    }
    assert_eq!(ranged_state(&f), Some((0, 3)), "nothing acknowledged");

    // A plain topic subscriber (consumer 2): the same ack is taken.
    c.request(Command::ConsumerInfo(ConsumerInfo {
        consumer_id: Some(consumer(conn, 2)),
        destination: Some(OwDestination::topic("news")),
        prefetch_size: 10,
        ..Default::default()
    }))
    .await;
    let mut topic_ids = Vec::new();
    for n in 4..=6 {
        let mut m = text(conn, "unused", n, "t");
        if let Command::Message(m) = &mut m {
            m.destination = Some(OwDestination::topic("news"));
        }
        // Not awaited: `request` would pass over the dispatches.
        c.write(&m).await;
    }
    while topic_ids.len() < 3 {
        if let Command::MessageDispatch(d) = c.next().await {
            topic_ids.push(d.message.unwrap().message_id.unwrap());
        }
    }
    c.write(&Command::MessageAck(MessageAck {
        destination: Some(OwDestination::topic("news")),
        consumer_id: Some(consumer(conn, 2)),
        ack_type: 2,
        first_message_id: Some(topic_ids[0].clone()),
        last_message_id: Some(topic_ids[2].clone()),
        message_count: 1,
        ..Default::default()
    }))
    .await;
    let mut marker = text(conn, "marker", 7, "m");
    if let Command::Message(m) = &mut marker {
        m.command_id = 999;
        m.response_required = true;
    }
    c.write(&marker).await;
    loop {
        match c.next().await {
            Command::Response(r) if r.correlation_id == 999 => break,
            Command::ConnectionError(e) => panic!("a topic subscriber's ack refused: {e:?}"),
            _ => {}
        }
    }
}

/// After a failover the client commits acks naming the copies the old master delivered
/// (their broker sequence ids are the old master's): the commit removes this broker's
/// deliveries of the same messages, as ActiveMQ matches acks by producer id and sequence only.
/// Without it the commit succeeds, the messages stay, and another consumer gets them again.
#[tokio::test]
async fn a_transacted_ack_naming_another_brokers_delivery_removes_the_message_at_commit() {
    let f = fixture(&[]);
    let conn = "ID:t-9:1";
    let mut c = Client::connected(&f, conn).await;
    let mut ids = three_dispatched(&mut c, conn).await;
    for id in &mut ids {
        // As the old master numbered its deliveries.
        id.broker_sequence_id += 1_000_000;
    }
    let tx = local_tx(conn, 1);
    c.write(&tx_info(conn, &tx, 0, 0)).await;
    let mut ack = ranged_ack(conn, 2, &ids[0], &ids[1]);
    if let Command::MessageAck(a) = &mut ack {
        a.transaction_id = Some(tx.clone());
        a.message_count = 2;
    }
    c.write(&ack).await;
    let answer = commit(&mut c, conn, &tx).await;
    assert!(matches!(answer, Command::Response(_)), "{answer:?}");
    // m3, not acknowledged, goes back to the queue when its consumer leaves; m1 and m2 do not.
    drop(c);
    eventually("only m3 left", || {
        f.broker.queue_depth("queue://ranged") == 1
    })
    .await;
    let mut other = Client::connected(&f, "ID:t-10:1").await;
    other.request(subscribe("ID:t-10:1", 1, "ranged", 10)).await;
    let next = other.next().await;
    assert_eq!(body_of(&next).as_deref(), Some("m3"), "{next:?}");
}

/// The stock client acked a message inside a transaction on the connection it then lost, and
/// commits on the new one: its failover transport replays the transaction's BEGIN but not the
/// ack, so the commit reaches this broker empty. Accepting it would tell the application its
/// message was consumed while it stays queued; the commit is refused as rolled back, and the
/// client delivers the message again and acks it on this connection. A transaction with work
/// (here a replayed send) commits as usual on such a connection.
#[tokio::test]
async fn an_empty_commit_after_a_failover_is_rolled_back_not_confirmed() {
    let f = fixture(&[]);
    let conn = "ID:t-11:1";
    let mut c = Client::connected(&f, conn).await;
    c.request(text(conn, "lost-ack", 1, "job")).await;
    c.request(subscribe(conn, 1, "lost-ack", 10)).await;
    let Command::MessageDispatch(d) = c.next().await else {
        panic!("expected the dispatch")
    };
    let id = d.message.unwrap().message_id.unwrap();
    drop(c);

    let mut c = Client::reconnected(&f, conn).await;
    c.request(subscribe(conn, 1, "lost-ack", 10)).await;
    let tx = local_tx(conn, 1);
    c.write(&tx_info(conn, &tx, 0, 0)).await;
    assert_rolled_back(
        &commit(&mut c, conn, &tx).await,
        "an empty commit after the failover was confirmed",
    );
    // The client redelivers and acks again in a new transaction: now the message goes.
    let tx2 = local_tx(conn, 2);
    c.write(&tx_info(conn, &tx2, 0, 0)).await;
    let mut ack = ranged_ack(conn, 2, &id, &id);
    if let Command::MessageAck(a) = &mut ack {
        a.destination = Some(OwDestination::queue("lost-ack"));
        a.transaction_id = Some(tx2.clone());
    }
    c.write(&ack).await;
    let answer = commit(&mut c, conn, &tx2).await;
    assert!(matches!(answer, Command::Response(_)), "{answer:?}");
    let tx3 = local_tx(conn, 3);
    c.write(&tx_info(conn, &tx3, 0, 0)).await;
    c.write(&in_tx(text(conn, "lost-ack-sent", 2, "sent"), &tx3))
        .await;
    let answer = commit(&mut c, conn, &tx3).await;
    assert!(matches!(answer, Command::Response(_)), "{answer:?}");
    drop(c);
    eventually("the acknowledged message gone, the sent one stored", || {
        f.broker.queue_depth("queue://lost-ack") == 0
            && f.broker.queue_depth("queue://lost-ack-sent") == 1
    })
    .await;
}

/// With prefetch 0, `receive(100)` answered at once by a message, then `receive()`: the first
/// pull's deadline passing must not answer the second with an empty dispatch (JMS null).
#[tokio::test]
async fn a_pull_answered_by_a_message_leaves_no_deadline_behind() {
    let f = fixture(&[]);
    let conn = "ID:t-5:1";
    let mut c = Client::connected(&f, conn).await;
    c.request(subscribe(conn, 1, "pulled", 0)).await;
    c.request(text(conn, "pulled", 1, "first")).await;
    c.write(&pull(conn, 1, "pulled", 100)).await;
    assert_eq!(body_of(&c.next().await).as_deref(), Some("first"));
    c.write(&pull(conn, 1, "pulled", 0)).await;
    // The scenario is time passing: the first pull's 100 ms deadline goes by.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Sent on another connection: `request` would skip the dispatch while it waits.
    let mut p = Client::connected(&f, "ID:t-5p:1").await;
    p.request(text("ID:t-5p:1", "pulled", 1, "second")).await;
    assert_eq!(body_of(&c.next().await).as_deref(), Some("second"));
}

/// Unsubscribing a durable subscription that does not exist is refused with
/// InvalidDestinationException, as ActiveMQ (and JMS) do.
#[tokio::test]
async fn unsubscribing_an_unknown_durable_subscription_is_refused() {
    let f = fixture(&[]);
    let conn = "ID:t-6:1";
    let mut c = Client::connected(&f, conn).await;
    let id = c.id();
    c.write(&Command::RemoveSubscriptionInfo(RemoveSubscriptionInfo {
        command_id: id,
        response_required: true,
        connection_id: Some(ConnectionId {
            value: Some(conn.into()),
        }),
        subscription_name: Some("never-made".into()),
        client_id: Some(format!("client-{conn}")),
    }))
    .await;
    let Command::ExceptionResponse(e) = c.next().await else {
        panic!("accepted");
    };
    let class = e.exception.as_ref().and_then(|t| t.class_name.clone());
    assert_eq!(
        class.as_deref(),
        Some("javax.jms.InvalidDestinationException")
    );
}

/// A client that stops reading and sending (its machine died) while the broker has more to
/// write than the connection holds is closed by the inactivity monitor all the same, and its
/// prefetched messages go back to the queue.
#[tokio::test]
async fn a_silent_client_is_closed_even_while_a_write_to_it_waits() {
    let f = fixture(&[]);
    let conn = "ID:t-7:1";
    let mut c = Client::open_with_capacity(&f, 4096);
    assert!(matches!(c.read().await, Some(Command::WireFormatInfo(_))));
    let mut wire = WireFormatInfo::ferromq(0, 1000, 0);
    wire.version = 12;
    c.write(&Command::WireFormatInfo(wire)).await;
    assert!(matches!(c.read().await, Some(Command::BrokerInfo(_))));
    c.write(&Command::ConnectionInfo(super::super::ConnectionInfo {
        command_id: 1,
        response_required: true,
        connection_id: Some(ConnectionId {
            value: Some(conn.into()),
        }),
        ..Default::default()
    }))
    .await;
    assert!(matches!(c.next().await, Command::Response(_)));
    c.request(subscribe(conn, 1, "silent", 1000)).await;
    let mut producer = Client::connected(&f, "ID:t-7p:1").await;
    let body = "x".repeat(1000);
    for n in 1..=50 {
        producer
            .request(text("ID:t-7p:1", "silent", n, &body))
            .await;
    }
    // `c` now neither reads nor writes.
    eventually("the silent consumer closed, its messages back", || {
        f.broker
            .queue_stats()
            .into_iter()
            .any(|q| q.name == "queue://silent" && q.consumers == 0 && q.ready == 50)
    })
    .await;
    drop(c);
}

/// A send to a composite queue (`a,topic://t,b`) that the failover transport replays on a new
/// connection is answered again but stored once in each member.
#[tokio::test]
async fn a_composite_send_replayed_after_failover_is_stored_once_in_each_member() {
    let f = fixture(&[]);
    let conn = "ID:t-comp:1";
    let mut a = Client::connected(&f, conn).await;
    let answer = a.request(text(conn, "a,topic://t,b", 1, "one")).await;
    assert!(matches!(answer, Command::Response(_)), "{answer:?}");
    drop(a);
    let mut b = Client::connected(&f, conn).await;
    let answer = b.request(text(conn, "a,topic://t,b", 1, "one")).await;
    assert!(matches!(answer, Command::Response(_)), "{answer:?}");
    assert_eq!(f.broker.queue_depth("queue://a"), 1);
    assert_eq!(f.broker.queue_depth("queue://b"), 1);
    assert_eq!(f.broker.queue_depth("queue://a,topic://t,b"), 0);
}

/// A composite destination with an empty member, a temporary member or a member with an
/// unknown prefix is refused with InvalidDestinationException naming the problem; nothing is
/// stored in its other members.
#[tokio::test]
async fn a_bad_composite_destination_is_refused_naming_the_problem() {
    let f = fixture(&[]);
    let conn = "ID:t-comp:2";
    let mut c = Client::connected(&f, conn).await;
    for (n, (name, problem)) in [
        ("a,,b", "empty member"),
        ("a,temp-queue://ID:x:1", "is temporary"),
        ("a,qeue://b", "member 'qeue://b'"),
    ]
    .into_iter()
    .enumerate()
    {
        let answer = c.request(text(conn, name, n as i64 + 1, "m")).await;
        assert_invalid_destination(answer, name, problem);
    }
    assert_eq!(f.broker.queue_depth("queue://a"), 0);
}

/// A destination named with a newline or NUL (which no STOMP header, status page or log line
/// can carry) is refused for a send and for a consumer, as STOMP refuses it, naming it.
#[tokio::test]
async fn a_destination_name_with_a_newline_or_nul_is_refused() {
    let f = fixture(&[]);
    let conn = "ID:t-ctl:1";
    let mut c = Client::connected(&f, conn).await;
    for (n, name) in ["bad\0queue", "bad\nqueue", "ok,bad\0member"]
        .into_iter()
        .enumerate()
    {
        let answer = c.request(text(conn, name, n as i64 + 1, "m")).await;
        let shown = name.rsplit(',').next().unwrap().escape_debug().to_string();
        assert_invalid_destination(answer, &shown, "");
        let answer = c.request(subscribe(conn, n as i64 + 1, name, 10)).await;
        assert_invalid_destination(answer, &shown, "");
    }
    assert!(f.broker.queue_stats().is_empty());
}

/// The stock client replays an open QueueBrowser after a failover with prefetch 0, then gives
/// its window back with a ConsumerControl (as for any consumer): the browser then gets its
/// copies and the end of the browse. (The ConsumerControl was ignored for browsers, and
/// `hasMoreElements()`, which sends no pull, waited for ever.)
#[tokio::test]
async fn a_browser_replayed_with_prefetch_0_gets_its_window_back_with_consumer_control() {
    let f = fixture(&[]);
    let conn = "ID:t-browse:1";
    let mut c = Client::connected(&f, conn).await;
    for n in 1..=3 {
        c.request(text(conn, "browsed", n, &format!("m{n}"))).await;
    }
    let Command::ConsumerInfo(mut browser) = subscribe(conn, 1, "browsed", 0) else {
        unreachable!()
    };
    browser.browser = true;
    let answer = c.request(Command::ConsumerInfo(browser)).await;
    assert!(matches!(answer, Command::Response(_)), "{answer:?}");
    c.write(&consumer_control(conn, "browsed", 500)).await;
    let copies: Vec<Option<String>> = [c.next().await, c.next().await, c.next().await]
        .iter()
        .map(body_of)
        .collect();
    assert_eq!(
        copies,
        [Some("m1".into()), Some("m2".into()), Some("m3".into())]
    );
    let Command::MessageDispatch(end) = c.next().await else {
        panic!("expected the browse's end")
    };
    assert!(end.message.is_none(), "{end:?}");
    assert_eq!(
        f.broker.queue_depth("queue://browsed"),
        3,
        "a browse takes nothing"
    );
}

/// A consumer on a composite queue (`a,b`) gets what is sent to either member; a browser on
/// one is refused, naming it (a browser takes one queue).
#[tokio::test]
async fn a_consumer_on_a_composite_queue_gets_every_members_messages_and_a_browser_is_refused() {
    let f = fixture(&[]);
    let conn = "ID:t-comp:3";
    let mut c = Client::connected(&f, conn).await;
    let answer = c.request(text(conn, "a", 1, "to-a")).await;
    assert!(matches!(answer, Command::Response(_)), "{answer:?}");
    let answer = c.request(text(conn, "b", 2, "to-b")).await;
    assert!(matches!(answer, Command::Response(_)), "{answer:?}");
    let Command::ConsumerInfo(mut browser) = subscribe(conn, 1, "a,b", 10) else {
        unreachable!()
    };
    browser.browser = true;
    let Command::ExceptionResponse(e) = c.request(Command::ConsumerInfo(browser)).await else {
        panic!("a browser on a composite destination was accepted");
    };
    let message = e.exception.and_then(|t| t.message).unwrap_or_default();
    assert!(
        message.contains("browsing composite destination 'a,b'"),
        "{message}"
    );
    let answer = c.request(subscribe(conn, 2, "a,b", 10)).await;
    assert!(matches!(answer, Command::Response(_)), "{answer:?}");
    let mut got = [body_of(&c.next().await), body_of(&c.next().await)];
    got.sort();
    assert_eq!(got, [Some("to-a".to_string()), Some("to-b".to_string())]);
}

/// A composite consumer (`a,b`) as the failover transport replays it: with prefetch 0 first
/// (it gets nothing), then a ConsumerControl giving back its prefetch of 2, which is one window
/// for both members (two messages, not two from each). On a new connection its unacknowledged
/// messages come back redelivered, and one poisoned goes to the DLQ from its own member.
#[tokio::test]
async fn a_replayed_composite_consumer_gets_its_one_window_back_with_consumer_control() {
    let f = fixture(&[]);
    let conn = "ID:t-comp:4";
    let mut c = Client::connected(&f, conn).await;
    for (n, member) in ["a", "b", "a", "b"].into_iter().enumerate() {
        let answer = c.request(text(conn, member, n as i64 + 1, member)).await;
        assert!(matches!(answer, Command::Response(_)), "{answer:?}");
    }
    let depth = |f: &Fixture| f.broker.queue_depth("queue://a") + f.broker.queue_depth("queue://b");
    let answer = c.request(subscribe(conn, 1, "a,b", 0)).await;
    assert!(matches!(answer, Command::Response(_)), "{answer:?}");
    assert_eq!(depth(&f), 4, "prefetch 0: nothing dispatched");
    c.write(&consumer_control(conn, "a,b", 2)).await;
    let first = [body_of(&c.next().await), body_of(&c.next().await)];
    eventually("two dispatched", || depth(&f) == 2).await;
    // Still two after a round trip: one window of 2 for both members.
    let answer = c.request(text(conn, "c", 9, "sync")).await;
    assert!(matches!(answer, Command::Response(_)), "{answer:?}");
    assert_eq!(depth(&f), 2, "{first:?}");
    drop(c);
    eventually("the closed connection's deliveries back", || depth(&f) == 4).await;

    let mut c = Client::connected(&f, "ID:t-comp:5").await;
    let answer = c.request(subscribe("ID:t-comp:5", 1, "a,b", 10)).await;
    assert!(matches!(answer, Command::Response(_)), "{answer:?}");
    let mut redelivered = 0;
    let mut poisoned = None;
    for _ in 0..4 {
        let Command::MessageDispatch(d) = c.next().await else {
            panic!("expected four dispatches")
        };
        if d.redelivery_counter == 1 {
            redelivered += 1;
        }
        let m = d.message.unwrap();
        if poisoned.is_none() {
            poisoned = Some((m.message_id.unwrap(), m.destination.unwrap()));
        }
    }
    assert_eq!(redelivered, 2);
    let (id, destination) = poisoned.unwrap();
    c.write(&Command::MessageAck(MessageAck {
        destination: Some(OwDestination::queue("a,b")),
        consumer_id: Some(consumer("ID:t-comp:5", 1)),
        ack_type: 1,
        first_message_id: Some(id.clone()),
        last_message_id: Some(id),
        message_count: 1,
        ..Default::default()
    }))
    .await;
    eventually("the poisoned message on the DLQ", || {
        f.broker.queue_depth("queue://ActiveMQ.DLQ") == 1
    })
    .await;
    let (s, mut rx) = f.broker.open_session(None);
    s.subscribe(crate::broker::SubscribeRequest {
        id: "dlq".into(),
        destination: Destination::Queue("ActiveMQ.DLQ".into()),
        prefetch: 1,
        durable_name: None,
        selector: None,
        exclusive: false,
        priority: 0,
        no_local: false,
    })
    .unwrap();
    let d = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    let original = d
        .message
        .headers
        .iter()
        .find(|h| h.name == "original-destination")
        .map(|h| h.value.clone());
    assert_eq!(
        original.as_deref(),
        convert::core_destination(&destination)
            .ok()
            .map(|d| d.canonical())
            .as_deref()
    );
}

/// noLocal is about the client's connection (ActiveMQ compares the message's producer
/// connection id with the consumer's), which the failover transport keeps when it reconnects: a
/// noLocal queue consumer replayed on the new socket still does not get what its connection
/// sent before, which waits for other consumers.
#[tokio::test]
async fn a_no_local_consumer_replayed_after_a_reconnect_still_skips_its_connections_messages() {
    let f = fixture(&[]);
    let conn = "ID:t-nl:1";
    let no_local = || {
        let Command::ConsumerInfo(mut info) = subscribe(conn, 1, "nl", 10) else {
            unreachable!()
        };
        info.no_local = true;
        Command::ConsumerInfo(info)
    };
    let mut c = Client::connected(&f, conn).await;
    let answer = c.request(no_local()).await;
    assert!(matches!(answer, Command::Response(_)), "{answer:?}");
    let answer = c.request(text(conn, "nl", 1, "mine")).await;
    assert!(matches!(answer, Command::Response(_)), "{answer:?}");
    assert_eq!(f.broker.queue_depth("queue://nl"), 1);
    drop(c);

    let mut c = Client::connected(&f, conn).await;
    let answer = c.request(no_local()).await;
    assert!(matches!(answer, Command::Response(_)), "{answer:?}");
    // A round trip after the subscription: anything dispatched to it is queued before this.
    let answer = c.request(text(conn, "other", 2, "sync")).await;
    assert!(matches!(answer, Command::Response(_)), "{answer:?}");
    assert_eq!(
        f.broker.queue_depth("queue://nl"),
        1,
        "its own connection's message was dispatched to the noLocal consumer"
    );
    let mut other = Client::connected(&f, "ID:t-nl:2").await;
    other.request(subscribe("ID:t-nl:2", 1, "nl", 10)).await;
    assert_eq!(body_of(&other.next().await).as_deref(), Some("mine"));
}

/// A failover reconnect replays the connection, its sessions, producers and consumers in one
/// burst, without waiting for answers: what the session read together with ConnectionInfo is
/// served at once, not left in its buffer until the client writes again.
#[tokio::test]
async fn commands_read_together_with_connection_info_are_served() {
    let f = fixture(&[]);
    let conn = "ID:replay:1";
    let (mut c, session) = Client::open_serving(&f, 1 << 20, BytesMut::with_capacity(4096));
    assert!(matches!(c.read().await, Some(Command::WireFormatInfo(_))));
    c.write(&Command::WireFormatInfo(WireFormatInfo::ferromq(0, 0, 0)))
        .await;
    assert!(matches!(c.read().await, Some(Command::BrokerInfo(_))));
    let mut burst = BytesMut::new();
    let mut send = text(conn, "replayed", 1, "after the replay");
    if let Command::Message(m) = &mut send {
        m.command_id = 4;
        m.response_required = true;
    }
    for command in [
        Command::ConnectionInfo(super::super::ConnectionInfo {
            command_id: 1,
            connection_id: Some(ConnectionId {
                value: Some(conn.into()),
            }),
            ..Default::default()
        }),
        Command::SessionInfo(SessionInfo {
            command_id: 2,
            session_id: Some(SessionId {
                connection_id: Some(conn.into()),
                value: 1,
            }),
            ..Default::default()
        }),
        Command::ProducerInfo(super::super::ProducerInfo {
            command_id: 3,
            producer_id: Some(producer(conn)),
            ..Default::default()
        }),
        send,
    ] {
        encode(&command, c.format, &mut burst).unwrap();
    }
    c.write_raw(&burst).await;
    let answer = c.next().await;
    assert!(
        matches!(&answer, Command::Response(r) if r.correlation_id == 4),
        "{answer:?}"
    );
    assert_eq!(f.broker.queue_depth("queue://replayed"), 1);
    drop(c);
    assert!(tokio::time::timeout(WAIT, session).await.is_ok());
}

// ----- robustness: random plausible conversations ------------------------------------------

#[path = "session_conversations.rs"]
mod conversations;

/// A producer held back by producer flow control (its non-persistent sends fill
/// `memory_limit`, nobody consumes) whose client then goes away, with no inactivity monitor
/// (`wireFormat.maxInactivityDuration=0`): the broker reads nothing from it, so a keep-alive
/// written now and then finds out; its connection used to stay open until room came, which
/// without a consumer is never.
#[tokio::test]
async fn a_held_back_producer_that_vanishes_is_closed_even_without_an_inactivity_monitor() {
    let f = fixture_with(
        &[],
        BrokerOptions {
            memory_limit: 64 * 1024,
            ..BrokerOptions::default()
        },
    );
    let conn = "ID:held:1";
    let (c, session) = Client::open_watched(&f, 1 << 20);
    // No MaxInactivityDuration: no inactivity monitor, no keep-alives.
    let (mut c, answer) = c.handshake(conn, None, None).await;
    assert!(matches!(answer, Command::Response(_)), "{answer:?}");
    let body = "x".repeat(8 * 1024);
    for n in 1..=20 {
        let mut send = text(conn, "held", n, &body);
        if let Command::Message(m) = &mut send {
            m.persistent = false;
        }
        c.write(&send).await;
    }
    // 64 KiB of 8 KiB bodies fill memory_limit; the rest waits unread.
    eventually("memory_limit reached", || {
        f.broker.queue_depth("queue://held") >= 8
    })
    .await;
    assert!(f.broker.queue_depth("queue://held") < 20, "not held back");
    drop(c);
    let ended = tokio::time::timeout(WAIT, session).await;
    assert!(
        ended.is_ok(),
        "the held-back connection stayed open after its client left"
    );
}

/// The JMS client sends its first keep-alive only after the negotiated initial delay
/// (`MaxInactivityDurationInitalDelay`, 10 s by its default), as ActiveMQ's monitor expects:
/// a connection with a 2 s inactivity period that is silent until then is not closed, and
/// one silent past the delay and a period is.
#[tokio::test(start_paused = true)]
async fn the_inactivity_monitor_waits_for_the_initial_delay() {
    let f = fixture(&[]);
    let mut c = connected_with_inactivity(&f, "ID:quiet:1", 2000, 10_000).await;
    let start = tokio::time::Instant::now();
    // Silent from here on: the broker's keep-alives, then its ConnectionError, then the end.
    let mut refused = None;
    while let Some(command) = c.read().await {
        match command {
            Command::KeepAliveInfo(_) => {}
            Command::ConnectionError(e) => refused = Some(e),
            other => panic!("unexpected {other:?}"),
        }
    }
    let silent = start.elapsed();
    assert!(
        silent >= Duration::from_secs(12),
        "closed after {silent:?} of silence"
    );
    assert!(silent < Duration::from_secs(15), "open {silent:?}");
    assert!(refused.is_some(), "closed without a ConnectionError");
}

/// A message OpenWire cannot carry (here a correlation id of more than 65,535 bytes, which a
/// STOMP producer could once send, and a store may still hold) is dead-lettered, saying why,
/// and the consumer's connection stays open and gets the messages behind it. Closing it would
/// only have sent the message back to the queue, to fail the same way at every reconnect.
#[tokio::test]
async fn a_message_openwire_cannot_carry_is_dead_lettered_and_the_consumer_carries_on() {
    let f = fixture(&[]);
    let (s, _rx) = f.broker.open_session(None);
    for (body, correlation) in [("unwritable", "c".repeat(70_000)), ("after", "ok".into())] {
        let message = crate::broker::NewMessage {
            persistent: true,
            headers: vec![crate::store::Header::text("correlation-id", correlation)],
            body: bytes::Bytes::from(body),
            ..Default::default()
        };
        let queue = Destination::Queue("poison".into());
        s.send(&queue, message, None).unwrap().await.unwrap();
    }
    let conn = "ID:t-poison:1";
    let mut c = Client::connected(&f, conn).await;
    c.request(subscribe(conn, 1, "poison", 10)).await;
    assert_eq!(body_of(&c.next().await).as_deref(), Some("after"));
    eventually("the unwritable message on the DLQ", || {
        f.broker.queue_depth("queue://ActiveMQ.DLQ") == 1
    })
    .await;
    // The connection is still served.
    let answer = c.request(text(conn, "poison", 1, "more")).await;
    assert!(matches!(answer, Command::Response(_)), "{answer:?}");
}
