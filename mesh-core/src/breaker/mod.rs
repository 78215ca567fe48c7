//! Circuit breaking per backend service (Resilience4j's state machine).
//!
//! - **Closed**: calls go through; the outcomes of the last `window` calls are
//!   kept. Once at least `min_calls` are in the window and the failure rate, or
//!   the slow-call rate, reaches its threshold, the breaker opens.
//! - **Open**: every call fails at once with [`BreakerOpen`], without touching the
//!   network, for `open_time`.
//! - **Half-open**: `probes` calls are let through; when all have finished, the
//!   breaker closes if their failure and slow rates are under the thresholds, and
//!   opens again otherwise. Further calls fail fast meanwhile.
//!
//! The breaker sits outside the retry layer: it sees one outcome per request
//! (after retries), and a request it refuses is never retried.

mod layer;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::metric_names::{label, BREAKER_REJECTED, BREAKER_STATE, BREAKER_TRANSITIONS};

pub use layer::{BreakerFuture, BreakerLayer, BreakerService};

/// How a breaker judges and how long it stays open.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSettings {
    /// Failure rate (0..=1) that opens the breaker (0.5, Resilience4j).
    pub failure_rate: f64,
    /// A call slower than this counts as slow; `None`: no call is slow.
    pub slow_call: Option<Duration>,
    /// Slow-call rate (0..=1) that opens the breaker (1.0, Resilience4j).
    pub slow_call_rate: f64,
    /// Calls in the sliding window (100).
    pub window: usize,
    /// Calls the window must hold before rates are judged (100).
    pub min_calls: usize,
    /// Time the breaker stays open before probing (60 s).
    pub open_time: Duration,
    /// Calls let through while half-open (10).
    pub probes: usize,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failure_rate: 0.5,
            slow_call: Some(Duration::from_secs(60)),
            slow_call_rate: 1.0,
            window: 100,
            min_calls: 100,
            open_time: Duration::from_secs(60),
            probes: 10,
        }
    }
}

/// The state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through and are counted.
    Closed,
    /// Calls fail fast.
    Open,
    /// A bounded number of probe calls go through.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of a call the breaker refused: the service has been failing, nothing
/// was sent, and it is not retried.
#[derive(Debug, Clone)]
pub struct BreakerOpen {
    service: Arc<str>,
    retry_in: Duration,
}

impl BreakerOpen {
    /// The service whose breaker is open.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// How long until the breaker lets probes through (zero while half-open).
    pub fn retry_in(&self) -> Duration {
        self.retry_in
    }
}

impl fmt::Display for BreakerOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit breaker of service `{}` is open after too many failed or slow calls; nothing was sent (probes in {} ms)",
            self.service,
            self.retry_in.as_millis()
        )
    }
}

impl std::error::Error for BreakerOpen {}

/// One service's breaker, shared by every clone of its client.
#[derive(Debug)]
pub struct CircuitBreaker {
    service: Arc<str>,
    settings: BreakerSettings,
    inner: Mutex<Inner>,
    rejected: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    /// Bumped on every transition: a call started in an earlier state reports
    /// into nothing.
    generation: u64,
    /// Closed: the window of (failed, slow) outcomes. Half-open: the probes'.
    outcomes: VecDeque<(bool, bool)>,
    failures: usize,
    slow: usize,
    open_until: Instant,
    /// Half-open: probes let through (finished or not).
    probes_started: usize,
}

impl Inner {
    fn push(&mut self, failed: bool, slow: bool, cap: usize) {
        if self.outcomes.len() == cap {
            if let Some((f, s)) = self.outcomes.pop_front() {
                self.failures -= usize::from(f);
                self.slow -= usize::from(s);
            }
        }
        self.outcomes.push_back((failed, slow));
        self.failures += usize::from(failed);
        self.slow += usize::from(slow);
    }

    fn clear(&mut self) {
        self.outcomes.clear();
        self.failures = 0;
        self.slow = 0;
        self.probes_started = 0;
    }
}

/// Leave to make one call, from [`CircuitBreaker::try_acquire`]; report how it went
/// with [`Permit::record`]. Dropped unreported (a cancelled call), it frees
/// its probe slot and counts for nothing.
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<CircuitBreaker>,
    generation: u64,
    started: Instant,
    reported: bool,
}

impl Permit {
    /// Reports the call's outcome; its duration is measured from the permit.
    pub fn record(mut self, failed: bool) {
        self.reported = true;
        let elapsed = self.started.elapsed();
        self.breaker.on_outcome(self.generation, failed, elapsed);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker.on_cancel(self.generation);
        }
    }
}

impl CircuitBreaker {
    /// A closed breaker for `service`.
    pub fn new(service: impl Into<Arc<str>>, settings: BreakerSettings) -> Arc<Self> {
        let breaker = Arc::new(CircuitBreaker {
            service: service.into(),
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                generation: 0,
                outcomes: VecDeque::with_capacity(settings.window.min(1024)),
                failures: 0,
                slow: 0,
                open_until: Instant::now(),
                probes_started: 0,
            }),
            settings,
            rejected: AtomicU64::new(0),
        });
        set_state_gauges(&breaker.service, BreakerState::Closed);
        breaker
    }

    /// The state now (an open breaker whose time is up reads as half-open).
    pub fn state(&self) -> BreakerState {
        let inner = self.inner.lock();
        if inner.state == BreakerState::Open && Instant::now() >= inner.open_until {
            BreakerState::HalfOpen
        } else {
            inner.state
        }
    }

    /// Calls refused since the breaker was created.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// The settings in use.
    pub fn settings(&self) -> &BreakerSettings {
        &self.settings
    }

    /// Leave for one call, or [`BreakerOpen`] when the breaker refuses it.
    pub fn try_acquire(self: &Arc<Self>) -> Result<Permit, BreakerOpen> {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        if inner.state == BreakerState::Open && now >= inner.open_until {
            self.transition(&mut inner, BreakerState::HalfOpen, now);
        }
        let allowed = match inner.state {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => {
                if inner.probes_started < self.settings.probes {
                    inner.probes_started += 1;
                    true
                } else {
                    false
                }
            }
        };
        if !allowed {
            let retry_in = inner.open_until.saturating_duration_since(now);
            drop(inner);
            self.rejected.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(BREAKER_REJECTED.name, label::SERVICE => self.service.to_string())
                .increment(1);
            return Err(BreakerOpen {
                service: self.service.clone(),
                retry_in,
            });
        }
        Ok(Permit {
            breaker: self.clone(),
            generation: inner.generation,
            started: now,
            reported: false,
        })
    }

    fn on_outcome(&self, generation: u64, failed: bool, elapsed: Duration) {
        let slow = self.settings.slow_call.is_some_and(|limit| elapsed > limit);
        let now = Instant::now();
        let mut inner = self.inner.lock();
        if inner.generation != generation {
            return;
        }
        match inner.state {
            BreakerState::Closed => {
                inner.push(failed, slow, self.settings.window.max(1));
                if inner.outcomes.len() >= self.settings.min_calls.max(1) && self.tripped(&inner) {
                    self.transition(&mut inner, BreakerState::Open, now);
                }
            }
            BreakerState::HalfOpen => {
                inner.push(failed, slow, usize::MAX);
                if inner.outcomes.len() >= self.settings.probes {
                    let next = if self.tripped(&inner) {
                        BreakerState::Open
                    } else {
                        BreakerState::Closed
                    };
                    self.transition(&mut inner, next, now);
                }
            }
            BreakerState::Open => {}
        }
    }

    fn on_cancel(&self, generation: u64) {
        let mut inner = self.inner.lock();
        if inner.generation == generation && inner.state == BreakerState::HalfOpen {
            inner.probes_started = inner.probes_started.saturating_sub(1);
        }
    }

    fn tripped(&self, inner: &Inner) -> bool {
        let n = inner.outcomes.len().max(1) as f64;
        inner.failures as f64 / n >= self.settings.failure_rate
            || (self.settings.slow_call.is_some()
                && inner.slow as f64 / n >= self.settings.slow_call_rate)
    }

    fn transition(&self, inner: &mut Inner, to: BreakerState, now: Instant) {
        inner.state = to;
        inner.generation += 1;
        inner.clear();
        if to == BreakerState::Open {
            inner.open_until = now + self.settings.open_time;
        }
        let service = self.service.to_string();
        metrics::counter!(BREAKER_TRANSITIONS.name, label::SERVICE => service.clone(), label::STATE => to.as_str())
            .increment(1);
        set_state_gauges(&service, to);
        tracing::info!(service = %self.service, state = to.as_str(), "circuit breaker changed state");
    }
}

/// One gauge series per state, 1 for the current one (so an alert can select
/// `mesh_state="open"`).
fn set_state_gauges(service: &str, current: BreakerState) {
    for state in [
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::HalfOpen,
    ] {
        let value = if state == current { 1.0 } else { 0.0 };
        metrics::gauge!(BREAKER_STATE.name, label::SERVICE => service.to_string(), label::STATE => state.as_str())
            .set(value);
    }
}
