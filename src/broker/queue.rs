//! A queue's messages and consumers, and what one delivery carries. Pure data: the rules
//! for moving messages between these live in `core`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::memory::Resident;
use super::selector::Selector;
use super::{Delivery, Destination};
use crate::store::{Message, MessageKey};

/// One message on a queue (or held for a topic subscriber).
#[derive(Debug, Clone)]
pub(super) struct Entry {
    /// Orders the queue; kept across redeliveries so a returned message goes back to its place.
    pub seq: u64,
    /// Where the message is stored; `None` for a non-persistent message.
    pub key: Option<MessageKey>,
    /// Without its body when the body is [`Body::OnDisk`].
    pub message: Arc<Message>,
    /// Times it came back undelivered-to-completion: shown to consumers (`redelivered`,
    /// `redelivery-count`, JMSRedelivered, JMSXDeliveryCount).
    pub redeliveries: u32,
    /// Times it failed: it was the oldest delivery a consumer that went away held
    /// unacknowledged (the one it was presumably working on), or was in a transaction rolled
    /// back. What `max_redeliveries` limits; the rest of a prefetch returns without failing.
    pub failures: u32,
    pub body: Body,
    /// Who sent the message, for noLocal subscribers: the sending session's id, or the client
    /// connection it serves when the protocol named it (an OpenWire connection id, which a
    /// failover client keeps across reconnects; also read back from a recovered message's
    /// producer id); 0 when unknown (nobody's own).
    pub origin: u64,
    /// For a copy routed to a durable subscription's queue: how many durable subscriptions
    /// the core had made when it was routed (`Core::subscriptions_made`); a subscription made
    /// again under the same name since counts more, and the copy was the old one's. 0 for
    /// anything else.
    pub routed_under: u64,
}

/// Where a queue entry's body is, as the broker's `memory_limit` sees it.
#[derive(Debug, Clone)]
pub(super) enum Body {
    /// Not counted yet: the entry is not on a queue (`Core::admit` decides).
    Uncounted,
    /// In memory, counted against the limit while the entry lives (the share is held for its
    /// `Drop`).
    InMemory { _share: Resident },
    /// Left in the journal (past the limit); read back from the message's key before delivery.
    OnDisk,
}

/// A message's body and its headers' names and values, in bytes: what it holds in memory
/// beyond a fixed overhead. Headers count as a body does: a client could send little body
/// and megabytes of headers.
pub fn held_bytes(message: &Message) -> u64 {
    let headers: usize = message
        .headers
        .iter()
        .map(|h| h.name.len() + h.value.len())
        .sum();
    (message.body.len() + headers) as u64
}

impl Entry {
    /// A new entry, its body not yet counted (see `Core::admit`).
    pub fn new(key: Option<MessageKey>, message: Arc<Message>, redeliveries: u32) -> Entry {
        Entry {
            seq: 0,
            key,
            message,
            redeliveries,
            failures: 0,
            body: Body::Uncounted,
            origin: 0,
            routed_under: 0,
        }
    }

    /// Bytes of its message counted against `memory_limit`: [`held_bytes`](fn@held_bytes) of the message
    /// (its body none while the body is [`Body::OnDisk`]).
    pub fn held_bytes(&self) -> u64 {
        held_bytes(&self.message)
    }

    /// The same, sent by session `origin`.
    pub fn from(mut self, origin: u64) -> Entry {
        self.origin = origin;
        self
    }

    pub fn is_expired(&self, now_ms: i64) -> bool {
        // Zero or negative: never expires (ActiveMQ's `expireTime > 0`).
        self.message.expiration > 0 && self.message.expiration <= now_ms
    }
}

#[derive(Debug, Default)]
pub(super) struct Queue {
    /// Messages ready for delivery, in order.
    pub ready: BTreeMap<u64, Entry>,
    /// Consumer ids, by descending consumer priority, then in the order they subscribed.
    /// Without priorities they are served round-robin from `next_consumer`; see
    /// [`Queue::choose`].
    pub consumers: Vec<u64>,
    pub next_consumer: usize,
    /// The consumers' priorities are not all equal: dispatch offers each message to the
    /// highest first (see [`Queue::choose`]).
    pub prioritized: bool,
    /// Ready entries that carry an expiration, so the sweep can skip queues without any.
    pub expiring: usize,
    /// The exclusive consumer that alone receives this queue's messages while it lives
    /// (ActiveMQ's exclusive consumer: the first of the queue's exclusive consumers).
    pub exclusive: Option<u64>,
    /// Message group owners; made when the first message with a `JMSXGroupID` arrives, and
    /// kept (dispatch then takes the path that can skip a message, see `Core::dispatch_queue`).
    pub groups: Option<Groups>,
    /// A selective dispatch stopped at its scan limit with consumers still wanting messages:
    /// the periodic sweep looks further, strictly after this sequence (see
    /// `Core::continue_scans`).
    pub scan_resume: Option<u64>,
    /// A dispatch from the head stopped before `scan_resume` (a consumer got room, say): what
    /// lies between was passed over earlier, so the sweep walks from the head again once it
    /// reaches the end. The sweep has work while either is set.
    pub scan_again: bool,
    /// Where the expiry sweep stopped in this queue (it looks at a bounded number of entries
    /// per tick), strictly after which it goes on; `None`: from the head.
    pub expiry_cursor: Option<u64>,
    /// A durable topic subscription's queue: message groups, a queue feature in ActiveMQ, do
    /// not apply (its one subscriber gets every message, with no group flag).
    pub subscription: bool,
}

impl Queue {
    pub fn push(&mut self, entry: Entry) {
        self.note_pushed(&entry);
        self.ready.insert(entry.seq, entry);
    }

    /// What a waiting entry adds to the queue's bookkeeping: an expiration to sweep, the
    /// first message group.
    fn note_pushed(&mut self, entry: &Entry) {
        if entry.message.expiration > 0 {
            self.expiring += 1;
        }
        if !self.subscription && self.groups.is_none() && group_of(&entry.message).is_some() {
            self.groups = Some(Groups::new());
        }
    }

    /// [`Queue::push`] for each of `entries`, whose sequences ascend: the map is built in
    /// one pass instead of one descent per entry.
    pub fn push_all(&mut self, entries: Vec<Entry>) {
        for entry in &entries {
            self.note_pushed(entry);
        }
        let mut tail: BTreeMap<u64, Entry> = entries.into_iter().map(|e| (e.seq, e)).collect();
        self.ready.append(&mut tail);
    }

    /// Takes the waiting entry `seq` off the queue (the counterpart of [`Queue::push`]).
    pub fn remove_ready(&mut self, seq: u64) -> Option<Entry> {
        let entry = self.ready.remove(&seq)?;
        if entry.message.expiration > 0 {
            self.expiring = self.expiring.saturating_sub(1);
        }
        Some(entry)
    }

    /// Whether consumer `cid` may receive this queue's messages now: there is no exclusive
    /// consumer, or it is the one.
    pub fn admits(&self, cid: u64) -> bool {
        self.exclusive.is_none_or(|owner| owner == cid)
    }

    /// Adds consumer `cid` of priority `priority` after every consumer of the same or a higher
    /// priority (`priority_of` tells the others').
    pub fn add_consumer(&mut self, cid: u64, priority: i8, priority_of: impl Fn(u64) -> i8) {
        let at = self
            .consumers
            .iter()
            .position(|&c| priority_of(c) < priority)
            .unwrap_or(self.consumers.len());
        self.consumers.insert(at, cid);
        self.prioritized = self.has_priorities(priority_of);
    }

    /// Removes consumer `cid`.
    pub fn remove_consumer(&mut self, cid: u64, priority_of: impl Fn(u64) -> i8) {
        self.consumers.retain(|c| *c != cid);
        self.prioritized = self.has_priorities(priority_of);
    }

    fn has_priorities(&self, priority_of: impl Fn(u64) -> i8) -> bool {
        let mut priorities = self.consumers.iter().map(|&c| priority_of(c));
        let first = priorities.next();
        priorities.any(|p| Some(p) != first)
    }

    /// The index in `consumers` of the consumer the next message goes to among those `takes`
    /// accepts: without priorities the next one round-robin; with them, as ActiveMQ's
    /// `Queue.doActualDispatch` does, the first in priority order (each consumer served moves
    /// behind the others of its priority, see [`Queue::served`]).
    pub fn choose(&self, mut takes: impl FnMut(u64) -> bool) -> Option<usize> {
        let n = self.consumers.len();
        if self.prioritized {
            (0..n).find(|&i| takes(self.consumers[i]))
        } else {
            (0..n)
                .map(|i| (self.next_consumer + i) % n)
                .find(|&i| takes(self.consumers[i]))
        }
    }

    /// The consumer at `index` (from [`Queue::choose`]) was given a message: the next one goes
    /// to the following consumer of the same priority.
    pub fn served(&mut self, index: usize, priority_of: impl Fn(u64) -> i8) {
        let n = self.consumers.len();
        if !self.prioritized {
            self.next_consumer = (index + 1) % n;
            return;
        }
        let priority = priority_of(self.consumers[index]);
        let tier_end = self.consumers[index..]
            .iter()
            .position(|&c| priority_of(c) != priority)
            .map_or(n, |p| index + p);
        self.consumers[index..tier_end].rotate_left(1);
    }
}

/// The message property naming a message's group (JMS `JMSXGroupID`, a STOMP header).
pub(super) const GROUP_ID: &str = "JMSXGroupID";
/// The message's place in its group; `-1` (any negative value) closes the group.
pub(super) const GROUP_SEQ: &str = "JMSXGroupSeq";
/// How many message groups a queue remembers the owner of: ActiveMQ's default group map
/// (`messageGroupMapFactoryType = "cached"`, a least-recently-used map of 1024 group ids).
pub(super) const GROUP_CACHE_SIZE: usize = 1024;

/// A message's group id and sequence (0 when absent or not a number), if it has a group.
pub(super) fn group_of(message: &Message) -> Option<(&str, i64)> {
    let id = message.headers.iter().find(|h| h.name == GROUP_ID)?;
    if id.value.is_empty() {
        return None;
    }
    let seq = message
        .headers
        .iter()
        .find(|h| h.name == GROUP_SEQ)
        .and_then(|h| h.value.trim().parse::<i64>().ok())
        .unwrap_or(0);
    Some((&id.value, seq))
}

/// Which consumer owns each message group of a queue, as ActiveMQ's default ("cached") group
/// map keeps it: keyed by the exact group id, at most [`GROUP_CACHE_SIZE`] groups, the least
/// recently used forgotten first (its next message is assigned afresh, as a new group's).
/// Two groups never share an owner slot, so closing or restarting one leaves the others alone.
#[derive(Debug, Default)]
pub(super) struct Groups {
    /// Group id → (owner, when last used).
    owners: HashMap<String, (u64, u64)>,
    /// When last used → group id: the eviction order.
    recency: BTreeMap<u64, String>,
    clock: u64,
}

impl Groups {
    pub fn new() -> Groups {
        Groups::default()
    }

    /// The consumer `group` is assigned to.
    pub fn owner(&self, group: &str) -> Option<u64> {
        self.owners.get(group).map(|&(cid, _)| cid)
    }

    /// `group`'s messages go to `cid` (also called for each message its owner receives, which
    /// keeps the group from being the least recently used).
    pub fn assign(&mut self, group: &str, cid: u64) {
        self.clock += 1;
        let now = self.clock;
        // A known group's name moves to its new place in the eviction order (no copy made for
        // each message it receives).
        let name = match self.owners.get_mut(group) {
            Some((owner, used)) => {
                let name = self.recency.remove(used);
                *owner = cid;
                *used = now;
                name.unwrap_or_else(|| group.to_string())
            }
            None => {
                if self.owners.len() >= GROUP_CACHE_SIZE {
                    if let Some((_, oldest)) = self.recency.pop_first() {
                        self.owners.remove(&oldest);
                    }
                }
                self.owners.insert(group.to_string(), (cid, now));
                group.to_string()
            }
        };
        self.recency.insert(now, name);
    }

    /// The group ended (`JMSXGroupSeq` -1): its next message is assigned afresh.
    pub fn close(&mut self, group: &str) {
        if let Some((_, used)) = self.owners.remove(group) {
            self.recency.remove(&used);
        }
    }

    /// Consumer `cid` went away: its groups move to whoever gets their next message.
    pub fn forget_consumer(&mut self, cid: u64) {
        let recency = &mut self.recency;
        self.owners.retain(|_, &mut (owner, used)| {
            if owner == cid {
                recency.remove(&used);
            }
            owner != cid
        });
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.owners.len()
    }
}

/// Where a consumer's messages come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Source {
    /// A queue, or a durable subscription's queue.
    Queue(String),
    /// A non-durable topic subscription: messages are not stored for it.
    Topic(String),
}

/// A delivered, unacknowledged message.
#[derive(Debug, Clone)]
pub(super) struct InFlight {
    /// The queue it came from; `None` for a non-durable topic subscription.
    pub queue: Option<String>,
    pub entry: Entry,
}

#[derive(Debug)]
pub(super) struct Consumer {
    pub session: u64,
    pub subscription: String,
    pub destination: Destination,
    pub source: Source,
    /// Unacknowledged deliveries allowed beyond those the client reported consumed; 0 means
    /// the consumer only receives what it pulls.
    pub prefetch: u32,
    /// Outstanding pull requests: each lets one delivery past a full window.
    pub pulls: u32,
    /// The client reported every delivery up to this tag consumed (OpenWire's delivered ack):
    /// they stay unacknowledged but no longer fill the window.
    pub delivered_upto: u64,
    /// How many of `in_flight` are at or below `delivered_upto`.
    pub delivered: usize,
    /// Body bytes of `in_flight` held in memory, and the part of them at or below
    /// `delivered_upto`: the rest bounds a non-durable topic subscriber's window in bytes (see
    /// [`Consumer::topic_window`]).
    pub in_flight_bytes: u64,
    pub delivered_bytes: u64,
    /// Only messages this selector accepts are delivered (JMS selector).
    pub selector: Option<Arc<Selector>>,
    /// Delivered and not acknowledged, by tag (tags grow, so this is delivery order).
    pub in_flight: BTreeMap<u64, InFlight>,
    /// Topic messages beyond the prefetch window, oldest first (non-durable topics only), and
    /// their body bytes.
    pub pending: std::collections::VecDeque<Entry>,
    pub pending_bytes: u64,
    pub deliveries: mpsc::UnboundedSender<Delivery>,
    /// Topic messages discarded because this subscriber fell too far behind.
    pub discarded: u64,
    /// Asked to be its queue's exclusive consumer (queues only).
    pub exclusive: bool,
    /// Its consumer priority (queues only; see `SubscribeRequest::priority`).
    pub priority: i8,
    /// Messages its own session sent are not for it (JMS noLocal). Never set on a durable
    /// subscription's consumer: its queue is not fed them (see `Core::route`).
    pub no_local: bool,
    /// Its session's origin (its client connection, see `Entry::origin`), for noLocal.
    pub origin: u64,
    /// The consumers of its subscription when that is on a composite destination (itself
    /// among them; empty otherwise): their prefetch window is one, shared (see
    /// [`has_credit`]).
    pub members: Arc<[u64]>,
}

/// Whether consumer `cid` may be handed one more message: it has an outstanding pull, or room
/// in its prefetch window, which a composite destination's consumers share, as ActiveMQ's one
/// subscription on several destinations has one window.
pub(super) fn has_credit(consumers: &HashMap<u64, Consumer>, cid: u64) -> bool {
    let Some(c) = consumers.get(&cid) else {
        return false;
    };
    if c.members.is_empty() {
        return c.has_credit();
    }
    c.pulls > 0
        || c.members
            .iter()
            .filter_map(|m| consumers.get(m))
            .map(Consumer::window_used)
            .sum::<usize>()
            < c.prefetch as usize
}

impl Consumer {
    /// Whether this consumer takes `entry`: its selector accepts the message, and it is not
    /// its own session's with noLocal.
    pub fn accepts(&self, entry: &Entry) -> bool {
        !(self.no_local && entry.origin == self.origin)
            && self
                .selector
                .as_ref()
                .is_none_or(|s| s.matches_with_redeliveries(&entry.message, entry.redeliveries))
    }

    /// Whether it may pass over messages (a selector, noLocal): its queue's dispatch must
    /// then be able to leave a message for others.
    pub fn is_selective(&self) -> bool {
        self.selector.is_some() || self.no_local
    }

    /// Deliveries filling the prefetch window.
    pub fn window_used(&self) -> usize {
        self.in_flight.len() - self.delivered
    }

    pub fn has_credit(&self) -> bool {
        self.pulls > 0 || self.window_used() < self.prefetch as usize
    }

    /// Hands it delivery `tag`, unacknowledged.
    pub fn hold(&mut self, tag: u64, f: InFlight) {
        let bytes = f.entry.held_bytes();
        self.in_flight_bytes += bytes;
        if tag <= self.delivered_upto {
            self.delivered += 1;
            self.delivered_bytes += bytes;
        }
        self.in_flight.insert(tag, f);
    }

    /// Bookkeeping after deliveries left `in_flight` (acknowledged or returned).
    pub fn forget<'a>(&mut self, released: impl IntoIterator<Item = (u64, &'a InFlight)>) {
        let upto = self.delivered_upto;
        for (tag, f) in released {
            let bytes = f.entry.held_bytes();
            self.in_flight_bytes = self.in_flight_bytes.saturating_sub(bytes);
            if tag <= upto {
                self.delivered = self.delivered.saturating_sub(1);
                self.delivered_bytes = self.delivered_bytes.saturating_sub(bytes);
            }
        }
    }

    /// Marks every delivery up to `tag` consumed by the client.
    pub fn mark_delivered(&mut self, tag: u64) {
        if tag <= self.delivered_upto {
            return;
        }
        for f in self
            .in_flight
            .range(self.delivered_upto + 1..=tag)
            .map(|(_, f)| f)
        {
            self.delivered += 1;
            self.delivered_bytes += f.entry.held_bytes();
        }
        self.delivered_upto = tag;
    }

    /// Whether a non-durable topic subscriber's window has room in bytes: the bodies it was
    /// handed and has not reported consumed stay under `byte_limit` (the broker's
    /// `memory_limit`), whatever its prefetch, so one that stops reading holds that much at most.
    pub fn topic_window(&self, byte_limit: u64) -> bool {
        self.window_bytes() < byte_limit
    }

    /// Body bytes of its deliveries not reported consumed.
    fn window_bytes(&self) -> u64 {
        self.in_flight_bytes.saturating_sub(self.delivered_bytes)
    }

    /// Buffers topic message `entry` for this subscriber past its window. Past `limit` pending
    /// messages, or once what it holds (window and buffer) exceeds `byte_limit`, its oldest
    /// pending messages are discarded, keeping at least the newest one within the byte bound.
    /// Returns how many were discarded.
    pub fn push_pending(&mut self, entry: Entry, limit: usize, byte_limit: u64) -> u64 {
        self.pending_bytes += entry.held_bytes();
        self.pending.push_back(entry);
        let window = self.window_bytes();
        let mut discarded = 0;
        while self.pending.len() > limit
            || (self.pending.len() > 1 && window + self.pending_bytes > byte_limit)
        {
            let Some(oldest) = self.pending.pop_front() else {
                break;
            };
            self.pending_bytes -= oldest.held_bytes();
            discarded += 1;
        }
        self.discarded += discarded;
        discarded
    }

    /// The oldest buffered topic message.
    pub fn pop_pending(&mut self) -> Option<Entry> {
        let entry = self.pending.pop_front()?;
        self.pending_bytes -= entry.held_bytes();
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_forget_the_least_recently_used_past_the_cache_size() {
        let mut groups = Groups::new();
        for i in 0..GROUP_CACHE_SIZE {
            groups.assign(&format!("g{i}"), 1);
        }
        // g0 is used again (a message to its owner), so g1 is now the least recently used.
        groups.assign("g0", 1);
        groups.assign("new", 2);
        assert_eq!(groups.len(), GROUP_CACHE_SIZE);
        assert_eq!(groups.owner("g0"), Some(1));
        assert_eq!(groups.owner("g1"), None);
        assert_eq!(groups.owner("g2"), Some(1));
        assert_eq!(groups.owner("new"), Some(2));
        groups.forget_consumer(1);
        assert_eq!(groups.len(), 1);
        groups.close("new");
        assert_eq!(groups.len(), 0);
        assert!(groups.recency.is_empty());
    }
}
