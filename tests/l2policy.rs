//! Policies on the bridged drivers, end to end: OutBoundNAT on an l2bridge
//! network (endpoints reach the far side of the wire's router from the
//! uplink's address, but the `Exceptions` untranslated, as Kubernetes on
//! Windows uses it), and how ACLs treat same-host traffic on l2bridge
//! (bridged without policy, as Windows does) and l2tunnel (policed); with
//! real namespaces and real traffic.
//!
//! Each test builds its own fabric ([`Fabric`]: the host where its vswitchd
//! runs, a Linux bridge standing for the physical switch, an `outside`
//! machine) and its own endpoint namespaces. Nothing of the root namespace
//! is touched.
//!
//! Traffic comes from small python3 programs whose servers answer with
//! what they saw, `TAG PEER_IP PEER_PORT` (see [`TCP_WHOAMI`]), so a test
//! reads the source address straight from the machine that received it.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vswitch_systests::{
    require_root, tag, unique, unique_subnet, wait_until, Capture, Daemon, Fabric, KillOnDrop,
    Netns, OUTSIDE_IF,
};

const FIVE_S: Duration = Duration::from_secs(5);
const TEN_S: Duration = Duration::from_secs(10);

// ------------------------------------------------------------------------
// Topology.

/// A vswitch host on a fabric, with an optional router to a far network:
///
/// ```text
///  host: UPLINK P.1 ─┐
///  outside: eth0 P.2 ─┼─ br0 (fabric)
///  router: eth0 P.254 ┘   router: eth1 Q.1 ──veth── far: eth0 Q.2
/// ```
///
/// Fields drop in order: the daemon first (it removes its endpoints and
/// networks), then the endpoint namespaces, then the router and the far
/// machine, then the fabric.
struct Site {
    d: Daemon,
    eps: Vec<Netns>,
    router: Option<Netns>,
    far: Option<Netns>,
    f: Fabric,
}

impl Site {
    fn new() -> Site {
        let f = Fabric::new();
        // The host does not route: what reaches another machine from an
        // endpoint's address went through the switch, not Linux.
        f.host.ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"]);
        Site {
            d: Daemon::start_in(&f.host),
            eps: Vec::new(),
            router: None,
            far: None,
            f,
        }
    }

    /// Endpoint `name` on `net` at `ip`, in a namespace of its own; returns
    /// its index in `eps`.
    fn endpoint(&mut self, net: &str, name: &str, ip: &str) -> usize {
        let ns = Netns::new("le");
        self.d.endpoint(net, &ns, &["--ip", ip], name);
        self.eps.push(ns);
        self.eps.len() - 1
    }

    /// `network create -d DRIVER --subnet SUBNET --gateway GW
    /// -o interface=UPLINK NAME`; returns the name.
    fn network(&self, driver: &str, subnet: &str, gateway: &str, uplink: &str) -> String {
        let name = format!("{driver}{}", tag());
        let iface = format!("interface={uplink}");
        self.d.ok(&[
            "network",
            "create",
            "-d",
            driver,
            "--subnet",
            subnet,
            "--gateway",
            gateway,
            "-o",
            &iface,
            &name,
        ]);
        name
    }

    /// The host's ephemeral ports, and the default NAT pool above them.
    fn default_pool(&self) -> RangeInclusive<u16> {
        let text = self
            .f
            .host
            .ok(&["cat", "/proc/sys/net/ipv4/ip_local_port_range"]);
        let mut it = text.split_whitespace().map(|p| p.parse::<u16>().unwrap());
        let (_, hi) = (it.next().unwrap(), it.next().unwrap());
        (hi + 1).max(1024)..=65535
    }
}

/// A veth pair: `a_if` in `a`, `b_if` in `b`, both up, no address.
fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    a.ok(&[
        "ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ]);
    a.ok(&["ip", "link", "set", a_if, "up"]);
    b.ok(&["ip", "link", "set", b_if, "up"]);
}

/// No ICMP rate limit in `ns`: every probe of a test gets its answer.
fn quick_icmp(ns: &Netns) {
    ns.ok(&["sysctl", "-q", "-w", "net.ipv4.icmp_ratelimit=0"]);
}

// ------------------------------------------------------------------------
// Traffic, from python3 (there is no nc or socat where the tests run).

/// TCP servers on `addr`'s ports (argv[3:]): each connection is first told
/// `TAG PEER_IP PEER_PORT\n` (who the server saw), then gets back what it
/// sends until it closes.
const TCP_WHOAMI: &str = r#"
import socket, sys, threading
tag, addr = sys.argv[1], sys.argv[2]
def serve(c, peer):
    try:
        c.sendall(f"{tag} {peer[0]} {peer[1]}\n".encode())
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)
    except OSError:
        pass
    c.close()
def listen(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(1024)
    while True:
        c, peer = s.accept()
        threading.Thread(target=serve, args=(c, peer), daemon=True).start()
ts = [threading.Thread(target=listen, args=(int(p),)) for p in sys.argv[3:]]
for t in ts:
    t.start()
for t in ts:
    t.join()
"#;

/// One TCP connection to a [`TCP_WHOAMI`] server: prints the greeting once
/// a line sent has come back. Exit status 3: refused, 4: timed out, 1:
/// anything else.
const TCP_ASK: &str = r#"
import socket, sys
addr, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def line(s):
    got = b""
    while not got.endswith(b"\n"):
        d = s.recv(256)
        if not d:
            raise OSError(f"closed after {got!r}")
        got += d
    return got
try:
    s = socket.create_connection((addr, port), timeout=timeout)
    hello = line(s)
    s.sendall(b"vswitch-l2policy-test\n")
    back = line(s)
    s.close()
except ConnectionRefusedError as e:
    sys.exit(print(f"refused: {e}", file=sys.stderr) or 3)
except socket.timeout as e:
    sys.exit(print(f"timeout: {e}", file=sys.stderr) or 4)
except OSError as e:
    sys.exit(f"{addr}:{port}: {e}")
if back != b"vswitch-l2policy-test\n":
    sys.exit(f"echo was {back!r}")
print(hello.decode().strip())
"#;

/// A UDP server on `addr` port argv[3]: answers each datagram with
/// `TAG PEER_IP PEER_PORT`.
const UDP_WHOAMI: &str = r#"
import socket, sys
tag, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((addr, port))
while True:
    d, peer = s.recvfrom(65536)
    s.sendto(f"{tag} {peer[0]} {peer[1]}\n".encode(), peer)
"#;

/// One datagram on a connected UDP socket; prints the answer. Exit status
/// 3: refused (an ICMP port unreachable came back), 4: no answer in time.
const UDP_ASK: &str = r#"
import socket, sys
addr, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(timeout)
try:
    s.connect((addr, port))
    s.send(b"vswitch-l2policy-udp")
    d = s.recv(256)
except ConnectionRefusedError as e:
    sys.exit(print(f"refused: {e}", file=sys.stderr) or 3)
except socket.timeout as e:
    sys.exit(print(f"timeout: {e}", file=sys.stderr) or 4)
except OSError as e:
    sys.exit(f"{addr}:{port}: {e}")
print(d.decode().strip())
"#;

/// Starts `args` in `ns` in the background, output discarded.
fn spawn_in(ns: &Netns, args: &[&str]) -> KillOnDrop {
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {args:?} in {}: {e}", ns.name));
    KillOnDrop(child)
}

/// Whether something in `ns` listens on `port`; `proto` is `t` or `u`.
fn listening(ns: &Netns, proto: char, port: u16) -> bool {
    !ns.ok(&["ss", &format!("-Hl{proto}n"), &format!("sport = :{port}")])
        .trim()
        .is_empty()
}

/// [`TCP_WHOAMI`] servers in `ns` on `addr`'s `ports`, once all listen.
fn tcp_whoami(ns: &Netns, tag: &str, addr: &str, ports: &[u16]) -> KillOnDrop {
    let ports_text: Vec<String> = ports.iter().map(u16::to_string).collect();
    let mut args = vec!["python3", "-c", TCP_WHOAMI, tag, addr];
    args.extend(ports_text.iter().map(String::as_str));
    let server = spawn_in(ns, &args);
    let up = wait_until(TEN_S, || ports.iter().all(|&p| listening(ns, 't', p)));
    assert!(up, "TCP servers on {ports:?} did not start in {}", ns.name);
    server
}

fn udp_whoami(ns: &Netns, tag: &str, addr: &str, port: u16) -> KillOnDrop {
    let server = spawn_in(
        ns,
        &["python3", "-c", UDP_WHOAMI, tag, addr, &port.to_string()],
    );
    let up = wait_until(TEN_S, || listening(ns, 'u', port));
    assert!(up, "UDP server on {port} did not start in {}", ns.name);
    server
}

/// What a whoami server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    tag: String,
    ip: String,
    port: u16,
}

impl Seen {
    fn parse(text: &str) -> Seen {
        let f: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(f.len(), 3, "not a whoami answer: {text:?}");
        Seen {
            tag: f[0].to_owned(),
            ip: f[1].to_owned(),
            port: f[2]
                .parse()
                .unwrap_or_else(|_| panic!("not a port in {text:?}")),
        }
    }
}

/// How an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Refused,
    Timeout,
    Other,
}

type Answer = Result<Seen, (Failure, String)>;

fn ask(program: &str, ns: &Netns, addr: &str, port: u16) -> Answer {
    let port = port.to_string();
    let out = ns.exec(&["python3", "-c", program, addr, &port, "1"]);
    let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    match out.status.code() {
        Some(0) => Ok(Seen::parse(&String::from_utf8_lossy(&out.stdout))),
        Some(3) => Err((Failure::Refused, err)),
        Some(4) => Err((Failure::Timeout, err)),
        _ => Err((Failure::Other, err)),
    }
}

fn tcp_ask(ns: &Netns, addr: &str, port: u16) -> Answer {
    ask(TCP_ASK, ns, addr, port)
}

fn udp_ask(ns: &Netns, addr: &str, port: u16) -> Answer {
    ask(UDP_ASK, ns, addr, port)
}

/// Retries `attempt` until it answers or `timeout` passes (the first
/// packet towards a next hop not resolved yet may be dropped); panics with
/// the last failure.
fn within(what: &str, timeout: Duration, mut attempt: impl FnMut() -> Answer) -> Seen {
    let deadline = Instant::now() + timeout;
    loop {
        match attempt() {
            Ok(seen) => return seen,
            Err(e) if Instant::now() >= deadline => {
                panic!("{what}: no answer within {timeout:?}; last attempt: {e:?}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Retries `attempt` until what the server saw satisfies `good` or
/// `timeout` passes (a policy change reaches the datapath after its
/// answer); panics with the last answer.
fn seen_until(
    what: &str,
    timeout: Duration,
    mut attempt: impl FnMut() -> Answer,
    good: impl Fn(&Seen) -> bool,
) -> Seen {
    let deadline = Instant::now() + timeout;
    loop {
        let answer = attempt();
        match &answer {
            Ok(seen) if good(seen) => return seen.clone(),
            _ if Instant::now() >= deadline => {
                panic!("{what}: not within {timeout:?}; last answer: {answer:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Pings `addr` from `ns` until answered, then 3 more: at least one of
/// those must be answered too.
fn pings(ns: &Netns, addr: &str) -> bool {
    ns.ping_within(addr, TEN_S)
        && ns
            .exec(&["ping", "-c", "3", "-i", "0.2", "-W", "1", addr])
            .status
            .success()
}

/// (source, destination, ICMP type) of an IPv4 ICMP frame.
fn icmp4(frame: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, u8)> {
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = frame.get(14..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    if *ip.get(9)? != 1 {
        return None;
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    Some((src, dst, *ip.get(ihl)?))
}

// ------------------------------------------------------------------------
// What the daemon says.

/// `policy ls [FILTER] --json`, without hit counters (they count traffic,
/// not configuration).
fn configured(d: &Daemon, filter: &[&str]) -> Vec<Value> {
    let mut args = vec!["policy", "ls"];
    args.extend_from_slice(filter);
    let list = d.json(&args);
    let mut list = list
        .as_array()
        .unwrap_or_else(|| panic!("policy ls answered {list}, not a list"))
        .clone();
    for p in &mut list {
        if let Some(p) = p.as_object_mut() {
            p.remove("Hits");
        }
    }
    list
}

/// `policy add --endpoint EP --file - --json` with `doc` on stdin, which
/// must succeed; the IDs of the policies it added.
fn add_policy(d: &Daemon, endpoint: &str, doc: &Value) -> Vec<String> {
    let args = [
        "policy",
        "add",
        "--endpoint",
        endpoint,
        "--file",
        "-",
        "--json",
    ];
    let out = d.ctl_stdin(&args, doc.to_string().as_bytes());
    assert!(
        out.status.success(),
        "vswitchctl {args:?} with {doc} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "policy add --json printed no JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    reply
        .as_array()
        .unwrap_or_else(|| panic!("policy add answered {reply}, not a list"))
        .iter()
        .map(|p| {
            p["ID"]
                .as_str()
                .unwrap_or_else(|| panic!("an added policy without an ID: {reply}"))
                .to_owned()
        })
        .collect()
}

/// `policy add OWNER --file -` with `doc` on stdin must be refused with a
/// one-line error naming `expect`, and change nothing: networks,
/// endpoints, ports, the state file and policies.
fn refused_on_stdin(d: &Daemon, owner: &[&str], doc: &Value, expect: &str) {
    let before = (d.snapshot(), configured(d, &[]));
    let mut args = vec!["policy", "add"];
    args.extend_from_slice(owner);
    args.extend_from_slice(&["--file", "-"]);
    let out = d.ctl_stdin(&args, doc.to_string().as_bytes());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "vswitchctl {args:?} with {doc} should have failed but printed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        err.contains(expect),
        "vswitchctl {args:?} with {doc}: expected the error to name {expect:?}, got: {err}"
    );
    assert_eq!(
        err.trim().lines().count(),
        1,
        "error is not one line: {err}"
    );
    assert_eq!(
        before,
        (d.snapshot(), configured(d, &[])),
        "vswitchctl {args:?} with {doc} changed state although refused"
    );
}

/// Drops for `reason` summed over `ports` (`stats PORT --json`): a packet
/// one endpoint's policy stops may be counted on the port it came from or
/// the one it was for.
fn drops_on(d: &Daemon, ports: &[&str], reason: &str) -> u64 {
    ports
        .iter()
        .map(|port| {
            let s = d.json(&["stats", port])[0].clone();
            s["Drops"][reason]
                .as_u64()
                .unwrap_or_else(|| panic!("stats of {port} have no drop reason {reason}: {s}"))
        })
        .sum()
}

// ------------------------------------------------------------------------
// 1. OutBoundNAT on l2bridge.

#[test]
fn outbound_nat_on_l2bridge_translates_all_but_the_exceptions() {
    if !require_root("outbound_nat_on_l2bridge_translates_all_but_the_exceptions") {
        return;
    }
    let mut s = Site::new();
    let (subnet, p) = unique_subnet();
    let q = format!("198.18.{}", unique() % 250 + 1);
    let (host_ip, outside_ip, router_ip) = (format!("{p}.1"), format!("{p}.2"), format!("{p}.254"));
    let far_ip = format!("{q}.2");
    let up = s.f.add_uplink(&[&format!("{host_ip}/24")]);
    // The uplink's default router is the router, so off-link destinations
    // (the far network) go to it.
    s.f.host.ok(&[
        "ip", "route", "add", "default", "via", &router_ip, "dev", &up,
    ]);
    s.f.outside_addr(OUTSIDE_IF, &format!("{outside_ip}/24"));
    quick_icmp(&s.f.outside);
    let router = Netns::new("lr");
    let far = Netns::new("lw");
    s.f.attach(&router, "eth0");
    veth(&router, "eth1", &far, "eth0");
    router.ok(&[
        "ip",
        "addr",
        "add",
        &format!("{router_ip}/24"),
        "dev",
        "eth0",
    ]);
    router.ok(&["ip", "addr", "add", &format!("{q}.1/24"), "dev", "eth1"]);
    router.ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    quick_icmp(&router);
    far.ok(&["ip", "addr", "add", &format!("{far_ip}/24"), "dev", "eth0"]);
    far.ok(&["ip", "route", "add", "default", "via", &format!("{q}.1")]);
    quick_icmp(&far);
    s.f.outside.ok(&[
        "ip",
        "route",
        "add",
        &format!("{q}.0/24"),
        "via",
        &router_ip,
    ]);
    s.router = Some(router);
    s.far = Some(far);

    let net = s.network("l2bridge", &subnet, &router_ip, &up);
    let ep_ip = format!("{p}.10");
    let a = s.endpoint(&net, "ep1", &ep_ip);
    // For the refusals at the end: an endpoint's namespace, kept in `eps`
    // so that it outlives the daemon's teardown.
    s.eps.push(Netns::new("li"));
    let ins = &s.eps[s.eps.len() - 1];
    let pool = s.default_pool();
    let far = s.far.as_ref().expect("set above");
    let _far_tcp = tcp_whoami(far, "far", &far_ip, &[7000]);
    let _far_udp = udp_whoami(far, "far", &far_ip, 7001);
    let _out_tcp = tcp_whoami(&s.f.outside, "outside", &outside_ip, &[7000]);
    let _ep_tcp = tcp_whoami(&s.eps[a], "ep1", "0.0.0.0", &[7002]);
    let ep = &s.eps[a];

    // Before any OutBoundNAT the far machine sees the endpoint itself
    // (routed back through the router, which finds it on link).
    let seen = within("TCP ep1 -> far before OutBoundNAT", TEN_S, || {
        tcp_ask(ep, &far_ip, 7000)
    });
    assert_eq!(seen.ip, ep_ip, "before OutBoundNAT: {seen:?}");
    let seen = within("UDP ep1 -> far before OutBoundNAT", TEN_S, || {
        udp_ask(ep, &far_ip, 7001)
    });
    assert_eq!(seen.ip, ep_ip, "before OutBoundNAT: {seen:?}");
    assert!(pings(ep, &far_ip), "ep1 cannot ping the far machine");
    let seen = within("TCP ep1 -> outside before OutBoundNAT", TEN_S, || {
        tcp_ask(ep, &outside_ip, 7000)
    });
    assert_eq!(seen.ip, ep_ip, "before OutBoundNAT: {seen:?}");

    let untranslated = |when: &str| {
        let seen = seen_until(
            &format!("{when}: TCP ep1 -> far from {ep_ip}"),
            FIVE_S,
            || tcp_ask(ep, &far_ip, 7000),
            |seen| seen.ip == ep_ip,
        );
        assert_eq!(seen.tag, "far");
        let seen = within(&format!("{when}: UDP ep1 -> far"), TEN_S, || {
            udp_ask(ep, &far_ip, 7001)
        });
        assert_eq!(seen.ip, ep_ip, "{when}: UDP {seen:?}");
    };
    let translated = |when: &str| {
        let seen = seen_until(
            &format!("{when}: TCP ep1 -> far from {host_ip}"),
            FIVE_S,
            || tcp_ask(ep, &far_ip, 7000),
            |seen| seen.ip == host_ip,
        );
        assert!(
            pool.contains(&seen.port),
            "{when}: TCP source port {} outside the pool {pool:?}",
            seen.port
        );
        let seen = within(&format!("{when}: UDP ep1 -> far"), TEN_S, || {
            udp_ask(ep, &far_ip, 7001)
        });
        assert_eq!(seen.ip, host_ip, "{when}: UDP {seen:?}");
        assert!(
            pool.contains(&seen.port),
            "{when}: UDP source port {} outside the pool {pool:?}",
            seen.port
        );
        // The exception: the outside machine, on the wire's own subnet,
        // sees the endpoint.
        let seen = within(&format!("{when}: TCP ep1 -> outside"), TEN_S, || {
            tcp_ask(ep, &outside_ip, 7000)
        });
        assert_eq!(
            seen.ip, ep_ip,
            "{when}: the outside machine is in the exceptions but saw {seen:?}"
        );
        // A connection the far side starts towards the endpoint's own
        // address stays untranslated, replies included.
        let seen = within(&format!("{when}: TCP far -> ep1"), TEN_S, || {
            tcp_ask(far, &ep_ip, 7002)
        });
        assert_eq!(seen.ip, far_ip, "{when}: ep1 saw {seen:?}");
    };

    // HNS v2.
    let exceptions = json!([subnet]);
    let v2 = json!({"Type": "OutBoundNAT", "Settings": {"Exceptions": exceptions}});
    let ids = add_policy(&s.d, "ep1", &v2);
    assert_eq!(ids.len(), 1, "{ids:?}");
    let listed = configured(&s.d, &["--endpoint", "ep1"]);
    assert!(
        listed
            .iter()
            .any(|p| p["ID"] == ids[0].as_str() && p["Type"] == "OutBoundNAT"),
        "policy ls does not show OutBoundNAT {}: {listed:?}",
        ids[0]
    );
    // Neighbour entries expire and new neighbours come: with the policy
    // on, the endpoint and the wire must still resolve each other (ARP
    // from the wire is for the endpoint, not for the translation).
    let router = s.router.as_ref().expect("set above");
    for ns in [ep, &s.f.outside, router] {
        ns.ok(&["ip", "neigh", "flush", "dev", "eth0"]);
    }
    let uplink_port = format!("uplink:{net}");
    assert!(
        pings(ep, &router_ip),
        "with OutBoundNAT, ep1 cannot resolve and ping its gateway {router_ip} \
         (uplink nat_no_binding drops: {})",
        drops_on(&s.d, &[&uplink_port], "nat_no_binding")
    );
    assert!(
        pings(&s.f.outside, &ep_ip),
        "with OutBoundNAT, the outside machine cannot resolve and ping ep1 \
         (uplink nat_no_binding drops: {})",
        drops_on(&s.d, &[&uplink_port], "nat_no_binding")
    );
    let cap = Capture::start(far, "eth0");
    translated("with OutBoundNAT (v2)");
    assert!(pings(ep, &far_ip), "ep1 cannot ping far with OutBoundNAT");
    cap.sync(far, &format!("{q}.1"));
    let requests: Vec<Ipv4Addr> = cap
        .frames()
        .iter()
        .filter_map(|f| icmp4(f))
        .filter(|(_, dst, kind)| dst.to_string() == far_ip && *kind == 8)
        .map(|(src, _, _)| src)
        .collect();
    assert!(!requests.is_empty(), "no echo request reached far");
    assert!(
        requests.iter().all(|src| src.to_string() == host_ip),
        "echo requests reached far from {requests:?}, not only {host_ip}"
    );
    drop(cap);

    s.d.ok(&["policy", "rm", "--endpoint", "ep1", &ids[0]]);
    assert!(
        configured(&s.d, &["--endpoint", "ep1"]).is_empty(),
        "OutBoundNAT still listed after policy rm"
    );
    untranslated("after policy rm");
    assert!(pings(ep, &far_ip), "ep1 cannot ping far after policy rm");

    // HNS v1: the settings beside Type, the list called ExceptionList.
    let v1 = json!({"Type": "OutBoundNAT", "ExceptionList": exceptions});
    add_policy(&s.d, "ep1", &v1);
    translated("with OutBoundNAT (v1)");
    let listed = configured(&s.d, &["--endpoint", "ep1"]);
    assert_eq!(listed.len(), 1, "{listed:?}");
    let id = listed[0]["ID"].as_str().expect("a policy ID").to_owned();
    s.d.ok(&["policy", "rm", "--endpoint", "ep1", &id]);
    untranslated("after removing the v1 policy");

    // Refused on a network that does not bridge onto an uplink, in either
    // form, for an endpoint or the whole network; nothing changes.
    let (isubnet, _) = unique_subnet();
    let inet = format!("int{}", tag());
    s.d.ok(&[
        "network", "create", "-d", "internal", "--subnet", &isubnet, &inet,
    ]);
    s.d.endpoint(&inet, ins, &[], "epi");
    for doc in [&v2, &v1] {
        refused_on_stdin(&s.d, &["--endpoint", "epi"], doc, ".Type");
        refused_on_stdin(&s.d, &["--network", &inet], doc, ".Type");
    }
    // And the l2bridge endpoint is still untranslated.
    untranslated("after the refusals");
}

// ------------------------------------------------------------------------
// 2. ACLs and same-host traffic: l2bridge bypasses them, l2tunnel does not.

/// Block In for TCP `port` and for ICMP, as two ACLs with ids `PREFIX-tcp`
/// and `PREFIX-icmp`.
fn block_in(prefix: &str, port: u16) -> Value {
    json!([
        {"Type": "ACL", "Settings": {"Id": format!("{prefix}-tcp"), "Action": "Block",
            "Direction": "In", "Protocols": "6", "LocalPorts": port.to_string(), "Priority": 200}},
        {"Type": "ACL", "Settings": {"Id": format!("{prefix}-icmp"), "Action": "Block",
            "Direction": "In", "Protocols": "1", "Priority": 200}},
    ])
}

#[test]
fn same_host_acls_hold_on_l2tunnel_not_on_l2bridge() {
    if !require_root("same_host_acls_hold_on_l2tunnel_not_on_l2bridge") {
        return;
    }
    const BLOCKED: u16 = 8080;
    const OPEN: u16 = 8081;
    let mut s = Site::new();
    // One uplink each: networks sharing an uplink would need VLANs.
    let (sb, pb) = unique_subnet();
    let (st, pt) = unique_subnet();
    let up_b = s.f.add_uplink(&[&format!("{pb}.2/24")]);
    let up_t = s.f.add_uplink(&[&format!("{pt}.2/24")]);
    s.f.outside_addr(OUTSIDE_IF, &format!("{pb}.1/24"));
    s.f.outside_addr(OUTSIDE_IF, &format!("{pt}.1/24"));
    let nb = s.network("l2bridge", &sb, &format!("{pb}.1"), &up_b);
    let nt = s.network("l2tunnel", &st, &format!("{pt}.1"), &up_t);
    let (b1_ip, b2_ip) = (format!("{pb}.10"), format!("{pb}.11"));
    let (t1_ip, t2_ip) = (format!("{pt}.10"), format!("{pt}.11"));
    let b1 = s.endpoint(&nb, "br1", &b1_ip);
    let b2 = s.endpoint(&nb, "br2", &b2_ip);
    let t1 = s.endpoint(&nt, "tn1", &t1_ip);
    let t2 = s.endpoint(&nt, "tn2", &t2_ip);
    let _srv_b = tcp_whoami(&s.eps[b2], "br2", "0.0.0.0", &[BLOCKED, OPEN]);
    let _srv_t = tcp_whoami(&s.eps[t2], "tn2", "0.0.0.0", &[BLOCKED, OPEN]);
    let out = &s.f.outside;

    // Everything works before any policy, so what stops later is the ACL.
    for (from, who, ip, name) in [
        (&s.eps[b1], "br1", &b2_ip, "br2"),
        (&s.eps[t1], "tn1", &t2_ip, "tn2"),
        (out, "outside", &b2_ip, "br2"),
        (out, "outside", &t2_ip, "tn2"),
    ] {
        for port in [BLOCKED, OPEN] {
            let seen = within(&format!("{who} -> {name}:{port}"), TEN_S, || {
                tcp_ask(from, ip, port)
            });
            assert_eq!(seen.tag, name, "{seen:?}");
        }
        assert!(pings(from, ip), "{who} cannot ping {name} before any ACL");
    }

    for (ep, prefix) in [("br2", "b"), ("tn2", "t")] {
        let ids = add_policy(&s.d, ep, &block_in(prefix, BLOCKED));
        assert_eq!(ids.len(), 2, "{ids:?}");
    }

    // l2bridge, same host: the ACLs are not consulted.
    // Counted on the port a packet came from or the one it was for: the
    // uplink's, for what the wire sends.
    let (up_nb, up_nt) = (format!("uplink:{nb}"), format!("uplink:{nt}"));
    let bridge_ports = ["br1", "br2", up_nb.as_str()];
    let before = drops_on(&s.d, &bridge_ports, "acl_blocked");
    let seen = within(
        &format!("br1 -> br2:{BLOCKED} under the Block"),
        TEN_S,
        || tcp_ask(&s.eps[b1], &b2_ip, BLOCKED),
    );
    assert_eq!(seen.ip, b1_ip, "{seen:?}");
    assert!(
        pings(&s.eps[b1], &b2_ip),
        "br1 cannot ping br2: l2bridge policed same-host traffic"
    );
    assert_eq!(
        drops_on(&s.d, &bridge_ports, "acl_blocked"),
        before,
        "same-host traffic on l2bridge was counted as acl_blocked"
    );

    // l2tunnel, same host: blocked, and counted.
    let tunnel_ports = ["tn1", "tn2", up_nt.as_str()];
    let before = drops_on(&s.d, &tunnel_ports, "acl_blocked");
    let stopped = wait_until(FIVE_S, || tcp_ask(&s.eps[t1], &t2_ip, BLOCKED).is_err());
    assert!(
        stopped,
        "tn1 still reaches tn2:{BLOCKED} under Block In: {:?}",
        tcp_ask(&s.eps[t1], &t2_ip, BLOCKED)
    );
    for _ in 0..2 {
        let answer = tcp_ask(&s.eps[t1], &t2_ip, BLOCKED);
        assert!(
            matches!(answer, Err((Failure::Timeout, _))),
            "tn1 -> tn2:{BLOCKED} under Block In should time out (dropped): {answer:?}"
        );
        assert!(
            !s.eps[t1].ping(&t2_ip),
            "tn1 pinged tn2 under Block In ICMP"
        );
    }
    let seen = within(&format!("tn1 -> tn2:{OPEN}"), TEN_S, || {
        tcp_ask(&s.eps[t1], &t2_ip, OPEN)
    });
    assert_eq!(
        seen.ip, t1_ip,
        "the Block stopped more than port {BLOCKED}: {seen:?}"
    );
    assert!(
        wait_until(FIVE_S, || drops_on(&s.d, &tunnel_ports, "acl_blocked")
            > before),
        "l2tunnel's same-host drops were not counted as acl_blocked ({before} before)"
    );

    // l2bridge, from the wire: the Block holds, so the difference above is
    // same-host traffic only.
    let before = drops_on(&s.d, &bridge_ports, "acl_blocked");
    for (ip, name) in [(&b2_ip, "br2"), (&t2_ip, "tn2")] {
        let answer = tcp_ask(out, ip, BLOCKED);
        assert!(
            matches!(answer, Err((Failure::Timeout | Failure::Refused, _))),
            "outside reached {name}:{BLOCKED} under Block In: {answer:?}"
        );
        assert!(!out.ping(ip), "outside pinged {name} under Block In ICMP");
        let seen = within(&format!("outside -> {name}:{OPEN}"), TEN_S, || {
            tcp_ask(out, ip, OPEN)
        });
        assert_eq!(seen.tag, name, "{seen:?}");
    }
    assert!(
        wait_until(FIVE_S, || drops_on(&s.d, &bridge_ports, "acl_blocked")
            > before),
        "l2bridge's drops from the wire were not counted as acl_blocked ({before} before)"
    );
    // Same-host on l2bridge still passes after all that.
    let seen = within(&format!("br1 -> br2:{BLOCKED} again"), TEN_S, || {
        tcp_ask(&s.eps[b1], &b2_ip, BLOCKED)
    });
    assert_eq!(seen.tag, "br2", "{seen:?}");
}
