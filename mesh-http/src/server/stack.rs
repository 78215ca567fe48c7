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
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;

use http::{Request, Response};
use hyper::body::Incoming;

use mesh_core::authz::Policy;
use mesh_core::concurrency::{ConcurrencyLimit, ConcurrencyLimitLayer};
use mesh_core::config::{InboundLimits, MeshConfig};
use mesh_core::deadline::{DeadlineLayer, DeadlineService};
use mesh_core::identity::SpiffeId;
use mesh_core::ratelimit::{KeyedRateLimit, RateLimitLayer, TokenBucket};
use pin_project_lite::pin_project;
use tower::{Layer, ServiceBuilder};

use super::{AuthzLayer, InboundServer, PeerIdentity};
use crate::error::BoxError;
use crate::telemetry::{RecordedOutside, ServerTelemetryLayer};

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
            // Outermost, in front of a server that marks every request for
            // it (see `serve`).
            telemetry: ServerTelemetryLayer::from_config(config)
                .https()
                .premarked(),
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
        // The telemetry layer is the outermost: its marker for the layers
        // inside (an app's own, in its router) comes with each connection's
        // extensions instead of an insert per request.
        let server = server.mark_requests(RecordedOutside);
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

    /// Whether any limit is configured.
    fn any(&self) -> bool {
        self.rate.is_some() || self.peer_rate.is_some() || self.concurrency.is_some()
    }

    /// Wraps `service` in the deadline, then the limits that are configured.
    ///
    /// Without limits (the default) the request goes straight to the deadline
    /// layer: the limit layers are absent, not pass-throughs that each add a
    /// branch, a future to nest and a move of the response per request. One
    /// enum tells the two shapes apart, so the connection code, which is large,
    /// is compiled once for both.
    fn layer<S, B>(
        &self,
        service: S,
    ) -> Limits<
        impl tower::Service<
                Request<Incoming>,
                Response = Response<B>,
                Error = BoxError,
                Future: Send + 'static,
            > + Clone
            + Send
            + 'static,
        DeadlineService<S>,
    >
    where
        S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Default + Send + 'static,
    {
        let service = DeadlineLayer::new().layer(service);
        if !self.any() {
            return Limits::Bare(service);
        }
        let peer_rate = self.peer_rate.clone().map(|limit| {
            RateLimitLayer::per_key(limit, |extensions: &http::Extensions| {
                extensions.get::<PeerIdentity>().map(|peer| peer.0.clone())
            })
        });
        Limits::Limited(
            ServiceBuilder::new()
                .option_layer(self.rate.clone().map(RateLimitLayer::new))
                .option_layer(peer_rate)
                .option_layer(self.concurrency.clone().map(ConcurrencyLimitLayer::new))
                // The refusals' futures hold the error type: a boxed error is
                // `Send` whatever the application's is.
                .map_err(Into::<BoxError>::into)
                .service(service),
        )
    }
}

/// The service in front of the deadline layer: the configured limits, or, when
/// there are none, nothing at all.
#[derive(Debug, Clone)]
enum Limits<L, S> {
    Limited(L),
    Bare(S),
}

impl<L, S, Req> tower::Service<Req> for Limits<L, S>
where
    L: tower::Service<Req, Error = BoxError>,
    S: tower::Service<Req, Response = L::Response>,
    S::Error: Into<BoxError>,
{
    type Response = L::Response;
    type Error = BoxError;
    type Future = LimitsFuture<L::Future, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Limits::Limited(limited) => limited.poll_ready(cx),
            Limits::Bare(bare) => bare.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match self {
            Limits::Limited(limited) => LimitsFuture::Limited {
                future: limited.call(request),
            },
            Limits::Bare(bare) => LimitsFuture::Bare {
                future: bare.call(request),
            },
        }
    }
}

pin_project! {
    /// The future of a [`Limits`] call.
    #[project = LimitsProjection]
    enum LimitsFuture<L, S> {
        Limited { #[pin] future: L },
        Bare { #[pin] future: S },
    }
}

impl<L, S, R, E> Future for LimitsFuture<L, S>
where
    L: Future<Output = Result<R, BoxError>>,
    S: Future<Output = Result<R, E>>,
    E: Into<BoxError>,
{
    type Output = Result<R, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            LimitsProjection::Limited { future } => future.poll(cx),
            LimitsProjection::Bare { future } => future.poll(cx).map_err(Into::into),
        }
    }
}
