//! A tonic greeter server behind the mesh's inbound mTLS listener.
//!
//! The greeter answers with the caller's SPIFFE ID, which the listener took from
//! the client certificate; `grpc.health.v1` answers `SERVING` while the server
//! serves and `NOT_SERVING` from the moment it starts draining. Everything the
//! mesh puts in front of a handler applies, answered as gRPC answers:
//! `MESH_AUTHZ_RULES` (`PERMISSION_DENIED`), `MESH_INBOUND_RATE_LIMIT` /
//! `MESH_INBOUND_PEER_RATE_LIMIT` (`RESOURCE_EXHAUSTED`), `MESH_INBOUND_CONCURRENCY`
//! (`UNAVAILABLE`), and the caller's `grpc-timeout` (`DEADLINE_EXCEEDED`).
//!
//! ```text
//! # A throw-away dev CA and identities for the server and one client, written to
//! # DIR; prints the variables the client example needs.
//! cargo run --example grpc-greeter-server -- --dev-identity /tmp/greeter
//! # Or your own: MESH_TLS_CERT, MESH_TLS_KEY, MESH_TLS_BUNDLE (or
//! # SPIFFE_ENDPOINT_SOCKET) and MESH_INBOUND_ADDR.
//! cargo run --example grpc-greeter-server
//! ```
//!
//! Stops on Ctrl-C or SIGTERM, draining calls in flight.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;

use futures_util::Stream;
use mesh_core::config::{Env, Layered, MeshConfig};
use mesh_core::identity::dev::DevCa;
use mesh_core::identity::{IdentityFiles, SpiffeId};
use mesh_examples::greeter::greeter_server::{Greeter, GreeterServer};
use mesh_examples::greeter::{HelloReply, HelloRequest};
use mesh_grpc::health::health_service;
use mesh_http::server::{shutdown_signal, PeerIdentity};
use mesh_http::BoxError;
use tonic::{Request, Response, Status};

const TRUST_DOMAIN: &str = "example.org";
const SERVER_ID: &str = "spiffe://example.org/ns/demo/sa/greeter";
const CLIENT_ID: &str = "spiffe://example.org/ns/demo/sa/client";
const DEV_ADDR: &str = "127.0.0.1:50051";

/// Greets the caller by the SPIFFE ID its certificate proved.
#[derive(Debug, Default)]
struct MeshGreeter;

impl MeshGreeter {
    fn reply(request: &Request<HelloRequest>, message: String) -> HelloReply {
        let peer = request
            .extensions()
            .get::<PeerIdentity>()
            .map(|p| p.0.to_string())
            .unwrap_or_default();
        HelloReply {
            message,
            peer,
            ..HelloReply::default()
        }
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<HelloReply, Status>> + Send>>;

#[tonic::async_trait]
impl Greeter for MeshGreeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let delay = Duration::from_millis(request.get_ref().delay_ms.into());
        // The mesh's deadline layer drops this future once the caller's
        // deadline passes, answering DEADLINE_EXCEEDED for us.
        tokio::time::sleep(delay).await;
        let message = format!("hello {}", request.get_ref().name);
        Ok(Response::new(Self::reply(&request, message)))
    }

    type SayHelloStreamStream = ReplyStream;

    async fn say_hello_stream(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        let replies: Vec<_> = (0..request.get_ref().count)
            .map(|i| {
                let message = format!("hello {} {i}", request.get_ref().name);
                Ok(Self::reply(&request, message))
            })
            .collect();
        Ok(Response::new(Box::pin(futures_util::stream::iter(replies))))
    }
}

/// Mints a dev CA and identities for the server and a client in `dir`; returns
/// the variables the server runs with, and the client's files.
fn dev_identity(dir: &Path) -> Result<(HashMap<String, String>, IdentityFiles), BoxError> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let ca = DevCa::new(TRUST_DOMAIN)?;
    let server = ca.write_identity(dir, "server", &SERVER_ID.parse::<SpiffeId>()?)?;
    let client = ca.write_identity(dir, "client", &CLIENT_ID.parse::<SpiffeId>()?)?;
    let path = |p: &PathBuf| p.display().to_string();
    let vars = HashMap::from([
        ("MESH_TLS_CERT".into(), path(&server.cert)),
        ("MESH_TLS_KEY".into(), path(&server.key)),
        ("MESH_TLS_BUNDLE".into(), path(&server.bundle)),
        ("MESH_INBOUND_ADDR".into(), DEV_ADDR.into()),
    ]);
    Ok((vars, client))
}

fn print_client_command(client: &IdentityFiles, addr: SocketAddr) {
    println!("run the client with:");
    println!(
        "  MESH_TLS_CERT={} MESH_TLS_KEY={} MESH_TLS_BUNDLE={} \\\n  \
         MESH_SERVICE_GREETER_ENDPOINTS={addr} MESH_SERVICE_GREETER_PROTOCOL=grpc \\\n  \
         MESH_SERVICE_GREETER_IDENTITY={SERVER_ID} \\\n  \
         cargo run --example grpc-greeter-client -- mesh",
        client.cert.display(),
        client.key.display(),
        client.bundle.display()
    );
}

async fn run() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (config, dev_client) = match args.as_slice() {
        [] => (MeshConfig::from_env()?, None),
        [flag, dir] if flag == "--dev-identity" => {
            let (vars, client) = dev_identity(Path::new(dir))?;
            // The environment still wins, so MESH_INBOUND_ADDR can move it.
            let config = MeshConfig::from_source(&Layered::new(Env, vars))?;
            (config, Some(client))
        }
        _ => return Err("usage: grpc-greeter-server [--dev-identity DIR]".into()),
    };
    // With the gRPC health probe, so services it calls may use
    // MESH_SERVICE_<NAME>_HEALTH_CHECK_GRPC_SERVICE.
    let mesh = mesh_grpc::mesh_builder(config).start().await?;
    let (reporter, health) = health_service(mesh.readiness());
    // The greeter's own entry; the whole server's ("") follows readiness.
    reporter.set_serving::<GreeterServer<MeshGreeter>>().await;
    let router = tonic::service::Routes::new(GreeterServer::new(MeshGreeter))
        .add_service(health)
        .into_axum_router();
    let server = mesh.inbound().await?;
    let id = mesh
        .identity()
        .map(|identity| identity.current().spiffe_id().to_string())
        .unwrap_or_default();
    let addr = server.local_addr()?;
    println!("greeter serving on {addr} as {id}");
    if let Some(client) = &dev_client {
        print_client_command(client, addr);
    }
    mesh.serve_inbound(server, router, shutdown_signal()).await;
    println!("greeter drained and stopped");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("grpc-greeter-server: {error}");
            ExitCode::FAILURE
        }
    }
}
