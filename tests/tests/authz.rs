//! Inbound authorization end to end: a `Mesh` configured from `MESH_AUTHZ_*`
//! variables serves an axum router over mTLS; curl (a foreign client) calls it
//! with certificates of different SPIFFE IDs, sending paths exactly as written
//! (`--path-as-is`), and decisions are read back through a real `metrics`
//! recorder. (One recorder per process: tests that count run one at a time
//! and compare counts before and after.)

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use axum::routing::get;
use axum::Router;
use http::Uri;
use mesh_core::config::MeshConfig;
use mesh_core::metric_names::{label, AUTHZ_DECISIONS};
use mesh_http::Mesh;
use mesh_tests::pki::{require_tool, PemFiles, Pki, SERVER_DNS_NAME};
use metrics::{Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};
use parking_lot::Mutex;
use tokio::process::Command;

const PROD_WEB: &str = "spiffe://example.org/ns/prod/sa/web";
const DEV_WEB: &str = "spiffe://example.org/ns/dev/sa/web";
const RULES: &str = "deny * * /admin/*; allow spiffe://example.org/ns/prod/* GET /api/*";

/// `mesh.authz.decisions` totals by `outcome/reason/rule`.
#[derive(Default)]
struct Decisions(Mutex<HashMap<String, u64>>);

struct Cell(String);

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        *decisions().0.lock().entry(self.0.clone()).or_default() += value;
    }
    fn absolute(&self, _: u64) {}
}

struct TestRecorder;

impl metrics::Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        if key.name() != AUTHZ_DECISIONS.name {
            return Counter::noop();
        }
        let get = |k: &str| {
            key.labels()
                .find(|l| l.key() == k)
                .map_or("?".into(), |l| l.value().to_string())
        };
        let id = format!(
            "{}/{}/{}",
            get(label::OUTCOME),
            get(label::REASON),
            get(label::RULE)
        );
        Counter::from_arc(Arc::new(Cell(id)))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

fn decisions() -> &'static Decisions {
    static DECISIONS: OnceLock<Decisions> = OnceLock::new();
    DECISIONS.get_or_init(|| {
        metrics::set_global_recorder(TestRecorder).expect("no other recorder");
        Decisions::default()
    })
}

fn count(id: &str) -> u64 {
    decisions().0.lock().get(id).copied().unwrap_or(0)
}

/// Held by every test that serves, so counts change for one test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Counts since `before` was taken.
fn since(before: &HashMap<String, u64>, id: &str) -> u64 {
    count(id) - before.get(id).copied().unwrap_or(0)
}

fn snapshot() -> HashMap<String, u64> {
    decisions().0.lock().clone()
}

/// A `Mesh` inbound server with `/api/*` (answers the path it was routed) and
/// `/admin/*` (counts calls: it must never be reached by a refused peer).
struct Server {
    addr: SocketAddr,
    admin_calls: Arc<AtomicU64>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn serve(files: &PemFiles, authz: &[(&str, &str)]) -> Server {
    decisions();
    let mut env: BTreeMap<String, String> = [
        ("MESH_TLS_CERT", files.cert.display().to_string()),
        ("MESH_TLS_KEY", files.key.display().to_string()),
        ("MESH_TLS_BUNDLE", files.bundle.display().to_string()),
        ("MESH_INBOUND_ADDR", "127.0.0.1:0".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    env.extend(authz.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mesh = Mesh::new(MeshConfig::from_source(&env).expect("valid configuration"))
        .expect("mesh starts");
    let inbound = mesh.inbound().await.expect("bind");
    let addr = inbound.local_addr().unwrap();
    let admin_calls = Arc::new(AtomicU64::new(0));
    let counter = admin_calls.clone();
    let app = Router::new()
        .route(
            "/api/{*rest}",
            get(|uri: Uri| async move { uri.path().to_string() }),
        )
        .route(
            "/admin/{*rest}",
            get(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                async { "admin" }
            }),
        );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        mesh.serve_inbound(inbound, app, async {
            let _ = stopped.await;
        })
        .await;
    });
    Server {
        addr,
        admin_calls,
        _stop: stop,
    }
}

/// Calls `path` (sent exactly as written) with `client`'s certificate;
/// returns the status and body.
async fn call(server: &Server, pki: &Pki, client: &PemFiles, path: &str) -> (u16, String) {
    let port = server.addr.port();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--path-as-is"])
        .arg("--resolve")
        .arg(format!("{SERVER_DNS_NAME}:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(pki.bundle())
        .arg("--cert")
        .arg(&client.cert)
        .arg("--key")
        .arg(&client.key)
        .args(["-w", "\n%{http_code}"])
        .arg(format!("https://{SERVER_DNS_NAME}:{port}{path}"))
        .output()
        .await
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, code) = stdout.rsplit_once('\n').expect("curl printed the status");
    (code.parse().expect("a status code"), body.to_string())
}

#[tokio::test]
async fn allowed_peer_gets_200_and_denied_peer_403_with_its_reason_counted() {
    require_tool("curl", "curl");
    let _serial = SERIAL.lock().await;
    let before = snapshot();
    let pki = Pki::new("example.org");
    let server_files = pki.server("api", "spiffe://example.org/ns/prod/sa/api");
    let prod = pki.client("prod-web", PROD_WEB);
    let dev = pki.client("dev-web", DEV_WEB);
    let server = serve(&server_files, &[("MESH_AUTHZ_RULES", RULES)]).await;

    assert_eq!(
        call(&server, &pki, &prod, "/api/users").await,
        (200, "/api/users".into())
    );
    assert_eq!(
        call(&server, &pki, &dev, "/api/users").await,
        (
            403,
            "forbidden: no authorization rule allows this request\n".into()
        )
    );
    assert_eq!(
        call(&server, &pki, &prod, "/admin/users").await,
        (403, "forbidden: refused by authorization rule 1\n".into())
    );
    assert_eq!(since(&before, "deny/default/none"), 1);
    assert_eq!(since(&before, "deny/rule/1"), 1);
    assert!(since(&before, "allow/rule/2") >= 1);
    assert_eq!(server.admin_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn encoded_and_dot_segment_paths_do_not_bypass_a_deny_rule() {
    require_tool("curl", "curl");
    let _serial = SERIAL.lock().await;
    let before = snapshot();
    let pki = Pki::new("example.org");
    let server_files = pki.server("api", "spiffe://example.org/ns/prod/sa/api");
    let prod = pki.client("prod-web", PROD_WEB);
    let server = serve(
        &server_files,
        &[
            ("MESH_AUTHZ_RULES", "deny * * /admin/*"),
            ("MESH_AUTHZ_DEFAULT", "allow"),
        ],
    )
    .await;

    for path in [
        "/%61dmin/x",
        "/api/../admin/x",
        "//admin/x",
        "/api/%2e%2e/admin/x",
        "/./admin/x",
    ] {
        let (status, _) = call(&server, &pki, &prod, path).await;
        assert_eq!(status, 403, "{path} got past the deny rule");
    }
    for path in ["/admin%2Fx", "/api/..%2Fadmin", "/../admin/x"] {
        let (status, _) = call(&server, &pki, &prod, path).await;
        assert_eq!(status, 400, "{path} should be refused as unsafe");
    }
    // Allowed requests are routed on the canonical path the rules saw.
    assert_eq!(
        call(&server, &pki, &prod, "/api//v1/./%75sers").await,
        (200, "/api/v1/users".into())
    );
    assert_eq!(
        server.admin_calls.load(Ordering::SeqCst),
        0,
        "a refused path reached /admin"
    );
    assert_eq!(since(&before, "deny/rule/1"), 5);
    assert_eq!(since(&before, "deny/encoded_separator/none"), 2);
    assert_eq!(since(&before, "deny/above_root/none"), 1);
}

#[tokio::test]
async fn audit_mode_lets_everything_through_and_counts_what_deny_would_refuse() {
    require_tool("curl", "curl");
    let _serial = SERIAL.lock().await;
    let before = snapshot();
    let pki = Pki::new("example.org");
    let server_files = pki.server("api", "spiffe://example.org/ns/prod/sa/api");
    let prod = pki.client("prod-web", PROD_WEB);
    let dev = pki.client("dev-web", DEV_WEB);
    let server = serve(
        &server_files,
        &[("MESH_AUTHZ_RULES", RULES), ("MESH_AUTHZ_DEFAULT", "audit")],
    )
    .await;

    assert_eq!(
        call(&server, &pki, &dev, "/api/users").await,
        (200, "/api/users".into())
    );
    assert_eq!(
        call(&server, &pki, &prod, "/admin/x").await,
        (200, "admin".into())
    );
    assert_eq!(
        call(&server, &pki, &prod, "/admin/y").await,
        (200, "admin".into())
    );
    assert_eq!(since(&before, "audit_deny/default/none"), 1);
    assert_eq!(since(&before, "audit_deny/rule/1"), 2);
    assert_eq!(server.admin_calls.load(Ordering::SeqCst), 2);
}

#[test]
fn bad_rule_syntax_is_a_start_up_error_naming_the_variable_and_the_part() {
    let err = MeshConfig::from_source(&[(
        "MESH_AUTHZ_RULES",
        "allow spiffe://example.org/ns/prod/* GET /api/*; allow web GET /x",
    )])
    .unwrap_err();
    assert!(err.names_variable("MESH_AUTHZ_RULES"), "{err}");
    assert!(err.to_string().contains("`web`"), "{err}");
}
