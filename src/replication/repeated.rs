//! Log lines for failures that repeat: a slave that keeps failing to reach or log in to its
//! master, a master that keeps refusing a slave (a mismatched `security_token`). Each retries
//! five times a second; the same error is logged once per [`REPEAT_LOG_PERIOD`], with the
//! count of attempts not logged in between.
//!
//! It must never hide a different error: a new one is logged at once.

use std::time::{Duration, Instant};

/// A repeating failure is logged at most this often while the error stays the same.
pub(crate) const REPEAT_LOG_PERIOD: Duration = Duration::from_secs(5);

/// One repeating failure's log state (a slave's attempts to follow a master that died and stays
/// named until its ZooKeeper session expires; a master's refusals of one slave): the same error
/// is logged again only [`REPEAT_LOG_PERIOD`] after it last was, with the count of attempts not
/// logged meanwhile.
#[derive(Debug, Default)]
pub(crate) struct RepeatedFailure {
    error: String,
    logged_at: Option<Instant>,
    unlogged: u32,
}

impl RepeatedFailure {
    /// Records a failed attempt at `now`; `Some(failures not logged since the last line)` when
    /// this one is to be logged.
    pub(crate) fn failed(&mut self, error: &str, now: Instant) -> Option<u32> {
        let recent = self
            .logged_at
            .is_some_and(|at| now.saturating_duration_since(at) < REPEAT_LOG_PERIOD);
        let same = self.error == error;
        if recent && same {
            self.unlogged += 1;
            return None;
        }
        self.logged_at = Some(now);
        // A count of another error's attempts is dropped with it.
        let unlogged = std::mem::take(&mut self.unlogged);
        if !same {
            self.error = error.to_owned();
        }
        Some(if same { unlogged } else { 0 })
    }
}

/// `" (the same error N more times since the last line)"`, or nothing for none.
pub(crate) fn repeated_note(unlogged: u32) -> String {
    match unlogged {
        0 => String::new(),
        n => format!(" (the same error {n} more times since the last line)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_slave_failure_is_logged_once_per_period() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut failures = RepeatedFailure::default();
        assert_eq!(failures.failed("refused", at(0)), Some(0));
        // Five attempts a second, the same error: silent until the period is over.
        for ms in (200..5000).step_by(200) {
            assert_eq!(failures.failed("refused", at(ms)), None, "{ms} ms");
        }
        assert_eq!(failures.failed("refused", at(5000)), Some(24));
        // Another error is logged at once; so is the first one again, an hour later.
        assert_eq!(failures.failed("timed out", at(5200)), Some(0));
        assert_eq!(failures.failed("timed out", at(5400)), None);
        assert_eq!(failures.failed("refused", at(5600)), Some(0));
        assert_eq!(failures.failed("refused", at(3_600_000)), Some(0));
        assert_eq!(repeated_note(0), "");
        assert_eq!(
            repeated_note(24),
            " (the same error 24 more times since the last line)"
        );
    }
}
