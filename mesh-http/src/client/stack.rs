//! The order of the outbound layers, in one place (architecture.md): nothing else
//! knows the full stack.
//!
//! ```text
//! telemetry (call) ─▶ request timeout ─▶ telemetry (attempt) ─▶ endpoint dispatch
//! ```
//! Retries, breakers and telemetry slot in above the dispatch as they arrive.

use mesh_core::config::ServiceConfig;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

use super::dispatch::EndpointDispatch;
use super::service::ServiceStack;
use crate::telemetry::{AttemptTelemetryLayer, ClientTelemetryLayer};

/// Builds the stack every request to the service `config` describes goes through.
pub(crate) fn service_stack(config: &ServiceConfig, dispatch: EndpointDispatch) -> ServiceStack {
    let stack = ServiceBuilder::new()
        .layer(ClientTelemetryLayer::new(&config.name))
        .option_layer(config.timeout.map(tower::timeout::TimeoutLayer::new))
        .layer(AttemptTelemetryLayer::new(&config.name))
        .service(dispatch);
    BoxCloneSyncService::new(stack.map_err(Into::into))
}
