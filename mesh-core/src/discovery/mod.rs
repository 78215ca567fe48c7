//! Service discovery: resolvers publish snapshots of a service's endpoints; the
//! balancer consumes them.
//!
//! A resolver never touches connections, and a transient failure never removes an
//! endpoint: when a source fails or returns garbage, the last good snapshot stays.
//!
//! Four sources ([`DiscoverySource`]): a static list, DNS A/AAAA, DNS SRV, and a watched
//! JSON file. [`Discovery::spawn`] starts one; the balancer reads
//! [`Discovery::current`] and waits on [`Discovery::subscribe`] for changes.
//!
//! ```no_run
//! # async fn run() -> Result<(), mesh_core::discovery::DiscoveryError> {
//! use mesh_core::discovery::{Discovery, DiscoverySource, DnsSettings};
//! let source = DiscoverySource::Dns("orders.internal:8080".parse().unwrap());
//! let orders = Discovery::spawn("orders", &source, &DnsSettings::default())?;
//! orders.initialized().await;
//! println!("{} endpoints", orders.current().len());
//! # Ok(()) }
//! ```
//!
//! Every published snapshot counts `mesh.discovery.updates`; every failed attempt counts
//! `mesh.discovery.errors` with a fixed `mesh.reason` word (`nxdomain`, `no_records`,
//! `timeout`, `unreachable`, `server_error`, `resolve`, `target_unresolved`, `empty`,
//! `unreadable`, `invalid`). A failing streak is logged once: a warning when it starts,
//! an info line when the source recovers.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

mod dns;
mod error;
mod file;
mod publish;
mod source;
mod static_list;

pub use error::DiscoveryError;
pub use source::{DiscoverySource, DnsSettings, HostPort, ParseHostPortError};

use error::Kind;
use publish::Publisher;

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
    /// Failover class, lower is preferred (SRV priority; 0 for other sources). Kept so
    /// a locality/failover feature can order classes; today SRV discovery publishes only
    /// the lowest class it can resolve.
    pub priority: u16,
}

impl Endpoint {
    /// An endpoint with weight 1 and no zone or identity.
    pub fn new(addr: SocketAddr) -> Self {
        Endpoint {
            addr,
            weight: 1,
            zone: None,
            identity: None,
            priority: 0,
        }
    }

    /// The same endpoint with another weight.
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// The same endpoint with another failover priority (lower is preferred).
    pub fn with_priority(mut self, priority: u16) -> Self {
        self.priority = priority;
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

/// A running discovery for one service: cheap to clone, and the resolver task behind it
/// (if the source has one) lives while any clone does; it is aborted on the last drop.
#[derive(Debug, Clone)]
pub struct Discovery {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    // Held here as well as by the task, so subscribers never see a closed channel,
    // not even for a fixed discovery that has no task.
    snapshots: watch::Sender<Arc<Snapshot>>,
    initialized: watch::Sender<bool>,
    task: Option<tokio::task::AbortHandle>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl Discovery {
    /// Starts the source for `service`.
    ///
    /// Fails now for what a user must fix at start-up: an empty static list, a static
    /// hostname that does not resolve (resolved once here, blocking briefly), an
    /// endpoints file that is missing or invalid, an invalid DNS name, an unusable
    /// resolver configuration. DNS and file sources need a tokio runtime; DNS answers
    /// arrive later ([`initialized`](Self::initialized) tells when the first attempt is
    /// done).
    pub fn spawn(
        service: &str,
        source: &DiscoverySource,
        dns_settings: &DnsSettings,
    ) -> Result<Discovery, DiscoveryError> {
        let err = |kind| DiscoveryError::new(service, source, kind);
        let (snapshots, _) = watch::channel(Arc::new(Snapshot::default()));
        let (initialized, _) = watch::channel(false);
        let mut publisher = Publisher::new(
            Arc::from(service),
            source.kind(),
            snapshots.clone(),
            initialized.clone(),
        );
        let task = match source {
            DiscoverySource::Static(list) => {
                publisher.good(static_list::resolve(list).map_err(err)?);
                None
            }
            DiscoverySource::Dns(host_port) => {
                let runtime =
                    tokio::runtime::Handle::try_current().map_err(|_| err(Kind::NoRuntime))?;
                let task = dns::start(
                    dns::Target::Host(host_port.clone()),
                    dns_settings,
                    publisher,
                )
                .map_err(err)?;
                Some(runtime.spawn(task).abort_handle())
            }
            DiscoverySource::Srv(name) => {
                let runtime =
                    tokio::runtime::Handle::try_current().map_err(|_| err(Kind::NoRuntime))?;
                let task = dns::start(dns::Target::Srv(name.clone()), dns_settings, publisher)
                    .map_err(err)?;
                Some(runtime.spawn(task).abort_handle())
            }
            DiscoverySource::File(path) => {
                let runtime =
                    tokio::runtime::Handle::try_current().map_err(|_| err(Kind::NoRuntime))?;
                let task = file::start(path.clone(), publisher).map_err(err)?;
                Some(runtime.spawn(task).abort_handle())
            }
        };
        Ok(Discovery {
            inner: Arc::new(Inner {
                snapshots,
                initialized,
                task,
            }),
        })
    }

    /// A discovery that never changes, for tests and services configured in code.
    pub fn fixed(snapshot: Snapshot) -> Discovery {
        let (snapshots, _) = watch::channel(Arc::new(snapshot));
        let (initialized, _) = watch::channel(true);
        Discovery {
            inner: Arc::new(Inner {
                snapshots,
                initialized,
                task: None,
            }),
        }
    }

    /// The endpoint set in use now (the last good one; empty before the first answer).
    pub fn current(&self) -> Arc<Snapshot> {
        self.inner.snapshots.borrow().clone()
    }

    /// A receiver that wakes on each published change; the snapshot current at the time
    /// of the call counts as already seen.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.inner.snapshots.subscribe()
    }

    /// Resolves once the first resolution attempt has finished, whether it succeeded or
    /// failed (immediately for static and fixed discoveries).
    pub async fn initialized(&self) {
        let mut done = self.inner.initialized.subscribe();
        // The sender lives in `inner`, so this cannot see a closed channel.
        let _ = done.wait_for(|done| *done).await;
    }
}

#[cfg(test)]
mod tests;
