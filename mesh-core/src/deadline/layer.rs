//! The inbound and outbound deadline layers.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tokio::time::Timeout;

use super::{timeout_from_headers, Deadline, DeadlineExceeded, RequestTimeout, CURRENT};
use crate::classify::{is_grpc, GrpcCode};
use crate::grpc_refusal::GrpcRefusal;
use crate::replay::BoxError;
use crate::route::SelectedRoute;

/// Inbound: reads the caller's deadline from the request headers, runs the handler
/// with it as the task's [`Deadline::current`] (and as a request extension), and
/// answers `504 Gateway Timeout` when it passes, dropping the handler's future
/// (a gRPC call gets `DEADLINE_EXCEEDED`, see [`GrpcRefusal`]).
///
/// Works with any `tower::Service` over `http::Request`, such as an axum `Router`:
/// `router.layer(DeadlineLayer::new())`.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer {
    max: Option<Duration>,
}

impl DeadlineLayer {
    /// A layer honouring whatever deadline the caller sends.
    pub fn new() -> Self {
        DeadlineLayer { max: None }
    }

    /// Also bounds every request by `max`, whatever the caller sent (or when it
    /// sent none).
    pub fn with_max(max: Duration) -> Self {
        DeadlineLayer { max: Some(max) }
    }
}

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService {
            inner,
            max: self.max,
        }
    }
}

/// The service [`DeadlineLayer`] makes.
#[derive(Debug, Clone)]
pub struct DeadlineService<S> {
    inner: S,
    max: Option<Duration>,
}

impl<S, B, RB> tower::Service<Request<B>> for DeadlineService<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    RB: Default,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let timeout = match (timeout_from_headers(request.headers()), self.max) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Some(timeout) = timeout else {
            return DeadlineFuture {
                kind: Kind::Unbounded {
                    future: self.inner.call(request),
                },
            };
        };
        let deadline = Deadline::after(timeout);
        let grpc = is_grpc(request.headers());
        request.extensions_mut().insert(deadline);
        let handler = CURRENT.scope(deadline, self.inner.call(request));
        DeadlineFuture {
            kind: Kind::Bounded {
                // The timer registers only if the handler is still pending when
                // first polled, so a quick handler never touches the timer wheel.
                future: tokio::time::timeout_at(deadline.0, handler),
                grpc,
            },
        }
    }
}

pin_project! {
    /// The future of a [`DeadlineService`] call: the handler's, cut short with
    /// 504 (gRPC: `DEADLINE_EXCEEDED`) when the caller's deadline passes.
    pub struct DeadlineFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProjection]
    enum Kind<F> {
        // The caller sent no deadline and there is no maximum.
        Unbounded { #[pin] future: F },
        Bounded {
            #[pin]
            future: Timeout<TaskLocalFuture<Deadline, F>>,
            grpc: bool,
        },
    }
}

impl<F> std::fmt::Debug for DeadlineFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadlineFuture").finish_non_exhaustive()
    }
}

impl<F, RB, E> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    RB: Default,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProjection::Unbounded { future } => future.poll(cx),
            KindProjection::Bounded { future, grpc } => match ready!(future.poll(cx)) {
                Ok(result) => Poll::Ready(result),
                Err(_elapsed) if *grpc => Poll::Ready(Ok(GrpcRefusal::new(
                    GrpcCode::DeadlineExceeded,
                    "deadline exceeded: the call's deadline passed before the server answered",
                )
                .into_response())),
                Err(_elapsed) => {
                    let mut response = Response::new(RB::default());
                    *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
                    Poll::Ready(Ok(response))
                }
            },
        }
    }
}

/// Outbound: bounds a call by the earliest of the service's timeout (or its
/// route's, from a [`SelectedRoute`] extension), the request's
/// [`RequestTimeout`], a [`Deadline`] extension and the task's current deadline
/// (see the module docs).
///
/// The layers below run with the chosen deadline as [`Deadline::current`] (a
/// task-local, like the inbound layer's, so the call costs no extension map);
/// the layer does not write the wire headers itself, because retries below it
/// must each carry the time left when they are sent: whatever sends the request
/// reads [`Deadline::for_request`] and calls
/// [`write_headers`](super::write_headers) (the mesh client's endpoint dispatch
/// does).
#[derive(Debug, Clone, Copy)]
pub struct OutboundDeadlineLayer {
    timeout: Option<Duration>,
}

impl OutboundDeadlineLayer {
    /// Calls take at most `timeout` (`None`: only inherited or per-request
    /// deadlines apply).
    pub fn new(timeout: Option<Duration>) -> Self {
        OutboundDeadlineLayer { timeout }
    }
}

impl<S> tower::Layer<S> for OutboundDeadlineLayer {
    type Service = OutboundDeadline<S>;
    fn layer(&self, inner: S) -> Self::Service {
        OutboundDeadline {
            inner,
            timeout: self.timeout,
        }
    }
}

/// The service [`OutboundDeadlineLayer`] makes.
#[derive(Debug, Clone)]
pub struct OutboundDeadline<S> {
    inner: S,
    timeout: Option<Duration>,
}

impl<S, B, RB> tower::Service<Request<B>> for OutboundDeadline<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = OutboundDeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The route's timeout replaces the service's (a route may turn it off).
        let timeout = request
            .extensions()
            .get::<SelectedRoute>()
            .map_or(self.timeout, |r| r.policy().timeout());
        let own = request
            .extensions()
            .get::<RequestTimeout>()
            .map(|t| t.0)
            .or(timeout)
            .map(Deadline::after);
        let inherited = Deadline::earliest(
            request.extensions().get::<Deadline>().copied(),
            Deadline::current(),
        );
        let Some(deadline) = Deadline::earliest(own, inherited) else {
            return OutboundDeadlineFuture {
                state: DeadlineState::Unbounded {
                    inner: self.inner.call(request),
                },
            };
        };
        if deadline.remaining().is_zero() {
            return OutboundDeadlineFuture {
                state: DeadlineState::Expired,
            };
        }
        // The wire headers are written where each attempt is sent, with the
        // time left then (see the layer's docs). The deadline is the current
        // one while the inner service builds its future and while it runs.
        let inner = CURRENT.sync_scope(deadline, || self.inner.call(request));
        OutboundDeadlineFuture {
            state: DeadlineState::Bounded {
                inner: tokio::time::timeout_at(deadline.0, CURRENT.scope(deadline, inner)),
                deadline,
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of an [`OutboundDeadline`] call: a named type rather than a
    /// boxed one, so the layer costs no allocation per request.
    pub struct OutboundDeadlineFuture<F> {
        #[pin]
        state: DeadlineState<F>,
    }
}

pin_project_lite::pin_project! {
    #[project = DeadlineStateProj]
    enum DeadlineState<F> {
        // No deadline applies.
        Unbounded { #[pin] inner: F },
        // The call, run with the deadline as the current one and cut off at it.
        Bounded {
            #[pin] inner: tokio::time::Timeout<TaskLocalFuture<Deadline, F>>,
            deadline: Deadline,
        },
        // The deadline had passed before the call: nothing is sent.
        Expired,
    }
}

impl<F> std::fmt::Debug for OutboundDeadlineFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundDeadlineFuture")
            .finish_non_exhaustive()
    }
}

impl<F, RB, E> Future for OutboundDeadlineFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            DeadlineStateProj::Unbounded { inner } => inner.poll(cx).map_err(Into::into),
            DeadlineStateProj::Expired => Poll::Ready(Err(DeadlineExceeded.into())),
            DeadlineStateProj::Bounded { inner, deadline } => {
                Poll::Ready(match std::task::ready!(inner.poll(cx)) {
                    // The callee's own deadline (ours, passed on and rounded up)
                    // ran out as ours did: a 504 that arrives once ours has passed
                    // is our deadline error, whichever timer a busy runtime served
                    // first.
                    Ok(Ok(response))
                        if response.status() == StatusCode::GATEWAY_TIMEOUT
                            && deadline.remaining().is_zero() =>
                    {
                        Err(DeadlineExceeded.into())
                    }
                    Ok(result) => result.map_err(Into::into),
                    Err(_) => Err(DeadlineExceeded.into()),
                })
            }
        }
    }
}
