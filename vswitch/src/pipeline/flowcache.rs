//! The unified flow table: the verdict of a flow's first packet, kept so
//! that later packets skip the layers.
//!
//! Exact match on the flow key. Each entry remembers the generation of the
//! policy it was computed under; a policy change bumps the generation, and
//! an entry of an older one is a miss (and is recomputed), so a Block added
//! mid-flow stops the flow at its next packet. The table is bounded: when
//! full, the least recently used entry goes. Entries idle longer than the
//! timeout are misses too. Counters: hits, misses, evictions, and stale
//! (generation) misses. Time is passed in.
//!
//! The map is keyed with a per-table random seed (as the FDB is), since
//! keys come off the wire.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::time::{Duration, Instant};

/// Default bound and idle timeout.
pub const DEFAULT_CAPACITY: usize = 65_536;
pub const DEFAULT_IDLE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Misses because the entry's policy generation was old.
    pub stale: u64,
    pub evictions: u64,
}

#[derive(Debug)]
struct Entry<K, V> {
    value: V,
    generation: u64,
    last_used: Instant,
    /// Neighbours in the recency list (indices into `slots`).
    prev: Option<usize>,
    next: Option<usize>,
    key: K,
}

/// A bounded exact-match cache from flow keys to verdicts.
#[derive(Debug)]
pub struct FlowCache<K, V, S = std::hash::RandomState> {
    index: HashMap<K, usize, S>,
    slots: Vec<Option<Entry<K, V>>>,
    free: Vec<usize>,
    /// Least recently used.
    head: Option<usize>,
    /// Most recently used.
    tail: Option<usize>,
    capacity: usize,
    idle: Duration,
    stats: CacheStats,
}

impl<K: Hash + Eq + Copy, V: Clone> FlowCache<K, V> {
    pub fn new(capacity: usize, idle: Duration) -> Self {
        FlowCache::with_hasher(capacity, idle, std::hash::RandomState::new())
    }
}

impl<K: Hash + Eq + Copy, V: Clone, S: BuildHasher> FlowCache<K, V, S> {
    pub fn with_hasher(capacity: usize, idle: Duration, hasher: S) -> Self {
        FlowCache {
            index: HashMap::with_capacity_and_hasher(capacity.min(4096), hasher),
            slots: Vec::new(),
            free: Vec::new(),
            head: None,
            tail: None,
            capacity: capacity.max(1),
            idle,
            stats: CacheStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// The cached verdict for `key` if it was computed under `generation`
    /// and used within the idle timeout.
    pub fn get(&mut self, key: &K, generation: u64, now: Instant) -> Option<V> {
        self.get_mut(key, generation, now).map(|v| v.clone())
    }

    /// As [`FlowCache::get`], for updating the entry's value in place.
    pub fn get_mut(&mut self, key: &K, generation: u64, now: Instant) -> Option<&mut V> {
        let Some(&at) = self.index.get(key) else {
            self.stats.misses += 1;
            return None;
        };
        let entry = self.slots[at].as_ref().expect("indexed slot");
        if entry.generation != generation {
            self.stats.misses += 1;
            self.stats.stale += 1;
            self.remove_at(at);
            return None;
        }
        if now.saturating_duration_since(entry.last_used) >= self.idle {
            self.stats.misses += 1;
            self.remove_at(at);
            return None;
        }
        self.stats.hits += 1;
        self.unlink(at);
        self.push_back(at);
        let entry = self.slots[at].as_mut().expect("indexed slot");
        entry.last_used = now;
        Some(&mut entry.value)
    }

    /// What [`FlowCache::get`] would answer, changing nothing (no recency,
    /// no counters): for `trace`.
    pub fn peek(&self, key: &K, generation: u64, now: Instant) -> Option<&V> {
        let entry = self.slots[*self.index.get(key)?].as_ref()?;
        let live = entry.generation == generation
            && now.saturating_duration_since(entry.last_used) < self.idle;
        live.then_some(&entry.value)
    }

    /// Every entry, with how long it has been idle (stale ones included:
    /// they go at their next lookup).
    pub fn iter(&self, now: Instant) -> impl Iterator<Item = (&K, &V, Duration)> + '_ {
        self.slots
            .iter()
            .flatten()
            .map(move |e| (&e.key, &e.value, now.saturating_duration_since(e.last_used)))
    }

    /// Caches `value` for `key` under `generation`, evicting the least
    /// recently used entry when full.
    pub fn insert(&mut self, key: K, value: V, generation: u64, now: Instant) {
        if let Some(&at) = self.index.get(&key) {
            self.remove_at(at);
        }
        if self.index.len() >= self.capacity {
            if let Some(lru) = self.head {
                self.remove_at(lru);
                self.stats.evictions += 1;
            }
        }
        let entry = Entry {
            value,
            generation,
            last_used: now,
            prev: None,
            next: None,
            key,
        };
        let at = match self.free.pop() {
            Some(at) => {
                self.slots[at] = Some(entry);
                at
            }
            None => {
                self.slots.push(Some(entry));
                self.slots.len() - 1
            }
        };
        self.index.insert(key, at);
        self.push_back(at);
    }

    /// Drops every entry `pred` picks (e.g. the flows of a removed port).
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        let doomed: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.as_ref().filter(|e| !keep(&e.key, &e.value)).map(|_| i))
            .collect();
        for at in doomed {
            self.remove_at(at);
        }
    }

    fn remove_at(&mut self, at: usize) {
        self.unlink(at);
        if let Some(e) = self.slots[at].take() {
            self.index.remove(&e.key);
            self.free.push(at);
        }
    }

    fn unlink(&mut self, at: usize) {
        let (prev, next) = {
            let e = self.slots[at].as_ref().expect("linked slot");
            (e.prev, e.next)
        };
        match prev {
            Some(p) => self.slots[p].as_mut().expect("linked").next = next,
            None => self.head = next,
        }
        match next {
            Some(n) => self.slots[n].as_mut().expect("linked").prev = prev,
            None => self.tail = prev,
        }
        let e = self.slots[at].as_mut().expect("linked slot");
        e.prev = None;
        e.next = None;
    }

    fn push_back(&mut self, at: usize) {
        let old_tail = self.tail;
        {
            let e = self.slots[at].as_mut().expect("slot");
            e.prev = old_tail;
            e.next = None;
        }
        match old_tail {
            Some(t) => self.slots[t].as_mut().expect("linked").next = Some(at),
            None => self.head = Some(at),
        }
        self.tail = Some(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_and_a_policy_change_recomputes() {
        let now = Instant::now();
        let mut c: FlowCache<u32, &str> = FlowCache::new(16, DEFAULT_IDLE);
        assert_eq!(c.get(&1, 0, now), None);
        c.insert(1, "allow", 0, now);
        assert_eq!(c.get(&1, 0, now), Some("allow"));
        // A Block added: generation 1; the old verdict is not used.
        assert_eq!(c.get(&1, 1, now), None);
        assert_eq!(c.len(), 0);
        c.insert(1, "block", 1, now);
        assert_eq!(c.get(&1, 1, now), Some("block"));
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.stale), (2, 2, 1));
    }

    #[test]
    fn bounded_least_recently_used_goes_first() {
        let now = Instant::now();
        let mut c: FlowCache<u32, u32> = FlowCache::new(3, DEFAULT_IDLE);
        for k in 0..3 {
            c.insert(k, k, 0, now);
        }
        assert_eq!(c.get(&0, 0, now), Some(0)); // 1 is now the oldest
        c.insert(3, 3, 0, now);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&1, 0, now), None);
        assert_eq!(c.get(&0, 0, now), Some(0));
        assert_eq!(c.get(&2, 0, now), Some(2));
        assert_eq!(c.stats().evictions, 1);
        // Slots are reused, not grown.
        for k in 10..100 {
            c.insert(k, k, 0, now);
        }
        assert!(c.slots.len() <= 4);
    }

    #[test]
    fn idle_entries_expire_and_retain_drops() {
        let now = Instant::now();
        let mut c: FlowCache<u32, u32> = FlowCache::new(8, Duration::from_secs(10));
        c.insert(1, 1, 0, now);
        c.insert(2, 2, 0, now);
        assert_eq!(c.get(&1, 0, now + Duration::from_secs(9)), Some(1));
        assert_eq!(c.get(&2, 0, now + Duration::from_secs(10)), None);
        c.insert(3, 30, 0, now);
        c.retain(|_, v| *v != 30);
        assert_eq!(c.get(&3, 0, now), None);
        assert_eq!(c.len(), 1);
    }
}
