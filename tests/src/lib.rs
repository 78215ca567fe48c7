//! Shared helpers for the end-to-end tests: real backends on loopback and real peers.

pub mod pki;
