//! `vswitchd --metrics`: a Prometheus scrape over TCP that `promtool check
//! metrics` accepts, whose counters move with traffic through the switch;
//! off unless asked for; a taken address stops the daemon at startup.
//! Only 127.0.0.1 and namespaces the tests made are used.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use vswitch_systests::{bin, require_root, unique_subnet, wait_until, Daemon, Netns};

/// A port on 127.0.0.1 nobody listens on right now: bound, then let go.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// An HTTP answer: status code, head (status line and headers), body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

fn http(addr: SocketAddr, method: &str, path: &str) -> Answer {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: vswitch-test\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the answer");
    let text = String::from_utf8(raw).expect("a UTF-8 answer");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    Answer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// `GET /metrics`, which must succeed with the text format; the body.
fn scrape(addr: SocketAddr) -> String {
    let a = http(addr, "GET", "/metrics");
    assert_eq!(a.status, 200, "{}\n{}", a.head, a.body);
    let content_type = a
        .head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap_or_else(|| panic!("no Content-Type in {}", a.head));
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    a.body
}

/// `promtool check metrics` on `body`: it must exit 0 (its lint warnings,
/// about names for one, exit non-zero and fail the test).
fn promtool_accepts(body: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): install Debian's prometheus package (scripts/lib.sh does)")
        });
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = body.as_bytes().to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("wait for promtool");
    let _ = writer.join();
    assert!(
        out.status.success(),
        "promtool check metrics refused the scrape: {}{}\n--- scrape ---\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A sample line's labels, unescaped.
fn labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while let Some((name, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(name.trim_start_matches(',').to_owned(), value);
        rest = &after[end..];
    }
    out
}

/// The samples of `name` whose labels include `want`, as (labels, value).
fn samples(body: &str, name: &str, want: &[(&str, &str)]) -> Vec<(BTreeMap<String, String>, u64)> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((m, rest)) => (m, self::labels(rest.strip_suffix('}')?)),
                None => (series, BTreeMap::new()),
            };
            let matches = metric == name
                && want
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v));
            matches.then(|| (labels, value.parse().expect("an integer value")))
        })
        .collect()
}

/// The one sample of `name` with labels `want`.
fn value(body: &str, name: &str, want: &[(&str, &str)]) -> u64 {
    let found = samples(body, name, want);
    assert_eq!(
        found.len(),
        1,
        "expected one {name} with {want:?}, found {found:?} in:\n{body}"
    );
    found[0].1
}

fn port_counter(body: &str, name: &str, port: &str) -> u64 {
    value(body, name, &[("port", port), ("kind", "endpoint")])
}

/// `policy add --endpoint EP` of one ACL with `settings`.
fn add_acl(d: &Daemon, endpoint: &str, settings: &str) {
    let path = d
        .dir
        .join(format!("acl-{}.json", vswitch_systests::unique()));
    std::fs::write(
        &path,
        format!(r#"{{"Type": "ACL", "Settings": {settings}}}"#),
    )
    .unwrap();
    let file = path.to_str().unwrap();
    d.ok(&["policy", "add", "--endpoint", endpoint, "--file", file]);
}

#[test]
fn metrics_pass_promtool_and_move_with_traffic() {
    if !require_root("metrics_pass_promtool_and_move_with_traffic") {
        return;
    }
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let d = Daemon::start_with(&["--metrics", &addr.to_string()]);
    let (subnet, prefix) = unique_subnet();
    let net = format!("net{}", vswitch_systests::tag());
    d.ok(&[
        "network", "create", "-d", "internal", "--subnet", &subnet, &net,
    ]);
    let a = Netns::new("a");
    let b = Netns::new("b");
    d.endpoint(&net, &a, &["--ip", &format!("{prefix}.10")], "epa");
    d.endpoint(&net, &b, &["--ip", &format!("{prefix}.11")], "epb");
    let ip_b = format!("{prefix}.11");
    assert!(
        a.ping_within(&ip_b, Duration::from_secs(5)),
        "a cannot ping b"
    );

    let before = scrape(addr);
    promtool_accepts(&before);
    assert_eq!(value(&before, "vswitch_up", &[]), 1);
    let info = samples(&before, "vswitch_build_info", &[]);
    assert!(
        info.len() == 1 && info[0].0.contains_key("version") && info[0].1 == 1,
        "{info:?}"
    );
    // Every port with its kind and network: two endpoints and the host port.
    for (port, kind) in [("epa", "endpoint"), ("epb", "endpoint")] {
        value(
            &before,
            "vswitch_port_rx_packets_total",
            &[("port", port), ("network", &net), ("kind", kind)],
        );
    }
    let host = format!("host:{net}");
    value(
        &before,
        "vswitch_port_tx_bytes_total",
        &[("port", &host), ("network", &net), ("kind", "host")],
    );
    // Every drop reason, zeros included.
    let reasons = samples(&before, "vswitch_port_drops_total", &[("port", "epa")]);
    assert!(reasons.len() >= 19, "{reasons:?}");
    assert!(reasons.iter().any(|(l, _)| l["reason"] == "acl_blocked"));
    assert!(reasons.iter().any(|(l, _)| l["reason"] == "mac_spoofing"));
    for family in [
        "vswitch_port_flow_cache_hits_total",
        "vswitch_port_flow_cache_misses_total",
        "vswitch_port_flow_cache_evictions_total",
        "vswitch_port_flow_cache_entries",
    ] {
        port_counter(&before, family, "epb");
    }
    let fdb = value(
        &before,
        "vswitch_fdb_entries",
        &[("network", &net), ("driver", "internal")],
    );
    assert!(fdb >= 2, "fdb entries: {fdb}");
    value(&before, "vswitch_conntrack_entries", &[]);
    // Not a nat network; no ACL yet.
    assert!(samples(&before, "vswitch_nat_ports_in_use", &[]).is_empty());
    assert!(samples(&before, "vswitch_acl_rule_hits_total", &[]).is_empty());
    // HELP and TYPE once per family.
    for line in before.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split(' ').nth(2).unwrap();
        assert_eq!(
            before.matches(&format!("# TYPE {name} ")).count(),
            1,
            "{name}"
        );
        assert_eq!(
            before.matches(&format!("# HELP {name} ")).count(),
            1,
            "{name}"
        );
    }

    a.ok(&["ping", "-c", "5", "-i", "0.2", "-W", "1", &ip_b]);
    let after = scrape(addr);
    promtool_accepts(&after);
    for (name, port) in [
        ("vswitch_port_rx_packets_total", "epa"),
        ("vswitch_port_tx_packets_total", "epb"),
        ("vswitch_port_rx_packets_total", "epb"),
        ("vswitch_port_tx_packets_total", "epa"),
    ] {
        let (was, now) = (
            port_counter(&before, name, port),
            port_counter(&after, name, port),
        );
        assert!(now >= was + 5, "{name} of {port}: {was} -> {now}");
    }
    for name in ["vswitch_port_rx_bytes_total", "vswitch_port_tx_bytes_total"] {
        let (was, now) = (
            port_counter(&before, name, "epa"),
            port_counter(&after, name, "epa"),
        );
        assert!(now >= was + 5 * 98, "{name} of epa: {was} -> {now}");
    }

    // An ACL that blocks a's pings at b: its hit counter appears and grows.
    add_acl(
        &d,
        "epb",
        r#"{"Id": "block-icmp-in", "Action": "Block", "Direction": "In", "Protocols": "1"}"#,
    );
    // The same Id on another endpoint (ids are unique per endpoint only),
    // matching nothing here: a series of its own that stays at 0.
    add_acl(
        &d,
        "epa",
        r#"{"Id": "block-icmp-in", "Action": "Block", "Direction": "In", "Protocols": "17", "LocalPorts": "9"}"#,
    );
    let acl = [
        ("policy", "block-icmp-in"),
        ("owner", "epb"),
        ("owner_kind", "endpoint"),
    ];
    let hits0 = value(&scrape(addr), "vswitch_acl_rule_hits_total", &acl);
    assert!(!a.ping(&ip_b), "the ACL let a's ping through");
    let blocked = scrape(addr);
    promtool_accepts(&blocked);
    let hits1 = value(&blocked, "vswitch_acl_rule_hits_total", &acl);
    assert!(hits1 > hits0, "hits {hits0} -> {hits1}");
    let _ = a.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "1", &ip_b]);
    let later = scrape(addr);
    let hits2 = value(&later, "vswitch_acl_rule_hits_total", &acl);
    assert!(hits2 >= hits1 + 3, "hits {hits1} -> {hits2}");
    let same_id = [
        ("policy", "block-icmp-in"),
        ("owner", "epa"),
        ("owner_kind", "endpoint"),
    ];
    assert_eq!(value(&later, "vswitch_acl_rule_hits_total", &same_id), 0);
    let acl_drops = |body: &str| {
        samples(
            body,
            "vswitch_port_drops_total",
            &[("reason", "acl_blocked")],
        )
        .iter()
        .map(|(_, v)| v)
        .sum::<u64>()
    };
    assert!(acl_drops(&later) >= acl_drops(&before) + 4);

    // Anything else than GET /metrics.
    let other = http(addr, "GET", "/");
    assert_eq!(other.status, 404, "{}", other.head);
    assert_eq!(http(addr, "GET", "/metrics/x").status, 404);
    let post = http(addr, "POST", "/metrics");
    assert_eq!(post.status, 405, "{}", post.head);
    assert!(post.head.contains("\r\nAllow: GET, HEAD"), "{}", post.head);
}

/// The TCP ports the process `pid` listens on (its sockets found in the
/// kernel's tables by inode).
fn listening_tcp_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read the daemon's fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|t| {
            let t = t.to_string_lossy().into_owned();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address, st (0A: LISTEN), inode.
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                if let Some(port) = f[1].rsplit(':').next() {
                    ports.push(u16::from_str_radix(port, 16).unwrap_or(0));
                }
            }
        }
    }
    ports
}

#[test]
fn nothing_listens_without_the_flag() {
    if !require_root("nothing_listens_without_the_flag") {
        return;
    }
    let port = free_port();
    let d = Daemon::start();
    assert_eq!(listening_tcp_ports(d.pid()), Vec::<u16>::new());
    let refused = TcpStream::connect((Ipv4Addr::LOCALHOST, port));
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
        "{refused:?}"
    );
    // With the flag, the one listening socket is the metrics one.
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let d2 = Daemon::start_with(&["--metrics", &addr.to_string()]);
    assert_eq!(listening_tcp_ports(d2.pid()), vec![addr.port()]);
}

#[test]
fn a_taken_or_bad_address_stops_the_daemon() {
    // No root needed: the daemon stops before it touches the kernel.
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = std::env::temp_dir().join(format!("vswitch-test-{}", vswitch_systests::tag()));
    let run = |metrics: &str| {
        let mut child = Command::new(bin("vswitchd"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--socket")
            .arg(dir.join("vswitchd.sock"))
            .args(["--metrics", metrics])
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vswitchd");
        let exited = wait_until(Duration::from_secs(10), || {
            child.try_wait().ok().flatten().is_some()
        });
        if !exited {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        assert!(exited, "vswitchd --metrics {metrics} kept running");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&addr.to_string());
    assert!(
        err.contains(&format!("cannot listen on {addr}")) && err.contains("in use"),
        "{err}"
    );
    let err = run("localhost:9477");
    assert!(err.contains("is not an IP address and port"), "{err}");
    let err = run("127.0.0.1");
    assert!(err.contains("is not an IP address and port"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
    drop(taken);
}
