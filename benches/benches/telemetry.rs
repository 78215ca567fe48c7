//! Per-request cost of the telemetry layers alone, against a no-op service that
//! answers at once (benchmarks.md: "per-request cost of each layer alone").
//!
//! `cargo bench -p mesh-benches --bench telemetry` (full) or add `-- --quick`.
//!
//! Set-ups, as `mesh` runs them: the Prometheus recorder installed and metrics
//! recorded; with `+spans`, a `tracing` subscriber turning spans into sampled
//! OpenTelemetry spans (no exporter) and `traceparent` injected / extracted.
//! Futures are polled once with `now_or_never`: the no-op answers at once, so no
//! runtime cost is mixed in and `noop` is the floor every figure is read against.

use std::convert::Infallible;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use futures_util::FutureExt;
use http::{Request, Response};
use mesh_core::config::MeshConfig;
use mesh_http::telemetry::{AttemptTelemetryLayer, ClientTelemetryLayer, ServerTelemetryLayer};
use tower::{Layer, Service, ServiceBuilder};
use tracing_subscriber::layer::SubscriberExt;

fn noop() -> impl Service<
    Request<()>,
    Response = Response<()>,
    Error = Infallible,
    Future = std::future::Ready<Result<Response<()>, Infallible>>,
> + Clone {
    tower::service_fn(|_req: Request<()>| std::future::ready(Ok(Response::new(()))))
}

fn request() -> Request<()> {
    Request::get("http://orders/orders/42").body(()).unwrap()
}

fn run<S>(c: &mut Criterion, name: &str, mut service: S)
where
    S: Service<Request<()>, Response = Response<()>>,
    S::Error: std::fmt::Debug,
{
    c.bench_function(name, |b| {
        b.iter_batched(
            request,
            |req| {
                service
                    .call(req)
                    .now_or_never()
                    .expect("the no-op answers at once")
                    .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = runtime.enter();
    let config = MeshConfig::from_source(&[("MESH_SERVICE_NAME", "bench")]).unwrap();
    // A tracer provider without an exporter: spans are sampled and dropped.
    let telemetry = mesh_core::telemetry::builder(&config)
        .install_subscriber(false)
        .init_from(&[] as &[(&str, &str)])
        .expect("telemetry starts");

    let client = || {
        ServiceBuilder::new()
            .layer(ClientTelemetryLayer::new("orders"))
            .layer(AttemptTelemetryLayer::new("orders"))
            .service(noop())
    };
    let server = || ServerTelemetryLayer::new().layer(noop());

    run(c, "telemetry/noop", noop());
    run(c, "telemetry/client/metrics", client());
    run(c, "telemetry/server/metrics", server());

    let subscriber = tracing_subscriber::registry().with(telemetry.otel_layer());
    tracing::subscriber::with_default(subscriber, || {
        run(c, "telemetry/noop+spans", noop());
        run(c, "telemetry/client/metrics+spans", client());
        run(c, "telemetry/server/metrics+spans", server());
    });
    drop(telemetry);
}

criterion_group!(benches, bench);
criterion_main!(benches);
