//! Counters and gauges for a recorder that is built later, off the start-up
//! path: on a thread of its own once start-up is over.
//!
//! Why: the Prometheus recorder calibrates `quanta`'s TSC clock when it is
//! built: at least 500 rounds of a 1 µs busy loop, ≈ 1–2 ms of one core's time
//! (longer when it is preempted: it runs until the rounds agree). Run during
//! start-up, even on a thread of its own, it competes for the machine's cores
//! with the start-up itself and with the peer's side of the first handshake
//! (`compare cold-starts`: it was the largest part of the mesh's cold start
//! over raw rustls, see BENCHMARKS.md).
//!
//! So nothing is built until one of these comes first: [`BUILD_AFTER`] since
//! telemetry was set up (start-up is over by then), or a caller that needs the
//! recorder (a scrape, the guard's handle: built there and then). Starting it
//! at the first request instead still cost the cold start: the thread is
//! spawned, and spins, while that request finishes (`compare cold-starts`,
//! BENCHMARKS.md).
//!
//! Nothing recorded in the meantime is lost, and nothing waits for it: a
//! counter or gauge registered before the recorder is ready gets a handle that
//! keeps its value (a counter's sum, a gauge's value) and hands it over, with
//! every description given meanwhile, once the recorder is built; from then on
//! that handle forwards to the real one. Metrics registered afterwards get the
//! recorder's own handles, so the per-request path is unchanged once start-up
//! is over. Histograms are not deferred: they are ours, fixed buckets from the
//! start ([`histogram`](super::histogram)), and need no clock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Key, KeyName, Level, Metadata, Recorder, SharedString, Unit,
};
use parking_lot::{Mutex, MutexGuard};

/// When the recorder is built if nothing asked for it sooner: after any
/// start-up, soon enough that an idle service has calibrated its clock before
/// its first scrape.
pub(super) const BUILD_AFTER: Duration = Duration::from_secs(1);

/// The counters and gauges of the global recorder: forwards them to `R` once
/// it is built. Not a [`Recorder`] itself: whoever installs it answers for
/// histograms.
#[derive(Debug)]
pub(super) struct DeferredRecorder<R> {
    shared: Arc<Shared<R>>,
}

/// What builds the recorder, taken by whoever runs it.
type Build<R> = Box<dyn FnOnce() -> R + Send>;

/// What the global recorder and the telemetry guard share.
pub(super) struct Shared<R> {
    ready: OnceLock<R>,
    /// Handles and descriptions given out before `ready`; emptied when it is set.
    early: Mutex<Early>,
    /// The build, until a thread or a caller takes it to run it.
    build: Mutex<Option<Build<R>>>,
    /// Whether the build was started (or a caller ran it).
    started: AtomicBool,
    /// The thread running the build, joined by the first caller that cannot go
    /// on without it. Held while the thread is spawned, so a caller that finds
    /// the build taken finds its thread here.
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl<R> std::fmt::Debug for Shared<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("ready", &self.ready.get().is_some())
            .field("started", &self.started.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Early {
    counters: Vec<Arc<EarlyCounter>>,
    gauges: Vec<Arc<EarlyGauge>>,
    descriptions: Vec<(Kind, KeyName, Option<Unit>, SharedString)>,
}

/// Which kind of metric a description is for.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    Counter,
    Gauge,
}

/// Returns the counters' and gauges' recorder to install now, and the state to
/// reach the built recorder by; `build` runs later (see the module docs).
/// Nothing is spawned here: the caller arranges [`BUILD_AFTER`]
/// ([`Shared::build_after`]).
pub(super) fn start<R>(
    build: impl FnOnce() -> R + Send + 'static,
) -> (DeferredRecorder<R>, Arc<Shared<R>>)
where
    R: Recorder + Send + Sync + 'static,
{
    let shared = Arc::new(Shared {
        ready: OnceLock::new(),
        early: Mutex::new(Early::default()),
        build: Mutex::new(Some(Box::new(build))),
        started: AtomicBool::new(false),
        thread: Mutex::new(None),
    });
    (
        DeferredRecorder {
            shared: shared.clone(),
        },
        shared,
    )
}

impl<R: Recorder + Send + Sync + 'static> Shared<R> {
    /// Starts the build on a thread of its own, unless it was started. Should
    /// the thread not spawn, builds here.
    pub(super) fn begin(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut thread = self.thread.lock();
        let shared = self.clone();
        match std::thread::Builder::new()
            .name("mesh-metrics-init".into())
            .spawn(move || shared.run_build())
        {
            Ok(handle) => *thread = Some(handle),
            Err(error) => {
                tracing::warn!(%error, "no thread for the metrics recorder's build; building it here");
                self.run_build();
            }
        }
    }

    /// Waits [`BUILD_AFTER`], then starts the build (if nothing started it
    /// sooner). For a task of the runtime telemetry is set up on.
    pub(super) async fn build_after(self: Arc<Self>, delay: Duration) {
        tokio::time::sleep(delay).await;
        self.begin();
    }

    /// Runs the build, if nobody took it yet.
    fn run_build(&self) {
        let build = self.build.lock().take();
        if let Some(build) = build {
            self.finish(build());
        }
    }

    /// Hands everything given out early to `recorder`, then makes it the one
    /// every call reaches. Under the `early` lock, so no handle registered
    /// meanwhile is missed.
    fn finish(&self, recorder: R) {
        let mut early = self.early.lock();
        for (kind, key, unit, description) in early.descriptions.drain(..) {
            match kind {
                Kind::Counter => recorder.describe_counter(key, unit, description),
                Kind::Gauge => recorder.describe_gauge(key, unit, description),
            }
        }
        for c in early.counters.drain(..) {
            c.resolve(recorder.register_counter(&c.key, &c.meta.get()));
        }
        for g in early.gauges.drain(..) {
            g.resolve(recorder.register_gauge(&g.key, &g.meta.get()));
        }
        let _ = self.ready.set(recorder);
    }

    /// The built recorder: built here if nothing started building it, waited
    /// for if a thread is building it.
    pub(super) fn recorder(&self) -> &R {
        if let Some(recorder) = self.ready.get() {
            return recorder;
        }
        // No thread is needed from now on: whoever asks first builds.
        self.started.store(true, Ordering::Release);
        self.run_build();
        let thread = self.thread.lock().take();
        if let Some(thread) = thread {
            if let Err(panic) = thread.join() {
                std::panic::resume_unwind(panic);
            }
        }
        self.ready.wait()
    }

    /// The built recorder, if it is ready.
    #[cfg(test)]
    pub(super) fn get(&self) -> Option<&R> {
        self.ready.get()
    }
}

impl<R: Recorder + Send + Sync + 'static> DeferredRecorder<R> {
    /// Gives a counter's or gauge's HELP text and unit to the recorder, or
    /// keeps it for the recorder until it is built.
    pub(super) fn describe(
        &self,
        kind: Kind,
        key: KeyName,
        unit: Option<Unit>,
        description: SharedString,
    ) {
        match self.ready_or_early() {
            Ok(recorder) => match kind {
                Kind::Counter => recorder.describe_counter(key, unit, description),
                Kind::Gauge => recorder.describe_gauge(key, unit, description),
            },
            Err(mut early) => early.descriptions.push((kind, key, unit, description)),
        }
    }

    /// The recorder's counter for `key`, or one that keeps its sum until then.
    pub(super) fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        match self.ready_or_early() {
            Ok(recorder) => recorder.register_counter(key, metadata),
            Err(mut early) => {
                let handle = EarlyHandle::new(key, metadata);
                early.counters.push(handle.clone());
                Counter::from_arc(handle)
            }
        }
    }

    /// The recorder's gauge for `key`, or one that keeps its value until then.
    pub(super) fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        match self.ready_or_early() {
            Ok(recorder) => recorder.register_gauge(key, metadata),
            Err(mut early) => {
                let handle = EarlyHandle::new(key, metadata);
                early.gauges.push(handle.clone());
                Gauge::from_arc(handle)
            }
        }
    }

    /// The built recorder or, while it is being built, what is kept for it,
    /// locked: the build hands that over under the same lock, so nothing given
    /// out meanwhile is missed.
    fn ready_or_early(&self) -> Result<&R, MutexGuard<'_, Early>> {
        if let Some(recorder) = self.shared.ready.get() {
            return Ok(recorder);
        }
        let early = self.shared.early.lock();
        // Built while we waited for the lock?
        self.shared.ready.get().ok_or(early)
    }
}

/// A metric's metadata, kept until the real handle is registered.
#[derive(Debug)]
struct OwnedMetadata {
    target: String,
    level: Level,
    module_path: Option<String>,
}

impl From<&Metadata<'_>> for OwnedMetadata {
    fn from(m: &Metadata<'_>) -> Self {
        OwnedMetadata {
            target: m.target().to_string(),
            level: *m.level(),
            module_path: m.module_path().map(str::to_string),
        }
    }
}

impl OwnedMetadata {
    fn get(&self) -> Metadata<'_> {
        Metadata::new(&self.target, self.level, self.module_path.as_deref())
    }
}

/// A metric registered before the recorder was ready: its samples are kept
/// (`S`) until the real handle `H` exists, then handed to it, and every later
/// sample goes straight to it.
#[derive(Debug)]
struct EarlyHandle<H, S> {
    key: Key,
    meta: OwnedMetadata,
    real: OnceLock<H>,
    kept: Mutex<S>,
}

type EarlyCounter = EarlyHandle<Counter, CounterSamples>;
type EarlyGauge = EarlyHandle<Gauge, GaugeSamples>;

/// Samples kept for a metric until its real handle `H` exists.
trait Kept<H>: Default {
    /// Gives what was kept to `real`.
    fn hand_over(self, real: &H);
}

impl<H, S: Kept<H>> EarlyHandle<H, S> {
    fn new(key: &Key, metadata: &Metadata<'_>) -> Arc<Self> {
        Arc::new(EarlyHandle {
            key: key.clone(),
            meta: OwnedMetadata::from(metadata),
            real: OnceLock::new(),
            kept: Mutex::new(S::default()),
        })
    }

    fn resolve(&self, real: H) {
        let mut kept = self.kept.lock();
        std::mem::take(&mut *kept).hand_over(&real);
        let _ = self.real.set(real);
    }

    /// Runs `now` on the real handle, or `keep` on the kept samples; under the
    /// lock, so a sample never slips between the two.
    fn with(&self, now: impl FnOnce(&H), keep: impl FnOnce(&mut S)) {
        if let Some(real) = self.real.get() {
            return now(real);
        }
        let mut kept = self.kept.lock();
        match self.real.get() {
            Some(real) => now(real),
            None => keep(&mut kept),
        }
    }
}

#[derive(Debug, Default)]
struct CounterSamples {
    absolute: Option<u64>,
    added: u64,
}

impl Kept<Counter> for CounterSamples {
    fn hand_over(self, real: &Counter) {
        if let Some(value) = self.absolute {
            real.absolute(value);
        }
        if self.added > 0 {
            real.increment(self.added);
        }
    }
}

impl CounterFn for EarlyCounter {
    fn increment(&self, value: u64) {
        self.with(|c| c.increment(value), |k| k.added += value);
    }

    fn absolute(&self, value: u64) {
        self.with(
            |c| c.absolute(value),
            |k| {
                k.absolute = Some(value);
                k.added = 0;
            },
        );
    }
}

#[derive(Debug, Default)]
struct GaugeSamples {
    set: Option<f64>,
    added: f64,
}

impl Kept<Gauge> for GaugeSamples {
    fn hand_over(self, real: &Gauge) {
        if let Some(value) = self.set {
            real.set(value);
        }
        if self.added != 0.0 {
            real.increment(self.added);
        }
    }
}

impl GaugeFn for EarlyGauge {
    fn increment(&self, value: f64) {
        self.with(|g| g.increment(value), |k| k.added += value);
    }

    fn decrement(&self, value: f64) {
        self.with(|g| g.decrement(value), |k| k.added -= value);
    }

    fn set(&self, value: f64) {
        self.with(
            |g| g.set(value),
            |k| {
                k.set = Some(value);
                k.added = 0.0;
            },
        );
    }
}

#[cfg(all(test, feature = "prometheus"))]
mod tests {
    use super::*;
    use metrics::{Histogram, Recorder};
    use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
    use std::sync::mpsc;

    /// The deferred counters and gauges as a recorder, for the `metrics`
    /// macros; the real global recorder adds our histograms (prometheus.rs).
    struct CountersAndGauges(DeferredRecorder<PrometheusRecorder>);

    impl Recorder for CountersAndGauges {
        fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
            self.0.describe(Kind::Counter, key, unit, description);
        }
        fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
            self.0.describe(Kind::Gauge, key, unit, description);
        }
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
            self.0.register_counter(key, metadata)
        }
        fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
            self.0.register_gauge(key, metadata)
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    /// A Prometheus recorder whose build says on the returned channel that it
    /// runs, then waits until the test sends on the other.
    fn gated() -> (
        CountersAndGauges,
        Arc<Shared<PrometheusRecorder>>,
        mpsc::Receiver<()>,
        mpsc::Sender<()>,
    ) {
        let (running, runs) = mpsc::channel::<()>();
        let (go, wait) = mpsc::channel::<()>();
        let (recorder, shared) = start(move || {
            let _ = running.send(());
            let _ = wait.recv();
            PrometheusBuilder::new().build_recorder()
        });
        (CountersAndGauges(recorder), shared, runs, go)
    }

    const GENEROUS: Duration = Duration::from_secs(30);

    #[test]
    fn samples_and_descriptions_given_before_the_build_reach_the_recorder() {
        let (recorder, shared, runs, go) = gated();
        let counter = metrics::with_local_recorder(&recorder, || {
            metrics::describe_counter!("early_total", "counted before the build");
            let counter = metrics::counter!("early_total");
            counter.increment(3);
            metrics::gauge!("early_gauge").set(5.0);
            metrics::gauge!("early_gauge").increment(2.0);
            counter
        });
        shared.begin();
        runs.recv_timeout(GENEROUS).expect("the build started");
        assert!(shared.get().is_none(), "the build is still held");
        go.send(()).unwrap();
        let text = shared.recorder().handle().render();
        assert!(
            text.contains("# HELP early_total counted before the build"),
            "{text}"
        );
        assert!(text.contains("early_total 3"), "{text}");
        assert!(text.contains("early_gauge 7"), "{text}");

        // The early handle forwards to the real one from now on.
        counter.increment(1);
        let text = shared.recorder().handle().render();
        assert!(text.contains("early_total 4"), "{text}");
    }

    #[test]
    fn metrics_registered_after_the_build_go_straight_to_the_recorder() {
        let (recorder, shared, _runs, go) = gated();
        go.send(()).unwrap();
        shared.recorder();
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!("late_total").increment(2);
        });
        let text = shared.recorder().handle().render();
        assert!(text.contains("late_total 2"), "{text}");
        assert!(recorder.0.shared.early.lock().counters.is_empty());
    }

    /// Start-up registers metrics, counts and sets gauges: none of it builds
    /// the recorder (its clock calibration would compete with start-up).
    #[test]
    fn start_up_metrics_do_not_build_the_recorder() {
        let (recorder, shared, runs, go) = gated();
        metrics::with_local_recorder(&recorder, || {
            metrics::describe_counter!("startup_total", "registered early");
            for _ in 0..10 {
                metrics::counter!("startup_total").increment(1);
            }
            metrics::gauge!("startup_gauge").set(1.0);
        });
        assert!(
            runs.try_recv().is_err(),
            "the build ran before anything asked for it"
        );
        assert!(shared.thread.lock().is_none(), "no thread was spawned");
        go.send(()).unwrap();
        // A caller that needs it builds it there and then.
        let text = shared.recorder().handle().render();
        assert!(runs.try_recv().is_ok());
        assert!(text.contains("startup_total 10"), "{text}");
        assert!(text.contains("startup_gauge 1"), "{text}");
    }

    /// With no traffic and no scrape, the recorder is built after
    /// [`BUILD_AFTER`], not before.
    #[tokio::test(start_paused = true)]
    async fn an_idle_service_builds_the_recorder_after_the_delay() {
        let (_recorder, shared, runs, go) = gated();
        go.send(()).unwrap();
        let timer = tokio::spawn(shared.clone().build_after(BUILD_AFTER));
        tokio::time::sleep(BUILD_AFTER - Duration::from_millis(1)).await;
        assert!(runs.try_recv().is_err(), "built before the delay");
        timer.await.unwrap();
        runs.recv_timeout(GENEROUS).expect("built after the delay");
    }
}
