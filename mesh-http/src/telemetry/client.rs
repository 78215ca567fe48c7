//! Outbound telemetry: the logical call (metrics and a client span at the top of
//! the stack) and each attempt (a client span just above the endpoint dispatch,
//! which carries the trace context to the server).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use mesh_core::extensions::{ServedBy, TriedEndpoints};
use mesh_core::metric_names::{
    label, ATTEMPTS, ATTEMPT_DURATION, HTTP_CLIENT_ACTIVE_REQUESTS, HTTP_CLIENT_REQUEST_DURATION,
};
use mesh_core::telemetry::{inject, method_label, status_label};
use metrics::{Label, SharedString};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tracing::field::Empty;
use tracing::instrument::{Instrument, Instrumented};

use crate::error::{BoxError, Error};

/// Records `http.client.request.duration` and `http.client.active_requests` for
/// each logical call to one service, inside a client span covering every attempt.
///
/// Labels stay bounded: the method (unknown ones become `_OTHER`), the logical
/// service name as `server.address`, the port, the status code and a fixed
/// `error.type` word; never the path.
#[derive(Debug, Clone)]
pub struct ClientTelemetryLayer {
    service: SharedString,
}

impl ClientTelemetryLayer {
    /// Telemetry for calls to the logical service `service`.
    pub fn new(service: &str) -> Self {
        ClientTelemetryLayer {
            service: SharedString::from_owned(service.to_string()),
        }
    }
}

impl<S> tower::Layer<S> for ClientTelemetryLayer {
    type Service = ClientTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientTelemetry {
            inner,
            service: self.service.clone(),
        }
    }
}

/// The service [`ClientTelemetryLayer`] makes.
#[derive(Debug, Clone)]
pub struct ClientTelemetry<S> {
    inner: S,
    service: SharedString,
}

fn port_label(port: u16) -> SharedString {
    match port {
        80 => SharedString::const_str("80"),
        443 => SharedString::const_str("443"),
        other => SharedString::from_owned(other.to_string()),
    }
}

/// Decrements the active-requests gauge however the call ends (dropped included).
struct ActiveGuard(metrics::Gauge);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

impl<S, B, RB> tower::Service<Request<B>> for ClientTelemetry<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = CallFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let method = method_label(request.method());
        let port = request.uri().port_u16().unwrap_or(
            if request.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
                443
            } else {
                80
            },
        );
        let span = tracing::info_span!(
            "http.client.call",
            otel.name = method,
            otel.kind = "client",
            otel.status_code = Empty,
            http.request.method = method,
            server.address = &*self.service,
            server.port = port,
            http.response.status_code = Empty,
            error.type = Empty,
        );
        let labels = vec![
            Label::from_static_parts(label::HTTP_REQUEST_METHOD, method),
            Label::new(label::SERVER_ADDRESS, self.service.clone()),
            Label::new(label::SERVER_PORT, port_label(port)),
        ];
        let active = metrics::gauge!(HTTP_CLIENT_ACTIVE_REQUESTS.name, labels.clone());
        active.increment(1.0);
        let future = {
            // Entered while the inner stack builds its future, so the attempt
            // layer below sees this span as its parent.
            let _entered = span.enter();
            self.inner.call(request)
        };
        CallFuture {
            inner: future.instrument(span),
            start: Instant::now(),
            labels,
            _active: ActiveGuard(active),
        }
    }
}

pin_project! {
    /// The future of a [`ClientTelemetry`] call.
    pub struct CallFuture<F> {
        #[pin]
        inner: Instrumented<F>,
        start: Instant,
        labels: Vec<Label>,
        _active: ActiveGuard,
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
{
    type Output = Result<Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let result = match this.inner.as_mut().poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(result) => result.map_err(Into::into),
        };
        let span = this.inner.span();
        let mut labels = std::mem::take(this.labels);
        match &result {
            Ok(response) => {
                let status = response.status();
                span.record("http.response.status_code", status.as_u16());
                labels.push(Label::new(
                    label::HTTP_RESPONSE_STATUS_CODE,
                    status_label(status),
                ));
                // For a client every 4xx and 5xx is an error of the call.
                if status.is_client_error() || status.is_server_error() {
                    span.record("error.type", status.as_str());
                    span.record("otel.status_code", "ERROR");
                    labels.push(Label::new(label::ERROR_TYPE, status_label(status)));
                }
            }
            Err(error) => {
                let kind = error_type(error);
                span.record("error.type", kind);
                span.record("otel.status_code", "ERROR");
                labels.push(Label::from_static_parts(label::ERROR_TYPE, kind));
            }
        }
        metrics::histogram!(HTTP_CLIENT_REQUEST_DURATION.name, labels)
            .record(this.start.elapsed().as_secs_f64());
        Poll::Ready(result)
    }
}

/// One client span per attempt, just above the endpoint dispatch, and the trace
/// context (`traceparent`, baggage, or what `OTEL_PROPAGATORS` chose) written
/// into the request so the server's span is this attempt's child. Counts
/// `mesh.client.attempts` by outcome and records `mesh.client.attempt.duration`
/// per endpoint that answered.
#[derive(Debug, Clone)]
pub struct AttemptTelemetryLayer {
    service: SharedString,
}

impl AttemptTelemetryLayer {
    /// Attempt telemetry for the logical service `service`.
    pub fn new(service: &str) -> Self {
        AttemptTelemetryLayer {
            service: SharedString::from_owned(service.to_string()),
        }
    }
}

impl<S> tower::Layer<S> for AttemptTelemetryLayer {
    type Service = AttemptTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AttemptTelemetry {
            inner,
            service: self.service.clone(),
        }
    }
}

/// The service [`AttemptTelemetryLayer`] makes.
#[derive(Debug, Clone)]
pub struct AttemptTelemetry<S> {
    inner: S,
    service: SharedString,
}

impl<S, B, RB> tower::Service<Request<B>> for AttemptTelemetry<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = AttemptFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let method = method_label(request.method());
        // Endpoints earlier attempts used: this attempt's resend count.
        let resends = request
            .extensions()
            .get::<TriedEndpoints>()
            .map_or(0, |t| t.0.len());
        let span = tracing::info_span!(
            "http.client.attempt",
            otel.name = method,
            otel.kind = "client",
            http.request.method = method,
            http.request.resend_count = resends,
            network.peer.address = Empty,
            network.peer.port = Empty,
            http.response.status_code = Empty,
        );
        inject(&span, request.headers_mut());
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        AttemptFuture {
            inner: future.instrument(span),
            start: Instant::now(),
            service: self.service.clone(),
        }
    }
}

pin_project! {
    /// The future of an [`AttemptTelemetry`] call.
    pub struct AttemptFuture<F> {
        #[pin]
        inner: Instrumented<F>,
        start: Instant,
        service: SharedString,
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
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let result = std::task::ready!(this.inner.as_mut().poll(cx));
        let outcome = match &result {
            Ok(response) => {
                let span = this.inner.span();
                span.record("http.response.status_code", response.status().as_u16());
                if let Some(ServedBy(addr)) = response.extensions().get::<ServedBy>() {
                    span.record("network.peer.address", tracing::field::display(addr.ip()));
                    span.record("network.peer.port", addr.port());
                    metrics::histogram!(
                        ATTEMPT_DURATION.name,
                        label::SERVICE => this.service.clone(),
                        label::ENDPOINT => addr.to_string(),
                    )
                    .record(this.start.elapsed().as_secs_f64());
                }
                if response.status().is_server_error() {
                    "error"
                } else {
                    "ok"
                }
            }
            Err(_) => "error",
        };
        metrics::counter!(
            ATTEMPTS.name,
            label::SERVICE => this.service.clone(),
            label::OUTCOME => outcome,
        )
        .increment(1);
        Poll::Ready(result)
    }
}
