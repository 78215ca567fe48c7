//! hyper/hyper-util glue for the in-process mesh.

pub mod server;
