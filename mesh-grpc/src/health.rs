//! gRPC health (`grpc.health.v1`), both ways:
//!
//! - [`GrpcHealthProbe`]: active health checks of a service's endpoints by
//!   `grpc.health.v1.Health/Check` (only `SERVING` is healthy). Give it to the
//!   client builder for services configured with
//!   `MESH_SERVICE_<NAME>_HEALTH_CHECK_GRPC_SERVICE`:
//!   `MeshClient::builder(config).grpc_health_probe(GrpcHealthProbe)`.
//! - [`health_service`]: tonic-health's server whose answers follow the inbound
//!   server's [`Readiness`]: `NOT_SERVING` until it serves and from the moment its
//!   shutdown begins, so peers stop picking a draining instance before it stops
//!   accepting.

use std::sync::Arc;

use http::Uri;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh_core::discovery::Endpoint;
use mesh_core::health::{Probe, ProbeFailure, ProbeFuture};
use mesh_http::client::{GrpcProbeTarget, MakeGrpcProbe};
use mesh_http::server::Readiness;
use tokio::sync::watch;
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus as PbStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;

/// Makes `grpc.health.v1` probes for the mesh client: pass it to
/// `MeshClientBuilder::grpc_health_probe`.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcHealthProbe;

impl MakeGrpcProbe for GrpcHealthProbe {
    fn make_probe(&self, target: GrpcProbeTarget) -> Arc<dyn Probe> {
        let origin = format!("http://{}", target.service)
            .parse::<Uri>()
            .unwrap_or_else(|_| Uri::from_static("http://localhost"));
        Arc::new(GrpcProbe { target, origin })
    }
}

/// Calls `Check` on one endpoint over an HTTP/2 connection of its own, opened
/// through the service's connector (mTLS when its calls use it). The connection
/// is driven inside the probe's future, so the checker's timeout closes it.
struct GrpcProbe {
    target: GrpcProbeTarget,
    origin: Uri,
}

impl Probe for GrpcProbe {
    fn check(&self, endpoint: &Endpoint) -> ProbeFuture {
        let connecting = self
            .target
            .connector
            .connect(endpoint.addr, &self.target.service);
        let origin = self.origin.clone();
        let service = self.target.grpc_service.clone();
        Box::pin(async move {
            let io = TokioIo::new(connecting.await.map_err(ProbeFailure::connect)?);
            let mut builder = http2::Builder::new(TokioExecutor::new());
            builder.timer(TokioTimer::new());
            let (sender, connection) = builder
                .handshake::<_, tonic::body::Body>(io)
                .await
                .map_err(ProbeFailure::connect)?;
            let transport = tower::service_fn(move |request| {
                let mut sender = sender.clone();
                async move { sender.send_request(request).await }
            });
            let mut client = HealthClient::with_origin(transport, origin);
            let answer = tokio::select! {
                answer = client.check(HealthCheckRequest { service: service.clone() }) => answer,
                _ = connection => return Err(ProbeFailure::other("the connection closed before the answer")),
            };
            judge(&service, answer.map(Response::into_inner))
        })
    }
}

/// SERVING is healthy; any other answer, or no answer, is not.
fn judge(service: &str, answer: Result<HealthCheckResponse, Status>) -> Result<(), ProbeFailure> {
    let name = if service.is_empty() {
        "the server".to_owned()
    } else {
        format!("service `{service}`")
    };
    match answer {
        Ok(response) => match response.status() {
            PbStatus::Serving => Ok(()),
            other => Err(ProbeFailure::unhealthy(format!(
                "grpc.health.v1 says {name} is {}",
                other.as_str_name()
            ))),
        },
        Err(status) if status.code() == Code::NotFound => Err(ProbeFailure::unhealthy(format!(
            "the server's health service does not know {name}"
        ))),
        Err(status) if status.code() == Code::Unimplemented => Err(ProbeFailure::other(
            "the server does not implement grpc.health.v1",
        )),
        Err(status) => Err(ProbeFailure::other(format!(
            "grpc.health.v1 Check failed: {:?}: {}",
            status.code(),
            status.message()
        ))),
    }
}

/// A `grpc.health.v1` service for a tonic server behind the mesh's inbound
/// listener: tonic-health's, with every answer `NOT_SERVING` while `readiness`
/// is not ready (before the server serves, and from the moment its shutdown
/// begins). Add the returned server to the router; use the reporter to set the
/// status of individual services, as with tonic-health.
///
/// `Check` reads `readiness` on every call, so it answers `NOT_SERVING` from the
/// very moment drain begins; `Watch` streams of the whole server (`""`) follow it
/// through a task that lives as long as the returned server. Needs a tokio
/// runtime.
pub fn health_service(readiness: Readiness) -> (HealthReporter, HealthServer<ReadinessHealth>) {
    let reporter = HealthReporter::new();
    let (alive, mut gone) = watch::channel(());
    let mirror = reporter.clone();
    let watched = readiness.clone();
    tokio::spawn(async move {
        loop {
            let ready = watched.is_ready();
            let status = if ready {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            mirror.set_service_status("", status).await;
            tokio::select! {
                _ = watched.wait_for(!ready) => {}
                // Only ever errs: the sender is never used, it is dropped with
                // the health service.
                _ = gone.changed() => return,
            }
        }
    });
    let service = ReadinessHealth {
        inner: HealthService::from_health_reporter(reporter.clone()),
        readiness,
        _alive: alive,
    };
    (reporter, HealthServer::new(service))
}

/// tonic-health's service, answering `NOT_SERVING` while the server is not ready.
#[derive(Debug)]
pub struct ReadinessHealth {
    inner: HealthService,
    readiness: Readiness,
    /// Dropped with the service, which ends the task mirroring readiness.
    _alive: watch::Sender<()>,
}

#[tonic::async_trait]
impl Health for ReadinessHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        // Ask the inner service first, so an unknown service stays NOT_FOUND.
        let answer = self.inner.check(request).await?;
        if self.readiness.is_ready() {
            return Ok(answer);
        }
        Ok(Response::new(HealthCheckResponse {
            status: PbStatus::NotServing as i32,
        }))
    }

    type WatchStream = <HealthService as Health>::WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.inner.watch(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: PbStatus) -> Result<HealthCheckResponse, Status> {
        Ok(HealthCheckResponse {
            status: status as i32,
        })
    }

    #[test]
    fn only_serving_is_healthy() {
        assert!(judge("", answer(PbStatus::Serving)).is_ok());
        for status in [
            PbStatus::NotServing,
            PbStatus::Unknown,
            PbStatus::ServiceUnknown,
        ] {
            let failure = judge("api", answer(status)).unwrap_err();
            assert!(failure.is_unhealthy(), "{failure}");
        }
        assert!(judge("api", Err(Status::not_found("no")))
            .unwrap_err()
            .is_unhealthy());
        let failure = judge("", Err(Status::unavailable("down"))).unwrap_err();
        assert!(!failure.is_unhealthy() && failure.to_string().contains("Unavailable"));
    }

    #[tokio::test]
    async fn check_answers_not_serving_while_not_ready() {
        let readiness = Readiness::new();
        let service = ReadinessHealth {
            inner: HealthService::from_health_reporter(HealthReporter::new()),
            readiness: readiness.clone(),
            _alive: watch::channel(()).0,
        };
        let check = |name: &str| {
            service.check(Request::new(HealthCheckRequest {
                service: name.into(),
            }))
        };
        let status =
            |r: Result<Response<HealthCheckResponse>, Status>| r.unwrap().into_inner().status();
        assert_eq!(status(check("").await), PbStatus::NotServing);
        readiness.set(true);
        assert_eq!(status(check("").await), PbStatus::Serving);
        readiness.set(false);
        assert_eq!(status(check("").await), PbStatus::NotServing);
        assert_eq!(check("unknown").await.unwrap_err().code(), Code::NotFound);
    }
}
