//! Dispatch: handing ready messages to consumers with credit, round-robin by priority, through
//! exclusive consumers, message groups and selectors, in bounded walks the sweep continues.
//!
//! It must never give a consumer more than its prefetch window, nor let one message nobody can
//! take hold up the ones behind it.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{
    due_after, now_ms, priority_of, Core, Publish, SCAN_CHECKS, SCAN_LIMIT, SWEEP_SCAN_CHECKS,
};
use crate::broker::queue::{has_credit, Consumer, Entry, InFlight, Source};
use crate::broker::Delivery;
use crate::store::{Header, Message};

/// How far each sweep walks on from where a stopped dispatch (or the last sweep) left off.
const SWEEP_SCAN_LIMIT: usize = 50_000;

impl Core {
    /// Puts `entry` at the tail of `queue`, ready for dispatch.
    pub(super) fn push_ready(
        &mut self,
        queue: String,
        entry: Entry,
        touched: &mut BTreeSet<String>,
    ) {
        if self.held_for_removed(&queue, &entry) {
            self.discard_for_removed(&queue, &entry);
            return;
        }
        let entry = self.sequenced(entry);
        // Looked up before a copy of the name is made: it exists but for a queue's first send.
        match self.queues.get_mut(&queue) {
            Some(existing) => existing.push(entry),
            None => self.queues.entry(queue.clone()).or_default().push(entry),
        }
        touched.insert(queue);
    }

    /// Removes from the store a message of a subscription that was removed.
    fn discard_for_removed(&mut self, queue: &str, entry: &Entry) {
        if let Err(e) = self.discard_stored(queue, entry) {
            tracing::warn!(queue, error = %e, "could not remove a message of a removed subscription");
        }
    }

    /// `entry` numbered in arrival order (its place in its queue), its body counted.
    fn sequenced(&mut self, mut entry: Entry) -> Entry {
        entry.seq = self.next_seq;
        self.next_seq += 1;
        self.admit(entry)
    }

    /// Publishes the messages the store recovered for `queue` (in key order): one not yet due
    /// (scheduled, and stored at its destination by an older version) is held until it is, the
    /// others go to the tail of the queue at once, as [`Core::push_ready`] would put them one
    /// by one. A takeover publishes its whole backlog this way, under the core's lock.
    pub(super) fn push_recovered(
        &mut self,
        queue: String,
        entries: Vec<Entry>,
        touched: &mut BTreeSet<String>,
    ) {
        let now = now_ms();
        let mut ready = Vec::with_capacity(entries.len());
        for entry in entries {
            match due_after(entry.message.deliver_at, || now) {
                Some(due) => self.hold(due, Publish::Recovered(queue.clone(), vec![entry])),
                None => ready.push(entry),
            }
        }
        let (gone, ready): (Vec<Entry>, Vec<Entry>) = ready
            .into_iter()
            .partition(|e| self.held_for_removed(&queue, e));
        for entry in &gone {
            self.discard_for_removed(&queue, entry);
        }
        if ready.is_empty() {
            return;
        }
        let admitted: Vec<Entry> = ready.into_iter().map(|e| self.sequenced(e)).collect();
        self.queues
            .entry(queue.clone())
            .or_default()
            .push_all(admitted);
        touched.insert(queue);
    }

    pub(super) fn dispatch_all(&mut self, touched: BTreeSet<String>) {
        for queue in touched {
            self.dispatch_queue(&queue);
        }
    }

    /// `message` as consumers of `queue` get it: on a virtual topic's consumer queue, its
    /// copy for that queue (see [`virtual_copy`]); anywhere else, itself.
    pub(super) fn as_on_queue(&self, message: &Arc<Message>, queue: &str) -> Arc<Message> {
        if self.virtual_queues.contains(queue) && message.destination != queue {
            virtual_copy(message, queue)
        } else {
            message.clone()
        }
    }

    pub(super) fn deliver(
        &mut self,
        cid: u64,
        queue: Option<String>,
        entry: Entry,
        group_first: bool,
    ) {
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
        consumer.hold(tag, InFlight { queue, entry });
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
    /// [`Queue::choose`](crate::broker::queue::Queue::choose)).
    pub(super) fn dispatch_queue(&mut self, queue: &str) {
        // A queue that has seen message groups may have to pass over a message whose group's
        // consumer has no credit, as with selectors.
        let selective = self.queues.get(queue).is_some_and(|q| {
            q.groups.is_some()
                || q.consumers
                    .iter()
                    .any(|c| self.consumers.get(c).is_some_and(|c| c.is_selective()))
        });
        if selective {
            let mut checks = SCAN_CHECKS;
            if let Some(stopped) = self.dispatch_selective(queue, None, SCAN_LIMIT, &mut checks) {
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
            let _ = self.dead_letter_expired(queue, entry);
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
    /// passed over `limit` messages nobody could take, or asked selectors `checks` times (it
    /// takes off what it asked; callers pass a positive budget, so a stop for want of one
    /// always follows a message examined): it returns the sequence it stopped at, `None` if it
    /// ran out of messages or of consumers with credit. See [`SCAN_LIMIT`] and
    /// [`SCAN_CHECKS`].
    fn dispatch_selective(
        &mut self,
        queue: &str,
        mut after: Option<u64>,
        limit: usize,
        checks: &mut usize,
    ) -> Option<u64> {
        use std::ops::Bound::{Excluded, Unbounded};
        let now = now_ms();
        let mut expired = Vec::new();
        let mut passed_over = 0;
        let mut stopped = None;
        // Whether some consumer has room: only a delivery uses credit up during the walk, so
        // it is asked again after each one (`None`), not for every message passed over.
        let mut any_credit: Option<bool> = None;
        loop {
            let q = self.queues.get_mut(queue)?;
            let n = q.consumers.len();
            // Only the exclusive consumer's room counts while there is one: the others take
            // nothing, so a walk for them would pass over every message.
            let credit = *any_credit.get_or_insert_with(|| {
                q.consumers
                    .iter()
                    .any(|c| q.admits(*c) && has_credit(&self.consumers, *c))
            });
            if n == 0 || !credit {
                break;
            }
            if *checks == 0 {
                stopped = after;
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
            let group = crate::broker::queue::group_of(&entry.message);
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
                    && has_credit(&self.consumers, cid)
                    && {
                        *checks = checks.saturating_sub(1);
                        self.consumers.get(&cid).is_some_and(|c| c.accepts(entry))
                    }
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
                group_first = owner != Some(cid) || group_seq == 1;
                groups.assign(id, cid);
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
            any_credit = None;
        }
        for entry in expired {
            self.stats.expired += 1;
            let _ = self.dead_letter_expired(queue, entry);
        }
        stopped
    }

    /// Goes on with the selective dispatches that stopped at [`SCAN_LIMIT`] (called by the
    /// periodic sweep), [`SWEEP_SCAN_LIMIT`] messages further each time, from the head again
    /// once a walk reaches the end if a dispatch stopped behind it meanwhile (`scan_again`).
    /// All queues share [`SWEEP_SCAN_CHECKS`] selector questions; the queues are taken in name
    /// order from where the last sweep stopped, so each is reached in turn.
    pub fn continue_scans(&mut self) {
        let mut pending: Vec<(String, Option<u64>)> = self
            .queues
            .iter()
            .filter(|(_, q)| q.scan_resume.is_some() || q.scan_again)
            .map(|(name, q)| (name.clone(), q.scan_resume))
            .collect();
        pending.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if let Some(last) = &self.sweep_after {
            let first = pending.partition_point(|(name, _)| name <= last);
            pending.rotate_left(first);
        }
        let mut checks = SWEEP_SCAN_CHECKS;
        for (queue, after) in pending {
            if checks == 0 {
                break;
            }
            if after.is_none() {
                // From the head once more, since a dispatch stopped behind the last walk.
                if let Some(q) = self.queues.get_mut(&queue) {
                    q.scan_again = false;
                }
            }
            let stopped = self.dispatch_selective(&queue, after, SWEEP_SCAN_LIMIT, &mut checks);
            if let Some(q) = self.queues.get_mut(&queue) {
                q.scan_resume = stopped;
            }
            self.sweep_after = Some(queue);
        }
    }

    /// Gives a consumer whose credit grew more of what waits for it.
    pub(super) fn refill(&mut self, cid: u64) {
        let Some(consumer) = self.consumers.get_mut(&cid) else {
            return;
        };
        match consumer.source.clone() {
            Source::Queue(queue) => self.dispatch_queue(&queue),
            Source::Topic(_) => {
                let now = now_ms();
                let byte_limit = self.options.memory_limit;
                while self
                    .consumers
                    .get(&cid)
                    .is_some_and(|c| !c.pending.is_empty() && c.topic_window(byte_limit))
                    && has_credit(&self.consumers, cid)
                {
                    let entry = self
                        .consumers
                        .get_mut(&cid)
                        .and_then(Consumer::pop_pending)
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
