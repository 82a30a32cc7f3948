//! What the pipeline decided for a frame: a [`Verdict`], and the one
//! composed [`HeaderTransform`] it carries.
//!
//! The verdict is the unit that is cached, traced, counted and (in the
//! fast-path issue) offloaded to the kernel, so both types are plain data:
//! `Copy`, no pointers, and the transformation is `#[repr(C)]` with a fixed
//! size so an eBPF map can hold it unchanged. [`apply`] is the one place a
//! transformation touches a frame.

use super::{NetId, PortId};
use crate::datapath::DropReason;
use crate::port::{Packet, VirtioNetHdr};
use crate::wire::{vlan_pop, vlan_push, ArpPacket, EtherType, EthernetFrame, MacAddr};

/// A composed header transformation. Applied in this order: pop the outer
/// VLAN tag, set the MACs, rewrite the MACs the frame announces, translate
/// addresses and ports (NAT, [`super::translate`]), push a tag.
///
/// Layout (64 bytes, mirrored in C by the fast path): `flags` u16 @0,
/// `vlan` u16 @2, `src_mac` @4, `dst_mac` @10, `src_ip` @16, `dst_ip` @32
/// (IPv4-mapped), `src_port` u16 @48, `dst_port` u16 @50 (host order; an
/// ICMP echo identifier is a source port), `_reserved` @52..64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct HeaderTransform {
    /// `HeaderTransform::SET_*`, `PUSH_VLAN`, ... bits.
    pub flags: u16,
    /// The VLAN id `PUSH_VLAN` tags with.
    pub vlan: u16,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src_ip: [u8; 16],
    pub dst_ip: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    /// Zero; room for the fast path's needs without resizing its maps.
    pub _reserved: [u8; 12],
}

const _: () = assert!(std::mem::size_of::<HeaderTransform>() == 64);
// The same offsets as `struct header_transform` in xdp-prog/flow.h.
const _: () = {
    use std::mem::offset_of;
    assert!(offset_of!(HeaderTransform, src_mac) == 4);
    assert!(offset_of!(HeaderTransform, dst_mac) == 10);
    assert!(offset_of!(HeaderTransform, src_ip) == 16);
    assert!(offset_of!(HeaderTransform, dst_ip) == 32);
    assert!(offset_of!(HeaderTransform, src_port) == 48);
    assert!(offset_of!(HeaderTransform, dst_port) == 50);
};

impl HeaderTransform {
    /// The source MAC becomes `src_mac`.
    pub const SET_SRC_MAC: u16 = 1 << 0;
    /// The destination MAC becomes `dst_mac`.
    pub const SET_DST_MAC: u16 = 1 << 1;
    /// Tag with `vlan` (802.1Q); a checksum still to fill and the headers
    /// a super-frame's segments repeat move with the payload.
    pub const PUSH_VLAN: u16 = 1 << 2;
    /// Remove the outer 802.1Q tag, if any.
    pub const POP_VLAN: u16 = 1 << 3;
    /// The MACs the frame announces inside it (ARP sender, NDP link-layer
    /// options, checksum updated) become `src_mac`: l2bridge egress.
    pub const ANNOUNCE_SRC_MAC: u16 = 1 << 4;
    /// The ARP target hardware address becomes `dst_mac`: l2bridge ingress
    /// of an ARP reply to an endpoint.
    pub const ARP_TARGET_DST_MAC: u16 = 1 << 5;
    /// The IPv4 source address becomes `src_ip` (checksums updated).
    pub const SET_SRC_IP: u16 = 1 << 6;
    pub const SET_DST_IP: u16 = 1 << 7;
    /// The TCP/UDP source port (ICMP echo identifier) becomes `src_port`.
    pub const SET_SRC_PORT: u16 = 1 << 8;
    pub const SET_DST_PORT: u16 = 1 << 9;
    /// The IPv4 TTL goes down by one (the switch routes: nat).
    pub const DEC_TTL: u16 = 1 << 10;

    /// Leaves the frame as it is.
    pub const NONE: HeaderTransform = HeaderTransform {
        flags: 0,
        vlan: 0,
        src_mac: [0; 6],
        dst_mac: [0; 6],
        src_ip: [0; 16],
        dst_ip: [0; 16],
        src_port: 0,
        dst_port: 0,
        _reserved: [0; 12],
    };

    pub fn is_none(&self) -> bool {
        self.flags == 0
    }

    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }

    pub fn set_dst(mut self, mac: MacAddr) -> Self {
        self.flags |= Self::SET_DST_MAC;
        self.dst_mac = mac.0;
        self
    }

    pub fn set_src(mut self, mac: MacAddr) -> Self {
        self.flags |= Self::SET_SRC_MAC;
        self.src_mac = mac.0;
        self
    }

    pub fn push_vlan(mut self, vid: u16) -> Self {
        self.flags |= Self::PUSH_VLAN;
        self.vlan = vid;
        self
    }

    /// The destination MAC after the transformation, given the one before.
    pub fn dst_after(&self, dst: MacAddr) -> MacAddr {
        if self.has(Self::SET_DST_MAC) {
            MacAddr(self.dst_mac)
        } else {
            dst
        }
    }

    /// `self`, then `next`: one transformation doing both. Where both set
    /// a field, `next` wins; a pop after a push cancels it.
    pub fn then(&self, next: &HeaderTransform) -> HeaderTransform {
        let mut out = *self;
        if self.has(Self::PUSH_VLAN) && next.has(Self::POP_VLAN) {
            out.flags &= !Self::PUSH_VLAN;
            out.flags |= next.flags & !Self::POP_VLAN;
        } else {
            out.flags |= next.flags;
        }
        if next.has(Self::SET_SRC_MAC | Self::ANNOUNCE_SRC_MAC) {
            out.src_mac = next.src_mac;
        }
        if next.has(Self::SET_DST_MAC | Self::ARP_TARGET_DST_MAC) {
            out.dst_mac = next.dst_mac;
        }
        if next.has(Self::PUSH_VLAN) {
            out.vlan = next.vlan;
        }
        if next.has(Self::SET_SRC_IP) {
            out.src_ip = next.src_ip;
        }
        if next.has(Self::SET_DST_IP) {
            out.dst_ip = next.dst_ip;
        }
        if next.has(Self::SET_SRC_PORT) {
            out.src_port = next.src_port;
        }
        if next.has(Self::SET_DST_PORT) {
            out.dst_port = next.dst_port;
        }
        out
    }

    /// Whether the transformation translates addresses or ports.
    pub fn translates(&self) -> bool {
        self.has(
            Self::SET_SRC_IP
                | Self::SET_DST_IP
                | Self::SET_SRC_PORT
                | Self::SET_DST_PORT
                | Self::DEC_TTL,
        )
    }

    /// The part of the transformation that keeps the frame's length (the
    /// MACs), applied to `frame` in place.
    pub fn rewrite(&self, frame: &mut [u8]) {
        let macs = Self::SET_SRC_MAC
            | Self::SET_DST_MAC
            | Self::ANNOUNCE_SRC_MAC
            | Self::ARP_TARGET_DST_MAC;
        if self.flags & macs == 0 {
            return;
        }
        let Ok(mut eth) = EthernetFrame::new_checked(&mut frame[..]) else {
            return;
        };
        if self.has(Self::SET_DST_MAC) {
            eth.set_dst(MacAddr(self.dst_mac));
        }
        if self.has(Self::ANNOUNCE_SRC_MAC) {
            // Sets the source MAC as well: the frame and what it announces
            // name the same address.
            super::l2bridge::egress(frame, MacAddr(self.src_mac));
        } else if self.has(Self::SET_SRC_MAC) {
            eth.set_src(MacAddr(self.src_mac));
        }
        if self.has(Self::ARP_TARGET_DST_MAC) {
            let Ok(mut eth) = EthernetFrame::new_checked(&mut frame[..]) else {
                return;
            };
            if eth.ethertype() == EtherType::Arp {
                if let Ok(mut arp) = ArpPacket::new_checked(eth.payload_mut()) {
                    arp.set_target_hw_addr(MacAddr(self.dst_mac));
                }
            }
        }
    }
}

impl Default for HeaderTransform {
    fn default() -> Self {
        HeaderTransform::NONE
    }
}

/// A VLAN tag did not fit in the packet's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoRoom;

/// Applies `xform` to `pkt` in place, offload metadata included.
pub fn apply(xform: &HeaderTransform, pkt: &mut Packet) -> Result<(), NoRoom> {
    if xform.is_none() {
        return Ok(());
    }
    if xform.has(HeaderTransform::POP_VLAN) {
        pop_vlan(pkt);
    }
    xform.rewrite(pkt.frame_mut());
    if xform.translates() {
        let partial = pkt.vnet.flags & VirtioNetHdr::F_NEEDS_CSUM != 0;
        if let Ok(eth) = EthernetFrame::new_checked(pkt.frame()) {
            let l3 = eth.header_len();
            super::translate::translate(pkt.frame_mut(), l3, partial, xform);
        }
    }
    if xform.has(HeaderTransform::PUSH_VLAN) {
        push_vlan(pkt, xform.vlan)?;
    }
    Ok(())
}

/// Removes the outer tag; returns the VLAN id it carried. A checksum still
/// to fill moved with the payload.
pub fn pop_vlan(pkt: &mut Packet) -> Option<u16> {
    let len = pkt.frame().len();
    let (vid, new_len) = vlan_pop(pkt.buffer_mut(), len)?;
    pkt.set_len(new_len);
    if pkt.vnet.flags & VirtioNetHdr::F_NEEDS_CSUM != 0 {
        pkt.vnet.csum_start = pkt.vnet.csum_start.saturating_sub(4);
    }
    Some(vid)
}

fn push_vlan(pkt: &mut Packet, vid: u16) -> Result<(), NoRoom> {
    let len = pkt.frame().len();
    let new_len = vlan_push(pkt.buffer_mut(), len, vid).ok_or(NoRoom)?;
    pkt.set_len(new_len);
    // The checksum still to fill, and the headers a super-frame's
    // segments repeat, moved with the payload.
    if pkt.vnet.flags & VirtioNetHdr::F_NEEDS_CSUM != 0 {
        pkt.vnet.csum_start += 4;
    }
    if pkt.vnet.is_gso() && pkt.vnet.hdr_len != 0 {
        pkt.vnet.hdr_len = pkt.vnet.hdr_len.saturating_add(4);
    }
    Ok(())
}

/// Where a frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// To one port, transformed by `xform` (the ingress and the out-port's
    /// egress transformation, composed).
    Forward {
        out: PortId,
        xform: HeaderTransform,
    },
    /// To every port of `net` but `except` (and, with `local_only`, but its
    /// uplinks). `xform` is common to every copy; each out-port's own
    /// egress transformation ([`super::Pipeline::flood_targets`]) comes on
    /// top.
    Flood {
        net: NetId,
        except: PortId,
        local_only: bool,
        xform: HeaderTransform,
    },
    /// The switch answers itself: the frame in [`super::Pipeline::reply`]
    /// goes out of `out` (with its egress transformation), the received
    /// frame nowhere.
    Reply {
        out: PortId,
    },
    Drop(DropReason),
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const B: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);

    fn frame() -> Packet {
        let mut p = Packet::new();
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&A.0);
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0x45; 20]);
        p.fill(&f);
        p
    }

    #[test]
    fn none_leaves_the_frame_alone() {
        let mut p = frame();
        let before = p.frame().to_vec();
        apply(&HeaderTransform::NONE, &mut p).unwrap();
        assert_eq!(p.frame(), &before[..]);
    }

    #[test]
    fn macs_and_tag_in_order() {
        let mut p = frame();
        p.vnet.flags = VirtioNetHdr::F_NEEDS_CSUM;
        p.vnet.csum_start = 34;
        let x = HeaderTransform::NONE.set_dst(B).set_src(B).push_vlan(7);
        apply(&x, &mut p).unwrap();
        let f = p.frame();
        assert_eq!(&f[..12], &[B.0, B.0].concat()[..]);
        assert_eq!(&f[12..16], &[0x81, 0x00, 0, 7]);
        assert_eq!(&f[16..18], &[0x08, 0x00]);
        assert_eq!(p.vnet.csum_start, 38);
        let pop = HeaderTransform {
            flags: HeaderTransform::POP_VLAN,
            ..HeaderTransform::NONE
        };
        apply(&pop, &mut p).unwrap();
        assert_eq!(&p.frame()[12..14], &[0x08, 0x00]);
        assert_eq!(p.vnet.csum_start, 34);
    }

    #[test]
    fn composition_lets_the_later_win_and_pop_cancel_push() {
        let a = HeaderTransform::NONE.set_dst(A).push_vlan(5);
        let b = HeaderTransform::NONE.set_dst(B);
        let ab = a.then(&b);
        assert_eq!(ab.dst_mac, B.0);
        assert!(ab.has(HeaderTransform::PUSH_VLAN));
        let pop = HeaderTransform {
            flags: HeaderTransform::POP_VLAN,
            ..HeaderTransform::NONE
        };
        assert!(!a.then(&pop).has(HeaderTransform::PUSH_VLAN));
        assert!(!a.then(&pop).has(HeaderTransform::POP_VLAN));
        assert_eq!(
            HeaderTransform::NONE.then(&HeaderTransform::NONE),
            HeaderTransform::NONE
        );
    }
}
