//! Shared helpers for the end-to-end tests: real backends on loopback and real peers.
#![allow(clippy::disallowed_types)]

pub mod backend;
pub mod dnsmasq;
pub mod otlp;
pub mod pki;
pub mod prometheus;
pub mod python;
pub mod stream;
pub mod workload_api;

/// The greeter of the gRPC interop tests (`tests/proto/greeter.proto`), generated
/// by `tests/proto/regenerate.sh` and checked in: a bare machine has no protoc.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod greeter {
    include!("proto/mesh.test.greeter.rs");
}
