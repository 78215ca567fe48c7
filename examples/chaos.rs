//! Chaos: the mesh client against backends that die, fail, slow down and restart.
//!
//! `cargo run --release --example chaos` runs five scenarios, each with a fresh
//! client and fresh loopback backends, counting attempts at the backends (not by
//! the client's own report):
//!
//! - `kill_one`: one of three backends killed a third of the way through;
//! - `retry_storm`: every backend answers 503, breaker off: attempts per request;
//! - `breaker`: the same with the breaker on: how soon it fails fast, and how many
//!   attempts reach the backends while it is open (only probes);
//! - `slow_one`: one of three backends 200 ms slower: its share and the p99;
//! - `rolling_restart`: backends restarted one at a time: failed GETs.
//!
//! It prints a table, then as its last line one JSON object; it exits non-zero
//! when a scenario could not run.
#![allow(clippy::disallowed_types)] // an example may time itself with std's clock

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use mesh_core::config::MeshConfig;
use mesh_http::MeshClient;
use mesh_tests::backend::TestBackend;
use parking_lot::Mutex;
use serde_json::json;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const WORKERS: usize = 16;

/// `/work` answers `status` after `work`.
fn app(work: Duration, status: StatusCode) -> Router {
    Router::new().route(
        "/work",
        get(move || async move {
            if !work.is_zero() {
                tokio::time::sleep(work).await;
            }
            status
        }),
    )
}

fn client(vars: &[(&str, String)]) -> Result<MeshClient, BoxError> {
    let env: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let config = MeshConfig::from_source(&env)?;
    MeshClient::new(config)
}

fn endpoints(backends: &[TestBackend]) -> String {
    backends
        .iter()
        .map(|b| b.addr().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn attempts(backends: &[TestBackend]) -> u64 {
    backends.iter().map(TestBackend::served).sum()
}

/// What one request came to.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    ok: bool,
    breaker_open: bool,
    latency: Duration,
    /// When it finished, since the run started.
    at: Duration,
}

/// Sends `total` GETs from [`WORKERS`] workers, each pausing `pace` between
/// requests; calls `progress` with the count done after each one.
async fn run_load(
    client: &MeshClient,
    total: u64,
    pace: Duration,
    progress: impl Fn(u64) + Send + Sync + 'static,
) -> Vec<Outcome> {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(progress);
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (client, next, done, progress) =
                (client.clone(), next.clone(), done.clone(), progress.clone());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let request = http::Request::get("http://svc/work")
                        .body(Empty::<Bytes>::new().map_err(Into::into).boxed_unsync())
                        .expect("valid request");
                    let began = Instant::now();
                    let (ok, breaker_open) = match client.send(request).await {
                        Ok(response) => {
                            let status = response.status();
                            (
                                response.into_body().collect().await.is_ok() && status.is_success(),
                                false,
                            )
                        }
                        Err(e) => (false, e.is_breaker_open()),
                    };
                    outcomes.push(Outcome {
                        ok,
                        breaker_open,
                        latency: began.elapsed(),
                        at: started.elapsed(),
                    });
                    progress(done.fetch_add(1, Ordering::Relaxed) + 1);
                    if !pace.is_zero() {
                        tokio::time::sleep(pace).await;
                    }
                }
                outcomes
            })
        })
        .collect();
    let mut all = Vec::with_capacity(total as usize);
    for w in workers {
        if let Ok(outcomes) = w.await {
            all.extend(outcomes);
        }
    }
    all
}

fn ok_count(outcomes: &[Outcome]) -> u64 {
    outcomes.iter().filter(|o| o.ok).count() as u64
}

fn percentile_ms(outcomes: &[Outcome], p: f64) -> f64 {
    let mut latencies: Vec<Duration> = outcomes.iter().map(|o| o.latency).collect();
    latencies.sort_unstable();
    let i = ((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1));
    latencies
        .get(i)
        .map_or(0.0, |d| (d.as_secs_f64() * 1e5).round() / 100.0)
}

/// The defaults otherwise: every request here is an idempotent GET, which the
/// default `RETRY_ON` retries after a 503 or a broken connection.
fn base_vars(backends: &[TestBackend]) -> Vec<(&'static str, String)> {
    vec![("MESH_SERVICE_SVC_ENDPOINTS", endpoints(backends))]
}

async fn kill_one() -> Result<serde_json::Value, BoxError> {
    let mut backends = Vec::new();
    for _ in 0..3 {
        backends.push(TestBackend::start_with(app(Duration::from_millis(2), StatusCode::OK)).await);
    }
    let client = client(&base_vars(&backends))?;
    client.ready().await;
    let victim = Arc::new(tokio::sync::Mutex::new(backends.remove(0)));
    let killer = victim.clone();
    let fired = Arc::new(AtomicBool::new(false));
    let requests = 3000;
    let outcomes = run_load(&client, requests, Duration::ZERO, move |done| {
        if done == requests / 3 && !fired.swap(true, Ordering::SeqCst) {
            let killer = killer.clone();
            tokio::spawn(async move { killer.lock().await.kill().await });
        }
    })
    .await;
    let ok = ok_count(&outcomes);
    Ok(json!({
        "requests": outcomes.len(),
        "success_ratio": ok as f64 / outcomes.len() as f64,
    }))
}

async fn all_failing(breaker: bool) -> Result<(serde_json::Value, Vec<Outcome>), BoxError> {
    let mut backends = Vec::new();
    for _ in 0..3 {
        backends.push(
            TestBackend::start_with(app(Duration::ZERO, StatusCode::SERVICE_UNAVAILABLE)).await,
        );
    }
    let mut vars = base_vars(&backends);
    if breaker {
        vars.push(("MESH_SERVICE_SVC_BREAKER", "on".into()));
        // Short, so that probes show during the run.
        vars.push(("MESH_SERVICE_SVC_BREAKER_OPEN_TIME", "250ms".into()));
    }
    let client = client(&vars)?;
    client.ready().await;
    let requests = 2000;
    let backends = Arc::new(backends);
    // Attempts counted at the backends when the breaker first refused a request.
    let at_open = Arc::new(Mutex::new(None::<u64>));
    let (watch, seen) = (backends.clone(), at_open.clone());
    let client_for_state = client.clone();
    let outcomes = run_load(&client, requests, Duration::from_millis(10), move |_| {
        let mut seen = seen.lock();
        if seen.is_none()
            && client_for_state
                .breaker_state("svc")
                .is_some_and(|s| s != mesh_core::breaker::BreakerState::Closed)
        {
            *seen = Some(attempts(&watch));
        }
    })
    .await;
    let total_attempts = attempts(&backends);
    let value = if breaker {
        let first_refusal = outcomes
            .iter()
            .filter(|o| o.breaker_open)
            .map(|o| o.at)
            .min()
            .ok_or("the breaker never opened")?;
        let before = at_open.lock().ok_or("the breaker never opened")?;
        json!({
            "requests": outcomes.len(),
            "fail_fast_after_ms": (first_refusal.as_secs_f64() * 1e5).round() / 100.0,
            "backend_attempts_while_open": total_attempts - before,
        })
    } else {
        json!({
            "requests": outcomes.len(),
            "backend_attempts": total_attempts,
            "amplification": total_attempts as f64 / outcomes.len() as f64,
        })
    };
    Ok((value, outcomes))
}

async fn slow_one() -> Result<serde_json::Value, BoxError> {
    let fast = Duration::from_millis(2);
    let backends = vec![
        TestBackend::start_with(app(fast, StatusCode::OK)).await,
        TestBackend::start_with(app(fast, StatusCode::OK)).await,
        TestBackend::start_with(app(fast + Duration::from_millis(200), StatusCode::OK)).await,
    ];
    let client = client(&base_vars(&backends))?;
    client.ready().await;
    let outcomes = run_load(&client, 2000, Duration::ZERO, |_| {}).await;
    let slow_share = backends[2].served() as f64 / attempts(&backends) as f64;
    Ok(json!({
        "requests": outcomes.len(),
        "slow_share": (slow_share * 1e4).round() / 1e4,
        "p99_ms": percentile_ms(&outcomes, 0.99),
    }))
}

async fn rolling_restart() -> Result<serde_json::Value, BoxError> {
    let mut backends = Vec::new();
    for _ in 0..3 {
        backends.push(TestBackend::start_with(app(Duration::from_millis(2), StatusCode::OK)).await);
    }
    let client = client(&base_vars(&backends))?;
    client.ready().await;
    let restarting = tokio::spawn(async move {
        for backend in backends.iter_mut() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            backend.kill().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            backend.restart().await;
        }
        backends
    });
    // Paced so that the load outlasts the three restarts (about 2 s).
    let outcomes = run_load(&client, 3000, Duration::from_millis(12), |_| {}).await;
    let _backends = restarting.await?;
    Ok(json!({
        "requests": outcomes.len(),
        "failed": outcomes.len() as u64 - ok_count(&outcomes),
    }))
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut summary = serde_json::Map::new();
    let mut failed = false;
    let mut record = |name: &str, result: Result<serde_json::Value, BoxError>| match result {
        Ok(value) => {
            summary.insert(name.to_string(), value);
        }
        Err(e) => {
            eprintln!("chaos: scenario {name} could not run: {e}");
            failed = true;
        }
    };
    record("kill_one", kill_one().await);
    record("retry_storm", all_failing(false).await.map(|(v, _)| v));
    record("breaker", all_failing(true).await.map(|(v, _)| v));
    record("slow_one", slow_one().await);
    record("rolling_restart", rolling_restart().await);

    println!("{:<16} figures", "scenario");
    for (name, value) in &summary {
        let figures: Vec<String> = value
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("{name:<16} {}", figures.join("  "));
    }
    println!("{}", serde_json::Value::Object(summary));
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
