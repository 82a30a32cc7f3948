//! The admission check every frame passes before it is switched: a sane
//! Ethernet header and, on endpoint ports, the endpoint's own addresses;
//! then the port guards (Hyper-V's DhcpGuard and RouterGuard), which hold
//! whether the endpoint may spoof or not.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::datapath::DropReason;
use crate::wire::{
    ArpOperation, ArpPacket, EtherType, EthernetFrame, Icmpv6Type, IpProtocol, Ipv4Packet,
    Ipv6Packet, MacAddr, NdpRepr,
};

/// The addresses an endpoint port may send from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSecurity {
    pub mac: MacAddr,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// The vNIC's link-local address: the switch sets its MAC and EUI-64
    /// address generation, so this is [`link_local_of`] its MAC.
    pub link_local: Ipv6Addr,
}

impl PortSecurity {
    pub fn new(mac: MacAddr, ipv4: Option<Ipv4Addr>, ipv6: Option<Ipv6Addr>) -> PortSecurity {
        PortSecurity {
            mac,
            ipv4,
            ipv6,
            link_local: link_local_of(mac),
        }
    }

    /// Whether `ip` is one of the endpoint's own IPv6 addresses.
    fn owns6(&self, ip: Ipv6Addr) -> bool {
        Some(ip) == self.ipv6 || ip == self.link_local
    }
}

/// Hyper-V's per-vNIC guards. Both are on for endpoints unless a lab says
/// otherwise (unlike Hyper-V's VM defaults): a container that serves DHCP
/// or routes is the exception. Trusted ports (host, uplink) have neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Guards {
    /// Drop DHCP server messages: DHCPv4 from port 67 to 68, DHCPv6 from
    /// 547 to 546.
    pub dhcp: bool,
    /// Drop ICMPv6 router advertisements and redirects.
    pub router: bool,
}

impl Guards {
    pub const ENDPOINT: Guards = Guards {
        dhcp: true,
        router: true,
    };
    pub const NONE: Guards = Guards {
        dhcp: false,
        router: false,
    };
}

/// DHCPv6's UDP ports: a server sends from 547 to a client's 546.
const DHCP6_SERVER_PORT: u16 = 547;
const DHCP6_CLIENT_PORT: u16 = 546;

/// Checks a frame from a vNIC against its guards. Looks through IPv6
/// extension headers, which is where an attacker hides what a guard looks
/// for (RFC 7113).
pub fn guard(guards: Guards, frame: &[u8]) -> Result<(), DropReason> {
    if guards == Guards::NONE {
        return Ok(());
    }
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Err(DropReason::Malformed);
    };
    match eth.ethertype() {
        EtherType::Ipv4 if guards.dhcp => {
            let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
                return Ok(());
            };
            if ip.protocol() == IpProtocol::Udp && !ip.is_fragment() {
                if let Some(udp) = ip.payload().get(..4) {
                    let ports = (
                        u16::from_be_bytes([udp[0], udp[1]]),
                        u16::from_be_bytes([udp[2], udp[3]]),
                    );
                    if ports == (DHCP_SERVER_PORT, DHCP_CLIENT_PORT) {
                        return Err(DropReason::DhcpGuard);
                    }
                }
            }
            Ok(())
        }
        EtherType::Ipv6 => {
            let Ok(ip) = Ipv6Packet::new_checked(eth.payload()) else {
                return Ok(());
            };
            let Some(upper) = upper_layer6(&ip)? else {
                return Ok(());
            };
            match upper.proto {
                58 if guards.router => match upper.bytes.first().map(|&t| Icmpv6Type::from(t)) {
                    Some(Icmpv6Type::RouterAdvert | Icmpv6Type::Redirect) => {
                        Err(DropReason::RouterGuard)
                    }
                    _ => Ok(()),
                },
                17 if guards.dhcp => match upper.bytes.get(..4) {
                    Some(udp)
                        if u16::from_be_bytes([udp[0], udp[1]]) == DHCP6_SERVER_PORT
                            && u16::from_be_bytes([udp[2], udp[3]]) == DHCP6_CLIENT_PORT =>
                    {
                        Err(DropReason::DhcpGuard)
                    }
                    _ => Ok(()),
                },
                _ => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

/// The EUI-64 link-local address the kernel gives an interface with `mac`
/// (RFC 4291 appendix A: ff:fe in the middle, the U/L bit flipped).
pub fn link_local_of(mac: MacAddr) -> Ipv6Addr {
    let m = mac.0;
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        m[0] ^ 0x02,
        m[1],
        m[2],
        0xff,
        0xfe,
        m[3],
        m[4],
        m[5],
    ])
}

/// DHCP's UDP ports: a client sends from 68 to 67.
const DHCP_CLIENT_PORT: u16 = 68;
const DHCP_SERVER_PORT: u16 = 67;

/// IPv6 extension headers that may stand between the IPv6 header and the
/// upper layer (RFC 8200 section 4): hop-by-hop, routing, fragment,
/// destination options.
const EXT_HOP_BY_HOP: u8 = 0;
const EXT_ROUTING: u8 = 43;
const EXT_FRAGMENT: u8 = 44;
const EXT_DEST_OPTS: u8 = 60;
/// How many extension headers are walked before the frame is refused.
const MAX_EXT_HEADERS: usize = 8;

/// The upper-layer protocol of an IPv6 packet behind any extension headers,
/// with its bytes and whether an extension header stood in front; `None`
/// for a non-first fragment (no upper-layer header in it). A chain that
/// does not fit, or is too long, is malformed: an attacker hides a router
/// advertisement behind headers exactly so (RFC 7113).
/// The upper layer of an IPv6 packet.
struct Upper<'a> {
    proto: u8,
    bytes: &'a [u8],
    /// Whether extension headers stood between it and the IPv6 header.
    behind_ext: bool,
}

fn upper_layer6<'a>(ip: &'a Ipv6Packet<&[u8]>) -> Result<Option<Upper<'a>>, DropReason> {
    let mut next = u8::from(ip.next_header());
    let mut rest = ip.payload();
    for depth in 0..=MAX_EXT_HEADERS {
        let len = match next {
            EXT_HOP_BY_HOP | EXT_ROUTING | EXT_DEST_OPTS => {
                let b = rest.get(..2).ok_or(DropReason::Malformed)?;
                8 + usize::from(b[1]) * 8
            }
            EXT_FRAGMENT => {
                let b = rest.get(..8).ok_or(DropReason::Malformed)?;
                if u16::from_be_bytes([b[2], b[3]]) & 0xfff8 != 0 {
                    return Ok(None);
                }
                8
            }
            _ => {
                return Ok(Some(Upper {
                    proto: next,
                    bytes: rest,
                    behind_ext: depth > 0,
                }))
            }
        };
        if depth == MAX_EXT_HEADERS || rest.len() < len {
            return Err(DropReason::Malformed);
        }
        next = rest[0];
        rest = &rest[len..];
    }
    Err(DropReason::Malformed)
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
            if Some(from) != sec.ipv4 && !(from.is_unspecified() && is_dhcp_client(&ip)) {
                return Err(DropReason::IpSpoofing);
            }
        }
        EtherType::Arp => {
            let arp = ArpPacket::new_checked(eth.payload()).map_err(|_| DropReason::Malformed)?;
            if arp.sender_hw_addr() != sec.mac {
                return Err(DropReason::MacSpoofing);
            }
            let from = arp.sender_proto_addr();
            // 0.0.0.0 is an address-conflict probe (RFC 5227), a request.
            let probe = from.is_unspecified() && arp.operation() == ArpOperation::Request;
            if Some(from) != sec.ipv4 && !probe {
                return Err(DropReason::IpSpoofing);
            }
        }
        EtherType::Ipv6 => {
            let ip = Ipv6Packet::new_checked(eth.payload()).map_err(|_| DropReason::Malformed)?;
            check_ipv6(sec, &ip)?;
        }
        _ => {}
    }
    Ok(())
}

/// A DHCP client message: UDP from port 68 to 67, unfragmented.
fn is_dhcp_client(ip: &Ipv4Packet<&[u8]>) -> bool {
    if ip.protocol() != IpProtocol::Udp || ip.is_fragment() {
        return false;
    }
    match ip.payload().get(..4) {
        Some(udp) => {
            u16::from_be_bytes([udp[0], udp[1]]) == DHCP_CLIENT_PORT
                && u16::from_be_bytes([udp[2], udp[3]]) == DHCP_SERVER_PORT
        }
        None => false,
    }
}

/// IPv6 first-hop security (RFC 6105, RFC 6620 in spirit): an endpoint
/// sends from its own global or link-local address, or from `::` only for
/// duplicate address detection and MLD reports; it claims in neighbour
/// discovery only addresses that are its own. (Router advertisements are
/// the router guard's, [`guard`], which holds apart from spoofing.)
fn check_ipv6(sec: &PortSecurity, ip: &Ipv6Packet<&[u8]>) -> Result<(), DropReason> {
    let from = ip.src();
    let upper = upper_layer6(ip)?;
    let icmp_type = match &upper {
        Some(u) if u.proto == u8::from(IpProtocol::Icmpv6) => u.bytes.first().copied(),
        _ => None,
    };
    let behind_ext = upper.as_ref().is_some_and(|u| u.behind_ext);
    match icmp_type.map(Icmpv6Type::from) {
        // Neighbour discovery is never fragmented or behind other headers
        // (RFC 6980); hiding it so is how a check like this one is evaded.
        Some(Icmpv6Type::NeighborSolicit | Icmpv6Type::NeighborAdvert) if behind_ext => {
            return Err(DropReason::Malformed)
        }
        _ => {}
    }
    if from.is_unspecified() {
        // Duplicate address detection (an NS) and the MLD reports that go
        // with it (RFC 3590) are all that may come from ::.
        let allowed = matches!(
            icmp_type,
            Some(MLD_REPORT_V1 | MLD_REPORT_V2) | Some(NEIGHBOR_SOLICIT)
        );
        if !allowed {
            return Err(DropReason::IpSpoofing);
        }
    } else if !sec.owns6(from) {
        return Err(DropReason::IpSpoofing);
    }
    if ip.next_header() != IpProtocol::Icmpv6 {
        return Ok(());
    }
    // Neighbour discovery is IPv6's ARP: the addresses a solicitation or
    // advertisement announces must be the endpoint's too.
    match NdpRepr::parse_ipv6(ip) {
        Ok(NdpRepr::NeighborSolicit {
            source_lladdr: Some(mac),
            ..
        }) if mac != sec.mac => Err(DropReason::MacSpoofing),
        // A DAD probe claims its target.
        Ok(NdpRepr::NeighborSolicit { target, .. })
            if from.is_unspecified() && !sec.owns6(target) =>
        {
            Err(DropReason::IpSpoofing)
        }
        Ok(NdpRepr::NeighborAdvert {
            target,
            target_lladdr,
            ..
        }) => {
            if target_lladdr.is_some_and(|mac| mac != sec.mac) {
                return Err(DropReason::MacSpoofing);
            }
            if !sec.owns6(target) {
                return Err(DropReason::IpSpoofing);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// ICMPv6 types allowed from `::`.
const NEIGHBOR_SOLICIT: u8 = 135;
const MLD_REPORT_V1: u8 = 131;
const MLD_REPORT_V2: u8 = 143;

#[cfg(test)]
mod tests {
    use super::*;

    const EP_MAC: [u8; 6] = [0x02, 0x15, 0x5d, 0, 0, 1];
    const OTHER_MAC: [u8; 6] = [0x02, 0x15, 0x5d, 0, 0, 2];

    fn sec() -> PortSecurity {
        PortSecurity::new(
            MacAddr(EP_MAC),
            Some(Ipv4Addr::new(10, 0, 0, 2)),
            Some("fd00::2".parse().unwrap()),
        )
    }

    /// The endpoint's own link-local address (EUI-64 of EP_MAC).
    fn own_ll() -> Ipv6Addr {
        "fe80::15:5dff:fe00:1".parse().unwrap()
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

    /// A DHCP client's first message: UDP 0.0.0.0:68 -> 255.255.255.255:67.
    fn dhcp_discover() -> Vec<u8> {
        let mut h = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0];
        h.extend_from_slice(&[255, 255, 255, 255]);
        h.extend_from_slice(&[0, 68, 0, 67, 0, 8, 0, 0]);
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
        assert!(admit(Some(&s), true, &eth(EP_MAC, 0x0800, &dhcp_discover())).is_ok());
        assert!(admit(
            Some(&s),
            true,
            &eth(EP_MAC, 0x0806, &arp(EP_MAC, [10, 0, 0, 2]))
        )
        .is_ok());
        assert!(admit(Some(&s), true, &eth(EP_MAC, 0x86dd, &ipv6(own_ll()))).is_ok());
        assert_eq!(link_local_of(MacAddr(EP_MAC)), own_ll());
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
        use crate::wire::NaFlags;
        ndp(
            own_ll(),
            NdpRepr::NeighborAdvert {
                flags: NaFlags::default(),
                target,
                target_lladdr: Some(lladdr),
            },
        )
    }

    fn ndp(src: Ipv6Addr, ndp: NdpRepr) -> Vec<u8> {
        use crate::wire::{Icmpv6Packet, Ipv6Repr};
        let dst: Ipv6Addr = "ff02::1".parse().unwrap();
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

    /// An IPv6 packet from `src` to ff02::1 whose payload is `upper`
    /// behind the extension headers `ext` (each 8 bytes, next-header
    /// bytes filled in).
    fn ipv6_chain(src: Ipv6Addr, ext: &[u8], upper_proto: u8, upper: &[u8]) -> Vec<u8> {
        let mut payload = Vec::new();
        for (i, &kind) in ext.iter().enumerate() {
            let next = ext.get(i + 1).copied().unwrap_or(upper_proto);
            let mut h = [0u8; 8];
            h[0] = next;
            if kind == EXT_FRAGMENT {
                h[3] = 0; // offset 0: the first fragment
            }
            payload.extend_from_slice(&h);
        }
        payload.extend_from_slice(upper);
        let first = ext.first().copied().unwrap_or(upper_proto);
        let len = payload.len() as u16;
        let mut h = vec![0x60, 0, 0, 0, (len >> 8) as u8, len as u8, first, 255];
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&"ff02::1".parse::<Ipv6Addr>().unwrap().octets());
        h.extend_from_slice(&payload);
        eth(EP_MAC, 0x86dd, &h)
    }

    #[test]
    fn router_advertisements_and_redirects_are_dropped_however_dressed() {
        let s = sec();
        // Type 134 (RA) and 137 (redirect), straight and behind hop-by-hop,
        // destination options and a first fragment.
        for icmp_type in [134u8, 137] {
            let body = [icmp_type, 0, 0, 0, 64, 0, 0, 0];
            for ext in [&[][..], &[0], &[60], &[44], &[0, 60, 44]] {
                let f = ipv6_chain(own_ll(), ext, 58, &body);
                assert!(admit(Some(&s), true, &f).is_ok());
                assert_eq!(
                    guard(Guards::ENDPOINT, &f),
                    Err(DropReason::RouterGuard),
                    "type {icmp_type} behind {ext:?}"
                );
                // Guards hold for an endpoint that may spoof, too; a lab's
                // router turns its guard off.
                assert_eq!(
                    guard(
                        Guards {
                            dhcp: true,
                            router: false
                        },
                        &f
                    ),
                    Ok(())
                );
            }
        }
        // A chain longer than the walk allows, or cut short, is malformed.
        let f = ipv6_chain(own_ll(), &[60; 9], 58, &[134, 0, 0, 0]);
        assert_eq!(guard(Guards::ENDPOINT, &f), Err(DropReason::Malformed));
        assert_eq!(admit(Some(&s), true, &f), Err(DropReason::Malformed));
        let mut f = ipv6_chain(own_ll(), &[0], 58, &[]);
        f.truncate(f.len() - 4);
        let len = (f.len() - 14 - 40) as u8;
        f[14 + 5] = len;
        assert_eq!(admit(Some(&s), true, &f), Err(DropReason::Malformed));
    }

    #[test]
    fn dhcp_server_messages_are_the_dhcp_guards() {
        let udp = |sport: u16, dport: u16| {
            let mut b = sport.to_be_bytes().to_vec();
            b.extend_from_slice(&dport.to_be_bytes());
            b.extend_from_slice(&[0, 8, 0, 0]);
            b
        };
        let mut v4 = vec![
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 2, 255, 255, 255, 255,
        ];
        v4.extend_from_slice(&udp(67, 68));
        let offer = eth(EP_MAC, 0x0800, &v4);
        assert_eq!(guard(Guards::ENDPOINT, &offer), Err(DropReason::DhcpGuard));
        assert_eq!(guard(Guards::NONE, &offer), Ok(()));
        let reply6 = ipv6_chain(own_ll(), &[60], 17, &udp(547, 546));
        assert_eq!(guard(Guards::ENDPOINT, &reply6), Err(DropReason::DhcpGuard));
        // A client's own messages pass.
        assert_eq!(
            guard(Guards::ENDPOINT, &eth(EP_MAC, 0x0800, &dhcp_discover())),
            Ok(())
        );
        let solicit6 = ipv6_chain(own_ll(), &[], 17, &udp(546, 547));
        assert_eq!(guard(Guards::ENDPOINT, &solicit6), Ok(()));
    }

    #[test]
    fn only_the_endpoints_own_link_local_address_may_send() {
        let s = sec();
        let other_ll: Ipv6Addr = "fe80::15:5dff:fe00:2".parse().unwrap();
        let f = eth(EP_MAC, 0x86dd, &ipv6(other_ll));
        assert_eq!(admit(Some(&s), true, &f), Err(DropReason::IpSpoofing));
        // An advertisement about another endpoint's link-local address.
        let f = advert(other_ll, MacAddr(EP_MAC));
        assert_eq!(admit(Some(&s), true, &f), Err(DropReason::IpSpoofing));
        assert!(admit(Some(&s), true, &advert(own_ll(), MacAddr(EP_MAC))).is_ok());
    }

    #[test]
    fn the_unspecified_address_is_for_address_detection_only() {
        let s = sec();
        let any = Ipv6Addr::UNSPECIFIED;
        // DAD for its own address, and the MLD report that goes with it.
        let dad = |target| {
            ndp(
                any,
                NdpRepr::NeighborSolicit {
                    target,
                    source_lladdr: None,
                },
            )
        };
        assert!(admit(Some(&s), true, &dad(own_ll())).is_ok());
        assert!(admit(Some(&s), true, &dad("fd00::2".parse().unwrap())).is_ok());
        // DAD claiming a neighbour's address.
        let f = dad("fd00::3".parse().unwrap());
        assert_eq!(admit(Some(&s), true, &f), Err(DropReason::IpSpoofing));
        let mld = ipv6_chain(any, &[0], 58, &[143, 0, 0, 0, 0, 0, 0, 0]);
        assert!(admit(Some(&s), true, &mld).is_ok());
        // Anything else from :: (here, UDP) is spoofing.
        let udp = ipv6_chain(any, &[], 17, &[0, 1, 0, 2, 0, 8, 0, 0]);
        assert_eq!(admit(Some(&s), true, &udp), Err(DropReason::IpSpoofing));
        // Neighbour discovery hidden behind an extension header.
        let f = ipv6_chain(own_ll(), &[60], 58, &[136, 0, 0, 0]);
        assert_eq!(admit(Some(&s), true, &f), Err(DropReason::Malformed));
    }

    #[test]
    fn ipv4_unspecified_only_for_dhcp_clients_and_arp_probes() {
        let s = sec();
        assert!(admit(Some(&s), true, &eth(EP_MAC, 0x0800, &dhcp_discover())).is_ok());
        // 0.0.0.0 to anything but a DHCP server.
        let f = eth(EP_MAC, 0x0800, &ipv4([0, 0, 0, 0]));
        assert_eq!(admit(Some(&s), true, &f), Err(DropReason::IpSpoofing));
        // An ARP probe (a request from 0.0.0.0) passes; a reply does not.
        let probe = arp(EP_MAC, [0, 0, 0, 0]);
        assert!(admit(Some(&s), true, &eth(EP_MAC, 0x0806, &probe)).is_ok());
        let mut reply = probe.clone();
        reply[7] = 2;
        let f = eth(EP_MAC, 0x0806, &reply);
        assert_eq!(admit(Some(&s), true, &f), Err(DropReason::IpSpoofing));
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
