//! S3-FIFO eviction, weighed in bytes: plain code, no clock, no lock, no I/O (the storage wraps it).
//!
//! Yang, Zhang, Qiu, Yue, Vinayak, "FIFO queues are all you need for cache eviction", SOSP 2023:
//! newcomers enter a small FIFO (here 10 % of the bytes); one asked again while there moves to the
//! main FIFO when it reaches the small queue's head, one that was not is evicted and remembered in a
//! ghost FIFO. A newcomer the ghost remembers goes straight to the main queue. The main queue is a
//! FIFO with reinsertion: an object at its head that was asked since it was last there goes round
//! again with one use fewer (frequencies saturate at 3). On the VOD replay of `bench/run.sh`'s
//! scenario 5 this keeps more bytes of hits than LRU and than TinyLFU in front of LRU
//! (`bench/policies.py`, `BENCHMARKS.md`), because a viewer who zaps away after a segment or two
//! leaves objects that die in the small queue instead of pushing whole titles out.
//!
//! Queues hold (key, stamp) pairs and are cleaned lazily: removing or replacing an object does not
//! search the queue; the stale pair is skipped when it reaches the head, and a queue whose stale pairs
//! outnumber its live ones is compacted, so the queues' memory stays proportional to what is held.
//! The ghost keeps 64-bit hashes, not keys, and at most as many as the cache holds objects (and no
//! more bytes than its capacity): a hash collision only promotes a newcomer early, it never serves
//! the wrong object.

use std::collections::hash_map::{Entry as MapEntry, HashMap, RandomState};
use std::collections::VecDeque;
use std::hash::{BuildHasher, Hash};

/// Frequencies saturate here (two bits, as in the paper).
const MAX_FREQUENCY: u8 = 3;
/// The small queue's share of the capacity, in percent (the paper's 10 %).
const SMALL_SHARE_PERCENT: u64 = 10;
/// A queue is compacted when its stale pairs exceed its live ones by this many.
const COMPACT_SLACK: usize = 64;
/// The ghost forgets at most this many hashes per eviction beyond the one it learns, so that after a
/// mass purge it shrinks over the next evictions rather than all at once under the caller's lock.
const GHOST_TRIM_PER_CALL: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    Small,
    Main,
}

struct Slot<V> {
    value: V,
    weight: u64,
    frequency: u8,
    queue: Queue,
    stamp: u64,
}

/// A FIFO of (key, stamp); a pair is live while the map's slot for the key carries the same stamp.
struct Fifo<K> {
    pairs: VecDeque<(K, u64)>,
    live: usize,
}

impl<K> Fifo<K> {
    fn new() -> Self {
        Fifo { pairs: VecDeque::new(), live: 0 }
    }

    fn stale(&self) -> usize {
        self.pairs.len().saturating_sub(self.live)
    }
}

/// Recently evicted keys, as hashes with the weight they had.
struct Ghost {
    order: VecDeque<(u64, u64, u64)>,
    /// hash → (stamp, weight) of its live pair in `order`.
    members: HashMap<u64, (u64, u64)>,
    bytes: u64,
}

impl Ghost {
    fn new() -> Self {
        Ghost { order: VecDeque::new(), members: HashMap::new(), bytes: 0 }
    }

    /// Forgets `hash`; returns whether it was remembered.
    fn take(&mut self, hash: u64) -> bool {
        match self.members.remove(&hash) {
            Some((_, weight)) => {
                self.bytes = self.bytes.saturating_sub(weight);
                true
            }
            None => false,
        }
    }

    fn remember(&mut self, hash: u64, weight: u64, stamp: u64, max_bytes: u64, max_members: usize) {
        if let Some((_, old)) = self.members.insert(hash, (stamp, weight)) {
            self.bytes = self.bytes.saturating_sub(old);
        }
        self.bytes = self.bytes.saturating_add(weight);
        self.order.push_back((hash, stamp, weight));
        let mut budget = GHOST_TRIM_PER_CALL;
        while (self.bytes > max_bytes || self.members.len() > max_members) && budget > 0 {
            budget -= 1;
            let Some((hash, stamp, weight)) = self.order.pop_front() else { break };
            if self.members.get(&hash).is_some_and(|(live, _)| *live == stamp) {
                self.members.remove(&hash);
                self.bytes = self.bytes.saturating_sub(weight);
            }
        }
        if self.order.len() > self.members.len() * 2 + COMPACT_SLACK {
            let members = &self.members;
            self.order.retain(|(hash, stamp, _)| members.get(hash).is_some_and(|(live, _)| live == stamp));
        }
    }
}

/// One step of making room.
enum Step<K, V> {
    Evicted(K, V),
    /// The small queue's head moved to the main queue; nothing left the cache.
    Promoted,
    /// Nothing live to take (cannot happen while bytes are held; ends the loop rather than spin).
    Empty,
}

/// What an insert did.
pub struct Inserted<K, V> {
    /// Whether the object is held now: false when it weighs more than the whole capacity, or when
    /// making room took it out again.
    pub stored: bool,
    /// Objects pushed out to make room (the newcomer among them when nothing was worth less), and the
    /// value the insert replaced, if any. The caller drops them, outside whatever lock it holds.
    pub evicted: Vec<(K, V)>,
    pub replaced: Option<V>,
}

/// An S3-FIFO cache of values weighed in bytes.
pub struct S3Fifo<K, V> {
    capacity: u64,
    small_target: u64,
    entries: HashMap<K, Slot<V>>,
    small: Fifo<K>,
    main: Fifo<K>,
    small_bytes: u64,
    main_bytes: u64,
    ghost: Ghost,
    hasher: RandomState,
    next_stamp: u64,
}

impl<K: Hash + Eq + Clone, V> S3Fifo<K, V> {
    pub fn new(capacity_bytes: u64) -> Self {
        S3Fifo {
            capacity: capacity_bytes,
            small_target: capacity_bytes / 100 * SMALL_SHARE_PERCENT,
            entries: HashMap::new(),
            small: Fifo::new(),
            main: Fifo::new(),
            small_bytes: 0,
            main_bytes: 0,
            ghost: Ghost::new(),
            hasher: RandomState::new(),
            next_stamp: 0,
        }
    }

    /// The value under `key`, counted as a use.
    pub fn get(&mut self, key: &K) -> Option<&V> {
        let slot = self.entries.get_mut(key)?;
        slot.frequency = (slot.frequency + 1).min(MAX_FREQUENCY);
        Some(&slot.value)
    }

    /// The value under `key`, not counted as a use.
    pub fn peek(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|slot| &slot.value)
    }

    /// Stores `value` under `key`, replacing what was there (which keeps its place and uses), then
    /// evicts until the held bytes fit the capacity. An object at a queue's head for which `is_dead`
    /// holds (the caller's clock says it can no longer be served) is evicted whatever its uses.
    /// Weights below 1 count as 1, so that every object takes room.
    pub fn insert(&mut self, key: K, value: V, weight: u64, is_dead: impl Fn(&V) -> bool) -> Inserted<K, V> {
        let weight = weight.max(1);
        if weight > self.capacity {
            let replaced = self.remove(&key);
            return Inserted { stored: false, evicted: vec![(key, value)], replaced };
        }
        let stamp = self.stamp();
        let probe = key.clone();
        let replaced = match self.entries.entry(key.clone()) {
            MapEntry::Occupied(mut occupied) => {
                let slot = occupied.get_mut();
                let bytes = match slot.queue {
                    Queue::Small => &mut self.small_bytes,
                    Queue::Main => &mut self.main_bytes,
                };
                *bytes = bytes.saturating_sub(slot.weight).saturating_add(weight);
                slot.weight = weight;
                Some(std::mem::replace(&mut slot.value, value))
            }
            MapEntry::Vacant(vacant) => {
                let hash = self.hasher.hash_one(vacant.key());
                let queue = if self.ghost.take(hash) { Queue::Main } else { Queue::Small };
                vacant.insert(Slot { value, weight, frequency: 0, queue, stamp });
                let (fifo, bytes) = match queue {
                    Queue::Small => (&mut self.small, &mut self.small_bytes),
                    Queue::Main => (&mut self.main, &mut self.main_bytes),
                };
                fifo.pairs.push_back((key, stamp));
                fifo.live += 1;
                *bytes = bytes.saturating_add(weight);
                None
            }
        };
        let mut evicted = Vec::new();
        while self.small_bytes.saturating_add(self.main_bytes) > self.capacity {
            // The small queue keeps its newest object while the main queue has something to give:
            // else an object heavier than the small queue's share would leave as soon as it came,
            // and need a second fetch (from the ghost) to be kept at all.
            let small_over = self.small_bytes > self.small_target && self.small.live > 1;
            let from_small = self.small.live > 0 && (small_over || self.main.live == 0);
            let step = if from_small { self.evict_from_small(&is_dead) } else { self.evict_from_main(&is_dead) };
            match step {
                Step::Evicted(key, value) => evicted.push((key, value)),
                Step::Promoted => {}
                Step::Empty => break,
            }
        }
        let stored = self.entries.contains_key(&probe);
        Inserted { stored, evicted, replaced }
    }

    /// Forgets `key`; returns its value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let slot = self.entries.remove(key)?;
        let (fifo, bytes) = match slot.queue {
            Queue::Small => (&mut self.small, &mut self.small_bytes),
            Queue::Main => (&mut self.main, &mut self.main_bytes),
        };
        fifo.live = fifo.live.saturating_sub(1);
        *bytes = bytes.saturating_sub(slot.weight);
        Self::compact(fifo, &self.entries);
        Some(slot.value)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held, by the weights given at insert.
    pub fn weighted_bytes(&self) -> u64 {
        self.small_bytes.saturating_add(self.main_bytes)
    }

    fn stamp(&mut self) -> u64 {
        self.next_stamp = self.next_stamp.wrapping_add(1);
        self.next_stamp
    }

    /// Takes the small queue's head: promoted to the main queue if it was asked again, else evicted
    /// into the ghost.
    fn evict_from_small(&mut self, is_dead: &impl Fn(&V) -> bool) -> Step<K, V> {
        let Some((key, stamp)) = Self::pop_live(&mut self.small, &self.entries, Queue::Small) else {
            return Step::Empty;
        };
        self.small.live = self.small.live.saturating_sub(1);
        let Some(slot) = self.entries.get_mut(&key) else { return Step::Empty };
        self.small_bytes = self.small_bytes.saturating_sub(slot.weight);
        if slot.frequency > 0 && !is_dead(&slot.value) {
            slot.frequency = 0;
            slot.queue = Queue::Main;
            self.main_bytes = self.main_bytes.saturating_add(slot.weight);
            self.main.pairs.push_back((key, stamp));
            self.main.live += 1;
            return Step::Promoted;
        }
        let Some(slot) = self.entries.remove(&key) else { return Step::Empty };
        let hash = self.hasher.hash_one(&key);
        let ghost_stamp = self.stamp();
        let max_members = self.entries.len().max(1);
        self.ghost.remember(hash, slot.weight, ghost_stamp, self.capacity, max_members);
        Step::Evicted(key, slot.value)
    }

    /// Takes the main queue's head, sending round again (one use fewer) whatever was asked since.
    fn evict_from_main(&mut self, is_dead: &impl Fn(&V) -> bool) -> Step<K, V> {
        loop {
            let Some((key, stamp)) = Self::pop_live(&mut self.main, &self.entries, Queue::Main) else {
                return Step::Empty;
            };
            let Some(slot) = self.entries.get_mut(&key) else { return Step::Empty };
            if slot.frequency > 0 && !is_dead(&slot.value) {
                slot.frequency -= 1;
                self.main.pairs.push_back((key, stamp));
                continue;
            }
            self.main.live = self.main.live.saturating_sub(1);
            let Some(slot) = self.entries.remove(&key) else { return Step::Empty };
            self.main_bytes = self.main_bytes.saturating_sub(slot.weight);
            return Step::Evicted(key, slot.value);
        }
    }

    /// Pops pairs off `fifo` until a live one (its key's slot is in `queue` with the same stamp).
    fn pop_live(fifo: &mut Fifo<K>, entries: &HashMap<K, Slot<V>>, queue: Queue) -> Option<(K, u64)> {
        while let Some((key, stamp)) = fifo.pairs.pop_front() {
            if entries.get(&key).is_some_and(|slot| slot.queue == queue && slot.stamp == stamp) {
                return Some((key, stamp));
            }
        }
        None
    }

    fn compact(fifo: &mut Fifo<K>, entries: &HashMap<K, Slot<V>>) {
        if fifo.stale() <= fifo.live + COMPACT_SLACK {
            return;
        }
        fifo.pairs.retain(|(key, stamp)| entries.get(key).is_some_and(|slot| slot.stamp == *stamp));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys<V>(cache: &S3Fifo<u32, V>) -> Vec<u32> {
        let mut held: Vec<u32> = cache.entries.keys().copied().collect();
        held.sort_unstable();
        held
    }

    #[test]
    fn holds_no_more_bytes_than_its_capacity() {
        let mut cache = S3Fifo::new(1000);
        for i in 0..500u32 {
            let weight = u64::from(i % 7) * 40 + 10;
            let inserted = cache.insert(i, i, weight, |_| false);
            assert!(inserted.stored);
            assert!(cache.weighted_bytes() <= 1000, "{} after {i}", cache.weighted_bytes());
            if i % 3 == 0 {
                cache.get(&(i / 2));
            }
        }
        let counted: u64 = cache.entries.values().map(|slot| slot.weight).sum();
        assert_eq!(counted, cache.weighted_bytes());
    }

    #[test]
    fn one_hit_wonders_leave_before_objects_asked_again() {
        // Capacity for ten objects of 100 bytes; the small queue holds one of them.
        let mut cache = S3Fifo::new(1000);
        for i in 0..10u32 {
            cache.insert(i, (), 100, |_| false);
        }
        for i in 0..10u32 {
            assert!(cache.get(&i).is_some());
        }
        // A scan of objects asked once each pushes out only other objects of the scan, after the
        // first overflow: it moves the ten to the main queue with their uses cleared (as the paper
        // does), and the main queue's head makes room for the small queue's 10 %.
        for i in 100..150u32 {
            cache.insert(i, (), 100, |_| false);
        }
        let held = keys(&cache);
        assert_eq!(held, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 149], "a scan pushed out popular objects");
    }

    #[test]
    fn a_key_the_ghost_remembers_goes_to_the_main_queue() {
        let mut cache = S3Fifo::new(1000);
        cache.insert(1u32, (), 100, |_| false);
        for i in 10..20u32 {
            cache.insert(i, (), 100, |_| false);
        }
        assert!(cache.peek(&1).is_none(), "evicted from the small queue");
        cache.insert(1, (), 100, |_| false);
        assert_eq!(cache.entries.get(&1).map(|slot| slot.queue), Some(Queue::Main));
        // A scan now does not push it out.
        for i in 30..60u32 {
            cache.insert(i, (), 100, |_| false);
        }
        assert!(cache.peek(&1).is_some());
    }

    #[test]
    fn an_object_heavier_than_the_capacity_is_not_stored_and_does_not_flush_the_cache() {
        let mut cache = S3Fifo::new(1000);
        cache.insert(1u32, "a", 400, |_| false);
        let inserted = cache.insert(2, "b", 1001, |_| false);
        assert!(!inserted.stored);
        assert_eq!(inserted.evicted.len(), 1);
        assert_eq!(cache.peek(&1), Some(&"a"));
        assert!(cache.peek(&2).is_none());
    }

    #[test]
    fn an_object_heavier_than_the_small_queues_share_is_kept_on_its_first_fetch() {
        let mut cache = S3Fifo::new(1000);
        for i in 0..10u32 {
            cache.insert(i, (), 100, |_| false);
            cache.get(&i);
        }
        cache.insert(10, (), 100, |_| false);
        // 300 bytes: three times the small queue's share.
        let inserted = cache.insert(99, (), 300, |_| false);
        assert!(inserted.stored);
        assert!(cache.peek(&99).is_some());
        assert!(cache.weighted_bytes() <= 1000);
    }

    #[test]
    fn an_object_past_its_lifetime_leaves_at_a_queues_head_whatever_its_uses() {
        // The value says whether the caller's clock finds it dead. All ten were asked again.
        let mut cache = S3Fifo::new(1000);
        for i in 0..10u32 {
            cache.insert(i, i == 5, 100, |dead| *dead);
            cache.get(&i);
        }
        // Making room walks the small queue: 0 to 4 move to the main queue, 5 leaves though it was
        // asked (alive, it would have moved too, and 0 would have left from the main queue).
        let inserted = cache.insert(10, false, 100, |dead| *dead);
        let evicted: Vec<u32> = inserted.evicted.iter().map(|(key, _)| *key).collect();
        assert_eq!(evicted, vec![5]);
    }

    #[test]
    fn replacing_keeps_the_place_and_reweighs() {
        let mut cache = S3Fifo::new(1000);
        cache.insert(1u32, "old", 100, |_| false);
        let inserted = cache.insert(1, "new", 300, |_| false);
        assert_eq!(inserted.replaced, Some("old"));
        assert_eq!(cache.peek(&1), Some(&"new"));
        assert_eq!(cache.weighted_bytes(), 300);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.small.pairs.len(), 1);
    }

    #[test]
    fn queues_and_ghost_stay_proportional_to_what_is_held() {
        let mut cache = S3Fifo::new(10_000);
        for round in 0..20_000u32 {
            cache.insert(round % 97, round, 100, |_| false);
            if round % 2 == 0 {
                cache.remove(&(round % 89));
            }
            cache.insert(1_000_000 + round, round, 50, |_| false);
        }
        let held = cache.len();
        assert!(cache.small.pairs.len() <= 2 * held + 2 * COMPACT_SLACK, "{}", cache.small.pairs.len());
        assert!(cache.main.pairs.len() <= 2 * held + 2 * COMPACT_SLACK, "{}", cache.main.pairs.len());
        assert!(cache.ghost.members.len() <= held.max(1));
        assert!(cache.ghost.order.len() <= 2 * held + COMPACT_SLACK + 1);
        assert!(cache.ghost.bytes <= 10_000);
    }

    #[test]
    fn removing_frees_its_bytes_and_a_stale_pair_is_skipped() {
        let mut cache = S3Fifo::new(300);
        cache.insert(1u32, (), 100, |_| false);
        cache.insert(2, (), 100, |_| false);
        assert_eq!(cache.remove(&1), Some(()));
        assert_eq!(cache.weighted_bytes(), 100);
        cache.insert(1, (), 100, |_| false);
        cache.insert(3, (), 100, |_| false);
        // Full: the next insert evicts the oldest live pair (2), not the stale pair of 1.
        let inserted = cache.insert(4, (), 100, |_| false);
        let evicted: Vec<u32> = inserted.evicted.iter().map(|(key, _)| *key).collect();
        assert_eq!(evicted, vec![2]);
        assert!(cache.peek(&1).is_some());
    }
}
