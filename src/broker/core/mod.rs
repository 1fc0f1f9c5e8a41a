//! The core's state and its rules, behind the mutex in `mod.rs`.
//!
//! Invariants enforced here:
//! - a persistent change is appended to the store before anything observes it, and becomes
//!   visible (consumers, confirmations) only when the confirmed watermark passes the end of its
//!   record, in append order (`pending` is ordered by position);
//! - a consumer holds at most `prefetch` unacknowledged deliveries, so one stuck consumer never
//!   holds more than its window and never stops the others (except by request: an exclusive
//!   consumer alone receives its queue, and a message group's messages wait for its consumer);
//! - a slow non-durable topic subscriber never blocks a producer: past its pending limit the
//!   oldest messages for it are discarded and counted.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};

use super::memory::Memory;
use super::queue::{has_credit, Body, Consumer, Entry, InFlight, Queue, Source};
use super::schedule;
use super::selector::Selector;
use super::store_limit::{self, StoreUsage};
use super::wildcard::{self, Pattern};
use super::{
    AckScope, AdminError, BrokerError, BrokerOptions, Confirmation, Delivery, Destination,
    NewMessage, Purged, Retried, SubscribeRequest,
};
use crate::store::{
    entry, EpochStart, Header, Message, MessageAdd, MessageKey, MessageRemove, Position,
    ProducerAudit, Record, Recovered, Store, SubscriptionAdd, SubscriptionRemove,
};

/// How many ready messages nobody can take one selective dispatch (selectors, message groups)
/// passes over before it stops: a queue whose head no consumer can take (a group whose
/// consumer's window is full, selectors nothing matches) then costs each send and ack bounded
/// work under the core's lock instead of a walk through its whole backlog. ActiveMQ bounds the
/// same walk by its page size (200 messages), and a consumer whose messages lie beyond the page
/// waits; here the periodic sweep walks on ([`Core::continue_scans`]), so such a message is
/// found within a few sweeps.
pub(super) const SCAN_LIMIT: usize = 1_000;
/// How far each sweep walks on from where a stopped dispatch (or the last sweep) left off.
const SWEEP_SCAN_LIMIT: usize = 50_000;
/// How many due scheduled messages [`Core::release_due`] publishes under one hold of the core
/// lock; the sweep task takes the lock again at once for the rest.
pub(super) const RELEASE_BATCH: usize = 1_000;
/// How many messages one batch of an admin operation (purge, delete, retry) handles under one
/// hold of the core lock; [`super::Broker`] takes the lock again for the next.
pub(super) const ADMIN_BATCH: usize = 1_000;
/// A retry batch also ends once it has moved this many bytes of messages, each read back and
/// held until its record is confirmed: 1000 large messages would take that much memory and
/// time under the lock.
const ADMIN_BATCH_BYTES: usize = 64 << 20;
/// How many scheduled messages one step of a scheduler management request (see
/// [`Core::manage_step`]) looks at, and how many browse copies it sends, under one hold of the
/// core lock; [`super::Session`] takes the lock again for the next step.
const MANAGE_SCAN: usize = 4_096;
const MANAGE_COPIES: usize = 256;

/// A retry (and the release of due scheduled messages) gathers moves into records of at most
/// this many bytes (a single larger move gets a record of its own, up to the journal's
/// `MAX_RECORD_LEN`), as the producer carry bounds its records: a record is encoded whole in
/// memory and sent whole to the slaves.
const MOVE_RECORD_LEN: usize = 16 << 20;

/// Counters for logs, status and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub epoch: u64,
    pub journal_end: u64,
    /// Bytes of the journal's retained records (segments not yet released): what a stopped
    /// consumer makes grow.
    pub journal_retained: u64,
    pub confirmed: u64,
    pub sessions: usize,
    pub consumers: usize,
    pub queues: usize,
    pub ready_messages: usize,
    pub in_flight_messages: usize,
    pub pending_confirmations: usize,
    pub enqueued: u64,
    pub delivered: u64,
    pub acknowledged: u64,
    pub duplicates_dropped: u64,
    pub dead_lettered: u64,
    pub expired: u64,
    pub topic_discarded: u64,
    /// Ready messages selective dispatches examined and left (no consumer could take them).
    pub passed_over: u64,
    /// Bytes of queued message bodies held in memory (see `memory_limit`).
    pub resident_bytes: u64,
    /// The non-persistent part of `resident_bytes`; at `memory_limit`, connections that send
    /// non-persistent messages stop being read (producer flow control).
    pub transient_bytes: u64,
    /// The bytes the journal takes on disk as last measured (see `Store::disk_bytes`), and
    /// `store_limit` (capped at start to the disk's room).
    pub store_bytes: u64,
    pub store_limit: u64,
    /// `store_bytes` is at or past `store_limit`: persistent sends wait or are refused.
    pub store_full: bool,
    /// Messages queued with their body left in the journal, and bodies read back from it.
    pub bodies_left_on_disk: u64,
    pub bodies_read_back: u64,
    /// Messages held until due (`scheduler_support`): stored in the holding area, persistent
    /// or not.
    pub scheduled: usize,
}

type Reply = oneshot::Sender<Result<(), BrokerError>>;

/// Waits for the confirmed watermark to pass `end`, then publishes and replies.
struct Pending {
    end: Position,
    publish: Vec<Publish>,
    reply: Option<Reply>,
}

enum Publish {
    Queue(String, Entry),
    /// A topic message, and the session that sent it (for noLocal subscribers).
    Topic(String, Arc<Message>, u64),
    /// A message the store recovered, shown once the epoch-start record is confirmed (not a
    /// new enqueue).
    Recovered(String, Entry),
    /// A scheduled message stored on [`HOLDING`] until due, then routed to its destination
    /// (`message.destination`) as a send made then (see [`Core::release_due`]).
    Scheduled(Entry),
}

/// The store's holding area for scheduled messages: a queue no client can name (every
/// destination is `queue://` or `topic://`). A message waits there, persistent or not, until
/// due; one record then removes it and stores it at its destination.
const HOLDING: &str = "scheduled://";

impl Publish {
    /// When the message is due, if that is still ahead (a scheduled message, see
    /// [`schedule`]); costs a field read for any other.
    fn due_after(&self, now: impl FnOnce() -> i64) -> Option<i64> {
        let deliver_at = match self {
            Publish::Queue(_, entry) | Publish::Recovered(_, entry) | Publish::Scheduled(entry) => {
                entry.message.deliver_at
            }
            Publish::Topic(_, message, _) => message.deliver_at,
        };
        (deliver_at > 0 && deliver_at > now()).then_some(deliver_at)
    }
}

struct SessionState {
    client_id: Option<String>,
    deliveries: mpsc::UnboundedSender<Delivery>,
    /// Subscription id -> its consumer ids: one, or one per member of a composite
    /// destination (see [`Core::subscribe_each`]).
    subscriptions: HashMap<String, Vec<u64>>,
    transactions: HashMap<String, Transaction>,
    /// Who its sends are from, for noLocal (see `Entry::origin`): its session id, or its
    /// client connection's [`connection_origin`] once the protocol named the connection.
    origin: u64,
}

/// The origin (see `Entry::origin`) of the messages of client connection `connection` (an
/// OpenWire connection id): the same for each socket its failover transport opens, and after
/// a restart or failover, as ActiveMQ's noLocal compares the message's producer connection id
/// with the consumer's. A hash with its top bit set, apart from session ids.
fn connection_origin(connection: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in connection.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash | (1 << 63)
}

/// The origin of a stored message, from its producer id (OpenWire's
/// `<connection id>:<session>:<producer>`); 0 (nobody's) for any other.
fn stored_origin(producer_id: &str) -> u64 {
    let mut parts = producer_id.rsplitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(_), Some(connection)) if connection.starts_with("ID:") => {
            connection_origin(connection)
        }
        _ => 0,
    }
}

#[derive(Default)]
struct Transaction {
    sends: Vec<(Destination, Arc<Message>)>,
    /// Acknowledged deliveries: (consumer, delivery tag, what was delivered).
    acks: Vec<(u64, u64, InFlight)>,
    /// Rejected deliveries (a STOMP NACK in the transaction): dead-lettered at commit,
    /// redelivered at rollback.
    nacks: Vec<InFlight>,
    /// Body bytes of `sends`, held in memory until the commit: at most `memory_limit`.
    bytes: u64,
    /// How many more messages the commit stores than `sends` holds: the repeats of scheduled
    /// sends (`AMQ_SCHEDULED_REPEAT`), each a message of its own once committed.
    repeats: usize,
}

/// Whether `entries` fit one journal record (the journal refuses a longer one, and fails).
fn fits_one_record(entries: &[crate::store::Entry]) -> bool {
    record_len(entries) <= crate::store::record::MAX_RECORD_LEN
}

/// At least the length of the record `entries` make: each entry's field tag and length
/// prefix, the epoch and the frame header take less than 16 bytes an entry.
fn record_len(entries: &[crate::store::Entry]) -> usize {
    entries
        .iter()
        .map(|e| prost::Message::encoded_len(e) + 16)
        .sum()
}

/// The job id of a scheduled message (its `scheduledJobId`, see [`schedule::stamp`]): repeated
/// deliveries of one message share it.
fn job_id(message: &Message) -> &str {
    message
        .headers
        .iter()
        .find(|h| h.name == schedule::SCHEDULED_ID)
        .map_or(message.message_id.as_str(), |h| h.value.as_str())
}

/// The destination a reply-to header names, in the core's form (see
/// `crate::protocol::destination_to_core`): a queue or a topic, or a JMS client's temporary
/// queue or topic (`temp-queue://ID:...`), which the core keeps as a queue or a topic of that
/// name.
fn reply_destination(reply_to: &str) -> Result<Destination, BrokerError> {
    let invalid = || BrokerError::InvalidDestination(reply_to.to_string());
    if let Some(name) = reply_to.strip_prefix("temp-queue://") {
        return Destination::parse(&format!("queue://{name}")).map_err(|_| invalid());
    }
    if let Some(name) = reply_to.strip_prefix("temp-topic://") {
        return Destination::parse(&format!("topic://{name}")).map_err(|_| invalid());
    }
    Destination::parse(reply_to).map_err(|_| invalid())
}

/// Makes `original-destination` name `origin`, replacing any the message carried (where a
/// dead letter came from, or the DLQ a retried one comes back from).
fn set_original_destination(message: &mut Message, origin: String) {
    message.headers.retain(|h| h.name != "original-destination");
    message
        .headers
        .push(Header::text("original-destination", origin));
}

/// The destination a dead-lettered message came from, from its `original-destination` header
/// (`queue://x` or `topic://x`, as [`Core::dead_letter`] writes it); `None` without one or
/// with one that names no destination.
fn original_destination(message: &Message) -> Option<Destination> {
    let header = message
        .headers
        .iter()
        .find(|h| h.name == "original-destination")?;
    Destination::parse(&header.value).ok()
}

/// A transaction whose commit would not fit one record.
fn too_many_entries(tx: &str) -> BrokerError {
    BrokerError::TransactionTooLarge(
        tx.to_string(),
        format!(
            "more than {} sends and acknowledgements",
            crate::store::MAX_ENTRIES
        ),
    )
}

impl Transaction {
    /// The entries its commit record will hold (at most one record's worth).
    fn entries(&self) -> usize {
        self.sends.len() + self.repeats + self.acks.len()
    }
}

#[derive(Default)]
struct Topic {
    /// Non-durable subscribers (consumer ids).
    subscribers: Vec<u64>,
    /// The queues this topic feeds: its durable subscriptions' and, on a virtual topic, its
    /// consumer queues (`queue://Consumer.<name>.VirtualTopic.X`). A persistent message is
    /// stored once, in one `MessageAdd` naming all of them.
    durables: Vec<String>,
}

impl Topic {
    fn is_empty(&self) -> bool {
        self.subscribers.is_empty() && self.durables.is_empty()
    }
}

/// The subscriptions on one wildcard pattern (`topic://logs.>`): every message published to a
/// topic the pattern matches reaches them too.
struct Wildcard {
    pattern: Pattern,
    topic: Topic,
}

struct Durable {
    subscription: SubscriptionAdd,
    /// Parsed from `subscription.selector`; `None` accepts everything.
    selector: Option<Arc<Selector>>,
    /// The consumer currently attached, if any.
    active: Option<u64>,
    /// With noLocal, the origin (session or client connection, see `Entry::origin`) it was
    /// last active on: its messages are not stored for it, even while it is inactive (see
    /// [`Core::route`]). In memory only.
    no_local_session: Option<u64>,
}

/// A session writes its own sends' records (inline) only after it was the only sender for this
/// long; see [`Core::take_flush`].
const SOLE_SENDER_FOR: Duration = Duration::from_millis(10);

pub(crate) struct Core {
    /// `None` once the core is closed (this node stopped being the master).
    store: Option<Store>,
    /// The journal end when the store was taken away.
    closed_end: Position,
    epoch: u64,
    options: BrokerOptions,
    /// Set once the store failed: nothing more is accepted.
    failed: Option<String>,
    /// A send or commit queued its record without waking the journal's writer: the caller must
    /// run the flusher [`Core::take_flush`] hands out once the core's lock is released.
    flush_due: bool,
    /// The session of the last send or commit, and when the one before it was another's.
    last_sender: u64,
    senders_mixed_at: Instant,
    confirmed: Position,
    pending: VecDeque<Pending>,
    queues: HashMap<String, Queue>,
    topics: HashMap<String, Topic>,
    /// Subscriptions on wildcard patterns, by canonical pattern (`topic://logs.>`); removed
    /// once unused, so that a publish with none iterates an empty map.
    wildcards: HashMap<String, Wildcard>,
    /// By durable queue name.
    durables: HashMap<String, Durable>,
    /// Known consumer queues of virtual topics (`queue://Consumer.A.VirtualTopic.X`), each fed
    /// by its topic like a durable subscription (see [`Core::register_durable`]) but an ordinary
    /// queue otherwise. Known from the first subscription to it until the data is wiped.
    virtual_queues: BTreeSet<String>,
    sessions: HashMap<u64, SessionState>,
    consumers: HashMap<u64, Consumer>,
    /// Delivery tag -> consumer id.
    tags: HashMap<u64, u64>,
    /// Producer id -> highest sequence appended.
    /// Duplicate detection of re-sent persistent messages (bounded, see [`ProducerAudit`]).
    producers: ProducerAudit,
    /// Orders the audit's entries: one more per recorded send.
    producer_stamp: u64,
    next_session: u64,
    next_consumer: u64,
    next_tag: u64,
    next_seq: u64,
    next_message: u64,
    boot: String,
    stats: Stats,
    /// Bytes of the bodies queued entries hold in memory (see [`Core::admit`]).
    memory: Memory,
    /// Bodies are being left on disk (logged when it starts and when it ends).
    paging: bool,
    /// Non-persistent bodies fill `memory_limit` (logged when it starts and when it ends).
    transient_full: bool,
    /// The store's size against `store_limit` (see [`Core::measure_store`]).
    store_usage: StoreUsage,
    /// The journal end past which an append measures the store again.
    measure_at: Position,
    /// Resolves once the epoch-start record is confirmed and the recovered messages are
    /// delivered (see [`Core::new`]); taken by whoever waits for it.
    started: Confirmation,
    /// Confirmed messages not yet due, by (due time, arrival): moved to their destinations (or
    /// published), in that order, by [`Core::release_due`]. Empty unless `scheduler_support`
    /// stamped a message (or a recovered one carries a due time).
    scheduled: BTreeMap<(i64, u64), Publish>,
    next_scheduled: u64,
    /// Wakes the sweep task when a message due earlier than all others is held.
    scheduler_wake: Arc<tokio::sync::Notify>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `(producer, sequence)` of an id of the form `<producer>:<decimal>`.
fn producer_of(message_id: &str) -> Option<(&str, u64)> {
    let (producer, sequence) = message_id.rsplit_once(':')?;
    if producer.is_empty() {
        return None;
    }
    Some((producer, sequence.parse().ok()?))
}

/// Parses a subscription's selector; an empty one accepts everything.
fn parse_selector(text: Option<&str>) -> Result<Option<Arc<Selector>>, BrokerError> {
    match text.map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => Selector::parse(text)
            .map(|s| Some(Arc::new(s)))
            .map_err(|e| BrokerError::InvalidSelector(e.to_string())),
    }
}

/// Whether a stored [`SubscriptionAdd`] records a virtual topic's consumer queue rather than a
/// durable subscription: its queue is an ordinary queue (`queue://Consumer.A.VirtualTopic.X`),
/// where a durable subscription's is `durable://client:name`. Such a record has an empty
/// client id (which durable subscriptions never have) and the queue as its subscription name.
fn is_virtual_subscription(subscription: &SubscriptionAdd) -> bool {
    subscription.queue.starts_with("queue://")
}

/// The distinct members of a composite destination, in order; more than
/// [`super::MAX_COMPOSITE_MEMBERS`] are refused before they are compared.
fn distinct(members: &[Destination]) -> Result<Vec<&Destination>, BrokerError> {
    if members.len() > super::MAX_COMPOSITE_MEMBERS {
        let first = members
            .first()
            .map(Destination::canonical)
            .unwrap_or_default();
        return Err(BrokerError::InvalidComposite(
            format!("{first},..."),
            super::too_many_members(members.len()),
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(members.len());
    Ok(members.iter().filter(|d| seen.insert(*d)).collect())
}

/// A consumer's priority, by id, as [`Queue`]'s consumer order needs it.
fn priority_of(consumers: &HashMap<u64, Consumer>) -> impl Fn(u64) -> i8 + '_ {
    |cid| consumers.get(&cid).map_or(0, |c| c.priority)
}

/// Refuses a subscription to a queue wildcard (`orders.>`: ActiveMQ would read it as a
/// wildcard; taken as a literal name it would subscribe to nothing without a word) and to a
/// malformed topic wildcard.
fn check_subscribable(destination: &Destination) -> Result<(), BrokerError> {
    let name = destination.name();
    if !wildcard::is_pattern(name) {
        return Ok(());
    }
    match destination {
        Destination::Queue(_) => Err(BrokerError::Unsupported(format!(
            "wildcard subscriptions on queues ('{name}'); wildcards work on topics: \
             subscribe to each queue by name"
        ))),
        Destination::Topic(_) => Pattern::parse(name)
            .map(|_| ())
            .map_err(|e| BrokerError::Unsupported(format!("wildcard {e}"))),
    }
}

/// The queue that holds a durable subscription's messages.
fn durable_queue(client_id: &str, name: &str) -> String {
    let escape = |s: &str| s.replace('%', "%25").replace(':', "%3A");
    format!("durable://{}:{}", escape(client_id), escape(name))
}

fn add_entry(queues: Vec<String>, message: Arc<Message>) -> crate::store::Entry {
    crate::store::Entry {
        kind: Some(entry::Kind::Add(MessageAdd {
            queues,
            message: Some((*message).clone()),
        })),
    }
}

fn remove_entry(queue: &str, key: MessageKey) -> crate::store::Entry {
    crate::store::Entry {
        kind: Some(entry::Kind::Remove(MessageRemove {
            queue: queue.to_string(),
            key: key.0,
        })),
    }
}

impl Core {
    pub fn new(
        store: Store,
        recovered: Recovered,
        epoch: u64,
        options: BrokerOptions,
    ) -> Result<Core, BrokerError> {
        let boot = format!("{:x}", now_ms());
        let memory = Memory::new(options.memory_limit);
        let store_limit = store_limit::capped(
            options.store_limit,
            store.disk_bytes(),
            store.available_space(),
            store.directory(),
        );
        let store_usage = StoreUsage::new(store_limit, options.send_fail_if_no_space);
        let mut core = Core {
            confirmed: Position(0),
            store: Some(store),
            closed_end: Position(0),
            epoch,
            options,
            failed: None,
            flush_due: false,
            last_sender: 0,
            senders_mixed_at: Instant::now(),
            pending: VecDeque::new(),
            queues: HashMap::new(),
            topics: HashMap::new(),
            wildcards: HashMap::new(),
            durables: HashMap::new(),
            virtual_queues: BTreeSet::new(),
            sessions: HashMap::new(),
            consumers: HashMap::new(),
            tags: HashMap::new(),
            producers: ProducerAudit::default(),
            producer_stamp: 0,
            next_session: 1,
            next_consumer: 1,
            next_tag: 1,
            next_seq: 1,
            next_message: 1,
            boot,
            stats: Stats::default(),
            memory,
            paging: false,
            transient_full: false,
            store_usage,
            measure_at: Position(0),
            started: Confirmation::done(),
            scheduled: BTreeMap::new(),
            next_scheduled: 0,
            scheduler_wake: Arc::new(tokio::sync::Notify::new()),
        };
        // Least recently stored first, so the audit forgets in the store's order.
        for (producer, sequence) in &recovered.producers {
            core.record_producer(producer, *sequence);
        }
        for subscription in recovered.subscriptions {
            core.register_durable(subscription);
        }
        let mut inherited = Vec::new();
        for (queue, messages) in recovered.queues {
            let holding = queue == HOLDING;
            if !holding {
                // The queue exists (and a consumer may subscribe) before its messages show.
                core.queues.entry(queue.clone()).or_default();
            }
            for (key, message) in messages {
                let redeliveries = message.redelivery_count;
                let origin = stored_origin(&message.producer_id);
                let mut entry = Entry::new(Some(key), Arc::new(message), redeliveries).from(origin);
                if recovered.bodies_on_disk.contains(&key) {
                    entry.body = Body::OnDisk;
                }
                inherited.push(if holding {
                    Publish::Scheduled(entry)
                } else {
                    Publish::Recovered(queue.clone(), entry)
                });
            }
        }
        // The epoch-start record comes first: nothing written under this epoch is confirmed
        // before it is held. Nor is anything recovered delivered before: a new master may hold
        // records that the previous one never had confirmed, and they are safe (on a quorum,
        // so that every later master holds them) only once the epoch-start record after them
        // is; delivered earlier, a message could be consumed and then lost with this node.
        core.append(vec![crate::store::Entry {
            kind: Some(entry::Kind::EpochStart(EpochStart {
                epoch,
                node: core.options.name.clone(),
            })),
        }])?;
        core.started = core.wait_for(inherited);
        Ok(core)
    }

    /// Journals a new durable subscription (or virtual topic consumer queue) and registers it;
    /// the confirmation resolves once its record is confirmed.
    fn record_subscription(
        &mut self,
        subscription: SubscriptionAdd,
    ) -> Result<Confirmation, BrokerError> {
        self.append(vec![crate::store::Entry {
            kind: Some(entry::Kind::Subscribe(subscription.clone())),
        }])?;
        self.register_durable(subscription);
        Ok(self.flush())
    }

    /// Registers a stored subscription: a durable topic subscription, or a virtual topic's
    /// consumer queue (see [`is_virtual_subscription`]), which its topic feeds the same way but
    /// which is an ordinary queue to its consumers: none of the durable rules (one active
    /// subscriber, a client id, unsubscribe) apply to it.
    fn register_durable(&mut self, subscription: SubscriptionAdd) {
        let queue = subscription.queue.clone();
        // A wildcard durable (its topic is the pattern) is registered as when it was made, on
        // start, after an index rebuild or on a promoted slave alike.
        match self.topic_mut(&subscription.topic) {
            Some(topic) => {
                if !topic.durables.contains(&queue) {
                    topic.durables.push(queue.clone());
                }
            }
            None => {
                tracing::warn!(queue, topic = %subscription.topic, "stored subscription's topic is not a valid wildcard pattern; its queue receives nothing from it");
            }
        }
        self.queues.entry(queue.clone()).or_default();
        if is_virtual_subscription(&subscription) {
            self.virtual_queues.insert(queue);
            return;
        }
        if let Some(q) = self.queues.get_mut(&queue) {
            q.subscription = true;
            q.groups = None;
        }
        let selector = match parse_selector(Some(&subscription.selector)) {
            Ok(selector) => selector,
            Err(e) => {
                tracing::warn!(queue, error = %e, "stored durable selector does not parse; delivering everything");
                None
            }
        };
        self.durables.insert(
            queue,
            Durable {
                subscription,
                selector,
                active: None,
                no_local_session: None,
            },
        );
    }

    /// The subscriptions on topic or wildcard pattern `canonical` (`topic://x`), made if
    /// missing; `None` for an invalid pattern (refused before anything is stored).
    fn topic_mut(&mut self, canonical: &str) -> Option<&mut Topic> {
        let name = canonical.strip_prefix("topic://").unwrap_or(canonical);
        if !wildcard::is_pattern(name) {
            return Some(self.topics.entry(canonical.to_string()).or_default());
        }
        match self.wildcards.entry(canonical.to_string()) {
            MapEntry::Occupied(e) => Some(&mut e.into_mut().topic),
            MapEntry::Vacant(v) => {
                let pattern = Pattern::parse(name).ok()?;
                let wildcard = v.insert(Wildcard {
                    pattern,
                    topic: Topic::default(),
                });
                Some(&mut wildcard.topic)
            }
        }
    }

    /// Changes the subscriptions on topic or pattern `canonical`, if it has any; a pattern
    /// left without subscriptions is forgotten.
    fn change_topic(&mut self, canonical: &str, change: impl FnOnce(&mut Topic)) {
        if let Some(topic) = self.topics.get_mut(canonical) {
            change(topic);
        } else if let Some(wildcard) = self.wildcards.get_mut(canonical) {
            change(&mut wildcard.topic);
            if wildcard.topic.is_empty() {
                self.wildcards.remove(canonical);
            }
        }
    }

    /// The subscriptions on the wildcard patterns that match topic `name` (without prefix).
    /// A JMS temporary topic (named after its connection, `ID:...`) matches none: in ActiveMQ
    /// temporary destinations are a tree of their own, so a subscriber on `>` never sees
    /// another connection's request/reply traffic.
    fn wildcards_matching<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Topic> + 'a {
        let temporary = name.starts_with("ID:");
        self.wildcards
            .values()
            .filter(move |w| !temporary && w.pattern.matches(name))
            .map(|w| &w.topic)
    }

    /// Appends one record; returns the key base position and the record's end.
    fn append(
        &mut self,
        entries: Vec<crate::store::Entry>,
    ) -> Result<(Position, Position), BrokerError> {
        self.append_waking(entries, true)
    }

    /// Appends removals (and the like) that need not be atomic, in as many records as
    /// [`crate::store::MAX_ENTRIES`] requires: a cumulative ack or a removed durable
    /// subscription may cover more messages than one record holds.
    fn append_in_chunks(&mut self, entries: Vec<crate::store::Entry>) -> Result<(), BrokerError> {
        let mut entries = entries.into_iter().peekable();
        while entries.peek().is_some() {
            let chunk: Vec<_> = entries.by_ref().take(crate::store::MAX_ENTRIES).collect();
            self.append(chunk)?;
        }
        Ok(())
    }

    /// Like [`Core::append`] for a sender that waits for the confirmation: the journal's writer
    /// is not woken, and the caller flushes (see [`Core::take_flush`]).
    fn append_deferred(
        &mut self,
        entries: Vec<crate::store::Entry>,
    ) -> Result<(Position, Position), BrokerError> {
        self.append_waking(entries, false)
    }

    /// Who must write what `session`'s send or commit queued, once the core's lock is released:
    /// the sender's own thread when it is the only one waiting for a confirmation and no other
    /// session sent for [`SOLE_SENDER_FOR`] (and no batch is being written, see
    /// `Flusher::flush`); else the journal's writer thread, woken here, which batches
    /// concurrent senders. Concurrent senders must not write inline: a runtime thread blocked in
    /// an fsync does not read the other connections' sends, which would then arrive one by one
    /// and each pay an fsync of its own.
    pub fn take_flush(&mut self, session: u64) -> Option<crate::store::Flusher> {
        if !std::mem::take(&mut self.flush_due) {
            return None;
        }
        let now = Instant::now();
        if session != self.last_sender {
            self.last_sender = session;
            self.senders_mixed_at = now;
        }
        let store = self.store.as_ref()?;
        if self.pending.len() > 1 || now.duration_since(self.senders_mixed_at) < SOLE_SENDER_FOR {
            store.wake_writer();
            return None;
        }
        Some(store.flusher())
    }

    fn append_waking(
        &mut self,
        entries: Vec<crate::store::Entry>,
        wake: bool,
    ) -> Result<(Position, Position), BrokerError> {
        if let Some(reason) = &self.failed {
            return Err(BrokerError::StoreFailed(reason.clone()));
        }
        let Some(store) = self.store.as_mut() else {
            return Err(BrokerError::NotMaster("the node stepped down".into()));
        };
        let record = Record {
            epoch: self.epoch,
            entries,
        };
        let appended = if wake {
            store.append(&record)
        } else {
            self.flush_due = true;
            store.append_deferred(&record)
        };
        match appended {
            Ok(position) => {
                let end = store.end();
                if end >= self.measure_at {
                    self.measure_store();
                }
                Ok((position, end))
            }
            Err(error) => {
                let reason = error.to_string();
                tracing::error!(%reason, "store append failed; refusing all further writes");
                self.fail_waiting(&reason);
                Err(BrokerError::StoreFailed(reason))
            }
        }
    }

    /// Refuses everything from now on, and fails every confirmation still waiting.
    fn fail_waiting(&mut self, reason: &str) {
        self.failed = Some(reason.to_string());
        for pending in self.pending.drain(..) {
            if let Some(reply) = pending.reply {
                let _ = reply.send(Err(BrokerError::StoreFailed(reason.to_string())));
            }
        }
    }

    /// Releases the journal segments that confirmed records made releasable (in a cluster they
    /// wait for the confirmation; see `Store::hold_releases_until_confirmed`). Called by the
    /// periodic sweep, outside the journal's writer thread.
    pub fn release_confirmed(&mut self) {
        if let Some(store) = &mut self.store {
            store.release_confirmed();
        }
    }

    /// Tells the `store_limit` gate the store's size (see `Store::disk_bytes`). Called by the
    /// periodic sweep, by an append once the journal grew by a sixteenth of a segment since
    /// the last time (a new segment is noticed that soon), and while the store is full at
    /// each confirmation (a released segment is deleted once a batch is durable).
    pub fn measure_store(&mut self) {
        let Some(store) = &self.store else {
            return;
        };
        self.store_usage.update(store.disk_bytes());
        self.measure_at = Position(store.end().0 + (store.log_size() / 16).max(1));
    }

    /// A persistent send (or a commit carrying one) that the store has no room for, with
    /// `send_fail_if_no_space`: its refusal, naming the limit. Without, it is stored and its
    /// connection is held back (`Session::hold_back`).
    fn refuse_if_full(&self) -> Result<(), BrokerError> {
        if self.options.send_fail_if_no_space && self.store_usage.is_full() {
            return Err(self.store_usage.refusal());
        }
        Ok(())
    }

    /// Notices a store that failed on its own (the journal's writer could not write, sync or
    /// prepare a segment: a full disk, say). No append reports that until the next one is
    /// tried, so without this a sender whose record was in the failed batch would wait for
    /// ever; called on every sweep tick.
    pub fn check_store(&mut self) {
        if self.failed.is_some() {
            return;
        }
        let Some(reason) = self.store.as_ref().and_then(Store::failure) else {
            return;
        };
        tracing::error!(%reason, waiting = self.pending.len(), "the store failed; refusing all further writes and failing what waits for confirmation");
        self.fail_waiting(&reason);
    }

    /// Resolves once the messages recovered at start are delivered (see [`Core::new`]); done
    /// for a second caller.
    pub fn take_started(&mut self) -> Confirmation {
        std::mem::replace(&mut self.started, Confirmation::done())
    }

    /// Why the store failed, if it did (noticed by [`Core::check_store`] or by an append).
    pub fn store_failure(&mut self) -> Option<String> {
        self.check_store();
        self.failed.clone()
    }

    #[cfg(test)]
    pub(crate) fn store(&self) -> &Store {
        self.store.as_ref().expect("the store is open")
    }

    fn end(&self) -> Position {
        self.store.as_ref().map_or(self.closed_end, Store::end)
    }

    /// Stops the core: every waiting confirmation fails with `reason` and later requests are
    /// refused. Returns the store so the caller can close it before reopening it in another role.
    pub fn close(&mut self, reason: &str) -> Option<Store> {
        self.closed_end = self.end();
        for pending in self.pending.drain(..) {
            if let Some(reply) = pending.reply {
                let _ = reply.send(Err(BrokerError::NotMaster(reason.to_string())));
            }
        }
        self.store.take()
    }

    /// A confirmation that resolves once everything appended so far is confirmed.
    pub fn flush(&mut self) -> Confirmation {
        self.wait_for(Vec::new())
    }

    /// Queues `publish` behind the current end of the journal.
    fn wait_for(&mut self, publish: Vec<Publish>) -> Confirmation {
        let end = self.end();
        if self.pending.is_empty() && self.confirmed >= end {
            self.publish_now(publish);
            return Confirmation::done();
        }
        let (reply, confirmation) = Confirmation::pending();
        self.pending.push_back(Pending {
            end,
            publish,
            reply: Some(reply),
        });
        confirmation
    }

    /// The watermark moved: everything before `position` is held as `sync` requires.
    pub fn on_confirmed(&mut self, position: Position) {
        if position <= self.confirmed {
            return;
        }
        self.confirmed = position;
        if let Some(store) = &mut self.store {
            store.set_confirmed(position);
        }
        if self.store_usage.is_full() {
            self.measure_store();
        }
        let mut touched = BTreeSet::new();
        while self.pending.front().is_some_and(|p| p.end <= position) {
            let pending = self.pending.pop_front().expect("checked non-empty");
            for p in pending.publish {
                self.publish(p, &mut touched);
            }
            if let Some(reply) = pending.reply {
                let _ = reply.send(Ok(()));
            }
        }
        self.dispatch_all(touched);
    }

    fn publish(&mut self, publish: Publish, touched: &mut BTreeSet<String>) {
        if let Some(due) = publish.due_after(now_ms) {
            self.hold(due, publish);
            return;
        }
        match publish {
            // Due already (recovered after its time): its move is a record of its own, written
            // by [`Core::release_due`], not from inside a confirmation.
            Publish::Scheduled(entry) => {
                self.hold(entry.message.deliver_at, Publish::Scheduled(entry))
            }
            Publish::Queue(queue, entry) => {
                self.stats.enqueued += 1;
                self.push_ready(queue, entry, touched);
            }
            Publish::Recovered(queue, entry) => self.push_ready(queue, entry, touched),
            Publish::Topic(topic, message, origin) => {
                self.publish_to_subscribers(&topic, message, origin)
            }
        }
    }

    /// Keeps a confirmed message that is not yet due out of dispatch until `due`: a message in
    /// the holding area ([`Publish::Scheduled`], persistent or not), or one an older version
    /// stored at its destination with its due time. Its body waits in the journal (read back
    /// when due), so a backlog of scheduled messages costs memory only for their headers. (Every
    /// held message is stored: non-persistent delayed messages go to the holding area too.)
    fn hold(&mut self, due: i64, mut publish: Publish) {
        if let Publish::Queue(_, entry) | Publish::Recovered(_, entry) | Publish::Scheduled(entry) =
            &mut publish
        {
            if entry.key.is_some() && matches!(entry.body, Body::Uncounted) {
                leave_body_on_disk(entry);
            }
        }
        let earliest = self.scheduled.keys().next().is_none_or(|(d, _)| due < *d);
        self.scheduled.insert((due, self.next_scheduled), publish);
        self.next_scheduled += 1;
        if earliest {
            self.scheduler_wake.notify_one();
        }
    }

    /// Publishes the held messages that are due, in due order (each to the tail of its queue),
    /// at most [`RELEASE_BATCH`] at a time so that many messages due at once do not keep the
    /// core locked; returns how long until the next one is (zero: more are due already).
    pub fn release_due(&mut self) -> Option<Duration> {
        let now = now_ms();
        let mut due = Vec::new();
        let mut moves = Vec::new();
        while let Some(entry) = self.scheduled.first_entry() {
            if entry.key().0 > now || due.len() + moves.len() == RELEASE_BATCH {
                break;
            }
            match entry.remove() {
                Publish::Scheduled(held) => moves.push(held),
                other => due.push(other),
            }
        }
        if !due.is_empty() {
            self.publish_now(due);
        }
        if !moves.is_empty() {
            self.move_due(moves);
        }
        let (next, _) = self.scheduled.keys().next()?;
        if *next <= now {
            return Some(Duration::ZERO);
        }
        Some(Duration::from_millis(next.saturating_sub(now) as u64))
    }

    /// Routes due messages from the holding area to their destinations as sends made now (the
    /// durable subscriptions and subscribers of this moment). Each message's add there and its
    /// removal from [`HOLDING`] are in one record (with other moves, up to [`MOVE_RECORD_LEN`]),
    /// so that a crash leaves it in one place or the other. One that fails (its body cannot be
    /// read back, the store failed) stays in the holding area of the store, for a restart or a
    /// later master to move.
    fn move_due(&mut self, moves: Vec<Entry>) {
        let mut chunk = (Routed::default(), 0);
        for held in moves {
            let moved = self.route_due(held).and_then(|(entries, stored, publish)| {
                let len = record_len(&entries);
                if len > crate::store::record::MAX_RECORD_LEN {
                    return self.move_in_two(entries, stored, publish);
                }
                self.gather_move(&mut chunk, len, entries, stored, publish)
            });
            if let Err(error) = moved {
                tracing::error!(%error, "could not move a due scheduled message to its destination");
            }
        }
        if !chunk.0.entries.is_empty() {
            if let Err(error) = self.append_moves(chunk.0) {
                tracing::error!(%error, "could not move due scheduled messages to their destinations");
            }
        }
    }

    /// What moving `held` out of the holding area takes: the entries (its add at its
    /// destination, if stored there, then its removal from [`HOLDING`]), whether it is stored,
    /// and what to publish once they are confirmed.
    fn route_due(
        &mut self,
        held: Entry,
    ) -> Result<(Vec<crate::store::Entry>, bool, Vec<Publish>), BrokerError> {
        let Some(key) = held.key else {
            return Err(BrokerError::InvalidMessage(
                "a held message without a key".into(),
            ));
        };
        let message = self.with_body(&held)?;
        if matches!(held.body, Body::OnDisk) {
            self.stats.bodies_read_back += 1;
        }
        let (mut entries, publish) = match Destination::parse(&message.destination) {
            Ok(destination) => self.route(held.origin, &destination, message),
            Err(_) => {
                tracing::warn!(destination = %message.destination, "dropping a scheduled message for no destination");
                (Vec::new(), Vec::new())
            }
        };
        let stored = !entries.is_empty();
        entries.push(remove_entry(HOLDING, key));
        Ok((entries, stored, publish))
    }

    /// A scheduler management request (`scheduler_support` on, a send to a destination named
    /// [`schedule::MANAGEMENT_DESTINATION`]), read from `new`, or `None` for an ordinary send.
    /// Such a send is never delivered, as in ActiveMQ, whatever it asks.
    pub fn management_request(
        &self,
        destinations: &[Destination],
        new: &NewMessage,
    ) -> Result<Option<Management>, BrokerError> {
        let [destination] = destinations else {
            return Ok(None);
        };
        if !self.options.scheduler_support || !schedule::is_management(destination.name()) {
            return Ok(None);
        }
        let reply_to = new
            .headers
            .iter()
            .find(|h| h.name == super::REPLY_TO_HEADER)
            .map_or("", |h| h.value.as_str());
        let request = schedule::request(&new.headers, reply_to)?;
        let reply_to = match &request.action {
            schedule::Action::Browse(to) => Some(reply_destination(to)?),
            _ => None,
        };
        Ok(Some(Management {
            request,
            reply_to,
            next: None,
            browsed: HashSet::new(),
            next_of: HashMap::new(),
            removing: HashSet::new(),
        }))
    }

    /// One step of a management request: looks at up to [`MANAGE_SCAN`] of the scheduled
    /// messages (in due order, from where the last step stopped), browsing (sending up to
    /// [`MANAGE_COPIES`] non-persistent copies to the reply-to) or removing them (journaled
    /// removes of their [`HOLDING`] adds). Answers whether more steps are needed.
    ///
    /// A repeated message's deliveries share a job id and are one job, as in ActiveMQ: a
    /// browse sends one copy per job (of its next delivery), a removal removes every delivery.
    /// A range selects the jobs whose next delivery is due in it (ActiveMQ keeps a job under
    /// its next run time): a job's later repeats in the range do not select it, and a ranged
    /// REMOVEALL removes the repeats of a job it selects, in the range or not.
    pub fn manage_step(&mut self, session: u64, m: &mut Management) -> Result<bool, BrokerError> {
        use std::ops::Bound;
        let range = m.request.range;
        if matches!(m.request.action, schedule::Action::Nothing)
            || range.is_some_and(|(start, end)| start > end)
        {
            return Ok(false);
        }
        // With a range, the scan starts at the earliest delivery, to tell each job's next
        // delivery; a browse ends it at the range's end, a removal goes on for the repeats.
        let end = match (&m.request.action, range) {
            (schedule::Action::Browse(_), Some((_, end))) => Bound::Included((end, u64::MAX)),
            _ => Bound::Unbounded,
        };
        let start = m.next.map_or(Bound::Unbounded, Bound::Included);
        let (mut looked, mut chosen) = (0, Vec::new());
        let mut more = false;
        for (key, publish) in self.scheduled.range((start, end)) {
            if looked == MANAGE_SCAN || chosen.len() == MANAGE_COPIES {
                m.next = Some(*key);
                more = true;
                break;
            }
            looked += 1;
            let Publish::Scheduled(entry) = publish else {
                continue;
            };
            let job = job_id(&entry.message);
            // Whether this is its job's next delivery and due in the range (a ranged request
            // only: the map of jobs seen grows with the scan).
            let mut selected = || {
                let (start, end) = range.expect("a ranged request");
                if key.0 > end {
                    return false;
                }
                let first = *m.next_of.entry(job.to_string()).or_insert(*key);
                first == *key && key.0 >= start
            };
            let wanted = match (&m.request.action, range) {
                (schedule::Action::Browse(_), None) => !m.browsed.contains(job),
                (schedule::Action::Browse(_), Some(_)) => selected() && !m.browsed.contains(job),
                (schedule::Action::Remove(id), _) => id == job,
                (schedule::Action::RemoveAll, None) => true,
                (schedule::Action::RemoveAll, Some((_, end))) => {
                    if selected() {
                        m.removing.insert(job.to_string());
                    } else if key.0 > end && m.removing.is_empty() {
                        break;
                    }
                    m.removing.contains(job)
                }
                (schedule::Action::Nothing, _) => false,
            };
            if wanted {
                chosen.push(*key);
            }
        }
        match m.reply_to.clone() {
            Some(reply_to) => {
                if let Some(stopped) = self.browse_copies(session, &reply_to, &chosen, m) {
                    m.next = Some(stopped);
                    more = true;
                }
            }
            None => {
                let removes = chosen
                    .iter()
                    .filter_map(|key| match self.scheduled.remove(key) {
                        Some(Publish::Scheduled(e)) => e.key.map(|k| remove_entry(HOLDING, k)),
                        _ => None,
                    })
                    .collect();
                self.append_in_chunks(removes)?;
            }
        }
        Ok(more)
    }

    /// Sends a copy of each of the scheduled messages at `keys` to `reply_to`, as ActiveMQ's
    /// browse does: non-persistent, with an id of its own, JMSType `Advisory`, its
    /// destination in `original-destination` and its job id in `scheduledJobId`. A copy
    /// whose body cannot be read back is skipped (and logged). Stops once the copies hold
    /// [`ADMIN_BATCH_BYTES`], answering the first key not copied.
    fn browse_copies(
        &mut self,
        session: u64,
        reply_to: &Destination,
        keys: &[(i64, u64)],
        m: &mut Management,
    ) -> Option<(i64, u64)> {
        let mut sends = Vec::with_capacity(keys.len());
        let (mut bytes, mut stopped) = (0, None);
        for key in keys {
            if bytes >= ADMIN_BATCH_BYTES {
                stopped = Some(*key);
                break;
            }
            let Some(Publish::Scheduled(entry)) = self.scheduled.get(key) else {
                continue;
            };
            let entry = entry.clone();
            let message = match self.with_body(&entry) {
                Ok(message) => message,
                Err(error) => {
                    tracing::error!(%error, "could not read a scheduled message back to browse it");
                    continue;
                }
            };
            if matches!(entry.body, Body::OnDisk) {
                self.stats.bodies_read_back += 1;
            }
            let job = job_id(&message).to_string();
            if !m.browsed.insert(job.clone()) {
                continue;
            }
            let mut copy = (*message).clone();
            bytes += copy.body.len();
            copy.headers.retain(|h| {
                ![
                    super::JMS_TYPE_HEADER,
                    "original-destination",
                    schedule::SCHEDULED_ID,
                ]
                .contains(&h.name.as_str())
            });
            copy.headers.extend([
                Header::text(super::JMS_TYPE_HEADER, schedule::BROWSE_TYPE),
                Header::text("original-destination", copy.destination.clone()),
                Header::text(schedule::SCHEDULED_ID, job),
            ]);
            copy.message_id = self.new_message_id(session);
            copy.producer_id = String::new();
            copy.producer_sequence = 0;
            copy.persistent = false;
            copy.deliver_at = 0;
            copy.destination = reply_to.canonical();
            sends.push((reply_to.clone(), Arc::new(copy)));
        }
        // Non-persistent and not delayed: [`Core::route`] stores none of them.
        let routed = self.route_all(session, sends);
        debug_assert!(routed.entries.is_empty());
        self.publish_now(routed.publish);
        stopped
    }

    /// A move whose add names so many queues that it and the removal pass a record's limit:
    /// stored first, removed after (a crash between the two delivers it twice, never loses
    /// it).
    fn move_in_two(
        &mut self,
        mut entries: Vec<crate::store::Entry>,
        stored: bool,
        publish: Vec<Publish>,
    ) -> Result<(), BrokerError> {
        // `route_due` puts the removal last.
        let remove = entries.pop();
        let mut add = Routed::default();
        add.push(entries, stored, publish);
        self.append_moves(add)?;
        match remove {
            Some(remove) => self.append(vec![remove]).map(drop),
            None => Ok(()),
        }
    }

    /// What the sweep task waits on besides its tick (see [`Core::hold`]).
    pub fn scheduler_wake(&self) -> Arc<tokio::sync::Notify> {
        self.scheduler_wake.clone()
    }

    /// The messages `message`, sent by `session`, is delivered as (see [`schedule`]): itself
    /// stamped with its due time if it asks for one and `scheduler_support` is on, and with
    /// repeats a copy per delivery, each stamped and with an id of its own; else itself,
    /// untouched.
    fn schedule(
        &mut self,
        session: u64,
        message: Arc<Message>,
    ) -> Result<Vec<Arc<Message>>, BrokerError> {
        if !self.options.scheduler_support {
            return Ok(vec![message]);
        }
        let Some(plan) = schedule::plan(&message.headers, now_ms())? else {
            return Ok(vec![message]);
        };
        let mut deliveries = Vec::with_capacity(plan.repeat as usize + 1);
        for due in plan.deliveries() {
            let mut copy = (*message).clone();
            schedule::stamp(&mut copy, due);
            if plan.repeat > 0 {
                copy.message_id = self.new_message_id(session);
            }
            deliveries.push(Arc::new(copy));
        }
        Ok(deliveries)
    }

    /// How many messages [`Core::schedule`] makes of `message` (refusing it as that would).
    fn deliveries(&self, message: &Message) -> Result<usize, BrokerError> {
        if !self.options.scheduler_support {
            return Ok(1);
        }
        Ok(schedule::plan(&message.headers, now_ms())?.map_or(1, |p| p.repeat as usize + 1))
    }

    /// Puts `entry` at the tail of `queue`, ready for dispatch.
    fn push_ready(&mut self, queue: String, mut entry: Entry, touched: &mut BTreeSet<String>) {
        if queue.starts_with("durable://") && !self.durables.contains_key(&queue) {
            // Its subscription was removed while the message waited for its confirmation.
            if let Err(e) = self.discard_stored(&queue, &entry) {
                tracing::warn!(queue, error = %e, "could not remove a message of a removed subscription");
            }
            return;
        }
        entry.seq = self.next_seq;
        self.next_seq += 1;
        let entry = self.admit(entry);
        self.queues.entry(queue.clone()).or_default().push(entry);
        touched.insert(queue);
    }

    /// Publishes what needs no confirmation (nothing stored, or already confirmed).
    fn publish_now(&mut self, publish: Vec<Publish>) {
        let mut touched = BTreeSet::new();
        for p in publish {
            self.publish(p, &mut touched);
        }
        self.dispatch_all(touched);
    }

    fn dispatch_all(&mut self, touched: BTreeSet<String>) {
        for queue in touched {
            self.dispatch_queue(&queue);
        }
    }

    // ----- sessions ------------------------------------------------------------------------

    pub fn open_session(
        &mut self,
        client_id: Option<String>,
        deliveries: mpsc::UnboundedSender<Delivery>,
    ) -> u64 {
        let id = self.next_session;
        self.next_session += 1;
        self.sessions.insert(
            id,
            SessionState {
                client_id,
                deliveries,
                subscriptions: HashMap::new(),
                transactions: HashMap::new(),
                origin: id,
            },
        );
        id
    }

    /// Session `session` serves client connection `connection`: its messages are that
    /// connection's for noLocal (see [`connection_origin`]). Called before it subscribes.
    pub fn set_connection(&mut self, session: u64, connection: &str) {
        if let Some(state) = self.sessions.get_mut(&session) {
            state.origin = connection_origin(connection);
        }
    }

    pub fn close_session(&mut self, session: u64) {
        let Some(state) = self.sessions.get(&session) else {
            return;
        };
        let transactions: Vec<String> = state.transactions.keys().cloned().collect();
        let subscriptions: Vec<String> = state.subscriptions.keys().cloned().collect();
        // Subscriptions first: an aborted transaction's messages must not go back to a
        // consumer of this session, which would count a second redelivery when it ends.
        for sub in subscriptions {
            let _ = self.unsubscribe(session, &sub, false);
        }
        for tx in transactions {
            let _ = self.abort(session, &tx);
        }
        self.sessions.remove(&session);
    }

    fn session(&mut self, session: u64) -> Result<&mut SessionState, BrokerError> {
        self.sessions
            .get_mut(&session)
            .ok_or(BrokerError::ShuttingDown)
    }

    // ----- sending -------------------------------------------------------------------------

    /// An id of the broker's own for a message of `session`, never given before (the boot
    /// time tells this run's from an earlier one's).
    fn new_message_id(&mut self, session: u64) -> String {
        let n = self.next_message;
        self.next_message += 1;
        format!("ID:{}-{}:{}:{}", self.options.name, self.boot, session, n)
    }

    fn make_message(
        &mut self,
        session: u64,
        destination: &Destination,
        new: NewMessage,
    ) -> Arc<Message> {
        // Only a client's own ids identify a producer's sequence; ids the broker makes up are
        // never compared for duplicates.
        let (message_id, producer_id, producer_sequence) = match new.message_id {
            Some(id) if !id.is_empty() => match producer_of(&id) {
                Some((p, s)) if new.persistent => {
                    let p = p.to_string();
                    (id, p, s)
                }
                _ => (id, String::new(), 0),
            },
            _ => (self.new_message_id(session), String::new(), 0),
        };
        Arc::new(Message {
            message_id,
            producer_id,
            producer_sequence,
            destination: destination.canonical(),
            persistent: new.persistent,
            expiration: new.expiration,
            timestamp: if new.timestamp > 0 {
                new.timestamp
            } else {
                now_ms()
            },
            priority: new.priority,
            redelivery_count: 0,
            headers: new.headers,
            body: new.body,
            body_type: new.body_type as i32,
            deliver_at: 0,
        })
    }

    /// Sends one message to each of `destinations` (a composite destination's members, or
    /// just one): a copy per distinct member, each naming its member as its destination. The
    /// copies are stored in one record, so a crash keeps all or none of them, and a re-send of
    /// the same producer sequence is recognised once for all of them.
    pub fn send(
        &mut self,
        session: u64,
        destinations: &[Destination],
        new: NewMessage,
        transaction: Option<&str>,
    ) -> Result<Confirmation, BrokerError> {
        let members = distinct(destinations)?;
        let Some(&first) = members.first() else {
            return Err(BrokerError::InvalidDestination(String::new()));
        };
        if let Some(pattern) = members.iter().find(|d| wildcard::is_pattern(d.name())) {
            // ActiveMQ sends a copy to each existing destination the pattern matches; taken
            // as a literal name, it would reach only the wildcard subscribers, quietly.
            return Err(BrokerError::Unsupported(format!(
                "sending to '{}', a wildcard destination: send to each destination by name",
                pattern.canonical()
            )));
        }
        if let Some(reason) = &self.failed {
            return Err(BrokerError::StoreFailed(reason.clone()));
        }
        if self.store.is_none() {
            return Err(BrokerError::NotMaster("the node stepped down".into()));
        }
        let message = self.make_message(session, first, new);
        // A transaction's sends are scheduled at its commit (as ActiveMQ's are), each making
        // `weight` messages then; a bad scheduling property is refused now.
        let (deliveries, weight) = match transaction {
            Some(_) => (vec![message.clone()], self.deliveries(&message)?),
            None => (self.schedule(session, message.clone())?, 1),
        };
        let sends: Vec<(Destination, Arc<Message>)> = members
            .iter()
            .flat_map(|&d| {
                deliveries
                    .iter()
                    .map(move |m| (d.clone(), for_member(m, d)))
            })
            .collect();
        if sends.len() * weight > crate::store::MAX_ENTRIES {
            return Err(BrokerError::InvalidMessage(format!(
                "a send of more than {} messages at once (destinations times {} deliveries)",
                crate::store::MAX_ENTRIES,
                schedule::SCHEDULED_REPEAT
            )));
        }
        if let Some(tx) = transaction {
            if message.persistent {
                self.refuse_if_full()?;
            }
            // A repeat of a stored message is recognised when it is sent, in send order, like
            // a plain send (a transaction committed later must not be judged against sends
            // made after it). The sequence is recorded only at commit: a transaction that is
            // rolled back, or lost with its connection, may be sent again with the same ids.
            let stored = self
                .producers
                .is_duplicate(&message.producer_id, message.producer_sequence);
            let limit = self.options.memory_limit;
            let state = self.session(session)?;
            let Some(open) = state.transactions.get_mut(tx) else {
                return Err(BrokerError::UnknownTransaction(tx.to_string()));
            };
            let bytes = open.bytes + (message.body.len() * sends.len() * weight) as u64;
            if bytes > limit {
                return Err(BrokerError::TransactionTooLarge(
                    tx.to_string(),
                    format!("more than memory_limit ({limit} bytes) of message bodies"),
                ));
            }
            if open.entries() + sends.len() * weight > crate::store::MAX_ENTRIES {
                return Err(too_many_entries(tx));
            }
            let tx = open;
            let repeated = !message.producer_id.is_empty()
                && tx.sends.iter().any(|(_, m)| {
                    m.producer_id == message.producer_id
                        && m.producer_sequence == message.producer_sequence
                });
            if stored || repeated {
                self.stats.duplicates_dropped += 1;
            } else {
                tx.bytes = bytes;
                tx.repeats += sends.len() * (weight - 1);
                tx.sends.extend(sends);
            }
            return Ok(Confirmation::done());
        }
        let copies = sends.len();
        let routed = self.route_all(session, sends);
        // The record must fit the journal (which would refuse it and fail, taking every later
        // write with it), checked before the audit takes the message as stored.
        if !fits_one_record(&routed.entries) {
            let limit = crate::store::record::MAX_RECORD_LEN;
            let size = message.body.len();
            return Err(BrokerError::InvalidMessage(if copies > 1 {
                format!(
                    "{copies} copies of a {size}-byte message would make a record of more \
                     than {limit} bytes: send to fewer destinations (or with fewer \
                     {}) at once",
                    schedule::SCHEDULED_REPEAT
                )
            } else {
                // A delayed message is stored (in the holding area) even when non-persistent.
                let kind = if message.persistent {
                    "persistent"
                } else {
                    "delayed"
                };
                format!(
                    "a {kind} {size}-byte message would make a record of more than {limit} \
                     bytes, the journal's limit"
                )
            }));
        }
        // A repeat is confirmed again, full or not: it stores nothing.
        if message.persistent
            && !routed.entries.is_empty()
            && (message.producer_id.is_empty()
                || !self
                    .producers
                    .is_duplicate(&message.producer_id, message.producer_sequence))
        {
            self.refuse_if_full()?;
        }
        if self.is_duplicate(&message) {
            self.stats.duplicates_dropped += 1;
            return Ok(self.flush());
        }
        if routed.entries.is_empty() {
            self.publish_now(routed.publish);
            return Ok(Confirmation::done());
        }
        let (start, _) = self.append_deferred(routed.entries)?;
        Ok(self.wait_for(with_keys(routed.publish, &routed.keyed, start)))
    }

    /// A persistent message whose producer sequence was already stored: the client re-sent it
    /// after losing its connection. It is confirmed again but not stored twice.
    fn is_duplicate(&mut self, message: &Message) -> bool {
        if message.producer_id.is_empty() {
            return false;
        }
        if self
            .producers
            .is_duplicate(&message.producer_id, message.producer_sequence)
        {
            return true;
        }
        self.record_producer(&message.producer_id, message.producer_sequence);
        false
    }

    fn record_producer(&mut self, producer: &str, sequence: u64) {
        self.producer_stamp += 1;
        // The store forgets the same producers on its own, so nothing else is to be done.
        let mut forgotten = Vec::new();
        self.producers
            .record(producer, sequence, self.producer_stamp, &mut forgotten);
    }

    /// What storing `message`, sent by `session`, at `destination` takes: the store entries
    /// (empty when nothing is stored) and what to publish once they are confirmed. Queue
    /// entries in `publish` carry no key yet; [`with_keys`] fills it in from the record's
    /// position.
    ///
    /// The sending session is kept with the message in memory only (`Entry::origin`), not
    /// stored: noLocal compares it with a subscriber's session (its connection), and session
    /// ids are never reused, so after a restart no message is any subscriber's own. A durable
    /// noLocal subscription is spared its connection's messages here, when they are
    /// published: those of the connection it was last active on, even while it is inactive
    /// (ActiveMQ keeps the subscription's noLocal filter, with that connection's id, until it
    /// is activated again). Back on a new connection, the old connection's messages are not
    /// its own any more (none are stored for it: they were never kept).
    fn route(
        &mut self,
        origin: u64,
        destination: &Destination,
        message: Arc<Message>,
    ) -> (Vec<crate::store::Entry>, Vec<Publish>) {
        let entry = |message: &Arc<Message>| Entry::new(None, message.clone(), 0).from(origin);
        if message.deliver_at > 0 && message.deliver_at > now_ms() {
            // Scheduled: one stored record in the holding area, whatever its persistence and
            // whoever subscribes now; routed when due (see [`Core::move_due`]).
            let publish = vec![Publish::Scheduled(entry(&message))];
            return (vec![add_entry(vec![HOLDING.to_string()], message)], publish);
        }
        // A scheduled message delivered now (due, or due at once): without the scheduling
        // properties it kept while held, for a browse.
        let message = if message.deliver_at > 0 {
            schedule::delivered(message)
        } else {
            message
        };
        match destination {
            Destination::Queue(_) => {
                let queue = destination.canonical();
                let publish = vec![Publish::Queue(queue.clone(), entry(&message))];
                let entries = if message.persistent {
                    vec![add_entry(vec![queue], message)]
                } else {
                    Vec::new()
                };
                (entries, publish)
            }
            Destination::Topic(name) => {
                let topic = destination.canonical();
                let mut durables: Vec<String> = self
                    .topics
                    .get(&topic)
                    .map(|t| t.durables.clone())
                    .unwrap_or_default();
                for t in self.wildcards_matching(name) {
                    durables.extend(t.durables.iter().cloned());
                }
                let durables: Vec<String> = durables
                    .into_iter()
                    .filter(|q| {
                        self.durables.get(q).is_none_or(|d| {
                            d.selector.as_ref().is_none_or(|s| s.matches(&message))
                                && d.no_local_session != Some(origin)
                        })
                    })
                    .collect();
                let mut publish: Vec<Publish> = durables
                    .iter()
                    .map(|q| Publish::Queue(q.clone(), entry(&message)))
                    .collect();
                publish.push(Publish::Topic(topic, message.clone(), origin));
                let entries = if message.persistent && !durables.is_empty() {
                    vec![add_entry(durables, message)]
                } else {
                    Vec::new()
                };
                (entries, publish)
            }
        }
    }

    /// [`Core::route`] for each of `sends`, their entries gathered for one record.
    fn route_all(&mut self, session: u64, sends: Vec<(Destination, Arc<Message>)>) -> Routed {
        let origin = self.sessions.get(&session).map_or(session, |s| s.origin);
        let mut routed = Routed::default();
        for (destination, message) in sends {
            let (entries, publish) = self.route(origin, &destination, message);
            let stored = !entries.is_empty();
            routed.push(entries, stored, publish);
        }
        routed
    }

    /// Hands a confirmed topic message to the non-durable subscribers of `topic` and of the
    /// wildcard patterns matching it, one copy per subscription: a consumer is on one of them,
    /// but a composite subscription (`news.>,news.*`) has a consumer on each of its members,
    /// and as in ActiveMQ (whose subscription is added once to each destination any member
    /// matches) it gets the message once.
    fn publish_to_subscribers(&mut self, topic: &str, message: Arc<Message>, origin: u64) {
        let mut subscribers = self
            .topics
            .get(topic)
            .map(|t| t.subscribers.clone())
            .unwrap_or_default();
        let name = topic.strip_prefix("topic://").unwrap_or(topic);
        let mut patterns = 0;
        for t in self.wildcards_matching(name) {
            subscribers.extend_from_slice(&t.subscribers);
            patterns += 1;
        }
        if patterns > 0 {
            // Only a pattern can match a topic another member of the same subscription is on
            // (a subscription's members are distinct).
            let mut seen = std::collections::HashSet::new();
            subscribers.retain(|cid| {
                self.consumers
                    .get(cid)
                    .is_some_and(|c| seen.insert((c.session, c.subscription.as_str())))
            });
        }
        let limit = self.options.topic_pending_limit;
        for cid in subscribers {
            let entry = Entry::new(None, message.clone(), 0).from(origin);
            let credit = has_credit(&self.consumers, cid);
            let Some(consumer) = self.consumers.get_mut(&cid) else {
                continue;
            };
            if !consumer.accepts(&entry) {
                continue;
            }
            if credit && consumer.pending.is_empty() {
                self.deliver(cid, None, entry, false);
            } else {
                consumer.pending.push_back(entry);
                if consumer.pending.len() > limit {
                    consumer.pending.pop_front();
                    consumer.discarded += 1;
                    self.stats.topic_discarded += 1;
                    if consumer.discarded == 1 || consumer.discarded.is_power_of_two() {
                        tracing::warn!(
                            topic,
                            subscription = %consumer.subscription,
                            discarded = consumer.discarded,
                            limit,
                            "slow topic subscriber: discarding its oldest pending messages"
                        );
                    }
                }
            }
        }
    }

    // ----- subscriptions -------------------------------------------------------------------

    pub fn subscribe(
        &mut self,
        session: u64,
        request: SubscribeRequest,
    ) -> Result<Confirmation, BrokerError> {
        let members = [request.destination.clone()];
        self.subscribe_each(session, request, &members)
    }

    /// Subscribes `request` to every one of `members` (a composite destination's) in place of
    /// its destination: one consumer per distinct member, each with the request's selector,
    /// all delivering under the request's id and sharing its one prefetch window (see
    /// [`has_credit`]). All or nothing.
    pub fn subscribe_each(
        &mut self,
        session: u64,
        request: SubscribeRequest,
        members: &[Destination],
    ) -> Result<Confirmation, BrokerError> {
        let state = self.session(session)?;
        if state.subscriptions.contains_key(&request.id) {
            return Err(BrokerError::DuplicateSubscription(request.id));
        }
        let distinct = distinct(members)?;
        if distinct.is_empty() {
            return Err(BrokerError::InvalidDestination(String::new()));
        }
        if distinct.len() > 1 && request.durable_name.is_some() {
            return Err(BrokerError::Unsupported(format!(
                "a durable subscription '{}' on several destinations: make one per topic",
                request.durable_name.as_deref().unwrap_or_default()
            )));
        }
        for d in &distinct {
            check_subscribable(d)?;
        }
        self.session(session)?
            .subscriptions
            .insert(request.id.clone(), Vec::new());
        let mut confirmation = Confirmation::done();
        // The consumers' ids, as add_consumer gives them (one after the other, under this
        // lock): a composite's consumers share one prefetch window (see `has_credit`).
        let members: Arc<[u64]> = if distinct.len() > 1 {
            (self.next_consumer..self.next_consumer + distinct.len() as u64).collect()
        } else {
            Arc::new([])
        };
        for d in distinct {
            let member = SubscribeRequest {
                destination: d.clone(),
                ..request.clone()
            };
            match self.add_consumer(session, member, members.clone()) {
                // Confirmations resolve in order: the last one waiting covers the others.
                Ok(c) if c.is_done() => {}
                Ok(c) => confirmation = c,
                Err(e) => {
                    let _ = self.unsubscribe(session, &request.id, false);
                    return Err(e);
                }
            }
        }
        Ok(confirmation)
    }

    /// Adds one consumer of `request.destination` to `session`'s subscription `request.id`
    /// (already registered, see [`Core::subscribe_each`]).
    fn add_consumer(
        &mut self,
        session: u64,
        request: SubscribeRequest,
        members: Arc<[u64]>,
    ) -> Result<Confirmation, BrokerError> {
        let state = self.session(session)?;
        let client_id = state.client_id.clone();
        let deliveries = state.deliveries.clone();
        let origin = state.origin;
        check_subscribable(&request.destination)?;
        let selector = parse_selector(request.selector.as_deref())?;
        let selector_text = request.selector.clone().unwrap_or_default();
        let mut confirmation = Confirmation::done();
        let source = match (&request.destination, &request.durable_name) {
            (Destination::Topic(_), Some(name)) => {
                // An empty client id is one, as in ActiveMQ (`setClientID("")`), except with a
                // name a virtual topic consumer queue's record has (client id empty, the
                // queue as name; see `is_virtual_subscription`): the records stay apart.
                let client_id = client_id
                    .filter(|c| !c.is_empty() || !name.starts_with("queue://"))
                    .ok_or(BrokerError::DurableNeedsClientId)?;
                let topic = request.destination.canonical();
                let queue = durable_queue(&client_id, name);
                match self.durables.get(&queue) {
                    Some(d) if d.active.is_some() => {
                        return Err(BrokerError::DurableInUse(name.clone()))
                    }
                    Some(d)
                        if d.subscription.topic == topic
                            && d.subscription.selector == selector_text
                            && d.subscription.no_local == request.no_local => {}
                    existing => {
                        // New, or changed: another topic, selector or noLocal (ActiveMQ then
                        // starts it afresh, its messages dropped).
                        if existing.is_some() {
                            self.remove_durable(&queue)?;
                        }
                        let subscription = SubscriptionAdd {
                            client_id: client_id.clone(),
                            subscription_name: name.clone(),
                            topic,
                            selector: selector_text.clone(),
                            queue: queue.clone(),
                            no_local: request.no_local,
                        };
                        confirmation = self.record_subscription(subscription)?;
                    }
                }
                Source::Queue(queue)
            }
            (Destination::Topic(_), None) => Source::Topic(request.destination.canonical()),
            (Destination::Queue(name), _) => {
                let queue = request.destination.canonical();
                if !self.virtual_queues.contains(&queue) {
                    let rule = self.options.virtual_topics.as_ref();
                    if let Some(topic) = rule.and_then(|v| v.topic_of(name)) {
                        // A virtual topic's consumer queue exists from its first consumer on
                        // (ActiveMQ creates the queue then and keeps it, persisted, until an
                        // admin removes it): recorded once, in the journal, so that restarts,
                        // failovers and index rebuilds keep feeding it.
                        let subscription = SubscriptionAdd {
                            client_id: String::new(),
                            subscription_name: queue.clone(),
                            topic,
                            selector: String::new(),
                            queue: queue.clone(),
                            no_local: false,
                        };
                        confirmation = self.record_subscription(subscription)?;
                    }
                }
                Source::Queue(queue)
            }
        };
        // Exclusive consumers are a queue feature (ActiveMQ ignores the flag on topics).
        let exclusive = request.exclusive && matches!(request.destination, Destination::Queue(_));
        let durable = matches!(source, Source::Queue(_))
            && matches!(request.destination, Destination::Topic(_));
        let id = self.next_consumer;
        self.next_consumer += 1;
        debug_assert!(members.is_empty() || members.contains(&id));
        self.consumers.insert(
            id,
            Consumer {
                session,
                subscription: request.id.clone(),
                destination: request.destination.clone(),
                source: source.clone(),
                prefetch: request.prefetch,
                pulls: 0,
                delivered_upto: 0,
                delivered: 0,
                // A durable subscription's queue holds only matching messages already (and
                // none of its noLocal connection's, see `route`).
                selector: if durable { None } else { selector },
                in_flight: Default::default(),
                pending: VecDeque::new(),
                deliveries,
                discarded: 0,
                exclusive,
                priority: request.priority,
                no_local: request.no_local && !durable,
                origin,
                members,
            },
        );
        self.session(session)?
            .subscriptions
            .entry(request.id)
            .or_default()
            .push(id);
        match source {
            Source::Queue(queue) => {
                if let Some(d) = self.durables.get_mut(&queue) {
                    d.active = Some(id);
                    d.no_local_session = request.no_local.then_some(origin);
                }
                let q = self.queues.entry(queue.clone()).or_default();
                q.add_consumer(id, request.priority, priority_of(&self.consumers));
                // The first exclusive consumer wins, unless a later one has a higher priority
                // or the highest (127), as in ActiveMQ's `Queue.addSubscription`. The others'
                // unacknowledged deliveries stay theirs.
                let owner_priority = q.exclusive.map(priority_of(&self.consumers));
                if exclusive
                    && owner_priority
                        .is_none_or(|p| request.priority == i8::MAX || request.priority > p)
                {
                    q.exclusive = Some(id);
                }
                self.dispatch_queue(&queue);
            }
            Source::Topic(topic) => {
                if let Some(t) = self.topic_mut(&topic) {
                    t.subscribers.push(id);
                }
            }
        }
        Ok(confirmation)
    }

    pub fn unsubscribe(
        &mut self,
        session: u64,
        id: &str,
        remove_durable: bool,
    ) -> Result<Confirmation, BrokerError> {
        self.unsubscribe_seen(session, id, remove_durable, u64::MAX)
    }

    /// Like `unsubscribe`; deliveries with a tag above `seen_upto` never reached the
    /// application, so they return without counting as a redelivery.
    pub fn unsubscribe_seen(
        &mut self,
        session: u64,
        id: &str,
        remove_durable: bool,
        seen_upto: u64,
    ) -> Result<Confirmation, BrokerError> {
        let cids = self
            .session(session)?
            .subscriptions
            .remove(id)
            .ok_or_else(|| BrokerError::UnknownSubscription(id.to_string()))?;
        let mut touched = BTreeSet::new();
        let mut confirmation = Confirmation::done();
        for cid in cids {
            let consumer = self
                .consumers
                .remove(&cid)
                .expect("a session's subscription has a consumer");
            let source = self.remove_consumer(cid, consumer, seen_upto, &mut touched)?;
            if remove_durable {
                if let Source::Queue(queue) = &source {
                    if self.durables.contains_key(queue) {
                        touched.remove(queue);
                        self.remove_durable(queue)?;
                        confirmation = self.flush();
                    }
                }
            }
        }
        self.dispatch_all(touched);
        Ok(confirmation)
    }

    /// Detaches a removed consumer from its queue or topic and returns its unacknowledged
    /// deliveries to their queues (those past `seen_upto` not counting as redelivered).
    /// Returns where it consumed from.
    fn remove_consumer(
        &mut self,
        cid: u64,
        consumer: Consumer,
        seen_upto: u64,
        touched: &mut BTreeSet<String>,
    ) -> Result<Source, BrokerError> {
        let Consumer {
            source, in_flight, ..
        } = consumer;
        match &source {
            Source::Queue(queue) => {
                if let Some(q) = self.queues.get_mut(queue) {
                    q.remove_consumer(cid, priority_of(&self.consumers));
                    if q.exclusive == Some(cid) {
                        // The exclusive consumer of highest priority, the earliest among
                        // equals, takes over (the list is in that order); with none left every
                        // consumer is served again. Either way the queue's messages (this one's
                        // unacknowledged ones among them, back in their places below) go to
                        // them now.
                        q.exclusive = q
                            .consumers
                            .iter()
                            .copied()
                            .find(|c| self.consumers.get(c).is_some_and(|c| c.exclusive));
                        touched.insert(queue.clone());
                    }
                    if let Some(groups) = &mut q.groups {
                        // Its groups move to whoever receives their next message.
                        groups.forget_consumer(cid);
                        touched.insert(queue.clone());
                    }
                }
                if let Some(d) = self.durables.get_mut(queue) {
                    d.active = None;
                }
            }
            Source::Topic(topic) => {
                self.change_topic(topic, |t| t.subscribers.retain(|c| *c != cid));
            }
        }
        for (tag, in_flight) in in_flight {
            self.tags.remove(&tag);
            // A delivery past `seen_upto` never reached the application: not a redelivery.
            self.requeue(in_flight, tag <= seen_upto, touched)?;
        }
        Ok(source)
    }

    pub fn remove_durable_by_name(
        &mut self,
        session: u64,
        name: &str,
    ) -> Result<Confirmation, BrokerError> {
        let client_id = self
            .session(session)?
            .client_id
            .clone()
            .ok_or(BrokerError::DurableNeedsClientId)?;
        let queue = durable_queue(&client_id, name);
        match self.durables.get(&queue) {
            // As ActiveMQ (and JMS's `Session.unsubscribe`): an unknown name is an error.
            None => Err(BrokerError::UnknownDurable(name.to_string())),
            Some(d) if d.active.is_some() => Err(BrokerError::DurableInUse(name.to_string())),
            Some(_) => {
                self.remove_durable(&queue)?;
                Ok(self.flush())
            }
        }
    }

    /// Deletes an inactive durable subscription and every message stored for it.
    fn remove_durable(&mut self, queue: &str) -> Result<(), BrokerError> {
        let Some(durable) = self.durables.get(queue) else {
            return Ok(());
        };
        let subscription = durable.subscription.clone();
        let mut entries = vec![crate::store::Entry {
            kind: Some(entry::Kind::Unsubscribe(SubscriptionRemove {
                client_id: subscription.client_id.clone(),
                subscription_name: subscription.subscription_name.clone(),
            })),
        }];
        if let Some(q) = self.queues.get(queue) {
            entries.extend(
                q.ready
                    .values()
                    .filter_map(|e| e.key)
                    .map(|key| remove_entry(queue, key)),
            );
        }
        self.append_in_chunks(entries)?;
        self.durables.remove(queue);
        self.queues.remove(queue);
        self.change_topic(&subscription.topic, |t| t.durables.retain(|q| q != queue));
        Ok(())
    }

    // ----- memory ---------------------------------------------------------------------------

    /// Counts a queued entry's body against `memory_limit`, or, past the limit, leaves the body
    /// of a persistent message in the journal: the entry keeps everything else (selectors,
    /// priority and expiry need no body) and [`Core::page_in`] reads the body back before
    /// delivery. Non-persistent bodies are nowhere else and always stay; once they alone fill
    /// the limit, the [`MemoryGate`](super::MemoryGate) tells their producers' connections to
    /// stop reading.
    fn admit(&mut self, mut entry: Entry) -> Entry {
        match entry.body {
            Body::InMemory { .. } => return entry,
            Body::OnDisk => {
                self.stats.bodies_left_on_disk += 1;
                return entry;
            }
            Body::Uncounted => {}
        }
        let bytes = entry.message.body.len() as u64;
        let total = self.memory.bytes();
        let limit = self.memory.limit();
        let transient = entry.key.is_none();
        if !transient && bytes > 0 && total + bytes > limit {
            if !std::mem::replace(&mut self.paging, true) {
                tracing::warn!(
                    memory_limit = limit,
                    resident = total,
                    "queued message bodies reached memory_limit: further persistent messages \
                     are queued with their bodies in the journal and read back on delivery"
                );
            }
            leave_body_on_disk(&mut entry);
            self.stats.bodies_left_on_disk += 1;
            return entry;
        }
        if self.paging && total + bytes <= limit / 2 {
            self.paging = false;
            tracing::info!(
                memory_limit = limit,
                resident = total,
                "queued message bodies are back under half the memory_limit: bodies stay in \
                 memory again"
            );
        }
        if transient {
            let queued = self.memory.transient() + bytes;
            if queued >= limit && !self.transient_full {
                self.transient_full = true;
                tracing::warn!(
                    memory_limit = limit,
                    non_persistent = queued,
                    "queued non-persistent message bodies reached memory_limit: connections \
                     sending non-persistent messages are paused until consumers make room \
                     (producer flow control)"
                );
            } else if queued <= limit / 2 && self.transient_full {
                self.transient_full = false;
                tracing::info!(
                    memory_limit = limit,
                    non_persistent = queued,
                    "queued non-persistent message bodies are back under half the memory_limit"
                );
            }
        }
        entry.body = Body::InMemory {
            _share: self.memory.share(bytes, transient),
        };
        entry
    }

    /// The gates protocol connections consult before reading more sends.
    pub fn flow_gate(&self) -> super::FlowGate {
        super::FlowGate {
            memory: self.memory.gate(),
            store: self.store_usage.gate(),
        }
    }

    /// Whether `session` has a subscription (see `Session::hold_back`).
    pub fn has_subscriptions(&self, session: u64) -> bool {
        self.sessions
            .get(&session)
            .is_some_and(|s| !s.subscriptions.is_empty())
    }

    /// `entry`'s message with its body, read back from the journal if it was left there.
    fn with_body(&self, entry: &Entry) -> Result<Arc<Message>, BrokerError> {
        if !matches!(entry.body, Body::OnDisk) {
            return Ok(entry.message.clone());
        }
        let key = entry
            .key
            .expect("only stored messages leave their body in the journal");
        let store = self
            .store
            .as_ref()
            .ok_or_else(|| BrokerError::NotMaster("the node stepped down".into()))?;
        // The stored message is the one the entry was made from (the core never changes a
        // message once stored), body included.
        store
            .read_message(key)
            .map(Arc::new)
            .map_err(|e| BrokerError::StoreFailed(e.to_string()))
    }

    /// `entry` (taken off `queue`) ready to deliver, its body read back if needed; `None` if
    /// that read failed, in which case the entry is back on its queue and the failure logged.
    fn page_in(&mut self, queue: &str, mut entry: Entry) -> Option<Entry> {
        if !matches!(entry.body, Body::OnDisk) {
            return Some(entry);
        }
        match self.with_body(&entry) {
            Ok(message) => {
                self.stats.bodies_read_back += 1;
                entry.body = Body::InMemory {
                    _share: self.memory.share(message.body.len() as u64, false),
                };
                entry.message = message;
                Some(entry)
            }
            Err(error) => {
                tracing::error!(queue, %error, "cannot read a queued message's body back from the journal; the queue waits");
                if let Some(q) = self.queues.get_mut(queue) {
                    q.push(entry);
                }
                None
            }
        }
    }

    // ----- dispatch ------------------------------------------------------------------------

    /// `message` as consumers of `queue` get it: on a virtual topic's consumer queue, its
    /// copy for that queue (see [`virtual_copy`]); anywhere else, itself.
    fn as_on_queue(&self, message: &Arc<Message>, queue: &str) -> Arc<Message> {
        if self.virtual_queues.contains(queue) && message.destination != queue {
            virtual_copy(message, queue)
        } else {
            message.clone()
        }
    }

    fn deliver(&mut self, cid: u64, queue: Option<String>, entry: Entry, group_first: bool) {
        let message = match &queue {
            Some(q) => self.as_on_queue(&entry.message, q),
            None => entry.message.clone(),
        };
        // The window the other consumers of a composite's subscription use (they share it).
        let others: usize = self.consumers.get(&cid).map_or(0, |c| {
            c.members
                .iter()
                .filter(|m| **m != cid)
                .filter_map(|m| self.consumers.get(m))
                .map(Consumer::window_used)
                .sum()
        });
        let Some(consumer) = self.consumers.get_mut(&cid) else {
            return;
        };
        let tag = self.next_tag;
        self.next_tag += 1;
        let delivery = Delivery {
            subscription: consumer.subscription.clone(),
            tag,
            destination: consumer.destination.clone(),
            message,
            redelivery_count: entry.redeliveries,
            group_first,
        };
        consumer.in_flight.insert(tag, InFlight { queue, entry });
        let pulled =
            others + consumer.window_used() > consumer.prefetch as usize && consumer.pulls > 0;
        if pulled {
            consumer.pulls -= 1;
        }
        self.tags.insert(tag, cid);
        self.stats.delivered += 1;
        // A closed receiver means the session is going away; close_session cleans up.
        let _ = consumer.deliveries.send(delivery);
        if pulled {
            // A pull of a composite destination's subscription went to every member's
            // consumer: answered, it is withdrawn from the others.
            for sibling in self.siblings(cid) {
                if let Some(c) = self.consumers.get_mut(&sibling).filter(|_| sibling != cid) {
                    c.pulls = c.pulls.saturating_sub(1);
                }
            }
        }
    }

    /// Hands ready messages of `queue` to its consumers with credit, round-robin, highest
    /// consumer priority first (only to its exclusive consumer while it has one; see
    /// [`Queue::choose`]).
    fn dispatch_queue(&mut self, queue: &str) {
        // A queue that has seen message groups may have to pass over a message whose group's
        // consumer has no credit, as with selectors.
        let selective = self.queues.get(queue).is_some_and(|q| {
            q.groups.is_some()
                || q.consumers
                    .iter()
                    .any(|c| self.consumers.get(c).is_some_and(|c| c.is_selective()))
        });
        if selective {
            if let Some(stopped) = self.dispatch_selective(queue, None, SCAN_LIMIT) {
                if let Some(q) = self.queues.get_mut(queue) {
                    match q.scan_resume {
                        Some(r) if r > stopped => {
                            // The sweep is further on and walked past messages this dispatch
                            // did not reach, some of which may now have a taker.
                            q.scan_again = true;
                        }
                        _ => q.scan_resume = Some(stopped),
                    }
                }
            }
            return;
        }
        let now = now_ms();
        let mut expired = Vec::new();
        loop {
            let Some(q) = self.queues.get_mut(queue) else {
                return;
            };
            let n = q.consumers.len();
            if n == 0 || q.ready.is_empty() {
                break;
            }
            let chosen = q.choose(|cid| q.admits(cid) && has_credit(&self.consumers, cid));
            let Some(index) = chosen else {
                break;
            };
            let (_, entry) = q.ready.pop_first().expect("checked non-empty");
            if entry.message.expiration > 0 {
                q.expiring = q.expiring.saturating_sub(1);
            }
            if entry.is_expired(now) {
                expired.push(entry);
                continue;
            }
            let cid = q.consumers[index];
            q.served(index, priority_of(&self.consumers));
            let Some(entry) = self.page_in(queue, entry) else {
                break;
            };
            self.deliver(cid, Some(queue.to_string()), entry, false);
        }
        for entry in expired {
            self.stats.expired += 1;
            let _ = self.dead_letter(queue, entry, "expired");
        }
    }

    /// Dispatch when some consumer has a selector (or noLocal) or the queue has message groups:
    /// each ready message, in order, goes to the next consumer (round-robin, highest priority
    /// first) with credit that accepts it
    /// (its exclusive consumer only, while it has one; the group's consumer only, for a
    /// message whose group is assigned); a message nobody can take stays and does not hold up
    /// the ones behind it.
    ///
    /// Message groups, as ActiveMQ's `Queue.assignMessageGroup`: a message of a group with no
    /// consumer, or with `JMSXGroupSeq` 1 (a group starting), assigns its group to the consumer
    /// it goes to (`Delivery::group_first`); a negative `JMSXGroupSeq` closes the group once
    /// delivered; a consumer's groups are freed when it goes away.
    ///
    /// The walk starts strictly after `after` (from the head if `None`) and stops once it has
    /// passed over `limit` messages nobody could take: it returns the sequence it stopped at,
    /// `None` if it ran out of messages or of consumers with credit. See [`SCAN_LIMIT`].
    fn dispatch_selective(
        &mut self,
        queue: &str,
        mut after: Option<u64>,
        limit: usize,
    ) -> Option<u64> {
        use std::ops::Bound::{Excluded, Unbounded};
        let now = now_ms();
        let mut expired = Vec::new();
        let mut passed_over = 0;
        let mut stopped = None;
        loop {
            let q = self.queues.get_mut(queue)?;
            let n = q.consumers.len();
            // Only the exclusive consumer's room counts while there is one: the others take
            // nothing, so a walk for them would pass over every message.
            let any_credit = q
                .consumers
                .iter()
                .any(|c| q.admits(*c) && has_credit(&self.consumers, *c));
            if n == 0 || !any_credit {
                break;
            }
            let next = match after {
                None => q.ready.iter().next(),
                Some(seq) => q.ready.range((Excluded(seq), Unbounded)).next(),
            };
            let Some((&seq, entry)) = next else {
                break;
            };
            after = Some(seq);
            if entry.is_expired(now) {
                let entry = q.remove_ready(seq).expect("just seen");
                expired.push(entry);
                continue;
            }
            let group = super::queue::group_of(&entry.message);
            let owner = match (&q.groups, group) {
                (Some(groups), Some((id, _))) => groups.owner(id),
                _ => None,
            };
            // The consumer the message must go to: its group's, unless the group starts again
            // (sequence 1) or an exclusive consumer takes everything anyway (the group then
            // moves to it).
            let pinned = match group {
                Some((_, group_seq)) if group_seq != 1 && q.exclusive.is_none() => owner,
                _ => None,
            };
            let chosen = q.choose(|cid| {
                q.admits(cid)
                    && pinned.is_none_or(|p| p == cid)
                    && self.consumers.get(&cid).is_some_and(|c| c.accepts(entry))
                    && has_credit(&self.consumers, cid)
            });
            let Some(index) = chosen else {
                self.stats.passed_over += 1;
                passed_over += 1;
                if passed_over >= limit {
                    stopped = Some(seq);
                    break;
                }
                continue;
            };
            let cid = q.consumers[index];
            let mut group_first = false;
            if let (Some(groups), Some((id, group_seq))) = (&mut q.groups, group) {
                if owner != Some(cid) || group_seq == 1 {
                    groups.assign(id, cid);
                    group_first = true;
                }
                if group_seq < 0 {
                    groups.close(id);
                }
            }
            let entry = q.remove_ready(seq).expect("just seen");
            q.served(index, priority_of(&self.consumers));
            let Some(entry) = self.page_in(queue, entry) else {
                break;
            };
            self.deliver(cid, Some(queue.to_string()), entry, group_first);
        }
        for entry in expired {
            self.stats.expired += 1;
            let _ = self.dead_letter(queue, entry, "expired");
        }
        stopped
    }

    /// Goes on with the selective dispatches that stopped at [`SCAN_LIMIT`] (called by the
    /// periodic sweep), [`SWEEP_SCAN_LIMIT`] messages further each time, from the head again
    /// once a walk reaches the end if a dispatch stopped behind it meanwhile (`scan_again`).
    pub fn continue_scans(&mut self) {
        let pending: Vec<(String, Option<u64>)> = self
            .queues
            .iter()
            .filter(|(_, q)| q.scan_resume.is_some() || q.scan_again)
            .map(|(name, q)| (name.clone(), q.scan_resume))
            .collect();
        for (queue, after) in pending {
            if after.is_none() {
                // From the head once more, since a dispatch stopped behind the last walk.
                if let Some(q) = self.queues.get_mut(&queue) {
                    q.scan_again = false;
                }
            }
            let stopped = self.dispatch_selective(&queue, after, SWEEP_SCAN_LIMIT);
            if let Some(q) = self.queues.get_mut(&queue) {
                q.scan_resume = stopped;
            }
        }
    }

    /// Gives a consumer whose credit grew more of what waits for it.
    fn refill(&mut self, cid: u64) {
        let Some(consumer) = self.consumers.get_mut(&cid) else {
            return;
        };
        match consumer.source.clone() {
            Source::Queue(queue) => self.dispatch_queue(&queue),
            Source::Topic(_) => {
                let now = now_ms();
                while self
                    .consumers
                    .get(&cid)
                    .is_some_and(|c| !c.pending.is_empty())
                    && has_credit(&self.consumers, cid)
                {
                    let entry = self
                        .consumers
                        .get_mut(&cid)
                        .and_then(|c| c.pending.pop_front())
                        .expect("checked non-empty");
                    // Non-durable topic messages are stored nowhere: one that expired while
                    // it waited for this slow subscriber is dropped.
                    if entry.is_expired(now) {
                        self.stats.expired += 1;
                        continue;
                    }
                    self.deliver(cid, None, entry, false);
                }
            }
        }
    }

    /// Puts an unacknowledged message back on its queue, or dead-letters it once it has been
    /// redelivered more than `max_redeliveries` times.
    fn redeliver(
        &mut self,
        in_flight: InFlight,
        touched: &mut BTreeSet<String>,
    ) -> Result<(), BrokerError> {
        self.requeue(in_flight, true, touched)
    }

    /// Puts an unacknowledged message back in its place on its queue; `counted` makes it a
    /// redelivery (false: it never reached the application).
    fn requeue(
        &mut self,
        in_flight: InFlight,
        counted: bool,
        touched: &mut BTreeSet<String>,
    ) -> Result<(), BrokerError> {
        let Some(queue) = in_flight.queue else {
            return Ok(()); // non-durable topic: nothing is kept for a subscriber that left
        };
        let mut entry = in_flight.entry;
        if counted {
            entry.redeliveries += 1;
            if entry.redeliveries > self.options.max_redeliveries {
                return self.dead_letter(&queue, entry, "redelivery limit reached");
            }
        }
        if !self.queues.contains_key(&queue) {
            // Deleted (a removed durable subscription, say) while its consumer or a
            // transaction held the message.
            return self.discard_stored(&queue, &entry);
        }
        let entry = self.admit(entry);
        if let Some(q) = self.queues.get_mut(&queue) {
            q.push(entry);
            touched.insert(queue);
        }
        Ok(())
    }

    /// Drops a message held for a queue that no longer exists; a stored one is removed from
    /// the store too, so that a restart does not bring it back.
    fn discard_stored(&mut self, queue: &str, entry: &Entry) -> Result<(), BrokerError> {
        if let Some(key) = entry.key {
            self.append(vec![remove_entry(queue, key)])?;
        }
        Ok(())
    }

    /// A delivery the consumer rejected (NACK, poison ack) goes to its DLQ.
    fn reject(&mut self, f: InFlight) -> Result<(), BrokerError> {
        match f.queue {
            Some(queue) => self.dead_letter(&queue, f.entry, "rejected by the consumer"),
            None => Ok(()),
        }
    }

    /// Moves a message from `queue` to its DLQ (see [`super::DeadLetterStrategy`]) in one record
    /// (non-persistent messages are dropped, as ActiveMQ does by default).
    fn dead_letter(&mut self, queue: &str, entry: Entry, why: &str) -> Result<(), BrokerError> {
        let strategy = &self.options.dead_letter_strategy;
        let dlq = strategy.dead_letter_queue(queue, &entry.message.destination);
        tracing::debug!(queue, dlq, message_id = %entry.message.message_id, why, "dead-lettering");
        // Moving it into the queue it is on would go round for ever; one already dead-lettered
        // to the queue it is on is discarded too, as ActiveMQ 5.17's dead-letter audit does
        // (it has seen the message before), rather than sent to a DLQ of the DLQ. Only the DLQ
        // of its original destination counts: a message sent back to that destination, or sent
        // to a DLQ by a client, is dead-lettered as any other (the audit has not seen it).
        let dead_lettered_here = entry
            .message
            .headers
            .iter()
            .find(|h| h.name == "original-destination")
            .is_some_and(|h| strategy.dead_letter_queue(&h.value, &h.value) == queue);
        if queue == dlq || dead_lettered_here {
            tracing::warn!(message_id = %entry.message.message_id, why, "a message on {queue}, a DLQ, was dead-lettered again: discarded");
            return self.discard_stored(queue, &entry);
        }
        let Some(key) = entry.key else {
            return Ok(());
        };
        let mut message = (*self.with_body(&entry)?).clone();
        self.stats.dead_lettered += 1;
        message.redelivery_count = entry.redeliveries;
        // On the DLQ it is kept until consumed, as ActiveMQ does: an expiration kept would
        // expire it again there.
        message.expiration = 0;
        // It names where the message was dead-lettered from, as ActiveMQ sets it, replacing one
        // it carried (sent on from another DLQ with its headers): kept, that one would not name
        // this DLQ's destination, and dead-lettered again here the message would move on to a
        // DLQ of this DLQ, and so on at each rejection. A virtual topic's copy was on its
        // consumer queue (the stored message names the topic, shared by every consumer queue).
        let origin = if self.virtual_queues.contains(queue) {
            queue.to_string()
        } else {
            message.destination.clone()
        };
        set_original_destination(&mut message, origin);
        message.destination = dlq.clone();
        let message = Arc::new(message);
        let (start, _) = self.append(vec![
            remove_entry(queue, key),
            add_entry(vec![dlq.clone()], message.clone()),
        ])?;
        let publish = vec![Publish::Queue(
            dlq,
            Entry::new(Some(MessageKey::new(start, 1)), message, entry.redeliveries)
                .from(entry.origin),
        )];
        drop(self.wait_for(publish));
        Ok(())
    }

    /// Removes expired messages waiting on queues (called periodically).
    pub fn expire_messages(&mut self) {
        let now = now_ms();
        let queues: Vec<String> = self
            .queues
            .iter()
            .filter(|(_, q)| q.expiring > 0)
            .map(|(name, _)| name.clone())
            .collect();
        for queue in queues {
            let Some(q) = self.queues.get_mut(&queue) else {
                continue;
            };
            let expired: Vec<u64> = q
                .ready
                .iter()
                .filter(|(_, e)| e.is_expired(now))
                .map(|(seq, _)| *seq)
                .collect();
            let mut removed = Vec::new();
            for seq in expired {
                if let Some(e) = q.ready.remove(&seq) {
                    removed.push(e);
                }
            }
            q.expiring = q
                .ready
                .values()
                .filter(|e| e.message.expiration > 0)
                .count();
            for entry in removed {
                self.stats.expired += 1;
                let _ = self.dead_letter(&queue, entry, "expired");
            }
        }
    }

    // ----- acknowledgements ----------------------------------------------------------------

    /// Takes the deliveries an ack covers out of their consumer.
    /// Takes the deliveries an acknowledgement of `tag` covers from their consumers:
    /// `(consumer, tag, delivery)`. A cumulative one covers the earlier deliveries of the
    /// whole subscription (every member's consumer of a composite destination).
    fn take_acked(
        &mut self,
        session: u64,
        tag: u64,
        scope: AckScope,
    ) -> Result<Vec<(u64, u64, InFlight)>, BrokerError> {
        let cid = *self
            .tags
            .get(&tag)
            .ok_or(BrokerError::UnknownDelivery(tag))?;
        if self
            .consumers
            .get(&cid)
            .is_none_or(|c| c.session != session)
        {
            return Err(BrokerError::UnknownDelivery(tag));
        }
        let cids = match scope {
            AckScope::Single => vec![cid],
            AckScope::Cumulative => self.siblings(cid),
        };
        let mut taken = Vec::new();
        for cid in cids {
            let Some(consumer) = self.consumers.get_mut(&cid) else {
                continue;
            };
            let mine: Vec<(u64, InFlight)> = match scope {
                AckScope::Single => consumer
                    .in_flight
                    .remove(&tag)
                    .map(|f| vec![(tag, f)])
                    .unwrap_or_default(),
                AckScope::Cumulative => {
                    let rest = consumer.in_flight.split_off(&(tag + 1));
                    std::mem::replace(&mut consumer.in_flight, rest)
                        .into_iter()
                        .collect()
                }
            };
            consumer.forget(mine.iter().map(|(t, _)| *t));
            for (t, f) in mine {
                self.tags.remove(&t);
                taken.push((cid, t, f));
            }
        }
        Ok(taken)
    }

    /// Gives each consumer [`Core::take_acked`] took deliveries from more of what waits for it,
    /// and the other consumers of its subscription too (a composite destination's share one
    /// prefetch window).
    fn refill_each(&mut self, cids: BTreeSet<u64>) {
        let mut all = BTreeSet::new();
        for cid in cids {
            match self.consumers.get(&cid) {
                Some(c) if !c.members.is_empty() => all.extend(c.members.iter().copied()),
                _ => {
                    all.insert(cid);
                }
            }
        }
        for cid in all {
            self.refill(cid);
        }
    }

    /// The tag the next delivery gets (see [`super::Session::next_tag`]).
    pub fn next_tag(&self) -> u64 {
        self.next_tag
    }

    pub fn ack(
        &mut self,
        session: u64,
        tag: u64,
        scope: AckScope,
        transaction: Option<&str>,
    ) -> Result<Confirmation, BrokerError> {
        if let Some(tx) = transaction {
            let Some(open) = self.session(session)?.transactions.get(tx) else {
                return Err(BrokerError::UnknownTransaction(tx.to_string()));
            };
            // The commit writes one record: at most what the consumer holds may join it.
            let entries = open.entries();
            let holds = match self.tags.get(&tag) {
                Some(&cid) => self
                    .siblings(cid)
                    .iter()
                    .filter_map(|c| self.consumers.get(c))
                    .map(|c| c.in_flight.len())
                    .sum(),
                None => 1,
            };
            if entries + holds > crate::store::MAX_ENTRIES {
                return Err(too_many_entries(tx));
            }
        }
        let acked = self.take_acked(session, tag, scope)?;
        let cids = acked.iter().map(|(cid, _, _)| *cid).collect();
        self.stats.acknowledged += acked.len() as u64;
        let confirmation = match transaction {
            Some(tx) => {
                let transaction = self
                    .session(session)?
                    .transactions
                    .get_mut(tx)
                    .expect("checked above");
                transaction.acks.extend(acked);
                Confirmation::done()
            }
            None => {
                let removes: Vec<_> = acked
                    .iter()
                    .filter_map(|(_, _, f)| Some(remove_entry(f.queue.as_deref()?, f.entry.key?)))
                    .collect();
                if removes.is_empty() {
                    Confirmation::done()
                } else {
                    self.append_in_chunks(removes)?;
                    self.flush()
                }
            }
        };
        self.refill_each(cids);
        Ok(confirmation)
    }

    pub fn nack(
        &mut self,
        session: u64,
        tag: u64,
        transaction: Option<&str>,
    ) -> Result<Confirmation, BrokerError> {
        if let Some(tx) = transaction {
            if !self.session(session)?.transactions.contains_key(tx) {
                return Err(BrokerError::UnknownTransaction(tx.to_string()));
            }
        }
        let rejected = self.take_acked(session, tag, AckScope::Single)?;
        let cids = rejected.iter().map(|(cid, _, _)| *cid).collect();
        if let Some(tx) = transaction {
            if let Some(open) = self.session(session)?.transactions.get_mut(tx) {
                open.nacks.extend(rejected.into_iter().map(|(_, _, f)| f));
            }
            self.refill_each(cids);
            return Ok(Confirmation::done());
        }
        for (_, _, f) in rejected {
            self.reject(f)?;
        }
        self.refill_each(cids);
        Ok(self.flush())
    }

    /// The consumers behind a session's subscription id (one per member of a composite
    /// destination).
    fn consumers_of(&mut self, session: u64, id: &str) -> Result<Vec<u64>, BrokerError> {
        self.session(session)?
            .subscriptions
            .get(id)
            .cloned()
            .ok_or_else(|| BrokerError::UnknownSubscription(id.to_string()))
    }

    /// The consumers of the subscription consumer `cid` belongs to (itself among them).
    fn siblings(&self, cid: u64) -> Vec<u64> {
        self.consumers
            .get(&cid)
            .and_then(|c| {
                self.sessions
                    .get(&c.session)?
                    .subscriptions
                    .get(&c.subscription)
            })
            .cloned()
            .unwrap_or_else(|| vec![cid])
    }

    /// The client consumed every delivery of subscription `id` up to `tag` without
    /// acknowledging them yet: they stop filling its prefetch window.
    pub fn delivered(&mut self, session: u64, id: &str, tag: u64) -> Result<(), BrokerError> {
        // All first, then the refills: a composite's consumers share one window.
        let cids = self.consumers_of(session, id)?;
        for cid in &cids {
            if let Some(c) = self.consumers.get_mut(cid) {
                c.mark_delivered(tag);
            }
        }
        for cid in cids {
            self.refill(cid);
        }
        Ok(())
    }

    /// Counts a client-side redelivery of an in-flight delivery of this session.
    pub fn redelivered(&mut self, session: u64, tag: u64) {
        let Some(cid) = self.tags.get(&tag).copied() else {
            return;
        };
        if let Some(f) = self
            .consumers
            .get_mut(&cid)
            .filter(|c| c.session == session)
            .and_then(|c| c.in_flight.get_mut(&tag))
        {
            f.entry.redeliveries += 1;
        }
    }

    /// Lets one more message through to subscription `id` (a consumer with prefetch 0). On a
    /// composite destination, each member's consumer may answer it; the first to do so takes
    /// it from the others (see [`Core::deliver`]).
    pub fn pull(&mut self, session: u64, id: &str) -> Result<(), BrokerError> {
        let cids = self.consumers_of(session, id)?;
        for cid in &cids {
            if let Some(c) = self.consumers.get_mut(cid) {
                c.pulls += 1;
            }
        }
        for cid in cids {
            self.refill(cid);
        }
        Ok(())
    }

    /// Withdraws one outstanding pull of subscription `id`; false when every pull was already
    /// answered with a delivery.
    pub fn cancel_pull(&mut self, session: u64, id: &str) -> bool {
        let Ok(cids) = self.consumers_of(session, id) else {
            return false;
        };
        let mut outstanding = false;
        for cid in cids {
            if let Some(c) = self.consumers.get_mut(&cid).filter(|c| c.pulls > 0) {
                c.pulls -= 1;
                outstanding = true;
            }
        }
        outstanding
    }

    /// Changes the prefetch window of subscription `id`.
    pub fn set_prefetch(
        &mut self,
        session: u64,
        id: &str,
        prefetch: u32,
    ) -> Result<(), BrokerError> {
        let cids = self.consumers_of(session, id)?;
        for cid in &cids {
            if let Some(c) = self.consumers.get_mut(cid) {
                c.prefetch = prefetch;
            }
        }
        for cid in cids {
            self.refill(cid);
        }
        Ok(())
    }

    /// The messages waiting on a queue, in delivery order, that `selector` accepts, with how
    /// often each was delivered before; nothing is consumed (a queue browser).
    pub fn browse(
        &self,
        destination: &Destination,
        selector: Option<&str>,
    ) -> Result<Vec<(Arc<Message>, u32)>, BrokerError> {
        let selector = parse_selector(selector)?;
        let now = now_ms();
        let name = destination.canonical();
        let Some(q) = self.queues.get(&name) else {
            return Ok(Vec::new());
        };
        q.ready
            .values()
            .filter(|e| !e.is_expired(now))
            .filter(|e| {
                selector
                    .as_ref()
                    .is_none_or(|s| s.matches_with_redeliveries(&e.message, e.redeliveries))
            })
            .map(|e| {
                // A virtual topic's consumer queue shows its copies, as its consumers get them.
                let message = self.as_on_queue(&self.with_body(e)?, &name);
                Ok((message, e.redeliveries))
            })
            .collect()
    }

    /// Forgets a destination nobody uses any more (a deleted temporary queue or topic): a
    /// queue without consumers, whose waiting messages are dropped when none of them is stored;
    /// a topic without subscribers or durable subscriptions. False when it is still in use or
    /// holds stored messages (they stay deliverable).
    pub fn delete_destination(&mut self, destination: &Destination) -> bool {
        let name = destination.canonical();
        match destination {
            Destination::Queue(_) => {
                let deleted = match self.queues.get(&name) {
                    None => true,
                    Some(q)
                        if q.consumers.is_empty() && q.ready.values().all(|e| e.key.is_none()) =>
                    {
                        self.queues.remove(&name);
                        true
                    }
                    Some(_) => false,
                };
                if deleted && !self.scheduled.is_empty() {
                    // Its delayed non-persistent messages would make it again when due, for
                    // nobody; a persistent one still goes to the queue, made again then.
                    let mut removes = Vec::new();
                    self.scheduled.retain(|_, p| match p {
                        Publish::Queue(q, e) => !(*q == name && e.key.is_none()),
                        Publish::Scheduled(e)
                            if e.message.destination == name && !e.message.persistent =>
                        {
                            removes.extend(e.key.map(|key| remove_entry(HOLDING, key)));
                            false
                        }
                        _ => true,
                    });
                    if let Err(error) = self.append_in_chunks(removes) {
                        tracing::error!(queue = name, %error, "could not remove a deleted queue's delayed messages");
                    }
                }
                deleted
            }
            Destination::Topic(_) => match self.topics.get(&name) {
                None => true,
                Some(t) if t.subscribers.is_empty() && t.durables.is_empty() => {
                    self.topics.remove(&name);
                    true
                }
                Some(_) => false,
            },
        }
    }

    // ----- transactions --------------------------------------------------------------------

    pub fn begin(&mut self, session: u64, tx: &str) -> Result<(), BrokerError> {
        let state = self.session(session)?;
        if state.transactions.contains_key(tx) {
            return Err(BrokerError::TransactionExists(tx.to_string()));
        }
        state
            .transactions
            .insert(tx.to_string(), Transaction::default());
        Ok(())
    }

    /// Stores a transaction's sends and acknowledgements as one record: all or nothing.
    pub fn commit(&mut self, session: u64, tx: &str) -> Result<Confirmation, BrokerError> {
        let (sends, removes) = {
            let open = self
                .session(session)?
                .transactions
                .get(tx)
                .ok_or_else(|| BrokerError::UnknownTransaction(tx.to_string()))?;
            let removes: Vec<_> = open
                .acks
                .iter()
                .filter_map(|(_, _, f)| match (&f.queue, f.entry.key) {
                    (Some(queue), Some(key)) => Some(remove_entry(queue, key)),
                    _ => None,
                })
                .collect();
            (open.sends.clone(), removes)
        };
        if sends.iter().any(|(_, m)| m.persistent) {
            // Refused with the transaction still open, as a commit too large for a record.
            self.refuse_if_full()?;
        }
        let mut scheduled = Vec::with_capacity(sends.len());
        for (destination, message) in sends {
            for delivery in self.schedule(session, message)? {
                scheduled.push((destination.clone(), delivery));
            }
        }
        let sends = scheduled;
        let Routed {
            mut entries,
            publish,
            keyed,
        } = self.route_all(session, sends);
        entries.extend(removes);
        // A commit the journal would refuse (and fail on, taking every later write with it) is
        // refused instead, the transaction still open: the client may roll it back.
        if !fits_one_record(&entries) {
            return Err(BrokerError::TransactionTooLarge(
                tx.to_string(),
                format!(
                    "its commit would make a record of more than {} bytes, the journal's \
                     limit: commit in smaller transactions",
                    crate::store::record::MAX_RECORD_LEN
                ),
            ));
        }
        let transaction = self
            .session(session)?
            .transactions
            .remove(tx)
            .expect("looked up above, under the same lock");
        for (_, message) in &transaction.sends {
            if !message.producer_id.is_empty() {
                self.record_producer(&message.producer_id, message.producer_sequence);
            }
        }
        for f in transaction.nacks {
            self.reject(f)?;
        }
        if entries.is_empty() {
            self.publish_now(publish);
            return Ok(self.flush());
        }
        let (start, _) = self.append_deferred(entries)?;
        Ok(self.wait_for(with_keys(publish, &keyed, start)))
    }

    /// Drops a transaction's sends; its acknowledged messages are redelivered.
    pub fn abort(&mut self, session: u64, tx: &str) -> Result<(), BrokerError> {
        self.rollback(session, tx, false)
    }

    /// Drops a transaction's sends. Its acknowledged messages are redelivered, or with
    /// `keep_delivered` they go back to the consumers they were delivered to, unacknowledged
    /// (a JMS client redelivers rolled-back messages itself, then acknowledges or poisons
    /// them); a consumer that is gone meanwhile has its messages redelivered.
    pub fn rollback(
        &mut self,
        session: u64,
        tx: &str,
        keep_delivered: bool,
    ) -> Result<(), BrokerError> {
        let transaction = self
            .session(session)?
            .transactions
            .remove(tx)
            .ok_or_else(|| BrokerError::UnknownTransaction(tx.to_string()))?;
        let mut touched = BTreeSet::new();
        for (cid, tag, f) in transaction.acks {
            if keep_delivered {
                if let Some(consumer) = self
                    .consumers
                    .get_mut(&cid)
                    .filter(|c| c.session == session)
                {
                    if tag <= consumer.delivered_upto {
                        consumer.delivered += 1;
                    }
                    consumer.in_flight.insert(tag, f);
                    self.tags.insert(tag, cid);
                    self.stats.acknowledged = self.stats.acknowledged.saturating_sub(1);
                    continue;
                }
            }
            self.redeliver(f, &mut touched)?;
        }
        for f in transaction.nacks {
            self.redeliver(f, &mut touched)?;
        }
        self.dispatch_all(touched);
        Ok(())
    }

    // ----- administration (the admin endpoint's destination operations) --------------------

    /// Removes up to [`ADMIN_BATCH`] of `queue`'s waiting messages in one record of removes
    /// (the caller takes the lock again for the next batch, so a deep queue never holds the
    /// core for long). With `delivered`, its delivered and unacknowledged messages go too, as
    /// ActiveMQ's `Queue.purge()` removes every message it has paged in, dispatched ones
    /// included: see [`Core::forget_delivered`].
    pub fn purge_batch(&mut self, queue: &str, delivered: bool) -> Result<Purged, AdminError> {
        let Some(q) = self.queues.get_mut(queue) else {
            return Err(AdminError::UnknownQueue(queue.to_string()));
        };
        let waiting = q.ready.len();
        let seqs: Vec<u64> = q.ready.keys().take(ADMIN_BATCH).copied().collect();
        let mut removes = Vec::with_capacity(seqs.len());
        for seq in &seqs {
            if let Some(entry) = q.remove_ready(*seq) {
                if let Some(key) = entry.key {
                    removes.push(remove_entry(queue, key));
                }
            }
        }
        let more = !q.ready.is_empty();
        let delivered = if delivered {
            self.forget_delivered(queue, &mut removes)
        } else {
            0
        };
        self.append_in_chunks(removes)?;
        Ok(Purged {
            waiting,
            removed: seqs.len(),
            delivered,
            more,
        })
    }

    /// Takes `queue`'s delivered, unacknowledged messages (with their consumers, or
    /// acknowledged or rejected inside an open transaction) off the queue for good, their
    /// removes added to `removes`: the consumer keeps its delivery, and whatever it does with
    /// it later (an acknowledgement, a NACK, a rollback, going away) finds nothing to remove,
    /// redeliver or dead-letter, as an ActiveMQ consumer's later ack of a purged message does.
    fn forget_delivered(&mut self, queue: &str, removes: &mut Vec<crate::store::Entry>) -> usize {
        let mut count = 0;
        let mut forget = |f: &mut InFlight| {
            if f.queue.as_deref() == Some(queue) {
                if let Some(key) = f.entry.key {
                    removes.push(remove_entry(queue, key));
                }
                // As a non-durable topic's delivery: nothing is kept for it.
                f.queue = None;
                count += 1;
            }
        };
        for consumer in self.consumers.values_mut() {
            consumer.in_flight.values_mut().for_each(&mut forget);
        }
        for session in self.sessions.values_mut() {
            for tx in session.transactions.values_mut() {
                tx.acks.iter_mut().for_each(|(_, _, f)| forget(f));
                tx.nacks.iter_mut().for_each(&mut forget);
            }
        }
        count
    }

    /// One batch of deleting `queue` (ActiveMQ's `removeQueue`): refused while it has a
    /// consumer (ActiveMQ detaches them instead), and for a virtual topic's consumer queue,
    /// which its topic would fill again; else a [`Core::purge_batch`], and once nothing is
    /// left the queue is forgotten (a durable subscription's, `durable://...`, is removed with
    /// its subscription record, as an unsubscribe does).
    pub fn delete_batch(&mut self, queue: &str, first: bool) -> Result<Purged, AdminError> {
        let Some(q) = self.queues.get(queue) else {
            return Err(AdminError::UnknownQueue(queue.to_string()));
        };
        if !q.consumers.is_empty() || self.durables.get(queue).is_some_and(|d| d.active.is_some()) {
            return Err(AdminError::Conflict(format!(
                "{queue} has {} consumer(s): close them first (ActiveMQ's removeQueue detaches \
                 them; ferromq refuses instead)",
                q.consumers.len().max(1)
            )));
        }
        if self.virtual_queues.contains(queue) {
            return Err(AdminError::Conflict(format!(
                "{queue} is a virtual topic's consumer queue, which its topic keeps filling: \
                 purge it instead"
            )));
        }
        let batch = self.purge_batch(queue, first)?;
        if !batch.more {
            if self.durables.contains_key(queue) {
                self.remove_durable(queue)?;
            } else {
                self.queues.remove(queue);
            }
        }
        Ok(batch)
    }

    /// One batch of ActiveMQ's `retryMessages()` on DLQ `queue`: each of its waiting messages
    /// with sequence in `from..=upto` (at most [`ADMIN_BATCH`]) whose `original-destination`
    /// names another queue or a topic is moved there, in records that each hold whole moves
    /// (the add to the destination and the remove from the DLQ together, so a crash leaves a
    /// message in one place) of at most [`MOVE_RECORD_LEN`] (a larger single move alone, up
    /// to the journal's record limit; past it the message stays). The batch ends early once
    /// it moved [`ADMIN_BATCH_BYTES`]. As ActiveMQ's resend does, the
    /// moved message keeps its id, its redelivery count starts again from 0 and its
    /// `original-destination` names the DLQ; sent back to a topic, every current subscriber
    /// of the topic (durable or not) receives it. The others stay, counted as left.
    /// Returns what it did and where the next batch starts, if there is one.
    pub fn retry_batch(
        &mut self,
        queue: &str,
        from: u64,
        upto: u64,
    ) -> Result<(Retried, Option<u64>), AdminError> {
        let Some(q) = self.queues.get(queue) else {
            return Ok((Retried::default(), None));
        };
        let seqs: Vec<u64> = q
            .ready
            .range(from..=upto)
            .take(ADMIN_BATCH)
            .map(|(seq, _)| *seq)
            .collect();
        let mut resume = seqs
            .last()
            .filter(|last| seqs.len() == ADMIN_BATCH && **last < upto)
            .map(|last| last + 1);
        let mut retried = Retried::default();
        let mut chunk = (Routed::default(), 0);
        let mut moved_len = 0;
        for seq in seqs {
            if moved_len >= ADMIN_BATCH_BYTES {
                resume = Some(seq);
                break;
            }
            let Some(entry) = self.queues.get(queue).and_then(|q| q.ready.get(&seq)) else {
                continue;
            };
            let Some(target) =
                original_destination(&entry.message).filter(|d| d.canonical() != queue)
            else {
                retried.left += 1;
                continue;
            };
            let message = match self.with_body(entry) {
                Ok(message) => message,
                Err(error) => {
                    tracing::error!(queue, %error, "retry: cannot read a message back from the journal; it stays");
                    retried.left += 1;
                    continue;
                }
            };
            let key = entry.key;
            let mut copy = (*message).clone();
            copy.destination = target.canonical();
            copy.redelivery_count = 0;
            set_original_destination(&mut copy, queue.to_string());
            let (mut entries, publish) = self.route(0, &target, Arc::new(copy));
            let stored = !entries.is_empty();
            if let Some(key) = key {
                entries.push(remove_entry(queue, key));
            }
            let len = record_len(&entries);
            if len > crate::store::record::MAX_RECORD_LEN {
                tracing::warn!(queue, message_id = %message.message_id, "retry: the message's move would not fit one journal record; it stays");
                retried.left += 1;
                continue;
            }
            self.gather_move(&mut chunk, len, entries, stored, publish)?;
            moved_len += len;
            if let Some(q) = self.queues.get_mut(queue) {
                q.remove_ready(seq);
            }
            retried.moved += 1;
        }
        if !chunk.0.entries.is_empty() || !chunk.0.publish.is_empty() {
            self.append_moves(chunk.0)?;
        }
        Ok((retried, resume))
    }

    /// Where a [`Core::retry_batch`] on `queue` starts: the last waiting sequence (messages
    /// arriving later are not retried by it), or `None` with nothing waiting; refused unless
    /// `queue` is a dead-letter queue, as ActiveMQ refuses.
    pub fn retry_start(&self, queue: &str) -> Result<Option<u64>, AdminError> {
        let Some(q) = self.queues.get(queue) else {
            return Err(AdminError::UnknownQueue(queue.to_string()));
        };
        if !self
            .options
            .dead_letter_strategy
            .is_dead_letter_queue(queue)
        {
            return Err(AdminError::Conflict(format!(
                "{queue} is not a dead-letter queue (as dead_letter_strategy names them): \
                 retry is only for DLQs"
            )));
        }
        Ok(q.ready.keys().next_back().copied())
    }

    /// Adds one move (`entries`, `len` bytes as [`record_len`] counts them) to `chunk` (the
    /// moves gathered for one record, and their length), appending the chunk first when the
    /// move would take it past [`MOVE_RECORD_LEN`] or a record's entries.
    fn gather_move(
        &mut self,
        chunk: &mut (Routed, usize),
        len: usize,
        entries: Vec<crate::store::Entry>,
        stored: bool,
        publish: Vec<Publish>,
    ) -> Result<(), BrokerError> {
        if !chunk.0.entries.is_empty()
            && (chunk.1 + len > MOVE_RECORD_LEN
                || chunk.0.entries.len() + entries.len() > crate::store::MAX_ENTRIES)
        {
            self.append_moves(std::mem::take(&mut chunk.0))?;
            chunk.1 = 0;
        }
        chunk.0.push(entries, stored, publish);
        chunk.1 += len;
        Ok(())
    }

    /// Appends one record of moves gathered by [`Core::retry_batch`] or [`Core::move_due`];
    /// the moved messages show on their destinations once it is confirmed.
    fn append_moves(&mut self, moves: Routed) -> Result<(), BrokerError> {
        let Routed {
            entries,
            publish,
            keyed,
        } = moves;
        let publish = if entries.is_empty() {
            publish
        } else {
            let (start, _) = self.append(entries)?;
            with_keys(publish, &keyed, start)
        };
        drop(self.wait_for(publish));
        Ok(())
    }

    // ----- introspection -------------------------------------------------------------------

    pub fn stats(&self) -> Stats {
        Stats {
            epoch: self.epoch,
            journal_end: self.end().0,
            journal_retained: self.store.as_ref().map_or(0, |s| s.stats().bytes),
            confirmed: self.confirmed.0,
            sessions: self.sessions.len(),
            consumers: self.consumers.len(),
            queues: self.queues.len(),
            ready_messages: self.queues.values().map(|q| q.ready.len()).sum(),
            in_flight_messages: self.consumers.values().map(|c| c.in_flight.len()).sum(),
            pending_confirmations: self.pending.len(),
            resident_bytes: self.memory.bytes(),
            transient_bytes: self.memory.transient(),
            store_bytes: self.store_usage.bytes(),
            store_limit: self.store_usage.limit(),
            store_full: self.store_usage.is_full(),
            scheduled: self.scheduled.len(),
            ..self.stats.clone()
        }
    }

    /// Every queue (durable subscriptions' included), by name.
    pub fn queue_stats(&self) -> Vec<super::QueueStats> {
        let mut in_flight: HashMap<&str, usize> = HashMap::new();
        for consumer in self.consumers.values() {
            for f in consumer.in_flight.values() {
                if let Some(queue) = &f.queue {
                    *in_flight.entry(queue.as_str()).or_default() += 1;
                }
            }
        }
        let mut stats: Vec<super::QueueStats> = self
            .queues
            .iter()
            .map(|(name, q)| super::QueueStats {
                name: name.clone(),
                ready: q.ready.len(),
                consumers: q.consumers.len(),
                in_flight: in_flight.get(name.as_str()).copied().unwrap_or(0),
            })
            .collect();
        stats.sort_by(|a, b| a.name.cmp(&b.name));
        stats
    }

    pub fn queue_depth(&self, queue: &str) -> usize {
        self.queues.get(queue).map_or(0, |q| q.ready.len())
    }
}

/// Drops a stored entry's body from memory: [`Core::page_in`] reads it back from the journal.
fn leave_body_on_disk(entry: &mut Entry) {
    let mut stub = (*entry.message).clone();
    stub.body = Default::default();
    entry.message = Arc::new(stub);
    entry.body = Body::OnDisk;
}

/// A virtual topic's message as its consumer queue delivers it, as ActiveMQ's
/// `VirtualTopicInterceptor` copies it (`setOriginalDestination`, on by default): addressed to
/// the queue, with the topic it was sent to as its original destination. The stored message,
/// one for every consumer queue, keeps the topic.
fn virtual_copy(message: &Arc<Message>, queue: &str) -> Arc<Message> {
    let mut copy = (**message).clone();
    if !copy
        .headers
        .iter()
        .any(|h| h.name == "original-destination")
    {
        copy.headers.push(Header::text(
            "original-destination",
            copy.destination.clone(),
        ));
    }
    copy.destination = queue.to_string();
    Arc::new(copy)
}

/// A copy of `message` for member `destination` of a composite send (the message itself when
/// it already names that destination).
fn for_member(message: &Arc<Message>, destination: &Destination) -> Arc<Message> {
    let canonical = destination.canonical();
    if message.destination == canonical {
        return message.clone();
    }
    let mut copy = (**message).clone();
    copy.destination = canonical;
    Arc::new(copy)
}

/// A scheduler management request under way (see [`Core::manage_step`]).
pub struct Management {
    request: schedule::Request,
    /// A browse's destination for the copies.
    reply_to: Option<Destination>,
    /// Where the next step starts (the first key the last one did not look at).
    next: Option<(i64, u64)>,
    /// The job ids a browse sent a copy of.
    browsed: HashSet<String>,
    /// A ranged request's jobs seen so far, each with the key of its next delivery (the first
    /// seen).
    next_of: HashMap<String, (i64, u64)>,
    /// The jobs a ranged REMOVEALL selected: every delivery of theirs goes.
    removing: HashSet<String>,
}

/// What storing several sends in one record takes (see [`Core::route_all`]).
#[derive(Default)]
struct Routed {
    entries: Vec<crate::store::Entry>,
    publish: Vec<Publish>,
    /// (index into `publish`, index of the entry storing it in the record).
    keyed: Vec<(usize, usize)>,
}

impl Routed {
    /// Adds what [`Core::route`] made of one message (`entries` first holding its add when
    /// `stored`): its queue entries are keyed to that add.
    fn push(&mut self, entries: Vec<crate::store::Entry>, stored: bool, publish: Vec<Publish>) {
        for item in publish {
            if stored && matches!(item, Publish::Queue(..) | Publish::Scheduled(_)) {
                self.keyed.push((self.publish.len(), self.entries.len()));
            }
            self.publish.push(item);
        }
        self.entries.extend(entries);
    }
}

/// Fills in the store key of the queue entries `keyed` names, published from a record that
/// starts at `start`.
fn with_keys(mut publish: Vec<Publish>, keyed: &[(usize, usize)], start: Position) -> Vec<Publish> {
    for &(p, index) in keyed {
        if let Publish::Queue(_, entry) | Publish::Scheduled(entry) = &mut publish[p] {
            entry.key = Some(MessageKey::new(start, index));
        }
    }
    publish
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_sequence_is_the_last_colon_field() {
        assert_eq!(producer_of("ID:abc:1:1:42"), Some(("ID:abc:1:1", 42)));
        assert_eq!(producer_of("no-sequence"), None);
        assert_eq!(producer_of("ID:abc:x"), None);
        assert_eq!(producer_of(":5"), None);
    }

    #[test]
    fn durable_queue_names_do_not_collide() {
        assert_ne!(durable_queue("a:b", "c"), durable_queue("a", "b:c"));
    }
}
