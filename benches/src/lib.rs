//! Benchmark support for the in-process mesh.
