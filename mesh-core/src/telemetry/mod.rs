//! Telemetry set up from the environment in one call: metrics (Prometheus scrape
//! endpoint or OTLP push), OpenTelemetry tracing with W3C propagation, and the
//! app's own `tracing` spans joined to the same traces.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = mesh_core::config::MeshConfig::from_env()?;
//! // Flushes spans and metrics when dropped: keep it alive for the whole run.
//! let telemetry = mesh_core::telemetry::init(&config)?;
//! # Ok(()) }
//! ```
//!
//! What it reads:
//! - `MESH_METRICS_ADDR`: serve `/metrics` for Prometheus there. Whether or not it
//!   is set, [`TelemetryGuard::prometheus_handle`] renders the same text for a
//!   route in the app's own router.
//! - `OTEL_METRICS_EXPORTER=otlp`: push metrics over OTLP instead (serverless),
//!   flushed when the guard drops.
//! - `OTEL_TRACES_EXPORTER`, `OTEL_EXPORTER_OTLP_*` (`grpc` or `http/protobuf`),
//!   `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_PROPAGATORS`, `OTEL_SDK_DISABLED`,
//!   `OTEL_SERVICE_NAME` / `MESH_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`:
//!   their standard meaning; see [`OtelSettings`] for the one deliberate
//!   difference.
//!
//! **No hidden globals beyond the standard ones.** The `metrics` facade, the
//! OpenTelemetry API and `tracing` each have one global; if the app installed its
//! own metrics recorder or tracing subscriber first, the mesh emits into those and
//! logs at start-up that it serves no endpoint of its own.
//!
//! Cargo features keep the heavy parts optional: `prometheus` (the recorder and
//! endpoint) and `otlp` (tonic and hyper exporters). Without them the layers still
//! emit through the `metrics` facade and `tracing`.

mod context;
mod error;
pub mod handles;
#[cfg(feature = "prometheus")]
mod histogram;
mod log_context;
#[cfg(feature = "otlp")]
pub mod metrics_bridge;
mod otel_env;
#[cfg(feature = "otlp")]
mod otlp;
#[cfg(feature = "prometheus")]
mod prometheus;
pub mod propagation;
#[cfg(feature = "prometheus")]
mod registry;
mod sampling;
mod w3c;

use std::net::SocketAddr;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::resource::{EnvResourceDetector, TelemetryResourceDetector};
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

pub use context::{
    body_size, carries_context, context_trace_id, extract, extract_if_present, inject, method_code,
    method_label, record_spans, set_parent, set_parent_from_headers, spans_on, status_label,
    trace_id,
};
pub use error::TelemetryError;
pub use handles::{HandleCache, HandleSlot};
pub use log_context::{TraceIdFormat, TraceIds};
/// The OpenTelemetry context (trace and baggage) a request carries, as
/// [`extract`] returns it.
pub use opentelemetry::Context as OtelContext;
pub use otel_env::{
    MetricsExporterKind, OtelSettings, OtlpProtocol, OtlpTarget, PropagatorKind, SamplerKind,
};
#[cfg(feature = "prometheus")]
pub use prometheus::CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE;
pub use sampling::{head, Head, SpanStart};

#[cfg(feature = "prometheus")]
pub use prometheus::PrometheusHandle;

use crate::config::{Env, MeshConfig, Source};

/// Bucket boundaries in seconds for every duration histogram: the OpenTelemetry
/// semantic conventions' recommendation for `http.*.request.duration`. The
/// Prometheus endpoint gives them to every histogram that is not a body size,
/// the app's own included.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Bucket boundaries in bytes for body-size histograms (powers of four, 64 B to 256 MiB).
pub const SIZE_BUCKETS: [f64; 12] = [
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    268435456.0,
];

/// Sets telemetry up from `config` and the process's `OTEL_*` variables, and
/// installs a default `tracing` subscriber (`RUST_LOG` filter, formatted lines
/// ending in `trace_id=… span_id=…` inside a trace ([`TraceIdFormat`]), spans
/// exported) unless the app installed one. Needs a tokio runtime.
pub fn init(config: &MeshConfig) -> Result<TelemetryGuard, TelemetryError> {
    builder(config).init()
}

/// Starts a telemetry set-up with choices [`init`] makes for you.
pub fn builder(config: &MeshConfig) -> TelemetryBuilder<'_> {
    TelemetryBuilder {
        config,
        install_subscriber: true,
    }
}

/// Telemetry set-up with choices; see [`init`].
#[derive(Debug)]
pub struct TelemetryBuilder<'a> {
    config: &'a MeshConfig,
    install_subscriber: bool,
}

impl TelemetryBuilder<'_> {
    /// Whether to install the default `tracing` subscriber (on by default). Turn it
    /// off to compose your own with [`TelemetryGuard::otel_layer`].
    pub fn install_subscriber(mut self, install: bool) -> Self {
        self.install_subscriber = install;
        self
    }

    /// Reads `OTEL_*` from the process environment and sets everything up.
    pub fn init(self) -> Result<TelemetryGuard, TelemetryError> {
        self.init_from(&Env)
    }

    /// Reads `OTEL_*` from `source` (tests, apps with settings elsewhere).
    pub fn init_from(
        self,
        source: &(impl Source + ?Sized),
    ) -> Result<TelemetryGuard, TelemetryError> {
        let settings = OtelSettings::from_source(source).map_err(TelemetryError::config)?;
        let mut guard = TelemetryGuard::default();

        propagation::install(&settings.propagators);
        let resource = resource(self.config.service_name());

        self.install_metrics(&settings, &resource, &mut guard)?;

        if !settings.sdk_disabled {
            let mut provider = SdkTracerProvider::builder()
                .with_sampler(sampler(settings.sampler))
                .with_id_generator(sampling::PinnedIds::default())
                .with_resource(resource);
            if let Some(target) = &settings.traces {
                provider = provider.with_batch_exporter(span_exporter(target, &mut guard)?);
                guard.span_exporter = true;
            }
            let provider = provider.build();
            opentelemetry::global::set_tracer_provider(provider.clone());
            guard.tracer = Some(provider.tracer("mesh"));
            guard.tracer_provider = Some(provider);
        }
        // Spans only where someone will see them: an exporter is running and the
        // sampler can keep something. Trace context is carried either way.
        sampling::configure(settings.sampler, !settings.sdk_disabled);
        record_spans(guard.span_exporter && !matches!(settings.sampler, SamplerKind::AlwaysOff));

        if self.install_subscriber {
            install_subscriber(&guard);
        }
        Ok(guard)
    }

    fn install_metrics(
        &self,
        settings: &OtelSettings,
        resource: &Resource,
        #[allow(unused_variables)] guard: &mut TelemetryGuard,
    ) -> Result<(), TelemetryError> {
        let addr = self.config.metrics_addr();
        match settings.metrics_exporter {
            MetricsExporterKind::Otlp if addr.is_some() => {
                return Err(TelemetryError::unavailable(
                    "MESH_METRICS_ADDR and OTEL_METRICS_EXPORTER=otlp both ask for the one metrics recorder: unset one of them",
                ))
            }
            MetricsExporterKind::Otlp => {
                let _ = resource;
                #[cfg(feature = "otlp")]
                if let Some(target) = &settings.metrics {
                    let rt = export_runtime(guard)?;
                    let exporter = otlp::metric_exporter(target, rt)?;
                    let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(exporter)
                        .with_interval(settings.metric_export_interval)
                        .build();
                    let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
                        .with_reader(reader)
                        .with_resource(resource.clone())
                        .build();
                    use opentelemetry::metrics::MeterProvider as _;
                    let recorder = metrics_bridge::OtelRecorder::new(provider.meter("mesh"));
                    if metrics::set_global_recorder(recorder).is_err() {
                        app_recorder_notice();
                        guard.app_recorder = true;
                    } else {
                        guard.metric_exporter = true;
                    }
                    guard.meter_provider = Some(provider);
                }
                #[cfg(not(feature = "otlp"))]
                if settings.metrics.is_some() {
                    return Err(TelemetryError::unavailable(
                        "OTEL_METRICS_EXPORTER=otlp needs mesh-core's `otlp` cargo feature",
                    ));
                }
            }
            MetricsExporterKind::Prometheus => {
                #[cfg(feature = "prometheus")]
                match prometheus::install(addr)? {
                    prometheus::Installed::Ours {
                        recorder,
                        addr,
                        tasks,
                    } => {
                        guard.prometheus = Some(recorder);
                        guard.metrics_addr = addr;
                        guard.tasks.extend(tasks);
                        if let Some(addr) = addr {
                            tracing::info!(%addr, "serving Prometheus metrics at /metrics");
                        }
                    }
                    prometheus::Installed::AppRecorder => {
                        app_recorder_notice();
                        guard.app_recorder = true;
                    }
                }
                #[cfg(not(feature = "prometheus"))]
                if addr.is_some() {
                    return Err(TelemetryError::unavailable(
                        "MESH_METRICS_ADDR needs mesh-core's `prometheus` cargo feature",
                    ));
                }
            }
            MetricsExporterKind::None => {}
        }
        // Described after installing, so whichever recorder is global prints HELP
        // lines and units. Our own Prometheus recorder knows them already
        // (`prometheus::mesh_help`): describing them would only cost start-up time.
        #[cfg(feature = "prometheus")]
        let described = guard.prometheus.is_some();
        #[cfg(not(feature = "prometheus"))]
        let described = false;
        if !described {
            crate::metric_names::describe_all();
        }
        Ok(())
    }
}

#[allow(dead_code)] // unused when both exporter features are off
fn app_recorder_notice() {
    tracing::info!(
        "the app installed its own `metrics` recorder: the mesh emits its metrics there and serves no endpoint of its own"
    );
}

/// What `Resource::builder()` detects, named `service_name`, without its
/// SDK-provided detector: that one only supplies a `service.name` (from
/// `OTEL_SERVICE_NAME`, else the executable's name: a `readlink` of
/// /proc/self/exe at start-up) which is replaced here anyway.
fn resource(service_name: &str) -> Resource {
    Resource::builder_empty()
        .with_detectors(&[
            Box::new(TelemetryResourceDetector),
            Box::new(EnvResourceDetector::new()),
        ])
        .with_service_name(service_name.to_string())
        .build()
}

fn sampler(kind: SamplerKind) -> Sampler {
    match kind {
        SamplerKind::AlwaysOn => Sampler::AlwaysOn,
        SamplerKind::AlwaysOff => Sampler::AlwaysOff,
        SamplerKind::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
        SamplerKind::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        SamplerKind::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        SamplerKind::ParentBasedTraceIdRatio(r) => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))
        }
    }
}

#[cfg(feature = "otlp")]
fn export_runtime(guard: &mut TelemetryGuard) -> Result<&otlp::ExportRuntime, TelemetryError> {
    if guard.export_runtime.is_none() {
        guard.export_runtime = Some(otlp::ExportRuntime::new()?);
    }
    Ok(guard.export_runtime.as_ref().expect("just set"))
}

#[cfg(feature = "otlp")]
fn span_exporter(
    target: &OtlpTarget,
    guard: &mut TelemetryGuard,
) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    otlp::span_exporter(target, export_runtime(guard)?)
}

/// Stands in for the OTLP exporter type when the feature is off; never built.
#[cfg(not(feature = "otlp"))]
#[derive(Debug)]
struct NoExporter;

#[cfg(not(feature = "otlp"))]
impl opentelemetry_sdk::trace::SpanExporter for NoExporter {
    async fn export(
        &self,
        _: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

#[cfg(not(feature = "otlp"))]
fn span_exporter(_: &OtlpTarget, _: &mut TelemetryGuard) -> Result<NoExporter, TelemetryError> {
    Err(TelemetryError::unavailable(
        "OTEL_TRACES_EXPORTER=otlp (or an OTLP endpoint) needs mesh-core's `otlp` cargo feature",
    ))
}

/// The mesh's own spans (a call, an attempt, an inbound request) are for the
/// span exporter. The fmt layer would format their fields into a string the
/// moment each is built, for log lines that mostly never come: about 10k
/// instructions per span. Log lines keep their trace: [`TraceIdFormat`] ends
/// them with `trace_id=… span_id=…`.
fn is_mesh_span(meta: &tracing::Metadata<'_>) -> bool {
    meta.is_span() && meta.target().starts_with("mesh_http::telemetry")
}

fn install_subscriber(guard: &TelemetryGuard) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer as _;
    let filter =
        log_filter(std::env::var_os(tracing_subscriber::EnvFilter::DEFAULT_ENV).as_deref());
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .event_format(TraceIdFormat::new(tracing_subscriber::fmt::format()))
                .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                    !is_mesh_span(meta)
                })),
        )
        .with(guard.otel_layer())
        .try_init();
    if installed.is_err() {
        tracing::info!(
            "a tracing subscriber is already installed: add TelemetryGuard::otel_layer() to it so spans are exported"
        );
    }
}

/// The subscriber's filter: `RUST_LOG`'s directives (`info` when they do not
/// parse), or `info` when it is not set. Unset, the filter is the level alone,
/// without an `EnvFilter`: its parser is code start-up would touch for this
/// only (three page faults of a cold start, BENCHMARKS.md).
fn log_filter(
    rust_log: Option<&std::ffi::OsStr>,
) -> Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync> {
    use tracing_subscriber::filter::{EnvFilter, LevelFilter};
    match rust_log {
        None => Box::new(LevelFilter::INFO),
        Some(directives) => Box::new(
            directives
                .to_str()
                .and_then(|directives| EnvFilter::try_new(directives).ok())
                .unwrap_or_else(|| EnvFilter::new("info")),
        ),
    }
}

/// Keeps telemetry running; flushes spans and metrics and stops the endpoint when
/// dropped (or at [`shutdown`](Self::shutdown)).
#[derive(Default)]
pub struct TelemetryGuard {
    #[cfg(feature = "prometheus")]
    prometheus: Option<prometheus::Recorder>,
    metrics_addr: Option<SocketAddr>,
    app_recorder: bool,
    span_exporter: bool,
    metric_exporter: bool,
    tracer: Option<SdkTracer>,
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<opentelemetry_sdk::metrics::SdkMeterProvider>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    #[cfg(feature = "otlp")]
    export_runtime: Option<otlp::ExportRuntime>,
}

impl std::fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryGuard")
            .field("metrics_addr", &self.metrics_addr)
            .field("app_recorder", &self.app_recorder)
            .field("span_exporter", &self.span_exporter)
            .field("metric_exporter", &self.metric_exporter)
            .finish_non_exhaustive()
    }
}

impl TelemetryGuard {
    /// Renders `/metrics` for a route in the app's own router; `None` when the app
    /// installed its own recorder or metrics go over OTLP.
    ///
    /// ```ignore
    /// let handle = telemetry.prometheus_handle().unwrap();
    /// let app = axum::Router::new().route("/metrics", get(move || async move { handle.render() }));
    /// ```
    #[cfg(feature = "prometheus")]
    pub fn prometheus_handle(&self) -> Option<PrometheusHandle> {
        self.prometheus.as_ref().map(prometheus::Recorder::handle)
    }

    /// Where the Prometheus endpoint listens (the bound port when
    /// `MESH_METRICS_ADDR` ends in `:0`).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Whether the app had installed its own `metrics` recorder (the mesh emits
    /// into it).
    pub fn uses_app_recorder(&self) -> bool {
        self.app_recorder
    }

    /// Whether spans are exported over OTLP.
    pub fn exports_spans(&self) -> bool {
        self.span_exporter
    }

    /// Whether metrics are pushed over OTLP.
    pub fn exports_metrics(&self) -> bool {
        self.metric_exporter
    }

    /// Whether any exporter (OTLP push, Prometheus endpoint) is running.
    pub fn any_exporter_running(&self) -> bool {
        self.span_exporter || self.metric_exporter || self.metrics_addr.is_some()
    }

    /// A `tracing` layer that turns spans into OpenTelemetry spans of this set-up,
    /// for apps that compose their own subscriber; does nothing when the SDK is
    /// disabled.
    pub fn otel_layer<S>(&self) -> Option<tracing_opentelemetry::OpenTelemetryLayer<S, SdkTracer>>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        self.tracer
            .clone()
            .map(|tracer| tracing_opentelemetry::layer().with_tracer(tracer))
    }

    /// Exports what is buffered now, without stopping.
    pub fn flush(&self) {
        if let Some(provider) = &self.tracer_provider {
            let _ = provider.force_flush();
        }
        if let Some(provider) = &self.meter_provider {
            let _ = provider.force_flush();
        }
    }

    /// Flushes and stops everything; what dropping the guard does.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(provider) = self.tracer_provider.take() {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "flushing spans at shutdown failed");
            }
        }
        if let Some(provider) = self.meter_provider.take() {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "flushing metrics at shutdown failed");
            }
        }
        for task in self.tasks.drain(..) {
            task.abort();
        }
        self.span_exporter = false;
        self.metric_exporter = false;
        self.metrics_addr = None;
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resource_is_what_the_sdk_default_detects_under_our_service_name() {
        let sdk = Resource::builder().with_service_name("checkout").build();
        assert_eq!(resource("checkout"), sdk);
        assert!(resource("checkout")
            .iter()
            .any(|(k, v)| k.as_str() == "telemetry.sdk.name" && v.as_str() == "opentelemetry"));
    }

    #[test]
    fn the_log_filter_is_info_unless_rust_log_says_otherwise() {
        use std::ffi::OsStr;
        use tracing_subscriber::filter::LevelFilter;
        let hint = |rust_log: Option<&str>| log_filter(rust_log.map(OsStr::new)).max_level_hint();
        assert_eq!(hint(None), Some(LevelFilter::INFO));
        assert_eq!(hint(Some("debug")), Some(LevelFilter::DEBUG));
        assert_eq!(hint(Some("warn,mesh_http=trace")), Some(LevelFilter::TRACE));
        // Directives that do not parse fall back to `info`, as unset does.
        assert_eq!(hint(Some("mesh_http=loud")), Some(LevelFilter::INFO));
        assert_eq!(
            hint(Some("")),
            tracing_subscriber::EnvFilter::try_new("")
                .unwrap()
                .max_level_hint()
        );
    }
}
