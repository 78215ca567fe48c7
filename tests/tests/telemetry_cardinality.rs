//! Label values stay bounded: many distinct request paths, through the client and
//! into a server layered inside and outside an axum router, make a handful of
//! series, never one per path. Scraped from `/metrics` mounted in the app's own
//! router, the way an app without `MESH_METRICS_ADDR` serves it.
//!
//! One test per binary: the `metrics` recorder is process-global.

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use mesh_core::config::MeshConfig;
use mesh_http::telemetry::{ServerTelemetryLayer, UNMATCHED_ROUTE};
use mesh_http::MeshClient;
use mesh_tests::backend::TestBackend;
use mesh_tests::prometheus::http_get;

fn series<'a>(exposition: &'a str, metric: &str) -> Vec<&'a str> {
    exposition
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_distinct_paths_make_a_bounded_number_of_series() {
    let config = MeshConfig::from_source(&[("MESH_SERVICE_NAME", "cardinality")]).unwrap();
    let telemetry = mesh_core::telemetry::builder(&config)
        .install_subscriber(false)
        .init_from(&[] as &[(&str, &str)])
        .expect("telemetry starts");
    assert_eq!(
        telemetry.metrics_addr(),
        None,
        "no MESH_METRICS_ADDR, no listener"
    );
    let handle = telemetry.prometheus_handle().expect("our recorder");

    // Inside the router: the matched template. Everything the router does not
    // match falls through to a fallback that sees no MatchedPath.
    let backend = TestBackend::start_with(
        Router::new()
            .route("/users/{id}", get(|| async { "user" }))
            .route(
                "/metrics",
                get(move || {
                    let handle = handle.clone();
                    async move { handle.render() }
                }),
            )
            .fallback(|| async { (http::StatusCode::NOT_FOUND, "no such page") })
            .layer(ServerTelemetryLayer::new()),
    )
    .await;
    let addr = backend.addr().to_string();
    let config = MeshConfig::from_source(&[("MESH_SERVICE_USERS_ENDPOINTS", addr.as_str())])
        .expect("valid configuration");
    let client = MeshClient::new(config).expect("client starts");

    const DISTINCT: usize = 300;
    for i in 0..DISTINCT {
        // Half hit the route with a fresh ID, half are paths nobody routes.
        let path = if i % 2 == 0 {
            format!("/users/{i}")
        } else {
            format!("/random/{i}/x{i}")
        };
        let request = Request::get(format!("http://users{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = tower::ServiceExt::oneshot(client.clone(), request)
            .await
            .expect("request answered");
        response.into_body().collect().await.expect("body");
    }

    let (status, exposition) = http_get(backend.addr(), "/metrics").await.unwrap();
    assert_eq!(status, 200);

    let server = series(&exposition, "http_server_request_duration_seconds_count");
    // One series for the route (200), one for the placeholder (404).
    assert_eq!(server.len(), 2, "{server:#?}");
    assert!(
        server
            .iter()
            .any(|s| s.contains(r#"http_route="/users/{id}""#)),
        "{server:#?}"
    );
    assert!(
        server
            .iter()
            .any(|s| s.contains(&format!(r#"http_route="{UNMATCHED_ROUTE}""#))),
        "{server:#?}"
    );
    let client_series = series(&exposition, "http_client_request_duration_seconds_count");
    // GET to users with 200, and GET to users with 404.
    assert_eq!(client_series.len(), 2, "{client_series:#?}");
    for line in exposition.lines() {
        assert!(
            !line.contains("/random/") && !line.contains("/users/2"),
            "a raw path leaked into a label: {line}"
        );
    }
    let total: f64 = server
        .iter()
        .filter_map(|s| s.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(total as usize, DISTINCT, "every request counted");
}
