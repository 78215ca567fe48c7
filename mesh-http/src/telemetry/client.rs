//! Outbound telemetry: the logical call (metrics and a client span at the top of
//! the stack) and each attempt (a client span just above the endpoint dispatch,
//! which carries the trace context to the server).

use std::any::Any;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use mesh_core::clock::{self, ClockScope};
use mesh_core::config::{AccessLog, MeshConfig};
use mesh_core::extensions::{ServedBy, TriedEndpoints};
use mesh_core::metric_names::{
    label, ATTEMPTS, ATTEMPT_DURATION, HTTP_CLIENT_ACTIVE_REQUESTS, HTTP_CLIENT_REQUEST_BODY_SIZE,
    HTTP_CLIENT_REQUEST_DURATION, HTTP_CLIENT_RESPONSE_BODY_SIZE,
};
use mesh_core::telemetry::{
    body_size, head, inject, method_code, method_label, status_label, HandleCache, HandleSlot,
    OtelContext,
};
use metrics::{Gauge, Histogram, Label, SharedString};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tracing::field::Empty;

use super::access_log::{AccessLogSink, OutboundLogLine};
use super::scope::{Scope, Scoped};
use crate::body::ResponseBody;
use crate::error::{BoxError, Error};

/// The endpoint that answered `response`: the mesh client's [`ResponseBody`]
/// names it; any other service may say so with a [`ServedBy`] extension.
fn served_by<RB: 'static>(response: &Response<RB>) -> Option<SocketAddr> {
    // A type check the compiler settles for each body type: no cost at run time.
    (response.body() as &dyn Any)
        .downcast_ref::<ResponseBody>()
        .and_then(ResponseBody::served_by)
        .or_else(|| response.extensions().get::<ServedBy>().map(|s| s.0))
}

/// Records `http.client.request.duration` and `http.client.active_requests` for
/// each logical call to one service, inside a client span covering every attempt.
///
/// Labels stay bounded: the method (unknown ones become `_OTHER`), the logical
/// service name as `server.address`, the port, the status code and a fixed
/// `error.type` word; never the path.
///
/// `http.client.request.body.size` and `http.client.response.body.size` are
/// recorded for bodies whose length is known when the call starts or the
/// response headers arrive (exact size hint or `Content-Length`); bodies
/// streamed without a length are not counted, which keeps the layer from
/// wrapping every body.
///
/// Metric handles are resolved once per label combination and shared by every
/// clone of the layer, so a call records into atomics without building keys: a
/// call makes one lookup when it starts (by method and port), and one more when
/// it finishes only if it did not answer 200.
#[derive(Debug, Clone)]
pub struct ClientTelemetryLayer {
    handles: Arc<ClientHandles>,
    access_log: Option<AccessLogSink>,
}

/// Put on a call's request when the outbound access log is on; shared by
/// every attempt's copy of the request (the retry layer clones extensions),
/// so the attempt layer can count the attempts the call made.
#[derive(Clone, Debug, Default)]
struct CallLog(Arc<AtomicU32>);

/// Metric handles of one logical service, by bounded label values.
#[derive(Debug)]
struct ClientHandles {
    service: SharedString,
    /// By method code and port.
    series: HandleCache<u32, Arc<CallSeries>>,
}

/// The handles of calls with one method to one port: the active-requests gauge,
/// and the histograms a finished call records into, by status and outcome.
struct CallSeries {
    service: SharedString,
    method: &'static str,
    port: u16,
    active: Gauge,
    /// A call that answered 200, the one nearly every call records into: no
    /// lookup.
    ok: HandleSlot<CallHandles>,
    /// Every other status and outcome, by [`call_key`].
    finished: HandleCache<u64, CallHandles>,
}

/// The histograms one finished call records into.
#[derive(Clone)]
struct CallHandles {
    duration: Histogram,
    request_size: Histogram,
    response_size: Histogram,
}

/// `error.type` of a finished call, as a small number for the cache key.
#[derive(Clone, Copy)]
enum Outcome {
    /// A response that is not an error.
    Ok,
    /// A 4xx or 5xx response: `error.type` is its status code.
    Status,
    /// No response: `error.type` is this word.
    Failed(&'static str),
}

const ERROR_WORDS: [&str; 5] = [
    "timeout",
    "connect",
    "no_endpoint",
    "unknown_service",
    "_OTHER",
];

/// Packs status and outcome into one word: the key of a [`CallSeries`]'
/// finished handles.
fn call_key(status: u16, outcome: Outcome) -> u64 {
    let outcome = match outcome {
        Outcome::Ok => 0,
        Outcome::Status => 1,
        Outcome::Failed(word) => {
            2 + ERROR_WORDS.iter().position(|w| *w == word).unwrap_or(4) as u64
        }
    };
    u64::from(status) | outcome << 16
}

impl ClientTelemetryLayer {
    /// Telemetry for calls to the logical service `service`.
    pub fn new(service: &str) -> Self {
        ClientTelemetryLayer {
            handles: Arc::new(ClientHandles {
                service: SharedString::from_owned(service.to_string()),
                series: HandleCache::new(),
            }),
            access_log: None,
        }
    }

    /// As `config` says: with the JSON outbound access log on stdout when
    /// `MESH_ACCESS_LOG=json`.
    pub fn from_config(service: &str, config: &MeshConfig) -> Self {
        Self::with_access_log(service, config.access_log())
    }

    /// For `service`, writing outbound access-log lines to stdout when
    /// `access_log` says so (`MESH_ACCESS_LOG`).
    pub fn with_access_log(service: &str, access_log: AccessLog) -> Self {
        let layer = Self::new(service);
        match access_log {
            AccessLog::Json => layer.access_log(AccessLogSink::stdout()),
            AccessLog::Off => layer,
        }
    }

    /// Writes one line per logical call to `sink` (`kind: "outbound"`, with
    /// the attempts it took and the endpoint that answered; see
    /// [`AccessLogSink`]). Needs [`AttemptTelemetryLayer`] below the retry
    /// layer to count attempts.
    pub fn access_log(mut self, sink: AccessLogSink) -> Self {
        self.access_log = Some(sink);
        self
    }
}

impl<S> tower::Layer<S> for ClientTelemetryLayer {
    type Service = ClientTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientTelemetry {
            inner,
            handles: self.handles.clone(),
            access_log: self.access_log.clone(),
        }
    }
}

/// The service [`ClientTelemetryLayer`] makes.
#[derive(Debug, Clone)]
pub struct ClientTelemetry<S> {
    inner: S,
    handles: Arc<ClientHandles>,
    access_log: Option<AccessLogSink>,
}

/// What the outbound access log line needs that the response does not carry.
struct PendingCall {
    sink: AccessLogSink,
    path: String,
    log: CallLog,
}

impl ClientHandles {
    /// The handles of calls with `method` (`code`) to `port`.
    fn series(&self, method: &'static str, code: u8, port: u16) -> Arc<CallSeries> {
        self.series
            .get(&(u32::from(code) | u32::from(port) << 8), |_| {
                Arc::new(CallSeries {
                    service: self.service.clone(),
                    method,
                    port,
                    active: metrics::gauge!(
                        HTTP_CLIENT_ACTIVE_REQUESTS.name,
                        base_labels(method, &self.service, port)
                    ),
                    ok: HandleSlot::new(),
                    finished: HandleCache::new(),
                })
            })
    }
}

/// The labels every client series has: method, service and port.
fn base_labels(method: &'static str, service: &SharedString, port: u16) -> Vec<Label> {
    vec![
        Label::from_static_parts(label::HTTP_REQUEST_METHOD, method),
        Label::new(label::SERVER_ADDRESS, service.clone()),
        Label::new(label::SERVER_PORT, port_label(port)),
    ]
}

impl CallSeries {
    /// Calls `record` with the histograms of a call that ended so.
    fn finished(
        &self,
        status: Option<http::StatusCode>,
        outcome: Outcome,
        record: impl FnOnce(&CallHandles),
    ) {
        let make = || {
            let mut labels = base_labels(self.method, &self.service, self.port);
            if let Some(status) = status {
                labels.push(Label::new(
                    label::HTTP_RESPONSE_STATUS_CODE,
                    status_label(status),
                ));
            }
            match (outcome, status) {
                (Outcome::Status, Some(status)) => {
                    labels.push(Label::new(label::ERROR_TYPE, status_label(status)))
                }
                (Outcome::Failed(word), _) => {
                    labels.push(Label::from_static_parts(label::ERROR_TYPE, word))
                }
                _ => {}
            }
            CallHandles {
                duration: metrics::histogram!(HTTP_CLIENT_REQUEST_DURATION.name, labels.clone()),
                request_size: metrics::histogram!(
                    HTTP_CLIENT_REQUEST_BODY_SIZE.name,
                    labels.clone()
                ),
                response_size: metrics::histogram!(HTTP_CLIENT_RESPONSE_BODY_SIZE.name, labels),
            }
        };
        if let (Some(http::StatusCode::OK), Outcome::Ok) = (status, outcome) {
            return self.ok.with(make, record);
        }
        let key = call_key(status.map_or(0, |s| s.as_u16()), outcome);
        self.finished.with(&key, |_| make(), record)
    }
}

/// The URI's port, as `Uri::port_u16` reads it, from the end of the authority:
/// a logical name without a port (`http://orders/`) is answered by its last
/// byte, where `port_u16` searches the authority for a colon.
fn uri_port(uri: &http::Uri) -> Option<u16> {
    let authority = uri.authority()?.as_str().as_bytes();
    let digits = authority
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let colon = authority.len().checked_sub(digits + 1)?;
    if digits == 0 || authority[colon] != b':' {
        return None;
    }
    // A parsed authority's port fits in a u16.
    std::str::from_utf8(&authority[colon + 1..])
        .ok()?
        .parse()
        .ok()
}

fn port_label(port: u16) -> SharedString {
    match port {
        80 => SharedString::const_str("80"),
        443 => SharedString::const_str("443"),
        other => SharedString::from_owned(other.to_string()),
    }
}

/// A call counted in its series' active-requests gauge: decrements it however
/// the call ends (dropped included).
struct ActiveCall(Arc<CallSeries>);

impl Drop for ActiveCall {
    fn drop(&mut self) {
        self.0.active.decrement(1.0);
    }
}

impl<S, B, RB> tower::Service<Request<B>> for ClientTelemetry<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    B: Body,
    RB: Body + 'static,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = CallFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // The call's start, shared with the layers below while they build
        // their futures (the deadline, the retry, the attempt's start): one
        // clock reading for all of them.
        let start = Instant::now();
        let _now = ClockScope::at(start);
        let method = method_label(request.method());
        let code = method_code(request.method());
        let port = uri_port(request.uri()).unwrap_or(
            if request.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
                443
            } else {
                80
            },
        );
        let request_size = body_size(request.headers(), &request.body().size_hint());
        // A span only when someone will record it: building one costs
        // microseconds. Without it the current trace context still reaches the
        // attempt layer, which injects it.
        // A span only when the sampler will keep it: building one costs
        // microseconds. Without it the current trace context (or, for a call
        // starting a trace that is not sampled, that new trace) still reaches
        // the attempt layer, which injects it.
        let scope = Scope::new(OtelContext::map_current(head), || {
            tracing::info_span!(
                "http.client.call",
                otel.name = method,
                otel.kind = "client",
                otel.status_code = Empty,
                http.request.method = method,
                server.address = &*self.handles.service,
                server.port = port,
                http.response.status_code = Empty,
                error.type = Empty,
            )
        });
        let series = self.handles.series(method, code, port);
        series.active.increment(1.0);
        let pending = self.access_log.clone().map(|sink| {
            let log = CallLog::default();
            request.extensions_mut().insert(log.clone());
            PendingCall {
                sink,
                path: request.uri().path().to_string(),
                log,
            }
        });
        // In scope while the inner stack builds its future, so the attempt
        // layer below sees this call's span (or trace) as its parent. Without
        // a scope of its own (the usual case) the future is built in place,
        // not returned through `in_scope`'s closure: one move less of it.
        let future = match scope {
            Scope::None => self.inner.call(request),
            _ => scope.in_scope(|| self.inner.call(request)),
        };
        CallFuture {
            inner: Scoped::new(future, scope),
            start,
            request_size,
            pending,
            call: ActiveCall(series),
        }
    }
}

pin_project! {
    /// The future of a [`ClientTelemetry`] call.
    pub struct CallFuture<F> {
        #[pin]
        inner: Scoped<F>,
        start: Instant,
        request_size: Option<u64>,
        pending: Option<PendingCall>,
        call: ActiveCall,
    }
}

impl<F> std::fmt::Debug for CallFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallFuture").finish_non_exhaustive()
    }
}

/// The fixed `error.type` word for a failed call: never a message text.
pub fn error_type(error: &BoxError) -> &'static str {
    if error.is::<tower::timeout::error::Elapsed>() {
        return "timeout";
    }
    match error.downcast_ref::<Error>() {
        Some(e) if e.is_timeout() => "timeout",
        Some(e) if e.is_connect() => "connect",
        Some(e) if e.is_no_endpoint() => "no_endpoint",
        Some(e) if e.is_unknown_service() => "unknown_service",
        _ => "_OTHER",
    }
}

impl<F, RB, E> Future for CallFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
    RB: Body + 'static,
{
    type Output = Result<Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // One reading for this poll, taken by the first layer below that needs
        // the time (the endpoint's RTT, the outlier detector, the attempt's
        // end) and shared with the call's end here.
        let _now = ClockScope::lazy();
        // Inspected where it lies and returned as it came (see `AttemptFuture`).
        let polled = this.inner.as_mut().poll(cx).map_err(Into::into);
        let Poll::Ready(result) = &polled else {
            return Poll::Pending;
        };
        let elapsed = clock::since(*this.start).as_secs_f64();
        let span = this.inner.scope().span();
        let (status, outcome, response_size) = match result {
            Ok(response) => {
                let status = response.status();
                span.record("http.response.status_code", status.as_u16());
                // For a client every 4xx and 5xx is an error of the call.
                let outcome = if status.is_client_error() || status.is_server_error() {
                    span.record("error.type", status.as_str());
                    span.record("otel.status_code", "ERROR");
                    Outcome::Status
                } else {
                    Outcome::Ok
                };
                let size = body_size(response.headers(), &response.body().size_hint());
                (Some(status), outcome, size)
            }
            Err(error) => {
                let kind = error_type(error);
                span.record("error.type", kind);
                span.record("otel.status_code", "ERROR");
                (None, Outcome::Failed(kind), None)
            }
        };
        let series = &*this.call.0;
        if let Some(pending) = this.pending.take() {
            pending.sink.write_outbound(&OutboundLogLine {
                service: &series.service,
                method: series.method,
                path: &pending.path,
                status: status.map(|s| s.as_u16()),
                error: match outcome {
                    Outcome::Failed(word) => Some(word),
                    _ => None,
                },
                duration: Duration::from_secs_f64(elapsed),
                attempts: pending.log.0.load(Ordering::Relaxed),
                endpoint: result.as_ref().ok().and_then(served_by),
                trace_id: this.inner.scope().trace_id().as_deref(),
            });
        }
        let request_size = *this.request_size;
        series.finished(status, outcome, |handles| {
            handles.duration.record(elapsed);
            if let Some(size) = request_size {
                handles.request_size.record(size as f64);
            }
            if let Some(size) = response_size {
                handles.response_size.record(size as f64);
            }
        });
        polled
    }
}

/// One client span per attempt, just above the endpoint dispatch, and the trace
/// context (`traceparent`, baggage, or what `OTEL_PROPAGATORS` chose) written
/// into the request so the server's span is this attempt's child. Counts
/// `mesh.client.attempts` by outcome and records `mesh.client.attempt.duration`
/// per endpoint that answered.
#[derive(Debug, Clone)]
pub struct AttemptTelemetryLayer {
    handles: Arc<AttemptHandles>,
}

/// Metric handles of one service's attempts.
#[derive(Debug)]
struct AttemptHandles {
    service: SharedString,
    /// By outcome: `ok` (true) or `error`.
    attempts: HandleCache<bool, metrics::Counter>,
    /// By the endpoint that answered (bounded by the endpoint set): an
    /// answered attempt makes this one lookup.
    endpoints: HandleCache<SocketAddr, EndpointHandles>,
}

/// What an attempt an endpoint answered records into: the endpoint's duration
/// histogram and the service's attempt counters (the same series as in
/// `attempts`, kept here too).
#[derive(Clone)]
struct EndpointHandles {
    duration: Histogram,
    ok: metrics::Counter,
    error: metrics::Counter,
}

impl AttemptHandles {
    fn attempts(&self, ok: bool) -> metrics::Counter {
        self.attempts.get(&ok, |ok| {
            metrics::counter!(
                ATTEMPTS.name,
                label::SERVICE => self.service.clone(),
                label::OUTCOME => if *ok { "ok" } else { "error" },
            )
        })
    }

    fn endpoint(&self, addr: &SocketAddr) -> EndpointHandles {
        EndpointHandles {
            duration: metrics::histogram!(
                ATTEMPT_DURATION.name,
                label::SERVICE => self.service.clone(),
                label::ENDPOINT => addr.to_string(),
            ),
            ok: self.attempts(true),
            error: self.attempts(false),
        }
    }
}

impl AttemptTelemetryLayer {
    /// Attempt telemetry for the logical service `service`.
    pub fn new(service: &str) -> Self {
        AttemptTelemetryLayer {
            handles: Arc::new(AttemptHandles {
                service: SharedString::from_owned(service.to_string()),
                attempts: HandleCache::new(),
                endpoints: HandleCache::new(),
            }),
        }
    }
}

impl<S> tower::Layer<S> for AttemptTelemetryLayer {
    type Service = AttemptTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AttemptTelemetry {
            inner,
            handles: self.handles.clone(),
        }
    }
}

/// The service [`AttemptTelemetryLayer`] makes.
#[derive(Debug, Clone)]
pub struct AttemptTelemetry<S> {
    inner: S,
    handles: Arc<AttemptHandles>,
}

impl<S, B, RB> tower::Service<Request<B>> for AttemptTelemetry<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    RB: 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = AttemptFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        if let Some(log) = request.extensions().get::<CallLog>() {
            log.0.fetch_add(1, Ordering::Relaxed);
        }
        let scope = Scope::new(OtelContext::map_current(head), || {
            let method = method_label(request.method());
            // Endpoints earlier attempts used: this attempt's resend count.
            let resends = request
                .extensions()
                .get::<TriedEndpoints>()
                .map_or(0, |t| t.0.len());
            tracing::info_span!(
                "http.client.attempt",
                otel.name = method,
                otel.kind = "client",
                http.request.method = method,
                http.request.resend_count = resends,
                network.peer.address = Empty,
                network.peer.port = Empty,
                http.response.status_code = Empty,
            )
        });
        // With no span of ours, the current context (the call's, the app's, or
        // the inbound request's) is what the server continues.
        let send = || {
            inject(scope.span(), request.headers_mut());
            self.inner.call(request)
        };
        let future = match scope {
            // As above: built in place when there is no scope to enter.
            Scope::None => send(),
            _ => scope.in_scope(send),
        };
        AttemptFuture {
            inner: Scoped::new(future, scope),
            // The call's reading when this is the first attempt (see `clock`).
            start: clock::now(),
            handles: self.handles.clone(),
        }
    }
}

pin_project! {
    /// The future of an [`AttemptTelemetry`] call.
    pub struct AttemptFuture<F> {
        #[pin]
        inner: Scoped<F>,
        start: Instant,
        handles: Arc<AttemptHandles>,
    }
}

impl<F> std::fmt::Debug for AttemptFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttemptFuture").finish_non_exhaustive()
    }
}

impl<F, RB, E> Future for AttemptFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    RB: 'static,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // Inspected where it lies and returned as it came, not moved out of
        // the `Poll` and back into another.
        let polled = this.inner.as_mut().poll(cx);
        let Poll::Ready(result) = &polled else {
            return Poll::Pending;
        };
        let handles = &**this.handles;
        let ok = match result {
            Ok(response) => {
                let span = this.inner.scope().span();
                span.record("http.response.status_code", response.status().as_u16());
                let ok = !response.status().is_server_error();
                if let Some(addr) = served_by(response) {
                    span.record("network.peer.address", tracing::field::display(addr.ip()));
                    span.record("network.peer.port", addr.port());
                    let elapsed = clock::since(*this.start).as_secs_f64();
                    handles.endpoints.with(
                        &addr,
                        |addr| handles.endpoint(addr),
                        |h| {
                            h.duration.record(elapsed);
                            if ok { &h.ok } else { &h.error }.increment(1);
                        },
                    );
                    return polled;
                }
                ok
            }
            Err(_) => false,
        };
        // No endpoint answered: not the common path, a cloned handle will do.
        handles.attempts(ok).increment(1);
        polled
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use http_body_util::Empty;
    use parking_lot::Mutex;
    use tower::{Layer, Service, ServiceExt};

    use super::*;

    type Body = Empty<bytes::Bytes>;

    /// A stand-in endpoint: answers 503 to the first attempt and 200 to the
    /// next, naming itself as the endpoint that answered.
    fn flaky_endpoint(
        addr: SocketAddr,
    ) -> impl Service<Request<Body>, Response = Response<Body>, Error = BoxError, Future: Send> + Clone
    {
        let calls = Arc::new(AtomicU32::new(0));
        tower::service_fn(move |_req: Request<Body>| {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            async move {
                let mut response = Response::new(Body::new());
                *response.status_mut() = if n == 0 {
                    http::StatusCode::SERVICE_UNAVAILABLE
                } else {
                    http::StatusCode::OK
                };
                response.extensions_mut().insert(ServedBy(addr));
                Ok::<_, BoxError>(response)
            }
        })
    }

    #[tokio::test]
    async fn outbound_access_log_counts_attempts_and_names_the_endpoint() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink_lines = lines.clone();
        let sink = AccessLogSink::new(move |line| sink_lines.lock().push(line.to_string()));
        let addr: SocketAddr = "127.0.0.1:8081".parse().unwrap();
        let attempts = AttemptTelemetryLayer::new("orders").layer(flaky_endpoint(addr));
        // A minimal retry: the request's parts (extensions included) are
        // cloned for a second attempt after a 503, as the retry layer does.
        let retrying = tower::service_fn(move |request: Request<Body>| {
            let mut attempts = attempts.clone();
            async move {
                let (parts, _) = request.into_parts();
                let first = Request::from_parts(parts.clone(), Body::new());
                let response = attempts.ready().await?.call(first).await?;
                if response.status() != http::StatusCode::SERVICE_UNAVAILABLE {
                    return Ok::<_, BoxError>(response);
                }
                attempts
                    .ready()
                    .await?
                    .call(Request::from_parts(parts, Body::new()))
                    .await
            }
        });
        let client = ClientTelemetryLayer::new("orders")
            .access_log(sink)
            .layer(retrying);
        let request = Request::get("http://orders/orders/42")
            .body(Body::new())
            .unwrap();
        let response = client.oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200);

        let lines = lines.lock();
        assert_eq!(lines.len(), 1, "one line per logical call: {lines:?}");
        let line: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(line["kind"], "outbound");
        assert_eq!(line["service"], "orders");
        assert_eq!(line["method"], "GET");
        assert_eq!(line["path"], "/orders/42");
        assert_eq!(line["status"], 200);
        assert_eq!(line["attempts"], 2);
        assert_eq!(line["endpoint"], "127.0.0.1:8081");
        assert!(line.get("error").is_none(), "{line}");
    }

    /// Records every histogram sample by metric name, nothing else.
    #[derive(Default, Clone)]
    struct HistogramRecorder(Arc<Mutex<Vec<(String, f64)>>>);

    struct RecordedHistogram(String, Arc<Mutex<Vec<(String, f64)>>>);

    impl metrics::HistogramFn for RecordedHistogram {
        fn record(&self, value: f64) {
            self.1.lock().push((self.0.clone(), value));
        }
    }

    impl metrics::Recorder for HistogramRecorder {
        fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: SharedString) {
        }
        fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: SharedString) {}
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: SharedString,
        ) {
        }
        fn register_counter(
            &self,
            _: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Counter {
            metrics::Counter::noop()
        }
        fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> Histogram {
            Histogram::from_arc(Arc::new(RecordedHistogram(
                key.name().to_string(),
                self.0.clone(),
            )))
        }
    }

    /// The call and its attempt run from the `call` to the poll that sees the
    /// response, though the layers share one clock reading per `call` and per
    /// poll: a first poll a second after the call, and a response two seconds
    /// after that, make three seconds for both (a reading kept from the wrong
    /// moment would make one or two).
    #[tokio::test(start_paused = true)]
    async fn call_and_attempt_durations_run_from_the_call_to_the_response() {
        let addr: SocketAddr = "127.0.0.1:8081".parse().unwrap();
        let endpoint = tower::service_fn(move |_req: Request<Body>| async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let mut response = Response::new(Body::new());
            response.extensions_mut().insert(ServedBy(addr));
            Ok::<_, BoxError>(response)
        });
        let mut client = ClientTelemetryLayer::new("orders")
            .layer(AttemptTelemetryLayer::new("orders").layer(endpoint));
        let request = Request::get("http://orders/").body(Body::new()).unwrap();
        let mut call = Box::pin(client.call(request));
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(call.as_mut().poll(&mut cx).is_pending());
        tokio::time::advance(Duration::from_secs(2)).await;
        let recorder = HistogramRecorder::default();
        metrics::with_local_recorder(&recorder, || {
            assert!(call.as_mut().poll(&mut cx).is_ready());
        });
        let samples = recorder.0.lock();
        let sample = |name: &str| {
            samples
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("{name} was not recorded: {samples:?}"))
                .1
        };
        assert_eq!(sample(HTTP_CLIENT_REQUEST_DURATION.name), 3.0);
        assert_eq!(sample(ATTEMPT_DURATION.name), 3.0);
    }

    #[test]
    fn uri_port_reads_what_port_u16_reads() {
        for uri in [
            "http://orders/",
            "http://orders:8080/a",
            "https://orders:443",
            "http://127.0.0.1:9/",
            "http://127.0.0.1/",
            "http://[::1]/",
            "http://[::1]:65535/",
            "http://user@host:81/",
            "/relative",
            "http://h0st/",
            "http://0/",
        ] {
            let uri: http::Uri = uri.parse().unwrap();
            assert_eq!(uri_port(&uri), uri.port_u16(), "{uri}");
        }
    }

    #[tokio::test]
    async fn no_access_log_means_no_request_extension() {
        let seen = Arc::new(Mutex::new(None));
        let seen_inner = seen.clone();
        let client = ClientTelemetryLayer::new("orders").layer(tower::service_fn(
            move |request: Request<Body>| {
                *seen_inner.lock() = Some(request.extensions().get::<CallLog>().is_some());
                async { Ok::<_, BoxError>(Response::new(Body::new())) }
            },
        ));
        let request = Request::get("http://orders/").body(Body::new()).unwrap();
        client.oneshot(request).await.unwrap();
        assert_eq!(*seen.lock(), Some(false), "off costs nothing per call");
    }
}
