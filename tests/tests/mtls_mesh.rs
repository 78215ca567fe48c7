//! The mesh on both sides, configured from `MESH_` variables: `Mesh` clients talk
//! mTLS to a `Mesh` inbound server, check the server's SPIFFE ID, and keep going
//! through a certificate rotation without a failed request.
#![allow(clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use mesh_core::config::MeshConfig;
use mesh_core::identity::ExpectedIdentity;
use mesh_http::server::PeerIdentity;
use mesh_http::{Mesh, MeshClient};
use mesh_tests::pki::{PemFiles, Pki};
use mesh_tests::stream::RequestStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

const BACKEND_ID: &str = "spiffe://example.org/backend";
const FRONTEND_ID: &str = "spiffe://example.org/frontend";

fn mesh(files: &PemFiles, extra: &[(&str, String)]) -> Mesh {
    let mut env: BTreeMap<String, String> = [
        ("MESH_TLS_CERT", files.cert.display().to_string()),
        ("MESH_TLS_KEY", files.key.display().to_string()),
        ("MESH_TLS_BUNDLE", files.bundle.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    Mesh::new(MeshConfig::from_source(&env).expect("valid configuration")).expect("mesh starts")
}

/// A `Mesh` inbound server on a fresh port whose `/whoami` answers the caller's
/// SPIFFE ID and counts calls; it stops when the returned sender is dropped.
async fn backend(
    files: &PemFiles,
) -> (
    Mesh,
    std::net::SocketAddr,
    Arc<AtomicU64>,
    tokio::sync::oneshot::Sender<()>,
) {
    let server = mesh(files, &[("MESH_INBOUND_ADDR", "127.0.0.1:0".into())]);
    let inbound = server.inbound().await.expect("bind");
    let addr = inbound.local_addr().unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    let app = Router::new().route(
        "/whoami",
        get(move |PeerIdentity(id): PeerIdentity| {
            counter.fetch_add(1, Ordering::Relaxed);
            async move { id.to_string() }
        }),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(inbound.serve(app, async move {
        let _ = stopped.await;
    }));
    (server, addr, calls, stop)
}

async fn whoami(client: &MeshClient) -> Result<String, mesh_http::Error> {
    let request = http::Request::get("http://backend/whoami")
        .body(Empty::<Bytes>::new().map_err(Into::into).boxed_unsync())
        .unwrap();
    let response = client.send(request).await?;
    assert_eq!(response.status(), http::StatusCode::OK);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("whole body")
        .to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_client_and_server_speak_mtls_configured_from_variables() {
    let pki = Pki::new("example.org");
    let (_server, addr, calls, _stop) = backend(&pki.server("backend", BACKEND_ID)).await;
    let client = mesh(
        &pki.client("frontend", FRONTEND_ID),
        &[
            ("MESH_SERVICE_BACKEND_ENDPOINTS", addr.to_string()),
            ("MESH_SERVICE_BACKEND_IDENTITY", BACKEND_ID.into()),
        ],
    );
    assert_eq!(
        whoami(&client.client()).await.unwrap(),
        FRONTEND_ID,
        "the server sees our SPIFFE ID"
    );
    assert_eq!(calls.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_client_refuses_a_server_with_another_identity_naming_both() {
    let pki = Pki::new("example.org");
    let (_server, addr, calls, _stop) = backend(&pki.server("backend", BACKEND_ID)).await;
    let client = mesh(
        &pki.client("frontend", FRONTEND_ID),
        &[
            ("MESH_SERVICE_BACKEND_ENDPOINTS", addr.to_string()),
            (
                "MESH_SERVICE_BACKEND_IDENTITY",
                "spiffe://example.org/billing".into(),
            ),
        ],
    );
    let err = whoami(&client.client()).await.unwrap_err();
    let text = err.to_string();
    assert!(err.is_connect(), "{text}");
    assert!(
        text.contains("spiffe://example.org/billing") && text.contains(BACKEND_ID),
        "{text}"
    );
    assert_eq!(
        calls.load(Ordering::Relaxed),
        0,
        "nothing reached the handler"
    );
}

/// The leaf certificate a fresh handshake with `addr` presents.
async fn presented_leaf(client: &Mesh, addr: std::net::SocketAddr) -> CertificateDer<'static> {
    let identity = client.identity().unwrap();
    let expected: ExpectedIdentity = BACKEND_ID.parse().unwrap();
    let tls = tokio_rustls::TlsConnector::from(mesh_core::tls::client_config(identity, expected));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tls
        .connect(ServerName::try_from("backend").unwrap(), tcp)
        .await
        .expect("handshake");
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("server certificate")[0]
        .clone()
        .into_owned()
}

fn leaf_in(files: &PemFiles) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(&files.cert).expect("PEM certificate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_certificate_files_fails_no_request_and_new_handshakes_present_the_new_one() {
    let pki = Pki::new("example.org");
    let old = pki.server("backend", BACKEND_ID);
    let (server, addr, _calls, _stop) = backend(&old).await;
    let client_mesh = mesh(
        &pki.client("frontend", FRONTEND_ID),
        &[
            ("MESH_SERVICE_BACKEND_ENDPOINTS", addr.to_string()),
            ("MESH_SERVICE_BACKEND_MAX_CONNECTION_AGE", "50ms".into()),
        ],
    );
    assert_eq!(presented_leaf(&client_mesh, addr).await, leaf_in(&old));

    // A steady stream of requests over connections that age out every 50 ms.
    let client = client_mesh.client();
    let stream = RequestStream::start(move || {
        let client = client.clone();
        async move { whoami(&client).await }
    });
    stream.wait_for_ok(100).await;

    // Rotate the server's files in place; wait for the server to load them.
    let mut generations = server.identity().unwrap().subscribe();
    let new = pki.server("backend", BACKEND_ID);
    assert_ne!(new.serial, old.serial);
    tokio::time::timeout(Duration::from_secs(60), async {
        while server.identity().unwrap().current().serial() != new.serial {
            generations.changed().await.expect("identity source alive");
        }
    })
    .await
    .expect("the server picks up the rotated files");

    stream.wait_for_ok(stream.ok() + 200).await;
    let (_, failed) = stream.stop().await;

    assert_eq!(failed, 0, "no request may fail across a rotation");
    let leaf = presented_leaf(&client_mesh, addr).await;
    assert_eq!(
        leaf,
        leaf_in(&new),
        "a new handshake presents the rotated certificate (serial {})",
        new.serial
    );
}

/// The client offers in ALPN only the protocol its pool speaks, so a server
/// offering both (ours does) never picks `h2` for an HTTP/1.1 connection.
#[tokio::test]
async fn alpn_offers_only_the_protocol_the_client_speaks() {
    use mesh_core::config::Protocol;
    use mesh_http::connect::{Connect, MtlsConnector};

    let pki = Pki::new("example.org");
    let (_server_files, server) = pki.server_source("server", "spiffe://example.org/api");
    let client_files = pki.client("client", "spiffe://example.org/web");
    let client = mesh_core::identity::IdentitySource::from_files(client_files.identity_files())
        .expect("load client identity");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(mesh_core::tls::server_config(&server, []));
    let negotiated = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = acceptor.accept(tcp).await.expect("handshake");
            seen.push(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec));
        }
        seen
    });
    for protocol in [Protocol::Http1, Protocol::Grpc] {
        let connector = MtlsConnector::new(
            &client,
            ExpectedIdentity::TrustDomain("example.org".parse().unwrap()),
            "api",
            protocol,
        );
        let _io = connector.connect(addr, "api").await.expect("mTLS connect");
    }
    let seen = negotiated.await.unwrap();
    assert_eq!(
        seen,
        vec![Some(b"http/1.1".to_vec()), Some(b"h2".to_vec())],
        "HTTP/1.1 then gRPC"
    );
}
