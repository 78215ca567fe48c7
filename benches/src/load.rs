//! Load generation: sequential, open loop at a fixed rate, and closed loop.
//!
//! The open-loop generator paces on a dedicated OS thread, not with tokio's
//! timer (millisecond resolution: it would add up to a millisecond of its own
//! lag and release requests in bursts). The thread sleeps with the OS timer
//! until shortly before each send time and spins only the rest. How early to
//! wake is learnt: Linux oversleeps by its timer slack (50 µs by default), so
//! the thread tracks how late its sleeps end and wakes that much earlier. Each
//! request's latency is measured from its *scheduled* time, so a stall on
//! either side shows up in every request it delays (no coordinated
//! omission), and the pacer's own lag (actual minus scheduled release) is
//! recorded separately so a late generator is visible, not hidden.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::time::Instant;

use crate::target::Target;

/// Latencies in nanoseconds, 1 ns to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

/// Outcome of a run that records latencies.
#[derive(Debug, Clone)]
pub struct LatencyRun {
    /// Latency of every successful request, ns.
    pub latency: Histogram<u64>,
    /// How late the generator released requests, ns (open loop only).
    pub lag: Option<Histogram<u64>>,
    /// Requests that failed.
    pub errors: u64,
    /// Requests that succeeded.
    pub ok: u64,
}

/// Sends `count` requests one after another.
pub async fn sequential(target: &Arc<dyn Target>, count: usize) -> LatencyRun {
    sequential_with_gaps(target, count, Duration::ZERO).await
}

/// Sends `count` requests one after another, idle for `gap` after each: every
/// request then starts from an idle client and server, as at a low offered
/// rate, which tells the generator's own cost apart from the machine's wake-up
/// cost.
pub async fn sequential_with_gaps(
    target: &Arc<dyn Target>,
    count: usize,
    gap: Duration,
) -> LatencyRun {
    let mut latency = histogram();
    let mut errors = 0;
    for _ in 0..count {
        let started = Instant::now();
        match target.call().await {
            Ok(()) => latency.saturating_record(nanos(started.elapsed())),
            Err(_) => errors += 1,
        }
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
    }
    LatencyRun {
        ok: latency.len(),
        latency,
        lag: None,
        errors,
    }
}

/// Wakes this long before the send time at first; then learnt.
const INITIAL_WAKE_EARLY: Duration = Duration::from_micros(30);
/// Never wakes earlier than this: a longer oversleep is the scheduler
/// preempting us on a busy machine, and spinning through it would take a
/// core from the system under test.
const MAX_WAKE_EARLY: Duration = Duration::from_micros(200);
/// Spin at least this long before each send, to absorb jitter in oversleep.
const SPIN_MARGIN: Duration = Duration::from_micros(5);

/// Asks Linux for a 1 ns timer slack on the calling thread (the default 50 µs
/// makes every sleep end up to 50 µs late, which the pacer would have to
/// spin through). Best effort: without the right to write the file, the
/// pacer learns the larger oversleep instead.
fn tighten_timer_slack() {
    let Ok(link) = std::fs::read_link("/proc/thread-self") else {
        return;
    };
    // `<pid>/task/<tid>`: the thread's own `/proc/<tid>` entry holds the file.
    if let Some(tid) = link.file_name().and_then(|t| t.to_str()) {
        let _ = std::fs::write(format!("/proc/{tid}/timerslack_ns"), "1");
    }
}

/// Offers `rate` requests per second for `duration`, spawning each request on
/// `runtime` at its scheduled time; returns when every request has finished.
pub fn open_loop(
    runtime: &Handle,
    target: &Arc<dyn Target>,
    rate: f64,
    duration: Duration,
) -> LatencyRun {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let count = (rate * duration.as_secs_f64()).round() as u64;
    let latency = Arc::new(Mutex::new(histogram()));
    let errors = Arc::new(AtomicU64::new(0));

    let pacer = {
        let runtime = runtime.clone();
        let target = target.clone();
        let latency = latency.clone();
        let errors = errors.clone();
        std::thread::Builder::new()
            .name("bench-pacer".into())
            .spawn(move || {
                tighten_timer_slack();
                let mut lag = histogram();
                let mut wake_early = INITIAL_WAKE_EARLY;
                let mut tasks = Vec::with_capacity(count as usize);
                let start = Instant::now() + Duration::from_millis(1);
                for i in 0..count {
                    let scheduled = start + interval * i as u32;
                    let now = Instant::now();
                    if scheduled > now + wake_early + SPIN_MARGIN {
                        let wake_at = scheduled - wake_early - SPIN_MARGIN;
                        std::thread::sleep(wake_at - now);
                        // Learn the oversleep: quick to grow, slow to shrink, so
                        // a single short sleep does not make the next one late.
                        let overslept = Instant::now().saturating_duration_since(wake_at);
                        wake_early = if overslept > wake_early {
                            overslept.min(MAX_WAKE_EARLY)
                        } else {
                            (wake_early * 15 + overslept) / 16
                        };
                    }
                    while Instant::now() < scheduled {
                        std::hint::spin_loop();
                    }
                    lag.saturating_record(nanos(
                        Instant::now().saturating_duration_since(scheduled),
                    ));
                    let target = target.clone();
                    let latency = latency.clone();
                    let errors = errors.clone();
                    tasks.push(runtime.spawn(async move {
                        match target.call().await {
                            Ok(()) => latency.lock().saturating_record(nanos(
                                Instant::now().saturating_duration_since(scheduled),
                            )),
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }));
                }
                (lag, tasks)
            })
            .expect("spawn the pacer thread")
    };
    let (lag, tasks) = pacer.join().expect("the pacer thread does not panic");
    runtime.block_on(async {
        for task in tasks {
            let _ = task.await;
        }
    });
    let latency = std::mem::replace(&mut *latency.lock(), histogram());
    LatencyRun {
        ok: latency.len(),
        latency,
        lag: Some(lag),
        errors: errors.load(Ordering::Relaxed),
    }
}

/// Outcome of a closed-loop run.
#[derive(Debug, Clone, Copy)]
pub struct Saturation {
    /// Successful requests per second.
    pub throughput: f64,
    /// Successful requests.
    pub ok: u64,
    /// Requests that failed.
    pub errors: u64,
}

/// `concurrency` workers each send the next request as soon as the last one
/// returns, for `duration`: the most this configuration can do.
pub async fn closed_loop(
    target: &Arc<dyn Target>,
    concurrency: usize,
    duration: Duration,
) -> Saturation {
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let target = target.clone();
            let (ok, errors) = (ok.clone(), errors.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    match target.call().await {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Saturation {
        throughput: ok.load(Ordering::Relaxed) as f64 / elapsed,
        ok: ok.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
    }
}
