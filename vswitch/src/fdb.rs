//! Per-network MAC learning table (forwarding database).
//!
//! Contract: one `Fdb` per network, owned by the single datapath thread, so
//! there are no locks inside. Time is always passed in; `now` must not go
//! backwards between calls (as `Instant::now()` on one thread does).
//!
//! Layout and costs. Entries live in a slab (`Vec`) threaded by a doubly
//! linked list in order of last sight, least recent at the head; a hash map
//! from MAC to slab index finds them, and a second, small map counts the
//! entries each port taught.
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
//! Hostile senders. A port allowed to spoof chooses its source MACs, so it
//! chooses the keys of the index. Two bounds keep it from hurting anyone
//! else's traffic:
//!
//! - The index is keyed with a secret random seed per table (see
//!   [`KeyedHash`]): without the seed a sender cannot pick MACs that share
//!   a bucket, so its MACs cost what random ones do. (With the old fixed
//!   hash, MACs chosen to collide made every lookup walk one long probe
//!   chain: 5x fewer frames switched, and other networks' traffic on the
//!   same datapath thread slowed with it.)
//! - A port may teach at most `max_per_port` entries; a new MAC beyond that
//!   is refused ([`Learn::Refused`]), not learned over someone else's. So a
//!   flood from one port cannot evict the other ports' entries while they
//!   hold fewer than `max_entries - max_per_port` between them.
//!
//! The slab and maps grow (allocate) only while the table grows towards its
//! peak size (and the count map when a port teaches its first MAC); freed
//! slots are reused through a free list kept in the slots.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::time::{Duration, Instant};

use foldhash::fast::SeedableRandomState;
use foldhash::SharedSeed;

use crate::wire::MacAddr;

/// Aging and size limits of one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbConfig {
    /// An entry not seen for this long is gone. `Duration::ZERO` expires
    /// everything at once (the switch floods like a hub).
    pub aging: Duration,
    /// At most this many entries; 0 disables learning.
    pub max_entries: usize,
    /// At most this many entries learned on any one port; a port that has
    /// taught this many gets its further new MACs refused until some of its
    /// entries age out or are removed. 0 learns nothing (like `max_entries`
    /// 0); `max_entries` or more lifts the bound (a port filling the table
    /// then evicts the least recently seen entries, its own or others').
    pub max_per_port: usize,
}

/// Default of [`FdbConfig::max_per_port`]: an eighth of the default table.
/// One port can then never hold more than 1/8 of it, so a single flooding
/// port leaves room for 7168 other entries, and eight flooding ports are
/// needed to fill it. 1024 is still far above what a legitimate spoofing
/// port carries in a lab (a VM with nested containers or VMs, a few dozen to
/// a few hundred MACs) and above a lab LAN behind a transparent uplink.
pub const DEFAULT_MAX_PER_PORT: usize = 1024;

impl Default for FdbConfig {
    fn default() -> Self {
        FdbConfig {
            aging: Duration::from_secs(300),
            max_entries: 8192,
            max_per_port: DEFAULT_MAX_PER_PORT,
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
    /// The port has already taught `max_per_port` entries: the MAC was not
    /// learned. If it was known on another port, that entry is forgotten
    /// too, so frames to it are flooded (and reach it) rather than sent to a
    /// port it has left. The frame itself is the caller's to forward.
    Refused,
    /// Multicast, broadcast or all-zero source, or learning disabled.
    Ignored,
}

/// The hasher of the MAC index: foldhash's fast variant with a per-table
/// seed drawn from the OS.
///
/// Why foldhash and not std's SipHash-1-3 (`RandomState`), which is the
/// stronger keyed hash: measured on this machine with a `HashMap<u64, u32>`
/// of 8192 MACs, a hit costs 6.5 ns with foldhash and 15-19 ns with SipHash,
/// and a datapath frame does two lookups. That is small against the ~7 us a
/// frame costs today, but the index should not be what a faster datapath
/// hits first; foldhash costs what the old unkeyed multiply did (5.8 ns).
///
/// Why not foldhash's own `RandomState`: its global seed comes from
/// addresses (ASLR) and the clock. Here the per-hasher seed is a SipHash of
/// std's `RandomState`, whose keys come from the OS (getrandom), so each
/// table has an unpredictable seed of its own. foldhash does not claim to
/// resist an attacker who recovers the seed by timing; the per-port bound
/// caps what such an attacker could still do (one probe chain of at most
/// `max_per_port` entries).
pub type KeyedHash = SeedableRandomState;

pub fn keyed_hash() -> KeyedHash {
    let seed = std::hash::RandomState::new().hash_one(0x5eed_u64);
    SeedableRandomState::with_seed(seed, SharedSeed::global_random())
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
pub struct Fdb<P: Copy + Eq + Hash> {
    cfg: FdbConfig,
    index: HashMap<u64, u32, KeyedHash>,
    /// Entries (live or expired) per port; ports with none are absent.
    taught: HashMap<P, u32, KeyedHash>,
    nodes: Vec<Node<P>>,
    /// Least recently seen entry.
    head: u32,
    /// Most recently seen entry.
    tail: u32,
    /// First free slot in `nodes`, chained through `next`.
    free: u32,
}

impl<P: Copy + Eq + Hash> Fdb<P> {
    pub fn new(cfg: FdbConfig) -> Self {
        Fdb {
            cfg: clamp(cfg),
            index: HashMap::with_hasher(keyed_hash()),
            taught: HashMap::with_hasher(keyed_hash()),
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
    /// lookup. A smaller `max_per_port` evicts nothing: a port above it
    /// keeps its entries but learns no new MAC until it is below.
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
        let mut outcome = Learn::New;
        if let Some(&idx) = self.index.get(&key) {
            let node = &self.nodes[idx as usize];
            let from = node.port;
            if expired(node.last_seen, now, self.cfg.aging) {
                // Relearned as new, under the new port's bound.
                self.drop_entry(idx);
            } else if from == port {
                self.nodes[idx as usize].last_seen = now;
                self.move_to_tail(idx);
                return Learn::Refreshed;
            } else if !self.has_room(port, now) {
                // `has_room` ages out only expired entries: `idx` is live.
                self.drop_entry(idx);
                return Learn::Refused;
            } else {
                self.uncount(from);
                self.count(port);
                let node = &mut self.nodes[idx as usize];
                node.port = port;
                node.last_seen = now;
                self.move_to_tail(idx);
                return Learn::Moved { from };
            }
        }
        if self.cfg.max_entries == 0 {
            return Learn::Ignored;
        }
        if !self.has_room(port, now) {
            return Learn::Refused;
        }
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
        self.count(port);
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
                self.drop_entry(cur);
                removed += 1;
            }
            cur = next;
        }
        removed
    }

    /// Removes one MAC; returns the port it was on, expired or not.
    pub fn remove(&mut self, mac: MacAddr) -> Option<P> {
        let idx = *self.index.get(&mac.to_u64())?;
        let port = self.nodes[idx as usize].port;
        self.drop_entry(idx);
        Some(port)
    }

    pub fn clear(&mut self) {
        self.index.clear();
        self.taught.clear();
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

    /// Entries `port` taught, including expired ones not yet aged out.
    pub fn taught(&self, port: P) -> usize {
        self.taught.get(&port).map_or(0, |&n| n as usize)
    }

    /// Whether `port` may teach one more entry; ages out expired entries
    /// first when it is at its bound (they still count until then).
    fn has_room(&mut self, port: P, now: Instant) -> bool {
        // A bound of the table's size is none: the port may fill the table
        // and then evicts its own oldest entries, as without a bound.
        if self.cfg.max_per_port >= self.cfg.max_entries
            || self.taught(port) < self.cfg.max_per_port
        {
            return true;
        }
        self.age(now);
        self.taught(port) < self.cfg.max_per_port
    }

    fn count(&mut self, port: P) {
        // Allocates only the first time a port (or more ports than ever
        // before) teaches a MAC: a control-path rate, not a frame rate.
        *self.taught.entry(port).or_insert(0) += 1;
    }

    fn uncount(&mut self, port: P) {
        if let Some(n) = self.taught.get_mut(&port) {
            *n -= 1;
            if *n == 0 {
                self.taught.remove(&port);
            }
        }
    }

    /// Unlinks, unindexes, uncounts and frees one entry.
    fn drop_entry(&mut self, idx: u32) {
        let node = &self.nodes[idx as usize];
        let (key, port) = (node.mac.to_u64(), node.port);
        self.index.remove(&key);
        self.uncount(port);
        self.unlink(idx);
        self.release(idx);
    }

    /// Drops the least recently seen entry; returns its MAC.
    fn evict_head(&mut self) -> Option<MacAddr> {
        let idx = self.head;
        if idx == NIL {
            return None;
        }
        let mac = self.nodes[idx as usize].mac;
        self.drop_entry(idx);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u64) -> MacAddr {
        MacAddr::from_u64(0x0215_5d00_0000 + n)
    }

    /// Limits without a per-port bound (one port may fill the table).
    fn cfg(aging_secs: u64, max_entries: usize) -> FdbConfig {
        bounded(aging_secs, max_entries, max_entries)
    }

    fn bounded(aging_secs: u64, max_entries: usize, max_per_port: usize) -> FdbConfig {
        FdbConfig {
            aging: Duration::from_secs(aging_secs),
            max_entries,
            max_per_port,
        }
    }

    /// Walks the list both ways and checks it against the index and the
    /// per-port counts.
    fn check_invariants<P: Copy + Eq + Hash + std::fmt::Debug>(fdb: &Fdb<P>) {
        let mut forward = Vec::new();
        let mut per_port: HashMap<P, u32> = HashMap::new();
        let mut cur = fdb.head;
        let mut prev = NIL;
        while cur != NIL {
            let n = &fdb.nodes[cur as usize];
            assert_eq!(n.prev, prev);
            assert_eq!(fdb.index.get(&n.mac.to_u64()), Some(&cur));
            *per_port.entry(n.port).or_default() += 1;
            forward.push(cur);
            prev = cur;
            cur = n.next;
        }
        let taught: HashMap<P, u32> = fdb.taught.iter().map(|(&p, &n)| (p, n)).collect();
        assert_eq!(taught, per_port, "per-port counts");
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
        let fdb = Fdb::<u32>::new(FdbConfig::default());
        let b = fdb.index.hasher();
        let mut buckets = std::collections::HashSet::new();
        for first in (0u64..=254).step_by(2) {
            let m = MacAddr::from_u64(first << 40 | 0x00_5d00_0001);
            buckets.insert(b.hash_one(m.to_u64()) & 0xffff);
        }
        // 128 MACs into 65536 buckets: a random hash puts 0.12 pairs
        // together on average, so 8 collisions (a 120 bound) would be
        // astronomically rare for a mixing hash, and certain for one that
        // ignores the first octet. (1024 buckets left too little margin:
        // the bound sat 3 standard deviations from the mean, and flaked.)
        assert!(buckets.len() > 120, "{} distinct buckets", buckets.len());
    }

    #[test]
    fn tables_have_seeds_of_their_own() {
        let a = Fdb::<u32>::new(FdbConfig::default());
        let b = Fdb::<u32>::new(FdbConfig::default());
        let key = mac(1).to_u64();
        assert_ne!(
            a.index.hasher().hash_one(key),
            b.index.hasher().hash_one(key)
        );
    }

    #[test]
    fn per_port_bound_refuses_only_new_macs() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut fdb = Fdb::<u32>::new(bounded(60, 64, 4));
        for n in 0..4 {
            assert_eq!(fdb.learn(mac(n), 1, t0), Learn::New);
        }
        assert_eq!(fdb.learn(mac(4), 1, t0), Learn::Refused);
        assert_eq!(fdb.lookup(mac(4), t0), None, "refused MACs are not learned");
        assert_eq!(fdb.taught(1), 4);
        // What the port already taught it keeps refreshing.
        assert_eq!(fdb.learn(mac(0), 1, t0 + s(1)), Learn::Refreshed);
        // Other ports are not affected by port 1's share.
        assert_eq!(fdb.learn(mac(10), 2, t0 + s(1)), Learn::New);
        // Moving to a port with room transfers the count.
        assert_eq!(fdb.learn(mac(1), 2, t0 + s(2)), Learn::Moved { from: 1 });
        assert_eq!((fdb.taught(1), fdb.taught(2)), (3, 2));
        assert_eq!(fdb.learn(mac(4), 1, t0 + s(2)), Learn::New);
        check_invariants(&fdb);
        // A move onto a port at its share: not learned there, and not left
        // pointing at the port it left either.
        for n in 11..13 {
            assert_eq!(fdb.learn(mac(n), 2, t0 + s(3)), Learn::New);
        }
        assert_eq!(fdb.taught(2), 4);
        assert_eq!(fdb.learn(mac(0), 2, t0 + s(3)), Learn::Refused);
        assert_eq!(fdb.lookup(mac(0), t0 + s(3)), None);
        assert_eq!(fdb.taught(1), 3);
        check_invariants(&fdb);
        // Expired entries stop counting: of port 1's three (macs 2 and 3 of
        // t0, mac 4 of t0+2) two have aged out at t0+60, so it may learn
        // three more.
        let later = t0 + s(60);
        for n in 20..23 {
            assert_eq!(fdb.learn(mac(n), 1, later), Learn::New);
        }
        assert_eq!(fdb.learn(mac(24), 1, later), Learn::Refused);
        check_invariants(&fdb);
        // A deleted port's share is free again.
        fdb.forget_port(1);
        assert_eq!(fdb.taught(1), 0);
        assert_eq!(fdb.learn(mac(24), 1, later), Learn::New);
        check_invariants(&fdb);
        // A bound of the table's size is no bound.
        let mut whole = Fdb::<u32>::new(bounded(60, 4, 4));
        for n in 0..4 {
            whole.learn(mac(n), 1, t0);
        }
        assert_eq!(
            whole.learn(mac(4), 1, t0),
            Learn::Evicted { victim: mac(0) }
        );
        // A bound of 0 learns nothing.
        let mut off = Fdb::<u32>::new(bounded(60, 64, 0));
        assert_eq!(off.learn(mac(1), 1, t0), Learn::Refused);
        assert!(off.is_empty());
    }

    #[test]
    fn default_bound_is_set() {
        let c = FdbConfig::default();
        assert_eq!(c.max_per_port, DEFAULT_MAX_PER_PORT);
        assert!(c.max_per_port > 0 && c.max_per_port < c.max_entries);
    }

    /// Ports 1-3 teach 10 MACs each; then port 9 sends from 10,000 new ones
    /// while the others stay quiet (the worst case for least-recently-seen
    /// eviction).
    fn flood_after_quiet_ports(cfg: FdbConfig) -> (Fdb<u32>, usize, Instant) {
        let t0 = Instant::now();
        let mut fdb = Fdb::<u32>::new(cfg);
        for n in 0..30u64 {
            fdb.learn(mac(n), 1 + (n % 3) as u32, t0);
        }
        let mut refused = 0;
        let mut now = t0;
        for n in 0..10_000u64 {
            now = t0 + Duration::from_millis(1 + n);
            let m = MacAddr::from_u64(0x0200_0000_0000 + n);
            match fdb.learn(m, 9, now) {
                Learn::Refused => refused += 1,
                Learn::New | Learn::Evicted { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        check_invariants(&fdb);
        (fdb, refused, now)
    }

    #[test]
    fn flood_from_one_port_cannot_evict_the_others() {
        let (fdb, refused, now) = flood_after_quiet_ports(bounded(300, 64, 16));
        for n in 0..30u64 {
            assert_eq!(
                fdb.lookup(mac(n), now),
                Some(1 + (n % 3) as u32),
                "mac {n} was evicted by the flood"
            );
        }
        assert_eq!(fdb.taught(9), 16);
        assert_eq!(refused, 10_000 - 16);
        assert_eq!(fdb.len(), 46);
        // Without the bound the same flood takes the whole table.
        let (fdb, refused, now) = flood_after_quiet_ports(cfg(300, 64));
        assert_eq!(refused, 0);
        assert!((0..30).all(|n| fdb.lookup(mac(n), now).is_none()));
        assert_eq!(fdb.taught(9), 64);
    }

    /// The index's hash before issue 6 (the removed `MacHasher` fed one
    /// `u64`): FxHash's multiply, unkeyed, with the high bits rotated down.
    const OLD_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn old_hash(key: u64) -> u64 {
        key.wrapping_mul(OLD_SEED).rotate_left(26)
    }

    /// `n` distinct unicast MACs whose old hash agrees in its low 20 bits
    /// (hashbrown's bucket, for tables of up to 2^20 buckets) and its top 7
    /// (the control byte it compares first): under the old hash they all
    /// sit on one probe chain, and every lookup walks it. Found by choosing
    /// hashes and inverting the old hash, which is a bijection on u64.
    fn macs_colliding_under_old_hash(n: usize) -> Vec<MacAddr> {
        let mut inv = OLD_SEED; // Newton: each step doubles the correct bits
        for _ in 0..6 {
            inv = inv.wrapping_mul(2u64.wrapping_sub(OLD_SEED.wrapping_mul(inv)));
        }
        assert_eq!(OLD_SEED.wrapping_mul(inv), 1);
        let fixed_mask = 0x7f << 57 | 0xf_ffff;
        let fixed = 0x55 << 57 | 0x5_a5a5;
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut seen = std::collections::HashSet::new();
        while seen.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = ((x & !fixed_mask) | fixed)
                .rotate_right(26)
                .wrapping_mul(inv);
            let m = MacAddr::from_u64(key);
            if key >> 48 == 0 && !m.is_multicast() && !m.is_zero() {
                seen.insert(key);
            }
        }
        seen.into_iter().map(MacAddr::from_u64).collect()
    }

    fn random_macs(n: usize) -> Vec<MacAddr> {
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut seen = std::collections::HashSet::new();
        while seen.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = x & 0xfeff_ffff_ffff; // unicast
            if key != 0 {
                seen.insert(key);
            }
        }
        seen.into_iter().map(MacAddr::from_u64).collect()
    }

    /// Distinct buckets and the fullest bucket's load, for `macs` in a
    /// table of `buckets` buckets, by `hash`.
    fn spread(macs: &[MacAddr], buckets: u64, hash: impl Fn(u64) -> u64) -> (usize, usize) {
        let mut load: HashMap<u64, usize> = HashMap::new();
        for m in macs {
            *load.entry(hash(m.to_u64()) & (buckets - 1)).or_default() += 1;
        }
        (load.len(), load.values().copied().max().unwrap_or(0))
    }

    #[test]
    fn macs_colliding_under_the_old_hash_spread_like_random_ones() {
        const N: usize = 1024;
        // The index's bucket count at the default 8192 entries.
        const BUCKETS: u64 = 16384;
        let colliding = macs_colliding_under_old_hash(N);
        let random = random_macs(N);
        // The fixture does what it claims: one bucket, one control byte.
        assert_eq!(spread(&colliding, BUCKETS, old_hash), (1, N));
        let tags: std::collections::HashSet<u64> = colliding
            .iter()
            .map(|m| old_hash(m.to_u64()) >> 57)
            .collect();
        assert_eq!(tags.len(), 1);

        let fdb = Fdb::<u32>::new(FdbConfig::default());
        let keyed = |k: u64| fdb.index.hasher().hash_one(k);
        let (c_buckets, c_max) = spread(&colliding, BUCKETS, keyed);
        let (r_buckets, r_max) = spread(&random, BUCKETS, keyed);
        // 1024 balls into 16384 bins: ~993 distinct bins expected, the
        // fullest holding 2-4 (random MACs do the same).
        let expected = BUCKETS as f64 * (1.0 - (-(N as f64) / BUCKETS as f64).exp());
        for (what, got, max) in [
            ("colliding", c_buckets, c_max),
            ("random", r_buckets, r_max),
        ] {
            assert!(
                (got as f64) > expected * 0.97 && max <= 5,
                "{what}: {got} buckets (expected ~{expected:.0}), fullest {max}"
            );
        }
        assert!(
            c_buckets.abs_diff(r_buckets) < 30,
            "{c_buckets} vs {r_buckets}"
        );
        let tags: std::collections::HashSet<u64> =
            colliding.iter().map(|m| keyed(m.to_u64()) >> 57).collect();
        assert!(tags.len() > 120, "{} control bytes of 128", tags.len());

        // And the table works with them.
        let t0 = Instant::now();
        let mut fdb = Fdb::<u32>::new(bounded(300, 8192, 8192));
        for (i, m) in colliding.iter().enumerate() {
            assert_eq!(fdb.learn(*m, i as u32 % 8, t0), Learn::New);
        }
        for (i, m) in colliding.iter().enumerate() {
            assert_eq!(fdb.lookup(*m, t0), Some(i as u32 % 8));
        }
        check_invariants(&fdb);
    }
}
