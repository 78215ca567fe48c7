//! Google's gRPC (Python grpcio) as a real peer: the greeter server and client in
//! `tests/python/`, which `scripts/test.sh` installs the packages for.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::pki::PemFiles;

/// Fails the test, naming `scripts/test.sh`, when Python's grpcio is missing.
pub fn require_grpcio() {
    let found = std::process::Command::new("python3")
        .args(["-c", "import grpc, grpc_tools, grpc_health.v1"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "Python grpcio, grpcio-tools and grpcio-health-checking are needed by this test: \
         run scripts/test.sh (it installs them), or `python3 -m pip install grpcio \
         grpcio-health-checking grpcio-tools`"
    );
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

/// A running Python grpcio greeter server; killed when dropped.
#[derive(Debug)]
pub struct PythonGreeter {
    /// Where it listens.
    pub addr: SocketAddr,
    _child: Child,
}

impl PythonGreeter {
    /// Starts the server, plaintext, or mTLS requiring a client certificate from
    /// `tls`'s bundle.
    pub async fn start(tls: Option<&PemFiles>) -> Self {
        require_grpcio();
        let mut command = Command::new("python3");
        command.arg(script("greeter_server.py"));
        if let Some(files) = tls {
            command
                .arg("--tls")
                .arg(&files.cert)
                .arg(&files.key)
                .arg(&files.bundle);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start python3 greeter_server.py");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .await
            .expect("read the server's port");
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("greeter_server.py printed {line:?}: {e}"));
        let port = v["port"].as_u64().expect("a port") as u16;
        PythonGreeter {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _child: child,
        }
    }
}

/// Runs the Python greeter client against `addr` over mTLS with `client`'s SVID,
/// checking the server's name `server_name`; returns the JSON it prints.
pub async fn run_python_client(
    addr: SocketAddr,
    client: &PemFiles,
    server_name: &str,
) -> serde_json::Value {
    require_grpcio();
    let output = Command::new("python3")
        .arg(script("greeter_client.py"))
        .arg(addr.to_string())
        .arg(&client.cert)
        .arg(&client.key)
        .arg(&client.bundle)
        .arg(server_name)
        .output()
        .await
        .expect("run python3 greeter_client.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "greeter_client.py failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("greeter_client.py printed {stdout:?}: {e}"))
}

/// `tests/python/greeter_caller.py`: a grpcio client over mTLS that starts the
/// calls a test asks for and reports each as it ends; killed when dropped.
#[derive(Debug)]
pub struct PythonCaller {
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    _child: Child,
}

impl PythonCaller {
    /// Connects to `addr` with `client`'s SVID, checking the server's name
    /// `server_name`.
    pub fn start(addr: SocketAddr, client: &PemFiles, server_name: &str) -> Self {
        require_grpcio();
        let mut child = Command::new("python3")
            .arg(script("greeter_caller.py"))
            .arg(addr.to_string())
            .arg(&client.cert)
            .arg(&client.key)
            .arg(&client.bundle)
            .arg(server_name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start python3 greeter_caller.py");
        PythonCaller {
            stdin: child.stdin.take(),
            lines: BufReader::new(child.stdout.take().expect("piped stdout")).lines(),
            _child: child,
        }
    }

    /// Starts a `SayHello` (`kind` "unary") or `SayHelloStream` ("stream") call
    /// with `name`, reported later under `id`.
    pub async fn start_call(&mut self, kind: &str, id: &str, name: &str) {
        let stdin = self.stdin.as_mut().expect("calls still open");
        stdin
            .write_all(format!("{kind} {id} {name}\n").as_bytes())
            .await
            .expect("write a command");
        stdin.flush().await.expect("flush");
    }

    /// The next call to end: `{"id", "code", "details"|"messages", "trailers"}`.
    pub async fn next_result(&mut self) -> serde_json::Value {
        let line = self
            .lines
            .next_line()
            .await
            .expect("read greeter_caller.py")
            .expect("greeter_caller.py ended early (its stderr is above)");
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("greeter_caller.py printed {line:?}: {e}"))
    }

    /// Makes one call and waits for its outcome.
    pub async fn call(&mut self, kind: &str, id: &str, name: &str) -> serde_json::Value {
        self.start_call(kind, id, name).await;
        let result = self.next_result().await;
        assert_eq!(result["id"], id, "another call ended first: {result}");
        result
    }
}

/// `tests/python/health_server.py`: a grpcio greeter with `grpc.health.v1` whose
/// status for one service the test sets; killed when dropped.
#[derive(Debug)]
pub struct PythonHealthServer {
    /// Where it listens (plaintext).
    pub addr: SocketAddr,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    _child: Child,
}

impl PythonHealthServer {
    /// Starts it, reporting `service` (and the whole server) as `SERVING`.
    pub async fn start(service: &str) -> Self {
        require_grpcio();
        let mut child = Command::new("python3")
            .arg(script("health_server.py"))
            .arg(service)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start python3 health_server.py");
        let stdin = child.stdin.take().expect("piped stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let first = lines.next_line().await.expect("read").expect("a port line");
        let v: serde_json::Value = serde_json::from_str(&first).expect("JSON");
        let port = v["port"].as_u64().expect("a port") as u16;
        PythonHealthServer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            stdin,
            lines,
            _child: child,
        }
    }

    /// Sends one command (`serving`, `not_serving`, `count`) and returns the
    /// server's answer.
    pub async fn command(&mut self, command: &str) -> serde_json::Value {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .expect("write a command");
        let line = self
            .lines
            .next_line()
            .await
            .expect("read")
            .expect("an answer");
        serde_json::from_str(&line).expect("JSON")
    }
}
