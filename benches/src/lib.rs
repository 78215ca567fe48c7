//! Benchmark harness for the in-process mesh: an open-loop load generator,
//! the configurations it compares (raw hyper + rustls, the mesh, an
//! nginx → haproxy sidecar pair, tonic over `Channel` and over `MeshChannel`, the
//! mesh exporting sampled traces to a local OTLP receiver) and what they measure. The `compare` binary
//! runs them interleaved; see `BENCHMARKS.md`.

pub mod grpc;
pub mod load;
pub mod otlp;
pub mod pki;
pub mod procstat;
pub mod remote;
pub mod report;
pub mod server;
pub mod sidecar;
pub mod target;
