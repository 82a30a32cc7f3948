//! The device-bound build of the uplink program (`uplink.bpf.c` with
//! `UPLINK_DEV_BOUND`), loaded and attached with raw `bpf(2)` calls.
//!
//! Why not aya: reading a VLAN tag the driver keeps out of band takes the
//! `bpf_xdp_metadata_rx_vlan_tag` kfunc, which the verifier only lets a
//! *device-bound* program call (`BPF_F_XDP_DEV_BOUND_ONLY` and
//! `prog_ifindex` at load), and aya 0.14 can neither set those nor relocate
//! a `__ksym` extern. So aya-obj still parses the object and relocates its
//! maps (to the maps the aya-loaded build created and pinned: one set of
//! maps, whichever program runs), and this module does the three calls aya
//! cannot: the program load, the XDP link and its pin. The kfunc call is
//! compiled as a call to a helper number no helper has
//! (`UPLINK_KFUNC_RX_VLAN_TAG`) and patched here into a kfunc call by its
//! vmlinux BTF id, which is what libbpf does for a `__ksym`.
//!
//! Anything failing here is not fatal: the caller attaches the plain build
//! instead, which sees in-band tags only.

use std::collections::HashSet;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use aya::maps::MapData;
use aya_obj::btf::{Btf, BtfKind};

static DEVBOUND_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/uplink_devbound.bpf.o"));

/// `UPLINK_KFUNC_RX_VLAN_TAG` (xdp-prog/uplink.h).
const KFUNC_PLACEHOLDER: i32 = 0x7fff_f001;
const KFUNC_RX_VLAN_TAG: &str = "bpf_xdp_metadata_rx_vlan_tag";

// linux/bpf.h
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const BPF_F_XDP_DEV_BOUND_ONLY: u32 = 1 << 6;
const BPF_PSEUDO_KFUNC_CALL: u8 = 2;
const BPF_JMP_CALL: u8 = 0x05 | 0x80;
// linux/if_link.h
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// The head of `union bpf_attr` for `BPF_PROG_LOAD`, up to
/// `expected_attach_type`; the kernel takes a shorter attr as zero-filled.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for `BPF_LINK_CREATE`, up to `flags`.
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// `union bpf_attr` for `BPF_OBJ_PIN`.
#[repr(C)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// A failed step of the device-bound load, for the log before falling back.
#[derive(Debug, thiserror::Error)]
pub(super) enum DevBoundError {
    #[error("parsing the device-bound object")]
    Parse(#[source] Box<aya_obj::ParseError>),
    #[error("opening the pinned map {name}")]
    Map {
        name: String,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("relocating the device-bound object")]
    Relocate(#[source] Box<aya_obj::relocation::EbpfRelocationError>),
    #[error("the object has no program {0}")]
    Missing(&'static str),
    #[error("finding {KFUNC_RX_VLAN_TAG} in the kernel's BTF")]
    Kfunc(#[source] Box<aya_obj::btf::BtfError>),
    #[error("{call} failed{log}")]
    Syscall {
        call: &'static str,
        log: String,
        #[source]
        source: io::Error,
    },
}

impl DevBoundError {
    /// EBUSY or EEXIST from attaching: another program holds the interface.
    pub(super) fn is_busy(&self) -> bool {
        matches!(self, DevBoundError::Syscall { call: "BPF_LINK_CREATE", source, .. }
            if matches!(source.raw_os_error(), Some(libc::EBUSY) | Some(libc::EEXIST)))
    }
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: attr is a valid, initialised bpf_attr prefix of the size
    // passed; the kernel reads it (and for PROG_LOAD writes the log buffer
    // it points to, which outlives the call).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut T).cast::<libc::c_void>(),
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// A `bpf(2)` command that returns a new descriptor (PROG_LOAD, LINK_CREATE).
fn bpf_fd<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    let fd = bpf(cmd, attr)?;
    // SAFETY: on success these commands return a new descriptor that nobody
    // else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Loads the device-bound program for `ifindex` with its maps taken from
/// the pins in `pin_dir` (named as in the object), attaches it in native
/// mode and pins the link at `link_path`. The link stays attached while
/// the pin exists.
pub(super) fn attach(
    ifindex: u32,
    pin_dir: &Path,
    program: &'static str,
    link_path: &Path,
) -> Result<(), DevBoundError> {
    let mut obj =
        aya_obj::Object::parse(DEVBOUND_OBJ).map_err(|e| DevBoundError::Parse(Box::new(e)))?;

    // The same maps as the aya-loaded build: open their pins.
    let defs: Vec<(String, aya_obj::Map)> = obj
        .maps
        .iter()
        .map(|(name, map)| (name.clone(), map.clone()))
        .collect();
    let mut fds = Vec::with_capacity(defs.len());
    for (name, _) in &defs {
        let data = MapData::from_pin(pin_dir.join(name)).map_err(|source| DevBoundError::Map {
            name: name.clone(),
            source: Box::new(source),
        })?;
        fds.push(data);
    }
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    obj.relocate_maps(
        defs.iter()
            .zip(&fds)
            .map(|((name, def), data)| (name.as_str(), data.fd().as_fd().as_raw_fd(), def)),
        &text_sections,
    )
    .map_err(|e| DevBoundError::Relocate(Box::new(e)))?;
    obj.relocate_calls(&text_sections)
        .map_err(|e| DevBoundError::Relocate(Box::new(e)))?;
    let key = obj
        .programs
        .get(program)
        .ok_or(DevBoundError::Missing(program))?
        .function_key();
    let function = obj
        .functions
        .get_mut(&key)
        .ok_or(DevBoundError::Missing(program))?;

    let btf = Btf::from_sys_fs().map_err(|e| DevBoundError::Kfunc(Box::new(e)))?;
    let kfunc = btf
        .id_by_type_name_kind(KFUNC_RX_VLAN_TAG, BtfKind::Func)
        .map_err(|e| DevBoundError::Kfunc(Box::new(e)))?;
    for insn in &mut function.instructions {
        if insn.code == BPF_JMP_CALL && insn.src_reg() == 0 && insn.imm == KFUNC_PLACEHOLDER {
            insn.set_src_reg(BPF_PSEUDO_KFUNC_CALL);
            insn.imm = kfunc as i32;
            insn.off = 0; // vmlinux's BTF
        }
    }

    let license = CString::new("GPL").expect("no NUL");
    let mut name = [0u8; 16];
    for (dst, src) in name.iter_mut().zip(program.bytes().take(15)) {
        *dst = src;
    }
    let load = |log: &mut [u8]| {
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: function.instructions.len() as u32,
            insns: function.instructions.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: u32::from(!log.is_empty()),
            log_size: log.len() as u32,
            log_buf: log.as_mut_ptr() as u64,
            prog_flags: BPF_F_XDP_DEV_BOUND_ONLY,
            prog_name: name,
            prog_ifindex: ifindex,
            expected_attach_type: BPF_XDP,
            ..ProgLoadAttr::default()
        };
        bpf_fd(BPF_PROG_LOAD, &mut attr)
    };
    let prog = match load(&mut []) {
        Ok(fd) => fd,
        Err(_) => {
            // Again with the verifier's log, to say why.
            let mut log = vec![0u8; 64 * 1024];
            match load(&mut log) {
                Ok(fd) => fd,
                Err(source) => {
                    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                    let text = String::from_utf8_lossy(&log[..end]);
                    let tail: String = text.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
                    return Err(DevBoundError::Syscall {
                        call: "BPF_PROG_LOAD",
                        log: format!(" (verifier: {tail})"),
                        source,
                    });
                }
            }
        }
    };

    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags: XDP_FLAGS_DRV_MODE,
    };
    let link = bpf_fd(BPF_LINK_CREATE, &mut attr).map_err(|source| DevBoundError::Syscall {
        call: "BPF_LINK_CREATE",
        log: String::new(),
        source,
    })?;
    pin(&link, link_path)
    // Dropping `link` and `prog` here leaves the pin as the link's only
    // holder: it stays attached until the pin is removed.
}

fn pin(fd: &OwnedFd, path: &Path) -> Result<(), DevBoundError> {
    use std::os::unix::ffi::OsStrExt as _;
    let syscall = |source| DevBoundError::Syscall {
        call: "BPF_OBJ_PIN",
        log: String::new(),
        source,
    };
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| syscall(io::Error::from(io::ErrorKind::InvalidInput)))?;
    let mut attr = ObjPinAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
    };
    bpf(BPF_OBJ_PIN, &mut attr).map_err(syscall)?;
    Ok(())
}
