//! Whether the inbound server wants new traffic: the signal behind a readiness probe.
//!
//! Why it flips before the drain: a load balancer or Kubernetes keeps sending
//! new requests to an instance until its readiness probe fails. On SIGTERM the
//! server turns not-ready first, keeps accepting for
//! [`InboundOptions::shutdown_delay`](super::InboundOptions::shutdown_delay) so
//! peers have time to notice and stop picking it, then stops accepting and
//! drains what is in flight.
//!
//! ```
//! use axum::{routing::get, Router};
//! use mesh_http::server::Readiness;
//!
//! let readiness = Readiness::new();
//! let probe = readiness.clone();
//! let app: Router = Router::new().route("/ready", get(move || async move { probe.status() }));
//! // InboundServer::bind(..).await?.with_readiness(readiness).serve(app, ..)
//! ```

use axum_core::response::{IntoResponse, Response};
use http::StatusCode;
use std::sync::Arc;
use tokio::sync::watch;

/// A shared ready/not-ready flag that the inbound server sets: ready while it
/// serves, not ready from the moment shutdown begins. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Readiness {
    state: Arc<watch::Sender<bool>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

impl Readiness {
    /// A flag that starts not ready (the server sets it when it starts serving).
    pub fn new() -> Self {
        Readiness {
            state: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Whether the server is serving and not shutting down.
    pub fn is_ready(&self) -> bool {
        *self.state.borrow()
    }

    /// 200 `ready` or 503 `draining`/`not ready`, for a probe route.
    pub fn status(&self) -> ReadinessStatus {
        ReadinessStatus {
            ready: self.is_ready(),
        }
    }

    /// Resolves once the flag equals `ready` (at once if it already does).
    pub async fn wait_for(&self, ready: bool) {
        let mut rx = self.state.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|&now| now == ready).await;
    }

    /// Sets the flag; the server does this itself, an application may too (say,
    /// not ready until a cache is warm, or during a maintenance window).
    pub fn set(&self, ready: bool) {
        self.state.send_replace(ready);
    }
}

/// A readiness answer for a probe route: 200 when ready, 503 otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadinessStatus {
    /// Whether the server is ready.
    pub ready: bool,
}

impl IntoResponse for ReadinessStatus {
    fn into_response(self) -> Response {
        if self.ready {
            (StatusCode::OK, "ready\n").into_response()
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn status_answers_200_when_ready_and_503_when_not() {
        let readiness = Readiness::new();
        assert_eq!(
            readiness.status().into_response().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        readiness.clone().set(true);
        readiness.wait_for(true).await;
        assert_eq!(readiness.status().into_response().status(), StatusCode::OK);
    }
}
