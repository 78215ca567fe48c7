//! The result of a pick: one endpoint, held in flight until dropped.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::endpoint::{EndpointHandle, Node};

/// A chosen endpoint. It counts as one request in flight on the endpoint until it is
/// dropped, so the client keeps it until the response body ends. It stays valid
/// when discovery removes the endpoint meanwhile.
pub struct Picked<E> {
    node: Arc<Node<E>>,
}

impl<E> Picked<E> {
    /// Takes one in-flight count on `node`, whose value must be initialised.
    pub(crate) fn new(node: Arc<Node<E>>) -> Self {
        debug_assert!(node.value.get().is_some());
        node.state.acquire();
        Picked { node }
    }

    /// The endpoint's address.
    pub fn addr(&self) -> SocketAddr {
        self.node.handle.addr()
    }

    /// The per-endpoint value `make_endpoint` built (the connection pool).
    pub fn endpoint(&self) -> &E {
        // The balancer initialises the value before it hands out a `Picked`.
        self.node
            .value
            .get()
            .expect("a picked endpoint's value is built before the pick returns")
    }

    /// The endpoint's shared state.
    pub fn handle(&self) -> &EndpointHandle {
        &self.node.handle
    }

    /// Feeds an observed round trip (request sent → response headers) into the
    /// endpoint's PeakEWMA estimate.
    pub fn record_rtt(&self, rtt: Duration) {
        self.node.record_rtt(rtt);
    }
}

impl<E> Drop for Picked<E> {
    fn drop(&mut self) {
        self.node.state.release();
    }
}

impl<E> fmt::Debug for Picked<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Picked")
            .field("addr", &self.addr())
            .finish()
    }
}
