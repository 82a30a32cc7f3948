//! `vswitch-cni` (issue 10, item 2), driven as a runtime drives it: the
//! spec's environment variables (CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS,
//! CNI_IFNAME, CNI_PATH) and the network config on stdin; chained with a
//! reference plugin of Debian's containernetworking-plugins; and under
//! podman with its CNI backend.
//!
//! vswitchd runs in a namespace of the test's own (a fabric's `host`), and
//! every container namespace is the test's own too (podman's are made and
//! removed by podman). Nothing of the root namespace is touched.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};
use vswitch_systests::{
    bin, policies, require_root, run, shared, tag, tcp_ask, tcp_whoami, unique_subnet, wait_until,
    within, Daemon, Fabric, Netns, OUTSIDE_IF, TEN_S,
};

const CNI_DIR: &str = "/usr/lib/cni";
const PODMAN: &str = "/usr/bin/podman";
const BUSYBOX: &str = "/bin/busybox";

/// Runs plugin `plugin` (a path) for `command` with the runtime's
/// environment; returns whether it succeeded and what it printed.
fn invoke(
    plugin: &Path,
    command: &str,
    conf: &Value,
    container: &str,
    netns: &str,
    ifname: &str,
) -> (bool, Value) {
    let cni_path = format!(
        "{}:{CNI_DIR}",
        bin("vswitch-cni").parent().unwrap().display()
    );
    let mut child = Command::new(plugin)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", plugin.display()));
    // A plugin may refuse its environment before it reads the config.
    match child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.unwrap(),
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "{} {command} printed no JSON ({e}): {text}{}",
                plugin.display(),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };
    (out.status.success(), value)
}

fn ours() -> PathBuf {
    bin("vswitch-cni")
}

/// One container's attachment: its namespace, id and interface.
struct Attachment {
    ns: Netns,
    id: String,
}

impl Attachment {
    fn new(prefix: &str) -> Attachment {
        let ns = Netns::new(prefix);
        let id = format!("c{}0123456789abcdef", tag());
        Attachment { ns, id }
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.ns.name)
    }

    fn call(&self, command: &str, conf: &Value) -> (bool, Value) {
        invoke(&ours(), command, conf, &self.id, &self.path(), "eth0")
    }

    fn add(&self, conf: &Value) -> Value {
        let (ok, result) = self.call("ADD", conf);
        assert!(ok, "ADD in {} failed: {result}", self.ns.name);
        result
    }
}

/// The fields a 1.0.0 result must have, with their types and links
/// (an ip's interface indexes interfaces; the interface is in the sandbox).
fn check_result(result: &Value, netns: &str, subnet_prefix: &str) -> String {
    assert_eq!(result["cniVersion"], "1.0.0", "{result}");
    let ifaces = result["interfaces"].as_array().expect("interfaces");
    assert_eq!(ifaces.len(), 1, "{result}");
    assert_eq!(ifaces[0]["name"], "eth0");
    assert_eq!(ifaces[0]["sandbox"], netns);
    let mac = ifaces[0]["mac"].as_str().expect("mac");
    assert_eq!(mac.split(':').count(), 6, "{mac}");
    let ips = result["ips"].as_array().expect("ips");
    assert_eq!(ips.len(), 1, "{result}");
    assert_eq!(ips[0]["interface"], 0, "{result}");
    assert!(
        ips[0].get("version").is_none(),
        "1.0.0 has no ips[].version"
    );
    let address = ips[0]["address"].as_str().expect("address");
    assert!(
        address.starts_with(&format!("{subnet_prefix}.")) && address.ends_with("/24"),
        "{address}"
    );
    let gw = ips[0]["gateway"].as_str().expect("gateway");
    assert_eq!(
        result["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": gw}]),
        "{result}"
    );
    assert!(result["dns"].is_object(), "{result}");
    address.split('/').next().unwrap().to_owned()
}

fn acl_block_icmp_in() -> Value {
    json!({"Name": "EndpointPolicy", "Value": {"Type": "ACL", "Settings": {
        "Id": "no-ping-in", "Action": "Block", "Direction": "In", "Protocols": "1", "Priority": 200}}})
}

/// ADD, CHECK and DEL of several namespaces on a nat network (an ACL, a
/// dynamic PortMapping in the config, runtime port mappings) and on an
/// l2bridge network (OutBoundNAT with exceptions); results per spec, the
/// policies in force, DEL idempotent.
#[test]
fn add_check_del_with_hns_policies() {
    if !require_root("add_check_del_with_hns_policies") {
        return;
    }
    let _g = shared();
    let f = Fabric::new();
    let (_, wire) = unique_subnet();
    let up = f.add_uplink(&[&format!("{wire}.1/24")]);
    // OutBoundNAT translates to the uplink's address: it needs one.
    let (_, wire2) = unique_subnet();
    let up2 = f.add_uplink(&[&format!("{wire2}.1/24")]);
    f.outside_addr(OUTSIDE_IF, &format!("{wire}.2/24"));
    f.host
        .ok(&["ip", "route", "add", "default", "via", &format!("{wire}.2")]);
    let d = Daemon::start_in(&f.host);
    let socket = d.socket.display().to_string();
    let (nat_subnet, nat_prefix) = unique_subnet();
    let nat_name = format!("cninat{}", tag());
    let nat_conf = |maps: Value| {
        json!({
            "cniVersion": "1.0.0", "name": nat_name, "type": "vswitch-cni", "socket": socket,
            "networkType": "nat", "master": up,
            "ipam": {"subnet": nat_subnet},
            "dns": {"Nameservers": ["10.0.0.10"], "Search": ["svc.cluster.local"]},
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": maps},
            "policies": [
                acl_block_icmp_in(),
                {"Name": "EndpointPolicy", "Value": {"Type": "PortMapping", "Settings": {
                    "Protocol": 6, "InternalPort": 80, "ExternalPort": 0}}}
            ]
        })
    };
    let a = Attachment::new("ca");
    let b = Attachment::new("cb");
    let conf_a = nat_conf(json!([{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]));
    let conf_b = nat_conf(json!([]));
    let ra = a.add(&conf_a);
    let rb = b.add(&conf_b);
    let ip_a = check_result(&ra, &a.path(), &nat_prefix);
    let ip_b = check_result(&rb, &b.path(), &nat_prefix);
    assert_eq!(ra["dns"]["nameservers"], json!(["10.0.0.10"]), "{ra}");
    assert_eq!(ra["dns"]["search"], json!(["svc.cluster.local"]), "{ra}");
    let net = d.json(&["network", "inspect", &nat_name]);
    assert_eq!(net["Type"], "nat", "the first ADD made the network: {net}");

    // The policies are in force: ICMP in is blocked, TCP reaches port 80
    // between the endpoints and from outside through the mapping.
    let ep_a = format!("cni-{}-eth0", a.id);
    let kinds: Vec<String> = policies(&d, &["--endpoint", &ep_a])
        .iter()
        .map(|p| p["Type"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| *k == "PortMapping").count(),
        2,
        "{kinds:?}"
    );
    assert!(kinds.contains(&"ACL".to_owned()), "{kinds:?}");
    let _web_a = tcp_whoami(&a.ns, "a", &ip_a, &[80]);
    let _web_b = tcp_whoami(&b.ns, "b", &ip_b, &[80]);
    within("a -> b:80", TEN_S, || tcp_ask(&a.ns, &ip_b, 80));
    let seen = within("outside -> uplink:18080", TEN_S, || {
        tcp_ask(&f.outside, &format!("{wire}.1"), 18080)
    });
    assert_eq!(seen.tag, "a", "18080 is a's runtime mapping");
    for _ in 0..2 {
        assert!(!a.ns.ping(&ip_b), "the ACL lets ICMP into b");
    }

    // CHECK with the result as prevResult passes; with another address
    // it fails with a code.
    let mut check_conf = conf_a.clone();
    check_conf["prevResult"] = ra.clone();
    let (ok, out) = a.call("CHECK", &check_conf);
    assert!(ok, "CHECK failed: {out}");
    check_conf["prevResult"]["ips"][0]["address"] = json!("192.0.2.1/24");
    let (ok, out) = a.call("CHECK", &check_conf);
    assert!(!ok && out["code"].as_u64().is_some(), "{out}");
    assert!(out["msg"].as_str().unwrap().contains("192.0.2.1"), "{out}");

    // An l2bridge network with OutBoundNAT and its exceptions.
    let (l2_subnet, l2_prefix) = unique_subnet();
    let l2_name = format!("cnil2{}", tag());
    let l2_conf = json!({
        "cniVersion": "1.0.0", "name": l2_name, "type": "vswitch-cni", "socket": socket,
        "networkType": "l2bridge", "master": up2, "subnet": l2_subnet,
        "ipam": {"routes": [{"GW": format!("{l2_prefix}.1")}]},
        "policies": [
            {"Name": "EndpointPolicy", "Value": {"Type": "OutBoundNAT", "Settings": {
                "Exceptions": ["10.0.0.0/8", "192.168.0.0/16"]}}},
            acl_block_icmp_in()
        ]
    });
    let c = Attachment::new("cc");
    let rc = c.add(&l2_conf);
    check_result(&rc, &c.path(), &l2_prefix);
    assert_eq!(rc["ips"][0]["gateway"], format!("{l2_prefix}.1"));
    let nat = policies(&d, &["--endpoint", &format!("cni-{}-eth0", c.id)])
        .into_iter()
        .find(|p| p["Type"] == "OutBoundNAT")
        .expect("an OutBoundNAT policy");
    assert!(
        nat.to_string().contains("192.168.0.0/16"),
        "exceptions kept: {nat}"
    );

    // DEL, twice each: the second finds nothing and succeeds.
    for (att, conf) in [(&a, &conf_a), (&b, &conf_b), (&c, &l2_conf)] {
        for round in 0..2 {
            let (ok, out) = att.call("DEL", conf);
            assert!(ok, "DEL #{round} of {} failed: {out}", att.ns.name);
        }
    }
    assert_eq!(d.json(&["endpoint", "ls"]), json!([]));
    // DEL of a namespace gone already succeeds too.
    let (ok, out) = invoke(&ours(), "DEL", &conf_a, "gone", "", "eth0");
    assert!(ok, "{out}");
    let (ok, out) = a.call("CHECK", &conf_a);
    assert!(!ok, "CHECK after DEL passed");
    assert_eq!(out["code"], 3, "unknown container: {out}");
}

/// `tuning` (containernetworking-plugins) after ours, given our result as
/// prevResult: it changes the interface we made and passes our result on.
#[test]
fn chains_with_the_reference_tuning_plugin() {
    if !require_root("chains_with_the_reference_tuning_plugin") {
        return;
    }
    let tuning = Path::new(CNI_DIR).join("tuning");
    assert!(
        tuning.exists(),
        "{} is missing: scripts/lib.sh's install_deps installs containernetworking-plugins",
        tuning.display()
    );
    let _g = shared();
    let host = Netns::new("ch");
    let d = Daemon::start_in(&host);
    let (subnet, prefix) = unique_subnet();
    let name = format!("cnich{}", tag());
    let conf = json!({"cniVersion": "1.0.0", "name": name, "type": "vswitch-cni",
        "socket": d.socket, "networkType": "internal", "subnet": subnet, "backend": "veth"});
    let a = Attachment::new("ck");
    let ours = a.add(&conf);
    check_result(&ours, &a.path(), &prefix);
    let tuning_conf = json!({"cniVersion": "1.0.0", "name": name, "type": "tuning",
        "mtu": 1400, "prevResult": ours});
    let (ok, out) = invoke(&tuning, "ADD", &tuning_conf, &a.id, &a.path(), "eth0");
    assert!(ok, "tuning ADD: {out}");
    assert_eq!(
        out["ips"], ours["ips"],
        "tuning passed our result on: {out}"
    );
    assert_eq!(out["interfaces"][0]["sandbox"], a.path(), "{out}");
    let link = a.ns.ok(&["ip", "-o", "link", "show", "eth0"]);
    assert!(
        link.contains("mtu 1400"),
        "tuning did not reach our vNIC: {link}"
    );
    // The endpoint still works after tuning changed its vNIC.
    assert!(
        a.ns.ping_within(&format!("{prefix}.1"), TEN_S),
        "the gateway does not answer"
    );
    let (ok, out) = invoke(&tuning, "DEL", &tuning_conf, &a.id, &a.path(), "eth0");
    assert!(ok, "tuning DEL: {out}");
    let (ok, out) = a.call("DEL", &conf);
    assert!(ok, "{out}");
}

/// Bad configs and environments: the spec's error object, with a code and
/// a message naming the field.
#[test]
fn bad_configs_give_cni_errors() {
    if !require_root("bad_configs_give_cni_errors") {
        return;
    }
    let _g = shared();
    let host = Netns::new("cb");
    let d = Daemon::start_in(&host);
    let a = Attachment::new("ce");
    let (subnet, _) = unique_subnet();
    let good = json!({"cniVersion": "1.0.0", "name": format!("cnibad{}", tag()),
        "type": "vswitch-cni", "socket": d.socket, "networkType": "internal", "subnet": subnet});
    let with = |key: &str, value: Value| {
        let mut c = good.clone();
        c[key] = value;
        c
    };
    let cases: Vec<(Value, u64, &str)> = vec![
        (with("cniVersion", json!("9.9.9")), 1, "cniVersion"),
        (with("colour", json!("blue")), 7, "colour"),
        (with("subnet", json!("10.0.0.0/33")), 100, "subnet"),
        (with("networkType", json!("bogus")), 100, "bogus"),
        (
            with("policies", json!([{"Name": "NetworkPolicy", "Value": {}}])),
            7,
            "policies[0].Name",
        ),
        (
            with(
                "policies",
                json!([{"Name": "EndpointPolicy", "Value": {"Type": "ACL", "Settings": {"Action": "Maybe"}}}]),
            ),
            100,
            "Action",
        ),
        (with("ipam", json!({"type": "host-local"})), 2, "ipam.type"),
        (
            json!({"cniVersion": "1.0.0", "type": "vswitch-cni"}),
            7,
            "name",
        ),
    ];
    for (conf, code, field) in cases {
        let (ok, out) = a.call("ADD", &conf);
        assert!(!ok, "ADD with {conf} succeeded: {out}");
        assert_eq!(out["code"], code, "{conf}: {out}");
        assert!(out["cniVersion"].is_string(), "{out}");
        let msg = out["msg"].as_str().unwrap_or_default();
        assert!(msg.contains(field), "{conf}: {msg}");
    }
    // Not JSON at all: a decode error.
    let mut child = Command::new(ours())
        .env("CNI_COMMAND", "ADD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"{nope").unwrap();
    let out = child.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!out.status.success());
    assert_eq!(v["code"], 6, "{v}");
    // The environment the spec requires.
    let (ok, out) = invoke(&ours(), "ADD", &good, &a.id, "", "eth0");
    assert!(!ok);
    assert_eq!(out["code"], 4, "{out}");
    assert!(out["msg"].as_str().unwrap().contains("CNI_NETNS"), "{out}");
    let (ok, out) = invoke(&ours(), "VERSION", &Value::Null, "", "", "");
    assert!(ok, "{out}");
    assert!(out["supportedVersions"]
        .as_array()
        .unwrap()
        .contains(&json!("1.0.0")));
    // Nothing was made by the refused ADDs but, at most, the network.
    assert_eq!(d.json(&["endpoint", "ls"]), json!([]));
}

/// Two podman containers (podman's CNI backend, as root, everything of
/// its own under a temporary directory) on a vswitch network through the
/// plugin ping each other.
#[test]
fn podman_containers_ping_through_the_plugin() {
    if !require_root("podman_containers_ping_through_the_plugin") {
        return;
    }
    for tool in [PODMAN, BUSYBOX] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: scripts/lib.sh's install_deps installs podman and busybox-static"
        );
    }
    let _g = shared();
    let host = Netns::new("pd");
    let d = Daemon::start_in(&host);
    let pod = Podman::new();
    let (subnet, prefix) = unique_subnet();
    let net = format!("vspod{}", tag());
    let conflist = json!({"cniVersion": "1.0.0", "name": net, "plugins": [
        {"type": "vswitch-cni", "socket": d.socket, "networkType": "private", "subnet": subnet}]});
    std::fs::write(
        pod.dir.join("cni").join(format!("{net}.conflist")),
        conflist.to_string(),
    )
    .unwrap();
    let image = pod.import_busybox();
    for name in ["p1", "p2"] {
        pod.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            &net,
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            &image,
            "sleep",
            "3600",
        ]);
    }
    let ip = |name: &str| {
        let format = format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}");
        pod.ok(&["inspect", "-f", &format, name])
    };
    let (ip1, ip2) = (ip("p1"), ip("p2"));
    assert!(ip1.starts_with(&format!("{prefix}.")), "{ip1}");
    let eps = d.json(&["endpoint", "ls"]);
    assert_eq!(eps.as_array().map(Vec::len), Some(2), "{eps}");
    let pings = |from: &str, to: &str| {
        wait_until(TEN_S, || {
            pod.run(&["exec", from, "ping", "-c1", "-W1", to])
                .status
                .success()
        })
    };
    assert!(pings("p1", &ip2), "p1 cannot reach p2 ({ip2})");
    assert!(pings("p2", &ip1), "p2 cannot reach p1 ({ip1})");
    pod.ok(&["rm", "-f", "-t", "0", "p1", "p2"]);
    assert!(
        wait_until(TEN_S, || d.json(&["endpoint", "ls"]) == json!([])),
        "podman rm left endpoints: {}",
        d.json(&["endpoint", "ls"])
    );
}

/// podman with its own root, runroot, tmpdir and CNI config directory, and
/// a containers.conf pointing it at our plugin; containers removed and the
/// directory deleted on drop.
struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn new() -> Podman {
        let dir = std::env::temp_dir().join(format!("vswitch-podman-{}", tag()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("cni")).unwrap();
        let plugins = bin("vswitch-cni").parent().unwrap().display().to_string();
        let conf = format!(
            "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{plugins}\", \"{CNI_DIR}\"]\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n"
        );
        std::fs::write(dir.join("containers.conf"), conf).unwrap();
        Podman { dir }
    }

    fn run(&self, args: &[&str]) -> Output {
        let d = |p: &str| self.dir.join(p).display().to_string();
        Command::new(PODMAN)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .args([
                "--network-backend",
                "cni",
                "--cgroup-manager",
                "cgroupfs",
                "--storage-driver",
                "vfs",
                "--events-backend",
                "file",
            ])
            .args(["--root", &d("root"), "--runroot", &d("runroot")])
            .args(["--tmpdir", &d("tmp"), "--cni-config-dir", &d("cni")])
            .args(args)
            .output()
            .expect("run podman")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn import_busybox(&self) -> String {
        let root = self.dir.join("rootfs");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
        for applet in ["sh", "ping", "sleep", "ip"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        let tar = self.dir.join("rootfs.tar");
        let out = run(
            "tar",
            &[
                "-C",
                &root.to_string_lossy(),
                "-cf",
                &tar.to_string_lossy(),
                ".",
            ],
        );
        assert!(
            out.status.success(),
            "tar: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let image = format!("localhost/vstest-busybox:{}", tag());
        self.ok(&["import", &tar.to_string_lossy(), &image]);
        image
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-a", "-f", "-t", "0"]);
        let _ = run("umount", &["-R", "-l", &self.dir.to_string_lossy()]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
