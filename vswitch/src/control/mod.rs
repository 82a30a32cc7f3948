//! The control plane: validates requests, keeps the state, and drives the
//! kernel (namespaces, TAPs) and the datapath to match it.
//!
//! Every mutating request is checked whole before anything changes; then
//! the kernel and the datapath are changed, undoing what was done if a step
//! fails; the state file is written last. A refused or failed request leaves
//! state, kernel and datapath as they were.

mod ipam;
mod options;
mod plumb;
mod records;
pub mod server;
mod state;
mod uplink;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;

use crate::api::{self, ApiError, EndpointState, ErrorKind, Reply, Request, Response};
use crate::datapath::{
    Datapath, DropReason, NetId, PortCounters, PortId, PortKind, PortSecurity, PortSpec,
};
use crate::ifname::IfName;
use crate::sys::random_bytes;
use crate::wire::MacAddr;

use crate::port::tap::TapOwner;
pub use ipam::{Ipv4Cidr, Ipv6Cidr, MacPool, Subnet};
pub use options::NetworkOptions;
use plumb::{TapConfig, TapOrigin};
pub use state::{Driver, EndpointRecord, NetworkRecord, State, StateError, StateFile};

/// Default MTU of a network.
pub const DEFAULT_MTU: u32 = 1500;
/// Default interface name of an endpoint inside its namespace.
pub const DEFAULT_IFNAME: &str = "eth0";
/// Subnets handed to networks created without `--subnet`: /24s from here.
const DEFAULT_POOL: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 0);

type ApiResult<T> = Result<T, ApiError>;

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::InvalidArgument, Some(field), message)
}

fn internal(message: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorKind::Internal, None, message.to_string())
}

/// A port the datapath holds for us.
struct PortHandle {
    id: PortId,
    counters: Arc<PortCounters>,
    /// The control plane's own descriptor of the port's TAP (endpoints),
    /// to remove the device wherever it is.
    tap: Option<TapOwner>,
}

struct NetRuntime {
    dp: NetId,
    host: Option<PortHandle>,
    /// The network's port on its uplink trunk.
    uplink: Option<PortHandle>,
    /// Why the network runs without part of what it needs.
    fault: Option<String>,
}

struct EndpointRuntime {
    port: Option<PortHandle>,
    state: EndpointState,
    /// The namespace the endpoint was attached in (its inode), to notice
    /// when the name stops naming it.
    netns_inode: Option<u64>,
}

impl EndpointRuntime {
    fn attached(port: Option<PortHandle>, ep: &EndpointRecord) -> EndpointRuntime {
        EndpointRuntime {
            port,
            state: EndpointState::Attached,
            netns_inode: plumb::netns_inode(&ep.netns),
        }
    }

    fn detached(reason: String) -> EndpointRuntime {
        EndpointRuntime {
            port: None,
            state: EndpointState::Detached { reason },
            netns_inode: None,
        }
    }

    /// The state as of now: an attached endpoint whose TAP was deleted, or
    /// whose namespace is gone (the switch's TAP descriptor keeps the
    /// namespace alive but unreachable), is detached.
    fn current_state(&self, ep: &EndpointRecord) -> EndpointState {
        if self.port.as_ref().is_some_and(|p| p.counters.has_failed()) {
            return EndpointState::Detached {
                reason: format!("interface {} is gone from {}", ep.ifname, ep.netns),
            };
        }
        if self.netns_inode.is_some() && plumb::netns_inode(&ep.netns) != self.netns_inode {
            return EndpointState::Detached {
                reason: format!("namespace {} is gone", ep.netns),
            };
        }
        self.state.clone()
    }
}

pub struct Controller {
    file: StateFile,
    state: State,
    datapath: Datapath,
    nets: HashMap<String, NetRuntime>,
    endpoints: HashMap<String, EndpointRuntime>,
    /// Attached uplink interfaces, by name.
    uplinks: HashMap<String, uplink::Uplink>,
    /// Networks and endpoints whose saved record is invalid, by ID, with
    /// the reason: kept, never started, and removed without touching the
    /// kernel (a bad record may name someone else's device).
    invalid: HashMap<String, String>,
    next_id: u32,
}

impl Controller {
    /// Loads the saved state and brings the kernel and datapath back to it.
    /// Endpoints that cannot be re-attached are reported as detached.
    pub fn open(state_dir: &Path) -> Result<Controller, StateError> {
        let file = StateFile::new(state_dir);
        let saved = file.load()?;
        let datapath = Datapath::spawn().map_err(|source| StateError::Io {
            op: "start datapath",
            path: state_dir.to_owned(),
            source,
        })?;
        let mut ctl = Controller {
            file,
            state: State {
                version: state::FORMAT_VERSION,
                ..State::default()
            },
            datapath,
            nets: HashMap::new(),
            endpoints: HashMap::new(),
            uplinks: HashMap::new(),
            invalid: HashMap::new(),
            next_id: 1,
        };
        ctl.restore(saved);
        Ok(ctl)
    }

    fn restore(&mut self, mut saved: State) {
        // Checked as requests are, before anything starts: a bad record is
        // reported by name and stays out of the datapath.
        let mut invalid: HashMap<String, String> = HashMap::new();
        for i in 0..saved.networks.len() {
            let (before, rest) = saved.networks.split_at_mut(i);
            let net = &mut rest[0];
            let accepted: Vec<&NetworkRecord> = before
                .iter()
                .filter(|n| !invalid.contains_key(&n.id))
                .collect();
            match records::check_network(net, &accepted) {
                Ok(parsed) => net.parsed = parsed,
                Err(reason) => {
                    tracing::error!(network = %net.name, reason, "invalid network record; not started");
                    invalid.insert(
                        net.id.clone(),
                        format!("invalid record in the state file: {reason}"),
                    );
                }
            }
        }
        let host_macs: HashSet<MacAddr> =
            saved.networks.iter().filter_map(|n| n.host_mac).collect();
        let mut bad_endpoints: HashMap<String, String> = HashMap::new();
        for (i, ep) in saved.endpoints.iter().enumerate() {
            let accepted: Vec<&EndpointRecord> = saved.endpoints[..i]
                .iter()
                .filter(|e| !bad_endpoints.contains_key(&e.id))
                .collect();
            let verdict = match saved.networks.iter().find(|n| n.id == ep.network_id) {
                None => Err("its network is not in the state file".to_owned()),
                Some(net) => records::check_endpoint(ep, net, &accepted, &host_macs),
            };
            if let Err(reason) = verdict {
                tracing::error!(endpoint = %ep.name, reason, "invalid endpoint record; not started");
                bad_endpoints.insert(
                    ep.id.clone(),
                    format!("invalid record in the state file: {reason}"),
                );
            }
        }
        for net in saved.networks {
            if let Some(reason) = invalid.get(&net.id) {
                self.invalid.insert(net.id.clone(), reason.clone());
                self.state.networks.push(net);
                continue;
            }
            match self.start_network(&net, TapOrigin::Existing) {
                Ok(rt) => {
                    tracing::info!(network = %net.name, "network restored");
                    self.nets.insert(net.id.clone(), rt);
                }
                // Keep the record: a network is never silently dropped. Its
                // endpoints come back detached.
                Err(e) => tracing::error!(network = %net.name, error = %e, "network not restored"),
            }
            self.state.networks.push(net);
        }
        for ep in saved.endpoints {
            let rt = match self.state.network_by_id(&ep.network_id).cloned() {
                _ if bad_endpoints.contains_key(&ep.id) => {
                    let reason = bad_endpoints[&ep.id].clone();
                    self.invalid.insert(ep.id.clone(), reason.clone());
                    EndpointRuntime::detached(reason)
                }
                Some(net) if self.nets.contains_key(&net.id) => {
                    match self.start_endpoint(&net, &ep, TapOrigin::Existing) {
                        Ok(port) => {
                            tracing::info!(endpoint = %ep.name, "endpoint restored");
                            EndpointRuntime::attached(port, &ep)
                        }
                        Err(e) => {
                            tracing::warn!(endpoint = %ep.name, reason = %e, "endpoint detached");
                            EndpointRuntime::detached(e.to_string())
                        }
                    }
                }
                _ => EndpointRuntime::detached("its network could not be restored".into()),
            };
            self.endpoints.insert(ep.id.clone(), rt);
            self.state.endpoints.push(ep);
        }
    }

    /// Answers one request.
    pub fn handle(&mut self, req: Request) -> Response {
        let result = match req {
            Request::NetworkCreate(c) => self.network_create(c).map(Reply::Network),
            Request::NetworkList => Ok(Reply::Networks(
                self.state
                    .networks
                    .iter()
                    .map(|n| self.network_view(n))
                    .collect(),
            )),
            Request::NetworkInspect { name } => self
                .network(&name)
                .map(|n| Reply::Network(self.network_view(n))),
            Request::NetworkRemove { name } => self.network_remove(&name),
            Request::EndpointCreate(c) => self.endpoint_create(c).map(Reply::Endpoint),
            Request::EndpointList => Ok(Reply::Endpoints(
                self.state
                    .endpoints
                    .iter()
                    .map(|e| self.endpoint_view(e))
                    .collect(),
            )),
            Request::EndpointInspect { name } => self
                .endpoint(&name)
                .map(|e| Reply::Endpoint(self.endpoint_view(e))),
            Request::EndpointRemove { name } => self.endpoint_remove(&name),
            Request::PortList => Ok(Reply::Ports(self.ports())),
            Request::Stats { port } => self.stats(port.as_deref()).map(Reply::Stats),
            Request::FdbShow { network } => self.fdb(&network).map(Reply::Fdb),
        };
        match result {
            Ok(reply) => Response::Ok(reply),
            Err(e) => Response::Error(e),
        }
    }

    fn network(&self, name: &str) -> ApiResult<&NetworkRecord> {
        self.state.network(name).ok_or_else(|| {
            ApiError::new(
                ErrorKind::NotFound,
                Some("network"),
                format!("no network named '{name}'"),
            )
        })
    }

    fn endpoint(&self, name: &str) -> ApiResult<&EndpointRecord> {
        self.state.endpoint(name).ok_or_else(|| {
            ApiError::new(
                ErrorKind::NotFound,
                Some("name"),
                format!("no endpoint named '{name}'"),
            )
        })
    }

    fn save(&self) -> ApiResult<()> {
        self.file.save(&self.state).map_err(internal)
    }

    /// Records the state again after undoing a change whose kernel side
    /// failed. If even that fails, the next start finds the record and
    /// completes it, which is logged here.
    fn save_after_undo(&self) {
        if let Err(e) = self.save() {
            tracing::error!(error = %e, "could not record an undone change; the next start will redo it");
        }
    }

    fn next_port_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    // ---- networks ----

    // Creation records first and plumbs second; removal unplumbs first and
    // records second. A crash in between leaves a record whose kernel side
    // is missing, which the next start completes (as it does after any
    // crash), never a device no record knows about.

    fn network_create(&mut self, req: api::NetworkCreate) -> ApiResult<api::Network> {
        let rec = self.check_network(req)?;
        self.state.networks.push(rec.clone());
        if let Err(e) = self.save() {
            self.state.networks.pop();
            return Err(e);
        }
        match self.start_network(&rec, TapOrigin::Fresh) {
            Ok(rt) => {
                self.nets.insert(rec.id.clone(), rt);
            }
            Err(e) => {
                self.state.networks.pop();
                self.save_after_undo();
                return Err(e);
            }
        }
        tracing::info!(network = %rec.name, driver = rec.driver.name(), "network created");
        Ok(self.network_view(&rec))
    }

    /// Validates a create request into the record it would add.
    fn check_network(&self, req: api::NetworkCreate) -> ApiResult<NetworkRecord> {
        check_name("name", &req.name)?;
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
        if driver == Driver::None
            && (subnet4.is_some() || subnet6.is_some() || !req.gateways.is_empty())
        {
            return Err(invalid(
                "subnet",
                "the none driver gives endpoints loopback only: no subnet or gateway",
            ));
        }
        let parsed = NetworkOptions::parse(&req.options)?;
        let facts = self.check_uplink_options(driver, &parsed)?;
        if driver.has_uplink() && subnet4.is_none() {
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
        // A host port holds the gateway of internal networks, and of
        // l2bridge networks on a subnet of their own (not the uplink's), so
        // the host routes between them and the wire (Windows' gateway
        // endpoint in the host compartment).
        let host_port = match driver {
            Driver::Internal => true,
            Driver::L2Bridge => {
                let s4 = subnet4.expect("checked above");
                !facts
                    .as_ref()
                    .is_some_and(|f| f.ipv4().any(|ip| s4.contains(ip)))
            }
            _ => false,
        };
        if host_port {
            gateway4 = gateway4.or(subnet4.map(|s| s.first_host()));
            gateway6 = gateway6.or(subnet6.map(|s| s.first_host()));
        }

        let min_mtu = if subnet6.is_some() { 1280 } else { 68 };
        let (default_mtu, max_mtu) = match &facts {
            Some(f) => (f.mtu.min(uplink::MAX_MTU), f.mtu.min(uplink::MAX_MTU)),
            None => (DEFAULT_MTU, crate::port::tap::MAX_MTU),
        };
        let mtu = req.mtu.unwrap_or(default_mtu);
        if !(min_mtu..=max_mtu).contains(&mtu) {
            let why = if facts.is_some() {
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
        })
    }

    fn check_overlap(&self, subnet4: Option<Ipv4Cidr>, subnet6: Option<Ipv6Cidr>) -> ApiResult<()> {
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
    fn check_uplink_options(
        &self,
        driver: Driver,
        parsed: &NetworkOptions,
    ) -> ApiResult<Option<uplink::InterfaceFacts>> {
        if !driver.has_uplink() {
            if parsed.interface.is_some() {
                return Err(invalid(
                    "options.interface",
                    format!(
                        "the {} driver has no uplink; only transparent and l2bridge do",
                        driver.name()
                    ),
                ));
            }
            if parsed.vlan != 0 {
                return Err(invalid(
                    "options.vlanid",
                    "a VLAN needs an uplink (transparent or l2bridge)",
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
            if driver == Driver::Transparent || other.driver == Driver::Transparent {
                return Err(conflict(
                    "options.interface",
                    format!(
                        "'{ifname}' is already the uplink of {} network '{}'; a transparent network needs an interface of its own",
                        other.driver.name(),
                        other.name
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
        uplink::inspect(&ifname).map(Some)
    }

    fn default_subnet(&self) -> ApiResult<Ipv4Cidr> {
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
    fn start_network(&mut self, net: &NetworkRecord, origin: TapOrigin) -> ApiResult<NetRuntime> {
        let dp = self.next_port_id();
        self.datapath
            .add_network(dp, net.parsed.fdb, net.parsed.offload)
            .map_err(internal)?;
        let mut rt = NetRuntime {
            dp,
            host: None,
            uplink: None,
            fault: None,
        };
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
            };
            // With an uplink, the host routes between the host port and the
            // wire.
            let forward = net.driver.has_uplink();
            let host = plumb::host_tap(&cfg, origin, forward).and_then(|tap| {
                self.attach(
                    dp,
                    PortKind::Local(Box::new(tap)),
                    None,
                    cfg.offload,
                    Vec::new(),
                    Some(mac),
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
                    return Err(e.into_api("host port"));
                }
            }
        }
        Ok(rt)
    }

    /// Attaches the uplink interface if no other network has, and connects
    /// the network to it.
    fn start_uplink_port(
        &mut self,
        net: &NetworkRecord,
        dp: NetId,
        ifname: &str,
    ) -> ApiResult<PortHandle> {
        if !self.uplinks.contains_key(ifname) {
            let trunk = self.next_port_id();
            let up = uplink::attach(ifname, trunk, &self.datapath)?;
            self.uplinks.insert(ifname.to_owned(), up);
        }
        let up = self.uplinks.get_mut(ifname).expect("inserted above");
        up.users += 1;
        let kind = PortKind::Uplink {
            trunk: up.trunk,
            vlan: net.parsed.vlan,
            l2bridge: (net.driver == Driver::L2Bridge).then_some(up.mac),
        };
        // The uplink takes super-frames: the datapath segments them.
        match self.attach(dp, kind, None, true, Vec::new(), None) {
            Ok(port) => Ok(port),
            Err(e) => {
                self.release_uplink(ifname, false);
                Err(internal(e))
            }
        }
    }

    /// One network less uses the uplink; the last one detaches it.
    fn release_uplink(&mut self, ifname: &str, keep_program: bool) {
        let Some(up) = self.uplinks.get_mut(ifname) else {
            return;
        };
        up.users = up.users.saturating_sub(1);
        if up.users == 0 {
            let up = self.uplinks.remove(ifname).expect("present");
            up.release(&self.datapath, keep_program);
        }
    }

    /// Takes a running network out of the datapath (kernel devices stay).
    fn stop_runtime(&mut self, net: &NetworkRecord, rt: NetRuntime) {
        let had_uplink = rt.uplink.is_some();
        for port in [rt.host, rt.uplink].into_iter().flatten() {
            let _ = self.datapath.remove_port(port.id);
        }
        let _ = self.datapath.remove_network(rt.dp);
        if let (Some(ifname), true) = (&net.parsed.interface, had_uplink) {
            self.release_uplink(ifname, false);
        }
    }

    /// Why a network runs degraded, if it does.
    fn network_fault(&self, n: &NetworkRecord) -> Option<String> {
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

    fn attach(
        &mut self,
        net: NetId,
        kind: PortKind,
        security: Option<PortSecurity>,
        gso: bool,
        addrs: Vec<(IpAddr, MacAddr)>,
        mac: Option<MacAddr>,
    ) -> std::io::Result<PortHandle> {
        let id = self.next_port_id();
        let counters = Arc::new(PortCounters::default());
        self.datapath.add_port(PortSpec {
            id,
            net,
            kind,
            counters: counters.clone(),
            security,
            gso,
            addrs,
            mac,
        })?;
        Ok(PortHandle {
            id,
            counters,
            tap: None,
        })
    }

    fn stop_network(&mut self, net: &NetworkRecord) {
        if let Some(rt) = self.nets.remove(&net.id) {
            self.stop_runtime(net, rt);
        }
        if let Some(ifname) = &net.host_ifname {
            plumb::delete_host_tap(ifname);
        }
    }

    fn network_remove(&mut self, name: &str) -> ApiResult<Reply> {
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
        Ok(Reply::Removed {
            name: name.to_owned(),
            warning: None,
        })
    }

    fn network_view(&self, n: &NetworkRecord) -> api::Network {
        let mut subnets = Vec::new();
        if let Some(s) = n.subnet4 {
            subnets.push(api::Subnet {
                address_prefix: s.to_string(),
                gateway_address: n.gateway4.map(|g| g.to_string()),
            });
        }
        if let Some(s) = n.subnet6 {
            subnets.push(api::Subnet {
                address_prefix: s.to_string(),
                gateway_address: n.gateway6.map(|g| g.to_string()),
            });
        }
        api::Network {
            id: n.id.clone(),
            name: n.name.clone(),
            driver: n.driver.name().into(),
            subnets,
            mtu: n.mtu,
            mac_pool: api::MacPool {
                start_mac_address: n.mac_pool.start.to_string(),
                end_mac_address: n.mac_pool.end.to_string(),
            },
            options: n.options.clone(),
            host_interface: n.host_ifname.clone(),
            uplink_interface: n.parsed.interface.clone(),
            vlan_id: (n.parsed.vlan != 0).then_some(n.parsed.vlan),
            state: match self.network_fault(n) {
                None => api::NetworkState::Up,
                Some(reason) => api::NetworkState::Degraded { reason },
            },
            endpoints: self
                .state
                .endpoints_of(&n.id)
                .map(|e| e.name.clone())
                .collect(),
        }
    }

    // ---- endpoints ----

    fn endpoint_create(&mut self, req: api::EndpointCreate) -> ApiResult<api::Endpoint> {
        let (net, rec) = self.check_endpoint(req)?;
        self.state.endpoints.push(rec.clone());
        if let Err(e) = self.save() {
            self.state.endpoints.pop();
            return Err(e);
        }
        match self.start_endpoint(&net, &rec, TapOrigin::Fresh) {
            Ok(port) => {
                self.endpoints
                    .insert(rec.id.clone(), EndpointRuntime::attached(port, &rec));
            }
            Err(e) => {
                self.state.endpoints.pop();
                self.save_after_undo();
                return Err(e);
            }
        }
        tracing::info!(endpoint = %rec.name, network = %net.name, netns = %rec.netns, "endpoint created");
        Ok(self.endpoint_view(&rec))
    }

    fn check_endpoint(
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
        plumb::resolve_netns(&req.netns)?;
        if !net.driver.switched() {
            if req.ip.is_some()
                || req.ipv6.is_some()
                || req.mac_address.is_some()
                || req.ifname.is_some()
            {
                return Err(invalid(
                    "network",
                    "the none driver gives endpoints loopback only: no --ip, --ipv6, --mac or --ifname",
                ));
            }
            return Ok((
                net.clone(),
                EndpointRecord {
                    id: new_id(),
                    name: req.name,
                    network_id: net.id,
                    netns: req.netns,
                    ifname: "lo".into(),
                    mac: MacAddr([0; 6]),
                    ipv4: None,
                    ipv6: None,
                    allow_spoofing: false,
                },
            ));
        }
        let ifname = req.ifname.unwrap_or_else(|| DEFAULT_IFNAME.to_owned());
        check_ifname(&ifname)?;
        if let Some(other) = self
            .state
            .endpoints
            .iter()
            .find(|e| e.ifname == ifname && plumb::same_netns(&e.netns, &req.netns))
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
        let ipv4 = pick_address(
            "ip",
            req.ip.as_deref(),
            net.subnet4,
            net.gateway4,
            peers
                .iter()
                .filter_map(|p| Some((p.name.as_str(), p.ipv4?))),
            wire.iter().flat_map(|f| f.ipv4()),
        )?;
        let ipv6 = pick_address(
            "ipv6",
            req.ipv6.as_deref(),
            net.subnet6,
            net.gateway6,
            peers
                .iter()
                .filter_map(|p| Some((p.name.as_str(), p.ipv6?))),
            wire.iter().flat_map(|f| f.ipv6()),
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
                id: new_id(),
                name: req.name,
                network_id: net.id,
                netns: req.netns,
                ifname,
                mac,
                ipv4,
                ipv6,
                allow_spoofing: req.allow_spoofing,
            },
        ))
    }

    fn macs_in_use(&self) -> HashSet<MacAddr> {
        let eps = self.state.endpoints.iter().map(|e| e.mac);
        let hosts = self.state.networks.iter().filter_map(|n| n.host_mac);
        eps.chain(hosts).collect()
    }

    fn allocate_mac(&self, pool: &MacPool) -> ApiResult<MacAddr> {
        let mut seed = [0u8; 8];
        random_bytes(&mut seed).map_err(internal)?;
        pool.allocate(&self.macs_in_use(), u64::from_le_bytes(seed))
            .ok_or_else(|| conflict("mac", format!("MAC pool {pool} is exhausted")))
    }

    /// Plumbs the endpoint's vNIC and connects it to the datapath. Returns
    /// `None` for endpoints with no port (`none` driver).
    fn start_endpoint(
        &mut self,
        net: &NetworkRecord,
        ep: &EndpointRecord,
        origin: TapOrigin,
    ) -> ApiResult<Option<PortHandle>> {
        let ns = plumb::resolve_netns(&ep.netns)?;
        if !net.driver.switched() {
            plumb::loopback_only(&ns).map_err(|e| e.into_api("netns"))?;
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
        };
        let dp = self
            .nets
            .get(&net.id)
            .map(|rt| rt.dp)
            .ok_or_else(|| internal("network not running"))?;
        let tap = plumb::endpoint_tap(&ns, &cfg, origin).map_err(|e| e.into_api("ifname"))?;
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
        let security = (!ep.allow_spoofing).then(|| PortSecurity::new(ep.mac, ep.ipv4, ep.ipv6));
        let ips = endpoint_ips(ep);
        let addrs = ips.iter().map(|ip| (*ip, ep.mac)).collect();
        let mut port = match self.attach(
            dp,
            PortKind::Local(Box::new(tap)),
            security,
            cfg.offload,
            addrs,
            Some(ep.mac),
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
        // Frames from the wire for this endpoint go to the switch, not the
        // host: its MAC on a transparent network, its addresses on both.
        if let Some(up) = net
            .parsed
            .interface
            .as_ref()
            .and_then(|i| self.uplinks.get_mut(i))
        {
            let mac = (net.driver == Driver::Transparent).then_some(ep.mac);
            if let Err(e) = up.steer(net.parsed.vlan, mac, &ips) {
                up.unsteer(net.parsed.vlan, mac, &ips);
                let _ = self.datapath.remove_port(port.id);
                if origin == TapOrigin::Fresh {
                    plumb::delete_endpoint_tap(&ns, &cfg.ifname);
                }
                return Err(e);
            }
        }
        Ok(Some(port))
    }

    /// Takes the endpoint out of the datapath and deletes its TAP. The TAP
    /// is reached through the daemon's own descriptor when it has one (so
    /// wherever the device is, whatever its namespace is called now), by
    /// name in the namespace otherwise. Returns what could not be done.
    fn stop_endpoint(&mut self, net: &NetworkRecord, ep: &EndpointRecord) -> Option<String> {
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
        }
        if let Some(up) = net
            .parsed
            .interface
            .as_ref()
            .and_then(|i| self.uplinks.get_mut(i))
        {
            let mac = (net.driver == Driver::Transparent).then_some(ep.mac);
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
                ep.ifname, ep.netns, e.message
            )),
        }
    }

    fn endpoint_remove(&mut self, name: &str) -> ApiResult<Reply> {
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
        tracing::info!(endpoint = %name, "endpoint removed");
        Ok(Reply::Removed {
            name: name.to_owned(),
            warning,
        })
    }

    fn endpoint_view(&self, e: &EndpointRecord) -> api::Endpoint {
        let net = self.state.network_by_id(&e.network_id);
        let state = match self.endpoints.get(&e.id) {
            Some(rt) => rt.current_state(e),
            None => EndpointState::Detached {
                reason: "not started".into(),
            },
        };
        api::Endpoint {
            id: e.id.clone(),
            name: e.name.clone(),
            network: net.map(|n| n.name.clone()).unwrap_or_default(),
            netns: e.netns.clone(),
            ifname: e.ifname.clone(),
            mac_address: e.mac.to_string(),
            ip: e.ipv4.map(|ip| ip.to_string()),
            prefix_length: e.ipv4.and(net.and_then(|n| n.subnet4)).map(|s| s.prefix()),
            ipv6: e.ipv6.map(|ip| ip.to_string()),
            ipv6_prefix_length: e.ipv6.and(net.and_then(|n| n.subnet6)).map(|s| s.prefix()),
            gateway_address: net.and_then(|n| n.gateway4).map(|g| g.to_string()),
            mtu: net.map(|n| n.mtu).unwrap_or(DEFAULT_MTU),
            allow_spoofing: e.allow_spoofing,
            state,
        }
    }

    // ---- ports, counters, fdb ----

    /// Every port: (view, counters).
    fn port_table(&self) -> Vec<(api::Port, Option<&Arc<PortCounters>>)> {
        let mut out = Vec::new();
        for n in &self.state.networks {
            let rt = self.nets.get(&n.id);
            if let (Some(ifname), Some(mac)) = (&n.host_ifname, n.host_mac) {
                let host = rt.and_then(|rt| rt.host.as_ref());
                out.push((
                    api::Port {
                        name: host_port_name(&n.name),
                        kind: api::PortKind::Host,
                        network: n.name.clone(),
                        interface: ifname.clone(),
                        netns: None,
                        mac_address: mac.to_string(),
                        backend: "tap".into(),
                        xdp_mode: None,
                        offload: n.parsed.offload,
                        state: match host {
                            Some(_) => EndpointState::Attached,
                            None => EndpointState::Detached {
                                reason: "network failed to start".into(),
                            },
                        },
                    },
                    host.map(|h| &h.counters),
                ));
            }
            if let Some(ifname) = &n.parsed.interface {
                let port = rt.and_then(|rt| rt.uplink.as_ref());
                let up = self.uplinks.get(ifname);
                out.push((
                    api::Port {
                        name: uplink_port_name(&n.name),
                        kind: api::PortKind::Uplink,
                        network: n.name.clone(),
                        interface: ifname.clone(),
                        netns: None,
                        mac_address: up.map(|u| u.mac.to_string()).unwrap_or_default(),
                        backend: "afxdp".into(),
                        xdp_mode: up.map(|u| u.mode().to_string()),
                        offload: true,
                        state: match self.network_fault(n) {
                            None => EndpointState::Attached,
                            Some(reason) => EndpointState::Detached { reason },
                        },
                    },
                    port.map(|p| &p.counters),
                ));
            }
            for e in self.state.endpoints_of(&n.id) {
                if !n.driver.switched() {
                    continue;
                }
                let rt = self.endpoints.get(&e.id);
                out.push((
                    api::Port {
                        name: e.name.clone(),
                        kind: api::PortKind::Endpoint,
                        network: n.name.clone(),
                        interface: e.ifname.clone(),
                        netns: Some(e.netns.clone()),
                        mac_address: e.mac.to_string(),
                        backend: "tap".into(),
                        xdp_mode: None,
                        offload: n.parsed.offload,
                        state: self.endpoint_view(e).state,
                    },
                    rt.and_then(|rt| rt.port.as_ref()).map(|p| &p.counters),
                ));
            }
        }
        out
    }

    fn ports(&self) -> Vec<api::Port> {
        self.port_table().into_iter().map(|(p, _)| p).collect()
    }

    fn stats(&self, port: Option<&str>) -> ApiResult<Vec<api::PortStats>> {
        let table = self.port_table();
        if let Some(name) = port {
            if !table.iter().any(|(p, _)| p.name == name) {
                return Err(ApiError::new(
                    ErrorKind::NotFound,
                    Some("port"),
                    format!("no port named '{name}' (see vswitchctl port ls)"),
                ));
            }
        }
        Ok(table
            .into_iter()
            .filter(|(p, _)| port.is_none_or(|name| p.name == name))
            .map(|(p, counters)| {
                let c = counters.map(|c| c.as_ref());
                let get = |f: fn(&PortCounters) -> u64| c.map(f).unwrap_or(0);
                api::PortStats {
                    port: p.name,
                    network: p.network,
                    rx_packets: get(|c| PortCounters::get(&c.rx_packets)),
                    rx_bytes: get(|c| PortCounters::get(&c.rx_bytes)),
                    tx_packets: get(|c| PortCounters::get(&c.tx_packets)),
                    tx_bytes: get(|c| PortCounters::get(&c.tx_bytes)),
                    rx_partial_checksums: get(|c| PortCounters::get(&c.rx_partial_checksums)),
                    drops: DropReason::ALL
                        .iter()
                        .map(|&r| (r.name().to_owned(), c.map(|c| c.drops(r)).unwrap_or(0)))
                        .collect(),
                }
            })
            .collect())
    }

    fn fdb(&self, network: &str) -> ApiResult<Vec<api::FdbEntry>> {
        let net = self.network(network)?;
        let Some(rt) = self.nets.get(&net.id) else {
            return Ok(Vec::new());
        };
        let mut names: HashMap<PortId, String> = HashMap::new();
        if let Some(h) = &rt.host {
            names.insert(h.id, host_port_name(&net.name));
        }
        for e in self.state.endpoints_of(&net.id) {
            if let Some(p) = self.endpoints.get(&e.id).and_then(|rt| rt.port.as_ref()) {
                names.insert(p.id, e.name.clone());
            }
        }
        let mut entries: Vec<api::FdbEntry> = self
            .datapath
            .fdb(rt.dp)
            .map_err(internal)?
            .into_iter()
            .map(|(mac, port, age)| api::FdbEntry {
                mac_address: mac.to_string(),
                port: names
                    .get(&port)
                    .cloned()
                    .unwrap_or_else(|| format!("#{port}")),
                age_seconds: age.as_secs(),
            })
            .collect();
        entries.sort_by(|a, b| a.mac_address.cmp(&b.mac_address));
        Ok(entries)
    }
}

fn conflict(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::Conflict, Some(field), message)
}

fn endpoint_ips(ep: &EndpointRecord) -> Vec<IpAddr> {
    let v4 = ep.ipv4.map(IpAddr::V4);
    v4.into_iter().chain(ep.ipv6.map(IpAddr::V6)).collect()
}

/// The name `vswitchctl` shows for a network's uplink port.
pub fn uplink_port_name(network: &str) -> String {
    format!("uplink:{network}")
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

/// The name `vswitchctl` shows for a network's host port.
pub fn host_port_name(network: &str) -> String {
    format!("host:{network}")
}

/// Network and endpoint names: 1-64 of `[A-Za-z0-9_.-]`, starting with a
/// letter or digit (safe in file names, interface listings and shells).
fn check_name(field: &str, name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("'{name}' is not a valid name: 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"),
        ))
    }
}

/// An endpoint's interface name, by the kernel's rules ([`IfName`]).
fn check_ifname(name: &str) -> ApiResult<()> {
    IfName::new(name)
        .map(drop)
        .map_err(|e| invalid("ifname", format!("'{name}' is not an interface name: {e}")))
}

/// A random identifier in the GUID form HNS uses.
fn new_id() -> String {
    let mut b = [0u8; 16];
    random_bytes(&mut b).expect("kernel random source");
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("name", "lab-1.a_b").is_ok());
        assert!(check_name("name", "").is_err());
        assert!(check_name("name", "-x").is_err());
        assert!(check_name("name", "a b").is_err());
        assert!(check_name("name", &"a".repeat(65)).is_err());
    }

    #[test]
    fn ifnames() {
        assert!(check_ifname("eth0").is_ok());
        assert!(check_ifname("a23456789012345").is_ok());
        let e = check_ifname("a234567890123456").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("ifname"));
        assert!(check_ifname("a/b").is_err());
        assert!(check_ifname("").is_err());
        // The kernel would pick a name from the pattern: not what was asked.
        assert!(check_ifname("e%d").is_err());
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

    #[test]
    fn ids_look_like_guids() {
        let id = new_id();
        assert_eq!(id.len(), 36);
        assert_ne!(id, new_id());
    }
}
