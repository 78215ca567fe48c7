//! hyper/hyper-util glue for the in-process mesh.
