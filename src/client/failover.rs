//! Failover decisions, apart from any I/O: how long to wait before each reconnect pass, how many
//! passes are allowed, in which order to try the brokers, and which broker errors mean "try
//! another broker" rather than "this request is refused".
//!
//! A *pass* tries every broker in the list once (ActiveMQ counts its reconnect attempts the same
//! way). The connection task asks these functions what to do and carries it out.

use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;

use super::url::{AttemptLimit, FailoverOptions};

/// Whether the client is making its first connection or replacing a lost one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Startup,
    Reconnect,
}

impl FailoverOptions {
    /// The delay after `failed_passes` failed passes (0 for the first delay): the initial delay,
    /// then, with exponential back-off, multiplied by the multiplier each time and capped at
    /// the maximum (ActiveMQ caps the grown delay, not the initial one).
    pub fn reconnect_delay(&self, failed_passes: u32) -> Duration {
        if failed_passes == 0 || !self.use_exponential_backoff {
            return self.initial_reconnect_delay;
        }
        let grown = self.initial_reconnect_delay.as_secs_f64()
            * self
                .backoff_multiplier
                .powi(failed_passes.min(i32::MAX as u32) as i32);
        let cap = self.max_reconnect_delay.as_secs_f64();
        if grown.is_finite() && grown < cap {
            Duration::from_secs_f64(grown)
        } else {
            self.max_reconnect_delay
        }
    }

    /// How many passes over the broker list are allowed; `None`: no limit.
    ///
    /// As ActiveMQ: `startupMaxReconnectAttempts` applies to the first connect when it is not
    /// -1 (otherwise `maxReconnectAttempts` does); the first connect always makes at least one
    /// pass, and a lost connection is not replaced at all when the limit is 0.
    pub(crate) fn passes_allowed(&self, phase: Phase) -> Option<u32> {
        let limit = match (phase, self.startup_max_reconnect_attempts) {
            (Phase::Startup, AttemptLimit::Limited(n)) => AttemptLimit::Limited(n),
            _ => self.max_reconnect_attempts,
        };
        match (phase, limit) {
            (_, AttemptLimit::Unlimited) => None,
            (Phase::Startup, AttemptLimit::Limited(n)) => Some(n.max(1)),
            (Phase::Reconnect, AttemptLimit::Limited(n)) => Some(n),
        }
    }

    /// How long to wait before pass number `pass` (from 0). The first connect tries at once; a
    /// reconnect waits the initial delay first, which gives a broker that is closing every
    /// connection (say, on losing its quorum) a moment before the client comes back.
    pub(crate) fn delay_before_pass(&self, phase: Phase, pass: u32) -> Duration {
        match (phase, pass) {
            (Phase::Startup, 0) => Duration::ZERO,
            (Phase::Startup, n) => self.reconnect_delay(n - 1),
            (Phase::Reconnect, n) => self.reconnect_delay(n),
        }
    }
}

/// The order in which to try `count` brokers in one pass: the list as given (shuffled when
/// `randomize`), starting after the broker whose connection was lost, which goes last.
pub(crate) fn connect_order(
    count: usize,
    lost: Option<usize>,
    randomize: bool,
    rng: &mut impl Rng,
) -> Vec<usize> {
    let mut order: Vec<usize> = match lost {
        Some(lost) if lost < count => (lost + 1..count).chain(0..lost).collect(),
        _ => (0..count).collect(),
    };
    if randomize {
        order.shuffle(rng);
    }
    if let Some(lost) = lost.filter(|l| *l < count) {
        order.push(lost);
    }
    order
}

/// Whether a broker's ERROR `message` says the broker cannot serve now (not the master, no
/// quorum, its store failed, shutting down): then the request it names is not refused, the
/// client fails over and sends it again. Any other ERROR that names a request (by `receipt-id`)
/// refuses that request. Only how the message starts counts: a refusal quotes what the
/// client wrote (a destination, a selector), which may contain any of these words.
pub(crate) fn broker_unavailable(message: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "not the master",
        "this node is not the master",
        "not master",
        "no quorum",
        "the broker is shutting down",
        "the node is shutting down",
        "the store failed",
    ];
    let message = message.trim_start().to_ascii_lowercase();
    PREFIXES.iter().any(|p| message.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn default_backoff_doubles_from_10ms_to_30s() {
        let o = FailoverOptions::default();
        let delays: Vec<Duration> = (0..14).map(|n| o.reconnect_delay(n)).collect();
        assert_eq!(
            delays,
            vec![
                ms(10),
                ms(20),
                ms(40),
                ms(80),
                ms(160),
                ms(320),
                ms(640),
                ms(1280),
                ms(2560),
                ms(5120),
                ms(10240),
                ms(20480),
                ms(30000),
                ms(30000)
            ]
        );
        assert_eq!(o.reconnect_delay(u32::MAX), ms(30000));
    }

    #[test]
    fn backoff_without_exponential_growth_and_other_multipliers() {
        let o = FailoverOptions {
            initial_reconnect_delay: ms(1000),
            use_exponential_backoff: false,
            ..FailoverOptions::default()
        };
        assert_eq!(o.reconnect_delay(5), ms(1000));

        let o = FailoverOptions {
            initial_reconnect_delay: ms(100),
            max_reconnect_delay: ms(1000),
            backoff_multiplier: 3.0,
            ..FailoverOptions::default()
        };
        let delays: Vec<Duration> = (0..4).map(|n| o.reconnect_delay(n)).collect();
        assert_eq!(delays, vec![ms(100), ms(300), ms(900), ms(1000)]);

        // ActiveMQ starts at the initial delay even when it exceeds the cap.
        let o = FailoverOptions {
            initial_reconnect_delay: ms(500),
            max_reconnect_delay: ms(200),
            ..FailoverOptions::default()
        };
        assert_eq!(o.reconnect_delay(0), ms(500));
        assert_eq!(o.reconnect_delay(1), ms(200));
    }

    #[test]
    fn delays_before_passes() {
        let o = FailoverOptions::default();
        let startup: Vec<Duration> = (0..3)
            .map(|p| o.delay_before_pass(Phase::Startup, p))
            .collect();
        assert_eq!(startup, vec![ms(0), ms(10), ms(20)]);
        let again: Vec<Duration> = (0..3)
            .map(|p| o.delay_before_pass(Phase::Reconnect, p))
            .collect();
        assert_eq!(again, vec![ms(10), ms(20), ms(40)]);
    }

    #[test]
    fn attempt_limits_follow_activemq() {
        let with = |max, startup| FailoverOptions {
            max_reconnect_attempts: max,
            startup_max_reconnect_attempts: startup,
            ..FailoverOptions::default()
        };
        use AttemptLimit::{Limited, Unlimited};
        let o = with(Unlimited, Unlimited);
        assert_eq!(o.passes_allowed(Phase::Startup), None);
        assert_eq!(o.passes_allowed(Phase::Reconnect), None);
        // startup -1 falls back to maxReconnectAttempts.
        let o = with(Limited(3), Unlimited);
        assert_eq!(o.passes_allowed(Phase::Startup), Some(3));
        assert_eq!(o.passes_allowed(Phase::Reconnect), Some(3));
        let o = with(Unlimited, Limited(2));
        assert_eq!(o.passes_allowed(Phase::Startup), Some(2));
        assert_eq!(o.passes_allowed(Phase::Reconnect), None);
        // 0: one pass at startup, no reconnect at all.
        let o = with(Limited(0), Limited(0));
        assert_eq!(o.passes_allowed(Phase::Startup), Some(1));
        assert_eq!(o.passes_allowed(Phase::Reconnect), Some(0));
    }

    #[test]
    fn connect_order_moves_the_lost_broker_last() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        assert_eq!(connect_order(3, None, false, &mut rng), vec![0, 1, 2]);
        assert_eq!(connect_order(3, Some(0), false, &mut rng), vec![1, 2, 0]);
        assert_eq!(connect_order(3, Some(1), false, &mut rng), vec![2, 0, 1]);
        assert_eq!(connect_order(1, Some(0), true, &mut rng), vec![0]);
        for _ in 0..20 {
            let order = connect_order(4, Some(2), true, &mut rng);
            assert_eq!(order.len(), 4);
            assert_eq!(order[3], 2);
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(sorted, vec![0, 1, 2, 3]);
        }
        let shuffled = (0..50).any(|_| connect_order(4, None, true, &mut rng) != vec![0, 1, 2, 3]);
        assert!(shuffled);
    }

    #[test]
    fn unavailable_brokers_are_told_from_refusals() {
        assert!(broker_unavailable(
            "this node is not the master and confirms nothing: lost ZooKeeper session"
        ));
        assert!(broker_unavailable("no quorum"));
        assert!(broker_unavailable("the broker is shutting down"));
        assert!(broker_unavailable(
            "the store failed and accepts no more writes: EIO"
        ));
        assert!(!broker_unavailable(
            "User name [bob] or password is invalid."
        ));
        assert!(!broker_unavailable(
            "invalid destination 'x': use /queue/NAME or /topic/NAME"
        ));
        // Words of the client's own request, quoted in a refusal.
        assert!(!broker_unavailable(
            "invalid selector: state = 'unavailable' AND x: expected an operator, found end"
        ));
        assert!(!broker_unavailable(
            "invalid destination 'quorum.not the master': use /queue/NAME or /topic/NAME"
        ));
        assert!(broker_unavailable(
            "not the master: this node is a slave of tcp://a:1"
        ));
    }
}
