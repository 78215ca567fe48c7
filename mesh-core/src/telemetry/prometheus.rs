//! The Prometheus recorder: histograms as real buckets, recommended naming
//! (`_total` on counters, unit suffixes), a HELP line for every mesh metric, and
//! the exporter's upkeep run so histogram memory does not grow. The recorder is
//! built once start-up is over ([`deferred`](super::deferred)): building it
//! calibrates a clock for a millisecond or two.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use super::deferred::{self, Shared};
use super::{TelemetryError, DURATION_BUCKETS, SIZE_BUCKETS};
use crate::metric_names;

/// How often the exporter's upkeep runs (it drains histogram samples).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The outcome of installing the Prometheus recorder.
pub(super) enum Installed {
    /// Ours is the global recorder; `/metrics` renders from `recorder`'s
    /// handle once it is built.
    Ours {
        recorder: Recorder,
        /// Where the scrape endpoint listens, if `MESH_METRICS_ADDR` asked for one.
        addr: Option<SocketAddr>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    },
    /// The app installed a recorder first; the mesh's metrics go there.
    AppRecorder,
}

fn builder() -> Result<PrometheusBuilder, TelemetryError> {
    let mut builder = PrometheusBuilder::new()
        .with_recommended_naming(true)
        .set_buckets(&DURATION_BUCKETS)
        .map_err(TelemetryError::prometheus)?;
    for def in metric_names::ALL {
        if def.instrument == metric_names::Instrument::Histogram
            && def.unit == metric_names::Unit::Bytes
        {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(def.name.to_string()), &SIZE_BUCKETS)
                .map_err(TelemetryError::prometheus)?;
        }
    }
    Ok(builder)
}

/// Installs our recorder as the global one, with a scrape endpoint on `addr` if
/// given. Needs a tokio runtime.
pub(super) fn install(addr: Option<SocketAddr>) -> Result<Installed, TelemetryError> {
    // Bind first: a busy port fails start-up before anything is installed.
    let listener = match addr {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(tokio::net::TcpListener::from_std)
                .map_err(|e| TelemetryError::metrics_listener(addr, e))?,
        ),
        None => None,
    };
    let builder = builder()?;
    let (global, shared) = deferred::start(move || builder.build_recorder());
    if metrics::set_global_recorder(global).is_err() {
        // Never built: the app's recorder gets everything.
        return Ok(Installed::AppRecorder);
    }
    let recorder = Recorder(shared);
    let upkeep = recorder.clone();
    let mut tasks = vec![tokio::spawn(async move {
        // Built once start-up is over, unless a scrape or piling-up samples
        // asked for it sooner (see `deferred`).
        upkeep.0.clone().build_after(deferred::BUILD_AFTER).await;
        // The first upkeep one interval from now, not at once: nothing to drain
        // yet, and the recorder may still be being built.
        let start = tokio::time::Instant::now() + UPKEEP_INTERVAL;
        let mut tick = tokio::time::interval_at(start, UPKEEP_INTERVAL);
        loop {
            tick.tick().await;
            upkeep.handle().run_upkeep();
        }
    })];
    let mut bound = None;
    if let Some(listener) = listener {
        bound = listener.local_addr().ok();
        tasks.push(tokio::spawn(serve(listener, recorder.clone())));
    }
    Ok(Installed::Ours {
        recorder,
        addr: bound,
        tasks,
    })
}

/// Our global Prometheus recorder, built or being built.
#[derive(Debug, Clone)]
pub(super) struct Recorder(Arc<Shared<PrometheusRecorder>>);

impl Recorder {
    /// The handle that renders `/metrics`; builds the recorder here if nothing
    /// has yet, or waits for the build running (a millisecond or two).
    pub(super) fn handle(&self) -> PrometheusHandle {
        self.0.recorder().handle()
    }
}

/// A deliberately tiny HTTP/1.1 server: `GET /metrics` and nothing else, one
/// request per connection. Owning it (rather than the exporter crate's listener)
/// lets us bind before installing, report the bound port (`:0` in tests and the
/// quickstart) and stop it when the guard drops.
async fn serve(listener: tokio::net::TcpListener, recorder: Recorder) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let handle = recorder.handle();
        tokio::spawn(async move {
            // A scraper that stalls must not hold a task forever.
            let _ = tokio::time::timeout(SCRAPE_TIMEOUT, answer(stream, &handle)).await;
        });
    }
}

const SCRAPE_TIMEOUT: Duration = Duration::from_secs(30);

async fn answer(
    mut stream: tokio::net::TcpStream,
    handle: &PrometheusHandle,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target) = (parts.next(), parts.next());
    let path = target.map(|t| t.split(|&b| b == b'?').next().unwrap_or_default());
    let (status, body) = match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => ("200 OK", handle.render()),
        (Some(b"GET"), _) => ("404 Not Found", "metrics are served at /metrics\n".into()),
        _ => ("405 Method Not Allowed", String::new()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {CONTENT_TYPE}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// The Prometheus text exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metric_names::{Instrument, ALL};

    /// The names dashboards and rules are checked against (`prometheus_name`) are
    /// the names this exporter renders, with HELP and TYPE lines, for every metric.
    #[test]
    fn every_metric_renders_under_its_prometheus_name_with_help() {
        let recorder = builder().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metric_names::describe_all();
            for def in ALL {
                match def.instrument {
                    Instrument::Counter => metrics::counter!(def.name).increment(1),
                    Instrument::Gauge => metrics::gauge!(def.name).set(1.0),
                    Instrument::Histogram => metrics::histogram!(def.name).record(0.02),
                }
            }
        });
        let text = handle.render();
        for def in ALL {
            let name = def.prometheus_name();
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "no HELP for {name}:\n{text}"
            );
            let kind = match def.instrument {
                Instrument::Counter => "counter",
                Instrument::Gauge => "gauge",
                Instrument::Histogram => "histogram",
            };
            assert!(
                text.contains(&format!("# TYPE {name} {kind}")),
                "{name} is not a {kind}:\n{text}"
            );
        }
        assert!(
            text.contains(r#"http_client_request_duration_seconds_bucket{le="0.025"} 1"#),
            "durations use the semantic conventions' buckets:\n{text}"
        );
    }
}
