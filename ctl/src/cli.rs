//! Command-line grammar of `vswitchctl` and its translation into API requests.
//!
//! Values the daemon understands better than we do (drivers, CIDRs, MACs,
//! namespaces) are passed through as typed by the user: the daemon validates
//! them and names the offending field, so every client reports the same error.
//! Policy files are the exception: the daemon cannot see the caller's files or
//! stdin, so they are read here, and checked only to be JSON.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};
use vswitch_api::{EndpointCreate, EndpointSet, NetworkCreate, PolicyAdd, Request, TraceRequest};

const ABOUT: &str = "\
Control vswitchd, a Linux software switch that reproduces the Hyper-V virtual switch.
Networks are virtual switches; endpoints are vNICs in network namespaces plugged into them.";

const QUICK_START: &str = "\
Quick start:
  vswitchctl network create -d internal --subnet 10.1.0.0/24 --gateway 10.1.0.1 net1
  ip netns add ns1 && vswitchctl endpoint create --network net1 --netns ns1 ep1
  vswitchctl endpoint ls

A lab from a file (see 'vswitchctl apply --help'):
  vswitchctl apply -f examples/two-endpoints.yaml
  vswitchctl delete -f examples/two-endpoints.yaml

Policies and tracing:
  vswitchctl policy add --endpoint ep1 --file acl.json
  vswitchctl trace --endpoint ep1 --packet tcp,src=10.1.0.2,dst=10.1.0.3,sport=40000,dport=80

Docker and CNI:
  vswitchd --docker-plugin      serves /run/docker/plugins/vswitch.sock; then
  docker network create -d vswitch --subnet 172.30.0.0/24 -o type=nat mynat
  vswitch-cni                   a CNI plugin: copy it to /opt/cni/bin (podman: /usr/lib/cni)
                                and a config such as examples/cni/10-vswitch.conflist to
                                /etc/cni/net.d (see README.md, 'Docker and Kubernetes')

Run 'vswitchctl COMMAND --help' for each command's arguments.";

const NETWORK_CREATE_EXAMPLES: &str = "\
Options (-o KEY=VALUE):
  fdb_aging=SECONDS   how long a learned MAC is kept without traffic (default 300)
  fdb_max=N           learned MACs kept per network (default 8192)
  offload=on|off      TSO/checksum offload on the network's TAPs (default on)
  interface=IFNAME    the uplink of a transparent, l2bridge or l2tunnel network (required for
                      them); of a nat network (default: the interface of the default route)
  vlanid=N            802.1Q VLAN of the network on its uplink, 1-4094
  nat_ports=LO-HI     source ports a nat network translates to (default: above the kernel's
                      ephemeral range, 61000-65535 by default)

Examples:
  vswitchctl network create -d nat mynat
  vswitchctl network create -d internal --subnet 10.1.0.0/24 --gateway 10.1.0.1 net1
  vswitchctl network create -d private --subnet 10.2.0.0/24 --subnet fd00:2::/64 --mtu 9000 net2
  vswitchctl network create -d l2bridge --subnet 192.168.1.0/24 --gateway 192.168.1.1 -o interface=eth1 wire
  vswitchctl network create -d transparent --subnet 192.168.2.0/24 -o interface=eth2 -o vlanid=20 tr";

const ENDPOINT_CREATE_EXAMPLES: &str = "\
Examples:
  ip netns add ns1
  vswitchctl endpoint create --network net1 --netns ns1 ep1
  vswitchctl endpoint create --network net1 --netns /proc/1234/ns/net --ip 10.1.0.10 --ifname eth1 ep2
  vswitchctl endpoint create --network net1 --netns ns3 -p 8080:80 -p 0:53/udp --policy-file acl.json ep3

-p adds an HNS PortMapping policy; --policy-file holds HNS policies as for 'vswitchctl policy add'.";

const ENDPOINT_SET_EXAMPLES: &str = "\
Examples:
  vswitchctl endpoint set --dhcp-guard off ep1
  vswitchctl endpoint set --default-acl-action block --allow-spoofing off ep1";

const POLICY_ADD_EXAMPLES: &str = "\
The file holds one HNS policy (a JSON object) or a list of them, in HNS's v1 or v2
form: ACL, QOS, PortMapping, OutBoundNAT, and for overlay networks RemoteSubnetRoute
(a network's) and ProviderAddress (an endpoint's). For example, acl.json:
  {\"Type\": \"ACL\", \"Settings\": {\"Id\": \"allow-web\", \"Action\": \"Allow\", \"Direction\": \"In\",
   \"Protocols\": \"6\", \"LocalPorts\": \"80\", \"Priority\": 100}}

Examples:
  vswitchctl policy add --endpoint ep1 --file acl.json
  vswitchctl policy add --network net1 --file - < policies.json";

const TRACE_EXAMPLES: &str = "\
Packet (--packet SPEC): a protocol word first, then FIELD=VALUE pairs, comma-separated:
  tcp|udp|icmp|icmp6   the protocol
  src=IP, dst=IP       source and destination addresses
  sport=N, dport=N     source and destination ports (tcp, udp)

Examples:
  vswitchctl trace --endpoint ep1 --packet tcp,src=10.0.0.2,dst=10.0.0.3,sport=1234,dport=80
  vswitchctl trace --endpoint ep1 --packet udp,src=10.0.0.2,dst=10.0.0.3,sport=5353,dport=53
  vswitchctl trace --endpoint ep2 --in --packet icmp,src=10.0.0.2,dst=10.0.0.3";

const APPLY_HELP: &str = "\
The file (YAML; JSON is YAML too) describes networks, endpoints, their HNS policies
and, when asked, the lab's fabric. Every key is checked; a wrong one refuses the whole
file before anything changes, naming its line, column and field. For example:

  name: demo                     # names the lab's record (default: the file's name)
  networks:
    - name: demo
      driver: internal           # as network create -d
      subnets: [10.50.0.0/24]
      gateway: 10.50.0.1         # or gateways: [...]; also mtu, mac_pool
      options: {fdb_aging: 60}   # as -o KEY=VALUE
      policies:                  # HNS JSON, as policy add --network takes it
        - {Type: ACL, Settings: {Id: no-ssh, Action: Block, Direction: In, LocalPorts: '22', Priority: 100}}
  endpoints:
    - name: demo-a
      network: demo
      namespace: demo-a          # must exist, or be listed under fabric.namespaces
      address: 10.50.0.10        # or addresses: [IPv4, IPv6]; also mac, ifname
      backend: veth              # tap (default) or veth
      dhcp_guard: false          # also router_guard, allow_spoofing, default_acl_action
      publish: ['8080:80/tcp']   # as endpoint create -p
      policies: []               # HNS JSON, as policy add --endpoint takes it
  fabric:                        # made with ip(8); only what apply made is ever deleted
    namespaces: [demo-a, demo-out, demo-fab]
    bridges: [{name: br0, namespace: demo-fab}]
    links:                       # veth pairs; an end without namespace is in this host's
      - a: {name: eth0, namespace: demo-out, addresses: [10.77.0.1/24]}
        b: {name: fab-out, namespace: demo-fab, master: br0}

apply makes what is missing and changes what differs; an endpoint whose network,
namespace, addresses, MAC, ifname or backend changed is made again, and a network that
changed is made again with its endpoints (the plan says so). Applying the same file again
prints 'no change'. --prune also removes what the lab made before and the file no longer
has. What a lab made is recorded in labs/NAME.json beside the daemon's socket.

Examples:
  vswitchctl apply --dry-run -f examples/lab.yaml     # the plan: + make, ~ change, - remove
  vswitchctl apply -f examples/lab.yaml
  vswitchctl apply --prune -f examples/lab.yaml
  vswitchctl apply --dry-run --json -f lab.yaml       # the plan for scripts
  vswitchctl delete -f examples/lab.yaml";

const DELETE_HELP: &str = "\
Removes every endpoint and network the file (or the lab's record) names, then the
namespaces, bridges and links that apply made: one that was there before apply
is left alone.

Examples:
  vswitchctl delete --dry-run -f examples/lab.yaml
  vswitchctl delete -f examples/lab.yaml";

#[derive(Debug, Parser)]
#[command(name = "vswitchctl", version, about = ABOUT, after_help = QUICK_START)]
pub struct Cli {
    /// Unix socket vswitchd listens on, e.g. --socket /tmp/vswitchd.sock
    #[arg(
        long,
        global = true,
        display_order = 1000,
        value_name = "PATH",
        env = vswitch_api::SOCKET_ENV,
        default_value = vswitch_api::DEFAULT_SOCKET
    )]
    pub socket: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage networks (virtual switches)
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Manage endpoints (vNICs in network namespaces)
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// List switch ports (endpoint and host vNICs)
    #[command(subcommand)]
    Port(PortCommand),
    /// Show traffic and drop counters of every port, or of one
    Stats {
        /// Port to show, with each drop reason, e.g. ep1 or host:net1
        port: Option<String>,
        #[command(flatten)]
        format: JsonFlag,
    },
    /// Show the MAC learning tables
    #[command(subcommand)]
    Fdb(FdbCommand),
    /// Manage HNS policies (ACL, QOS, PortMapping, OutBoundNAT, RemoteSubnetRoute, ProviderAddress) of endpoints and networks
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Show what the switch would do with a packet, step by step
    #[command(after_help = TRACE_EXAMPLES)]
    Trace(TraceArgs),
    /// Show the flow cache and tracked connections
    #[command(subcommand)]
    Flows(FlowsCommand),
    /// Show the kernel fast path: its pinned programs and where they are attached
    #[command(subcommand)]
    Datapath(DatapathCommand),
    /// Bring up a lab described in a file, or bring it in line with the file
    #[command(after_help = APPLY_HELP)]
    Apply(ApplyArgs),
    /// Remove what a lab file describes and what applying it made
    #[command(after_help = DELETE_HELP)]
    Delete(DeleteArgs),
    /// Capture a port's traffic with tcpdump, as text or into a pcap file
    #[command(after_help = CAPTURE_HELP)]
    Capture(CaptureArgs),
}

const CAPTURE_HELP: &str = "\
Runs tcpdump (Debian package tcpdump) on the port's device, any port 'port ls' lists: an
endpoint's vNIC inside the endpoint's namespace (nsenter --net); a host port's TAP or an
uplink's interface in the daemon's namespace. Point of view: the switch's, at the port.
Frames leaving the switch are seen after its translation (NAT, port mappings, l2bridge's
MAC, the VLAN tag), frames entering it before. An uplink is seen on the wire: the host's
own traffic on that interface shows too, while an AF_XDP uplink's frames to and from the
switch pass by the kernel's capture point (XDP takes them first): capture a network's
uplink in tc mode (-o uplink_io=tc, a veth's default) to see them. For a veth
endpoint or uplink the frames the kernel fast path forwards are included. The switch
keeps no capture hook: nothing is spent when nobody captures.

Directions are the switch's: --direction in is what the port sends into the switch
(what a vNIC transmits, what arrives from the wire), out is what the switch delivers to
it.

Examples:
  vswitchctl capture ep1                                  # text, until ^C
  vswitchctl capture -c 4 -w ep1.pcap ep1 icmp            # pcap for tcpdump, tshark, Wireshark
  vswitchctl capture -w - ep1 tcp port 80 | tcpdump -r - -n
  vswitchctl capture --direction out host:net1 arp";

#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// Write pcap to FILE (written packet by packet); - writes it to stdout [default: print text]
    #[arg(short = 'w', value_name = "FILE|-")]
    pub write: Option<PathBuf>,
    /// Stop after N frames, e.g. -c 10
    #[arg(short = 'c', value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Which frames, as the switch sees them: in (from the port), out (to it) or both
    #[arg(
        long,
        value_name = "in|out|both",
        default_value = "both",
        hide_possible_values = true
    )]
    pub direction: Direction,
    /// Port to capture, as 'port ls' names it, e.g. ep1 or host:net1
    pub port: String,
    /// A tcpdump filter expression, e.g. icmp or tcp port 80
    #[arg(value_name = "FILTER", trailing_var_arg = true)]
    pub filter: Vec<String>,
}

/// A capture's direction, from the switch's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Direction {
    In,
    Out,
    Both,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The lab file (YAML or JSON); - reads stdin, e.g. -f examples/lab.yaml
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// Also remove what this lab made before and the file no longer has
    #[arg(long)]
    pub prune: bool,
    /// Print the plan and change nothing
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub format: JsonFlag,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The lab file (YAML or JSON); - reads stdin, e.g. -f examples/lab.yaml
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// Print the plan and change nothing
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub format: JsonFlag,
}

#[derive(Debug, Subcommand)]
pub enum DatapathCommand {
    /// Show the fast path's pin directory, program version and attachments
    Show(JsonFlag),
}

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create a network
    #[command(after_help = NETWORK_CREATE_EXAMPLES)]
    Create(NetworkCreateArgs),
    /// List networks
    #[command(visible_alias = "list")]
    Ls(JsonFlag),
    /// Show everything about a network, as JSON
    Inspect {
        /// Network to show, e.g. net1
        name: String,
        #[command(flatten)]
        format: JsonFlag,
    },
    /// Remove a network
    #[command(visible_alias = "remove")]
    Rm {
        /// Network to remove, e.g. net1
        name: String,
    },
    /// Show an overlay network's CA->PA table: each customer address, its
    /// MAC, and the provider address of the host it lives on (local
    /// endpoints, static entries, and what other hosts published through
    /// etcd)
    Mappings {
        /// Overlay network, e.g. ov1
        name: String,
        #[command(flatten)]
        format: JsonFlag,
    },
    /// Add or remove a static CA->PA entry of an overlay network (an
    /// endpoint behind a foreign VTEP, such as a Linux VXLAN device)
    #[command(subcommand)]
    Mapping(MappingCommand),
}

#[derive(Debug, Subcommand)]
pub enum MappingCommand {
    /// Add (or replace) the entry of one customer address
    #[command(
        after_help = "Example:\n  vswitchctl network mapping add ov1 --ip 10.9.0.50 --mac 02:00:00:00:00:50 --pa 192.168.50.3"
    )]
    Add {
        /// Overlay network, e.g. ov1
        network: String,
        /// Customer address (inside the network's subnet)
        #[arg(long, value_name = "IP")]
        ip: String,
        /// Its MAC address
        #[arg(long, value_name = "MAC")]
        mac: String,
        /// The provider address (IPv4) of the VTEP it lives behind
        #[arg(long = "pa", value_name = "IP")]
        provider_address: String,
        #[command(flatten)]
        format: JsonFlag,
    },
    /// Remove the static entry of one customer address
    #[command(visible_alias = "remove")]
    Rm {
        network: String,
        #[arg(long, value_name = "IP")]
        ip: String,
    },
}

#[derive(Debug, Args)]
pub struct NetworkCreateArgs {
    #[arg(short = 'd', long, value_name = "DRIVER", help = driver_help(), long_help = driver_long_help())]
    pub driver: String,
    /// Subnet in CIDR form; give once per address family, e.g. --subnet 10.1.0.0/24 --subnet fd00:1::/64
    #[arg(long = "subnet", value_name = "CIDR")]
    pub subnets: Vec<String>,
    /// Gateway address inside its subnet; once per address family, e.g. --gateway 10.1.0.1
    #[arg(long = "gateway", value_name = "IP")]
    pub gateways: Vec<String>,
    /// MTU of the network's ports, e.g. --mtu 9000 [default: chosen by vswitchd]
    #[arg(long, value_name = "N")]
    pub mtu: Option<u32>,
    /// Range endpoint MACs are allocated from, e.g. --mac-pool 02:15:5d:00:00:00-02:15:5d:00:ff:ff
    #[arg(long, value_name = "START-END")]
    pub mac_pool: Option<String>,
    /// Driver option, repeatable, e.g. -o interface=eth1 -o vlanid=10 (list below)
    #[arg(short = 'o', long = "opt", value_name = "KEY=VALUE", value_parser = parse_option)]
    pub options: Vec<(String, String)>,
    #[command(flatten)]
    pub format: JsonFlag,
    /// Name of the new network, e.g. net1
    pub name: String,
}

#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// Create an endpoint: a vNIC in a network namespace, connected to a network
    #[command(after_help = ENDPOINT_CREATE_EXAMPLES)]
    Create(EndpointCreateArgs),
    /// List endpoints
    #[command(visible_alias = "list")]
    Ls(JsonFlag),
    /// Show everything about an endpoint, as JSON
    Inspect {
        /// Endpoint to show, e.g. ep1
        name: String,
        #[command(flatten)]
        format: JsonFlag,
    },
    /// Change an endpoint's port settings; those not given stay as they are
    #[command(after_help = ENDPOINT_SET_EXAMPLES)]
    Set(EndpointSetArgs),
    /// Remove an endpoint and its interface
    #[command(visible_alias = "remove")]
    Rm {
        /// Endpoint to remove, e.g. ep1
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct EndpointCreateArgs {
    /// Network to connect to, e.g. --network net1
    #[arg(long, value_name = "NET")]
    pub network: String,
    /// Namespace to put the interface in: a name under /run/netns or a path, e.g. --netns ns1 or --netns /proc/1234/ns/net
    #[arg(long, value_name = "NS")]
    pub netns: String,
    /// Static IPv4 address, e.g. --ip 10.1.0.10 [default: allocated from the subnet]
    #[arg(long, value_name = "IP")]
    pub ip: Option<String>,
    /// Static IPv6 address, e.g. --ipv6 fd00:1::10 [default: allocated if the network has an IPv6 subnet]
    #[arg(long, value_name = "IP")]
    pub ipv6: Option<String>,
    /// MAC address, e.g. --mac 02:15:5d:12:34:56 [default: allocated from the network's MAC pool]
    #[arg(long, value_name = "MAC")]
    pub mac: Option<String>,
    /// Interface name inside the namespace, e.g. --ifname eth1 [default: eth0]
    #[arg(long, value_name = "IF")]
    pub ifname: Option<String>,
    /// Let the endpoint send from MAC or IP addresses that are not its own
    #[arg(long)]
    pub allow_spoofing: bool,
    /// The vNIC's kind: `tap` (every frame through vswitchd) or `veth` (a veth
    /// pair; the kernel fast path forwards what needs no policy, vswitchd the
    /// rest) [default: tap]
    #[arg(long, value_name = "KIND")]
    pub backend: Option<vswitch_api::Backend>,
    /// Drop DHCP server messages the endpoint sends, e.g. --dhcp-guard off [default: on]
    #[arg(long, value_name = "on|off", hide_possible_values = true)]
    pub dhcp_guard: Option<Switch>,
    /// Drop router advertisements and redirects the endpoint sends, e.g. --router-guard off [default: on]
    #[arg(long, value_name = "on|off", hide_possible_values = true)]
    pub router_guard: Option<Switch>,
    /// Publish a port, repeatable, e.g. -p 8080:80 -p 0:53/udp (host port 0: the switch picks one)
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "HOST_PORT:CONTAINER_PORT[/tcp|/udp]",
        value_parser = parse_publish
    )]
    pub publish: Vec<PortMapping>,
    /// JSON file of HNS policies to start with, one or a list; - reads stdin, e.g. --policy-file acl.json
    #[arg(long, value_name = "FILE")]
    pub policy_file: Option<PathBuf>,
    #[command(flatten)]
    pub format: JsonFlag,
    /// Name of the new endpoint, e.g. ep1
    pub name: String,
}

#[derive(Debug, Args)]
#[command(group(
    clap::ArgGroup::new("setting")
        .args(["allow_spoofing", "dhcp_guard", "router_guard", "default_acl_action", "mirror"])
        .required(true)
        .multiple(true)
))]
pub struct EndpointSetArgs {
    /// Let the endpoint send from MAC or IP addresses that are not its own
    #[arg(long, value_name = "on|off", hide_possible_values = true)]
    pub allow_spoofing: Option<Switch>,
    /// Drop DHCP server messages the endpoint sends
    #[arg(long, value_name = "on|off", hide_possible_values = true)]
    pub dhcp_guard: Option<Switch>,
    /// Drop router advertisements and redirects the endpoint sends
    #[arg(long, value_name = "on|off", hide_possible_values = true)]
    pub router_guard: Option<Switch>,
    /// What packets matching none of the endpoint's ACLs get, e.g. --default-acl-action block
    #[arg(long, value_name = "allow|block", hide_possible_values = true)]
    pub default_acl_action: Option<AclAction>,
    /// Hyper-V port mirroring: a source's frames, both ways, are copied to
    /// every destination endpoint of its network; none stops it, e.g. --mirror source
    #[arg(
        long,
        value_name = "source|destination|none",
        hide_possible_values = true
    )]
    pub mirror: Option<vswitch_api::PortMirroring>,
    #[command(flatten)]
    pub format: JsonFlag,
    /// Endpoint to change, e.g. ep1
    pub name: String,
}

/// An `on|off` argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

impl Switch {
    fn is_on(self) -> bool {
        self == Switch::On
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AclAction {
    Allow,
    Block,
}

impl AclAction {
    /// As HNS spells it.
    fn api_name(self) -> &'static str {
        match self {
            AclAction::Allow => "Allow",
            AclAction::Block => "Block",
        }
    }
}

/// One `-p HOST_PORT:CONTAINER_PORT[/PROTO]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMapping {
    /// 0: the switch picks one.
    pub host_port: u16,
    pub container_port: u16,
    /// IP protocol number: 6 (tcp) or 17 (udp).
    pub protocol: u8,
}

impl PortMapping {
    /// The HNS v2 PortMapping policy.
    pub(crate) fn policy(&self) -> Value {
        json!({
            "Type": "PortMapping",
            "Settings": {
                "Protocol": self.protocol,
                "InternalPort": self.container_port,
                "ExternalPort": self.host_port,
            }
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Add policies to an endpoint or to every endpoint of a network
    #[command(after_help = POLICY_ADD_EXAMPLES)]
    Add {
        #[command(flatten)]
        owner: PolicyOwner,
        /// JSON file of one HNS policy or a list of them; - reads stdin, e.g. --file acl.json
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        format: JsonFlag,
    },
    /// List the policies of an endpoint (its own and its network's), of a network, or of everything
    #[command(visible_alias = "list")]
    Ls {
        #[command(flatten)]
        filter: PolicyFilter,
        #[command(flatten)]
        format: JsonFlag,
    },
    /// Remove a policy
    #[command(visible_alias = "remove")]
    Rm {
        #[command(flatten)]
        owner: PolicyOwner,
        /// Policy to remove, as 'policy ls' shows it, e.g. allow-web
        id: String,
    },
}

/// Whose policy: exactly one of an endpoint and a network.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct PolicyOwner {
    /// Endpoint the policy belongs to, e.g. --endpoint ep1
    #[arg(long, value_name = "NAME")]
    pub endpoint: Option<String>,
    /// Network the policy belongs to (it applies to each of its endpoints), e.g. --network net1
    #[arg(long, value_name = "NET")]
    pub network: Option<String>,
}

/// Whose policies to list: at most one of an endpoint and a network.
#[derive(Debug, Clone, Args)]
#[group(required = false, multiple = false)]
pub struct PolicyFilter {
    /// Only the policies applying to this endpoint, its network's included, e.g. --endpoint ep1
    #[arg(long, value_name = "NAME")]
    pub endpoint: Option<String>,
    /// Only this network's own policies, e.g. --network net1
    #[arg(long, value_name = "NET")]
    pub network: Option<String>,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Endpoint the packet leaves (or, with --in, is sent to), e.g. --endpoint ep1
    #[arg(long, value_name = "NAME")]
    pub endpoint: String,
    /// Trace a packet sent to the endpoint instead of one it sends
    #[arg(long = "in")]
    pub inbound: bool,
    /// The packet, e.g. --packet tcp,src=10.0.0.2,dst=10.0.0.3,sport=1234,dport=80 (syntax below)
    #[arg(long, value_name = "SPEC")]
    pub packet: String,
    #[command(flatten)]
    pub format: JsonFlag,
}

#[derive(Debug, Subcommand)]
pub enum FlowsCommand {
    /// Show the flow cache entries and tracked connections of every port, or of one endpoint's
    Dump {
        /// Only this endpoint's port, e.g. --endpoint ep1
        #[arg(long, value_name = "NAME")]
        endpoint: Option<String>,
        #[command(flatten)]
        format: JsonFlag,
    },
}

#[derive(Debug, Subcommand)]
pub enum PortCommand {
    /// List ports
    #[command(visible_alias = "list")]
    Ls(JsonFlag),
}

#[derive(Debug, Subcommand)]
pub enum FdbCommand {
    /// Show the MAC addresses a network has learned, with their port and age
    Show {
        /// Network whose table to show, e.g. net1
        network: String,
        #[command(flatten)]
        format: JsonFlag,
    },
}

#[derive(Debug, Clone, Copy, Default, Args)]
pub struct JsonFlag {
    /// Print the daemon's answer as JSON instead of text, for scripts
    #[arg(long)]
    pub json: bool,
}

/// A command line that clap accepted but that is still wrong; reported like a
/// clap error (exit status 2) against the subcommand at `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError {
    pub path: &'static [&'static str],
    pub message: String,
}

/// Why a command could not be turned into a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    Usage(UsageError),
    /// A file the command names cannot be read or is not JSON. The command
    /// line itself is right, so this is a failure (exit status 1), not a
    /// usage error.
    Input(String),
}

impl From<UsageError> for CommandError {
    fn from(err: UsageError) -> Self {
        CommandError::Usage(err)
    }
}

/// Reads a file a command names (`-` is stdin); passed in so that tests
/// need no files.
pub type ReadInput<'a> = &'a mut dyn FnMut(&Path) -> io::Result<String>;

fn driver_help() -> String {
    format!(
        "Network driver, one of: {}; e.g. -d internal",
        vswitch_api::DRIVERS.join(", ")
    )
}

fn driver_long_help() -> String {
    let mut text = "Network driver; e.g. -d internal:".to_owned();
    for d in vswitch_api::Driver::ALL {
        text.push_str(&format!("\n  {:<12} {}", d.name(), d.summary()));
    }
    text
}

/// Parses one `-o KEY=VALUE`. The value may be empty, the key may not.
pub fn parse_option(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some(("", _)) => Err("the key before '=' is empty".to_owned()),
        Some((key, value)) => Ok((key.to_owned(), value.to_owned())),
        None => Err("expected KEY=VALUE, e.g. -o vlanid=10".to_owned()),
    }
}

/// Parses one `-p HOST_PORT:CONTAINER_PORT[/tcp|/udp]`, docker's shorthand
/// without its address and range forms. The protocol defaults to tcp.
pub fn parse_publish(text: &str) -> Result<PortMapping, String> {
    const EXPECTED: &str =
        "expected HOST_PORT:CONTAINER_PORT[/tcp|/udp], e.g. -p 8080:80 or -p 0:53/udp";
    let (ports, protocol) = match text.split_once('/') {
        Some((ports, proto)) => (ports, Some(proto)),
        None => (text, None),
    };
    let protocol = match protocol {
        None => 6,
        Some(p) if p.eq_ignore_ascii_case("tcp") => 6,
        Some(p) if p.eq_ignore_ascii_case("udp") => 17,
        Some(p) => return Err(format!("protocol '{p}' is not tcp or udp; {EXPECTED}")),
    };
    let Some((host, container)) = ports.split_once(':') else {
        return Err(EXPECTED.to_owned());
    };
    let host_port = host.parse::<u16>().map_err(|_| {
        format!(
            "host port '{host}' is not a port number 0-65535 (0: the switch picks one); {EXPECTED}"
        )
    })?;
    let container_port = match container.parse::<u16>() {
        Ok(port) if port > 0 => port,
        _ => {
            return Err(format!(
                "container port '{container}' is not a port number 1-65535; {EXPECTED}"
            ))
        }
    };
    Ok(PortMapping {
        host_port,
        container_port,
        protocol,
    })
}

/// Reads and parses the JSON file given with `flag`. Only that it is JSON is
/// checked: what HNS policies it holds, the daemon judges.
fn read_policies(read: ReadInput, flag: &str, path: &Path) -> Result<Value, CommandError> {
    let name = if path == Path::new("-") {
        "- (stdin)".to_owned()
    } else {
        path.display().to_string()
    };
    let text = read(path).map_err(|e| {
        CommandError::Input(format!(
            "cannot read {flag} {name}: {}",
            crate::client::reason(&e)
        ))
    })?;
    serde_json::from_str(&text)
        .map_err(|e| CommandError::Input(format!("{flag} {name} is not JSON: {e}")))
}

/// The policies of `endpoint create`: the file's as given, followed by one
/// PortMapping per `-p` (then always a list); `null` when there are none.
fn merge_policies(file: Option<Value>, publish: &[PortMapping]) -> Value {
    if publish.is_empty() {
        return file.unwrap_or(Value::Null);
    }
    let mut list = match file {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list,
        // An object, or anything else for the daemon to refuse by position.
        Some(one) => vec![one],
    };
    list.extend(publish.iter().map(PortMapping::policy));
    Value::Array(list)
}

impl Command {
    /// The request this command sends to the daemon; `read` reads the files
    /// it names.
    pub fn request(&self, read: ReadInput) -> Result<Request, CommandError> {
        Ok(match self {
            Command::Network(NetworkCommand::Create(args)) => {
                Request::NetworkCreate(args.request()?)
            }
            Command::Network(NetworkCommand::Ls(_)) => Request::NetworkList,
            Command::Network(NetworkCommand::Inspect { name, .. }) => {
                Request::NetworkInspect { name: name.clone() }
            }
            Command::Network(NetworkCommand::Rm { name }) => {
                Request::NetworkRemove { name: name.clone() }
            }
            Command::Network(NetworkCommand::Mappings { name, .. }) => Request::MappingList {
                network: name.clone(),
            },
            Command::Network(NetworkCommand::Mapping(MappingCommand::Add {
                network,
                ip,
                mac,
                provider_address,
                ..
            })) => Request::MappingAdd(vswitch_api::MappingAdd {
                network: network.clone(),
                ip: ip.clone(),
                mac_address: mac.clone(),
                provider_address: provider_address.clone(),
            }),
            Command::Network(NetworkCommand::Mapping(MappingCommand::Rm { network, ip })) => {
                Request::MappingRemove {
                    network: network.clone(),
                    ip: ip.clone(),
                }
            }
            Command::Endpoint(EndpointCommand::Create(args)) => {
                Request::EndpointCreate(args.request(read)?)
            }
            Command::Endpoint(EndpointCommand::Set(args)) => Request::EndpointSet(args.request()),
            Command::Endpoint(EndpointCommand::Ls(_)) => Request::EndpointList,
            Command::Endpoint(EndpointCommand::Inspect { name, .. }) => {
                Request::EndpointInspect { name: name.clone() }
            }
            Command::Endpoint(EndpointCommand::Rm { name }) => {
                Request::EndpointRemove { name: name.clone() }
            }
            Command::Port(PortCommand::Ls(_)) => Request::PortList,
            Command::Stats { port, .. } => Request::Stats { port: port.clone() },
            Command::Fdb(FdbCommand::Show { network, .. }) => Request::FdbShow {
                network: network.clone(),
            },
            Command::Policy(PolicyCommand::Add { owner, file, .. }) => {
                Request::PolicyAdd(PolicyAdd {
                    endpoint: owner.endpoint.clone(),
                    network: owner.network.clone(),
                    policies: read_policies(read, "--file", file)?,
                })
            }
            Command::Policy(PolicyCommand::Ls { filter, .. }) => Request::PolicyList {
                endpoint: filter.endpoint.clone(),
                network: filter.network.clone(),
            },
            Command::Policy(PolicyCommand::Rm { owner, id }) => Request::PolicyRemove {
                endpoint: owner.endpoint.clone(),
                network: owner.network.clone(),
                id: id.clone(),
            },
            Command::Trace(args) => Request::Trace(TraceRequest {
                endpoint: args.endpoint.clone(),
                inbound: args.inbound,
                packet: args.packet.clone(),
            }),
            Command::Flows(FlowsCommand::Dump { endpoint, .. }) => Request::FlowsDump {
                endpoint: endpoint.clone(),
            },
            Command::Datapath(DatapathCommand::Show(_)) => Request::DatapathShow,
            // Many requests, planned from a file: `lab` runs them.
            Command::Apply(_) | Command::Delete(_) | Command::Capture(_) => {
                return Err(CommandError::Input(
                    "apply, delete and capture are not one request".into(),
                ))
            }
        })
    }
}

impl NetworkCreateArgs {
    fn request(&self) -> Result<NetworkCreate, UsageError> {
        let mut options = BTreeMap::new();
        for (key, value) in &self.options {
            if options.insert(key.clone(), value.clone()).is_some() {
                return Err(UsageError {
                    path: &["network", "create"],
                    message: format!("option '{key}' given more than once with -o"),
                });
            }
        }
        Ok(NetworkCreate {
            name: self.name.clone(),
            driver: self.driver.clone(),
            subnets: self.subnets.clone(),
            gateways: self.gateways.clone(),
            mtu: self.mtu,
            mac_pool: self.mac_pool.clone(),
            options,
            ..Default::default()
        })
    }
}

impl EndpointCreateArgs {
    fn request(&self, read: ReadInput) -> Result<EndpointCreate, CommandError> {
        let file = match &self.policy_file {
            Some(path) => Some(read_policies(read, "--policy-file", path)?),
            None => None,
        };
        Ok(EndpointCreate {
            name: self.name.clone(),
            network: self.network.clone(),
            netns: self.netns.clone(),
            ip: self.ip.clone(),
            ipv6: self.ipv6.clone(),
            mac_address: self.mac.clone(),
            ifname: self.ifname.clone(),
            allow_spoofing: self.allow_spoofing,
            dhcp_guard: self.dhcp_guard.map(Switch::is_on),
            router_guard: self.router_guard.map(Switch::is_on),
            policies: merge_policies(file, &self.publish),
            backend: self.backend,
            ..Default::default()
        })
    }
}

impl EndpointSetArgs {
    fn request(&self) -> EndpointSet {
        EndpointSet {
            name: self.name.clone(),
            allow_spoofing: self.allow_spoofing.map(Switch::is_on),
            dhcp_guard: self.dhcp_guard.map(Switch::is_on),
            router_guard: self.router_guard.map(Switch::is_on),
            default_acl_action: self.default_acl_action.map(|a| a.api_name().to_owned()),
            mirror: self.mirror.map(|m| m.name().to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vswitchctl").chain(args.iter().copied()))
    }

    /// No files: a test that reads one uses `request_with`.
    fn request(args: &[&str]) -> Request {
        request_with(args, &[]).unwrap()
    }

    /// The request, with `files` (name, content) readable.
    fn request_with(args: &[&str], files: &[(&str, &str)]) -> Result<Request, CommandError> {
        let mut read = |path: &Path| -> io::Result<String> {
            files
                .iter()
                .find(|(name, _)| Path::new(name) == path)
                .map(|(_, text)| text.to_string())
                .ok_or_else(|| io::Error::from_raw_os_error(2))
        };
        parse(args).unwrap().command.request(&mut read)
    }

    fn policies(req: Request) -> Value {
        match req {
            Request::EndpointCreate(create) => create.policies,
            other => panic!("not an endpoint create: {other:?}"),
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn network_create_full() {
        let req = request(&[
            "network",
            "create",
            "-d",
            "internal",
            "--subnet",
            "10.1.0.0/24",
            "--subnet",
            "fd00:1::/64",
            "--gateway",
            "10.1.0.1",
            "--mtu",
            "9000",
            "--mac-pool",
            "02:15:5d:00:00:00-02:15:5d:00:ff:ff",
            "-o",
            "vlanid=10",
            "--opt",
            "empty=",
            "net1",
        ]);
        let expected = NetworkCreate {
            name: "net1".into(),
            driver: "internal".into(),
            subnets: vec!["10.1.0.0/24".into(), "fd00:1::/64".into()],
            gateways: vec!["10.1.0.1".into()],
            mtu: Some(9000),
            mac_pool: Some("02:15:5d:00:00:00-02:15:5d:00:ff:ff".into()),
            options: BTreeMap::from([
                ("vlanid".to_owned(), "10".to_owned()),
                ("empty".to_owned(), String::new()),
            ]),
            ..Default::default()
        };
        assert_eq!(req, Request::NetworkCreate(expected));
    }

    #[test]
    fn network_create_minimal_passes_driver_through() {
        // The daemon, not the CLI, judges the driver name.
        let req = request(&["network", "create", "--driver", "bogus", "n"]);
        assert_eq!(
            req,
            Request::NetworkCreate(NetworkCreate {
                name: "n".into(),
                driver: "bogus".into(),
                ..Default::default()
            })
        );
    }

    #[test]
    fn network_create_needs_driver_and_name() {
        let err = parse(&["network", "create", "n"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        let err = parse(&["network", "create", "-d", "internal"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn option_without_equals_is_a_usage_error() {
        let err = parse(&["network", "create", "-d", "internal", "-o", "vlan", "n"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn duplicate_option_key_is_refused() {
        let cli = parse(&[
            "network", "create", "-d", "internal", "-o", "a=1", "-o", "a=2", "n",
        ])
        .unwrap();
        let Err(CommandError::Usage(err)) = cli.command.request(&mut |_| unreachable!()) else {
            panic!("not a usage error");
        };
        assert_eq!(err.path, &["network", "create"]);
        assert!(err.message.contains("'a'"), "{}", err.message);
    }

    #[test]
    fn parse_option_cases() {
        assert_eq!(parse_option("k=v"), Ok(("k".into(), "v".into())));
        assert_eq!(parse_option("k=a=b"), Ok(("k".into(), "a=b".into())));
        assert_eq!(parse_option("k="), Ok(("k".into(), String::new())));
        assert!(parse_option("=v").is_err());
        assert!(parse_option("kv").is_err());
    }

    #[test]
    fn list_and_remove_aliases() {
        for noun in ["network", "endpoint", "port"] {
            for verb in ["ls", "list"] {
                let want = match noun {
                    "network" => Request::NetworkList,
                    "endpoint" => Request::EndpointList,
                    _ => Request::PortList,
                };
                assert_eq!(request(&[noun, verb]), want);
            }
        }
        for verb in ["rm", "remove"] {
            assert_eq!(
                request(&["network", verb, "n1"]),
                Request::NetworkRemove { name: "n1".into() }
            );
            assert_eq!(
                request(&["endpoint", verb, "e1"]),
                Request::EndpointRemove { name: "e1".into() }
            );
        }
    }

    #[test]
    fn inspect_requests() {
        assert_eq!(
            request(&["network", "inspect", "n1"]),
            Request::NetworkInspect { name: "n1".into() }
        );
        assert_eq!(
            request(&["endpoint", "inspect", "e1", "--json"]),
            Request::EndpointInspect { name: "e1".into() }
        );
    }

    #[test]
    fn endpoint_create_full() {
        let req = request(&[
            "endpoint",
            "create",
            "--network",
            "net1",
            "--netns",
            "ns1",
            "--ip",
            "10.1.0.10",
            "--ipv6",
            "fd00:1::10",
            "--mac",
            "02:15:5d:12:34:56",
            "--ifname",
            "eth1",
            "--allow-spoofing",
            "--backend",
            "veth",
            "ep1",
        ]);
        assert_eq!(
            req,
            Request::EndpointCreate(EndpointCreate {
                name: "ep1".into(),
                network: "net1".into(),
                netns: "ns1".into(),
                ip: Some("10.1.0.10".into()),
                ipv6: Some("fd00:1::10".into()),
                mac_address: Some("02:15:5d:12:34:56".into()),
                ifname: Some("eth1".into()),
                allow_spoofing: true,
                dhcp_guard: None,
                router_guard: None,
                policies: Value::Null,
                backend: Some(vswitch_api::Backend::Veth),
                ..Default::default()
            })
        );
    }

    const CREATE: [&str; 6] = ["endpoint", "create", "--network", "n", "--netns", "ns"];

    fn create_with(extra: &[&'static str]) -> Vec<&'static str> {
        let mut args = CREATE.to_vec();
        args.extend_from_slice(extra);
        args.push("ep");
        args
    }

    #[test]
    fn endpoint_create_guards() {
        let req = request(&create_with(&[
            "--dhcp-guard",
            "off",
            "--router-guard",
            "on",
        ]));
        let Request::EndpointCreate(create) = req else {
            panic!("{req:?}")
        };
        assert_eq!(create.dhcp_guard, Some(false));
        assert_eq!(create.router_guard, Some(true));
        let err = parse(&create_with(&["--dhcp-guard", "yes"])).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidValue);
    }

    #[test]
    fn publish_becomes_port_mapping_policies() {
        let req = request(&create_with(&["-p", "8080:80", "--publish", "0:53/udp"]));
        assert_eq!(
            policies(req),
            json!([
                {"Type": "PortMapping", "Settings": {"Protocol": 6, "InternalPort": 80, "ExternalPort": 8080}},
                {"Type": "PortMapping", "Settings": {"Protocol": 17, "InternalPort": 53, "ExternalPort": 0}},
            ])
        );
    }

    #[test]
    fn parse_publish_cases() {
        let tcp = |host, container| PortMapping {
            host_port: host,
            container_port: container,
            protocol: 6,
        };
        assert_eq!(parse_publish("8080:80"), Ok(tcp(8080, 80)));
        assert_eq!(parse_publish("8080:80/tcp"), Ok(tcp(8080, 80)));
        assert_eq!(parse_publish("0:65535/TCP"), Ok(tcp(0, 65535)));
        assert_eq!(parse_publish("53:53/udp").map(|m| m.protocol), Ok(17));
        for (bad, says) in [
            ("80", "expected HOST_PORT:CONTAINER_PORT"),
            ("", "expected HOST_PORT:CONTAINER_PORT"),
            ("80/tcp", "expected HOST_PORT:CONTAINER_PORT"),
            ("65536:80", "host port '65536' is not a port number 0-65535"),
            ("-1:80", "host port '-1'"),
            (":80", "host port ''"),
            ("127.0.0.1:80:80", "host port '127.0.0.1'"),
            ("80:0", "container port '0' is not a port number 1-65535"),
            ("80:", "container port ''"),
            ("80:http", "container port 'http'"),
            ("8000-8010:80", "host port '8000-8010'"),
            ("80:80/sctp", "protocol 'sctp' is not tcp or udp"),
            ("80:80/", "protocol '' is not tcp or udp"),
        ] {
            let err = parse_publish(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn bad_publish_is_a_usage_error_naming_the_flag() {
        let err = parse(&create_with(&["-p", "80:0"])).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        assert_eq!(err.exit_code(), 2);
        let text = err.to_string();
        assert!(text.contains("--publish"), "{text}");
        assert!(text.contains("1-65535"), "{text}");
    }

    #[test]
    fn policy_file_alone_is_passed_as_given() {
        let object = r#"{"Type": "ACL", "Settings": {"Id": "a", "Action": "Allow"}}"#;
        let req = request_with(
            &create_with(&["--policy-file", "p.json"]),
            &[("p.json", object)],
        );
        assert_eq!(
            policies(req.unwrap()),
            json!({"Type": "ACL", "Settings": {"Id": "a", "Action": "Allow"}})
        );
        assert_eq!(policies(request(&create_with(&[]))), Value::Null);
    }

    #[test]
    fn policy_file_and_publish_merge_into_one_list() {
        let mapping = json!({"Type": "PortMapping", "Settings": {"Protocol": 6, "InternalPort": 80, "ExternalPort": 0}});
        let args = create_with(&["-p", "0:80", "--policy-file", "-"]);
        // An object becomes the list's first element ...
        let req = request_with(&args, &[("-", r#"{"Type": "ACL"}"#)]).unwrap();
        assert_eq!(policies(req), json!([{"Type": "ACL"}, mapping]));
        // ... a list is extended ...
        let req = request_with(&args, &[("-", r#"[{"Type": "ACL"}, {"Type": "QOS"}]"#)]).unwrap();
        assert_eq!(
            policies(req),
            json!([{"Type": "ACL"}, {"Type": "QOS"}, mapping])
        );
        // ... and null is no policies.
        let req = request_with(&args, &[("-", "null")]).unwrap();
        assert_eq!(policies(req), json!([mapping]));
    }

    #[test]
    fn policy_file_errors_name_the_file() {
        let args = create_with(&["--policy-file", "p.json"]);
        let err = request_with(&args, &[("p.json", "{\"Type\": \"ACL\",\n}")]).unwrap_err();
        let CommandError::Input(text) = err else {
            panic!("{err:?}")
        };
        assert!(
            text.starts_with("--policy-file p.json is not JSON: "),
            "{text}"
        );
        assert!(text.contains("line 2 column 1"), "{text}");

        let err = request_with(&args, &[]).unwrap_err();
        assert_eq!(
            err,
            CommandError::Input(
                "cannot read --policy-file p.json: No such file or directory".into()
            )
        );

        let args = ["policy", "add", "--network", "n", "--file", "-"];
        let err = request_with(&args, &[("-", "")]).unwrap_err();
        let CommandError::Input(text) = err else {
            panic!("{err:?}")
        };
        assert!(
            text.starts_with("--file - (stdin) is not JSON: EOF"),
            "{text}"
        );
    }

    #[test]
    fn endpoint_set_request() {
        assert_eq!(
            request(&[
                "endpoint",
                "set",
                "--allow-spoofing",
                "on",
                "--dhcp-guard",
                "off",
                "--router-guard",
                "off",
                "--default-acl-action",
                "block",
                "--mirror",
                "Source",
                "ep1",
            ]),
            Request::EndpointSet(EndpointSet {
                name: "ep1".into(),
                allow_spoofing: Some(true),
                dhcp_guard: Some(false),
                router_guard: Some(false),
                default_acl_action: Some("Block".into()),
                mirror: Some("source".into()),
            })
        );
        assert_eq!(
            request(&[
                "endpoint",
                "set",
                "--default-acl-action",
                "allow",
                "ep1",
                "--json"
            ]),
            Request::EndpointSet(EndpointSet {
                name: "ep1".into(),
                default_acl_action: Some("Allow".into()),
                ..Default::default()
            })
        );
    }

    #[test]
    fn endpoint_set_requires_a_setting() {
        let err = parse(&["endpoint", "set", "ep1"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        assert_eq!(err.exit_code(), 2);
        let err = parse(&["endpoint", "set", "ep1", "--json"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        let err = parse(&["endpoint", "set", "--default-acl-action", "deny", "ep1"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidValue);
        let err = parse(&["endpoint", "set", "--mirror", "both", "ep1"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        assert!(err.to_string().contains("--mirror"), "{err}");
    }

    const ACL: &str = r#"{"Type": "ACL", "Settings": {"Id": "allow-web", "Action": "Allow"}}"#;

    #[test]
    fn policy_add_request() {
        let req = request_with(
            &["policy", "add", "--endpoint", "ep1", "--file", "acl.json"],
            &[("acl.json", ACL)],
        );
        assert_eq!(
            req.unwrap(),
            Request::PolicyAdd(PolicyAdd {
                endpoint: Some("ep1".into()),
                network: None,
                policies: serde_json::from_str(ACL).unwrap(),
            })
        );
        let req = request_with(
            &[
                "policy",
                "add",
                "--file",
                "-",
                "--network",
                "net1",
                "--json",
            ],
            &[("-", "[]")],
        );
        assert_eq!(
            req.unwrap(),
            Request::PolicyAdd(PolicyAdd {
                endpoint: None,
                network: Some("net1".into()),
                policies: json!([]),
            })
        );
    }

    #[test]
    fn policy_add_and_rm_need_exactly_one_owner() {
        for args in [
            &["policy", "add", "--file", "a.json"][..],
            &["policy", "rm", "allow-web"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument, "{args:?}");
        }
        for args in [
            &[
                "policy",
                "add",
                "--endpoint",
                "e",
                "--network",
                "n",
                "--file",
                "a",
            ][..],
            &["policy", "rm", "--endpoint", "e", "--network", "n", "x"],
            &["policy", "ls", "--endpoint", "e", "--network", "n"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::ArgumentConflict, "{args:?}");
        }
        let err = parse(&["policy", "add", "--endpoint", "e"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn policy_ls_and_rm_requests() {
        for verb in ["ls", "list"] {
            assert_eq!(
                request(&["policy", verb]),
                Request::PolicyList {
                    endpoint: None,
                    network: None
                }
            );
        }
        assert_eq!(
            request(&["policy", "ls", "--network", "net1", "--json"]),
            Request::PolicyList {
                endpoint: None,
                network: Some("net1".into())
            }
        );
        for verb in ["rm", "remove"] {
            assert_eq!(
                request(&["policy", verb, "--endpoint", "ep1", "allow-web"]),
                Request::PolicyRemove {
                    endpoint: Some("ep1".into()),
                    network: None,
                    id: "allow-web".into()
                }
            );
        }
    }

    #[test]
    fn trace_and_flows_requests() {
        let packet = "tcp,src=10.0.0.2,dst=10.0.0.3,sport=1234,dport=80";
        assert_eq!(
            request(&["trace", "--endpoint", "ep1", "--packet", packet]),
            Request::Trace(TraceRequest {
                endpoint: "ep1".into(),
                inbound: false,
                packet: packet.into(),
            })
        );
        // The daemon, not the CLI, parses the packet.
        assert_eq!(
            request(&[
                "trace",
                "--in",
                "--endpoint",
                "ep2",
                "--packet",
                "bogus",
                "--json"
            ]),
            Request::Trace(TraceRequest {
                endpoint: "ep2".into(),
                inbound: true,
                packet: "bogus".into(),
            })
        );
        let err = parse(&["trace", "--endpoint", "ep1"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        assert_eq!(
            request(&["flows", "dump"]),
            Request::FlowsDump { endpoint: None }
        );
        assert_eq!(
            request(&["flows", "dump", "--endpoint", "ep1", "--json"]),
            Request::FlowsDump {
                endpoint: Some("ep1".into())
            }
        );
    }

    #[test]
    fn endpoint_create_needs_network_and_netns() {
        let err = parse(&["endpoint", "create", "--network", "n", "ep"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        let err = parse(&["endpoint", "create", "--netns", "ns", "ep"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn stats_and_fdb_requests() {
        assert_eq!(request(&["stats"]), Request::Stats { port: None });
        assert_eq!(
            request(&["stats", "ep1", "--json"]),
            Request::Stats {
                port: Some("ep1".into())
            }
        );
        assert_eq!(
            request(&["fdb", "show", "net1"]),
            Request::FdbShow {
                network: "net1".into()
            }
        );
    }

    #[test]
    fn socket_flag_anywhere() {
        let cli = parse(&["--socket", "/tmp/a.sock", "network", "ls"]).unwrap();
        assert_eq!(cli.socket, PathBuf::from("/tmp/a.sock"));
        let cli = parse(&["network", "ls", "--socket", "/tmp/b.sock"]).unwrap();
        assert_eq!(cli.socket, PathBuf::from("/tmp/b.sock"));
        if std::env::var_os(vswitch_api::SOCKET_ENV).is_none() {
            let cli = parse(&["network", "ls"]).unwrap();
            assert_eq!(cli.socket, PathBuf::from(vswitch_api::DEFAULT_SOCKET));
        }
    }

    #[test]
    fn help_names_drivers_and_socket_default() {
        let top = Cli::command().render_long_help().to_string();
        assert!(top.contains(vswitch_api::DEFAULT_SOCKET), "{top}");
        assert!(top.contains("Hyper-V"), "{top}");
        let mut cmd = Cli::command();
        let create = cmd
            .find_subcommand_mut("network")
            .unwrap()
            .find_subcommand_mut("create")
            .unwrap();
        let help = create.render_long_help().to_string();
        for driver in vswitch_api::Driver::ALL {
            assert!(help.contains(driver.name()), "{help}");
            assert!(help.contains(driver.summary()), "{help}");
        }
    }

    fn subcommand_help(path: &[&str]) -> String {
        let mut cmd = Cli::command();
        let mut sub = &mut cmd;
        for name in path {
            sub = sub.find_subcommand_mut(name).unwrap();
        }
        sub.render_long_help().to_string()
    }

    #[test]
    fn help_shows_policy_and_trace_examples() {
        let top = Cli::command().render_long_help().to_string();
        assert!(
            top.contains("vswitchctl policy add --endpoint ep1"),
            "{top}"
        );
        assert!(
            top.contains("vswitchctl trace --endpoint ep1 --packet tcp,"),
            "{top}"
        );
        let add = subcommand_help(&["policy", "add"]);
        assert!(
            add.contains(r#"{"Type": "ACL", "Settings": {"Id": "allow-web""#),
            "{add}"
        );
        let trace = subcommand_help(&["trace"]);
        for example in [
            "--packet tcp,src=10.0.0.2,dst=10.0.0.3,sport=1234,dport=80",
            "--packet udp,",
            "--packet icmp,src=",
            "tcp|udp|icmp|icmp6",
        ] {
            assert!(trace.contains(example), "{trace}");
        }
        let create = subcommand_help(&["endpoint", "create"]);
        assert!(
            create.contains("HOST_PORT:CONTAINER_PORT[/tcp|/udp]"),
            "{create}"
        );
    }
}
