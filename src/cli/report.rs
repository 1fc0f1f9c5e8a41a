//! What the client commands report: rates, latency percentiles, and a progress line on stderr
//! when it is a terminal.

use std::io::IsTerminal;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Messages over time: the figures of one direction (produce or consume).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Rate {
    pub(crate) seconds: f64,
    pub(crate) msgs_per_sec: f64,
    /// Body bytes per second, in millions (10^6).
    pub(crate) mb_per_sec: f64,
}

impl Rate {
    pub(crate) fn new(messages: u64, body_bytes: u64, elapsed: Duration) -> Rate {
        let seconds = elapsed.as_secs_f64();
        let per_second = |n: f64| if seconds > 0.0 { n / seconds } else { 0.0 };
        Rate {
            seconds,
            msgs_per_sec: per_second(messages as f64),
            mb_per_sec: per_second(body_bytes as f64) / 1e6,
        }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.3} s: {:.0} msg/s, {:.2} MB/s",
            self.seconds, self.msgs_per_sec, self.mb_per_sec
        )
    }
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Latency {
    pub(crate) samples: usize,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
    pub(crate) max_us: f64,
    pub(crate) mean_us: f64,
}

impl Latency {
    /// The percentiles of `samples` (nanoseconds); `None` without samples.
    pub(crate) fn of(mut samples: Vec<u64>) -> Option<Latency> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let us = |ns: u64| ns as f64 / 1e3;
        let sum: u128 = samples.iter().map(|&ns| u128::from(ns)).sum();
        Some(Latency {
            samples: samples.len(),
            p50_us: us(percentile(&samples, 0.50)),
            p99_us: us(percentile(&samples, 0.99)),
            p999_us: us(percentile(&samples, 0.999)),
            max_us: us(samples[samples.len() - 1]),
            mean_us: sum as f64 / samples.len() as f64 / 1e3,
        })
    }
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {}, p99 {}, p99.9 {}, max {} ({} samples)",
            micros(self.p50_us),
            micros(self.p99_us),
            micros(self.p999_us),
            micros(self.max_us),
            self.samples
        )
    }
}

/// `412 µs` or `2.10 ms`.
fn micros(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

/// The nearest-rank percentile of sorted, non-empty `samples`: the smallest value with at least
/// `quantile` of the samples at or below it.
pub(crate) fn percentile(sorted: &[u64], quantile: f64) -> u64 {
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `[#####-----]` for `fraction` of `width` cells.
pub(crate) fn bar(fraction: f64, width: usize) -> String {
    let filled = ((fraction.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

/// A line on stderr, redrawn with `\r` four times a second, while stderr is a terminal.
pub(crate) struct Progress {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// Starts redrawing `render(elapsed)`; `None` (nothing drawn) when stderr is not a terminal.
    pub(crate) fn start(render: impl Fn(Duration) -> String + Send + 'static) -> Option<Progress> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    _ = tick.tick() => errout!("\r\x1b[2K{}", render(started.elapsed())),
                    _ = &mut stopped => break,
                }
            }
            errout!("\r\x1b[2K");
        });
        Some(Progress { stop, task })
    }

    /// Stops and erases the line.
    pub(crate) async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&samples, 0.5), 500);
        assert_eq!(percentile(&samples, 0.99), 990);
        assert_eq!(percentile(&samples, 0.999), 999);
        assert_eq!(percentile(&samples, 1.0), 1000);
        assert_eq!(percentile(&[7], 0.999), 7);
        assert_eq!(percentile(&[1, 2], 0.0), 1);
    }

    #[test]
    fn latency_summary() {
        let samples = vec![3_000, 1_000, 2_000, 4_000_000];
        let latency = Latency::of(samples).unwrap();
        assert_eq!(latency.samples, 4);
        assert_eq!(latency.p50_us, 2.0);
        assert_eq!(latency.p99_us, 4000.0);
        assert_eq!(latency.max_us, 4000.0);
        assert_eq!(latency.mean_us, 1001.5);
        assert_eq!(
            latency.to_string(),
            "p50 2 µs, p99 4.00 ms, p99.9 4.00 ms, max 4.00 ms (4 samples)"
        );
        assert_eq!(Latency::of(Vec::new()), None);
    }

    #[test]
    fn rates() {
        let rate = Rate::new(2000, 2_000_000, Duration::from_millis(500));
        assert_eq!(rate.msgs_per_sec, 4000.0);
        assert_eq!(rate.mb_per_sec, 4.0);
        assert_eq!(rate.to_string(), "0.500 s: 4000 msg/s, 4.00 MB/s");
        assert_eq!(Rate::new(5, 5, Duration::ZERO).msgs_per_sec, 0.0);
    }

    #[test]
    fn bars() {
        assert_eq!(bar(0.0, 4), "[----]");
        assert_eq!(bar(0.5, 4), "[##--]");
        assert_eq!(bar(2.0, 4), "[####]");
    }
}
