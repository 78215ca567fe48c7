//! Load balancing over discovery snapshots.
//!
//! Why our own balancer rather than `tower::balance`: tower's drops an endpoint for
//! good when its `poll_ready` fails (a transient connect error must only take it out
//! of rotation for a while) and needs a `Buffer` task in front to be shared. This one
//! picks with `&self` from an immutable table that each discovery snapshot replaces
//! atomically, so any number of tasks share one `Arc<Balancer<E>>` with no hop and no
//! lock on the pick path.
//!
//! - [`BalancerKind::P2cPeakEwma`] (default): two random choices, the lower
//!   round-trip estimate × (in flight + 1) wins (linkerd2-proxy, Finagle).
//! - [`BalancerKind::LeastRequest`]: two random choices, fewer requests in flight
//!   wins (Envoy, gRFC A48).
//! - [`BalancerKind::RoundRobin`]: endpoints take turns.
//!
//! All of them honour weights (a weight-0 endpoint is picked only when nothing else
//! is eligible), skip unreachable, excluded and ejected endpoints, and ignore
//! ejections in panic mode (fewer than `panic_threshold` of the endpoints ready, as
//! in Envoy). A pick costs the same with 10 or 10,000 endpoints: candidates come
//! from an O(1) weighted sampler built at update time, and only when bounded random
//! probes find nothing eligible does a pick scan the table.
//!
//! ```
//! use mesh_core::balance::{Balancer, BalancerSettings};
//! use mesh_core::discovery::{Endpoint, Snapshot};
//!
//! // The per-endpoint value would be the client's connection pool.
//! let balancer = Balancer::new("users", BalancerSettings::default(), |endpoint, _handle| endpoint.addr);
//! balancer.update(&Snapshot::new(vec![Endpoint::new("10.0.0.1:8080".parse().unwrap())]));
//! let picked = balancer.try_pick(&[]).unwrap();
//! assert_eq!(picked.addr(), *picked.endpoint());
//! ```

mod candidates;
mod endpoint;
mod error;
mod ewma;
mod p2c;
mod picked;
mod rng;
mod round_robin;
mod shared;
mod table;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::discovery::{Endpoint, Snapshot};
use crate::metric_names::{label, NO_ENDPOINT};

pub use endpoint::EndpointHandle;
pub use error::{ParseBalancerKindError, PickError};
pub use picked::Picked;

use candidates::Filter;
use endpoint::{LazyNow, Node};
use shared::Shared;
use table::Table;

/// The picking algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BalancerKind {
    /// Power of two choices on PeakEWMA round-trip cost (`p2c-ewma`, the default).
    #[default]
    P2cPeakEwma,
    /// Power of two choices on requests in flight (`least-request`).
    LeastRequest,
    /// Weighted rotation (`round-robin`).
    RoundRobin,
}

impl FromStr for BalancerKind {
    type Err = ParseBalancerKindError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "p2c-ewma" => Ok(BalancerKind::P2cPeakEwma),
            "least-request" => Ok(BalancerKind::LeastRequest),
            "round-robin" => Ok(BalancerKind::RoundRobin),
            other => Err(ParseBalancerKindError {
                input: other.to_owned(),
            }),
        }
    }
}

impl fmt::Display for BalancerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BalancerKind::P2cPeakEwma => "p2c-ewma",
            BalancerKind::LeastRequest => "least-request",
            BalancerKind::RoundRobin => "round-robin",
        })
    }
}

/// How a balancer picks and queues.
#[derive(Debug, Clone, PartialEq)]
pub struct BalancerSettings {
    /// The picking algorithm.
    pub kind: BalancerKind,
    /// Round-trip estimate of an endpoint before its first sample (30 ms, linkerd2-proxy).
    pub default_rtt: Duration,
    /// Time constant of the PeakEWMA decay (10 s, linkerd2-proxy and Finagle).
    pub decay: Duration,
    /// Below this fraction of ready endpoints, ejections are ignored (0.5, Envoy).
    pub panic_threshold: f64,
    /// How long [`Balancer::pick`] waits for an endpoint to become ready (1 s).
    pub queue_timeout: Duration,
    /// How many callers may wait in [`Balancer::pick`] at once (1000).
    pub max_pending: usize,
}

impl Default for BalancerSettings {
    fn default() -> Self {
        BalancerSettings {
            kind: BalancerKind::P2cPeakEwma,
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
            panic_threshold: 0.5,
            queue_timeout: Duration::from_secs(1),
            max_pending: 1000,
        }
    }
}

type MakeEndpoint<E> = dyn Fn(&Endpoint, EndpointHandle) -> E + Send + Sync;

/// Picks endpoints of one logical service. Shared as `Arc<Balancer<E>>`; `E` is the
/// per-endpoint value (the client's connection pool), built on the endpoint's first
/// pick.
pub struct Balancer<E> {
    shared: Arc<Shared>,
    settings: BalancerSettings,
    table: ArcSwap<Table<E>>,
    make_endpoint: Box<MakeEndpoint<E>>,
    /// Serialises updates; picks never take it.
    updating: Mutex<()>,
    /// Round-robin position.
    rotation: AtomicU64,
    /// Dropped with the balancer, which ends `follow` tasks.
    closed: watch::Sender<()>,
    /// Marked changed after every table update, for followers of the endpoint set
    /// (health checks); dropped with the balancer.
    updated: watch::Sender<()>,
}

/// Endpoint counts of a balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalancerStats {
    /// Endpoints discovery reported.
    pub known: usize,
    /// Endpoints reachable and not ejected.
    pub ready: usize,
    /// Endpoints ejected by outlier detection.
    pub ejected: usize,
    /// Endpoints held out of rotation by failed health checks.
    pub unhealthy: usize,
}

impl<E: Send + Sync + 'static> Balancer<E> {
    /// A balancer with no endpoints. `make_endpoint` builds the per-endpoint value
    /// lazily, on the endpoint's first pick, so a known but never-picked endpoint
    /// costs only its node (state and handle). It runs on the picking thread (once
    /// per endpoint, even when picks race), so it should only set things up, not
    /// connect.
    pub fn new(
        service: impl Into<Arc<str>>,
        settings: BalancerSettings,
        make_endpoint: impl Fn(&Endpoint, EndpointHandle) -> E + Send + Sync + 'static,
    ) -> Arc<Self> {
        let shared = Arc::new(Shared::new(
            service.into(),
            settings.decay,
            settings.default_rtt,
        ));
        Arc::new(Balancer {
            shared,
            settings,
            table: ArcSwap::from_pointee(Table::empty()),
            make_endpoint: Box::new(make_endpoint),
            updating: Mutex::new(()),
            rotation: AtomicU64::new(0),
            closed: watch::channel(()).0,
            updated: watch::channel(()).0,
        })
    }

    /// Applies a discovery snapshot: endpoints that stay keep their state (EWMA, in
    /// flight, connections) and take the new weight; new ones are added unconnected;
    /// removed ones leave the table (requests in flight on them finish normally and
    /// their handle reports [`EndpointHandle::is_removed`]). An endpoint whose
    /// identity changed is replaced.
    pub fn update(&self, snapshot: &Snapshot) {
        let _updating = self.updating.lock();
        let (next, removed) = self.table.load().next(snapshot, &self.shared);
        let known = next.len();
        self.table.store(Arc::new(next));
        self.shared.set_known(known);
        for node in &removed {
            node.mark_removed();
        }
        self.shared.publish_gauges();
        self.shared.became_ready.notify_waiters();
        self.updated.send_replace(());
    }

    /// The handles of the endpoints in the current table, for components that act
    /// on every endpoint rather than on picked ones (health checks).
    pub fn endpoints(&self) -> Vec<EndpointHandle> {
        self.table.load().handles().cloned().collect()
    }

    /// A receiver marked changed after each [`update`](Self::update) (read
    /// [`endpoints`](Self::endpoints) again then); its `changed()` fails once the
    /// balancer is dropped.
    pub fn subscribe_updates(&self) -> watch::Receiver<()> {
        self.updated.subscribe()
    }

    /// From now on, endpoints discovery adds start out of rotation until a health
    /// check passes (as in Envoy), so a new endpoint takes traffic only once it
    /// answers. While every endpoint waits for its first check, the panic threshold
    /// lets all of them take traffic. Endpoints already known keep their state.
    pub fn require_health_checks(&self) {
        self.shared
            .new_endpoints_unhealthy
            .store(true, Ordering::Release);
    }

    /// Applies the snapshot discovery holds now, then spawns a task applying every
    /// one it publishes later. The task holds only a weak reference and ends when the
    /// balancer or the discovery sender is gone. Must be called inside a tokio
    /// runtime.
    pub fn follow(
        self: &Arc<Self>,
        mut snapshots: watch::Receiver<Arc<Snapshot>>,
    ) -> tokio::task::JoinHandle<()> {
        // The current snapshot is applied here, not by the task: a request made
        // right after start-up (a static list is known at once) then picks its
        // endpoint at once instead of queueing, with a timer, until the task runs.
        let current = Arc::clone(&snapshots.borrow_and_update());
        self.update(&current);
        let balancer: Weak<Self> = Arc::downgrade(self);
        let mut closed = self.closed.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = snapshots.changed() => if changed.is_err() { return },
                    // Only ever errs: the sender never sends, it is dropped.
                    _ = closed.changed() => return,
                }
                let snapshot = Arc::clone(&snapshots.borrow_and_update());
                match balancer.upgrade() {
                    Some(balancer) => balancer.update(&snapshot),
                    None => return,
                }
            }
        })
    }

    /// Picks an endpoint now or fails; never waits. `exclude` lists endpoints already
    /// tried (for retries); it is honoured when any other eligible endpoint exists.
    pub fn try_pick(&self, exclude: &[SocketAddr]) -> Result<Picked<E>, PickError> {
        self.pick_now(exclude)
            .inspect_err(|e| self.count_failure(e))
    }

    /// Like [`try_pick`](Self::try_pick), but when no endpoint is eligible, waits up
    /// to `queue_timeout` for one (woken by [`update`](Self::update),
    /// [`EndpointHandle::set_reachable`] and [`EndpointHandle::restore`]). At most
    /// `max_pending` callers wait at once; beyond that it fails at once.
    pub async fn pick(&self, exclude: &[SocketAddr]) -> Result<Picked<E>, PickError> {
        if let Ok(picked) = self.pick_now(exclude) {
            return Ok(picked);
        }
        // Boxed: the wait's state (a registration and a timer) would otherwise
        // size every caller's future, though most never wait.
        let result = Box::pin(self.wait_for_endpoint(exclude)).await;
        if let Err(e) = &result {
            self.count_failure(e);
        }
        result
    }

    async fn wait_for_endpoint(&self, exclude: &[SocketAddr]) -> Result<Picked<E>, PickError> {
        let _pending = match PendingGuard::enter(&self.shared, self.settings.max_pending) {
            Some(guard) => guard,
            None => {
                return Err(PickError::TooManyPending {
                    service: Arc::clone(&self.shared.service),
                    limit: self.settings.max_pending,
                })
            }
        };
        let deadline = Instant::now() + self.settings.queue_timeout;
        loop {
            // Register before checking, so a wake-up between the check and the wait
            // is not lost.
            let notified = self.shared.became_ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let err = match self.pick_now(exclude) {
                Ok(picked) => return Ok(picked),
                Err(e) => e,
            };
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(err);
            }
        }
    }

    /// The logical service this balancer picks for.
    pub fn service(&self) -> &str {
        &self.shared.service
    }

    /// Endpoints in the current table (one atomic load; for per-request checks
    /// such as outlier detection's ejection cap).
    pub fn known_endpoints(&self) -> usize {
        self.shared.known()
    }

    /// Current endpoint counts. Expired ejections found on the way are cleared
    /// (this walks the table; it is for metrics and diagnostics, not per request).
    pub fn stats(&self) -> BalancerStats {
        let table = self.table.load();
        let mut now = LazyNow::new(&self.shared);
        for node in table.nodes() {
            // Clears expired ejections as a side effect.
            node.state.is_eligible(true, &mut now);
        }
        let known = table.len();
        BalancerStats {
            known,
            ready: self.shared.ready(known),
            ejected: self.shared.ejected(),
            unhealthy: self.shared.unhealthy(),
        }
    }

    fn pick_now(&self, exclude: &[SocketAddr]) -> Result<Picked<E>, PickError> {
        let table = self.table.load();
        if table.is_empty() {
            return Err(PickError::NoEndpoints {
                service: Arc::clone(&self.shared.service),
            });
        }
        let known = table.len();
        // Panic mode: with too few endpoints ready, ejected ones take traffic again
        // rather than overloading the few that are left.
        let ready = self.shared.ready(known);
        let honour_ejections = ready as f64 >= self.settings.panic_threshold * known as f64;
        let mut filter = Filter::new(exclude, honour_ejections, LazyNow::new(&self.shared));
        let chosen = match self.settings.kind {
            BalancerKind::P2cPeakEwma => p2c::choose(&table, &mut filter, p2c::Cost::PeakEwma),
            BalancerKind::LeastRequest => p2c::choose(&table, &mut filter, p2c::Cost::InFlight),
            BalancerKind::RoundRobin => round_robin::choose(&table, &mut filter, &self.rotation),
        };
        let Some(index) = chosen else {
            return Err(PickError::NoneReady {
                service: Arc::clone(&self.shared.service),
                known,
            });
        };
        let node = Arc::clone(table.node(index));
        self.ensure_value(&node);
        Ok(Picked::new(node))
    }

    /// Builds the endpoint's value on its first pick (once, even when racing).
    /// Afterwards a flag in the hot state word says so, so that a pick reads no
    /// other cache line of the node.
    fn ensure_value(&self, node: &Node<E>) {
        if node.state.is_built() {
            return;
        }
        node.value
            .get_or_init(|| (self.make_endpoint)(node.handle.endpoint(), node.handle.clone()));
        node.state.mark_built();
    }

    fn count_failure(&self, error: &PickError) {
        metrics::counter!(
            NO_ENDPOINT.name,
            label::SERVICE => Arc::clone(&self.shared.service),
            label::REASON => error.reason()
        )
        .increment(1);
    }
}

/// Counts one caller waiting in `pick` while alive.
struct PendingGuard<'a> {
    shared: &'a Shared,
}

impl<'a> PendingGuard<'a> {
    fn enter(shared: &'a Shared, limit: usize) -> Option<Self> {
        let entered = shared
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok();
        entered.then_some(PendingGuard { shared })
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<E> fmt::Debug for Balancer<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("service", &self.shared.service)
            .field("kind", &self.settings.kind)
            .field("known", &self.shared.known())
            .finish_non_exhaustive()
    }
}
