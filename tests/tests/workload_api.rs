//! Identity from the SPIFFE Workload API: a stand-in agent serving the
//! protocol itself (`tests/src/workload_api/`) on a unix socket hands the mesh
//! its SVID; a pushed SVID reaches the next handshake without failing a
//! request; a silent agent is a start-up error naming the socket; a pushed SVID
//! whose key does not match is refused and the last good identity stays.
#![allow(clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use mesh_core::config::MeshConfig;
use mesh_core::identity::dev::{DevCa, Svid, SvidOptions};
use mesh_core::identity::{ExpectedIdentity, IdentitySource, WorkloadApiConfig};
use mesh_http::server::PeerIdentity;
use mesh_http::{Mesh, MeshClient};
use mesh_tests::pki::{spiffe_id, Pki};
use mesh_tests::stream::RequestStream;
use mesh_tests::workload_api::{response, WorkloadApiServer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

const BACKEND_ID: &str = "spiffe://example.org/backend";
const FRONTEND_ID: &str = "spiffe://example.org/frontend";

fn config(env: &[(&str, String)]) -> MeshConfig {
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    MeshConfig::from_source(&env).expect("valid configuration")
}

fn server_svid(ca: &DevCa) -> Svid {
    ca.issue_with(SvidOptions::new(BACKEND_ID).ip_address(IpAddr::V4(Ipv4Addr::LOCALHOST)))
        .expect("issue SVID")
}

fn leaf(svid: &Svid) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(svid.cert_pem.as_bytes()).expect("PEM certificate")
}

/// The leaf certificate a fresh handshake with `addr` presents.
async fn presented_leaf(
    client: &IdentitySource,
    addr: std::net::SocketAddr,
) -> CertificateDer<'static> {
    let expected: ExpectedIdentity = BACKEND_ID.parse().unwrap();
    let tls = tokio_rustls::TlsConnector::from(mesh_core::tls::client_config(client, expected));
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
async fn workload_api_svid_serves_mtls_and_a_pushed_svid_reaches_the_next_handshake() {
    let pki = Pki::new("example.org");
    let agent = WorkloadApiServer::start().await;
    let old = server_svid(pki.ca());
    agent.push(response(&old, pki.ca(), &[]));

    // The backend's identity comes from the Workload API, configured like a pod
    // in a SPIRE cluster: SPIFFE_ENDPOINT_SOCKET and no MESH_TLS_* files.
    let server = Mesh::start(config(&[
        ("SPIFFE_ENDPOINT_SOCKET", agent.address()),
        ("MESH_INBOUND_ADDR", "127.0.0.1:0".into()),
    ]))
    .await
    .expect("the mesh starts with the agent's SVID");
    let identity = server.identity().expect("mTLS on").clone();
    assert_eq!(identity.current().serial(), old.serial);
    assert_eq!(
        agent.refused_without_header(),
        0,
        "our client sends workload.spiffe.io"
    );
    let inbound = server.inbound().await.expect("bind");
    let addr = inbound.local_addr().unwrap();
    let app = Router::new().route(
        "/whoami",
        get(|PeerIdentity(id): PeerIdentity| async move { id.to_string() }),
    );
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(inbound.serve(app, async move {
        let _ = stopped.await;
    }));

    let frontend = pki.client("frontend", FRONTEND_ID);
    let client_mesh = Mesh::new(config(&[
        ("MESH_TLS_CERT", frontend.cert.display().to_string()),
        ("MESH_TLS_KEY", frontend.key.display().to_string()),
        ("MESH_TLS_BUNDLE", frontend.bundle.display().to_string()),
        ("MESH_SERVICE_BACKEND_ENDPOINTS", addr.to_string()),
        ("MESH_SERVICE_BACKEND_IDENTITY", BACKEND_ID.into()),
        // Connections age out quickly, so new handshakes happen during the test.
        ("MESH_SERVICE_BACKEND_MAX_CONNECTION_AGE", "50ms".into()),
    ]))
    .expect("client mesh");
    let client_identity = client_mesh.identity().unwrap().clone();
    assert_eq!(whoami(&client_mesh.client()).await.unwrap(), FRONTEND_ID);
    assert_eq!(presented_leaf(&client_identity, addr).await, leaf(&old));

    // A steady stream of requests across the rotation.
    let client = client_mesh.client();
    let stream = RequestStream::start(move || {
        let client = client.clone();
        async move { whoami(&client).await }
    });
    stream.wait_for_ok(100).await;

    // The agent rotates the SVID: the stream carries it to the mesh.
    let mut generations = identity.subscribe();
    let new = server_svid(pki.ca());
    assert_ne!(new.serial, old.serial);
    agent.push(response(&new, pki.ca(), &[]));
    tokio::time::timeout(Duration::from_secs(60), async {
        while identity.current().serial() != new.serial {
            generations.changed().await.expect("identity source alive");
        }
    })
    .await
    .expect("the pushed SVID becomes current");

    stream.wait_for_ok(stream.ok() + 200).await;
    let (_, failed) = stream.stop().await;

    assert_eq!(failed, 0, "no request may fail across a rotation");
    assert_eq!(
        presented_leaf(&client_identity, addr).await,
        leaf(&new),
        "a new handshake presents the pushed certificate (serial {})",
        new.serial
    );
    assert_eq!(agent.streams_opened(), 1, "one stream carried both SVIDs");
}

#[tokio::test]
async fn a_silent_workload_api_fails_start_up_naming_the_socket() {
    let agent = WorkloadApiServer::start().await; // accepts the call, never sends
    let err = Mesh::start(config(&[
        ("SPIFFE_ENDPOINT_SOCKET", agent.address()),
        ("MESH_WORKLOAD_API_TIMEOUT", "300ms".into()),
    ]))
    .await
    .expect_err("no SVID, no start");
    let text = err.to_string();
    assert!(text.contains(&agent.address()), "{text}");
    assert!(
        text.contains("SPIFFE_ENDPOINT_SOCKET") && text.contains("MESH_WORKLOAD_API_TIMEOUT"),
        "{text}"
    );
    assert!(
        agent.streams_opened() >= 1,
        "it was silence, not a refused connection"
    );

    // No agent at all: the error also says why.
    let dir = tempfile::tempdir().unwrap();
    let absent = format!("unix://{}/agent.sock", dir.path().display());
    let config = WorkloadApiConfig::new(absent.clone()).startup_timeout(Duration::from_millis(300));
    let err = IdentitySource::from_workload_api(&config)
        .await
        .expect_err("no agent");
    let text = err.to_string();
    assert!(
        text.contains(&absent) && text.contains("cannot connect") && text.contains("No such file"),
        "{text}"
    );
}

#[tokio::test]
async fn mesh_new_refuses_a_workload_api_config_instead_of_running_plaintext() {
    let err = Mesh::new(config(&[(
        "SPIFFE_ENDPOINT_SOCKET",
        "unix:///run/spire/agent.sock".into(),
    )]))
    .expect_err("the identity must be awaited");
    assert!(err.to_string().contains("Mesh::start"), "{err}");
    let err = MeshClient::new(config(&[(
        "SPIFFE_ENDPOINT_SOCKET",
        "unix:///run/spire/agent.sock".into(),
    )]))
    .expect_err("never plaintext when mTLS is configured");
    assert!(err.to_string().contains("SPIFFE_ENDPOINT_SOCKET"), "{err}");
}

#[tokio::test]
async fn a_pushed_svid_whose_key_does_not_match_is_refused_and_the_last_good_stays() {
    let other = DevCa::new("other.org").unwrap();
    let pki = Pki::new("example.org");
    let agent = WorkloadApiServer::start().await;
    let good = pki.ca().issue(&spiffe_id(BACKEND_ID)).unwrap();
    agent.push(response(&good, pki.ca(), &[&other]));
    let source = IdentitySource::from_workload_api(&WorkloadApiConfig::new(agent.address()))
        .await
        .expect("first SVID");
    assert_eq!(source.current().serial(), good.serial);
    let mut domains: Vec<String> = source
        .current()
        .trust_domains()
        .map(|d| d.to_string())
        .collect();
    domains.sort();
    assert_eq!(
        domains,
        ["example.org", "other.org"],
        "own and federated bundles, one per domain"
    );

    // A certificate with the key of another one.
    let mut bad = pki.ca().issue(&spiffe_id(BACKEND_ID)).unwrap();
    bad.key_pem = pki.ca().issue(&spiffe_id(BACKEND_ID)).unwrap().key_pem;
    agent.push(response(&bad, pki.ca(), &[&other]));
    agent.wait_sent(2).await;
    // Then a good one: the stream is ordered, so once it is current the bad
    // one has been judged, and it never became current.
    let next = pki.ca().issue(&spiffe_id(BACKEND_ID)).unwrap();
    agent.push(response(&next, pki.ca(), &[&other]));
    let mut generations = source.subscribe();
    tokio::time::timeout(Duration::from_secs(60), async {
        while source.current().serial() != next.serial {
            generations.changed().await.expect("identity source alive");
        }
    })
    .await
    .expect("the next good SVID becomes current");
    assert_eq!(
        source.generation(),
        1,
        "only the good update rotated; the bad one was refused"
    );
    assert_eq!(
        agent.streams_opened(),
        1,
        "a bad update does not break the stream"
    );
}

#[tokio::test]
async fn a_broken_stream_keeps_the_identity_and_reconnects_for_the_next_svid() {
    let pki = Pki::new("example.org");
    let agent = WorkloadApiServer::start().await;
    let first = pki.ca().issue(&spiffe_id(BACKEND_ID)).unwrap();
    agent.push(response(&first, pki.ca(), &[]));
    let source = IdentitySource::from_workload_api(&WorkloadApiConfig::new(agent.address()))
        .await
        .expect("first SVID");

    // The agent restarts: the stream breaks, the mesh opens a new one.
    agent.hang_up();
    tokio::time::timeout(Duration::from_secs(60), agent.wait_streams(2))
        .await
        .expect("the mesh reconnects after the stream breaks");
    assert_eq!(
        source.current().serial(),
        first.serial,
        "the identity in force stays"
    );

    let second = pki.ca().issue(&spiffe_id(BACKEND_ID)).unwrap();
    agent.push(response(&second, pki.ca(), &[]));
    let mut generations = source.subscribe();
    tokio::time::timeout(Duration::from_secs(60), async {
        while source.current().serial() != second.serial {
            generations.changed().await.expect("identity source alive");
        }
    })
    .await
    .expect("an SVID pushed on the new stream becomes current");
    // The new stream replays the latest response first (the same SVID): not a rotation.
    assert_eq!(source.generation(), 1);
}

#[tokio::test]
async fn the_test_agent_refuses_calls_without_the_security_header_like_spire() {
    use mesh_tests::workload_api::proto::{X509svidRequest, X509svidResponse};
    let agent = WorkloadApiServer::start().await;
    let path = agent.address().trim_start_matches("unix://").to_owned();
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .expect("connect to the agent");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let codec = tonic_prost::ProstCodec::<X509svidRequest, X509svidResponse>::default();
    let status = grpc
        .server_streaming(
            tonic::Request::new(X509svidRequest {}),
            http::uri::PathAndQuery::from_static("/SpiffeWorkloadAPI/FetchX509SVID"),
            codec,
        )
        .await
        .expect_err("no header, no SVID");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "security header missing from request");
    assert_eq!(agent.refused_without_header(), 1);
    assert_eq!(agent.streams_opened(), 0);
}
