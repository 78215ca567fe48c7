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

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    use super::*;

    fn app() -> Router {
        Router::new().route(
            "/",
            get(|PeerIdentity(peer): PeerIdentity| async move { peer.to_string() }),
        )
    }

    #[tokio::test]
    async fn extractor_yields_the_identity_the_server_attached() {
        let mut request = http::Request::new(Body::empty());
        let peer: SpiffeId = "spiffe://example.org/web".parse().unwrap();
        request.extensions_mut().insert(PeerIdentity(peer));
        let response = app().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn extractor_rejects_a_request_that_bypassed_the_inbound_server_with_500() {
        let response = app()
            .oneshot(http::Request::new(Body::empty()))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
