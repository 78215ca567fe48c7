use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::balance::{Balancer, BalancerSettings};
use crate::discovery::{Endpoint, Snapshot};

/// A balancer whose per-endpoint value is the endpoint's own handle, and the
/// handles of its `n` endpoints.
fn endpoints(n: usize) -> (Arc<Balancer<EndpointHandle>>, Vec<EndpointHandle>) {
    let balancer = Balancer::new("svc", BalancerSettings::default(), |_, handle| handle);
    let addrs: Vec<SocketAddr> = (0..n)
        .map(|i| format!("10.0.0.{}:80", i + 1).parse().unwrap())
        .collect();
    balancer.update(&Snapshot::new(
        addrs.iter().map(|a| Endpoint::new(*a)).collect(),
    ));
    let handles = addrs
        .iter()
        .map(|a| {
            let others: Vec<SocketAddr> = addrs.iter().filter(|o| *o != a).copied().collect();
            balancer.try_pick(&others).unwrap().endpoint().clone()
        })
        .collect();
    (balancer, handles)
}

fn only_consecutive() -> OutlierSettings {
    OutlierSettings {
        success_rate: None,
        failure_percentage: None,
        ..OutlierSettings::default()
    }
}

fn fail(detector: &OutlierDetector, handle: &EndpointHandle, times: usize, known: usize) {
    for _ in 0..times {
        detector.record(handle, true, known);
    }
}

#[tokio::test(start_paused = true)]
async fn fifth_consecutive_failure_ejects_and_a_success_resets_the_run() {
    let (_b, h) = endpoints(10);
    let d = OutlierDetector::new("svc", only_consecutive());
    fail(&d, &h[0], 4, 10);
    d.record(&h[0], false, 10);
    fail(&d, &h[0], 4, 10);
    assert!(h[0].is_in_rotation(), "a success in between resets the run");
    fail(&d, &h[0], 1, 10);
    assert!(!h[0].is_in_rotation());
    assert_eq!(d.ejections(), 1);
}

#[tokio::test(start_paused = true)]
async fn ejection_time_grows_with_each_ejection_up_to_the_maximum() {
    let (_b, h) = endpoints(10);
    let settings = OutlierSettings {
        base_ejection: Duration::from_secs(30),
        max_ejection: Duration::from_secs(100),
        // Longer than the test, so the multiplier never decays.
        interval: Duration::from_secs(10_000),
        ..only_consecutive()
    };
    let d = OutlierDetector::new("svc", settings);
    for expected in [30u64, 60, 90, 100, 100] {
        fail(&d, &h[0], 5, 10);
        assert!(!h[0].is_in_rotation());
        tokio::time::advance(Duration::from_secs(expected) - Duration::from_millis(1)).await;
        assert!(
            !h[0].is_in_rotation(),
            "still ejected just before {expected}s"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(h[0].is_in_rotation(), "back after {expected}s");
    }
    assert_eq!(d.ejections(), 5);
}

#[tokio::test(start_paused = true)]
async fn the_multiplier_decays_while_the_endpoint_stays_in_rotation() {
    let (_b, h) = endpoints(10);
    let settings = OutlierSettings {
        base_ejection: Duration::from_secs(30),
        interval: Duration::from_secs(10),
        ..only_consecutive()
    };
    let d = OutlierDetector::new("svc", settings);
    fail(&d, &h[0], 5, 10);
    tokio::time::advance(Duration::from_secs(30)).await;
    // Two ejections' worth of good behaviour: the next ejection is a first one.
    tokio::time::advance(Duration::from_secs(20)).await;
    d.record(&h[1], false, 10);
    fail(&d, &h[0], 5, 10);
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(h[0].is_in_rotation(), "base time again, not twice it");
}

#[tokio::test(start_paused = true)]
async fn no_more_than_the_maximum_share_is_ejected_at_once() {
    let (_b, h) = endpoints(20);
    let d = OutlierDetector::new("svc", only_consecutive());
    for handle in &h {
        fail(&d, handle, 5, 20);
    }
    let ejected = h.iter().filter(|h| !h.is_in_rotation()).count();
    assert_eq!(ejected, 2, "10% of 20");
}

#[tokio::test(start_paused = true)]
async fn one_endpoint_may_always_be_ejected() {
    let (_b, h) = endpoints(3);
    let d = OutlierDetector::new("svc", only_consecutive());
    fail(&d, &h[0], 5, 3);
    fail(&d, &h[1], 5, 3);
    assert!(
        !h[0].is_in_rotation(),
        "10% of 3 rounds down to 0, yet one may go"
    );
    assert!(h[1].is_in_rotation(), "but only one");
    assert_eq!(max_ejected(3, 0.1), 1);
    assert_eq!(max_ejected(50, 0.1), 5);
}

#[tokio::test(start_paused = true)]
async fn below_the_panic_threshold_the_balancer_uses_ejected_endpoints() {
    let (b, h) = endpoints(2);
    let settings = OutlierSettings {
        max_ejected: 1.0,
        ..only_consecutive()
    };
    let d = OutlierDetector::new("svc", settings);
    fail(&d, &h[0], 5, 2);
    assert_eq!(b.stats().ejected, 1);
    // One of two ready is 50%: not below the threshold, so only the other is picked.
    for _ in 0..20 {
        assert_eq!(b.try_pick(&[]).unwrap().addr(), h[1].addr());
    }
    fail(&d, &h[1], 5, 2);
    assert_eq!(b.stats().ejected, 2);
    // None ready: panic mode balances over both.
    let picked: std::collections::HashSet<_> =
        (0..50).map(|_| b.try_pick(&[]).unwrap().addr()).collect();
    assert_eq!(picked.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn failure_percentage_ejects_at_the_interval() {
    let (_b, h) = endpoints(10);
    let settings = OutlierSettings {
        consecutive_failures: None,
        success_rate: None,
        max_ejected: 0.5,
        ..OutlierSettings::default()
    };
    let d = OutlierDetector::new("svc", settings);
    for (i, handle) in h.iter().enumerate().take(5) {
        for n in 0..60 {
            // Endpoint 0 fails 90% of its calls, the others 10%.
            let failed = if i == 0 { n % 10 != 0 } else { n % 10 == 0 };
            d.record(handle, failed, 10);
        }
    }
    assert!(h[0].is_in_rotation(), "judged only at the interval");
    tokio::time::advance(Duration::from_secs(10)).await;
    d.record(&h[1], false, 10);
    assert!(!h[0].is_in_rotation());
    assert!(h[1..].iter().all(EndpointHandle::is_in_rotation));
}

#[tokio::test(start_paused = true)]
async fn success_rate_ejects_the_endpoint_far_below_the_mean() {
    let (_b, h) = endpoints(10);
    let settings = OutlierSettings {
        consecutive_failures: None,
        failure_percentage: None,
        max_ejected: 0.5,
        ..OutlierSettings::default()
    };
    let d = OutlierDetector::new("svc", settings);
    for (i, handle) in h.iter().enumerate().take(6) {
        for n in 0..100 {
            // Endpoint 0 succeeds 50% of the time, the others 99-100%.
            let failed = if i == 0 {
                n % 2 == 0
            } else {
                n == 0 && i % 2 == 0
            };
            d.record(handle, failed, 10);
        }
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    d.record(&h[1], false, 10);
    assert!(!h[0].is_in_rotation());
    assert!(h[1..].iter().all(EndpointHandle::is_in_rotation));
}

#[tokio::test(start_paused = true)]
async fn statistical_methods_need_enough_endpoints() {
    let (_b, h) = endpoints(10);
    let settings = OutlierSettings {
        consecutive_failures: None,
        max_ejected: 0.5,
        ..OutlierSettings::default()
    };
    let d = OutlierDetector::new("svc", settings);
    // Only 4 endpoints with enough calls: fewer than the 5 the methods need.
    for (i, handle) in h.iter().enumerate().take(4) {
        for _ in 0..200 {
            d.record(handle, i == 0, 10);
        }
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    d.record(&h[1], false, 10);
    assert!(h[0].is_in_rotation());
}

/// The detector reads the time through the shared clock: inside a poll's scope
/// the ejection runs from that poll's reading, never from an earlier scope's.
#[tokio::test(start_paused = true)]
async fn an_ejection_runs_from_the_poll_that_reports_the_failure() {
    use crate::clock::{self, ClockScope};
    let (_b, h) = endpoints(10);
    let settings = OutlierSettings {
        base_ejection: Duration::from_secs(30),
        interval: Duration::from_secs(10_000),
        ..only_consecutive()
    };
    let d = OutlierDetector::new("svc", settings);
    {
        let _earlier_poll = ClockScope::lazy();
        let _ = clock::now();
        fail(&d, &h[0], 4, 10);
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    {
        let _poll = ClockScope::lazy();
        fail(&d, &h[0], 1, 10);
    }
    assert!(!h[0].is_in_rotation());
    tokio::time::advance(Duration::from_secs(30) - Duration::from_millis(1)).await;
    assert!(
        !h[0].is_in_rotation(),
        "30 s from the fifth failure, not the first"
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(h[0].is_in_rotation());
}
