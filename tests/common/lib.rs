//! Harness for the integration tests: a private `vswitchd` per test, network
//! namespaces with unique names, and wait-until helpers. Everything a test
//! creates is removed on drop, also when the test fails.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
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
}

impl Daemon {
    pub fn start() -> Daemon {
        let dir = std::env::temp_dir().join(format!("vswitch-test-{}", tag()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("vswitchd.sock");
        let mut d = Daemon {
            dir,
            socket,
            child: None,
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
        let child = Command::new(bin("vswitchd"))
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

    /// Runs `vswitchctl --socket <ours> args...`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(bin("vswitchctl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run vswitchctl")
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

    /// Everything the daemon reports, to compare before/after a request.
    pub fn snapshot(&self) -> (Value, Value, String) {
        (
            self.json(&["network", "ls"]),
            self.json(&["endpoint", "ls"]),
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
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.teardown()));
        if result.is_err() {
            self.kill9();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- vswitchd log ({}) ---\n{}",
                self.dir.display(),
                self.log()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A child process killed (by its PID) when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs an iperf3 TCP test from `client` to `server_addr` (served in
/// `server`) for `secs` seconds; returns the received bit rate.
pub fn iperf3(client: &Netns, server: &Netns, server_addr: &str, secs: u32) -> f64 {
    let mut daemon = Command::new("ip");
    daemon
        .args([
            "netns",
            "exec",
            &server.name,
            "iperf3",
            "-s",
            "-1",
            "-B",
            server_addr,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _server = KillOnDrop(daemon.spawn().expect("start iperf3 server"));
    let listening = wait_until(Duration::from_secs(5), || {
        server
            .ok(&["ss", "-Hltn", "sport = :5201"])
            .contains("5201")
    });
    assert!(listening, "iperf3 server did not start in {}", server.name);
    let out = client.exec(&["iperf3", "-c", server_addr, "-t", &secs.to_string(), "-J"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "iperf3 gave no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        report.get("error").is_none(),
        "iperf3 failed: {}",
        report["error"]
    );
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("iperf3 report has a received rate")
}
