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
    // A binary older than any source it was built from (as cargo's dep-info file
    // beside it lists them) would test old behaviour.
    let dep_info = std::fs::read_to_string(binary.with_extension("d")).unwrap_or_default();
    let sources = dep_info.split_once(": ").map_or("", |(_, deps)| deps);
    for source in sources.split_whitespace() {
        let modified = std::fs::metadata(source).and_then(|m| m.modified());
        if let Ok(modified) = modified {
            assert!(
                modified <= built,
                "{} is older than {source}: {build}",
                binary.display()
            );
        }
    }
    binary
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
