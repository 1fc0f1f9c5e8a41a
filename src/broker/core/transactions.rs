//! Transactions: their sends and acknowledgements, stored by the commit as one record, and the
//! rollback that redelivers.
//!
//! It must never store part of a transaction.

use std::collections::BTreeSet;

use super::{fits_one_record, remove_entry, with_keys, Core, Routed, Transaction};
use crate::broker::{BrokerError, Confirmation, Destination};

impl Core {
    pub fn begin(&mut self, session: u64, tx: &str) -> Result<(), BrokerError> {
        let state = self.session(session)?;
        if state.transactions.contains_key(tx) {
            return Err(BrokerError::TransactionExists(tx.to_string()));
        }
        state
            .transactions
            .insert(tx.to_string(), Transaction::default());
        Ok(())
    }

    /// Stores a transaction's sends and acknowledgements as one record: all or nothing.
    pub fn commit(&mut self, session: u64, tx: &str) -> Result<Confirmation, BrokerError> {
        let (sends, removes) = {
            let open = self
                .session(session)?
                .transactions
                .get(tx)
                .ok_or_else(|| BrokerError::UnknownTransaction(tx.to_string()))?;
            let removes: Vec<_> = open
                .acks
                .iter()
                .filter_map(|(_, _, f)| match (&f.queue, f.entry.key) {
                    (Some(queue), Some(key)) => Some(remove_entry(queue, key)),
                    _ => None,
                })
                .collect();
            (open.sends.clone(), removes)
        };
        if sends
            .iter()
            .any(|(_, m)| m.stored_for_mode() || self.held_when_sent(&m.headers))
        {
            // Refused with the transaction still open, as a commit too large for a record.
            self.refuse_if_full()?;
        }
        let mut scheduled = Vec::with_capacity(sends.len());
        for (destination, message) in sends {
            for delivery in self.schedule(session, message)? {
                scheduled.push((destination.clone(), delivery));
            }
        }
        let sends = scheduled;
        let Routed {
            mut entries,
            publish,
            keyed,
        } = self.route_all(session, sends);
        entries.extend(removes);
        // A commit the journal would refuse (and fail on, taking every later write with it) is
        // refused instead, the transaction still open: the client may roll it back.
        if !fits_one_record(&entries) {
            return Err(BrokerError::TransactionTooLarge(
                tx.to_string(),
                format!(
                    "its commit would make a record of more than {} bytes, the journal's \
                     limit: commit in smaller transactions",
                    crate::store::record::MAX_RECORD_LEN
                ),
            ));
        }
        let transaction = self
            .session(session)?
            .transactions
            .remove(tx)
            .expect("looked up above, under the same lock");
        self.transaction_bytes = self.transaction_bytes.saturating_sub(transaction.bytes);
        for (_, message) in &transaction.sends {
            if !message.producer_id.is_empty() {
                self.record_producer(&message.producer_id, message.producer_sequence);
            }
        }
        self.stats.acknowledged += transaction.acks.len() as u64;
        for f in transaction.nacks {
            self.reject(f, None)?;
        }
        if entries.is_empty() {
            // After what was sent before it, which may still wait for its records (see
            // `Core::send`).
            return Ok(self.wait_for(publish));
        }
        let (start, _) = self.append_deferred(entries)?;
        Ok(self.wait_for(with_keys(publish, &keyed, start)))
    }

    /// Drops the sends of open transaction `tx` to `destination` (a temporary destination
    /// deleted before the commit, whose messages ActiveMQ's commit hands to the deleted
    /// destination: nobody); the commit must not make it again as an ordinary queue. Their
    /// bodies stay counted until the commit or rollback. Returns how many were dropped.
    pub fn drop_sends_to(
        &mut self,
        session: u64,
        tx: &str,
        destination: &Destination,
    ) -> Result<usize, BrokerError> {
        let open = self
            .session(session)?
            .transactions
            .get_mut(tx)
            .ok_or_else(|| BrokerError::UnknownTransaction(tx.to_string()))?;
        let before = open.sends.len();
        open.sends.retain(|(d, _)| d != destination);
        Ok(before - open.sends.len())
    }

    /// Drops a transaction's sends; its acknowledged messages are redelivered.
    pub fn abort(&mut self, session: u64, tx: &str) -> Result<(), BrokerError> {
        self.rollback(session, tx, false).map(drop)
    }

    /// Drops a transaction's sends. Its acknowledged messages are redelivered, or with
    /// `keep_delivered` they go back to the consumers they were delivered to, unacknowledged
    /// (a JMS client redelivers rolled-back messages itself, then acknowledges or poisons
    /// them); a consumer that is gone meanwhile has its messages redelivered. Returns the tags
    /// of the deliveries that stay with their consumers.
    pub fn rollback(
        &mut self,
        session: u64,
        tx: &str,
        keep_delivered: bool,
    ) -> Result<Vec<u64>, BrokerError> {
        let transaction = self
            .session(session)?
            .transactions
            .remove(tx)
            .ok_or_else(|| BrokerError::UnknownTransaction(tx.to_string()))?;
        self.transaction_bytes = self.transaction_bytes.saturating_sub(transaction.bytes);
        let mut touched = BTreeSet::new();
        let mut kept = Vec::new();
        for (cid, tag, f) in transaction.acks {
            if keep_delivered {
                if let Some(consumer) = self
                    .consumers
                    .get_mut(&cid)
                    .filter(|c| c.session == session)
                {
                    consumer.hold(tag, f);
                    self.tags.insert(tag, cid);
                    kept.push(tag);
                    continue;
                }
            }
            self.redeliver(f, &mut touched)?;
        }
        for f in transaction.nacks {
            self.redeliver(f, &mut touched)?;
        }
        self.dispatch_all(touched);
        Ok(kept)
    }
}
