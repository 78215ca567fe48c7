//! The TLS signals the mesh emits, read back through a real `metrics`
//! recorder: handshake failures by reason, identity reloads, certificate expiry.
//! (One test binary, because the recorder is process-global.)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::routing::get;
use axum::Router;
use mesh_core::identity::dev::SvidOptions;
use mesh_core::metric_names::{CONFIG_RELOADS, TLS_CERTIFICATE_EXPIRATION, TLS_HANDSHAKE_FAILURES};
use mesh_core::tls;
use mesh_http::server::{InboundOptions, InboundServer};
use mesh_tests::pki::{require_tool, PemFiles, Pki, SERVER_DNS_NAME};
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, SharedString, Unit,
};
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::sync::Notify;

/// Records counter totals and last gauge values by `name{k=v,...}`.
#[derive(Default)]
struct Recorded {
    values: Mutex<HashMap<String, f64>>,
    changed: Notify,
}

struct Cell {
    key: String,
    recorded: Arc<Recorded>,
}

impl Cell {
    fn update(&self, f: impl FnOnce(&mut f64)) {
        f(self
            .recorded
            .values
            .lock()
            .entry(self.key.clone())
            .or_default());
        self.recorded.changed.notify_waiters();
    }
}

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.update(|v| *v += value as f64);
    }
    fn absolute(&self, value: u64) {
        self.update(|v| *v = value as f64);
    }
}

impl GaugeFn for Cell {
    fn increment(&self, value: f64) {
        self.update(|v| *v += value);
    }
    fn decrement(&self, value: f64) {
        self.update(|v| *v -= value);
    }
    fn set(&self, value: f64) {
        self.update(|v| *v = value);
    }
}

struct TestRecorder(Arc<Recorded>);

impl TestRecorder {
    fn cell(&self, key: &Key) -> Arc<Cell> {
        let mut labels: Vec<_> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        Arc::new(Cell {
            key: format!("{}{{{}}}", key.name(), labels.join(",")),
            recorded: self.0.clone(),
        })
    }
}

impl metrics::Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.cell(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.cell(key))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

impl Recorded {
    fn get(&self, key: &str) -> f64 {
        self.values.lock().get(key).copied().unwrap_or(0.0)
    }

    /// Waits (event-driven, bounded) until `key` reaches `at_least`.
    async fn wait_for(&self, key: &str, at_least: f64) {
        let reached = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if self.get(key) >= at_least {
                    return;
                }
                changed.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(20), reached)
            .await
            .is_err()
        {
            panic!(
                "{key} stayed at {} (wanted {at_least}); recorded: {:?}",
                self.get(key),
                self.values.lock()
            );
        }
    }
}

fn failures(reason: &str) -> String {
    format!("{}{{mesh.reason={reason}}}", TLS_HANDSHAKE_FAILURES.name)
}

async fn curl(port: u16, ca: &std::path::Path, client: Option<&PemFiles>) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "--resolve"])
        .arg(format!("{SERVER_DNS_NAME}:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(ca);
    if let Some(files) = client {
        cmd.arg("--cert")
            .arg(&files.cert)
            .arg("--key")
            .arg(&files.key);
    }
    let out = cmd
        .arg(format!("https://{SERVER_DNS_NAME}:{port}/"))
        .output()
        .await
        .expect("run curl");
    assert!(!out.status.success(), "curl was let in");
}

#[tokio::test]
async fn tls_signals_count_failures_by_reason_reloads_and_expiry() {
    require_tool("curl", "curl");
    let recorded = Arc::new(Recorded::default());
    metrics::set_global_recorder(TestRecorder(recorded.clone())).expect("no other recorder");

    let pki = Pki::new("example.org");
    let foreign = Pki::new("other.org");
    let (server_files, source) = pki.server_source("api", "spiffe://example.org/api");

    // Expiry gauge: the server SVID's notAfter as a Unix timestamp.
    let expiry_key = format!(
        "{}{{mesh.identity=spiffe://example.org/api}}",
        TLS_CERTIFICATE_EXPIRATION.name
    );
    let not_after = source
        .current()
        .not_after()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert_eq!(recorded.get(&expiry_key), not_after);

    let server = InboundServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        tls::server_config(&source, []),
    )
    .await
    .unwrap()
    .with_options(InboundOptions::default().handshake_timeout(Duration::from_millis(200)));
    let port = server.local_addr().unwrap().port();
    tokio::spawn(server.serve(
        Router::new().route("/", get(|| async { "hi" })),
        std::future::pending(),
    ));

    let expired = pki.expired("old", "spiffe://example.org/web");
    let stranger = foreign.client("stranger", "spiffe://other.org/web");
    let forged_svid = foreign
        .ca()
        .issue_with(SvidOptions::new("spiffe://example.org/web"))
        .unwrap();
    let forged = foreign.write("forged", &forged_svid);
    let cases = [
        ("no_client_certificate", None),
        ("expired", Some(&expired)),
        ("untrusted_domain", Some(&stranger)),
        ("unknown_issuer", Some(&forged)),
    ];
    for (reason, client) in cases {
        curl(port, &pki.bundle(), client).await;
        recorded.wait_for(&failures(reason), 1.0).await;
    }

    // A connection that never sends a ClientHello runs into the handshake timeout.
    let _idle = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    recorded.wait_for(&failures("timeout"), 1.0).await;

    // Reloads: a half-written certificate is an error, a good rotation is ok.
    let reloads = |outcome: &str| {
        format!(
            "{}{{mesh.outcome={outcome},mesh.source=identity}}",
            CONFIG_RELOADS.name
        )
    };
    let pem = std::fs::read_to_string(&server_files.cert).unwrap();
    std::fs::write(&server_files.cert, &pem[..pem.len() / 2]).unwrap();
    assert!(source.reload().is_err());
    assert_eq!(recorded.get(&reloads("error")), 1.0);
    let rotated = pki
        .ca()
        .issue_with(SvidOptions::new("spiffe://example.org/api").dns_name(SERVER_DNS_NAME))
        .unwrap();
    rotated
        .write(&server_files.cert, &server_files.key)
        .unwrap();
    source.reload().unwrap();
    assert_eq!(recorded.get(&reloads("ok")), 1.0);
    let new_not_after = source
        .current()
        .not_after()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert_eq!(recorded.get(&expiry_key), new_not_after);
}
