//! Redelivery, the dead-letter queue and expiry: putting unacknowledged messages back, and
//! dead-lettering them past `max_redeliveries`, when rejected, or once expired on a queue.
//!
//! It must never move a message to its DLQ in more than one record (a crash leaves it in one
//! place).

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::Arc;

use super::{add_entry, now_ms, remove_entry, set_original_destination, Core, Publish};
use crate::broker::queue::{Entry, InFlight};
use crate::broker::{BrokerError, Header, PropertyType};
use crate::store::MessageKey;

/// The property (header) a dead-lettered message carries saying why, as ActiveMQ names it.
pub const FAILURE_CAUSE: &str = "dlqDeliveryFailureCause";
/// The property holding a dead-lettered message's expiration (its own is cleared on the DLQ).
pub const ORIGINAL_EXPIRATION: &str = "originalExpiration";

/// How many waiting entries one expiry sweep looks at, over all queues.
pub(super) const EXPIRY_SCAN_LIMIT: usize = 20_000;
/// How many expired messages one expiry sweep dead-letters, over all queues.
pub(crate) const EXPIRY_BATCH: usize = 1_000;

/// How an unacknowledged delivery returns to its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Return {
    /// It never reached the application (past what the client says it delivered).
    Unseen,
    /// It may have been seen: it comes back marked redelivered.
    Seen,
    /// Its processing presumably failed: marked redelivered, and counted against
    /// `max_redeliveries`.
    Failed,
}

impl Core {
    /// Puts a message whose processing failed (in a transaction rolled back) back on its
    /// queue, or dead-letters it once it has failed more than `max_redeliveries` times.
    pub(super) fn redeliver(
        &mut self,
        in_flight: InFlight,
        touched: &mut BTreeSet<String>,
    ) -> Result<(), BrokerError> {
        self.requeue(in_flight, Return::Failed, touched)
    }

    /// Puts an unacknowledged message back in its place on its queue, as `how` says.
    pub(super) fn requeue(
        &mut self,
        in_flight: InFlight,
        how: Return,
        touched: &mut BTreeSet<String>,
    ) -> Result<(), BrokerError> {
        let Some(queue) = in_flight.queue else {
            return Ok(()); // non-durable topic: nothing is kept for a subscriber that left
        };
        let mut entry = in_flight.entry;
        if how != Return::Unseen {
            entry.redeliveries += 1;
        }
        if how == Return::Failed {
            entry.failures += 1;
            if entry.failures > self.options.max_redeliveries {
                let cause = format!(
                    "java.lang.Throwable: Delivery[{}] exceeds redelivery policy limit:\
                     RedeliveryPolicy {{maximumRedeliveries = {}}}",
                    entry.failures, self.options.max_redeliveries
                );
                return self.dead_letter(&queue, entry, Some(&cause));
            }
        }
        if !self.queues.contains_key(&queue) || self.held_for_removed(&queue, &entry) {
            // Deleted (a removed durable subscription, say, perhaps made again since) while
            // its consumer or a transaction held the message.
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
    pub(super) fn discard_stored(&mut self, queue: &str, entry: &Entry) -> Result<(), BrokerError> {
        if let Some(key) = entry.key {
            self.append(vec![remove_entry(queue, key)])?;
        }
        Ok(())
    }

    /// A delivery the consumer rejected (NACK, poison ack, with the client's `cause` if it gave
    /// one) goes to its DLQ.
    pub(super) fn reject(&mut self, f: InFlight, cause: Option<&str>) -> Result<(), BrokerError> {
        let Some(queue) = f.queue else {
            return Ok(());
        };
        // Rejected for no stated reason once expired (the JMS client's expired ack, for a
        // message that expired in its prefetch): it says it expired, as from ActiveMQ.
        if cause.is_none() && f.entry.is_expired(now_ms()) {
            return self.dead_letter_expired(&queue, f.entry);
        }
        self.dead_letter(&queue, f.entry, cause)
    }

    /// Expired `entry` on `queue` goes to its DLQ, saying so as ActiveMQ does.
    pub(super) fn dead_letter_expired(
        &mut self,
        queue: &str,
        entry: Entry,
    ) -> Result<(), BrokerError> {
        let cause = format!(
            "java.lang.Throwable: Message Expired. Expiration:{}",
            entry.message.expiration
        );
        self.dead_letter(queue, entry, Some(&cause))
    }

    /// Moves a message from `queue` to its DLQ (see [`crate::broker::DeadLetterStrategy`]) in one
    /// record (non-persistent messages are dropped, as ActiveMQ does by default; a persistent one
    /// from a temporary destination, never stored there, is stored on the DLQ). As ActiveMQ
    /// does, it carries `dlqDeliveryFailureCause` (why, when known: `cause`) and
    /// `originalExpiration` there.
    pub(super) fn dead_letter(
        &mut self,
        queue: &str,
        entry: Entry,
        cause: Option<&str>,
    ) -> Result<(), BrokerError> {
        let why = cause.unwrap_or("rejected by the consumer");
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
        if entry.key.is_none() && !entry.message.persistent {
            return Ok(());
        }
        let mut message = (*self.with_body(&entry)?).clone();
        // The DLQ is an ordinary queue: there a persistent message is stored.
        message.temporary = false;
        self.stats.dead_lettered += 1;
        // Delivered afresh from the DLQ (JMSRedelivered false, JMSXDeliveryCount 1), as from
        // ActiveMQ's, whose copy does not count the client's local redeliveries: a DLQ
        // consumer's own redelivery policy gets its whole allowance.
        message.redelivery_count = 0;
        // On the DLQ it is kept until consumed, as ActiveMQ does: an expiration kept would
        // expire it again there. Its own is kept as a property (the first DLQ's, if it went
        // round), and why it came, replacing an earlier one.
        if !message
            .headers
            .iter()
            .any(|h| h.name == ORIGINAL_EXPIRATION)
        {
            message.headers.push(Header {
                name: ORIGINAL_EXPIRATION.into(),
                value: message.expiration.to_string(),
                kind: PropertyType::Long as i32,
            });
        }
        message.headers.retain(|h| h.name != FAILURE_CAUSE);
        if let Some(cause) = cause {
            message
                .headers
                .push(Header::text(FAILURE_CAUSE, cause.to_owned()));
        }
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
        let mut entries: Vec<_> = entry
            .key
            .map(|key| remove_entry(queue, key))
            .into_iter()
            .collect();
        entries.push(add_entry(vec![dlq.clone()], message.clone()));
        let added = entries.len() - 1;
        let (start, _) = self.append(entries)?;
        let publish = vec![Publish::Queue(
            dlq,
            Entry::new(Some(MessageKey::new(start, added)), message, 0).from(entry.origin),
        )];
        drop(self.wait_for(publish));
        Ok(())
    }

    /// Removes expired messages waiting on queues (called periodically), a bounded amount of
    /// work per call under the core's lock: it looks at up to [`EXPIRY_SCAN_LIMIT`] waiting
    /// entries and dead-letters up to [`EXPIRY_BATCH`] messages (as ActiveMQ expires a page at
    /// a time), and the next call goes on where this one stopped. A backlog of millions that
    /// expires at once then goes to its DLQ over many ticks, between other work, instead of
    /// in one hold of the lock that every client waits behind.
    pub fn expire_messages(&mut self) {
        let now = now_ms();
        let mut names: Vec<String> = self
            .queues
            .iter()
            .filter(|(_, q)| q.expiring > 0)
            .map(|(name, _)| name.clone())
            .collect();
        names.sort_unstable();
        // From where the last call stopped, round to the start.
        let first = names.partition_point(|n| *n < self.expiry_from);
        names.rotate_left(first);
        let mut budget = EXPIRY_SCAN_LIMIT;
        let mut batch = EXPIRY_BATCH;
        self.expiry_from.clear();
        for queue in names {
            if budget == 0 || batch == 0 {
                self.expiry_from = queue;
                break;
            }
            let Some(q) = self.queues.get_mut(&queue) else {
                continue;
            };
            let from = q.expiry_cursor.map_or(Bound::Unbounded, Bound::Excluded);
            let mut expired = Vec::new();
            let mut last = None;
            let mut finished = true;
            for (seq, e) in q.ready.range((from, Bound::Unbounded)) {
                if budget == 0 || expired.len() == batch {
                    finished = false;
                    break;
                }
                budget -= 1;
                last = Some(*seq);
                if e.is_expired(now) {
                    expired.push(*seq);
                }
            }
            q.expiry_cursor = if finished { None } else { last };
            batch -= expired.len();
            let removed: Vec<Entry> = expired
                .into_iter()
                .filter_map(|seq| q.remove_ready(seq))
                .collect();
            if !finished {
                // The next sweep starts with the next queue (this one goes on from its cursor
                // on its next turn): a queue that never finishes cannot keep the others'
                // expired messages from their turn.
                self.expiry_from = format!("{queue}\0");
            }
            for entry in removed {
                self.stats.expired += 1;
                // Failing here means the store failed (the node is stopping) or the body could
                // not be read back: the message is then still in the journal, and a restart
                // recovers it and expires it again.
                if let Err(error) = self.dead_letter_expired(&queue, entry) {
                    tracing::warn!(%queue, %error, "could not dead-letter an expired message");
                }
            }
            if !finished {
                break;
            }
        }
    }
}
