//! The inbound concurrency limit as a tower layer: 503 (a gRPC call:
//! `UNAVAILABLE`) without calling the handler when the limit is reached.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};

use super::ConcurrencyLimit;
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
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match self.limit.try_acquire() {
            Ok(permit) => {
                let future = self.inner.call(request);
                let limit = self.limit.clone();
                Box::pin(async move {
                    let result = future.await;
                    let dropped = match &result {
                        Ok(response) => overloaded(response),
                        Err(_) => true,
                    };
                    permit.record(dropped);
                    metrics::gauge!(CONCURRENCY_LIMIT.name, label::SOURCE => "inbound")
                        .set(limit.limit() as f64);
                    result
                })
            }
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
                Box::pin(std::future::ready(Ok(response)))
            }
        }
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
