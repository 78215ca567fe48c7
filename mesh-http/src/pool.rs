//! Connections to one endpoint: opened lazily, pooled, aged out, and reopened in
//! the background after a failure.
//!
//! HTTP/1.1 keeps a stack of idle connections (most recently used first, so idle
//! ones age out) under an optional cap; HTTP/2 shares one multiplexed connection.
//! When a connection cannot be opened the endpoint is reported unreachable, so the
//! balancer stops picking it, and a task reconnects with backoff and reports it
//! reachable again once a connection is up. Only discovery removes endpoints.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh_core::backoff::ExponentialBackoff;
use mesh_core::clock;
use mesh_core::config::{Protocol, ServiceConfig};
use mesh_core::metric_names::{self, label};
use parking_lot::Mutex;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::body::AttemptBody;
use crate::connect::Connect;
use crate::error::{BoxError, Error};

/// How connections to every endpoint of one service behave.
pub(crate) struct PoolSettings {
    pub(crate) service: Arc<str>,
    pub(crate) protocol: Protocol,
    pub(crate) connect_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_age: Option<Duration>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) http2_keepalive: Option<Duration>,
    pub(crate) connector: Arc<dyn Connect>,
}

impl PoolSettings {
    pub(crate) fn new(config: &ServiceConfig, connector: Arc<dyn Connect>) -> Self {
        PoolSettings {
            service: config.name.as_str().into(),
            protocol: config.protocol,
            connect_timeout: config.connect_timeout,
            idle_timeout: config.idle_timeout,
            max_age: config.max_connection_age,
            max_connections: config.max_connections,
            http2_keepalive: config.http2_keepalive,
            connector,
        }
    }
}

/// A connection checked out for one request.
pub(crate) enum Conn {
    Http1(Http1Conn),
    Http2(http2::SendRequest<AttemptBody>),
}

/// An HTTP/1.1 connection; goes back to the pool when its response has been read.
pub(crate) struct Http1Conn {
    pub(crate) sender: http1::SendRequest<AttemptBody>,
    expires: Expiry,
    /// Holds a place under the per-endpoint cap for as long as the connection lives.
    _permit: Option<Arc<OwnedSemaphorePermit>>,
}

struct Idle {
    conn: Http1Conn,
    /// When it has been idle too long to reuse.
    stale: Expiry,
}

struct Shared {
    sender: http2::SendRequest<AttemptBody>,
    expires: Expiry,
}

/// A moment after which something may no longer be used (`None`: never), kept
/// as the moment rather than its start and length: checking it on every
/// checkout and return is then a comparison, not a duration to work out.
#[derive(Clone, Copy)]
struct Expiry(Option<Instant>);

impl Expiry {
    /// `length` after `start` (never, past the clock's range).
    fn after(start: Instant, length: Duration) -> Self {
        Expiry(start.checked_add(length))
    }

    fn passed(self, now: Instant) -> bool {
        self.0.is_some_and(|at| now >= at)
    }
}

/// Connections to one endpoint.
pub(crate) struct EndpointPool {
    inner: Arc<PoolInner>,
}

pub(crate) struct PoolInner {
    addr: SocketAddr,
    settings: Arc<PoolSettings>,
    report_reachable: Box<dyn Fn(bool) + Send + Sync>,
    is_removed: Box<dyn Fn() -> bool + Send + Sync>,
    idle: Mutex<Vec<Idle>>,
    shared: Mutex<Option<Shared>>,
    /// Serialises HTTP/2 connects so a burst opens one connection, not many.
    h2_connecting: tokio::sync::Mutex<()>,
    limit: Option<Arc<Semaphore>>,
    /// Wakes a request waiting under the cap when a connection comes back.
    returned: Notify,
    reconnecting: AtomicBool,
}

impl std::fmt::Debug for EndpointPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointPool")
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

impl EndpointPool {
    pub(crate) fn new(
        addr: SocketAddr,
        settings: Arc<PoolSettings>,
        report_reachable: impl Fn(bool) + Send + Sync + 'static,
        is_removed: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Self {
        let limit = settings
            .max_connections
            .map(|n| Arc::new(Semaphore::new(n)));
        EndpointPool {
            inner: Arc::new(PoolInner {
                addr,
                settings,
                report_reachable: Box::new(report_reachable),
                is_removed: Box::new(is_removed),
                idle: Mutex::new(Vec::new()),
                shared: Mutex::new(None),
                h2_connecting: tokio::sync::Mutex::new(()),
                limit,
                returned: Notify::new(),
                reconnecting: AtomicBool::new(false),
            }),
        }
    }

    /// A connection ready to carry a request: a pooled one if any is usable, else
    /// a new one. A connect failure marks the endpoint unreachable and starts the
    /// background reconnect.
    pub(crate) async fn checkout(&self) -> Result<Conn, Error> {
        // The usual case: a pooled HTTP/1.1 connection ready for its next request,
        // or the shared HTTP/2 one. Waiting for a connection (to become ready, to
        // come back, or to open: a TLS handshake's state) is boxed: inline, it
        // would make every request's future as large, over a kilobyte, which the
        // allocator's per-thread cache does not keep.
        match self.inner.settings.protocol {
            Protocol::Http1 => match self.inner.take_idle() {
                Some(conn) if conn.sender.is_ready() => Ok(Conn::Http1(conn)),
                taken => Box::pin(self.checkout_http1(taken)).await.map(Conn::Http1),
            },
            Protocol::Http2 | Protocol::Grpc => match self.inner.shared_sender() {
                Some(sender) => Ok(Conn::Http2(sender)),
                None => Box::pin(self.checkout_http2()).await.map(Conn::Http2),
            },
        }
    }

    /// `taken` is an idle connection already taken from the pool, not ready yet.
    async fn checkout_http1(&self, mut taken: Option<Http1Conn>) -> Result<Http1Conn, Error> {
        loop {
            // A connection may have come back since the caller looked; looking
            // first takes no registration for returns (a lock and a waiter entry).
            if let Some(conn) = self.inner.ready_idle(taken.take()).await {
                return Ok(conn);
            }
            // Registered before looking again, so a connection given back between
            // the look and the wait still wakes us.
            let returned = self.inner.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some(conn) = self.inner.ready_idle(None).await {
                return Ok(conn);
            }
            let permit = match &self.inner.limit {
                None => None,
                Some(limit) => match limit.clone().try_acquire_owned() {
                    Ok(permit) => Some(Arc::new(permit)),
                    // At the cap: wait for a connection to come back or to close.
                    Err(_) => tokio::select! {
                        _ = &mut returned => continue,
                        permit = limit.clone().acquire_owned() => {
                            Some(Arc::new(permit.expect("semaphore is never closed")))
                        }
                    },
                },
            };
            return match self.inner.connect_http1(permit).await {
                Ok(conn) => Ok(conn),
                Err(e) => Err(self.connect_failed(e)),
            };
        }
    }

    async fn checkout_http2(&self) -> Result<http2::SendRequest<AttemptBody>, Error> {
        if let Some(sender) = self.inner.shared_sender() {
            return Ok(sender);
        }
        let _connecting = self.inner.h2_connecting.lock().await;
        if let Some(sender) = self.inner.shared_sender() {
            return Ok(sender);
        }
        match self.inner.connect_http2().await {
            Ok(sender) => Ok(sender),
            Err(e) => Err(self.connect_failed(e)),
        }
    }

    fn connect_failed(&self, error: BoxError) -> Error {
        (self.inner.report_reachable)(false);
        PoolInner::spawn_reconnect(&self.inner);
        Error::connect(self.inner.addr, error)
    }

    /// A weak reference for giving a connection back without keeping the pool alive.
    pub(crate) fn downgrade(&self) -> Weak<PoolInner> {
        Arc::downgrade(&self.inner)
    }

    /// Forgets the shared HTTP/2 connection once it has closed.
    pub(crate) fn forget_closed_http2(&self) {
        let mut shared = self.inner.shared.lock();
        if shared.as_ref().is_some_and(|s| s.sender.is_closed()) {
            *shared = None;
        }
    }
}

/// Returns an HTTP/1.1 connection whose response was read to its end.
pub(crate) fn give_back(pool: &Weak<PoolInner>, conn: Http1Conn) {
    if let Some(inner) = pool.upgrade() {
        inner.put_idle(conn);
    }
}

impl PoolInner {
    /// When a connection opened now becomes too old to reuse.
    fn expiry(&self) -> Expiry {
        match self.settings.max_age {
            Some(age) => Expiry::after(Instant::now(), age),
            None => Expiry(None),
        }
    }

    /// The most recently used idle connection that is still open, fresh and
    /// young enough; it may not be ready for its next request yet.
    fn take_idle(&self) -> Option<Http1Conn> {
        // Inside a call's poll: the reading the call's layers share.
        let now = clock::now();
        let mut idle = self.idle.lock();
        while let Some(Idle { conn, stale }) = idle.pop() {
            if stale.passed(now) || conn.expires.passed(now) || conn.sender.is_closed() {
                continue; // dropping the sender closes the connection
            }
            return Some(conn);
        }
        None
    }

    /// An idle connection ready for a request, `first` before the pooled ones,
    /// waiting for each to become ready; `None` once none is left. A connection
    /// comes back as soon as its response has been read, often before its task
    /// has seen that response end and asked for the next request: waiting for
    /// that moment is far cheaper than opening another connection.
    async fn ready_idle(&self, mut first: Option<Http1Conn>) -> Option<Http1Conn> {
        while let Some(mut conn) = first.take().or_else(|| self.take_idle()) {
            if conn.sender.ready().await.is_ok() {
                return Some(conn);
            }
            // Closed while idle: dropped, and the next one is tried.
        }
        None
    }

    fn put_idle(&self, conn: Http1Conn) {
        let now = clock::now();
        if conn.sender.is_closed() || conn.expires.passed(now) || (self.is_removed)() {
            return;
        }
        // Pooled even when its task has not yet asked for the next request: the
        // next checkout waits for that (see `ready_idle`).
        let stale = Expiry::after(now, self.settings.idle_timeout);
        self.idle.lock().push(Idle { conn, stale });
        // Only a capped pool has requests waiting for a connection.
        if self.limit.is_some() {
            self.returned.notify_one();
        }
    }

    fn shared_sender(&self) -> Option<http2::SendRequest<AttemptBody>> {
        let mut shared = self.shared.lock();
        let usable = shared
            .as_ref()
            // Inside a call's poll, as `take_idle`: the call's shared reading.
            .is_some_and(|s| !s.sender.is_closed() && !s.expires.passed(clock::now()));
        if usable {
            shared.as_ref().map(|s| s.sender.clone())
        } else {
            // An aged-out connection finishes its streams in flight and then closes
            // once its last sender is gone.
            *shared = None;
            None
        }
    }

    async fn open(&self) -> Result<TokioIo<crate::connect::BoxedIo>, BoxError> {
        let settings = &self.settings;
        let connecting = settings.connector.connect(self.addr, &settings.service);
        let result = match tokio::time::timeout(settings.connect_timeout, connecting).await {
            Ok(Ok(io)) => Ok(io),
            Ok(Err(e)) => Err((connect_reason(&e), BoxError::from(e))),
            Err(_) => Err((
                "timeout",
                format!("no connection within {:?}", settings.connect_timeout).into(),
            )),
        };
        let (outcome, reason) = match &result {
            Ok(_) => ("ok", "none"),
            Err((reason, _)) => ("error", *reason),
        };
        metrics::counter!(
            metric_names::CONNECTIONS.name,
            label::SERVICE => settings.service.to_string(),
            label::OUTCOME => outcome,
            label::REASON => reason,
        )
        .increment(1);
        result.map(TokioIo::new).map_err(|(_, e)| e)
    }

    async fn connect_http1(
        &self,
        permit: Option<Arc<OwnedSemaphorePermit>>,
    ) -> Result<Http1Conn, BoxError> {
        let io = self.open().await?;
        let (sender, connection) = http1::handshake(io).await?;
        let held = permit.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP/1.1 connection ended with an error");
            }
            drop(held);
        });
        Ok(Http1Conn {
            sender,
            expires: self.expiry(),
            _permit: permit,
        })
    }

    async fn connect_http2(&self) -> Result<http2::SendRequest<AttemptBody>, BoxError> {
        let io = self.open().await?;
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new());
        if let Some(interval) = self.settings.http2_keepalive {
            builder
                .keep_alive_interval(interval)
                .keep_alive_timeout(interval)
                .keep_alive_while_idle(true);
        }
        let (sender, connection) = builder.handshake(io).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
            }
        });
        *self.shared.lock() = Some(Shared {
            sender: sender.clone(),
            expires: self.expiry(),
        });
        Ok(sender)
    }

    /// Reconnects with backoff until a connection is up (then reports the endpoint
    /// reachable and pools the connection), or until discovery removes the
    /// endpoint or the pool is dropped. One task per endpoint at most.
    fn spawn_reconnect(self: &Arc<Self>) {
        if self.reconnecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let backoff = ExponentialBackoff::RECONNECT;
            for attempt in 0u32.. {
                tokio::time::sleep(backoff.delay(attempt)).await;
                let Some(inner) = weak.upgrade() else { return };
                if (inner.is_removed)() {
                    return;
                }
                let connected = match inner.settings.protocol {
                    Protocol::Http1 => inner.reconnect_http1().await,
                    Protocol::Http2 | Protocol::Grpc => inner.connect_http2().await.map(drop),
                };
                if connected.is_ok() {
                    inner.reconnecting.store(false, Ordering::Release);
                    (inner.report_reachable)(true);
                    return;
                }
            }
        });
    }

    async fn reconnect_http1(self: &Arc<Self>) -> Result<(), BoxError> {
        let permit = match &self.limit {
            Some(limit) => match limit.clone().try_acquire_owned() {
                Ok(permit) => Some(Arc::new(permit)),
                // At the cap: connections exist, so the endpoint is reachable.
                Err(_) => return Ok(()),
            },
            None => None,
        };
        let conn = self.connect_http1(permit).await?;
        self.put_idle(conn);
        Ok(())
    }
}

/// A bounded reason word for a failed connect.
fn connect_reason(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "refused",
        ConnectionReset | ConnectionAborted => "reset",
        TimedOut => "timeout",
        InvalidData => "tls",
        _ => "io",
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper::service::service_fn;
    use hyper::{Request, Response};
    use mesh_core::replay::ReplayBody;
    use tokio::net::TcpListener;

    use super::*;
    use crate::connect::TcpConnector;

    /// A plain HTTP/1.1 server on loopback counting the connections it accepts;
    /// a request to `/slow` is answered once `release` is notified, after
    /// `arrived` has been.
    struct Server {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
        arrived: Arc<Notify>,
        release: Arc<Notify>,
    }

    impl Server {
        async fn start() -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let accepted = Arc::new(AtomicUsize::new(0));
            let (arrived, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
            let server = Server {
                addr,
                accepted: accepted.clone(),
                arrived: arrived.clone(),
                release: release.clone(),
            };
            tokio::spawn(async move {
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let (arrived, release) = (arrived.clone(), release.clone());
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        let (arrived, release) = (arrived.clone(), release.clone());
                        async move {
                            if request.uri().path() == "/slow" {
                                arrived.notify_one();
                                release.notified().await;
                            }
                            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
                        }
                    });
                    tokio::spawn(
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service),
                    );
                }
            });
            server
        }
    }

    fn pool(addr: SocketAddr) -> EndpointPool {
        pool_with(addr, Duration::from_secs(90), None)
    }

    fn pool_with(
        addr: SocketAddr,
        idle_timeout: Duration,
        max_age: Option<Duration>,
    ) -> EndpointPool {
        let settings = PoolSettings {
            service: "test".into(),
            protocol: Protocol::Http1,
            connect_timeout: Duration::from_secs(5),
            idle_timeout,
            max_age,
            max_connections: None,
            http2_keepalive: None,
            connector: Arc::new(TcpConnector),
        };
        EndpointPool::new(addr, Arc::new(settings), |_| {}, || false)
    }

    fn request(path: &str) -> Request<AttemptBody> {
        let body = Empty::<Bytes>::new().map_err(|e| match e {}).boxed_unsync();
        Request::get(path)
            .body(AttemptBody(ReplayBody::new(body, 0)))
            .unwrap()
    }

    async fn checkout_http1(pool: &EndpointPool) -> Http1Conn {
        match pool.checkout().await {
            Ok(Conn::Http1(conn)) => conn,
            Ok(Conn::Http2(_)) => panic!("an HTTP/1.1 pool handed out an HTTP/2 connection"),
            Err(e) => panic!("checkout failed: {e}"),
        }
    }

    #[tokio::test]
    async fn a_connection_given_back_before_it_is_ready_is_reused_not_replaced() {
        let server = Server::start().await;
        let pool = pool(server.addr);
        let mut conn = checkout_http1(&pool).await;
        let in_flight = tokio::spawn(conn.sender.send_request(request("/slow")));
        server.arrived.notified().await;
        // Busy with a response, as a connection is between its response being read
        // and its task asking for the next request.
        assert!(!conn.sender.is_ready());
        give_back(&pool.downgrade(), conn);

        let finish_response = async {
            server.release.notify_one();
            let response = in_flight.await.unwrap().unwrap();
            response.into_body().collect().await.unwrap();
        };
        let (mut reused, ()) = tokio::join!(checkout_http1(&pool), finish_response);

        assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
        let response = reused.sender.send_request(request("/")).await.unwrap();
        assert!(response.status().is_success());
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_idle_connection_closed_by_the_server_is_replaced() {
        let server = Server::start().await;
        let pool = pool(server.addr);
        let mut conn = checkout_http1(&pool).await;
        let close = Request::get("/")
            .header(http::header::CONNECTION, "close")
            .body(request("/").into_body())
            .unwrap();
        let response = conn.sender.send_request(close).await.unwrap();
        response.into_body().collect().await.unwrap();
        give_back(&pool.downgrade(), conn);

        let mut replacement = checkout_http1(&pool).await;
        let response = replacement.sender.send_request(request("/")).await.unwrap();
        assert!(response.status().is_success());
        assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
    }

    /// Sends one request on a connection from `pool`, reads the response
    /// and gives the connection back; then checks out the next one and
    /// returns the connections the server has accepted by then.
    async fn connections_for_two_requests(server: &Server, pool: &EndpointPool) -> usize {
        let mut conn = checkout_http1(pool).await;
        let response = conn.sender.send_request(request("/")).await.unwrap();
        response.into_body().collect().await.unwrap();
        give_back(&pool.downgrade(), conn);
        let mut next = checkout_http1(pool).await;
        let response = next.sender.send_request(request("/")).await.unwrap();
        assert!(response.status().is_success());
        server.accepted.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn a_connection_idle_for_the_idle_timeout_is_replaced() {
        let server = Server::start().await;
        let fresh = pool_with(server.addr, Duration::from_secs(90), None);
        assert_eq!(connections_for_two_requests(&server, &fresh).await, 1);
        let server = Server::start().await;
        // Idle for the whole (zero) timeout the moment it is pooled.
        let stale = pool_with(server.addr, Duration::ZERO, None);
        assert_eq!(connections_for_two_requests(&server, &stale).await, 2);
    }

    #[tokio::test]
    async fn a_connection_as_old_as_the_max_age_is_replaced() {
        let server = Server::start().await;
        let young = pool_with(
            server.addr,
            Duration::from_secs(90),
            Some(Duration::from_secs(90)),
        );
        assert_eq!(connections_for_two_requests(&server, &young).await, 1);
        let server = Server::start().await;
        let old = pool_with(server.addr, Duration::from_secs(90), Some(Duration::ZERO));
        assert_eq!(connections_for_two_requests(&server, &old).await, 2);
    }

    #[tokio::test]
    async fn timeouts_past_the_clock_s_range_never_expire() {
        let server = Server::start().await;
        let pool = pool_with(server.addr, Duration::MAX, Some(Duration::MAX));
        assert_eq!(connections_for_two_requests(&server, &pool).await, 1);
    }
}
