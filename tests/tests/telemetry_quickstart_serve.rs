//! `quickstart --serve` keeps traffic flowing and serves its metrics on the
//! address it prints, until interrupted; then it exits cleanly.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use mesh_tests::prometheus::http_get;

fn quickstart_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let binary = profile_dir.join("examples").join("quickstart");
    assert!(
        binary.exists(),
        "{} is missing: run the tests with `cargo test --workspace --all-targets` (as scripts/test.sh does), which builds the examples",
        binary.display()
    );
    binary
}

fn count(exposition: &str, metric: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn quickstart_serve_prints_its_metrics_address_and_serves_live_traffic() {
    let mut child = Command::new(quickstart_binary())
        .arg("--serve")
        .env_clear()
        .env("MESH_METRICS_ADDR", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start quickstart");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a first line").unwrap();
    let addr = first
        .strip_prefix("quickstart: metrics at http://")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no metrics address in {first:?}"))
        .parse()
        .expect("a socket address");

    // Traffic keeps flowing: the client count grows between two scrapes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while seen.len() < 2 && tokio::time::Instant::now() < deadline {
        let (status, body) = http_get(addr, "/metrics").await.expect("scrape");
        assert_eq!(status, 200);
        let n = count(&body, "http_client_request_duration_seconds_count");
        if n > seen.last().copied().unwrap_or(0.0) {
            seen.push(n);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        seen.len(),
        2,
        "client requests did not keep growing: {seen:?}"
    );

    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(child.wait().unwrap().success(), "clean exit: {rest:?}");
    assert!(
        rest.iter()
            .any(|l| l.starts_with("quickstart: stopped after")),
        "{rest:?}"
    );
}
