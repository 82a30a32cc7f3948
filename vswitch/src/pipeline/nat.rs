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
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use super::conntrack::{Tuple, ICMP, TCP, UDP};
use super::verdict::HeaderTransform;
use crate::wire::MacAddr;

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

/// A static port mapping: `external` on the uplink's address leads to
/// `internal:internal_port` on the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub proto: u8,
    pub external: u16,
    pub internal: Ipv4Addr,
    pub internal_port: u16,
}

/// A nat network's translation, as the control plane sets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatConfig {
    /// The uplink's address, which translated flows carry outside.
    pub addr: Ipv4Addr,
    pub uplink_mac: MacAddr,
    pub uplink_ifindex: u32,
    /// The network's gateway: endpoints send outside traffic to its MAC
    /// (a nat network's host port), and translated frames reach them from
    /// it. `None` on an l2bridge network with OutBoundNAT, whose gateway
    /// is on the wire: any frame not for a vNIC of the network is looked
    /// at, and translated ones reach endpoints from the uplink's MAC.
    pub gateway: Ipv4Addr,
    pub gateway_mac: Option<MacAddr>,
    /// OutBoundNAT: only these endpoints are translated (`None`: all, as
    /// on a nat network), and never towards these prefixes.
    pub sources: Option<Vec<Ipv4Addr>>,
    pub exceptions: Vec<(Ipv4Addr, u8)>,
    pub subnet: (Ipv4Addr, u8),
    /// The uplink's connected prefixes (on-link next hops) and default
    /// router.
    pub onlink: Vec<(Ipv4Addr, u8)>,
    pub router: Option<Ipv4Addr>,
    /// The source ports (and echo ids) the switch translates to.
    pub pool: RangeInclusive<u16>,
    pub mappings: Vec<Mapping>,
}

/// How long a next hop's MAC is used before the kernel is asked again.
pub const NEIGHBOUR_TTL: Duration = Duration::from_secs(30);

pub fn in_prefix(ip: Ipv4Addr, (net, len): (Ipv4Addr, u8)) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

/// A nat network's state in the pipeline: its configuration, its port
/// allocators (one per protocol) and its next hops' MACs.
#[derive(Debug)]
pub struct Nat {
    pub cfg: NatConfig,
    tcp: PortAllocator,
    udp: PortAllocator,
    icmp: PortAllocator,
    neighbours: std::collections::HashMap<Ipv4Addr, (MacAddr, Instant)>,
    /// Echo identifiers taken (true) and given back (false) since the
    /// datapath last looked: the uplink's XDP program steers replies by
    /// exact identifier, so it must be told.
    pub echo_events: Vec<(u16, bool)>,
}

impl Nat {
    pub fn new(cfg: NatConfig) -> Nat {
        let pool = |cfg: &NatConfig| PortAllocator::new(cfg.pool.clone(), 0..=0);
        let mut nat = Nat {
            tcp: pool(&cfg),
            udp: pool(&cfg),
            icmp: pool(&cfg),
            cfg,
            neighbours: std::collections::HashMap::new(),
            echo_events: Vec::new(),
        };
        for m in nat.cfg.mappings.clone() {
            if let Some(a) = nat.allocator(m.proto) {
                a.claim(m.external);
            }
        }
        nat
    }

    /// Takes a new configuration; connections and ports in use stay.
    pub fn reconfigure(&mut self, cfg: NatConfig) {
        for m in self.cfg.mappings.clone() {
            if !cfg.mappings.contains(&m) {
                if let Some(a) = self.allocator(m.proto) {
                    a.release(m.external);
                }
            }
        }
        for m in &cfg.mappings {
            if !self.cfg.mappings.contains(m) {
                if let Some(a) = self.allocator(m.proto) {
                    a.claim(m.external);
                }
            }
        }
        if cfg.uplink_ifindex != self.cfg.uplink_ifindex {
            self.neighbours.clear();
        }
        self.cfg = cfg;
    }

    fn allocator(&mut self, proto: u8) -> Option<&mut PortAllocator> {
        match proto {
            TCP => Some(&mut self.tcp),
            UDP => Some(&mut self.udp),
            ICMP => Some(&mut self.icmp),
            _ => None,
        }
    }

    pub fn allocate(&mut self, proto: u8) -> Option<u16> {
        let port = self.allocator(proto)?.allocate()?;
        if proto == ICMP {
            self.echo_events.push((port, true));
        }
        Some(port)
    }

    pub fn release(&mut self, proto: u8, port: u16) {
        let mapped = self
            .cfg
            .mappings
            .iter()
            .any(|m| m.proto == proto && m.external == port);
        if !mapped {
            if let Some(a) = self.allocator(proto) {
                a.release(port);
            }
            if proto == ICMP {
                self.echo_events.push((port, false));
            }
        }
    }

    /// Ports in use, per protocol (TCP, UDP, ICMP).
    pub fn in_use(&self) -> [usize; 3] {
        [self.tcp.in_use(), self.udp.in_use(), self.icmp.in_use()]
    }

    pub fn mapping(&self, proto: u8, external: u16) -> Option<&Mapping> {
        self.cfg
            .mappings
            .iter()
            .find(|m| m.proto == proto && m.external == external)
    }

    /// Whether `dst`, sent by an endpoint to the gateway's MAC, leaves the
    /// network (is neither on its subnet nor the gateway) and is to be
    /// translated (no OutBoundNAT exception covers it).
    pub fn is_outside(&self, dst: Ipv4Addr) -> bool {
        !in_prefix(dst, self.cfg.subnet)
            && dst != self.cfg.gateway
            && !dst.is_broadcast()
            && !dst.is_multicast()
            && !self.cfg.exceptions.iter().any(|&p| in_prefix(dst, p))
    }

    /// Whether an endpoint's outbound traffic is translated at all.
    pub fn translates(&self, src: Ipv4Addr) -> bool {
        self.cfg.sources.as_ref().is_none_or(|s| s.contains(&src))
    }

    /// The next hop towards `dst` on the uplink: itself if on-link, else
    /// the default router.
    pub fn next_hop(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        if self.cfg.onlink.iter().any(|&p| in_prefix(dst, p)) {
            Some(dst)
        } else {
            self.cfg.router
        }
    }

    pub fn neighbour(&self, ip: Ipv4Addr, now: Instant) -> Option<MacAddr> {
        let (mac, at) = self.neighbours.get(&ip)?;
        (now.saturating_duration_since(*at) < NEIGHBOUR_TTL).then_some(*mac)
    }

    pub fn set_neighbour(&mut self, ip: Ipv4Addr, mac: MacAddr, now: Instant) {
        self.neighbours.insert(ip, (mac, now));
    }
}

/// The transformation that makes a packet carrying `from` carry `to`.
pub fn rewrite(from: &Tuple, to: &Tuple) -> HeaderTransform {
    let mut x = HeaderTransform::NONE;
    if from.src != to.src {
        x.flags |= HeaderTransform::SET_SRC_IP;
        x.src_ip = v6(to.src);
    }
    if from.dst != to.dst {
        x.flags |= HeaderTransform::SET_DST_IP;
        x.dst_ip = v6(to.dst);
    }
    if from.src_port != to.src_port {
        x.flags |= HeaderTransform::SET_SRC_PORT;
        x.src_port = to.src_port;
    }
    if from.dst_port != to.dst_port {
        x.flags |= HeaderTransform::SET_DST_PORT;
        x.dst_port = to.dst_port;
    }
    x
}

fn v6(ip: std::net::IpAddr) -> [u8; 16] {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
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
