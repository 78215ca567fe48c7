//! gRPC call metrics end to end, read the way an operator reads them: a real
//! Prometheus scrapes the mesh's `MESH_METRICS_ADDR`. `rpc.client.call.duration`
//! comes from calls through `MeshChannel` to Google's gRPC (a Python grpcio
//! server); `rpc.server.call.duration` from our tonic server behind
//! `GrpcServerTelemetryLayer` on the mesh's mTLS listener, called by a Python
//! grpcio client. Both with an OK and a non-OK status code; `promtool check
//! metrics` stays clean with the `rpc_*` families in the exposition.
//!
//! One test per binary: the `metrics` recorder is process-global.
#![allow(clippy::disallowed_types)]

use std::io::Write;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::Stream;
use mesh_core::config::MeshConfig;
use mesh_grpc::telemetry::GrpcServerTelemetryLayer;
use mesh_grpc::GrpcChannelExt;
use mesh_http::server::InboundServer;
use mesh_http::MeshClient;
use mesh_tests::greeter::greeter_client::GreeterClient;
use mesh_tests::greeter::greeter_server::{Greeter, GreeterServer};
use mesh_tests::greeter::{HelloReply, HelloRequest};
use mesh_tests::pki::{Pki, SERVER_DNS_NAME};
use mesh_tests::prometheus::{http_get, tool, Prometheus};
use mesh_tests::python::{run_python_client, PythonGreeter};
use tonic::{Code, Request, Response, Status};
use tower::Layer;

const SAY_HELLO: &str = "mesh.test.greeter.Greeter/SayHello";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_call_durations_reach_prometheus_with_their_status_codes() {
    let env = [
        ("MESH_SERVICE_NAME", "frontend"),
        ("MESH_METRICS_ADDR", "127.0.0.1:0"),
    ];
    let config = MeshConfig::from_source(&env).expect("valid configuration");
    let telemetry = mesh_core::telemetry::builder(&config)
        .install_subscriber(false)
        .init_from(&env)
        .expect("telemetry starts");
    let metrics_addr = telemetry.metrics_addr().expect("listening");

    // Client side: MeshChannel → Python grpcio server.
    let python = PythonGreeter::start(None).await;
    let python_addr = python.addr.to_string();
    let client_env = [
        ("MESH_SERVICE_GREETER_ENDPOINTS", python_addr.as_str()),
        ("MESH_SERVICE_GREETER_PROTOCOL", "grpc"),
    ];
    let mesh = MeshClient::new(MeshConfig::from_source(&client_env).expect("valid configuration"))
        .expect("client starts");
    let mut greeter = GreeterClient::new(mesh.grpc_channel("greeter").unwrap());
    for name in ["a", "b"] {
        greeter.say_hello(hello(name)).await.expect("OK call");
    }
    let status = greeter
        .say_hello(HelloRequest {
            fail_with: Code::NotFound as u32,
            ..hello("missing")
        })
        .await
        .expect_err("NOT_FOUND");
    assert_eq!(status.code(), Code::NotFound);

    // Server side: Python grpcio client → our tonic server on the mTLS listener.
    let pki = Pki::new("example.org");
    let (_files, identity) =
        pki.server_source("greeter", "spiffe://example.org/ns/prod/sa/greeter");
    let client_files = pki.client("web", "spiffe://example.org/ns/prod/sa/web");
    let (_reporter, health) = tonic_health::server::health_reporter();
    let router = tonic::service::Routes::new(GreeterServer::new(TonicGreeter))
        .add_service(health)
        .into_axum_router();
    let inbound = InboundServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        mesh_core::tls::server_config(&identity, []),
    )
    .await
    .expect("bind");
    let inbound_addr = inbound.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(inbound.serve(
        GrpcServerTelemetryLayer::new().layer(router),
        async move {
            let _ = stopped.await;
        },
    ));
    let result = run_python_client(inbound_addr, &client_files, SERVER_DNS_NAME).await;
    assert_eq!(result["unary"]["code"], "OK", "{result}");
    assert_eq!(result["failing"]["code"], "FAILED_PRECONDITION", "{result}");

    // Our exposition, as Prometheus will read it: promtool finds nothing.
    let (status, exposition) = http_get(metrics_addr, "/metrics").await.expect("scrape");
    assert_eq!(status, 200);
    for family in [
        "# TYPE rpc_client_call_duration_seconds histogram",
        "# TYPE rpc_server_call_duration_seconds histogram",
        "# HELP rpc_client_call_duration_seconds",
    ] {
        assert!(
            exposition.contains(family),
            "no `{family}` in:\n{exposition}"
        );
    }
    promtool_check_metrics(&exposition);

    let prometheus = Prometheus::start(&[metrics_addr]).await;
    let count = |side: &str, code: &str| {
        format!(
            r#"rpc_{side}_call_duration_seconds_count{{job="mesh",rpc_system_name="grpc",rpc_method="{SAY_HELLO}",rpc_response_status_code="{code}"}}"#
        )
    };
    let ok = prometheus
        .query_until_found(&count("client", "OK"), Duration::from_secs(60))
        .await;
    assert_eq!(ok.len(), 1, "{ok:?}");
    assert_eq!(ok[0]["value"][1], "2", "both OK calls, once each");
    assert_eq!(ok[0]["metric"]["server_address"], "greeter");
    let not_found = prometheus.query(&count("client", "NOT_FOUND")).await;
    assert_eq!(not_found.len(), 1, "{not_found:?}");
    assert_eq!(not_found[0]["value"][1], "1", "not retried: one call");

    let ok = prometheus.query(&count("server", "OK")).await;
    assert_eq!(ok.len(), 1, "{ok:?}");
    assert_eq!(
        ok[0]["value"][1], "1",
        "the Python client's one OK SayHello"
    );
    let failed = prometheus
        .query(&count("server", "FAILED_PRECONDITION"))
        .await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["value"][1], "1");
    let health = prometheus
        .query(r#"rpc_server_call_duration_seconds_count{job="mesh",rpc_method="grpc.health.v1.Health/Check",rpc_response_status_code="OK"}"#)
        .await;
    assert_eq!(health.len(), 1, "{health:?}");

    drop(stop);
    served.await.unwrap();
    drop(telemetry);
}

fn promtool_check_metrics(exposition: &str) {
    let mut promtool = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && complaints.trim().is_empty(),
        "promtool check metrics complained:\n{complaints}\n--- exposition ---\n{exposition}"
    );
}

fn hello(name: &str) -> HelloRequest {
    HelloRequest {
        name: name.to_string(),
        ..Default::default()
    }
}

/// A greeter that fails with `fail_with` when it is set, sleeps `delay_ms`
/// first, and streams `count` replies.
#[derive(Debug)]
struct TonicGreeter;

type ReplyStream = Pin<Box<dyn Stream<Item = Result<HelloReply, Status>> + Send>>;

#[tonic::async_trait]
impl Greeter for TonicGreeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let request = request.into_inner();
        tokio::time::sleep(Duration::from_millis(request.delay_ms.into())).await;
        if request.fail_with != 0 {
            return Err(Status::new(
                Code::from_i32(request.fail_with as i32),
                format!("failing {} call 2 on purpose", request.name),
            ));
        }
        Ok(Response::new(HelloReply {
            message: format!("hello {}", request.name),
            ..Default::default()
        }))
    }

    type SayHelloStreamStream = ReplyStream;

    async fn say_hello_stream(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        let request = request.into_inner();
        let replies: Vec<Result<HelloReply, Status>> = (0..request.count)
            .map(|i| {
                Ok(HelloReply {
                    message: format!("hello {} {i}", request.name),
                    ..Default::default()
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures_util::stream::iter(replies))))
    }
}
