//! End-to-end comparison: raw hyper + rustls mTLS, the mesh, and an
//! nginx → haproxy sidecar pair, interleaved over several rounds.
//!
//! ```text
//! cargo run --release -p mesh-benches --bin compare -- --quick   # under a minute
//! cargo run --release -p mesh-benches --bin compare -- --full
//! ```
//!
//! Prints a table and, as its last line, one JSON object. The same binary is
//! also the helper processes it spawns: `serve` (the server), `cold` (one
//! cold-start client), `client mesh-otel` (the mesh client with a span
//! exporter, driven over a pipe: telemetry is process-wide) and
//! `endpoint-bytes` (memory per known endpoint, with the counting allocator
//! below). `profile raw|mesh|mesh-otel|grpc|grpc-mesh|mesh-in-bench N`
//! sends N sequential requests with one configuration, for profilers
//! (`mesh-in-bench`: the mesh with the rest of the bench's in-process set-up
//! warmed up beside it); `cold-starts N` times N cold starts of each kind,
//! alternating, and nothing else; `cold-phases N` the same with each helper
//! reporting when its phases ended (wall clock since its spawn).

use std::alloc::System;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cap::Cap;
use mesh_benches::grpc::{self, GrpcTarget};
use mesh_benches::load::{self, LatencyRun, Saturation};
use mesh_benches::otlp::SpanCounter;
use mesh_benches::pki::{PkiFiles, SERVER_NAME};
use mesh_benches::procstat::{self, Phase, Proc};
use mesh_benches::remote::{self, RemoteLoad};
use mesh_benches::report::{
    median, median_of, paired_median, round3, OpenLoop, Percentiles, Round,
};
use mesh_benches::server;
use mesh_benches::sidecar::Sidecars;
use mesh_benches::target::{BoxError, MeshTarget, RawTarget, Target, TcpConnect, TlsConnect};
use mesh_core::config::{Env, Layered, MeshConfig};
use mesh_http::{Mesh, MeshClient};
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::json;
use tokio::time::Instant;

/// Counts live heap bytes for `endpoint-bytes`. Elsewhere it costs one
/// relaxed atomic add per allocation, the same for every configuration.
#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

/// The logical service the mesh client is configured with.
const SERVICE: &str = "bench";
/// The logical gRPC service `MeshChannel` calls.
const GRPC_SERVICE: &str = "grpcbench";
/// Closed-loop workers, and the connection cap of every client (HTTP/1.1:
/// one request per connection), so every configuration uses the same number
/// of connections.
const CONCURRENCY: usize = 16;
/// Sequential requests are measured in blocks of this many, the
/// configurations taking turns block by block: a slowdown of the shared
/// machine lasting longer than a few blocks then falls on every configuration
/// alike instead of on whichever ran through it, and the paired differences
/// of sequential latency (microseconds, against a target of 5) measure the
/// stacks rather than the moment.
const SEQUENTIAL_BLOCK: usize = 100;
/// Known endpoints for the memory figure.
const MANY_ENDPOINTS: usize = 10_000;
/// The share of traces `mesh+otel` samples and exports.
const OTEL_SAMPLE_RATIO: &str = "0.1";

/// How long and how often to measure.
#[derive(Debug, Clone, Copy)]
struct Plan {
    name: &'static str,
    rounds: usize,
    sequential: usize,
    rates: [f64; 2],
    open_for: Duration,
    closed_for: Duration,
    warmup: Duration,
    check_rate: f64,
    check_for: Duration,
    cold_starts: usize,
}

const QUICK: Plan = Plan {
    name: "quick",
    rounds: 5,
    sequential: 400,
    rates: [1000.0, 5000.0],
    open_for: Duration::from_millis(400),
    closed_for: Duration::from_millis(500),
    warmup: Duration::from_millis(300),
    check_rate: 200.0,
    check_for: Duration::from_millis(500),
    cold_starts: 5,
};

const FULL: Plan = Plan {
    name: "full",
    rounds: 9,
    sequential: 3000,
    rates: [1000.0, 5000.0],
    open_for: Duration::from_secs(3),
    closed_for: Duration::from_secs(3),
    warmup: Duration::from_secs(1),
    check_rate: 200.0,
    check_for: Duration::from_secs(3),
    cold_starts: 15,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => serve(Path::new(arg(&args, 1))),
        Some("cold") => cold(arg(&args, 1), Path::new(arg(&args, 2)), arg(&args, 3)),
        Some("endpoint-bytes") => endpoint_bytes(),
        Some("client") => client(arg(&args, 1), Path::new(arg(&args, 2)), arg(&args, 3)),
        Some("profile") => profile(arg(&args, 1), arg(&args, 2)),
        Some("cold-starts") => cold_starts(arg(&args, 1)),
        Some("cold-phases") => cold_phases(arg(&args, 1)),
        Some("--full") => run(FULL),
        Some("--quick") | None => run(QUICK),
        Some(other) => Err(format!("unknown argument `{other}`; use --quick or --full").into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compare: {e}");
            ExitCode::FAILURE
        }
    }
}

fn arg(args: &[String], i: usize) -> &str {
    args.get(i).map(String::as_str).unwrap_or("")
}

// ---------------------------------------------------------------- helpers --

/// The server: mTLS (raw and mesh clients) and plain (behind haproxy) on one
/// single-worker runtime. Prints its ports as JSON, then serves until its
/// standard input closes, so it never outlives the bench.
fn serve(dir: &Path) -> Result<(), BoxError> {
    let pki = PkiFiles::existing(dir);
    let tls = pki.server_config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    // The server's mesh records its metrics like any service's (Prometheus
    // recorder; no span exporter).
    let (server_mesh, _telemetry) = runtime.block_on(async {
        let config = MeshConfig::builder("bench-server")
            .identity(pki.server_identity())
            .build()?;
        let telemetry = mesh_core::telemetry::init(&config)?;
        Ok::<_, BoxError>((Mesh::new(config)?, telemetry))
    })?;
    let (tls_addr, plain_addr, mesh_addr, grpc_addr) = runtime.block_on(async {
        let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
        let (tls_listener, plain_listener, mesh_listener, grpc_listener) =
            (bind().await?, bind().await?, bind().await?, bind().await?);
        let addrs = (
            tls_listener.local_addr()?,
            plain_listener.local_addr()?,
            mesh_listener.local_addr()?,
            grpc_listener.local_addr()?,
        );
        tokio::spawn(server::serve_tls(tls_listener, tls));
        tokio::spawn(server::serve_plain(plain_listener));
        tokio::spawn(server::serve_mesh(mesh_listener, server_mesh));
        tokio::spawn(grpc::serve_grpc(grpc_listener));
        Ok::<_, std::io::Error>(addrs)
    })?;
    println!(
        "{}",
        json!({"tls": tls_addr, "plain": plain_addr, "mesh": mesh_addr, "grpc": grpc_addr})
    );
    std::io::stdout().flush()?;
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    Ok(())
}

/// One cold start: a fresh process builds its client, sends one mTLS request
/// to `addr`, prints `ok`. `mesh` reads its configuration from `MESH_`
/// variables the parent set.
fn cold(kind: &str, dir: &Path, addr: &str) -> Result<(), BoxError> {
    let phases = ColdPhases::from_env(kind);
    phases.mark("main");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    phases.mark("runtime");
    runtime.block_on(async {
        let target: Arc<dyn Target> = match kind {
            "raw" => {
                let pki = PkiFiles::existing(dir);
                let connect = TlsConnect::new(pki.client_config()?);
                phases.mark("client");
                Arc::new(RawTarget::new(addr.parse()?, SERVER_NAME, connect, 1))
            }
            "mesh" => {
                // Telemetry first, as a service sets it up, so the mesh's own
                // start-up metrics (the certificate's expiry) are recorded.
                let config = MeshConfig::from_env()?;
                phases.mark("config");
                let telemetry = mesh_core::telemetry::init(&config)?;
                phases.mark("telemetry");
                let mesh = Mesh::new(config)?;
                phases.mark("mesh");
                let client = mesh.client();
                client.ready().await;
                phases.mark("client");
                // The handles own the identity watch and the metrics recorder; they
                // live as long as the process.
                std::mem::forget(mesh);
                std::mem::forget(telemetry);
                Arc::new(MeshTarget::new(client))
            }
            _ => return Err(format!("unknown cold-start kind `{kind}`").into()),
        };
        target.call().await?;
        phases.mark("response");
        println!("ok");
        Ok(())
    })
}

/// Where a cold helper's wall-clock time goes, for `cold-phases`: when its
/// parent set `COLD_SPAWNED_AT_NS` (Unix time in nanoseconds, just before the
/// spawn), each [`mark`](Self::mark) prints `phase KIND NAME MS` on standard
/// error, MS the time since the spawn. Without the variable a mark does nothing,
/// so `cold-starts` times helpers that print nothing extra.
struct ColdPhases {
    kind: String,
    spawned_at_ns: Option<u128>,
}

impl ColdPhases {
    fn from_env(kind: &str) -> Self {
        ColdPhases {
            kind: kind.to_string(),
            spawned_at_ns: std::env::var("COLD_SPAWNED_AT_NS")
                .ok()
                .and_then(|v| v.parse().ok()),
        }
    }

    fn mark(&self, phase: &str) {
        if let Some(spawned) = self.spawned_at_ns {
            let ms = unix_ns().saturating_sub(spawned) as f64 / 1e6;
            eprintln!("phase {} {phase} {ms:.3}", self.kind);
        }
    }
}

/// Now, in nanoseconds since the Unix epoch: a clock both processes read.
fn unix_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// The `mesh+otel` client process: the mesh as [`start_mesh`] sets it up, with
/// the `OTEL_*` variables the bench set ([`otel_vars`]), running load on
/// command from the bench ([`remote::serve_commands`]).
fn client(kind: &str, dir: &Path, addr: &str) -> Result<(), BoxError> {
    if kind != "mesh-otel" {
        return Err(format!("unknown client kind `{kind}`; use mesh-otel").into());
    }
    let pki = PkiFiles::existing(dir);
    let addr: SocketAddr = addr.parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (mesh, telemetry) = runtime.block_on(start_mesh(&pki, addr))?;
    if !telemetry.exports_spans() {
        return Err("mesh-otel: no span exporter (is OTEL_EXPORTER_OTLP_ENDPOINT set?)".into());
    }
    let target: Arc<dyn Target> = Arc::new(MeshTarget::new(mesh.client()));
    runtime.block_on(target.call())?;
    remote::serve_commands(&runtime, &target, || telemetry.flush())?;
    drop(telemetry);
    drop(mesh);
    Ok(())
}

/// What makes `mesh` into `mesh+otel`: spans sampled at
/// [`OTEL_SAMPLE_RATIO`] (parent-based, so a caller's decision wins) and
/// exported over OTLP/gRPC to `collector`.
fn otel_vars(collector: &SpanCounter) -> [(&'static str, String); 4] {
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_string()),
        (
            "OTEL_TRACES_SAMPLER",
            "parentbased_traceidratio".to_string(),
        ),
        ("OTEL_TRACES_SAMPLER_ARG", OTEL_SAMPLE_RATIO.to_string()),
    ]
}

/// Starts the `mesh+otel` client process, sending to the server's mesh port
/// at `addr`; it has sent its first request when this returns.
fn spawn_otel_client(
    pki: &PkiFiles,
    addr: SocketAddr,
    collector: &SpanCounter,
) -> Result<RemoteLoad, BoxError> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        .args(["client", "mesh-otel"])
        .arg(pki.dir())
        .arg(addr.to_string())
        .envs(otel_vars(collector));
    RemoteLoad::spawn(command).map_err(|e| format!("mesh+otel client: {e}").into())
}

/// The `raw` configuration's client: hyper and tokio-rustls to the server's
/// TLS port, over at most `connections` (the bench's: [`CONCURRENCY`]).
fn raw_target(
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    connections: usize,
) -> Arc<dyn Target> {
    Arc::new(RawTarget::new(
        addr,
        SERVER_NAME,
        TlsConnect::new(tls.clone()),
        connections,
    ))
}

/// The mesh client's variables: the service `bench` at `addr`, over SPIFFE mTLS.
fn mesh_vars(pki: &PkiFiles, addr: SocketAddr) -> BTreeMap<String, String> {
    let mut vars: BTreeMap<String, String> = [
        ("MESH_SERVICE_NAME".to_string(), "bench-client".to_string()),
        (
            format!("MESH_SERVICE_{}_ENDPOINTS", SERVICE.to_uppercase()),
            addr.to_string(),
        ),
        (
            format!("MESH_SERVICE_{}_MAX_CONNECTIONS", SERVICE.to_uppercase()),
            CONCURRENCY.to_string(),
        ),
    ]
    .into();
    vars.extend(pki.client_tls_vars());
    vars
}

/// Starts the mesh the benchmark measures, ready to send to `addr`, with its
/// telemetry as a service would set it up (metrics recorded, trace context
/// propagated, no span exporter unless `OTEL_*` asks for one). The process
/// environment wins over the bench's own variables, so
/// `MESH_DEFAULT_…=… compare` measures another setting.
async fn start_mesh(
    pki: &PkiFiles,
    addr: SocketAddr,
) -> Result<(Mesh, mesh_core::telemetry::TelemetryGuard), BoxError> {
    let config = MeshConfig::from_source(&Layered::new(Env, mesh_vars(pki, addr)))?;
    let telemetry = mesh_core::telemetry::init(&config)?;
    let mesh = Mesh::new(config)?;
    mesh.client().ready().await;
    Ok((mesh, telemetry))
}

/// tonic's own `Channel` and a `MeshChannel` (default stack, `PROTOCOL=grpc`),
/// both without TLS to the server's gRPC port: what differs is the stack.
async fn grpc_channels(
    addr: SocketAddr,
) -> Result<(tonic::transport::Channel, mesh_grpc::MeshChannel), BoxError> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let vars: BTreeMap<String, String> = [
        ("MESH_SERVICE_NAME".to_string(), "bench-client".to_string()),
        (
            format!("MESH_SERVICE_{}_ENDPOINTS", GRPC_SERVICE.to_uppercase()),
            addr.to_string(),
        ),
        (
            format!("MESH_SERVICE_{}_PROTOCOL", GRPC_SERVICE.to_uppercase()),
            "grpc".to_string(),
        ),
    ]
    .into();
    let client = MeshClient::new(MeshConfig::from_source(&Layered::new(Env, vars))?)?;
    client.ready().await;
    let mesh_channel = mesh_grpc::MeshChannel::new(client, GRPC_SERVICE)?;
    Ok((channel, mesh_channel))
}

/// For profilers: starts the server process, then sends `count` sequential
/// requests with one configuration (`raw` or `mesh`) after a warm-up, and
/// prints the mean time per request. Under
/// `valgrind --tool=callgrind` (which follows only this process), the
/// instructions of `mesh` minus those of `raw`, per request, are what the
/// mesh's client side costs. With `PROFILE_SATURATION=1` (not for `mesh-otel`),
/// `count` is milliseconds of the bench's closed loop instead.
fn profile(kind: &str, count: &str) -> Result<(), BoxError> {
    let count: usize = count
        .parse()
        .map_err(|_| format!("profile: `{count}` is not a request count"))?;
    let work = tempfile::tempdir()?;
    let pki = PkiFiles::generate(work.path())?;
    let server = ServerProcess::start(&pki)?;
    // `PROFILE_RUNTIME=bench` drives the requests as the bench does (from
    // `block_on` on a runtime with one worker, so every request crosses
    // threads); the default keeps the whole client on this thread.
    let runtime =
        if std::env::var("PROFILE_RUNTIME").as_deref() == Ok("bench") || kind == "mesh-in-bench" {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?
        } else {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
        };
    if kind == "mesh-otel" {
        // The client is a helper process (follow it with
        // `--trace-children=yes`); this one only hosts the OTLP receiver, on
        // a runtime whose worker serves it while this thread waits.
        let receiver_runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let collector = receiver_runtime.block_on(SpanCounter::start())?;
        let mut remote = spawn_otel_client(&pki, server.mesh, &collector)?;
        remote.sequential(count.min(200))?;
        let started = Instant::now();
        let errors = remote.sequential(count)?.errors;
        let elapsed = started.elapsed();
        let requests = remote.flush()?;
        eprintln!(
            "{kind}: {count} sequential requests, {:.1} µs each, {errors} errors; {} spans for {requests} requests",
            elapsed.as_secs_f64() * 1e6 / count as f64,
            collector.spans()
        );
        return Ok(());
    }
    let saturation = std::env::var("PROFILE_SATURATION").as_deref() == Ok("1");
    runtime.block_on(async {
        let (target, _mesh): (Arc<dyn Target>, Option<_>) = match kind {
            // One connection for sequential requests, as the mesh's pool
            // reuses one; the bench's one per worker at saturation.
            "raw" => {
                let connections = if saturation { CONCURRENCY } else { 1 };
                let target = raw_target(server.tls, &pki.client_config()?, connections);
                (target, None)
            }
            "mesh" => {
                let mesh = start_mesh(&pki, server.mesh).await?;
                (Arc::new(MeshTarget::new(mesh.0.client())), Some(mesh))
            }
            "mesh-in-bench" => {
                let mesh = start_mesh(&pki, server.mesh).await?;
                let target: Arc<dyn Target> = Arc::new(MeshTarget::new(mesh.0.client()));
                let neighbours = bench_neighbours(&pki, &server, &target).await?;
                // Kept until the process exits, as in `run`.
                std::mem::forget(neighbours);
                (target, Some(mesh))
            }
            // Telemetry set up for both, as in the bench, so their difference
            // is the stack.
            "grpc" | "grpc-mesh" => {
                let mesh = start_mesh(&pki, server.mesh).await?;
                let (channel, mesh_channel) = grpc_channels(server.grpc).await?;
                let target: Arc<dyn Target> = if kind == "grpc" {
                    Arc::new(GrpcTarget::new(channel))
                } else {
                    Arc::new(GrpcTarget::new(mesh_channel))
                };
                (target, Some(mesh))
            }
            _ => return Err(format!("profile: unknown configuration `{kind}`").into()),
        };
        load::sequential(&target, count.min(200)).await;
        // CPU time as well as the clock: on a shared machine it tells work
        // (or cache misses) apart from waiting.
        let (me, serving) = (
            Proc::new("client", std::process::id()),
            Proc::new("server", server.child.id()),
        );
        let cpu_before = (me.cpu_seconds(), serving.cpu_seconds());
        let switches_before = (me.context_switches(), serving.context_switches());
        // Each process's CPU time and context switches over `requests`.
        let usage = |requests: f64| {
            let cpu = |p: &Proc, before: f64| (p.cpu_seconds() - before) * 1e6 / requests;
            let switches = |p: &Proc, before: u64| {
                p.context_switches().saturating_sub(before) as f64 / requests
            };
            format!(
                "per request: CPU µs client {:.2}, server {:.2}; context switches client {:.3}, server {:.3}",
                cpu(&me, cpu_before.0),
                cpu(&serving, cpu_before.1),
                switches(&me, switches_before.0),
                switches(&serving, switches_before.1),
            )
        };
        let started = Instant::now();
        // `PROFILE_SATURATION=1` runs the bench's closed loop instead, for
        // `count` milliseconds: the per-request CPU and hand-offs behind the
        // throughput ratio (with `PROFILE_RUNTIME=bench`, the bench's runtime).
        if saturation {
            let run =
                load::closed_loop(&target, CONCURRENCY, Duration::from_millis(count as u64)).await;
            eprintln!(
                "{kind}: saturation for {count} ms, {:.0} requests/s ({}), {} errors",
                run.throughput,
                usage(run.ok as f64),
                run.errors
            );
            return Ok(());
        }
        let run = load::sequential(&target, count).await;
        eprintln!(
            "{kind}: {count} sequential requests, {:.1} µs each (p50 {:.1} µs; {}), {} errors",
            started.elapsed().as_secs_f64() * 1e6 / count as f64,
            run.latency.value_at_quantile(0.5) as f64 / 1e3,
            usage(count as f64),
            run.errors
        );
        Ok(())
    })
}

/// What `run` sets up beside the in-process `mesh`, warmed up as `run` warms
/// it (saturation first, so every pool holds its connections), for
/// `profile mesh-in-bench`: the OTLP receiver, the gRPC pair and two raw
/// targets, then `mesh` itself at saturation; returned for the caller to
/// keep. The sequential requests that follow are `mesh`'s only.
async fn bench_neighbours(
    pki: &PkiFiles,
    server: &ServerProcess,
    mesh: &Arc<dyn Target>,
) -> Result<(Option<SpanCounter>, Vec<Arc<dyn Target>>), BoxError> {
    // A count, not a duration: under callgrind the warm-up must be the same
    // work in every run, or it does not cancel out of the marginal.
    let warm: usize = std::env::var("PROFILE_WARMUP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    // `PROFILE_NEIGHBOURS=raw,grpc,grpc-mesh,otlp,mesh` (the default: all)
    // picks which are set up, to tell their effects apart.
    let picked = std::env::var("PROFILE_NEIGHBOURS")
        .unwrap_or_else(|_| "raw,grpc,grpc-mesh,otlp,mesh".to_string());
    let picked: Vec<&str> = picked.split(',').collect();
    let collector = if picked.contains(&"otlp") {
        Some(SpanCounter::start().await?)
    } else {
        None
    };
    let (channel, mesh_channel) = grpc_channels(server.grpc).await?;
    let client_tls = pki.client_config()?;
    let raw = || raw_target(server.tls, &client_tls, CONCURRENCY);
    let mut targets: Vec<Arc<dyn Target>> = Vec::new();
    if picked.contains(&"raw") {
        targets.extend([raw(), raw()]);
    }
    if picked.contains(&"grpc") {
        targets.push(Arc::new(GrpcTarget::new(channel)));
    }
    if picked.contains(&"grpc-mesh") {
        targets.push(Arc::new(GrpcTarget::new(mesh_channel)));
    }
    if picked.contains(&"mesh") {
        targets.push(mesh.clone());
    }
    for target in &targets {
        target.call().await?;
        let workers: Vec<_> = (0..CONCURRENCY)
            .map(|_| {
                let target = target.clone();
                tokio::spawn(async move { load::sequential(&target, warm).await.errors })
            })
            .collect();
        for worker in workers {
            let errors = worker.await?;
            if errors > 0 {
                return Err(format!("{errors} errors while warming up").into());
            }
        }
    }
    targets.retain(|t| !Arc::ptr_eq(t, mesh));
    Ok((collector, targets))
}

/// Heap bytes a `MeshClient` holds for a service with `n` known endpoints,
/// counted by the allocator (not RSS). The variables are built before
/// counting starts: they are the user's environment, not the mesh's memory.
fn client_bytes(runtime: &tokio::runtime::Runtime, n: usize) -> Result<usize, BoxError> {
    let endpoints: Vec<String> = (1..=n)
        .map(|i| format!("10.{}.{}.{}:8080", (i >> 16) & 255, (i >> 8) & 255, i & 255))
        .collect();
    let vars: BTreeMap<String, String> = [
        ("MESH_SERVICE_NAME".to_string(), "bench-client".to_string()),
        (
            format!("MESH_SERVICE_{}_ENDPOINTS", SERVICE.to_uppercase()),
            endpoints.join(","),
        ),
    ]
    .into();
    let before = ALLOCATOR.allocated();
    let client = runtime.block_on(async {
        let client = MeshClient::new(MeshConfig::from_source(&vars)?)?;
        client.ready().await;
        // Let discovery and the balancer settle on the snapshot.
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok::<_, BoxError>(client)
    })?;
    let after = ALLOCATOR.allocated();
    drop(client);
    Ok(after.saturating_sub(before))
}

fn endpoint_bytes() -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let base = client_bytes(&runtime, 1)?;
    let few = client_bytes(&runtime, 10)?;
    let many = client_bytes(&runtime, MANY_ENDPOINTS)?;
    let per_endpoint = (many.saturating_sub(few)) as f64 / (MANY_ENDPOINTS - 10) as f64;
    println!(
        "{}",
        json!({"base_bytes": base, "bytes_per_endpoint": round3(per_endpoint), "bytes_10": few, "bytes_10000": many})
    );
    Ok(())
}

/// The server process; killed on drop (and it exits by itself when our end
/// of its standard input closes).
struct ServerProcess {
    child: Child,
    /// hyper + tokio-rustls mTLS (raw clients).
    tls: SocketAddr,
    /// Plain HTTP (behind haproxy).
    plain: SocketAddr,
    /// The mesh's inbound server (mesh clients).
    mesh: SocketAddr,
    /// The tonic server (h2c; tonic `Channel` and `MeshChannel` clients).
    grpc: SocketAddr,
}

impl ServerProcess {
    fn start(pki: &PkiFiles) -> Result<Self, BoxError> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("serve")
            .arg(pki.dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().ok_or("no server stdout")?).read_line(&mut line)?;
        let ports: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| format!("the server process did not report its ports ({e}): {line}"))?;
        let addr = |key: &str| -> Result<SocketAddr, BoxError> {
            Ok(ports[key].as_str().ok_or("missing port")?.parse()?)
        };
        Ok(ServerProcess {
            tls: addr("tls")?,
            plain: addr("plain")?,
            mesh: addr("mesh")?,
            grpc: addr("grpc")?,
            child,
        })
    }
}

impl Drop for ServerProcess {
    /// Closes the server's standard input so it exits by itself (a profiler
    /// running it then writes its output), and kills it if it has not within
    /// a few seconds.
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The command that runs one cold-start helper of `kind` against `addr`.
fn cold_command(kind: &str, pki: &PkiFiles, addr: SocketAddr) -> Result<Command, BoxError> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        .args(["cold", kind])
        .arg(pki.dir())
        .arg(addr.to_string())
        .env("MESH_SERVICE_NAME", "bench-cold")
        .env(
            format!("MESH_SERVICE_{}_ENDPOINTS", SERVICE.to_uppercase()),
            addr.to_string(),
        )
        .envs(pki.client_tls_vars())
        .stdout(Stdio::piped());
    Ok(command)
}

/// Spawns one cold-start helper and times it from spawn to its `ok`.
fn time_cold_start(kind: &str, pki: &PkiFiles, addr: SocketAddr) -> Result<Duration, BoxError> {
    let mut command = cold_command(kind, pki, addr)?;
    let started = Instant::now();
    let mut child = command.spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    let elapsed = started.elapsed();
    let status = child.wait()?;
    if line.trim() != "ok" || !status.success() {
        return Err(format!("cold start `{kind}` failed ({status})").into());
    }
    Ok(elapsed)
}

// ------------------------------------------------------------------ bench --

/// One configuration under test.
struct Config {
    name: &'static str,
    load: Load,
    procs: Vec<Proc>,
    rounds: Vec<Round>,
}

/// Where a configuration's load runs.
enum Load {
    /// In this process, on the bench's runtime.
    Local(Arc<dyn Target>),
    /// In a helper process of its own (telemetry set up differently).
    Remote(Mutex<RemoteLoad>),
}

impl Load {
    /// Before the first round: one request (a remote helper has sent its
    /// own), then a warm-up at saturation that must not fail.
    fn warm_up(&self, runtime: &tokio::runtime::Runtime, plan: &Plan) -> Result<(), BoxError> {
        if let Load::Local(target) = self {
            runtime.block_on(target.call())?;
        }
        let warm = self.closed_loop(runtime, plan.warmup)?;
        if warm.errors > 0 {
            return Err(format!("{} errors while warming up", warm.errors).into());
        }
        Ok(())
    }

    fn sequential(
        &self,
        runtime: &tokio::runtime::Runtime,
        count: usize,
    ) -> Result<LatencyRun, BoxError> {
        match self {
            Load::Local(target) => Ok(runtime.block_on(load::sequential(target, count))),
            Load::Remote(remote) => remote.lock().sequential(count),
        }
    }

    /// One request at a time with `gap` of idleness after each (the generator's
    /// self-check; the bench's own process only).
    fn sequential_with_gaps(
        &self,
        runtime: &tokio::runtime::Runtime,
        count: usize,
        gap: Duration,
    ) -> Result<Percentiles, BoxError> {
        match self {
            Load::Local(target) => {
                let run = runtime.block_on(load::sequential_with_gaps(target, count, gap));
                Ok(Percentiles::of(&run.latency))
            }
            Load::Remote(_) => Err("the self-check runs in the bench's own process".into()),
        }
    }

    fn open_loop(
        &self,
        runtime: &tokio::runtime::Runtime,
        rate: f64,
        duration: Duration,
    ) -> Result<OpenLoop, BoxError> {
        match self {
            Load::Local(target) => Ok(OpenLoop::new(
                rate,
                &load::open_loop(runtime.handle(), target, rate, duration),
            )),
            Load::Remote(remote) => remote.lock().open_loop(rate, duration),
        }
    }

    fn closed_loop(
        &self,
        runtime: &tokio::runtime::Runtime,
        duration: Duration,
    ) -> Result<Saturation, BoxError> {
        match self {
            Load::Local(target) => {
                Ok(runtime.block_on(load::closed_loop(target, CONCURRENCY, duration)))
            }
            Load::Remote(remote) => remote.lock().closed_loop(CONCURRENCY, duration),
        }
    }
}

/// The order `n` configurations take their turns in, shuffled every time.
/// Rotating one order would keep every configuration's neighbours: in the
/// run that showed it, `raw2` always followed `mesh+otel`, whose helper
/// exports its spans to a receiver on the bench's runtime after its turn, and
/// ran 5.9 µs slower than `raw` sequentially.
fn turn_order(n: usize, rng: &mut SmallRng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    order
}

/// One configuration's sequential requests in a round.
struct SequentialRun {
    run: LatencyRun,
    /// Context switches of its client process and of the server while its
    /// requests ran.
    switches: [u64; 2],
}

/// One round's sequential latency of every configuration, in `configs`'
/// order: [`SEQUENTIAL_BLOCK`] requests of each in turn, in a new
/// [`turn_order`] every block, until each has sent `plan.sequential`.
fn sequential_interleaved(
    runtime: &tokio::runtime::Runtime,
    plan: &Plan,
    configs: &[Config],
    rng: &mut SmallRng,
) -> Result<Vec<SequentialRun>, BoxError> {
    let n = configs.len();
    let mut runs: Vec<SequentialRun> = (0..n)
        .map(|_| SequentialRun {
            run: LatencyRun {
                latency: load::histogram(),
                lag: None,
                errors: 0,
                ok: 0,
            },
            switches: [0; 2],
        })
        .collect();
    let blocks = plan.sequential.div_ceil(SEQUENTIAL_BLOCK);
    for block in 0..blocks {
        let count = SEQUENTIAL_BLOCK.min(plan.sequential - block * SEQUENTIAL_BLOCK);
        for c in turn_order(n, rng) {
            // Every configuration's first two processes are its client and
            // the server.
            let switches = || configs[c].procs.iter().take(2).map(Proc::context_switches);
            let before: Vec<u64> = switches().collect();
            let part = configs[c]
                .load
                .sequential(runtime, count)
                .map_err(|e| format!("{}: {e}", configs[c].name))?;
            let SequentialRun { run, switches: sum } = &mut runs[c];
            for ((sum, after), before) in sum.iter_mut().zip(switches()).zip(before) {
                *sum += after.saturating_sub(before);
            }
            run.latency.add(&part.latency)?;
            run.errors += part.errors;
            run.ok += part.ok;
        }
    }
    Ok(runs)
}

/// One configuration's round: its fixed-rate and saturation runs, with the
/// sequential run [`sequential_interleaved`] took for it.
fn measure(
    runtime: &tokio::runtime::Runtime,
    plan: &Plan,
    config: &Config,
    sequential: &SequentialRun,
) -> Result<Round, BoxError> {
    let load = &config.load;
    let peaks = Phase::start(&config.procs);
    let open = plan
        .rates
        .iter()
        .map(|&rate| load.open_loop(runtime, rate, plan.open_for))
        .collect::<Result<Vec<OpenLoop>, BoxError>>()?;
    // CPU per request is taken at saturation only: the open-loop pacer's
    // spinning would otherwise be charged to the client.
    let cpu = Phase::cpu_only(&config.procs);
    let saturation = load.closed_loop(runtime, plan.closed_for)?;
    let cpu = cpu.finish();
    let mut usage = peaks.finish();
    for (u, c) in usage.iter_mut().zip(cpu) {
        u.cpu_seconds = c.cpu_seconds;
    }
    Ok(Round {
        sequential: Percentiles::of(&sequential.run.latency),
        sequential_errors: sequential.run.errors,
        sequential_switches: sequential
            .switches
            .map(|n| n as f64 / sequential.run.latency.len().max(1) as f64),
        open,
        saturation,
        requests: saturation.ok,
        usage,
    })
}

/// `count` cold starts of each kind against `server`, alternating which goes
/// first so neither always follows the other; milliseconds, (raw, mesh).
fn cold_start_series(
    pki: &PkiFiles,
    server: &ServerProcess,
    count: usize,
) -> Result<(Vec<f64>, Vec<f64>), BoxError> {
    let mut cold_raw = Vec::new();
    let mut cold_mesh = Vec::new();
    for i in 0..count {
        let order = if i % 2 == 0 {
            ["raw", "mesh"]
        } else {
            ["mesh", "raw"]
        };
        for kind in order {
            let addr = if kind == "raw" {
                server.tls
            } else {
                server.mesh
            };
            let ms = time_cold_start(kind, pki, addr)?.as_secs_f64() * 1e3;
            match kind {
                "raw" => cold_raw.push(ms),
                _ => cold_mesh.push(ms),
            }
        }
    }
    Ok((cold_raw, cold_mesh))
}

/// The helper count a cold-start mode was given (21 when none was).
fn cold_count(mode: &str, count: &str) -> Result<usize, BoxError> {
    if count.is_empty() {
        return Ok(21);
    }
    count
        .parse()
        .map_err(|_| format!("{mode}: `{count}` is not a count").into())
}

/// Cold starts only, for working on them: `count` of each kind (default 21),
/// medians and their ratio, and the ratio's spread over pairs.
fn cold_starts(count: &str) -> Result<(), BoxError> {
    let count = cold_count("cold-starts", count)?;
    let work = tempfile::tempdir()?;
    let pki = PkiFiles::generate(work.path())?;
    let server = ServerProcess::start(&pki)?;
    let (raw, mesh) = cold_start_series(&pki, &server, count)?;
    let pairs: Vec<f64> = mesh.iter().zip(&raw).map(|(m, r)| m / r).collect();
    let (raw_ms, mesh_ms) = (median(raw), median(mesh));
    println!(
        "cold start, {count} of each: raw {raw_ms:.2} ms, mesh {mesh_ms:.2} ms, mesh/raw {:.3} (median of pairs {:.3})",
        mesh_ms / raw_ms,
        median(pairs)
    );
    Ok(())
}

/// Cold starts with their phases: `count` of each kind (default 21),
/// alternating, each helper reporting when its phases ended ([`ColdPhases`]);
/// prints the median of each phase per kind, in milliseconds since the spawn.
/// The wall clock is shared with the server's work, so a phase that waits on
/// the server (`response`) includes it.
fn cold_phases(count: &str) -> Result<(), BoxError> {
    let count = cold_count("cold-phases", count)?;
    let work = tempfile::tempdir()?;
    let pki = PkiFiles::generate(work.path())?;
    let server = ServerProcess::start(&pki)?;
    // (kind, phase) -> milliseconds, phases in the order first seen.
    let mut order: Vec<(String, String)> = Vec::new();
    let mut times: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for i in 0..count {
        let kinds = if i % 2 == 0 {
            ["raw", "mesh"]
        } else {
            ["mesh", "raw"]
        };
        for kind in kinds {
            let addr = if kind == "raw" {
                server.tls
            } else {
                server.mesh
            };
            let mut command = cold_command(kind, &pki, addr)?;
            command
                .stderr(Stdio::piped())
                .env("COLD_SPAWNED_AT_NS", unix_ns().to_string());
            let output = command.output()?;
            if !output.status.success() {
                return Err(format!("cold start `{kind}` failed ({})", output.status).into());
            }
            for line in String::from_utf8_lossy(&output.stderr).lines() {
                let parts: Vec<&str> = line.split_whitespace().collect();
                if let ["phase", kind, phase, ms] = parts[..] {
                    let key = (kind.to_string(), phase.to_string());
                    if !order.contains(&key) {
                        order.push(key.clone());
                    }
                    times.entry(key).or_default().push(ms.parse()?);
                }
            }
        }
    }
    println!("cold start phases, {count} of each: median ms since spawn at each phase's end");
    for key in &order {
        let samples = times.remove(key).unwrap_or_default();
        println!("  {:<5} {:<10} {:>7.3}", key.0, key.1, median(samples));
    }
    Ok(())
}

fn run(plan: Plan) -> Result<(), BoxError> {
    let work = tempfile::tempdir()?;
    let pki = PkiFiles::generate(work.path())?;
    let server = ServerProcess::start(&pki)?;
    let sidecars = Sidecars::start(&pki, work.path(), server.plain)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let client_tls = pki.client_config()?;

    let (mesh, _telemetry) = runtime.block_on(start_mesh(&pki, server.mesh))?;
    // `mesh+otel` exports to this receiver, served by the bench runtime's
    // worker (idle while the helper process runs the load).
    let collector = runtime.block_on(SpanCounter::start())?;
    let otel_client = spawn_otel_client(&pki, server.mesh, &collector)?;
    let otel_procs = vec![
        Proc::new("client", otel_client.pid()),
        Proc::new("server", server.child.id()),
    ];

    // The gRPC pair runs without TLS on both sides: what differs is the stack.
    let (channel, mesh_channel) = runtime.block_on(grpc_channels(server.grpc))?;

    let me = Proc::new("client", std::process::id());
    let server_proc = Proc::new("server", server.child.id());
    let base = vec![me, server_proc];
    let mut sidecar_procs = base.clone();
    sidecar_procs.push(Proc::new("nginx", sidecars.nginx_pid()));
    for worker in procstat::children(sidecars.nginx_pid()) {
        sidecar_procs.push(Proc::new("nginx", worker));
    }
    sidecar_procs.push(Proc::new("haproxy", sidecars.haproxy_pid()));

    let mut configs = vec![
        Config {
            name: "raw",
            load: Load::Local(raw_target(server.tls, &client_tls, CONCURRENCY)),
            procs: base.clone(),
            rounds: Vec::new(),
        },
        Config {
            name: "mesh",
            load: Load::Local(Arc::new(MeshTarget::new(mesh.client()))),
            procs: base.clone(),
            rounds: Vec::new(),
        },
        Config {
            name: "mesh+otel",
            load: Load::Remote(Mutex::new(otel_client)),
            procs: otel_procs,
            rounds: Vec::new(),
        },
        Config {
            name: "raw2",
            load: Load::Local(raw_target(server.tls, &client_tls, CONCURRENCY)),
            procs: base.clone(),
            rounds: Vec::new(),
        },
        Config {
            name: "sidecar",
            load: Load::Local(Arc::new(RawTarget::new(
                sidecars.listen,
                SERVER_NAME,
                TcpConnect,
                CONCURRENCY,
            ))),
            procs: sidecar_procs,
            rounds: Vec::new(),
        },
        Config {
            name: "grpc",
            load: Load::Local(Arc::new(GrpcTarget::new(channel))),
            procs: base.clone(),
            rounds: Vec::new(),
        },
        Config {
            name: "grpc-mesh",
            load: Load::Local(Arc::new(GrpcTarget::new(mesh_channel))),
            procs: base.clone(),
            rounds: Vec::new(),
        },
    ];

    eprintln!(
        "compare ({}): {} rounds of {} configurations; warming up",
        plan.name,
        plan.rounds,
        configs.len()
    );
    for config in &configs {
        config
            .load
            .warm_up(&runtime, &plan)
            .map_err(|e| format!("{} cannot send requests: {e}", config.name))?;
    }

    // The generator checks itself: at a low rate, its p50 must match the round
    // trip of requests sent one at a time with the same idle gap between them
    // (so both start from an idle machine); how much slower those are than
    // back-to-back requests is the machine's wake-up cost, reported apart.
    let mut self_check = SelfCheck::default();
    // A fixed seed: every run takes its turns in the same orders.
    let mut rng = SmallRng::seed_from_u64(0x6d65_7368);
    for round in 0..plan.rounds {
        let sequential = sequential_interleaved(&runtime, &plan, &configs, &mut rng)?;
        for c in turn_order(configs.len(), &mut rng) {
            let config = &configs[c];
            let measured = measure(&runtime, &plan, config, &sequential[c])
                .map_err(|e| format!("{}: {e}", config.name))?;
            if config.name == "raw" {
                let check = config
                    .load
                    .open_loop(&runtime, plan.check_rate, plan.check_for)?;
                let gap = Duration::from_secs_f64(1.0 / plan.check_rate);
                let count = (plan.check_rate * plan.check_for.as_secs_f64()) as usize;
                let paced = config.load.sequential_with_gaps(&runtime, count, gap)?;
                self_check
                    .generator
                    .push(check.latency.p50_us / paced.p50_us);
                self_check
                    .idle_wake_up
                    .push(paced.p50_us / measured.sequential.p50_us);
            }
            configs[c].rounds.push(measured);
        }
        eprintln!("  round {}/{} done", round + 1, plan.rounds);
    }
    drop(sidecars);

    // Every sampled span the helper buffered reaches the receiver before it
    // is counted.
    let otel_requests = match &configs
        .iter()
        .find(|c| c.name == "mesh+otel")
        .expect("configured")
        .load
    {
        Load::Remote(remote) => remote.lock().flush()?,
        Load::Local(_) => unreachable!("mesh+otel runs in its helper"),
    };
    let otel = OtelExport {
        requests: otel_requests,
        spans: collector.spans(),
        exports: collector.exports(),
    };
    if otel.spans == 0 {
        return Err(format!(
            "mesh+otel: the OTLP receiver got no spans for {otel_requests} requests"
        )
        .into());
    }

    let (cold_raw, cold_mesh) = cold_start_series(&pki, &server, plan.cold_starts)?;
    drop(server);

    let memory: serde_json::Value = {
        let out = Command::new(std::env::current_exe()?)
            .arg("endpoint-bytes")
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "endpoint-bytes failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        let text = String::from_utf8(out.stdout)?;
        serde_json::from_str(text.lines().last().unwrap_or(""))?
    };

    summarise(
        &plan,
        &configs,
        &self_check,
        (&cold_raw, &cold_mesh),
        &otel,
        &memory,
    );
    Ok(())
}

fn find<'a>(configs: &'a [Config], name: &str) -> &'a [Round] {
    &configs
        .iter()
        .find(|c| c.name == name)
        .expect("configured")
        .rounds
}

/// What `mesh+otel`'s exporter delivered over the whole run.
#[derive(Debug)]
struct OtelExport {
    /// Requests the helper completed (warm-up included).
    requests: u64,
    /// Spans the receiver got.
    spans: u64,
    /// Export calls the receiver got.
    exports: u64,
}

/// The generator's self-check, per round (see where it is measured).
#[derive(Default)]
struct SelfCheck {
    /// Open-loop p50 at the check rate ÷ p50 of one-at-a-time requests with
    /// the same idle gaps: the generator's own cost (≈ 1 when it adds none).
    generator: Vec<f64>,
    /// p50 of one-at-a-time requests with idle gaps ÷ back-to-back p50: what
    /// waking from idle costs on this machine.
    idle_wake_up: Vec<f64>,
}

fn summarise(
    plan: &Plan,
    configs: &[Config],
    self_check: &SelfCheck,
    (cold_raw, cold_mesh): (&[f64], &[f64]),
    otel: &OtelExport,
    memory: &serde_json::Value,
) {
    println!();
    println!(
        "End-to-end, {} mode: medians over {} interleaved rounds; latency in µs; 1 KiB bodies; HTTP/1.1 ({CONCURRENCY} connections) and gRPC over h2c (one connection), {CONCURRENCY} workers at saturation",
        plan.name, plan.rounds
    );
    let rates: Vec<String> = plan
        .rates
        .iter()
        .map(|r| format!("{:.0}/s p50/p99/p99.9", r))
        .collect();
    println!(
        "{:<10} {:>22} {:>26} {:>26} {:>10} {:>9} {:>9} {:>9} {:>8}",
        "config",
        "sequential p50/p99/p99.9",
        rates[0],
        rates[1],
        "sat req/s",
        "cli µs/rq",
        "srv µs/rq",
        "side µs/rq",
        "errors"
    );
    let fmt3 = |rounds: &[Round], f: &dyn Fn(&Round) -> Percentiles| {
        format!(
            "{:.0}/{:.0}/{:.0}",
            median_of(rounds, |r| f(r).p50_us),
            median_of(rounds, |r| f(r).p99_us),
            median_of(rounds, |r| f(r).p999_us)
        )
    };
    let mut per_config = serde_json::Map::new();
    for config in configs {
        let r = &config.rounds;
        let has_sidecars = config.procs.iter().any(|p| p.name == "nginx");
        let sidecar_cpu = median_of(r, |r| {
            r.cpu_us_per_request("nginx") + r.cpu_us_per_request("haproxy")
        });
        let sidecar_cell = if has_sidecars {
            format!("{sidecar_cpu:.1}")
        } else {
            "-".to_string()
        };
        println!(
            "{:<10} {:>22} {:>26} {:>26} {:>10.0} {:>9.1} {:>9.1} {:>9} {:>8}",
            config.name,
            fmt3(r, &|r| r.sequential),
            fmt3(r, &|r| r.open[0].latency),
            fmt3(r, &|r| r.open[1].latency),
            median_of(r, |r| r.saturation.throughput),
            median_of(r, |r| r.cpu_us_per_request("client")),
            median_of(r, |r| r.cpu_us_per_request("server")),
            sidecar_cell,
            r.iter().map(Round::errors).sum::<u64>(),
        );
        let mut rss = serde_json::Map::new();
        for name in ["client", "server", "nginx", "haproxy"] {
            let kib = median_of(r, |r| r.peak_rss_kib(name) as f64);
            if kib > 0.0 {
                rss.insert(name.into(), json!(kib));
            }
        }
        per_config.insert(
            config.name.into(),
            json!({
                "seq_p50_us": round3(median_of(r, |r| r.sequential.p50_us)),
                "seq_p99_us": round3(median_of(r, |r| r.sequential.p99_us)),
                "seq_p999_us": round3(median_of(r, |r| r.sequential.p999_us)),
                "seq_switches_per_request": {
                    "client": round3(median_of(r, |r| r.sequential_switches[0])),
                    "server": round3(median_of(r, |r| r.sequential_switches[1])),
                },
                "open": plan.rates.iter().enumerate().map(|(i, rate)| json!({
                    "rate": rate,
                    "p50_us": round3(median_of(r, |r| r.open[i].latency.p50_us)),
                    "p99_us": round3(median_of(r, |r| r.open[i].latency.p99_us)),
                    "p999_us": round3(median_of(r, |r| r.open[i].latency.p999_us)),
                    "generator_lag_p99_us": round3(median_of(r, |r| r.open[i].lag.p99_us)),
                })).collect::<Vec<_>>(),
                "throughput": round3(median_of(r, |r| r.saturation.throughput)),
                "cpu_us_per_request": {
                    "client": round3(median_of(r, |r| r.cpu_us_per_request("client"))),
                    "server": round3(median_of(r, |r| r.cpu_us_per_request("server"))),
                    "sidecars": round3(sidecar_cpu),
                },
                "peak_rss_kib": rss,
                "errors": r.iter().map(Round::errors).sum::<u64>(),
            }),
        );
    }

    // Counted, so comparable on a busy machine: a configuration with more
    // hand-offs per round trip waits for more wake-ups, whatever its code.
    let switches: Vec<String> = configs
        .iter()
        .map(|c| {
            let r = &c.rounds;
            format!(
                "{} {:.1}/{:.1}",
                c.name,
                median_of(r, |r| r.sequential_switches[0]),
                median_of(r, |r| r.sequential_switches[1])
            )
        })
        .collect();
    println!(
        "context switches per sequential request, client/server: {}",
        switches.join(", ")
    );
    let (raw, raw2, mesh, sidecar) = (
        find(configs, "raw"),
        find(configs, "raw2"),
        find(configs, "mesh"),
        find(configs, "sidecar"),
    );
    let tput = |r: &Round| r.saturation.throughput;
    let raw_vs_raw = paired_median(raw2, raw, |a, b| tput(a) / tput(b));
    let mesh_vs_raw = paired_median(mesh, raw, |a, b| tput(a) / tput(b));
    let mesh_vs_sidecar = paired_median(mesh, sidecar, |a, b| tput(a) / tput(b));
    // Throughput on two shared cores also depends on how the scheduler spreads
    // two to four busy processes over them, which varies between runs far more
    // for the four-process sidecar path than for the others. The CPU all of a
    // path's processes spend per request does not: it is the work itself.
    let cpu = |r: &Round| r.path_cpu_us_per_request();
    let mesh_vs_raw_cpu = paired_median(mesh, raw, |a, b| cpu(a) / cpu(b));
    let sidecar_vs_mesh_cpu = paired_median(sidecar, mesh, |a, b| cpu(a) / cpu(b));
    let added = |x: &[Round], f: fn(&Percentiles) -> f64| {
        paired_median(x, raw, |a, b| f(&a.sequential) - f(&b.sequential))
    };
    let mesh_p50 = added(mesh, |p| p.p50_us);
    let mesh_p99 = added(mesh, |p| p.p99_us);
    let raw2_p50 = added(raw2, |p| p.p50_us);
    let sidecar_p50 = added(sidecar, |p| p.p50_us);
    let cold_ratio = median(cold_mesh.to_vec()) / median(cold_raw.to_vec());
    let mesh_otel = find(configs, "mesh+otel");
    let otel_vs_mesh = paired_median(mesh_otel, mesh, |a, b| tput(a) / tput(b));
    let otel_added_p50 = paired_median(mesh_otel, mesh, |a, b| {
        a.sequential.p50_us - b.sequential.p50_us
    });
    let spans_per_request = otel.spans as f64 / otel.requests.max(1) as f64;
    let (grpc, grpc_mesh) = (find(configs, "grpc"), find(configs, "grpc-mesh"));
    let grpc_vs_channel = paired_median(grpc_mesh, grpc, |a, b| tput(a) / tput(b));
    let grpc_added_p50 = paired_median(grpc_mesh, grpc, |a, b| {
        a.sequential.p50_us - b.sequential.p50_us
    });
    let lag_p99 = configs
        .iter()
        .flat_map(|c| c.rounds.iter())
        .flat_map(|r| r.open.iter().map(|o| o.lag.p99_us))
        .fold(0.0, f64::max);
    let check = median(self_check.generator.clone());
    let idle_wake_up = median(self_check.idle_wake_up.clone());

    println!();
    println!(
        "raw2/raw throughput {raw_vs_raw:.3} (noise control); raw2 − raw p50 {raw2_p50:+.1} µs"
    );
    println!("mesh/raw throughput {mesh_vs_raw:.3} (target ≥ 0.90); mesh − raw p50 {mesh_p50:+.1} µs (target ≤ 5), p99 {mesh_p99:+.1} µs");
    // A ratio over the mesh's added latency means something only when the mesh
    // measurably adds some: at or below zero (noise on a disturbed run) there is
    // no ratio to report, rather than a division by (almost) nothing.
    let sidecar_over_mesh = (mesh_p50 > 0.0).then(|| sidecar_p50 / mesh_p50);
    let times_mesh = match sidecar_over_mesh {
        Some(ratio) => format!("{ratio:.1}× the mesh's"),
        None => "the mesh's added p50 is not above zero: no ratio".to_string(),
    };
    println!(
        "mesh/sidecar throughput {mesh_vs_sidecar:.2} (target ≥ 3); sidecar − raw p50 {sidecar_p50:+.1} µs ({times_mesh}; target ≥ 4)"
    );
    println!(
        "CPU per request at saturation, all processes on the path: mesh/raw {mesh_vs_raw_cpu:.3}, sidecar/mesh {sidecar_vs_mesh_cpu:.2}"
    );
    println!(
        "gRPC (h2c, same tonic server): MeshChannel/Channel throughput {grpc_vs_channel:.3}; MeshChannel − Channel p50 {grpc_added_p50:+.1} µs"
    );
    println!(
        "mesh+otel ({OTEL_SAMPLE_RATIO} of traces sampled, OTLP/gRPC to a local receiver): mesh+otel/mesh throughput {otel_vs_mesh:.3}; mesh+otel − mesh p50 {otel_added_p50:+.1} µs; {} spans in {} exports for {} requests ({spans_per_request:.3} per request)",
        otel.spans, otel.exports, otel.requests
    );
    println!(
        "cold start (spawn → first mTLS response): raw {:.1} ms, mesh {:.1} ms, mesh/raw {cold_ratio:.3} (target ≤ 1.2)",
        median(cold_raw.to_vec()),
        median(cold_mesh.to_vec())
    );
    println!(
        "memory: {} B per known endpoint (10,000 endpoints, counting allocator; target ≤ 1024), {} B for a client with one endpoint",
        memory["bytes_per_endpoint"], memory["base_bytes"]
    );
    println!(
        "generator: worst release lag p99 {lag_p99:.1} µs; at {:.0}/s its p50 is {check:.2}× that of one-at-a-time requests with the same idle gaps (should be ≈ 1); those are {idle_wake_up:.2}× back-to-back requests (the machine's wake-up from idle)",
        plan.check_rate
    );
    println!("mesh: Mesh::new from MESH_ variables (MESH_TLS_*: SPIFFE mTLS), the default outbound stack (route, call telemetry, deadline, retry budget and replay, attempt telemetry, P2C PeakEWMA with outlier detection; breaker and limits are off by default), metrics recorded by the Prometheus recorder, trace context propagated, no span exporter → Mesh::serve_inbound (server telemetry, deadline) on InboundServer; mesh+otel: the same in a process of its own, with {OTEL_SAMPLE_RATIO} of traces sampled (parent-based trace-id ratio) and exported by the batch span processor over OTLP/gRPC to a receiver in the bench process");

    let summary = json!({
        "mode": plan.name,
        "rounds": plan.rounds,
        "raw_vs_raw_throughput": round3(raw_vs_raw),
        "mesh_vs_raw_throughput": round3(mesh_vs_raw),
        "mesh_added_p50_us": round3(mesh_p50),
        "mesh_added_p99_us": round3(mesh_p99),
        "raw2_added_p50_us": round3(raw2_p50),
        "mesh_vs_sidecar_throughput": round3(mesh_vs_sidecar),
        "mesh_vs_raw_path_cpu_per_request": round3(mesh_vs_raw_cpu),
        "sidecar_vs_mesh_path_cpu_per_request": round3(sidecar_vs_mesh_cpu),
        "grpc_mesh_vs_channel_throughput": round3(grpc_vs_channel),
        "grpc_mesh_added_p50_us": round3(grpc_added_p50),
        "sidecar_added_p50_us": round3(sidecar_p50),
        "sidecar_added_over_mesh_added_p50": sidecar_over_mesh.map(round3),
        "mesh_otel_vs_mesh_throughput": round3(otel_vs_mesh),
        "mesh_otel_added_p50_us": round3(otel_added_p50),
        "mesh_otel_export": {
            "sample_ratio": OTEL_SAMPLE_RATIO.parse::<f64>().unwrap_or(f64::NAN),
            "requests": otel.requests,
            "spans": otel.spans,
            "exports": otel.exports,
            "spans_per_request": round3(spans_per_request),
        },
        "cold_start_mesh_vs_raw": round3(cold_ratio),
        "cold_start_raw_ms": round3(median(cold_raw.to_vec())),
        "cold_start_mesh_ms": round3(median(cold_mesh.to_vec())),
        "bytes_per_endpoint": memory["bytes_per_endpoint"],
        "mesh_base_bytes": memory["base_bytes"],
        "generator_lag_p99_us_max": round3(lag_p99),
        "generator_low_rate_p50_over_gapped_sequential_p50": round3(check),
        "idle_gapped_over_back_to_back_p50": round3(idle_wake_up),
        "mesh_transport": "mtls-spiffe",
        "mesh_inbound": "Mesh::serve_inbound",
        "mesh_stack": "default",
        "configs": per_config,
    });
    println!("{summary}");
}
