//! vswitch as Docker's network driver (issue 10, item 1), with a real
//! dockerd: `vswitchd --docker-plugin` serves libnetwork's remote driver
//! protocol, and `docker network create -d NAME` / `docker run --network`
//! make vswitch networks and endpoints.
//!
//! Each test runs its own dockerd ([`Dockerd`]: its own data root, exec
//! root, pid file and API socket under a temporary directory, no iptables,
//! no bridge) and its own vswitchd, both in a namespace of the test's own
//! (the fabric's `host`), so the root namespace is never touched. The image
//! is a busybox-static rootfs imported with `docker import`: no registry.
//! Docker finds plugins by socket name in `/run/docker/plugins`, so each
//! test's driver has a name of its own. Containers, networks and both
//! daemons go on drop, also when the test fails, dockerd first (its
//! containers' endpoints are removed through the plugin).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use vswitch_systests::{
    require_root, run, shared, tag, unique_subnet, wait_until, Daemon, Fabric, Netns, FIVE_S,
    OUTSIDE_IF, TEN_S,
};

const DOCKERD: &str = "/usr/sbin/dockerd";
/// Debian's client, the same version as its daemon (another `docker` may
/// be earlier on PATH).
const DOCKER: &str = "/usr/bin/docker";
const BUSYBOX: &str = "/bin/busybox";
const PLUGIN_DIR: &str = "/run/docker/plugins";
/// An HTTP GET of argv[1], its body on stdout.
const FETCH: &str = "import sys, urllib.request\n\
                     sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())";

/// A dockerd of the test's own, in namespace `ns` (no iptables, no bridge,
/// no IPv4 forwarding: nothing of it outside the test's namespace), killed by PID on drop
/// after its containers and networks are removed.
struct Dockerd {
    dir: PathBuf,
    ns: String,
    child: Option<Child>,
    image: String,
}

impl Dockerd {
    fn start(ns: &Netns) -> Dockerd {
        for tool in [DOCKERD, DOCKER, BUSYBOX] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: scripts/lib.sh's install_deps installs docker.io and busybox-static"
            );
        }
        let dir = std::env::temp_dir().join(format!("vswitch-docker-{}", tag()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut d = Dockerd {
            dir,
            ns: ns.name.clone(),
            child: None,
            image: String::new(),
        };
        d.spawn();
        d.image = d.import_busybox();
        d
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// Starts dockerd (nsenter keeps the root mount namespace, where
    /// cgroups and /run/docker/plugins are) and waits until it answers.
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "dockerd already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))
            .unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .arg(DOCKERD)
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("--pidfile")
            .arg(self.dir.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                // Docker turns IPv4 forwarding on otherwise: the host would
                // route between the networks' host ports.
                "--ip-forward=false",
                "--log-level=info",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn dockerd");
        self.child = Some(child);
        let up = wait_until(Duration::from_secs(30), || {
            self.docker(&["version"]).status.success()
        });
        assert!(up, "dockerd did not come up; log:\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// SIGTERM by PID, then SIGKILL if it has not gone within 20 s.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: signals the dockerd this test started, by its PID.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let gone = wait_until(Duration::from_secs(20), || {
            child.try_wait().ok().flatten().is_some()
        });
        if !gone {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new(DOCKER)
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .args(args)
            .output()
            .expect("run docker")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            !out.status.success(),
            "docker {args:?} should have failed but printed {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// A busybox-static rootfs (`/bin/busybox` and a link per applet),
    /// imported as an image.
    fn import_busybox(&self) -> String {
        let root = self.dir.join("rootfs");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("www")).unwrap();
        std::fs::write(root.join("www/index.html"), "served by a container\n").unwrap();
        std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
        let list = run(BUSYBOX, &["--list"]);
        for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
            if applet != "busybox" {
                std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
            }
        }
        let image = format!("vstest-busybox:{}", tag());
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
        self.ok(&["import", &tar.to_string_lossy(), &image]);
        image
    }

    /// `docker run -d --network NET [args] IMAGE sleep 3600` named `name`.
    fn run(&self, name: &str, net: &str, args: &[&str]) -> String {
        // --init: a PID 1 that passes SIGTERM on, so dockerd's stop does
        // not wait out its timeout on `sleep`.
        let mut full = vec!["run", "-d", "--init", "--name", name, "--network", net];
        full.extend_from_slice(args);
        full.extend_from_slice(&[&self.image, "sleep", "3600"]);
        self.ok(&full);
        self.ip(name, net)
    }

    /// The container's address on `net`.
    fn ip(&self, name: &str, net: &str) -> String {
        let format = format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}");
        self.ok(&["inspect", "-f", &format, name])
    }

    fn pings(&self, name: &str, addr: &str) -> bool {
        self.docker(&["exec", name, "ping", "-c1", "-W1", addr])
            .status
            .success()
    }

    fn pings_within(&self, name: &str, addr: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.pings(name, addr))
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            let ids = self.docker(&["ps", "-aq"]);
            for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
                let _ = self.docker(&["rm", "-f", id]);
            }
            let _ = self.docker(&["network", "prune", "-f"]);
        }
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "--- dockerd log ({}) ---\n{}",
                self.dir.display(),
                self.log()
            );
        }
        // Whatever dockerd left mounted (a crash mid-way) must not keep
        // the directory.
        let _ = run("umount", &["-R", "-l", &self.dir.to_string_lossy()]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A test's world: a fabric (its `host` runs both daemons), vswitchd with
/// the plugin under a driver name of its own, and dockerd. Drops dockerd
/// first, then vswitchd, then the namespaces.
struct Site {
    docker: Dockerd,
    d: Daemon,
    driver: String,
    f: Fabric,
}

impl Site {
    fn new() -> Site {
        let f = Fabric::new();
        // The host routes nothing but what a network asks it to (an
        // l2bridge host port): two networks meet only if vswitch says so.
        f.host.ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"]);
        let driver = format!("vst{}", tag());
        let plugin = format!("--docker-plugin={PLUGIN_DIR}/{driver}.sock");
        let d = Daemon::start_in_with(&f.host, &[&plugin]);
        let docker = Dockerd::start(&f.host);
        Site {
            docker,
            d,
            driver,
            f,
        }
    }

    /// `docker network create -d OURS [args] NAME`; returns the vswitch
    /// network it made (by Docker's ID label).
    fn network(&self, name: &str, args: &[&str]) -> Value {
        let mut full = vec!["network", "create", "-d", &self.driver];
        full.extend_from_slice(args);
        full.push(name);
        let id = self.docker.ok(&full);
        self.vswitch_network(&id)
            .unwrap_or_else(|| panic!("no vswitch network labelled with Docker's id {id}"))
    }

    fn vswitch_network(&self, docker_id: &str) -> Option<Value> {
        self.d
            .json(&["network", "ls"])
            .as_array()?
            .iter()
            .find(|n| n["Labels"]["com.docker.network.id"] == docker_id)
            .cloned()
    }

    fn endpoints(&self) -> Vec<Value> {
        self.d
            .json(&["endpoint", "ls"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The host namespace's links the switch makes for endpoints and
    /// networks (veth host ends, punt TAPs, handed-off vNICs, host ports).
    fn switch_links(&self) -> Vec<String> {
        let out = self.f.host.ok(&["ip", "-o", "link", "show"]);
        out.lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
            .filter(|n| {
                ["vse", "vsp", "vsc", "vsh"]
                    .iter()
                    .any(|p| n.starts_with(p))
            })
            .collect()
    }
}

/// A nat network, an internal one and an l2bridge one created through
/// Docker are vswitch networks; containers on one network reach each
/// other, on two networks they do not; `docker run -p` serves a
/// connection from a plain outside host through the nat network.
#[test]
fn docker_networks_connect_their_containers_and_publish_ports() {
    if !require_root("docker_networks_connect_their_containers_and_publish_ports") {
        return;
    }
    let _g = shared();
    let s = Site::new();
    let (_, wire) = unique_subnet();
    let up = s.f.add_uplink(&[&format!("{wire}.1/24")]);
    // l2bridge on an uplink of its own: an untagged uplink is one network's.
    let up2 = s.f.add_uplink(&[]);
    s.f.outside_addr(OUTSIDE_IF, &format!("{wire}.2/24"));
    s.f.host
        .ok(&["ip", "route", "add", "default", "via", &format!("{wire}.2")]);
    let (int_subnet, int_prefix) = unique_subnet();
    let (nat_subnet, _) = unique_subnet();
    let (l2_subnet, l2_prefix) = unique_subnet();
    let internal = s.network("dint", &["--subnet", &int_subnet, "-o", "type=internal"]);
    assert_eq!(internal["Type"], "internal");
    assert_eq!(internal["Subnets"][0]["AddressPrefix"], int_subnet.as_str());
    assert_eq!(
        internal["Subnets"][0]["GatewayAddress"],
        format!("{int_prefix}.1"),
        "Docker's IPAM gateway is the network's: {internal}"
    );
    let nat = s.network(
        "dnat",
        &["--subnet", &nat_subnet, "-o", &format!("interface={up}")],
    );
    assert_eq!(nat["Type"], "nat", "nat is the default type: {nat}");
    let l2 = s.network(
        "dl2",
        &[
            "--subnet",
            &l2_subnet,
            "--gateway",
            &format!("{l2_prefix}.1"),
            "-o",
            "type=l2bridge",
            "-o",
            &format!("com.docker.network.windowsshim.interface={up2}"),
        ],
    );
    assert_eq!(l2["UplinkInterface"], up2.as_str(), "{l2}");

    let a1 = s.docker.run("a1", "dint", &[]);
    let a2 = s.docker.run("a2", "dint", &[]);
    assert!(a1.starts_with(&format!("{int_prefix}.")), "{a1}");
    assert!(
        s.docker.pings_within("a1", &a2, TEN_S),
        "a1 cannot reach a2 ({a2}) on their internal network"
    );
    assert!(s.docker.pings("a2", &a1), "a2 cannot reach a1 ({a1})");
    // The containers' interfaces are vswitch endpoints, with counters.
    let eps = s.endpoints();
    assert_eq!(eps.len(), 2, "{eps:?}");
    for ep in &eps {
        assert_eq!(ep["State"], "Attached", "{ep}");
        assert_eq!(ep["HandOff"], true, "{ep}");
        assert_eq!(ep["VirtualNetworkName"], internal["Name"], "{ep}");
        let stats = s.d.json(&["stats", ep["Name"].as_str().unwrap()]);
        assert!(stats[0]["RxPackets"].as_u64().unwrap_or(0) > 0, "{stats}");
    }

    // Another network is another switch: no way across.
    let b1 = s
        .docker
        .run("b1", "dl2", &["--ip", &format!("{l2_prefix}.10")]);
    assert_eq!(
        b1,
        format!("{l2_prefix}.10"),
        "docker run --ip is the address"
    );
    for _ in 0..2 {
        assert!(
            !s.docker.pings("a1", &b1),
            "a1 reached b1 on another network"
        );
        assert!(
            !s.docker.pings("b1", &a1),
            "b1 reached a1 on another network"
        );
    }

    // docker run -p: the outside machine reaches the container's port 80
    // at the uplink's address.
    s.docker.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "dnat",
        "-p",
        "8080:80",
        &s.docker.image,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    let web = s.docker.ip("web", "dnat");
    let ep = s
        .endpoints()
        .into_iter()
        .find(|e| e["IPAddress"] == web.as_str())
        .expect("web's endpoint");
    let mappings =
        s.d.json(&["policy", "ls", "--endpoint", ep["Name"].as_str().unwrap()]);
    assert!(
        mappings.to_string().contains("PortMapping"),
        "docker run -p made no PortMapping: {mappings}"
    );
    let url = format!("http://{wire}.1:8080/");
    let mut body = String::new();
    let served = wait_until(TEN_S, || {
        let out = s.f.outside.exec(&["python3", "-c", FETCH, &url]);
        body = String::from_utf8_lossy(&out.stdout).into_owned();
        out.status.success()
    });
    assert!(served, "{url} did not answer the outside machine");
    assert_eq!(body, "served by a container\n");
    // docker port shows nothing for remote drivers in this Docker, but
    // the endpoint's operational data carries the mapping.
    let info = s
        .docker
        .ok(&["inspect", "-f", "{{json .NetworkSettings}}", "web"]);
    assert!(info.contains(&web), "{info}");
}

/// `-o com.docker.network.windowsshim.vlanid=N` on an l2bridge network:
/// the container reaches a machine on an access port of VLAN N (which sees
/// only frames tagged N), and none on the untagged wire.
#[test]
fn windows_vlanid_lands_on_the_vlan() {
    if !require_root("windows_vlanid_lands_on_the_vlan") {
        return;
    }
    let _g = shared();
    let s = Site::new();
    let up = s.f.add_uplink(&[]);
    let (subnet, prefix) = unique_subnet();
    let v = s.f.outside_vlan(31);
    s.f.outside_addr(&v, &format!("{prefix}.254/24"));
    let net = s.network(
        "dvlan",
        &[
            "--subnet",
            &subnet,
            "--gateway",
            &format!("{prefix}.1"),
            "-o",
            "type=l2bridge",
            "-o",
            &format!("com.docker.network.windowsshim.interface={up}"),
            "-o",
            "com.docker.network.windowsshim.vlanid=31",
        ],
    );
    assert_eq!(net["VlanId"], 31, "{net}");
    let ip = s.docker.run("v1", "dvlan", &[]);
    assert!(
        s.docker.pings_within("v1", &format!("{prefix}.254"), TEN_S),
        "the container cannot reach the VLAN 31 access port"
    );
    assert!(
        s.f.outside.ping_within(&ip, FIVE_S),
        "the VLAN 31 access port cannot reach the container ({ip})"
    );
    // The same address untagged is another wire: no answer.
    s.f.outside.ok(&["ip", "addr", "flush", "dev", &v]);
    s.f.outside.ok(&[
        "ip",
        "addr",
        "add",
        &format!("{prefix}.254/24"),
        "dev",
        OUTSIDE_IF,
    ]);
    let _ = s
        .docker
        .exec(&["exec", "v1", "ip", "neigh", "flush", "all"]);
    for _ in 0..2 {
        assert!(
            !s.docker.pings("v1", &format!("{prefix}.254")),
            "the container reached an untagged machine from VLAN 31"
        );
    }
}

/// vswitchd killed with -9 and restarted keeps running containers
/// reachable; dockerd restarted finds its network working; container exit,
/// `docker rm` and `docker network rm` leave nothing in vswitch or in the
/// kernel.
#[test]
fn restarts_lose_nothing_and_removal_leaves_nothing() {
    if !require_root("restarts_lose_nothing_and_removal_leaves_nothing") {
        return;
    }
    let _g = shared();
    let mut s = Site::new();
    let (subnet, _) = unique_subnet();
    let net = s.network("drst", &["--subnet", &subnet, "-o", "type=internal"]);
    let c1 = s.docker.run("c1", "drst", &[]);
    let c2 = s.docker.run("c2", "drst", &[]);
    assert!(
        s.docker.pings_within("c1", &c2, TEN_S),
        "c1 cannot reach c2"
    );

    s.d.kill9();
    s.d.spawn();
    let eps = s.endpoints();
    assert_eq!(eps.len(), 2, "{eps:?}");
    assert!(
        eps.iter().all(|e| e["State"] == "Attached"),
        "endpoints after restart: {eps:?}"
    );
    assert!(
        s.docker.pings_within("c2", &c1, FIVE_S),
        "c2 cannot reach c1 after vswitchd was killed and restarted"
    );
    // A new container after the restart, through the restarted plugin.
    let c3 = s.docker.run("c3", "drst", &[]);
    assert!(
        s.docker.pings_within("c1", &c3, TEN_S),
        "c1 cannot reach c3"
    );

    // A container that exits gives its endpoint back.
    s.docker.ok(&[
        "run",
        "--name",
        "brief",
        "--network",
        "drst",
        &s.docker.image,
        "true",
    ]);
    assert!(
        wait_until(TEN_S, || s.endpoints().len() == 3),
        "an exited container's endpoint stayed: {:?}",
        s.endpoints()
    );

    // dockerd stops its containers and starts again: the network is
    // there in both, and works.
    s.docker.stop();
    assert!(
        wait_until(TEN_S, || s.endpoints().is_empty()),
        "dockerd's stopped containers left endpoints: {:?}",
        s.endpoints()
    );
    s.docker.spawn();
    assert!(
        s.vswitch_network(net["Labels"]["com.docker.network.id"].as_str().unwrap())
            .is_some(),
        "the network went with dockerd's restart"
    );
    s.docker.ok(&["start", "c1", "c2"]);
    let (c1, c2) = (s.docker.ip("c1", "drst"), s.docker.ip("c2", "drst"));
    assert!(
        s.docker.pings_within("c1", &c2, TEN_S) && s.docker.pings("c2", &c1),
        "c1 and c2 cannot reach each other after dockerd restarted"
    );

    s.docker.ok(&["rm", "-f", "c1", "c2", "c3", "brief"]);
    assert!(s.endpoints().is_empty(), "{:?}", s.endpoints());
    s.docker.ok(&["network", "rm", "drst"]);
    let nets = s.d.json(&["network", "ls"]);
    assert_eq!(nets, Value::Array(vec![]), "docker network rm left {nets}");
    assert_eq!(s.switch_links(), Vec::<String>::new(), "links left behind");
}

/// Options vswitch cannot honour are refused with an error Docker shows,
/// naming the option, and change nothing.
#[test]
fn bad_options_are_refused_naming_the_option() {
    if !require_root("bad_options_are_refused_naming_the_option") {
        return;
    }
    let _g = shared();
    let s = Site::new();
    let (subnet, _) = unique_subnet();
    let before = s.d.snapshot();
    for (opt, expect) in [
        ("type=bogus", "-o type: unknown driver 'bogus'"),
        (
            "com.docker.network.windowsshim.dnsservers=10.0.0.10",
            "com.docker.network.windowsshim.dnsservers",
        ),
        ("colour=blue", "colour"),
        (
            "com.docker.network.windowsshim.vlanid=5000",
            "com.docker.network.windowsshim.vlanid",
        ),
    ] {
        // On an internal network: a nat one would first ask for an uplink.
        let err = s.docker.fails(&[
            "network",
            "create",
            "-d",
            &s.driver,
            "--subnet",
            &subnet,
            "-o",
            "type=internal",
            "-o",
            opt,
            "bad",
        ]);
        assert!(err.contains(expect), "-o {opt}: {err}");
    }
    assert_eq!(before, s.d.snapshot(), "a refused network changed vswitch");
    assert_eq!(s.docker.ok(&["network", "ls", "-q", "-f", "name=bad"]), "");

    s.network("dok", &["--subnet", &subnet, "-o", "type=internal"]);
    let err = s.docker.fails(&[
        "run",
        "--network",
        "dok",
        "-p",
        "8080:80",
        &s.docker.image,
        "true",
    ]);
    assert!(err.contains("-p") && err.contains("nat"), "{err}");
    let err = s.docker.fails(&[
        "run",
        "--network",
        "dok",
        "--ip",
        "192.0.2.9",
        &s.docker.image,
        "true",
    ]);
    assert!(err.contains("192.0.2.9"), "{err}");
    assert!(s.endpoints().is_empty(), "{:?}", s.endpoints());
}

impl Dockerd {
    fn exec(&self, args: &[&str]) -> Output {
        self.docker(args)
    }
}
