//! Core of the in-process service mesh.
//!
//! Everything here is independent of hyper and tonic: configuration read from
//! `MESH_` environment variables ([`config`]), service discovery that publishes
//! endpoint snapshots ([`discovery`]), our own load balancer that picks from those
//! snapshots ([`balance`]), the names of every metric the mesh emits
//! ([`metric_names`]), and telemetry set up from the environment in one call
//! ([`telemetry::init`]).
#![forbid(unsafe_code)]

pub mod backoff;
pub mod balance;
pub mod config;
pub mod discovery;
pub mod extensions;
pub mod metric_names;
pub mod telemetry;
