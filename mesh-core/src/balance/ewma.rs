//! Peak-EWMA round-trip estimate of one endpoint.
//!
//! Peak: a sample above the estimate replaces it at once, so a slowing endpoint is
//! avoided on the next pick. EWMA: a lower sample pulls the estimate down with a time
//! constant (`decay`), so one fast response does not erase a slow history. While no
//! samples arrive the estimate read for picking decays toward zero with the same
//! time constant (as in tower's and linkerd's PeakEWMA), so an endpoint that was once
//! slow is tried again eventually instead of being starved for ever.
//!
//! The estimate lives in two atomics so that picks read it without a lock. Two
//! concurrent `record`s may lose one of their samples; for an estimate that is
//! cheaper than a lock and harmless.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// `stamp` value before the first sample.
const NO_SAMPLE: u64 = u64::MAX;

/// Round-trip estimate in nanoseconds, stamped with the time of the last sample
/// (nanoseconds since the balancer's base instant).
#[derive(Debug)]
pub(crate) struct PeakEwma {
    rtt_ns: AtomicU64,
    stamp: AtomicU64,
}

impl PeakEwma {
    pub(crate) fn new() -> Self {
        PeakEwma {
            rtt_ns: AtomicU64::new(0f64.to_bits()),
            stamp: AtomicU64::new(NO_SAMPLE),
        }
    }

    /// Feeds one observed round trip taken at `now_ns`.
    pub(crate) fn record(&self, rtt: Duration, now_ns: u64, decay_ns: f64) {
        let sample = nanos_f64(rtt);
        let stamp = self.stamp.load(Ordering::Acquire);
        let next = if stamp == NO_SAMPLE {
            sample
        } else {
            let current = f64::from_bits(self.rtt_ns.load(Ordering::Relaxed));
            if sample > current {
                sample
            } else {
                let w = weight(now_ns.saturating_sub(stamp), decay_ns);
                current * w + sample * (1.0 - w)
            }
        };
        self.rtt_ns.store(next.to_bits(), Ordering::Relaxed);
        self.stamp.store(now_ns, Ordering::Release);
    }

    /// The estimate at `now_ns`, or `default_ns` before any sample.
    pub(crate) fn estimate(&self, now_ns: u64, decay_ns: f64, default_ns: f64) -> f64 {
        let stamp = self.stamp.load(Ordering::Acquire);
        if stamp == NO_SAMPLE {
            return default_ns;
        }
        let current = f64::from_bits(self.rtt_ns.load(Ordering::Relaxed));
        current * weight(now_ns.saturating_sub(stamp), decay_ns)
    }
}

/// `duration` in nanoseconds, as a float: converted from a `u64` (enough for
/// 584 years), where `as_nanos() as f64` converts a `u128` in a software
/// routine on every sample. The same value for any duration below that.
pub(crate) fn nanos_f64(duration: Duration) -> f64 {
    u64::try_from(duration.as_nanos()).map_or(u64::MAX as f64, |ns| ns as f64)
}

/// How much of the old estimate survives `elapsed_ns`.
fn weight(elapsed_ns: u64, decay_ns: f64) -> f64 {
    if elapsed_ns == 0 {
        return 1.0;
    }
    (-(elapsed_ns as f64) / decay_ns).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECAY: f64 = 10e9;

    #[test]
    fn default_rtt_is_used_before_any_sample() {
        let e = PeakEwma::new();
        assert_eq!(e.estimate(5, DECAY, 30e6), 30e6);
    }

    #[test]
    fn higher_sample_replaces_estimate_at_once() {
        let e = PeakEwma::new();
        e.record(Duration::from_millis(10), 0, DECAY);
        e.record(Duration::from_millis(200), 1, DECAY);
        assert_eq!(e.estimate(1, DECAY, 30e6), 200e6);
    }

    #[test]
    fn lower_sample_decays_toward_it_with_time_constant() {
        let e = PeakEwma::new();
        e.record(Duration::from_millis(100), 0, DECAY);
        // One time constant later, a 0 ms sample leaves 1/e of the old value.
        e.record(Duration::ZERO, 10_000_000_000, DECAY);
        let got = e.estimate(10_000_000_000, DECAY, 30e6);
        let want = 100e6 / std::f64::consts::E;
        assert!((got - want).abs() < 1.0, "{got} vs {want}");
        // An immediate lower sample does not erase the history.
        e.record(Duration::from_millis(1), 10_000_000_000, DECAY);
        assert!((e.estimate(10_000_000_000, DECAY, 30e6) - want).abs() < 1.0);
    }

    #[test]
    fn idle_estimate_decays_toward_zero() {
        let e = PeakEwma::new();
        e.record(Duration::from_millis(100), 0, DECAY);
        let later = e.estimate(50_000_000_000, DECAY, 30e6);
        assert!(later < 1e6, "{later}");
    }

    #[test]
    fn nanos_f64_is_as_nanos_as_f64() {
        for duration in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_micros(1234),
            Duration::new(12, 345_678_901),
            Duration::from_secs(u64::MAX / 1_000_000_000),
        ] {
            assert_eq!(
                nanos_f64(duration),
                duration.as_nanos() as f64,
                "{duration:?}"
            );
        }
        assert_eq!(nanos_f64(Duration::MAX), u64::MAX as f64, "saturates");
    }
}
