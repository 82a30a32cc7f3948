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
    assert_eq!(before, d.snapshot());
    // The daemon is still serving.
    d.ok(&["network", "ls"]);
}
