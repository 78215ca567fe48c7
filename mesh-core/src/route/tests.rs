use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{Layer, ServiceExt};

use super::*;
use crate::classify::{ErrorKind, GrpcCode, GrpcCodes};
use crate::deadline::{DeadlineExceeded, OutboundDeadlineLayer};
use crate::discovery::DiscoverySource;
use crate::fault::FaultLayer;
use crate::replay::{BoxError, ReplayBody};
use crate::retry::{RetryBudget, RetryLayer};

fn service() -> ServiceConfig {
    ServiceConfig::new("api", DiscoverySource::Static(Vec::new()))
}

fn route(name: &str, methods: Option<Vec<Method>>, path: PathMatch) -> RouteConfig {
    RouteConfig::new(name, RouteMatch { methods, path })
}

/// `POST /pay` never retried; `/items/` with 5 attempts and a 1 s timeout; a
/// catch-all for `/items/` under a later, shadowed route.
fn table() -> RouteTable {
    let mut svc = service();
    svc.timeout = Some(Duration::from_secs(15));
    let mut pay = route(
        "pay",
        Some(vec![Method::POST]),
        PathMatch::Exact("/pay".into()),
    );
    pay.overrides.max_attempts = Some(1);
    let mut items = route("items", None, PathMatch::Prefix("/items/".into()));
    items.overrides.max_attempts = Some(5);
    items.overrides.timeout = Some(Some(Duration::from_secs(1)));
    let mut shadowed = route("shadowed", None, PathMatch::Prefix("/items/".into()));
    shadowed.overrides.max_attempts = Some(2);
    svc.routes = vec![pay, items, shadowed];
    RouteTable::for_service(&svc)
}

fn selected_name(table: &RouteTable, method: Method, path: &str) -> Option<String> {
    table
        .select(&method, path)
        .name()
        .map(|n| n.as_str().to_string())
}

#[test]
fn routes_match_on_method_and_exact_or_prefix_path() {
    let t = table();
    assert_eq!(
        selected_name(&t, Method::POST, "/pay").as_deref(),
        Some("pay")
    );
    // Method and path must both match; an exact path is not a prefix.
    assert_eq!(selected_name(&t, Method::GET, "/pay"), None);
    assert_eq!(selected_name(&t, Method::POST, "/pay/more"), None);
    assert_eq!(
        selected_name(&t, Method::GET, "/items/42").as_deref(),
        Some("items")
    );
    assert_eq!(selected_name(&t, Method::GET, "/items"), None);
}

#[test]
fn first_matching_route_wins_and_unmatched_requests_get_the_service_policy() {
    let t = table();
    let items = t.select(&Method::DELETE, "/items/1").policy();
    assert_eq!(items.name().unwrap().as_str(), "items");
    assert_eq!(items.retry().max_attempts, 5);
    let other = t.select(&Method::GET, "/other").policy();
    assert!(other.name().is_none());
    assert_eq!(other.retry().max_attempts, 3);
    assert_eq!(other.timeout(), Some(Duration::from_secs(15)));
}

#[test]
fn overrides_are_laid_over_the_service_settings_they_do_not_name() {
    let mut svc = service();
    svc.retry.per_try_timeout = Some(Duration::from_millis(300));
    svc.timeout = Some(Duration::from_secs(7));
    let mut r = route("slow", None, PathMatch::Any);
    r.overrides.timeout = Some(None);
    r.overrides.retry_on = Some(RetryOn::grpc(GrpcCodes::of([GrpcCode::ResourceExhausted])));
    svc.routes.push(r);
    let t = RouteTable::for_service(&svc);
    let p = t.select(&Method::GET, "/").policy();
    assert_eq!(p.timeout(), None, "a route may turn the timeout off");
    assert_eq!(p.retry().per_try_timeout, Some(Duration::from_millis(300)));
    assert_eq!(p.retry().max_attempts, 3);
    // The route's classifier retries its gRPC code, not UNAVAILABLE.
    assert!(matches!(
        p.classifier().grpc_code(GrpcCode::ResourceExhausted as u16),
        crate::classify::Class::Retryable(_)
    ));
    assert!(!matches!(
        p.classifier().grpc_code(GrpcCode::Unavailable as u16),
        crate::classify::Class::Retryable(_)
    ));
}

#[tokio::test]
async fn route_layer_puts_the_selected_route_in_the_extensions() {
    let svc = tower::service_fn(|req: Request<()>| async move {
        let name = req
            .extensions()
            .get::<SelectedRoute>()
            .map(|r| r.name().map(|n| n.to_string()));
        Ok::<_, BoxError>(name)
    });
    let layer = RouteLayer::new(Arc::new(table()));
    let svc = layer.layer(svc);
    let pay = Request::post("http://api/pay?x=1").body(()).unwrap();
    assert_eq!(
        svc.clone().oneshot(pay).await.unwrap(),
        Some(Some("pay".into()))
    );
    let other = Request::get("http://api/other").body(()).unwrap();
    assert_eq!(svc.oneshot(other).await.unwrap(), Some(None));
    // A service without routes adds nothing: the layers use their own policy.
    let bare = RouteLayer::new(Arc::new(RouteTable::for_service(&service())));
    let inner = tower::service_fn(|req: Request<()>| async move {
        Ok::<_, BoxError>(req.extensions().get::<SelectedRoute>().is_some())
    });
    let get = Request::get("http://api/").body(()).unwrap();
    assert!(!bare.layer(inner).oneshot(get).await.unwrap());
}

fn status(code: u16) -> Response<String> {
    let mut r = Response::new(String::new());
    *r.status_mut() = StatusCode::from_u16(code).unwrap();
    r
}

/// Route layer over a retry layer (the service policy: 3 attempts) over a
/// backend answering 503 and counting attempts.
async fn attempts_for(method: Method, path: &str) -> u32 {
    let attempts = Arc::new(AtomicU32::new(0));
    let counter = attempts.clone();
    let backend = tower::service_fn(move |_req: Request<ReplayBody<Full<Bytes>>>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, BoxError>(status(503)) }
    });
    let svc = service();
    let budget = Arc::new(RetryBudget::new(0.2, 100, Duration::from_secs(10)));
    let retry = RetryLayer::new("api", svc.retry.clone(), budget, |_| ErrorKind::Other);
    let stack = tower::ServiceBuilder::new()
        .layer(RouteLayer::new(Arc::new(table())))
        .layer(retry)
        .service(backend);
    let request = Request::builder()
        .method(method)
        .uri(format!("http://api{path}"))
        .body(Full::default())
        .unwrap();
    // POST is not a retry method by default: mark it, so only the route decides.
    let mut request = request;
    request
        .extensions_mut()
        .insert(crate::retry::Retryable(true));
    let response = stack.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 503);
    attempts.load(Ordering::SeqCst)
}

#[tokio::test(start_paused = true)]
async fn retry_layer_follows_the_selected_route_and_falls_back_to_its_own_policy() {
    assert_eq!(attempts_for(Method::POST, "/pay").await, 1);
    assert_eq!(attempts_for(Method::GET, "/items/1").await, 5);
    assert_eq!(attempts_for(Method::GET, "/other").await, 3);
}

#[tokio::test(start_paused = true)]
async fn deadline_layer_takes_the_route_timeout_over_the_service_timeout() {
    let slow = tower::service_fn(|_req: Request<()>| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok::<_, BoxError>(status(200))
    });
    let stack = tower::ServiceBuilder::new()
        .layer(RouteLayer::new(Arc::new(table())))
        .layer(OutboundDeadlineLayer::new(Some(Duration::from_secs(15))))
        .service(slow);
    let started = tokio::time::Instant::now();
    let items = Request::get("http://api/items/1").body(()).unwrap();
    let e = stack.clone().oneshot(items).await.unwrap_err();
    assert!(e.is::<DeadlineExceeded>(), "{e}");
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    let other = Request::get("http://api/other").body(()).unwrap();
    assert_eq!(stack.oneshot(other).await.unwrap().status(), 200);
}

#[tokio::test]
async fn fault_layer_injects_the_route_faults_only_on_that_route() {
    let mut svc = service();
    let mut r = route("chaos", None, PathMatch::Prefix("/chaos/".into()));
    r.overrides.fault_abort = Some(Some("418@100%".parse().unwrap()));
    svc.routes.push(r);
    let table = RouteTable::for_service(&svc);
    assert!(table.injects_faults());
    let ok = tower::service_fn(|_req: Request<()>| async { Ok::<_, BoxError>(status(200)) });
    let stack = tower::ServiceBuilder::new()
        .layer(RouteLayer::new(Arc::new(table)))
        .layer(FaultLayer::new(svc.faults))
        .service(ok);
    let chaos = Request::get("http://api/chaos/1").body(()).unwrap();
    assert_eq!(stack.clone().oneshot(chaos).await.unwrap().status(), 418);
    let calm = Request::get("http://api/calm").body(()).unwrap();
    assert_eq!(stack.oneshot(calm).await.unwrap().status(), 200);
}

#[tokio::test(start_paused = true)]
async fn a_route_with_a_hedge_delay_hedges_where_the_service_does_not() {
    let mut svc = service();
    let mut r = route("hedged", None, PathMatch::Prefix("/hedged/".into()));
    r.overrides.hedge_delay = Some(Some(crate::retry::HedgeDelay::Fixed(
        Duration::from_millis(50),
    )));
    svc.routes.push(r);
    let attempts = Arc::new(AtomicU32::new(0));
    let counter = attempts.clone();
    // The first attempt hangs; any later one answers at once.
    let backend = tower::service_fn(move |_req: Request<ReplayBody<Full<Bytes>>>| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            Ok::<_, BoxError>(status(200))
        }
    });
    let budget = Arc::new(RetryBudget::new(0.2, 100, Duration::from_secs(10)));
    let retry = RetryLayer::new("api", svc.retry.clone(), budget, |_| ErrorKind::Other);
    let stack = tower::ServiceBuilder::new()
        .layer(RouteLayer::new(Arc::new(RouteTable::for_service(&svc))))
        .layer(retry)
        .service(backend);

    let started = tokio::time::Instant::now();
    let hedged = Request::get("http://api/hedged/1")
        .body(Full::default())
        .unwrap();
    assert_eq!(stack.clone().oneshot(hedged).await.unwrap().status(), 200);
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(started.elapsed(), Duration::from_millis(50));

    attempts.store(0, Ordering::SeqCst);
    let plain = Request::get("http://api/plain")
        .body(Full::default())
        .unwrap();
    assert_eq!(stack.oneshot(plain).await.unwrap().status(), 200);
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        1,
        "the service does not hedge"
    );
}
