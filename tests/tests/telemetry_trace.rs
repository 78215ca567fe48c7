//! Three services chained through the mesh, A → B → C, each behind the server
//! layer and calling the next through `MeshClient`: every span lands in one trace,
//! exported over OTLP/gRPC to a collector in the test, with the parent links a
//! trace viewer needs (test root → call → attempt → server → call → …). The
//! access log line of C carries the same trace ID.
//!
//! One test per binary: the tracer provider and subscriber are process-global.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use mesh_core::config::MeshConfig;
use mesh_http::telemetry::{AccessLogSink, ServerTelemetryLayer};
use mesh_http::MeshClient;
use mesh_tests::backend::TestBackend;
use mesh_tests::otlp::{hex, OtlpReceiver};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use parking_lot::Mutex;
use tracing::Instrument;

fn client_to(service: &str, addr: std::net::SocketAddr) -> MeshClient {
    let var = format!("MESH_SERVICE_{}_ENDPOINTS", service.to_uppercase());
    let addr = addr.to_string();
    let config = MeshConfig::from_source(&[(var.as_str(), addr.as_str())]).unwrap();
    MeshClient::new(config).expect("client starts")
}

async fn get_text(client: &MeshClient, uri: &str) -> String {
    let request = Request::get(uri).body(Empty::<Bytes>::new()).unwrap();
    let response = tower::ServiceExt::oneshot(client.clone(), request)
        .await
        .expect("request succeeds");
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// A hop that answers on `/{name}` by calling `next` (if any) and appending its name.
async fn hop(
    name: &'static str,
    next: Option<(&'static str, std::net::SocketAddr)>,
    access_log: Option<AccessLogSink>,
) -> TestBackend {
    let client = next.map(|(service, addr)| (service, client_to(service, addr)));
    let handler = move || {
        let client = client.clone();
        async move {
            match client {
                Some((service, client)) => {
                    let below = get_text(&client, &format!("http://{service}/{service}")).await;
                    format!("{name}>{below}")
                }
                None => name.to_string(),
            }
        }
    };
    let mut layer = ServerTelemetryLayer::new();
    if let Some(sink) = access_log {
        layer = layer.access_log(sink);
    }
    TestBackend::start_with(
        Router::new()
            .route(&format!("/{name}"), get(handler))
            .layer(layer),
    )
    .await
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn attr_str<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    match attr(span, key)? {
        Value::StringValue(s) => Some(s),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_a_b_c_with_correct_parent_links() {
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    let otel = [
        ("OTEL_TRACES_EXPORTER", "otlp"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
    ];
    let config = MeshConfig::from_source(&[("MESH_SERVICE_NAME", "chain")]).unwrap();
    let telemetry = mesh_core::telemetry::builder(&config)
        .init_from(&otel)
        .expect("telemetry starts");
    assert!(telemetry.exports_spans());

    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = {
        let lines = lines.clone();
        AccessLogSink::new(move |line| lines.lock().push(line.to_string()))
    };
    let c = hop("c", None, Some(sink)).await;
    let b = hop("b", Some(("c", c.addr())), None).await;
    let a = hop("a", Some(("b", b.addr())), None).await;
    let client = client_to("a", a.addr());

    let root = tracing::info_span!("test.root");
    let body = get_text(&client, "http://a/a")
        .instrument(root.clone())
        .await;
    assert_eq!(body, "a>b>c");
    let trace_id = mesh_core::telemetry::trace_id(&root).expect("the root is traced");
    drop(root);
    telemetry.flush();

    let spans = receiver
        .wait_for_spans(Duration::from_secs(30), |spans| {
            spans
                .iter()
                .filter(|s| hex(&s.trace_id) == trace_id)
                .count()
                >= 10
        })
        .await;
    let ours: Vec<&Span> = spans
        .iter()
        .filter(|s| hex(&s.trace_id) == trace_id)
        .collect();
    let by_id: HashMap<Vec<u8>, &Span> = ours.iter().map(|s| (s.span_id.clone(), *s)).collect();
    let names: Vec<_> = ours.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        ours.len(),
        10,
        "root + 3 × (call, attempt, server): {names:?}"
    );

    let root = ours
        .iter()
        .find(|s| s.name == "test.root")
        .expect("root span exported");
    assert!(root.parent_span_id.is_empty(), "the root has no parent");

    // Walk the chain from the root: call → attempt → server, three times.
    let child_of = |parent: &Span, kind: SpanKind| -> &Span {
        let children: Vec<&&Span> = ours
            .iter()
            .filter(|s| s.parent_span_id == parent.span_id && s.kind == kind as i32)
            .collect();
        assert_eq!(
            children.len(),
            1,
            "span {:?} should have one {kind:?} child: {names:?}",
            parent.name
        );
        children[0]
    };
    let mut parent: &Span = root;
    for (service, route) in [("a", "/a"), ("b", "/b"), ("c", "/c")] {
        let call = child_of(parent, SpanKind::Client);
        assert_eq!(attr_str(call, "server.address"), Some(service), "call span");
        assert_eq!(call.name, "GET");
        let attempt = child_of(call, SpanKind::Client);
        assert!(
            attr(attempt, "network.peer.port").is_some(),
            "the attempt names the endpoint that answered"
        );
        let server = child_of(attempt, SpanKind::Server);
        assert_eq!(attr_str(server, "http.route"), Some(route));
        assert_eq!(server.name, format!("GET {route}"));
        parent = server;
    }
    for span in &ours {
        if !span.parent_span_id.is_empty() {
            assert!(
                by_id.contains_key(&span.parent_span_id),
                "{} has a parent outside the trace",
                span.name
            );
        }
    }

    let lines = lines.lock().clone();
    assert_eq!(lines.len(), 1, "one access log line per request: {lines:?}");
    let line: serde_json::Value = serde_json::from_str(lines[0].trim_end()).expect("JSON line");
    assert!(lines[0].ends_with('\n'));
    assert_eq!(line["route"], "/c");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["status"], 200);
    assert_eq!(line["trace_id"], trace_id.as_str());
    assert!(line["duration_ms"].as_f64().is_some());
}
