//! Applies a [`mesh_core::authz::Policy`] to inbound requests.
//!
//! Put [`AuthzLayer`] around an axum router (or any HTTP service) served by
//! [`InboundServer`](super::InboundServer); [`Mesh::serve`](crate::Mesh::serve)
//! does it for you when `MESH_AUTHZ_RULES` or `MESH_AUTHZ_DEFAULT` are set.
//!
//! - The peer is the request's [`PeerIdentity`] (none: only `*` rules match it).
//! - A refused request gets 403 saying which rule (by position) or the default
//!   refused it; nothing the peer sent is echoed back.
//! - A path that cannot be made canonical safely gets 400.
//! - A gRPC call (`content-type: application/grpc…`) is refused as gRPC refuses:
//!   `PERMISSION_DENIED` and `INVALID_ARGUMENT` respectively, in a trailers-only
//!   response with the same message
//!   ([`GrpcRefusal`]).
//! - An allowed request is passed on with its path in canonical form, so the
//!   router serves the very path the rules were checked against (`/api/../admin`
//!   cannot be let in as `/api/…` and routed as `/admin`).
//!
//! ```
//! use std::sync::Arc;
//! use mesh_core::authz::{Mode, Policy};
//! use mesh_http::server::AuthzLayer;
//!
//! let policy = Policy::parse(Mode::Deny, "allow spiffe://example.org/ns/prod/* GET /api/*")?;
//! let app: axum::Router = axum::Router::new()
//!     .route("/api/users", axum::routing::get(|| async { "users" }))
//!     .layer(AuthzLayer::new(Arc::new(policy)));
//! # Ok::<(), mesh_core::authz::RuleError>(())
//! ```

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use mesh_core::authz::{DecidedBy, Policy, Verdict};
use mesh_core::classify::{is_grpc, GrpcCode};
use mesh_core::grpc_refusal::GrpcRefusal;
use pin_project_lite::pin_project;

use super::PeerIdentity;

/// Wraps a service in [`Authz`].
#[derive(Debug, Clone)]
pub struct AuthzLayer {
    policy: Arc<Policy>,
}

impl AuthzLayer {
    /// Authorizes requests with `policy`.
    pub fn new(policy: Arc<Policy>) -> Self {
        AuthzLayer { policy }
    }
}

impl<S> tower::Layer<S> for AuthzLayer {
    type Service = Authz<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authz {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// Lets through only the requests its policy allows; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Authz<S> {
    inner: S,
    policy: Arc<Policy>,
}

/// The response body: the inner service's, or the short text of a refusal.
pub type AuthzBody<B> = Either<B, Full<Bytes>>;

impl<S, ReqB, B> tower::Service<Request<ReqB>> for Authz<S>
where
    S: tower::Service<Request<ReqB>, Response = Response<B>>,
    B: http_body::Body<Data = Bytes>,
{
    type Response = Response<AuthzBody<B>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqB>) -> Self::Future {
        let grpc = is_grpc(request.headers());
        let peer = request.extensions().get::<PeerIdentity>().map(|p| &p.0);
        let verdict = self
            .policy
            .authorize(peer, request.method(), request.uri().path());
        let refusal = match verdict {
            Verdict::Allow {
                path: Cow::Borrowed(_),
                ..
            } => None,
            Verdict::Allow {
                path: Cow::Owned(path),
                ..
            } => match with_path(request.uri(), &path) {
                Some(uri) => {
                    *request.uri_mut() = uri;
                    None
                }
                None => Some(refuse(
                    grpc,
                    BAD_PATH,
                    "bad request: the path cannot be normalized safely".into(),
                )),
            },
            Verdict::Deny { by } => Some(refuse(grpc, DENIED, forbidden_text(by))),
            Verdict::BadPath(error) => {
                Some(refuse(grpc, BAD_PATH, format!("bad request: {error}")))
            }
        };
        match refusal {
            Some(response) => ResponseFuture::refused(response),
            None => ResponseFuture::inner(self.inner.call(request)),
        }
    }
}

/// Says which rule refused, by position, never what the peer sent.
fn forbidden_text(by: DecidedBy) -> String {
    match by {
        DecidedBy::Rule(i) => format!("forbidden: refused by authorization rule {}", i + 1),
        DecidedBy::Default => "forbidden: no authorization rule allows this request".into(),
    }
}

/// How a refusal is answered over HTTP and over gRPC.
const DENIED: (StatusCode, GrpcCode) = (StatusCode::FORBIDDEN, GrpcCode::PermissionDenied);
const BAD_PATH: (StatusCode, GrpcCode) = (StatusCode::BAD_REQUEST, GrpcCode::InvalidArgument);

fn refuse(
    grpc: bool,
    (status, code): (StatusCode, GrpcCode),
    text: String,
) -> Response<Full<Bytes>> {
    if grpc {
        return GrpcRefusal::new(code, text).into_response();
    }
    let mut response = Response::new(Full::new(Bytes::from(text + "\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// `uri` with its path replaced and its query kept.
fn with_path(uri: &Uri, path: &str) -> Option<Uri> {
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    Uri::from_parts(parts).ok()
}

pin_project! {
    /// The response of [`Authz`]: the inner service's, or a refusal.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProjection]
    #[derive(Debug)]
    enum Kind<F> {
        Inner { #[pin] future: F },
        Refused { response: Option<Response<Full<Bytes>>> },
    }
}

impl<F> ResponseFuture<F> {
    fn inner(future: F) -> Self {
        ResponseFuture {
            kind: Kind::Inner { future },
        }
    }

    fn refused(response: Response<Full<Bytes>>) -> Self {
        ResponseFuture {
            kind: Kind::Refused {
                response: Some(response),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<AuthzBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProjection::Inner { future } => future
                .poll(cx)
                .map(|result| result.map(|response| response.map(Either::Left))),
            KindProjection::Refused { response } => {
                let response = response.take().expect("polled after completion");
                Poll::Ready(Ok(response.map(Either::Right)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use axum::Router;
    use http_body_util::BodyExt;
    use mesh_core::authz::Mode;
    use tower::{Layer, ServiceExt};

    use super::*;

    fn app(
        mode: Mode,
        rules: &str,
    ) -> impl tower::Service<
        Request<axum::body::Body>,
        Response = Response<AuthzBody<axum::body::Body>>,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone {
        let policy = Arc::new(Policy::parse(mode, rules).unwrap());
        let router = Router::new()
            .route(
                "/api/{*rest}",
                get(|uri: Uri| async move { uri.to_string() }),
            )
            .route("/admin/{*rest}", get(|| async { "admin" }));
        AuthzLayer::new(policy).layer(router)
    }

    async fn get_path(
        svc: impl tower::Service<
            Request<axum::body::Body>,
            Response = Response<AuthzBody<axum::body::Body>>,
            Error = std::convert::Infallible,
        >,
        peer: Option<&str>,
        path: &str,
    ) -> (StatusCode, String) {
        let mut request = Request::get(path).body(axum::body::Body::empty()).unwrap();
        if let Some(peer) = peer {
            request
                .extensions_mut()
                .insert(PeerIdentity(peer.parse().unwrap()));
        }
        let response = svc.oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    const WEB: &str = "spiffe://example.org/ns/prod/sa/web";

    #[tokio::test]
    async fn allowed_requests_reach_the_router_with_the_canonical_path() {
        let svc = app(
            Mode::Deny,
            "allow spiffe://example.org/ns/prod/* GET /api/*",
        );
        let (status, body) = get_path(svc, Some(WEB), "/api//v1/./%75sers?x=1").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "/api/v1/users?x=1");
    }

    #[tokio::test]
    async fn denied_requests_get_403_naming_the_rule_and_never_reach_the_router() {
        let svc = app(Mode::Allow, "deny * * /admin/*");
        let (status, body) = get_path(svc.clone(), Some(WEB), "/api/../admin/x").await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body, "forbidden: refused by authorization rule 1\n");
        let svc = app(Mode::Deny, "allow spiffe://example.org/ns/dev/* * *");
        let (status, body) = get_path(svc, Some(WEB), "/api/x").await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(
            body,
            "forbidden: no authorization rule allows this request\n"
        );
    }

    #[tokio::test]
    async fn requests_without_a_peer_identity_match_only_wildcard_peers() {
        let svc = app(Mode::Deny, "allow spiffe://example.org/* * /api/*");
        assert_eq!(get_path(svc, None, "/api/x").await.0, StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn unnormalizable_paths_get_400() {
        let svc = app(Mode::Allow, "deny * * /admin/*");
        let (status, body) = get_path(svc, Some(WEB), "/admin%2Fx").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("encoded '/'"), "{body}");
    }

    async fn grpc_call(
        svc: impl tower::Service<
            Request<axum::body::Body>,
            Response = Response<AuthzBody<axum::body::Body>>,
            Error = std::convert::Infallible,
        >,
        path: &str,
    ) -> (Response<()>, Bytes) {
        let mut request = Request::post(path)
            .header("content-type", "application/grpc")
            .body(axum::body::Body::empty())
            .unwrap();
        request
            .extensions_mut()
            .insert(PeerIdentity(WEB.parse().unwrap()));
        let (parts, body) = svc.oneshot(request).await.unwrap().into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (Response::from_parts(parts, ()), body)
    }

    #[tokio::test]
    async fn denied_grpc_calls_get_permission_denied_in_a_trailers_only_answer() {
        let svc = app(Mode::Allow, "deny * * /admin/*");
        let (response, body) = grpc_call(svc, "/admin/x").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/grpc");
        assert_eq!(response.headers()["grpc-status"], "7");
        assert_eq!(
            response.headers()["grpc-message"],
            "forbidden: refused by authorization rule 1"
        );
        assert!(body.is_empty(), "the router never answered: {body:?}");
    }

    #[tokio::test]
    async fn grpc_calls_with_unnormalizable_paths_get_invalid_argument() {
        let svc = app(Mode::Allow, "deny * * /admin/*");
        let (response, _) = grpc_call(svc, "/admin%2Fx").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["grpc-status"], "3");
    }
}
