//! One clock reading shared by the layers a call runs through synchronously.
//!
//! A call through the mesh client passes half a dozen layers inside one
//! synchronous `call` (telemetry, deadline, retry, attempt telemetry, the
//! endpoint dispatch), and its response passes them again inside one `poll`.
//! Each used to read the clock for itself (tokio → std → the vDSO's
//! `clock_gettime`, tens of nanoseconds each): about a dozen readings a call
//! in the mesh's own layers, all of them microseconds apart at most. The
//! outermost layer opens a [`ClockScope`] around its synchronous work instead,
//! and every layer below asks [`now`], which reads the clock once per scope.
//!
//! A scope is only ever open around synchronous work (its guard is not
//! `Send`, so it cannot be held across an `.await`): a reading it shares is
//! never older than the code running inside it. Outside any scope [`now`] reads
//! the clock, so a layer used on its own measures exactly as before.
//!
//! Readings are [`tokio::time::Instant`]s, so paused time in tests governs
//! them. The functions are `#[inline]`: called across crates from every layer,
//! a call each would cost about what the reading it saves does under callgrind.

use std::cell::Cell;
use std::marker::PhantomData;

use tokio::time::Instant;

/// What [`now`] answers on this thread.
#[derive(Clone, Copy)]
enum Reading {
    /// No scope is open: every call reads the clock.
    Outside,
    /// A scope is open and nothing has read the clock in it yet.
    Unread,
    /// The scope's reading.
    At(Instant),
}

thread_local! {
    static READING: Cell<Reading> = const { Cell::new(Reading::Outside) };
}

/// The current instant: the open [`ClockScope`]'s reading (taken by the first
/// caller inside it), or a fresh reading when no scope is open.
#[inline]
pub fn now() -> Instant {
    READING.with(|reading| match reading.get() {
        Reading::At(instant) => instant,
        Reading::Outside => Instant::now(),
        Reading::Unread => {
            let instant = Instant::now();
            reading.set(Reading::At(instant));
            instant
        }
    })
}

/// The time since `earlier`, as [`now`] reads it (zero if `earlier` is later).
#[inline]
pub fn since(earlier: Instant) -> std::time::Duration {
    now().saturating_duration_since(earlier)
}

/// While alive, [`now`] on this thread answers one reading of the clock; drop
/// it to restore what was there before (scopes nest, and a panic unwinds
/// them). Open one around a stretch of synchronous work, such as a `call` or
/// one `poll` of a call's future, whose layers all want "now".
#[must_use = "the scope lasts as long as the guard"]
pub struct ClockScope {
    previous: Reading,
    // Not `Send`: a scope held across an `.await` could share a reading
    // between moments far apart, or leak it into another task on the thread.
    _not_send: PhantomData<*const ()>,
}

impl ClockScope {
    /// A scope whose reading is taken by the first [`now`] inside it, if any
    /// (a poll that ends up not needing the time costs no reading).
    #[inline]
    pub fn lazy() -> Self {
        Self::with(Reading::Unread)
    }

    /// A scope sharing `now`, a reading the caller has just taken.
    #[inline]
    pub fn at(now: Instant) -> Self {
        Self::with(Reading::At(now))
    }

    #[inline]
    fn with(reading: Reading) -> Self {
        ClockScope {
            previous: READING.replace(reading),
            _not_send: PhantomData,
        }
    }
}

impl Drop for ClockScope {
    #[inline]
    fn drop(&mut self) {
        READING.set(self.previous);
    }
}

impl std::fmt::Debug for ClockScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClockScope").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn outside_a_scope_now_reads_the_clock() {
        let before = now();
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(now() - before, Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_scope_shares_its_first_reading_and_forgets_it_when_dropped() {
        let start = Instant::now();
        let scope = ClockScope::lazy();
        // Nothing read yet: the first reading is taken when asked for.
        tokio::time::advance(Duration::from_secs(1)).await;
        let first = now();
        assert_eq!(first - start, Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(now(), first, "one reading per scope");
        drop(scope);
        assert_eq!(
            now() - start,
            Duration::from_secs(2),
            "a fresh reading after"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn scopes_nest_and_restore_the_outer_reading() {
        let outer_at = Instant::now();
        let outer = ClockScope::at(outer_at);
        tokio::time::advance(Duration::from_secs(5)).await;
        {
            let _inner = ClockScope::lazy();
            assert_eq!(
                now() - outer_at,
                Duration::from_secs(5),
                "the inner scope reads anew"
            );
        }
        assert_eq!(now(), outer_at, "the outer scope's reading is back");
        drop(outer);
    }

    #[test]
    fn a_panic_inside_a_scope_leaves_no_reading_behind() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let caught = std::panic::catch_unwind(|| {
                let _scope = ClockScope::at(Instant::now());
                panic!("inside the scope");
            });
            assert!(caught.is_err());
            let before = now();
            tokio::time::advance(Duration::from_secs(1)).await;
            assert_eq!(now() - before, Duration::from_secs(1));
        });
    }
}
