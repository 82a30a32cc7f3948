//! ARP (RFC 826) for Ethernet and IPv4, the only pairing a switch meets.
//!
//! `ArpPacket::new_checked` rejects any other hardware/protocol pairing as
//! `Unsupported` before checking the length, so a checked view always has
//! the 28-byte Ethernet/IPv4 layout and its accessors never panic.

use std::net::Ipv4Addr;

use super::ethernet::MacAddr;
use super::{enum_with_unknown, need, Result, WireError};

enum_with_unknown! {
    /// The ARP operation field.
    pub enum ArpOperation(u16) {
        Request = 1,
        Reply = 2,
    }
}

mod field {
    use std::ops::Range;

    pub const HTYPE: Range<usize> = 0..2;
    pub const PTYPE: Range<usize> = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Range<usize> = 6..8;
    // Offsets below hold for hlen 6, plen 4 only (checked by new_checked).
    pub const SHA: Range<usize> = 8..14;
    pub const SPA: Range<usize> = 14..18;
    pub const THA: Range<usize> = 18..24;
    pub const TPA: Range<usize> = 24..28;
}

/// Fixed header (up to and including the operation).
const FIXED_LEN: usize = 8;
/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = 28;
const HTYPE_ETHERNET: u16 = 1;
const PTYPE_IPV4: u16 = 0x0800;

/// A view of an Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        ArpPacket { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check()?;
        Ok(p)
    }

    /// Checks the pairing is Ethernet/IPv4 and the buffer holds it all.
    pub fn check(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        need("arp", FIXED_LEN, len)?;
        if self.hardware_type() != HTYPE_ETHERNET || self.hardware_len() != 6 {
            return Err(WireError::Unsupported {
                what: "arp",
                reason: "hardware type is not Ethernet",
            });
        }
        if self.protocol_type() != PTYPE_IPV4 || self.protocol_len() != 4 {
            return Err(WireError::Unsupported {
                what: "arp",
                reason: "protocol type is not IPv4",
            });
        }
        need("arp", PACKET_LEN, len)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn u16_at(&self, r: std::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[r];
        u16::from_be_bytes([b[0], b[1]])
    }

    fn ipv4_at(&self, r: std::ops::Range<usize>) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[r];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    fn mac_at(&self, r: std::ops::Range<usize>) -> MacAddr {
        let mut m = [0u8; 6];
        m.copy_from_slice(&self.buffer.as_ref()[r]);
        MacAddr(m)
    }

    pub fn hardware_type(&self) -> u16 {
        self.u16_at(field::HTYPE)
    }

    pub fn protocol_type(&self) -> u16 {
        self.u16_at(field::PTYPE)
    }

    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }

    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PLEN]
    }

    pub fn operation(&self) -> ArpOperation {
        ArpOperation::from(self.u16_at(field::OPER))
    }

    pub fn sender_hw_addr(&self) -> MacAddr {
        self.mac_at(field::SHA)
    }

    pub fn sender_proto_addr(&self) -> Ipv4Addr {
        self.ipv4_at(field::SPA)
    }

    pub fn target_hw_addr(&self) -> MacAddr {
        self.mac_at(field::THA)
    }

    pub fn target_proto_addr(&self) -> Ipv4Addr {
        self.ipv4_at(field::TPA)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    /// Writes hardware/protocol type and lengths for Ethernet/IPv4.
    pub fn set_ethernet_ipv4(&mut self) {
        let b = self.buffer.as_mut();
        b[field::HTYPE].copy_from_slice(&HTYPE_ETHERNET.to_be_bytes());
        b[field::PTYPE].copy_from_slice(&PTYPE_IPV4.to_be_bytes());
        b[field::HLEN] = 6;
        b[field::PLEN] = 4;
    }

    pub fn set_operation(&mut self, op: ArpOperation) {
        self.buffer.as_mut()[field::OPER].copy_from_slice(&u16::from(op).to_be_bytes());
    }

    /// Used by l2bridge egress to put the uplink MAC in place of the
    /// endpoint's.
    pub fn set_sender_hw_addr(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::SHA].copy_from_slice(&mac.0);
    }

    pub fn set_sender_proto_addr(&mut self, ip: Ipv4Addr) {
        self.buffer.as_mut()[field::SPA].copy_from_slice(&ip.octets());
    }

    pub fn set_target_hw_addr(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::THA].copy_from_slice(&mac.0);
    }

    pub fn set_target_proto_addr(&mut self, ip: Ipv4Addr) {
        self.buffer.as_mut()[field::TPA].copy_from_slice(&ip.octets());
    }
}

/// An Ethernet/IPv4 ARP packet as plain values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRepr {
    pub operation: ArpOperation,
    pub sender_hw: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_hw: MacAddr,
    pub target_ip: Ipv4Addr,
}

impl ArpRepr {
    pub fn parse<T: AsRef<[u8]>>(packet: &ArpPacket<T>) -> Result<ArpRepr> {
        packet.check()?;
        Ok(ArpRepr {
            operation: packet.operation(),
            sender_hw: packet.sender_hw_addr(),
            sender_ip: packet.sender_proto_addr(),
            target_hw: packet.target_hw_addr(),
            target_ip: packet.target_proto_addr(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        PACKET_LEN
    }

    /// Writes the whole packet; panics if the buffer is under 28 bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut ArpPacket<T>) {
        packet.set_ethernet_ipv4();
        packet.set_operation(self.operation);
        packet.set_sender_hw_addr(self.sender_hw);
        packet.set_sender_proto_addr(self.sender_ip);
        packet.set_target_hw_addr(self.target_hw);
        packet.set_target_proto_addr(self.target_ip);
    }

    /// The reply that says `target_ip` is at `hw`, when `self` is a request
    /// (`None` otherwise). The reply goes to the requester: send it in a
    /// frame to `sender_hw` from `hw`.
    pub fn reply(&self, hw: MacAddr) -> Option<ArpRepr> {
        if self.operation != ArpOperation::Request {
            return None;
        }
        Some(ArpRepr {
            operation: ArpOperation::Reply,
            sender_hw: hw,
            sender_ip: self.target_ip,
            target_hw: self.sender_hw,
            target_ip: self.sender_ip,
        })
    }

    /// Gratuitous ARP or an ARP probe/announcement: sender and target
    /// address are the same (RFC 5227).
    pub fn is_gratuitous(&self) -> bool {
        self.sender_ip == self.target_ip
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ethernet::{EtherType, EthernetFrame, EthernetRepr};
    use crate::wire::testing::{bytes, config, damaged};
    use proptest::prelude::*;

    // Who has 192.168.1.1? Tell 192.168.1.10 (02:15:5d:00:00:01).
    static REQUEST: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // eth/ipv4, request
        0x02, 0x15, 0x5d, 0x00, 0x00, 0x01, // sha
        0xc0, 0xa8, 0x01, 0x0a, // spa
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // tha
        0xc0, 0xa8, 0x01, 0x01, // tpa
    ];

    // 192.168.1.1 is at 02:15:5d:00:00:fe.
    static REPLY: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02, // eth/ipv4, reply
        0x02, 0x15, 0x5d, 0x00, 0x00, 0xfe, // sha
        0xc0, 0xa8, 0x01, 0x01, // spa
        0x02, 0x15, 0x5d, 0x00, 0x00, 0x01, // tha
        0xc0, 0xa8, 0x01, 0x0a, // tpa
    ];

    const ENDPOINT: MacAddr = MacAddr([0x02, 0x15, 0x5d, 0x00, 0x00, 0x01]);
    const GATEWAY: MacAddr = MacAddr([0x02, 0x15, 0x5d, 0x00, 0x00, 0xfe]);

    #[test]
    fn parse_request() {
        let p = ArpPacket::new_checked(&REQUEST[..]).unwrap();
        assert_eq!(p.operation(), ArpOperation::Request);
        assert_eq!(p.sender_hw_addr(), ENDPOINT);
        assert_eq!(p.sender_proto_addr(), Ipv4Addr::new(192, 168, 1, 10));
        assert_eq!(p.target_hw_addr(), MacAddr::ZERO);
        assert_eq!(p.target_proto_addr(), Ipv4Addr::new(192, 168, 1, 1));
        let r = ArpRepr::parse(&p).unwrap();
        assert!(!r.is_gratuitous());
    }

    #[test]
    fn build_reply() {
        let req = ArpRepr::parse(&ArpPacket::new_checked(&REQUEST[..]).unwrap()).unwrap();
        let reply = req.reply(GATEWAY).unwrap();
        let mut buf = [0u8; 28];
        reply.emit(&mut ArpPacket::new_unchecked(&mut buf[..]));
        assert_eq!(buf, REPLY);
        assert_eq!(reply.reply(GATEWAY), None);
        let back = ArpRepr::parse(&ArpPacket::new_checked(&buf[..]).unwrap()).unwrap();
        assert_eq!(back, reply);
    }

    #[test]
    fn reply_in_a_frame() {
        // How the switch answers ARP for an endpoint: Ethernet + ARP.
        let req = ArpRepr::parse(&ArpPacket::new_checked(&REQUEST[..]).unwrap()).unwrap();
        let reply = req.reply(GATEWAY).unwrap();
        let eth = EthernetRepr {
            src: GATEWAY,
            dst: req.sender_hw,
            ethertype: EtherType::Arp,
        };
        let mut buf = [0u8; 64];
        let len = eth.buffer_len() + reply.buffer_len();
        let mut frame = EthernetFrame::new_unchecked(&mut buf[..len]);
        eth.emit(&mut frame);
        reply.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
        assert_eq!(&buf[14..42], &REPLY);
        assert_eq!(&buf[..6], &ENDPOINT.0);
    }

    #[test]
    fn setters_rewrite_sender() {
        let mut buf = REQUEST;
        let mut p = ArpPacket::new_checked(&mut buf[..]).unwrap();
        p.set_sender_hw_addr(GATEWAY);
        p.set_target_proto_addr(Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(&buf[8..14], &GATEWAY.0);
        assert_eq!(&buf[24..28], &[10, 0, 0, 1]);
        assert_eq!(&buf[14..24], &REQUEST[14..24]);
    }

    #[test]
    fn truncated() {
        for len in 0..8 {
            assert!(matches!(
                ArpPacket::new_checked(&REQUEST[..len]),
                Err(WireError::Truncated { need: 8, .. })
            ));
        }
        for len in 8..28 {
            assert!(matches!(
                ArpPacket::new_checked(&REQUEST[..len]),
                Err(WireError::Truncated { need: 28, .. })
            ));
        }
        // Ethernet padding after the packet is fine.
        let mut padded = [0u8; 46];
        padded[..28].copy_from_slice(&REQUEST);
        assert!(ArpPacket::new_checked(&padded[..]).is_ok());
    }

    #[test]
    fn other_pairings_unsupported() {
        let mut buf = REQUEST;
        buf[1] = 6; // IEEE 802
        assert!(matches!(
            ArpPacket::new_checked(&buf[..]),
            Err(WireError::Unsupported { .. })
        ));
        let mut buf = REQUEST;
        buf[2..4].copy_from_slice(&[0x86, 0xdd]);
        assert!(matches!(
            ArpPacket::new_checked(&buf[..]),
            Err(WireError::Unsupported { .. })
        ));
        let mut buf = REQUEST;
        buf[5] = 16;
        assert!(matches!(
            ArpPacket::new_checked(&buf[..]),
            Err(WireError::Unsupported { .. })
        ));
        // Unsupported wins over truncated: a 10-byte InARP-ish stub says why.
        let mut short = [0u8; 10];
        short[..10].copy_from_slice(&buf[..10]);
        assert!(matches!(
            ArpPacket::new_checked(&short[..]),
            Err(WireError::Unsupported { .. })
        ));
    }

    #[test]
    fn unknown_operation_round_trips() {
        let mut buf = REQUEST;
        buf[6..8].copy_from_slice(&[0x00, 0x08]); // InARP request
        let r = ArpRepr::parse(&ArpPacket::new_checked(&buf[..]).unwrap()).unwrap();
        assert_eq!(r.operation, ArpOperation::Unknown(8));
        let mut out = [0u8; 28];
        r.emit(&mut ArpPacket::new_unchecked(&mut out[..]));
        assert_eq!(out, buf);
        assert_eq!(r.reply(GATEWAY), None);
    }

    #[test]
    fn gratuitous() {
        let mut buf = REQUEST;
        buf[24..28].copy_from_slice(&[0xc0, 0xa8, 0x01, 0x0a]);
        let r = ArpRepr::parse(&ArpPacket::new_checked(&buf[..]).unwrap()).unwrap();
        assert!(r.is_gratuitous());
    }

    /// An Ethernet/IPv4 ARP packet with arbitrary operation and addresses,
    /// sometimes padded as on the wire.
    fn arp() -> impl Strategy<Value = Vec<u8>> {
        (any::<[u8; 22]>(), 0usize..20).prop_map(|(rest, pad)| {
            let mut v = vec![0x00, 0x01, 0x08, 0x00, 0x06, 0x04];
            v.extend_from_slice(&rest);
            v.resize(PACKET_LEN + pad, 0);
            v
        })
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn prop_arp_checked_view_never_panics(b in prop_oneof![bytes(), damaged(arp())]) {
            if let Ok(p) = ArpPacket::new_checked(&b[..]) {
                let _ = (p.operation(), p.sender_hw_addr(), p.sender_proto_addr());
                let _ = (p.target_hw_addr(), p.target_proto_addr());
                prop_assert!(b.len() >= PACKET_LEN);
                prop_assert_eq!((p.hardware_len(), p.protocol_len()), (6, 4));
            }
        }

        /// A checked view has the one layout the repr writes, so all 28
        /// bytes come back; a reply swaps the addresses and answers once.
        #[test]
        fn prop_arp_repr_round_trips(b in damaged(arp()), hw in any::<[u8; 6]>()) {
            let Ok(p) = ArpPacket::new_checked(&b[..]) else { return Ok(()) };
            let r = ArpRepr::parse(&p).unwrap();
            let mut out = vec![0u8; r.buffer_len()];
            r.emit(&mut ArpPacket::new_unchecked(&mut out[..]));
            prop_assert_eq!(&out[..], &b[..PACKET_LEN]);
            if let Some(reply) = r.reply(MacAddr(hw)) {
                prop_assert_eq!(reply.target_ip, r.sender_ip);
                prop_assert_eq!(reply.sender_ip, r.target_ip);
                prop_assert_eq!(reply.reply(MacAddr(hw)), None);
            }
        }
    }
}
