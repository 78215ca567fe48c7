//! The inbound mTLS server against real foreign peers (curl, openssl s_client)
//! and against idle connections that never start a handshake.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use mesh_core::identity::dev::SvidOptions;
use mesh_core::identity::{IdentitySource, SpiffeId};
use mesh_core::tls;
use mesh_http::server::{InboundOptions, InboundServer, PeerIdentity};
use mesh_tests::pki::{require_tool, spiffe_id, PemFiles, Pki, SERVER_DNS_NAME};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::sync::oneshot;
use tokio::time::Instant;

const SERVER_ID: &str = "spiffe://example.org/ns/prod/sa/api";
const CLIENT_ID: &str = "spiffe://example.org/ns/prod/sa/web";

/// An inbound server on loopback with a `/whoami` route that answers the
/// caller's SPIFFE ID and counts its calls.
struct Running {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn start(source: &IdentitySource, options: InboundOptions) -> Self {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let app = Router::new()
            .route(
                "/whoami",
                get(move |PeerIdentity(peer): PeerIdentity| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async move { peer.to_string() }
                }),
            )
            // Longer than the header-read timeouts the tests below set.
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    "slow"
                }),
            );
        let server = InboundServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            tls::server_config(source, []),
        )
        .await
        .unwrap()
        .with_options(options);
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(app, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            calls,
            stop: Some(stop),
            task,
        }
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("the server did not shut down")
            .unwrap();
    }
}

struct CurlResult {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn curl(
    addr: SocketAddr,
    ca: &std::path::Path,
    client: Option<&PemFiles>,
    http: &[&str],
) -> CurlResult {
    let port = addr.port();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20"])
        .args(http)
        .arg("--resolve")
        .arg(format!("{SERVER_DNS_NAME}:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(ca)
        .args(["-w", "\n%{http_code} %{http_version}"]);
    if let Some(files) = client {
        cmd.arg("--cert")
            .arg(&files.cert)
            .arg("--key")
            .arg(&files.key);
    }
    cmd.arg(format!("https://{SERVER_DNS_NAME}:{port}/whoami"));
    let out = cmd.output().await.expect("run curl");
    CurlResult {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test]
async fn curl_with_a_dev_ca_client_certificate_gets_200_and_the_handler_sees_its_id() {
    require_tool("curl", "curl");
    let pki = Pki::new("example.org");
    let (_server_files, source) = pki.server_source("api", SERVER_ID);
    let client = pki.client("web", CLIENT_ID);
    let server = Running::start(&source, InboundOptions::default()).await;

    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let out = curl(server.addr, &pki.bundle(), Some(&client), &[flag]).await;
        assert!(out.ok, "curl {flag} failed: {}", out.stderr);
        assert_eq!(
            out.stdout,
            format!("{CLIENT_ID}\n200 {version}"),
            "curl {flag}"
        );
    }
    assert_eq!(server.calls.load(Ordering::SeqCst), 2);
    server.shutdown().await;
}

/// ALPN `http/1.1` gets hyper's HTTP/1 server directly; a client that offers
/// no ALPN gets the server that tells the versions apart by their first bytes.
#[tokio::test]
async fn a_client_offering_no_alpn_is_served_over_http1_and_http2() {
    require_tool("curl", "curl");
    let pki = Pki::new("example.org");
    let (_server_files, source) = pki.server_source("api", SERVER_ID);
    let client = pki.client("web", CLIENT_ID);
    let server = Running::start(&source, InboundOptions::default()).await;

    for (flags, version) in [
        (["--no-alpn", "--http1.1"], "1.1"),
        (["--no-alpn", "--http2-prior-knowledge"], "2"),
    ] {
        let out = curl(server.addr, &pki.bundle(), Some(&client), &flags).await;
        assert!(out.ok, "curl {flags:?} failed: {}", out.stderr);
        assert_eq!(
            out.stdout,
            format!("{CLIENT_ID}\n200 {version}"),
            "curl {flags:?}"
        );
    }
    assert_eq!(server.calls.load(Ordering::SeqCst), 2);
    server.shutdown().await;
}

#[tokio::test]
async fn curl_without_a_certificate_or_with_a_foreign_or_expired_one_is_refused() {
    require_tool("curl", "curl");
    let pki = Pki::new("example.org");
    let foreign = Pki::new("other.org");
    let (_server_files, source) = pki.server_source("api", SERVER_ID);
    let server = Running::start(&source, InboundOptions::default()).await;

    let stranger = foreign.client("stranger", "spiffe://other.org/ns/prod/sa/web");
    let expired = pki.expired("old", CLIENT_ID);
    // other.org's CA claims an ID in example.org: only example.org's bundle may vouch for it.
    let forged = foreign.write(
        "forged",
        &foreign
            .ca()
            .issue_with(SvidOptions::new(CLIENT_ID))
            .unwrap(),
    );
    // Each refusal arrives as the TLS alert that names its cause.
    let cases = [
        ("no certificate", None, "alert certificate required"),
        (
            "another trust domain",
            Some(&stranger),
            "alert certificate unknown",
        ),
        ("expired", Some(&expired), "alert certificate expired"),
        (
            "forged by another domain's CA",
            Some(&forged),
            "alert certificate unknown",
        ),
    ];
    for (case, client, alert) in cases {
        let out = curl(server.addr, &pki.bundle(), client, &["--http1.1"]).await;
        assert!(!out.ok, "{case}: curl succeeded: {}", out.stdout);
        assert!(
            !out.stdout.contains(CLIENT_ID),
            "{case}: the handler answered: {}",
            out.stdout
        );
        assert!(out.stderr.contains(alert), "{case}: {}", out.stderr);
    }
    assert_eq!(server.calls.load(Ordering::SeqCst), 0);
    server.shutdown().await;
}

/// Runs `openssl s_client` with a client SVID; returns its output and the
/// SPIFFE ID and serial of the certificate the server presented.
async fn s_client(addr: SocketAddr, pki: &Pki, client: &PemFiles) -> (String, SpiffeId, String) {
    let out = Command::new("openssl")
        .args(["s_client", "-tls1_3", "-showcerts", "-verify_return_error"])
        .arg("-connect")
        .arg(addr.to_string())
        .args(["-servername", "api"])
        .arg("-CAfile")
        .arg(pki.bundle())
        .arg("-cert")
        .arg(&client.cert)
        .arg("-key")
        .arg(&client.key)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run openssl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let leaf = CertificateDer::from_pem_slice(stdout.as_bytes())
        .unwrap_or_else(|e| panic!("no certificate in s_client output ({e}): {stdout}"));
    let id = mesh_core::identity::spiffe_id_of(&leaf).unwrap();
    // Ask openssl itself for the serial of the certificate it received.
    let start = stdout.find("-----BEGIN CERTIFICATE-----").unwrap();
    let end = stdout.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----".len();
    let presented = pki.dir().join("presented.pem");
    std::fs::write(&presented, &stdout[start..end]).unwrap();
    let serial = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(&presented)
        .output()
        .await
        .expect("run openssl x509");
    let serial = String::from_utf8_lossy(&serial.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase();
    (stdout, id, serial)
}

#[tokio::test]
async fn openssl_sees_tls13_and_the_server_spiffe_id_and_the_rotated_serial() {
    require_tool("openssl", "openssl");
    let pki = Pki::new("example.org");
    let (server_files, source) = pki.server_source("api", SERVER_ID);
    let mut rotations = source.subscribe();
    let _watch = source.watch().unwrap();
    let client = pki.client("web", CLIENT_ID);
    let server = Running::start(&source, InboundOptions::default()).await;

    let (out, id, serial) = s_client(server.addr, &pki, &client).await;
    assert!(out.contains("TLSv1.3"), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert_eq!(id.as_str(), SERVER_ID);
    assert_eq!(serial, server_files.serial);

    // Rotate the server's files; the next handshake presents the new serial.
    let rotated = pki.server("api", SERVER_ID);
    tokio::time::timeout(Duration::from_secs(20), rotations.changed())
        .await
        .expect("the rotation was not picked up")
        .unwrap();
    let (_, id, serial) = s_client(server.addr, &pki, &client).await;
    assert_eq!(id.as_str(), SERVER_ID);
    assert_eq!(serial, rotated.serial);
    assert_ne!(rotated.serial, server_files.serial);
    server.shutdown().await;
}

/// One `GET /whoami` over mTLS and HTTP/1.1; returns status and body.
async fn mesh_get(addr: SocketAddr, client: &IdentitySource) -> (u16, String) {
    let tls = tls_connect(addr, client, &[b"http/1.1"]).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = sender.send_request(get_request("/whoami")).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// `GET path` for the test server.
fn get_request(path: &str) -> http::Request<Empty<bytes::Bytes>> {
    http::Request::get(path)
        .header("host", "api")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap()
}

/// The server started with `options`, and a client identity of `pki` to call
/// it with.
async fn server_and_client(pki: &Pki, options: InboundOptions) -> (Running, IdentitySource) {
    let (_server_files, source) = pki.server_source("api", SERVER_ID);
    let client_files = pki.client("web", CLIENT_ID);
    let client = IdentitySource::from_files(client_files.identity_files()).unwrap();
    (Running::start(&source, options).await, client)
}

#[tokio::test]
async fn idle_connections_without_client_hello_do_not_delay_a_real_handshake() {
    let pki = Pki::new("example.org");
    let handshake_timeout = Duration::from_secs(30);
    let (server, client) = server_and_client(
        &pki,
        InboundOptions::default().handshake_timeout(handshake_timeout),
    )
    .await;

    // 200 connections that never send a ClientHello. A server that handshakes
    // on its accept loop would make the real client wait the full 30 s.
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }

    let started = Instant::now();
    let (status, body) = mesh_get(server.addr, &client).await;
    let took = started.elapsed();
    assert_eq!((status, body.as_str()), (200, CLIENT_ID));
    assert!(
        took < handshake_timeout / 3,
        "the real handshake took {took:?}, with a 30 s handshake timeout"
    );
    drop(idle);
    server.shutdown().await;
}

/// An mTLS connection offering exactly `alpn` (empty: none), not yet speaking.
async fn tls_connect(
    addr: SocketAddr,
    client: &IdentitySource,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut config = (*tls::client_config(client, spiffe_id(SERVER_ID).into())).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("api").unwrap(), tcp)
        .await
        .unwrap()
}

/// Slowloris: a client that sends its request head one byte at a time, each
/// byte well within the timeout but the whole head far beyond it, is cut off
/// once the header-read timeout has passed since it started — over HTTP/1 by
/// ALPN (the server's own per-connection timer) and without ALPN (hyper's).
#[tokio::test]
async fn a_client_trickling_its_request_head_is_cut_off_at_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let pki = Pki::new("example.org");
    let timeout = Duration::from_millis(500);
    let (server, client) =
        server_and_client(&pki, InboundOptions::default().header_read_timeout(timeout)).await;

    for alpn in [&[&b"http/1.1"[..]][..], &[]] {
        // Before the handshake: the server's clock starts after it.
        let started = Instant::now();
        let stream = tls_connect(server.addr, &client, alpn).await;
        let (mut read, mut write) = tokio::io::split(stream);
        // 200 bytes at one per 50 ms: 10 s for the whole head, 20 times the timeout.
        let head = format!(
            "GET /whoami HTTP/1.1\r\nhost: api\r\nx-pad: {}\r\n\r\n",
            "a".repeat(150)
        );
        let trickle = tokio::spawn(async move {
            let mut sent = 0;
            for byte in head.as_bytes() {
                if write.write_all(&[*byte]).await.is_err() || write.flush().await.is_err() {
                    break;
                }
                sent += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (sent, head.len())
        });
        let mut buf = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(8), read.read_to_end(&mut buf)).await;
        let took = started.elapsed();
        assert!(
            closed.is_ok(),
            "ALPN {alpn:?}: the server kept a trickling client for 8 s"
        );
        assert!(buf.is_empty(), "ALPN {alpn:?}: no response is due: {buf:?}");
        assert!(
            took >= timeout,
            "ALPN {alpn:?}: cut off after {took:?}, before the timeout"
        );
        trickle.abort();
        let _ = trickle.await;
    }
    assert_eq!(
        server.calls.load(Ordering::SeqCst),
        0,
        "no head was complete"
    );
    server.shutdown().await;
}

/// A server with a header-read timeout of `timeout`, and an HTTP/1.1
/// connection to it: its sender and the spawned task driving it.
async fn keep_alive_connection(
    timeout: Duration,
) -> (
    Running,
    hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let pki = Pki::new("example.org");
    let (server, client) =
        server_and_client(&pki, InboundOptions::default().header_read_timeout(timeout)).await;
    let stream = tls_connect(server.addr, &client, &[b"http/1.1"]).await;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    (server, sender, tokio::spawn(conn))
}

/// Once a response has been written, the next head is awaited: a keep-alive
/// connection that then sends nothing is closed at the header-read timeout,
/// counted from the end of that response.
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_the_header_read_timeout() {
    let timeout = Duration::from_millis(500);
    let (server, mut sender, conn) = keep_alive_connection(timeout).await;
    let response = sender.send_request(get_request("/whoami")).await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap();
    let answered = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(8), conn).await;
    let idle = answered.elapsed();
    assert!(closed.is_ok(), "the server kept an idle connection for 8 s");
    assert!(
        idle >= timeout,
        "closed after {idle:?} idle, before the timeout"
    );
    server.shutdown().await;
}

/// The timeout bounds each head, not the connection: a keep-alive connection
/// whose requests (and one handler that runs longer than the timeout) span
/// several timeouts is served throughout.
#[tokio::test]
async fn a_keep_alive_connection_outliving_the_header_read_timeout_is_served() {
    let timeout = Duration::from_millis(500);
    let (server, mut sender, conn) = keep_alive_connection(timeout).await;
    // Eight requests 150 ms apart: 1.2 s on one connection, each head prompt.
    for _ in 0..8 {
        let response = sender.send_request(get_request("/whoami")).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // A handler busy for three timeouts: no head is awaited meanwhile.
    let response = sender.send_request(get_request("/slow")).await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap();
    let response = sender.send_request(get_request("/whoami")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(server.calls.load(Ordering::SeqCst), 9);
    assert!(!conn.is_finished(), "the connection stayed open");
    server.shutdown().await;
}
