//! The OpenWire session against a real broker core, over an in-memory stream, speaking the
//! codec the way a stock client does.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;
use crate::broker::BrokerOptions;
use crate::protocol::openwire::{
    encode_text_body, ConnectionId, ConsumerInfo, DataStructure, Message, MessageId, MessageKind,
    ProducerId, SessionId, SessionInfo,
};

const WAIT: Duration = Duration::from_secs(5);

struct Fixture {
    _dir: tempfile::TempDir,
    broker: Broker,
    options: Arc<OpenWireOptions>,
}

fn fixture(users: &[(&str, &str)]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), BrokerOptions::default());
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
}

impl Client {
    fn open(f: &Fixture) -> Client {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let broker = f.broker.clone();
        let options = f.options.clone();
        tokio::spawn(async move {
            serve(
                theirs,
                BytesMut::new(),
                broker,
                options,
                "127.0.0.1:1".parse().unwrap(),
            )
            .await
        });
        Client {
            io: ours,
            input: BytesMut::new(),
            format: Format::new(12),
            next_id: 1,
        }
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
        let mut c = Client::open(f);
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
            client_id: Some(format!("client-{connection}")),
            user_name: user.map(|u| u.0.to_string()),
            password: user.map(|u| u.1.to_string()),
            ..Default::default()
        }))
        .await;
        let answer = c.next().await;
        (c, answer)
    }

    async fn connected(f: &Fixture, connection: &str) -> Client {
        let (mut c, answer) = Client::connect(f, connection, None).await;
        assert!(matches!(answer, Command::Response(_)), "{answer:?}");
        c.write(&Command::SessionInfo(SessionInfo {
            session_id: Some(SessionId {
                connection_id: Some(connection.into()),
                value: 1,
            }),
            ..Default::default()
        }))
        .await;
        c
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
    // The application consumed only the first before the consumer closed.
    c.write(&Command::RemoveInfo(RemoveInfo {
        object_id: Some(DataStructure::ConsumerId(consumer("ID:c-6:1", 1))),
        last_delivered_sequence_id: tags[0],
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
    assert_eq!(
        counters,
        vec![("m1".into(), 1), ("m2".into(), 0), ("m3".into(), 0)]
    );
}

#[tokio::test]
async fn absurd_timeouts_from_a_client_are_bounded_not_fatal() {
    let f = fixture(&[]);
    // A client asking for a 1 ms inactivity period.
    let mut c = Client::open(&f);
    assert!(matches!(c.read().await, Some(Command::WireFormatInfo(_))));
    let mut wire = WireFormatInfo::ferromq(0, 1, 0);
    wire.version = 12;
    c.write(&Command::WireFormatInfo(wire)).await;
    assert!(matches!(c.read().await, Some(Command::BrokerInfo(_))));
    let id = c.id();
    c.write(&Command::ConnectionInfo(super::super::ConnectionInfo {
        command_id: id,
        response_required: true,
        connection_id: Some(ConnectionId {
            value: Some("ID:odd:1".into()),
        }),
        ..Default::default()
    }))
    .await;
    assert!(matches!(c.next().await, Command::Response(_)));
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
