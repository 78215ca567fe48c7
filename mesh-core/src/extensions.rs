//! Request and response extensions through which the mesh's layers talk to each
//! other (and callers to the mesh) about one request.

use std::net::SocketAddr;

/// Endpoints earlier attempts of this request went to. A layer that makes a new
/// attempt (retry, hedge) sets it; the balancer avoids these endpoints when others
/// are ready.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TriedEndpoints(pub Vec<SocketAddr>);

/// The endpoint that answered, set on responses by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServedBy(pub SocketAddr);
