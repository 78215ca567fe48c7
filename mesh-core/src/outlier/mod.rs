//! Passive outlier detection: endpoints whose calls fail are ejected from the
//! balancer for a while, through [`EndpointHandle::eject_until`], and come back by
//! themselves when the ejection runs out (the balancer clears it lazily).
//!
//! Three methods, as in Envoy and gRFC A50:
//! - **consecutive failures** (default 5): ejects at once, on the failure that
//!   completes the run, so a backend that fails fast cannot draw traffic for long
//!   because its failures are quick;
//! - **success rate**: once per interval, among endpoints with at least 100 calls
//!   (and at least 5 such endpoints), those below mean − 1.9 σ are ejected;
//! - **failure percentage**: once per interval, among endpoints with at least 50
//!   calls (and at least 5 such endpoints), those failing 85 % or more are ejected.
//!
//! An ejection lasts `base × n`, capped at `max`, where `n` counts the endpoint's
//! ejections and drops by one for each interval it spends in rotation (Envoy's
//! ejection multiplier). No more than `max_ejected` of the known endpoints are
//! ejected at once, but one always may be. Below the balancer's panic threshold the
//! balancer ignores ejections altogether.
//!
//! The interval's sweep runs inside [`OutlierDetector::record`] when the interval
//! has passed: no timer task per service, and an idle service costs nothing.

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use tokio::time::Instant;

use crate::balance::EndpointHandle;
use crate::clock;
use crate::metric_names::{label, OUTLIER_EJECTIONS};

/// Success-rate method parameters (Envoy's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SuccessRate {
    /// Endpoints below mean − `stdev_factor` × σ are ejected (1.9).
    pub stdev_factor: f64,
    /// Endpoints with enough calls needed before the method runs (5).
    pub min_hosts: usize,
    /// Calls an endpoint needs in the interval to be judged (100).
    pub min_requests: u64,
}

/// Failure-percentage method parameters (Envoy's and gRFC A50's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailurePercentage {
    /// Share of failed calls that ejects (0.85).
    pub threshold: f64,
    /// Endpoints with enough calls needed before the method runs (5).
    pub min_hosts: usize,
    /// Calls an endpoint needs in the interval to be judged (50).
    pub min_requests: u64,
}

/// How outlier detection judges and ejects endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierSettings {
    /// Failures in a row that eject an endpoint; `None` turns the method off.
    pub consecutive_failures: Option<u32>,
    /// How often the success-rate and failure-percentage methods run, and how
    /// often an endpoint's ejection multiplier decays.
    pub interval: Duration,
    /// First ejection time; the n-th ejection in a row lasts n times as long.
    pub base_ejection: Duration,
    /// Longest ejection time.
    pub max_ejection: Duration,
    /// Largest share of the known endpoints ejected at once (one may always be).
    pub max_ejected: f64,
    /// The success-rate method; `None` turns it off.
    pub success_rate: Option<SuccessRate>,
    /// The failure-percentage method; `None` turns it off.
    pub failure_percentage: Option<FailurePercentage>,
}

impl Default for OutlierSettings {
    fn default() -> Self {
        OutlierSettings {
            consecutive_failures: Some(5),
            interval: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected: 0.1,
            success_rate: Some(SuccessRate {
                stdev_factor: 1.9,
                min_hosts: 5,
                min_requests: 100,
            }),
            failure_percentage: Some(FailurePercentage {
                threshold: 0.85,
                min_hosts: 5,
                min_requests: 50,
            }),
        }
    }
}

/// Why an endpoint was ejected; the `mesh.reason` of the ejection metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EjectionReason {
    /// A run of consecutive failures.
    ConsecutiveFailures,
    /// Success rate far below the other endpoints'.
    SuccessRate,
    /// Failure share over the threshold.
    FailurePercentage,
}

impl EjectionReason {
    /// A fixed word for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            EjectionReason::ConsecutiveFailures => "consecutive_failures",
            EjectionReason::SuccessRate => "success_rate",
            EjectionReason::FailurePercentage => "failure_percentage",
        }
    }
}

/// One service's outlier detector, shared by every clone of its client. The
/// dispatch reports each attempt's classified outcome for the endpoint that served
/// it with [`record`](Self::record).
#[derive(Debug)]
pub struct OutlierDetector {
    service: Arc<str>,
    settings: OutlierSettings,
    state: Mutex<State>,
    ejections: AtomicU64,
}

#[derive(Debug)]
struct State {
    /// Every call's outcome is recorded here, so the key is hashed on every
    /// request: Fx rather than SipHash (≈ 200 instructions saved per call). The
    /// keys are the service's own endpoint addresses, from discovery, not from
    /// whoever sends requests, so there is no one to flood it with collisions.
    endpoints: FxHashMap<SocketAddr, Stats>,
    /// Start of the current interval.
    interval_start: Instant,
    /// When the current interval ends (`None`: never, the interval being too
    /// long to add): compared on every call, where working out the time since
    /// `interval_start` would be a clock subtraction (≈ 55 instructions).
    interval_end: Option<Instant>,
}

impl State {
    fn starting(interval_start: Instant, interval: Duration) -> State {
        State {
            endpoints: FxHashMap::default(),
            interval_start,
            interval_end: interval_start.checked_add(interval),
        }
    }

    /// Whether the interval that started at `interval_start` has passed at `now`.
    fn interval_passed(&self, now: Instant, interval: Duration) -> bool {
        // A zero interval has always passed, even for a reading a little older
        // than its start (the time since saturates at zero).
        interval.is_zero() || self.interval_end.is_some_and(|end| now >= end)
    }
}

#[derive(Debug)]
struct Stats {
    handle: EndpointHandle,
    consecutive_failures: u32,
    successes: u64,
    failures: u64,
    /// Envoy's ejection multiplier: ejections not yet forgiven.
    multiplier: u32,
    ejected_until: Option<Instant>,
}

impl Stats {
    fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| until > now)
    }
}

impl OutlierDetector {
    /// A detector for `service` with nothing recorded yet.
    pub fn new(service: impl Into<Arc<str>>, settings: OutlierSettings) -> Self {
        let state = State::starting(Instant::now(), settings.interval);
        OutlierDetector {
            service: service.into(),
            settings,
            state: Mutex::new(state),
            ejections: AtomicU64::new(0),
        }
    }

    /// Ejections made since the detector was created.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// The settings in use.
    pub fn settings(&self) -> &OutlierSettings {
        &self.settings
    }

    /// Records one call's outcome for the endpoint `handle` names; `known` is the
    /// number of endpoints the service has now (for the ejection cap). May eject
    /// that endpoint, and runs the interval's sweep when the interval has passed.
    pub fn record(&self, handle: &EndpointHandle, failed: bool, known: usize) {
        // The call's shared reading when the mesh client reports (see `clock`).
        let now = clock::now();
        let mut state = self.state.lock();
        if state.interval_passed(now, self.settings.interval) {
            self.sweep(&mut state, now, known);
        }
        let stats = state
            .endpoints
            .entry(handle.addr())
            .or_insert_with(|| Stats {
                handle: handle.clone(),
                consecutive_failures: 0,
                successes: 0,
                failures: 0,
                multiplier: 0,
                ejected_until: None,
            });
        if failed {
            stats.failures += 1;
            stats.consecutive_failures = stats.consecutive_failures.saturating_add(1);
        } else {
            stats.successes += 1;
            stats.consecutive_failures = 0;
        }
        let run_complete = self
            .settings
            .consecutive_failures
            .is_some_and(|limit| stats.consecutive_failures >= limit);
        // Calls already in flight when the endpoint was ejected still report: they
        // must not stretch the ejection.
        if run_complete && !stats.is_ejected(now) {
            let addr = handle.addr();
            self.try_eject(
                &mut state,
                addr,
                now,
                known,
                EjectionReason::ConsecutiveFailures,
            );
        }
    }

    /// Ejects `addr` unless the cap is reached.
    fn try_eject(
        &self,
        state: &mut State,
        addr: SocketAddr,
        now: Instant,
        known: usize,
        reason: EjectionReason,
    ) -> bool {
        let ejected = state
            .endpoints
            .values()
            .filter(|s| s.is_ejected(now))
            .count();
        if ejected >= max_ejected(known, self.settings.max_ejected) {
            return false;
        }
        let Some(stats) = state.endpoints.get_mut(&addr) else {
            return false;
        };
        stats.multiplier = stats.multiplier.saturating_add(1);
        let time = self
            .settings
            .base_ejection
            .saturating_mul(stats.multiplier)
            .min(self.settings.max_ejection);
        let until = now + time;
        stats.ejected_until = Some(until);
        stats.consecutive_failures = 0;
        stats.handle.eject_until(until);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(
            OUTLIER_EJECTIONS.name,
            label::SERVICE => self.service.to_string(),
            label::REASON => reason.as_str()
        )
        .increment(1);
        tracing::info!(
            service = %self.service,
            endpoint = %addr,
            reason = reason.as_str(),
            seconds = time.as_secs_f64(),
            "outlier detection ejected an endpoint"
        );
        true
    }

    /// End of an interval: decay multipliers, run the statistical methods over the
    /// interval's counts, start a new interval.
    fn sweep(&self, state: &mut State, now: Instant, known: usize) {
        let elapsed = now.duration_since(state.interval_start);
        let intervals = (elapsed.as_nanos() / self.settings.interval.as_nanos().max(1)) as u32;
        state.endpoints.retain(|_, s| !s.handle.is_removed());
        for stats in state.endpoints.values_mut() {
            if stats.ejected_until.is_some_and(|until| until <= now) {
                stats.ejected_until = None;
            }
            if !stats.is_ejected(now) {
                stats.multiplier = stats.multiplier.saturating_sub(intervals);
            }
        }
        let mut candidates: Vec<(SocketAddr, EjectionReason)> = Vec::new();
        if let Some(sr) = self.settings.success_rate {
            let judged: Vec<(SocketAddr, f64)> = state
                .endpoints
                .iter()
                .filter(|(_, s)| !s.is_ejected(now) && s.successes + s.failures >= sr.min_requests)
                .map(|(a, s)| (*a, s.successes as f64 / (s.successes + s.failures) as f64))
                .collect();
            if judged.len() >= sr.min_hosts {
                let n = judged.len() as f64;
                let mean = judged.iter().map(|(_, r)| r).sum::<f64>() / n;
                let variance = judged.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
                let floor = mean - sr.stdev_factor * variance.sqrt();
                candidates.extend(
                    judged
                        .iter()
                        .filter(|(_, r)| *r < floor)
                        .map(|(a, _)| (*a, EjectionReason::SuccessRate)),
                );
            }
        }
        if let Some(fp) = self.settings.failure_percentage {
            let judged: Vec<(SocketAddr, f64)> = state
                .endpoints
                .iter()
                .filter(|(_, s)| !s.is_ejected(now) && s.successes + s.failures >= fp.min_requests)
                .map(|(a, s)| (*a, s.failures as f64 / (s.successes + s.failures) as f64))
                .collect();
            if judged.len() >= fp.min_hosts {
                let failing: Vec<(SocketAddr, EjectionReason)> = judged
                    .iter()
                    .filter(|(a, f)| *f >= fp.threshold && !candidates.iter().any(|(c, _)| c == a))
                    .map(|(a, _)| (*a, EjectionReason::FailurePercentage))
                    .collect();
                candidates.extend(failing);
            }
        }
        for (addr, reason) in candidates {
            self.try_eject(state, addr, now, known, reason);
        }
        for stats in state.endpoints.values_mut() {
            stats.successes = 0;
            stats.failures = 0;
        }
        state.interval_start += self.settings.interval * intervals.max(1);
        state.interval_end = state.interval_start.checked_add(self.settings.interval);
    }
}

/// How many of `known` endpoints may be ejected at once: `share` of them rounded
/// down, but at least one (Envoy).
pub fn max_ejected(known: usize, share: f64) -> usize {
    ((known as f64 * share).floor() as usize).max(1)
}
