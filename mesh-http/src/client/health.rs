//! Active health checks of a service's endpoints: the HTTP probe, and the hook
//! through which `mesh-grpc` supplies the `grpc.health.v1` one.
//!
//! The checker itself (schedule, thresholds, one task per endpoint) is
//! `mesh_core::health`; this module only asks one endpoint one question.
//!
//! Why a hook for gRPC rather than a gRPC probe here: this crate speaks HTTP and
//! must not compile tonic for users who only speak HTTP. A service configured with
//! `MESH_SERVICE_<NAME>_HEALTH_CHECK_GRPC_SERVICE` therefore needs a
//! [`MakeGrpcProbe`] on the client builder (`mesh_grpc::health::GrpcHealthProbe`);
//! the client hands it the service's connector, so the probe uses the same
//! transport (mTLS with the same expected identity) as the service's requests.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HOST, USER_AGENT};
use http::{HeaderValue, Request, Uri};
use http_body_util::Empty;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh_core::config::{Protocol, ServiceConfig};
use mesh_core::discovery::Endpoint;
use mesh_core::health::{HealthCheckKind, Probe, ProbeFailure, ProbeFuture};

use crate::connect::Connect;
use crate::error::BoxError;

/// What a gRPC probe needs to reach one service's endpoints.
#[derive(Clone)]
#[non_exhaustive]
pub struct GrpcProbeTarget {
    /// The logical service (the `:authority` and TLS server name to use).
    pub service: Arc<str>,
    /// The service name to pass to `grpc.health.v1.Health/Check`; empty for the
    /// whole server.
    pub grpc_service: String,
    /// Opens transports to the service's endpoints, exactly as its requests do.
    pub connector: Arc<dyn Connect>,
}

impl std::fmt::Debug for GrpcProbeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcProbeTarget")
            .field("service", &self.service)
            .field("grpc_service", &self.grpc_service)
            .finish_non_exhaustive()
    }
}

/// Makes the probe of a service whose health check is `grpc.health.v1`; given to
/// [`MeshClientBuilder::grpc_health_probe`](super::MeshClientBuilder::grpc_health_probe).
pub trait MakeGrpcProbe: Send + Sync + 'static {
    /// The probe for `target`'s endpoints.
    fn make_probe(&self, target: GrpcProbeTarget) -> Arc<dyn Probe>;
}

/// The probe for `config`'s health check, if it has one.
pub(crate) fn probe_for(
    config: &ServiceConfig,
    connector: &Arc<dyn Connect>,
    grpc: Option<&Arc<dyn MakeGrpcProbe>>,
) -> Result<Option<Arc<dyn Probe>>, BoxError> {
    let Some(check) = &config.health_check else {
        return Ok(None);
    };
    let probe: Arc<dyn Probe> = match &check.kind {
        HealthCheckKind::Http { path } => Arc::new(HttpProbe::new(config, connector, path)?),
        HealthCheckKind::Grpc { service } => {
            let Some(make) = grpc else {
                return Err(format!(
                    "MESH_SERVICE_{}_HEALTH_CHECK_GRPC_SERVICE asks for gRPC health checks, but this client has no gRPC probe: start the mesh with mesh_grpc::start_mesh_from_env() (or mesh_grpc::mesh_builder(config)), build a bare client with MeshClient::builder(config).grpc_health_probe(mesh_grpc::health::GrpcHealthProbe), or unset the variable",
                    config.normalized_name()
                )
                .into());
            };
            make.make_probe(GrpcProbeTarget {
                service: config.name.as_str().into(),
                grpc_service: service.clone(),
                connector: connector.clone(),
            })
        }
    };
    Ok(Some(probe))
}

/// `GET <path>` on one endpoint over a connection of its own (opened through the
/// service's connector, so mTLS when the service's requests use it); any 2xx is
/// healthy. A fresh connection per probe also checks that the endpoint still
/// accepts connections and completes a handshake; at one probe per 10 s per
/// endpoint, that cost is small.
struct HttpProbe {
    service: Arc<str>,
    host: HeaderValue,
    protocol: Protocol,
    uri: Uri,
    connector: Arc<dyn Connect>,
}

impl HttpProbe {
    fn new(
        config: &ServiceConfig,
        connector: &Arc<dyn Connect>,
        path: &str,
    ) -> Result<Self, BoxError> {
        let invalid = |e: &dyn std::fmt::Display| {
            format!(
                "MESH_SERVICE_{}_HEALTH_CHECK_PATH: `{path}` does not make a URI with the service name `{}`: {e}",
                config.normalized_name(),
                config.name
            )
        };
        // HTTP/2 needs the absolute form (its authority becomes `:authority`);
        // HTTP/1.1 sends the path and a Host header.
        let uri = if config.protocol.is_http2() {
            format!("http://{}{path}", config.name).parse::<Uri>()
        } else {
            path.parse::<Uri>()
        }
        .map_err(|e| invalid(&e))?;
        let host = HeaderValue::from_str(&config.name).map_err(|e| invalid(&e))?;
        Ok(HttpProbe {
            service: config.name.as_str().into(),
            host,
            protocol: config.protocol,
            uri,
            connector: connector.clone(),
        })
    }
}

impl Probe for HttpProbe {
    fn check(&self, endpoint: &Endpoint) -> ProbeFuture {
        let connecting = self.connector.connect(endpoint.addr, &self.service);
        let mut request = Request::get(self.uri.clone())
            .header(USER_AGENT, "mesh-health-check")
            .body(Empty::<Bytes>::new())
            .expect("a GET with a valid URI");
        if !self.protocol.is_http2() {
            request.headers_mut().insert(HOST, self.host.clone());
        }
        let http2 = self.protocol.is_http2();
        Box::pin(async move {
            let io = TokioIo::new(connecting.await.map_err(ProbeFailure::connect)?);
            let path = request.uri().path().to_owned();
            // The connection is driven inside this future, not spawned: when the
            // checker's timeout drops the probe, the connection goes with it.
            let response = if http2 {
                let mut builder = http2::Builder::new(TokioExecutor::new());
                builder.timer(TokioTimer::new());
                let (mut sender, connection) =
                    builder.handshake(io).await.map_err(ProbeFailure::connect)?;
                tokio::select! {
                    response = sender.send_request(request) => response,
                    _ = connection => return Err(ProbeFailure::other("the connection closed before the answer")),
                }
            } else {
                let (mut sender, connection) =
                    http1::handshake(io).await.map_err(ProbeFailure::connect)?;
                tokio::select! {
                    response = sender.send_request(request) => response,
                    _ = connection => return Err(ProbeFailure::other("the connection closed before the answer")),
                }
            }
            .map_err(ProbeFailure::other)?;
            let status = response.status();
            if status.is_success() {
                Ok(())
            } else {
                Err(ProbeFailure::unhealthy(format!(
                    "GET {path} answered {status}"
                )))
            }
        })
    }
}
