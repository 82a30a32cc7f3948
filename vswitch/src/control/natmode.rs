//! The nat driver's control side (WinNAT): which uplink and address a nat
//! network translates to, its source ports, its port mappings (HNS
//! PortMapping policies of its endpoints), and telling the datapath and the
//! uplink's XDP program about them.
//!
//! Source ports. The switch translates to the uplink's address, which the
//! host's own sockets use too, so the two must never pick the same port:
//! the switch takes its ports from *above* the kernel's ephemeral range
//! (`net.ipv4.ip_local_port_range`, 32768-60999 by default, from which the
//! host's `connect()` and `bind(0)` pick): 61000-65535 by default, or
//! `-o nat_ports=LO-HI` outside that range. The XDP program hands the
//! switch only frames to the uplink's address whose destination port (or
//! echo id, or quoted source port in an ICMP error) is in that range or is
//! a mapped port; everything else to that address stays the host's. A host
//! service that explicitly binds a port in the range, or a mapped port,
//! loses its traffic to the switch: a mapping on a port a host socket holds
//! is refused (a host socket bound inside the range later is not noticed).

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use super::errors::{conflict, internal, invalid};
use super::state::NetworkRecord;
use super::{uplink, ApiResult, Controller};
use crate::api::WireMac;
use crate::pipeline::nat::{host_ephemeral_range, Mapping, NatConfig};
use crate::policy::{Policy, L4};

/// The fewest source ports a nat network is created with.
const MIN_POOL: usize = 256;

/// The interface of the IPv4 default route, and its gateway, from
/// `/proc/net/route` (the daemon's namespace).
pub fn default_route() -> Option<(String, Ipv4Addr)> {
    routes()
        .into_iter()
        .find(|r| r.1 == 0)
        .map(|(i, _, g)| (i, g))
}

/// The default router reached through `ifname`.
pub fn router_of(ifname: &str) -> Option<Ipv4Addr> {
    routes()
        .into_iter()
        .find(|(i, dst, _)| i == ifname && *dst == 0)
        .map(|(_, _, g)| g)
}

/// (interface, destination, gateway) of the IPv4 routes with a gateway.
fn routes() -> Vec<(String, u32, Ipv4Addr)> {
    let Ok(text) = std::fs::read_to_string("/proc/net/route") else {
        return Vec::new();
    };
    let hex = |s: &str| u32::from_str_radix(s, 16).ok();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dst, gw, mask) = (hex(f.get(1)?)?, hex(f.get(2)?)?, hex(f.get(7)?)?);
            // Little-endian words of network-order addresses.
            let gw = Ipv4Addr::from(gw.to_le_bytes());
            (gw != Ipv4Addr::UNSPECIFIED && mask == 0).then(|| (f[0].to_owned(), dst, gw))
        })
        .collect()
}

/// Whether a host socket holds `port` for `proto` on `addr` (or on every
/// address): bound or listening, per `/proc/net/{tcp,udp}{,6}`.
pub fn host_holds(proto: u8, port: u16, addr: Ipv4Addr) -> bool {
    let files: &[&str] = match proto {
        6 => &["/proc/net/tcp", "/proc/net/tcp6"],
        17 => &["/proc/net/udp", "/proc/net/udp6"],
        _ => return false,
    };
    let mine = format!("{:08X}", u32::from_le_bytes(addr.octets()));
    files.iter().any(|f| {
        let Ok(text) = std::fs::read_to_string(f) else {
            return false;
        };
        text.lines().skip(1).any(|line| {
            let mut cols = line.split_whitespace();
            let (Some(local), Some(_remote), Some(state)) = (cols.nth(1), cols.next(), cols.next())
            else {
                return false;
            };
            let Some((ip, p)) = local.rsplit_once(':') else {
                return false;
            };
            // TCP: only listening (0A) sockets own a port against newcomers;
            // UDP sockets are all "unconnected" (07) or connected (01).
            let owns = proto == 17 || state == "0A";
            let any = ip.chars().all(|c| c == '0');
            owns && u16::from_str_radix(p, 16).ok() == Some(port) && (any || ip == mine)
        })
    })
}

/// The switch's source ports for a nat network: `-o nat_ports`, or what
/// lies above the host's ephemeral range.
pub fn pool(option: Option<(u16, u16)>) -> ApiResult<RangeInclusive<u16>> {
    let eph = host_ephemeral_range();
    let pool = match option {
        Some((lo, hi)) => lo..=hi,
        None => eph.end().saturating_add(1).max(1024)..=65535,
    };
    let overlaps = pool.start() <= eph.end() && eph.start() <= pool.end();
    if overlaps {
        return Err(invalid(
            "options.nat_ports",
            format!(
                "{}-{} overlaps the host's ephemeral ports {}-{} (net.ipv4.ip_local_port_range), which the host's own connections use",
                pool.start(),
                pool.end(),
                eph.start(),
                eph.end()
            ),
        ));
    }
    if option.is_none() && pool.clone().count() < MIN_POOL {
        return Err(invalid(
            "options.nat_ports",
            format!(
                "the host's ephemeral range {}-{} leaves fewer than {MIN_POOL} ports above it; give -o nat_ports=LO-HI",
                eph.start(),
                eph.end()
            ),
        ));
    }
    Ok(pool)
}

impl Controller {
    /// The port mappings of a nat network's endpoints, as policies say.
    pub(super) fn mappings_of(&self, net: &NetworkRecord) -> Vec<Mapping> {
        let mut out = Vec::new();
        for ep in self.state.endpoints_of(&net.id) {
            let Some(ip) = ep.ipv4 else { continue };
            for r in &ep.policies {
                if let Ok(Policy::PortMapping(m)) = crate::policy::parse_policy(&r.document, "") {
                    out.push(Mapping {
                        proto: match m.protocol {
                            L4::Tcp => 6,
                            L4::Udp => 17,
                        },
                        external: m.external_port,
                        internal: ip,
                        internal_port: m.internal_port,
                    });
                }
            }
        }
        out
    }

    /// What the datapath needs to translate for `net`.
    pub(super) fn nat_config(&self, net: &NetworkRecord) -> ApiResult<NatConfig> {
        let ifname = net
            .parsed
            .interface
            .as_deref()
            .ok_or_else(|| internal("nat network without uplink"))?;
        let facts = uplink::inspect(ifname).map_err(super::errors::uplink_error)?;
        let addr = facts.ipv4().next().ok_or_else(|| {
            invalid(
                "options.interface",
                format!("'{ifname}' has no IPv4 address for a nat network to translate to"),
            )
        })?;
        let subnet = net
            .subnet4
            .map(|s| (s.network(), s.prefix()))
            .ok_or_else(|| internal("network without an IPv4 subnet"))?;
        let translated = net.driver.wire_mac() == Some(WireMac::Translated);
        let (sources, exceptions) = if translated {
            (None, Vec::new())
        } else {
            let (sources, exceptions) = self.outbound_nat_of(net);
            (Some(sources), exceptions)
        };
        Ok(NatConfig {
            addr,
            uplink_mac: facts.mac,
            uplink_ifindex: facts.index,
            gateway: net.gateway4.unwrap_or(Ipv4Addr::UNSPECIFIED),
            // A nat network's (or an off-uplink l2bridge's) gateway is its
            // host port; an l2bridge's on the uplink's subnet is on the wire.
            gateway_mac: net.host_mac,
            sources,
            exceptions,
            subnet,
            onlink: facts.prefixes4.clone(),
            router: router_of(ifname),
            pool: pool(net.parsed.nat_ports)?,
            mappings: self.mappings_of(net),
        })
    }

    /// An l2bridge network's OutBoundNAT: the endpoints it applies to (their
    /// own policy or the network's) and the exceptions, all merged.
    pub(super) fn outbound_nat_of(
        &self,
        net: &NetworkRecord,
    ) -> (Vec<Ipv4Addr>, Vec<(Ipv4Addr, u8)>) {
        let exceptions_of =
            |records: &[super::state::PolicyRecord]| -> Option<Vec<(Ipv4Addr, u8)>> {
                let mut found = None;
                for r in records {
                    if let Ok(Policy::OutBoundNat(o)) = crate::policy::parse_policy(&r.document, "")
                    {
                        let list: &mut Vec<(Ipv4Addr, u8)> = found.get_or_insert_with(Vec::new);
                        for p in o.exceptions {
                            if let std::net::IpAddr::V4(v4) = p.addr {
                                list.push((v4, p.len));
                            }
                        }
                    }
                }
                found
            };
        let network_wide = exceptions_of(&net.policies);
        let mut sources = Vec::new();
        let mut exceptions = network_wide.clone().unwrap_or_default();
        for ep in self.state.endpoints_of(&net.id) {
            let own = exceptions_of(&ep.policies);
            if own.is_some() || network_wide.is_some() {
                if let Some(ip) = ep.ipv4 {
                    sources.push(ip);
                }
            }
            exceptions.extend(own.unwrap_or_default());
        }
        exceptions.sort();
        exceptions.dedup();
        (sources, exceptions)
    }

    /// Tells the datapath and the uplink's XDP program how `net`
    /// translates (again, after its mappings changed).
    pub(super) fn push_nat(&mut self, net: &NetworkRecord) -> ApiResult<()> {
        match self.nets.get(&net.id) {
            Some(rt) if rt.uplink.is_some() => self.push_nat_to(net, rt.dp),
            _ => Ok(()),
        }
    }

    pub(super) fn push_nat_to(
        &mut self,
        net: &NetworkRecord,
        dp: crate::datapath::NetId,
    ) -> ApiResult<()> {
        match net.driver.wire_mac() {
            Some(WireMac::Translated) => {}
            // l2bridge and l2tunnel translate only with OutBoundNAT.
            Some(WireMac::Uplink) if !self.outbound_nat_of(net).0.is_empty() => {}
            Some(WireMac::Uplink) => {
                self.clear_nat(net);
                return self.datapath.set_nat(dp, None, None).map_err(internal);
            }
            _ => return Ok(()),
        }
        let cfg = self.nat_config(net)?;
        let ifname = net.parsed.interface.clone().unwrap_or_default();
        let vlan = net.parsed.vlan;
        let mut echo_ids = None;
        if let Some(up) = self.uplinks.get_mut(&ifname) {
            up.program
                .set_nat_range(vlan, cfg.addr, *cfg.pool.start(), *cfg.pool.end())
                .map_err(internal)?;
            echo_ids = Some(up.program.echo_ids(vlan, cfg.addr).map_err(internal)?);
            let old = std::mem::take(&mut up.nat_ports);
            for &(proto, port) in &old {
                if !cfg
                    .mappings
                    .iter()
                    .any(|m| (m.proto, m.external) == (proto, port))
                {
                    let _ = up.program.remove_nat_port(vlan, cfg.addr, proto, port);
                }
            }
            for m in &cfg.mappings {
                up.program
                    .add_nat_port(vlan, cfg.addr, m.proto, m.external)
                    .map_err(internal)?;
                up.nat_ports.push((m.proto, m.external));
            }
        }
        self.datapath
            .set_nat(dp, Some(cfg), echo_ids)
            .map_err(internal)
    }

    /// Takes `net`'s translation out of the uplink's XDP program (the
    /// network is going; other networks may keep the uplink).
    pub(super) fn clear_nat(&mut self, net: &NetworkRecord) {
        if !matches!(
            net.driver.wire_mac(),
            Some(WireMac::Translated | WireMac::Uplink)
        ) {
            return;
        }
        let ifname = net.parsed.interface.clone().unwrap_or_default();
        let Some(addr) = uplink::inspect(&ifname).ok().and_then(|f| f.ipv4().next()) else {
            return;
        };
        if let Some(up) = self.uplinks.get_mut(&ifname) {
            let vlan = net.parsed.vlan;
            let _ = up.program.clear_nat_range(vlan, addr);
            for (proto, port) in std::mem::take(&mut up.nat_ports) {
                let _ = up.program.remove_nat_port(vlan, addr, proto, port);
            }
        }
    }

    /// Checks a new mapping of `net`: its external port must be free of
    /// other mappings and host sockets, and not the host's ephemeral ports.
    /// Returns the port (one picked for 0).
    pub(super) fn check_mapping(
        &self,
        net: &NetworkRecord,
        field: &str,
        proto: u8,
        external: u16,
        taken: &[(u8, u16)],
    ) -> ApiResult<u16> {
        let ifname = net.parsed.interface.as_deref().unwrap_or_default();
        let addr = uplink::inspect(ifname)
            .ok()
            .and_then(|f| f.ipv4().next())
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        let used = |p: u16| {
            taken.contains(&(proto, p))
                || self
                    .mappings_of(net)
                    .iter()
                    .any(|m| m.proto == proto && m.external == p)
        };
        let pool = pool(net.parsed.nat_ports)?;
        if external == 0 {
            // Picked from the top of the pool down, so dynamic ports (from
            // the bottom up) and picked ones rarely meet.
            return (*pool.start()..=*pool.end())
                .rev()
                .find(|&p| !used(p) && !host_holds(proto, p, addr))
                .ok_or_else(|| conflict(field, "no free port left to map"));
        }
        let eph = host_ephemeral_range();
        if eph.contains(&external) {
            return Err(invalid(
                field,
                format!(
                    "{external} is in the host's ephemeral range {}-{}, where the host's own connections take their ports; map a port outside it",
                    eph.start(),
                    eph.end()
                ),
            ));
        }
        if used(external) {
            return Err(conflict(
                field,
                format!(
                    "port {external} is already mapped on network '{}'",
                    net.name
                ),
            ));
        }
        if host_holds(proto, external, addr) {
            return Err(conflict(
                field,
                format!("a host socket holds port {external} on {addr}"),
            ));
        }
        Ok(external)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_never_meets_the_ephemeral_range() {
        let eph = host_ephemeral_range();
        let p = pool(None).unwrap();
        assert!(p.start() > eph.end());
        assert!(pool(Some((*eph.start(), *eph.start() + 10))).is_err());
        assert!(pool(Some((2000, 2100))).is_ok() || eph.contains(&2000));
    }

    #[test]
    fn routes_parse() {
        // Whatever the machine has, parsing does not panic and finds only
        // default routes with a gateway.
        let _ = default_route();
        assert_eq!(router_of("no-such-interface"), None);
    }
}
