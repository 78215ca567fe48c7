//! Per-request cost of the telemetry layers alone, against a no-op service that
//! answers at once (benchmarks.md: "per-request cost of each layer alone").
//!
//! `cargo bench -p mesh-benches --bench telemetry` (full) or add `-- --quick`.
//!
//! Set-ups:
//! - `metrics`: the Prometheus recorder installed and metrics recorded, no
//!   `tracing` subscriber;
//! - `metrics+propagation`: what `mesh` runs by default: a subscriber with the
//!   OpenTelemetry layer but no span exporter, so the layers make no spans and
//!   only carry the trace context: the request arrives with a `traceparent`
//!   (server: extracted and attached while the handler runs; client: called
//!   inside that context and injected into the request);
//! - `metrics+spans`: spans recorded (what an exporter with every trace sampled
//!   costs per request: root spans, sampled), `traceparent` injected.
//!
//! Futures are polled once with `now_or_never`: the no-op answers at once, so no
//! runtime cost is mixed in and `noop` is the floor every figure is read against.

use std::convert::Infallible;

use bytes::Bytes;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use futures_util::FutureExt;
use http::{Request, Response};
use mesh_core::config::MeshConfig;
use mesh_http::telemetry::{AttemptTelemetryLayer, ClientTelemetryLayer, ServerTelemetryLayer};
use tower::{Layer, Service, ServiceBuilder};
use tracing_subscriber::layer::SubscriberExt;

/// An empty body with a known length, as most GETs and small answers have.
type Body = http_body_util::Empty<Bytes>;

fn noop() -> impl Service<
    Request<Body>,
    Response = Response<Body>,
    Error = Infallible,
    Future = std::future::Ready<Result<Response<Body>, Infallible>>,
> + Clone {
    tower::service_fn(|_req: Request<Body>| std::future::ready(Ok(Response::new(Body::new()))))
}

fn request() -> Request<Body> {
    Request::get("http://orders/orders/42")
        .body(Body::new())
        .unwrap()
}

/// A request from a traced caller.
fn traced_request() -> Request<Body> {
    Request::get("http://orders/orders/42")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(Body::new())
        .unwrap()
}

fn run<S>(c: &mut Criterion, name: &str, service: S)
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: std::fmt::Debug,
{
    run_with(c, name, request, service)
}

fn run_with<S>(c: &mut Criterion, name: &str, request: fn() -> Request<Body>, mut service: S)
where
    S: Service<Request<Body>, Response = Response<Body>>,
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
        // As `init` leaves it with no span exporter: context carried, no spans.
        mesh_core::telemetry::record_spans(false);
        let inbound = mesh_core::telemetry::extract(traced_request().headers());
        {
            let _attached = inbound.attach();
            run(c, "telemetry/client/metrics+propagation", client());
        }
        run_with(
            c,
            "telemetry/server/metrics+propagation",
            traced_request,
            server(),
        );

        mesh_core::telemetry::record_spans(true);
        run(c, "telemetry/noop+spans", noop());
        run(c, "telemetry/client/metrics+spans", client());
        run(c, "telemetry/server/metrics+spans", server());
    });
    drop(telemetry);
}

criterion_group!(benches, bench);
criterion_main!(benches);
