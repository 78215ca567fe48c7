//! Inbound telemetry for any axum router (or any `tower::Service` of HTTP
//! requests): `http.server.request.duration`, `http.server.active_requests`,
//! body sizes, a server span that continues the caller's trace (or, with spans
//! off, the caller's trace context attached while the handler runs), and the
//! access log line.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll};

use axum::extract::{ConnectInfo, MatchedPath};
use http::{Request, Response};
use http_body::Body;
use mesh_core::clock::ClockScope;
use mesh_core::config::{AccessLog, MeshConfig};
use mesh_core::metric_names::{
    label, HTTP_SERVER_ACTIVE_REQUESTS, HTTP_SERVER_REQUEST_BODY_SIZE,
    HTTP_SERVER_REQUEST_DURATION, HTTP_SERVER_RESPONSE_BODY_SIZE,
};
use mesh_core::telemetry::{
    body_size, carries_context, extract_if_present, head, method_code, method_label, set_parent,
    status_label, trace_id, HandleCache, HandleSlot, Head, OtelContext,
};
use metrics::{Gauge, Histogram, Label, SharedString};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tracing::field::Empty;
use tracing::Span;

use super::access_log::{AccessLogLine, AccessLogSink};
use crate::server::PeerIdentity;

/// The `http.route` value when the layer sits outside the router, or the request
/// matched no route: one fixed word, so unmatched paths cannot mint series.
pub const UNMATCHED_ROUTE: &str = "(unmatched)";

/// Inbound metrics, spans and access log for an axum router.
///
/// Put it inside the router with `Router::layer` so `http.route` is the matched
/// route template (`/users/{id}`); outside the router every request gets
/// [`UNMATCHED_ROUTE`], never the raw path.
///
/// The peer's SPIFFE ID ([`PeerIdentity`], set by the mesh's inbound server)
/// goes into the access log (`peer_identity`) and the span
/// (`mesh.peer.identity`), not into metric labels: identities are bounded per
/// mesh, but a label per calling workload multiplies every series.
///
/// Layered twice — [`Mesh::serve`](crate::Mesh::serve) applies it around the
/// whole service, and an app may also put it inside its router for route
/// templates — the request is recorded once: the inner layer only tells the
/// outer one the matched route.
///
/// Body sizes (`http.server.request.body.size`, `http.server.response.body.size`)
/// are recorded for bodies whose length is known up front (exact size hint or
/// `Content-Length`); bodies streamed without a length are not counted.
///
/// ```no_run
/// # fn app() -> axum::Router {
/// use axum::routing::get;
/// axum::Router::new()
///     .route("/users/{id}", get(|| async { "hi" }))
///     .layer(mesh_http::telemetry::ServerTelemetryLayer::new())
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct ServerTelemetryLayer {
    access_log: Option<AccessLogSink>,
    scheme: Scheme,
    /// Requests arrive carrying [`RecordedOutside`] already (the mesh's inbound
    /// server puts it in every request's extensions for its outermost layer):
    /// this layer records them without looking for or inserting the marker.
    premarked: bool,
    handles: Arc<ServerHandles>,
}

/// Metric handles resolved once per label combination, shared by every clone.
#[derive(Debug, Default)]
struct ServerHandles {
    /// By route template, then by [`finish_key`].
    routes: HandleCache<String, Arc<RouteHandles>>,
    /// The [`UNMATCHED_ROUTE`] entry: every request when the layer sits outside
    /// the router (as `Mesh::serve` puts it), found without hashing the name.
    unmatched: HandleCache<(), Arc<RouteHandles>>,
}

/// Method codes (`method_code`) with a slot of their own for the active gauge.
const METHOD_CODES: usize = 10;

#[derive(Debug)]
struct RouteHandles {
    route: SharedString,
    /// `http.server.active_requests` by method code (its labels are method and
    /// scheme, not the route). Kept here so a request makes one cache lookup
    /// when it starts, not two; made under the same recorder as the rest of
    /// the entry, so a change of recorder starts these over too.
    active: [OnceLock<Gauge>; METHOD_CODES],
    /// A request answered 200, by method code: the series nearly every request
    /// records into, without a lookup.
    ok: [HandleSlot<FinishedHandles>; METHOD_CODES],
    /// Every other method and status, by [`finish_key`].
    finished: HandleCache<u64, FinishedHandles>,
    /// The set this entry belongs to, for the rare request whose route an
    /// inner layer reports: a request's record holds this entry anyway, so it
    /// does not hold (count a reference to, and drop) the set as well. Weak:
    /// the set holds its entries.
    server: Weak<ServerHandles>,
}

/// The histograms one finished request records into.
#[derive(Clone)]
struct FinishedHandles {
    duration: Histogram,
    request_size: Histogram,
    response_size: Histogram,
}

/// Put on a request by the outermost server layer, so an inner one (inside the
/// router) does not record the request again. A zero-sized value: inserting it
/// allocates nothing.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordedOutside;

/// Put on the response by an inner server layer: the route the router matched,
/// for the outer layer's labels.
#[derive(Clone, Debug)]
struct InnerRoute(MatchedPath);

/// Method and status (0 when the service failed): the rest of the labels.
fn finish_key(method: u8, status: u16) -> u64 {
    u64::from(method) | u64::from(status) << 8
}

#[derive(Clone, Copy, Debug, Default)]
enum Scheme {
    #[default]
    Http,
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

impl ServerTelemetryLayer {
    /// Metrics and spans, no access log.
    pub fn new() -> Self {
        Self::default()
    }

    /// As `config` says: with the JSON access log on stdout when
    /// `MESH_ACCESS_LOG=json`.
    pub fn from_config(config: &MeshConfig) -> Self {
        let layer = Self::new();
        match config.access_log() {
            AccessLog::Json => layer.access_log(AccessLogSink::stdout()),
            AccessLog::Off => layer,
        }
    }

    /// Writes one access log line per request to `sink`.
    pub fn access_log(mut self, sink: AccessLogSink) -> Self {
        self.access_log = Some(sink);
        self
    }

    /// For the outermost layer in front of an inbound server that puts
    /// [`RecordedOutside`] on every request (see `InboundStack`): the marker
    /// comes with the connection's extensions, so this layer neither looks for
    /// it nor inserts it (a map insert per request), and layers inside the
    /// router still see it.
    pub(crate) fn premarked(mut self) -> Self {
        self.premarked = true;
        self
    }

    /// Labels requests `url.scheme="https"` (behind the mesh's TLS listener).
    pub fn https(mut self) -> Self {
        self.scheme = Scheme::Https;
        // Handles carry the scheme label: start from a fresh set.
        self.handles = Arc::default();
        self
    }
}

impl<S> tower::Layer<S> for ServerTelemetryLayer {
    type Service = ServerTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerTelemetry {
            inner,
            access_log: self.access_log.clone(),
            scheme: self.scheme,
            premarked: self.premarked,
            handles: self.handles.clone(),
        }
    }
}

/// The service [`ServerTelemetryLayer`] makes.
#[derive(Clone, Debug)]
pub struct ServerTelemetry<S> {
    inner: S,
    access_log: Option<AccessLogSink>,
    scheme: Scheme,
    premarked: bool,
    handles: Arc<ServerHandles>,
}

/// The active-requests gauge a request counts in, decremented however the
/// request ends.
enum Active {
    /// `route.active[code]` of the request's [`Record`]: the record already
    /// holds the route's handles, so the gauge is not cloned (an `Arc`
    /// increment, and a decrement when dropped) for each request.
    Slot(u8),
    /// A method code without a slot.
    Own(Gauge),
}

/// What the access log needs that the response does not carry.
struct Pending {
    sink: AccessLogSink,
    path: String,
    peer: Option<SocketAddr>,
    peer_identity: Option<String>,
}

impl<S, B, RB> tower::Service<Request<B>> for ServerTelemetry<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    B: Body,
    RB: Body,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ServerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        if !self.premarked && request.extensions().get::<RecordedOutside>().is_some() {
            // An outer server layer records this request; tell it the route
            // through the response.
            let matched = request.extensions().get::<MatchedPath>().cloned();
            return ServerFuture {
                inner: Some(self.inner.call(request)),
                span: Span::none(),
                attach: None,
                record: None,
                matched,
            };
        }
        if !self.premarked {
            request.extensions_mut().insert(RecordedOutside);
        }
        let method = method_label(request.method());
        let code = method_code(request.method());
        let scheme = self.scheme.as_str();
        let route_name = request
            .extensions()
            .get::<MatchedPath>()
            .map_or(UNMATCHED_ROUTE, |m| m.as_str());
        // Outside a router (as `Mesh::serve` puts it) every request is the
        // unmatched route: the cache's first key under the recorder in force,
        // found without a hash.
        let route = route_handles(&self.handles, route_name);
        // Looked up where it is used (the span, the access log): most
        // requests need neither.
        let peer_identity = || request.extensions().get::<PeerIdentity>();
        let request_size = body_size(request.headers(), &request.body().size_hint());

        // The caller's trace context: the parent of our span, or, when we make
        // none, attached while the handler runs so its logs, its own spans and
        // its outbound calls continue the caller's trace.
        let parent = extract_if_present(request.headers());
        let (span, attach) = match head(&parent) {
            Head::Span(start) => {
                let span = start.build(|| {
                    let span = tracing::info_span!(
                        "http.server",
                        otel.name = %format_args!("{method} {}", &*route.route),
                        otel.kind = "server",
                        otel.status_code = Empty,
                        http.request.method = method,
                        http.route = &*route.route,
                        url.scheme = scheme,
                        http.response.status_code = Empty,
                        error.type = Empty,
                        mesh.peer.identity = peer_identity().map(|p| tracing::field::display(&p.0)),
                    );
                    set_parent(&span, parent);
                    span
                });
                (span, None)
            }
            // A request starting a trace the sampler drops: the handler runs in
            // that new trace, unsampled, so its own calls carry it on.
            Head::Unsampled(cx) => (Span::none(), Some(cx)),
            Head::Skip => {
                let attach = carries_context(&parent).then_some(parent);
                (Span::none(), attach)
            }
        };

        let make_active = || {
            metrics::gauge!(
                HTTP_SERVER_ACTIVE_REQUESTS.name,
                label::HTTP_REQUEST_METHOD => method,
                label::URL_SCHEME => scheme,
            )
        };
        let active = match route.active.get(usize::from(code)) {
            Some(slot) => {
                slot.get_or_init(make_active).increment(1.0);
                Active::Slot(code)
            }
            None => {
                let gauge = make_active();
                gauge.increment(1.0);
                Active::Own(gauge)
            }
        };
        // Boxed: only with the access log on (which copies strings anyway), and
        // the record, moved with the future, stays small without it.
        let pending = self.access_log.clone().map(|sink| {
            Box::new(Pending {
                sink,
                path: request.uri().path().to_string(),
                peer: request
                    .extensions()
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|c| c.0),
                peer_identity: peer_identity().map(|p| p.0.to_string()),
            })
        });
        // Read before the service's `call`, which is part of the request's
        // time (a router matches the path there).
        let start = Instant::now();
        let record = Some(Record {
            start,
            method,
            code,
            scheme,
            route,
            request_size,
            pending,
            active,
        });
        // The layers inside (the inbound deadline's `Deadline::after`) read
        // the time through `clock::now`: they get the request's start, a
        // reading taken microseconds ago, instead of a fresh one.
        let _clock = ClockScope::at(start);
        if span.is_none() && attach.is_none() {
            // Nothing to enter: the service's future is built in its place,
            // not in a local moved into the struct after the guards are gone.
            return ServerFuture {
                inner: Some(self.inner.call(request)),
                span,
                attach,
                matched: None,
                record,
            };
        }
        let future = {
            // Entered (or the caller's context attached) while the app builds
            // its future, so what it starts there is a child too.
            let _entered = span.enter();
            let _attached = attach.as_ref().map(|cx| cx.clone().attach());
            self.inner.call(request)
        };
        ServerFuture {
            inner: Some(future),
            span,
            attach,
            matched: None,
            record,
        }
    }
}

pin_project! {
    /// The future of a [`ServerTelemetry`] call.
    ///
    /// It enters its span around each poll of the service's future itself (no
    /// `Instrumented` wrapper: one future less to nest and move the response
    /// through), and, as `Instrumented` does, while dropping it.
    pub struct ServerFuture<F> {
        // `Some` until the future is dropped (see the drop below).
        #[pin]
        inner: Option<F>,
        span: Span,
        attach: Option<OtelContext>,
        // `None` when an outer server layer records the request.
        record: Option<Record>,
        // An inner layer's: the route the router matched, for the outer layer.
        matched: Option<MatchedPath>,
    }

    impl<F> PinnedDrop for ServerFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            // What the service's future does as it is dropped (a cancelled
            // request) belongs to the request's span.
            let _entered = (!this.span.is_none()).then(|| this.span.enter());
            this.inner.set(None);
        }
    }
}

/// What the outermost layer needs to record a finished request.
struct Record {
    start: Instant,
    method: &'static str,
    code: u8,
    scheme: &'static str,
    route: Arc<RouteHandles>,
    request_size: Option<u64>,
    pending: Option<Box<Pending>>,
    active: Active,
}

impl Drop for Record {
    fn drop(&mut self) {
        // The request is over, however it ended.
        match &self.active {
            Active::Slot(code) => {
                if let Some(gauge) = self.route.active[usize::from(*code)].get() {
                    gauge.decrement(1.0);
                }
            }
            Active::Own(gauge) => gauge.decrement(1.0),
        }
    }
}

fn route_handles(handles: &Arc<ServerHandles>, name: &str) -> Arc<RouteHandles> {
    let make = |route: SharedString| {
        Arc::new(RouteHandles {
            route,
            active: Default::default(),
            ok: Default::default(),
            finished: HandleCache::new(),
            server: Arc::downgrade(handles),
        })
    };
    if name == UNMATCHED_ROUTE {
        return handles
            .unmatched
            .get(&(), |_| make(SharedString::const_str(UNMATCHED_ROUTE)));
    }
    handles.routes.get(name, |name| {
        make(SharedString::from_owned(name.to_string()))
    })
}

impl<F> std::fmt::Debug for ServerFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerFuture").finish_non_exhaustive()
    }
}

impl<F, RB, E> Future for ServerFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    RB: Body,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _attached = this.attach.as_ref().map(|cx| cx.clone().attach());
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            // Only the drop empties it.
            unreachable!("ServerFuture polled while being dropped");
        };
        let mut result = {
            let _entered = (!this.span.is_none()).then(|| this.span.enter());
            std::task::ready!(inner.poll(cx))
        };
        // Borrowed, not taken: moving the record out would copy it; setting the
        // slot to `None` below drops it in place.
        let Some(record) = this.record.as_mut() else {
            if let (Some(matched), Ok(response)) = (this.matched.take(), &mut result) {
                response.extensions_mut().insert(InnerRoute(matched));
            }
            return Poll::Ready(result);
        };
        let elapsed = record.start.elapsed();
        let span = &*this.span;
        let inner_route = match &mut result {
            Ok(response) => response.extensions_mut().remove::<InnerRoute>(),
            Err(_) => None,
        };
        // The labels' route: the inner layer's, when it saw the one the router
        // matched. The record keeps its own (the active gauge's slot is there).
        let matched_route;
        let route = match inner_route {
            Some(InnerRoute(matched)) => {
                let name = matched.as_str();
                matched_route = match record.route.server.upgrade() {
                    Some(handles) => route_handles(&handles, name),
                    // The layer and every service it made are gone (a
                    // `oneshot` drops its service once called): resolved for
                    // this request alone, correct but not cached.
                    None => route_handles(&Arc::default(), name),
                };
                span.record("http.route", name);
                span.record(
                    "otel.name",
                    tracing::field::display(format_args!("{} {name}", record.method)),
                );
                &*matched_route
            }
            None => &*record.route,
        };
        let (status, response_size) = match &result {
            Ok(response) => {
                let status = response.status();
                span.record("http.response.status_code", status.as_u16());
                // For a server only 5xx is its own failure; 4xx is the caller's.
                if status.is_server_error() {
                    span.record("error.type", status.as_str());
                    span.record("otel.status_code", "ERROR");
                }
                let size = body_size(response.headers(), &response.body().size_hint());
                (Some(status), size)
            }
            Err(_) => {
                span.record("error.type", "_OTHER");
                span.record("otel.status_code", "ERROR");
                (None, None)
            }
        };
        let (method, scheme) = (record.method, record.scheme);
        let make = || {
            let mut labels = vec![
                Label::from_static_parts(label::HTTP_REQUEST_METHOD, method),
                Label::new(label::HTTP_ROUTE, route.route.clone()),
                Label::from_static_parts(label::URL_SCHEME, scheme),
            ];
            match status {
                Some(status) => {
                    labels.push(Label::new(
                        label::HTTP_RESPONSE_STATUS_CODE,
                        status_label(status),
                    ));
                    if status.is_server_error() {
                        labels.push(Label::new(label::ERROR_TYPE, status_label(status)));
                    }
                }
                None => labels.push(Label::from_static_parts(label::ERROR_TYPE, "_OTHER")),
            }
            FinishedHandles {
                duration: metrics::histogram!(HTTP_SERVER_REQUEST_DURATION.name, labels.clone()),
                request_size: metrics::histogram!(
                    HTTP_SERVER_REQUEST_BODY_SIZE.name,
                    labels.clone()
                ),
                response_size: metrics::histogram!(HTTP_SERVER_RESPONSE_BODY_SIZE.name, labels),
            }
        };
        let request_size = record.request_size;
        let record_into = |handles: &FinishedHandles| {
            handles.duration.record(elapsed.as_secs_f64());
            if let Some(size) = request_size {
                handles.request_size.record(size as f64);
            }
            if let Some(size) = response_size {
                handles.response_size.record(size as f64);
            }
        };
        match route.ok.get(usize::from(record.code)) {
            Some(slot) if status == Some(http::StatusCode::OK) => slot.with(make, record_into),
            _ => {
                let key = finish_key(record.code, status.map_or(0, |s| s.as_u16()));
                route.finished.with(&key, |_| make(), record_into)
            }
        }
        if let Some(pending) = record.pending.take() {
            pending.sink.write(&AccessLogLine {
                method,
                route: &route.route,
                path: &pending.path,
                status: status.map(|s| s.as_u16()),
                duration: elapsed,
                peer: pending.peer,
                peer_identity: pending.peer_identity.as_deref(),
                trace_id: trace_id(span).as_deref(),
            });
        }
        // Recorded: the active-requests gauge comes down with the record.
        *this.record = None;
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::routing::get;
    use axum::Router;
    use parking_lot::Mutex;
    use tower::{Layer, Service, ServiceExt};

    use super::*;

    fn captured() -> (AccessLogSink, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink_lines = lines.clone();
        let sink = AccessLogSink::new(move |line| sink_lines.lock().push(line.to_string()));
        (sink, lines)
    }

    /// A router with a templated route and its own (inner) telemetry layer.
    fn users_router() -> Router {
        Router::new()
            .route("/users/{id}", get(|| async { "hi" }))
            .layer(ServerTelemetryLayer::new())
    }

    /// The one access log line of `lines`, parsed.
    fn only_line(lines: &Mutex<Vec<String>>) -> serde_json::Value {
        let lines = lines.lock();
        assert_eq!(lines.len(), 1, "one line per request: {lines:?}");
        serde_json::from_str(&lines[0]).unwrap()
    }

    #[tokio::test]
    async fn nested_layers_log_once_with_the_route_and_peer_identity() {
        let (sink, lines) = captured();
        let router = users_router();
        let app = ServerTelemetryLayer::new().access_log(sink).layer(router);
        let peer: mesh_core::identity::SpiffeId =
            "spiffe://example.org/ns/prod/sa/web".parse().unwrap();
        let mut request = Request::get("/users/42")
            .body(axum::body::Body::empty())
            .unwrap();
        request.extensions_mut().insert(PeerIdentity(peer));
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200);

        let line = only_line(&lines);
        assert_eq!(line["route"], "/users/{id}");
        assert_eq!(line["path"], "/users/42");
        assert_eq!(line["peer_identity"], "spiffe://example.org/ns/prod/sa/web");
    }

    #[tokio::test]
    async fn a_premarked_outer_layer_records_once_with_the_inner_layers_route() {
        // As `Mesh::serve` runs it: the server marks the request, the outer
        // layer neither looks for nor inserts the marker, the router's own
        // layer only reports the route.
        let (sink, lines) = captured();
        let router = users_router();
        let app = ServerTelemetryLayer::new()
            .access_log(sink)
            .premarked()
            .layer(router);
        let mut request = Request::get("/users/42")
            .body(axum::body::Body::empty())
            .unwrap();
        request.extensions_mut().insert(RecordedOutside);
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(only_line(&lines)["route"], "/users/{id}");
    }

    #[tokio::test]
    async fn an_outer_layer_kept_for_many_requests_labels_each_with_the_inner_route() {
        // As a connection uses it: one service called again and again, so the
        // inner route's handles come from the layer's cache, not per request.
        let (sink, lines) = captured();
        let mut app = ServerTelemetryLayer::new()
            .access_log(sink)
            .layer(users_router());
        for id in [1, 2] {
            let request = Request::get(format!("/users/{id}"))
                .body(axum::body::Body::empty())
                .unwrap();
            let response = ServiceExt::<Request<axum::body::Body>>::ready(&mut app)
                .await
                .unwrap()
                .call(request)
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
        let lines = lines.lock();
        assert_eq!(lines.len(), 2, "one line per request: {lines:?}");
        for line in lines.iter() {
            let line: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(line["route"], "/users/{id}");
        }
    }

    #[tokio::test]
    async fn the_callers_trace_id_reaches_the_access_log_without_spans() {
        mesh_core::telemetry::record_spans(false);
        mesh_core::telemetry::propagation::install(&[
            mesh_core::telemetry::PropagatorKind::TraceContext,
        ]);
        let (sink, lines) = captured();
        let app = ServerTelemetryLayer::new()
            .access_log(sink)
            .layer(Router::new().route("/", get(|| async { "hi" })));
        let request = Request::get("/")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .body(axum::body::Body::empty())
            .unwrap();
        app.oneshot(request).await.unwrap();
        let line: serde_json::Value = serde_json::from_str(&lines.lock()[0]).unwrap();
        assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn the_layers_inside_read_the_requests_start_as_now() {
        // The inbound deadline computes its deadline from `clock::now()` in
        // its `call`: inside this layer that is the request's start, one
        // reading shared by every layer the call passes, however long they
        // take.
        let readings = Arc::new(Mutex::new(Vec::new()));
        let seen = readings.clone();
        let inner = tower::service_fn(move |_request: Request<axum::body::Body>| {
            seen.lock().push(mesh_core::clock::now());
            std::thread::sleep(std::time::Duration::from_millis(2));
            seen.lock().push(mesh_core::clock::now());
            std::future::ready(Ok::<_, std::convert::Infallible>(Response::new(
                axum::body::Body::empty(),
            )))
        });
        let mut app = ServerTelemetryLayer::new().layer(inner);
        let request = Request::get("/").body(axum::body::Body::empty()).unwrap();
        drop(app.call(request));
        let readings = readings.lock();
        assert_eq!(readings.len(), 2);
        assert_eq!(readings[0], readings[1], "one reading for the whole call");
        assert_ne!(
            mesh_core::clock::now(),
            readings[0],
            "a fresh reading once the call is over"
        );
    }

    /// Records the active-requests gauge's value per label set, nothing else.
    #[derive(Default)]
    struct GaugeRecorder(Arc<Mutex<std::collections::HashMap<String, f64>>>);

    struct RecordedGauge(
        metrics::Key,
        Arc<Mutex<std::collections::HashMap<String, f64>>>,
    );

    impl metrics::GaugeFn for RecordedGauge {
        fn increment(&self, value: f64) {
            *self.1.lock().entry(self.0.to_string()).or_default() += value;
        }
        fn decrement(&self, value: f64) {
            *self.1.lock().entry(self.0.to_string()).or_default() -= value;
        }
        fn set(&self, value: f64) {
            self.1.lock().insert(self.0.to_string(), value);
        }
    }

    impl metrics::Recorder for GaugeRecorder {
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
        fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> Gauge {
            Gauge::from_arc(Arc::new(RecordedGauge(key.clone(), self.0.clone())))
        }
        fn register_histogram(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    #[test]
    fn a_service_kept_across_requests_records_into_the_recorder_in_force() {
        // As a connection uses it: one service for every request. Its first
        // request runs under the no-op recorder; the next, under a recorder
        // set since, must reach that recorder, not the handles kept from
        // before.
        let mut app = ServerTelemetryLayer::new().layer(tower::service_fn(
            |_request: Request<axum::body::Body>| {
                std::future::ready(Ok::<_, std::convert::Infallible>(Response::new(
                    axum::body::Body::empty(),
                )))
            },
        ));
        let mut serve_one = || {
            let request = Request::get("/").body(axum::body::Body::empty()).unwrap();
            let mut call = std::pin::pin!(app.call(request));
            let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
            assert!(call.as_mut().poll(&mut cx).is_ready());
        };
        serve_one();
        let recorder = GaugeRecorder::default();
        let values = recorder.0.clone();
        metrics::with_local_recorder(&recorder, serve_one);
        let values = values.lock();
        assert!(
            values
                .keys()
                .any(|key| key.contains(HTTP_SERVER_ACTIVE_REQUESTS.name)),
            "the second request's gauge went to the recorder in force: {values:?}"
        );
    }

    #[test]
    fn active_requests_count_a_request_by_method_while_it_runs() {
        let recorder = GaugeRecorder::default();
        let values = recorder.0.clone();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let released = Arc::new(Mutex::new(Some(released)));
        let app = ServerTelemetryLayer::new().layer(Router::new().route(
            "/",
            axum::routing::post(move || {
                let released = released.lock().take().unwrap();
                async move {
                    let _ = released.await;
                    "done"
                }
            }),
        ));
        let value = |values: &Mutex<std::collections::HashMap<String, f64>>| {
            let values = values.lock();
            let mut active = values
                .iter()
                .filter(|(key, _)| key.contains(HTTP_SERVER_ACTIVE_REQUESTS.name));
            let (key, value) = active
                .next()
                .unwrap_or_else(|| panic!("the gauge was not recorded: {values:?}"));
            assert!(key.contains("POST"), "labelled by method: {key}");
            *value
        };
        metrics::with_local_recorder(&recorder, || {
            let request = Request::post("/").body(axum::body::Body::empty()).unwrap();
            let mut call = Box::pin(app.oneshot(request));
            let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
            assert!(call.as_mut().poll(&mut cx).is_pending());
            assert_eq!(value(&values), 1.0, "one request running");
            release.send(()).unwrap();
            assert!(call.as_mut().poll(&mut cx).is_ready());
            assert_eq!(value(&values), 0.0, "none once it answered");
        });
    }
}
