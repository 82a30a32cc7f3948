//! Port mirroring (`endpoint set --mirror`), as Hyper-V does it: a
//! destination endpoint receives copies of everything a source endpoint
//! sends and receives, within its network only; `--mirror none` stops the
//! copies; the roles survive a restart; bad values are refused naming the
//! field. Run for TAP and veth endpoints: a veth source must leave the
//! kernel fast path so that its frames reach the copying slow path.

use std::net::Ipv4Addr;

use vswitch_systests::{
    fast_counter, icmp4, no_ipv6, require_root, shared, tag, unique_subnet, wait_until, Capture,
    Daemon, Netns, FIVE_S,
};

const ECHO_REPLY: u8 = 0;
const ECHO_REQUEST: u8 = 8;

/// A daemon in a namespace of its own; network `net` with endpoints `a`
/// (.10), `b` (.11) and `d` (.12, the mirror destination), and a second
/// network with `x`, a destination that must see nothing of `net`. Fields
/// drop in order: the daemon first, then the namespaces.
struct Lab {
    d: Daemon,
    a_ns: Netns,
    b_ns: Netns,
    d_ns: Netns,
    x_ns: Netns,
    _host: Netns,
    prefix: String,
    /// The other network's gateway, for x to ping.
    x_gateway: String,
    names: [String; 4],
}

impl Lab {
    fn new(backend: &str) -> Lab {
        let host = Netns::new("mh");
        let d = Daemon::start_in(&host);
        let (subnet, prefix) = unique_subnet();
        let (subnet2, prefix2) = unique_subnet();
        let net = format!("mir{}", tag());
        let net2 = format!("mio{}", tag());
        for (s, n) in [(&subnet, &net), (&subnet2, &net2)] {
            d.ok(&["network", "create", "-d", "internal", "--subnet", s, n]);
        }
        let names = ["ma", "mb", "md", "mx"].map(|p| format!("{p}{}", tag()));
        let mut nss = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let ns = Netns::new("me");
            no_ipv6(&ns);
            let (network, ip) = if i < 3 {
                (&net, format!("{prefix}.{}", 10 + i))
            } else {
                (&net2, format!("{prefix2}.10"))
            };
            d.endpoint(network, &ns, &["--ip", &ip, "--backend", backend], name);
            nss.push(ns);
        }
        let x_ns = nss.pop().unwrap();
        let d_ns = nss.pop().unwrap();
        let b_ns = nss.pop().unwrap();
        let a_ns = nss.pop().unwrap();
        Lab {
            d,
            a_ns,
            b_ns,
            d_ns,
            x_ns,
            _host: host,
            prefix,
            x_gateway: format!("{prefix2}.1"),
            names,
        }
    }

    fn ip(&self, host: u8) -> Ipv4Addr {
        format!("{}.{host}", self.prefix).parse().unwrap()
    }

    fn a(&self) -> &str {
        &self.names[0]
    }

    fn set(&self, endpoint: &str, role: &str) {
        let ep = self
            .d
            .json(&["endpoint", "set", "--mirror", role, endpoint]);
        assert_eq!(ep["Mirror"], role, "{ep}");
    }

    fn mirror_of(&self, endpoint: &str) -> String {
        self.d.json(&["endpoint", "inspect", endpoint])["Mirror"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn mirrored_packets(&self, endpoint: &str) -> u64 {
        self.d.json(&["stats", endpoint])[0]["MirroredPackets"]
            .as_u64()
            .expect("MirroredPackets in stats")
    }

    /// a pings b three times; all are answered.
    fn ping_a_to_b(&self) {
        let b = self.ip(11).to_string();
        let out = self
            .a_ns
            .exec(&["ping", "-c", "3", "-i", "0.2", "-W", "1", &b]);
        assert!(out.status.success(), "a cannot ping b");
    }
}

/// The ICMP frames of `kind` from `src` to `dst` among `frames`.
fn count(frames: &[Vec<u8>], src: Ipv4Addr, dst: Ipv4Addr, kind: u8) -> usize {
    frames
        .iter()
        .filter_map(|f| icmp4(f))
        .filter(|&(s, d, k, _)| (s, d, k) == (src, dst, kind))
        .count()
}

/// The echo requests a -> b and replies b -> a among `frames`.
fn echoes(frames: &[Vec<u8>], a: Ipv4Addr, b: Ipv4Addr) -> (usize, usize) {
    (
        count(frames, a, b, ECHO_REQUEST),
        count(frames, b, a, ECHO_REPLY),
    )
}

fn mirroring(backend: &str) {
    let mut lab = Lab::new(backend);
    let (a, b, d) = (lab.ip(10), lab.ip(11), lab.ip(12));
    let [ep_a, ep_b, ep_d, ep_x] = &lab.names.clone();
    // `sync`: b pings d until the capture on d holds it, so everything a
    // and b exchanged before is in the capture too (frames between
    // non-sources are never copied, so this adds nothing to count).
    let d_ip = d.to_string();
    // ARP and learning first: after this a -> b is known unicast, which a
    // veth pair's kernel fast path forwards without the slow path.
    assert!(
        lab.a_ns.ping_within(&b.to_string(), FIVE_S),
        "a cannot ping b"
    );
    assert_eq!(lab.mirror_of(ep_a), "none");
    let cap = Capture::start(&lab.d_ns, "eth0");
    let cap_x = Capture::start(&lab.x_ns, "eth0");
    lab.ping_a_to_b();
    cap.sync(&lab.b_ns, &d_ip);
    assert_eq!(echoes(&cap.frames(), a, b), (0, 0), "no role, no copies");

    lab.set(ep_a, "source");
    lab.set(ep_d, "destination");
    lab.set(ep_x, "destination");
    let forwarded = (backend == "veth").then(|| fast_counter(&lab.d, ep_a, "ForwardedPackets"));
    lab.ping_a_to_b();
    let copied = wait_until(FIVE_S, || echoes(&cap.frames(), a, b) == (3, 3));
    assert!(
        copied,
        "d got {:?} of a's 3 requests and b's 3 replies",
        echoes(&cap.frames(), a, b)
    );
    assert!(lab.mirrored_packets(ep_d) >= 6);
    assert_eq!(lab.mirrored_packets(ep_b), 0, "b is no destination");
    if let Some(before) = forwarded {
        assert_eq!(
            fast_counter(&lab.d, ep_a, "ForwardedPackets"),
            before,
            "a mirror source's frames stay out of the kernel fast path"
        );
    }
    // d's own traffic with a reaches d once, not again as copies.
    let start = cap.frames().len();
    let out = lab
        .a_ns
        .exec(&["ping", "-c", "3", "-i", "0.2", "-W", "1", &d_ip]);
    assert!(out.status.success(), "a cannot ping d");
    cap.sync(&lab.b_ns, &d_ip);
    let since = &cap.frames()[start..];
    assert_eq!(
        (
            count(since, a, d, ECHO_REQUEST),
            count(since, d, a, ECHO_REPLY)
        ),
        (3, 3),
        "d's exchange with a, each frame once"
    );
    // Never across networks.
    cap_x.sync(&lab.x_ns, &lab.x_gateway);
    assert_eq!(
        echoes(&cap_x.frames(), a, b),
        (0, 0),
        "x is on another network"
    );
    assert_eq!(lab.mirrored_packets(ep_x), 0);

    // A restart keeps the roles, in the record and in the datapath.
    lab.d.terminate();
    lab.d.spawn();
    assert_eq!(lab.mirror_of(ep_a), "source");
    assert_eq!(lab.mirror_of(ep_d), "destination");
    lab.ping_a_to_b();
    let again = wait_until(FIVE_S, || echoes(&cap.frames(), a, b) == (6, 6));
    assert!(
        again,
        "after a restart d got {:?} (6, 6 expected)",
        echoes(&cap.frames(), a, b)
    );
    let listed = lab.d.json(&["endpoint", "ls"]);
    let roles: Vec<(&str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["Name"].as_str().unwrap(), e["Mirror"].as_str().unwrap()))
        .collect();
    assert!(roles.contains(&(ep_b.as_str(), "none")), "{roles:?}");
    assert!(roles.contains(&(ep_x.as_str(), "destination")), "{roles:?}");

    // --mirror none: the copies stop, and the fast path takes a back.
    lab.set(ep_a, "none");
    lab.ping_a_to_b();
    cap.sync(&lab.b_ns, &d_ip);
    assert_eq!(
        echoes(&cap.frames(), a, b),
        (6, 6),
        "copies after --mirror none"
    );
    if backend == "veth" {
        let before = fast_counter(&lab.d, ep_a, "ForwardedPackets");
        lab.ping_a_to_b();
        assert!(
            wait_until(FIVE_S, || fast_counter(&lab.d, ep_a, "ForwardedPackets")
                > before),
            "a's pings went back to the kernel fast path"
        );
    }
}

#[test]
fn a_destination_gets_copies_of_a_tap_sources_frames() {
    if !require_root("a_destination_gets_copies_of_a_tap_sources_frames") {
        return;
    }
    let _g = shared();
    mirroring("tap");
}

#[test]
fn a_destination_gets_copies_of_a_veth_sources_frames() {
    if !require_root("a_destination_gets_copies_of_a_veth_sources_frames") {
        return;
    }
    let _g = shared();
    mirroring("veth");
}

#[test]
fn bad_mirror_values_are_refused_naming_the_field() {
    if !require_root("bad_mirror_values_are_refused_naming_the_field") {
        return;
    }
    let _g = shared();
    let lab = Lab::new("tap");
    let a = lab.a();
    let before = lab.d.snapshot();
    let err = lab.d.fails(&["endpoint", "set", "--mirror", "both", a]);
    assert!(err.contains("'both' for '--mirror"), "{err}");
    let line =
        format!("{{\"Op\":\"EndpointSet\",\"Args\":{{\"Name\":\"{a}\",\"Mirror\":\"both\"}}}}\n");
    let answer = lab.d.raw(line.as_bytes());
    assert_eq!(answer["Error"]["Field"], "mirror", "{answer}");
    assert!(
        answer["Error"]["Message"]
            .as_str()
            .is_some_and(|m| m.contains("source, destination or none")),
        "{answer}"
    );
    assert_eq!(before, lab.d.snapshot(), "a refused request changed state");
    // A loopback-only endpoint has no port to mirror.
    let none = format!("mnone{}", tag());
    lab.d.ok(&["network", "create", "-d", "none", &none]);
    let ns = Netns::new("mn");
    let lo = format!("mlo{}", tag());
    lab.d.endpoint(&none, &ns, &[], &lo);
    lab.d
        .refused(&["endpoint", "set", "--mirror", "source", &lo], "mirror");
}
