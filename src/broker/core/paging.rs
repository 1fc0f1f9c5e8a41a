//! The `memory_limit` accounting of queued bodies: leaving persistent bodies in the journal past
//! the limit and reading them back before delivery; the flow-control gates.
//!
//! It must never drop a non-persistent body (it is nowhere else).

use std::sync::Arc;

use super::{leave_body_on_disk, Core};
use crate::broker::queue::{held_bytes, Body, Entry};
use crate::broker::BrokerError;
use crate::store::Message;

impl Core {
    /// Counts a queued entry's body against `memory_limit`, or, past the limit, leaves the body
    /// of a persistent message in the journal: the entry keeps everything else (selectors,
    /// priority and expiry need no body) and [`Core::page_in`] reads the body back before
    /// delivery. Non-persistent bodies are nowhere else and always stay; once they alone fill
    /// the limit, the [`MemoryGate`](crate::broker::MemoryGate) tells their producers'
    /// connections to stop reading.
    pub(super) fn admit(&mut self, mut entry: Entry) -> Entry {
        match entry.body {
            Body::InMemory { .. } => return entry,
            Body::OnDisk => {
                self.stats.bodies_left_on_disk += 1;
                return entry;
            }
            Body::Uncounted => {}
        }
        let bytes = entry.held_bytes();
        let total = self.memory.bytes();
        let limit = self.memory.limit();
        let transient = entry.key.is_none();
        if !transient && !entry.message.body.is_empty() && total + bytes > limit {
            if !std::mem::replace(&mut self.paging, true) {
                tracing::warn!(
                    memory_limit = limit,
                    resident = total,
                    "queued message bodies reached memory_limit: further persistent messages \
                     are queued with their bodies in the journal and read back on delivery"
                );
            }
            leave_body_on_disk(&mut entry);
            self.stats.bodies_left_on_disk += 1;
            return entry;
        }
        if self.paging && total + bytes <= limit / 2 {
            self.paging = false;
            tracing::info!(
                memory_limit = limit,
                resident = total,
                "queued message bodies are back under half the memory_limit: bodies stay in \
                 memory again"
            );
        }
        if transient {
            let queued = self.memory.transient() + bytes;
            if queued >= limit && !self.transient_full {
                self.transient_full = true;
                tracing::warn!(
                    memory_limit = limit,
                    non_persistent = queued,
                    "queued non-persistent message bodies reached memory_limit: connections \
                     sending non-persistent messages are paused until consumers make room \
                     (producer flow control)"
                );
            } else if queued <= limit / 2 && self.transient_full {
                self.transient_full = false;
                tracing::info!(
                    memory_limit = limit,
                    non_persistent = queued,
                    "queued non-persistent message bodies are back under half the memory_limit"
                );
            }
        }
        entry.body = Body::InMemory {
            _share: self.memory.share(bytes, transient),
        };
        entry
    }

    /// The gates protocol connections consult before reading more sends.
    pub fn flow_gate(&self) -> crate::broker::FlowGate {
        crate::broker::FlowGate {
            memory: self.memory.gate(),
            store: self.store_usage.gate(),
        }
    }

    /// `entry`'s message with its body, read back from the journal if it was left there.
    pub(super) fn with_body(&self, entry: &Entry) -> Result<Arc<Message>, BrokerError> {
        if !matches!(entry.body, Body::OnDisk) {
            return Ok(entry.message.clone());
        }
        let key = entry
            .key
            .expect("only stored messages leave their body in the journal");
        let store = self
            .store
            .as_ref()
            .ok_or_else(|| BrokerError::NotMaster("the node stepped down".into()))?;
        // The stored message is the one the entry was made from (the core never changes a
        // message once stored), body included.
        let mut bodies = self.bodies.lock().unwrap_or_else(|p| p.into_inner());
        bodies
            .get_or_insert_with(|| store.message_reader())
            .read(key)
            .map(Arc::new)
            .map_err(|e| BrokerError::StoreFailed(e.to_string()))
    }

    /// `entry` (taken off `queue`) ready to deliver, its body read back if needed; `None` if
    /// that read failed, in which case the entry is back on its queue and the failure logged.
    pub(super) fn page_in(&mut self, queue: &str, mut entry: Entry) -> Option<Entry> {
        if !matches!(entry.body, Body::OnDisk) {
            return Some(entry);
        }
        match self.with_body(&entry) {
            Ok(message) => {
                self.stats.bodies_read_back += 1;
                entry.body = Body::InMemory {
                    _share: self.memory.share(held_bytes(&message), false),
                };
                entry.message = message;
                Some(entry)
            }
            Err(error) => {
                tracing::error!(queue, %error, "cannot read a queued message's body back from the journal; the queue waits");
                if let Some(q) = self.queues.get_mut(queue) {
                    q.push(entry);
                }
                None
            }
        }
    }
}
