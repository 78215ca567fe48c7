//! One timer for the deadlines of many outbound calls.
//!
//! Nearly every call through the outbound deadline layer is still waiting for
//! its response after its first poll, so each used to arm a tokio `Sleep`: a
//! timer-wheel insert and removal (≈ 700 instructions with the time driver's
//! extra work on each park) for a deadline that almost never passes. Calls
//! bounded by the layer's own timeout have deadlines in the order they were
//! made (each is its start plus the same timeout), so they can share one
//! timer instead: a call appends its deadline and waker to a queue kept in
//! deadline order, and one watcher task sleeps until the earliest deadline,
//! wakes the calls whose deadline has passed and sleeps again. A call that
//! ends takes its entry out (a lock and a flag); the watcher wakes about once
//! per timeout, not once per call.
//!
//! The watcher never needs waking for a new entry: when the queue is empty it
//! sleeps for one timeout, and it accepts only entries due no earlier than
//! the instant it will next wake (a call whose deadline would come before it,
//! or before the last entry's, or a queue grown past [`MAX_ENTRIES`], uses its
//! own `Sleep` as before).

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::task::Waker;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::Deadline;

/// Entries the queue holds at most. A call that hangs keeps the entries of
/// every call made after it (ended or not) until it ends or times out; past
/// this many, new calls arm their own timers instead, so the queue's memory
/// stays bounded (≈ 32 bytes an entry) whatever the traffic.
pub(super) const MAX_ENTRIES: usize = 4096;

/// The shared deadline timer of one outbound deadline layer (and its clones).
#[derive(Clone)]
pub(super) struct DeadlineWatch {
    inner: Arc<Mutex<Queue>>,
    /// The layer's timeout: how long the watcher sleeps when nothing waits.
    timeout: Duration,
}

impl std::fmt::Debug for DeadlineWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadlineWatch")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

struct Queue {
    /// The index of `entries[0]`; an index below it was popped (expired).
    base: u64,
    entries: VecDeque<Entry>,
    /// A watcher task runs (on the runtime that was current when it started).
    watching: bool,
    /// When the watcher wakes next: an entry due earlier would not be seen in
    /// time. `None` while a watcher that has not run yet is starting.
    wakes_at: Option<Instant>,
}

struct Entry {
    deadline: Instant,
    waker: Option<Waker>,
    /// The call ended (or moved to a timer of its own): only waits to be
    /// popped.
    done: bool,
}

/// What became of a watched call's entry.
pub(super) enum Watched {
    /// Still watched; the waker is the latest one.
    Yes,
    /// The deadline passed: the watcher popped the entry and woke the call.
    Expired,
    /// The watcher stopped (its runtime shut down): the call needs a timer of
    /// its own.
    Orphaned,
}

/// A call's place in the queue: marks its entry done when dropped.
pub(super) struct Ticket {
    watch: Arc<Mutex<Queue>>,
    index: u64,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl DeadlineWatch {
    /// A watch for calls bounded by `timeout` from their start.
    pub(super) fn new(timeout: Duration) -> Self {
        DeadlineWatch {
            inner: Arc::new(Mutex::new(Queue {
                base: 0,
                entries: VecDeque::new(),
                watching: false,
                wakes_at: None,
            })),
            timeout,
        }
    }

    /// The timeout this watch serves: only calls whose deadline is their start
    /// plus this may join it.
    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Watches `deadline` for the task `waker` wakes; `None` when the call
    /// must arm a timer of its own (see the module docs). Takes the call's
    /// handle on the watch, which its ticket keeps.
    pub(super) fn watch(self, deadline: Deadline, waker: &Waker) -> Option<Ticket> {
        let mut queue = self.inner.lock();
        let start = if queue.watching {
            None
        } else {
            // The watcher runs on the runtime of the call that starts it.
            let runtime = tokio::runtime::Handle::try_current().ok()?;
            queue.watching = true;
            // Until its first run, which looks at the queue's front.
            queue.wakes_at = None;
            Some(runtime)
        };
        let index = queue.join(deadline, waker);
        drop(queue);
        if let Some(runtime) = start {
            // The guard goes into the task with it, so a task dropped before
            // its first poll (its runtime shutting down) still marks the watch
            // unwatched. Spawned with the lock released: a runtime that has
            // shut down drops the task, and so runs the guard, at once.
            let stopped = Stopped(Arc::downgrade(&self.inner));
            runtime.spawn(watcher(stopped, self.timeout));
        }
        index.map(|index| Ticket {
            watch: self.inner,
            index,
        })
    }
}

impl Queue {
    /// Appends a call's entry and returns its index; `None` when the call
    /// must arm a timer of its own (see the module docs).
    fn join(&mut self, deadline: Deadline, waker: &Waker) -> Option<u64> {
        let in_order = self
            .entries
            .back()
            .is_none_or(|last| last.deadline <= deadline.0);
        let seen_in_time = self.wakes_at.is_none_or(|at| at <= deadline.0);
        if !in_order || !seen_in_time || self.entries.len() >= MAX_ENTRIES {
            return None;
        }
        self.entries.push_back(Entry {
            deadline: deadline.0,
            waker: Some(waker.clone()),
            done: false,
        });
        Some(self.base + self.entries.len() as u64 - 1)
    }
}

impl Ticket {
    /// Called on each later pending poll: keeps the entry's waker current and
    /// says whether the call is still watched.
    pub(super) fn refresh(&self, waker: &Waker) -> Watched {
        let mut queue = self.watch.lock();
        let Some(offset) = self.index.checked_sub(queue.base) else {
            return Watched::Expired;
        };
        if !queue.watching {
            return Watched::Orphaned;
        }
        let entry = &mut queue.entries[offset as usize];
        match &entry.waker {
            Some(current) if current.will_wake(waker) => {}
            _ => entry.waker = Some(waker.clone()),
        }
        Watched::Yes
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut queue = self.watch.lock();
        let Some(offset) = self.index.checked_sub(queue.base) else {
            return;
        };
        let entry = &mut queue.entries[offset as usize];
        entry.done = true;
        // Dropped outside the lock would be tidier, but a task's waker drop
        // is a reference count.
        entry.waker = None;
        while queue.entries.front().is_some_and(|e| e.done) {
            queue.entries.pop_front();
            queue.base += 1;
        }
    }
}

/// Sleeps until the earliest deadline, wakes the calls whose deadline has
/// passed, and again; ends when the layer is gone.
///
/// `stopped` marks the watch unwatched when this task is dropped (its runtime
/// shut down), waking every call so each arms a timer of its own.
async fn watcher(stopped: Stopped, timeout: Duration) {
    let queue = stopped.0.clone();
    // The calls whose deadline passed, woken once the lock is released.
    let mut expired = Vec::new();
    loop {
        let next = {
            let Some(queue) = queue.upgrade() else {
                return;
            };
            let mut queue = queue.lock();
            let now = Instant::now();
            while let Some(entry) = queue.entries.front_mut() {
                if !entry.done && entry.deadline > now {
                    break;
                }
                expired.extend(entry.waker.take());
                queue.entries.pop_front();
                queue.base += 1;
            }
            // With nothing queued, no call can join due before a timeout from
            // now (its deadline is its start plus the timeout).
            let next = queue
                .entries
                .front()
                .map_or(now + timeout, |entry| entry.deadline);
            queue.wakes_at = Some(next);
            next
        };
        expired.drain(..).for_each(Waker::wake);
        tokio::time::sleep_until(next).await;
    }
}

struct Stopped(Weak<Mutex<Queue>>);

impl Drop for Stopped {
    fn drop(&mut self) {
        let Some(queue) = self.0.upgrade() else {
            return;
        };
        let wakers: Vec<Waker> = {
            let mut queue = queue.lock();
            queue.watching = false;
            queue.wakes_at = None;
            queue
                .entries
                .iter_mut()
                .filter_map(|entry| entry.waker.take())
                .collect()
        };
        wakers.into_iter().for_each(Waker::wake);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len(watch: &DeadlineWatch) -> usize {
        watch.inner.lock().entries.len()
    }

    #[tokio::test(start_paused = true)]
    async fn ended_calls_leave_the_queue_and_out_of_order_ones_are_refused() {
        let watch = DeadlineWatch::new(Duration::from_secs(10));
        let waker = std::task::Waker::noop();
        let now = Instant::now();
        let first = watch
            .clone()
            .watch(Deadline(now + Duration::from_secs(10)), waker);
        let second = watch
            .clone()
            .watch(Deadline(now + Duration::from_secs(11)), waker);
        assert!(first.is_some() && second.is_some());
        assert!(
            watch
                .clone()
                .watch(Deadline(now + Duration::from_secs(5)), waker)
                .is_none(),
            "due before the last entry: a timer of its own"
        );
        assert_eq!(len(&watch), 2);
        drop(second);
        assert_eq!(len(&watch), 2, "behind a call still waiting");
        drop(first);
        assert_eq!(len(&watch), 0, "both gone once the first ends");
    }

    #[tokio::test(start_paused = true)]
    async fn the_queue_stays_bounded_behind_a_call_that_hangs() {
        let watch = DeadlineWatch::new(Duration::from_secs(10));
        let waker = std::task::Waker::noop();
        let deadline = Deadline(Instant::now() + Duration::from_secs(10));
        let _hanging = watch.clone().watch(deadline, waker).unwrap();
        for _ in 1..MAX_ENTRIES {
            drop(watch.clone().watch(deadline, waker).unwrap());
        }
        assert_eq!(len(&watch), MAX_ENTRIES);
        assert!(watch.clone().watch(deadline, waker).is_none());
    }
}
