//! The process's open files: raises their limit at start, as the JVM does for ActiveMQ, and
//! decides how many of them client connections may take, so that a flood of connections never
//! takes the files the store needs (measured on 2026-11-29 with `ulimit -n 128`: 110 idle
//! clients took every free one, the index's next write failed with "Too many open files" and
//! the index was given up until a restart rebuilt it).
//!
//! Owns the limit and the count of client connections only. It must never open or close a
//! file or a socket itself: the server takes a [`ClientSlot`] before it serves a connection
//! and refuses the connection, naming the limit, when none is left.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Files kept back from client connections whatever the limit: the journal's segments, the
/// index's tables (at most `store::index` `MAX_OPEN_TABLES`), replication links, ZooKeeper,
/// the admin endpoint and connections being refused.
pub const RESERVED_MIN: u64 = 512;

/// The share of a large limit kept back (one eighth), for a store whose journal has many
/// segments open for reading.
const RESERVED_SHARE: u64 = 8;

/// At most one warning about refused connections this often (each says how many since the
/// last), however the count flaps around the limit.
pub const WARN_EVERY: Duration = Duration::from_secs(60);

/// Connections being refused at once (each is read for up to half a second to tell its
/// protocol, then told why), when a limit is known: past it a connection is closed unanswered,
/// so that a flood of clients that connect and say nothing cannot take the reserve either.
pub const REFUSALS_AT_ONCE: usize = 64;

/// The slots of this process, once [`raise_limit`] has run (`ferromq broker`); unlimited
/// until then (the tests' in-process brokers).
static SLOTS: OnceLock<ClientSlots> = OnceLock::new();

/// Raises the soft limit of open files to the hard one (Unix; elsewhere nothing to do),
/// logs it, and from then on lets client connections take all but the reserve of it (the
/// slots [`client_slots`] hands out).
pub fn raise_limit() {
    let slots = match limit::raise() {
        Some((limit, raised_from)) => {
            let slots = ClientSlots::for_limit(limit);
            match raised_from {
                Some(from) => tracing::info!(
                    limit,
                    raised_from = from,
                    client_connections = slots.max,
                    "open-file limit raised to the hard limit"
                ),
                None => tracing::info!(limit, client_connections = slots.max, "open-file limit"),
            }
            if (slots.max as u64) < RESERVED_MIN {
                tracing::warn!(
                    limit,
                    client_connections = slots.max,
                    "the open-file limit leaves room for few client connections; raise it \
                     (ulimit -n, or LimitNOFILE in the systemd unit)"
                );
            }
            slots
        }
        None => ClientSlots::unlimited(),
    };
    SLOTS.get_or_init(|| slots);
}

/// The process's client slots ([`raise_limit`]'s, or unlimited when it has not run).
pub fn client_slots() -> ClientSlots {
    SLOTS.get().cloned().unwrap_or_else(ClientSlots::unlimited)
}

/// How many client connections may be open at once, shared by every connector.
#[derive(Clone, Debug)]
pub struct ClientSlots {
    taken: Arc<AtomicUsize>,
    /// Most connections at once.
    pub max: usize,
    /// The open-file limit it was derived from (0: none known).
    pub limit: u64,
    /// When refusals were last warned about, and how many came since.
    warned: Arc<Mutex<(Option<Instant>, u64)>>,
    /// Connections being refused now, and the most at once.
    refusals: Arc<AtomicUsize>,
    max_refusals: usize,
}

impl ClientSlots {
    /// Slots for an open-file limit of `limit`: all but the reserve.
    pub fn for_limit(limit: u64) -> ClientSlots {
        let reserved = (limit / RESERVED_SHARE).max(RESERVED_MIN);
        let max = usize::try_from(limit.saturating_sub(reserved)).unwrap_or(usize::MAX);
        ClientSlots {
            taken: Arc::default(),
            max,
            limit,
            warned: Arc::default(),
            refusals: Arc::default(),
            max_refusals: REFUSALS_AT_ONCE,
        }
    }

    /// No limit known: every connection gets a slot.
    pub fn unlimited() -> ClientSlots {
        ClientSlots {
            max: usize::MAX,
            max_refusals: usize::MAX,
            ..ClientSlots::for_limit(0)
        }
    }

    /// A slot for one more connection, held until dropped; `None` when all are taken.
    pub fn take(&self) -> Option<ClientSlot> {
        let before = self.taken.fetch_add(1, Ordering::AcqRel);
        let slot = ClientSlot(self.taken.clone());
        // A refused take gives its count back as `slot` drops.
        (before < self.max).then_some(slot)
    }

    /// A place for one more connection being refused, held until dropped; `None` when
    /// [`REFUSALS_AT_ONCE`] are under way (close the connection unanswered).
    pub fn take_refusal(&self) -> Option<ClientSlot> {
        let before = self.refusals.fetch_add(1, Ordering::AcqRel);
        let slot = ClientSlot(self.refusals.clone());
        (before < self.max_refusals).then_some(slot)
    }

    /// Counts a refused connection; the number refused since the last warning when one is
    /// due now (the first refusal, then at most once per [`WARN_EVERY`]).
    pub fn note_refusal(&self) -> Option<u64> {
        self.note_refusal_at(Instant::now())
    }

    fn note_refusal_at(&self, now: Instant) -> Option<u64> {
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        let (last, count) = &mut *warned;
        *count += 1;
        if last.is_some_and(|last| now.saturating_duration_since(last) < WARN_EVERY) {
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(count))
    }

    /// Connections holding a slot now.
    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::Acquire)
    }

    /// The sentence a refused client reads.
    pub fn refusal(&self) -> String {
        format!(
            "this node serves at most {} client connections at once: its open-file limit is {} \
             (ulimit -n; LimitNOFILE in a systemd unit), and the rest is kept for its store; \
             try again later",
            self.max, self.limit
        )
    }
}

/// One connection's place among [`ClientSlots`]; given back when dropped.
#[derive(Debug)]
pub struct ClientSlot(Arc<AtomicUsize>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(unix)]
mod limit {
    /// The open-file limit after raising the soft limit to the hard one, and the soft limit
    /// before when it was raised; `None` when the limit cannot be read or is unlimited.
    #[allow(clippy::unnecessary_cast)] // `rlim_t` is u64 on Linux, not on every Unix
    pub fn raise() -> Option<(u64, Option<u64>)> {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct it is given, which lives for the call.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return None;
        }
        let mut raised_from = None;
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            // SAFETY: setrlimit reads the struct it is given, which lives for the call.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                raised_from = Some(limit.rlim_cur as u64);
                limit = raised;
            }
        }
        (limit.rlim_cur != libc::RLIM_INFINITY).then_some((limit.rlim_cur as u64, raised_from))
    }
}

#[cfg(not(unix))]
mod limit {
    /// Windows has no per-process limit of sockets to raise or to share out.
    pub fn raise() -> Option<(u64, Option<u64>)> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_connections_get_all_but_the_reserve() {
        assert_eq!(ClientSlots::for_limit(1024).max, 512);
        assert_eq!(ClientSlots::for_limit(65536).max, 65536 - 8192);
        assert_eq!(ClientSlots::for_limit(300).max, 0);
    }

    #[test]
    fn a_slot_is_given_back_when_its_connection_ends() {
        let slots = ClientSlots::for_limit(514);
        assert_eq!(slots.max, 2);
        let first = slots.take().expect("a first slot");
        let second = slots.take().expect("a second slot");
        assert!(slots.take().is_none(), "a third connection past the share");
        assert_eq!(slots.taken(), 2, "a refused take holds nothing");
        drop(first);
        let third = slots.take().expect("a slot once one connection ended");
        drop((second, third));
        assert_eq!(slots.taken(), 0);
        assert!(slots.refusal().contains("open-file limit is 514"));
    }

    #[test]
    fn refusals_are_warned_about_at_most_once_a_minute_with_their_count() {
        let slots = ClientSlots::for_limit(1024);
        let start = Instant::now();
        assert_eq!(slots.note_refusal_at(start), Some(1), "the first warns");
        for i in 1..=5 {
            assert_eq!(slots.note_refusal_at(start + Duration::from_secs(i)), None);
        }
        assert_eq!(
            slots.note_refusal_at(start + WARN_EVERY),
            Some(6),
            "a minute on: the refusals since the last warning, this one included"
        );
        assert_eq!(slots.note_refusal_at(start + WARN_EVERY), None);
    }

    #[test]
    fn refusals_under_way_are_bounded_too() {
        let slots = ClientSlots::for_limit(1024);
        let held: Vec<_> = (0..REFUSALS_AT_ONCE)
            .map(|_| slots.take_refusal().expect("a refusal"))
            .collect();
        assert!(slots.take_refusal().is_none(), "one refusal too many");
        drop(held);
        assert!(slots.take_refusal().is_some(), "refusals done, room again");
        assert_eq!(slots.taken(), 0, "refusals take no client slot");
    }

    #[test]
    fn without_a_known_limit_every_connection_is_served() {
        let slots = ClientSlots::unlimited();
        let held: Vec<_> = (0..1000).map(|_| slots.take().expect("a slot")).collect();
        assert_eq!(slots.taken(), held.len());
    }
}
