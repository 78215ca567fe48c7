//! The threshold state machine of one endpoint's health, free of time and I/O so
//! that its rules are tested on their own.

/// Counts consecutive results and decides when an endpoint changes state.
#[derive(Debug)]
pub(crate) struct Tracker {
    healthy: bool,
    /// No result yet: the first success makes a pending endpoint healthy.
    pending: bool,
    /// Consecutive results contrary to the current state.
    streak: u32,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
}

impl Tracker {
    /// A tracker for an endpoint that starts `healthy` (already taking traffic) or
    /// not (new, waiting for its first check).
    pub(crate) fn new(healthy: bool, healthy_threshold: u32, unhealthy_threshold: u32) -> Self {
        Tracker {
            healthy,
            pending: !healthy,
            streak: 0,
            healthy_threshold: healthy_threshold.max(1),
            unhealthy_threshold: unhealthy_threshold.max(1),
        }
    }

    /// Records one probe result; returns the new state when it changed.
    pub(crate) fn record(&mut self, success: bool) -> Option<bool> {
        let pending = std::mem::take(&mut self.pending);
        if success == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let threshold = if success {
            if pending {
                1
            } else {
                self.healthy_threshold
            }
        } else {
            self.unhealthy_threshold
        };
        if self.streak < threshold {
            return None;
        }
        self.streak = 0;
        self.healthy = success;
        Some(success)
    }
}
