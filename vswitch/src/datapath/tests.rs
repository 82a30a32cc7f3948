//! The forwarding core end to end (classify -> decide -> execute) through
//! in-memory ports: no root, no devices, no sleeping. The worker is the
//! real one, minus its epoll wait: each test pushes frames into a port's
//! receive queue, polls the port as the loop would, and reads what every
//! port sent.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use super::*;
use crate::fdb::FdbConfig;
use crate::pipeline::Guards;
use crate::policy::{parse_document, Acl, AclAction, Policy};
use crate::wire::{ArpOperation, ArpPacket, ArpRepr, EthernetFrame};

type Queue = Arc<Mutex<VecDeque<Vec<u8>>>>;

/// A [`PortIo`] over two queues: frames to receive, frames sent.
struct MemPort {
    /// Only there so the port has a descriptor epoll accepts.
    fd: EventFd,
    rx: Queue,
    tx: Queue,
}

impl PortIo for MemPort {
    fn raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.raw_fd()
    }

    fn recv_batch(&mut self, batch: &mut [Packet]) -> io::Result<usize> {
        let mut rx = self.rx.lock().unwrap();
        let mut n = 0;
        while n < batch.len() {
            let Some(frame) = rx.pop_front() else { break };
            batch[n].fill(&frame);
            n += 1;
        }
        Ok(n)
    }

    fn send(&mut self, pkt: &Packet) -> io::Result<()> {
        self.tx.lock().unwrap().push_back(pkt.frame().to_vec());
        Ok(())
    }
}

/// The test's side of a port.
#[derive(Clone)]
struct Wire {
    rx: Queue,
    tx: Queue,
    counters: Arc<PortCounters>,
}

impl Wire {
    fn new() -> (Wire, MemPort) {
        let wire = Wire {
            rx: Queue::default(),
            tx: Queue::default(),
            counters: Arc::new(PortCounters::default()),
        };
        let port = MemPort {
            fd: EventFd::new().expect("eventfd"),
            rx: wire.rx.clone(),
            tx: wire.tx.clone(),
        };
        (wire, port)
    }

    /// Everything the port sent since the last call.
    fn sent(&self) -> Vec<Vec<u8>> {
        self.tx.lock().unwrap().drain(..).collect()
    }

    fn drops(&self, reason: DropReason) -> u64 {
        self.counters.drops(reason)
    }
}

struct Switch {
    worker: Worker,
    _calls: Sender<Call>,
    now: Instant,
}

impl Switch {
    fn new() -> Switch {
        let (tx, rx) = mpsc::channel();
        let wake = Arc::new(EventFd::new().expect("eventfd"));
        Switch {
            worker: Worker::new(Epoll::new().expect("epoll"), wake, rx, Limits::default()),
            _calls: tx,
            now: Instant::now(),
        }
    }

    fn apply(&mut self, cmd: Command) {
        if let Outcome::Failed(e) = self.worker.apply(cmd) {
            panic!("{e}");
        }
    }

    fn network(&mut self, net: NetId) {
        self.apply(Command::AddNetwork {
            net,
            cfg: NetworkConfig {
                police_local: true,
                ..NetworkConfig::default()
            },
        });
    }

    fn vnic(&mut self, id: PortId, net: NetId, opts: Vnic) -> Wire {
        let (wire, io) = Wire::new();
        self.apply(Command::AddPort(PortSpec {
            id,
            net,
            kind: PortKind::Local(Box::new(io)),
            counters: wire.counters.clone(),
            security: opts.security,
            gso: false,
            addrs: opts.addrs,
            mac: opts.mac,
            layers: opts.layers,
            kernel: None,
        }));
        wire
    }

    /// A trunk with one queue, and the wire side of it.
    fn trunk(&mut self, id: TrunkId) -> Wire {
        let (wire, io) = Wire::new();
        self.apply(Command::AddTrunk(TrunkSpec {
            id,
            queues: vec![Box::new(io)],
            super_frames: None,
            counters: wire.counters.clone(),
        }));
        wire
    }

    /// `net`'s uplink port on `trunk`; its counters.
    fn uplink(
        &mut self,
        id: PortId,
        net: NetId,
        trunk: TrunkId,
        vlan: u16,
        l2bridge: Option<MacAddr>,
    ) -> Arc<PortCounters> {
        let counters = Arc::new(PortCounters::default());
        self.apply(Command::AddPort(PortSpec {
            id,
            net,
            kind: PortKind::Uplink {
                trunk,
                vlan,
                l2bridge,
            },
            counters: counters.clone(),
            security: None,
            gso: false,
            addrs: Vec::new(),
            mac: None,
            layers: Layers::default(),
            kernel: None,
        }));
        counters
    }

    /// `frame` arrives on vNIC `port`.
    fn send(&mut self, port: PortId, wire: &Wire, frame: Vec<u8>) {
        wire.rx.lock().unwrap().push_back(frame);
        self.worker.poll_port(port, false, self.now);
        self.worker.tables.flush();
    }

    /// `frame` arrives from the wire on `trunk`.
    fn send_wire(&mut self, trunk: TrunkId, wire: &Wire, frame: Vec<u8>) {
        wire.rx.lock().unwrap().push_back(frame);
        self.worker.poll_trunk(trunk, 0, false, self.now);
        self.worker.tables.flush();
    }
}

#[derive(Default)]
struct Vnic {
    security: Option<PortSecurity>,
    addrs: Vec<(IpAddr, MacAddr)>,
    mac: Option<MacAddr>,
    layers: Layers,
}

fn mac(last: u8) -> MacAddr {
    MacAddr([0x02, 0x15, 0x5d, 0, 0, last])
}

const UPLINK_MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
const OUTSIDE: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 9]);

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 50, last)
}

/// An IPv4/UDP frame.
fn udp(dst: MacAddr, src: MacAddr, src_ip: Ipv4Addr, dst_ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&[0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&src_ip.octets());
    f.extend_from_slice(&dst_ip.octets());
    f.extend_from_slice(&[0x30, 0x39, 0, 53, 0, 8, 0, 0]);
    f
}

fn broadcast(src: MacAddr) -> Vec<u8> {
    udp(MacAddr::BROADCAST, src, ip(1), Ipv4Addr::BROADCAST)
}

fn arp_request(src: MacAddr, src_ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&MacAddr::BROADCAST.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&src_ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

fn src_dst(frame: &[u8]) -> (MacAddr, MacAddr) {
    let eth = EthernetFrame::new_checked(frame).unwrap();
    (eth.src(), eth.dst())
}

#[test]
fn broadcast_floods_then_unicast_follows_what_was_learned() {
    let mut sw = Switch::new();
    sw.network(1);
    let a = sw.vnic(1, 1, Vnic::default());
    let b = sw.vnic(2, 1, Vnic::default());
    let c = sw.vnic(3, 1, Vnic::default());
    sw.send(1, &a, broadcast(mac(1)));
    assert_eq!(b.sent().len(), 1);
    assert_eq!(c.sent().len(), 1);
    assert!(a.sent().is_empty(), "never back out of the ingress port");
    // Unknown unicast floods too.
    let to_unknown = udp(mac(9), mac(2), ip(2), ip(9));
    sw.send(2, &b, to_unknown.clone());
    assert_eq!(a.sent(), vec![to_unknown.clone()]);
    assert_eq!(c.sent(), vec![to_unknown]);
    // mac(1) was learned on port 1: unicast to it goes there only, unchanged.
    let to_a = udp(mac(1), mac(3), ip(3), ip(1));
    sw.send(3, &c, to_a.clone());
    assert_eq!(a.sent(), vec![to_a]);
    assert!(b.sent().is_empty());
    let entries = sw.worker.tables.pipeline.fdb_entries(1, sw.now);
    assert_eq!(entries.len(), 3);
}

#[test]
fn networks_share_nothing() {
    let mut sw = Switch::new();
    sw.network(1);
    sw.network(2);
    let a = sw.vnic(1, 1, Vnic::default());
    let b = sw.vnic(2, 1, Vnic::default());
    let x = sw.vnic(3, 2, Vnic::default());
    let y = sw.vnic(4, 2, Vnic::default());
    // x's MAC is learned in network 2.
    sw.send(3, &x, broadcast(mac(3)));
    assert_eq!(y.sent().len(), 1);
    assert!(a.sent().is_empty() && b.sent().is_empty());
    // Unicast to it from network 1 floods within network 1 only.
    sw.send(1, &a, udp(mac(3), mac(1), ip(1), ip(3)));
    assert_eq!(b.sent().len(), 1);
    assert!(x.sent().is_empty() && y.sent().is_empty());
}

#[test]
fn hairpin_is_dropped_and_counted() {
    let mut sw = Switch::new();
    sw.network(1);
    let a = sw.vnic(1, 1, Vnic::default());
    let b = sw.vnic(2, 1, Vnic::default());
    sw.send(1, &a, broadcast(mac(7)));
    b.sent();
    // A trusted port sends to a MAC it taught the switch itself.
    sw.send(1, &a, udp(mac(7), mac(1), ip(1), ip(7)));
    assert!(a.sent().is_empty() && b.sent().is_empty());
    assert_eq!(a.drops(DropReason::Hairpin), 1);
}

#[test]
fn a_vnics_mac_is_known_without_learning_and_is_its_own() {
    let mut sw = Switch::new();
    sw.network(1);
    let a = sw.vnic(
        1,
        1,
        Vnic {
            mac: Some(mac(1)),
            ..Vnic::default()
        },
    );
    let b = sw.vnic(2, 1, Vnic::default());
    let c = sw.vnic(3, 1, Vnic::default());
    // A quiet vNIC gets its unicast without a flood.
    let to_a = udp(mac(1), mac(2), ip(2), ip(1));
    sw.send(2, &b, to_a.clone());
    assert_eq!(a.sent(), vec![to_a]);
    assert!(c.sent().is_empty());
    // Nobody else may send from its MAC.
    sw.send(3, &c, broadcast(mac(1)));
    assert!(a.sent().is_empty() && b.sent().is_empty());
    assert_eq!(c.drops(DropReason::MacSpoofing), 1);
}

#[test]
fn port_security_drops_are_counted() {
    let mut sw = Switch::new();
    sw.network(1);
    let sec = PortSecurity::new(mac(1), Some(ip(1)), None);
    let a = sw.vnic(
        1,
        1,
        Vnic {
            security: Some(sec),
            ..Vnic::default()
        },
    );
    let b = sw.vnic(2, 1, Vnic::default());
    sw.send(1, &a, udp(MacAddr::BROADCAST, mac(5), ip(1), ip(2)));
    sw.send(1, &a, udp(MacAddr::BROADCAST, mac(1), ip(5), ip(2)));
    let mut tagged = broadcast(mac(1));
    tagged.splice(12..12, [0x81, 0x00, 0, 5]);
    sw.send(1, &a, tagged);
    sw.send(1, &a, vec![0; 10]);
    assert!(b.sent().is_empty());
    assert_eq!(a.drops(DropReason::MacSpoofing), 1);
    assert_eq!(a.drops(DropReason::IpSpoofing), 1);
    assert_eq!(a.drops(DropReason::VlanTagged), 1);
    assert_eq!(a.drops(DropReason::Malformed), 1);
    // Its own addresses pass.
    sw.send(1, &a, udp(MacAddr::BROADCAST, mac(1), ip(1), ip(2)));
    assert_eq!(b.sent().len(), 1);
    assert_eq!(PortCounters::get(&a.counters.rx_packets), 5);
}

#[test]
fn uplink_tags_on_the_way_out_and_untags_on_the_way_in() {
    let mut sw = Switch::new();
    sw.network(1);
    let wire = sw.trunk(10);
    let up = sw.uplink(100, 1, 10, 5, None);
    let a = sw.vnic(1, 1, Vnic::default());
    let out = broadcast(mac(1));
    sw.send(1, &a, out.clone());
    let sent = wire.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(&sent[0][12..16], &[0x81, 0x00, 0, 5]);
    assert_eq!(&sent[0][16..], &out[12..]);
    assert_eq!(PortCounters::get(&up.tx_packets), 1);
    // From the wire, tagged 5: to the vNIC untagged, the sender learned.
    let mut back = udp(mac(1), OUTSIDE, ip(9), ip(1));
    let untagged = back.clone();
    back.splice(12..12, [0x81, 0x00, 0, 5]);
    sw.send_wire(10, &wire, back);
    assert_eq!(a.sent(), vec![untagged]);
    // Unicast to the outside host now goes to the wire only, tagged.
    sw.send(1, &a, udp(OUTSIDE, mac(1), ip(1), ip(9)));
    let sent = wire.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(&sent[0][12..16], &[0x81, 0x00, 0, 5]);
    // A VLAN no network uses is dropped at the trunk.
    let mut other = udp(mac(1), OUTSIDE, ip(9), ip(1));
    other.splice(12..12, [0x81, 0x00, 0, 6]);
    sw.send_wire(10, &wire, other);
    assert!(a.sent().is_empty());
    assert_eq!(wire.drops(DropReason::UnknownVlan), 1);
}

/// An l2bridge network: endpoint 192.168.50.7 behind the uplink's MAC.
fn l2bridge_switch() -> (Switch, Wire, Wire, Wire) {
    let mut sw = Switch::new();
    sw.network(1);
    let wire = sw.trunk(10);
    sw.uplink(100, 1, 10, 0, Some(UPLINK_MAC));
    let ep = sw.vnic(
        1,
        1,
        Vnic {
            security: Some(PortSecurity::new(mac(7), Some(ip(7)), None)),
            addrs: vec![(IpAddr::V4(ip(7)), mac(7))],
            mac: Some(mac(7)),
            ..Vnic::default()
        },
    );
    let ep2 = sw.vnic(
        2,
        1,
        Vnic {
            security: Some(PortSecurity::new(mac(8), Some(ip(8)), None)),
            addrs: vec![(IpAddr::V4(ip(8)), mac(8))],
            mac: Some(mac(8)),
            ..Vnic::default()
        },
    );
    (sw, wire, ep, ep2)
}

#[test]
fn l2bridge_egress_hides_the_endpoint_mac() {
    let (mut sw, wire, ep, ep2) = l2bridge_switch();
    let out = udp(OUTSIDE, mac(7), ip(7), ip(9));
    sw.send(1, &ep, out.clone());
    let sent = wire.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(src_dst(&sent[0]), (UPLINK_MAC, OUTSIDE));
    assert_eq!(&sent[0][12..], &out[12..]);
    // The other endpoint got the flood untranslated.
    assert_eq!(ep2.sent(), vec![out]);
    // An ARP request to the outside announces the uplink's MAC.
    sw.send(1, &ep, arp_request(mac(7), ip(7), ip(9)));
    let sent = wire.sent();
    assert_eq!(sent.len(), 1);
    let eth = EthernetFrame::new_checked(&sent[0][..]).unwrap();
    let arp = ArpPacket::new_checked(eth.payload()).unwrap();
    assert_eq!((eth.src(), arp.sender_hw_addr()), (UPLINK_MAC, UPLINK_MAC));
    assert_eq!(arp.sender_proto_addr(), ip(7));
}

#[test]
fn l2bridge_ingress_delivers_by_ip() {
    let (mut sw, wire, ep, ep2) = l2bridge_switch();
    sw.send_wire(10, &wire, udp(UPLINK_MAC, OUTSIDE, ip(9), ip(7)));
    let got = ep.sent();
    assert_eq!(got.len(), 1);
    assert_eq!(src_dst(&got[0]), (OUTSIDE, mac(7)));
    assert!(ep2.sent().is_empty());
    // To the uplink's MAC but no endpoint's IP: not ours.
    sw.send_wire(10, &wire, udp(UPLINK_MAC, OUTSIDE, ip(9), ip(99)));
    assert!(ep.sent().is_empty() && ep2.sent().is_empty());
    assert_eq!(
        sw.worker.tables.ports[&100]
            .counters
            .drops(DropReason::NotLocal),
        1
    );
}

#[test]
fn l2bridge_answers_arp_for_its_endpoints() {
    let (mut sw, wire, ep, ep2) = l2bridge_switch();
    sw.send_wire(10, &wire, arp_request(OUTSIDE, ip(9), ip(7)));
    assert!(ep.sent().is_empty() && ep2.sent().is_empty());
    let sent = wire.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(src_dst(&sent[0]), (UPLINK_MAC, OUTSIDE));
    let eth = EthernetFrame::new_checked(&sent[0][..]).unwrap();
    let arp = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
    assert_eq!(arp.operation, ArpOperation::Reply);
    assert_eq!((arp.sender_hw, arp.sender_ip), (UPLINK_MAC, ip(7)));
    // An endpoint asking for another endpoint: not a question for the wire.
    sw.send(1, &ep, arp_request(mac(7), ip(7), ip(8)));
    assert_eq!(ep2.sent().len(), 1);
    assert!(wire.sent().is_empty());
}

#[test]
fn learn_refusal_is_counted_but_forwards() {
    let mut sw = Switch::new();
    sw.apply(Command::AddNetwork {
        net: 1,
        cfg: NetworkConfig {
            fdb: FdbConfig {
                max_per_port: 1,
                ..FdbConfig::default()
            },
            ..NetworkConfig::default()
        },
    });
    let a = sw.vnic(1, 1, Vnic::default());
    let b = sw.vnic(2, 1, Vnic::default());
    sw.send(1, &a, broadcast(mac(1)));
    sw.send(1, &a, broadcast(mac(2)));
    assert_eq!(b.sent().len(), 2);
    assert_eq!(a.drops(DropReason::LearnRefused), 1);
}

#[test]
fn removed_ports_leave_no_trace() {
    let mut sw = Switch::new();
    sw.network(1);
    let a = sw.vnic(
        1,
        1,
        Vnic {
            mac: Some(mac(1)),
            ..Vnic::default()
        },
    );
    let b = sw.vnic(2, 1, Vnic::default());
    let c = sw.vnic(3, 1, Vnic::default());
    sw.apply(Command::RemovePort { port: 1 });
    // Its MAC is neither static nor learned: unicast to it floods.
    sw.send(2, &b, udp(mac(1), mac(2), ip(2), ip(1)));
    assert_eq!(c.sent().len(), 1);
    assert!(a.sent().is_empty());
}

// ---- policy layers ----

fn acls(doc: &str) -> Vec<Acl> {
    parse_document(doc)
        .unwrap()
        .into_iter()
        .filter_map(|p| match p {
            Policy::Acl(a) => Some(a),
            _ => None,
        })
        .collect()
}

fn policed(rules: &[Acl], default: AclAction, qos: Option<u64>) -> Layers {
    Layers::new(Guards::ENDPOINT, rules, default, qos)
}

/// A TCP segment between endpoint `from` and `to` (by last byte), with
/// `flags` (0x02 SYN, 0x12 SYN+ACK, 0x10 ACK, 0x04 RST).
fn tcp(from: u8, to: u8, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&mac(to).0);
    f.extend_from_slice(&mac(from).0);
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&ip(from).octets());
    f.extend_from_slice(&ip(to).octets());
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    f
}

fn endpoint(sw: &mut Switch, n: u8, layers: Layers) -> Wire {
    sw.vnic(
        PortId::from(n),
        1,
        Vnic {
            security: Some(PortSecurity::new(mac(n), Some(ip(n)), None)),
            addrs: vec![(IpAddr::V4(ip(n)), mac(n))],
            mac: Some(mac(n)),
            layers,
        },
    )
}

const BLOCK_IN_80: &str = r#"{"Type": "ACL", "Settings": {"Id": "no-web", "Action": "Block",
    "Direction": "In", "Protocols": "6", "LocalPorts": "80", "Priority": 200}}"#;

#[test]
fn acl_blocks_what_it_names_and_counts_the_rule() {
    let mut sw = Switch::new();
    sw.network(1);
    let a = endpoint(&mut sw, 1, Layers::default());
    let layers = policed(&acls(BLOCK_IN_80), AclAction::Allow, None);
    let hits = layers.hits.clone();
    let b = endpoint(&mut sw, 2, layers);
    sw.send(1, &a, tcp(1, 2, 40000, 80, 0x02));
    assert!(b.sent().is_empty());
    assert_eq!(a.drops(DropReason::AclBlocked), 1);
    sw.send(1, &a, tcp(1, 2, 40000, 22, 0x02));
    assert_eq!(b.sent().len(), 1, "another port passes");
    assert_eq!(hits[0].load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn priorities_lower_wins() {
    let doc = format!(
        r#"[{BLOCK_IN_80}, {{"Type": "ACL", "Settings": {{"Action": "Allow", "Direction": "In",
        "Protocols": "6", "LocalPorts": "80", "RemoteAddresses": "192.168.50.0/28", "Priority": 100}}}}]"#
    );
    let mut sw = Switch::new();
    sw.network(1);
    let a = endpoint(&mut sw, 1, Layers::default());
    let c = endpoint(&mut sw, 20, Layers::default());
    let b = endpoint(&mut sw, 2, policed(&acls(&doc), AclAction::Allow, None));
    sw.send(1, &a, tcp(1, 2, 40000, 80, 0x02));
    assert_eq!(b.sent().len(), 1, "the Allow at 100 beats the Block at 200");
    // .20 is outside the /28: only the Block matches.
    sw.send(20, &c, tcp(20, 2, 40000, 80, 0x02));
    assert!(b.sent().is_empty());
}

#[test]
fn stateful_replies_pass_a_block_in() {
    let doc = r#"[{"Type": "ACL", "Settings": {"Action": "Block", "Direction": "In", "Priority": 200}},
        {"Type": "ACL", "Settings": {"Action": "Allow", "Direction": "Out", "Priority": 200}}]"#;
    let mut sw = Switch::new();
    sw.network(1);
    let a = endpoint(&mut sw, 1, Layers::default());
    let b = endpoint(&mut sw, 2, policed(&acls(doc), AclAction::Allow, None));
    // b connects out: its SYN leaves, a's SYN+ACK comes back in.
    sw.send(2, &b, tcp(2, 1, 40000, 22, 0x02));
    assert_eq!(a.sent().len(), 1);
    sw.send(1, &a, tcp(1, 2, 22, 40000, 0x12));
    assert_eq!(
        b.sent().len(),
        1,
        "the reply of an allowed connection passes"
    );
    // a connecting in is blocked.
    sw.send(1, &a, tcp(1, 2, 40001, 22, 0x02));
    assert!(b.sent().is_empty());
    assert_eq!(a.drops(DropReason::AclBlocked), 1);
    let conns = sw.worker.tables.pipeline.connections(None, sw.now);
    assert_eq!(conns.len(), 1);
}

#[test]
fn a_block_added_mid_flow_stops_it_at_the_next_packet() {
    let mut sw = Switch::new();
    sw.network(1);
    let a = endpoint(&mut sw, 1, Layers::default());
    let other = BLOCK_IN_80.replace("\"80\"", "\"9999\"");
    let b = endpoint(&mut sw, 2, policed(&acls(&other), AclAction::Allow, None));
    sw.send(1, &a, tcp(1, 2, 40000, 80, 0x02));
    sw.send(2, &b, tcp(2, 1, 80, 40000, 0x12));
    sw.send(1, &a, tcp(1, 2, 40000, 80, 0x10));
    assert_eq!(b.sent().len(), 2);
    let stats = sw.worker.tables.pipeline.flow_stats();
    let (_, s, len) = stats.iter().find(|(p, _, _)| *p == 1).unwrap();
    assert_eq!(
        (s.hits, s.misses, *len),
        (1, 1, 1),
        "the second packet hit the cache"
    );
    sw.apply(Command::SetLayers {
        port: 2,
        layers: policed(&acls(BLOCK_IN_80), AclAction::Allow, None),
    });
    sw.send(1, &a, tcp(1, 2, 40000, 80, 0x10));
    assert!(b.sent().is_empty(), "the cached Allow is stale");
    assert_eq!(a.drops(DropReason::AclBlocked), 1);
}

#[test]
fn default_block_and_neighbour_discovery() {
    let mut sw = Switch::new();
    sw.network(1);
    let a = endpoint(&mut sw, 1, Layers::default());
    let b = endpoint(&mut sw, 2, policed(&[], AclAction::Block, None));
    sw.send(1, &a, tcp(1, 2, 40000, 80, 0x02));
    assert!(b.sent().is_empty());
    // ARP is not IP: never blocked.
    sw.send(1, &a, arp_request(mac(1), ip(1), ip(2)));
    assert_eq!(b.sent().len(), 1);
}

#[test]
fn l2bridge_same_host_traffic_bypasses_policy_and_l2tunnel_does_not() {
    for police_local in [false, true] {
        let mut sw = Switch::new();
        sw.apply(Command::AddNetwork {
            net: 1,
            cfg: NetworkConfig {
                police_local,
                ..NetworkConfig::default()
            },
        });
        let a = endpoint(&mut sw, 1, Layers::default());
        let b = endpoint(
            &mut sw,
            2,
            policed(&acls(BLOCK_IN_80), AclAction::Allow, None),
        );
        sw.send(1, &a, tcp(1, 2, 40000, 80, 0x02));
        assert_eq!(
            b.sent().len(),
            usize::from(!police_local),
            "police_local {police_local}"
        );
    }
}

#[test]
fn conntrack_at_its_limit_refuses_new_flows_and_keeps_old_ones() {
    let (tx, rx) = mpsc::channel();
    let wake = Arc::new(EventFd::new().expect("eventfd"));
    let limits = Limits {
        global: 100,
        per_port: 2,
    };
    let mut sw = Switch {
        worker: Worker::new(Epoll::new().expect("epoll"), wake, rx, limits),
        _calls: tx,
        now: Instant::now(),
    };
    sw.network(1);
    let allow_out = r#"{"Type": "ACL", "Settings": {"Action": "Allow", "Direction": "Out"}}"#;
    let a = endpoint(
        &mut sw,
        1,
        policed(&acls(allow_out), AclAction::Allow, None),
    );
    let b = endpoint(&mut sw, 2, Layers::default());
    for port in [1000, 1001, 1002] {
        sw.send(1, &a, tcp(1, 2, port, 80, 0x02));
    }
    assert_eq!(b.sent().len(), 2);
    assert_eq!(a.drops(DropReason::ConntrackFull), 1);
    sw.send(1, &a, tcp(1, 2, 1000, 80, 0x10));
    assert_eq!(b.sent().len(), 1, "an established flow goes on");
}

#[test]
fn guards_drop_dhcp_servers_and_count() {
    let mut sw = Switch::new();
    sw.network(1);
    let a = endpoint(&mut sw, 1, Layers::default());
    let b = endpoint(&mut sw, 2, Layers::default());
    let mut offer = udp(MacAddr::BROADCAST, mac(1), ip(1), Ipv4Addr::BROADCAST);
    offer[34..38].copy_from_slice(&[0, 67, 0, 68]);
    // Trusted (default layers): passes. With the endpoint guard: dropped.
    sw.send(1, &a, offer.clone());
    assert_eq!(b.sent().len(), 1);
    sw.apply(Command::SetLayers {
        port: 1,
        layers: policed(&[], AclAction::Allow, None),
    });
    sw.send(1, &a, offer);
    assert!(b.sent().is_empty());
    assert_eq!(a.drops(DropReason::DhcpGuard), 1);
}

#[test]
fn qos_shapes_what_an_endpoint_sends_without_dropping() {
    let mut sw = Switch::new();
    sw.network(1);
    // 100 kB/s: the burst is the 64 KiB minimum (10 ms would be 1 kB).
    let a = endpoint(&mut sw, 1, policed(&[], AclAction::Allow, Some(100_000)));
    let b = endpoint(&mut sw, 2, Layers::default());
    let frame = tcp(1, 2, 1000, 80, 0x10);
    let queued = 2 * 65_536 / frame.len();
    for _ in 0..queued {
        a.rx.lock().unwrap().push_back(frame.clone());
    }
    let poll = |sw: &mut Switch| {
        for _ in 0..queued {
            sw.worker.resume_shaped(sw.now);
            sw.worker.poll_port(1, false, sw.now);
        }
        sw.worker.tables.flush();
    };
    poll(&mut sw);
    // The burst, and at most one batch beyond it, then the port is paused:
    // the rest waits in the endpoint's queue.
    let burst = 65_536 / frame.len();
    let passed = b.sent().len();
    assert!((burst..=burst + SHAPED_BATCH).contains(&passed), "{passed}");
    assert_eq!(a.rx.lock().unwrap().len(), queued - passed);
    assert_eq!(a.drops(DropReason::QosExceeded), 1, "paused once");
    // Half a second later, 50 kB more have gone; nothing was dropped.
    sw.now += Duration::from_millis(500);
    poll(&mut sw);
    let later = b.sent().len();
    let expect = 50_000 / frame.len();
    assert!(
        later.abs_diff(expect) <= SHAPED_BATCH + 1,
        "{later} vs {expect}"
    );
    assert_eq!(a.counters.drops(DropReason::TxFailed), 0);
}

#[test]
fn trace_changes_nothing() {
    let mut sw = Switch::new();
    sw.network(1);
    let a = endpoint(&mut sw, 1, Layers::default());
    let b = endpoint(
        &mut sw,
        2,
        policed(&acls(BLOCK_IN_80), AclAction::Allow, None),
    );
    let f = tcp(1, 2, 40000, 80, 0x02);
    let (d, steps) = sw.worker.tables.pipeline.trace(1, &f, sw.now).unwrap();
    assert_eq!(d.verdict, Verdict::Drop(DropReason::AclBlocked));
    assert!(
        steps
            .iter()
            .any(|(stage, detail)| *stage == "acl.in" && detail.contains("no-web")),
        "{steps:?}"
    );
    assert!(sw.worker.tables.pipeline.fdb_entries(1, sw.now).is_empty());
    assert!(sw.worker.tables.pipeline.flows(None, sw.now).is_empty());
    assert_eq!(a.drops(DropReason::AclBlocked), 0);
    assert!(b.sent().is_empty());
}

// ---- nat ----

const NAT_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const REMOTE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 9);
const GW_MAC: MacAddr = MacAddr([0x02, 0x15, 0x5d, 0, 0, 0xfe]);

fn nat_ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(172, 30, 0, last)
}

fn frame4(dst: MacAddr, src: MacAddr, proto: u8, s: Ipv4Addr, d: Ipv4Addr, l4: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    let len = (20 + l4.len()) as u16;
    f.extend_from_slice(&[
        0x08,
        0x00,
        0x45,
        0,
        (len >> 8) as u8,
        len as u8,
        0,
        0,
        0,
        0,
        64,
        proto,
        0,
        0,
    ]);
    f.extend_from_slice(&s.octets());
    f.extend_from_slice(&d.octets());
    f.extend_from_slice(l4);
    f
}

fn syn(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = sport.to_be_bytes().to_vec();
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t
}

fn l4_ports(f: &[u8]) -> (Ipv4Addr, Ipv4Addr, u16, u16) {
    let ip = |at: usize| Ipv4Addr::new(f[at], f[at + 1], f[at + 2], f[at + 3]);
    let port = |at: usize| u16::from_be_bytes([f[at], f[at + 1]]);
    (ip(26), ip(30), port(34), port(36))
}

/// A nat network: endpoints 172.30.0.2 and .3, a host port with the
/// gateway, an uplink on trunk 10 whose next hop is already known.
fn nat_switch(
    pool: std::ops::RangeInclusive<u16>,
    mappings: Vec<crate::pipeline::nat::Mapping>,
) -> (Switch, Wire, Wire, Wire) {
    let mut sw = Switch::new();
    sw.network(1);
    let wire = sw.trunk(10);
    sw.uplink(100, 1, 10, 0, None);
    let _host = sw.vnic(
        50,
        1,
        Vnic {
            mac: Some(GW_MAC),
            ..Vnic::default()
        },
    );
    let ep = |sw: &mut Switch, n: u8| {
        sw.vnic(
            PortId::from(n),
            1,
            Vnic {
                security: Some(PortSecurity::new(mac(n), Some(nat_ip(n)), None)),
                addrs: vec![(IpAddr::V4(nat_ip(n)), mac(n))],
                mac: Some(mac(n)),
                ..Vnic::default()
            },
        )
    };
    let a = ep(&mut sw, 2);
    let b = ep(&mut sw, 3);
    let cfg = crate::pipeline::nat::NatConfig {
        addr: NAT_ADDR,
        uplink_mac: UPLINK_MAC,
        uplink_ifindex: 0,
        gateway: nat_ip(1),
        gateway_mac: Some(GW_MAC),
        sources: None,
        exceptions: Vec::new(),
        subnet: (nat_ip(0), 24),
        onlink: vec![(Ipv4Addr::new(192, 0, 2, 0), 24)],
        router: None,
        pool,
        mappings,
    };
    sw.worker.tables.pipeline.set_nat(1, Some(cfg));
    sw.worker
        .tables
        .pipeline
        .set_neighbour(1, REMOTE, OUTSIDE, sw.now);
    (sw, wire, a, b)
}

#[test]
fn nat_translates_out_and_back() {
    let (mut sw, wire, a, _b) = nat_switch(61000..=61009, Vec::new());
    sw.send(
        2,
        &a,
        frame4(GW_MAC, mac(2), 6, nat_ip(2), REMOTE, &syn(40000, 80, 0x02)),
    );
    let out = wire.sent();
    assert_eq!(out.len(), 1);
    assert_eq!(src_dst(&out[0]), (UPLINK_MAC, OUTSIDE));
    let (s, d, sp, dp) = l4_ports(&out[0]);
    assert_eq!((s, d, dp), (NAT_ADDR, REMOTE, 80));
    assert!((61000..=61009).contains(&sp));
    // What /metrics reads: one TCP port taken, one connection tracked.
    let sizes = sw.worker.tables.pipeline.table_sizes();
    assert_eq!(sizes.nat_ports, vec![(1, [1, 0, 0])]);
    assert_eq!(sizes.conntrack, 1);
    assert_eq!(sizes.fdb.len(), 1);
    assert_eq!(sizes.fdb[0].0, 1);
    // The reply comes back to the endpoint, from the gateway.
    sw.send_wire(
        10,
        &wire,
        frame4(UPLINK_MAC, OUTSIDE, 6, REMOTE, NAT_ADDR, &syn(80, sp, 0x12)),
    );
    let back = a.sent();
    assert_eq!(back.len(), 1);
    assert_eq!(src_dst(&back[0]), (GW_MAC, mac(2)));
    assert_eq!(l4_ports(&back[0]), (REMOTE, nat_ip(2), 80, 40000));
    // Something for no translated connection is dropped and counted.
    sw.send_wire(
        10,
        &wire,
        frame4(
            UPLINK_MAC,
            OUTSIDE,
            6,
            REMOTE,
            NAT_ADDR,
            &syn(80, 61005, 0x10),
        ),
    );
    assert!(a.sent().is_empty());
}

#[test]
fn nat_port_mappings_and_hairpin() {
    let m = crate::pipeline::nat::Mapping {
        proto: 6,
        external: 8080,
        internal: nat_ip(3),
        internal_port: 80,
    };
    let (mut sw, wire, a, b) = nat_switch(61000..=61009, vec![m]);
    // From outside to the mapped port.
    sw.send_wire(
        10,
        &wire,
        frame4(
            UPLINK_MAC,
            OUTSIDE,
            6,
            REMOTE,
            NAT_ADDR,
            &syn(5555, 8080, 0x02),
        ),
    );
    let got = b.sent();
    assert_eq!(got.len(), 1);
    assert_eq!(l4_ports(&got[0]), (REMOTE, nat_ip(3), 5555, 80));
    // Its reply leaves from the mapped port.
    sw.send(
        3,
        &b,
        frame4(GW_MAC, mac(3), 6, nat_ip(3), REMOTE, &syn(80, 5555, 0x12)),
    );
    let out = wire.sent();
    assert_eq!(l4_ports(&out[0]), (NAT_ADDR, REMOTE, 8080, 5555));
    // Hairpin: a reaches b through the uplink's address.
    sw.send(
        2,
        &a,
        frame4(
            GW_MAC,
            mac(2),
            6,
            nat_ip(2),
            NAT_ADDR,
            &syn(40001, 8080, 0x02),
        ),
    );
    let got = b.sent();
    assert_eq!(got.len(), 1, "hairpinned to b");
    let (s, d, sp, dp) = l4_ports(&got[0]);
    assert_eq!((s, d, dp), (NAT_ADDR, nat_ip(3), 80));
    sw.send(
        3,
        &b,
        frame4(GW_MAC, mac(3), 6, nat_ip(3), NAT_ADDR, &syn(80, sp, 0x12)),
    );
    let back = a.sent();
    assert_eq!(back.len(), 1);
    assert_eq!(l4_ports(&back[0]), (NAT_ADDR, nat_ip(2), 8080, 40001));
}

#[test]
fn nat_exhaustion_is_a_counted_drop_and_unknown_next_hops_ask() {
    let (mut sw, wire, a, _b) = nat_switch(61000..=61001, Vec::new());
    for sport in [1, 2, 3] {
        sw.send(
            2,
            &a,
            frame4(GW_MAC, mac(2), 6, nat_ip(2), REMOTE, &syn(sport, 80, 0x02)),
        );
    }
    assert_eq!(wire.sent().len(), 2);
    assert_eq!(a.drops(DropReason::NatExhausted), 1);
    // A destination whose MAC the switch does not know: dropped, counted,
    // and the decision asks for it.
    let other = Ipv4Addr::new(192, 0, 2, 77);
    let f = frame4(
        GW_MAC,
        mac(2),
        17,
        nat_ip(2),
        other,
        &[0, 1, 0, 2, 0, 8, 0, 0],
    );
    let d = sw.worker.tables.pipeline.decide(2, &f, sw.now).unwrap();
    assert_eq!(d.verdict, Verdict::Drop(DropReason::NeighborUnresolved));
    assert_eq!(d.resolve, Some((1, other)));
}

/// OutBoundNAT on `l2bridge_switch`'s network for its endpoint at ip(7),
/// its router ip(254) known at `OUTSIDE`.
fn l2bridge_outbound_nat(sw: &mut Switch, exceptions: Vec<(Ipv4Addr, u8)>) {
    let cfg = crate::pipeline::nat::NatConfig {
        addr: ip(1),
        uplink_mac: UPLINK_MAC,
        uplink_ifindex: 0,
        gateway: ip(254),
        gateway_mac: None,
        sources: Some(vec![ip(7)]),
        exceptions,
        subnet: (ip(0), 24),
        onlink: vec![(ip(0), 24)],
        router: Some(ip(254)),
        pool: 61000..=61009,
        mappings: Vec::new(),
    };
    sw.worker.tables.pipeline.set_nat(1, Some(cfg));
    sw.worker
        .tables
        .pipeline
        .set_neighbour(1, ip(254), OUTSIDE, sw.now);
}

#[test]
fn outbound_nat_on_l2bridge_translates_all_but_the_exceptions() {
    let (mut sw, wire, ep, _) = l2bridge_switch();
    l2bridge_outbound_nat(&mut sw, vec![(Ipv4Addr::new(10, 0, 0, 0), 8)]);
    let far = Ipv4Addr::new(198, 51, 100, 1);
    sw.send(
        1,
        &ep,
        frame4(OUTSIDE, mac(7), 6, ip(7), far, &syn(40000, 443, 0x02)),
    );
    let out = wire.sent();
    assert_eq!(out.len(), 1);
    let (s, d, sp, _) = l4_ports(&out[0]);
    assert_eq!((s, d), (ip(1), far), "translated to the uplink's address");
    assert_eq!(src_dst(&out[0]), (UPLINK_MAC, OUTSIDE));
    // The reply comes back to the endpoint.
    sw.send_wire(
        10,
        &wire,
        frame4(UPLINK_MAC, OUTSIDE, 6, far, ip(1), &syn(443, sp, 0x12)),
    );
    let back = ep.sent();
    assert_eq!(back.len(), 1);
    assert_eq!(l4_ports(&back[0]), (far, ip(7), 443, 40000));
    // An exception leaves untranslated, from the endpoint's own address.
    let near = Ipv4Addr::new(10, 1, 2, 3);
    sw.send(
        1,
        &ep,
        frame4(OUTSIDE, mac(7), 6, ip(7), near, &syn(40001, 443, 0x02)),
    );
    let out = wire.sent();
    assert_eq!(out.len(), 1);
    assert_eq!(l4_ports(&out[0]).0, ip(7));
}

#[test]
fn nat_routes_with_ttl_and_answers_time_exceeded() {
    let (mut sw, wire, a, _b) = nat_switch(61000..=61009, Vec::new());
    sw.send(
        2,
        &a,
        frame4(
            GW_MAC,
            mac(2),
            17,
            nat_ip(2),
            REMOTE,
            &[0, 1, 0, 2, 0, 8, 0, 0],
        ),
    );
    let out = wire.sent();
    assert_eq!(out[0][22], 63, "one hop less");
    let mut f = frame4(
        GW_MAC,
        mac(2),
        17,
        nat_ip(2),
        REMOTE,
        &[0, 1, 0, 3, 0, 8, 0, 0],
    );
    f[22] = 1;
    sw.send(2, &a, f);
    assert!(wire.sent().is_empty());
    let back = a.sent();
    assert_eq!(back.len(), 1);
    assert_eq!(src_dst(&back[0]), (GW_MAC, mac(2)));
    let (s, d, _, _) = l4_ports(&back[0]);
    assert_eq!(
        (s, d, back[0][23], back[0][34]),
        (nat_ip(1), nat_ip(2), 1, 11)
    );
    assert_eq!(crate::wire::checksum(&back[0][34..]), 0);
}

#[test]
fn outbound_nat_leaves_arp_from_the_wire_to_the_bridge() {
    let (mut sw, wire, ep, _) = l2bridge_switch();
    l2bridge_outbound_nat(&mut sw, Vec::new());
    // The wire asks for the endpoint: the switch answers for it, as
    // without OutBoundNAT.
    sw.send_wire(10, &wire, arp_request(OUTSIDE, ip(2), ip(7)));
    assert_eq!(wire.sent().len(), 1, "the l2bridge proxy answered");
    // And the endpoint's own ARP reaches the wire.
    sw.send(1, &ep, arp_request(mac(7), ip(7), ip(254)));
    assert_eq!(wire.sent().len(), 1);
}

#[test]
fn mirror_sources_frames_both_ways_reach_destinations_of_their_network_only() {
    let mut sw = Switch::new();
    sw.network(1);
    sw.network(2);
    let vnic = |sw: &mut Switch, id: u8, net: NetId| {
        sw.vnic(
            PortId::from(id),
            net,
            Vnic {
                mac: Some(mac(id)),
                ..Vnic::default()
            },
        )
    };
    let a = vnic(&mut sw, 1, 1);
    let b = vnic(&mut sw, 2, 1);
    let d = vnic(&mut sw, 3, 1);
    let other = vnic(&mut sw, 4, 2);
    sw.apply(Command::SetPortMirror {
        port: 1,
        role: PortMirroring::Source,
    });
    sw.apply(Command::SetPortMirror {
        port: 3,
        role: PortMirroring::Destination,
    });
    sw.apply(Command::SetPortMirror {
        port: 4,
        role: PortMirroring::Destination,
    });
    // What the source sends, and what it receives, unchanged.
    let request = udp(mac(2), mac(1), ip(1), ip(2));
    sw.send(1, &a, request.clone());
    assert_eq!(b.sent(), vec![request.clone()]);
    assert_eq!(d.sent(), vec![request]);
    let reply = udp(mac(1), mac(2), ip(2), ip(1));
    sw.send(2, &b, reply.clone());
    assert_eq!(a.sent(), vec![reply.clone()]);
    assert_eq!(d.sent(), vec![reply]);
    assert!(
        other.sent().is_empty(),
        "never to another network's destination"
    );
    assert_eq!(PortCounters::get(&d.counters.mirrored_packets), 2);
    assert_eq!(PortCounters::get(&d.counters.tx_packets), 2);
    // The destination's own traffic to the source is not copied back to it.
    let own = udp(mac(1), mac(3), ip(3), ip(1));
    sw.send(3, &d, own.clone());
    assert_eq!(a.sent(), vec![own]);
    assert!(d.sent().is_empty());
    // Frames between non-sources are not copied.
    sw.send(2, &b, udp(mac(3), mac(2), ip(2), ip(3)));
    assert_eq!(d.sent().len(), 1, "delivered once, as itself");
    // A flood reaches the destination once.
    sw.send(1, &a, broadcast(mac(1)));
    assert_eq!(d.sent().len(), 1);
    b.sent();
    // No role, no copies.
    sw.apply(Command::SetPortMirror {
        port: 1,
        role: PortMirroring::None,
    });
    sw.send(1, &a, udp(mac(2), mac(1), ip(1), ip(2)));
    assert_eq!(b.sent().len(), 1);
    assert!(d.sent().is_empty());
    assert_eq!(PortCounters::get(&d.counters.mirrored_packets), 2);
}
