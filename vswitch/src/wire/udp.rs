//! UDP headers (RFC 768), as GSO reads them when it splits a UDP super-frame.
//!
//! `UdpPacket::new_checked` checks that the length field covers the 8-byte
//! header and fits in the buffer; bytes after it are padding and are not
//! part of `payload()`. A zero length (an IPv6 jumbogram, RFC 2675) is
//! refused: the switch never carries one.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{need, pseudo_header_v4, pseudo_header_v6, Checksum, IpProtocol, Result, WireError};

mod field {
    use std::ops::Range;

    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
}

pub const HEADER_LEN: usize = 8;

/// A view of a UDP datagram.
#[derive(Debug, Clone)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check()?;
        Ok(p)
    }

    pub fn check(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        need("udp", HEADER_LEN, len)?;
        let total = usize::from(self.len());
        if total < HEADER_LEN {
            return Err(WireError::Malformed {
                what: "udp",
                reason: "length shorter than the header",
            });
        }
        need("udp payload", total, len)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn u16_at(&self, r: std::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[r];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn src_port(&self) -> u16 {
        self.u16_at(field::SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        self.u16_at(field::DST_PORT)
    }

    /// Header plus payload, as the header says.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u16 {
        self.u16_at(field::LENGTH)
    }

    pub fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM)
    }

    /// The datagram up to its length field: header and payload.
    pub fn datagram(&self) -> &[u8] {
        &self.buffer.as_ref()[..usize::from(self.len())]
    }

    /// The payload up to the length field (padding excluded).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.len())]
    }

    fn sum_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Checksum {
        let mut c = pseudo_header_v4(src, dst, IpProtocol::Udp, self.len());
        c.add_bytes(self.datagram());
        c
    }

    fn sum_v6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> Checksum {
        let mut c = pseudo_header_v6(src, dst, IpProtocol::Udp, u32::from(self.len()));
        c.add_bytes(self.datagram());
        c
    }

    /// Verifies the checksum over the IPv4 pseudo-header and the datagram;
    /// zero means the sender computed none, which IPv4 allows.
    pub fn verify_checksum_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        self.checksum() == 0 || self.sum_v4(src, dst).finish() == 0
    }

    /// Verifies the checksum over the IPv6 pseudo-header and the datagram;
    /// IPv6 requires one (RFC 8200 section 8.1), so zero fails.
    pub fn verify_checksum_v6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        self.checksum() != 0 && self.sum_v6(src, dst).finish() == 0
    }
}

/// A computed UDP checksum of 0 is sent as 0xffff: 0 means "none".
fn nonzero(c: u16) -> u16 {
    if c == 0 {
        0xffff
    } else {
        c
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    fn put16(&mut self, r: std::ops::Range<usize>, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_src_port(&mut self, port: u16) {
        self.put16(field::SRC_PORT, port);
    }

    pub fn set_dst_port(&mut self, port: u16) {
        self.put16(field::DST_PORT, port);
    }

    pub fn set_len(&mut self, len: u16) {
        self.put16(field::LENGTH, len);
    }

    pub fn set_checksum(&mut self, value: u16) {
        self.put16(field::CHECKSUM, value);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.len());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }

    /// Computes and stores the checksum over the IPv4 pseudo-header and the
    /// datagram (up to the length field, which must be set first).
    pub fn fill_checksum_v4(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let c = nonzero(self.sum_v4(src, dst).finish());
        self.set_checksum(c);
    }

    /// As `fill_checksum_v4`, with the IPv6 pseudo-header.
    pub fn fill_checksum_v6(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        self.set_checksum(0);
        let c = nonzero(self.sum_v6(src, dst).finish());
        self.set_checksum(c);
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for UdpPacket<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// A UDP header as plain values. The checksum is filled by the view once
/// the payload is in place (it needs the IP addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpRepr {
    pub src_port: u16,
    pub dst_port: u16,
    /// Bytes after the header.
    pub payload_len: u16,
}

impl UdpRepr {
    /// Reads the header of a checked datagram; the checksum is not verified
    /// here (`verify_checksum_v4`/`_v6` need the IP addresses).
    pub fn parse<T: AsRef<[u8]>>(packet: &UdpPacket<T>) -> Result<UdpRepr> {
        packet.check()?;
        Ok(UdpRepr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            payload_len: packet.len() - HEADER_LEN as u16,
        })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header with a zero checksum; follow with
    /// `fill_checksum_v4`/`_v6` once the payload is in place. Panics if the
    /// buffer is under 8 bytes; `payload_len` must leave the length within
    /// 65535 (a parsed repr always does).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut UdpPacket<T>) {
        debug_assert!(usize::from(self.payload_len) + HEADER_LEN <= usize::from(u16::MAX));
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len(self.payload_len.saturating_add(HEADER_LEN as u16));
        packet.set_checksum(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testing::{bytes, config, damaged, v4_addr, v6_addr};
    use proptest::prelude::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    // 10.0.0.1:5353 -> 10.0.0.2:53, "vswitch!"; checksum computed by hand
    // with the RFC 1071 sum over the pseudo-header.
    static DATAGRAM: [u8; 16] = [
        0x14, 0xe9, 0x00, 0x35, 0x00, 0x10, 0x0c, 0x4c, // ports, length 16, checksum
        b'v', b's', b'w', b'i', b't', b'c', b'h', b'!',
    ];

    #[test]
    fn parse() {
        let p = UdpPacket::new_checked(&DATAGRAM[..]).unwrap();
        assert_eq!(p.src_port(), 5353);
        assert_eq!(p.dst_port(), 53);
        assert_eq!(p.len(), 16);
        assert_eq!(p.checksum(), 0x0c4c);
        assert_eq!(p.payload(), b"vswitch!");
        assert!(p.verify_checksum_v4(SRC, DST));
        assert!(!p.verify_checksum_v4(SRC, Ipv4Addr::new(10, 0, 0, 3)));
        assert_eq!(
            UdpRepr::parse(&p).unwrap(),
            UdpRepr {
                src_port: 5353,
                dst_port: 53,
                payload_len: 8,
            }
        );
    }

    #[test]
    fn emit_then_fill_checksum() {
        let r = UdpRepr::parse(&UdpPacket::new_checked(&DATAGRAM[..]).unwrap()).unwrap();
        let mut out = [0u8; 16];
        let mut p = UdpPacket::new_unchecked(&mut out[..]);
        r.emit(&mut p);
        p.payload_mut().copy_from_slice(b"vswitch!");
        p.fill_checksum_v4(SRC, DST);
        assert_eq!(out, DATAGRAM);
        let (a, b): (Ipv6Addr, Ipv6Addr) = ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap());
        let mut p = UdpPacket::new_checked(&mut out[..]).unwrap();
        p.fill_checksum_v6(a, b);
        assert!(p.verify_checksum_v6(a, b));
    }

    #[test]
    fn zero_checksum_means_none_on_ipv4_only() {
        let mut b = DATAGRAM;
        b[6..8].fill(0);
        let p = UdpPacket::new_checked(&b[..]).unwrap();
        assert!(p.verify_checksum_v4(SRC, DST));
        assert!(!p.verify_checksum_v6(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST));
        // A sum that comes out 0 is sent as 0xffff, which verifies.
        assert_eq!(nonzero(0), 0xffff);
        assert_eq!(nonzero(7), 7);
    }

    #[test]
    fn truncated_malformed_and_padded() {
        for len in 0..8 {
            assert!(matches!(
                UdpPacket::new_checked(&DATAGRAM[..len]),
                Err(WireError::Truncated { need: 8, .. })
            ));
        }
        for len in 8..16 {
            assert!(matches!(
                UdpPacket::new_checked(&DATAGRAM[..len]),
                Err(WireError::Truncated { need: 16, .. })
            ));
        }
        for bad in [0u16, 7] {
            let mut b = DATAGRAM;
            b[4..6].copy_from_slice(&bad.to_be_bytes());
            assert!(matches!(
                UdpPacket::new_checked(&b[..]),
                Err(WireError::Malformed { .. })
            ));
        }
        let mut padded = [0u8; 26];
        padded[..16].copy_from_slice(&DATAGRAM);
        let p = UdpPacket::new_checked(&padded[..]).unwrap();
        assert_eq!(p.payload(), b"vswitch!");
        assert!(p.verify_checksum_v4(SRC, DST), "padding is not summed");
    }

    /// A well-formed datagram with arbitrary ports, checksum and payload,
    /// sometimes followed by padding.
    fn datagram() -> impl Strategy<Value = Vec<u8>> {
        (
            any::<[u8; 8]>(),
            prop::collection::vec(any::<u8>(), 0..200),
            0usize..20,
        )
            .prop_map(|(hdr, data, pad)| {
                let mut v = hdr.to_vec();
                v[4..6].copy_from_slice(&((8 + data.len()) as u16).to_be_bytes());
                v.extend_from_slice(&data);
                v.resize(v.len() + pad, 0);
                v
            })
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn prop_udp_checked_view_never_panics(
            b in prop_oneof![bytes(), damaged(datagram())],
            a4 in (v4_addr(), v4_addr()),
            a6 in (v6_addr(), v6_addr()),
        ) {
            if let Ok(p) = UdpPacket::new_checked(&b[..]) {
                let _ = (p.src_port(), p.dst_port(), p.checksum());
                let _ = (p.verify_checksum_v4(a4.0, a4.1), p.verify_checksum_v6(a6.0, a6.1));
                prop_assert_eq!(p.payload().len() + HEADER_LEN, usize::from(p.len()));
                prop_assert!(p.datagram().len() <= b.len());
            }
        }

        /// Every field but the checksum is in the repr: the header comes
        /// back byte for byte with a zero checksum, and a filled checksum
        /// verifies.
        #[test]
        fn prop_udp_repr_round_trips(
            b in damaged(datagram()),
            a4 in (v4_addr(), v4_addr()),
            a6 in (v6_addr(), v6_addr()),
        ) {
            let Ok(p) = UdpPacket::new_checked(&b[..]) else { return Ok(()) };
            let r = UdpRepr::parse(&p).unwrap();
            let mut out = vec![0u8; r.buffer_len() + usize::from(r.payload_len)];
            let mut q = UdpPacket::new_unchecked(&mut out[..]);
            r.emit(&mut q);
            q.payload_mut().copy_from_slice(p.payload());
            prop_assert_eq!(&out[..6], &b[..6]);
            prop_assert_eq!(&out[6..8], &[0, 0]);
            prop_assert_eq!(UdpRepr::parse(&UdpPacket::new_checked(&out[..]).unwrap()), Ok(r));
            let mut q = UdpPacket::new_unchecked(&mut out[..]);
            q.fill_checksum_v4(a4.0, a4.1);
            prop_assert!(q.verify_checksum_v4(a4.0, a4.1));
            q.fill_checksum_v6(a6.0, a6.1);
            prop_assert!(q.verify_checksum_v6(a6.0, a6.1));
        }
    }
}
