//! OTLP exporters for spans and metrics, over gRPC or HTTP/protobuf.
//!
//! The SDK's batch span processor and periodic metric reader export from threads
//! of their own, blocking on the exporter's future. tonic's channel and hyper's
//! client need a tokio reactor to make progress, and blocking the app's runtime
//! (a single-threaded one in particular) while it waits for them deadlocks a
//! flush on shutdown. So the exporters get a small runtime of their own: the gRPC
//! channel is created inside it, and HTTP requests are spawned onto it.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{
    MetricExporter, Protocol, SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig,
};

use super::otel_env::{OtlpProtocol, OtlpTarget};
use super::TelemetryError;

/// The runtime OTLP exports run on; shut down in the background when dropped, so
/// dropping it inside the app's runtime never blocks.
pub(super) struct ExportRuntime {
    runtime: Option<tokio::runtime::Runtime>,
}

impl ExportRuntime {
    pub(super) fn new() -> Result<Self, TelemetryError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("mesh-otlp-export")
            .enable_all()
            .build()
            .map_err(|e| TelemetryError::otlp("start the OTLP export runtime", e))?;
        Ok(ExportRuntime {
            runtime: Some(runtime),
        })
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime
            .as_ref()
            .expect("runtime lives until drop")
            .handle()
    }
}

impl Drop for ExportRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Runs hyper requests on the export runtime, whatever thread asks.
struct OnExportRuntime {
    client: Arc<HyperClient>,
    handle: tokio::runtime::Handle,
}

impl fmt::Debug for OnExportRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OnExportRuntime")
    }
}

impl HttpClient for OnExportRuntime {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: http::Request<Bytes>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<http::Response<Bytes>, HttpError>> + Send + 'b>,
    >
    where
        'a: 'b,
        Self: 'b,
    {
        let client = self.client.clone();
        let task = self
            .handle
            .spawn(async move { client.send_bytes(request).await });
        Box::pin(async move { task.await.map_err(|e| Box::new(e) as HttpError)? })
    }
}

fn http_client(target: &OtlpTarget, rt: &ExportRuntime) -> OnExportRuntime {
    OnExportRuntime {
        client: Arc::new(HyperClient::with_default_connector(target.timeout, None)),
        handle: rt.handle().clone(),
    }
}

fn headers(target: &OtlpTarget) -> HashMap<String, String> {
    target.headers.iter().cloned().collect()
}

fn metadata(
    target: &OtlpTarget,
) -> Result<opentelemetry_otlp::tonic_types::metadata::MetadataMap, TelemetryError> {
    let mut map = http::HeaderMap::new();
    for (k, v) in &target.headers {
        let name = http::HeaderName::try_from(k.as_str())
            .map_err(|e| TelemetryError::otlp("use an OTLP header name", e))?;
        let value = http::HeaderValue::try_from(v.as_str())
            .map_err(|e| TelemetryError::otlp("use an OTLP header value", e))?;
        map.insert(name, value);
    }
    Ok(opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(map))
}

/// Builds the span exporter for `target`.
pub(super) fn span_exporter(
    target: &OtlpTarget,
    rt: &ExportRuntime,
) -> Result<SpanExporter, TelemetryError> {
    let _enter = rt.handle().enter();
    let built = match target.protocol {
        OtlpProtocol::Grpc => SpanExporter::builder()
            .with_tonic()
            .with_endpoint(&target.endpoint)
            .with_timeout(target.timeout)
            .with_metadata(metadata(target)?)
            .build(),
        OtlpProtocol::HttpProtobuf => SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(&target.endpoint)
            .with_timeout(target.timeout)
            .with_headers(headers(target))
            .with_http_client(http_client(target, rt))
            .build(),
    };
    built.map_err(|e| TelemetryError::otlp("build the OTLP span exporter", e))
}

/// Builds the metric exporter for `target`.
pub(super) fn metric_exporter(
    target: &OtlpTarget,
    rt: &ExportRuntime,
) -> Result<MetricExporter, TelemetryError> {
    let _enter = rt.handle().enter();
    let built = match target.protocol {
        OtlpProtocol::Grpc => MetricExporter::builder()
            .with_tonic()
            .with_endpoint(&target.endpoint)
            .with_timeout(target.timeout)
            .with_metadata(metadata(target)?)
            .build(),
        OtlpProtocol::HttpProtobuf => MetricExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(&target.endpoint)
            .with_timeout(target.timeout)
            .with_headers(headers(target))
            .with_http_client(http_client(target, rt))
            .build(),
    };
    built.map_err(|e| TelemetryError::otlp("build the OTLP metric exporter", e))
}
