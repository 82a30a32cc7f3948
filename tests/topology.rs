//! `vswitchctl apply -f` / `delete -f`: a lab from a file, against a daemon
//! in a namespace of the test's own. Every namespace and interface the
//! files name is unique to the test, and each link end names its
//! namespace, so nothing here touches the host's own interfaces. The
//! namespaces a file makes are deleted again on drop, also when the test
//! fails.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use vswitch_systests::{require_root, run, tag, unique_subnet, wait_until, Daemon, Netns};

/// Namespaces a lab file makes, deleted on drop whatever `delete -f` did.
struct FileNamespaces(Vec<String>);

impl Drop for FileNamespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
}

fn ns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

fn in_ns(ns: &str, args: &[&str]) -> Output {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    run("ip", &full)
}

fn pings(ns: &str, addr: &str) -> bool {
    wait_until(Duration::from_secs(5), || {
        in_ns(ns, &["ping", "-c1", "-W1", addr]).status.success()
    })
}

fn output_text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A lab file of the test's own.
struct LabFile {
    path: PathBuf,
}

impl LabFile {
    fn new(d: &Daemon, text: &str) -> LabFile {
        let path = d.dir.join(format!("lab{}.yaml", tag()));
        std::fs::write(&path, text).unwrap();
        LabFile { path }
    }
    fn write(&self, text: &str) {
        std::fs::write(&self.path, text).unwrap();
    }
    fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

/// Runs `vswitchctl VERB [flags] -f FILE`, which must succeed; returns
/// stdout.
fn ok(d: &Daemon, verb: &str, flags: &[&str], file: &LabFile) -> String {
    let mut args = vec![verb];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["-f", file.arg()]);
    let out = d.ctl(&args);
    let (stdout, stderr) = output_text(&out);
    assert!(
        out.status.success(),
        "vswitchctl {args:?} failed: {stderr}{stdout}"
    );
    stdout
}

struct Names {
    t: String,
    net: String,
    l2: String,
    ns_a: String,
    ns_b: String,
    ns_c: String,
    outside: String,
    fabric: String,
    uplink: String,
    subnet: String,
    prefix: String,
    wire: String,
}

impl Names {
    fn new() -> Names {
        let t = tag();
        let (subnet, prefix) = unique_subnet();
        let (_, wire) = unique_subnet();
        Names {
            net: format!("tn{t}"),
            l2: format!("tl{t}"),
            ns_a: format!("vstTa{t}"),
            ns_b: format!("vstTb{t}"),
            ns_c: format!("vstTc{t}"),
            outside: format!("vstTo{t}"),
            fabric: format!("vstTf{t}"),
            uplink: format!("vu{t}"),
            subnet,
            prefix,
            wire,
            t,
        }
    }

    fn namespaces(&self) -> FileNamespaces {
        FileNamespaces(vec![
            self.ns_a.clone(),
            self.ns_b.clone(),
            self.ns_c.clone(),
            self.outside.clone(),
            self.fabric.clone(),
        ])
    }

    /// The lab: an internal network with endpoints a and b (a with an
    /// ACL), and a fabric: `outside` and the vswitch host's uplink on a
    /// bridge, an l2bridge network on the uplink with endpoint c. `extra`
    /// goes at the end of the endpoint list; `port` is the ACL's.
    fn lab(&self, host: &Netns, port: u16, extra: &str) -> String {
        let Names {
            t,
            net,
            l2,
            ns_a,
            ns_b,
            ns_c,
            outside,
            fabric,
            uplink,
            subnet,
            prefix,
            wire,
        } = self;
        let host = &host.name;
        format!(
            "\
name: t{t}
networks:
  - name: {net}
    driver: internal
    subnets: [{subnet}]
  - name: {l2}
    driver: l2bridge
    subnets: [{wire}.0/24]
    gateway: {wire}.1
    options: {{interface: {uplink}}}
endpoints:
  - name: a{t}
    network: {net}
    namespace: {ns_a}
    address: {prefix}.10
    policies:
      - {{\"Type\": \"ACL\", \"Settings\": {{\"Id\": \"web\", \"Action\": \"Allow\", \"Direction\": \"In\",
         \"Protocols\": \"6\", \"LocalPorts\": \"{port}\", \"Priority\": 100}}}}
  - name: b{t}
    network: {net}
    namespace: {ns_b}
    address: {prefix}.11
    backend: veth
  - name: c{t}
    network: {l2}
    namespace: {ns_c}
    address: {wire}.10
{extra}fabric:
  namespaces: [{ns_a}, {ns_b}, {ns_c}, {outside}, {fabric}]
  bridges: [{{name: br0, namespace: {fabric}}}]
  links:
    - a: {{name: eth0, namespace: {outside}, addresses: [{wire}.1/24]}}
      b: {{name: vo{t}, namespace: {fabric}, master: br0}}
    - a: {{name: {uplink}, namespace: {host}, addresses: [{wire}.2/24]}}
      b: {{name: vp{t}, namespace: {fabric}, master: br0}}
"
        )
    }
}

#[test]
fn apply_brings_a_lab_up_in_line_and_delete_removes_it() {
    if !require_root("apply_brings_a_lab_up_in_line_and_delete_removes_it") {
        return;
    }
    let host = Netns::new("h");
    let d = Daemon::start_in(&host);
    let n = Names::new();
    let _cleanup = n.namespaces();
    let t = &n.t;
    let file = LabFile::new(&d, &n.lab(&host, 80, ""));

    // A dry run plans everything and changes nothing.
    let before = d.snapshot();
    let plan = ok(&d, "apply", &["--dry-run"], &file);
    assert!(
        plan.contains(&format!("+ network {}: internal {}", n.net, n.subnet)),
        "{plan}"
    );
    assert!(plan.contains(&format!("+ namespace {}", n.ns_a)), "{plan}");
    assert_eq!(d.snapshot(), before);
    assert!(!ns_exists(&n.ns_a));
    let json: serde_json::Value =
        serde_json::from_str(&ok(&d, "apply", &["--dry-run", "--json"], &file)).unwrap();
    assert_eq!(
        json["Steps"].as_array().unwrap().len(),
        plan.lines().count(),
        "{json}"
    );

    // Up: the endpoints ping each other, and the outside machine reaches
    // the l2bridge endpoint through the file's fabric.
    let out = ok(&d, "apply", &[], &file);
    assert_eq!(out, plan, "apply does what the dry run planned");
    assert!(
        pings(&n.ns_a, &format!("{}.11", n.prefix)),
        "a cannot ping b"
    );
    assert!(
        pings(&n.ns_b, &format!("{}.10", n.prefix)),
        "b cannot ping a"
    );
    assert!(
        pings(&n.outside, &format!("{}.10", n.wire)),
        "outside cannot ping c"
    );
    let a_id = d.json(&["endpoint", "inspect", &format!("a{t}")])["ID"].clone();

    // Again: nothing to do.
    let again = ok(&d, "apply", &[], &file);
    assert_eq!(again, format!("lab t{t}: no change\n"));

    // An edit: one endpoint more and a changed ACL; only those change.
    let extra = format!(
        "  - {{name: d{t}, network: {}, namespace: {}, ifname: eth1, address: {}.12}}\n",
        n.net, n.ns_b, n.prefix
    );
    file.write(&n.lab(&host, 443, &extra));
    let before = d.snapshot();
    let plan = ok(&d, "apply", &["--dry-run"], &file);
    assert_eq!(d.snapshot(), before);
    let lines: Vec<&str> = plan.lines().collect();
    assert_eq!(
        lines,
        [
            format!("- policy 'web': ACL from endpoint a{t}, no longer in the file"),
            format!("+ endpoint d{t}: on {} in {}", n.net, n.ns_b),
            format!("+ policy ACL 'web': on endpoint a{t}"),
        ],
        "{plan}"
    );
    assert_eq!(ok(&d, "apply", &[], &file), plan);
    let policies = d.json(&["policy", "ls", "--endpoint", &format!("a{t}")]);
    assert_eq!(
        policies[0]["Settings"]["Settings"]["LocalPorts"], "443",
        "{policies}"
    );
    assert_eq!(
        d.json(&["endpoint", "inspect", &format!("a{t}")])["ID"],
        a_id,
        "a was made again although only its policy changed"
    );
    assert!(pings(&n.ns_b, &format!("{}.10", n.prefix)));
    assert_eq!(
        ok(&d, "apply", &[], &file),
        format!("lab t{t}: no change\n")
    );

    // Back to the first file: without --prune d stays, with it d goes.
    file.write(&n.lab(&host, 443, ""));
    assert_eq!(
        ok(&d, "apply", &[], &file),
        format!("lab t{t}: no change\n")
    );
    assert_eq!(
        ok(&d, "apply", &["--prune"], &file),
        format!("- endpoint d{t}: no longer in the file\n")
    );

    // Delete: no endpoint, network, namespace or link of the lab is left;
    // the host namespace, which the file did not make, is.
    let out = ok(&d, "delete", &[], &file);
    assert!(out.contains(&format!("- namespace {}", n.fabric)), "{out}");
    assert_eq!(d.json(&["endpoint", "ls"]), serde_json::json!([]));
    assert_eq!(d.json(&["network", "ls"]), serde_json::json!([]));
    for ns in &n.namespaces().0 {
        assert!(!ns_exists(ns), "{ns} is left");
    }
    assert!(ns_exists(&host.name));
    let links = host.ok(&["ip", "-o", "link", "show"]);
    assert!(!links.contains(&n.uplink), "{links}");
    assert!(!d.dir.join("labs").join(format!("t{t}.json")).exists());
    assert_eq!(
        ok(&d, "delete", &[], &file),
        format!("lab t{t}: no change\n")
    );
}

#[test]
fn fabric_that_was_there_is_used_and_never_deleted() {
    if !require_root("fabric_that_was_there_is_used_and_never_deleted") {
        return;
    }
    let d = Daemon::start();
    let mine = Netns::new("m");
    let t = tag();
    let (subnet, prefix) = unique_subnet();
    let made = format!("vstTn{t}");
    let _cleanup = FileNamespaces(vec![made.clone()]);
    let file = LabFile::new(
        &d,
        &format!(
            "\
networks:
  - {{name: p{t}, driver: private, subnets: [{subnet}]}}
endpoints:
  - {{name: x{t}, network: p{t}, namespace: {mine}, address: {prefix}.10}}
  - {{name: y{t}, network: p{t}, namespace: {made}, address: {prefix}.11}}
fabric:
  namespaces: [{mine}, {made}]
",
            mine = mine.name
        ),
    );
    let out = ok(&d, "apply", &[], &file);
    assert!(
        !out.contains(&format!("+ namespace {}", mine.name)),
        "{out}"
    );
    assert!(out.contains(&format!("+ namespace {made}")), "{out}");
    assert!(mine.ping_within(&format!("{prefix}.11"), Duration::from_secs(5)));
    ok(&d, "delete", &[], &file);
    assert!(
        ns_exists(&mine.name),
        "delete -f removed a namespace it did not make"
    );
    assert!(!ns_exists(&made));
}

#[test]
fn invalid_files_change_nothing_and_name_the_line() {
    if !require_root("invalid_files_change_nothing_and_name_the_line") {
        return;
    }
    let host = Netns::new("h");
    let d = Daemon::start_in(&host);
    let t = tag();
    let (subnet, _) = unique_subnet();
    let ns = format!("vstTi{t}");
    let _cleanup = FileNamespaces(vec![ns.clone()]);
    let good = format!(
        "\
networks:
  - name: n{t}
    driver: private
    subnets: [{subnet}]
endpoints:
  - name: e{t}
    network: n{t}
    namespace: {ns}
fabric:
  namespaces: [{ns}]
"
    );
    let file = LabFile::new(&d, &good);
    let cases = [
        (
            good.replace("    namespace: ", "    namspace: "),
            ":8:5: endpoints[0]: unknown field `namspace`",
        ),
        (
            good.replace(&subnet, "10.0.0.0/33"),
            ":4:15: networks[0].subnets[0]: '10.0.0.0/33' is not a CIDR",
        ),
        (
            good.replace(&format!("    network: n{t}"), &format!("    network: m{t}")),
            &*format!(":7:14: endpoints[0].network: no network 'm{t}' in the file or in vswitchd"),
        ),
    ];
    let before = d.snapshot();
    for (text, says) in &cases {
        file.write(text);
        for args in [
            &["apply", "-f", file.arg()][..],
            &["apply", "--prune", "-f", file.arg()],
        ] {
            let out = d.ctl(args);
            let (stdout, stderr) = output_text(&out);
            assert!(!out.status.success(), "{text}\naccepted: {stdout}");
            assert!(
                stderr.contains(&format!("{}{says}", file.arg())),
                "expected {says:?} in: {stderr}"
            );
            assert!(stderr.ends_with("refused, nothing changed\n"), "{stderr}");
            assert_eq!(d.snapshot(), before, "{text}");
            assert!(!ns_exists(&ns), "a refused file made its namespace");
        }
    }
    // A name given twice, in a file otherwise right.
    let twice = good.replace(
        "fabric:",
        &format!("  - name: e{t}\n    network: n{t}\n    namespace: {ns}\nfabric:"),
    );
    file.write(&twice);
    let (_, stderr) = output_text(&d.ctl(&["apply", "-f", file.arg()]));
    assert!(
        stderr.contains(&format!(
            ":9:11: endpoints[1].name: endpoint 'e{t}' is given twice"
        )),
        "{stderr}"
    );
    assert_eq!(d.snapshot(), before);

    // And the right file goes through.
    file.write(&good);
    ok(&d, "apply", &[], &file);
    ok(&d, "delete", &[], &file);
    assert!(!ns_exists(&ns));
}

/// examples/lab.yaml itself (the lab of scripts/lab.sh), applied for real:
/// its names made unique to the test (namespaces `vstL<tag>-…`, interfaces
/// `u<tag>N` and `f<tag>…`) and its uplinks put in the daemon's namespace,
/// everything else as the file has it. Its endpoints ping each other and
/// the outside machine reaches the uplink networks' endpoints; a second
/// apply changes nothing; `delete -f` leaves nothing behind.
#[test]
fn the_example_lab_comes_up_pings_and_goes() {
    if !require_root("the_example_lab_comes_up_pings_and_goes") {
        return;
    }
    let host = Netns::new("h");
    let d = Daemon::start_in(&host);
    let t = tag();
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/lab.yaml"))
            .expect("read examples/lab.yaml");
    let pre = format!("vstL{t}");
    let text = example
        .replace(
            "a: {name: lab-up",
            &format!("a: {{namespace: {}, name: lab-up", host.name),
        )
        .replace("lab-up", &format!("u{t}"))
        .replace("fab-", &format!("f{t}"))
        .replace("name: lab\n", &format!("name: {pre}\n"))
        .replace("network: lab,", &format!("network: {pre},"))
        .replace("lab-", &format!("{pre}-"));
    assert!(!text.contains("lab-"), "a name left unrenamed:\n{text}");
    let ns = |n: &str| format!("{pre}-{n}");
    let made: Vec<String> = ["a", "b", "c", "l2a", "l2b", "tr", "n1", "fabric", "outside"]
        .iter()
        .map(|n| ns(n))
        .collect();
    let _cleanup = FileNamespaces(made.clone());
    let file = LabFile::new(&d, &text);

    ok(&d, "apply", &[], &file);
    let ip = |ep: &str| {
        d.json(&["endpoint", "inspect", &ns(ep)])["IPAddress"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(pings(&ns("a"), &ip("b")), "lab-a cannot ping lab-b");
    assert!(pings(&ns("c"), &ip("a")), "lab-c cannot ping lab-a");
    for ep in ["l2a", "l2b", "tr"] {
        assert!(
            pings(&ns("outside"), &ip(ep)),
            "lab-outside cannot ping lab-{ep} through its uplink"
        );
    }
    assert!(
        pings(&ns("n1"), "10.77.0.1"),
        "the nat endpoint cannot reach lab-outside"
    );
    assert_eq!(
        ok(&d, "apply", &[], &file),
        format!("lab {pre}: no change\n")
    );

    ok(&d, "delete", &[], &file);
    assert_eq!(d.json(&["endpoint", "ls"]), serde_json::json!([]));
    assert_eq!(d.json(&["network", "ls"]), serde_json::json!([]));
    for n in &made {
        assert!(!ns_exists(n), "{n} is left");
    }
    let links = host.ok(&["ip", "-o", "link", "show"]);
    assert!(!links.contains(&format!("u{t}")), "{links}");
    assert!(!d.dir.join("labs").join(format!("{pre}.json")).exists());
}
