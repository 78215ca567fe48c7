//! One inbound connection: TLS handshake (bounded in time), then HTTP.

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

use axum::extract::ConnectInfo;
use http::{Extensions, Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use mesh_core::metric_names::{label, TLS_HANDSHAKE_FAILURES};
use mesh_core::tls::{failure_reason, peer_spiffe_id};
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::util::Oneshot;
use tower::ServiceExt;

use super::header_timeout::{HeaderDeadline, RearmingBody, Watchdog};
use super::options::InboundOptions;
use super::PeerIdentity;
use crate::error::BoxError;

/// What every connection task shares.
pub(crate) struct Shared {
    pub(crate) acceptor: TlsAcceptor,
    /// For connections whose ALPN settled on HTTP/1.1; each connection adds
    /// its own header-read watchdog (hyper is given no timer).
    pub(crate) http1: http1::Builder,
    /// For every other connection: tells the versions apart by the first
    /// bytes (it wraps the stream to replay them, which costs on every read).
    pub(crate) auto: auto::Builder<TokioExecutor>,
    pub(crate) options: InboundOptions,
    /// What the mesh's layers want on every request besides the peer's
    /// identity (`InboundServer::mark_requests`).
    pub(crate) marks: Extensions,
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
    let extensions = connection_extensions(PeerIdentity(peer), ConnectInfo(remote), &shared.marks);
    let io = TokioIo::new(tls);
    let result = match protocol {
        Protocol::Http1 => {
            // Our own header-read timer, hyper is given none (see
            // `header_timeout`): hyper's boxes a sleep per request and goes
            // round its loop once more after every response.
            let deadline = HeaderDeadline::new(shared.options.header_read_timeout);
            let watchdog = Watchdog::new(deadline.clone());
            let service = WithPeer {
                inner: RefCell::new(service),
                extensions,
                head: Some(deadline),
            };
            let conn = shared.http1.serve_connection(io, service).with_upgrades();
            drive(conn, &mut shutdown, Some(watchdog)).await
        }
        Protocol::Sniff => {
            let service = WithPeer {
                inner: RefCell::new(service),
                extensions,
                head: None,
            };
            let conn = shared.auto.serve_connection_with_upgrades(io, service);
            drive(conn, &mut shutdown, None).await
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
/// requests and refuse new ones (GOAWAY / `Connection: close`). With a
/// watchdog, a request head overdue past the header-read timeout ends the
/// connection.
///
/// The shutdown watch and the watchdog's timer are polled only when one of them
/// woke the task (they get a waker of their own that records it), not on every
/// wake of the connection: most wakes are the socket's.
async fn drive<C: GracefulConnection>(
    conn: C,
    shutdown: &mut watch::Receiver<bool>,
    watchdog: Option<Watchdog>,
) -> Result<(), BoxError> {
    tokio::pin!(conn);
    let stop = stopped(shutdown);
    tokio::pin!(stop);
    let first_check = watchdog
        .as_ref()
        .map_or_else(Instant::now, Watchdog::first_check);
    let timer = tokio::time::sleep_until(first_check);
    tokio::pin!(timer);
    let side = Arc::new(SideWake::default());
    let side_waker = Waker::from(side.clone());
    let mut draining = false;
    let mut expired = false;
    // The waker last given to `side`: the task's waker rarely changes, and
    // registering costs read-modify-writes on every poll where comparing
    // costs two loads. `side` holds it until a side wake takes it, and that
    // wake leaves `due` set, so it is given again below when `due` is seen.
    let mut registered: Option<Waker> = None;
    std::future::poll_fn(|cx| {
        if !registered
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            side.task.register(cx.waker());
            registered = Some(cx.waker().clone());
        }
        loop {
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                return Poll::Ready(result.map_err(Into::into));
            }
            if !side.take() {
                return Poll::Pending;
            }
            // The wake that set `due` took the waker: give it again before
            // polling what may wake it next.
            side.task.register(cx.waker());
            let mut side_cx = Context::from_waker(&side_waker);
            // Set when the connection was told to close: poll it again at once.
            let mut closing = false;
            if !draining && stop.as_mut().poll(&mut side_cx).is_ready() {
                draining = true;
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            if let Some(watchdog) = &watchdog {
                if expired {
                    // The overdue connection had one more timeout to close.
                    if timer.as_mut().poll(&mut side_cx).is_ready() {
                        return Poll::Ready(Err(HeaderTimeout.into()));
                    }
                } else if watchdog
                    .poll_expired(timer.as_mut(), &mut side_cx)
                    .is_ready()
                {
                    if !watchdog.served_any() {
                        // hyper's graceful shutdown does not end a connection
                        // still waiting for its first head: close it here.
                        return Poll::Ready(Err(HeaderTimeout.into()));
                    }
                    // Idle (or mid-head) after a response: hyper closes it
                    // cleanly (TLS close_notify), bounded by one more timeout.
                    expired = true;
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                    timer.as_mut().reset(Instant::now() + watchdog.timeout());
                    let _ = timer.as_mut().poll(&mut side_cx);
                }
            }
            if !closing {
                return Poll::Pending;
            }
        }
    })
    .await
}

/// Resolves once shutdown has begun (the watch guard must not live across awaits).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Records that the shutdown watch or the watchdog's timer woke the connection
/// task, and wakes it.
#[derive(Debug)]
struct SideWake {
    task: AtomicWaker,
    due: AtomicBool,
}

impl Default for SideWake {
    fn default() -> Self {
        // Due at first, so both are polled (and register this waker) once.
        SideWake {
            task: AtomicWaker::new(),
            due: AtomicBool::new(true),
        }
    }
}

impl SideWake {
    fn take(&self) -> bool {
        // Cheap when nothing is due: a load, no read-modify-write.
        self.due.load(Ordering::Relaxed) && self.due.swap(false, Ordering::AcqRel)
    }
}

impl Wake for SideWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.due.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// A request head did not arrive within the header-read timeout.
#[derive(Debug, thiserror::Error)]
#[error("the client did not send a request head within the header-read timeout")]
struct HeaderTimeout;

fn count_failure(reason: &'static str) {
    metrics::counter!(TLS_HANDSHAKE_FAILURES.name, label::REASON => reason).increment(1);
}

/// What every request on a connection carries: the peer's identity and socket
/// address (axum's `ConnectInfo`, which the access log and handlers read).
///
/// Built once per connection and cloned onto each request. Inserting the values
/// one by one into a request's empty extensions allocates the map, its table,
/// and a new table once the layers and the router add a fourth entry (telemetry
/// marker, deadline, matched path); a clone of this map allocates its table at
/// the size made here, room for seven entries, so it never grows.
fn connection_extensions(
    peer: PeerIdentity,
    remote: ConnectInfo<SocketAddr>,
    marks: &Extensions,
) -> Extensions {
    #[derive(Clone, Copy)]
    struct Room<const N: u8>;
    let mut extensions = Extensions::new();
    extensions.insert(peer);
    extensions.insert(remote);
    extensions.extend(marks.clone());
    // Five entries grow the table to eight buckets; removing the placeholders
    // keeps them (hash maps do not shrink on removal).
    extensions.insert(Room::<0>);
    extensions.insert(Room::<1>);
    extensions.insert(Room::<2>);
    extensions.remove::<Room<0>>();
    extensions.remove::<Room<1>>();
    extensions.remove::<Room<2>>();
    extensions
}

/// Puts the connection's [`connection_extensions`] on each request before the
/// user's service sees it; on an HTTP/1 connection, also tells the header-read
/// watchdog that the head it waited for has arrived, and gives the response a
/// body that starts the wait for the next one once written out.
#[derive(Debug, Clone)]
struct WithPeer<S> {
    /// hyper calls through `&self`, tower through `&mut self`: the connection's
    /// one copy is borrowed for each call (hyper never calls it re-entrantly)
    /// instead of cloned per request, which costs reference counts in each
    /// layer and a drop afterwards.
    inner: RefCell<S>,
    extensions: Extensions,
    head: Option<Arc<HeaderDeadline>>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for WithPeer<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone,
{
    type Response = Response<RearmingBody<B>>;
    type Error = S::Error;
    type Future = PeerFuture<S>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        if let Some(head) = &self.head {
            head.disarm();
        }
        // The header-read deadline the response body re-arms once written.
        let next_head = self.head.clone();
        // Takes the clone whole when hyper put nothing there (it does only for
        // upgrades), else adds to what is there.
        request.extensions_mut().extend(self.extensions.clone());
        let mut service = self.inner.borrow_mut();
        // The mesh's layers and axum's router are always ready: call at once
        // rather than moving the request into a `Oneshot` and out again. A
        // service that is not ready registers this no-op waker, so a clone of
        // it is asked again, with the task's waker, by the `Oneshot`.
        let mut cx = Context::from_waker(Waker::noop());
        // The future is built in the variant (a struct around an enum of the
        // two would move it once more).
        match service.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => PeerFuture::Called {
                future: service.call(request),
                next_head,
            },
            _ => PeerFuture::Waiting {
                future: service.clone().oneshot(request),
                next_head,
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of a [`WithPeer`] call: the service's own when it was ready
    /// at once, else a `Oneshot` that waits for it; with the header-read
    /// deadline the response body re-arms.
    #[project = PeerFutureProjection]
    enum PeerFuture<S: tower::Service<Request<Incoming>>> {
        Called {
            #[pin] future: S::Future,
            next_head: Option<Arc<HeaderDeadline>>,
        },
        Waiting {
            #[pin] future: Oneshot<S, Request<Incoming>>,
            next_head: Option<Arc<HeaderDeadline>>,
        },
    }
}

impl<S, B> Future for PeerFuture<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>>,
{
    type Output = Result<Response<RearmingBody<B>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (polled, next_head) = match self.project() {
            PeerFutureProjection::Called { future, next_head } => (future.poll(cx), next_head),
            PeerFutureProjection::Waiting { future, next_head } => (future.poll(cx), next_head),
        };
        let response = std::task::ready!(polled)?;
        let next_head = next_head.take();
        Poll::Ready(Ok(response.map(|body| RearmingBody::new(body, next_head))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_request_gets_the_peer_identity_and_connect_info() {
        let peer: mesh_core::identity::SpiffeId = "spiffe://example.org/web".parse().unwrap();
        let remote: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        #[derive(Clone, Debug, PartialEq)]
        struct Mark;
        let mut marks = Extensions::new();
        marks.insert(Mark);
        let template =
            connection_extensions(PeerIdentity(peer.clone()), ConnectInfo(remote), &marks);
        let mut extensions = Extensions::new();
        extensions.insert(7u8);
        extensions.extend(template.clone());
        assert_eq!(extensions.get::<PeerIdentity>(), Some(&PeerIdentity(peer)));
        assert_eq!(
            extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0),
            Some(remote)
        );
        assert_eq!(
            extensions.get::<u8>(),
            Some(&7),
            "what hyper put there stays"
        );
        assert_eq!(
            extensions.get::<Mark>(),
            Some(&Mark),
            "the server's marks too"
        );
        assert_eq!(template.len(), 3, "the placeholders are gone");
    }

    /// Not ready on its first `poll_ready`, then ready: counts the polls.
    #[derive(Clone)]
    struct SlowToReady {
        polls: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl tower::Service<Request<Incoming>> for SlowToReady {
        type Response = Response<http_body_util::Empty<bytes::Bytes>>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            if self.polls.fetch_add(1, Ordering::SeqCst) == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request<Incoming>) -> Self::Future {
            let status = if request.extensions().get::<PeerIdentity>().is_some() {
                http::StatusCode::NO_CONTENT
            } else {
                http::StatusCode::INTERNAL_SERVER_ERROR
            };
            let mut response = Response::new(http_body_util::Empty::new());
            *response.status_mut() = status;
            std::future::ready(Ok(response))
        }
    }

    #[tokio::test]
    async fn a_service_not_ready_at_once_is_waited_for_and_then_called() {
        let peer: mesh_core::identity::SpiffeId = "spiffe://example.org/web".parse().unwrap();
        let remote: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let service = WithPeer {
            inner: RefCell::new(SlowToReady {
                polls: polls.clone(),
            }),
            extensions: connection_extensions(
                PeerIdentity(peer),
                ConnectInfo(remote),
                &Extensions::new(),
            ),
            head: None,
        };
        let (client_io, server_io) = tokio::io::duplex(4096);
        let server =
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(server_io), service));
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<
            _,
            http_body_util::Empty<bytes::Bytes>,
        >(TokioIo::new(client_io))
        .await
        .unwrap();
        tokio::spawn(conn);
        let response = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            sender.send_request(Request::new(http_body_util::Empty::new())),
        )
        .await
        .expect("the request was served")
        .unwrap();
        assert_eq!(response.status(), http::StatusCode::NO_CONTENT);
        assert!(
            polls.load(Ordering::SeqCst) >= 2,
            "asked again after its first Pending"
        );
        drop(sender);
        let _ = server.await;
    }

    /// A connection that runs until told to shut down gracefully.
    struct UntilShutdown {
        closing: bool,
    }

    impl Future for UntilShutdown {
        type Output = Result<(), std::io::Error>;

        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
            if self.closing {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }
    }

    impl GracefulConnection for UntilShutdown {
        type Error = std::io::Error;
        fn graceful_shutdown(self: Pin<&mut Self>) {
            self.get_mut().closing = true;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_still_wakes_a_connection_after_its_watchdog_woke_it() {
        // A request being served: the watchdog's timer fires every timeout
        // and only sets itself again. Each of those wakes takes the waker the
        // connection task registered; the shutdown that follows must still
        // reach the task.
        let deadline = HeaderDeadline::new(std::time::Duration::from_secs(10));
        deadline.disarm();
        let watchdog = Watchdog::new(deadline);
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            drive(
                UntilShutdown { closing: false },
                &mut stopped,
                Some(watchdog),
            )
            .await
        });
        tokio::time::sleep(std::time::Duration::from_secs(25)).await;
        assert!(!task.is_finished(), "the watchdog's wakes closed nothing");
        stop.send(true).unwrap();
        let ended = tokio::time::timeout(std::time::Duration::from_secs(1), task)
            .await
            .expect("the shutdown woke the connection task")
            .unwrap();
        assert!(ended.is_ok(), "closed gracefully: {ended:?}");
    }

    #[test]
    fn only_alpn_http1_skips_sniffing() {
        assert_eq!(Protocol::from_alpn(Some(b"http/1.1")), Protocol::Http1);
        assert_eq!(Protocol::from_alpn(Some(b"h2")), Protocol::Sniff);
        assert_eq!(Protocol::from_alpn(None), Protocol::Sniff);
        assert_eq!(Protocol::from_alpn(Some(b"spdy/3")), Protocol::Sniff);
    }
}
