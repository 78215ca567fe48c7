//! Unit tests of the balancer as a whole (the sampler, EWMA and RNG have their own
//! next to them). Time-dependent tests run on paused tokio time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::discovery::{Endpoint, Snapshot};

const KINDS: [BalancerKind; 3] = [
    BalancerKind::P2cPeakEwma,
    BalancerKind::LeastRequest,
    BalancerKind::RoundRobin,
];

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 8000 + i))
}

fn snapshot(weights: &[u32]) -> Snapshot {
    Snapshot::new(
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Endpoint::new(addr(i as u16)).with_weight(w))
            .collect(),
    )
}

fn settings(kind: BalancerKind) -> BalancerSettings {
    BalancerSettings {
        kind,
        ..BalancerSettings::default()
    }
}

/// A balancer whose per-endpoint value is the endpoint's handle.
fn balancer(kind: BalancerKind, weights: &[u32]) -> Arc<Balancer<EndpointHandle>> {
    let b = Balancer::new("svc", settings(kind), |_, handle| handle);
    b.update(&snapshot(weights));
    b
}

/// Handles of every endpoint in the current table (read directly, so no value is
/// built).
fn handles<E>(b: &Balancer<E>) -> HashMap<SocketAddr, EndpointHandle> {
    b.table
        .load()
        .handles()
        .map(|handle| (handle.addr(), handle.clone()))
        .collect()
}

/// How often each address is picked in `n` picks, each released at once.
fn distribution<E: Send + Sync + 'static>(
    b: &Balancer<E>,
    exclude: &[SocketAddr],
    n: usize,
) -> HashMap<SocketAddr, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        *counts
            .entry(b.try_pick(exclude).expect("pick").addr())
            .or_default() += 1;
    }
    counts
}

async fn until_pending(b: &Balancer<EndpointHandle>, n: usize) {
    while b.shared.pending.load(Ordering::Acquire) != n {
        tokio::task::yield_now().await;
    }
}

#[test]
fn kind_parses_from_its_names_and_errors_list_the_choices() {
    for kind in KINDS {
        assert_eq!(kind.to_string().parse::<BalancerKind>(), Ok(kind));
    }
    assert_eq!(BalancerKind::default(), BalancerKind::P2cPeakEwma);
    let err = "random".parse::<BalancerKind>().unwrap_err().to_string();
    for choice in ["random", "p2c-ewma", "least-request", "round-robin"] {
        assert!(err.contains(choice), "{err}");
    }
}

#[tokio::test(start_paused = true)]
async fn p2c_avoids_endpoint_with_high_recorded_rtt() {
    let b = balancer(BalancerKind::P2cPeakEwma, &[1, 1, 1]);
    for _ in 0..1_000 {
        let picked = b.try_pick(&[]).unwrap();
        let rtt = if picked.addr() == addr(0) { 500 } else { 5 };
        picked.record_rtt(Duration::from_millis(rtt));
    }
    // The two choices are distinct, so the slow endpoint always meets a faster one.
    let counts = distribution(&b, &[], 3_000);
    assert_eq!(counts.get(&addr(0)), None, "{counts:?}");
    assert!(
        counts[&addr(1)] > 1_000 && counts[&addr(2)] > 1_000,
        "{counts:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn p2c_retries_a_once_slow_endpoint_after_its_estimate_decays() {
    let b = balancer(BalancerKind::P2cPeakEwma, &[1, 1]);
    let h = handles(&b);
    let slow = b.try_pick(&[addr(1)]).unwrap();
    slow.record_rtt(Duration::from_secs(1));
    drop(slow);
    b.try_pick(&[addr(0)])
        .unwrap()
        .record_rtt(Duration::from_millis(5));
    assert_eq!(distribution(&b, &[], 100).get(&addr(0)), None);
    // Endpoint 1 keeps answering in 5 ms while the idle estimate of endpoint 0
    // decays: 1 s × e^(-t / 10 s) drops below 5 ms after about 53 s.
    let mut seconds = 0;
    loop {
        tokio::time::advance(Duration::from_secs(1)).await;
        seconds += 1;
        let picked = b.try_pick(&[]).unwrap();
        if picked.addr() == addr(0) {
            break;
        }
        picked.record_rtt(Duration::from_millis(5));
        assert!(seconds < 200, "the once-slow endpoint was never retried");
    }
    assert!((45..=60).contains(&seconds), "retried after {seconds} s");
    assert_eq!(h[&addr(0)].in_flight(), 0);
}

#[test]
fn least_request_avoids_loaded_endpoint() {
    let b = balancer(BalancerKind::LeastRequest, &[1, 1, 1]);
    let held: Vec<_> = (0..5)
        .map(|_| b.try_pick(&[addr(1), addr(2)]).unwrap())
        .collect();
    assert!(held.iter().all(|p| p.addr() == addr(0)));
    assert_eq!(held[0].handle().in_flight(), 5);
    let counts = distribution(&b, &[], 3_000);
    assert_eq!(counts.get(&addr(0)), None, "{counts:?}");
    drop(held);
    assert!(distribution(&b, &[], 3_000)[&addr(0)] > 500);
}

#[test]
fn weights_shape_the_distribution_for_every_kind() {
    for kind in KINDS {
        let b = balancer(kind, &[1, 3, 0]);
        let counts = distribution(&b, &[], 40_000);
        assert_eq!(
            counts.get(&addr(2)),
            None,
            "{kind}: weight 0 picked: {counts:?}"
        );
        let share = counts[&addr(0)] as f64 / 40_000.0;
        assert!(
            (0.2..0.3).contains(&share),
            "{kind}: weight-1 share {share}"
        );
    }
}

#[test]
fn zero_weight_endpoints_are_picked_when_nothing_else_is_eligible() {
    for kind in KINDS {
        let b = balancer(kind, &[0, 5]);
        let zero = b.try_pick(&[addr(1)]).unwrap();
        assert_eq!(zero.addr(), addr(0), "{kind}: exclusion outranks weight 0");
        handles(&b)[&addr(1)].set_reachable(false);
        let counts = distribution(&b, &[], 100);
        assert_eq!(counts[&addr(0)], 100, "{kind}");
    }
}

#[test]
fn exclude_is_honoured_when_alternatives_exist_and_ignored_when_not() {
    for kind in KINDS {
        let b = balancer(kind, &[1, 1, 1]);
        let counts = distribution(&b, &[addr(0), addr(1)], 500);
        assert_eq!(counts[&addr(2)], 500, "{kind}: {counts:?}");
        let all = [addr(0), addr(1), addr(2)];
        let counts = distribution(&b, &all, 3_000);
        assert_eq!(
            counts.len(),
            3,
            "{kind}: all excluded still spreads: {counts:?}"
        );
    }
}

#[test]
fn exclude_gives_way_when_the_alternatives_are_unreachable() {
    for kind in KINDS {
        let b = balancer(kind, &[1, 1]);
        handles(&b)[&addr(1)].set_reachable(false);
        assert_eq!(b.try_pick(&[addr(0)]).unwrap().addr(), addr(0), "{kind}");
    }
}

#[test]
fn unreachable_endpoints_are_skipped_by_every_kind() {
    for kind in KINDS {
        let b = balancer(kind, &[1; 10]);
        let h = handles(&b);
        for i in 1..10 {
            h[&addr(i)].set_reachable(false);
        }
        assert_eq!(b.stats().ready, 1);
        let counts = distribution(&b, &[], 1_000);
        assert_eq!(counts[&addr(0)], 1_000, "{kind}: {counts:?}");
        h[&addr(0)].set_reachable(false);
        let err = b.try_pick(&[]).unwrap_err();
        assert!(err.is_none_ready(), "{err}");
        assert_eq!(
            err,
            PickError::NoneReady {
                service: "svc".into(),
                known: 10
            }
        );
    }
}

#[tokio::test(start_paused = true)]
async fn waiting_pick_is_woken_by_set_reachable() {
    let b = balancer(BalancerKind::P2cPeakEwma, &[1, 1]);
    let h = handles(&b);
    h.values().for_each(|h| h.set_reachable(false));
    let start = Instant::now();
    let waiter = tokio::spawn({
        let b = Arc::clone(&b);
        async move { b.pick(&[]).await.map(|p| p.addr()) }
    });
    until_pending(&b, 1).await;
    h[&addr(1)].set_reachable(true);
    assert_eq!(waiter.await.unwrap(), Ok(addr(1)));
    // Paused time only moves when every task idles: the wake-up, not the timeout,
    // ended the wait.
    assert!(start.elapsed() < b.settings.queue_timeout);
}

#[tokio::test(start_paused = true)]
async fn waiting_pick_is_woken_by_restore_and_by_update() {
    let b = balancer(BalancerKind::RoundRobin, &[1]);
    let h = handles(&b);
    let mut s = settings(BalancerKind::RoundRobin);
    s.panic_threshold = 0.0;
    let b2 = Balancer::new("svc", s, |_, handle| handle);
    b2.update(&snapshot(&[1]));
    let h2 = handles(&b2);
    h2[&addr(0)].eject_until(Instant::now() + Duration::from_secs(3600));
    assert!(b2.try_pick(&[]).unwrap_err().is_none_ready());
    let waiter = tokio::spawn({
        let b2 = Arc::clone(&b2);
        async move { b2.pick(&[]).await.map(|p| p.addr()) }
    });
    until_pending(&b2, 1).await;
    h2[&addr(0)].restore();
    assert_eq!(waiter.await.unwrap(), Ok(addr(0)));

    b.update(&Snapshot::default());
    assert!(b.try_pick(&[]).unwrap_err().is_no_endpoints());
    let waiter = tokio::spawn({
        let b = Arc::clone(&b);
        async move { b.pick(&[]).await.map(|p| p.addr()) }
    });
    until_pending(&b, 1).await;
    b.update(&snapshot(&[1, 1]));
    assert!(waiter.await.unwrap().is_ok());
    assert!(
        h[&addr(0)].is_removed(),
        "the old slot left with the empty snapshot"
    );
}

#[tokio::test(start_paused = true)]
async fn pick_fails_with_none_ready_after_queue_timeout() {
    let b = balancer(BalancerKind::LeastRequest, &[1, 1]);
    handles(&b).values().for_each(|h| h.set_reachable(false));
    let start = Instant::now();
    let err = b.pick(&[]).await.unwrap_err();
    assert!(err.is_none_ready(), "{err}");
    assert_eq!(start.elapsed(), b.settings.queue_timeout);
    assert_eq!(b.shared.pending.load(Ordering::Acquire), 0);
}

#[tokio::test(start_paused = true)]
async fn pick_fails_at_once_with_too_many_pending() {
    let mut s = settings(BalancerKind::P2cPeakEwma);
    s.max_pending = 2;
    let b = Balancer::new("svc", s, |_, handle| handle);
    b.update(&snapshot(&[1]));
    handles(&b)[&addr(0)].set_reachable(false);
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let b = Arc::clone(&b);
            tokio::spawn(async move { b.pick(&[]).await.map(|p| p.addr()) })
        })
        .collect();
    until_pending(&b, 2).await;
    let start = Instant::now();
    let err = b.pick(&[]).await.unwrap_err();
    assert_eq!(
        err,
        PickError::TooManyPending {
            service: "svc".into(),
            limit: 2
        }
    );
    assert_eq!(start.elapsed(), Duration::ZERO);
    for w in waiters {
        assert!(w.await.unwrap().unwrap_err().is_none_ready());
    }
}

#[tokio::test(start_paused = true)]
async fn ejected_endpoints_are_skipped_above_the_panic_threshold() {
    let b = balancer(BalancerKind::P2cPeakEwma, &[1, 1, 1, 1]);
    let h = handles(&b);
    h[&addr(0)].eject_until(Instant::now() + Duration::from_secs(30));
    assert_eq!(
        b.stats(),
        BalancerStats {
            known: 4,
            ready: 3,
            ejected: 1,
            unhealthy: 0
        }
    );
    assert!(!h[&addr(0)].is_in_rotation());
    assert_eq!(distribution(&b, &[], 1_000).get(&addr(0)), None);
    // The ejection ends by itself.
    tokio::time::advance(Duration::from_secs(31)).await;
    assert!(h[&addr(0)].is_in_rotation());
    assert!(distribution(&b, &[], 1_000).contains_key(&addr(0)));
    assert_eq!(
        b.stats(),
        BalancerStats {
            known: 4,
            ready: 4,
            ejected: 0,
            unhealthy: 0
        }
    );
}

#[tokio::test(start_paused = true)]
async fn panic_threshold_ignores_ejections_but_not_unreachability() {
    for kind in KINDS {
        let b = balancer(kind, &[1, 1, 1, 1]);
        let h = handles(&b);
        let later = Instant::now() + Duration::from_secs(30);
        for i in 0..3 {
            h[&addr(i)].eject_until(later);
        }
        // 1 of 4 ready is below 0.5: ejected endpoints take traffic again.
        assert_eq!(distribution(&b, &[], 4_000).len(), 4, "{kind}");
        h[&addr(3)].set_reachable(false);
        let counts = distribution(&b, &[], 3_000);
        assert_eq!(counts.get(&addr(3)), None, "{kind}: {counts:?}");
        assert_eq!(counts.len(), 3, "{kind}: {counts:?}");
        // 3 of 4 ready is not: the one ejection is honoured.
        h[&addr(3)].set_reachable(true);
        h[&addr(0)].restore();
        h[&addr(1)].restore();
        let counts = distribution(&b, &[], 3_000);
        assert_eq!(counts.get(&addr(2)), None, "{kind}: {counts:?}");
    }
}

#[test]
fn update_keeps_state_of_surviving_endpoints_and_picked_of_removed_stays_valid() {
    let built = Arc::new(AtomicUsize::new(0));
    let b = Balancer::new("svc", settings(BalancerKind::RoundRobin), {
        let built = Arc::clone(&built);
        move |endpoint, handle| {
            built.fetch_add(1, Ordering::SeqCst);
            (endpoint.addr, handle)
        }
    });
    b.update(&snapshot(&[1, 1, 1]));
    let kept = b.try_pick(&[addr(1), addr(2)]).unwrap();
    let leaving = b.try_pick(&[addr(0), addr(2)]).unwrap();
    kept.handle().set_reachable(false);
    kept.handle().set_reachable(true);
    assert_eq!(built.load(Ordering::SeqCst), 2);

    // addr(1) leaves, addr(0) stays with a new weight, addr(3) joins.
    b.update(&Snapshot::new(vec![
        Endpoint::new(addr(0)).with_weight(4),
        Endpoint::new(addr(2)),
        Endpoint::new(addr(3)),
    ]));
    assert_eq!(
        b.stats(),
        BalancerStats {
            known: 3,
            ready: 3,
            ejected: 0,
            unhealthy: 0
        }
    );
    assert!(leaving.handle().is_removed());
    assert_eq!(
        leaving.endpoint().0,
        addr(1),
        "a removed endpoint's value stays usable"
    );
    assert!(!kept.handle().is_removed());
    assert_eq!(kept.handle().in_flight(), 1);
    let again = b.try_pick(&[addr(2), addr(3)]).unwrap();
    assert_eq!(again.addr(), addr(0));
    assert_eq!(
        again.handle().in_flight(),
        2,
        "same state as before the update"
    );
    assert_eq!(
        built.load(Ordering::SeqCst),
        2,
        "no new value for a surviving endpoint"
    );
    assert!(!distribution(&b, &[], 3_000).contains_key(&addr(1)));
    // Removed endpoints no longer count, even if their state changes later.
    leaving.handle().set_reachable(false);
    assert_eq!(b.stats().ready, 3);
    drop(leaving);
}

#[test]
fn endpoint_whose_identity_changed_is_replaced() {
    let b = balancer(BalancerKind::RoundRobin, &[1]);
    let old = handles(&b).remove(&addr(0)).unwrap();
    let mut endpoint = Endpoint::new(addr(0));
    endpoint.identity = Some("spiffe://example.org/ns/a/sa/b".into());
    b.update(&Snapshot::new(vec![endpoint.clone()]));
    assert!(old.is_removed());
    let picked = b.try_pick(&[]).unwrap();
    assert_eq!(picked.handle().endpoint(), &endpoint);
    assert!(!picked.handle().is_removed());
}

#[test]
fn make_endpoint_is_called_lazily_once_per_endpoint() {
    let built = Arc::new(AtomicUsize::new(0));
    let b = Balancer::new("svc", settings(BalancerKind::P2cPeakEwma), {
        let built = Arc::clone(&built);
        move |endpoint: &Endpoint, _| {
            built.fetch_add(1, Ordering::SeqCst);
            endpoint.addr
        }
    });
    b.update(&snapshot(&[1; 1_000]));
    assert_eq!(
        built.load(Ordering::SeqCst),
        0,
        "known endpoints are not built"
    );
    b.update(&snapshot(&[1, 1, 1]));
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..1_000 {
                    let picked = b.try_pick(&[]).unwrap();
                    assert_eq!(picked.addr(), *picked.endpoint());
                }
            });
        }
    });
    assert_eq!(built.load(Ordering::SeqCst), 3);
}

#[test]
fn round_robin_rotates_through_endpoints() {
    let b = balancer(BalancerKind::RoundRobin, &[1, 1, 1]);
    let order: Vec<_> = (0..6).map(|_| b.try_pick(&[]).unwrap().addr()).collect();
    assert_eq!(&order[..3], &order[3..]);
    let mut first = order[..3].to_vec();
    first.sort();
    assert_eq!(first, [addr(0), addr(1), addr(2)]);
}

#[test]
fn mostly_ineligible_tables_still_pick_the_eligible_few() {
    for kind in KINDS {
        let b = balancer(kind, &[1; 2_000]);
        let h = handles(&b);
        for (a, handle) in &h {
            if a.port() % 500 != 0 {
                handle.set_reachable(false);
            }
        }
        let counts = distribution(&b, &[], 400);
        assert_eq!(counts.len(), 4, "{kind}: {counts:?}");
        assert!(counts.keys().all(|a| a.port() % 500 == 0));
    }
}

#[test]
fn picked_holds_one_in_flight_until_dropped() {
    let b = balancer(BalancerKind::LeastRequest, &[1]);
    let first = b.try_pick(&[]).unwrap();
    let second = b.try_pick(&[]).unwrap();
    assert_eq!(first.handle().in_flight(), 2);
    drop(first);
    assert_eq!(second.handle().in_flight(), 1);
    drop(second);
    assert_eq!(b.try_pick(&[]).unwrap().handle().in_flight(), 1);
}

#[test]
fn errors_name_the_service() {
    let b = Balancer::new("payments", BalancerSettings::default(), |_, _| ());
    let err = b.try_pick(&[]).unwrap_err();
    assert!(err.is_no_endpoints());
    assert_eq!(err.service(), "payments");
    assert!(err.to_string().contains("`payments`"), "{err}");
}

#[tokio::test]
async fn follow_applies_snapshots_and_ends_with_discovery() {
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(snapshot(&[1])));
    let b = Balancer::new("svc", BalancerSettings::default(), |_, _| ());
    let task = b.follow(rx);
    // Wait on the event (the pick queue is woken by every update), not on time.
    assert_eq!(b.pick(&[]).await.unwrap().addr(), addr(0));
    tx.send(Arc::new(snapshot(&[1, 1, 1]))).unwrap();
    while b.stats().known != 3 {
        tokio::task::yield_now().await;
    }
    drop(tx);
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("follow task outlived discovery")
        .unwrap();
}

#[tokio::test]
async fn follow_applies_the_current_snapshot_before_returning() {
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(snapshot(&[1, 1])));
    let b = Balancer::new("svc", BalancerSettings::default(), |_, _| ());
    let _task = b.follow(rx);
    // No await in between: the follow task has not run yet.
    assert_eq!(b.stats().known, 2);
    assert!(b.try_pick(&[]).is_ok());
}

#[tokio::test]
async fn follow_ends_when_the_balancer_is_dropped() {
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(snapshot(&[1])));
    let b = Balancer::new("svc", BalancerSettings::default(), |_, _| ());
    let task = b.follow(rx);
    drop(b);
    // A wide bound only so that a regression fails instead of hanging.
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("follow task outlived its balancer")
        .unwrap();
    assert!(tx.is_closed(), "the task dropped its receiver");
}

#[tokio::test(start_paused = true)]
async fn p2c_gives_unmeasured_endpoints_a_fair_share_among_fast_measured_ones() {
    let b = balancer(BalancerKind::P2cPeakEwma, &[1, 1, 1]);
    // Only endpoint 0 has answered, quickly; 1 and 2 have never been measured.
    for _ in 0..100 {
        let picked = b.try_pick(&[addr(1), addr(2)]).unwrap();
        picked.record_rtt(Duration::from_millis(1));
    }
    // Were they estimated at the 30 ms default, they would only win the picks that
    // pair them with each other (about 500 each of 3,000).
    let counts = distribution(&b, &[], 3_000);
    for i in [1, 2] {
        assert!(
            counts.get(&addr(i)).copied().unwrap_or(0) > 800,
            "{counts:?}"
        );
    }
}

/// Captures the balancer's metrics on the current thread.
mod recorder {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use metrics::{
        Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder,
        SharedString, Unit,
    };
    use parking_lot::Mutex;

    /// Last value of each metric, keyed `name{label=value,...}` (labels sorted).
    #[derive(Debug, Default, Clone)]
    pub(super) struct TestRecorder {
        values: Arc<Mutex<BTreeMap<String, f64>>>,
    }

    impl TestRecorder {
        pub(super) fn get(&self, key: &str) -> Option<f64> {
            self.values.lock().get(key).copied()
        }

        fn cell(&self, key: &Key) -> Arc<Cell> {
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            Arc::new(Cell {
                key: format!("{}{{{}}}", key.name(), labels.join(",")),
                values: Arc::clone(&self.values),
            })
        }
    }

    struct Cell {
        key: String,
        values: Arc<Mutex<BTreeMap<String, f64>>>,
    }

    impl Cell {
        fn apply(&self, f: impl FnOnce(f64) -> f64) {
            let mut values = self.values.lock();
            let value = values.entry(self.key.clone()).or_default();
            *value = f(*value);
        }
    }

    impl CounterFn for Cell {
        fn increment(&self, v: u64) {
            self.apply(|x| x + v as f64);
        }
        fn absolute(&self, v: u64) {
            self.apply(|_| v as f64);
        }
    }

    impl GaugeFn for Cell {
        fn increment(&self, v: f64) {
            self.apply(|x| x + v);
        }
        fn decrement(&self, v: f64) {
            self.apply(|x| x - v);
        }
        fn set(&self, v: f64) {
            self.apply(|_| v);
        }
    }

    impl Recorder for TestRecorder {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(self.cell(key))
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::from_arc(self.cell(key))
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }
}

#[test]
fn endpoint_gauges_follow_table_and_state_changes() {
    let recorder = recorder::TestRecorder::default();
    metrics::with_local_recorder(&recorder, || {
        let gauge = |state: &str| {
            recorder.get(&format!(
                "mesh.endpoints{{mesh.service=svc,mesh.state={state}}}"
            ))
        };
        let b = balancer(BalancerKind::P2cPeakEwma, &[1, 1, 1, 1]);
        let h = handles(&b);
        assert_eq!(
            (gauge("known"), gauge("ready"), gauge("ejected")),
            (Some(4.0), Some(4.0), Some(0.0))
        );
        h[&addr(0)].eject_until(Instant::now() + Duration::from_secs(30));
        h[&addr(1)].set_reachable(false);
        assert_eq!((gauge("ready"), gauge("ejected")), (Some(2.0), Some(1.0)));
        b.update(&snapshot(&[1, 1]));
        // addr(2) and addr(3) left; addr(0) is ejected and addr(1) unreachable.
        assert_eq!(
            (gauge("known"), gauge("ready"), gauge("ejected")),
            (Some(2.0), Some(0.0), Some(1.0))
        );
    });
}

#[test]
fn failed_picks_are_counted_by_reason() {
    let recorder = recorder::TestRecorder::default();
    metrics::with_local_recorder(&recorder, || {
        let counter = |reason: &str| {
            recorder.get(&format!(
                "mesh.balancer.no_endpoint{{mesh.reason={reason},mesh.service=svc}}"
            ))
        };
        let mut s = settings(BalancerKind::RoundRobin);
        s.max_pending = 0;
        let b = Balancer::new("svc", s, |_, handle| handle);
        assert!(b.try_pick(&[]).is_err());
        assert_eq!(counter("no_endpoints"), Some(1.0));
        b.update(&snapshot(&[1]));
        handles(&b)[&addr(0)].set_reachable(false);
        assert!(b.try_pick(&[]).is_err());
        assert!(b.try_pick(&[]).is_err());
        assert_eq!(counter("none_ready"), Some(2.0));
        let err = tokio_test::block_on(b.pick(&[])).unwrap_err();
        assert!(err.is_too_many_pending());
        assert_eq!(counter("too_many_pending"), Some(1.0));
        assert_eq!(
            counter("none_ready"),
            Some(2.0),
            "the queued attempt counts once, as its final error"
        );
    });
}

#[test]
fn counts_stay_consistent_under_concurrent_picks_state_changes_and_updates() {
    let b = balancer(BalancerKind::P2cPeakEwma, &[1; 64]);
    let a = snapshot(&[1; 64]);
    let shifted = Snapshot::new((16..80).map(|i| Endpoint::new(addr(i))).collect());
    std::thread::scope(|scope| {
        for t in 0..2u16 {
            let b = &b;
            scope.spawn(move || {
                for i in 0..20_000u32 {
                    if let Ok(picked) = b.try_pick(&[]) {
                        // Flip reachability of some endpoints while others pick them.
                        picked.handle().set_reachable(i % 3 != u32::from(t));
                        if i % 7 == 0 {
                            picked
                                .handle()
                                .eject_until(Instant::now() + Duration::from_secs(60));
                        } else if i % 5 == 0 {
                            picked.handle().restore();
                        }
                    }
                }
            });
        }
        scope.spawn(|| {
            for i in 0..200 {
                b.update(if i % 2 == 0 { &shifted } else { &a });
            }
        });
    });
    // Every pick was dropped, and the counters match a fresh count of the table.
    let h = handles(&b);
    assert!(h.values().all(|h| h.in_flight() == 0));
    let ready = h.values().filter(|h| h.is_in_rotation()).count();
    let ejected = h.values().filter(|h| h.is_flagged_ejected()).count();
    assert!(ejected > 0, "the run should leave some endpoints ejected");
    assert_eq!(
        b.stats(),
        BalancerStats {
            known: 64,
            ready,
            ejected,
            unhealthy: 0
        }
    );
}

#[test]
fn balancer_and_pick_future_can_cross_threads() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: T) {}
    let b = balancer(BalancerKind::P2cPeakEwma, &[1]);
    send_sync(&b);
    send_sync(&b.try_pick(&[]).unwrap());
    send_sync(&handles(&b)[&addr(0)]);
    // Callers hold the pick future inside tower services spawned on a runtime.
    send(b.pick(&[]));
}

/// A per-endpoint value that holds its own handle (as the connection pool does) and
/// counts its drops.
struct HoldsHandle {
    _handle: EndpointHandle,
    dropped: Arc<AtomicUsize>,
}

impl Drop for HoldsHandle {
    fn drop(&mut self) {
        self.dropped.fetch_add(1, Ordering::AcqRel);
    }
}

#[test]
fn value_holding_its_handle_is_dropped_once_the_endpoint_leaves_and_its_last_pick_ends() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let b = Balancer::new("svc", settings(BalancerKind::P2cPeakEwma), {
        let dropped = Arc::clone(&dropped);
        move |_, handle| HoldsHandle {
            _handle: handle,
            dropped: Arc::clone(&dropped),
        }
    });
    b.update(&snapshot(&[1]));
    let picked = b.try_pick(&[]).unwrap();
    let handle = picked.handle().clone();
    b.update(&Snapshot::default());
    assert_eq!(dropped.load(Ordering::Acquire), 0, "a pick still holds it");
    assert!(handle.is_removed());
    assert_eq!(handle.in_flight(), 1);
    drop(picked);
    assert_eq!(
        dropped.load(Ordering::Acquire),
        1,
        "the handle inside the value must not keep the endpoint alive"
    );
    // The state is gone: the handle says removed and ignores changes.
    assert!(handle.is_removed());
    assert!(!handle.is_in_rotation());
    assert_eq!(handle.in_flight(), 0);
    handle.set_reachable(false);
    handle.eject_until(Instant::now() + Duration::from_secs(60));
    assert_eq!(handle.addr(), addr(0));
    assert_eq!(b.stats().known, 0);
}
