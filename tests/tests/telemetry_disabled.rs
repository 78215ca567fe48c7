//! `OTEL_SDK_DISABLED=true` leaves no exporter running even when every exporter
//! is asked for; a bad telemetry variable stops start-up with an error naming it.
//!
//! The tracer provider is process-global, so the steps run in one order in one
//! test binary.

use std::time::Duration;

use mesh_core::config::MeshConfig;
use mesh_tests::otlp::OtlpReceiver;
use opentelemetry::trace::{Tracer, TracerProvider};

fn config() -> MeshConfig {
    MeshConfig::from_source(&[("MESH_SERVICE_NAME", "disabled")]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_disabled_runs_no_exporter_and_enabled_does() {
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    let disabled = [
        ("OTEL_SDK_DISABLED", "true"),
        ("OTEL_TRACES_EXPORTER", "otlp"),
        ("OTEL_METRICS_EXPORTER", "otlp"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "100"),
    ];
    let guard = mesh_core::telemetry::builder(&config())
        .install_subscriber(false)
        .init_from(&disabled)
        .expect("telemetry starts");
    assert!(!guard.any_exporter_running(), "{guard:?}");
    let span = opentelemetry::global::tracer("test").start("while-disabled");
    drop(span);
    metrics::counter!("mesh.config.reloads").increment(1);
    guard.flush();
    drop(guard);

    // The same settings with the SDK on: spans reach the receiver. This shows the
    // silence above was the switch, not a receiver nobody could reach.
    let enabled = [
        ("OTEL_TRACES_EXPORTER", "otlp"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
    ];
    let guard = mesh_core::telemetry::builder(&config())
        .install_subscriber(false)
        .init_from(&enabled)
        .expect("telemetry starts");
    assert!(guard.exports_spans());
    let span = opentelemetry::global::tracer_provider()
        .tracer("test")
        .start("while-enabled");
    drop(span);
    guard.flush();
    let spans = receiver
        .wait_for_spans(Duration::from_secs(30), |s| !s.is_empty())
        .await;
    let names: Vec<_> = spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["while-enabled"], "nothing from the disabled run");
    assert!(receiver.metric_names().is_empty(), "no metrics pushed");
}

#[tokio::test]
async fn a_bad_telemetry_variable_is_a_start_up_error_naming_it() {
    let e = mesh_core::telemetry::builder(&config())
        .install_subscriber(false)
        .init_from(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/xml")])
        .unwrap_err();
    assert!(e.is_config(), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{text}");
    assert!(text.contains("http/xml"), "{text}");
    assert!(text.contains("`grpc` or `http/protobuf`"), "{text}");

    let e = mesh_core::telemetry::builder(&config())
        .install_subscriber(false)
        .init_from(&[("OTEL_SDK_DISABLED", "maybe")])
        .unwrap_err();
    assert!(e.to_string().contains("OTEL_SDK_DISABLED=\"maybe\""), "{e}");
}
