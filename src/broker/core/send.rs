//! The send path: making a stored message of a send, duplicate detection, and routing it to
//! queues, durable subscriptions, virtual topic queues and topic subscribers.
//!
//! It must never store one send twice (a re-sent producer sequence is confirmed again, not
//! stored), nor store copies of one send in more than one record.

use std::sync::Arc;

use super::{
    add_entry, distinct, fits_one_record, now_ms, too_many_entries, with_keys, Core, Publish,
    Routed, HOLDING,
};
use crate::broker::queue::{has_credit, held_bytes, Entry};
use crate::broker::wildcard;
use crate::broker::{schedule, BrokerError, Confirmation, Destination, NewMessage};
use crate::store::Message;

impl Core {
    fn make_message(
        &mut self,
        session: u64,
        destination: &Destination,
        new: NewMessage,
    ) -> Arc<Message> {
        // Only a client's own ids identify a producer's sequence; ids the broker makes up are
        // never compared for duplicates. Only stored messages are (a delayed one is stored
        // even when not persistent: a re-send after a lost receipt must not store it twice).
        let stored = new.stored_for_mode() || self.held_when_sent(&new.headers);
        let (message_id, producer_id, producer_sequence) = match new.message_id {
            Some(id) if !id.is_empty() => match producer_of(&id) {
                Some((p, s)) if stored => {
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
            temporary: new.temporary,
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
            if message.stored_for_mode() || self.held_when_sent(&message.headers) {
                self.refuse_if_full()?;
            }
            // A repeat of a stored message is recognised when it is sent, in send order, like
            // a plain send (a transaction committed later must not be judged against sends
            // made after it). The sequence is recorded only at commit: a transaction that is
            // rolled back, or lost with its connection, may be sent again with the same ids.
            let stored = self.is_repeat(&message);
            let limit = self.options.memory_limit;
            let added = held_bytes(&message) * (sends.len() * weight) as u64;
            let held = self.transaction_bytes;
            let state = self.session(session)?;
            let Some(open) = state.transactions.get_mut(tx) else {
                return Err(BrokerError::UnknownTransaction(tx.to_string()));
            };
            let bytes = open.bytes + added;
            if bytes > limit {
                return Err(BrokerError::TransactionTooLarge(
                    tx.to_string(),
                    format!(
                        "more than memory_limit ({limit} bytes) of messages (bodies and headers)"
                    ),
                ));
            }
            if held + added > limit {
                // Each transaction within the limit, but many open at once (on one connection
                // or several) would hold their bodies without bound.
                return Err(BrokerError::OpenTransactionsFull {
                    tx: tx.to_string(),
                    held,
                    limit,
                });
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
                self.transaction_bytes += added;
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
                let kind = if message.stored_for_mode() {
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
        if self.is_repeat(&message) {
            self.stats.duplicates_dropped += 1;
            return Ok(self.flush());
        }
        // Whatever is stored (persistent, or delayed in the holding area) counts against
        // `store_limit`.
        if !routed.entries.is_empty() {
            self.refuse_if_full()?;
        }
        if !message.producer_id.is_empty() {
            self.record_producer(&message.producer_id, message.producer_sequence);
        }
        if routed.entries.is_empty() {
            if message.stored_for_mode() {
                // Stored nowhere (a topic message no durable subscription takes), it still
                // goes out after the persistent messages sent before it, which wait for their
                // records: subscribers get a producer's persistent messages in order.
                return Ok(self.wait_for(routed.publish));
            }
            self.publish_now(routed.publish);
            return Ok(Confirmation::done());
        }
        let (start, _) = self.append_deferred(routed.entries)?;
        Ok(self.wait_for(with_keys(routed.publish, &routed.keyed, start)))
    }

    /// Whether a message with these headers is stored in the holding area until due, whatever
    /// its persistence (see [`schedule::is_held`]).
    pub(crate) fn held_when_sent(&self, headers: &[crate::store::Header]) -> bool {
        self.options.scheduler_support && schedule::is_held(headers, now_ms())
    }

    /// A message whose producer sequence was already stored: the client re-sent it after
    /// losing its connection. It is confirmed again but not stored twice.
    fn is_repeat(&self, message: &Message) -> bool {
        !message.producer_id.is_empty()
            && self
                .producers
                .is_duplicate(&message.producer_id, message.producer_sequence)
    }

    pub(super) fn record_producer(&mut self, producer: &str, sequence: u64) {
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
    pub(super) fn route(
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
                let entries = if message.stored_for_mode() {
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
                let durables = if message.stored_for_mode() {
                    durables
                } else {
                    self.transient_for_durables(durables, held_bytes(&message))
                };
                let routed_under = self.subscriptions_made;
                let mut publish: Vec<Publish> = durables
                    .iter()
                    .map(|q| {
                        let mut copy = entry(&message);
                        copy.routed_under = routed_under;
                        Publish::Queue(q.clone(), copy)
                    })
                    .collect();
                publish.push(Publish::Topic(topic, message.clone(), origin));
                let entries = if message.stored_for_mode() && !durables.is_empty() {
                    vec![add_entry(durables, message)]
                } else {
                    Vec::new()
                };
                (entries, publish)
            }
        }
    }

    /// Of the durable subscriptions a non-persistent message of `bytes` matches, those that
    /// keep it. As in ActiveMQ (whose `keepDurableSubsActive` is on by default), one whose
    /// subscriber is away keeps it in memory too (never stored: a restart or a failover loses
    /// it, as ActiveMQ's restart does), but only while the non-persistent bodies held stay
    /// under half of `memory_limit`: past that, subscriptions nobody reads miss them (logged),
    /// rather than fill the limit and pause every producer of non-persistent messages.
    fn transient_for_durables(&mut self, durables: Vec<String>, bytes: u64) -> Vec<String> {
        let room = (self.memory.limit() / 2).saturating_sub(self.memory.transient());
        let mut taken = 0u64;
        let mut missed = 0usize;
        let kept: Vec<String> = durables
            .into_iter()
            .filter(|q| {
                if self.durables.get(q).is_none_or(|d| d.active.is_some()) {
                    return true;
                }
                if taken + bytes <= room {
                    taken += bytes;
                    true
                } else {
                    missed += 1;
                    false
                }
            })
            .collect();
        if missed > 0 && !std::mem::replace(&mut self.away_durables_missing, true) {
            tracing::warn!(
                memory_limit = self.memory.limit(),
                non_persistent = self.memory.transient(),
                "non-persistent message bodies held reached half the memory_limit: durable \
                 subscriptions whose subscriber is away miss non-persistent messages until \
                 there is room again (send persistent to keep them)"
            );
        } else if missed == 0 && taken > 0 && self.away_durables_missing {
            self.away_durables_missing = false;
            tracing::info!(
                "durable subscriptions whose subscriber is away keep non-persistent messages again"
            );
        }
        kept
    }

    /// [`Core::route`] for each of `sends`, their entries gathered for one record.
    pub(super) fn route_all(
        &mut self,
        session: u64,
        sends: Vec<(Destination, Arc<Message>)>,
    ) -> Routed {
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
    pub(super) fn publish_to_subscribers(
        &mut self,
        topic: &str,
        message: Arc<Message>,
        origin: u64,
    ) {
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
        let byte_limit = self.options.memory_limit;
        for cid in subscribers {
            let entry = Entry::new(None, message.clone(), 0).from(origin);
            let credit = has_credit(&self.consumers, cid);
            let Some(consumer) = self.consumers.get_mut(&cid) else {
                continue;
            };
            if !consumer.accepts(&entry) {
                continue;
            }
            if credit && consumer.pending.is_empty() && consumer.topic_window(byte_limit) {
                self.deliver(cid, None, entry, false);
                continue;
            }
            let before = consumer.discarded;
            let discarded = consumer.push_pending(entry, limit, byte_limit);
            if discarded == 0 {
                continue;
            }
            self.stats.topic_discarded += discarded;
            // Logged at the first discard and each time the count passes a power of two.
            if before == 0 || before.ilog2() != consumer.discarded.ilog2() {
                tracing::warn!(
                    topic,
                    subscription = %consumer.subscription,
                    discarded = consumer.discarded,
                    limit,
                    held_bytes = consumer.in_flight_bytes + consumer.pending_bytes,
                    "slow topic subscriber: discarding its oldest pending messages"
                );
            }
        }
    }
}

/// `(producer, sequence)` of an id of the form `<producer>:<decimal>`.
pub(super) fn producer_of(message_id: &str) -> Option<(&str, u64)> {
    let (producer, sequence) = message_id.rsplit_once(':')?;
    if producer.is_empty() {
        return None;
    }
    Some((producer, sequence.parse().ok()?))
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
