//! Opening transports to endpoints.
//!
//! The client's pools ask a [`Connect`] for a byte stream and speak HTTP over it;
//! plain TCP is [`TcpConnector`], and mTLS wraps it, so security slots in here
//! without reshaping the client.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A connected byte stream.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A boxed connected stream. Boxing costs one allocation per connection, not per
/// request, and keeps the client free of connector type parameters.
pub type BoxedIo = Box<dyn Io>;

/// A boxed connect future.
pub type ConnectFuture = Pin<Box<dyn Future<Output = io::Result<BoxedIo>> + Send>>;

/// Opens transports to endpoints.
pub trait Connect: Send + Sync + 'static {
    /// Opens a stream to `addr`; `server_name` is the logical service name (the TLS
    /// server name, when the transport is TLS).
    fn connect(&self, addr: SocketAddr, server_name: &str) -> ConnectFuture;
}

/// Plain TCP with `TCP_NODELAY` (requests are small and latency matters more than
/// packet count).
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpConnector;

impl Connect for TcpConnector {
    fn connect(&self, addr: SocketAddr, _server_name: &str) -> ConnectFuture {
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as BoxedIo)
        })
    }
}

/// TLS verified against the system's web PKI roots, for egress to `https` hosts
/// outside the mesh. ALPN offers HTTP/1.1 only: egress pools speak HTTP/1.1.
#[derive(Clone)]
pub struct WebPkiConnector {
    tls: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for WebPkiConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebPkiConnector").finish_non_exhaustive()
    }
}

impl WebPkiConnector {
    /// Trusts the roots the operating system trusts (unreadable ones are skipped
    /// and logged).
    pub fn with_native_roots() -> Self {
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!(%error, "skipping an unreadable system root certificate");
        }
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, "loaded system root certificates for egress");
        Self::with_roots(roots)
    }

    /// Trusts exactly `roots`.
    pub fn with_roots(roots: rustls::RootCertStore) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        WebPkiConnector {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }
}

impl Connect for WebPkiConnector {
    fn connect(&self, addr: SocketAddr, server_name: &str) -> ConnectFuture {
        let tls = self.tls.clone();
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string());
        Box::pin(async move {
            let name = name.map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let tcp = TcpConnector.connect(addr, "").await?;
            let stream = tls.connect(name, tcp).await?;
            Ok(Box::new(stream) as BoxedIo)
        })
    }
}
