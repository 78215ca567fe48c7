//! Which endpoints a pick may choose, and the slow path that finds them when random
//! probes keep hitting ineligible ones.
//!
//! The fast path probes a bounded number of sampled endpoints, so its cost does not
//! depend on the table size. Only when every probe fails (most endpoints unreachable,
//! ejected or excluded) does a pick scan the table; the scan is O(n) but correct, and
//! ranks what it finds so that exclusions and zero weights give way only when
//! nothing better exists.

use std::net::SocketAddr;

use super::endpoint::{LazyNow, Node};
use super::rng;
use super::table::Table;

/// Random or rotating probes tried before falling back to a scan.
pub(crate) const PROBES: usize = 16;

/// The eligibility rules of one pick.
#[derive(Debug)]
pub(crate) struct Filter<'a> {
    exclude: &'a [SocketAddr],
    honour_ejections: bool,
    pub(crate) now: LazyNow<'a>,
}

impl<'a> Filter<'a> {
    pub(crate) fn new(exclude: &'a [SocketAddr], honour_ejections: bool, now: LazyNow<'a>) -> Self {
        Filter {
            exclude,
            honour_ejections,
            now,
        }
    }

    /// Eligible on the fast path: in rotation and not excluded. The address (in the
    /// handle, another cache line) is read only when something is excluded.
    pub(crate) fn accepts<E>(&mut self, node: &Node<E>) -> bool {
        node.state.is_eligible(self.honour_ejections, &mut self.now)
            && (self.exclude.is_empty() || !self.exclude.contains(&node.handle.addr()))
    }

    /// The eligible endpoints of the best rank, in scan order starting at `start`:
    /// rank 0 not excluded with weight, 1 not excluded without weight, 2 excluded with
    /// weight, 3 excluded without weight. Empty when nothing is in rotation.
    pub(crate) fn scan<E>(&mut self, table: &Table<E>, start: usize) -> Vec<usize> {
        let len = table.len();
        let zero_is_normal = table.zero_weight_is_normal();
        let mut best_rank = u8::MAX;
        let mut best = Vec::new();
        for offset in 0..len {
            let index = (start + offset) % len;
            let node = table.node(index);
            if !node.state.is_eligible(self.honour_ejections, &mut self.now) {
                continue;
            }
            let excluded = self.exclude.contains(&node.handle.addr());
            let weightless = table.weight(index) == 0 && !zero_is_normal;
            let rank = u8::from(excluded) * 2 + u8::from(weightless);
            if rank < best_rank {
                best_rank = rank;
                best.clear();
            }
            if rank == best_rank {
                best.push(index);
            }
        }
        best
    }
}

/// A weighted random choice among `indexes` (uniform when none has weight).
pub(crate) fn weighted_choice<E>(table: &Table<E>, indexes: &[usize]) -> usize {
    let total: u64 = indexes.iter().map(|&i| u64::from(table.weight(i))).sum();
    if total == 0 {
        return indexes[rng::below(indexes.len())];
    }
    let mut point = ((u128::from(rng::next_u64()) * u128::from(total)) >> 64) as u64;
    for &index in indexes {
        let weight = u64::from(table.weight(index));
        if point < weight {
            return index;
        }
        point -= weight;
    }
    indexes[indexes.len() - 1]
}
