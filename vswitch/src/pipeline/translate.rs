//! Address translation of one IPv4 frame in place: the NAT part of a
//! [`HeaderTransform`].
//!
//! The frame keeps its size, so a GSO super-frame is translated whole and
//! still leaves as one: the IPv4 header checksum is recomputed (the header
//! is at most 60 bytes), the TCP or UDP checksum is updated incrementally
//! (RFC 1624), never recomputed over 64 KiB. A checksum the sender left to
//! the device (`F_NEEDS_CSUM`, Linux's CHECKSUM_PARTIAL) holds only the
//! pseudo-header's sum, so only the addresses change it, not the ports.
//!
//! ICMP echo identifiers are translated as ports are (conntrack keeps them
//! in the tuple's source port). An ICMP error about a translated flow
//! quotes a packet of that flow going the other way; the quoted packet is
//! translated the other way round (its source gets the new destination and
//! so on), then the ICMP checksum is recomputed over the message.

use super::verdict::HeaderTransform;
use crate::wire::checksum;

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// One's complement sum of 16-bit words, folded.
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The words `old` replaced by `new`, as a one's complement difference to
/// add to a sum.
fn delta(old: &[u8], new: &[u8]) -> u32 {
    let mut d = 0u32;
    for (o, n) in old.chunks(2).zip(new.chunks(2)) {
        d += u32::from(!u16::from_be_bytes([o[0], o[1]]));
        d += u32::from(u16::from_be_bytes([n[0], n[1]]));
    }
    d
}

/// A stored (complemented) checksum after `d` (RFC 1624 eqn. 3).
fn adjust_stored(check: u16, d: u32) -> u16 {
    !fold(u32::from(!check) + d)
}

/// A pseudo-header sum left for the device (not complemented) after `d`.
fn adjust_partial(sum: u16, d: u32) -> u16 {
    fold(u32::from(sum) + d)
}

fn ip_checksum(ip: &mut [u8], ihl: usize) {
    put16(ip, 10, 0);
    let c = checksum(&ip[..ihl]);
    put16(ip, 10, c);
}

/// Translates the IPv4 packet at `frame[l3..]` as `x` says. `partial`:
/// the L4 checksum is the device's to finish. Does nothing to what is not
/// IPv4 or too short for its headers.
pub fn translate(frame: &mut [u8], l3: usize, partial: bool, x: &HeaderTransform) {
    if !x.translates() {
        return;
    }
    let Some(ip) = frame.get_mut(l3..) else {
        return;
    };
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < 20 || ip.len() < ihl {
        return;
    }
    let old_addrs: [u8; 8] = ip[12..20].try_into().expect("8 bytes");
    if x.has(HeaderTransform::SET_SRC_IP) {
        ip[12..16].copy_from_slice(&x.src_ip[12..16]);
    }
    if x.has(HeaderTransform::SET_DST_IP) {
        ip[16..20].copy_from_slice(&x.dst_ip[12..16]);
    }
    let addr_delta = delta(&old_addrs, &ip[12..20]);
    if x.has(HeaderTransform::DEC_TTL) {
        ip[8] = ip[8].saturating_sub(1);
    }
    ip_checksum(ip, ihl);
    let first_fragment = get16(ip, 6) & 0x1fff == 0;
    if !first_fragment {
        return;
    }
    let proto = ip[9];
    let l4 = &mut ip[ihl..];
    match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let at = if proto == IPPROTO_TCP { 16 } else { 6 };
            if l4.len() < at + 2 {
                return;
            }
            let old_ports: [u8; 4] = l4[..4].try_into().expect("4 bytes");
            if x.has(HeaderTransform::SET_SRC_PORT) {
                put16(l4, 0, x.src_port);
            }
            if x.has(HeaderTransform::SET_DST_PORT) {
                put16(l4, 2, x.dst_port);
            }
            let check = get16(l4, at);
            let new = if partial {
                adjust_partial(check, addr_delta)
            } else if proto == IPPROTO_UDP && check == 0 {
                0 // no checksum, and none needed
            } else {
                let c = adjust_stored(check, addr_delta + delta(&old_ports, &l4[..4]));
                if proto == IPPROTO_UDP && c == 0 {
                    0xffff
                } else {
                    c
                }
            };
            put16(l4, at, new);
        }
        IPPROTO_ICMP => {
            if l4.len() < 8 {
                return;
            }
            match l4[0] {
                // Echo request and reply: the identifier is the port.
                0 | 8 if x.has(HeaderTransform::SET_SRC_PORT) => {
                    let old = l4[4..6].to_vec();
                    put16(l4, 4, x.src_port);
                    let c = adjust_stored(get16(l4, 2), delta(&old, &l4[4..6]));
                    put16(l4, 2, c);
                }
                // Destination unreachable, time exceeded, parameter problem.
                3 | 11 | 12 => {
                    translate_quoted(&mut l4[8..], x);
                    put16(l4, 2, 0);
                    let c = checksum(l4);
                    put16(l4, 2, c);
                }
                _ => {}
            }
        }
        _ => {}
    }
}

/// The packet an ICMP error quotes went the other way: its source is the
/// new destination, its destination the new source.
fn translate_quoted(q: &mut [u8], x: &HeaderTransform) {
    if q.len() < 20 || q[0] >> 4 != 4 {
        return;
    }
    let ihl = usize::from(q[0] & 0x0f) * 4;
    if ihl < 20 || q.len() < ihl {
        return;
    }
    if x.has(HeaderTransform::SET_DST_IP) {
        q[12..16].copy_from_slice(&x.dst_ip[12..16]);
    }
    if x.has(HeaderTransform::SET_SRC_IP) {
        q[16..20].copy_from_slice(&x.src_ip[12..16]);
    }
    ip_checksum(q, ihl);
    let proto = q[9];
    let l4 = &mut q[ihl..];
    match proto {
        IPPROTO_TCP | IPPROTO_UDP if l4.len() >= 4 => {
            if x.has(HeaderTransform::SET_DST_PORT) {
                put16(l4, 0, x.dst_port);
            }
            if x.has(HeaderTransform::SET_SRC_PORT) {
                put16(l4, 2, x.src_port);
            }
        }
        IPPROTO_ICMP if l4.len() >= 6 && x.has(HeaderTransform::SET_SRC_PORT) => {
            put16(l4, 4, x.src_port);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Ipv4Packet, TcpPacket, UdpPacket};
    use std::net::Ipv4Addr;

    const EP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
    const UPLINK: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

    fn ipv4(proto: u8, src: Ipv4Addr, dst: Ipv4Addr, l4: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let len = (20 + l4.len()) as u16;
        let mut ip = vec![
            0x45,
            0,
            (len >> 8) as u8,
            len as u8,
            0,
            1,
            0x40,
            0,
            64,
            proto,
            0,
            0,
        ];
        ip.extend_from_slice(&src.octets());
        ip.extend_from_slice(&dst.octets());
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(l4);
        f
    }

    fn tcp_segment(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        sport: u16,
        dport: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        put16(&mut t, 0, sport);
        put16(&mut t, 2, dport);
        t[12] = 0x50;
        t[13] = 0x18;
        t.extend_from_slice(payload);
        let mut f = ipv4(IPPROTO_TCP, src, dst, &t);
        let mut seg = TcpPacket::new_checked(&mut f[34..]).unwrap();
        seg.fill_checksum_v4(src, dst);
        f
    }

    fn snat(addr: Ipv4Addr, port: u16) -> HeaderTransform {
        let mut x = HeaderTransform::NONE;
        x.flags = HeaderTransform::SET_SRC_IP | HeaderTransform::SET_SRC_PORT;
        x.src_ip = addr.to_ipv6_mapped().octets();
        x.src_port = port;
        x
    }

    fn dnat(addr: Ipv4Addr, port: u16) -> HeaderTransform {
        let mut x = HeaderTransform::NONE;
        x.flags = HeaderTransform::SET_DST_IP | HeaderTransform::SET_DST_PORT;
        x.dst_ip = addr.to_ipv6_mapped().octets();
        x.dst_port = port;
        x
    }

    #[test]
    fn tcp_source_translation_keeps_checksums_right() {
        let mut f = tcp_segment(EP, REMOTE, 40000, 80, b"hello, world");
        translate(&mut f, 14, false, &snat(UPLINK, 61001));
        let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src(), ip.dst()), (UPLINK, REMOTE));
        let tcp = TcpPacket::new_checked(&f[34..]).unwrap();
        assert_eq!((tcp.src_port(), tcp.dst_port()), (61001, 80));
        assert!(tcp.verify_checksum_v4(UPLINK, REMOTE));
    }

    #[test]
    fn a_partial_checksum_changes_with_the_addresses_only() {
        // What a TAP's TSO super-frame carries: the pseudo-header sum.
        let pseudo = |src: Ipv4Addr, dst: Ipv4Addr, len: u16| {
            let mut p = src.octets().to_vec();
            p.extend_from_slice(&dst.octets());
            p.extend_from_slice(&[0, IPPROTO_TCP]);
            p.extend_from_slice(&len.to_be_bytes());
            !checksum(&p)
        };
        let mut f = tcp_segment(EP, REMOTE, 40000, 80, &[7; 3000]);
        let len = (f.len() - 34) as u16;
        put16(&mut f, 34 + 16, pseudo(EP, REMOTE, len));
        translate(&mut f, 14, true, &snat(UPLINK, 61001));
        assert_eq!(get16(&f, 34 + 16), pseudo(UPLINK, REMOTE, len));
        assert_eq!(get16(&f, 34), 61001);
    }

    #[test]
    fn udp_without_checksum_stays_without() {
        let mut u = vec![0u8; 8];
        put16(&mut u, 0, 5000);
        put16(&mut u, 2, 53);
        put16(&mut u, 4, 8);
        let mut f = ipv4(IPPROTO_UDP, REMOTE, UPLINK, &u);
        translate(&mut f, 14, false, &dnat(EP, 5001));
        let udp = UdpPacket::new_checked(&f[34..]).unwrap();
        assert_eq!((udp.dst_port(), udp.checksum()), (5001, 0));
        assert_eq!(Ipv4Packet::new_checked(&f[14..]).unwrap().dst(), EP);
    }

    #[test]
    fn echo_identifiers_are_ports() {
        let mut e = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1, 9, 9];
        let c = checksum(&e);
        put16(&mut e, 2, c);
        let mut f = ipv4(IPPROTO_ICMP, EP, REMOTE, &e);
        translate(&mut f, 14, false, &snat(UPLINK, 61002));
        assert_eq!(get16(&f, 34 + 4), 61002);
        assert_eq!(checksum(&f[34..]), 0, "ICMP checksum still verifies");
    }

    #[test]
    fn icmp_errors_translate_the_quoted_packet_the_other_way() {
        // A router says port unreachable about UPLINK:61001 -> REMOTE:53,
        // which was EP:40000 -> REMOTE:53 inside.
        let mut quoted = ipv4(
            IPPROTO_UDP,
            UPLINK,
            REMOTE,
            &[0xee, 0x49, 0, 53, 0, 8, 0, 0],
        );
        quoted.drain(..14);
        let mut err = vec![3, 3, 0, 0, 0, 0, 0, 0];
        err.extend_from_slice(&quoted);
        let c = checksum(&err);
        put16(&mut err, 2, c);
        let router = Ipv4Addr::new(198, 51, 100, 1);
        let mut f = ipv4(IPPROTO_ICMP, router, UPLINK, &err);
        // The reply direction's translation: destination back to EP:40000.
        translate(&mut f, 14, false, &dnat(EP, 40000));
        let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
        assert_eq!((ip.src(), ip.dst()), (router, EP));
        let q = Ipv4Packet::new_checked(&f[42..]).unwrap();
        assert!(q.verify_checksum());
        assert_eq!((q.src(), q.dst()), (EP, REMOTE));
        assert_eq!((get16(&f, 62), get16(&f, 64)), (40000, 53));
        assert_eq!(checksum(&f[34..]), 0);
    }

    #[test]
    fn short_or_foreign_frames_are_left_alone() {
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        let before = arp.clone();
        translate(&mut arp, 14, false, &snat(UPLINK, 1));
        assert_eq!(arp, before);
        let mut cut = tcp_segment(EP, REMOTE, 1, 2, b"");
        cut.truncate(40);
        translate(&mut cut, 14, false, &snat(UPLINK, 1));
    }
}
