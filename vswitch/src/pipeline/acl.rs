//! The ACL layer's classifier: which rule, if any, a packet matches first.
//!
//! A linear scan costs every new connection the whole rule list, and the
//! issue asks that 10,000 rules cost new connections little. This is tuple
//! space search, as Open vSwitch's classifier does it: rules are grouped by
//! their *shape* (direction, whether protocol and each port are exact or
//! any, the prefix lengths of the two addresses) into subtables; within a
//! subtable every rule is an exact-match key of masked fields, so one hash
//! lookup per subtable finds its best rule. Lists expand into one key per
//! item. Port *ranges* cannot be hashed and go to a small linear list,
//! checked after. Subtables are kept in order of the best priority they
//! hold, so the search stops as soon as no subtable left can beat the best
//! match so far. A real rule set has few shapes, so a lookup is a handful
//! of hash probes whatever the number of rules.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::policy::{Acl, AclAction, Direction, PortRange, Prefix};

/// The fields of a packet an ACL looks at, from the endpoint's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AclPacket {
    pub direction: Direction,
    pub proto: u8,
    pub local: IpAddr,
    pub remote: IpAddr,
    /// 0 for protocols without ports.
    pub local_port: u16,
    pub remote_port: u16,
}

/// The rule a packet matched: its index in the list the table was built
/// from, and what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AclMatch {
    pub rule: usize,
    pub action: AclAction,
    pub priority: u16,
}

/// Which fields of a rule are exact, and how much of each address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Shape {
    direction: u8,
    proto: bool,
    /// Prefix length and family (4 or 6) of the local address; None: any.
    local: Option<(u8, u8)>,
    remote: Option<(u8, u8)>,
    local_port: bool,
    remote_port: bool,
}

/// A packet or rule reduced to a shape's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    proto: u8,
    local: u128,
    remote: u128,
    local_port: u16,
    remote_port: u16,
}

#[derive(Debug)]
struct Subtable {
    shape: Shape,
    /// Best (lowest) priority among the rules here.
    best: u16,
    rules: HashMap<Key, AclMatch>,
}

/// A rule with a port range, checked one by one.
#[derive(Debug)]
struct RangeRule {
    acl: Acl,
    found: AclMatch,
}

/// An ACL layer's rules, ready to classify packets.
#[derive(Debug, Default)]
pub struct AclTable {
    subtables: Vec<Subtable>,
    ranged: Vec<RangeRule>,
    rules: usize,
}

fn dir_code(d: Direction) -> u8 {
    match d {
        Direction::In => 0,
        Direction::Out => 1,
    }
}

fn family(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        4
    } else {
        6
    }
}

/// `ip` as 128 bits (IPv4 in the low 32) with all but `len` leading bits
/// of its family cleared.
fn masked(ip: IpAddr, len: u8) -> u128 {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u128::from(u32::from(v4) & mask)
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(v6) & mask
        }
    }
}

impl AclTable {
    /// Builds the table; `rules[i]` is reported as rule `i`. Of rules of
    /// equal priority, the one listed first wins.
    pub fn new(rules: &[Acl]) -> AclTable {
        let mut table = AclTable {
            rules: rules.len(),
            ..AclTable::default()
        };
        let mut by_shape: HashMap<Shape, usize> = HashMap::new();
        for (i, acl) in rules.iter().enumerate() {
            let found = AclMatch {
                rule: i,
                action: acl.action,
                priority: acl.priority,
            };
            let single = |r: &[PortRange]| r.iter().all(|p| p.lo == p.hi);
            if !single(&acl.local_ports) || !single(&acl.remote_ports) {
                table.ranged.push(RangeRule {
                    acl: acl.clone(),
                    found,
                });
                continue;
            }
            // One key per combination of the lists' items; an empty list
            // is one "any".
            let protos: Vec<Option<u8>> = opt_list(acl.protocols.iter().map(|p| *p as u8));
            let locals: Vec<Option<Prefix>> = opt_list(acl.local_addresses.iter().copied());
            let remotes: Vec<Option<Prefix>> = opt_list(acl.remote_addresses.iter().copied());
            let lports: Vec<Option<u16>> = opt_list(acl.local_ports.iter().map(|p| p.lo));
            let rports: Vec<Option<u16>> = opt_list(acl.remote_ports.iter().map(|p| p.lo));
            for &proto in &protos {
                for &local in &locals {
                    for &remote in &remotes {
                        for &lp in &lports {
                            for &rp in &rports {
                                let shape = Shape {
                                    direction: dir_code(acl.direction),
                                    proto: proto.is_some(),
                                    local: local.map(|p| (p.len, family(p.addr))),
                                    remote: remote.map(|p| (p.len, family(p.addr))),
                                    local_port: lp.is_some(),
                                    remote_port: rp.is_some(),
                                };
                                let key = Key {
                                    proto: proto.unwrap_or(0),
                                    local: local.map_or(0, |p| masked(p.addr, p.len)),
                                    remote: remote.map_or(0, |p| masked(p.addr, p.len)),
                                    local_port: lp.unwrap_or(0),
                                    remote_port: rp.unwrap_or(0),
                                };
                                let at = *by_shape.entry(shape).or_insert_with(|| {
                                    table.subtables.push(Subtable {
                                        shape,
                                        best: u16::MAX,
                                        rules: HashMap::new(),
                                    });
                                    table.subtables.len() - 1
                                });
                                let sub = &mut table.subtables[at];
                                sub.best = sub.best.min(found.priority);
                                let slot = sub.rules.entry(key).or_insert(found);
                                if better(&found, slot) {
                                    *slot = found;
                                }
                            }
                        }
                    }
                }
            }
        }
        table.subtables.sort_by_key(|s| s.best);
        table
            .ranged
            .sort_by_key(|r| (r.found.priority, r.found.rule));
        table
    }

    pub fn len(&self) -> usize {
        self.rules
    }

    pub fn is_empty(&self) -> bool {
        self.rules == 0
    }

    /// How many subtables a lookup may probe (for benchmarks and trace).
    pub fn shapes(&self) -> usize {
        self.subtables.len()
    }

    /// The first rule `pkt` matches: lowest priority, then listed first.
    pub fn lookup(&self, pkt: &AclPacket) -> Option<AclMatch> {
        let mut best: Option<AclMatch> = None;
        for sub in &self.subtables {
            if best.is_some_and(|b| b.priority < sub.best) {
                break;
            }
            let s = sub.shape;
            if s.direction != dir_code(pkt.direction) {
                continue;
            }
            let addr = |shape: Option<(u8, u8)>, ip: IpAddr| match shape {
                None => Some(0),
                Some((len, fam)) if fam == family(ip) => Some(masked(ip, len)),
                Some(_) => None,
            };
            let (Some(local), Some(remote)) =
                (addr(s.local, pkt.local), addr(s.remote, pkt.remote))
            else {
                continue;
            };
            let key = Key {
                proto: if s.proto { pkt.proto } else { 0 },
                local,
                remote,
                local_port: if s.local_port { pkt.local_port } else { 0 },
                remote_port: if s.remote_port { pkt.remote_port } else { 0 },
            };
            if let Some(found) = sub.rules.get(&key) {
                if best.is_none_or(|b| better(found, &b)) {
                    best = Some(*found);
                }
            }
        }
        for r in &self.ranged {
            if best.is_some_and(|b| !better(&r.found, &b)) {
                break;
            }
            if matches_linear(&r.acl, pkt) {
                best = Some(r.found);
                break;
            }
        }
        best
    }
}

fn better(a: &AclMatch, b: &AclMatch) -> bool {
    (a.priority, a.rule) < (b.priority, b.rule)
}

fn opt_list<T: Copy>(items: impl Iterator<Item = T>) -> Vec<Option<T>> {
    let v: Vec<Option<T>> = items.map(Some).collect();
    if v.is_empty() {
        vec![None]
    } else {
        v
    }
}

/// The plain definition of a match, for ranged rules and as the tests'
/// model of the classifier.
pub fn matches_linear(acl: &Acl, pkt: &AclPacket) -> bool {
    let any_or = |list_empty: bool, hit: bool| list_empty || hit;
    acl.direction == pkt.direction
        && any_or(
            acl.protocols.is_empty(),
            acl.protocols.iter().any(|p| *p as u8 == pkt.proto),
        )
        && any_or(
            acl.local_addresses.is_empty(),
            acl.local_addresses.iter().any(|p| p.contains(pkt.local)),
        )
        && any_or(
            acl.remote_addresses.is_empty(),
            acl.remote_addresses.iter().any(|p| p.contains(pkt.remote)),
        )
        && any_or(
            acl.local_ports.is_empty(),
            acl.local_ports.iter().any(|r| r.contains(pkt.local_port)),
        )
        && any_or(
            acl.remote_ports.is_empty(),
            acl.remote_ports.iter().any(|r| r.contains(pkt.remote_port)),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{parse_document, Policy};
    use proptest::prelude::*;

    fn acls(doc: &str) -> Vec<Acl> {
        parse_document(doc)
            .unwrap()
            .into_iter()
            .map(|p| match p {
                Policy::Acl(a) => a,
                p => panic!("{p:?}"),
            })
            .collect()
    }

    fn pkt(direction: Direction, proto: u8, remote: &str, local_port: u16) -> AclPacket {
        AclPacket {
            direction,
            proto,
            local: "10.0.0.2".parse().unwrap(),
            remote: remote.parse().unwrap(),
            local_port,
            remote_port: 40000,
        }
    }

    #[test]
    fn priorities_lists_prefixes_and_ranges() {
        let rules = acls(
            r#"[
            {"Type":"ACL","Action":"Block","Direction":"In","Priority":200},
            {"Type":"ACL","Action":"Allow","Direction":"In","Protocols":"6","LocalPorts":"80,443","Priority":100},
            {"Type":"ACL","Action":"Block","Direction":"In","RemoteAddresses":"192.0.2.0/24","Priority":50},
            {"Type":"ACL","Action":"Allow","Direction":"In","Protocols":"17","LocalPorts":"5000-5010","Priority":100},
            {"Type":"ACL","Action":"Allow","Direction":"Out","Priority":300}
        ]"#,
        );
        let t = AclTable::new(&rules);
        let at = |p: AclPacket| t.lookup(&p).map(|m| m.rule);
        assert_eq!(at(pkt(Direction::In, 6, "10.0.0.9", 80)), Some(1));
        assert_eq!(at(pkt(Direction::In, 6, "10.0.0.9", 443)), Some(1));
        assert_eq!(at(pkt(Direction::In, 6, "10.0.0.9", 22)), Some(0));
        // A better priority wins over a more specific rule.
        assert_eq!(at(pkt(Direction::In, 6, "192.0.2.7", 80)), Some(2));
        assert_eq!(at(pkt(Direction::In, 17, "10.0.0.9", 5005)), Some(3));
        assert_eq!(at(pkt(Direction::In, 17, "10.0.0.9", 5011)), Some(0));
        assert_eq!(at(pkt(Direction::Out, 6, "10.0.0.9", 1)), Some(4));
        // IPv6 packets do not match IPv4 prefixes.
        assert_eq!(at(pkt(Direction::In, 6, "fd00::9", 22)), Some(0));
        assert_eq!(
            AclTable::new(&[]).lookup(&pkt(Direction::In, 6, "10.0.0.9", 1)),
            None
        );
    }

    #[test]
    fn ten_thousand_rules_have_few_shapes() {
        let rules: Vec<Acl> = (0..10_000u32)
            .map(|i| {
                acls(&format!(
                    r#"{{"Type":"ACL","Action":"Block","Direction":"In","Protocols":"6","LocalPorts":"{}","RemoteAddresses":"10.{}.{}.0/24","Priority":{}}}"#,
                    1000 + i % 50_000,
                    i / 256 % 256,
                    i % 256,
                    1 + i % 60_000
                ))
                .remove(0)
            })
            .collect();
        let t = AclTable::new(&rules);
        assert_eq!(t.shapes(), 1);
        let hit = pkt(Direction::In, 6, "10.0.7.9", 1007);
        assert_eq!(t.lookup(&hit).map(|m| m.rule), Some(7));
    }

    fn arb_acl() -> impl Strategy<Value = Acl> {
        let ports = prop::collection::vec((0u16..6, 0u16..3), 0..3).prop_map(|v| {
            v.into_iter()
                .map(|(lo, w)| PortRange { lo, hi: lo + w })
                .collect::<Vec<_>>()
        });
        let prefixes = prop::collection::vec((0u8..4, 0u8..=32), 0..3).prop_map(|v| {
            v.into_iter()
                .map(|(b, len)| Prefix {
                    addr: IpAddr::from([10, 0, 0, b << 6]),
                    len,
                })
                .map(|p| Prefix {
                    addr: IpAddr::V4(std::net::Ipv4Addr::from(masked(p.addr, p.len) as u32)),
                    len: p.len,
                })
                .collect::<Vec<_>>()
        });
        (
            any::<bool>(),
            any::<bool>(),
            prop::collection::vec(prop::sample::select(vec![6u8, 17]), 0..2),
            prefixes,
            ports.clone(),
            ports,
            1u16..5,
        )
            .prop_map(
                |(allow, inbound, protos, remote, lports, rports, priority)| {
                    let proto = |n| match n {
                        6 => crate::policy::Protocol::Tcp,
                        _ => crate::policy::Protocol::Udp,
                    };
                    let has_ports = !lports.is_empty() || !rports.is_empty();
                    let mut protocols: Vec<_> = protos.into_iter().map(proto).collect();
                    if has_ports && protocols.is_empty() {
                        protocols.push(crate::policy::Protocol::Tcp);
                    }
                    Acl {
                        id: None,
                        action: if allow {
                            AclAction::Allow
                        } else {
                            AclAction::Block
                        },
                        direction: if inbound {
                            Direction::In
                        } else {
                            Direction::Out
                        },
                        protocols,
                        local_addresses: Vec::new(),
                        remote_addresses: remote,
                        local_ports: lports,
                        remote_ports: rports,
                        priority,
                    }
                },
            )
    }

    proptest! {
        /// The classifier agrees with the plain definition: the first rule
        /// in (priority, order) that matches.
        #[test]
        fn prop_classifier_is_the_linear_scan(
            rules in prop::collection::vec(arb_acl(), 0..12),
            inbound in any::<bool>(),
            proto in prop::sample::select(vec![1u8, 6, 17]),
            last in any::<u8>(),
            lport in 0u16..9,
            rport in 0u16..9,
        ) {
            let p = AclPacket {
                direction: if inbound { Direction::In } else { Direction::Out },
                proto,
                local: "10.0.0.2".parse().unwrap(),
                remote: IpAddr::from([10, 0, 0, last]),
                local_port: lport,
                remote_port: rport,
            };
            let mut order: Vec<usize> = (0..rules.len()).collect();
            order.sort_by_key(|&i| (rules[i].priority, i));
            let linear = order.into_iter().find(|&i| matches_linear(&rules[i], &p));
            let t = AclTable::new(&rules);
            prop_assert_eq!(t.lookup(&p).map(|m| m.rule), linear);
        }
    }
}
