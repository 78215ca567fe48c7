//! gRPC call metrics: `rpc.client.call.duration` for calls made through
//! [`MeshChannel`](crate::MeshChannel) and `rpc.server.call.duration` for a tonic
//! server behind [`GrpcServerTelemetryLayer`], with the OpenTelemetry RPC
//! attributes (release candidate): `rpc.system.name="grpc"`, `rpc.method`
//! (`package.Service/Method`) and `rpc.response.status_code` (the status name,
//! from the response headers of a trailers-only answer or from the trailers).
//!
//! A call lasts until its status is known: the trailers arrive, the response
//! body ends without one (`UNKNOWN`), or the caller drops it first
//! (`CANCELLED`). That is what a gRPC user means by call duration, streaming
//! calls included.
//!
//! Label values stay bounded: the client's methods are the ones its generated
//! code calls; on the server, a call answered `UNIMPLEMENTED` (no such service
//! or method) or whose path is not `/service/method` is counted under
//! `rpc.method="_OTHER"`, so a peer cannot mint series.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use mesh_core::metric_names::{label, RPC_CLIENT_CALL_DURATION, RPC_SERVER_CALL_DURATION};
use mesh_core::telemetry::HandleCache;
use metrics::{Histogram, SharedString};
use pin_project_lite::pin_project;
use tokio::time::Instant;

/// `rpc.method` for calls that cannot name a routed method.
pub const OTHER_METHOD: &str = "_OTHER";

const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];
const UNKNOWN: u8 = 2;
const CANCELLED: u8 = 1;
const UNIMPLEMENTED: u8 = 12;

/// The status code a `grpc-status` value names; a number gRPC does not define
/// is `UNKNOWN`, as gRPC clients treat it.
fn status_code(headers: &HeaderMap) -> Option<u8> {
    let value = headers.get("grpc-status")?;
    let code = value
        .to_str()
        .ok()
        .and_then(|v| v.parse::<u8>().ok())
        .filter(|c| usize::from(*c) < CODE_NAMES.len())
        .unwrap_or(UNKNOWN);
    Some(code)
}

/// Which side of the call the metrics describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// Histograms by method, then status code; shared by every clone.
#[derive(Debug)]
pub(crate) struct RpcHandles {
    side: Side,
    /// `server.address` on the client side: the logical service.
    service: SharedString,
    methods: HandleCache<String, Arc<MethodHandles>>,
}

#[derive(Debug)]
struct MethodHandles {
    method: SharedString,
    by_status: HandleCache<u8, Histogram>,
}

impl RpcHandles {
    pub(crate) fn client(service: &str) -> Arc<Self> {
        Arc::new(RpcHandles {
            side: Side::Client,
            service: SharedString::from_owned(service.to_string()),
            methods: HandleCache::new(),
        })
    }

    fn server() -> Arc<Self> {
        Arc::new(RpcHandles {
            side: Side::Server,
            service: SharedString::const_str(""),
            methods: HandleCache::new(),
        })
    }

    fn record(&self, path: &str, code: u8, seconds: f64) {
        let method = path.strip_prefix('/').unwrap_or(path);
        let routed = method
            .split_once('/')
            .is_some_and(|(s, m)| !s.is_empty() && !m.is_empty() && !m.contains('/'));
        let method = if self.side == Side::Server && (code == UNIMPLEMENTED || !routed) {
            OTHER_METHOD
        } else {
            method
        };
        let handles = self.methods.get(method, |m| {
            Arc::new(MethodHandles {
                method: SharedString::from_owned(m.to_string()),
                by_status: HandleCache::new(),
            })
        });
        handles.by_status.with(
            &code,
            |code| {
                let status = CODE_NAMES[usize::from(*code)];
                match self.side {
                    Side::Client => metrics::histogram!(
                        RPC_CLIENT_CALL_DURATION.name,
                        label::RPC_SYSTEM_NAME => "grpc",
                        label::RPC_METHOD => handles.method.clone(),
                        label::RPC_STATUS_CODE => status,
                        label::SERVER_ADDRESS => self.service.clone(),
                    ),
                    Side::Server => metrics::histogram!(
                        RPC_SERVER_CALL_DURATION.name,
                        label::RPC_SYSTEM_NAME => "grpc",
                        label::RPC_METHOD => handles.method.clone(),
                        label::RPC_STATUS_CODE => status,
                    ),
                }
            },
            |h| h.record(seconds),
        );
    }
}

/// A call whose status is not known yet.
#[derive(Debug)]
pub(crate) struct PendingCall {
    handles: Arc<RpcHandles>,
    path: http::uri::PathAndQuery,
    start: Instant,
}

impl PendingCall {
    pub(crate) fn start<B>(handles: &Arc<RpcHandles>, request: &Request<B>) -> Self {
        PendingCall {
            handles: handles.clone(),
            path: request
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
            start: Instant::now(),
        }
    }

    fn finish(self, code: u8) {
        let seconds = self.start.elapsed().as_secs_f64();
        self.handles.record(self.path.path(), code, seconds);
    }

    /// Records a call that ended without a response (`code` from the error).
    pub(crate) fn failed(self, code: tonic::Code) {
        self.finish((code as i32).clamp(0, 16) as u8);
    }

    /// Records a trailers-only answer now, or wraps the body to record when its
    /// trailers arrive.
    pub(crate) fn respond<B>(self, response: Response<B>) -> Response<RpcBody<B>> {
        let pending = match status_code(response.headers()) {
            Some(code) => {
                self.finish(code);
                None
            }
            None => Some(self),
        };
        response.map(|inner| RpcBody { inner, pending })
    }
}

pin_project! {
    /// A gRPC response body that records the call's duration and status when
    /// its trailers arrive (or it ends or is dropped without them).
    pub struct RpcBody<B> {
        #[pin]
        inner: B,
        pending: Option<PendingCall>,
    }

    impl<B> PinnedDrop for RpcBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(pending) = this.project().pending.take() {
                pending.finish(CANCELLED);
            }
        }
    }
}

impl<B> std::fmt::Debug for RpcBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcBody").finish_non_exhaustive()
    }
}

impl<B> Body for RpcBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = std::task::ready!(this.inner.poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    if let Some(pending) = this.pending.take() {
                        pending.finish(status_code(trailers).unwrap_or(UNKNOWN));
                    }
                }
            }
            // Ended without a status, or broke off: gRPC reports UNKNOWN.
            Some(Err(_)) | None => {
                if let Some(pending) = this.pending.take() {
                    pending.finish(UNKNOWN);
                }
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `rpc.server.call.duration` for a tonic server:
/// `Server::builder().layer(GrpcServerTelemetryLayer::new())`.
///
/// HTTP-level metrics, spans and the access log come from
/// [`ServerTelemetryLayer`](mesh_http::telemetry::ServerTelemetryLayer), which
/// [`Mesh::serve`](mesh_http::Mesh::serve) applies; this layer adds the gRPC view
/// (method and status code, which an HTTP 200 hides).
#[derive(Debug, Clone)]
pub struct GrpcServerTelemetryLayer {
    handles: Arc<RpcHandles>,
}

impl GrpcServerTelemetryLayer {
    /// Server call metrics.
    pub fn new() -> Self {
        GrpcServerTelemetryLayer {
            handles: RpcHandles::server(),
        }
    }
}

impl Default for GrpcServerTelemetryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> tower::Layer<S> for GrpcServerTelemetryLayer {
    type Service = GrpcServerTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcServerTelemetry {
            inner,
            handles: self.handles.clone(),
        }
    }
}

/// The service [`GrpcServerTelemetryLayer`] makes.
#[derive(Debug, Clone)]
pub struct GrpcServerTelemetry<S> {
    inner: S,
    handles: Arc<RpcHandles>,
}

impl<S, B, RB> tower::Service<Request<B>> for GrpcServerTelemetry<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<RpcBody<RB>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Response<RpcBody<RB>>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let pending = PendingCall::start(&self.handles, &request);
        let call = self.inner.call(request);
        Box::pin(async move {
            match call.await {
                Ok(response) => Ok(pending.respond(response)),
                Err(e) => {
                    pending.failed(tonic::Code::Internal);
                    Err(e)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use metrics::{Counter, Gauge, Key, KeyName, Metadata, Unit};

    use super::*;

    /// Records each histogram sample as "name{labels}".
    #[derive(Default, Clone)]
    struct Samples(Arc<parking_lot::Mutex<Vec<String>>>);

    struct Sample(Samples, String);

    impl metrics::HistogramFn for Sample {
        fn record(&self, _: f64) {
            self.0 .0.lock().push(self.1.clone());
        }
    }

    impl metrics::Recorder for Samples {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            Counter::noop()
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            let labels: Vec<_> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let id = format!("{}{{{}}}", key.name(), labels.join(","));
            Histogram::from_arc(Arc::new(Sample(self.clone(), id)))
        }
    }

    /// A gRPC answer: status in the trailers, or trailers-only.
    fn answer(
        code: &str,
        trailers_only: bool,
    ) -> Response<http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>> {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", code.parse().unwrap());
        if trailers_only {
            let mut response = Response::new(http_body_util::Empty::new().boxed());
            *response.headers_mut() = trailers;
            response
        } else {
            let body = http_body_util::StreamBody::new(futures_util::stream::iter([
                Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
                Ok(Frame::trailers(trailers)),
            ]));
            Response::new(body.boxed())
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn server_calls_are_recorded_with_status_and_unknown_methods_collapse() {
        let samples = Samples::default();
        let _local = metrics::set_default_local_recorder(&samples);
        let service = tower::service_fn(|request: Request<()>| async move {
            Ok::<_, std::convert::Infallible>(match request.uri().path() {
                "/helloworld.Greeter/SayHello" => answer("0", false),
                "/helloworld.Greeter/Fail" => answer("14", false),
                _ => answer("12", true),
            })
        });
        let mut service = tower::Layer::layer(&GrpcServerTelemetryLayer::new(), service);
        for path in [
            "/helloworld.Greeter/SayHello",
            "/helloworld.Greeter/Fail",
            "/no.Such/Method1",
            "/no.Such/Method2",
        ] {
            let request = Request::post(path).body(()).unwrap();
            let response = tower::Service::call(&mut service, request).await.unwrap();
            response.into_body().collect().await.unwrap();
        }
        let mut seen = samples.0.lock().clone();
        seen.sort();
        let server = |method: &str, status: &str| {
            format!("rpc.server.call.duration{{rpc.system.name=grpc,rpc.method={method},rpc.response.status_code={status}}}")
        };
        assert_eq!(
            seen,
            vec![
                server("_OTHER", "UNIMPLEMENTED"),
                server("_OTHER", "UNIMPLEMENTED"),
                server("helloworld.Greeter/Fail", "UNAVAILABLE"),
                server("helloworld.Greeter/SayHello", "OK"),
            ]
        );
    }

    #[test]
    fn status_names_follow_the_codes() {
        assert_eq!(CODE_NAMES[usize::from(UNIMPLEMENTED)], "UNIMPLEMENTED");
        assert_eq!(CODE_NAMES[tonic::Code::Unavailable as usize], "UNAVAILABLE");
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", "99".parse().unwrap());
        assert_eq!(status_code(&headers), Some(UNKNOWN));
        headers.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(status_code(&headers), Some(14));
    }
}
