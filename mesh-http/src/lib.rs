//! hyper glue for the in-process mesh: the outbound [`MeshClient`] and the inbound
//! mTLS [`server`] for axum.
#![forbid(unsafe_code)]

pub mod body;
pub mod client;
pub mod connect;
pub mod error;
mod mesh;
mod pool;
pub mod server;

pub use body::ResponseBody;
pub use client::MeshClient;
pub use error::{BoxError, Error};
pub use mesh::Mesh;
