use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tower::{service_fn, Layer, Service, ServiceExt};

use super::*;

#[test]
fn rates_parse_with_units_and_bursts_and_bad_ones_are_refused() {
    assert_eq!("100/s".parse(), Ok(Rate::per_second(100.0)));
    assert_eq!("6000/m".parse::<Rate>().unwrap().per_second, 100.0);
    let r: Rate = "10/s,burst=50".parse().unwrap();
    assert_eq!((r.per_second, r.burst), (10.0, 50.0));
    for bad in ["100", "0/s", "-5/s", "10/fortnight", "10/s,burst=0", "x/s"] {
        assert!(bad.parse::<Rate>().is_err(), "{bad}");
    }
}

#[tokio::test(start_paused = true)]
async fn tokens_refill_at_the_rate_up_to_the_burst() {
    let bucket = TokenBucket::new("10/s,burst=5".parse().unwrap());
    for _ in 0..5 {
        bucket.try_acquire().unwrap();
    }
    let refused = bucket.try_acquire().unwrap_err();
    assert_eq!(refused.retry_after(), Duration::from_millis(100));
    tokio::time::advance(Duration::from_millis(100)).await;
    bucket.try_acquire().unwrap();
    assert!(bucket.try_acquire().is_err());
    // A long quiet spell refills only up to the burst.
    tokio::time::advance(Duration::from_secs(60)).await;
    for _ in 0..5 {
        bucket.try_acquire().unwrap();
    }
    assert!(bucket.try_acquire().is_err());
}

#[tokio::test(start_paused = true)]
async fn keys_have_buckets_of_their_own() {
    let limit = KeyedRateLimit::new("1/s".parse().unwrap());
    limit.try_acquire(&"a").unwrap();
    assert!(limit.try_acquire(&"a").is_err());
    limit.try_acquire(&"b").unwrap();
}

#[tokio::test(start_paused = true)]
async fn clones_of_the_limited_service_share_one_limit_and_refused_requests_get_429() {
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let inner = service_fn(move |_req: Request<()>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(Response::new(String::from("ok"))) }
    });
    let layer = RateLimitLayer::new(Arc::new(TokenBucket::new("3/s,burst=3".parse().unwrap())));
    let svc = layer.layer(inner);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        // A fresh clone per request, as a server makes per connection.
        let response = svc.clone().oneshot(Request::new(())).await.unwrap();
        statuses.push(response.status());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(response.headers()["retry-after"], "1");
        }
    }
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::OK).count(), 3);
    assert_eq!(
        handled.load(Ordering::SeqCst),
        3,
        "refused requests never reach the handler"
    );
    let mut svc = svc;
    tokio::time::advance(Duration::from_millis(334)).await;
    let response = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn grpc_calls_over_the_limit_get_resource_exhausted_with_pushback() {
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let inner = service_fn(move |_req: Request<()>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(Response::new(String::from("ok"))) }
    });
    let layer = RateLimitLayer::new(Arc::new(TokenBucket::new("4/s,burst=1".parse().unwrap())));
    let svc = layer.layer(inner);
    let grpc = || {
        Request::post("/pkg.Svc/Method")
            .header("content-type", "application/grpc+proto")
            .body(())
            .unwrap()
    };
    assert_eq!(svc.clone().oneshot(grpc()).await.unwrap().status(), 200);
    let refused = svc.clone().oneshot(grpc()).await.unwrap();
    assert_eq!(
        refused.status(),
        StatusCode::OK,
        "gRPC refusals are HTTP 200"
    );
    assert_eq!(refused.headers()["content-type"], "application/grpc");
    assert_eq!(refused.headers()["grpc-status"], "8");
    assert_eq!(refused.headers()["grpc-retry-pushback-ms"], "250");
    assert!(!refused.headers().contains_key("retry-after"));
    assert!(refused.body().is_empty());
    assert_eq!(handled.load(Ordering::SeqCst), 1);
    // A plain HTTP request over the same limit keeps its 429.
    let refused = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
}
