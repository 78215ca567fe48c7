//! Starting a [`Mesh`] with the gRPC pieces mesh-http cannot hold itself.
//!
//! mesh-http does not compile tonic, so a `Mesh` it builds alone has no
//! `grpc.health.v1` probe: a service configured with
//! `MESH_SERVICE_<NAME>_HEALTH_CHECK_GRPC_SERVICE` makes its start-up fail. These
//! calls build the mesh with [`GrpcHealthProbe`] already given.
//!
//! ```no_run
//! # async fn run() -> Result<(), mesh_http::BoxError> {
//! let mesh = mesh_grpc::start_mesh_from_env().await?;
//! # let _ = mesh; Ok(()) }
//! ```

use mesh_core::config::MeshConfig;
use mesh_http::{BoxError, Mesh, MeshBuilder};

use crate::health::GrpcHealthProbe;

/// [`Mesh::builder`] with the `grpc.health.v1` probe set; finish it with
/// `.build()` (as [`Mesh::new`]) or `.start().await` (as [`Mesh::start`]).
pub fn mesh_builder(config: MeshConfig) -> MeshBuilder {
    Mesh::builder(config).grpc_health_probe(GrpcHealthProbe)
}

/// [`Mesh::start_from_env`] with the `grpc.health.v1` probe: reads `MESH_`
/// variables (and `MESH_CONFIG_FILE`, `SPIFFE_ENDPOINT_SOCKET`) and starts the
/// mesh, so `HEALTH_CHECK_GRPC_SERVICE` works for its services.
pub async fn start_mesh_from_env() -> Result<Mesh, BoxError> {
    mesh_builder(MeshConfig::from_env()?).start().await
}
