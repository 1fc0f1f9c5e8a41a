//! Producer flow control (ActiveMQ's): which limit holds a connection back, and the gate that
//! tells it when to read its client again. The limits are counted elsewhere: `memory_limit`
//! for non-persistent bodies in [`super::memory`], `store_limit` for the journal in
//! [`super::store_limit`].

use std::fmt;

use tokio::sync::Notify;

use super::{MemoryGate, StoreGate};

/// Why a connection stops reading its client (see `Session::hold_back`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    /// It sent non-persistent messages and they fill `memory_limit`.
    pub memory: bool,
    /// It sent persistent messages and the store is at `store_limit`.
    pub store: bool,
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match (self.memory, self.store) {
            (true, true) => "memory_limit and store_limit reached",
            (false, true) => "store_limit reached by the journal",
            _ => "memory_limit reached by non-persistent messages",
        })
    }
}

/// The gates a connection waits on while held back; cloned out of its session so that it can
/// be awaited while the session is in use.
#[derive(Debug, Clone)]
pub struct FlowGate {
    pub(super) memory: MemoryGate,
    pub(super) store: StoreGate,
}

impl FlowGate {
    /// Resolves once each limit that `hold` names has room (at once for `None`).
    pub async fn room(&self, hold: Option<Hold>) {
        let Some(hold) = hold else {
            return;
        };
        if hold.memory {
            self.memory.room().await;
        }
        if hold.store {
            self.store.room().await;
        }
    }
}

/// Waits until `is_full` is false, woken by `room` (told whenever it may have become false).
pub(super) async fn wait_for_room(room: &Notify, is_full: impl Fn() -> bool) {
    loop {
        let notified = room.notified();
        tokio::pin!(notified);
        // Registered before the check, so a wake-up between the two is not missed.
        notified.as_mut().enable();
        if !is_full() {
            return;
        }
        notified.await;
    }
}
