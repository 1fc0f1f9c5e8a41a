//! Acknowledgements and consumer credit: acks (individual and cumulative), NACKs, delivered
//! and redelivered notices, pulls and prefetch changes.
//!
//! It must never confirm an acknowledgement of a stored message before its removal is
//! journaled (outside a transaction at once, inside one with the commit's record).

use std::collections::BTreeSet;

use super::{remove_entry, too_many_entries, Core};
use crate::broker::queue::InFlight;
use crate::broker::{AckScope, BrokerError, Confirmation};

impl Core {
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
            consumer.forget(mine.iter().map(|(t, f)| (*t, f)));
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

    /// The tag the next delivery gets (see [`crate::broker::Session::next_tag`]).
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
        if transaction.is_none() {
            // A transaction's acknowledgements count when it commits (a counter never goes back).
            self.stats.acknowledged += acked.len() as u64;
        }
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
        self.nack_because(session, tag, transaction, None)
    }

    /// Like [`Core::nack`], the client saying why (an OpenWire poison ack's cause), which the
    /// message carries on its DLQ as `dlqDeliveryFailureCause`. A transaction's rejections
    /// carry none (no client sends a cause with one).
    pub fn nack_because(
        &mut self,
        session: u64,
        tag: u64,
        transaction: Option<&str>,
        cause: Option<&str>,
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
            self.reject(f, cause)?;
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
    pub(super) fn siblings(&self, cid: u64) -> Vec<u64> {
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

    /// Lets one more message through to subscription `id` (a consumer with prefetch 0). On a
    /// composite destination, each member's consumer may answer it; the first to do so takes
    /// it from the others (see [`Core::deliver`]). Pulls do not add up: one is outstanding at
    /// most, as ActiveMQ sets a pulling consumer's window to the pull (a JMS consumer pulls
    /// once per `receive`; a client sending pulls by the thousand is not given as many
    /// messages it never reads).
    pub fn pull(&mut self, session: u64, id: &str) -> Result<(), BrokerError> {
        let cids = self.consumers_of(session, id)?;
        for cid in &cids {
            if let Some(c) = self.consumers.get_mut(cid) {
                c.pulls = c.pulls.max(1);
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
}
