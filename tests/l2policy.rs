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
//! what they saw, `TAG PEER_IP PEER_PORT` (see [`tcp_whoami`]), so a test
//! reads the source address straight from the machine that received it.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vswitch_systests::{
    configured, default_nat_pool, drops_on, icmp4, pings, quick_icmp, require_root, tag, tcp_ask,
    tcp_whoami, udp_ask, udp_whoami, unique, unique_subnet, veth, wait_until, within, Answer,
    Capture, Daemon, Fabric, Failure, Netns, Seen, FIVE_S, OUTSIDE_IF, TEN_S,
};

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

    /// The default NAT pool: above the host's ephemeral ports.
    fn default_pool(&self) -> RangeInclusive<u16> {
        default_nat_pool(&self.f.host)
    }
}

// ------------------------------------------------------------------------
// Traffic, from the harness's python3 programs.

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

// ------------------------------------------------------------------------
// What the daemon says.

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
        .filter(|(_, dst, kind, _)| dst.to_string() == far_ip && *kind == 8)
        .map(|(src, _, _, _)| src)
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
