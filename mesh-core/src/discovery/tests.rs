//! Tests of whole discoveries: what subscribers see and what is counted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::*;
use crate::metric_names::{DISCOVERY_ERRORS, DISCOVERY_UPDATES};

/// Generous: these wait for inotify and a thread hop, which a busy machine can delay.
const WAIT: Duration = Duration::from_secs(20);

/// Counts counter increments by name and labels, and wakes waiters on each one.
#[derive(Default)]
pub(super) struct CountingRecorder {
    counters: Mutex<HashMap<Key, Arc<Count>>>,
    changed: Arc<Notify>,
}

struct Count {
    value: AtomicU64,
    changed: Arc<Notify>,
}

impl CounterFn for Count {
    fn increment(&self, value: u64) {
        self.value.fetch_add(value, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
    fn absolute(&self, value: u64) {
        self.value.fetch_max(value, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

impl CountingRecorder {
    /// Sum of the counters named `name` that carry every label in `labels`.
    pub(super) fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.counters
            .lock()
            .iter()
            .filter(|(key, _)| {
                key.name() == name
                    && labels
                        .iter()
                        .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
            })
            .map(|(_, c)| c.value.load(Ordering::SeqCst))
            .sum()
    }

    /// Waits until `count(name, labels)` reaches `at_least`.
    async fn wait_count(&self, name: &str, labels: &[(&str, &str)], at_least: u64) {
        tokio::time::timeout(WAIT, async {
            loop {
                let notified = self.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.count(name, labels) >= at_least {
                    return;
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{name} {labels:?} never reached {at_least}"));
    }
}

impl metrics::Recorder for CountingRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let count = self
            .counters
            .lock()
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Count {
                    value: AtomicU64::new(0),
                    changed: self.changed.clone(),
                })
            })
            .clone();
        Counter::from_arc(count)
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// Runs `test` on a current-thread runtime with `recorder` installed for this thread;
/// discovery tasks run on the same thread, so their counters land in `recorder`.
fn with_recorder<F: std::future::Future<Output = ()>>(
    recorder: &Arc<CountingRecorder>,
    test: impl FnOnce(Arc<CountingRecorder>) -> F,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&**recorder, || runtime.block_on(test(recorder.clone())));
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mesh-discovery-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Replaces `path` atomically, the way careful writers do: write aside, rename over.
fn write_atomically(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn addrs(snapshot: &Snapshot) -> Vec<String> {
    snapshot
        .endpoints()
        .iter()
        .map(|e| e.addr.to_string())
        .collect()
}

async fn next_change(rx: &mut watch::Receiver<Arc<Snapshot>>) -> Arc<Snapshot> {
    tokio::time::timeout(WAIT, rx.changed())
        .await
        .expect("no snapshot change in time")
        .expect("discovery channel closed");
    rx.borrow_and_update().clone()
}

#[test]
fn file_source_follows_rewrites_and_keeps_last_good_on_garbage() {
    let recorder = Arc::new(CountingRecorder::default());
    with_recorder(&recorder, |rec| async move {
        let dir = TempDir::new();
        let path = dir.0.join("orders.json");
        write_atomically(&path, r#"["10.0.0.1:80"]"#);
        let source = DiscoverySource::File(path.clone());
        let d = Discovery::spawn("file-svc", &source, &DnsSettings::default()).unwrap();
        d.initialized().await;
        assert_eq!(addrs(&d.current()), ["10.0.0.1:80"]);
        let mut rx = d.subscribe();

        // A rename-over is seen although the watched inode is gone.
        write_atomically(
            &path,
            r#"["10.0.0.2:80", {"addr": "10.0.0.3:80", "weight": 3, "zone": "b"}]"#,
        );
        let snap = next_change(&mut rx).await;
        assert_eq!(addrs(&snap), ["10.0.0.2:80", "10.0.0.3:80"]);
        assert_eq!(snap.endpoints()[1].weight, 3);

        // Garbage is counted and the last good set stays.
        let labels = [("mesh.service", "file-svc"), ("mesh.source", "file")];
        write_atomically(&path, "[\"10.0.0.9:80\", oops");
        rec.wait_count(
            DISCOVERY_ERRORS.name,
            &[labels[0], ("mesh.reason", "invalid")],
            1,
        )
        .await;
        assert_eq!(addrs(&d.current()), ["10.0.0.2:80", "10.0.0.3:80"]);
        assert!(!rx.has_changed().unwrap(), "garbage must not publish");

        // An empty list is a failure too, not "no endpoints".
        write_atomically(&path, "[]");
        rec.wait_count(
            DISCOVERY_ERRORS.name,
            &[labels[0], ("mesh.reason", "empty")],
            1,
        )
        .await;
        assert_eq!(d.current().len(), 2);

        // Restoring a valid file publishes again.
        write_atomically(&path, r#"["10.0.0.4:80"]"#);
        let snap = next_change(&mut rx).await;
        assert_eq!(addrs(&snap), ["10.0.0.4:80"]);
        assert_eq!(rec.count(DISCOVERY_UPDATES.name, &labels), 3);
    });
}

#[tokio::test]
async fn file_missing_at_start_is_an_error_naming_service_and_path() {
    let dir = TempDir::new();
    let path = dir.0.join("absent.json");
    let err = Discovery::spawn(
        "orders",
        &DiscoverySource::File(path.clone()),
        &DnsSettings::default(),
    )
    .unwrap_err();
    assert!(err.is_file());
    let msg = err.to_string();
    assert!(
        msg.contains("`orders`") && msg.contains("absent.json"),
        "{msg}"
    );

    std::fs::write(&path, "{not json").unwrap();
    let err = Discovery::spawn(
        "orders",
        &DiscoverySource::File(path),
        &DnsSettings::default(),
    )
    .unwrap_err();
    assert!(err.is_file() && err.is_invalid(), "{err}");
}

#[test]
fn static_source_publishes_once_and_counts_it() {
    let recorder = Arc::new(CountingRecorder::default());
    with_recorder(&recorder, |rec| async move {
        let source = DiscoverySource::Static(vec![
            "10.0.0.1:80".parse().unwrap(),
            "localhost:81".parse().unwrap(),
        ]);
        let d = Discovery::spawn("static-svc", &source, &DnsSettings::default()).unwrap();
        d.initialized().await;
        let snap = d.current();
        assert!(snap.len() >= 2, "{snap:?}");
        assert_eq!(snap.endpoints()[0].addr, "10.0.0.1:80".parse().unwrap());
        let labels = [("mesh.service", "static-svc"), ("mesh.source", "static")];
        assert_eq!(rec.count(DISCOVERY_UPDATES.name, &labels), 1);
    });
}

#[test]
fn static_unresolvable_hostname_fails_spawn() {
    let source = DiscoverySource::Static(vec!["no-such-host.invalid:80".parse().unwrap()]);
    let err = Discovery::spawn("orders", &source, &DnsSettings::default()).unwrap_err();
    assert!(err.is_unresolvable(), "{err}");
    assert!(err.to_string().contains("no-such-host.invalid"), "{err}");
}

#[test]
fn dns_source_outside_a_runtime_is_an_error() {
    let source = DiscoverySource::Dns("orders.internal:80".parse().unwrap());
    let err = Discovery::spawn("orders", &source, &DnsSettings::default()).unwrap_err();
    assert!(err.is_no_runtime(), "{err}");
}

#[tokio::test(start_paused = true)]
async fn fixed_discovery_is_initialized_and_never_closes() {
    let snapshot = Snapshot::new(vec![Endpoint::new("10.0.0.1:80".parse().unwrap())]);
    let d = Discovery::fixed(snapshot.clone());
    d.initialized().await;
    assert_eq!(*d.current(), snapshot);
    let mut rx = d.subscribe();
    // Paused time: the hour passes at once unless `changed` returns (closed or changed).
    let waited = tokio::time::timeout(Duration::from_secs(3600), rx.changed()).await;
    assert!(
        waited.is_err(),
        "a fixed discovery must neither change nor close"
    );
}

#[tokio::test]
async fn dropping_the_last_clone_stops_the_source_task() {
    let dir = TempDir::new();
    let path = dir.0.join("drop.json");
    std::fs::write(&path, r#"["10.0.0.1:80"]"#).unwrap();
    let d = Discovery::spawn(
        "drop-svc",
        &DiscoverySource::File(path),
        &DnsSettings::default(),
    )
    .unwrap();
    let clone = d.clone();
    let mut rx = d.subscribe();
    drop(d);
    assert!(!clone.inner.task.as_ref().unwrap().is_finished());
    drop(clone);
    // The channel closes only when the task, which holds a sender, is gone.
    let closed = tokio::time::timeout(WAIT, rx.changed())
        .await
        .expect("task still alive");
    assert!(closed.is_err());
}
