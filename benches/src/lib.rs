//! Benchmark harness for the in-process mesh: an open-loop load generator,
//! the configurations it compares (raw hyper + rustls, the mesh, an
//! nginx → haproxy sidecar pair, tonic over `Channel` and over `MeshChannel`) and what they measure. The `compare` binary
//! runs them interleaved; see `BENCHMARKS.md`.

pub mod grpc;
pub mod load;
pub mod pki;
pub mod procstat;
pub mod report;
pub mod server;
pub mod sidecar;
pub mod target;
