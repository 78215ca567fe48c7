//! A real Prometheus scrapes the mesh's `/metrics` on `MESH_METRICS_ADDR`; its
//! HTTP API finds the client histogram's buckets and the mesh's own metrics with
//! the expected labels, and `promtool check metrics` finds nothing to complain
//! about in our exposition.
//!
//! One test per binary: the `metrics` recorder is process-global.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use mesh_core::config::MeshConfig;
use mesh_http::telemetry::ServerTelemetryLayer;
use mesh_http::MeshClient;
use mesh_tests::backend::TestBackend;
use mesh_tests::prometheus::{http_get, tool, Prometheus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_client_and_mesh_metrics_and_promtool_finds_nothing() {
    let backend = TestBackend::start_with(
        Router::new()
            .route("/orders/{id}", get(|| async { "order" }))
            .layer(ServerTelemetryLayer::new()),
    )
    .await;
    let backend_addr = backend.addr().to_string();
    let env = [
        ("MESH_SERVICE_NAME", "frontend"),
        ("MESH_METRICS_ADDR", "127.0.0.1:0"),
        ("MESH_SERVICE_ORDERS_ENDPOINTS", backend_addr.as_str()),
    ];
    let config = MeshConfig::from_source(&env).expect("valid configuration");
    let telemetry = mesh_core::telemetry::builder(&config)
        .install_subscriber(false)
        .init_from(&env)
        .expect("telemetry starts");
    assert!(
        !telemetry.uses_app_recorder(),
        "nothing else installed a recorder"
    );
    let metrics_addr = telemetry.metrics_addr().expect("listening");
    assert_ne!(metrics_addr.port(), 0, "the bound port is reported");

    let client = MeshClient::new(config).expect("client starts");
    for i in 0..20 {
        let request = Request::get(format!("http://orders/orders/{i}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = tower::ServiceExt::oneshot(client.clone(), request)
            .await
            .expect("request succeeds");
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.expect("body");
    }

    let (status, exposition) = http_get(metrics_addr, "/metrics").await.expect("scrape");
    assert_eq!(status, 200);
    // promtool reads the exposition on stdin and prints every problem it finds.
    let mut promtool = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && complaints.trim().is_empty(),
        "promtool check metrics complained:\n{complaints}\n--- exposition ---\n{exposition}"
    );

    let prometheus = Prometheus::start(&[metrics_addr]).await;
    let buckets = prometheus
        .query_until_found(
            r#"http_client_request_duration_seconds_bucket{job="mesh",server_address="orders",le="0.005"}"#,
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(
        buckets.len(),
        1,
        "one series for GET 200 to orders: {buckets:?}"
    );
    let labels = &buckets[0]["metric"];
    assert_eq!(labels["http_request_method"], "GET");
    assert_eq!(labels["http_response_status_code"], "200");
    assert_eq!(labels["server_port"], "80");
    assert!(labels.get("error_type").is_none(), "{labels}");

    let count = prometheus
        .query(r#"sum(http_client_request_duration_seconds_count{server_address="orders"})"#)
        .await;
    assert_eq!(count[0]["value"][1], "20", "every request counted once");

    let server = prometheus
        .query(r#"http_server_request_duration_seconds_count{job="mesh"}"#)
        .await;
    assert_eq!(server.len(), 1, "{server:?}");
    assert_eq!(server[0]["metric"]["http_route"], "/orders/{id}");

    let endpoints = prometheus
        .query(r#"mesh_endpoints{mesh_service="orders",mesh_state="known"}"#)
        .await;
    assert_eq!(endpoints.len(), 1, "{endpoints:?}");
    assert_eq!(endpoints[0]["value"][1], "1");
    let connections = prometheus
        .query(r#"mesh_connections_total{mesh_service="orders",mesh_outcome="ok"}"#)
        .await;
    assert_eq!(connections.len(), 1, "{connections:?}");
    let discovery = prometheus
        .query(r#"mesh_discovery_updates_total{mesh_service="orders"}"#)
        .await;
    assert_eq!(discovery.len(), 1, "{discovery:?}");
}
