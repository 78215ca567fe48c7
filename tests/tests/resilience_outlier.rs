//! Outlier detection, the circuit breaker and the client's optional limits and
//! faults end to end: real backends on loopback, counting what reaches them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use mesh_core::breaker::BreakerState;
use mesh_core::config::MeshConfig;
use mesh_http::body::RequestBody;
use mesh_http::MeshClient;
use mesh_tests::backend::TestBackend;

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

/// `/work` answers `status` at once.
fn answering(status: StatusCode) -> Router {
    Router::new().route("/work", get(move || async move { status }))
}

fn served(backends: &[TestBackend]) -> u64 {
    backends.iter().map(TestBackend::served).sum()
}

/// Sends `total` GETs to `http://svc/work` from 8 workers; returns the successes
/// and the failures the breaker refused.
async fn load(client: &MeshClient, total: u64) -> (u64, u64) {
    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (client, next, ok, refused) =
                (client.clone(), next.clone(), ok.clone(), refused.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let request = Request::get("http://svc/work").body(empty()).unwrap();
                    match client.send(request).await {
                        Ok(response) => {
                            let status = response.status();
                            if response.into_body().collect().await.is_ok() && status.is_success() {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) if e.is_breaker_open() => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {}
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    (ok.load(Ordering::Relaxed), refused.load(Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_failing_backend_is_ejected_and_draws_no_more_traffic() {
    let good = [
        TestBackend::start_with(answering(StatusCode::OK)).await,
        TestBackend::start_with(answering(StatusCode::OK)).await,
    ];
    // Fails in microseconds: without ejection its quick answers would attract
    // picks from PeakEWMA.
    let bad = TestBackend::start_with(answering(StatusCode::INTERNAL_SERVER_ERROR)).await;
    let endpoints = format!("{},{},{}", good[0].addr(), good[1].addr(), bad.addr());
    let client = client(&[("MESH_SERVICE_SVC_ENDPOINTS", endpoints)]);
    client.ready().await;
    let requests = 2000;
    let (ok, _) = load(&client, requests).await;
    let ejections = client.ejections("svc").unwrap();
    println!(
        "fast-failing backend: served {} of {requests}, ok {ok}, ejections {ejections}",
        bad.served()
    );
    assert_eq!(ejections, 1, "ejected once, for 30 s");
    // Five failures in a row eject it; a few more may have been in flight.
    assert!(
        bad.served() <= 5 + 8,
        "the ejected backend served {}",
        bad.served()
    );
    assert_eq!(ok + bad.served(), requests, "every other request succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejections_never_exceed_one_when_every_backend_fails() {
    let backends = [
        TestBackend::start_with(answering(StatusCode::INTERNAL_SERVER_ERROR)).await,
        TestBackend::start_with(answering(StatusCode::INTERNAL_SERVER_ERROR)).await,
        TestBackend::start_with(answering(StatusCode::INTERNAL_SERVER_ERROR)).await,
    ];
    let endpoints: Vec<String> = backends.iter().map(|b| b.addr().to_string()).collect();
    let client = client(&[("MESH_SERVICE_SVC_ENDPOINTS", endpoints.join(","))]);
    client.ready().await;
    load(&client, 500).await;
    // 10% of 3 rounds down to none, but one may always go: exactly one.
    assert_eq!(client.ejections("svc"), Some(1));
    assert!(backends.iter().filter(|b| b.served() > 100).count() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_fails_fast_without_reaching_the_backends() {
    let backends = vec![
        TestBackend::start_with(answering(StatusCode::SERVICE_UNAVAILABLE)).await,
        TestBackend::start_with(answering(StatusCode::SERVICE_UNAVAILABLE)).await,
    ];
    let endpoints: Vec<String> = backends.iter().map(|b| b.addr().to_string()).collect();
    let client = client(&[
        ("MESH_SERVICE_SVC_ENDPOINTS", endpoints.join(",")),
        ("MESH_SERVICE_SVC_BREAKER", "on".into()),
        ("MESH_SERVICE_SVC_BREAKER_WINDOW", "20".into()),
        // Far longer than the test: no probes while it runs.
        ("MESH_SERVICE_SVC_BREAKER_OPEN_TIME", "10m".into()),
    ]);
    client.ready().await;
    assert_eq!(client.breaker_state("svc"), Some(BreakerState::Closed));
    // Sequentially, so exactly 20 requests reach the backends before it opens.
    for _ in 0..20 {
        let request = Request::get("http://svc/work").body(empty()).unwrap();
        let response = client.send(request).await.expect("a 503 is a response");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(client.breaker_state("svc"), Some(BreakerState::Open));
    let reached = served(&backends);
    let (ok, refused) = load(&client, 1000).await;
    println!("breaker open: {refused} of 1000 refused, backends reached {reached} before");
    assert_eq!(ok, 0);
    assert_eq!(
        refused, 1000,
        "every request failed fast with is_breaker_open"
    );
    assert_eq!(served(&backends), reached, "nothing reached the backends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbound_rate_limit_fails_requests_before_sending_them() {
    let backend = TestBackend::start_with(answering(StatusCode::OK)).await;
    let client = client(&[
        ("MESH_SERVICE_SVC_ENDPOINTS", backend.addr().to_string()),
        ("MESH_SERVICE_SVC_RATE_LIMIT", "1/s,burst=10".into()),
    ]);
    client.ready().await;
    let started = tokio::time::Instant::now();
    let (mut ok, mut limited) = (0u64, 0u64);
    for _ in 0..100 {
        let request = Request::get("http://svc/work").body(empty()).unwrap();
        match client.send(request).await {
            Ok(response) if response.status().is_success() => ok += 1,
            Err(e) if e.is_rate_limited() => limited += 1,
            other => panic!("unexpected outcome: {other:?}"),
        }
    }
    let allowed = 10 + started.elapsed().as_secs() + 1;
    assert_eq!(ok + limited, 100);
    assert!((10..=allowed).contains(&ok), "{ok} sent, at most {allowed}");
    assert_eq!(
        backend.served(),
        ok,
        "refused requests never reached the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbound_concurrency_limit_refuses_requests_over_it() {
    // The backend holds each request until the test opens the gate.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let arrived = Arc::new(tokio::sync::Notify::new());
    let held = Router::new().route(
        "/work",
        get({
            let (gate, arrived) = (gate.clone(), arrived.clone());
            move || async move {
                arrived.notify_one();
                let _pass = gate.acquire().await;
                StatusCode::OK
            }
        }),
    );
    let backend = TestBackend::start_with(held).await;
    let client = client(&[
        ("MESH_SERVICE_SVC_ENDPOINTS", backend.addr().to_string()),
        ("MESH_SERVICE_SVC_CONCURRENCY", "1".into()),
    ]);
    client.ready().await;
    let first = tokio::spawn({
        let client = client.clone();
        async move {
            let request = Request::get("http://svc/work").body(empty()).unwrap();
            client.send(request).await
        }
    });
    // The first request is at the backend, holding the only place.
    arrived.notified().await;
    let request = Request::get("http://svc/work").body(empty()).unwrap();
    let refused = client
        .send(request)
        .await
        .expect_err("over the limit: refused");
    assert!(refused.is_overloaded(), "{refused:?}");
    gate.add_permits(1);
    let first = first.await.unwrap().expect("the first request is answered");
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(backend.served(), 1, "the refused request was never sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_aborts_answer_without_reaching_the_backend() {
    let backend = TestBackend::start_with(answering(StatusCode::OK)).await;
    let client = client(&[
        ("MESH_SERVICE_SVC_ENDPOINTS", backend.addr().to_string()),
        ("MESH_SERVICE_SVC_FAULT_ABORT", "418@100%".into()),
    ]);
    client.ready().await;
    for _ in 0..10 {
        let request = Request::get("http://svc/work").body(empty()).unwrap();
        let response = client.send(request).await.expect("an abort is a response");
        assert_eq!(response.status(), StatusCode::IM_A_TEAPOT);
    }
    assert_eq!(backend.served(), 0, "nothing reached the backend");
}
