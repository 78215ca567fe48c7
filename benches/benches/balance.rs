//! Load balancer benchmarks: pick cost at 10, 1,000 and 10,000 endpoints for each
//! kind, applying 1% churn to 10,000 endpoints, and bytes per known endpoint.
//!
//! `cargo bench -p mesh-benches --bench balance` (add `-- --quick` for a short run).
//! After criterion's groups it measures pick(10k)/pick(10) again with the two sizes
//! interleaved (A B A B …) over many short rounds, prints the medians and the median
//! of the per-round ratios, and ends with one JSON line. Run it pinned to one CPU
//! (`taskset -c 1 cargo bench …`): a thread that migrates to the other core starts
//! with a cold L2, which is exactly what pick(10k) measures.
//!
//! Modes of the bench binary itself (`target/release/deps/balance-<hash>`):
//! `profile <kind> <endpoints> <picks>` only picks (for cachegrind);
//! `ratios [rounds] [picks]` runs only the interleaved comparison.

use std::alloc::System;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cap::Cap;
use criterion::{BenchmarkId, Criterion, Throughput};
use mesh_core::balance::{Balancer, BalancerKind, BalancerSettings};
use mesh_core::discovery::{Endpoint, Snapshot};
use tokio::time::Instant;

/// Counts live heap bytes, for bytes per endpoint (RSS would hide them).
#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

const KINDS: [BalancerKind; 3] = [
    BalancerKind::P2cPeakEwma,
    BalancerKind::LeastRequest,
    BalancerKind::RoundRobin,
];
const SIZES: [usize; 3] = [10, 1_000, 10_000];

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8080))
}

fn snapshot(range: std::ops::Range<usize>) -> Snapshot {
    Snapshot::new(range.map(|i| Endpoint::new(addr(i))).collect())
}

/// A balancer over `n` endpoints, each picked once and given an RTT sample so that
/// picks read real EWMA state.
fn warmed(kind: BalancerKind, n: usize) -> Arc<Balancer<()>> {
    let settings = BalancerSettings {
        kind,
        ..BalancerSettings::default()
    };
    let balancer = Balancer::new("bench", settings, |_, _| ());
    balancer.update(&snapshot(0..n));
    let mut seen = 0;
    while seen < n * 4 {
        let picked = balancer.try_pick(&[]).expect("pick");
        let micros = 500 + (picked.addr().port() as u64 + seen as u64 * 7) % 1_000;
        picked.record_rtt(Duration::from_micros(micros));
        seen += 1;
    }
    balancer
}

fn bench_pick(c: &mut Criterion) {
    for kind in KINDS {
        let mut group = c.benchmark_group(format!("balance/pick/{kind}"));
        group.throughput(Throughput::Elements(1));
        for n in SIZES {
            let balancer = warmed(kind, n);
            group.bench_with_input(BenchmarkId::from_parameter(n), &balancer, |b, balancer| {
                b.iter(|| black_box(balancer.try_pick(black_box(&[])).expect("pick")))
            });
        }
        group.finish();
    }
}

fn bench_churn(c: &mut Criterion) {
    // 100 of 10,000 endpoints leave and 100 new ones join on every update.
    let a = snapshot(0..10_000);
    let b = snapshot(100..10_100);
    let balancer = warmed(BalancerKind::P2cPeakEwma, 10_000);
    let mut group = c.benchmark_group("balance/update");
    let mut flip = false;
    group.bench_function("churn_1pct_of_10000", |bench| {
        bench.iter(|| {
            flip = !flip;
            balancer.update(if flip { &b } else { &a });
        })
    });
    group.finish();
}

/// Heap bytes a balancer holds per known, never-picked endpoint.
fn bytes_per_known_endpoint(n: usize) -> f64 {
    let snapshot = snapshot(0..n);
    let before = ALLOCATOR.allocated();
    let balancer = Balancer::new("bench", BalancerSettings::default(), |_, _| ());
    balancer.update(&snapshot);
    let after = ALLOCATOR.allocated();
    drop(balancer);
    (after - before) as f64 / n as f64
}

/// Nanoseconds per pick over a batch.
fn time_picks(balancer: &Balancer<()>, picks: u32) -> f64 {
    let start = Instant::now();
    for _ in 0..picks {
        black_box(balancer.try_pick(black_box(&[])).expect("pick"));
    }
    start.elapsed().as_nanos() as f64 / f64::from(picks)
}

/// The `q` quantile (0..=1) of `values`, nearest rank.
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// One kind's interleaved figures.
struct Ratio {
    kind: BalancerKind,
    /// Median ns per pick at 10 and at 10,000 endpoints.
    small: f64,
    large: f64,
    /// Quartiles of the per-round ratios pick(10k)/pick(10).
    q1: f64,
    median: f64,
    q3: f64,
}

/// pick(10k)/pick(10) per kind, with the sizes interleaved within each round (the
/// order alternates between rounds, so neither size always runs right after the
/// other). The per-round ratio compares two batches run a few milliseconds apart,
/// so load that changes over seconds cancels out of it.
fn interleaved_ratios(rounds: usize, picks: u32) -> Vec<Ratio> {
    KINDS
        .iter()
        .map(|&kind| {
            let small = warmed(kind, 10);
            let large = warmed(kind, 10_000);
            let (mut s, mut l, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..rounds {
                let (a, b) = if round % 2 == 0 {
                    let a = time_picks(&small, picks);
                    (a, time_picks(&large, picks))
                } else {
                    let b = time_picks(&large, picks);
                    (time_picks(&small, picks), b)
                };
                s.push(a);
                l.push(b);
                ratios.push(b / a);
            }
            Ratio {
                kind,
                small: quantile(&s, 0.5),
                large: quantile(&l, 0.5),
                q1: quantile(&ratios, 0.25),
                median: quantile(&ratios, 0.5),
                q3: quantile(&ratios, 0.75),
            }
        })
        .collect()
}

/// Prints the interleaved figures and returns their JSON fields.
fn print_ratios(rounds: usize, picks: u32) -> String {
    println!("\npick(10k)/pick(10), {rounds} interleaved rounds of {picks} picks:");
    println!(
        "{:<14} {:>10} {:>10} {:>10} {:>17}",
        "kind", "10 (ns)", "10k (ns)", "ratio", "q1..q3 of ratios"
    );
    let ratios = interleaved_ratios(rounds, picks);
    for r in &ratios {
        println!(
            "{:<14} {:>10.1} {:>10.1} {:>10.2} {:>8.2}..{:<8.2}",
            r.kind.to_string(),
            r.small,
            r.large,
            r.median,
            r.q1,
            r.q3
        );
    }
    println!("(ns: medians of the rounds; ratio: median of the per-round ratios)");
    let fields: Vec<String> = ratios
        .iter()
        .map(|r| {
            format!(
                "\"{}\":{{\"pick_10_ns\":{:.1},\"pick_10k_ns\":{:.1},\"ratio\":{:.3},\"ratio_q1\":{:.3},\"ratio_q3\":{:.3}}}",
                r.kind, r.small, r.large, r.median, r.q1, r.q3
            )
        })
        .collect();
    format!("\"rounds\":{rounds},\"picks\":{picks},{}", fields.join(","))
}

/// `balance profile <kind> <endpoints> <picks>`: warms a balancer, then makes
/// `picks` picks and exits, for a cache simulator (cachegrind) to count what a pick
/// costs deterministically: misses per pick = (misses(P2) − misses(P1)) / (P2 − P1).
fn profile(args: &[String]) {
    let kind: BalancerKind = args[0].parse().expect("kind");
    let endpoints: usize = args[1].parse().expect("endpoints");
    let picks: u32 = args[2].parse().expect("picks");
    let balancer = warmed(kind, endpoints);
    black_box(time_picks(&balancer, picks));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("profile") => return profile(&args[2..]),
        Some("ratios") => {
            let rounds = args.get(2).map_or(1_001, |a| a.parse().expect("rounds"));
            let picks = args.get(3).map_or(5_000, |a| a.parse().expect("picks"));
            let fields = print_ratios(rounds, picks);
            println!("{{\"bench\":\"balance\",{fields}}}");
            return;
        }
        _ => {}
    }
    // `cargo test --benches` runs this binary without `--bench`: keep that quick.
    let benching = args.iter().any(|a| a == "--bench");
    let quick = args.iter().any(|a| a == "--quick");

    let bytes = bytes_per_known_endpoint(10_000);
    println!("balance: {bytes:.0} bytes per known endpoint (10,000 endpoints, counting allocator)");

    let mut criterion = Criterion::default().configure_from_args();
    bench_pick(&mut criterion);
    bench_churn(&mut criterion);
    criterion.final_summary();

    if !benching {
        return;
    }
    // Many short rounds: each ratio compares batches a few milliseconds apart.
    let (rounds, picks) = if quick { (201, 5_000) } else { (1_001, 5_000) };
    let fields = print_ratios(rounds, picks);
    println!("{{\"bench\":\"balance\",\"bytes_per_known_endpoint\":{bytes:.0},{fields}}}");
}
