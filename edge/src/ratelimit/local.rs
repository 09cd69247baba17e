//! The in-process store: each client's algorithm state in a sharded map. It is the store when
//! `store = "local"`, and the per-edge ceiling when the shared store fails.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::Instant;

use super::algorithm::{decide, Decision, Policy, State};

const SHARDS: usize = 16;
/// Sweep a shard for forgotten clients after this many decisions in it.
const SWEEP_EVERY: u32 = 4096;
/// Above this many clients in a shard (spoofed identities, say), sweep now and then drop at random:
/// memory stays bounded at the cost of resetting some counters.
const MAX_CLIENTS_PER_SHARD: usize = 64 * 1024;

struct Entry {
    policy: Policy,
    state: Option<State>,
}

#[derive(Default)]
struct Shard {
    clients: HashMap<String, Entry>,
    since_sweep: u32,
}

pub struct LocalStore {
    shards: Vec<Mutex<Shard>>,
    started: Instant,
}

impl Default for LocalStore {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalStore {
    pub fn new() -> LocalStore {
        LocalStore { shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(), started: Instant::now() }
    }

    /// Microseconds on this store's monotonic clock.
    pub fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    pub fn decide(&self, key: &str, policy: &Policy) -> Decision {
        self.decide_at(key, policy, self.now_us())
    }

    /// As `decide`, at a given time (tests).
    pub fn decide_at(&self, key: &str, policy: &Policy, now_us: u64) -> Decision {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        let shard = &self.shards[hasher.finish() as usize % SHARDS];
        // A poisoned lock only means another request panicked mid-decision; the counters are still usable.
        let mut shard = shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        shard.since_sweep += 1;
        if shard.since_sweep >= SWEEP_EVERY || shard.clients.len() >= MAX_CLIENTS_PER_SHARD {
            shard.sweep(now_us);
        }
        if let Some(entry) = shard.clients.get_mut(key) {
            if entry.policy != *policy {
                // The configuration changed for this client: start from a clean slate.
                *entry = Entry { policy: *policy, state: None };
            }
            return decide(policy, &mut entry.state, now_us);
        }
        let mut state = None;
        let decision = decide(policy, &mut state, now_us);
        if state.is_some() {
            shard.clients.insert(key.to_string(), Entry { policy: *policy, state });
        }
        decision
    }

    /// Clients currently tracked (for tests and the curious).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map(|s| s.clients.len()).unwrap_or(0)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every client whose state expired before `now_us` (tests).
    pub fn sweep_at(&self, now_us: u64) {
        for shard in &self.shards {
            shard.lock().unwrap_or_else(|p| p.into_inner()).sweep(now_us);
        }
    }
}

impl Shard {
    fn sweep(&mut self, now_us: u64) {
        self.since_sweep = 0;
        self.clients.retain(|_, e| e.state.as_ref().is_some_and(|s| s.expires_at_us(&e.policy) > now_us));
        while self.clients.len() >= MAX_CLIENTS_PER_SHARD {
            let Some(victim) = self.clients.keys().next().cloned() else { break };
            self.clients.remove(&victim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::algorithm::Algorithm;

    #[test]
    fn clients_are_counted_separately_and_forgotten_when_whole() {
        let store = LocalStore::new();
        let p = Policy { algorithm: Algorithm::FixedWindow, limit: 2, period_us: 1_000_000, burst: 0 };
        assert!(store.decide_at("ip:a", &p, 10).allowed);
        assert!(store.decide_at("ip:a", &p, 10).allowed);
        assert!(!store.decide_at("ip:a", &p, 10).allowed);
        assert!(store.decide_at("ip:b", &p, 10).allowed, "another client has its own counter");
        assert_eq!(store.len(), 2);
        store.sweep_at(999_999);
        assert_eq!(store.len(), 2);
        store.sweep_at(1_000_000);
        assert!(store.is_empty(), "window over: nothing to remember");
    }

    #[test]
    fn a_changed_policy_starts_afresh() {
        let store = LocalStore::new();
        let one = Policy { algorithm: Algorithm::SlidingLog, limit: 1, period_us: 1_000_000, burst: 0 };
        let two = Policy { algorithm: Algorithm::TokenBucket, limit: 1, period_us: 1_000_000, burst: 2 };
        assert!(store.decide_at("k", &one, 0).allowed);
        assert!(!store.decide_at("k", &one, 0).allowed);
        assert!(store.decide_at("k", &two, 0).allowed);
        assert!(store.decide_at("k", &two, 0).allowed);
        assert!(!store.decide_at("k", &two, 0).allowed);
    }
}
