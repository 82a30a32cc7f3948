//! The control plane: validates requests, keeps the state, and drives the
//! kernel (namespaces, TAPs) and the datapath to match it.
//!
//! Every mutating request is checked whole before anything changes; then
//! the kernel and the datapath are changed, undoing what was done if a step
//! fails; the state file is written last. A refused or failed request leaves
//! state, kernel and datapath as they were.
//!
//! By resource: [`networks`] (and the uplinks they share), [`endpoints`],
//! [`views`] (what the read requests show), [`errors`] (every domain error
//! as an API error). Here: the controller, restoring it on start, request
//! dispatch and saving. [`policies`]: HNS policies and the port settings
//! (`endpoint set`) that compile into an endpoint's layers; [`trace`]: the
//! trace and flow dump requests; [`metrics`]: what `/metrics` shows.

mod endpoints;
mod errors;
mod fastpath;
mod ipam;
mod metrics;
mod natmode;
mod networks;
mod options;
mod overlay;
mod plumb;
mod policies;
mod records;
pub mod server;
pub mod shared;
mod state;
mod trace;
mod uplink;
mod views;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;

use crate::api::{ApiError, EndpointState, ErrorKind, Reply, Request, Response};
use crate::datapath::{
    Datapath, KernelPort, NetId, PortCounters, PortId, PortKind, PortSecurity, PortSpec,
};
use crate::pipeline::conntrack::Limits;
use crate::pipeline::Layers;
use crate::sys::random_bytes;
use crate::wire::MacAddr;

use crate::port::tap::TapOwner;
use errors::{invalid, state_error};
pub use ipam::{Ipv4Cidr, Ipv6Cidr, MacPool, Subnet};
pub use options::NetworkOptions;
use plumb::TapOrigin;
pub use state::{
    Driver, EndpointRecord, NetworkRecord, PolicyRecord, State, StateError, StateFile,
};
pub use views::{host_port_name, uplink_port_name};

/// Default MTU of a network.
pub const DEFAULT_MTU: u32 = 1500;
/// Default interface name of an endpoint inside its namespace.
pub const DEFAULT_IFNAME: &str = "eth0";
/// Subnets handed to networks created without `--subnet`: /24s from here.
const DEFAULT_POOL: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 0);

type ApiResult<T> = Result<T, ApiError>;

/// A port the datapath holds for us.
struct PortHandle {
    id: PortId,
    counters: Arc<PortCounters>,
    /// The control plane's own descriptor of the port's TAP (endpoints),
    /// to remove the device wherever it is.
    tap: Option<TapOwner>,
    /// The layers the datapath has for the port (their hit counters are
    /// shared), and the policy id of each ACL rule in them.
    layers: Layers,
    rule_ids: Vec<String>,
    /// veth endpoints: their devices and fast path entries.
    veth: Option<fastpath::VethHandle>,
}

struct NetRuntime {
    dp: NetId,
    host: Option<PortHandle>,
    /// The network's port on its uplink trunk.
    uplink: Option<PortHandle>,
    /// overlay: the tunnel port, and the tunnel's kernel side.
    tunnel: Option<PortHandle>,
    overlay: Option<overlay::TunnelHandle>,
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
        // A veth pair goes whole: its host end gone means the vNIC is.
        let veth_gone = self
            .port
            .as_ref()
            .and_then(|p| p.veth.as_ref())
            .is_some_and(|h| crate::sys::if_index(&h.names.host) != Some(h.host_index));
        if veth_gone || self.port.as_ref().is_some_and(|p| p.counters.has_failed()) {
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
    /// Uplink trunks are numbered as they are attached: no record names
    /// them (an uplink is shared by the networks naming its interface).
    next_trunk_id: u32,
    /// The kernel fast path, once a veth endpoint needed it.
    fast: Option<crate::ebpf::fastpath::FastPath>,
    /// Networks whose uplink the kernel fast path uses (mirror installed).
    fast_nets: HashSet<NetId>,
    overlay: OverlayState,
    /// This host in the overlay's shared store (`--etcd`).
    shared: Option<shared::Shared>,
}

/// What the overlay networks of this host share.
#[derive(Debug, Default)]
pub struct OverlayState {
    /// This host's provider address (`--provider-address`), when given.
    pub provider_address: Option<Ipv4Addr>,
    /// VXLAN devices by UDP port.
    vteps: HashMap<u16, overlay::Vtep>,
    /// Provider interfaces with the VTEP guard, and how many networks use
    /// each.
    guards: HashMap<String, usize>,
    /// Whether the shared store reaches etcd now.
    store_connected: bool,
    /// What other hosts published, by VSID and customer address.
    remote: HashMap<u32, std::collections::BTreeMap<IpAddr, overlay::RemoteMapping>>,
}

impl Controller {
    /// Loads the saved state and brings the kernel and datapath back to it.
    /// Endpoints that cannot be re-attached are reported as detached.
    pub fn open(state_dir: &Path, limits: Limits) -> Result<Controller, StateError> {
        Controller::open_with(state_dir, limits, None)
    }

    /// [`Controller::open`], with this host's provider address for overlay
    /// networks.
    pub fn open_with(
        state_dir: &Path,
        limits: Limits,
        provider_address: Option<Ipv4Addr>,
    ) -> Result<Controller, StateError> {
        let file = StateFile::new(state_dir);
        let saved = file.load()?;
        let datapath = Datapath::spawn(limits).map_err(|source| StateError::Io {
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
            next_trunk_id: 1,
            fast: None,
            fast_nets: HashSet::new(),
            overlay: OverlayState {
                provider_address,
                ..OverlayState::default()
            },
            shared: None,
        };
        ctl.restore(saved);
        Ok(ctl)
    }

    fn restore(&mut self, mut saved: State) {
        // Records from before ids were kept get theirs now, and keep them.
        let assigned = saved.assign_missing_ids();
        self.state.next_net_id = saved.next_net_id;
        self.state.next_port_id = saved.next_port_id;
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
                    if let Err(e) = self.overlay_sync(&net) {
                        tracing::error!(network = %net.name, error = %e, "mappings not restored");
                    }
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
        self.fast_sweep();
        // Port mappings are the endpoints' policies: known only now.
        for net in self.state.networks.clone() {
            if let Err(e) = self.push_nat(&net) {
                tracing::error!(network = %net.name, error = %e, "port mappings not restored");
            }
        }
        if assigned {
            match self.save() {
                Ok(()) => tracing::info!("datapath ids given to records saved without them"),
                Err(e) => {
                    tracing::error!(error = %e, "could not save the ids given to old records")
                }
            }
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
            Request::EndpointSet(set) => self.endpoint_set(set).map(Reply::Endpoint),
            Request::PolicyAdd(add) => self.policy_add(add).map(Reply::Policies),
            Request::PolicyList { endpoint, network } => self
                .policy_list(endpoint.as_deref(), network.as_deref())
                .map(Reply::Policies),
            Request::PolicyRemove {
                endpoint,
                network,
                id,
            } => self.policy_remove(endpoint.as_deref(), network.as_deref(), &id),
            Request::Trace(req) => self.trace(req).map(Reply::Trace),
            Request::FlowsDump { endpoint } => self.flows(endpoint.as_deref()).map(Reply::Flows),
            Request::DatapathShow => Ok(Reply::Datapath(self.datapath_show())),
            Request::MappingList { network } => self.mapping_list(&network),
            Request::MappingAdd(m) => self.mapping_add(m),
            Request::MappingRemove { network, ip } => self.mapping_remove(&network, &ip),
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
        self.file.save(&self.state).map_err(state_error)
    }

    /// Records the state again after undoing a change whose kernel side
    /// failed. If even that fails, the next start finds the record and
    /// completes it, which is logged here.
    fn save_after_undo(&self) {
        if let Err(e) = self.save() {
            tracing::error!(error = %e, "could not record an undone change; the next start will redo it");
        }
    }

    fn next_trunk_id(&mut self) -> u32 {
        let id = self.next_trunk_id;
        self.next_trunk_id += 1;
        id
    }

    /// Adds port `id` (a record's) to network `net` of the datapath.
    #[allow(clippy::too_many_arguments)]
    fn attach(
        &mut self,
        id: PortId,
        net: NetId,
        kind: PortKind,
        security: Option<PortSecurity>,
        gso: bool,
        addrs: Vec<(IpAddr, MacAddr)>,
        mac: Option<MacAddr>,
        (layers, rule_ids): (Layers, Vec<String>),
        kernel: Option<KernelPort>,
    ) -> std::io::Result<PortHandle> {
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
            layers: layers.clone(),
            kernel,
        })?;
        Ok(PortHandle {
            id,
            counters,
            tap: None,
            layers,
            rule_ids,
            veth: None,
        })
    }
}

/// Network and endpoint names: 1-64 of `[A-Za-z0-9_.-]`, starting with a
/// letter or digit (safe in file names, interface listings and shells).
fn check_name(field: &str, name: &str) -> ApiResult<()> {
    if crate::api::is_valid_name(name) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("'{name}' is not a valid name: 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"),
        ))
    }
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
    use crate::ifname::IfName;

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
        // Which names pass is IfName's to test; this is how a refusal reads.
        let e = errors::invalid_ifname("ifname", IfName::checked("a234567890123456").unwrap_err());
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert_eq!(e.field.as_deref(), Some("ifname"));
        assert_eq!(
            e.message,
            "'a234567890123456' is not an interface name: 16 bytes; interface names are 1-15 bytes"
        );
        // The kernel would pick a name from the pattern: not what was asked.
        assert!(IfName::checked("e%d").is_err());
    }

    #[test]
    fn ids_look_like_guids() {
        let id = new_id();
        assert_eq!(id.len(), 36);
        assert_ne!(id, new_id());
    }
}
