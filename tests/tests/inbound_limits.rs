//! `Mesh::serve`'s inbound limits configured from `MESH_INBOUND_*` variables, on a
//! real mTLS server called by real mesh clients: the concurrency limit keeps the
//! handler at or under its limit and shed requests never reach it; the per-peer
//! rate limit stops one noisy caller without touching another.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use mesh_core::config::MeshConfig;
use mesh_http::{Mesh, MeshClient};
use mesh_tests::pki::{PemFiles, Pki};

const SERVER_ID: &str = "spiffe://example.org/server";

fn mesh(files: &PemFiles, extra: &[(&str, String)]) -> Mesh {
    let mut env: BTreeMap<String, String> = [
        ("MESH_TLS_CERT", files.cert.display().to_string()),
        ("MESH_TLS_KEY", files.key.display().to_string()),
        ("MESH_TLS_BUNDLE", files.bundle.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    Mesh::new(MeshConfig::from_source(&env).expect("valid configuration")).expect("mesh starts")
}

/// Requests inside the handler: now, at most, and in all.
#[derive(Default)]
struct Gauge {
    now: AtomicU64,
    max: AtomicU64,
    entered: AtomicU64,
}

/// Serves `/work` (sleeps 50 ms, counted by `gauge`) through `Mesh::serve`'s
/// stack with `limits`; stops when the returned sender is dropped.
async fn server(
    pki: &Pki,
    limits: &[(&str, String)],
    gauge: Arc<Gauge>,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let files = pki.server("server", SERVER_ID);
    let mut extra = vec![("MESH_INBOUND_ADDR", "127.0.0.1:0".to_string())];
    extra.extend(limits.iter().cloned());
    let mesh = mesh(&files, &extra);
    let inbound = mesh.inbound().await.expect("bind");
    let addr = inbound.local_addr().unwrap();
    let app = Router::new().route(
        "/work",
        get(move || {
            let gauge = gauge.clone();
            async move {
                let now = gauge.now.fetch_add(1, Ordering::SeqCst) + 1;
                gauge.entered.fetch_add(1, Ordering::SeqCst);
                gauge.max.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                gauge.now.fetch_sub(1, Ordering::SeqCst);
                "done"
            }
        }),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        mesh.serve_inbound(inbound, app, async move {
            let _ = stopped.await;
        })
        .await;
    });
    (addr, stop)
}

/// A mesh client with its own SPIFFE ID that neither retries nor limits itself,
/// so every request reaches the server's limits.
fn client(pki: &Pki, name: &str, addr: SocketAddr) -> MeshClient {
    let files = pki.client(name, &format!("spiffe://example.org/{name}"));
    mesh(
        &files,
        &[
            ("MESH_SERVICE_SERVER_ENDPOINTS", addr.to_string()),
            ("MESH_SERVICE_SERVER_RETRY_MAX_ATTEMPTS", "1".into()),
            ("MESH_SERVICE_SERVER_PROTOCOL", "http2".into()),
        ],
    )
    .client()
}

async fn get_work(client: &MeshClient) -> StatusCode {
    let request = http::Request::get("http://server/work")
        .body(Empty::<Bytes>::new().map_err(Into::into).boxed_unsync())
        .unwrap();
    let response = client.send(request).await.expect("an answer");
    let status = response.status();
    let _ = response.into_body().collect().await;
    status
}

async fn burst(client: &MeshClient, n: usize) -> BTreeMap<u16, usize> {
    let calls = (0..n).map(|_| {
        let client = client.clone();
        tokio::spawn(async move { get_work(&client).await })
    });
    let mut statuses = BTreeMap::new();
    for call in calls.collect::<Vec<_>>() {
        *statuses.entry(call.await.unwrap().as_u16()).or_default() += 1;
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_concurrency_sheds_beyond_the_limit_before_the_handler() {
    let pki = Pki::new("example.org");
    let gauge = Arc::new(Gauge::default());
    let (addr, _stop) = server(
        &pki,
        &[("MESH_INBOUND_CONCURRENCY", "4".into())],
        gauge.clone(),
    )
    .await;
    let client = client(&pki, "caller", addr);

    let statuses = burst(&client, 64).await;

    let ok = statuses.get(&200).copied().unwrap_or(0);
    let shed = statuses.get(&503).copied().unwrap_or(0);
    assert_eq!(ok + shed, 64, "only 200 and 503 answers: {statuses:?}");
    assert!(
        shed > 0,
        "64 concurrent 50 ms requests against a limit of 4 shed some: {statuses:?}"
    );
    assert!(
        gauge.max.load(Ordering::SeqCst) <= 4,
        "at most 4 requests in the handler at once, saw {}",
        gauge.max.load(Ordering::SeqCst)
    );
    assert_eq!(
        gauge.entered.load(Ordering::SeqCst),
        ok as u64,
        "shed requests never reach the handler"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_peer_rate_limit_stops_one_caller_not_another() {
    let pki = Pki::new("example.org");
    let gauge = Arc::new(Gauge::default());
    // One request a minute after a burst of 5: no token refills during the test.
    let (addr, _stop) = server(
        &pki,
        &[("MESH_INBOUND_PEER_RATE_LIMIT", "1/m,burst=5".into())],
        gauge.clone(),
    )
    .await;
    let noisy = client(&pki, "noisy", addr);
    let quiet = client(&pki, "quiet", addr);

    let noisy_statuses = burst(&noisy, 20).await;
    assert_eq!(noisy_statuses.get(&200), Some(&5), "{noisy_statuses:?}");
    assert_eq!(noisy_statuses.get(&429), Some(&15), "{noisy_statuses:?}");

    let quiet_statuses = burst(&quiet, 5).await;
    assert_eq!(quiet_statuses.get(&200), Some(&5), "{quiet_statuses:?}");
    assert_eq!(
        gauge.entered.load(Ordering::SeqCst),
        10,
        "429s never reach the handler"
    );
}

#[test]
fn inbound_limit_variables_are_validated() {
    let env: BTreeMap<String, String> = [
        ("MESH_INBOUND_RATE_LIMIT", "fast"),
        ("MESH_INBOUND_PEER_RATE_LIMIT", "-3/s"),
        ("MESH_INBOUND_CONCURRENCY", "lots"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let error = MeshConfig::from_source(&env).unwrap_err().to_string();
    for needle in [
        "MESH_INBOUND_RATE_LIMIT",
        "\"fast\"",
        "MESH_INBOUND_PEER_RATE_LIMIT",
        "MESH_INBOUND_CONCURRENCY",
        "\"lots\"",
        "100/s",
    ] {
        assert!(error.contains(needle), "{needle} missing from: {error}");
    }
}
