//! Per-route policies end to end: routes from `MESH_CONFIG_FILE` over a real
//! backend on loopback, counting what it receives per path.
#![allow(clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::{any, get};
use axum::Router;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use mesh_core::config::MeshConfig;
use mesh_core::deadline::TIMEOUT_HEADER;
use mesh_http::body::RequestBody;
use mesh_http::MeshClient;
use mesh_tests::backend::TestBackend;
use parking_lot::Mutex;

/// A client for the service `shop` at `backend`, configured by a TOML file
/// holding `toml` under `[services.shop]` (plus its endpoints).
fn client(dir: &tempfile::TempDir, backend: &TestBackend, toml: &str) -> MeshClient {
    let path = dir.path().join("mesh.toml");
    let text = format!(
        "[services.shop]\nendpoints = \"{}\"\n{toml}",
        backend.addr()
    );
    std::fs::write(&path, text).unwrap();
    let env: BTreeMap<String, String> = [(
        "MESH_CONFIG_FILE".to_string(),
        path.to_str().unwrap().to_string(),
    )]
    .into_iter()
    .collect();
    MeshClient::new(MeshConfig::from_source(&env).expect("valid configuration"))
        .expect("client starts")
}

fn body(bytes: &'static [u8]) -> RequestBody {
    Full::new(Bytes::from_static(bytes))
        .map_err(Into::into)
        .boxed_unsync()
}

/// Every path answers 503 and counts its requests.
fn always_503(counts: Arc<Mutex<BTreeMap<String, u64>>>) -> Router {
    Router::new().route(
        "/{*path}",
        any(move |uri: http::Uri| {
            let counts = counts.clone();
            async move {
                *counts.lock().entry(uri.path().to_string()).or_default() += 1;
                StatusCode::SERVICE_UNAVAILABLE
            }
        }),
    )
}

async fn send(client: &MeshClient, method: Method, path: &str) -> StatusCode {
    let request = Request::builder()
        .method(method)
        .uri(format!("http://shop{path}"))
        .body(body(b"{\"amount\": 1}"))
        .unwrap();
    let response = client.send(request).await.expect("an answer");
    response.status()
}

#[tokio::test]
async fn a_route_without_retries_is_sent_once_while_the_service_default_retries() {
    let counts = Arc::new(Mutex::new(BTreeMap::new()));
    let backend = TestBackend::start_with(always_503(counts.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    // The service retries POSTs too; the /pay route turns retries off.
    let client = client(
        &dir,
        &backend,
        r#"retry_methods = "GET,POST"
retry_max_attempts = 3
retry_backoff = "1ms..5ms"

[[services.shop.routes]]
name = "pay"
methods = ["POST"]
path = "/pay"
retry_max_attempts = 1
"#,
    );
    client.ready().await;

    assert_eq!(send(&client, Method::POST, "/pay").await, 503);
    assert_eq!(send(&client, Method::GET, "/items").await, 503);
    assert_eq!(send(&client, Method::POST, "/orders").await, 503);
    // GET /pay is not the route (it matches POST only): the service's policy.
    assert_eq!(send(&client, Method::GET, "/pay").await, 503);

    let counts = counts.lock().clone();
    println!("requests received per path: {counts:?}");
    assert_eq!(
        counts.get("/pay"),
        Some(&4),
        "POST /pay once, GET /pay three times"
    );
    assert_eq!(counts.get("/items"), Some(&3), "GET /items retried");
    assert_eq!(counts.get("/orders"), Some(&3), "POST /orders retried");
    assert_eq!(client.retry_stats("shop").unwrap().retries, 6);
}

#[tokio::test]
async fn a_route_timeout_shorter_than_the_service_timeout_ends_the_request_early() {
    // What each request's x-mesh-timeout-ms said, by path.
    let seen: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let served = Arc::new(AtomicU64::new(0));
    let app = {
        let (seen, served) = (seen.clone(), served.clone());
        Router::new().route(
            "/{*path}",
            get(move |uri: http::Uri, headers: HeaderMap| {
                let (seen, served) = (seen.clone(), served.clone());
                async move {
                    served.fetch_add(1, Ordering::Relaxed);
                    let ms = headers
                        .get(TIMEOUT_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                        .expect("the mesh sends the remaining time");
                    seen.lock().push((uri.path().to_string(), ms));
                    if uri.path().starts_with("/report/") {
                        // Far longer than the route's timeout.
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                    "ok"
                }
            }),
        )
    };
    let backend = TestBackend::start_with(app).await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(
        &dir,
        &backend,
        r#"timeout = "60s"

[[services.shop.routes]]
path_prefix = "/report/"
timeout = "300ms"
"#,
    );
    client.ready().await;

    let started = tokio::time::Instant::now();
    let request = Request::get("http://shop/report/q3")
        .body(body(b""))
        .unwrap();
    let error = client
        .send(request)
        .await
        .expect_err("the route's timeout ends it");
    assert!(error.is_timeout(), "{error}");
    // 300 ms against the service's 60 s and the handler's 60 s: a wide gap.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );

    let request = Request::get("http://shop/items").body(body(b"")).unwrap();
    let response = client.send(request).await.expect("the service's timeout");
    assert_eq!(response.status(), 200);

    let seen = seen.lock().clone();
    println!("x-mesh-timeout-ms by path: {seen:?}");
    let report = seen.iter().find(|(p, _)| p == "/report/q3").unwrap().1;
    let items = seen.iter().find(|(p, _)| p == "/items").unwrap().1;
    assert!(report <= 300, "the route's deadline was sent on: {report}");
    assert!(
        items > 30_000,
        "the service's deadline was sent on: {items}"
    );
    assert_eq!(
        served.load(Ordering::Relaxed),
        2,
        "the timed-out request was not retried"
    );
}
