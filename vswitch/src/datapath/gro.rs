//! Receive coalescing: joins consecutive TCP segments of one flow (IPv4 or
//! IPv6) that arrived from an uplink into one super-frame (virtio-net GSO),
//! the way the kernel's GRO does, so a TAP takes one write per super-frame
//! instead of one per wire-sized segment.
//!
//! Only plain bulk data is joined: same addresses, ports, TTL or hop limit,
//! TOS or traffic class, ACK, window and TCP options, contiguous sequence
//! numbers, no flags but ACK (PSH may end a run), no IPv4 options or
//! fragments and no IPv6 extension headers, every segment but the last
//! exactly as long as the first, and each segment's checksums verified
//! first so a corrupt one is never passed on as good. Anything else is left
//! as it came.
//!
//! A segment whose TCP checksum is still to be computed (`F_NEEDS_CSUM` at
//! the TCP checksum field, set by the port for a veth peer's offloaded
//! checksum, see `port::afxdp`) cannot be verified: it counts as sound when
//! the field holds its pseudo-header sum, as the kernel's GRO takes a
//! `CHECKSUM_PARTIAL` skb. The super-frame leaves `F_NEEDS_CSUM` either way.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::port::{Packet, VirtioNetHdr};
use crate::wire::{checksum, pseudo_header_v4, pseudo_header_v6, Checksum, IpProtocol};

const ETH: usize = 14;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
/// Largest IP length field a super-frame may carry.
const MAX_IP_LEN: usize = 65535;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn header_len(self) -> usize {
        match self {
            Family::V4 => 20,
            Family::V6 => 40,
        }
    }

    /// The pseudo-header sum of a TCP segment of `l4_len` bytes in `frame`.
    fn pseudo(self, frame: &[u8], l4_len: usize) -> Checksum {
        match self {
            Family::V4 => {
                let a: [u8; 4] = frame[ETH + 12..ETH + 16].try_into().expect("4 bytes");
                let b: [u8; 4] = frame[ETH + 16..ETH + 20].try_into().expect("4 bytes");
                pseudo_header_v4(
                    Ipv4Addr::from(a),
                    Ipv4Addr::from(b),
                    IpProtocol::Tcp,
                    l4_len as u16,
                )
            }
            Family::V6 => {
                let a: [u8; 16] = frame[ETH + 8..ETH + 24].try_into().expect("16 bytes");
                let b: [u8; 16] = frame[ETH + 24..ETH + 40].try_into().expect("16 bytes");
                pseudo_header_v6(
                    Ipv6Addr::from(a),
                    Ipv6Addr::from(b),
                    IpProtocol::Tcp,
                    l4_len as u32,
                )
            }
        }
    }
}

/// A TCP segment's facts, when it is one that may be joined.
struct Segment {
    family: Family,
    tcp_len: usize,
    payload: usize,
    seq: u32,
    flags: u8,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses `pkt` as a joinable segment: IPv4 without options or fragments
/// (and a sound header), or IPv6 with TCP right after the fixed header; TCP
/// with only ACK (and maybe PSH) set, data, and a correct checksum (or one
/// marked still to compute whose field holds the pseudo-header sum).
fn segment(pkt: &Packet) -> Option<Segment> {
    let frame = pkt.frame();
    if frame.len() < ETH + 40 + 20 {
        return None;
    }
    let (family, ip_len) = match be16(frame, 12) {
        0x0800 => {
            // The IPv4 header is rebuilt for the super-frame: it must be sound.
            let fixed = frame[ETH] == 0x45
                && frame[ETH + 9] == 6
                && be16(frame, ETH + 6) & 0x3fff == 0
                && checksum(&frame[ETH..ETH + 20]) == 0;
            if !fixed {
                return None;
            }
            (Family::V4, usize::from(be16(frame, ETH + 2)))
        }
        0x86dd => {
            if frame[ETH] >> 4 != 6 || frame[ETH + 6] != 6 {
                return None;
            }
            (Family::V6, 40 + usize::from(be16(frame, ETH + 4)))
        }
        _ => return None,
    };
    let ip = family.header_len();
    let l4 = ETH + ip;
    if ip_len > frame.len() - ETH || ip_len < ip + 20 {
        return None;
    }
    let tcp_len = usize::from(frame[l4 + 12] >> 4) * 4;
    let flags = frame[l4 + 13];
    if tcp_len < 20
        || ip + tcp_len >= ip_len
        || flags & !(TCP_ACK | TCP_PSH) != 0
        || flags & TCP_ACK == 0
    {
        return None;
    }
    let tcp = &frame[l4..ETH + ip_len];
    let pseudo = family.pseudo(frame, tcp.len());
    let partial = pkt.vnet.flags & VirtioNetHdr::F_NEEDS_CSUM != 0
        && usize::from(pkt.vnet.csum_start) == l4
        && pkt.vnet.csum_offset == 16;
    let sound = if partial {
        be16(frame, l4 + 16) == pseudo.folded()
    } else {
        let mut sum = pseudo;
        sum.add_bytes(tcp).finish() == 0
    };
    if !sound {
        return None;
    }
    Some(Segment {
        family,
        tcp_len,
        payload: ip_len - ip - tcp_len,
        seq: be32(frame, l4 + 4),
        flags,
    })
}

/// Whether `next` continues `head`'s flow: everything in the IP and TCP
/// headers equal but the lengths, the IPv4 ID and checksum, and the TCP
/// sequence number, flags and checksum.
fn same_flow(head: &[u8], next: &[u8], family: Family, tcp_len: usize) -> bool {
    let same = |r: std::ops::Range<usize>| head[r.clone()] == next[r];
    let l4 = ETH + family.header_len();
    let ip_same = match family {
        // version, IHL, TOS; flags, TTL, protocol; addresses
        Family::V4 => same(ETH..ETH + 2) && same(ETH + 6..ETH + 10) && same(ETH + 12..l4),
        // version, traffic class, flow label; next header, hop limit, addresses
        Family::V6 => same(ETH..ETH + 4) && same(ETH + 6..l4),
    };
    same(0..12)                         // MACs
        && ip_same
        && same(l4..l4 + 4)             // ports
        && same(l4 + 8..l4 + 13)        // ack, data offset
        && same(l4 + 14..l4 + 16)       // window
        && same(l4 + 18..l4 + tcp_len) // urgent pointer, options
}

/// A run of segments being joined in the first one's buffer.
pub struct Run {
    family: Family,
    tcp_len: usize,
    mss: usize,
    /// Payload bytes joined so far.
    payload: usize,
    next_seq: u32,
    /// The last segment joined was short or had PSH: the run is over.
    closed: bool,
    segments: usize,
}

impl Run {
    fn l4(&self) -> usize {
        ETH + self.family.header_len()
    }
}

/// Starts a run at `head` if it is a joinable segment.
pub fn start(head: &Packet) -> Option<Run> {
    if head.vnet.is_gso() {
        return None;
    }
    let s = segment(head)?;
    Some(Run {
        family: s.family,
        tcp_len: s.tcp_len,
        mss: s.payload,
        payload: s.payload,
        next_seq: s.seq.wrapping_add(s.payload as u32),
        closed: s.flags & TCP_PSH != 0,
        segments: 1,
    })
}

/// Appends `next` to the run in `head` if it continues it; false (and
/// nothing changed) otherwise.
pub fn join(run: &mut Run, head: &mut Packet, next: &Packet) -> bool {
    if run.closed || next.vnet.is_gso() {
        return false;
    }
    let Some(s) = segment(next) else {
        return false;
    };
    let l4 = run.l4();
    let hdrs = l4 + run.tcp_len;
    let ip_field = match run.family {
        Family::V4 => hdrs - ETH,
        Family::V6 => run.tcp_len,
    };
    if s.family != run.family
        || s.tcp_len != run.tcp_len
        || s.seq != run.next_seq
        || s.payload > run.mss
        || ip_field + run.payload + s.payload > MAX_IP_LEN
        || !same_flow(head.frame(), next.frame(), run.family, run.tcp_len)
    {
        return false;
    }
    let at = hdrs + run.payload;
    let data = &next.frame()[hdrs..hdrs + s.payload];
    head.set_len(at + s.payload);
    head.frame_mut()[at..].copy_from_slice(data);
    // PSH travels with the last segment.
    head.frame_mut()[l4 + 13] |= s.flags & TCP_PSH;
    run.payload += s.payload;
    run.next_seq = run.next_seq.wrapping_add(s.payload as u32);
    run.closed = s.payload < run.mss || s.flags & TCP_PSH != 0;
    run.segments += 1;
    true
}

/// Turns a run of two or more segments into a super-frame: IP length (and
/// IPv4 checksum), a TCP checksum left for the receiver (its pseudo-header
/// sum, as for any checksum offload), and the virtio-net header describing
/// it.
pub fn finish(run: &Run, head: &mut Packet) {
    if run.segments < 2 {
        return;
    }
    let l4 = run.l4();
    let l4_len = run.tcp_len + run.payload;
    let f = head.frame_mut();
    let gso_type = match run.family {
        Family::V4 => {
            f[ETH + 2..ETH + 4].copy_from_slice(&((l4 - ETH + l4_len) as u16).to_be_bytes());
            f[ETH + 10..ETH + 12].copy_from_slice(&[0, 0]);
            let c = checksum(&f[ETH..l4]);
            f[ETH + 10..ETH + 12].copy_from_slice(&c.to_be_bytes());
            GSO_TCPV4
        }
        Family::V6 => {
            f[ETH + 4..ETH + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            GSO_TCPV6
        }
    };
    let partial = run.family.pseudo(f, l4_len).folded();
    f[l4 + 16..l4 + 18].copy_from_slice(&partial.to_be_bytes());
    head.vnet = VirtioNetHdr {
        flags: VirtioNetHdr::F_NEEDS_CSUM,
        gso_type,
        hdr_len: (l4 + run.tcp_len) as u16,
        gso_size: run.mss as u16,
        csum_start: l4 as u16,
        csum_offset: 16,
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::gso;

    const IP: usize = 20;
    const L4: usize = ETH + IP;

    /// A TCP/IPv4 segment of flow 10.0.0.1:1000 -> 10.0.0.2:2000 with a
    /// correct checksum.
    fn seg(seq: u32, payload: &[u8], flags: u8) -> Packet {
        let mut f = vec![0u8; L4 + 20 + payload.len()];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[ETH] = 0x45;
        f[ETH + 2..ETH + 4].copy_from_slice(&((IP + 20 + payload.len()) as u16).to_be_bytes());
        f[ETH + 6] = 0x40; // DF
        f[ETH + 8] = 64;
        f[ETH + 9] = 6;
        f[ETH + 12..ETH + 16].copy_from_slice(&[10, 0, 0, 1]);
        f[ETH + 16..ETH + 20].copy_from_slice(&[10, 0, 0, 2]);
        let c = checksum(&f[ETH..L4]);
        f[ETH + 10..ETH + 12].copy_from_slice(&c.to_be_bytes());
        f[L4..L4 + 4].copy_from_slice(&[0x03, 0xe8, 0x07, 0xd0]);
        f[L4 + 4..L4 + 8].copy_from_slice(&seq.to_be_bytes());
        f[L4 + 8..L4 + 12].copy_from_slice(&77u32.to_be_bytes());
        f[L4 + 12] = 5 << 4;
        f[L4 + 13] = flags;
        f[L4 + 14..L4 + 16].copy_from_slice(&512u16.to_be_bytes());
        f[L4 + 20..].copy_from_slice(payload);
        let l4_len = (20 + payload.len()) as u16;
        let mut sum = pseudo_header_v4(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            IpProtocol::Tcp,
            l4_len,
        );
        let c = sum.add_bytes(&f[L4..]).finish();
        f[L4 + 16..L4 + 18].copy_from_slice(&c.to_be_bytes());
        let mut p = Packet::new();
        p.fill(&f);
        p
    }

    fn data(n: usize, from: usize) -> Vec<u8> {
        (from..from + n).map(|i| i as u8).collect()
    }

    #[test]
    fn a_run_joins_and_splits_back_into_the_same_segments() {
        let segs = [
            seg(100, &data(1000, 0), TCP_ACK),
            seg(1100, &data(1000, 1000), TCP_ACK),
            seg(2100, &data(400, 2000), TCP_ACK | TCP_PSH),
        ];
        let mut head = Packet::new();
        head.fill(segs[0].frame());
        let mut run = start(&head).expect("joinable");
        assert!(join(&mut run, &mut head, &segs[1]));
        assert!(join(&mut run, &mut head, &segs[2]));
        finish(&run, &mut head);
        assert_eq!(head.vnet.gso_size, 1000);
        assert_eq!(head.frame().len(), L4 + 20 + 2400);
        // Segmenting the super-frame gives back the original segments.
        let mut out = Packet::new();
        let mut i = 0;
        gso::segment(&head, &mut out, |s| {
            // All but the IP ID (and so the IP checksum), which the
            // segmenter numbers afresh.
            assert_eq!(
                s.frame()[..ETH + 4],
                segs[i].frame()[..ETH + 4],
                "segment {i}"
            );
            assert_eq!(
                s.frame()[ETH + 12..],
                segs[i].frame()[ETH + 12..],
                "segment {i}"
            );
            i += 1;
            true
        })
        .expect("segments");
        assert_eq!(i, 3);
    }

    /// The IPv6 twin of `seg`: fd00::1 -> fd00::2.
    fn seg6(seq: u32, payload: &[u8], flags: u8) -> Packet {
        let (src, dst): (Ipv6Addr, Ipv6Addr) =
            ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap());
        let l4 = ETH + 40;
        let mut f = vec![0u8; l4 + 20 + payload.len()];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        f[ETH] = 0x60;
        f[ETH + 4..ETH + 6].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        f[ETH + 6] = 6;
        f[ETH + 7] = 64;
        f[ETH + 8..ETH + 24].copy_from_slice(&src.octets());
        f[ETH + 24..ETH + 40].copy_from_slice(&dst.octets());
        f[l4..l4 + 4].copy_from_slice(&[0x03, 0xe8, 0x07, 0xd0]);
        f[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
        f[l4 + 8..l4 + 12].copy_from_slice(&77u32.to_be_bytes());
        f[l4 + 12] = 5 << 4;
        f[l4 + 13] = flags;
        f[l4 + 14..l4 + 16].copy_from_slice(&512u16.to_be_bytes());
        f[l4 + 20..].copy_from_slice(payload);
        let len = (20 + payload.len()) as u32;
        let c = pseudo_header_v6(src, dst, IpProtocol::Tcp, len)
            .add_bytes(&f[l4..])
            .finish();
        f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        let mut p = Packet::new();
        p.fill(&f);
        p
    }

    #[test]
    fn ipv6_runs_join_and_split_back() {
        let segs = [
            seg6(5, &data(1200, 0), TCP_ACK),
            seg6(1205, &data(1200, 1200), TCP_ACK),
            seg6(2405, &data(10, 2400), TCP_ACK),
        ];
        let mut head = Packet::new();
        head.fill(segs[0].frame());
        let mut run = start(&head).expect("joinable");
        assert!(join(&mut run, &mut head, &segs[1]));
        assert!(join(&mut run, &mut head, &segs[2]));
        // An IPv4 segment never joins an IPv6 run.
        assert!(!join(
            &mut run,
            &mut head,
            &seg(2415, &data(10, 0), TCP_ACK)
        ));
        finish(&run, &mut head);
        assert_eq!(head.vnet.gso_type, GSO_TCPV6);
        let mut out = Packet::new();
        let mut i = 0;
        gso::segment(&head, &mut out, |s| {
            assert_eq!(s.frame(), segs[i].frame(), "segment {i}");
            i += 1;
            true
        })
        .expect("segments");
        assert_eq!(i, 3);
    }

    #[test]
    fn what_may_not_be_joined_is_left_alone() {
        let mut head = Packet::new();
        head.fill(seg(100, &data(1000, 0), TCP_ACK).frame());
        let mut run = start(&head).unwrap();
        let before = head.frame().to_vec();
        // A gap in the sequence, another flag, a longer segment.
        assert!(!join(
            &mut run,
            &mut head,
            &seg(1200, &data(1000, 0), TCP_ACK)
        ));
        assert!(!join(
            &mut run,
            &mut head,
            &seg(1100, &data(1000, 0), TCP_ACK | 0x01)
        ));
        assert!(!join(
            &mut run,
            &mut head,
            &seg(1100, &data(1200, 0), TCP_ACK)
        ));
        // A corrupt checksum.
        let mut bad = seg(1100, &data(1000, 0), TCP_ACK);
        bad.frame_mut()[L4 + 40] ^= 0xff;
        assert!(!join(&mut run, &mut head, &bad));
        // A corrupt IP header (TTL changed, checksum not).
        let mut bad = seg(1100, &data(1000, 0), TCP_ACK);
        bad.frame_mut()[ETH + 8] = 1;
        assert!(!join(&mut run, &mut head, &bad));
        // Another flow.
        let mut other = seg(1100, &data(1000, 0), TCP_ACK);
        other.frame_mut()[L4 + 1] = 0xe9;
        assert!(!join(&mut run, &mut head, &other));
        assert_eq!(head.frame(), &before[..]);
        // A lone segment stays as it was, with no GSO header.
        finish(&run, &mut head);
        assert!(!head.vnet.is_gso());
        assert_eq!(head.frame(), &before[..]);
    }

    /// `seg` as a sender offloading its checksum leaves it: the field holds
    /// the pseudo-header sum, and the port flagged it (see port::afxdp).
    fn partial(full: &Packet) -> Packet {
        let mut p = Packet::new();
        p.fill(full.frame());
        let l4_len = p.frame().len() - L4;
        let pseudo = Family::V4.pseudo(p.frame(), l4_len).folded();
        p.frame_mut()[L4 + 16..L4 + 18].copy_from_slice(&pseudo.to_be_bytes());
        p.vnet.flags = VirtioNetHdr::F_NEEDS_CSUM;
        p.vnet.csum_start = L4 as u16;
        p.vnet.csum_offset = 16;
        p
    }

    #[test]
    fn partial_checksums_join_and_leave_as_needing_one() {
        let segs = [
            seg(100, &data(1000, 0), TCP_ACK),
            seg(1100, &data(1000, 1000), TCP_ACK),
            seg(2100, &data(1000, 2000), TCP_ACK),
        ];
        let mut head = partial(&segs[0]);
        let mut run = start(&head).expect("a partial checksum is joinable");
        assert!(join(&mut run, &mut head, &partial(&segs[1])));
        // Complete and partial segments of one flow mix.
        assert!(join(&mut run, &mut head, &segs[2]));
        finish(&run, &mut head);
        assert_eq!(head.vnet.flags, VirtioNetHdr::F_NEEDS_CSUM);
        let mut out = Packet::new();
        let mut i = 0;
        gso::segment(&head, &mut out, |s| {
            // Segmenting computes each checksum: the originals come back.
            assert_eq!(s.frame()[ETH + 12..], segs[i].frame()[ETH + 12..]);
            i += 1;
            true
        })
        .expect("segments");
        assert_eq!(i, 3);

        // Flagged, but the field is not the pseudo-header sum: corrupt.
        let mut bad = partial(&segs[1]);
        bad.frame_mut()[L4 + 17] ^= 1;
        let mut head = partial(&segs[0]);
        let mut run = start(&head).unwrap();
        assert!(!join(&mut run, &mut head, &bad));
        // A partial flag that points elsewhere proves nothing.
        let mut elsewhere = partial(&segs[1]);
        elsewhere.vnet.csum_offset = 6;
        assert!(!join(&mut run, &mut head, &elsewhere));
    }

    #[test]
    fn push_or_a_short_segment_ends_the_run() {
        let mut head = Packet::new();
        head.fill(seg(100, &data(1000, 0), TCP_ACK).frame());
        let mut run = start(&head).unwrap();
        assert!(join(
            &mut run,
            &mut head,
            &seg(1100, &data(500, 0), TCP_ACK)
        ));
        assert!(!join(
            &mut run,
            &mut head,
            &seg(1600, &data(1000, 0), TCP_ACK)
        ));
        assert!(
            start(&seg(1, &[], TCP_ACK)).is_none(),
            "a pure ACK is not data"
        );
    }
}
