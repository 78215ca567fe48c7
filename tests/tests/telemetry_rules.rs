//! The shipped dashboard and Prometheus rules: promtool accepts the rules and
//! their unit tests pass, and every metric they reference is one the code
//! defines in `metric_names` and records somewhere (a renamed metric, or one
//! defined but never emitted, breaks this test, not a pager).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use mesh_core::metric_names::{Instrument, ALL};
use mesh_tests::prometheus::tool;

fn observability(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/observability")
        .join(file)
}

fn promtool(args: &[&str]) {
    let out = Command::new(tool("promtool"))
        .args(args)
        .current_dir(observability(""))
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    promtool(&["check", "rules", "prometheus-rules.yml"]);
    promtool(&["test", "rules", "prometheus-rules-test.yml"]);
}

/// Every name the exporter can render for the metrics the code defines.
fn emitted_series_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for def in ALL {
        let base = def.prometheus_name();
        if def.instrument == Instrument::Histogram {
            for suffix in ["_bucket", "_count", "_sum"] {
                names.insert(format!("{base}{suffix}"));
            }
        }
        names.insert(base);
    }
    names
}

fn label_names() -> BTreeSet<String> {
    ALL.iter()
        .flat_map(|d| d.labels.iter())
        .map(|l| l.replace('.', "_"))
        .collect()
}

/// Identifiers in `text` that look like ours (`http_`, `rpc_`, `mesh_`), leaving
/// out recording-rule names (`level:metric:op`).
fn our_identifiers(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| !t.contains(':'))
        .filter(|t| ["http_", "rpc_", "mesh_"].iter().any(|p| t.starts_with(p)))
        .map(str::to_string)
        .collect()
}

/// The Rust source of the crates that emit metrics.
fn emitting_sources() -> Vec<(PathBuf, String)> {
    fn walk(dir: &std::path::Path, out: &mut Vec<(PathBuf, String)>) {
        for entry in std::fs::read_dir(dir).expect("read source folder") {
            let path = entry.expect("folder entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs")
                && !path.ends_with("metric_names.rs")
            {
                let text = std::fs::read_to_string(&path).expect("read source");
                out.push((path, text));
            }
        }
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out = Vec::new();
    for krate in ["mesh-core", "mesh-http", "mesh-grpc"] {
        walk(&root.join(krate).join("src"), &mut out);
    }
    out
}

/// Whether `text` names the constant `ident` as a whole word (`IDENT.name`,
/// `&metric_names::IDENT`), not as part of a longer identifier.
fn names_constant(text: &str, ident: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(ident).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + ident.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

/// Prometheus series names (all of a histogram's) of the metrics some code
/// records: `metric_names.rs` defines `IDENT = "otel.name"`, and the only way
/// to record one is through that constant (the style guide's one place).
fn recorded_series_names() -> BTreeSet<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let defs = std::fs::read_to_string(root.join("mesh-core/src/metric_names.rs"))
        .expect("read metric_names.rs");
    let sources = emitting_sources();
    let mut recorded = BTreeSet::new();
    for line in defs.lines() {
        let Some((ident, rest)) = line.trim().split_once(" = \"") else {
            continue;
        };
        let Some((name, _)) = rest.split_once('"') else {
            continue;
        };
        if !sources.iter().any(|(_, text)| names_constant(text, ident)) {
            continue;
        }
        let def = ALL
            .iter()
            .find(|d| d.name == name)
            .unwrap_or_else(|| panic!("{ident} = {name:?} is not in metric_names::ALL"));
        let base = def.prometheus_name();
        if def.instrument == Instrument::Histogram {
            for suffix in ["_bucket", "_count", "_sum"] {
                recorded.insert(format!("{base}{suffix}"));
            }
        }
        recorded.insert(base);
    }
    assert!(
        recorded.len() > 20,
        "the scan of recording sites found too little: {recorded:?}"
    );
    recorded
}

fn check_references(file: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(observability(file)).expect("read file");
    let series = emitted_series_names();
    let recorded = recorded_series_names();
    let labels = label_names();
    let mut metrics = BTreeSet::new();
    for id in our_identifiers(&text) {
        if series.contains(&id) {
            assert!(
                recorded.contains(&id),
                "{file} references `{id}`, which metric_names defines but no code records"
            );
            metrics.insert(id);
        } else {
            assert!(
                labels.contains(&id),
                "{file} references `{id}`, which is neither a metric in metric_names::ALL nor one of their labels"
            );
        }
    }
    metrics
}

#[test]
fn dashboard_and_rules_reference_only_metrics_the_code_emits() {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(observability("grafana-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{} has no query", panel["title"]);
        assert!(targets.iter().all(|t| t["expr"].as_str().is_some()));
    }
    for title in ["Overview", "On call", "Debug"] {
        assert!(
            panels
                .iter()
                .any(|p| p["type"] == "row" && p["title"] == title),
            "no {title} row"
        );
    }

    let in_dashboard = check_references("grafana-dashboard.json");
    let in_rules = check_references("prometheus-rules.yml");
    check_references("prometheus-rules-test.yml");
    for needed in [
        "http_client_request_duration_seconds_bucket",
        "http_server_request_duration_seconds_count",
        "mesh_breaker_state",
        "mesh_tls_handshake_failures_total",
        "mesh_client_attempt_duration_seconds_bucket",
        "mesh_tls_certificate_expiration_seconds",
        "mesh_endpoints",
        "mesh_discovery_updates_total",
        "mesh_health_checks_total",
        "rpc_server_call_duration_seconds_count",
        "rpc_client_call_duration_seconds_bucket",
        "mesh_rate_limited_total",
        "mesh_concurrency_shed_total",
    ] {
        assert!(in_dashboard.contains(needed), "dashboard lacks {needed}");
    }
    for needed in [
        "http_server_request_duration_seconds_count",
        "mesh_tls_certificate_expiration_seconds",
        "mesh_tls_handshake_failures_total",
        "mesh_client_retries_total",
        "mesh_breaker_state",
        "mesh_endpoints",
        "rpc_server_call_duration_seconds_count",
        "mesh_rate_limited_total",
        "mesh_concurrency_shed_total",
    ] {
        assert!(in_rules.contains(needed), "rules lack {needed}");
    }
}
