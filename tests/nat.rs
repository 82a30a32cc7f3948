//! The nat driver end to end (issue 7, section 3): endpoints on a private
//! subnet whose outbound IPv4 TCP, UDP and ICMP echo the switch translates
//! to its uplink's address, port mappings that bring connections from
//! outside to endpoints, hairpin, ICMP errors, the host's own sockets on the
//! same address, port exhaustion, bad requests and restarts; with real
//! namespaces and real traffic.
//!
//! Every test builds its own fabric ([`Site`]): a namespace `host` where its
//! vswitchd runs, a veth uplink from it to an `outside` machine (directly,
//! or through a `router` namespace), and endpoint namespaces. `outside`
//! has no route to the private subnet, so an answer it sends reaches an
//! endpoint only if the switch translated the request. Nothing of the root
//! namespace is touched.
//!
//! Traffic comes from small python3 programs whose servers answer with
//! what they saw: `TAG PEER_IP PEER_PORT` (see [`tcp_whoami`]), so a test
//! reads the translated source straight from the outside machine.
//!
//! Tests that measure throughput hold [`exclusive`], the others [`shared`]
//! (the machine has two cores and vswitchd's datapath takes one).

use std::ops::RangeInclusive;
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use vswitch_systests::{
    ask, configured, default_nat_pool, ephemeral_ports, exclusive, icmp4, iperf3, iperf3_with,
    link_mac, listening, mac_bytes, no_ipv6, pings, policies, quick_icmp, require_root, shared,
    spawn_in, tag, tcp_ask, tcp_whoami, udp_ask, udp_whoami, unique_subnet, veth, wait_until,
    within, write_doc, Capture, Daemon, Failure, KillOnDrop, Netns, TcpHolder, FIVE_S, OUTSIDE_IF,
    TEN_S, UDP_ASK,
};

// ------------------------------------------------------------------------
// Topology.

/// A vswitch host with an uplink into a fabric of the test's own:
///
/// ```text
/// on link:  [host: nuN  P.1] ──veth── [outside: eth0  P.2]
/// routed:   [host: nuN  P.1] ──veth── [router: eth0 P.2 | eth1 Q.1] ──veth── [outside: eth0 Q.2]
/// ```
///
/// The host's default route is via P.2 (the outside machine, or the
/// router); the outside machine's only route towards the host is P.0/24
/// (on link) or its default via the router: never the private subnet.
///
/// Fields drop in order: the daemon first (it removes its endpoints and
/// networks), then the endpoint namespaces, then the fabric.
struct Site {
    d: Daemon,
    eps: Vec<Netns>,
    host: Netns,
    outside: Netns,
    router: Option<Netns>,
    /// The host's uplink, unique per test (the daemon pins its XDP program
    /// under the interface's name, in the one bpffs of the machine).
    uplink: String,
    /// `a.b.c` of the wire on the uplink: the host is .1, its next hop .2.
    wire: String,
    /// The outside machine's address.
    outside_ip: String,
}

impl Site {
    /// The host wired straight to the outside machine.
    fn on_link() -> Site {
        Site::build(false, &[])
    }

    /// The host behind a router from the outside machine.
    fn routed() -> Site {
        Site::build(true, &[])
    }

    fn build(routed: bool, daemon_args: &[&str]) -> Site {
        let host = Netns::new("nh");
        let outside = Netns::new("no");
        let (_, wire) = unique_subnet();
        let uplink = format!("nu{}", tag());
        let (router, outside_ip, outside_gateway) = if routed {
            let router = Netns::new("nr");
            let (_, far) = unique_subnet();
            veth(&host, &uplink, &router, "eth0");
            veth(&router, "eth1", &outside, OUTSIDE_IF);
            router.ok(&["ip", "addr", "add", &format!("{wire}.2/24"), "dev", "eth0"]);
            router.ok(&["ip", "addr", "add", &format!("{far}.1/24"), "dev", "eth1"]);
            router.ok(&["ip", "link", "set", "eth0", "up"]);
            router.ok(&["ip", "link", "set", "eth1", "up"]);
            router.ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
            quick_icmp(&router);
            (Some(router), format!("{far}.2"), Some(format!("{far}.1")))
        } else {
            veth(&host, &uplink, &outside, OUTSIDE_IF);
            (None, format!("{wire}.2"), None)
        };
        outside.ok(&[
            "ip",
            "addr",
            "add",
            &format!("{outside_ip}/24"),
            "dev",
            OUTSIDE_IF,
        ]);
        outside.ok(&["ip", "link", "set", OUTSIDE_IF, "up"]);
        if let Some(gateway) = &outside_gateway {
            outside.ok(&["ip", "route", "add", "default", "via", gateway]);
        }
        quick_icmp(&outside);
        host.ok(&["ip", "addr", "add", &format!("{wire}.1/24"), "dev", &uplink]);
        host.ok(&["ip", "link", "set", &uplink, "up"]);
        host.ok(&["ip", "route", "add", "default", "via", &format!("{wire}.2")]);
        // The host does not route: whatever reaches the outside machine from
        // an endpoint was translated by the switch, not forwarded by Linux.
        host.ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"]);
        let d = Daemon::start_in_with(&host, daemon_args);
        Site {
            d,
            eps: Vec::new(),
            host,
            outside,
            router,
            uplink,
            wire,
            outside_ip,
        }
    }

    /// The uplink's address: what the outside machine sees.
    fn uplink_ip(&self) -> String {
        format!("{}.1", self.wire)
    }

    /// `network create -d nat --subnet S -o interface=UPLINK [extra] NAME`;
    /// returns the name and the subnet's prefix (`a.b.c`).
    fn nat_network(&self, extra: &[&str]) -> (String, String) {
        let (subnet, prefix) = unique_subnet();
        let name = format!("nat{}", tag());
        let iface = format!("interface={}", self.uplink);
        let mut args = vec!["network", "create", "-d", "nat", "--subnet", &subnet];
        args.extend_from_slice(&["-o", &iface]);
        args.extend_from_slice(extra);
        args.push(&name);
        self.d.ok(&args);
        (name, prefix)
    }

    /// Endpoint `name` on `net` in a namespace of its own, with `args`
    /// (e.g. `--ip`, `-p`); `prepare` runs in the namespace first. Returns
    /// its index in `eps`.
    fn endpoint_with(
        &mut self,
        net: &str,
        name: &str,
        args: &[&str],
        prepare: impl Fn(&Netns),
    ) -> usize {
        let ns = Netns::new("ne");
        prepare(&ns);
        self.d.endpoint(net, &ns, args, name);
        self.eps.push(ns);
        self.eps.len() - 1
    }

    fn endpoint(&mut self, net: &str, name: &str, args: &[&str]) -> usize {
        self.endpoint_with(net, name, args, |_| {})
    }

    /// The host's ephemeral ports and the default NAT pool above them.
    fn ephemeral(&self) -> RangeInclusive<u16> {
        ephemeral_ports(&self.host)
    }

    fn default_pool(&self) -> RangeInclusive<u16> {
        default_nat_pool(&self.host)
    }
}

fn in_subnet(ip: &str, prefix: &str) -> bool {
    ip.starts_with(&format!("{prefix}."))
}

// ------------------------------------------------------------------------
// Traffic, from python3 (scripts/lib.sh installs it), beyond the harness's
// whoami programs.

/// Sends UDP probes to `dst` port argv[2] with TTL argv[3], again every
/// half second, until the socket's error queue holds an ICMP error (printed
/// as `TYPE CODE OFFENDER`) or argv[4] seconds pass (exit status 4).
const UDP_PROBE: &str = r#"
import socket, struct, sys, time
dst, port, ttl, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
IP_RECVERR = 11
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_IP, IP_RECVERR, 1)
s.setsockopt(socket.SOL_IP, socket.IP_TTL, ttl)
s.connect((dst, port))
deadline, next_send = time.time() + timeout, 0.0
while time.time() < deadline:
    if time.time() >= next_send:
        try:
            s.send(b"vswitch-nat-probe")
        except OSError:
            pass
        next_send = time.time() + 0.5
    try:
        _, anc, _, _ = s.recvmsg(512, 512, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        time.sleep(0.02)
        continue
    for level, kind, data in anc:
        if level == socket.SOL_IP and kind == IP_RECVERR:
            _, origin, etype, code, _, _, _ = struct.unpack("=IBBBBII", data[:16])
            print(etype, code, socket.inet_ntoa(data[20:24]))
            sys.exit(0)
sys.exit(4)
"#;

/// One ICMP echo request with the id argv[2] from a raw socket, to argv[1];
/// exit status 0 if its reply came back within 2 s.
const ECHO_ID: &str = r#"
import socket, struct, sys, time
dst, ident = sys.argv[1], int(sys.argv[2])
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    s += s >> 16
    return ~s & 0xffff
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(0.5)
body = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"vswitch!"
body = body[:2] + struct.pack("!H", csum(body)) + body[4:]
s.sendto(body, (dst, 0))
end = time.time() + 2
while time.time() < end:
    try:
        d, _ = s.recvfrom(1500)
    except socket.timeout:
        continue
    ihl = (d[0] & 15) * 4
    kind, _, _, i, _ = struct.unpack("!BBHHH", d[ihl:ihl + 8])
    if kind == 0 and i == ident:
        sys.exit(0)
sys.exit(f"no echo reply with id {ident}")
"#;

// ------------------------------------------------------------------------
// What the daemon says.

/// Drops for `reason` summed over every port of network `net`.
fn net_drops(d: &Daemon, net: &str, reason: &str) -> u64 {
    let stats = d.json(&["stats"]);
    stats
        .as_array()
        .unwrap_or_else(|| panic!("stats answered {stats}, not a list"))
        .iter()
        .filter(|p| p["Network"] == net)
        .map(|p| {
            p["Drops"][reason].as_u64().unwrap_or_else(|| {
                panic!("stats of {} have no drop reason {reason}: {p}", p["Port"])
            })
        })
        .sum()
}

/// A field of a policy's settings, by HNS's case-insensitive name; the
/// settings may be shown as given (`{"Type", "Settings": {...}}`) or as
/// the `Settings` object alone.
fn setting<'a>(policy: &'a Value, field: &str) -> Option<&'a Value> {
    let find = |obj: &'a Value, key: &str| {
        obj.as_object()?
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    };
    let settings = find(policy, "Settings")?;
    let inner = find(settings, "Settings").unwrap_or(settings);
    find(inner, field)
}

/// The PortMapping policies of `endpoint`: (ID, protocol, internal port,
/// external port).
fn mappings(d: &Daemon, endpoint: &str) -> Vec<(String, u64, u64, u64)> {
    policies(d, &["--endpoint", endpoint])
        .iter()
        .filter(|p| p["Type"] == "PortMapping")
        .map(|p| {
            let num = |f: &str| {
                setting(p, f)
                    .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
                    .unwrap_or_else(|| panic!("PortMapping without {f}: {p}"))
            };
            (
                p["ID"].as_str().unwrap_or_default().to_owned(),
                num("Protocol"),
                num("InternalPort"),
                num("ExternalPort"),
            )
        })
        .collect()
}

/// The external port of `endpoint`'s mapping to `internal` (`proto` 6/17).
fn external_port(d: &Daemon, endpoint: &str, proto: u64, internal: u64) -> u16 {
    let all = mappings(d, endpoint);
    let m = all
        .iter()
        .find(|m| m.1 == proto && m.2 == internal)
        .unwrap_or_else(|| panic!("{endpoint} has no mapping to {internal}/{proto}: {all:?}"));
    u16::try_from(m.3).expect("a port")
}

/// A request that must be refused naming `expect`, with networks,
/// endpoints, ports, the state file and policies unchanged.
fn refused(d: &Daemon, args: &[&str], expect: &str) {
    let before = configured(d, &[]);
    d.refused(args, expect);
    assert_eq!(
        before,
        configured(d, &[]),
        "vswitchctl {args:?} changed the policies although refused"
    );
}

fn port_mapping(proto: u8, internal: u16, external: u16) -> Value {
    json!({"Type": "PortMapping", "Settings": {"Protocol": proto, "InternalPort": internal, "ExternalPort": external}})
}

// ------------------------------------------------------------------------
// 1. Outbound translation.

#[test]
fn outbound_ping_tcp_udp_leave_with_the_uplink_address_and_pool_ports() {
    if !require_root("outbound_ping_tcp_udp_leave_with_the_uplink_address_and_pool_ports") {
        return;
    }
    let _g = exclusive();
    let mut s = Site::on_link();
    let (net, prefix) = s.nat_network(&[]);
    let (ip1, ip2) = (format!("{prefix}.10"), format!("{prefix}.11"));
    let a = s.endpoint(&net, "ep1", &["--ip", &ip1]);
    let b = s.endpoint(&net, "ep2", &["--ip", &ip2]);
    let (up_ip, out_ip) = (s.uplink_ip(), s.outside_ip.clone());
    let pool = s.default_pool();
    let cap = Capture::start(&s.outside, OUTSIDE_IF);
    let _tcp = tcp_whoami(&s.outside, "outside", &out_ip, &[7000]);
    let _udp = udp_whoami(&s.outside, "outside", &out_ip, 7001);

    for (i, ep) in [(a, "ep1"), (b, "ep2")] {
        let ns = &s.eps[i];
        assert!(pings(ns, &out_ip), "{ep} cannot ping the outside machine");
        let tcp = within(&format!("TCP {ep} -> outside"), TEN_S, || {
            tcp_ask(ns, &out_ip, 7000)
        });
        assert_eq!(tcp.ip, up_ip, "outside saw {ep}'s TCP from {tcp:?}");
        assert!(
            pool.contains(&tcp.port),
            "TCP source port {} outside the pool {pool:?}",
            tcp.port
        );
        let udp = within(&format!("UDP {ep} -> outside"), TEN_S, || {
            udp_ask(ns, &out_ip, 7001)
        });
        assert_eq!(udp.ip, up_ip, "outside saw {ep}'s UDP from {udp:?}");
        assert!(
            pool.contains(&udp.port),
            "UDP source port {} outside the pool {pool:?}",
            udp.port
        );
    }

    // The same source port from both endpoints at once: two bindings.
    let mut h1 = TcpHolder::start(&s.eps[a], &out_ip, 7000);
    let mut h2 = TcpHolder::start(&s.eps[b], &out_ip, 7000);
    let (p1, e1) = h1.open(1, 3.0, Some(40000));
    let (p2, e2) = h2.open(1, 3.0, Some(40000));
    assert_eq!((p1.len(), p2.len()), (1, 1), "errors: {e1:?} {e2:?}");
    assert_ne!(
        p1[0].port, p2[0].port,
        "two endpoints' connections from port 40000 share {:?}",
        p1[0]
    );
    for p in p1.iter().chain(&p2) {
        assert_eq!(p.ip, up_ip);
        assert!(pool.contains(&p.port), "{p:?} outside the pool {pool:?}");
    }
    assert_eq!((h1.echo(), h2.echo()), (1, 1));
    // UDP likewise, while the first binding is still alive.
    let u1 = within("UDP ep1:5000", TEN_S, || {
        ask(UDP_ASK, &s.eps[a], &out_ip, 7001, Some(5000))
    });
    let u2 = within("UDP ep2:5000", TEN_S, || {
        ask(UDP_ASK, &s.eps[b], &out_ip, 7001, Some(5000))
    });
    assert_ne!(
        u1.port, u2.port,
        "two endpoints' UDP from port 5000 share {u1:?}"
    );

    // TCP super-frames both ways through the translation.
    let up = iperf3(&s.eps[a], &s.outside, &out_ip, 2);
    let down = iperf3_with(&s.eps[a], &s.outside, &out_ip, 2, &["-R"]);
    eprintln!(
        "iperf3 ep1 -> outside {:.2} Gbit/s, outside -> ep1 {:.2} Gbit/s",
        up / 1e9,
        down / 1e9
    );
    assert!(up > 10e6, "TCP ep1 -> outside too slow: {up} bit/s");
    assert!(down > 10e6, "TCP outside -> ep1 too slow: {down} bit/s");

    // The outside machine saw the uplink's address only, and echo ids from
    // the pool.
    cap.sync(&s.outside, &up_ip);
    let frames = cap.frames();
    // No frame with a private address, ARP included: the private
    // subnet's broadcast domain ends at the switch.
    let private: Vec<String> = frames
        .iter()
        .filter(|f| {
            vswitch_systests::frame_ips(f)
                .iter()
                .any(|ip| in_subnet(&ip.to_string(), &prefix))
        })
        .map(|f| f.iter().take(42).map(|b| format!("{b:02x}")).collect())
        .collect();
    assert!(
        private.is_empty(),
        "the outside machine saw {} frames with private addresses, e.g. {:?}",
        private.len(),
        &private[..private.len().min(4)]
    );
    // Every frame on the wire is the uplink's or the outside machine's:
    // no endpoint MAC, IPv6 multicast included.
    let known = [
        mac_bytes(&link_mac(&s.host, &s.uplink)),
        mac_bytes(&link_mac(&s.outside, OUTSIDE_IF)),
    ];
    let strangers: Vec<String> = frames
        .iter()
        .filter(|f| f.len() >= 14 && !known.iter().any(|m| f[6..12] == m[..]))
        .map(|f| f.iter().take(42).map(|b| format!("{b:02x}")).collect())
        .collect();
    assert!(
        strangers.is_empty(),
        "{} frames on the wire came from neither the uplink nor the outside machine, e.g. {:?}",
        strangers.len(),
        &strangers[..strangers.len().min(4)]
    );
    let requests: Vec<_> = frames
        .iter()
        .filter_map(|f| icmp4(f))
        .filter(|(_, dst, kind, _)| dst.to_string() == out_ip && *kind == 8)
        .collect();
    assert!(
        !requests.is_empty(),
        "no echo request reached the outside machine"
    );
    for (src, _, _, id) in &requests {
        assert_eq!(src.to_string(), up_ip, "echo request from {src}");
        assert!(pool.contains(id), "echo id {id} outside the pool {pool:?}");
    }

    // flows dump shows the connection as the endpoint made it, with the
    // translation.
    let flows = s.d.json(&["flows", "dump", "--endpoint", "ep1"]);
    let conns = flows["Connections"]
        .as_array()
        .unwrap_or_else(|| panic!("flows dump has no Connections: {flows:#}"));
    let held = conns
        .iter()
        .find(|c| {
            c["Source"] == ip1.as_str() && c["SourcePort"] == 40000 && c["DestinationPort"] == 7000
        })
        .unwrap_or_else(|| panic!("no connection {ip1}:40000 -> {out_ip}:7000 in {flows:#}"));
    assert_eq!(held["Destination"], out_ip.as_str(), "{held}");
    let text = held.to_string();
    assert!(
        text.contains(&up_ip) && text.contains(&p1[0].port.to_string()),
        "the connection does not show its translation to {up_ip}:{}: {held}",
        p1[0].port
    );
}

// ------------------------------------------------------------------------
// 2. The default interface and subnet.

#[test]
fn default_interface_is_the_default_routes_and_the_subnet_is_picked() {
    if !require_root("default_interface_is_the_default_routes_and_the_subnet_is_picked") {
        return;
    }
    let _g = shared();
    let mut s = Site::on_link();
    let net = format!("nat{}", tag());
    s.d.ok(&["network", "create", "-d", "nat", &net]);
    let info = s.d.json(&["network", "inspect", &net]);
    assert_eq!(info["Options"]["interface"], s.uplink.as_str(), "{info:#}");
    assert_eq!(info["UplinkInterface"], s.uplink.as_str(), "{info:#}");
    let text = s.d.ok(&["network", "inspect", &net]);
    assert!(
        text.contains(&s.uplink),
        "plain inspect does not name {}: {text}",
        s.uplink
    );
    let subnet = info["Subnets"][0]["AddressPrefix"]
        .as_str()
        .unwrap_or_else(|| panic!("no subnet: {info:#}"))
        .to_owned();
    assert!(
        subnet.starts_with("172.30.") && subnet.ends_with(".0/24"),
        "default subnet {subnet} is not a 172.30.x.0/24"
    );
    let prefix = subnet.trim_end_matches(".0/24").to_owned();
    assert_eq!(
        info["Subnets"][0]["GatewayAddress"],
        format!("{prefix}.1"),
        "{info:#}"
    );
    // The gateway lives on a host port in the daemon's namespace.
    let host_if = info["HostInterface"]
        .as_str()
        .unwrap_or_else(|| panic!("no host port: {info:#}"));
    let addrs = s
        .host
        .ok(&["ip", "-4", "-o", "addr", "show", "dev", host_if]);
    assert!(
        addrs.contains(&format!("{prefix}.1/24")),
        "{host_if}: {addrs}"
    );

    let a = s.endpoint(&net, "ep1", &[]);
    let ep = s.d.json(&["endpoint", "inspect", "ep1"]);
    let ip = ep["IPAddress"].as_str().unwrap_or_default().to_owned();
    assert!(
        in_subnet(&ip, &prefix),
        "ep1 got {ip}, not an address of {subnet}: {ep}"
    );
    let out_ip = s.outside_ip.clone();
    let _srv = tcp_whoami(&s.outside, "outside", &out_ip, &[7000]);
    let seen = within("TCP ep1 -> outside", TEN_S, || {
        tcp_ask(&s.eps[a], &out_ip, 7000)
    });
    assert_eq!(seen.ip, s.uplink_ip());
    assert!(
        pings(&s.eps[a], &out_ip),
        "ep1 cannot ping the outside machine"
    );
}

// ------------------------------------------------------------------------
// 3. An off-link destination, through the uplink's default router.

#[test]
fn off_link_destinations_go_through_the_default_router() {
    if !require_root("off_link_destinations_go_through_the_default_router") {
        return;
    }
    let _g = shared();
    let mut s = Site::routed();
    let (net, prefix) = s.nat_network(&[]);
    let a = s.endpoint(&net, "ep1", &["--ip", &format!("{prefix}.10")]);
    let out_ip = s.outside_ip.clone();
    let _tcp = tcp_whoami(&s.outside, "outside", &out_ip, &[7000]);
    let _udp = udp_whoami(&s.outside, "outside", &out_ip, 7001);
    assert!(
        pings(&s.eps[a], &out_ip),
        "ep1 cannot ping the outside machine behind the router"
    );
    let tcp = within("TCP ep1 -> outside", TEN_S, || {
        tcp_ask(&s.eps[a], &out_ip, 7000)
    });
    assert_eq!(tcp.ip, s.uplink_ip(), "{tcp:?}");
    let udp = within("UDP ep1 -> outside", TEN_S, || {
        udp_ask(&s.eps[a], &out_ip, 7001)
    });
    assert_eq!(udp.ip, s.uplink_ip(), "{udp:?}");
    // The router's own address on the wire is on link.
    let router_ip = format!("{}.2", s.wire);
    assert!(pings(&s.eps[a], &router_ip), "ep1 cannot ping the router");
    // The router forwarded it: the frames came to it addressed to its MAC.
    let router = s.router.as_ref().expect("routed site");
    let fwd = router.ok(&["cat", "/proc/net/snmp"]);
    let forwarded: u64 = fwd
        .lines()
        .filter(|l| l.starts_with("Ip:"))
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(6))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(forwarded > 0, "the router forwarded nothing: {fwd}");
}

// ------------------------------------------------------------------------
// 4. Port mappings from outside.

#[test]
fn static_and_dynamic_port_mappings_serve_outside_until_removed() {
    if !require_root("static_and_dynamic_port_mappings_serve_outside_until_removed") {
        return;
    }
    let _g = shared();
    let mut s = Site::on_link();
    let (net, prefix) = s.nat_network(&[]);
    let a = s.endpoint(
        &net,
        "ep1",
        &[
            "--ip",
            &format!("{prefix}.10"),
            "-p",
            "8080:80/tcp",
            "-p",
            "8053:53/udp",
        ],
    );
    let b = s.endpoint(
        &net,
        "ep2",
        &["--ip", &format!("{prefix}.11"), "-p", "0:80/tcp"],
    );
    let _s1 = tcp_whoami(&s.eps[a], "ep1", "0.0.0.0", &[80]);
    let _s1u = udp_whoami(&s.eps[a], "ep1", "0.0.0.0", 53);
    let _s2 = tcp_whoami(&s.eps[b], "ep2", "0.0.0.0", &[80]);
    let (up_ip, out_ip) = (s.uplink_ip(), s.outside_ip.clone());

    assert_eq!(external_port(&s.d, "ep1", 6, 80), 8080);
    assert_eq!(external_port(&s.d, "ep1", 17, 53), 8053);
    let dynamic = external_port(&s.d, "ep2", 6, 80);
    assert!(dynamic != 0 && dynamic != 8080, "picked port {dynamic}");
    assert!(
        !s.ephemeral().contains(&dynamic),
        "picked port {dynamic} is in the host's ephemeral range"
    );

    let seen = within("outside -> 8080", TEN_S, || {
        tcp_ask(&s.outside, &up_ip, 8080)
    });
    assert_eq!(seen.tag, "ep1", "{seen:?}");
    assert_eq!(seen.ip, out_ip, "ep1 saw the connection from {seen:?}");
    let seen = within("outside -> picked port", TEN_S, || {
        tcp_ask(&s.outside, &up_ip, dynamic)
    });
    assert_eq!(seen.tag, "ep2", "{seen:?}");
    assert_eq!(seen.ip, out_ip, "ep2 saw the connection from {seen:?}");
    let seen = within("outside -> 8053/udp", TEN_S, || {
        udp_ask(&s.outside, &up_ip, 8053)
    });
    assert_eq!(seen.tag, "ep1", "{seen:?}");
    // Many connections, each a new binding.
    for i in 0..20 {
        let seen = tcp_ask(&s.outside, &up_ip, 8080)
            .unwrap_or_else(|e| panic!("connection {i} to 8080: {e:?}"));
        assert_eq!(seen.tag, "ep1");
    }

    // Removing the policy stops the mapping and gives the port back to
    // the host.
    let id = mappings(&s.d, "ep1")
        .into_iter()
        .find(|m| m.3 == 8080)
        .map(|m| m.0)
        .expect("the 8080 mapping");
    s.d.ok(&["policy", "rm", "--endpoint", "ep1", &id]);
    assert!(
        wait_until(FIVE_S, || tcp_ask(&s.outside, &up_ip, 8080).is_err()),
        "8080 still served after its mapping was removed"
    );
    assert!(mappings(&s.d, "ep1").iter().all(|m| m.3 != 8080));
    let _host = tcp_whoami(&s.host, "host", "0.0.0.0", &[8080]);
    let seen = within("outside -> the host's own 8080", FIVE_S, || {
        tcp_ask(&s.outside, &up_ip, 8080)
    });
    assert_eq!(
        seen.tag, "host",
        "8080 did not go back to the host: {seen:?}"
    );
    // The other mappings stay.
    assert_eq!(
        udp_ask(&s.outside, &up_ip, 8053).map(|s| s.tag),
        Ok("ep1".to_owned())
    );
    assert_eq!(
        tcp_ask(&s.outside, &up_ip, dynamic).map(|s| s.tag),
        Ok("ep2".to_owned())
    );

    // Removing the endpoint takes its mapping with it.
    s.d.ok(&["endpoint", "rm", "ep2"]);
    assert!(
        wait_until(FIVE_S, || tcp_ask(&s.outside, &up_ip, dynamic).is_err()),
        "port {dynamic} still served after ep2 was removed"
    );
    assert_eq!(
        udp_ask(&s.outside, &up_ip, 8053).map(|s| s.tag),
        Ok("ep1".to_owned())
    );
}

// ------------------------------------------------------------------------
// 5. Hairpin.

#[test]
fn hairpin_reaches_a_mapped_port_of_another_endpoint() {
    if !require_root("hairpin_reaches_a_mapped_port_of_another_endpoint") {
        return;
    }
    let _g = shared();
    let mut s = Site::on_link();
    let (net, prefix) = s.nat_network(&[]);
    let a = s.endpoint(&net, "ep1", &["--ip", &format!("{prefix}.10")]);
    let b = s.endpoint(
        &net,
        "ep2",
        &[
            "--ip",
            &format!("{prefix}.11"),
            "-p",
            "8080:80/tcp",
            "-p",
            "8053:53/udp",
        ],
    );
    let _t = tcp_whoami(&s.eps[b], "ep2", "0.0.0.0", &[80]);
    let _u = udp_whoami(&s.eps[b], "ep2", "0.0.0.0", 53);
    let up_ip = s.uplink_ip();
    let seen = within("ep1 -> uplink:8080", TEN_S, || {
        tcp_ask(&s.eps[a], &up_ip, 8080)
    });
    assert_eq!(seen.tag, "ep2", "{seen:?}");
    let seen = within("ep1 -> uplink:8053/udp", TEN_S, || {
        udp_ask(&s.eps[a], &up_ip, 8053)
    });
    assert_eq!(seen.tag, "ep2", "{seen:?}");
    // Outside still reaches it too.
    let seen = within("outside -> uplink:8080", TEN_S, || {
        tcp_ask(&s.outside, &up_ip, 8080)
    });
    assert_eq!(seen.tag, "ep2", "{seen:?}");
}

// ------------------------------------------------------------------------
// 6. The host's own sockets on the uplink's address.

#[test]
fn host_sockets_keep_working_under_nat_load() {
    if !require_root("host_sockets_keep_working_under_nat_load") {
        return;
    }
    let _g = exclusive();
    let mut s = Site::on_link();
    let (net, prefix) = s.nat_network(&[]);
    let a = s.endpoint(&net, "ep1", &["--ip", &format!("{prefix}.10")]);
    let (up_ip, out_ip) = (s.uplink_ip(), s.outside_ip.clone());
    let eph = s.ephemeral();
    let pool = s.default_pool();
    let _who = tcp_whoami(&s.outside, "outside", &out_ip, &[7000]);
    let _iperf_srv = spawn_in(&s.outside, &["iperf3", "-s", "-B", &out_ip]);
    assert!(wait_until(FIVE_S, || listening(&s.outside, 't', 5201)));
    // A server of the host's own, on a port outside the pool.
    let host_port = 7100;
    assert!(!pool.contains(&host_port));
    let _host_srv = tcp_whoami(&s.host, "host", "0.0.0.0", &[host_port]);
    assert!(pings(&s.eps[a], &out_ip));

    let report = s.d.dir.join("iperf3-load.json");
    let mut load = Command::new("ip")
        .args([
            "netns",
            "exec",
            &s.eps[a].name,
            "iperf3",
            "-c",
            &out_ip,
            // Long enough to outlast the host's checks on a loaded machine.
            "-t",
            "20",
            "-J",
        ])
        .stdout(std::fs::File::create(&report).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .map(KillOnDrop)
        .expect("start iperf3");
    // Under way once the outside machine has the data connection.
    let running = wait_until(FIVE_S, || {
        s.outside
            .ok(&["ss", "-Htn", "state", "established", "sport = :5201"])
            .lines()
            .count()
            >= 2
    });
    assert!(running, "iperf3 from ep1 did not start");

    for i in 0..10 {
        let seen = within(&format!("host -> outside ({i})"), FIVE_S, || {
            tcp_ask(&s.host, &out_ip, 7000)
        });
        assert_eq!(seen.ip, up_ip, "{seen:?}");
        assert!(
            eph.contains(&seen.port),
            "the host's own connection left from {} (not its ephemeral range)",
            seen.port
        );
        let seen = within(
            &format!("outside -> host:{host_port} ({i})"),
            FIVE_S,
            || tcp_ask(&s.outside, &up_ip, host_port),
        );
        assert_eq!(seen.tag, "host", "{seen:?}");
        assert_eq!(seen.ip, out_ip, "{seen:?}");
    }
    assert!(
        s.host.ping(&out_ip),
        "the host cannot ping the outside machine"
    );
    assert!(
        s.outside.ping(&up_ip),
        "the outside machine cannot ping the host"
    );
    assert!(
        load.0.try_wait().expect("iperf3 status").is_none(),
        "iperf3 ended before the host's connections were done: not under load"
    );
    let status = load.0.wait().expect("wait for iperf3");
    let result: Value = serde_json::from_slice(&std::fs::read(&report).unwrap_or_default())
        .unwrap_or_else(|_| panic!("iperf3 gave no JSON (exit {status})"));
    assert!(
        result.get("error").is_none(),
        "iperf3 failed: {}",
        result["error"]
    );
    let bps = result["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    eprintln!(
        "iperf3 ep1 -> outside under the host's connections: {:.2} Gbit/s",
        bps / 1e9
    );
    assert!(bps > 10e6, "iperf3 through the NAT too slow: {bps} bit/s");
}

/// The kernel keeps no ICMP echo ids from the switch the way
/// ip_local_port_range keeps ports: a raw socket picks any id, and ping
/// sockets (net.ipv4.ping_group_range) get ids that cycle through all of
/// them. The host's own echo requests must get their replies whatever the
/// id, the pool's included, unless the switch holds that very id towards
/// that very destination for a translated ping at the same time (then the
/// two replies cannot be told apart; docs/design.md).
#[test]
fn host_echo_ids_in_the_pool_keep_their_replies() {
    if !require_root("host_echo_ids_in_the_pool_keep_their_replies") {
        return;
    }
    let _g = shared();
    let mut s = Site::on_link();
    let (net, prefix) = s.nat_network(&[]);
    let a = s.endpoint(&net, "ep1", &["--ip", &format!("{prefix}.10")]);
    let out_ip = s.outside_ip.clone();
    // An endpoint's ping holds a binding meanwhile.
    assert!(pings(&s.eps[a], &out_ip));
    let _ping = spawn_in(&s.eps[a], &["ping", "-i", "0.2", &out_ip]);
    assert!(s.host.ping_within(&out_ip, FIVE_S));
    let pool = s.default_pool();
    let mut lost = Vec::new();
    // The endpoint's pings hold the pool's first ids (it is handed out
    // from the bottom up); these are in the pool and not held.
    for id in [1234, 63000, *pool.end() - 1, *pool.end()] {
        let out = s
            .host
            .exec(&["python3", "-c", ECHO_ID, &out_ip, &id.to_string()]);
        if !out.status.success() {
            lost.push(id);
        }
    }
    assert!(
        lost.is_empty(),
        "the host's echo requests with ids {lost:?} got no reply (pool {pool:?}; nat_no_binding {})",
        net_drops(&s.d, &net, "nat_no_binding")
    );
}

// ------------------------------------------------------------------------
// 7. Port exhaustion.

#[test]
fn port_exhaustion_is_a_counted_drop_and_old_connections_live() {
    if !require_root("port_exhaustion_is_a_counted_drop_and_old_connections_live") {
        return;
    }
    let _g = shared();
    let mut s = Site::on_link();
    let (net, prefix) = s.nat_network(&["-o", "nat_ports=64000-64003"]);
    // No IPv6: nothing but the test's connections asks for a port.
    let a = s.endpoint_with(&net, "ep1", &["--ip", &format!("{prefix}.10")], no_ipv6);
    let out_ip = s.outside_ip.clone();
    let _srv = tcp_whoami(&s.outside, "outside", &out_ip, &[7000]);
    // The host resolves the outside machine first, so no connection's
    // first packet waits for the neighbour.
    assert!(s.host.ping_within(&out_ip, FIVE_S));

    let mut held = TcpHolder::start(&s.eps[a], &out_ip, 7000);
    let (peers, errors) = held.open(4, 3.0, None);
    assert_eq!(peers.len(), 4, "4 connections on 4 ports: {errors:?}");
    let ports: std::collections::BTreeSet<u16> = peers.iter().map(|p| p.port).collect();
    assert_eq!(ports, (64000..=64003).collect(), "{peers:?}");
    let before = net_drops(&s.d, &net, "nat_exhausted");
    let (fifth, _) = held.open(1, 2.0, None);
    assert!(
        fifth.is_empty(),
        "a 5th connection got a port of 4: {fifth:?}"
    );
    assert!(
        wait_until(FIVE_S, || net_drops(&s.d, &net, "nat_exhausted") > before),
        "the 5th connection was not counted as nat_exhausted"
    );
    // The daemon is fine and the four still carry data.
    s.d.ok(&["network", "ls"]);
    assert_eq!(held.echo(), 4, "held connections stopped at exhaustion");
}

// ------------------------------------------------------------------------
// 8. ICMP errors.

#[test]
fn port_unreachable_reaches_the_endpoint_translated() {
    if !require_root("port_unreachable_reaches_the_endpoint_translated") {
        return;
    }
    let _g = shared();
    let mut s = Site::on_link();
    let (net, prefix) = s.nat_network(&[]);
    let a = s.endpoint(&net, "ep1", &["--ip", &format!("{prefix}.10")]);
    let out_ip = s.outside_ip.clone();
    assert!(!listening(&s.outside, 'u', 9999));
    let refused = wait_until(TEN_S, || {
        matches!(
            udp_ask(&s.eps[a], &out_ip, 9999),
            Err((Failure::Refused, _))
        )
    });
    assert!(
        refused,
        "no port unreachable reached ep1: {:?}",
        udp_ask(&s.eps[a], &out_ip, 9999)
    );
    // Every time, not once.
    for _ in 0..3 {
        assert!(
            matches!(
                udp_ask(&s.eps[a], &out_ip, 9999),
                Err((Failure::Refused, _))
            ),
            "a later port unreachable did not reach ep1"
        );
    }
}

#[test]
fn ttl_expiry_at_the_router_reaches_the_endpoint() {
    if !require_root("ttl_expiry_at_the_router_reaches_the_endpoint") {
        return;
    }
    let _g = shared();
    let mut s = Site::routed();
    let (net, prefix) = s.nat_network(&[]);
    let a = s.endpoint(&net, "ep1", &["--ip", &format!("{prefix}.10")]);
    let out_ip = s.outside_ip.clone();
    let router_ip = format!("{}.2", s.wire);
    let probe = |ttl: u8| {
        let out = s.eps[a].exec(&[
            "python3",
            "-c",
            UDP_PROBE,
            &out_ip,
            "33434",
            &ttl.to_string(),
            "3",
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    // The switch may count as a hop or not; the router is one of the
    // first three.
    let hops: Vec<String> = (1..=3).map(probe).collect();
    assert!(
        hops.iter().any(|h| *h == format!("11 0 {router_ip}")),
        "no time exceeded from the router {router_ip} at TTL 1-3: {hops:?}"
    );
    assert_eq!(
        probe(16),
        format!("3 3 {out_ip}"),
        "no port unreachable from the outside machine"
    );
}

// ------------------------------------------------------------------------
// 9. Bad requests.

#[test]
fn bad_nat_requests_are_refused_and_change_nothing() {
    if !require_root("bad_nat_requests_are_refused_and_change_nothing") {
        return;
    }
    let _g = shared();
    let mut s = Site::on_link();
    let (subnet, _) = unique_subnet();
    // An interface without an IPv4 address.
    let bare = format!("nb{}", tag());
    s.host.ok(&[
        "ip",
        "link",
        "add",
        &bare,
        "type",
        "veth",
        "peer",
        "name",
        &format!("{bare}p"),
    ]);
    s.host.ok(&["ip", "link", "set", &bare, "up"]);
    let iface = |i: &str| format!("interface={i}");
    let name = format!("bad{}", tag());
    refused(
        &s.d,
        &[
            "network",
            "create",
            "-d",
            "nat",
            "--subnet",
            &subnet,
            "-o",
            &iface(&bare),
            &name,
        ],
        "options.interface",
    );
    refused(
        &s.d,
        &[
            "network",
            "create",
            "-d",
            "nat",
            "--subnet",
            &subnet,
            "-o",
            "interface=nosuchif0",
            &name,
        ],
        "options.interface",
    );
    let eph = s.ephemeral();
    let overlap = format!("nat_ports={}-{}", eph.end() - 10, eph.end() + 10);
    let inside = format!("nat_ports={}-{}", eph.start() + 1, eph.start() + 100);
    for ports in [&overlap, &inside] {
        refused(
            &s.d,
            &[
                "network",
                "create",
                "-d",
                "nat",
                "--subnet",
                &subnet,
                "-o",
                &iface(&s.uplink),
                "-o",
                ports,
                &name,
            ],
            "options.nat_ports",
        );
    }
    refused(
        &s.d,
        &[
            "network",
            "create",
            "-d",
            "internal",
            "--subnet",
            &subnet,
            "-o",
            "nat_ports=64000-64100",
            &name,
        ],
        "options.nat_ports",
    );

    let (net, prefix) = s.nat_network(&[]);
    s.endpoint(
        &net,
        "ep1",
        &["--ip", &format!("{prefix}.10"), "-p", "8080:80/tcp"],
    );
    // Namespaces in `s.eps` outlive the daemon's teardown.
    let n = s.eps.len();
    s.eps.push(Netns::new("ne"));
    s.eps.push(Netns::new("ni"));
    let (ns, ins) = (&s.eps[n], &s.eps[n + 1]);
    let ep2 = |extra: &[&str]| {
        let mut args = vec!["endpoint", "create", "--network", &net, "--netns", &ns.name];
        args.extend_from_slice(extra);
        args.push("ep2");
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>, expect: &str| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&s.d, &args, expect);
    };
    // In the host's ephemeral range.
    let eph_port = format!("{}:80/tcp", eph.start() + 5);
    run(ep2(&["-p", &eph_port]), "ExternalPort");
    let doc = write_doc(&s.d, port_mapping(6, 80, eph.start() + 5));
    let doc = doc.to_str().unwrap();
    refused(
        &s.d,
        &["policy", "add", "--endpoint", "ep1", "--file", doc],
        "ExternalPort",
    );
    // Taken by another mapping, in another request or the same one.
    run(ep2(&["-p", "8080:81/tcp"]), "ExternalPort");
    run(
        ep2(&["-p", "8090:80/tcp", "-p", "8090:81/tcp"]),
        "ExternalPort",
    );
    let raw = |policy: Value| {
        let line = json!({"Op": "PolicyAdd", "Args": {"Endpoint": "ep1", "Policies": policy}});
        s.d.raw(format!("{line}\n").as_bytes())
    };
    let answer = raw(port_mapping(6, 81, 8080));
    assert_eq!(answer["Error"]["Kind"], "Conflict", "{answer}");
    // Held by the host's own sockets: a TCP listener on every address, a
    // UDP socket on the uplink's.
    let _tcp = tcp_whoami(&s.host, "host", "0.0.0.0", &[8081]);
    let _udp = udp_whoami(&s.host, "host", &s.uplink_ip(), 8082);
    run(ep2(&["-p", "8081:80/tcp"]), "ExternalPort");
    run(ep2(&["-p", "8082:53/udp"]), "ExternalPort");
    let answer = raw(port_mapping(6, 80, 8081));
    assert_eq!(answer["Error"]["Kind"], "Conflict", "{answer}");
    let answer = raw(port_mapping(17, 53, 8082));
    assert_eq!(answer["Error"]["Kind"], "Conflict", "{answer}");
    // A PortMapping for a whole network, or on a network that does not
    // translate.
    let doc = write_doc(&s.d, port_mapping(6, 80, 8085));
    let doc = doc.to_str().unwrap();
    refused(
        &s.d,
        &["policy", "add", "--network", &net, "--file", doc],
        "PortMapping",
    );
    let (isubnet, _) = unique_subnet();
    let inet = format!("int{}", tag());
    s.d.ok(&[
        "network", "create", "-d", "internal", "--subnet", &isubnet, &inet,
    ]);
    refused(
        &s.d,
        &[
            "endpoint",
            "create",
            "--network",
            &inet,
            "--netns",
            &ins.name,
            "-p",
            "8085:80/tcp",
            "epi",
        ],
        "PortMapping",
    );
    s.d.endpoint(&inet, ins, &[], "epi");
    refused(
        &s.d,
        &["policy", "add", "--endpoint", "epi", "--file", doc],
        "PortMapping",
    );
    s.d.ok(&["endpoint", "rm", "epi"]);

    // The same port for the other protocol is another mapping.
    s.d.ok(&[
        "policy",
        "add",
        "--endpoint",
        "ep1",
        "--file",
        write_doc(&s.d, port_mapping(17, 80, 8080))
            .to_str()
            .unwrap(),
    ]);
    assert_eq!(
        mappings(&s.d, "ep1").len(),
        2,
        "{:?}",
        mappings(&s.d, "ep1")
    );
    // And a refused endpoint left its namespace usable.
    s.d.endpoint(&net, ns, &["-p", "8090:80/tcp"], "ep2");
    s.d.ok(&["endpoint", "rm", "ep2"]);
}

// ------------------------------------------------------------------------
// 10. Restarts.

#[test]
fn mappings_and_translation_survive_restarts() {
    if !require_root("mappings_and_translation_survive_restarts") {
        return;
    }
    let _g = shared();
    let mut s = Site::on_link();
    let (net, prefix) = s.nat_network(&[]);
    let a = s.endpoint(
        &net,
        "ep1",
        &["--ip", &format!("{prefix}.10"), "-p", "8080:80/tcp"],
    );
    let b = s.endpoint(
        &net,
        "ep2",
        &["--ip", &format!("{prefix}.11"), "-p", "0:80/tcp"],
    );
    let _s1 = tcp_whoami(&s.eps[a], "ep1", "0.0.0.0", &[80]);
    let _s2 = tcp_whoami(&s.eps[b], "ep2", "0.0.0.0", &[80]);
    let out_ip = s.outside_ip.clone();
    let _o = tcp_whoami(&s.outside, "outside", &out_ip, &[7000]);
    let dynamic = external_port(&s.d, "ep2", 6, 80);
    let works = |s: &Site, when: &str| {
        let up_ip = s.uplink_ip();
        let seen = within(&format!("{when}: outside -> 8080"), TEN_S, || {
            tcp_ask(&s.outside, &up_ip, 8080)
        });
        assert_eq!(seen.tag, "ep1", "{when}: {seen:?}");
        let seen = within(&format!("{when}: outside -> {dynamic}"), TEN_S, || {
            tcp_ask(&s.outside, &up_ip, dynamic)
        });
        assert_eq!(seen.tag, "ep2", "{when}: {seen:?}");
        for i in [a, b] {
            let seen = within(&format!("{when}: endpoint -> outside"), TEN_S, || {
                tcp_ask(&s.eps[i], &s.outside_ip, 7000)
            });
            assert_eq!(seen.ip, up_ip, "{when}: {seen:?}");
        }
        assert!(
            pings(&s.eps[a], &s.outside_ip),
            "{when}: ep1 cannot ping outside"
        );
    };
    works(&s, "before any restart");
    let before = (
        configured(&s.d, &[]),
        s.d.json(&["network", "ls"]),
        s.d.json(&["endpoint", "ls"]),
    );

    s.d.kill9();
    s.d.spawn();
    assert_eq!(
        before,
        (
            configured(&s.d, &[]),
            s.d.json(&["network", "ls"]),
            s.d.json(&["endpoint", "ls"])
        ),
        "state differs after kill -9 and restart"
    );
    assert_eq!(
        external_port(&s.d, "ep2", 6, 80),
        dynamic,
        "the picked port changed"
    );
    works(&s, "after kill -9 and restart");

    let status = s.d.terminate();
    assert!(status.success(), "vswitchd exited with {status}");
    s.d.spawn();
    works(&s, "after a clean restart");
}
