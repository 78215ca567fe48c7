//! Recent attempt latencies of one service, for hedging at a percentile
//! (`HEDGE_DELAY=p95`): a log-scale histogram of atomic counters over two
//! alternating windows, so recording costs one atomic add.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// Buckets per doubling: bucket bounds are 2^(1/4) ≈ 19% apart.
const PER_DOUBLING: f64 = 4.0;
/// Buckets: 50 µs × 2^(80/4) ≈ 52 s at the top.
const BUCKETS: usize = 80;
/// Lower bound of the first bucket.
const FLOOR: Duration = Duration::from_micros(50);
/// Answers needed before a percentile is trusted; until then nothing is hedged.
pub(crate) const MIN_SAMPLES: u64 = 50;

/// Latencies seen over the current and the previous window.
#[derive(Debug)]
pub(crate) struct LatencyTracker {
    started: Instant,
    window: Duration,
    epoch: AtomicU64,
    generations: [Box<[AtomicU64]>; 2],
    rotating: Mutex<()>,
}

impl LatencyTracker {
    pub(crate) fn new(window: Duration) -> Self {
        let buckets = || (0..BUCKETS).map(|_| AtomicU64::new(0)).collect();
        LatencyTracker {
            started: Instant::now(),
            window: window.max(Duration::from_millis(1)),
            epoch: AtomicU64::new(0),
            generations: [buckets(), buckets()],
            rotating: Mutex::new(()),
        }
    }

    fn current_epoch(&self) -> u64 {
        let epoch = (self.started.elapsed().as_nanos() / self.window.as_nanos()) as u64;
        let seen = self.epoch.load(Ordering::Acquire);
        if seen != epoch {
            let _guard = self.rotating.lock();
            let seen = self.epoch.load(Ordering::Acquire);
            if seen != epoch {
                // Clear the generation the new window reuses, and the other one
                // too when more than a window went by without a sample.
                for (i, generation) in self.generations.iter().enumerate() {
                    if i as u64 == epoch % 2 || epoch > seen + 1 {
                        generation
                            .iter()
                            .for_each(|c| c.store(0, Ordering::Relaxed));
                    }
                }
                self.epoch.store(epoch, Ordering::Release);
            }
        }
        epoch
    }

    /// Records one attempt's time to its response.
    pub(crate) fn record(&self, latency: Duration) {
        let epoch = self.current_epoch();
        self.generations[(epoch % 2) as usize][bucket(latency)].fetch_add(1, Ordering::Relaxed);
    }

    /// The `p` quantile (0.95 for p95) of the latencies of the last one to two
    /// windows, rounded up to its bucket's upper bound; `None` with too few samples.
    pub(crate) fn quantile(&self, p: f64) -> Option<Duration> {
        self.current_epoch();
        let counts: Vec<u64> = (0..BUCKETS)
            .map(|i| {
                self.generations[0][i].load(Ordering::Relaxed)
                    + self.generations[1][i].load(Ordering::Relaxed)
            })
            .collect();
        let total: u64 = counts.iter().sum();
        if total < MIN_SAMPLES {
            return None;
        }
        let rank = ((total as f64) * p).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(upper_bound(i));
            }
        }
        Some(upper_bound(BUCKETS - 1))
    }
}

fn bucket(latency: Duration) -> usize {
    if latency <= FLOOR {
        return 0;
    }
    let doublings = (latency.as_secs_f64() / FLOOR.as_secs_f64()).log2();
    ((doublings * PER_DOUBLING).ceil() as usize).min(BUCKETS - 1)
}

fn upper_bound(bucket: usize) -> Duration {
    FLOOR.mul_f64(2f64.powf(bucket as f64 / PER_DOUBLING))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_their_latencies_within_a_fifth() {
        for us in [1u64, 50, 51, 120, 1_000, 9_999, 10_000, 250_000, 3_000_000] {
            let d = Duration::from_micros(us);
            let upper = upper_bound(bucket(d));
            assert!(
                upper >= d.min(upper_bound(BUCKETS - 1)),
                "{d:?} → {upper:?}"
            );
            assert!(upper <= d.max(FLOOR).mul_f64(1.2), "{d:?} → {upper:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn quantile_needs_enough_samples_and_forgets_old_windows() {
        let t = LatencyTracker::new(Duration::from_secs(10));
        for _ in 0..(MIN_SAMPLES - 1) {
            t.record(Duration::from_millis(10));
        }
        assert_eq!(t.quantile(0.95), None);
        for _ in 0..51 {
            t.record(Duration::from_millis(10));
        }
        for _ in 0..5 {
            t.record(Duration::from_secs(1));
        }
        let p95 = t.quantile(0.95).unwrap();
        assert!(
            p95 >= Duration::from_millis(10) && p95 <= Duration::from_millis(12),
            "{p95:?}"
        );
        let p99 = t.quantile(0.99).unwrap();
        assert!(p99 >= Duration::from_secs(1), "{p99:?}");
        // One window later the samples still count; two windows later they are gone.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(t.quantile(0.95).is_some());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(t.quantile(0.95), None);
    }
}
