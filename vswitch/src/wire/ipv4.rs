//! IPv4 headers (RFC 791).
//!
//! `Ipv4Packet::new_checked` checks version 4, a header length of at least 20
//! bytes within the buffer, and a total length that covers the header and
//! fits in the buffer (bytes after it are Ethernet padding and are not part
//! of `payload()`). It does not verify the header checksum: the view is for
//! the datapath, which may trust its local kernel; `Ipv4Repr::parse` and
//! `verify_checksum` do check it.

use std::net::Ipv4Addr;

use super::{checksum, need, IpProtocol, Result, WireError};

mod field {
    use std::ops::Range;

    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC: Range<usize> = 12..16;
    pub const DST: Range<usize> = 16..20;
}

/// Length of a header without options.
pub const HEADER_LEN: usize = 20;
const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;

/// A view of an IPv4 packet.
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check()?;
        Ok(p)
    }

    pub fn check(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        need("ipv4", HEADER_LEN, len)?;
        if self.version() != 4 {
            return Err(WireError::Malformed {
                what: "ipv4",
                reason: "version is not 4",
            });
        }
        let hl = self.header_len();
        if hl < HEADER_LEN {
            return Err(WireError::Malformed {
                what: "ipv4",
                reason: "header length under 20 bytes",
            });
        }
        need("ipv4 options", hl, len)?;
        let total = usize::from(self.total_len());
        if total < hl {
            return Err(WireError::Malformed {
                what: "ipv4",
                reason: "total length shorter than the header",
            });
        }
        need("ipv4 payload", total, len)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn u16_at(&self, r: std::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[r];
        u16::from_be_bytes([b[0], b[1]])
    }

    fn addr_at(&self, r: std::ops::Range<usize>) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[r];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL * 4), options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    pub fn dscp(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] >> 2
    }

    pub fn ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] & 0x03
    }

    /// Header plus payload, as the header says.
    pub fn total_len(&self) -> u16 {
        self.u16_at(field::LENGTH)
    }

    pub fn ident(&self) -> u16 {
        self.u16_at(field::IDENT)
    }

    pub fn dont_frag(&self) -> bool {
        self.u16_at(field::FLG_OFF) & FLAG_DF != 0
    }

    pub fn more_frags(&self) -> bool {
        self.u16_at(field::FLG_OFF) & FLAG_MF != 0
    }

    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        (self.u16_at(field::FLG_OFF) & 0x1fff) << 3
    }

    /// True for any fragment but a whole datagram: only the first fragment
    /// carries the transport header.
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }

    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    pub fn protocol(&self) -> IpProtocol {
        IpProtocol::from(self.buffer.as_ref()[field::PROTOCOL])
    }

    pub fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM)
    }

    pub fn src(&self) -> Ipv4Addr {
        self.addr_at(field::SRC)
    }

    pub fn dst(&self) -> Ipv4Addr {
        self.addr_at(field::DST)
    }

    /// The header, options included.
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.header_len()]
    }

    /// The payload up to the total length (Ethernet padding excluded).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }

    pub fn verify_checksum(&self) -> bool {
        checksum(self.header()) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Sets version 4 and the header length in bytes (a multiple of 4).
    pub fn set_version_header_len(&mut self, header_len: usize) {
        debug_assert!(header_len & 3 == 0 && (HEADER_LEN..=60).contains(&header_len));
        self.buffer.as_mut()[field::VER_IHL] = 0x40 | ((header_len / 4) as u8 & 0x0f);
    }

    pub fn set_dscp_ecn(&mut self, dscp: u8, ecn: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = (dscp << 2) | (ecn & 0x03);
    }

    pub fn set_total_len(&mut self, len: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&len.to_be_bytes());
    }

    pub fn set_ident(&mut self, ident: u16) {
        self.buffer.as_mut()[field::IDENT].copy_from_slice(&ident.to_be_bytes());
    }

    /// Sets DF with no fragmentation (MF clear, offset 0).
    pub fn set_dont_frag_only(&mut self, df: bool) {
        let v = if df { FLAG_DF } else { 0 };
        self.buffer.as_mut()[field::FLG_OFF].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    pub fn set_protocol(&mut self, protocol: IpProtocol) {
        self.buffer.as_mut()[field::PROTOCOL] = u8::from(protocol);
    }

    pub fn set_checksum(&mut self, value: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&value.to_be_bytes());
    }

    /// The caller refills the checksum (`fill_checksum`) after changing it.
    pub fn set_src(&mut self, ip: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&ip.octets());
    }

    /// The caller refills the checksum (`fill_checksum`) after changing it.
    pub fn set_dst(&mut self, ip: Ipv4Addr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&ip.octets());
    }

    /// Computes and stores the header checksum.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum(self.header());
        self.set_checksum(c);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        let end = usize::from(self.total_len());
        &mut self.buffer.as_mut()[start..end]
    }
}

/// An IPv4 header without options, as plain values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Repr {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: IpProtocol,
    /// Bytes after the header.
    pub payload_len: u16,
    pub ttl: u8,
}

impl Ipv4Repr {
    /// Parses a checked packet, verifying the header checksum. Options are
    /// skipped; fragments are accepted (check `is_fragment` on the view).
    pub fn parse<T: AsRef<[u8]>>(packet: &Ipv4Packet<T>) -> Result<Ipv4Repr> {
        packet.check()?;
        if !packet.verify_checksum() {
            return Err(WireError::BadChecksum { what: "ipv4" });
        }
        Ok(Ipv4Repr {
            src: packet.src(),
            dst: packet.dst(),
            protocol: packet.protocol(),
            payload_len: packet.total_len() - packet.header_len() as u16,
            ttl: packet.ttl(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes a 20-byte header with DF set, ident 0, DSCP 0, and its checksum.
    /// Panics if the buffer is under 20 bytes; `payload_len` must leave
    /// `total_len` within 65535.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv4Packet<T>) {
        packet.set_version_header_len(HEADER_LEN);
        packet.set_dscp_ecn(0, 0);
        packet.set_total_len(self.payload_len.saturating_add(HEADER_LEN as u16));
        packet.set_ident(0);
        packet.set_dont_frag_only(true);
        packet.set_ttl(self.ttl);
        packet.set_protocol(self.protocol);
        packet.set_src(self.src);
        packet.set_dst(self.dst);
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testing::{bytes, config, damaged};
    use proptest::prelude::*;

    // UDP 192.168.0.1 -> 192.168.0.199, total length 0x73, a widely
    // published example header with checksum 0xb861.
    static HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    fn packet() -> [u8; 0x73] {
        let mut p = [0u8; 0x73];
        p[..20].copy_from_slice(&HEADER);
        for (i, b) in p[20..].iter_mut().enumerate() {
            *b = i as u8;
        }
        p
    }

    #[test]
    fn parse() {
        let buf = packet();
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 0x73);
        assert!(p.dont_frag());
        assert!(!p.is_fragment());
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), IpProtocol::Udp);
        assert_eq!(p.checksum(), 0xb861);
        assert!(p.verify_checksum());
        assert_eq!(p.src(), Ipv4Addr::new(192, 168, 0, 1));
        assert_eq!(p.dst(), Ipv4Addr::new(192, 168, 0, 199));
        assert_eq!(p.payload().len(), 0x73 - 20);
        let r = Ipv4Repr::parse(&p).unwrap();
        assert_eq!(
            r,
            Ipv4Repr {
                src: Ipv4Addr::new(192, 168, 0, 1),
                dst: Ipv4Addr::new(192, 168, 0, 199),
                protocol: IpProtocol::Udp,
                payload_len: 0x73 - 20,
                ttl: 64,
            }
        );
    }

    #[test]
    fn emit_matches_fixture() {
        let buf = packet();
        let r = Ipv4Repr::parse(&Ipv4Packet::new_checked(&buf[..]).unwrap()).unwrap();
        let mut out = [0u8; 20];
        r.emit(&mut Ipv4Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, HEADER);
    }

    #[test]
    fn padding_is_not_payload() {
        let mut buf = [0u8; 46];
        buf[..20].copy_from_slice(&HEADER);
        buf[2..4].copy_from_slice(&28u16.to_be_bytes());
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.payload().len(), 8);
    }

    #[test]
    fn options_are_skipped() {
        let mut buf = [0u8; 32];
        buf[..20].copy_from_slice(&HEADER);
        buf[0] = 0x46; // 24-byte header
        buf[2..4].copy_from_slice(&32u16.to_be_bytes());
        buf[20..24].copy_from_slice(&[0x01, 0x01, 0x01, 0x00]); // NOPs, EOL
        buf[24..32].copy_from_slice(&[9; 8]);
        let mut p = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
        p.fill_checksum();
        assert!(p.verify_checksum());
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.payload(), &[9; 8]);
        assert_eq!(Ipv4Repr::parse(&p).unwrap().payload_len, 8);
    }

    #[test]
    fn truncated_and_malformed() {
        let buf = packet();
        for len in 0..20 {
            assert!(matches!(
                Ipv4Packet::new_checked(&buf[..len]),
                Err(WireError::Truncated { need: 20, .. })
            ));
        }
        // Buffer shorter than total length.
        assert!(matches!(
            Ipv4Packet::new_checked(&buf[..0x72]),
            Err(WireError::Truncated { need: 0x73, .. })
        ));
        let mut v6 = HEADER;
        v6[0] = 0x65;
        assert!(matches!(
            Ipv4Packet::new_checked(&v6[..]),
            Err(WireError::Malformed { .. })
        ));
        let mut short_ihl = HEADER;
        short_ihl[0] = 0x44;
        assert!(matches!(
            Ipv4Packet::new_checked(&short_ihl[..]),
            Err(WireError::Malformed { .. })
        ));
        let mut long_ihl = HEADER;
        long_ihl[0] = 0x4f; // 60-byte header in a 20-byte buffer
        long_ihl[2..4].copy_from_slice(&60u16.to_be_bytes());
        assert!(matches!(
            Ipv4Packet::new_checked(&long_ihl[..]),
            Err(WireError::Truncated { need: 60, .. })
        ));
        let mut tiny_total = HEADER;
        tiny_total[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert!(matches!(
            Ipv4Packet::new_checked(&tiny_total[..]),
            Err(WireError::Malformed { .. })
        ));
    }

    #[test]
    fn bad_checksum() {
        let mut buf = packet();
        buf[8] = 63; // TTL changed, checksum not updated
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert!(!p.verify_checksum());
        assert_eq!(
            Ipv4Repr::parse(&p).unwrap_err(),
            WireError::BadChecksum { what: "ipv4" }
        );
        let mut p = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
        p.fill_checksum();
        assert!(p.verify_checksum());
    }

    #[test]
    fn rewrite_addresses() {
        let mut buf = packet();
        let mut p = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
        p.set_src(Ipv4Addr::new(10, 0, 0, 2));
        p.set_dst(Ipv4Addr::new(10, 0, 0, 3));
        p.fill_checksum();
        assert!(p.verify_checksum());
        assert_eq!(p.src(), Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(p.dst(), Ipv4Addr::new(10, 0, 0, 3));
    }

    #[test]
    fn unknown_protocol_and_fragments() {
        let mut buf = packet();
        buf[9] = 132; // SCTP
        buf[6..8].copy_from_slice(&0x2001u16.to_be_bytes()); // MF, offset 8
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.protocol(), IpProtocol::Unknown(132));
        assert!(p.more_frags());
        assert_eq!(p.frag_offset(), 8);
        assert!(p.is_fragment());
        let mut out = buf;
        Ipv4Packet::new_unchecked(&mut out[..]).set_protocol(p.protocol());
        assert_eq!(out[9], 132);
    }

    /// A sound IPv4 packet with arbitrary fields, options and payload,
    /// sometimes padded, with its header checksum.
    fn ipv4() -> impl Strategy<Value = Vec<u8>> {
        (
            any::<[u8; 20]>(),
            5u8..=15,
            prop::collection::vec(any::<u8>(), 0..200),
            0usize..20,
        )
            .prop_map(|(hdr, ihl, payload, pad)| {
                let hl = usize::from(ihl) * 4;
                let total = hl + payload.len();
                let mut v = vec![0u8; total + pad];
                v[..20].copy_from_slice(&hdr);
                v[0] = 0x40 | ihl;
                v[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                for (i, b) in v[20..hl].iter_mut().enumerate() {
                    *b = hdr[i % 20];
                }
                v[hl..total].copy_from_slice(&payload);
                Ipv4Packet::new_unchecked(&mut v[..]).fill_checksum();
                v
            })
    }

    /// `ipv4()` damaged, with the checksum filled again half the time so
    /// damage past the checksum check is reached too.
    fn nearly_ipv4() -> impl Strategy<Value = Vec<u8>> {
        (damaged(ipv4()), any::<bool>()).prop_map(|(mut v, refill)| {
            let hl = v.first().map_or(0, |b| usize::from(b & 0x0f) * 4);
            if refill && hl >= HEADER_LEN && hl <= v.len() {
                Ipv4Packet::new_unchecked(&mut v[..]).fill_checksum();
            }
            v
        })
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn prop_ipv4_checked_view_never_panics(b in prop_oneof![bytes(), nearly_ipv4()]) {
            let Ok(p) = Ipv4Packet::new_checked(&b[..]) else { return Ok(()) };
            let _ = (p.version(), p.dscp(), p.ecn(), p.ident(), p.dont_frag());
            let _ = (p.more_frags(), p.frag_offset(), p.is_fragment(), p.ttl());
            let _ = (p.protocol(), p.checksum(), p.src(), p.dst(), p.verify_checksum());
            let total = usize::from(p.total_len());
            prop_assert!(HEADER_LEN <= p.header_len() && p.header_len() <= total);
            prop_assert!(total <= b.len());
            prop_assert_eq!(p.header().len(), p.header_len());
            prop_assert_eq!(p.payload().len(), total - p.header_len());
        }

        /// The repr keeps addresses, protocol, TTL and the payload length;
        /// it normalises the rest (DSCP/ECN 0, ident 0, DF only, no
        /// options), so a header already in that form comes back byte for
        /// byte, and any other satisfies parse(emit(parse(x))) == parse(x).
        #[test]
        fn prop_ipv4_repr_round_trips(b in nearly_ipv4()) {
            let Ok(p) = Ipv4Packet::new_checked(&b[..]) else { return Ok(()) };
            let Ok(r) = Ipv4Repr::parse(&p) else {
                prop_assert!(!p.verify_checksum());
                return Ok(());
            };
            let mut out = vec![0u8; r.buffer_len() + usize::from(r.payload_len)];
            r.emit(&mut Ipv4Packet::new_unchecked(&mut out[..]));
            let q = Ipv4Packet::new_checked(&out[..]).unwrap();
            prop_assert_eq!(Ipv4Repr::parse(&q), Ok(r));
            prop_assert_eq!(&out[8..10], &b[8..10]);
            prop_assert_eq!(&out[12..20], &b[12..20]);
            let normal = b[0] == 0x45 && b[1] == 0 && b[4..8] == [0, 0, 0x40, 0];
            if normal {
                prop_assert_eq!(&out[..20], &b[..20]);
            }
        }
    }
}
