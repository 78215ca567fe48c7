//! Exponential backoff with jitter, shared by reconnects and (later) retries.

use std::time::Duration;

/// Exponential backoff between `min` and `max`, each wait randomised by `jitter`
/// (a fraction of the wait), so that many clients do not retry in lockstep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExponentialBackoff {
    min: Duration,
    max: Duration,
    jitter: f64,
}

impl ExponentialBackoff {
    /// Outbound reconnect backoff: 100 ms to 500 ms with 10% jitter (linkerd2-proxy's
    /// `DEFAULT_OUTBOUND_CONNECT_BACKOFF`).
    pub const RECONNECT: ExponentialBackoff = ExponentialBackoff {
        min: Duration::from_millis(100),
        max: Duration::from_millis(500),
        jitter: 0.1,
    };

    /// A backoff from `min` doubling up to `max`; `jitter` is clamped to `0..=1`.
    pub fn new(min: Duration, max: Duration, jitter: f64) -> Self {
        ExponentialBackoff {
            min,
            max: max.max(min),
            jitter: jitter.clamp(0.0, 1.0),
        }
    }

    /// The wait before attempt number `attempt` (0 for the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self
            .min
            .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .min(self.max);
        if self.jitter == 0.0 {
            return base;
        }
        let spread = base.mul_f64(self.jitter);
        let offset = spread.mul_f64(rand::random::<f64>());
        (base - spread.mul_f64(0.5) + offset).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_backoff_grows_and_stays_within_bounds() {
        let b = ExponentialBackoff::RECONNECT;
        for attempt in 0..40 {
            let d = b.delay(attempt);
            assert!(d >= Duration::from_millis(95), "{attempt}: {d:?}");
            assert!(d <= Duration::from_millis(500), "{attempt}: {d:?}");
        }
        let flat = ExponentialBackoff::new(Duration::from_millis(10), Duration::from_secs(1), 0.0);
        assert_eq!(flat.delay(0), Duration::from_millis(10));
        assert_eq!(flat.delay(3), Duration::from_millis(80));
        assert_eq!(flat.delay(30), Duration::from_secs(1));
    }
}
