//! The Prometheus recorder: histograms as real buckets, recommended naming
//! (`_total` on counters, unit suffixes), a HELP line for every mesh metric.
//!
//! Every series is ours ([`registry`](super::registry)): counters and gauges
//! are atomics, histograms fixed-bucket atomic counts, all recording from the
//! moment they are registered. Nothing is built later and no clock is
//! calibrated: `metrics-exporter-prometheus`'s recorder, which the mesh used
//! before, calibrates `quanta`'s TSC clock when it is built (1–2 ms of a
//! core's time, in every process, for clock readings the mesh never used).
//! The exporter's formatting helpers still write the text, so it reads as the
//! exporter's did.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::registry::{sanitize_name, Registry};
use super::{TelemetryError, DURATION_BUCKETS, SIZE_BUCKETS};
use crate::metric_names;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};
use rustc_hash::FxHashMap;

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

/// A histogram's bucket bounds, by its sanitized name: the size buckets for
/// the mesh's byte histograms, the duration buckets for every other one (the
/// app's own histograms included).
fn bounds_for(name: &str) -> &'static [f64] {
    // Sanitized once per process, not once per family registered.
    static SIZES: OnceLock<Vec<String>> = OnceLock::new();
    let sizes = SIZES.get_or_init(|| {
        metric_names::ALL
            .iter()
            .filter(|def| {
                def.instrument == metric_names::Instrument::Histogram
                    && def.unit == metric_names::Unit::Bytes
            })
            .map(|def| sanitize_name(def.name))
            .collect()
    });
    if sizes.iter().any(|size| size == name) {
        &SIZE_BUCKETS
    } else {
        &DURATION_BUCKETS
    }
}

/// The HELP text and unit of a mesh metric, by its sanitized name: what
/// [`metric_names::describe_all`] would tell the recorder. Looked up when
/// `/metrics` is rendered, so start-up describes nothing (≈ 33k instructions
/// and an allocation per metric, in every process, before its first request).
fn mesh_help(name: &str) -> Option<(&'static str, Option<Unit>)> {
    static HELP: OnceLock<FxHashMap<String, (&'static str, Option<Unit>)>> = OnceLock::new();
    let help = HELP.get_or_init(|| {
        let mut help = FxHashMap::default();
        for def in metric_names::ALL {
            // The first description of a name wins, as with `describe`.
            help.entry(sanitize_name(def.name))
                .or_insert((def.description, Some(Unit::from(def.unit))));
        }
        help
    });
    help.get(name).copied()
}

/// The recorder to install as the global one, and what renders it.
pub(super) fn recorder() -> (MeshRecorder, Recorder) {
    let registry = Arc::new(Registry::new(bounds_for, mesh_help));
    (
        MeshRecorder {
            registry: registry.clone(),
        },
        Recorder { registry },
    )
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
        return Ok(Installed::AppRecorder);
    }
    // No upkeep task: nothing accumulates between scrapes.
    let mut tasks = Vec::new();
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

/// The global recorder we install: every series from our registry.
#[derive(Debug)]
pub(super) struct MeshRecorder {
    registry: Arc<Registry>,
}

impl metrics::Recorder for MeshRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.registry.describe(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.registry.describe(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.registry.describe(key, unit, description);
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.registry.counter(key)
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.registry.gauge(key)
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.registry.histogram(key)
    }
}

/// Our global Prometheus recorder's state, for rendering.
#[derive(Debug, Clone)]
pub(super) struct Recorder {
    registry: Arc<Registry>,
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
    /// lines; counters, then gauges, then histograms, each family by name.
    pub fn render(&self) -> String {
        self.0.registry.render()
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

    /// The mesh's own metrics get their HELP lines and units whether or not
    /// anyone described them (start-up no longer does): the text is the one
    /// a recorder told by `describe_all` renders.
    #[test]
    fn mesh_metrics_render_described_without_describe_calls() {
        let record = || {
            for def in ALL {
                match def.instrument {
                    Instrument::Counter => metrics::counter!(def.name).increment(1),
                    Instrument::Gauge => metrics::gauge!(def.name).set(1.0),
                    Instrument::Histogram => metrics::histogram!(def.name).record(0.02),
                }
            }
        };
        let (undescribed, undescribed_text) = recorder();
        metrics::with_local_recorder(&undescribed, record);
        let (described, described_text) = recorder();
        metrics::with_local_recorder(&described, || {
            metric_names::describe_all();
            record();
        });
        let text = undescribed_text.handle().render();
        assert_eq!(text, described_text.handle().render());
        assert_eq!(text.matches("# HELP ").count(), ALL.len(), "{text}");
    }

    /// A description the app gives a mesh metric does not replace the mesh's
    /// (the mesh's came first), and the app's own metrics keep theirs.
    #[test]
    fn the_mesh_description_wins_over_a_later_one_and_apps_keep_theirs() {
        let (global, rendering) = recorder();
        let def = ALL[0];
        metrics::with_local_recorder(&global, || {
            metrics::describe_counter!(def.name, "Something else.");
            metrics::describe_gauge!("app.queue.depth", "Jobs waiting.");
            metrics::gauge!("app.queue.depth").set(3.0);
            match def.instrument {
                Instrument::Counter => metrics::counter!(def.name).increment(1),
                Instrument::Gauge => metrics::gauge!(def.name).set(1.0),
                Instrument::Histogram => metrics::histogram!(def.name).record(0.02),
            }
        });
        let text = rendering.handle().render();
        assert!(
            text.contains(&format!(
                "# HELP {} {}\n",
                def.prometheus_name(),
                def.description
            )),
            "{text}"
        );
        assert!(!text.contains("Something else."), "{text}");
        assert!(
            text.contains("# HELP app_queue_depth Jobs waiting.\n"),
            "{text}"
        );
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
        // Described or not, a mesh metric renders under its Prometheus name.
        let size_name = size.prometheus_name();
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

    /// What both recorders are given in [`every_kind_renders_as_the_exporter_rendered_it`]:
    /// every mesh metric, described, with awkward labels (quotes, backslashes,
    /// newlines, non-ASCII, a name and label keys to sanitize), counters added
    /// to and set with `absolute` (which never lowers them), gauges going
    /// negative and fractional, histogram samples on bucket bounds; and the
    /// app's own metrics without a description.
    fn record_everything() {
        metric_names::describe_all();
        let awkward = [
            ("server.address", "a\"b\\c\nd"),
            ("le_like", "x"),
            ("peer", "zürich→東京"),
        ];
        for def in ALL {
            match def.instrument {
                Instrument::Counter => {
                    let counter = metrics::counter!(def.name, &awkward);
                    counter.increment(1);
                    counter.increment(41);
                    metrics::counter!(def.name).increment(7);
                }
                Instrument::Gauge => {
                    let gauge = metrics::gauge!(def.name, &awkward);
                    gauge.set(1.5);
                    gauge.decrement(4.25);
                    gauge.increment(0.125);
                    metrics::gauge!(def.name).set(1.0e-7);
                }
                Instrument::Histogram => {
                    for value in [0.0, 0.005, 0.25, 64.0, 1024.0, 3.0e9] {
                        metrics::histogram!(def.name, &awkward).record(value);
                    }
                    metrics::histogram!(def.name).record(0.5);
                }
            }
        }
        let absolute = metrics::counter!("app.bytes.seen", "dir" => "in");
        absolute.absolute(100);
        absolute.absolute(50);
        absolute.increment(5);
        metrics::counter!("app-requests", "route" => "/a b").increment(3);
        metrics::counter!("app.already_total").increment(2);
        metrics::gauge!("app.queue.depth").increment(0.1);
        metrics::gauge!("app.queue.depth").increment(0.2);
        metrics::gauge!("app.temperature", "room" => "ü").set(-273.15);
        metrics::gauge!("app.ratio").set(f64::INFINITY);
        metrics::histogram!("app.own.duration", "k" => "v").record(7.5);
    }

    /// The exposition text is the one the exporter wrote for the same calls
    /// (it is the reference here, built with the settings the mesh used to
    /// give it): per family one HELP (if described) and one TYPE line and all
    /// its series together; names, `_total` and unit suffixes, label
    /// escaping, values, `le` buckets, `_sum`, `_count`. Families and the
    /// series in them are compared as sets: the exporter's order is a hash
    /// map's.
    #[test]
    fn every_kind_renders_as_the_exporter_rendered_it() {
        use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
        let mut exporter = PrometheusBuilder::new()
            .with_recommended_naming(true)
            .set_buckets(&DURATION_BUCKETS)
            .unwrap();
        for def in ALL {
            if def.instrument == Instrument::Histogram && def.unit == metric_names::Unit::Bytes {
                exporter = exporter
                    .set_buckets_for_metric(Matcher::Full(def.name.to_string()), &SIZE_BUCKETS)
                    .unwrap();
            }
        }
        let exporter = exporter.build_recorder();
        let (ours, rendering) = recorder();
        metrics::with_local_recorder(&exporter, record_everything);
        metrics::with_local_recorder(&ours, record_everything);
        // Each family (a block ending in a blank line) as its sorted lines.
        let families = |text: String| {
            let mut families: Vec<Vec<String>> = text
                .split("\n\n")
                .filter(|block| !block.trim().is_empty())
                .map(|block| {
                    let mut lines: Vec<String> = block.lines().map(str::to_string).collect();
                    lines.sort();
                    lines
                })
                .collect();
            families.sort();
            families
        };
        let theirs = families(exporter.handle().render());
        let ours = families(rendering.handle().render());
        assert!(theirs.len() > 20, "{theirs:#?}");
        assert!(
            theirs.iter().map(Vec::len).sum::<usize>() > 200,
            "{theirs:#?}"
        );
        let only_ours: Vec<_> = ours.iter().filter(|f| !theirs.contains(f)).collect();
        let only_theirs: Vec<_> = theirs.iter().filter(|f| !ours.contains(f)).collect();
        assert!(
            only_ours.is_empty() && only_theirs.is_empty(),
            "ours only: {only_ours:#?}\nthe exporter's only: {only_theirs:#?}"
        );
        assert_eq!(ours, theirs);
    }
}
