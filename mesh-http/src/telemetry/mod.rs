//! Telemetry layers: OpenTelemetry-convention metrics through the `metrics`
//! facade, `tracing` spans that become OpenTelemetry spans, trace context on
//! the wire, and the access log.
//!
//! The client stack puts [`ClientTelemetryLayer`] at the top (one span and one
//! `http.client.request.duration` sample per logical call) and
//! [`AttemptTelemetryLayer`] just above the endpoint dispatch (one span per attempt,
//! and the `traceparent` the server continues). [`ServerTelemetryLayer`] goes on
//! the app's axum router. Set-up (recorder, exporters, propagators) is
//! [`mesh_core::telemetry::init`].

mod access_log;
mod client;
mod scope;
mod server;

pub use access_log::AccessLogSink;
pub use client::{
    error_type, AttemptFuture, AttemptTelemetry, AttemptTelemetryLayer, CallFuture,
    ClientTelemetry, ClientTelemetryLayer,
};
pub(crate) use server::RecordedOutside;
pub use server::{ServerFuture, ServerTelemetry, ServerTelemetryLayer, UNMATCHED_ROUTE};
