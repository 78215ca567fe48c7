//! The sidecar path a mesh of proxies puts on every call: the application
//! speaks plain HTTP to nginx (outbound sidecar), nginx opens mTLS with
//! keep-alive to haproxy (inbound sidecar, client certificate required), and
//! haproxy forwards plain HTTP to the server.
//!
//! The bench writes both configurations into its temporary folder, picks
//! loopback ports, starts both in the foreground and stops them when the
//! [`Sidecars`] value is dropped, which also happens when the bench panics.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use crate::pki::{PkiFiles, SERVER_NAME};
use crate::procstat;

/// nginx and haproxy, running; both are killed on drop.
#[derive(Debug)]
pub struct Sidecars {
    nginx: Child,
    haproxy: Child,
    /// Where the application sends its plain HTTP requests (nginx).
    pub listen: SocketAddr,
}

/// Upstream keep-alive connections nginx holds per worker: more than the
/// bench's concurrency, so every request can reuse a connection.
const NGINX_KEEPALIVE: usize = 64;

/// A free loopback port (bound then released; nothing else on the machine is
/// expected to grab it in the next few milliseconds).
pub fn free_port() -> io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

fn find(binary: &str) -> io::Result<PathBuf> {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let path = Path::new(dir).join(binary);
        if path.exists() {
            return Ok(path);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "`{binary}` is not installed; run scripts/test.sh (it installs nginx and haproxy) \
             or `apt-get install -y nginx haproxy`"
        ),
    ))
}

impl Sidecars {
    /// Starts haproxy in front of `backend` (plain HTTP) and nginx in front of
    /// haproxy, with configurations and logs in `work`.
    pub fn start(pki: &PkiFiles, work: &Path, backend: SocketAddr) -> io::Result<Self> {
        let nginx_bin = find("nginx")?;
        let haproxy_bin = find("haproxy")?;
        let inbound = free_port()?;
        let listen = free_port()?;

        let haproxy_cfg = work.join("haproxy.cfg");
        std::fs::write(&haproxy_cfg, haproxy_config(pki, inbound, backend))?;
        let haproxy = Command::new(haproxy_bin)
            .arg("-db")
            .arg("-f")
            .arg(&haproxy_cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.join("haproxy.log"))?)
            .spawn()?;

        let nginx_dir = work.join("nginx");
        std::fs::create_dir_all(nginx_dir.join("logs"))?;
        let nginx_cfg = nginx_dir.join("nginx.conf");
        std::fs::write(&nginx_cfg, nginx_config(pki, &nginx_dir, listen, inbound))?;
        let nginx = Command::new(nginx_bin)
            .arg("-p")
            .arg(&nginx_dir)
            .arg("-e")
            .arg(nginx_dir.join("logs/error.log"))
            .arg("-c")
            .arg(&nginx_cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.join("nginx.stderr"))?)
            .spawn()?;

        let mut sidecars = Sidecars {
            nginx,
            haproxy,
            listen,
        };
        sidecars.wait_listening(inbound, "haproxy", &work.join("haproxy.log"))?;
        sidecars.wait_listening(listen, "nginx", &nginx_dir.join("logs/error.log"))?;
        Ok(sidecars)
    }

    fn wait_listening(&mut self, addr: SocketAddr, name: &str, log: &Path) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(addr).is_ok() {
                return Ok(());
            }
            let exited = match name {
                "nginx" => self.nginx.try_wait()?,
                _ => self.haproxy.try_wait()?,
            };
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                return Err(io::Error::other(format!(
                    "{name} did not start listening on {addr}: {log}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Process id of nginx's master (its worker is a child).
    pub fn nginx_pid(&self) -> u32 {
        self.nginx.id()
    }

    /// Process id of haproxy.
    pub fn haproxy_pid(&self) -> u32 {
        self.haproxy.id()
    }
}

impl Drop for Sidecars {
    fn drop(&mut self) {
        // nginx's master stops its worker on SIGTERM; a SIGKILLed master would
        // orphan the worker (which then spins). So: TERM, wait briefly, then
        // KILL whatever is left, worker included.
        let workers = procstat::children(self.nginx.id());
        signal(self.nginx.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && matches!(self.nginx.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(10));
        }
        for worker in workers {
            if Path::new(&format!("/proc/{worker}")).exists() {
                signal(worker, "KILL");
            }
        }
        for child in [&mut self.nginx, &mut self.haproxy] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends `SIGNAL` to `pid` with procps' `kill` (std only sends SIGKILL).
fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn haproxy_config(pki: &PkiFiles, inbound: SocketAddr, backend: SocketAddr) -> String {
    format!(
        "# Written by mesh-benches: the inbound sidecar.
global
    nbthread 1
    maxconn 4096
    ssl-default-bind-options ssl-min-ver TLSv1.3

defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend inbound
    bind {inbound} ssl crt {crt} ca-file {ca} verify required alpn http/1.1
    default_backend app

backend app
    http-reuse always
    server app {backend}
",
        crt = pki.server_combined().display(),
        ca = pki.ca().display(),
    )
}

fn nginx_config(pki: &PkiFiles, dir: &Path, listen: SocketAddr, inbound: SocketAddr) -> String {
    let dir = dir.display();
    format!(
        "# Written by mesh-benches: the outbound sidecar.
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    upstream inbound_sidecar {{
        server {inbound};
        keepalive {NGINX_KEEPALIVE};
        keepalive_requests 1000000;
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass https://inbound_sidecar;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_ssl_certificate {client_cert};
            proxy_ssl_certificate_key {client_key};
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_verify on;
            proxy_ssl_name {SERVER_NAME};
            proxy_ssl_protocols TLSv1.3;
            proxy_ssl_session_reuse off;
        }}
    }}
}}
",
        client_cert = pki.client_cert().display(),
        client_key = pki.client_key().display(),
        ca = pki.ca().display(),
    )
}
