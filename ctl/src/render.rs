//! Turns daemon replies into what `vswitchctl` prints: aligned tables for
//! people, one-line summaries for create commands.

use serde_json::{Map, Value};
use vswitch_api::{
    DatapathInfo, Endpoint, EndpointState, FdbEntry, Flows, Network, PolicyView, Port, PortStats,
    Trace,
};

/// Blank columns between table cells, as `docker ls` does.
const GAP: &str = "   ";
/// Shown in a cell that has no value.
const NONE: &str = "-";
/// How much of a policy's settings `policy ls` shows as JSON.
const SUMMARY_WIDTH: usize = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    /// For numbers, so digits of the same weight line up.
    Right,
}

/// A text table whose columns are as wide as their widest cell.
#[derive(Debug)]
pub struct Table {
    headers: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[(&'static str, Align)]) -> Self {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; it must have one cell per column.
    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(cells.len(), self.headers.len(), "table row width");
        self.rows.push(cells);
    }

    /// The header line and one line per row, each ending in a newline and
    /// without trailing blanks.
    pub fn render(&self) -> String {
        let widths: Vec<usize> = self
            .headers
            .iter()
            .enumerate()
            .map(|(i, (title, _))| {
                self.rows
                    .iter()
                    .map(|row| width(&row[i]))
                    .chain([width(title)])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        let header: Vec<&str> = self.headers.iter().map(|(title, _)| *title).collect();
        for cells in std::iter::once(header).chain(
            self.rows
                .iter()
                .map(|row| row.iter().map(String::as_str).collect()),
        ) {
            let mut line = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i > 0 {
                    line.push_str(GAP);
                }
                let pad = " ".repeat(widths[i] - width(cell));
                match self.headers[i].1 {
                    Align::Left => {
                        line.push_str(cell);
                        line.push_str(&pad);
                    }
                    Align::Right => {
                        line.push_str(&pad);
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

fn width(text: &str) -> usize {
    text.chars().count()
}

fn or_none(value: Option<&str>) -> String {
    value.unwrap_or(NONE).to_owned()
}

fn join_or_none(values: Vec<String>) -> String {
    if values.is_empty() {
        NONE.to_owned()
    } else {
        values.join(",")
    }
}

fn state(state: &EndpointState) -> String {
    match state {
        EndpointState::Attached => "attached".to_owned(),
        EndpointState::Detached { reason } => format!("detached ({reason})"),
    }
}

/// `ADDR/LEN`, or `ADDR` when the length is unknown.
fn cidr(addr: &str, prefix: Option<u8>) -> String {
    match prefix {
        Some(len) => format!("{addr}/{len}"),
        None => addr.to_owned(),
    }
}

fn endpoint_addresses(ep: &Endpoint) -> Vec<String> {
    let v4 = ep.ip.as_deref().map(|ip| cidr(ip, ep.prefix_length));
    let v6 = ep.ipv6.as_deref().map(|ip| cidr(ip, ep.ipv6_prefix_length));
    v4.into_iter().chain(v6).collect()
}

pub fn networks(networks: &[Network]) -> String {
    use Align::*;
    let mut table = Table::new(&[
        ("NAME", Left),
        ("DRIVER", Left),
        ("SUBNET", Left),
        ("GATEWAY", Left),
        ("UPLINK", Left),
        ("MTU", Right),
        ("ENDPOINTS", Right),
        ("STATE", Left),
    ]);
    for net in networks {
        table.row(vec![
            net.name.clone(),
            net.driver.clone(),
            join_or_none(
                net.subnets
                    .iter()
                    .map(|s| s.address_prefix.clone())
                    .collect(),
            ),
            join_or_none(
                net.subnets
                    .iter()
                    .filter_map(|s| s.gateway_address.clone())
                    .collect(),
            ),
            match (&net.uplink_interface, net.vlan_id) {
                (Some(i), Some(v)) => format!("{i} vlan {v}"),
                (Some(i), None) => i.clone(),
                _ => "-".to_owned(),
            },
            net.mtu.to_string(),
            net.endpoints.len().to_string(),
            match &net.state {
                vswitch_api::NetworkState::Up => "up".to_owned(),
                vswitch_api::NetworkState::Degraded { reason } => format!("degraded ({reason})"),
            },
        ]);
    }
    table.render()
}

pub fn endpoints(endpoints: &[Endpoint]) -> String {
    use Align::*;
    let mut table = Table::new(&[
        ("NAME", Left),
        ("NETWORK", Left),
        ("NETNS", Left),
        ("IFNAME", Left),
        ("MAC", Left),
        ("IP", Left),
        ("POLICIES", Right),
        ("STATE", Left),
    ]);
    for ep in endpoints {
        table.row(vec![
            ep.name.clone(),
            ep.network.clone(),
            ep.netns.clone(),
            ep.ifname.clone(),
            ep.mac_address.clone(),
            join_or_none(endpoint_addresses(ep)),
            ep.policy_count.to_string(),
            state(&ep.state),
        ]);
    }
    table.render()
}

pub fn ports(ports: &[Port]) -> String {
    use Align::*;
    let mut table = Table::new(&[
        ("NAME", Left),
        ("KIND", Left),
        ("NETWORK", Left),
        ("INTERFACE", Left),
        ("NETNS", Left),
        ("MAC", Left),
        ("BACKEND", Left),
        ("OFFLOAD", Left),
        ("STATE", Left),
    ]);
    for port in ports {
        table.row(vec![
            port.name.clone(),
            port.kind.to_string(),
            port.network.clone(),
            port.interface.clone(),
            or_none(port.netns.as_deref()),
            port.mac_address.clone(),
            match &port.xdp_mode {
                Some(mode) => format!("{} ({mode})", port.backend),
                None => port.backend.clone(),
            },
            if port.offload { "on" } else { "off" }.to_owned(),
            state(&port.state),
        ]);
    }
    table.render()
}

/// The counters table; with `detailed`, each port's drops by reason and its
/// flow cache counters follow.
pub fn stats(stats: &[PortStats], detailed: bool) -> String {
    use Align::*;
    let mut table = Table::new(&[
        ("PORT", Left),
        ("NETWORK", Left),
        ("RX-PKTS", Right),
        ("RX-BYTES", Right),
        ("TX-PKTS", Right),
        ("TX-BYTES", Right),
        ("DROPS", Right),
    ]);
    for s in stats {
        let drops: u64 = s.drops.values().fold(0, |sum, n| sum.saturating_add(*n));
        table.row(vec![
            s.port.clone(),
            s.network.clone(),
            s.rx_packets.to_string(),
            s.rx_bytes.to_string(),
            s.tx_packets.to_string(),
            s.tx_bytes.to_string(),
            drops.to_string(),
        ]);
    }
    let mut out = table.render();
    if detailed {
        for s in stats {
            let mut reasons = Table::new(&[("DROP-REASON", Left), ("COUNT", Right)]);
            for (reason, count) in &s.drops {
                reasons.row(vec![reason.clone(), count.to_string()]);
            }
            out.push('\n');
            out.push_str(&reasons.render());
            let c = &s.flow_cache;
            let mut cache = Table::new(&[("FLOW-CACHE", Left), ("COUNT", Right)]);
            for (name, count) in [
                ("hits", c.hits),
                ("misses", c.misses),
                ("entries", c.entries),
                ("evictions", c.evictions),
            ] {
                cache.row(vec![name.to_owned(), count.to_string()]);
            }
            out.push('\n');
            out.push_str(&cache.render());
            if s.mirrored_packets > 0 {
                out.push_str(&format!(
                    "\nmirrored to this port: {} frames, {} bytes\n",
                    s.mirrored_packets, s.mirrored_bytes
                ));
            }
            if let Some(f) = &s.fast_path {
                let mut fast =
                    Table::new(&[("FAST-PATH", Left), ("PACKETS", Right), ("BYTES", Right)]);
                for (name, packets, bytes) in [
                    (
                        "forwarded in the kernel",
                        f.forwarded_packets,
                        f.forwarded_bytes,
                    ),
                    (
                        "delivered by the kernel",
                        f.delivered_packets,
                        f.delivered_bytes,
                    ),
                    ("punted to vswitchd", f.punted_packets, f.punted_bytes),
                ] {
                    fast.row(vec![
                        name.to_owned(),
                        packets.to_string(),
                        bytes.to_string(),
                    ]);
                }
                for (reason, n) in f.drops.iter().filter(|(_, n)| **n > 0) {
                    fast.row(vec![
                        format!("dropped: {reason}"),
                        n.to_string(),
                        String::new(),
                    ]);
                }
                out.push('\n');
                out.push_str(&fast.render());
            }
        }
    }
    out
}

/// `vswitchctl network mappings`.
pub fn mappings(m: &[vswitch_api::Mapping]) -> String {
    use Align::*;
    if m.is_empty() {
        return "no mappings\n".into();
    }
    let mut table = Table::new(&[
        ("VSID", Right),
        ("CA", Left),
        ("MAC", Left),
        ("PA", Left),
        ("SOURCE", Left),
        ("OWNER", Left),
    ]);
    for e in m {
        table.row(vec![
            e.vsid.to_string(),
            e.ip.clone(),
            e.mac_address.clone(),
            e.provider_address.clone(),
            e.source.clone(),
            e.owner.clone().unwrap_or_default(),
        ]);
    }
    table.render()
}

/// `vswitchctl datapath show`.
pub fn datapath(info: &DatapathInfo) -> String {
    use Align::*;
    let mut out = String::new();
    if !info.loaded {
        out.push_str(&format!(
            "fast path not loaded (no veth endpoint yet); it will pin under {}\nprogram version {} (layout {})\n",
            info.pin_dir, info.version, info.layout
        ));
        return out;
    }
    out.push_str(&format!(
        "pinned under {}\nprogram version {} (layout {}), {}\n\n",
        info.pin_dir, info.version, info.layout, info.origin
    ));
    for v in &info.vteps {
        let drops: Vec<String> = v.drops.iter().map(|(r, n)| format!("{r} {n}")).collect();
        out.push_str(&format!(
            "VXLAN {} on UDP {}: {}\n",
            v.interface,
            v.port,
            if drops.is_empty() {
                "no drops".to_owned()
            } else {
                format!("dropped {}", drops.join(", "))
            }
        ));
    }
    if !info.vteps.is_empty() {
        out.push('\n');
    }
    let mut table = Table::new(&[
        ("INTERFACE", Left),
        ("IFINDEX", Right),
        ("PORT", Left),
        ("PROGRAM", Left),
        ("HOOK", Left),
        ("STATE", Left),
    ]);
    for a in &info.attachments {
        table.row(vec![
            a.interface.clone(),
            a.ifindex.to_string(),
            a.port.clone(),
            a.program.clone(),
            a.hook.clone(),
            if a.attached {
                "attached"
            } else {
                "NOT ATTACHED"
            }
            .to_owned(),
        ]);
    }
    out.push_str(&table.render());
    out
}

pub fn fdb(entries: &[FdbEntry]) -> String {
    use Align::*;
    let mut table = Table::new(&[("MAC", Left), ("PORT", Left), ("AGE", Right)]);
    for e in entries {
        table.row(vec![
            e.mac_address.clone(),
            e.port.clone(),
            format!("{}s", e.age_seconds),
        ]);
    }
    table.render()
}

/// `endpoint ep1`, `network net1`: whom a policy belongs to.
pub fn owner(endpoint: Option<&str>, network: Option<&str>) -> String {
    match (endpoint, network) {
        (Some(ep), _) => format!("endpoint {ep}"),
        (None, Some(net)) => format!("network {net}"),
        (None, None) => NONE.to_owned(),
    }
}

fn policy_owner(p: &PolicyView) -> String {
    owner(p.endpoint.as_deref(), p.network.as_deref())
}

/// One line per policy added: `added ACL policy 'allow-web' to endpoint ep1`.
pub fn policies_added(policies: &[PolicyView]) -> String {
    policies
        .iter()
        .map(|p| {
            format!(
                "added {} policy '{}' to {}\n",
                p.kind,
                p.id,
                policy_owner(p)
            )
        })
        .collect()
}

pub fn policies(policies: &[PolicyView]) -> String {
    use Align::*;
    let mut table = Table::new(&[
        ("ID", Left),
        ("TYPE", Left),
        ("OWNER", Left),
        ("HITS", Right),
        ("SUMMARY", Left),
    ]);
    for p in policies {
        table.row(vec![
            p.id.clone(),
            p.kind.clone(),
            policy_owner(p),
            p.hits.map_or_else(|| NONE.to_owned(), |n| n.to_string()),
            policy_summary(p),
        ]);
    }
    table.render()
}

/// A member of a JSON object by name, ignoring case as HNS does.
fn member<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    object
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value)
}

/// A policy's settings: the `Settings` object of HNS's v2 form, or the v1
/// form's members beside `Type`.
fn policy_settings(policy: &Value) -> Value {
    let Some(object) = policy.as_object() else {
        return policy.clone();
    };
    if let Some(inner @ Value::Object(_)) = member(object, "Settings") {
        return inner.clone();
    }
    let mut flat = object.clone();
    flat.retain(|key, _| !key.eq_ignore_ascii_case("Type"));
    Value::Object(flat)
}

/// One line: for an ACL its action, direction, the matches given and the
/// priority (`Allow In proto 6 lport 80 priority 100`); for other kinds the
/// settings as compact JSON, cut to [`SUMMARY_WIDTH`].
fn policy_summary(p: &PolicyView) -> String {
    let settings = policy_settings(&p.settings);
    match settings.as_object() {
        Some(acl) if p.kind.eq_ignore_ascii_case("ACL") => {
            let text = |names: &[&str]| {
                names.iter().find_map(|name| match member(acl, name)? {
                    Value::Null => None,
                    Value::String(s) if s.is_empty() => None,
                    Value::String(s) => Some(s.clone()),
                    other => Some(other.to_string()),
                })
            };
            let mut words: Vec<String> = [text(&["Action"]), text(&["Direction"])]
                .into_iter()
                .flatten()
                .collect();
            for (label, names) in [
                ("proto", &["Protocols", "Protocol"][..]),
                ("laddr", &["LocalAddresses"]),
                ("lport", &["LocalPorts", "LocalPort"]),
                ("raddr", &["RemoteAddresses"]),
                ("rport", &["RemotePorts", "RemotePort"]),
                ("priority", &["Priority"]),
            ] {
                if let Some(value) = text(names) {
                    words.push(format!("{label} {value}"));
                }
            }
            words.join(" ")
        }
        _ => cut(&settings.to_string(), SUMMARY_WIDTH),
    }
}

/// `text`, or its first `max` characters ending in `...`.
fn cut(text: &str, max: usize) -> String {
    if width(text) <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(3)).collect();
    out.push_str("...");
    out
}

/// As Open vSwitch's `ofproto/trace`: the packet, the numbered steps, the
/// verdict.
///
/// ```text
/// Flow: tcp,src=10.1.0.2,dst=10.1.0.3,sport=1234,dport=80 in_port=ep1
///
///   1. admit: ...
///   2. acl.out: ...
///
/// Final verdict: drop (acl_blocked)
/// ```
pub fn trace(trace: &Trace) -> String {
    let mut out = format!("Flow: {} in_port={}\n\n", trace.packet, trace.in_port);
    let digits = trace.steps.len().to_string().len();
    for (i, step) in trace.steps.iter().enumerate() {
        out.push_str(&format!(
            "  {:>digits$}. {}: {}\n",
            i + 1,
            step.stage,
            step.detail
        ));
    }
    if !trace.steps.is_empty() {
        out.push('\n');
    }
    let mut verdict = trace.verdict.clone();
    if !trace.out_ports.is_empty() {
        verdict.push_str(" to ");
        verdict.push_str(&trace.out_ports.join(", "));
    }
    if let Some(reason) = &trace.drop_reason {
        verdict.push_str(&format!(" ({reason})"));
    }
    out.push_str(&format!("Final verdict: {verdict}\n"));
    out
}

/// Milliseconds as seconds with tenths: `1.2s`.
fn idle(ms: u64) -> String {
    format!("{}.{}s", ms / 1000, ms % 1000 / 100)
}

/// `10.0.0.2:80`, `[fd00::2]:80`; the address alone for ICMP, which has no
/// ports.
fn socket_address(protocol: &str, addr: &str, port: u16) -> String {
    if protocol.to_ascii_lowercase().starts_with("icmp") {
        addr.to_owned()
    } else if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// The flow cache table, then the connections table, each under a title.
pub fn flows(flows: &Flows) -> String {
    use Align::*;
    let mut cache = Table::new(&[
        ("IN", Left),
        ("OUT", Left),
        ("FLOW", Left),
        ("ACTION", Left),
        ("HITS", Right),
        ("IDLE", Right),
    ]);
    for f in &flows.flows {
        cache.row(vec![
            f.in_port.clone(),
            or_none(Some(f.out_port.as_str()).filter(|p| !p.is_empty())),
            f.flow.clone(),
            f.action.clone(),
            f.hits.to_string(),
            idle(f.idle_ms),
        ]);
    }
    let mut conns = Table::new(&[
        ("PORT", Left),
        ("PROTO", Left),
        ("SOURCE", Left),
        ("DESTINATION", Left),
        ("STATE", Left),
        ("PKTS-O/R", Right),
        ("IDLE", Right),
        ("TRANSLATED REPLY", Left),
    ]);
    for c in &flows.connections {
        // A translated connection's replies: from whom, to which address.
        let reply = if c.translated {
            format!(
                "{} -> {}",
                socket_address(&c.protocol, &c.reply_source, c.reply_source_port),
                socket_address(&c.protocol, &c.reply_destination, c.reply_destination_port)
            )
        } else {
            "-".to_owned()
        };
        conns.row(vec![
            c.port.clone(),
            c.protocol.clone(),
            socket_address(&c.protocol, &c.source, c.source_port),
            socket_address(&c.protocol, &c.destination, c.destination_port),
            c.state.clone(),
            format!("{}/{}", c.packets_original, c.packets_reply),
            idle(c.idle_ms),
            reply,
        ]);
    }
    format!(
        "Flow cache\n{}\nConnections\n{}",
        cache.render(),
        conns.render()
    )
}

/// `created network net1: internal 10.1.0.0/24 gw 10.1.0.1 mtu 1500 host vsw-net1`
pub fn network_created(net: &Network) -> String {
    let mut line = format!("created network {}: {}", net.name, net.driver);
    for subnet in &net.subnets {
        line.push(' ');
        line.push_str(&subnet.address_prefix);
        if let Some(gw) = &subnet.gateway_address {
            line.push_str(" gw ");
            line.push_str(gw);
        }
    }
    line.push_str(&format!(" mtu {}", net.mtu));
    if let Some(uplink) = &net.uplink_interface {
        line.push_str(" uplink ");
        line.push_str(uplink);
    }
    if let Some(vlan) = net.vlan_id {
        line.push_str(&format!(" vlan {vlan}"));
    }
    if let Some(host) = &net.host_interface {
        line.push_str(" host ");
        line.push_str(host);
    }
    line
}

/// `created endpoint ep1: 10.1.0.2/24 02:15:5d:12:34:56 in ns1 eth0`
pub fn endpoint_created(ep: &Endpoint) -> String {
    let mut facts = endpoint_addresses(ep);
    facts.push(ep.mac_address.clone());
    let mut line = format!(
        "created endpoint {}: {} in {} {}",
        ep.name,
        facts.join(" "),
        ep.netns,
        ep.ifname
    );
    match ep.policy_count {
        0 => {}
        1 => line.push_str(", 1 policy"),
        n => line.push_str(&format!(", {n} policies")),
    }
    line
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;
    use vswitch_api::{
        Connection, FlowCacheStats, FlowEntry, MacPool, PortKind, Subnet, TraceStep,
    };

    pub(crate) fn network() -> Network {
        Network {
            id: "0b4c".into(),
            name: "net1".into(),
            driver: "internal".into(),
            subnets: vec![
                Subnet {
                    address_prefix: "10.1.0.0/24".into(),
                    gateway_address: Some("10.1.0.1".into()),
                },
                Subnet {
                    address_prefix: "fd00:1::/64".into(),
                    gateway_address: None,
                },
            ],
            mtu: 1500,
            mac_pool: MacPool {
                start_mac_address: "02:15:5d:00:00:00".into(),
                end_mac_address: "02:15:5d:00:ff:ff".into(),
            },
            options: BTreeMap::new(),
            host_interface: Some("vsw-net1".into()),
            uplink_interface: None,
            vlan_id: None,
            vsid: None,
            provider_address: None,
            distributed_router_mac_address: None,
            endpoints: vec!["ep1".into(), "ep2".into()],
            state: vswitch_api::NetworkState::Up,
            labels: BTreeMap::new(),
        }
    }

    pub(crate) fn endpoint() -> Endpoint {
        Endpoint {
            backend: vswitch_api::Backend::Tap,
            id: "77aa".into(),
            name: "ep1".into(),
            network: "net1".into(),
            netns: "ns1".into(),
            ifname: "eth0".into(),
            mac_address: "02:15:5d:12:34:56".into(),
            ip: Some("10.1.0.2".into()),
            prefix_length: Some(24),
            ipv6: None,
            ipv6_prefix_length: None,
            gateway_address: Some("10.1.0.1".into()),
            mtu: 1500,
            allow_spoofing: false,
            dhcp_guard: true,
            router_guard: true,
            default_acl_action: "Allow".into(),
            policy_count: 0,
            mirror: Default::default(),
            state: EndpointState::Attached,
            handoff: false,
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&[
            ("NAME", Align::Left),
            ("N", Align::Right),
            ("X", Align::Left),
        ]);
        t.row(vec!["a".into(), "1".into(), "long-value".into()]);
        t.row(vec!["longer-name".into(), "12345".into(), "".into()]);
        assert_eq!(
            t.render(),
            "NAME              N   X\n\
             a                 1   long-value\n\
             longer-name   12345\n"
        );
    }

    #[test]
    fn table_counts_characters_not_bytes() {
        let mut t = Table::new(&[("A", Align::Left), ("B", Align::Left)]);
        t.row(vec!["é".into(), "x".into()]);
        assert_eq!(t.render(), "A   B\né   x\n");
    }

    #[test]
    fn empty_table_has_header_only() {
        assert_eq!(
            networks(&[]),
            "NAME   DRIVER   SUBNET   GATEWAY   UPLINK   MTU   ENDPOINTS   STATE\n"
        );
    }

    #[test]
    fn network_table() {
        let mut none = network();
        none.name = "isolated".into();
        none.driver = "none".into();
        none.subnets.clear();
        none.endpoints.clear();
        let mut wire = network();
        wire.name = "wire".into();
        wire.driver = "l2bridge".into();
        wire.subnets.truncate(1);
        wire.subnets[0].gateway_address = None;
        wire.uplink_interface = Some("eth1".into());
        wire.vlan_id = Some(10);
        wire.state = vswitch_api::NetworkState::Degraded {
            reason: "uplink interface 'eth1' is gone".into(),
        };
        assert_eq!(
            networks(&[network(), none, wire]),
            "NAME       DRIVER     SUBNET                    GATEWAY    UPLINK          MTU   ENDPOINTS   STATE\n\
             net1       internal   10.1.0.0/24,fd00:1::/64   10.1.0.1   -              1500           2   up\n\
             isolated   none       -                         -          -              1500           0   up\n\
             wire       l2bridge   10.1.0.0/24               -          eth1 vlan 10   1500           2   degraded (uplink interface 'eth1' is gone)\n"
        );
    }

    #[test]
    fn endpoint_table_shows_state_reason() {
        let mut gone = endpoint();
        gone.name = "ep2".into();
        gone.ipv6 = Some("fd00:1::2".into());
        gone.ipv6_prefix_length = Some(64);
        gone.state = EndpointState::Detached {
            reason: "namespace gone".into(),
        };
        gone.policy_count = 3;
        let text = endpoints(&[endpoint(), gone]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("NAME   NETWORK   NETNS   IFNAME   MAC"));
        assert!(lines[0].ends_with("IP                         POLICIES   STATE"));
        assert!(lines[1].ends_with("10.1.0.2/24                       0   attached"));
        assert!(
            lines[2].ends_with("10.1.0.2/24,fd00:1::2/64          3   detached (namespace gone)")
        );
    }

    #[test]
    fn port_table() {
        let port = Port {
            name: "host:net1".into(),
            id: 1,
            kind: PortKind::Host,
            network: "net1".into(),
            interface: "vsw-net1".into(),
            netns: None,
            mac_address: "02:15:5d:00:00:01".into(),
            backend: "tap".into(),
            xdp_mode: None,
            offload: true,
            state: EndpointState::Attached,
        };
        assert_eq!(
            ports(&[port]),
            "NAME        KIND   NETWORK   INTERFACE   NETNS   MAC                 BACKEND   OFFLOAD   STATE\n\
             host:net1   host   net1      vsw-net1    -       02:15:5d:00:00:01   tap       on        attached\n"
        );
    }

    #[test]
    fn stats_sum_drops_and_list_reasons() {
        let s = PortStats {
            fast_path: None,
            port: "ep1".into(),
            network: "net1".into(),
            rx_packets: 10,
            rx_bytes: 1000,
            tx_packets: 5,
            tx_bytes: 500,
            rx_partial_checksums: 0,
            mirrored_packets: 0,
            mirrored_bytes: 0,
            drops: BTreeMap::from([("spoofed-mac".into(), 3), ("no-route".into(), 0)]),
            flow_cache: FlowCacheStats {
                hits: 7,
                misses: 2,
                entries: 1,
                evictions: 0,
            },
        };
        let table = "PORT   NETWORK   RX-PKTS   RX-BYTES   TX-PKTS   TX-BYTES   DROPS\n\
                     ep1    net1           10       1000         5        500       3\n";
        assert_eq!(stats(std::slice::from_ref(&s), false), table);
        assert_eq!(
            stats(&[s], true),
            format!(
                "{table}\n\
                 DROP-REASON   COUNT\n\
                 no-route          0\n\
                 spoofed-mac       3\n\
                 \n\
                 FLOW-CACHE   COUNT\n\
                 hits             7\n\
                 misses           2\n\
                 entries          1\n\
                 evictions        0\n"
            )
        );
    }

    #[test]
    fn fdb_table() {
        let e = FdbEntry {
            mac_address: "02:15:5d:12:34:56".into(),
            port: "ep1".into(),
            age_seconds: 42,
        };
        assert_eq!(
            fdb(&[e]),
            "MAC                 PORT   AGE\n02:15:5d:12:34:56   ep1    42s\n"
        );
    }

    #[test]
    fn created_lines() {
        assert_eq!(
            endpoint_created(&endpoint()),
            "created endpoint ep1: 10.1.0.2/24 02:15:5d:12:34:56 in ns1 eth0"
        );
        assert_eq!(
            network_created(&network()),
            "created network net1: internal 10.1.0.0/24 gw 10.1.0.1 fd00:1::/64 mtu 1500 host vsw-net1"
        );
    }

    fn policy(id: &str, kind: &str, settings: Value) -> PolicyView {
        PolicyView {
            id: id.into(),
            kind: kind.into(),
            endpoint: Some("ep1".into()),
            network: None,
            settings,
            hits: None,
        }
    }

    #[test]
    fn policy_table_summarises_acls_and_cuts_the_rest() {
        let mut web = policy(
            "allow-web",
            "ACL",
            json!({"Type": "ACL", "Settings": {"Id": "allow-web", "Action": "Allow", "Direction": "In",
                   "Protocols": "6", "LocalPorts": "80", "RemoteAddresses": "", "Priority": 100}}),
        );
        web.hits = Some(12);
        // HNS v1: the settings beside Type, any case.
        let mut v1 = policy(
            "block-dns",
            "ACL",
            json!({"Type": "ACL", "action": "Block", "Direction": "Out", "Protocol": 17,
                   "RemotePort": 53, "RemoteAddresses": "10.0.0.0/8"}),
        );
        v1.endpoint = None;
        v1.network = Some("net1".into());
        v1.hits = Some(0);
        let nat = policy(
            "p3",
            "OutBoundNAT",
            json!({"Type": "OutBoundNAT", "Settings": {"Exceptions": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]}}),
        );
        let pm = policy(
            "p4",
            "PortMapping",
            json!({"Type": "PortMapping", "Settings": {"Protocol": 6, "InternalPort": 80, "ExternalPort": 8080}}),
        );
        assert_eq!(
            policies(&[web, v1, nat, pm]),
            "ID          TYPE          OWNER          HITS   SUMMARY\n\
             allow-web   ACL           endpoint ep1     12   Allow In proto 6 lport 80 priority 100\n\
             block-dns   ACL           network net1      0   Block Out proto 17 raddr 10.0.0.0/8 rport 53\n\
             p3          OutBoundNAT   endpoint ep1      -   {\"Exceptions\":[\"10.0.0.0/8\",\"172.16.0.0/12\",\"192.168.0.0/...\n\
             p4          PortMapping   endpoint ep1      -   {\"ExternalPort\":8080,\"InternalPort\":80,\"Protocol\":6}\n"
        );
        assert_eq!(width(&cut(&"x".repeat(100), SUMMARY_WIDTH)), SUMMARY_WIDTH);
    }

    #[test]
    fn policies_added_one_line_each() {
        let mut net = policy("p2", "QOS", json!({}));
        net.endpoint = None;
        net.network = Some("net1".into());
        assert_eq!(
            policies_added(&[policy("allow-web", "ACL", json!({})), net]),
            "added ACL policy 'allow-web' to endpoint ep1\n\
             added QOS policy 'p2' to network net1\n"
        );
        assert_eq!(policies_added(&[]), "");
    }

    fn step(stage: &str, detail: &str) -> TraceStep {
        TraceStep {
            stage: stage.into(),
            detail: detail.into(),
        }
    }

    #[test]
    fn trace_reads_like_ofproto_trace() {
        let forward = Trace {
            packet: "tcp,src=10.1.0.2,dst=10.1.0.3,sport=1234,dport=80".into(),
            in_port: "ep1".into(),
            steps: vec![
                step("admit", "source 02:15:5d:12:34:56 is the endpoint's"),
                step("fdb", "10.1.0.3 is ep2"),
            ],
            verdict: "forward".into(),
            out_ports: vec!["ep2".into()],
            drop_reason: None,
        };
        assert_eq!(
            trace(&forward),
            "Flow: tcp,src=10.1.0.2,dst=10.1.0.3,sport=1234,dport=80 in_port=ep1\n\
             \n  1. admit: source 02:15:5d:12:34:56 is the endpoint's\n\
             \x20 2. fdb: 10.1.0.3 is ep2\n\
             \nFinal verdict: forward to ep2\n"
        );
        let drop = Trace {
            steps: (0..10)
                .map(|i| step("acl.in", &format!("rule {i}")))
                .collect(),
            verdict: "drop".into(),
            out_ports: vec![],
            drop_reason: Some("acl_blocked".into()),
            ..forward
        };
        let text = trace(&drop);
        assert!(text.contains("\n   1. acl.in: rule 0\n"), "{text}");
        assert!(text.contains("\n  10. acl.in: rule 9\n"), "{text}");
        assert!(
            text.ends_with("\nFinal verdict: drop (acl_blocked)\n"),
            "{text}"
        );
    }

    #[test]
    fn flows_tables() {
        let f = Flows {
            flows: vec![FlowEntry {
                in_port: "ep1".into(),
                out_port: "ep2".into(),
                flow: "tcp 10.0.0.2:40000 -> 10.0.0.3:80".into(),
                action: "allow".into(),
                idle_ms: 1250,
                hits: 3,
            }],
            connections: vec![
                Connection {
                    port: "ep1".into(),
                    protocol: "tcp".into(),
                    source: "10.0.0.2".into(),
                    destination: "10.0.0.3".into(),
                    source_port: 40000,
                    destination_port: 80,
                    state: "established".into(),
                    idle_ms: 50,
                    packets_original: 5,
                    packets_reply: 4,
                    ..Connection::default()
                },
                Connection {
                    port: "ep2".into(),
                    protocol: "icmp6".into(),
                    source: "fd00::2".into(),
                    destination: "fd00::3".into(),
                    source_port: 0,
                    destination_port: 0,
                    state: "unreplied".into(),
                    idle_ms: 12000,
                    packets_original: 1,
                    packets_reply: 0,
                    ..Connection::default()
                },
            ],
        };
        assert_eq!(
            flows(&f),
            "Flow cache\n\
             IN    OUT   FLOW                                ACTION   HITS   IDLE\n\
             ep1   ep2   tcp 10.0.0.2:40000 -> 10.0.0.3:80   allow       3   1.2s\n\
             \n\
             Connections\n\
             PORT   PROTO   SOURCE           DESTINATION   STATE         PKTS-O/R    IDLE   TRANSLATED REPLY\n\
             ep1    tcp     10.0.0.2:40000   10.0.0.3:80   established        5/4    0.0s   -\n\
             ep2    icmp6   fd00::2          fd00::3       unreplied          1/0   12.0s   -\n"
        );
        assert_eq!(socket_address("udp", "fd00::2", 53), "[fd00::2]:53");
        assert_eq!(
            flows(&Flows::default()),
            "Flow cache\nIN   OUT   FLOW   ACTION   HITS   IDLE\n\nConnections\n\
             PORT   PROTO   SOURCE   DESTINATION   STATE   PKTS-O/R   IDLE   TRANSLATED REPLY\n"
        );
    }

    #[test]
    fn created_line_counts_policies() {
        let mut ep = endpoint();
        ep.policy_count = 1;
        assert!(endpoint_created(&ep).ends_with(" in ns1 eth0, 1 policy"));
        ep.policy_count = 2;
        assert!(endpoint_created(&ep).ends_with(" in ns1 eth0, 2 policies"));
    }
}
