//! Why telemetry could not start.

use std::fmt;
use std::net::SocketAddr;

use crate::config::ConfigError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why [`init`](super::init) failed: opaque, with `is_*` checks.
pub struct TelemetryError {
    kind: Kind,
    source: Option<BoxError>,
}

#[derive(Debug)]
enum Kind {
    Config,
    #[allow(dead_code)] // only with the `prometheus` feature
    MetricsListener(SocketAddr),
    Otlp(&'static str),
    Unavailable(String),
}

impl TelemetryError {
    pub(super) fn config(e: ConfigError) -> Self {
        TelemetryError {
            kind: Kind::Config,
            source: Some(Box::new(e)),
        }
    }

    #[allow(dead_code)] // only with the `prometheus` feature
    pub(crate) fn metrics_listener(addr: SocketAddr, e: impl Into<BoxError>) -> Self {
        TelemetryError {
            kind: Kind::MetricsListener(addr),
            source: Some(e.into()),
        }
    }

    #[allow(dead_code)] // only with the `otlp` feature
    pub(crate) fn otlp(what: &'static str, e: impl Into<BoxError>) -> Self {
        TelemetryError {
            kind: Kind::Otlp(what),
            source: Some(e.into()),
        }
    }

    pub(super) fn unavailable(why: impl Into<String>) -> Self {
        TelemetryError {
            kind: Kind::Unavailable(why.into()),
            source: None,
        }
    }

    /// A `MESH_` or `OTEL_*` variable is invalid; the message names it.
    pub fn is_config(&self) -> bool {
        matches!(self.kind, Kind::Config)
    }

    /// The Prometheus endpoint could not listen on `MESH_METRICS_ADDR`.
    pub fn is_metrics_listener(&self) -> bool {
        matches!(self.kind, Kind::MetricsListener(_))
    }

    /// An OTLP exporter could not be built.
    pub fn is_otlp(&self) -> bool {
        matches!(self.kind, Kind::Otlp(_))
    }

    /// The settings ask for something this build cannot do (a cargo feature is
    /// off, or two settings conflict); the message says which.
    pub fn is_unavailable(&self) -> bool {
        matches!(self.kind, Kind::Unavailable(_))
    }
}

impl fmt::Debug for TelemetryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("TelemetryError");
        d.field("kind", &self.kind);
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for TelemetryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Config => {}
            Kind::MetricsListener(addr) => write!(
                f,
                "MESH_METRICS_ADDR: cannot listen on {addr} for the Prometheus endpoint: "
            )?,
            Kind::Otlp(what) => write!(f, "cannot {what}: ")?,
            Kind::Unavailable(why) => return f.write_str(why),
        }
        match &self.source {
            Some(source) => write!(f, "{source}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for TelemetryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}
