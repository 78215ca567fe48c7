//! The health checker on paused tokio time with a scripted probe: thresholds,
//! composition with the balancer's other signals, and the probe lifecycle.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::tracker::Tracker;
use super::*;
use crate::balance::{Balancer, BalancerSettings, EndpointHandle};
use crate::discovery::{Endpoint, Snapshot};

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 8000 + i))
}

fn snapshot(ids: &[u16]) -> Snapshot {
    Snapshot::new(ids.iter().map(|&i| Endpoint::new(addr(i))).collect())
}

/// What the scripted probe answers for one endpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    Healthy,
    Unhealthy,
    /// Never answers (the checker's timeout must end it).
    Hang,
}

/// Answers per endpoint as the test sets them (healthy unless told otherwise),
/// counting the probes each endpoint receives.
#[derive(Default)]
struct Scripted {
    answers: Mutex<HashMap<SocketAddr, Answer>>,
    probes: Mutex<HashMap<SocketAddr, usize>>,
}

impl Scripted {
    fn set(&self, addr: SocketAddr, answer: Answer) {
        self.answers.lock().insert(addr, answer);
    }

    fn probes(&self, addr: SocketAddr) -> usize {
        self.probes.lock().get(&addr).copied().unwrap_or(0)
    }
}

impl Probe for Scripted {
    fn check(&self, endpoint: &Endpoint) -> ProbeFuture {
        *self.probes.lock().entry(endpoint.addr).or_default() += 1;
        let answer = self
            .answers
            .lock()
            .get(&endpoint.addr)
            .copied()
            .unwrap_or(Answer::Healthy);
        Box::pin(async move {
            match answer {
                Answer::Healthy => Ok(()),
                Answer::Unhealthy => Err(ProbeFailure::unhealthy("503")),
                Answer::Hang => std::future::pending().await,
            }
        })
    }
}

/// Every second, no jitter, 2 successes to return, 3 failures to leave.
fn settings() -> HealthCheckSettings {
    HealthCheckSettings {
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(200),
        healthy_threshold: 2,
        unhealthy_threshold: 3,
        jitter: 0.0,
    }
}

struct Fixture {
    balancer: Arc<Balancer<EndpointHandle>>,
    probe: Arc<Scripted>,
    checker: HealthChecker,
}

/// A balancer over `ids` whose checker was started before the first snapshot (as
/// the client does), after the first round of probes (at t = 0).
async fn fixture(ids: &[u16]) -> Fixture {
    let balancer = Balancer::new("svc", BalancerSettings::default(), |_, handle| handle);
    let probe = Arc::new(Scripted::default());
    let checker = HealthChecker::spawn(&balancer, settings(), probe.clone());
    balancer.update(&snapshot(ids));
    settle().await;
    Fixture {
        balancer,
        probe,
        checker,
    }
}

/// Lets spawned tasks run what they can without moving the clock past a probe.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// Moves the paused clock `n` probe intervals on.
async fn intervals(n: u32) {
    tokio::time::sleep(settings().interval * n).await;
}

fn handle(b: &Balancer<EndpointHandle>, i: u16) -> EndpointHandle {
    b.endpoints()
        .into_iter()
        .find(|h| h.addr() == addr(i))
        .expect("endpoint in the table")
}

/// Addresses picked in `n` picks.
fn picked(b: &Balancer<EndpointHandle>, n: usize) -> HashMap<SocketAddr, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let p = b.try_pick(&[]).expect("an endpoint");
        *seen.entry(p.addr()).or_default() += 1;
    }
    seen
}

#[test]
fn tracker_fails_after_unhealthy_threshold_failures_in_a_row() {
    let mut t = Tracker::new(true, 2, 3);
    assert_eq!(t.record(false), None);
    assert_eq!(t.record(false), None);
    assert_eq!(t.record(true), None, "a success resets the streak");
    assert_eq!(t.record(false), None);
    assert_eq!(t.record(false), None);
    assert_eq!(t.record(false), Some(false));
    assert_eq!(t.record(false), None, "already unhealthy");
}

#[test]
fn tracker_recovers_after_healthy_threshold_successes_in_a_row() {
    let mut t = Tracker::new(true, 2, 1);
    assert_eq!(t.record(false), Some(false));
    assert_eq!(t.record(true), None);
    assert_eq!(t.record(false), None, "a failure resets the streak");
    assert_eq!(t.record(true), None);
    assert_eq!(t.record(true), Some(true));
}

#[test]
fn tracker_lets_a_new_endpoint_join_at_its_first_success() {
    let mut t = Tracker::new(false, 2, 3);
    assert_eq!(t.record(true), Some(true));

    // A new endpoint whose first check fails needs the full threshold.
    let mut t = Tracker::new(false, 2, 3);
    assert_eq!(t.record(false), None);
    assert_eq!(t.record(true), None);
    assert_eq!(t.record(true), Some(true));
}

#[tokio::test(start_paused = true)]
async fn endpoint_leaves_after_unhealthy_threshold_and_returns_after_healthy_threshold() {
    let f = fixture(&[0, 1, 2]).await;
    assert_eq!(f.balancer.stats().ready, 3, "all passed their first check");
    let sick = handle(&f.balancer, 1);

    f.probe.set(addr(1), Answer::Unhealthy);
    intervals(2).await;
    assert!(
        sick.is_in_rotation(),
        "two failures are below the threshold"
    );
    intervals(1).await;
    assert!(!sick.is_in_rotation(), "the third failure takes it out");
    assert_eq!(
        f.probe.probes(addr(1)),
        4,
        "one passing and three failing probes"
    );
    assert_eq!(f.balancer.stats().unhealthy, 1);
    assert!(!picked(&f.balancer, 200).contains_key(&addr(1)));

    f.probe.set(addr(1), Answer::Healthy);
    intervals(1).await;
    assert!(!sick.is_in_rotation(), "one success is below the threshold");
    intervals(1).await;
    assert!(sick.is_in_rotation(), "the second success brings it back");
    assert!(picked(&f.balancer, 200).contains_key(&addr(1)));
    drop(f.checker);
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_hangs_past_its_timeout_counts_as_failed() {
    let f = fixture(&[0, 1, 2]).await;
    f.probe.set(addr(2), Answer::Hang);
    // The next interval starts when a probe ends: each hanging probe adds its
    // 200 ms timeout, so the third ends at 3.6 s.
    intervals(3).await;
    assert!(handle(&f.balancer, 2).is_in_rotation());
    intervals(1).await;
    assert_eq!(f.probe.probes(addr(2)), 4);
    assert!(!handle(&f.balancer, 2).is_in_rotation());
    drop(f.checker);
}

#[tokio::test(start_paused = true)]
async fn new_endpoints_wait_for_their_first_passing_check() {
    let f = fixture(&[0, 1, 2]).await;
    f.probe.set(addr(3), Answer::Unhealthy);
    f.balancer.update(&snapshot(&[0, 1, 2, 3]));
    settle().await;
    let new = handle(&f.balancer, 3);
    assert_eq!(f.probe.probes(addr(3)), 1, "probed as soon as it was added");
    assert!(!new.is_in_rotation(), "a failing new endpoint never joins");
    assert!(!picked(&f.balancer, 200).contains_key(&addr(3)));

    f.probe.set(addr(4), Answer::Healthy);
    f.balancer.update(&snapshot(&[0, 1, 2, 3, 4]));
    settle().await;
    assert!(
        handle(&f.balancer, 4).is_in_rotation(),
        "one passing check lets a new endpoint join"
    );
    drop(f.checker);
}

#[tokio::test(start_paused = true)]
async fn probes_start_and_stop_with_discovery_and_with_the_checker() {
    let f = fixture(&[0, 1]).await;
    intervals(2).await;
    assert_eq!(f.probe.probes(addr(1)), 3);

    f.balancer.update(&snapshot(&[0, 2]));
    settle().await;
    assert_eq!(f.probe.probes(addr(2)), 1, "the added endpoint is probed");
    intervals(3).await;
    assert_eq!(f.probe.probes(addr(1)), 3, "the removed endpoint is not");
    assert_eq!(f.probe.probes(addr(2)), 4);

    // Each probe task holds a clone of the probe: none is left once the checker
    // is dropped.
    assert_eq!(Arc::strong_count(&f.probe), 1 + 1 + 2);
    drop(f.checker);
    settle().await;
    assert_eq!(
        Arc::strong_count(&f.probe),
        1,
        "probe tasks outlived the checker"
    );
    let before = f.probe.probes(addr(0));
    intervals(3).await;
    assert_eq!(f.probe.probes(addr(0)), before);
}

#[tokio::test(start_paused = true)]
async fn panic_threshold_still_applies_to_unhealthy_endpoints() {
    let f = fixture(&[0, 1, 2]).await;
    f.probe.set(addr(1), Answer::Unhealthy);
    f.probe.set(addr(2), Answer::Unhealthy);
    intervals(3).await;
    assert_eq!(f.balancer.stats().unhealthy, 2);
    // One ready of three is below the 50% panic threshold: all take traffic.
    let seen = picked(&f.balancer, 300);
    assert_eq!(seen.len(), 3, "panic mode uses every endpoint: {seen:?}");
    drop(f.checker);
}

#[tokio::test(start_paused = true)]
async fn health_and_outlier_ejection_do_not_undo_each_other() {
    let f = fixture(&[0, 1, 2, 3]).await;
    let h = handle(&f.balancer, 1);

    // Ejected by outlier detection while its health checks pass: still out.
    h.eject_until(tokio::time::Instant::now() + Duration::from_secs(3600));
    intervals(2).await;
    assert!(
        !h.is_in_rotation(),
        "passing health checks ended an ejection"
    );
    h.restore();
    assert!(h.is_in_rotation());

    // Out for health: restoring an ejection does not put it back.
    f.probe.set(addr(1), Answer::Unhealthy);
    intervals(3).await;
    assert!(!h.is_in_rotation());
    h.restore();
    h.set_reachable(true);
    assert!(
        !h.is_in_rotation(),
        "restore() overrode failed health checks"
    );
    drop(f.checker);
}
