//! The order of the outbound layers, in one place (architecture.md): nothing else
//! knows the full stack.
//!
//! ```text
//! route (matches method and path once; puts the route's policy, a SelectedRoute,
//!        in the request's extensions for the deadline, fault and retry layers,
//!        and its name for telemetry; nothing when the service has no routes)
//!   ─▶ telemetry (call: one span and one duration sample per logical request)
//!   ─▶ deadline (service TIMEOUT, inherited deadline, per-request RequestTimeout;
//!                writes x-mesh-timeout-ms / grpc-timeout)
//!   ─▶ rate limit, concurrency limit (per service, optional: fail fast, nothing sent)
//!   ─▶ breaker (per service, optional: one outcome per request after retries;
//!               refuses with BreakerOpen while open, which nothing retries)
//!   ─▶ fault injection (optional: injected aborts are seen by the breaker, not retried)
//!   ─▶ retry / hedge (one budget per service; replay buffer; each attempt avoids
//!                     the endpoints earlier ones used)
//!   ─▶ telemetry (attempt: a span per attempt, trace context injected)
//!   ─▶ endpoint dispatch (balancer pick, pooled connection; reports each
//!                        attempt's class to the service's outlier detector)
//! ```

use std::sync::Arc;

use http::{Request, Response};
use mesh_core::breaker::{BreakerLayer, CircuitBreaker};
use mesh_core::classify::Classifier;
use mesh_core::concurrency::{ConcurrencyLimit, OutboundConcurrencyLayer};
use mesh_core::config::{AccessLog, ServiceConfig};
use mesh_core::deadline::OutboundDeadlineLayer;
use mesh_core::fault::FaultLayer;
use mesh_core::ratelimit::{OutboundRateLimitLayer, TokenBucket};
use mesh_core::retry::{RetryBudget, RetryLayer};
use mesh_core::route::{RouteLayer, RouteTable};
use tower::{Layer, ServiceBuilder};

use super::classify::error_kind;
use super::dispatch::EndpointDispatch;
use super::service::ServiceStack;
use crate::body::{RequestBody, ResponseBody};
use crate::error::BoxError;
use crate::telemetry::{AttemptTelemetryLayer, ClientTelemetryLayer};

/// Builds the stack every request to the service `config` describes goes through;
/// `budget` is the service's retry budget and `breaker` its circuit breaker, both
/// shared by every clone of the client.
pub(crate) fn service_stack(
    config: &ServiceConfig,
    access_log: AccessLog,
    budget: Arc<RetryBudget>,
    breaker: Option<Arc<CircuitBreaker>>,
    dispatch: EndpointDispatch,
) -> ServiceStack {
    let classifier = Classifier::new(config.retry.retry_on);
    let is_failure = move |result: &Result<http::Response<ResponseBody>, BoxError>| match result {
        Ok(response) => classifier
            .response(response.status(), response.headers())
            .is_failure(),
        Err(_) => true,
    };
    let breaker = breaker.map(|breaker| BreakerLayer::new(breaker, is_failure));
    let rate_limit = config.rate_limit.map(|rate| {
        OutboundRateLimitLayer::new(config.name.as_str(), Arc::new(TokenBucket::new(rate)))
    });
    let concurrency = config.concurrency.map(|algorithm| {
        OutboundConcurrencyLayer::new(
            config.name.as_str(),
            ConcurrencyLimit::new(algorithm),
            // Overload signals only: 503/429 answers, not every failure. A request
            // the deadline above cuts off drops its permit and frees its place.
            |result: &Result<http::Response<ResponseBody>, BoxError>| {
                matches!(result, Ok(r) if matches!(r.status().as_u16(), 503 | 429))
            },
        )
    });
    let routes = Arc::new(RouteTable::for_service(config));
    // Routes may inject faults the service does not; the layer reads the route's.
    let faults = routes
        .injects_faults()
        .then(|| FaultLayer::new(config.faults));
    let attempts = ServiceBuilder::new()
        .layer(RetryLayer::new(
            config.name.clone(),
            config.retry.clone(),
            budget,
            error_kind,
        ))
        .layer(AttemptTelemetryLayer::new(&config.name))
        .service(dispatch);
    let call = ServiceBuilder::new()
        .layer(ClientTelemetryLayer::with_access_log(
            &config.name,
            access_log,
        ))
        .layer(OutboundDeadlineLayer::new(config.timeout));
    // Without limits, breaker or faults (the default) those layers are absent
    // rather than `option_layer`s left off: each of those is an `Either` that
    // branches and moves the call's future into itself on every request. Two
    // shapes, erased behind the one `ServiceStack`.
    let guarded =
        rate_limit.is_some() || concurrency.is_some() || breaker.is_some() || faults.is_some();
    if !guarded {
        return with_routes(routes, call.service(attempts));
    }
    let guards = ServiceBuilder::new()
        .option_layer(rate_limit)
        .option_layer(concurrency)
        .option_layer(breaker)
        .option_layer(faults)
        .service(attempts);
    with_routes(routes, call.service(guards))
}

/// `stack` erased, with the route layer on top only when the service has
/// routes: again two types behind the one `ServiceStack`, rather than an
/// `Either` that moves the whole stack's future into itself on every call.
fn with_routes<S>(routes: Arc<RouteTable>, stack: S) -> ServiceStack
where
    S: tower::Service<Request<RequestBody>, Response = Response<ResponseBody>, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    if routes.is_empty() {
        ServiceStack::new(stack)
    } else {
        ServiceStack::new(RouteLayer::new(routes).layer(stack))
    }
}
