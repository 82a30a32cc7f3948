//! Harness for the integration tests: a private `vswitchd` per test, network
//! namespaces with unique names, and wait-until helpers; and what several
//! test files use to build their topologies, make traffic (python3 programs
//! whose servers say whom they saw) and read policies and counters back.
//! Everything a test creates is removed on drop, also when the test fails.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A number unique within this test process.
pub fn unique() -> u32 {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// A short tag unique across concurrently running test processes.
pub fn tag() -> String {
    format!("{}{}", std::process::id() % 100000, unique())
}

/// True when running as root; otherwise prints why the test is skipped.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        true
    } else {
        eprintln!("skipping {test}: needs root (namespaces, TAP devices)");
        false
    }
}

/// A /24 no other test of this process uses: 10.<pid-derived>.<n>.0/24.
pub fn unique_subnet() -> (String, String) {
    let a = 100 + std::process::id() % 100;
    let b = unique() % 250 + 1;
    (format!("10.{a}.{b}.0/24"), format!("10.{a}.{b}"))
}

/// The directory the workspace's binaries were built into (same profile as
/// the test binary: target/<profile>/deps/<test> -> target/<profile>).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Polls `cond` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"))
}

/// A network namespace made for one test, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        let name = format!("vst{prefix}{}", tag());
        let out = run("ip", &["netns", "add", &name]);
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs a command inside the namespace and returns its stdout; panics
    /// with its stderr if it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "{:?} in {} failed: {}{}",
            args,
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One ping with a short deadline; true if answered.
    pub fn ping(&self, addr: &str) -> bool {
        let v6 = addr.contains(':');
        let mut args = vec!["ping", "-c1", "-W1"];
        if v6 {
            args.insert(1, "-6");
        }
        args.push(addr);
        self.exec(&args).status.success()
    }

    /// Pings until answered or `timeout` passes.
    pub fn ping_within(&self, addr: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.ping(addr))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// A `vswitchd` of the test's own, with its own state dir and socket.
pub struct Daemon {
    pub dir: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
    /// The namespace the daemon runs in (`ip netns exec`); `None` for the
    /// test's own namespace.
    netns: Option<String>,
    /// Extra command-line arguments, passed again on every (re)spawn.
    extra_args: Vec<String>,
    /// Substrings of the warnings and errors this test provokes on purpose;
    /// any other WARN or ERROR line in the daemon's log fails the test when
    /// the daemon is dropped (as in Open vSwitch's system tests).
    expected_log: std::sync::Mutex<Vec<String>>,
}

impl Daemon {
    pub fn start() -> Daemon {
        Daemon::launch(None, &[])
    }

    /// [`Daemon::start`] with extra daemon arguments (e.g. limits), kept
    /// for restarts.
    pub fn start_with(args: &[&str]) -> Daemon {
        Daemon::launch(None, args)
    }

    fn launch(netns: Option<String>, extra_args: &[&str]) -> Daemon {
        let dir = std::env::temp_dir().join(format!("vswitch-test-{}", tag()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("vswitchd.sock");
        let mut d = Daemon {
            dir,
            socket,
            child: None,
            netns,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            expected_log: std::sync::Mutex::new(Vec::new()),
        };
        d.spawn();
        d
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("vswitchd.log")
    }

    /// Starts the daemon process and waits until it answers.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        // nsenter execs the daemon (no fork), so the child's PID is
        // vswitchd's and signals reach it directly. Unlike `ip netns exec`
        // it keeps the root mount namespace, so the daemon pins its XDP
        // programs in the real /sys/fs/bpf, as in production, and a pinned
        // program outlives the daemon (what --detach-on-exit is about).
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(bin("vswitchd"));
                c
            }
            None => Command::new(bin("vswitchd")),
        };
        let child = cmd
            .args(&self.extra_args)
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--socket")
            .arg(&self.socket)
            .arg("--log-level")
            .arg("debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn vswitchd");
        self.child = Some(child);
        let up = wait_until(Duration::from_secs(10), || {
            self.ctl(&["network", "ls", "--json"]).status.success()
        });
        assert!(up, "vswitchd did not come up; log:\n{}", self.log());
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        // SAFETY: signals the daemon this test started, by its PID.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Declares that a WARN or ERROR line containing `pattern` is expected
    /// in this daemon's log (the test provokes it on purpose).
    pub fn expect_log(&self, pattern: &str) {
        self.expected_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(pattern.to_owned());
    }

    /// WARN and ERROR lines of the log that no [`Daemon::expect_log`]
    /// pattern covers.
    pub fn unexpected_log_lines(&self) -> Vec<String> {
        let expected = self
            .expected_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        unexpected_warnings(&self.log(), &expected)
    }

    /// Runs `vswitchctl --socket <ours> args...`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(bin("vswitchctl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run vswitchctl")
    }

    /// Runs `vswitchctl --socket <ours> args...` with `input` on its stdin
    /// (for `--file -`).
    pub fn ctl_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = Command::new(bin("vswitchctl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run vswitchctl");
        // Written from a thread: a CLI that answers before reading all of
        // its input must not deadlock the test on a full pipe.
        let mut stdin = child.stdin.take().expect("piped stdin");
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().expect("wait for vswitchctl");
        let _ = writer.join();
        out
    }

    /// Runs vswitchctl and returns stdout; panics with stderr on failure.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "vswitchctl {:?} failed: {}",
            args,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `endpoint create --network NET --netns NS [args...] NAME`, which must
    /// succeed; returns the endpoint as JSON.
    pub fn endpoint(&self, net: &str, ns: &Netns, args: &[&str], name: &str) -> Value {
        let mut full = vec!["endpoint", "create", "--network", net, "--netns", &ns.name];
        full.extend_from_slice(args);
        full.extend_from_slice(&[name, "--json"]);
        serde_json::from_str(&self.ok(&full)).expect("valid JSON from vswitchctl")
    }

    /// Runs vswitchctl, expecting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            !out.status.success(),
            "vswitchctl {:?} should have failed but printed: {}",
            args,
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Runs a request that must be refused: checks that the one-line error
    /// mentions `expect` (the field at fault) and that nothing changed.
    pub fn refused(&self, args: &[&str], expect: &str) {
        let before = self.snapshot();
        let err = self.fails(args);
        assert!(
            err.contains(expect),
            "vswitchctl {args:?}: expected the error to mention {expect:?}, got: {err}"
        );
        assert_eq!(
            err.trim().lines().count(),
            1,
            "error is not one line: {err}"
        );
        assert_eq!(
            before,
            self.snapshot(),
            "vswitchctl {args:?} changed state although refused"
        );
    }

    /// Runs a read command with `--json` and parses the output.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut full = args.to_vec();
        full.push("--json");
        serde_json::from_str(&self.ok(&full)).expect("valid JSON from vswitchctl")
    }

    /// Sends one raw line to the socket and returns the raw answer line.
    pub fn raw(&self, line: &[u8]) -> Value {
        let mut s = UnixStream::connect(&self.socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(line).unwrap();
        let mut answer = String::new();
        BufReader::new(s).read_line(&mut answer).unwrap();
        serde_json::from_str(&answer).expect("daemon answers JSON")
    }

    /// Everything the daemon reports, to compare before/after a request:
    /// networks, endpoints, ports (so a leftover host or uplink port
    /// shows) and the state file.
    pub fn snapshot(&self) -> (Value, Value, Value, String) {
        (
            self.json(&["network", "ls"]),
            self.json(&["endpoint", "ls"]),
            self.json(&["port", "ls"]),
            std::fs::read_to_string(self.state_dir().join("state.json")).unwrap_or_default(),
        )
    }

    /// Removes every endpoint and network (so host TAPs in the root
    /// namespace go away), then stops the daemon.
    fn teardown(&mut self) {
        if self.child.is_none() {
            self.spawn();
        }
        if let Some(eps) = self.json(&["endpoint", "ls"]).as_array() {
            for ep in eps {
                let _ = self.ctl(&["endpoint", "rm", ep["Name"].as_str().unwrap_or("")]);
            }
        }
        if let Some(nets) = self.json(&["network", "ls"]).as_array() {
            for net in nets {
                let _ = self.ctl(&["network", "rm", net["Name"].as_str().unwrap_or("")]);
            }
        }
        self.terminate();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // The fast path's pins outlive the daemon on purpose (a restart
        // adopts them); the test's instance is gone for good, so they go.
        let mut pins = None;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if self.child.is_none() {
                self.spawn();
            }
            pins = self.fastpath_pin_dir();
            self.teardown()
        }));
        if result.is_err() {
            self.kill9();
        }
        remove_fastpath_pins(pins);
        let log = self.log();
        let unexpected = self.unexpected_log_lines();
        let failing = std::thread::panicking() || !unexpected.is_empty();
        if failing {
            eprintln!("--- vswitchd log ({}) ---\n{log}", self.dir.display());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if !std::thread::panicking() && !unexpected.is_empty() {
            panic!(
                "vswitchd logged warnings the test did not expect:\n{}",
                unexpected.join("\n")
            );
        }
    }
}

/// The WARN and ERROR lines of a `tracing` log that contain none of
/// `expected`.
pub fn unexpected_warnings(log: &str, expected: &[String]) -> Vec<String> {
    log.lines()
        .filter(|line| {
            line.split_whitespace()
                .nth(1)
                .is_some_and(|level| level == "WARN" || level == "ERROR")
        })
        .filter(|line| !expected.iter().any(|p| line.contains(p.as_str())))
        .map(str::to_owned)
        .collect()
}

/// A child process killed (by its PID) when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `args` in `ns` in the background, output discarded.
pub fn spawn_in(ns: &Netns, args: &[&str]) -> KillOnDrop {
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
pub fn listening(ns: &Netns, proto: char, port: u16) -> bool {
    !ns.ok(&["ss", &format!("-Hl{proto}n"), &format!("sport = :{port}")])
        .trim()
        .is_empty()
}

/// Runs an iperf3 TCP test from `client` to `server_addr` (served in
/// `server`) for `secs` seconds; returns the received bit rate.
pub fn iperf3(client: &Netns, server: &Netns, server_addr: &str, secs: u32) -> f64 {
    iperf3_with(client, server, server_addr, secs, &[])
}

/// [`iperf3`] with extra client arguments, e.g. `-R` to have the server
/// send.
pub fn iperf3_with(
    client: &Netns,
    server: &Netns,
    server_addr: &str,
    secs: u32,
    extra: &[&str],
) -> f64 {
    received_rate(&iperf3_report(client, server, server_addr, secs, extra))
}

/// The received bit rate of an iperf3 JSON report.
pub fn received_rate(report: &Value) -> f64 {
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("iperf3 report has a received rate")
}

/// Starts a one-shot iperf3 server on `server_addr` in `server` and, in
/// `client`, an iperf3 client sending to it for `secs` seconds, both in the
/// background, and waits until `delivered` (a byte counter of what the
/// switch delivers to the server) grows by more than 1 MB in 200 ms.
pub fn iperf3_flowing(
    client: &Netns,
    server: &Netns,
    server_addr: &str,
    secs: u32,
    delivered: impl Fn() -> u64,
) -> Iperf3Flow {
    let server_proc = spawn_in(server, &["iperf3", "-s", "-1", "-B", server_addr]);
    assert!(
        wait_until(FIVE_S, || listening(server, 't', 5201)),
        "iperf3 server did not start in {}",
        server.name
    );
    let secs = secs.to_string();
    let client_proc = spawn_in(
        client,
        &["iperf3", "-c", server_addr, "-t", &secs, "-i", "0"],
    );
    let flowing = wait_until(TEN_S, || {
        let before = delivered();
        std::thread::sleep(Duration::from_millis(200));
        delivered() - before > 1_000_000
    });
    assert!(
        flowing,
        "iperf3 {} -> {server_addr} did not get going",
        client.name
    );
    Iperf3Flow {
        _client: client_proc,
        _server: server_proc,
    }
}

/// The iperf3 client and server of [`iperf3_flowing`]; dropping it kills
/// the client, then the server.
pub struct Iperf3Flow {
    _client: KillOnDrop,
    _server: KillOnDrop,
}

/// Samples `delivered` (a byte counter of what reaches a port) every 50 ms
/// for 2.5 s, from a moment just after traffic to it should have stopped;
/// returns the first moment from which at most a few ARP frames (4096
/// bytes) more were counted, and the samples.
pub fn when_quiet(delivered: impl Fn() -> u64) -> (Duration, Vec<(Duration, u64)>) {
    let t0 = Instant::now();
    let mut samples: Vec<(Duration, u64)> = Vec::new();
    while t0.elapsed() < Duration::from_millis(2500) {
        samples.push((t0.elapsed(), delivered()));
        std::thread::sleep(Duration::from_millis(50));
    }
    let last = samples.last().expect("samples").1;
    const QUIET_BYTES: u64 = 4096;
    let quiet = samples
        .iter()
        .find(|(_, bytes)| last - bytes <= QUIET_BYTES)
        .expect("the last sample qualifies")
        .0;
    (quiet, samples)
}

// ---------------------------------------------------------------------------
// Uplinks: a daemon in a namespace of the test's own, a physical network made
// of namespaces, and packet captures on it.

impl Daemon {
    /// Runs vswitchd inside `ns` (`ip netns exec`): its uplinks and host
    /// ports live there, and the root namespace is never touched.
    pub fn start_in(ns: &Netns) -> Daemon {
        Daemon::launch(Some(ns.name.clone()), &[])
    }

    /// [`Daemon::start_in`] with extra daemon arguments, kept for restarts.
    pub fn start_in_with(ns: &Netns, args: &[&str]) -> Daemon {
        Daemon::launch(Some(ns.name.clone()), args)
    }

    /// `State` of `network inspect NAME`: `"Up"` or `{"Degraded": {...}}`.
    pub fn network_state(&self, net: &str) -> Value {
        self.json(&["network", "inspect", net])["State"].clone()
    }

    /// The port called `name` in `port ls`, if there is one.
    pub fn port(&self, name: &str) -> Option<Value> {
        self.json(&["port", "ls"])
            .as_array()?
            .iter()
            .find(|p| p["Name"] == name)
            .cloned()
    }
}

/// The Linux bridge standing for the physical switch, in [`Fabric::fabric`].
pub const FABRIC_BRIDGE: &str = "br0";
/// The interface of [`Fabric::outside`] into the fabric.
pub const OUTSIDE_IF: &str = "eth0";

/// A physical network for uplink tests, entirely in namespaces of the
/// test's own:
///
/// ```text
///   host (vswitchd runs here)        fabric                outside
///     vuN (uplink) ──veth── vpN ─┐
///     vuM (uplink) ──veth── vpM ─┼─ br0 ─ voK ──veth── eth0 (plain IP stack)
/// ```
///
/// Interface names are unique per process and at most 15 bytes. Deleting
/// the namespaces (on drop) deletes every veth pair with them.
pub struct Fabric {
    /// The vswitch host: holds the uplinks and their own addresses.
    pub host: Netns,
    /// A machine on the physical network with no vswitch.
    pub outside: Netns,
    /// The physical switch: a Linux bridge, [`FABRIC_BRIDGE`].
    pub fabric: Netns,
}

impl Fabric {
    /// The three namespaces, the bridge, and `outside`'s [`OUTSIDE_IF`] on
    /// it (up, no address).
    pub fn new() -> Fabric {
        let f = Fabric {
            host: Netns::new("h"),
            outside: Netns::new("o"),
            fabric: Netns::new("f"),
        };
        // No multicast snooping: IPv6 neighbour solicitations must be
        // flooded like on a dumb switch, whatever MLD reports it saw.
        f.fabric.ok(&[
            "ip",
            "link",
            "add",
            FABRIC_BRIDGE,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        f.fabric.ok(&["ip", "link", "set", FABRIC_BRIDGE, "up"]);
        let peer = format!("vo{}", tag());
        f.connect(&f.outside, OUTSIDE_IF, &peer);
        f.outside.ok(&["ip", "link", "set", OUTSIDE_IF, "up"]);
        f
    }

    /// Puts a fabric-side veth end on the bridge, with TX checksum and VLAN
    /// offloads off: the frames it sends are what the uplink receives, and
    /// AF_XDP in copy mode gets them as the kernel had them, so a partial
    /// checksum or an out-of-band VLAN tag would reach the switch unfinished.
    /// A veth `name` in `ns` whose peer `peer` is on the fabric bridge,
    /// with the peer's TX checksum and VLAN offloads off (AF_XDP in copy
    /// mode would see partial checksums and out-of-band tags).
    fn connect(&self, ns: &Netns, name: &str, peer: &str) {
        ns.ok(&[
            "ip",
            "link",
            "add",
            name,
            "type",
            "veth",
            "peer",
            "name",
            peer,
            "netns",
            &self.fabric.name,
        ]);
        let fabric = &self.fabric;
        fabric.ok(&["ip", "link", "set", peer, "master", FABRIC_BRIDGE]);
        fabric.ok(&["ip", "link", "set", peer, "up"]);
    }

    /// A new uplink for the host: a veth in `host` (returned name) whose
    /// peer is on the fabric bridge; `addrs` (CIDRs) are the host's own
    /// addresses on it.
    pub fn add_uplink(&self, addrs: &[&str]) -> String {
        let t = tag();
        let (up, peer) = (format!("vu{t}"), format!("vp{t}"));
        self.connect(&self.host, &up, &peer);
        for a in addrs {
            add_addr(&self.host, &up, a);
        }
        self.host.ok(&["ip", "link", "set", &up, "up"]);
        up
    }

    /// Puts another machine on the fabric: a veth `name` in `ns` (up, no
    /// address) whose peer is on the bridge, e.g. a router beside
    /// `outside`.
    pub fn attach(&self, ns: &Netns, name: &str) {
        let peer = format!("va{}", tag());
        self.connect(ns, name, &peer);
        ns.ok(&["ip", "link", "set", name, "up"]);
    }

    /// Adds an address (CIDR) to `outside`'s interface `dev`.
    pub fn outside_addr(&self, dev: &str, cidr: &str) {
        add_addr(&self.outside, dev, cidr);
    }

    /// An access port of VLAN `vid` for `outside`: a veth `vlanVID` into the
    /// fabric whose frames go out tagged `vid`, and which receives only
    /// frames tagged `vid` (untagged). This kernel has neither 8021q nor
    /// bridge VLAN filtering, so a TC program (`tests/bpf/vlan_access.bpf.c`)
    /// does the tagging. Returns the interface name, up, no address.
    pub fn outside_vlan(&self, vid: u16) -> String {
        let name = format!("vlan{vid}");
        let peer = format!("vo{}", tag());
        self.connect(&self.outside, &name, &peer);
        let obj = vlan_access_program(vid);
        let obj_path = obj.to_str().expect("temp path is UTF-8");
        let attached = std::panic::catch_unwind(|| {
            self.outside
                .ok(&["tc", "qdisc", "add", "dev", &name, "clsact"]);
            for (hook, sec) in [("egress", "tc/egress"), ("ingress", "tc/ingress")] {
                self.outside.ok(&[
                    "tc",
                    "filter",
                    "add",
                    "dev",
                    &name,
                    hook,
                    "bpf",
                    "direct-action",
                    "obj",
                    obj_path,
                    "sec",
                    sec,
                ]);
            }
        });
        let _ = std::fs::remove_file(&obj);
        if let Err(e) = attached {
            std::panic::resume_unwind(e);
        }
        self.outside.ok(&["ip", "link", "set", &name, "up"]);
        name
    }
}

/// Compiles `tests/bpf/vlan_access.bpf.c` for `vid` into a temporary
/// object file (the caller removes it once loaded).
fn vlan_access_program(vid: u16) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("bpf/vlan_access.bpf.c");
    let obj = std::env::temp_dir().join(format!("vswitch-vlan{vid}-{}.o", tag()));
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let mut cmd = Command::new(&clang);
    cmd.args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-DVID={vid}"));
    // clang -target bpf does not look in Debian's multiarch directory,
    // where <asm/types.h> lives.
    let multiarch = PathBuf::from(format!("/usr/include/{}-linux-gnu", std::env::consts::ARCH));
    if multiarch.is_dir() {
        cmd.arg("-idirafter").arg(multiarch);
    }
    let out = cmd
        .arg("-c")
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {clang} to build {}: {e}", src.display()));
    assert!(
        out.status.success(),
        "{clang} failed on {}: {}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    obj
}

impl Default for Fabric {
    fn default() -> Self {
        Fabric::new()
    }
}

/// Adds `cidr` to `dev` in `ns`; IPv6 without duplicate address detection,
/// so it is usable at once.
pub fn add_addr(ns: &Netns, dev: &str, cidr: &str) {
    let mut args = vec!["ip", "addr", "add", cidr, "dev", dev];
    if cidr.contains(':') {
        args.push("nodad");
    }
    ns.ok(&args);
}

/// The MAC address of `dev` in `ns`, lowercase.
pub fn link_mac(ns: &Netns, dev: &str) -> String {
    let link: Value =
        serde_json::from_str(&ns.ok(&["ip", "-j", "link", "show", "dev", dev])).unwrap();
    link[0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("{dev} in {} has no MAC: {link}", ns.name))
        .to_lowercase()
}

/// Whether `dev` in `ns` has an XDP program attached.
pub fn has_xdp(ns: &Netns, dev: &str) -> bool {
    let link: Value =
        serde_json::from_str(&ns.ok(&["ip", "-d", "-j", "link", "show", "dev", dev])).unwrap();
    link[0].get("xdp").is_some()
}

/// Whether a vswitch uplink steering program runs on `dev`: XDP (afxdp
/// mode), or the TC build on its tcx ingress (tc mode), seen through the
/// link vswitchd pins for it (this bpftool decodes no tcx links).
pub fn has_steering(ns: &Netns, dev: &str) -> bool {
    has_xdp(ns, dev)
        || tcx_link_ifindex(&format!("/sys/fs/bpf/vswitch/{dev}/tc_link")).is_some_and(|i| i != 0)
}

/// The device a pinned tcx link is attached to (0 once the device is
/// gone), through BPF_OBJ_GET and BPF_OBJ_GET_INFO_BY_FD; None when there
/// is no such link.
pub fn tcx_link_ifindex(pin: &str) -> Option<u32> {
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const BPF_LINK_TYPE_TCX: u32 = 11;
    let path = std::ffi::CString::new(pin).ok()?;
    // union bpf_attr for BPF_OBJ_GET: pathname, bpf_fd, file_flags.
    let mut attr = [0u64; 16];
    attr[0] = path.as_ptr() as u64;
    // SAFETY: attr is a zeroed bpf_attr of the size passed, naming a live
    // NUL-terminated path.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd was just returned to us and is closed only by OwnedFd.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    // struct bpf_link_info: type, id, prog_id, then (8-aligned) for tcx
    // ifindex and attach_type.
    let mut info = [0u32; 16];
    let mut attr = [0u64; 16];
    attr[0] = u64::from(std::os::fd::AsRawFd::as_raw_fd(&fd) as u32)
        | ((std::mem::size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    // SAFETY: attr is a zeroed bpf_attr (bpf_fd, info_len, info) whose info
    // points at a writable buffer of info_len bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    (rc == 0 && info[0] == BPF_LINK_TYPE_TCX).then_some(info[4])
}

/// `ns`'s neighbour table on `dev`: (address, MAC if resolved, lowercase).
pub fn neighbours(ns: &Netns, dev: &str) -> Vec<(String, Option<String>)> {
    let table: Value =
        serde_json::from_str(&ns.ok(&["ip", "-j", "neigh", "show", "dev", dev])).unwrap();
    table
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    (
                        e["dst"].as_str().unwrap_or_default().to_owned(),
                        e["lladdr"].as_str().map(str::to_lowercase),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `02:15:5d:00:00:01` as bytes.
pub fn mac_bytes(text: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.split(':').collect();
    assert_eq!(parts.len(), 6, "not a MAC: {text}");
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).unwrap_or_else(|_| panic!("not a MAC: {text}"));
    }
    mac
}

/// Whether `needle` occurs anywhere in `hay`.
pub fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// The IP addresses a frame carries: source and destination of an IPv4 or
/// IPv6 header, sender and target of an ARP packet; after any 802.1Q tags.
pub fn frame_ips(frame: &[u8]) -> Vec<std::net::IpAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let mut off = 12;
    let ethertype = |off: usize| {
        frame
            .get(off..off + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    while ethertype(off) == Some(0x8100) || ethertype(off) == Some(0x88a8) {
        off += 4;
    }
    let Some(kind) = ethertype(off) else {
        return Vec::new();
    };
    let l3 = &frame[(off + 2).min(frame.len())..];
    let v4 = |at: usize| {
        l3.get(at..at + 4)
            .map(|b| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])))
    };
    let v6 = |at: usize| {
        l3.get(at..at + 16).map(|b| {
            let mut a = [0u8; 16];
            a.copy_from_slice(b);
            IpAddr::V6(Ipv6Addr::from(a))
        })
    };
    match kind {
        0x0800 => [v4(12), v4(16)].into_iter().flatten().collect(),
        0x0806 => [v4(14), v4(24)].into_iter().flatten().collect(),
        0x86dd => [v6(8), v6(24)].into_iter().flatten().collect(),
        _ => Vec::new(),
    }
}

/// The frames of a pcap file (Ethernet), in order; a record cut short at
/// the end (the capture is still running) is left out.
pub fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).unwrap_or_default();
    if data.len() < 24 {
        return Vec::new();
    }
    let magic = u32::from_le_bytes(data[..4].try_into().unwrap());
    let little = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        _ => panic!("{} is not a pcap file", path.display()),
    };
    let u32_at = |at: usize| {
        let b: [u8; 4] = data[at..at + 4].try_into().unwrap();
        if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let mut frames = Vec::new();
    let mut off = 24;
    while off + 16 <= data.len() {
        let len = u32_at(off + 8) as usize;
        let start = off + 16;
        if start + len > data.len() {
            break;
        }
        frames.push(data[start..start + len].to_vec());
        off = start + len;
    }
    frames
}

/// A tcpdump capture on one interface of a namespace, written to a pcap
/// file as each packet arrives; stopped and removed on drop.
pub struct Capture {
    child: Option<KillOnDrop>,
    pub pcap: PathBuf,
    log: PathBuf,
}

impl Capture {
    /// Starts capturing on `ifname` in `ns` and returns once tcpdump
    /// listens.
    pub fn start(ns: &Netns, ifname: &str) -> Capture {
        let base = std::env::temp_dir().join(format!("vswitch-cap-{}", tag()));
        let pcap = base.with_extension("pcap");
        let log = base.with_extension("log");
        let log_file = std::fs::File::create(&log).expect("create capture log");
        // -U --immediate-mode: every packet reaches the file at once, so
        // `frames` sees it; -s: headers are what the tests look at, and a
        // short snapshot keeps an iperf3 run's capture small; -Z root: the
        // file is written as root (tcpdump drops to its own user otherwise).
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "tcpdump", "-i", ifname])
            .args(["-n", "-U", "--immediate-mode", "-s", "200", "-Z", "root"])
            .arg("-w")
            .arg(&pcap)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start tcpdump");
        let cap = Capture {
            child: Some(KillOnDrop(child)),
            pcap,
            log,
        };
        let listening = wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(&cap.log)
                .unwrap_or_default()
                .contains("listening on")
        });
        assert!(
            listening,
            "tcpdump did not start on {ifname} in {}: {}",
            ns.name,
            std::fs::read_to_string(&cap.log).unwrap_or_default()
        );
        cap
    }

    /// The frames captured so far.
    pub fn frames(&self) -> Vec<Vec<u8>> {
        read_pcap(&self.pcap)
    }

    /// Makes sure everything sent before this call is in the capture:
    /// `from` pings `to` with a payload pattern of its own, and this waits
    /// until the capture holds it. The ping need not be answered; it only
    /// has to cross the captured interface.
    pub fn sync(&self, from: &Netns, to: &str) {
        let marker = format!("vsw{:08}", unique());
        let hex: String = marker.bytes().map(|b| format!("{b:02x}")).collect();
        let seen = wait_until(Duration::from_secs(10), || {
            let _ = from.exec(&["ping", "-c1", "-W1", "-p", &hex, to]);
            self.frames()
                .iter()
                .any(|f| contains_bytes(f, marker.as_bytes()))
        });
        assert!(
            seen,
            "capture sync failed: a ping from {} to {to} never showed up in {}",
            from.name,
            self.pcap.display()
        );
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        drop(self.child.take());
        let _ = std::fs::remove_file(&self.pcap);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Sends raw Ethernet frames out of `dev` in `ns`, as a misbehaving host
/// would (an AF_PACKET socket, from python3).
pub fn send_frames(ns: &Netns, dev: &str, frames: &[Vec<u8>]) {
    let hex: Vec<String> = frames
        .iter()
        .map(|f| f.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    let script = "import socket,sys\n\
                  s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\n\
                  s.bind((sys.argv[1],0))\n\
                  [s.send(bytes.fromhex(h)) for h in sys.argv[2:]]\n";
    let mut args = vec!["python3", "-c", script, dev];
    args.extend(hex.iter().map(String::as_str));
    ns.ok(&args);
}

/// `ns`'s link-local IPv6 address on `dev`, once duplicate address
/// detection is over (a tentative address neither sends nor answers).
pub fn link_local(ns: &Netns, dev: &str) -> std::net::Ipv6Addr {
    let mut found = None;
    let done = wait_until(Duration::from_secs(10), || {
        let out = ns.ok(&[
            "ip", "-6", "-o", "addr", "show", "dev", dev, "scope", "link",
        ]);
        found = out
            .split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok());
        found.is_some() && !out.contains("tentative")
    });
    assert!(done, "no usable link-local address on {dev} in {}", ns.name);
    found.expect("checked above")
}

/// An Ethernet frame holding an IPv6 packet (hop limit 255) holding the
/// ICMPv6 message `body`, whose checksum is filled in here.
pub fn icmpv6_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    body: &[u8],
) -> Vec<u8> {
    let mut icmp = body.to_vec();
    icmp[2] = 0;
    icmp[3] = 0;
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            sum += hi | pair.get(1).copied().map(u32::from).unwrap_or(0);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(icmp.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(&icmp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let csum = !(sum as u16);
    icmp[2..4].copy_from_slice(&csum.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&icmp);
    f
}

/// A router advertisement from `mac` offering a default route (lifetime
/// 1800 s) and the SLAAC prefix `prefix`/64.
pub fn router_advert(mac: [u8; 6], prefix: std::net::Ipv6Addr) -> Vec<u8> {
    let mut b = vec![134, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];
    b.extend_from_slice(&[1, 1]);
    b.extend_from_slice(&mac);
    b.extend_from_slice(&[3, 4, 64, 0xc0]);
    b.extend_from_slice(&86400u32.to_be_bytes());
    b.extend_from_slice(&14400u32.to_be_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&prefix.octets());
    b
}

/// An unsolicited neighbour advertisement (override set) claiming that
/// `target` is at `mac`.
pub fn neighbour_advert(target: std::net::Ipv6Addr, mac: [u8; 6]) -> Vec<u8> {
    let mut b = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
    b.extend_from_slice(&target.octets());
    b.extend_from_slice(&[2, 1]);
    b.extend_from_slice(&mac);
    b
}

/// The all-nodes multicast group and its MAC.
pub const ALL_NODES: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
pub const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

// ---------------------------------------------------------------------------
// Scheduling: measurements alone.

static MEASURE: RwLock<()> = RwLock::new(());

/// Held by a test whose only traffic is functional (a few packets): any
/// number of them run side by side.
pub fn shared() -> RwLockReadGuard<'static, ()> {
    MEASURE.read().unwrap_or_else(|p| p.into_inner())
}

/// Held by a test that measures rates or delays: no other test of its
/// binary that holds [`shared`] or [`exclusive`] runs meanwhile (the
/// machine has two cores, and vswitchd's datapath thread takes one).
pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
    MEASURE.write().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------
// Pieces of a test's own topology.

pub const FIVE_S: Duration = Duration::from_secs(5);
pub const TEN_S: Duration = Duration::from_secs(10);

/// A veth pair: `a_if` in `a`, `b_if` in `b`, both up, no address.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    a.ok(&[
        "ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ]);
    a.ok(&["ip", "link", "set", a_if, "up"]);
    b.ok(&["ip", "link", "set", b_if, "up"]);
}

/// No ICMP rate limit in `ns`: every probe of a test gets its answer or
/// its error.
pub fn quick_icmp(ns: &Netns) {
    ns.ok(&["sysctl", "-q", "-w", "net.ipv4.icmp_ratelimit=0"]);
}

/// Turns IPv6 off in `ns`: no router solicitations or MLD reports, nothing
/// but the test's own packets (that a connection count or a port pool
/// could include).
pub fn no_ipv6(ns: &Netns) {
    for scope in ["all", "default"] {
        ns.ok(&[
            "sysctl",
            "-q",
            "-w",
            &format!("net.ipv6.conf.{scope}.disable_ipv6=1"),
        ]);
    }
}

/// The ephemeral ports of `ns` (`net.ipv4.ip_local_port_range`).
pub fn ephemeral_ports(ns: &Netns) -> RangeInclusive<u16> {
    let text = ns.ok(&["cat", "/proc/sys/net/ipv4/ip_local_port_range"]);
    let mut it = text.split_whitespace().map(|p| p.parse::<u16>().unwrap());
    let (lo, hi) = (it.next().unwrap(), it.next().unwrap());
    lo..=hi
}

/// The default NAT pool of a vswitchd running in `ns`: the ports above its
/// ephemeral ones.
pub fn default_nat_pool(ns: &Netns) -> RangeInclusive<u16> {
    (ephemeral_ports(ns).end() + 1).max(1024)..=65535
}

/// Pings `addr` from `ns` until answered, then 3 more: at least one of
/// those must be answered too.
pub fn pings(ns: &Netns, addr: &str) -> bool {
    ns.ping_within(addr, TEN_S)
        && ns
            .exec(&["ping", "-c", "3", "-i", "0.2", "-W", "1", addr])
            .status
            .success()
}

/// (source, destination, ICMP type, echo id) of an IPv4 ICMP frame.
pub fn icmp4(frame: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, u8, u16)> {
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
    let icmp = ip.get(ihl..ihl + 8)?;
    Some((src, dst, icmp[0], u16::from_be_bytes([icmp[4], icmp[5]])))
}

// ---------------------------------------------------------------------------
// Traffic, from small python3 programs (there is no nc or socat where the
// tests run; scripts/lib.sh installs python3). Their servers answer with
// what they saw, `TAG PEER_IP PEER_PORT` (see [`TCP_WHOAMI`]), so a test
// reads the source address straight from the machine that received it.

/// TCP servers on `addr`'s ports (argv[3:]): each connection is first told
/// `TAG PEER_IP PEER_PORT\n` (who the server saw), then gets back what it
/// sends until it closes.
pub const TCP_WHOAMI: &str = r#"
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

/// One TCP connection to a [`TCP_WHOAMI`] server (from source port argv[4]
/// if given): prints the greeting once a line sent has come back. Exit
/// status 3: refused, 4: timed out, 1: anything else.
pub const TCP_ASK: &str = r#"
import socket, sys
addr, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sport = int(sys.argv[4]) if len(sys.argv) > 4 else 0
def line(s):
    got = b""
    while not got.endswith(b"\n"):
        d = s.recv(256)
        if not d:
            raise OSError(f"closed after {got!r}")
        got += d
    return got
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    if sport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", sport))
    s.connect((addr, port))
    hello = line(s)
    s.sendall(b"vswitch-test\n")
    back = line(s)
    s.close()
except ConnectionRefusedError as e:
    sys.exit(print(f"refused: {e}", file=sys.stderr) or 3)
except socket.timeout as e:
    sys.exit(print(f"timeout: {e}", file=sys.stderr) or 4)
except OSError as e:
    sys.exit(f"{addr}:{port}: {e}")
if back != b"vswitch-test\n":
    sys.exit(f"echo was {back!r}")
print(hello.decode().strip())
"#;

/// A UDP server on `addr` port argv[3]: answers each datagram with
/// `TAG PEER_IP PEER_PORT`.
pub const UDP_WHOAMI: &str = r#"
import socket, sys
tag, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((addr, port))
while True:
    d, peer = s.recvfrom(65536)
    s.sendto(f"{tag} {peer[0]} {peer[1]}\n".encode(), peer)
"#;

/// One datagram on a connected UDP socket (from source port argv[4] if
/// given); prints the answer. Exit status 3: refused (an ICMP port
/// unreachable came back), 4: no answer in time.
pub const UDP_ASK: &str = r#"
import socket, sys
addr, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sport = int(sys.argv[4]) if len(sys.argv) > 4 else 0
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(timeout)
if sport:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", sport))
try:
    s.connect((addr, port))
    s.send(b"vswitch-test-udp")
    d = s.recv(256)
except ConnectionRefusedError as e:
    sys.exit(print(f"refused: {e}", file=sys.stderr) or 3)
except socket.timeout as e:
    sys.exit(print(f"timeout: {e}", file=sys.stderr) or 4)
except OSError as e:
    sys.exit(f"{addr}:{port}: {e}")
print(d.decode().strip())
"#;

/// Holds TCP connections to a [`TCP_WHOAMI`] server, driven by lines on
/// stdin, answering each with one JSON line: `open N TIMEOUT [SPORT]` opens
/// N more (`{"ok": n, "peers": [greetings], "errors": [...]}`), `echo`
/// sends a line on each held connection (`{"ok": n}`: how many echoed it).
pub const TCP_HOLDER: &str = r#"
import json, socket, sys
addr, port = sys.argv[1], int(sys.argv[2])
conns = []
def line(s):
    got = b""
    while not got.endswith(b"\n"):
        d = s.recv(256)
        if not d:
            raise OSError(f"closed after {got!r}")
        got += d
    return got
for cmd in sys.stdin:
    cmd = cmd.split()
    if cmd[0] == "open":
        peers, errors = [], []
        for _ in range(int(cmd[1])):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(float(cmd[2]))
            try:
                if len(cmd) > 3:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind(("0.0.0.0", int(cmd[3])))
                s.connect((addr, port))
                peers.append(line(s).decode().strip())
                conns.append(s)
            except OSError as e:
                errors.append(str(e))
                s.close()
        print(json.dumps({"ok": len(peers), "peers": peers, "errors": errors}), flush=True)
    elif cmd[0] == "echo":
        ok = 0
        for s in conns:
            try:
                s.sendall(b"x\n")
                if line(s) == b"x\n":
                    ok += 1
            except OSError:
                pass
        print(json.dumps({"ok": ok}), flush=True)
"#;

/// [`TCP_WHOAMI`] servers in `ns` on `addr`'s `ports`, once all listen.
pub fn tcp_whoami(ns: &Netns, tag: &str, addr: &str, ports: &[u16]) -> KillOnDrop {
    let ports_text: Vec<String> = ports.iter().map(u16::to_string).collect();
    let mut args = vec!["python3", "-c", TCP_WHOAMI, tag, addr];
    args.extend(ports_text.iter().map(String::as_str));
    let server = spawn_in(ns, &args);
    let up = wait_until(TEN_S, || ports.iter().all(|&p| listening(ns, 't', p)));
    assert!(up, "TCP servers on {ports:?} did not start in {}", ns.name);
    server
}

/// A [`UDP_WHOAMI`] server in `ns` on `addr:port`, once it listens.
pub fn udp_whoami(ns: &Netns, tag: &str, addr: &str, port: u16) -> KillOnDrop {
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
pub struct Seen {
    pub tag: String,
    pub ip: String,
    pub port: u16,
}

impl Seen {
    pub fn parse(text: &str) -> Seen {
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
pub enum Failure {
    Refused,
    Timeout,
    Other,
}

/// What a whoami server saw, or how and why the attempt failed.
pub type Answer = Result<Seen, (Failure, String)>;

/// Runs `program` ([`TCP_ASK`] or [`UDP_ASK`]) in `ns` towards
/// `addr:port`, from `sport` if given, with a 1 s timeout.
pub fn ask(program: &str, ns: &Netns, addr: &str, port: u16, sport: Option<u16>) -> Answer {
    let port = port.to_string();
    let sport = sport.map(|p| p.to_string());
    let mut args = vec!["python3", "-c", program, addr, &port, "1"];
    if let Some(s) = &sport {
        args.push(s);
    }
    let out = ns.exec(&args);
    let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    match out.status.code() {
        Some(0) => Ok(Seen::parse(&String::from_utf8_lossy(&out.stdout))),
        Some(3) => Err((Failure::Refused, err)),
        Some(4) => Err((Failure::Timeout, err)),
        _ => Err((Failure::Other, err)),
    }
}

pub fn tcp_ask(ns: &Netns, addr: &str, port: u16) -> Answer {
    ask(TCP_ASK, ns, addr, port, None)
}

pub fn udp_ask(ns: &Netns, addr: &str, port: u16) -> Answer {
    ask(UDP_ASK, ns, addr, port, None)
}

/// Retries `attempt` until it answers or `timeout` passes (the first
/// packet towards a next hop not resolved yet may be dropped); panics with
/// the last failure.
pub fn within(what: &str, timeout: Duration, mut attempt: impl FnMut() -> Answer) -> Seen {
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

/// TCP connections held open by a [`TCP_HOLDER`] process in a namespace.
pub struct TcpHolder {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    _child: KillOnDrop,
}

impl TcpHolder {
    /// A holder in `ns` for connections to the [`TCP_WHOAMI`] server on
    /// `addr:port`; it opens none yet.
    pub fn start(ns: &Netns, addr: &str, port: u16) -> TcpHolder {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "python3", "-c", TCP_HOLDER, addr])
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the TCP holder");
        TcpHolder {
            stdin: child.stdin.take().expect("piped stdin"),
            stdout: BufReader::new(child.stdout.take().expect("piped stdout")),
            _child: KillOnDrop(child),
        }
    }

    fn command(&mut self, line: &str) -> Value {
        writeln!(self.stdin, "{line}").expect("write to the TCP holder");
        let mut answer = String::new();
        self.stdout
            .read_line(&mut answer)
            .expect("read from the TCP holder");
        serde_json::from_str(&answer)
            .unwrap_or_else(|_| panic!("TCP holder answered {answer:?} to {line:?}"))
    }

    /// Opens `n` more connections, each given `timeout_s` seconds, from
    /// source port `sport` if given; what their servers saw, and the errors
    /// of those that did not connect.
    pub fn open(&mut self, n: u32, timeout_s: f64, sport: Option<u16>) -> (Vec<Seen>, Vec<String>) {
        let line = match sport {
            Some(p) => format!("open {n} {timeout_s} {p}"),
            None => format!("open {n} {timeout_s}"),
        };
        let answer = self.command(&line);
        let peers = answer["peers"]
            .as_array()
            .unwrap_or_else(|| panic!("{answer}"))
            .iter()
            .map(|p| Seen::parse(p.as_str().unwrap_or_default()))
            .collect();
        let errors = answer["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("{answer}"))
            .iter()
            .map(|e| e.as_str().unwrap_or_default().to_owned())
            .collect();
        (peers, errors)
    }

    /// How many held connections echo a line.
    pub fn echo(&mut self) -> u64 {
        self.command("echo")["ok"].as_u64().unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------
// Policies and counters, as vswitchctl shows them.

/// `policy ls [FILTER] --json`.
pub fn policies(d: &Daemon, filter: &[&str]) -> Vec<Value> {
    let mut args = vec!["policy", "ls"];
    args.extend_from_slice(filter);
    let list = d.json(&args);
    list.as_array()
        .unwrap_or_else(|| panic!("policy ls answered {list}, not a list"))
        .clone()
}

/// [`policies`] without their hit counters, which count traffic, not
/// configuration.
pub fn configured(d: &Daemon, filter: &[&str]) -> Vec<Value> {
    let mut list = policies(d, filter);
    for p in &mut list {
        if let Some(p) = p.as_object_mut() {
            p.remove("Hits");
        }
    }
    list
}

/// Writes a policy document into the daemon's test directory (removed
/// with it).
pub fn write_doc(d: &Daemon, doc: impl std::fmt::Display) -> PathBuf {
    let path = d.dir.join(format!("policy-{}.json", unique()));
    std::fs::write(&path, doc.to_string()).expect("write policy file");
    path
}

/// `stats PORT --json`: the counters of one port.
pub fn port_stats(d: &Daemon, port: &str) -> Value {
    d.json(&["stats", port])[0].clone()
}

/// The drops of `port` for `reason`.
pub fn drops(d: &Daemon, port: &str, reason: &str) -> u64 {
    let s = port_stats(d, port);
    s["Drops"][reason]
        .as_u64()
        .unwrap_or_else(|| panic!("stats of {port} have no drop reason {reason}: {s}"))
}

/// Drops for `reason` summed over `ports`: a packet one endpoint's policy
/// stops may be counted on the port it came from or the one it was for.
pub fn drops_on(d: &Daemon, ports: &[&str], reason: &str) -> u64 {
    ports.iter().map(|p| drops(d, p, reason)).sum()
}

// ---------------------------------------------------------------------------
// The kernel fast path of veth endpoints, as vswitchctl shows it.

impl Daemon {
    /// `PinDir` of `datapath show`, if the daemon answers.
    pub fn fastpath_pin_dir(&self) -> Option<PathBuf> {
        let out = self.ctl(&["datapath", "show", "--json"]);
        if !out.status.success() {
            return None;
        }
        let info: Value = serde_json::from_slice(&out.stdout).ok()?;
        info["PinDir"].as_str().map(PathBuf::from)
    }
}

/// Removes a fast path pin directory a test's daemon left in bpffs (only
/// one of `/sys/fs/bpf/vswitch/fastpath-*`; nothing given is nothing done).
pub fn remove_fastpath_pins(dir: Option<PathBuf>) {
    if let Some(dir) = dir {
        if dir
            .to_str()
            .is_some_and(|d| d.starts_with("/sys/fs/bpf/vswitch/fastpath-"))
        {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// `datapath show --json`.
pub fn datapath(d: &Daemon) -> Value {
    d.json(&["datapath", "show"])
}

/// The `FastPath` object of `stats PORT --json` (veth endpoints only).
pub fn fast_stats(d: &Daemon, port: &str) -> Value {
    let s = port_stats(d, port);
    match s.get("FastPath") {
        Some(fp) if fp.is_object() => fp.clone(),
        _ => panic!("stats of {port} have no FastPath: {s}"),
    }
}

/// One counter of [`fast_stats`], e.g. `ForwardedPackets`.
pub fn fast_counter(d: &Daemon, port: &str, field: &str) -> u64 {
    let fp = fast_stats(d, port);
    fp[field]
        .as_u64()
        .unwrap_or_else(|| panic!("FastPath of {port} has no {field}: {fp}"))
}

/// The fast path's drops of `port` for `reason`.
pub fn fast_drops(d: &Daemon, port: &str, reason: &str) -> u64 {
    let fp = fast_stats(d, port);
    fp["Drops"][reason]
        .as_u64()
        .unwrap_or_else(|| panic!("FastPath of {port} has no drop reason {reason}: {fp}"))
}

/// Runs an iperf3 TCP test from `client` to `server_addr` (served in
/// `server`) for `secs` seconds with extra client arguments and returns its
/// whole JSON report (`intervals`, `end`); [`iperf3_with`] takes the rate
/// from it.
pub fn iperf3_report(
    client: &Netns,
    server: &Netns,
    server_addr: &str,
    secs: u32,
    extra: &[&str],
) -> Value {
    let _server = spawn_in(server, &["iperf3", "-s", "-1", "-B", server_addr]);
    let listening = wait_until(FIVE_S, || listening(server, 't', 5201));
    assert!(listening, "iperf3 server did not start in {}", server.name);
    // A client whose traffic stops spins forever: stopped 20 s after it
    // should have finished.
    let limit = (secs + 20).to_string();
    let secs = secs.to_string();
    let mut args = vec![
        "timeout",
        "-k",
        "5",
        &limit,
        "iperf3",
        "-c",
        server_addr,
        "-t",
        &secs,
        "-J",
    ];
    args.extend_from_slice(extra);
    let out = client.exec(&args);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "iperf3 gave no JSON (exit status {}; 124: stopped after {limit} s): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        report.get("error").is_none(),
        "iperf3 failed: {}",
        report["error"]
    );
    report
}

/// An Ethernet frame holding an IPv4 UDP datagram (TTL 64, no UDP
/// checksum) with `payload`.
pub fn udp4_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ports: (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = 8 + payload.len() as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&(20 + udp_len).to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let mut sum: u32 = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&ports.0.to_be_bytes());
    f.extend_from_slice(&ports.1.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

#[cfg(test)]
mod tests {
    use super::unexpected_warnings;

    #[test]
    fn warnings_fail_unless_expected() {
        let log = "2026-12-01T20:35:01.1Z  INFO vswitch: vswitchd ready\n\
                   2026-12-01T20:35:02.1Z  WARN vswitch::control: endpoint detached endpoint=a\n\
                   2026-12-01T20:35:03.1Z ERROR vswitch::control: network not restored network=n\n\
                   a line that merely mentions WARN\n";
        assert_eq!(unexpected_warnings(log, &[]).len(), 2);
        let one = unexpected_warnings(log, &["endpoint detached".to_owned()]);
        assert_eq!(one.len(), 1);
        assert!(one[0].contains("network not restored"));
        let none = unexpected_warnings(log, &["detached".to_owned(), "not restored".to_owned()]);
        assert!(none.is_empty());
    }
}
