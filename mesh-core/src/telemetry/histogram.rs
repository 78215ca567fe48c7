//! Fixed-bucket histograms for the Prometheus endpoint: a sample finds its
//! bucket and bumps two atomics, and a series' memory is the same after a
//! billion samples as after one.
//!
//! Why not the exporter's own histograms: `metrics-exporter-prometheus` keeps
//! every sample with a clock reading (`(f64, quanta::Instant)` pushed into a
//! growing block list) until its upkeep or a scrape drains them into buckets.
//! That is ≈ 0.5k instructions per sample, fresh cache lines as the blocks
//! grow, and memory that grows with traffic between drains; the mesh records
//! several samples per request. Our histograms all have fixed bounds anyway
//! ([`DURATION_BUCKETS`](super::DURATION_BUCKETS),
//! [`SIZE_BUCKETS`](super::SIZE_BUCKETS)), so the bucket can be counted at
//! once. The [`registry`](super::registry) keeps the series and renders them
//! with the exporter's own formatting helpers, so the text is the one it
//! rendered: the same names, unit suffixes, label escaping, `le` values,
//! cumulative buckets, `_sum` and `_count`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use metrics::HistogramFn;

/// One histogram series: a count per bucket and the sum of what was recorded.
#[derive(Debug)]
pub(super) struct BucketHistogram {
    /// Upper bounds, inclusive (`le`), ascending.
    bounds: &'static [f64],
    /// Samples per bucket, not cumulative: `counts[i]` holds the samples in
    /// `(bounds[i - 1], bounds[i]]`; the last entry those above every bound
    /// (and NaN), which only `+Inf` counts. One atomic per sample, so no
    /// sample touches the other buckets.
    counts: Box<[AtomicU64]>,
    /// The sum of the samples, as `f64` bits.
    sum: AtomicU64,
}

impl BucketHistogram {
    /// An empty series with these (ascending) bounds.
    pub(super) fn new(bounds: &'static [f64]) -> Self {
        BucketHistogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0.0f64.to_bits()),
        }
    }

    /// What was recorded so far. `_count` is the last cumulative bucket, so
    /// buckets and count agree by construction. The sum is read apart from
    /// the buckets: a scrape racing a sample may see it with or without that
    /// sample. Prometheus treats each scrape as a point sample of monotonic
    /// series, so a sum one sample ahead or behind is corrected at the next
    /// scrape, as with any two series read a moment apart.
    pub(super) fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let cumulative = self
            .counts
            .iter()
            .map(|count| {
                total += count.load(Relaxed);
                total
            })
            .collect();
        HistogramSnapshot {
            bounds: self.bounds,
            cumulative,
            sum: f64::from_bits(self.sum.load(Relaxed)),
        }
    }
}

impl HistogramFn for BucketHistogram {
    fn record(&self, value: f64) {
        // `le` is inclusive: a sample equal to a bound is in that bound's
        // bucket. NaN compares false with every bound and counts in `+Inf`
        // only, as the exporter counted it. Linear, not binary, search: the
        // mesh's samples (sub-millisecond durations, small bodies) sit in the
        // first buckets.
        let bucket = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        // Relaxed: each count only ever grows, and nothing else is ordered by it.
        self.counts[bucket].fetch_add(1, Relaxed);
        // `f64` has no atomic add: compare-and-swap its bits. Uncontended it
        // succeeds the first time; `fetch_update` never returns `Err` here.
        let _ = self.sum.fetch_update(Relaxed, Relaxed, |bits| {
            Some((f64::from_bits(bits) + value).to_bits())
        });
    }
}

/// A series' counts at one moment, for rendering.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct HistogramSnapshot {
    bounds: &'static [f64],
    /// Cumulative counts, one per bound and the last for `+Inf`.
    cumulative: Vec<u64>,
    sum: f64,
}

impl HistogramSnapshot {
    /// `(le, cumulative count)` for each finite bound.
    pub(super) fn buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        self.bounds
            .iter()
            .copied()
            .zip(self.cumulative.iter().copied())
    }

    /// How many samples were recorded (the `+Inf` bucket).
    pub(super) fn count(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// The sum of the samples.
    pub(super) fn sum(&self) -> f64 {
        self.sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const BOUNDS: &[f64] = &[1.0, 2.5, 10.0];

    #[test]
    fn a_sample_equal_to_a_bound_lands_in_that_bounds_bucket() {
        let histogram = BucketHistogram::new(BOUNDS);
        histogram.record(2.5);
        let snapshot = histogram.snapshot();
        let buckets: Vec<_> = snapshot.buckets().collect();
        assert_eq!(buckets, [(1.0, 0), (2.5, 1), (10.0, 1)]);
        assert_eq!(snapshot.count(), 1);
    }

    #[test]
    fn buckets_are_cumulative_and_count_and_sum_match_the_samples() {
        let histogram = BucketHistogram::new(BOUNDS);
        for value in [0.5, 1.0, 1.5, 3.0, 20.0, 30.0] {
            histogram.record(value);
        }
        let snapshot = histogram.snapshot();
        let buckets: Vec<_> = snapshot.buckets().collect();
        assert_eq!(buckets, [(1.0, 2), (2.5, 3), (10.0, 4)]);
        assert_eq!(snapshot.count(), 6);
        assert_eq!(snapshot.sum(), 56.0);
    }

    #[test]
    fn nan_counts_only_in_plus_inf() {
        let histogram = BucketHistogram::new(BOUNDS);
        histogram.record(f64::NAN);
        let snapshot = histogram.snapshot();
        assert!(snapshot.buckets().all(|(_, count)| count == 0));
        assert_eq!(snapshot.count(), 1);
    }

    #[test]
    fn samples_from_many_threads_are_all_counted() {
        let histogram = Arc::new(BucketHistogram::new(BOUNDS));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let histogram = histogram.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        histogram.record(2.0);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count(), 40_000);
        // Every partial sum is an integer below 2^53: exact in f64.
        assert_eq!(snapshot.sum(), 80_000.0);
    }
}
