//! gRPC interop with Google's gRPC (Python grpcio): its greeter server behind our
//! `MeshChannel` (plaintext and mTLS), and its client calling our tonic server on
//! the inbound mTLS listener. Status codes, messages, trailers and deadlines must
//! survive both ways; retries follow gRFC A6.
#![allow(clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;
use mesh_core::config::MeshConfig;
use mesh_grpc::GrpcChannelExt;
use mesh_http::server::{InboundServer, PeerIdentity};
use mesh_http::MeshClient;
use mesh_tests::greeter::greeter_client::GreeterClient;
use mesh_tests::greeter::greeter_server::{Greeter, GreeterServer};
use mesh_tests::greeter::{HelloReply, HelloRequest};
use mesh_tests::pki::{Pki, SERVER_DNS_NAME};
use mesh_tests::python::{run_python_client, PythonGreeter};
use tonic::{Code, Request, Response, Status};

const SERVER_ID: &str = "spiffe://example.org/ns/prod/sa/greeter";
const CLIENT_ID: &str = "spiffe://example.org/ns/prod/sa/web";

fn client(addr: std::net::SocketAddr, extra: &[(&str, String)]) -> MeshClient {
    let mut env: BTreeMap<String, String> = [
        ("MESH_SERVICE_GREETER_ENDPOINTS", addr.to_string()),
        ("MESH_SERVICE_GREETER_PROTOCOL", "grpc".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    MeshClient::new(MeshConfig::from_source(&env).expect("valid configuration"))
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

#[tokio::test]
async fn python_greeter_behind_mesh_channel_answers_unary_and_streaming_calls() {
    let server = PythonGreeter::start(None).await;
    let mesh = client(server.addr, &[]);
    let mut greeter = GreeterClient::new(mesh.grpc_channel("greeter").unwrap());

    let reply = greeter.say_hello(hello("unary")).await.expect("unary call");
    assert_eq!(reply.get_ref().message, "hello unary");
    // Trailers of a normal response reach the caller (tonic merges them).
    assert_eq!(calls_trailer(reply.metadata()), 1);

    let mut stream = greeter
        .say_hello_stream(HelloRequest {
            count: 3,
            ..hello("stream")
        })
        .await
        .expect("streaming call")
        .into_inner();
    let mut messages = Vec::new();
    while let Some(reply) = stream.message().await.expect("stream message") {
        messages.push(reply.message);
    }
    assert_eq!(
        messages,
        ["hello stream 0", "hello stream 1", "hello stream 2"]
    );
    assert_eq!(calls_trailer(&stream.trailers().await.unwrap().unwrap()), 1);

    let status = greeter
        .say_hello(HelloRequest {
            fail_with: Code::NotFound as u32,
            ..hello("missing")
        })
        .await
        .expect_err("NOT_FOUND");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "failing missing call 1 on purpose");
    assert_eq!(calls_trailer(status.metadata()), 1);
}

#[tokio::test]
async fn unavailable_is_retried_within_budget_and_other_codes_are_not() {
    let server = PythonGreeter::start(None).await;
    let mesh = client(
        server.addr,
        &[("MESH_SERVICE_GREETER_RETRY_MAX_ATTEMPTS", "3".into())],
    );
    let mut greeter = GreeterClient::new(mesh.grpc_channel("greeter").unwrap());

    // Two UNAVAILABLE answers, then success: the third attempt answers.
    let reply = greeter
        .say_hello(HelloRequest {
            fail_with: Code::Unavailable as u32,
            fail_times: 2,
            ..hello("flaky")
        })
        .await
        .expect("retried to success");
    assert_eq!(reply.get_ref().calls, 3);
    assert_eq!(mesh.retry_stats("greeter").unwrap().retries, 2);

    // More failures than attempts: the caller sees the last UNAVAILABLE.
    let status = greeter
        .say_hello(HelloRequest {
            fail_with: Code::Unavailable as u32,
            ..hello("down")
        })
        .await
        .expect_err("still unavailable");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(calls_trailer(status.metadata()), 3);

    // INTERNAL is not retryable: one call only.
    let status = greeter
        .say_hello(HelloRequest {
            fail_with: Code::Internal as u32,
            fail_times: 1,
            ..hello("broken")
        })
        .await
        .expect_err("INTERNAL");
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(calls_trailer(status.metadata()), 1);
    let reply = greeter.say_hello(hello("broken")).await.unwrap();
    assert_eq!(
        reply.get_ref().calls,
        2,
        "the INTERNAL call was not retried"
    );
}

#[tokio::test]
async fn grpc_retry_pushback_is_honoured_and_a_negative_one_stops_retries() {
    let server = PythonGreeter::start(None).await;
    let mesh = client(server.addr, &[]);
    let mut greeter = GreeterClient::new(mesh.grpc_channel("greeter").unwrap());

    let status = greeter
        .say_hello(HelloRequest {
            fail_with: Code::Unavailable as u32,
            pushback_ms: "-1".into(),
            ..hello("go-away")
        })
        .await
        .expect_err("UNAVAILABLE");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        calls_trailer(status.metadata()),
        1,
        "a negative pushback stops retries"
    );

    // The first retry's backoff is at most 25 ms; a 2 s pushback replaces it.
    let started = tokio::time::Instant::now();
    let reply = greeter
        .say_hello(HelloRequest {
            fail_with: Code::Unavailable as u32,
            fail_times: 1,
            pushback_ms: "2000".into(),
            ..hello("later")
        })
        .await
        .expect("retried after the pushback");
    assert_eq!(reply.get_ref().calls, 2);
    assert!(
        started.elapsed() >= Duration::from_millis(2000),
        "retried after {:?}, before the server's 2 s pushback",
        started.elapsed()
    );
}

#[test]
fn a_channel_to_an_unknown_service_is_an_error_naming_the_variables() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _guard = runtime.enter();
    let mesh = client("127.0.0.1:1".parse().unwrap(), &[]);
    let error = mesh.grpc_channel("billing").unwrap_err().to_string();
    assert!(error.contains("MESH_SERVICE_BILLING_ENDPOINTS"), "{error}");
    assert!(
        error.contains("MESH_SERVICE_BILLING_PROTOCOL=grpc"),
        "{error}"
    );
}

#[tokio::test]
async fn no_retry_after_the_call_commits() {
    let server = PythonGreeter::start(None).await;
    let mesh = client(server.addr, &[]);
    let mut greeter = GreeterClient::new(mesh.grpc_channel("greeter").unwrap());
    // Replies first (headers went out: committed), UNAVAILABLE in the trailers.
    let mut stream = greeter
        .say_hello_stream(HelloRequest {
            count: 2,
            fail_with: Code::Unavailable as u32,
            ..hello("committed")
        })
        .await
        .expect("headers arrive")
        .into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().calls, 1);
    assert_eq!(stream.message().await.unwrap().unwrap().calls, 1);
    let status = stream.message().await.expect_err("UNAVAILABLE trailers");
    assert_eq!(status.code(), Code::Unavailable);
    let reply = greeter.say_hello(hello("committed")).await.unwrap();
    assert_eq!(
        reply.get_ref().calls,
        2,
        "the committed call was not retried"
    );
    assert_eq!(mesh.retry_stats("greeter").unwrap().retries, 0);
}

#[tokio::test]
async fn deadline_is_sent_as_grpc_timeout_and_ends_as_deadline_exceeded() {
    let server = PythonGreeter::start(None).await;
    let mesh = client(server.addr, &[]);
    let mut greeter = GreeterClient::new(mesh.grpc_channel("greeter").unwrap());

    let mut request = Request::new(hello("timed"));
    request.set_timeout(Duration::from_secs(5));
    let reply = greeter.say_hello(request).await.unwrap().into_inner();
    assert!(
        reply.timeout_ms > 0 && reply.timeout_ms <= 5000,
        "the server saw {} ms left of a 5 s deadline",
        reply.timeout_ms
    );

    let mut request = Request::new(HelloRequest {
        delay_ms: 3000,
        ..hello("slow")
    });
    request.set_timeout(Duration::from_millis(200));
    let status = greeter.say_hello(request).await.expect_err("too slow");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
}

#[tokio::test]
async fn python_greeter_over_mtls_sees_our_spiffe_id() {
    let pki = Pki::new("example.org");
    let server_files = pki.server("greeter", SERVER_ID);
    let client_files = pki.client("web", CLIENT_ID);
    let server = PythonGreeter::start(Some(&server_files)).await;
    let mesh = client(
        server.addr,
        &[
            ("MESH_TLS_CERT", client_files.cert.display().to_string()),
            ("MESH_TLS_KEY", client_files.key.display().to_string()),
            ("MESH_TLS_BUNDLE", client_files.bundle.display().to_string()),
            ("MESH_SERVICE_GREETER_IDENTITY", SERVER_ID.to_string()),
        ],
    );
    let mut greeter = GreeterClient::new(mesh.grpc_channel("greeter").unwrap());
    let reply = greeter.say_hello(hello("tls")).await.expect("mTLS call");
    assert_eq!(reply.get_ref().peer, CLIENT_ID);
    let mut stream = greeter
        .say_hello_stream(HelloRequest {
            count: 2,
            ..hello("tls-stream")
        })
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(reply) = stream.message().await.unwrap() {
        assert_eq!(reply.peer, CLIENT_ID);
        n += 1;
    }
    assert_eq!(n, 2);
}

/// Our tonic greeter: the same behaviour as the Python one, with the caller's
/// SPIFFE ID from the inbound mTLS listener.
#[derive(Debug, Default)]
struct TonicGreeter {
    calls: parking_lot::Mutex<BTreeMap<String, u32>>,
}

impl TonicGreeter {
    fn enter(&self, request: &Request<HelloRequest>) -> (u32, u64, String) {
        let name = request.get_ref().name.clone();
        let n = {
            let mut calls = self.calls.lock();
            let n = calls.entry(name).or_default();
            *n += 1;
            *n
        };
        let timeout_ms = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(mesh_core::deadline::parse_grpc_timeout)
            .map_or(0, |d| d.as_millis() as u64);
        let peer = request
            .extensions()
            .get::<PeerIdentity>()
            .map(|p| p.0.to_string())
            .unwrap_or_default();
        (n, timeout_ms, peer)
    }
}

fn failure(request: &HelloRequest, n: u32) -> Option<Status> {
    let failing = request.fail_with != 0 && (request.fail_times == 0 || n <= request.fail_times);
    failing.then(|| {
        let mut status = Status::new(
            Code::from_i32(request.fail_with as i32),
            format!("failing {} call {n} on purpose", request.name),
        );
        status
            .metadata_mut()
            .insert("x-calls", n.to_string().parse().unwrap());
        status
    })
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<HelloReply, Status>> + Send>>;

#[tonic::async_trait]
impl Greeter for TonicGreeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let (n, timeout_ms, peer) = self.enter(&request);
        let request = request.into_inner();
        tokio::time::sleep(Duration::from_millis(request.delay_ms.into())).await;
        if let Some(status) = failure(&request, n) {
            return Err(status);
        }
        Ok(Response::new(HelloReply {
            message: format!("hello {}", request.name),
            peer,
            timeout_ms,
            calls: n,
        }))
    }

    type SayHelloStreamStream = ReplyStream;

    async fn say_hello_stream(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        let (n, timeout_ms, peer) = self.enter(&request);
        let request = request.into_inner();
        let replies: Vec<Result<HelloReply, Status>> = (0..request.count)
            .map(|i| {
                Ok(HelloReply {
                    message: format!("hello {} {i}", request.name),
                    peer: peer.clone(),
                    timeout_ms,
                    calls: n,
                })
            })
            .chain(failure(&request, n).map(Err))
            .collect();
        Ok(Response::new(Box::pin(futures_util::stream::iter(replies))))
    }
}

#[tokio::test]
async fn python_client_calls_our_tonic_server_over_mtls() {
    let pki = Pki::new("example.org");
    let (_files, identity) = pki.server_source("greeter", SERVER_ID);
    let client_files = pki.client("web", CLIENT_ID);
    let (_reporter, health) = tonic_health::server::health_reporter();
    let router = tonic::service::Routes::new(GreeterServer::new(TonicGreeter::default()))
        .add_service(health)
        .into_axum_router();
    let inbound = InboundServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        mesh_core::tls::server_config(&identity, []),
    )
    .await
    .expect("bind");
    let addr = inbound.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(inbound.serve(router, async move {
        let _ = stopped.await;
    }));

    let result = run_python_client(addr, &client_files, SERVER_DNS_NAME).await;
    let unary = &result["unary"];
    assert_eq!(unary["code"], "OK", "{result}");
    assert_eq!(unary["message"], "hello py");
    assert_eq!(unary["peer"], CLIENT_ID);
    let timeout_ms = unary["timeout_ms"].as_u64().unwrap();
    assert!(timeout_ms > 0 && timeout_ms <= 10_000, "{timeout_ms}");
    let failing = &result["failing"];
    assert_eq!(failing["code"], "FAILED_PRECONDITION", "{result}");
    assert_eq!(failing["details"], "failing py call 2 on purpose");
    assert_eq!(failing["trailers"]["x-calls"], "2");
    assert_eq!(result["deadline"]["code"], "DEADLINE_EXCEEDED", "{result}");
    assert_eq!(
        result["stream"]["messages"],
        serde_json::json!(["hello py 0", "hello py 1", "hello py 2"])
    );
    assert_eq!(result["health"], "SERVING", "{result}");

    drop(stop);
    served.await.unwrap();
}
