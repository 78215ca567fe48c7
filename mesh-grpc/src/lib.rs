//! gRPC glue for the in-process mesh: [`MeshChannel`], a channel any tonic
//! generated client takes, sending its calls through the mesh's outbound stack
//! (discovery, our balancer, mTLS over HTTP/2, retries and hedging under the
//! service's budget, deadlines). [`start_mesh_from_env`] starts a
//! [`Mesh`](mesh_http::Mesh) whose services may use `grpc.health.v1` checks.
//!
//! ```no_run
//! # async fn run() -> Result<(), mesh_http::BoxError> {
//! use mesh_grpc::GrpcChannelExt;
//! // MESH_SERVICE_GREETER_ENDPOINTS=10.0.0.5:50051 MESH_SERVICE_GREETER_PROTOCOL=grpc
//! let mesh = mesh_http::Mesh::from_env()?;
//! let channel = mesh.grpc_channel("greeter")?;
//! // let mut client = GreeterClient::new(channel);
//! # let _ = channel; Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod channel;
pub mod health;
pub mod service_config;
mod start;
mod status;
pub mod telemetry;

pub use channel::{CallFuture, GrpcChannelExt, MeshChannel};
pub use start::{mesh_builder, start_mesh_from_env};
pub use status::status_from_error;
pub use telemetry::GrpcServerTelemetryLayer;
