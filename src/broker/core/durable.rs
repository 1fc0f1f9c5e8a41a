//! Durable topic subscriptions and virtual topic consumer queues: journaling, registering and
//! removing them.
//!
//! It must never remove a durable subscription while a consumer is attached to it, nor leave
//! its stored messages behind when it goes.

use super::{durable_queue, is_virtual_subscription, parse_selector, remove_entry, Core, Durable};
use crate::broker::queue::Entry;
use crate::broker::{BrokerError, Confirmation};
use crate::store::{entry, SubscriptionAdd, SubscriptionRemove};

impl Core {
    /// Journals a new durable subscription (or virtual topic consumer queue) and registers it;
    /// the confirmation resolves once its record is confirmed.
    pub(super) fn record_subscription(
        &mut self,
        subscription: SubscriptionAdd,
    ) -> Result<Confirmation, BrokerError> {
        self.append(vec![crate::store::Entry {
            kind: Some(entry::Kind::Subscribe(subscription.clone())),
        }])?;
        let queue = subscription.queue.clone();
        self.register_durable(subscription);
        self.subscriptions_made += 1;
        let made = self.subscriptions_made;
        if let Some(durable) = self.durables.get_mut(&queue) {
            durable.made = made;
        }
        Ok(self.flush())
    }

    /// Registers a stored subscription: a durable topic subscription, or a virtual topic's
    /// consumer queue (see [`is_virtual_subscription`]), which its topic feeds the same way but
    /// which is an ordinary queue to its consumers: none of the durable rules (one active
    /// subscriber, a client id, unsubscribe) apply to it.
    pub(super) fn register_durable(&mut self, subscription: SubscriptionAdd) {
        let queue = subscription.queue.clone();
        if is_virtual_subscription(&subscription) && !self.feeds(&subscription) {
            // Made under other virtual topic settings (turned off, or another prefix or
            // name since): its messages kept, fed by no topic (ActiveMQ keeps such a queue, and
            // its interceptor feeds only what the settings match). Still a consumer queue to
            // address its messages (they name the topic: see `Core::as_on_queue`).
            tracing::warn!(queue, topic = %subscription.topic, "a virtual topic consumer queue the current virtual topic settings do not match: it keeps its messages, and its topic no longer feeds it");
            self.queues.entry(queue.clone()).or_default();
            self.virtual_queues.insert(queue);
            return;
        }
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
        // A selector stored by an earlier version whose rules were looser: a `--` comment
        // with no line end after it then ran to the end, so it parses with one added.
        let selector = match parse_selector(Some(&subscription.selector))
            .or_else(|_| parse_selector(Some(&format!("{}\n", subscription.selector))))
        {
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
                made: 0,
            },
        );
    }

    /// Whether the current virtual topic settings make `subscription` (a virtual topic
    /// consumer queue's record) a queue its topic feeds.
    fn feeds(&self, subscription: &SubscriptionAdd) -> bool {
        let name = subscription
            .queue
            .strip_prefix("queue://")
            .unwrap_or(&subscription.queue);
        self.options
            .virtual_topics
            .as_ref()
            .and_then(|v| v.topic_of(name))
            .is_some_and(|topic| topic == subscription.topic)
    }

    /// Whether `entry`, held for `queue` (a message confirmed late, or coming back from a
    /// rolled-back transaction), belongs to a durable subscription that was removed, or to an
    /// earlier one under the same name: then it is dropped, not queued.
    pub(super) fn held_for_removed(&self, queue: &str, entry: &Entry) -> bool {
        if !queue.starts_with("durable://") {
            return false;
        }
        let Some(durable) = self.durables.get(queue) else {
            return true;
        };
        entry.routed_under < durable.made
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
    pub(super) fn remove_durable(&mut self, queue: &str) -> Result<(), BrokerError> {
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
}
