//! The inbound and outbound deadline layers.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::watch::{DeadlineWatch, Ticket, Watched};
use super::{inbound_headers, Deadline, DeadlineExceeded, Entered, RequestTimeout};
use crate::classify::GrpcCode;
use crate::clock;
use crate::grpc_refusal::GrpcRefusal;
use crate::replay::BoxError;
use crate::route::SelectedRoute;

/// Inbound: reads the caller's deadline from the request headers, runs the handler
/// with it as the task's [`Deadline::current`], and answers
/// `504 Gateway Timeout` when it passes, dropping the handler's future (a gRPC
/// call gets `DEADLINE_EXCEEDED`, see [`GrpcRefusal`]).
///
/// The deadline is the current one whenever the handler's future is polled, so
/// the handler and what it calls read it with [`Deadline::current`] (the
/// request carries no `Deadline` extension: one costs an allocation per
/// request).
///
/// Cheap by design: a request without a deadline costs one pass over its
/// headers (look-ups when it has many) and nothing else; one with a deadline
/// also costs a clock read, and arms one timer only if the handler is still
/// pending after its first poll.
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

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (timeout, grpc) = inbound_headers(request.headers());
        let timeout = match (timeout, self.max) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        DeadlineFuture {
            deadline: timeout.map(Deadline::after),
            grpc,
            timer: None,
            future: self.inner.call(request),
        }
    }
}

pin_project! {
    /// The future of a [`DeadlineService`] call: the handler's, cut short with
    /// 504 (gRPC: `DEADLINE_EXCEEDED`) when the caller's deadline passes.
    ///
    /// One future rather than `Timeout<TaskLocalFuture<..>>`: the handler's
    /// future is polled with the deadline current directly, and the timer is
    /// made only when the handler is still pending after its first poll, so a
    /// quick handler never touches the timer wheel.
    pub struct DeadlineFuture<F> {
        // `None`: the caller sent no deadline and there is no maximum.
        deadline: Option<Deadline>,
        grpc: bool,
        // Boxed so the future stays small while the timer is not needed (the
        // future is moved into the layers above before it is pinned).
        timer: Option<Pin<Box<Sleep>>>,
        #[pin]
        future: F,
    }
}

impl<F> std::fmt::Debug for DeadlineFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadlineFuture")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl<F, RB, E> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    RB: Default,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(deadline) = *this.deadline else {
            return this.future.poll(cx);
        };
        let future = this.future;
        let polled = {
            let _entered = Entered::enter(deadline);
            future.poll(cx)
        };
        if let Poll::Ready(result) = polled {
            return Poll::Ready(result);
        }
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.0)));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Ok(if *this.grpc {
            GrpcRefusal::new(
                GrpcCode::DeadlineExceeded,
                "deadline exceeded: the call's deadline passed before the server answered",
            )
            .into_response()
        } else {
            let mut response = Response::new(RB::default());
            *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
            response
        }))
    }
}

/// Outbound: bounds a call by the earliest of the service's timeout (or its
/// route's, from a [`SelectedRoute`] extension), the request's
/// [`RequestTimeout`], a [`Deadline`] extension and the task's current deadline
/// (see the module docs).
///
/// The layers below run with the chosen deadline as [`Deadline::current`] (a
/// per-task value like the inbound layer's, so the call costs no extension map);
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
            // One shared timer for the service's calls (and its clones').
            watch: self.timeout.map(DeadlineWatch::new),
        }
    }
}

/// The service [`OutboundDeadlineLayer`] makes.
#[derive(Debug, Clone)]
pub struct OutboundDeadline<S> {
    inner: S,
    /// The layer's timeout, and the shared timer watching the deadlines of
    /// calls bounded by it alone (see `watch.rs`).
    watch: Option<DeadlineWatch>,
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
        let timeout = request.extensions().get::<SelectedRoute>().map_or_else(
            || self.watch.as_ref().map(DeadlineWatch::timeout),
            |r| r.policy().timeout(),
        );
        let own = request
            .extensions()
            .get::<RequestTimeout>()
            .map(|t| t.0)
            .or(timeout);
        let inherited = Deadline::earliest(
            request.extensions().get::<Deadline>().copied(),
            Deadline::current(),
        );
        // One clock reading for the deadline and the check that it has not
        // passed; none when no deadline applies.
        let (now, deadline) = match (own, inherited) {
            (None, None) => {
                return OutboundDeadlineFuture {
                    state: DeadlineState::Unbounded {
                        inner: self.inner.call(request),
                    },
                }
            }
            (None, Some(inherited)) => (clock::now(), inherited),
            (Some(timeout), inherited) => {
                let now = clock::now();
                let own = Deadline(now + timeout);
                (now, inherited.map_or(own, |inherited| inherited.min(own)))
            }
        };
        if deadline.0 <= now {
            return OutboundDeadlineFuture {
                state: DeadlineState::Expired,
            };
        }
        // The wire headers are written where each attempt is sent, with the
        // time left then (see the layer's docs). The deadline is the current
        // one while the inner service builds its future and while it runs.
        let inner = {
            let _entered = Entered::enter(deadline);
            self.inner.call(request)
        };
        // Calls due their start plus the layer's own timeout share one timer;
        // any other deadline (a route's, a per-request one, an inherited one
        // that came first) gets a timer of its own if it needs one.
        let watch = self
            .watch
            .as_ref()
            .filter(|watch| deadline.0 == now + watch.timeout())
            .cloned();
        OutboundDeadlineFuture {
            state: DeadlineState::Bounded {
                inner,
                deadline,
                wait: Wait::Unarmed(watch),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of an [`OutboundDeadline`] call: a named type rather than a
    /// boxed one, so the layer costs no allocation per request.
    ///
    /// One future rather than `Timeout<TaskLocalFuture<..>>`: the inner future
    /// is polled with the deadline current directly, and a timer is armed only
    /// when the call is still pending after a poll (where `Timeout` makes one
    /// with the call). A call due its start plus the layer's timeout (the
    /// usual case) joins the service's shared timer, a queue entry rather
    /// than a timer-wheel entry of its own; any other deadline arms its own
    /// `Sleep`.
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
            #[pin] inner: F,
            deadline: Deadline,
            // Armed the first time the call is pending.
            wait: Wait,
        },
        // The deadline had passed before the call: nothing is sent.
        Expired,
    }
}

/// How a bounded call is woken at its deadline if nothing else wakes it.
enum Wait {
    /// Not pending yet; the shared timer to join, if the call may.
    Unarmed(Option<DeadlineWatch>),
    /// In the shared timer's queue.
    Watched(Ticket),
    /// A timer of its own: boxed, since few calls need one and the future
    /// is moved by every layer above before it is pinned.
    Own(Pin<Box<Sleep>>),
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
            DeadlineStateProj::Bounded {
                inner,
                deadline,
                wait,
            } => {
                let deadline = *deadline;
                let polled = {
                    let _entered = Entered::enter(deadline);
                    inner.poll(cx)
                };
                if let Poll::Ready(result) = &polled {
                    // The callee's own deadline (ours, passed on and rounded
                    // up) ran out as ours did: a 504 that arrives once ours
                    // has passed is our deadline error, whichever timer a
                    // busy runtime served first.
                    let callee_timed_out = matches!(result, Ok(response)
                        if response.status() == StatusCode::GATEWAY_TIMEOUT
                            && deadline.remaining().is_zero());
                    if callee_timed_out {
                        return Poll::Ready(Err(DeadlineExceeded.into()));
                    }
                    // Checked in place, returned as it came: the answer is
                    // not moved again on its way out.
                    return polled.map_err(Into::into);
                }
                // Pending: a timer wakes the task at the deadline even if the
                // inner future never does.
                let watched = match wait {
                    Wait::Unarmed(watch) => match watch.take() {
                        Some(watch) => watch.watch(deadline, cx.waker()).map(Wait::Watched),
                        None => None,
                    },
                    Wait::Watched(ticket) => match ticket.refresh(cx.waker()) {
                        Watched::Yes => return Poll::Pending,
                        Watched::Expired => return Poll::Ready(Err(DeadlineExceeded.into())),
                        // Its runtime is gone: a timer of its own below.
                        Watched::Orphaned => None,
                    },
                    Wait::Own(timer) => {
                        ready!(timer.as_mut().poll(cx));
                        return Poll::Ready(Err(DeadlineExceeded.into()));
                    }
                };
                if let Some(watched) = watched {
                    *wait = watched;
                    return Poll::Pending;
                }
                let mut timer = Box::pin(tokio::time::sleep_until(deadline.0));
                let expired = timer.as_mut().poll(cx).is_ready();
                *wait = Wait::Own(timer);
                if expired {
                    return Poll::Ready(Err(DeadlineExceeded.into()));
                }
                Poll::Pending
            }
        }
    }
}
