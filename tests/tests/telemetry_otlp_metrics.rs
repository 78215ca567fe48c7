//! For serverless (nobody scrapes a function): with `OTEL_METRICS_EXPORTER=otlp`
//! the mesh's metrics are pushed over OTLP, here HTTP/protobuf, and flushed when
//! the guard drops, with no export interval having passed. Spans go the same way.
//!
//! One test per binary: the `metrics` recorder is process-global.

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use mesh_core::config::MeshConfig;
use mesh_core::metric_names::{HTTP_CLIENT_REQUEST_DURATION, HTTP_SERVER_REQUEST_DURATION};
use mesh_http::telemetry::ServerTelemetryLayer;
use mesh_http::MeshClient;
use mesh_tests::backend::TestBackend;
use mesh_tests::otlp::OtlpReceiver;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_pushed_over_otlp_http_and_flushed_on_drop() {
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.http_endpoint();
    let otel = [
        ("OTEL_METRICS_EXPORTER", "otlp"),
        ("OTEL_TRACES_EXPORTER", "otlp"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        // An hour: only the flush at drop can deliver within the test.
        ("OTEL_METRIC_EXPORT_INTERVAL", "3600000"),
    ];
    let config = MeshConfig::from_source(&[("MESH_SERVICE_NAME", "lambda")]).unwrap();
    let telemetry = mesh_core::telemetry::builder(&config)
        .init_from(&otel)
        .expect("telemetry starts");
    assert!(telemetry.exports_metrics() && telemetry.exports_spans());

    let backend = TestBackend::start_with(
        Router::new()
            .route("/work", get(|| async { "done" }))
            .layer(ServerTelemetryLayer::new()),
    )
    .await;
    let addr = backend.addr().to_string();
    let client = MeshClient::new(
        MeshConfig::from_source(&[("MESH_SERVICE_JOBS_ENDPOINTS", addr.as_str())]).unwrap(),
    )
    .unwrap();
    for _ in 0..5 {
        let request = Request::get("http://jobs/work")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = tower::ServiceExt::oneshot(client.clone(), request)
            .await
            .unwrap();
        response.into_body().collect().await.unwrap();
    }
    assert_eq!(receiver.exports(), 0, "nothing pushed before the flush");
    drop(telemetry);

    let names = receiver.metric_names();
    for expected in [
        HTTP_CLIENT_REQUEST_DURATION.name,
        HTTP_SERVER_REQUEST_DURATION.name,
        "mesh.endpoints",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not pushed: {names:?}"
        );
    }
    let spans = receiver
        .wait_for_spans(Duration::from_secs(10), |s| !s.is_empty())
        .await;
    assert!(
        spans.iter().any(|s| s.name == "GET /work"),
        "server span pushed over OTLP/HTTP"
    );
}
