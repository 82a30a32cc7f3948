//! The admission check every frame passes before it is switched: a sane
//! Ethernet header and, on endpoint ports, the endpoint's own addresses.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::DropReason;
use crate::wire::{
    ArpPacket, EtherType, EthernetFrame, IpProtocol, Ipv4Packet, Ipv6Packet, MacAddr, NdpRepr,
};

/// The addresses an endpoint port may send from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSecurity {
    pub mac: MacAddr,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

/// 802.1Q, 802.1ad and the old QinQ tag: VLANs belong to uplinks only.
const TAG_TYPES: [[u8; 2]; 3] = [[0x81, 0x00], [0x88, 0xa8], [0x91, 0x00]];

/// Checks a received frame; returns its (source, destination) MACs when it
/// may be switched, or why it must be dropped. `local` is true for vNICs
/// (endpoint and host ports), which may never send VLAN-tagged frames,
/// spoofing allowed or not: a tag would let them hop onto another VLAN of
/// the uplink.
pub fn admit(
    security: Option<&PortSecurity>,
    local: bool,
    frame: &[u8],
) -> Result<(MacAddr, MacAddr), DropReason> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| DropReason::Malformed)?;
    let src = eth.src();
    if src.is_multicast() || src.is_zero() {
        return Err(DropReason::InvalidSourceMac);
    }
    if local && TAG_TYPES.iter().any(|t| frame[12..14] == t[..]) {
        return Err(DropReason::VlanTagged);
    }
    if let Some(sec) = security {
        check_endpoint(sec, &eth)?;
    }
    Ok((src, eth.dst()))
}

fn check_endpoint(sec: &PortSecurity, eth: &EthernetFrame<&[u8]>) -> Result<(), DropReason> {
    if eth.src() != sec.mac {
        return Err(DropReason::MacSpoofing);
    }
    match eth.ethertype() {
        EtherType::Ipv4 => {
            let ip = Ipv4Packet::new_checked(eth.payload()).map_err(|_| DropReason::Malformed)?;
            let from = ip.src();
            // 0.0.0.0 is what a DHCP client sends from before it has an address.
            if Some(from) != sec.ipv4 && !from.is_unspecified() {
                return Err(DropReason::IpSpoofing);
            }
        }
        EtherType::Arp => {
            let arp = ArpPacket::new_checked(eth.payload()).map_err(|_| DropReason::Malformed)?;
            if arp.sender_hw_addr() != sec.mac {
                return Err(DropReason::MacSpoofing);
            }
            let from = arp.sender_proto_addr();
            // 0.0.0.0 is an address-conflict probe (RFC 5227).
            if Some(from) != sec.ipv4 && !from.is_unspecified() {
                return Err(DropReason::IpSpoofing);
            }
        }
        EtherType::Ipv6 => {
            let ip = Ipv6Packet::new_checked(eth.payload()).map_err(|_| DropReason::Malformed)?;
            let from = ip.src();
            // Link-local addresses are the kernel's own (NDP, router
            // solicitation); :: is duplicate address detection.
            if Some(from) != sec.ipv6 && !is_link_local(from) && !from.is_unspecified() {
                return Err(DropReason::IpSpoofing);
            }
            // Neighbour discovery is IPv6's ARP: the addresses a solicitation
            // or advertisement announces must be the endpoint's too.
            if ip.next_header() == IpProtocol::Icmpv6 {
                match NdpRepr::parse_ipv6(&ip) {
                    Ok(NdpRepr::NeighborSolicit {
                        source_lladdr: Some(mac),
                        ..
                    }) if mac != sec.mac => return Err(DropReason::MacSpoofing),
                    Ok(NdpRepr::NeighborAdvert {
                        target,
                        target_lladdr,
                        ..
                    }) => {
                        if target_lladdr.is_some_and(|mac| mac != sec.mac) {
                            return Err(DropReason::MacSpoofing);
                        }
                        if Some(target) != sec.ipv6 && !is_link_local(target) {
                            return Err(DropReason::IpSpoofing);
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn is_link_local(ip: Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

#[cfg(test)]
mod tests {
    use super::*;

    const EP_MAC: [u8; 6] = [0x02, 0x15, 0x5d, 0, 0, 1];
    const OTHER_MAC: [u8; 6] = [0x02, 0x15, 0x5d, 0, 0, 2];

    fn sec() -> PortSecurity {
        PortSecurity {
            mac: MacAddr(EP_MAC),
            ipv4: Some(Ipv4Addr::new(10, 0, 0, 2)),
            ipv6: Some("fd00::2".parse().unwrap()),
        }
    }

    fn eth(src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&src);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn ipv4(src: [u8; 4]) -> Vec<u8> {
        let mut h = vec![0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0];
        h.extend_from_slice(&src);
        h.extend_from_slice(&[10, 0, 0, 3]);
        h
    }

    fn ipv6(src: Ipv6Addr) -> Vec<u8> {
        let mut h = vec![0x60, 0, 0, 0, 0, 0, 58, 255];
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        h
    }

    fn arp(sender_mac: [u8; 6], sender_ip: [u8; 4]) -> Vec<u8> {
        let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
        a.extend_from_slice(&sender_mac);
        a.extend_from_slice(&sender_ip);
        a.extend_from_slice(&[0; 6]);
        a.extend_from_slice(&[10, 0, 0, 3]);
        a
    }

    #[test]
    fn short_frame_is_malformed() {
        assert_eq!(admit(None, true, &[0; 13]), Err(DropReason::Malformed));
    }

    #[test]
    fn multicast_source_is_refused_even_on_trusted_ports() {
        let f = eth([0x01, 0, 0x5e, 0, 0, 1], 0x0800, &ipv4([10, 0, 0, 2]));
        assert_eq!(admit(None, true, &f), Err(DropReason::InvalidSourceMac));
    }

    #[test]
    fn own_addresses_pass() {
        let s = sec();
        assert!(admit(Some(&s), true, &eth(EP_MAC, 0x0800, &ipv4([10, 0, 0, 2]))).is_ok());
        assert!(admit(Some(&s), true, &eth(EP_MAC, 0x0800, &ipv4([0, 0, 0, 0]))).is_ok());
        assert!(admit(
            Some(&s),
            true,
            &eth(EP_MAC, 0x0806, &arp(EP_MAC, [10, 0, 0, 2]))
        )
        .is_ok());
        let ll: Ipv6Addr = "fe80::15:5dff:fe00:1".parse().unwrap();
        assert!(admit(Some(&s), true, &eth(EP_MAC, 0x86dd, &ipv6(ll))).is_ok());
        let own6: Ipv6Addr = "fd00::2".parse().unwrap();
        assert!(admit(Some(&s), true, &eth(EP_MAC, 0x86dd, &ipv6(own6))).is_ok());
    }

    #[test]
    fn spoofing_is_refused() {
        let s = sec();
        let f = eth(OTHER_MAC, 0x0800, &ipv4([10, 0, 0, 2]));
        assert_eq!(admit(Some(&s), true, &f), Err(DropReason::MacSpoofing));
        let f = eth(EP_MAC, 0x0800, &ipv4([10, 0, 0, 9]));
        assert_eq!(admit(Some(&s), true, &f), Err(DropReason::IpSpoofing));
        let f = eth(EP_MAC, 0x0806, &arp(OTHER_MAC, [10, 0, 0, 2]));
        assert_eq!(admit(Some(&s), true, &f), Err(DropReason::MacSpoofing));
        let f = eth(EP_MAC, 0x0806, &arp(EP_MAC, [10, 0, 0, 9]));
        assert_eq!(admit(Some(&s), true, &f), Err(DropReason::IpSpoofing));
        let f = eth(EP_MAC, 0x86dd, &ipv6("fd00::9".parse().unwrap()));
        assert_eq!(admit(Some(&s), true, &f), Err(DropReason::IpSpoofing));
        let f = eth(EP_MAC, 0x8100, &[0, 5, 8, 0]);
        assert_eq!(admit(Some(&s), true, &f), Err(DropReason::VlanTagged));
    }

    #[test]
    fn tagged_frames_never_leave_a_vnic_but_pass_from_the_wire() {
        for tpid in [0x8100, 0x88a8, 0x9100] {
            let f = eth(OTHER_MAC, tpid, &[0, 5, 8, 0]);
            assert_eq!(
                admit(None, true, &f),
                Err(DropReason::VlanTagged),
                "{tpid:#x}"
            );
            assert!(admit(None, false, &f).is_ok(), "{tpid:#x} from an uplink");
        }
    }

    /// An ICMPv6 neighbour advertisement from the endpoint's link-local
    /// address for `target`, announcing `lladdr`.
    fn advert(target: Ipv6Addr, lladdr: MacAddr) -> Vec<u8> {
        use crate::wire::{Icmpv6Packet, Ipv6Repr, NaFlags};
        let src: Ipv6Addr = "fe80::1".parse().unwrap();
        let dst: Ipv6Addr = "ff02::1".parse().unwrap();
        let ndp = NdpRepr::NeighborAdvert {
            flags: NaFlags::default(),
            target,
            target_lladdr: Some(lladdr),
        };
        let mut ip = vec![0u8; 40 + ndp.buffer_len()];
        let mut pkt = Ipv6Packet::new_unchecked(&mut ip[..]);
        Ipv6Repr {
            src,
            dst,
            next_header: IpProtocol::Icmpv6,
            payload_len: ndp.buffer_len() as u16,
            hop_limit: 255,
        }
        .emit(&mut pkt);
        ndp.emit(
            src,
            dst,
            &mut Icmpv6Packet::new_unchecked(pkt.payload_mut()),
        );
        eth(EP_MAC, 0x86dd, &ip)
    }

    #[test]
    fn neighbour_advertisements_must_be_about_the_endpoint() {
        let s = sec();
        let own: Ipv6Addr = "fd00::2".parse().unwrap();
        let peer: Ipv6Addr = "fd00::3".parse().unwrap();
        assert!(admit(Some(&s), true, &advert(own, MacAddr(EP_MAC))).is_ok());
        let f = advert(peer, MacAddr(EP_MAC));
        assert_eq!(admit(Some(&s), true, &f), Err(DropReason::IpSpoofing));
        let f = advert(own, MacAddr(OTHER_MAC));
        assert_eq!(admit(Some(&s), true, &f), Err(DropReason::MacSpoofing));
    }

    #[test]
    fn trusted_port_may_send_anything_unicast() {
        let f = eth(OTHER_MAC, 0x0800, &ipv4([192, 0, 2, 1]));
        assert!(admit(None, true, &f).is_ok());
    }

    #[test]
    fn truncated_ip_behind_valid_ethernet_is_malformed() {
        let f = eth(EP_MAC, 0x0800, &[0x45, 0]);
        assert_eq!(admit(Some(&sec()), true, &f), Err(DropReason::Malformed));
    }
}
