//! One handle for everything the mesh runs in a service, built from one
//! configuration: the workload identity (loaded and watched once, shared by both
//! directions), the outbound [`MeshClient`], and the inbound mTLS server.
//!
//! The identity comes from `MESH_TLS_*` files or, when `SPIFFE_ENDPOINT_SOCKET` is
//! set instead, from the SPIFFE Workload API (a SPIRE agent), whose first SVID
//! [`Mesh::start`] awaits:
//!
//! ```no_run
//! # async fn run() -> Result<(), mesh_http::BoxError> {
//! // MESH_TLS_* or SPIFFE_ENDPOINT_SOCKET, MESH_INBOUND_ADDR, MESH_SERVICE_*
//! let mesh = mesh_http::Mesh::start_from_env().await?;
//! let app = axum::Router::new()
//!     .route("/", axum::routing::get(|| async { "hello" }))
//!     .with_state(mesh.client());
//! mesh.serve(app).await // until SIGTERM or Ctrl-C, then drains
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use mesh_core::authz::Policy;
use mesh_core::config::MeshConfig;
use mesh_core::identity::{IdentitySource, IdentityWatch, WorkloadApiConfig};

use crate::client::{GrpcProbeTarget, MakeGrpcProbe, MeshClient};
use crate::error::BoxError;
use crate::server::{shutdown_signal, InboundServer, InboundStack, Readiness};
use mesh_core::health::Probe;

/// The mesh inside one service.
#[derive(Debug)]
pub struct Mesh {
    identity: Option<IdentitySource>,
    _watch: Option<IdentityWatch>,
    client: MeshClient,
    /// Built once, so every connection and every `serve` call share its limits,
    /// metric handles and the authorization policy's log-once memory.
    inbound: InboundStack,
    readiness: Readiness,
}

impl Mesh {
    /// Reads `MESH_` variables (and `MESH_CONFIG_FILE`) and starts the mesh.
    pub fn from_env() -> Result<Self, BoxError> {
        Self::new(MeshConfig::from_env()?)
    }

    /// Reads `MESH_` variables (and `MESH_CONFIG_FILE`, and `SPIFFE_ENDPOINT_SOCKET`)
    /// and starts the mesh; see [`start`](Self::start).
    pub async fn start_from_env() -> Result<Self, BoxError> {
        Self::start(MeshConfig::from_env()?).await
    }

    /// Starts the mesh with the identity `config` chooses: from files (as
    /// [`new`](Self::new)), or from the SPIFFE Workload API, waiting up to
    /// `MESH_WORKLOAD_API_TIMEOUT` for the first SVID (an error naming the socket
    /// when none arrives) and following its updates for as long as the mesh lives.
    pub async fn start(config: MeshConfig) -> Result<Self, BoxError> {
        Self::builder(config).start().await
    }

    /// A builder, for a mesh that needs what this crate cannot supply itself: the
    /// `grpc.health.v1` probe (`mesh_grpc::health::GrpcHealthProbe`) for services
    /// configured with `MESH_SERVICE_<NAME>_HEALTH_CHECK_GRPC_SERVICE`.
    /// `mesh_grpc::start_mesh_from_env()` does it in one call.
    pub fn builder(config: MeshConfig) -> MeshBuilder {
        MeshBuilder {
            config,
            grpc_probe: None,
        }
    }

    /// Loads the identity, if `config` has identity files (an unreadable or
    /// invalid file is an error naming it), starts watching its files, and starts
    /// the client. Needs a tokio runtime.
    ///
    /// An identity from the SPIFFE Workload API has to be awaited: with
    /// `SPIFFE_ENDPOINT_SOCKET` set this returns an error pointing to
    /// [`start`](Self::start), rather than running without mTLS.
    pub fn new(config: MeshConfig) -> Result<Self, BoxError> {
        Self::builder(config).build()
    }

    fn load(config: MeshConfig, grpc_probe: Option<SharedProbe>) -> Result<Self, BoxError> {
        if let Some(api) = config.workload_api() {
            return Err(format!(
                "SPIFFE_ENDPOINT_SOCKET ({}) takes the identity from the SPIFFE Workload API, which start-up awaits: use `Mesh::start(config).await` (or `Mesh::start_from_env().await`) instead of `Mesh::new`",
                api.socket
            )
            .into());
        }
        let (identity, watch) = match config.identity() {
            Some(files) => {
                let identity = IdentitySource::from_files(files.clone())?;
                let watch = identity.watch()?;
                (Some(identity), Some(watch))
            }
            None => (None, None),
        };
        Self::assemble(config, identity, watch, grpc_probe)
    }

    fn assemble(
        config: MeshConfig,
        identity: Option<IdentitySource>,
        watch: Option<IdentityWatch>,
        grpc_probe: Option<SharedProbe>,
    ) -> Result<Self, BoxError> {
        let inbound = InboundStack::new(&config);
        let mut client = MeshClient::builder(config);
        if let Some(identity) = &identity {
            client = client.identity(identity.clone());
        }
        if let Some(probe) = grpc_probe {
            client = client.grpc_health_probe(probe);
        }
        Ok(Mesh {
            inbound,
            readiness: Readiness::new(),
            client: client.build()?,
            identity,
            _watch: watch,
        })
    }

    /// The outbound client (cheap to clone).
    pub fn client(&self) -> MeshClient {
        self.client.clone()
    }

    /// The configuration the mesh runs with.
    pub fn config(&self) -> &MeshConfig {
        self.client.config()
    }

    /// The workload identity, when mTLS is on.
    pub fn identity(&self) -> Option<&IdentitySource> {
        self.identity.as_ref()
    }

    /// The inbound server's readiness: ready while [`serve`](Self::serve) runs,
    /// not ready from the moment shutdown begins. Route it to your readiness
    /// probe: `.route("/ready", get(move || async move { readiness.status() }))`.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// The authorization policy [`serve`](Self::serve) applies, when
    /// `MESH_AUTHZ_RULES` or `MESH_AUTHZ_DEFAULT` are set.
    pub fn authz(&self) -> Option<&Arc<Policy>> {
        self.inbound.authz()
    }

    /// Binds the inbound mTLS listener on `MESH_INBOUND_ADDR`. It accepts clients
    /// of our own trust domain and of every federated one.
    pub async fn inbound(&self) -> Result<InboundServer, BoxError> {
        let addr = self
            .config()
            .inbound_addr()
            .ok_or("MESH_INBOUND_ADDR is not set: the mesh has no inbound address to listen on")?;
        let identity = self
            .identity
            .as_ref()
            .ok_or("the inbound listener is strict mTLS: set MESH_TLS_CERT, MESH_TLS_KEY and MESH_TLS_BUNDLE, or SPIFFE_ENDPOINT_SOCKET")?;
        let tls = mesh_core::tls::server_config(identity, []);
        Ok(InboundServer::bind(addr, tls)
            .await?
            .with_readiness(self.readiness.clone()))
    }

    /// Serves `service` (an axum `Router`, say) on the inbound listener until
    /// SIGTERM or Ctrl-C, then turns [not ready](Self::readiness) and drains
    /// in-flight requests within the grace period. Every request is measured and
    /// traced ([`serve_inbound`](Self::serve_inbound)). When authorization is
    /// configured, every request passes the policy first
    /// ([`AuthzLayer`](crate::server::AuthzLayer)); then
    /// the inbound limits that are configured (`MESH_INBOUND_RATE_LIMIT`,
    /// `MESH_INBOUND_PEER_RATE_LIMIT`: 429; `MESH_INBOUND_CONCURRENCY`: 503, the
    /// handler never sees a refused request); each request's deadline
    /// (`grpc-timeout` or `x-mesh-timeout-ms`) then bounds its handler and every
    /// outbound call the handler makes
    /// ([`DeadlineLayer`](mesh_core::deadline::DeadlineLayer)).
    pub async fn serve<S, B>(&self, service: S) -> Result<(), BoxError>
    where
        S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Default + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.serve_with_shutdown(service, shutdown_signal()).await
    }

    /// Like [`serve`](Self::serve), stopping when `shutdown` completes.
    pub async fn serve_with_shutdown<S, B, F>(
        &self,
        service: S,
        shutdown: F,
    ) -> Result<(), BoxError>
    where
        S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Default + Send + 'static,
        B::Error: Into<BoxError>,
        F: Future<Output = ()>,
    {
        self.serve_inbound(self.inbound().await?, service, shutdown)
            .await;
        Ok(())
    }

    /// Serves `service` on `server` (from [`inbound`](Self::inbound), say, when
    /// the caller needs its address first) with the mesh's server telemetry
    /// ([`ServerTelemetryLayer`](crate::telemetry::ServerTelemetryLayer): metrics, a span continuing the caller's trace,
    /// the access log when `MESH_ACCESS_LOG=json`, the peer's SPIFFE ID in both)
    /// outermost, so refused requests are measured too, then the authorization
    /// policy, until `shutdown` completes. Put the layer inside your router as
    /// well to label requests with route templates; they are still recorded once.
    pub async fn serve_inbound<S, B, F>(&self, server: InboundServer, service: S, shutdown: F)
    where
        S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Default + Send + 'static,
        B::Error: Into<BoxError>,
        F: Future<Output = ()>,
    {
        self.inbound.serve(server, service, shutdown).await;
    }
}

/// Builds a [`Mesh`] (from [`Mesh::builder`]) with a gRPC health probe.
///
/// ```no_run
/// # async fn run(probe: impl mesh_http::client::MakeGrpcProbe) -> Result<(), mesh_http::BoxError> {
/// // probe: mesh_grpc::health::GrpcHealthProbe
/// let config = mesh_core::config::MeshConfig::from_env()?;
/// let mesh = mesh_http::Mesh::builder(config).grpc_health_probe(probe).start().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct MeshBuilder {
    config: MeshConfig,
    grpc_probe: Option<SharedProbe>,
}

impl MeshBuilder {
    /// Probes the endpoints of services configured with
    /// `MESH_SERVICE_<NAME>_HEALTH_CHECK_GRPC_SERVICE` through `make`
    /// (`mesh_grpc::health::GrpcHealthProbe`). Without it such a service is a
    /// start-up error, as for [`MeshClientBuilder::grpc_health_probe`](crate::client::MeshClientBuilder::grpc_health_probe).
    pub fn grpc_health_probe(mut self, make: impl MakeGrpcProbe) -> Self {
        self.grpc_probe = Some(SharedProbe(Arc::new(make)));
        self
    }

    /// Starts the mesh as [`Mesh::new`] does: identity from files, or none.
    pub fn build(self) -> Result<Mesh, BoxError> {
        Mesh::load(self.config, self.grpc_probe)
    }

    /// Starts the mesh as [`Mesh::start`] does: also from the SPIFFE Workload
    /// API, awaiting the first SVID.
    pub async fn start(self) -> Result<Mesh, BoxError> {
        match self.config.workload_api() {
            Some(api) => {
                let identity = workload_api_identity(api).await?;
                Mesh::assemble(self.config, Some(identity), None, self.grpc_probe)
            }
            None => self.build(),
        }
    }
}

/// The builder's probe, handed on to the client builder.
#[derive(Clone)]
struct SharedProbe(Arc<dyn MakeGrpcProbe>);

impl std::fmt::Debug for SharedProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MakeGrpcProbe")
    }
}

impl MakeGrpcProbe for SharedProbe {
    fn make_probe(&self, target: GrpcProbeTarget) -> Arc<dyn Probe> {
        self.0.make_probe(target)
    }
}

#[cfg(feature = "workload-api")]
async fn workload_api_identity(api: &WorkloadApiConfig) -> Result<IdentitySource, BoxError> {
    Ok(IdentitySource::from_workload_api(api).await?)
}

/// Built without the Workload API client: say so rather than run without mTLS.
#[cfg(not(feature = "workload-api"))]
async fn workload_api_identity(api: &WorkloadApiConfig) -> Result<IdentitySource, BoxError> {
    Err(format!(
        "SPIFFE_ENDPOINT_SOCKET ({}) is set, but mesh-http was built without its `workload-api` feature: enable the feature, or unset SPIFFE_ENDPOINT_SOCKET and set MESH_TLS_CERT, MESH_TLS_KEY and MESH_TLS_BUNDLE",
        api.socket
    )
    .into())
}
