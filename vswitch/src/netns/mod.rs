//! Network namespaces: naming one, and running code inside it.
//!
//! A [`Netns`] is a *reference* to a namespace by path (`/run/netns/NAME` or
//! any nsfs file such as `/proc/PID/ns/net`), checked when resolved. It does
//! not hold the namespace open: every [`Netns::run`] re-opens the path, so a
//! namespace someone deleted with `ip netns del` is reported as gone instead
//! of being kept alive by the daemon (which would also keep its veth peers
//! and routes alive). The one exception is [`Netns::root`], the daemon's own
//! namespace, which is held open by a file descriptor captured once.
//!
//! [`Netns::run`] moves a fresh thread into the namespace (`setns` affects
//! only the calling thread) and runs a closure there; the daemon's other
//! threads never change namespace. Sockets and TAP file descriptors opened in
//! the closure stay bound to that namespace after the thread ends, which is
//! how the switch drives ports that live in containers.

pub mod netlink;

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use thiserror::Error;

/// Where `ip netns add NAME` bind-mounts a namespace.
const NETNS_RUN_DIR: &str = "/run/netns";

/// `NS_GET_NSTYPE`, `_IO(0xb7, 0x3)` from `<linux/nsfs.h>`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// `NSFS_MAGIC` from `<linux/magic.h>`: the file system of namespace files.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// The spec under which [`Netns::root`] is known.
const ROOT_SPEC: &str = "/proc/self/ns/net";

#[derive(Debug, Error)]
pub enum NetnsError {
    #[error("invalid network namespace name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("network namespace {path} does not exist")]
    NotFound { path: PathBuf },
    #[error("{path} is not a network namespace")]
    NotNetns { path: PathBuf },
    #[error("{call} {path}: {source}")]
    Sys {
        call: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot start a thread to enter {path}: {source}")]
    Thread { path: PathBuf, source: io::Error },
}

/// A network namespace, by path; see the module docs.
#[derive(Clone)]
pub struct Netns {
    path: PathBuf,
    /// The string the namespace was resolved from, for messages and state.
    display: String,
    /// Set only for the root namespace, which is held open.
    held: Option<Arc<OwnedFd>>,
}

impl Netns {
    /// Resolves `spec`: a name under `/run/netns`, or an absolute path to an
    /// nsfs file. Fails when it does not exist or is not a network namespace.
    pub fn resolve(spec: &str) -> Result<Netns, NetnsError> {
        let path = if spec.starts_with('/') {
            PathBuf::from(spec)
        } else {
            validate_name(spec)?;
            Path::new(NETNS_RUN_DIR).join(spec)
        };
        // Opening checks existence and the type; the fd is not kept.
        open_netns(&path)?;
        Ok(Netns {
            path,
            display: spec.to_string(),
            held: None,
        })
    }

    /// The daemon's own namespace: the namespace of the process's main
    /// thread (`/proc/self/ns/net` names the thread-group leader, which never
    /// calls `setns`; only [`Netns::run`]'s threads do), opened on the first
    /// call and held for the life of the process.
    pub fn root() -> Result<Netns, NetnsError> {
        static ROOT: OnceLock<Arc<OwnedFd>> = OnceLock::new();
        let fd = match ROOT.get() {
            Some(fd) => fd.clone(),
            None => {
                let fd = Arc::new(open_netns(Path::new(ROOT_SPEC))?);
                // A racing first call may have won; either fd names the same
                // namespace, keep the stored one.
                ROOT.get_or_init(|| fd).clone()
            }
        };
        Ok(Netns {
            path: PathBuf::from(ROOT_SPEC),
            display: ROOT_SPEC.to_string(),
            held: Some(fd),
        })
    }

    /// The string this namespace was resolved from.
    pub fn spec(&self) -> &str {
        &self.display
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True for [`Netns::root`].
    pub fn is_root(&self) -> bool {
        self.held.is_some()
    }

    /// The namespace's inode number: two specs name the same namespace when
    /// their inodes are equal (all nsfs files share one device).
    pub fn inode(&self) -> Result<u64, NetnsError> {
        self.with_fd(|fd| {
            let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
            // SAFETY: fd is open for the call; st is writable and only read
            // after fstat reports success.
            let ret = unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) };
            if ret < 0 {
                return Err(self.sys("fstat", io::Error::last_os_error()));
            }
            // SAFETY: fstat succeeded, so st is initialised.
            Ok(unsafe { st.assume_init() }.st_ino)
        })
    }

    /// Runs `f` on a fresh thread that has entered this namespace, and
    /// returns its result. A panic in `f` is resumed on the caller.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        self.with_fd(|fd| {
            std::thread::scope(|scope| {
                let handle = std::thread::Builder::new()
                    .name("netns".into())
                    .spawn_scoped(scope, move || {
                        // SAFETY: fd is a valid nsfs descriptor borrowed for
                        // the scope; setns changes only this thread.
                        let ret = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
                        if ret < 0 {
                            return Err(io::Error::last_os_error());
                        }
                        Ok(f())
                    })
                    .map_err(|source| NetnsError::Thread {
                        path: self.path.clone(),
                        source,
                    })?;
                match handle.join() {
                    Ok(Ok(value)) => Ok(value),
                    Ok(Err(source)) => Err(self.sys("setns", source)),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            })
        })
    }

    /// Calls `f` with an open descriptor of the namespace: the held one for
    /// the root, a fresh one (re-checked) otherwise.
    fn with_fd<T>(
        &self,
        f: impl FnOnce(BorrowedFd<'_>) -> Result<T, NetnsError>,
    ) -> Result<T, NetnsError> {
        match &self.held {
            Some(fd) => f(fd.as_fd()),
            None => {
                let fd = open_netns(&self.path)?;
                f(fd.as_fd())
            }
        }
    }

    fn sys(&self, call: &'static str, source: io::Error) -> NetnsError {
        NetnsError::Sys {
            call,
            path: self.path.clone(),
            source,
        }
    }
}

impl fmt::Debug for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netns")
            .field("spec", &self.display)
            .field("path", &self.path)
            .finish()
    }
}

impl fmt::Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

fn validate_name(name: &str) -> Result<(), NetnsError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.contains('/') {
        "contains '/' (give an absolute path instead)"
    } else if name == "." || name == ".." {
        "not a file name"
    } else if name.contains('\0') {
        "contains NUL"
    } else {
        return Ok(());
    };
    Err(NetnsError::InvalidName {
        name: name.to_string(),
        reason,
    })
}

/// Opens `path` and checks that it is a network namespace, without ever
/// blocking: a request may name any file, and a FIFO (or a device) opened
/// for reading would wait for a writer with the control plane stalled
/// behind it. So the path is first opened with `O_PATH`, which opens
/// nothing but the name, and only once `fstatfs` says it lives on nsfs is it
/// opened for real, through `/proc/self/fd` so that it is the same file.
fn open_netns(path: &Path) -> Result<OwnedFd, NetnsError> {
    let sys = |call, source| NetnsError::Sys {
        call,
        path: path.to_path_buf(),
        source,
    };
    let cpath = CString::new(path.as_os_str().as_bytes()).map_err(|_| NetnsError::InvalidName {
        name: path.display().to_string(),
        reason: "contains NUL",
    })?;
    // SAFETY: cpath is a valid NUL-terminated string for the call.
    let raw = unsafe { libc::open(cpath.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if raw < 0 {
        let err = io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => NetnsError::NotFound {
                path: path.to_path_buf(),
            },
            _ => sys("open", err),
        });
    }
    // SAFETY: raw is a fresh descriptor nobody else owns.
    let name_only = unsafe { OwnedFd::from_raw_fd(raw) };

    let mut sfs = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: the fd is open (fstatfs takes O_PATH descriptors); sfs is
    // writable and read only after success.
    if unsafe { libc::fstatfs(name_only.as_raw_fd(), sfs.as_mut_ptr()) } < 0 {
        return Err(sys("fstatfs", io::Error::last_os_error()));
    }
    // SAFETY: fstatfs succeeded, so sfs is initialised.
    let f_type = unsafe { sfs.assume_init() }.f_type;
    // f_type's width and sign vary by architecture.
    #[allow(clippy::unnecessary_cast)]
    if f_type as i64 != NSFS_MAGIC {
        return Err(NetnsError::NotNetns {
            path: path.to_path_buf(),
        });
    }
    // An nsfs file: opening it cannot block or have side effects.
    let proc_path = CString::new(format!("/proc/self/fd/{}", name_only.as_raw_fd()))
        .expect("no NUL in a number");
    // SAFETY: proc_path is a valid NUL-terminated string for the call.
    let raw = unsafe { libc::open(proc_path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(sys("open", io::Error::last_os_error()));
    }
    // SAFETY: raw is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };

    // SAFETY: NS_GET_NSTYPE takes no argument and only inspects fd, an
    // nsfs file.
    let nstype = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE as _) };
    if nstype < 0 {
        return Err(sys("ioctl(NS_GET_NSTYPE)", io::Error::last_os_error()));
    }
    if nstype == libc::CLONE_NEWNET {
        Ok(fd)
    } else {
        Err(NetnsError::NotNetns {
            path: path.to_path_buf(),
        })
    }
}

/// Sets `lo` up in the calling thread's namespace (the `none` driver's whole
/// network). Call it inside [`Netns::run`].
pub fn ensure_loopback_up() -> Result<(), netlink::NetlinkError> {
    let mut nl = netlink::Netlink::open()?;
    let lo = nl
        .link_index("lo")?
        .ok_or_else(|| netlink::NetlinkError::NoSuchLink("lo".to_string()))?;
    nl.link_set(
        lo,
        &netlink::LinkChange {
            up: Some(true),
            ..Default::default()
        },
    )
}

/// Namespaces for root tests: created with `ip netns add`, named uniquely,
/// deleted on drop even when the test fails.
#[cfg(test)]
pub(crate) mod testns {
    use std::process::Command;
    use std::sync::atomic::{AtomicU32, Ordering};

    pub fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    /// True when the test may run; prints the one-line skip otherwise.
    pub fn root_or_skip(test: &str) -> bool {
        if !is_root() {
            eprintln!("skipped {test}: needs root (network namespaces)");
        }
        is_root()
    }

    pub struct TestNetns {
        pub name: String,
    }

    impl TestNetns {
        pub fn new(tag: &str) -> TestNetns {
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!("vsnl-{tag}-{}-{n}", std::process::id());
            let status = Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .expect("run ip netns add");
            assert!(status.success(), "ip netns add {name} failed");
            TestNetns { name }
        }

        pub fn netns(&self) -> super::Netns {
            super::Netns::resolve(&self.name).expect("resolve test netns")
        }

        /// Runs `ip -n NAME ARGS...` and returns stdout; panics on failure.
        pub fn ip(&self, args: &[&str]) -> String {
            let out = Command::new("ip")
                .args(["-n", &self.name])
                .args(args)
                .output()
                .expect("run ip");
            assert!(
                out.status.success(),
                "ip -n {} {:?}: {}",
                self.name,
                args,
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    }

    impl Drop for TestNetns {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testns::{root_or_skip, TestNetns};
    use super::*;

    fn thread_netns_inode() -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
    }

    #[test]
    fn rejects_bad_names() {
        for bad in ["", "a/b", ".", ".."] {
            assert!(
                matches!(Netns::resolve(bad), Err(NetnsError::InvalidName { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn missing_and_wrong_type_are_distinguished() {
        let missing = format!("vsnl-missing-{}", std::process::id());
        assert!(matches!(
            Netns::resolve(&missing),
            Err(NetnsError::NotFound { .. })
        ));
        assert!(matches!(
            Netns::resolve("/nonexistent/ns"),
            Err(NetnsError::NotFound { .. })
        ));
        assert!(matches!(
            Netns::resolve("/etc/hostname"),
            Err(NetnsError::NotNetns { .. })
        ));
        // A namespace, but of another type.
        assert!(matches!(
            Netns::resolve("/proc/self/ns/uts"),
            Err(NetnsError::NotNetns { .. })
        ));
    }

    #[test]
    fn files_that_block_or_act_on_open_are_refused_at_once() {
        // Opening a FIFO for reading waits for a writer; a device may act on
        // open. Neither is a namespace, and resolving must not wait.
        let fifo = std::env::temp_dir().join(format!("vsnl-fifo-{}", std::process::id()));
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: c is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let spec = fifo.to_str().unwrap().to_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(Netns::resolve(&spec).map(drop)).unwrap());
        let got = rx.recv_timeout(std::time::Duration::from_secs(5));
        let _ = std::fs::remove_file(&fifo);
        assert!(
            matches!(got, Ok(Err(NetnsError::NotNetns { .. }))),
            "{got:?}"
        );
        assert!(matches!(
            Netns::resolve("/dev/null"),
            Err(NetnsError::NotNetns { .. })
        ));
        assert!(matches!(
            Netns::resolve("/tmp"),
            Err(NetnsError::NotNetns { .. })
        ));
    }

    #[test]
    fn own_namespace_resolves_by_path() {
        let ns = Netns::resolve("/proc/self/ns/net").unwrap();
        assert_eq!(ns.spec(), "/proc/self/ns/net");
        let root = Netns::root().unwrap();
        assert!(root.is_root() && !ns.is_root());
        assert_eq!(ns.inode().unwrap(), root.inode().unwrap());
        assert_eq!(root.inode().unwrap(), thread_netns_inode());
    }

    #[test]
    fn run_enters_only_a_scoped_thread() {
        if !root_or_skip("run_enters_only_a_scoped_thread") {
            return;
        }
        let t = TestNetns::new("ns");
        let ns = Netns::resolve(&t.name).unwrap();
        assert_eq!(ns.spec(), t.name);
        let before = thread_netns_inode();
        let inside = ns.run(thread_netns_inode).unwrap();
        assert_eq!(inside, ns.inode().unwrap());
        assert_ne!(inside, before);
        assert_eq!(thread_netns_inode(), before);

        // The root namespace can be re-entered from a thread that left it.
        let root = Netns::root().unwrap();
        let back = ns.run(|| root.run(thread_netns_inode).unwrap()).unwrap();
        assert_eq!(back, before);

        // Borrowing from the caller works (scoped thread).
        let mut seen = Vec::new();
        ns.run(|| seen.push(1)).unwrap();
        assert_eq!(seen, [1]);

        // A fresh namespace's loopback starts down.
        ns.run(ensure_loopback_up).unwrap().unwrap();
        assert!(t.ip(&["link", "show", "lo"]).contains("UP"));
    }

    #[test]
    fn deleted_namespace_is_reported_gone() {
        if !root_or_skip("deleted_namespace_is_reported_gone") {
            return;
        }
        let t = TestNetns::new("gone");
        let ns = t.netns();
        drop(t);
        assert!(matches!(ns.run(|| ()), Err(NetnsError::NotFound { .. })));
    }

    #[test]
    fn panic_inside_propagates() {
        // setns needs CAP_SYS_ADMIN even into the namespace one is in.
        if !root_or_skip("panic_inside_propagates") {
            return;
        }
        let root = Netns::root().unwrap();
        let caught = std::panic::catch_unwind(|| root.run(|| panic!("boom"))).unwrap_err();
        assert_eq!(caught.downcast_ref::<&str>(), Some(&"boom"));
    }
}
