//! The core's state and its rules, behind the mutex in `broker/mod.rs`: the state type
//! ([`Core`]) and the types it holds, the helpers its parts share, and its counters.
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
//!
//! The rules, one concern a module, each an `impl Core` block: `recovery` (the state from what
//! the store recovered), `journal` (appends, the store's health, the confirmed watermark),
//! `sessions`, `send` (the send path and routing), `subscribe` (consumers, topic and wildcard
//! subscriptions), `durable` (durable subscriptions, virtual topic consumer queues), `paging`
//! (`memory_limit`, bodies left on disk), `dispatch`, `ack` (acknowledgements, consumer
//! credit), `redelivery` (redelivery, the DLQ, expiry), `transactions`, `scheduled` (delayed
//! delivery, scheduler management requests) and `admin` (browsing, purge, delete, DLQ retry).
//!
//! It must never know about a protocol's framing, and no part may keep state of its own
//! outside [`Core`].

mod ack;
mod admin;
pub use admin::{read_bodies, BrowseCursor};
#[cfg(test)]
pub(crate) use redelivery::EXPIRY_BATCH;
pub use subscribe::Seen;
mod dispatch;
mod durable;
mod journal;
mod paging;
mod recovery;
mod redelivery;
mod scheduled;
mod send;
mod sessions;
mod subscribe;
mod transactions;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};

use super::memory::Memory;
use super::queue::{Body, Consumer, Entry, InFlight, Queue};
use super::selector::Selector;
use super::store_limit::StoreUsage;
use super::wildcard::Pattern;
use super::{BrokerError, BrokerOptions, Confirmation, Delivery, Destination};
use crate::store::{
    entry, Header, Message, MessageAdd, MessageKey, MessageRemove, Position, ProducerAudit, Store,
    SubscriptionAdd,
};

/// How many ready messages nobody can take one selective dispatch (selectors, message groups)
/// passes over before it stops: a queue whose head no consumer can take (a group whose
/// consumer's window is full, selectors nothing matches) then costs each send and ack bounded
/// work under the core's lock instead of a walk through its whole backlog. ActiveMQ bounds the
/// same walk by its page size (200 messages), and a consumer whose messages lie beyond the page
/// waits; here the periodic sweep walks on ([`Core::continue_scans`]), so such a message is
/// found within a few sweeps.
pub(super) const SCAN_LIMIT: usize = 1_000;
/// How many times one selective dispatch may ask a consumer's selector (or noLocal) whether it
/// takes a message, whatever it passes over: with many selective consumers, each message
/// passed over costs one question per consumer with credit, so [`SCAN_LIMIT`] messages alone
/// would not bound the work under the core's lock (200 consumers on a deep queue: 200,000
/// questions per send). The periodic sweep walks on from where such a dispatch stopped.
pub(super) const SCAN_CHECKS: usize = 16 * SCAN_LIMIT;
/// How many selector (and noLocal) questions one periodic sweep asks over all queues (see
/// [`SCAN_CHECKS`]); queues it did not reach are walked first by the next sweep.
pub(super) const SWEEP_SCAN_CHECKS: usize = 200_000;
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
    /// Bytes of queued messages held in memory, bodies and headers (see `memory_limit`;
    /// the headers of a message whose body waits in the journal are not counted).
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
    /// The messages the store recovered for one queue, in key order, shown once the
    /// epoch-start record is confirmed (not new enqueues); see [`Core::push_recovered`].
    Recovered(String, Vec<Entry>),
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
    /// [`schedule`](crate::broker::schedule)); costs a field read for any other.
    fn due_after(&self, now: impl FnOnce() -> i64) -> Option<i64> {
        let deliver_at = match self {
            Publish::Queue(_, entry) | Publish::Scheduled(entry) => entry.message.deliver_at,
            // Each is looked at as it is published.
            Publish::Recovered(..) => 0,
            Publish::Topic(_, message, _) => message.deliver_at,
        };
        due_after(deliver_at, now)
    }
}

/// `deliver_at` when that is still ahead (0: deliver at once).
fn due_after(deliver_at: i64, now: impl FnOnce() -> i64) -> Option<i64> {
    (deliver_at > 0 && deliver_at > now()).then_some(deliver_at)
}

struct SessionState {
    client_id: Option<String>,
    /// Where its client connects from (for the refusal of a second holder of its client id).
    peer: String,
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

/// Makes `original-destination` name `origin`, replacing any the message carried (where a
/// dead letter came from, or the DLQ a retried one comes back from).
fn set_original_destination(message: &mut Message, origin: String) {
    message.headers.retain(|h| h.name != "original-destination");
    message
        .headers
        .push(Header::text("original-destination", origin));
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
    /// `Core::subscriptions_made` when it was made while running (0: recovered at start). A
    /// name may be reused after an unsubscribe, or for another selector: a copy routed before
    /// (`Entry::routed_under` below it) was an earlier subscription's, and is dropped if it
    /// comes back (a transaction rolled back, a confirmation arriving late).
    made: u64,
    /// With noLocal, the origin (session or client connection, see `Entry::origin`) it was
    /// last active on: its messages are not stored for it, even while it is inactive (see
    /// [`Core::route`]). In memory only.
    no_local_session: Option<u64>,
}

pub(crate) struct Core {
    /// `None` once the core is closed (this node stopped being the master).
    store: Option<Store>,
    /// Reads bodies left in the journal back for delivery, keeping the last record it decoded:
    /// consecutive messages of one record (a batch of sends) decode it once.
    bodies: std::sync::Mutex<Option<crate::store::MessageReader>>,
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
    /// Body bytes of the sends of every open transaction, all sessions together: at most
    /// `memory_limit` (each transaction's own share is its `Transaction::bytes`).
    transaction_bytes: u64,
    /// The last queue the sweep's selective walk reached (see [`Core::continue_scans`]): the
    /// next sweep starts after it, so that a budget used up early leaves no queue behind.
    sweep_after: Option<String>,
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
    /// Client id -> the session holding it: a client id is held by one connection at a time.
    client_ids: HashMap<String, u64>,
    /// Woken whenever a session closes (a connection waiting for its client id to be freed).
    session_closed: Arc<tokio::sync::Notify>,
    consumers: HashMap<u64, Consumer>,
    /// Delivery tag -> consumer id.
    tags: HashMap<u64, u64>,
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
    /// Durable subscriptions whose subscriber is away are missing non-persistent messages, for
    /// want of room (logged when it starts and when it ends; see [`Core::route`]).
    away_durables_missing: bool,
    /// The store's size against `store_limit` (see [`Core::measure_store`]).
    store_usage: StoreUsage,
    /// The journal end past which an append measures the store again.
    measure_at: Position,
    /// The queue the next expiry sweep starts with (the one the last sweep stopped in, or
    /// after): every queue gets its turn however many entries the others hold.
    expiry_from: String,
    /// Durable subscriptions made while running (see `Durable::made`).
    subscriptions_made: u64,
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

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
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
/// [`super::MAX_COMPOSITE_MEMBERS`] are refused before they are compared, and so is a member
/// whose name [`Destination::is_valid_name`] refuses.
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
    // Here rather than in each protocol: whatever brings a name, it must fit in a STOMP
    // header, a status page and a log line.
    if let Some(bad) = members
        .iter()
        .find(|d| !Destination::is_valid_name(d.name()))
    {
        return Err(BrokerError::InvalidName(format!(
            "destination name {:?} is empty or contains a newline or NUL character",
            bad.name()
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(members.len());
    Ok(members.iter().filter(|d| seen.insert(*d)).collect())
}

/// A consumer's priority, by id, as [`Queue`]'s consumer order needs it.
fn priority_of(consumers: &HashMap<u64, Consumer>) -> impl Fn(u64) -> i8 + '_ {
    |cid| consumers.get(&cid).map_or(0, |c| c.priority)
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
    use super::send::producer_of;
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
