//! The disk watchdog: notices a store whose disk stopped answering, when the journal's writer
//! has made no progress for `store.stall_timeout`. A write or `fdatasync` that never returns (a
//! dead SAN path, a hung NFS mount, a failing disk retrying for minutes) gives the journal no
//! error to report, and a master stuck on it would keep its ZooKeeper session, and so its role,
//! while confirming nothing. Reads, and a store being opened, taken over or closed, are not
//! watched.
//!
//! It owns one thread, which reads only the journal's [`WriteClock`] (atomics), so that a
//! runtime whose workers are blocked on that disk cannot hold it up. What a stall leads to is
//! its owner's call, made on that thread: a cluster node leaves the cluster and exits
//! (`crate::node`), a standalone node reports it (`crate::server`). It must never touch the
//! store, take a lock that the broker core or the store holds, or wait on the async runtime
//! without a deadline.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::store::WriteClock;

/// What the watchdog tells its owner: `Some(how long)` when the disk is found stalled, then
/// `None` if it answers again.
pub type OnStall = Box<dyn FnMut(Option<Duration>) + Send>;

/// Why a node whose writer made no progress for `stall` counts its disk as stalled, for its
/// log lines and the admin endpoint.
pub fn stall_reason(stall: Duration) -> String {
    format!(
        "the store's disk stalled: the journal's writer (a write, an fsync, a segment's \
         preparation or release) made no progress for {stall:?} (store.stall_timeout)"
    )
}

/// Watches the write clock of the store a node has open (the last one given to
/// [`DiskWatchdog::watch`]); stops when dropped.
pub struct DiskWatchdog {
    clock: Arc<Mutex<Option<WriteClock>>>,
    stop: Arc<AtomicBool>,
}

impl DiskWatchdog {
    /// Starts watching for writes unfinished after `limit` (none when `limit` is zero) in the
    /// store at `directory` (named in the log lines). `on_stall` runs on the watchdog's thread.
    pub fn start(limit: Duration, directory: &Path, on_stall: OnStall) -> DiskWatchdog {
        let watchdog = DiskWatchdog {
            clock: Arc::default(),
            stop: Arc::default(),
        };
        if limit.is_zero() {
            return watchdog;
        }
        let clock = watchdog.clock.clone();
        let stop = watchdog.stop.clone();
        let directory = directory.to_path_buf();
        let started = std::thread::Builder::new()
            .name("disk-watchdog".into())
            .spawn(move || watch(limit, &directory, &clock, &stop, on_stall));
        if let Err(e) = started {
            tracing::warn!(error = %e, "cannot start the disk watchdog thread: a stalled disk goes unnoticed");
        }
        watchdog
    }

    /// Watches `clock` from now on (a store opened again).
    pub fn watch(&self, clock: WriteClock) {
        *self.clock.lock().unwrap_or_else(PoisonError::into_inner) = Some(clock);
    }
}

impl Drop for DiskWatchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The watchdog thread: looks four times per `limit` (at most once a second, at least every
/// 100 ms) until stopped; after a sleep that overran by far, a stall counts from its end.
fn watch(
    limit: Duration,
    directory: &Path,
    clock: &Mutex<Option<WriteClock>>,
    stop: &AtomicBool,
    mut on_stall: OnStall,
) {
    let tick = (limit / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut stalled = false;
    // The end of the last sleep that overran by far: the whole process was paused (a VM
    // snapshot, SIGSTOP) or starved, its writer with it, so a stall counts from then at most.
    let mut resumed: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let asleep = Instant::now();
        std::thread::sleep(tick);
        if asleep.elapsed() > 2 * tick + Duration::from_secs(1) {
            resumed = Some(Instant::now());
        }
        let current = clock.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let busy = current
            .and_then(|clock| clock.stalled_for())
            .map(|busy| resumed.map_or(busy, |resumed| busy.min(resumed.elapsed())));
        match busy.filter(|&busy| busy >= limit) {
            Some(busy) if !stalled => {
                stalled = true;
                // The owner first: a cluster node exits from here, and arms its exit before
                // logging (a log on the stalled disk could block).
                on_stall(Some(busy));
                tracing::error!(
                    directory = %directory.display(),
                    "{}; nothing can be confirmed until it answers",
                    stall_reason(busy)
                );
            }
            None if stalled => {
                stalled = false;
                tracing::info!(directory = %directory.display(), "the store's disk answers again");
                on_stall(None);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A store whose writer is held (as on a stalled disk) is reported once past the limit,
    /// and reported again as answering once its batch is done; the owner hears both.
    #[test]
    fn a_held_writer_is_reported_stalled_then_answering() {
        let dir = tempfile::tempdir().unwrap();
        let journal = crate::store::Journal::open(
            crate::store::JournalOptions {
                directory: dir.path().to_path_buf(),
                log_size: 1 << 20,
                fsync: false,
                only_copy: true,
            },
            Box::new(|_| {}),
        )
        .unwrap();
        let (tx, rx) = mpsc::channel();
        let watchdog = DiskWatchdog::start(
            Duration::from_secs(1),
            dir.path(),
            Box::new(move |stall| {
                let _ = tx.send(stall);
            }),
        );
        watchdog.watch(journal.write_clock());
        let hold = journal.hold_writer();
        let stall = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the stall was reported");
        assert!(
            stall.is_some_and(|d| d >= Duration::from_secs(1)),
            "{stall:?}"
        );
        drop(hold);
        let answer = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the answer was reported");
        assert_eq!(answer, None);
        journal.close().unwrap();
    }
}
