//! The retry budget: retries (and hedges) as a share of requests over a sliding
//! window, plus a small per-second floor so a quiet service can still retry.
//!
//! Unlike `tower::retry::budget::TpsBudget`, the floor does not accumulate over the
//! window: a retry is allowed while the window's withdrawals stay within the
//! ratio of its deposits, or while the last second saw fewer than `min_per_second`
//! withdrawals. An all-failing burst thus gets the percentage, or the floor's few
//! retries per second, never `min_per_second × window` at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::clock;

/// Slots the window is divided into (one per second of the default 10 s window).
const SLOTS: usize = 10;

/// A retry budget shared by every clone of a client for one service: each request
/// deposits, each retry or hedge withdraws.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_second: u32,
    slot_len: Duration,
    started: Instant,
    window: Mutex<Window>,
    requests: AtomicU64,
    retries: AtomicU64,
    exhausted: AtomicU64,
}

#[derive(Debug)]
struct Window {
    slots: [Slot; SLOTS],
    /// The slot of time the last deposit fell in: the next deposit, nearly
    /// always in the same one, finds its slot by comparing two instants rather
    /// than by a clock subtraction and a division (≈ 55 instructions a request).
    last_deposit: Option<SlotSpan>,
}

/// Slot `epoch`'s instants: from `start` (inclusive) to `end` (exclusive).
#[derive(Debug, Clone, Copy)]
struct SlotSpan {
    epoch: u64,
    start: Instant,
    end: Instant,
}

impl SlotSpan {
    fn contains(&self, now: Instant) -> bool {
        self.start <= now && now < self.end
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Which slot of time (counted from `started`) the counts belong to.
    epoch: u64,
    deposits: u64,
    withdrawals: u64,
}

/// How a service's [`RetryBudget`] is sized (`RETRY_BUDGET`, `RETRY_MIN_PER_SECOND`,
/// `RETRY_WINDOW`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetSettings {
    /// Retries as a share of requests (0.2 for 20%).
    pub ratio: f64,
    /// Retries allowed in any one second whatever the ratio.
    pub min_per_second: u32,
    /// Window over which requests and retries are counted.
    pub window: Duration,
}

impl Default for RetryBudgetSettings {
    /// 20%, 10 per second, over 10 s.
    fn default() -> Self {
        RetryBudgetSettings {
            ratio: 0.2,
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }
}

impl RetryBudgetSettings {
    /// A budget of this size, starting empty now.
    pub fn build(&self) -> RetryBudget {
        RetryBudget::new(self.ratio, self.min_per_second, self.window)
    }
}

/// Counts a budget has kept since it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryStats {
    /// Requests that deposited.
    pub requests: u64,
    /// Retries and hedges the budget allowed.
    pub retries: u64,
    /// Retries and hedges refused because the budget was spent.
    pub exhausted: u64,
}

impl RetryBudget {
    /// Retries up to `ratio` (0.2 for 20%) of the requests of the last `window`,
    /// plus `min_per_second` in any one second whatever the ratio.
    pub fn new(ratio: f64, min_per_second: u32, window: Duration) -> Self {
        let window = window.max(Duration::from_millis(SLOTS as u64));
        RetryBudget {
            ratio: ratio.clamp(0.0, 1.0),
            min_per_second,
            slot_len: window / SLOTS as u32,
            started: Instant::now(),
            window: Mutex::new(Window {
                slots: [Slot::default(); SLOTS],
                last_deposit: None,
            }),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            exhausted: AtomicU64::new(0),
        }
    }

    fn epoch_now(&self) -> u64 {
        self.epoch_at(clock::now())
    }

    /// The slot `now` falls in. In 64-bit nanoseconds (585 years), which spares
    /// a 128-bit division per request.
    fn epoch_at(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.started).as_nanos() as u64;
        since / self.slot_nanos()
    }

    /// A slot's length in nanoseconds, at least one.
    fn slot_nanos(&self) -> u64 {
        (self.slot_len.as_nanos() as u64).max(1)
    }

    /// Records a request.
    pub fn deposit(&self) {
        self.deposit_at(clock::now());
    }

    /// Slot `epoch`'s instants; `None` past what an `Instant` can hold.
    fn span(&self, epoch: u64) -> Option<SlotSpan> {
        let len = self.slot_nanos();
        let start = self
            .started
            .checked_add(Duration::from_nanos(epoch.checked_mul(len)?))?;
        let end = start.checked_add(Duration::from_nanos(len))?;
        Some(SlotSpan { epoch, start, end })
    }

    /// Records a request made at `now` (a caller that has just read the clock
    /// passes its reading rather than have the budget read it again).
    pub fn deposit_at(&self, now: Instant) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut window = self.window.lock();
        let epoch = match window.last_deposit {
            Some(span) if span.contains(now) => span.epoch,
            _ => {
                let epoch = self.epoch_at(now);
                window.last_deposit = self.span(epoch);
                epoch
            }
        };
        current(&mut window.slots, epoch).deposits += 1;
    }

    /// Takes one retry from the budget; `false` when it is spent (the retry must
    /// not be made).
    pub fn withdraw(&self) -> bool {
        let epoch = self.epoch_now();
        let allowed = {
            let mut window = self.window.lock();
            let slots = &mut window.slots;
            let (mut deposits, mut withdrawals) = (0u64, 0u64);
            for slot in slots.iter().filter(|s| s.epoch + SLOTS as u64 > epoch) {
                deposits += slot.deposits;
                withdrawals += slot.withdrawals;
            }
            // The floor is per second: the withdrawals of the slots making up the
            // last second.
            let per_second_slots =
                (Duration::from_secs(1).as_nanos() / self.slot_len.as_nanos().max(1)).max(1) as u64;
            let last_second: u64 = slots
                .iter()
                .filter(|s| s.epoch + per_second_slots > epoch)
                .map(|s| s.withdrawals)
                .sum();
            let by_ratio = (withdrawals + 1) as f64 <= self.ratio * deposits as f64;
            let by_floor = last_second < u64::from(self.min_per_second);
            let allowed = by_ratio || by_floor;
            if allowed {
                current(slots, epoch).withdrawals += 1;
            }
            allowed
        };
        let counter = if allowed {
            &self.retries
        } else {
            &self.exhausted
        };
        counter.fetch_add(1, Ordering::Relaxed);
        allowed
    }

    /// What the budget has counted so far.
    pub fn stats(&self) -> RetryStats {
        RetryStats {
            requests: self.requests.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            exhausted: self.exhausted.load(Ordering::Relaxed),
        }
    }
}

fn current(slots: &mut [Slot; SLOTS], epoch: u64) -> &mut Slot {
    let slot = &mut slots[(epoch % SLOTS as u64) as usize];
    if slot.epoch != epoch {
        *slot = Slot {
            epoch,
            ..Slot::default()
        };
    }
    slot
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(budget: &RetryBudget) -> usize {
        (0..10_000).take_while(|_| budget.withdraw()).count()
    }

    #[tokio::test(start_paused = true)]
    async fn budget_allows_its_share_of_deposits_in_the_window() {
        let budget = RetryBudget::new(0.2, 0, Duration::from_secs(10));
        for _ in 0..100 {
            budget.deposit();
        }
        assert_eq!(drain(&budget), 20);
        let stats = budget.stats();
        assert_eq!((stats.requests, stats.retries), (100, 20));
        assert!(stats.exhausted >= 1);
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_when_they_leave_the_window() {
        let budget = RetryBudget::new(0.2, 0, Duration::from_secs(10));
        for _ in 0..50 {
            budget.deposit();
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        for _ in 0..50 {
            budget.deposit();
        }
        tokio::time::advance(Duration::from_millis(5500)).await;
        // The first 50 are out of the window; the second 50 remain.
        assert_eq!(drain(&budget), 10);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(drain(&budget), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_count_in_the_slot_their_instant_falls_in() {
        // One-second slots: 0.999999999 s is the first slot's last instant and
        // 1 s the second's first, whichever slot the last deposit went to.
        let budget = RetryBudget::new(0.2, 0, Duration::from_secs(10));
        let deposit_50 = || (0..50).for_each(|_| budget.deposit());
        deposit_50();
        tokio::time::advance(Duration::from_nanos(999_999_999)).await;
        deposit_50();
        tokio::time::advance(Duration::from_nanos(1)).await;
        deposit_50();
        // At 10 s the first slot has left the window and the second has not:
        // only the last 50 deposits count.
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(drain(&budget), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn withdrawals_count_against_the_window_until_they_expire() {
        let budget = RetryBudget::new(0.5, 0, Duration::from_secs(10));
        for _ in 0..20 {
            budget.deposit();
        }
        assert_eq!(drain(&budget), 10);
        tokio::time::advance(Duration::from_secs(3)).await;
        for _ in 0..20 {
            budget.deposit();
        }
        // 40 deposits allow 20 withdrawals; 10 are already spent.
        assert_eq!(drain(&budget), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn floor_allows_min_per_second_and_does_not_accumulate() {
        let budget = RetryBudget::new(0.2, 10, Duration::from_secs(10));
        // No requests at all: only the floor.
        assert_eq!(drain(&budget), 10);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(drain(&budget), 0, "the floor is per second, not per slot");
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(drain(&budget), 10);
        // Ten quiet seconds do not save up a hundred retries.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(drain(&budget), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn floor_is_a_minimum_not_an_addition() {
        let budget = RetryBudget::new(0.2, 10, Duration::from_secs(10));
        for _ in 0..1000 {
            budget.deposit();
        }
        // 200 from the ratio; this second already saw more than the floor's 10.
        assert_eq!(drain(&budget), 200);
    }
}
