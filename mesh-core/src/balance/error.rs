//! Errors of picking an endpoint and of parsing a balancer kind.

use std::sync::Arc;

/// Why no endpoint could be picked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    /// Discovery has reported no endpoints for the service (yet).
    #[error("service `{service}` has no endpoints: check its discovery source (MESH_ endpoint settings, DNS records)")]
    NoEndpoints {
        /// The logical service.
        service: Arc<str>,
    },
    /// Endpoints are known but none is reachable and in rotation.
    #[error("none of the {known} endpoints of service `{service}` is ready (all unreachable or ejected)")]
    NoneReady {
        /// The logical service.
        service: Arc<str>,
        /// Endpoints discovery knows.
        known: usize,
    },
    /// Too many requests are already waiting for an endpoint of this service.
    #[error("{limit} requests already wait for an endpoint of service `{service}`; raise the pending limit or add capacity")]
    TooManyPending {
        /// The logical service.
        service: Arc<str>,
        /// The configured limit on waiting requests.
        limit: usize,
    },
}

impl PickError {
    /// True when discovery knows no endpoint.
    pub fn is_no_endpoints(&self) -> bool {
        matches!(self, PickError::NoEndpoints { .. })
    }

    /// True when endpoints are known but none is ready.
    pub fn is_none_ready(&self) -> bool {
        matches!(self, PickError::NoneReady { .. })
    }

    /// True when the wait queue was full.
    pub fn is_too_many_pending(&self) -> bool {
        matches!(self, PickError::TooManyPending { .. })
    }

    /// The service the pick was for.
    pub fn service(&self) -> &str {
        match self {
            PickError::NoEndpoints { service }
            | PickError::NoneReady { service, .. }
            | PickError::TooManyPending { service, .. } => service,
        }
    }

    /// The `mesh.reason` word of the `mesh.balancer.no_endpoint` counter.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            PickError::NoEndpoints { .. } => "no_endpoints",
            PickError::NoneReady { .. } => "none_ready",
            PickError::TooManyPending { .. } => "too_many_pending",
        }
    }
}

/// A balancer kind name that is not one of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown load balancer `{input}`: expected one of p2c-ewma, least-request, round-robin")]
pub struct ParseBalancerKindError {
    pub(crate) input: String,
}
