//! The one place a source hands its results to: publishes changed snapshots, keeps the
//! last good one on failure, counts both, and logs a failing streak once.

use std::sync::Arc;

use tokio::sync::watch;

use super::Snapshot;
use crate::metric_names::{label, DISCOVERY_ERRORS, DISCOVERY_UPDATES};

/// The sending half of a discovery, owned by its source task.
#[derive(Debug)]
pub(crate) struct Publisher {
    service: Arc<str>,
    source: &'static str,
    tx: watch::Sender<Arc<Snapshot>>,
    initialized: watch::Sender<bool>,
    /// The reason of the current failing streak, if one is going on. Logging only on
    /// entering and leaving a streak keeps a dead DNS server from flooding the log.
    failing: Option<&'static str>,
}

impl Publisher {
    pub(crate) fn new(
        service: Arc<str>,
        source: &'static str,
        tx: watch::Sender<Arc<Snapshot>>,
        initialized: watch::Sender<bool>,
    ) -> Self {
        Publisher {
            service,
            source,
            tx,
            initialized,
            failing: None,
        }
    }

    /// A good, non-empty result. Publishes it only when the set changed, so subscribers
    /// wake up for real changes alone.
    pub(crate) fn good(&mut self, snapshot: Snapshot) {
        debug_assert!(!snapshot.is_empty(), "an empty result is a failure");
        if let Some(reason) = self.failing.take() {
            tracing::info!(
                service = %self.service,
                source = self.source,
                previous_reason = reason,
                endpoints = snapshot.len(),
                "service discovery recovered"
            );
        }
        let changed = self.tx.send_if_modified(|current| {
            if **current == snapshot {
                false
            } else {
                *current = Arc::new(snapshot);
                true
            }
        });
        if changed {
            metrics::counter!(
                DISCOVERY_UPDATES.name,
                label::SERVICE => self.service.to_string(),
                label::SOURCE => self.source,
            )
            .increment(1);
            tracing::debug!(
                service = %self.service,
                source = self.source,
                endpoints = self.tx.borrow().len(),
                "published a new endpoint set"
            );
        }
        self.mark_initialized();
    }

    /// A failed attempt: the last good snapshot stays. `reason` is a fixed word for the
    /// metric label; `detail` is for the log line.
    pub(crate) fn failed(&mut self, reason: &'static str, detail: &dyn std::fmt::Display) {
        metrics::counter!(
            DISCOVERY_ERRORS.name,
            label::SERVICE => self.service.to_string(),
            label::SOURCE => self.source,
            label::REASON => reason,
        )
        .increment(1);
        if self.failing.is_none() {
            tracing::warn!(
                service = %self.service,
                source = self.source,
                reason,
                error = %detail,
                kept_endpoints = self.tx.borrow().len(),
                "service discovery failed; keeping the last good endpoint set until it recovers"
            );
        } else {
            tracing::debug!(service = %self.service, source = self.source, reason, error = %detail, "service discovery still failing");
        }
        self.failing = Some(reason);
        self.mark_initialized();
    }

    fn mark_initialized(&self) {
        self.initialized
            .send_if_modified(|done| !std::mem::replace(done, true));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tracing::{Level, Metadata};

    use super::*;
    use crate::discovery::tests::CountingRecorder;
    use crate::discovery::Endpoint;

    /// Counts warn and info events; enough to check how often a streak is logged.
    #[derive(Default)]
    struct LevelCounter {
        warn: AtomicUsize,
        info: AtomicUsize,
    }

    impl tracing::Subscriber for LevelCounter {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            match *event.metadata().level() {
                Level::WARN => self.warn.fetch_add(1, Ordering::SeqCst),
                Level::INFO => self.info.fetch_add(1, Ordering::SeqCst),
                _ => 0,
            };
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    fn snapshot(addrs: &[&str]) -> Snapshot {
        Snapshot::new(
            addrs
                .iter()
                .map(|a| Endpoint::new(a.parse().unwrap()))
                .collect(),
        )
    }

    fn publisher() -> (
        Publisher,
        watch::Receiver<Arc<Snapshot>>,
        watch::Receiver<bool>,
    ) {
        let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        let (init_tx, init_rx) = watch::channel(false);
        (
            Publisher::new("svc".into(), "dns", tx, init_tx),
            rx,
            init_rx,
        )
    }

    #[test]
    fn unchanged_set_is_not_republished_or_counted() {
        let recorder = CountingRecorder::default();
        metrics::with_local_recorder(&recorder, || {
            let (mut publisher, mut rx, init) = publisher();
            publisher.good(snapshot(&["10.0.0.1:80", "10.0.0.2:80"]));
            assert!(*init.borrow());
            assert!(rx.has_changed().unwrap());
            rx.borrow_and_update();
            // Same set in another order: equal after sorting, so no wake-up.
            publisher.good(snapshot(&["10.0.0.2:80", "10.0.0.1:80"]));
            assert!(!rx.has_changed().unwrap());
            publisher.good(snapshot(&["10.0.0.2:80"]));
            assert!(rx.has_changed().unwrap());
            assert_eq!(
                recorder.count(DISCOVERY_UPDATES.name, &[("mesh.service", "svc")]),
                2
            );
        });
    }

    #[test]
    fn failing_streak_is_counted_every_time_but_logged_once() {
        let recorder = CountingRecorder::default();
        let logs = Arc::new(LevelCounter::default());
        metrics::with_local_recorder(&recorder, || {
            tracing::subscriber::with_default(logs.clone(), || {
                let (mut publisher, rx, init) = publisher();
                publisher.failed("timeout", &"first");
                assert!(*init.borrow(), "a failed first attempt still initializes");
                publisher.good(snapshot(&["10.0.0.1:80"]));
                for _ in 0..5 {
                    publisher.failed("timeout", &"again");
                }
                assert_eq!(rx.borrow().len(), 1, "the last good set stays");
                publisher.good(snapshot(&["10.0.0.1:80"]));
                publisher.good(snapshot(&["10.0.0.1:80"]));
            });
        });
        let labels = [
            ("mesh.service", "svc"),
            ("mesh.source", "dns"),
            ("mesh.reason", "timeout"),
        ];
        assert_eq!(recorder.count(DISCOVERY_ERRORS.name, &labels), 6);
        // Two streaks: one warning each, one recovery line each.
        assert_eq!(logs.warn.load(Ordering::SeqCst), 2);
        assert_eq!(logs.info.load(Ordering::SeqCst), 2);
    }
}
