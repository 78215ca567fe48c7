//! The cost of one histogram sample: the mesh's fixed-bucket histogram (what
//! `metrics::histogram!` returns under the recorder `mesh_core::telemetry::init`
//! installs) against `metrics-exporter-prometheus`'s own (a `PrometheusRecorder`
//! with the same buckets), which the mesh used before.
//!
//! `cargo bench -p mesh-benches --bench histogram` (full) or add `-- --quick`.
//!
//! The exporter keeps every sample with a clock reading until its upkeep (or a
//! scrape) drains them into buckets; left undrained, a long benchmark would
//! hold gigabytes of samples. So both are timed over runs of [`DRAIN_EVERY`]
//! samples, and the exporter's upkeep runs between runs, untimed: its figure
//! leaves out the drain (bucketing every sample later), which ours never needs.

use criterion::{criterion_group, criterion_main, Criterion};
use mesh_core::config::MeshConfig;
use mesh_core::telemetry::DURATION_BUCKETS;
use metrics_exporter_prometheus::PrometheusBuilder;
use std::hint::black_box;
use std::time::Duration;
use tokio::time::Instant;

/// Samples recorded between two upkeeps of the exporter: a few milliseconds of
/// samples here (the mesh ran its upkeep every 5 s when it used the exporter's
/// histograms).
const DRAIN_EVERY: u64 = 64 * 1024;

/// Times `iters` samples of a 20 ms duration (the third bucket), running
/// `between` after every [`DRAIN_EVERY`] of them, untimed.
fn record(histogram: &metrics::Histogram, iters: u64, between: &dyn Fn()) -> Duration {
    let mut elapsed = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let run = left.min(DRAIN_EVERY);
        let start = Instant::now();
        for _ in 0..run {
            histogram.record(black_box(0.02));
        }
        elapsed += start.elapsed();
        between();
        left -= run;
    }
    elapsed
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = runtime.enter();
    let config = MeshConfig::from_source(&[("MESH_SERVICE_NAME", "bench")]).unwrap();
    let telemetry = mesh_core::telemetry::builder(&config)
        .install_subscriber(false)
        .init_from(&[] as &[(&str, &str)])
        .expect("telemetry starts");
    let handle = telemetry.prometheus_handle().expect("ours is the recorder");
    let ours = metrics::histogram!("bench.duration", "server.address" => "orders");
    c.bench_function("histogram/record/mesh", |b| {
        b.iter_custom(|iters| record(&ours, iters, &|| {}))
    });
    assert!(
        handle
            .render()
            .contains(r#"bench_duration_bucket{server_address="orders",le="0.025"}"#),
        "the benchmark recorded into the mesh's histogram"
    );

    let exporter = PrometheusBuilder::new()
        .set_buckets(&DURATION_BUCKETS)
        .expect("buckets")
        .build_recorder();
    let exporter_handle = exporter.handle();
    let theirs = metrics::with_local_recorder(
        &exporter,
        || metrics::histogram!("bench.duration", "server.address" => "orders"),
    );
    c.bench_function("histogram/record/exporter", |b| {
        b.iter_custom(|iters| record(&theirs, iters, &|| exporter_handle.run_upkeep()))
    });
    drop(telemetry);
}

criterion_group!(benches, bench);
criterion_main!(benches);
