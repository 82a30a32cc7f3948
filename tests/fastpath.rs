//! The kernel fast path of veth endpoints (`--backend veth`,
//! `xdp-prog/fastpath.bpf.c`) end to end: known unicast between two veth
//! endpoints of a network is forwarded by TC programs without vswitchd;
//! ARP, broadcasts, unknown destinations, policed ports, l2tunnel networks
//! and TAP endpoints go through the slow path; spoofed frames are dropped
//! in the kernel; forwarding goes on through a kill -9 and a restart of the
//! daemon, which adopts the pinned programs. Real namespaces, ping, iperf3
//! and raw frames; every daemon runs in a namespace of the test's own.
//!
//! Tests that run iperf3 hold [`exclusive`] (the machine has two cores);
//! the others hold [`shared`].

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vswitch_systests::{
    contains_bytes, datapath, drops, exclusive, fast_counter, fast_drops, iperf3_flowing,
    iperf3_report, mac_bytes, no_ipv6, pings, port_stats, received_rate, require_root, send_frames,
    shared, tag, udp4_frame, unique, unique_subnet, wait_until, when_quiet, write_doc, Capture,
    Daemon, Fabric, Netns, FIVE_S, OUTSIDE_IF, TEN_S,
};

// ------------------------------------------------------------------------
// Topology.

/// A daemon in a namespace of its own (`host`: its host veth ends, punt
/// TAPs and host port live there), one network, and endpoints in
/// namespaces of their own (`eps`). Fields drop in order: the daemon first
/// (it removes its endpoints and networks), then the endpoint namespaces,
/// then the daemon's namespace and whatever else the lab is made of.
struct Lab {
    d: Daemon,
    eps: Vec<Netns>,
    /// Endpoint names, in the order of `eps`.
    names: Vec<String>,
    net: String,
    prefix: String,
    host: Netns,
    /// The rest of a [`Fabric`] (outside, fabric) for an uplink network.
    _rest: Vec<Netns>,
}

impl Lab {
    /// An internal network (the gateway `.1` on the host port).
    fn internal() -> Lab {
        let host = Netns::new("fh");
        let d = Daemon::start_in(&host);
        let (subnet, prefix) = unique_subnet();
        let net = format!("fp{}", tag());
        d.ok(&[
            "network", "create", "-d", "internal", "--subnet", &subnet, &net,
        ]);
        Lab::without_endpoints(d, net, prefix, host, Vec::new())
    }

    /// An l2tunnel network on an uplink of a [`Fabric`] (the daemon runs in
    /// its host namespace, which holds `.2` on the uplink).
    fn l2tunnel() -> Lab {
        Lab::on_uplink("l2tunnel")
    }

    /// A `driver` network on an uplink of a [`Fabric`]: the daemon runs in
    /// its host namespace, which holds `.2` on the uplink; the outside host
    /// (`_rest[0]`) is the gateway `.1`.
    fn on_uplink(driver: &str) -> Lab {
        let f = Fabric::new();
        let d = Daemon::start_in(&f.host);
        let (subnet, prefix) = unique_subnet();
        let up = f.add_uplink(&[&format!("{prefix}.2/24")]);
        let net = format!("fpt{}", tag());
        let iface = format!("interface={up}");
        f.outside.ok(&[
            "ip",
            "addr",
            "add",
            &format!("{prefix}.1/24"),
            "dev",
            OUTSIDE_IF,
        ]);
        d.ok(&[
            "network",
            "create",
            "-d",
            driver,
            "--subnet",
            &subnet,
            "--gateway",
            &format!("{prefix}.1"),
            "-o",
            &iface,
            &net,
        ]);
        let Fabric {
            host,
            outside,
            fabric,
        } = f;
        Lab::without_endpoints(d, net, prefix, host, vec![outside, fabric])
    }

    fn without_endpoints(
        d: Daemon,
        net: String,
        prefix: String,
        host: Netns,
        rest: Vec<Netns>,
    ) -> Lab {
        Lab {
            d,
            eps: Vec::new(),
            names: Vec::new(),
            net,
            prefix,
            host,
            _rest: rest,
        }
    }

    fn ip(&self, host: u8) -> String {
        format!("{}.{host}", self.prefix)
    }

    /// Endpoint `name` at `.host` in a namespace of its own with IPv6 off
    /// (no router solicitations or MLD reports: the only frames it sends
    /// are the test's), `args` added to `endpoint create`; returns its
    /// index in `eps` and the endpoint as `endpoint create --json` shows
    /// it.
    fn endpoint(&mut self, name: &str, host: u8, args: &[&str]) -> (usize, Value) {
        let ns = Netns::new("fe");
        no_ipv6(&ns);
        let ip = self.ip(host);
        let mut full = vec!["--ip", ip.as_str()];
        full.extend_from_slice(args);
        let ep = self.d.endpoint(&self.net, &ns, &full, name);
        self.eps.push(ns);
        self.names.push(name.to_owned());
        (self.eps.len() - 1, ep)
    }

    /// A veth endpoint (see [`Lab::endpoint`]).
    fn veth(&mut self, name: &str, host: u8, args: &[&str]) -> (usize, Value) {
        let mut full = vec!["--backend", "veth"];
        full.extend_from_slice(args);
        self.endpoint(name, host, &full)
    }

    /// The veth endpoints most tests use: `fpa` at `.10` and `fpb` at
    /// `.11` (see [`Lab::veth`]).
    fn veth_pair(&mut self) -> [(usize, Value); 2] {
        [self.veth("fpa", 10, &[]), self.veth("fpb", 11, &[])]
    }

    /// The names of the devices in the daemon's namespace.
    fn host_links(&self) -> Vec<String> {
        let links: Value =
            serde_json::from_str(&self.host.ok(&["ip", "-j", "link", "show"])).unwrap();
        links
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
            .collect()
    }
}

/// `vse<8 hex>` and `vsp<8 hex>`: a veth endpoint's host veth end and punt
/// TAP, named after the endpoint's ID.
fn device_names(ep: &Value) -> (String, String) {
    let id: String = ep["ID"]
        .as_str()
        .unwrap_or_else(|| panic!("endpoint without an ID: {ep}"))
        .chars()
        .filter(|c| *c != '-')
        .take(8)
        .collect();
    (format!("vse{id}"), format!("vsp{id}"))
}

/// The attachments of `datapath show` as (interface, port, program,
/// attached), sorted.
fn attachments(info: &Value) -> Vec<(String, String, String, bool)> {
    let mut list: Vec<_> = info["Attachments"]
        .as_array()
        .unwrap_or_else(|| panic!("datapath show has no Attachments: {info}"))
        .iter()
        .map(|a| {
            (
                a["Interface"].as_str().unwrap_or_default().to_owned(),
                a["Port"].as_str().unwrap_or_default().to_owned(),
                a["Program"].as_str().unwrap_or_default().to_owned(),
                a["Attached"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    list.sort();
    list
}

/// What `datapath show` must list for these veth endpoints (name and
/// `endpoint create --json`): the port program on the host veth, the
/// inject program on the punt TAP, all attached.
fn expected_attachments(eps: &[(&str, &Value)]) -> Vec<(String, String, String, bool)> {
    let mut list = Vec::new();
    for (name, ep) in eps {
        let (vse, vsp) = device_names(ep);
        list.push((vse, name.to_string(), "vswitch_port".to_owned(), true));
        list.push((vsp, name.to_string(), "vswitch_inject".to_owned(), true));
    }
    list.sort();
    list
}

/// `datapath show`, checked: the programs are loaded (`origin`, `loaded`
/// or `adopted`) and attached as [`expected_attachments`] of `eps` says.
fn assert_datapath(d: &Daemon, origin: &str, eps: &[(&str, &Value)]) -> Value {
    let info = datapath(d);
    assert_eq!(info["Loaded"], true, "{info}");
    assert_eq!(info["Origin"], origin, "{info}");
    assert_eq!(attachments(&info), expected_attachments(eps), "{info}");
    info
}

// ------------------------------------------------------------------------
// Counters.

/// A snapshot of one veth endpoint's counters: the kernel's (`FastPath`)
/// and the port's totals (which include what the kernel forwarded).
#[derive(Debug, Clone, Copy)]
struct Counts {
    forwarded: u64,
    forwarded_bytes: u64,
    delivered: u64,
    punted: u64,
    rx: u64,
}

impl Counts {
    fn of(d: &Daemon, port: &str) -> Counts {
        let s = port_stats(d, port);
        let fp = &s["FastPath"];
        let field = |v: &Value, name: &str| {
            v[name]
                .as_u64()
                .unwrap_or_else(|| panic!("stats of {port} have no {name}: {s}"))
        };
        Counts {
            forwarded: field(fp, "ForwardedPackets"),
            forwarded_bytes: field(fp, "ForwardedBytes"),
            delivered: field(fp, "DeliveredPackets"),
            punted: field(fp, "PuntedPackets"),
            rx: field(&s, "RxPackets"),
        }
    }

    /// The counters of `fpa` and `fpb` (see [`Lab::veth_pair`]).
    fn pair(d: &Daemon) -> (Counts, Counts) {
        (Counts::of(d, "fpa"), Counts::of(d, "fpb"))
    }

    /// Frames received from the port that the slow path handled.
    fn slow_rx(&self) -> u64 {
        self.rx.saturating_sub(self.forwarded)
    }
}

/// `what`, `n` frames or more from one port between `before` and `after`,
/// went to the slow path: punted, none forwarded in the kernel.
fn assert_punted(what: &str, before: &Counts, after: &Counts, n: u64) {
    assert!(
        after.punted >= before.punted + n,
        "{what}: {} of {n} punted: {before:?} -> {after:?}",
        after.punted - before.punted
    );
    assert_eq!(
        after.forwarded, before.forwarded,
        "{what}: forwarded in the kernel: {before:?} -> {after:?}"
    );
}

/// `what`, `n` frames or more from one port between `before` and `after`,
/// were forwarded in the kernel.
fn assert_forwarded(what: &str, before: &Counts, after: &Counts, n: u64) {
    assert!(
        after.forwarded >= before.forwarded + n,
        "{what}: {} of {n} forwarded in the kernel: {before:?} -> {after:?}",
        after.forwarded - before.forwarded
    );
}

/// `count` pings, 0.2 s apart; true if any was answered.
fn ping_n(ns: &Netns, addr: &str, count: u32) -> bool {
    ns.exec(&[
        "ping",
        "-c",
        &count.to_string(),
        "-i",
        "0.2",
        "-W",
        "1",
        addr,
    ])
    .status
    .success()
}

// ------------------------------------------------------------------------
// Policies (HNS JSON, as in tests/policy.rs).

fn acl(id: &str, action: &str, direction: &str, rest: Value) -> Value {
    let mut settings = json!({"Id": id, "Action": action, "Direction": direction});
    if let (Some(s), Value::Object(rest)) = (settings.as_object_mut(), rest) {
        s.extend(rest);
    }
    json!({"Type": "ACL", "Settings": settings})
}

fn add_policy(d: &Daemon, endpoint: &str, doc: &Value) {
    add_policy_to(d, &["--endpoint", endpoint], doc);
}

/// `policy add OWNER --file F`; `owner` is `--endpoint EP` or
/// `--network NET`.
fn add_policy_to(d: &Daemon, owner: &[&str], doc: &Value) {
    let path = write_doc(d, doc);
    let mut args = vec!["policy", "add"];
    args.extend_from_slice(owner);
    args.extend_from_slice(&["--file", path.to_str().unwrap()]);
    d.ok(&args);
}

fn rm_policy(d: &Daemon, endpoint: &str, id: &str) {
    rm_policy_of(d, &["--endpoint", endpoint], id);
}

fn rm_policy_of(d: &Daemon, owner: &[&str], id: &str) {
    let mut args = vec!["policy", "rm"];
    args.extend_from_slice(owner);
    args.push(id);
    d.ok(&args);
}

fn hits(d: &Daemon, endpoint: &str, id: &str) -> u64 {
    let list = d.json(&["policy", "ls", "--endpoint", endpoint]);
    let p = list
        .as_array()
        .and_then(|l| l.iter().find(|p| p["ID"] == id))
        .unwrap_or_else(|| panic!("no policy {id} on {endpoint}: {list}"))
        .clone();
    p["Hits"]
        .as_u64()
        .unwrap_or_else(|| panic!("policy {id} has no Hits: {p}"))
}

// ------------------------------------------------------------------------
// 1. Known unicast in the kernel.

#[test]
fn veth_endpoints_forward_known_unicast_in_the_kernel() {
    if !require_root("veth_endpoints_forward_known_unicast_in_the_kernel") {
        return;
    }
    let _g = exclusive();
    let mut lab = Lab::internal();
    let [(a, ep_a), (b, ep_b)] = lab.veth_pair();
    assert_eq!(ep_a["Backend"], "veth", "{ep_a}");
    let ip_b = lab.ip(11);
    assert!(pings(&lab.eps[a], &ip_b), "a cannot ping b");
    assert!(pings(&lab.eps[b], &lab.ip(10)), "b cannot ping a");
    assert!(pings(&lab.eps[a], &lab.ip(1)), "a cannot ping the gateway");

    let d = &lab.d;
    let (a0, b0) = Counts::pair(d);
    let report = iperf3_report(&lab.eps[a], &lab.eps[b], &ip_b, 2, &[]);
    let (a1, b1) = Counts::pair(d);
    let bps = received_rate(&report);
    let sent = report["end"]["sum_sent"]["bytes"]
        .as_u64()
        .expect("iperf3 report has the bytes sent");
    eprintln!(
        "iperf3 veth -> veth: {:.2} Gbit/s; a: {} forwarded, {} punted, {} through the slow path",
        bps / 1e9,
        a1.forwarded - a0.forwarded,
        a1.punted - a0.punted,
        a1.slow_rx() - a0.slow_rx()
    );
    assert!(
        bps > 1e9,
        "TCP between veth endpoints too slow: {bps} bit/s"
    );
    // Every byte iperf3 sent went through the kernel (the counter holds
    // whole frames, headers too).
    assert!(
        a1.forwarded_bytes - a0.forwarded_bytes >= sent,
        "a's ForwardedBytes grew by {} while iperf3 sent {sent}: {a0:?} -> {a1:?}",
        a1.forwarded_bytes - a0.forwarded_bytes
    );
    assert!(
        a1.forwarded - a0.forwarded > 1000,
        "a's ForwardedPackets grew by only {}: {a0:?} -> {a1:?}",
        a1.forwarded - a0.forwarded
    );
    assert!(
        b1.delivered - b0.delivered >= a1.forwarded - a0.forwarded,
        "b was delivered fewer frames than a had forwarded: a {a0:?} -> {a1:?}, b {b0:?} -> {b1:?}"
    );
    // b's ACKs too.
    assert!(
        b1.forwarded - b0.forwarded > 100,
        "b's ACKs were not forwarded in the kernel: {b0:?} -> {b1:?}"
    );
    // The slow path saw next to nothing.
    for (who, before, after) in [("a", a0, a1), ("b", b0, b1)] {
        assert!(
            after.punted - before.punted < 200,
            "{who} punted {} frames during iperf3: {before:?} -> {after:?}",
            after.punted - before.punted
        );
        assert!(
            after.slow_rx() - before.slow_rx() < 200,
            "the slow path received {} frames from {who} during iperf3: {before:?} -> {after:?}",
            after.slow_rx() - before.slow_rx()
        );
    }
    // Totals include what the kernel forwarded.
    assert!(a1.rx >= a1.forwarded, "{a1:?}");

    let info = assert_datapath(d, "loaded", &[("fpa", &ep_a), ("fpb", &ep_b)]);
    let pin_dir = info["PinDir"].as_str().unwrap_or_default();
    assert!(
        pin_dir.starts_with("/sys/fs/bpf/vswitch/fastpath-"),
        "{info}"
    );
    assert!(
        std::path::Path::new(pin_dir).is_dir(),
        "{pin_dir} is not there"
    );
    let links = lab.host_links();
    for (dev, _, _, _) in attachments(&info) {
        assert!(
            links.contains(&dev),
            "{dev} is not in the daemon's namespace: {links:?}"
        );
    }
}

// ------------------------------------------------------------------------
// 2. What the kernel does not know goes to the slow path.

#[test]
fn broadcast_and_unknown_destinations_are_punted() {
    if !require_root("broadcast_and_unknown_destinations_are_punted") {
        return;
    }
    let _g = shared();
    let mut lab = Lab::internal();
    let [(a, _), _] = lab.veth_pair();
    let d = &lab.d;
    let ns_a = &lab.eps[a];

    // The first ping: a's ARP request is a broadcast, and the slow path
    // handles it; the echo requests after it are known unicast.
    let before = Counts::of(d, "fpa");
    assert!(ns_a.ping_within(&lab.ip(11), TEN_S), "a cannot ping b");
    let after = Counts::of(d, "fpa");
    assert!(
        after.punted > before.punted,
        "a's ARP request was not punted: {before:?} -> {after:?}"
    );
    assert!(
        after.slow_rx() > before.slow_rx(),
        "the slow path never saw a's ARP request: {before:?} -> {after:?}"
    );
    assert_forwarded("a's echo request to b", &before, &after, 1);

    // A broadcast ping: punted, never forwarded by the kernel.
    let before = Counts::of(d, "fpa");
    let _ = ns_a.exec(&[
        "ping",
        "-b",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "1",
        &lab.ip(255),
    ]);
    let after = Counts::of(d, "fpa");
    assert_punted("broadcast echo requests", &before, &after, 3);

    // A unicast MAC no port has: punted (the slow path floods it), not
    // forwarded.
    let ghost = lab.ip(99);
    ns_a.ok(&[
        "ip",
        "neigh",
        "add",
        &ghost,
        "lladdr",
        "02:00:5e:10:99:99",
        "dev",
        "eth0",
    ]);
    let before = Counts::of(d, "fpa");
    assert!(
        !ping_n(ns_a, &ghost, 3),
        "something answered a ping to {ghost}"
    );
    let after = Counts::of(d, "fpa");
    assert_punted("echo requests to an unknown MAC", &before, &after, 3);
    assert!(
        after.slow_rx() >= before.slow_rx() + 3,
        "the slow path did not receive the frames to an unknown MAC: {before:?} -> {after:?}"
    );
}

// ------------------------------------------------------------------------
// 3. A policy takes the port out of the fast path, and back.

#[test]
fn a_policy_moves_the_port_to_the_slow_path_and_back() {
    if !require_root("a_policy_moves_the_port_to_the_slow_path_and_back") {
        return;
    }
    let _g = exclusive();
    let mut lab = Lab::internal();
    let [(a, _), (b, _)] = lab.veth_pair();
    let (d, ns_a, ns_b) = (&lab.d, &lab.eps[a], &lab.eps[b]);
    let ip_b = lab.ip(11);
    assert!(pings(ns_a, &ip_b), "a cannot ping b before any policy");

    // Allow everything, both ways: nothing is blocked, but the port is
    // policed now, so its packets are the slow path's to decide: ICMP each
    // time (both ways: b's replies to a policed port too).
    add_policy(
        d,
        "fpa",
        &json!([
            acl("allow-out", "Allow", "Out", json!({"Priority": 100})),
            acl("allow-in", "Allow", "In", json!({"Priority": 100})),
        ]),
    );
    let (a0, b0) = Counts::pair(d);
    let hits0 = hits(d, "fpa", "allow-out");
    assert!(ping_n(ns_a, &ip_b, 3), "a cannot ping b under Allow ACLs");
    let (a1, b1) = Counts::pair(d);
    assert_punted("a's echo requests under Allow ACLs", &a0, &a1, 3);
    assert_punted("b's replies to a policed port", &b0, &b1, 3);
    assert!(
        hits(d, "fpa", "allow-out") >= hits0 + 3,
        "the slow path did not match a's echo requests against allow-out"
    );

    // TCP under the policy: the slow path decides the connection (its
    // handshake is punted), then offloads the flow to the kernel.
    let (a2, hits2) = (Counts::of(d, "fpa"), hits(d, "fpa", "allow-out"));
    let to_b = || port_stats(d, "fpb")["TxBytes"].as_u64().unwrap_or(0);
    let iperf = iperf3_flowing(ns_a, ns_b, &ip_b, 30, to_b);
    let a3 = Counts::of(d, "fpa");
    eprintln!(
        "iperf3 under Allow ACLs: a {} punted, {} forwarded in the kernel",
        a3.punted - a2.punted,
        a3.forwarded - a2.forwarded
    );
    assert!(
        a3.punted > a2.punted && hits(d, "fpa", "allow-out") > hits2,
        "iperf3's connections under policy were not decided by the slow path: {a2:?} -> {a3:?}"
    );

    // A Block takes the offloaded flow back at once: within a second
    // nothing more reaches b.
    let blocked0 = drops(d, "fpa", "acl_blocked");
    add_policy(
        d,
        "fpa",
        &acl(
            "stop-iperf",
            "Block",
            "Out",
            json!({"Protocols": "6", "RemotePorts": "5201", "Priority": 50}),
        ),
    );
    let (quiet_from, samples) = when_quiet(to_b);
    eprintln!("iperf3 data to b stopped {quiet_from:?} after the Block was added");
    assert!(
        quiet_from <= Duration::from_secs(1),
        "data still reached b {quiet_from:?} after the Block (an offloaded flow kept going?): {samples:?}"
    );
    let blocked1 = drops(d, "fpa", "acl_blocked");
    assert!(
        blocked1 > blocked0,
        "iperf3's retransmissions were not counted as acl_blocked ({blocked0} -> {blocked1})"
    );
    drop(iperf);
    rm_policy(d, "fpa", "stop-iperf");

    // The slow path enforces a Block of ICMP.
    add_policy(
        d,
        "fpa",
        &acl(
            "block-icmp",
            "Block",
            "Out",
            json!({"Protocols": "1", "Priority": 50}),
        ),
    );
    let blocked0 = drops(d, "fpa", "acl_blocked");
    assert!(!ping_n(ns_a, &ip_b, 3), "a pinged b under Block Out ICMP");
    let blocked1 = drops(d, "fpa", "acl_blocked");
    assert!(
        blocked1 >= blocked0 + 3,
        "the blocked echo requests were not counted as acl_blocked ({blocked0} -> {blocked1})"
    );
    assert!(
        hits(d, "fpa", "block-icmp") > 0,
        "block-icmp counts no hits"
    );
    rm_policy(d, "fpa", "block-icmp");
    assert!(
        ns_a.ping_within(&ip_b, FIVE_S),
        "a cannot ping b after block-icmp went; policies {}; a {}; b {}",
        d.json(&["policy", "ls", "--endpoint", "fpa"]),
        port_stats(d, "fpa"),
        port_stats(d, "fpb")
    );

    // Without policies the kernel forwards every ping again.
    rm_policy(d, "fpa", "allow-out");
    rm_policy(d, "fpa", "allow-in");
    let (a4, b4) = Counts::pair(d);
    assert!(
        ping_n(ns_a, &ip_b, 3),
        "a cannot ping b after the policies went"
    );
    let (a5, b5) = Counts::pair(d);
    assert_forwarded("a's pings once the policies went", &a4, &a5, 3);
    assert_forwarded("b's replies once the policies went", &b4, &b5, 3);
    assert_eq!(
        a5.punted, a4.punted,
        "a's pings were punted after the policies went"
    );
}

// ------------------------------------------------------------------------
// 4. l2tunnel polices same-host traffic: the kernel leaves it alone.

#[test]
fn l2tunnel_same_host_traffic_takes_the_slow_path() {
    if !require_root("l2tunnel_same_host_traffic_takes_the_slow_path") {
        return;
    }
    let _g = shared();
    let mut lab = Lab::l2tunnel();
    let [(a, _), _] = lab.veth_pair();
    let (d, ns_a) = (&lab.d, &lab.eps[a]);
    let ip_b = lab.ip(11);
    assert!(pings(ns_a, &ip_b), "a cannot ping b on l2tunnel");

    // l2tunnel polices same-host traffic: a Block of the network's stops
    // a's pings to b, and goes with it.
    let owner = ["--network", lab.net.as_str()];
    add_policy_to(
        d,
        &owner,
        &acl("net-block-icmp", "Block", "In", json!({"Protocols": "1"})),
    );
    assert!(
        !ping_n(ns_a, &ip_b, 3),
        "a pinged b on l2tunnel under the network's Block In ICMP"
    );
    rm_policy_of(d, &owner, "net-block-icmp");
    assert!(
        ns_a.ping_within(&ip_b, FIVE_S),
        "a cannot ping b once the network's Block went"
    );

    // Without any policy, too, the kernel leaves the network's traffic to
    // the slow path.
    let (a0, b0) = Counts::pair(d);
    assert!(ping_n(ns_a, &ip_b, 5), "a cannot ping b on l2tunnel");
    let (a1, b1) = Counts::pair(d);
    assert_punted("a's same-host l2tunnel echo requests", &a0, &a1, 5);
    assert_punted("b's same-host l2tunnel echo replies", &b0, &b1, 5);
    // The programs are attached all the same.
    let info = datapath(d);
    let list = attachments(&info);
    assert!(
        list.iter()
            .filter(|(_, port, _, _)| port == "fpa" || port == "fpb")
            .count()
            == 4
            && list.iter().all(|(_, _, _, attached)| *attached),
        "{info}"
    );
}

// ------------------------------------------------------------------------
// 4b. To and from the wire, in the kernel.

/// A veth endpoint on a transparent and on an l2bridge network talks to a
/// plain outside host through a veth uplink: both directions go through the
/// kernel (the outside host's TCP to the endpoint, the endpoint's to the
/// outside host), and the slow path sees only the few frames that set the
/// path up (ARP, the handshake of an unpoliced flow is not among them).
#[test]
fn uplink_traffic_of_veth_endpoints_stays_in_the_kernel() {
    if !require_root("uplink_traffic_of_veth_endpoints_stays_in_the_kernel") {
        return;
    }
    let _g = exclusive();
    for driver in ["transparent", "l2bridge"] {
        let mut lab = Lab::on_uplink(driver);
        let (a, _) = lab.veth("fpa", 10, &[]);
        let (ip_a, ip_o) = (lab.ip(10), lab.ip(1));
        let outside = &lab._rest[0];
        assert!(
            lab.eps[a].ping_within(&ip_o, FIVE_S),
            "{driver}: the veth endpoint cannot ping the outside host"
        );
        assert!(
            outside.ping_within(&ip_a, FIVE_S),
            "{driver}: the outside host cannot ping the veth endpoint"
        );
        // The MAC the slow path learned from the wire reaches the kernel's
        // FDB within its 200 ms mirror tick: then a ping is forwarded there.
        let mirrored = wait_until(FIVE_S, || {
            let before = Counts::of(&lab.d, "fpa").forwarded;
            ping_n(&lab.eps[a], &ip_o, 1) && Counts::of(&lab.d, "fpa").forwarded > before
        });
        assert!(
            mirrored,
            "{driver}: pings to the outside host never left through the kernel"
        );
        for (who, client, server, addr) in [
            ("outside -> endpoint", outside, &lab.eps[a], &ip_a),
            ("endpoint -> outside", &lab.eps[a], outside, &ip_o),
        ] {
            let before = Counts::of(&lab.d, "fpa");
            let rate = received_rate(&iperf3_report(client, server, addr, 2, &[]));
            let after = Counts::of(&lab.d, "fpa");
            eprintln!(
                "{driver} {who}: {:.2} Gbit/s; fpa {before:?} -> {after:?}",
                rate / 1e9
            );
            assert!(rate > 1e9, "{driver} {who}: iperf3 ran at {rate} bit/s");
            let (data, acks) = if who.starts_with("outside") {
                (
                    after.delivered - before.delivered,
                    after.forwarded - before.forwarded,
                )
            } else {
                (
                    after.forwarded - before.forwarded,
                    after.delivered - before.delivered,
                )
            };
            assert!(
                data > 10_000 && acks > 1_000,
                "{driver} {who}: the kernel carried {data} data and {acks} ack frames"
            );
            assert!(
                after.punted - before.punted < 200,
                "{driver} {who}: {} frames were punted to the slow path",
                after.punted - before.punted
            );
        }
    }
}

// ------------------------------------------------------------------------
// 5. Spoofing, caught in the kernel.

/// A UDP frame from `src` to `dst` at `dst_mac` whose source MAC,
/// `02:aa:bb:cc:dd:<n>`, is no endpoint's; its payload is a fresh marker
/// naming `who`. Returns the marker and the frame.
fn spoofed_frame(who: &str, n: u8, src: &str, dst_mac: [u8; 6], dst: &str) -> (String, Vec<u8>) {
    let marker = format!("vswspoof-{who}-{}", unique());
    let frame = udp4_frame(
        [0x02, 0xaa, 0xbb, 0xcc, 0xdd, n],
        dst_mac,
        src.parse::<Ipv4Addr>().unwrap(),
        dst.parse::<Ipv4Addr>().unwrap(),
        (40000, 9),
        marker.as_bytes(),
    );
    (marker, frame)
}

/// Whether `cap` holds a frame with `marker` in it.
fn captured(cap: &Capture, marker: &str) -> bool {
    cap.frames()
        .iter()
        .any(|f| contains_bytes(f, marker.as_bytes()))
}

#[test]
fn mac_spoofing_is_dropped_in_the_kernel() {
    if !require_root("mac_spoofing_is_dropped_in_the_kernel") {
        return;
    }
    let _g = shared();
    let mut lab = Lab::internal();
    let [(a, _), (b, ep_b)] = lab.veth_pair();
    let (c, ep_c) = lab.veth("fpc", 12, &["--allow-spoofing"]);
    assert_eq!(ep_c["AllowSpoofing"], true, "{ep_c}");
    let (ip_a, ip_b, ip_c) = (lab.ip(10), lab.ip(11), lab.ip(12));
    let (d, ns_a, ns_b, ns_c) = (&lab.d, &lab.eps[a], &lab.eps[b], &lab.eps[c]);
    assert!(pings(ns_a, &ip_b), "a cannot ping b");
    assert!(pings(ns_c, &ip_b), "c cannot ping b");
    let mac_b = mac_bytes(ep_b["MacAddress"].as_str().unwrap());
    let cap = Capture::start(ns_b, "eth0");

    // From a: a source MAC that is not a's, to b's MAC, from a's own IP.
    let (marker_a, frame) = spoofed_frame("a", 0x01, &ip_a, mac_b, &ip_b);
    let before = Counts::of(d, "fpa");
    let drops0 = fast_drops(d, "fpa", "mac_spoofing");
    send_frames(ns_a, "eth0", &vec![frame; 5]);
    assert!(
        wait_until(FIVE_S, || fast_drops(d, "fpa", "mac_spoofing")
            >= drops0 + 5),
        "5 spoofed frames from a, {} counted as mac_spoofing in the kernel",
        fast_drops(d, "fpa", "mac_spoofing") - drops0
    );
    let after = Counts::of(d, "fpa");
    assert_eq!(
        (after.forwarded, after.punted),
        (before.forwarded, before.punted),
        "spoofed frames were forwarded or punted: {before:?} -> {after:?}"
    );
    // Everything a sent before this ping has reached b by now.
    cap.sync(ns_a, &ip_b);
    assert!(!captured(&cap, &marker_a), "b received a's spoofed frame");

    // From c, which may spoof: not dropped, and b gets it.
    let (marker_c, frame) = spoofed_frame("c", 0x02, &ip_c, mac_b, &ip_b);
    let drops_c = fast_drops(d, "fpc", "mac_spoofing");
    send_frames(ns_c, "eth0", &[frame]);
    assert!(
        wait_until(FIVE_S, || captured(&cap, &marker_c)),
        "b never received c's frame from another MAC (c has --allow-spoofing)"
    );
    assert_eq!(
        fast_drops(d, "fpc", "mac_spoofing"),
        drops_c,
        "c's frame counted as mac_spoofing although c may spoof"
    );
}

// ------------------------------------------------------------------------
// 6. Pinned: forwarding outlives the daemon.

#[test]
fn kernel_forwarding_survives_kill_9_and_restart() {
    if !require_root("kernel_forwarding_survives_kill_9_and_restart") {
        return;
    }
    let _g = exclusive();
    let mut lab = Lab::internal();
    let [(a, ep_a), (b, ep_b)] = lab.veth_pair();
    let ip_b = lab.ip(11);
    assert!(pings(&lab.eps[a], &ip_b), "a cannot ping b");
    let pin_dir = datapath(&lab.d)["PinDir"].as_str().unwrap().to_owned();
    let fwd0 = fast_counter(&lab.d, "fpa", "ForwardedBytes");

    const SECS: u32 = 8;
    let Lab { d, eps, .. } = &mut lab;
    let (ns_a, ns_b) = (&eps[a], &eps[b]);
    let (report, down) = std::thread::scope(|s| {
        let start = Instant::now();
        let iperf = s.spawn(|| iperf3_report(ns_a, ns_b, &ip_b, SECS, &["-i", "1"]));
        // iperf3 is running through the kernel...
        let running = wait_until(TEN_S, || {
            fast_counter(d, "fpa", "ForwardedBytes") > fwd0 + 100_000_000
        });
        assert!(running, "iperf3 did not get going through the kernel");
        // ...for about 2 s when the daemon dies; it stays dead for more
        // than one iperf3 interval before it comes back.
        std::thread::sleep(Duration::from_secs(2).saturating_sub(start.elapsed()));
        let pid = d.pid();
        d.kill9();
        let killed = Instant::now();
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "vswitchd {pid} still runs after kill -9"
        );
        std::thread::sleep(Duration::from_millis(1500));
        d.spawn();
        let down = killed.elapsed();
        (iperf.join().expect("iperf3 thread"), down)
    });
    let d = &lab.d;
    let rates: Vec<f64> = report["intervals"]
        .as_array()
        .expect("iperf3 report has intervals")
        .iter()
        .map(|i| i["sum"]["bits_per_second"].as_f64().unwrap_or(0.0))
        .collect();
    let gbit: Vec<String> = rates.iter().map(|r| format!("{:.1}", r / 1e9)).collect();
    eprintln!(
        "iperf3 through kill -9 (vswitchd down {down:?}): {} Gbit/s per second",
        gbit.join(" ")
    );
    assert!(
        rates.len() >= SECS as usize,
        "iperf3 reported {} intervals for {SECS} s: {gbit:?}",
        rates.len()
    );
    assert!(
        rates.iter().all(|&r| r > 1e9),
        "an iperf3 interval fell below 1 Gbit/s while vswitchd was down or restarting (Gbit/s): {gbit:?}"
    );

    // The new instance adopted what the dead one pinned.
    let info = assert_datapath(d, "adopted", &[("fpa", &ep_a), ("fpb", &ep_b)]);
    assert_eq!(info["PinDir"], pin_dir.as_str(), "{info}");
    assert!(
        pings(&lab.eps[a], &ip_b),
        "a cannot ping b after the restart"
    );
    let before = Counts::of(d, "fpa");
    assert!(ping_n(&lab.eps[a], &ip_b, 3));
    let after = Counts::of(d, "fpa");
    assert_forwarded("a's pings after the restart", &before, &after, 3);

    // Removing the endpoints removes their devices and attachments.
    d.ok(&["endpoint", "rm", "fpa"]);
    d.ok(&["endpoint", "rm", "fpb"]);
    let links = lab.host_links();
    let mut gone = Vec::new();
    for ep in [&ep_a, &ep_b] {
        let (vse, vsp) = device_names(ep);
        gone.push(vse);
        gone.push(vsp);
    }
    assert!(
        gone.iter().all(|dev| !links.contains(dev)),
        "endpoint rm left devices behind: {links:?}"
    );
    assert!(
        !links
            .iter()
            .any(|l| l.starts_with("vse") || l.starts_with("vsp")),
        "veth or punt devices left in the daemon's namespace: {links:?}"
    );
    let info = datapath(d);
    assert_eq!(
        attachments(&info),
        Vec::new(),
        "attachments left after endpoint rm: {info}"
    );
}

// ------------------------------------------------------------------------
// 7. veth and TAP endpoints on one network.

#[test]
fn veth_and_tap_endpoints_share_a_network() {
    if !require_root("veth_and_tap_endpoints_share_a_network") {
        return;
    }
    let _g = shared();
    let mut lab = Lab::internal();
    let (v, ep_v) = lab.veth("fpv", 10, &[]);
    let (t, ep_t) = lab.endpoint("fpt", 11, &["--backend", "tap"]);
    assert_eq!(ep_t["Backend"], "tap", "{ep_t}");
    let (ip_v, ip_t) = (lab.ip(10), lab.ip(11));
    let (d, ns_v, ns_t) = (&lab.d, &lab.eps[v], &lab.eps[t]);
    assert!(
        pings(ns_v, &ip_t),
        "the veth endpoint cannot ping the TAP one"
    );
    assert!(
        pings(ns_t, &ip_v),
        "the TAP endpoint cannot ping the veth one"
    );

    // What the veth endpoint sends to a TAP endpoint is the slow path's.
    let before = Counts::of(d, "fpv");
    assert!(ping_n(ns_v, &ip_t, 3), "veth -> tap ping failed");
    let after = Counts::of(d, "fpv");
    assert_punted("echo requests to the TAP endpoint", &before, &after, 3);
    // The TAP endpoint has no kernel fast path; the veth one's programs
    // are the only attachments.
    let s = port_stats(d, "fpt");
    assert!(
        s.get("FastPath").is_none_or(Value::is_null),
        "a TAP endpoint shows FastPath counters: {s}"
    );
    let tx = s["TxPackets"].as_u64().unwrap_or(0);
    assert!(tx >= 3, "the TAP endpoint was sent nothing: {s}");
    assert_eq!(
        attachments(&datapath(d)),
        expected_attachments(&[("fpv", &ep_v)]),
    );
}
