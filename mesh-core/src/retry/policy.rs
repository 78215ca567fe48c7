//! What a service's retry policy says: which failures, which methods, how many
//! attempts, how long to wait between them.

use std::time::Duration;

use http::Method;

/// Most attempts a request may make, counting the first (gRPC clamps
/// `maxAttempts` to 5, gRFC A6).
pub const MAX_ATTEMPTS_CAP: u32 = 5;

/// Failures that are retried (beyond connect failures and HTTP/2 refused streams,
/// which nothing reached the server for and are always retried).
///
/// Parsed from a comma-separated list: `503`, `5xx`, `gateway-error` (502, 503,
/// 504), `reset`, `per-try-timeout`, `unavailable` (gRPC), and the always-on
/// `connect-failure` and `refused-stream`, accepted for clarity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryOn(u8);

impl RetryOn {
    /// HTTP 503.
    pub const UNAVAILABLE_503: RetryOn = RetryOn(1);
    /// Any HTTP 5xx.
    pub const SERVER_ERROR: RetryOn = RetryOn(1 << 1);
    /// HTTP 502, 503, 504.
    pub const GATEWAY_ERROR: RetryOn = RetryOn(1 << 2);
    /// A connection reset after the request may have been sent.
    pub const RESET: RetryOn = RetryOn(1 << 3);
    /// An attempt that ran out of its per-try timeout.
    pub const PER_TRY_TIMEOUT: RetryOn = RetryOn(1 << 4);
    /// gRPC `UNAVAILABLE` (read by the gRPC classifier).
    pub const GRPC_UNAVAILABLE: RetryOn = RetryOn(1 << 5);
    /// Nothing.
    pub const NONE: RetryOn = RetryOn(0);

    /// Whether every condition in `other` is in `self`.
    pub fn contains(self, other: RetryOn) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for RetryOn {
    type Output = RetryOn;
    fn bitor(self, rhs: RetryOn) -> RetryOn {
        RetryOn(self.0 | rhs.0)
    }
}

/// The documented default of `RETRY_ON`: Istio's conditions (connect failures,
/// refused streams, gRPC `UNAVAILABLE`, HTTP 503) plus connections that broke
/// after the request went out, which only idempotent methods are retried after.
impl Default for RetryOn {
    fn default() -> Self {
        crate::config::default_of("RETRY_ON")
            .parse()
            .expect("the documented default parses")
    }
}

impl std::str::FromStr for RetryOn {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str = "a comma-separated list of connect-failure, refused-stream, 503, 5xx, gateway-error, reset, per-try-timeout, unavailable (or `none`)";
        let mut on = RetryOn::NONE;
        for item in crate::config::value::list(s) {
            on = on
                | match item {
                    "connect-failure" | "refused-stream" | "none" => RetryOn::NONE,
                    "503" => RetryOn::UNAVAILABLE_503,
                    "5xx" => RetryOn::SERVER_ERROR,
                    "gateway-error" => RetryOn::GATEWAY_ERROR,
                    "reset" => RetryOn::RESET,
                    "per-try-timeout" => RetryOn::PER_TRY_TIMEOUT,
                    "unavailable" => RetryOn::GRPC_UNAVAILABLE,
                    _ => return Err(EXPECTED),
                };
        }
        Ok(on)
    }
}

/// HTTP methods whose requests may be retried or hedged without the caller saying
/// so (the idempotent ones by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodSet(Vec<Method>);

impl MethodSet {
    /// Whether `method` is in the set.
    pub fn contains(&self, method: &Method) -> bool {
        self.0.iter().any(|m| m == method)
    }
}

impl Default for MethodSet {
    /// The idempotent methods of RFC 9110: GET, HEAD, OPTIONS, TRACE, PUT, DELETE.
    fn default() -> Self {
        MethodSet(vec![
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::TRACE,
            Method::PUT,
            Method::DELETE,
        ])
    }
}

impl std::str::FromStr for MethodSet {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str =
            "a comma-separated list of HTTP methods such as GET,HEAD,PUT (or `none`)";
        let mut methods = Vec::new();
        for item in crate::config::value::list(s) {
            if item == "none" {
                continue;
            }
            let method = match item.to_ascii_uppercase().as_str() {
                "GET" => Method::GET,
                "HEAD" => Method::HEAD,
                "OPTIONS" => Method::OPTIONS,
                "TRACE" => Method::TRACE,
                "PUT" => Method::PUT,
                "DELETE" => Method::DELETE,
                "POST" => Method::POST,
                "PATCH" => Method::PATCH,
                _ => return Err(EXPECTED),
            };
            methods.push(method);
        }
        Ok(MethodSet(methods))
    }
}

/// Exponential backoff with full jitter between retries: before retry `n` (0 for
/// the first), wait a random time in `0..=min(base × 2ⁿ, max)` (Envoy, gRFC A6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBackoff {
    /// The first retry's cap.
    pub base: Duration,
    /// The largest cap.
    pub max: Duration,
}

impl Default for RetryBackoff {
    /// 25 ms base, 250 ms max (Envoy).
    fn default() -> Self {
        RetryBackoff {
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
        }
    }
}

impl RetryBackoff {
    /// The cap of the wait before retry number `retry` (0 for the first).
    pub fn cap(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The wait before retry number `retry`, drawn with full jitter.
    pub fn delay(&self, retry: u32) -> Duration {
        self.cap(retry).mul_f64(rand::random::<f64>())
    }
}

/// A service's (or route's) retry and hedging policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts per request, counting the first; 1 turns retries off.
    pub max_attempts: u32,
    /// Failures retried.
    pub retry_on: RetryOn,
    /// Methods retried without the caller marking the request.
    pub methods: MethodSet,
    /// Wait between attempts.
    pub backoff: RetryBackoff,
    /// Largest request body kept so it can be sent again.
    pub replay_buffer: usize,
    /// Time allowed for one attempt; `None` for no limit beyond the deadline.
    pub per_try_timeout: Option<Duration>,
    /// When a hedged second attempt starts; `None` turns hedging off.
    pub hedge_delay: Option<HedgeDelay>,
}

impl Default for RetryPolicy {
    /// The documented defaults: 3 attempts, Istio's conditions, idempotent methods,
    /// 25–250 ms backoff, 64 KiB replay buffer, no per-try timeout, no hedging.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            retry_on: RetryOn::default(),
            methods: MethodSet::default(),
            backoff: RetryBackoff::default(),
            replay_buffer: 64 * 1024,
            per_try_timeout: None,
            hedge_delay: None,
        }
    }
}

/// When a hedge starts: after a fixed delay, or once the first attempt has taken
/// longer than a percentile of the service's recent attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HedgeDelay {
    /// A fixed delay.
    Fixed(Duration),
    /// A quantile (0.95 for `p95`) of the latencies of recent attempts (the last
    /// 10 to 20 s); no hedge until 50 attempts were seen.
    Percentile(f64),
}

/// Parses `HEDGE_DELAY`: `off`, a duration, or a percentile `p50`..`p99.9`.
pub fn parse_hedge_delay(s: &str) -> Result<Option<HedgeDelay>, &'static str> {
    const EXPECTED: &str =
        "a duration such as 50ms, a latency percentile such as p95 (p50 to p99.9), or `off`";
    let s = s.trim();
    if let Some(p) = s.strip_prefix('p') {
        return match p.parse::<f64>() {
            Ok(p) if (50.0..=99.9).contains(&p) => Ok(Some(HedgeDelay::Percentile(p / 100.0))),
            _ => Err(EXPECTED),
        };
    }
    crate::config::value::optional_duration(s)
        .map(|d| d.map(HedgeDelay::Fixed))
        .map_err(|_| EXPECTED)
}

/// Parses a max-attempts value: 1 to [`MAX_ATTEMPTS_CAP`].
pub fn parse_max_attempts(s: &str) -> Result<u32, &'static str> {
    const EXPECTED: &str = "a whole number from 1 (no retries) to 5";
    match s.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_ATTEMPTS_CAP).contains(&n) => Ok(n),
        _ => Err(EXPECTED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_caps_double_from_base_to_max_and_jitter_stays_below_the_cap() {
        let b = RetryBackoff::default();
        assert_eq!(b.cap(0), Duration::from_millis(25));
        assert_eq!(b.cap(1), Duration::from_millis(50));
        assert_eq!(b.cap(2), Duration::from_millis(100));
        assert_eq!(b.cap(3), Duration::from_millis(200));
        assert_eq!(b.cap(4), Duration::from_millis(250));
        assert_eq!(b.cap(40), Duration::from_millis(250));
        // Full jitter: draws spread over the whole of 0..=cap, not around it.
        let draws: Vec<Duration> = (0..2000).map(|_| b.delay(3)).collect();
        assert!(draws.iter().all(|d| *d <= Duration::from_millis(200)));
        assert!(draws.iter().any(|d| *d < Duration::from_millis(20)));
        assert!(draws.iter().any(|d| *d > Duration::from_millis(180)));
    }

    #[test]
    fn methods_and_conditions_parse_and_unknown_words_are_rejected() {
        let m: MethodSet = "get, POST".parse().unwrap();
        assert!(m.contains(&Method::GET) && m.contains(&Method::POST));
        assert!(!m.contains(&Method::PUT));
        assert!("GET,FETCH".parse::<MethodSet>().is_err());
        assert!(!MethodSet::default().contains(&Method::POST));
        let on: RetryOn = "5xx,reset".parse().unwrap();
        assert!(on.contains(RetryOn::SERVER_ERROR | RetryOn::RESET));
        assert!(!on.contains(RetryOn::UNAVAILABLE_503));
        assert!("503,teapot".parse::<RetryOn>().is_err());
        assert_eq!(parse_max_attempts("5"), Ok(5));
        assert_eq!(
            parse_hedge_delay("p95"),
            Ok(Some(HedgeDelay::Percentile(0.95)))
        );
        assert_eq!(
            parse_hedge_delay("40ms"),
            Ok(Some(HedgeDelay::Fixed(Duration::from_millis(40))))
        );
        assert_eq!(parse_hedge_delay("off"), Ok(None));
        for bad in ["p100", "p10", "px", "soon", "-5ms"] {
            assert!(parse_hedge_delay(bad).is_err(), "{bad}");
        }
        assert!(parse_max_attempts("0").is_err());
        assert!(parse_max_attempts("6").is_err());
    }
}
