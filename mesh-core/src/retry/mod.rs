//! Retries and hedging, with one budget for both.
//!
//! [`RetryLayer`] wraps a service taking `Request<ReplayBody<B>>` and gives one
//! taking `Request<B>`. For each request it:
//!
//! - deposits in the service's [`RetryBudget`] (shared by every clone);
//! - keeps the body in a [`ReplayBody`] up to the replay buffer;
//! - classifies each attempt's outcome with the one [`Classifier`];
//! - retries what is [`Class::Retryable`] when the method allows it (or the caller
//!   marked the request [`Retryable`], or it is a gRPC call, which gRFC A6 retries
//!   by status whatever its method), the body can be sent again, attempts are
//!   left, the budget allows it and the wait plus an attempt fits the deadline.
//!   Attempts nothing was sent for (connect failures, HTTP/2 refused streams) are
//!   retried at once whatever the method ("transparent" retries, still drawn from
//!   the budget); others wait a backoff with full jitter, or the response's
//!   `Retry-After` when longer;
//! - hedges requests when the policy has a delay (fixed, or a percentile of the
//!   service's recent successful attempts): a second attempt to another endpoint
//!   if the first has not answered in time; the first good answer wins
//!   and the other is cancelled (dropped);
//! - follows the policy of the request's route when the route layer selected one
//!   ([`SelectedRoute`]), else its own (the service's);
//! - tells the dispatch which endpoints earlier attempts used ([`TriedEndpoints`]),
//!   and lets it record its picks in the call's [`AttemptLog`], which every
//!   attempt's body carries ([`ReplayBody::attempt_log`]).
//!
//! Upgrades (WebSocket, `CONNECT`) are never retried, and nothing is retried once
//! a response was handed to the caller: the decision is made on the status and
//! headers, before the body streams.

mod budget;
mod control;
mod latency;
mod policy;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::ServiceExt;

pub use budget::{RetryBudget, RetryBudgetSettings, RetryStats};
pub use control::{AttemptLog, Hedgeable, Retryable};
pub use policy::{
    parse_hedge_delay, parse_max_attempts, HedgeDelay, MethodSet, RetryBackoff, RetryOn,
    RetryPolicy, MAX_ATTEMPTS_CAP,
};

use latency::LatencyTracker;

use crate::classify::{is_grpc, Class, Classifier, ErrorKind};
use crate::clock;
use crate::deadline::Deadline;
use crate::extensions::TriedEndpoints;
use crate::metric_names::{self, label};
use crate::replay::{BoxError, ReplayBody};
use crate::route::SelectedRoute;

/// Attempts allowed for requests nothing was sent for, even when the policy allows
/// fewer (connect failures move to another endpoint, as they always did).
const TRANSPARENT_ATTEMPTS: u32 = 3;

/// Longest `Retry-After` honoured by waiting; a server asking for more is not
/// retried.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// Tells the retry layer what kind of error a transport returned.
pub type ErrorClassifier = fn(&BoxError) -> ErrorKind;

/// One attempt ran out of its per-try timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerTryTimeout;

impl std::fmt::Display for PerTryTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "the attempt ran out of its per-try timeout (MESH_SERVICE_<NAME>_PER_TRY_TIMEOUT)",
        )
    }
}

impl std::error::Error for PerTryTimeout {}

/// Adds retries and hedging to a service (see the module docs).
#[derive(Debug, Clone)]
pub struct RetryLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Shared so each metric label is a reference count, not an allocation.
    service: Arc<str>,
    policy: RetryPolicy,
    classifier: Classifier,
    budget: Arc<RetryBudget>,
    error_kind: ErrorClassifier,
    /// Recent attempt latencies, for hedging at a percentile.
    latencies: LatencyTracker,
}

impl RetryLayer {
    /// Retries for the service named `service` (for metrics) under `policy`,
    /// drawing on `budget`; `error_kind` says what the inner service's errors are.
    pub fn new(
        service: impl Into<String>,
        policy: RetryPolicy,
        budget: Arc<RetryBudget>,
        error_kind: ErrorClassifier,
    ) -> Self {
        RetryLayer {
            shared: Arc::new(Shared {
                service: Arc::from(service.into()),
                classifier: Classifier::new(policy.retry_on),
                policy,
                budget,
                error_kind,
                latencies: LatencyTracker::new(Duration::from_secs(10)),
            }),
        }
    }

    /// The budget this layer draws on.
    pub fn budget(&self) -> &Arc<RetryBudget> {
        &self.shared.budget
    }
}

impl<S> tower::Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service [`RetryLayer`] makes.
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, B, RB> tower::Service<Request<B>> for Retry<S>
where
    S: tower::Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = RetryFuture<S, B, RB>;

    /// Readiness is checked per attempt, on a clone of the inner service.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let shared = self.shared.clone();
        let mut inner = self.inner.clone();
        // One clock reading for the deposit and the first attempt's start.
        let started = clock::now();
        shared.budget.deposit_at(started);
        let (plan, body) = Plan::new(&shared, request);
        let policy = plan.policy(&shared);
        // Nothing races or times the first attempt: it is sent from here, and
        // only a retry moves to the general path. Sent now rather than at the
        // first poll, so the future never holds the request: it is smaller,
        // and so is every move of it and of the futures above that hold it.
        let first_body = (policy.hedge_delay.is_none() && policy.per_try_timeout.is_none())
            .then(|| body.try_clone())
            .flatten();
        let Some(first_body) = first_body else {
            return RetryFuture::general(shared, inner, plan, body);
        };
        // The mesh client's services are always ready; one that is not yet is
        // waited for on the general path, with the task's waker.
        let state = match inner.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Pending => return RetryFuture::general(shared, inner, plan, body),
            Poll::Ready(Ok(())) => State::Sent {
                future: inner.call(attempt_request(&plan, first_body, 0)),
            },
            Poll::Ready(Err(error)) => State::Refused {
                error: Some(error.into()),
            },
        };
        RetryFuture {
            call: Some(Call {
                started,
                shared,
                inner,
                plan,
                body,
            }),
            state,
        }
    }
}

type BoxOutcome<RB> = Pin<Box<dyn Future<Output = Outcome<RB>> + Send>>;

/// What one call keeps for its attempts.
struct Call<S, B> {
    shared: Arc<Shared>,
    /// Sends the first attempt; a retry takes it over.
    inner: S,
    plan: Plan,
    body: ReplayBody<B>,
    /// When the first attempt started: a retry must fit the deadline.
    started: Instant,
}

pin_project! {
    /// The future [`Retry`] returns.
    ///
    /// A request that is neither hedged nor timed per try (the default) sends its
    /// first attempt when the call is made (the inner service being ready), with
    /// nothing boxed; most calls end there. A retry, or a policy that races or
    /// times attempts, runs the general path in a box.
    pub struct RetryFuture<S, B, RB>
    where
        S: tower::Service<Request<ReplayBody<B>>>,
    {
        // The call's state while the first attempt runs here; `None` once the
        // general path owns it.
        call: Option<Call<S, B>>,
        #[pin]
        state: State<S, B, RB>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, RB>
    where
        S: tower::Service<Request<ReplayBody<B>>>,
    {
        // The first attempt, sent.
        Sent { #[pin] future: S::Future },
        // The inner service failed instead of becoming ready for the first
        // attempt: that is the first attempt's outcome.
        Refused { error: Option<BoxError> },
        // Everything else: retries, hedging, per-try timeouts.
        General { run: BoxOutcome<RB> },
    }
}

impl<S, B, RB> std::fmt::Debug for RetryFuture<S, B, RB>
where
    S: tower::Service<Request<ReplayBody<B>>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryFuture").finish_non_exhaustive()
    }
}

impl<S, B, RB> RetryFuture<S, B, RB>
where
    S: tower::Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
    RB: Send + 'static,
{
    /// A call that runs every attempt, the first included, on the general path.
    fn general(shared: Arc<Shared>, inner: S, plan: Plan, body: ReplayBody<B>) -> Self {
        RetryFuture {
            call: None,
            state: State::General {
                run: Box::pin(run(shared, inner, plan, body, None)),
            },
        }
    }
}

impl<S, B, RB> Future for RetryFuture<S, B, RB>
where
    S: tower::Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
    RB: Send + 'static,
{
    type Output = Outcome<RB>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome<RB>> {
        let mut this = self.project();
        let outcome = match this.state.as_mut().project() {
            StateProj::Sent { future } => std::task::ready!(future.poll(cx)).map_err(Into::into),
            StateProj::Refused { error } => Err(error.take().expect("a refusal is reported once")),
            StateProj::General { run } => return run.as_mut().poll(cx),
        };
        let kept = this
            .call
            .as_ref()
            .expect("the first attempt keeps its call");
        let class = classify(&kept.shared, &kept.plan, &outcome);
        if !matches!(class, Class::Retryable(_)) {
            // Dropped where it lies (as soon as the call is done, as before):
            // taking it out first would copy the whole call state.
            *this.call = None;
            return Poll::Ready(outcome);
        }
        let call = this.call.take().expect("the first attempt keeps its call");
        let first = Round {
            outcome,
            class,
            attempts: 1,
            started: call.started,
        };
        let mut run = Box::pin(run(
            call.shared,
            call.inner,
            call.plan,
            call.body,
            Some(first),
        ));
        let poll = run.as_mut().poll(cx);
        this.state.set(State::General { run });
        poll
    }
}

type Outcome<RB> = Result<Response<RB>, BoxError>;

/// What is fixed for all attempts of one request.
struct Plan {
    parts: http::request::Parts,
    /// The route's policy, when the route layer selected one.
    route: Option<SelectedRoute>,
    classifier: Classifier,
    max_attempts: u32,
    method_allows: bool,
    hedge_delay: Option<Duration>,
    deadline: Option<Deadline>,
}

impl Plan {
    /// The route's retry policy, else the layer's own.
    fn policy<'a>(&'a self, shared: &'a Shared) -> &'a RetryPolicy {
        route_policy(self.route.as_ref(), shared)
    }

    /// What the request's route, method and markers allow, and its body made
    /// replayable.
    fn new<B: Body<Data = Bytes>>(shared: &Shared, request: Request<B>) -> (Plan, ReplayBody<B>) {
        let (parts, body) = request.into_parts();
        let route = parts.extensions.get::<SelectedRoute>().cloned();
        let policy = route_policy(route.as_ref(), shared);
        let classifier = route
            .as_ref()
            .map_or(shared.classifier, |r| r.policy().classifier());
        let upgrade =
            parts.method == Method::CONNECT || parts.headers.contains_key(http::header::UPGRADE);
        // A gRPC call is a POST whatever the method does: whether it is retried is
        // its status code's business (gRFC A6), which the classifier judges.
        let marked = parts
            .extensions
            .get::<Retryable>()
            .map(|r| r.0)
            .or_else(|| is_grpc(&parts.headers).then_some(true));
        let method_allows =
            !upgrade && marked.unwrap_or_else(|| policy.methods.contains(&parts.method));
        let max_attempts = if upgrade {
            1
        } else {
            policy.max_attempts.max(TRANSPARENT_ATTEMPTS)
        };
        let hedgeable = !upgrade
            && policy.max_attempts > 1
            && parts
                .extensions
                .get::<Hedgeable>()
                .map_or(method_allows, |h| h.0);
        let hedge_delay = match policy.hedge_delay {
            Some(HedgeDelay::Fixed(delay)) if hedgeable => Some(delay),
            Some(HedgeDelay::Percentile(p)) if hedgeable => shared.latencies.quantile(p),
            _ => None,
        };
        let body = ReplayBody::new(body, if upgrade { 0 } else { policy.replay_buffer });
        let plan = Plan {
            route,
            classifier,
            // The outbound deadline layer above sets the current deadline.
            deadline: Deadline::for_request(&parts.extensions),
            parts,
            max_attempts,
            method_allows,
            hedge_delay,
        };
        (plan, body)
    }
}

/// The route's retry policy, else the layer's own.
fn route_policy<'a>(route: Option<&'a SelectedRoute>, shared: &'a Shared) -> &'a RetryPolicy {
    route.map_or(&shared.policy, |r| r.policy().retry())
}

/// One round of attempts (one, or two when hedged) and what came of it.
struct Round<RB> {
    outcome: Outcome<RB>,
    class: Class,
    /// Attempts the round made.
    attempts: u32,
    started: Instant,
}

/// The general path: rounds of attempts until one is not retried; `first` is a
/// round [`RetryFuture`] already ran.
async fn run<S, B, RB>(
    shared: Arc<Shared>,
    inner: S,
    plan: Plan,
    body: ReplayBody<B>,
    first: Option<Round<RB>>,
) -> Outcome<RB>
where
    S: tower::Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Unpin,
{
    let mut first_unsent = None;
    let outcome = run_attempts(&shared, inner, &plan, &body, first, &mut first_unsent).await;
    // When no attempt got a response, the first failure says most about the cause
    // (an endpoint refusing us, a server with the wrong identity); what later
    // attempts found (say, no endpoint left to try) says less.
    match (outcome, first_unsent) {
        (Err(_), Some(first)) => Err(first),
        (outcome, _) => outcome,
    }
}

async fn run_attempts<S, B, RB>(
    shared: &Shared,
    // By value: a shared reference held across an await would need `S: Sync`.
    inner: S,
    plan: &Plan,
    body: &ReplayBody<B>,
    mut first: Option<Round<RB>>,
    first_unsent: &mut Option<BoxError>,
) -> Outcome<RB>
where
    S: tower::Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Unpin,
{
    let mut attempts = 0u32;
    let mut waits = 0u32;
    loop {
        let Round {
            outcome,
            class,
            attempts: used,
            started,
        } = match first.take() {
            Some(round) => round,
            None => round(shared, inner.clone(), plan, body, attempts).await,
        };
        attempts += used;
        let Class::Retryable(reason) = class else {
            return outcome;
        };
        // The policy's limit applies to retries after something was sent;
        // transparent ones may go up to TRANSPARENT_ATTEMPTS.
        let policy = plan.policy(shared);
        let limit = if reason.nothing_sent() {
            plan.max_attempts
        } else {
            policy.max_attempts
        };
        if attempts >= limit
            || !(reason.nothing_sent() || plan.method_allows)
            || !body.is_replayable()
        {
            return outcome;
        }
        let wait = if reason.nothing_sent() {
            Duration::ZERO
        } else {
            let backoff = policy.backoff.delay(waits);
            match outcome.as_ref().ok().and_then(|r| retry_after(r.headers())) {
                Some(after) if after > MAX_RETRY_AFTER => return outcome,
                Some(after) => after.max(backoff),
                None => backoff,
            }
        };
        // No retry starts when it cannot finish in time: the wait plus what the
        // last attempt took (or the per-try timeout, when shorter) must fit.
        if let Some(deadline) = plan.deadline {
            let mut need = clock::since(started);
            if let Some(per_try) = policy.per_try_timeout {
                need = need.min(per_try);
            }
            if deadline.cannot_fit(wait + need) {
                return outcome;
            }
        }
        if !shared.budget.withdraw() {
            count(shared, &metric_names::RETRY_BUDGET_EXHAUSTED, None);
            return outcome;
        }
        count(shared, &metric_names::RETRIES, Some(reason.as_str()));
        // Release the failed attempt (and its connection) before waiting; keep the
        // first error of an attempt nothing was sent for.
        match outcome {
            Err(error) if reason.nothing_sent() && first_unsent.is_none() => {
                *first_unsent = Some(error);
            }
            other => drop(other),
        }
        if !wait.is_zero() {
            waits += 1;
            tokio::time::sleep(wait).await;
        }
    }
}

/// One attempt, or two when the request is hedged.
async fn round<S, B, RB>(
    shared: &Shared,
    inner: S,
    plan: &Plan,
    body: &ReplayBody<B>,
    attempts_before: u32,
) -> Round<RB>
where
    S: tower::Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Unpin,
{
    let started = clock::now();
    let (outcome, class, attempts) = race(shared, inner, plan, body, attempts_before).await;
    Round {
        outcome,
        class,
        attempts,
        started,
    }
}

/// The attempts of one round: the winning outcome, its class and the attempts
/// made.
async fn race<S, B, RB>(
    shared: &Shared,
    inner: S,
    plan: &Plan,
    body: &ReplayBody<B>,
    attempts_before: u32,
) -> (Outcome<RB>, Class, u32)
where
    S: tower::Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Unpin,
{
    let Some(first_body) = body.try_clone() else {
        // Only reachable if the body failed between the check and now.
        return (Err(crate::replay::NotReplayable.into()), Class::Failure, 1);
    };
    let hedge_at = plan
        .hedge_delay
        .filter(|_| attempts_before + 2 <= plan.policy(shared).max_attempts);
    let Some(delay) = hedge_at else {
        // No race to run: the attempt is awaited in place, with no allocation.
        let (outcome, class) = attempt(shared, inner, plan, first_body, attempts_before).await;
        return (outcome, class, 1);
    };
    let mut first = Box::pin(attempt(
        shared,
        inner.clone(),
        plan,
        first_body,
        attempts_before,
    ));
    tokio::select! {
        (outcome, class) = &mut first => return (outcome, class, 1),
        () = tokio::time::sleep(delay) => {}
    }
    let can_hedge = plan.deadline.is_none_or(|d| !d.remaining().is_zero()) && body.is_replayable();
    let second_body = match body.try_clone() {
        Some(b) if can_hedge && shared.budget.withdraw() => b,
        Some(_) if can_hedge => {
            count(shared, &metric_names::RETRY_BUDGET_EXHAUSTED, None);
            let (outcome, class) = first.await;
            return (outcome, class, 1);
        }
        _ => {
            let (outcome, class) = first.await;
            return (outcome, class, 1);
        }
    };
    count(shared, &metric_names::HEDGES, None);
    let mut second = Box::pin(attempt(
        shared,
        inner,
        plan,
        second_body,
        attempts_before + 1,
    ));
    // The first answer that is not retryable wins; dropping the other cancels it.
    tokio::select! {
        (outcome, class) = &mut first => {
            if matches!(class, Class::Retryable(_)) {
                let (outcome, class) = second.await;
                (outcome, class, 2)
            } else {
                (outcome, class, 2)
            }
        }
        (outcome, class) = &mut second => {
            if matches!(class, Class::Retryable(_)) {
                let (outcome, class) = first.await;
                (outcome, class, 2)
            } else {
                (outcome, class, 2)
            }
        }
    }
}

/// Sends one attempt and classifies its outcome.
async fn attempt<S, B, RB>(
    shared: &Shared,
    inner: S,
    plan: &Plan,
    body: ReplayBody<B>,
    number: u32,
) -> (Outcome<RB>, Class)
where
    S: tower::Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Unpin,
{
    let call = inner.oneshot(attempt_request(plan, body, number));
    // Only a policy hedging at a percentile reads attempt latencies back.
    let percentile_hedging = matches!(
        plan.policy(shared).hedge_delay,
        Some(HedgeDelay::Percentile(_))
    );
    let started = percentile_hedging.then(clock::now);
    let outcome = match plan.policy(shared).per_try_timeout {
        Some(per_try) => match tokio::time::timeout(per_try, call).await {
            Ok(result) => result.map_err(Into::into),
            Err(_) => Err(PerTryTimeout.into()),
        },
        None => call.await.map_err(Into::into),
    };
    let class = classify(shared, plan, &outcome);
    if let (Class::Success, Some(started)) = (class, started) {
        shared.latencies.record(clock::since(started));
    }
    // Attempts are counted by the attempt telemetry layer (`mesh.client.attempts`).
    (outcome, class)
}

/// The request of attempt `number`: the kept parts around a replay of the body,
/// and for a retry the endpoints earlier attempts used.
fn attempt_request<B: Body<Data = Bytes>>(
    plan: &Plan,
    body: ReplayBody<B>,
    number: u32,
) -> Request<ReplayBody<B>> {
    let parts = &plan.parts;
    // Built from a copy of the parts, not field by field into a new request,
    // which would make (and drop) a default of each first.
    let mut request = Request::from_parts(parts.clone(), body);
    if number > 0 {
        let mut tried = parts
            .extensions
            .get::<TriedEndpoints>()
            .cloned()
            .unwrap_or_default();
        for addr in request.body().attempt_log().endpoints() {
            if !tried.0.contains(&addr) {
                tried.0.push(addr);
            }
        }
        request.extensions_mut().insert(tried);
    }
    request
}

/// What the outcome of an attempt is, under the request's classifier.
fn classify<RB>(shared: &Shared, plan: &Plan, outcome: &Outcome<RB>) -> Class {
    match outcome {
        Ok(response) => plan
            .classifier
            .response(response.status(), response.headers()),
        Err(e) if e.is::<PerTryTimeout>() => plan.classifier.error(ErrorKind::PerTryTimeout),
        Err(e) => plan.classifier.error((shared.error_kind)(e)),
    }
}

/// `Retry-After` as delta-seconds (an HTTP date is not honoured: clocks differ),
/// or gRPC's `grpc-retry-pushback-ms`, whose negative or unreadable value means
/// "do not retry" (gRFC A6): read as longer than anything honoured.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(pushback) = crate::classify::grpc_pushback(headers) {
        return Some(pushback.unwrap_or(Duration::MAX));
    }
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn count(shared: &Shared, def: &metric_names::MetricDef, word: Option<&'static str>) {
    let service = shared.service.clone();
    match (def.name, word) {
        (name, Some(word)) if def.labels.contains(&label::OUTCOME) => {
            metrics::counter!(name, label::SERVICE => service, label::OUTCOME => word).increment(1)
        }
        (name, Some(word)) => {
            metrics::counter!(name, label::SERVICE => service, label::REASON => word).increment(1)
        }
        (name, None) => metrics::counter!(name, label::SERVICE => service).increment(1),
    }
}

#[cfg(test)]
mod tests;
