//! The inbound server: terminates mTLS and serves an axum router (or any
//! tower service) over HTTP/1.1 and HTTP/2.
//!
//! Why not `axum::serve` with a TLS listener: it awaits `accept()` serially, so
//! a TLS handshake inside `accept()` makes every client wait for the slowest
//! one. Here the accept loop only accepts; each connection's handshake runs in
//! its own task under a timeout, so 200 idle connections that never send a
//! ClientHello cost nothing but their own sockets.
//!
//! ```no_run
//! # async fn run(tls: std::sync::Arc<rustls::ServerConfig>) -> std::io::Result<()> {
//! use axum::{routing::get, Router};
//! use mesh_http::server::{InboundServer, PeerIdentity};
//!
//! let app = Router::new().route("/", get(|PeerIdentity(peer): PeerIdentity| async move {
//!     format!("hello {peer}")
//! }));
//! let server = InboundServer::bind("127.0.0.1:8443".parse().unwrap(), tls).await?;
//! server.serve(app, mesh_http::server::shutdown_signal()).await;
//! # Ok(()) }
//! ```

pub mod authz;
mod connection;
mod header_timeout;
mod options;
mod peer;
mod readiness;
mod stack;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use mesh_core::backoff::ExponentialBackoff;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

pub use authz::{Authz, AuthzLayer};
pub use options::InboundOptions;
pub use peer::{MissingPeerIdentity, PeerIdentity};
pub use readiness::{Readiness, ReadinessStatus};
pub(crate) use stack::InboundStack;

/// Wait after an accept error such as EMFILE, so a full file table does not
/// turn the accept loop into a busy loop: 5 ms doubling up to one second.
fn accept_backoff() -> ExponentialBackoff {
    ExponentialBackoff::new(Duration::from_millis(5), Duration::from_secs(1), 0.1)
}

/// An mTLS listener serving HTTP/1.1 and HTTP/2 with the peer's SPIFFE ID on
/// every request (see [`PeerIdentity`]).
#[derive(Debug)]
pub struct InboundServer {
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    options: InboundOptions,
    readiness: Readiness,
    /// Put on every request with the peer's identity (see `mark_requests`).
    marks: http::Extensions,
}

impl InboundServer {
    /// Binds `addr` (port 0 picks a free port; see [`local_addr`](Self::local_addr)).
    /// `tls` is usually `mesh_core::tls::server_config(..)`.
    pub async fn bind(addr: SocketAddr, tls: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        Ok(Self::from_listener(TcpListener::bind(addr).await?, tls))
    }

    /// Serves on an already bound listener.
    pub fn from_listener(listener: TcpListener, tls: Arc<rustls::ServerConfig>) -> Self {
        Self {
            listener,
            tls,
            options: InboundOptions::default(),
            readiness: Readiness::new(),
            marks: http::Extensions::new(),
        }
    }

    /// The server's readiness flag: ready once [`serve`](Self::serve) runs,
    /// not ready as soon as its shutdown begins. Route it to a probe with
    /// [`Readiness::status`].
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Uses `readiness` as the server's flag (one shared with other parts of
    /// the application, say).
    pub fn with_readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    /// Replaces the edge limits and timeouts.
    pub fn with_options(mut self, options: InboundOptions) -> Self {
        self.options = options;
        self
    }

    /// Puts `mark` on every request, with the peer's identity: a clone of the
    /// connection's extensions carries it, so it costs no insert per request.
    /// For the mesh's own layers (the server telemetry's marker).
    pub(crate) fn mark_requests<T: Clone + Send + Sync + 'static>(mut self, mark: T) -> Self {
        self.marks.insert(mark);
        self
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `service` until `shutdown` completes; then turns
    /// [not ready](Self::readiness), keeps accepting for the shutdown delay,
    /// stops accepting, lets in-flight requests finish within the grace period
    /// and closes what is left. Returns when every connection is closed.
    pub async fn serve<S, B, F>(self, service: S, shutdown: F)
    where
        S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        F: Future<Output = ()>,
    {
        let Self {
            listener,
            tls,
            options,
            readiness,
            marks,
        } = self;
        let delay = options.shutdown_delay;
        // Readiness flips first, so probes fail while the listener still serves.
        let shutdown = async {
            shutdown.await;
            readiness.set(false);
            tracing::info!(
                ?delay,
                "inbound server not ready; draining after the shutdown delay"
            );
            tokio::time::sleep(delay).await;
        };
        let grace = options.grace_period;
        let connections = Arc::new(Semaphore::new(options.max_connections));
        let shared = Arc::new(connection::Shared {
            acceptor: TlsAcceptor::from(tls),
            http1: http1_builder(&options),
            auto: auto_builder(&options),
            options,
            marks,
        });
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut accept_errors = 0u32;
        tokio::pin!(shutdown);
        readiness.set(true);

        loop {
            // At the connection cap, stop accepting until one closes.
            let permit = tokio::select! {
                permit = connections.clone().acquire_owned() => {
                    permit.expect("the semaphore is never closed")
                }
                () = &mut shutdown => break,
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = &mut shutdown => break,
            };
            match accepted {
                Ok((tcp, remote)) => {
                    accept_errors = 0;
                    let _ = tcp.set_nodelay(true);
                    tasks.spawn(connection::serve(
                        shared.clone(),
                        service.clone(),
                        tcp,
                        remote,
                        stopped.clone(),
                        permit,
                    ));
                }
                // The peer gave up between SYN and accept: nothing to wait for.
                Err(error) if is_per_connection(&error) => {}
                Err(error) => {
                    let wait = accept_backoff().delay(accept_errors);
                    accept_errors = accept_errors.saturating_add(1);
                    tracing::warn!(%error, ?wait, "inbound accept failed; backing off");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = &mut shutdown => break,
                    }
                }
            }
            // Reap finished connection tasks so the set stays small.
            while tasks.try_join_next().is_some() {}
        }

        drop(listener);
        stop.send_replace(true);
        drain(tasks, grace).await;
    }
}

/// Resolves when the process receives SIGTERM (what Kubernetes sends) or
/// Ctrl-C: pass it to [`InboundServer::serve`] as the shutdown future.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received; draining inbound connections");
}

/// Waits for connections to finish, up to `grace`; then closes the rest.
async fn drain(mut tasks: JoinSet<()>, grace: Duration) {
    let all_done = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, all_done).await.is_err() {
        tracing::warn!(
            remaining = tasks.len(),
            "grace period over; closing remaining inbound connections"
        );
        tasks.shutdown().await;
    }
}

/// The HTTP/1 settings, written once for hyper's builder and the auto
/// builder's (whose methods have the same names). The header-read timeout is
/// not among them: a connection whose ALPN chose HTTP/1.1 enforces its own
/// (see `header_timeout`), the auto builder uses hyper's.
macro_rules! http1_settings {
    ($builder:expr, $options:expr) => {
        $builder.max_buf_size($options.max_header_bytes)
    };
}

/// The HTTP/2 settings, likewise.
macro_rules! http2_settings {
    ($builder:expr, $options:expr) => {
        $builder
            .timer(TokioTimer::new())
            .max_concurrent_streams($options.h2_max_concurrent_streams)
            .max_pending_accept_reset_streams($options.h2_max_pending_accept_reset_streams)
            .max_local_error_reset_streams($options.h2_max_local_error_reset_streams)
            .max_header_list_size(u32::try_from($options.max_header_bytes).unwrap_or(u32::MAX))
            // Pings find peers that vanished without a FIN, so they stop holding
            // a connection slot.
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
    };
}

/// For connections whose ALPN chose HTTP/1.1.
fn http1_builder(options: &InboundOptions) -> http1::Builder {
    let mut builder = http1::Builder::new();
    http1_settings!(builder, options);
    builder
}

/// For connections ALPN did not settle on HTTP/1.1: either version, told apart
/// by the first bytes.
fn auto_builder(options: &InboundOptions) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    http1_settings!(builder.http1(), options)
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    http2_settings!(builder.http2(), options);
    builder
}

/// Accept errors that concern one connection only, not the listener.
fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}
