//! The standard `OTEL_*` variables, read and validated once at start-up.
//!
//! They keep the meaning the OpenTelemetry specification gives them. We read them
//! ourselves, through the same [`Source`] as the `MESH_` settings, for two reasons:
//! the Rust SDK ignores several of them (`OTEL_SDK_DISABLED`, `OTEL_PROPAGATORS`,
//! `OTEL_TRACES_EXPORTER`, `OTEL_METRICS_EXPORTER`, the OTLP protocol), and a typo in
//! one should stop the service at start-up with the variable's name, not be
//! silently ignored. Tests hand in a map; nothing reads the process environment
//! behind their back.

use std::time::Duration;

use crate::config::{value, ConfigError, Origin, Problem, Source};

/// Which OTLP transport an exporter uses (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (default port 4317).
    Grpc,
    /// OTLP over HTTP with protobuf bodies (default port 4318): the SDK default.
    HttpProtobuf,
}

impl OtlpProtocol {
    fn parse(s: &str) -> Result<Self, &'static str> {
        match s.trim() {
            "grpc" => Ok(OtlpProtocol::Grpc),
            "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
            "http/json" => Err("`grpc` or `http/protobuf` (`http/json` is not supported)"),
            _ => Err("`grpc` or `http/protobuf`"),
        }
    }
}

/// Where one signal goes over OTLP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpTarget {
    /// Transport.
    pub protocol: OtlpProtocol,
    /// Full URL: for HTTP it includes the signal path (`/v1/traces`).
    pub endpoint: String,
    /// Export timeout (`OTEL_EXPORTER_OTLP_TIMEOUT`, default 10 s).
    pub timeout: Duration,
    /// Extra headers (`OTEL_EXPORTER_OTLP_HEADERS`, `key=value,…`).
    pub headers: Vec<(String, String)>,
}

/// A trace context format for `OTEL_PROPAGATORS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropagatorKind {
    /// W3C `traceparent` / `tracestate`.
    TraceContext,
    /// W3C `baggage`.
    Baggage,
    /// Zipkin B3, one `b3` header.
    B3,
    /// Zipkin B3, `X-B3-*` headers.
    B3Multi,
}

/// `OTEL_TRACES_SAMPLER` with its argument.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerKind {
    /// Record every trace.
    AlwaysOn,
    /// Record none.
    AlwaysOff,
    /// Record this share of traces, by trace ID.
    TraceIdRatio(f64),
    /// Follow the caller's decision; root spans always on.
    ParentBasedAlwaysOn,
    /// Follow the caller's decision; root spans always off.
    ParentBasedAlwaysOff,
    /// Follow the caller's decision; root spans by ratio.
    ParentBasedTraceIdRatio(f64),
}

/// Where metrics go (`OTEL_METRICS_EXPORTER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsExporterKind {
    /// A Prometheus recorder: scraped on `MESH_METRICS_ADDR` or mounted by the app.
    Prometheus,
    /// Pushed over OTLP (for serverless: nobody scrapes a function).
    Otlp,
    /// No exporter of our own (an app-installed recorder still receives them).
    None,
}

/// The telemetry settings of the `OTEL_*` variables.
#[derive(Debug, Clone, PartialEq)]
pub struct OtelSettings {
    /// `OTEL_SDK_DISABLED=true`: no tracer or meter provider, no exporter.
    pub sdk_disabled: bool,
    /// `OTEL_PROPAGATORS` (default `tracecontext,baggage`).
    pub propagators: Vec<PropagatorKind>,
    /// Where spans go (`OTEL_TRACES_EXPORTER`), `None` for nowhere.
    pub traces: Option<OtlpTarget>,
    /// Where metrics go (`OTEL_METRICS_EXPORTER`).
    pub metrics_exporter: MetricsExporterKind,
    /// The OTLP target for metrics, when `metrics_exporter` is OTLP.
    pub metrics: Option<OtlpTarget>,
    /// `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (default parent-based always-on).
    pub sampler: SamplerKind,
    /// `OTEL_METRIC_EXPORT_INTERVAL` (default 60 s).
    pub metric_export_interval: Duration,
}

impl OtelSettings {
    /// Reads the `OTEL_*` variables from `source`; every bad one is reported at once.
    ///
    /// One deliberate difference from the specification: when
    /// `OTEL_TRACES_EXPORTER` is unset, spans are exported over OTLP only if an OTLP
    /// endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT` or its traces variant). A
    /// library that a service merely links should not start pushing to
    /// `localhost:4317` and log export failures every few seconds.
    pub fn from_source(source: &(impl Source + ?Sized)) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let get = |name: &str| source.get(name).filter(|v| !v.trim().is_empty());
        let sdk_disabled = get("OTEL_SDK_DISABLED")
            .map(|v| match v.trim().to_ascii_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(v),
            })
            .transpose()
            .unwrap_or_else(|v| {
                problems.push(Problem::invalid(
                    Origin::Variable("OTEL_SDK_DISABLED".into()),
                    &v,
                    "`true` or `false`",
                ));
                None
            })
            .unwrap_or(false);

        let mut propagators = vec![PropagatorKind::TraceContext, PropagatorKind::Baggage];
        if let Some(v) = get("OTEL_PROPAGATORS") {
            match parse_propagators(&v) {
                Ok(list) => propagators = list,
                Err(expected) => problems.push(Problem::invalid(
                    Origin::Variable("OTEL_PROPAGATORS".into()),
                    &v,
                    expected,
                )),
            }
        }

        // Checked even when no exporter uses them yet, so a typo never waits for
        // the day someone turns export on.
        for name in [
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        ] {
            if let Some(v) = get(name) {
                if let Err(expected) = OtlpProtocol::parse(&v) {
                    problems.push(Problem::invalid(
                        Origin::Variable(name.into()),
                        &v,
                        expected,
                    ));
                }
            }
        }

        let endpoint_any = get("OTEL_EXPORTER_OTLP_ENDPOINT");
        let traces_kind = match get("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
            None => endpoint_any
                .is_some()
                .then_some("otlp")
                .or(get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").map(|_| "otlp")),
            Some("otlp") => Some("otlp"),
            Some("none") => None,
            Some(other) => {
                problems.push(Problem::invalid(
                    Origin::Variable("OTEL_TRACES_EXPORTER".into()),
                    other,
                    "`otlp` or `none`",
                ));
                None
            }
        };
        let metrics_exporter = match get("OTEL_METRICS_EXPORTER").as_deref().map(str::trim) {
            None | Some("prometheus") => MetricsExporterKind::Prometheus,
            Some("otlp") => MetricsExporterKind::Otlp,
            Some("none") => MetricsExporterKind::None,
            Some(other) => {
                problems.push(Problem::invalid(
                    Origin::Variable("OTEL_METRICS_EXPORTER".into()),
                    other,
                    "`prometheus`, `otlp` or `none`",
                ));
                MetricsExporterKind::Prometheus
            }
        };

        let protocol_of = |signal: &str| {
            get(&format!("OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"))
                .or_else(|| get("OTEL_EXPORTER_OTLP_PROTOCOL"))
                .and_then(|v| OtlpProtocol::parse(&v).ok())
                .unwrap_or(OtlpProtocol::HttpProtobuf)
        };
        let timeout_of = |signal: &str, problems: &mut Vec<Problem>| {
            let name = format!("OTEL_EXPORTER_OTLP_{signal}_TIMEOUT");
            let (name, value) = match get(&name) {
                Some(v) => (name, Some(v)),
                None => (
                    "OTEL_EXPORTER_OTLP_TIMEOUT".into(),
                    get("OTEL_EXPORTER_OTLP_TIMEOUT"),
                ),
            };
            match value {
                None => Duration::from_secs(10),
                // The specification gives the timeout in milliseconds.
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(ms) => Duration::from_millis(ms),
                    Err(_) => {
                        problems.push(Problem::invalid(
                            Origin::Variable(name),
                            &v,
                            "a whole number of milliseconds, such as 10000",
                        ));
                        Duration::from_secs(10)
                    }
                },
            }
        };
        let headers_of = |signal: &str, problems: &mut Vec<Problem>| {
            let name = format!("OTEL_EXPORTER_OTLP_{signal}_HEADERS");
            let (name, value) = match get(&name) {
                Some(v) => (name, Some(v)),
                None => (
                    "OTEL_EXPORTER_OTLP_HEADERS".into(),
                    get("OTEL_EXPORTER_OTLP_HEADERS"),
                ),
            };
            let Some(v) = value else { return Vec::new() };
            let mut headers = Vec::new();
            for pair in value::list(&v) {
                match pair.split_once('=') {
                    Some((k, val)) if !k.trim().is_empty() => {
                        headers.push((k.trim().to_string(), val.trim().to_string()))
                    }
                    _ => {
                        problems.push(Problem::invalid(
                            Origin::Variable(name.clone()),
                            &v,
                            "comma-separated key=value pairs",
                        ));
                        break;
                    }
                }
            }
            headers
        };
        let target = |signal: &str, path: &str, problems: &mut Vec<Problem>| {
            let protocol = protocol_of(signal);
            let specific = format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT");
            let (name, endpoint) = match get(&specific) {
                // A signal-specific endpoint is used as given.
                Some(e) => (specific, e.trim().to_string()),
                None => {
                    let base = endpoint_any.clone().unwrap_or_else(|| match protocol {
                        OtlpProtocol::Grpc => "http://localhost:4317".into(),
                        OtlpProtocol::HttpProtobuf => "http://localhost:4318".into(),
                    });
                    let base = base.trim().trim_end_matches('/').to_string();
                    let endpoint = match protocol {
                        OtlpProtocol::Grpc => base,
                        OtlpProtocol::HttpProtobuf => format!("{base}{path}"),
                    };
                    ("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), endpoint)
                }
            };
            match endpoint.parse::<http::Uri>() {
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("http" | "https"))
                        && uri.host().is_some() => {}
                _ => problems.push(Problem::invalid(
                    Origin::Variable(name),
                    &endpoint,
                    "an http:// or https:// URL such as http://localhost:4317",
                )),
            }
            OtlpTarget {
                protocol,
                endpoint,
                timeout: timeout_of(signal, problems),
                headers: headers_of(signal, problems),
            }
        };
        let traces = traces_kind.map(|_| target("TRACES", "/v1/traces", &mut problems));
        let metrics = (metrics_exporter == MetricsExporterKind::Otlp)
            .then(|| target("METRICS", "/v1/metrics", &mut problems));

        let ratio = |problems: &mut Vec<Problem>| match get("OTEL_TRACES_SAMPLER_ARG") {
            None => 1.0,
            Some(v) => match v.trim().parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => r,
                _ => {
                    problems.push(Problem::invalid(
                        Origin::Variable("OTEL_TRACES_SAMPLER_ARG".into()),
                        &v,
                        "a ratio between 0 and 1, such as 0.1",
                    ));
                    1.0
                }
            },
        };
        let sampler = match get("OTEL_TRACES_SAMPLER").as_deref().map(str::trim) {
            None | Some("parentbased_always_on") => SamplerKind::ParentBasedAlwaysOn,
            Some("always_on") => SamplerKind::AlwaysOn,
            Some("always_off") => SamplerKind::AlwaysOff,
            Some("parentbased_always_off") => SamplerKind::ParentBasedAlwaysOff,
            Some("traceidratio") => SamplerKind::TraceIdRatio(ratio(&mut problems)),
            Some("parentbased_traceidratio") => {
                SamplerKind::ParentBasedTraceIdRatio(ratio(&mut problems))
            }
            Some(other) => {
                problems.push(Problem::invalid(
                    Origin::Variable("OTEL_TRACES_SAMPLER".into()),
                    other,
                    "`always_on`, `always_off`, `traceidratio`, `parentbased_always_on`, `parentbased_always_off` or `parentbased_traceidratio`",
                ));
                SamplerKind::ParentBasedAlwaysOn
            }
        };

        let mut metric_export_interval = Duration::from_secs(60);
        if let Some(v) = get("OTEL_METRIC_EXPORT_INTERVAL") {
            match v.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => metric_export_interval = Duration::from_millis(ms),
                _ => problems.push(Problem::invalid(
                    Origin::Variable("OTEL_METRIC_EXPORT_INTERVAL".into()),
                    &v,
                    "a positive whole number of milliseconds, such as 60000",
                )),
            }
        }

        if !problems.is_empty() {
            return Err(ConfigError::new(problems));
        }
        Ok(OtelSettings {
            sdk_disabled,
            propagators,
            traces: if sdk_disabled { None } else { traces },
            metrics_exporter,
            metrics: if sdk_disabled { None } else { metrics },
            sampler,
            metric_export_interval,
        })
    }
}

fn parse_propagators(v: &str) -> Result<Vec<PropagatorKind>, &'static str> {
    const EXPECTED: &str =
        "a comma-separated list of `tracecontext`, `baggage`, `b3`, `b3multi`, or `none`";
    let mut out = Vec::new();
    for name in value::list(v) {
        let kind = match name {
            "tracecontext" => PropagatorKind::TraceContext,
            "baggage" => PropagatorKind::Baggage,
            "b3" => PropagatorKind::B3,
            "b3multi" => PropagatorKind::B3Multi,
            "none" => continue,
            _ => return Err(EXPECTED),
        };
        if !out.contains(&kind) {
            out.push(kind);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(env: &[(&str, &str)]) -> Result<OtelSettings, ConfigError> {
        OtelSettings::from_source(env)
    }

    #[test]
    fn defaults_propagate_w3c_and_export_no_spans_without_an_endpoint() {
        let s = settings(&[]).unwrap();
        assert!(!s.sdk_disabled);
        assert_eq!(
            s.propagators,
            [PropagatorKind::TraceContext, PropagatorKind::Baggage]
        );
        assert_eq!(s.traces, None);
        assert_eq!(s.metrics_exporter, MetricsExporterKind::Prometheus);
        assert_eq!(s.sampler, SamplerKind::ParentBasedAlwaysOn);
    }

    #[test]
    fn an_otlp_endpoint_turns_span_export_on_with_the_signal_path_for_http() {
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/")]).unwrap();
        let traces = s.traces.unwrap();
        assert_eq!(traces.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(traces.endpoint, "http://127.0.0.1:4318/v1/traces");

        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=secret,x=y"),
        ])
        .unwrap();
        assert_eq!(s.traces.unwrap().endpoint, "http://127.0.0.1:4317");
        let metrics = s.metrics.unwrap();
        assert_eq!(metrics.protocol, OtlpProtocol::Grpc);
        assert_eq!(metrics.headers[0], ("api-key".into(), "secret".into()));
    }

    #[test]
    fn sdk_disabled_leaves_no_exporter_configured() {
        let s = settings(&[
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_METRICS_EXPORTER", "otlp"),
        ])
        .unwrap();
        assert!(s.sdk_disabled);
        assert_eq!(s.traces, None);
        assert_eq!(s.metrics, None);
    }

    #[test]
    fn bad_otel_variables_are_named_with_value_and_expectation() {
        let e = settings(&[
            ("OTEL_SDK_DISABLED", "yes"),
            ("OTEL_PROPAGATORS", "tracecontext,jaeger"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
            ("OTEL_METRICS_EXPORTER", "statsd"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "udp"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ])
        .unwrap_err();
        let text = e.to_string();
        for (var, value) in [
            ("OTEL_SDK_DISABLED", "yes"),
            ("OTEL_PROPAGATORS", "jaeger"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
            ("OTEL_METRICS_EXPORTER", "statsd"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "udp"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ] {
            assert!(e.names_variable(var), "{var} not named in: {text}");
            assert!(text.contains(value), "{value} not quoted in: {text}");
        }
        assert!(text.contains("`grpc` or `http/protobuf`"), "{text}");
    }

    #[test]
    fn a_bad_endpoint_is_a_start_up_error() {
        let e = settings(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "localhost:4317")]).unwrap_err();
        assert!(
            e.names_variable("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            "{e}"
        );
    }

    #[test]
    fn propagators_list_accepts_b3_and_none() {
        let s = settings(&[("OTEL_PROPAGATORS", "b3, tracecontext")]).unwrap();
        assert_eq!(
            s.propagators,
            [PropagatorKind::B3, PropagatorKind::TraceContext]
        );
        let s = settings(&[("OTEL_PROPAGATORS", "none")]).unwrap();
        assert!(s.propagators.is_empty());
    }
}
