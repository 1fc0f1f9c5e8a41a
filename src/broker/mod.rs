//! The broker core: queues, topics, durable subscriptions, dispatch, acknowledgements,
//! transactions, expiry and the dead-letter queue. Topic subscriptions (durable or not) may
//! name an ActiveMQ wildcard pattern (`logs.>`, `prices.*.eu`; `broker::wildcard`); queue
//! subscriptions and sends may not. Queue consumers may have ActiveMQ's consumer priorities, and
//! any subscriber noLocal (the core knows which session, that is which client connection, sent
//! each message; see [`SubscribeRequest`]).
//!
//! It owns all routing state behind one mutex (never held across an `.await`) and talks to the
//! rest of the node through narrow seams:
//! - protocol sessions call [`Session`] methods and read [`Delivery`]s from their receiver;
//!   a protocol splits a composite destination (`a,b`, [`composite_members`]) and hands the
//!   core its members ([`Session::send_to_each`], which stores the copies in one record, and
//!   [`Session::subscribe_to_each`]);
//! - every durable change becomes one write-ahead [`Record`](crate::store::Record) appended to
//!   the [`Store`];
//! - the confirmed watermark ([`Broker::confirm`], a [`Position`]) says how far the journal is
//!   held as the `sync` policy requires; only then does a persistent message become visible to consumers and
//!   its sender's [`Confirmation`] resolve.
//!
//! It must never know about STOMP, OpenWire or ZooKeeper, and never confirms a persistent change
//! before the watermark covers its record.

mod core;
mod flow;
mod memory;
mod queue;
pub mod schedule;
pub mod selector;
mod store_limit;
pub mod virtual_topic;
mod wildcard;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::store::{Message, Position, Recovered, Store};

pub use crate::store::{BodyType, Header, PropertyType};

pub use self::core::{BrowseCursor, Seen, Stats};
pub use self::flow::{FlowGate, Hold};
pub use self::memory::MemoryGate;
pub use self::store_limit::{StoreGate, DEFAULT_STORE_LIMIT};

/// The dead-letter queue, ActiveMQ's default name (the shared strategy's only DLQ).
pub const DEAD_LETTER_QUEUE: &str = "queue://ActiveMQ.DLQ";

/// How long a connection whose client id another session holds waits for that session to
/// close before it is refused (see [`Broker::connect`]).
pub const CLIENT_ID_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Where dead letters go: ActiveMQ's `<sharedDeadLetterStrategy>` (the default) or
/// `<individualDeadLetterStrategy>`. The master decides the DLQ and writes it in the journal
/// record, so slaves need not know the strategy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DeadLetterStrategy {
    /// Every dead letter goes to [`DEAD_LETTER_QUEUE`].
    #[default]
    Shared,
    /// One DLQ for each destination, always a queue: a queue's dead letters go to
    /// `queue_prefix + queue + queue_suffix`; a durable subscription's (a topic message) to
    /// `topic_prefix + topic + topic_suffix`, named after the topic the message was published
    /// to (so all durable subscriptions on a topic share one). A virtual topic's consumer
    /// queue is a queue. A prefix and suffix both empty would name the queue itself:
    /// [`crate::config`] refuses it.
    Individual {
        queue_prefix: String,
        queue_suffix: String,
        topic_prefix: String,
        topic_suffix: String,
    },
}

impl DeadLetterStrategy {
    /// The individual strategy with ActiveMQ's defaults: `ActiveMQ.DLQ.Queue.` and
    /// `ActiveMQ.DLQ.Topic.`, no suffixes.
    pub fn individual() -> DeadLetterStrategy {
        DeadLetterStrategy::Individual {
            queue_prefix: "ActiveMQ.DLQ.Queue.".into(),
            queue_suffix: String::new(),
            topic_prefix: "ActiveMQ.DLQ.Topic.".into(),
            topic_suffix: String::new(),
        }
    }

    /// The DLQ (canonical, `queue://...`) of a message dead-lettered from `queue` (canonical:
    /// `queue://orders`, or a durable subscription's `durable://client:name`) whose own
    /// destination is `destination` (`topic://news` for a durable subscription's message).
    /// The caller discards, rather than moves, a message whose DLQ would be `queue` itself
    /// (one on `ActiveMQ.DLQ` with the shared strategy) or that was dead-lettered to `queue`
    /// (`dead_letter_queue(origin, origin) == queue` for its `original-destination`).
    pub fn dead_letter_queue(&self, queue: &str, destination: &str) -> String {
        let Some([queues, topics]) = self.affixes() else {
            return DEAD_LETTER_QUEUE.to_string();
        };
        let ((prefix, suffix), name) = if let Some(name) = queue.strip_prefix("queue://") {
            (queues, name)
        } else if let Some(name) = destination.strip_prefix("topic://") {
            (topics, name)
        } else if let Some(name) = destination.strip_prefix("queue://") {
            (queues, name)
        } else {
            // Not a destination the core makes; the shared DLQ keeps it rather than losing it.
            return DEAD_LETTER_QUEUE.to_string();
        };
        format!("queue://{prefix}{name}{suffix}")
    }

    /// Whether `queue` (canonical) is a dead-letter queue as this strategy names them (ActiveMQ's
    /// `isDLQ`): `ActiveMQ.DLQ` always (the individual strategy's fallback too), and with the
    /// individual strategy every queue named with its queue or topic prefix and suffix.
    pub fn is_dead_letter_queue(&self, queue: &str) -> bool {
        if queue == DEAD_LETTER_QUEUE {
            return true;
        }
        let (Some(affixes), Some(name)) = (self.affixes(), queue.strip_prefix("queue://")) else {
            return false;
        };
        affixes.iter().any(|(prefix, suffix)| {
            name.len() > prefix.len() + suffix.len()
                && name.starts_with(prefix)
                && name.ends_with(suffix)
        })
    }

    /// The individual strategy's (prefix, suffix) for queues and for topics; `None` for the
    /// shared one.
    fn affixes(&self) -> Option<[(&str, &str); 2]> {
        match self {
            DeadLetterStrategy::Shared => None,
            DeadLetterStrategy::Individual {
                queue_prefix,
                queue_suffix,
                topic_prefix,
                topic_suffix,
            } => Some([(queue_prefix, queue_suffix), (topic_prefix, topic_suffix)]),
        }
    }
}

/// The header holding a message's JMSType (STOMP's `type` header, OpenWire's `JMSType`). A JMS
/// property name cannot contain `-`, so a property called `type` keeps its own name.
pub const JMS_TYPE_HEADER: &str = "jms-type";

/// The header naming a message's reply destination (JMSReplyTo), as ActiveMQ prints a
/// destination (`queue://x`, `temp-queue://x`): what a selector on JMSReplyTo compares with.
pub const REPLY_TO_HEADER: &str = "reply-to";

/// How the broker core behaves; filled from the configuration.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Names this node in generated message ids.
    pub name: String,
    /// A message whose delivery failed more than this many times goes to its DLQ.
    pub max_redeliveries: u32,
    /// Which DLQ a dead letter goes to.
    pub dead_letter_strategy: DeadLetterStrategy,
    /// Messages held for one slow non-durable topic subscriber beyond its prefetch; past this
    /// the oldest are discarded (ActiveMQ's pending-message-limit policy for topics).
    pub topic_pending_limit: usize,
    /// The most messages one page of a browse returns (ActiveMQ's `maxBrowsePageSize`).
    pub max_browse_page_size: usize,
    /// How often queues are swept for expired messages.
    pub expiry_sweep: Duration,
    /// Bytes of queued message bodies kept in memory; past it, persistent messages are queued
    /// with their bodies left in the journal (see `core::paging`). Also what one non-durable
    /// topic subscriber may hold (see `queue::Consumer::topic_window`).
    pub memory_limit: u64,
    /// Bytes the journal's retained segments may take on disk (ActiveMQ's `<storeUsage
    /// limit>`; see `broker::store_limit`); at or past it, persistent sends wait or are refused.
    /// Capped at start to the store's free disk space plus what the journal takes.
    pub store_limit: u64,
    /// ActiveMQ's `sendFailIfNoSpace`: while the store is at `store_limit`, a persistent send
    /// (or a commit carrying one) is refused with [`BrokerError::StoreFull`] instead of its
    /// connection being held back.
    pub send_fail_if_no_space: bool,
    /// ActiveMQ's `schedulerSupport`: a message with `AMQ_SCHEDULED_DELAY` is delivered only
    /// after that delay (see [`schedule`]). Off: the scheduling properties are ordinary ones.
    pub scheduler_support: bool,
    /// ActiveMQ's virtual topics (see [`virtual_topic`]); `None`: off (`useVirtualTopics="false"`).
    pub virtual_topics: Option<virtual_topic::VirtualTopics>,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            name: "localhost".into(),
            max_redeliveries: 6,
            dead_letter_strategy: DeadLetterStrategy::Shared,
            topic_pending_limit: 1000,
            max_browse_page_size: 400,
            expiry_sweep: Duration::from_secs(1),
            memory_limit: 64 << 20,
            store_limit: store_limit::DEFAULT_STORE_LIMIT,
            send_fail_if_no_space: false,
            scheduler_support: false,
            virtual_topics: Some(virtual_topic::VirtualTopics::activemq_default()),
        }
    }
}

/// A destination as the core knows it. Names are without prefix: `Queue("orders")`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    Queue(String),
    Topic(String),
}

impl Destination {
    /// Parses `queue://x`, `topic://x`, `/queue/x`, `/topic/x` (and ActiveMQ's
    /// `/temp-queue/x`, `/temp-topic/x`, treated as plain queues and topics).
    pub fn parse(text: &str) -> Result<Destination, BrokerError> {
        let (kind, name) = if let Some(n) = text.strip_prefix("queue://") {
            ("queue", n)
        } else if let Some(n) = text.strip_prefix("topic://") {
            ("topic", n)
        } else if let Some(n) = text.strip_prefix("/queue/") {
            ("queue", n)
        } else if let Some(n) = text.strip_prefix("/topic/") {
            ("topic", n)
        } else if let Some(n) = text.strip_prefix("/temp-queue/") {
            ("queue", n)
        } else if let Some(n) = text.strip_prefix("/temp-topic/") {
            ("topic", n)
        } else {
            return Err(BrokerError::InvalidDestination(text.to_string()));
        };
        if !Destination::is_valid_name(name) {
            return Err(BrokerError::InvalidDestination(text.to_string()));
        }
        Ok(match kind {
            "queue" => Destination::Queue(name.to_string()),
            _ => Destination::Topic(name.to_string()),
        })
    }

    /// Whether `name` may name a queue or topic, whatever protocol brings it: not empty, and
    /// no newline or NUL (which no STOMP header, status line or log line can carry).
    pub fn is_valid_name(name: &str) -> bool {
        !name.is_empty() && !name.contains(['\n', '\0'])
    }

    /// The canonical form stored in records: `queue://x` or `topic://x`.
    pub fn canonical(&self) -> String {
        match self {
            Destination::Queue(n) => format!("queue://{n}"),
            Destination::Topic(n) => format!("topic://{n}"),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Destination::Queue(n) | Destination::Topic(n) => n,
        }
    }
}

/// The most destinations a composite destination may name. Each is a consumer of a composite
/// subscription and a copy (a journal entry) of a composite send, and a subscription's
/// acknowledgements, pulls and prefetch changes visit every member, so the count is bounded
/// (ActiveMQ sets no limit).
pub const MAX_COMPOSITE_MEMBERS: usize = 1024;

/// The members of destination name `text` if it is composite (ActiveMQ's `a,b`: it names
/// every member), in order, each trimmed and then read by `parse`, the protocol's rule for a
/// member (its error says why that member is refused); `None` for a name without a comma. An
/// empty member (`a,,b`, `a,`), one `parse` refuses or more than [`MAX_COMPOSITE_MEMBERS`]
/// members (counted before any is parsed) make the whole name
/// [`BrokerError::InvalidComposite`]. The core takes the parsed members
/// ([`Session::send_to_each`], [`Session::subscribe_to_each`]).
pub fn composite_members(
    text: &str,
    mut parse: impl FnMut(&str) -> Result<Destination, String>,
) -> Result<Option<Vec<Destination>>, BrokerError> {
    if !text.contains(',') {
        return Ok(None);
    }
    let count = text.split(',').count();
    if count > MAX_COMPOSITE_MEMBERS {
        return Err(BrokerError::InvalidComposite(
            shortened(text),
            too_many_members(count),
        ));
    }
    text.split(',')
        .map(str::trim)
        .map(|member| {
            if member.is_empty() {
                Err("it has an empty member (two commas in a row, or one at an end)".into())
            } else {
                parse(member)
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
        .map_err(|why| BrokerError::InvalidComposite(shortened(text), why))
}

/// Why a composite destination of `count` members is refused.
pub(crate) fn too_many_members(count: usize) -> String {
    format!("it names {count} destinations, more than the {MAX_COMPOSITE_MEMBERS} one may name")
}

/// A destination name as an error quotes it: a long one only by its beginning.
fn shortened(text: &str) -> String {
    const SHOWN: usize = 100;
    match text.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}... ({} bytes)", &text[..end], text.len()),
        None => text.to_string(),
    }
}

/// A message as a producer hands it to the core.
#[derive(Debug, Clone, Default)]
pub struct NewMessage {
    /// The client's id for the message. When it has the form `<producer>:<n>` (ActiveMQ's
    /// `ID:...:<sequence>`), `(producer, n)` identifies it for duplicate detection.
    pub message_id: Option<String>,
    /// The delivery mode, as consumers see it. Stored only when true and not `temporary`.
    pub persistent: bool,
    /// Sent to a temporary destination: kept in memory only, whatever its delivery mode, as
    /// ActiveMQ gives temporary destinations no store (they live as long as the connection
    /// that made them, and a stored message would outlive them on disk).
    pub temporary: bool,
    /// Milliseconds since the Unix epoch; 0 = never expires.
    pub expiration: i64,
    pub priority: u32,
    /// Milliseconds since the Unix epoch the producer stamped (JMSTimestamp); 0 = the broker
    /// stamps the time it receives the message.
    pub timestamp: i64,
    /// Application headers / JMS properties, in the producer's order.
    pub headers: Vec<Header>,
    pub body_type: BodyType,
    pub body: Bytes,
}

impl NewMessage {
    /// Whether its delivery mode has it stored (see [`crate::store::Message::stored_for_mode`]).
    pub fn stored_for_mode(&self) -> bool {
        self.persistent && !self.temporary
    }
}

/// What a subscriber asks for.
#[derive(Debug, Clone)]
pub struct SubscribeRequest {
    /// The session-unique id deliveries are tagged with.
    pub id: String,
    pub destination: Destination,
    /// Messages delivered and not yet acknowledged, at most ([`MAX_PREFETCH`] at most).
    pub prefetch: u32,
    /// A durable topic subscription's name (needs the session's client id).
    pub durable_name: Option<String>,
    /// A JMS message selector: only matching messages are delivered.
    pub selector: Option<String>,
    /// ActiveMQ's exclusive consumer (STOMP `activemq.exclusive:true`, JMS
    /// `queue://x?consumer.exclusive=true`): while it lives, it alone receives the queue's
    /// messages. The first exclusive consumer of a queue wins unless a later one has a higher
    /// `priority` (or 127, the highest), which takes over; when the owner goes away, the
    /// remaining exclusive consumer of highest priority (the earliest among equals) does.
    /// Ignored on topics.
    pub exclusive: bool,
    /// ActiveMQ's consumer priority (STOMP `activemq.priority`, JMS
    /// `queue://x?consumer.priority=10`, OpenWire `ConsumerInfo.priority`; 0 by default, 127
    /// the highest): a queue offers each message to its consumers of highest priority first,
    /// round-robin among equals, and to lower ones only when every higher one that would
    /// take it has a full prefetch window. Ignored on topics (every subscriber gets every
    /// message).
    pub priority: i8,
    /// JMS noLocal (STOMP `activemq.noLocal:true`, OpenWire `ConsumerInfo.noLocal`): messages
    /// sent through this subscriber's own session (its connection; an OpenWire connection
    /// across reconnects, see [`Session::set_connection`]) are not delivered to it.
    /// As in ActiveMQ, where it is part of every subscription's selector, it applies to queue
    /// consumers too (the message stays for other consumers). A durable subscription is not
    /// kept the messages of the connection it was last active on, even while inactive; back
    /// on a new connection, only that one's are its own (ActiveMQ compares connection ids).
    pub no_local: bool,
}

/// Which deliveries an acknowledgement covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckScope {
    /// Only the named delivery (STOMP client-individual, auto).
    Single,
    /// The named delivery and every earlier one of the same subscription (STOMP client).
    Cumulative,
}

/// A message handed to a session for one of its subscriptions.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub subscription: String,
    /// Session-unique; names the delivery in `ack`/`nack`.
    pub tag: u64,
    /// The destination the subscription is on (for a wildcard subscription, its pattern:
    /// `message.destination` is the topic the message was published to).
    pub destination: Destination,
    pub message: Arc<Message>,
    /// How many times this message was delivered before and not acknowledged.
    pub redelivery_count: u32,
    /// The message's group (`JMSXGroupID`) was assigned to this subscription with it
    /// (ActiveMQ's `JMSXGroupFirstForConsumer`).
    pub group_first: bool,
}

/// The largest prefetch window a protocol takes from a client: a consumer that asks for
/// more (ActiveMQ takes any `int`) gets this many, so that one that never acknowledges cannot
/// draw a whole backlog into memory.
pub const MAX_PREFETCH: u32 = 1 << 20;

/// Why the core refused a request. Each message is fit to show a client.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BrokerError {
    #[error("invalid destination '{0}': use /queue/NAME or /topic/NAME")]
    InvalidDestination(String),
    /// A destination that names nothing acceptable: the reason, naming it.
    #[error("invalid destination: {0}")]
    InvalidName(String),
    /// A composite destination (`a,b`) one of whose members is not acceptable: the reason.
    #[error("invalid composite destination '{0}': {1}")]
    InvalidComposite(String, String),
    #[error("temporary destination '{0}' does not exist: it was deleted, its connection has closed, or it was never made")]
    TemporaryGone(String),
    #[error("subscription id '{0}' is already in use on this connection")]
    DuplicateSubscription(String),
    #[error("no subscription with id '{0}' on this connection")]
    UnknownSubscription(String),
    #[error("no durable subscription named '{0}' for this client id")]
    UnknownDurable(String),
    #[error("no delivery '{0}' awaiting acknowledgement on this connection")]
    UnknownDelivery(u64),
    /// An acknowledgement of a range that does not match the deliveries outstanding (ActiveMQ's
    /// "Unmatched acknowledge"): refused whole, acknowledging nothing.
    #[error("unmatched acknowledge, nothing acknowledged: {0}")]
    UnmatchedAck(String),
    #[error("transaction '{0}' is already open")]
    TransactionExists(String),
    #[error("no transaction '{0}' is open")]
    UnknownTransaction(String),
    #[error("transaction '{0}' would hold {1}: commit in smaller transactions")]
    TransactionTooLarge(String, String),
    /// A transactional send refused because the open transactions of all connections
    /// together already hold `memory_limit` bytes of messages.
    #[error(
        "transaction '{tx}' cannot take this send: open transactions already hold {held} bytes \
         of messages in all, and memory_limit is {limit} bytes; commit or roll back open \
         transactions first"
    )]
    OpenTransactionsFull { tx: String, held: u64, limit: u64 },
    /// A commit refused because part of the transaction was refused: it was rolled back.
    #[error("transaction '{0}' was rolled back: {1}")]
    RolledBack(String, String),
    #[error("a durable subscription needs a client id (STOMP header client-id on CONNECT)")]
    DurableNeedsClientId,
    /// ActiveMQ's `InvalidClientIDException` for a second connection with a client id.
    #[error("client id '{client_id}' is already connected from {peer}")]
    ClientIdInUse { client_id: String, peer: String },
    #[error("durable subscription '{0}' is in use: a subscriber is active on it")]
    DurableInUse(String),
    #[error("durable subscriptions are for topics; '{0}' is a queue")]
    DurableOnQueue(String),
    #[error("the store failed and accepts no more writes: {0}")]
    StoreFailed(String),
    /// A persistent send or commit refused while the store is full (`send_fail_if_no_space`).
    #[error(
        "the store is full: its journal takes {used} bytes, store_limit is {limit} bytes; \
         persistent messages are refused (send_fail_if_no_space) until consumers free space"
    )]
    StoreFull { used: u64, limit: u64 },
    /// The store's filesystem cannot hold a journal of `log_size` segments.
    #[error(
        "the store directory {directory} has {usable} bytes of usable space: too little for \
         segments of log_size = {log_size} bytes (the journal needs room for at least four: two \
         under store_limit, the one prepared ahead and one more before producers are held back, \
         plus a twentieth for the index); lower [store] log_size or give the store more space"
    )]
    StoreTooSmall {
        directory: String,
        usable: u64,
        log_size: u64,
    },
    #[error("this node is not the master and confirms nothing: {0}")]
    NotMaster(String),
    #[error("the broker is shutting down")]
    ShuttingDown,
    #[error("invalid selector: {0}")]
    InvalidSelector(String),
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    #[error("not supported: {0}")]
    Unsupported(String),
}

/// Resolves when a change is held as the `sync` policy requires (or failed).
#[derive(Debug)]
pub struct Confirmation(Option<oneshot::Receiver<Result<(), BrokerError>>>);

impl Confirmation {
    pub(crate) fn done() -> Confirmation {
        Confirmation(None)
    }

    pub(crate) fn pending() -> (oneshot::Sender<Result<(), BrokerError>>, Confirmation) {
        let (tx, rx) = oneshot::channel();
        (tx, Confirmation(Some(rx)))
    }

    /// True when nothing is left to wait for.
    pub fn is_done(&self) -> bool {
        self.0.is_none()
    }

    /// The outcome once known, without waiting (a connection answering what is confirmed
    /// before it writes anything else; tests that cannot await). Not to be asked again once it
    /// gave one.
    pub(crate) fn try_outcome(&mut self) -> Option<Result<(), BrokerError>> {
        match &mut self.0 {
            None => Some(Ok(())),
            Some(rx) => match rx.try_recv() {
                Ok(outcome) => Some(outcome),
                Err(oneshot::error::TryRecvError::Empty) => None,
                Err(oneshot::error::TryRecvError::Closed) => Some(Err(BrokerError::ShuttingDown)),
            },
        }
    }

    pub async fn wait(self) -> Result<(), BrokerError> {
        self.await
    }
}

/// Awaiting a confirmation by reference lets a connection keep a queue of them and poll only
/// the oldest: the core resolves them in the order they were made.
impl std::future::Future for Confirmation {
    type Output = Result<(), BrokerError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match &mut self.0 {
            None => std::task::Poll::Ready(Ok(())),
            Some(rx) => std::pin::Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(BrokerError::ShuttingDown))),
        }
    }
}

/// One queue as monitoring sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    /// Canonical name: `queue://orders`, or `durable://client:subscription`.
    pub name: String,
    /// Messages waiting for a consumer.
    pub ready: usize,
    pub consumers: usize,
    /// Delivered, not yet acknowledged.
    pub in_flight: usize,
}

/// Why an admin operation on a queue ([`Broker::purge_queue`], [`Broker::delete_queue`],
/// [`Broker::retry_dead_letters`]) was refused. Each message is fit to show an operator.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AdminError {
    #[error("no queue named '{0}' (see /queues)")]
    UnknownQueue(String),
    /// The queue is in a state the operation is refused in: the reason.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// One batch of a purge or a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Purged {
    /// Messages waiting on the queue before the batch.
    pub waiting: usize,
    /// Waiting messages removed by the batch.
    pub removed: usize,
    /// Delivered, unacknowledged messages it removed (asked of the first batch only).
    pub delivered: usize,
    /// Messages still wait on the queue.
    pub more: bool,
}

/// What a DLQ retry ([`Broker::retry_dead_letters`]) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Retried {
    /// Messages moved back to the destination they were dead-lettered from.
    pub moved: usize,
    /// Messages left on the DLQ: without an `original-destination` naming another queue or a
    /// topic (or whose move would not fit a journal record).
    pub left: usize,
}

/// A handle on the broker core; cheap to clone.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Mutex<core::Core>>,
}

impl Broker {
    /// Starts the core on a recovered store. How far the journal is held as the `sync` policy
    /// requires is reported through [`Broker::confirm`] or [`WeakBroker::confirm`], on the
    /// thread that learns it (standalone: the store's durable callback, see [`ConfirmLater`]).
    /// `epoch` is the epoch this node writes under; an epoch-start record is appended first.
    pub fn start(
        store: Store,
        recovered: Recovered,
        epoch: u64,
        options: BrokerOptions,
    ) -> Result<Broker, BrokerError> {
        let sweep = options.expiry_sweep;
        let core = core::Core::new(store, recovered, epoch, options)?;
        let broker = Broker {
            shared: Arc::new(Mutex::new(core)),
        };
        let weak = Arc::downgrade(&broker.shared);
        let scheduled = lock(&broker.shared).scheduler_wake();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(sweep);
            // When the earliest scheduled message is due (see `Core::release_due`); the core
            // wakes this task when an earlier one arrives.
            let mut due: Option<tokio::time::Instant> = None;
            loop {
                let sweep_now = tokio::select! {
                    _ = tick.tick() => true,
                    _ = async { tokio::time::sleep_until(due.expect("checked")).await },
                        if due.is_some() => false,
                    _ = scheduled.notified() => false,
                };
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                let mut core = lock(&shared);
                if sweep_now {
                    core.check_store();
                    core.expire_messages();
                    core.continue_scans();
                    core.release_confirmed();
                    core.measure_store();
                }
                due = core
                    .release_due()
                    .map(|wait| tokio::time::Instant::now() + wait);
            }
        });
        Ok(broker)
    }

    /// Opens a session for one client connection, from `peer`. Deliveries for its
    /// subscriptions arrive on the returned receiver; the receiver holds at most the
    /// subscriptions' prefetch windows.
    ///
    /// A client id held by another open session is refused with
    /// [`BrokerError::ClientIdInUse`], once that session has not closed within
    /// [`CLIENT_ID_GRACE`]: a client that reconnects at once after losing its connection is
    /// not refused because the broker has not yet seen the old one end.
    pub async fn connect(
        &self,
        client_id: Option<String>,
        peer: &str,
    ) -> Result<(Session, mpsc::UnboundedReceiver<Delivery>), BrokerError> {
        let deadline = tokio::time::Instant::now() + CLIENT_ID_GRACE;
        loop {
            let (tx, rx) = mpsc::unbounded_channel();
            let closed = {
                let mut core = lock(&self.shared);
                let mut notified = Box::pin(core.session_closed().notified_owned());
                // Registered before the lock is released: a close after it wakes us.
                notified.as_mut().enable();
                match core.open_session(client_id.clone(), peer, tx) {
                    Ok(id) => return Ok((self.session(id, &core), rx)),
                    Err(BrokerError::ClientIdInUse { .. })
                        if tokio::time::Instant::now() < deadline =>
                    {
                        notified
                    }
                    Err(e) => return Err(e),
                }
            };
            let _ = tokio::time::timeout_at(deadline, closed).await;
        }
    }

    /// Tests: [`Broker::connect`] for a session whose client id is free.
    #[cfg(test)]
    pub fn open_session(
        &self,
        client_id: Option<String>,
    ) -> (Session, mpsc::UnboundedReceiver<Delivery>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut core = lock(&self.shared);
        let id = core
            .open_session(client_id, "test", tx)
            .expect("the client id is free");
        (self.session(id, &core), rx)
    }

    /// The handle on core session `id`, just opened.
    fn session(&self, id: u64, core: &core::Core) -> Session {
        Session {
            id,
            shared: self.shared.clone(),
            gate: core.flow_gate(),
            sent_transient: AtomicBool::new(false),
            sent_persistent: AtomicBool::new(false),
        }
    }

    /// Tests: a core on a store in `dir` (1 MiB segments, no fsync), confirming what is durable,
    /// under the next epoch.
    #[cfg(test)]
    pub(crate) fn start_for_tests(dir: &std::path::Path, options: BrokerOptions) -> Broker {
        let confirm = ConfirmLater::default();
        let (store, recovered) = crate::store::open_when_unlocked(
            crate::store::StoreOptions {
                directory: dir.to_path_buf(),
                log_size: 1 << 20,
                fsync: false,
                only_copy: false,
                hold_releases: false,
                recovered_bodies: options.memory_limit,
            },
            || confirm.callback(),
        );
        let epoch = recovered.epoch + 1;
        let broker = Broker::start(store, recovered, epoch, options).unwrap();
        confirm.attach(&broker);
        // As a standalone node does before it serves (polled: callers run on a runtime).
        let mut started = lock(&broker.shared).take_started();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while started.try_outcome().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the epoch-start record was never confirmed"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        broker
    }

    /// Stops serving: waiting confirmations fail with [`BrokerError::NotMaster`], later requests
    /// are refused, and the store is handed back (to be closed before it is opened again).
    pub fn close(&self, reason: &str) -> Option<Store> {
        lock(&self.shared).close(reason)
    }

    /// The confirmed watermark moved to `position`.
    pub fn confirm(&self, position: Position) {
        lock(&self.shared).on_confirmed(position);
    }

    /// A handle that does not keep the core alive (for the store's writer thread, which the
    /// core itself owns).
    pub fn downgrade(&self) -> WeakBroker {
        WeakBroker(Arc::downgrade(&self.shared))
    }

    /// Waits until the messages the store recovered are delivered: a moment after start for
    /// a standalone node (its epoch-start record is durable), once a quorum holds that record
    /// for a master. Fails if the store fails first.
    pub async fn wait_recovered(&self) -> Result<(), BrokerError> {
        let started = lock(&self.shared).take_started();
        started.await
    }

    /// Why the store accepts no more writes (a full disk, say), once it failed: the core then
    /// refuses every write, so a replicated node leaves its cluster for another to take over.
    pub fn store_failure(&self) -> Option<String> {
        lock(&self.shared).store_failure()
    }

    /// Counters for logs, status and tests.
    pub fn stats(&self) -> Stats {
        lock(&self.shared).stats()
    }

    /// Every queue's depth, consumers and unacknowledged deliveries, by name.
    pub fn queue_stats(&self) -> Vec<QueueStats> {
        lock(&self.shared).queue_stats()
    }

    /// Forgets a destination nobody uses any more (a deleted temporary queue or topic); its
    /// waiting non-persistent messages are dropped. False when it is in use or holds stored
    /// messages, which then stay.
    pub fn delete_destination(&self, destination: &Destination) -> bool {
        lock(&self.shared).delete_destination(destination)
    }

    /// Messages waiting on a queue (not delivered), for tests and status.
    pub fn queue_depth(&self, queue: &str) -> usize {
        lock(&self.shared).queue_depth(queue)
    }

    /// Removes the messages of `queue` (canonical, as [`Broker::queue_stats`] names it), as
    /// ActiveMQ's `QueueViewMBean.purge()`: those waiting when it starts (not those sent while
    /// it runs) and those delivered and not yet acknowledged (their consumers keep the
    /// deliveries; acknowledging one later removes nothing more, and one not acknowledged
    /// never comes back). The removes are journaled in batches of at most 1000 messages, one
    /// lock hold each; answers how many were removed once the last batch is confirmed.
    pub async fn purge_queue(&self, queue: &str) -> Result<usize, AdminError> {
        let (mut removed, mut waiting_removed) = (0, 0);
        let mut limit = None;
        loop {
            let batch = lock(&self.shared).purge_batch(queue, limit.is_none())?;
            // Those waiting at the start, and no more: a producer cannot keep it going.
            let limit = *limit.get_or_insert(batch.waiting);
            waiting_removed += batch.removed;
            removed += batch.removed + batch.delivered;
            if !batch.more || waiting_removed >= limit {
                break;
            }
            tokio::task::yield_now().await;
        }
        self.confirmed().await?;
        Ok(removed)
    }

    /// Deletes `queue` and its messages, as ActiveMQ's `BrokerViewMBean.removeQueue`, in
    /// batches as [`Broker::purge_queue`]; refused ([`AdminError::Conflict`]) while it has
    /// consumers (ActiveMQ detaches them), also when one arrives midway (what was removed
    /// by then stays removed). A durable subscription's queue goes with its subscription.
    /// Answers how many messages were removed once that is confirmed.
    pub async fn delete_queue(&self, queue: &str) -> Result<usize, AdminError> {
        let mut removed = 0;
        let mut first = true;
        loop {
            let batch = lock(&self.shared).delete_batch(queue, first)?;
            first = false;
            removed += batch.removed + batch.delivered;
            if !batch.more {
                break;
            }
            tokio::task::yield_now().await;
        }
        self.confirmed().await?;
        Ok(removed)
    }

    /// Moves each message waiting on DLQ `queue` back to the destination it was dead-lettered
    /// from, as ActiveMQ's `QueueViewMBean.retryMessages()` (see `Core::retry_batch`): in
    /// batches of at most 1000 messages a lock hold, each move one journal record with the
    /// others of its batch that fit. Refused for a queue that is not a DLQ. Answers once the
    /// last move is confirmed.
    pub async fn retry_dead_letters(&self, queue: &str) -> Result<Retried, AdminError> {
        let mut total = Retried::default();
        let Some(upto) = lock(&self.shared).retry_start(queue)? else {
            return Ok(total);
        };
        let mut from = 0;
        loop {
            let (batch, resume) = lock(&self.shared).retry_batch(queue, from, upto)?;
            total.moved += batch.moved;
            total.left += batch.left;
            let Some(next) = resume else {
                break;
            };
            from = next;
            tokio::task::yield_now().await;
        }
        self.confirmed().await?;
        Ok(total)
    }

    /// Resolves once everything appended so far is confirmed.
    async fn confirmed(&self) -> Result<(), BrokerError> {
        let confirmation = lock(&self.shared).flush();
        confirmation.await
    }
}

/// See [`Broker::downgrade`].
pub struct WeakBroker(std::sync::Weak<Mutex<core::Core>>);

/// A store's durable callback that confirms the core of a standalone node, which is started
/// after the store is open: until [`ConfirmLater::attach`] it remembers the durable end. It
/// confirms on the journal's writer thread (or an inline batch's writer), with no task hand-off.
#[derive(Default, Clone)]
pub struct ConfirmLater {
    core: Arc<OnceLock<WeakBroker>>,
    durable: Arc<AtomicU64>,
}

impl ConfirmLater {
    /// The callback to open the store with.
    pub fn callback(&self) -> crate::store::DurableCallback {
        let this = self.clone();
        Box::new(move |position: Position| this.durable(position))
    }

    /// A durable end reported by the store.
    pub fn durable(&self, position: Position) {
        self.durable.fetch_max(position.0, Ordering::AcqRel);
        if let Some(core) = self.core.get() {
            core.confirm(position);
        }
    }

    /// Confirms `broker` from now on, and at once with whatever became durable before.
    pub fn attach(&self, broker: &Broker) {
        let _ = self.core.set(broker.downgrade());
        broker.confirm(Position(self.durable.load(Ordering::Acquire)));
    }
}

impl WeakBroker {
    /// Like [`Broker::confirm`]; does nothing once the core is gone.
    pub fn confirm(&self, position: Position) {
        if let Some(shared) = self.0.upgrade() {
            lock(&shared).on_confirmed(position);
        }
    }
}

fn lock(shared: &Mutex<core::Core>) -> MutexGuard<'_, core::Core> {
    // A panic while holding the lock is a bug; keep serving rather than poison every session.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// One client connection's view of the broker. Dropping it closes the session: its
/// unacknowledged deliveries go back to their queues, open transactions roll back.
pub struct Session {
    id: u64,
    shared: Arc<Mutex<core::Core>>,
    /// The broker's producer flow control (see [`Session::hold_back`]).
    gate: FlowGate,
    /// A non-persistent message was sent since [`Session::hold_back`] was last asked.
    sent_transient: AtomicBool,
    /// A persistent message was sent, or a transaction committed, since then.
    sent_persistent: AtomicBool,
}

impl Session {
    /// Runs `f` on the core, then writes what it queued for the journal on this thread once
    /// the lock is released, unless a batch is being written (see `Flusher::flush`): a
    /// synchronous sender's confirmation is then usually resolved before it is awaited.
    fn then_flush<T>(&self, f: impl FnOnce(&mut core::Core) -> T) -> T {
        let (result, flush) = {
            let mut core = lock(&self.shared);
            let result = f(&mut core);
            (result, core.take_flush(self.id))
        };
        if let Some(flusher) = flush {
            flusher.flush();
        }
        result
    }

    /// ActiveMQ's producer flow control, asked by the connection after each batch of input:
    /// whether to stop reading its client until [`FlowGate::room`] resolves for the answer,
    /// and why. Held when the session sent a non-persistent message since last asked and
    /// non-persistent queued bodies fill `memory_limit` (they are nowhere else), or sent a
    /// persistent one (or committed) and the store is at `store_limit` (without
    /// `send_fail_if_no_space`, which refuses such sends instead; the send that found the
    /// store full is stored, the next ones are not read). Never when it has a subscription,
    /// whose acknowledgements may be what makes room. The client is then held back by TCP.
    pub fn hold_back(&self) -> Option<Hold> {
        let hold = Hold {
            memory: self.sent_transient.swap(false, Ordering::Relaxed)
                && self.gate.memory.is_full(),
            store: self.sent_persistent.swap(false, Ordering::Relaxed)
                && self.gate.store.holds_back(),
        };
        ((hold.memory || hold.store) && !lock(&self.shared).has_subscriptions(self.id))
            .then_some(hold)
    }

    /// What [`Session::hold_back`] consults; its `room` resolves when reading may resume.
    pub fn flow_gate(&self) -> FlowGate {
        self.gate.clone()
    }

    pub fn send(
        &self,
        destination: &Destination,
        message: NewMessage,
        transaction: Option<&str>,
    ) -> Result<Confirmation, BrokerError> {
        self.send_to_each(std::slice::from_ref(destination), message, transaction)
    }

    /// Sends `message` to every one of `destinations` (the members of a composite destination,
    /// see [`composite_members`]), each distinct member once: all or nothing. A persistent
    /// message is confirmed once it is stored for all of them (in one record, so a crash
    /// keeps all copies or none); a re-send of the same producer sequence is a duplicate for
    /// all of them; in a transaction, the copies commit or roll back with it.
    pub fn send_to_each(
        &self,
        destinations: &[Destination],
        message: NewMessage,
        transaction: Option<&str>,
    ) -> Result<Confirmation, BrokerError> {
        // Only a send to the management name takes the lock an extra time.
        let management = match destinations {
            [d] if schedule::is_management(d.name()) => {
                lock(&self.shared).management_request(destinations, &message)?
            }
            _ => None,
        };
        if let Some(mut request) = management {
            // ActiveMQ's scheduler management (`schedule::MANAGEMENT_DESTINATION`): done at
            // once (also in a transaction, as ActiveMQ does), a step per hold of the lock.
            while self.then_flush(|core| core.manage_step(self.id, &mut request))? {}
            return Ok(Confirmation::done());
        }
        // A delayed message is stored even when not persistent: held back by the store too.
        let mut stored = message.stored_for_mode();
        let confirmation = self.then_flush(|core| {
            stored = stored || core.held_when_sent(&message.headers);
            core.send(self.id, destinations, message, transaction)
        })?;
        let sent = if stored {
            &self.sent_persistent
        } else {
            &self.sent_transient
        };
        sent.store(true, Ordering::Relaxed);
        Ok(confirmation)
    }

    /// Starts a subscription; the confirmation resolves once a new durable subscription is
    /// stored (at once otherwise).
    pub fn subscribe(&self, request: SubscribeRequest) -> Result<Confirmation, BrokerError> {
        lock(&self.shared).subscribe(self.id, request)
    }

    /// Subscribes to every one of `members` (a composite destination's, see
    /// [`composite_members`]) in place of `request.destination`: deliveries from each distinct
    /// member arrive under `request.id`, each naming its member; acknowledgements, pulls,
    /// prefetch changes and the unsubscribe cover them all. The members' consumers share the
    /// request's one prefetch window, as ActiveMQ's one subscription on several destinations
    /// has one list of dispatched messages. A durable subscription takes one topic.
    pub fn subscribe_to_each(
        &self,
        request: SubscribeRequest,
        members: &[Destination],
    ) -> Result<Confirmation, BrokerError> {
        lock(&self.shared).subscribe_each(self.id, request, members)
    }

    /// A tag at or below every delivery's made from now on. A protocol that lets a client
    /// reuse a subscription id reads it before subscribing again, to tell the new
    /// subscription's deliveries from those still queued for the old one (which the core took
    /// back when it ended).
    pub fn next_tag(&self) -> u64 {
        lock(&self.shared).next_tag()
    }

    /// Ends a subscription; a durable one stays and keeps collecting messages (see
    /// [`Session::remove_durable`]).
    pub fn unsubscribe(&self, id: &str) -> Result<Confirmation, BrokerError> {
        lock(&self.shared).unsubscribe(self.id, id)
    }

    /// Ends a subscription whose client reports that only deliveries up to tag `seen_upto`
    /// reached the application: the others return to the queue without counting as
    /// redelivered (ActiveMQ's `lastDeliveredSequenceId`).
    /// This session serves client connection `connection` (an OpenWire connection id, which a
    /// failover client keeps when it reconnects): noLocal takes the messages sent under that
    /// connection, through any session, after a restart or failover too, for its own, as
    /// ActiveMQ compares connection ids. Call it before subscribing.
    pub fn set_connection(&self, connection: &str) {
        lock(&self.shared).set_connection(self.id, connection);
    }

    /// Closes subscription `id`; its deliveries the application did not see (see [`Seen`])
    /// return to their queues without counting as redelivered.
    pub fn close_consumer(&self, id: &str, seen: Seen) -> Result<Confirmation, BrokerError> {
        lock(&self.shared).unsubscribe_seen(self.id, id, seen)
    }

    /// Deletes a durable subscription that is not active, by name.
    pub fn remove_durable(&self, name: &str) -> Result<Confirmation, BrokerError> {
        lock(&self.shared).remove_durable_by_name(self.id, name)
    }

    pub fn ack(
        &self,
        tag: u64,
        scope: AckScope,
        transaction: Option<&str>,
    ) -> Result<Confirmation, BrokerError> {
        lock(&self.shared).ack(self.id, tag, scope, transaction)
    }

    /// Rejects a delivery: like ActiveMQ's poison ack, the message goes to its DLQ
    /// (`ActiveMQ.DLQ` unless [`DeadLetterStrategy::Individual`]).
    pub fn nack(&self, tag: u64, transaction: Option<&str>) -> Result<Confirmation, BrokerError> {
        lock(&self.shared).nack(self.id, tag, transaction)
    }

    /// Like [`Session::nack`] outside a transaction, saying why (an OpenWire poison ack's
    /// cause, `class: message`): the message carries it on its DLQ as `dlqDeliveryFailureCause`.
    pub fn poison(&self, tag: u64, cause: Option<&str>) -> Result<Confirmation, BrokerError> {
        lock(&self.shared).nack_because(self.id, tag, None, cause)
    }

    /// The client consumed every delivery of subscription `id` up to `tag` and will
    /// acknowledge them later (OpenWire's delivered ack, a transacted or client-ack consumer):
    /// they no longer fill the prefetch window.
    pub fn delivered(&self, id: &str, tag: u64) -> Result<(), BrokerError> {
        lock(&self.shared).delivered(self.id, id, tag)
    }

    /// Asks for one message for subscription `id`, even past its prefetch window (a consumer
    /// with prefetch 0 receives only what it pulls).
    pub fn pull(&self, id: &str) -> Result<(), BrokerError> {
        lock(&self.shared).pull(self.id, id)
    }

    /// Withdraws one outstanding pull; false when it was already answered with a delivery
    /// (which is then on its way to the session).
    pub fn cancel_pull(&self, id: &str) -> bool {
        lock(&self.shared).cancel_pull(self.id, id)
    }

    /// Changes a subscription's prefetch window.
    pub fn set_prefetch(&self, id: &str, prefetch: u32) -> Result<(), BrokerError> {
        lock(&self.shared).set_prefetch(self.id, id, prefetch)
    }

    /// Begins a queue browser read page by page (see [`BrowseCursor`]): the messages on a
    /// queue that `selector` accepts, in delivery order; nothing is consumed.
    pub fn open_browse(
        &self,
        destination: &Destination,
        selector: Option<&str>,
    ) -> Result<BrowseCursor, BrokerError> {
        lock(&self.shared).open_browse(destination, selector)
    }

    /// A browser's next page: at most `limit` (and `max_browse_page_size`) messages, fewer
    /// (even none) when a selector passes over many; [`BrowseCursor::is_done`] once the queue
    /// has been looked at to the end.
    pub fn browse_next(
        &self,
        cursor: &mut BrowseCursor,
        limit: usize,
    ) -> Result<Vec<(Arc<Message>, u32)>, BrokerError> {
        let (page, reader) = {
            let core = lock(&self.shared);
            (core.browse_next(cursor, limit)?, core.message_reader()?)
        };
        // Bodies left in the journal are read without the lock.
        self::core::read_bodies(page, reader)
    }

    /// See [`Broker::delete_destination`].
    pub fn delete_destination(&self, destination: &Destination) -> bool {
        lock(&self.shared).delete_destination(destination)
    }

    pub fn begin(&self, transaction: &str) -> Result<(), BrokerError> {
        lock(&self.shared).begin(self.id, transaction)
    }

    /// Drops the sends of open transaction `transaction` to `destination` (see
    /// `Core::drop_sends_to`); how many were dropped.
    pub fn drop_transaction_sends_to(
        &self,
        transaction: &str,
        destination: &Destination,
    ) -> Result<usize, BrokerError> {
        lock(&self.shared).drop_sends_to(self.id, transaction, destination)
    }

    pub fn commit(&self, transaction: &str) -> Result<Confirmation, BrokerError> {
        let confirmation = self.then_flush(|core| core.commit(self.id, transaction))?;
        self.sent_persistent.store(true, Ordering::Relaxed);
        Ok(confirmation)
    }

    /// Rolls back a transaction; the messages it acknowledged stay delivered, unacknowledged,
    /// to their consumers (a JMS client redelivers them itself; a STOMP client acknowledges
    /// them again), whose tags it returns. A consumer gone meanwhile has them redelivered.
    pub fn rollback_keeping_deliveries(&self, transaction: &str) -> Result<Vec<u64>, BrokerError> {
        lock(&self.shared).rollback(self.id, transaction, true)
    }

    /// Rolls back a transaction, redelivering what it acknowledged: what a session that goes
    /// away does with its open transactions (the clients' own rollbacks keep deliveries).
    #[cfg(test)]
    pub fn abort(&self, transaction: &str) -> Result<(), BrokerError> {
        lock(&self.shared).abort(self.id, transaction)
    }

    /// Resolves once everything this node appended so far is confirmed (for a DISCONNECT
    /// receipt: every earlier change of this session is then safe).
    pub fn flush(&self) -> Confirmation {
        lock(&self.shared).flush()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        lock(&self.shared).close_session(self.id);
    }
}

#[cfg(test)]
mod tests;
