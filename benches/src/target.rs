//! The configurations under test, each a small adapter behind [`Target`]: one
//! call sends one POST with the 1 KiB payload and reads the whole response.
//!
//! - [`RawTarget`] over [`TlsConnect`]: hyper's HTTP/1.1 client connection plus
//!   tokio-rustls, with the thinnest pool that works (a stack of idle
//!   connections). This is the physical limit.
//! - [`RawTarget`] over [`TcpConnect`] to nginx: the application's side of the
//!   sidecar path (plain HTTP to a local proxy).
//! - [`MeshTarget`]: `MeshClient` built from `MESH_` variables.
//!
//! A new configuration implements [`Target`] and adds a row to `compare`'s
//! configuration list; one whose process-wide set-up differs (`mesh+otel`)
//! runs its `Target` in a helper process ([`crate::remote`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use mesh_http::connect::{BoxedIo, Connect, ConnectFuture};
use mesh_http::MeshClient;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

use crate::server::payload;

/// Errors of one call, boxed: the bench only counts them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed call future.
pub type CallFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

/// One configuration's client.
pub trait Target: Send + Sync + 'static {
    /// Sends one request and reads the whole response; `Err` unless it is a 200.
    fn call(&self) -> CallFuture;
}

/// Plain TCP with `TCP_NODELAY`.
#[derive(Debug, Clone, Copy)]
pub struct TcpConnect;

impl Connect for TcpConnect {
    fn connect(&self, addr: SocketAddr, _server_name: &str) -> ConnectFuture {
        Box::pin(async move {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            Ok(Box::new(tcp) as BoxedIo)
        })
    }
}

/// TCP then a tokio-rustls client handshake with the bench's client
/// certificate. Also the mesh's transport until the mesh's own SPIFFE
/// connector is on main.
#[derive(Clone)]
pub struct TlsConnect {
    tls: TlsConnector,
    /// When set, verify this name instead of the one the caller passes.
    server_name: Option<rustls::pki_types::ServerName<'static>>,
}

impl std::fmt::Debug for TlsConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnect").finish_non_exhaustive()
    }
}

impl TlsConnect {
    /// Connects with `config`, verifying the name the caller passes.
    pub fn new(config: Arc<rustls::ClientConfig>) -> Self {
        TlsConnect {
            tls: TlsConnector::from(config),
            server_name: None,
        }
    }

    /// Connects with `config`, always verifying `name`.
    pub fn with_name(config: Arc<rustls::ClientConfig>, name: &str) -> io::Result<Self> {
        let name = rustls::pki_types::ServerName::try_from(name.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(TlsConnect {
            tls: TlsConnector::from(config),
            server_name: Some(name),
        })
    }
}

impl Connect for TlsConnect {
    fn connect(&self, addr: SocketAddr, server_name: &str) -> ConnectFuture {
        let tls = self.tls.clone();
        let name = match &self.server_name {
            Some(name) => Ok(name.clone()),
            None => rustls::pki_types::ServerName::try_from(server_name.to_string())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e)),
        };
        Box::pin(async move {
            let name = name?;
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            Ok(Box::new(tls.connect(name, tcp).await?) as BoxedIo)
        })
    }
}

/// hyper's HTTP/1.1 client connection over any [`Connect`], with a stack of
/// idle connections: the least a client can do.
pub struct RawTarget {
    inner: Arc<RawInner>,
}

struct RawInner {
    addr: SocketAddr,
    host: &'static str,
    connect: Box<dyn Connect>,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    /// One permit per connection: a request beyond the cap waits for a
    /// connection, as the mesh's capped pool does.
    connections: Arc<Semaphore>,
}

impl std::fmt::Debug for RawTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawTarget")
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

impl RawTarget {
    /// Sends to `addr` with `Host: host` over at most `max_connections`
    /// connections from `connect`.
    pub fn new(
        addr: SocketAddr,
        host: &'static str,
        connect: impl Connect,
        max_connections: usize,
    ) -> Self {
        RawTarget {
            inner: Arc::new(RawInner {
                addr,
                host,
                connect: Box::new(connect),
                idle: Mutex::new(Vec::new()),
                connections: Arc::new(Semaphore::new(max_connections)),
            }),
        }
    }
}

impl RawInner {
    async fn checkout(&self) -> Result<SendRequest<Full<Bytes>>, BoxError> {
        loop {
            let idle = self.idle.lock().pop();
            match idle {
                Some(sender) if !sender.is_closed() => return Ok(sender),
                Some(_) => continue,
                None => break,
            }
        }
        let io = self.connect.connect(self.addr, self.host).await?;
        let (sender, conn) = http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    async fn call(self: Arc<Self>) -> Result<(), BoxError> {
        let _permit = self.connections.acquire().await?;
        let mut sender = self.checkout().await?;
        sender.ready().await?;
        let request = Request::post("/echo")
            .header(header::HOST, self.host)
            .body(Full::new(payload()))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        self.idle.lock().push(sender);
        check(status)
    }
}

impl Target for RawTarget {
    fn call(&self) -> CallFuture {
        Box::pin(self.inner.clone().call())
    }
}

/// `MeshClient` sending to the logical service `bench`.
#[derive(Debug, Clone)]
pub struct MeshTarget {
    client: MeshClient,
}

impl MeshTarget {
    /// Wraps a client whose configuration knows the service `bench`.
    pub fn new(client: MeshClient) -> Self {
        MeshTarget { client }
    }
}

impl Target for MeshTarget {
    fn call(&self) -> CallFuture {
        let client = self.client.clone();
        Box::pin(async move {
            let request = Request::post("http://bench/echo").body(
                Full::new(payload())
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )?;
            let response = client.send(request).await?;
            let status = response.status();
            response.into_body().collect().await?;
            check(status)
        })
    }
}

fn check(status: StatusCode) -> Result<(), BoxError> {
    if status == StatusCode::OK {
        Ok(())
    } else {
        Err(format!("unexpected status {status}").into())
    }
}
