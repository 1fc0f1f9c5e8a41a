//! The broker's `memory_limit` accounting: bytes of queued message bodies held in memory, and
//! the gate that pauses producers of non-persistent messages (ActiveMQ's producer flow control).
//!
//! Owns the counters only. Persistent bodies past the limit are left in the journal (the core
//! decides, see `Core::admit`); non-persistent bodies are nowhere else, so while they alone
//! exceed the limit, a connection that sends them is asked to stop reading ([`MemoryGate`]),
//! which stops its producer through TCP back-pressure until consumers make room. It must never
//! block anything itself: waiting is the protocol layer's choice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Counters shared by the core, every queued entry's [`Resident`] share and every
/// [`MemoryGate`].
#[derive(Debug)]
struct Usage {
    limit: u64,
    /// Bodies held in memory, persistent and not.
    bytes: AtomicU64,
    /// The non-persistent part of `bytes`.
    transient: AtomicU64,
    /// Told whenever `transient` drops from at or over the limit to under it.
    room: Notify,
}

/// The body bytes a broker core holds in memory for queued messages.
#[derive(Debug, Clone)]
pub(super) struct Memory(Arc<Usage>);

impl Memory {
    pub fn new(limit: u64) -> Memory {
        Memory(Arc::new(Usage {
            limit,
            bytes: AtomicU64::new(0),
            transient: AtomicU64::new(0),
            room: Notify::new(),
        }))
    }

    pub fn limit(&self) -> u64 {
        self.0.limit
    }

    /// Bodies held in memory, persistent and not.
    pub fn bytes(&self) -> u64 {
        self.0.bytes.load(Ordering::Relaxed)
    }

    /// The non-persistent part of [`Memory::bytes`].
    pub fn transient(&self) -> u64 {
        self.0.transient.load(Ordering::Relaxed)
    }

    /// Counts `bytes` until the returned share is dropped.
    pub fn share(&self, bytes: u64, transient: bool) -> Resident {
        self.0.bytes.fetch_add(bytes, Ordering::Relaxed);
        if transient {
            self.0.transient.fetch_add(bytes, Ordering::Relaxed);
        }
        Resident {
            bytes,
            transient,
            memory: self.clone(),
        }
    }

    pub fn gate(&self) -> MemoryGate {
        MemoryGate(self.0.clone())
    }
}

/// Bytes of one queued entry's body in the total held in memory: added when made, taken off
/// when dropped, so every way an entry goes (acked, expired, dead-lettered, deleted with its
/// queue) keeps the total right.
#[derive(Debug)]
pub(super) struct Resident {
    bytes: u64,
    transient: bool,
    memory: Memory,
}

impl Clone for Resident {
    fn clone(&self) -> Resident {
        self.memory.share(self.bytes, self.transient)
    }
}

impl Drop for Resident {
    fn drop(&mut self) {
        let usage = &self.memory.0;
        usage.bytes.fetch_sub(self.bytes, Ordering::Relaxed);
        if self.transient {
            let before = usage.transient.fetch_sub(self.bytes, Ordering::Relaxed);
            if before >= usage.limit && before - self.bytes < usage.limit {
                usage.room.notify_waiters();
            }
        }
    }
}

/// What a connection asks before reading more from a producer of non-persistent messages.
#[derive(Debug, Clone)]
pub struct MemoryGate(Arc<Usage>);

impl MemoryGate {
    /// Non-persistent queued bodies alone fill `memory_limit`: a connection that sends them
    /// should stop reading until [`MemoryGate::room`] resolves.
    pub fn is_full(&self) -> bool {
        self.0.transient.load(Ordering::Relaxed) >= self.0.limit
    }

    /// Resolves once non-persistent queued bodies are under `memory_limit` (at once if they
    /// are already).
    pub async fn room(&self) {
        super::flow::wait_for_room(&self.0.room, || self.is_full()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_gate_closes_at_the_limit_of_transient_bodies_and_opens_when_one_goes() {
        let memory = Memory::new(100);
        let persistent = memory.share(500, false);
        let gate = memory.gate();
        assert!(!gate.is_full(), "persistent bodies do not close the gate");
        let first = memory.share(60, true);
        let second = memory.share(40, true);
        assert!(gate.is_full());
        assert_eq!((memory.bytes(), memory.transient()), (600, 100));
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.room().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(second);
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("the waiter is woken when a transient body goes")
            .unwrap();
        drop((first, persistent));
        assert_eq!((memory.bytes(), memory.transient()), (0, 0));
    }
}
