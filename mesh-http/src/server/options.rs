//! Edge limits of the inbound server.

use std::time::Duration;

/// Limits and timeouts of the inbound server. The defaults suit a service
/// behind a mesh; every one can be changed with the setter of the same name.
#[derive(Debug, Clone)]
pub struct InboundOptions {
    pub(crate) handshake_timeout: Duration,
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_header_bytes: usize,
    pub(crate) max_connections: usize,
    pub(crate) h2_max_concurrent_streams: u32,
    pub(crate) h2_max_pending_accept_reset_streams: usize,
    pub(crate) h2_max_local_error_reset_streams: usize,
    pub(crate) grace_period: Duration,
    pub(crate) shutdown_delay: Duration,
}

impl Default for InboundOptions {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_connections: 10_000,
            h2_max_concurrent_streams: 200,
            h2_max_pending_accept_reset_streams: 20,
            h2_max_local_error_reset_streams: 1024,
            grace_period: Duration::from_secs(5),
            shutdown_delay: Duration::ZERO,
        }
    }
}

impl InboundOptions {
    /// Longest a TLS handshake may take before the connection is closed
    /// (default 10 s). Handshakes run off the accept loop, so a slow or idle
    /// peer only ever holds its own connection.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Longest an HTTP/1 request may take to send its headers (default 10 s),
    /// against slowloris-style clients.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// Largest request head accepted, in bytes (default 64 KiB; HTTP/1 read
    /// buffer and HTTP/2 header list). At least 8 KiB.
    pub fn max_header_bytes(mut self, bytes: usize) -> Self {
        self.max_header_bytes = bytes.max(8 * 1024);
        self
    }

    /// Most connections open at once, handshaking ones included (default
    /// 10 000). At the cap the server stops accepting and the kernel's backlog
    /// holds new connections.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// Most concurrent HTTP/2 streams per connection (default 200).
    pub fn h2_max_concurrent_streams(mut self, max: u32) -> Self {
        self.h2_max_concurrent_streams = max;
        self
    }

    /// Most HTTP/2 streams a client may open and reset before the server
    /// accepts them (default 20; the "rapid reset" flood, CVE-2023-44487).
    pub fn h2_max_pending_accept_reset_streams(mut self, max: usize) -> Self {
        self.h2_max_pending_accept_reset_streams = max;
        self
    }

    /// Most streams the server may reset for a client's protocol errors before
    /// closing the connection (default 1024; CVE-2024-27316-style floods).
    pub fn h2_max_local_error_reset_streams(mut self, max: usize) -> Self {
        self.h2_max_local_error_reset_streams = max;
        self
    }

    /// How long in-flight requests may run after shutdown begins before their
    /// connections are closed (default 5 s, as Istio and ztunnel).
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.grace_period = grace;
        self
    }

    /// How long the server keeps accepting after shutdown begins and readiness
    /// has turned not-ready, before it stops accepting and drains (default 0).
    /// Behind Kubernetes, a few seconds lets endpoints and peers' balancers drop
    /// this instance before its listener closes.
    pub fn shutdown_delay(mut self, delay: Duration) -> Self {
        self.shutdown_delay = delay;
        self
    }
}
