//! The harness's parts against the real things: its certificates in a real
//! mTLS handshake, the sidecar pair through real nginx and haproxy, and the
//! generator's accounting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mesh_benches::load;
use mesh_benches::pki::{PkiFiles, SERVER_NAME};
use mesh_benches::server;
use mesh_benches::sidecar::Sidecars;
use mesh_benches::target::{CallFuture, RawTarget, Target, TcpConnect, TlsConnect};
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpListener;

async fn tls_server(pki: &PkiFiles) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server::serve_tls(listener, pki.server_config().unwrap()));
    addr
}

#[tokio::test]
async fn raw_client_and_server_complete_mutual_tls_with_the_generated_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = PkiFiles::generate(dir.path()).unwrap();
    let addr = tls_server(&pki).await;
    let target = RawTarget::new(
        addr,
        SERVER_NAME,
        TlsConnect::new(pki.client_config().unwrap()),
        1,
    );
    target.call().await.expect("an mTLS request succeeds");
    target
        .call()
        .await
        .expect("the pooled connection is reused");
}

#[tokio::test]
async fn server_refuses_a_client_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = PkiFiles::generate(dir.path()).unwrap();
    let addr = tls_server(&pki).await;
    // Same CA, no client certificate.
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(pki.ca()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let target = RawTarget::new(addr, SERVER_NAME, TlsConnect::new(Arc::new(config)), 1);
    assert!(target.call().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_pair_carries_requests_over_mtls_and_haproxy_requires_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = PkiFiles::generate(dir.path()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(server::serve_plain(listener));

    let sidecars = match Sidecars::start(&pki, dir.path(), backend) {
        Ok(s) => s,
        Err(e) => panic!("{e} (scripts/test.sh installs nginx and haproxy when missing)"),
    };
    let through = RawTarget::new(sidecars.listen, SERVER_NAME, TcpConnect, 2);
    for _ in 0..20 {
        through.call().await.expect("nginx → haproxy → server");
    }

    // haproxy's port is the one nginx's configuration names; a client
    // without a certificate must be refused there.
    let cfg = std::fs::read_to_string(dir.path().join("haproxy.cfg")).unwrap();
    let bind = cfg
        .lines()
        .find_map(|l| l.trim().strip_prefix("bind "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap();
    let plain_to_haproxy = RawTarget::new(bind.parse().unwrap(), SERVER_NAME, TcpConnect, 1);
    assert!(plain_to_haproxy.call().await.is_err());
    drop(sidecars);
}

/// Counts calls and answers at once.
struct Counter(Arc<AtomicU64>);

impl Target for Counter {
    fn call(&self) -> CallFuture {
        self.0.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { Ok(()) })
    }
}

#[test]
fn open_loop_sends_the_offered_number_of_requests_and_records_each() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let target: Arc<dyn Target> = Arc::new(Counter(calls.clone()));
    let run = load::open_loop(
        runtime.handle(),
        &target,
        2000.0,
        Duration::from_millis(100),
    );
    assert_eq!(calls.load(Ordering::Relaxed), 200);
    assert_eq!(run.ok, 200);
    assert_eq!(run.lag.expect("open loop records its lag").len(), 200);
}

#[tokio::test]
async fn closed_loop_counts_only_successes_as_throughput() {
    struct Failing;
    impl Target for Failing {
        fn call(&self) -> CallFuture {
            Box::pin(async {
                tokio::task::yield_now().await;
                Err("refused".into())
            })
        }
    }
    let target: Arc<dyn Target> = Arc::new(Failing);
    let result = load::closed_loop(&target, 2, Duration::from_millis(20)).await;
    assert_eq!(result.ok, 0);
    assert_eq!(result.throughput, 0.0);
    assert!(result.errors > 0);
}

#[tokio::test]
async fn mesh_client_from_variables_reaches_the_mesh_inbound_server_over_spiffe_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = PkiFiles::generate(dir.path()).unwrap();
    let server_config = mesh_core::config::MeshConfig::builder("bench-server")
        .identity(pki.server_identity())
        .build()
        .unwrap();
    let server_mesh = mesh_http::Mesh::new(server_config).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server::serve_mesh(listener, server_mesh));

    let mut vars = pki.client_tls_vars();
    vars.push(("MESH_SERVICE_NAME".into(), "bench-client".into()));
    vars.push(("MESH_SERVICE_BENCH_ENDPOINTS".into(), addr.to_string()));
    let vars: std::collections::BTreeMap<String, String> = vars.into_iter().collect();
    let config = mesh_core::config::MeshConfig::from_source(&vars).unwrap();
    let mesh = mesh_http::Mesh::new(config).unwrap();
    assert!(mesh.identity().is_some(), "MESH_TLS_* turn mTLS on");
    let client = mesh.client();
    client.ready().await;
    let target = mesh_benches::target::MeshTarget::new(client);
    target
        .call()
        .await
        .expect("mesh → inbound server over mTLS");
}
