//! Load balancing over discovery snapshots (placeholder until the balance branch lands).
use std::time::Duration;

/// Algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BalancerKind {
    /// P2C + PeakEWMA.
    #[default]
    P2cPeakEwma,
    /// Least request.
    LeastRequest,
    /// Round robin.
    RoundRobin,
}

impl std::str::FromStr for BalancerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "p2c-ewma" => Ok(Self::P2cPeakEwma),
            "least-request" => Ok(Self::LeastRequest),
            "round-robin" => Ok(Self::RoundRobin),
            _ => Err("one of p2c-ewma, least-request, round-robin".into()),
        }
    }
}

/// Settings.
#[derive(Debug, Clone, PartialEq)]
pub struct BalancerSettings {
    /// Kind.
    pub kind: BalancerKind,
    /// Default RTT.
    pub default_rtt: Duration,
    /// Decay.
    pub decay: Duration,
    /// Panic threshold.
    pub panic_threshold: f64,
    /// Queue timeout.
    pub queue_timeout: Duration,
    /// Max pending.
    pub max_pending: usize,
}

impl Default for BalancerSettings {
    fn default() -> Self {
        BalancerSettings {
            kind: BalancerKind::P2cPeakEwma,
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
            panic_threshold: 0.5,
            queue_timeout: Duration::from_secs(1),
            max_pending: 1000,
        }
    }
}
