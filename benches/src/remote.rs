//! Load runs in a helper process, driven over its standard input and output.
//!
//! Telemetry is process-wide (one tracer provider, one metrics recorder), so a
//! configuration that sets it up differently from the bench's own client, such
//! as `mesh+otel` with a span exporter, has to run in a process of its own.
//! The bench sends one JSON command per line (`sequential`, `open`, `closed`,
//! `flush`); the helper runs it with the same generators ([`crate::load`]) and
//! answers one JSON line with the run's summary. Each command is a separate
//! exchange so the bench can take CPU and memory figures around exactly the
//! phase it measures, as it does for in-process clients.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::load::{self, LatencyRun, Saturation};
use crate::report::{OpenLoop, Percentiles};
use crate::target::{BoxError, Target};

/// What the helper prints once it has sent its first request.
const READY: &str = "ready";

fn percentiles_json(p: &Percentiles) -> Value {
    json!({"p50": p.p50_us, "p99": p.p99_us, "p999": p.p999_us})
}

fn percentiles_from(v: &Value) -> Percentiles {
    Percentiles {
        p50_us: v["p50"].as_f64().unwrap_or(f64::NAN),
        p99_us: v["p99"].as_f64().unwrap_or(f64::NAN),
        p999_us: v["p999"].as_f64().unwrap_or(f64::NAN),
    }
}

fn run_json(run: &LatencyRun) -> Value {
    json!({
        "latency": percentiles_json(&Percentiles::of(&run.latency)),
        "lag": percentiles_json(&run.lag.as_ref().map(Percentiles::of).unwrap_or_default()),
        "ok": run.ok,
        "errors": run.errors,
    })
}

/// A histogram's recorded values as `[[ns, count], …]`: the bench merges a
/// helper's sequential blocks into one round's histogram, which percentiles
/// cannot be.
fn recorded_json(h: &Histogram<u64>) -> Value {
    h.iter_recorded()
        .map(|v| json!([v.value_iterated_to(), v.count_at_value()]))
        .collect()
}

fn histogram_from(v: &Value) -> Histogram<u64> {
    let mut h = load::histogram();
    for pair in v.as_array().into_iter().flatten() {
        if let (Some(ns), Some(count)) = (pair[0].as_u64(), pair[1].as_u64()) {
            h.saturating_record_n(ns, count);
        }
    }
    h
}

fn millis(v: &Value) -> Duration {
    Duration::from_millis(v["ms"].as_u64().unwrap_or(0))
}

/// The helper's side: says it is ready, then runs each command read from
/// standard input against `target` on `runtime` until the input closes.
/// `flush` exports what telemetry buffered (called for the `flush` command,
/// which answers with the requests that succeeded since start).
pub fn serve_commands(
    runtime: &tokio::runtime::Runtime,
    target: &Arc<dyn Target>,
    flush: impl Fn(),
) -> Result<(), BoxError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{READY}")?;
    out.flush()?;
    let mut requests = 0u64;
    for line in std::io::stdin().lock().lines() {
        let command: Value = serde_json::from_str(&line?)?;
        let answer = match command["cmd"].as_str() {
            Some("sequential") => {
                let count = command["count"].as_u64().unwrap_or(0) as usize;
                let run = runtime.block_on(load::sequential(target, count));
                requests += run.ok;
                let mut answer = run_json(&run);
                answer["recorded"] = recorded_json(&run.latency);
                answer
            }
            Some("open") => {
                let rate = command["rate"].as_f64().unwrap_or(0.0);
                let run = load::open_loop(runtime.handle(), target, rate, millis(&command));
                requests += run.ok;
                run_json(&run)
            }
            Some("closed") => {
                let concurrency = command["concurrency"].as_u64().unwrap_or(1) as usize;
                let s = runtime.block_on(load::closed_loop(target, concurrency, millis(&command)));
                requests += s.ok;
                json!({"throughput": s.throughput, "ok": s.ok, "errors": s.errors})
            }
            Some("flush") => {
                flush();
                json!({"requests": requests})
            }
            _ => return Err(format!("unknown command: {command}").into()),
        };
        writeln!(out, "{answer}")?;
        out.flush()?;
    }
    Ok(())
}

/// The bench's side: a helper process running load on command. Closing its
/// standard input (on drop) ends it.
#[derive(Debug)]
pub struct RemoteLoad {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl RemoteLoad {
    /// Spawns `command` (a helper that calls [`serve_commands`]) and waits
    /// until it has sent its first request.
    pub fn spawn(mut command: Command) -> Result<Self, BoxError> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().ok_or("no helper stdout")?);
        let mut remote = RemoteLoad {
            child,
            stdin,
            stdout,
        };
        let line = remote.read_line()?;
        if line.trim() != READY {
            return Err(format!("the load helper did not start: {line}").into());
        }
        Ok(remote)
    }

    /// The helper's process id (its CPU and memory are the client's).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn read_line(&mut self) -> Result<String, BoxError> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let status = self.child.wait()?;
            return Err(format!("the load helper exited ({status})").into());
        }
        Ok(line)
    }

    fn ask(&mut self, command: Value) -> Result<Value, BoxError> {
        let stdin = self.stdin.as_mut().ok_or("the load helper was closed")?;
        writeln!(stdin, "{command}")?;
        stdin.flush()?;
        Ok(serde_json::from_str(&self.read_line()?)?)
    }

    /// [`load::sequential`] in the helper, its latencies as recorded there.
    pub fn sequential(&mut self, count: usize) -> Result<LatencyRun, BoxError> {
        let v = self.ask(json!({"cmd": "sequential", "count": count}))?;
        let latency = histogram_from(&v["recorded"]);
        Ok(LatencyRun {
            ok: latency.len(),
            latency,
            lag: None,
            errors: v["errors"].as_u64().unwrap_or(0),
        })
    }

    /// [`load::open_loop`] in the helper.
    pub fn open_loop(&mut self, rate: f64, duration: Duration) -> Result<OpenLoop, BoxError> {
        let v =
            self.ask(json!({"cmd": "open", "rate": rate, "ms": duration.as_millis() as u64}))?;
        Ok(OpenLoop {
            rate,
            latency: percentiles_from(&v["latency"]),
            lag: percentiles_from(&v["lag"]),
            errors: v["errors"].as_u64().unwrap_or(0),
        })
    }

    /// [`load::closed_loop`] in the helper.
    pub fn closed_loop(
        &mut self,
        concurrency: usize,
        duration: Duration,
    ) -> Result<Saturation, BoxError> {
        let v = self.ask(json!({
            "cmd": "closed",
            "concurrency": concurrency,
            "ms": duration.as_millis() as u64,
        }))?;
        Ok(Saturation {
            throughput: v["throughput"].as_f64().unwrap_or(0.0),
            ok: v["ok"].as_u64().unwrap_or(0),
            errors: v["errors"].as_u64().unwrap_or(0),
        })
    }

    /// Has the helper export what its telemetry buffered; returns the
    /// requests it completed since it started.
    pub fn flush(&mut self) -> Result<u64, BoxError> {
        let v = self.ask(json!({"cmd": "flush"}))?;
        Ok(v["requests"].as_u64().unwrap_or(0))
    }
}

impl Drop for RemoteLoad {
    /// Closes the helper's input so it exits by itself (a profiler running
    /// it then writes its output), and kills it if it has not within a few
    /// seconds.
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
