//! Overlay networks: the VXLAN tunnel port and the CA->PA table.
//!
//! One VXLAN device per UDP port (`vsx<port>`, external mode) carries every
//! overlay network of the host; the kernel builds and parses the outer
//! headers, TC programs choose the tunnel key (xdp-prog/fastpath.bpf.c).
//! Each overlay network has a tunnel TAP (`vst<id>`), its tunnel port in
//! the datapath: what the slow path sends to another host is written to
//! it and encapsulated by the kernel, and what the kernel decapsulates but
//! does not deliver itself (TAP endpoints, policed ports, broadcasts)
//! arrives through it. Both paths thus put the same bytes on the wire.
//!
//! The CA->PA table of a network is its endpoints (on this host, at our
//! provider address), static entries (`network mapping add`, persisted)
//! and, with etcd, what other hosts published. Entries elsewhere are
//! pushed to the datapath (their MACs lead to the tunnel port, the switch
//! answers ARP and neighbour solicitations for them) and to the kernel
//! (FDB entries marked "tunnel" with the PA, and the set of peers VXLAN is
//! accepted from).
//!
//! HNS's RemoteSubnetRoute policies on a network give it a distributed
//! router: other customer subnets of the VSID, each behind a host's router
//! MAC at its PA. This host's router MAC is [`router_mac`] of its PA.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use super::errors::{conflict, internal, invalid, plumb_error};
use super::fastpath::{fast_error, ifname};
use super::plumb::{self, TapOrigin};
use super::state::{NetworkRecord, StaticMapping};
use super::{ApiResult, Controller, PortHandle};
use crate::api::{self, ApiError, ErrorKind, Reply};
use crate::datapath::{NetId, PortKind};
use crate::ebpf::fastpath::{
    fdb_flags, port_flags, FdbEntry, FpPort, FpTunnel, FpVtep, PeerKey, Program,
};
use crate::ifname::IfName;
use crate::pipeline::overlay::Router;
use crate::policy::{parse_policy, Policy, RemoteSubnetRoute};
use crate::wire::MacAddr;

/// Bytes VXLAN adds around a frame: outer IPv4 (20), UDP (8), VXLAN (8)
/// and the inner Ethernet header (14), which the endpoint's MTU does not
/// count.
pub const VXLAN_OVERHEAD: u32 = 50;

/// A VXLAN device, shared by the overlay networks on its port.
#[derive(Debug)]
pub(super) struct Vtep {
    pub ifname: String,
    pub ifindex: u32,
    pub users: usize,
}

/// A running overlay network's tunnel.
#[derive(Debug)]
pub(super) struct TunnelHandle {
    pub tap: String,
    pub tap_index: u32,
    pub vni: u32,
    pub port: u16,
    pub pa: Ipv4Addr,
    /// Where the VTEP guard runs (the provider interface), if found.
    pub guard: Option<String>,
    /// The entries elsewhere as pushed to the datapath and the kernel.
    pub applied: BTreeMap<IpAddr, (MacAddr, Ipv4Addr)>,
    /// The kernel's tunnel entries (remote endpoints' and remote
    /// routers' MACs, and their PAs) as pushed.
    pub tunnels: BTreeMap<MacAddr, Ipv4Addr>,
}

/// This host's distributed router MAC on its overlay networks: 0e:2a (a
/// locally administered prefix) and then its provider address, so that
/// every host can work out another's from its PA.
pub fn router_mac(pa: Ipv4Addr) -> MacAddr {
    let o = pa.octets();
    MacAddr([0x0e, 0x2a, o[0], o[1], o[2], o[3]])
}

/// Network `net`'s RemoteSubnetRoute policies.
pub(super) fn remote_routes(net: &NetworkRecord) -> Vec<RemoteSubnetRoute> {
    net.policies
        .iter()
        .filter_map(|r| match parse_policy(&r.document, "") {
            Ok(Policy::RemoteSubnetRoute(route)) => Some(route),
            _ => None,
        })
        .collect()
}

/// An entry published by another host (etcd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteMapping {
    pub mac: MacAddr,
    pub pa: Ipv4Addr,
    pub host: String,
}

/// The tunnel TAP of a network, from its id: stable across restarts.
pub fn tunnel_tap_name(net_id: &str) -> String {
    let tag: String = net_id
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(8)
        .collect();
    format!("vst{tag}")
}

fn vtep_name(port: u16) -> String {
    format!("vsx{port}")
}

/// The interface holding `pa`, in the daemon's namespace.
fn interface_with(pa: Ipv4Addr) -> Option<String> {
    let mut nl = crate::netns::netlink::Netlink::open().ok()?;
    let links = nl.links().ok()?;
    links.into_iter().map(|l| l.name).find(|name| {
        super::uplink::addresses(name)
            .iter()
            .any(|(ip, _)| *ip == IpAddr::V4(pa))
    })
}

impl Controller {
    /// The provider address of an overlay network on this host: the
    /// daemon's `--provider-address`, else the IPv4 address of the
    /// network's `interface`.
    pub(super) fn provider_address(&self, parsed: &super::NetworkOptions) -> ApiResult<Ipv4Addr> {
        if let Some(pa) = self.overlay.provider_address {
            return Ok(pa);
        }
        let Some(ifname) = &parsed.provider_interface else {
            return Err(invalid(
                "options.interface",
                "an overlay network needs this host's provider address: start vswitchd with --provider-address IP, or give -o interface=IFNAME (an interface with an IPv4 address)",
            ));
        };
        let facts = super::uplink::inspect(ifname).map_err(super::errors::uplink_error)?;
        let pa = facts.ipv4().next();
        pa.ok_or_else(|| {
            invalid(
                "options.interface",
                format!("'{ifname}' has no IPv4 address to be the provider address"),
            )
        })
    }

    /// HNS's overlay policies where they belong: a RemoteSubnetRoute on an
    /// overlay network (its VSID, a subnet not its own, another host's
    /// PA), a ProviderAddress on an overlay endpoint (this host's PA, the
    /// only one its traffic can come from).
    pub(super) fn check_overlay_policies(
        &self,
        docs: &[(String, serde_json::Value)],
        policies: &[Policy],
        on_network: bool,
        net: Option<&NetworkRecord>,
    ) -> ApiResult<()> {
        use super::policies::{setting, setting_path};
        let overlay = net.filter(|n| n.driver.tunnel());
        for ((path, doc), policy) in docs.iter().zip(policies) {
            let field = |name: &str| setting_path(path, doc, name);
            match policy {
                Policy::RemoteSubnetRoute(r) => {
                    let Some(net) = overlay.filter(|_| on_network) else {
                        return Err(invalid(
                            &format!("{path}.Type"),
                            "a RemoteSubnetRoute belongs to an overlay network (vswitchctl policy add --network NET)",
                        ));
                    };
                    let vsid = net.parsed.vsid.unwrap_or_default();
                    if r.isolation_id != vsid {
                        return Err(invalid(
                            &field("IsolationId"),
                            format!(
                                "{} is not the VSID of network '{}' ({vsid})",
                                r.isolation_id, net.name
                            ),
                        ));
                    }
                    let own = [
                        net.subnet4.map(|s| (IpAddr::V4(s.network()), s.prefix())),
                        net.subnet6.map(|s| (IpAddr::V6(s.network()), s.prefix())),
                    ];
                    for (addr, len) in own.into_iter().flatten() {
                        let subnet = crate::policy::Prefix { addr, len };
                        if subnet.overlaps(&r.destination_prefix) {
                            return Err(invalid(
                                &field("DestinationPrefix"),
                                format!(
                                    "overlaps the network's own subnet {addr}/{len}; a route is for a subnet on another host"
                                ),
                            ));
                        }
                    }
                    if self.provider_address(&net.parsed).ok() == Some(r.provider_address) {
                        return Err(invalid(
                            &field("ProviderAddress"),
                            format!(
                                "{} is this host's own provider address; a route leads to another host",
                                r.provider_address
                            ),
                        ));
                    }
                }
                Policy::ProviderAddress(p) => {
                    let Some(net) = overlay.filter(|_| !on_network) else {
                        return Err(invalid(
                            &format!("{path}.Type"),
                            "a ProviderAddress belongs to an endpoint of an overlay network",
                        ));
                    };
                    let ours = self.provider_address(&net.parsed)?;
                    if p.provider_address != ours {
                        // v1 names the field after its type.
                        let v1 = setting(doc, "PA").is_some();
                        let name = if v1 { "PA" } else { "ProviderAddress" };
                        return Err(invalid(
                            &field(name),
                            format!(
                                "{} is not this host's provider address ({ours}): an endpoint's traffic leaves from the host it is on (one on another host is a mapping: vswitchctl network mapping add)",
                                p.provider_address
                            ),
                        ));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Checks an overlay network's options at creation: its VSID (unique
    /// on this host) and that it has a provider address. Returns the MTU
    /// the network's endpoints default to and may have at most.
    pub(super) fn check_overlay(
        &self,
        driver: api::Driver,
        options: &BTreeMap<String, String>,
        parsed: &super::NetworkOptions,
    ) -> ApiResult<Option<u32>> {
        if !driver.tunnel() {
            for key in ["vsid", "vxlanport"] {
                if options.contains_key(key) {
                    return Err(invalid(
                        &format!("options.{key}"),
                        format!("only overlay networks have a {key}, not {driver} ones"),
                    ));
                }
            }
            return Ok(None);
        }
        let vsid = parsed.vsid.ok_or_else(|| {
            invalid(
                "options.vsid",
                "an overlay network needs -o vsid=N, its virtual subnet id (the VXLAN VNI, 1..=16777215)",
            )
        })?;
        if let Some(other) = self
            .state
            .networks
            .iter()
            .find(|n| n.parsed.vsid == Some(vsid))
        {
            return Err(conflict(
                "options.vsid",
                format!("network '{}' already has vsid {vsid}", other.name),
            ));
        }
        self.provider_address(parsed)?;
        let lower = match &parsed.provider_interface {
            Some(i) => {
                super::uplink::inspect(i)
                    .map_err(super::errors::uplink_error)?
                    .mtu
            }
            None => super::DEFAULT_MTU,
        };
        Ok(Some(lower.saturating_sub(VXLAN_OVERHEAD)))
    }

    /// Starts an overlay network's tunnel: the VXLAN device of its port,
    /// its tunnel TAP and port, the kernel's entries, the guard on the
    /// provider interface, then the table.
    pub(super) fn start_tunnel(
        &mut self,
        net: &NetworkRecord,
        dp: NetId,
        origin: TapOrigin,
    ) -> ApiResult<(PortHandle, TunnelHandle)> {
        let vni = net.parsed.vsid.unwrap_or_default();
        let port = net.parsed.vxlan_port;
        let pa = self.provider_address(&net.parsed)?;
        self.fast_path()?;
        self.acquire_vtep(port)?;
        let tap_name = tunnel_tap_name(&net.id);
        let made = plumb::tunnel_tap(&tap_name, net.mtu).map_err(|e| plumb_error(e, "tunnel"));
        let (tap, tap_index) = match made {
            Ok(t) => t,
            Err(e) => {
                self.release_vtep(port);
                return Err(e);
            }
        };
        let port_id = net.uplink_port_id.unwrap_or_default();
        let guard = net
            .parsed
            .provider_interface
            .clone()
            .or_else(|| interface_with(pa));
        let mut handle = TunnelHandle {
            tap: tap_name.clone(),
            tap_index,
            vni,
            port,
            pa,
            guard: None,
            applied: BTreeMap::new(),
            tunnels: BTreeMap::new(),
        };
        let result = (|| -> ApiResult<PortHandle> {
            let fp = self.fast_path()?;
            let slot = fp.slot(tap_index).map_err(fast_error)?;
            fp.set_port(
                tap_index,
                &FpPort {
                    port_id,
                    net: dp,
                    flags: port_flags::TUNNEL,
                    slot,
                    ..FpPort::default()
                },
            )
            .map_err(fast_error)?;
            fp.attach(&ifname(&tap_name)?, Program::TunnelInject)
                .map_err(fast_error)?;
            fp.set_tunnel(
                vni,
                &FpTunnel {
                    net: dp,
                    punt: tap_index,
                    slot,
                    pad: 0,
                },
            )
            .map_err(fast_error)?;
            if let Some(g) = &guard {
                fp.attach(&ifname(g)?, Program::VtepGuard)
                    .map_err(fast_error)?;
            }
            self.attach(
                port_id,
                dp,
                PortKind::Tunnel(Box::new(tap)),
                None,
                true,
                Vec::new(),
                None,
                Default::default(),
                None,
            )
            .map_err(internal)
        })();
        match result {
            Ok(port_handle) => {
                if let Some(g) = guard {
                    *self.overlay.guards.entry(g.clone()).or_default() += 1;
                    handle.guard = Some(g);
                }
                Ok((port_handle, handle))
            }
            Err(e) => {
                if let Some(fp) = self.fast.as_mut() {
                    let _ = fp.remove_tunnel(vni);
                    let _ = fp.remove_port(tap_index);
                }
                if origin == TapOrigin::Fresh {
                    plumb::delete_own(&tap_name, "tun");
                }
                self.release_vtep(port);
                Err(e)
            }
        }
    }

    /// The VXLAN device of `port`, made and attached on first use.
    fn acquire_vtep(&mut self, port: u16) -> ApiResult<u32> {
        if let Some(v) = self.overlay.vteps.get_mut(&port) {
            v.users += 1;
            return Ok(v.ifindex);
        }
        let name = vtep_name(port);
        let ifindex =
            plumb::vxlan_device(&name, port).map_err(|e| plumb_error(e, "options.vxlanport"))?;
        let result = (|| -> ApiResult<()> {
            let fp = self.fast_path()?;
            let slot = fp.slot(ifindex).map_err(fast_error)?;
            fp.set_port(
                ifindex,
                &FpPort {
                    flags: port_flags::VXLAN,
                    slot,
                    ..FpPort::default()
                },
            )
            .map_err(fast_error)?;
            fp.set_vtep(port, &FpVtep { ifindex, slot })
                .map_err(fast_error)?;
            fp.attach(&ifname(&name)?, Program::Tunnel)
                .map_err(fast_error)?;
            Ok(())
        })();
        if let Err(e) = result {
            if let Some(fp) = self.fast.as_mut() {
                let _ = fp.remove_vtep(port);
                let _ = fp.remove_port(ifindex);
            }
            plumb::delete_own(&name, "vxlan");
            return Err(e);
        }
        self.overlay.vteps.insert(
            port,
            Vtep {
                ifname: name,
                ifindex,
                users: 1,
            },
        );
        Ok(ifindex)
    }

    /// One network less uses the VXLAN device of `port`; the last one
    /// deletes it.
    fn release_vtep(&mut self, port: u16) {
        let Some(v) = self.overlay.vteps.get_mut(&port) else {
            return;
        };
        v.users = v.users.saturating_sub(1);
        if v.users > 0 {
            return;
        }
        let v = self.overlay.vteps.remove(&port).expect("present");
        if let Some(fp) = self.fast.as_mut() {
            let _ = fp.remove_vtep(port);
            let _ = fp.remove_port(v.ifindex);
            if let Ok(n) = IfName::new(&v.ifname) {
                let _ = fp.detach(&n);
            }
        }
        plumb::delete_own(&v.ifname, "vxlan");
    }

    /// Takes a stopping overlay network's tunnel out of the kernel (the
    /// datapath port goes with the network's other ports). `delete` also
    /// deletes the tunnel TAP (the network is removed).
    pub(super) fn stop_tunnel(&mut self, t: TunnelHandle, dp: NetId, delete: bool) {
        if let Some(fp) = self.fast.as_mut() {
            for mac in t.tunnels.keys() {
                let _ = fp.remove_fdb(dp, mac.0);
            }
            for key in fp.peers_of(dp) {
                let _ = fp.remove_peer(key);
            }
            let _ = fp.remove_tunnel(t.vni);
            let _ = fp.remove_port(t.tap_index);
            if let Ok(n) = IfName::new(&t.tap) {
                let _ = fp.detach(&n);
            }
        }
        if let Some(g) = &t.guard {
            let users = self.overlay.guards.entry(g.clone()).or_default();
            *users = users.saturating_sub(1);
            if *users == 0 {
                self.overlay.guards.remove(g);
                if let (Some(fp), Ok(n)) = (self.fast.as_mut(), IfName::new(g)) {
                    let _ = fp.detach_guard(&n);
                }
            }
        }
        if delete {
            plumb::delete_own(&t.tap, "tun");
        }
        self.release_vtep(t.port);
    }

    /// The VXLAN devices, for `datapath show`.
    pub(super) fn overlay_vteps(&self) -> Vec<api::VtepInfo> {
        let mut out: Vec<api::VtepInfo> = self
            .overlay
            .vteps
            .iter()
            .map(|(port, v)| api::VtepInfo {
                interface: v.ifname.clone(),
                port: *port,
                drops: self
                    .fast_stats_of(v.ifindex)
                    .map(|s| s.drops.into_iter().filter(|(_, n)| *n > 0).collect())
                    .unwrap_or_default(),
            })
            .collect();
        out.sort_by_key(|v| v.port);
        out
    }

    /// The ifindex of the VXLAN device of `port` (0: none).
    pub(super) fn overlay_vtep_index(&self, port: u16) -> u32 {
        self.overlay.vteps.get(&port).map_or(0, |v| v.ifindex)
    }

    /// The devices the overlay owns in the kernel's `ports` map (kept by
    /// the sweep after a restart).
    pub(super) fn overlay_devices(&self) -> Vec<u32> {
        let taps = self
            .nets
            .values()
            .filter_map(|rt| rt.overlay.as_ref().map(|t| t.tap_index));
        taps.chain(self.overlay.vteps.values().map(|v| v.ifindex))
            .collect()
    }

    /// Every entry of network `net`'s table that lives on another host:
    /// static ones, then those other hosts published (a static entry wins).
    fn elsewhere(&self, net: &NetworkRecord) -> BTreeMap<IpAddr, (MacAddr, Ipv4Addr)> {
        let mut out = BTreeMap::new();
        if let Some(remote) = net.parsed.vsid.and_then(|v| self.overlay.remote.get(&v)) {
            for (ip, m) in remote {
                out.insert(*ip, (m.mac, m.pa));
            }
        }
        for m in &net.mappings {
            out.insert(m.ip, (m.mac, m.pa));
        }
        out
    }

    /// The customer addresses of network `net` on other hosts (endpoints
    /// here may not take them).
    pub(super) fn addresses_elsewhere(&self, net: &NetworkRecord) -> BTreeSet<IpAddr> {
        self.elsewhere(net).into_keys().collect()
    }

    /// Tells the kernel that `mac` of network `dp` is behind the host at
    /// `pa`.
    fn tunnel_fdb(&mut self, dp: NetId, mac: MacAddr, pa: Ipv4Addr) -> ApiResult<()> {
        let Some(fp) = self.fast.as_mut() else {
            return Ok(());
        };
        let entry = FdbEntry {
            flags: fdb_flags::TUNNEL,
            remote: pa.octets(),
            ..FdbEntry::default()
        };
        fp.set_fdb(dp, mac.0, entry).map_err(fast_error)
    }

    /// Brings the datapath and the kernel to network `net`'s table: what
    /// changed since the last call is added, replaced or removed.
    pub(super) fn overlay_sync(&mut self, net: &NetworkRecord) -> ApiResult<()> {
        let want = self.elsewhere(net);
        let Some(dp) = self
            .nets
            .get(&net.id)
            .filter(|rt| rt.overlay.is_some())
            .map(|rt| rt.dp)
        else {
            return Ok(());
        };
        // The network's kernel entry: VNI, VXLAN device, our PA.
        self.fast_network(net, dp)?;
        let t = self
            .nets
            .get_mut(&net.id)
            .and_then(|rt| rt.overlay.as_mut())
            .expect("checked above");
        let had = std::mem::take(&mut t.applied);
        let had_tunnels = std::mem::take(&mut t.tunnels);
        let pa = t.pa;
        let routes = remote_routes(net);
        let local_macs: BTreeSet<MacAddr> =
            self.state.endpoints_of(&net.id).map(|e| e.mac).collect();
        let mut applied = BTreeMap::new();
        for (ip, (mac, pa)) in want {
            if local_macs.contains(&mac) {
                tracing::warn!(network = %net.name, %ip, %mac, "a mapping names the MAC of an endpoint here: ignored");
            } else {
                applied.insert(ip, (mac, pa));
            }
        }
        // The kernel's tunnel entries: remote endpoints and remote routers.
        let tunnels: BTreeMap<MacAddr, Ipv4Addr> = applied
            .values()
            .copied()
            .chain(routes.iter().map(|r| (r.router_mac, r.provider_address)))
            .collect();
        let mut result = Ok(());
        let router = (!routes.is_empty()).then(|| Router {
            mac: router_mac(pa),
            gateways: [net.gateway4.map(IpAddr::V4), net.gateway6.map(IpAddr::V6)]
                .into_iter()
                .flatten()
                .collect(),
            routes: routes
                .iter()
                .map(|r| (r.destination_prefix, r.router_mac))
                .collect(),
        });
        if let Err(e) = self.datapath.set_router(dp, router) {
            result = Err(internal(e));
        }
        // Removed or changed first (a MAC that moved to another address
        // must not be deleted after it was written).
        let mac_of = |m: &BTreeMap<IpAddr, (MacAddr, Ipv4Addr)>, ip| m.get(ip).map(|(mac, _)| *mac);
        for (ip, (mac, _)) in &had {
            if mac_of(&applied, ip) == Some(*mac) {
                continue;
            }
            if let Err(e) = self.datapath.set_remote(dp, *ip, None) {
                result = Err(internal(e));
            }
        }
        for (ip, (mac, _)) in &applied {
            if mac_of(&had, ip) == Some(*mac) {
                continue;
            }
            if let Err(e) = self.datapath.set_remote(dp, *ip, Some(*mac)) {
                result = Err(internal(e));
            }
        }
        for mac in had_tunnels.keys() {
            let gone = !tunnels.contains_key(mac) && !local_macs.contains(mac);
            if let (true, Some(fp)) = (gone, self.fast.as_mut()) {
                let _ = fp.remove_fdb(dp, mac.0);
            }
        }
        for (mac, pa) in &tunnels {
            if had_tunnels.get(mac) == Some(pa) {
                continue;
            }
            if let Err(e) = self.tunnel_fdb(dp, *mac, *pa) {
                result = Err(e);
            }
        }
        // The peers VXLAN is accepted from: the PAs the table and the
        // routes name.
        let peers: BTreeSet<Ipv4Addr> = tunnels.values().copied().collect();
        if let Some(fp) = self.fast.as_mut() {
            for key in fp.peers_of(dp) {
                if !peers.contains(&Ipv4Addr::from(key.pa)) {
                    let _ = fp.remove_peer(key);
                }
            }
            for pa in &peers {
                if let Err(e) = fp.set_peer(PeerKey {
                    net: dp,
                    pa: pa.octets(),
                }) {
                    result = Err(fast_error(e));
                }
            }
        }
        if let Some(t) = self
            .nets
            .get_mut(&net.id)
            .and_then(|rt| rt.overlay.as_mut())
        {
            t.applied = applied;
            t.tunnels = tunnels;
        }
        result
    }

    fn overlay_network(&self, name: &str) -> ApiResult<NetworkRecord> {
        let net = self.network(name)?.clone();
        if !net.driver.tunnel() {
            return Err(invalid(
                "network",
                format!(
                    "'{name}' is a {} network; only overlay networks have CA->PA mappings",
                    net.driver
                ),
            ));
        }
        Ok(net)
    }

    /// `network mappings NAME`: the whole table, by address.
    pub(super) fn mapping_list(&self, name: &str) -> ApiResult<Reply> {
        let net = self.overlay_network(name)?;
        let vsid = net.parsed.vsid.unwrap_or_default();
        let mut out = Vec::new();
        let pa = self
            .nets
            .get(&net.id)
            .and_then(|rt| rt.overlay.as_ref())
            .map(|t| t.pa)
            .or(self.overlay.provider_address);
        for ep in self.state.endpoints_of(&net.id) {
            for ip in super::endpoints::endpoint_ips(ep) {
                out.push(api::Mapping {
                    vsid,
                    ip: ip.to_string(),
                    mac_address: ep.mac.to_string(),
                    provider_address: pa.map(|p| p.to_string()).unwrap_or_default(),
                    source: "local".into(),
                    owner: Some(ep.name.clone()),
                });
            }
        }
        for m in &net.mappings {
            out.push(api::Mapping {
                vsid,
                ip: m.ip.to_string(),
                mac_address: m.mac.to_string(),
                provider_address: m.pa.to_string(),
                source: "static".into(),
                owner: None,
            });
        }
        let statics: BTreeSet<IpAddr> = net.mappings.iter().map(|m| m.ip).collect();
        if let Some(remote) = self.overlay.remote.get(&vsid) {
            for (ip, m) in remote.iter().filter(|(ip, _)| !statics.contains(ip)) {
                out.push(api::Mapping {
                    vsid,
                    ip: ip.to_string(),
                    mac_address: m.mac.to_string(),
                    provider_address: m.pa.to_string(),
                    source: "remote".into(),
                    owner: Some(m.host.clone()),
                });
            }
        }
        out.sort_by(|a, b| {
            let key = |m: &api::Mapping| m.ip.parse::<IpAddr>().ok();
            key(a).cmp(&key(b))
        });
        Ok(Reply::Mappings(out))
    }

    /// Checks a static mapping of `net` (an API request or a policy).
    pub(super) fn check_ca_mapping(
        &self,
        net: &NetworkRecord,
        ip: &str,
        mac: &str,
        pa: &str,
        field: &str,
    ) -> ApiResult<StaticMapping> {
        let f = |name: &str| format!("{field}{name}");
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| invalid(&f("IPAddress"), format!("'{ip}' is not an IP address")))?;
        let inside = match ip {
            IpAddr::V4(v4) => net.subnet4.is_some_and(|s| s.is_host(v4)),
            IpAddr::V6(v6) => net.subnet6.is_some_and(|s| s.is_host(v6)),
        };
        if !inside {
            return Err(invalid(
                &f("IPAddress"),
                format!(
                    "{ip} is not a host address of network '{}'s subnets",
                    net.name
                ),
            ));
        }
        let mac = super::ipam::parse_unicast_mac(mac)
            .map_err(|e| invalid(&f("MacAddress"), e.to_string()))?;
        let pa: Ipv4Addr = pa.parse().map_err(|_| {
            invalid(
                &f("ProviderAddress"),
                format!("'{pa}' is not an IPv4 address (provider addresses are IPv4)"),
            )
        })?;
        if pa.is_unspecified() || pa.is_multicast() || pa.is_broadcast() || pa.is_loopback() {
            return Err(invalid(
                &f("ProviderAddress"),
                format!("{pa} cannot be a VTEP's unicast address"),
            ));
        }
        if let Some(ep) = self
            .state
            .endpoints_of(&net.id)
            .find(|e| super::endpoints::endpoint_ips(e).contains(&ip) || e.mac == mac)
        {
            return Err(conflict(
                &f("IPAddress"),
                format!("endpoint '{}' of this host has {ip} or {mac}", ep.name),
            ));
        }
        if let Some(other) = self
            .elsewhere(net)
            .iter()
            .find(|(i, (m, _))| *m == mac && **i != ip && i.is_ipv4() == ip.is_ipv4())
        {
            return Err(conflict(
                &f("MacAddress"),
                format!("{mac} is already the MAC of {}", other.0),
            ));
        }
        Ok(StaticMapping { ip, mac, pa })
    }

    /// `network mapping add`: a static entry (replacing one for the same
    /// address).
    pub(super) fn mapping_add(&mut self, req: api::MappingAdd) -> ApiResult<Reply> {
        let net = self.overlay_network(&req.network)?;
        let m =
            self.check_ca_mapping(&net, &req.ip, &req.mac_address, &req.provider_address, "")?;
        let rec = self.edit_mappings(&net, |list| {
            list.retain(|o| o.ip != m.ip);
            list.push(m);
            list.sort_by_key(|o| o.ip);
        })?;
        tracing::info!(network = %rec.name, ip = %m.ip, mac = %m.mac, pa = %m.pa, "mapping added");
        self.mapping_list(&rec.name)
    }

    /// `network mapping rm`: removes a static entry.
    pub(super) fn mapping_remove(&mut self, network: &str, ip: &str) -> ApiResult<Reply> {
        let net = self.overlay_network(network)?;
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| invalid("IPAddress", format!("'{ip}' is not an IP address")))?;
        if !net.mappings.iter().any(|m| m.ip == addr) {
            return Err(ApiError::new(
                ErrorKind::NotFound,
                Some("IPAddress"),
                format!("network '{network}' has no static mapping for {addr}"),
            ));
        }
        let rec = self.edit_mappings(&net, |list| list.retain(|m| m.ip != addr))?;
        tracing::info!(network = %rec.name, ip = %addr, "mapping removed");
        self.mapping_list(&rec.name)
    }

    /// Changes the static entries of `net`, saves (undoing the change if
    /// that fails) and pushes the table; returns the record as it now is.
    fn edit_mappings(
        &mut self,
        net: &NetworkRecord,
        edit: impl FnOnce(&mut Vec<StaticMapping>),
    ) -> ApiResult<NetworkRecord> {
        let before = self.state.clone();
        let rec = self
            .state
            .networks
            .iter_mut()
            .find(|n| n.id == net.id)
            .expect("the caller found it");
        edit(&mut rec.mappings);
        let rec = rec.clone();
        if let Err(e) = self.save() {
            self.state = before;
            return Err(e);
        }
        self.overlay_sync(&rec)?;
        Ok(rec)
    }
}
