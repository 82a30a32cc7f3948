//! End to end through vswitchd: real namespaces, real TAPs, real ping and
//! iperf3. Each test runs its own daemon and cleans up after itself.

use std::time::Duration;

use vswitch_systests::{iperf3, require_root, run, unique_subnet, wait_until, Daemon, Netns};

/// A network with two endpoints in two namespaces.
struct Pair {
    d: Daemon,
    net: String,
    a: Netns,
    b: Netns,
    prefix: String,
}

impl Pair {
    fn new(driver: &str, extra: &[&str]) -> Pair {
        let d = Daemon::start();
        let (subnet, prefix) = unique_subnet();
        let net = format!("net{}", vswitch_systests::tag());
        let mut args = vec!["network", "create", "-d", driver, "--subnet", &subnet];
        args.extend_from_slice(extra);
        args.push(&net);
        d.ok(&args);
        let a = Netns::new("a");
        let b = Netns::new("b");
        d.endpoint(&net, &a, &["--ip", &format!("{prefix}.10")], "epa");
        d.endpoint(&net, &b, &["--ip", &format!("{prefix}.11")], "epb");
        Pair {
            d,
            net,
            a,
            b,
            prefix,
        }
    }

    fn ip(&self, host: u8) -> String {
        format!("{}.{host}", self.prefix)
    }
}

fn counter(d: &Daemon, port: &str, field: &str) -> u64 {
    d.json(&["stats", port])[0][field].as_u64().unwrap()
}

fn drop_count(d: &Daemon, port: &str, reason: &str) -> u64 {
    d.json(&["stats", port])[0]["Drops"][reason]
        .as_u64()
        .unwrap()
}

#[test]
fn endpoints_ping_each_other_and_the_host() {
    if !require_root("endpoints_ping_each_other_and_the_host") {
        return;
    }
    let p = Pair::new("internal", &[]);
    // The endpoint got its address, MAC from the pool and a default route.
    let addr = p.a.ok(&["ip", "-j", "addr", "show", "eth0"]);
    assert!(addr.contains(&p.ip(10)), "{addr}");
    assert!(addr.contains("02:15:5d"), "{addr}");
    let route = p.a.ok(&["ip", "route", "show", "default"]);
    assert!(route.contains(&format!("via {}", p.ip(1))), "{route}");

    assert!(
        p.a.ping_within(&p.ip(11), Duration::from_secs(5)),
        "a cannot ping b"
    );
    assert!(p.b.ping(&p.ip(10)), "b cannot ping a");
    // The host port holds the gateway: endpoint -> host and host -> endpoint.
    assert!(p.a.ping(&p.ip(1)), "a cannot ping the gateway");
    assert!(
        run("ping", &["-c1", "-W1", &p.ip(11)]).status.success(),
        "host cannot ping b"
    );

    // What the user sees: learned MACs, counters, ports.
    let fdb = p.d.json(&["fdb", "show", &p.net]);
    let ports: Vec<&str> = fdb
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Port"].as_str().unwrap())
        .collect();
    assert!(ports.contains(&"epa") && ports.contains(&"epb"), "{fdb}");
    assert!(counter(&p.d, "epa", "RxPackets") >= 2);
    assert!(counter(&p.d, "epb", "TxPackets") >= 2);
    let port_ls = p.d.json(&["port", "ls"]);
    assert_eq!(port_ls.as_array().unwrap().len(), 3, "{port_ls}"); // host + 2 endpoints
}

#[test]
fn ipv6_and_iperf3_cross_the_switch() {
    if !require_root("ipv6_and_iperf3_cross_the_switch") {
        return;
    }
    let six = format!(
        "fd{:02x}:{}::/64",
        vswitch_systests::unique() % 256,
        std::process::id() % 9999
    );
    let p = Pair::new("private", &["--subnet", &six]);
    let b = p.d.json(&["endpoint", "inspect", "epb"]);
    let b6 = b["IPv6Address"]
        .as_str()
        .expect("endpoint got an IPv6 address")
        .to_owned();
    assert!(
        p.a.ping_within(&b6, Duration::from_secs(5)),
        "IPv6 ping (with NDP) failed"
    );
    // Link-local too: NDP multicast is flooded like any frame.
    assert!(p.a.ping_within(&p.ip(11), Duration::from_secs(5)));

    let bps = iperf3(&p.a, &p.b, &p.ip(11), 2);
    eprintln!("iperf3 through vswitch: {:.2} Gbit/s", bps / 1e9);
    assert!(bps > 100e6, "TCP through the switch too slow: {bps} bit/s");
}

#[test]
fn networks_are_isolated() {
    if !require_root("networks_are_isolated") {
        return;
    }
    let d = Daemon::start();
    let (s1, p1) = unique_subnet();
    let (s2, p2) = unique_subnet();
    let n1 = format!("iso1{}", vswitch_systests::tag());
    let n2 = format!("iso2{}", vswitch_systests::tag());
    d.ok(&["network", "create", "-d", "private", "--subnet", &s1, &n1]);
    d.ok(&["network", "create", "-d", "private", "--subnet", &s2, &n2]);
    let a = Netns::new("ia");
    let b = Netns::new("ib");
    let c = Netns::new("ic");
    d.endpoint(&n1, &a, &["--ip", &format!("{p1}.10")], "isoa");
    d.endpoint(&n1, &c, &["--ip", &format!("{p1}.12")], "isoc");
    d.endpoint(&n2, &b, &["--ip", &format!("{p2}.11")], "isob");
    // Make the other subnet look on-link from both sides: without isolation
    // ARP would resolve across networks and the ping would succeed.
    a.ok(&["ip", "route", "add", &s2, "dev", "eth0"]);
    b.ok(&["ip", "route", "add", &s1, "dev", "eth0"]);
    // Same network works...
    assert!(a.ping_within(&format!("{p1}.12"), Duration::from_secs(5)));
    let b_tx = counter(&d, "isob", "TxPackets");
    // ...the other network does not, and sees none of a's broadcasts.
    for _ in 0..3 {
        assert!(!a.ping(&format!("{p2}.11")), "a reached b across networks");
    }
    assert!(!b.ping(&format!("{p1}.10")), "b reached a across networks");
    assert_eq!(
        counter(&d, "isob", "TxPackets"),
        b_tx,
        "frames leaked into the other network"
    );
}

#[test]
fn spoofed_source_mac_is_dropped_and_counted() {
    if !require_root("spoofed_source_mac_is_dropped_and_counted") {
        return;
    }
    let p = Pair::new("private", &[]);
    assert!(p.a.ping_within(&p.ip(11), Duration::from_secs(5)));
    p.a.ok(&["ip", "link", "set", "eth0", "address", "02:99:99:00:00:01"]);
    p.a.ok(&["ip", "neigh", "flush", "all"]);
    assert!(!p.a.ping(&p.ip(11)), "spoofed MAC got through");
    assert!(drop_count(&p.d, "epa", "mac_spoofing") > 0);
    // A spoofed IP is dropped too.
    let own_mac = p.d.json(&["endpoint", "inspect", "epa"])["MacAddress"].clone();
    let own_mac = own_mac.as_str().unwrap();
    p.a.ok(&["ip", "link", "set", "eth0", "address", own_mac]);
    p.a.ok(&["ip", "addr", "flush", "dev", "eth0"]);
    p.a.ok(&[
        "ip",
        "addr",
        "add",
        &format!("{}/24", p.ip(99)),
        "dev",
        "eth0",
    ]);
    assert!(!p.a.ping(&p.ip(11)), "spoofed IP got through");
    assert!(drop_count(&p.d, "epa", "ip_spoofing") > 0);
}

#[test]
fn allow_spoofing_lets_a_router_endpoint_forward() {
    if !require_root("allow_spoofing_lets_a_router_endpoint_forward") {
        return;
    }
    let d = Daemon::start();
    let (s, p) = unique_subnet();
    let net = format!("sp{}", vswitch_systests::tag());
    d.ok(&["network", "create", "-d", "private", "--subnet", &s, &net]);
    let a = Netns::new("sa");
    let b = Netns::new("sb");
    d.endpoint(
        &net,
        &a,
        &["--ip", &format!("{p}.10"), "--allow-spoofing"],
        "spa",
    );
    d.endpoint(&net, &b, &["--ip", &format!("{p}.11")], "spb");
    a.ok(&["ip", "addr", "add", &format!("{p}.50/24"), "dev", "eth0"]);
    assert!(
        b.ping_within(&format!("{p}.50"), Duration::from_secs(5)),
        "allowed endpoint was filtered"
    );
}

#[test]
fn none_driver_gives_loopback_only() {
    if !require_root("none_driver_gives_loopback_only") {
        return;
    }
    let d = Daemon::start();
    let net = format!("none{}", vswitch_systests::tag());
    d.ok(&["network", "create", "-d", "none", &net]);
    let a = Netns::new("na");
    a.ok(&["ip", "link", "set", "lo", "down"]);
    d.endpoint(&net, &a, &[], "nep");
    let links = a.ok(&["ip", "-o", "link"]);
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(a.ping("127.0.0.1"), "loopback is not up");
    assert!(d.json(&["port", "ls"]).as_array().unwrap().is_empty());
}

#[test]
fn kill9_and_restart_restores_everything() {
    if !require_root("kill9_and_restart_restores_everything") {
        return;
    }
    let mut p = Pair::new("internal", &[]);
    assert!(p.a.ping_within(&p.ip(11), Duration::from_secs(5)));
    let before = (p.d.json(&["network", "ls"]), p.d.json(&["endpoint", "ls"]));
    p.d.kill9();
    // The endpoints keep their configuration while the switch is down.
    assert!(p.a.ok(&["ip", "addr", "show", "eth0"]).contains(&p.ip(10)));
    p.d.spawn();
    let after = (p.d.json(&["network", "ls"]), p.d.json(&["endpoint", "ls"]));
    assert_eq!(before, after, "state differs after restart");
    assert!(
        p.a.ping_within(&p.ip(11), Duration::from_secs(5)),
        "traffic did not resume within 5 s of the restart"
    );
    assert!(p.a.ping(&p.ip(1)), "host port not restored");
    // A second endpoint can be added after the restart without collisions.
    let c = Netns::new("c");
    let ep = p.d.json(&[
        "endpoint",
        "create",
        "--network",
        &p.net,
        "--netns",
        &c.name,
        "epc",
    ]);
    assert_ne!(ep["IPAddress"], before.1[0]["IPAddress"]);
    p.d.ok(&["endpoint", "rm", "epc"]);
}

#[test]
fn port_ids_survive_a_restart_and_are_not_reused() {
    if !require_root("port_ids_survive_a_restart_and_are_not_reused") {
        return;
    }
    let mut p = Pair::new("internal", &[]);
    // A gap in the ids: a restart that renumbered in order would close it.
    let c = Netns::new("c");
    p.d.endpoint(&p.net, &c, &[], "epc");
    p.d.ok(&["endpoint", "rm", "epa"]);
    let before = p.d.json(&["port", "ls"]);
    let ids: Vec<u64> = before
        .as_array()
        .unwrap()
        .iter()
        .map(|port| port["Id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{before}");
    assert!(ids.iter().all(|&id| id != 0), "{before}");
    p.d.kill9();
    p.d.spawn();
    assert_eq!(
        before,
        p.d.json(&["port", "ls"]),
        "ports differ after restart"
    );
    assert!(
        p.b.ping_within(&p.ip(1), Duration::from_secs(5)),
        "traffic did not resume within 5 s of the restart"
    );
    // epa's id stays retired.
    let a = Netns::new("a2");
    p.d.endpoint(&p.net, &a, &[], "epd");
    let epd = p.d.port("epd").unwrap();
    let id = epd["Id"].as_u64().unwrap();
    assert!(
        id > *ids.iter().max().unwrap(),
        "epd got {id}; in use or retired: {ids:?}"
    );
}

#[test]
fn clean_stop_keeps_endpoints_configured() {
    if !require_root("clean_stop_keeps_endpoints_configured") {
        return;
    }
    let mut p = Pair::new("private", &[]);
    let status = p.d.terminate();
    assert!(status.success(), "vswitchd exited with {status}");
    assert!(!p.d.socket.exists(), "socket left behind");
    let addr = p.a.ok(&["ip", "addr", "show", "eth0"]);
    assert!(
        addr.contains(&p.ip(10)),
        "endpoint lost its address on a clean stop: {addr}"
    );
    p.d.spawn();
    assert!(p.a.ping_within(&p.ip(11), Duration::from_secs(5)));
}

#[test]
fn endpoint_whose_namespace_vanished_is_detached() {
    if !require_root("endpoint_whose_namespace_vanished_is_detached") {
        return;
    }
    let mut p = Pair::new("private", &[]);
    p.d.kill9();
    let gone = std::mem::replace(&mut p.b, Netns::new("x"));
    drop(gone);
    p.d.expect_log("endpoint detached endpoint=epb");
    p.d.spawn();
    let ep = p.d.json(&["endpoint", "inspect", "epb"]);
    assert!(ep["State"]["Detached"].is_object(), "{ep}");
    let ep = p.d.json(&["endpoint", "inspect", "epa"]);
    assert_eq!(ep["State"], "Attached", "{ep}");
    // It keeps its address until removed, and can be removed.
    assert_eq!(ep["IPAddress"].as_str().unwrap(), p.ip(10));
    p.d.ok(&["endpoint", "rm", "epb"]);
}

#[test]
fn removing_an_endpoint_deletes_its_interface() {
    if !require_root("removing_an_endpoint_deletes_its_interface") {
        return;
    }
    let p = Pair::new("private", &[]);
    p.d.ok(&["endpoint", "rm", "epb"]);
    assert!(
        !p.b.exec(&["ip", "link", "show", "eth0"]).status.success(),
        "eth0 still in b"
    );
    // The address is free again.
    let c = Netns::new("c");
    let ep = p.d.json(&[
        "endpoint",
        "create",
        "--network",
        &p.net,
        "--netns",
        &c.name,
        "--ip",
        &p.ip(11),
        "epc",
    ]);
    assert_eq!(ep["IPAddress"].as_str().unwrap(), p.ip(11));
}

#[test]
fn fdb_entries_age_out() {
    if !require_root("fdb_entries_age_out") {
        return;
    }
    let p = Pair::new("private", &["-o", "fdb_aging=1"]);
    assert!(p.a.ping_within(&p.ip(11), Duration::from_secs(5)));
    assert!(!p
        .d
        .json(&["fdb", "show", &p.net])
        .as_array()
        .unwrap()
        .is_empty());
    let aged = wait_until(Duration::from_secs(5), || {
        p.d.json(&["fdb", "show", &p.net])
            .as_array()
            .unwrap()
            .is_empty()
    });
    assert!(aged, "entries still learned after the aging time");
}

#[test]
fn control_socket_is_root_only() {
    if !require_root("control_socket_is_root_only") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let d = Daemon::start();
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {:o}", mode & 0o777);
}

#[test]
fn endpoint_whose_namespace_is_deleted_while_running_is_detached() {
    if !require_root("endpoint_whose_namespace_is_deleted_while_running_is_detached") {
        return;
    }
    let mut p = Pair::new("private", &[]);
    assert!(p.a.ping_within(&p.ip(11), Duration::from_secs(5)));
    let gone = std::mem::replace(&mut p.b, Netns::new("y"));
    drop(gone);
    let detached = wait_until(Duration::from_secs(5), || {
        p.d.json(&["endpoint", "inspect", "epb"])["State"]["Detached"].is_object()
    });
    assert!(detached, "{}", p.d.json(&["endpoint", "inspect", "epb"]));
    // The daemon is fine and the other endpoint still switches.
    assert_eq!(
        p.d.json(&["endpoint", "inspect", "epa"])["State"],
        "Attached"
    );
    let c = Netns::new("c");
    p.d.endpoint(&p.net, &c, &["--ip", &p.ip(12)], "epc");
    assert!(p.a.ping_within(&p.ip(12), Duration::from_secs(5)));
    p.d.ok(&["endpoint", "rm", "epb"]);
}

#[test]
fn ipv6_first_hop_spoofing_is_blocked() {
    use vswitch_systests::{
        icmpv6_frame, link_local, mac_bytes, neighbour_advert, router_advert, send_frames,
        ALL_NODES, ALL_NODES_MAC,
    };
    if !require_root("ipv6_first_hop_spoofing_is_blocked") {
        return;
    }
    let six = format!(
        "fd{:02x}:{}::/64",
        vswitch_systests::unique() % 256,
        std::process::id() % 9999
    );
    // private: no host port, so no router advertisement can reach the
    // host's own namespace.
    let p = Pair::new("private", &["--subnet", &six]);
    let r = Netns::new("r");
    // A router: it may spoof, and its router guard is off.
    p.d.endpoint(
        &p.net,
        &r,
        &["--allow-spoofing", "--router-guard", "off"],
        "epr",
    );
    let c = Netns::new("c");
    p.d.endpoint(&p.net, &c, &[], "epc");
    let mac = |name: &str| {
        let ep = p.d.json(&["endpoint", "inspect", name]);
        mac_bytes(ep["MacAddress"].as_str().unwrap())
    };
    let (a_mac, b_mac, r_mac) = (mac("epa"), mac("epb"), mac("epr"));
    let (a_ll, b_ll, r_ll) = (
        link_local(&p.a, "eth0"),
        link_local(&p.b, "eth0"),
        link_local(&r, "eth0"),
    );
    let a_prefix: std::net::Ipv6Addr = "2001:db8:a::".parse().unwrap();
    let r_prefix: std::net::Ipv6Addr = "2001:db8:f::".parse().unwrap();

    // An endpoint that is not a router advertises itself as one.
    let ra = icmpv6_frame(
        a_mac,
        ALL_NODES_MAC,
        a_ll,
        ALL_NODES,
        &router_advert(a_mac, a_prefix),
    );
    send_frames(&p.a, "eth0", &[ra.clone(), ra.clone(), ra]);
    assert!(
        wait_until(Duration::from_secs(5), || drop_count(
            &p.d,
            "epa",
            "router_guard"
        ) >= 3),
        "router advertisements were not dropped as router_guard"
    );

    // It claims a neighbour's link-local address, which c knows.
    let b_ll_text = format!("{b_ll}%eth0");
    assert!(c.ping_within(&b_ll_text, Duration::from_secs(5)));
    let na = icmpv6_frame(
        a_mac,
        ALL_NODES_MAC,
        a_ll,
        ALL_NODES,
        &neighbour_advert(b_ll, a_mac),
    );
    let spoofed_before = drop_count(&p.d, "epa", "ip_spoofing");
    send_frames(&p.a, "eth0", &[na.clone(), na]);
    assert!(
        wait_until(Duration::from_secs(5), || drop_count(
            &p.d,
            "epa",
            "ip_spoofing"
        ) >= spoofed_before + 2),
        "a neighbour advertisement for another endpoint's address was not dropped"
    );

    // The same advertisement from an endpoint allowed to be a router does
    // reach b, which takes the route: the frames above were ones the
    // kernel accepts, and only the switch stopped them.
    let ra = icmpv6_frame(
        r_mac,
        ALL_NODES_MAC,
        r_ll,
        ALL_NODES,
        &router_advert(r_mac, r_prefix),
    );
    let routed = wait_until(Duration::from_secs(5), || {
        send_frames(&r, "eth0", std::slice::from_ref(&ra));
        p.b.ok(&["ip", "-6", "route", "show", "default"])
            .contains(&r_ll.to_string())
    });
    assert!(routed, "b ignored a router advertisement from a router");
    let routes = p.b.ok(&["ip", "-6", "route", "show"]);
    assert!(
        !routes.contains(&a_ll.to_string()) && !routes.contains("2001:db8:a:"),
        "b routes through the endpoint that spoofed a router: {routes}"
    );
    let addrs = p.b.ok(&["ip", "-6", "addr", "show", "dev", "eth0"]);
    assert!(
        !addrs.contains("2001:db8:a:"),
        "b took a SLAAC address from a: {addrs}"
    );
    let neigh = c.ok(&[
        "ip",
        "-6",
        "neigh",
        "show",
        &b_ll.to_string(),
        "dev",
        "eth0",
    ]);
    let b_mac_text: String = b_mac
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    assert!(
        neigh.contains(&b_mac_text),
        "c's neighbour entry for b was poisoned: {neigh}"
    );
}

/// `endpoint rm` deletes the TAP even when the endpoint's namespace no
/// longer has the name it was recorded under (issue 6 item 8): the daemon
/// reaches the device through its own descriptor.
#[test]
fn removing_an_endpoint_whose_namespace_lost_its_name_deletes_the_tap() {
    use vswitch_systests::KillOnDrop;
    if !require_root("removing_an_endpoint_whose_namespace_lost_its_name_deletes_the_tap") {
        return;
    }
    let d = Daemon::start();
    let (s, _) = unique_subnet();
    let net = format!("rn{}", vswitch_systests::tag());
    d.ok(&["network", "create", "-d", "private", "--subnet", &s, &net]);
    let ns = Netns::new("rn");
    d.endpoint(&net, &ns, &[], "rnep");
    // A process keeps the namespace alive after its name is gone.
    let holder = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "sleep", "60"])
        .spawn()
        .unwrap();
    let holder = KillOnDrop(holder);
    let pid = holder.0.id();
    let in_ns = |args: &[&str]| {
        let netns = format!("--net=/proc/{pid}/ns/net");
        let mut full = vec![netns.as_str()];
        full.extend_from_slice(args);
        run("nsenter", &full)
    };
    assert!(wait_until(Duration::from_secs(5), || in_ns(&[
        "ip", "link", "show", "eth0"
    ])
    .status
    .success()));
    assert!(run("ip", &["netns", "del", &ns.name]).status.success());
    d.ok(&["endpoint", "rm", "rnep"]);
    assert!(
        wait_until(Duration::from_secs(5), || !in_ns(&[
            "ip", "link", "show", "eth0"
        ])
        .status
        .success()),
        "the TAP stayed in the namespace"
    );
}
