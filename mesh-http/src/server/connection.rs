//! One inbound connection: TLS handshake (bounded in time), then HTTP.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use mesh_core::metric_names::{label, TLS_HANDSHAKE_FAILURES};
use mesh_core::tls::{failure_reason, peer_spiffe_id};
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio_rustls::TlsAcceptor;
use tower::util::Oneshot;
use tower::ServiceExt;

use super::options::InboundOptions;
use super::PeerIdentity;
use axum::extract::ConnectInfo;

/// What every connection task shares.
pub(crate) struct Shared {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) http: Builder<TokioExecutor>,
    pub(crate) options: InboundOptions,
}

/// Serves one accepted TCP connection until it closes or shutdown ends it.
/// The permit is held for the connection's whole life (the connection cap).
pub(crate) async fn serve<S, B>(
    shared: Arc<Shared>,
    service: S,
    tcp: TcpStream,
    remote: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let handshake = tokio::time::timeout(
        shared.options.handshake_timeout,
        shared.acceptor.accept(tcp),
    );
    let tls = tokio::select! {
        result = handshake => match result {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                let reason = error
                    .get_ref()
                    .and_then(|e| e.downcast_ref::<rustls::Error>())
                    .map_or("other", failure_reason);
                count_failure(reason);
                tracing::debug!(%remote, %error, reason, "inbound TLS handshake failed");
                return;
            }
            Err(_elapsed) => {
                count_failure("timeout");
                tracing::debug!(%remote, "inbound TLS handshake timed out");
                return;
            }
        },
        () = stopped(&mut shutdown) => return,
    };

    // The verifier requires a client SVID, so a finished handshake has one.
    let Some(peer) = peer_spiffe_id(tls.get_ref().1) else {
        count_failure("no_client_certificate");
        return;
    };
    let service = WithPeer {
        inner: service,
        peer: PeerIdentity(peer),
        remote: ConnectInfo(remote),
    };
    let conn = shared
        .http
        .serve_connection_with_upgrades(TokioIo::new(tls), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%remote, %error, "inbound connection ended with an error");
            }
        }
        () = stopped(&mut shutdown) => {
            // Finish in-flight requests, refuse new ones (GOAWAY / Connection: close).
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Resolves once shutdown has begun (the watch guard must not live across awaits).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn count_failure(reason: &'static str) {
    metrics::counter!(TLS_HANDSHAKE_FAILURES.name, label::REASON => reason).increment(1);
}

/// Puts the peer's identity and socket address (axum's `ConnectInfo`, which the
/// access log and handlers read) on each request before the user's service sees it.
#[derive(Debug, Clone)]
struct WithPeer<S> {
    inner: S,
    peer: PeerIdentity,
    remote: ConnectInfo<SocketAddr>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for WithPeer<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = Oneshot<S, Request<Incoming>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(self.peer.clone());
        request.extensions_mut().insert(self.remote);
        self.inner.clone().oneshot(request)
    }
}
