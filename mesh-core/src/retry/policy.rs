//! What a service's retry policy says: which failures, which methods, how many
//! attempts, how long to wait between them.

use std::time::Duration;

use http::Method;

use crate::classify::{GrpcCode, GrpcCodes};

/// Most attempts a request may make, counting the first (gRPC clamps
/// `maxAttempts` to 5, gRFC A6).
pub const MAX_ATTEMPTS_CAP: u32 = 5;

/// Failures that are retried (beyond connect failures and HTTP/2 refused streams,
/// which nothing reached the server for and are always retried).
///
/// Parsed from a comma-separated list: `503`, `5xx`, `gateway-error` (502, 503,
/// 504), `reset`, `per-try-timeout`, gRPC status codes by name (`unavailable`,
/// `resource-exhausted`, `RESOURCE_EXHAUSTED`, …: any code but `ok`), and the
/// always-on `connect-failure` and `refused-stream`, accepted for clarity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryOn {
    http: u8,
    grpc: GrpcCodes,
}

impl RetryOn {
    /// HTTP 503.
    pub const UNAVAILABLE_503: RetryOn = RetryOn::http(1);
    /// Any HTTP 5xx.
    pub const SERVER_ERROR: RetryOn = RetryOn::http(1 << 1);
    /// HTTP 502, 503, 504.
    pub const GATEWAY_ERROR: RetryOn = RetryOn::http(1 << 2);
    /// A connection reset after the request may have been sent.
    pub const RESET: RetryOn = RetryOn::http(1 << 3);
    /// An attempt that ran out of its per-try timeout.
    pub const PER_TRY_TIMEOUT: RetryOn = RetryOn::http(1 << 4);
    /// gRPC `UNAVAILABLE` (read by the gRPC classifier).
    pub const GRPC_UNAVAILABLE: RetryOn = RetryOn {
        http: 0,
        grpc: GrpcCodes::from_bits(1 << GrpcCode::Unavailable as u32),
    };
    /// Nothing.
    pub const NONE: RetryOn = RetryOn::http(0);

    const fn http(bits: u8) -> RetryOn {
        RetryOn {
            http: bits,
            grpc: GrpcCodes::NONE,
        }
    }

    /// Retrying exactly the gRPC status codes `codes` (a gRPC service config's
    /// `retryableStatusCodes`).
    pub fn grpc(codes: GrpcCodes) -> RetryOn {
        RetryOn {
            http: 0,
            grpc: codes,
        }
    }

    /// Whether every condition in `other` is in `self`.
    pub fn contains(self, other: RetryOn) -> bool {
        self.http & other.http == other.http
            && self.grpc.bits() & other.grpc.bits() == other.grpc.bits()
    }

    /// The gRPC status codes retried.
    pub fn grpc_codes(self) -> GrpcCodes {
        self.grpc
    }

    /// The same HTTP conditions, with exactly `codes` as the gRPC codes retried.
    pub fn with_grpc_codes(self, codes: GrpcCodes) -> RetryOn {
        RetryOn {
            http: self.http,
            grpc: codes,
        }
    }
}

impl std::ops::BitOr for RetryOn {
    type Output = RetryOn;
    fn bitor(self, rhs: RetryOn) -> RetryOn {
        RetryOn {
            http: self.http | rhs.http,
            grpc: GrpcCodes::from_bits(self.grpc.bits() | rhs.grpc.bits()),
        }
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
        const EXPECTED: &str = "a comma-separated list of connect-failure, refused-stream, 503, 5xx, gateway-error, reset, per-try-timeout, or gRPC status names such as unavailable or resource-exhausted (or `none`)";
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
                    // gRPC codes by name only: a number would read as an HTTP status.
                    name if name.starts_with(|c: char| c.is_ascii_alphabetic()) => {
                        match name.replace('-', "_").parse::<GrpcCode>() {
                            Ok(GrpcCode::Ok) | Err(_) => return Err(EXPECTED),
                            Ok(code) => RetryOn::grpc(GrpcCodes::of([code])),
                        }
                    }
                    _ => return Err(EXPECTED),
                };
        }
        Ok(on)
    }
}

/// HTTP methods whose requests may be retried or hedged without the caller saying
/// so (the idempotent ones by default).
#[derive(Clone, PartialEq, Eq)]
pub struct MethodSet {
    /// As configured: what `Debug` shows.
    methods: Vec<Method>,
    /// The same methods as bits ([`method_bit`]): asked on every request, where
    /// comparing the method with each listed one took ≈ 65 instructions.
    bits: u8,
}

impl MethodSet {
    fn new(methods: Vec<Method>) -> Self {
        let bits = methods.iter().fold(0, |bits, m| bits | method_bit(m));
        MethodSet { methods, bits }
    }

    /// Whether `method` is in the set.
    pub fn contains(&self, method: &Method) -> bool {
        self.bits & method_bit(method) != 0
    }
}

/// `method`'s bit in a [`MethodSet`]; 0 for a method no set can hold (the
/// parser accepts only these eight).
fn method_bit(method: &Method) -> u8 {
    match *method {
        Method::GET => 1,
        Method::HEAD => 1 << 1,
        Method::OPTIONS => 1 << 2,
        Method::TRACE => 1 << 3,
        Method::PUT => 1 << 4,
        Method::DELETE => 1 << 5,
        Method::POST => 1 << 6,
        Method::PATCH => 1 << 7,
        _ => 0,
    }
}

impl std::fmt::Debug for MethodSet {
    /// The configured list, as before the bits were added.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("MethodSet").field(&self.methods).finish()
    }
}

impl Default for MethodSet {
    /// The idempotent methods of RFC 9110: GET, HEAD, OPTIONS, TRACE, PUT, DELETE.
    fn default() -> Self {
        MethodSet::new(vec![
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
        Ok(MethodSet::new(methods))
    }
}

/// Exponential backoff with full jitter between retries: before retry `n` (0 for
/// the first), wait a random time in `0..=min(base × multiplierⁿ, max)` (Envoy,
/// gRFC A6).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBackoff {
    /// The first retry's cap.
    pub base: Duration,
    /// The largest cap.
    pub max: Duration,
    /// How much the cap grows from one retry to the next (2: it doubles).
    pub multiplier: f64,
}

impl Default for RetryBackoff {
    /// 25 ms base, 250 ms max, doubling (Envoy).
    fn default() -> Self {
        RetryBackoff {
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
            multiplier: 2.0,
        }
    }
}

impl RetryBackoff {
    /// The cap of the wait before retry number `retry` (0 for the first).
    pub fn cap(&self, retry: u32) -> Duration {
        let exponent = i32::try_from(retry).unwrap_or(i32::MAX);
        // In nanoseconds, so whole multiples stay exact; an overflow is the max.
        let nanos = self.base.as_nanos() as f64 * self.multiplier.powi(exponent);
        let max = self.max.as_nanos() as f64;
        if nanos.is_finite() && nanos < max {
            Duration::from_nanos(nanos as u64)
        } else {
            self.max
        }
    }

    /// The wait before retry number `retry`, drawn with full jitter.
    pub fn delay(&self, retry: u32) -> Duration {
        self.cap(retry).mul_f64(rand::random::<f64>())
    }
}

impl std::str::FromStr for RetryBackoff {
    type Err = &'static str;
    /// `25ms..250ms`, optionally `,multiplier=1.6` (default 2): base above zero, max
    /// no shorter than base, multiplier from 1 to 10.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str = "`<base>..<max>` such as 25ms..250ms (base above zero, max no shorter), optionally `,multiplier=1.6` (1 to 10; default 2)";
        let (range, multiplier) = match s.trim().split_once(',') {
            Some((range, rest)) => {
                let m = rest
                    .trim()
                    .strip_prefix("multiplier=")
                    .and_then(|m| m.trim().parse::<f64>().ok())
                    .filter(|m| (1.0..=10.0).contains(m))
                    .ok_or(EXPECTED)?;
                (range, m)
            }
            None => (s, 2.0),
        };
        let (base, max) = range.trim().split_once("..").ok_or(EXPECTED)?;
        let base = crate::config::value::duration(base).map_err(|_| EXPECTED)?;
        let max = crate::config::value::duration(max).map_err(|_| EXPECTED)?;
        if base.is_zero() || max < base {
            return Err(EXPECTED);
        }
        Ok(RetryBackoff {
            base,
            max,
            multiplier,
        })
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
        assert_eq!(b.cap(u32::MAX), Duration::from_millis(250));
        // Full jitter: draws spread over the whole of 0..=cap, not around it.
        let draws: Vec<Duration> = (0..2000).map(|_| b.delay(3)).collect();
        assert!(draws.iter().all(|d| *d <= Duration::from_millis(200)));
        assert!(draws.iter().any(|d| *d < Duration::from_millis(20)));
        assert!(draws.iter().any(|d| *d > Duration::from_millis(180)));
    }

    #[test]
    fn a_method_set_holds_exactly_the_methods_listed() {
        let all = [
            "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE", "POST", "PATCH",
        ];
        for (i, listed) in all.iter().enumerate() {
            let set: MethodSet = listed.parse().unwrap();
            for (j, asked) in all.iter().enumerate() {
                let method = Method::from_bytes(asked.as_bytes()).unwrap();
                assert_eq!(set.contains(&method), i == j, "{listed} set asked {asked}");
            }
        }
        let every: MethodSet = all.join(",").parse().unwrap();
        assert!(!every.contains(&Method::CONNECT));
        assert!(!every.contains(&Method::from_bytes(b"FETCH").unwrap()));
        assert!(!"none".parse::<MethodSet>().unwrap().contains(&Method::GET));
        assert_eq!(
            format!("{:?}", MethodSet::default()),
            "MethodSet([GET, HEAD, OPTIONS, TRACE, PUT, DELETE])"
        );
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

    #[test]
    fn backoff_parses_with_an_optional_multiplier_and_rejects_bad_ranges() {
        let b: RetryBackoff = "100ms..1s".parse().unwrap();
        assert_eq!(b.base, Duration::from_millis(100));
        assert_eq!(b.max, Duration::from_secs(1));
        assert_eq!(b.cap(1), Duration::from_millis(200));
        let b: RetryBackoff = "100ms..1s,multiplier=1.5".parse().unwrap();
        assert_eq!(b.cap(1), Duration::from_millis(150));
        assert_eq!(b.cap(2), Duration::from_millis(225));
        for bad in [
            "0ms..1s",
            "1s..100ms",
            "100ms",
            "-5ms..1s",
            "10ms..1s,multiplier=0.5",
            "10ms..1s,factor=2",
        ] {
            assert!(bad.parse::<RetryBackoff>().is_err(), "{bad}");
        }
    }

    #[test]
    fn retry_on_takes_grpc_status_names_but_not_numbers_or_ok() {
        let on: RetryOn = "503,resource-exhausted,CANCELLED".parse().unwrap();
        assert!(on.contains(RetryOn::UNAVAILABLE_503));
        assert!(on.grpc_codes().contains(GrpcCode::ResourceExhausted as u16));
        assert!(on.grpc_codes().contains(GrpcCode::Cancelled as u16));
        assert!(!on.contains(RetryOn::GRPC_UNAVAILABLE));
        assert!("unavailable"
            .parse::<RetryOn>()
            .unwrap()
            .contains(RetryOn::GRPC_UNAVAILABLE));
        for bad in ["ok", "8", "resource_exhaust"] {
            assert!(bad.parse::<RetryOn>().is_err(), "{bad}");
        }
    }
}
