//! A `grpc.health.v1` probe that finds its target through the mesh configuration.
//!
//! ```text
//! cargo run --example grpc-health -- <service> [--service NAME]
//! ```
//!
//! `<service>` is a mesh service: its endpoints come from `MESH_SERVICE_<NAME>_*`
//! (static endpoints, DNS, a file) and the call goes through the mesh's client,
//! so it is mTLS with our SPIFFE identity when one is configured (`MESH_TLS_*`)
//! and plaintext h2c otherwise. The service is spoken to as gRPC whatever its
//! `PROTOCOL` default (`MESH_SERVICE_<NAME>_PROTOCOL` still wins when set).
//! Without `--service` it asks about the server's overall health (the empty
//! service name), as `grpc_health_probe` does.
//!
//! Exit status: 0 when the answer is `SERVING`; 1 when it is anything else, the
//! server does not know the service, or no endpoint answered within 5 s; 2 on a
//! usage or configuration error. Each case says why on one line.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use mesh_core::config::{normalize_service_name, Env, Layered, MeshConfig};
use mesh_grpc::MeshChannel;
use mesh_http::{BoxError, MeshClient};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const USAGE: &str = "usage: grpc-health <service> [--service NAME]";
/// How long the whole check may take, retries included.
const TIMEOUT: Duration = Duration::from_secs(5);

/// What to ask whom.
struct Args {
    target: String,
    service: String,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut target = None;
    let mut service = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--service" => match args.next() {
                Some(name) if service.is_none() => service = Some(name),
                Some(_) => return Err("--service is given twice".into()),
                None => return Err("--service needs a NAME".into()),
            },
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
            _ if target.is_some() => return Err(format!("unexpected argument {arg:?}")),
            _ => target = Some(arg),
        }
    }
    Ok(Args {
        target: target.ok_or("which mesh service? name it")?,
        service: service.unwrap_or_default(),
    })
}

/// The configuration from the environment, with `target` spoken to as gRPC
/// unless its `PROTOCOL` is set.
fn config_for(target: &str) -> Result<MeshConfig, BoxError> {
    let known = MeshConfig::from_env()?;
    if known.service_for_host(target).is_none() {
        let name = normalize_service_name(target);
        return Err(format!(
            "the mesh has no service `{target}`: set MESH_SERVICE_{name}_ENDPOINTS (or its DNS or file discovery)"
        )
        .into());
    }
    let grpc = HashMap::from([(
        format!("MESH_SERVICE_{}_PROTOCOL", normalize_service_name(target)),
        "grpc".to_string(),
    )]);
    Ok(MeshConfig::from_source(&Layered::new(Env, grpc))?)
}

/// The health client, or a configuration error.
fn health_client(target: &str) -> Result<HealthClient<MeshChannel>, BoxError> {
    let client = MeshClient::new(config_for(target)?)?;
    Ok(HealthClient::new(MeshChannel::new(client, target)?))
}

async fn check(args: Args) -> ExitCode {
    let mut health = match health_client(&args.target) {
        Ok(health) => health,
        Err(error) => {
            eprintln!("grpc-health: {error}");
            return ExitCode::from(2);
        }
    };
    let what = if args.service.is_empty() {
        format!("{}: the server", args.target)
    } else {
        format!("{}: service `{}`", args.target, args.service)
    };
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: args.service,
    });
    request.set_timeout(TIMEOUT);
    match health.check(request).await {
        Ok(answer) => match answer.into_inner().status() {
            ServingStatus::Serving => {
                println!("{what} is SERVING");
                ExitCode::SUCCESS
            }
            other => {
                println!("{what} is {}", other.as_str_name());
                ExitCode::FAILURE
            }
        },
        Err(status) if status.code() == Code::NotFound => {
            println!("{what} is unknown to its health service (NOT_FOUND)");
            ExitCode::FAILURE
        }
        Err(status) => {
            println!(
                "{what} did not answer: {:?}: {}",
                status.code(),
                status.message()
            );
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if matches!(args.as_slice(), [flag] if flag == "-h" || flag == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let args = match parse_args(args) {
        Ok(args) => args,
        Err(problem) => {
            eprintln!("grpc-health: {problem}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("grpc-health: cannot start the runtime: {error}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(check(args))
}
