//! A `metrics` recorder that records into OpenTelemetry instruments, so the same
//! `metrics::counter!` calls reach an OTLP collector when nobody scrapes (a
//! serverless function).
//!
//! Why our own rather than a bridge crate: the two on crates.io
//! (`metrics-exporter-opentelemetry`, `metrics-opentelemetry`) each track a
//! single opentelemetry release and have lagged behind the SDK's breaking
//! releases; what we need is small. A handle is made once per series (metric
//! name + labels) and kept, so the per-request cost is a map lookup the
//! `metrics` macros already pay, plus the SDK's own aggregation. Histograms get
//! the semantic conventions' bucket boundaries, gauges keep their value here
//! because `metrics` gauges move by increments and OpenTelemetry's gauge records
//! absolute values.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use opentelemetry::metrics::Meter;
use opentelemetry::KeyValue;
use parking_lot::RwLock;

/// Records `metrics` into an OpenTelemetry [`Meter`].
#[derive(Debug)]
pub struct OtelRecorder {
    meter: Meter,
    units: RwLock<HashMap<String, (Option<Unit>, SharedString)>>,
    counters: RwLock<HashMap<Key, Arc<OtelCounter>>>,
    gauges: RwLock<HashMap<Key, Arc<OtelGauge>>>,
    histograms: RwLock<HashMap<Key, Arc<OtelHistogram>>>,
}

impl OtelRecorder {
    /// A recorder whose instruments belong to `meter`.
    pub fn new(meter: Meter) -> Self {
        OtelRecorder {
            meter,
            units: RwLock::default(),
            counters: RwLock::default(),
            gauges: RwLock::default(),
            histograms: RwLock::default(),
        }
    }

    fn describe(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.units
            .write()
            .insert(key.as_str().to_string(), (unit, description));
    }

    fn unit_and_description(&self, name: &str) -> (Option<&'static str>, String) {
        let units = self.units.read();
        match units.get(name) {
            Some((unit, description)) => (
                unit.map(|u| match u {
                    Unit::Seconds => "s",
                    Unit::Bytes => "By",
                    _ => "1",
                }),
                description.to_string(),
            ),
            None => (None, String::new()),
        }
    }

    fn attributes(key: &Key) -> Vec<KeyValue> {
        key.labels()
            .map(|l| KeyValue::new(l.key().to_string(), l.value().to_string()))
            .collect()
    }

    fn cached<T>(
        map: &RwLock<HashMap<Key, Arc<T>>>,
        key: &Key,
        make: impl FnOnce() -> T,
    ) -> Arc<T> {
        if let Some(found) = map.read().get(key) {
            return found.clone();
        }
        map.write()
            .entry(key.clone())
            .or_insert_with(|| Arc::new(make()))
            .clone()
    }
}

#[derive(Debug)]
struct OtelCounter {
    counter: opentelemetry::metrics::Counter<u64>,
    attributes: Vec<KeyValue>,
    last_absolute: AtomicU64,
}

impl CounterFn for OtelCounter {
    fn increment(&self, value: u64) {
        self.counter.add(value, &self.attributes);
    }

    fn absolute(&self, value: u64) {
        let before = self.last_absolute.swap(value, Ordering::Relaxed);
        if value > before {
            self.counter.add(value - before, &self.attributes);
        }
    }
}

#[derive(Debug)]
struct OtelGauge {
    gauge: opentelemetry::metrics::Gauge<f64>,
    attributes: Vec<KeyValue>,
    /// The current value as f64 bits: `metrics` gauges move by increments.
    value: AtomicU64,
}

impl OtelGauge {
    fn update(&self, f: impl Fn(f64) -> f64) {
        let mut current = self.value.load(Ordering::Relaxed);
        loop {
            let next = f(f64::from_bits(current));
            match self.value.compare_exchange_weak(
                current,
                next.to_bits(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.gauge.record(next, &self.attributes);
                    return;
                }
                Err(actual) => current = actual,
            }
        }
    }
}

impl GaugeFn for OtelGauge {
    fn increment(&self, value: f64) {
        self.update(|v| v + value);
    }

    fn decrement(&self, value: f64) {
        self.update(|v| v - value);
    }

    fn set(&self, value: f64) {
        self.update(|_| value);
    }
}

#[derive(Debug)]
struct OtelHistogram {
    histogram: opentelemetry::metrics::Histogram<f64>,
    attributes: Vec<KeyValue>,
}

impl HistogramFn for OtelHistogram {
    fn record(&self, value: f64) {
        self.histogram.record(value, &self.attributes);
    }
}

impl Recorder for OtelRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, unit, description);
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let handle = Self::cached(&self.counters, key, || {
            let (unit, description) = self.unit_and_description(key.name());
            let mut builder = self
                .meter
                .u64_counter(key.name().to_string())
                .with_description(description);
            if let Some(unit) = unit {
                builder = builder.with_unit(unit);
            }
            OtelCounter {
                counter: builder.build(),
                attributes: Self::attributes(key),
                last_absolute: AtomicU64::new(0),
            }
        });
        Counter::from_arc(handle)
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let handle = Self::cached(&self.gauges, key, || {
            let (unit, description) = self.unit_and_description(key.name());
            let mut builder = self
                .meter
                .f64_gauge(key.name().to_string())
                .with_description(description);
            if let Some(unit) = unit {
                builder = builder.with_unit(unit);
            }
            OtelGauge {
                gauge: builder.build(),
                attributes: Self::attributes(key),
                value: AtomicU64::new(0f64.to_bits()),
            }
        });
        Gauge::from_arc(handle)
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let handle = Self::cached(&self.histograms, key, || {
            let (unit, description) = self.unit_and_description(key.name());
            let boundaries = if unit == Some("By") {
                super::SIZE_BUCKETS.to_vec()
            } else {
                super::DURATION_BUCKETS.to_vec()
            };
            let mut builder = self
                .meter
                .f64_histogram(key.name().to_string())
                .with_description(description)
                .with_boundaries(boundaries);
            if let Some(unit) = unit {
                builder = builder.with_unit(unit);
            }
            OtelHistogram {
                histogram: builder.build(),
                attributes: Self::attributes(key),
            }
        });
        Histogram::from_arc(handle)
    }
}
