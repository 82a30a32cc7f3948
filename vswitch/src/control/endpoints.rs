//! Endpoints: validating a create request into a record (interface name,
//! addresses and MAC picked or checked), plumbing the vNIC and connecting
//! it to the datapath and the uplink, stopping and removing it.

use std::collections::HashSet;
use std::net::IpAddr;

use super::errors::{
    conflict, internal, invalid, invalid_ifname, netns_error, plumb_error, uplink_error,
};
use super::plumb::{self, TapConfig, TapOrigin};
use super::state::{EndpointRecord, NetworkRecord};
use super::{
    check_name, ipam, new_id, uplink, ApiResult, Controller, EndpointRuntime, MacPool, PortHandle,
    Subnet, DEFAULT_IFNAME,
};
use crate::api::{self, ApiError, Backend, ErrorKind, Reply, WireMac};
use crate::datapath::{PortKind, PortSecurity};
use crate::ifname::IfName;
use crate::port::tap::TapOwner;
use crate::sys::random_bytes;
use crate::wire::MacAddr;

/// The addresses an endpoint may send from, unless it may spoof.
pub(super) fn security_of(ep: &EndpointRecord) -> Option<PortSecurity> {
    (!ep.allow_spoofing).then(|| PortSecurity::new(ep.mac, ep.ipv4, ep.ipv6))
}

impl Controller {
    pub(super) fn endpoint_create(&mut self, req: api::EndpointCreate) -> ApiResult<api::Endpoint> {
        let (net, mut rec) = self.check_endpoint(req)?;
        // overlay across hosts: the addresses are claimed first, so one
        // another host holds is refused before anything changes here.
        self.claim_endpoint(&rec)?;
        // Undone whole on failure, id counters too: a refused request
        // changes nothing.
        let before = self.state.clone();
        rec.port_id = self.state.allocate_port_id();
        self.state.endpoints.push(rec.clone());
        if let Err(e) = self.save() {
            self.state = before;
            self.release_endpoint(&rec);
            return Err(e);
        }
        match self.start_endpoint(&net, &rec, TapOrigin::Fresh) {
            Ok(port) => {
                self.endpoints
                    .insert(rec.id.clone(), EndpointRuntime::attached(port, &rec));
            }
            Err(e) => {
                self.state = before;
                self.save_after_undo();
                self.release_endpoint(&rec);
                return Err(e);
            }
        }
        if !rec.policies.is_empty() {
            if let Err(e) = self.push_nat(&net) {
                let _ = self.endpoint_remove(&rec.name);
                return Err(e);
            }
        }
        tracing::info!(endpoint = %rec.name, network = %net.name, netns = %rec.netns, "endpoint created");
        Ok(self.endpoint_view(&rec))
    }

    pub(super) fn check_endpoint(
        &self,
        req: api::EndpointCreate,
    ) -> ApiResult<(NetworkRecord, EndpointRecord)> {
        check_name("name", &req.name)?;
        if self.state.endpoint(&req.name).is_some() {
            return Err(ApiError::new(
                ErrorKind::AlreadyExists,
                Some("name"),
                format!("an endpoint named '{}' already exists", req.name),
            ));
        }
        let net = self.network(&req.network)?.clone();
        if !self.nets.contains_key(&net.id) {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                Some("network"),
                format!("network '{}' failed to start; see the daemon log", net.name),
            ));
        }
        api::check_labels(&req.labels).map_err(|e| invalid("labels", e))?;
        let id = new_id();
        if req.handoff {
            check_handoff(&req, net.driver)?;
        } else {
            plumb::resolve_netns(&req.netns).map_err(netns_error)?;
        }
        let backend = if req.handoff {
            Backend::Veth
        } else {
            req.backend.unwrap_or_default()
        };
        let policies = if req.policies.is_null() {
            Vec::new()
        } else {
            self.check_new_policies(&req.policies, "policies", None, &net.id)?
        };
        if !net.driver.switched() {
            if req.backend.is_some() {
                return Err(invalid(
                    "backend",
                    format!(
                        "the {} driver gives endpoints loopback only: no --backend",
                        net.driver
                    ),
                ));
            }
            if req.ip.is_some()
                || req.ipv6.is_some()
                || req.mac_address.is_some()
                || req.ifname.is_some()
            {
                return Err(invalid(
                    "network",
                    format!("the {} driver gives endpoints loopback only: no --ip, --ipv6, --mac or --ifname", net.driver),
                ));
            }
            return Ok((
                net.clone(),
                EndpointRecord {
                    id,
                    name: req.name,
                    network_id: net.id,
                    netns: req.netns,
                    ifname: "lo".into(),
                    mac: MacAddr([0; 6]),
                    ipv4: None,
                    ipv6: None,
                    allow_spoofing: false,
                    port_id: 0, // given by endpoint_create
                    dhcp_guard: true,
                    router_guard: true,
                    default_block: false,
                    policies,
                    backend: api::Backend::Tap,
                    mirror: api::PortMirroring::None,
                    handoff: false,
                    labels: req.labels,
                },
            ));
        }
        let ifname = match &req.ifname {
            _ if req.handoff => plumb::VethNames::of(&id).vnic,
            Some(name) => name.clone(),
            None => DEFAULT_IFNAME.to_owned(),
        };
        IfName::checked(&ifname).map_err(|e| invalid_ifname("ifname", e))?;
        if let Some(other) =
            self.state.endpoints.iter().find(|e| {
                !req.handoff && e.ifname == ifname && plumb::same_netns(&e.netns, &req.netns)
            })
        {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                Some("ifname"),
                format!(
                    "{ifname} in {} is already endpoint '{}'",
                    req.netns, other.name
                ),
            ));
        }
        let peers: Vec<&EndpointRecord> = self.state.endpoints_of(&net.id).collect();
        // The host's own addresses on the uplink are on the same wire.
        let wire = net
            .parsed
            .interface
            .as_deref()
            .and_then(|i| uplink::inspect(i).ok());
        // overlay: customer addresses of other hosts are taken too.
        let elsewhere = self.addresses_elsewhere(&net);
        for (field, asked) in [("ip", &req.ip), ("ipv6", &req.ipv6)] {
            if let Some(ip) = asked.as_deref().and_then(|s| s.parse::<IpAddr>().ok()) {
                if elsewhere.contains(&ip) {
                    return Err(conflict(
                        field,
                        format!("{ip} is a customer address on another host of the overlay network (see `vswitchctl network mappings {}`)", net.name),
                    ));
                }
            }
        }
        let ipv4 = pick_address(
            "ip",
            req.ip.as_deref(),
            net.subnet4,
            net.gateway4,
            peers
                .iter()
                .filter_map(|p| Some((p.name.as_str(), p.ipv4?))),
            wire.iter()
                .flat_map(|f| f.ipv4())
                .chain(elsewhere.iter().filter_map(|ip| match ip {
                    IpAddr::V4(v4) => Some(*v4),
                    IpAddr::V6(_) => None,
                })),
        )?;
        let ipv6 = pick_address(
            "ipv6",
            req.ipv6.as_deref(),
            net.subnet6,
            net.gateway6,
            peers
                .iter()
                .filter_map(|p| Some((p.name.as_str(), p.ipv6?))),
            wire.iter()
                .flat_map(|f| f.ipv6())
                .chain(elsewhere.iter().filter_map(|ip| match ip {
                    IpAddr::V6(v6) => Some(*v6),
                    IpAddr::V4(_) => None,
                })),
        )?;
        let mac = match &req.mac_address {
            Some(s) => {
                let mac = ipam::parse_unicast_mac(s).map_err(|e| invalid("mac", e.to_string()))?;
                if self.macs_in_use().contains(&mac) {
                    return Err(conflict(
                        "mac",
                        format!("{mac} is already in use on this switch"),
                    ));
                }
                // The uplink's frames would all be steered to the endpoint.
                if wire.as_ref().is_some_and(|f| f.mac == mac) {
                    return Err(conflict("mac", format!("{mac} is the uplink's own MAC")));
                }
                mac
            }
            None => self.allocate_mac(&net.mac_pool)?,
        };
        Ok((
            net.clone(),
            EndpointRecord {
                id,
                name: req.name,
                network_id: net.id,
                netns: req.netns,
                ifname,
                mac,
                ipv4,
                ipv6,
                allow_spoofing: req.allow_spoofing,
                port_id: 0, // given by endpoint_create
                dhcp_guard: req.dhcp_guard.unwrap_or(true),
                router_guard: req.router_guard.unwrap_or(true),
                default_block: false,
                policies,
                backend,
                mirror: api::PortMirroring::None,
                handoff: req.handoff,
                labels: req.labels,
            },
        ))
    }

    pub(super) fn macs_in_use(&self) -> HashSet<MacAddr> {
        let eps = self.state.endpoints.iter().map(|e| e.mac);
        let hosts = self.state.networks.iter().filter_map(|n| n.host_mac);
        eps.chain(hosts).collect()
    }

    pub(super) fn allocate_mac(&self, pool: &MacPool) -> ApiResult<MacAddr> {
        let mut seed = [0u8; 8];
        random_bytes(&mut seed).map_err(internal)?;
        pool.allocate(&self.macs_in_use(), u64::from_le_bytes(seed))
            .ok_or_else(|| conflict("mac", format!("MAC pool {pool} is exhausted")))
    }

    /// Plumbs the endpoint's vNIC and connects it to the datapath. Returns
    /// `None` for endpoints with no port (`none` driver).
    pub(super) fn start_endpoint(
        &mut self,
        net: &NetworkRecord,
        ep: &EndpointRecord,
        origin: TapOrigin,
    ) -> ApiResult<Option<PortHandle>> {
        let ns = if ep.handoff {
            crate::netns::Netns::root()
        } else {
            plumb::resolve_netns(&ep.netns)
        }
        .map_err(netns_error)?;
        if !net.driver.switched() {
            plumb::loopback_only(&ns).map_err(|e| plumb_error(e, "netns"))?;
            return Ok(None);
        }
        let cfg = TapConfig {
            ifname: ep.ifname.clone(),
            mac: ep.mac,
            mtu: net.mtu,
            ipv4: ep.ipv4.zip(net.subnet4.map(|s| s.prefix())),
            ipv6: ep.ipv6.zip(net.subnet6.map(|s| s.prefix())),
            gateway4: net.gateway4,
            gateway6: net.gateway6,
            offload: net.parsed.offload,
            handoff: ep.handoff,
        };
        let dp = self
            .nets
            .get(&net.id)
            .map(|rt| rt.dp)
            .ok_or_else(|| internal("network not running"))?;
        if ep.backend == Backend::Veth {
            return self
                .start_veth_endpoint(net, ep, &ns, &cfg, dp, origin)
                .map(Some);
        }
        let tap = plumb::endpoint_tap(&ns, &cfg, origin).map_err(|e| plumb_error(e, "ifname"))?;
        let owner = match tap.owner() {
            Ok(owner) => owner,
            Err(e) => {
                if origin == TapOrigin::Fresh {
                    drop(tap);
                    plumb::delete_endpoint_tap(&ns, &cfg.ifname);
                }
                return Err(internal(e));
            }
        };
        let security = security_of(ep);
        let layers = self.layers_of(ep);
        let ips = endpoint_ips(ep);
        let addrs = ips.iter().map(|ip| (*ip, ep.mac)).collect();
        let mut port = match self.attach(
            ep.port_id,
            dp,
            PortKind::Local(Box::new(tap)),
            security,
            cfg.offload,
            addrs,
            Some(ep.mac),
            layers,
            None,
        ) {
            Ok(port) => port,
            Err(e) => {
                if origin == TapOrigin::Fresh {
                    plumb::delete_endpoint_tap(&ns, &cfg.ifname);
                }
                return Err(internal(e));
            }
        };
        port.tap = Some(owner);
        let mirrored = self.mirror_port(ep, port.id);
        if let Err(e) = mirrored.and_then(|()| self.steer_endpoint(net, ep, &ips, false)) {
            let _ = self.datapath.remove_port(port.id);
            if origin == TapOrigin::Fresh {
                plumb::delete_endpoint_tap(&ns, &cfg.ifname);
            }
            return Err(e);
        }
        Ok(Some(port))
    }

    /// A veth endpoint: the pair and its punt TAP, the TAP a datapath port
    /// as a TAP endpoint's is (the slow path cannot tell them apart), the
    /// fast path on the host end.
    fn start_veth_endpoint(
        &mut self,
        net: &NetworkRecord,
        ep: &EndpointRecord,
        ns: &crate::netns::Netns,
        cfg: &TapConfig,
        dp: crate::datapath::NetId,
        origin: TapOrigin,
    ) -> ApiResult<PortHandle> {
        let names = plumb::VethNames::of(&ep.id);
        let veth =
            plumb::endpoint_veth(ns, cfg, &names, origin).map_err(|e| plumb_error(e, "ifname"))?;
        let undo = || {
            if origin == TapOrigin::Fresh {
                plumb::delete_veth(&names);
            }
        };
        let owner = match veth.punt.owner() {
            Ok(owner) => owner,
            Err(e) => {
                undo();
                return Err(internal(e));
            }
        };
        let layers = self.layers_of(ep);
        let handle = match self.fast_attach(net, dp, ep, &veth, &names, &layers.0) {
            Ok(h) => h,
            Err(e) => {
                undo();
                return Err(e);
            }
        };
        let ips = endpoint_ips(ep);
        let addrs = ips.iter().map(|ip| (*ip, ep.mac)).collect();
        let kernel = super::fastpath::kernel_delivers(net, ep, &layers.0);
        let attached = self.attach(
            ep.port_id,
            dp,
            PortKind::Local(Box::new(veth.punt)),
            security_of(ep),
            true,
            addrs,
            Some(ep.mac),
            layers,
            Some(crate::datapath::KernelPort::Peer {
                ifindex: veth.host_index,
                slot: handle.slot,
            }),
        );
        let mut port = match attached {
            Ok(port) => port,
            Err(e) => {
                self.fast_detach(&handle);
                undo();
                return Err(internal(e));
            }
        };
        port.tap = Some(owner);
        port.veth = Some(handle.clone());
        let mirrored = self.mirror_port(ep, port.id);
        if let Err(e) = mirrored.and_then(|()| self.steer_endpoint(net, ep, &ips, kernel)) {
            let _ = self.datapath.remove_port(port.id);
            self.fast_detach(&handle);
            undo();
            return Err(e);
        }
        Ok(port)
    }

    /// Tells the datapath the endpoint's port mirroring role (the fast
    /// path's side is in `fastpath::flags_of`).
    pub(super) fn mirror_port(
        &mut self,
        ep: &EndpointRecord,
        port: crate::datapath::PortId,
    ) -> ApiResult<()> {
        if ep.mirror == api::PortMirroring::None {
            return Ok(());
        }
        self.datapath
            .set_port_mirror(port, ep.mirror)
            .map_err(internal)
    }

    /// Frames from the wire for this endpoint go to the switch, not the
    /// host: its MAC on a transparent network, its addresses on both.
    pub(super) fn steer_endpoint(
        &mut self,
        net: &NetworkRecord,
        ep: &EndpointRecord,
        ips: &[IpAddr],
        kernel: bool,
    ) -> ApiResult<()> {
        let steered = net.driver.wire_mac() != Some(WireMac::Translated);
        if let Some(up) = net
            .parsed
            .interface
            .as_ref()
            .and_then(|i| self.uplinks.get_mut(i))
            .filter(|_| steered)
        {
            let mac = (net.driver.wire_mac() == Some(WireMac::Endpoint)).then_some(ep.mac);
            if let Err(e) = up.steer(net.parsed.vlan, mac, ips, kernel) {
                up.unsteer(net.parsed.vlan, mac, ips);
                return Err(uplink_error(e));
            }
        }
        Ok(())
    }

    /// Takes the endpoint out of the datapath and deletes its TAP. The TAP
    /// is reached through the daemon's own descriptor when it has one (so
    /// wherever the device is, whatever its namespace is called now), by
    /// name in the namespace otherwise. Returns what could not be done.
    pub(super) fn stop_endpoint(
        &mut self,
        net: &NetworkRecord,
        ep: &EndpointRecord,
    ) -> Option<String> {
        if self.invalid.contains_key(&ep.id) {
            return None;
        }
        let mut deleted = false;
        if let Some(port) = self.endpoints.remove(&ep.id).and_then(|rt| rt.port) {
            // Not persistent any more: the device goes when the datapath's
            // descriptor and this one are closed, just below.
            deleted = match port.tap.as_ref().map(TapOwner::unpersist) {
                Some(Ok(())) => true,
                Some(Err(e)) => {
                    tracing::warn!(endpoint = %ep.name, error = %e, "could not release TAP");
                    false
                }
                None => false,
            };
            let _ = self.datapath.remove_port(port.id);
            if let Some(h) = &port.veth {
                self.fast_detach(h);
                plumb::delete_veth(&h.names);
                deleted = true;
            }
        }
        if ep.backend == Backend::Veth && !deleted {
            // Never attached in this run (a failed restart): by name.
            plumb::delete_veth(&plumb::VethNames::of(&ep.id));
            deleted = true;
        }
        let steered = net.driver.wire_mac() != Some(WireMac::Translated);
        if let Some(up) = net
            .parsed
            .interface
            .as_ref()
            .and_then(|i| self.uplinks.get_mut(i))
            .filter(|_| steered)
        {
            let mac = (net.driver.wire_mac() == Some(WireMac::Endpoint)).then_some(ep.mac);
            up.unsteer(net.parsed.vlan, mac, &endpoint_ips(ep));
        }
        if !net.driver.switched() || deleted {
            return None;
        }
        match plumb::resolve_netns(&ep.netns) {
            Ok(ns) => {
                plumb::delete_endpoint_tap(&ns, &ep.ifname);
                None
            }
            Err(e) => Some(format!(
                "could not delete {} in {}: {}; the daemon holds no descriptor of it",
                ep.ifname, ep.netns, e
            )),
        }
    }

    pub(super) fn endpoint_remove(&mut self, name: &str) -> ApiResult<Reply> {
        let ep = self.endpoint(name)?.clone();
        let net = self
            .state
            .network_by_id(&ep.network_id)
            .cloned()
            .ok_or_else(|| internal("endpoint's network is missing from the state"))?;
        let warning = self.stop_endpoint(&net, &ep);
        let before = self.state.clone();
        self.state.endpoints.retain(|e| e.id != ep.id);
        if let Err(e) = self.save() {
            self.state = before;
            let rt = match self.start_endpoint(&net, &ep, TapOrigin::Existing) {
                Ok(port) => EndpointRuntime::attached(port, &ep),
                Err(e) => EndpointRuntime::detached(e.to_string()),
            };
            self.endpoints.insert(ep.id.clone(), rt);
            return Err(e);
        }
        self.invalid.remove(&ep.id);
        self.release_endpoint(&ep);
        // Its port mappings go with it.
        if let Err(e) = self.push_nat(&net) {
            tracing::warn!(network = %net.name, error = %e, "could not update the translation");
        }
        tracing::info!(endpoint = %name, "endpoint removed");
        Ok(Reply::Removed {
            name: name.to_owned(),
            warning,
        })
    }
}

/// A hand-off request names no namespace or interface (the runtime moves
/// and names the vNIC) and is a veth endpoint of a switched network.
fn check_handoff(req: &api::EndpointCreate, driver: api::Driver) -> ApiResult<()> {
    if !req.netns.is_empty() {
        return Err(invalid(
            "netns",
            "a handed-off vNIC is made in vswitchd's namespace: no namespace",
        ));
    }
    if req.ifname.is_some() {
        return Err(invalid(
            "ifname",
            "a handed-off vNIC is named by the runtime that takes it: no interface name",
        ));
    }
    if req.backend == Some(Backend::Tap) {
        return Err(invalid(
            "backend",
            "a handed-off vNIC is a veth pair (the switch finds it by its host end)",
        ));
    }
    if !driver.switched() {
        return Err(invalid(
            "handoff",
            format!("the {driver} driver gives endpoints loopback only: nothing to hand off"),
        ));
    }
    Ok(())
}

pub(super) fn endpoint_ips(ep: &EndpointRecord) -> Vec<IpAddr> {
    let v4 = ep.ipv4.map(IpAddr::V4);
    v4.into_iter().chain(ep.ipv6.map(IpAddr::V6)).collect()
}

/// An endpoint's address in one family: the one asked for, checked, or the
/// lowest free one of the subnet. `peers` are the network's other endpoints
/// and their addresses; `wire` the host's own addresses on the uplink.
fn pick_address<'a, S: Subnet>(
    field: &str,
    asked: Option<&str>,
    subnet: Option<S>,
    gateway: Option<S::Addr>,
    peers: impl Iterator<Item = (&'a str, S::Addr)>,
    wire: impl Iterator<Item = S::Addr>,
) -> ApiResult<Option<S::Addr>> {
    let peers: Vec<(&'a str, S::Addr)> = peers.collect();
    let mut taken: HashSet<S::Addr> = wire.collect();
    let Some(subnet) = subnet else {
        return match asked {
            Some(_) => Err(invalid(
                field,
                format!("the network has no {} subnet", S::FAMILY),
            )),
            None => Ok(None),
        };
    };
    let Some(text) = asked else {
        taken.extend(peers.iter().map(|(_, ip)| *ip));
        taken.extend(gateway);
        return subnet
            .allocate(&taken)
            .map(Some)
            .ok_or_else(|| conflict(field, format!("no free address left in {subnet}")));
    };
    let ip: S::Addr = text
        .parse()
        .map_err(|_| invalid(field, format!("'{text}' is not an {} address", S::FAMILY)))?;
    if !subnet.is_host(ip) {
        return Err(invalid(
            field,
            format!("{ip} is not a host address of the network's subnet {subnet}"),
        ));
    }
    if taken.contains(&ip) {
        return Err(conflict(
            field,
            format!("{ip} is the host's own address on the uplink"),
        ));
    }
    if Some(ip) == gateway {
        return Err(conflict(field, format!("{ip} is the network's gateway")));
    }
    if let Some((name, _)) = peers.iter().find(|(_, p)| *p == ip) {
        return Err(conflict(
            field,
            format!("{ip} is already used by endpoint '{name}'"),
        ));
    }
    Ok(Some(ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{Ipv4Cidr, Ipv6Cidr};
    use std::net::Ipv4Addr;

    #[test]
    fn handoff_names_no_namespace_or_interface() {
        let req = |f: fn(&mut api::EndpointCreate)| {
            let mut r = api::EndpointCreate {
                handoff: true,
                ..Default::default()
            };
            f(&mut r);
            r
        };
        assert!(check_handoff(&req(|_| {}), api::Driver::Nat).is_ok());
        for (r, field) in [
            (req(|r| r.netns = "ns1".into()), "netns"),
            (req(|r| r.ifname = Some("eth0".into())), "ifname"),
            (req(|r| r.backend = Some(Backend::Tap)), "backend"),
        ] {
            let e = check_handoff(&r, api::Driver::Internal).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{e}");
        }
        let e = check_handoff(&req(|_| {}), api::Driver::None).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("handoff"));
    }

    #[test]
    fn addresses_skip_gateway_peers_and_the_hosts_own() {
        use std::net::Ipv6Addr;
        let s4: Ipv4Cidr = "10.0.0.0/24".parse().unwrap();
        let gw = Some(Ipv4Addr::new(10, 0, 0, 1));
        let peers = [("a", Ipv4Addr::new(10, 0, 0, 2))];
        let wire = [Ipv4Addr::new(10, 0, 0, 3)];
        let got = pick_address(
            "ip",
            None,
            Some(s4),
            gw,
            peers.into_iter(),
            wire.into_iter(),
        );
        assert_eq!(got.unwrap(), Some(Ipv4Addr::new(10, 0, 0, 4)));
        for (asked, expect) in [
            ("10.0.0.3", "host's own"),
            ("10.0.0.2", "endpoint 'a'"),
            ("10.0.0.1", "gateway"),
            ("10.0.0.255", "not a host address"),
            ("fd00::1", "not an IPv4 address"),
        ] {
            let e = pick_address(
                "ip",
                Some(asked),
                Some(s4),
                gw,
                peers.into_iter(),
                wire.into_iter(),
            )
            .unwrap_err();
            assert_eq!(e.field.as_deref(), Some("ip"));
            assert!(e.message.contains(expect), "{asked}: {e}");
        }
        let s6: Ipv6Cidr = "fd00::/64".parse().unwrap();
        let wire6: [Ipv6Addr; 1] = ["fd00::1".parse().unwrap()];
        let got = pick_address(
            "ipv6",
            None,
            Some(s6),
            None,
            std::iter::empty(),
            wire6.into_iter(),
        );
        assert_eq!(got.unwrap(), Some("fd00::2".parse().unwrap()));
        let none: Option<Ipv6Cidr> = None;
        let e = pick_address(
            "ipv6",
            Some("fd00::5"),
            none,
            None,
            std::iter::empty(),
            std::iter::empty(),
        );
        assert!(e.unwrap_err().message.contains("no IPv6 subnet"));
    }
}
