//! Subscriptions: adding and removing consumers of queues, topics and wildcard patterns (one per
//! member of a composite destination), and the subscriptions kept per topic and pattern.
//!
//! It must never lose a removed consumer's unacknowledged deliveries: they go back to their
//! queues.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use super::redelivery::Return;
use super::{distinct, durable_queue, parse_selector, priority_of, Core, Topic, Wildcard};
use crate::broker::queue::{Consumer, Source};
use crate::broker::selector::Selector;
use crate::broker::wildcard::{self, Pattern};
use crate::broker::{BrokerError, Confirmation, Destination, SubscribeRequest};
use crate::store::SubscriptionAdd;

/// What the application saw of a closing consumer's deliveries (OpenWire's
/// `lastDeliveredSequenceId`; our delivery tags are ActiveMQ's broker sequence ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Every delivery up to this tag: the consumer's own last delivered (`u64::MAX`: all).
    Upto(u64),
    /// The last delivery of a closing session or connection, which may be another consumer's:
    /// it counts for this consumer only if this consumer holds it.
    LastOf(u64),
}

impl Core {
    /// The subscriptions on topic or wildcard pattern `canonical` (`topic://x`), made if
    /// missing; `None` for an invalid pattern (refused before anything is stored).
    pub(super) fn topic_mut(&mut self, canonical: &str) -> Option<&mut Topic> {
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
    pub(super) fn change_topic(&mut self, canonical: &str, change: impl FnOnce(&mut Topic)) {
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
    pub(super) fn wildcards_matching<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Topic> + 'a {
        let temporary = name.starts_with("ID:");
        self.wildcards
            .values()
            .filter(move |w| !temporary && w.pattern.matches(name))
            .map(|w| &w.topic)
    }

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
    /// [`has_credit`](crate::broker::queue::has_credit)). All or nothing.
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
        // Once for all members: a composite may have a thousand, and the lock is held.
        let parsed = parse_selector(request.selector.as_deref());
        for d in distinct {
            let member = SubscribeRequest {
                destination: d.clone(),
                ..request.clone()
            };
            match self.add_consumer(session, member, &parsed, members.clone()) {
                // Confirmations resolve in order: the last one waiting covers the others.
                Ok(c) if c.is_done() => {}
                Ok(c) => confirmation = c,
                Err(e) => {
                    let _ = self.unsubscribe(session, &request.id);
                    return Err(e);
                }
            }
        }
        Ok(confirmation)
    }

    /// Adds one consumer of `request.destination` to `session`'s subscription `request.id`
    /// (already registered, see [`Core::subscribe_each`]); `parsed` is its selector, parsed.
    fn add_consumer(
        &mut self,
        session: u64,
        request: SubscribeRequest,
        parsed: &Result<Option<Arc<Selector>>, BrokerError>,
        members: Arc<[u64]>,
    ) -> Result<Confirmation, BrokerError> {
        let state = self.session(session)?;
        let client_id = state.client_id.clone();
        let deliveries = state.deliveries.clone();
        let origin = state.origin;
        check_subscribable(&request.destination)?;
        if let (Destination::Queue(_), Some(_)) = (&request.destination, &request.durable_name) {
            // As ActiveMQ refuses it ("cannot durably subscribe to a Queue destination").
            return Err(BrokerError::DurableOnQueue(request.destination.canonical()));
        }
        let selector_text = request.selector.clone().unwrap_or_default();
        let selector = match parsed.clone() {
            Ok(selector) => selector,
            // A durable subscription resumed with the very text stored for it, which an
            // earlier version's looser rules accepted: the selector it was recovered with.
            Err(e) => match (&request.destination, &request.durable_name, &client_id) {
                (Destination::Topic(_), Some(name), Some(client_id)) => self
                    .durables
                    .get(&durable_queue(client_id, name))
                    .filter(|d| {
                        d.subscription.selector == selector_text
                            && d.subscription.topic == request.destination.canonical()
                            && d.subscription.no_local == request.no_local
                    })
                    .map(|d| d.selector.clone())
                    .ok_or(e)?,
                _ => return Err(e),
            },
        };
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
                let rule = self.options.virtual_topics.as_ref();
                // Recorded unless its topic feeds it already (a consumer queue recorded under
                // other settings is known, and fed by nothing, until recorded for these).
                let topic = rule.and_then(|v| v.topic_of(name)).filter(|topic| {
                    !self
                        .topics
                        .get(topic)
                        .is_some_and(|t| t.durables.contains(&queue))
                });
                if let Some(topic) = topic {
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
                in_flight_bytes: 0,
                delivered_bytes: 0,
                // A durable subscription's queue holds only matching messages already (and
                // none of its noLocal connection's, see `route`).
                selector: if durable { None } else { selector },
                in_flight: Default::default(),
                pending: VecDeque::new(),
                pending_bytes: 0,
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

    pub fn unsubscribe(&mut self, session: u64, id: &str) -> Result<Confirmation, BrokerError> {
        self.unsubscribe_seen(session, id, Seen::Upto(u64::MAX))
    }

    /// Like `unsubscribe`; deliveries the application did not see (see [`Seen`]) return
    /// without counting as a redelivery.
    pub fn unsubscribe_seen(
        &mut self,
        session: u64,
        id: &str,
        seen: Seen,
    ) -> Result<Confirmation, BrokerError> {
        let cids = self
            .session(session)?
            .subscriptions
            .remove(id)
            .ok_or_else(|| BrokerError::UnknownSubscription(id.to_string()))?;
        let mut touched = BTreeSet::new();
        // Another consumer's delivery, or one acknowledged already: as ActiveMQ, which marks
        // deliveries up to the one named only in the list that holds it, none of this
        // subscription's counts as seen. (Its consumers, one per member of a composite
        // destination, are one list, as in ActiveMQ. A tag of an earlier core is left to
        // `remove_consumer`.)
        let seen_upto = match seen {
            Seen::Upto(tag) => tag,
            Seen::LastOf(tag)
                if tag >= super::recovery::first_tag(self.epoch)
                    && !cids.iter().any(|cid| {
                        self.consumers
                            .get(cid)
                            .is_some_and(|c| c.in_flight.contains_key(&tag))
                    }) =>
            {
                0
            }
            Seen::LastOf(tag) => tag,
        };
        for cid in cids {
            let consumer = self
                .consumers
                .remove(&cid)
                .expect("a session's subscription has a consumer");
            self.remove_consumer(cid, consumer, seen_upto, &mut touched)?;
        }
        self.dispatch_all(touched);
        Ok(Confirmation::done())
    }

    /// Detaches a removed consumer from its queue or topic and returns its unacknowledged
    /// deliveries to their queues (those past `seen_upto` not counting as redelivered).
    fn remove_consumer(
        &mut self,
        cid: u64,
        consumer: Consumer,
        seen_upto: u64,
        touched: &mut BTreeSet<String>,
    ) -> Result<(), BrokerError> {
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
        // A tag of an earlier core (a JMS client that failed over reports the last message
        // its application got from the old master): which of this core's deliveries the
        // application saw is not known. It was working on one, presumably the oldest, back
        // first on the queue: that one counts as seen, the rest of the prefetch as unseen (as
        // ActiveMQ counts them, its sequence ids being the same on every broker).
        let seen_upto = if seen_upto != 0 && seen_upto < super::recovery::first_tag(self.epoch) {
            in_flight.keys().next().copied().unwrap_or(0)
        } else {
            seen_upto
        };
        // In tag order: the first one seen is the oldest the consumer held unacknowledged,
        // the one it was presumably working on when it went away. Only that one fails; the
        // rest of its prefetch comes back marked redelivered, so that a consumer taking one
        // message per connection, or restarted, does not send its prefetch to the DLQ.
        let mut oldest = true;
        for (tag, in_flight) in in_flight {
            self.tags.remove(&tag);
            // A delivery past `seen_upto` never reached the application: not a redelivery.
            let how = if tag > seen_upto {
                Return::Unseen
            } else if std::mem::take(&mut oldest) {
                Return::Failed
            } else {
                Return::Seen
            };
            self.requeue(in_flight, how, touched)?;
        }
        Ok(())
    }
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
