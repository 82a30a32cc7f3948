//! NAT source ports: which ports the switch may give translated flows.
//!
//! The switch translates outbound flows to the uplink's address, which the
//! host's own sockets use too. Two flows on one (address, port, protocol)
//! would steal each other's replies, so the switch takes its ports from
//! outside the kernel's ephemeral range (`net.ipv4.ip_local_port_range`,
//! from which the host's connect() and bind(0) pick), and the XDP program
//! steers to the switch only replies to ports in the switch's range. A
//! port a host socket explicitly binds inside the switch's range is the
//! host's: the caller checks `taken` against the host's listening and
//! bound sockets before a static mapping is accepted.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;

/// The kernel's default ephemeral range, when it cannot be read.
pub const KERNEL_DEFAULT_EPHEMERAL: RangeInclusive<u16> = 32768..=60999;

/// Reads the host's ephemeral port range from
/// `/proc/sys/net/ipv4/ip_local_port_range` (in the caller's namespace).
pub fn host_ephemeral_range() -> RangeInclusive<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| parse_range(&s))
        .unwrap_or(KERNEL_DEFAULT_EPHEMERAL)
}

fn parse_range(text: &str) -> Option<RangeInclusive<u16>> {
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    let (lo, hi) = (it.next()?.ok()?, it.next()?.ok()?);
    (lo <= hi).then_some(lo..=hi)
}

/// The ports the switch hands out: `pool` less the host's ephemeral range.
#[derive(Debug, Clone)]
pub struct PortAllocator {
    pool: RangeInclusive<u16>,
    host: RangeInclusive<u16>,
    in_use: BTreeSet<u16>,
    /// Where the next search starts, so freed ports are not reused at once
    /// (a late packet of the old flow would reach the new one).
    next: u16,
}

/// The default pool: the registered ports above the well-known ones,
/// minus whatever the host's ephemeral range covers.
pub const DEFAULT_POOL: RangeInclusive<u16> = 1024..=65535;

impl PortAllocator {
    pub fn new(pool: RangeInclusive<u16>, host_ephemeral: RangeInclusive<u16>) -> PortAllocator {
        PortAllocator {
            next: *pool.start(),
            pool,
            host: host_ephemeral,
            in_use: BTreeSet::new(),
        }
    }

    /// Whether the switch may use `port` at all.
    pub fn owns(&self, port: u16) -> bool {
        self.pool.contains(&port) && !self.host.contains(&port)
    }

    /// How many ports the switch can hand out in all.
    pub fn capacity(&self) -> usize {
        self.pool.clone().filter(|p| !self.host.contains(p)).count()
    }

    pub fn in_use(&self) -> usize {
        self.in_use.len()
    }

    /// A free port, or `None` when every one is taken (NAT exhaustion: the
    /// caller drops and counts).
    pub fn allocate(&mut self) -> Option<u16> {
        let (lo, hi) = (*self.pool.start(), *self.pool.end());
        let span = u32::from(hi - lo) + 1;
        for i in 0..span {
            let port = lo + ((u32::from(self.next - lo) + i) % span) as u16;
            if self.owns(port) && !self.in_use.contains(&port) {
                self.in_use.insert(port);
                self.next = if port == hi { lo } else { port + 1 };
                return Some(port);
            }
        }
        None
    }

    /// Claims a given port (a static mapping); false if it is not the
    /// switch's to give or already used.
    pub fn claim(&mut self, port: u16) -> bool {
        self.owns(port) && self.in_use.insert(port)
    }

    pub fn release(&mut self, port: u16) {
        self.in_use.remove(&port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_inside_the_hosts_ephemeral_range() {
        let mut a = PortAllocator::new(30000..=30009, 30003..=30006);
        assert_eq!(a.capacity(), 6);
        let mut got = Vec::new();
        while let Some(p) = a.allocate() {
            got.push(p);
        }
        assert_eq!(got, [30000, 30001, 30002, 30007, 30008, 30009]);
        // Exhausted: None, not a collision.
        assert_eq!(a.allocate(), None);
        assert_eq!(a.in_use(), 6);
        a.release(30001);
        assert_eq!(a.allocate(), Some(30001));
    }

    #[test]
    fn freed_ports_are_not_reused_at_once() {
        let mut a = PortAllocator::new(100..=104, 0..=0);
        let first = a.allocate().unwrap();
        a.release(first);
        assert_ne!(a.allocate(), Some(first));
    }

    #[test]
    fn static_claims() {
        let mut a = PortAllocator::new(DEFAULT_POOL, KERNEL_DEFAULT_EPHEMERAL);
        assert!(a.claim(8080));
        assert!(!a.claim(8080), "claimed twice");
        assert!(!a.claim(40000), "inside the host's ephemeral range");
        assert!(!a.claim(80), "outside the pool");
        assert_eq!(a.capacity(), 65535 - 1024 + 1 - (60999 - 32768 + 1));
    }

    #[test]
    fn reads_the_kernels_range() {
        assert_eq!(parse_range("32768\t60999\n"), Some(32768..=60999));
        assert_eq!(parse_range("9 8"), None);
        assert_eq!(parse_range(""), None);
        let r = host_ephemeral_range();
        assert!(r.start() <= r.end());
    }
}
