//! Who owns a cache key in a fleet: weighted rendezvous hashing (highest random weight, Thaler and
//! Ravishankar, "Using name-based mappings to increase hit rates", IEEE/ACM ToN 1998), with the
//! logarithmic weighting of Schindelhauer and Schomaker ("Weighted distributed hash tables", SPAA
//! 2005): node `i` scores `-w_i / ln(u)` for the key, `u` a uniform hash of (node, key) in (0, 1),
//! and the highest score owns the key. Why this rather than a ring of virtual nodes (ketama):
//! - removing a node moves exactly the keys it owned, each to the node that ranked second for it,
//!   and nothing else moves;
//! - the ranking is the failover order: when the owner is down, the next node in the key's own order
//!   takes it, so one dead node's keys spread over all the others instead of landing on one neighbour;
//! - no table to build, and a key's owner is O(nodes) to compute, fine for a fleet of tens.
//!
//! Pure and deterministic across processes and builds: the hash is XXH3 (fixed, documented
//! algorithm), never the standard library's per-process seeded hasher.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// The nodes of a fleet, each with a weight (its share of keys is proportional to it).
#[derive(Debug, Clone)]
pub struct Ring {
    /// Per node: the hash of its name (the seed of its key scores) and its weight.
    nodes: Vec<(u64, f64)>,
}

impl Ring {
    /// `nodes` are (name, weight); weights must be positive and finite (the configuration checks).
    pub fn new<'a>(nodes: impl IntoIterator<Item = (&'a str, f64)>) -> Ring {
        Ring { nodes: nodes.into_iter().map(|(name, weight)| (xxh3_64(name.as_bytes()), weight)).collect() }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `index`'s score for `key`: higher wins.
    fn score(&self, index: usize, key: &[u8]) -> f64 {
        let (seed, weight) = self.nodes[index];
        // The top 53 bits as a uniform double in (0, 1): +0.5 keeps it off 0 (ln 0 = -inf) and 1.
        let hash = xxh3_64_with_seed(key, seed);
        let unit = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        -weight / unit.ln()
    }

    /// The nodes in `key`'s order of preference: the owner first, then who takes the key when the
    /// owner is down, and so on.
    pub fn ranked(&self, key: &[u8]) -> Vec<usize> {
        let mut scored: Vec<(f64, usize)> = (0..self.nodes.len()).map(|i| (self.score(i, key), i)).collect();
        // Ties (vanishingly rare) go to the lower index, so every node agrees.
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        scored.into_iter().map(|(_, i)| i).collect()
    }

    /// The owner of `key` (`None` for an empty ring).
    pub fn owner(&self, key: &[u8]) -> Option<usize> {
        (0..self.nodes.len()).max_by(|&a, &b| self.score(a, key).total_cmp(&self.score(b, key)).then(b.cmp(&a)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("http://edge-{i}.example:8080")).collect()
    }

    fn ring(names: &[String]) -> Ring {
        Ring::new(names.iter().map(|n| (n.as_str(), 1.0)))
    }

    fn keys(count: usize) -> Vec<Vec<u8>> {
        (0..count).map(|i| format!("cdn.example/video/{i}/seg-{}.ts", i * 7).into_bytes()).collect()
    }

    #[test]
    fn every_process_agrees_on_the_owner() {
        // Fixed expectations: a hash that changed between builds would split a fleet's view.
        let names = names(3);
        let ring = ring(&names);
        let owners: Vec<Option<usize>> = keys(6).iter().map(|k| ring.owner(k)).collect();
        assert_eq!(owners, [Some(0), Some(0), Some(1), Some(0), Some(2), Some(0)]);
        assert_eq!(owners, ring_owners_by_ranking(&ring, &keys(6)));
        assert_eq!(Ring::new([("a", 1.0)]).owner(b"anything"), Some(0));
        assert_eq!(Ring::new(std::iter::empty()).owner(b"anything"), None);
    }

    fn ring_owners_by_ranking(ring: &Ring, keys: &[Vec<u8>]) -> Vec<Option<usize>> {
        keys.iter().map(|k| ring.ranked(k).first().copied()).collect()
    }

    #[test]
    fn keys_spread_evenly_and_follow_weights() {
        let names = names(4);
        let keys = keys(20_000);
        let even = ring(&names);
        let mut counts = [0usize; 4];
        for key in &keys {
            counts[even.owner(key).unwrap_or(0)] += 1;
        }
        for count in counts {
            let share = count as f64 / keys.len() as f64;
            assert!((share - 0.25).abs() < 0.02, "{counts:?}");
        }
        // Node 0 at weight 2 of a total of 5: 40 %.
        let weighted = Ring::new(names.iter().enumerate().map(|(i, n)| (n.as_str(), if i == 0 { 2.0 } else { 1.0 })));
        let first = keys.iter().filter(|k| weighted.owner(k) == Some(0)).count() as f64 / keys.len() as f64;
        assert!((first - 0.4).abs() < 0.02, "{first}");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

        /// Removing one node of N moves only the keys it owned (each to its second choice), so at
        /// most 1/N + ε of all keys change owner.
        #[test]
        fn removing_a_node_moves_only_its_keys(n in 2usize..12, removed_seed in any::<usize>()) {
            let all = names(n);
            let removed = removed_seed % n;
            let before = ring(&all);
            let remaining: Vec<String> = all.iter().enumerate().filter(|(i, _)| *i != removed).map(|(_, s)| s.clone()).collect();
            let after = ring(&remaining);
            let keys = keys(4000);
            let mut moved = 0;
            for key in &keys {
                let old = before.owner(key).map(|i| all[i].clone());
                let new = after.owner(key).map(|i| remaining[i].clone());
                if old != new {
                    moved += 1;
                    prop_assert_eq!(old.as_deref(), Some(all[removed].as_str()), "a key not owned by the removed node moved");
                    let second = before.ranked(key)[1];
                    prop_assert_eq!(new.as_deref(), Some(all[second].as_str()), "it goes to its second choice");
                }
            }
            let fraction = moved as f64 / keys.len() as f64;
            prop_assert!(fraction <= 1.0 / n as f64 + 0.05, "{} of keys moved with {} nodes", fraction, n);
        }

        /// The ranking is a permutation whose head is the owner.
        #[test]
        fn the_ranking_starts_with_the_owner(n in 1usize..10, key in proptest::collection::vec(any::<u8>(), 0..64)) {
            let ring = ring(&names(n));
            let ranked = ring.ranked(&key);
            let mut sorted = ranked.clone();
            sorted.sort_unstable();
            prop_assert_eq!(sorted, (0..n).collect::<Vec<_>>());
            prop_assert_eq!(ranked.first().copied(), ring.owner(&key));
        }
    }
}
