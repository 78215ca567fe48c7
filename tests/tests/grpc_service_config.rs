//! A gRPC service config (`MESH_SERVICE_<NAME>_GRPC_SERVICE_CONFIG`, or the file's
//! `grpc_service_config`) drives retries and timeouts of calls to Google's gRPC
//! (a Python grpcio greeter) through `MeshChannel`; the server counts the calls.
#![allow(clippy::disallowed_types)]

use std::collections::BTreeMap;

use mesh_core::config::MeshConfig;
use mesh_core::extensions::ServedBy;
use mesh_grpc::GrpcChannelExt;
use mesh_http::MeshClient;
use mesh_tests::greeter::greeter_client::GreeterClient;
use mesh_tests::greeter::HelloRequest;
use mesh_tests::python::PythonGreeter;
use tonic::Code;

const VARIABLE: &str = "MESH_SERVICE_GREETER_GRPC_SERVICE_CONFIG";

/// SayHello: 300 ms, retried on RESOURCE_EXHAUSTED only (not UNAVAILABLE).
const SERVICE_CONFIG: &str = r#"{
  "methodConfig": [{
    "name": [{"service": "mesh.test.greeter.Greeter", "method": "SayHello"}],
    "timeout": "0.3s",
    "retryPolicy": {
      "maxAttempts": 4,
      "initialBackoff": "0.01s",
      "maxBackoff": "0.05s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["RESOURCE_EXHAUSTED"]
    }
  }]
}"#;

fn env(addr: std::net::SocketAddr, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = [
        ("MESH_SERVICE_GREETER_ENDPOINTS", addr.to_string()),
        ("MESH_SERVICE_GREETER_PROTOCOL", "grpc".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

fn client(env: &BTreeMap<String, String>) -> MeshClient {
    MeshClient::new(MeshConfig::from_source(env).expect("valid configuration"))
        .expect("client starts")
}

fn hello(name: &str) -> HelloRequest {
    HelloRequest {
        name: name.to_string(),
        ..Default::default()
    }
}

fn calls_trailer(metadata: &tonic::metadata::MetadataMap) -> u32 {
    metadata
        .get("x-calls")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("the server's x-calls trailer")
}

async fn check_retries_follow_the_service_config(mesh: MeshClient) {
    let mut greeter = GreeterClient::new(mesh.grpc_channel("greeter").unwrap());

    // Listed: two RESOURCE_EXHAUSTED answers, then the third call answers.
    let reply = greeter
        .say_hello(HelloRequest {
            fail_with: Code::ResourceExhausted as u32,
            fail_times: 2,
            ..hello("exhausted")
        })
        .await
        .expect("retried to success");
    assert_eq!(reply.get_ref().calls, 3);
    assert_eq!(mesh.retry_stats("greeter").unwrap().retries, 2);

    // The service config's codes replace the mesh's default UNAVAILABLE.
    let status = greeter
        .say_hello(HelloRequest {
            fail_with: Code::Unavailable as u32,
            fail_times: 1,
            ..hello("unavailable")
        })
        .await
        .expect_err("UNAVAILABLE is not listed");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(calls_trailer(status.metadata()), 1, "sent once");
    assert_eq!(mesh.retry_stats("greeter").unwrap().retries, 2);

    // A method the config does not name keeps the service's policy: there
    // RESOURCE_EXHAUSTED is not retried (a trailers-only answer, so the call had
    // not committed: only the policy stops the retry).
    let status = greeter
        .say_hello_stream(HelloRequest {
            fail_with: Code::ResourceExhausted as u32,
            ..hello("stream")
        })
        .await
        .expect_err("RESOURCE_EXHAUSTED");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(calls_trailer(status.metadata()), 1);
}

#[tokio::test]
async fn listed_codes_are_retried_and_others_are_not() {
    let server = PythonGreeter::start(None).await;
    let mesh = client(&env(server.addr, &[(VARIABLE, SERVICE_CONFIG)]));
    check_retries_follow_the_service_config(mesh).await;
}

#[tokio::test]
async fn the_config_file_takes_the_service_config_as_a_table() {
    let server = PythonGreeter::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.json");
    let doc: serde_json::Value = serde_json::from_str(SERVICE_CONFIG).unwrap();
    let file = serde_json::json!({"services": {"greeter": {"grpc_service_config": doc}}});
    std::fs::write(&path, file.to_string()).unwrap();
    let mesh = client(&env(
        server.addr,
        &[("MESH_CONFIG_FILE", path.to_str().unwrap())],
    ));
    check_retries_follow_the_service_config(mesh).await;
}

#[tokio::test]
async fn the_method_timeout_ends_the_call_with_deadline_exceeded() {
    let server = PythonGreeter::start(None).await;
    let mesh = client(&env(
        server.addr,
        &[
            (VARIABLE, SERVICE_CONFIG),
            ("MESH_SERVICE_GREETER_TIMEOUT", "60s"),
        ],
    ));
    let mut greeter = GreeterClient::new(mesh.grpc_channel("greeter").unwrap());

    // The server hears the method's deadline, not the service's 60 s.
    let reply = greeter.say_hello(hello("quick")).await.expect("quick call");
    let told = reply.get_ref().timeout_ms;
    assert!(told > 0 && told <= 300, "grpc-timeout told {told} ms");

    // 300 ms against a 10 s handler: a wide gap.
    let status = greeter
        .say_hello(HelloRequest {
            delay_ms: 10_000,
            ..hello("slow")
        })
        .await
        .expect_err("the method's timeout passes");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
}

#[test]
fn bad_service_configs_are_start_up_errors_naming_the_variable_and_the_field() {
    let retry = |fields: &str| {
        format!(
            r#"{{"methodConfig": [{{"name": [{{"service": "mesh.test.greeter.Greeter"}}],
                "retryPolicy": {{"initialBackoff": "0.1s", "maxBackoff": "1s",
                                 "backoffMultiplier": 2, {fields}}}}}]}}"#
        )
    };
    let addr = "127.0.0.1:1".parse().unwrap();
    for (doc, field) in [
        (r#"{"methodConfig": [}"#.to_string(), "`$`: not valid JSON"),
        (
            retry(r#""maxAttempts": 3, "retryableStatusCodes": ["RESOURCE_EXHAUSTD"]"#),
            "`methodConfig[0].retryPolicy.retryableStatusCodes[0]`",
        ),
        (
            retry(r#""maxAttempts": 1, "retryableStatusCodes": ["UNAVAILABLE"]"#),
            "`methodConfig[0].retryPolicy.maxAttempts`: 1 is below 2",
        ),
    ] {
        let e = MeshConfig::from_source(&env(addr, &[(VARIABLE, &doc)]))
            .expect_err("rejected at start-up");
        println!("{e}");
        assert!(e.names_variable(VARIABLE), "{e}");
        assert!(e.to_string().contains(field), "{field} in {e}");
    }
}

#[tokio::test]
async fn grpc_reply_names_the_endpoint_that_answered() {
    let server = PythonGreeter::start(None).await;
    let mesh = client(&env(server.addr, &[]));
    let mut greeter = GreeterClient::new(mesh.grpc_channel("greeter").unwrap());
    let reply = greeter.say_hello(hello("who")).await.expect("the call");
    // tonic hands callers the response's extensions: the channel puts it there.
    assert_eq!(
        reply.extensions().get::<ServedBy>(),
        Some(&ServedBy(server.addr))
    );
}
