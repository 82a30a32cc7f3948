//! The policy pipeline end to end (issue 7): HNS ACLs in both directions,
//! priorities, CIDRs and port ranges, stateful replies, a Block under a
//! running iperf3, QOS caps, port guards, connection tracking limits,
//! persistence across restarts and `trace`; with real namespaces and real
//! traffic (ping, iperf3, TCP and UDP from small python3 programs). Each
//! test runs its own daemon and cleans up after itself.
//!
//! Tests that measure throughput or time hold [`exclusive`]; the others
//! hold [`shared`]: a measurement never runs beside another test's traffic
//! in this binary (the machine has two cores, and vswitchd's datapath
//! thread takes one).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use vswitch_systests::{
    configured, drops, drops_on, exclusive, iperf3_flowing, iperf3_with, mac_bytes, neighbours,
    no_ipv6, policies, port_stats, require_root, shared, spawn_in, tag, tcp_ask, tcp_whoami,
    udp_ask, udp_whoami, unique, unique_subnet, wait_until, when_quiet, write_doc, Daemon,
    KillOnDrop, Netns, TcpHolder, FIVE_S, TEN_S,
};

// ------------------------------------------------------------------------
// Topology.

/// A private network with endpoints `ep1` (namespace `a`, `.10`) and `ep2`
/// (namespace `b`, `.11`), and any added later (`more`). The daemon comes
/// first, so on drop it removes the endpoints before their namespaces go.
struct Lab {
    d: Daemon,
    net: String,
    prefix: String,
    a: Netns,
    b: Netns,
    more: Vec<Netns>,
}

impl Lab {
    /// The two endpoints on a daemon of their own, no options anywhere.
    fn start() -> Lab {
        Lab::new(Daemon::start(), &[], &[], &[])
    }

    /// `net_args` go to `network create` (e.g. an IPv6 `--subnet`),
    /// `a_args` and `b_args` to the two `endpoint create`s.
    fn new(d: Daemon, net_args: &[&str], a_args: &[&str], b_args: &[&str]) -> Lab {
        Lab::with(d, net_args, a_args, b_args, |_| {})
    }

    /// [`Lab::new`], running `prepare` in each namespace before its
    /// endpoint is created.
    fn with(
        d: Daemon,
        net_args: &[&str],
        a_args: &[&str],
        b_args: &[&str],
        prepare: impl Fn(&Netns),
    ) -> Lab {
        let (subnet, prefix) = unique_subnet();
        let net = format!("pol{}", tag());
        let mut args = vec!["network", "create", "-d", "private", "--subnet", &subnet];
        args.extend_from_slice(net_args);
        args.push(&net);
        d.ok(&args);
        let a = Netns::new("pa");
        let b = Netns::new("pb");
        prepare(&a);
        prepare(&b);
        let ip_a = format!("{prefix}.10");
        let ip_b = format!("{prefix}.11");
        let mut full_a = vec!["--ip", ip_a.as_str()];
        full_a.extend_from_slice(a_args);
        let mut full_b = vec!["--ip", ip_b.as_str()];
        full_b.extend_from_slice(b_args);
        d.endpoint(&net, &a, &full_a, "ep1");
        d.endpoint(&net, &b, &full_b, "ep2");
        Lab {
            d,
            net,
            prefix,
            a,
            b,
            more: Vec::new(),
        }
    }

    fn ip(&self, host: u8) -> String {
        format!("{}.{host}", self.prefix)
    }

    /// Another endpoint `name` at `.host`; returns the index into `more`.
    fn add_endpoint(&mut self, name: &str, host: u8, args: &[&str]) -> usize {
        let ns = Netns::new("pc");
        let ip = self.ip(host);
        let mut full = vec!["--ip", ip.as_str()];
        full.extend_from_slice(args);
        self.d.endpoint(&self.net, &ns, &full, name);
        self.more.push(ns);
        self.more.len() - 1
    }
}

/// An IPv6 /64 of this test process's own.
fn unique_subnet6() -> String {
    format!(
        "fd{:02x}:{}::/64",
        unique() % 256,
        std::process::id() % 9999
    )
}

fn endpoint_field(d: &Daemon, ep: &str, field: &str) -> Value {
    d.json(&["endpoint", "inspect", ep])[field].clone()
}

// ------------------------------------------------------------------------
// Policies.

fn acl(id: &str, action: &str, direction: &str, rest: Value) -> Value {
    let mut settings = json!({"Id": id, "Action": action, "Direction": direction});
    if let (Some(s), Value::Object(rest)) = (settings.as_object_mut(), rest) {
        s.extend(rest);
    }
    json!({"Type": "ACL", "Settings": settings})
}

fn qos(bytes_per_second: u64) -> Value {
    json!({"Type": "QOS", "Settings": {"MaximumOutgoingBandwidthInBytes": bytes_per_second}})
}

/// `["--endpoint", name]`: whose policy.
fn ep(name: &str) -> [&str; 2] {
    ["--endpoint", name]
}

fn net_owner(name: &str) -> [&str; 2] {
    ["--network", name]
}

fn add_args<'a>(owner: &[&'a str], path: &'a str) -> Vec<&'a str> {
    let mut args = vec!["policy", "add"];
    args.extend_from_slice(owner);
    args.extend_from_slice(&["--file", path]);
    args
}

/// `policy add OWNER --file F --json`, which must succeed; the policies
/// it added.
fn add(d: &Daemon, owner: &[&str], doc: &Value) -> Vec<Value> {
    let path = write_doc(d, doc);
    let reply = d.json(&add_args(owner, path.to_str().unwrap()));
    reply
        .as_array()
        .unwrap_or_else(|| panic!("policy add answered {reply}, not a list"))
        .clone()
}

fn rm(d: &Daemon, owner: &[&str], id: &str) {
    let mut args = vec!["policy", "rm"];
    args.extend_from_slice(owner);
    args.push(id);
    d.ok(&args);
}

/// The Hits counter of the policy `id` as `policy ls --endpoint EP` shows
/// it.
fn hits(d: &Daemon, endpoint: &str, id: &str) -> u64 {
    let list = policies(d, &ep(endpoint));
    let p = list
        .iter()
        .find(|p| p["ID"] == id)
        .unwrap_or_else(|| panic!("no policy {id} on {endpoint}: {list:?}"));
    p["Hits"]
        .as_u64()
        .unwrap_or_else(|| panic!("policy {id} has no Hits counter: {p}"))
}

// ------------------------------------------------------------------------
// Counters.

fn counter(d: &Daemon, port: &str, field: &str) -> u64 {
    let s = port_stats(d, port);
    s[field]
        .as_u64()
        .unwrap_or_else(|| panic!("stats of {port} have no {field}: {s}"))
}

// ------------------------------------------------------------------------
// Traffic, from python3 (always there where the tests run: scripts/lib.sh
// installs it, and the harness's `send_frames` uses it already).

/// Listens on UDP `ports` (IPv4 and IPv6, broadcasts included) and
/// appends "PORT PAYLOAD" lines to a file; writes "ready" once bound.
const UDP_SINK: &str = r#"
import select, socket, sys
out = open(sys.argv[1], "a")
socks = []
for p in sys.argv[2:]:
    s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s4.bind(("0.0.0.0", int(p)))
    s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s6.bind(("::", int(p)))
    socks += [s4, s6]
out.write("ready\n")
out.flush()
while True:
    for s in select.select(socks, [], [])[0]:
        d, _ = s.recvfrom(65536)
        out.write(f"{s.getsockname()[1]} {d.decode('latin-1')}\n")
        out.flush()
"#;

/// Sends one UDP datagram from source port `sport` out of eth0 (to a
/// broadcast address too).
const UDP_SEND: &str = r#"
import socket, sys
sport, dst, dport = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
payload = bytes.fromhex(sys.argv[4])
six = ":" in dst
s = socket.socket(socket.AF_INET6 if six else socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_BINDTODEVICE", 25), b"eth0")
s.bind(("::" if six else "0.0.0.0", sport))
s.sendto(payload, (dst, dport))
"#;

/// One TCP connection from `ns` to a [`tcp_whoami`] server on `addr:port`
/// carries data both ways within a second.
fn tcp_ok(ns: &Netns, addr: &str, port: u16) -> bool {
    tcp_ask(ns, addr, port).is_ok()
}

/// [`tcp_ok`] retried until `timeout` (the first connection of a path
/// waits for ARP).
fn tcp_within(ns: &Netns, addr: &str, port: u16, timeout: Duration) -> bool {
    wait_until(timeout, || tcp_ok(ns, addr, port))
}

/// One datagram from `ns` to a [`udp_whoami`] server on `addr:port` is
/// answered within a second.
fn udp_ok(ns: &Netns, addr: &str, port: u16) -> bool {
    udp_ask(ns, addr, port).is_ok()
}

fn udp_send(ns: &Netns, sport: u16, dst: &str, dport: u16, payload: &[u8]) {
    let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
    ns.ok(&[
        "python3",
        "-c",
        UDP_SEND,
        &sport.to_string(),
        dst,
        &dport.to_string(),
        &hex,
    ]);
}

/// What a UDP sink in a namespace received, in a file removed on drop.
struct UdpSink {
    _child: KillOnDrop,
    path: PathBuf,
}

impl UdpSink {
    fn start(ns: &Netns, ports: &[u16]) -> UdpSink {
        let path = std::env::temp_dir().join(format!("vswitch-udp-sink-{}", tag()));
        let path_text = path.to_str().expect("temp path is UTF-8").to_owned();
        let ports_text: Vec<String> = ports.iter().map(u16::to_string).collect();
        let mut args = vec!["python3", "-c", UDP_SINK, path_text.as_str()];
        args.extend(ports_text.iter().map(String::as_str));
        let sink = UdpSink {
            _child: spawn_in(ns, &args),
            path,
        };
        let ready = wait_until(TEN_S, || sink.got().contains("ready"));
        assert!(ready, "UDP sink on {ports:?} did not start in {}", ns.name);
        sink
    }

    fn got(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }

    /// Makes sure everything `from` sent to `dst` before this call has
    /// arrived or never will: a marker on [`SYNC_PORT`] takes the same path
    /// through the switch, and this waits until it is in.
    fn sync(&self, from: &Netns, dst: &str) {
        let marker = format!("sync-{}", unique());
        let seen = wait_until(TEN_S, || {
            udp_send(from, 1067, dst, SYNC_PORT, marker.as_bytes());
            self.got().contains(&marker)
        });
        assert!(
            seen,
            "sync datagram from {} to {dst} never arrived",
            from.name
        );
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A UDP port that means nothing to the switch, for [`UdpSink::sync`].
const SYNC_PORT: u16 = 6868;

/// The connections `flows dump` shows for `endpoint`'s port that are TCP,
/// to `dport`, and in `state`.
fn connections(d: &Daemon, endpoint: &str, dport: u16, state: &str) -> Vec<Value> {
    let flows = d.json(&["flows", "dump", "--endpoint", endpoint]);
    flows["Connections"]
        .as_array()
        .unwrap_or_else(|| panic!("flows dump has no Connections: {flows}"))
        .iter()
        .filter(|c| {
            c["Protocol"]
                .as_str()
                .is_some_and(|p| p.eq_ignore_ascii_case("tcp") || p == "6")
                && c["DestinationPort"] == dport
                && c["State"] == state
        })
        .cloned()
        .collect()
}

// ------------------------------------------------------------------------
// 1. ACL block and allow, each direction, priorities, CIDRs, port ranges.

#[test]
fn acl_blocks_tcp_in_by_port_and_the_lower_priority_number_wins() {
    if !require_root("acl_blocks_tcp_in_by_port_and_the_lower_priority_number_wins") {
        return;
    }
    let _g = shared();
    let lab = Lab::start();
    let (d, a, b) = (&lab.d, &lab.a, &lab.b);
    let (ip_a, ip_b) = (lab.ip(10), lab.ip(11));
    let _srv = tcp_whoami(b, "ep2", &ip_b, &[80, 81]);
    assert!(
        tcp_within(a, &ip_b, 80, FIVE_S),
        "no TCP a -> b:80 before any policy"
    );
    assert!(tcp_ok(a, &ip_b, 81));

    let added = add(
        d,
        &ep("ep2"),
        &acl(
            "block-80",
            "Block",
            "In",
            json!({"Protocols": "6", "LocalPorts": "80", "Priority": 200}),
        ),
    );
    assert_eq!(added.len(), 1, "{added:?}");
    assert_eq!(added[0]["ID"], "block-80", "{added:?}");
    assert_eq!(added[0]["Type"], "ACL", "{added:?}");
    assert_eq!(added[0]["Endpoint"], "ep2", "{added:?}");

    assert!(
        !tcp_ok(a, &ip_b, 80),
        "Block In TCP 80 on ep2 let a reach b:80"
    );
    assert!(tcp_ok(a, &ip_b, 81), "Block In TCP 80 also stopped b:81");
    assert!(a.ping(&ip_b), "Block In TCP 80 also stopped ping");
    let h1 = hits(d, "ep2", "block-80");
    assert!(h1 > 0, "block-80 stopped a SYN but counts no hits");
    assert!(!tcp_ok(a, &ip_b, 80));
    let h2 = hits(d, "ep2", "block-80");
    assert!(h2 > h1, "block-80 hits did not grow: {h1} then {h2}");

    // An Allow for the same traffic at a higher number (lower priority)
    // changes nothing and never matches.
    add(
        d,
        &ep("ep2"),
        &acl(
            "allow-80-late",
            "Allow",
            "In",
            json!({"Protocols": "6", "LocalPorts": "80", "Priority": 300}),
        ),
    );
    assert!(!tcp_ok(a, &ip_b, 80), "Allow at 300 beat Block at 200");
    assert_eq!(hits(d, "ep2", "allow-80-late"), 0);

    // At a lower number it wins.
    add(
        d,
        &ep("ep2"),
        &acl(
            "allow-80",
            "Allow",
            "In",
            json!({"Protocols": "6", "LocalPorts": "80", "RemoteAddresses": ip_a, "Priority": 100}),
        ),
    );
    let blocked = hits(d, "ep2", "block-80");
    assert!(
        tcp_ok(a, &ip_b, 80),
        "Allow at 100 did not beat Block at 200"
    );
    assert!(
        hits(d, "ep2", "allow-80") > 0,
        "the winning Allow counts no hits"
    );
    assert_eq!(
        hits(d, "ep2", "block-80"),
        blocked,
        "the losing Block counted the allowed connection"
    );

    // Removing the Allow brings the Block back, for new connections.
    rm(d, &ep("ep2"), "allow-80");
    assert!(
        !tcp_ok(a, &ip_b, 80),
        "block-80 not back after allow-80 went"
    );
    let ids: Vec<Value> = policies(d, &ep("ep2"))
        .iter()
        .map(|p| p["ID"].clone())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&json!("block-80")) && ids.contains(&json!("allow-80-late")));
    let listed = policies(d, &ep("ep2"));
    let block = listed.iter().find(|p| p["ID"] == "block-80").unwrap();
    assert_eq!(block["Endpoint"], "ep2", "{block}");
    assert!(
        block["Settings"].to_string().contains("LocalPorts"),
        "Settings are not the policy as given: {block}"
    );
    assert_eq!(endpoint_field(d, "ep2", "PolicyCount"), 2);
    assert_eq!(endpoint_field(d, "ep1", "PolicyCount"), 0);
}

#[test]
fn acl_matches_cidrs_and_port_ranges() {
    if !require_root("acl_matches_cidrs_and_port_ranges") {
        return;
    }
    let _g = shared();
    let six = unique_subnet6();
    let mut lab = Lab::new(Daemon::start(), &["--subnet", &six], &[], &[]);
    let c_idx = lab.add_endpoint("ep3", 20, &[]);
    let (d, a, b, c) = (&lab.d, &lab.a, &lab.b, &lab.more[c_idx]);
    let (ip_a, ip_b) = (lab.ip(10), lab.ip(11));
    let v6 = |e: &str| {
        endpoint_field(d, e, "IPv6Address")
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (a6, b6) = (v6("ep1"), v6("ep2"));
    assert!(a.ping_within(&ip_b, FIVE_S));
    assert!(c.ping_within(&ip_b, FIVE_S));
    assert!(a.ping_within(&b6, FIVE_S));
    assert!(c.ping_within(&b6, FIVE_S));

    // IPv4 CIDR: .8/30 holds a (.10) but not c (.20).
    add(
        d,
        &ep("ep2"),
        &acl(
            "icmp-cidr",
            "Block",
            "In",
            json!({"Protocols": "1", "RemoteAddresses": format!("{}.8/30", lab.prefix)}),
        ),
    );
    assert!(!a.ping(&ip_b), "a (inside .8/30) still pings b");
    assert!(c.ping(&ip_b), "c (outside .8/30) cannot ping b");
    assert!(hits(d, "ep2", "icmp-cidr") > 0);
    rm(d, &ep("ep2"), "icmp-cidr");
    assert!(a.ping(&ip_b), "a cannot ping b after icmp-cidr went");

    // IPv6: a's /128 among other prefixes, protocol 58.
    add(
        d,
        &ep("ep2"),
        &acl(
            "icmp6-host",
            "Block",
            "In",
            json!({"Protocols": "58", "RemoteAddresses": format!("2001:db8::/32,{a6}/128")}),
        ),
    );
    assert!(!a.ping(&b6), "a still pings b over IPv6");
    assert!(c.ping(&b6), "c cannot ping b over IPv6");
    rm(d, &ep("ep2"), "icmp6-host");

    // Port ranges, both edges and both neighbours.
    let _srv = tcp_whoami(b, "ep2", &ip_b, &[4999, 5000, 5005, 5010, 5011]);
    for port in [4999, 5000, 5005, 5010, 5011] {
        assert!(
            tcp_within(a, &ip_b, port, FIVE_S),
            "no TCP to {port} before any policy"
        );
    }
    add(
        d,
        &ep("ep2"),
        &acl(
            "range",
            "Block",
            "In",
            json!({"Protocols": "6", "LocalPorts": "5000-5010"}),
        ),
    );
    for port in [5000, 5005, 5010] {
        assert!(!tcp_ok(a, &ip_b, port), "{port} is in 5000-5010 but open");
    }
    for port in [4999, 5011] {
        assert!(
            tcp_ok(a, &ip_b, port),
            "{port} is outside 5000-5010 but shut"
        );
    }

    // Ports and a CIDR together: .16/28 holds c, not a.
    add(
        d,
        &ep("ep2"),
        &acl(
            "c-4999",
            "Block",
            "In",
            json!({"Protocols": "6", "LocalPorts": "4999",
                   "RemoteAddresses": format!("{}.16/28", lab.prefix)}),
        ),
    );
    assert!(!tcp_ok(c, &ip_b, 4999), "c reached b:4999 past c-4999");
    assert!(tcp_ok(a, &ip_b, 4999), "c-4999 stopped a too");
    // The same ports seen from the client's side: on ep1 they are
    // RemotePorts, and its own address a LocalAddresses /32.
    add(
        d,
        &ep("ep1"),
        &acl(
            "a-out",
            "Block",
            "Out",
            json!({"Protocols": "6", "RemotePorts": "4999,5011",
                   "LocalAddresses": format!("{ip_a}/32")}),
        ),
    );
    assert!(
        !tcp_ok(a, &ip_b, 5011),
        "Block Out RemotePorts 5011 let a out"
    );
    assert!(
        !tcp_ok(a, &ip_b, 4999),
        "Block Out RemotePorts 4999 let a out"
    );
    assert!(tcp_ok(c, &ip_b, 5011), "ep1's rule stopped ep3");
    assert!(hits(d, "ep1", "a-out") > 0);
}

#[test]
fn acl_blocks_out_and_replies_to_allowed_connections_pass() {
    if !require_root("acl_blocks_out_and_replies_to_allowed_connections_pass") {
        return;
    }
    let _g = shared();
    let lab = Lab::start();
    let (d, a, b) = (&lab.d, &lab.a, &lab.b);
    let (ip_a, ip_b) = (lab.ip(10), lab.ip(11));
    let _srv_b = tcp_whoami(b, "ep2", &ip_b, &[80, 81]);
    let _srv_a = tcp_whoami(a, "ep1", &ip_a, &[80]);
    assert!(tcp_within(a, &ip_b, 81, FIVE_S));

    add(
        d,
        &ep("ep1"),
        &json!([
            acl(
                "out-81",
                "Block",
                "Out",
                json!({"Protocols": "6", "RemotePorts": "81"})
            ),
            acl("out-icmp", "Block", "Out", json!({"Protocols": "1"})),
        ]),
    );
    assert!(!tcp_ok(a, &ip_b, 81), "Block Out TCP 81 let a out");
    assert!(tcp_ok(a, &ip_b, 80), "Block Out TCP 81 stopped TCP 80");
    assert!(!a.ping(&ip_b), "Block Out ICMP let a's echo request out");
    // b's connections to a are In for ep1 and allowed: a's replies belong
    // to them and pass the Out rules.
    assert!(b.ping(&ip_a), "a's echo reply was blocked as Out ICMP");
    assert!(tcp_ok(b, &ip_a, 80), "a's TCP replies were blocked");
    assert!(hits(d, "ep1", "out-81") > 0);
    assert!(hits(d, "ep1", "out-icmp") > 0);
}

// ------------------------------------------------------------------------
// 2. Stateful: Block In, Allow Out.

#[test]
fn acl_is_stateful_block_in_allow_out_lets_replies_in() {
    if !require_root("acl_is_stateful_block_in_allow_out_lets_replies_in") {
        return;
    }
    let _g = shared();
    let lab = Lab::start();
    let (d, a, b) = (&lab.d, &lab.a, &lab.b);
    let (ip_a, ip_b) = (lab.ip(10), lab.ip(11));
    let _tcp_a = tcp_whoami(a, "ep1", &ip_a, &[7000]);
    let _tcp_b = tcp_whoami(b, "ep2", &ip_b, &[7000]);
    let _udp_a = udp_whoami(a, "ep1", &ip_a, 7001);
    let _udp_b = udp_whoami(b, "ep2", &ip_b, 7001);
    assert!(a.ping_within(&ip_b, FIVE_S));

    // One document, a list, both rules.
    let added = add(
        d,
        &ep("ep2"),
        &json!([
            acl("deny-in", "Block", "In", json!({"Priority": 200})),
            acl("allow-out", "Allow", "Out", json!({"Priority": 100})),
        ]),
    );
    assert_eq!(added.len(), 2, "{added:?}");

    assert!(b.ping(&ip_a), "b's ping to a got no reply");
    assert!(
        tcp_ok(b, &ip_a, 7000),
        "b's TCP connection to a got no replies"
    );
    assert!(udp_ok(b, &ip_a, 7001), "b's UDP to a got no reply");
    assert!(!a.ping(&ip_b), "a pinged b through Block In");
    assert!(!tcp_ok(a, &ip_b, 7000), "a connected to b through Block In");
    assert!(
        !udp_ok(a, &ip_b, 7001),
        "a's UDP reached b through Block In"
    );
    assert!(hits(d, "ep2", "deny-in") > 0);
    assert!(hits(d, "ep2", "allow-out") > 0);

    // The connection b opened is tracked, with replies counted.
    let mut held = TcpHolder::start(b, &ip_a, 7000);
    assert_eq!(
        held.open(1, 3.0, None).0.len(),
        1,
        "b could not open a connection to a"
    );
    assert_eq!(held.echo(), 1);
    let tracked = connections(d, "ep2", 7000, "established");
    assert!(
        tracked.iter().any(
            |c| c["PacketsOriginal"].as_u64() > Some(0) && c["PacketsReply"].as_u64() > Some(0)
        ),
        "no established connection b -> a:7000 with replies in flows dump: {tracked:?}"
    );
}

#[test]
fn default_acl_action_block_lets_only_allowed_traffic_through() {
    if !require_root("default_acl_action_block_lets_only_allowed_traffic_through") {
        return;
    }
    let _g = shared();
    let lab = Lab::start();
    let (d, a, b) = (&lab.d, &lab.a, &lab.b);
    let (ip_a, ip_b) = (lab.ip(10), lab.ip(11));
    let _srv = tcp_whoami(b, "ep2", &ip_b, &[7000, 7002]);
    assert!(tcp_within(a, &ip_b, 7002, FIVE_S));
    add(
        d,
        &ep("ep2"),
        &acl(
            "web",
            "Allow",
            "In",
            json!({"Protocols": "6", "LocalPorts": "7000"}),
        ),
    );
    assert!(tcp_ok(a, &ip_b, 7002), "default Allow did not allow");
    d.ok(&["endpoint", "set", "ep2", "--default-acl-action", "block"]);
    assert_eq!(endpoint_field(d, "ep2", "DefaultAclAction"), "Block");
    assert!(tcp_ok(a, &ip_b, 7000), "the Allow rule no longer allows");
    assert!(!tcp_ok(a, &ip_b, 7002), "default Block let TCP 7002 in");
    assert!(!a.ping(&ip_b), "default Block let a ping in");
    assert!(!b.ping(&ip_a), "default Block let b's ping out");
    d.ok(&["endpoint", "set", "ep2", "--default-acl-action", "allow"]);
    assert_eq!(endpoint_field(d, "ep2", "DefaultAclAction"), "Allow");
    assert!(
        tcp_ok(a, &ip_b, 7002),
        "default back to Allow, 7002 still shut"
    );
    assert!(a.ping(&ip_b));
}

#[test]
fn arp_and_neighbour_discovery_are_never_blocked() {
    if !require_root("arp_and_neighbour_discovery_are_never_blocked") {
        return;
    }
    let _g = shared();
    let six = unique_subnet6();
    let lab = Lab::new(Daemon::start(), &["--subnet", &six], &[], &[]);
    let (d, a) = (&lab.d, &lab.a);
    let ip_b = lab.ip(11);
    let b6 = endpoint_field(d, "ep2", "IPv6Address")
        .as_str()
        .unwrap()
        .to_owned();
    let b_mac = endpoint_field(d, "ep2", "MacAddress")
        .as_str()
        .unwrap()
        .to_lowercase();
    assert!(a.ping_within(&ip_b, FIVE_S));
    assert!(a.ping_within(&b6, FIVE_S));
    add(
        d,
        &ep("ep2"),
        &json!([
            acl("all-in", "Block", "In", json!({"Priority": 1})),
            acl("all-out", "Block", "Out", json!({"Priority": 1})),
        ]),
    );
    a.ok(&["ip", "neigh", "flush", "dev", "eth0"]);
    a.ok(&["ip", "-6", "neigh", "flush", "dev", "eth0"]);
    assert!(!a.ping(&ip_b), "a pinged b through Block all");
    assert!(!a.ping(&b6), "a pinged b over IPv6 through Block all");
    let resolved = |addr: &str| {
        neighbours(a, "eth0")
            .iter()
            .any(|(ip, mac)| ip == addr && mac.as_deref() == Some(b_mac.as_str()))
    };
    assert!(
        resolved(&ip_b),
        "ARP for b was blocked: {:?}",
        neighbours(a, "eth0")
    );
    assert!(
        resolved(&b6),
        "neighbour discovery for b was blocked: {:?}",
        neighbours(a, "eth0")
    );
}

#[test]
fn network_policy_applies_to_every_endpoint_of_the_network() {
    if !require_root("network_policy_applies_to_every_endpoint_of_the_network") {
        return;
    }
    let _g = shared();
    let mut lab = Lab::start();
    let (ip_a, ip_b) = (lab.ip(10), lab.ip(11));
    assert!(lab.a.ping_within(&ip_b, FIVE_S));
    let net = lab.net.clone();
    let added = add(
        &lab.d,
        &net_owner(&net),
        &acl("no-ping", "Block", "In", json!({"Protocols": "1"})),
    );
    assert_eq!(added[0]["Network"], net.as_str(), "{added:?}");
    // An endpoint created afterwards gets it too.
    let c_idx = lab.add_endpoint("ep3", 12, &[]);
    let (d, a, b, c) = (&lab.d, &lab.a, &lab.b, &lab.more[c_idx]);
    let _srv = tcp_whoami(b, "ep2", &ip_b, &[7000]);
    assert!(tcp_within(c, &ip_b, 7000, FIVE_S), "ep3 has no path to ep2");
    assert!(!a.ping(&ip_b), "network Block In ICMP let a ping b");
    assert!(!b.ping(&ip_a), "network Block In ICMP let b ping a");
    assert!(!c.ping(&ip_a), "network Block In ICMP let ep3 ping a");
    assert!(tcp_ok(a, &ip_b, 7000), "an ICMP rule stopped TCP");

    let own = policies(d, &net_owner(&net));
    assert_eq!(own.len(), 1, "{own:?}");
    assert!(own[0]["Hits"].as_u64() > Some(0), "{own:?}");
    for e in ["ep1", "ep2", "ep3"] {
        let listed = policies(d, &ep(e));
        assert!(
            listed
                .iter()
                .any(|p| p["ID"] == "no-ping" && p["Network"] == net.as_str()),
            "policy ls --endpoint {e} misses its network's policy: {listed:?}"
        );
        assert_eq!(endpoint_field(d, e, "PolicyCount"), 1, "{e}");
    }
    rm(d, &net_owner(&net), "no-ping");
    assert!(a.ping(&ip_b), "a cannot ping b after no-ping went");
    assert!(c.ping(&ip_a));
    assert!(policies(d, &net_owner(&net)).is_empty());
}

// ------------------------------------------------------------------------
// 3. A Block under a running iperf3.

#[test]
fn block_added_under_running_iperf3_stops_it_within_a_second() {
    if !require_root("block_added_under_running_iperf3_stops_it_within_a_second") {
        return;
    }
    let _g = exclusive();
    let lab = Lab::start();
    let (d, a, b) = (&lab.d, &lab.a, &lab.b);
    let ip_b = lab.ip(11);
    assert!(a.ping_within(&ip_b, FIVE_S));
    // A policy from the start, so the flow is in the flow cache when the
    // Block comes: the Block must take effect through the port's policy
    // generation, at the flow's next packet.
    add(
        d,
        &ep("ep2"),
        &acl(
            "tcp-in",
            "Allow",
            "In",
            json!({"Protocols": "6", "Priority": 500}),
        ),
    );
    let tx = || counter(d, "ep2", "TxBytes");
    let iperf = iperf3_flowing(a, b, &ip_b, 60, tx);
    let cache = port_stats(d, "ep2")["FlowCache"].clone();
    assert!(
        cache["Hits"].as_u64() > Some(0) && cache["Entries"].as_u64() > Some(0),
        "ep2 has a policy and a running flow but its flow cache is unused: {cache}"
    );

    let blocked_before = drops_on(d, &["ep1", "ep2"], "acl_blocked");
    add(
        d,
        &ep("ep2"),
        &acl(
            "stop-iperf",
            "Block",
            "In",
            json!({"Protocols": "6", "LocalPorts": "5201", "Priority": 100}),
        ),
    );
    // What the switch delivers to b for 2.5 s after the Block.
    let (quiet_from, samples) = when_quiet(tx);
    eprintln!("iperf3 data to ep2 stopped {quiet_from:?} after the Block was added");
    assert!(
        quiet_from <= Duration::from_secs(1),
        "data still reached b {quiet_from:?} after the Block: {samples:?}"
    );
    let blocked_after = drops_on(d, &["ep1", "ep2"], "acl_blocked");
    assert!(
        blocked_after > blocked_before,
        "iperf3's retransmissions were not counted as acl_blocked ({blocked_before} -> {blocked_after})"
    );
    assert!(hits(d, "ep2", "stop-iperf") > 0);
    drop(iperf);

    rm(d, &ep("ep2"), "stop-iperf");
    let bps = iperf3_with(a, b, &ip_b, 1, &[]);
    assert!(
        bps > 10e6,
        "a new connection after the Block went moved {bps} bit/s"
    );
}

// ------------------------------------------------------------------------
// 4. QOS.

#[test]
fn qos_caps_what_an_endpoint_sends() {
    if !require_root("qos_caps_what_an_endpoint_sends") {
        return;
    }
    let _g = exclusive();
    let lab = Lab::start();
    let (d, a, b) = (&lab.d, &lab.a, &lab.b);
    let ip_b = lab.ip(11);
    assert!(a.ping_within(&ip_b, FIVE_S));
    // -O 1: the first second, the bucket's burst and slow start, is left
    // out.
    let measure = || iperf3_with(a, b, &ip_b, 4, &["-O", "1"]);
    let free = measure();
    eprintln!("unpoliced a -> b: {:.0} Mbit/s", free / 1e6);
    for (bytes, label) in [(12_500_000u64, "100 Mbit/s"), (125_000_000, "1 Gbit/s")] {
        let cap = (bytes * 8) as f64;
        // A cap proves itself only below what the path does without it.
        if free < cap * 1.25 {
            eprintln!(
                "skipping the {label} cap: unpoliced a -> b does {:.0} Mbit/s here, \
                 not 25% above the cap, so a cap could not be told from the machine's limit",
                free / 1e6
            );
            continue;
        }
        let added = add(d, &ep("ep1"), &qos(bytes));
        assert_eq!(added.len(), 1, "{added:?}");
        assert_eq!(added[0]["Type"], "QOS", "{added:?}");
        let id = added[0]["ID"]
            .as_str()
            .unwrap_or_else(|| panic!("QOS got no ID: {added:?}"))
            .to_owned();
        let exceeded = drops(d, "ep1", "qos_exceeded");
        let bps = measure();
        eprintln!(
            "a -> b capped at {label}: {:.1} Mbit/s ({:+.1}%), qos_exceeded +{}",
            bps / 1e6,
            100.0 * (bps - cap) / cap,
            drops(d, "ep1", "qos_exceeded") - exceeded
        );
        assert!(
            (bps - cap).abs() <= 0.10 * cap,
            "capped at {label}, a -> b measured {:.1} Mbit/s, not within 10%",
            bps / 1e6
        );
        rm(d, &ep("ep1"), &id);
    }
    assert!(policies(d, &ep("ep1")).is_empty());
}

// ------------------------------------------------------------------------
// 5. Bad input.

/// A `policy add` that must be refused: the one-line error mentions
/// `expect`, and neither the daemon's state nor `policy ls` changed.
fn refused_policy(d: &Daemon, owner: &[&str], text: &str, expect: &str) {
    let before = configured(d, &[]);
    let path = write_doc(d, text);
    d.refused(&add_args(owner, path.to_str().unwrap()), expect);
    assert_eq!(
        before,
        configured(d, &[]),
        "refused policy {text} changed policy ls"
    );
}

#[test]
fn bad_policies_are_refused_naming_the_field_and_change_nothing() {
    if !require_root("bad_policies_are_refused_naming_the_field_and_change_nothing") {
        return;
    }
    let _g = shared();
    let lab = Lab::start();
    let d = &lab.d;
    let net = lab.net.as_str();
    add(
        d,
        &ep("ep1"),
        &json!([
            acl(
                "keep",
                "Block",
                "In",
                json!({"Protocols": "6", "LocalPorts": "9"})
            ),
            qos(1_000_000_000),
        ]),
    );
    // Accepted: v1 form, Go-style case-insensitive names, from stdin.
    let v1 = r#"{"type": "acl", "id": "v1-lower", "action": "allow", "direction": "out",
                 "protocols": "6,17", "remoteports": "53", "priority": "300"}"#;
    let out = d.ctl_stdin(
        &[
            "policy",
            "add",
            "--endpoint",
            "ep1",
            "--file",
            "-",
            "--json",
        ],
        v1.as_bytes(),
    );
    assert!(
        out.status.success(),
        "v1 policy from stdin refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: Value = serde_json::from_slice(&out.stdout).expect("policy add --json");
    assert_eq!(reply[0]["ID"], "v1-lower", "{reply}");
    assert_eq!(reply[0]["Type"], "ACL", "{reply}");
    assert_eq!(policies(d, &ep("ep1")).len(), 3);

    let acl_with = |settings: &str| {
        format!(
            r#"{{"Type": "ACL", "Settings": {{"Action": "Block", "Direction": "In", {settings}}}}}"#
        )
    };
    let valid = acl_with(r#""Id": "fine", "Protocols": "6", "LocalPorts": "10""#);
    let e1: &[&str] = &["--endpoint", "ep1"];
    let n1: &[&str] = &["--network", net];
    let no_ep: &[&str] = &["--endpoint", "nosuchep"];
    let no_net: &[&str] = &["--network", "nosuchnet"];
    let cases: Vec<(&[&str], String, &str)> = vec![
        (e1, acl_with(r#""RemoteAddresses": "10.0.0.0/33""#), "RemoteAddresses"),
        (e1, acl_with(r#""LocalAddresses": "10.0.0.300""#), "LocalAddresses"),
        (e1, acl_with(r#""Protocols": "6", "LocalPorts": "70000""#), "LocalPorts"),
        (e1, acl_with(r#""Protocols": "6", "RemotePorts": "90-80""#), "RemotePorts"),
        (e1, acl_with(r#""Protocols": "1", "LocalPorts": "80""#), "LocalPorts"),
        (e1, acl_with(r#""Protocols": "47""#), "Protocols"),
        (e1, acl_with(r#""Protocols": "tcp""#), "Protocols"),
        (e1, acl_with(r#""Priority": 0"#), "Priority"),
        (e1, acl_with(r#""Priority": 65501"#), "Priority"),
        (e1, acl_with(r#""RuleType": "Host""#), "RuleType"),
        (e1, acl_with(r#""Colour": "blue""#), "Colour"),
        (
            e1,
            r#"{"Type": "ACL", "Settings": {"Action": "Deny", "Direction": "In"}}"#.into(),
            "Action",
        ),
        (
            e1,
            r#"{"Type": "ACL", "Settings": {"Action": "Allow", "Direction": "Sideways"}}"#.into(),
            "Direction",
        ),
        (e1, r#"{"Type": "Firewall", "Settings": {}}"#.into(), "Type"),
        (
            e1,
            r#"{"Type": "ACL", "Colour": "blue", "Settings": {"Action": "Allow", "Direction": "In"}}"#
                .into(),
            "Colour",
        ),
        (
            e1,
            r#"{"Type": "QOS", "Settings": {"MaximumOutgoingBandwidthInBytes": 0}}"#.into(),
            "MaximumOutgoingBandwidthInBytes",
        ),
        // v1, lowercase, still named as HNS names it.
        (
            e1,
            r#"{"type": "acl", "action": "allow", "direction": "in", "ruletype": "host"}"#.into(),
            "RuleType",
        ),
        // Two ACLs with one Id in a document, and one Id already taken.
        (
            e1,
            format!(
                "[{}, {}]",
                acl_with(r#""Id": "twice""#),
                acl_with(r#""Id": "twice""#)
            ),
            "Id",
        ),
        (e1, acl_with(r#""Id": "keep""#), "Id"),
        // All or nothing: a valid policy before a bad one is not added.
        (
            e1,
            format!("[{valid}, {}]", acl_with(r#""Protocols": "6", "LocalPorts": "x""#)),
            "LocalPorts",
        ),
        (
            n1,
            acl_with(r#""Protocols": "6", "LocalPorts": "70000""#),
            "LocalPorts",
        ),
        (no_ep, valid.clone(), "nosuchep"),
        (no_net, valid.clone(), "nosuchnet"),
    ];
    for (owner, text, expect) in &cases {
        refused_policy(d, owner, text, expect);
    }

    // Removing what is not there, or through the wrong owner.
    let before = configured(d, &[]);
    d.refused(
        &["policy", "rm", "--endpoint", "ep1", "nosuchid"],
        "nosuchid",
    );
    d.refused(&["policy", "rm", "--endpoint", "ep2", "keep"], "keep");
    d.refused(&["policy", "rm", "--network", net, "keep"], "keep");
    d.refused(
        &["policy", "rm", "--endpoint", "nosuchep", "keep"],
        "nosuchep",
    );
    d.refused(&["policy", "ls", "--endpoint", "nosuchep"], "nosuchep");
    d.refused(&["policy", "ls", "--network", "nosuchnet"], "nosuchnet");
    assert_eq!(before, configured(d, &[]));

    // An endpoint whose initial policies are bad is not created at all.
    let c = Netns::new("pbad");
    let bad = write_doc(d, acl_with(r#""Protocols": "6", "LocalPorts": "70000""#));
    d.refused(
        &[
            "endpoint",
            "create",
            "--network",
            net,
            "--netns",
            &c.name,
            "--policy-file",
            bad.to_str().unwrap(),
            "ep9",
        ],
        "LocalPorts",
    );
    assert_eq!(before, configured(d, &[]));
    assert!(
        !c.exec(&["ip", "link", "show", "eth0"]).status.success(),
        "a refused endpoint left its interface in {}",
        c.name
    );
}

// ------------------------------------------------------------------------
// 6. Port guards.

/// A DHCPv4 BOOTREPLY (op 2) carrying `marker`.
fn dhcp4_reply(marker: &str) -> Vec<u8> {
    let mut p = vec![2, 1, 6, 0];
    p.extend_from_slice(marker.as_bytes());
    p
}

/// A DHCPv6 Reply (type 7) carrying `marker`.
fn dhcp6_reply(marker: &str) -> Vec<u8> {
    let mut p = vec![7, 0, 0, 1];
    p.extend_from_slice(marker.as_bytes());
    p
}

#[test]
fn dhcp_guard_drops_server_messages_until_turned_off() {
    if !require_root("dhcp_guard_drops_server_messages_until_turned_off") {
        return;
    }
    let _g = shared();
    let six = unique_subnet6();
    let mut lab = Lab::new(Daemon::start(), &["--subnet", &six], &[], &[]);
    // Settable at create too.
    lab.add_endpoint("ep3", 20, &["--dhcp-guard", "off", "--router-guard", "off"]);
    let (d, a, b) = (&lab.d, &lab.a, &lab.b);
    assert_eq!(endpoint_field(d, "ep3", "DhcpGuard"), false);
    assert_eq!(endpoint_field(d, "ep3", "RouterGuard"), false);
    assert_eq!(
        endpoint_field(d, "ep1", "DhcpGuard"),
        true,
        "not on by default"
    );
    let ip_b = lab.ip(11);
    let bcast = lab.ip(255);
    let b6 = endpoint_field(d, "ep2", "IPv6Address")
        .as_str()
        .unwrap()
        .to_owned();
    let sink = UdpSink::start(b, &[67, 68, 546, SYNC_PORT]);
    assert!(a.ping_within(&ip_b, FIVE_S));
    assert!(a.ping_within(&b6, FIVE_S));
    sink.sync(a, &ip_b);
    sink.sync(a, &b6);

    // a plays DHCP server: unicast, subnet broadcast, limited broadcast,
    // DHCPv6. And DHCP client, which is fine.
    let server_messages = |round: &str| {
        udp_send(a, 67, &ip_b, 68, &dhcp4_reply(&format!("srv-u{round}")));
        udp_send(a, 67, &bcast, 68, &dhcp4_reply(&format!("srv-b{round}")));
        udp_send(
            a,
            67,
            "255.255.255.255",
            68,
            &dhcp4_reply(&format!("srv-l{round}")),
        );
        udp_send(a, 547, &b6, 546, &dhcp6_reply(&format!("srv-6{round}")));
    };
    let before = drops(d, "ep1", "dhcp_guard");
    server_messages("1");
    udp_send(a, 68, &ip_b, 67, b"\x01\x01\x06\x00client-1");
    sink.sync(a, &ip_b);
    sink.sync(a, &b6);
    let got = sink.got();
    assert!(
        !got.contains("srv-"),
        "DHCP server messages reached b: {got}"
    );
    assert!(
        got.contains("client-1"),
        "a DHCP client message was dropped: {got}"
    );
    assert!(
        wait_until(Duration::from_secs(2), || drops(d, "ep1", "dhcp_guard")
            >= before + 4),
        "dhcp_guard counted {} of 4 drops",
        drops(d, "ep1", "dhcp_guard") - before
    );

    d.ok(&["endpoint", "set", "ep1", "--dhcp-guard", "off"]);
    assert_eq!(endpoint_field(d, "ep1", "DhcpGuard"), false);
    let counted = drops(d, "ep1", "dhcp_guard");
    let arrived = wait_until(FIVE_S, || {
        server_messages("2");
        let got = sink.got();
        ["srv-u2", "srv-b2", "srv-l2", "srv-62"]
            .iter()
            .all(|m| got.contains(m))
    });
    assert!(
        arrived,
        "with --dhcp-guard off, not every server message arrived: {}",
        sink.got()
    );
    assert_eq!(drops(d, "ep1", "dhcp_guard"), counted);

    d.ok(&["endpoint", "set", "ep1", "--dhcp-guard", "on"]);
    server_messages("3");
    sink.sync(a, &ip_b);
    sink.sync(a, &b6);
    let got = sink.got();
    assert!(
        !got.contains("srv-u3") && !got.contains("srv-63"),
        "--dhcp-guard on again, yet server messages arrived: {got}"
    );
}

#[test]
fn router_guard_holds_with_allow_spoofing_until_turned_off() {
    use vswitch_systests::{
        icmpv6_frame, link_local, router_advert, send_frames, ALL_NODES, ALL_NODES_MAC,
    };
    if !require_root("router_guard_holds_with_allow_spoofing_until_turned_off") {
        return;
    }
    let _g = shared();
    let six = unique_subnet6();
    let lab = Lab::new(
        Daemon::start(),
        &["--subnet", &six],
        &["--allow-spoofing"],
        &[],
    );
    let (d, a, b) = (&lab.d, &lab.a, &lab.b);
    assert_eq!(endpoint_field(d, "ep1", "RouterGuard"), true);
    let mac = |e: &str| mac_bytes(endpoint_field(d, e, "MacAddress").as_str().unwrap());
    let (a_mac, b_mac) = (mac("ep1"), mac("ep2"));
    let (a_ll, b_ll) = (link_local(a, "eth0"), link_local(b, "eth0"));
    let prefix: std::net::Ipv6Addr = "2001:db8:7::".parse().unwrap();
    let ra = icmpv6_frame(
        a_mac,
        ALL_NODES_MAC,
        a_ll,
        ALL_NODES,
        &router_advert(a_mac, prefix),
    );
    // A redirect: b should send to `dest` through a.
    let dest: std::net::Ipv6Addr = "2001:db8:9::1".parse().unwrap();
    let mut body = vec![137, 0, 0, 0, 0, 0, 0, 0];
    body.extend_from_slice(&a_ll.octets());
    body.extend_from_slice(&dest.octets());
    let redirect = icmpv6_frame(a_mac, b_mac, a_ll, b_ll, &body);

    let before = drops(d, "ep1", "router_guard");
    send_frames(a, "eth0", &[ra.clone(), ra.clone(), redirect]);
    assert!(
        wait_until(FIVE_S, || drops(d, "ep1", "router_guard") >= before + 3),
        "an --allow-spoofing endpoint's RAs and redirect were not dropped as router_guard"
    );
    let has_route = || {
        b.ok(&["ip", "-6", "route", "show", "default"])
            .contains(&a_ll.to_string())
    };
    assert!(!has_route(), "b took a's router advertisement");

    d.ok(&["endpoint", "set", "ep1", "--router-guard", "off"]);
    assert_eq!(endpoint_field(d, "ep1", "RouterGuard"), false);
    assert_eq!(endpoint_field(d, "ep1", "AllowSpoofing"), true);
    let routed = wait_until(FIVE_S, || {
        send_frames(a, "eth0", std::slice::from_ref(&ra));
        has_route()
    });
    assert!(routed, "with --router-guard off, b ignored a's RA");
}

// ------------------------------------------------------------------------
// 7. Connection tracking limits.

#[test]
fn conntrack_per_port_limit_refuses_new_connections_and_keeps_old_ones() {
    if !require_root("conntrack_per_port_limit_refuses_new_connections_and_keeps_old_ones") {
        return;
    }
    let _g = shared();
    let d = Daemon::start_with(&["--conntrack-max-per-port", "8"]);
    // No IPv6 and no ping: nothing but the test's connections is tracked.
    let lab = Lab::with(d, &[], &[], &[], no_ipv6);
    let (d, a, b) = (&lab.d, &lab.a, &lab.b);
    let ip_b = lab.ip(11);
    add(
        d,
        &ep("ep1"),
        &acl("track", "Allow", "Out", json!({"Priority": 100})),
    );
    let _srv = tcp_whoami(b, "ep2", &ip_b, &[7000]);
    let mut held = TcpHolder::start(a, &ip_b, 7000);
    assert_eq!(
        held.open(8, 3.0, None).0.len(),
        8,
        "8 connections under a limit of 8"
    );
    assert_eq!(held.echo(), 8);
    let full = drops_on(d, &["ep1", "ep2"], "conntrack_full");
    assert_eq!(
        held.open(1, 2.0, None).0.len(),
        0,
        "a 9th connection got past a limit of 8"
    );
    assert!(
        wait_until(Duration::from_secs(2), || drops_on(
            d,
            &["ep1", "ep2"],
            "conntrack_full"
        ) > full),
        "the refused 9th connection was not counted as conntrack_full"
    );
    assert_eq!(
        held.echo(),
        8,
        "established connections stopped at the limit"
    );
    let ports: std::collections::BTreeSet<u64> = connections(d, "ep1", 7000, "established")
        .iter()
        .filter_map(|c| c["SourcePort"].as_u64())
        .collect();
    assert_eq!(ports.len(), 8, "flows dump: {ports:?}");
}

#[test]
fn conntrack_global_limit_counts_every_port() {
    if !require_root("conntrack_global_limit_counts_every_port") {
        return;
    }
    let _g = shared();
    let d = Daemon::start_with(&["--conntrack-max", "8"]);
    let mut lab = Lab::with(d, &[], &[], &[], no_ipv6);
    let c = Netns::new("pc");
    no_ipv6(&c);
    let ip_c = lab.ip(12);
    lab.d.endpoint(&lab.net, &c, &["--ip", &ip_c], "ep3");
    lab.more.push(c);
    let (d, a, b, c) = (&lab.d, &lab.a, &lab.b, &lab.more[0]);
    let ip_b = lab.ip(11);
    for e in ["ep1", "ep3"] {
        add(
            d,
            &ep(e),
            &acl("track", "Allow", "Out", json!({"Priority": 100})),
        );
    }
    let _srv = tcp_whoami(b, "ep2", &ip_b, &[7000]);
    let mut from_a = TcpHolder::start(a, &ip_b, 7000);
    let mut from_c = TcpHolder::start(c, &ip_b, 7000);
    assert_eq!(from_a.open(5, 3.0, None).0.len(), 5);
    assert_eq!(from_c.open(3, 3.0, None).0.len(), 3);
    let all = ["ep1", "ep2", "ep3"];
    let full = drops_on(d, &all, "conntrack_full");
    assert_eq!(
        from_a.open(1, 2.0, None).0.len(),
        0,
        "a 9th connection (from ep1) got past 8"
    );
    assert_eq!(
        from_c.open(1, 2.0, None).0.len(),
        0,
        "a 9th connection (from ep3) got past 8"
    );
    assert!(
        wait_until(Duration::from_secs(2), || drops_on(
            d,
            &all,
            "conntrack_full"
        ) > full),
        "refused connections were not counted as conntrack_full"
    );
    assert_eq!(from_a.echo(), 5);
    assert_eq!(from_c.echo(), 3);
}

// ------------------------------------------------------------------------
// 8. Restarts.

#[test]
fn policies_survive_restarts_and_keep_holding() {
    if !require_root("policies_survive_restarts_and_keep_holding") {
        return;
    }
    let _g = shared();
    let d = Daemon::start();
    let (subnet, prefix) = unique_subnet();
    let net = format!("pol{}", tag());
    d.ok(&[
        "network", "create", "-d", "private", "--subnet", &subnet, &net,
    ]);
    let a = Netns::new("pa");
    let b = Netns::new("pb");
    let (ip_a, ip_b) = (format!("{prefix}.10"), format!("{prefix}.11"));
    // ep2 starts with its policy: enforced from its first packet.
    let start = write_doc(
        &d,
        acl(
            "no-web",
            "Block",
            "In",
            json!({"Protocols": "6", "LocalPorts": "80"}),
        ),
    );
    d.endpoint(&net, &a, &["--ip", &ip_a], "ep1");
    d.endpoint(
        &net,
        &b,
        &["--ip", &ip_b, "--policy-file", start.to_str().unwrap()],
        "ep2",
    );
    let mut lab = Lab {
        d,
        net,
        prefix,
        a,
        b,
        more: Vec::new(),
    };
    let net = lab.net.clone();
    add(&lab.d, &ep("ep1"), &qos(1_000_000_000));
    add(
        &lab.d,
        &net_owner(&net),
        &acl("no-ping", "Block", "In", json!({"Protocols": "1"})),
    );
    let _srv = tcp_whoami(&lab.b, "ep2", &ip_b, &[80, 81]);
    let holds = |lab: &Lab, when: &str| {
        assert!(
            tcp_within(&lab.a, &ip_b, 81, FIVE_S),
            "{when}: no TCP a -> b:81"
        );
        assert!(
            !tcp_ok(&lab.a, &ip_b, 80),
            "{when}: no-web let a reach b:80"
        );
        assert!(!lab.a.ping(&ip_b), "{when}: no-ping let a ping b");
        assert!(!lab.b.ping(&ip_a), "{when}: no-ping let b ping a");
    };
    holds(&lab, "before any restart");
    let before = (configured(&lab.d, &[]), lab.d.json(&["endpoint", "ls"]));
    assert_eq!(before.0.len(), 3, "{:?}", before.0);

    lab.d.kill9();
    lab.d.spawn();
    let after = (configured(&lab.d, &[]), lab.d.json(&["endpoint", "ls"]));
    assert_eq!(before, after, "policies differ after kill -9 and restart");
    holds(&lab, "after kill -9 and restart");

    let status = lab.d.terminate();
    assert!(status.success(), "vswitchd exited with {status}");
    lab.d.spawn();
    let after = (configured(&lab.d, &[]), lab.d.json(&["endpoint", "ls"]));
    assert_eq!(before, after, "policies differ after a clean restart");
    holds(&lab, "after a clean restart");
    // Still removable, by the same ids.
    rm(&lab.d, &net_owner(&net), "no-ping");
    assert!(
        lab.a.ping(&ip_b),
        "no-ping removed after the restart still holds"
    );
}

// ------------------------------------------------------------------------
// 9. trace.

#[test]
fn trace_names_the_blocking_rule_and_the_forwarding_port() {
    if !require_root("trace_names_the_blocking_rule_and_the_forwarding_port") {
        return;
    }
    let _g = shared();
    let lab = Lab::start();
    let (d, a, b) = (&lab.d, &lab.a, &lab.b);
    let (ip_a, ip_b) = (lab.ip(10), lab.ip(11));
    // Both MACs learned, so an allowed packet is forwarded, not flooded.
    assert!(a.ping_within(&ip_b, FIVE_S));
    assert!(b.ping(&ip_a));
    add(
        d,
        &ep("ep2"),
        &acl(
            "web-block",
            "Block",
            "In",
            json!({"Protocols": "6", "LocalPorts": "80", "Priority": 100}),
        ),
    );
    let packet = |dport: u16| format!("tcp,src={ip_a},dst={ip_b},sport=40000,dport={dport}");
    let trace = |args: &[&str]| {
        let mut full = vec!["trace"];
        full.extend_from_slice(args);
        d.json(&full)
    };

    let blocked = trace(&["--endpoint", "ep1", "--packet", &packet(80)]);
    assert_eq!(blocked["Verdict"], "drop", "{blocked:#}");
    assert_eq!(blocked["DropReason"], "acl_blocked", "{blocked:#}");
    assert!(
        blocked["OutPorts"].as_array().is_some_and(Vec::is_empty),
        "{blocked:#}"
    );
    let steps = blocked["Steps"]
        .as_array()
        .unwrap_or_else(|| panic!("trace has no Steps: {blocked:#}"));
    assert!(
        steps.iter().any(|s| s["Detail"]
            .as_str()
            .is_some_and(|t| t.contains("web-block"))),
        "no step names the rule web-block: {blocked:#}"
    );
    assert!(steps.iter().all(|s| s["Stage"].is_string()), "{blocked:#}");

    let allowed = trace(&["--endpoint", "ep1", "--packet", &packet(81)]);
    assert_eq!(allowed["Verdict"], "forward", "{allowed:#}");
    assert_eq!(allowed["OutPorts"], json!(["ep2"]), "{allowed:#}");
    assert!(
        allowed.get("DropReason").is_none_or(Value::is_null),
        "{allowed:#}"
    );

    // The same packet traced arriving at ep2.
    let inbound = trace(&["--endpoint", "ep2", "--in", "--packet", &packet(80)]);
    assert_eq!(inbound["Verdict"], "drop", "{inbound:#}");
    assert_eq!(inbound["DropReason"], "acl_blocked", "{inbound:#}");

    // Plain text says the same.
    let text = d.ok(&["trace", "--endpoint", "ep1", "--packet", &packet(80)]);
    assert!(
        text.contains("web-block") && text.contains("drop"),
        "plain trace: {text}"
    );

    // And the datapath agrees with the trace.
    let _srv = tcp_whoami(b, "ep2", &ip_b, &[80, 81]);
    assert!(tcp_within(a, &ip_b, 81, FIVE_S));
    assert!(!tcp_ok(a, &ip_b, 80));
}
