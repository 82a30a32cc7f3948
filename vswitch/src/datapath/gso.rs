//! Software segmentation: splits a TCP or UDP super-frame that a TAP handed
//! the switch (virtio-net GSO) into wire-sized frames, for ports that cannot
//! take super-frames (AF_XDP uplinks). Each segment gets its own lengths,
//! sequence number or IP ID, and complete checksums.
//!
//! Segmenting here, once per 64 KiB, is what lets endpoints on an uplink
//! network keep TSO: the TAP side pays one read per super-frame instead of
//! one per MTU-sized frame.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::port::Packet;
use crate::wire::{checksum, pseudo_header_v4, pseudo_header_v6, IpProtocol};

/// `VIRTIO_NET_HDR_GSO_*`.
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_UDP_L4: u8 = 5;
const GSO_ECN: u8 = 0x80;

const ETH: usize = 14;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Calls `emit` with each segment of `pkt`, built in `out`; stops early if
/// `emit` returns false. Returns the number of segments emitted, or `None`
/// when the frame is not a super-frame this code can split (the caller
/// drops it).
pub fn segment(
    pkt: &Packet,
    out: &mut Packet,
    mut emit: impl FnMut(&mut Packet) -> bool,
) -> Option<usize> {
    let frame = pkt.frame();
    let mss = pkt.vnet.gso_size as usize;
    let kind = pkt.vnet.gso_type & !GSO_ECN;
    if mss == 0 || frame.len() < ETH + 40 {
        return None;
    }
    let l3 = ETH;
    let (l4, proto, v4) = match be16(frame, 12) {
        0x0800 => {
            let ihl = usize::from(frame[l3] & 0x0f) * 4;
            if frame[l3] >> 4 != 4 || ihl < 20 {
                return None;
            }
            (l3 + ihl, frame[l3 + 9], true)
        }
        0x86dd if frame[l3] >> 4 == 6 => (l3 + 40, frame[l3 + 6], false),
        _ => return None,
    };
    let tcp = match (kind, proto) {
        (GSO_TCPV4, 6) if v4 => true,
        (GSO_TCPV6, 6) if !v4 => true,
        (GSO_UDP_L4, 17) => false,
        _ => return None,
    };
    if frame.len() < l4 + if tcp { 20 } else { 8 } {
        return None;
    }
    let l4_hdr = if tcp {
        usize::from(frame[l4 + 12] >> 4) * 4
    } else {
        8
    };
    let hdrs = l4 + l4_hdr;
    if (tcp && l4_hdr < 20) || hdrs >= frame.len() {
        return None;
    }
    let payload = &frame[hdrs..];
    let seq0 = if tcp {
        u32::from_be_bytes(frame[l4 + 4..l4 + 8].try_into().expect("4 bytes"))
    } else {
        0
    };
    let id0 = if v4 { be16(frame, l3 + 4) } else { 0 };
    let (src4, dst4) = if v4 {
        let a: [u8; 4] = frame[l3 + 12..l3 + 16].try_into().expect("4 bytes");
        let b: [u8; 4] = frame[l3 + 16..l3 + 20].try_into().expect("4 bytes");
        (Ipv4Addr::from(a), Ipv4Addr::from(b))
    } else {
        (Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED)
    };
    let (src6, dst6) = if v4 {
        (Ipv6Addr::UNSPECIFIED, Ipv6Addr::UNSPECIFIED)
    } else {
        let a: [u8; 16] = frame[l3 + 8..l3 + 24].try_into().expect("16 bytes");
        let b: [u8; 16] = frame[l3 + 24..l3 + 40].try_into().expect("16 bytes");
        (Ipv6Addr::from(a), Ipv6Addr::from(b))
    };

    let count = payload.len().div_ceil(mss);
    for (i, chunk) in payload.chunks(mss).enumerate() {
        let len = hdrs + chunk.len();
        out.vnet = Default::default();
        out.set_len(len);
        let b = out.frame_mut();
        b[..hdrs].copy_from_slice(&frame[..hdrs]);
        b[hdrs..].copy_from_slice(chunk);
        if v4 {
            put16(b, l3 + 2, (len - l3) as u16);
            put16(b, l3 + 4, id0.wrapping_add(i as u16));
            put16(b, l3 + 10, 0);
            let c = checksum(&b[l3..l4]);
            put16(b, l3 + 10, c);
        } else {
            put16(b, l3 + 4, (len - l3 - 40) as u16);
        }
        let l4_len = len - l4;
        let csum_at = if tcp {
            let seq = seq0.wrapping_add((i * mss) as u32);
            b[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
            if i + 1 < count {
                b[l4 + 13] &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                b[l4 + 13] &= !TCP_CWR;
            }
            l4 + 16
        } else {
            put16(b, l4 + 4, l4_len as u16);
            l4 + 6
        };
        put16(b, csum_at, 0);
        let proto = IpProtocol::from(proto);
        let mut sum = if v4 {
            pseudo_header_v4(src4, dst4, proto, l4_len as u16)
        } else {
            pseudo_header_v6(src6, dst6, proto, l4_len as u32)
        };
        let mut c = sum.add_bytes(&b[l4..len]).finish();
        if !tcp && c == 0 {
            c = 0xffff; // UDP: zero means "no checksum"
        }
        put16(b, csum_at, c);
        if !emit(out) {
            return Some(i + 1);
        }
    }
    Some(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::VirtioNetHdr;
    use crate::wire::{Ipv4Packet, Ipv6Packet};

    /// A TCP/IPv4 super-frame with `payload` bytes, as a TAP hands it over.
    fn tcp4(payload: usize, mss: u16, flags: u8) -> Packet {
        let mut f = vec![0u8; ETH + 20 + 20 + payload];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut f[ETH..];
        ip[0] = 0x45;
        put16(ip, 2, (40 + payload) as u16);
        put16(ip, 4, 0x1000);
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
        ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let tcp = &mut ip[20..];
        tcp[4..8].copy_from_slice(&1000u32.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = flags;
        for (i, b) in tcp[20..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let mut p = Packet::new();
        p.fill(&f);
        p.vnet = VirtioNetHdr {
            flags: VirtioNetHdr::F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 54,
            gso_size: mss,
            csum_start: 34,
            csum_offset: 16,
        };
        p
    }

    fn tcp_checksum_ok4(seg: &[u8]) -> bool {
        let ip = Ipv4Packet::new_checked(&seg[ETH..]).unwrap();
        let l4 = ip.payload();
        pseudo_header_v4(ip.src(), ip.dst(), IpProtocol::Tcp, l4.len() as u16)
            .add_bytes(l4)
            .finish()
            == 0
    }

    #[test]
    fn tcp4_splits_with_sequence_lengths_and_checksums() {
        let pkt = tcp4(3000, 1448, 0x18 | TCP_FIN); // PSH|ACK|FIN
        let mut out = Packet::new();
        let mut segs = Vec::new();
        let n = segment(&pkt, &mut out, |s| {
            segs.push(s.frame().to_vec());
            true
        });
        assert_eq!(n, Some(3));
        let sizes: Vec<usize> = segs.iter().map(|s| s.len() - 54).collect();
        assert_eq!(sizes, vec![1448, 1448, 104]);
        let mut next_byte = 0u8;
        for (i, s) in segs.iter().enumerate() {
            let ip = Ipv4Packet::new_checked(&s[ETH..]).unwrap();
            assert!(ip.verify_checksum(), "IP checksum of segment {i}");
            assert_eq!(ip.total_len() as usize, s.len() - ETH);
            assert_eq!(ip.ident(), 0x1000 + i as u16);
            assert!(tcp_checksum_ok4(s), "TCP checksum of segment {i}");
            let seq = u32::from_be_bytes(s[38..42].try_into().unwrap());
            assert_eq!(seq, 1000 + (i * 1448) as u32);
            let last = i == 2;
            assert_eq!(s[47] & TCP_FIN != 0, last, "FIN only on the last");
            assert_eq!(s[47] & TCP_PSH != 0, last, "PSH only on the last");
            // The payload bytes continue across segments.
            assert_eq!(s[54], next_byte);
            next_byte = next_byte.wrapping_add((s.len() - 54) as u8);
        }
    }

    #[test]
    fn tcp6_and_udp_l4() {
        let mut f = vec![0u8; ETH + 40 + 8 + 2500];
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        f[ETH] = 0x60;
        f[ETH + 6] = 17;
        f[ETH + 7] = 64;
        f[ETH + 8..ETH + 24].copy_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        f[ETH + 24..ETH + 40].copy_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        let mut p = Packet::new();
        p.fill(&f);
        p.vnet.gso_type = GSO_UDP_L4;
        p.vnet.gso_size = 1000;
        let mut out = Packet::new();
        let mut lens = Vec::new();
        let n = segment(&p, &mut out, |s| {
            let ip = Ipv6Packet::new_checked(&s.frame()[ETH..]).unwrap();
            let l4 = ip.payload();
            assert_eq!(be16(l4, 4) as usize, l4.len(), "UDP length");
            let sum = pseudo_header_v6(ip.src(), ip.dst(), IpProtocol::Udp, l4.len() as u32)
                .add_bytes(l4)
                .finish();
            assert_eq!(sum, 0, "UDP checksum");
            lens.push(ip.payload_len());
            true
        });
        assert_eq!(n, Some(3));
        assert_eq!(lens, vec![1008, 1008, 508]);
    }

    #[test]
    fn refuses_what_it_cannot_split() {
        let mut out = Packet::new();
        let mut p = tcp4(3000, 0, 0x10);
        assert_eq!(segment(&p, &mut out, |_| true), None, "no MSS");
        p.vnet.gso_size = 1448;
        p.vnet.gso_type = GSO_TCPV6;
        assert_eq!(segment(&p, &mut out, |_| true), None, "family mismatch");
        let mut short = Packet::new();
        short.fill(&[0u8; 20]);
        short.vnet.gso_type = GSO_TCPV4;
        short.vnet.gso_size = 100;
        assert_eq!(segment(&short, &mut out, |_| true), None, "truncated");
    }

    #[test]
    fn stops_when_told() {
        let pkt = tcp4(5000, 1000, 0x10);
        let mut out = Packet::new();
        let mut seen = 0;
        let n = segment(&pkt, &mut out, |_| {
            seen += 1;
            seen < 2
        });
        assert_eq!(n, Some(2));
    }
}
