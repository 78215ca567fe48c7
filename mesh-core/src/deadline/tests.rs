use std::time::Duration;

use http::{HeaderMap, Request, Response, StatusCode};
use tower::{Layer, ServiceExt};

use super::*;

#[test]
fn grpc_timeout_round_trips_and_bad_values_are_ignored() {
    assert_eq!(
        parse_grpc_timeout("1500m"),
        Some(Duration::from_millis(1500))
    );
    assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
    assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
    assert_eq!(parse_grpc_timeout("10"), None);
    assert_eq!(parse_grpc_timeout("123456789m"), None);
    assert_eq!(grpc_timeout_value(Duration::from_micros(1500)), "2m");
    let mut headers = HeaderMap::new();
    headers.insert(TIMEOUT_HEADER, "800".parse().unwrap());
    headers.insert(GRPC_TIMEOUT_HEADER, "1S".parse().unwrap());
    assert_eq!(
        timeout_from_headers(&headers),
        Some(Duration::from_millis(800))
    );
}

type Echo = Response<String>;

fn echo_deadline_header(
) -> impl tower::Service<Request<()>, Response = Echo, Error = BoxErr, Future = impl Send + 'static>
       + Clone {
    tower::service_fn(|mut req: Request<()>| async move {
        // As the sender does: the time left, from the deadline the layer chose.
        if let Some(deadline) = Deadline::for_request(req.extensions()) {
            write_headers(req.headers_mut(), deadline);
        }
        let header = req
            .headers()
            .get(TIMEOUT_HEADER)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        Ok::<_, BoxErr>(Response::new(header))
    })
}

type BoxErr = Box<dyn std::error::Error + Send + Sync>;

#[tokio::test(start_paused = true)]
async fn outbound_deadline_is_clipped_to_the_inherited_one() {
    let svc =
        OutboundDeadlineLayer::new(Some(Duration::from_secs(10))).layer(echo_deadline_header());
    // No inbound deadline: the service's own 10 s.
    let r = svc.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(r.body(), "10000");
    // Inside a handler with 1.5 s left: clipped to it.
    let inherited = Deadline::after(Duration::from_millis(1500));
    let r = inherited
        .scope(svc.clone().oneshot(Request::new(())))
        .await
        .unwrap();
    assert_eq!(r.body(), "1500");
    // A per-request timeout shorter than both wins.
    let mut req = Request::new(());
    req.extensions_mut()
        .insert(RequestTimeout(Duration::from_millis(200)));
    let r = inherited.scope(svc.oneshot(req)).await.unwrap();
    assert_eq!(r.body(), "200");
}

#[tokio::test(start_paused = true)]
async fn outbound_call_fails_when_the_deadline_passes() {
    let slow = tower::service_fn(|_req: Request<()>| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<_, BoxErr>(Response::new(String::new()))
    });
    let svc = OutboundDeadlineLayer::new(Some(Duration::from_secs(2))).layer(slow);
    let began = tokio::time::Instant::now();
    let err = svc.oneshot(Request::new(())).await.unwrap_err();
    assert!(err.is::<DeadlineExceeded>(), "{err}");
    assert_eq!(began.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn outbound_call_whose_inner_future_never_wakes_fails_at_its_deadline() {
    // Nothing below ever wakes the task: only the layer's own timer can end it.
    let stuck = tower::service_fn(|_req: Request<()>| {
        std::future::pending::<Result<Response<String>, BoxErr>>()
    });
    let svc = OutboundDeadlineLayer::new(Some(Duration::from_secs(2))).layer(stuck);
    let began = tokio::time::Instant::now();
    let err = svc.oneshot(Request::new(())).await.unwrap_err();
    assert!(err.is::<DeadlineExceeded>(), "{err}");
    assert_eq!(began.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn outbound_deadline_is_current_on_every_poll_of_the_call() {
    // Read after the call was pending once (and woken by its own sleep).
    let later = tower::service_fn(|_req: Request<()>| async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let left = Deadline::current().map(|d| d.remaining());
        Ok::<_, BoxErr>(Response::new(format!("{left:?}")))
    });
    let svc = OutboundDeadlineLayer::new(Some(Duration::from_secs(3))).layer(later);
    let r = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(r.body(), "Some(2s)");
    assert_eq!(Deadline::current(), None);
}

#[tokio::test(start_paused = true)]
async fn inbound_layer_sets_the_handlers_deadline_and_answers_504_when_it_passes() {
    let handler = tower::service_fn(|_req: Request<()>| async {
        let left = Deadline::current().expect("deadline set").remaining();
        // A spawned task keeps the deadline through `inherit`.
        let spawned = tokio::spawn(inherit(async { Deadline::current() }))
            .await
            .unwrap();
        assert!(spawned.is_some());
        if left > Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        Ok::<_, BoxErr>(Response::new(format!("{}", left.as_millis())))
    });
    let svc = DeadlineLayer::new().layer(handler);
    let mut req = Request::new(());
    req.headers_mut()
        .insert(TIMEOUT_HEADER, "500".parse().unwrap());
    let r = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(r.body(), "500");
    let mut req = Request::new(());
    req.headers_mut()
        .insert(GRPC_TIMEOUT_HEADER, "3S".parse().unwrap());
    let r = svc.oneshot(req).await.unwrap();
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn inbound_grpc_call_whose_deadline_passes_gets_deadline_exceeded() {
    let handler = tower::service_fn(|_req: Request<()>| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<_, BoxErr>(Response::new(String::from("too late")))
    });
    let svc = DeadlineLayer::new().layer(handler);
    let request = Request::post("/pkg.Svc/Method")
        .header("content-type", "application/grpc")
        .header(GRPC_TIMEOUT_HEADER, "200m")
        .body(())
        .unwrap();
    let began = tokio::time::Instant::now();
    let r = svc.oneshot(request).await.unwrap();
    assert_eq!(began.elapsed(), Duration::from_millis(200));
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/grpc");
    assert_eq!(r.headers()["grpc-status"], "4");
    assert!(r.body().is_empty(), "trailers-only: no message was sent");
}

#[test]
fn decimal_header_values_match_the_standard_formatting() {
    for n in [0, 7, 10, 1500, 99_999, u64::MAX] {
        assert_eq!(super::decimal(n, ""), http::HeaderValue::from(n), "{n}");
    }
}

#[test]
fn a_repeated_timeout_value_is_shared_and_a_new_number_is_formatted_afresh() {
    let (first, first_grpc) = super::timeout_values(15_000, true);
    let (again, again_grpc) = super::timeout_values(15_000, true);
    assert_eq!((&again, &again_grpc), (&first, &first_grpc));
    assert_eq!(again, "15000");
    assert_eq!(again_grpc.as_ref().unwrap(), "15000m");
    for (a, b) in [
        (&first, &again),
        (&first_grpc.unwrap(), &again_grpc.unwrap()),
    ] {
        assert_eq!(
            a.as_bytes().as_ptr(),
            b.as_bytes().as_ptr(),
            "the same number reuses the value's bytes"
        );
    }
    let (other, other_grpc) = super::timeout_values(14_999, false);
    assert_eq!(
        (other, other_grpc),
        (http::HeaderValue::from(14_999u64), None)
    );
    assert_eq!(super::timeout_values(15_000, false).0, "15000");
}

#[test]
fn grpc_timeout_is_whole_milliseconds_rounded_up_or_seconds_past_eight_digits() {
    assert_eq!(grpc_timeout_value(Duration::from_nanos(1)), "1m");
    assert_eq!(
        grpc_timeout_value(Duration::from_millis(99_999_999)),
        "99999999m"
    );
    assert_eq!(
        grpc_timeout_value(Duration::from_millis(100_000_000)),
        "100000S"
    );
    assert_eq!(grpc_timeout_value(Duration::MAX), "99999999S");
}

#[tokio::test(start_paused = true)]
async fn outbound_deadline_is_the_current_one_below_the_layer_and_adds_no_extension() {
    let seen = tower::service_fn(|req: Request<()>| async move {
        let current = Deadline::current().map(|d| d.remaining());
        let extension = req.extensions().get::<Deadline>().is_some();
        Ok::<_, BoxErr>(Response::new(format!("{current:?} {extension}")))
    });
    let svc = OutboundDeadlineLayer::new(Some(Duration::from_secs(3))).layer(seen);
    let r = svc.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(r.body(), "Some(3s) false");
    // Outside the call, the task has no deadline again.
    assert_eq!(Deadline::current(), None);
    // A caller's earlier deadline, as an extension, is what the sender sees.
    let mut req = Request::new(());
    req.extensions_mut()
        .insert(Deadline::after(Duration::from_millis(700)));
    let sender = tower::service_fn(|req: Request<()>| async move {
        let left = Deadline::for_request(req.extensions()).map(|d| d.remaining());
        Ok::<_, BoxErr>(Response::new(format!("{left:?}")))
    });
    let svc = OutboundDeadlineLayer::new(Some(Duration::from_secs(3))).layer(sender);
    assert_eq!(svc.oneshot(req).await.unwrap().body(), "Some(700ms)");
}

#[tokio::test(start_paused = true)]
async fn inbound_deadline_is_current_in_the_handler_and_not_an_extension() {
    let svc = DeadlineLayer::new().layer(tower::service_fn(|req: Request<()>| async move {
        let current = Deadline::current().map(|d| d.remaining());
        let extension = req.extensions().get::<Deadline>().is_some();
        Ok::<_, BoxErr>(Response::new(format!("{current:?} {extension}")))
    }));
    let mut req = Request::new(());
    req.headers_mut()
        .insert(TIMEOUT_HEADER, "800".parse().unwrap());
    let r = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(r.body(), "Some(800ms) false");
    // Without a deadline header there is no current deadline.
    let r = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(r.body(), "None false");
}

#[test]
fn inbound_header_scan_reads_what_the_lookups_read() {
    use crate::classify::is_grpc;
    let cases: &[&[(&str, &str)]] = &[
        &[],
        &[("x-mesh-timeout-ms", "1500")],
        &[("x-mesh-timeout-ms", " 1500 "), ("grpc-timeout", "1S")],
        &[
            ("grpc-timeout", "200m"),
            ("content-type", "application/grpc"),
        ],
        &[("content-type", "application/grpc+proto")],
        &[("content-type", "application/grpc;charset=utf-8")],
        &[("content-type", "application/grpcx")],
        &[
            ("content-type", "application/json"),
            ("x-mesh-timeout-ms", "x"),
        ],
        // Repeated names: the first value counts, as `HeaderMap::get` returns it.
        &[("x-mesh-timeout-ms", "700"), ("x-mesh-timeout-ms", "50")],
        &[
            ("content-type", "text/plain"),
            ("content-type", "application/grpc"),
        ],
    ];
    let many: Vec<(String, &str)> = (0..20).map(|i| (format!("x-filler-{i}"), "1")).collect();
    let mut maps: Vec<HeaderMap> = cases
        .iter()
        .map(|case| {
            let mut headers = HeaderMap::new();
            for (name, value) in *case {
                headers.append(http::HeaderName::from_static(name), value.parse().unwrap());
            }
            headers
        })
        .collect();
    // Past the scan's limit the look-ups answer.
    let mut big = maps[3].clone();
    for (name, value) in &many {
        big.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    maps.push(big);
    for headers in &maps {
        assert_eq!(
            super::inbound_headers(headers),
            (timeout_from_headers(headers), is_grpc(headers)),
            "{headers:?}"
        );
    }
    assert_eq!(
        super::inbound_headers(&maps[3]),
        (Some(Duration::from_millis(200)), true)
    );
}

#[tokio::test(start_paused = true)]
async fn inbound_deadline_cuts_off_a_handler_that_was_pending_on_its_first_poll() {
    // The timer is made only after the first poll found the handler pending:
    // it must still fire at the caller's deadline, not later.
    let (tx, rx) = tokio::sync::watch::channel(false);
    let svc = DeadlineLayer::new().layer(tower::service_fn(move |_req: Request<()>| {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|done| *done).await;
            Ok::<_, BoxErr>(Response::new(String::from("late")))
        }
    }));
    let mut req = Request::new(());
    req.headers_mut()
        .insert(TIMEOUT_HEADER, "250".parse().unwrap());
    let began = tokio::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), svc.oneshot(req))
        .await
        .expect("the deadline's timer fired")
        .unwrap();
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(began.elapsed(), Duration::from_millis(250));
    drop(tx);
}

#[test]
fn timeout_millis_parse_as_the_standard_parser_does() {
    for text in [
        "1500",
        " 1500\t",
        "+7",
        "0",
        "",
        " ",
        "+",
        "-1",
        "1.5",
        "15 00",
        "1e3",
        "18446744073709551615",
        "18446744073709551616",
        "\u{e9}12",
    ] {
        let Ok(value) = http::HeaderValue::from_str(text) else {
            continue;
        };
        let expected = text.trim().parse::<u64>().ok();
        assert_eq!(super::parse_millis(&value), expected, "{text:?}");
    }
    let obs_text = http::HeaderValue::from_bytes(b"12\xff").unwrap();
    assert_eq!(super::parse_millis(&obs_text), None);
}

#[tokio::test(start_paused = true)]
async fn outbound_call_whose_deadline_has_passed_fails_without_calling_the_service() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = calls.clone();
    let svc = OutboundDeadlineLayer::new(Some(Duration::from_secs(5))).layer(tower::service_fn(
        move |_req: Request<()>| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Ok::<_, BoxErr>(Response::new(String::new())) }
        },
    ));
    // A caller's deadline that is exactly now has passed; so has one of zero.
    for timeout in [None, Some(Duration::ZERO)] {
        let mut req = Request::new(());
        match timeout {
            None => {
                req.extensions_mut()
                    .insert(Deadline(tokio::time::Instant::now()));
            }
            Some(t) => {
                req.extensions_mut().insert(RequestTimeout(t));
            }
        }
        let err = svc.clone().oneshot(req).await.unwrap_err();
        assert!(err.is::<DeadlineExceeded>(), "{err}");
    }
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn the_current_deadline_is_the_polled_tasks_only_and_nested_scopes_restore_the_outer() {
    let outer = Deadline::after(Duration::from_secs(10));
    let inner = Deadline::after(Duration::from_secs(1));
    let seen = outer.scope(async move {
        let before = Deadline::current();
        let within = inner
            .scope(async {
                tokio::task::yield_now().await;
                Deadline::current()
            })
            .await;
        (before, within, Deadline::current())
    });
    // Another task on the same thread, polled while the first is suspended.
    let other = tokio::spawn(async {
        tokio::task::yield_now().await;
        Deadline::current()
    });
    let (seen, other) = tokio::join!(seen, other);
    assert_eq!(seen, (Some(outer), Some(inner), Some(outer)));
    assert_eq!(other.unwrap(), None);
    assert_eq!(Deadline::current(), None);
}

#[test]
fn a_panic_inside_a_deadline_scope_leaves_no_deadline_behind() {
    let deadline = Deadline(tokio::time::Instant::now());
    let result = std::panic::catch_unwind(|| {
        let _entered = Entered::enter(deadline);
        panic!("the work panicked");
    });
    assert!(result.is_err());
    assert_eq!(Deadline::current(), None);
}

/// The layers share one clock reading per `call` and per poll: the deadline
/// runs from the call's reading, and the time left is written with the reading
/// of the poll that sends, not a reading kept from the call.
#[tokio::test(start_paused = true)]
async fn deadline_runs_from_the_calls_reading_and_the_time_left_from_the_sending_polls() {
    use std::future::Future;
    use tower::Service;

    use crate::clock::ClockScope;
    // Writes the time left when first polled, as the endpoint dispatch does.
    let echo = tower::service_fn(|mut req: Request<()>| async move {
        let deadline = Deadline::for_request(req.extensions()).expect("a deadline applies");
        write_headers(req.headers_mut(), deadline);
        Ok::<_, BoxErr>(Response::new(req.headers()[TIMEOUT_HEADER].clone()))
    });
    let mut svc = OutboundDeadlineLayer::new(Some(Duration::from_secs(10))).layer(echo);
    let called = tokio::time::Instant::now();
    let mut call = {
        let _call = ClockScope::at(called);
        Box::pin(svc.call(Request::new(())))
    };
    tokio::time::advance(Duration::from_secs(3)).await;
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let response = {
        let _poll = ClockScope::lazy();
        match call.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(response) => response.unwrap(),
            std::task::Poll::Pending => panic!("the echo answers on its first poll"),
        }
    };
    assert_eq!(response.body(), "7000", "10 s from the call, 3 s later");
}

/// Never wakes the task: only the deadline's timer can end a call to it.
fn stuck() -> impl tower::Service<
    Request<()>,
    Response = Echo,
    Error = BoxErr,
    Future = std::future::Pending<Result<Echo, BoxErr>>,
> + Clone {
    tower::service_fn(|_req: Request<()>| std::future::pending())
}

/// Calls bounded by the layer's own timeout share one timer: calls made at
/// different moments each fail exactly at their own deadline, though nothing
/// below ever wakes them.
#[tokio::test(start_paused = true)]
async fn calls_sharing_the_layers_timer_each_fail_exactly_at_their_own_deadline() {
    let svc = OutboundDeadlineLayer::new(Some(Duration::from_secs(2))).layer(stuck());
    let began = tokio::time::Instant::now();
    let mut calls = Vec::new();
    for offset_ms in [0u64, 700, 1500, 4000] {
        let svc = svc.clone();
        calls.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(offset_ms)).await;
            let err = svc.oneshot(Request::new(())).await.unwrap_err();
            assert!(err.is::<DeadlineExceeded>(), "{err}");
            began.elapsed() - Duration::from_millis(offset_ms)
        }));
    }
    for call in calls {
        assert_eq!(call.await.unwrap(), Duration::from_secs(2));
    }
}

/// A call whose deadline is not its start plus the layer's timeout (a shorter
/// per-request timeout, a longer one) keeps a timer of its own, and neither
/// delays the other calls' deadlines.
#[tokio::test(start_paused = true)]
async fn calls_with_other_deadlines_fail_at_theirs_beside_the_shared_timer() {
    let svc = OutboundDeadlineLayer::new(Some(Duration::from_secs(10))).layer(stuck());
    let began = tokio::time::Instant::now();
    let call = |timeout: Option<u64>| {
        let svc = svc.clone();
        tokio::spawn(async move {
            let mut request = Request::new(());
            if let Some(secs) = timeout {
                request
                    .extensions_mut()
                    .insert(RequestTimeout(Duration::from_secs(secs)));
            }
            let err = svc.oneshot(request).await.unwrap_err();
            assert!(err.is::<DeadlineExceeded>(), "{err}");
            began.elapsed()
        })
    };
    let longer = call(Some(30));
    let own = call(None);
    let shorter = call(Some(1));
    assert_eq!(shorter.await.unwrap(), Duration::from_secs(1));
    assert_eq!(own.await.unwrap(), Duration::from_secs(10));
    assert_eq!(longer.await.unwrap(), Duration::from_secs(30));
}

/// The shared timer's task runs on the runtime of the call that started it;
/// when that runtime is gone, calls on another runtime still fail at their
/// deadline.
#[test]
fn the_shared_timer_outlives_the_runtime_that_started_it() {
    let svc = OutboundDeadlineLayer::new(Some(Duration::from_secs(2))).layer(stuck());
    let first = paused_runtime();
    first.block_on(async {
        let err = svc.clone().oneshot(Request::new(())).await.unwrap_err();
        assert!(err.is::<DeadlineExceeded>(), "{err}");
        // One more left waiting when the runtime goes.
        tokio::spawn(svc.clone().oneshot(Request::new(())));
        tokio::task::yield_now().await;
    });
    drop(first);
    fails_after_on_a_new_runtime(svc, Duration::from_secs(2));
}

/// A runtime shut down before the shared timer's task first ran (the call that
/// started it was polled once, then everything dropped) leaves no call behind
/// it unwatched: a later call on another runtime still fails at its deadline.
#[test]
fn a_shared_timer_dropped_before_it_ran_leaves_no_call_unwatched() {
    use std::future::Future;

    let svc = OutboundDeadlineLayer::new(Some(Duration::from_secs(2))).layer(stuck());
    let first = paused_runtime();
    {
        let _entered = first.enter();
        let mut call = Box::pin(svc.clone().oneshot(Request::new(())));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(call.as_mut().poll(&mut cx).is_pending());
    }
    drop(first);
    fails_after_on_a_new_runtime(svc, Duration::from_secs(2));
}

/// A current-thread runtime with time paused (it advances when idle).
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// Asserts that a call through `svc` on a fresh runtime fails with
/// `DeadlineExceeded` exactly `after` its start, rather than waiting on with
/// nothing to wake it (cut off at a minute).
fn fails_after_on_a_new_runtime<S>(svc: S, after: Duration)
where
    S: tower::Service<Request<()>, Error = BoxErr>,
    S::Response: std::fmt::Debug,
{
    paused_runtime().block_on(async {
        let began = tokio::time::Instant::now();
        let outcome =
            tokio::time::timeout(Duration::from_secs(60), svc.oneshot(Request::new(()))).await;
        let err = outcome
            .expect("the call outlived its deadline: nothing watched it")
            .unwrap_err();
        assert!(err.is::<DeadlineExceeded>(), "{err}");
        assert_eq!(began.elapsed(), after);
    });
}
