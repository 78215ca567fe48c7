//! The one handler every configuration reaches: reads the request body and
//! answers 200 with a fixed 1 KiB body. Served over HTTP/1.1 behind plain
//! hyper + tokio-rustls mTLS (raw), behind the mesh's inbound server
//! ([`serve_mesh`]), or in plain text (behind haproxy, which terminates mTLS
//! for the sidecar path).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Size of request and response bodies.
pub const PAYLOAD_BYTES: usize = 1024;

static PAYLOAD: [u8; PAYLOAD_BYTES] = [b'm'; PAYLOAD_BYTES];

/// The 1 KiB body (a static buffer: cloning it costs nothing).
pub fn payload() -> Bytes {
    Bytes::from_static(&PAYLOAD)
}

/// The handler: drain the request body, answer with the payload.
pub async fn handle(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // A client that goes away mid-body is not the server's problem here.
    let _ = request.into_body().collect().await;
    Ok(Response::new(Full::new(payload())))
}

/// Serves plain HTTP/1.1 on `listener` until the task is dropped.
pub async fn serve_plain(listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service_fn(handle))
                .await;
        });
    }
}

/// Serves HTTP/1.1 over mTLS on `listener`. Each handshake runs in the
/// connection's own task, so one slow handshake never delays the next accept.
pub async fn serve_tls(listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .await;
        });
    }
}

/// Serves the same handler behind the mesh's whole inbound stack, as
/// `Mesh::serve` builds it (`InboundServer` with the SPIFFE-verifying server
/// configuration, server telemetry, deadline), until the task is dropped.
pub async fn serve_mesh(listener: TcpListener, mesh: mesh_http::Mesh) {
    let identity = mesh
        .identity()
        .expect("the bench's server mesh has an identity");
    let tls = mesh_core::tls::server_config(identity, []);
    let server = mesh_http::server::InboundServer::from_listener(listener, tls);
    mesh.serve_inbound(server, tower::service_fn(handle), std::future::pending())
        .await;
}
