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
