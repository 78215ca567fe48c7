//! The order of the outbound layers, in one place (architecture.md): nothing else
//! knows the full stack.
//!
//! ```text
//! telemetry (call: one span and one duration sample per logical request)
//!   ─▶ deadline (service TIMEOUT, inherited deadline, per-request RequestTimeout;
//!                writes x-mesh-timeout-ms / grpc-timeout)
//!   ─▶ (route, breaker: later)
//!   ─▶ retry / hedge (one budget per service; replay buffer; each attempt avoids
//!                     the endpoints earlier ones used)
//!   ─▶ telemetry (attempt: a span per attempt, trace context injected)
//!   ─▶ endpoint dispatch (balancer pick, pooled connection)
//! ```

use std::sync::Arc;

use http::Request;
use http_body_util::BodyExt;
use mesh_core::config::ServiceConfig;
use mesh_core::deadline::OutboundDeadlineLayer;
use mesh_core::replay::ReplayBody;
use mesh_core::retry::{RetryBudget, RetryLayer};
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

use super::classify::error_kind;
use super::dispatch::EndpointDispatch;
use super::service::ServiceStack;
use crate::body::RequestBody;
use crate::telemetry::{AttemptTelemetryLayer, ClientTelemetryLayer};

/// Builds the stack every request to the service `config` describes goes through;
/// `budget` is the service's retry budget, shared by every clone of the client.
pub(crate) fn service_stack(
    config: &ServiceConfig,
    budget: Arc<RetryBudget>,
    dispatch: EndpointDispatch,
) -> ServiceStack {
    let stack = ServiceBuilder::new()
        .layer(ClientTelemetryLayer::new(&config.name))
        .layer(OutboundDeadlineLayer::new(config.timeout))
        .layer(RetryLayer::new(
            config.name.clone(),
            config.retry.clone(),
            budget,
            error_kind,
        ))
        .map_request(|request: Request<ReplayBody<RequestBody>>| {
            request.map(|body| body.boxed_unsync())
        })
        .layer(AttemptTelemetryLayer::new(&config.name))
        .service(dispatch);
    BoxCloneSyncService::new(stack.map_err(Into::into))
}
