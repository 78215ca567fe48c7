//! A real dnsmasq on its own loopback address, for DNS discovery tests.
//!
//! Each server listens on an address of its own (`127.53.x.y`), so tests in parallel
//! (and teammates' runs on the same machine) do not race for one port; the port is
//! picked at random and retried if dnsmasq cannot bind it. A/AAAA records come from an
//! `--addn-hosts` file that [`Dnsmasq::set_hosts`] rewrites and re-reads with SIGHUP;
//! SRV records come only from the command line (dnsmasq does not re-read those on
//! SIGHUP), so they are fixed at start. Every query is logged, so tests can count them
//! instead of timing them. The process is killed on drop, also when a test panics.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// What to install when dnsmasq is missing; tests fail with this rather than pass.
const MISSING: &str =
    "dnsmasq is not installed: `scripts/test.sh` installs it (apt-get install -y dnsmasq)";

/// One SRV record for [`DnsmasqBuilder::srv`].
#[derive(Debug, Clone)]
struct Srv {
    name: String,
    target: String,
    port: u16,
    priority: u16,
    weight: u16,
}

/// Settings of a dnsmasq to start.
#[derive(Debug, Clone)]
pub struct DnsmasqBuilder {
    ttl: u32,
    hosts: Vec<(String, String)>,
    srv: Vec<Srv>,
}

impl DnsmasqBuilder {
    /// TTL of every local answer in seconds (dnsmasq's default, 0, disables caching).
    pub fn ttl(mut self, seconds: u32) -> Self {
        self.ttl = seconds;
        self
    }

    /// An A or AAAA record: `name` resolves to `ip`.
    pub fn host(mut self, name: &str, ip: &str) -> Self {
        self.hosts.push((name.to_owned(), ip.to_owned()));
        self
    }

    /// An SRV record; fixed for the life of the process.
    pub fn srv(mut self, name: &str, target: &str, port: u16, priority: u16, weight: u16) -> Self {
        self.srv.push(Srv {
            name: name.to_owned(),
            target: target.to_owned(),
            port,
            priority,
            weight,
        });
        self
    }

    /// Starts dnsmasq and waits until it answers. Panics (failing the test) when dnsmasq
    /// is missing or does not come up.
    pub fn start(self) -> Dnsmasq {
        let binary = find_binary().unwrap_or_else(|| panic!("{MISSING}"));
        let dir = unique_dir();
        let hosts_file = dir.join("hosts");
        write_hosts(&hosts_file, &self.hosts);
        let mut server = Dnsmasq {
            binary,
            ip: unique_ip(),
            port: 0,
            settings: self,
            dir,
            hosts_file,
            child: None,
            log: Arc::new(Log::default()),
        };
        server.start_process();
        server
    }
}

/// A running dnsmasq. Killed on drop.
#[derive(Debug)]
pub struct Dnsmasq {
    binary: PathBuf,
    ip: Ipv4Addr,
    port: u16,
    settings: DnsmasqBuilder,
    dir: PathBuf,
    hosts_file: PathBuf,
    child: Option<Child>,
    log: Arc<Log>,
}

/// dnsmasq's log lines, shared with the thread that reads its stderr.
#[derive(Debug, Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    grew: Notify,
}

impl Dnsmasq {
    /// A builder with TTL 0 and no records.
    pub fn builder() -> DnsmasqBuilder {
        DnsmasqBuilder {
            ttl: 0,
            hosts: Vec::new(),
            srv: Vec::new(),
        }
    }

    /// Where it listens (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.port))
    }

    /// Replaces all A/AAAA records and makes a running dnsmasq re-read them (SIGHUP); a
    /// stopped one reads them when restarted.
    pub fn set_hosts(&mut self, hosts: &[(&str, &str)]) {
        let hosts: Vec<_> = hosts
            .iter()
            .map(|(n, ip)| ((*n).to_owned(), (*ip).to_owned()))
            .collect();
        write_hosts(&self.hosts_file, &hosts);
        self.settings.hosts = hosts;
        let Some(child) = self.child.as_ref() else {
            return;
        };
        let status = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "SIGHUP to dnsmasq failed");
    }

    /// Kills the process; the address stops answering.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same address and port with the current records.
    pub fn restart(&mut self) {
        self.stop();
        self.start_process();
    }

    /// Queries logged so far of type `qtype` (`A`, `AAAA`, `SRV`) for `name`.
    pub fn queries(&self, qtype: &str, name: &str) -> usize {
        let needle = format!("query[{qtype}] {name} from");
        self.log
            .lines
            .lock()
            .iter()
            .filter(|l| l.contains(&needle))
            .count()
    }

    /// Waits until `queries(qtype, name)` reaches `at_least`, or panics after `timeout`.
    pub async fn wait_for_queries(
        &self,
        qtype: &str,
        name: &str,
        at_least: usize,
        timeout: Duration,
    ) {
        let waited = tokio::time::timeout(timeout, async {
            loop {
                let grew = self.log.grew.notified();
                tokio::pin!(grew);
                grew.as_mut().enable();
                if self.queries(qtype, name) >= at_least {
                    return;
                }
                grew.await;
            }
        })
        .await;
        if waited.is_err() {
            panic!(
                "dnsmasq saw {} {qtype} queries for {name} in {timeout:?}, expected at least {at_least}; log:\n{}",
                self.queries(qtype, name),
                self.log.lines.lock().join("\n")
            );
        }
    }

    /// Everything dnsmasq logged, for failure messages.
    pub fn log(&self) -> String {
        self.log.lines.lock().join("\n")
    }

    fn args(&self, port: u16) -> Vec<String> {
        let mut args = vec![
            "--no-daemon".to_owned(),
            "--keep-in-foreground".to_owned(),
            // Never the machine's /etc/dnsmasq.conf, resolv.conf or /etc/hosts.
            "--conf-file=/dev/null".to_owned(),
            "--no-resolv".to_owned(),
            "--no-hosts".to_owned(),
            "--pid-file=".to_owned(),
            "--bind-interfaces".to_owned(),
            format!("--listen-address={}", self.ip),
            format!("--port={port}"),
            format!("--local-ttl={}", self.settings.ttl),
            format!("--addn-hosts={}", self.hosts_file.display()),
            "--log-queries".to_owned(),
            "--log-facility=-".to_owned(),
        ];
        if is_root() {
            // The hosts file lives in a root-owned temp dir; stay root to re-read it.
            args.push("--user=root".to_owned());
        }
        for s in &self.settings.srv {
            args.push(format!(
                "--srv-host={},{},{},{},{}",
                s.name, s.target, s.port, s.priority, s.weight
            ));
        }
        args
    }

    /// Spawns dnsmasq (on a new random port until one binds when `self.port` is 0) and
    /// waits until it answers a query.
    fn start_process(&mut self) {
        let fixed_port = self.port != 0;
        for attempt in 0..20 {
            let port = if fixed_port { self.port } else { random_port() };
            let mut child = Command::new(&self.binary)
                .args(self.args(port))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start {}: {e}; {MISSING}", self.binary.display())
                });
            let stderr = child.stderr.take().expect("piped stderr");
            let log = self.log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.lines.lock().push(line);
                    log.grew.notify_waiters();
                }
            });
            if wait_until_answering(&mut child, SocketAddr::from((self.ip, port))) {
                self.port = port;
                self.child = Some(child);
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            if fixed_port && attempt >= 5 {
                break;
            }
        }
        panic!(
            "dnsmasq did not come up on {}; log:\n{}",
            self.ip,
            self.log()
        );
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn find_binary() -> Option<PathBuf> {
    let fixed = Path::new("/usr/sbin/dnsmasq");
    if fixed.exists() {
        return Some(fixed.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("dnsmasq"))
            .find(|p| p.exists())
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn write_hosts(path: &Path, hosts: &[(String, String)]) {
    let content: String = hosts
        .iter()
        .map(|(name, ip)| format!("{ip} {name}\n"))
        .collect();
    std::fs::write(path, content).expect("cannot write the dnsmasq hosts file");
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// `127.53.a.b`, unique within this process and unlikely to clash with another one.
fn unique_ip() -> Ipv4Addr {
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let pid = std::process::id();
    Ipv4Addr::new(127, 53, (pid % 250) as u8 + 1, (n % 250) as u8 + 1)
}

fn unique_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "mesh-dnsmasq-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("cannot create a temp dir");
    dir
}

fn random_port() -> u16 {
    // Above the usual ephemeral range's start is fine: the address is ours alone.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    20000 + ((nanos ^ std::process::id().wrapping_mul(2654435761)) % 30000) as u16
}

/// Sends a DNS query until any answer comes back; false if dnsmasq exited or never
/// answered within 10 s.
fn wait_until_answering(child: &mut Child, server: SocketAddr) -> bool {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("cannot bind a UDP socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("set_read_timeout");
    // Header: id 0x4d53, RD set, one question; then probe.invalid. IN A.
    let mut query = vec![0x4d, 0x53, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["probe", "invalid"] {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut buf = [0u8; 512];
    for _ in 0..100 {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let _ = socket.send_to(&query, server);
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            if from == server && n >= 2 && buf[..2] == query[..2] {
                return true;
            }
        }
    }
    false
}
