//! The seam to the store: appending records (at once, deferred to the sender, or in chunks),
//! the store's health and size, and the confirmed watermark that makes appended changes
//! visible, in append order.
//!
//! It must never publish or confirm a persistent change before the watermark covers its record,
//! and never write or sync the journal under the core's lock: a sender that writes its own
//! record runs the flusher it is handed once the lock is released.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::{now_ms, with_keys, Core, Pending, Publish, Routed, MOVE_RECORD_LEN};
use crate::broker::{BrokerError, Confirmation};
use crate::store::{Position, Record, Store};

/// A session writes its own sends' records (inline) only after it was the only sender for this
/// long; see [`Core::take_flush`].
const SOLE_SENDER_FOR: Duration = Duration::from_millis(10);

impl Core {
    /// Appends one record; returns the key base position and the record's end.
    pub(super) fn append(
        &mut self,
        entries: Vec<crate::store::Entry>,
    ) -> Result<(Position, Position), BrokerError> {
        self.append_waking(entries, true)
    }

    /// Appends removals (and the like) that need not be atomic, in as many records as
    /// [`crate::store::MAX_ENTRIES`] requires: a cumulative ack or a removed durable
    /// subscription may cover more messages than one record holds.
    pub(super) fn append_in_chunks(
        &mut self,
        entries: Vec<crate::store::Entry>,
    ) -> Result<(), BrokerError> {
        let mut entries = entries.into_iter().peekable();
        while entries.peek().is_some() {
            let chunk: Vec<_> = entries.by_ref().take(crate::store::MAX_ENTRIES).collect();
            self.append(chunk)?;
        }
        Ok(())
    }

    /// Like [`Core::append`] for a sender that waits for the confirmation: the journal's writer
    /// is not woken, and the caller flushes (see [`Core::take_flush`]).
    pub(super) fn append_deferred(
        &mut self,
        entries: Vec<crate::store::Entry>,
    ) -> Result<(Position, Position), BrokerError> {
        self.append_waking(entries, false)
    }

    /// Who must write what `session`'s send or commit queued, once the core's lock is released:
    /// the sender's own thread when it is the only one waiting for a confirmation and no other
    /// session sent for [`SOLE_SENDER_FOR`] (and no batch is being written, see
    /// `Flusher::flush`); else the journal's writer thread, woken here, which batches
    /// concurrent senders. Concurrent senders must not write inline: a runtime thread blocked in
    /// an fsync does not read the other connections' sends, which would then arrive one by one
    /// and each pay an fsync of its own.
    pub fn take_flush(&mut self, session: u64) -> Option<crate::store::Flusher> {
        if !std::mem::take(&mut self.flush_due) {
            return None;
        }
        let now = Instant::now();
        if session != self.last_sender {
            self.last_sender = session;
            self.senders_mixed_at = now;
        }
        let store = self.store.as_ref()?;
        if self.pending.len() > 1 || now.duration_since(self.senders_mixed_at) < SOLE_SENDER_FOR {
            store.wake_writer();
            return None;
        }
        Some(store.flusher())
    }

    fn append_waking(
        &mut self,
        entries: Vec<crate::store::Entry>,
        wake: bool,
    ) -> Result<(Position, Position), BrokerError> {
        if let Some(reason) = &self.failed {
            return Err(BrokerError::StoreFailed(reason.clone()));
        }
        let Some(store) = self.store.as_mut() else {
            return Err(BrokerError::NotMaster("the node stepped down".into()));
        };
        let record = Record {
            epoch: self.epoch,
            entries,
        };
        let appended = if wake {
            store.append(&record)
        } else {
            self.flush_due = true;
            store.append_deferred(&record)
        };
        match appended {
            Ok(position) => {
                let end = store.end();
                if end >= self.measure_at {
                    self.measure_store();
                }
                Ok((position, end))
            }
            Err(error) => {
                let reason = error.to_string();
                tracing::error!(%reason, "store append failed; refusing all further writes");
                self.fail_waiting(&reason);
                Err(BrokerError::StoreFailed(reason))
            }
        }
    }

    /// Refuses everything from now on, and fails every confirmation still waiting.
    fn fail_waiting(&mut self, reason: &str) {
        self.failed = Some(reason.to_string());
        for pending in self.pending.drain(..) {
            if let Some(reply) = pending.reply {
                let _ = reply.send(Err(BrokerError::StoreFailed(reason.to_string())));
            }
        }
    }

    /// Releases the journal segments that confirmed records made releasable (in a cluster they
    /// wait for the confirmation; see `Store::hold_releases_until_confirmed`). Called by the
    /// periodic sweep, outside the journal's writer thread.
    pub fn release_confirmed(&mut self) {
        if let Some(store) = &mut self.store {
            store.release_confirmed();
        }
    }

    /// Tells the `store_limit` gate the store's size (see `Store::disk_bytes`). Called by the
    /// periodic sweep, by an append once the journal grew by a sixteenth of a segment since
    /// the last time (a new segment is noticed that soon), and while the store is full at
    /// each confirmation (a released segment is deleted once a batch is durable).
    pub fn measure_store(&mut self) {
        let Some(store) = &self.store else {
            return;
        };
        self.store_usage.update(store.disk_bytes());
        self.measure_at = Position(store.end().0 + (store.log_size() / 16).max(1));
    }

    /// A persistent send (or a commit carrying one) that the store has no room for, with
    /// `send_fail_if_no_space`: its refusal, naming the limit. Without, it is stored and its
    /// connection is held back (`Session::hold_back`).
    pub(super) fn refuse_if_full(&self) -> Result<(), BrokerError> {
        if self.options.send_fail_if_no_space && self.store_usage.is_full() {
            return Err(self.store_usage.refusal());
        }
        Ok(())
    }

    /// Notices a store that failed on its own (the journal's writer could not write, sync or
    /// prepare a segment: a full disk, say). No append reports that until the next one is
    /// tried, so without this a sender whose record was in the failed batch would wait for
    /// ever; called on every sweep tick.
    pub fn check_store(&mut self) {
        if self.failed.is_some() {
            return;
        }
        let Some(reason) = self.store.as_ref().and_then(Store::failure) else {
            return;
        };
        tracing::error!(%reason, waiting = self.pending.len(), "the store failed; refusing all further writes and failing what waits for confirmation");
        self.fail_waiting(&reason);
    }

    /// Resolves once the messages recovered at start are delivered (see [`Core::new`]); done
    /// for a second caller.
    pub fn take_started(&mut self) -> Confirmation {
        std::mem::replace(&mut self.started, Confirmation::done())
    }

    /// Why the store failed, if it did (noticed by [`Core::check_store`] or by an append).
    pub fn store_failure(&mut self) -> Option<String> {
        self.check_store();
        self.failed.clone()
    }

    #[cfg(test)]
    pub(crate) fn store(&self) -> &Store {
        self.store.as_ref().expect("the store is open")
    }

    pub(super) fn end(&self) -> Position {
        self.store.as_ref().map_or(self.closed_end, Store::end)
    }

    /// Stops the core: every waiting confirmation fails with `reason` and later requests are
    /// refused. Returns the store so the caller can close it before reopening it in another role.
    pub fn close(&mut self, reason: &str) -> Option<Store> {
        self.closed_end = self.end();
        for pending in self.pending.drain(..) {
            if let Some(reply) = pending.reply {
                let _ = reply.send(Err(BrokerError::NotMaster(reason.to_string())));
            }
        }
        self.store.take()
    }

    /// A confirmation that resolves once everything appended so far is confirmed.
    pub fn flush(&mut self) -> Confirmation {
        self.wait_for(Vec::new())
    }

    /// Queues `publish` behind the current end of the journal.
    pub(super) fn wait_for(&mut self, publish: Vec<Publish>) -> Confirmation {
        let end = self.end();
        if self.pending.is_empty() && self.confirmed >= end {
            self.publish_now(publish);
            return Confirmation::done();
        }
        let (reply, confirmation) = Confirmation::pending();
        self.pending.push_back(Pending {
            end,
            publish,
            reply: Some(reply),
        });
        confirmation
    }

    /// The watermark moved: everything before `position` is held as `sync` requires.
    pub fn on_confirmed(&mut self, position: Position) {
        if position <= self.confirmed {
            return;
        }
        self.confirmed = position;
        if let Some(store) = &mut self.store {
            store.set_confirmed(position);
        }
        if self.store_usage.is_full() {
            self.measure_store();
        }
        let mut touched = BTreeSet::new();
        while self.pending.front().is_some_and(|p| p.end <= position) {
            let pending = self.pending.pop_front().expect("checked non-empty");
            for p in pending.publish {
                self.publish(p, &mut touched);
            }
            if let Some(reply) = pending.reply {
                let _ = reply.send(Ok(()));
            }
        }
        self.dispatch_all(touched);
    }

    fn publish(&mut self, publish: Publish, touched: &mut BTreeSet<String>) {
        if let Some(due) = publish.due_after(now_ms) {
            self.hold(due, publish);
            return;
        }
        match publish {
            // Due already (recovered after its time): its move is a record of its own, written
            // by [`Core::release_due`], not from inside a confirmation.
            Publish::Scheduled(entry) => {
                self.hold(entry.message.deliver_at, Publish::Scheduled(entry))
            }
            Publish::Queue(queue, entry) => {
                self.stats.enqueued += 1;
                self.push_ready(queue, entry, touched);
            }
            Publish::Recovered(queue, entries) => self.push_recovered(queue, entries, touched),
            Publish::Topic(topic, message, origin) => {
                self.publish_to_subscribers(&topic, message, origin)
            }
        }
    }

    /// Publishes what needs no confirmation (nothing stored, or already confirmed).
    pub(super) fn publish_now(&mut self, publish: Vec<Publish>) {
        let mut touched = BTreeSet::new();
        for p in publish {
            self.publish(p, &mut touched);
        }
        self.dispatch_all(touched);
    }

    /// Adds one move (`entries`, `len` bytes as [`record_len`](super::record_len) counts them) to
    /// `chunk` (the moves gathered for one record, and their length), appending the chunk first
    /// when the move would take it past [`MOVE_RECORD_LEN`] or a record's entries.
    pub(super) fn gather_move(
        &mut self,
        chunk: &mut (Routed, usize),
        len: usize,
        entries: Vec<crate::store::Entry>,
        stored: bool,
        publish: Vec<Publish>,
    ) -> Result<(), BrokerError> {
        if !chunk.0.entries.is_empty()
            && (chunk.1 + len > MOVE_RECORD_LEN
                || chunk.0.entries.len() + entries.len() > crate::store::MAX_ENTRIES)
        {
            self.append_moves(std::mem::take(&mut chunk.0))?;
            chunk.1 = 0;
        }
        chunk.0.push(entries, stored, publish);
        chunk.1 += len;
        Ok(())
    }

    /// Appends one record of moves gathered by [`Core::retry_batch`] or [`Core::move_due`];
    /// the moved messages show on their destinations once it is confirmed.
    pub(super) fn append_moves(&mut self, moves: Routed) -> Result<(), BrokerError> {
        let Routed {
            entries,
            publish,
            keyed,
        } = moves;
        let publish = if entries.is_empty() {
            publish
        } else {
            let (start, _) = self.append(entries)?;
            with_keys(publish, &keyed, start)
        };
        drop(self.wait_for(publish));
        Ok(())
    }
}
