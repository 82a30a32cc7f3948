//! The overlay network's side of the decision: endpoints on other hosts
//! are known from the CA->PA table (their customer address and MAC), so
//! the switch answers ARP requests and neighbour solicitations for them
//! itself (nothing is flooded across hosts), and frames to their MACs go
//! to the network's tunnel port, which encapsulates them to the PA.
//!
//! With HNS's RemoteSubnetRoute policies the network also has a
//! distributed router ([`Router`]): other customer subnets of the virtual
//! subnet, each on one host behind that host's router MAC.

use std::net::IpAddr;

use super::l2bridge::{write_advert, write_arp, Locals};
use crate::policy::Prefix;
use crate::port::Packet;
use crate::wire::{
    ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetFrame, Ipv4Packet, Ipv6Packet, MacAddr,
    NdpRepr,
};

/// An overlay network's distributed router on this host. The switch
/// answers ARP and neighbour solicitations for the network's gateways with
/// `mac`; what an endpoint sends to `mac` for a remote subnet goes to that
/// subnet's router (on another host, through the tunnel port); what comes
/// from the tunnel to `mac` goes to the endpoint here holding the address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Router {
    pub mac: MacAddr,
    pub gateways: Vec<IpAddr>,
    /// Remote subnets and their routers' MACs.
    pub routes: Vec<(Prefix, MacAddr)>,
}

/// Where the router sends a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// To this MAC, from the router's, the IPv4 TTL one less.
    To(MacAddr),
    /// Nowhere: no route, or no endpoint here with the address.
    NoRoute,
    /// The IPv4 TTL ran out.
    TtlExceeded,
}

impl Router {
    /// The MAC the switch answers with for `ip`, if it is a gateway.
    pub fn answers(&self, ip: IpAddr) -> Option<MacAddr> {
        self.gateways.contains(&ip).then_some(self.mac)
    }

    /// Routes an IP frame sent to the router: from the tunnel to the
    /// endpoint holding its destination (`locals`), from an endpoint to the
    /// router of the longest remote prefix holding it.
    pub fn route(&self, frame: &[u8], locals: &Locals, from_tunnel: bool) -> Routed {
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return Routed::NoRoute;
        };
        let (dst, ttl) = match eth.ethertype() {
            EtherType::Ipv4 => match Ipv4Packet::new_checked(eth.payload()) {
                Ok(ip) => (IpAddr::V4(ip.dst()), Some(ip.ttl())),
                Err(_) => return Routed::NoRoute,
            },
            EtherType::Ipv6 => match Ipv6Packet::new_checked(eth.payload()) {
                Ok(ip) => (IpAddr::V6(ip.dst()), None),
                Err(_) => return Routed::NoRoute,
            },
            _ => return Routed::NoRoute,
        };
        let next = if from_tunnel {
            locals.get(&dst).copied()
        } else {
            self.routes
                .iter()
                .filter(|(p, _)| p.contains(dst))
                .max_by_key(|(p, _)| p.len)
                .map(|(_, mac)| *mac)
        };
        match (next, ttl) {
            (None, _) => Routed::NoRoute,
            (Some(_), Some(ttl)) if ttl <= 1 => Routed::TtlExceeded,
            (Some(mac), _) => Routed::To(mac),
        }
    }
}

/// Answers an ARP request or a neighbour solicitation for an address
/// `lookup` knows (customer address -> MAC) into `reply`; false when the
/// frame is not such a question.
pub fn answer(
    frame: &[u8],
    lookup: impl Fn(IpAddr) -> Option<MacAddr>,
    reply: &mut Packet,
) -> bool {
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
            let Some(mac) = lookup(IpAddr::V4(req.target_ip)) else {
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
            let Some(mac) = lookup(IpAddr::V6(target)) else {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet frame holding an IPv4 header to `dst` with `ttl`.
    fn ipv4_to(dst: [u8; 4], ttl: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut f[14..];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&20u16.to_be_bytes());
        ip[8] = ttl;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&[10, 1, 0, 10]);
        ip[16..20].copy_from_slice(&dst);
        f
    }

    fn prefix(addr: &str, len: u8) -> Prefix {
        Prefix {
            addr: addr.parse().unwrap(),
            len,
        }
    }

    #[test]
    fn the_longest_prefix_wins_and_ttl_runs_out() {
        let (wide, narrow) = (
            MacAddr([0x0e, 0x2a, 0, 0, 0, 1]),
            MacAddr([0x0e, 0x2a, 0, 0, 0, 2]),
        );
        let r = Router {
            mac: MacAddr([0x0e, 0x2a, 0, 0, 0, 9]),
            gateways: vec!["10.1.0.1".parse().unwrap()],
            routes: vec![
                (prefix("10.2.0.0", 16), wide),
                (prefix("10.2.3.0", 24), narrow),
            ],
        };
        let none = Locals::new();
        assert_eq!(
            r.route(&ipv4_to([10, 2, 3, 4], 64), &none, false),
            Routed::To(narrow)
        );
        assert_eq!(
            r.route(&ipv4_to([10, 2, 9, 4], 64), &none, false),
            Routed::To(wide)
        );
        assert_eq!(
            r.route(&ipv4_to([10, 9, 0, 1], 64), &none, false),
            Routed::NoRoute
        );
        assert_eq!(
            r.route(&ipv4_to([10, 2, 3, 4], 1), &none, false),
            Routed::TtlExceeded
        );
        // From the tunnel: to the endpoint here with the address, if any.
        let ep = MacAddr([2, 0, 0, 0, 0, 5]);
        let locals: Locals = [("10.1.0.5".parse().unwrap(), ep)].into_iter().collect();
        assert_eq!(
            r.route(&ipv4_to([10, 1, 0, 5], 64), &locals, true),
            Routed::To(ep)
        );
        assert_eq!(
            r.route(&ipv4_to([10, 2, 3, 4], 64), &locals, true),
            Routed::NoRoute
        );
        assert_eq!(r.route(&[0u8; 10], &locals, false), Routed::NoRoute);
        assert_eq!(r.answers("10.1.0.1".parse().unwrap()), Some(r.mac));
        assert_eq!(r.answers("10.1.0.2".parse().unwrap()), None);
    }
}
