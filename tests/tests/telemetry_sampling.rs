//! Head sampling: with `parentbased_traceidratio` at 0.5, the client decides
//! before building any span, on a trace ID it draws, with the SDK's own ratio
//! test. Every request carries a `traceparent` (sampled or not, the trace goes
//! on); the sampled flag is what the SDK's test says for that trace ID; no
//! span is built for a trace that is not sampled (a layer counts the spans
//! `tracing` builds); and exactly the sampled traces are exported, whole
//! (call, attempt and server span), under the trace ID the server saw. The
//! server decides the same way for requests that arrive without a trace: a
//! server span is built exactly for the ones exported, and every handler runs
//! inside a trace either way.
//!
//! One test per binary: the tracer provider and subscriber are process-global.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::Empty;
use mesh_core::config::MeshConfig;
use mesh_http::telemetry::ServerTelemetryLayer;
use mesh_http::MeshClient;
use mesh_tests::backend::TestBackend;
use mesh_tests::otlp::{hex, OtlpReceiver};
use parking_lot::Mutex;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const REQUESTS: usize = 40;

/// The SDK's `TraceIdRatioBased` test, written out independently.
fn ratio_keeps(trace_id_hex: &str, ratio: f64) -> bool {
    let low = u64::from_str_radix(&trace_id_hex[16..], 16).unwrap();
    (low >> 1) < (ratio * (1u64 << 63) as f64) as u64
}

/// Counts the client call spans and the server spans `tracing` builds.
#[derive(Default)]
struct Built {
    calls: AtomicUsize,
    servers: AtomicUsize,
}

struct CountSpans(Arc<Built>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountSpans {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        match attrs.metadata().name() {
            "http.client.call" => self.0.calls.fetch_add(1, Ordering::Relaxed),
            "http.server" => self.0.servers.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
    }
}

/// A request with no trace context, straight over TCP.
async fn get_untraced(addr: std::net::SocketAddr, path: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nhost: backend\r\nconnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    assert!(
        response.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&response)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_is_decided_before_spans_and_agrees_with_the_sdk() {
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    let otel = [
        ("OTEL_TRACES_EXPORTER", "otlp"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
    ];
    let config = MeshConfig::from_source(&[("MESH_SERVICE_NAME", "sampling")]).unwrap();
    let telemetry = mesh_core::telemetry::builder(&config)
        .install_subscriber(false)
        .init_from(&otel)
        .expect("telemetry starts");
    let built = Arc::new(Built::default());
    tracing_subscriber::registry()
        .with(telemetry.otel_layer())
        .with(CountSpans(built.clone()))
        .init();

    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let handler = {
        let seen = seen.clone();
        move |headers: HeaderMap| {
            let seen = seen.clone();
            async move {
                let traceparent = headers
                    .get("traceparent")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default();
                seen.lock().push(traceparent);
                "ok"
            }
        }
    };
    // Whether each untraced request's handler ran inside a trace.
    let in_trace = Arc::new(Mutex::new(Vec::<bool>::new()));
    let root_handler = {
        let in_trace = in_trace.clone();
        move || {
            let in_trace = in_trace.clone();
            async move {
                in_trace
                    .lock()
                    .push(mesh_core::telemetry::TraceIds::current().is_some());
                "ok"
            }
        }
    };
    let backend = TestBackend::start_with(
        Router::new()
            .route("/traced", get(handler))
            .route("/root", get(root_handler))
            .layer(ServerTelemetryLayer::new()),
    )
    .await;
    let config = MeshConfig::from_source(&[(
        "MESH_SERVICE_BACKEND_ENDPOINTS",
        backend.addr().to_string().as_str(),
    )])
    .unwrap();
    let client = MeshClient::new(config).expect("client starts");
    for _ in 0..REQUESTS {
        let request = Request::get("http://backend/traced")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = tower::ServiceExt::oneshot(client.clone(), request)
            .await
            .expect("request succeeds");
        assert_eq!(response.status(), 200);
    }

    // Every request started a trace and carried it, sampled or not.
    let seen = seen.lock().clone();
    assert_eq!(seen.len(), REQUESTS);
    let mut sampled = BTreeSet::new();
    let mut dropped = BTreeSet::new();
    for traceparent in &seen {
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(
            parts.len(),
            4,
            "a traceparent on every request: {traceparent:?}"
        );
        let (trace_id, flags) = (parts[1].to_string(), parts[3]);
        let keep = ratio_keeps(&trace_id, 0.5);
        assert_eq!(
            flags == "01",
            keep,
            "the sampled flag of {traceparent} is the SDK's ratio test on its trace ID"
        );
        if keep {
            sampled.insert(trace_id);
        } else {
            dropped.insert(trace_id);
        }
    }
    assert!(
        !sampled.is_empty() && !dropped.is_empty(),
        "at 0.5 both kinds occur in {REQUESTS} requests: {} sampled",
        sampled.len()
    );

    assert_eq!(
        built.calls.load(Ordering::Relaxed),
        sampled.len(),
        "a call span is built for each sampled trace and for nothing else"
    );
    assert_eq!(built.servers.load(Ordering::Relaxed), sampled.len());

    // Requests that arrive without a trace: the server starts one for each.
    for _ in 0..REQUESTS {
        get_untraced(backend.addr(), "/root").await;
    }
    assert_eq!(
        *in_trace.lock(),
        vec![true; REQUESTS],
        "every handler runs inside a trace, sampled or not"
    );
    let server_roots = built.servers.load(Ordering::Relaxed) - sampled.len();
    assert!(
        server_roots > 0 && server_roots < REQUESTS,
        "at 0.5 some of {REQUESTS} inbound roots are sampled and some not: {server_roots}"
    );

    telemetry.flush();
    let spans = receiver
        .wait_for_spans(Duration::from_secs(30), |spans| {
            spans.len() >= 3 * sampled.len() + server_roots
        })
        .await;
    let (roots, spans): (Vec<_>, Vec<_>) = spans
        .iter()
        .partition(|s| s.parent_span_id.is_empty() && s.name == "GET /root");
    assert_eq!(
        roots.len(),
        server_roots,
        "a server span is built for each inbound root exported and for nothing else"
    );
    let mut per_trace: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for span in &spans {
        per_trace
            .entry(hex(&span.trace_id))
            .or_default()
            .push(span.name.clone());
    }
    let exported: BTreeSet<String> = per_trace.keys().cloned().collect();
    assert_eq!(
        exported, sampled,
        "exactly the sampled traces are exported, under the trace ID the server saw"
    );
    for (trace_id, names) in &per_trace {
        assert_eq!(
            names.len(),
            3,
            "trace {trace_id} is whole: call, attempt and server spans: {names:?}"
        );
    }
}
