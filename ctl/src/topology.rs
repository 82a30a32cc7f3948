//! Lab files: what `vswitchctl apply -f` and `delete -f` read.
//!
//! Contract: [`parse`] takes the file's text and returns the lab it
//! describes, or every fault it found, each with the line and column of
//! the value at fault and its path in the file (`endpoints[1].network`).
//! It checks everything that needs neither the daemon nor the machine:
//! unknown keys (every struct denies them), types, names given twice,
//! CIDRs, addresses, MACs, interface names, drivers, references between
//! the file's own entries. What needs the daemon's state (an endpoint on a
//! network only the daemon has) is checked by `plan`, which reports faults
//! the same way through [`Lab::locate`].
//!
//! YAML through `serde_yaml`; JSON is YAML, so a `.json` lab file reads
//! the same. Policies are kept as JSON values, exactly what `vswitchctl
//! policy add` takes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// The longest Linux interface name (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// A lab file, as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabFile {
    /// Names the lab's record (what `apply` created, for `--prune` and
    /// `delete -f`); the file's name without extension when absent.
    pub name: Option<String>,
    #[serde(default)]
    pub networks: Vec<NetworkSpec>,
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    #[serde(default)]
    pub fabric: Option<FabricSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    pub name: String,
    pub driver: String,
    #[serde(default)]
    pub subnets: Vec<String>,
    /// One gateway (shorthand for `gateways: [IP]`).
    pub gateway: Option<String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    pub mtu: Option<u32>,
    pub mac_pool: Option<String>,
    /// `-o key=value`; numbers and booleans are taken as their text.
    #[serde(default)]
    pub options: BTreeMap<String, OptionValue>,
    /// HNS policies of the network (each applies to all its endpoints).
    #[serde(default)]
    pub policies: Vec<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub name: String,
    pub network: String,
    /// A name under /run/netns or a path such as /proc/PID/ns/net.
    pub namespace: String,
    /// One static address, IPv4 or IPv6.
    pub address: Option<String>,
    /// At most one IPv4 and one IPv6 address.
    #[serde(default)]
    pub addresses: Vec<String>,
    pub mac: Option<String>,
    pub ifname: Option<String>,
    pub backend: Option<vswitch_api::Backend>,
    #[serde(default)]
    pub allow_spoofing: bool,
    #[serde(default = "on")]
    pub dhcp_guard: bool,
    #[serde(default = "on")]
    pub router_guard: bool,
    #[serde(default)]
    pub default_acl_action: AclDefault,
    /// `HOST:CONTAINER[/tcp|/udp]`, as `endpoint create -p`.
    #[serde(default)]
    pub publish: Vec<String>,
    /// HNS policies of the endpoint.
    #[serde(default)]
    pub policies: Vec<Value>,
}

fn on() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AclDefault {
    #[default]
    Allow,
    Block,
}

impl AclDefault {
    /// As HNS (and the API) spell it.
    pub fn api_name(self) -> &'static str {
        match self {
            AclDefault::Allow => "Allow",
            AclDefault::Block => "Block",
        }
    }
}

/// The namespaces, bridges and veth links `apply` makes with `ip`. Only
/// what is listed here is ever created, and only what `apply` created is
/// ever deleted.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FabricSpec {
    /// Network namespaces (under /run/netns), created when missing.
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub bridges: Vec<BridgeSpec>,
    #[serde(default)]
    pub links: Vec<LinkSpec>,
}

/// A Linux bridge (multicast snooping off: a dumb switch).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeSpec {
    pub name: String,
    /// Absent: the namespace vswitchctl runs in.
    pub namespace: Option<String>,
}

/// A veth pair between two namespaces.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    pub a: LinkEnd,
    pub b: LinkEnd,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkEnd {
    pub name: String,
    /// Absent: the namespace vswitchctl runs in (the host's, where
    /// vswitchd's uplinks are).
    pub namespace: Option<String>,
    /// CIDRs, e.g. 10.77.0.1/24 (IPv6 ones without duplicate address
    /// detection, so they are usable at once).
    #[serde(default)]
    pub addresses: Vec<String>,
    /// A bridge of the file, in the same namespace, to enslave this end to.
    pub master: Option<String>,
    /// `net.ipv4.conf.<name>.<key>` settings, e.g. `arp_ignore: 1`.
    #[serde(default)]
    pub ipv4_conf: BTreeMap<String, OptionValue>,
}

/// A scalar taken as text: `fdb_aging: 60` and `fdb_aging: "60"` alike.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct OptionValue(pub String);

impl<'de> Deserialize<'de> for OptionValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl Visitor<'_> for Text {
            type Value = OptionValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OptionValue, E> {
                Ok(OptionValue(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<OptionValue, E> {
                Ok(OptionValue(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<OptionValue, E> {
                Ok(OptionValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<OptionValue, E> {
                Ok(OptionValue(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<OptionValue, E> {
                Ok(OptionValue(if v { "on" } else { "off" }.to_owned()))
            }
        }
        d.deserialize_any(Text)
    }
}

/// One step of a path into the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// Where in the file: `endpoints[1].network`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(pub Vec<Seg>);

impl FieldPath {
    pub fn key(&self, k: &str) -> FieldPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_owned()));
        p
    }
    pub fn index(&self, i: usize) -> FieldPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
    /// `networks[i]`.
    pub fn item(list: &str, i: usize) -> FieldPath {
        FieldPath::default().key(list).index(i)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for seg in &self.0 {
            match seg {
                Seg::Key(k) if first => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        Ok(())
    }
}

/// Something wrong with the file: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// 1-based line and column, when known.
    pub line: Option<(usize, usize)>,
    /// The field at fault, e.g. `endpoints[1].network` (empty: the whole file).
    pub field: String,
    pub message: String,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((line, column)) = self.line {
            write!(f, "line {line} column {column}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// A parsed lab, with its text (to locate faults found later).
#[derive(Debug, Clone)]
pub struct Lab {
    pub name: String,
    pub file: LabFile,
    text: String,
}

impl Lab {
    /// A fault at `path`, with the line and column of its value.
    pub fn fault(&self, path: &FieldPath, message: impl Into<String>) -> Fault {
        Fault {
            line: locate(&self.text, &path.0),
            field: path.to_string(),
            message: message.into(),
        }
    }

    pub fn fabric(&self) -> FabricSpec {
        self.file.fabric.clone().unwrap_or_default()
    }

    /// Namespaces the file creates (its fabric's).
    pub fn owned_namespaces(&self) -> BTreeSet<&str> {
        self.file
            .fabric
            .iter()
            .flat_map(|f| f.namespaces.iter().map(String::as_str))
            .collect()
    }
}

/// Parses and checks a lab file. `path` names the lab when the file does
/// not.
pub fn parse(text: &str, path: &Path) -> Result<Lab, Vec<Fault>> {
    let file: LabFile = serde_yaml::from_str(text).map_err(|e| vec![yaml_fault(&e)])?;
    let name = match &file.name {
        Some(n) => n.clone(),
        None => path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| *s != "-")
            .unwrap_or("lab")
            .to_owned(),
    };
    let lab = Lab {
        name,
        file,
        text: text.to_owned(),
    };
    let faults = check(&lab);
    if faults.is_empty() {
        Ok(lab)
    } else {
        Err(faults)
    }
}

fn yaml_fault(e: &serde_yaml::Error) -> Fault {
    let line = e.location().map(|l| (l.line(), l.column()));
    let mut message = e.to_string();
    if let Some((l, c)) = line {
        // serde_yaml appends the location; we print it first.
        let suffix = format!(" at line {l} column {c}");
        if let Some(stripped) = message.strip_suffix(&suffix) {
            message = stripped.to_owned();
        }
    }
    // serde_yaml names the path itself ("endpoints[0]: unknown field ...").
    let (field, message) = match message.split_once(": ") {
        Some((p, m)) if !p.contains(' ') && !p.is_empty() => (p.to_owned(), m.to_owned()),
        _ => (String::new(), message),
    };
    Fault {
        line,
        field,
        message,
    }
}

// ---------------------------------------------------------------------------
// Checks that need only the file.

fn check(lab: &Lab) -> Vec<Fault> {
    let f = &lab.file;
    let mut out = Vec::new();
    let mut fault = |path: FieldPath, msg: String| out.push(lab.fault(&path, msg));

    if let Some(name) = &f.name {
        if let Err(m) = record_name(name) {
            fault(FieldPath::default().key("name"), m);
        }
    }

    let mut nets: BTreeMap<&str, &NetworkSpec> = BTreeMap::new();
    for (i, n) in f.networks.iter().enumerate() {
        let at = FieldPath::item("networks", i);
        if n.name.is_empty() {
            fault(at.key("name"), "is empty".into());
        } else if nets.insert(&n.name, n).is_some() {
            fault(
                at.key("name"),
                format!("network '{}' is given twice", n.name),
            );
        }
        if vswitch_api::Driver::parse(&n.driver).is_none() {
            fault(
                at.key("driver"),
                format!(
                    "unknown driver '{}'; one of: {}",
                    n.driver,
                    vswitch_api::DRIVERS.join(", ")
                ),
            );
        }
        let mut families = BTreeSet::new();
        let mut subnets = Vec::new();
        for (j, s) in n.subnets.iter().enumerate() {
            match Cidr::parse(s) {
                Ok(c) => {
                    if !families.insert(c.is_v4()) {
                        fault(
                            at.key("subnets").index(j),
                            "a second subnet of the same address family (at most one IPv4 and one IPv6)"
                                .into(),
                        );
                    }
                    subnets.push(c);
                }
                Err(m) => fault(at.key("subnets").index(j), m),
            }
        }
        if n.gateway.is_some() && !n.gateways.is_empty() {
            fault(
                at.key("gateway"),
                "give gateway or gateways, not both".into(),
            );
        }
        let gateways: Vec<(FieldPath, &String)> = match &n.gateway {
            Some(g) => vec![(at.key("gateway"), g)],
            None => n
                .gateways
                .iter()
                .enumerate()
                .map(|(j, g)| (at.key("gateways").index(j), g))
                .collect(),
        };
        for (path, g) in gateways {
            match g.parse::<IpAddr>() {
                Ok(ip) if !subnets.iter().any(|s| s.contains(ip)) => fault(
                    path,
                    format!("gateway {ip} is in none of the network's subnets"),
                ),
                Ok(_) => {}
                Err(_) => fault(path, format!("'{g}' is not an IP address")),
            }
        }
        if let Some(pool) = &n.mac_pool {
            let ok = pool
                .split_once('-')
                .is_some_and(|(a, b)| parse_mac(a).is_some() && parse_mac(b).is_some());
            if !ok {
                fault(
                    at.key("mac_pool"),
                    format!("'{pool}' is not START-END, e.g. 02:15:5d:00:00:00-02:15:5d:00:ff:ff"),
                );
            }
        }
        for (j, p) in n.policies.iter().enumerate() {
            if let Err(m) = check_policy(p) {
                fault(at.key("policies").index(j), m);
            }
        }
    }

    let mut eps = BTreeSet::new();
    let mut vnics = BTreeSet::new();
    for (i, e) in f.endpoints.iter().enumerate() {
        let at = FieldPath::item("endpoints", i);
        if e.name.is_empty() {
            fault(at.key("name"), "is empty".into());
        } else if !eps.insert(e.name.as_str()) {
            fault(
                at.key("name"),
                format!("endpoint '{}' is given twice", e.name),
            );
        }
        let ifname = e.ifname.as_deref().unwrap_or("eth0");
        if e.namespace.is_empty() {
            fault(at.key("namespace"), "is empty".into());
        } else if !vnics.insert((e.namespace.as_str(), ifname)) {
            let field = if e.ifname.is_some() {
                "ifname"
            } else {
                "namespace"
            };
            fault(
                at.key(field),
                format!(
                    "a second endpoint with interface {ifname} in namespace '{}' (give another ifname)",
                    e.namespace
                ),
            );
        }
        let net = nets.get(e.network.as_str());
        if e.address.is_some() && !e.addresses.is_empty() {
            fault(
                at.key("address"),
                "give address or addresses, not both".into(),
            );
        }
        let addrs: Vec<(FieldPath, &String)> = match &e.address {
            Some(a) => vec![(at.key("address"), a)],
            None => e
                .addresses
                .iter()
                .enumerate()
                .map(|(j, a)| (at.key("addresses").index(j), a))
                .collect(),
        };
        let mut families = BTreeSet::new();
        for (path, a) in addrs {
            let Ok(ip) = a.parse::<IpAddr>() else {
                let hint = if a.contains('/') {
                    " (without a prefix length: the network's subnet gives it)"
                } else {
                    ""
                };
                fault(path, format!("'{a}' is not an IP address{hint}"));
                continue;
            };
            if !families.insert(ip.is_ipv4()) {
                fault(path, "a second address of the same family".into());
                continue;
            }
            if let Some(net) = net {
                let subnets: Vec<Cidr> = net
                    .subnets
                    .iter()
                    .filter_map(|s| Cidr::parse(s).ok())
                    .collect();
                if !subnets.is_empty() && !subnets.iter().any(|s| s.contains(ip)) {
                    fault(
                        path,
                        format!("{ip} is outside network '{}''s subnets", net.name),
                    );
                }
            }
        }
        if let Some(mac) = &e.mac {
            if parse_mac(mac).is_none() {
                fault(
                    at.key("mac"),
                    format!("'{mac}' is not a MAC address, e.g. 02:15:5d:12:34:56"),
                );
            }
        }
        if let Some(ifname) = &e.ifname {
            if let Err(m) = check_ifname(ifname) {
                fault(at.key("ifname"), m);
            }
        }
        for (j, p) in e.publish.iter().enumerate() {
            if let Err(m) = crate::cli::parse_publish(p) {
                fault(at.key("publish").index(j), m);
            }
        }
        for (j, p) in e.policies.iter().enumerate() {
            if let Err(m) = check_policy(p) {
                fault(at.key("policies").index(j), m);
            }
        }
    }

    if let Some(fabric) = &f.fabric {
        let at = FieldPath::default().key("fabric");
        let mut seen = BTreeSet::new();
        for (i, ns) in fabric.namespaces.iter().enumerate() {
            let path = at.key("namespaces").index(i);
            if let Err(m) = check_netns_name(ns) {
                fault(path, m);
            } else if !seen.insert(ns.as_str()) {
                fault(path, format!("namespace '{ns}' is given twice"));
            }
        }
        let mut bridges = BTreeSet::new();
        for (i, b) in fabric.bridges.iter().enumerate() {
            let path = at.key("bridges").index(i);
            if let Err(m) = check_ifname(&b.name) {
                fault(path.key("name"), m);
            } else if !bridges.insert((b.namespace.as_deref(), b.name.as_str())) {
                fault(
                    path.key("name"),
                    format!("bridge '{}' is given twice", b.name),
                );
            }
        }
        let mut ends = BTreeSet::new();
        for (i, l) in fabric.links.iter().enumerate() {
            let path = at.key("links").index(i);
            for (side, end) in [("a", &l.a), ("b", &l.b)] {
                let p = path.key(side);
                if let Err(m) = check_ifname(&end.name) {
                    fault(p.key("name"), m);
                } else if !ends.insert((end.namespace.clone(), end.name.clone()))
                    || bridges.contains(&(end.namespace.as_deref(), end.name.as_str()))
                {
                    fault(
                        p.key("name"),
                        format!(
                            "interface '{}' in {} is given twice",
                            end.name,
                            ns_label(end.namespace.as_deref())
                        ),
                    );
                }
                for (j, a) in end.addresses.iter().enumerate() {
                    if let Err(m) = Cidr::parse(a) {
                        fault(p.key("addresses").index(j), m);
                    }
                }
                if let Some(master) = &end.master {
                    if !bridges.contains(&(end.namespace.as_deref(), master.as_str())) {
                        fault(
                            p.key("master"),
                            format!(
                                "no bridge '{master}' in {} under fabric.bridges",
                                ns_label(end.namespace.as_deref())
                            ),
                        );
                    }
                }
                for key in end.ipv4_conf.keys() {
                    if key.is_empty() || key.contains(['/', '.', ' ']) {
                        fault(p.key("ipv4_conf"), format!("'{key}' is not a sysctl name"));
                    }
                }
            }
        }
    }
    out
}

/// How messages name a namespace, `None` being vswitchctl's own.
pub fn ns_label(ns: Option<&str>) -> String {
    match ns {
        Some(n) => format!("namespace '{n}'"),
        None => "this host's namespace".to_owned(),
    }
}

/// Lab names name a file, so no separators.
fn record_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "lab name '{name}' may hold only letters, digits, '-', '_' and '.' (at most 64)"
        ))
    }
}

fn check_netns_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        Err(format!("'{name}' is not a namespace name for /run/netns"))
    } else {
        Ok(())
    }
}

pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > IFNAME_MAX {
        Err(format!(
            "interface name '{name}' must be 1-{IFNAME_MAX} bytes"
        ))
    } else if name.contains(['/', ':']) || name.chars().any(char::is_whitespace) {
        Err(format!(
            "interface name '{name}' may not hold '/', ':' or spaces"
        ))
    } else {
        Ok(())
    }
}

/// The daemon judges what a policy says; the file only has to hold
/// objects, as `policy add` takes them.
fn check_policy(p: &Value) -> Result<(), String> {
    match p {
        Value::Object(m) if m.keys().any(|k| k.eq_ignore_ascii_case("type")) => Ok(()),
        _ => Err(
            "expected an HNS policy, {\"Type\": ..., \"Settings\": {...}} (as 'policy add' takes)"
                .into(),
        ),
    }
}

pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = text.split([':', '-']);
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// An address with a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let bad = || format!("'{text}' is not a CIDR, e.g. 10.1.0.0/24 or fd00:1::/64");
        let (a, p) = text.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { addr, prefix })
    }

    pub fn is_v4(&self) -> bool {
        self.addr.is_ipv4()
    }

    fn bits(ip: IpAddr) -> (u128, u8) {
        match ip {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (u128::from(a), 128),
        }
    }

    fn mask(&self) -> u128 {
        let (_, width) = Cidr::bits(self.addr);
        let host = width - self.prefix;
        let all = if width == 32 {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        if host >= 128 {
            0
        } else {
            all & !((1u128 << host) - 1)
        }
    }

    /// The network address's bits, for comparing two spellings.
    pub fn network(&self) -> (bool, u128, u8) {
        let (bits, _) = Cidr::bits(self.addr);
        (self.is_v4(), bits & self.mask(), self.prefix)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        if ip.is_ipv4() != self.is_v4() {
            return false;
        }
        let (bits, _) = Cidr::bits(ip);
        bits & self.mask() == self.network().1
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        if self.is_v4() != other.is_v4() {
            return false;
        }
        let shorter = if self.prefix <= other.prefix {
            self
        } else {
            other
        };
        let (a, _) = Cidr::bits(self.addr);
        let (b, _) = Cidr::bits(other.addr);
        a & shorter.mask() == b & shorter.mask()
    }
}

// ---------------------------------------------------------------------------
// Locating a path: deserialize the text again with a seed that walks down
// the path and fails on arrival. serde_yaml marks a failure with the
// position of the node being deserialized, which is the node at the path.

const HERE: &str = "\u{0}here";

/// Line and column (1-based) of the value at `path`, or of the deepest
/// part of the path that exists.
pub fn locate(text: &str, path: &[Seg]) -> Option<(usize, usize)> {
    for len in (0..=path.len()).rev() {
        let de = serde_yaml::Deserializer::from_str(text);
        if let Err(e) = (Probe { path: &path[..len] }).deserialize(de) {
            if e.to_string().contains(HERE) {
                return e.location().map(|l| (l.line(), l.column()));
            }
        }
    }
    None
}

struct Probe<'p> {
    path: &'p [Seg],
}

impl<'de> DeserializeSeed<'de> for Probe<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Probe<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("anything")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        match self.path.split_first() {
            None => Err(de::Error::custom(HERE)),
            Some((Seg::Index(i), rest)) => {
                for _ in 0..*i {
                    if seq.next_element::<IgnoredAny>()?.is_none() {
                        return Ok(());
                    }
                }
                seq.next_element_seed(Probe { path: rest })?;
                Ok(())
            }
            Some((Seg::Key(_), _)) => Ok(()),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        match self.path.split_first() {
            None => Err(de::Error::custom(HERE)),
            Some((Seg::Key(k), rest)) => {
                while let Some(key) = map.next_key::<serde_yaml::Value>()? {
                    if key.as_str() == Some(k.as_str()) {
                        return map.next_value_seed(Probe { path: rest });
                    }
                    map.next_value::<IgnoredAny>()?;
                }
                Ok(())
            }
            Some((Seg::Index(_), _)) => Ok(()),
        }
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.scalar()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.scalar()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.scalar()
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.scalar()
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(HERE))
    }
}

impl Probe<'_> {
    fn scalar<E: de::Error>(self) -> Result<(), E> {
        if self.path.is_empty() {
            Err(E::custom(HERE))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const TWO: &str = "\
name: t
networks:
  - name: n1
    driver: internal
    subnets: [10.9.0.0/24]
    gateway: 10.9.0.1
endpoints:
  - name: a
    network: n1
    namespace: ns-a
    address: 10.9.0.10
  - name: b
    network: n1
    namespace: ns-b
fabric:
  namespaces: [ns-a, ns-b]
";

    fn faults(text: &str) -> Vec<Fault> {
        parse(text, Path::new("x.yaml")).unwrap_err()
    }

    #[test]
    fn parses_a_small_lab() {
        let lab = parse(TWO, Path::new("x.yaml")).unwrap();
        assert_eq!(lab.name, "t");
        assert_eq!(lab.file.networks[0].gateway.as_deref(), Some("10.9.0.1"));
        let b = &lab.file.endpoints[1];
        assert!(b.dhcp_guard && b.router_guard && !b.allow_spoofing);
        assert_eq!(b.default_acl_action, AclDefault::Allow);
        assert_eq!(lab.owned_namespaces().len(), 2);
    }

    #[test]
    fn lab_name_defaults_to_file_stem() {
        let text = TWO.replacen("name: t\n", "", 1);
        let lab = parse(&text, Path::new("/tmp/my-lab.yaml")).unwrap();
        assert_eq!(lab.name, "my-lab");
    }

    #[test]
    fn json_is_yaml() {
        let text = r#"{"networks": [{"name": "n", "driver": "private", "subnets": ["10.8.0.0/24"],
            "policies": [{"Type": "ACL", "Settings": {"Id": "x", "Action": "Block"}}]}]}"#;
        let lab = parse(text, Path::new("l.json")).unwrap();
        assert_eq!(lab.file.networks[0].policies[0]["Settings"]["Id"], "x");
    }

    #[test]
    fn unknown_key_names_line_column_and_field() {
        let text = TWO.replace("    address: 10.9.0.10", "    adress: 10.9.0.10");
        let f = faults(&text);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].line, Some((11, 5)), "{f:?}");
        assert_eq!(f[0].field, "endpoints[0]");
        assert!(f[0].message.contains("unknown field `adress`"), "{f:?}");
    }

    #[test]
    fn bad_cidr_names_its_line() {
        let text = TWO.replace("10.9.0.0/24", "10.9.0.0/33");
        let f = faults(&text);
        assert_eq!(f[0].field, "networks[0].subnets[0]", "{f:?}");
        assert_eq!(f[0].line, Some((5, 15)));
        assert!(f[0].message.contains("not a CIDR"));
        // The gateway is then outside any subnet, and the address too is
        // not checked against a subnet we could not read.
        assert!(f.iter().any(|x| x.field == "networks[0].gateway"), "{f:?}");
    }

    #[test]
    fn duplicates_and_bad_values_are_all_reported() {
        let text = format!(
            "{TWO}  bridges: [{{name: br0, namespace: ns-a}}]\n  links:\n    - a: {{name: x, namespace: ns-a, master: br1}}\n      b: {{name: x, namespace: ns-a, addresses: [1.2.3.4]}}\n"
        )
        .replace("  - name: b\n", "  - name: a\n    ifname: eth1\n")
        .replace("address: 10.9.0.10", "address: 10.10.0.10\n    mac: zz");
        let f = faults(&text);
        let fields: Vec<&str> = f.iter().map(|x| x.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "endpoints[0].address",
                "endpoints[0].mac",
                "endpoints[1].name",
                "fabric.links[0].a.master",
                "fabric.links[0].b.name",
                "fabric.links[0].b.addresses[0]",
            ],
            "{f:#?}"
        );
        assert!(f[0].message.contains("outside network 'n1'"));
        assert!(f[2].message.contains("given twice"));
        assert_eq!(f[2].line, Some((13, 11)));
    }

    #[test]
    fn type_errors_carry_the_location() {
        let text = TWO.replace("driver: internal", "driver: [internal]");
        let f = faults(&text);
        assert_eq!(f[0].line.map(|l| l.0), Some(4), "{f:?}");
        assert_eq!(f[0].field, "networks[0].driver");
        let f = faults("networks:\n  - name: n\n    driver: bogus\n");
        assert!(f[0].message.starts_with("unknown driver 'bogus'"), "{f:?}");
        let f = faults(
            "endpoints:\n  - name: e\n    network: n\n    namespace: x\n    backend: vhost\n",
        );
        assert!(f[0].message.contains("unknown variant `vhost`"), "{f:?}");
        assert_eq!(f[0].line, Some((5, 14)));
    }

    #[test]
    fn locate_finds_nested_values() {
        let path = |segs: &[Seg]| locate(TWO, segs);
        let k = |s: &str| Seg::Key(s.into());
        assert_eq!(
            path(&[k("endpoints"), Seg::Index(1), k("namespace")]),
            Some((14, 16))
        );
        assert_eq!(
            path(&[k("networks"), Seg::Index(0), k("subnets"), Seg::Index(0)]),
            Some((5, 15))
        );
        // A missing tail: the deepest part that exists.
        assert_eq!(
            path(&[k("endpoints"), Seg::Index(1), k("mac")]),
            Some((12, 5))
        );
    }

    #[test]
    fn policies_must_be_objects() {
        let text = TWO.replace(
            "    gateway: 10.9.0.1\n",
            "    gateway: 10.9.0.1\n    policies: [\"ACL\"]\n",
        );
        let f = faults(&text);
        assert_eq!(f[0].field, "networks[0].policies[0]");
        assert_eq!(f[0].line, Some((7, 16)));
    }

    #[test]
    fn option_values_are_text() {
        let lab = parse(
            "networks:\n  - {name: n, driver: internal, options: {fdb_aging: 60, offload: false, interface: eth1}}\n",
            Path::new("o.yaml"),
        )
        .unwrap();
        let o = &lab.file.networks[0].options;
        assert_eq!(o["fdb_aging"].0, "60");
        assert_eq!(o["offload"].0, "off");
        assert_eq!(o["interface"].0, "eth1");
    }

    #[test]
    fn examples_parse() {
        for (name, text) in [
            ("lab.yaml", include_str!("../../examples/lab.yaml")),
            (
                "two-endpoints.yaml",
                include_str!("../../examples/two-endpoints.yaml"),
            ),
        ] {
            let lab = parse(text, Path::new(name)).unwrap_or_else(|f| panic!("{name}: {f:?}"));
            assert!(!lab.file.endpoints.is_empty());
        }
    }

    #[test]
    fn cidr_math() {
        let c = Cidr::parse("10.1.2.3/24").unwrap();
        assert_eq!(c.network(), Cidr::parse("10.1.2.0/24").unwrap().network());
        assert!(c.contains("10.1.2.200".parse().unwrap()));
        assert!(!c.contains("10.1.3.1".parse().unwrap()));
        assert!(c.overlaps(&Cidr::parse("10.1.0.0/16").unwrap()));
        assert!(!c.overlaps(&Cidr::parse("10.1.3.0/24").unwrap()));
        let six = Cidr::parse("fd00:1::/64").unwrap();
        assert!(six.contains("fd00:1::9".parse().unwrap()));
        assert!(!six.overlaps(&c));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
        for bad in ["10.0.0.0", "10.0.0.0/x", "10.0.0/24", "fd00::/129"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_mac("02:AA:00:00:00:50"),
            Some([2, 0xaa, 0, 0, 0, 0x50])
        );
        assert_eq!(parse_mac("02:aa:00:00:00"), None);
    }
}
