//! `trace` and `flows dump`: a packet described in Open vSwitch's flow
//! syntax is built into a real frame and run through the datapath's own
//! decide code (dry: nothing learned, tracked or counted); the flow caches
//! and connection table are shown with port names.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};

use super::errors::{internal, invalid};
use super::state::EndpointRecord;
use super::{ApiResult, Controller};
use crate::api::{self, ApiError, ErrorKind, WireMac};
use crate::datapath::PortId;
use crate::pipeline::conntrack::{State, TcpState};
use crate::pipeline::{FlowKey, Verdict};
use crate::wire::MacAddr;

/// The protocols a traced packet may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
    Icmp,
}

/// A packet as `--packet` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spec {
    proto: Proto,
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    sport: u16,
    dport: u16,
    /// TCP flags byte (default SYN).
    flags: u8,
}

const SPEC_HELP: &str = "expected PROTO,src=IP,dst=IP[,sport=N][,dport=N][,flags=syn+ack] with PROTO tcp, udp, icmp or icmp6";

fn parse_spec(text: &str) -> ApiResult<Spec> {
    let mut parts = text.split(',').map(str::trim);
    let proto = match parts.next().map(str::to_ascii_lowercase).as_deref() {
        Some("tcp") | Some("tcp6") => Proto::Tcp,
        Some("udp") | Some("udp6") => Proto::Udp,
        Some("icmp") | Some("icmp6") | Some("icmpv6") => Proto::Icmp,
        other => {
            return Err(invalid(
                "packet",
                format!("'{}' is not a protocol; {SPEC_HELP}", other.unwrap_or("")),
            ))
        }
    };
    let mut spec = Spec {
        proto,
        src: None,
        dst: None,
        sport: 0,
        dport: 0,
        flags: 0x02,
    };
    for part in parts {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| invalid("packet", format!("'{part}' is not KEY=VALUE; {SPEC_HELP}")))?;
        let ip = |v: &str| {
            v.parse::<IpAddr>()
                .map_err(|_| invalid("packet", format!("{key}: '{v}' is not an IP address")))
        };
        let port = |v: &str| {
            v.parse::<u16>()
                .map_err(|_| invalid("packet", format!("{key}: '{v}' is not a port (0-65535)")))
        };
        match key.to_ascii_lowercase().as_str() {
            "src" | "nw_src" | "ipv6_src" => spec.src = Some(ip(value)?),
            "dst" | "nw_dst" | "ipv6_dst" => spec.dst = Some(ip(value)?),
            "sport" | "tp_src" => spec.sport = port(value)?,
            "dport" | "tp_dst" => spec.dport = port(value)?,
            "flags" | "tcp_flags" if proto == Proto::Tcp => {
                let mut bits = 0;
                for f in value.split('+') {
                    bits |= match f.to_ascii_lowercase().as_str() {
                        "fin" => 0x01,
                        "syn" => 0x02,
                        "rst" => 0x04,
                        "psh" => 0x08,
                        "ack" => 0x10,
                        _ => {
                            return Err(invalid(
                                "packet",
                                format!("flags: '{f}' is not a TCP flag (fin, syn, rst, psh, ack)"),
                            ))
                        }
                    };
                }
                spec.flags = bits;
            }
            _ => {
                return Err(invalid(
                    "packet",
                    format!("unknown field '{key}'; {SPEC_HELP}"),
                ))
            }
        }
    }
    if proto == Proto::Icmp && (spec.sport != 0 || spec.dport != 0) {
        return Err(invalid("packet", "ICMP has no ports"));
    }
    if let (Some(s), Some(d)) = (spec.src, spec.dst) {
        if s.is_ipv4() != d.is_ipv4() {
            return Err(invalid(
                "packet",
                "src and dst are of different address families",
            ));
        }
    }
    Ok(spec)
}

/// An Ethernet frame carrying `spec` between the given addresses.
fn build_frame(spec: &Spec, src: IpAddr, dst: IpAddr, smac: MacAddr, dmac: MacAddr) -> Vec<u8> {
    let l4: Vec<u8> = match spec.proto {
        Proto::Tcp => {
            let mut t = spec.sport.to_be_bytes().to_vec();
            t.extend_from_slice(&spec.dport.to_be_bytes());
            t.extend_from_slice(&[
                0, 0, 0, 1, 0, 0, 0, 0, 0x50, spec.flags, 0xff, 0xff, 0, 0, 0, 0,
            ]);
            t
        }
        Proto::Udp => {
            let mut u = spec.sport.to_be_bytes().to_vec();
            u.extend_from_slice(&spec.dport.to_be_bytes());
            u.extend_from_slice(&[0, 8, 0, 0]);
            u
        }
        Proto::Icmp => {
            let kind = if src.is_ipv4() { 8 } else { 128 };
            vec![kind, 0, 0, 0, 0, 1, 0, 1]
        }
    };
    let proto = match (spec.proto, src.is_ipv4()) {
        (Proto::Tcp, _) => 6,
        (Proto::Udp, _) => 17,
        (Proto::Icmp, true) => 1,
        (Proto::Icmp, false) => 58,
    };
    let mut f = dmac.0.to_vec();
    f.extend_from_slice(&smac.0);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&[0x08, 0x00]);
            let len = (20 + l4.len()) as u16;
            f.extend_from_slice(&[
                0x45,
                0,
                (len >> 8) as u8,
                len as u8,
                0,
                1,
                0x40,
                0,
                64,
                proto,
                0,
                0,
            ]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        _ => {
            let s = ipv6_of(src);
            let d = ipv6_of(dst);
            f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
            f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            f.extend_from_slice(&[proto, 64]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
    }
    f.extend_from_slice(&l4);
    f
}

fn ipv6_of(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V6(v6) => v6,
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
    }
}

/// A flow key's addresses, as `flows dump` shows them.
fn key_text(k: &FlowKey) -> String {
    let ip = |b: [u8; 16]| {
        let v6 = Ipv6Addr::from(b);
        match v6.to_ipv4_mapped() {
            Some(v4) if k.family == 4 => IpAddr::V4(v4),
            _ => IpAddr::V6(v6),
        }
    };
    let proto = proto_name(k.proto);
    if matches!(k.proto, 6 | 17) {
        format!(
            "{proto} {} -> {}",
            sock(ip(k.src_ip), k.src_port),
            sock(ip(k.dst_ip), k.dst_port)
        )
    } else {
        format!("{proto} {} -> {}", ip(k.src_ip), ip(k.dst_ip))
    }
}

fn sock(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmp6".into(),
        n => format!("ip proto {n}"),
    }
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Tcp(TcpState::SynSent) => "syn_sent",
        State::Tcp(TcpState::SynReceived) => "syn_received",
        State::Tcp(TcpState::Established) => "established",
        State::Tcp(TcpState::Closing) => "closing",
        State::Tcp(TcpState::TimeWait) => "time_wait",
        State::Tcp(TcpState::Closed) => "closed",
        State::Datagram { replied: false } => "unreplied",
        State::Datagram { replied: true } => "replied",
    }
}

/// `port N` in a trace step becomes the port's name.
fn name_ports(text: &str, names: &HashMap<PortId, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("port ") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 5..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        match after[..digits]
            .parse::<PortId>()
            .ok()
            .and_then(|id| names.get(&id))
        {
            Some(name) => out.push_str(name),
            None => out.push_str(&rest[at..at + 5 + digits]),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

impl Controller {
    /// Every port's datapath id and name.
    fn port_names(&self) -> HashMap<PortId, String> {
        self.port_table()
            .into_iter()
            .map(|(p, _)| (p.id, p.name))
            .collect()
    }

    fn attached_port(&self, ep: &EndpointRecord) -> ApiResult<PortId> {
        self.endpoints
            .get(&ep.id)
            .and_then(|rt| rt.port.as_ref())
            .map(|p| p.id)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorKind::Conflict,
                    Some("endpoint"),
                    format!(
                        "endpoint '{}' has no switch port (detached, or on a none network)",
                        ep.name
                    ),
                )
            })
    }

    pub(super) fn trace(&self, req: api::TraceRequest) -> ApiResult<api::Trace> {
        let ep = self
            .state
            .endpoint(&req.endpoint)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorKind::NotFound,
                    Some("endpoint"),
                    format!("no endpoint named '{}'", req.endpoint),
                )
            })?
            .clone();
        let spec = parse_spec(&req.packet)?;
        let net = self
            .state
            .network_by_id(&ep.network_id)
            .ok_or_else(|| internal("endpoint without network"))?
            .clone();
        let ep_port = self.attached_port(&ep)?;
        let v4 = match (spec.src, spec.dst) {
            (Some(ip), _) | (_, Some(ip)) => ip.is_ipv4(),
            _ => ep.ipv4.is_some(),
        };
        let own: Option<IpAddr> = if v4 {
            ep.ipv4.map(IpAddr::V4)
        } else {
            ep.ipv6.map(IpAddr::V6)
        };
        let need = |ip: Option<IpAddr>, field: &str| {
            ip.ok_or_else(|| {
                invalid(
                    "packet",
                    format!("give {field}=: the endpoint has no address of that family"),
                )
            })
        };
        let peer_of = |ip: IpAddr| {
            self.state
                .endpoints_of(&net.id)
                .find(|e| e.ipv4.map(IpAddr::V4) == Some(ip) || e.ipv6.map(IpAddr::V6) == Some(ip))
        };
        let host = net.host_mac.zip(net.host_port_id);
        let uplink = net
            .uplink_port_id
            .filter(|_| net.parsed.interface.is_some());
        let uplink_mac = net
            .parsed
            .interface
            .as_ref()
            .and_then(|i| self.uplinks.get(i))
            .map(|u| u.mac);
        // A made-up host on the wire, for packets from outside.
        let wire_host = MacAddr([0x02, 0, 0, 0, 0xfe, 0x01]);
        let (in_port, src, dst, smac, dmac) = if req.inbound {
            let dst = spec.dst.or(own);
            let dst = need(dst, "dst")?;
            let src = need(spec.src, "src")?;
            let (port, smac, dmac) = match peer_of(src) {
                Some(peer) => (self.attached_port(peer)?, peer.mac, ep.mac),
                None => match (host, uplink) {
                    (_, Some(id)) => {
                        let dmac = match net.driver.wire_mac() {
                            Some(WireMac::Uplink | WireMac::Translated) => {
                                uplink_mac.unwrap_or(ep.mac)
                            }
                            _ => ep.mac,
                        };
                        (id, wire_host, dmac)
                    }
                    (Some((mac, id)), None) => (id, mac, ep.mac),
                    (None, None) => {
                        return Err(invalid(
                            "packet",
                            format!("src {src} is no endpoint of network '{}', which has no host port or uplink", net.name),
                        ))
                    }
                },
            };
            (port, src, dst, smac, dmac)
        } else {
            let src = need(spec.src.or(own), "src")?;
            let dst = need(spec.dst, "dst")?;
            let dmac = match peer_of(dst) {
                Some(peer) => peer.mac,
                None => match host {
                    Some((mac, _)) => mac,
                    None => MacAddr::BROADCAST,
                },
            };
            (ep_port, src, dst, ep.mac, dmac)
        };
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(invalid(
                "packet",
                "src and dst are of different address families",
            ));
        }
        let frame = build_frame(&spec, src, dst, smac, dmac);
        let result = self
            .datapath
            .trace(in_port, frame)
            .map_err(internal)?
            .ok_or_else(|| internal("the port is not in the datapath"))?;
        let names = self.port_names();
        let name = |id: PortId| names.get(&id).cloned().unwrap_or_else(|| format!("#{id}"));
        let proto = proto_name(match (spec.proto, src.is_ipv4()) {
            (Proto::Tcp, _) => 6,
            (Proto::Udp, _) => 17,
            (Proto::Icmp, true) => 1,
            (Proto::Icmp, false) => 58,
        });
        let packet = if spec.proto == Proto::Icmp {
            format!("{proto} {src} -> {dst} echo request, {smac} -> {dmac}")
        } else {
            format!(
                "{proto} {} -> {}, {smac} -> {dmac}",
                sock(src, spec.sport),
                sock(dst, spec.dport)
            )
        };
        let (verdict, drop_reason) = match result.decision.verdict {
            Verdict::Forward { .. } => ("forward", None),
            Verdict::Flood { .. } => ("flood", None),
            Verdict::Reply { .. } => ("reply", None),
            Verdict::Drop(r) => ("drop", Some(r.name().to_owned())),
        };
        Ok(api::Trace {
            packet,
            in_port: name(in_port),
            steps: result
                .steps
                .into_iter()
                .map(|(stage, detail)| api::TraceStep {
                    stage: stage.to_owned(),
                    detail: name_ports(&detail, &names),
                })
                .collect(),
            verdict: verdict.to_owned(),
            out_ports: result.out_ports.into_iter().map(name).collect(),
            drop_reason,
        })
    }

    pub(super) fn flows(&self, endpoint: Option<&str>) -> ApiResult<api::Flows> {
        let port = match endpoint {
            None => None,
            Some(name) => {
                let ep = self.state.endpoint(name).ok_or_else(|| {
                    ApiError::new(
                        ErrorKind::NotFound,
                        Some("endpoint"),
                        format!("no endpoint named '{name}'"),
                    )
                })?;
                Some(self.attached_port(ep)?)
            }
        };
        let (flows, conns) = self.datapath.flows(port).map_err(internal)?;
        let names = self.port_names();
        let name = |id: PortId| names.get(&id).cloned().unwrap_or_else(|| format!("#{id}"));
        // Rule names, from the layers each endpoint port holds.
        let rule = |port: Option<PortId>, rule: Option<u32>| -> Option<String> {
            let port = port?;
            let rule = rule? as usize;
            let handle = self
                .endpoints
                .values()
                .filter_map(|rt| rt.port.as_ref())
                .find(|p| p.id == port)?;
            handle.layers.names.get(rule).map(|(id, _)| id.clone())
        };
        let mut flows: Vec<api::FlowEntry> = flows
            .into_iter()
            .map(|f| {
                let mut action = if f.outcome.allowed { "allow" } else { "block" }.to_owned();
                if let Some(r) = rule(Some(f.in_port), f.outcome.out_rule) {
                    action.push_str(&format!(", out: '{r}'"));
                }
                if let Some(r) = rule(f.outcome.out_port, f.outcome.in_rule) {
                    action.push_str(&format!(", in: '{r}'"));
                }
                api::FlowEntry {
                    in_port: name(f.in_port),
                    out_port: f.outcome.out_port.map_or("flood".to_owned(), name),
                    flow: key_text(&f.key),
                    action,
                    idle_ms: f.idle.as_millis() as u64,
                    hits: f.outcome.hits,
                }
            })
            .collect();
        flows.sort_by(|a, b| (&a.in_port, &a.flow).cmp(&(&b.in_port, &b.flow)));
        let mut connections: Vec<api::Connection> = conns
            .into_iter()
            .map(|c| api::Connection {
                port: name(c.port),
                protocol: proto_name(c.original.proto),
                source: c.original.src.to_string(),
                destination: c.original.dst.to_string(),
                source_port: c.original.src_port,
                destination_port: c.original.dst_port,
                state: state_name(c.state).to_owned(),
                idle_ms: c.idle.as_millis() as u64,
                packets_original: c.packets[0],
                packets_reply: c.packets[1],
                reply_source: c.reply.src.to_string(),
                reply_destination: c.reply.dst.to_string(),
                reply_source_port: c.reply.src_port,
                reply_destination_port: c.reply.dst_port,
                translated: c.reply != c.original.reversed(),
            })
            .collect();
        connections.sort_by_key(|c| c.idle_ms);
        Ok(api::Flows { flows, connections })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_specs() {
        let s = parse_spec("tcp,src=10.0.0.2,dst=10.0.0.3,sport=1234,dport=80").unwrap();
        assert_eq!(
            (s.proto, s.sport, s.dport, s.flags),
            (Proto::Tcp, 1234, 80, 0x02)
        );
        let s = parse_spec("tcp,dst=10.0.0.3,dport=80,flags=syn+ack").unwrap();
        assert_eq!(s.flags, 0x12);
        assert!(parse_spec("icmp6,dst=fd00::1").is_ok());
        for bad in [
            "sctp,dst=10.0.0.1",
            "tcp,dst=10.0.0.300",
            "tcp,dport=70000",
            "tcp,colour=red",
            "icmp,dport=1",
            "tcp,src=10.0.0.1,dst=fd00::1",
            "tcp,flags=xmas",
            "tcp,dst",
        ] {
            let e = parse_spec(bad).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("packet"), "{bad}");
        }
    }

    #[test]
    fn frames_classify_as_described() {
        let s = parse_spec("udp,sport=5000,dport=53").unwrap();
        let f = build_frame(
            &s,
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
            MacAddr([2, 0, 0, 0, 0, 1]),
            MacAddr([2, 0, 0, 0, 0, 2]),
        );
        let m = crate::pipeline::classify(&f).unwrap();
        let k = m.flow_key(&f, 1, 1, crate::pipeline::Direction::FromVnic);
        assert_eq!((k.proto, k.src_port, k.dst_port), (17, 5000, 53));
        assert_eq!(key_text(&k), "udp 10.0.0.2:5000 -> 10.0.0.3:53");
        let f6 = build_frame(
            &parse_spec("icmp6").unwrap(),
            "fd00::2".parse().unwrap(),
            "fd00::3".parse().unwrap(),
            MacAddr([2, 0, 0, 0, 0, 1]),
            MacAddr([2, 0, 0, 0, 0, 2]),
        );
        let m = crate::pipeline::classify(&f6).unwrap();
        assert_eq!((m.family, m.proto), (6, 58));
    }

    #[test]
    fn port_numbers_become_names() {
        let names = HashMap::from([(7, "ep1".to_owned()), (12, "ep2".to_owned())]);
        assert_eq!(
            name_ports("port 7: rule 'x'; on port 12, port 9", &names),
            "ep1: rule 'x'; on ep2, port 9"
        );
    }
}
