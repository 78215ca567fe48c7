//! Our tonic server behind `Mesh::serve`'s inbound stack, called by Google's gRPC
//! (Python grpcio) over mTLS: the mesh's refusals arrive as gRPC statuses —
//! PERMISSION_DENIED from `MESH_AUTHZ_RULES`, RESOURCE_EXHAUSTED past
//! `MESH_INBOUND_PEER_RATE_LIMIT`, UNAVAILABLE when `MESH_INBOUND_CONCURRENCY`
//! sheds — and the handler never runs for a refused call (counted). Also: a
//! `Mesh` built through `mesh_grpc` probes `grpc.health.v1` endpoints.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use mesh_core::balance::BalancerStats;
use mesh_core::config::MeshConfig;
use mesh_http::server::PeerIdentity;
use mesh_http::{Mesh, MeshClient};
use mesh_tests::greeter::greeter_server::{Greeter, GreeterServer};
use mesh_tests::greeter::{HelloReply, HelloRequest};
use mesh_tests::pki::{PemFiles, Pki, SERVER_DNS_NAME};
use mesh_tests::python::{PythonCaller, PythonHealthServer};
use tokio::sync::{watch, Notify};
use tonic::{Request, Response, Status};

const SERVER_ID: &str = "spiffe://example.org/ns/prod/sa/greeter";
const WEB_ID: &str = "spiffe://example.org/ns/prod/sa/web";
const BATCH_ID: &str = "spiffe://example.org/ns/prod/sa/batch";

/// A greeter that counts the calls its handlers run, and holds calls named
/// `hold` until the test releases them.
#[derive(Debug, Clone)]
struct CountingGreeter {
    handled: Arc<AtomicU64>,
    entered: Arc<Notify>,
    release: watch::Receiver<bool>,
}

impl CountingGreeter {
    async fn enter(&self, request: &Request<HelloRequest>) -> String {
        self.handled.fetch_add(1, Ordering::SeqCst);
        if request.get_ref().name == "hold" {
            self.entered.notify_one();
            let _ = self.release.clone().wait_for(|released| *released).await;
        }
        request
            .extensions()
            .get::<PeerIdentity>()
            .map(|p| p.0.to_string())
            .unwrap_or_default()
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<HelloReply, Status>> + Send>>;

#[tonic::async_trait]
impl Greeter for CountingGreeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let peer = self.enter(&request).await;
        Ok(Response::new(HelloReply {
            message: format!("hello {}", request.get_ref().name),
            peer,
            ..HelloReply::default()
        }))
    }

    type SayHelloStreamStream = ReplyStream;

    async fn say_hello_stream(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        self.enter(&request).await;
        let replies: Vec<_> = (0..request.get_ref().count)
            .map(|i| {
                Ok(HelloReply {
                    message: format!("hello {i}"),
                    ..HelloReply::default()
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures_util::stream::iter(replies))))
    }
}

/// Our greeter served by a `Mesh` configured with `vars`, on loopback.
struct Server {
    addr: std::net::SocketAddr,
    pki: Pki,
    handled: Arc<AtomicU64>,
    entered: Arc<Notify>,
    release: watch::Sender<bool>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Server {
    async fn start(vars: &[(&str, &str)]) -> Self {
        let pki = Pki::new("example.org");
        let files = pki.server("greeter", SERVER_ID);
        let mut env: BTreeMap<String, String> = [
            ("MESH_TLS_CERT", files.cert.display().to_string()),
            ("MESH_TLS_KEY", files.key.display().to_string()),
            ("MESH_TLS_BUNDLE", files.bundle.display().to_string()),
            ("MESH_INBOUND_ADDR", "127.0.0.1:0".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        env.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mesh = Mesh::new(MeshConfig::from_source(&env).expect("valid configuration"))
            .expect("mesh starts");
        let (release, released) = watch::channel(false);
        let greeter = CountingGreeter {
            handled: Arc::new(AtomicU64::new(0)),
            entered: Arc::new(Notify::new()),
            release: released,
        };
        let (handled, entered) = (greeter.handled.clone(), greeter.entered.clone());
        let router = tonic::service::Routes::new(GreeterServer::new(greeter)).into_axum_router();
        let inbound = mesh.inbound().await.expect("bind");
        let addr = inbound.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            mesh.serve_inbound(inbound, router, async {
                let _ = stopped.await;
            })
            .await;
        });
        Server {
            addr,
            pki,
            handled,
            entered,
            release,
            _stop: stop,
        }
    }

    fn caller(&self, name: &str, id: &str) -> PythonCaller {
        let files: PemFiles = self.pki.client(name, id);
        PythonCaller::start(self.addr, &files, SERVER_DNS_NAME)
    }

    fn handled(&self) -> u64 {
        self.handled.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_calls_refused_by_authz_get_permission_denied_and_never_run() {
    let rules = "deny * * /mesh.test.greeter.Greeter/SayHelloStream; \
                 allow spiffe://example.org/ns/prod/sa/web POST /mesh.test.greeter.Greeter/*";
    let server = Server::start(&[("MESH_AUTHZ_RULES", rules)]).await;
    let mut web = server.caller("web", WEB_ID);
    let allowed = web.call("unary", "1", "web").await;
    assert_eq!(allowed["code"], "OK", "{allowed}");
    assert_eq!(server.handled(), 1);

    let denied_method = web.call("stream", "2", "web").await;
    assert_eq!(
        denied_method["code"], "PERMISSION_DENIED",
        "{denied_method}"
    );
    assert_eq!(
        denied_method["details"],
        "forbidden: refused by authorization rule 1"
    );
    let mut batch = server.caller("batch", BATCH_ID);
    let denied_peer = batch.call("unary", "3", "batch").await;
    assert_eq!(denied_peer["code"], "PERMISSION_DENIED", "{denied_peer}");
    assert_eq!(
        denied_peer["details"],
        "forbidden: no authorization rule allows this request"
    );
    assert_eq!(
        server.handled(),
        1,
        "refused calls never reached the handler"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_calls_past_the_peer_rate_limit_get_resource_exhausted_and_never_run() {
    let server = Server::start(&[("MESH_INBOUND_PEER_RATE_LIMIT", "1/m,burst=3")]).await;
    let mut web = server.caller("web", WEB_ID);
    for id in ["1", "2", "3"] {
        let result = web.call("unary", id, "web").await;
        assert_eq!(result["code"], "OK", "{result}");
    }
    let limited = web.call("unary", "4", "web").await;
    assert_eq!(limited["code"], "RESOURCE_EXHAUSTED", "{limited}");
    assert!(
        limited["details"]
            .as_str()
            .is_some_and(|d| d.starts_with("rate limited")),
        "{limited}"
    );
    // One token a minute: the wait is most of a minute, in milliseconds.
    let pushback: u64 = limited["trailers"]["grpc-retry-pushback-ms"]
        .as_str()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no grpc-retry-pushback-ms: {limited}"));
    assert!((1_000..=60_000).contains(&pushback), "{pushback}");
    // Another peer has a bucket of its own.
    let mut batch = server.caller("batch", BATCH_ID);
    assert_eq!(batch.call("unary", "5", "batch").await["code"], "OK");
    assert_eq!(server.handled(), 4, "the limited call never ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_calls_shed_by_the_concurrency_limit_get_unavailable_and_never_run() {
    let server = Server::start(&[("MESH_INBOUND_CONCURRENCY", "1")]).await;
    let mut web = server.caller("web", WEB_ID);
    web.start_call("unary", "held", "hold").await;
    // The one place is taken once the held call is inside its handler.
    server.entered.notified().await;
    let shed = web.call("unary", "shed", "web").await;
    assert_eq!(shed["code"], "UNAVAILABLE", "{shed}");
    assert!(
        shed["details"]
            .as_str()
            .is_some_and(|d| d.starts_with("overloaded")),
        "{shed}"
    );
    assert_eq!(server.handled(), 1, "the shed call never ran");
    server.release.send(true).unwrap();
    let held = web.next_result().await;
    assert_eq!((&held["id"], &held["code"]), (&"held".into(), &"OK".into()));
    // The place is free again.
    assert_eq!(web.call("unary", "after", "web").await["code"], "OK");
    assert_eq!(server.handled(), 2);
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_from_mesh_grpc_probes_grpc_health_and_plain_mesh_says_how_to_get_it() {
    const GREETER: &str = "mesh.test.greeter.Greeter";
    let mut python = PythonHealthServer::start(GREETER).await;
    let env: BTreeMap<String, String> = [
        ("MESH_SERVICE_GREETER_ENDPOINTS", python.addr.to_string()),
        ("MESH_SERVICE_GREETER_PROTOCOL", "grpc".into()),
        (
            "MESH_SERVICE_GREETER_HEALTH_CHECK_GRPC_SERVICE",
            GREETER.into(),
        ),
        ("MESH_SERVICE_GREETER_HEALTH_CHECK_INTERVAL", "250ms".into()),
        ("MESH_SERVICE_GREETER_HEALTH_CHECK_TIMEOUT", "250ms".into()),
        (
            "MESH_SERVICE_GREETER_HEALTH_CHECK_UNHEALTHY_THRESHOLD",
            "1".into(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let config = || MeshConfig::from_source(&env).expect("valid configuration");

    let error = Mesh::new(config()).expect_err("no gRPC probe in mesh-http alone");
    assert!(
        error
            .to_string()
            .contains("MESH_SERVICE_GREETER_HEALTH_CHECK_GRPC_SERVICE"),
        "{error}"
    );

    let mesh = mesh_grpc::mesh_builder(config())
        .start()
        .await
        .expect("mesh starts with the gRPC probe");
    let client = mesh.client();
    until(&client, "the endpoint passes its first check", |s| {
        s.ready == 1
    })
    .await;
    assert_eq!(python.command("not_serving").await["status"], "not_serving");
    until(&client, "the NOT_SERVING endpoint leaves rotation", |s| {
        s.unhealthy == 1
    })
    .await;
}
