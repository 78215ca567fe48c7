//! What a caller (request extensions), and the layers below the retry layer (the
//! call's attempt log), use to take part in retries and hedging.

use std::net::SocketAddr;

use parking_lot::Mutex;

/// Per-request control: `Retryable(true)` lets the retry layer retry this request
/// even though its method is not in the service's retry methods (a POST the caller
/// knows to be idempotent, say); `Retryable(false)` forbids retries (connect
/// failures, where nothing was sent, are still retried). Without it, a gRPC call
/// (`content-type: application/grpc`) counts as marked `Retryable(true)`: gRPC
/// retries by status code, not by method. The body must still fit the replay
/// buffer to be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retryable(pub bool);

/// Per-request control: `Hedgeable(true)` hedges this request when the service has
/// a hedge delay, whatever its method; `Hedgeable(false)` never hedges it. Without
/// it, requests whose method is in the retry methods are hedged when a delay is
/// set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hedgeable(pub bool);

/// The endpoints the attempts of one call went to, in order. Shared by every
/// attempt: it lives with the call's [`ReplayBody`](crate::replay::ReplayBody)
/// (see [`ReplayBody::attempt_log`](crate::replay::ReplayBody::attempt_log)),
/// which each attempt's request carries. Whatever sends an attempt (the mesh
/// client's endpoint dispatch) records the endpoint it picks, so a hedge started
/// while the first attempt is still in flight knows which endpoint to avoid.
#[derive(Debug, Default)]
pub struct AttemptLog {
    picked: Mutex<Picked>,
}

/// Endpoints in the order attempts went to them. Most requests make one or two
/// attempts, so those are kept inline: recording them allocates nothing.
#[derive(Debug, Default)]
struct Picked {
    first: [Option<SocketAddr>; 2],
    more: Vec<SocketAddr>,
}

impl Picked {
    fn iter(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.first
            .iter()
            .flatten()
            .copied()
            .chain(self.more.iter().copied())
    }
}

impl AttemptLog {
    /// Records that an attempt went to `addr`.
    pub fn record(&self, addr: SocketAddr) {
        let mut picked = self.picked.lock();
        if picked.iter().any(|seen| seen == addr) {
            return;
        }
        match picked.first.iter_mut().find(|slot| slot.is_none()) {
            Some(slot) => *slot = Some(addr),
            None => picked.more.push(addr),
        }
    }

    /// Endpoints attempts went to so far.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.picked.lock().iter().collect()
    }
}
