//! The quickstart example as a user runs it: its summary meets the promises in the
//! README, and bad settings make it exit non-zero with an error, not a panic.
//!
//! Runs the example binary that `cargo test --workspace` builds alongside the tests.

use std::path::PathBuf;
use std::process::{Command, Output};

fn quickstart_binary() -> PathBuf {
    // target/<profile>/deps/<this test> → target/<profile>/examples/quickstart
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let binary = profile_dir.join("examples").join("quickstart");
    let build = "run `cargo build --workspace --examples` first (scripts/test.sh does)";
    let built = std::fs::metadata(&binary)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} is missing: {build}", binary.display()));
    // A binary older than the code it is built from would test old behaviour.
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for dir in ["examples", "mesh-core/src", "mesh-http/src"] {
        if let Some(newest) = newest_file(&workspace.join(dir)) {
            assert!(
                newest <= built,
                "{} is older than the sources in {dir}: {build}",
                binary.display()
            );
        }
    }
    binary
}

fn newest_file(dir: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let meta = entry.metadata().ok()?;
            if meta.is_dir() {
                newest_file(&entry.path())
            } else {
                meta.modified().ok()
            }
        })
        .max()
}

fn run(vars: &[(&str, &str)]) -> Output {
    let mut command = Command::new(quickstart_binary());
    command.env_clear();
    if let Ok(path) = std::env::var("PATH") {
        command.env("PATH", path);
    }
    command.envs(vars.iter().copied());
    command.output().expect("quickstart runs")
}

#[test]
fn quickstart_summary_shows_balanced_traffic_with_failures_retried() {
    let output = run(&[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "quickstart failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().expect("a JSON summary line");
    let summary: serde_json::Value = serde_json::from_str(last).expect("last line is JSON");
    let requests = summary["requests"].as_u64().unwrap();
    let ok = summary["ok"].as_u64().unwrap();
    assert!(requests >= 1000);
    assert_eq!(ok + summary["failed"].as_u64().unwrap(), requests);
    // The failing backend fails a fifth of its requests; retries hide them.
    assert!(ok as f64 / requests as f64 >= 0.999, "{summary}");
    let retries = summary["retries"].as_u64().unwrap();
    let attempts = summary["attempts"].as_u64().unwrap();
    assert!(retries > 0, "nothing was retried: {summary}");
    assert!(attempts >= requests, "{summary}");
    assert!(summary["budget_exhausted"].as_u64().is_some(), "{summary}");
    // A fifth of one backend's answers failing neither opens the breaker nor
    // makes five failures in a row.
    assert_eq!(summary["breaker"], "closed", "{summary}");
    assert_eq!(summary["ejections"], 0, "{summary}");
    let per_endpoint = summary["per_endpoint"].as_object().unwrap();
    assert_eq!(per_endpoint.len(), 3);
    let slow = summary["slow_endpoint"].as_str().unwrap();
    let slow_share = per_endpoint[slow].as_u64().unwrap();
    for (addr, served) in per_endpoint {
        let served = served.as_u64().unwrap();
        assert!(served > 0, "{addr} got no traffic: {summary}");
        if addr != slow {
            assert!(
                slow_share < served,
                "the slow endpoint got more than {addr}: {summary}"
            );
        }
    }
}

#[test]
fn quickstart_refuses_bad_settings_with_an_error_naming_them() {
    let cases = [
        ("MESH_NOT_A_SETTING", "1"),
        ("MESH_SERVICE_BACKEND_TIMEOUT", "abc"),
        ("MESH_SERVICE_BACKEND_BALANCER", "fastest"),
        ("MESH_SERVICE_BACKEND_ENDPOINTS", "127.0.0.1"),
        ("MESH_SERVICE_BACKEND_RETRY_BUDGET", "150%"),
        ("MESH_SERVICE_BACKEND_RETRY_MAX_ATTEMPTS", "0"),
    ];
    for (name, value) in cases {
        let output = run(&[(name, value)]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{name}={value} was accepted");
        assert!(
            stderr.contains(name),
            "{name}={value}: error does not name it: {stderr}"
        );
        assert!(
            !stderr.contains("panicked"),
            "{name}={value} panicked: {stderr}"
        );
    }
}

#[test]
fn quickstart_accepts_variables_kubernetes_injects() {
    let output = run(&[
        ("MESH_SERVICE_HOST", "10.0.0.1"),
        ("MESH_SERVICE_PORT", "80"),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
