//! The probe tasks: one per endpoint of the balancer's current table, started and
//! stopped as discovery changes the endpoint set.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::task::JoinHandle;

use super::tracker::Tracker;
use super::{HealthCheckSettings, Probe, ProbeFailure};
use crate::balance::{Balancer, EndpointHandle};
use crate::metric_names::{label, HEALTH_CHECKS};

/// Runs active health checks on every endpoint of one balancer, for as long as it
/// lives: dropping it (or the balancer) stops every probe.
///
/// Each endpoint gets its own task, started when discovery adds the endpoint and
/// aborted when discovery removes it, so no probe outlives its endpoint. A task
/// probes at once, then every `interval` (jittered), and flips the endpoint's
/// health flag after `unhealthy_threshold` failures or `healthy_threshold`
/// successes in a row.
#[derive(Debug)]
pub struct HealthChecker {
    task: JoinHandle<()>,
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        // Aborting the follower drops its map of probe tasks, which aborts them.
        self.task.abort();
    }
}

impl HealthChecker {
    /// Starts checking `balancer`'s endpoints with `probe`. Endpoints discovery
    /// adds from now on wait out of rotation for their first passing check
    /// ([`Balancer::require_health_checks`]); call this before the balancer
    /// follows discovery so that the first endpoints do too. Needs a tokio runtime.
    pub fn spawn<E: Send + Sync + 'static>(
        balancer: &Arc<Balancer<E>>,
        settings: HealthCheckSettings,
        probe: Arc<dyn Probe>,
    ) -> Self {
        balancer.require_health_checks();
        let service: Arc<str> = balancer.service().into();
        let weak = Arc::downgrade(balancer);
        let mut updates = balancer.subscribe_updates();
        let settings = Arc::new(settings);
        let task = tokio::spawn(async move {
            let mut probes: HashMap<SocketAddr, Running> = HashMap::new();
            loop {
                let Some(balancer) = weak.upgrade() else {
                    return;
                };
                updates.borrow_and_update();
                let endpoints = balancer.endpoints();
                drop(balancer);
                // An endpoint replaced at the same address (its identity changed)
                // is removed first, then started afresh below.
                probes.retain(|_, running| !running.handle.is_removed());
                for handle in endpoints {
                    probes.entry(handle.addr()).or_insert_with(|| Running {
                        task: tokio::spawn(run_probe(
                            handle.clone(),
                            Arc::clone(&probe),
                            Arc::clone(&settings),
                            Arc::clone(&service),
                        )),
                        handle,
                    });
                }
                if updates.changed().await.is_err() {
                    return;
                }
            }
        });
        HealthChecker { task }
    }
}

/// One endpoint's probe task; aborted when dropped.
struct Running {
    handle: EndpointHandle,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run_probe(
    handle: EndpointHandle,
    probe: Arc<dyn Probe>,
    settings: Arc<HealthCheckSettings>,
    service: Arc<str>,
) {
    let mut tracker = Tracker::new(
        handle.is_healthy(),
        settings.healthy_threshold,
        settings.unhealthy_threshold,
    );
    loop {
        let result =
            match tokio::time::timeout(settings.timeout, probe.check(handle.endpoint())).await {
                Ok(result) => result,
                Err(_) => Err(ProbeFailure::timeout(settings.timeout)),
            };
        let (outcome, reason) = match &result {
            Ok(()) => ("ok", "none"),
            Err(failure) => ("error", failure.reason()),
        };
        metrics::counter!(
            HEALTH_CHECKS.name,
            label::SERVICE => Arc::clone(&service),
            label::OUTCOME => outcome,
            label::REASON => reason,
        )
        .increment(1);
        if let Some(healthy) = tracker.record(result.is_ok()) {
            handle.set_healthy(healthy);
            match &result {
                Ok(()) => {
                    tracing::info!(%service, endpoint = %handle.addr(), "endpoint passed its health checks: back in rotation")
                }
                Err(failure) => {
                    tracing::warn!(%service, endpoint = %handle.addr(), %failure, "endpoint failed its health checks: out of rotation")
                }
            }
        } else if let Err(failure) = &result {
            tracing::debug!(%service, endpoint = %handle.addr(), %failure, "health check failed");
        }
        tokio::time::sleep(jittered(settings.interval, settings.jitter)).await;
    }
}

/// `interval` × a random factor in 1 ± `jitter`.
fn jittered(interval: Duration, jitter: f64) -> Duration {
    let jitter = jitter.clamp(0.0, 1.0);
    if jitter == 0.0 {
        return interval;
    }
    let factor = rand::rng().random_range(1.0 - jitter..=1.0 + jitter);
    interval.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_bounds_and_varies() {
        let interval = Duration::from_secs(10);
        let waits: Vec<_> = (0..200).map(|_| jittered(interval, 0.1)).collect();
        assert!(waits
            .iter()
            .all(|w| *w >= Duration::from_secs(9) && *w <= Duration::from_secs(11)));
        assert!(waits.iter().any(|w| *w != waits[0]), "every wait was equal");
        assert_eq!(jittered(interval, 0.0), interval);
    }
}
