//! The forwarding core end to end (classify -> decide -> execute) through
//! in-memory ports: no root, no devices, no sleeping. The worker is the
//! real one, minus its epoll wait: each test pushes frames into a port's
//! receive queue, polls the port as the loop would, and reads what every
//! port sent.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use super::*;
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
            worker: Worker::new(Epoll::new().expect("epoll"), wake, rx),
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
            fdb: FdbConfig::default(),
            offload: false,
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
        },
    );
    let ep2 = sw.vnic(
        2,
        1,
        Vnic {
            security: Some(PortSecurity::new(mac(8), Some(ip(8)), None)),
            addrs: vec![(IpAddr::V4(ip(8)), mac(8))],
            mac: Some(mac(8)),
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
        fdb: FdbConfig {
            max_per_port: 1,
            ..FdbConfig::default()
        },
        offload: false,
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
