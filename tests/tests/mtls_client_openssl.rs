//! The mesh's client TLS configuration against a foreign server:
//! `openssl s_server` presenting dev-CA SVIDs and requiring a client certificate.

use std::process::Stdio;
use std::time::Duration;

use mesh_core::identity::IdentitySource;
use mesh_core::tls::{self, PeerIdentityError};
use mesh_tests::pki::{require_tool, spiffe_id, PemFiles, Pki};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const SERVER_ID: &str = "spiffe://example.org/api";
const CLIENT_ID: &str = "spiffe://example.org/web";

/// Starts `openssl s_server` on a port of its choosing (it prints
/// `ACCEPT 127.0.0.1:<port>`); the child is killed when dropped.
async fn s_server(server: &PemFiles, trusted_bundle: &std::path::Path) -> (Child, u16) {
    let mut child = Command::new("openssl")
        .args(["s_server", "-accept", "127.0.0.1:0", "-tls1_3", "-www"])
        .args(["-Verify", "1", "-verify_return_error"])
        .arg("-cert")
        .arg(&server.cert)
        .arg("-key")
        .arg(&server.key)
        .arg("-CAfile")
        .arg(trusted_bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("run openssl s_server");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(addr) = line.strip_prefix("ACCEPT ") {
                return addr.rsplit(':').next().unwrap().parse::<u16>().unwrap();
            }
        }
        panic!("openssl s_server exited before listening");
    })
    .await
    .expect("openssl s_server did not start listening");
    // Keep draining its output so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, port)
}

/// Connects with the mesh client config, sends one HTTP/1.0 GET and returns
/// the response head, or the handshake error.
async fn get(port: u16, client: &IdentitySource, expected: &str) -> std::io::Result<String> {
    let config = tls::client_config(client, expected.parse().unwrap());
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("api").unwrap(), tcp)
        .await?;
    tls.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
    let mut response = String::new();
    tls.read_to_string(&mut response).await.or_else(|e| {
        // s_server closes without close_notify after -www responses.
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Ok(0)
        } else {
            Err(e)
        }
    })?;
    Ok(response)
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
async fn mesh_client_talks_mtls_to_openssl_and_checks_its_spiffe_id() {
    require_tool("openssl", "openssl");
    let pki = Pki::new("example.org");
    let server_files = pki.server("api", SERVER_ID);
    let client = IdentitySource::from_files(pki.client("web", CLIENT_ID).identity_files()).unwrap();
    let (_server, port) = s_server(&server_files, &pki.bundle()).await;

    let response = get(port, &client, SERVER_ID).await.unwrap();
    assert!(response.starts_with("HTTP/1.0 200 ok"), "{response}");
    // s_server's status page shows the session it negotiated with our client:
    // TLS 1.3, and the client SVID it verified against the bundle.
    assert!(response.contains("Protocol  : TLSv1.3"), "{response}");
    assert!(response.contains("Client certificate"), "{response}");
    assert!(response.contains(&format!("URI:{CLIENT_ID}")), "{response}");

    let err = get(port, &client, "spiffe://example.org/billing")
        .await
        .unwrap_err();
    let refused = peer_error(&err).expect("a SPIFFE refusal");
    assert!(refused.is_wrong_identity(), "{refused}");
    assert_eq!(refused.presented(), Some(&spiffe_id(SERVER_ID)));
    let msg = err.to_string();
    assert!(
        msg.contains("expected server identity spiffe://example.org/billing")
            && msg.contains("presented spiffe://example.org/api"),
        "{msg}"
    );
}

#[tokio::test]
async fn mesh_client_refuses_an_openssl_server_from_an_unknown_trust_domain() {
    require_tool("openssl", "openssl");
    let pki = Pki::new("example.org");
    let foreign = Pki::new("other.org");
    let server_files = foreign.server("api", "spiffe://other.org/api");
    let client = IdentitySource::from_files(pki.client("web", CLIENT_ID).identity_files()).unwrap();
    let (_server, port) = s_server(&server_files, &pki.bundle()).await;

    let err = get(port, &client, "other.org").await.unwrap_err();
    assert!(
        matches!(peer_error(&err), Some(PeerIdentityError::NoBundle { .. })),
        "{err}"
    );
}
