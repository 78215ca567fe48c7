//! The breaker as a tower layer: asks for a permit before each call, reports the
//! classified outcome when the call finishes.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::BoxError;

use super::{CircuitBreaker, Permit};

/// Wraps a service in a shared [`CircuitBreaker`]. `is_failure` says which outcomes
/// count as failures (the client passes the one classifier's verdict).
pub struct BreakerLayer<F> {
    breaker: Arc<CircuitBreaker>,
    is_failure: F,
}

impl<F: Clone> BreakerLayer<F> {
    /// A layer over `breaker`, judging outcomes with `is_failure`.
    pub fn new(breaker: Arc<CircuitBreaker>, is_failure: F) -> Self {
        BreakerLayer {
            breaker,
            is_failure,
        }
    }
}

impl<F: Clone> Clone for BreakerLayer<F> {
    fn clone(&self) -> Self {
        BreakerLayer {
            breaker: self.breaker.clone(),
            is_failure: self.is_failure.clone(),
        }
    }
}

impl<F> fmt::Debug for BreakerLayer<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerLayer")
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<S, F: Clone> tower::Layer<S> for BreakerLayer<F> {
    type Service = BreakerService<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        BreakerService {
            inner,
            breaker: self.breaker.clone(),
            is_failure: self.is_failure.clone(),
        }
    }
}

/// The service [`BreakerLayer`] builds.
#[derive(Clone)]
pub struct BreakerService<S, F> {
    inner: S,
    breaker: Arc<CircuitBreaker>,
    is_failure: F,
}

impl<S, F> fmt::Debug for BreakerService<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerService")
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<S, F, R> tower::Service<R> for BreakerService<S, F>
where
    S: tower::Service<R>,
    S::Error: Into<BoxError>,
    F: Fn(&Result<S::Response, BoxError>) -> bool + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BreakerFuture<S::Future, F>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        match self.breaker.try_acquire() {
            Ok(permit) => BreakerFuture {
                state: State::Called {
                    future: Box::pin(self.inner.call(request)),
                    permit: Some(permit),
                    is_failure: self.is_failure.clone(),
                },
            },
            Err(open) => BreakerFuture {
                state: State::Refused(Some(open.into())),
            },
        }
    }
}

/// Response future of [`BreakerService`].
pub struct BreakerFuture<Fut, F> {
    state: State<Fut, F>,
}

enum State<Fut, F> {
    Called {
        future: Pin<Box<Fut>>,
        permit: Option<Permit>,
        is_failure: F,
    },
    Refused(Option<BoxError>),
}

impl<Fut, F> fmt::Debug for BreakerFuture<Fut, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerFuture").finish_non_exhaustive()
    }
}

// The inner future is boxed, so nothing here is structurally pinned.
impl<Fut, F> Unpin for BreakerFuture<Fut, F> {}

impl<Fut, F, T, E> Future for BreakerFuture<Fut, F>
where
    Fut: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    F: Fn(&Result<T, BoxError>) -> bool,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.state {
            State::Refused(error) => Poll::Ready(Err(error
                .take()
                .expect("BreakerFuture polled after completion"))),
            State::Called {
                future,
                permit,
                is_failure,
            } => {
                let result = std::task::ready!(future.as_mut().poll(cx)).map_err(Into::into);
                if let Some(permit) = permit.take() {
                    permit.record(is_failure(&result));
                }
                Poll::Ready(result)
            }
        }
    }
}
