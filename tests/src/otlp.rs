//! An OTLP collector in the test: opentelemetry-proto's generated trace and
//! metrics services over gRPC on one loopback port, and the same messages over
//! HTTP/protobuf (`POST /v1/traces`, `/v1/metrics`) on another; it keeps every span
//! and metric name and counts exports.

use std::net::SocketAddr;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::Notify;

#[derive(Debug, Default)]
struct Received {
    spans: Mutex<Vec<Span>>,
    metric_names: Mutex<Vec<String>>,
    exports: Mutex<usize>,
    grew: Notify,
}

/// A running receiver; stops when dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    addr: SocketAddr,
    http_addr: SocketAddr,
    received: Arc<Received>,
    task: tokio::task::JoinHandle<()>,
    http_task: tokio::task::JoinHandle<()>,
}

struct Traces(Arc<Received>);
struct Metrics(Arc<Received>);

#[tonic::async_trait]
impl TraceService for Traces {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = Vec::new();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        self.0.spans.lock().extend(spans);
        *self.0.exports.lock() += 1;
        self.0.grew.notify_waiters();
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Metrics {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut names = Vec::new();
        for resource in request.into_inner().resource_metrics {
            for scope in resource.scope_metrics {
                names.extend(scope.metrics.into_iter().map(|m| m.name));
            }
        }
        self.0.metric_names.lock().extend(names);
        *self.0.exports.lock() += 1;
        self.0.grew.notify_waiters();
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

impl OtlpReceiver {
    /// Listens on a fresh loopback port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let received = Arc::new(Received::default());
        let router = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Traces(received.clone())))
            .add_service(MetricsServiceServer::new(Metrics(received.clone())));
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let task = tokio::spawn(async move {
            router
                .serve_with_incoming(incoming)
                .await
                .expect("OTLP receiver serves");
        });

        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let http_addr = http_listener.local_addr().expect("local addr");
        let (traces, metrics) = (received.clone(), received.clone());
        let app = axum::Router::new()
            .route(
                "/v1/traces",
                axum::routing::post(move |body: bytes::Bytes| async move {
                    let request = ExportTraceServiceRequest::decode(body).expect("protobuf");
                    let _ =
                        TraceService::export(&Traces(traces), tonic::Request::new(request)).await;
                    protobuf_ok(ExportTraceServiceResponse::default())
                }),
            )
            .route(
                "/v1/metrics",
                axum::routing::post(move |body: bytes::Bytes| async move {
                    let request = ExportMetricsServiceRequest::decode(body).expect("protobuf");
                    let _ = MetricsService::export(&Metrics(metrics), tonic::Request::new(request))
                        .await;
                    protobuf_ok(ExportMetricsServiceResponse::default())
                }),
            );
        let http_task = tokio::spawn(async move {
            axum::serve(http_listener, app)
                .await
                .expect("OTLP/HTTP serves");
        });
        OtlpReceiver {
            addr,
            http_addr,
            received,
            task,
            http_task,
        }
    }

    /// `http://127.0.0.1:<port>` of the HTTP/protobuf side, for
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` with `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`.
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// `http://127.0.0.1:<port>`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.received.spans.lock().clone()
    }

    /// Names of every metric received so far.
    pub fn metric_names(&self) -> Vec<String> {
        self.received.metric_names.lock().clone()
    }

    /// Export calls received (traces and metrics).
    pub fn exports(&self) -> usize {
        *self.received.exports.lock()
    }

    /// Waits until `done` holds for the spans received, or `timeout` passes.
    pub async fn wait_for_spans(
        &self,
        timeout: std::time::Duration,
        done: impl Fn(&[Span]) -> bool,
    ) -> Vec<Span> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let grew = self.received.grew.notified();
            let spans = self.spans();
            if done(&spans) || tokio::time::Instant::now() >= deadline {
                return spans;
            }
            let _ = tokio::time::timeout_at(deadline, grew).await;
        }
    }
}

fn protobuf_ok(message: impl Message) -> impl axum::response::IntoResponse {
    (
        [(http::header::CONTENT_TYPE, "application/x-protobuf")],
        message.encode_to_vec(),
    )
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
        self.http_task.abort();
    }
}

/// A trace or span ID as received (bytes) in W3C's lowercase hex, to compare
/// with `traceparent` and `TraceIds`.
pub fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}
