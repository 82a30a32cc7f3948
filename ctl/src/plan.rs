//! The difference between a lab file and what is there: the steps `apply`
//! and `delete -f` take, in the order they take them.
//!
//! Contract: [`apply`] and [`delete`] are pure: they take the lab, what the
//! daemon and the machine have now ([`Current`]) and what this lab made
//! before ([`Record`]), and return the [`Plan`], or every fault that makes
//! the file unusable against this state (each located in the file). No
//! step is taken before the whole plan stands, so a refused file changes
//! nothing.
//!
//! Order: fabric made (namespaces, bridges, veth links), endpoints
//! removed, policies removed, networks removed, networks made, their
//! policies added, endpoints made (with their policies) or changed, their
//! policies added, fabric removed. Networks have no `set`: one that
//! differs is removed and made again, and so are its endpoints, which the
//! file must then describe (an endpoint the file does not know would be
//! lost). An endpoint whose network, namespace, addresses, MAC, interface
//! name or backend differ is made again; its guards, spoofing and default
//! ACL action are changed in place.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use vswitch_api::{
    Endpoint, EndpointCreate, EndpointSet, EndpointState, Network, NetworkCreate, PolicyAdd,
    PolicyView, Request,
};

use crate::topology::{
    ns_label, parse_mac, BridgeSpec, Cidr, EndpointSpec, Fault, FieldPath, Lab, LinkEnd,
    NetworkSpec,
};

/// An interface of the fabric: its namespace (`None`: vswitchctl's own)
/// and name.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Iface {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

impl Iface {
    pub fn new(namespace: Option<&str>, name: &str) -> Iface {
        Iface {
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
        }
    }

    fn of(end: &LinkEnd) -> Iface {
        Iface::new(end.namespace.as_deref(), &end.name)
    }

    fn of_bridge(b: &BridgeSpec) -> Iface {
        Iface::new(b.namespace.as_deref(), &b.name)
    }

    pub fn label(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// What an interface of the fabric looks like now (`ip -j addr show`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IfaceState {
    pub up: bool,
    pub master: Option<String>,
    /// `10.77.0.1/24`, as `ip` prints them.
    pub addresses: Vec<String>,
}

/// What is there now.
#[derive(Debug, Clone, Default)]
pub struct Current {
    pub networks: Vec<Network>,
    pub endpoints: Vec<Endpoint>,
    pub policies: Vec<PolicyView>,
    /// Names under /run/netns.
    pub namespaces: BTreeSet<String>,
    /// Namespace paths (`/proc/PID/ns/net`) the file names that exist.
    pub paths: BTreeSet<String>,
    /// The fabric's interfaces that exist, of those the file and the
    /// record name.
    pub ifaces: BTreeMap<Iface, IfaceState>,
}

impl Current {
    fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }
    fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.name == name)
    }
    fn netns_exists(&self, ns: &str) -> bool {
        if ns.starts_with('/') {
            self.paths.contains(ns)
        } else {
            self.namespaces.contains(ns)
        }
    }
}

/// What a lab made or took on, kept between runs so that `--prune` knows
/// what the file dropped and `delete -f` removes exactly what the lab
/// made. Networks and endpoints: those the file described (made or found).
/// Fabric: only what `apply` created; a namespace or link that was there
/// before is never recorded, so never deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Record {
    pub lab: String,
    pub networks: BTreeSet<String>,
    pub endpoints: BTreeSet<String>,
    pub namespaces: BTreeSet<String>,
    pub bridges: BTreeSet<Iface>,
    pub links: BTreeSet<LinkPair>,
}

/// A veth pair by its two ends.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LinkPair {
    pub a: Iface,
    pub b: Iface,
}

impl LinkPair {
    fn of(l: &crate::topology::LinkSpec) -> LinkPair {
        LinkPair {
            a: Iface::of(&l.a),
            b: Iface::of(&l.b),
        }
    }

    pub fn label(&self) -> String {
        format!("{} <-> {}", self.a.label(), self.b.label())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    Create,
    Change,
    Remove,
}

impl Verb {
    fn sign(self) -> char {
        match self {
            Verb::Create => '+',
            Verb::Change => '~',
            Verb::Remove => '-',
        }
    }
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "Op", content = "Args")]
pub enum Op {
    /// A call to the daemon.
    Request(Request),
    AddNamespace(String),
    DelNamespace(String),
    AddBridge(Iface),
    /// A veth pair, its ends then set up as the file says.
    AddLink {
        a: EndSetup,
        b: EndSetup,
    },
    /// An existing interface brought to what the file says.
    FixIface(EndSetup),
    /// Deletes a bridge.
    DelBridge(Iface),
    /// Deletes a veth pair through its end `via` (the other goes along).
    DelLink {
        link: LinkPair,
        via: Iface,
    },
}

/// An interface's settings, as far as they are to be made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndSetup {
    pub iface: Iface,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ipv4_conf: BTreeMap<String, String>,
    pub up: bool,
}

impl EndSetup {
    fn from_spec(end: &LinkEnd) -> EndSetup {
        EndSetup {
            iface: Iface::of(end),
            master: end.master.clone(),
            addresses: end.addresses.clone(),
            ipv4_conf: end
                .ipv4_conf
                .iter()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect(),
            up: true,
        }
    }

    /// The `ip`/`sysctl` command lines that set this end up (after it
    /// exists).
    pub fn commands(&self) -> Vec<Vec<String>> {
        let ns = self.iface.namespace.as_deref();
        let dev = &self.iface.name;
        let mut out = Vec::new();
        if let Some(m) = &self.master {
            out.push(ip(ns, &["link", "set", dev, "master", m]));
        }
        for a in &self.addresses {
            let mut args = vec!["addr", "add", a.as_str(), "dev", dev];
            if a.contains(':') {
                args.push("nodad");
            }
            out.push(ip(ns, &args));
        }
        for (k, v) in &self.ipv4_conf {
            let setting = format!("net.ipv4.conf.{dev}.{k}={v}");
            let mut cmd: Vec<String> = match ns {
                Some(ns) => ["ip", "netns", "exec", ns].map(String::from).to_vec(),
                None => Vec::new(),
            };
            cmd.extend(["sysctl", "-qw", &setting].map(String::from));
            out.push(cmd);
        }
        if self.up {
            out.push(ip(ns, &["link", "set", dev, "up"]));
        }
        out
    }

    fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(m) = &self.master {
            parts.push(format!("on {m}"));
        }
        parts.extend(self.addresses.iter().cloned());
        if !self.ipv4_conf.is_empty() {
            let conf: Vec<String> = self
                .ipv4_conf
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            parts.push(conf.join(","));
        }
        if self.up {
            parts.push("up".into());
        }
        parts.join(" ")
    }
}

/// `ip [-n NS] ARGS...`
fn ip(ns: Option<&str>, args: &[&str]) -> Vec<String> {
    let mut cmd = vec!["ip".to_owned()];
    if let Some(ns) = ns {
        cmd.extend(["-n".to_owned(), ns.to_owned()]);
    }
    cmd.extend(args.iter().map(|a| (*a).to_owned()));
    cmd
}

impl Op {
    /// The command lines of a fabric step; empty for a daemon request.
    pub fn commands(&self) -> Vec<Vec<String>> {
        match self {
            Op::Request(_) => Vec::new(),
            Op::AddNamespace(ns) => vec![
                ip(None, &["netns", "add", ns]),
                ip(Some(ns), &["link", "set", "lo", "up"]),
            ],
            Op::DelNamespace(ns) => vec![ip(None, &["netns", "del", ns])],
            Op::AddBridge(b) => vec![
                ip(
                    b.namespace.as_deref(),
                    &[
                        "link",
                        "add",
                        &b.name,
                        "type",
                        "bridge",
                        "mcast_snooping",
                        "0",
                    ],
                ),
                ip(b.namespace.as_deref(), &["link", "set", &b.name, "up"]),
            ],
            Op::AddLink { a, b } => {
                // Made from the end in vswitchctl's namespace when there is
                // one: `netns` then names the other end's, and `ip -n`
                // is not needed for a namespace that has no name.
                let (first, second) = if a.iface.namespace.is_some() && b.iface.namespace.is_none()
                {
                    (b, a)
                } else {
                    (a, b)
                };
                let mut args = vec![
                    "link",
                    "add",
                    first.iface.name.as_str(),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    second.iface.name.as_str(),
                ];
                if let Some(ns) = second.iface.namespace.as_deref() {
                    if second.iface.namespace != first.iface.namespace {
                        args.extend(["netns", ns]);
                    }
                }
                let mut out = vec![ip(first.iface.namespace.as_deref(), &args)];
                out.extend(a.commands());
                out.extend(b.commands());
                out
            }
            Op::FixIface(end) => end.commands(),
            Op::DelBridge(i) | Op::DelLink { via: i, .. } => {
                vec![ip(i.namespace.as_deref(), &["link", "del", &i.name])]
            }
        }
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Step {
    pub change: Verb,
    /// `namespace`, `bridge`, `link`, `interface`, `network`, `endpoint`,
    /// `policy`.
    pub kind: &'static str,
    pub name: String,
    /// What is made, or why it changes.
    pub detail: String,
    pub op: Op,
}

impl Step {
    pub fn line(&self) -> String {
        let mut text = format!("{} {} {}", self.change.sign(), self.kind, self.name);
        if !self.detail.is_empty() {
            text.push_str(": ");
            text.push_str(&self.detail);
        }
        text
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Plan {
    pub lab: String,
    pub steps: Vec<Step>,
}

impl Plan {
    pub fn text(&self) -> String {
        if self.steps.is_empty() {
            return format!("lab {}: no change\n", self.lab);
        }
        let mut out = String::new();
        for s in &self.steps {
            out.push_str(&s.line());
            out.push('\n');
        }
        out
    }
}

fn step(change: Verb, kind: &'static str, name: &str, detail: impl Into<String>, op: Op) -> Step {
    Step {
        change,
        kind,
        name: name.to_owned(),
        detail: detail.into(),
        op,
    }
}

// ---------------------------------------------------------------------------
// apply

/// What differs between a network of the file and the daemon's; empty if
/// nothing. Only what the file gives is compared (a subnet the daemon
/// chose is not a difference), options excepted: an option the daemon has
/// and the file does not is one, but for the uplink a nat network finds
/// for itself.
fn network_diff(spec: &NetworkSpec, have: &Network) -> Vec<String> {
    let mut out = Vec::new();
    if spec.driver != have.driver {
        out.push(format!("driver {} -> {}", have.driver, spec.driver));
    }
    let have_subnets: Vec<Cidr> = have
        .subnets
        .iter()
        .filter_map(|s| Cidr::parse(&s.address_prefix).ok())
        .collect();
    if !spec.subnets.is_empty() {
        let want: BTreeSet<_> = spec
            .subnets
            .iter()
            .filter_map(|s| Cidr::parse(s).ok())
            .map(|c| c.network())
            .collect();
        let got: BTreeSet<_> = have_subnets.iter().map(Cidr::network).collect();
        if want != got {
            let names: Vec<&str> = have
                .subnets
                .iter()
                .map(|s| s.address_prefix.as_str())
                .collect();
            out.push(format!(
                "subnets {} -> {}",
                names.join(","),
                spec.subnets.join(",")
            ));
        }
    }
    let gateways: Vec<&String> = spec.gateway.iter().chain(spec.gateways.iter()).collect();
    for g in gateways {
        let Ok(want) = g.parse::<IpAddr>() else {
            continue;
        };
        let got = have
            .subnets
            .iter()
            .filter_map(|s| s.gateway_address.as_deref())
            .filter_map(|a| a.parse::<IpAddr>().ok())
            .find(|a| a.is_ipv4() == want.is_ipv4());
        if got != Some(want) {
            let was = got.map_or("none".to_owned(), |a| a.to_string());
            out.push(format!("gateway {was} -> {want}"));
        }
    }
    if let Some(mtu) = spec.mtu {
        if mtu != have.mtu {
            out.push(format!("mtu {} -> {mtu}", have.mtu));
        }
    }
    if let Some(pool) = &spec.mac_pool {
        let same = pool.split_once('-').is_some_and(|(a, b)| {
            parse_mac(a) == parse_mac(&have.mac_pool.start_mac_address)
                && parse_mac(b) == parse_mac(&have.mac_pool.end_mac_address)
        });
        if !same {
            out.push(format!(
                "mac_pool {}-{} -> {pool}",
                have.mac_pool.start_mac_address, have.mac_pool.end_mac_address
            ));
        }
    }
    let implied = |k: &str| k == "interface" && spec.driver == "nat";
    for (k, v) in &spec.options {
        match have.options.get(k) {
            Some(h) if *h == v.0 => {}
            Some(h) => out.push(format!("option {k} {h} -> {}", v.0)),
            None => out.push(format!("option {k} (none) -> {}", v.0)),
        }
    }
    for (k, h) in &have.options {
        if !spec.options.contains_key(k) && !implied(k) {
            out.push(format!("option {k} {h} -> (none)"));
        }
    }
    out
}

fn network_request(spec: &NetworkSpec) -> NetworkCreate {
    NetworkCreate {
        name: spec.name.clone(),
        driver: spec.driver.clone(),
        subnets: spec.subnets.clone(),
        gateways: spec
            .gateway
            .iter()
            .chain(spec.gateways.iter())
            .cloned()
            .collect(),
        mtu: spec.mtu,
        mac_pool: spec.mac_pool.clone(),
        options: spec
            .options
            .iter()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect(),
        ..Default::default()
    }
}

fn network_summary(spec: &NetworkSpec) -> String {
    let mut parts = vec![spec.driver.clone()];
    parts.extend(spec.subnets.iter().cloned());
    for (k, v) in &spec.options {
        parts.push(format!("{k}={}", v.0));
    }
    parts.join(" ")
}

fn endpoint_addresses(spec: &EndpointSpec) -> Vec<IpAddr> {
    spec.address
        .iter()
        .chain(spec.addresses.iter())
        .filter_map(|a| a.parse().ok())
        .collect()
}

/// What differs in what cannot change without making the endpoint again.
fn endpoint_immutable_diff(spec: &EndpointSpec, have: &Endpoint) -> Vec<String> {
    let mut out = Vec::new();
    if spec.network != have.network {
        out.push(format!("network {} -> {}", have.network, spec.network));
    }
    if spec.namespace != have.netns {
        out.push(format!("namespace {} -> {}", have.netns, spec.namespace));
    }
    for want in endpoint_addresses(spec) {
        let got = if want.is_ipv4() { &have.ip } else { &have.ipv6 };
        let got_ip = got.as_deref().and_then(|a| a.parse::<IpAddr>().ok());
        if got_ip != Some(want) {
            out.push(format!(
                "address {} -> {want}",
                got.as_deref().unwrap_or("none")
            ));
        }
    }
    if let Some(mac) = &spec.mac {
        if parse_mac(mac) != parse_mac(&have.mac_address) {
            out.push(format!("mac {} -> {mac}", have.mac_address));
        }
    }
    let ifname = spec.ifname.as_deref().unwrap_or("eth0");
    if ifname != have.ifname {
        out.push(format!("ifname {} -> {ifname}", have.ifname));
    }
    let backend = spec.backend.unwrap_or_default();
    if backend != have.backend {
        out.push(format!("backend {} -> {backend}", have.backend));
    }
    if let EndpointState::Detached { reason } = &have.state {
        out.push(format!("detached ({reason})"));
    }
    out
}

/// `endpoint set` for what differs of the settings that can change.
fn endpoint_set(spec: &EndpointSpec, have: &Endpoint) -> Option<(EndpointSet, Vec<String>)> {
    let onoff = |b: bool| if b { "on" } else { "off" };
    let mut set = EndpointSet {
        name: spec.name.clone(),
        ..Default::default()
    };
    let mut what = Vec::new();
    if spec.allow_spoofing != have.allow_spoofing {
        set.allow_spoofing = Some(spec.allow_spoofing);
        what.push(format!(
            "allow_spoofing {} -> {}",
            onoff(have.allow_spoofing),
            onoff(spec.allow_spoofing)
        ));
    }
    if spec.dhcp_guard != have.dhcp_guard {
        set.dhcp_guard = Some(spec.dhcp_guard);
        what.push(format!(
            "dhcp_guard {} -> {}",
            onoff(have.dhcp_guard),
            onoff(spec.dhcp_guard)
        ));
    }
    if spec.router_guard != have.router_guard {
        set.router_guard = Some(spec.router_guard);
        what.push(format!(
            "router_guard {} -> {}",
            onoff(have.router_guard),
            onoff(spec.router_guard)
        ));
    }
    let acl = spec.default_acl_action.api_name();
    if !acl.eq_ignore_ascii_case(&have.default_acl_action) {
        set.default_acl_action = Some(acl.to_owned());
        what.push(format!(
            "default_acl_action {} -> {}",
            have.default_acl_action.to_ascii_lowercase(),
            acl.to_ascii_lowercase()
        ));
    }
    (!what.is_empty()).then_some((set, what))
}

/// The endpoint's policies as the daemon will hold them: the file's, then
/// one PortMapping per `publish`.
fn endpoint_policies(spec: &EndpointSpec) -> Vec<Value> {
    let mut out = spec.policies.clone();
    for p in &spec.publish {
        if let Ok(m) = crate::cli::parse_publish(p) {
            out.push(m.policy());
        }
    }
    out
}

fn endpoint_request(spec: &EndpointSpec) -> EndpointCreate {
    let addrs = endpoint_addresses(spec);
    let policies = endpoint_policies(spec);
    EndpointCreate {
        name: spec.name.clone(),
        network: spec.network.clone(),
        netns: spec.namespace.clone(),
        ip: addrs.iter().find(|a| a.is_ipv4()).map(|a| a.to_string()),
        ipv6: addrs.iter().find(|a| a.is_ipv6()).map(|a| a.to_string()),
        mac_address: spec.mac.clone(),
        ifname: spec.ifname.clone(),
        allow_spoofing: spec.allow_spoofing,
        dhcp_guard: (!spec.dhcp_guard).then_some(false),
        router_guard: (!spec.router_guard).then_some(false),
        policies: if policies.is_empty() {
            Value::Null
        } else {
            Value::Array(policies)
        },
        backend: spec.backend,
        ..Default::default()
    }
}

/// A policy's name in the plan: its type and, for an ACL, its Id.
fn policy_label(p: &Value) -> String {
    let get = |obj: &Value, key: &str| -> Option<Value> {
        obj.as_object()?
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone())
    };
    let kind = get(p, "Type")
        .and_then(|t| t.as_str().map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    let id = get(p, "Settings")
        .and_then(|s| get(&s, "Id"))
        .or_else(|| get(p, "Id"))
        .and_then(|i| i.as_str().map(str::to_owned));
    match id {
        Some(id) => format!("{kind} '{id}'"),
        None => kind,
    }
}

#[derive(Clone, Copy)]
enum Owner<'a> {
    Endpoint(&'a str),
    Network(&'a str),
}

impl Owner<'_> {
    fn label(&self) -> String {
        match self {
            Owner::Endpoint(n) => format!("endpoint {n}"),
            Owner::Network(n) => format!("network {n}"),
        }
    }
    fn add(&self, policies: Vec<Value>) -> Request {
        let (endpoint, network) = match self {
            Owner::Endpoint(n) => (Some(n.to_string()), None),
            Owner::Network(n) => (None, Some(n.to_string())),
        };
        Request::PolicyAdd(PolicyAdd {
            endpoint,
            network,
            policies: Value::Array(policies),
        })
    }
}

/// Steps making `have` (the daemon's policies of the owner) into `want`:
/// removals of what the file no longer has, then one addition of what it
/// has anew. A policy that is the same JSON stays (and keeps its hits).
fn policy_steps(owner: Owner, want: &[Value], have: &[&PolicyView]) -> (Vec<Step>, Vec<Step>) {
    let mut unused: Vec<&PolicyView> = have.to_vec();
    let mut new = Vec::new();
    for w in want {
        match unused.iter().position(|h| h.settings == *w) {
            Some(i) => {
                unused.remove(i);
            }
            None => new.push(w.clone()),
        }
    }
    let removes = unused
        .iter()
        .map(|h| {
            let (endpoint, network) = match owner {
                Owner::Endpoint(n) => (Some(n.to_owned()), None),
                Owner::Network(n) => (None, Some(n.to_owned())),
            };
            step(
                Verb::Remove,
                "policy",
                &format!("'{}'", h.id),
                format!("{} from {}, no longer in the file", h.kind, owner.label()),
                Op::Request(Request::PolicyRemove {
                    endpoint,
                    network,
                    id: h.id.clone(),
                }),
            )
        })
        .collect();
    let adds = if new.is_empty() {
        Vec::new()
    } else {
        let labels: Vec<String> = new.iter().map(policy_label).collect();
        vec![step(
            Verb::Create,
            "policy",
            &labels.join(", "),
            format!("on {}", owner.label()),
            Op::Request(owner.add(new)),
        )]
    };
    (removes, adds)
}

/// The plan of `apply`: what makes the daemon and the machine what `lab`
/// describes. With `prune`, what `record` has and the file no longer does
/// is removed too.
pub fn apply(lab: &Lab, now: &Current, record: &Record, prune: bool) -> Result<Plan, Vec<Fault>> {
    let f = &lab.file;
    let fabric = lab.fabric();
    let mut faults = Vec::new();
    let owned: BTreeSet<&str> = lab.owned_namespaces();

    // Fabric first: what the networks and endpoints need must be there.
    let mut fabric_steps = Vec::new();
    for ns in &fabric.namespaces {
        if !now.namespaces.contains(ns) {
            fabric_steps.push(step(
                Verb::Create,
                "namespace",
                ns,
                "",
                Op::AddNamespace(ns.clone()),
            ));
        }
    }
    let ns_usable = |ns: Option<&str>| ns.is_none_or(|n| owned.contains(n) || now.netns_exists(n));
    for (i, b) in fabric.bridges.iter().enumerate() {
        let at = FieldPath::default().key("fabric").key("bridges").index(i);
        if !ns_usable(b.namespace.as_deref()) {
            faults.push(lab.fault(
                &at.key("namespace"),
                format!(
                    "{} does not exist; list it under fabric.namespaces to have it made",
                    ns_label(b.namespace.as_deref())
                ),
            ));
            continue;
        }
        let iface = Iface::of_bridge(b);
        match now.ifaces.get(&iface) {
            None => fabric_steps.push(step(
                Verb::Create,
                "bridge",
                &iface.label(),
                "",
                Op::AddBridge(iface.clone()),
            )),
            Some(s) if !s.up => fabric_steps.push(step(
                Verb::Change,
                "interface",
                &iface.label(),
                "up",
                Op::FixIface(EndSetup {
                    iface: iface.clone(),
                    up: true,
                    ..Default::default()
                }),
            )),
            Some(_) => {}
        }
    }
    for (i, l) in fabric.links.iter().enumerate() {
        let at = FieldPath::default().key("fabric").key("links").index(i);
        let mut usable = true;
        for (side, end) in [("a", &l.a), ("b", &l.b)] {
            if !ns_usable(end.namespace.as_deref()) {
                usable = false;
                faults.push(lab.fault(
                    &at.key(side).key("namespace"),
                    format!(
                        "{} does not exist; list it under fabric.namespaces to have it made",
                        ns_label(end.namespace.as_deref())
                    ),
                ));
            }
        }
        if !usable {
            continue;
        }
        let (ia, ib) = (Iface::of(&l.a), Iface::of(&l.b));
        match (now.ifaces.get(&ia), now.ifaces.get(&ib)) {
            (None, None) => {
                let (a, b) = (EndSetup::from_spec(&l.a), EndSetup::from_spec(&l.b));
                fabric_steps.push(step(
                    Verb::Create,
                    "link",
                    &format!("{} <-> {}", ia.label(), ib.label()),
                    format!("{} | {}", a.summary(), b.summary()),
                    Op::AddLink { a, b },
                ));
            }
            (Some(sa), Some(sb)) => {
                for (end, state) in [(&l.a, sa), (&l.b, sb)] {
                    let want = EndSetup::from_spec(end);
                    let fix = EndSetup {
                        iface: want.iface.clone(),
                        master: want.master.filter(|m| state.master.as_ref() != Some(m)),
                        addresses: want
                            .addresses
                            .iter()
                            .filter(|a| !has_address(&state.addresses, a))
                            .cloned()
                            .collect(),
                        // Sysctls are set when the link is made.
                        ipv4_conf: BTreeMap::new(),
                        up: !state.up,
                    };
                    if fix.master.is_some() || !fix.addresses.is_empty() || fix.up {
                        fabric_steps.push(step(
                            Verb::Change,
                            "interface",
                            &fix.iface.label(),
                            fix.summary(),
                            Op::FixIface(fix),
                        ));
                    }
                }
            }
            (Some(_), None) | (None, Some(_)) => {
                let (there, side) = if now.ifaces.contains_key(&ia) {
                    (&ia, "a")
                } else {
                    (&ib, "b")
                };
                faults.push(lab.fault(
                    &at.key(side).key("name"),
                    format!(
                        "'{}' exists but its peer does not: it is not this link (remove it, or rename the link)",
                        there.label()
                    ),
                ));
            }
        }
    }

    // Networks: which are made, made again, kept.
    let file_nets: BTreeMap<&str, (usize, &NetworkSpec)> = f
        .networks
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), (i, n)))
        .collect();
    let file_eps: BTreeMap<&str, &EndpointSpec> =
        f.endpoints.iter().map(|e| (e.name.as_str(), e)).collect();
    let pruned_eps: BTreeSet<&str> = if prune {
        record
            .endpoints
            .iter()
            .map(String::as_str)
            .filter(|e| !file_eps.contains_key(e) && now.endpoint(e).is_some())
            .collect()
    } else {
        BTreeSet::new()
    };
    let pruned_nets: BTreeSet<&str> = if prune {
        record
            .networks
            .iter()
            .map(String::as_str)
            .filter(|n| !file_nets.contains_key(n) && now.network(n).is_some())
            .collect()
    } else {
        BTreeSet::new()
    };
    let mut recreated_nets: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut new_nets: BTreeSet<&str> = BTreeSet::new();
    for n in &f.networks {
        match now.network(&n.name) {
            None => {
                new_nets.insert(&n.name);
            }
            Some(have) => {
                let diff = network_diff(n, have);
                if !diff.is_empty() {
                    recreated_nets.insert(&n.name, diff);
                }
            }
        }
    }
    for (name, why) in &recreated_nets {
        let (i, _) = file_nets[name];
        let have = now.network(name).expect("recreated networks exist");
        let foreign: Vec<&str> = have
            .endpoints
            .iter()
            .map(String::as_str)
            .filter(|e| !file_eps.contains_key(e) && !pruned_eps.contains(e))
            .collect();
        if !foreign.is_empty() {
            faults.push(lab.fault(
                &FieldPath::item("networks", i),
                format!(
                    "network '{name}' must be made again ({}), but it has endpoints the file does not describe: {}",
                    why.join(", "),
                    foreign.join(", ")
                ),
            ));
        }
    }
    for name in &pruned_nets {
        let have = now.network(name).expect("pruned networks exist");
        let foreign: Vec<&str> = have
            .endpoints
            .iter()
            .map(String::as_str)
            .filter(|e| {
                !pruned_eps.contains(e) && file_eps.get(e).is_none_or(|s| s.network == **name)
            })
            .collect();
        if !foreign.is_empty() {
            faults.push(Fault {
                line: None,
                field: String::new(),
                message: format!(
                    "network '{name}' is no longer in the file, but endpoints the lab does not remove are on it: {}",
                    foreign.join(", ")
                ),
            });
        }
    }
    // Subnets of networks to be made must not overlap one the daemon keeps.
    let kept_daemon_nets: Vec<&Network> = now
        .networks
        .iter()
        .filter(|n| {
            !pruned_nets.contains(n.name.as_str())
                && !recreated_nets.contains_key(n.name.as_str())
                && !file_nets.contains_key(n.name.as_str())
        })
        .collect();
    for n in &f.networks {
        if !new_nets.contains(n.name.as_str()) && !recreated_nets.contains_key(n.name.as_str()) {
            continue;
        }
        let (i, _) = file_nets[n.name.as_str()];
        for (j, s) in n.subnets.iter().enumerate() {
            let Ok(c) = Cidr::parse(s) else { continue };
            for other in &kept_daemon_nets {
                for os in &other.subnets {
                    if Cidr::parse(&os.address_prefix).is_ok_and(|o| o.overlaps(&c)) {
                        faults.push(lab.fault(
                            &FieldPath::item("networks", i).key("subnets").index(j),
                            format!(
                                "{s} overlaps {} of network '{}' in vswitchd",
                                os.address_prefix, other.name
                            ),
                        ));
                    }
                }
            }
        }
    }

    // Endpoints.
    let mut ep_removes = Vec::new();
    let mut ep_creates = Vec::new();
    let mut ep_changes = Vec::new();
    let mut pol_removes = Vec::new();
    let mut pol_adds_ep = Vec::new();
    let policies_of = |owner: Owner| -> Vec<&PolicyView> {
        now.policies
            .iter()
            .filter(|p| match owner {
                Owner::Endpoint(n) => p.endpoint.as_deref() == Some(n),
                Owner::Network(n) => p.network.as_deref() == Some(n),
            })
            .collect()
    };
    for (i, e) in f.endpoints.iter().enumerate() {
        let at = FieldPath::item("endpoints", i);
        let net_known = file_nets.contains_key(e.network.as_str())
            || (now.network(&e.network).is_some() && !pruned_nets.contains(e.network.as_str()));
        if !net_known {
            faults.push(lab.fault(
                &at.key("network"),
                format!("no network '{}' in the file or in vswitchd", e.network),
            ));
        }
        if !owned.contains(e.namespace.as_str()) && !now.netns_exists(&e.namespace) {
            let hint = if e.namespace.starts_with('/') {
                ""
            } else {
                "; list it under fabric.namespaces to have it made"
            };
            faults.push(lab.fault(
                &at.key("namespace"),
                format!("namespace '{}' does not exist{hint}", e.namespace),
            ));
        }
        if let Some(d) = file_nets.get(e.network.as_str()).map(|(_, n)| n) {
            // An address outside a daemon-chosen subnet is found here.
            if d.subnets.is_empty() {
                if let Some(have) = now
                    .network(&d.name)
                    .filter(|_| !recreated_nets.contains_key(d.name.as_str()))
                {
                    check_in_subnets(lab, &at, e, have, &mut faults);
                }
            }
        } else if let Some(have) = now.network(&e.network) {
            check_in_subnets(lab, &at, e, have, &mut faults);
        }

        let create = |why: &str| {
            step(
                Verb::Create,
                "endpoint",
                &e.name,
                format!("{why}on {} in {}", e.network, e.namespace),
                Op::Request(Request::EndpointCreate(endpoint_request(e))),
            )
        };
        match now.endpoint(&e.name) {
            None => ep_creates.push(create("")),
            Some(have) => {
                let mut why = endpoint_immutable_diff(e, have);
                if why.is_empty() && recreated_nets.contains_key(e.network.as_str()) {
                    why.push(format!("its network {} is made again", e.network));
                }
                if !why.is_empty() {
                    ep_removes.push(step(
                        Verb::Remove,
                        "endpoint",
                        &e.name,
                        format!("to be made again ({})", why.join(", ")),
                        Op::Request(Request::EndpointRemove {
                            name: e.name.clone(),
                        }),
                    ));
                    ep_creates.push(create("made again, "));
                    continue;
                }
                if let Some((set, what)) = endpoint_set(e, have) {
                    ep_changes.push(step(
                        Verb::Change,
                        "endpoint",
                        &e.name,
                        what.join(", "),
                        Op::Request(Request::EndpointSet(set)),
                    ));
                }
                let owner = Owner::Endpoint(&e.name);
                let (r, a) = policy_steps(owner, &endpoint_policies(e), &policies_of(owner));
                pol_removes.extend(r);
                pol_adds_ep.extend(a);
            }
        }
    }
    for name in &pruned_eps {
        ep_removes.push(step(
            Verb::Remove,
            "endpoint",
            name,
            "no longer in the file",
            Op::Request(Request::EndpointRemove {
                name: (*name).to_owned(),
            }),
        ));
    }

    // Networks' steps.
    let mut net_removes = Vec::new();
    let mut net_creates = Vec::new();
    let mut pol_adds_net = Vec::new();
    for n in &f.networks {
        let owner = Owner::Network(&n.name);
        let create = |why: String| {
            step(
                Verb::Create,
                "network",
                &n.name,
                why,
                Op::Request(Request::NetworkCreate(network_request(n))),
            )
        };
        if let Some(why) = recreated_nets.get(n.name.as_str()) {
            net_removes.push(step(
                Verb::Remove,
                "network",
                &n.name,
                format!("to be made again ({})", why.join(", ")),
                Op::Request(Request::NetworkRemove {
                    name: n.name.clone(),
                }),
            ));
            net_creates.push(create(format!("made again, {}", network_summary(n))));
            let (_, a) = policy_steps(owner, &n.policies, &[]);
            pol_adds_net.extend(a);
        } else if new_nets.contains(n.name.as_str()) {
            net_creates.push(create(network_summary(n)));
            let (_, a) = policy_steps(owner, &n.policies, &[]);
            pol_adds_net.extend(a);
        } else {
            let (r, a) = policy_steps(owner, &n.policies, &policies_of(owner));
            pol_removes.extend(r);
            pol_adds_net.extend(a);
        }
    }
    for name in &pruned_nets {
        net_removes.push(step(
            Verb::Remove,
            "network",
            name,
            "no longer in the file",
            Op::Request(Request::NetworkRemove {
                name: (*name).to_owned(),
            }),
        ));
    }

    // Fabric the file no longer has, that this lab made.
    let mut fabric_removes = Vec::new();
    if prune {
        let file_links: BTreeSet<LinkPair> = fabric.links.iter().map(LinkPair::of).collect();
        let file_bridges: BTreeSet<Iface> = fabric.bridges.iter().map(Iface::of_bridge).collect();
        fabric_removes = fabric_teardown(
            now,
            record.links.iter().filter(|l| !file_links.contains(l)),
            record.bridges.iter().filter(|b| !file_bridges.contains(b)),
            record
                .namespaces
                .iter()
                .filter(|n| !owned.contains(n.as_str())),
            "no longer in the file",
        );
    }

    if !faults.is_empty() {
        return Err(faults);
    }
    let mut steps = fabric_steps;
    steps.extend(ep_removes);
    steps.extend(pol_removes);
    steps.extend(net_removes);
    steps.extend(net_creates);
    steps.extend(pol_adds_net);
    steps.extend(ep_creates);
    steps.extend(ep_changes);
    steps.extend(pol_adds_ep);
    steps.extend(fabric_removes);
    Ok(Plan {
        lab: lab.name.clone(),
        steps,
    })
}

fn check_in_subnets(
    lab: &Lab,
    at: &FieldPath,
    e: &EndpointSpec,
    net: &Network,
    faults: &mut Vec<Fault>,
) {
    let subnets: Vec<Cidr> = net
        .subnets
        .iter()
        .filter_map(|s| Cidr::parse(&s.address_prefix).ok())
        .collect();
    let field = if e.address.is_some() {
        "address"
    } else {
        "addresses"
    };
    for (j, ip) in endpoint_addresses(e).into_iter().enumerate() {
        let fam: Vec<&Cidr> = subnets
            .iter()
            .filter(|s| s.is_v4() == ip.is_ipv4())
            .collect();
        if !fam.iter().any(|s| s.contains(ip)) {
            let path = if e.address.is_some() {
                at.key(field)
            } else {
                at.key(field).index(j)
            };
            let names: Vec<&str> = net
                .subnets
                .iter()
                .map(|s| s.address_prefix.as_str())
                .collect();
            faults.push(lab.fault(
                &path,
                format!(
                    "{ip} is outside network '{}''s subnets ({})",
                    net.name,
                    names.join(", ")
                ),
            ));
        }
    }
}

/// Whether `have` (CIDRs as `ip` prints them) holds `want`.
fn has_address(have: &[String], want: &str) -> bool {
    let Ok(w) = Cidr::parse(want) else {
        return false;
    };
    have.iter()
        .filter_map(|h| Cidr::parse(h).ok())
        .any(|h| h.addr == w.addr && h.prefix == w.prefix)
}

/// Removal of fabric a lab made: links, then bridges, then namespaces;
/// each only if it is still there.
fn fabric_teardown<'a>(
    now: &Current,
    links: impl Iterator<Item = &'a LinkPair>,
    bridges: impl Iterator<Item = &'a Iface>,
    namespaces: impl Iterator<Item = &'a String>,
    why: &str,
) -> Vec<Step> {
    let mut out = Vec::new();
    for l in links {
        let via = [&l.a, &l.b]
            .into_iter()
            .find(|i| now.ifaces.contains_key(*i));
        if let Some(via) = via {
            out.push(step(
                Verb::Remove,
                "link",
                &l.label(),
                why,
                Op::DelLink {
                    link: l.clone(),
                    via: via.clone(),
                },
            ));
        }
    }
    for b in bridges {
        if now.ifaces.contains_key(b) {
            out.push(step(
                Verb::Remove,
                "bridge",
                &b.label(),
                why,
                Op::DelBridge(b.clone()),
            ));
        }
    }
    for ns in namespaces {
        if now.namespaces.contains(ns) {
            out.push(step(
                Verb::Remove,
                "namespace",
                ns,
                why,
                Op::DelNamespace(ns.clone()),
            ));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// delete

/// The plan of `delete -f`: every endpoint and network the file or the
/// record names, then the fabric the record says this lab made.
pub fn delete(lab: &Lab, now: &Current, record: &Record) -> Result<Plan, Vec<Fault>> {
    let f = &lab.file;
    let eps: BTreeSet<&str> = f
        .endpoints
        .iter()
        .map(|e| e.name.as_str())
        .chain(record.endpoints.iter().map(String::as_str))
        .filter(|e| now.endpoint(e).is_some())
        .collect();
    let nets: Vec<(Option<usize>, &str)> = {
        let mut seen = BTreeSet::new();
        f.networks
            .iter()
            .enumerate()
            .map(|(i, n)| (Some(i), n.name.as_str()))
            .chain(record.networks.iter().map(|n| (None, n.as_str())))
            .filter(|(_, n)| now.network(n).is_some() && seen.insert(*n))
            .collect()
    };
    let mut faults = Vec::new();
    for (i, name) in &nets {
        let have = now.network(name).expect("filtered on existence");
        let foreign: Vec<&str> = have
            .endpoints
            .iter()
            .map(String::as_str)
            .filter(|e| !eps.contains(e))
            .collect();
        if !foreign.is_empty() {
            let message = format!(
                "network '{name}' has endpoints the file does not describe: {}; remove them first",
                foreign.join(", ")
            );
            faults.push(match i {
                Some(i) => lab.fault(&FieldPath::item("networks", *i), message),
                None => Fault {
                    line: None,
                    field: String::new(),
                    message,
                },
            });
        }
    }
    if !faults.is_empty() {
        return Err(faults);
    }
    let mut steps = Vec::new();
    for e in &eps {
        steps.push(step(
            Verb::Remove,
            "endpoint",
            e,
            "",
            Op::Request(Request::EndpointRemove {
                name: (*e).to_owned(),
            }),
        ));
    }
    for (_, n) in &nets {
        steps.push(step(
            Verb::Remove,
            "network",
            n,
            "",
            Op::Request(Request::NetworkRemove {
                name: (*n).to_owned(),
            }),
        ));
    }
    steps.extend(fabric_teardown(
        now,
        record.links.iter(),
        record.bridges.iter(),
        record.namespaces.iter(),
        "",
    ));
    Ok(Plan {
        lab: lab.name.clone(),
        steps,
    })
}

/// The interfaces whose state a plan needs: the file's fabric and what
/// the record holds.
pub fn ifaces_to_probe(lab: &Lab, record: &Record) -> BTreeSet<Iface> {
    let fabric = lab.fabric();
    let mut out: BTreeSet<Iface> = fabric.bridges.iter().map(Iface::of_bridge).collect();
    for l in &fabric.links {
        out.insert(Iface::of(&l.a));
        out.insert(Iface::of(&l.b));
    }
    for l in &record.links {
        out.insert(l.a.clone());
        out.insert(l.b.clone());
    }
    out.extend(record.bridges.iter().cloned());
    out
}

/// The record after `step` succeeded.
pub fn record_step(record: &mut Record, s: &Step) {
    match &s.op {
        Op::Request(Request::NetworkCreate(n)) => {
            record.networks.insert(n.name.clone());
        }
        Op::Request(Request::NetworkRemove { name }) => {
            record.networks.remove(name);
        }
        Op::Request(Request::EndpointCreate(e)) => {
            record.endpoints.insert(e.name.clone());
        }
        Op::Request(Request::EndpointRemove { name }) => {
            record.endpoints.remove(name);
        }
        Op::Request(_) | Op::FixIface(_) => {}
        Op::AddNamespace(ns) => {
            record.namespaces.insert(ns.clone());
        }
        Op::DelNamespace(ns) => {
            record.namespaces.remove(ns);
            // Whatever was in it went with it.
            let inside = |i: &Iface| i.namespace.as_deref() == Some(ns.as_str());
            record.links.retain(|l| !inside(&l.a) && !inside(&l.b));
            record.bridges.retain(|b| !inside(b));
        }
        Op::AddBridge(b) => {
            record.bridges.insert(b.clone());
        }
        Op::AddLink { a, b } => {
            record.links.insert(LinkPair {
                a: a.iface.clone(),
                b: b.iface.clone(),
            });
        }
        Op::DelBridge(i) => {
            record.bridges.remove(i);
        }
        Op::DelLink { link, .. } => {
            record.links.remove(link);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::parse;
    use serde_json::json;
    use std::path::Path;
    use vswitch_api::{Backend, MacPool, NetworkState, Subnet};

    const LAB: &str = "\
name: t
networks:
  - name: n1
    driver: internal
    subnets: [10.9.0.0/24]
    policies:
      - {Type: ACL, Settings: {Id: net-in, Action: Allow, Direction: In, Priority: 100}}
endpoints:
  - name: a
    network: n1
    namespace: ns-a
    address: 10.9.0.10
    policies:
      - {Type: ACL, Settings: {Id: web, Action: Allow, Direction: In, LocalPorts: '80', Priority: 100}}
  - name: b
    network: n1
    namespace: ns-b
fabric:
  namespaces: [ns-a, ns-b]
";

    fn lab(text: &str) -> Lab {
        parse(text, Path::new("t.yaml")).unwrap()
    }

    fn network(name: &str, subnet: &str, eps: &[&str]) -> Network {
        Network {
            id: format!("id-{name}"),
            name: name.into(),
            driver: "internal".into(),
            subnets: vec![Subnet {
                address_prefix: subnet.into(),
                gateway_address: Some(subnet.replace(".0/24", ".1")),
            }],
            mtu: 1500,
            mac_pool: MacPool {
                start_mac_address: "02:15:5d:00:00:00".into(),
                end_mac_address: "02:15:5d:ff:ff:ff".into(),
            },
            options: BTreeMap::new(),
            host_interface: Some("vsh1".into()),
            uplink_interface: None,
            vlan_id: None,
            vsid: None,
            provider_address: None,
            distributed_router_mac_address: None,
            endpoints: eps.iter().map(|e| (*e).to_owned()).collect(),
            state: NetworkState::Up,
            labels: BTreeMap::new(),
        }
    }

    fn endpoint(name: &str, net: &str, ns: &str, ip: &str) -> Endpoint {
        Endpoint {
            id: format!("id-{name}"),
            name: name.into(),
            network: net.into(),
            netns: ns.into(),
            ifname: "eth0".into(),
            mac_address: "02:15:5d:00:00:02".into(),
            ip: Some(ip.into()),
            prefix_length: Some(24),
            ipv6: None,
            ipv6_prefix_length: None,
            gateway_address: None,
            mtu: 1500,
            allow_spoofing: false,
            dhcp_guard: true,
            router_guard: true,
            default_acl_action: "Allow".into(),
            policy_count: 0,
            backend: Backend::Tap,
            mirror: Default::default(),
            state: EndpointState::Attached,
            handoff: false,
            labels: BTreeMap::new(),
        }
    }

    fn view(id: &str, ep: Option<&str>, net: Option<&str>, settings: Value) -> PolicyView {
        PolicyView {
            id: id.into(),
            kind: "ACL".into(),
            endpoint: ep.map(Into::into),
            network: net.map(Into::into),
            settings,
            hits: Some(0),
        }
    }

    /// What the daemon and machine hold once LAB was applied.
    fn applied(l: &Lab) -> Current {
        let f = &l.file;
        Current {
            networks: vec![network("n1", "10.9.0.0/24", &["a", "b"])],
            endpoints: vec![
                endpoint("a", "n1", "ns-a", "10.9.0.10"),
                endpoint("b", "n1", "ns-b", "10.9.0.2"),
            ],
            policies: vec![
                view(
                    "net-in",
                    None,
                    Some("n1"),
                    f.networks[0].policies[0].clone(),
                ),
                view("web", Some("a"), None, f.endpoints[0].policies[0].clone()),
            ],
            namespaces: ["ns-a", "ns-b"].map(String::from).into(),
            ..Default::default()
        }
    }

    fn lines(p: &Plan) -> Vec<String> {
        p.steps.iter().map(Step::line).collect()
    }

    #[test]
    fn first_apply_makes_everything_in_order() {
        let l = lab(LAB);
        let p = apply(&l, &Current::default(), &Record::default(), false).unwrap();
        assert_eq!(
            lines(&p),
            [
                "+ namespace ns-a",
                "+ namespace ns-b",
                "+ network n1: internal 10.9.0.0/24",
                "+ policy ACL 'net-in': on network n1",
                "+ endpoint a: on n1 in ns-a",
                "+ endpoint b: on n1 in ns-b",
            ]
        );
        let Op::Request(Request::EndpointCreate(a)) = &p.steps[4].op else {
            panic!()
        };
        assert_eq!(a.ip.as_deref(), Some("10.9.0.10"));
        assert_eq!(a.policies[0]["Settings"]["Id"], "web");
        assert_eq!(a.dhcp_guard, None);
        assert_eq!(
            p.steps[0].op.commands(),
            [
                vec!["ip", "netns", "add", "ns-a"],
                vec!["ip", "-n", "ns-a", "link", "set", "lo", "up"]
            ]
        );
    }

    #[test]
    fn applying_again_changes_nothing() {
        let l = lab(LAB);
        let p = apply(&l, &applied(&l), &Record::default(), true).unwrap();
        assert!(p.steps.is_empty(), "{:?}", lines(&p));
        assert_eq!(p.text(), "lab t: no change\n");
    }

    #[test]
    fn an_edit_changes_only_what_changed() {
        let text = LAB
            .replace("LocalPorts: '80'", "LocalPorts: '443'")
            .replace("    namespace: ns-b\n", "    namespace: ns-b\n    dhcp_guard: false\n  - name: c\n    network: n1\n    namespace: ns-b\n    ifname: eth1\n");
        let l = lab(&text);
        let p = apply(&l, &applied(&lab(LAB)), &Record::default(), false).unwrap();
        assert_eq!(
            lines(&p),
            [
                "- policy 'web': ACL from endpoint a, no longer in the file",
                "+ endpoint c: on n1 in ns-b",
                "~ endpoint b: dhcp_guard on -> off",
                "+ policy ACL 'web': on endpoint a",
            ]
        );
        let Op::Request(Request::PolicyAdd(add)) = &p.steps[3].op else {
            panic!()
        };
        assert_eq!(add.policies[0]["Settings"]["LocalPorts"], "443");
    }

    #[test]
    fn immutable_change_recreates_the_endpoint() {
        let text = LAB.replace("address: 10.9.0.10", "address: 10.9.0.20");
        let l = lab(&text);
        let p = apply(&l, &applied(&lab(LAB)), &Record::default(), false).unwrap();
        assert_eq!(
            lines(&p),
            [
                "- endpoint a: to be made again (address 10.9.0.10 -> 10.9.0.20)",
                "+ endpoint a: made again, on n1 in ns-a",
            ]
        );
    }

    #[test]
    fn changed_network_is_made_again_with_its_endpoints() {
        let text = LAB.replace("driver: internal", "driver: private");
        let l = lab(&text);
        let p = apply(&l, &applied(&lab(LAB)), &Record::default(), false).unwrap();
        assert_eq!(
            lines(&p),
            [
                "- endpoint a: to be made again (its network n1 is made again)",
                "- endpoint b: to be made again (its network n1 is made again)",
                "- network n1: to be made again (driver internal -> private)",
                "+ network n1: made again, private 10.9.0.0/24",
                "+ policy ACL 'net-in': on network n1",
                "+ endpoint a: made again, on n1 in ns-a",
                "+ endpoint b: made again, on n1 in ns-b",
            ]
        );
        // An endpoint the file does not know blocks it.
        let mut now = applied(&lab(LAB));
        now.networks[0].endpoints.push("other".into());
        let faults = apply(&l, &now, &Record::default(), false).unwrap_err();
        assert_eq!(faults[0].field, "networks[0]");
        assert_eq!(faults[0].line, Some((3, 5)));
        assert!(
            faults[0].message.contains("does not describe: other"),
            "{faults:?}"
        );
    }

    #[test]
    fn endpoint_on_a_missing_network_names_its_line() {
        let text = LAB.replace(
            "  - name: b\n    network: n1",
            "  - name: b\n    network: n2",
        );
        let l = lab(&text);
        let faults = apply(&l, &Current::default(), &Record::default(), false).unwrap_err();
        assert_eq!(faults.len(), 1, "{faults:?}");
        assert_eq!(faults[0].field, "endpoints[1].network");
        assert_eq!(faults[0].line, Some((16, 14)));
        assert_eq!(
            faults[0].message,
            "no network 'n2' in the file or in vswitchd"
        );
        // The daemon's own network will do.
        let now = Current {
            networks: vec![network("n2", "10.7.0.0/24", &[])],
            ..Default::default()
        };
        assert!(apply(&l, &now, &Record::default(), false).is_ok());
    }

    #[test]
    fn missing_namespace_and_overlap_are_faults() {
        let text = LAB.replace("  namespaces: [ns-a, ns-b]", "  namespaces: [ns-a]");
        let l = lab(&text);
        let now = Current {
            networks: vec![network("lab", "10.9.0.0/16", &[])],
            ..Default::default()
        };
        let faults = apply(&l, &now, &Record::default(), false).unwrap_err();
        let fields: Vec<&str> = faults.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            ["networks[0].subnets[0]", "endpoints[1].namespace"],
            "{faults:?}"
        );
        assert!(faults[0]
            .message
            .contains("overlaps 10.9.0.0/16 of network 'lab'"));
    }

    #[test]
    fn prune_removes_what_the_file_dropped() {
        let l = lab(LAB);
        let mut now = applied(&l);
        now.networks.push(network("old", "10.8.0.0/24", &["gone"]));
        now.endpoints
            .push(endpoint("gone", "old", "ns-a", "10.8.0.2"));
        now.namespaces.insert("ns-old".into());
        now.ifaces
            .insert(Iface::new(Some("ns-old"), "x0"), IfaceState::default());
        let old_link = LinkPair {
            a: Iface::new(Some("ns-old"), "x0"),
            b: Iface::new(Some("ns-a"), "x1"),
        };
        let record = Record {
            networks: ["n1", "old"].map(String::from).into(),
            endpoints: ["a", "b", "gone"].map(String::from).into(),
            namespaces: ["ns-a", "ns-b", "ns-old"].map(String::from).into(),
            links: [old_link].into(),
            ..Default::default()
        };
        assert!(apply(&l, &now, &record, false).unwrap().steps.is_empty());
        let p = apply(&l, &now, &record, true).unwrap();
        assert_eq!(
            lines(&p),
            [
                "- endpoint gone: no longer in the file",
                "- network old: no longer in the file",
                "- link ns-old/x0 <-> ns-a/x1: no longer in the file",
                "- namespace ns-old: no longer in the file",
            ]
        );
    }

    #[test]
    fn delete_removes_the_file_and_what_the_lab_made() {
        let l = lab(LAB);
        let mut now = applied(&l);
        now.namespaces.insert("theirs".into());
        let record = Record {
            networks: ["n1".into()].into(),
            namespaces: ["ns-a".into()].into(),
            ..Default::default()
        };
        let p = delete(&l, &now, &record).unwrap();
        assert_eq!(
            lines(&p),
            [
                "- endpoint a",
                "- endpoint b",
                "- network n1",
                "- namespace ns-a"
            ]
        );
        // ns-b was there before the lab: it stays. And a foreign endpoint
        // on the lab's network refuses the delete.
        now.networks[0].endpoints.push("other".into());
        let faults = delete(&l, &now, &record).unwrap_err();
        assert!(faults[0].message.contains("other"), "{faults:?}");
    }

    #[test]
    fn fabric_links_are_made_and_fixed() {
        let text = "\
fabric:
  namespaces: [f, o]
  bridges: [{name: br0, namespace: f}]
  links:
    - a: {name: eth0, namespace: o, addresses: [10.77.0.1/24, 'fd77::1/64']}
      b: {name: fab-out, namespace: f, master: br0}
    - a: {name: up0, addresses: [10.77.0.2/24], ipv4_conf: {arp_ignore: 1}}
      b: {name: fab-up0, namespace: f, master: br0}
";
        let l = lab(text);
        let p = apply(&l, &Current::default(), &Record::default(), false).unwrap();
        assert_eq!(
            lines(&p),
            [
                "+ namespace f",
                "+ namespace o",
                "+ bridge f/br0",
                "+ link o/eth0 <-> f/fab-out: 10.77.0.1/24 fd77::1/64 up | on br0 up",
                "+ link up0 <-> f/fab-up0: 10.77.0.2/24 arp_ignore=1 up | on br0 up",
            ]
        );
        let cmds = |i: usize| -> Vec<String> {
            p.steps[i]
                .op
                .commands()
                .iter()
                .map(|c| c.join(" "))
                .collect()
        };
        assert_eq!(
            cmds(2),
            [
                "ip -n f link add br0 type bridge mcast_snooping 0",
                "ip -n f link set br0 up"
            ]
        );
        assert_eq!(
            cmds(3),
            [
                "ip -n o link add eth0 type veth peer name fab-out netns f",
                "ip -n o addr add 10.77.0.1/24 dev eth0",
                "ip -n o addr add fd77::1/64 dev eth0 nodad",
                "ip -n o link set eth0 up",
                "ip -n f link set fab-out master br0",
                "ip -n f link set fab-out up",
            ]
        );
        // The host's end first: no `ip -n` for this namespace.
        assert_eq!(
            cmds(4)[..3],
            [
                "ip link add up0 type veth peer name fab-up0 netns f",
                "ip addr add 10.77.0.2/24 dev up0",
                "sysctl -qw net.ipv4.conf.up0.arp_ignore=1",
            ]
        );

        // Once made: nothing, unless an address went missing.
        let mut now = Current {
            namespaces: ["f", "o"].map(String::from).into(),
            ..Default::default()
        };
        let up = |master: Option<&str>, addrs: &[&str]| IfaceState {
            up: true,
            master: master.map(Into::into),
            addresses: addrs.iter().map(|a| (*a).to_owned()).collect(),
        };
        now.ifaces
            .insert(Iface::new(Some("f"), "br0"), up(None, &[]));
        now.ifaces.insert(
            Iface::new(Some("o"), "eth0"),
            up(None, &["10.77.0.1/24", "fd77::1/64"]),
        );
        now.ifaces
            .insert(Iface::new(Some("f"), "fab-out"), up(Some("br0"), &[]));
        now.ifaces.insert(Iface::new(None, "up0"), up(None, &[]));
        now.ifaces
            .insert(Iface::new(Some("f"), "fab-up0"), up(Some("br0"), &[]));
        let p = apply(&l, &now, &Record::default(), false).unwrap();
        assert_eq!(lines(&p), ["~ interface up0: 10.77.0.2/24"]);
        // One end without the other is someone else's interface.
        now.ifaces.remove(&Iface::new(Some("f"), "fab-out"));
        let faults = apply(&l, &now, &Record::default(), false).unwrap_err();
        assert_eq!(faults[0].field, "fabric.links[0].a.name");
        assert_eq!(faults[0].line, Some((5, 17)));
    }

    #[test]
    fn record_follows_the_steps() {
        let l = lab(LAB);
        let p = apply(&l, &Current::default(), &Record::default(), false).unwrap();
        let mut r = Record::default();
        for s in &p.steps {
            record_step(&mut r, s);
        }
        assert_eq!(r.networks, ["n1".to_owned()].into());
        assert_eq!(r.endpoints.len(), 2);
        assert_eq!(r.namespaces.len(), 2);
        record_step(
            &mut r,
            &step(
                Verb::Remove,
                "namespace",
                "ns-a",
                "",
                Op::DelNamespace("ns-a".into()),
            ),
        );
        assert_eq!(r.namespaces, ["ns-b".to_owned()].into());
    }

    #[test]
    fn plan_json_is_for_scripts() {
        let l = lab(LAB);
        let p = apply(&l, &Current::default(), &Record::default(), false).unwrap();
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["Lab"], "t");
        assert_eq!(v["Steps"][2]["Change"], "create");
        assert_eq!(v["Steps"][2]["Kind"], "network");
        assert_eq!(v["Steps"][2]["Op"]["Op"], "Request");
        assert_eq!(v["Steps"][2]["Op"]["Args"]["Op"], "NetworkCreate");
        assert_eq!(
            v["Steps"][0]["Op"],
            json!({"Op": "AddNamespace", "Args": "ns-a"})
        );
    }
}
