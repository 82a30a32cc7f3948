//! A port's policy layers, as VFP orders them: guards, then the ACL layer
//! (stateful, through connection tracking), then QoS on what the endpoint
//! sends.
//!
//! [`Layers`] is what the control plane hands the datapath for a port: the
//! rules compiled ([`AclTable`]), the guards, the default action and the
//! rate. Rule hit counters are shared atomics, written by the datapath
//! thread and read by `policy ls` without a round trip.
//!
//! Which traffic the ACL layer sees: IP between a policed endpoint and
//! anything else, in the endpoint's terms (Out: what it sends, In: what it
//! receives; Local: its side). ARP is not IP and neighbour discovery is
//! IPv6's ARP: neither is ever blocked, nor is anything else to IPv6
//! link-local multicast (MLD, router messages), so a Block-everything rule
//! cannot cut an endpoint off from its link. A flood (broadcast,
//! multicast, a destination not yet learned) passes the sender's Out layer
//! only; the receivers' In layers see unicast.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::acl::{AclPacket, AclTable};
use super::classify::{PacketMeta, ABSENT};
use super::conntrack::{Segment, TcpFlags, Tuple, ICMP, ICMPV6, TCP, UDP};
use super::forward::Guards;
use super::PortId;
use crate::policy::{Acl, AclAction, Direction};

/// A port's policy, compiled.
#[derive(Debug, Clone)]
pub struct Layers {
    pub guards: Guards,
    pub acl: Arc<AclTable>,
    /// What a policed packet matching no rule gets (HNS: Allow).
    pub default_action: AclAction,
    /// Packets matched, by rule index (the order the table was built from).
    pub hits: Arc<[AtomicU64]>,
    /// Each rule's Id (or `#index`) and action, for `trace`.
    pub names: Arc<[(String, AclAction)]>,
    /// QOS: bytes per second the endpoint may send.
    pub qos: Option<u64>,
}

impl Default for Layers {
    /// A trusted port's: no guards, no rules, no rate.
    fn default() -> Layers {
        Layers::new(Guards::NONE, &[], AclAction::Allow, None)
    }
}

impl Layers {
    pub fn new(
        guards: Guards,
        rules: &[Acl],
        default_action: AclAction,
        qos: Option<u64>,
    ) -> Layers {
        Layers {
            guards,
            acl: Arc::new(AclTable::new(rules)),
            default_action,
            hits: rules.iter().map(|_| AtomicU64::new(0)).collect(),
            names: rules
                .iter()
                .enumerate()
                .map(|(i, r)| (r.id.clone().unwrap_or_else(|| format!("#{i}")), r.action))
                .collect(),
            qos,
        }
    }

    /// Whether the ACL layer looks at this port's traffic at all.
    pub fn policed(&self) -> bool {
        !self.acl.is_empty() || self.default_action == AclAction::Block
    }

    /// The ACL layer's answer for `conn` seen from this port in `dir`:
    /// the rule matched (if any) and whether the packet may pass.
    pub fn check(&self, conn: &Tuple, dir: Direction) -> (Option<u32>, AclAction) {
        let ports = matches!(conn.proto, TCP | UDP);
        let pkt = match dir {
            Direction::Out => AclPacket {
                direction: dir,
                proto: conn.proto,
                local: conn.src,
                remote: conn.dst,
                local_port: if ports { conn.src_port } else { 0 },
                remote_port: if ports { conn.dst_port } else { 0 },
            },
            Direction::In => AclPacket {
                direction: dir,
                proto: conn.proto,
                local: conn.dst,
                remote: conn.src,
                local_port: if ports { conn.dst_port } else { 0 },
                remote_port: if ports { conn.src_port } else { 0 },
            },
        };
        match self.acl.lookup(&pkt) {
            Some(m) => (Some(m.rule as u32), m.action),
            None => (None, self.default_action),
        }
    }

    /// How `trace` names the answer of [`Layers::check`].
    pub fn describe(&self, rule: Option<u32>) -> String {
        match rule.and_then(|r| self.names.get(r as usize)) {
            Some((id, action)) => format!("rule '{id}' matched: {action:?}"),
            None => format!("no rule matched: default {:?}", self.default_action),
        }
    }

    pub fn hit(&self, rule: u32) {
        if let Some(c) = self.hits.get(rule as usize) {
            c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
    }
}

/// The ACL layers' outcome for one flow, as the flow cache keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AclOutcome {
    pub allowed: bool,
    /// The rule of the sender's Out layer, and of the receiver's In layer.
    pub out_rule: Option<u32>,
    pub in_rule: Option<u32>,
    /// The port the flow was decided towards (`None`: a flood).
    pub out_port: Option<PortId>,
    /// Packets that used this entry.
    pub hits: u64,
}

/// ICMP error types, whose payload quotes the packet they are about.
const ICMP4_ERRORS: [u8; 3] = [3, 11, 12];
const ICMP6_ERRORS: [u8; 4] = [1, 2, 3, 4];
const ICMP4_ECHO: (u8, u8) = (8, 0);
const ICMP6_ECHO: (u8, u8) = (128, 129);
/// Neighbour discovery and router messages (RFC 4861): never policed.
const NDP: std::ops::RangeInclusive<u8> = 133..=137;

fn be16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .map_or(0, |x| u16::from_be_bytes([x[0], x[1]]))
}

fn ip_at(b: &[u8], at: usize, v6: bool) -> Option<IpAddr> {
    if v6 {
        let o: [u8; 16] = b.get(at..at + 16)?.try_into().ok()?;
        Some(IpAddr::from(o))
    } else {
        let o: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(IpAddr::from(o))
    }
}

/// The connection a frame belongs to, as conntrack and the ACL layer see
/// it; `None` for what is never policed (not IP, neighbour discovery).
pub fn conn_of(frame: &[u8], meta: &PacketMeta, zone: u32) -> Option<(Tuple, Segment)> {
    let v6 = match meta.family {
        4 => false,
        6 => true,
        _ => return None,
    };
    let l3 = usize::from(meta.l3);
    let (src, dst) = if v6 {
        let dst = ip_at(frame, l3 + 24, true)?;
        // Link-local multicast (ff02::/16) is the link's own control
        // traffic: neighbour discovery, MLD (behind a hop-by-hop header),
        // router messages. Never policed, as ARP is not.
        if matches!(dst, IpAddr::V6(d) if d.segments()[0] == 0xff02) {
            return None;
        }
        (ip_at(frame, l3 + 8, true)?, dst)
    } else {
        (ip_at(frame, l3 + 12, false)?, ip_at(frame, l3 + 16, false)?)
    };
    let mut t = Tuple {
        zone,
        proto: meta.proto,
        src,
        dst,
        src_port: 0,
        dst_port: 0,
    };
    if meta.l4 == ABSENT {
        return Some((t, Segment::Other));
    }
    let l4 = usize::from(meta.l4);
    let seg = match meta.proto {
        TCP => {
            t.src_port = be16(frame, l4);
            t.dst_port = be16(frame, l4 + 2);
            let f = frame.get(l4 + 13).copied().unwrap_or(0);
            Segment::Tcp(TcpFlags {
                fin: f & 0x01 != 0,
                syn: f & 0x02 != 0,
                rst: f & 0x04 != 0,
                ack: f & 0x10 != 0,
            })
        }
        UDP => {
            t.src_port = be16(frame, l4);
            t.dst_port = be16(frame, l4 + 2);
            Segment::Udp
        }
        ICMP | ICMPV6 => {
            let kind = *frame.get(l4)?;
            let (echo, errors): ((u8, u8), &[u8]) = if v6 {
                (ICMP6_ECHO, &ICMP6_ERRORS)
            } else {
                (ICMP4_ECHO, &ICMP4_ERRORS)
            };
            if v6 && NDP.contains(&kind) {
                return None;
            }
            if kind == echo.0 || kind == echo.1 {
                t.src_port = be16(frame, l4 + 4);
                Segment::Echo {
                    request: kind == echo.0,
                }
            } else if errors.contains(&kind) {
                match quoted(frame.get(l4 + 8..)?, v6, zone) {
                    Some(quoted) => Segment::IcmpError { quoted },
                    None => Segment::Other,
                }
            } else {
                Segment::Other
            }
        }
        _ => Segment::Other,
    };
    Some((t, seg))
}

/// The tuple of the packet an ICMP error quotes (its IP header and at
/// least 8 bytes behind it).
fn quoted(b: &[u8], v6: bool, zone: u32) -> Option<Tuple> {
    let (proto, src, dst, l4) = if v6 {
        (*b.get(6)?, ip_at(b, 8, true)?, ip_at(b, 24, true)?, 40)
    } else {
        let ihl = usize::from(b.first()? & 0x0f) * 4;
        (*b.get(9)?, ip_at(b, 12, false)?, ip_at(b, 16, false)?, ihl)
    };
    let mut t = Tuple {
        zone,
        proto,
        src,
        dst,
        src_port: 0,
        dst_port: 0,
    };
    match proto {
        TCP | UDP => {
            t.src_port = be16(b, l4);
            t.dst_port = be16(b, l4 + 2);
        }
        ICMP | ICMPV6 => t.src_port = be16(b, l4 + 4),
        _ => {}
    }
    b.get(l4 + 4..)?;
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::classify;
    use crate::policy::parse_document;

    fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], l4: &[u8]) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        let len = (20 + l4.len()) as u16;
        f.extend_from_slice(&[
            0x45,
            0,
            (len >> 8) as u8,
            len as u8,
            0,
            0,
            0,
            0,
            64,
            proto,
            0,
            0,
        ]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(l4);
        f
    }

    fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut t = sport.to_be_bytes().to_vec();
        t.extend_from_slice(&dport.to_be_bytes());
        t.extend_from_slice(&[0; 8]);
        t.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        t
    }

    fn conn(f: &[u8]) -> Option<(Tuple, Segment)> {
        conn_of(f, &classify(f).unwrap(), 7)
    }

    #[test]
    fn tcp_ports_and_flags() {
        let f = ipv4(6, [10, 0, 0, 2], [10, 0, 0, 3], &tcp(40000, 80, 0x02));
        let (t, seg) = conn(&f).unwrap();
        assert_eq!((t.zone, t.proto, t.src_port, t.dst_port), (7, 6, 40000, 80));
        assert_eq!(t.dst, "10.0.0.3".parse::<IpAddr>().unwrap());
        assert_eq!(
            seg,
            Segment::Tcp(TcpFlags {
                syn: true,
                ..TcpFlags::default()
            })
        );
    }

    #[test]
    fn icmp_echo_and_errors_quote_their_flow() {
        let echo = ipv4(
            1,
            [10, 0, 0, 2],
            [10, 0, 0, 3],
            &[8, 0, 0, 0, 0x12, 0x34, 0, 1],
        );
        let (t, seg) = conn(&echo).unwrap();
        assert_eq!((t.src_port, seg), (0x1234, Segment::Echo { request: true }));
        // Port unreachable about UDP 10.0.0.2:5000 -> 10.0.0.3:53.
        let inner = ipv4(
            17,
            [10, 0, 0, 2],
            [10, 0, 0, 3],
            &[0x13, 0x88, 0, 53, 0, 8, 0, 0],
        );
        let mut body = vec![3, 3, 0, 0, 0, 0, 0, 0];
        body.extend_from_slice(&inner[14..]);
        let err = ipv4(1, [10, 0, 0, 3], [10, 0, 0, 2], &body);
        let (_, seg) = conn(&err).unwrap();
        let Segment::IcmpError { quoted } = seg else {
            panic!("{seg:?}")
        };
        assert_eq!(
            (quoted.proto, quoted.src_port, quoted.dst_port),
            (17, 5000, 53)
        );
        assert_eq!(quoted.zone, 7);
    }

    #[test]
    fn arp_and_neighbour_discovery_are_never_policed() {
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
        arp.extend_from_slice(&[0; 28]);
        assert_eq!(conn(&arp), None);
        let mut ns = vec![0x33, 0x33, 0, 0, 0, 1, 2, 0, 0, 0, 0, 1, 0x86, 0xdd];
        ns.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, 58, 255]);
        ns.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        ns.extend_from_slice(&[0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        ns.extend_from_slice(&[135, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(conn(&ns), None);
        // An MLD report behind a hop-by-hop header, to ff02::16.
        let mut mld = vec![0x33, 0x33, 0, 0, 0, 0x16, 2, 0, 0, 0, 0, 1, 0x86, 0xdd];
        mld.extend_from_slice(&[0x60, 0, 0, 0, 0, 36, 0, 1]);
        mld.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        mld.extend_from_slice(&[0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x16]);
        mld.extend_from_slice(&[58, 0, 5, 2, 0, 0, 1, 0]);
        mld.extend_from_slice(&[143, 0, 0, 0, 0, 0, 0, 1]);
        mld.extend_from_slice(&[0; 20]);
        assert_eq!(conn(&mld), None);
    }

    #[test]
    fn directions_are_the_endpoints() {
        let doc = r#"[{"Type":"ACL","Settings":{"Action":"Block","Direction":"In",
            "Protocols":"6","LocalPorts":"80","Priority":100}}]"#;
        let rules: Vec<Acl> = parse_document(doc)
            .unwrap()
            .into_iter()
            .filter_map(|p| match p {
                crate::policy::Policy::Acl(a) => Some(a),
                _ => None,
            })
            .collect();
        let l = Layers::new(Guards::ENDPOINT, &rules, AclAction::Allow, None);
        assert!(l.policed());
        assert!(!Layers::default().policed());
        let f = ipv4(6, [10, 0, 0, 2], [10, 0, 0, 3], &tcp(40000, 80, 0x02));
        let (t, _) = conn(&f).unwrap();
        // To the endpoint on its port 80: blocked. The same packet sent by
        // the endpoint (Out) matches nothing.
        assert_eq!(l.check(&t, Direction::In), (Some(0), AclAction::Block));
        assert_eq!(l.check(&t, Direction::Out), (None, AclAction::Allow));
        l.hit(0);
        assert_eq!(l.hits[0].load(Ordering::Relaxed), 1);
    }
}
