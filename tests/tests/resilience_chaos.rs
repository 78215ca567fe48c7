//! The chaos example as a user runs it: each scenario, with fresh backends that
//! count the attempts reaching them, meets the promises of the README — success
//! with one of three backends killed, bounded amplification while everything
//! fails, fail-fast with only probes once the breaker opens, little traffic to a
//! slow backend, no failed GET across a rolling restart.
//!
//! Runs the example binary that `cargo test --workspace --all-targets` builds.

use std::process::Command;

#[test]
fn chaos_scenarios_meet_their_targets() {
    let exe = std::env::current_exe().expect("test binary path");
    let binary = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>")
        .join("examples")
        .join("chaos");
    assert!(
        binary.exists(),
        "{} is missing: run the tests with `cargo test --workspace --all-targets` (as scripts/test.sh does), which builds the examples",
        binary.display()
    );
    let output = Command::new(&binary).output().expect("chaos runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "chaos failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{stdout}");
    let last = stdout.lines().last().expect("a JSON line");
    let s: serde_json::Value = serde_json::from_str(last).expect("last line is JSON");
    for scenario in [
        "kill_one",
        "retry_storm",
        "breaker",
        "slow_one",
        "rolling_restart",
    ] {
        assert!(
            s[scenario]["requests"].as_u64().unwrap() >= 1000,
            "{scenario}: {s}"
        );
    }
    assert!(
        s["kill_one"]["success_ratio"].as_f64().unwrap() >= 0.999,
        "{s}"
    );
    assert!(
        s["retry_storm"]["requests"].as_u64().unwrap() >= 2000,
        "{s}"
    );
    assert!(
        s["retry_storm"]["amplification"].as_f64().unwrap() <= 1.25,
        "{s}"
    );
    // Only probes reach the backends while the breaker is open: at most 10 per
    // half-open spell, each tried at most 3 times, over a run of a few seconds
    // with 250 ms open spells.
    let while_open = s["breaker"]["backend_attempts_while_open"]
        .as_u64()
        .unwrap();
    let requests = s["breaker"]["requests"].as_u64().unwrap();
    assert!(while_open * 10 < requests, "{s}");
    assert!(s["breaker"]["fail_fast_after_ms"].as_f64().is_some(), "{s}");
    assert!(s["slow_one"]["slow_share"].as_f64().unwrap() < 0.2, "{s}");
    assert_eq!(s["rolling_restart"]["failed"].as_u64(), Some(0), "{s}");
}
