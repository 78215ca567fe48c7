//! `MeshClient` against real backends on loopback: routing by logical name, egress,
//! HTTP/1.1 pooling and caps, HTTP/2 multiplexing, connection age, timeouts.
#![allow(clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use mesh_core::config::MeshConfig;
use mesh_http::body::RequestBody;
use mesh_http::MeshClient;
use mesh_tests::backend::TestBackend;

fn request(uri: &str) -> Request<RequestBody> {
    Request::get(uri)
        .body(Empty::<Bytes>::new().map_err(Into::into).boxed_unsync())
        .unwrap()
}

fn client(vars: &[(&str, String)]) -> MeshClient {
    let env: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    MeshClient::new(MeshConfig::from_source(&env).expect("valid configuration"))
        .expect("client starts")
}

async fn text(client: &MeshClient, uri: &str) -> (StatusCode, Version, String) {
    let response = client.send(request(uri)).await.expect("request succeeds");
    let (status, version) = (response.status(), response.version());
    let body = response
        .into_body()
        .collect()
        .await
        .expect("whole body")
        .to_bytes();
    (status, version, String::from_utf8_lossy(&body).into_owned())
}

fn echo_host() -> Router {
    Router::new().route(
        "/host",
        get(|headers: http::HeaderMap| async move {
            headers
                .get(http::header::HOST)
                .map(|h| h.to_str().unwrap_or_default().to_string())
                .unwrap_or_default()
        }),
    )
}

fn sleeper(delay: Duration) -> Router {
    Router::new().route(
        "/sleep",
        get(move || async move {
            tokio::time::sleep(delay).await;
            "slept"
        }),
    )
}

#[tokio::test]
async fn host_header_carries_the_logical_service_name() {
    let backend = TestBackend::start_with(echo_host()).await;
    let client = client(&[(
        "MESH_SERVICE_USER_API_ENDPOINTS",
        backend.addr().to_string(),
    )]);
    let (status, _, host) = text(&client, "http://user-api/host").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(host, "user-api");
    let (_, _, host) = text(&client, "http://user-api:8080/host").await;
    assert_eq!(host, "user-api:8080", "the port the caller named is kept");
}

#[tokio::test]
async fn unknown_host_is_refused_unless_egress_is_allowed() {
    let backend = TestBackend::start().await;
    let outside = format!("http://{}/", backend.addr());

    let denied = client(&[]);
    let err = denied.send(request(&outside)).await.unwrap_err();
    assert!(err.is_unknown_service(), "{err}");
    assert!(
        err.to_string().contains("MESH_EGRESS"),
        "the error says how to allow it: {err}"
    );
    assert_eq!(backend.served(), 0);

    let allowed = client(&[("MESH_EGRESS", "allow".into())]);
    let (status, _, body) = text(&allowed, &outside).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(&backend.addr().to_string()));
    assert_eq!(backend.served(), 1);
}

#[tokio::test]
async fn http1_connections_are_reused_and_capped_per_endpoint() {
    let backend = TestBackend::start_with(sleeper(Duration::from_millis(20))).await;
    let client = client(&[
        ("MESH_SERVICE_SLOW_ENDPOINTS", backend.addr().to_string()),
        ("MESH_SERVICE_SLOW_MAX_CONNECTIONS", "2".into()),
    ]);
    let calls = (0..20).map(|_| text(&client, "http://slow/sleep"));
    let results = futures_util::future::join_all(calls).await;
    assert!(results
        .iter()
        .all(|(s, v, _)| *s == StatusCode::OK && *v == Version::HTTP_11));
    assert_eq!(backend.served(), 20);
    assert_eq!(
        backend.accepted(),
        2,
        "20 concurrent requests share the 2 allowed connections"
    );
    for _ in 0..10 {
        text(&client, "http://slow/sleep").await;
    }
    assert_eq!(
        backend.accepted(),
        2,
        "sequential requests reuse pooled connections"
    );
}

#[tokio::test]
async fn http2_multiplexes_requests_over_one_connection() {
    let backend = TestBackend::start_with(sleeper(Duration::from_millis(20))).await;
    let client = client(&[
        ("MESH_SERVICE_H2_ENDPOINTS", backend.addr().to_string()),
        ("MESH_SERVICE_H2_PROTOCOL", "http2".into()),
    ]);
    let calls = (0..50).map(|_| text(&client, "http://h2/sleep"));
    let results = futures_util::future::join_all(calls).await;
    assert!(results
        .iter()
        .all(|(s, v, _)| *s == StatusCode::OK && *v == Version::HTTP_2));
    assert_eq!(backend.served(), 50);
    assert_eq!(backend.accepted(), 1);
}

#[tokio::test]
async fn connections_older_than_max_age_take_no_new_requests() {
    for protocol in ["http1", "http2"] {
        let backend = TestBackend::start().await;
        let client = client(&[
            ("MESH_SERVICE_AGED_ENDPOINTS", backend.addr().to_string()),
            ("MESH_SERVICE_AGED_PROTOCOL", protocol.into()),
            ("MESH_SERVICE_AGED_MAX_CONNECTION_AGE", "50ms".into()),
        ]);
        for _ in 0..3 {
            assert_eq!(text(&client, "http://aged/").await.0, StatusCode::OK);
            // Far beyond the maximum age, so the next request needs a new connection.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert_eq!(
            backend.accepted(),
            3,
            "{protocol}: one connection per aged-out interval"
        );
    }
}

#[tokio::test]
async fn request_timeout_ends_a_request_the_backend_never_answers() {
    let backend = TestBackend::start_with(sleeper(Duration::from_secs(30))).await;
    let client = client(&[
        ("MESH_SERVICE_STUCK_ENDPOINTS", backend.addr().to_string()),
        ("MESH_SERVICE_STUCK_TIMEOUT", "200ms".into()),
    ]);
    let err = client
        .send(request("http://stuck/sleep"))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
}

#[tokio::test]
async fn service_with_no_reachable_endpoint_fails_with_no_endpoint_after_queue_timeout() {
    // A port that was just freed: connections to it are refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let client = client(&[
        ("MESH_SERVICE_GONE_ENDPOINTS", closed.to_string()),
        ("MESH_SERVICE_GONE_QUEUE_TIMEOUT", "100ms".into()),
    ]);
    let err = client.send(request("http://gone/")).await.unwrap_err();
    assert!(err.is_no_endpoint() || err.is_connect(), "{err}");
    // Once known unreachable, the endpoint is skipped and the request waits for
    // one to become ready, then fails with a distinct error.
    let err = client.send(request("http://gone/")).await.unwrap_err();
    assert!(err.is_no_endpoint(), "{err}");
}

#[tokio::test]
async fn a_request_without_a_host_is_an_invalid_uri() {
    let client = client(&[]);
    let err = client.send(request("/relative")).await.unwrap_err();
    assert!(err.is_invalid_uri(), "{err}");
}

#[tokio::test]
async fn response_body_names_the_endpoint_that_answered() {
    for protocol in ["http1", "http2"] {
        let (a, b) = (TestBackend::start().await, TestBackend::start().await);
        let client = client(&[
            (
                "MESH_SERVICE_PAIR_ENDPOINTS",
                format!("{},{}", a.addr(), b.addr()),
            ),
            ("MESH_SERVICE_PAIR_PROTOCOL", protocol.into()),
        ]);
        for _ in 0..6 {
            let response = client.send(request("http://pair/")).await.unwrap();
            let served_by = response.body().served_by().expect("an endpoint answered");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            // Each backend's `/` answers with its own address.
            assert_eq!(
                String::from_utf8_lossy(&body),
                format!("served by {served_by}"),
                "{protocol}"
            );
        }
        assert_eq!(a.served() + b.served(), 6, "{protocol}");
    }
}
