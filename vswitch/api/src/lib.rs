//! The control API of `vswitchd`, shared by the daemon and `vswitchctl`.
//!
//! Wire protocol: the client connects to the daemon's Unix socket and writes
//! one [`Request`] as a single line of JSON; the daemon answers with one
//! [`Response`] as a single line of JSON. A connection may carry any number of
//! request/response pairs, in order. Anything that is not a well-formed
//! request is answered with an [`ApiError`] of kind [`ErrorKind::BadRequest`]
//! and changes nothing.
//!
//! Field names follow the Windows Host Networking Service (HNS) where HNS
//! has one (`Name`, `Type`, `Subnets`, `AddressPrefix`, `GatewayAddress`,
//! `MacAddress`, `IPAddress`, `PrefixLength`...), PascalCase elsewhere.
//!
//! Requests carry addresses and CIDRs as strings on purpose: the daemon parses
//! them, so a malformed value is refused with the name of the field it was in,
//! whatever client sent it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Where `vswitchd` listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/vswitch/vswitchd.sock";
/// Where `vswitchd` keeps its state unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/vswitch";
/// Environment variable `vswitchctl` reads the socket path from.
pub const SOCKET_ENV: &str = "VSWITCH_SOCKET";

/// A network's mode: what its endpoints get, and how it reaches the wire.
/// This is the one list of drivers; [`DRIVERS`], the CLI's help and the
/// daemon's messages are derived from it, and code asks a driver for the
/// property it needs ([`Driver::switched`], [`Driver::wire_mac`]...) rather
/// than matching on which driver it is. Serialized by name, as in
/// `vswitchd`'s state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    Internal,
    Private,
    None,
    Transparent,
    #[serde(rename = "l2bridge")]
    L2Bridge,
    #[serde(rename = "l2tunnel")]
    L2Tunnel,
    Nat,
    Overlay,
}

/// Which source MAC an endpoint's frames carry on the wire (drivers with an
/// uplink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireMac {
    /// Its own: the wire sees N MACs, and frames for them are steered to
    /// the switch. The uplink cannot be shared with another network, which
    /// would need to see those frames too.
    Endpoint,
    /// The uplink's: the switch rewrites MACs both ways and answers ARP and
    /// NDP for its endpoints (Hyper-V's l2bridge).
    Uplink,
    /// The uplink's, and its IPv4 address too: the switch translates
    /// (WinNAT). Endpoints' addresses are private and never on the wire.
    Translated,
}

/// When a network has a host port: a TAP in the daemon's namespace holding
/// the gateway, through which the host routes (Windows' host vNIC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPort {
    Never,
    Always,
    /// When the network's IPv4 subnet is not one the uplink is on: the host
    /// then routes between the endpoints and the wire.
    OffUplinkSubnet,
}

/// One driver's row of the table.
struct DriverInfo {
    name: &'static str,
    summary: &'static str,
    switched: bool,
    wire_mac: Option<WireMac>,
    host_port: HostPort,
    /// Policy (ACLs) holds between two endpoints of the network, not only
    /// between an endpoint and the rest of the world.
    police_local: bool,
    /// Endpoints on other hosts are reached through a VXLAN tunnel port
    /// (by CA->PA mappings), not through an uplink.
    tunnel: bool,
}

impl Driver {
    /// Every driver, in the order help text lists them.
    pub const ALL: [Driver; 8] = [
        Driver::Nat,
        Driver::Internal,
        Driver::Private,
        Driver::None,
        Driver::Transparent,
        Driver::L2Bridge,
        Driver::L2Tunnel,
        Driver::Overlay,
    ];

    const fn info(self) -> DriverInfo {
        match self {
            Driver::Nat => DriverInfo {
                name: "nat",
                summary: "endpoints on a private subnet behind the gateway, translated to the uplink's address",
                switched: true,
                wire_mac: Some(WireMac::Translated),
                host_port: HostPort::Always,
                police_local: true,
                tunnel: false,
            },
            Driver::Internal => DriverInfo {
                name: "internal",
                summary: "endpoints and a host port holding the gateway",
                switched: true,
                wire_mac: None,
                host_port: HostPort::Always,
                police_local: true,
                tunnel: false,
            },
            Driver::Private => DriverInfo {
                name: "private",
                summary: "endpoints only",
                switched: true,
                wire_mac: None,
                host_port: HostPort::Never,
                police_local: true,
                tunnel: false,
            },
            Driver::None => DriverInfo {
                name: "none",
                summary: "loopback only",
                switched: false,
                wire_mac: None,
                host_port: HostPort::Never,
                police_local: true,
                tunnel: false,
            },
            Driver::Transparent => DriverInfo {
                name: "transparent",
                summary: "bridged onto an uplink, endpoints with their own MACs",
                switched: true,
                wire_mac: Some(WireMac::Endpoint),
                host_port: HostPort::Never,
                police_local: true,
                tunnel: false,
            },
            Driver::L2Bridge => DriverInfo {
                name: "l2bridge",
                summary: "bridged onto an uplink behind the uplink's MAC; same-host traffic bypasses policy",
                switched: true,
                wire_mac: Some(WireMac::Uplink),
                host_port: HostPort::OffUplinkSubnet,
                police_local: false,
                tunnel: false,
            },
            Driver::L2Tunnel => DriverInfo {
                name: "l2tunnel",
                summary: "as l2bridge on the wire, with policy on all traffic, same-host too",
                switched: true,
                wire_mac: Some(WireMac::Uplink),
                host_port: HostPort::OffUplinkSubnet,
                police_local: true,
                tunnel: false,
            },
            Driver::Overlay => DriverInfo {
                name: "overlay",
                summary: "VXLAN between hosts: endpoints elsewhere reached at their host's provider address (-o vsid=N)",
                switched: true,
                wire_mac: None,
                host_port: HostPort::Never,
                police_local: true,
                tunnel: true,
            },
        }
    }

    /// The name on the command line, in the API and in the state file.
    pub const fn name(self) -> &'static str {
        self.info().name
    }

    pub fn parse(name: &str) -> Option<Driver> {
        Driver::ALL.into_iter().find(|d| d.name() == name)
    }

    /// What endpoints get, in a few words (help text).
    pub const fn summary(self) -> &'static str {
        self.info().summary
    }

    /// Whether endpoints get a vNIC on the switch (otherwise loopback only,
    /// and the network has no subnet).
    pub const fn switched(self) -> bool {
        self.info().switched
    }

    /// Whether the network reaches the wire through an uplink interface
    /// (`-o interface`, and with it `-o vlanid`).
    pub const fn has_uplink(self) -> bool {
        self.info().wire_mac.is_some()
    }

    /// Which MAC endpoints' frames carry on the wire; `None` without uplink.
    pub const fn wire_mac(self) -> Option<WireMac> {
        self.info().wire_mac
    }

    /// Whether the network needs an uplink no other network uses.
    pub const fn owns_uplink(self) -> bool {
        matches!(self.wire_mac(), Some(WireMac::Endpoint))
    }

    /// Whether ACLs hold between two endpoints of the network (Windows'
    /// l2bridge bridges same-host traffic without policy; l2tunnel sends
    /// it through the policy too).
    pub const fn police_local(self) -> bool {
        self.info().police_local
    }

    /// Whether endpoints on other hosts are reached through a VXLAN tunnel
    /// port (`-o vsid`, CA->PA mappings).
    pub const fn tunnel(self) -> bool {
        self.info().tunnel
    }

    pub const fn host_port(self) -> HostPort {
        self.info().host_port
    }

    /// The drivers with a property, named and joined: "transparent or
    /// l2bridge" (messages).
    pub fn names_where(pred: impl Fn(Driver) -> bool, last: &str) -> String {
        let names: Vec<&str> = Driver::ALL
            .into_iter()
            .filter(|d| pred(*d))
            .map(Driver::name)
            .collect();
        match names.split_last() {
            None => String::new(),
            Some((only, [])) => (*only).to_owned(),
            Some((tail, head)) => format!("{} {last} {tail}", head.join(", ")),
        }
    }
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

const fn driver_names() -> [&'static str; Driver::ALL.len()] {
    let mut out = [""; Driver::ALL.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = Driver::ALL[i].name();
        i += 1;
    }
    out
}

/// The network drivers, as named on the command line ([`Driver::ALL`]).
pub const DRIVERS: [&str; Driver::ALL.len()] = driver_names();

/// The rule for network and endpoint names: 1-64 of `[A-Za-z0-9_.-]`,
/// starting with a letter or digit (safe in file names, interface listings,
/// shells and etcd keys).
pub fn is_valid_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// One call to the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "Op", content = "Args", rename_all_fields = "PascalCase")]
pub enum Request {
    NetworkCreate(NetworkCreate),
    NetworkList,
    NetworkInspect {
        name: String,
    },
    NetworkRemove {
        name: String,
    },
    EndpointCreate(EndpointCreate),
    EndpointList,
    EndpointInspect {
        name: String,
    },
    EndpointRemove {
        name: String,
    },
    PortList,
    /// Counters of one port (by name), or of every port.
    Stats {
        port: Option<String>,
    },
    FdbShow {
        network: String,
    },
    /// Changes an endpoint's port settings; absent fields stay as they are.
    EndpointSet(EndpointSet),
    /// Adds HNS policies to one endpoint or to a whole network.
    PolicyAdd(PolicyAdd),
    /// The policies of one endpoint (its own and its network's), of one
    /// network, or (neither given) of everything.
    PolicyList {
        #[serde(default)]
        endpoint: Option<String>,
        #[serde(default)]
        network: Option<String>,
    },
    /// Removes one policy, by the id `PolicyAdd` answered with.
    PolicyRemove {
        #[serde(default)]
        endpoint: Option<String>,
        #[serde(default)]
        network: Option<String>,
        id: String,
    },
    /// What the switch would do with a packet, step by step.
    Trace(TraceRequest),
    /// The kernel fast path's programs, pins and attachments.
    DatapathShow,
    /// The flow cache and connection tracking entries, of one endpoint's
    /// port or of every port.
    FlowsDump {
        #[serde(default)]
        endpoint: Option<String>,
    },
    /// An overlay network's CA->PA table: its own endpoints, static
    /// entries and what other hosts published.
    MappingList {
        network: String,
    },
    /// A static CA->PA entry (a foreign VTEP's endpoint).
    MappingAdd(MappingAdd),
    MappingRemove {
        network: String,
        #[serde(rename = "IPAddress")]
        ip: String,
    },
}

/// `network mapping add`: a customer address of the overlay network, its
/// MAC, and the provider address of the host it lives on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default, deny_unknown_fields)]
pub struct MappingAdd {
    pub network: String,
    #[serde(rename = "IPAddress")]
    pub ip: String,
    pub mac_address: String,
    pub provider_address: String,
}

/// One entry of an overlay network's CA->PA table (Windows' lookup
/// record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Mapping {
    #[serde(rename = "VSID")]
    pub vsid: u32,
    #[serde(rename = "IPAddress")]
    pub ip: String,
    pub mac_address: String,
    pub provider_address: String,
    /// `local` (an endpoint of this host), `static` (`mapping add`, a
    /// network policy) or `remote` (published by another host).
    pub source: String,
    /// The endpoint (local) or host id (remote) the entry belongs to.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub owner: Option<String>,
}

/// `endpoint set`: each field given replaces the endpoint's setting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default, deny_unknown_fields)]
pub struct EndpointSet {
    pub name: String,
    /// Hyper-V's MacAddressSpoofing (also lets the endpoint send from IP
    /// addresses not its own).
    pub allow_spoofing: Option<bool>,
    /// Drop DHCP server messages (DHCPv4 from port 67, DHCPv6 from 547)
    /// the endpoint sends.
    pub dhcp_guard: Option<bool>,
    /// Drop router advertisements and redirects the endpoint sends.
    pub router_guard: Option<bool>,
    /// What an ACL-policed packet that matches no rule gets: `Allow` (as
    /// HNS) or `Block`.
    pub default_acl_action: Option<String>,
    /// Hyper-V's port mirroring: `source` (the frames the endpoint sends
    /// and receives are copied to its network's destination ports),
    /// `destination` (receives those copies) or `none`.
    pub mirror: Option<String>,
}

/// `policy add`: exactly one of `endpoint` and `network`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default, deny_unknown_fields)]
pub struct PolicyAdd {
    pub endpoint: Option<String>,
    pub network: Option<String>,
    /// One HNS policy or a list of them, v1 or v2 form, as HNS takes them.
    pub policies: serde_json::Value,
}

/// `trace`: a packet described in Open vSwitch's flow syntax, e.g.
/// `tcp,src=10.0.0.2,dst=10.0.0.3,sport=1234,dport=80`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default, deny_unknown_fields)]
pub struct TraceRequest {
    pub endpoint: String,
    /// The packet goes to the endpoint (default: it leaves the endpoint).
    pub inbound: bool,
    pub packet: String,
}

/// `network create`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default, deny_unknown_fields)]
pub struct NetworkCreate {
    pub name: String,
    /// One of [`DRIVERS`] (HNS calls it `Type`).
    #[serde(rename = "Type")]
    pub driver: String,
    /// At most one IPv4 and one IPv6 CIDR, e.g. `10.1.0.0/24`, `fd00:1::/64`.
    pub subnets: Vec<String>,
    /// At most one gateway per address family; each inside its subnet.
    pub gateways: Vec<String>,
    pub mtu: Option<u32>,
    /// `START-END`, e.g. `02:15:5d:00:00:00-02:15:5d:00:ff:ff`.
    pub mac_pool: Option<String>,
    /// Driver options (`-o key=value`).
    pub options: BTreeMap<String, String>,
    /// Free-form key/value pairs kept with the network and shown by
    /// `inspect`; a client finds its own networks by them (the Docker
    /// plugin by Docker's network ID). See [`check_labels`].
    pub labels: BTreeMap<String, String>,
}

/// `endpoint create`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default, deny_unknown_fields)]
pub struct EndpointCreate {
    pub name: String,
    /// Network name.
    #[serde(rename = "VirtualNetworkName")]
    pub network: String,
    /// A name under `/run/netns`, or a path such as `/proc/PID/ns/net`.
    #[serde(rename = "Namespace")]
    pub netns: String,
    /// Static IPv4 address; allocated from the subnet when absent.
    #[serde(rename = "IPAddress")]
    pub ip: Option<String>,
    /// Static IPv6 address; allocated when absent and the network has an
    /// IPv6 subnet.
    #[serde(rename = "IPv6Address")]
    pub ipv6: Option<String>,
    pub mac_address: Option<String>,
    /// Interface name inside the namespace; `eth0` when absent.
    #[serde(rename = "InterfaceName")]
    pub ifname: Option<String>,
    /// Let the endpoint send with source MAC or IP addresses not its own.
    pub allow_spoofing: bool,
    /// Default on: see [`EndpointSet::dhcp_guard`].
    pub dhcp_guard: Option<bool>,
    /// Default on: see [`EndpointSet::router_guard`].
    pub router_guard: Option<bool>,
    /// HNS policies the endpoint starts with (one or a list), as for
    /// [`PolicyAdd::policies`]; `null` for none.
    pub policies: serde_json::Value,
    /// The vNIC's kind; [`Backend::default`] when absent.
    #[serde(default)]
    pub backend: Option<Backend>,
    /// Make the vNIC in the daemon's own namespace and leave it there for
    /// a container runtime to move into its sandbox (Docker's Join): a veth
    /// pair whose endpoint end is `vsc<id>`, with its MAC and MTU set and
    /// no addresses (the runtime configures them). `Namespace` and
    /// `InterfaceName` must be absent and the backend veth: the switch
    /// finds the vNIC by the host end of the pair, wherever it was moved.
    #[serde(rename = "HandOff")]
    pub handoff: bool,
    /// As [`NetworkCreate::labels`].
    pub labels: BTreeMap<String, String>,
}

/// The most labels a network or endpoint carries.
pub const MAX_LABELS: usize = 32;

/// Labels: at most [`MAX_LABELS`], keys 1-128 printable ASCII characters
/// without spaces, values at most 1024 bytes. Returns the fault, naming the
/// key.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!("{} labels; at most {MAX_LABELS}", labels.len()));
    }
    for (k, v) in labels {
        let key_ok = !k.is_empty() && k.len() <= 128 && k.bytes().all(|b| b.is_ascii_graphic());
        if !key_ok {
            return Err(format!(
                "'{k}' is not a label key: 1-128 printable ASCII characters, no spaces"
            ));
        }
        if v.len() > 1024 {
            return Err(format!("{k}: value longer than 1024 bytes"));
        }
    }
    Ok(())
}

/// How an endpoint's vNIC is made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A TAP in the endpoint's namespace; every frame crosses the daemon.
    #[default]
    Tap,
    /// A veth pair: the kernel's fast path forwards what needs no policy,
    /// and punts the rest to the daemon.
    Veth,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Tap => "tap",
            Backend::Veth => "veth",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Backend, String> {
        match s {
            "tap" => Ok(Backend::Tap),
            "veth" => Ok(Backend::Veth),
            _ => Err(format!("'{s}' is not a backend: tap or veth")),
        }
    }
}

/// Hyper-V's port mirroring role of an endpoint's port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortMirroring {
    #[default]
    None,
    /// Every frame the port sends or receives is copied to the network's
    /// destination ports.
    Source,
    /// Receives the copies of the network's source ports' frames.
    Destination,
}

impl PortMirroring {
    pub fn name(self) -> &'static str {
        match self {
            PortMirroring::None => "none",
            PortMirroring::Source => "source",
            PortMirroring::Destination => "destination",
        }
    }
}

impl std::fmt::Display for PortMirroring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for PortMirroring {
    type Err = String;
    /// Case-insensitive, as Hyper-V's `-PortMirroring` takes it.
    fn from_str(s: &str) -> Result<PortMirroring, String> {
        [
            PortMirroring::None,
            PortMirroring::Source,
            PortMirroring::Destination,
        ]
        .into_iter()
        .find(|m| m.name().eq_ignore_ascii_case(s))
        .ok_or_else(|| format!("'{s}' is not a mirroring role: source, destination or none"))
    }
}

/// What the daemon answers. (Built once per request: the size difference
/// between the variants does not matter.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Ok(Reply),
    Error(ApiError),
}

/// The payload of a successful call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    Network(Network),
    Networks(Vec<Network>),
    Endpoint(Endpoint),
    Endpoints(Vec<Endpoint>),
    Ports(Vec<Port>),
    Stats(Vec<PortStats>),
    Fdb(Vec<FdbEntry>),
    Policies(Vec<PolicyView>),
    Trace(Trace),
    Flows(Flows),
    Datapath(DatapathInfo),
    Mappings(Vec<Mapping>),
    /// A removal succeeded. `warning` says what of it could not be done
    /// (a device the daemon could no longer reach).
    Removed {
        name: String,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        warning: Option<String>,
    },
}

/// A refused or failed call. `field` names the request field at fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ApiError {
    pub kind: ErrorKind,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub field: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request could not be decoded at all.
    BadRequest,
    /// A field's value is malformed or out of range.
    InvalidArgument,
    NotFound,
    AlreadyExists,
    /// The request is well-formed but clashes with current state.
    Conflict,
    /// The kernel or the filesystem refused; nothing was changed.
    Internal,
    /// The daemon cannot take the request now (too many connections);
    /// nothing was changed, and the same request may succeed later.
    Unavailable,
}

impl ApiError {
    pub fn new(kind: ErrorKind, field: Option<&str>, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            field: field.map(str::to_owned),
            message: message.into(),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ApiError {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Subnet {
    pub address_prefix: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub gateway_address: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MacPool {
    pub start_mac_address: String,
    pub end_mac_address: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Network {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    #[serde(rename = "Type")]
    pub driver: String,
    pub subnets: Vec<Subnet>,
    pub mtu: u32,
    pub mac_pool: MacPool,
    pub options: BTreeMap<String, String>,
    /// The host port's interface in the daemon's namespace: `internal`
    /// networks, and `l2bridge` networks whose subnet is not the uplink's.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub host_interface: Option<String>,
    /// The uplink interface (`transparent`, `l2bridge`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub uplink_interface: Option<String>,
    /// 802.1Q tag of the network's frames on the uplink.
    #[serde(rename = "VlanId", skip_serializing_if = "Option::is_none", default)]
    pub vlan_id: Option<u16>,
    /// overlay: the virtual subnet id (the VXLAN VNI).
    #[serde(rename = "VSID", skip_serializing_if = "Option::is_none", default)]
    pub vsid: Option<u32>,
    /// overlay: this host's provider address, the outer source of its
    /// VXLAN packets.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub provider_address: Option<String>,
    /// overlay: the MAC of this host's distributed router, which answers
    /// for the network's gateways once it has RemoteSubnetRoute policies
    /// (other hosts name it in theirs: 0e-2a and the PA's four bytes).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub distributed_router_mac_address: Option<String>,
    /// Names of the network's endpoints.
    pub endpoints: Vec<String>,
    pub state: NetworkState,
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkState {
    Up,
    /// Running without part of what it needs, e.g. its uplink interface was
    /// deleted; endpoints still talk to each other.
    Degraded {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndpointState {
    /// The interface exists in its namespace and is connected to the switch.
    Attached,
    /// The namespace or the interface is gone; the endpoint keeps its
    /// addresses until removed.
    Detached { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Endpoint {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    #[serde(rename = "VirtualNetworkName")]
    pub network: String,
    #[serde(rename = "Namespace")]
    pub netns: String,
    #[serde(rename = "InterfaceName")]
    pub ifname: String,
    pub mac_address: String,
    #[serde(rename = "IPAddress", skip_serializing_if = "Option::is_none", default)]
    pub ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub prefix_length: Option<u8>,
    #[serde(
        rename = "IPv6Address",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub ipv6: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ipv6_prefix_length: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub gateway_address: Option<String>,
    pub mtu: u32,
    pub allow_spoofing: bool,
    #[serde(default = "on")]
    pub dhcp_guard: bool,
    #[serde(default = "on")]
    pub router_guard: bool,
    /// `Allow` or `Block`: what ACL-policed packets matching no rule get.
    #[serde(default = "allow")]
    pub default_acl_action: String,
    /// How many policies apply to the endpoint (its own and its network's).
    #[serde(default)]
    pub policy_count: usize,
    /// Its port mirroring role (`endpoint set --mirror`).
    #[serde(default)]
    pub mirror: PortMirroring,
    #[serde(default)]
    pub backend: Backend,
    pub state: EndpointState,
    /// The vNIC was handed to a container runtime ([`EndpointCreate::handoff`]):
    /// `Namespace` is empty, the runtime knows where it went.
    #[serde(
        rename = "HandOff",
        skip_serializing_if = "std::ops::Not::not",
        default
    )]
    pub handoff: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub labels: BTreeMap<String, String>,
}

fn on() -> bool {
    true
}

fn allow() -> String {
    "Allow".to_owned()
}

/// One policy, as `policy ls` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PolicyView {
    /// The ACL's own `Id` when it has one; otherwise given by the daemon.
    #[serde(rename = "ID")]
    pub id: String,
    /// HNS's type name: `ACL`, `QOS`, `PortMapping`, `OutBoundNAT`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// The endpoint it belongs to, or the network (applying to every
    /// endpoint of it).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub network: Option<String>,
    /// The policy as it was given.
    pub settings: serde_json::Value,
    /// ACLs: packets that matched the rule (for a network policy, summed
    /// over its endpoints).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hits: Option<u64>,
}

/// `trace`'s answer: the steps of the decision, in order, and its outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Trace {
    /// The packet as built from the request.
    pub packet: String,
    pub in_port: String,
    pub steps: Vec<TraceStep>,
    /// `forward`, `flood`, `reply` or `drop`.
    pub verdict: String,
    /// Where the packet goes (empty for a drop).
    pub out_ports: Vec<String>,
    /// For a drop, the reason as `stats` counts it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub drop_reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TraceStep {
    /// `admit`, `guard`, `fdb`, `acl.out`, `acl.in`, `conntrack`, `qos`,
    /// `flow_cache`, ...
    pub stage: String,
    pub detail: String,
}

/// `flows dump`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Flows {
    pub flows: Vec<FlowEntry>,
    pub connections: Vec<Connection>,
}

/// A flow cache entry: the policy outcome of one flow on its in-port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FlowEntry {
    pub in_port: String,
    pub out_port: String,
    /// `tcp 10.0.0.2:40000 -> 10.0.0.3:80`.
    pub flow: String,
    /// `allow` or `block`, and the rules that said so.
    pub action: String,
    pub idle_ms: u64,
    pub hits: u64,
}

/// A tracked connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Connection {
    /// The port whose limit it counts against (where it started).
    pub port: String,
    pub protocol: String,
    pub source: String,
    pub destination: String,
    pub source_port: u16,
    pub destination_port: u16,
    /// `syn_sent`, `established`, `closing`, `time_wait`, `closed`,
    /// `unreplied`, `replied`.
    pub state: String,
    pub idle_ms: u64,
    pub packets_original: u64,
    pub packets_reply: u64,
    /// Its replies' tuple, as conntrack -L shows it; differs from the
    /// original reversed for a translated connection.
    #[serde(default)]
    pub reply_source: String,
    #[serde(default)]
    pub reply_destination: String,
    #[serde(default)]
    pub reply_source_port: u16,
    #[serde(default)]
    pub reply_destination_port: u16,
    /// Whether addresses or ports are translated.
    #[serde(default)]
    pub translated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PortKind {
    /// An endpoint's vNIC (a TAP inside its namespace).
    Endpoint,
    /// A network's host vNIC in the root namespace, holding the gateway.
    Host,
    /// A network's attachment to its uplink interface (AF_XDP).
    Uplink,
    /// An overlay network's VXLAN tunnel port (to its other hosts).
    Tunnel,
}

impl fmt::Display for PortKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PortKind::Endpoint => "endpoint",
            PortKind::Host => "host",
            PortKind::Uplink => "uplink",
            PortKind::Tunnel => "tunnel",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Port {
    /// Port name: the endpoint's name, or `host:NETWORK` for a host port.
    pub name: String,
    /// The port's id in the datapath: kept across restarts, never reused
    /// while the daemon's state lasts (flows and counters refer to it).
    #[serde(default)]
    pub id: u32,
    pub kind: PortKind,
    pub network: String,
    /// The Linux interface behind the port.
    pub interface: String,
    /// The namespace the interface lives in; absent for the root namespace.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub netns: Option<String>,
    pub mac_address: String,
    /// How frames reach the switch: `tap` or `veth` for endpoints; for
    /// uplinks `afxdp` (XDP steering to AF_XDP sockets) or `tc` (TC
    /// steering to a punt TAP, GSO intact).
    pub backend: String,
    /// For `afxdp` uplinks, how the XDP program is attached: `native` (in
    /// the driver) or `generic` (after the kernel builds an skb).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub xdp_mode: Option<String>,
    /// Whether GSO/checksum offloads are negotiated with the kernel.
    pub offload: bool,
    pub state: EndpointState,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PortStats {
    pub port: String,
    pub network: String,
    /// Frames received from the port. A GSO frame counts once.
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Frames sent to the port.
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames from a veth uplink whose TCP/UDP checksum the peer left to
    /// fill (its TX checksum offload), handed on as "checksum needed".
    #[serde(default)]
    pub rx_partial_checksums: u64,
    /// Copies of mirror source ports' frames sent to this port (a mirror
    /// destination); they are in `tx_packets` too.
    #[serde(default)]
    pub mirrored_packets: u64,
    #[serde(default)]
    pub mirrored_bytes: u64,
    /// Frames dropped, by reason; reasons with a zero count are included.
    pub drops: BTreeMap<String, u64>,
    /// The port's flow cache (endpoints with policies).
    #[serde(default)]
    pub flow_cache: FlowCacheStats,
    /// veth endpoints: what the kernel fast path did with the port's
    /// frames. Its packets count wire frames (a GSO frame its segments);
    /// `rx_packets`/`tx_packets` above include the forwarded ones.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fast_path: Option<FastPathStats>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FastPathStats {
    /// Received from the port and forwarded in the kernel.
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
    /// Sent to the port by the kernel (from another port's fast path).
    pub delivered_packets: u64,
    pub delivered_bytes: u64,
    /// Received from the port and handed to the slow path.
    pub punted_packets: u64,
    pub punted_bytes: u64,
    /// Dropped in the kernel, by reason (the slow path's reason names).
    pub drops: BTreeMap<String, u64>,
}

/// What the kernel fast path has pinned and attached (`vswitchctl
/// datapath show`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DatapathInfo {
    /// False until the first veth endpoint needs the fast path.
    pub loaded: bool,
    pub pin_dir: String,
    /// The layout (map formats) and program version of this build.
    pub layout: u32,
    pub version: String,
    /// How this daemon found bpffs: `loaded`, `adopted` (a previous
    /// instance's programs, kept running) or `replaced`.
    pub origin: String,
    pub attachments: Vec<Attachment>,
    /// The VXLAN devices of overlay networks, with the kernel's drops of
    /// VXLAN packets no network took (unknown VNI, truncated...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vteps: Vec<VtepInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VtepInfo {
    pub interface: String,
    /// The UDP port it terminates.
    pub port: u16,
    /// Drops by reason, non-zero ones only.
    pub drops: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Attachment {
    pub interface: String,
    pub ifindex: u32,
    /// The endpoint (or uplink) whose device it is.
    pub port: String,
    pub program: String,
    /// Hook and mode, e.g. `tcx ingress`.
    pub hook: String,
    /// Whether the kernel lists the program on the hook now.
    pub attached: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FlowCacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: u64,
    pub evictions: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FdbEntry {
    pub mac_address: String,
    pub port: String,
    /// Seconds since the address was last seen.
    pub age_seconds: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drivers_are_named_once() {
        assert_eq!(
            DRIVERS,
            [
                "nat",
                "internal",
                "private",
                "none",
                "transparent",
                "l2bridge",
                "l2tunnel",
                "overlay"
            ]
        );
        for d in Driver::ALL {
            assert_eq!(Driver::parse(d.name()), Some(d));
            // The state file's spelling is the command line's.
            assert_eq!(serde_json::to_string(&d).unwrap(), format!("\"{d}\""));
        }
        assert_eq!(Driver::parse("L2Bridge"), None);
        assert_eq!(
            Driver::names_where(Driver::has_uplink, "or"),
            "nat, transparent, l2bridge or l2tunnel"
        );
        assert_eq!(Driver::names_where(|d| !d.switched(), "or"), "none");
    }

    #[test]
    fn request_shape_is_stable() {
        let req = Request::NetworkInspect { name: "n1".into() };
        let text = serde_json::to_string(&req).unwrap();
        assert_eq!(text, r#"{"Op":"NetworkInspect","Args":{"Name":"n1"}}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), req);
        let list: Request = serde_json::from_str(r#"{"Op":"NetworkList"}"#).unwrap();
        assert_eq!(list, Request::NetworkList);
    }

    #[test]
    fn network_create_uses_hns_names() {
        let req = Request::NetworkCreate(NetworkCreate {
            name: "n".into(),
            driver: "internal".into(),
            subnets: vec!["10.0.0.0/24".into()],
            ..Default::default()
        });
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(v["Args"]["Type"], "internal");
        assert_eq!(v["Args"]["Subnets"][0], "10.0.0.0/24");
    }

    #[test]
    fn misspelt_fields_are_refused() {
        let text = r#"{"Op":"EndpointCreate","Args":{"Name":"e","IpAddress":"10.0.0.9"}}"#;
        let err = serde_json::from_str::<Request>(text).unwrap_err();
        assert!(err.to_string().contains("IpAddress"), "{err}");
    }

    #[test]
    fn labels_are_bounded() {
        let ok = BTreeMap::from([("com.docker.network.id".to_owned(), "abc".to_owned())]);
        assert!(check_labels(&ok).is_ok());
        let spaced = BTreeMap::from([("a b".to_owned(), String::new())]);
        assert!(check_labels(&spaced).unwrap_err().contains("'a b'"));
        let long = BTreeMap::from([("k".to_owned(), "x".repeat(1025))]);
        assert!(check_labels(&long).unwrap_err().contains("k:"));
        let many: BTreeMap<String, String> = (0..=MAX_LABELS)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        assert!(check_labels(&many).is_err());
    }

    #[test]
    fn error_displays_field_first() {
        let e = ApiError::new(
            ErrorKind::InvalidArgument,
            Some("subnet"),
            "expected a CIDR",
        );
        assert_eq!(e.to_string(), "subnet: expected a CIDR");
    }
}
