//! The grpc-health example as a user runs it: the built binary against Google's
//! gRPC health service (Python grpcio-health-checking) and against our tonic
//! server over mTLS. Exit 0 when SERVING, 1 when not serving or unreachable, 2 on
//! a usage or configuration error, each saying why.
//!
//! Runs the example binary that `cargo test --workspace` builds alongside the tests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Output;

use mesh_core::config::MeshConfig;
use mesh_grpc::health::health_service;
use mesh_http::Mesh;
use mesh_tests::pki::Pki;
use mesh_tests::python::PythonHealthServer;
use tokio::process::Command;

const GREETER: &str = "mesh.test.greeter.Greeter";

fn grpc_health_binary() -> PathBuf {
    // target/<profile>/deps/<this test> → target/<profile>/examples/grpc-health
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let binary = profile_dir.join("examples").join("grpc-health");
    let build = "run `cargo build --workspace --examples` first (scripts/test.sh does)";
    let built = std::fs::metadata(&binary)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} is missing: {build}", binary.display()));
    // A binary older than any source it was built from (as cargo's dep-info file
    // beside it lists them) would test old behaviour.
    let dep_info = std::fs::read_to_string(binary.with_extension("d")).unwrap_or_default();
    let sources = dep_info.split_once(": ").map_or("", |(_, deps)| deps);
    for source in sources.split_whitespace() {
        if let Ok(modified) = std::fs::metadata(source).and_then(|m| m.modified()) {
            assert!(
                modified <= built,
                "{} is older than {source}: {build}",
                binary.display()
            );
        }
    }
    binary
}

/// Runs `grpc-health ARGS` with only `vars` (and `PATH`) in its environment;
/// returns its exit code, stdout and stderr.
async fn run(args: &[&str], vars: &[(&str, String)]) -> (i32, String, String) {
    let mut command = Command::new(grpc_health_binary());
    command.env_clear().args(args);
    if let Ok(path) = std::env::var("PATH") {
        command.env("PATH", path);
    }
    command.envs(vars.iter().map(|(k, v)| (k, v)));
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().await.expect("grpc-health runs");
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    assert!(
        !stderr.contains("panicked"),
        "grpc-health panicked: {stderr}"
    );
    let code = status.code().expect("exited, not killed");
    (code, stdout, stderr)
}

fn endpoints(addr: std::net::SocketAddr) -> Vec<(&'static str, String)> {
    vec![("MESH_SERVICE_GREETER_ENDPOINTS", addr.to_string())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_exits_0_for_serving_and_1_for_not_serving_against_grpcio() {
    let mut server = PythonHealthServer::start(GREETER).await;
    let vars = endpoints(server.addr);

    let (code, stdout, stderr) = run(&["greeter"], &vars).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stdout.trim(), "greeter: the server is SERVING");

    let (code, stdout, _) = run(&["greeter", "--service", GREETER], &vars).await;
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(server.command("not_serving").await["status"], "not_serving");
    let (code, stdout, _) = run(&["--service", GREETER, "greeter"], &vars).await;
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(
        stdout.trim(),
        format!("greeter: service `{GREETER}` is NOT_SERVING")
    );
    // The whole server is still SERVING: the check asked about the one service.
    assert_eq!(run(&["greeter"], &vars).await.0, 0);

    let (code, stdout, _) = run(&["greeter", "--service", "nobody"], &vars).await;
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("NOT_FOUND"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_exits_1_when_nothing_answers() {
    // A port nobody listens on any more: connections are refused.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (code, stdout, stderr) = run(&["greeter"], &endpoints(addr)).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.contains("did not answer"), "{stdout}");
    assert!(stdout.contains("Unavailable"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_exits_2_on_bad_usage_or_configuration_naming_the_problem() {
    let addr: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    type Case = (
        &'static [&'static str],
        Vec<(&'static str, String)>,
        &'static str,
    );
    let cases: [Case; 6] = [
        (&[], endpoints(addr), "which mesh service"),
        (
            &["greeter", "--service"],
            endpoints(addr),
            "--service needs a NAME",
        ),
        (
            &["greeter", "--verbose"],
            endpoints(addr),
            "unknown option --verbose",
        ),
        (
            &["greeter", "other"],
            endpoints(addr),
            "unexpected argument",
        ),
        (&["other"], endpoints(addr), "MESH_SERVICE_OTHER_ENDPOINTS"),
        (
            &["greeter"],
            vec![
                ("MESH_SERVICE_GREETER_ENDPOINTS", addr.to_string()),
                ("MESH_SERVICE_GREETER_TIMEOUT", "soon".into()),
            ],
            "MESH_SERVICE_GREETER_TIMEOUT",
        ),
    ];
    for (args, vars, says) in cases {
        let (code, stdout, stderr) = run(args, &vars).await;
        assert_eq!(code, 2, "{args:?}: {stdout}{stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_speaks_mtls_when_an_identity_is_configured() {
    let pki = Pki::new("example.org");
    let files = pki.server("greeter", "spiffe://example.org/ns/prod/sa/greeter");
    let env: BTreeMap<String, String> = [
        ("MESH_TLS_CERT", files.cert.display().to_string()),
        ("MESH_TLS_KEY", files.key.display().to_string()),
        ("MESH_TLS_BUNDLE", files.bundle.display().to_string()),
        ("MESH_INBOUND_ADDR", "127.0.0.1:0".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mesh = Mesh::new(MeshConfig::from_source(&env).expect("valid")).expect("mesh starts");
    let readiness = mesh.readiness();
    let (_reporter, health) = health_service(readiness.clone());
    let router = tonic::service::Routes::new(health).into_axum_router();
    let inbound = mesh.inbound().await.expect("bind");
    let addr = inbound.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(async move {
        mesh.serve_inbound(inbound, router, async {
            let _ = stopped.await;
        })
        .await;
    });

    // The health service says NOT_SERVING until the server serves.
    readiness.wait_for(true).await;
    let client = pki.client("probe", "spiffe://example.org/ns/ops/sa/probe");
    let mut vars = endpoints(addr);
    vars.extend([
        ("MESH_TLS_CERT", client.cert.display().to_string()),
        ("MESH_TLS_KEY", client.key.display().to_string()),
        ("MESH_TLS_BUNDLE", client.bundle.display().to_string()),
    ]);
    let (code, stdout, stderr) = run(&["greeter"], &vars).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stdout.trim(), "greeter: the server is SERVING");
    // Without an identity the probe speaks plaintext, which the strict mTLS
    // listener refuses.
    let (code, stdout, _) = run(&["greeter"], &endpoints(addr)).await;
    assert_eq!(code, 1, "{stdout}");

    drop(stop);
    served.await.unwrap();
}
