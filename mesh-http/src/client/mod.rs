//! The outbound client: `http://<logical-service>/path` to an endpoint our balancer
//! picked, over pooled connections.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use http_body_util::{BodyExt, Empty};
//! use tower::ServiceExt;
//!
//! // MESH_SERVICE_GREETER_ENDPOINTS=10.0.0.5:8080,10.0.0.6:8080
//! let client = mesh_http::MeshClient::from_env()?;
//! let request = http::Request::get("http://greeter/hello").body(Empty::<bytes::Bytes>::new())?;
//! let response = client.oneshot(request).await?;
//! let body = response.into_body().collect().await?.to_bytes();
//! # Ok(()) }
//! ```

mod classify;
mod dispatch;
mod egress;
mod health;
mod service;
mod stack;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use mesh_core::config::{Egress, MeshConfig, ServiceConfig};
use mesh_core::identity::{ExpectedIdentity, IdentitySource, IdentityWatch};

use crate::body::{RequestBody, ResponseBody};
use crate::connect::{Connect, MtlsConnector, TcpConnector};
use crate::error::{BoxError, Error};
pub(crate) use dispatch::Lease;
use egress::EgressClients;
pub use health::{GrpcProbeTarget, MakeGrpcProbe};
use service::ServiceClient;

/// The mesh's outbound HTTP client: cheap to clone (clones share discovery,
/// balancers and connection pools) and a `tower::Service`.
///
/// A request's host picks the logical service (after normalization: `my-api`
/// matches `MESH_SERVICE_MY_API_*`); the `Host` / `:authority` sent is that
/// logical name. A host the mesh does not know is an error, unless
/// `MESH_EGRESS=allow`, in which case it is resolved with plain DNS and, for
/// `https`, verified with the system's web PKI roots.
#[derive(Clone, Debug)]
pub struct MeshClient {
    inner: Arc<ClientInner>,
}

#[derive(Debug)]
struct ClientInner {
    config: Arc<MeshConfig>,
    /// Keeps the identity files watched when this client loaded them itself.
    _identity_watch: Option<IdentityWatch>,
    /// One per configured service, in the order of `config.services()`.
    services: Vec<ServiceClient>,
    egress: Option<EgressClients>,
}

/// Builds a [`MeshClient`] with a transport other than plain TCP.
#[derive(Debug)]
pub struct MeshClientBuilder {
    config: MeshConfig,
    connector: Option<Arc<dyn Connect>>,
    identity: Option<IdentitySource>,
    grpc_probe: Option<Arc<dyn MakeGrpcProbe>>,
}

impl std::fmt::Debug for dyn MakeGrpcProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MakeGrpcProbe")
    }
}

impl std::fmt::Debug for dyn Connect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connect")
    }
}

impl MeshClientBuilder {
    /// Opens connections to mesh endpoints through `connector` (mTLS, say).
    pub fn connector(mut self, connector: impl Connect) -> Self {
        self.connector = Some(Arc::new(connector));
        self
    }

    /// Uses this identity for mTLS instead of loading the configured files (to
    /// share one identity, and its rotation, with the inbound server).
    pub fn identity(mut self, identity: IdentitySource) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Probes the endpoints of services configured with
    /// `MESH_SERVICE_<NAME>_HEALTH_CHECK_GRPC_SERVICE` through `make`
    /// (`mesh_grpc::health::GrpcHealthProbe`). Without it, such a service is a
    /// build error: this crate does not speak gRPC itself.
    pub fn grpc_health_probe(mut self, make: impl MakeGrpcProbe) -> Self {
        self.grpc_probe = Some(Arc::new(make));
        self
    }

    /// Starts discovery for every configured service, and active health checks
    /// for those that configure them. Needs a tokio runtime.
    ///
    /// With an identity (given, or configured with `MESH_TLS_*`), connections to
    /// mesh services are mTLS; without one they are plaintext.
    pub fn build(self) -> Result<MeshClient, BoxError> {
        let (identity, watch) = match (self.identity, self.config.identity()) {
            (Some(identity), _) => (Some(identity), None),
            (None, Some(files)) => {
                let identity = IdentitySource::from_files(files.clone())?;
                let watch = identity.watch()?;
                (Some(identity), Some(watch))
            }
            // Never fall back to plaintext when the configuration asks for mTLS.
            (None, None) if self.config.workload_api().is_some() => {
                return Err("SPIFFE_ENDPOINT_SOCKET takes the identity from the SPIFFE Workload API, which start-up awaits: use `mesh_http::Mesh::start`, or pass `.identity(IdentitySource::from_workload_api(..).await?)`".into());
            }
            (None, None) => (None, None),
        };
        let config = Arc::new(self.config);
        let connector_for = |svc: &ServiceConfig| -> Arc<dyn Connect> {
            match (&self.connector, &identity) {
                (Some(connector), _) => connector.clone(),
                (None, Some(identity)) => {
                    let expected = svc.identity.clone().unwrap_or_else(|| {
                        ExpectedIdentity::TrustDomain(identity.own_trust_domain())
                    });
                    Arc::new(MtlsConnector::new(
                        identity,
                        expected,
                        &svc.name,
                        svc.protocol,
                    ))
                }
                (None, None) => Arc::new(TcpConnector),
            }
        };
        let services = config
            .services()
            .iter()
            .map(|svc| {
                ServiceClient::spawn(
                    svc,
                    config.dns(),
                    config.access_log(),
                    connector_for(svc),
                    self.grpc_probe.as_ref(),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let egress = (config.egress() == Egress::Allow)
            .then(|| EgressClients::new(config.dns().clone(), config.access_log()));
        Ok(MeshClient {
            inner: Arc::new(ClientInner {
                config,
                _identity_watch: watch,
                services,
                egress,
            }),
        })
    }
}

impl MeshClient {
    /// Reads the configuration from `MESH_` variables and starts the client.
    pub fn from_env() -> Result<Self, BoxError> {
        Self::new(MeshConfig::from_env()?)
    }

    /// Starts a client for `config`: mTLS when it configures an identity, plain
    /// TCP otherwise. Needs a tokio runtime.
    pub fn new(config: MeshConfig) -> Result<Self, BoxError> {
        Self::builder(config).build()
    }

    /// A builder, to choose the transport.
    pub fn builder(config: MeshConfig) -> MeshClientBuilder {
        MeshClientBuilder {
            config,
            connector: None,
            identity: None,
            grpc_probe: None,
        }
    }

    /// The configuration this client runs with.
    pub fn config(&self) -> &MeshConfig {
        &self.inner.config
    }

    /// Waits until every service's discovery has made its first resolution.
    pub async fn ready(&self) {
        for svc in &self.inner.services {
            svc.initialized().await;
        }
    }

    /// What the retry budget of the service `host` names has counted: requests,
    /// retries and hedges made, and those refused because the budget was spent.
    /// `None` for a host that is not a configured service.
    pub fn retry_stats(&self, host: &str) -> Option<mesh_core::retry::RetryStats> {
        let i = self.inner.config.service_index(host)?;
        Some(self.inner.services[i].retry_stats())
    }

    /// The circuit breaker state of the service `host` names; `None` for a host
    /// that is not a configured service or a service without a breaker.
    pub fn breaker_state(&self, host: &str) -> Option<mesh_core::breaker::BreakerState> {
        let i = self.inner.config.service_index(host)?;
        self.inner.services[i].breaker_state()
    }

    /// Endpoints of the service `host` names that outlier detection has ejected
    /// so far (each ejection counts); `None` for a host that is not a configured
    /// service.
    pub fn ejections(&self, host: &str) -> Option<u64> {
        let i = self.inner.config.service_index(host)?;
        Some(self.inner.services[i].ejections())
    }

    /// Endpoint counts of the service `host` names (known, ready, ejected by
    /// outlier detection, held out by failed health checks); `None` for a host
    /// that is not a configured service.
    pub fn endpoint_stats(&self, host: &str) -> Option<mesh_core::balance::BalancerStats> {
        let i = self.inner.config.service_index(host)?;
        Some(self.inner.services[i].endpoint_stats())
    }

    /// Sends a request whose body is already boxed.
    ///
    /// The service's stack takes the request here: its deadline, trace context
    /// and call telemetry start now, and the returned future sends it.
    pub fn send(&self, request: Request<RequestBody>) -> ResponseFuture {
        let inner = &self.inner;
        let Some(host) = request
            .uri()
            .authority()
            .map(|a| authority_host(a.as_str()))
        else {
            return ResponseFuture::failed(Error::invalid_uri(
                "the URI has no host; use http://<service>/path",
            ));
        };
        match inner.config.service_index(host) {
            Some(i) => ResponseFuture(Sending::Stack(inner.services[i].send(request))),
            None if inner.egress.is_some() => {
                let client = self.clone();
                ResponseFuture(Sending::Other(Box::pin(async move {
                    let egress = client.inner.egress.as_ref().expect("egress is allowed");
                    egress.send(request).await
                })))
            }
            None => {
                egress::count(host, "denied");
                ResponseFuture::failed(Error::unknown_service(host))
            }
        }
    }
}

/// The host of `authority` as [`Uri::host`](http::Uri::host) reads it (no user
/// info, no port; an IPv6 literal keeps its brackets), found by one scan of its
/// bytes: `Uri::host` splits strings by characters, a few hundred instructions
/// a request for what is usually a one-word name.
fn authority_host(authority: &str) -> &str {
    let after_user = authority
        .bytes()
        .rposition(|b| b == b'@')
        .map_or(authority, |at| &authority[at + 1..]);
    let end = if after_user.starts_with('[') {
        after_user.bytes().position(|b| b == b']').map(|i| i + 1)
    } else {
        after_user.bytes().position(|b| b == b':')
    };
    &after_user[..end.unwrap_or(after_user.len())]
}

/// The future of a [`MeshClient`] request: the response, or the error that ended
/// the request.
///
/// A request to a configured service is its service stack's own future, polled
/// here with nothing boxed around it; the rest (egress, a request refused at
/// once) is boxed.
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct ResponseFuture(Sending);

enum Sending {
    Stack(service::StackFuture),
    Other(Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Error>> + Send>>),
}

impl std::fmt::Debug for Sending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sending::Stack(_) => "Stack",
            Sending::Other(_) => "Other",
        })
    }
}

impl ResponseFuture {
    fn failed(error: Error) -> Self {
        ResponseFuture(Sending::Other(Box::pin(std::future::ready(Err(error)))))
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<ResponseBody>, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Sending::Stack(future) => future.as_mut().poll(cx).map_err(Error::from_stack),
            Sending::Other(future) => future.as_mut().poll(cx),
        }
    }
}

impl<B> tower::Service<Request<B>> for MeshClient
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = Error;
    type Future = ResponseFuture;

    /// Always ready: waiting for an endpoint happens per request, bounded by the
    /// service's queue timeout, so one slow service never blocks another.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.send(request.map(|body| body.map_err(Into::into).boxed_unsync()))
    }
}

#[cfg(test)]
mod tests {
    use super::authority_host;

    #[test]
    fn authority_host_reads_what_uri_host_reads() {
        for uri in [
            "http://orders/",
            "http://orders:8080/a",
            "https://Orders.Example:443",
            "http://user@host:81/",
            "http://user:secret@host/",
            "http://a@b@host:1/",
            "http://127.0.0.1:9/",
            "http://[::1]/",
            "http://[::1]:65535/",
            "http://user@[fe80::1%25eth0]:8/",
        ] {
            let uri: http::Uri = uri.parse().unwrap();
            let authority = uri.authority().unwrap().as_str();
            assert_eq!(Some(authority_host(authority)), uri.host(), "{uri}");
        }
    }

    #[test]
    fn authority_host_never_panics() {
        for authority in ["", "@", "[", "[::1", ":", "a@", "@:"] {
            authority_host(authority);
        }
    }
}
