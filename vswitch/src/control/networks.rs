//! Networks: validating a create request into a record, starting one in
//! the datapath (with its host port and its port on an uplink), stopping
//! and removing it, and attaching and releasing the uplinks networks share.

use std::net::{IpAddr, Ipv4Addr};

use super::errors::{conflict, internal, invalid, plumb_error, uplink_error};
use super::plumb::{self, TapConfig, TapOrigin};
use super::state::{Driver, NetworkRecord};
use super::{
    check_name, natmode, new_id, uplink, ApiResult, Controller, Ipv4Cidr, Ipv6Cidr, MacPool,
    NetRuntime, NetworkOptions, PortHandle, DEFAULT_MTU, DEFAULT_POOL,
};
use crate::api::{self, ApiError, ErrorKind, HostPort, Reply, WireMac};
use crate::datapath::{NetId, PortKind};
use crate::pipeline::NetworkConfig;

impl Controller {
    // ---- networks ----

    // Creation records first and plumbs second; removal unplumbs first and
    // records second. A crash in between leaves a record whose kernel side
    // is missing, which the next start completes (as it does after any
    // crash), never a device no record knows about.

    pub(super) fn network_create(&mut self, req: api::NetworkCreate) -> ApiResult<api::Network> {
        let mut rec = self.check_network(req)?;
        // Undone whole on failure, id counters too: a refused request
        // changes nothing.
        let before = self.state.clone();
        rec.dp_id = self.state.allocate_net_id();
        if rec.host_ifname.is_some() {
            rec.host_port_id = Some(self.state.allocate_port_id());
        }
        // The uplink's port, or an overlay network's tunnel port.
        if rec.parsed.interface.is_some() || rec.driver.tunnel() {
            rec.uplink_port_id = Some(self.state.allocate_port_id());
        }
        self.state.networks.push(rec.clone());
        if let Err(e) = self.save() {
            self.state = before;
            return Err(e);
        }
        match self.start_network(&rec, TapOrigin::Fresh) {
            Ok(rt) => {
                self.nets.insert(rec.id.clone(), rt);
                if let Err(e) = self.overlay_sync(&rec) {
                    let _ = self.network_remove(&rec.name);
                    return Err(e);
                }
            }
            Err(e) => {
                self.state = before;
                self.save_after_undo();
                return Err(e);
            }
        }
        self.publish_network(&rec);
        tracing::info!(network = %rec.name, driver = rec.driver.name(), "network created");
        Ok(self.network_view(&rec))
    }

    /// Validates a create request into the record it would add.
    pub(super) fn check_network(&self, req: api::NetworkCreate) -> ApiResult<NetworkRecord> {
        check_name("name", &req.name)?;
        api::check_labels(&req.labels).map_err(|e| invalid("labels", e))?;
        if self.state.network(&req.name).is_some() {
            return Err(ApiError::new(
                ErrorKind::AlreadyExists,
                Some("name"),
                format!("a network named '{}' already exists", req.name),
            ));
        }
        let driver = Driver::parse(&req.driver).ok_or_else(|| {
            invalid(
                "driver",
                format!(
                    "unknown driver '{}'; expected one of: {}",
                    req.driver,
                    api::DRIVERS.join(", ")
                ),
            )
        })?;
        let mut subnet4 = None;
        let mut subnet6 = None;
        for s in &req.subnets {
            if s.contains(':') {
                let c: Ipv6Cidr = s.parse().map_err(|e| invalid("subnet", format!("{e}")))?;
                c.check_usable()
                    .map_err(|e| invalid("subnet", e.to_string()))?;
                if subnet6.replace(c).is_some() {
                    return Err(invalid("subnet", "at most one IPv6 subnet per network"));
                }
            } else {
                let c: Ipv4Cidr = s.parse().map_err(|e| invalid("subnet", format!("{e}")))?;
                c.check_usable()
                    .map_err(|e| invalid("subnet", e.to_string()))?;
                if subnet4.replace(c).is_some() {
                    return Err(invalid("subnet", "at most one IPv4 subnet per network"));
                }
            }
        }
        if !driver.switched()
            && (subnet4.is_some() || subnet6.is_some() || !req.gateways.is_empty())
        {
            return Err(invalid(
                "subnet",
                format!("the {driver} driver gives endpoints loopback only: no subnet or gateway"),
            ));
        }
        let mut req = req;
        let translated = driver.wire_mac() == Some(WireMac::Translated);
        if translated && !req.options.contains_key("interface") {
            // WinNAT's default: the interface of the host's default route.
            let (ifname, _) = natmode::default_route().ok_or_else(|| {
                invalid(
                    "options.interface",
                    "the host has no IPv4 default route to take the uplink from; give -o interface=IFNAME",
                )
            })?;
            req.options.insert("interface".into(), ifname);
        }
        let parsed = NetworkOptions::for_driver(driver, &req.options)?;
        let translates = translated || driver.wire_mac() == Some(WireMac::Uplink);
        if parsed.nat_ports.is_some() && !translates {
            return Err(invalid(
                "options.nat_ports",
                "only nat networks (and l2bridge and l2tunnel ones with OutBoundNAT) translate",
            ));
        }
        if translated || parsed.nat_ports.is_some() {
            natmode::pool(parsed.nat_ports)?;
        }
        let facts = self.check_uplink_options(driver, &parsed)?;
        let tunnel_mtu = self.check_overlay(driver, &req.options, &parsed)?;
        if translated {
            let has_v4 = facts.as_ref().is_some_and(|f| f.ipv4().next().is_some());
            if !has_v4 {
                return Err(invalid(
                    "options.interface",
                    format!(
                        "'{}' has no IPv4 address for the network to translate to",
                        parsed.interface.as_deref().unwrap_or_default()
                    ),
                ));
            }
        }
        if driver.has_uplink() && !translated && subnet4.is_none() {
            return Err(invalid(
                "subnet",
                format!(
                    "a {} network needs --subnet, usually the uplink's own subnet",
                    driver.name()
                ),
            ));
        }
        if driver.switched() && subnet4.is_none() {
            subnet4 = Some(self.default_subnet()?);
        }
        self.check_overlap(subnet4, subnet6)?;

        let mut gateway4 = None;
        let mut gateway6 = None;
        for g in &req.gateways {
            let ip: IpAddr = g
                .parse()
                .map_err(|_| invalid("gateway", format!("'{g}' is not an IP address")))?;
            match ip {
                IpAddr::V4(ip) => {
                    let net =
                        subnet4.ok_or_else(|| invalid("gateway", "no IPv4 subnet to put it in"))?;
                    if !net.is_host(ip) {
                        return Err(invalid(
                            "gateway",
                            format!("{ip} must be a host address of {net} (not its network or broadcast address)"),
                        ));
                    }
                    if gateway4.replace(ip).is_some() {
                        return Err(invalid("gateway", "at most one IPv4 gateway"));
                    }
                }
                IpAddr::V6(ip) => {
                    let net =
                        subnet6.ok_or_else(|| invalid("gateway", "no IPv6 subnet to put it in"))?;
                    if !net.is_host(ip) {
                        return Err(invalid(
                            "gateway",
                            format!("{ip} must be a host address of {net}"),
                        ));
                    }
                    if gateway6.replace(ip).is_some() {
                        return Err(invalid("gateway", "at most one IPv6 gateway"));
                    }
                }
            }
        }
        // A host port holds the gateway (Windows' gateway endpoint in the
        // host compartment); with an uplink, only on a subnet of the
        // network's own, so the host routes between it and the wire.
        let host_port = match driver.host_port() {
            HostPort::Always => true,
            HostPort::Never => false,
            HostPort::OffUplinkSubnet => {
                let on_uplink = |s4: Ipv4Cidr| {
                    facts
                        .as_ref()
                        .is_some_and(|f| f.ipv4().any(|ip| s4.contains(ip)))
                };
                !subnet4.is_some_and(on_uplink)
            }
        };
        if host_port {
            gateway4 = gateway4.or(subnet4.map(|s| s.first_host()));
            gateway6 = gateway6.or(subnet6.map(|s| s.first_host()));
        }

        let min_mtu = if subnet6.is_some() { 1280 } else { 68 };
        let (default_mtu, max_mtu) = match (&facts, tunnel_mtu) {
            (Some(f), _) => (f.mtu.min(uplink::MAX_MTU), f.mtu.min(uplink::MAX_MTU)),
            // VXLAN's 50 bytes come off the provider interface's MTU.
            (None, Some(m)) => (m, m),
            (None, None) => (DEFAULT_MTU, crate::port::tap::MAX_MTU),
        };
        let mtu = req.mtu.unwrap_or(default_mtu);
        if !(min_mtu..=max_mtu).contains(&mtu) {
            let why = if tunnel_mtu.is_some() {
                " (the provider interface's MTU less VXLAN's 50 bytes)"
            } else if facts.is_some() {
                " (at most the uplink's MTU, and what an AF_XDP frame holds)"
            } else if mtu > max_mtu {
                " (the largest a TAP takes)"
            } else if subnet6.is_some() {
                " (IPv6 needs 1280)"
            } else {
                ""
            };
            return Err(invalid(
                "mtu",
                format!("expected {min_mtu}..={max_mtu}{why}, got {mtu}"),
            ));
        }
        let mac_pool = match &req.mac_pool {
            Some(p) => p.parse().map_err(|e| invalid("mac_pool", format!("{e}")))?,
            None => MacPool::DEFAULT,
        };
        let id = new_id();
        let (host_ifname, host_mac) = if host_port {
            let mac = self.allocate_mac(&mac_pool)?;
            (Some(format!("vsh{}", &id[..8])), Some(mac))
        } else {
            (None, None)
        };
        Ok(NetworkRecord {
            id,
            name: req.name,
            driver,
            subnet4,
            gateway4,
            subnet6,
            gateway6,
            mtu,
            mac_pool,
            options: req.options,
            parsed,
            host_ifname,
            host_mac,
            // Given by network_create, once the request is accepted.
            dp_id: 0,
            host_port_id: None,
            policies: Vec::new(),
            uplink_port_id: None,
            labels: req.labels,
            mappings: Vec::new(),
        })
    }

    pub(super) fn check_overlap(
        &self,
        subnet4: Option<Ipv4Cidr>,
        subnet6: Option<Ipv6Cidr>,
    ) -> ApiResult<()> {
        for other in &self.state.networks {
            let clash4 = matches!((subnet4, other.subnet4), (Some(a), Some(b)) if a.overlaps(&b));
            let clash6 = matches!((subnet6, other.subnet6), (Some(a), Some(b)) if a.overlaps(&b));
            if clash4 || clash6 {
                let theirs = if clash4 {
                    other.subnet4.map(|s| s.to_string())
                } else {
                    other.subnet6.map(|s| s.to_string())
                };
                return Err(ApiError::new(
                    ErrorKind::Conflict,
                    Some("subnet"),
                    format!(
                        "overlaps {} of network '{}'",
                        theirs.unwrap_or_default(),
                        other.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The uplink rules: which drivers take `interface` and `vlanid`, and
    /// which networks may share an interface. Reads the interface's facts.
    pub(super) fn check_uplink_options(
        &self,
        driver: Driver,
        parsed: &NetworkOptions,
    ) -> ApiResult<Option<uplink::InterfaceFacts>> {
        if !driver.has_uplink() {
            if parsed.interface.is_some() {
                return Err(invalid(
                    "options.interface",
                    format!(
                        "the {driver} driver has no uplink; only {} do",
                        Driver::names_where(Driver::has_uplink, "and")
                    ),
                ));
            }
            if parsed.uplink_io.is_some() {
                return Err(invalid(
                    "options.uplink_io",
                    format!(
                        "the {driver} driver has no uplink; only {} do",
                        Driver::names_where(Driver::has_uplink, "and")
                    ),
                ));
            }
            if parsed.vlan != 0 {
                return Err(invalid(
                    "options.vlanid",
                    format!(
                        "a VLAN needs an uplink ({})",
                        Driver::names_where(Driver::has_uplink, "or")
                    ),
                ));
            }
            return Ok(None);
        }
        let ifname = parsed.interface.clone().ok_or_else(|| {
            invalid(
                "options.interface",
                format!(
                    "the {} driver needs -o interface=IFNAME, the uplink",
                    driver.name()
                ),
            )
        })?;
        for other in &self.state.networks {
            if other.parsed.interface.as_deref() != Some(ifname.as_str()) {
                continue;
            }
            if driver.owns_uplink() || other.driver.owns_uplink() {
                let owner = if driver.owns_uplink() {
                    driver
                } else {
                    other.driver
                };
                return Err(conflict(
                    "options.interface",
                    format!(
                        "'{ifname}' is already the uplink of {} network '{}'; a {owner} network needs an interface of its own",
                        other.driver, other.name
                    ),
                ));
            }
            if other.parsed.vlan == parsed.vlan {
                return Err(conflict(
                    "options.vlanid",
                    format!(
                        "network '{}' already uses '{ifname}' {}; networks sharing an uplink need different VLANs",
                        other.name,
                        match parsed.vlan {
                            0 => "untagged".to_owned(),
                            v => format!("on VLAN {v}"),
                        }
                    ),
                ));
            }
        }
        if let Some(want) = parsed.uplink_io {
            self.check_uplink_io(&ifname, want)?;
        }
        if let Some(n) = self
            .state
            .networks
            .iter()
            .find(|n| n.host_ifname.as_deref() == Some(ifname.as_str()))
        {
            return Err(invalid(
                "options.interface",
                format!("'{ifname}' is the host port of network '{}'", n.name),
            ));
        }
        uplink::inspect(&ifname).map(Some).map_err(uplink_error)
    }

    /// Networks sharing an uplink share its I/O mode: a network that asks
    /// for one must agree with the others' choices and with the mode the
    /// uplink runs in.
    fn check_uplink_io(&self, ifname: &str, want: uplink::UplinkIo) -> ApiResult<()> {
        let disagrees = |n: &&NetworkRecord| {
            n.parsed.interface.as_deref() == Some(ifname)
                && n.parsed.uplink_io.is_some_and(|io| io != want)
        };
        if let Some(other) = self.state.networks.iter().find(disagrees) {
            return Err(conflict(
                "options.uplink_io",
                format!(
                    "network '{}' uses '{ifname}' with uplink_io={}; networks sharing an uplink use one I/O mode",
                    other.name,
                    other.parsed.uplink_io.map_or("", |io| io.name())
                ),
            ));
        }
        match self.uplinks.get(ifname) {
            Some(up) if up.io != want => Err(conflict(
                "options.uplink_io",
                format!(
                    "'{ifname}' is attached with uplink_io={} (the default for its driver); networks sharing an uplink use one I/O mode",
                    up.io
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The I/O mode a network sharing `ifname` asks for, if any does.
    fn requested_uplink_io(&self, ifname: &str) -> Option<uplink::UplinkIo> {
        self.state
            .networks
            .iter()
            .filter(|n| n.parsed.interface.as_deref() == Some(ifname))
            .find_map(|n| n.parsed.uplink_io)
    }

    pub(super) fn default_subnet(&self) -> ApiResult<Ipv4Cidr> {
        (0..=255u32)
            .filter_map(|i| Ipv4Cidr::new(Ipv4Addr::from(u32::from(DEFAULT_POOL) + (i << 8)), 24))
            .find(|c| self.check_overlap(Some(*c), None).is_ok())
            .ok_or_else(|| invalid("subnet", "no free /24 left in 172.30.0.0/16; give --subnet"))
    }

    /// Creates the network in the datapath, with its host port if any.
    /// Creates the network in the datapath, with its uplink port and host
    /// port if it has them. When restoring, a network whose uplink cannot
    /// be attached still starts (its endpoints talk to each other), marked
    /// degraded; a new one is refused instead.
    pub(super) fn start_network(
        &mut self,
        net: &NetworkRecord,
        origin: TapOrigin,
    ) -> ApiResult<NetRuntime> {
        let dp = net.dp_id;
        self.datapath
            .add_network(
                dp,
                NetworkConfig {
                    fdb: net.parsed.fdb,
                    offload: net.parsed.offload,
                    police_local: net.driver.police_local(),
                },
            )
            .map_err(internal)?;
        let mut rt = NetRuntime {
            dp,
            host: None,
            uplink: None,
            tunnel: None,
            overlay: None,
            fault: None,
        };
        if net.driver.tunnel() {
            match self.start_tunnel(net, dp, origin) {
                Ok((port, handle)) => {
                    rt.tunnel = Some(port);
                    rt.overlay = Some(handle);
                }
                Err(e) if origin == TapOrigin::Existing => {
                    tracing::warn!(network = %net.name, error = %e, "network degraded: no tunnel");
                    rt.fault = Some(e.to_string());
                }
                Err(e) => {
                    let _ = self.datapath.remove_network(dp);
                    return Err(e);
                }
            }
        }
        if let Some(ifname) = net.parsed.interface.clone() {
            match self.start_uplink_port(net, dp, &ifname) {
                Ok(port) => rt.uplink = Some(port),
                Err(e) if origin == TapOrigin::Existing => {
                    tracing::warn!(network = %net.name, error = %e, "network degraded");
                    rt.fault = Some(e.to_string());
                }
                Err(e) => {
                    let _ = self.datapath.remove_network(dp);
                    return Err(e);
                }
            }
        }
        if let (Some(ifname), Some(mac)) = (&net.host_ifname, net.host_mac) {
            let cfg = TapConfig {
                ifname: ifname.clone(),
                mac,
                mtu: net.mtu,
                ipv4: net.gateway4.zip(net.subnet4.map(|s| s.prefix())),
                ipv6: net.gateway6.zip(net.subnet6.map(|s| s.prefix())),
                gateway4: None,
                gateway6: None,
                offload: net.parsed.offload,
                handoff: false,
            };
            // With an uplink, the host routes between the host port and the
            // wire (a nat network's switch translates instead).
            let forward =
                net.driver.has_uplink() && net.driver.wire_mac() != Some(WireMac::Translated);
            let id = net.host_port_id.unwrap_or_default();
            let host = plumb::host_tap(&cfg, origin, forward).and_then(|tap| {
                self.attach(
                    id,
                    dp,
                    PortKind::Local(Box::new(tap)),
                    None,
                    cfg.offload,
                    Vec::new(),
                    Some(mac),
                    Default::default(),
                    None,
                )
                .map_err(|e| plumb::PlumbError::Datapath(e.to_string()))
            });
            match host {
                Ok(port) => rt.host = Some(port),
                Err(e) => {
                    if origin == TapOrigin::Fresh {
                        plumb::delete_host_tap(ifname);
                    }
                    self.stop_runtime(net, rt);
                    return Err(plumb_error(e, "host port"));
                }
            }
        }
        if rt.uplink.is_some() {
            if let Err(e) = self.push_nat_to(net, dp) {
                if origin == TapOrigin::Existing {
                    tracing::warn!(network = %net.name, error = %e, "network degraded: no translation");
                    rt.fault = Some(e.to_string());
                } else {
                    self.stop_runtime(net, rt);
                    return Err(e);
                }
            }
        }
        Ok(rt)
    }

    /// Attaches the uplink interface if no other network has, and connects
    /// the network to it.
    pub(super) fn start_uplink_port(
        &mut self,
        net: &NetworkRecord,
        dp: NetId,
        ifname: &str,
    ) -> ApiResult<PortHandle> {
        if !self.uplinks.contains_key(ifname) {
            let trunk = self.next_trunk_id();
            let io = self.requested_uplink_io(ifname);
            let up = uplink::attach(ifname, trunk, &self.datapath, io).map_err(uplink_error)?;
            self.uplinks.insert(ifname.to_owned(), up);
        }
        let up = self.uplinks.get_mut(ifname).expect("inserted above");
        up.users += 1;
        let kernel = Some(crate::datapath::KernelPort::Uplink(up.ifindex));
        let kind = PortKind::Uplink {
            trunk: up.trunk,
            vlan: net.parsed.vlan,
            l2bridge: (net.driver.wire_mac() == Some(WireMac::Uplink)).then_some(up.mac),
        };
        // The uplink takes super-frames: the datapath segments them.
        let id = net.uplink_port_id.unwrap_or_default();
        match self.attach(
            id,
            dp,
            kind,
            None,
            true,
            Vec::new(),
            None,
            Default::default(),
            kernel,
        ) {
            Ok(port) => Ok(port),
            Err(e) => {
                self.release_uplink(ifname, false);
                Err(internal(e))
            }
        }
    }

    /// One network less uses the uplink; the last one detaches it.
    pub(super) fn release_uplink(&mut self, ifname: &str, keep_program: bool) {
        let Some(up) = self.uplinks.get_mut(ifname) else {
            return;
        };
        up.users = up.users.saturating_sub(1);
        if up.users == 0 {
            let up = self.uplinks.remove(ifname).expect("present");
            up.release(&self.datapath, keep_program);
            if !keep_program {
                self.fast_release_uplink(ifname);
            }
        }
    }

    /// Takes a running network out of the datapath (kernel devices stay).
    pub(super) fn stop_runtime(&mut self, net: &NetworkRecord, rt: NetRuntime) {
        let had_uplink = rt.uplink.is_some();
        if had_uplink {
            self.clear_nat(net);
        }
        for port in [rt.host, rt.uplink, rt.tunnel].into_iter().flatten() {
            let _ = self.datapath.remove_port(port.id);
        }
        if let Some(t) = rt.overlay {
            self.stop_tunnel(t, rt.dp, false);
        }
        self.fast_forget_network(net, rt.dp);
        let _ = self.datapath.remove_network(rt.dp);
        if let (Some(ifname), true) = (&net.parsed.interface, had_uplink) {
            self.release_uplink(ifname, false);
        }
    }

    /// Why a network runs degraded, if it does.
    pub(super) fn network_fault(&self, n: &NetworkRecord) -> Option<String> {
        if let Some(reason) = self.invalid.get(&n.id) {
            return Some(reason.clone());
        }
        let Some(rt) = self.nets.get(&n.id) else {
            return Some("the network failed to start; see the daemon log".into());
        };
        if let Some(fault) = &rt.fault {
            return Some(fault.clone());
        }
        n.parsed
            .interface
            .as_ref()
            .and_then(|ifname| self.uplinks.get(ifname))
            .and_then(|up| up.fault())
    }

    /// Stops everything on a clean shutdown: uplinks are detached, or left
    /// with their XDP program when `keep_programs` (endpoint TAPs always
    /// stay, configured, for the next start).
    pub fn shutdown(&mut self, keep_programs: bool) {
        for (_, up) in self.uplinks.drain() {
            up.release(&self.datapath, keep_programs);
        }
    }

    pub(super) fn stop_network(&mut self, net: &NetworkRecord) {
        if let Some(rt) = self.nets.remove(&net.id) {
            self.stop_runtime(net, rt);
        }
        if let Some(ifname) = &net.host_ifname {
            plumb::delete_host_tap(ifname);
        }
        if net.driver.tunnel() {
            plumb::delete_own(&super::overlay::tunnel_tap_name(&net.id), "tun");
        }
    }

    /// `network rm`: an overlay network goes from every host (the shared
    /// store's definition with it); the others remove their copies unless
    /// they still have endpoints on it.
    pub(super) fn network_remove(&mut self, name: &str) -> ApiResult<Reply> {
        let net = self.network_remove_local(name)?;
        self.unpublish_network(&net);
        Ok(Reply::Removed {
            name: name.to_owned(),
            warning: None,
        })
    }

    /// Removes a network from this host only; returns its record.
    pub(super) fn network_remove_local(&mut self, name: &str) -> ApiResult<NetworkRecord> {
        let net = self.network(name)?.clone();
        let users: Vec<&str> = self
            .state
            .endpoints_of(&net.id)
            .map(|e| e.name.as_str())
            .collect();
        if !users.is_empty() {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                Some("network"),
                format!("network '{name}' still has endpoints: {}", users.join(", ")),
            ));
        }
        if !self.invalid.contains_key(&net.id) {
            self.stop_network(&net);
        }
        let before = self.state.clone();
        self.state.networks.retain(|n| n.id != net.id);
        if let Err(e) = self.save() {
            self.state = before;
            if let Ok(rt) = self.start_network(&net, TapOrigin::Existing) {
                self.nets.insert(net.id.clone(), rt);
            }
            return Err(e);
        }
        self.invalid.remove(&net.id);
        tracing::info!(network = %name, "network removed");
        Ok(net)
    }
}
