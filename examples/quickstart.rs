//! Quickstart: three local backends behind the mesh client.
//!
//! Starts three small axum backends on loopback (one slow, one failing a fifth of
//! its requests with 503 as slowly as it succeeds), configures a `MeshClient`
//! through `MESH_` variables, sends a few thousand requests, and prints a summary
//! and, as its last line, one JSON object. The mesh retries the failures on
//! another endpoint within its retry budget, so the caller sees almost none; the
//! JSON line counts the attempts the backends served, the retries and the retries
//! the budget refused. Variables in the environment override the
//! quickstart's own, so `MESH_DEFAULT_BALANCER=round-robin cargo run --release
//! --example quickstart` shows the difference a balancer makes; a bad variable
//! makes it exit non-zero with the error.
//!
//! `cargo run --release --example quickstart -- --serve` keeps the backends and a
//! steady trickle of traffic running until Ctrl-C, with Prometheus metrics on
//! `MESH_METRICS_ADDR` (default `127.0.0.1:9464`; the address is printed), so
//! Prometheus and the Grafana dashboard in `examples/observability/` have
//! something to show.
#![allow(clippy::disallowed_types)] // an example may time itself with std's clock

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use mesh_core::config::{Env, Layered, MeshConfig};
use mesh_http::telemetry::ServerTelemetryLayer;
use mesh_http::MeshClient;
use tokio::net::TcpListener;

const REQUESTS: usize = 4000;
const CONCURRENCY: usize = 16;
const WORK: Duration = Duration::from_millis(2);
const SLOW_WORK: Duration = Duration::from_millis(25);
const FAILURE_EVERY: u64 = 5; // 20%

/// One backend: how long it works per request, how often it fails, what it served.
struct Backend {
    addr: SocketAddr,
    served: Arc<AtomicU64>,
}

async fn start_backend(work: Duration, fail_every: Option<u64>) -> std::io::Result<Backend> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let served = Arc::new(AtomicU64::new(0));
    let counter = served.clone();
    let app = Router::new().route(
        "/work",
        get(move || {
            let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
            async move {
                tokio::time::sleep(work).await;
                // Failures take as long as successes, so latency does not steer
                // traffic away from the failing backend: retries must hide them.
                match fail_every {
                    Some(every) if n.is_multiple_of(every) => {
                        (StatusCode::SERVICE_UNAVAILABLE, "failed")
                    }
                    _ => (StatusCode::OK, "done"),
                }
            }
        }),
    );
    let app = app.layer(ServerTelemetryLayer::new());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Backend { addr, served })
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("quickstart: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<ExitCode, Box<dyn std::error::Error + Send + Sync>> {
    let serve = std::env::args().skip(1).any(|a| a == "--serve");
    let fast = start_backend(WORK, None).await?;
    let slow = start_backend(SLOW_WORK, None).await?;
    let failing = start_backend(WORK, Some(FAILURE_EVERY)).await?;
    let backends = [&fast, &slow, &failing];

    let endpoints: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
    let mut own: BTreeMap<String, String> = [
        ("MESH_SERVICE_NAME", "quickstart".to_string()),
        ("MESH_SERVICE_BACKEND_ENDPOINTS", endpoints.join(",")),
        // Fails requests fast should the whole service start failing; retries
        // keep this one's failure rate far below the breaker's 50%.
        ("MESH_SERVICE_BACKEND_BREAKER", "on".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if serve {
        own.insert("MESH_METRICS_ADDR".into(), "127.0.0.1:9464".into());
    }
    let config = MeshConfig::from_source(&Layered::new(Env, own))?;
    // Metrics are recorded either way; only --serve exposes them.
    let telemetry = mesh_core::telemetry::builder(&config)
        .install_subscriber(false)
        .init()?;
    let client = MeshClient::new(config)?;
    client.ready().await;
    if serve {
        return serve_until_interrupted(client, telemetry).await;
    }

    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let client = client.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let mut results = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < REQUESTS as u64 {
                    let request = http::Request::get("http://backend/work")
                        .body(Empty::<Bytes>::new())
                        .expect("valid request");
                    let began = Instant::now();
                    let ok = match client
                        .send(request.map(|b| b.map_err(Into::into).boxed_unsync()))
                        .await
                    {
                        Ok(response) => {
                            let status = response.status();
                            response.into_body().collect().await.is_ok() && status.is_success()
                        }
                        Err(_) => false,
                    };
                    results.push((ok, began.elapsed()));
                }
                results
            })
        })
        .collect();
    let mut results = Vec::with_capacity(REQUESTS);
    for worker in workers {
        results.extend(worker.await?);
    }
    let elapsed = started.elapsed();

    let requests = results.len();
    let ok = results.iter().filter(|(ok, _)| *ok).count();
    let mut latencies: Vec<Duration> = results.iter().map(|(_, d)| *d).collect();
    latencies.sort_unstable();
    let percentile = |p: f64| {
        latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)].as_secs_f64()
            * 1e3
    };
    let (p50, p99) = (percentile(0.50), percentile(0.99));

    println!(
        "quickstart: {requests} requests in {:.2}s through the mesh to service `backend`",
        elapsed.as_secs_f64()
    );
    println!(
        "  ok {ok} / {requests} ({:.2}%), p50 {p50:.2} ms, p99 {p99:.2} ms",
        100.0 * ok as f64 / requests as f64
    );
    let stats = client.retry_stats("backend").unwrap_or_default();
    let attempts: u64 = backends
        .iter()
        .map(|b| b.served.load(Ordering::Relaxed))
        .sum();
    let names = ["fast", "slow (25 ms)", "failing (20%)"];
    for (backend, name) in backends.iter().zip(names) {
        let served = backend.served.load(Ordering::Relaxed);
        println!(
            "  {:<22} {:<14} served {:>5} ({:.1}% of attempts)",
            backend.addr,
            name,
            served,
            100.0 * served as f64 / attempts.max(1) as f64
        );
    }
    println!(
        "  attempts {attempts} ({:.3} per request), retries {}, refused by the retry budget {}",
        attempts as f64 / requests as f64,
        stats.retries,
        stats.exhausted
    );
    println!(
        "  breaker {}, outlier ejections {}",
        client
            .breaker_state("backend")
            .map_or("off", |state| state.as_str()),
        client.ejections("backend").unwrap_or(0)
    );
    let per_endpoint: serde_json::Map<String, serde_json::Value> = backends
        .iter()
        .map(|b| (b.addr.to_string(), b.served.load(Ordering::Relaxed).into()))
        .collect();
    let summary = serde_json::json!({
        "requests": requests,
        "ok": ok,
        "failed": requests - ok,
        "p50_ms": (p50 * 1000.0).round() / 1000.0,
        "p99_ms": (p99 * 1000.0).round() / 1000.0,
        "attempts": attempts,
        "retries": stats.retries,
        "budget_exhausted": stats.exhausted,
        "breaker": client
            .breaker_state("backend")
            .map_or("off", |state| state.as_str()),
        "ejections": client.ejections("backend").unwrap_or(0),
        "per_endpoint": per_endpoint,
        "slow_endpoint": slow.addr.to_string(),
        "failing_endpoint": failing.addr.to_string(),
    });
    println!("{summary}");
    // The quickstart's job is to show traffic flowing through the mesh: it fails
    // when most requests did not get through.
    Ok(if ok * 2 >= requests {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `--serve`: a steady trickle of requests until Ctrl-C, metrics on the endpoint.
async fn serve_until_interrupted(
    client: MeshClient,
    telemetry: mesh_core::telemetry::TelemetryGuard,
) -> Result<ExitCode, Box<dyn std::error::Error + Send + Sync>> {
    match telemetry.metrics_addr() {
        Some(addr) => println!("quickstart: metrics at http://{addr}/metrics"),
        None => println!("quickstart: MESH_METRICS_ADDR=off, serving no metrics"),
    }
    println!("quickstart: sending 20 requests/s to service `backend`; Ctrl-C to stop");
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let (mut sent, mut ok) = (0u64, 0u64);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            _ = &mut interrupted => break,
            _ = tick.tick() => {
                let client = client.clone();
                let request = http::Request::get("http://backend/work")
                    .body(Empty::<Bytes>::new())
                    .expect("valid request");
                sent += 1;
                if let Ok(response) = client
                    .send(request.map(|b| b.map_err(Into::into).boxed_unsync()))
                    .await
                {
                    ok += u64::from(response.status().is_success());
                    let _ = response.into_body().collect().await;
                }
            }
        }
    }
    println!("quickstart: stopped after {sent} requests, {ok} ok");
    drop(telemetry);
    Ok(ExitCode::SUCCESS)
}
