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
//! once. Rendering uses the exporter's own formatting helpers, so the text is
//! the one it rendered: the same names, unit suffixes, label escaping, `le`
//! values, cumulative buckets, `_sum` and `_count`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use metrics::{HistogramFn, Key, KeyName, SharedString, Unit};
use metrics_exporter_prometheus::formatting::{
    sanitize_metric_name, write_help_line, write_metric_line, write_type_line,
};
use metrics_exporter_prometheus::LabelSet;
use parking_lot::RwLock;
use rustc_hash::FxHashMap;

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

/// Picks a histogram's bounds from its (sanitized) name.
pub(super) type BoundsFor = fn(&str) -> &'static [f64];

/// Every histogram series registered, keyed by `metrics::Key` so the same key
/// gets the same series, and grouped by family for rendering.
pub(super) struct HistogramRegistry {
    bounds_for: BoundsFor,
    inner: RwLock<Registry>,
}

impl std::fmt::Debug for HistogramRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.read();
        f.debug_struct("HistogramRegistry")
            .field("families", &inner.families.len())
            .field("keys", &inner.by_key.len())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Registry {
    by_key: FxHashMap<Key, Arc<BucketHistogram>>,
    /// By sanitized name, series in registration order. Two keys that
    /// sanitize to one name and one label set share a series (the exporter
    /// merged them too): one exposition line per series.
    families: BTreeMap<String, Vec<(LabelSet, Arc<BucketHistogram>)>>,
    /// By sanitized name; the first description wins, as in the exporter.
    descriptions: HashMap<String, (SharedString, Option<Unit>)>,
}

impl HistogramRegistry {
    /// An empty registry giving each new family the bounds `bounds_for` picks.
    pub(super) fn new(bounds_for: BoundsFor) -> Self {
        HistogramRegistry {
            bounds_for,
            inner: RwLock::new(Registry::default()),
        }
    }

    /// The series for `key`, made the first time `key` is seen.
    pub(super) fn register(&self, key: &Key) -> metrics::Histogram {
        if let Some(series) = self.inner.read().by_key.get(key) {
            return metrics::Histogram::from_arc(series.clone());
        }
        let name = sanitize_metric_name(key.name());
        let labels = LabelSet::from_key_and_global(key, &Default::default());
        let mut inner = self.inner.write();
        // Registered while we waited for the lock?
        if let Some(series) = inner.by_key.get(key) {
            return metrics::Histogram::from_arc(series.clone());
        }
        let bounds = (self.bounds_for)(&name);
        let family = inner.families.entry(name).or_default();
        let series = match family.iter().find(|(l, _)| *l == labels) {
            Some((_, series)) => series.clone(),
            None => {
                let series = Arc::new(BucketHistogram::new(bounds));
                family.push((labels, series.clone()));
                series
            }
        };
        inner.by_key.insert(key.clone(), series.clone());
        metrics::Histogram::from_arc(series)
    }

    /// Keeps a family's HELP text and unit, unless it has some already.
    pub(super) fn describe(&self, name: KeyName, unit: Option<Unit>, description: SharedString) {
        let name = sanitize_metric_name(name.as_str());
        self.inner
            .write()
            .descriptions
            .entry(name)
            .or_insert((description, unit));
    }

    /// Appends every family in the Prometheus text format, as the exporter
    /// writes a bucketed histogram: HELP (if described) and TYPE lines, for
    /// each series its cumulative buckets, `+Inf`, `_sum` and `_count`, and a
    /// blank line after the family. `unit_suffix`: whether a described unit
    /// is added to the name (the exporter's recommended naming).
    pub(super) fn render_into(&self, out: &mut String, unit_suffix: bool) {
        let inner = self.inner.read();
        for (name, series) in &inner.families {
            let unit = match inner.descriptions.get(name) {
                Some((description, unit)) => {
                    let unit = unit.filter(|_| unit_suffix);
                    write_help_line(out, name, unit, None, description);
                    unit
                }
                None => None,
            };
            write_type_line(out, name, unit, None, "histogram");
            for (labels, histogram) in series {
                let snapshot = histogram.snapshot();
                for (le, count) in snapshot.buckets() {
                    write_metric_line(
                        out,
                        name,
                        Some("bucket"),
                        labels,
                        Some(("le", le)),
                        count,
                        unit,
                    );
                }
                let count = snapshot.count();
                write_metric_line(
                    out,
                    name,
                    Some("bucket"),
                    labels,
                    Some(("le", "+Inf")),
                    count,
                    unit,
                );
                write_metric_line::<&str, f64>(
                    out,
                    name,
                    Some("sum"),
                    labels,
                    None,
                    snapshot.sum(),
                    unit,
                );
                write_metric_line::<&str, u64>(out, name, Some("count"), labels, None, count, unit);
            }
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: &[f64] = &[1.0, 2.5, 10.0];

    fn registry() -> HistogramRegistry {
        HistogramRegistry::new(|_| BOUNDS)
    }

    fn render(registry: &HistogramRegistry) -> String {
        let mut text = String::new();
        registry.render_into(&mut text, true);
        text
    }

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

    #[test]
    fn the_same_key_returns_the_same_series() {
        let registry = registry();
        let key = Key::from_parts("req.duration", vec![metrics::Label::new("peer", "a")]);
        registry.register(&key).record(1.0);
        registry.register(&key.clone()).record(2.0);
        let text = render(&registry);
        assert_eq!(
            text.matches("req_duration_count").count(),
            1,
            "one series:\n{text}"
        );
        assert!(text.contains(r#"req_duration_count{peer="a"} 2"#), "{text}");
    }

    #[test]
    fn renders_as_the_exporter_renders_a_described_histogram() {
        let registry = registry();
        registry.describe(
            "req.duration".into(),
            Some(Unit::Seconds),
            "How long \"requests\" took.".into(),
        );
        let key = Key::from_parts(
            "req.duration",
            vec![metrics::Label::new("path", "/a\"b\\c")],
        );
        let series = registry.register(&key);
        series.record(1.0);
        series.record(5.0);
        assert_eq!(
            render(&registry),
            concat!(
                "# HELP req_duration_seconds How long \"requests\" took.\n",
                "# TYPE req_duration_seconds histogram\n",
                "req_duration_seconds_bucket{path=\"/a\\\"b\\\\c\",le=\"1\"} 1\n",
                "req_duration_seconds_bucket{path=\"/a\\\"b\\\\c\",le=\"2.5\"} 1\n",
                "req_duration_seconds_bucket{path=\"/a\\\"b\\\\c\",le=\"10\"} 2\n",
                "req_duration_seconds_bucket{path=\"/a\\\"b\\\\c\",le=\"+Inf\"} 2\n",
                "req_duration_seconds_sum{path=\"/a\\\"b\\\\c\"} 6\n",
                "req_duration_seconds_count{path=\"/a\\\"b\\\\c\"} 2\n",
                "\n",
            )
        );
    }

    #[test]
    fn an_undescribed_histogram_has_a_type_line_and_no_help() {
        let registry = registry();
        registry.register(&Key::from_name("plain")).record(0.5);
        let text = render(&registry);
        assert!(text.starts_with("# TYPE plain histogram\n"), "{text}");
        assert!(!text.contains("# HELP"), "{text}");
        assert!(text.contains("plain_bucket{le=\"1\"} 1\n"), "{text}");
        assert!(text.contains("plain_count 1\n"), "{text}");
    }
}
