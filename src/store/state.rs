//! The live state the journal's records add up to, and the segment garbage-collection decisions
//! that follow from it. Pure: no I/O, no threads; the store feeds it records and carries out
//! what it returns (index operations, segment releases, records to append).
//!
//! It must never let a segment go if deleting it could change what a rebuild from the remaining
//! segments yields. The rules:
//! 1. A segment is released only when it is not the current segment and nothing live was added
//!    in it (no live message entry, no live durable subscription).
//! 2. A segment holding the removal of something added in an older, still retained segment
//!    *depends* on it and is released only after that older segment (otherwise a rebuild would
//!    replay the add without the remove and resurrect it). A subscription replaced by a newer
//!    `SubscriptionAdd` counts as removed by the newer one.
//! 3. Releases come out oldest-first, so a segment is always deleted after those it depends on.
//!
//! Rule 2 alone would let one long-lived item pin every later segment (each segment removes
//! messages added in the one before it). So once more than [`STALE_LIMIT`] completed segments
//! are *stale* (nothing live but subscriptions, yet not releasable), the oldest one is
//! forwarded: a record appended to the current segment repeats its removals that still matter
//! and re-adds its live subscriptions, after which it is released (like KahaDB's ack
//! compaction). A forward larger than the store's limit is not written; that segment stays
//! until what it depends on is gone.
//!
//! The producer audit must survive releases too: each remembered producer is *held* by the
//! record a rebuild would learn its entry from (the add that raised its sequence, at first). A
//! segment holding a producer is not released; a master appends a [`ProducerSequences`]
//! record that carries the entries of the segments releasable but for that into the current
//! segment ([`LiveState::plan_carry`]), which then holds them, and a slave waits for that
//! record. A segment is carried only once its producers take at most half of it, so a carry
//! frees at least twice what it writes (segments kept for their producers then hold less than
//! twice the audit). Only the entries those segments hold are carried, so a record never holds more
//! than the audit's bound (65,536 producers), and a producer silent long enough to be carried
//! again and again is carried once per segment it outlives, until the audit forgets it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use tracing::warn;

use super::index::{self, IndexOp, IndexSnapshot};
use super::producers::ProducerAudit;
use super::record::{
    entry, Entry, MessageKey, MessageRemove, Position, ProducerSequence, ProducerSequences, Record,
    SubscriptionAdd, SubscriptionRemove,
};

/// Stale segments tolerated before the oldest one is forwarded.
pub(crate) const STALE_LIMIT: usize = 2;
/// Entries a record can hold (a message key keeps the entry index in 16 bits).
const MAX_ENTRIES: usize = 1 << 16;

/// A live durable subscription and the position of the record that added it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LiveSubscription {
    pub position: Position,
    pub add: SubscriptionAdd,
}

/// A removal held by one segment of something added in an older one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Removal {
    Message {
        queue: String,
        key: u64,
    },
    Subscription {
        client_id: String,
        subscription_name: String,
    },
}

#[derive(Debug, Default)]
struct SegmentUsage {
    /// End of the segment; `None` for the current one.
    end: Option<u64>,
    /// Live things added in this segment: message entries (per queue) and subscriptions.
    live: u64,
    /// Of which live subscriptions.
    subscriptions: u64,
    /// Older retained segments this one holds removals for.
    depends_on: BTreeSet<u64>,
    /// Newer segments that depend on this one.
    pinned_by: BTreeSet<u64>,
    /// The removals behind `depends_on` (possibly more: filtered when forwarded).
    removals: Vec<Removal>,
    /// Its forward would be too large: left alone until a dependency goes away.
    stuck: bool,
    /// About how many bytes carrying the producers its records hold takes ([`carry_len`]).
    held_bytes: u64,
}

impl SegmentUsage {
    fn stale(&self) -> bool {
        self.end.is_some()
            && !self.stuck
            && self.live == self.subscriptions
            && (self.subscriptions > 0 || !self.depends_on.is_empty())
    }
}

/// About what carrying `producer`'s audit entry forward takes in a record (its id, sequence
/// and stamp, with their tags).
fn carry_len(producer: &str) -> u64 {
    producer.len() as u64 + 16
}

/// A record that carries a stale segment's obligations into the current segment.
#[derive(Debug)]
pub(crate) struct Forward {
    /// The stale segment.
    pub from: Position,
    /// Removals still needed, then re-adds of its live subscriptions. May have no entries: the
    /// segment then has nothing to carry and is released without a record.
    pub record: Record,
    removals: Vec<Removal>,
    /// Segments the forwarded removals are for.
    targets: BTreeSet<u64>,
    /// Subscriptions live again (added anew after the stale segment superseded or removed an
    /// older add): the segment holding the live add takes the obligation over (`None`: the
    /// forward's own segment, where the add moves).
    handed_over: Vec<(Option<u64>, Removal)>,
}

/// What is live, plus per-segment usage for garbage collection.
#[derive(Debug, Default)]
pub(crate) struct LiveState {
    queues: HashMap<String, BTreeSet<u64>>,
    subscriptions: HashMap<(String, String), LiveSubscription>,
    producers: ProducerAudit,
    /// (holder, producer id) for every producer the audit remembers (see the module docs).
    held: BTreeSet<(u64, String)>,
    /// Producers whose holder is no longer retained (an index written before audit entries
    /// were carried): the next carry takes them.
    unheld: BTreeSet<String>,
    /// Segments releasable but for the producers they hold.
    awaiting_carry: BTreeSet<u64>,
    epoch: u64,
    live_messages: u64,
    segments: BTreeMap<u64, SegmentUsage>,
    /// Segments whose usage dropped since the last [`LiveState::take_releasable`].
    candidates: BTreeSet<u64>,
}

impl LiveState {
    /// An empty state over the journal's retained segments `(start, end)`, oldest first; the
    /// last one is the current segment.
    pub fn new(segments: &[(Position, Position)]) -> LiveState {
        let mut state = LiveState::default();
        let last = segments.len().saturating_sub(1);
        for (i, &(start, end)) in segments.iter().enumerate() {
            let usage = SegmentUsage {
                end: (i != last).then_some(end.0),
                ..SegmentUsage::default()
            };
            state.segments.insert(start.0, usage);
        }
        state
    }

    /// The state held by an index. Things it names in segments that are no longer retained are
    /// kept but not counted: replaying the journal from the index's position must remove them
    /// (see [`LiveState::check_placed`]). Dependencies on or of segments that are gone are
    /// dropped, with the index operations that delete them. The removals behind the
    /// dependencies are not in the index: see [`LiveState::to_rescan`].
    pub fn from_snapshot(
        segments: &[(Position, Position)],
        snapshot: IndexSnapshot,
        ops: &mut Vec<IndexOp>,
    ) -> LiveState {
        let mut state = LiveState::new(segments);
        state.epoch = snapshot.epoch;
        for (queue, keys) in snapshot.messages {
            for key in &keys {
                if let Some(segment) = state.segment_of(key.position()) {
                    state.usage(segment).live += 1;
                }
            }
            state.live_messages += keys.len() as u64;
            if !keys.is_empty() {
                state
                    .queues
                    .insert(queue, keys.into_iter().map(|k| k.0).collect());
            }
        }
        for subscription in snapshot.subscriptions {
            if let Some(segment) = state.segment_of(subscription.position) {
                let usage = state.usage(segment);
                usage.live += 1;
                usage.subscriptions += 1;
            }
            let key = (
                subscription.add.client_id.clone(),
                subscription.add.subscription_name.clone(),
            );
            state.subscriptions.insert(key, subscription);
        }
        let mut producers = snapshot.producers;
        producers.sort_unstable_by(|a, b| (a.2, &a.0).cmp(&(b.2, &b.0)));
        let mut evicted = Vec::new();
        for (producer, sequence, stamp, holder) in producers {
            if state.segment_of(holder).is_none() {
                state.unheld.insert(producer.clone());
            }
            state.hold_producer(&producer, None, Some(holder.0));
            state
                .producers
                .record_held(&producer, sequence, stamp, holder.0, &mut evicted);
        }
        for (producer, holder) in evicted {
            state.hold_producer(&producer, Some(holder), None);
            ops.push(IndexOp::Delete(index::producer_key(&producer)));
        }
        for (on, by) in snapshot.dependencies {
            if on < by && state.segments.contains_key(&on.0) && state.segments.contains_key(&by.0) {
                state.add_dependency(on.0, by.0);
            } else {
                ops.push(IndexOp::Delete(index::dependency_key(on, by)));
            }
        }
        state
    }

    /// Checks that everything live was added in a retained segment; the reason if not (the
    /// index then disagrees with the journal and must be rebuilt).
    pub fn check_placed(&self) -> Result<(), String> {
        for (queue, keys) in &self.queues {
            for &key in keys {
                let key = MessageKey(key);
                if self.segment_of(key.position()).is_none() {
                    return Err(format!(
                        "message {} on {queue} was added at {}, which is not retained",
                        key.0,
                        key.position()
                    ));
                }
            }
        }
        for subscription in self.subscriptions.values() {
            if self.segment_of(subscription.position).is_none() {
                return Err(format!(
                    "durable subscription {}/{} was added at {}, which is not retained",
                    subscription.add.client_id,
                    subscription.add.subscription_name,
                    subscription.position
                ));
            }
        }
        Ok(())
    }

    /// Segments `(start, end)` with dependencies whose removals were not all seen by this
    /// state (those starting before `replayed_from`, the position replay started at; the
    /// current one included, up to the journal end `end`): the store reads them and hands
    /// their records to [`LiveState::rescan`].
    pub fn to_rescan(&self, replayed_from: Position, end: Position) -> Vec<(Position, Position)> {
        self.segments
            .iter()
            .filter(|(&start, usage)| start < replayed_from.0 && !usage.depends_on.is_empty())
            .map(|(&start, usage)| (Position(start), Position(usage.end.unwrap_or(end.0))))
            .collect()
    }

    /// Recomputes the removals held by the segment at `start` from all of its records.
    pub fn rescan(&mut self, start: Position, records: &[(Position, Record)]) {
        let mut removals = Vec::new();
        for (_, record) in records {
            for entry in &record.entries {
                match &entry.kind {
                    Some(entry::Kind::Remove(remove)) => {
                        let origin = self.segment_of(MessageKey(remove.key).position());
                        if origin.is_some_and(|origin| origin != start.0) {
                            removals.push(Removal::Message {
                                queue: remove.queue.clone(),
                                key: remove.key,
                            });
                        }
                    }
                    Some(entry::Kind::Unsubscribe(SubscriptionRemove {
                        client_id,
                        subscription_name,
                    }))
                    | Some(entry::Kind::Subscribe(SubscriptionAdd {
                        client_id,
                        subscription_name,
                        ..
                    })) => removals.push(Removal::Subscription {
                        client_id: client_id.clone(),
                        subscription_name: subscription_name.clone(),
                    }),
                    _ => {}
                }
            }
        }
        if let Some(usage) = self.segments.get_mut(&start.0) {
            usage.removals = removals;
        }
    }

    fn usage(&mut self, start: u64) -> &mut SegmentUsage {
        self.segments.get_mut(&start).expect("a retained segment")
    }

    /// The start of the retained segment holding `position`.
    fn segment_of(&self, position: Position) -> Option<u64> {
        let (&start, usage) = self.segments.range(..=position.0).next_back()?;
        match usage.end {
            Some(end) if position.0 >= end => None,
            _ => Some(start),
        }
    }

    /// The journal started a new segment at `start`; the previous one is complete.
    pub fn segment_started(&mut self, start: Position) {
        if let Some((&previous, usage)) = self.segments.iter_mut().next_back() {
            usage.end = Some(start.0);
            self.candidates.insert(previous);
        }
        self.segments.insert(start.0, SegmentUsage::default());
    }

    /// Replication skipped a released range: the empty current segment at `from` became a
    /// tombstone and the current segment now starts at `to`.
    pub fn move_current(&mut self, from: Position, to: Position) {
        self.segments.remove(&from.0);
        self.candidates.remove(&from.0);
        self.segments.insert(to.0, SegmentUsage::default());
    }

    /// Applies the record at `position` and pushes the index operations that bring an index
    /// from the state before to the state after.
    pub fn apply(&mut self, position: Position, record: &Record, ops: &mut Vec<IndexOp>) {
        let here = self.segment_of(position);
        debug_assert!(here.is_some(), "record at {position} outside the segments");
        self.raise_epoch(record.epoch, ops);
        for (entry_index, entry) in record.entries.iter().enumerate() {
            let Some(kind) = &entry.kind else { continue };
            match kind {
                entry::Kind::Add(add) => {
                    let key = MessageKey::new(position, entry_index);
                    for queue in &add.queues {
                        let keys = self.queues.entry(queue.clone()).or_default();
                        if keys.insert(key.0) {
                            self.live_messages += 1;
                            if let Some(here) = here {
                                self.usage(here).live += 1;
                            }
                            ops.push(IndexOp::Put(index::message_key(queue, key), Vec::new()));
                        }
                    }
                    if let Some(message) =
                        add.message.as_ref().filter(|m| !m.producer_id.is_empty())
                    {
                        let (producer, sequence) =
                            (&message.producer_id, message.producer_sequence);
                        self.raise_producer(producer, sequence, key.0, position, ops);
                    }
                }
                entry::Kind::Remove(remove) => {
                    let Some(keys) = self.queues.get_mut(&remove.queue) else {
                        continue;
                    };
                    if !keys.remove(&remove.key) {
                        continue;
                    }
                    if keys.is_empty() {
                        self.queues.remove(&remove.queue);
                    }
                    self.live_messages -= 1;
                    let key = MessageKey(remove.key);
                    ops.push(IndexOp::Delete(index::message_key(&remove.queue, key)));
                    let removal = Removal::Message {
                        queue: remove.queue.clone(),
                        key: remove.key,
                    };
                    self.released_thing(key.position(), here, removal, false, ops);
                }
                entry::Kind::Subscribe(add) => {
                    let key = (add.client_id.clone(), add.subscription_name.clone());
                    let live = LiveSubscription {
                        position,
                        add: add.clone(),
                    };
                    ops.push(IndexOp::Put(
                        index::subscription_key(&add.client_id, &add.subscription_name),
                        index::subscription_value(position, add),
                    ));
                    if let Some(here) = here {
                        let usage = self.usage(here);
                        usage.live += 1;
                        usage.subscriptions += 1;
                    }
                    if let Some(previous) = self.subscriptions.insert(key, live) {
                        let removal = Removal::Subscription {
                            client_id: add.client_id.clone(),
                            subscription_name: add.subscription_name.clone(),
                        };
                        self.released_thing(previous.position, here, removal, true, ops);
                    }
                }
                entry::Kind::Unsubscribe(remove) => {
                    let key = (remove.client_id.clone(), remove.subscription_name.clone());
                    if let Some(previous) = self.subscriptions.remove(&key) {
                        ops.push(IndexOp::Delete(index::subscription_key(
                            &remove.client_id,
                            &remove.subscription_name,
                        )));
                        let removal = Removal::Subscription {
                            client_id: remove.client_id.clone(),
                            subscription_name: remove.subscription_name.clone(),
                        };
                        self.released_thing(previous.position, here, removal, true, ops);
                    }
                }
                entry::Kind::EpochStart(start) => self.raise_epoch(start.epoch, ops),
                entry::Kind::Producers(carried) => {
                    for carried in &carried.producers {
                        self.carried_producer(carried, position, ops);
                    }
                }
            }
        }
    }

    fn raise_epoch(&mut self, epoch: u64, ops: &mut Vec<IndexOp>) {
        if epoch > self.epoch {
            self.epoch = epoch;
            ops.push(index::epoch_op(epoch));
        }
    }

    /// `stamp`: the message key of the add, which orders the bounded audit identically on
    /// every node that applies the same journal; `holder`: the record at hand.
    fn raise_producer(
        &mut self,
        producer: &str,
        sequence: u64,
        stamp: u64,
        holder: Position,
        ops: &mut Vec<IndexOp>,
    ) {
        let previous = self.producers.get(producer).map(|(_, _, holder)| holder);
        let mut evicted = Vec::new();
        if !self
            .producers
            .record_held(producer, sequence, stamp, holder.0, &mut evicted)
        {
            return;
        }
        self.hold_producer(producer, previous, Some(holder.0));
        ops.push(IndexOp::Put(
            index::producer_key(producer),
            index::producer_value(sequence, stamp, holder),
        ));
        for (producer, holder) in evicted {
            self.hold_producer(&producer, Some(holder), None);
            ops.push(IndexOp::Delete(index::producer_key(&producer)));
        }
    }

    /// A producer's entry carried forward by the record at `position`: that record holds it
    /// now. A rebuild learns it from there (unless a later add raised it meanwhile).
    fn carried_producer(
        &mut self,
        carried: &ProducerSequence,
        position: Position,
        ops: &mut Vec<IndexOp>,
    ) {
        let producer = &carried.producer_id;
        self.unheld.remove(producer);
        match self.producers.get(producer) {
            Some((sequence, stamp, holder)) if sequence == carried.sequence => {
                if holder != position.0 {
                    self.producers.set_holder(producer, position.0);
                    self.hold_producer(producer, Some(holder), Some(position.0));
                    ops.push(IndexOp::Put(
                        index::producer_key(producer),
                        index::producer_value(sequence, stamp, position),
                    ));
                }
            }
            Some((sequence, _, _)) if sequence > carried.sequence => {}
            _ => self.raise_producer(producer, carried.sequence, carried.stamp, position, ops),
        }
    }

    /// Moves `producer` in `held` from the record at `old` to the one at `new` (`None`: not
    /// held, or forgotten); the segment it leaves may now be released.
    fn hold_producer(&mut self, producer: &str, old: Option<u64>, new: Option<u64>) {
        if old == new {
            return;
        }
        if let Some(old) = old {
            self.held.remove(&(old, producer.to_string()));
            if let Some(segment) = self.segment_of(Position(old)) {
                let usage = self.usage(segment);
                usage.held_bytes = usage.held_bytes.saturating_sub(carry_len(producer));
                self.candidates.insert(segment);
            }
        }
        match new {
            Some(new) => {
                self.held.insert((new, producer.to_string()));
                if let Some(segment) = self.segment_of(Position(new)) {
                    self.usage(segment).held_bytes += carry_len(producer);
                }
            }
            None => {
                self.unheld.remove(producer);
            }
        }
    }

    /// Whether a record in `start..end` holds a producer.
    fn holds_producers(&self, start: u64, end: u64) -> bool {
        self.held
            .range((start, String::new())..(end, String::new()))
            .next()
            .is_some()
    }

    /// The record that carries forward the producers held by segments releasable but for them
    /// (and those no retained record holds), at most about `max_bytes` of them (at least one);
    /// `None` if there are none. The master appends it, and plans again until `None`.
    pub fn plan_carry(&mut self, max_bytes: usize) -> Option<Record> {
        if self.awaiting_carry.is_empty() && self.unheld.is_empty() {
            return None;
        }
        let awaiting = std::mem::take(&mut self.awaiting_carry);
        for start in awaiting {
            let Some(usage) = self.segments.get(&start) else {
                continue;
            };
            if let (Some(end), 0, true) = (usage.end, usage.live, usage.depends_on.is_empty()) {
                if self.holds_producers(start, end) {
                    self.awaiting_carry.insert(start);
                }
            }
        }
        let unheld = self.unheld.iter().filter_map(|producer| {
            let (_, _, holder) = self.producers.get(producer)?;
            self.segment_of(Position(holder))
                .is_none()
                .then_some(producer.as_str())
        });
        let held = self.awaiting_carry.iter().flat_map(|&start| {
            let end = self.segments[&start].end.unwrap_or(start);
            self.held
                .range((start, String::new())..(end, String::new()))
                .map(|(_, producer)| producer.as_str())
        });
        let mut producers = Vec::new();
        let mut len = 0;
        for producer in unheld.chain(held) {
            let Some((sequence, stamp, _)) = self.producers.get(producer) else {
                continue;
            };
            let carried = ProducerSequence {
                producer_id: producer.to_string(),
                sequence,
                stamp,
            };
            len += prost::Message::encoded_len(&carried) + 4;
            producers.push(carried);
            if len >= max_bytes {
                break;
            }
        }
        if producers.is_empty() {
            self.unheld.clear();
            return None;
        }
        Some(Record {
            epoch: self.epoch,
            entries: vec![Entry {
                kind: Some(entry::Kind::Producers(ProducerSequences { producers })),
            }],
        })
    }

    /// Something added at `added` stopped being live because of the record in segment `here`.
    fn released_thing(
        &mut self,
        added: Position,
        here: Option<u64>,
        removal: Removal,
        subscription: bool,
        ops: &mut Vec<IndexOp>,
    ) {
        let Some(origin) = self.segment_of(added) else {
            return;
        };
        let usage = self.usage(origin);
        debug_assert!(usage.live > 0, "segment {origin} live count underflow");
        usage.live = usage.live.saturating_sub(1);
        if subscription {
            usage.subscriptions = usage.subscriptions.saturating_sub(1);
        }
        self.candidates.insert(origin);
        if let Some(here) = here.filter(|&here| here != origin) {
            self.depend(origin, here, ops);
            self.usage(here).removals.push(removal);
        }
    }

    /// Records (in the index too) that segment `by` holds removals of things added in `on`.
    fn depend(&mut self, on: u64, by: u64, ops: &mut Vec<IndexOp>) {
        if self.add_dependency(on, by) {
            ops.push(IndexOp::Put(
                index::dependency_key(Position(on), Position(by)),
                Vec::new(),
            ));
        }
    }

    /// [`LiveState::depend`], for `on` older than `by` and still retained.
    fn depend_if_retained(&mut self, on: u64, by: u64, ops: &mut Vec<IndexOp>) {
        if on < by && self.segments.contains_key(&on) && self.segments.contains_key(&by) {
            self.depend(on, by, ops);
        }
    }

    /// Records that segment `by` holds removals of things added in `on`; true if new.
    fn add_dependency(&mut self, on: u64, by: u64) -> bool {
        let new = self.usage(by).depends_on.insert(on);
        self.usage(on).pinned_by.insert(by);
        new
    }

    /// Forgets that `by` depends on `on`.
    fn drop_dependency(&mut self, on: u64, by: u64, ops: &mut Vec<IndexOp>) {
        if let Some(usage) = self.segments.get_mut(&on) {
            usage.pinned_by.remove(&by);
        }
        if let Some(usage) = self.segments.get_mut(&by) {
            usage.depends_on.remove(&on);
            usage.stuck = false;
            self.candidates.insert(by);
        }
        ops.push(IndexOp::Delete(index::dependency_key(
            Position(on),
            Position(by),
        )));
    }

    /// Considers every segment for release (after open).
    pub fn consider_all(&mut self) {
        self.candidates.extend(self.segments.keys().copied());
    }

    /// Segments to release now, oldest first, removed from the state; pushes the index
    /// operations that forget their dependencies.
    pub fn take_releasable(&mut self, ops: &mut Vec<IndexOp>) -> Vec<Position> {
        let mut released = Vec::new();
        while let Some(start) = self.candidates.pop_first() {
            let Some(usage) = self.segments.get(&start) else {
                continue;
            };
            let Some(end) = usage.end else { continue };
            if usage.live != 0 || !usage.depends_on.is_empty() {
                continue;
            }
            if self.holds_producers(start, end) {
                // Carried only once that frees at least twice what it writes: a segment
                // mostly of producers (of carries, once the audit outgrows a segment) would
                // otherwise be carried whole, again and again, at every append.
                if usage.held_bytes * 2 <= end - start {
                    self.awaiting_carry.insert(start);
                }
                continue;
            }
            self.awaiting_carry.remove(&start);
            let pinned_by = std::mem::take(&mut self.usage(start).pinned_by);
            for by in pinned_by {
                self.drop_dependency(start, by, ops);
            }
            self.segments.remove(&start);
            released.push(Position(start));
        }
        released
    }

    /// When more than [`STALE_LIMIT`] segments are stale, the forward of the oldest one (see
    /// the module docs), if its record stays within `max_bytes`.
    pub fn plan_forward(&mut self, max_bytes: usize) -> Option<Forward> {
        let stale: Vec<u64> = self
            .segments
            .iter()
            .filter(|(_, usage)| usage.stale())
            .map(|(&start, _)| start)
            .take(STALE_LIMIT + 1)
            .collect();
        if stale.len() <= STALE_LIMIT {
            return None;
        }
        let from = stale[0];
        let usage = &self.segments[&from];
        let mut entries = Vec::new();
        let mut removals = Vec::new();
        let mut targets = BTreeSet::new();
        let mut handed_over = Vec::new();
        let mut seen = HashSet::new();
        for removal in &usage.removals {
            if !seen.insert(removal) {
                continue;
            }
            match removal {
                Removal::Message { queue, key } => {
                    let origin = self.segment_of(MessageKey(*key).position());
                    let Some(origin) = origin.filter(|&origin| origin != from) else {
                        continue;
                    };
                    if self
                        .queues
                        .get(queue)
                        .is_some_and(|keys| keys.contains(key))
                    {
                        continue; // live again? never remove something live
                    }
                    targets.insert(origin);
                    entries.push(Entry {
                        kind: Some(entry::Kind::Remove(MessageRemove {
                            queue: queue.clone(),
                            key: *key,
                        })),
                    });
                }
                Removal::Subscription {
                    client_id,
                    subscription_name,
                } => {
                    let key = (client_id.clone(), subscription_name.clone());
                    if let Some(live) = self.subscriptions.get(&key) {
                        // Its live add supersedes the older adds in any rebuild, but whatever
                        // later removes the live add must also outlive them: the segment
                        // holding the live add takes the obligation over.
                        let holder = self.segment_of(live.position).filter(|&h| h != from);
                        handed_over.push((holder, removal.clone()));
                        continue;
                    }
                    // Which older segment held the add is not known: keep them all pinned.
                    targets.extend(usage.depends_on.iter().copied());
                    entries.push(Entry {
                        kind: Some(entry::Kind::Unsubscribe(SubscriptionRemove {
                            client_id: client_id.clone(),
                            subscription_name: subscription_name.clone(),
                        })),
                    });
                }
            }
            removals.push(removal.clone());
        }
        let mut moved: Vec<&LiveSubscription> = self
            .subscriptions
            .values()
            .filter(|s| self.segment_of(s.position) == Some(from))
            .collect();
        moved.sort_unstable_by_key(|s| s.position);
        for subscription in moved {
            entries.push(Entry {
                kind: Some(entry::Kind::Subscribe(subscription.add.clone())),
            });
        }
        let record = Record {
            epoch: self.epoch,
            entries,
        };
        let len = prost::Message::encoded_len(&record);
        if record.entries.len() > MAX_ENTRIES || len > max_bytes {
            warn!(
                "journal segment at {from} holds {} removals and subscriptions still needed                  ({len} bytes to carry forward, more than {max_bytes}): it stays until the                  older segments it depends on are released",
                record.entries.len()
            );
            self.usage(from).stuck = true;
            return None;
        }
        Some(Forward {
            from: Position(from),
            record,
            removals,
            targets,
            handed_over,
        })
    }

    /// The forward's record was appended (and applied) at `at` (`None` if it had no entries):
    /// its segment takes over the stale segment's dependencies, and the stale segment becomes
    /// releasable.
    pub fn forwarded(&mut self, forward: Forward, at: Option<Position>, ops: &mut Vec<IndexOp>) {
        let from = forward.from.0;
        let here = at.and_then(|at| self.segment_of(at));
        if let Some(here) = here {
            for &target in &forward.targets {
                self.depend_if_retained(target, here, ops);
            }
            self.usage(here).removals.extend(forward.removals);
        }
        let Some(usage) = self.segments.get_mut(&from) else {
            return;
        };
        let previous_targets: Vec<u64> = usage.depends_on.iter().copied().collect();
        for (holder, removal) in forward.handed_over {
            let Some(holder) = holder.or(here) else {
                continue;
            };
            for &target in &previous_targets {
                self.depend_if_retained(target, holder, ops);
            }
            self.usage(holder).removals.push(removal);
        }
        let usage = self.usage(from);
        usage.removals.clear();
        let depends_on = std::mem::take(&mut usage.depends_on);
        for on in depends_on {
            self.drop_dependency(on, from, ops);
        }
        self.candidates.insert(from);
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn live_messages(&self) -> u64 {
        self.live_messages
    }

    pub fn live_subscriptions(&self) -> u64 {
        self.subscriptions.len() as u64
    }

    /// Live message keys per queue, queues by name, keys in order.
    pub fn queues(&self) -> Vec<(&str, Vec<MessageKey>)> {
        let mut queues: Vec<(&str, Vec<MessageKey>)> = self
            .queues
            .iter()
            .map(|(name, keys)| (name.as_str(), keys.iter().map(|&k| MessageKey(k)).collect()))
            .collect();
        queues.sort_unstable_by(|a, b| a.0.cmp(b.0));
        queues
    }

    /// Live durable subscriptions by (client id, subscription name).
    pub fn subscriptions(&self) -> Vec<SubscriptionAdd> {
        let mut subscriptions: Vec<SubscriptionAdd> =
            self.subscriptions.values().map(|s| s.add.clone()).collect();
        subscriptions.sort_unstable_by(|a, b| {
            (&a.client_id, &a.subscription_name).cmp(&(&b.client_id, &b.subscription_name))
        });
        subscriptions
    }

    /// Highest stored sequence per remembered producer, least recently stored first.
    pub fn producers(&self) -> Vec<(String, u64)> {
        self.producers
            .entries()
            .into_iter()
            .map(|(producer, sequence, _)| (producer, sequence))
            .collect()
    }

    /// The retained segments as the state sees them (tests and consistency checks).
    #[cfg(test)]
    pub fn segment_starts(&self) -> Vec<u64> {
        self.segments.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::{
        Entry, Message, MessageAdd, MessageRemove, SubscriptionAdd, SubscriptionRemove,
    };

    fn add(queues: &[&str]) -> Record {
        Record {
            epoch: 1,
            entries: vec![Entry {
                kind: Some(entry::Kind::Add(MessageAdd {
                    queues: queues.iter().map(|q| q.to_string()).collect(),
                    message: Some(Message::default()),
                })),
            }],
        }
    }

    fn remove(queue: &str, key: MessageKey) -> Record {
        Record {
            epoch: 1,
            entries: vec![Entry {
                kind: Some(entry::Kind::Remove(MessageRemove {
                    queue: queue.into(),
                    key: key.0,
                })),
            }],
        }
    }

    fn subscribe(name: &str) -> Record {
        Record {
            epoch: 1,
            entries: vec![Entry {
                kind: Some(entry::Kind::Subscribe(SubscriptionAdd {
                    client_id: "c".into(),
                    subscription_name: name.into(),
                    topic: "topic://t".into(),
                    selector: String::new(),
                    queue: format!("sub://{name}"),
                    no_local: false,
                })),
            }],
        }
    }

    fn unsubscribe(name: &str) -> Record {
        Record {
            epoch: 1,
            entries: vec![Entry {
                kind: Some(entry::Kind::Unsubscribe(SubscriptionRemove {
                    client_id: "c".into(),
                    subscription_name: name.into(),
                })),
            }],
        }
    }

    /// Drives a state with segments of 10 positions each: record at position p lies in the
    /// segment starting at p - p % 10.
    struct Driver {
        state: LiveState,
        current: u64,
        released: Vec<u64>,
        ops: Vec<IndexOp>,
    }

    impl Driver {
        fn new() -> Driver {
            Driver {
                state: LiveState::new(&[(Position(0), Position(0))]),
                current: 0,
                released: Vec::new(),
                ops: Vec::new(),
            }
        }

        fn at(&mut self, position: u64, record: Record) {
            let segment = position - position % 10;
            if segment != self.current {
                self.state.segment_started(Position(segment));
                self.current = segment;
            }
            self.state.apply(Position(position), &record, &mut self.ops);
            let released = self.state.take_releasable(&mut self.ops);
            self.released.extend(released.iter().map(|p| p.0));
        }
    }

    #[test]
    fn consumed_segment_is_released_once_not_current() {
        let mut d = Driver::new();
        d.at(1, add(&["q"]));
        d.at(2, remove("q", MessageKey::new(Position(1), 0)));
        assert!(
            d.released.is_empty(),
            "the current segment is never released"
        );
        d.at(10, add(&["q"]));
        assert_eq!(d.released, vec![0]);
    }

    #[test]
    fn live_message_pins_its_segment() {
        let mut d = Driver::new();
        d.at(1, add(&["q", "r"]));
        d.at(2, remove("q", MessageKey::new(Position(1), 0)));
        d.at(10, add(&["q"]));
        assert!(d.released.is_empty(), "r still holds the message");
        d.at(11, remove("r", MessageKey::new(Position(1), 0)));
        assert_eq!(d.released, vec![0]);
    }

    #[test]
    fn remove_of_an_older_add_waits_for_that_segment() {
        let mut d = Driver::new();
        d.at(1, add(&["q"])); // segment 0: a, pinned
        d.at(2, add(&["q"])); // segment 0: b
        d.at(10, remove("q", MessageKey::new(Position(2), 0))); // segment 10 depends on 0
        d.at(20, add(&["q"])); // segment 10 is complete and holds nothing live
        assert!(
            d.released.is_empty(),
            "segment 10 removes b, added in retained segment 0"
        );
        d.at(21, remove("q", MessageKey::new(Position(1), 0)));
        assert_eq!(d.released, vec![0, 10], "older first");
    }

    #[test]
    fn durable_subscription_pins_its_segment_and_replacement_releases_it() {
        let mut d = Driver::new();
        d.at(1, subscribe("s"));
        d.at(10, add(&["q"]));
        assert!(d.released.is_empty());
        d.at(11, subscribe("s")); // replaces the add of segment 0
        d.at(20, add(&["q"]));
        // Segment 0 is free; segment 10 holds the live subscription.
        assert_eq!(d.released, vec![0]);
        d.at(21, unsubscribe("s"));
        d.at(22, remove("q", MessageKey::new(Position(10), 0)));
        d.at(30, add(&["q"]));
        assert_eq!(d.released, vec![0, 10]);
        assert_eq!(d.state.live_subscriptions(), 0);
    }

    #[test]
    fn stale_segments_are_forwarded_and_the_chain_unwinds() {
        let mut d = Driver::new();
        d.at(1, subscribe("s"));
        d.at(2, add(&["q"]));
        d.at(10, remove("q", MessageKey::new(Position(2), 0))); // depends on 0
        d.at(11, add(&["q"]));
        d.at(20, remove("q", MessageKey::new(Position(11), 0))); // depends on 10
        d.at(21, add(&["q"]));
        assert!(
            d.state.plan_forward(1 << 20).is_none(),
            "two stale segments are tolerated"
        );
        d.at(30, remove("q", MessageKey::new(Position(21), 0))); // depends on 20
        assert!(
            d.released.is_empty(),
            "0 is pinned by the subscription, 10 and 20 by it"
        );
        let forward = d.state.plan_forward(1 << 20).expect("three stale segments");
        assert_eq!(forward.from, Position(0));
        assert_eq!(forward.record.entries, subscribe("s").entries);
        d.state.apply(Position(31), &forward.record, &mut d.ops);
        d.state.forwarded(forward, Some(Position(31)), &mut d.ops);
        let released = d.state.take_releasable(&mut d.ops);
        assert_eq!(released, vec![Position(0), Position(10), Position(20)]);
        assert_eq!(d.state.segment_starts(), vec![30]);
        assert_eq!(d.state.live_subscriptions(), 1);
    }

    #[test]
    fn forwarded_removals_keep_the_target_pinned_elsewhere() {
        let mut d = Driver::new();
        d.at(1, add(&["q"])); // stays live: pins segment 0
        d.at(2, add(&["q"]));
        d.at(10, remove("q", MessageKey::new(Position(2), 0))); // 10 depends on 0
        d.at(11, add(&["q"]));
        d.at(20, remove("q", MessageKey::new(Position(11), 0))); // 20 depends on 10
        d.at(21, add(&["q"]));
        d.at(30, remove("q", MessageKey::new(Position(21), 0))); // 30 depends on 20
        d.at(31, add(&["q"]));
        d.at(40, remove("q", MessageKey::new(Position(31), 0))); // 40 depends on 30
                                                                 // Stale: 10, 20, 30 (0 holds a live message, so it is not stale).
        let forward = d.state.plan_forward(1 << 20).expect("three stale segments");
        assert_eq!(forward.from, Position(10));
        assert_eq!(
            forward.record.entries,
            remove("q", MessageKey::new(Position(2), 0)).entries
        );
        d.state.apply(Position(41), &forward.record, &mut d.ops);
        d.state.forwarded(forward, Some(Position(41)), &mut d.ops);
        let released = d.state.take_releasable(&mut d.ops);
        assert_eq!(released, vec![Position(10), Position(20), Position(30)]);
        assert_eq!(d.state.segment_starts(), vec![0, 40]);
        // 40 now carries the removal for 0: it goes only after 0.
        d.at(50, add(&["q"]));
        assert_eq!(d.state.segment_starts(), vec![0, 40, 50]);
        d.at(51, remove("q", MessageKey::new(Position(1), 0)));
        assert_eq!(d.state.segment_starts(), vec![50]);
    }

    #[test]
    fn a_moved_subscription_keeps_older_dead_adds_covered() {
        let mut d = Driver::new();
        d.at(1, subscribe("s")); // an old add of s ...
        d.at(2, add(&["pin"])); // ... in a segment that stays
        d.at(10, subscribe("s")); // supersedes it: 10 depends on 0
        d.at(11, add(&["q"]));
        d.at(20, remove("q", MessageKey::new(Position(11), 0))); // 20 depends on 10
        d.at(21, add(&["q"]));
        d.at(30, remove("q", MessageKey::new(Position(21), 0))); // 30 depends on 20
        d.at(31, add(&["q"]));
        d.at(40, remove("q", MessageKey::new(Position(31), 0))); // 40 depends on 30
        let forward = d
            .state
            .plan_forward(1 << 20)
            .expect("10, 20 and 30 are stale");
        assert_eq!(forward.from, Position(10));
        assert_eq!(forward.record.entries, subscribe("s").entries, "s moves");
        d.state.apply(Position(41), &forward.record, &mut d.ops);
        d.state.forwarded(forward, Some(Position(41)), &mut d.ops);
        let released = d.state.take_releasable(&mut d.ops);
        assert_eq!(released, vec![Position(10), Position(20), Position(30)]);
        // The unsubscribe removes the add at 41; segment 40 must still outlive segment 0,
        // whose dead add of s a rebuild would otherwise bring back.
        d.at(50, unsubscribe("s"));
        d.at(60, add(&["q"]));
        assert_eq!(d.state.segment_starts(), vec![0, 40, 50, 60]);
        d.at(61, remove("pin", MessageKey::new(Position(2), 0)));
        assert_eq!(d.state.segment_starts(), vec![60]);
    }

    #[test]
    fn a_forward_too_large_is_not_written() {
        let mut d = Driver::new();
        d.at(1, add(&["q"]));
        d.at(2, add(&["q"]));
        for n in 1..6 {
            d.at(
                n * 10,
                remove("q", MessageKey::new(Position((n - 1) * 10 + 2), 0)),
            );
            d.at(n * 10 + 2, add(&["q"]));
        }
        d.at(60, add(&["q"])); // stale: 10, 20, 30, 40
        assert!(d.state.plan_forward(4).is_none());
        let forward = d
            .state
            .plan_forward(1 << 20)
            .expect("the next stale segment");
        assert_eq!(forward.from, Position(20), "10 is stuck");
    }

    #[test]
    fn after_reopen_the_current_segment_is_rescanned_too() {
        let mut d = Driver::new();
        d.at(1, add(&["q"])); // pins segment 0
        d.at(2, add(&["q"]));
        d.at(10, remove("q", MessageKey::new(Position(2), 0))); // current segment 10 depends on 0
        let segments = [(Position(0), Position(10)), (Position(10), Position(11))];
        let snapshot = IndexSnapshot {
            messages: vec![("q".into(), vec![MessageKey::new(Position(1), 0)])],
            dependencies: vec![(Position(0), Position(10))],
            ..IndexSnapshot::default()
        };
        let reopened = LiveState::from_snapshot(&segments, snapshot, &mut Vec::new());
        assert_eq!(
            reopened.to_rescan(Position(11), Position(11)),
            vec![(Position(10), Position(11))]
        );
    }

    #[test]
    fn duplicate_and_unknown_removes_are_no_ops() {
        let mut d = Driver::new();
        d.at(1, add(&["q"]));
        d.at(2, add(&["q"]));
        d.at(10, remove("q", MessageKey::new(Position(1), 0)));
        d.at(11, remove("q", MessageKey::new(Position(1), 0)));
        d.at(12, remove("nope", MessageKey::new(Position(1), 0)));
        assert_eq!(d.state.live_messages(), 1);
        d.at(20, add(&["q"]));
        assert!(
            d.released.is_empty(),
            "segment 0 still holds the message at 2"
        );
    }

    #[test]
    fn snapshot_orphans_must_be_removed_by_replay() {
        let orphan = MessageKey::new(Position(5), 0);
        let snapshot = IndexSnapshot {
            messages: vec![("q".into(), vec![orphan])],
            dependencies: vec![(Position(0), Position(10))],
            ..IndexSnapshot::default()
        };
        let segments = [(Position(10), Position(20)), (Position(20), Position(25))];
        let mut ops = Vec::new();
        let mut state = LiveState::from_snapshot(&segments, snapshot, &mut ops);
        assert_eq!(
            ops,
            vec![IndexOp::Delete(index::dependency_key(
                Position(0),
                Position(10)
            ))],
            "a dependency on a released segment is forgotten"
        );
        assert!(state.check_placed().is_err());
        state.apply(Position(21), &remove("q", orphan), &mut ops);
        assert_eq!(state.check_placed(), Ok(()));
        assert_eq!(state.live_messages(), 0);
    }
}
