//! Weighted round robin: a shared counter walks the sampler's rotation, so endpoints
//! take turns in proportion to their weights without any per-pick lock.

use std::sync::atomic::{AtomicU64, Ordering};

use super::candidates::{Filter, PROBES};
use super::table::Table;

/// The index of the next eligible endpoint in the rotation, or `None` when no
/// endpoint is eligible.
pub(crate) fn choose<E>(
    table: &Table<E>,
    filter: &mut Filter<'_>,
    counter: &AtomicU64,
) -> Option<usize> {
    let sampler = table.sampler();
    for _ in 0..PROBES {
        let index = sampler.rotate(counter.fetch_add(1, Ordering::Relaxed));
        if filter.accepts(table.node(index)) {
            return Some(index);
        }
    }
    // Most endpoints are out: take the first eligible one after the current
    // position, so the rotation still moves on.
    let start = (counter.load(Ordering::Relaxed) % table.len() as u64) as usize;
    filter.scan(table, start).first().copied()
}
