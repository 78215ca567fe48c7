//! DNS discovery against a real dnsmasq: A records appearing and disappearing, TTLs
//! honoured (counted in dnsmasq's query log), a server outage keeping the last good set,
//! and SRV priority and weight.
//!
//! Needs `/usr/sbin/dnsmasq`; `scripts/test.sh` installs it. Without it these tests fail
//! and say so.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use mesh_core::discovery::{Discovery, DiscoverySource, DnsSettings, Snapshot};
use mesh_core::metric_names::{DISCOVERY_ERRORS, DISCOVERY_UPDATES};
use mesh_tests::dnsmasq::Dnsmasq;
use metrics::{Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

/// Generous, for a busy 2-core machine; tests wait on events, not on this.
const WAIT: Duration = Duration::from_secs(20);

/// Counters by key, process-wide (the tests share one global recorder and tell their
/// series apart by service name).
#[derive(Default)]
struct Counters {
    by_key: Mutex<HashMap<Key, Arc<Count>>>,
    changed: Arc<Notify>,
}

struct Count(AtomicU64, Arc<Notify>);

impl CounterFn for Count {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
        self.1.notify_waiters();
    }
    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::SeqCst);
        self.1.notify_waiters();
    }
}

impl metrics::Recorder for Counters {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let count = self
            .by_key
            .lock()
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Count(AtomicU64::new(0), self.changed.clone())))
            .clone();
        Counter::from_arc(count)
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

static COUNTERS: LazyLock<&'static Counters> = LazyLock::new(|| {
    let counters: &'static Counters = Box::leak(Box::default());
    metrics::set_global_recorder(counters).expect("no other recorder in this test binary");
    counters
});

fn count(name: &str, service: &str) -> u64 {
    COUNTERS
        .by_key
        .lock()
        .iter()
        .filter(|(k, _)| {
            k.name() == name
                && k.labels()
                    .any(|l| l.key() == "mesh.service" && l.value() == service)
        })
        .map(|(_, c)| c.0.load(Ordering::SeqCst))
        .sum()
}

async fn wait_count(name: &str, service: &str, at_least: u64, within: Duration) {
    let waited = tokio::time::timeout(within, async {
        loop {
            let changed = COUNTERS.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if count(name, service) >= at_least {
                return;
            }
            changed.await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "{name} for {service} stayed at {} (< {at_least})",
        count(name, service)
    );
}

fn settings(server: &Dnsmasq, min_ttl: Duration, max_ttl: Duration) -> DnsSettings {
    DnsSettings {
        servers: vec![server.addr()],
        min_ttl,
        max_ttl,
    }
}

fn addrs(snapshot: &Snapshot) -> Vec<String> {
    snapshot
        .endpoints()
        .iter()
        .map(|e| e.addr.to_string())
        .collect()
}

/// Waits for the next published snapshot.
async fn next_change(rx: &mut watch::Receiver<Arc<Snapshot>>, dns: &Dnsmasq) -> Arc<Snapshot> {
    match tokio::time::timeout(WAIT, rx.changed()).await {
        Ok(Ok(())) => rx.borrow_and_update().clone(),
        Ok(Err(_)) => panic!("discovery channel closed"),
        Err(_) => panic!(
            "no snapshot change in {WAIT:?}; dnsmasq log:\n{}",
            dns.log()
        ),
    }
}

fn dns_source(host: &str, port: u16) -> DiscoverySource {
    DiscoverySource::Dns(format!("{host}:{port}").parse().unwrap())
}

#[tokio::test]
async fn dns_records_added_appear() {
    LazyLock::force(&COUNTERS);
    let mut dns = Dnsmasq::builder()
        .ttl(1)
        .host("added.test", "10.1.0.1")
        .start();
    let settings = settings(&dns, Duration::from_millis(100), Duration::from_secs(5));
    let d = Discovery::spawn("dns-added", &dns_source("added.test", 8080), &settings).unwrap();
    d.initialized().await;
    assert_eq!(addrs(&d.current()), ["10.1.0.1:8080"], "{}", dns.log());

    let mut rx = d.subscribe();
    dns.set_hosts(&[("added.test", "10.1.0.1"), ("added.test", "10.1.0.2")]);
    let snap = next_change(&mut rx, &dns).await;
    assert_eq!(addrs(&snap), ["10.1.0.1:8080", "10.1.0.2:8080"]);
    assert_eq!(count(DISCOVERY_UPDATES.name, "dns-added"), 2);
}

#[tokio::test]
async fn dns_records_removed_disappear() {
    LazyLock::force(&COUNTERS);
    let mut dns = Dnsmasq::builder()
        .ttl(1)
        .host("removed.test", "10.2.0.1")
        .host("removed.test", "10.2.0.2")
        .host("removed.test", "::1")
        .start();
    let settings = settings(&dns, Duration::from_millis(100), Duration::from_secs(5));
    let d = Discovery::spawn("dns-removed", &dns_source("removed.test", 80), &settings).unwrap();
    d.initialized().await;
    // A and AAAA both, in one set.
    assert_eq!(
        addrs(&d.current()),
        ["10.2.0.1:80", "10.2.0.2:80", "[::1]:80"],
        "{}",
        dns.log()
    );

    let mut rx = d.subscribe();
    dns.set_hosts(&[("removed.test", "10.2.0.2")]);
    let snap = next_change(&mut rx, &dns).await;
    assert_eq!(addrs(&snap), ["10.2.0.2:80"]);
}

#[tokio::test]
async fn dns_ttl_is_honoured() {
    LazyLock::force(&COUNTERS);
    let short = Dnsmasq::builder()
        .ttl(1)
        .host("short.test", "10.3.0.1")
        .start();
    let long = Dnsmasq::builder()
        .ttl(3600)
        .host("long.test", "10.3.0.2")
        .start();
    // min_ttl below 1 s so the short TTL itself sets the pace; max_ttl far above the
    // length of this test, so the long TTL (clamped to it) allows no second query.
    let floor = Duration::from_millis(100);
    let ceiling = Duration::from_secs(300);
    let short_d = Discovery::spawn(
        "dns-ttl-short",
        &dns_source("short.test", 80),
        &settings(&short, floor, ceiling),
    )
    .unwrap();
    let long_d = Discovery::spawn(
        "dns-ttl-long",
        &dns_source("long.test", 80),
        &settings(&long, floor, ceiling),
    )
    .unwrap();
    long_d.initialized().await;
    short_d.initialized().await;

    // Both started together; by the time the 1 s TTL has caused 5 queries (≥ 4 s), the
    // long one must still be at its first.
    short.wait_for_queries("A", "short.test", 5, WAIT).await;
    assert_eq!(long.queries("A", "long.test"), 1, "{}", long.log());
    // Unchanged answers are not republished.
    assert_eq!(count(DISCOVERY_UPDATES.name, "dns-ttl-short"), 1);
    assert_eq!(addrs(&long_d.current()), ["10.3.0.2:80"]);
}

#[tokio::test]
async fn dns_ttl_zero_is_floored_by_min_ttl() {
    LazyLock::force(&COUNTERS);
    // dnsmasq's default local TTL is 0: without a floor this would be a query loop.
    let zero = Dnsmasq::builder().host("zero.test", "10.4.0.1").start();
    let d = Discovery::spawn(
        "dns-ttl-zero",
        &dns_source("zero.test", 80),
        &settings(&zero, Duration::from_secs(3600), Duration::from_secs(7200)),
    )
    .unwrap();
    d.initialized().await;
    // A second service on a short TTL proves time passed while this one stayed quiet.
    let pace = Dnsmasq::builder()
        .ttl(1)
        .host("pace.test", "10.4.0.2")
        .start();
    let _pace_d = Discovery::spawn(
        "dns-ttl-pace",
        &dns_source("pace.test", 80),
        &settings(&pace, Duration::from_millis(100), Duration::from_secs(5)),
    )
    .unwrap();
    pace.wait_for_queries("A", "pace.test", 3, WAIT).await;
    assert_eq!(zero.queries("A", "zero.test"), 1, "{}", zero.log());
    assert_eq!(addrs(&d.current()), ["10.4.0.1:80"]);
}

#[tokio::test]
async fn dns_server_gone_keeps_last_good_set_and_counts_errors() {
    LazyLock::force(&COUNTERS);
    let mut dns = Dnsmasq::builder()
        .ttl(1)
        .host("gone.test", "10.5.0.1")
        .host("gone.test", "10.5.0.2")
        .start();
    let settings = settings(&dns, Duration::from_millis(200), Duration::from_secs(1));
    let d = Discovery::spawn("dns-gone", &dns_source("gone.test", 80), &settings).unwrap();
    d.initialized().await;
    let good = addrs(&d.current());
    assert_eq!(good, ["10.5.0.1:80", "10.5.0.2:80"], "{}", dns.log());

    dns.stop();
    // Several failed attempts (a streak), each counted, none touching the set. A dead
    // server costs a few query timeouts (2 s each) per attempt, hence the longer wait.
    wait_count(DISCOVERY_ERRORS.name, "dns-gone", 2, 3 * WAIT).await;
    assert_eq!(addrs(&d.current()), good);
    assert_eq!(count(DISCOVERY_UPDATES.name, "dns-gone"), 1);

    // Back with other records: the next answer replaces the kept set.
    dns.set_hosts(&[("gone.test", "10.5.0.3")]);
    let mut rx = d.subscribe();
    dns.restart();
    let snap = next_change(&mut rx, &dns).await;
    assert_eq!(addrs(&snap), ["10.5.0.3:80"]);
}

#[tokio::test]
async fn dns_nxdomain_keeps_last_good_set() {
    LazyLock::force(&COUNTERS);
    let mut dns = Dnsmasq::builder()
        .ttl(1)
        .host("vanish.test", "10.6.0.1")
        .start();
    let settings = settings(&dns, Duration::from_millis(200), Duration::from_secs(1));
    let d = Discovery::spawn("dns-vanish", &dns_source("vanish.test", 80), &settings).unwrap();
    d.initialized().await;
    assert_eq!(addrs(&d.current()), ["10.6.0.1:80"], "{}", dns.log());
    dns.set_hosts(&[("other.test", "10.6.0.9")]);
    wait_count(DISCOVERY_ERRORS.name, "dns-vanish", 2, WAIT).await;
    assert_eq!(addrs(&d.current()), ["10.6.0.1:80"]);
}

#[tokio::test]
async fn srv_priority_and_weight_are_kept() {
    LazyLock::force(&COUNTERS);
    let dns = Dnsmasq::builder()
        .ttl(30)
        .host("a.srv.test", "10.7.0.1")
        .host("b.srv.test", "10.7.0.2")
        .host("c.srv.test", "10.7.0.3")
        .srv("_http._tcp.srv.test", "a.srv.test", 8080, 10, 5)
        .srv("_http._tcp.srv.test", "b.srv.test", 8081, 10, 1)
        .srv("_http._tcp.srv.test", "c.srv.test", 8082, 20, 7)
        .start();
    let settings = settings(&dns, Duration::from_secs(1), Duration::from_secs(60));
    let d = Discovery::spawn(
        "srv-weights",
        &DiscoverySource::Srv("_http._tcp.srv.test".into()),
        &settings,
    )
    .unwrap();
    d.initialized().await;
    let snap = d.current();
    // Only the lowest priority class (10); its weights carried over.
    let got: Vec<_> = snap
        .endpoints()
        .iter()
        .map(|e| (e.addr.to_string(), e.weight, e.priority))
        .collect();
    assert_eq!(
        got,
        [
            ("10.7.0.1:8080".to_owned(), 5, 10),
            ("10.7.0.2:8081".to_owned(), 1, 10)
        ],
        "{}",
        dns.log()
    );
}

#[tokio::test]
async fn srv_falls_back_to_the_next_priority_when_no_target_of_the_lowest_resolves() {
    LazyLock::force(&COUNTERS);
    let dns = Dnsmasq::builder()
        .ttl(30)
        .host("backup.srv2.test", "10.8.0.2")
        .srv("_grpc._tcp.srv2.test", "missing.srv2.test", 9000, 1, 10)
        .srv("_grpc._tcp.srv2.test", "backup.srv2.test", 9001, 2, 0)
        .start();
    let settings = settings(&dns, Duration::from_secs(1), Duration::from_secs(60));
    let d = Discovery::spawn(
        "srv-fallback",
        &DiscoverySource::Srv("_grpc._tcp.srv2.test".into()),
        &settings,
    )
    .unwrap();
    d.initialized().await;
    let snap = d.current();
    let got: Vec<_> = snap
        .endpoints()
        .iter()
        .map(|e| (e.addr.to_string(), e.weight, e.priority))
        .collect();
    // Weight 0 alone in its class means equal shares (RFC 2782), here weight 1.
    assert_eq!(got, [("10.8.0.2:9001".to_owned(), 1, 2)], "{}", dns.log());
}
