//! Layer-2 address translation of the `l2bridge` mode: endpoints share the
//! uplink's MAC on the wire (1 MAC, N IPs).
//!
//! Leaving through the uplink, a frame's source MAC becomes the uplink's,
//! and so does every MAC the frame announces inside it (ARP sender, NDP
//! link-layer options), so the fabric never learns an endpoint MAC.
//! Arriving at the uplink, a frame addressed to the uplink's MAC is handed
//! to the endpoint owning its destination IP, with that endpoint's MAC put
//! back in; ARP requests and neighbour solicitations for endpoint addresses
//! are answered by the switch with the uplink's MAC.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};

use super::verdict::HeaderTransform;
use crate::port::Packet;
use crate::wire::{
    ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetFrame, EthernetRepr, Icmpv6Packet,
    Icmpv6Type, Ipv4Packet, Ipv6Packet, Ipv6Repr, MacAddr, NdpRepr,
};

/// The endpoints of a network, by address.
pub type Locals = HashMap<IpAddr, MacAddr>;

/// What to do with a frame that arrived from the wire.
#[derive(Debug, PartialEq, Eq)]
pub enum Ingress {
    /// Switch it, transformed so (its destination MAC put back).
    Forward(HeaderTransform),
    /// Send the answer the switch wrote into `reply` back out the uplink;
    /// the frame itself goes no further.
    Reply,
    /// Addressed to the uplink's MAC but to no endpoint: not ours.
    NotLocal,
}

const ETH_HEADER: usize = 14;
const IPV6_HEADER: usize = 40;
/// ICMPv6 bytes before the options: RS has 8, NS and NA have 24.
const RS_FIXED: usize = 8;
const NS_NA_FIXED: usize = 24;
const OPT_SOURCE_LLADDR: u8 = 1;
const OPT_TARGET_LLADDR: u8 = 2;

/// Rewrites a frame on its way out of the uplink (the action behind
/// [`HeaderTransform::ANNOUNCE_SRC_MAC`]).
pub fn egress(frame: &mut [u8], uplink: MacAddr) {
    let Ok(mut eth) = EthernetFrame::new_checked(&mut frame[..]) else {
        return;
    };
    eth.set_src(uplink);
    match eth.ethertype() {
        EtherType::Arp => {
            if let Ok(mut arp) = ArpPacket::new_checked(eth.payload_mut()) {
                arp.set_sender_hw_addr(uplink);
            }
        }
        EtherType::Ipv6 => rewrite_ndp_lladdr(eth.payload_mut(), uplink),
        _ => {}
    }
}

/// Points the link-layer address options of router and neighbour
/// solicitations and advertisements at the uplink, and fixes the checksum.
fn rewrite_ndp_lladdr(ip6: &mut [u8], uplink: MacAddr) {
    let Ok(mut ip) = Ipv6Packet::new_checked(&mut ip6[..]) else {
        return;
    };
    if u8::from(ip.next_header()) != 58 {
        return;
    }
    let Ok(mut icmp) = Icmpv6Packet::new_checked(ip.payload_mut()) else {
        return;
    };
    let fixed = match icmp.msg_type() {
        Icmpv6Type::RouterSolicit => RS_FIXED,
        Icmpv6Type::NeighborSolicit | Icmpv6Type::NeighborAdvert => NS_NA_FIXED,
        _ => return,
    };
    let body_offset = 4; // type, code, checksum
    let mut checksum = icmp.checksum();
    {
        let body = icmp.body_mut();
        let mut at = fixed - body_offset;
        while at + 2 <= body.len() {
            let (kind, len) = (body[at], body[at + 1] as usize * 8);
            if len == 0 || at + len > body.len() {
                break;
            }
            if (kind == OPT_SOURCE_LLADDR || kind == OPT_TARGET_LLADDR) && len == 8 {
                let old: [u8; 6] = body[at + 2..at + 8].try_into().expect("6 bytes");
                body[at + 2..at + 8].copy_from_slice(&uplink.0);
                // The options start at an even offset of the message, so
                // the MAC is three whole 16-bit words of the sum.
                checksum = checksum_update(checksum, &old, &uplink.0);
            }
            at += len;
        }
    }
    // Updated, not recomputed (RFC 1624): a message that arrived with a
    // bad checksum leaves with one, so the switch never repairs a corrupt
    // frame into one the wire accepts.
    icmp.set_checksum(checksum);
}

/// RFC 1624 eqn. 3: the checksum after 16-bit words `old` became `new`.
fn checksum_update(checksum: u16, old: &[u8], new: &[u8]) -> u16 {
    let mut sum = u32::from(!checksum);
    for (o, n) in old.chunks(2).zip(new.chunks(2)) {
        sum += u32::from(!u16::from_be_bytes([o[0], o[1]]));
        sum += u32::from(u16::from_be_bytes([n[0], n[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Decides for a frame that arrived from the wire at the uplink. Reads the
/// frame only: the translation back to the endpoint is the transformation
/// returned with [`Ingress::Forward`].
pub fn ingress(frame: &[u8], uplink: MacAddr, locals: &Locals, reply: &mut Packet) -> Ingress {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Ingress::Forward(HeaderTransform::NONE);
    };
    let to_uplink = eth.dst() == uplink;
    match eth.ethertype() {
        EtherType::Arp => {
            let Ok(req) = ArpPacket::new_checked(eth.payload()).and_then(|a| ArpRepr::parse(&a))
            else {
                return Ingress::Forward(HeaderTransform::NONE);
            };
            let Some(&owner) = locals.get(&IpAddr::V4(req.target_ip)) else {
                return Ingress::Forward(HeaderTransform::NONE);
            };
            match req.operation {
                ArpOperation::Request if !req.is_gratuitous() => {
                    let answer = req.reply(uplink).expect("a request has a reply");
                    write_arp(reply, req.sender_hw, uplink, &answer);
                    Ingress::Reply
                }
                ArpOperation::Reply => {
                    let mut x = HeaderTransform {
                        flags: HeaderTransform::ARP_TARGET_DST_MAC,
                        dst_mac: owner.0,
                        ..HeaderTransform::NONE
                    };
                    if to_uplink {
                        x = x.set_dst(owner);
                    }
                    Ingress::Forward(x)
                }
                _ => Ingress::Forward(HeaderTransform::NONE),
            }
        }
        EtherType::Ipv4 => {
            if !to_uplink {
                return Ingress::Forward(HeaderTransform::NONE);
            }
            let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
                return Ingress::NotLocal;
            };
            deliver_by_ip(locals, IpAddr::V4(ip.dst()))
        }
        EtherType::Ipv6 => {
            let Ok(ip) = Ipv6Packet::new_checked(eth.payload()) else {
                return Ingress::Forward(HeaderTransform::NONE);
            };
            if let Ok(NdpRepr::NeighborSolicit {
                target,
                source_lladdr,
            }) = NdpRepr::parse_ipv6(&ip)
            {
                if locals.contains_key(&IpAddr::V6(target)) {
                    let to_mac = source_lladdr.unwrap_or(eth.src());
                    write_advert(reply, ip.src(), target, to_mac, uplink);
                    return Ingress::Reply;
                }
            }
            if !to_uplink {
                return Ingress::Forward(HeaderTransform::NONE);
            }
            deliver_by_ip(locals, IpAddr::V6(ip.dst()))
        }
        _ => Ingress::Forward(HeaderTransform::NONE),
    }
}

/// A frame to the uplink's MAC goes to the endpoint owning its destination
/// IP, with that endpoint's MAC put back in; to no endpoint, it is not ours.
fn deliver_by_ip(locals: &Locals, dst: IpAddr) -> Ingress {
    match locals.get(&dst) {
        Some(&owner) => Ingress::Forward(HeaderTransform::NONE.set_dst(owner)),
        None => Ingress::NotLocal,
    }
}

/// The transformation of a frame leaving through an l2bridge uplink whose
/// MAC is `uplink`: [`egress`] as a header transformation.
pub fn egress_transform(uplink: MacAddr) -> HeaderTransform {
    HeaderTransform {
        flags: HeaderTransform::SET_SRC_MAC | HeaderTransform::ANNOUNCE_SRC_MAC,
        src_mac: uplink.0,
        ..HeaderTransform::NONE
    }
}

/// True for an ARP request or neighbour solicitation asking for one of the
/// network's own endpoints: it needs no answer from the wire, so an
/// l2bridge network keeps it off the uplink.
pub fn asks_for_local(frame: &[u8], locals: &Locals) -> bool {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return false;
    };
    match eth.ethertype() {
        EtherType::Arp => ArpPacket::new_checked(eth.payload())
            .and_then(|a| ArpRepr::parse(&a))
            .is_ok_and(|a| {
                a.operation == ArpOperation::Request
                    && locals.contains_key(&IpAddr::V4(a.target_ip))
            }),
        EtherType::Ipv6 => Ipv6Packet::new_checked(eth.payload())
            .and_then(|ip| NdpRepr::parse_ipv6(&ip))
            .is_ok_and(|ndp| {
                matches!(ndp, NdpRepr::NeighborSolicit { target, .. }
                    if locals.contains_key(&IpAddr::V6(target)))
            }),
        _ => false,
    }
}

pub(super) fn write_arp(out: &mut Packet, to: MacAddr, from: MacAddr, arp: &ArpRepr) {
    let len = ETH_HEADER + arp.buffer_len();
    // Ethernet minimum frame size, without FCS.
    let padded = len.max(60);
    out.vnet = Default::default();
    out.set_len(padded);
    let buf = out.frame_mut();
    buf.fill(0);
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src: from,
        dst: to,
        ethertype: EtherType::Arp,
    }
    .emit(&mut eth);
    arp.emit(&mut ArpPacket::new_unchecked(
        &mut eth.payload_mut()[..arp.buffer_len()],
    ));
}

pub(super) fn write_advert(
    out: &mut Packet,
    ns_src: Ipv6Addr,
    target: Ipv6Addr,
    to: MacAddr,
    uplink: MacAddr,
) {
    let (dst, ndp) = NdpRepr::advert_for(ns_src, target, uplink);
    let icmp_len = ndp.buffer_len();
    let len = ETH_HEADER + IPV6_HEADER + icmp_len;
    out.vnet = Default::default();
    out.set_len(len);
    let buf = out.frame_mut();
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    let to = if dst.is_multicast() {
        crate::wire::ipv6::multicast_mac(dst)
    } else {
        to
    };
    EthernetRepr {
        src: uplink,
        dst: to,
        ethertype: EtherType::Ipv6,
    }
    .emit(&mut eth);
    let mut ip = Ipv6Packet::new_unchecked(eth.payload_mut());
    Ipv6Repr {
        src: target,
        dst,
        next_header: 58u8.into(),
        payload_len: icmp_len as u16,
        hop_limit: 255,
    }
    .emit(&mut ip);
    ndp.emit(
        target,
        dst,
        &mut Icmpv6Packet::new_unchecked(ip.payload_mut()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const UPLINK: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
    const EP: MacAddr = MacAddr([0x02, 0x15, 0x5d, 0, 0, 7]);
    const OUTSIDE: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 9]);
    const EP_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 7);
    const OUT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 9);

    /// Ingress with its transformation applied to `frame`, which is what
    /// the frame looks like when it is delivered.
    fn ingress_applied(
        frame: &mut [u8],
        uplink: MacAddr,
        locals: &Locals,
        reply: &mut Packet,
    ) -> Ingress {
        match ingress(frame, uplink, locals, reply) {
            Ingress::Forward(x) => {
                x.rewrite(frame);
                Ingress::Forward(HeaderTransform::NONE)
            }
            other => other,
        }
    }

    fn locals() -> Locals {
        let mut l = Locals::new();
        l.insert(IpAddr::V4(EP_IP), EP);
        l.insert(IpAddr::V6("fd00::7".parse().unwrap()), EP);
        l
    }

    fn arp_frame(op: ArpOperation, eth_src: MacAddr, eth_dst: MacAddr, a: ArpRepr) -> Packet {
        let mut p = Packet::new();
        let repr = ArpRepr { operation: op, ..a };
        write_arp(&mut p, eth_dst, eth_src, &repr);
        p
    }

    fn ipv4_frame(dst_mac: MacAddr, dst_ip: Ipv4Addr) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst_mac.0);
        f.extend_from_slice(&OUTSIDE.0);
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&OUT_IP.octets());
        f.extend_from_slice(&dst_ip.octets());
        f
    }

    #[test]
    fn egress_hides_the_endpoint_mac_in_arp() {
        let req = ArpRepr {
            operation: ArpOperation::Request,
            sender_hw: EP,
            sender_ip: EP_IP,
            target_hw: MacAddr::ZERO,
            target_ip: OUT_IP,
        };
        let mut p = arp_frame(ArpOperation::Request, EP, MacAddr::BROADCAST, req);
        egress(p.frame_mut(), UPLINK);
        let eth = EthernetFrame::new_checked(p.frame()).unwrap();
        assert_eq!(eth.src(), UPLINK);
        let arp = ArpPacket::new_checked(eth.payload()).unwrap();
        assert_eq!(arp.sender_hw_addr(), UPLINK);
        assert_eq!(arp.sender_proto_addr(), EP_IP);
    }

    #[test]
    fn arp_request_for_an_endpoint_is_answered_with_the_uplink_mac() {
        let req = ArpRepr {
            operation: ArpOperation::Request,
            sender_hw: OUTSIDE,
            sender_ip: OUT_IP,
            target_hw: MacAddr::ZERO,
            target_ip: EP_IP,
        };
        let mut p = arp_frame(ArpOperation::Request, OUTSIDE, MacAddr::BROADCAST, req);
        let mut reply = Packet::new();
        assert_eq!(
            ingress_applied(p.frame_mut(), UPLINK, &locals(), &mut reply),
            Ingress::Reply
        );
        let eth = EthernetFrame::new_checked(reply.frame()).unwrap();
        assert_eq!((eth.src(), eth.dst()), (UPLINK, OUTSIDE));
        let arp = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
        assert_eq!(arp.operation, ArpOperation::Reply);
        assert_eq!((arp.sender_hw, arp.sender_ip), (UPLINK, EP_IP));
        assert_eq!((arp.target_hw, arp.target_ip), (OUTSIDE, OUT_IP));
    }

    #[test]
    fn arp_request_for_someone_else_is_switched_untouched() {
        let req = ArpRepr {
            operation: ArpOperation::Request,
            sender_hw: OUTSIDE,
            sender_ip: OUT_IP,
            target_hw: MacAddr::ZERO,
            target_ip: Ipv4Addr::new(192, 168, 50, 200),
        };
        let mut p = arp_frame(ArpOperation::Request, OUTSIDE, MacAddr::BROADCAST, req);
        let before = p.frame().to_vec();
        let mut reply = Packet::new();
        assert_eq!(
            ingress_applied(p.frame_mut(), UPLINK, &locals(), &mut reply),
            Ingress::Forward(HeaderTransform::NONE)
        );
        assert_eq!(p.frame(), &before[..]);
    }

    #[test]
    fn arp_reply_gets_the_endpoint_mac_back() {
        let rep = ArpRepr {
            operation: ArpOperation::Reply,
            sender_hw: OUTSIDE,
            sender_ip: OUT_IP,
            target_hw: UPLINK,
            target_ip: EP_IP,
        };
        let mut p = arp_frame(ArpOperation::Reply, OUTSIDE, UPLINK, rep);
        let mut reply = Packet::new();
        assert_eq!(
            ingress_applied(p.frame_mut(), UPLINK, &locals(), &mut reply),
            Ingress::Forward(HeaderTransform::NONE)
        );
        let eth = EthernetFrame::new_checked(p.frame()).unwrap();
        assert_eq!(eth.dst(), EP);
        assert_eq!(
            ArpPacket::new_checked(eth.payload())
                .unwrap()
                .target_hw_addr(),
            EP
        );
    }

    #[test]
    fn unicast_to_the_uplink_mac_is_delivered_by_ip() {
        let mut f = ipv4_frame(UPLINK, EP_IP);
        let mut reply = Packet::new();
        assert_eq!(
            ingress_applied(&mut f, UPLINK, &locals(), &mut reply),
            Ingress::Forward(HeaderTransform::NONE)
        );
        assert_eq!(&f[..6], &EP.0);
        let mut f = ipv4_frame(UPLINK, Ipv4Addr::new(192, 168, 50, 1));
        assert_eq!(
            ingress_applied(&mut f, UPLINK, &locals(), &mut reply),
            Ingress::NotLocal
        );
    }

    /// A neighbour solicitation from `src` for `target`, as the kernel sends it.
    fn ns_frame(src_mac: MacAddr, src: Ipv6Addr, target: Ipv6Addr) -> Packet {
        let ndp = NdpRepr::NeighborSolicit {
            target,
            source_lladdr: Some(src_mac),
        };
        let dst = crate::wire::ipv6::solicited_node(target);
        let mut p = Packet::new();
        let len = ETH_HEADER + IPV6_HEADER + ndp.buffer_len();
        p.set_len(len);
        let mut eth = EthernetFrame::new_unchecked(p.frame_mut());
        EthernetRepr {
            src: src_mac,
            dst: crate::wire::ipv6::multicast_mac(dst),
            ethertype: EtherType::Ipv6,
        }
        .emit(&mut eth);
        let mut ip = Ipv6Packet::new_unchecked(eth.payload_mut());
        Ipv6Repr {
            src,
            dst,
            next_header: 58u8.into(),
            payload_len: ndp.buffer_len() as u16,
            hop_limit: 255,
        }
        .emit(&mut ip);
        ndp.emit(src, dst, &mut Icmpv6Packet::new_unchecked(ip.payload_mut()));
        p
    }

    #[test]
    fn neighbour_solicitation_for_an_endpoint_is_answered() {
        let out6: Ipv6Addr = "fd00::9".parse().unwrap();
        let ep6: Ipv6Addr = "fd00::7".parse().unwrap();
        let mut p = ns_frame(OUTSIDE, out6, ep6);
        let mut reply = Packet::new();
        assert_eq!(
            ingress_applied(p.frame_mut(), UPLINK, &locals(), &mut reply),
            Ingress::Reply
        );
        let eth = EthernetFrame::new_checked(reply.frame()).unwrap();
        assert_eq!((eth.src(), eth.dst()), (UPLINK, OUTSIDE));
        let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
        assert_eq!((ip.src(), ip.dst()), (ep6, out6));
        match NdpRepr::parse_ipv6(&ip).unwrap() {
            NdpRepr::NeighborAdvert {
                target,
                target_lladdr,
                flags,
            } => {
                assert_eq!(target, ep6);
                assert_eq!(target_lladdr, Some(UPLINK));
                assert!(flags.solicited);
            }
            other => panic!("not an advert: {other:?}"),
        }
    }

    #[test]
    fn egress_rewrites_ndp_options_with_a_valid_checksum() {
        let ep6: Ipv6Addr = "fd00::7".parse().unwrap();
        let mut p = ns_frame(EP, ep6, "fd00::9".parse().unwrap());
        egress(p.frame_mut(), UPLINK);
        let eth = EthernetFrame::new_checked(p.frame()).unwrap();
        assert_eq!(eth.src(), UPLINK);
        let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
        // parse_ipv6 verifies the checksum.
        match NdpRepr::parse_ipv6(&ip).unwrap() {
            NdpRepr::NeighborSolicit { source_lladdr, .. } => {
                assert_eq!(source_lladdr, Some(UPLINK))
            }
            other => panic!("not a solicitation: {other:?}"),
        }
        assert!(
            !p.frame().windows(6).any(|w| w == EP.0),
            "endpoint MAC still in the frame"
        );
    }

    #[test]
    fn local_questions_are_recognised() {
        let ask = ArpRepr {
            operation: ArpOperation::Request,
            sender_hw: EP,
            sender_ip: Ipv4Addr::new(192, 168, 50, 8),
            target_hw: MacAddr::ZERO,
            target_ip: EP_IP,
        };
        let p = arp_frame(ArpOperation::Request, EP, MacAddr::BROADCAST, ask);
        assert!(asks_for_local(p.frame(), &locals()));
        let p = ns_frame(EP, "fd00::8".parse().unwrap(), "fd00::7".parse().unwrap());
        assert!(asks_for_local(p.frame(), &locals()));
        let p = ns_frame(EP, "fd00::8".parse().unwrap(), "fd00::99".parse().unwrap());
        assert!(!asks_for_local(p.frame(), &locals()));
    }

    #[test]
    fn garbage_is_left_alone() {
        let mut reply = Packet::new();
        let mut short = [0u8; 10];
        assert_eq!(
            ingress_applied(&mut short, UPLINK, &locals(), &mut reply),
            Ingress::Forward(HeaderTransform::NONE)
        );
        egress(&mut short, UPLINK);
        let mut bad_arp = ipv4_frame(MacAddr::BROADCAST, EP_IP);
        bad_arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(
            ingress_applied(&mut bad_arp, UPLINK, &locals(), &mut reply),
            Ingress::Forward(HeaderTransform::NONE)
        );
    }
}
