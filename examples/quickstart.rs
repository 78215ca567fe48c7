//! Quickstart (arrives with the foundation issue).
fn main() {}
