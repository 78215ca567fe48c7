//! gRPC health end to end: `grpc.health.v1` checks against Google's gRPC (Python
//! grpcio with grpcio-health-checking) driving endpoint rotation, counted at the
//! servers; and our tonic server's health answering NOT_SERVING once its
//! shutdown begins.

use std::collections::BTreeMap;
use std::time::Duration;

use mesh_core::balance::BalancerStats;
use mesh_core::config::MeshConfig;
use mesh_grpc::health::{health_service, GrpcHealthProbe};
use mesh_grpc::GrpcChannelExt;
use mesh_http::server::{InboundOptions, InboundServer};
use mesh_http::MeshClient;
use mesh_tests::greeter::greeter_client::GreeterClient;
use mesh_tests::greeter::greeter_server::{Greeter, GreeterServer};
use mesh_tests::greeter::{HelloReply, HelloRequest};
use mesh_tests::pki::Pki;
use mesh_tests::python::PythonHealthServer;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const GREETER: &str = "mesh.test.greeter.Greeter";

/// Waits (up to a generous 30 s) until `done` holds for the service's endpoint
/// counts; there is no event to await from outside the client.
async fn until(client: &MeshClient, what: &str, done: impl Fn(&BalancerStats) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let stats = client.endpoint_stats("greeter").expect("configured");
        if done(&stats) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still {stats:?} after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Calls each server has served so far.
async fn calls(servers: &mut [PythonHealthServer]) -> Vec<u64> {
    let mut counts = Vec::new();
    for server in servers {
        counts.push(
            server.command("count").await["calls"]
                .as_u64()
                .expect("calls"),
        );
    }
    counts
}

/// Makes `n` calls, all of which must succeed; returns the calls each server
/// served meanwhile.
async fn served_by(client: &MeshClient, servers: &mut [PythonHealthServer], n: usize) -> Vec<u64> {
    let before = calls(servers).await;
    let mut greeter = GreeterClient::new(client.grpc_channel("greeter").expect("channel"));
    for _ in 0..n {
        greeter
            .say_hello(HelloRequest {
                name: "health".into(),
                ..HelloRequest::default()
            })
            .await
            .expect("call succeeds");
    }
    let after = calls(servers).await;
    after.iter().zip(&before).map(|(a, b)| a - b).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_server_turning_not_serving_leaves_rotation_and_returns_when_serving() {
    let mut servers = vec![
        PythonHealthServer::start(GREETER).await,
        PythonHealthServer::start(GREETER).await,
        PythonHealthServer::start(GREETER).await,
    ];
    let endpoints: Vec<String> = servers.iter().map(|s| s.addr.to_string()).collect();
    let env: BTreeMap<String, String> = [
        ("MESH_SERVICE_GREETER_ENDPOINTS", endpoints.join(",")),
        ("MESH_SERVICE_GREETER_PROTOCOL", "grpc".into()),
        ("MESH_SERVICE_GREETER_BALANCER", "round-robin".into()),
        ("MESH_SERVICE_GREETER_OUTLIER_DETECTION", "off".into()),
        // The named service, not the whole server: the server's overall status
        // stays SERVING, so only a probe that sends the name sees the change.
        (
            "MESH_SERVICE_GREETER_HEALTH_CHECK_GRPC_SERVICE",
            GREETER.into(),
        ),
        ("MESH_SERVICE_GREETER_HEALTH_CHECK_INTERVAL", "250ms".into()),
        ("MESH_SERVICE_GREETER_HEALTH_CHECK_TIMEOUT", "250ms".into()),
        (
            "MESH_SERVICE_GREETER_HEALTH_CHECK_HEALTHY_THRESHOLD",
            "2".into(),
        ),
        (
            "MESH_SERVICE_GREETER_HEALTH_CHECK_UNHEALTHY_THRESHOLD",
            "2".into(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let client = MeshClient::builder(MeshConfig::from_source(&env).expect("valid"))
        .grpc_health_probe(GrpcHealthProbe)
        .build()
        .expect("client starts");
    until(&client, "every server passes its first check", |s| {
        s.ready == 3
    })
    .await;
    let before = served_by(&client, &mut servers, 60).await;
    assert!(before.iter().all(|&n| n > 0), "all three serve: {before:?}");

    assert_eq!(
        servers[1].command("not_serving").await["status"],
        "not_serving"
    );
    until(&client, "the NOT_SERVING server leaves rotation", |s| {
        s.unhealthy == 1 && s.ready == 2
    })
    .await;
    let during = served_by(&client, &mut servers, 60).await;
    assert_eq!(during[1], 0, "the NOT_SERVING server got calls: {during:?}");
    assert_eq!(during[0] + during[2], 60);

    assert_eq!(servers[1].command("serving").await["status"], "serving");
    until(&client, "the SERVING server returns", |s| {
        s.unhealthy == 0 && s.ready == 3
    })
    .await;
    let after = served_by(&client, &mut servers, 60).await;
    assert!(
        after[1] > 0,
        "the server back to SERVING got no calls: {after:?}"
    );
}

#[derive(Debug, Default)]
struct Hello;

#[tonic::async_trait]
impl Greeter for Hello {
    async fn say_hello(
        &self,
        request: tonic::Request<HelloRequest>,
    ) -> Result<tonic::Response<HelloReply>, tonic::Status> {
        Ok(tonic::Response::new(HelloReply {
            message: format!("hello {}", request.into_inner().name),
            ..HelloReply::default()
        }))
    }

    type SayHelloStreamStream = futures_util::stream::Empty<Result<HelloReply, tonic::Status>>;

    async fn say_hello_stream(
        &self,
        _request: tonic::Request<HelloRequest>,
    ) -> Result<tonic::Response<Self::SayHelloStreamStream>, tonic::Status> {
        Ok(tonic::Response::new(futures_util::stream::empty()))
    }
}

#[tokio::test]
async fn our_tonic_server_health_answers_not_serving_once_shutdown_begins() {
    const SERVER_ID: &str = "spiffe://example.org/ns/prod/sa/greeter";
    let pki = Pki::new("example.org");
    let (_files, identity) = pki.server_source("greeter", SERVER_ID);
    let client_files = pki.client("web", "spiffe://example.org/ns/prod/sa/web");
    let inbound = InboundServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        mesh_core::tls::server_config(&identity, []),
    )
    .await
    .expect("bind")
    // Keeps accepting (and answering) for a wide minute after shutdown begins.
    .with_options(InboundOptions::default().shutdown_delay(Duration::from_secs(60)));
    let addr = inbound.local_addr().unwrap();
    let readiness = inbound.readiness();
    let (_reporter, health) = health_service(readiness.clone());
    let router = tonic::service::Routes::new(GreeterServer::new(Hello))
        .add_service(health)
        .into_axum_router();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(inbound.serve(router, async move {
        let _ = stopped.await;
    }));

    let env: BTreeMap<String, String> = [
        ("MESH_SERVICE_GREETER_ENDPOINTS", addr.to_string()),
        ("MESH_SERVICE_GREETER_PROTOCOL", "grpc".into()),
        ("MESH_SERVICE_GREETER_IDENTITY", SERVER_ID.into()),
        ("MESH_TLS_CERT", client_files.cert.display().to_string()),
        ("MESH_TLS_KEY", client_files.key.display().to_string()),
        ("MESH_TLS_BUNDLE", client_files.bundle.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let client = MeshClient::new(MeshConfig::from_source(&env).expect("valid")).expect("client");
    let mut health = HealthClient::new(client.grpc_channel("greeter").expect("channel"));
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };

    readiness.wait_for(true).await;
    let answer = health.check(check("")).await.expect("Check answers");
    assert_eq!(answer.into_inner().status(), ServingStatus::Serving);

    stop.send(()).expect("server running");
    readiness.wait_for(false).await;
    let answer = health
        .check(check(""))
        .await
        .expect("Check answers while draining");
    assert_eq!(answer.into_inner().status(), ServingStatus::NotServing);
    served.abort();
}
