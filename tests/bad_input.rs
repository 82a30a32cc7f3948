//! Every refused request names the field at fault and changes nothing:
//! the daemon's networks, endpoints and state file are compared before and
//! after each one.

use vswitch_systests::{require_root, tag, unique_subnet, Daemon, Netns};

#[test]
fn bad_network_requests_are_refused_unchanged() {
    if !require_root("bad_network_requests_are_refused_unchanged") {
        return;
    }
    let d = Daemon::start();
    let (subnet, prefix) = unique_subnet();
    let net = format!("bn{}", tag());
    d.ok(&[
        "network", "create", "-d", "internal", "--subnet", &subnet, &net,
    ]);
    let a = Netns::new("bi");
    d.endpoint(&net, &a, &[], "bep");
    let (other, other_prefix) = unique_subnet();
    let (gw_net, gw_bcast) = (format!("{other_prefix}.0"), format!("{other_prefix}.255"));
    let half = format!("{prefix}.128/25");

    // network create ARGS... NAME, and what the error must mention.
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["-d", "private", "--subnet", "10.0.0.0/33"],
            "x1",
            "subnet",
        ),
        (&["-d", "private", "--subnet", "banana"], "x1", "subnet"),
        (
            &["-d", "private", "--subnet", "10.9.9.5/24"],
            "x1",
            "host bits",
        ),
        (
            &[
                "-d",
                "private",
                "--subnet",
                &other,
                "--gateway",
                "192.0.2.1",
            ],
            "x1",
            "gateway",
        ),
        (
            &["-d", "private", "--subnet", &other, "--gateway", &gw_net],
            "x1",
            "gateway",
        ),
        (
            &["-d", "private", "--subnet", &other, "--gateway", &gw_bcast],
            "x1",
            "gateway",
        ),
        // Overlapping another network's subnet, exactly or partly.
        (&["-d", "private", "--subnet", &subnet], "x1", "subnet"),
        (&["-d", "private", "--subnet", &half], "x1", "overlaps"),
        (&["-d", "private", "--subnet", &other], &net, "name"),
        (&["-d", "warp", "--subnet", &other], "x1", "driver"),
        (
            &["-d", "private", "--subnet", &other, "-o", "colour=blue"],
            "x1",
            "options.colour",
        ),
        (
            &["-d", "private", "--subnet", &other, "--mtu", "10"],
            "x1",
            "mtu",
        ),
        (&["-d", "private", "--subnet", &other], "bad name", "name"),
        // Networks no endpoint could use (issue 6 item 6).
        (
            &["-d", "private", "--subnet", &other, "--mtu", "65535"],
            "x1",
            "mtu",
        ),
        (&["-d", "private", "--subnet", "0.0.0.0/0"], "x1", "subnet"),
        (
            &["-d", "private", "--subnet", "224.0.0.0/24"],
            "x1",
            "multicast",
        ),
        (
            &["-d", "internal", "--subnet", "127.0.0.0/8"],
            "x1",
            "loopback",
        ),
        (
            &["-d", "private", "--subnet", &other, "--subnet", "::/0"],
            "x1",
            "subnet",
        ),
        (
            &["-d", "private", "--subnet", &other, "--subnet", "ff02::/64"],
            "x1",
            "subnet",
        ),
        (
            &["-d", "private", "--subnet", &other, "--subnet", "fe80::/64"],
            "x1",
            "subnet",
        ),
        (
            &["-d", "private", "--subnet", &other, "-o", "interface=e%d"],
            "x1",
            "options.interface",
        ),
    ];
    for (args, name, expect) in cases {
        let mut full = vec!["network", "create"];
        full.extend_from_slice(args);
        full.push(name);
        d.refused(&full, expect);
    }
    d.refused(&["network", "rm", &net], "still has endpoints");
    d.refused(&["network", "rm", "nosuchnet"], "nosuchnet");
    d.refused(&["network", "inspect", "nosuchnet"], "nosuchnet");
}

#[test]
fn bad_endpoint_requests_are_refused_unchanged() {
    if !require_root("bad_endpoint_requests_are_refused_unchanged") {
        return;
    }
    let d = Daemon::start();
    let (subnet, prefix) = unique_subnet();
    let net = format!("be{}", tag());
    d.ok(&[
        "network", "create", "-d", "private", "--subnet", &subnet, &net,
    ]);
    let a = Netns::new("ba");
    let b = Netns::new("bb");
    let taken = format!("{prefix}.20");
    d.endpoint(
        &net,
        &a,
        &["--ip", &taken, "--mac", "02:aa:00:00:00:01"],
        "first",
    );
    let ep = |extra: &[&str]| {
        let mut v: Vec<String> = ["endpoint", "create", "--network", &net, "--netns", &b.name]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let call = |extra: &[&str], expect: &str| {
        let v = ep(extra);
        let args: Vec<&str> = v.iter().map(String::as_str).collect();
        d.refused(&args, expect);
    };
    call(&["first"], "name"); // duplicate endpoint name
    d.refused(
        &[
            "endpoint",
            "create",
            "--network",
            "nosuchnet",
            "--netns",
            &b.name,
            "x",
        ],
        "network",
    );
    d.refused(
        &[
            "endpoint",
            "create",
            "--network",
            &net,
            "--netns",
            "vst-no-such-ns",
            "x",
        ],
        "netns",
    );
    d.refused(
        &[
            "endpoint",
            "create",
            "--network",
            &net,
            "--netns",
            "/proc/999999999/ns/net",
            "x",
        ],
        "netns",
    );
    call(&["--ip", "192.0.2.7", "x"], "ip");
    call(&["--ip", &format!("{prefix}.0"), "x"], "ip");
    call(&["--ip", &format!("{prefix}.255"), "x"], "ip");
    call(&["--ip", &taken, "x"], "already used");
    call(&["--ip", "not-an-ip", "x"], "ip");
    call(&["--mac", "01:00:5e:00:00:01", "x"], "mac");
    call(&["--mac", "00:00:00:00:00:00", "x"], "mac");
    call(&["--mac", "ff:ff:ff:ff:ff:ff", "x"], "mac");
    call(&["--mac", "02:aa:00:00:00:01", "x"], "already in use");
    call(&["--ifname", "a-very-long-name0", "x"], "ifname");
    // A pattern the kernel would expand: refused before anything changes,
    // the namespace's loopback included (issue 6 item 7).
    let lo_before = b.ok(&["ip", "-o", "link", "show", "lo"]);
    call(&["--ifname", "e%d", "x"], "ifname");
    call(&["--ifname", "a:b", "x"], "ifname");
    assert_eq!(lo_before, b.ok(&["ip", "-o", "link", "show", "lo"]));
    // An interface name that already exists in the namespace.
    b.ok(&[
        "ip", "link", "add", "taken0", "type", "veth", "peer", "name", "taken1",
    ]);
    call(&["--ifname", "taken0", "x"], "ifname");
    d.refused(&["endpoint", "rm", "nosuchendpoint"], "nosuchendpoint");
    // The endpoint that was refused left no interface behind.
    assert!(!b.exec(&["ip", "link", "show", "eth0"]).status.success());
}

#[test]
fn malformed_json_on_the_socket_is_refused() {
    if !require_root("malformed_json_on_the_socket_is_refused") {
        return;
    }
    let d = Daemon::start();
    let before = d.snapshot();
    for line in [
        &b"{not json\n"[..],
        b"{\"Op\":\"Explode\"}\n",
        b"\n",
        b"[1,2,3]\n",
        // A misspelt field is refused, not ignored.
        b"{\"Op\":\"NetworkCreate\",\"Args\":{\"Name\":\"n\",\"Type\":\"private\",\"Mtuu\":9000}}\n",
    ] {
        let answer = d.raw(line);
        assert_eq!(answer["Error"]["Kind"], "BadRequest", "{answer}");
    }
    let answer = d.raw(b"{\"Op\":\"NetworkCreate\",\"Args\":{\"Name\":\"n\",\"Type\":\"private\",\"Subnets\":[\"x\"]}}\n");
    assert_eq!(answer["Error"]["Field"], "subnet", "{answer}");
    // A value of the wrong type names its JSON path (issue 6 item 9).
    for (line, path) in [
        (&b"{\"Op\":\"NetworkCreate\",\"Args\":{\"Name\":5}}\n"[..], "Args.Name"),
        (b"{\"Op\":\"NetworkCreate\",\"Args\":{\"Name\":\"n\",\"Subnets\":[\"10.0.0.0/24\",1]}}\n", "Args.Subnets[1]"),
        (b"{\"Op\":\"EndpointCreate\",\"Args\":{\"Name\":\"e\",\"AllowSpoofing\":1}}\n", "Args.AllowSpoofing"),
        (b"{\"Op\":\"Stats\",\"Args\":{\"Port\":[]}}\n", "Args.Port"),
    ] {
        let answer = d.raw(line);
        assert_eq!(answer["Error"]["Kind"], "BadRequest", "{answer}");
        assert_eq!(answer["Error"]["Field"], path, "{answer}");
    }
    assert_eq!(before, d.snapshot());
    // The daemon is still serving.
    d.ok(&["network", "ls"]);
}

/// A path that blocks when opened (a FIFO) cannot stall the control plane:
/// it is refused at once while other clients are served, and a recorded
/// namespace that later becomes one neither hangs `endpoint ls` nor a
/// restart (issue 6 item 1).
#[test]
fn a_fifo_cannot_block_the_control_plane() {
    use std::time::{Duration, Instant};
    if !require_root("a_fifo_cannot_block_the_control_plane") {
        return;
    }
    let mut d = Daemon::start();
    let (subnet, _) = unique_subnet();
    let net = format!("ff{}", tag());
    d.ok(&[
        "network", "create", "-d", "private", "--subnet", &subnet, &net,
    ]);
    let fifo = std::env::temp_dir().join(format!("vswitch-fifo-{}", tag()));
    let made = vswitch_systests::run("mkfifo", &[fifo.to_str().unwrap()]);
    assert!(made.status.success());
    let _cleanup = RemoveOnDrop(fifo.clone());
    let started = Instant::now();
    d.refused(
        &[
            "endpoint",
            "create",
            "--network",
            &net,
            "--netns",
            fifo.to_str().unwrap(),
            "x",
        ],
        "not a network namespace",
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the FIFO stalled the daemon"
    );

    // A recorded namespace replaced by a FIFO.
    let ns = Netns::new("ff");
    d.endpoint(&net, &ns, &[], "fep");
    let path = format!("/run/netns/{}", ns.name);
    let out = vswitch_systests::run("ip", &["netns", "del", &ns.name]);
    assert!(out.status.success());
    assert!(vswitch_systests::run("mkfifo", &[&path]).status.success());
    let _cleanup2 = RemoveOnDrop(path.clone().into());
    let started = Instant::now();
    let eps = d.json(&["endpoint", "ls"]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "endpoint ls stalled"
    );
    assert!(eps[0]["State"]["Detached"]["reason"].is_string(), "{eps}");
    d.kill9();
    d.expect_log("endpoint detached");
    d.spawn();
    let eps = d.json(&["endpoint", "ls"]);
    assert!(eps[0]["State"].get("Detached").is_some(), "{eps}");
    let removed = d.ctl(&["endpoint", "rm", "fep"]);
    assert!(removed.status.success());
}

/// A file or directory the test made, removed when the test ends.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if std::fs::remove_file(&self.0).is_err() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// `--socket` replaces only a stale socket, never another file (issue 6
/// item 5).
#[test]
fn the_socket_path_never_replaces_a_file() {
    if !require_root("the_socket_path_never_replaces_a_file") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("vswitch-sock-{}", tag()));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = RemoveOnDrop(dir.clone());
    let file = dir.join("precious");
    std::fs::write(&file, "data").unwrap();
    let out = std::process::Command::new(vswitch_systests::bin("vswitchd"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--socket")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success(), "vswitchd started on a regular file");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "data");
}

/// Thousands of idle connections neither make thousands of threads nor
/// keep the daemon from answering once they go (issue 6 item 10).
#[test]
fn connections_are_capped() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixStream;
    use std::time::Duration;
    if !require_root("connections_are_capped") {
        return;
    }
    let d = Daemon::start();
    let mut idle = Vec::new();
    let mut refused = 0;
    for _ in 0..300 {
        let s = UnixStream::connect(&d.socket).expect("connect");
        idle.push(s);
    }
    // Past the cap, each connection is told so and closed.
    for s in &idle {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut line = String::new();
        if BufReader::new(s).read_line(&mut line).is_ok() && line.contains("Unavailable") {
            refused += 1;
        }
    }
    assert!(
        refused >= 200,
        "only {refused} of 300 idle connections were refused"
    );
    let threads = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let threads: usize = threads
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(threads < 100, "{threads} threads for 300 connections");
    drop(idle);
    assert!(
        vswitch_systests::wait_until(Duration::from_secs(5), || d
            .ctl(&["network", "ls"])
            .status
            .success()),
        "the daemon did not serve again once the connections closed"
    );
}

/// A state file that parses but holds bad records starts the rest and
/// reports each bad one by name (issue 6 item 11).
#[test]
fn bad_records_in_the_state_file_are_reported_and_kept_out() {
    if !require_root("bad_records_in_the_state_file_are_reported_and_kept_out") {
        return;
    }
    let mut d = Daemon::start();
    let (s1, p1) = unique_subnet();
    let (s2, _) = unique_subnet();
    let (good, bad) = (format!("good{}", tag()), format!("bad{}", tag()));
    d.ok(&["network", "create", "-d", "private", "--subnet", &s1, &good]);
    d.ok(&["network", "create", "-d", "private", "--subnet", &s2, &bad]);
    let a = Netns::new("ra");
    let b = Netns::new("rb");
    d.endpoint(&good, &a, &["--ip", &format!("{p1}.10")], "ra1");
    d.endpoint(&good, &b, &["--ip", &format!("{p1}.11")], "rb1");
    d.terminate();
    // Edit the file as a careless hand would: a bad option on one network,
    // and the second endpoint given the first one's address.
    let path = d.state_dir().join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for n in state["networks"].as_array_mut().unwrap() {
        if n["name"] == bad.as_str() {
            n["options"]["fdb_aging"] = "forever".into();
        }
    }
    let eps = state["endpoints"].as_array_mut().unwrap();
    let first_ip = eps[0]["ipv4"].clone();
    eps[1]["ipv4"] = first_ip;
    std::fs::write(&path, serde_json::to_vec_pretty(&state).unwrap()).unwrap();
    d.expect_log("invalid network record");
    d.expect_log("invalid endpoint record");
    d.spawn();
    let nets = d.json(&["network", "ls"]);
    let find = |name: &str| {
        nets.as_array()
            .unwrap()
            .iter()
            .find(|n| n["Name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(find(&good)["State"], "Up", "{nets}");
    let reason = find(&bad)["State"]["Degraded"]["reason"].to_string();
    assert!(reason.contains("fdb_aging"), "{reason}");
    let ep = d.json(&["endpoint", "inspect", "rb1"]);
    let reason = ep["State"]["Detached"]["reason"].to_string();
    assert!(reason.contains("ra1"), "{ep}");
    // The good endpoint is attached and reachable from its namespace.
    let ep = d.json(&["endpoint", "inspect", "ra1"]);
    assert_eq!(ep["State"], "Attached", "{ep}");
    // Bad records are removed like others.
    d.ok(&["endpoint", "rm", "rb1"]);
    d.ok(&["network", "rm", &bad]);
}
