//! The HTTP/1 header-read timeout (slowloris protection) with one timer per
//! connection instead of one per request.
//!
//! hyper's own `header_read_timeout` asks its timer for a fresh boxed `Sleep`
//! each time it starts waiting for a request head, registers it in tokio's
//! timer wheel when the head is not already there, and drops it (removing it
//! from the wheel) once the head has arrived: an allocation and two timer-wheel
//! updates per request. Here hyper still says when it starts waiting — it asks
//! [`HeaderTimer`] for a sleep — but the sleep it gets is zero-sized (boxing it
//! allocates nothing) and never fires itself: the deadline goes into
//! [`HeaderDeadline`], which the connection task's one [`Watchdog`] timer
//! enforces. The request hook disarms it when a head has arrived. The watchdog
//! sleeps until the deadline it last saw; when it wakes to find a later one
//! (requests kept arriving), it sleeps again until that one: one timer-wheel
//! update per timeout period of a busy connection, not per request.
//!
//! Same rule as hyper's: from the moment the connection starts waiting for a
//! head (a new connection, or the previous response written) the whole head
//! must arrive within the timeout, however slowly its bytes trickle in; an idle
//! keep-alive connection is closed after the timeout too.

// hyper's `Timer` trait speaks `std::time::Instant`; the values are read from
// and converted to tokio's clock, so paused-time tests still drive them.
#![allow(clippy::disallowed_types)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// When the head hyper is waiting for must have arrived, if it is waiting.
#[derive(Debug)]
pub(super) struct HeaderDeadline {
    /// The connection's start: deadlines are stored as nanoseconds after it.
    base: Instant,
    /// Nanoseconds after `base`, plus one; 0 while no head is awaited (a
    /// request is being served). Only the connection's own task touches it:
    /// an atomic because hyper's timer must be `Sync`, not for contention.
    armed: AtomicU64,
    /// Whether any head has arrived on the connection.
    served: AtomicBool,
}

impl HeaderDeadline {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(HeaderDeadline {
            base: Instant::now(),
            armed: AtomicU64::new(0),
            served: AtomicBool::new(false),
        })
    }

    fn arm(&self, deadline: Instant) {
        let nanos = deadline.saturating_duration_since(self.base).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX - 1);
        self.armed.store(nanos + 1, Ordering::Relaxed);
    }

    /// A request head has arrived: nothing to enforce until hyper waits again.
    pub(super) fn disarm(&self) {
        self.armed.store(0, Ordering::Relaxed);
        self.served.store(true, Ordering::Relaxed);
    }

    fn deadline(&self) -> Option<Instant> {
        match self.armed.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(self.base + Duration::from_nanos(nanos - 1)),
        }
    }
}

/// The timer hyper's HTTP/1 connection gets: its sleeps only record the
/// deadline (see the module docs).
#[derive(Debug, Clone)]
pub(super) struct HeaderTimer(pub(super) Arc<HeaderDeadline>);

impl hyper::rt::Timer for HeaderTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.0.arm(Instant::now() + duration);
        Box::pin(Recorded)
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.0.arm(Instant::from_std(deadline));
        Box::pin(Recorded)
    }

    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }
}

/// A sleep that never fires: the [`Watchdog`] enforces its deadline. Zero-sized,
/// so the box hyper keeps it in is no allocation.
struct Recorded;

impl Future for Recorded {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

impl hyper::rt::Sleep for Recorded {}

/// Enforces a connection's [`HeaderDeadline`] with one timer.
#[derive(Debug)]
pub(super) struct Watchdog {
    deadline: Arc<HeaderDeadline>,
    timeout: Duration,
}

impl Watchdog {
    pub(super) fn new(deadline: Arc<HeaderDeadline>, timeout: Duration) -> Self {
        Watchdog { deadline, timeout }
    }

    /// The header-read timeout.
    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether a request head has arrived on the connection yet.
    pub(super) fn served_any(&self) -> bool {
        self.deadline.served.load(Ordering::Relaxed)
    }

    /// The timer to start with: a new connection is waiting for its first head.
    pub(super) fn first_check(&self) -> Instant {
        self.deadline.base + self.timeout
    }

    /// Polls the timer; `Ready` once a head is overdue. When the timer fires
    /// early (the deadline moved on, or a request is being served), it is set
    /// again for the next moment the deadline could pass.
    pub(super) fn poll_expired(
        &self,
        mut sleep: Pin<&mut Sleep>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        loop {
            std::task::ready!(sleep.as_mut().poll(cx));
            let now = Instant::now();
            let next = match self.deadline.deadline() {
                Some(deadline) if deadline <= now => return Poll::Ready(()),
                Some(deadline) => deadline,
                // Serving a request: the next wait for a head starts no sooner
                // than now, so it cannot end before `now + timeout`.
                None => now + self.timeout,
            };
            sleep.as_mut().reset(next);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use hyper::rt::Timer;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_head_awaited_past_the_timeout_expires_at_its_deadline() {
        let deadline = HeaderDeadline::new();
        let watchdog = Watchdog::new(deadline.clone(), Duration::from_secs(10));
        let timer = HeaderTimer(deadline.clone());
        let sleep = tokio::time::sleep_until(watchdog.first_check());
        tokio::pin!(sleep);
        let start = Instant::now();

        // Requests keep arriving for 25 s: each re-arms, none expires.
        for _ in 0..5 {
            let _sleep = timer.sleep_until((Instant::now() + Duration::from_secs(10)).into_std());
            tokio::time::advance(Duration::from_secs(4)).await;
            deadline.disarm();
            tokio::time::advance(Duration::from_secs(1)).await;
            assert!(
                poll_fn(|cx| Poll::Ready(watchdog.poll_expired(sleep.as_mut(), cx)))
                    .await
                    .is_pending()
            );
        }
        // Then a head that never completes.
        let armed_at = Instant::now();
        let _sleep = timer.sleep_until((armed_at + Duration::from_secs(10)).into_std());
        poll_fn(|cx| watchdog.poll_expired(sleep.as_mut(), cx)).await;
        assert_eq!(Instant::now() - armed_at, Duration::from_secs(10));
        assert_eq!(Instant::now() - start, Duration::from_secs(35));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_served_longer_than_the_timeout_does_not_expire() {
        let deadline = HeaderDeadline::new();
        let watchdog = Watchdog::new(deadline.clone(), Duration::from_secs(10));
        let sleep = tokio::time::sleep_until(watchdog.first_check());
        tokio::pin!(sleep);
        deadline.disarm();
        let served = tokio::time::sleep(Duration::from_secs(60));
        tokio::select! {
            () = poll_fn(|cx| watchdog.poll_expired(sleep.as_mut(), cx)) => {
                panic!("expired while a request was being served")
            }
            () = served => {}
        }
    }
}
