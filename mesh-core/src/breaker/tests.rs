use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

use super::*;

fn small() -> BreakerSettings {
    BreakerSettings {
        window: 10,
        min_calls: 10,
        probes: 3,
        open_time: Duration::from_secs(60),
        ..BreakerSettings::default()
    }
}

fn calls(breaker: &Arc<CircuitBreaker>, failed: bool, n: usize) {
    for _ in 0..n {
        breaker.try_acquire().unwrap().record(failed);
    }
}

#[tokio::test(start_paused = true)]
async fn opens_at_the_failure_rate_once_the_window_is_full() {
    let b = CircuitBreaker::new("svc", small());
    calls(&b, true, 9);
    assert_eq!(b.state(), BreakerState::Closed, "fewer than min_calls");
    calls(&b, false, 1);
    // 9 of 10 failed: over 50%.
    assert_eq!(b.state(), BreakerState::Open);
    let refused = b.try_acquire().unwrap_err();
    assert_eq!(refused.retry_in(), Duration::from_secs(60));
    assert_eq!(b.rejected(), 1);
}

#[tokio::test(start_paused = true)]
async fn stays_closed_below_the_failure_rate() {
    let b = CircuitBreaker::new("svc", small());
    for _ in 0..10 {
        calls(&b, true, 4);
        calls(&b, false, 6);
    }
    assert_eq!(b.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_open_the_breaker() {
    let settings = BreakerSettings {
        slow_call: Some(Duration::from_millis(100)),
        ..small()
    };
    let b = CircuitBreaker::new("svc", settings);
    for _ in 0..10 {
        let permit = b.try_acquire().unwrap();
        tokio::time::advance(Duration::from_millis(150)).await;
        permit.record(false);
    }
    assert_eq!(b.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn half_open_lets_exactly_the_probes_through_then_closes_on_success() {
    let b = CircuitBreaker::new("svc", small());
    calls(&b, true, 10);
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(b.state(), BreakerState::HalfOpen);
    let probes: Vec<_> = (0..3).map(|_| b.try_acquire().unwrap()).collect();
    assert!(
        b.try_acquire().is_err(),
        "a fourth call while 3 probes are out"
    );
    for p in probes {
        p.record(false);
    }
    assert_eq!(b.state(), BreakerState::Closed);
    assert!(b.try_acquire().is_ok());
}

#[tokio::test(start_paused = true)]
async fn failed_probes_open_the_breaker_again_for_the_full_time() {
    let b = CircuitBreaker::new("svc", small());
    calls(&b, true, 10);
    tokio::time::advance(Duration::from_secs(60)).await;
    calls(&b, true, 3);
    assert_eq!(b.state(), BreakerState::Open);
    tokio::time::advance(Duration::from_secs(59)).await;
    assert!(b.try_acquire().is_err());
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(b.try_acquire().is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_frees_its_slot() {
    let b = CircuitBreaker::new("svc", small());
    calls(&b, true, 10);
    tokio::time::advance(Duration::from_secs(60)).await;
    let probes: Vec<_> = (0..3).map(|_| b.try_acquire().unwrap()).collect();
    drop(probes);
    assert_eq!(b.state(), BreakerState::HalfOpen);
    calls(&b, false, 3);
    assert_eq!(b.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn calls_started_before_opening_do_not_count_afterwards() {
    let b = CircuitBreaker::new("svc", small());
    let late: Vec<_> = (0..5).map(|_| b.try_acquire().unwrap()).collect();
    calls(&b, true, 10);
    tokio::time::advance(Duration::from_secs(60)).await;
    let probe = b.try_acquire().unwrap();
    // Five stale failures arrive while half-open: they must not decide it.
    for p in late {
        p.record(true);
    }
    assert_eq!(b.state(), BreakerState::HalfOpen);
    probe.record(false);
    calls(&b, false, 2);
    assert_eq!(b.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn the_layer_fails_fast_without_calling_the_inner_service_while_open() {
    let reached = Arc::new(AtomicUsize::new(0));
    let counter = reached.clone();
    let inner = service_fn(move |fail: bool| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if fail {
                Err::<(), BoxError>("boom".into())
            } else {
                Ok(())
            }
        }
    });
    let breaker = CircuitBreaker::new("svc", small());
    let mut svc =
        BreakerLayer::new(breaker.clone(), |r: &Result<(), BoxError>| r.is_err()).layer(inner);
    for _ in 0..10 {
        assert!(svc.ready().await.unwrap().call(true).await.is_err());
    }
    assert_eq!(reached.load(Ordering::SeqCst), 10);
    for _ in 0..100 {
        let err = svc.ready().await.unwrap().call(false).await.unwrap_err();
        assert!(err.is::<BreakerOpen>(), "{err}");
    }
    assert_eq!(
        reached.load(Ordering::SeqCst),
        10,
        "nothing reached the service"
    );
}
