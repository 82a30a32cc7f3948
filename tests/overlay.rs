//! Overlay networks (`-d overlay`, VXLAN) across hosts made of namespaces:
//! each host runs its own vswitchd with an uplink into a fabric bridge and
//! a provider address on it; endpoints on two hosts reach each other
//! through VXLAN (IPv4, IPv6, iperf3), what crosses the fabric decodes as
//! VXLAN with the network's VNI, kernel and slow path put the same headers
//! on the wire, a Linux VXLAN device is a peer (foreign VTEP), VSIDs are
//! isolated, and VXLAN nobody configured is dropped and counted.
//!
//! Tests that run iperf3 hold [`exclusive`]; the others hold [`shared`].

use std::time::Duration;

use serde_json::Value;
use vswitch_systests::{
    exclusive, fast_counter, fast_drops, iperf3, link_mac, port_stats, require_root, run, shared,
    tag, wait_until, write_doc, Capture, Daemon, Netns,
};

const BRIDGE: &str = "br0";
const UPLINK: &str = "up0";

/// One machine of the fabric: a namespace with `up0` on the fabric bridge
/// holding its provider address.
struct Host {
    ns: Netns,
    pa: String,
}

/// A fabric bridge and the hosts on it.
struct Fabric {
    fabric: Netns,
    /// 192.168.N.0/24 for the provider addresses.
    net: String,
}

impl Fabric {
    fn new() -> Fabric {
        let fabric = Netns::new("vf");
        fabric.ok(&["ip", "link", "add", BRIDGE, "type", "bridge"]);
        fabric.ok(&["ip", "link", "set", BRIDGE, "up"]);
        Fabric {
            fabric,
            net: format!("192.168.{}", 10 + std::process::id() % 200),
        }
    }

    /// A host on the fabric with provider address `.N`.
    fn host(&self, n: u8) -> Host {
        let ns = Netns::new("vh");
        let peer = format!("vfp{}", tag());
        ns.ok(&[
            "ip",
            "link",
            "add",
            UPLINK,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &self.fabric.name,
        ]);
        self.fabric
            .ok(&["ip", "link", "set", &peer, "master", BRIDGE]);
        self.fabric.ok(&["ip", "link", "set", &peer, "up"]);
        let pa = format!("{}.{n}", self.net);
        ns.ok(&["ip", "addr", "add", &format!("{pa}/24"), "dev", UPLINK]);
        ns.ok(&["ip", "link", "set", UPLINK, "up"]);
        Host { ns, pa }
    }
}

/// vswitchd in `host`: with `--provider-address` when `by_flag`, otherwise
/// the networks name `-o interface=up0`.
fn daemon(host: &Host, by_flag: bool) -> Daemon {
    if by_flag {
        Daemon::start_in_with(&host.ns, &["--provider-address", &host.pa])
    } else {
        Daemon::start_in(&host.ns)
    }
}

/// `network create -d overlay` on `d`.
fn overlay(d: &Daemon, name: &str, vsid: u32, subnets: &[&str], by_flag: bool) {
    let vsid = format!("vsid={vsid}");
    let mut args = vec!["network", "create", "-d", "overlay", "-o", &vsid];
    if !by_flag {
        args.extend(["-o", "interface=up0"]);
    }
    for s in subnets {
        args.extend(["--subnet", s]);
    }
    args.push(name);
    d.ok(&args);
}

/// An endpoint of `net` in a namespace of its own.
fn endpoint(d: &Daemon, net: &str, name: &str, ips: &[&str], backend: &str) -> (Netns, Value) {
    let ns = Netns::new("ve");
    let mut args = vec![
        "endpoint",
        "create",
        "--network",
        net,
        "--netns",
        &ns.name,
        "--backend",
        backend,
    ];
    for ip in ips {
        args.push(if ip.contains(':') { "--ipv6" } else { "--ip" });
        args.push(ip);
    }
    args.push(name);
    d.ok(&args);
    let ep = d.json(&["endpoint", "inspect", name]);
    (ns, ep)
}

/// Tells `d` that endpoint `ep` (of another host) lives at `pa`.
fn map(d: &Daemon, net: &str, ep: &Value, pa: &str) {
    let mac = ep["MacAddress"].as_str().unwrap();
    for key in ["IPAddress", "IPv6Address"] {
        if let Some(ip) = ep[key].as_str() {
            d.ok(&[
                "network", "mapping", "add", net, "--ip", ip, "--mac", mac, "--pa", pa,
            ]);
        }
    }
}

/// The frames of `cap` that are VXLAN (IPv4, UDP port 4789): (outer
/// header bytes up to the VXLAN header, VXLAN header, inner frame).
fn vxlan_frames(cap: &Capture) -> Vec<(Vec<u8>, [u8; 8], Vec<u8>)> {
    cap.frames()
        .into_iter()
        .filter(|f| f.len() > 50 && f[12..14] == [0x08, 0x00] && f[23] == 17)
        .filter(|f| {
            let ihl = usize::from(f[14] & 0x0f) * 4;
            f.len() > 14 + ihl + 8 + 8 && f[14 + ihl + 2..14 + ihl + 4] == 4789u16.to_be_bytes()
        })
        .map(|f| {
            let l4 = 14 + usize::from(f[14] & 0x0f) * 4;
            let vx: [u8; 8] = f[l4 + 8..l4 + 16].try_into().unwrap();
            (f[..l4 + 8].to_vec(), vx, f[l4 + 16..].to_vec())
        })
        .collect()
}

/// A Linux VXLAN device `dev` of `vni` on `host` (a foreign VTEP) holding
/// the customer address `cidr` itself; no learning.
fn linux_vtep(host: &Host, dev: &str, vni: &str, cidr: &str) {
    host.ns.ok(&[
        "ip",
        "link",
        "add",
        dev,
        "type",
        "vxlan",
        "id",
        vni,
        "dstport",
        "4789",
        "local",
        &host.pa,
        "nolearning",
    ]);
    host.ns.ok(&["ip", "addr", "add", cidr, "dev", dev]);
    host.ns.ok(&["ip", "link", "set", dev, "up"]);
}

/// Static entries on a Linux VTEP: `ip` is at `mac`, behind `pa`.
fn linux_route(ns: &Netns, dev: &str, mac: &str, ip: &str, pa: &str) {
    ns.ok(&["bridge", "fdb", "append", mac, "dev", dev, "dst", pa]);
    ns.ok(&[
        "ip",
        "neigh",
        "replace",
        ip,
        "lladdr",
        mac,
        "dev",
        dev,
        "nud",
        "permanent",
    ]);
}

fn vni_of(vx: &[u8; 8]) -> u32 {
    u32::from_be_bytes([0, vx[4], vx[5], vx[6]])
}

fn mac_text(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[test]
fn veth_endpoints_on_two_hosts_ping_and_stream_through_vxlan() {
    if !require_root("veth_endpoints_on_two_hosts_ping_and_stream_through_vxlan") {
        return;
    }
    let _g = exclusive();
    let f = Fabric::new();
    let (ha, hb) = (f.host(1), f.host(2));
    let (da, db) = (daemon(&ha, false), daemon(&hb, true));
    let subnets = ["10.77.0.0/24", "fd00:77::/64"];
    overlay(&da, "ov", 4096, &subnets, false);
    overlay(&db, "ov", 4096, &subnets, true);
    let net = da.json(&["network", "inspect", "ov"]);
    assert_eq!(net["VSID"], 4096);
    assert_eq!(net["ProviderAddress"], ha.pa.as_str());
    assert_eq!(net["Mtu"], 1450, "VXLAN's 50 bytes come off the MTU: {net}");
    let (na, ea) = endpoint(&da, "ov", "a1", &["10.77.0.10", "fd00:77::10"], "veth");
    let (nb, eb) = endpoint(&db, "ov", "b1", &["10.77.0.20", "fd00:77::20"], "veth");
    map(&da, "ov", &eb, &hb.pa);
    map(&db, "ov", &ea, &ha.pa);
    let table = da.json(&["network", "mappings", "ov"]);
    let sources: Vec<&str> = table
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["local", "static", "local", "static"], "{table}");

    let cap = Capture::start(&f.fabric, BRIDGE);
    assert!(na.ping_within("10.77.0.20", Duration::from_secs(5)));
    assert!(na.ping_within("fd00:77::20", Duration::from_secs(5)));
    cap.sync(&na, "10.77.0.20");
    // What crossed the fabric is VXLAN of VNI 4096 between the two PAs, and
    // no ARP or neighbour solicitation for a customer address did.
    let frames = vxlan_frames(&cap);
    assert!(!frames.is_empty(), "no VXLAN on the fabric");
    for (outer, vx, inner) in &frames {
        assert_eq!(vx[0], 0x08, "VXLAN flags: the I bit only");
        assert_eq!(vni_of(vx), 4096);
        let (src, dst) = (&outer[26..30], &outer[30..34]);
        let pas = [
            ha.pa.parse::<std::net::Ipv4Addr>().unwrap().octets(),
            hb.pa.parse::<std::net::Ipv4Addr>().unwrap().octets(),
        ];
        assert!(pas.iter().any(|p| p == src) && pas.iter().any(|p| p == dst) && src != dst);
        let inner_dst = mac_text(&inner[0..6]);
        assert!(
            inner_dst == ea["MacAddress"] || inner_dst == eb["MacAddress"],
            "inner frame to {inner_dst}"
        );
    }
    let text = run(
        "tcpdump",
        &["-n", "-r", cap.pcap.to_str().unwrap(), "udp port 4789"],
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("VXLAN, flags [I] (0x08), vni 4096"),
        "tcpdump does not decode VXLAN vni 4096:\n{text}"
    );
    drop(cap);

    let rate = iperf3(&na, &nb, "10.77.0.20", 3);
    assert!(rate > 1e9, "iperf3 through VXLAN: {rate} bit/s");
    // Both directions were the kernel's: nothing punted but ARP/NDP.
    assert!(fast_counter(&da, "tunnel:ov", "DeliveredPackets") > 10_000);
    assert!(fast_counter(&db, "tunnel:ov", "ForwardedPackets") > 10_000);
}

#[test]
fn tap_and_veth_endpoints_put_the_same_headers_on_the_wire() {
    if !require_root("tap_and_veth_endpoints_put_the_same_headers_on_the_wire") {
        return;
    }
    let _g = shared();
    let f = Fabric::new();
    let (ha, hb) = (f.host(1), f.host(2));
    let (da, db) = (daemon(&ha, true), daemon(&hb, true));
    overlay(&da, "ov", 5000, &["10.78.0.0/24"], true);
    overlay(&db, "ov", 5000, &["10.78.0.0/24"], true);
    let (ntap, etap) = endpoint(&da, "ov", "tap1", &["10.78.0.10"], "tap");
    let (nveth, eveth) = endpoint(&da, "ov", "veth1", &["10.78.0.11"], "veth");
    let (nb, eb) = endpoint(&db, "ov", "b1", &["10.78.0.20"], "tap");
    map(&da, "ov", &eb, &hb.pa);
    map(&db, "ov", &etap, &ha.pa);
    map(&db, "ov", &eveth, &ha.pa);

    let cap = Capture::start(&f.fabric, BRIDGE);
    assert!(ntap.ping_within("10.78.0.20", Duration::from_secs(5)));
    assert!(nveth.ping_within("10.78.0.20", Duration::from_secs(5)));
    assert!(nb.ping_within("10.78.0.10", Duration::from_secs(5)));
    cap.sync(&nveth, "10.78.0.20");
    let frames = vxlan_frames(&cap);
    let from = |mac: &Value| {
        frames
            .iter()
            .find(|(_, _, inner)| mac_text(&inner[6..12]) == *mac)
            .unwrap_or_else(|| panic!("no VXLAN frame from {mac}"))
            .clone()
    };
    let (slow, vx_slow, _) = from(&etap["MacAddress"]);
    let (fast, vx_fast, _) = from(&eveth["MacAddress"]);
    assert_eq!(vx_slow, vx_fast, "VXLAN headers differ");
    assert_eq!(vni_of(&vx_slow), 5000);
    // Outer Ethernet, IPv4 (but its id, length and checksum), UDP
    // destination port and checksum (zero, RFC 7348) are the same; the
    // source port is a hash of each inner flow.
    let fixed = |h: &[u8]| {
        let mut v = h[..14].to_vec();
        v.extend_from_slice(&h[14..16]); // version, IHL, TOS
        v.extend_from_slice(&h[20..24]); // flags, fragment offset, TTL, protocol
        v.extend_from_slice(&h[26..34]); // addresses
        v.extend_from_slice(&h[36..38]); // UDP destination port
        v.extend_from_slice(&h[40..42]); // UDP checksum
        v
    };
    assert_eq!(fixed(&slow), fixed(&fast));
    assert_eq!(&slow[40..42], &[0, 0], "UDP checksum zero");
    // The slow path carried the TAP endpoint's frames, the kernel the veth's.
    assert!(fast_counter(&da, "tunnel:ov", "DeliveredPackets") > 0);
    let tap_rx = port_stats(&da, "tap1")["RxPackets"].as_u64().unwrap();
    assert!(
        tap_rx >= 2,
        "the TAP endpoint's pings crossed the slow path"
    );
}

/// A Linux VXLAN device with static forwarding entries (a foreign VTEP)
/// and a vswitch endpoint reach each other, both ways.
#[test]
fn a_linux_vxlan_device_is_a_peer() {
    if !require_root("a_linux_vxlan_device_is_a_peer") {
        return;
    }
    let _g = shared();
    let f = Fabric::new();
    let (ha, foreign) = (f.host(1), f.host(3));
    let da = daemon(&ha, false);
    overlay(&da, "ov", 7000, &["10.79.0.0/24"], false);
    let (na, ea) = endpoint(&da, "ov", "a1", &["10.79.0.10"], "veth");
    let (_nt, et) = endpoint(&da, "ov", "a2", &["10.79.0.11"], "tap");
    // The foreign VTEP: a VXLAN device holding the customer address itself.
    let fns = &foreign.ns;
    linux_vtep(&foreign, "vx0", "7000", "10.79.0.50/24");
    for ep in [&ea, &et] {
        let mac = ep["MacAddress"].as_str().unwrap();
        linux_route(fns, "vx0", mac, ep["IPAddress"].as_str().unwrap(), &ha.pa);
    }
    let vx_mac = link_mac(fns, "vx0");
    da.ok(&[
        "network",
        "mapping",
        "add",
        "ov",
        "--ip",
        "10.79.0.50",
        "--mac",
        &vx_mac,
        "--pa",
        &foreign.pa,
    ]);
    // vswitch -> Linux: the switch answers the endpoint's ARP from its table.
    assert!(na.ping_within("10.79.0.50", Duration::from_secs(5)));
    let neigh = na.ok(&["ip", "neigh", "show", "10.79.0.50"]);
    assert!(
        neigh.contains(&vx_mac),
        "ARP answered with the mapped MAC: {neigh}"
    );
    // Linux -> vswitch, to the veth (kernel path) and the TAP endpoint.
    assert!(fns.ping_within("10.79.0.10", Duration::from_secs(5)));
    assert!(fns.ping_within("10.79.0.11", Duration::from_secs(5)));
    // Removing the mapping stops traffic from that peer.
    da.ok(&["network", "mapping", "rm", "ov", "--ip", "10.79.0.50"]);
    assert!(wait_until(Duration::from_secs(3), || !fns.ping("10.79.0.10")));
    assert!(fast_drops(&da, "tunnel:ov", "vxlan_unknown_peer") > 0);
}

/// Two overlay networks on the same two hosts: a frame carrying one
/// network's VNI never reaches the other's endpoints, even addressed to
/// their MACs.
#[test]
fn overlay_networks_with_different_vsids_are_isolated() {
    if !require_root("overlay_networks_with_different_vsids_are_isolated") {
        return;
    }
    let _g = shared();
    let f = Fabric::new();
    let (ha, foreign) = (f.host(1), f.host(4));
    let da = daemon(&ha, true);
    overlay(&da, "red", 100, &["10.80.1.0/24"], true);
    overlay(&da, "blue", 200, &["10.80.2.0/24"], true);
    let (_nr, red) = endpoint(&da, "red", "r1", &["10.80.1.10"], "veth");
    let (_nb, blue) = endpoint(&da, "blue", "b1", &["10.80.2.10"], "veth");
    // The foreign VTEP is a peer of red only, and sends with red's VNI to
    // blue's endpoint (its MAC and address), and with blue's VNI.
    let fns = &foreign.ns;
    linux_vtep(&foreign, "vr", "100", "10.80.1.50/24");
    linux_vtep(&foreign, "vb", "200", "10.80.2.50/24");
    let (rmac, bmac) = (
        red["MacAddress"].as_str().unwrap(),
        blue["MacAddress"].as_str().unwrap(),
    );
    for (dev, mac, ip) in [
        ("vr", rmac, "10.80.1.10"),
        ("vr", bmac, "10.80.1.11"),
        ("vb", bmac, "10.80.2.10"),
    ] {
        linux_route(fns, dev, mac, ip, &ha.pa);
    }
    da.ok(&[
        "network",
        "mapping",
        "add",
        "red",
        "--ip",
        "10.80.1.50",
        "--mac",
        &link_mac(fns, "vr"),
        "--pa",
        &foreign.pa,
    ]);
    assert!(
        fns.ping_within("10.80.1.10", Duration::from_secs(5)),
        "red works"
    );
    let blue_rx = |d: &Daemon| port_stats(d, "b1")["TxPackets"].as_u64().unwrap();
    let before = blue_rx(&da);
    // Blue's MAC inside red's VNI, and blue's VNI from a peer blue does not
    // know: neither reaches b1.
    for _ in 0..3 {
        assert!(!fns.ping("10.80.1.11"));
        assert!(!fns.ping("10.80.2.10"));
    }
    assert_eq!(blue_rx(&da), before, "a frame crossed from red into blue");
    assert!(fast_drops(&da, "tunnel:blue", "vxlan_unknown_peer") >= 3);
}

/// VXLAN to a host's port that no network takes is dropped before the
/// kernel's VXLAN socket and counted by reason.
#[test]
fn malformed_and_unexpected_vxlan_is_dropped_and_counted() {
    if !require_root("malformed_and_unexpected_vxlan_is_dropped_and_counted") {
        return;
    }
    let _g = shared();
    let f = Fabric::new();
    let (ha, hb, rogue) = (f.host(1), f.host(2), f.host(9));
    let da = daemon(&ha, true);
    overlay(&da, "ov", 4242, &["10.81.0.0/24"], true);
    let (_na, _ea) = endpoint(&da, "ov", "a1", &["10.81.0.10"], "veth");
    // hb is a peer (mapped); rogue is not.
    da.ok(&[
        "network",
        "mapping",
        "add",
        "ov",
        "--ip",
        "10.81.0.20",
        "--mac",
        "02:00:00:00:00:20",
        "--pa",
        &hb.pa,
    ]);
    let inner =
        "ffffffffffff020000000099080600010800060400010200000000990a5100630000000000000a51000a";
    let send = |host: &Host, hex: &str, count: u32| {
        let script = format!(
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor _ in range({count}): s.sendto(bytes.fromhex('{hex}'),('{}',4789))",
            ha.pa
        );
        host.ns.ok(&["python3", "-c", &script]);
    };
    let vtep_drop = |reason: &str| -> u64 {
        let dp = da.json(&["datapath", "show"]);
        dp["Vteps"][0]["Drops"][reason].as_u64().unwrap_or(0)
    };
    send(&hb, "0800", 3); // shorter than a VXLAN header
    send(&hb, &format!("0000000000109200{inner}"), 4); // no I flag
    send(&hb, &format!("08000000000fff00{inner}"), 5); // VNI 4095: nobody's
    send(
        &rogue,
        &format!("08000000001092 00{inner}").replace(' ', ""),
        6,
    ); // not a peer
    assert!(wait_until(Duration::from_secs(3), || vtep_drop(
        "vxlan_truncated"
    ) == 3));
    assert_eq!(vtep_drop("vxlan_malformed"), 4);
    assert_eq!(vtep_drop("vxlan_unknown_vni"), 5);
    assert_eq!(fast_drops(&da, "tunnel:ov", "vxlan_unknown_peer"), 6);
    // A well-formed broadcast from the peer still gets in (to the slow path).
    send(&hb, &format!("0800000000109200{inner}"), 1);
    assert!(wait_until(Duration::from_secs(3), || {
        fast_counter(&da, "tunnel:ov", "PuntedPackets") >= 1
    }));
}

#[test]
fn overlay_requests_are_validated() {
    if !require_root("overlay_requests_are_validated") {
        return;
    }
    let _g = shared();
    let f = Fabric::new();
    let ha = f.host(1);
    let d = daemon(&ha, false);
    d.refused(
        &[
            "network",
            "create",
            "-d",
            "overlay",
            "-o",
            "interface=up0",
            "nov",
        ],
        "options.vsid",
    );
    d.refused(
        &[
            "network",
            "create",
            "-d",
            "overlay",
            "-o",
            "vsid=99999999",
            "-o",
            "interface=up0",
            "nov",
        ],
        "options.vsid",
    );
    d.refused(
        &["network", "create", "-d", "overlay", "-o", "vsid=5", "nov"],
        "options.interface",
    );
    d.refused(
        &["network", "create", "-d", "private", "-o", "vsid=5", "p1"],
        "options.vsid",
    );
    d.refused(
        &[
            "network",
            "create",
            "-d",
            "private",
            "-o",
            "vxlanport=4790",
            "p1",
        ],
        "options.vxlanport",
    );
    overlay(&d, "ov", 10, &["10.82.0.0/24"], false);
    d.refused(
        &[
            "network",
            "create",
            "-d",
            "overlay",
            "-o",
            "vsid=10",
            "-o",
            "interface=up0",
            "--subnet",
            "10.83.0.0/24",
            "ov2",
        ],
        "options.vsid",
    );
    let add = |ip: &str, mac: &str, pa: &str| {
        vec![
            "network".to_owned(),
            "mapping".into(),
            "add".into(),
            "ov".into(),
            "--ip".into(),
            ip.into(),
            "--mac".into(),
            mac.into(),
            "--pa".into(),
            pa.into(),
        ]
    };
    let refused = |args: Vec<String>, field: &str| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        d.refused(&args, field);
    };
    refused(
        add("10.99.0.5", "02:00:00:00:00:05", "192.168.1.1"),
        "IPAddress",
    );
    refused(
        add("10.82.0.5", "ff:ff:ff:ff:ff:ff", "192.168.1.1"),
        "MacAddress",
    );
    refused(
        add("10.82.0.5", "02:00:00:00:00:05", "fd00::1"),
        "ProviderAddress",
    );
    refused(
        add("10.82.0.5", "02:00:00:00:00:05", "224.0.0.1"),
        "ProviderAddress",
    );
    d.refused(
        &["network", "mapping", "rm", "ov", "--ip", "10.82.0.5"],
        "IPAddress",
    );
    d.refused(&["network", "mappings", "nosuch"], "network");
    // Nothing of the refused requests stuck.
    assert_eq!(
        d.json(&["network", "mappings", "ov"]),
        serde_json::json!([])
    );
    let nets = d.json(&["network", "ls"]);
    assert_eq!(nets.as_array().unwrap().len(), 1, "{nets}");
}

/// Static mappings and kernel forwarding survive kill -9 and a restart.
#[test]
fn overlay_survives_a_daemon_restart() {
    if !require_root("overlay_survives_a_daemon_restart") {
        return;
    }
    let _g = shared();
    let f = Fabric::new();
    let (ha, hb) = (f.host(1), f.host(2));
    let (mut da, db) = (daemon(&ha, true), daemon(&hb, true));
    overlay(&da, "ov", 300, &["10.84.0.0/24"], true);
    overlay(&db, "ov", 300, &["10.84.0.0/24"], true);
    let (na, ea) = endpoint(&da, "ov", "a1", &["10.84.0.10"], "veth");
    let (_nb, eb) = endpoint(&db, "ov", "b1", &["10.84.0.20"], "veth");
    map(&da, "ov", &eb, &hb.pa);
    map(&db, "ov", &ea, &ha.pa);
    assert!(na.ping_within("10.84.0.20", Duration::from_secs(5)));
    da.kill9();
    // The kernel forwards on its own meanwhile.
    assert!(
        na.ping("10.84.0.20"),
        "no forwarding while vswitchd is down"
    );
    da.spawn();
    let table = da.json(&["network", "mappings", "ov"]);
    assert_eq!(table.as_array().unwrap().len(), 2, "{table}");
    assert!(na.ping_within("10.84.0.20", Duration::from_secs(5)));
    // Removing the network leaves no device behind.
    da.ok(&["endpoint", "rm", "a1"]);
    da.ok(&["network", "rm", "ov"]);
    let links: Value = serde_json::from_str(&ha.ns.ok(&["ip", "-j", "link", "show"])).unwrap();
    let names: Vec<&str> = links
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .collect();
    assert_eq!(names, ["lo", UPLINK], "devices left behind");
}

/// A RemoteSubnetRoute document, as HNS's v2 schema writes it.
fn subnet_route(prefix: &str, vsid: u32, pa: &str, router_mac: &str) -> Value {
    serde_json::json!({"Type": "RemoteSubnetRoute", "Settings": {
        "DestinationPrefix": prefix,
        "IsolationId": vsid,
        "ProviderAddress": pa,
        "DistributedRouterMacAddress": router_mac,
    }})
}

/// `policy add --network NET`, which must succeed.
fn add_network_policy(d: &Daemon, net: &str, doc: &Value) {
    let path = write_doc(d, doc);
    d.ok(&[
        "policy",
        "add",
        "--network",
        net,
        "--file",
        path.to_str().unwrap(),
    ]);
}

/// Each host of the VSID has a subnet of its own; RemoteSubnetRoute
/// policies (flannel's Windows backend writes one per other host) route
/// between them through the hosts' distributed routers.
#[test]
fn remote_subnet_routes_join_subnets_on_two_hosts() {
    if !require_root("remote_subnet_routes_join_subnets_on_two_hosts") {
        return;
    }
    let _g = shared();
    let f = Fabric::new();
    let (ha, hb) = (f.host(1), f.host(2));
    let (mut da, db) = (daemon(&ha, true), daemon(&hb, true));
    for (d, n) in [(&da, 1), (&db, 2)] {
        let (s4, g4) = (format!("10.91.{n}.0/24"), format!("10.91.{n}.1"));
        let (s6, g6) = (format!("fd00:91:{n}::/64"), format!("fd00:91:{n}::1"));
        d.ok(&[
            "network",
            "create",
            "-d",
            "overlay",
            "-o",
            "vsid=4300",
            "--subnet",
            &s4,
            "--gateway",
            &g4,
            "--subnet",
            &s6,
            "--gateway",
            &g6,
            "ov",
        ]);
    }
    let router = |d: &Daemon| {
        let net = d.json(&["network", "inspect", "ov"]);
        net["DistributedRouterMacAddress"]
            .as_str()
            .unwrap_or_else(|| panic!("no router MAC: {net}"))
            .to_owned()
    };
    let (ra, rb) = (router(&da), router(&db));
    let pa_b: std::net::Ipv4Addr = hb.pa.parse().unwrap();
    let o = pa_b.octets();
    assert_eq!(
        rb,
        format!("0e:2a:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]),
        "the router MAC is 0e:2a and the PA"
    );
    // The switch routes TAP and veth endpoints alike (the slow path).
    let (na, _) = endpoint(&da, "ov", "a1", &["10.91.1.10", "fd00:91:1::10"], "veth");
    let (nb, _) = endpoint(&db, "ov", "b1", &["10.91.2.10", "fd00:91:2::10"], "tap");
    assert!(!na.ping("10.91.2.10"), "routed before any route was given");
    // Windows' dashed MAC form, as HNS documents carry it.
    let dashed = |m: &str| m.replace(':', "-").to_uppercase();
    for (prefix, on) in [("10.91.2.0/24", &da), ("fd00:91:2::/64", &da)] {
        add_network_policy(on, "ov", &subnet_route(prefix, 4300, &hb.pa, &dashed(&rb)));
    }
    for prefix in ["10.91.1.0/24", "fd00:91:1::/64"] {
        add_network_policy(&db, "ov", &subnet_route(prefix, 4300, &ha.pa, &ra));
    }
    assert!(na.ping_within("10.91.2.10", Duration::from_secs(5)));
    assert!(na.ping_within("fd00:91:2::10", Duration::from_secs(5)));
    assert!(nb.ping_within("10.91.1.10", Duration::from_secs(5)));
    // Each router is a hop: the reply left b1 with TTL 64.
    let out = na.ok(&["ping", "-c", "1", "-W", "2", "10.91.2.10"]);
    assert!(out.contains("ttl=62"), "two routed hops expected: {out}");
    let rate = iperf3(&na, &nb, "10.91.2.10", 2);
    assert!(rate > 1e8, "iperf3 across the routers: {rate} bit/s");
    // The routes are policies: kept across a restart.
    da.kill9();
    da.spawn();
    assert!(na.ping_within("10.91.2.10", Duration::from_secs(5)));
    // Removing the route stops the traffic.
    let policies = da.json(&["policy", "ls", "--network", "ov"]);
    for p in policies.as_array().unwrap() {
        da.ok(&["policy", "rm", "--network", "ov", p["ID"].as_str().unwrap()]);
    }
    assert!(
        !na.ping("10.91.2.10"),
        "routed after the routes were removed"
    );

    // What does not belong is refused, naming the field.
    let bad = [
        (
            subnet_route("10.91.3.0/24", 4301, &hb.pa, &rb),
            "policies.Settings.IsolationId",
        ),
        (
            subnet_route("10.91.1.128/25", 4300, &hb.pa, &rb),
            "policies.Settings.DestinationPrefix",
        ),
        (
            subnet_route("10.91.3.1/24", 4300, &hb.pa, &rb),
            "policies.Settings.DestinationPrefix",
        ),
        (
            subnet_route("10.91.3.0/24", 4300, &ha.pa, &rb),
            "policies.Settings.ProviderAddress",
        ),
        (
            subnet_route("10.91.3.0/24", 4300, &hb.pa, "ff-ff-ff-ff-ff-ff"),
            "policies.Settings.DistributedRouterMacAddress",
        ),
    ];
    for (doc, field) in bad {
        let path = write_doc(&da, &doc);
        da.refused(
            &[
                "policy",
                "add",
                "--network",
                "ov",
                "--file",
                path.to_str().unwrap(),
            ],
            field,
        );
    }
    let route = write_doc(&da, subnet_route("10.91.3.0/24", 4300, &hb.pa, &rb));
    da.refused(
        &[
            "policy",
            "add",
            "--endpoint",
            "a1",
            "--file",
            route.to_str().unwrap(),
        ],
        "policies.Type",
    );
    // A ProviderAddress names the host an endpoint is on: this one.
    let own = write_doc(
        &da,
        serde_json::json!({"Type": "ProviderAddress", "Settings": {"ProviderAddress": ha.pa}}),
    );
    da.ok(&[
        "policy",
        "add",
        "--endpoint",
        "a1",
        "--file",
        own.to_str().unwrap(),
    ]);
    let other = write_doc(&da, serde_json::json!({"Type": "PA", "PA": hb.pa}));
    da.refused(
        &[
            "policy",
            "add",
            "--endpoint",
            "a1",
            "--file",
            other.to_str().unwrap(),
        ],
        "policies.PA",
    );
    da.refused(
        &[
            "policy",
            "add",
            "--network",
            "ov",
            "--file",
            own.to_str().unwrap(),
        ],
        "policies.Type",
    );
}

// ---------------------------------------------------------------------------
// Multi-host over etcd: a real etcd (Debian's etcd-server) in a namespace
// of its own on the fabric.

const ETCD: &str = "/usr/bin/etcd";

/// etcd on the fabric at `.100`, its data kept across restarts.
struct Etcd {
    ns: Netns,
    addr: String,
    dir: std::path::PathBuf,
    child: Option<vswitch_systests::KillOnDrop>,
}

impl Etcd {
    fn start(f: &Fabric) -> Etcd {
        assert!(
            std::path::Path::new(ETCD).exists(),
            "{ETCD} is missing: scripts/lib.sh installs etcd-server"
        );
        let host = f.host(100);
        let dir = std::env::temp_dir().join(format!("vswitch-etcd-{}", tag()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut e = Etcd {
            addr: host.pa.clone(),
            ns: host.ns,
            dir,
            child: None,
        };
        e.spawn();
        e
    }

    fn url(&self) -> String {
        format!("http://{}:2379", self.addr)
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("etcd.log")).unwrap();
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns.name, ETCD, "--name=lab"])
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg(format!("--listen-client-urls={}", self.url()))
            .arg(format!("--advertise-client-urls={}", self.url()))
            .args([
                "--listen-peer-urls=http://127.0.0.1:2380",
                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                "--initial-cluster=lab=http://127.0.0.1:2380",
                "--log-level=error",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(vswitch_systests::KillOnDrop(child));
        let health = format!(
            "import urllib.request;urllib.request.urlopen('{}/health',timeout=1).read()",
            self.url()
        );
        let up = wait_until(Duration::from_secs(20), || {
            self.ns.exec(&["python3", "-c", &health]).status.success()
        });
        assert!(
            up,
            "etcd did not come up: {}",
            std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
        );
    }

    fn stop(&mut self) {
        drop(self.child.take());
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn shared_daemon(host: &Host, etcd: &Etcd, id: &str) -> Daemon {
    let url = etcd.url();
    Daemon::start_in_with(
        &host.ns,
        &[
            "--provider-address",
            &host.pa,
            "--etcd",
            &url,
            "--host-id",
            id,
            "--etcd-lease-ttl",
            "3",
        ],
    )
}

/// The remote entries of `d`'s table: (address, host).
fn remote(d: &Daemon, net: &str) -> Vec<(String, String)> {
    d.json(&["network", "mappings", net])
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["Source"] == "remote")
        .map(|m| {
            (
                m["IPAddress"].as_str().unwrap().to_owned(),
                m["Owner"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[test]
fn hosts_share_networks_and_mappings_through_etcd() {
    if !require_root("hosts_share_networks_and_mappings_through_etcd") {
        return;
    }
    let _g = shared();
    let f = Fabric::new();
    let etcd = Etcd::start(&f);
    let (ha, hb) = (f.host(1), f.host(2));
    let (da, mut db) = (
        shared_daemon(&ha, &etcd, "host-a"),
        shared_daemon(&hb, &etcd, "host-b"),
    );
    for d in [&da, &db] {
        d.expect_log("removed from the overlay store, kept here");
    }
    overlay(&da, "ov", 900, &["10.85.0.0/24", "fd00:85::/64"], true);
    // Defined on one host, visible on the other.
    assert!(
        wait_until(Duration::from_secs(3), || db
            .ctl(&["network", "inspect", "ov"])
            .status
            .success()),
        "the network did not reach host b"
    );
    assert_eq!(db.json(&["network", "inspect", "ov"])["VSID"], 900);
    let (na, _) = endpoint(&da, "ov", "a1", &["10.85.0.10", "fd00:85::10"], "veth");
    let started = std::time::Instant::now();
    let (nb, _) = endpoint(&db, "ov", "b1", &["10.85.0.20", "fd00:85::20"], "veth");
    // An endpoint made on b is in a's table within a second (a watch).
    assert!(wait_until(Duration::from_secs(1), || remote(&da, "ov")
        .len()
        == 2));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(remote(&da, "ov")[0], ("10.85.0.20".into(), "host-b".into()));
    assert!(wait_until(Duration::from_secs(1), || remote(&db, "ov")
        .len()
        == 2));
    assert!(na.ping_within("10.85.0.20", Duration::from_secs(5)));
    assert!(nb.ping_within("fd00:85::10", Duration::from_secs(5)));
    // Two hosts claiming one address: the second is refused.
    let ns = Netns::new("ve");
    let err = db.fails(&[
        "endpoint",
        "create",
        "--network",
        "ov",
        "--netns",
        &ns.name,
        "--ip",
        "10.85.0.10",
        "dup",
    ]);
    assert!(
        err.contains("10.85.0.10") || err.contains("host-a"),
        "{err}"
    );
    // An address picked for b skips a's.
    db.ok(&[
        "endpoint",
        "create",
        "--network",
        "ov",
        "--netns",
        &ns.name,
        "b2",
    ]);
    let b2 = db.json(&["endpoint", "inspect", "b2"]);
    assert_ne!(b2["IPAddress"], "10.85.0.10");

    // A host that dies leaves the other's table when its lease expires
    // (3 s), and comes back when it restarts.
    db.kill9();
    assert_eq!(remote(&da, "ov").len(), 4, "gone before the lease expired");
    assert!(
        wait_until(Duration::from_secs(8), || remote(&da, "ov").is_empty()),
        "b's mappings outlived its lease: {:?}",
        remote(&da, "ov")
    );
    db.spawn();
    assert!(wait_until(Duration::from_secs(5), || remote(&da, "ov")
        .len()
        == 4));
    assert!(na.ping_within("10.85.0.20", Duration::from_secs(5)));
}

#[test]
fn losing_etcd_keeps_traffic_and_catches_up_when_it_returns() {
    if !require_root("losing_etcd_keeps_traffic_and_catches_up_when_it_returns") {
        return;
    }
    let _g = shared();
    let f = Fabric::new();
    let mut etcd = Etcd::start(&f);
    let (ha, hb) = (f.host(1), f.host(2));
    let (da, db) = (
        shared_daemon(&ha, &etcd, "host-a"),
        shared_daemon(&hb, &etcd, "host-b"),
    );
    overlay(&da, "ov", 901, &["10.86.0.0/24"], true);
    assert!(wait_until(Duration::from_secs(3), || db
        .ctl(&["network", "inspect", "ov"])
        .status
        .success()));
    let (na, _) = endpoint(&da, "ov", "a1", &["10.86.0.10"], "veth");
    let (_nb, _) = endpoint(&db, "ov", "b1", &["10.86.0.20"], "tap");
    assert!(na.ping_within("10.86.0.20", Duration::from_secs(5)));
    for d in [&da, &db] {
        d.expect_log("etcd out of reach");
        d.expect_log("removed from the overlay store, kept here");
    }
    etcd.stop();
    // Established traffic does not need etcd.
    for _ in 0..3 {
        assert!(na.ping("10.86.0.20"), "traffic stopped with etcd");
    }
    // A change made meanwhile is queued on b...
    let (_nb2, _) = endpoint(&db, "ov", "b2", &["10.86.0.21"], "veth");
    assert!(!na.ping("10.86.0.21"));
    // ...and reaches a once etcd is back.
    etcd.spawn();
    assert!(
        wait_until(Duration::from_secs(15), || remote(&da, "ov").len() == 2),
        "b2 did not come across: {:?}",
        remote(&da, "ov")
    );
    assert!(na.ping_within("10.86.0.21", Duration::from_secs(5)));
}
