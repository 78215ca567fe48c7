//! Inbound telemetry for any axum router (or any `tower::Service` of HTTP
//! requests): `http.server.request.duration`, `http.server.active_requests`, a
//! server span that continues the caller's trace, and the access log line.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::{ConnectInfo, MatchedPath};
use http::{Request, Response};
use mesh_core::config::{AccessLog, MeshConfig};
use mesh_core::metric_names::{label, HTTP_SERVER_ACTIVE_REQUESTS, HTTP_SERVER_REQUEST_DURATION};
use mesh_core::telemetry::{method_label, set_parent_from_headers, status_label, trace_id};
use metrics::{Label, SharedString};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tracing::field::Empty;
use tracing::instrument::{Instrument, Instrumented};

use super::access_log::{AccessLogLine, AccessLogSink};

/// The `http.route` value when the layer sits outside the router, or the request
/// matched no route: one fixed word, so unmatched paths cannot mint series.
pub const UNMATCHED_ROUTE: &str = "(unmatched)";

/// Inbound metrics, spans and access log for an axum router.
///
/// Put it inside the router with `Router::layer` so `http.route` is the matched
/// route template (`/users/{id}`); outside the router every request gets
/// [`UNMATCHED_ROUTE`], never the raw path.
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

    /// Labels requests `url.scheme="https"` (behind the mesh's TLS listener).
    pub fn https(mut self) -> Self {
        self.scheme = Scheme::Https;
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
        }
    }
}

/// The service [`ServerTelemetryLayer`] makes.
#[derive(Clone, Debug)]
pub struct ServerTelemetry<S> {
    inner: S,
    access_log: Option<AccessLogSink>,
    scheme: Scheme,
}

/// Decrements the active-requests gauge however the request ends.
struct ActiveGuard(metrics::Gauge);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// What the access log needs that the response does not carry.
struct Pending {
    sink: AccessLogSink,
    path: String,
    peer: Option<SocketAddr>,
}

impl<S, B, RB> tower::Service<Request<B>> for ServerTelemetry<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ServerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let method = method_label(request.method());
        let route: SharedString = match request.extensions().get::<MatchedPath>() {
            Some(matched) => SharedString::from_owned(matched.as_str().to_string()),
            None => SharedString::const_str(UNMATCHED_ROUTE),
        };
        let scheme = self.scheme.as_str();
        let span = tracing::info_span!(
            "http.server",
            otel.name = %format_args!("{method} {route}"),
            otel.kind = "server",
            otel.status_code = Empty,
            http.request.method = method,
            http.route = &*route,
            url.scheme = scheme,
            http.response.status_code = Empty,
            error.type = Empty,
        );
        set_parent_from_headers(&span, request.headers());
        let active = metrics::gauge!(
            HTTP_SERVER_ACTIVE_REQUESTS.name,
            label::HTTP_REQUEST_METHOD => method,
            label::URL_SCHEME => scheme,
        );
        active.increment(1.0);
        let pending = self.access_log.clone().map(|sink| Pending {
            sink,
            path: request.uri().path().to_string(),
            peer: request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        });
        let future = {
            // Entered while the app builds its future, so its spans are children.
            let _entered = span.enter();
            self.inner.call(request)
        };
        ServerFuture {
            inner: future.instrument(span),
            start: Instant::now(),
            method,
            route,
            scheme,
            pending,
            _active: ActiveGuard(active),
        }
    }
}

pin_project! {
    /// The future of a [`ServerTelemetry`] call.
    pub struct ServerFuture<F> {
        #[pin]
        inner: Instrumented<F>,
        start: Instant,
        method: &'static str,
        route: SharedString,
        scheme: &'static str,
        pending: Option<Pending>,
        _active: ActiveGuard,
    }
}

impl<F> std::fmt::Debug for ServerFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerFuture").finish_non_exhaustive()
    }
}

impl<F, RB, E> Future for ServerFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let result = std::task::ready!(this.inner.as_mut().poll(cx));
        let elapsed = this.start.elapsed();
        let span = this.inner.span();
        let mut labels = vec![
            Label::from_static_parts(label::HTTP_REQUEST_METHOD, this.method),
            Label::new(label::HTTP_ROUTE, this.route.clone()),
            Label::from_static_parts(label::URL_SCHEME, this.scheme),
        ];
        let status = match &result {
            Ok(response) => {
                let status = response.status();
                span.record("http.response.status_code", status.as_u16());
                labels.push(Label::new(
                    label::HTTP_RESPONSE_STATUS_CODE,
                    status_label(status),
                ));
                // For a server only 5xx is its own failure; 4xx is the caller's.
                if status.is_server_error() {
                    span.record("error.type", status.as_str());
                    span.record("otel.status_code", "ERROR");
                    labels.push(Label::new(label::ERROR_TYPE, status_label(status)));
                }
                Some(status.as_u16())
            }
            Err(_) => {
                span.record("error.type", "_OTHER");
                span.record("otel.status_code", "ERROR");
                labels.push(Label::from_static_parts(label::ERROR_TYPE, "_OTHER"));
                None
            }
        };
        metrics::histogram!(HTTP_SERVER_REQUEST_DURATION.name, labels)
            .record(elapsed.as_secs_f64());
        if let Some(pending) = this.pending.take() {
            pending.sink.write(&AccessLogLine {
                method: this.method,
                route: this.route,
                path: &pending.path,
                status,
                duration: elapsed,
                peer: pending.peer,
                trace_id: trace_id(span).as_deref(),
            });
        }
        Poll::Ready(result)
    }
}
