//! The Prometheus recorder: histograms as real buckets, recommended naming
//! (`_total` on counters, unit suffixes), a HELP line for every mesh metric.
//!
//! Histograms are ours ([`histogram`](super::histogram)): fixed-bucket atomic
//! counts from the moment they are registered. Counters and gauges go to
//! `metrics-exporter-prometheus`'s recorder, built once start-up is over
//! ([`deferred`](super::deferred)): building it calibrates a clock for a
//! millisecond or two. One render writes both.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};
use metrics_exporter_prometheus::formatting::sanitize_metric_name;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

use super::deferred::{self, DeferredRecorder, Kind, Shared};
use super::histogram::HistogramRegistry;
use super::{TelemetryError, DURATION_BUCKETS, SIZE_BUCKETS};
use crate::metric_names;

/// The outcome of installing the Prometheus recorder.
pub(super) enum Installed {
    /// Ours is the global recorder; `/metrics` renders from `recorder`.
    Ours {
        recorder: Recorder,
        /// Where the scrape endpoint listens, if `MESH_METRICS_ADDR` asked for one.
        addr: Option<SocketAddr>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    },
    /// The app installed a recorder first; the mesh's metrics go there.
    AppRecorder,
}

/// The exporter's recorder, for counters and gauges: recommended naming.
fn builder() -> PrometheusBuilder {
    PrometheusBuilder::new().with_recommended_naming(true)
}

/// Whether units are added to names (the exporter's recommended naming).
const UNIT_SUFFIX: bool = true;

/// A histogram's bucket bounds, by its sanitized name: the size buckets for
/// the mesh's byte histograms, the duration buckets for every other one (the
/// app's own histograms included).
fn bounds_for(name: &str) -> &'static [f64] {
    let is_size = metric_names::ALL.iter().any(|def| {
        def.instrument == metric_names::Instrument::Histogram
            && def.unit == metric_names::Unit::Bytes
            && sanitize_metric_name(def.name) == name
    });
    if is_size {
        &SIZE_BUCKETS
    } else {
        &DURATION_BUCKETS
    }
}

/// The recorder to install as the global one, and what renders it.
fn recorder() -> (MeshRecorder, Recorder) {
    let histograms = Arc::new(HistogramRegistry::new(bounds_for));
    let (deferred, shared) = deferred::start(move || builder().build_recorder());
    let global = MeshRecorder {
        histograms: histograms.clone(),
        rest: deferred,
    };
    (global, Recorder { shared, histograms })
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
    let (global, recorder) = recorder();
    if metrics::set_global_recorder(global).is_err() {
        // Never built: the app's recorder gets everything.
        return Ok(Installed::AppRecorder);
    }
    // Built once start-up is over, unless a scrape asked for it sooner (see
    // `deferred`). No upkeep task: the exporter holds no histograms to drain,
    // and a render publishes the descriptions given meanwhile.
    let mut tasks = vec![tokio::spawn(
        recorder.shared.clone().build_after(deferred::BUILD_AFTER),
    )];
    let mut bound = None;
    if let Some(listener) = listener {
        bound = listener.local_addr().ok();
        tasks.push(tokio::spawn(serve(listener, recorder.handle())));
    }
    Ok(Installed::Ours {
        recorder,
        addr: bound,
        tasks,
    })
}

/// The global recorder we install: histograms answered at once from our
/// fixed-bucket registry, counters and gauges forwarded to the exporter's
/// recorder (kept until it is built).
#[derive(Debug)]
struct MeshRecorder {
    histograms: Arc<HistogramRegistry>,
    rest: DeferredRecorder<PrometheusRecorder>,
}

impl metrics::Recorder for MeshRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.rest.describe(Kind::Counter, key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.rest.describe(Kind::Gauge, key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.histograms.describe(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.rest.register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.rest.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.histograms.register(key)
    }
}

/// Our global Prometheus recorder's state, for rendering.
#[derive(Debug, Clone)]
pub(super) struct Recorder {
    shared: Arc<Shared<PrometheusRecorder>>,
    histograms: Arc<HistogramRegistry>,
}

impl Recorder {
    /// The handle that renders `/metrics`.
    pub(super) fn handle(&self) -> PrometheusHandle {
        PrometheusHandle(self.clone())
    }
}

/// Renders the mesh's Prometheus recorder (counters, gauges and histograms)
/// in the Prometheus text format, for a `/metrics` route in the app's own
/// router; from [`TelemetryGuard::prometheus_handle`](super::TelemetryGuard::prometheus_handle).
#[derive(Debug, Clone)]
pub struct PrometheusHandle(Recorder);

// Apps move the handle into their router's handlers and clone it there.
const _: fn() = || {
    fn is_shareable<T: Clone + Send + Sync + std::fmt::Debug + 'static>() {}
    is_shareable::<PrometheusHandle>();
};

impl PrometheusHandle {
    /// The exposition text: every metric recorded so far, with HELP and TYPE
    /// lines. The first render before start-up is over builds the counters'
    /// recorder (a millisecond or two; see [`init`](super::init)).
    pub fn render(&self) -> String {
        let mut text = self.0.shared.recorder().handle().render();
        self.0.histograms.render_into(&mut text, UNIT_SUFFIX);
        text
    }
}

/// A deliberately tiny HTTP/1.1 server: `GET /metrics` and nothing else, one
/// request per connection. Owning it (rather than the exporter crate's listener)
/// lets us bind before installing, report the bound port (`:0` in tests and the
/// quickstart) and stop it when the guard drops.
async fn serve(listener: tokio::net::TcpListener, handle: PrometheusHandle) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let handle = handle.clone();
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
        let (recorder, rendering) = recorder();
        let handle = rendering.handle();
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

    /// Samples recorded before the counters' recorder is built (start-up) and
    /// after it all render: histograms do not wait for it.
    #[test]
    fn a_histogram_recorded_before_and_after_the_build_renders_all_its_samples() {
        let (global, rendering) = recorder();
        let histogram = metrics::with_local_recorder(&global, || {
            metrics::counter!("startup_total").increment(1);
            metrics::histogram!("startup_seconds")
        });
        histogram.record(0.001);
        histogram.record(0.02);
        assert!(rendering.shared.get().is_none(), "not built yet");
        let text = rendering.handle().render();
        assert!(rendering.shared.get().is_some(), "the render built it");
        assert!(text.contains("startup_total 1"), "{text}");
        assert!(text.contains("startup_seconds_count 2"), "{text}");
        histogram.record(20.0);
        let text = rendering.handle().render();
        assert!(
            text.contains(r#"startup_seconds_bucket{le="0.005"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"startup_seconds_bucket{le="10"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"startup_seconds_bucket{le="+Inf"} 3"#),
            "{text}"
        );
        assert!(text.contains("startup_seconds_sum 20.021"), "{text}");
        assert!(text.contains("startup_seconds_count 3"), "{text}");
    }

    /// The app's own histograms get the duration buckets; the mesh's body
    /// sizes get the size buckets.
    #[test]
    fn an_apps_own_histogram_gets_the_duration_buckets() {
        let (global, rendering) = recorder();
        let size = ALL
            .iter()
            .find(|def| {
                def.instrument == Instrument::Histogram && def.unit == metric_names::Unit::Bytes
            })
            .expect("the mesh records body sizes");
        metrics::with_local_recorder(&global, || {
            metrics::histogram!("app.checkout.duration").record(0.3);
            metrics::histogram!(size.name).record(100.0);
        });
        let text = rendering.handle().render();
        for le in DURATION_BUCKETS {
            assert!(
                text.contains(&format!("app_checkout_duration_bucket{{le=\"{le}\"}}")),
                "no le={le}:\n{text}"
            );
        }
        assert!(
            text.contains(r#"app_checkout_duration_bucket{le="0.25"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"app_checkout_duration_bucket{le="0.5"} 1"#),
            "{text}"
        );
        let size_name = sanitize_metric_name(size.name);
        assert!(
            text.contains(&format!(r#"{size_name}_bucket{{le="256"}} 1"#)),
            "{text}"
        );
        assert!(
            !text.contains(&format!(r#"{size_name}_bucket{{le="0.005"}}"#)),
            "{text}"
        );
    }

    /// Registering the same key twice (a cache per layer, a macro per call)
    /// gives one series that counts both.
    #[test]
    fn the_same_key_is_one_series() {
        let (global, rendering) = recorder();
        metrics::with_local_recorder(&global, || {
            metrics::histogram!("twice_seconds", "peer" => "a").record(1.0);
            metrics::histogram!("twice_seconds", "peer" => "a").record(1.0);
            metrics::histogram!("twice_seconds", "peer" => "b").record(1.0);
        });
        let text = rendering.handle().render();
        assert!(
            text.contains(r#"twice_seconds_count{peer="a"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"twice_seconds_count{peer="b"} 1"#),
            "{text}"
        );
        assert_eq!(text.matches("# TYPE twice_seconds histogram").count(), 1);
    }

    /// The exposition lines of our histograms are the ones the exporter wrote
    /// for the same samples with the buckets the mesh set on it: names, unit
    /// suffixes, HELP and TYPE, label escaping, `le` values, cumulative
    /// buckets, `_sum`, `_count`. (Families come in another order: the
    /// exporter's is a hash map's.)
    #[test]
    fn histograms_render_as_the_exporter_rendered_them() {
        use metrics_exporter_prometheus::Matcher;
        let mut exporter = builder().set_buckets(&DURATION_BUCKETS).unwrap();
        for def in ALL {
            if def.instrument == Instrument::Histogram && def.unit == metric_names::Unit::Bytes {
                exporter = exporter
                    .set_buckets_for_metric(Matcher::Full(def.name.to_string()), &SIZE_BUCKETS)
                    .unwrap();
            }
        }
        let exporter = exporter.build_recorder();
        let (ours, rendering) = recorder();
        let record = || {
            metric_names::describe_all();
            for def in ALL.iter().filter(|d| d.instrument == Instrument::Histogram) {
                let labels = [("server.address", "a\"b\\c\nd"), ("le_like", "x")];
                for value in [0.0, 0.005, 0.25, 64.0, 1024.0, 3.0e9] {
                    metrics::histogram!(def.name, &labels).record(value);
                }
                metrics::histogram!(def.name).record(0.5);
            }
            metrics::histogram!("app.own.duration", "k" => "v").record(7.5);
        };
        metrics::with_local_recorder(&exporter, record);
        metrics::with_local_recorder(&ours, record);
        let lines = |text: String| {
            let mut lines: Vec<String> = text
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            lines.sort();
            lines
        };
        let theirs = lines(exporter.handle().render());
        let ours = lines(rendering.handle().render());
        assert!(theirs.len() > 100, "{theirs:#?}");
        assert_eq!(ours, theirs);
    }
}
