//! Deadlines: how long a request (and everything done to answer it) may take.
//!
//! - Inbound, [`DeadlineLayer`] reads the caller's remaining time from
//!   `grpc-timeout` or [`TIMEOUT_HEADER`], cancels the handler when it runs out
//!   (answering 504), and makes it the [`Deadline::current`] of the handler's task.
//! - Outbound, [`OutboundDeadlineLayer`] takes the earliest of the service's
//!   timeout (its route's, when the route layer selected one), a per-request
//!   [`RequestTimeout`], a [`Deadline`] request extension and the current task's
//!   deadline; fails the call with [`DeadlineExceeded`] when it passes; and runs
//!   the layers below with it as [`Deadline::current`], for the retry layer (no
//!   retry or hedge starts when it cannot finish in time) and for the code that
//!   sends each attempt, which writes the time left then
//!   ([`Deadline::for_request`]) into the outgoing headers with
//!   [`write_headers`], so the next service knows it too.
//! - [`inherit`] carries the current deadline into a task the handler spawns.
//! - Times are read through [`crate::clock`], so the layers a call passes
//!   synchronously share one clock reading.
//!
//! A chain A → B → C thus never works past A's deadline.

mod layer;
mod watch;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;

use crate::clock;

pub use layer::{
    DeadlineFuture, DeadlineLayer, DeadlineService, OutboundDeadline, OutboundDeadlineFuture,
    OutboundDeadlineLayer,
};

/// The HTTP header carrying the caller's remaining time in whole milliseconds
/// (`x-mesh-timeout-ms: 1500`). A relative time, so the two hosts' clocks need not
/// agree. gRPC requests carry `grpc-timeout` as well.
/// A `HeaderName` constant, so writing it costs no parsing per request.
pub const TIMEOUT_HEADER: HeaderName = HeaderName::from_static("x-mesh-timeout-ms");

/// gRPC's own header for the caller's remaining time (`grpc-timeout: 1500m`).
pub const GRPC_TIMEOUT_HEADER: HeaderName = HeaderName::from_static("grpc-timeout");

thread_local! {
    /// The deadline of the request or call whose work is running on this
    /// thread: set by [`Entered`] around each poll of that work (and around an
    /// outbound call's `call`), as tokio's task-locals are. A `Cell` of our own
    /// rather than a `task_local!`, whose `sync_scope` moves the work's result
    /// (a whole future, for a `call`) through a closure and a `Result`.
    static CURRENT: Cell<Option<Deadline>> = const { Cell::new(None) };
}

/// Makes a deadline the current one on this thread until dropped, then
/// restores the one before (so scopes nest, and a panic unwinds them). Not
/// `Send`: it is made and dropped around synchronous work, never held across
/// an `.await`.
struct Entered {
    previous: Option<Deadline>,
    _not_send: PhantomData<*const ()>,
}

impl Entered {
    fn enter(deadline: Deadline) -> Self {
        Entered {
            previous: CURRENT.replace(Some(deadline)),
            _not_send: PhantomData,
        }
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        CURRENT.set(self.previous);
    }
}

pin_project_lite::pin_project! {
    /// The future [`Deadline::scope`] returns: `future`, polled with the
    /// deadline as the current one.
    struct InScope<F> {
        deadline: Deadline,
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for InScope<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _entered = Entered::enter(*this.deadline);
        this.future.poll(cx)
    }
}

/// The instant by which a request must be answered. As a request extension it
/// tells the mesh's layers the request's deadline; as the task's current deadline
/// it bounds every outbound call made while handling an inbound request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// The deadline `timeout` from now.
    pub fn after(timeout: Duration) -> Self {
        Deadline(clock::now() + timeout)
    }

    /// The deadline of the inbound request this task is handling, or of the
    /// outbound call an [`OutboundDeadlineLayer`] above is bounding, if any.
    pub fn current() -> Option<Deadline> {
        CURRENT.get()
    }

    /// The deadline a request must meet where it is sent: the earlier of its
    /// [`Deadline`] extension (set by a caller) and [`Deadline::current`] (set
    /// by the [`OutboundDeadlineLayer`] bounding the call). Layers below the
    /// outbound deadline layer read it here, not from the extensions alone.
    pub fn for_request(extensions: &http::Extensions) -> Option<Deadline> {
        Deadline::earliest(extensions.get::<Deadline>().copied(), Deadline::current())
    }

    /// Time left (zero once passed), from [`clock::now`].
    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(clock::now())
    }

    /// Whether something taking `duration` from now would end past the deadline.
    pub fn cannot_fit(&self, duration: Duration) -> bool {
        clock::now() + duration >= self.0
    }

    /// The earlier of two optional deadlines.
    pub fn earliest(a: Option<Deadline>, b: Option<Deadline>) -> Option<Deadline> {
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs `future` with `self` as its task's current deadline.
    pub fn scope<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        InScope {
            deadline: self,
            future,
        }
    }
}

/// Per-request control: the caller's own timeout for this request, overriding the
/// service's (`MESH_SERVICE_<NAME>_TIMEOUT`); an inherited deadline still applies
/// when it is earlier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestTimeout(pub Duration);

/// The request ran out of its deadline (its own timeout, or its caller's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadlineExceeded;

impl std::fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline exceeded: the request's timeout, or the deadline it inherited from its caller, ran out")
    }
}

impl std::error::Error for DeadlineExceeded {}

/// Wraps `future` so it runs with the current task's deadline (if any): use it for
/// tasks a handler spawns, `tokio::spawn(mesh_core::deadline::inherit(work))`, so
/// their outbound calls keep the inbound request's deadline.
pub fn inherit<F>(future: F) -> impl Future<Output = F::Output>
where
    F: Future,
{
    let deadline = Deadline::current();
    async move {
        match deadline {
            Some(d) => d.scope(future).await,
            None => future.await,
        }
    }
}

/// The caller's remaining time from `grpc-timeout` or [`TIMEOUT_HEADER`] (the
/// smaller when both are present); unparsable values are ignored.
pub fn timeout_from_headers(headers: &HeaderMap) -> Option<Duration> {
    timeouts(
        headers.get(TIMEOUT_HEADER),
        headers.get(GRPC_TIMEOUT_HEADER),
    )
}

/// The smaller of the two headers' times, ignoring unparsable values.
fn timeouts(mesh: Option<&HeaderValue>, grpc: Option<&HeaderValue>) -> Option<Duration> {
    let mesh = mesh.and_then(parse_millis).map(Duration::from_millis);
    let grpc = grpc
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout);
    match (mesh, grpc) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Header values up to which [`inbound_headers`] makes one pass over the
/// headers instead of looking each name up: a look-up hashes the name byte by
/// byte, and the inbound layer needs three names.
const SCAN_MAX: usize = 16;

/// What the inbound layer reads from a request's headers, in one pass when
/// there are few: the caller's remaining time (as [`timeout_from_headers`]),
/// and whether the request is gRPC (as [`is_grpc`](crate::classify::is_grpc)).
fn inbound_headers(headers: &HeaderMap) -> (Option<Duration>, bool) {
    if headers.len() > SCAN_MAX {
        return (
            timeout_from_headers(headers),
            crate::classify::is_grpc(headers),
        );
    }
    let (mut mesh, mut grpc_timeout, mut content_type) = (None, None, None);
    // The first value of each name, as `HeaderMap::get` would return it.
    for (name, value) in headers {
        match name.as_str() {
            "content-type" => content_type = content_type.or(Some(value)),
            "x-mesh-timeout-ms" => mesh = mesh.or(Some(value)),
            "grpc-timeout" => grpc_timeout = grpc_timeout.or(Some(value)),
            _ => {}
        }
    }
    let timeout = timeouts(mesh, grpc_timeout);
    let grpc = content_type
        .and_then(|v| v.to_str().ok())
        .is_some_and(crate::classify::is_grpc_content_type);
    (timeout, grpc)
}

/// A [`TIMEOUT_HEADER`] value: whole milliseconds, as `str::parse::<u64>`
/// reads them after trimming the whitespace a header value may carry, but
/// straight from the bytes (no UTF-8 pass, no Unicode-aware trim).
fn parse_millis(value: &HeaderValue) -> Option<u64> {
    let text = value.as_bytes().trim_ascii();
    let digits = text.strip_prefix(b"+").unwrap_or(text);
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// `grpc-timeout`: at most 8 digits and a unit, `H M S m u n`.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let value = value.trim();
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Encodes `timeout` as `grpc-timeout` (milliseconds, rounded up, or a coarser
/// unit when it would not fit in 8 digits).
pub fn grpc_timeout_value(timeout: Duration) -> HeaderValue {
    grpc_timeout_ms_value(whole_ms(timeout))
}

/// `grpc-timeout` for `ms` milliseconds: `<ms>m`, or whole seconds when the
/// milliseconds would not fit in the 8 digits gRPC allows.
fn grpc_timeout_ms_value(ms: u64) -> HeaderValue {
    if ms < 100_000_000 {
        decimal(ms, "m")
    } else {
        decimal((ms / 1000).min(99_999_999), "S")
    }
}

/// `timeout` in milliseconds, rounded up (so a callee's deadline never falls
/// before ours).
fn whole_ms(timeout: Duration) -> u64 {
    timeout
        .as_nanos()
        .div_ceil(1_000_000)
        .min(u128::from(u64::MAX)) as u64
}

/// Writes the time `deadline` leaves now into `headers` ([`TIMEOUT_HEADER`], and
/// `grpc-timeout` for gRPC requests). Called where each attempt is sent, so a
/// retry tells the server the time left at that moment, not at the call's start.
pub fn write_headers(headers: &mut HeaderMap, deadline: Deadline) {
    // Rounded up, so the callee's deadline never falls before ours: the caller
    // times out first and sees its own deadline error, not the callee's 504.
    let ms = whole_ms(deadline.remaining());
    let (mesh_value, grpc_value) = timeout_values(ms, crate::classify::is_grpc(headers));
    headers.insert(TIMEOUT_HEADER, mesh_value);
    if let Some(grpc_value) = grpc_value {
        headers.insert(GRPC_TIMEOUT_HEADER, grpc_value);
    }
}

/// The deadline header values last made on this thread, for `ms` milliseconds.
struct TimeoutValues {
    ms: u64,
    mesh: HeaderValue,
    /// Made the first time a gRPC request needs it.
    grpc: Option<HeaderValue>,
}

thread_local! {
    static LAST_TIMEOUT: RefCell<Option<TimeoutValues>> = const { RefCell::new(None) };
}

/// `x-mesh-timeout-ms` for `ms`, and `grpc-timeout` when `grpc`, reusing the
/// values last made on this thread when the number is the same: a call sent
/// within a millisecond of its start carries its whole timeout, rounded up, so a
/// service's first attempts write the same values over and over. A reused value
/// is a reference count, not an allocation.
fn timeout_values(ms: u64, grpc: bool) -> (HeaderValue, Option<HeaderValue>) {
    LAST_TIMEOUT.with(|last| {
        let mut last = last.borrow_mut();
        if last.as_ref().is_none_or(|values| values.ms != ms) {
            *last = Some(TimeoutValues {
                ms,
                mesh: decimal(ms, ""),
                grpc: None,
            });
        }
        let values = last.as_mut().expect("set just above");
        let grpc = grpc.then(|| {
            values
                .grpc
                .get_or_insert_with(|| grpc_timeout_ms_value(ms))
                .clone()
        });
        (values.mesh.clone(), grpc)
    })
}

/// `n` in decimal followed by `unit` (at most one letter) as a header value,
/// formatted on the stack: one allocation for the value's bytes, where
/// `HeaderValue::from(u64)` or `format!` make two.
fn decimal(mut n: u64, unit: &str) -> HeaderValue {
    // Up to 20 digits (`u64::MAX`), then the unit.
    let mut text = [0u8; 21];
    let mut start = 20;
    loop {
        start -= 1;
        text[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let end = 20 + unit.len();
    text[20..end].copy_from_slice(unit.as_bytes());
    HeaderValue::from_bytes(&text[start..end])
        .expect("ASCII digits and a unit are a valid header value")
}

#[cfg(test)]
mod tests;
