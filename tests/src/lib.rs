//! Shared helpers for the end-to-end tests: real backends on loopback and real peers.
#![allow(clippy::disallowed_types)]

pub mod backend;
pub mod dnsmasq;
pub mod otlp;
pub mod pki;
pub mod prometheus;
