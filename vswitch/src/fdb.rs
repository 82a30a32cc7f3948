//! Per-network MAC learning table (forwarding database).
//!
//! Contract: one `Fdb` per network, owned by the single datapath thread, so
//! there are no locks inside. Time is always passed in; `now` must not go
//! backwards between calls (as `Instant::now()` on one thread does).
//!
//! Layout and costs. Entries live in a slab (`Vec`) threaded by a doubly
//! linked list in order of last sight, least recent at the head; a hash map
//! from MAC to slab index finds them.
//!
//! - `learn` of a known MAC: one hash lookup and an O(1) splice to the tail;
//!   no allocation. This runs for every frame.
//! - `learn` of a new MAC when full: expired entries are all at the head, so
//!   dropping them costs O(expired) (each entry is dropped once: amortised
//!   O(1)); if still full, the head is the least recently seen entry and is
//!   evicted in O(1). A flood of new source MACs therefore costs one map
//!   insert and one map remove per frame, never a sweep of the table.
//! - `age`: O(expired), same walk from the head.
//! - `forget_port`, `entries`: O(n), control path only.
//!
//! The slab and map grow (allocate) only while the table grows towards its
//! peak size; freed slots are reused through a free list kept in the slots.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use crate::wire::MacAddr;

/// Aging and size limits of one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbConfig {
    /// An entry not seen for this long is gone. `Duration::ZERO` expires
    /// everything at once (the switch floods like a hub).
    pub aging: Duration,
    /// At most this many entries; 0 disables learning.
    pub max_entries: usize,
}

impl Default for FdbConfig {
    fn default() -> Self {
        FdbConfig {
            aging: Duration::from_secs(300),
            max_entries: 8192,
        }
    }
}

/// What `learn` did with a source MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learn<P> {
    /// A MAC not in the table (or only as an expired entry) was added.
    New,
    /// A known MAC was seen again on the same port.
    Refreshed,
    /// A known MAC now appears on another port (a VM migrated, or a loop).
    Moved { from: P },
    /// The table was full: `victim`, the least recently seen MAC, made room.
    Evicted { victim: MacAddr },
    /// Multicast, broadcast or all-zero source, or learning disabled.
    Ignored,
}

/// Slab index meaning "none".
const NIL: u32 = u32::MAX;
/// Slab indexes are u32 to keep nodes small; `NIL` is reserved.
const MAX_CAPACITY: usize = (u32::MAX - 1) as usize;

struct Node<P> {
    mac: MacAddr,
    port: P,
    last_seen: Instant,
    /// Towards the head (less recently seen). Unused in free slots.
    prev: u32,
    /// Towards the tail (more recently seen); the free list in free slots.
    next: u32,
}

/// MAC learning table; `P` is the port id type (the datapath uses `u32`).
pub struct Fdb<P: Copy + Eq> {
    cfg: FdbConfig,
    index: HashMap<u64, u32, MacHashBuilder>,
    nodes: Vec<Node<P>>,
    /// Least recently seen entry.
    head: u32,
    /// Most recently seen entry.
    tail: u32,
    /// First free slot in `nodes`, chained through `next`.
    free: u32,
}

impl<P: Copy + Eq> Fdb<P> {
    pub fn new(cfg: FdbConfig) -> Self {
        Fdb {
            cfg: clamp(cfg),
            index: HashMap::with_hasher(MacHashBuilder),
            nodes: Vec::new(),
            head: NIL,
            tail: NIL,
            free: NIL,
        }
    }

    pub fn config(&self) -> FdbConfig {
        self.cfg
    }

    /// Applies new limits. A smaller `max_entries` evicts the least recently
    /// seen entries at once; a shorter `aging` takes effect on the next
    /// lookup.
    pub fn set_config(&mut self, cfg: FdbConfig) {
        self.cfg = clamp(cfg);
        while self.index.len() > self.cfg.max_entries {
            self.evict_head();
        }
    }

    /// Records that `mac` was seen as a source on `port` at `now`.
    pub fn learn(&mut self, mac: MacAddr, port: P, now: Instant) -> Learn<P> {
        if mac.is_multicast() || mac.is_zero() {
            return Learn::Ignored;
        }
        let key = mac.to_u64();
        if let Some(&idx) = self.index.get(&key) {
            let aging = self.cfg.aging;
            let node = &mut self.nodes[idx as usize];
            let was_live = !expired(node.last_seen, now, aging);
            let from = node.port;
            node.port = port;
            node.last_seen = now;
            self.move_to_tail(idx);
            return if !was_live {
                Learn::New
            } else if from == port {
                Learn::Refreshed
            } else {
                Learn::Moved { from }
            };
        }
        if self.cfg.max_entries == 0 {
            return Learn::Ignored;
        }
        let mut outcome = Learn::New;
        if self.index.len() >= self.cfg.max_entries {
            self.age(now);
            if self.index.len() >= self.cfg.max_entries {
                if let Some(victim) = self.evict_head() {
                    outcome = Learn::Evicted { victim };
                }
            }
        }
        let idx = self.alloc(Node {
            mac,
            port,
            last_seen: now,
            prev: NIL,
            next: NIL,
        });
        self.link_tail(idx);
        self.index.insert(key, idx);
        outcome
    }

    /// The port `mac` was last seen on, unless that entry has expired.
    pub fn lookup(&self, mac: MacAddr, now: Instant) -> Option<P> {
        let idx = *self.index.get(&mac.to_u64())?;
        let node = &self.nodes[idx as usize];
        if expired(node.last_seen, now, self.cfg.aging) {
            None
        } else {
            Some(node.port)
        }
    }

    /// Removes expired entries; returns how many.
    pub fn age(&mut self, now: Instant) -> usize {
        let mut removed = 0;
        while self.head != NIL {
            let head = &self.nodes[self.head as usize];
            if !expired(head.last_seen, now, self.cfg.aging) {
                break;
            }
            self.evict_head();
            removed += 1;
        }
        removed
    }

    /// Removes every entry on `port` (the port was deleted); returns how many.
    pub fn forget_port(&mut self, port: P) -> usize {
        let mut removed = 0;
        let mut cur = self.head;
        while cur != NIL {
            let node = &self.nodes[cur as usize];
            let next = node.next;
            if node.port == port {
                let key = node.mac.to_u64();
                self.index.remove(&key);
                self.unlink(cur);
                self.release(cur);
                removed += 1;
            }
            cur = next;
        }
        removed
    }

    /// Removes one MAC; returns the port it was on, expired or not.
    pub fn remove(&mut self, mac: MacAddr) -> Option<P> {
        let idx = self.index.remove(&mac.to_u64())?;
        let port = self.nodes[idx as usize].port;
        self.unlink(idx);
        self.release(idx);
        Some(port)
    }

    pub fn clear(&mut self) {
        self.index.clear();
        self.nodes.clear();
        self.head = NIL;
        self.tail = NIL;
        self.free = NIL;
    }

    /// Live entries as (MAC, port, time since last seen), least recently
    /// seen first.
    pub fn entries(&self, now: Instant) -> impl Iterator<Item = (MacAddr, P, Duration)> + '_ {
        let aging = self.cfg.aging;
        let mut cur = self.head;
        std::iter::from_fn(move || {
            while cur != NIL {
                let node = &self.nodes[cur as usize];
                cur = node.next;
                if !expired(node.last_seen, now, aging) {
                    return Some((
                        node.mac,
                        node.port,
                        now.saturating_duration_since(node.last_seen),
                    ));
                }
            }
            None
        })
    }

    /// Number of entries, including expired ones not yet aged out.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Unlinks, unindexes and frees the least recently seen entry.
    fn evict_head(&mut self) -> Option<MacAddr> {
        let idx = self.head;
        if idx == NIL {
            return None;
        }
        let mac = self.nodes[idx as usize].mac;
        self.index.remove(&mac.to_u64());
        self.unlink(idx);
        self.release(idx);
        Some(mac)
    }

    fn alloc(&mut self, node: Node<P>) -> u32 {
        if self.free != NIL {
            let idx = self.free;
            self.free = self.nodes[idx as usize].next;
            self.nodes[idx as usize] = node;
            idx
        } else {
            // Bounded by max_entries (clamped below NIL) at peak occupancy.
            let idx = self.nodes.len() as u32;
            self.nodes.push(node);
            idx
        }
    }

    fn release(&mut self, idx: u32) {
        self.nodes[idx as usize].next = self.free;
        self.free = idx;
    }

    fn unlink(&mut self, idx: u32) {
        let (prev, next) = {
            let n = &self.nodes[idx as usize];
            (n.prev, n.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.nodes[next as usize].prev = prev;
        }
    }

    fn link_tail(&mut self, idx: u32) {
        let old_tail = self.tail;
        {
            let n = &mut self.nodes[idx as usize];
            n.prev = old_tail;
            n.next = NIL;
        }
        if old_tail == NIL {
            self.head = idx;
        } else {
            self.nodes[old_tail as usize].next = idx;
        }
        self.tail = idx;
    }

    fn move_to_tail(&mut self, idx: u32) {
        // The common case for a busy sender: it was also the last one seen.
        if self.tail == idx {
            return;
        }
        self.unlink(idx);
        self.link_tail(idx);
    }
}

fn clamp(mut cfg: FdbConfig) -> FdbConfig {
    cfg.max_entries = cfg.max_entries.min(MAX_CAPACITY);
    cfg
}

/// An entry is gone once `aging` has passed since it was last seen.
fn expired(last_seen: Instant, now: Instant, aging: Duration) -> bool {
    now.saturating_duration_since(last_seen) >= aging
}

/// A multiplicative hash for 48-bit MACs packed in a `u64` (FxHash's
/// constant). Not DoS-resistant, on purpose: a lab switch learns MACs from
/// its own endpoints and uplink, and the table is size-bounded with O(1)
/// eviction, so a sender choosing colliding MACs can at worst slow its own
/// network's lookups; SipHash would cost more than the rest of `learn`.
#[derive(Debug, Clone, Copy, Default)]
pub struct MacHashBuilder;

impl BuildHasher for MacHashBuilder {
    type Hasher = MacHasher;

    fn build_hasher(&self) -> MacHasher {
        MacHasher(0)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct MacHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for MacHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(SEED);
    }

    fn finish(&self) -> u64 {
        // The map picks buckets from the low bits. Low bits of a product
        // depend only on low bits of the input, so MACs differing only in
        // their first octets would share buckets; the high bits of the
        // product depend on every input bit, so rotate them down.
        self.0.rotate_left(26)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u64) -> MacAddr {
        MacAddr::from_u64(0x0215_5d00_0000 + n)
    }

    fn cfg(aging_secs: u64, max_entries: usize) -> FdbConfig {
        FdbConfig {
            aging: Duration::from_secs(aging_secs),
            max_entries,
        }
    }

    /// Walks the list both ways and checks it against the index.
    fn check_invariants<P: Copy + Eq + std::fmt::Debug>(fdb: &Fdb<P>) {
        let mut forward = Vec::new();
        let mut cur = fdb.head;
        let mut prev = NIL;
        while cur != NIL {
            let n = &fdb.nodes[cur as usize];
            assert_eq!(n.prev, prev);
            assert_eq!(fdb.index.get(&n.mac.to_u64()), Some(&cur));
            forward.push(cur);
            prev = cur;
            cur = n.next;
        }
        assert_eq!(fdb.tail, prev);
        assert_eq!(forward.len(), fdb.index.len());
        let mut free = 0;
        let mut cur = fdb.free;
        while cur != NIL {
            free += 1;
            cur = fdb.nodes[cur as usize].next;
        }
        assert_eq!(free + forward.len(), fdb.nodes.len());
    }

    #[test]
    fn learn_refresh_move() {
        let t0 = Instant::now();
        let mut fdb = Fdb::<u32>::new(FdbConfig::default());
        assert_eq!(fdb.learn(mac(1), 1, t0), Learn::New);
        assert_eq!(fdb.learn(mac(1), 1, t0), Learn::Refreshed);
        assert_eq!(fdb.learn(mac(1), 2, t0), Learn::Moved { from: 1 });
        assert_eq!(fdb.lookup(mac(1), t0), Some(2));
        assert_eq!(fdb.lookup(mac(2), t0), None);
        assert_eq!(fdb.len(), 1);
        check_invariants(&fdb);
    }

    #[test]
    fn group_and_zero_sources_ignored() {
        let t0 = Instant::now();
        let mut fdb = Fdb::<u32>::new(FdbConfig::default());
        for m in [
            MacAddr::BROADCAST,
            MacAddr::ZERO,
            MacAddr([0x01, 0x00, 0x5e, 0, 0, 1]),
            MacAddr([0x33, 0x33, 0, 0, 0, 1]),
        ] {
            assert_eq!(fdb.learn(m, 1, t0), Learn::Ignored);
        }
        assert!(fdb.is_empty());
        let mut off = Fdb::<u32>::new(cfg(300, 0));
        assert_eq!(off.learn(mac(1), 1, t0), Learn::Ignored);
        assert!(off.is_empty());
    }

    #[test]
    fn aging_boundary_and_refresh() {
        let t0 = Instant::now();
        let aging = Duration::from_secs(300);
        let mut fdb = Fdb::<u32>::new(cfg(300, 16));
        fdb.learn(mac(1), 1, t0);
        fdb.learn(mac(2), 2, t0);
        let almost = t0 + aging - Duration::from_nanos(1);
        assert_eq!(fdb.lookup(mac(1), almost), Some(1));
        assert_eq!(fdb.age(almost), 0);
        // Refresh mac 1 just before it expires.
        assert_eq!(fdb.learn(mac(1), 1, almost), Learn::Refreshed);
        assert_eq!(fdb.lookup(mac(2), t0 + aging), None);
        assert_eq!(fdb.lookup(mac(1), t0 + aging), Some(1));
        assert_eq!(fdb.len(), 2, "lookup does not remove");
        assert_eq!(fdb.age(t0 + aging), 1);
        assert_eq!(fdb.len(), 1);
        assert_eq!(fdb.age(almost + aging), 1);
        assert!(fdb.is_empty());
        check_invariants(&fdb);
    }

    #[test]
    fn expired_entry_relearned_is_new() {
        let t0 = Instant::now();
        let mut fdb = Fdb::<u32>::new(cfg(10, 16));
        fdb.learn(mac(1), 1, t0);
        let later = t0 + Duration::from_secs(10);
        assert_eq!(fdb.learn(mac(1), 2, later), Learn::New);
        assert_eq!(fdb.lookup(mac(1), later), Some(2));
        assert_eq!(fdb.len(), 1);
        check_invariants(&fdb);
    }

    #[test]
    fn eviction_is_least_recently_seen() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut fdb = Fdb::<u32>::new(cfg(300, 3));
        fdb.learn(mac(1), 1, t0);
        fdb.learn(mac(2), 1, t0 + s(1));
        fdb.learn(mac(3), 1, t0 + s(2));
        // mac 1 is refreshed (or moved): mac 2 becomes the oldest.
        assert_eq!(fdb.learn(mac(1), 2, t0 + s(3)), Learn::Moved { from: 1 });
        assert_eq!(
            fdb.learn(mac(4), 1, t0 + s(4)),
            Learn::Evicted { victim: mac(2) }
        );
        assert_eq!(
            fdb.learn(mac(5), 1, t0 + s(5)),
            Learn::Evicted { victim: mac(3) }
        );
        assert_eq!(
            fdb.learn(mac(6), 1, t0 + s(6)),
            Learn::Evicted { victim: mac(1) }
        );
        assert_eq!(fdb.len(), 3);
        let order: Vec<_> = fdb.entries(t0 + s(6)).map(|(m, _, _)| m).collect();
        assert_eq!(order, [mac(4), mac(5), mac(6)]);
        check_invariants(&fdb);
    }

    #[test]
    fn full_table_drops_expired_before_evicting() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut fdb = Fdb::<u32>::new(cfg(10, 3));
        fdb.learn(mac(1), 1, t0);
        fdb.learn(mac(2), 1, t0 + s(1));
        fdb.learn(mac(3), 1, t0 + s(5));
        // At t0+11 macs 1 and 2 have expired: room without evicting a live one.
        assert_eq!(fdb.learn(mac(4), 1, t0 + s(11)), Learn::New);
        assert_eq!(fdb.len(), 2);
        assert_eq!(fdb.lookup(mac(3), t0 + s(11)), Some(1));
        check_invariants(&fdb);
    }

    #[test]
    fn size_bound_under_flood() {
        let t0 = Instant::now();
        let mut fdb = Fdb::<u32>::new(cfg(300, 100));
        let mut evicted = 0;
        for n in 0..10_000u64 {
            let now = t0 + Duration::from_micros(n);
            match fdb.learn(mac(n), (n % 7) as u32, now) {
                Learn::New => {}
                Learn::Evicted { victim } => {
                    assert_eq!(victim, mac(n - 100));
                    evicted += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
            assert!(fdb.len() <= 100);
        }
        assert_eq!(evicted, 10_000 - 100);
        assert_eq!(fdb.nodes.len(), 100, "slots are reused, not grown");
        let now = t0 + Duration::from_secs(1);
        for n in 9_900..10_000 {
            assert_eq!(fdb.lookup(mac(n), now), Some((n % 7) as u32));
        }
        check_invariants(&fdb);
    }

    #[test]
    fn forget_port_flushes_only_that_port() {
        let t0 = Instant::now();
        let mut fdb = Fdb::<u32>::new(FdbConfig::default());
        for n in 0..10 {
            fdb.learn(mac(n), (n % 3) as u32, t0);
        }
        assert_eq!(fdb.forget_port(1), 3);
        assert_eq!(fdb.forget_port(1), 0);
        assert_eq!(fdb.len(), 7);
        for n in 0..10 {
            let want = if n % 3 == 1 {
                None
            } else {
                Some((n % 3) as u32)
            };
            assert_eq!(fdb.lookup(mac(n), t0), want);
        }
        check_invariants(&fdb);
        // Freed slots are reused.
        for n in 10..13 {
            fdb.learn(mac(n), 5, t0);
        }
        assert_eq!(fdb.nodes.len(), 10);
        check_invariants(&fdb);
    }

    #[test]
    fn entries_report_age_and_skip_expired() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut fdb = Fdb::<u32>::new(cfg(60, 16));
        fdb.learn(mac(1), 1, t0);
        fdb.learn(mac(2), 2, t0 + s(30));
        fdb.learn(mac(3), 3, t0 + s(50));
        let now = t0 + s(70);
        let got: Vec<_> = fdb.entries(now).collect();
        assert_eq!(got, [(mac(2), 2, s(40)), (mac(3), 3, s(20))]);
        assert_eq!(fdb.len(), 3);
    }

    #[test]
    fn shrinking_config_evicts_oldest() {
        let t0 = Instant::now();
        let mut fdb = Fdb::<u32>::new(cfg(300, 10));
        for n in 0..10 {
            fdb.learn(mac(n), 1, t0 + Duration::from_secs(n));
        }
        fdb.set_config(cfg(300, 4));
        assert_eq!(fdb.len(), 4);
        assert_eq!(fdb.config().max_entries, 4);
        let left: Vec<_> = fdb
            .entries(t0 + Duration::from_secs(10))
            .map(|e| e.0)
            .collect();
        assert_eq!(left, [mac(6), mac(7), mac(8), mac(9)]);
        // A shorter aging applies at once to lookups.
        fdb.set_config(cfg(1, 4));
        assert_eq!(fdb.lookup(mac(6), t0 + Duration::from_secs(10)), None);
        assert_eq!(
            fdb.lookup(mac(9), t0 + Duration::from_millis(9500)),
            Some(1)
        );
        check_invariants(&fdb);
    }

    #[test]
    fn remove_and_clear() {
        let t0 = Instant::now();
        let mut fdb = Fdb::<u32>::new(FdbConfig::default());
        fdb.learn(mac(1), 1, t0);
        fdb.learn(mac(2), 2, t0);
        fdb.learn(mac(3), 3, t0);
        assert_eq!(fdb.remove(mac(2)), Some(2));
        assert_eq!(fdb.remove(mac(2)), None);
        check_invariants(&fdb);
        fdb.clear();
        assert!(fdb.is_empty());
        assert_eq!(fdb.learn(mac(1), 1, t0), Learn::New);
        check_invariants(&fdb);
    }

    #[test]
    fn zero_aging_learns_nothing_lasting() {
        let t0 = Instant::now();
        let mut fdb = Fdb::<u32>::new(cfg(0, 16));
        assert_eq!(fdb.learn(mac(1), 1, t0), Learn::New);
        assert_eq!(fdb.lookup(mac(1), t0), None);
        assert_eq!(fdb.learn(mac(1), 1, t0), Learn::New);
    }

    #[test]
    fn hash_spreads_macs_differing_only_in_first_octets() {
        let b = MacHashBuilder;
        let mut buckets = std::collections::HashSet::new();
        for first in (0u64..=254).step_by(2) {
            let m = MacAddr::from_u64(first << 40 | 0x00_5d00_0001);
            buckets.insert(b.hash_one(m.to_u64()) & 0x3ff);
        }
        // 128 MACs into 1024 buckets: nearly all distinct if bits are mixed.
        assert!(buckets.len() > 110, "{} distinct buckets", buckets.len());
    }
}
