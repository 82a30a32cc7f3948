//! Ethernet II frames, MAC addresses and 802.1Q VLAN tags.
//!
//! `EthernetFrame::new_checked` accepts a frame of at least 14 bytes, and of
//! at least 18 when it carries an 802.1Q tag, so the tag accessors never
//! panic either. `vlan_push`/`vlan_pop` edit a tag in place in a frame buffer
//! that has room at its end, without copying the frame elsewhere.

use std::fmt;
use std::str::FromStr;

use super::{enum_with_unknown, need, Result};

/// A 48-bit IEEE 802 MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// The I/G bit: group (multicast, including broadcast) address.
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    pub const fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }

    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }

    /// The U/L bit: locally administered (what a MAC pool hands out), as
    /// opposed to a vendor-assigned address.
    pub const fn is_local_admin(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// The address as a 48-bit integer, most significant octet first, for
    /// MAC pool arithmetic.
    pub const fn to_u64(self) -> u64 {
        let b = self.0;
        u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
    }

    /// Inverse of `to_u64`. The top 16 bits of `value` are ignored, so
    /// `from_u64(a.to_u64() + n)` wraps within the 48-bit space.
    pub const fn from_u64(value: u64) -> MacAddr {
        let b = value.to_be_bytes();
        MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    /// Reads six bytes at the start of `bytes`. Callers pass a slice of a
    /// checked view, so the length is known.
    fn from_slice(bytes: &[u8]) -> MacAddr {
        let mut a = [0u8; 6];
        a.copy_from_slice(&bytes[..6]);
        MacAddr(a)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(octets: [u8; 6]) -> Self {
        MacAddr(octets)
    }
}

/// A string that is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid MAC address {input:?}: expected six two-digit hex octets separated \
     by ':' or '-' (one kind), e.g. 02:15:5d:00:00:01"
)]
pub struct MacParseError {
    pub input: String,
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    /// Accepts `02:15:5d:00:00:01` and `02-15-5D-00-00-01` (Windows style),
    /// in any case. Anything else, including mixed separators, single-digit
    /// octets or the dotted Cisco form, is rejected.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let err = || MacParseError {
            input: s.to_owned(),
        };
        let b = s.as_bytes();
        if b.len() != 17 {
            return Err(err());
        }
        let sep = b[2];
        if sep != b':' && sep != b'-' {
            return Err(err());
        }
        let hex = |c: u8| -> Option<u8> {
            match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                b'A'..=b'F' => Some(c - b'A' + 10),
                _ => None,
            }
        };
        let mut out = [0u8; 6];
        for (i, octet) in out.iter_mut().enumerate() {
            let at = i * 3;
            let hi = hex(b[at]).ok_or_else(err)?;
            let lo = hex(b[at + 1]).ok_or_else(err)?;
            *octet = hi << 4 | lo;
            if i < 5 && b[at + 2] != sep {
                return Err(err());
            }
        }
        Ok(MacAddr(out))
    }
}

enum_with_unknown! {
    /// The Ethernet II type field.
    pub enum EtherType(u16) {
        Ipv4 = 0x0800,
        Arp = 0x0806,
        /// An 802.1Q tag follows the source address.
        Vlan = 0x8100,
        Ipv6 = 0x86dd,
    }
}

/// Length of an untagged Ethernet header.
pub const HEADER_LEN: usize = 14;
/// Length of one 802.1Q tag (TPID + TCI).
pub const VLAN_TAG_LEN: usize = 4;
const TPID_8021Q: [u8; 2] = 0x8100u16.to_be_bytes();

mod field {
    use std::ops::Range;

    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const PAYLOAD: usize = 14;
    // Present when ETHERTYPE is 0x8100.
    pub const TCI: Range<usize> = 14..16;
    pub const INNER_ETHERTYPE: Range<usize> = 16..18;
    pub const INNER_PAYLOAD: usize = 18;
}

/// A view of an Ethernet II frame, optionally 802.1Q tagged.
#[derive(Debug, Clone)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps a buffer without checking its length (for emitting).
    pub const fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// Wraps a received buffer; afterwards no accessor panics.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        need("ethernet", HEADER_LEN, len)?;
        if self.ethertype() == EtherType::Vlan {
            need("802.1q", HEADER_LEN + VLAN_TAG_LEN, len)?;
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    pub fn dst(&self) -> MacAddr {
        MacAddr::from_slice(&self.buffer.as_ref()[field::DST])
    }

    pub fn src(&self) -> MacAddr {
        MacAddr::from_slice(&self.buffer.as_ref()[field::SRC])
    }

    /// The outer type field (`Vlan` for a tagged frame).
    pub fn ethertype(&self) -> EtherType {
        let b = &self.buffer.as_ref()[field::ETHERTYPE];
        EtherType::from(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Everything after the 14-byte header (the tag too, if tagged).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }

    /// The 802.1Q tag control information (PCP, DEI, VID), if tagged.
    pub fn vlan_tci(&self) -> Option<u16> {
        if self.ethertype() != EtherType::Vlan {
            return None;
        }
        let b = self.buffer.as_ref().get(field::TCI)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    /// The 12-bit VLAN id, if tagged. A priority tag reads as `Some(0)`.
    pub fn vlan_id(&self) -> Option<u16> {
        self.vlan_tci().map(|tci| tci & 0x0fff)
    }

    /// Length of the header including the tag: 18 if tagged, else 14.
    pub fn header_len(&self) -> usize {
        if self.vlan_tci().is_some() {
            field::INNER_PAYLOAD
        } else {
            field::PAYLOAD
        }
    }

    /// The type of the payload behind the tag, or the outer type if untagged.
    pub fn inner_ethertype(&self) -> EtherType {
        if self.vlan_tci().is_none() {
            return self.ethertype();
        }
        let b = &self.buffer.as_ref()[field::INNER_ETHERTYPE];
        EtherType::from(u16::from_be_bytes([b[0], b[1]]))
    }

    /// The payload behind the tag, or `payload()` if untagged.
    pub fn inner_payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    pub fn set_dst(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&mac.0);
    }

    pub fn set_src(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&mac.0);
    }

    pub fn set_ethertype(&mut self, ethertype: EtherType) {
        let v = u16::from(ethertype).to_be_bytes();
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&v);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }

    pub fn inner_payload_mut(&mut self) -> &mut [u8] {
        let at = self.header_len();
        &mut self.buffer.as_mut()[at..]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for EthernetFrame<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// The untagged Ethernet header as plain values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetRepr {
    pub src: MacAddr,
    pub dst: MacAddr,
    pub ethertype: EtherType,
}

impl EthernetRepr {
    pub fn parse<T: AsRef<[u8]>>(frame: &EthernetFrame<T>) -> Result<EthernetRepr> {
        frame.check_len()?;
        Ok(EthernetRepr {
            src: frame.src(),
            dst: frame.dst(),
            ethertype: frame.ethertype(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header; panics if the frame is shorter than 14 bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut EthernetFrame<T>) {
        frame.set_dst(self.dst);
        frame.set_src(self.src);
        frame.set_ethertype(self.ethertype);
    }
}

/// Inserts an 802.1Q tag with VLAN id `vid` (PCP 0) after the source address
/// of the `len`-byte frame at the start of `buf`, shifting the rest by four
/// bytes. Returns the new length, or `None` (buffer untouched) if `buf` has no
/// room for four more bytes, `len` is not a whole Ethernet header within
/// `buf`, or `vid` does not fit in 12 bits. A frame already tagged gets a
/// second, outer tag (Q-in-Q with TPID 0x8100).
pub fn vlan_push(buf: &mut [u8], len: usize, vid: u16) -> Option<usize> {
    if len < HEADER_LEN || len > buf.len() || vid > 0x0fff {
        return None;
    }
    let new_len = len.checked_add(VLAN_TAG_LEN)?;
    if new_len > buf.len() {
        return None;
    }
    buf.copy_within(field::ETHERTYPE.start..len, field::INNER_ETHERTYPE.start);
    buf[field::ETHERTYPE].copy_from_slice(&TPID_8021Q);
    buf[field::TCI].copy_from_slice(&vid.to_be_bytes());
    Some(new_len)
}

/// Removes the outer 802.1Q tag of the `len`-byte frame at the start of
/// `buf`, shifting the rest back by four bytes. Returns the VLAN id it carried
/// and the new length, or `None` (buffer untouched) if the frame is not tagged
/// or is too short to hold a tag. The result is not padded back up to the
/// 60-byte Ethernet minimum: TAP, veth and AF_XDP do not need it.
pub fn vlan_pop(buf: &mut [u8], len: usize) -> Option<(u16, usize)> {
    if len < field::INNER_PAYLOAD || len > buf.len() || buf[field::ETHERTYPE] != TPID_8021Q {
        return None;
    }
    let vid = u16::from_be_bytes([buf[field::TCI.start], buf[field::TCI.start + 1]]) & 0x0fff;
    buf.copy_within(field::INNER_ETHERTYPE.start..len, field::ETHERTYPE.start);
    Some((vid, len - VLAN_TAG_LEN))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testing::{bytes, config, damaged};
    use crate::wire::WireError;
    use proptest::prelude::*;

    // ARP request from 02:15:5d:00:00:01, broadcast, untagged, no padding.
    static UNTAGGED: [u8; 18] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // dst
        0x02, 0x15, 0x5d, 0x00, 0x00, 0x01, // src
        0x08, 0x06, // ARP
        0xaa, 0xbb, 0xcc, 0xdd, // payload
    ];

    // The same frame tagged with VLAN 100, PCP 5.
    static TAGGED: [u8; 22] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // dst
        0x02, 0x15, 0x5d, 0x00, 0x00, 0x01, // src
        0x81, 0x00, 0xa0, 0x64, // 802.1Q, PCP 5, VID 100
        0x08, 0x06, // ARP
        0xaa, 0xbb, 0xcc, 0xdd,
    ];

    const HOST: MacAddr = MacAddr([0x02, 0x15, 0x5d, 0x00, 0x00, 0x01]);

    #[test]
    fn parse_untagged() {
        let f = EthernetFrame::new_checked(&UNTAGGED[..]).unwrap();
        assert_eq!(f.dst(), MacAddr::BROADCAST);
        assert_eq!(f.src(), HOST);
        assert_eq!(f.ethertype(), EtherType::Arp);
        assert_eq!(f.payload(), &[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(f.vlan_id(), None);
        assert_eq!(f.header_len(), 14);
        assert_eq!(f.inner_ethertype(), EtherType::Arp);
        assert_eq!(f.inner_payload(), f.payload());
    }

    #[test]
    fn parse_tagged() {
        let f = EthernetFrame::new_checked(&TAGGED[..]).unwrap();
        assert_eq!(f.ethertype(), EtherType::Vlan);
        assert_eq!(f.vlan_tci(), Some(0xa064));
        assert_eq!(f.vlan_id(), Some(100));
        assert_eq!(f.header_len(), 18);
        assert_eq!(f.inner_ethertype(), EtherType::Arp);
        assert_eq!(f.inner_payload(), &[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(f.payload().len(), 8);
    }

    #[test]
    fn truncated() {
        assert_eq!(
            EthernetFrame::new_checked(&UNTAGGED[..13]).unwrap_err(),
            WireError::Truncated {
                what: "ethernet",
                need: 14,
                have: 13
            }
        );
        // Exactly a header: empty payload, fine.
        let f = EthernetFrame::new_checked(&UNTAGGED[..14]).unwrap();
        assert!(f.payload().is_empty());
        // A tag announced but cut short.
        for len in 14..18 {
            assert!(matches!(
                EthernetFrame::new_checked(&TAGGED[..len]),
                Err(WireError::Truncated { need: 18, .. })
            ));
        }
        let f = EthernetFrame::new_checked(&TAGGED[..18]).unwrap();
        assert!(f.inner_payload().is_empty());
    }

    #[test]
    fn accessors_never_panic_after_check() {
        // Every length and a few type values: checked views never panic.
        let mut buf = [0u8; 20];
        for ty in [0x0800u16, 0x8100, 0x88a8, 0xffff] {
            buf[12..14].copy_from_slice(&ty.to_be_bytes());
            for len in 0..=buf.len() {
                if let Ok(f) = EthernetFrame::new_checked(&buf[..len]) {
                    let _ = (f.dst(), f.src(), f.ethertype(), f.payload());
                    let _ = (f.vlan_id(), f.inner_ethertype(), f.inner_payload());
                }
            }
        }
    }

    #[test]
    fn emit_and_setters() {
        let mut buf = [0u8; 18];
        let repr = EthernetRepr {
            src: HOST,
            dst: MacAddr::BROADCAST,
            ethertype: EtherType::Arp,
        };
        let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
        repr.emit(&mut f);
        f.payload_mut().copy_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(buf, UNTAGGED);
        let f = EthernetFrame::new_checked(&buf[..]).unwrap();
        assert_eq!(EthernetRepr::parse(&f).unwrap(), repr);

        let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
        f.set_src(MacAddr([2, 0, 0, 0, 0, 9]));
        f.set_dst(HOST);
        assert_eq!(&buf[..12], &[2, 0x15, 0x5d, 0, 0, 1, 2, 0, 0, 0, 0, 9]);
    }

    #[test]
    fn ethertype_round_trip() {
        assert_eq!(EtherType::from(0x0800), EtherType::Ipv4);
        assert_eq!(EtherType::from(0x0806), EtherType::Arp);
        assert_eq!(EtherType::from(0x86dd), EtherType::Ipv6);
        assert_eq!(EtherType::from(0x8100), EtherType::Vlan);
        assert_eq!(EtherType::from(0x88a8), EtherType::Unknown(0x88a8));
        for v in [0u16, 0x0800, 0x0806, 0x8100, 0x86dd, 0x88cc, 0xffff] {
            assert_eq!(u16::from(EtherType::from(v)), v);
        }
        // An unknown type is written back unchanged.
        let mut buf = UNTAGGED;
        buf[12..14].copy_from_slice(&[0x88, 0xcc]);
        let ty = EthernetFrame::new_checked(&buf[..]).unwrap().ethertype();
        let mut out = [0u8; 14];
        EthernetFrame::new_unchecked(&mut out[..]).set_ethertype(ty);
        assert_eq!(&out[12..14], &[0x88, 0xcc]);
    }

    #[test]
    fn vlan_push_then_pop() {
        let mut buf = [0u8; 64];
        buf[..18].copy_from_slice(&UNTAGGED);
        let len = vlan_push(&mut buf, 18, 100).unwrap();
        assert_eq!(len, 22);
        {
            let f = EthernetFrame::new_checked(&buf[..len]).unwrap();
            assert_eq!(f.vlan_id(), Some(100));
            assert_eq!(f.vlan_tci(), Some(100)); // PCP 0
            assert_eq!(f.inner_ethertype(), EtherType::Arp);
            assert_eq!(f.inner_payload(), &[0xaa, 0xbb, 0xcc, 0xdd]);
            assert_eq!(f.src(), HOST);
        }
        assert_eq!(vlan_pop(&mut buf, len), Some((100, 18)));
        assert_eq!(&buf[..18], &UNTAGGED);
    }

    #[test]
    fn vlan_pop_fixture_drops_pcp() {
        let mut buf = TAGGED;
        assert_eq!(vlan_pop(&mut buf, 22), Some((100, 18)));
        assert_eq!(&buf[..18], &UNTAGGED);
    }

    #[test]
    fn vlan_push_without_room_or_bad_input() {
        let mut buf = UNTAGGED;
        assert_eq!(vlan_push(&mut buf, 18, 100), None);
        assert_eq!(buf, UNTAGGED);
        let mut big = [0u8; 64];
        big[..18].copy_from_slice(&UNTAGGED);
        assert_eq!(vlan_push(&mut big, 18, 4096), None);
        assert_eq!(vlan_push(&mut big, 13, 1), None);
        assert_eq!(vlan_push(&mut big, 65, 1), None);
        // Exactly enough room.
        assert_eq!(vlan_push(&mut big[..22], 18, 4095), Some(22));
    }

    #[test]
    fn vlan_pop_untagged_or_short() {
        let mut buf = UNTAGGED;
        assert_eq!(vlan_pop(&mut buf, 18), None);
        assert_eq!(buf, UNTAGGED);
        let mut t = TAGGED;
        assert_eq!(vlan_pop(&mut t, 17), None);
        assert_eq!(vlan_pop(&mut t, 23), None);
        assert_eq!(t, TAGGED);
        // A bare tagged header with no payload still pops.
        assert_eq!(vlan_pop(&mut t, 18), Some((100, 14)));
        assert_eq!(&t[12..14], &[0x08, 0x06]);
    }

    #[test]
    fn mac_display_and_parse() {
        assert_eq!(HOST.to_string(), "02:15:5d:00:00:01");
        assert_eq!(format!("{HOST:?}"), "MacAddr(02:15:5d:00:00:01)");
        assert_eq!("02:15:5d:00:00:01".parse::<MacAddr>().unwrap(), HOST);
        assert_eq!("02-15-5D-00-00-01".parse::<MacAddr>().unwrap(), HOST);
        assert_eq!(
            "FF:ff:Ff:fF:ff:ff".parse::<MacAddr>().unwrap(),
            MacAddr::BROADCAST
        );
        for bad in [
            "",
            "02:15:5d:00:00",
            "02:15:5d:00:00:01:",
            "02:15:5d:00:00:0g",
            "02:15-5d:00:00:01",
            "02.15.5d.00.00.01",
            "0215.5d00.0001",
            "2:15:5d:00:00:01x",
            " 02:15:5d:00:00:1",
            "02:15:5d:00:00:+1",
            "02::15:5d:00:00:1",
            "021:5:5d:00:00:01",
        ] {
            let e = bad.parse::<MacAddr>().unwrap_err();
            assert_eq!(e.input, bad);
            assert!(e.to_string().contains("expected six two-digit hex octets"));
        }
    }

    #[test]
    fn mac_predicates() {
        assert!(MacAddr::BROADCAST.is_broadcast());
        assert!(MacAddr::BROADCAST.is_multicast());
        assert!(!HOST.is_multicast());
        assert!(HOST.is_unicast());
        assert!(HOST.is_local_admin());
        assert!(!MacAddr([0x00, 0x15, 0x5d, 0, 0, 1]).is_local_admin());
        assert!(MacAddr([0x33, 0x33, 0, 0, 0, 1]).is_multicast());
        assert!(MacAddr([0x01, 0x00, 0x5e, 0, 0, 1]).is_multicast());
        assert!(MacAddr::ZERO.is_zero());
        assert!(!HOST.is_zero());
        assert!(!MacAddr::ZERO.is_multicast());
    }

    #[test]
    fn mac_u64_arithmetic() {
        assert_eq!(HOST.to_u64(), 0x0215_5d00_0001);
        assert_eq!(
            MacAddr::from_u64(HOST.to_u64() + 0xff),
            MacAddr([2, 0x15, 0x5d, 0, 1, 0])
        );
        assert_eq!(
            MacAddr::from_u64(MacAddr::BROADCAST.to_u64()),
            MacAddr::BROADCAST
        );
        // Bits above 48 are ignored: the space wraps.
        assert_eq!(
            MacAddr::from_u64(MacAddr::BROADCAST.to_u64() + 1),
            MacAddr::ZERO
        );
        assert!(HOST < MacAddr::from_u64(HOST.to_u64() + 1));
    }

    /// A frame with arbitrary addresses and payload whose type is one the
    /// switch knows (often 802.1Q, so the tag paths are taken) or any other.
    fn frame() -> impl Strategy<Value = Vec<u8>> {
        (
            any::<[u8; 12]>(),
            prop_oneof![
                Just(0x8100u16),
                Just(0x0800),
                Just(0x0806),
                Just(0x86dd),
                any::<u16>()
            ],
            prop::collection::vec(any::<u8>(), 0..100),
        )
            .prop_map(|(macs, ty, payload)| {
                let mut v = macs.to_vec();
                v.extend_from_slice(&ty.to_be_bytes());
                v.extend_from_slice(&payload);
                v
            })
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn prop_ethernet_checked_view_never_panics(
            b in prop_oneof![bytes(), damaged(frame())],
        ) {
            let Ok(f) = EthernetFrame::new_checked(&b[..]) else {
                prop_assert!(b.len() < HEADER_LEN + VLAN_TAG_LEN);
                return Ok(());
            };
            let _ = (f.dst(), f.src(), f.ethertype(), f.vlan_id(), f.inner_ethertype());
            prop_assert_eq!(f.payload().len() + HEADER_LEN, b.len());
            prop_assert_eq!(f.inner_payload().len() + f.header_len(), b.len());
            prop_assert_eq!(f.vlan_tci().is_some(), f.ethertype() == EtherType::Vlan);
        }

        /// The repr holds every byte of the 14-byte header.
        #[test]
        fn prop_ethernet_repr_round_trips(b in damaged(frame())) {
            let Ok(f) = EthernetFrame::new_checked(&b[..]) else { return Ok(()) };
            let r = EthernetRepr::parse(&f).unwrap();
            let mut out = vec![0u8; r.buffer_len()];
            r.emit(&mut EthernetFrame::new_unchecked(&mut out[..]));
            prop_assert_eq!(&out[..], &b[..HEADER_LEN]);
        }

        /// Push and pop never panic, leave the buffer untouched when they
        /// refuse, and a pushed tag pops back to the frame it came from.
        #[test]
        fn prop_vlan_push_then_pop_is_identity(
            b in prop_oneof![bytes(), damaged(frame())],
            extra in 0usize..8,
            len in any::<prop::sample::Index>(),
            vid in prop_oneof![0u16..0x1000, any::<u16>()],
        ) {
            let mut buf = b.clone();
            buf.resize(b.len() + extra, 0xa5);
            // Lengths past the buffer too, which both must refuse.
            let len = len.index(buf.len() + 8);
            let before = buf.clone();
            match vlan_push(&mut buf, len, vid) {
                None => {
                    prop_assert_eq!(&buf, &before);
                    prop_assert!(len < HEADER_LEN || len + VLAN_TAG_LEN > buf.len() || vid > 0x0fff);
                }
                Some(n) => {
                    prop_assert_eq!(n, len + VLAN_TAG_LEN);
                    let f = EthernetFrame::new_checked(&buf[..n]).unwrap();
                    prop_assert_eq!(f.vlan_id(), Some(vid));
                    prop_assert_eq!(f.inner_payload(), &before[HEADER_LEN..len]);
                    prop_assert_eq!(vlan_pop(&mut buf, n), Some((vid, len)));
                    prop_assert_eq!(&buf[..len], &before[..len]);
                }
            }
            let mut buf = before.clone();
            match vlan_pop(&mut buf, len) {
                None => prop_assert_eq!(&buf, &before),
                Some((vid, n)) => {
                    prop_assert_eq!(n + VLAN_TAG_LEN, len);
                    prop_assert_eq!(vid, u16::from_be_bytes([before[14], before[15]]) & 0x0fff);
                    prop_assert_eq!(&buf[..12], &before[..12]);
                    prop_assert_eq!(&buf[12..n], &before[16..len]);
                }
            }
        }

        /// Any string either is a MAC address that prints back as itself
        /// (lower case, colons) or is refused; printing always parses back.
        #[test]
        fn prop_mac_parse_and_display(s in prop_oneof![
            ".{0,20}",
            "[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}",
            "[0-9a-fA-F:-]{15,19}",
        ], mac in any::<[u8; 6]>()) {
            if let Ok(m) = s.parse::<MacAddr>() {
                prop_assert_eq!(m.to_string(), s.to_ascii_lowercase().replace('-', ":"));
            }
            let m = MacAddr(mac);
            prop_assert_eq!(m.to_string().parse::<MacAddr>(), Ok(m));
            prop_assert_eq!(MacAddr::from_u64(m.to_u64()), m);
        }
    }
}
