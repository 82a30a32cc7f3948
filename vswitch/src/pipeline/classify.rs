//! Classification: a frame parsed once into a [`PacketMeta`] (where its
//! headers are and what they are), from which the [`FlowKey`] of the flow
//! it belongs to is built.
//!
//! Classification never drops a frame for what is above Ethernet: a trusted
//! port may send anything, and port security says why it refuses what it
//! refuses. Only a frame shorter than an Ethernet header is malformed here.

use super::{NetId, PortId};
use crate::datapath::DropReason;
use crate::wire::{
    EtherType, EthernetFrame, IpProtocol, Ipv4Packet, Ipv6Packet, MacAddr, TcpPacket, UdpPacket,
};

/// An offset that is not there (no L3 or L4 header the switch reads).
pub const ABSENT: u16 = u16::MAX;

/// Where a frame's headers are and what they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketMeta {
    pub src: MacAddr,
    pub dst: MacAddr,
    /// The type behind any 802.1Q tag.
    pub ethertype: u16,
    /// The outer tag's VLAN id, `None` if untagged.
    pub vlan: Option<u16>,
    /// Offset of the L3 header (behind the tag), always set.
    pub l3: u16,
    /// Offset of the L4 header: [`ABSENT`] for non-IP frames, non-first
    /// fragments and IPv6 upper layers behind extension headers.
    pub l4: u16,
    /// 4, 6, or 0 when not IP.
    pub family: u8,
    /// IPv4 protocol or IPv6 next header; 0 when not IP.
    pub proto: u8,
}

/// Where a frame came from, relative to the switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Direction {
    /// Sent by a vNIC into the switch (VFP's "outbound" of the vNIC).
    FromVnic = 0,
    /// Arrived from the wire through an uplink.
    FromWire = 1,
}

/// The key a flow is cached, traced and offloaded under.
///
/// Layout (64 bytes, mirrored in C by the fast path; never reorder):
/// `net` u32 @0, `in_port` u32 @4, `src_ip` @8, `dst_ip` @24 (IPv4 as
/// IPv4-mapped IPv6, zero when not IP), `src_port` u16 @40, `dst_port` u16
/// @42 (zero without L4 ports), `vlan` u16 @44 (VID | [`FlowKey::TAGGED`]),
/// `ethertype` u16 @46, `src_mac` @48, `dst_mac` @54, `proto` u8 @60,
/// `family` u8 @61, `direction` u8 @62, `_pad` u8 @63 (zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct FlowKey {
    pub net: NetId,
    pub in_port: PortId,
    pub src_ip: [u8; 16],
    pub dst_ip: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub vlan: u16,
    pub ethertype: u16,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub proto: u8,
    pub family: u8,
    pub direction: u8,
    pub _pad: u8,
}

const _: () = assert!(std::mem::size_of::<FlowKey>() == 64);
const _: () = assert!(std::mem::align_of::<FlowKey>() == 4);
// The same offsets as `struct flow_key` in xdp-prog/flow.h.
const _: () = {
    use std::mem::offset_of;
    assert!(offset_of!(FlowKey, src_ip) == 8);
    assert!(offset_of!(FlowKey, dst_ip) == 24);
    assert!(offset_of!(FlowKey, src_port) == 40);
    assert!(offset_of!(FlowKey, vlan) == 44);
    assert!(offset_of!(FlowKey, src_mac) == 48);
    assert!(offset_of!(FlowKey, dst_mac) == 54);
    assert!(offset_of!(FlowKey, proto) == 60);
    assert!(offset_of!(FlowKey, direction) == 62);
};

impl FlowKey {
    /// Set in `vlan` when the frame was tagged (a priority tag has VID 0).
    pub const TAGGED: u16 = 0x1000;
}

/// Parses `frame`'s headers. Fails only for a frame with no whole
/// Ethernet header.
pub fn classify(frame: &[u8]) -> Result<PacketMeta, DropReason> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| DropReason::Malformed)?;
    let vlan = eth.vlan_id();
    let l3 = eth.header_len();
    let ethertype = eth.inner_ethertype();
    let mut meta = PacketMeta {
        src: eth.src(),
        dst: eth.dst(),
        ethertype: u16::from(ethertype),
        vlan,
        l3: l3 as u16,
        l4: ABSENT,
        family: 0,
        proto: 0,
    };
    let l3_bytes = frame.get(l3..).unwrap_or_default();
    match ethertype {
        EtherType::Ipv4 => {
            if let Ok(ip) = Ipv4Packet::new_checked(l3_bytes) {
                meta.family = 4;
                meta.proto = u8::from(ip.protocol());
                if ip.frag_offset() == 0 {
                    meta.l4 = (l3 + ip.header_len()) as u16;
                }
            }
        }
        EtherType::Ipv6 => {
            if let Ok(ip) = Ipv6Packet::new_checked(l3_bytes) {
                meta.family = 6;
                let next = ip.next_header();
                meta.proto = u8::from(next);
                if matches!(next, IpProtocol::Tcp | IpProtocol::Udp | IpProtocol::Icmpv6) {
                    meta.l4 = (l3 + 40) as u16;
                }
            }
        }
        _ => {}
    }
    Ok(meta)
}

impl PacketMeta {
    /// The flow key of `frame`, which this was classified from.
    pub fn flow_key(
        &self,
        frame: &[u8],
        net: NetId,
        in_port: PortId,
        direction: Direction,
    ) -> FlowKey {
        let mut key = FlowKey {
            net,
            in_port,
            src_ip: [0; 16],
            dst_ip: [0; 16],
            src_port: 0,
            dst_port: 0,
            vlan: self.vlan.map_or(0, |v| v | FlowKey::TAGGED),
            ethertype: self.ethertype,
            src_mac: self.src.0,
            dst_mac: self.dst.0,
            proto: self.proto,
            family: self.family,
            direction: direction as u8,
            _pad: 0,
        };
        let l3 = frame.get(usize::from(self.l3)..).unwrap_or_default();
        match self.family {
            4 => {
                let ip = Ipv4Packet::new_unchecked(l3);
                key.src_ip = ip.src().to_ipv6_mapped().octets();
                key.dst_ip = ip.dst().to_ipv6_mapped().octets();
            }
            6 => {
                let ip = Ipv6Packet::new_unchecked(l3);
                key.src_ip = ip.src().octets();
                key.dst_ip = ip.dst().octets();
            }
            _ => {}
        }
        if self.l4 != ABSENT {
            let l4 = frame.get(usize::from(self.l4)..).unwrap_or_default();
            let ports = match IpProtocol::from(self.proto) {
                IpProtocol::Tcp => TcpPacket::new_checked(l4)
                    .ok()
                    .map(|t| (t.src_port(), t.dst_port())),
                IpProtocol::Udp => UdpPacket::new_checked(l4)
                    .ok()
                    .map(|u| (u.src_port(), u.dst_port())),
                _ => None,
            };
            if let Some((s, d)) = ports {
                key.src_port = s;
                key.dst_port = d;
            }
        }
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn udp4(tagged: Option<u16>) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        if let Some(vid) = tagged {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&vid.to_be_bytes());
        }
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&[10, 0, 0, 2, 10, 0, 0, 3]);
        f.extend_from_slice(&[0x30, 0x39, 0, 53, 0, 8, 0, 0]);
        f
    }

    #[test]
    fn udp_over_ipv4_untagged_and_tagged() {
        let f = udp4(None);
        let m = classify(&f).unwrap();
        assert_eq!(
            (m.l3, m.l4, m.family, m.proto, m.vlan),
            (14, 34, 4, 17, None)
        );
        let k = m.flow_key(&f, 3, 9, Direction::FromVnic);
        assert_eq!(
            (k.net, k.in_port, k.src_port, k.dst_port),
            (3, 9, 12345, 53)
        );
        assert_eq!(
            k.src_ip,
            Ipv4Addr::new(10, 0, 0, 2).to_ipv6_mapped().octets()
        );
        assert_eq!((k.ethertype, k.vlan, k.direction), (0x0800, 0, 0));

        let f = udp4(Some(42));
        let m = classify(&f).unwrap();
        assert_eq!((m.l3, m.l4, m.vlan), (18, 38, Some(42)));
        let k = m.flow_key(&f, 3, 9, Direction::FromWire);
        assert_eq!(
            (k.vlan, k.dst_port, k.direction),
            (42 | FlowKey::TAGGED, 53, 1)
        );
    }

    #[test]
    fn only_a_short_ethernet_header_is_malformed() {
        assert_eq!(classify(&[0; 13]), Err(DropReason::Malformed));
        let mut f = udp4(None);
        f.truncate(20); // IPv4 cut short: not IP to the key, still switched
        let m = classify(&f).unwrap();
        assert_eq!((m.family, m.l4), (0, ABSENT));
        let k = m.flow_key(&f, 1, 1, Direction::FromVnic);
        assert_eq!((k.src_ip, k.src_port), ([0; 16], 0));
    }
}
