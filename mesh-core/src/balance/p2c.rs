//! Power of two choices: sample two distinct eligible endpoints (in proportion to
//! their weights) and take the cheaper one. With PeakEWMA cost this is the default
//! balancer; with in-flight count as cost it is least-request (Envoy's and gRFC A48's
//! default of two choices).
//!
//! Two random choices avoid both the herd that always-the-least-loaded causes and the
//! O(n) scan it needs, while still steering away from slow or busy endpoints.

use super::candidates::{weighted_choice, Filter, PROBES};
use super::endpoint::EndpointState;
use super::rng;
use super::table::Table;

/// What "cheaper" means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cost {
    /// Estimated round trip × (in flight + 1).
    PeakEwma,
    /// Requests in flight.
    InFlight,
}

impl Cost {
    fn of(self, state: &EndpointState, filter: &mut Filter<'_>) -> f64 {
        match self {
            Cost::PeakEwma => state.ewma_cost(&mut filter.now),
            Cost::InFlight => state.in_flight() as f64,
        }
    }
}

/// The index of the chosen endpoint, or `None` when no endpoint is eligible.
pub(crate) fn choose<E>(table: &Table<E>, filter: &mut Filter<'_>, cost: Cost) -> Option<usize> {
    let Some(first) = probe(table, filter, None) else {
        let ranked = filter.scan(table, rng::below(table.len()));
        return match ranked.len() {
            0 => None,
            1 => Some(ranked[0]),
            _ => {
                let a = weighted_choice(table, &ranked);
                let b = weighted_choice(table, &ranked);
                Some(cheaper(table, filter, cost, a, b))
            }
        };
    };
    match probe(table, filter, Some(first)) {
        Some(second) => Some(cheaper(table, filter, cost, first, second)),
        // Probably the only eligible endpoint (or bad luck; either way it is fine).
        None => Some(first),
    }
}

/// A sampled eligible endpoint other than `not`, within the probe budget.
fn probe<E>(table: &Table<E>, filter: &mut Filter<'_>, not: Option<usize>) -> Option<usize> {
    let sampler = table.sampler();
    if not.is_some() && sampler.distinct_outcomes() < 2 {
        // Only one endpoint has weight: a second sample could only repeat it.
        return None;
    }
    (0..PROBES)
        .map(|_| sampler.sample(rng::next_u64()))
        .find(|&i| Some(i) != not && filter.accepts(table.node(i)))
}

/// `a` unless `b` costs strictly less (ties keep the first random choice).
fn cheaper<E>(table: &Table<E>, filter: &mut Filter<'_>, cost: Cost, a: usize, b: usize) -> usize {
    if a == b {
        return a;
    }
    if cost.of(table.state(b), filter) < cost.of(table.state(a), filter) {
        b
    } else {
        a
    }
}
