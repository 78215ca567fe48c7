//! The immutable endpoint table a pick reads, rebuilt from each discovery snapshot.
//!
//! A table is built once per snapshot and swapped in atomically, so picks never lock
//! and never see a half-applied update. Building it merges the snapshot with the
//! previous table (both sorted by address) so that surviving endpoints keep their
//! state, and precomputes a weighted sampler so a pick costs O(1) whatever the
//! endpoint count.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::discovery::Snapshot;

use super::endpoint::{EndpointHandle, EndpointState, Node};
use super::shared::Shared;

/// Endpoints sorted by address, their current weights, and a sampler over them.
pub(crate) struct Table<E> {
    /// Each endpoint's node: one pointer (8 bytes) per endpoint, so the array
    /// itself stays small, and judging a candidate costs one hop to its hot state.
    nodes: Vec<Arc<Node<E>>>,
    weights: Vec<u32>,
    sampler: Sampler,
}

impl<E: Send + Sync + 'static> Table<E> {
    pub(crate) fn empty() -> Self {
        Table {
            nodes: Vec::new(),
            weights: Vec::new(),
            sampler: Sampler::build(&[]),
        }
    }

    /// The table for `snapshot`, reusing this table's nodes for endpoints that stay
    /// with the same identity. Returns the nodes that left.
    pub(crate) fn next(
        &self,
        snapshot: &Snapshot,
        shared: &Arc<Shared>,
    ) -> (Self, Vec<Arc<Node<E>>>) {
        let endpoints = snapshot.endpoints();
        let mut nodes = Vec::with_capacity(endpoints.len());
        let mut weights = Vec::with_capacity(endpoints.len());
        let mut removed = Vec::new();
        let mut old = self.nodes.iter().peekable();
        for endpoint in endpoints {
            // Everything before this address in the old table has left.
            while let Some(node) = old.next_if(|s| s.handle.addr() < endpoint.addr) {
                removed.push(Arc::clone(node));
            }
            let kept = old.next_if(|s| s.handle.addr() == endpoint.addr);
            let node = match kept {
                Some(node) if node.handle.endpoint().identity == endpoint.identity => {
                    Arc::clone(node)
                }
                other => {
                    // A new endpoint, or one whose identity changed: its connections
                    // were made for the old identity, so it starts afresh.
                    removed.extend(other.cloned());
                    let unhealthy = shared.new_endpoints_unhealthy.load(Ordering::Acquire);
                    Node::new(endpoint.clone(), Arc::clone(shared), unhealthy)
                }
            };
            nodes.push(node);
            weights.push(endpoint.weight);
        }
        removed.extend(old.cloned());
        let sampler = Sampler::build(&weights);
        (
            Table {
                nodes,
                weights,
                sampler,
            },
            removed,
        )
    }
}

impl<E> Table<E> {
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The state of endpoint `index`, for judging it as a candidate.
    pub(crate) fn state(&self, index: usize) -> &EndpointState {
        &self.nodes[index].state
    }

    /// The node of endpoint `index`, once chosen.
    pub(crate) fn node(&self, index: usize) -> &Arc<Node<E>> {
        &self.nodes[index]
    }

    /// Every endpoint's node, in address order.
    pub(crate) fn nodes(&self) -> &[Arc<Node<E>>] {
        &self.nodes
    }

    /// Every endpoint's handle, in address order.
    pub(crate) fn handles(&self) -> impl Iterator<Item = &EndpointHandle> {
        self.nodes.iter().map(|n| &n.handle)
    }

    pub(crate) fn weight(&self, index: usize) -> u32 {
        self.weights[index]
    }

    /// Whether zero-weight endpoints are sampled like the others (all weights are
    /// zero, so none is preferred).
    pub(crate) fn zero_weight_is_normal(&self) -> bool {
        self.sampler.zero_weight_is_normal
    }

    pub(crate) fn sampler(&self) -> &Sampler {
        &self.sampler
    }
}

/// Chooses an index in proportion to the weights in O(1): uniform when all weights
/// are equal, otherwise Vose's alias method over the positive weights (zero-weight
/// endpoints are never sampled; the slow path reaches them when nothing else is
/// eligible).
#[derive(Debug)]
pub(crate) struct Sampler {
    kind: SamplerKind,
    zero_weight_is_normal: bool,
}

impl Sampler {
    /// How many distinct indexes `sample` can return.
    pub(crate) fn distinct_outcomes(&self) -> usize {
        match &self.kind {
            SamplerKind::Uniform { len } => *len,
            SamplerKind::Alias { columns } => columns.len(),
        }
    }
}

#[derive(Debug)]
enum SamplerKind {
    Uniform { len: usize },
    Alias { columns: Box<[Column]> },
}

/// One alias-table column: take `primary` when the coin is below `threshold`
/// (a fraction of 2^32), else `alias`.
#[derive(Debug, Clone, Copy)]
struct Column {
    threshold: u32,
    primary: u32,
    alias: u32,
}

impl Sampler {
    pub(crate) fn build(weights: &[u32]) -> Self {
        let first = weights.first().copied().unwrap_or(0);
        if weights.iter().all(|&w| w == first) {
            return Sampler {
                kind: SamplerKind::Uniform { len: weights.len() },
                zero_weight_is_normal: first == 0,
            };
        }
        let positive: Vec<(u32, f64)> = weights
            .iter()
            .enumerate()
            .filter(|(_, &w)| w > 0)
            .map(|(i, &w)| (i as u32, f64::from(w)))
            .collect();
        let total: f64 = positive.iter().map(|(_, w)| w).sum();
        let n = positive.len();
        // Scaled so the average column holds exactly 1.
        let mut scaled: Vec<f64> = positive.iter().map(|(_, w)| w * n as f64 / total).collect();
        let mut columns: Vec<Column> = positive
            .iter()
            .map(|&(i, _)| Column {
                threshold: u32::MAX,
                primary: i,
                alias: i,
            })
            .collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&c| scaled[c] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            columns[s].threshold = (scaled[s] * 4_294_967_296.0) as u32;
            columns[s].alias = positive[l].0;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // What is left is 1 up to rounding: those columns always take their primary.
        Sampler {
            kind: SamplerKind::Alias {
                columns: columns.into_boxed_slice(),
            },
            zero_weight_is_normal: false,
        }
    }

    /// A weighted random index from 64 random bits. The table must not be empty.
    pub(crate) fn sample(&self, random: u64) -> usize {
        match &self.kind {
            SamplerKind::Uniform { len } => ((u128::from(random) * *len as u128) >> 64) as usize,
            SamplerKind::Alias { columns } => {
                let column = (((random >> 32) * columns.len() as u64) >> 32) as usize;
                columns[column].choose(random as u32)
            }
        }
    }

    /// The index for position `counter` of a weighted rotation: every column is
    /// visited once per round, and the golden-ratio sequence of coins splits the
    /// visits of a column between its primary and alias in proportion over rounds.
    pub(crate) fn rotate(&self, counter: u64) -> usize {
        match &self.kind {
            SamplerKind::Uniform { len } => (counter % *len as u64) as usize,
            SamplerKind::Alias { columns } => {
                let len = columns.len() as u64;
                let round = counter / len;
                let coin = (round.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32;
                columns[(counter % len) as usize].choose(coin)
            }
        }
    }
}

impl Column {
    fn choose(&self, coin: u32) -> usize {
        if coin < self.threshold {
            self.primary as usize
        } else {
            self.alias as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(
        sampler: &Sampler,
        len: usize,
        draws: u64,
        f: impl Fn(&Sampler, u64) -> usize,
    ) -> Vec<u64> {
        let mut counts = vec![0u64; len];
        for i in 0..draws {
            counts[f(sampler, i)] += 1;
        }
        counts
    }

    #[test]
    fn alias_sampling_follows_weights_and_skips_zero() {
        let weights = [1, 0, 3, 6];
        let sampler = Sampler::build(&weights);
        let counts = histogram(&sampler, 4, 100_000, |s, _| {
            s.sample(super::super::rng::next_u64())
        });
        assert_eq!(counts[1], 0);
        for (i, &w) in weights.iter().enumerate() {
            let expected = 100_000.0 * f64::from(w) / 10.0;
            assert!(
                (counts[i] as f64 - expected).abs() < 0.05 * 100_000.0,
                "{counts:?}"
            );
        }
    }

    #[test]
    fn weighted_rotation_follows_weights_exactly_over_rounds() {
        let weights = [1, 3];
        let sampler = Sampler::build(&weights);
        let counts = histogram(&sampler, 2, 40_000, Sampler::rotate);
        assert!((counts[0] as i64 - 10_000).abs() < 100, "{counts:?}");
    }

    #[test]
    fn uniform_rotation_visits_each_once_per_round() {
        let sampler = Sampler::build(&[2, 2, 2]);
        let order: Vec<usize> = (0..6).map(|c| sampler.rotate(c)).collect();
        assert_eq!(order, [0, 1, 2, 0, 1, 2]);
    }
}
