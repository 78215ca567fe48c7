//! CPU time and peak resident memory of a process, from `/proc`.
//!
//! Peak RSS (`VmHWM`) is reset before each measured phase by writing `5` to
//! `/proc/<pid>/clear_refs`, so each configuration's peak is its own even
//! though the processes live through the whole run.

use std::fs;
use std::sync::OnceLock;

/// One process to watch.
#[derive(Debug, Clone)]
pub struct Proc {
    /// Its name in the report (`client`, `server`, `nginx`, …).
    pub name: String,
    /// Its process id.
    pub pid: u32,
}

/// Clock ticks per second of `utime`/`stime` in `/proc/<pid>/stat`.
fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

impl Proc {
    /// Watches `pid` under `name`.
    pub fn new(name: impl Into<String>, pid: u32) -> Self {
        Proc {
            name: name.into(),
            pid,
        }
    }

    /// User plus system CPU seconds used so far (0 when the process is gone).
    pub fn cpu_seconds(&self) -> f64 {
        let Ok(stat) = fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return 0.0;
        };
        // Fields after the command name, which is in parentheses and may hold spaces.
        let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            return 0.0;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
        match (field(14), field(15)) {
            (Some(user), Some(system)) => (user + system) / ticks_per_second(),
            _ => 0.0,
        }
    }

    /// Context switches (voluntary and not) of all the process's threads so
    /// far: every time one of them stopped running, mostly to wait. Counted,
    /// so unlike a latency it does not move with the machine's load (0 when
    /// the process is gone).
    pub fn context_switches(&self) -> u64 {
        let Ok(tasks) = fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return 0;
        };
        tasks
            .flatten()
            .filter_map(|task| fs::read_to_string(task.path().join("status")).ok())
            .map(|status| {
                status
                    .lines()
                    .filter(|line| line.contains("ctxt_switches:"))
                    .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .sum::<u64>()
            })
            .sum()
    }

    /// Peak resident set size in KiB since start or the last [`reset_peak`](Self::reset_peak).
    pub fn peak_rss_kib(&self) -> u64 {
        fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|line| line.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Resets the peak RSS to the current RSS. Best effort: without the right
    /// to write `clear_refs` the peak covers the process's whole life.
    pub fn reset_peak(&self) {
        let _ = fs::write(format!("/proc/{}/clear_refs", self.pid), "5");
    }
}

/// Ids of the direct children of `parent` (nginx's and haproxy's workers).
pub fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = stat.rsplit_once(')')?.1.to_string();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// CPU and peak memory of a set of processes over one phase.
#[derive(Debug)]
pub struct Phase {
    procs: Vec<Proc>,
    cpu_at_start: Vec<f64>,
}

/// One process's share of a phase.
#[derive(Debug, Clone)]
pub struct Usage {
    /// Process name.
    pub name: String,
    /// CPU seconds spent in the phase.
    pub cpu_seconds: f64,
    /// Peak RSS during the phase, KiB.
    pub peak_rss_kib: u64,
}

impl Phase {
    /// Starts measuring `procs`: resets their peaks, notes their CPU.
    pub fn start(procs: &[Proc]) -> Self {
        for p in procs {
            p.reset_peak();
        }
        Phase {
            procs: procs.to_vec(),
            cpu_at_start: procs.iter().map(Proc::cpu_seconds).collect(),
        }
    }

    /// Starts measuring CPU only; peaks are left alone.
    pub fn cpu_only(procs: &[Proc]) -> Self {
        Phase {
            procs: procs.to_vec(),
            cpu_at_start: procs.iter().map(Proc::cpu_seconds).collect(),
        }
    }

    /// What each process used since [`start`](Self::start).
    pub fn finish(self) -> Vec<Usage> {
        self.procs
            .iter()
            .zip(self.cpu_at_start)
            .map(|(p, start)| Usage {
                name: p.name.clone(),
                cpu_seconds: (p.cpu_seconds() - start).max(0.0),
                peak_rss_kib: p.peak_rss_kib(),
            })
            .collect()
    }
}
