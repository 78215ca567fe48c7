//! Active HTTP health checks end to end: real backends on loopback, counting the
//! requests each one receives while its health path fails and recovers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use mesh_core::config::MeshConfig;
use mesh_http::MeshClient;
use mesh_tests::backend::TestBackend;

/// A backend whose `/work` counts requests and whose `/healthz` answers the
/// status the test sets, counting probes.
struct Backend {
    _server: TestBackend,
    addr: std::net::SocketAddr,
    work: Arc<AtomicU64>,
    probes: Arc<AtomicU64>,
    health: Arc<AtomicU16>,
}

impl Backend {
    async fn start() -> Self {
        let work = Arc::new(AtomicU64::new(0));
        let probes = Arc::new(AtomicU64::new(0));
        let health = Arc::new(AtomicU16::new(200));
        let (w, p, h) = (work.clone(), probes.clone(), health.clone());
        let app = Router::new()
            .route(
                "/work",
                get(move || async move {
                    w.fetch_add(1, Ordering::Relaxed);
                    "ok"
                }),
            )
            .route(
                "/healthz",
                get(move || async move {
                    p.fetch_add(1, Ordering::Relaxed);
                    StatusCode::from_u16(h.load(Ordering::Relaxed)).unwrap()
                }),
            );
        let server = TestBackend::start_with(app).await;
        Backend {
            addr: server.addr(),
            _server: server,
            work,
            probes,
            health,
        }
    }
}

fn client(backends: &[Backend]) -> MeshClient {
    let endpoints: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
    let env: BTreeMap<String, String> = [
        ("MESH_SERVICE_SVC_ENDPOINTS", endpoints.join(",")),
        ("MESH_SERVICE_SVC_BALANCER", "round-robin".into()),
        // Only health checks may take an endpoint out in this test.
        ("MESH_SERVICE_SVC_OUTLIER_DETECTION", "off".into()),
        ("MESH_SERVICE_SVC_HEALTH_CHECK_PATH", "/healthz".into()),
        ("MESH_SERVICE_SVC_HEALTH_CHECK_INTERVAL", "100ms".into()),
        ("MESH_SERVICE_SVC_HEALTH_CHECK_TIMEOUT", "100ms".into()),
        (
            "MESH_SERVICE_SVC_HEALTH_CHECK_HEALTHY_THRESHOLD",
            "2".into(),
        ),
        (
            "MESH_SERVICE_SVC_HEALTH_CHECK_UNHEALTHY_THRESHOLD",
            "2".into(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    MeshClient::new(MeshConfig::from_source(&env).expect("valid configuration"))
        .expect("client starts")
}

/// Waits (up to a generous 30 s) until `done` holds for the client's endpoint
/// counts; there is no event to await from outside the client.
async fn until(
    client: &MeshClient,
    what: &str,
    done: impl Fn(&mesh_core::balance::BalancerStats) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let stats = client.endpoint_stats("svc").expect("a configured service");
        if done(&stats) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still {stats:?} after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `n` GETs to `/work`; every one must succeed.
async fn send(client: &MeshClient, n: usize) {
    for _ in 0..n {
        let request = Request::get("http://svc/work")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = client
            .clone()
            .send(request.map(|b| b.map_err(Into::into).boxed_unsync()))
            .await
            .expect("request succeeds");
        assert!(response.status().is_success());
        response.into_body().collect().await.expect("body");
    }
}

fn work(backends: &[Backend]) -> Vec<u64> {
    backends
        .iter()
        .map(|b| b.work.swap(0, Ordering::Relaxed))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_failing_its_health_path_stops_receiving_traffic_and_returns() {
    let backends = vec![
        Backend::start().await,
        Backend::start().await,
        Backend::start().await,
    ];
    let client = client(&backends);
    until(&client, "every endpoint passes its first check", |s| {
        s.known == 3 && s.ready == 3
    })
    .await;
    send(&client, 300).await;
    let before = work(&backends);
    assert!(before.iter().all(|&n| n > 0), "all three serve: {before:?}");

    backends[1].health.store(503, Ordering::Relaxed);
    let probes_at_flip = backends[1].probes.load(Ordering::Relaxed);
    until(&client, "the failing endpoint leaves rotation", |s| {
        s.unhealthy == 1 && s.ready == 2
    })
    .await;
    assert!(
        backends[1].probes.load(Ordering::Relaxed) >= probes_at_flip + 2,
        "it left after fewer failed probes than the threshold"
    );
    work(&backends);
    send(&client, 300).await;
    let during = work(&backends);
    assert_eq!(
        during[1], 0,
        "the unhealthy backend received traffic: {during:?}"
    );
    assert_eq!(during[0] + during[2], 300);

    backends[1].health.store(200, Ordering::Relaxed);
    until(&client, "the recovered endpoint returns", |s| {
        s.unhealthy == 0 && s.ready == 3
    })
    .await;
    send(&client, 300).await;
    let after = work(&backends);
    assert!(
        after[1] > 0,
        "the recovered backend received nothing: {after:?}"
    );
}

#[tokio::test]
async fn grpc_health_check_without_a_grpc_probe_is_a_build_error_naming_the_variable() {
    let env = [
        ("MESH_SERVICE_GREETER_ENDPOINTS", "127.0.0.1:1"),
        ("MESH_SERVICE_GREETER_PROTOCOL", "grpc"),
        ("MESH_SERVICE_GREETER_HEALTH_CHECK_GRPC_SERVICE", ""),
    ];
    let e = MeshClient::new(MeshConfig::from_source(&env).unwrap()).expect_err("no gRPC probe");
    let text = e.to_string();
    assert!(
        text.contains("MESH_SERVICE_GREETER_HEALTH_CHECK_GRPC_SERVICE"),
        "{text}"
    );
    assert!(text.contains("grpc_health_probe"), "{text}");
}
