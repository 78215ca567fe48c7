//! Inbound load shedding and rate limiting on a real axum server: a handler that
//! sleeps a fixed time, flooded by many concurrent requests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use mesh_core::concurrency::{ConcurrencyLimit, ConcurrencyLimitLayer, LimitAlgorithm};
use mesh_core::config::MeshConfig;
use mesh_core::ratelimit::{RateLimitLayer, TokenBucket};
use mesh_http::MeshClient;
use mesh_tests::backend::TestBackend;

/// Counts requests inside the handler: now, at most, in all, and how often the
/// count exceeded the limit read at that moment.
#[derive(Default)]
struct Gauge {
    now: AtomicU64,
    max: AtomicU64,
    entered: AtomicU64,
    over_limit: AtomicU64,
}

fn sleeping(gauge: Arc<Gauge>, limit: Option<Arc<ConcurrencyLimit>>) -> Router {
    Router::new().route(
        "/work",
        get(move || {
            let gauge = gauge.clone();
            let limit = limit.clone();
            async move {
                let now = gauge.now.fetch_add(1, Ordering::SeqCst) + 1;
                gauge.entered.fetch_add(1, Ordering::SeqCst);
                gauge.max.fetch_max(now, Ordering::SeqCst);
                if let Some(limit) = &limit {
                    if now > limit.limit() as u64 {
                        gauge.over_limit.fetch_add(1, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                gauge.now.fetch_sub(1, Ordering::SeqCst);
                "done"
            }
        }),
    )
}

/// A client that neither retries nor limits itself, so every request reaches the
/// server's own limits.
fn client(addr: std::net::SocketAddr) -> MeshClient {
    let env: BTreeMap<String, String> = [
        ("MESH_SERVICE_SVC_ENDPOINTS", addr.to_string()),
        ("MESH_SERVICE_SVC_RETRY_MAX_ATTEMPTS", "1".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    MeshClient::new(MeshConfig::from_source(&env).unwrap()).unwrap()
}

/// Sends `total` requests from `concurrency` workers; returns the count of each
/// status.
async fn flood(client: &MeshClient, total: u64, concurrency: usize) -> BTreeMap<u16, u64> {
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, next) = (client.clone(), next.clone());
            tokio::spawn(async move {
                let mut seen = BTreeMap::new();
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let request = Request::get("http://svc/work")
                        .body(Empty::<Bytes>::new().map_err(Into::into).boxed_unsync())
                        .unwrap();
                    let response = client.send(request).await.expect("a response");
                    let status = response.status().as_u16();
                    response.into_body().collect().await.unwrap();
                    *seen.entry(status).or_insert(0) += 1;
                }
                seen
            })
        })
        .collect();
    let mut all = BTreeMap::new();
    for w in workers {
        for (status, n) in w.await.unwrap() {
            *all.entry(status).or_insert(0) += n;
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_limit_keeps_the_handler_at_its_limit_and_shed_requests_never_reach_it() {
    let gauge = Arc::new(Gauge::default());
    let limit = ConcurrencyLimit::new(LimitAlgorithm::Fixed(8));
    let app = sleeping(gauge.clone(), None).layer(ConcurrencyLimitLayer::new(limit));
    let backend = TestBackend::start_with(app).await;
    let client = client(backend.addr());
    client.ready().await;
    let statuses = flood(&client, 1000, 64).await;
    println!(
        "fixed limit 8, 64 callers: {statuses:?}, max in handler {:?}",
        gauge.max
    );
    let ok = statuses.get(&200).copied().unwrap_or(0);
    let shed = statuses.get(&503).copied().unwrap_or(0);
    assert_eq!(ok + shed, 1000, "only 200 and 503: {statuses:?}");
    assert!(shed > 0, "64 callers against a limit of 8 must be shed");
    assert!(gauge.max.load(Ordering::SeqCst) <= 8);
    assert_eq!(
        gauge.entered.load(Ordering::SeqCst),
        ok,
        "shed requests never reach the handler"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adaptive_limit_never_lets_more_into_the_handler_than_it_allows() {
    let gauge = Arc::new(Gauge::default());
    let limit = ConcurrencyLimit::new(LimitAlgorithm::GRADIENT2);
    let app = sleeping(gauge.clone(), Some(limit.clone()))
        .layer(ConcurrencyLimitLayer::new(limit.clone()));
    let backend = TestBackend::start_with(app).await;
    let client = client(backend.addr());
    client.ready().await;
    let statuses = flood(&client, 2000, 100).await;
    println!(
        "adaptive limit, 100 callers: {statuses:?}, max in handler {:?}, limit now {}",
        gauge.max,
        limit.limit()
    );
    let ok = statuses.get(&200).copied().unwrap_or(0);
    let shed = statuses.get(&503).copied().unwrap_or(0);
    assert_eq!(ok + shed, 2000, "only 200 and 503: {statuses:?}");
    assert!(
        shed > 0,
        "100 callers against a limit starting at 20 must be shed"
    );
    assert_eq!(gauge.over_limit.load(Ordering::SeqCst), 0);
    assert!(
        gauge.max.load(Ordering::SeqCst) <= 200,
        "never above the maximum"
    );
    assert_eq!(
        gauge.entered.load(Ordering::SeqCst),
        ok,
        "shed requests never reach the handler"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbound_rate_limit_is_shared_by_every_connection_and_answers_429() {
    let gauge = Arc::new(Gauge::default());
    // A burst of 50 and a trickle of 1/s: over a test lasting well under 50 s,
    // at most 50 + elapsed seconds get through, whatever the connections.
    let bucket = Arc::new(TokenBucket::new("1/s,burst=50".parse().unwrap()));
    let app = sleeping(gauge.clone(), None).layer(RateLimitLayer::new(bucket));
    let backend = TestBackend::start_with(app).await;
    let client = client(backend.addr());
    client.ready().await;
    let started = tokio::time::Instant::now();
    let statuses = flood(&client, 500, 32).await;
    let allowed = 50 + started.elapsed().as_secs() + 1;
    println!("rate limit 1/s burst 50, 32 callers: {statuses:?}");
    let ok = statuses.get(&200).copied().unwrap_or(0);
    let limited = statuses.get(&429).copied().unwrap_or(0);
    assert_eq!(ok + limited, 500, "{statuses:?}");
    assert!(
        ok >= 50 && ok <= allowed,
        "{ok} allowed through, at most {allowed}"
    );
    assert_eq!(gauge.entered.load(Ordering::SeqCst), ok);
}
