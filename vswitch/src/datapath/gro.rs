//! Receive coalescing: joins consecutive TCP/IPv4 segments of one flow that
//! arrived from an uplink into one super-frame (virtio-net GSO), the way the
//! kernel's GRO does, so a TAP takes one write per super-frame instead of
//! one per wire-sized segment.
//!
//! Only plain bulk data is joined: same addresses, ports, TTL, TOS, ACK,
//! window and TCP options, contiguous sequence numbers, no flags but ACK
//! (PSH may end a run), no IP options or fragments, every segment but the
//! last exactly as long as the first, and each segment's TCP checksum
//! verified first so a corrupt one is never passed on as good. Anything
//! else is left as it came.

use std::net::Ipv4Addr;

use crate::port::{Packet, VirtioNetHdr};
use crate::wire::{checksum, pseudo_header_v4, IpProtocol};

const ETH: usize = 14;
const IP: usize = 20;
const L4: usize = ETH + IP;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;
const GSO_TCPV4: u8 = 1;
/// Largest IPv4 packet a super-frame may describe.
const MAX_IP_LEN: usize = 65535;

/// A TCP/IPv4 segment's facts, when it is one that may be joined.
struct Segment {
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

/// Parses `frame` as a joinable segment: IPv4 without options or
/// fragments, TCP with only ACK (and maybe PSH) set, data, and a correct
/// TCP checksum.
fn segment(frame: &[u8]) -> Option<Segment> {
    if frame.len() < L4 + 20 || be16(frame, 12) != 0x0800 || frame[ETH] != 0x45 {
        return None;
    }
    // The IP header is rebuilt for the super-frame: it must be sound.
    if checksum(&frame[ETH..L4]) != 0 {
        return None;
    }
    let ip_len = usize::from(be16(frame, ETH + 2));
    if frame[ETH + 9] != 6 || ip_len > frame.len() - ETH || be16(frame, ETH + 6) & 0x3fff != 0 {
        return None;
    }
    let tcp_len = usize::from(frame[L4 + 12] >> 4) * 4;
    let flags = frame[L4 + 13];
    if tcp_len < 20
        || IP + tcp_len >= ip_len
        || flags & !(TCP_ACK | TCP_PSH) != 0
        || flags & TCP_ACK == 0
    {
        return None;
    }
    let src = Ipv4Addr::new(
        frame[ETH + 12],
        frame[ETH + 13],
        frame[ETH + 14],
        frame[ETH + 15],
    );
    let dst = Ipv4Addr::new(
        frame[ETH + 16],
        frame[ETH + 17],
        frame[ETH + 18],
        frame[ETH + 19],
    );
    let l4 = &frame[L4..ETH + ip_len];
    let mut sum = pseudo_header_v4(src, dst, IpProtocol::Tcp, l4.len() as u16);
    if sum.add_bytes(l4).finish() != 0 {
        return None;
    }
    Some(Segment {
        tcp_len,
        payload: ip_len - IP - tcp_len,
        seq: be32(frame, L4 + 4),
        flags,
    })
}

/// Whether `next` continues `head`'s flow: everything in the IP and TCP
/// headers equal but the IP length, ID and checksum, and the TCP sequence
/// number, flags and checksum.
fn same_flow(head: &[u8], next: &[u8], tcp_len: usize) -> bool {
    let same = |r: std::ops::Range<usize>| head[r.clone()] == next[r];
    same(0..12)                          // MACs
        && same(ETH..ETH + 2)            // version, IHL, TOS
        && same(ETH + 6..ETH + 10)       // flags, TTL, protocol
        && same(ETH + 12..L4)            // addresses
        && same(L4..L4 + 4)              // ports
        && same(L4 + 8..L4 + 13)         // ack, data offset
        && same(L4 + 14..L4 + 16)        // window
        && same(L4 + 18..L4 + tcp_len) // urgent pointer, options
}

/// A run of segments being joined in the first one's buffer.
pub struct Run {
    tcp_len: usize,
    mss: usize,
    /// Payload bytes joined so far.
    payload: usize,
    next_seq: u32,
    /// The last segment joined was short or had PSH: the run is over.
    closed: bool,
    segments: usize,
}

/// Starts a run at `head` if it is a joinable segment.
pub fn start(head: &Packet) -> Option<Run> {
    if head.vnet.is_gso() {
        return None;
    }
    let s = segment(head.frame())?;
    Some(Run {
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
    let Some(s) = segment(next.frame()) else {
        return false;
    };
    let hdrs = L4 + run.tcp_len;
    if s.tcp_len != run.tcp_len
        || s.seq != run.next_seq
        || s.payload > run.mss
        || IP + run.tcp_len + run.payload + s.payload > MAX_IP_LEN
        || !same_flow(head.frame(), next.frame(), run.tcp_len)
    {
        return false;
    }
    let at = hdrs + run.payload;
    let data = &next.frame()[hdrs..hdrs + s.payload];
    head.set_len(at + s.payload);
    head.frame_mut()[at..].copy_from_slice(data);
    // PSH travels with the last segment.
    head.frame_mut()[L4 + 13] |= s.flags & TCP_PSH;
    run.payload += s.payload;
    run.next_seq = run.next_seq.wrapping_add(s.payload as u32);
    run.closed = s.payload < run.mss || s.flags & TCP_PSH != 0;
    run.segments += 1;
    true
}

/// Turns a run of two or more segments into a super-frame: IP length and
/// checksum, a TCP checksum left for the receiver (its pseudo-header sum,
/// as for any checksum offload), and the virtio-net header describing it.
pub fn finish(run: &Run, head: &mut Packet) {
    if run.segments < 2 {
        return;
    }
    let ip_len = IP + run.tcp_len + run.payload;
    let f = head.frame_mut();
    f[ETH + 2..ETH + 4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    f[ETH + 10..ETH + 12].copy_from_slice(&[0, 0]);
    let c = checksum(&f[ETH..L4]);
    f[ETH + 10..ETH + 12].copy_from_slice(&c.to_be_bytes());
    let src = Ipv4Addr::new(f[ETH + 12], f[ETH + 13], f[ETH + 14], f[ETH + 15]);
    let dst = Ipv4Addr::new(f[ETH + 16], f[ETH + 17], f[ETH + 18], f[ETH + 19]);
    let partial = pseudo_header_v4(src, dst, IpProtocol::Tcp, (ip_len - IP) as u16).folded();
    f[L4 + 16..L4 + 18].copy_from_slice(&partial.to_be_bytes());
    head.vnet = VirtioNetHdr {
        flags: VirtioNetHdr::F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: (L4 + run.tcp_len) as u16,
        gso_size: run.mss as u16,
        csum_start: L4 as u16,
        csum_offset: 16,
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::gso;

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
