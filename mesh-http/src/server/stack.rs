//! The order of the inbound layers `Mesh::serve` puts in front of the handler, in
//! one place:
//!
//! ```text
//! authorization (403 before anything else is spent on a refused peer)
//!   ─▶ server rate limit, per-peer rate limit (429 + Retry-After)
//!   ─▶ concurrency limit (503: shed before the handler, never queued)
//!   ─▶ deadline (grpc-timeout / x-mesh-timeout-ms bounds the handler and the
//!                outbound calls it makes)
//!   ─▶ the application's service
//! ```
//!
//! The limiters are built once per [`Mesh`](crate::Mesh), so every connection and
//! every `serve` call share them.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use mesh_core::concurrency::{ConcurrencyLimit, ConcurrencyLimitLayer};
use mesh_core::config::InboundLimits;
use mesh_core::deadline::DeadlineLayer;
use mesh_core::identity::SpiffeId;
use mesh_core::ratelimit::{KeyedRateLimit, RateLimitLayer, TokenBucket};
use tower::{Layer, ServiceBuilder};

use super::PeerIdentity;
use crate::error::BoxError;

/// The shared state of the inbound limits, when configured.
#[derive(Debug, Clone, Default)]
pub(crate) struct InboundLimiters {
    rate: Option<Arc<TokenBucket>>,
    peer_rate: Option<Arc<KeyedRateLimit<SpiffeId>>>,
    concurrency: Option<Arc<ConcurrencyLimit>>,
}

impl InboundLimiters {
    pub(crate) fn new(limits: &InboundLimits) -> Self {
        InboundLimiters {
            rate: limits.rate.map(|rate| Arc::new(TokenBucket::new(rate))),
            peer_rate: limits
                .peer_rate
                .map(|rate| Arc::new(KeyedRateLimit::new(rate))),
            concurrency: limits.concurrency.map(ConcurrencyLimit::new),
        }
    }

    /// Wraps `service` in the limits that are configured, then the deadline.
    pub(crate) fn layer<S, B>(
        &self,
        service: S,
    ) -> impl tower::Service<
        Request<Incoming>,
        Response = Response<B>,
        Error = BoxError,
        Future: Send + 'static,
    > + Clone
           + Send
           + 'static
    where
        S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Default + Send + 'static,
    {
        let peer_rate = self.peer_rate.clone().map(|limit| {
            RateLimitLayer::per_key(limit, |extensions: &http::Extensions| {
                extensions.get::<PeerIdentity>().map(|peer| peer.0.clone())
            })
        });
        ServiceBuilder::new()
            .option_layer(self.rate.clone().map(RateLimitLayer::new))
            .option_layer(peer_rate)
            .option_layer(self.concurrency.clone().map(ConcurrencyLimitLayer::new))
            .map_err(Into::<BoxError>::into)
            .service(DeadlineLayer::new().layer(service))
    }
}
