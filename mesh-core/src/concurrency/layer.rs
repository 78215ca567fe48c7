//! The inbound concurrency limit as a tower layer: 503 (a gRPC call:
//! `UNAVAILABLE`) without calling the handler when the limit is reached.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_util::future::{Either, Ready};
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;

use super::{ConcurrencyLimit, ConcurrencyPermit};
use crate::classify::{grpc_status, is_grpc, GrpcCode};
use crate::grpc_refusal::GrpcRefusal;
use crate::metric_names::{label, CONCURRENCY_LIMIT, SHED};

/// Sheds requests beyond the limit with `503 Service Unavailable` (which a mesh
/// client retries on another endpoint; a gRPC call gets `UNAVAILABLE`, which mesh
/// and gRPC clients retry the same way, see [`GrpcRefusal`]) and feeds each handled request's latency to
/// the limit. Every clone shares the limit, so it covers the whole server.
#[derive(Clone, Debug)]
pub struct ConcurrencyLimitLayer {
    limit: Arc<ConcurrencyLimit>,
}

impl ConcurrencyLimitLayer {
    /// A layer over the shared `limit`.
    pub fn new(limit: Arc<ConcurrencyLimit>) -> Self {
        ConcurrencyLimitLayer { limit }
    }
}

impl<S> tower::Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimitService {
            inner,
            limit: self.limit.clone(),
        }
    }
}

/// The service [`ConcurrencyLimitLayer`] builds.
#[derive(Clone)]
pub struct ConcurrencyLimitService<S> {
    inner: S,
    limit: Arc<ConcurrencyLimit>,
}

impl<S> fmt::Debug for ConcurrencyLimitService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimitService")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl<S, B, RB> tower::Service<Request<B>> for ConcurrencyLimitService<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    RB: Default,
{
    type Response = Response<RB>;
    type Error = S::Error;
    /// The handler's future (no box per request), or the ready refusal.
    type Future = Either<Admitted<S::Future>, Ready<Result<Response<RB>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match self.limit.try_acquire() {
            Ok(permit) => Either::Left(Admitted {
                future: self.inner.call(request),
                permit: Some(permit),
                limit: self.limit.clone(),
            }),
            Err(_) => {
                metrics::counter!(SHED.name, label::SOURCE => "inbound").increment(1);
                let response = if is_grpc(request.headers()) {
                    // No pushback: the caller should retry elsewhere at once.
                    GrpcRefusal::new(
                        GrpcCode::Unavailable,
                        "overloaded: the server's concurrency limit is reached, try another endpoint",
                    )
                    .into_response()
                } else {
                    let mut response = Response::new(RB::default());
                    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    response
                };
                Either::Right(futures_util::future::ready(Ok(response)))
            }
        }
    }
}

pin_project! {
    /// A request the limit admitted: the handler's future, whose outcome and
    /// latency are fed to the limit when it completes. Dropped early, it frees
    /// its place without a sample.
    pub struct Admitted<F> {
        #[pin]
        future: F,
        permit: Option<ConcurrencyPermit>,
        limit: Arc<ConcurrencyLimit>,
    }
}

impl<F> fmt::Debug for Admitted<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admitted").finish_non_exhaustive()
    }
}

impl<F, RB, E> Future for Admitted<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.future.poll(cx));
        if let Some(permit) = this.permit.take() {
            let dropped = match &result {
                Ok(response) => overloaded(response),
                Err(_) => true,
            };
            permit.record(dropped);
            metrics::gauge!(CONCURRENCY_LIMIT.name, label::SOURCE => "inbound")
                .set(this.limit.limit() as f64);
        }
        Poll::Ready(result)
    }
}

/// Whether the handler answered "overloaded": 503 or 429, or (a trailers-only
/// gRPC answer) UNAVAILABLE or RESOURCE_EXHAUSTED. The limit backs off on these.
fn overloaded<B>(response: &Response<B>) -> bool {
    matches!(
        response.status(),
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
    ) || grpc_status(response.headers()).is_some_and(|code| {
        code == GrpcCode::Unavailable as u16 || code == GrpcCode::ResourceExhausted as u16
    })
}
