//! The inbound server's readiness on shutdown: it turns not-ready first, keeps
//! serving through the shutdown delay, then stops accepting and drains.

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use mesh_core::tls;
use mesh_http::server::{InboundOptions, InboundServer, PeerIdentity};
use mesh_tests::pki::{require_tool, PemFiles, Pki, SERVER_DNS_NAME};
use tokio::process::Command;

/// GETs `path` with curl and a client certificate; `None` when curl could not
/// connect at all.
async fn get_status(addr: SocketAddr, pki: &Pki, client: &PemFiles, path: &str) -> Option<u16> {
    let port = addr.port();
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg("--resolve")
        .arg(format!("{SERVER_DNS_NAME}:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(pki.bundle())
        .arg("--cert")
        .arg(&client.cert)
        .arg("--key")
        .arg(&client.key)
        .arg(format!("https://{SERVER_DNS_NAME}:{port}{path}"))
        .output()
        .await
        .expect("run curl");
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .parse()
            .expect("a status code")
    })
}

#[tokio::test]
async fn readiness_flips_to_not_ready_before_the_listener_stops_accepting() {
    require_tool("curl", "curl");
    let pki = Pki::new("example.org");
    let (_files, source) = pki.server_source("api", "spiffe://example.org/api");
    let client = pki.client("web", "spiffe://example.org/web");
    // A delay far longer than the few requests made inside it take.
    let delay = Duration::from_secs(10);
    let server = InboundServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        tls::server_config(&source, []),
    )
    .await
    .unwrap()
    .with_options(InboundOptions::default().shutdown_delay(delay));
    let addr = server.local_addr().unwrap();
    let readiness = server.readiness();
    assert!(!readiness.is_ready(), "ready before serving");
    let probe = readiness.clone();
    let app = Router::new()
        .route("/ready", get(move || async move { probe.status() }))
        .route(
            "/whoami",
            get(|PeerIdentity(peer): PeerIdentity| async move { peer.to_string() }),
        );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(app, async {
        let _ = stopped.await;
    }));

    readiness.wait_for(true).await;
    assert_eq!(get_status(addr, &pki, &client, "/ready").await, Some(200));

    stop.send(()).unwrap();
    readiness.wait_for(false).await;
    // Not ready, yet still serving new connections during the delay.
    assert_eq!(get_status(addr, &pki, &client, "/ready").await, Some(503));
    assert_eq!(get_status(addr, &pki, &client, "/whoami").await, Some(200));
    assert!(
        !task.is_finished(),
        "the server stopped before its shutdown delay"
    );

    // After the delay the listener closes and the server returns.
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the server did not stop after its shutdown delay")
        .unwrap();
    assert_eq!(
        get_status(addr, &pki, &client, "/ready").await,
        None,
        "still accepting"
    );
    assert!(!readiness.is_ready());
}
