//! `Mesh::serve`'s telemetry end to end, as an operator sees it: a service
//! process set up only from `MESH_*` variables (`telemetry::init`, `Mesh::new`,
//! `MESH_ACCESS_LOG=json`) serves an axum router over mTLS; curl calls it with a
//! client certificate and an inbound `traceparent`. The test reads the service's
//! real standard output (the subscriber `init` installs, the access log) and a
//! real Prometheus scrape of its `MESH_METRICS_ADDR`.
//!
//! The service runs as a child process (this same test binary, told its role by
//! an environment variable): stdout, the `tracing` subscriber and the `metrics`
//! recorder are process-wide, and only a separate process shows exactly what a
//! deployment would print.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use mesh_core::config::MeshConfig;
use mesh_http::telemetry::ServerTelemetryLayer;
use mesh_http::Mesh;
use mesh_tests::pki::{require_tool, PemFiles, Pki, SERVER_DNS_NAME};
use mesh_tests::prometheus::Prometheus;
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

/// Set in the child: "serve", and nothing else runs.
/// (Not a `MESH_` name: the configuration refuses unknown ones.)
const ROLE: &str = "TELEMETRY_SERVE_TEST_ROLE";
const THIS_TEST: &str = "serve_logs_trace_ids_access_lines_and_route_metrics";

const SERVER_ID: &str = "spiffe://example.org/ns/prod/sa/orders";
const CLIENT_ID: &str = "spiffe://example.org/ns/prod/sa/web";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_trace_ids_access_lines_and_route_metrics() {
    if std::env::var_os(ROLE).is_some() {
        return serve_from_env().await;
    }
    require_tool("curl", "curl");
    let pki = Pki::new("example.org");
    let server_files = pki.server("orders", SERVER_ID);
    let client_files = pki.client("web", CLIENT_ID);
    let service = Service::start(&server_files).await;

    let traced = curl(&service, &pki, &client_files, "/orders/42", Some(TRACE_ID)).await;
    assert_eq!(traced, 200);
    let untraced = curl(&service, &pki, &client_files, "/orders/7", None).await;
    assert_eq!(untraced, 200);
    let missing = curl(&service, &pki, &client_files, "/nowhere/1", None).await;
    assert_eq!(missing, 404);

    // (a) The handler's own log line, formatted by the subscriber `init`
    // installed, carries the caller's trace ID; the untraced one carries none.
    let line = service
        .output
        .wait_for(|l| l.contains("handling order") && l.contains("order=42"))
        .await;
    assert!(
        line.ends_with(&format!("trace_id={TRACE_ID} span_id={CALLER_SPAN_ID}")),
        "the handler's line lacks the inbound trace: {line}"
    );
    let line = service
        .output
        .wait_for(|l| l.contains("handling order") && l.contains("order=7"))
        .await;
    assert!(!line.contains("trace_id="), "no trace was sent: {line}");

    // (b) One access log line per request with what an operator needs.
    let access = |path: &'static str| {
        let output = &service.output;
        async move {
            let line = output
                .wait_for(|l| l.starts_with('{') && l.contains(&format!("\"path\":\"{path}\"")))
                .await;
            serde_json::from_str::<serde_json::Value>(&line)
                .unwrap_or_else(|e| panic!("access log line is not JSON ({e}): {line}"))
        }
    };
    let line = access("/orders/42").await;
    assert_eq!(line["kind"], "access", "{line}");
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["route"], "/orders/{id}", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert!(
        line["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
        "{line}"
    );
    assert_eq!(line["peer_identity"], CLIENT_ID, "{line}");
    assert_eq!(line["trace_id"], TRACE_ID, "{line}");
    // The inbound listener sets axum's `ConnectInfo`: curl's loopback address.
    assert!(
        line["peer"]
            .as_str()
            .is_some_and(|peer| peer.starts_with("127.0.0.1:")),
        "{line}"
    );
    let line = access("/orders/7").await;
    assert_eq!(line["route"], "/orders/{id}", "{line}");
    assert!(line.get("trace_id").is_none(), "{line}");
    let line = access("/nowhere/1").await;
    assert_eq!(line["status"], 404, "{line}");
    assert_eq!(
        line["route"],
        mesh_http::telemetry::UNMATCHED_ROUTE,
        "{line}"
    );
    let access_lines = service
        .output
        .lines()
        .iter()
        .filter(|l| l.contains("\"kind\":\"access\""))
        .count();
    assert_eq!(access_lines, 3, "one line per request");

    // (b) `http.server.request.duration` by route template, scraped by Prometheus.
    let prometheus = Prometheus::start(&[service.metrics_addr]).await;
    let series = prometheus
        .query_until_found(
            r#"http_server_request_duration_seconds_count{job="mesh",http_route="/orders/{id}"}"#,
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(
        series.len(),
        1,
        "one series for GET 200 /orders/{{id}}: {series:?}"
    );
    let labels = &series[0]["metric"];
    assert_eq!(labels["http_request_method"], "GET");
    assert_eq!(labels["http_response_status_code"], "200");
    assert_eq!(labels["url_scheme"], "https", "behind the mTLS listener");
    assert_eq!(
        series[0]["value"][1], "2",
        "both /orders requests, once each"
    );
    let unmatched = prometheus
        .query(r#"http_server_request_duration_seconds_count{job="mesh",http_route="(unmatched)"}"#)
        .await;
    assert_eq!(unmatched.len(), 1, "{unmatched:?}");
    assert_eq!(unmatched[0]["metric"]["http_response_status_code"], "404");
    let raw_paths = prometheus
        .query(r#"{job="mesh",http_route=~"/orders/[0-9]+|/nowhere.*"}"#)
        .await;
    assert!(
        raw_paths.is_empty(),
        "raw paths became labels: {raw_paths:?}"
    );
}

/// The child: everything from the environment, as a deployment would run.
async fn serve_from_env() {
    let config = MeshConfig::from_env().expect("valid configuration");
    let telemetry = mesh_core::telemetry::init(&config).expect("telemetry starts");
    let metrics_addr = telemetry.metrics_addr().expect("MESH_METRICS_ADDR is set");
    let mesh = Mesh::new(config).expect("mesh starts");
    let inbound = mesh.inbound().await.expect("bind the inbound listener");
    let inbound_addr = inbound.local_addr().expect("bound");
    let app = Router::new()
        .route(
            "/orders/{id}",
            get(|Path(id): Path<String>| async move {
                tracing::info!(order = %id, "handling order");
                "order"
            }),
        )
        // Inside the router too, so requests are labelled with route templates.
        .layer(ServerTelemetryLayer::new());
    println!("READY inbound={inbound_addr} metrics={metrics_addr}");
    // Serves until the parent closes our stdin (or kills us).
    mesh.serve_inbound(inbound, app, async {
        let mut sink = Vec::new();
        let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    })
    .await;
    drop(telemetry);
}

/// Lines a child printed, awaited as they arrive.
#[derive(Default)]
struct Output {
    lines: Mutex<Vec<String>>,
    /// Set when the child's stdout closed: nothing more will come.
    closed: std::sync::atomic::AtomicBool,
    changed: Notify,
}

impl Output {
    fn lines(&self) -> Vec<String> {
        self.lines.lock().clone()
    }

    /// The first line matching `wanted`, waiting for it to be printed.
    async fn wait_for(&self, wanted: impl Fn(&str) -> bool) -> String {
        let found = async {
            loop {
                let changed = self.changed.notified();
                if let Some(line) = self.lines.lock().iter().find(|l| wanted(l)) {
                    return Some(line.clone());
                }
                if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
                    return None;
                }
                changed.await;
            }
        };
        match tokio::time::timeout(Duration::from_secs(60), found).await {
            Ok(Some(line)) => line,
            _ => panic!(
                "the service did not print the expected line (exited, or 60 s passed); it printed:\n{}",
                self.lines().join("\n")
            ),
        }
    }
}

struct Service {
    inbound_addr: std::net::SocketAddr,
    metrics_addr: std::net::SocketAddr,
    output: Arc<Output>,
    _child: Child,
}

impl Service {
    async fn start(files: &PemFiles) -> Service {
        let mut command = Command::new(std::env::current_exe().expect("this test binary"));
        command
            .args(["--exact", THIS_TEST, "--nocapture", "--test-threads=1"])
            .env(ROLE, "serve")
            .env("MESH_SERVICE_NAME", "orders")
            .env("MESH_TLS_CERT", &files.cert)
            .env("MESH_TLS_KEY", &files.key)
            .env("MESH_TLS_BUNDLE", &files.bundle)
            .env("MESH_INBOUND_ADDR", "127.0.0.1:0")
            .env("MESH_METRICS_ADDR", "127.0.0.1:0")
            .env("MESH_ACCESS_LOG", "json")
            .env("RUST_LOG", "info")
            // No ANSI colours: the lines are read, not looked at.
            .env("NO_COLOR", "1");
        for name in [
            "OTEL_SDK_DISABLED",
            "OTEL_TRACES_EXPORTER",
            "OTEL_METRICS_EXPORTER",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_PROPAGATORS",
        ] {
            command.env_remove(name);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the service process");
        let output = Arc::new(Output::default());
        let reader = output.clone();
        let stdout = child.stdout.take().expect("piped stdout");
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                reader.lines.lock().push(line);
                reader.changed.notify_waiters();
            }
            reader
                .closed
                .store(true, std::sync::atomic::Ordering::SeqCst);
            reader.changed.notify_waiters();
        });
        let ready = output.wait_for(|l| l.contains("READY inbound=")).await;
        let field = |name: &str| -> std::net::SocketAddr {
            ready
                .split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {ready}"))
        };
        Service {
            inbound_addr: field("inbound="),
            metrics_addr: field("metrics="),
            output,
            _child: child,
        }
    }
}

/// Calls `path` over mTLS with `client`'s certificate, with a `traceparent`
/// naming `trace_id` when given; returns the status.
async fn curl(
    service: &Service,
    pki: &Pki,
    client: &PemFiles,
    path: &str,
    trace_id: Option<&str>,
) -> u16 {
    let port = service.inbound_addr.port();
    let mut command = Command::new("curl");
    command
        .args(["-sS", "--max-time", "20", "-o", "/dev/null"])
        .arg("--resolve")
        .arg(format!("{SERVER_DNS_NAME}:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(pki.bundle())
        .arg("--cert")
        .arg(&client.cert)
        .arg("--key")
        .arg(&client.key)
        .args(["-w", "%{http_code}"]);
    if let Some(trace_id) = trace_id {
        command
            .arg("-H")
            .arg(format!("traceparent: 00-{trace_id}-{CALLER_SPAN_ID}-01"));
    }
    let out = command
        .arg(format!("https://{SERVER_DNS_NAME}:{port}{path}"))
        .output()
        .await
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("curl printed the status")
}
