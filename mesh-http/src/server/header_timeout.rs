//! The HTTP/1 header-read timeout (slowloris protection) with one timer per
//! connection instead of one per request, and without hyper's hook.
//!
//! hyper's own `header_read_timeout` asks its timer for a fresh boxed `Sleep`
//! each time it starts waiting for a request head, registers it in tokio's
//! timer wheel when the head is not already there, and drops it (removing it
//! from the wheel) once the head has arrived: an allocation and two timer-wheel
//! updates per request. Merely being configured, it also makes hyper's
//! dispatcher go round its loop once more after every response (so that the
//! next read starts that sleep): another read attempt on the socket, through
//! TLS, and another flush, about a thousand instructions a request.
//!
//! So hyper is given no header-read timeout here. The connection itself says
//! when a head is awaited: from its start, and again once a response has been
//! written out (the response body, wrapped by the connection, is dropped when
//! hyper has written its end, which is when hyper goes back to reading heads);
//! the deadline goes into [`HeaderDeadline`], which the connection task's one
//! [`Watchdog`] timer enforces. The request hook disarms it when a head has
//! arrived. The watchdog sleeps until the deadline it last saw; when it wakes
//! to find a later one (requests kept arriving), it sleeps again until that
//! one: one timer-wheel update per timeout period of a busy connection, not per
//! request.
//!
//! Same rule as hyper's: from the moment the connection starts waiting for a
//! head (a new connection, or the previous response written) the whole head
//! must arrive within the timeout, however slowly its bytes trickle in; an idle
//! keep-alive connection is closed after the timeout too.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// When the head the connection is waiting for must have arrived, if it is
/// waiting.
#[derive(Debug)]
pub(super) struct HeaderDeadline {
    /// The connection's start: deadlines are stored as nanoseconds after it.
    base: Instant,
    /// The header-read timeout.
    timeout: Duration,
    /// Nanoseconds after `base`, plus one; 0 while no head is awaited (a
    /// request is being served). Only the connection's own task touches it:
    /// an atomic because the response body that re-arms it must be `Send`
    /// and `Sync`, not for contention.
    armed: AtomicU64,
    /// Whether any head has arrived on the connection.
    served: AtomicBool,
}

impl HeaderDeadline {
    /// A new connection's: waiting for its first head from now.
    pub(super) fn new(timeout: Duration) -> Arc<Self> {
        let deadline = HeaderDeadline {
            base: Instant::now(),
            timeout,
            armed: AtomicU64::new(0),
            served: AtomicBool::new(false),
        };
        deadline.arm(deadline.base + timeout);
        Arc::new(deadline)
    }

    fn arm(&self, deadline: Instant) {
        let nanos = deadline.saturating_duration_since(self.base).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX - 1);
        self.armed.store(nanos + 1, Ordering::Relaxed);
    }

    /// A response has been written out: the next head is awaited from now.
    pub(super) fn await_next_head(&self) {
        self.arm(Instant::now() + self.timeout);
    }

    /// A request head has arrived: nothing to enforce until a head is awaited
    /// again.
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

/// Enforces a connection's [`HeaderDeadline`] with one timer.
#[derive(Debug)]
pub(super) struct Watchdog {
    deadline: Arc<HeaderDeadline>,
}

impl Watchdog {
    pub(super) fn new(deadline: Arc<HeaderDeadline>) -> Self {
        Watchdog { deadline }
    }

    /// The header-read timeout.
    pub(super) fn timeout(&self) -> Duration {
        self.deadline.timeout
    }

    /// Whether a request head has arrived on the connection yet.
    pub(super) fn served_any(&self) -> bool {
        self.deadline.served.load(Ordering::Relaxed)
    }

    /// The timer to start with: a new connection is waiting for its first head.
    pub(super) fn first_check(&self) -> Instant {
        self.deadline.base + self.deadline.timeout
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
                None => now + self.deadline.timeout,
            };
            sleep.as_mut().reset(next);
        }
    }
}

pin_project_lite::pin_project! {
    /// The body of a response on an HTTP/1 connection with a [`Watchdog`]:
    /// the service's own, and, when dropped, the start of the wait for the
    /// next head. hyper drops it once it has written the body's end (at once
    /// for a response without a body), when it goes back to reading heads;
    /// or when the connection ends, when nothing is awaited any more.
    pub(super) struct RearmingBody<B> {
        #[pin]
        inner: B,
        next_head: Option<NextHead>,
    }
}

impl<B> RearmingBody<B> {
    /// `inner`, starting the wait for the next head on `deadline` (if any)
    /// when dropped.
    pub(super) fn new(inner: B, deadline: Option<Arc<HeaderDeadline>>) -> Self {
        RearmingBody {
            inner,
            next_head: deadline.map(NextHead),
        }
    }
}

impl<B: http_body::Body> http_body::Body for RearmingBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Starts the wait for the next head when dropped.
struct NextHead(Arc<HeaderDeadline>);

impl Drop for NextHead {
    fn drop(&mut self) {
        self.0.await_next_head();
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_head_awaited_past_the_timeout_expires_at_its_deadline() {
        let deadline = HeaderDeadline::new(Duration::from_secs(10));
        let watchdog = Watchdog::new(deadline.clone());
        let sleep = tokio::time::sleep_until(watchdog.first_check());
        tokio::pin!(sleep);
        let start = Instant::now();

        // Requests keep arriving for 25 s: each head within 4 s of the wait's
        // start, each answered in 1 s; none expires.
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(4)).await;
            deadline.disarm();
            tokio::time::advance(Duration::from_secs(1)).await;
            deadline.await_next_head();
            assert!(
                poll_fn(|cx| Poll::Ready(watchdog.poll_expired(sleep.as_mut(), cx)))
                    .await
                    .is_pending()
            );
        }
        // Then a head that never completes.
        let awaited_from = Instant::now();
        poll_fn(|cx| watchdog.poll_expired(sleep.as_mut(), cx)).await;
        assert_eq!(Instant::now() - awaited_from, Duration::from_secs(10));
        assert_eq!(Instant::now() - start, Duration::from_secs(35));
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_head_is_awaited_from_when_the_response_body_is_dropped() {
        let deadline = HeaderDeadline::new(Duration::from_secs(10));
        deadline.disarm();
        let body = RearmingBody::new(
            http_body_util::Empty::<bytes::Bytes>::new(),
            Some(deadline.clone()),
        );
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(
            deadline.deadline(),
            None,
            "nothing awaited while the response is out"
        );
        drop(body);
        assert_eq!(
            deadline.deadline(),
            Some(Instant::now() + Duration::from_secs(10)),
            "the next head is due a timeout after the response"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_served_longer_than_the_timeout_does_not_expire() {
        let deadline = HeaderDeadline::new(Duration::from_secs(10));
        let watchdog = Watchdog::new(deadline.clone());
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
