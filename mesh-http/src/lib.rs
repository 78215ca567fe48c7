//! hyper glue for the in-process mesh: [`Mesh`] (one handle from `MESH_`
//! variables), the outbound [`MeshClient`], the inbound mTLS [`server`] for axum,
//! and the [`telemetry`] layers for the client and for any axum router.
#![forbid(unsafe_code)]

pub mod body;
pub mod client;
pub mod connect;
pub mod error;
mod mesh;
mod pool;
pub mod server;
pub mod telemetry;

pub use body::ResponseBody;
pub use client::MeshClient;
pub use error::{BoxError, Error};
pub use mesh::{Mesh, MeshBuilder};
