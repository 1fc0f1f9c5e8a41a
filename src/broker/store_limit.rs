//! The broker's `store_limit` (ActiveMQ's `<systemUsage><storeUsage limit>`): how much disk
//! the journal's retained segments may take before producers of persistent messages are
//! stopped, and the gate their connections ask.
//!
//! Owns the figures only. The core tells it the store's size ([`StoreUsage::update`]) when
//! segments may have come or gone; a send reads one atomic flag. While the store is full, the
//! core refuses persistent sends with `send_fail_if_no_space`, and otherwise a connection that
//! sent one stops being read until [`StoreGate::room`] resolves (producer flow control). It
//! never blocks anything itself: waiting is the protocol layer's choice.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

use super::BrokerError;

#[derive(Debug)]
struct Usage {
    limit: u64,
    /// The store's size as last told (see `Store::disk_bytes`).
    bytes: AtomicU64,
    /// `bytes` is at or over `limit`.
    full: AtomicBool,
    /// Told whenever `full` goes from true to false.
    room: Notify,
    /// What persistent sends do while full, for the log line.
    refuse: bool,
}

/// The store's size against `store_limit`, as the core keeps it.
#[derive(Debug)]
pub(super) struct StoreUsage(Arc<Usage>);

impl StoreUsage {
    /// `refuse`: `send_fail_if_no_space`.
    pub fn new(limit: u64, refuse: bool) -> StoreUsage {
        StoreUsage(Arc::new(Usage {
            limit,
            bytes: AtomicU64::new(0),
            full: AtomicBool::new(false),
            room: Notify::new(),
            refuse,
        }))
    }

    pub fn limit(&self) -> u64 {
        self.0.limit
    }

    pub fn bytes(&self) -> u64 {
        self.0.bytes.load(Ordering::Relaxed)
    }

    /// The store is at or over its limit: persistent sends wait or are refused.
    pub fn is_full(&self) -> bool {
        self.0.full.load(Ordering::Relaxed)
    }

    /// The store now takes `bytes`. Logs when it becomes full and when it has room again
    /// (once each), and wakes the connections waiting for room.
    pub fn update(&self, bytes: u64) {
        let usage = &self.0;
        usage.bytes.store(bytes, Ordering::Relaxed);
        let full = bytes >= usage.limit;
        if usage.full.swap(full, Ordering::Relaxed) == full {
            return;
        }
        if full {
            let then = if usage.refuse {
                "are refused (send_fail_if_no_space)"
            } else {
                "wait: connections sending them are not read (producer flow control)"
            };
            tracing::warn!(
                store_bytes = bytes,
                store_limit = usage.limit,
                "the store is full: its journal takes {bytes} bytes, store_limit is {} bytes; \
                 persistent sends {then} until consumers free space",
                usage.limit
            );
        } else {
            tracing::info!(
                store_bytes = bytes,
                store_limit = usage.limit,
                "the store has room again: its journal takes {bytes} bytes, under store_limit \
                 ({} bytes); persistent sends go on",
                usage.limit
            );
            usage.room.notify_waiters();
        }
    }

    /// The refusal of a persistent send (or commit) while full, naming the limit.
    pub fn refusal(&self) -> BrokerError {
        BrokerError::StoreFull {
            used: self.bytes(),
            limit: self.limit(),
        }
    }

    pub fn gate(&self) -> StoreGate {
        StoreGate(self.0.clone())
    }
}

/// `store_limit`'s default, ActiveMQ's `storeUsage` default (100 GB).
pub const DEFAULT_STORE_LIMIT: u64 = 100 << 30;

/// `store_limit` capped to what the store's filesystem can hold: the space still free there
/// plus what the journal takes already, less what the limit does not count: a twentieth for
/// the index, and two segments of `log_size` (the one prepared ahead, and one more the journal
/// may start before the limit holds producers back). ActiveMQ resets its store limit to the
/// usable space the same way at start. Logged as a warning when the limit was configured, as
/// information when it is the default (most disks are smaller than 100 GiB). `free`: `None`
/// when the system does not tell, and the limit stays. Too little room for a journal of two
/// segments under the cap is an error naming `log_size`.
pub(super) fn capped(
    limit: u64,
    used: u64,
    free: Option<u64>,
    log_size: u64,
    directory: &std::path::Path,
) -> Result<u64, BrokerError> {
    let Some(free) = free else {
        return Ok(limit);
    };
    let usable = free.saturating_add(used);
    let cap = (usable - usable / 20).saturating_sub(2 * log_size);
    if cap < 2 * log_size {
        return Err(BrokerError::StoreTooSmall {
            directory: directory.display().to_string(),
            usable,
            log_size,
        });
    }
    if limit <= cap {
        return Ok(limit);
    }
    let message = format!(
        "store_limit is {limit} bytes, whilst the store directory {} only has {usable} bytes \
         of usable space ({free} free, {used} taken by the journal): store_limit is set to \
         {cap} bytes",
        directory.display()
    );
    if limit == DEFAULT_STORE_LIMIT {
        tracing::info!(store_limit = limit, usable, "{message}");
    } else {
        tracing::warn!(store_limit = limit, usable, "{message}");
    }
    Ok(cap)
}

/// What a connection asks before reading more from a producer of persistent messages.
#[derive(Debug, Clone)]
pub struct StoreGate(Arc<Usage>);

impl StoreGate {
    /// The store is at or over `store_limit`.
    pub fn is_full(&self) -> bool {
        self.0.full.load(Ordering::Relaxed)
    }

    /// Full, and persistent sends wait (no `send_fail_if_no_space`, which refuses them): a
    /// connection that sends them should stop reading until [`StoreGate::room`] resolves.
    pub fn holds_back(&self) -> bool {
        !self.0.refuse && self.is_full()
    }

    /// Resolves once the store is under `store_limit` (at once if it is already).
    pub async fn room(&self) {
        super::flow::wait_for_room(&self.0.room, || self.is_full()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_gate_closes_at_the_limit_and_opens_under_it() {
        let usage = StoreUsage::new(100, false);
        let gate = usage.gate();
        usage.update(99);
        assert!(!gate.is_full());
        usage.update(100);
        assert!(gate.is_full() && usage.is_full());
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.room().await }
        });
        tokio::task::yield_now().await;
        usage.update(150);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        usage.update(40);
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("the waiter is woken when the store is under its limit")
            .unwrap();
        assert_eq!(usage.bytes(), 40);
        let refusal = usage.refusal().to_string();
        assert!(refusal.contains("store_limit"), "{refusal}");
    }

    #[test]
    fn the_limit_is_capped_to_free_space_plus_the_journal() {
        let dir = std::path::Path::new("data");
        let capped = |limit, used, free, log_size| capped(limit, used, free, log_size, dir).ok();
        // 600 usable, less a twentieth (30) and two 10-byte segments.
        assert_eq!(capped(1000, 100, Some(500), 10), Some(550));
        assert_eq!(capped(1000, 100, Some(5000), 10), Some(1000));
        assert_eq!(capped(1000, 100, None, 10), Some(1000));
        // Room for the margin and two segments under the cap: 4 x 100 + 30.
        assert_eq!(capped(1000, 0, Some(600), 100), Some(370));
        // Not for a 96 MiB volume with 32 MiB segments.
        let error = super::capped(u64::MAX, 0, Some(96 << 20), 32 << 20, dir).unwrap_err();
        assert!(error.to_string().contains("log_size"), "{error}");
    }
}
