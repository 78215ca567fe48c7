//! State one balancer shares with all of its endpoint handles: the service name, the
//! clock base, readiness counters behind the `mesh.endpoints` gauges, and the
//! notification that wakes queued picks.
//!
//! Handles update the counters on every state transition, so a pick reads "how many
//! endpoints are ready" (for the panic threshold) from two atomics instead of
//! scanning the table.

use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::clock;
use crate::metric_names::{label, ENDPOINTS};

use super::endpoint::state;

/// Balancer-wide shared state.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) service: Arc<str>,
    /// Origin of the nanosecond timestamps stored in atomics.
    base: Instant,
    pub(crate) decay_ns: f64,
    pub(crate) default_rtt_ns: f64,
    /// Moving average of every round trip the service has seen (f64 bits; NaN
    /// before the first): the estimate of an endpoint not yet measured.
    service_rtt_ns: AtomicU64,
    /// Endpoints in the current table.
    known: AtomicUsize,
    /// Endpoints in the table that are unreachable or ejected. Signed: two
    /// concurrent transitions may apply their deltas in either order.
    not_ready: AtomicIsize,
    /// Endpoints in the table that are ejected.
    ejected: AtomicIsize,
    /// Endpoints in the table that failed their health checks.
    unhealthy: AtomicIsize,
    /// Whether endpoints discovery adds start out of rotation until their first
    /// health check passes (set once health checks run for the service).
    pub(crate) new_endpoints_unhealthy: AtomicBool,
    /// Callers queued in `Balancer::pick`.
    pub(crate) pending: AtomicUsize,
    /// Wakes queued picks when an endpoint may have become eligible.
    pub(crate) became_ready: Notify,
}

impl Shared {
    pub(crate) fn new(service: Arc<str>, decay: Duration, default_rtt: Duration) -> Self {
        Shared {
            service,
            base: Instant::now(),
            // A zero decay would divide by zero; 1 ns means "latest sample wins".
            decay_ns: (decay.as_nanos() as f64).max(1.0),
            default_rtt_ns: default_rtt.as_nanos() as f64,
            service_rtt_ns: AtomicU64::new(f64::NAN.to_bits()),
            known: AtomicUsize::new(0),
            not_ready: AtomicIsize::new(0),
            ejected: AtomicIsize::new(0),
            unhealthy: AtomicIsize::new(0),
            new_endpoints_unhealthy: AtomicBool::new(false),
            pending: AtomicUsize::new(0),
            became_ready: Notify::new(),
        }
    }

    /// The round-trip estimate of an endpoint not yet measured: the service's
    /// average once it has one, else the configured default. Starting new endpoints
    /// at the default (30 ms) while the others answer in well under a millisecond
    /// would keep P2C from ever picking them, so they would never be measured.
    pub(crate) fn unmeasured_rtt_ns(&self) -> f64 {
        let average = f64::from_bits(self.service_rtt_ns.load(Ordering::Relaxed));
        if average.is_nan() {
            self.default_rtt_ns
        } else {
            average
        }
    }

    /// Folds one round trip into the service's average (weight 1/16 per sample; a
    /// lost update between racing threads only drops one sample).
    pub(crate) fn observe_service_rtt(&self, rtt_ns: f64) {
        let average = f64::from_bits(self.service_rtt_ns.load(Ordering::Relaxed));
        let next = if average.is_nan() {
            rtt_ns
        } else {
            average + (rtt_ns - average) / 16.0
        };
        self.service_rtt_ns.store(next.to_bits(), Ordering::Relaxed);
    }

    /// Nanoseconds from the base instant to `at` (0 for earlier instants).
    pub(crate) fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Nanoseconds from the base instant to now (the open clock scope's
    /// reading, if any: see [`clock`]).
    pub(crate) fn now_nanos(&self) -> u64 {
        self.nanos(clock::now())
    }

    pub(crate) fn known(&self) -> usize {
        self.known.load(Ordering::Acquire)
    }

    pub(crate) fn set_known(&self, known: usize) {
        self.known.store(known, Ordering::Release);
    }

    /// Known endpoints that are reachable and not ejected.
    pub(crate) fn ready(&self, known: usize) -> usize {
        let not_ready = self.not_ready.load(Ordering::Acquire).max(0) as usize;
        known.saturating_sub(not_ready)
    }

    pub(crate) fn ejected(&self) -> usize {
        self.ejected.load(Ordering::Acquire).max(0) as usize
    }

    pub(crate) fn unhealthy(&self) -> usize {
        self.unhealthy.load(Ordering::Acquire).max(0) as usize
    }

    /// Accounts for a new endpoint starting in state `word`, without publishing
    /// (the table update that adds it publishes once for all).
    pub(crate) fn account_new(&self, word: u64) {
        let (not_ready, ejected, unhealthy) = contribution(word);
        self.not_ready.fetch_add(not_ready, Ordering::AcqRel);
        self.ejected.fetch_add(ejected, Ordering::AcqRel);
        self.unhealthy.fetch_add(unhealthy, Ordering::AcqRel);
    }

    /// Accounts for one endpoint's state word going from `old` to `new`.
    pub(crate) fn on_transition(&self, old: u64, new: u64) {
        let old_counts = contribution(old);
        let new_counts = contribution(new);
        if old_counts == new_counts {
            return;
        }
        let (old_not_ready, old_ejected, old_unhealthy) = old_counts;
        let (new_not_ready, new_ejected, new_unhealthy) = new_counts;
        self.not_ready
            .fetch_add(new_not_ready - old_not_ready, Ordering::AcqRel);
        self.ejected
            .fetch_add(new_ejected - old_ejected, Ordering::AcqRel);
        self.unhealthy
            .fetch_add(new_unhealthy - old_unhealthy, Ordering::AcqRel);
        self.publish_gauges();
        if old_not_ready == 1 && new_not_ready == 0 {
            self.became_ready.notify_waiters();
        }
    }

    /// Sets the `mesh.endpoints` gauges from the counters. Called on table and state
    /// changes only, never per pick.
    pub(crate) fn publish_gauges(&self) {
        let known = self.known();
        for (state, value) in [
            ("known", known),
            ("ready", self.ready(known)),
            ("ejected", self.ejected()),
            ("unhealthy", self.unhealthy()),
        ] {
            metrics::gauge!(
                ENDPOINTS.name,
                label::SERVICE => Arc::clone(&self.service),
                label::STATE => state
            )
            .set(value as f64);
        }
    }
}

/// What one endpoint adds to the (not_ready, ejected, unhealthy) counters; removed
/// endpoints add nothing.
fn contribution(word: u64) -> (isize, isize, isize) {
    if word & state::REMOVED != 0 {
        return (0, 0, 0);
    }
    let not_ready =
        isize::from(word & (state::UNREACHABLE | state::EJECTED | state::UNHEALTHY) != 0);
    let ejected = isize::from(word & state::EJECTED != 0);
    let unhealthy = isize::from(word & state::UNHEALTHY != 0);
    (not_ready, ejected, unhealthy)
}
