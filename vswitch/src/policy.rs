//! HNS policy documents, as Microsoft's own tools write them, into typed,
//! checked policies.
//!
//! HNS has two forms of a policy: v1 with the settings beside `Type`
//! (`{"Type": "ACL", "Action": "Allow", ...}`) and v2 with them under
//! `Settings` (`{"Type": "ACL", "Settings": {"Action": "Allow", ...}}`).
//! Both are accepted, one policy or a list. HNS decodes field names the way
//! Go's `encoding/json` does, case-insensitively (`"action"` is `Action`),
//! and real configurations rely on it, so this does the same (ASCII case
//! folding; HNS's names are ASCII). Values take HNS's string forms too:
//! comma lists (`"80,443"`), ranges (`"1000-2000"`) and numbers as strings
//! (`"Protocols": "6"`). A field that matches nothing is refused, naming
//! it, and so is every value out of range: a rejected document changes
//! nothing, and the error says which field (a JSON path such as
//! `[1].Settings.LocalPorts`) and what was expected.
//!
//! This module only reads documents; the pipeline enforces the policies.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde_json::{Map, Value};

use crate::wire::MacAddr;

/// Why a policy document was refused: the JSON path of the field at fault
/// and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for PolicyError {}

type Result<T> = std::result::Result<T, PolicyError>;

fn err(field: &str, message: impl Into<String>) -> PolicyError {
    PolicyError {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// One policy of an endpoint or a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    Acl(Acl),
    Qos(Qos),
    PortMapping(PortMapping),
    OutBoundNat(OutBoundNat),
    RemoteSubnetRoute(RemoteSubnetRoute),
    ProviderAddress(ProviderAddress),
}

/// The policy types this switch reads, for error messages.
const KNOWN_TYPES: &str =
    "ACL, QOS, PortMapping (or NAT), OutBoundNAT, RemoteSubnetRoute or ProviderAddress (or PA)";

impl Policy {
    /// HNS's name of the policy's type, as `Type` says it in v2.
    pub fn kind(&self) -> &'static str {
        match self {
            Policy::Acl(_) => "ACL",
            Policy::Qos(_) => "QOS",
            Policy::PortMapping(_) => "PortMapping",
            Policy::OutBoundNat(_) => "OutBoundNAT",
            Policy::RemoteSubnetRoute(_) => "RemoteSubnetRoute",
            Policy::ProviderAddress(_) => "ProviderAddress",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclAction {
    Allow,
    Block,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Towards the endpoint.
    In,
    /// From the endpoint.
    Out,
}

/// The IP protocols an ACL may name (HNS takes their numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Icmp = 1,
    Tcp = 6,
    Udp = 17,
    Icmpv6 = 58,
}

impl Protocol {
    fn from_number(n: u64) -> Option<Protocol> {
        match n {
            1 => Some(Protocol::Icmp),
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            58 => Some(Protocol::Icmpv6),
            _ => None,
        }
    }

    /// Whether rules on this protocol may name ports.
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp)
    }
}

/// An inclusive range of ports; a single port is `lo == hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }
}

/// A CIDR of either family; a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// The address with its host bits cleared.
    pub fn network(&self) -> IpAddr {
        self.masked(self.addr)
    }

    /// `ip` with only the prefix's leading `len` bits kept.
    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                IpAddr::V6(std::net::Ipv6Addr::from(u128::from(a) & mask))
            }
        }
    }

    /// Whether the two share an address.
    pub fn overlaps(&self, other: &Prefix) -> bool {
        let shorter = if self.len <= other.len { self } else { other };
        let longer = if self.len <= other.len { other } else { self };
        shorter.contains(longer.addr)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.addr.is_ipv4() == ip.is_ipv4() && self.masked(ip) == self.network()
    }
}

/// Lowest and highest priority an ACL may have; lower wins.
pub const MIN_PRIORITY: u16 = 1;
pub const MAX_PRIORITY: u16 = 65500;

/// A stateful ACL rule: a flow it allows has its replies allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    pub id: Option<String>,
    pub action: AclAction,
    pub direction: Direction,
    /// Empty: every protocol.
    pub protocols: Vec<Protocol>,
    /// Empty: any address.
    pub local_addresses: Vec<Prefix>,
    pub remote_addresses: Vec<Prefix>,
    /// Empty: any port.
    pub local_ports: Vec<PortRange>,
    pub remote_ports: Vec<PortRange>,
    pub priority: u16,
}

/// HNS's QOS: a cap on the endpoint's outgoing traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qos {
    pub max_bytes_per_second: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp,
    Udp,
}

/// Inbound connections to `external_port` on the host reach the endpoint's
/// `internal_port`; `external_port` 0 asks the switch to pick one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMapping {
    pub protocol: L4,
    pub internal_port: u16,
    pub external_port: u16,
}

/// Outbound traffic leaves with the uplink's address, except towards
/// `exceptions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutBoundNat {
    pub exceptions: Vec<Prefix>,
}

/// HNS's RemoteSubnetRoute, a policy of an overlay network: the customer
/// subnet `destination_prefix` of virtual subnet `isolation_id` is on the
/// host at `provider_address`, behind its distributed router
/// `router_mac`. The switch routes frames sent to its own router MAC and
/// bound there across the tunnel, with that MAC as destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteSubnetRoute {
    pub destination_prefix: Prefix,
    pub isolation_id: u32,
    pub provider_address: Ipv4Addr,
    pub router_mac: MacAddr,
}

/// HNS's ProviderAddress, a policy of an overlay endpoint: the provider
/// address its traffic is carried from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderAddress {
    pub provider_address: Ipv4Addr,
}

/// Reads a document holding one policy or a list of them, in either form.
/// Two ACLs with one `Id` are refused.
pub fn parse_document(text: &str) -> Result<Vec<Policy>> {
    let value: Value = serde_json::from_str(text).map_err(|e| err("", format!("not JSON: {e}")))?;
    let policies = match value {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| parse_policy(v, &format!("[{i}]")))
            .collect::<Result<Vec<_>>>()?,
        v => vec![parse_policy(&v, "")?],
    };
    let mut ids = HashSet::new();
    for (i, p) in policies.iter().enumerate() {
        if let Policy::Acl(Acl { id: Some(id), .. }) = p {
            if !ids.insert(id.as_str()) {
                return Err(err(
                    &format!("[{i}].Id"),
                    format!("'{id}' is the Id of an earlier ACL"),
                ));
            }
        }
    }
    Ok(policies)
}

/// Reads one policy, v1 or v2; `path` prefixes the field names in errors.
pub fn parse_policy(value: &Value, path: &str) -> Result<Policy> {
    let top = Fields::new(value, path)?;
    let kind = top.string("Type")?.ok_or_else(|| {
        err(
            &join(path, "Type"),
            format!("missing; expected {KNOWN_TYPES}"),
        )
    })?;
    // v2 puts the settings under Settings; v1 beside Type.
    let settings = match top.get("Settings") {
        Some(v) => {
            top.only(&["Type", "Settings"])?;
            Fields::new(v, &join(path, "Settings"))?
        }
        None => top.without(&["Type"]),
    };
    let policy = match kind.to_ascii_lowercase().as_str() {
        "acl" => Policy::Acl(acl(&settings)?),
        "qos" => Policy::Qos(qos(&settings)?),
        "portmapping" | "nat" => Policy::PortMapping(port_mapping(&settings)?),
        "outboundnat" => Policy::OutBoundNat(outbound_nat(&settings)?),
        "remotesubnetroute" => Policy::RemoteSubnetRoute(remote_subnet_route(&settings)?),
        "provideraddress" | "pa" => Policy::ProviderAddress(provider_address(&settings)?),
        _ => {
            return Err(err(
                &join(path, "Type"),
                format!("unknown policy type '{kind}'; expected {KNOWN_TYPES}"),
            ))
        }
    };
    Ok(policy)
}

fn acl(s: &Fields) -> Result<Acl> {
    s.only(&[
        "Id",
        "Action",
        "Direction",
        "Protocols",
        "LocalAddresses",
        "RemoteAddresses",
        "LocalPorts",
        "RemotePorts",
        "Priority",
        "RuleType",
        "Scope",
    ])?;
    let action = match s.string("Action")?.as_deref().map(str::to_ascii_lowercase) {
        Some(a) if a == "allow" => AclAction::Allow,
        Some(a) if a == "block" => AclAction::Block,
        _ => return Err(s.err("Action", "expected Allow or Block")),
    };
    let direction = match s
        .string("Direction")?
        .as_deref()
        .map(str::to_ascii_lowercase)
    {
        Some(d) if d == "in" => Direction::In,
        Some(d) if d == "out" => Direction::Out,
        _ => return Err(s.err("Direction", "expected In or Out")),
    };
    if let Some(rule_type) = s.string("RuleType")? {
        if rule_type.eq_ignore_ascii_case("host") {
            return Err(s.err(
                "RuleType",
                "Host rules program the host's own firewall, which vswitch does not manage; use Switch (the default)",
            ));
        }
        if !rule_type.eq_ignore_ascii_case("switch") {
            return Err(s.err("RuleType", "expected Switch"));
        }
    }
    let mut protocols = Vec::new();
    for item in s.list("Protocols")? {
        let n: u64 = item
            .parse()
            .map_err(|_| s.err("Protocols", format!("'{item}' is not a protocol number")))?;
        let p = Protocol::from_number(n).ok_or_else(|| {
            s.err(
                "Protocols",
                format!("protocol {n} is not supported; expected 1 (ICMP), 6 (TCP), 17 (UDP) or 58 (ICMPv6)"),
            )
        })?;
        if !protocols.contains(&p) {
            protocols.push(p);
        }
    }
    let local_ports = ports(s, "LocalPorts")?;
    let remote_ports = ports(s, "RemotePorts")?;
    if (!local_ports.is_empty() || !remote_ports.is_empty())
        && (protocols.is_empty() || protocols.iter().any(|p| !p.has_ports()))
    {
        return Err(s.err(
            if local_ports.is_empty() {
                "RemotePorts"
            } else {
                "LocalPorts"
            },
            "ports need Protocols of TCP (6) or UDP (17) only",
        ));
    }
    let priority = match s.number("Priority")? {
        None => MAX_PRIORITY,
        Some(n) if (u64::from(MIN_PRIORITY)..=u64::from(MAX_PRIORITY)).contains(&n) => n as u16,
        Some(n) => {
            return Err(s.err(
                "Priority",
                format!("{n} is out of range; expected {MIN_PRIORITY}-{MAX_PRIORITY} (lower wins)"),
            ))
        }
    };
    Ok(Acl {
        id: s.string("Id")?,
        action,
        direction,
        protocols,
        local_addresses: prefixes(s, "LocalAddresses")?,
        remote_addresses: prefixes(s, "RemoteAddresses")?,
        local_ports,
        remote_ports,
        priority,
    })
}

fn qos(s: &Fields) -> Result<Qos> {
    s.only(&["MaximumOutgoingBandwidthInBytes"])?;
    match s.number("MaximumOutgoingBandwidthInBytes")? {
        Some(n) if n > 0 => Ok(Qos {
            max_bytes_per_second: n,
        }),
        _ => Err(s.err(
            "MaximumOutgoingBandwidthInBytes",
            "expected a positive number of bytes per second",
        )),
    }
}

fn port_mapping(s: &Fields) -> Result<PortMapping> {
    s.only(&["Protocol", "InternalPort", "ExternalPort", "Flags"])?;
    let protocol = match s
        .string("Protocol")?
        .as_deref()
        .map(str::to_ascii_lowercase)
    {
        Some(p) if p == "6" || p == "tcp" => L4::Tcp,
        Some(p) if p == "17" || p == "udp" => L4::Udp,
        _ => return Err(s.err("Protocol", "expected 6 (TCP) or 17 (UDP)")),
    };
    let port = |name: &str, zero_ok: bool| -> Result<u16> {
        match s.number(name)? {
            Some(n) if n <= 65535 && (zero_ok || n > 0) => Ok(n as u16),
            Some(n) => Err(s.err(name, format!("{n} is not a port; expected 1-65535"))),
            None if zero_ok => Ok(0),
            None => Err(s.err(name, "missing; expected a port 1-65535")),
        }
    };
    Ok(PortMapping {
        protocol,
        internal_port: port("InternalPort", false)?,
        external_port: port("ExternalPort", true)?,
    })
}

fn outbound_nat(s: &Fields) -> Result<OutBoundNat> {
    s.only(&["Exceptions", "ExceptionList", "VirtualIP", "Destinations"])?;
    if s.get("VirtualIP").is_some() || s.get("Destinations").is_some() {
        let name = if s.get("VirtualIP").is_some() {
            "VirtualIP"
        } else {
            "Destinations"
        };
        return Err(s.err(
            name,
            "not supported: outbound NAT uses the uplink's address",
        ));
    }
    let mut exceptions = prefixes(s, "Exceptions")?;
    exceptions.extend(prefixes(s, "ExceptionList")?);
    Ok(OutBoundNat { exceptions })
}

fn remote_subnet_route(s: &Fields) -> Result<RemoteSubnetRoute> {
    s.only(&[
        "DestinationPrefix",
        "IsolationId",
        "ProviderAddress",
        "DistributedRouterMacAddress",
    ])?;
    let required = |name: &str, what: &str| {
        s.string(name)?
            .ok_or_else(|| s.err(name, format!("missing; expected {what}")))
    };
    let prefix = required("DestinationPrefix", "the remote subnet as a CIDR")?;
    let destination_prefix = match prefixes(s, "DestinationPrefix")?.as_slice() {
        [p] if prefix.contains('/') => *p,
        _ => {
            return Err(s.err(
                "DestinationPrefix",
                format!("'{prefix}': expected one subnet as a CIDR, e.g. 10.244.2.0/24"),
            ))
        }
    };
    if destination_prefix.network() != destination_prefix.addr {
        return Err(s.err(
            "DestinationPrefix",
            format!(
                "'{prefix}' has host bits set; expected {}/{}",
                destination_prefix.network(),
                destination_prefix.len
            ),
        ));
    }
    let isolation_id = s
        .number("IsolationId")?
        .ok_or_else(|| s.err("IsolationId", "missing; expected the network's VSID"))?;
    let isolation_id = u32::try_from(isolation_id)
        .ok()
        .filter(|v| (1..=0xff_ffff).contains(v))
        .ok_or_else(|| {
            s.err(
                "IsolationId",
                format!("{isolation_id} is not a VSID (1-16777215)"),
            )
        })?;
    let provider_address = ipv4(s, "ProviderAddress")?;
    let mac = required(
        "DistributedRouterMacAddress",
        "a MAC such as 0e-2a-c0-a8-01-02",
    )?;
    let router_mac = mac
        .parse::<MacAddr>()
        .ok()
        .filter(|m| !m.is_multicast() && *m != MacAddr([0; 6]))
        .ok_or_else(|| {
            s.err(
                "DistributedRouterMacAddress",
                format!("'{mac}' is not a unicast MAC; expected e.g. 0e-2a-c0-a8-01-02"),
            )
        })?;
    Ok(RemoteSubnetRoute {
        destination_prefix,
        isolation_id,
        provider_address,
        router_mac,
    })
}

fn provider_address(s: &Fields) -> Result<ProviderAddress> {
    // v1 names the field after the type (`{"Type": "PA", "PA": ...}`).
    s.only(&["ProviderAddress", "PA"])?;
    let name = if s.get("PA").is_some() {
        "PA"
    } else {
        "ProviderAddress"
    };
    Ok(ProviderAddress {
        provider_address: ipv4(s, name)?,
    })
}

/// A required unicast IPv4 address.
fn ipv4(s: &Fields, name: &str) -> Result<Ipv4Addr> {
    let text = s
        .string(name)?
        .ok_or_else(|| s.err(name, "missing; expected an IPv4 address"))?;
    text.trim()
        .parse::<Ipv4Addr>()
        .ok()
        .filter(|a| !a.is_unspecified() && !a.is_multicast() && !a.is_broadcast())
        .ok_or_else(|| s.err(name, format!("'{text}' is not a unicast IPv4 address")))
}

fn ports(s: &Fields, name: &str) -> Result<Vec<PortRange>> {
    s.list(name)?
        .iter()
        .map(|item| {
            let (lo, hi) = item.split_once('-').unwrap_or((item, item));
            let port = |t: &str| {
                t.trim()
                    .parse::<u16>()
                    .map_err(|_| s.err(name, format!("'{t}' is not a port; expected 0-65535")))
            };
            let (lo, hi) = (port(lo)?, port(hi)?);
            if lo > hi {
                return Err(s.err(name, format!("range {item} runs backwards")));
            }
            Ok(PortRange { lo, hi })
        })
        .collect()
}

fn prefixes(s: &Fields, name: &str) -> Result<Vec<Prefix>> {
    s.list(name)?
        .iter()
        .map(|item| {
            let (addr, len) = match item.split_once('/') {
                Some((a, l)) => (a, Some(l)),
                None => (item.as_str(), None),
            };
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| s.err(name, format!("'{item}' is not an address or CIDR")))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let len =
                match len {
                    None => max,
                    Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(|| {
                        s.err(name, format!("'{item}': prefix length is 0-{max}"))
                    })?,
                };
            Ok(Prefix { addr, len })
        })
        .collect()
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// An object's fields, looked up as Go's `encoding/json` does: an exact
/// match first, then one that differs only in ASCII case.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    path: String,
    /// Keys this view does not own (v1's `Type`).
    skip: Vec<&'static str>,
}

impl<'a> Fields<'a> {
    fn new(value: &'a Value, path: &str) -> Result<Fields<'a>> {
        match value {
            Value::Object(map) => Ok(Fields {
                map,
                path: path.to_owned(),
                skip: Vec::new(),
            }),
            _ => Err(err(
                if path.is_empty() { "." } else { path },
                "expected a policy object",
            )),
        }
    }

    fn without(&self, skip: &[&'static str]) -> Fields<'a> {
        Fields {
            map: self.map,
            path: self.path.clone(),
            skip: skip.to_vec(),
        }
    }

    fn err(&self, name: &str, message: impl Into<String>) -> PolicyError {
        err(&join(&self.path, name), message)
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name).or_else(|| {
            self.map
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })
    }

    /// Refuses any field that is none of `known`.
    fn only(&self, known: &[&str]) -> Result<()> {
        for key in self.map.keys() {
            let ours = known
                .iter()
                .chain(&self.skip)
                .any(|k| k.eq_ignore_ascii_case(key));
            if !ours {
                return Err(self.err(
                    key,
                    format!("unknown field; expected one of {}", known.join(", ")),
                ));
            }
        }
        Ok(())
    }

    /// A string, or a number given where HNS writes one as a string.
    fn string(&self, name: &str) -> Result<Option<String>> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(self.err(name, "expected a string")),
        }
    }

    /// A whole number, given as a number or a string.
    fn number(&self, name: &str) -> Result<Option<u64>> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.err(name, format!("{n} is not a whole number"))),
            Some(Value::String(s)) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| self.err(name, format!("'{s}' is not a whole number"))),
            Some(_) => Err(self.err(name, "expected a number")),
        }
    }

    /// HNS's lists: a comma-separated string, a number, or a JSON array of
    /// either. Empty items are dropped.
    fn list(&self, name: &str) -> Result<Vec<String>> {
        let items: Vec<String> = match self.get(name) {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::String(s)) => s.split(',').map(str::to_owned).collect(),
            Some(Value::Number(n)) => vec![n.to_string()],
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    _ => Err(self.err(name, "expected strings or numbers")),
                })
                .collect::<Result<_>>()?,
            Some(_) => Err(self.err(name, "expected a comma-separated list"))?,
        };
        Ok(items
            .into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Policy {
        let mut all = parse_document(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(all.len(), 1);
        all.remove(0)
    }

    fn refused(text: &str) -> PolicyError {
        parse_document(text).expect_err(text)
    }

    #[test]
    fn v2_acl_as_hns_writes_it() {
        let p = one(
            r#"{"Type": "ACL", "Settings": {"Id": "web", "Action": "Block",
                 "Direction": "In", "Protocols": "6,17", "LocalPorts": "80,8000-8080",
                 "RemoteAddresses": "10.0.0.0/8,fd00::/64,192.0.2.1",
                 "Priority": 100, "RuleType": "Switch"}}"#,
        );
        let Policy::Acl(acl) = p else { panic!("{p:?}") };
        assert_eq!(acl.id.as_deref(), Some("web"));
        assert_eq!(acl.action, AclAction::Block);
        assert_eq!(acl.direction, Direction::In);
        assert_eq!(acl.protocols, [Protocol::Tcp, Protocol::Udp]);
        assert_eq!(
            acl.local_ports,
            [
                PortRange { lo: 80, hi: 80 },
                PortRange { lo: 8000, hi: 8080 }
            ]
        );
        assert_eq!(acl.remote_addresses.len(), 3);
        assert_eq!(acl.remote_addresses[2].len, 32);
        assert!(acl.remote_addresses[0].contains("10.9.8.7".parse().unwrap()));
        assert!(!acl.remote_addresses[0].contains("11.0.0.1".parse().unwrap()));
        assert!(acl.remote_addresses[1].contains("fd00::99".parse().unwrap()));
        assert_eq!(acl.priority, 100);
    }

    #[test]
    fn v1_form_and_go_style_case_insensitive_names() {
        let p = one(r#"{"type": "acl", "action": "allow", "direction": "out",
                "protocols": 6, "remoteports": "443", "priority": "200"}"#);
        let Policy::Acl(acl) = p else { panic!("{p:?}") };
        assert_eq!(acl.action, AclAction::Allow);
        assert_eq!(acl.direction, Direction::Out);
        assert_eq!(acl.protocols, [Protocol::Tcp]);
        assert_eq!(acl.remote_ports, [PortRange { lo: 443, hi: 443 }]);
        assert_eq!(acl.priority, 200);
        // No Priority: the lowest.
        let p = one(r#"{"Type": "ACL", "Action": "Allow", "Direction": "In"}"#);
        let Policy::Acl(acl) = p else { panic!("{p:?}") };
        assert_eq!(acl.priority, MAX_PRIORITY);
        assert!(acl.protocols.is_empty() && acl.local_ports.is_empty());
    }

    #[test]
    fn other_types_in_both_forms() {
        assert_eq!(
            one(r#"{"Type": "QOS", "MaximumOutgoingBandwidthInBytes": 12500000}"#),
            Policy::Qos(Qos {
                max_bytes_per_second: 12_500_000
            })
        );
        let v1 =
            one(r#"{"Type": "NAT", "Protocol": "TCP", "InternalPort": 80, "ExternalPort": 8080}"#);
        let v2 = one(
            r#"{"Type": "PortMapping", "Settings": {"Protocol": 6, "InternalPort": 80, "ExternalPort": 8080}}"#,
        );
        assert_eq!(v1, v2);
        assert_eq!(
            v1,
            Policy::PortMapping(PortMapping {
                protocol: L4::Tcp,
                internal_port: 80,
                external_port: 8080
            })
        );
        let dynamic =
            one(r#"{"Type": "PortMapping", "Settings": {"Protocol": 17, "InternalPort": 53}}"#);
        assert!(matches!(
            dynamic,
            Policy::PortMapping(PortMapping {
                external_port: 0,
                protocol: L4::Udp,
                ..
            })
        ));
        let v2 = one(
            r#"{"Type": "OutBoundNAT", "Settings": {"Exceptions": ["10.0.0.0/8", "192.168.0.0/16"]}}"#,
        );
        let v1 =
            one(r#"{"Type": "OutBoundNAT", "ExceptionList": ["10.0.0.0/8", "192.168.0.0/16"]}"#);
        assert_eq!(v1, v2);
        let Policy::OutBoundNat(nat) = v1 else {
            panic!()
        };
        assert_eq!(nat.exceptions.len(), 2);
    }

    #[test]
    fn overlay_policies_as_flannel_and_hns_write_them() {
        let route = one(
            r#"{"Type": "RemoteSubnetRoute", "Settings": {"DestinationPrefix": "10.244.2.0/24",
                "IsolationId": 4096, "ProviderAddress": "192.168.1.12",
                "DistributedRouterMacAddress": "0E-2A-C0-A8-01-0C"}}"#,
        );
        assert_eq!(
            route,
            Policy::RemoteSubnetRoute(RemoteSubnetRoute {
                destination_prefix: Prefix {
                    addr: "10.244.2.0".parse().unwrap(),
                    len: 24
                },
                isolation_id: 4096,
                provider_address: Ipv4Addr::new(192, 168, 1, 12),
                router_mac: MacAddr([0x0e, 0x2a, 0xc0, 0xa8, 0x01, 0x0c]),
            })
        );
        let v1 = one(r#"{"Type": "PA", "PA": "192.168.1.11"}"#);
        let v2 =
            one(r#"{"Type": "ProviderAddress", "Settings": {"ProviderAddress": "192.168.1.11"}}"#);
        assert_eq!(v1, v2);
        let route = |settings: &str| {
            format!(
                r#"{{"Type": "RemoteSubnetRoute", "Settings": {{"IsolationId": 4096, "ProviderAddress": "192.168.1.12", "DistributedRouterMacAddress": "0e:2a:c0:a8:01:0c", {settings}}}}}"#
            )
        };
        for (doc, field, says) in [
            (route(r#""DestinationPrefix": "10.244.2.1/24""#), "Settings.DestinationPrefix", "host bits"),
            (route(r#""DestinationPrefix": "10.244.2.1""#), "Settings.DestinationPrefix", "CIDR"),
            (
                r#"{"Type": "RemoteSubnetRoute", "Settings": {"DestinationPrefix": "10.244.2.0/24"}}"#.to_owned(),
                "Settings.IsolationId",
                "missing",
            ),
            (
                r#"{"Type": "PA", "PA": "::1"}"#.to_owned(),
                "PA",
                "unicast IPv4",
            ),
            (
                r#"{"Type": "ProviderAddress", "Settings": {"ProviderAddress": "10.0.0.1", "Vip": 1}}"#.to_owned(),
                "Settings.Vip",
                "",
            ),
        ] {
            let e = refused(&doc);
            assert_eq!(e.field, field, "{doc}: {e}");
            assert!(e.message.contains(says), "{doc}: {e}");
        }
        let p = |a: &str, len| Prefix {
            addr: a.parse().unwrap(),
            len,
        };
        assert!(p("10.0.0.0", 8).overlaps(&p("10.1.0.0", 16)));
        assert!(p("10.1.0.0", 16).overlaps(&p("10.0.0.0", 8)));
        assert!(!p("10.1.0.0", 16).overlaps(&p("10.2.0.0", 16)));
        assert_eq!(
            p("10.1.2.3", 16).network(),
            "10.1.0.0".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn a_list_and_duplicate_ids() {
        let all = parse_document(
            r#"[{"Type": "ACL", "Settings": {"Id": "a", "Action": "Allow", "Direction": "In"}},
                {"Type": "QOS", "Settings": {"MaximumOutgoingBandwidthInBytes": 1000}}]"#,
        )
        .unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].kind(), "QOS");
        let e = refused(
            r#"[{"Type": "ACL", "Id": "a", "Action": "Allow", "Direction": "In"},
                {"Type": "ACL", "Id": "a", "Action": "Block", "Direction": "In"}]"#,
        );
        assert_eq!(e.field, "[1].Id");
    }

    #[test]
    fn bad_documents_name_the_field() {
        let acl = |settings: &str| {
            format!(
                r#"{{"Type": "ACL", "Settings": {{"Action": "Allow", "Direction": "In", {settings}}}}}"#
            )
        };
        let cases: Vec<(String, &str, &str)> = vec![
            (
                acl(r#""RemoteAddresses": "10.0.0.0/33""#),
                "Settings.RemoteAddresses",
                "prefix length",
            ),
            (
                acl(r#""LocalAddresses": "banana""#),
                "Settings.LocalAddresses",
                "not an address",
            ),
            (
                acl(r#""Protocols": "6", "LocalPorts": "70000""#),
                "Settings.LocalPorts",
                "not a port",
            ),
            (
                acl(r#""Protocols": "6", "LocalPorts": "90-80""#),
                "Settings.LocalPorts",
                "backwards",
            ),
            (
                acl(r#""Protocols": "47""#),
                "Settings.Protocols",
                "not supported",
            ),
            (
                acl(r#""Protocols": "tcp""#),
                "Settings.Protocols",
                "not a protocol number",
            ),
            (
                acl(r#""LocalPorts": "80""#),
                "Settings.LocalPorts",
                "TCP (6) or UDP (17)",
            ),
            (acl(r#""Priority": 0"#), "Settings.Priority", "out of range"),
            (
                acl(r#""Priority": 65501"#),
                "Settings.Priority",
                "out of range",
            ),
            (
                acl(r#""RuleType": "Host""#),
                "Settings.RuleType",
                "host's own firewall",
            ),
            (
                acl(r#""Colour": "blue""#),
                "Settings.Colour",
                "unknown field",
            ),
            (
                r#"{"Type": "ACL", "Settings": {"Action": "Permit", "Direction": "In"}}"#.into(),
                "Settings.Action",
                "Allow or Block",
            ),
            (
                r#"{"Type": "ACL", "Settings": {"Action": "Allow"}}"#.into(),
                "Settings.Direction",
                "In or Out",
            ),
            (
                r#"{"Type": "Firewall"}"#.into(),
                "Type",
                "unknown policy type",
            ),
            (r#"{"Settings": {}}"#.into(), "Type", "missing"),
            (
                r#"{"Type": "QOS", "Settings": {"MaximumOutgoingBandwidthInBytes": 0}}"#.into(),
                "Settings.MaximumOutgoingBandwidthInBytes",
                "positive",
            ),
            (
                r#"{"Type": "PortMapping", "Settings": {"Protocol": 6, "InternalPort": 70000}}"#
                    .into(),
                "Settings.InternalPort",
                "not a port",
            ),
            (
                r#"{"Type": "PortMapping", "Settings": {"Protocol": 1, "InternalPort": 80}}"#
                    .into(),
                "Settings.Protocol",
                "6 (TCP) or 17 (UDP)",
            ),
            (
                r#"{"Type": "ACL", "Settings": {}, "Action": "Allow"}"#.into(),
                "Action",
                "unknown field",
            ),
            (r#"[1]"#.into(), "[0]", "policy object"),
        ];
        for (text, field, message) in cases {
            let e = refused(&text);
            assert_eq!(e.field, field, "{text}: {e}");
            assert!(e.message.contains(message), "{text}: {e}");
        }
        assert_eq!(refused("{").field, "");
    }
}
