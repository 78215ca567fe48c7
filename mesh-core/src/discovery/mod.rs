//! Service discovery: resolvers publish snapshots of a service's endpoints; the
//! balancer consumes them.
//!
//! A resolver never touches connections, and a transient failure never removes an
//! endpoint: when a source fails or returns garbage, the last good snapshot stays.

use std::net::SocketAddr;
use std::sync::Arc;

/// One endpoint of a logical service, as discovery reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Relative share of traffic (default 1; 0 is never picked while others exist).
    pub weight: u32,
    /// Locality of the endpoint, for zone-aware routing.
    pub zone: Option<Arc<str>>,
    /// The SPIFFE ID this endpoint must present, when discovery knows it.
    pub identity: Option<Arc<str>>,
}

impl Endpoint {
    /// An endpoint with weight 1 and no zone or identity.
    pub fn new(addr: SocketAddr) -> Self {
        Endpoint {
            addr,
            weight: 1,
            zone: None,
            identity: None,
        }
    }

    /// The same endpoint with another weight.
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }
}

/// The complete endpoint set of one service at one moment, sorted by address with
/// no address twice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    endpoints: Vec<Endpoint>,
}

impl Snapshot {
    /// Builds a snapshot; endpoints are sorted by address and later duplicates of an
    /// address are dropped.
    pub fn new(mut endpoints: Vec<Endpoint>) -> Self {
        endpoints.sort_by_key(|e| e.addr);
        endpoints.dedup_by_key(|e| e.addr);
        Snapshot { endpoints }
    }

    /// The endpoints, sorted by address.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// True when the service has no endpoints.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }
}

// --- placeholder until the discovery branch lands ---
use std::path::PathBuf;
use std::time::Duration;

/// `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// Host name or IP literal.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl std::str::FromStr for HostPort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || "expected host:port, e.g. 10.0.0.5:8080".to_string();
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port = port.parse().map_err(|_| bad())?;
        if host.is_empty() {
            return Err(bad());
        }
        Ok(HostPort {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
        })
    }
}

/// Where a service's endpoints come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoverySource {
    /// Fixed list.
    Static(Vec<HostPort>),
    /// DNS A/AAAA.
    Dns(HostPort),
    /// DNS SRV.
    Srv(String),
    /// JSON file.
    File(PathBuf),
}

/// Resolver settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// Name servers; empty = system.
    pub servers: Vec<std::net::SocketAddr>,
    /// Min TTL.
    pub min_ttl: Duration,
    /// Max TTL.
    pub max_ttl: Duration,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            servers: Vec::new(),
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(300),
        }
    }
}
