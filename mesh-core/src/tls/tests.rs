//! Real handshakes over loopback, tokio-rustls on both ends.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::identity::dev::{DevCa, Svid, SvidOptions};
use crate::identity::IdentityFiles;

struct Workload {
    _dir: tempfile::TempDir,
    files: IdentityFiles,
    source: IdentitySource,
}

fn workload(ca: &DevCa, id: &str, federated: &[&DevCa]) -> Workload {
    let dir = tempfile::tempdir().unwrap();
    let mut files = ca
        .write_identity(dir.path(), "svid", &id.parse().unwrap())
        .unwrap();
    for other in federated {
        let path = dir.path().join(format!("{}.pem", other.trust_domain()));
        other.write_bundle(&path).unwrap();
        files = files.with_federated(other.trust_domain().clone(), path);
    }
    let source = IdentitySource::from_files(files.clone()).unwrap();
    Workload {
        _dir: dir,
        files,
        source,
    }
}

/// A client that presents `svid` verbatim (it may be expired or foreign,
/// which an `IdentitySource` would refuse to load) and verifies the server
/// like a mesh client.
fn raw_client(svid: &Svid, trusts: &IdentitySource, expected: &str) -> Arc<ClientConfig> {
    let chain = CertificateDer::pem_slice_iter(svid.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(svid.key_pem.as_bytes()).unwrap();
    let verifier = verify::ServerVerifier::new(trusts.clone(), expected.parse().unwrap());
    let config = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)
        .unwrap();
    Arc::new(config)
}

struct Outcome {
    client: Result<ConnInfo, std::io::Error>,
    server: Result<ConnInfo, std::io::Error>,
}

#[derive(Debug)]
struct ConnInfo {
    peer: Option<SpiffeId>,
    peer_serial: Option<String>,
    alpn: Option<Vec<u8>>,
    version: Option<rustls::ProtocolVersion>,
}

fn info(conn: &rustls::CommonState) -> ConnInfo {
    ConnInfo {
        peer: peer_spiffe_id(conn),
        peer_serial: conn.peer_certificates().map(|c| {
            let (_, cert) = x509_parser::parse_x509_certificate(c[0].as_ref()).unwrap();
            cert.raw_serial_as_string().replace(':', "")
        }),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        version: conn.protocol_version(),
    }
}

/// Runs one handshake and a one-byte exchange (so a client-side success also
/// means the server accepted the client certificate).
async fn handshake(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = TlsAcceptor::from(server).accept(tcp).await?;
        let info = info(tls.get_ref().1);
        tls.write_all(b"k").await?;
        tls.flush().await?;
        Ok(info)
    });
    let client_result = async {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("api").unwrap();
        let mut tls = TlsConnector::from(client).connect(name, tcp).await?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await?;
        Ok(info(tls.get_ref().1))
    }
    .await;
    Outcome {
        client: client_result,
        server: server_task.await.unwrap(),
    }
}

fn peer_error(err: &std::io::Error) -> Option<&PeerIdentityError> {
    let rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) =
        err.get_ref()?.downcast_ref::<rustls::Error>()?
    else {
        return None;
    };
    other.0.downcast_ref()
}

#[tokio::test]
async fn good_pair_handshakes_over_tls13_with_alpn_and_both_see_spiffe_ids() {
    let ca = DevCa::new("example.org").unwrap();
    let api = workload(&ca, "spiffe://example.org/api", &[]);
    let web = workload(&ca, "spiffe://example.org/web", &[]);
    let out = handshake(
        client_config(&web.source, "spiffe://example.org/api".parse().unwrap()),
        server_config(&api.source, [api.source.own_trust_domain()]),
    )
    .await;
    let client = out.client.unwrap();
    let server = out.server.unwrap();
    assert_eq!(client.peer.unwrap().as_str(), "spiffe://example.org/api");
    assert_eq!(server.peer.unwrap().as_str(), "spiffe://example.org/web");
    assert_eq!(client.version, Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(client.alpn.as_deref(), Some(ALPN_H2));
}

#[tokio::test]
async fn server_refuses_a_client_from_a_trust_domain_it_has_no_bundle_for() {
    let ours = DevCa::new("example.org").unwrap();
    let theirs = DevCa::new("other.org").unwrap();
    let api = workload(&ours, "spiffe://example.org/api", &[]);
    // The client trusts our domain, so only the server side can refuse.
    let stranger = workload(&theirs, "spiffe://other.org/web", &[&ours]);
    let out = handshake(
        client_config(&stranger.source, "example.org".parse().unwrap()),
        server_config(&api.source, []),
    )
    .await;
    let err = out.server.unwrap_err();
    let refused = peer_error(&err).expect("a SPIFFE refusal");
    assert!(
        matches!(refused, PeerIdentityError::NoBundle { .. }),
        "{refused}"
    );
    assert!(out.client.is_err());
}

#[tokio::test]
async fn server_refuses_a_federated_domain_it_does_not_accept_on_this_listener() {
    let ours = DevCa::new("example.org").unwrap();
    let theirs = DevCa::new("other.org").unwrap();
    let api = workload(&ours, "spiffe://example.org/api", &[&theirs]);
    let partner = workload(&theirs, "spiffe://other.org/web", &[&ours]);
    let out = handshake(
        client_config(&partner.source, "example.org".parse().unwrap()),
        server_config(&api.source, [api.source.own_trust_domain()]),
    )
    .await;
    let err = out.server.unwrap_err();
    assert!(matches!(
        peer_error(&err),
        Some(PeerIdentityError::NotAccepted { .. })
    ));

    // The same pair works once the listener accepts the federated domain.
    let out = handshake(
        client_config(&partner.source, "example.org".parse().unwrap()),
        server_config(&api.source, []),
    )
    .await;
    assert_eq!(
        out.server.unwrap().peer.unwrap().as_str(),
        "spiffe://other.org/web"
    );
}

#[tokio::test]
async fn a_ca_of_domain_a_cannot_vouch_for_an_id_in_domain_b() {
    let a = DevCa::new("a.org").unwrap();
    let b = DevCa::new("b.org").unwrap();
    // The server trusts both domains, each through its own bundle.
    let api = workload(&b, "spiffe://b.org/api", &[&a]);
    // A's CA mints an SVID claiming to be in B.
    let forged = a
        .issue_with(SvidOptions::new("spiffe://b.org/admin"))
        .unwrap();
    let out = handshake(
        raw_client(&forged, &api.source, "b.org"),
        server_config(&api.source, []),
    )
    .await;
    let err = out.server.unwrap_err();
    let refused = peer_error(&err).expect("a SPIFFE refusal");
    assert!(
        matches!(refused, PeerIdentityError::ChainNotVerified { .. }),
        "{refused}"
    );
    assert_eq!(
        refused.presented().unwrap().as_str(),
        "spiffe://b.org/admin"
    );
    assert_eq!(refused.reason(), "unknown_issuer");
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused_as_expired() {
    let ca = DevCa::new("example.org").unwrap();
    let api = workload(&ca, "spiffe://example.org/api", &[]);
    let expired = ca
        .issue_with(SvidOptions::new("spiffe://example.org/web").expired())
        .unwrap();
    let out = handshake(
        raw_client(&expired, &api.source, "example.org"),
        server_config(&api.source, []),
    )
    .await;
    let err = out.server.unwrap_err();
    let rustls_err = err
        .get_ref()
        .unwrap()
        .downcast_ref::<rustls::Error>()
        .unwrap();
    assert_eq!(failure_reason(rustls_err), "expired");
}

#[tokio::test]
async fn client_refuses_an_unexpected_server_and_says_expected_and_presented() {
    let ca = DevCa::new("example.org").unwrap();
    let api = workload(&ca, "spiffe://example.org/billing", &[]);
    let web = workload(&ca, "spiffe://example.org/web", &[]);
    let out = handshake(
        client_config(&web.source, "spiffe://example.org/api".parse().unwrap()),
        server_config(&api.source, []),
    )
    .await;
    let err = out.client.unwrap_err();
    let refused = peer_error(&err).expect("a SPIFFE refusal");
    assert!(refused.is_wrong_identity());
    let msg = err.to_string();
    assert!(
        msg.contains("expected server identity spiffe://example.org/api"),
        "{msg}"
    );
    assert!(
        msg.contains("presented spiffe://example.org/billing"),
        "{msg}"
    );
}

#[tokio::test]
async fn rotation_reaches_the_next_handshake_without_new_configs() {
    let ca = DevCa::new("example.org").unwrap();
    let api = workload(&ca, "spiffe://example.org/api", &[]);
    let web = workload(&ca, "spiffe://example.org/web", &[]);
    let client = client_config(&web.source, "spiffe://example.org/api".parse().unwrap());
    let server = server_config(&api.source, []);

    let before = handshake(client.clone(), server.clone()).await;
    assert_eq!(
        before.client.unwrap().peer_serial.as_deref(),
        Some(api.source.current().serial())
    );

    let next = ca
        .issue(&"spiffe://example.org/api".parse().unwrap())
        .unwrap();
    next.write(&api.files.cert, &api.files.key).unwrap();
    assert_eq!(
        api.source.reload().unwrap(),
        crate::identity::Reload::Rotated
    );

    let after = handshake(client, server).await;
    assert_eq!(after.client.unwrap().peer_serial, Some(next.serial));
}
