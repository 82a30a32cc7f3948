//! Loader and map management for the eBPF programs in `xdp-prog/` (over aya).
//!
//! The programs are C, compiled by `build.rs` with clang and embedded here.
//! Everything the switch keeps in the kernel is pinned under
//! [`PIN_ROOT`]`/<interface>/`, so a restarted daemon finds what its previous
//! instance left attached.
//!
//! - [`UplinkProgram`]: the XDP program on an uplink that hands endpoint
//!   traffic to the switch's AF_XDP sockets and leaves the rest to the host.
//! - [`fastpath::FastPath`]: the TC programs that switch veth endpoints'
//!   traffic in the kernel and punt the rest to the slow path.

mod devbound;
pub mod fastpath;
mod uplink;

#[cfg(test)]
pub(crate) mod testnet;

pub use uplink::{EchoIds, UplinkHook, UplinkProgram, XdpMode, XdpStats};

use std::ffi::CString;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;

use crate::ifname::InvalidIfName;

/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";

/// The switch's directory in bpffs; one subdirectory per interface.
pub const PIN_ROOT: &str = "/sys/fs/bpf/vswitch";

/// Everything that can fail while loading, attaching or driving an eBPF
/// program; each variant names the step.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("reading /proc/self/mounts to find bpffs")]
    ReadMounts(#[source] io::Error),
    #[error("mount(\"bpf\", {BPFFS}) failed")]
    MountBpffs(#[source] io::Error),
    #[error(transparent)]
    InvalidInterfaceName(#[from] InvalidIfName),
    #[error("interface {0} does not exist in this network namespace")]
    NoSuchInterface(String),
    #[error("parsing the embedded {program} object")]
    Parse {
        program: &'static str,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("the embedded object has no program or map named {0}")]
    Missing(&'static str),
    #[error("loading program {program} into the kernel (verifier)")]
    Load {
        program: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error(
        "{ifname} already has an XDP program that vswitch did not pin (or a running vswitchd \
         still holds it); remove it with `ip link set dev {ifname} xdp off`"
    )]
    ForeignProgram { ifname: String },
    #[error("attaching XDP to {ifname}: native mode failed ({native}), generic mode failed")]
    Attach {
        ifname: String,
        native: String,
        #[source]
        generic: Box<aya::programs::ProgramError>,
    },
    #[error("the kernel attached XDP to {ifname} without a BPF link, which cannot be pinned")]
    NotALink { ifname: String },
    #[error("creating the pin directory {path}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pinning {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: Box<aya::pin::PinError>,
    },
    #[error("removing the pin {path}")]
    Unpin {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("map {map}: {op}")]
    Map {
        map: &'static str,
        op: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("VLAN {0} is out of range (0 = untagged, 1..=4094)")]
    InvalidVlan(u16),
    #[error("NAT port range {lo}..={hi} is empty")]
    InvalidNatRange { lo: u16, hi: u16 },
    #[error("NAT ports are TCP (6) or UDP (17), not protocol {0}")]
    InvalidNatProtocol(u8),
}

/// Serialises [`ensure_bpffs`] within the process, so concurrent callers do
/// not stack two mounts.
static BPFFS_LOCK: Mutex<()> = Mutex::new(());

/// Mounts bpffs at [`BPFFS`] unless a bpffs is already mounted there (pins
/// need it; a fresh VM often lacks it).
pub fn ensure_bpffs() -> Result<(), EbpfError> {
    let _guard = BPFFS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mounts = std::fs::read_to_string("/proc/self/mounts").map_err(EbpfError::ReadMounts)?;
    if bpffs_mounted(&mounts) {
        return Ok(());
    }
    let source = CString::new("bpf").expect("no NUL");
    let target = CString::new(BPFFS).expect("no NUL");
    let options = CString::new("mode=0700").expect("no NUL");
    // SAFETY: every pointer is a NUL-terminated string that outlives the
    // call; mount(2) does not keep them.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            source.as_ptr(),
            0,
            options.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(EbpfError::MountBpffs(io::Error::last_os_error()));
    }
    tracing::info!(path = BPFFS, "mounted bpffs");
    Ok(())
}

/// True when `/proc/self/mounts` text lists a bpf filesystem on [`BPFFS`].
fn bpffs_mounted(mounts: &str) -> bool {
    mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, fstype) = (fields.next(), fields.next(), fields.next());
        target == Some(BPFFS) && fstype == Some("bpf")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_bpffs_in_mount_table() {
        let with = "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,mode=700 0 0\n";
        let without = "sysfs /sys sysfs rw 0 0\nnone /sys/fs/bpf tmpfs rw 0 0\n";
        assert!(bpffs_mounted(with));
        assert!(!bpffs_mounted(without));
        assert!(!bpffs_mounted(""));
    }

    #[test]
    fn rejects_bad_interface_names() {
        // Refused by IfName before bpffs, the pin directory or the kernel
        // is touched, so this needs no root.
        for bad in ["", "..", "a/b", "sixteen-chars-xx", "a b"] {
            match uplink::UplinkProgram::attach(bad) {
                Err(EbpfError::InvalidInterfaceName(e)) => assert_eq!(e.name, bad),
                Err(e) => panic!("{bad:?}: {e}"),
                Ok(_) => panic!("{bad:?} accepted"),
            }
        }
    }
}
