//! A real Prometheus (Debian `prometheus`) scraping targets on loopback, queried
//! through its HTTP API; and `promtool`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const INSTALL_HINT: &str =
    "is not installed: run scripts/test.sh, which installs the Debian `prometheus` package";

/// The path of a Prometheus tool, or a panic saying how to install it.
pub fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    panic!("{name} {INSTALL_HINT}");
}

/// A running Prometheus; killed and its data removed on drop.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

/// A loopback address of its own for each start, so parallel runs (and other
/// suites) never race for the port: Prometheus cannot take an inherited socket.
fn fresh_loopback(attempt: u32) -> Ipv4Addr {
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
        ^ attempt.wrapping_mul(2_654_435_761);
    Ipv4Addr::new(127, 77, (seed >> 8) as u8, (seed as u8).max(2))
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` every second under the job `mesh`.
    pub async fn start(targets: &[SocketAddr]) -> Self {
        let binary = tool("prometheus");
        let dir = std::env::temp_dir().join(format!(
            "mesh-prometheus-{}-{}",
            std::process::id(),
            targets.first().map_or(0, |t| t.port())
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let list = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: mesh\n    static_configs:\n      - targets: [{list}]\n"
            ),
        )
        .expect("write prometheus.yml");
        for attempt in 0..5 {
            let addr = SocketAddr::from((fresh_loopback(attempt), 9090));
            let mut child = Command::new(&binary)
                .arg(format!(
                    "--config.file={}",
                    dir.join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdout(Stdio::null())
                .stderr(Stdio::from(
                    std::fs::File::create(dir.join("prometheus.log")).expect("log file"),
                ))
                .spawn()
                .expect("spawn prometheus");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while tokio::time::Instant::now() < deadline {
                if child.try_wait().expect("poll prometheus").is_some() {
                    break; // the address was taken, most likely: try another
                }
                if let Ok((200, _)) = http_get(addr, "/-/ready").await {
                    return Prometheus { child, addr, dir };
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
        panic!("prometheus did not become ready; its log:\n{log}");
    }

    /// Runs an instant query; returns `data.result`.
    pub async fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let (status, body) = http_get(self.addr, &path).await.expect("query prometheus");
        assert_eq!(status, 200, "query {promql} failed: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON answer");
        json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Queries until the result is not empty, or `timeout` passes.
    pub async fn query_until_found(
        &self,
        promql: &str,
        timeout: Duration,
    ) -> Vec<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let result = self.query(promql).await;
            if !result.is_empty() || tokio::time::Instant::now() >= deadline {
                return result;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// A plain HTTP/1.0 GET (no keep-alive, no chunking): enough for Prometheus' API
/// and our own `/metrics`.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}
