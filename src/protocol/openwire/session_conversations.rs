//! Random but plausible conversations with a real broker core, checking the project's rule:
//! the process never panics on input; bad input gets a clear error, and the broker and every
//! other connection carry on.
//!
//! After a valid handshake and `ConnectionInfo`, a client sends 10 to 60 commands: sessions,
//! producers, consumers (browsers, durable subscriptions, exclusive, noLocal, priorities,
//! prefetch 0, -1 or huge, selectors valid, invalid and absurdly deep), sends of every message
//! class (persistent or not, in a transaction or not, expiring, grouped, compressed, scheduled,
//! with a reply-to), acks of every type naming messages really dispatched to it (or never
//! dispatched), pulls, transactions (every operation, local and XA), removals, durable
//! unsubscribes, consumer controls, temporary destinations, keep-alives, now and then a
//! second `ConnectionInfo`, a `ShutdownInfo` or a wholly random command. Ids come from small
//! pools tied to the connection, so most name things that exist and some do not.
//!
//! Checked: the session's task never panics; every request is answered (an
//! `ExceptionResponse` is fine) unless the connection was closed, and every
//! `ExceptionResponse` and `ConnectionError` names its problem; another connection then sends
//! and receives a persistent message; once the client leaves (half-closing, vanishing,
//! closing as a JMS client does, or replaced by a failover reconnect with its connection id)
//! the session ends.
//!
//! 64 cases (about 3 s in a debug build) unless `PROPTEST_CASES` says otherwise;
//! `PROPTEST_RNG_SEED=<n>` makes a run repeatable.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::strategy::Union;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};

use super::{body_of, fixture_with, subscribe, text, Client, Fixture, WAIT};
use crate::broker::{BrokerOptions, DeadLetterStrategy};
use crate::protocol::openwire::tests as codec;
use crate::protocol::openwire::{
    decode, encode, encode_text_body, BaseCommand, Command, ConnectionId, ConnectionInfo,
    ConsumerControl, ConsumerId, ConsumerInfo, DataStructure, Destination, DestinationInfo,
    DestinationKind, Format, FrameReader, LocalTransactionId, Message, MessageAck, MessageId,
    MessageKind, MessagePull, PrimitiveMap, PrimitiveValue, ProducerId, ProducerInfo, RemoveInfo,
    RemoveSubscriptionInfo, SessionId, SessionInfo, TransactionId, TransactionInfo,
    XaTransactionId,
};

/// The fuzzed connection's id: most ids in a conversation are drawn from it.
const CONN: &str = "ID:fuzz:1";
/// Another connection's id: what is named with it is not this connection's.
const STRANGER: &str = "ID:stranger:1";
/// The connection that checks the broker still serves, and its queue.
const WITNESS: &str = "ID:fuzz-witness:1";
const WITNESS_QUEUE: &str = "fuzz-witness";
/// How long the session may take to end once its client has gone.
const END: Duration = Duration::from_secs(10);

/// A weighted union of boxed strategies (boxed: the value trees are large).
macro_rules! weighted {
    ($($w:expr => $s:expr),+ $(,)?) => {
        Union::new_weighted(vec![$(($w, $s.boxed())),+]).boxed()
    };
}

fn now_ms() -> i64 {
    super::now_ms()
}

// --- pools -----------------------------------------------------------------------------

fn connection_ref() -> BoxedStrategy<Option<String>> {
    weighted![
        14 => Just(Some(CONN.to_string())),
        1 => Just(Some(STRANGER.to_string())),
        1 => Just(None),
        1 => Just(Some(String::new())),
    ]
}

fn connection_id() -> BoxedStrategy<Option<ConnectionId>> {
    weighted![
        10 => connection_ref().prop_map(|value| Some(ConnectionId { value })),
        1 => Just(None),
    ]
}

/// One of `common` mostly, sometimes anything.
fn small(common: &'static [i64]) -> BoxedStrategy<i64> {
    weighted![20 => select(common), 1 => any::<i64>()]
}

fn session_id() -> BoxedStrategy<SessionId> {
    (connection_ref(), small(&[1, 1, 1, 1, 1, 1, 2, -1, 0]))
        .prop_map(|(connection_id, value)| SessionId {
            connection_id,
            value,
        })
        .boxed()
}

fn consumer_id() -> BoxedStrategy<ConsumerId> {
    (
        connection_ref(),
        small(&[1, 1, 1, 1, 1, 1, 2, -1]),
        small(&[1, 1, 1, 1, 1, 2, 2, 3, 0, -1]),
    )
        .prop_map(|(connection_id, session_id, value)| ConsumerId {
            connection_id,
            session_id,
            value,
        })
        .boxed()
}

fn producer_id() -> BoxedStrategy<ProducerId> {
    (
        connection_ref(),
        small(&[1, 1, 1, 1, 1, 1, 2, -1]),
        small(&[1, 1, 1, 1, 2, 3, 0]),
    )
        .prop_map(|(connection_id, session_id, value)| ProducerId {
            connection_id,
            value,
            session_id,
        })
        .boxed()
}

fn named(kind: DestinationKind, name: &str) -> Option<Destination> {
    Some(Destination {
        kind,
        physical_name: Some(name.to_string()),
    })
}

fn destination() -> BoxedStrategy<Option<Destination>> {
    use DestinationKind::*;
    let pool: Vec<(u32, Option<Destination>)> = vec![
        (60, named(Queue, "q1")),
        (20, named(Queue, "q2")),
        (30, named(Topic, "t1")),
        (2, named(Topic, "t.>")),
        (1, named(Topic, "t.*")),
        (1, named(Topic, "t.x")),
        (6, named(TempQueue, &format!("{CONN}:1"))),
        (2, named(TempTopic, &format!("{CONN}:2"))),
        (1, named(TempQueue, &format!("{STRANGER}:1"))),
        (3, named(Queue, "q1,q2")),
        (1, named(Queue, "q1,topic://t1")),
        (1, named(Topic, "t1,t.x")),
        (1, named(Topic, "VirtualTopic.v")),
        (1, named(Queue, "Consumer.a.VirtualTopic.v")),
        (1, named(Queue, "ActiveMQ.DLQ")),
        (
            1,
            named(
                Topic,
                "ActiveMQ.Advisory.TempQueue,ActiveMQ.Advisory.TempTopic",
            ),
        ),
        (1, named(Topic, "ActiveMQ.Advisory.Consumer.Queue.q1")),
        (1, named(Topic, "ActiveMQ.Scheduler.Management")),
        (1, named(Queue, "")),
        (1, None),
        (
            1,
            Some(Destination {
                kind: Queue,
                physical_name: None,
            }),
        ),
        (1, named(Queue, "ünï€😀\u{0}")),
        (1, named(Queue, "q1,,q2")),
        (1, named(Queue, "queue://q1,qeue://x")),
        (1, named(Queue, ">")),
        (1, named(Topic, ">")),
        (1, named(Topic, "t.>.x")),
        (1, named(Queue, "temp-queue://x")),
    ];
    let odd = (
        select(&[Queue, Topic, TempQueue, TempTopic][..]),
        codec::string(),
    )
        .prop_map(|(kind, name)| named(kind, &name));
    let mut arms: Vec<(u32, BoxedStrategy<Option<Destination>>)> = pool
        .into_iter()
        .map(|(w, d)| (w, Just(d).boxed()))
        .collect();
    arms.push((2, odd.boxed()));
    Union::new_weighted(arms).boxed()
}

fn local(connection: Option<&str>, value: i64) -> TransactionId {
    TransactionId::Local(LocalTransactionId {
        value,
        connection_id: Some(ConnectionId {
            value: connection.map(str::to_string),
        }),
    })
}

fn transaction_id() -> BoxedStrategy<TransactionId> {
    weighted![
        12 => (1i64..=3).prop_map(|v| local(Some(CONN), v)),
        1 => Just(local(Some(STRANGER), 1)),
        1 => Just(local(None, 1)),
        1 => Just(TransactionId::Local(LocalTransactionId { value: 1, connection_id: None })),
        1 => any::<i64>().prop_map(|v| local(Some(CONN), v)),
        1 => (any::<i32>(), codec::opt_bytes(), codec::opt_bytes()).prop_map(|(f, g, b)| {
            TransactionId::Xa(XaTransactionId {
                format_id: f,
                global_transaction_id: g,
                branch_qualifier: b,
            })
        }),
    ]
}

fn maybe_transaction() -> BoxedStrategy<Option<TransactionId>> {
    prop::option::weighted(0.2, transaction_id()).boxed()
}

fn prefetch() -> BoxedStrategy<i32> {
    weighted![
        10 => Just(10),
        3 => Just(1),
        2 => Just(0),
        2 => select(&[2, 1000, -1, i32::MAX, i32::MIN][..]),
        1 => any::<i32>(),
    ]
}

fn selector() -> BoxedStrategy<Option<String>> {
    let valid = select(
        &[
            "a > 1",
            "color = 'red'",
            "a > 1 AND color <> 'blue'",
            "JMSPriority > 4",
            "JMSXGroupID IS NOT NULL",
            "JMSType = 'x'",
            "a IN (1, 2)",
            "color LIKE 'r%'",
            "a BETWEEN 0 AND 2",
            "JMSXDeliveryCount > 1",
            "NOT (a = 1)",
            "JMSCorrelationID IS NULL",
            "JMSDeliveryMode = 'PERSISTENT'",
            "TRUE",
        ][..],
    );
    let invalid = select(
        &[
            "a > ",
            "((((",
            "a LIKE",
            "color = 'unterminated",
            "1 +",
            "a IN ()",
            "\u{0}",
            "a = 1 OR OR b",
            "JMSMessageID LIKE 'x' ESCAPE 'yy'",
            "a / 0 = 1",
            "0x",
            "1e999999 > a",
        ][..],
    );
    // Hostile nesting and chains, around the parser's depth limit and far past it.
    let deep =
        (select(&[10usize, 99, 100, 101, 10_000][..]), 0..4u8).prop_map(|(n, shape)| match shape {
            0 => format!("{}a > 1{}", "(".repeat(n), ")".repeat(n)),
            1 => format!("{}a > 1", "NOT ".repeat(n)),
            2 => format!("a = 1{}", " OR a = 1".repeat(n)),
            _ => format!("a = 1{}", " + 1".repeat(n)),
        });
    weighted![
        30 => Just(None),
        1 => Just(Some(String::new())),
        1 => Just(Some("   ".to_string())),
        6 => valid.prop_map(|s| Some(s.to_string())),
        3 => invalid.prop_map(|s| Some(s.to_string())),
        1 => deep.prop_map(Some),
        1 => ".{0,40}".prop_map(Some),
    ]
}

fn subscription_name() -> BoxedStrategy<Option<String>> {
    weighted![
        8 => Just(None),
        3 => Just(Some("sub1".to_string())),
        1 => Just(Some("sub2".to_string())),
        1 => Just(Some(String::new())),
        1 => codec::string().prop_map(Some),
    ]
}

fn client_id() -> BoxedStrategy<Option<String>> {
    weighted![
        8 => Just(Some("client-fuzz".to_string())),
        2 => Just(None),
        1 => Just(Some("client-other".to_string())),
    ]
}

// --- messages --------------------------------------------------------------------------

/// What `jms.useCompression` makes of `data`: a zlib stream.
fn deflate(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(data).unwrap();
    z.finish().unwrap()
}

fn text_body(text: Option<&str>) -> Bytes {
    let mut out = BytesMut::new();
    encode_text_body(text, &mut out).unwrap();
    out.freeze()
}

fn map_body(map: &PrimitiveMap) -> Option<Bytes> {
    let mut out = BytesMut::new();
    map.encode(&mut out).ok().map(|()| out.freeze())
}

/// A message's class, content and `compressed` flag.
fn body() -> BoxedStrategy<(MessageKind, Option<Bytes>, bool)> {
    let garbage = || prop::collection::vec(any::<u8>(), 0..64);
    weighted![
        8 => codec::string().prop_map(|t| (MessageKind::Text, Some(text_body(Some(&t))), false)),
        1 => Just((MessageKind::Text, None, false)),
        1 => Just((MessageKind::Text, Some(text_body(None)), false)),
        2 => codec::string().prop_map(|t| {
            (MessageKind::Text, Some(deflate(&text_body(Some(&t))).into()), true)
        }),
        3 => garbage().prop_map(|b| (MessageKind::Bytes, Some(b.into()), false)),
        1 => garbage().prop_map(|b| {
            let mut content = (b.len() as i32).to_be_bytes().to_vec();
            content.extend(deflate(&b));
            (MessageKind::Bytes, Some(content.into()), true)
        }),
        2 => codec::primitive_map().prop_map(|m| (MessageKind::Map, map_body(&m), false)),
        2 => Just((MessageKind::Message, None, false)),
        2 => (codec::message_kind(), codec::opt_bytes(), any::<bool>()),
    ]
}

/// A property the broker or a selector reads, with plausible and implausible values.
fn known_property() -> BoxedStrategy<(String, PrimitiveValue)> {
    use PrimitiveValue as V;
    let named = |name: &'static str| move |v| (name.to_string(), v);
    weighted![
        4 => (-3i32..5).prop_map(V::Int).prop_map(named("a")),
        2 => select(&["red", "blue", ""][..]).prop_map(|c| V::String(c.into())).prop_map(named("color")),
        2 => select(&[0i64, 20, -5, i64::MAX, i64::MIN][..]).prop_map(V::Long).prop_map(named("AMQ_SCHEDULED_DELAY")),
        1 => select(&["10", "x", ""][..]).prop_map(|d| V::String(d.into())).prop_map(named("AMQ_SCHEDULED_DELAY")),
        1 => select(&[0i64, 10, -1, i64::MAX][..]).prop_map(V::Long).prop_map(named("AMQ_SCHEDULED_PERIOD")),
        1 => select(&[0i32, 1, 3, -1, i32::MAX][..]).prop_map(V::Int).prop_map(named("AMQ_SCHEDULED_REPEAT")),
        1 => Just(V::String("* * * * *".into())).prop_map(named("AMQ_SCHEDULED_CRON")),
        1 => select(&["BROWSE", "REMOVE", "REMOVEALL", "x"][..]).prop_map(|a| V::String(a.into())).prop_map(named("AMQ_SCHEDULER_ACTION")),
        1 => any::<i64>().prop_map(V::Long).prop_map(named("ACTION_START_TIME")),
        1 => any::<i64>().prop_map(V::Long).prop_map(named("ACTION_END_TIME")),
        1 => codec::string().prop_map(V::String).prop_map(named("scheduledJobId")),
        1 => codec::string().prop_map(V::String).prop_map(named("JMSXGroupID")),
        1 => any::<i32>().prop_map(V::Int).prop_map(named("JMSXGroupSeq")),
    ]
}

fn properties() -> BoxedStrategy<Option<Bytes>> {
    weighted![
        8 => Just(None),
        6 => (
            prop::collection::vec(known_property(), 1..4),
            prop::option::weighted(0.3, codec::primitive_map()),
        )
            .prop_map(|(known, extra)| {
                let mut map = extra.unwrap_or_default();
                map.entries.extend(known);
                map_body(&map)
            }),
        1 => codec::opt_bytes(),
    ]
}

/// The shape of a sent message's id.
#[derive(Debug, Clone)]
enum IdShape {
    /// Its producer's (sometimes with a text view), numbered when sent.
    Plausible(Sequence, Option<String>),
    Absent,
    Random(MessageId),
}

/// The producer sequence number of a message id, given when the message is sent.
#[derive(Debug, Clone, Copy)]
enum Sequence {
    /// The producer's next, as a JMS client numbers its sends.
    Next,
    /// That many before its latest: a replay (a duplicate), as after a failover.
    Replay(u8),
    /// This one.
    Given(i64),
}

fn id_shape() -> BoxedStrategy<IdShape> {
    let sequence = weighted![
        16 => Just(Sequence::Next),
        3 => (0u8..3).prop_map(Sequence::Replay),
        1 => any::<i64>().prop_map(Sequence::Given),
    ];
    weighted![
        20 => (sequence, prop::option::weighted(0.05, codec::string()))
            .prop_map(|(sequence, text)| IdShape::Plausible(sequence, text)),
        1 => Just(IdShape::Absent),
        1 => codec::message_id().prop_map(IdShape::Random),
    ]
}

fn message() -> BoxedStrategy<(Message, Sequence)> {
    let ids = (
        any::<bool>(),
        prop::option::weighted(0.95, producer_id()),
        id_shape(),
        destination(),
        maybe_transaction(),
        any::<bool>(),
    );
    let headers = (
        weighted![
            6 => Just(None),
            2 => Just(Some("g1".to_string())),
            1 => Just(Some("g2".to_string())),
            1 => Just(Some(String::new())),
        ],
        weighted![6 => Just(0), 2 => 1..=3i32, 1 => Just(-1), 1 => any::<i32>()],
        // Relative to when the case runs: already expired, expiring during it, later.
        weighted![
            12 => Just(0),
            1 => select(&[-1000i64, 30, 60_000][..]).prop_map(|offset| now_ms() + offset),
            1 => select(&[1, -1, i64::MAX, i64::MIN][..]),
            1 => any::<i64>(),
        ],
        weighted![10 => 0u8..=9, 1 => any::<u8>()],
        prop::option::weighted(0.2, destination()).prop_map(Option::flatten),
        prop::option::weighted(0.2, codec::string()),
        weighted![6 => Just(0), 1 => any::<i64>()],
        weighted![6 => Just(0), 1 => any::<i32>()],
        prop::option::weighted(0.1, codec::string()),
    );
    let rest = (
        body(),
        properties(),
        prop::option::weighted(0.05, destination()).prop_map(Option::flatten),
        prop::option::weighted(0.05, consumer_id()),
    );
    (ids, headers, rest)
        .prop_map(|(ids, headers, rest)| {
            let (rr, producer, shape, destination, transaction, persistent) = ids;
            let (
                group,
                group_sequence,
                expiration,
                priority,
                reply_to,
                correlation,
                timestamp,
                redeliveries,
                jms_type,
            ) = headers;
            let ((kind, content, compressed), properties, original, target) = rest;
            let (message_id, sequence) = match shape {
                IdShape::Plausible(sequence, text_view) => (
                    Some(MessageId {
                        text_view,
                        producer_id: producer.clone(),
                        producer_sequence_id: 0,
                        broker_sequence_id: 0,
                    }),
                    sequence,
                ),
                IdShape::Absent => (None, Sequence::Given(0)),
                IdShape::Random(id) => {
                    let given = Sequence::Given(id.producer_sequence_id);
                    (Some(id), given)
                }
            };
            let message = Message {
                response_required: rr,
                kind,
                producer_id: producer,
                destination,
                transaction_id: transaction,
                original_destination: original,
                message_id,
                group_id: group,
                group_sequence,
                correlation_id: correlation,
                persistent,
                expiration,
                priority,
                reply_to,
                timestamp,
                jms_type,
                content,
                marshalled_properties: properties,
                target_consumer_id: target,
                compressed,
                redelivery_counter: redeliveries,
                ..Message::default()
            };
            (message, sequence)
        })
        .boxed()
}

/// A message from the codec's own strategy (any field, any id), pointed at this
/// connection's producers and destinations unless `wild`.
fn odd_message() -> BoxedStrategy<Command> {
    (
        codec::message(),
        producer_id(),
        destination(),
        prop::bool::weighted(0.3),
    )
        .prop_map(|(mut m, producer, destination, wild)| {
            if !wild {
                if let Some(id) = &mut m.message_id {
                    id.producer_id = Some(producer.clone());
                }
                m.producer_id = Some(producer);
                m.destination = destination;
            }
            Command::Message(Box::new(m))
        })
        .boxed()
}

// --- steps -----------------------------------------------------------------------------

/// A message id an ack names.
#[derive(Debug, Clone)]
enum MessageRef {
    /// One of those dispatched to this connection so far (absent while there are none).
    Dispatched(Index),
    /// One the broker never gave.
    Made(MessageId),
    Absent,
}

#[derive(Debug, Clone)]
enum Step {
    /// A command, given the next command id.
    Send(Command),
    /// A command as generated, command id included.
    Wild(Command),
    /// A message, numbered in its producer's sequence.
    Message(Box<Message>, Sequence),
    /// A MessageAck naming dispatched messages; `own_consumer`: from the consumer that
    /// got `last`.
    Ack {
        ack: MessageAck,
        first: MessageRef,
        last: MessageRef,
        own_consumer: bool,
    },
    /// A RemoveInfo whose last delivered sequence id is a dispatched message's, if
    /// `last` names one (and there is one).
    Remove {
        remove: RemoveInfo,
        last: Option<Index>,
    },
    /// A request whose answer is awaited: the session read everything before it.
    Sync,
    /// Time passes: pull timeouts, expirations, scheduled deliveries.
    Pause(u64),
}

fn message_ref() -> BoxedStrategy<MessageRef> {
    weighted![
        10 => any::<Index>().prop_map(MessageRef::Dispatched),
        1 => codec::message_id().prop_map(MessageRef::Made),
        1 => Just(MessageRef::Absent),
    ]
}

fn consumer_info() -> BoxedStrategy<Command> {
    let a = (
        any::<bool>(),
        prop::option::weighted(0.97, consumer_id()),
        prop::bool::weighted(0.15),
        destination(),
        prefetch(),
        select(&[0, 0, -1, 10, i32::MAX][..]),
        any::<bool>(),
        selector(),
    );
    let b = (
        subscription_name(),
        prop::option::weighted(0.1, client_id()).prop_map(Option::flatten),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.1),
        weighted![6 => Just(0u8), 2 => select(&[4u8, 10, 127, 128, 255][..]), 1 => any::<u8>()],
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.05),
    );
    (a, b)
        .prop_map(|(a, b)| {
            Command::ConsumerInfo(ConsumerInfo {
                response_required: a.0,
                consumer_id: a.1,
                browser: a.2,
                destination: a.3,
                prefetch_size: a.4,
                maximum_pending_message_limit: a.5,
                dispatch_async: a.6,
                selector: a.7,
                subscription_name: b.0,
                client_id: b.1,
                no_local: b.2,
                exclusive: b.3,
                retroactive: b.4,
                priority: b.5,
                optimized_acknowledge: b.6,
                no_range_acks: b.7,
                network_subscription: b.8,
                ..ConsumerInfo::default()
            })
        })
        .boxed()
}

fn ack() -> BoxedStrategy<Step> {
    let ack = (
        any::<bool>(),
        destination(),
        maybe_transaction(),
        prop::option::weighted(0.97, consumer_id()),
        weighted![4 => Just(2u8), 3 => Just(4u8), 6 => 0u8..=7, 1 => any::<u8>()],
        weighted![
            8 => 1..=3i32,
            1 => select(&[0, -1, i32::MAX, i32::MIN][..]),
            1 => any::<i32>(),
        ],
        prop::option::weighted(0.1, codec::throwable()),
    )
        .prop_map(
            |(rr, destination, transaction, consumer, kind, count, cause)| MessageAck {
                response_required: rr,
                destination,
                transaction_id: transaction,
                consumer_id: consumer,
                ack_type: kind,
                message_count: count,
                poison_cause: cause,
                ..MessageAck::default()
            },
        );
    (ack, message_ref(), message_ref(), prop::bool::weighted(0.8))
        .prop_map(|(ack, first, last, own_consumer)| Step::Ack {
            ack,
            first,
            last,
            own_consumer,
        })
        .boxed()
}

fn pull() -> BoxedStrategy<Command> {
    (
        any::<bool>(),
        prop::option::weighted(0.97, consumer_id()),
        destination(),
        weighted![
            3 => Just(-1i64),
            3 => Just(0),
            3 => 1..=50i64,
            1 => select(&[i64::MAX, i64::MIN][..]),
            1 => any::<i64>(),
        ],
        prop::option::weighted(0.1, codec::string()),
        prop::option::weighted(0.1, codec::message_id()),
    )
        .prop_map(|(rr, consumer, destination, timeout, correlation, id)| {
            Command::MessagePull(MessagePull {
                response_required: rr,
                consumer_id: consumer,
                destination,
                timeout,
                correlation_id: correlation,
                message_id: id,
                ..MessagePull::default()
            })
        })
        .boxed()
}

fn transaction() -> BoxedStrategy<Command> {
    (
        any::<bool>(),
        connection_id(),
        prop::option::weighted(0.97, transaction_id()),
        weighted![
            4 => Just(0u8),
            4 => Just(2u8),
            3 => Just(4u8),
            3 => 0u8..=7,
            1 => any::<u8>(),
        ],
    )
        .prop_map(|(rr, connection, id, kind)| {
            Command::TransactionInfo(TransactionInfo {
                response_required: rr,
                connection_id: connection,
                transaction_id: id,
                transaction_type: kind,
                ..TransactionInfo::default()
            })
        })
        .boxed()
}

fn remove() -> BoxedStrategy<Step> {
    let object = weighted![
        5 => consumer_id().prop_map(DataStructure::ConsumerId),
        2 => session_id().prop_map(DataStructure::SessionId),
        2 => producer_id().prop_map(DataStructure::ProducerId),
        1 => Just(DataStructure::ConnectionId(ConnectionId { value: Some(CONN.into()) })),
        1 => Just(DataStructure::ConnectionId(ConnectionId { value: Some(STRANGER.into()) })),
        1 => destination().prop_map(|d| DataStructure::Destination(d.unwrap_or_default())),
        1 => codec::message_id().prop_map(DataStructure::MessageId),
        1 => transaction_id().prop_map(DataStructure::TransactionId),
    ];
    (
        any::<bool>(),
        prop::option::weighted(0.97, object),
        weighted![4 => Just(-1i64), 1 => Just(0), 1 => any::<i64>()],
        prop::option::weighted(0.5, any::<Index>()),
    )
        .prop_map(|(rr, object, last_delivered, last)| Step::Remove {
            remove: RemoveInfo {
                response_required: rr,
                object_id: object,
                last_delivered_sequence_id: last_delivered,
                ..RemoveInfo::default()
            },
            last,
        })
        .boxed()
}

fn step() -> BoxedStrategy<Step> {
    use DestinationKind::*;
    let send = |s: BoxedStrategy<Command>| s.prop_map(Step::Send);
    let temp = weighted![
        4 => Just(named(TempQueue, &format!("{CONN}:1"))),
        2 => Just(named(TempTopic, &format!("{CONN}:2"))),
        1 => Just(named(TempQueue, &format!("{CONN}:3"))),
        1 => Just(named(TempQueue, &format!("{STRANGER}:1"))),
        2 => destination(),
    ];
    weighted![
        100 => message().prop_map(|(m, sequence)| Step::Message(Box::new(m), sequence)),
        56 => send(consumer_info()),
        56 => ack(),
        24 => send(pull()),
        32 => Just(Step::Sync),
        12 => (1u64..=30).prop_map(Step::Pause),
        32 => send(transaction()),
        24 => remove(),
        16 => send((any::<bool>(), prop::option::weighted(0.95, producer_id()), destination(),
                    select(&[0, 0, 1, 1024, -1, i32::MAX][..]), any::<bool>())
            .prop_map(|(rr, id, destination, window, dispatch_async)| {
                Command::ProducerInfo(ProducerInfo {
                    response_required: rr,
                    producer_id: id,
                    destination,
                    window_size: window,
                    dispatch_async,
                    ..ProducerInfo::default()
                })
            }).boxed()),
        12 => send((any::<bool>(), prop::option::weighted(0.95, session_id()))
            .prop_map(|(rr, id)| Command::SessionInfo(SessionInfo {
                response_required: rr,
                session_id: id,
                ..SessionInfo::default()
            })).boxed()),
        12 => send((any::<bool>(), connection_id(), temp,
                    weighted![4 => Just(0u8), 3 => Just(1u8), 1 => any::<u8>()],
                    select(&[0i64, -1, 1000][..]))
            .prop_map(|(rr, connection, destination, operation, timeout)| {
                Command::DestinationInfo(DestinationInfo {
                    response_required: rr,
                    connection_id: connection,
                    destination,
                    operation_type: operation,
                    timeout,
                    ..DestinationInfo::default()
                })
            }).boxed()),
        8 => send((any::<bool>(), connection_id(), subscription_name(), client_id())
            .prop_map(|(rr, connection, name, client)| {
                Command::RemoveSubscriptionInfo(RemoveSubscriptionInfo {
                    response_required: rr,
                    connection_id: connection,
                    subscription_name: name,
                    client_id: client,
                    ..RemoveSubscriptionInfo::default()
                })
            }).boxed()),
        12 => send((any::<bool>(), destination(), prop::option::weighted(0.97, consumer_id()),
                    prefetch(), prop::array::uniform4(prop::bool::weighted(0.2)))
            .prop_map(|(rr, destination, consumer, prefetch, flags)| {
                Command::ConsumerControl(ConsumerControl {
                    response_required: rr,
                    destination,
                    consumer_id: consumer,
                    prefetch,
                    close: flags[0],
                    flush: flags[1],
                    start: flags[2],
                    stop: flags[3],
                    ..ConsumerControl::default()
                })
            }).boxed()),
        8 => send(any::<bool>().prop_map(|rr| Command::KeepAliveInfo(BaseCommand {
            command_id: 0,
            response_required: rr,
        })).boxed()),
        8 => send(odd_message()),
        8 => codec::command().prop_map(Step::Wild),
        1 => send(Just(Command::ConnectionInfo(ConnectionInfo {
            response_required: true,
            connection_id: Some(ConnectionId { value: Some(CONN.into()) }),
            ..ConnectionInfo::default()
        })).boxed()),
        1 => send(Just(Command::ShutdownInfo(BaseCommand::default())).boxed()),
    ]
}

/// How the fuzzed client leaves.
#[derive(Debug, Clone, Copy)]
enum Ending {
    /// It closes its side of the stream, still reading.
    HalfClose,
    /// It vanishes: the stream is dropped.
    Vanish,
    /// As a JMS client closes: RemoveInfo of the connection, answered, then ShutdownInfo.
    JmsClose,
    /// Its failover transport reconnects with the same connection id (the stale session
    /// is closed by the broker), then the new connection vanishes.
    Replaced,
}

#[derive(Debug, Clone)]
struct Case {
    client_id: Option<String>,
    scheduler_support: bool,
    max_redeliveries: u32,
    individual_dlq: bool,
    steps: Vec<Step>,
    ending: Ending,
}

fn case() -> impl Strategy<Value = Case> {
    (
        client_id(),
        any::<bool>(),
        select(&[0u32, 1, 6][..]),
        any::<bool>(),
        prop::collection::vec(step(), 10..60),
        select(
            &[
                Ending::HalfClose,
                Ending::Vanish,
                Ending::JmsClose,
                Ending::Replaced,
            ][..],
        ),
    )
        .prop_map(
            |(client_id, scheduler_support, max_redeliveries, individual_dlq, steps, ending)| {
                Case {
                    client_id,
                    scheduler_support,
                    max_redeliveries,
                    individual_dlq,
                    steps,
                    ending,
                }
            },
        )
}

// --- running a conversation ------------------------------------------------------------

/// Gives `command` the command id `id` (a `WireFormatInfo` has none).
fn stamp(command: &mut Command, id: i32) {
    macro_rules! set {
        ($($variant:ident),+) => {
            match command {
                $(Command::$variant(c) => c.command_id = id,)+
                _ => {}
            }
        };
    }
    set!(
        ConnectionInfo,
        SessionInfo,
        ConsumerInfo,
        ProducerInfo,
        TransactionInfo,
        DestinationInfo,
        RemoveSubscriptionInfo,
        KeepAliveInfo,
        ShutdownInfo,
        RemoveInfo,
        ConsumerControl,
        MessagePull,
        MessageAck,
        Message
    );
}

/// What the broker wrote to the fuzzed client.
#[derive(Default)]
struct Heard {
    /// (consumer, message id) of every MessageDispatch with a message.
    dispatched: Vec<(ConsumerId, MessageId)>,
    /// Correlation ids of Responses and ExceptionResponses.
    answered: HashSet<i32>,
    /// The broker closed the stream (or it broke).
    closed: bool,
    problems: Vec<String>,
}

fn lock(heard: &StdMutex<Heard>) -> std::sync::MutexGuard<'_, Heard> {
    heard.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads (and mostly discards) what the broker writes, so that it never waits on a full
/// pipe, noting dispatches and answers.
async fn listen(mut io: ReadHalf<DuplexStream>, mut input: BytesMut, heard: Arc<StdMutex<Heard>>) {
    let reader = FrameReader::new(1 << 26);
    let format = Format::new(12);
    loop {
        loop {
            let frame = match reader.next_frame(&mut input) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    let mut h = lock(&heard);
                    h.problems
                        .push(format!("the broker wrote a bad frame: {e}"));
                    h.closed = true;
                    return;
                }
            };
            let command = match decode(&frame, format) {
                Ok(command) => command,
                Err(e) => {
                    let mut h = lock(&heard);
                    h.problems
                        .push(format!("the broker wrote an undecodable frame: {e}"));
                    h.closed = true;
                    return;
                }
            };
            let mut h = lock(&heard);
            let unexplained = |t: &Option<super::super::Throwable>| {
                t.as_ref().is_none_or(|t| {
                    t.class_name.as_deref().is_none_or(str::is_empty)
                        || t.message.as_deref().is_none_or(|m| m.trim().is_empty())
                })
            };
            match command {
                Command::MessageDispatch(d) => {
                    if let (Some(consumer), Some(id)) =
                        (d.consumer_id, d.message.and_then(|m| m.message_id))
                    {
                        h.dispatched.push((consumer, id));
                    }
                }
                Command::Response(r) => {
                    h.answered.insert(r.correlation_id);
                }
                // The answer to an XA recovery scan.
                Command::DataArrayResponse(r) => {
                    h.answered.insert(r.correlation_id);
                }
                Command::ExceptionResponse(r) => {
                    if unexplained(&r.exception) {
                        h.problems.push(format!(
                            "request {} refused without a reason: {:?}",
                            r.correlation_id, r.exception
                        ));
                    }
                    h.answered.insert(r.correlation_id);
                }
                Command::ConnectionError(e) if unexplained(&e.exception) => {
                    h.problems.push(format!(
                        "a ConnectionError without a reason: {:?}",
                        e.exception
                    ));
                }
                _ => {}
            }
        }
        match io.read_buf(&mut input).await {
            Ok(0) | Err(_) => {
                lock(&heard).closed = true;
                return;
            }
            Ok(_) => {}
        }
    }
}

struct Conversation {
    out: WriteHalf<DuplexStream>,
    heard: Arc<StdMutex<Heard>>,
    next_id: i32,
    /// Requests (response required) sent: command id -> command name.
    requests: BTreeMap<i32, &'static str>,
    /// Still worth talking to: not closed by the broker, not stuck.
    open: bool,
    /// The latest sequence number of each producer.
    sequences: HashMap<Option<ProducerId>, i64>,
    problems: Vec<String>,
}

impl Conversation {
    fn id(&mut self) -> i32 {
        self.next_id += 1;
        self.next_id
    }

    async fn send(&mut self, command: &Command) {
        let mut out = BytesMut::new();
        if encode(command, Format::new(12), &mut out).is_err() {
            return; // not the broker's business
        }
        match tokio::time::timeout(WAIT, self.out.write_all(&out)).await {
            Ok(Ok(())) => {
                if command.response_required()
                    && !matches!(
                        command,
                        Command::KeepAliveInfo(_) | Command::ShutdownInfo(_)
                    )
                {
                    self.requests.insert(command.command_id(), command.name());
                }
            }
            // The broker closed the connection.
            Ok(Err(_)) => self.open = false,
            Err(_) => {
                self.problems.push(format!(
                    "the session stopped reading: {} not written in {WAIT:?}",
                    command.name()
                ));
                self.open = false;
            }
        }
    }

    /// Waits until the request `id` is answered or the connection closed.
    async fn answered(&mut self, id: i32) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            {
                let h = lock(&self.heard);
                if h.answered.contains(&id) {
                    return;
                }
                if h.closed {
                    self.open = false;
                    return;
                }
            }
            if tokio::time::Instant::now() > deadline {
                self.problems.push(format!(
                    "request {id} ({}) not answered in {WAIT:?}: the session stopped answering",
                    self.requests.get(&id).copied().unwrap_or("?")
                ));
                self.open = false;
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn sync(&mut self) {
        let id = self.id();
        self.send(&Command::SessionInfo(SessionInfo {
            command_id: id,
            response_required: true,
            session_id: Some(SessionId {
                connection_id: Some(CONN.into()),
                value: 1,
            }),
        }))
        .await;
        if self.open {
            self.answered(id).await;
        }
    }

    fn dispatched(&self, index: &Index) -> Option<(ConsumerId, MessageId)> {
        let h = lock(&self.heard);
        (!h.dispatched.is_empty()).then(|| h.dispatched[index.index(h.dispatched.len())].clone())
    }

    fn resolve(&self, r: &MessageRef) -> Option<(Option<ConsumerId>, MessageId)> {
        match r {
            MessageRef::Dispatched(i) => self.dispatched(i).map(|(c, m)| (Some(c), m)),
            MessageRef::Made(m) => Some((None, m.clone())),
            MessageRef::Absent => None,
        }
    }

    async fn step(&mut self, step: &Step) {
        match step {
            Step::Send(command) => {
                let mut command = command.clone();
                stamp(&mut command, self.id());
                self.send(&command).await;
            }
            Step::Wild(command) => self.send(command).await,
            Step::Message(m, sequence) => {
                let mut m = m.clone();
                m.command_id = self.id();
                if let Some(id) = &mut m.message_id {
                    let latest = self.sequences.entry(id.producer_id.clone()).or_insert(0);
                    id.producer_sequence_id = match *sequence {
                        Sequence::Next => {
                            *latest += 1;
                            *latest
                        }
                        Sequence::Replay(back) => (*latest - i64::from(back)).max(1),
                        Sequence::Given(n) => n,
                    };
                }
                self.send(&Command::Message(m)).await;
            }
            Step::Ack {
                ack,
                first,
                last,
                own_consumer,
            } => {
                let mut ack = ack.clone();
                ack.command_id = self.id();
                ack.first_message_id = self.resolve(first).map(|(_, m)| m);
                let last = self.resolve(last);
                if let (Some((Some(consumer), _)), true) = (&last, own_consumer) {
                    ack.consumer_id = Some(consumer.clone());
                }
                ack.last_message_id = last.map(|(_, m)| m);
                self.send(&Command::MessageAck(ack)).await;
            }
            Step::Remove { remove, last } => {
                let mut remove = remove.clone();
                remove.command_id = self.id();
                if let Some((_, m)) = last.as_ref().and_then(|i| self.dispatched(i)) {
                    remove.last_delivered_sequence_id = m.broker_sequence_id;
                }
                self.send(&Command::RemoveInfo(remove)).await;
            }
            Step::Sync => self.sync().await,
            Step::Pause(ms) => tokio::time::sleep(Duration::from_millis(*ms)).await,
        }
    }

    /// Every request sent is answered, unless the connection closed first.
    async fn all_answered(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let unanswered: Vec<String> = {
                let h = lock(&self.heard);
                if h.closed {
                    return;
                }
                self.requests
                    .iter()
                    .filter(|(id, _)| !h.answered.contains(id))
                    .map(|(id, name)| format!("{id} ({name})"))
                    .collect()
            };
            if unanswered.is_empty() {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                self.problems.push(format!(
                    "requests never answered though the connection is open: {}",
                    unanswered.join(", ")
                ));
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

fn panic_text(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let payload = e.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic without a message)".into())
}

/// Another connection sends a persistent message and receives it.
async fn witness(f: &Fixture) {
    let mut w = Client::connected(f, WITNESS).await;
    let answer = w
        .request(text(WITNESS, WITNESS_QUEUE, 1, "still serving"))
        .await;
    assert!(
        matches!(answer, Command::Response(_)),
        "another connection's persistent send: {answer:?}"
    );
    // Not a request: `request` would skip a dispatch arriving before the answer.
    w.write(&subscribe(WITNESS, 1, WITNESS_QUEUE, 10)).await;
    assert_eq!(
        body_of(&w.next().await).as_deref(),
        Some("still serving"),
        "another connection receives"
    );
}

/// A client of connection [`CONN`] past its handshake and ConnectionInfo, and the task
/// serving it.
async fn logged_in(
    f: &Fixture,
    client_id: Option<String>,
) -> (Client, tokio::task::JoinHandle<()>) {
    let (c, session) = Client::open_watched(f, 1 << 20);
    let (c, answer) = c.handshake(CONN, client_id, None).await;
    assert!(matches!(answer, Command::Response(_)), "{answer:?}");
    (c, session)
}

async fn converse(case: Case) -> Result<(), String> {
    let f = fixture_with(
        &[],
        BrokerOptions {
            scheduler_support: case.scheduler_support,
            max_redeliveries: case.max_redeliveries,
            dead_letter_strategy: if case.individual_dlq {
                DeadLetterStrategy::individual()
            } else {
                DeadLetterStrategy::Shared
            },
            ..BrokerOptions::default()
        },
    );
    let (c, session) = logged_in(&f, case.client_id.clone()).await;
    let mut session = Some(session);
    let Client {
        io, input, next_id, ..
    } = c;
    let (read, write) = tokio::io::split(io);
    let heard = Arc::new(StdMutex::new(Heard::default()));
    let listener = tokio::spawn(listen(read, input, heard.clone()));
    let mut talk = Conversation {
        out: write,
        heard: heard.clone(),
        next_id,
        requests: BTreeMap::new(),
        open: true,
        sequences: HashMap::new(),
        problems: Vec::new(),
    };
    for step in &case.steps {
        if !talk.open {
            break;
        }
        talk.step(step).await;
    }
    if talk.open {
        talk.sync().await;
        talk.all_answered().await;
    }
    let mut problems = std::mem::take(&mut talk.problems);
    // A session that ended already (the conversation closed it) ended without a panic.
    if session.as_ref().is_some_and(|s| s.is_finished()) {
        if let Err(e) = session.take().expect("checked").await {
            problems.push(format!("the session panicked: {}", panic_text(e)));
        }
    }

    // The broker, and another connection, carry on.
    witness(&f).await;

    // The client leaves; its session ends.
    match case.ending {
        Ending::HalfClose => {
            let _ = talk.out.shutdown().await;
        }
        Ending::Vanish => {
            listener.abort();
            drop(talk.out);
        }
        Ending::JmsClose => {
            if talk.open {
                let id = talk.id();
                talk.send(&Command::RemoveInfo(RemoveInfo {
                    command_id: id,
                    response_required: true,
                    object_id: Some(DataStructure::ConnectionId(ConnectionId {
                        value: Some(CONN.into()),
                    })),
                    last_delivered_sequence_id: -1,
                }))
                .await;
                if talk.open {
                    talk.answered(id).await;
                }
                let id = talk.id();
                talk.send(&Command::ShutdownInfo(BaseCommand {
                    command_id: id,
                    response_required: false,
                }))
                .await;
                problems.append(&mut talk.problems);
            }
            let _ = talk.out.shutdown().await;
        }
        Ending::Replaced => {
            let (again, replacing) = logged_in(&f, case.client_id.clone()).await;
            drop(again);
            match tokio::time::timeout(END, replacing).await {
                Err(_) => problems.push(format!(
                    "the replacing session did not end within {END:?} of its client leaving"
                )),
                Ok(Err(e)) => {
                    problems.push(format!("the replacing session panicked: {}", panic_text(e)))
                }
                Ok(Ok(())) => {}
            }
        }
    }
    if let Some(session) = session {
        match tokio::time::timeout(END, session).await {
            Err(_) => problems.push(format!(
                "the session did not end within {END:?} of its client leaving ({:?})",
                case.ending
            )),
            Ok(Err(e)) => problems.push(format!("the session panicked: {}", panic_text(e))),
            Ok(Ok(())) => {}
        }
    }
    if !matches!(case.ending, Ending::Vanish) && tokio::time::timeout(END, listener).await.is_err()
    {
        problems.push("the session ended but never closed the stream".into());
    }
    problems.append(&mut lock(&heard).problems);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

fn run(case: Case) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let outcome = rt.block_on(converse(case));
    rt.shutdown_timeout(Duration::from_secs(2));
    outcome.map_err(TestCaseError::fail)
}

#[test]
fn random_plausible_conversations_never_panic_or_hang_the_session_and_the_broker_carries_on() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(64);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        // Enough to shrink a panic to a few steps; bounded for hangs (10 s a try).
        max_shrink_iters: 4096,
        max_shrink_time: 120_000,
        ..Config::default()
    });
    if let Err(e) = runner.run(&case(), run) {
        panic!("{e}");
    }
}
