//! The access log: one JSON object per inbound request, one line each.
//!
//! Fields: `ts` (Unix seconds), `method` and `route` (bounded, as in metrics),
//! `path` (the raw path: a log may carry it, a metric label may not), `status`
//! (absent when the service failed without a response), `duration_ms`, `peer`
//! (the socket address, when axum's `ConnectInfo` is available),
//! `peer_identity` (the caller's SPIFFE ID, behind the mesh's mTLS listener),
//! `trace_id` (to find the request's trace).
//!
//! Outbound calls (when [`ClientTelemetryLayer::access_log`](super::ClientTelemetryLayer::access_log)
//! is set) get one line per logical call with `kind: "outbound"`: `service`
//! (the logical service), `method`, `path`, `status` (absent when the call
//! failed; `error` then names the failure), `duration_ms`, `attempts` (tries,
//! retries and hedges sent to endpoints), `endpoint` (the `ip:port` that
//! answered), `trace_id`.

use std::fmt;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Where access log lines go.
#[derive(Clone)]
pub struct AccessLogSink {
    write: Arc<dyn Fn(&str) + Send + Sync>,
}

impl fmt::Debug for AccessLogSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessLogSink")
    }
}

impl AccessLogSink {
    /// Standard output, one line per request (`MESH_ACCESS_LOG=json`).
    pub fn stdout() -> Self {
        AccessLogSink::new(|line| {
            // Written with the newline in one call, so lines from concurrent
            // requests never interleave.
            let _ = std::io::stdout().lock().write_all(line.as_bytes());
        })
    }

    /// Any function taking each line (newline included): a file, a channel, a test.
    pub fn new(write: impl Fn(&str) + Send + Sync + 'static) -> Self {
        AccessLogSink {
            write: Arc::new(write),
        }
    }

    pub(crate) fn write(&self, line: &AccessLogLine<'_>) {
        self.write_json(line.to_json());
    }

    pub(crate) fn write_outbound(&self, line: &OutboundLogLine<'_>) {
        self.write_json(line.to_json());
    }

    fn write_json(&self, json: serde_json::Value) {
        let mut text = json.to_string();
        text.push('\n');
        (self.write)(&text);
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One outbound call's line.
pub(crate) struct OutboundLogLine<'a> {
    pub(crate) service: &'a str,
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) status: Option<u16>,
    pub(crate) error: Option<&'a str>,
    pub(crate) duration: Duration,
    pub(crate) attempts: u32,
    pub(crate) endpoint: Option<SocketAddr>,
    pub(crate) trace_id: Option<&'a str>,
}

impl OutboundLogLine<'_> {
    fn to_json(&self) -> serde_json::Value {
        let mut line = serde_json::json!({
            "ts": unix_now(),
            "kind": "outbound",
            "service": self.service,
            "method": self.method,
            "path": self.path,
            "duration_ms": self.duration.as_secs_f64() * 1e3,
            "attempts": self.attempts,
        });
        let obj = line.as_object_mut().expect("an object");
        if let Some(status) = self.status {
            obj.insert("status".into(), status.into());
        }
        if let Some(error) = self.error {
            obj.insert("error".into(), error.into());
        }
        if let Some(endpoint) = self.endpoint {
            obj.insert("endpoint".into(), endpoint.to_string().into());
        }
        if let Some(trace_id) = self.trace_id {
            obj.insert("trace_id".into(), trace_id.into());
        }
        line
    }
}

/// One request's line.
pub(crate) struct AccessLogLine<'a> {
    pub(crate) method: &'a str,
    pub(crate) route: &'a str,
    pub(crate) path: &'a str,
    pub(crate) status: Option<u16>,
    pub(crate) duration: Duration,
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) peer_identity: Option<&'a str>,
    pub(crate) trace_id: Option<&'a str>,
}

impl AccessLogLine<'_> {
    fn to_json(&self) -> serde_json::Value {
        let ts = unix_now();
        let mut line = serde_json::json!({
            "ts": ts,
            "kind": "access",
            "method": self.method,
            "route": self.route,
            "path": self.path,
            "duration_ms": self.duration.as_secs_f64() * 1e3,
        });
        let obj = line.as_object_mut().expect("an object");
        if let Some(status) = self.status {
            obj.insert("status".into(), status.into());
        }
        if let Some(peer) = self.peer {
            obj.insert("peer".into(), peer.to_string().into());
        }
        if let Some(identity) = self.peer_identity {
            obj.insert("peer_identity".into(), identity.into());
        }
        if let Some(trace_id) = self.trace_id {
            obj.insert("trace_id".into(), trace_id.into());
        }
        line
    }
}
