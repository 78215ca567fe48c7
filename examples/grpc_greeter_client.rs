//! A tonic greeter client over the mesh: `GreeterClient::new(MeshChannel)`.
//!
//! The service `greeter` comes from `MESH_` variables like any mesh service:
//! discovery, our balancer, mTLS with SPIFFE identities (plaintext h2c without an
//! identity), retries of `UNAVAILABLE` within the budget, deadlines.
//!
//! ```text
//! MESH_SERVICE_GREETER_ENDPOINTS=127.0.0.1:50051 MESH_SERVICE_GREETER_PROTOCOL=grpc \
//! MESH_TLS_CERT=… MESH_TLS_KEY=… MESH_TLS_BUNDLE=… \
//!   cargo run --example grpc-greeter-client -- NAME [COUNT]
//! ```
//!
//! `grpc-greeter-server -- --dev-identity DIR` prints the full command. Makes one
//! unary call, then a server-streaming call of COUNT replies (default 3); exits
//! 1 with the gRPC status when a call fails, 2 on a usage or configuration error.

use std::process::ExitCode;
use std::time::Duration;

use mesh_examples::greeter::greeter_client::GreeterClient;
use mesh_examples::greeter::HelloRequest;
use mesh_grpc::GrpcChannelExt;
use mesh_http::BoxError;
use tonic::Status;

/// Why the example stopped: the set-up, or a call.
enum Failure {
    Config(BoxError),
    Call(Status),
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        Failure::Call(status)
    }
}

async fn calls(name: String, count: u32) -> Result<(), Failure> {
    let mesh = mesh_grpc::start_mesh_from_env()
        .await
        .map_err(Failure::Config)?;
    let channel = mesh.grpc_channel("greeter").map_err(Failure::Config)?;
    let mut greeter = GreeterClient::new(channel);
    let mut request = tonic::Request::new(HelloRequest {
        name: name.clone(),
        ..HelloRequest::default()
    });
    request.set_timeout(Duration::from_secs(5));
    let reply = greeter.say_hello(request).await?.into_inner();
    println!("{} (the server saw us as {:?})", reply.message, reply.peer);
    let mut request = tonic::Request::new(HelloRequest {
        name,
        count,
        ..HelloRequest::default()
    });
    request.set_timeout(Duration::from_secs(5));
    let mut stream = greeter.say_hello_stream(request).await?.into_inner();
    while let Some(reply) = stream.message().await? {
        println!("{}", reply.message);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (name, count) = match args.as_slice() {
        [name] => (name.clone(), 3),
        [name, count] => match count.parse() {
            Ok(count) => (name.clone(), count),
            Err(_) => {
                eprintln!("grpc-greeter-client: COUNT must be a number, not {count:?}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("usage: grpc-greeter-client NAME [COUNT]");
            return ExitCode::from(2);
        }
    };
    match calls(name, count).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(error)) => {
            eprintln!("grpc-greeter-client: {error}");
            ExitCode::from(2)
        }
        Err(Failure::Call(status)) => {
            eprintln!(
                "grpc-greeter-client: the call failed: {:?}: {}",
                status.code(),
                status.message()
            );
            ExitCode::FAILURE
        }
    }
}
