//! `vswitchctl capture`: tcpdump on a port's vNIC, from the switch's side.
//! A ping between two veth endpoints, forwarded by the kernel fast path, is
//! captured into a pcap file (and into a pipe) and read back by
//! `tcpdump -r`; `-c N` stops after N frames; an unknown port is refused
//! before anything runs. Host and uplink ports are captured in the
//! daemon's namespace (these tests run it in one of its own), a host port
//! with the vNIC's directions reversed, an uplink on the wire as it is.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use vswitch_systests::{
    bin, fast_counter, icmp4, link_mac, mac_bytes, no_ipv6, read_pcap, require_root, shared, tag,
    unique_subnet, Daemon, Fabric, Netns, FIVE_S, OUTSIDE_IF,
};

/// A daemon in a namespace of its own, one internal network, two veth
/// endpoints `a` (.10) and `b` (.11) in namespaces of their own. Fields
/// drop in order: the daemon first, then the namespaces.
struct Lab {
    d: Daemon,
    a_ns: Netns,
    _b_ns: Netns,
    _host: Netns,
    a: String,
    b: String,
    prefix: String,
}

impl Lab {
    fn new() -> Lab {
        let host = Netns::new("ch");
        let d = Daemon::start_in(&host);
        let (subnet, prefix) = unique_subnet();
        let net = format!("cap{}", tag());
        d.ok(&[
            "network", "create", "-d", "internal", "--subnet", &subnet, &net,
        ]);
        let (a, b) = (format!("ca{}", tag()), format!("cb{}", tag()));
        let mut nss = Vec::new();
        for (name, host_part) in [(&a, 10), (&b, 11)] {
            let ns = Netns::new("ce");
            no_ipv6(&ns);
            let ip = format!("{prefix}.{host_part}");
            d.endpoint(&net, &ns, &["--ip", &ip, "--backend", "veth"], name);
            nss.push(ns);
        }
        let b_ns = nss.pop().unwrap();
        let a_ns = nss.pop().unwrap();
        Lab {
            d,
            a_ns,
            _b_ns: b_ns,
            _host: host,
            a,
            b,
            prefix,
        }
    }

    fn ip(&self, host: u8) -> String {
        format!("{}.{host}", self.prefix)
    }

    fn capture(&self, args: &[&str]) -> Child {
        Command::new(bin("vswitchctl"))
            .arg("--socket")
            .arg(&self.d.socket)
            .arg("capture")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run vswitchctl capture")
    }

    /// Pings b from a, 0.2 s apart, until `child` (a capture) exits;
    /// returns its output.
    fn ping_until_done(&self, mut child: Child) -> Output {
        // tcpdump needs a moment to open the device.
        std::thread::sleep(Duration::from_millis(700));
        let deadline = Instant::now() + Duration::from_secs(15);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            self.a_ns
                .exec(&["ping", "-c", "1", "-W", "1", &self.ip(11)]);
            std::thread::sleep(Duration::from_millis(200));
        }
        child.wait_with_output().unwrap()
    }
}

/// Lines of `tcpdump -r FILE -n` with FILE's pcap.
fn read_back(file: &str) -> Vec<String> {
    let out = Command::new("tcpdump")
        .args(["-r", file, "-n"])
        .output()
        .expect("run tcpdump -r");
    assert!(
        out.status.success(),
        "tcpdump -r {file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn assert_ping_frames(lines: &[String], from: &str, to: &str) {
    assert_eq!(lines.len(), 4, "-c 4 stops after 4 frames: {lines:#?}");
    let requests = lines
        .iter()
        .filter(|l| l.contains(&format!("{from} > {to}: ICMP echo request")))
        .count();
    let replies = lines
        .iter()
        .filter(|l| l.contains(&format!("{to} > {from}: ICMP echo reply")))
        .count();
    assert_eq!((requests, replies), (2, 2), "{lines:#?}");
}

#[test]
fn capture_of_a_fast_path_ping_reads_back() {
    if !require_root("capture_of_a_fast_path_ping_reads_back") {
        return;
    }
    let _g = shared();
    let lab = Lab::new();
    let (a_ip, b_ip) = (lab.ip(10), lab.ip(11));
    // ARP and MAC learning through the slow path; the flow then runs in
    // the kernel.
    assert!(lab.a_ns.ping_within(&b_ip, FIVE_S), "a cannot ping b");
    let forwarded = fast_counter(&lab.d, &lab.a, "ForwardedPackets");

    let dir = std::env::temp_dir().join(format!("vst-capture-{}", tag()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("a.pcap");
    let file = file.to_str().unwrap();
    let child = lab.capture(&[&lab.a, "-c", "4", "-w", file, "icmp"]);
    let out = lab.ping_until_done(child);
    assert!(
        out.status.success(),
        "capture failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ping_frames(&read_back(file), &a_ip, &b_ip);
    assert!(
        fast_counter(&lab.d, &lab.a, "ForwardedPackets") > forwarded,
        "the pings captured went through the fast path"
    );

    // -w -: pcap on stdout, for a pipe into tcpdump -r -.
    let child = lab.capture(&["-w", "-", "-c", "4", &lab.b, "icmp"]);
    let out = lab.ping_until_done(child);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let piped = dir.join("b.pcap");
    std::fs::write(&piped, &out.stdout).unwrap();
    assert_ping_frames(&read_back(piped.to_str().unwrap()), &a_ip, &b_ip);

    // --direction in on a: only what a sends into the switch (requests).
    let child = lab.capture(&["--direction", "in", "-c", "2", "-w", file, &lab.a, "icmp"]);
    let out = lab.ping_until_done(child);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = read_back(file);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines.iter().all(|l| l.contains("echo request")),
        "{lines:#?}"
    );

    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn capture_refuses_an_unknown_port() {
    if !require_root("capture_refuses_an_unknown_port") {
        return;
    }
    let _g = shared();
    let host = Netns::new("ch");
    let d = Daemon::start_in(&host);
    let err = d.fails(&["capture", "-c", "1", "nosuchport"]);
    assert!(err.contains("port: no port named 'nosuchport'"), "{err}");
    let out = d.ctl(&["capture", "-c", "0", "nosuchport"]);
    assert_eq!(out.status.code(), Some(2), "-c 0 is a usage error");
}

/// `vswitchctl capture ARGS` against `d`, run to its end while `traffic`
/// runs every 0.2 s (after tcpdump had a moment to open the device).
fn capture_during(d: &Daemon, args: &[&str], traffic: impl Fn()) -> Output {
    let mut child = Command::new(bin("vswitchctl"))
        .arg("--socket")
        .arg(&d.socket)
        .arg("capture")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run vswitchctl capture");
    std::thread::sleep(Duration::from_millis(700));
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        traffic();
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "capture {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// (requests from -> to, replies to -> from) among a pcap's frames.
fn echo_counts(frames: &[Vec<u8>], from: &str, to: &str) -> (usize, usize) {
    let (from, to) = (from.parse().unwrap(), to.parse().unwrap());
    let icmp: Vec<_> = frames.iter().filter_map(|f| icmp4(f)).collect();
    let n = |s, d, kind| {
        icmp.iter()
            .filter(|&&(a, b, k, _)| (a, b, k) == (s, d, kind))
            .count()
    };
    (n(from, to, 8), n(to, from, 0))
}

#[test]
fn capture_of_a_host_port_runs_in_the_daemons_namespace() {
    if !require_root("capture_of_a_host_port_runs_in_the_daemons_namespace") {
        return;
    }
    let _g = shared();
    let host = Netns::new("ch");
    let d = Daemon::start_in(&host);
    let (subnet, prefix) = unique_subnet();
    let net = format!("caph{}", tag());
    d.ok(&[
        "network", "create", "-d", "internal", "--subnet", &subnet, &net,
    ]);
    let ns = Netns::new("ce");
    no_ipv6(&ns);
    let ep_ip = format!("{prefix}.10");
    d.endpoint(&net, &ns, &["--ip", &ep_ip], &format!("chp{}", tag()));
    let gw = format!("{prefix}.1");
    assert!(
        ns.ping_within(&gw, FIVE_S),
        "the endpoint cannot ping its gateway"
    );
    let ping = || {
        ns.exec(&["ping", "-c", "1", "-W", "1", &gw]);
    };
    let port = format!("host:{net}");
    // The host port's TAP is in the daemon's namespace, not the test's.
    let out = capture_during(&d, &["-w", "-", "-c", "4", &port, "icmp"], ping);
    let dir = std::env::temp_dir().join(format!("vst-capture-{}", tag()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("host.pcap");
    std::fs::write(&file, &out.stdout).unwrap();
    assert_eq!(echo_counts(&read_pcap(&file), &ep_ip, &gw), (2, 2));
    // in: what the host port sends into the switch, the gateway's replies.
    let out = capture_during(
        &d,
        &["-w", "-", "-c", "2", "--direction", "in", &port, "icmp"],
        ping,
    );
    std::fs::write(&file, &out.stdout).unwrap();
    assert_eq!(echo_counts(&read_pcap(&file), &ep_ip, &gw), (0, 2));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn capture_of_an_uplink_sees_the_wire_after_translation() {
    if !require_root("capture_of_an_uplink_sees_the_wire_after_translation") {
        return;
    }
    let _g = shared();
    let f = Fabric::new();
    let (subnet, p) = unique_subnet();
    let up = f.add_uplink(&[&format!("{p}.2/24")]);
    f.outside_addr(OUTSIDE_IF, &format!("{p}.1/24"));
    let d = Daemon::start_in(&f.host);
    let net = format!("capu{}", tag());
    d.ok(&[
        "network",
        "create",
        "-d",
        "l2bridge",
        "--subnet",
        &subnet,
        "--gateway",
        &format!("{p}.1"),
        "-o",
        &format!("interface={up}"),
        &net,
    ]);
    let ns = Netns::new("ce");
    no_ipv6(&ns);
    let ep_ip = format!("{p}.10");
    d.endpoint(&net, &ns, &["--ip", &ep_ip], &format!("cup{}", tag()));
    let outside = format!("{p}.1");
    assert!(
        f.outside.ping_within(&ep_ip, FIVE_S),
        "outside cannot ping the endpoint"
    );
    let ping = || {
        f.outside.exec(&["ping", "-c", "1", "-W", "1", &ep_ip]);
    };
    let port = format!("uplink:{net}");
    let dir = std::env::temp_dir().join(format!("vst-capture-{}", tag()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("uplink.pcap");
    let out = capture_during(&d, &["-w", "-", "-c", "4", &port, "icmp"], ping);
    std::fs::write(&file, &out.stdout).unwrap();
    let frames = read_pcap(&file);
    assert_eq!(echo_counts(&frames, &outside, &ep_ip), (2, 2));
    // On the way out after translation: l2bridge's replies carry the
    // uplink's MAC, not the endpoint's.
    let uplink_mac = mac_bytes(&link_mac(&f.host, &up));
    let replies: Vec<&Vec<u8>> = frames
        .iter()
        .filter(|fr| icmp4(fr).is_some_and(|(_, _, k, _)| k == 0))
        .collect();
    assert!(
        replies.iter().all(|fr| fr[6..12] == uplink_mac),
        "replies on the wire come from the uplink's MAC"
    );
    // The wire's directions are the switch's: in is what arrives from it.
    let out = capture_during(
        &d,
        &["-w", "-", "-c", "2", "--direction", "in", &port, "icmp"],
        ping,
    );
    std::fs::write(&file, &out.stdout).unwrap();
    assert_eq!(echo_counts(&read_pcap(&file), &outside, &ep_ip), (2, 0));
    std::fs::remove_dir_all(&dir).unwrap();
}
