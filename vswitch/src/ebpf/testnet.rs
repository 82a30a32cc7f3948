//! Test topology: two fresh network namespaces joined by a veth pair, named
//! with the pid and a counter, deleted on drop (even when the test fails).
//!
//! ```text
//!   ns_a: a (10.77.<n>.1/24, fd77:<n>::1/64)  <-veth->  ns_b: b (10.77.<n>.2/24, fd77:<n>::2/64)
//! ```
//!
//! Sockets, XDP attachments and AF_XDP ports are bound to the namespace they
//! were created in, so tests create them inside [`VethNet::in_a`] /
//! [`VethNet::in_b`] (a thread that entered the namespace) and use them from
//! anywhere afterwards.

use std::ffi::CString;
use std::io;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub(crate) struct VethNet {
    pub ns_a: String,
    pub ns_b: String,
    pub a: String,
    pub b: String,
    pub ip_a: [u8; 4],
    pub ip_b: [u8; 4],
    pub mac_a: [u8; 6],
    pub mac_b: [u8; 6],
    /// Third octet of the subnet, unique within the process.
    pub subnet: u8,
}

impl VethNet {
    pub fn new() -> io::Result<VethNet> {
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let subnet = (n % 250) as u8 + 1;
        let net = VethNet {
            ns_a: format!("vsx-a-{pid}-{n}"),
            ns_b: format!("vsx-b-{pid}-{n}"),
            // IFNAMSIZ is 16: "xa" + pid (<= 7 digits) + "-" + n.
            a: format!("xa{pid}-{n}"),
            b: format!("xb{pid}-{n}"),
            ip_a: [10, 77, subnet, 1],
            ip_b: [10, 77, subnet, 2],
            mac_a: [0x02, 0xaa, 0, 0, subnet, 1],
            mac_b: [0x02, 0xbb, 0, 0, subnet, 2],
            subnet,
        };
        // From here on, Drop cleans up whatever part got created.
        run("ip", &["netns", "add", &net.ns_a])?;
        run("ip", &["netns", "add", &net.ns_b])?;
        run(
            "ip",
            &[
                "-n", &net.ns_a, "link", "add", &net.a, "type", "veth", "peer", "name", &net.b,
                "netns", &net.ns_b,
            ],
        )?;
        for (ns, dev, mac, ip, ip6) in [
            (&net.ns_a, &net.a, net.mac_a, net.ip_a, 1),
            (&net.ns_b, &net.b, net.mac_b, net.ip_b, 2),
        ] {
            let mac = mac_text(mac);
            let ip = format!("{}.{}.{}.{}/24", ip[0], ip[1], ip[2], ip[3]);
            let ip6 = format!("fd77:{subnet}::{ip6}/64");
            run("ip", &["-n", ns, "link", "set", dev, "address", &mac])?;
            run("ip", &["-n", ns, "addr", "add", &ip, "dev", dev])?;
            run("ip", &["-n", ns, "addr", "add", &ip6, "dev", dev, "nodad"])?;
            run("ip", &["-n", ns, "link", "set", dev, "up"])?;
            run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// Runs `f` on a thread inside namespace A.
    pub fn in_a<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.ns_a, f)
    }

    /// Runs `f` on a thread inside namespace B.
    pub fn in_b<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.ns_b, f)
    }

    /// Runs `ip -n <ns> <args>` and fails on a non-zero exit.
    pub fn ip(&self, ns: &str, args: &[&str]) -> io::Result<()> {
        let mut all = vec!["-n", ns];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs a command inside namespace `ns` (`ip netns exec`).
    pub fn exec(&self, ns: &str, cmd: &[&str]) -> io::Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(cmd)
            .output()
    }
}

impl Drop for VethNet {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it, and with it
        // the pair (and any XDP link on it).
        for ns in [&self.ns_a, &self.ns_b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        // Pins a failed test left (the names are ours alone).
        for dev in [&self.a, &self.b] {
            let _ = std::fs::remove_dir_all(std::path::Path::new(super::PIN_ROOT).join(dev));
        }
    }
}

pub(crate) fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn run(cmd: &str, args: &[&str]) -> io::Result<()> {
    let out = Command::new(cmd).args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Runs `f` on a new thread that entered network namespace `ns`; the
/// caller's thread never changes namespace.
pub(crate) fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let path = CString::new(format!("/run/netns/{ns}")).expect("no NUL");
            // SAFETY: path is NUL-terminated; the fd is closed below.
            let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            assert!(
                fd >= 0,
                "open /run/netns/{ns}: {}",
                io::Error::last_os_error()
            );
            // SAFETY: fd is a namespace file we own; setns only affects this
            // thread, which ends with the scope.
            let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
            let err = io::Error::last_os_error();
            // SAFETY: fd is ours and not used afterwards.
            unsafe { libc::close(fd) };
            assert_eq!(rc, 0, "setns({ns}): {err}");
            f()
        })
        .join()
        .expect("netns thread panicked")
    })
}

/// A raw AF_PACKET socket on one interface, for injecting and capturing
/// frames in tests.
pub(crate) struct RawSocket {
    fd: std::os::fd::OwnedFd,
    ifindex: i32,
}

impl RawSocket {
    /// Opens a socket bound to `ifname` in the calling thread's namespace,
    /// receiving every EtherType.
    pub fn open(ifname: &str) -> io::Result<RawSocket> {
        use std::os::fd::FromRawFd;
        let name = CString::new(ifname).expect("no NUL");
        // SAFETY: name is NUL-terminated.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                proto as i32,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh socket we own.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let sock = RawSocket { fd, ifindex };
        let addr = sock.sockaddr(proto);
        use std::os::fd::AsRawFd;
        // SAFETY: addr is a valid sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                sock.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sock)
    }

    fn sockaddr(&self, proto: u16) -> libc::sockaddr_ll {
        // SAFETY: sockaddr_ll is plain data; all-zero is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = self.ifindex;
        addr
    }

    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let addr = self.sockaddr(0);
        // SAFETY: frame and addr are valid for the lengths passed.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` for a received (not outgoing) frame for which
    /// `want` is true.
    pub fn recv_matching(
        &self,
        timeout: std::time::Duration,
        want: impl Fn(&[u8]) -> bool,
    ) -> Option<Vec<u8>> {
        use std::os::fd::AsRawFd;
        let deadline = std::time::Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        while std::time::Instant::now() < deadline {
            // SAFETY: sockaddr_ll is plain data.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: buf and from are valid for the lengths passed.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                std::thread::sleep(std::time::Duration::from_millis(5));
                continue;
            }
            let frame = &buf[..n as usize];
            if from.sll_pkttype != libc::PACKET_OUTGOING && want(frame) {
                return Some(frame.to_vec());
            }
        }
        None
    }
}
