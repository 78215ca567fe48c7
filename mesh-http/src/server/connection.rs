//! One inbound connection: TLS handshake (bounded in time), then HTTP.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::ConnectInfo;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use mesh_core::metric_names::{label, TLS_HANDSHAKE_FAILURES};
use mesh_core::tls::{failure_reason, peer_spiffe_id};
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio_rustls::TlsAcceptor;
use tower::util::Oneshot;
use tower::ServiceExt;

use super::options::InboundOptions;
use super::PeerIdentity;
use crate::error::BoxError;

/// What every connection task shares.
pub(crate) struct Shared {
    pub(crate) acceptor: TlsAcceptor,
    /// For connections whose ALPN settled on HTTP/1.1.
    pub(crate) http1: http1::Builder,
    /// For every other connection: tells the versions apart by the first
    /// bytes (it wraps the stream to replay them, which costs on every read).
    pub(crate) auto: auto::Builder<TokioExecutor>,
    pub(crate) options: InboundOptions,
}

/// The HTTP version a connection speaks, as far as the handshake tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    /// ALPN `h2`, or none: either version may follow.
    Sniff,
}

impl Protocol {
    /// Only ALPN `http/1.1` settles the version. After `h2`, clients that offer
    /// both and speak HTTP/1.1 anyway (the mesh's own `MtlsConnector` did until
    /// it learnt to offer only what it speaks) are still served, as the
    /// sniffing server always served them.
    fn from_alpn(alpn: Option<&[u8]>) -> Self {
        match alpn {
            Some(b"http/1.1") => Protocol::Http1,
            _ => Protocol::Sniff,
        }
    }
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

    let session = tls.get_ref().1;
    // The verifier requires a client SVID, so a finished handshake has one.
    let Some(peer) = peer_spiffe_id(session) else {
        count_failure("no_client_certificate");
        return;
    };
    let protocol = Protocol::from_alpn(session.alpn_protocol());
    let service = WithPeer {
        inner: service,
        peer: PeerIdentity(peer),
        remote: ConnectInfo(remote),
    };
    let io = TokioIo::new(tls);
    let result = match protocol {
        Protocol::Http1 => {
            let conn = shared.http1.serve_connection(io, service).with_upgrades();
            drive(conn, &mut shutdown).await
        }
        Protocol::Sniff => {
            let conn = shared.auto.serve_connection_with_upgrades(io, service);
            drive(conn, &mut shutdown).await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%remote, %error, "inbound connection ended with an error");
    }
}

/// A connection that can be asked to finish what it has and take nothing new.
trait GracefulConnection: Future<Output = Result<(), Self::Error>> {
    type Error: Into<BoxError>;
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> GracefulConnection for http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Error = hyper::Error;
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

impl<I, S, B> GracefulConnection for auto::UpgradeableConnection<'_, I, S, TokioExecutor>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: auto::HttpServerConnExec<S::Future, B>,
{
    type Error = Box<dyn std::error::Error + Send + Sync>;
    fn graceful_shutdown(self: Pin<&mut Self>) {
        auto::UpgradeableConnection::graceful_shutdown(self);
    }
}

/// Runs `conn` to its end; once shutdown begins, lets it finish in-flight
/// requests and refuse new ones (GOAWAY / `Connection: close`).
async fn drive<C: GracefulConnection>(
    conn: C,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), BoxError> {
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stopped(shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    result.map_err(Into::into)
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
        let extensions = request.extensions_mut();
        extensions.insert(self.peer.clone());
        extensions.insert(self.remote);
        self.inner.clone().oneshot(request)
    }
}

#[cfg(test)]
mod tests {
    use super::Protocol;

    #[test]
    fn only_alpn_http1_skips_sniffing() {
        assert_eq!(Protocol::from_alpn(Some(b"http/1.1")), Protocol::Http1);
        assert_eq!(Protocol::from_alpn(Some(b"h2")), Protocol::Sniff);
        assert_eq!(Protocol::from_alpn(None), Protocol::Sniff);
        assert_eq!(Protocol::from_alpn(Some(b"spdy/3")), Protocol::Sniff);
    }
}
