//! Graceful shutdown and the connection cap of the inbound mTLS server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use mesh_core::identity::IdentitySource;
use mesh_core::tls;
use mesh_http::server::{InboundOptions, InboundServer};
use mesh_tests::pki::{spiffe_id, Pki};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify, Semaphore};
use tokio::task::JoinHandle;

const SERVER_ID: &str = "spiffe://example.org/api";
const CLIENT_ID: &str = "spiffe://example.org/web";

/// A handler that signals when a request is inside it and finishes only
/// when the test releases it.
#[derive(Clone)]
struct Gate {
    entered: Arc<Notify>,
    release: Arc<Semaphore>,
}

impl Gate {
    fn new() -> Self {
        Self {
            entered: Arc::new(Notify::new()),
            release: Arc::new(Semaphore::new(0)),
        }
    }
}

struct Setup {
    _pki: Pki,
    addr: SocketAddr,
    client: IdentitySource,
    gate: Gate,
    stop: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

async fn setup(options: InboundOptions) -> Setup {
    let pki = Pki::new("example.org");
    let (_files, source) = pki.server_source("api", SERVER_ID);
    let client = IdentitySource::from_files(pki.client("web", CLIENT_ID).identity_files()).unwrap();
    let gate = Gate::new();
    let handler_gate = gate.clone();
    let app = Router::new().route(
        "/slow",
        get(move || {
            let gate = handler_gate.clone();
            async move {
                gate.entered.notify_one();
                let _permit = gate.release.acquire().await.unwrap();
                "done"
            }
        }),
    );
    let server = InboundServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        tls::server_config(&source, []),
    )
    .await
    .unwrap()
    .with_options(options);
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(server.serve(app, async {
        let _ = stopped.await;
    }));
    Setup {
        _pki: pki,
        addr,
        client,
        gate,
        stop,
        server,
    }
}

/// Opens an mTLS HTTP/1.1 connection and returns its request sender.
async fn connect(
    addr: SocketAddr,
    client: &IdentitySource,
) -> hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>> {
    let config = tls::client_config(client, spiffe_id(SERVER_ID).into());
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("api").unwrap(), tcp)
        .await
        .unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

fn slow_request() -> http::Request<Empty<bytes::Bytes>> {
    http::Request::get("/slow")
        .header("host", "api")
        .body(Empty::new())
        .unwrap()
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish() {
    // A grace period far longer than the test, so only draining can end it.
    let s = setup(InboundOptions::default().grace_period(Duration::from_secs(120))).await;
    let mut sender = connect(s.addr, &s.client).await;
    let entered = s.gate.entered.notified();
    let response = tokio::spawn(sender.send_request(slow_request()));
    entered.await;

    s.stop.send(()).unwrap();
    // Let the server notice the shutdown; it must keep waiting for the handler.
    tokio::task::yield_now().await;
    assert!(
        !s.server.is_finished(),
        "the server quit with a request in flight"
    );

    s.gate.release.add_permits(1);
    let response = response.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"done");
    tokio::time::timeout(Duration::from_secs(30), s.server)
        .await
        .expect("the server did not finish after draining")
        .unwrap();
}

#[tokio::test]
async fn shutdown_closes_requests_still_running_after_the_grace_period() {
    let s = setup(InboundOptions::default().grace_period(Duration::from_millis(100))).await;
    let mut sender = connect(s.addr, &s.client).await;
    let entered = s.gate.entered.notified();
    let response = tokio::spawn(sender.send_request(slow_request()));
    entered.await;

    s.stop.send(()).unwrap();
    // The handler is never released: only the grace period can end the server.
    tokio::time::timeout(Duration::from_secs(30), s.server)
        .await
        .expect("the server ignored its grace period")
        .unwrap();
    let outcome = response.await.unwrap();
    assert!(outcome.is_err(), "the stuck request got {outcome:?}");
}

#[tokio::test]
async fn at_the_connection_cap_a_new_connection_waits_for_a_free_slot() {
    let s = setup(InboundOptions::default().max_connections(1)).await;
    // The only slot: a TCP connection that never handshakes.
    let hog = TcpStream::connect(s.addr).await.unwrap();

    let addr = s.addr;
    let client = s.client.clone();
    let mut second = tokio::spawn(async move { connect(addr, &client).await });
    // While the slot is taken the second client cannot finish its handshake.
    // (On a slow machine this can only pass, never fail falsely.)
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut second)
            .await
            .is_err(),
        "a second connection was served beyond the cap of 1"
    );

    drop(hog);
    let mut sender = tokio::time::timeout(Duration::from_secs(20), second)
        .await
        .expect("the freed slot was not reused")
        .unwrap();
    s.gate.release.add_permits(1);
    let response = sender.send_request(slow_request()).await.unwrap();
    assert_eq!(response.status(), 200);
}
