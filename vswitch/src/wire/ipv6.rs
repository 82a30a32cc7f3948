//! IPv6 fixed headers (RFC 8200).
//!
//! `Ipv6Packet::new_checked` checks version 6 and that the payload length
//! fits in the buffer; bytes after it are Ethernet padding and are not part
//! of `payload()`. Extension headers are not walked: `next_header` is the
//! fixed header's field.

use std::net::Ipv6Addr;

use super::ethernet::MacAddr;
use super::{need, IpProtocol, Result, WireError};

mod field {
    use std::ops::Range;

    pub const VER_TC_FLOW: Range<usize> = 0..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Range<usize> = 8..24;
    pub const DST: Range<usize> = 24..40;
}

/// Length of the fixed header.
pub const HEADER_LEN: usize = 40;

/// A view of an IPv6 packet.
#[derive(Debug, Clone)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check()?;
        Ok(p)
    }

    pub fn check(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        need("ipv6", HEADER_LEN, len)?;
        if self.version() != 6 {
            return Err(WireError::Malformed {
                what: "ipv6",
                reason: "version is not 6",
            });
        }
        need(
            "ipv6 payload",
            HEADER_LEN + usize::from(self.payload_len()),
            len,
        )
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn word0(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VER_TC_FLOW];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    fn addr_at(&self, r: std::ops::Range<usize>) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[r]);
        Ipv6Addr::from(a)
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    pub fn traffic_class(&self) -> u8 {
        (self.word0() >> 20) as u8
    }

    pub fn flow_label(&self) -> u32 {
        self.word0() & 0x000f_ffff
    }

    /// Bytes after the fixed header, extension headers included.
    pub fn payload_len(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::LENGTH];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn next_header(&self) -> IpProtocol {
        IpProtocol::from(self.buffer.as_ref()[field::NXT_HDR])
    }

    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    pub fn src(&self) -> Ipv6Addr {
        self.addr_at(field::SRC)
    }

    pub fn dst(&self) -> Ipv6Addr {
        self.addr_at(field::DST)
    }

    /// The payload up to the payload length (Ethernet padding excluded).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + usize::from(self.payload_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// Sets version 6, traffic class and flow label (the first 4 bytes).
    pub fn set_version_tc_flow(&mut self, traffic_class: u8, flow_label: u32) {
        let w = (6u32 << 28) | (u32::from(traffic_class) << 20) | (flow_label & 0x000f_ffff);
        self.buffer.as_mut()[field::VER_TC_FLOW].copy_from_slice(&w.to_be_bytes());
    }

    pub fn set_payload_len(&mut self, len: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&len.to_be_bytes());
    }

    pub fn set_next_header(&mut self, nh: IpProtocol) {
        self.buffer.as_mut()[field::NXT_HDR] = u8::from(nh);
    }

    pub fn set_hop_limit(&mut self, hop_limit: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = hop_limit;
    }

    pub fn set_src(&mut self, ip: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&ip.octets());
    }

    pub fn set_dst(&mut self, ip: Ipv6Addr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&ip.octets());
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = HEADER_LEN + usize::from(self.payload_len());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// An IPv6 fixed header as plain values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Repr {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub next_header: IpProtocol,
    pub payload_len: u16,
    pub hop_limit: u8,
}

impl Ipv6Repr {
    pub fn parse<T: AsRef<[u8]>>(packet: &Ipv6Packet<T>) -> Result<Ipv6Repr> {
        packet.check()?;
        Ok(Ipv6Repr {
            src: packet.src(),
            dst: packet.dst(),
            next_header: packet.next_header(),
            payload_len: packet.payload_len(),
            hop_limit: packet.hop_limit(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the fixed header with traffic class and flow label 0. Panics if
    /// the buffer is under 40 bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv6Packet<T>) {
        packet.set_version_tc_flow(0, 0);
        packet.set_payload_len(self.payload_len);
        packet.set_next_header(self.next_header);
        packet.set_hop_limit(self.hop_limit);
        packet.set_src(self.src);
        packet.set_dst(self.dst);
    }
}

/// The solicited-node multicast group of `addr` (RFC 4291 section 2.7.1),
/// where a neighbour solicitation for `addr` is sent.
pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// The Ethernet address an IPv6 multicast group maps to (RFC 2464 section 7):
/// 33:33 and the group's last four bytes.
pub fn multicast_mac(group: Ipv6Addr) -> MacAddr {
    let o = group.octets();
    MacAddr([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testing::{bytes, config, damaged};
    use proptest::prelude::*;

    // Hop limit 255 ICMPv6 (8 bytes) fe80::15:5dff:fe00:1 -> ff02::1:ff00:2,
    // traffic class 0xe0, flow label 0x12345.
    static PACKET: [u8; 48] = [
        0x6e, 0x01, 0x23, 0x45, 0x00, 0x08, 0x3a, 0xff, // ver/tc/flow, len 8, icmpv6, hl 255
        0xfe, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // src
        0x00, 0x15, 0x5d, 0xff, 0xfe, 0x00, 0x00, 0x01, //
        0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // dst
        0x00, 0x00, 0x00, 0x01, 0xff, 0x00, 0x00, 0x02, //
        1, 2, 3, 4, 5, 6, 7, 8, // payload
    ];

    const SRC: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x15, 0x5dff, 0xfe00, 1);
    const DST: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 2);

    #[test]
    fn parse() {
        let p = Ipv6Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), 0xe0);
        assert_eq!(p.flow_label(), 0x12345);
        assert_eq!(p.payload_len(), 8);
        assert_eq!(p.next_header(), IpProtocol::Icmpv6);
        assert_eq!(p.hop_limit(), 255);
        assert_eq!(p.src(), SRC);
        assert_eq!(p.dst(), DST);
        assert_eq!(p.payload(), &[1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn emit_round_trip() {
        let p = Ipv6Packet::new_checked(&PACKET[..]).unwrap();
        let r = Ipv6Repr::parse(&p).unwrap();
        let mut out = PACKET;
        let mut q = Ipv6Packet::new_unchecked(&mut out[..]);
        r.emit(&mut q);
        q.set_version_tc_flow(0xe0, 0x12345);
        assert_eq!(out, PACKET);
        let mut plain = [0u8; 40];
        r.emit(&mut Ipv6Packet::new_unchecked(&mut plain[..]));
        assert_eq!(&plain[..4], &[0x60, 0, 0, 0]);
        assert_eq!(&plain[4..], &PACKET[4..40]);
    }

    #[test]
    fn truncated_and_malformed() {
        for len in 0..40 {
            assert!(matches!(
                Ipv6Packet::new_checked(&PACKET[..len]),
                Err(WireError::Truncated { need: 40, .. })
            ));
        }
        assert!(matches!(
            Ipv6Packet::new_checked(&PACKET[..47]),
            Err(WireError::Truncated { need: 48, .. })
        ));
        let mut v4 = PACKET;
        v4[0] = 0x4e;
        assert!(matches!(
            Ipv6Packet::new_checked(&v4[..]),
            Err(WireError::Malformed { .. })
        ));
        let mut padded = [0u8; 64];
        padded[..48].copy_from_slice(&PACKET);
        assert_eq!(
            Ipv6Packet::new_checked(&padded[..])
                .unwrap()
                .payload()
                .len(),
            8
        );
    }

    #[test]
    fn unknown_next_header_round_trips() {
        let mut buf = PACKET;
        buf[6] = 143; // Ethernet-in-IPv6
        let p = Ipv6Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.next_header(), IpProtocol::Unknown(143));
        let r = Ipv6Repr::parse(&p).unwrap();
        let mut out = [0u8; 40];
        r.emit(&mut Ipv6Packet::new_unchecked(&mut out[..]));
        assert_eq!(out[6], 143);
    }

    #[test]
    fn multicast_helpers() {
        let target = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0x0a0b, 0x0c0d);
        assert_eq!(
            solicited_node(target),
            Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff0b, 0x0c0d)
        );
        assert_eq!(
            multicast_mac(solicited_node(target)),
            MacAddr([0x33, 0x33, 0xff, 0x0b, 0x0c, 0x0d])
        );
        assert_eq!(multicast_mac(DST).to_string(), "33:33:ff:00:00:02");
    }

    /// An IPv6 packet with arbitrary fields and payload, sometimes padded.
    fn ipv6() -> impl Strategy<Value = Vec<u8>> {
        (
            any::<[u8; 40]>(),
            prop::collection::vec(any::<u8>(), 0..200),
            0usize..20,
        )
            .prop_map(|(hdr, payload, pad)| {
                let mut v = hdr.to_vec();
                v[0] = 0x60 | (v[0] & 0x0f);
                v[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
                v.extend_from_slice(&payload);
                v.resize(v.len() + pad, 0);
                v
            })
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn prop_ipv6_checked_view_never_panics(b in prop_oneof![bytes(), damaged(ipv6())]) {
            let Ok(p) = Ipv6Packet::new_checked(&b[..]) else { return Ok(()) };
            let _ = (p.version(), p.traffic_class(), p.flow_label(), p.next_header());
            let _ = (p.hop_limit(), p.src(), p.dst());
            prop_assert!(p.flow_label() <= 0x000f_ffff);
            prop_assert_eq!(p.payload().len(), usize::from(p.payload_len()));
            prop_assert!(HEADER_LEN + p.payload().len() <= b.len());
        }

        /// The repr keeps all but traffic class and flow label, which emit
        /// writes as 0: bytes 4..40 come back as they were, the first four
        /// when they were 0x60000000, and parse(emit(parse(x))) == parse(x).
        #[test]
        fn prop_ipv6_repr_round_trips(b in damaged(ipv6())) {
            let Ok(p) = Ipv6Packet::new_checked(&b[..]) else { return Ok(()) };
            let r = Ipv6Repr::parse(&p).unwrap();
            let mut out = vec![0u8; r.buffer_len() + usize::from(r.payload_len)];
            r.emit(&mut Ipv6Packet::new_unchecked(&mut out[..]));
            prop_assert_eq!(&out[4..40], &b[4..40]);
            prop_assert_eq!(&out[..4], &[0x60, 0, 0, 0]);
            let q = Ipv6Packet::new_checked(&out[..]).unwrap();
            prop_assert_eq!(Ipv6Repr::parse(&q), Ok(r));
            // Traffic class and flow label written back as read.
            let mut q = Ipv6Packet::new_unchecked(&mut out[..]);
            q.set_version_tc_flow(p.traffic_class(), p.flow_label());
            prop_assert_eq!(&out[..40], &b[..40]);
        }

        #[test]
        fn prop_multicast_helpers(a in any::<[u8; 16]>()) {
            let group = solicited_node(Ipv6Addr::from(a));
            prop_assert!(group.is_multicast());
            prop_assert_eq!(&group.octets()[13..], &a[13..]);
            let mac = multicast_mac(group);
            prop_assert!(mac.is_multicast());
        }
    }
}
