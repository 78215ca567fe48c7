//! The order of the inbound layers `Mesh::serve` puts in front of the handler, in
//! one place:
//!
//! ```text
//! telemetry (every request measured and traced, refused ones included)
//!   ─▶ authorization (403 before anything else is spent on a refused peer)
//!   ─▶ server rate limit, per-peer rate limit (429 + Retry-After)
//!   ─▶ concurrency limit (503: shed before the handler, never queued)
//!   ─▶ deadline (grpc-timeout / x-mesh-timeout-ms bounds the handler and the
//!                outbound calls it makes)
//!   ─▶ the application's service
//! ```
//!
//! [`InboundStack`] is built once per [`Mesh`](crate::Mesh), so every connection
//! and every `serve` call share its limits and metric handles.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

use http::{Request, Response};
use hyper::body::Incoming;

use mesh_core::authz::Policy;
use mesh_core::concurrency::{ConcurrencyLimit, ConcurrencyLimitLayer};
use mesh_core::config::{InboundLimits, MeshConfig};
use mesh_core::deadline::DeadlineLayer;
use mesh_core::identity::SpiffeId;
use mesh_core::ratelimit::{KeyedRateLimit, RateLimitLayer, TokenBucket};
use tower::{Layer, ServiceBuilder};

use super::{AuthzLayer, InboundServer, PeerIdentity};
use crate::error::BoxError;
use crate::telemetry::ServerTelemetryLayer;

/// The layers `Mesh::serve` puts in front of the application, built from the
/// configuration once.
#[derive(Debug, Clone)]
pub(crate) struct InboundStack {
    telemetry: ServerTelemetryLayer,
    authz: Option<Arc<Policy>>,
    limits: InboundLimiters,
}

impl InboundStack {
    pub(crate) fn new(config: &MeshConfig) -> Self {
        InboundStack {
            telemetry: ServerTelemetryLayer::from_config(config).https(),
            authz: config.authz().map(|a| Arc::new(a.policy())),
            limits: InboundLimiters::new(config.inbound_limits()),
        }
    }

    /// The authorization policy, when configured.
    pub(crate) fn authz(&self) -> Option<&Arc<Policy>> {
        self.authz.as_ref()
    }

    /// Serves `service` behind the whole stack on `server` until `shutdown`.
    pub(crate) async fn serve<S, B, F>(&self, server: InboundServer, service: S, shutdown: F)
    where
        S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Default + Send + 'static,
        B::Error: Into<BoxError>,
        F: Future<Output = ()>,
    {
        let service = self.limits.layer(service);
        // Authorization changes the response body's type, so the two shapes are
        // served separately rather than boxed per request.
        match &self.authz {
            Some(policy) => {
                let service = AuthzLayer::new(policy.clone()).layer(service);
                server.serve(self.telemetry.layer(service), shutdown).await;
            }
            None => server.serve(self.telemetry.layer(service), shutdown).await,
        }
    }
}

/// The shared state of the inbound limits, when configured.
#[derive(Debug, Clone, Default)]
struct InboundLimiters {
    rate: Option<Arc<TokenBucket>>,
    peer_rate: Option<Arc<KeyedRateLimit<SpiffeId>>>,
    concurrency: Option<Arc<ConcurrencyLimit>>,
}

impl InboundLimiters {
    fn new(limits: &InboundLimits) -> Self {
        InboundLimiters {
            rate: limits.rate.map(|rate| Arc::new(TokenBucket::new(rate))),
            peer_rate: limits
                .peer_rate
                .map(|rate| Arc::new(KeyedRateLimit::new(rate))),
            concurrency: limits.concurrency.map(ConcurrencyLimit::new),
        }
    }

    /// Wraps `service` in the limits that are configured, then the deadline.
    fn layer<S, B>(
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
