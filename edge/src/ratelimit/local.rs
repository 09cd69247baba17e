//! The in-process store: each client's algorithm state in a sharded, size-bounded map. It is the store
//! when `store = "local"`, and the per-edge ceiling when the shared store fails.
//!
//! Each shard keeps its clients in a hash map plus a least-recently-seen list (indices into a dense
//! slab), so every decision does a bounded amount of work however many clients there are:
//! - **Expiry is lazy.** Each decision first forgets up to `EXPIRE_PER_DECISION` of the shard's least
//!   recently seen clients whose state has expired (back to "never seen", so forgetting changes no
//!   decision).
//! - **The bound is hard.** A new client in a full shard takes the place of an expired one among the
//!   `EVICT_SCAN` least recently seen, or else of the least recently seen client. That is the one
//!   trade-off: a client whose limit still applied starts afresh when it returns. It takes at least
//!   `capacity / SHARDS` other identities in its shard after its last request, each of which got a
//!   quota of its own, so spoofing identities to get evicted earns less than the spoofed identities
//!   already did; a client that keeps asking is never the least recently seen. Such evictions are
//!   counted and logged.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::algorithm::{decide, Decision, Policy, State};

const SHARDS: usize = 16;
/// Clients remembered by default, over all shards: `rate_limit.local_max_clients`.
pub const DEFAULT_MAX_CLIENTS: usize = 1 << 20;
/// Expired clients forgotten (at most) before each decision: more than one, so that the map shrinks
/// back when a burst of identities has passed even while new ones keep arriving.
const EXPIRE_PER_DECISION: usize = 2;
/// How far from the least recently seen end a full shard looks for an expired client to replace.
const EVICT_SCAN: usize = 8;
/// A live eviction is logged at most this often (each is counted).
const EVICTION_LOG_INTERVAL_US: u64 = 10_000_000;
/// "No node" in the list links.
const NIL: u32 = u32::MAX;

struct Node {
    /// Shared with the index, so the key is stored once.
    key: Arc<str>,
    policy: Policy,
    state: Option<State>,
    /// Neighbours in the least-recently-seen list: `newer` towards `Shard::newest`.
    newer: u32,
    older: u32,
}

impl Node {
    /// Back to "never seen" at `now_us`: forgetting it changes no decision.
    fn expired(&self, now_us: u64) -> bool {
        self.state.as_ref().is_none_or(|s| s.expires_at_us(&self.policy) <= now_us)
    }
}

struct Shard {
    capacity: usize,
    index: HashMap<Arc<str>, u32>,
    /// Dense: a removal moves the last node into the hole, so memory follows the number of clients.
    nodes: Vec<Node>,
    newest: u32,
    oldest: u32,
    /// Nodes looked at by expiry and eviction: the unit tests' measure of work per decision.
    #[cfg(test)]
    examined: u64,
}

pub struct LocalStore {
    shards: Vec<Mutex<Shard>>,
    /// Picks the shard; seeded per process so that clients cannot aim identities at one shard.
    hasher: RandomState,
    started: Instant,
    evicted_live: AtomicU64,
    next_eviction_log_us: AtomicU64,
}

impl Default for LocalStore {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalStore {
    pub fn new() -> LocalStore {
        LocalStore::with_capacity(DEFAULT_MAX_CLIENTS)
    }

    /// Remembers at most `max_clients` clients (rounded up to a multiple of the shard count).
    pub fn with_capacity(max_clients: usize) -> LocalStore {
        LocalStore::with_shards(SHARDS, max_clients)
    }

    fn with_shards(shards: usize, max_clients: usize) -> LocalStore {
        let shards = shards.max(1);
        // Node indices are u32 (NIL excluded); the configuration allows far fewer.
        let per_shard = max_clients.div_ceil(shards).clamp(1, (NIL - 1) as usize);
        LocalStore {
            shards: (0..shards).map(|_| Mutex::new(Shard::new(per_shard))).collect(),
            hasher: RandomState::new(),
            started: Instant::now(),
            evicted_live: AtomicU64::new(0),
            next_eviction_log_us: AtomicU64::new(0),
        }
    }

    /// Microseconds on this store's monotonic clock.
    pub fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    pub fn decide(&self, key: &str, policy: &Policy) -> Decision {
        self.decide_at(key, policy, self.now_us())
    }

    /// As `decide`, at a given time (tests and benchmarks).
    pub fn decide_at(&self, key: &str, policy: &Policy, now_us: u64) -> Decision {
        let shard = &self.shards[self.hasher.hash_one(key) as usize % self.shards.len()];
        // A poisoned lock only means another request panicked mid-decision; the counters are still usable.
        let mut shard = shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        shard.expire_oldest(now_us);
        if let Some(&i) = shard.index.get(key) {
            let node = &mut shard.nodes[i as usize];
            if node.policy != *policy {
                // The configuration changed for this client: start from a clean slate.
                node.policy = *policy;
                node.state = None;
            }
            let decision = decide(policy, &mut node.state, now_us);
            shard.touch(i);
            return decision;
        }
        let mut state = None;
        let decision = decide(policy, &mut state, now_us);
        if state.is_some() {
            let evicted_live = shard.nodes.len() >= shard.capacity && shard.evict(now_us);
            shard.insert_newest(key, *policy, state);
            drop(shard);
            if evicted_live {
                self.count_live_eviction(now_us);
            }
        }
        decision
    }

    /// Clients currently tracked (for tests and the curious).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map(|s| s.nodes.len()).unwrap_or(0)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Clients forgotten while their limit still applied, because their shard was full.
    pub fn evicted_live(&self) -> u64 {
        self.evicted_live.load(Ordering::Relaxed)
    }

    fn count_live_eviction(&self, now_us: u64) {
        let total = self.evicted_live.fetch_add(1, Ordering::Relaxed) + 1;
        let next = self.next_eviction_log_us.load(Ordering::Relaxed);
        if now_us >= next
            && self
                .next_eviction_log_us
                .compare_exchange(
                    next,
                    now_us.saturating_add(EVICTION_LOG_INTERVAL_US),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            tracing::warn!(
                evicted_live = total,
                "local rate-limit store full: forgetting clients whose limits still apply \
                 (raise rate_limit.local_max_clients if these are real clients)"
            );
        }
    }
}

impl Shard {
    fn new(capacity: usize) -> Shard {
        Shard {
            capacity,
            index: HashMap::new(),
            nodes: Vec::new(),
            newest: NIL,
            oldest: NIL,
            #[cfg(test)]
            examined: 0,
        }
    }

    /// Forgets up to `EXPIRE_PER_DECISION` expired clients from the least recently seen end.
    fn expire_oldest(&mut self, now_us: u64) {
        for _ in 0..EXPIRE_PER_DECISION {
            let oldest = self.oldest;
            if oldest == NIL {
                return;
            }
            #[cfg(test)]
            {
                self.examined += 1;
            }
            if !self.nodes[oldest as usize].expired(now_us) {
                return;
            }
            self.remove(oldest);
        }
    }

    /// Makes room for one client: an expired one among the `EVICT_SCAN` least recently seen goes, or
    /// else the least recently seen. True when the one that went was still live.
    fn evict(&mut self, now_us: u64) -> bool {
        let mut at = self.oldest;
        for _ in 0..EVICT_SCAN {
            if at == NIL {
                break;
            }
            #[cfg(test)]
            {
                self.examined += 1;
            }
            if self.nodes[at as usize].expired(now_us) {
                self.remove(at);
                return false;
            }
            at = self.nodes[at as usize].newer;
        }
        let oldest = self.oldest;
        if oldest == NIL {
            return false;
        }
        self.remove(oldest);
        true
    }

    fn insert_newest(&mut self, key: &str, policy: Policy, state: Option<State>) {
        let key: Arc<str> = Arc::from(key);
        let i = self.nodes.len() as u32;
        self.nodes.push(Node { key: Arc::clone(&key), policy, state, newer: NIL, older: NIL });
        self.index.insert(key, i);
        self.push_newest(i);
    }

    fn touch(&mut self, i: u32) {
        if self.newest != i {
            self.unlink(i);
            self.push_newest(i);
        }
    }

    fn push_newest(&mut self, i: u32) {
        let previous = self.newest;
        let node = &mut self.nodes[i as usize];
        node.newer = NIL;
        node.older = previous;
        if previous == NIL {
            self.oldest = i;
        } else {
            self.nodes[previous as usize].newer = i;
        }
        self.newest = i;
    }

    fn unlink(&mut self, i: u32) {
        let Node { newer, older, .. } = self.nodes[i as usize];
        if newer == NIL {
            self.newest = older;
        } else {
            self.nodes[newer as usize].older = older;
        }
        if older == NIL {
            self.oldest = newer;
        } else {
            self.nodes[older as usize].newer = newer;
        }
    }

    fn remove(&mut self, i: u32) {
        self.unlink(i);
        let removed = self.nodes.swap_remove(i as usize);
        self.index.remove(&removed.key);
        if (i as usize) < self.nodes.len() {
            // The former last node now sits at `i`: repoint its neighbours and its index entry.
            let Node { newer, older, .. } = self.nodes[i as usize];
            if newer == NIL {
                self.newest = i;
            } else {
                self.nodes[newer as usize].older = i;
            }
            if older == NIL {
                self.oldest = i;
            } else {
                self.nodes[older as usize].newer = i;
            }
            let Shard { index, nodes, .. } = self;
            if let Some(slot) = index.get_mut(&nodes[i as usize].key) {
                *slot = i;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::algorithm::Algorithm;

    const SECOND: u64 = 1_000_000;

    fn fixed(limit: u64, period_us: u64) -> Policy {
        Policy { algorithm: Algorithm::FixedWindow, limit, period_us, burst: 0 }
    }

    /// The shard's clients from least to most recently seen, checking every link and index entry.
    fn order(store: &LocalStore) -> Vec<String> {
        let shard = store.shards[0].lock().expect("lock");
        let mut out = Vec::new();
        let (mut at, mut newer_of_previous) = (shard.oldest, NIL);
        while at != NIL {
            let node = &shard.nodes[at as usize];
            assert_eq!(shard.index[&node.key], at, "index of {}", node.key);
            if newer_of_previous != NIL {
                assert_eq!(newer_of_previous, at);
            }
            out.push(node.key.to_string());
            newer_of_previous = node.newer;
            at = node.newer;
        }
        assert_eq!(out.len(), shard.nodes.len(), "every node is on the list once");
        assert_eq!(shard.index.len(), shard.nodes.len());
        out
    }

    #[test]
    fn clients_are_counted_separately_and_forgotten_when_whole() {
        let store = LocalStore::with_shards(1, 100);
        let p = fixed(2, SECOND);
        assert!(store.decide_at("ip:a", &p, 10).allowed);
        assert!(store.decide_at("ip:a", &p, 10).allowed);
        assert!(!store.decide_at("ip:a", &p, 10).allowed);
        assert!(store.decide_at("ip:b", &p, 10).allowed, "another client has its own counter");
        assert_eq!(store.len(), 2);
        store.decide_at("ip:c", &p, SECOND - 1);
        assert_eq!(store.len(), 3, "still in the window: nothing forgotten");
        // The window is over for a and b: the next decision forgets them, without a sweep.
        assert!(store.decide_at("ip:a", &p, SECOND).allowed, "a new window");
        assert_eq!(order(&store), ["ip:c", "ip:a"]);
        assert_eq!(store.evicted_live(), 0);
    }

    #[test]
    fn a_changed_policy_starts_afresh() {
        let store = LocalStore::new();
        let one = Policy { algorithm: Algorithm::SlidingLog, limit: 1, period_us: SECOND, burst: 0 };
        let two = Policy { algorithm: Algorithm::TokenBucket, limit: 1, period_us: SECOND, burst: 2 };
        assert!(store.decide_at("k", &one, 0).allowed);
        assert!(!store.decide_at("k", &one, 0).allowed);
        assert!(store.decide_at("k", &two, 0).allowed);
        assert!(store.decide_at("k", &two, 0).allowed);
        assert!(!store.decide_at("k", &two, 0).allowed);
    }

    /// Robustness regression (item 5): once a shard held 64K clients, every decision in it swept the
    /// whole shard, so a client rotating identities made each of its requests cost a scan (about
    /// 2-3.5 ms at 1M clients, BENCHMARKS.md). Now a decision looks at a bounded number of clients
    /// however full the shard is, and the shard never grows past its bound.
    #[test]
    fn a_full_shard_costs_constant_work_per_request_not_a_scan() {
        let capacity = 4096;
        let store = LocalStore::with_shards(1, capacity);
        let hourly = fixed(100, 3600 * SECOND);
        for i in 0..capacity {
            store.decide_at(&format!("ip:fill-{i}"), &hourly, 1);
        }
        let before = store.shards[0].lock().expect("lock").examined;
        let flood = 3 * capacity;
        for i in 0..flood {
            assert!(store.decide_at(&format!("ip:spoofed-{i}"), &hourly, 2).allowed);
        }
        let examined = store.shards[0].lock().expect("lock").examined - before;
        let per_decision = (EXPIRE_PER_DECISION + EVICT_SCAN) as u64;
        assert!(examined <= flood as u64 * per_decision, "{examined} nodes examined for {flood} decisions");
        assert_eq!(store.len(), capacity, "bounded");
        assert_eq!(store.evicted_live(), flood as u64, "every one of them still limited: each eviction counted");
    }

    #[test]
    fn a_full_shard_forgets_the_least_recently_seen_client() {
        let store = LocalStore::with_shards(1, 3);
        let p = fixed(1, 3600 * SECOND);
        for key in ["a", "b", "c"] {
            assert!(store.decide_at(key, &p, 0).allowed);
        }
        // `a` keeps asking (refused), so `b` is now the least recently seen.
        assert!(!store.decide_at("a", &p, 1).allowed);
        assert_eq!(order(&store), ["b", "c", "a"]);
        assert!(store.decide_at("d", &p, 2).allowed);
        assert_eq!(order(&store), ["c", "a", "d"]);
        assert!(!store.decide_at("a", &p, 3).allowed, "a client that keeps asking keeps its state");
        assert!(store.decide_at("b", &p, 4).allowed, "the documented trade-off: b was forgotten");
        assert_eq!(store.evicted_live(), 2);
    }

    #[test]
    fn a_full_shard_replaces_an_expired_client_before_a_live_one() {
        let store = LocalStore::with_shards(1, 3);
        let hourly = fixed(1, 3600 * SECOND);
        let short = fixed(1, SECOND);
        // Least recently seen first: a live hourly client, then one whose second is over.
        assert!(store.decide_at("hourly", &hourly, 0).allowed);
        assert!(store.decide_at("short", &short, 0).allowed);
        assert!(store.decide_at("other", &hourly, 0).allowed);
        // At 1 s `short` has expired but is not the oldest, so lazy expiry stops at `hourly`; the
        // newcomer takes `short`'s place and `hourly` keeps its (used-up) quota.
        assert!(store.decide_at("new", &hourly, SECOND).allowed);
        assert_eq!(order(&store), ["hourly", "other", "new"]);
        assert!(!store.decide_at("hourly", &hourly, SECOND).allowed);
        assert_eq!(store.evicted_live(), 0);
    }

    #[test]
    fn expired_clients_drain_while_traffic_flows() {
        let store = LocalStore::with_shards(1, 10_000);
        let p = fixed(5, SECOND);
        for i in 0..1000 {
            store.decide_at(&format!("burst-{i}"), &p, 0);
        }
        // One client asking on its own, after the burst's window: two forgotten per decision.
        for step in 0..500 {
            store.decide_at("steady", &p, SECOND + step);
        }
        assert_eq!(store.len(), 1);
    }

    /// Removing from any position keeps the list and index consistent (swap-remove moves nodes).
    #[test]
    fn links_stay_consistent_through_many_evictions_and_touches() {
        let store = LocalStore::with_shards(1, 7);
        let hourly = fixed(1000, 3600 * SECOND);
        let short = fixed(1000, 1000);
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut now = 0;
        for _ in 0..5000 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let r = seed >> 33;
            now += r % 700;
            let policy = if r.is_multiple_of(3) { short } else { hourly };
            store.decide_at(&format!("k{}", r % 23), &policy, now);
            let keys = order(&store);
            assert!(keys.len() <= 7);
            assert_eq!(keys.last().map(String::as_str), Some(format!("k{}", r % 23).as_str()), "newest last");
        }
    }

    #[test]
    fn the_bound_is_spread_over_the_shards() {
        let store = LocalStore::with_capacity(100);
        let hourly = fixed(1, 3600 * SECOND);
        for i in 0..10_000 {
            store.decide_at(&format!("ip:{i}"), &hourly, 0);
        }
        // 100 over 16 shards: 7 each.
        assert_eq!(store.len(), 16 * 7);
    }
}
