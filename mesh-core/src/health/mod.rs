//! Active health checks: probe every endpoint of a service on a timer and take the
//! ones that keep failing out of rotation until they pass again.
//!
//! This module is protocol-agnostic: it owns the schedule (interval with jitter,
//! timeout), the thresholds and the lifecycle of the probes, and asks a [`Probe`]
//! whether one endpoint is healthy. `mesh-http` supplies the HTTP probe (`GET` a
//! path, 2xx is healthy) and `mesh-grpc` the `grpc.health.v1` one.
//!
//! Health composes with the balancer's other signals rather than overwriting them:
//! a failed check sets a flag of its own on the endpoint
//! ([`EndpointHandle::set_healthy`](crate::balance::EndpointHandle::set_healthy)),
//! independent of outlier ejection and of reachability, so the endpoint takes
//! traffic only when all three allow it; and like ejections it is ignored when the
//! balancer is in panic mode (too few endpoints ready).
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use mesh_core::balance::{Balancer, BalancerSettings};
//! # use mesh_core::health::{HealthChecker, HealthCheckSettings, Probe};
//! # fn run(probe: Arc<dyn Probe>) {
//! let balancer = Balancer::new("users", BalancerSettings::default(), |e, _| e.addr);
//! // Probes start and stop as discovery adds and removes endpoints; dropping the
//! // checker stops them all.
//! let checker = HealthChecker::spawn(&balancer, HealthCheckSettings::default(), probe);
//! # drop(checker); }
//! ```

mod checker;
#[cfg(test)]
mod tests;
mod tracker;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::discovery::Endpoint;

pub use checker::HealthChecker;

/// What to ask an endpoint, and how often.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// The question: an HTTP path or a `grpc.health.v1` service.
    pub kind: HealthCheckKind,
    /// Schedule and thresholds.
    pub settings: HealthCheckSettings,
}

/// The question a health check asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheckKind {
    /// `GET` this path (with its query, if any); any 2xx answer is healthy.
    Http {
        /// The path, starting with `/`.
        path: String,
    },
    /// `grpc.health.v1.Health/Check` for this service; only `SERVING` is healthy.
    Grpc {
        /// The service name passed to `Check`; empty for the whole server.
        service: String,
    },
}

/// Schedule and thresholds of a health check. The defaults are Kubernetes' probe
/// defaults (every 10 s, 1 s timeout, 3 failures to fail), except that two
/// successes in a row bring an endpoint back (Google Cloud load balancers' default),
/// so that one lucky answer does not put a flapping endpoint back.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckSettings {
    /// Time between two probes of one endpoint (each wait is jittered).
    pub interval: Duration,
    /// Time a probe may take; a slower one counts as failed.
    pub timeout: Duration,
    /// Successes in a row that put an unhealthy endpoint back in rotation. A new
    /// endpoint needs only one (as in Envoy), so it joins at its first answer.
    pub healthy_threshold: u32,
    /// Failures in a row that take a healthy endpoint out of rotation.
    pub unhealthy_threshold: u32,
    /// Each wait between probes is `interval` × a random factor within
    /// 1 ± `jitter`, so that endpoints are not probed in lockstep (0.1).
    pub jitter: f64,
}

impl Default for HealthCheckSettings {
    fn default() -> Self {
        HealthCheckSettings {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            jitter: 0.1,
        }
    }
}

/// The future a [`Probe`] returns.
pub type ProbeFuture = Pin<Box<dyn Future<Output = Result<(), ProbeFailure>> + Send>>;

/// Asks one endpoint whether it is healthy. The checker bounds each call with the
/// check's timeout, so a probe need not time itself out.
pub trait Probe: Send + Sync + 'static {
    /// Probes `endpoint` once: `Ok` when it answered healthy.
    fn check(&self, endpoint: &Endpoint) -> ProbeFuture;
}

/// Why a probe failed.
#[derive(Debug)]
pub struct ProbeFailure {
    kind: FailureKind,
    detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureKind {
    Connect,
    Timeout,
    Unhealthy,
    Other,
}

impl ProbeFailure {
    /// No connection could be opened (or its handshake failed).
    pub fn connect(detail: impl fmt::Display) -> Self {
        Self::new(FailureKind::Connect, detail)
    }

    /// The endpoint answered, and the answer says it is not healthy (a non-2xx
    /// status, `NOT_SERVING`).
    pub fn unhealthy(detail: impl fmt::Display) -> Self {
        Self::new(FailureKind::Unhealthy, detail)
    }

    /// Any other failure (a broken connection, a malformed answer).
    pub fn other(detail: impl fmt::Display) -> Self {
        Self::new(FailureKind::Other, detail)
    }

    pub(crate) fn timeout(timeout: Duration) -> Self {
        Self::new(
            FailureKind::Timeout,
            format!("no answer within {timeout:?}"),
        )
    }

    fn new(kind: FailureKind, detail: impl fmt::Display) -> Self {
        ProbeFailure {
            kind,
            detail: detail.to_string(),
        }
    }

    /// True when the endpoint answered that it is not healthy.
    pub fn is_unhealthy(&self) -> bool {
        self.kind == FailureKind::Unhealthy
    }

    /// True when the probe got no answer in time.
    pub fn is_timeout(&self) -> bool {
        self.kind == FailureKind::Timeout
    }

    /// True when no connection could be opened.
    pub fn is_connect(&self) -> bool {
        self.kind == FailureKind::Connect
    }

    /// The bounded reason word of the `mesh.health_checks` metric.
    pub(crate) fn reason(&self) -> &'static str {
        match self.kind {
            FailureKind::Connect => "connect",
            FailureKind::Timeout => "timeout",
            FailureKind::Unhealthy => "unhealthy",
            FailureKind::Other => "error",
        }
    }
}

impl fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            FailureKind::Connect => "could not connect",
            FailureKind::Timeout => "timed out",
            FailureKind::Unhealthy => "answered unhealthy",
            FailureKind::Other => "failed",
        };
        write!(f, "health check {what}: {}", self.detail)
    }
}

impl std::error::Error for ProbeFailure {}
