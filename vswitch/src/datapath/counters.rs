//! Per-port counters: written by the datapath thread only, read by the
//! control plane at any time without locks.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Why a frame was dropped. The numbers are stable (they will be shared with
/// the eBPF programs): add new reasons at the end, never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DropReason {
    /// Shorter than an Ethernet header, or a header that does not parse.
    Malformed = 0,
    /// Multicast, broadcast or all-zero source MAC.
    InvalidSourceMac = 1,
    /// Source MAC is not the endpoint's own.
    MacSpoofing = 2,
    /// Source IPv4/IPv6 address (or ARP sender) is not the endpoint's own.
    IpSpoofing = 3,
    /// The endpoint sent an 802.1Q-tagged frame.
    VlanTagged = 4,
    /// The destination port's queue was full or its device refused the frame.
    TxFailed = 5,
    /// Unicast to a MAC learned on the port it came from.
    Hairpin = 6,
    /// A GSO super-frame towards a port that cannot take one.
    GsoUnsupported = 7,
    /// Arrived on an uplink with a VLAN tag no network uses.
    UnknownVlan = 8,
    /// Arrived on an l2bridge uplink for the uplink's MAC but for no
    /// endpoint's IP address.
    NotLocal = 9,
    /// An endpoint sent a router advertisement or a redirect, and is not
    /// allowed to be a router.
    RouterGuard = 10,
    /// Not a drop: the frame was forwarded, but its source MAC was not
    /// learned, because the port has taught `fdb_max_per_port` MACs already.
    LearnRefused = 11,
    /// An endpoint sent a DHCP server message (DHCPv4 from port 67, DHCPv6
    /// from 547) and is not allowed to be a DHCP server.
    DhcpGuard = 12,
    /// An ACL rule, or the default action of a policed port, blocked it.
    AclBlocked = 13,
    /// A new connection, refused because connection tracking is at its
    /// limit (per port or global); established ones keep going.
    ConntrackFull = 14,
    /// Not a drop: the endpoint sent faster than its QOS policy allows, and
    /// its port was paused (shaped) until the rate allowed more.
    QosExceeded = 15,
    /// A nat network had no source port left for a new connection.
    NatExhausted = 16,
    /// A translated frame's next hop has no known MAC yet; the kernel was
    /// asked to resolve it (or there is no route on the uplink).
    NeighborUnresolved = 17,
    /// Arrived on a nat network's uplink for no translated connection or
    /// port mapping.
    NatNoBinding = 18,
    /// A packet the nat network's switch was to route had no TTL left
    /// (from an endpoint, it got time exceeded back from the gateway).
    TtlExceeded = 19,
    /// A VXLAN packet too short for its VXLAN and inner Ethernet headers.
    VxlanTruncated = 20,
    /// A VXLAN header without the VNI flag (RFC 7348's I bit).
    VxlanMalformed = 21,
    /// A VXLAN packet with a VNI no overlay network of this host has.
    VxlanUnknownVni = 22,
    /// A VXLAN packet from a provider address no mapping of its network
    /// names (not a known peer).
    VxlanUnknownPeer = 23,
    /// A frame for the tunnel to a MAC with no CA->PA mapping.
    NoMapping = 24,
}

impl DropReason {
    pub const ALL: [DropReason; 25] = [
        DropReason::Malformed,
        DropReason::InvalidSourceMac,
        DropReason::MacSpoofing,
        DropReason::IpSpoofing,
        DropReason::VlanTagged,
        DropReason::TxFailed,
        DropReason::Hairpin,
        DropReason::GsoUnsupported,
        DropReason::UnknownVlan,
        DropReason::NotLocal,
        DropReason::RouterGuard,
        DropReason::LearnRefused,
        DropReason::DhcpGuard,
        DropReason::AclBlocked,
        DropReason::ConntrackFull,
        DropReason::QosExceeded,
        DropReason::NatExhausted,
        DropReason::NeighborUnresolved,
        DropReason::NatNoBinding,
        DropReason::TtlExceeded,
        DropReason::VxlanTruncated,
        DropReason::VxlanMalformed,
        DropReason::VxlanUnknownVni,
        DropReason::VxlanUnknownPeer,
        DropReason::NoMapping,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::InvalidSourceMac => "invalid_source_mac",
            DropReason::MacSpoofing => "mac_spoofing",
            DropReason::IpSpoofing => "ip_spoofing",
            DropReason::VlanTagged => "vlan_tagged",
            DropReason::TxFailed => "tx_failed",
            DropReason::Hairpin => "hairpin",
            DropReason::GsoUnsupported => "gso_unsupported",
            DropReason::UnknownVlan => "unknown_vlan",
            DropReason::NotLocal => "not_local",
            DropReason::RouterGuard => "router_guard",
            DropReason::LearnRefused => "learn_refused",
            DropReason::DhcpGuard => "dhcp_guard",
            DropReason::AclBlocked => "acl_blocked",
            DropReason::ConntrackFull => "conntrack_full",
            DropReason::QosExceeded => "qos_exceeded",
            DropReason::NatExhausted => "nat_exhausted",
            DropReason::NeighborUnresolved => "neighbor_unresolved",
            DropReason::NatNoBinding => "nat_no_binding",
            DropReason::TtlExceeded => "ttl_exceeded",
            DropReason::VxlanTruncated => "vxlan_truncated",
            DropReason::VxlanMalformed => "vxlan_malformed",
            DropReason::VxlanUnknownVni => "vxlan_unknown_vni",
            DropReason::VxlanUnknownPeer => "vxlan_unknown_peer",
            DropReason::NoMapping => "no_mapping",
        }
    }
}

/// One port's counters. Only the datapath thread writes them, so an
/// increment is a relaxed load and store (no locked read-modify-write).
#[derive(Debug, Default)]
pub struct PortCounters {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Frames received with their L4 checksum still to compute (a veth
    /// uplink's peer offloading it), passed on as such.
    pub rx_partial_checksums: AtomicU64,
    /// Copies of mirror sources' frames sent to the port (in `tx_*` too).
    pub mirrored_packets: AtomicU64,
    pub mirrored_bytes: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
    /// Set when the port's device failed (deleted under the switch); the
    /// datapath has stopped polling it.
    pub failed: AtomicBool,
}

#[inline]
fn bump(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Ordering::Relaxed) + by, Ordering::Relaxed);
}

impl PortCounters {
    #[inline]
    pub fn rx(&self, bytes: usize) {
        bump(&self.rx_packets, 1);
        bump(&self.rx_bytes, bytes as u64);
    }

    #[inline]
    pub fn tx(&self, bytes: usize) {
        bump(&self.tx_packets, 1);
        bump(&self.tx_bytes, bytes as u64);
    }

    /// Counts `packets` frames of `bytes` bytes in all sent (a super-frame
    /// sent as several segments).
    #[inline]
    pub fn tx_many(&self, packets: usize, bytes: usize) {
        bump(&self.tx_packets, packets as u64);
        bump(&self.tx_bytes, bytes as u64);
    }

    #[inline]
    pub fn mirrored(&self, bytes: usize) {
        bump(&self.mirrored_packets, 1);
        bump(&self.mirrored_bytes, bytes as u64);
    }

    #[inline]
    pub fn rx_partial_checksum(&self) {
        bump(&self.rx_partial_checksums, 1);
    }

    #[inline]
    pub fn dropped(&self, reason: DropReason) {
        bump(&self.drops[reason as usize], 1);
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Ordering::Relaxed)
    }

    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_numbered_in_order() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{} is out of place", r.name());
        }
    }

    #[test]
    fn counts_accumulate() {
        let c = PortCounters::default();
        c.rx(100);
        c.rx(50);
        c.tx(10);
        c.dropped(DropReason::MacSpoofing);
        assert_eq!(PortCounters::get(&c.rx_packets), 2);
        assert_eq!(PortCounters::get(&c.rx_bytes), 150);
        assert_eq!(PortCounters::get(&c.tx_bytes), 10);
        assert_eq!(c.drops(DropReason::MacSpoofing), 1);
        assert_eq!(c.drops(DropReason::Malformed), 0);
    }
}
