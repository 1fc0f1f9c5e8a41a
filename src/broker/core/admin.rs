//! Operations on whole destinations: queue browsing, deleting unused destinations, and the admin
//! purge, delete and DLQ retry, in bounded batches.
//!
//! It must never hold the core's lock for a whole deep queue: each call handles one batch.

use std::sync::Arc;

use super::{
    now_ms, parse_selector, record_len, remove_entry, set_original_destination, Core, Publish,
    Routed, ADMIN_BATCH, ADMIN_BATCH_BYTES, HOLDING,
};
use crate::broker::queue::{Body, Entry, InFlight};
use crate::broker::selector::Selector;
use crate::broker::{AdminError, BrokerError, Destination, Purged, Retried};
use crate::store::{Message, MessageKey, MessageReader};

/// How many entries one [`Core::browse_next`] looks at, matching or not, under the lock.
const BROWSE_SCAN: usize = 10_000;

/// A message a browser is shown, its body still in the journal when `body_at` is set.
pub struct Browsed {
    message: Arc<Message>,
    redeliveries: u32,
    body_at: Option<MessageKey>,
}

/// The browsed messages with their bodies (read from the journal where left there), and how
/// often each was delivered before.
pub fn read_bodies(
    page: Vec<Browsed>,
    mut reader: MessageReader,
) -> Result<Vec<(Arc<Message>, u32)>, BrokerError> {
    page.into_iter()
        .map(|b| {
            let message = match b.body_at {
                None => b.message,
                Some(key) => {
                    let stored = reader
                        .read(key)
                        .map_err(|e| BrokerError::StoreFailed(e.to_string()))?;
                    let mut message = (*b.message).clone();
                    message.body = stored.body;
                    Arc::new(message)
                }
            };
            Ok((message, b.redeliveries))
        })
        .collect()
}

/// Where a queue browser is in its queue: the messages it may show are those there when it
/// began (sequences below `ceiling`), in delivery order, and it has looked at every one up to
/// `after`.
pub struct BrowseCursor {
    queue: String,
    selector: Option<Arc<Selector>>,
    after: u64,
    ceiling: u64,
    done: bool,
}

impl BrowseCursor {
    /// Every message the browser may show has been looked at.
    pub fn is_done(&self) -> bool {
        self.done
    }
}

impl Core {
    /// Begins browsing a queue: the messages on it now (waiting, or delivered and not yet
    /// acknowledged) that `selector` accepts, read page by page with [`Core::browse_next`];
    /// nothing is consumed (a queue browser).
    pub fn open_browse(
        &self,
        destination: &Destination,
        selector: Option<&str>,
    ) -> Result<BrowseCursor, BrokerError> {
        Ok(BrowseCursor {
            queue: destination.canonical(),
            selector: parse_selector(selector)?,
            after: 0,
            ceiling: self.next_seq,
            done: false,
        })
    }

    /// The browser's next messages in delivery order, at most `limit` and at most
    /// `max_browse_page_size`, with how often each was delivered before, and the key of each
    /// whose body is still to be read from the journal ([`read_bodies`], best outside the
    /// core's lock: a page of bodies left on disk is hundreds of reads). One call looks at no
    /// more than [`BROWSE_SCAN`] entries, so a selective browse of a deep queue can return
    /// fewer (even none) without being done.
    pub fn browse_next(
        &self,
        cursor: &mut BrowseCursor,
        limit: usize,
    ) -> Result<Vec<Browsed>, BrokerError> {
        let limit = limit.clamp(1, self.options.max_browse_page_size);
        let now = now_ms();
        let name = cursor.queue.as_str();
        let Some(q) = self.queues.get(name).filter(|_| !cursor.done) else {
            cursor.done = true;
            return Ok(Vec::new());
        };
        let range = cursor.after.saturating_add(1)..cursor.ceiling;
        // As ActiveMQ's browser: messages delivered and not yet acknowledged are still on the
        // queue, in their place. Only this queue's consumers hold its deliveries: the others'
        // (every consumer of the broker, with their windows) are not walked for each page.
        let mut in_flight: Vec<&Entry> = q
            .consumers
            .iter()
            .filter_map(|cid| self.consumers.get(cid))
            .flat_map(|c| c.in_flight.values())
            .filter(|f| f.queue.as_deref() == Some(name) && range.contains(&f.entry.seq))
            .map(|f| &f.entry)
            .collect();
        in_flight.sort_unstable_by_key(|e| e.seq);
        let mut in_flight = in_flight.into_iter().peekable();
        let mut ready = q.ready.range(range).map(|(_, e)| e).peekable();
        let mut entries = std::iter::from_fn(|| match (ready.peek(), in_flight.peek()) {
            (Some(r), Some(f)) if f.seq < r.seq => in_flight.next(),
            (Some(_), _) => ready.next(),
            (None, _) => in_flight.next(),
        });
        let mut out = Vec::new();
        let mut looked = 0;
        while out.len() < limit && looked < BROWSE_SCAN {
            let Some(e) = entries.next() else {
                cursor.done = true;
                break;
            };
            looked += 1;
            cursor.after = e.seq;
            let shown = !e.is_expired(now)
                && cursor
                    .selector
                    .as_ref()
                    .is_none_or(|s| s.matches_with_redeliveries(&e.message, e.redeliveries));
            if shown {
                // A virtual topic's consumer queue shows its copies, as its consumers get them.
                let on_disk = matches!(e.body, Body::OnDisk);
                out.push(Browsed {
                    message: self.as_on_queue(&e.message, name),
                    redeliveries: e.redeliveries,
                    body_at: e.key.filter(|_| on_disk),
                });
            }
        }
        Ok(out)
    }

    /// Reads stored messages without the core (see [`read_bodies`]).
    pub fn message_reader(&self) -> Result<MessageReader, BrokerError> {
        self.store
            .as_ref()
            .map(|store| store.message_reader())
            .ok_or_else(|| BrokerError::NotMaster("the node stepped down".into()))
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
                            if e.message.destination == name && !e.message.stored_for_mode() =>
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
        if self.virtual_queues.contains(queue)
            && self
                .topics
                .values()
                .any(|t| t.durables.iter().any(|q| q == queue))
        {
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
    /// message in one place) of at most [`MOVE_RECORD_LEN`](super::MOVE_RECORD_LEN) (a larger
    /// single move alone, up to the journal's record limit; past it the message stays). The
    /// batch ends early once it moved [`ADMIN_BATCH_BYTES`]. As ActiveMQ's resend does, the
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
