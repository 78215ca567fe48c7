//! One endpoint's shared state and the handle other layers hold to it.
//!
//! The connection layer marks an endpoint unreachable or reachable, outlier
//! detection ejects and restores it, the balancer reads it on every pick. All of
//! that goes through one atomic state word, so a pick never locks and transitions
//! (including an ejection expiring) cannot interleave into a wrong count.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::discovery::Endpoint;

use super::ewma::{nanos_f64, PeakEwma};
use super::shared::Shared;

/// Layout of the state word: five flag bits, and above them the ejection deadline
/// in nanoseconds since the balancer's base instant (2^59 ns is 18 years).
pub(crate) mod state {
    /// The connection layer could not connect.
    pub(crate) const UNREACHABLE: u64 = 1;
    /// Outlier detection took it out until the deadline.
    pub(crate) const EJECTED: u64 = 2;
    /// Discovery removed it; it has left the table.
    pub(crate) const REMOVED: u64 = 4;
    /// Active health checks failed it (or it has not passed its first one yet).
    /// A flag of its own rather than an ejection: outlier detection restoring an
    /// endpoint must not put back one that health checks took out, nor the reverse.
    pub(crate) const UNHEALTHY: u64 = 8;
    /// The per-endpoint value has been built (counts towards no gauge).
    pub(crate) const BUILT: u64 = 16;
    /// Mask of the flag bits.
    pub(crate) const FLAGS: u64 = 31;
    /// Shift of the ejection deadline.
    pub(crate) const DEADLINE_SHIFT: u32 = 5;
}

/// The hot state of one endpoint: everything a pick reads of a candidate (state
/// word, in-flight count, EWMA), 32 bytes at the start of the endpoint's [`Node`],
/// so that judging a candidate costs one cache line: with 10,000 endpoints a
/// candidate is rarely cached. What else the endpoint has (its discovery record,
/// the balancer's shared state) lives in the handle's [`Cold`] part.
#[repr(C)]
pub(crate) struct EndpointState {
    word: AtomicU64,
    in_flight: AtomicUsize,
    ewma: PeakEwma,
}

impl EndpointState {
    fn new(word: u64) -> Self {
        EndpointState {
            word: AtomicU64::new(word),
            in_flight: AtomicUsize::new(0),
            ewma: PeakEwma::new(),
        }
    }

    /// Applies `f` to the state word atomically and accounts for the change.
    fn transition(&self, shared: &Shared, mut f: impl FnMut(u64) -> u64) {
        let mut current = self.word.load(Ordering::Acquire);
        loop {
            let next = f(current);
            if next == current {
                return;
            }
            match self.word.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    shared.on_transition(current, next);
                    return;
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Whether a pick may choose this endpoint now. `honour_ejections` is false in
    /// panic mode (then failed health checks are ignored too, as in Envoy). An
    /// ejection found expired is cleared here (lazily: no timer runs per ejected
    /// endpoint).
    pub(crate) fn is_eligible(&self, honour_ejections: bool, now: &mut LazyNow<'_>) -> bool {
        let word = self.word.load(Ordering::Acquire);
        if word & (state::UNREACHABLE | state::REMOVED) != 0 {
            return false;
        }
        if word & state::UNHEALTHY != 0 && honour_ejections {
            return false;
        }
        if word & state::EJECTED == 0 || !honour_ejections {
            return true;
        }
        if word >> state::DEADLINE_SHIFT > now.nanos() {
            return false;
        }
        // Expired. Clear only the word we saw: a concurrent re-ejection changes the
        // word and makes this exchange fail.
        let cleared = word & state::FLAGS & !state::EJECTED;
        if self
            .word
            .compare_exchange(word, cleared, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            now.shared.on_transition(word, cleared);
        }
        true
    }

    /// True once the per-endpoint value has been built (a flag in the state word,
    /// so that a pick need not read the value's own cell on another cache line).
    pub(crate) fn is_built(&self) -> bool {
        self.word.load(Ordering::Acquire) & state::BUILT != 0
    }

    pub(crate) fn mark_built(&self) {
        // No transition accounting: the flag counts towards no gauge.
        self.word.fetch_or(state::BUILT, Ordering::AcqRel);
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub(crate) fn acquire(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// PeakEWMA cost: estimated round trip × (requests in flight + 1), as in
    /// linkerd2-proxy and Finagle, so a fast but busy endpoint and a slow idle one
    /// compare fairly.
    pub(crate) fn ewma_cost(&self, now: &mut LazyNow<'_>) -> f64 {
        let shared = now.shared;
        let rtt = self
            .ewma
            .estimate(now.nanos(), shared.decay_ns, shared.unmeasured_rtt_ns());
        rtt * (self.in_flight() + 1) as f64
    }

    fn record_rtt(&self, shared: &Shared, rtt: Duration) {
        shared.observe_service_rtt(nanos_f64(rtt));
        self.ewma.record(rtt, shared.now_nanos(), shared.decay_ns);
    }
}

/// One endpoint in the balancer: its hot state, its handle and the per-endpoint
/// value (the client's connection pool, built on the first pick), in one
/// allocation. The table and [`Picked`](super::Picked) hold it strongly; handles
/// hold it weakly, because the value itself usually holds a handle (the pool
/// reports reachability through it) and a strong one would make a cycle.
///
/// Aligned to 32 bytes so that the hot state (32 bytes, first) never straddles two
/// cache lines, and shares one with the `Arc` counts that a pick also touches
/// whenever the allocation starts on a 64-byte boundary.
#[repr(C, align(32))]
pub(crate) struct Node<E> {
    pub(crate) state: EndpointState,
    pub(crate) handle: EndpointHandle,
    pub(crate) value: OnceLock<E>,
}

impl<E: Send + Sync + 'static> Node<E> {
    /// A node for a new endpoint; `unhealthy` when health checks must pass before
    /// it takes traffic.
    pub(crate) fn new(endpoint: Endpoint, shared: Arc<Shared>, unhealthy: bool) -> Arc<Self> {
        let word = if unhealthy { state::UNHEALTHY } else { 0 };
        shared.account_new(word);
        let cold = Arc::new(Cold { endpoint, shared });
        Arc::new_cyclic(|node: &Weak<Node<E>>| {
            let hot: Weak<dyn HotState> = node.clone();
            Node {
                state: EndpointState::new(word),
                handle: EndpointHandle { cold, hot },
                value: OnceLock::new(),
            }
        })
    }
}

impl<E> Node<E> {
    pub(crate) fn record_rtt(&self, rtt: Duration) {
        self.state.record_rtt(&self.handle.cold.shared, rtt);
    }

    /// Takes the endpoint out of the balancer's accounting for good.
    pub(crate) fn mark_removed(&self) {
        self.state
            .transition(&self.handle.cold.shared, |w| w | state::REMOVED);
    }
}

/// How a handle reaches the hot state of a node whatever its value type.
trait HotState: Send + Sync {
    fn state(&self) -> &EndpointState;
}

impl<E: Send + Sync> HotState for Node<E> {
    fn state(&self) -> &EndpointState {
        &self.state
    }
}

/// What a handle needs without reaching the node: the endpoint as discovery
/// reported it and the balancer's shared state.
struct Cold {
    endpoint: Endpoint,
    shared: Arc<Shared>,
}

/// The current time, read at most once per pick and only when needed.
#[derive(Debug)]
pub(crate) struct LazyNow<'a> {
    pub(crate) shared: &'a Shared,
    nanos: Option<u64>,
}

impl<'a> LazyNow<'a> {
    pub(crate) fn new(shared: &'a Shared) -> Self {
        LazyNow {
            shared,
            nanos: None,
        }
    }

    pub(crate) fn nanos(&mut self) -> u64 {
        *self.nanos.get_or_insert_with(|| self.shared.now_nanos())
    }
}

/// Cheap clone of one endpoint's shared state, handed to the connection layer and to
/// outlier detection and health checks, so they can take the endpoint out of
/// rotation and put it back without going through the balancer.
///
/// It does not keep the endpoint's state alive: once discovery has removed the
/// endpoint and its last request has finished, the state is gone, the handle
/// reports [`is_removed`](Self::is_removed) and changes through it are ignored.
#[derive(Clone)]
pub struct EndpointHandle {
    cold: Arc<Cold>,
    hot: Weak<dyn HotState>,
}

impl EndpointHandle {
    /// Runs `f` on the endpoint's state if it still exists.
    fn with_state<R>(&self, f: impl FnOnce(&EndpointState, &Shared) -> R) -> Option<R> {
        let node = self.hot.upgrade()?;
        Some(f(node.state(), &self.cold.shared))
    }

    /// The endpoint's address.
    pub fn addr(&self) -> SocketAddr {
        self.cold.endpoint.addr
    }

    /// The endpoint as discovery reported it when it joined (address, zone,
    /// identity). A later weight change updates the balancer's table but not this
    /// value; an identity change replaces the endpoint (and its handle).
    pub fn endpoint(&self) -> &Endpoint {
        &self.cold.endpoint
    }

    /// Called by the connection layer: `false` when connecting failed (picks skip
    /// the endpoint), `true` once it connects again. New endpoints start reachable so
    /// that their first pick opens the connection lazily.
    pub fn set_reachable(&self, reachable: bool) {
        self.with_state(|state, shared| {
            state.transition(shared, |w| {
                if reachable {
                    w & !state::UNREACHABLE
                } else {
                    w | state::UNREACHABLE
                }
            })
        });
    }

    /// Takes the endpoint out of rotation until `until` (outlier detection, health
    /// checks). A later call replaces the deadline. Ignored while the balancer is in
    /// panic mode (too few ready endpoints).
    pub fn eject_until(&self, until: Instant) {
        self.with_state(|state, shared| {
            let deadline = shared.nanos(until).min(u64::MAX >> state::DEADLINE_SHIFT);
            state.transition(shared, |w| {
                (deadline << state::DEADLINE_SHIFT) | (w & state::FLAGS) | state::EJECTED
            })
        });
    }

    /// Ends an ejection early.
    pub fn restore(&self) {
        self.with_state(|state, shared| {
            state.transition(shared, |w| w & state::FLAGS & !state::EJECTED)
        });
    }

    /// Called by active health checks: `false` takes the endpoint out of rotation
    /// until a later `true`. Independent of [`eject_until`](Self::eject_until) and
    /// [`set_reachable`](Self::set_reachable): the endpoint takes traffic only when
    /// every one of them lets it. Like ejections, ignored in panic mode.
    pub fn set_healthy(&self, healthy: bool) {
        self.with_state(|state, shared| {
            state.transition(shared, |w| {
                if healthy {
                    w & !state::UNHEALTHY
                } else {
                    w | state::UNHEALTHY
                }
            })
        });
    }

    /// False while active health checks hold the endpoint out of rotation.
    pub fn is_healthy(&self) -> bool {
        self.with_state(|state, _| state.word.load(Ordering::Acquire) & state::UNHEALTHY == 0)
            .unwrap_or(true)
    }

    /// True when picks may choose the endpoint: known to discovery, reachable,
    /// passing its health checks, and not ejected (or its ejection has expired).
    pub fn is_in_rotation(&self) -> bool {
        self.with_state(|state, shared| {
            let word = state.word.load(Ordering::Acquire);
            if word & (state::UNREACHABLE | state::REMOVED | state::UNHEALTHY) != 0 {
                return false;
            }
            word & state::EJECTED == 0 || word >> state::DEADLINE_SHIFT <= shared.now_nanos()
        })
        .unwrap_or(false)
    }

    /// Requests picked for this endpoint that have not finished yet.
    pub fn in_flight(&self) -> usize {
        self.with_state(|state, _| state.in_flight()).unwrap_or(0)
    }

    /// True once discovery removed the endpoint: reconnect loops should stop.
    /// Requests already in flight on it finish normally.
    pub fn is_removed(&self) -> bool {
        self.with_state(|state, _| state.word.load(Ordering::Acquire) & state::REMOVED != 0)
            .unwrap_or(true)
    }

    /// True while the ejection flag is set (expired or not).
    #[cfg(test)]
    pub(crate) fn is_flagged_ejected(&self) -> bool {
        self.with_state(|state, _| state.word.load(Ordering::Acquire) & state::EJECTED != 0)
            .unwrap_or(false)
    }
}

impl fmt::Debug for EndpointHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointHandle")
            .field("service", &self.cold.shared.service)
            .field("endpoint", &self.cold.endpoint)
            .field("in_rotation", &self.is_in_rotation())
            .field("in_flight", &self.in_flight())
            .field("removed", &self.is_removed())
            .finish()
    }
}
