//! Concurrency limits with load shedding: a request that would exceed the limit is
//! refused at once (inbound: 503, which a caller may retry elsewhere; outbound: an
//! error before sending) instead of queueing without bound.
//!
//! The limit is fixed, or adapts to measured latency:
//! - **Gradient2** (Netflix concurrency-limits, the default for `adaptive`):
//!   compares the latest round trip with a long-term average; while latency stays
//!   near its usual level the limit grows by a small queue allowance, and when it
//!   climbs (a queue is forming) the limit shrinks by the ratio, down to half per
//!   step. Initial 20, min 20, max 200, smoothing 0.2, tolerance 1.5.
//! - **AIMD**: +1 per sample while at least half the limit is in use, ×0.9 on a
//!   dropped (failed or overloaded) request; 20..200.

mod layer;
mod outbound;
#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

pub use layer::{Admitted, ConcurrencyLimitLayer, ConcurrencyLimitService};
pub use outbound::{OutboundConcurrency, OutboundConcurrencyLayer};

/// How the limit is set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LimitAlgorithm {
    /// A fixed number of requests at once.
    Fixed(usize),
    /// Gradient2 (latency gradient).
    Gradient2 {
        /// Starting limit (20).
        initial: usize,
        /// Lowest limit (20).
        min: usize,
        /// Highest limit (200).
        max: usize,
        /// Weight of each new estimate (0.2).
        smoothing: f64,
        /// How much slower than usual a round trip may be before the limit
        /// shrinks (1.5).
        tolerance: f64,
    },
    /// Additive increase, multiplicative decrease.
    Aimd {
        /// Starting and lowest limit (20).
        min: usize,
        /// Highest limit (200).
        max: usize,
        /// Factor applied on a drop (0.9).
        backoff: f64,
    },
}

impl LimitAlgorithm {
    /// Gradient2 with Netflix's defaults.
    pub const GRADIENT2: LimitAlgorithm = LimitAlgorithm::Gradient2 {
        initial: 20,
        min: 20,
        max: 200,
        smoothing: 0.2,
        tolerance: 1.5,
    };

    /// AIMD with Netflix's defaults.
    pub const AIMD: LimitAlgorithm = LimitAlgorithm::Aimd {
        min: 20,
        max: 200,
        backoff: 0.9,
    };

    fn initial(&self) -> f64 {
        match *self {
            LimitAlgorithm::Fixed(n) => n as f64,
            LimitAlgorithm::Gradient2 { initial, .. } => initial as f64,
            LimitAlgorithm::Aimd { min, .. } => min as f64,
        }
    }
}

/// A limit setting could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseLimitError;

impl fmt::Display for ParseLimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`adaptive` (Gradient2), `aimd`, a fixed limit of at least 1, or `off`")
    }
}

impl std::error::Error for ParseLimitError {}

impl FromStr for LimitAlgorithm {
    type Err = ParseLimitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "adaptive" | "gradient2" => Ok(LimitAlgorithm::GRADIENT2),
            "aimd" => Ok(LimitAlgorithm::AIMD),
            n => match n.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(LimitAlgorithm::Fixed(n)),
                _ => Err(ParseLimitError),
            },
        }
    }
}

/// A request shed because the concurrency limit was reached; nothing was sent.
#[derive(Debug, Clone)]
pub struct Overloaded {
    limit: usize,
}

impl Overloaded {
    /// The limit at the time.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl fmt::Display for Overloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "concurrency limit of {} requests reached; the request was shed before sending",
            self.limit
        )
    }
}

impl std::error::Error for Overloaded {}

/// A concurrency limit shared by every clone of a service.
#[derive(Debug)]
pub struct ConcurrencyLimit {
    algorithm: LimitAlgorithm,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    limit: f64,
    in_flight: usize,
    /// Gradient2's long-term round trip (seconds); `None` before the first sample.
    long_rtt: Option<f64>,
    samples: u64,
}

/// Gradient2's long window: the average's weight per sample is 2 / (600 + 1).
const LONG_WINDOW: f64 = 600.0;
/// Gradient2's queue allowance added per estimate.
const QUEUE_SIZE: f64 = 4.0;

impl ConcurrencyLimit {
    /// A limit with nothing in flight.
    pub fn new(algorithm: LimitAlgorithm) -> Arc<Self> {
        Arc::new(ConcurrencyLimit {
            algorithm,
            state: Mutex::new(State {
                limit: algorithm.initial(),
                in_flight: 0,
                long_rtt: None,
                samples: 0,
            }),
        })
    }

    /// The limit now.
    pub fn limit(&self) -> usize {
        self.state.lock().limit as usize
    }

    /// Requests admitted and not finished.
    pub fn in_flight(&self) -> usize {
        self.state.lock().in_flight
    }

    /// Admits one request, or sheds it.
    pub fn try_acquire(self: &Arc<Self>) -> Result<ConcurrencyPermit, Overloaded> {
        let mut state = self.state.lock();
        let limit = state.limit as usize;
        if state.in_flight >= limit {
            return Err(Overloaded { limit });
        }
        state.in_flight += 1;
        Ok(ConcurrencyPermit {
            limit: self.clone(),
            started: Instant::now(),
            in_flight: state.in_flight,
            done: false,
        })
    }

    fn on_sample(&self, rtt: Duration, in_flight: usize, dropped: bool) {
        let mut state = self.state.lock();
        state.in_flight -= 1;
        state.samples += 1;
        let limit = state.limit;
        state.limit = match self.algorithm {
            LimitAlgorithm::Fixed(n) => n as f64,
            LimitAlgorithm::Aimd { min, max, backoff } => {
                let next = if dropped {
                    limit * backoff
                } else if in_flight as f64 * 2.0 >= limit {
                    limit + 1.0
                } else {
                    limit
                };
                next.clamp(min as f64, max as f64)
            }
            LimitAlgorithm::Gradient2 {
                min,
                max,
                smoothing,
                tolerance,
                ..
            } => {
                let short = rtt.as_secs_f64().max(1e-6);
                let long = match state.long_rtt {
                    None => short,
                    Some(long) => {
                        let weight = 2.0 / (LONG_WINDOW + 1.0);
                        let mut long = long * (1.0 - weight) + short * weight;
                        // After a long slow spell, let the average come back down
                        // faster than the window alone would.
                        if long / short > 2.0 {
                            long *= 0.95;
                        }
                        long
                    }
                };
                state.long_rtt = Some(long);
                if (in_flight as f64) < limit / 2.0 {
                    // Not using the limit: no evidence to grow or shrink it.
                    limit
                } else {
                    let gradient = (tolerance * long / short).clamp(0.5, 1.0);
                    let estimate = limit * gradient + QUEUE_SIZE;
                    (limit * (1.0 - smoothing) + estimate * smoothing).clamp(min as f64, max as f64)
                }
            }
        };
    }

    fn on_cancel(&self) {
        self.state.lock().in_flight -= 1;
    }
}

/// One admitted request; report how it went with [`record`](Self::record). Dropped
/// unreported, it frees its place without a sample.
#[derive(Debug)]
pub struct ConcurrencyPermit {
    limit: Arc<ConcurrencyLimit>,
    started: Instant,
    /// Requests in flight when this one was admitted, itself included.
    in_flight: usize,
    done: bool,
}

impl ConcurrencyPermit {
    /// Reports the request's round trip (measured from admission) and whether it
    /// was dropped (failed for overload or timed out).
    pub fn record(mut self, dropped: bool) {
        self.done = true;
        self.limit
            .on_sample(self.started.elapsed(), self.in_flight, dropped);
    }
}

impl Drop for ConcurrencyPermit {
    fn drop(&mut self) {
        if !self.done {
            self.limit.on_cancel();
        }
    }
}
