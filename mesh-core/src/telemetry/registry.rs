//! Every series the Prometheus recorder holds, counters, gauges and
//! histograms, each an atomic (or a few) of ours, and their rendering in the
//! Prometheus text format.
//!
//! Why not the exporter's recorder for counters and gauges: building it
//! calibrates `quanta`'s TSC clock (a busy loop of 1–2 ms of a core), which
//! only its histograms' sample timestamps and idle timeouts use, and the mesh
//! uses neither. Its counters and gauges are atomics (behind a generation
//! count, for those idle timeouts), so ours are the same
//! `metrics::atomics::AtomicU64`, without the generation, updated by the `metrics` crate's
//! own `CounterFn`/`GaugeFn` implementations: `increment` adds, `absolute`
//! keeps the larger value (`fetch_max`, never lowers a counter), a gauge is
//! `f64` bits (`set` stores, `increment`/`decrement` compare-and-swap).
//! Histograms are [`BucketHistogram`]s. Rendering uses the exporter's
//! formatting helpers and [`LabelSet`], with its recommended naming, so the
//! text is the one it wrote (`prometheus.rs` checks that against it).
//!
//! Unlike the exporter's (hash-map order), the text is in a fixed order:
//! counters, gauges, histograms, each by name, and a family's series in the
//! order they were registered.
//!
//! Start-up cost: a series' [`LabelSet`] (an `IndexMap` with SipHash, a
//! `String` per label key and value) is built when it is first rendered, not
//! when it is registered, and the mesh's own HELP texts come from a table
//! the registry is given ([`BuiltinHelp`]) instead of being described one by
//! one through the facade. Registering the series of a service's first
//! request and describing every mesh metric took ≈ 80k instructions and a
//! few hundred allocations of a cold start (BENCHMARKS.md, cold start,
//! "Round six").

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};

use metrics::atomics::AtomicU64;
use metrics::{Key, KeyName, SharedString, Unit};
use metrics_exporter_prometheus::formatting::{
    sanitize_metric_name, write_help_line, write_metric_line, write_type_line,
};
use metrics_exporter_prometheus::LabelSet;
use parking_lot::RwLock;
use rustc_hash::FxHashMap;

use super::histogram::BucketHistogram;

/// The exporter's `sanitize_metric_name` (invalid characters become `_`),
/// without its character-by-character rebuild for ASCII names: start-up
/// sanitizes every name the mesh describes and registers (≈ 1.7k instructions
/// each through the exporter's, a few hundred here). The same result: a test
/// checks every ASCII character in every position against the exporter's.
pub(super) fn sanitize_name(name: &str) -> String {
    if !name.is_ascii() {
        return sanitize_metric_name(name);
    }
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        // [a-zA-Z_:] first, [a-zA-Z0-9_:] after.
        let valid =
            b.is_ascii_alphabetic() || b == b'_' || b == b':' || (i > 0 && b.is_ascii_digit());
        out.push(if valid { char::from(b) } else { '_' });
    }
    out
}

/// Picks a histogram's bounds from its (sanitized) name.
pub(super) type BoundsFor = fn(&str) -> &'static [f64];

/// The HELP text and unit the registry knows for a (sanitized) name without
/// a `describe` call: the mesh's own metrics. They come before any
/// description given through the facade, as they did when the mesh described
/// them all right after installing the recorder.
pub(super) type BuiltinHelp = fn(&str) -> Option<(&'static str, Option<Unit>)>;

/// The suffix recommended naming gives counters.
const COUNTER_SUFFIX: Option<&str> = Some("total");

/// The series of the Prometheus recorder, keyed by `metrics::Key` so the same
/// key gets the same series, and grouped by family for rendering.
pub(super) struct Registry {
    bounds_for: BoundsFor,
    builtin_help: BuiltinHelp,
    counters: Series<AtomicU64>,
    gauges: Series<AtomicU64>,
    histograms: Series<BucketHistogram>,
    /// HELP text and unit by sanitized name, one table for every kind: the
    /// first description of a name wins, as in the exporter.
    descriptions: RwLock<FxHashMap<String, (SharedString, Option<Unit>)>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("counters", &self.counters.len())
            .field("gauges", &self.gauges.len())
            .field("histograms", &self.histograms.len())
            .finish_non_exhaustive()
    }
}

/// The series of one kind.
struct Series<S> {
    inner: RwLock<SeriesInner<S>>,
}

struct SeriesInner<S> {
    /// The key is shared with its family's [`Member`]: one copy of its labels.
    by_key: FxHashMap<Arc<Key>, Arc<S>>,
    /// By sanitized name, series in registration order. Two keys that
    /// sanitize to one name and one label set share a series, so each has one
    /// exposition line. (The exporter kept two and rendered either one.)
    families: BTreeMap<String, Vec<Member<S>>>,
}

/// One series of a family: the key that registered it, and the label set
/// the exposition lines carry, built at the first render.
struct Member<S> {
    key: Arc<Key>,
    labels: OnceLock<LabelSet>,
    series: Arc<S>,
}

impl<S> Member<S> {
    fn new(key: Arc<Key>, series: Arc<S>) -> Self {
        Member {
            key,
            labels: OnceLock::new(),
            series,
        }
    }

    /// What the exporter makes of the key's labels (no global labels).
    fn labels(&self) -> &LabelSet {
        self.labels
            .get_or_init(|| LabelSet::from_key_and_global(&self.key, &Default::default()))
    }
}

/// A key's labels as the [`LabelSet`] it makes holds them: a label whose key
/// came earlier replaces that one's value in its place (`IndexMap::insert`).
/// Two keys with equal lists have equal label sets.
fn label_list(key: &Key) -> Vec<(&str, &str)> {
    let mut list: Vec<(&str, &str)> = Vec::with_capacity(key.labels().len());
    for label in key.labels() {
        match list.iter_mut().find(|(k, _)| *k == label.key()) {
            Some(entry) => entry.1 = label.value(),
            None => list.push((label.key(), label.value())),
        }
    }
    list
}

/// Whether `key`'s labels make the label set `list` (a [`label_list`])
/// stands for. Allocates only for a key that repeats a label key: with as many
/// labels as `list` has entries, the two are the same label set exactly when
/// they match one for one, in order (`list`'s keys are distinct, so such a
/// `key` repeats none).
fn makes_labels(key: &Key, list: &[(&str, &str)]) -> bool {
    if key.labels().len() == list.len() {
        key.labels()
            .zip(list)
            .all(|(label, (k, v))| label.key() == *k && label.value() == *v)
    } else {
        label_list(key) == list
    }
}

impl<S> Series<S> {
    fn new() -> Self {
        Series {
            inner: RwLock::new(SeriesInner {
                by_key: FxHashMap::default(),
                families: BTreeMap::new(),
            }),
        }
    }

    /// How many keys were registered.
    fn len(&self) -> usize {
        self.inner.read().by_key.len()
    }

    /// The series for `key`, made by `make` (given the sanitized name) the
    /// first time `key`, or its name and labels, are seen.
    fn register(&self, key: &Key, make: impl FnOnce(&str) -> S) -> Arc<S> {
        if let Some(series) = self.inner.read().by_key.get(key) {
            return series.clone();
        }
        // Sanitized outside the lock: a scrape need not wait for it.
        let name = sanitize_name(key.name());
        let mut inner = self.inner.write();
        // Registered while we waited for the lock?
        if let Some(series) = inner.by_key.get(key) {
            return series.clone();
        }
        let shared_key = Arc::new(key.clone());
        let series = match inner.families.get_mut(&name) {
            Some(family) => {
                let labels = label_list(key);
                match family.iter().find(|m| makes_labels(&m.key, &labels)) {
                    Some(member) => member.series.clone(),
                    None => {
                        let series = Arc::new(make(&name));
                        family.push(Member::new(shared_key.clone(), series.clone()));
                        series
                    }
                }
            }
            None => {
                let series = Arc::new(make(&name));
                let family = vec![Member::new(shared_key.clone(), series.clone())];
                inner.families.insert(name, family);
                series
            }
        };
        inner.by_key.insert(shared_key, series.clone());
        series
    }
}

impl Registry {
    /// An empty registry giving each new histogram family the bounds
    /// `bounds_for` picks, and HELP lines to the names `builtin_help` knows.
    pub(super) fn new(bounds_for: BoundsFor, builtin_help: BuiltinHelp) -> Self {
        Registry {
            bounds_for,
            builtin_help,
            counters: Series::new(),
            gauges: Series::new(),
            histograms: Series::new(),
            descriptions: RwLock::new(FxHashMap::default()),
        }
    }

    /// The counter for `key`, made (at 0) the first time `key` is seen.
    pub(super) fn counter(&self, key: &Key) -> metrics::Counter {
        metrics::Counter::from_arc(self.counters.register(key, |_| AtomicU64::new(0)))
    }

    /// The gauge for `key`, made (at 0.0) the first time `key` is seen.
    pub(super) fn gauge(&self, key: &Key) -> metrics::Gauge {
        // 0.0's bits are 0.
        metrics::Gauge::from_arc(self.gauges.register(key, |_| AtomicU64::new(0)))
    }

    /// The histogram for `key`, made the first time `key` is seen.
    pub(super) fn histogram(&self, key: &Key) -> metrics::Histogram {
        let bounds_for = self.bounds_for;
        metrics::Histogram::from_arc(
            self.histograms
                .register(key, |name| BucketHistogram::new(bounds_for(name))),
        )
    }

    /// Keeps a family's HELP text and unit, unless it has some already.
    pub(super) fn describe(&self, name: KeyName, unit: Option<Unit>, description: SharedString) {
        let name = sanitize_name(name.as_str());
        self.descriptions
            .write()
            .entry(name)
            .or_insert((description, unit));
    }

    /// Every series in the Prometheus text format, as the exporter writes
    /// them with recommended naming: per family a HELP line (if described)
    /// and a TYPE line, its series, and a blank line; counters get `_total`,
    /// and a described unit is added to the name.
    pub(super) fn render(&self) -> String {
        let mut out = String::new();
        let descriptions = self.descriptions.read();
        // HELP (if described) and TYPE lines; the unit for the names.
        let head = |out: &mut String, name: &str, suffix, kind| {
            let described = (self.builtin_help)(name).or_else(|| {
                descriptions
                    .get(name)
                    .map(|(description, unit)| (&**description, *unit))
            });
            let unit = match described {
                Some((description, unit)) => {
                    write_help_line(out, name, unit, suffix, description);
                    unit
                }
                None => None,
            };
            write_type_line(out, name, unit, suffix, kind);
            unit
        };
        for (name, family) in &self.counters.inner.read().families {
            let unit = head(&mut out, name, COUNTER_SUFFIX, "counter");
            for member in family {
                let value = member.series.load(Relaxed);
                write_metric_line::<&str, u64>(
                    &mut out,
                    name,
                    COUNTER_SUFFIX,
                    member.labels(),
                    None,
                    value,
                    unit,
                );
            }
            out.push('\n');
        }
        for (name, family) in &self.gauges.inner.read().families {
            let unit = head(&mut out, name, None, "gauge");
            for member in family {
                let value = f64::from_bits(member.series.load(Relaxed));
                let labels = member.labels();
                write_metric_line::<&str, f64>(&mut out, name, None, labels, None, value, unit);
            }
            out.push('\n');
        }
        for (name, family) in &self.histograms.inner.read().families {
            let unit = head(&mut out, name, None, "histogram");
            for member in family {
                let labels = member.labels();
                let snapshot = member.series.snapshot();
                for (le, count) in snapshot.buckets() {
                    write_metric_line(
                        &mut out,
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
                    &mut out,
                    name,
                    Some("bucket"),
                    labels,
                    Some(("le", "+Inf")),
                    count,
                    unit,
                );
                write_metric_line::<&str, f64>(
                    &mut out,
                    name,
                    Some("sum"),
                    labels,
                    None,
                    snapshot.sum(),
                    unit,
                );
                write_metric_line::<&str, u64>(
                    &mut out,
                    name,
                    Some("count"),
                    labels,
                    None,
                    count,
                    unit,
                );
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: &[f64] = &[1.0, 2.5, 10.0];

    fn registry() -> Registry {
        Registry::new(|_| BOUNDS, |_| None)
    }

    #[test]
    fn names_are_sanitized_as_the_exporter_sanitizes_them() {
        for a in 0..128u8 {
            for b in 0..128u8 {
                let name: String = [char::from(a), char::from(b), 'x'].iter().collect();
                assert_eq!(
                    sanitize_name(&name),
                    sanitize_metric_name(&name),
                    "{name:?}"
                );
            }
        }
        for name in ["http.client.request.duration", "zürich→東京", "9lives", ""] {
            assert_eq!(sanitize_name(name), sanitize_metric_name(name), "{name:?}");
        }
    }

    #[test]
    fn the_same_key_returns_the_same_series() {
        let registry = registry();
        let key = Key::from_parts("req.duration", vec![metrics::Label::new("peer", "a")]);
        registry.histogram(&key).record(1.0);
        registry.histogram(&key.clone()).record(2.0);
        registry.counter(&key).increment(1);
        registry.counter(&key.clone()).increment(2);
        let text = registry.render();
        assert_eq!(
            text.matches("req_duration_count").count(),
            1,
            "one series:\n{text}"
        );
        assert!(text.contains(r#"req_duration_count{peer="a"} 2"#), "{text}");
        assert!(text.contains(r#"req_duration_total{peer="a"} 3"#), "{text}");
    }

    #[test]
    fn keys_that_sanitize_alike_share_one_series() {
        let registry = registry();
        registry.counter(&Key::from_name("jobs.done")).increment(1);
        registry.counter(&Key::from_name("jobs-done")).increment(2);
        let text = registry.render();
        assert_eq!(
            text,
            "# TYPE jobs_done_total counter\njobs_done_total 3\n\n"
        );
    }

    /// A repeated label key keeps its first place and takes the later value,
    /// as the exporter's label set does (the comparison the registry makes
    /// agrees with label-set equality, order included), and keys that make
    /// one label set share a series.
    #[test]
    fn keys_whose_labels_make_one_label_set_share_a_series() {
        use metrics::Label;
        let label_set = |key: &Key| LabelSet::from_key_and_global(key, &Default::default());
        let registry = registry();
        let repeated = Key::from_parts(
            "jobs",
            vec![
                Label::new("a", "1"),
                Label::new("b", "2"),
                Label::new("a", "3"),
            ],
        );
        let plain = Key::from_parts("jobs", vec![Label::new("a", "3"), Label::new("b", "2")]);
        let reordered = Key::from_parts("jobs", vec![Label::new("b", "2"), Label::new("a", "3")]);
        let other = Key::from_parts("jobs", vec![Label::new("a", "1"), Label::new("b", "2")]);
        let keys = [&repeated, &plain, &reordered, &other];
        for a in keys {
            for b in keys {
                let same = label_set(a) == label_set(b);
                assert_eq!(label_list(a) == label_list(b), same, "{a:?} {b:?}");
                assert_eq!(makes_labels(a, &label_list(b)), same, "{a:?} {b:?}");
            }
        }
        registry.counter(&repeated).increment(1);
        registry.counter(&plain).increment(2);
        registry.counter(&other).increment(4);
        assert_eq!(
            registry.render(),
            "# TYPE jobs_total counter\njobs_total{a=\"3\",b=\"2\"} 3\njobs_total{a=\"1\",b=\"2\"} 4\n\n"
        );
    }

    #[test]
    fn absolute_never_lowers_a_counter() {
        let registry = registry();
        let counter = registry.counter(&Key::from_name("seen"));
        counter.absolute(100);
        counter.absolute(50);
        counter.increment(5);
        assert!(registry.render().contains("seen_total 105\n"));
    }

    #[test]
    fn a_gauge_goes_negative_and_fractional() {
        let registry = registry();
        let gauge = registry.gauge(&Key::from_name("level"));
        gauge.set(1.5);
        gauge.decrement(4.25);
        gauge.increment(0.125);
        assert_eq!(registry.render(), "# TYPE level gauge\nlevel -2.625\n\n");
    }

    #[test]
    fn increments_from_many_threads_are_all_counted() {
        let registry = Arc::new(registry());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let registry = registry.clone();
                std::thread::spawn(move || {
                    let counter = registry.counter(&Key::from_name("hits"));
                    let gauge = registry.gauge(&Key::from_name("open"));
                    for _ in 0..10_000 {
                        counter.increment(1);
                        gauge.increment(1.0);
                        gauge.decrement(0.5);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let text = registry.render();
        assert!(text.contains("hits_total 40000\n"), "{text}");
        // Every partial sum is a multiple of 0.5 below 2^52: exact in f64.
        assert!(text.contains("open 20000\n"), "{text}");
    }

    #[test]
    fn families_come_counters_then_gauges_then_histograms_each_by_name() {
        let registry = registry();
        registry.histogram(&Key::from_name("a_hist")).record(1.0);
        registry.gauge(&Key::from_name("b_gauge")).set(1.0);
        registry.gauge(&Key::from_name("a_gauge")).set(1.0);
        registry.counter(&Key::from_name("z_count")).increment(1);
        registry.counter(&Key::from_name("y_count")).increment(1);
        let text = registry.render();
        let types: Vec<_> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        assert_eq!(
            types,
            [
                "# TYPE y_count_total counter",
                "# TYPE z_count_total counter",
                "# TYPE a_gauge gauge",
                "# TYPE b_gauge gauge",
                "# TYPE a_hist histogram",
            ]
        );
    }

    #[test]
    fn the_first_description_of_a_name_wins_for_every_kind() {
        let registry = registry();
        registry.describe("queue".into(), Some(Unit::Bytes), "First.".into());
        registry.describe("queue".into(), Some(Unit::Seconds), "Second.".into());
        registry.gauge(&Key::from_name("queue")).set(2.0);
        assert_eq!(
            registry.render(),
            "# HELP queue_bytes First.\n# TYPE queue_bytes gauge\nqueue_bytes 2\n\n"
        );
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
        let series = registry.histogram(&key);
        series.record(1.0);
        series.record(5.0);
        assert_eq!(
            registry.render(),
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
        registry.histogram(&Key::from_name("plain")).record(0.5);
        let text = registry.render();
        assert!(text.starts_with("# TYPE plain histogram\n"), "{text}");
        assert!(!text.contains("# HELP"), "{text}");
        assert!(text.contains("plain_bucket{le=\"1\"} 1\n"), "{text}");
        assert!(text.contains("plain_count 1\n"), "{text}");
    }
}
