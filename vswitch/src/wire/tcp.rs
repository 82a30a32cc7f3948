//! TCP headers (RFC 9293), as far as the switch reads them: GRO joins
//! segments and GSO splits super-frames, neither terminates a connection.
//!
//! A `TcpPacket` view is over the whole segment and nothing else (the IP
//! payload): the checksum covers the buffer to its end. `new_checked`
//! checks a data offset of at least 5 words whose header fits in the
//! buffer, so `options()` and `payload()` never panic.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{need, pseudo_header_v4, pseudo_header_v6, Checksum, IpProtocol, Result, WireError};

mod field {
    use std::ops::Range;

    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ: Range<usize> = 4..8;
    pub const ACK: Range<usize> = 8..12;
    /// Data offset (4 bits), reserved (3 bits) and the 9 flags.
    pub const OFF_FLAGS: Range<usize> = 12..14;
    pub const WINDOW: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
}

/// Length of a header without options.
pub const HEADER_LEN: usize = 20;
/// Longest header: data offset 15.
pub const MAX_HEADER_LEN: usize = 60;

/// The 12 bits after the data offset: the flags and the reserved bits, which
/// round-trip unchanged like any other value the switch has no name for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u16);

impl TcpFlags {
    pub const FIN: TcpFlags = TcpFlags(0x001);
    pub const SYN: TcpFlags = TcpFlags(0x002);
    pub const RST: TcpFlags = TcpFlags(0x004);
    pub const PSH: TcpFlags = TcpFlags(0x008);
    pub const ACK: TcpFlags = TcpFlags(0x010);
    pub const URG: TcpFlags = TcpFlags(0x020);
    pub const ECE: TcpFlags = TcpFlags(0x040);
    pub const CWR: TcpFlags = TcpFlags(0x080);
    /// AE (formerly NS, RFC 3540), the low bit of byte 12.
    pub const AE: TcpFlags = TcpFlags(0x100);
    const MASK: u16 = 0x0fff;

    pub const fn bits(self) -> u16 {
        self.0
    }

    pub const fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn union(self, other: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | other.0)
    }

    pub const fn difference(self, other: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 & !other.0)
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// A view of a TCP segment.
#[derive(Debug, Clone)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check()?;
        Ok(p)
    }

    pub fn check(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        need("tcp", HEADER_LEN, len)?;
        let hl = self.header_len();
        if hl < HEADER_LEN {
            return Err(WireError::Malformed {
                what: "tcp",
                reason: "data offset under 5 words",
            });
        }
        need("tcp options", hl, len)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    fn u16_at(&self, r: std::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[r];
        u16::from_be_bytes([b[0], b[1]])
    }

    fn u32_at(&self, r: std::ops::Range<usize>) -> u32 {
        let b = &self.buffer.as_ref()[r];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    pub fn src_port(&self) -> u16 {
        self.u16_at(field::SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        self.u16_at(field::DST_PORT)
    }

    pub fn seq_number(&self) -> u32 {
        self.u32_at(field::SEQ)
    }

    pub fn ack_number(&self) -> u32 {
        self.u32_at(field::ACK)
    }

    /// Header length in bytes (data offset * 4), options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::OFF_FLAGS.start] >> 4) * 4
    }

    pub fn flags(&self) -> TcpFlags {
        TcpFlags(self.u16_at(field::OFF_FLAGS) & TcpFlags::MASK)
    }

    pub fn window(&self) -> u16 {
        self.u16_at(field::WINDOW)
    }

    pub fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM)
    }

    pub fn urgent_ptr(&self) -> u16 {
        self.u16_at(field::URGENT)
    }

    /// The options, between the fixed header and the data.
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// The data after the header, to the end of the buffer.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    /// The ones' complement sum of the whole segment and the IPv4
    /// pseudo-header, or `None` for a segment too long for IPv4.
    fn sum_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Option<Checksum> {
        let b = self.buffer.as_ref();
        let len = u16::try_from(b.len()).ok()?;
        let mut c = pseudo_header_v4(src, dst, IpProtocol::Tcp, len);
        c.add_bytes(b);
        Some(c)
    }

    fn sum_v6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> Option<Checksum> {
        let b = self.buffer.as_ref();
        let len = u32::try_from(b.len()).ok()?;
        let mut c = pseudo_header_v6(src, dst, IpProtocol::Tcp, len);
        c.add_bytes(b);
        Some(c)
    }

    /// Verifies the checksum over the IPv4 pseudo-header and the buffer.
    pub fn verify_checksum_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        self.sum_v4(src, dst).is_some_and(|c| c.finish() == 0)
    }

    /// Verifies the checksum over the IPv6 pseudo-header and the buffer.
    pub fn verify_checksum_v6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        self.sum_v6(src, dst).is_some_and(|c| c.finish() == 0)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    fn put16(&mut self, r: std::ops::Range<usize>, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_src_port(&mut self, port: u16) {
        self.put16(field::SRC_PORT, port);
    }

    pub fn set_dst_port(&mut self, port: u16) {
        self.put16(field::DST_PORT, port);
    }

    pub fn set_seq_number(&mut self, seq: u32) {
        self.buffer.as_mut()[field::SEQ].copy_from_slice(&seq.to_be_bytes());
    }

    pub fn set_ack_number(&mut self, ack: u32) {
        self.buffer.as_mut()[field::ACK].copy_from_slice(&ack.to_be_bytes());
    }

    /// Sets the data offset from a header length in bytes (a multiple of 4,
    /// 20 to 60); the flags are kept.
    pub fn set_header_len(&mut self, header_len: usize) {
        debug_assert!(header_len & 3 == 0 && (HEADER_LEN..=MAX_HEADER_LEN).contains(&header_len));
        let b = &mut self.buffer.as_mut()[field::OFF_FLAGS.start];
        *b = (((header_len / 4) as u8) << 4) | (*b & 0x0f);
    }

    /// Sets the flags and reserved bits; the data offset is kept.
    pub fn set_flags(&mut self, flags: TcpFlags) {
        let b = &mut self.buffer.as_mut()[field::OFF_FLAGS];
        let v = (u16::from(b[0] & 0xf0) << 8) | (flags.0 & TcpFlags::MASK);
        b.copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_window(&mut self, window: u16) {
        self.put16(field::WINDOW, window);
    }

    pub fn set_checksum(&mut self, value: u16) {
        self.put16(field::CHECKSUM, value);
    }

    pub fn set_urgent_ptr(&mut self, value: u16) {
        self.put16(field::URGENT, value);
    }

    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = self.header_len();
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let at = self.header_len();
        &mut self.buffer.as_mut()[at..]
    }

    /// Computes and stores the checksum over the IPv4 pseudo-header and the
    /// whole buffer (which must be at most 65535 bytes).
    pub fn fill_checksum_v4(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let c = self.sum_v4(src, dst).map_or(0, |c| c.finish());
        self.set_checksum(c);
    }

    /// Computes and stores the checksum over the IPv6 pseudo-header and the
    /// whole buffer.
    pub fn fill_checksum_v6(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        self.set_checksum(0);
        let c = self.sum_v6(src, dst).map_or(0, |c| c.finish());
        self.set_checksum(c);
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for TcpPacket<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// A TCP header without options, as plain values: what GRO compares and
/// GSO rewrites. Options and data stay in the buffer; the checksum is
/// filled by the view once the data is in place (it needs the IP
/// addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpRepr {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq_number: u32,
    pub ack_number: u32,
    pub flags: TcpFlags,
    pub window: u16,
    pub urgent_ptr: u16,
}

impl TcpRepr {
    /// Reads the header of a checked segment. The checksum is not verified
    /// here: it needs the IP addresses (`verify_checksum_v4`/`_v6`).
    pub fn parse<T: AsRef<[u8]>>(packet: &TcpPacket<T>) -> Result<TcpRepr> {
        packet.check()?;
        Ok(TcpRepr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            seq_number: packet.seq_number(),
            ack_number: packet.ack_number(),
            flags: packet.flags(),
            window: packet.window(),
            urgent_ptr: packet.urgent_ptr(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes a 20-byte header with a zero checksum; follow with
    /// `fill_checksum_v4`/`_v6` over the whole segment. Panics if the buffer
    /// is under 20 bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut TcpPacket<T>) {
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_seq_number(self.seq_number);
        packet.set_ack_number(self.ack_number);
        packet.set_header_len(HEADER_LEN);
        packet.set_flags(self.flags);
        packet.set_window(self.window);
        packet.set_checksum(0);
        packet.set_urgent_ptr(self.urgent_ptr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testing::{bytes, config, damaged, v4_addr, v6_addr};
    use proptest::prelude::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    // 10.0.0.1:1000 -> 10.0.0.2:2000, seq 100, ack 77, PSH|ACK, window 512,
    // a timestamp option (NOP, NOP, TS) and 4 bytes of data; checksum
    // computed by hand with the RFC 1071 sum over the pseudo-header.
    static SEGMENT: [u8; 36] = [
        0x03, 0xe8, 0x07, 0xd0, // ports
        0x00, 0x00, 0x00, 0x64, // seq
        0x00, 0x00, 0x00, 0x4d, // ack
        0x80, 0x18, 0x02, 0x00, // offset 8, PSH|ACK, window 512
        0xb6, 0xa5, 0x00, 0x00, // checksum, urgent
        0x01, 0x01, 0x08, 0x0a, // NOP, NOP, timestamp
        0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02, // TSval, TSecr
        0xde, 0xad, 0xbe, 0xef, // data
    ];

    #[test]
    fn parse() {
        let p = TcpPacket::new_checked(&SEGMENT[..]).unwrap();
        assert_eq!(p.src_port(), 1000);
        assert_eq!(p.dst_port(), 2000);
        assert_eq!(p.seq_number(), 100);
        assert_eq!(p.ack_number(), 77);
        assert_eq!(p.header_len(), 32);
        assert_eq!(p.flags(), TcpFlags::PSH.union(TcpFlags::ACK));
        assert!(p.flags().contains(TcpFlags::ACK));
        assert!(!p.flags().contains(TcpFlags::SYN));
        assert_eq!(p.window(), 512);
        assert_eq!(p.urgent_ptr(), 0);
        assert_eq!(p.options(), &SEGMENT[20..32]);
        assert_eq!(p.payload(), &[0xde, 0xad, 0xbe, 0xef]);
        assert!(p.verify_checksum_v4(SRC, DST));
        assert!(!p.verify_checksum_v4(DST, Ipv4Addr::new(10, 0, 0, 3)));
        assert_eq!(
            TcpRepr::parse(&p).unwrap(),
            TcpRepr {
                src_port: 1000,
                dst_port: 2000,
                seq_number: 100,
                ack_number: 77,
                flags: TcpFlags(0x018),
                window: 512,
                urgent_ptr: 0,
            }
        );
    }

    #[test]
    fn emit_then_fill_checksum() {
        let r = TcpRepr::parse(&TcpPacket::new_checked(&SEGMENT[..]).unwrap()).unwrap();
        let mut out = SEGMENT;
        out[..20].fill(0);
        let mut p = TcpPacket::new_unchecked(&mut out[..]);
        r.emit(&mut p);
        assert_eq!(p.checksum(), 0);
        p.set_header_len(32);
        p.fill_checksum_v4(SRC, DST);
        assert_eq!(out, SEGMENT);
        // IPv6 pseudo-header: a different sum, verified the same way.
        let (a, b): (Ipv6Addr, Ipv6Addr) = ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap());
        let mut p = TcpPacket::new_checked(&mut out[..]).unwrap();
        p.fill_checksum_v6(a, b);
        assert!(p.verify_checksum_v6(a, b));
        assert!(!p.verify_checksum_v4(SRC, DST));
    }

    #[test]
    fn truncated_and_malformed() {
        for len in 0..20 {
            assert!(matches!(
                TcpPacket::new_checked(&SEGMENT[..len]),
                Err(WireError::Truncated { need: 20, .. })
            ));
        }
        for len in 20..32 {
            assert!(matches!(
                TcpPacket::new_checked(&SEGMENT[..len]),
                Err(WireError::Truncated { need: 32, .. })
            ));
        }
        // Options and no data: fine.
        assert!(TcpPacket::new_checked(&SEGMENT[..32])
            .unwrap()
            .payload()
            .is_empty());
        for off in 0..5u8 {
            let mut b = SEGMENT;
            b[12] = off << 4;
            assert!(matches!(
                TcpPacket::new_checked(&b[..]),
                Err(WireError::Malformed { .. })
            ));
        }
        let mut b = SEGMENT;
        b[12] = 0xf0; // 60-byte header in 36 bytes
        assert!(matches!(
            TcpPacket::new_checked(&b[..]),
            Err(WireError::Truncated { need: 60, .. })
        ));
    }

    #[test]
    fn flags_and_reserved_bits_round_trip() {
        let mut b = SEGMENT;
        b[12] = 0x8f; // offset 8, reserved bits and AE set
        b[13] = 0xff;
        let p = TcpPacket::new_checked(&b[..]).unwrap();
        assert_eq!(p.flags(), TcpFlags(0xfff));
        assert!(p.flags().contains(TcpFlags::AE.union(TcpFlags::CWR)));
        let mut out = [0u8; 20];
        let mut q = TcpPacket::new_unchecked(&mut out[..]);
        q.set_header_len(20);
        q.set_flags(p.flags());
        assert_eq!(&out[12..14], &[0x5f, 0xff]);
        let mut q = TcpPacket::new_unchecked(&mut out[..]);
        q.set_flags(TcpFlags::ACK.difference(TcpFlags::PSH));
        q.set_header_len(60);
        assert_eq!(&out[12..14], &[0xf0, 0x10]);
        assert!(TcpFlags::default().is_empty());
        assert_eq!(TcpFlags::SYN.bits(), 2);
    }

    /// A well-formed segment with arbitrary fields, options and data.
    fn segment() -> impl Strategy<Value = Vec<u8>> {
        (
            any::<[u8; 20]>(),
            5u8..=15,
            prop::collection::vec(any::<u8>(), 0..200),
        )
            .prop_map(|(hdr, off, data)| {
                let hl = usize::from(off) * 4;
                let mut v = vec![0u8; hl + data.len()];
                v[..20].copy_from_slice(&hdr);
                v[12] = (off << 4) | (hdr[12] & 0x0f);
                for (i, b) in v[20..hl].iter_mut().enumerate() {
                    *b = hdr[i % 20];
                }
                v[hl..].copy_from_slice(&data);
                v
            })
    }

    fn touch<T: AsRef<[u8]>>(p: &TcpPacket<T>, a4: (Ipv4Addr, Ipv4Addr), a6: (Ipv6Addr, Ipv6Addr)) {
        let len = p.as_bytes().len();
        let _ = (p.src_port(), p.dst_port(), p.seq_number(), p.ack_number());
        let _ = (p.flags(), p.window(), p.checksum(), p.urgent_ptr());
        let _ = (
            p.verify_checksum_v4(a4.0, a4.1),
            p.verify_checksum_v6(a6.0, a6.1),
        );
        assert!((HEADER_LEN..=MAX_HEADER_LEN).contains(&p.header_len()));
        assert_eq!(p.options().len() + HEADER_LEN, p.header_len());
        assert_eq!(p.payload().len() + p.header_len(), len);
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn prop_tcp_checked_view_never_panics(
            b in prop_oneof![bytes(), damaged(segment())],
            a4 in (v4_addr(), v4_addr()),
            a6 in (v6_addr(), v6_addr()),
        ) {
            if let Ok(p) = TcpPacket::new_checked(&b[..]) {
                touch(&p, a4, a6);
            }
        }

        /// Every field but the data offset and the checksum is in the repr,
        /// so a header without options comes back byte for byte with a
        /// zero checksum; with options, the repr drops them (they stay in
        /// the buffer), and parse(emit(parse(x))) == parse(x).
        #[test]
        fn prop_tcp_repr_round_trips(b in damaged(segment()), a4 in (v4_addr(), v4_addr())) {
            let Ok(p) = TcpPacket::new_checked(&b[..]) else { return Ok(()) };
            let r = TcpRepr::parse(&p).unwrap();
            let mut out = vec![0u8; r.buffer_len()];
            let mut q = TcpPacket::new_unchecked(&mut out[..]);
            r.emit(&mut q);
            prop_assert_eq!(TcpRepr::parse(&TcpPacket::new_checked(&out[..]).unwrap()), Ok(r));
            if p.header_len() == HEADER_LEN {
                prop_assert_eq!(&out[..16], &b[..16]);
                prop_assert_eq!(&out[16..18], &[0, 0]);
                prop_assert_eq!(&out[18..20], &b[18..20]);
            }
            // Filling the checksum over the original segment verifies.
            let mut c = b.clone();
            let mut q = TcpPacket::new_checked(&mut c[..]).unwrap();
            q.fill_checksum_v4(a4.0, a4.1);
            prop_assert!(q.verify_checksum_v4(a4.0, a4.1));
        }
    }
}
