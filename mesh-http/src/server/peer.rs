//! The peer's SPIFFE identity on each request.

use std::future::Future;

use axum_core::extract::FromRequestParts;
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;
use http::StatusCode;
use mesh_core::identity::SpiffeId;

/// The SPIFFE ID the client proved in the mTLS handshake.
///
/// The inbound server puts it in every request's extensions; axum handlers
/// take it as an extractor:
///
/// ```
/// use mesh_http::server::PeerIdentity;
/// async fn whoami(PeerIdentity(peer): PeerIdentity) -> String {
///     peer.to_string()
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity(pub SpiffeId);

/// The request did not arrive through the mesh's inbound server, so no peer
/// identity is known. Answers 500: it is a wiring mistake, not the client's.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("no peer identity on the request: serve the router with mesh_http::server::InboundServer")]
pub struct MissingPeerIdentity;

impl IntoResponse for MissingPeerIdentity {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PeerIdentity {
    type Rejection = MissingPeerIdentity;

    fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> impl Future<Output = Result<Self, Self::Rejection>> + Send {
        let found = parts.extensions.get::<PeerIdentity>().cloned();
        async move { found.ok_or(MissingPeerIdentity) }
    }
}
