//! Token-bucket rate limits whose state every clone of a service shares.
//!
//! `tower::limit::RateLimit` keeps its bucket in the service value: behind a
//! `Buffer`, or cloned into each connection's service as axum does, every clone
//! gets a limit of its own. Here the bucket lives in an `Arc` handed to the layer,
//! so one limit covers the whole server (or the whole outbound service), and a
//! [`KeyedRateLimit`] keeps one bucket per key (per peer identity) the same way.
//!
//! - [`RateLimitLayer`] (inbound): over the limit, answers `429 Too Many Requests`
//!   with `Retry-After` without calling the handler; usable on any axum router.
//! - [`TokenBucket::try_acquire`] (outbound): the client fails the request with
//!   [`RateLimited`] before anything is sent.

mod layer;
mod outbound;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

pub use layer::{KeyedRateLimitLayer, RateLimitLayer, RateLimitService};
pub use outbound::{OutboundRateLimit, OutboundRateLimitLayer};

/// A rate: `per_second` tokens a second, up to `burst` saved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: f64,
    /// Most tokens the bucket holds (requests allowed at once after a quiet spell).
    pub burst: f64,
}

impl Rate {
    /// `per_second` requests a second, with a burst of one second's worth.
    pub fn per_second(per_second: f64) -> Self {
        Rate {
            per_second,
            burst: per_second.max(1.0),
        }
    }
}

/// A rate could not be parsed; says what a valid one looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseRateError;

impl fmt::Display for ParseRateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a rate such as 100/s or 6000/m, optionally with a burst: 100/s,burst=200, or `off`",
        )
    }
}

impl std::error::Error for ParseRateError {}

impl FromStr for Rate {
    type Err = ParseRateError;

    /// `100/s`, `6000/m`, `10/ms`… with an optional `,burst=N`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (rate, burst) = match s.trim().split_once(',') {
            Some((rate, burst)) => (rate.trim(), Some(burst.trim())),
            None => (s.trim(), None),
        };
        let (count, unit) = rate.split_once('/').ok_or(ParseRateError)?;
        let count: f64 = count.trim().parse().map_err(|_| ParseRateError)?;
        let seconds = match unit.trim() {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(ParseRateError),
        };
        if !(count.is_finite() && count > 0.0) {
            return Err(ParseRateError);
        }
        let mut parsed = Rate::per_second(count / seconds);
        if let Some(burst) = burst {
            let n: f64 = burst
                .strip_prefix("burst=")
                .ok_or(ParseRateError)?
                .parse()
                .map_err(|_| ParseRateError)?;
            if !(n.is_finite() && n >= 1.0) {
                return Err(ParseRateError);
            }
            parsed.burst = n;
        }
        Ok(parsed)
    }
}

/// A request refused because the rate limit was reached; nothing was sent.
#[derive(Debug, Clone)]
pub struct RateLimited {
    retry_after: Duration,
}

impl RateLimited {
    /// When a token will be available again.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rate limit reached; nothing was sent (next request allowed in {} ms)",
            self.retry_after.as_millis()
        )
    }
}

impl std::error::Error for RateLimited {}

/// One token bucket, shared through `Arc` by everything it limits.
#[derive(Debug)]
pub struct TokenBucket {
    rate: Rate,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: Rate) -> Self {
        TokenBucket {
            rate,
            state: Mutex::new(BucketState {
                tokens: rate.burst,
                updated: Instant::now(),
            }),
        }
    }

    /// The rate it enforces.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes a token, or says how long until one is there.
    pub fn try_acquire(&self) -> Result<(), RateLimited> {
        let now = Instant::now();
        let mut state = self.state.lock();
        let elapsed = now.saturating_duration_since(state.updated).as_secs_f64();
        state.tokens = (state.tokens + elapsed * self.rate.per_second).min(self.rate.burst);
        state.updated = now;
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - state.tokens;
            Err(RateLimited {
                retry_after: Duration::from_secs_f64(missing / self.rate.per_second),
            })
        }
    }
}

/// One bucket per key (such as a peer's SPIFFE ID), all at the same rate, shared
/// through `Arc`. Buckets that have refilled completely are forgotten when the map
/// grows, so keys do not accumulate without bound.
#[derive(Debug)]
pub struct KeyedRateLimit<K> {
    rate: Rate,
    buckets: Mutex<HashMap<K, Arc<TokenBucket>>>,
}

/// Keys kept before full buckets are swept out.
const SWEEP_AT: usize = 4096;

impl<K: Hash + Eq + Clone> KeyedRateLimit<K> {
    /// No buckets yet; each key gets a full one on its first request.
    pub fn new(rate: Rate) -> Self {
        KeyedRateLimit {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token from `key`'s bucket.
    pub fn try_acquire(&self, key: &K) -> Result<(), RateLimited> {
        let bucket = {
            let mut buckets = self.buckets.lock();
            if buckets.len() >= SWEEP_AT && !buckets.contains_key(key) {
                let now = Instant::now();
                let rate = self.rate;
                buckets.retain(|_, b| {
                    let s = b.state.lock();
                    s.tokens
                        + now.saturating_duration_since(s.updated).as_secs_f64() * rate.per_second
                        < rate.burst
                });
            }
            buckets
                .entry(key.clone())
                .or_insert_with(|| Arc::new(TokenBucket::new(self.rate)))
                .clone()
        };
        bucket.try_acquire()
    }
}
