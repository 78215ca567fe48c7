use std::time::Duration;

use super::*;

/// Admits `n` requests, lets `rtt` pass, and reports them all.
async fn round(limit: &Arc<ConcurrencyLimit>, n: usize, rtt: Duration, dropped: bool) {
    let permits: Vec<_> = (0..n).map(|_| limit.try_acquire().unwrap()).collect();
    tokio::time::advance(rtt).await;
    for p in permits {
        p.record(dropped);
    }
}

#[test]
fn limits_parse_and_bad_ones_are_refused() {
    assert_eq!("adaptive".parse(), Ok(LimitAlgorithm::GRADIENT2));
    assert_eq!("aimd".parse(), Ok(LimitAlgorithm::AIMD));
    assert_eq!("50".parse(), Ok(LimitAlgorithm::Fixed(50)));
    for bad in ["0", "-1", "lots"] {
        assert!(bad.parse::<LimitAlgorithm>().is_err(), "{bad}");
    }
}

#[tokio::test(start_paused = true)]
async fn requests_beyond_the_limit_are_shed_and_a_finished_one_frees_its_place() {
    let limit = ConcurrencyLimit::new(LimitAlgorithm::Fixed(2));
    let a = limit.try_acquire().unwrap();
    let _b = limit.try_acquire().unwrap();
    assert_eq!(limit.try_acquire().unwrap_err().limit(), 2);
    a.record(false);
    let c = limit.try_acquire().unwrap();
    drop(c);
    assert_eq!(
        limit.in_flight(),
        1,
        "a cancelled request frees its place too"
    );
}

#[tokio::test(start_paused = true)]
async fn gradient2_grows_while_latency_holds_and_shrinks_when_it_climbs() {
    let limit = ConcurrencyLimit::new(LimitAlgorithm::GRADIENT2);
    assert_eq!(limit.limit(), 20);
    // Steady 10 ms at full use: the queue allowance lets the limit grow.
    for _ in 0..30 {
        let n = limit.limit();
        round(&limit, n, Duration::from_millis(10), false).await;
    }
    let grown = limit.limit();
    assert!(grown >= 100, "grew to {grown}");
    // Latency climbs tenfold: a queue is forming; the limit falls back at once.
    // (Held for long, the new latency becomes the baseline and it grows again.)
    for _ in 0..3 {
        let n = limit.limit();
        round(&limit, n, Duration::from_millis(100), false).await;
    }
    let shrunk = limit.limit();
    assert!(shrunk < grown / 2, "shrank from {grown} to {shrunk}");
    assert!(shrunk >= 20, "never below the minimum");
}

#[tokio::test(start_paused = true)]
async fn gradient2_stays_put_when_the_limit_is_not_used() {
    let limit = ConcurrencyLimit::new(LimitAlgorithm::GRADIENT2);
    for _ in 0..100 {
        round(&limit, 2, Duration::from_millis(10), false).await;
    }
    assert_eq!(limit.limit(), 20);
}

#[tokio::test(start_paused = true)]
async fn gradient2_never_exceeds_its_maximum() {
    let limit = ConcurrencyLimit::new(LimitAlgorithm::GRADIENT2);
    for _ in 0..200 {
        let n = limit.limit();
        round(&limit, n, Duration::from_millis(10), false).await;
    }
    assert_eq!(limit.limit(), 200);
}

#[tokio::test(start_paused = true)]
async fn aimd_adds_one_per_busy_sample_and_backs_off_on_a_drop() {
    let limit = ConcurrencyLimit::new(LimitAlgorithm::AIMD);
    round(&limit, 20, Duration::from_millis(10), false).await;
    // The first 9 admitted saw fewer than half of the limit in flight; the other
    // 11 add one each.
    assert_eq!(limit.limit(), 31);
    round(&limit, 1, Duration::from_millis(10), true).await;
    assert_eq!(limit.limit(), 27, "31 × 0.9");
    for _ in 0..10 {
        round(&limit, 1, Duration::from_millis(10), true).await;
    }
    assert_eq!(limit.limit(), 20, "never below the minimum");
}

fn grpc_request() -> http::Request<()> {
    http::Request::post("/pkg.Svc/Method")
        .header("content-type", "application/grpc")
        .body(())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn grpc_calls_beyond_the_limit_get_unavailable_and_never_reach_the_handler() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::{Layer, ServiceExt};

    let handled = Arc::new(AtomicUsize::new(0));
    let (release, released) = tokio::sync::watch::channel(false);
    let counter = handled.clone();
    let handler = tower::service_fn(move |_req: http::Request<()>| {
        counter.fetch_add(1, Ordering::SeqCst);
        let mut released = released.clone();
        async move {
            let _ = released.wait_for(|r| *r).await;
            Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
        }
    });
    let limit = ConcurrencyLimit::new(LimitAlgorithm::Fixed(1));
    let svc = ConcurrencyLimitLayer::new(limit).layer(handler);
    let first = tokio::spawn(svc.clone().oneshot(grpc_request()));
    while handled.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let shed = svc.clone().oneshot(grpc_request()).await.unwrap();
    assert_eq!(shed.status(), http::StatusCode::OK);
    assert_eq!(shed.headers()["content-type"], "application/grpc");
    assert_eq!(shed.headers()["grpc-status"], "14");
    assert!(!shed.headers().contains_key("grpc-retry-pushback-ms"));
    assert!(shed.body().is_empty());
    let plain = svc.clone().oneshot(http::Request::new(())).await.unwrap();
    assert_eq!(plain.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(handled.load(Ordering::SeqCst), 1, "shed calls never ran");
    release.send(true).unwrap();
    assert_eq!(first.await.unwrap().unwrap().body(), "ok");
}

#[tokio::test(start_paused = true)]
async fn a_grpc_unavailable_answer_from_the_handler_backs_the_limit_off() {
    use tower::{Layer, ServiceExt};

    let limit = ConcurrencyLimit::new(LimitAlgorithm::AIMD);
    round(&limit, 20, Duration::from_millis(10), false).await;
    assert_eq!(limit.limit(), 31);
    let handler = tower::service_fn(|_req: http::Request<()>| async {
        let response: http::Response<String> =
            crate::grpc_refusal::GrpcRefusal::new(crate::classify::GrpcCode::Unavailable, "busy")
                .into_response();
        Ok::<_, std::convert::Infallible>(response)
    });
    let svc = ConcurrencyLimitLayer::new(limit.clone()).layer(handler);
    svc.oneshot(grpc_request()).await.unwrap();
    assert_eq!(limit.limit(), 27, "31 × 0.9");
}
