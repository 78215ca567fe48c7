//! The outbound concurrency limit as a tower layer: beyond the limit, a request
//! fails at once with [`Overloaded`](super::Overloaded) instead of queueing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::BoxError;

use super::ConcurrencyLimit;
use crate::metric_names::{label, SHED};

/// Limits the requests one client has in flight to one service, across every
/// clone of the client. `is_dropped` says which outcomes signal overload.
#[derive(Clone)]
pub struct OutboundConcurrencyLayer<F> {
    service: Arc<str>,
    limit: Arc<ConcurrencyLimit>,
    is_dropped: F,
}

impl<F> std::fmt::Debug for OutboundConcurrencyLayer<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundConcurrencyLayer")
            .field("service", &self.service)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl<F> OutboundConcurrencyLayer<F> {
    /// A layer over the shared `limit`; `service` labels the metric.
    pub fn new(service: impl Into<Arc<str>>, limit: Arc<ConcurrencyLimit>, is_dropped: F) -> Self {
        OutboundConcurrencyLayer {
            service: service.into(),
            limit,
            is_dropped,
        }
    }
}

impl<S, F: Clone> tower::Layer<S> for OutboundConcurrencyLayer<F> {
    type Service = OutboundConcurrency<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        OutboundConcurrency {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`OutboundConcurrencyLayer`] builds.
#[derive(Clone)]
pub struct OutboundConcurrency<S, F> {
    inner: S,
    layer: OutboundConcurrencyLayer<F>,
}

impl<S, F> std::fmt::Debug for OutboundConcurrency<S, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.layer.fmt(f)
    }
}

impl<S, F, R> tower::Service<R> for OutboundConcurrency<S, F>
where
    S: tower::Service<R>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    F: Fn(&Result<S::Response, BoxError>) -> bool + Clone + Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        match self.layer.limit.try_acquire() {
            Ok(permit) => {
                let future = self.inner.call(request);
                let is_dropped = self.layer.is_dropped.clone();
                Box::pin(async move {
                    let result = future.await.map_err(Into::into);
                    permit.record(is_dropped(&result));
                    result
                })
            }
            Err(overloaded) => {
                metrics::counter!(
                    SHED.name,
                    label::SOURCE => "outbound",
                    label::SERVICE => self.layer.service.to_string()
                )
                .increment(1);
                let error: Result<S::Response, BoxError> = Err(Box::new(overloaded) as BoxError);
                Box::pin(std::future::ready(error))
            }
        }
    }
}
