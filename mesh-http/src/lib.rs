//! hyper glue for the in-process mesh: the outbound [`MeshClient`], and the
//! [`telemetry`] layers for it and for any axum router.
#![forbid(unsafe_code)]

pub mod body;
pub mod client;
pub mod connect;
pub mod error;
mod pool;
pub mod telemetry;

pub use body::ResponseBody;
pub use client::MeshClient;
pub use error::{BoxError, Error};
