//! Retries, replay and deadlines end to end: real backends on loopback, counting
//! what they receive.
#![allow(clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty, StreamBody};
use mesh_core::config::MeshConfig;
use mesh_core::deadline::DeadlineLayer;
use mesh_core::retry::Retryable;
use mesh_http::body::RequestBody;
use mesh_http::MeshClient;
use mesh_tests::backend::TestBackend;
use parking_lot::Mutex;
use tokio::net::TcpListener;

fn client(vars: &[(&str, String)]) -> MeshClient {
    let env: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    MeshClient::new(MeshConfig::from_source(&env).expect("valid configuration"))
        .expect("client starts")
}

fn empty() -> RequestBody {
    Empty::<Bytes>::new().map_err(Into::into).boxed_unsync()
}

/// A body streamed in `chunks` pieces of `size` bytes (no size hint up front).
fn streamed(chunks: usize, size: usize) -> RequestBody {
    let frames: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = (0..chunks)
        .map(|i| Ok(http_body::Frame::data(Bytes::from(vec![i as u8; size]))))
        .collect();
    StreamBody::new(futures_util::stream::iter(frames))
        .map_err(Into::into)
        .boxed_unsync()
}

/// `/work` fails `fail_per_10` of every 10 requests with 503.
fn failing(fail_per_10: u64) -> Router {
    let n = Arc::new(AtomicU64::new(0));
    Router::new().route(
        "/work",
        get(move || {
            let i = n.fetch_add(1, Ordering::Relaxed);
            async move {
                if i % 10 < fail_per_10 {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                }
            }
        }),
    )
}

/// Sends `total` GETs to `http://svc/work` from 16 workers; returns the successes.
async fn load(client: &MeshClient, total: u64) -> u64 {
    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (client, next, ok) = (client.clone(), next.clone(), ok.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let request = Request::get("http://svc/work").body(empty()).unwrap();
                    if let Ok(response) = client.send(request).await {
                        let status = response.status();
                        if response.into_body().collect().await.is_ok() && status.is_success() {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    ok.load(Ordering::Relaxed)
}

fn served(backends: &[TestBackend]) -> u64 {
    backends.iter().map(TestBackend::served).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_backend_failing_30_percent_is_hidden_by_retries_within_the_budget() {
    let backends = vec![
        TestBackend::start_with(failing(0)).await,
        TestBackend::start_with(failing(0)).await,
        TestBackend::start_with(failing(3)).await,
    ];
    let endpoints: Vec<String> = backends.iter().map(|b| b.addr().to_string()).collect();
    let client = client(&[("MESH_SERVICE_SVC_ENDPOINTS", endpoints.join(","))]);
    client.ready().await;
    let requests = 3000;
    let ok = load(&client, requests).await;
    let attempts = served(&backends);
    let stats = client.retry_stats("svc").unwrap();
    println!(
        "one of three failing 30%: ok {ok}/{requests}, attempts/request {:.3}, {stats:?}",
        attempts as f64 / requests as f64
    );
    assert!(
        ok as f64 / requests as f64 >= 0.999,
        "ok {ok}/{requests}, {stats:?}"
    );
    assert!(
        attempts as f64 / requests as f64 <= 1.35,
        "attempts {attempts} for {requests} requests"
    );
    assert!(backends[2].served() > 0, "the failing backend got traffic");
    assert_eq!(stats.requests, requests);
    assert_eq!(stats.retries, attempts - requests, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_failing_keeps_retries_within_a_20_percent_budget() {
    let backends = vec![
        TestBackend::start_with(failing(10)).await,
        TestBackend::start_with(failing(10)).await,
        TestBackend::start_with(failing(10)).await,
    ];
    let endpoints: Vec<String> = backends.iter().map(|b| b.addr().to_string()).collect();
    let client = client(&[
        ("MESH_SERVICE_SVC_ENDPOINTS", endpoints.join(",")),
        ("MESH_SERVICE_SVC_RETRY_MAX_ATTEMPTS", "5".into()),
        ("MESH_SERVICE_SVC_RETRY_MIN_PER_SECOND", "0".into()),
    ]);
    client.ready().await;
    let requests = 2000;
    let ok = load(&client, requests).await;
    assert_eq!(ok, 0);
    let attempts = served(&backends);
    let stats = client.retry_stats("svc").unwrap();
    println!(
        "all failing: attempts/request {:.3}, {stats:?}",
        attempts as f64 / requests as f64
    );
    assert!(
        attempts as f64 / requests as f64 <= 1.25,
        "attempts {attempts} for {requests} requests: {stats:?}"
    );
    assert!(stats.retries > 0 && stats.exhausted > 0, "{stats:?}");
}

/// `/upload` answers 503 to the first body it receives when `fail_first`, 200
/// after; it keeps every body received.
fn upload(fail_first: bool, bodies: Arc<Mutex<Vec<Bytes>>>) -> Router {
    Router::new().route(
        "/upload",
        post(move |body: Bytes| {
            let bodies = bodies.clone();
            async move {
                let mut bodies = bodies.lock();
                bodies.push(body);
                if fail_first && bodies.len() == 1 {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                }
            }
        }),
    )
}

#[tokio::test]
async fn post_over_the_replay_cap_is_neither_retried_nor_duplicated() {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let backend = TestBackend::start_with(upload(true, bodies.clone())).await;
    let client = client(&[
        ("MESH_SERVICE_SVC_ENDPOINTS", backend.addr().to_string()),
        ("MESH_SERVICE_SVC_REPLAY_BUFFER", "1KiB".into()),
    ]);
    let mut request = Request::post("http://svc/upload")
        .body(streamed(8, 512))
        .unwrap();
    request.extensions_mut().insert(Retryable(true));
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let bodies = bodies.lock();
    assert_eq!(bodies.len(), 1, "the body was sent once");
    assert_eq!(bodies[0].len(), 8 * 512, "and in full");
    assert_eq!(client.retry_stats("svc").unwrap().retries, 0);
}

#[tokio::test]
async fn post_under_the_cap_marked_retryable_is_replayed_byte_identical() {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let backend = TestBackend::start_with(upload(true, bodies.clone())).await;
    let client = client(&[("MESH_SERVICE_SVC_ENDPOINTS", backend.addr().to_string())]);
    let mut request = Request::post("http://svc/upload")
        .body(streamed(16, 1000))
        .unwrap();
    request.extensions_mut().insert(Retryable(true));
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    {
        let bodies = bodies.lock();
        assert_eq!(bodies.len(), 2);
        assert_eq!(bodies[0].len(), 16_000);
        assert_eq!(bodies[0], bodies[1], "the retry sent the same bytes");
    }

    // Unmarked, a POST is not retried.
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let backend = TestBackend::start_with(upload(true, bodies.clone())).await;
    let client = self::client(&[("MESH_SERVICE_SVC_ENDPOINTS", backend.addr().to_string())]);
    let request = Request::post("http://svc/upload")
        .body(streamed(2, 10))
        .unwrap();
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(bodies.lock().len(), 1);
}

/// Serves `app` behind the inbound deadline layer on a fresh loopback port.
async fn serve(app: Router) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = app.layer(DeadlineLayer::new());
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Signals when dropped: the handler holding it was cancelled.
struct Cancelled(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for Cancelled {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_runs_down_a_chain_and_c_sees_its_request_cancelled() {
    // C never answers; it reports the timeout it was given and its cancellation.
    let (cancel_tx, cancel_rx) = tokio::sync::oneshot::channel();
    let cancel_tx = Arc::new(Mutex::new(Some(cancel_tx)));
    let c_timeout = Arc::new(Mutex::new(None::<u64>));
    let seen = c_timeout.clone();
    let c = serve(Router::new().route(
        "/never",
        get(move |headers: http::HeaderMap| {
            let guard = Cancelled(cancel_tx.lock().take());
            *seen.lock() = headers
                .get(mesh_core::deadline::TIMEOUT_HEADER)
                .and_then(|v| v.to_str().ok()?.parse().ok());
            async move {
                let _guard = guard;
                std::future::pending::<()>().await;
                StatusCode::OK
            }
        }),
    ))
    .await;
    // B calls C with a generous timeout of its own: only A's deadline bounds it.
    let to_c = client(&[
        ("MESH_SERVICE_C_ENDPOINTS", c.to_string()),
        ("MESH_SERVICE_C_TIMEOUT", "60s".into()),
    ]);
    let b = serve(Router::new().route(
        "/relay",
        get(move || {
            let to_c = to_c.clone();
            async move {
                let request = Request::get("http://c/never").body(empty()).unwrap();
                match to_c.send(request).await {
                    Ok(r) => r.status(),
                    Err(e) if e.is_timeout() => StatusCode::GATEWAY_TIMEOUT,
                    Err(_) => StatusCode::BAD_GATEWAY,
                }
            }
        }),
    ))
    .await;
    let a = client(&[
        ("MESH_SERVICE_B_ENDPOINTS", b.to_string()),
        ("MESH_SERVICE_B_TIMEOUT", "500ms".into()),
    ]);
    let request = Request::get("http://b/relay").body(empty()).unwrap();
    let error = a.send(request).await.expect_err("A's deadline passes");
    assert!(error.is_timeout(), "{error}");
    tokio::time::timeout(Duration::from_secs(10), cancel_rx)
        .await
        .expect("C's handler was cancelled")
        .expect("signalled by its drop");
    let given = c_timeout.lock().expect("C received a deadline");
    assert!(given <= 500, "C was given {given} ms, more than A's 500 ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedge_goes_to_another_backend_and_the_fast_answer_wins() {
    // One backend never answers in time (a minute); the other at once.
    let slow = TestBackend::start_with(Router::new().route(
        "/work",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            "slow"
        }),
    ))
    .await;
    let fast =
        TestBackend::start_with(Router::new().route("/work", get(|| async { "fast" }))).await;
    let client = client(&[
        (
            "MESH_SERVICE_SVC_ENDPOINTS",
            format!("{},{}", slow.addr(), fast.addr()),
        ),
        ("MESH_SERVICE_SVC_BALANCER", "round-robin".into()),
        ("MESH_SERVICE_SVC_HEDGE_DELAY", "50ms".into()),
    ]);
    client.ready().await;
    for _ in 0..10 {
        let request = Request::get("http://svc/work").body(empty()).unwrap();
        let response = client.send(request).await.expect("answered");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "fast");
    }
    // Round robin sends about half the first attempts to the slow backend; each of
    // those was hedged, to the fast one.
    let stats = client.retry_stats("svc").unwrap();
    assert!(slow.served() >= 1, "the slow backend got first attempts");
    assert_eq!(
        stats.retries,
        slow.served(),
        "one hedge per slow first attempt"
    );
    assert_eq!(fast.served(), 10, "every answer came from the fast backend");
}

/// Each attempt carries the time left when it is sent: the first attempt waits
/// 400 ms before its 503, so the retry must tell the backend at least that much
/// less than the first one did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_carries_the_time_left_when_it_is_sent() {
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let app = {
        let seen = seen.clone();
        Router::new().route(
            "/slow-then-ok",
            get(move |headers: http::HeaderMap| {
                let seen = seen.clone();
                async move {
                    let left: u64 = headers
                        .get(mesh_core::deadline::TIMEOUT_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                        .expect("every attempt carries x-mesh-timeout-ms");
                    let first = {
                        let mut seen = seen.lock();
                        seen.push(left);
                        seen.len() == 1
                    };
                    if first {
                        tokio::time::sleep(Duration::from_millis(400)).await;
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    }
                }
            }),
        )
    };
    let backend = TestBackend::start_with(app).await;
    let client = client(&[
        ("MESH_SERVICE_SLOW_ENDPOINTS", backend.addr().to_string()),
        ("MESH_SERVICE_SLOW_TIMEOUT", "10s".to_string()),
        ("MESH_SERVICE_SLOW_RETRY_BACKOFF", "1ms..2ms".to_string()),
    ]);
    let request = Request::get("http://slow/slow-then-ok")
        .body(empty())
        .unwrap();
    let response = client.send(request).await.expect("the retry answers");
    assert_eq!(response.status(), StatusCode::OK);
    let seen = seen.lock().clone();
    assert_eq!(seen.len(), 2, "one retry: {seen:?}");
    assert!(seen[0] <= 10_000, "{seen:?}");
    assert!(
        seen[1] + 400 <= seen[0],
        "the retry's remaining time reflects the 400 ms the first attempt took: {seen:?}"
    );
}
