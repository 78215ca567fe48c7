use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tokio::time::Instant;
use tower::{service_fn, Layer, ServiceExt};

use super::*;

#[test]
fn fault_settings_parse_and_bad_ones_are_refused() {
    assert_eq!(
        parse_delay("50ms@10%"),
        Ok(Some(DelayFault {
            delay: Duration::from_millis(50),
            share: 0.1
        }))
    );
    assert_eq!(parse_delay("off"), Ok(None));
    assert_eq!(
        parse_abort("503@5%").unwrap().unwrap().status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    for bad in ["50ms", "50ms@150%", "-5ms@10%", "soon@1%"] {
        assert!(parse_delay(bad).is_err(), "{bad}");
    }
    for bad in ["503", "200@5%", "503@101%", "abc@5%"] {
        assert!(parse_abort(bad).is_err(), "{bad}");
    }
}

fn counting() -> (
    Arc<AtomicUsize>,
    impl tower::Service<
            Request<()>,
            Response = Response<String>,
            Error = Infallible,
            Future = impl Send,
        > + Clone
        + Send
        + 'static,
) {
    let reached = Arc::new(AtomicUsize::new(0));
    let counter = reached.clone();
    let svc = service_fn(move |_req: Request<()>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(Response::new(String::new())) }
    });
    (reached, svc)
}

#[tokio::test(start_paused = true)]
async fn aborted_requests_get_the_status_and_never_reach_the_service() {
    let (reached, inner) = counting();
    let faults = Faults {
        abort: Some("503@100%".parse().unwrap()),
        delay: None,
    };
    let svc = FaultLayer::new(faults).layer(inner);
    for _ in 0..10 {
        let response = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(reached.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn the_share_decides_which_requests_are_delayed() {
    let (reached, inner) = counting();
    let faults = Faults {
        delay: Some("50ms@10%".parse().unwrap()),
        abort: None,
    };
    // A roll of 0.05 is inside the 10% share, 0.5 outside.
    let delayed = FaultLayer::with_roll(faults, || 0.05).layer(inner.clone());
    let start = Instant::now();
    delayed.oneshot(Request::new(())).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(50));
    let passed = FaultLayer::with_roll(faults, || 0.5).layer(inner);
    let start = Instant::now();
    passed.oneshot(Request::new(())).await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(reached.load(Ordering::SeqCst), 2);
}
