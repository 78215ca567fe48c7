//! The outbound rate limit as a tower layer: over the limit, the request fails
//! with [`RateLimited`](super::RateLimited) before anything is sent.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::BoxError;

use super::TokenBucket;
use crate::metric_names::{label, RATE_LIMITED};

/// Limits the requests one client sends to one service, across every clone of
/// the client.
#[derive(Debug, Clone)]
pub struct OutboundRateLimitLayer {
    service: Arc<str>,
    bucket: Arc<TokenBucket>,
}

impl OutboundRateLimitLayer {
    /// A layer over the shared `bucket`; `service` labels the metric.
    pub fn new(service: impl Into<Arc<str>>, bucket: Arc<TokenBucket>) -> Self {
        OutboundRateLimitLayer {
            service: service.into(),
            bucket,
        }
    }
}

impl<S> tower::Layer<S> for OutboundRateLimitLayer {
    type Service = OutboundRateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OutboundRateLimit {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`OutboundRateLimitLayer`] builds.
#[derive(Debug, Clone)]
pub struct OutboundRateLimit<S> {
    inner: S,
    layer: OutboundRateLimitLayer,
}

impl<S, R> tower::Service<R> for OutboundRateLimit<S>
where
    S: tower::Service<R>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        match self.layer.bucket.try_acquire() {
            Ok(()) => {
                let future = self.inner.call(request);
                Box::pin(async move { future.await.map_err(Into::into) })
            }
            Err(limited) => {
                metrics::counter!(
                    RATE_LIMITED.name,
                    label::SOURCE => "outbound",
                    label::SERVICE => self.layer.service.to_string()
                )
                .increment(1);
                let error: Result<S::Response, BoxError> = Err(Box::new(limited) as BoxError);
                Box::pin(std::future::ready(error))
            }
        }
    }
}
