//! The overlay network's side of the decision: endpoints on other hosts
//! are known from the CA->PA table (their customer address and MAC), so
//! the switch answers ARP requests and neighbour solicitations for them
//! itself (nothing is flooded across hosts), and frames to their MACs go
//! to the network's tunnel port, which encapsulates them to the PA.

use std::net::IpAddr;

use super::l2bridge::{write_advert, write_arp, Locals};
use crate::port::Packet;
use crate::wire::{
    ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetFrame, Ipv6Packet, NdpRepr,
};

/// Answers an ARP request or a neighbour solicitation for an address in
/// `remotes` (customer address -> MAC) into `reply`; false when the frame
/// is not such a question.
pub fn answer(frame: &[u8], remotes: &Locals, reply: &mut Packet) -> bool {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return false;
    };
    match eth.ethertype() {
        EtherType::Arp => {
            let Ok(req) = ArpPacket::new_checked(eth.payload()).and_then(|a| ArpRepr::parse(&a))
            else {
                return false;
            };
            if req.operation != ArpOperation::Request || req.is_gratuitous() {
                return false;
            }
            let Some(&mac) = remotes.get(&IpAddr::V4(req.target_ip)) else {
                return false;
            };
            let Some(answer) = req.reply(mac) else {
                return false;
            };
            write_arp(reply, req.sender_hw, mac, &answer);
            true
        }
        EtherType::Ipv6 => {
            let Ok(ip) = Ipv6Packet::new_checked(eth.payload()) else {
                return false;
            };
            let Ok(NdpRepr::NeighborSolicit {
                target,
                source_lladdr,
            }) = NdpRepr::parse_ipv6(&ip)
            else {
                return false;
            };
            let Some(&mac) = remotes.get(&IpAddr::V6(target)) else {
                return false;
            };
            write_advert(
                reply,
                ip.src(),
                target,
                source_lladdr.unwrap_or(eth.src()),
                mac,
            );
            true
        }
        _ => false,
    }
}
