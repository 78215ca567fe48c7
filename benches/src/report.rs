//! Summaries of one configuration's round, and medians over rounds.

use hdrhistogram::Histogram;

use crate::load::{LatencyRun, Saturation};
use crate::procstat::Usage;

/// Percentiles of one latency run, in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
}

impl Percentiles {
    /// Reads a histogram recorded in nanoseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Percentiles {
            p50_us: us(0.5),
            p99_us: us(0.99),
            p999_us: us(0.999),
        }
    }
}

/// An open-loop run at one rate.
#[derive(Debug, Clone)]
pub struct OpenLoop {
    /// Offered requests per second.
    pub rate: f64,
    /// Latency from scheduled send time.
    pub latency: Percentiles,
    /// The generator's own release lag.
    pub lag: Percentiles,
    /// Failed requests.
    pub errors: u64,
}

impl OpenLoop {
    /// Summarises a run at `rate`.
    pub fn new(rate: f64, run: &LatencyRun) -> Self {
        OpenLoop {
            rate,
            latency: Percentiles::of(&run.latency),
            lag: run.lag.as_ref().map(Percentiles::of).unwrap_or_default(),
            errors: run.errors,
        }
    }
}

/// Everything one configuration measured in one round.
#[derive(Debug, Clone)]
pub struct Round {
    /// One request in flight.
    pub sequential: Percentiles,
    /// Failed sequential requests.
    pub sequential_errors: u64,
    /// Context switches per sequential request of the client process and of
    /// the server: the thread hand-offs a request's round trip took.
    pub sequential_switches: [f64; 2],
    /// Fixed-rate runs.
    pub open: Vec<OpenLoop>,
    /// Closed-loop saturation.
    pub saturation: Saturation,
    /// Requests the saturation run completed (CPU per request divides by it).
    pub requests: u64,
    /// CPU per process at saturation, peak RSS per process over the round.
    pub usage: Vec<Usage>,
}

impl Round {
    /// CPU microseconds per request of the process called `name`.
    pub fn cpu_us_per_request(&self, name: &str) -> f64 {
        self.cpu_us_per_request_of(|u| u.name == name)
    }

    /// CPU microseconds per request of every process on the request's path
    /// (client, server and any proxies between them).
    pub fn path_cpu_us_per_request(&self) -> f64 {
        self.cpu_us_per_request_of(|_| true)
    }

    fn cpu_us_per_request_of(&self, counted: impl Fn(&Usage) -> bool) -> f64 {
        self.usage
            .iter()
            .filter(|u| counted(u))
            .map(|u| u.cpu_seconds)
            .sum::<f64>()
            * 1e6
            / self.requests.max(1) as f64
    }

    /// Peak RSS of the process called `name`, KiB.
    pub fn peak_rss_kib(&self, name: &str) -> u64 {
        self.usage
            .iter()
            .filter(|u| u.name == name)
            .map(|u| u.peak_rss_kib)
            .sum()
    }

    /// All errors of the round.
    pub fn errors(&self) -> u64 {
        self.sequential_errors
            + self.saturation.errors
            + self.open.iter().map(|o| o.errors).sum::<u64>()
    }
}

/// The median of `values` (NaN when empty).
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Median over rounds of `f`.
pub fn median_of(rounds: &[Round], f: impl Fn(&Round) -> f64) -> f64 {
    median(rounds.iter().map(f).collect())
}

/// Median over paired rounds of `f(a, b)` (rounds are paired by index).
pub fn paired_median(a: &[Round], b: &[Round], f: impl Fn(&Round, &Round) -> f64) -> f64 {
    median(a.iter().zip(b).map(|(a, b)| f(a, b)).collect())
}

/// Rounds a figure for the JSON line (3 decimals).
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_takes_the_middle_value_or_the_mean_of_the_two_middle_ones() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn percentiles_are_reported_in_microseconds() {
        let mut h = crate::load::histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let p = Percentiles::of(&h);
        assert!((p.p50_us - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99_us - 990.0).abs() < 1.0, "{p:?}");
        assert!((p.p999_us - 999.0).abs() < 1.0, "{p:?}");
    }
}
