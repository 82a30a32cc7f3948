//! Turns daemon replies into what `vswitchctl` prints: aligned tables for
//! people, one-line summaries for create commands.

use vswitch_api::{Endpoint, EndpointState, FdbEntry, Network, Port, PortStats};

/// Blank columns between table cells, as `docker ls` does.
const GAP: &str = "   ";
/// Shown in a cell that has no value.
const NONE: &str = "-";

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

/// The counters table; with `per_reason`, each port's drops by reason follow.
pub fn stats(stats: &[PortStats], per_reason: bool) -> String {
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
    if per_reason {
        for s in stats {
            let mut reasons = Table::new(&[("DROP-REASON", Left), ("COUNT", Right)]);
            for (reason, count) in &s.drops {
                reasons.row(vec![reason.clone(), count.to_string()]);
            }
            out.push('\n');
            out.push_str(&reasons.render());
        }
    }
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
    format!(
        "created endpoint {}: {} in {} {}",
        ep.name,
        facts.join(" "),
        ep.netns,
        ep.ifname
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use vswitch_api::{MacPool, PortKind, Subnet};

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
            endpoints: vec!["ep1".into(), "ep2".into()],
            state: vswitch_api::NetworkState::Up,
        }
    }

    pub(crate) fn endpoint() -> Endpoint {
        Endpoint {
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
            state: EndpointState::Attached,
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
        let text = endpoints(&[endpoint(), gone]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("NAME   NETWORK   NETNS   IFNAME   MAC"));
        assert!(lines[1].ends_with("10.1.0.2/24                attached"));
        assert!(lines[2].ends_with("10.1.0.2/24,fd00:1::2/64   detached (namespace gone)"));
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
            port: "ep1".into(),
            network: "net1".into(),
            rx_packets: 10,
            rx_bytes: 1000,
            tx_packets: 5,
            tx_bytes: 500,
            rx_partial_checksums: 0,
            drops: BTreeMap::from([("spoofed-mac".into(), 3), ("no-route".into(), 0)]),
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
                 spoofed-mac       3\n"
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
}
