//! Core of the in-process service mesh.
//!
//! Everything here is independent of hyper and tonic: configuration read from
//! `MESH_` environment variables ([`config`]), service discovery that publishes
//! endpoint snapshots ([`discovery`]), our own load balancer that picks from those
//! snapshots ([`balance`]), one classification of outcomes ([`classify`]),
//! retries, hedging and their budget ([`retry`]) over replayable bodies
//! ([`replay`]), deadlines carried from inbound to outbound calls ([`deadline`]),
//! SPIFFE workload identity and the rustls configs built on it ([`identity`],
//! [`tls`]), the names of every metric the mesh emits ([`metric_names`]), and
//! telemetry set up from the environment in one call ([`telemetry::init`]).
#![forbid(unsafe_code)]

pub mod authz;
pub mod backoff;
pub mod balance;
pub mod breaker;
pub mod classify;
pub mod clock;
pub mod concurrency;
pub mod config;
pub mod deadline;
pub mod discovery;
pub mod extensions;
pub mod fault;
pub mod grpc_refusal;
pub mod health;
pub mod identity;
pub mod metric_names;
pub mod outlier;
pub mod ratelimit;
pub mod replay;
pub mod retry;
pub mod route;
pub mod telemetry;
pub mod tls;
