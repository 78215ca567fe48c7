//! The inbound rate limit as a tower layer: 429 (a gRPC call:
//! `RESOURCE_EXHAUSTED`) without calling the handler.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{Either, Ready};
use http::{HeaderValue, Request, Response, StatusCode};

use super::{KeyedRateLimit, RateLimited, TokenBucket};
use crate::classify::{is_grpc, GrpcCode};
use crate::grpc_refusal::GrpcRefusal;
use crate::metric_names::{label, RATE_LIMITED};

type Check = dyn Fn(&http::Extensions) -> Result<(), RateLimited> + Send + Sync;

/// Limits the requests a server (or a router) handles: over the limit it answers
/// `429 Too Many Requests` with `Retry-After`, and the handler never sees the
/// request. A gRPC call gets `RESOURCE_EXHAUSTED` with `grpc-retry-pushback-ms`
/// instead ([`GrpcRefusal`]). Every clone shares the same bucket(s).
#[derive(Clone)]
pub struct RateLimitLayer {
    check: Arc<Check>,
}

/// The per-key form of [`RateLimitLayer`] is the same type; this alias names it
/// where a reader expects one.
pub type KeyedRateLimitLayer = RateLimitLayer;

impl RateLimitLayer {
    /// One limit for every request.
    pub fn new(bucket: Arc<TokenBucket>) -> Self {
        RateLimitLayer {
            check: Arc::new(move |_| bucket.try_acquire()),
        }
    }

    /// One limit per key that `key` reads from the request's extensions (such as
    /// the peer's SPIFFE ID the inbound server inserts); requests without a key
    /// are not limited by this layer.
    pub fn per_key<K, F>(limit: Arc<KeyedRateLimit<K>>, key: F) -> Self
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        F: Fn(&http::Extensions) -> Option<K> + Send + Sync + 'static,
    {
        RateLimitLayer {
            check: Arc::new(move |extensions| match key(extensions) {
                Some(k) => limit.try_acquire(&k),
                None => Ok(()),
            }),
        }
    }
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer").finish_non_exhaustive()
    }
}

impl<S> tower::Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            check: self.check.clone(),
        }
    }
}

/// The service [`RateLimitLayer`] builds.
#[derive(Clone)]
pub struct RateLimitService<S> {
    inner: S,
    check: Arc<Check>,
}

impl<S> fmt::Debug for RateLimitService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitService").finish_non_exhaustive()
    }
}

impl<S, B, RB> tower::Service<Request<B>> for RateLimitService<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    RB: Default,
{
    type Response = Response<RB>;
    type Error = S::Error;
    /// The handler's future as it is (no box per request), or the ready refusal.
    type Future = Either<S::Future, Ready<Result<Response<RB>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match (self.check)(request.extensions()) {
            Ok(()) => Either::Left(self.inner.call(request)),
            Err(limited) => {
                metrics::counter!(RATE_LIMITED.name, label::SOURCE => "inbound").increment(1);
                let response = if is_grpc(request.headers()) {
                    refuse_grpc(&limited)
                } else {
                    refuse_http(&limited)
                };
                Either::Right(futures_util::future::ready(Ok(response)))
            }
        }
    }
}

fn refuse_http<RB: Default>(limited: &RateLimited) -> Response<RB> {
    let mut response = Response::new(RB::default());
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    // Whole seconds, rounded up (RFC 9110).
    let seconds = limited.retry_after().as_secs_f64().ceil().max(1.0) as u64;
    response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

fn refuse_grpc<RB: Default>(limited: &RateLimited) -> Response<RB> {
    // Whole milliseconds, rounded up, so the client never comes back too early.
    let wait =
        Duration::from_millis(limited.retry_after().as_micros().div_ceil(1000).max(1) as u64);
    GrpcRefusal::new(
        GrpcCode::ResourceExhausted,
        "rate limited: the server's request rate limit is reached, retry after the pushback",
    )
    .with_pushback(wait)
    .into_response()
}
