use std::sync::atomic::{AtomicU32, Ordering};

use http::StatusCode;
use http_body_util::{BodyExt, Full};

use super::*;

type TestBody = Full<Bytes>;

/// A layer over a mock whose answer for attempt `n` (0-based) `answer` decides;
/// returns the service and the attempts counter.
fn stack<F, Fut>(
    policy: RetryPolicy,
    budget: Arc<RetryBudget>,
    answer: F,
) -> (
    tower::util::BoxService<Request<TestBody>, Response<String>, BoxError>,
    Arc<AtomicU32>,
)
where
    F: Fn(u32, Request<ReplayBody<TestBody>>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<String>, BoxError>> + Send + 'static,
{
    let attempts = Arc::new(AtomicU32::new(0));
    let counter = attempts.clone();
    let inner = tower::service_fn(move |req: Request<ReplayBody<TestBody>>| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        answer(n, req)
    });
    let layer = RetryLayer::new("test", policy, budget, |_| ErrorKind::Other);
    (
        tower::util::BoxService::new(tower::Layer::layer(&layer, inner)),
        attempts,
    )
}

fn status(code: u16) -> Result<Response<String>, BoxError> {
    let mut r = Response::new(String::new());
    *r.status_mut() = StatusCode::from_u16(code).unwrap();
    Ok(r)
}

fn roomy_budget() -> Arc<RetryBudget> {
    Arc::new(RetryBudget::new(0.2, 100, Duration::from_secs(10)))
}

fn get() -> Request<TestBody> {
    Request::get("http://svc/").body(Full::default()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn retryable_status_is_retried_until_success_within_max_attempts() {
    let (svc, attempts) = stack(RetryPolicy::default(), roomy_budget(), |n, _| async move {
        status(if n < 2 { 503 } else { 200 })
    });
    let response = svc.oneshot(get()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn retries_stop_at_max_attempts_and_return_the_last_answer() {
    let (svc, attempts) = stack(RetryPolicy::default(), roomy_budget(), |_, _| async {
        status(503)
    });
    assert_eq!(svc.oneshot(get()).await.unwrap().status(), 503);
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn non_retryable_failures_and_successes_are_not_retried() {
    for code in [500, 404, 200] {
        let (svc, attempts) = stack(
            RetryPolicy::default(),
            roomy_budget(),
            move |_, _| async move { status(code) },
        );
        assert_eq!(svc.oneshot(get()).await.unwrap().status().as_u16(), code);
        assert_eq!(attempts.load(Ordering::SeqCst), 1, "{code}");
    }
}

#[tokio::test(start_paused = true)]
async fn post_is_retried_only_when_marked_retryable_and_replayed_identically() {
    let (svc, attempts) = stack(RetryPolicy::default(), roomy_budget(), |_, _| async {
        status(503)
    });
    let post = Request::post("http://svc/")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    svc.oneshot(post).await.unwrap();
    assert_eq!(attempts.load(Ordering::SeqCst), 1);

    let bodies = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = bodies.clone();
    let (svc, attempts) = stack(RetryPolicy::default(), roomy_budget(), move |n, req| {
        let seen = seen.clone();
        async move {
            let body = req.into_body().collect().await?.to_bytes();
            seen.lock().push(body);
            status(if n == 0 { 503 } else { 200 })
        }
    });
    let mut post = Request::post("http://svc/")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    post.extensions_mut().insert(Retryable(true));
    assert_eq!(svc.oneshot(post).await.unwrap().status(), 200);
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(*bodies.lock(), vec![Bytes::from_static(b"payload"); 2]);
}

#[tokio::test(start_paused = true)]
async fn grpc_calls_are_retried_whatever_their_method_unless_marked_not_retryable() {
    let grpc_post = || {
        Request::post("http://svc/pkg.Greeter/SayHello")
            .header(http::header::CONTENT_TYPE, "application/grpc+proto")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap()
    };
    let (svc, attempts) = stack(RetryPolicy::default(), roomy_budget(), |n, _| async move {
        status(if n == 0 { 503 } else { 200 })
    });
    assert_eq!(svc.oneshot(grpc_post()).await.unwrap().status(), 200);
    assert_eq!(attempts.load(Ordering::SeqCst), 2);

    let mut marked = grpc_post();
    marked.extensions_mut().insert(Retryable(false));
    let (svc, attempts) = stack(RetryPolicy::default(), roomy_budget(), |_, _| async {
        status(503)
    });
    assert_eq!(svc.oneshot(marked).await.unwrap().status(), 503);
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn upgrades_and_requests_marked_not_retryable_are_never_retried() {
    let mut upgrade = get();
    upgrade
        .headers_mut()
        .insert(http::header::UPGRADE, "websocket".parse().unwrap());
    let mut marked = get();
    marked.extensions_mut().insert(Retryable(false));
    for request in [upgrade, marked] {
        let (svc, attempts) = stack(RetryPolicy::default(), roomy_budget(), |_, _| async {
            status(503)
        });
        assert_eq!(svc.oneshot(request).await.unwrap().status(), 503);
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn spent_budget_stops_retries() {
    let budget = Arc::new(RetryBudget::new(0.0, 0, Duration::from_secs(10)));
    let (svc, attempts) = stack(RetryPolicy::default(), budget.clone(), |_, _| async {
        status(503)
    });
    svc.oneshot(get()).await.unwrap();
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    assert_eq!(budget.stats().exhausted, 1);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_and_backoff_stays_within_its_cap() {
    let starts = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = starts.clone();
    let (svc, _) = stack(RetryPolicy::default(), roomy_budget(), move |n, _| {
        seen.lock().push(Instant::now());
        async move {
            let mut r = status(if n < 2 { 503 } else { 200 })?;
            if n == 0 {
                r.headers_mut()
                    .insert(http::header::RETRY_AFTER, "2".parse().unwrap());
            }
            Ok(r)
        }
    });
    svc.oneshot(get()).await.unwrap();
    let starts = starts.lock();
    assert_eq!(starts.len(), 3);
    assert!(starts[1] - starts[0] >= Duration::from_secs(2));
    // Second retry: full jitter up to base × 2 (the first wait counted as one).
    assert!(starts[2] - starts[1] <= Duration::from_millis(50));
}

#[tokio::test(start_paused = true)]
async fn no_retry_starts_when_it_cannot_finish_before_the_deadline() {
    let (svc, attempts) = stack(RetryPolicy::default(), roomy_budget(), |_, _| async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        status(503)
    });
    let mut request = get();
    request
        .extensions_mut()
        .insert(Deadline::after(Duration::from_secs(1)));
    svc.oneshot(request).await.unwrap();
    // 600 ms taken, 400 ms left: a second 600 ms attempt cannot fit.
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn per_try_timeout_bounds_each_attempt_and_is_retried_when_configured() {
    let policy = RetryPolicy {
        per_try_timeout: Some(Duration::from_millis(100)),
        retry_on: "per-try-timeout".parse().unwrap(),
        ..RetryPolicy::default()
    };
    let (svc, attempts) = stack(policy, roomy_budget(), |n, _| async move {
        if n == 0 {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        status(200)
    });
    let began = Instant::now();
    assert_eq!(svc.oneshot(get()).await.unwrap().status(), 200);
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert!(began.elapsed() < Duration::from_millis(200));
}

#[tokio::test(start_paused = true)]
async fn unsent_attempts_are_retried_at_once_whatever_the_method() {
    let attempts = Arc::new(AtomicU32::new(0));
    let counter = attempts.clone();
    let inner = tower::service_fn(move |_req: Request<ReplayBody<TestBody>>| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                Err::<Response<String>, BoxError>("connection refused".into())
            } else {
                status(200)
            }
        }
    });
    let layer = RetryLayer::new("test", RetryPolicy::default(), roomy_budget(), |_| {
        ErrorKind::Connect
    });
    let post = Request::post("http://svc/")
        .body(Full::new(Bytes::from_static(b"x")))
        .unwrap();
    let began = Instant::now();
    let response = tower::Layer::layer(&layer, inner)
        .oneshot(post)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(
        began.elapsed(),
        Duration::ZERO,
        "no backoff before a transparent retry"
    );
}

#[tokio::test(start_paused = true)]
async fn hedge_starts_after_the_delay_and_the_first_good_answer_wins() {
    let policy = RetryPolicy {
        hedge_delay: Some(HedgeDelay::Fixed(Duration::from_millis(100))),
        ..RetryPolicy::default()
    };
    let cancelled = Arc::new(AtomicU32::new(0));
    let dropped = cancelled.clone();
    let starts = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = starts.clone();
    let (svc, attempts) = stack(policy, roomy_budget(), move |n, req| {
        seen.lock().push(Instant::now());
        let tried = req.extensions().get::<TriedEndpoints>().cloned();
        if n == 0 {
            req.body()
                .attempt_log()
                .record("127.0.0.1:1".parse().unwrap());
        }
        let guard = DropCounter(dropped.clone());
        async move {
            if n == 0 {
                tokio::time::sleep(Duration::from_secs(5)).await;
                std::mem::forget(guard);
                return status(200);
            }
            std::mem::forget(guard);
            assert_eq!(
                tried.unwrap().0,
                vec!["127.0.0.1:1".parse().unwrap()],
                "the hedge avoids the first attempt's endpoint"
            );
            let mut r = status(200)?;
            *r.body_mut() = "hedge".into();
            Ok(r)
        }
    });
    let began = Instant::now();
    let response = svc.oneshot(get()).await.unwrap();
    assert_eq!(response.body(), "hedge");
    assert_eq!(began.elapsed(), Duration::from_millis(100));
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    let starts = starts.lock();
    assert_eq!(starts[1] - starts[0], Duration::from_millis(100));
    assert_eq!(
        cancelled.load(Ordering::SeqCst),
        1,
        "the slow first attempt was cancelled"
    );
}

#[tokio::test(start_paused = true)]
async fn fast_answer_means_no_hedge_and_hedges_draw_on_the_budget() {
    let policy = RetryPolicy {
        hedge_delay: Some(HedgeDelay::Fixed(Duration::from_millis(100))),
        ..RetryPolicy::default()
    };
    let (svc, attempts) = stack(policy.clone(), roomy_budget(), |_, _| async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        status(200)
    });
    svc.oneshot(get()).await.unwrap();
    assert_eq!(attempts.load(Ordering::SeqCst), 1);

    let empty = Arc::new(RetryBudget::new(0.0, 0, Duration::from_secs(10)));
    let (svc, attempts) = stack(policy, empty.clone(), |_, _| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        status(200)
    });
    svc.oneshot(get()).await.unwrap();
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    assert_eq!(empty.stats().exhausted, 1);
}

#[tokio::test(start_paused = true)]
async fn percentile_hedge_waits_for_samples_then_fires_at_the_recent_p90() {
    let policy = RetryPolicy {
        hedge_delay: Some(HedgeDelay::Percentile(0.9)),
        ..RetryPolicy::default()
    };
    // Attempt 0..60 answer in 20 ms; the one after is slow, its hedge fast.
    let (mut svc, attempts) = stack(policy, roomy_budget(), |n, _| async move {
        let delay = match n {
            0..60 => Duration::from_millis(20),
            60 => Duration::from_secs(5),
            _ => Duration::ZERO,
        };
        tokio::time::sleep(delay).await;
        status(200)
    });
    for _ in 0..60 {
        (&mut svc).oneshot(get()).await.unwrap();
    }
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        60,
        "no hedges before samples"
    );
    let began = Instant::now();
    svc.oneshot(get()).await.unwrap();
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        62,
        "the slow request was hedged"
    );
    let waited = began.elapsed();
    assert!(
        waited >= Duration::from_millis(20) && waited <= Duration::from_millis(24),
        "hedged after {waited:?}, p90 is 20 ms"
    );
}

/// Counts futures dropped before completing.
struct DropCounter(Arc<AtomicU32>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Not ready on its first `poll_ready` (across clones), ready after; counts
/// readiness polls and calls.
#[derive(Clone)]
struct LateReady {
    polls: Arc<AtomicU32>,
    calls: Arc<AtomicU32>,
    fail: bool,
}

impl tower::Service<Request<ReplayBody<TestBody>>> for LateReady {
    type Response = Response<String>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Response<String>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.fail {
            return Poll::Ready(Err("refused".into()));
        }
        if self.polls.fetch_add(1, Ordering::SeqCst) == 0 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Request<ReplayBody<TestBody>>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(status(200))
    }
}

fn late_ready(fail: bool) -> (Retry<LateReady>, Arc<AtomicU32>, Arc<AtomicU32>) {
    let (polls, calls) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let inner = LateReady {
        polls: polls.clone(),
        calls: calls.clone(),
        fail,
    };
    let layer = RetryLayer::new("test", RetryPolicy::default(), roomy_budget(), |_| {
        ErrorKind::Other
    });
    (tower::Layer::layer(&layer, inner), polls, calls)
}

#[tokio::test(start_paused = true)]
async fn first_attempt_waits_for_an_inner_service_that_is_not_ready_yet() {
    let (svc, polls, calls) = late_ready(false);
    let response = svc.oneshot(get()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "sent once");
    assert!(
        polls.load(Ordering::SeqCst) >= 2,
        "readiness was polled again"
    );
}

#[tokio::test(start_paused = true)]
async fn inner_service_failing_readiness_fails_the_call_with_its_error() {
    let (svc, _, calls) = late_ready(true);
    let error = svc.oneshot(get()).await.unwrap_err();
    assert_eq!(error.to_string(), "refused");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing sent");
}
