//! The writer's clock: since when the journal's writer has been at its current work (a batch's
//! write and `fdatasync`, a rotation, a truncation) without finishing a batch.
//!
//! Whoever holds the writer's mutex for work marks it busy ([`WriteClock::busy`]) and moves it
//! on at each finished batch, release, synced segment or preallocated chunk
//! ([`WriteClock::progressed`]); the disk watchdog
//! (`crate::watchdog`) reads it from a thread of its own. It is atomics only: a writer blocked
//! in the kernel on a stalled disk must never block its reader.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A handle on a journal's writer clock, read from any thread.
#[derive(Clone, Debug)]
pub struct WriteClock(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    base: Instant,
    /// Milliseconds since `base`, plus one, at which the current work began or last made
    /// progress; 0 while the writer is idle.
    since: AtomicU64,
}

/// The writer is at work until this is dropped.
pub(super) struct Busy<'a>(&'a Inner);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.since.store(0, Ordering::Release);
    }
}

impl Default for WriteClock {
    fn default() -> Self {
        WriteClock(Arc::new(Inner {
            base: Instant::now(),
            since: AtomicU64::new(0),
        }))
    }
}

impl Inner {
    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }
}

impl WriteClock {
    /// The writer starts work (it holds the writer's mutex); idle again when the guard drops.
    pub(super) fn busy(&self) -> Busy<'_> {
        self.0.since.store(self.0.now(), Ordering::Release);
        Busy(&self.0)
    }

    /// The writer finished a batch, or some other write of this journal finished (the disk
    /// answers): its work so far did not stall. Nothing while it is idle, even against a
    /// writer going idle at the same moment on another thread.
    pub(super) fn progressed(&self) {
        let now = self.0.now();
        let _ = self
            .0
            .since
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |since| {
                (since != 0).then_some(now)
            });
    }

    /// Runs `f` (the durable callback, which takes the broker core's lock: a takeover pushes
    /// its whole backlog to consumers under it) with the clock stopped, then moves it on:
    /// time spent there is the core's, not the disk's.
    pub(super) fn outside<T>(&self, f: impl FnOnce() -> T) -> T {
        let was = self.0.since.swap(0, Ordering::AcqRel);
        let result = f();
        if was != 0 {
            self.0.since.store(self.0.now(), Ordering::Release);
        }
        result
    }

    /// How long the writer has been at work without finishing a batch; `None` while it is idle.
    pub fn stalled_for(&self) -> Option<Duration> {
        let since = self.0.since.load(Ordering::Acquire);
        (since != 0).then(|| Duration::from_millis(self.0.now().saturating_sub(since)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_runs_only_while_the_writer_is_busy_and_restarts_at_each_batch() {
        let clock = WriteClock::default();
        assert_eq!(clock.stalled_for(), None);
        clock.progressed();
        assert_eq!(clock.stalled_for(), None, "progress while idle is no work");
        {
            let _busy = clock.busy();
            std::thread::sleep(Duration::from_millis(30));
            let stalled = clock.stalled_for().expect("busy");
            assert!(stalled >= Duration::from_millis(30), "{stalled:?}");
            clock.progressed();
            let restarted = clock.stalled_for().expect("still busy");
            assert!(restarted < stalled, "{restarted:?} after {stalled:?}");
        }
        assert_eq!(clock.stalled_for(), None);
    }

    /// The durable callback's time is the core's: the clock stops while it runs and starts
    /// again after it, and an idle clock stays idle.
    #[test]
    fn the_clock_stops_while_the_durable_callback_runs() {
        let clock = WriteClock::default();
        {
            let _busy = clock.busy();
            std::thread::sleep(Duration::from_millis(30));
            let inside = clock.outside(|| clock.stalled_for());
            assert_eq!(inside, None, "stopped inside");
            let after = clock.stalled_for().expect("busy again after");
            assert!(
                after < Duration::from_millis(30),
                "{after:?}: started again"
            );
        }
        clock.outside(|| ());
        assert_eq!(clock.stalled_for(), None, "an idle clock stays idle");
    }
}
