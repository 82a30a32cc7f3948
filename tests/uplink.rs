//! Uplinks over AF_XDP and the `transparent` and `l2bridge` network modes,
//! end to end: a vswitch host on a physical network (a Linux bridge in a
//! namespace), a machine outside with a plain IP stack, real ping, iperf3
//! and packet captures. Every test builds its own topology in namespaces of
//! its own (see [`Fabric`]) and runs its daemon inside the host namespace,
//! so no link or address of the root namespace is touched.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;
use vswitch_systests::{
    contains_bytes, frame_ips, has_steering, has_xdp, iperf3, iperf3_with, link_mac, mac_bytes,
    neighbours, require_root, tag, unique, unique_subnet, Capture, Daemon, Fabric, Netns,
    FABRIC_BRIDGE, OUTSIDE_IF,
};

const FIVE_S: Duration = Duration::from_secs(5);

/// A vswitch host on a fabric. Fields drop in order: the daemon first (it
/// removes its networks), then the endpoint namespaces, then the fabric.
struct Site {
    d: Daemon,
    eps: Vec<Netns>,
    f: Fabric,
}

impl Site {
    fn new() -> Site {
        Site::with_daemon_args(&[])
    }

    fn with_daemon_args(args: &[&str]) -> Site {
        let f = Fabric::new();
        Site {
            d: Daemon::start_in_with(&f.host, args),
            eps: Vec::new(),
            f,
        }
    }

    /// A site whose host has an uplink on a fresh wire subnet, holding
    /// `.2`, with `outside` at `.1`; returns it, the subnet, its prefix
    /// (`a.b.c`) and the uplink's name.
    fn on_wire() -> (Site, String, String, String) {
        let s = Site::new();
        let (subnet, p) = wire_subnet();
        let up = s.f.add_uplink(&[&format!("{p}.2/24")]);
        s.f.outside_addr(OUTSIDE_IF, &format!("{p}.1/24"));
        (s, subnet, p, up)
    }

    /// Creates endpoint `name` on `net` in a namespace of its own, with a
    /// static IPv4 address; returns the namespace's index in `eps`.
    fn endpoint(&mut self, net: &str, name: &str, ip: &str) -> usize {
        self.endpoint_with(net, name, &["--ip", ip])
    }

    /// [`Site::endpoint`] with the address arguments given.
    fn endpoint_with(&mut self, net: &str, name: &str, addrs: &[&str]) -> usize {
        let ns = Netns::new("e");
        let mut args = vec!["endpoint", "create", "--network", net, "--netns", &ns.name];
        args.extend_from_slice(addrs);
        args.push(name);
        self.d.ok(&args);
        self.eps.push(ns);
        self.eps.len() - 1
    }

    /// `network create -d DRIVER --subnet ... -o interface=UPLINK [extra] NAME`.
    fn network(&self, driver: &str, subnets: &[&str], uplink: &str, extra: &[&str]) -> String {
        let name = format!("{driver}{}", tag());
        let iface = format!("interface={uplink}");
        let mut args = vec!["network", "create", "-d", driver];
        for s in subnets {
            args.extend_from_slice(&["--subnet", s]);
        }
        args.extend_from_slice(&["-o", &iface]);
        args.extend_from_slice(extra);
        args.push(&name);
        self.d.ok(&args);
        name
    }

    fn mac_of(&self, endpoint: &str) -> String {
        self.d.json(&["endpoint", "inspect", endpoint])["MacAddress"]
            .as_str()
            .expect("endpoint has a MacAddress")
            .to_lowercase()
    }

    /// Checks what `port ls` says about a network's uplink port: its I/O
    /// mode `io` (`tc`, the default for the fabric's veth uplinks, or
    /// `afxdp`, with an XDP mode).
    fn assert_uplink_port(&self, net: &str, uplink: &str, io: &str) {
        let name = format!("uplink:{net}");
        let port = self
            .d
            .port(&name)
            .unwrap_or_else(|| panic!("no port {name} in {}", self.d.json(&["port", "ls"])));
        assert_eq!(port["Kind"], "Uplink", "{port}");
        assert_eq!(port["Backend"], io, "{port}");
        assert_eq!(port["Interface"], uplink, "{port}");
        let mode = port["XdpMode"].as_str().unwrap_or_default();
        if io == "afxdp" {
            assert!(
                mode == "native" || mode == "generic",
                "XdpMode is {:?}: {port}",
                port["XdpMode"]
            );
        } else {
            assert!(port.get("XdpMode").is_none(), "no XDP in tc mode: {port}");
        }
    }
}

/// The fabric's IPv4 subnet and prefix: the physical router (`outside`) is
/// .1, the vswitch host's own address on the uplink .2.
fn wire_subnet() -> (String, String) {
    unique_subnet()
}

/// An IPv6 /64 no other test of this process uses.
fn wire_subnet6() -> (String, String) {
    let p = format!(
        "fd{:02x}:{}:{}",
        unique() % 256,
        std::process::id() % 9999,
        77
    );
    (format!("{p}::/64"), p)
}

/// The MAC `outside` resolved `ip` to, waiting for the entry to settle.
fn resolved(outside: &Netns, ip: &str) -> Option<String> {
    let mut mac = None;
    vswitch_systests::wait_until(Duration::from_secs(2), || {
        mac = neighbours(outside, OUTSIDE_IF)
            .into_iter()
            .find(|(dst, _)| dst == ip)
            .and_then(|(_, lladdr)| lladdr);
        mac.is_some()
    });
    mac
}

fn ip_of(text: &str) -> IpAddr {
    text.parse().unwrap_or_else(|_| panic!("not an IP: {text}"))
}

fn throughput(outside: &Netns, ep: &Netns, ip: &str) {
    let to = iperf3(outside, ep, ip, 2);
    let from = iperf3_with(outside, ep, ip, 2, &["-R"]);
    eprintln!(
        "iperf3 outside -> {ip}: {:.2} Gbit/s, {ip} -> outside: {:.2} Gbit/s",
        to / 1e9,
        from / 1e9
    );
    assert!(to > 10e6, "TCP from outside to {ip} too slow: {to} bit/s");
    assert!(
        from > 10e6,
        "TCP from {ip} to outside too slow: {from} bit/s"
    );
}

#[test]
fn transparent_endpoints_are_on_the_wire_with_their_own_macs() {
    if !require_root("transparent_endpoints_are_on_the_wire_with_their_own_macs") {
        return;
    }
    let (mut s, subnet, p, up) = Site::on_wire();
    let gw = format!("{p}.1");
    // The AF_XDP mode, which veth uplinks do not get by default.
    let net = s.network(
        "transparent",
        &[&subnet],
        &up,
        &["--gateway", &gw, "-o", "uplink_io=afxdp"],
    );
    s.assert_uplink_port(&net, &up, "afxdp");
    assert!(has_xdp(&s.f.host, &up), "no XDP program on {up}");
    let a = s.endpoint(&net, "tra", &format!("{p}.10"));
    let b = s.endpoint(&net, "trb", &format!("{p}.11"));

    for ip in [format!("{p}.10"), format!("{p}.11")] {
        assert!(
            s.f.outside.ping_within(&ip, FIVE_S),
            "outside cannot ping transparent endpoint {ip}"
        );
    }
    assert!(
        s.eps[a].ping(&gw),
        "endpoint cannot ping the router outside"
    );
    assert!(
        s.f.outside.ping(&format!("{p}.2")),
        "the host lost its own address on the uplink"
    );
    throughput(&s.f.outside, &s.eps[b], &format!("{p}.11"));

    // N MACs on the wire: each endpoint IP resolves to that endpoint's MAC.
    let uplink_mac = link_mac(&s.f.host, &up);
    for (ep, ip) in [("tra", format!("{p}.10")), ("trb", format!("{p}.11"))] {
        let mac = s.mac_of(ep);
        assert_ne!(mac, uplink_mac);
        assert_eq!(
            resolved(&s.f.outside, &ip).as_deref(),
            Some(mac.as_str()),
            "outside's neighbour entry for {ip} is not endpoint {ep}'s MAC; table: {:?}",
            neighbours(&s.f.outside, OUTSIDE_IF)
        );
    }
}

#[test]
fn l2bridge_endpoints_share_the_uplink_mac_on_the_wire() {
    if !require_root("l2bridge_endpoints_share_the_uplink_mac_on_the_wire") {
        return;
    }
    let mut s = Site::new();
    let (subnet, p) = wire_subnet();
    let (subnet6, p6) = wire_subnet6();
    let up =
        s.f.add_uplink(&[&format!("{p}.2/24"), &format!("{p6}::2/64")]);
    s.f.outside_addr(OUTSIDE_IF, &format!("{p}.1/24"));
    s.f.outside_addr(OUTSIDE_IF, &format!("{p6}::1/64"));
    let gw = format!("{p}.1");
    let gw6 = format!("{p6}::1");
    let net = s.network(
        "l2bridge",
        &[&subnet, &subnet6],
        &up,
        &["--gateway", &gw, "--gateway", &gw6],
    );
    s.assert_uplink_port(&net, &up, "tc");
    assert!(
        !has_xdp(&s.f.host, &up),
        "tc mode attaches no XDP to {up} (it would cost the veth its GSO)"
    );
    assert!(has_steering(&s.f.host, &up), "no TC steering on {up}");
    let inspect = s.d.json(&["network", "inspect", &net]);
    assert_eq!(inspect["State"], "Up", "{inspect}");
    assert!(
        inspect.get("HostInterface").is_none(),
        "the host has an address in {subnet}, so no host port is needed: {inspect}"
    );
    // Static addresses: the daemon cannot know which addresses other
    // machines on the wire hold (here .1/::1 outside and .2/::2 the host).
    let a6 = format!("{p6}::10");
    s.endpoint_with(&net, "l2a", &["--ip", &format!("{p}.10"), "--ipv6", &a6]);
    let b = s.endpoint(&net, "l2b", &format!("{p}.11"));
    let ep_macs = [s.mac_of("l2a"), s.mac_of("l2b")];
    let uplink_mac = link_mac(&s.f.host, &up);

    let cap = Capture::start(&s.f.fabric, FABRIC_BRIDGE);
    let ips = [format!("{p}.10"), format!("{p}.11"), a6.clone()];
    for ip in &ips {
        assert!(
            s.f.outside.ping_within(ip, FIVE_S),
            "outside cannot ping l2bridge endpoint {ip}"
        );
    }
    assert!(
        s.eps[b].ping(&gw),
        "endpoint cannot ping the router outside"
    );
    throughput(&s.f.outside, &s.eps[b], &format!("{p}.11"));
    cap.sync(&s.f.outside, &format!("{p}.2"));

    // 1 MAC, N IPs: every endpoint address resolves to the uplink's MAC.
    for ip in &ips {
        assert_eq!(
            resolved(&s.f.outside, ip).as_deref(),
            Some(uplink_mac.as_str()),
            "outside's neighbour entry for {ip} is not the uplink's MAC {uplink_mac}; table: {:?}",
            neighbours(&s.f.outside, OUTSIDE_IF)
        );
    }
    let table = neighbours(&s.f.outside, OUTSIDE_IF);
    for mac in &ep_macs {
        assert!(
            !table
                .iter()
                .any(|(_, m)| m.as_deref() == Some(mac.as_str())),
            "endpoint MAC {mac} leaked into outside's neighbour table: {table:?}"
        );
    }

    // Nothing on the wire carries an endpoint MAC: not in Ethernet headers,
    // nor in ARP or NDP payloads. The traffic itself was captured.
    let frames = cap.frames();
    let ep_ips: Vec<IpAddr> = ips.iter().map(|i| ip_of(i)).collect();
    let carrying = frames
        .iter()
        .filter(|f| frame_ips(f).iter().any(|a| ep_ips.contains(a)))
        .count();
    assert!(
        carrying > 10,
        "the capture on the fabric holds only {carrying} frames to or from the endpoints"
    );
    for mac in &ep_macs {
        let bytes = mac_bytes(mac);
        let leaks = frames.iter().filter(|f| contains_bytes(f, &bytes)).count();
        assert_eq!(
            leaks,
            0,
            "{leaks} of {} frames on the fabric carry endpoint MAC {mac}",
            frames.len()
        );
    }
}

#[test]
fn l2bridge_same_host_traffic_stays_off_the_wire() {
    if !require_root("l2bridge_same_host_traffic_stays_off_the_wire") {
        return;
    }
    let (mut s, subnet, p, up) = Site::on_wire();
    // Learned MACs age out after a second: unicast to an endpoint that has
    // gone quiet must still not be flooded onto the wire.
    let net = s.network(
        "l2bridge",
        &[&subnet],
        &up,
        &["--gateway", &format!("{p}.1"), "-o", "fdb_aging=1"],
    );
    let a = s.endpoint(&net, "sha", &format!("{p}.10"));
    s.endpoint(&net, "shb", &format!("{p}.11"));
    let (ip_a, ip_b) = (format!("{p}.10"), format!("{p}.11"));

    let cap = Capture::start(&s.f.fabric, FABRIC_BRIDGE);
    assert!(
        s.eps[a].ping_within(&ip_b, FIVE_S),
        "endpoint A cannot ping endpoint B on the same host"
    );
    let out = s.eps[a].ok(&["ping", "-c5", "-i0.2", "-W1", &ip_b]);
    assert!(out.contains(" 0% packet loss"), "{out}");
    let aged = vswitch_systests::wait_until(FIVE_S, || {
        s.d.json(&["fdb", "show", &net])
            .as_array()
            .unwrap()
            .is_empty()
    });
    assert!(aged, "learned MACs did not age out");
    let out = s.eps[a].ok(&["ping", "-c1", "-W1", &ip_b]);
    assert!(out.contains(" 0% packet loss"), "{out}");
    cap.sync(&s.f.outside, &format!("{p}.2"));

    let ours = [ip_of(&ip_a), ip_of(&ip_b)];
    let frames = cap.frames();
    let leaked: Vec<&Vec<u8>> = frames
        .iter()
        .filter(|f| frame_ips(f).iter().any(|a| ours.contains(a)))
        .collect();
    assert!(
        leaked.is_empty(),
        "{} of {} frames on the fabric carry {ip_a} or {ip_b} (same-host traffic must be \
         bridged locally); first: {:02x?}",
        leaked.len(),
        frames.len(),
        leaked.first()
    );
}

/// The fabric's uplink peers keep their default offloads (TX checksum, TX
/// VLAN): frames reach the uplink with partial L4 checksums and their VLAN
/// tag out of band. TCP both ways, IPv4 and IPv6, on a VLAN, through a
/// transparent network: before the switch recognised both (issue 6 item
/// 4), no TCP connection got through at all.
#[test]
fn transparent_vlan_tcp_with_the_peers_default_offloads() {
    if !require_root("transparent_vlan_tcp_with_the_peers_default_offloads") {
        return;
    }
    let mut s = Site::new();
    let (s30, p30) = wire_subnet();
    let (s6, p6) = wire_subnet6();
    let up = s.f.add_uplink(&[]);
    let v30 = s.f.outside_vlan(30);
    s.f.outside_addr(&v30, &format!("{p30}.1/24"));
    s.f.outside.ok(&[
        "ip",
        "addr",
        "add",
        &format!("{p6}::1/64"),
        "dev",
        &v30,
        "nodad",
    ]);
    let net = s.network("transparent", &[&s30, &s6], &up, &["-o", "vlanid=30"]);
    let (ip4, ip6) = (format!("{p30}.10"), format!("{p6}::10"));
    let e = s.endpoint_with(&net, "trv", &["--ip", &ip4, "--ipv6", &ip6]);
    assert!(
        s.f.outside.ping_within(&ip4, FIVE_S),
        "outside cannot reach the transparent endpoint over VLAN 30"
    );
    throughput(&s.f.outside, &s.eps[e], &ip4);
    assert!(
        s.f.outside.ping_within(&ip6, FIVE_S),
        "outside cannot reach the transparent endpoint's IPv6 address over VLAN 30"
    );
    throughput(&s.f.outside, &s.eps[e], &ip6);
    // The peer's checksum offload was met, and counted where users look.
    let stats = s.d.json(&["stats", &format!("uplink:{net}")]);
    assert!(
        stats[0]["RxPartialChecksums"].as_u64().unwrap_or(0) > 0,
        "no partial checksum counted on the uplink port: {stats}"
    );
}

#[test]
fn l2bridge_vlans_are_isolated_on_one_uplink() {
    if !require_root("l2bridge_vlans_are_isolated_on_one_uplink") {
        return;
    }
    let mut s = Site::new();
    let (_, p0) = wire_subnet();
    let (s10, p10) = wire_subnet();
    let (s20, p20) = wire_subnet();
    let up = s.f.add_uplink(&[&format!("{p0}.2/24")]);
    s.f.outside_addr(OUTSIDE_IF, &format!("{p0}.1/24"));
    let v10 = s.f.outside_vlan(10);
    let v20 = s.f.outside_vlan(20);
    s.f.outside_addr(&v10, &format!("{p10}.3/24"));
    s.f.outside_addr(&v20, &format!("{p20}.3/24"));
    let n10 = s.network("l2bridge", &[&s10], &up, &["-o", "vlanid=10"]);
    let n20 = s.network("l2bridge", &[&s20], &up, &["-o", "vlanid=20"]);
    for n in [&n10, &n20] {
        let inspect = s.d.json(&["network", "inspect", n]);
        assert_eq!(inspect["State"], "Up", "{inspect}");
        assert!(
            inspect["HostInterface"].is_string(),
            "the host has no address in {n}'s subnet, so a host port holds its gateway: {inspect}"
        );
    }
    let (ip10, ip20) = (format!("{p10}.10"), format!("{p20}.10"));
    let e10 = s.endpoint(&n10, "v10", &ip10);
    let e20 = s.endpoint(&n20, "v20", &ip20);

    assert!(
        s.f.outside.ping_within(&ip10, FIVE_S),
        "outside cannot reach the VLAN 10 endpoint over {v10}"
    );
    assert!(
        s.f.outside.ping_within(&ip20, FIVE_S),
        "outside cannot reach the VLAN 20 endpoint over {v20}"
    );
    // TCP both ways over a VLAN: super-frames leave tagged and whole.
    throughput(&s.f.outside, &s.eps[e10], &ip10);

    // Each endpoint, asked for over the other VLAN or untagged, must not
    // answer, and must not even see the question.
    let cap10 = Capture::start(&s.eps[e10], "eth0");
    let cap20 = Capture::start(&s.eps[e20], "eth0");
    for (ip, wrong, what) in [
        (&ip10, &v20, "VLAN 20"),
        (&ip10, &OUTSIDE_IF.to_owned(), "untagged"),
        (&ip20, &v10, "VLAN 10"),
        (&ip20, &OUTSIDE_IF.to_owned(), "untagged"),
    ] {
        let host_route = format!("{ip}/32");
        s.f.outside
            .ok(&["ip", "route", "replace", &host_route, "dev", wrong]);
        let _ = s.f.outside.exec(&["ip", "neigh", "flush", "dev", wrong]);
        for _ in 0..2 {
            assert!(
                !s.f.outside.ping(ip),
                "{ip} answered over {what} ({wrong}): VLANs are not isolated"
            );
        }
        s.f.outside.ok(&["ip", "route", "del", &host_route]);
    }
    cap10.sync(&s.f.outside, &ip10);
    cap20.sync(&s.f.outside, &ip20);
    let foreign = [
        ip_of(&format!("{p0}.1")),
        ip_of(&format!("{p20}.3")),
        ip_of(&format!("{p10}.3")),
    ];
    for (cap, mine, name) in [(&cap10, &foreign[2], "v10"), (&cap20, &foreign[1], "v20")] {
        let frames = cap.frames();
        let leaked = frames
            .iter()
            .filter(|f| {
                frame_ips(f)
                    .iter()
                    .any(|a| a != mine && foreign.contains(a))
            })
            .count();
        assert_eq!(
            leaked, 0,
            "endpoint {name} received {leaked} frames sent over another VLAN or untagged"
        );
    }
    // The right VLAN still works after all that.
    assert!(s.f.outside.ping(&ip10) && s.f.outside.ping(&ip20));
}

#[test]
fn host_keeps_its_own_address_on_the_uplink() {
    if !require_root("host_keeps_its_own_address_on_the_uplink") {
        return;
    }
    let mut s = Site::new();
    let (subnet, p) = wire_subnet();
    let host_ip = format!("{p}.2");
    let up = s.f.add_uplink(&[&format!("{host_ip}/24")]);
    s.f.outside_addr(OUTSIDE_IF, &format!("{p}.1/24"));
    let net = s.network(
        "l2bridge",
        &[&subnet],
        &up,
        &["--gateway", &format!("{p}.1")],
    );
    s.endpoint(&net, "hk", &format!("{p}.10"));
    assert!(
        has_steering(&s.f.host, &up),
        "no steering program on the uplink {up}"
    );
    assert!(s.f.outside.ping_within(&format!("{p}.10"), FIVE_S));
    assert!(
        s.f.outside.ping_within(&host_ip, FIVE_S),
        "outside cannot ping the host's own address {host_ip} while the switch runs"
    );
    let bps = iperf3(&s.f.outside, &s.f.host, &host_ip, 2);
    eprintln!("iperf3 outside -> host {host_ip}: {:.2} Gbit/s", bps / 1e9);
    assert!(
        bps > 10e6,
        "TCP to the host's own address too slow: {bps} bit/s"
    );
    // The endpoint still works after the host's traffic.
    assert!(s.f.outside.ping(&format!("{p}.10")));
}

#[test]
fn bad_uplink_requests_are_refused_unchanged() {
    if !require_root("bad_uplink_requests_are_refused_unchanged") {
        return;
    }
    let s = Site::new();
    let up_a = s.f.add_uplink(&[]);
    let up_b = s.f.add_uplink(&[]);
    let up_c = s.f.add_uplink(&[]);
    let sub = || unique_subnet().0;
    let create = |driver: &str, opts: &[&str]| {
        let subnet = sub();
        let mut args: Vec<String> = ["network", "create", "-d", driver, "--subnet", &subnet]
            .iter()
            .map(|a| a.to_string())
            .collect();
        for o in opts {
            args.push("-o".into());
            args.push(o.to_string());
        }
        args.push(format!("bad{}", tag()));
        args
    };
    let refuse = |driver: &str, opts: &[&str], field: &str| {
        let args = create(driver, opts);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        s.d.refused(&args, field);
    };

    refuse("transparent", &["interface=nosuch0"], "options.interface");
    refuse("l2bridge", &["interface=nosuch0"], "options.interface");
    refuse("transparent", &["interface=lo"], "options.interface");
    refuse("l2bridge", &["interface=lo"], "options.interface");
    for bad in ["0", "4095", "ten", "-1", "99999"] {
        refuse(
            "l2bridge",
            &[&format!("interface={up_c}"), &format!("vlanid={bad}")],
            "options.vlanid",
        );
    }
    refuse(
        "internal",
        &[&format!("interface={up_c}")],
        "options.interface",
    );
    refuse(
        "private",
        &[&format!("interface={up_c}")],
        "options.interface",
    );

    // A transparent network owns its interface...
    s.network("transparent", &[&sub()], &up_a, &[]);
    refuse(
        "transparent",
        &[&format!("interface={up_a}")],
        "options.interface",
    );
    refuse(
        "l2bridge",
        &[&format!("interface={up_a}")],
        "options.interface",
    );
    refuse(
        "l2bridge",
        &[&format!("interface={up_a}"), "vlanid=30"],
        "options.interface",
    );
    // ...while l2bridge networks share one, on different VLANs, and then
    // it is not free for a transparent network.
    s.network("l2bridge", &[&sub()], &up_b, &["-o", "vlanid=10"]);
    s.network("l2bridge", &[&sub()], &up_b, &["-o", "vlanid=20"]);
    refuse(
        "transparent",
        &[&format!("interface={up_b}")],
        "options.interface",
    );
    refuse(
        "transparent",
        &[&format!("interface={up_b}"), "vlanid=30"],
        "options.interface",
    );
    // Networks sharing an uplink share its I/O mode: up_b runs tc, the
    // default for a veth.
    refuse(
        "l2bridge",
        &[&format!("interface={up_b}"), "vlanid=30", "uplink_io=afxdp"],
        "options.uplink_io",
    );
    s.network(
        "l2bridge",
        &[&sub()],
        &up_b,
        &["-o", "vlanid=40", "-o", "uplink_io=tc"],
    );
    for bad in ["xdp", "TC", ""] {
        refuse(
            "l2bridge",
            &[&format!("interface={up_c}"), &format!("uplink_io={bad}")],
            "options.uplink_io",
        );
    }
    refuse("private", &["uplink_io=tc"], "options.uplink_io");

    // An endpoint may not take the uplink's own MAC: every frame for the
    // host on that interface would be steered to it.
    let tr =
        s.d.json(&["network", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["Type"] == "transparent")
            .map(|n| n["Name"].as_str().unwrap().to_owned())
            .expect("the transparent network");
    let ns = Netns::new("m");
    let uplink_mac = link_mac(&s.f.host, &up_a);
    s.d.refused(
        &[
            "endpoint",
            "create",
            "--network",
            &tr,
            "--netns",
            &ns.name,
            "--mac",
            &uplink_mac,
            "um",
        ],
        "mac",
    );
}

#[test]
fn deleted_uplink_degrades_its_network_only() {
    if !require_root("deleted_uplink_degrades_its_network_only") {
        return;
    }
    let mut s = Site::new();
    let (s1, p1) = wire_subnet();
    let (s2, p2) = wire_subnet();
    let up_a = s.f.add_uplink(&[&format!("{p1}.2/24")]);
    let up_b = s.f.add_uplink(&[&format!("{p2}.2/24")]);
    s.f.outside_addr(OUTSIDE_IF, &format!("{p1}.1/24"));
    s.f.outside_addr(OUTSIDE_IF, &format!("{p2}.1/24"));
    let n1 = s.network("l2bridge", &[&s1], &up_a, &[]);
    let n2 = s.network("l2bridge", &[&s2], &up_b, &[]);
    let a1 = s.endpoint(&n1, "dga", &format!("{p1}.10"));
    s.endpoint(&n1, "dgb", &format!("{p1}.11"));
    s.endpoint(&n2, "dgc", &format!("{p2}.10"));
    assert!(s.f.outside.ping_within(&format!("{p1}.10"), FIVE_S));
    assert!(s.f.outside.ping_within(&format!("{p2}.10"), FIVE_S));

    s.f.host.ok(&["ip", "link", "del", &up_a]);

    let mut state = Value::Null;
    let degraded = vswitch_systests::wait_until(FIVE_S, || {
        state = s.d.network_state(&n1);
        state["Degraded"].is_object()
    });
    assert!(
        degraded,
        "network {n1} is not Degraded 5 s after its uplink was deleted: State = {state}"
    );
    let reason = &state["Degraded"];
    let text = reason["Reason"].as_str().or(reason["reason"].as_str());
    assert!(
        text.is_some_and(|r| !r.is_empty()),
        "Degraded without a reason: {state}"
    );
    assert_eq!(s.d.network_state(&n2), "Up", "the other network changed");
    s.d.ok(&["network", "ls"]);
    s.d.ok(&["port", "ls"]);

    assert!(
        s.f.outside.ping_within(&format!("{p2}.10"), FIVE_S),
        "endpoint of the other network unreachable after {up_a} was deleted"
    );
    assert!(
        s.eps[a1].ping_within(&format!("{p1}.11"), FIVE_S),
        "endpoints of the degraded network no longer talk to each other"
    );
    for ep in ["dga", "dgb"] {
        s.d.ok(&["endpoint", "rm", ep]);
    }
    s.d.ok(&["network", "rm", &n1]);
}

#[test]
fn l2bridge_endpoint_reachable_again_after_kill9_and_restart() {
    if !require_root("l2bridge_endpoint_reachable_again_after_kill9_and_restart") {
        return;
    }
    let (mut s, subnet, p, up) = Site::on_wire();
    let net = s.network(
        "l2bridge",
        &[&subnet],
        &up,
        &["--gateway", &format!("{p}.1")],
    );
    s.endpoint(&net, "k9", &format!("{p}.10"));
    let ep = format!("{p}.10");
    assert!(s.f.outside.ping_within(&ep, FIVE_S));

    s.d.kill9();
    assert!(
        s.f.outside.ping_within(&format!("{p}.2"), FIVE_S),
        "the host's own address is unreachable while vswitchd is down"
    );
    s.d.spawn();
    assert!(
        s.f.outside.ping_within(&ep, FIVE_S),
        "endpoint {ep} not reachable from outside within 5 s of the restart"
    );
    s.assert_uplink_port(&net, &up, "tc");
    assert_eq!(s.d.network_state(&net), "Up");
    assert!(s.f.outside.ping(&format!("{p}.2")), "host address lost");
}

#[test]
fn removing_the_network_removes_the_steering_program() {
    if !require_root("removing_the_network_removes_the_steering_program") {
        return;
    }
    let (mut s, subnet, p, up) = Site::on_wire();
    let net = s.network("l2bridge", &[&subnet], &up, &[]);
    s.endpoint(&net, "rx", &format!("{p}.10"));
    assert!(has_steering(&s.f.host, &up), "no XDP program on {up}");
    s.d.ok(&["endpoint", "rm", "rx"]);
    s.d.ok(&["network", "rm", &net]);
    assert!(
        !has_steering(&s.f.host, &up),
        "steering program left on {up} after network rm"
    );
    assert!(
        s.f.outside.ping_within(&format!("{p}.2"), FIVE_S),
        "the host lost its own address on {up}"
    );
}

#[test]
fn clean_stop_leaves_the_program_unless_told_to_detach() {
    if !require_root("clean_stop_leaves_the_program_unless_told_to_detach") {
        return;
    }
    // Default: the program stays attached (passing everything to the host)
    // and the next daemon replaces it.
    let (mut s, subnet, p, up) = Site::on_wire();
    let net = s.network("l2bridge", &[&subnet], &up, &[]);
    s.endpoint(&net, "st", &format!("{p}.10"));
    assert!(s.d.terminate().success());
    assert!(
        has_steering(&s.f.host, &up),
        "program gone although --detach-on-exit was not given"
    );
    assert!(
        s.f.outside.ping_within(&format!("{p}.2"), FIVE_S),
        "the host's own address stopped working with the daemon down"
    );
    s.d.spawn();
    assert!(
        s.f.outside.ping_within(&format!("{p}.10"), FIVE_S),
        "endpoint not reachable after the restart replaced the program"
    );

    // --detach-on-exit: a clean stop removes it.
    let mut s = Site::with_daemon_args(&["--detach-on-exit"]);
    let (subnet, p) = wire_subnet();
    let up = s.f.add_uplink(&[&format!("{p}.2/24")]);
    let net = s.network("l2bridge", &[&subnet], &up, &[]);
    s.endpoint(&net, "sd", &format!("{p}.10"));
    assert!(has_steering(&s.f.host, &up));
    assert!(s.d.terminate().success());
    assert!(
        !has_steering(&s.f.host, &up),
        "--detach-on-exit left the program on {up}"
    );
}

#[test]
fn l2bridge_on_its_own_subnet_is_routed_by_the_host() {
    if !require_root("l2bridge_on_its_own_subnet_is_routed_by_the_host") {
        return;
    }
    // The wire is one subnet, the network another: the network's gateway
    // lives on a host port, and the host routes between it and the uplink.
    let mut s = Site::new();
    let (_, wire) = wire_subnet();
    let (subnet, p) = wire_subnet();
    let host_ip = format!("{wire}.2");
    let up = s.f.add_uplink(&[&format!("{host_ip}/24")]);
    s.f.outside_addr(OUTSIDE_IF, &format!("{wire}.1/24"));
    s.f.outside
        .ok(&["ip", "route", "add", &subnet, "via", &host_ip]);
    let net = s.network("l2bridge", &[&subnet], &up, &[]);
    let info = s.d.json(&["network", "inspect", &net]);
    let host_if = info["HostInterface"]
        .as_str()
        .unwrap_or_else(|| panic!("no host port on a subnet of its own: {info}"));
    assert_eq!(
        info["Subnets"][0]["GatewayAddress"],
        format!("{p}.1"),
        "{info}"
    );
    let addr = s.f.host.ok(&["ip", "-4", "addr", "show", "dev", host_if]);
    assert!(
        addr.contains(&format!("{p}.1/24")),
        "host port lacks the gateway: {addr}"
    );

    let ep = s.endpoint(&net, "rt", &format!("{p}.10"));
    assert!(
        s.eps[ep].ping_within(&format!("{wire}.1"), FIVE_S),
        "endpoint cannot reach the outside host through its gateway"
    );
    assert!(
        s.f.outside.ping_within(&format!("{p}.10"), FIVE_S),
        "outside cannot reach the endpoint through the host"
    );
}
