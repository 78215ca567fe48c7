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

/// Mutual TLS with the workload's SPIFFE identity: TCP, then a TLS 1.3 handshake
/// that presents our SVID and accepts only a server whose SPIFFE ID matches what
/// the service expects, verified against its own trust domain's bundle. The
/// current SVID is read at each handshake, so rotation needs no rebuild.
#[derive(Clone)]
pub struct MtlsConnector {
    tls: tokio_rustls::TlsConnector,
    service: Arc<str>,
}

impl std::fmt::Debug for MtlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtlsConnector")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl MtlsConnector {
    /// A connector for the service `service` whose servers must present
    /// `expected`, over which the client speaks `protocol`.
    ///
    /// ALPN offers that protocol only (`http/1.1`, or `h2` for HTTP/2 and
    /// gRPC): offering both would let the server pick `h2` for a connection
    /// the client then speaks HTTP/1.1 on, which a strict server refuses and
    /// which keeps ours guessing the protocol from the first bytes.
    pub fn new(
        identity: &mesh_core::identity::IdentitySource,
        expected: mesh_core::identity::ExpectedIdentity,
        service: &str,
        protocol: mesh_core::config::Protocol,
    ) -> Self {
        let mut config = (*mesh_core::tls::client_config(identity, expected)).clone();
        let alpn: &[u8] = if protocol.is_http2() {
            b"h2"
        } else {
            b"http/1.1"
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        MtlsConnector {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            service: service.into(),
        }
    }
}

impl Connect for MtlsConnector {
    fn connect(&self, addr: SocketAddr, server_name: &str) -> ConnectFuture {
        let tls = self.tls.clone();
        let service = self.service.clone();
        // SNI names the logical service; the peer is verified by its SPIFFE ID, not
        // by this name, so a name that is not a valid DNS name falls back to the IP.
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .unwrap_or_else(|_| rustls::pki_types::ServerName::from(addr.ip()));
        Box::pin(async move {
            let tcp = TcpConnector.connect(addr, "").await?;
            match tls.connect(name, tcp).await {
                Ok(stream) => Ok(Box::new(stream) as BoxedIo),
                Err(e) => {
                    let reason = e
                        .get_ref()
                        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                        .map_or("io", mesh_core::tls::failure_reason);
                    metrics::counter!(
                        mesh_core::metric_names::TLS_HANDSHAKE_FAILURES.name,
                        mesh_core::metric_names::label::REASON => reason,
                        mesh_core::metric_names::label::SERVICE => service.to_string(),
                    )
                    .increment(1);
                    Err(e)
                }
            }
        })
    }
}
