//! Request and response extensions through which the mesh's layers talk to each
//! other (and callers to the mesh) about one request.

use std::net::SocketAddr;

/// Endpoints earlier attempts of this request went to. A layer that makes a new
/// attempt (retry, hedge) sets it; the balancer avoids these endpoints when others
/// are ready.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TriedEndpoints(pub Vec<SocketAddr>);

/// The endpoint that answered, as a response extension.
///
/// The mesh's gRPC channel sets it on its responses (tonic hands callers the
/// extensions). The HTTP client names the endpoint in its response body
/// instead (`mesh_http::ResponseBody::served_by`), which costs no extension
/// map; the client's telemetry layers read either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServedBy(pub SocketAddr);
