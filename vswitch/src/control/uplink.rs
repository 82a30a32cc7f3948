//! Uplinks: existing interfaces the switch shares with the host. Each is
//! attached once, whatever number of networks use it, one VLAN each, in
//! one of two I/O modes ([`UplinkIo`]):
//!
//! - `afxdp`: the XDP steering program plus one AF_XDP socket per receive
//!   queue; super-frames leave through a packet socket. The mode for NICs,
//!   whose drivers do zero-copy AF_XDP.
//! - `tc`: the steering program on the uplink's tcx ingress, redirecting
//!   the switch's frames to the uplink's punt TAP (`vsu…`, persistent, in
//!   the daemon's namespace), which is the trunk's only queue and its
//!   super-frame port: GSO super-frames arrive and leave whole. The default
//!   for veth uplinks, where AF_XDP is copy mode only and XDP on the veth
//!   costs every skb its GSO.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use super::plumb;
use crate::datapath::{Datapath, PortCounters, TrunkId, TrunkSpec};
use crate::ebpf::EbpfError;
use crate::ebpf::{ensure_bpffs, UplinkHook, UplinkProgram};
use crate::netns::netlink::{Netlink, NetlinkError};
use crate::port::afxdp::XskPort;
use crate::port::packet::SuperFrameTx;
use crate::port::PortIo;
use crate::wire::MacAddr;

/// How an uplink hands frames to the switch and takes them back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UplinkIo {
    /// XDP steering to AF_XDP sockets.
    Afxdp,
    /// TC steering to the uplink's punt TAP.
    Tc,
}

impl UplinkIo {
    pub fn name(self) -> &'static str {
        match self {
            UplinkIo::Afxdp => "afxdp",
            UplinkIo::Tc => "tc",
        }
    }

    pub fn parse(text: &str) -> Option<UplinkIo> {
        match text {
            "afxdp" => Some(UplinkIo::Afxdp),
            "tc" => Some(UplinkIo::Tc),
            _ => None,
        }
    }

    /// The mode for an interface of driver `kind` (netlink's
    /// IFLA_INFO_KIND; none for a NIC): tc for a veth, whose AF_XDP is
    /// copy mode only and which loses GSO with XDP attached; afxdp for the
    /// rest, where zero-copy AF_XDP is the better path.
    pub fn default_for(kind: Option<&str>) -> UplinkIo {
        match kind {
            Some("veth") => UplinkIo::Tc,
            _ => UplinkIo::Afxdp,
        }
    }
}

impl std::fmt::Display for UplinkIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The name of `uplink`'s punt TAP: short enough for any uplink name, and
/// the same across restarts, so the next daemon takes it back.
pub fn punt_tap_name(uplink: &str) -> String {
    let hash = uplink.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("vsu{hash:08x}")
}

/// An attached uplink interface.
pub struct Uplink {
    pub ifname: String,
    pub ifindex: u32,
    pub mac: MacAddr,
    pub io: UplinkIo,
    /// tc mode: the punt TAP's name.
    pub punt_tap: Option<String>,
    pub program: UplinkProgram,
    pub trunk: TrunkId,
    /// Wire-side counters; `failed` is set when the interface disappears.
    pub counters: Arc<PortCounters>,
    /// Networks using it.
    pub users: usize,
    /// The port mappings steered to the switch (nat networks).
    pub nat_ports: Vec<(u8, u16)>,
}

/// What the kernel says about an interface that is to become an uplink.
pub struct InterfaceFacts {
    pub index: u32,
    pub mac: MacAddr,
    pub mtu: u32,
    pub rx_queues: u32,
    /// Its driver (netlink's IFLA_INFO_KIND, e.g. "veth"); none for a NIC.
    pub kind: Option<String>,
    /// The host's own addresses on it.
    pub addrs: Vec<IpAddr>,
    /// Its IPv4 addresses with their prefix lengths (on-link subnets).
    pub prefixes4: Vec<(Ipv4Addr, u8)>,
}

impl InterfaceFacts {
    pub fn ipv4(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.addrs.iter().filter_map(|ip| match ip {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
    }

    pub fn ipv6(&self) -> impl Iterator<Item = Ipv6Addr> + '_ {
        self.addrs.iter().filter_map(|ip| match ip {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        })
    }
}

/// Why an interface cannot be, or stay, an uplink.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("no interface named '{0}' in vswitchd's network namespace")]
    NotFound(String),
    #[error("'{0}' is the loopback interface; an uplink must reach a network")]
    Loopback(String),
    #[error("'{0}' is a TAP device; an uplink must be a NIC, veth, bond or VLAN interface")]
    Tap(String),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// A step of attaching the interface failed.
    #[error("{step} on '{ifname}': {reason}")]
    Attach {
        step: &'static str,
        ifname: String,
        reason: String,
    },
    /// Steering an endpoint's frames to the switch failed.
    #[error(transparent)]
    Steer(#[from] EbpfError),
}

/// Checks that `ifname` exists in the daemon's namespace and can be an
/// uplink, and reads its MAC, MTU and IPv4 addresses.
pub fn inspect(ifname: &str) -> Result<InterfaceFacts, UplinkError> {
    let mut nl = Netlink::open()?;
    let info = nl
        .link_info(ifname)?
        .ok_or_else(|| UplinkError::NotFound(ifname.to_owned()))?;
    if info.flags & libc::IFF_LOOPBACK as u32 != 0 {
        return Err(UplinkError::Loopback(ifname.to_owned()));
    }
    if info.kind.as_deref() == Some("tun") {
        return Err(UplinkError::Tap(ifname.to_owned()));
    }
    Ok(InterfaceFacts {
        index: info.index,
        mac: MacAddr(info.mac),
        mtu: info.mtu,
        rx_queues: info.rx_queues,
        kind: info.kind.clone(),
        addrs: addresses(ifname).into_iter().map(|(ip, _)| ip).collect(),
        prefixes4: addresses(ifname)
            .into_iter()
            .filter_map(|(ip, len)| match ip {
                IpAddr::V4(v4) => Some((v4, len)),
                IpAddr::V6(_) => None,
            })
            .collect(),
    })
}

/// The IPv4 and IPv6 addresses on an interface of the calling thread's
/// namespace, with their prefix lengths.
pub(super) fn addresses(ifname: &str) -> Vec<(IpAddr, u8)> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned, alive until
        // freeifaddrs; its name is a NUL-terminated string, and a non-null
        // ifa_addr points at a sockaddr_in or sockaddr_in6 as its family says.
        unsafe {
            let ifa = &*cur;
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name);
            if name.to_bytes() == ifname.as_bytes() && !ifa.ifa_addr.is_null() {
                match i32::from((*ifa.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        let len = if ifa.ifa_netmask.is_null() {
                            32
                        } else {
                            let mask = &*(ifa.ifa_netmask as *const libc::sockaddr_in);
                            u32::from_be(mask.sin_addr.s_addr).count_ones() as u8
                        };
                        out.push((
                            IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))),
                            len,
                        ));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        out.push((IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)), 128));
                    }
                    _ => {}
                }
            }
            cur = ifa.ifa_next;
        }
    }
    // SAFETY: head came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// Attaches the interface in I/O mode `io` (by default, the one for its
/// driver, see [`UplinkIo::default_for`]) and hands its queues to the
/// datapath as trunk `trunk`.
pub fn attach(
    ifname: &str,
    trunk: TrunkId,
    datapath: &Datapath,
    io: Option<UplinkIo>,
) -> Result<Uplink, UplinkError> {
    let facts = inspect(ifname)?;
    let io = io.unwrap_or_else(|| UplinkIo::default_for(facts.kind.as_deref()));
    let fail = |step: &'static str, e: &dyn std::fmt::Display| UplinkError::Attach {
        step,
        ifname: ifname.to_owned(),
        reason: e.to_string(),
    };
    ensure_bpffs().map_err(|e| fail("mounting bpffs", &e))?;
    if io == UplinkIo::Tc {
        return attach_tc(ifname, &facts, trunk, datapath);
    }
    let mut program = UplinkProgram::attach(ifname).map_err(|e| fail("attaching XDP", &e))?;
    let result = (|| {
        // One socket per receive queue in use: the XDP program redirects a
        // frame to the socket of the queue it arrived on. Netlink gives the
        // queues allocated, not those in use (sysfs would, but shows the
        // namespace it was mounted in), so bind until the kernel refuses.
        let mut sockets: Vec<Box<dyn PortIo>> = Vec::new();
        for q in 0..facts.rx_queues {
            let xsk = match XskPort::open(ifname, q) {
                Ok(xsk) => xsk,
                Err(e) if q > 0 => {
                    tracing::debug!(ifname, queue = q, error = %e, "last receive queue reached");
                    break;
                }
                Err(e) => return Err(fail("opening AF_XDP socket", &e)),
            };
            program
                .register_xsk(q, xsk.raw_fd())
                .map_err(|e| fail("registering AF_XDP socket", &e))?;
            sockets.push(Box::new(xsk));
        }
        // Super-frames leave whole through a packet socket when one can be
        // had (see port::packet); otherwise the datapath segments them.
        let super_frames: Option<Box<dyn PortIo>> = match SuperFrameTx::open(ifname, facts.index) {
            Ok(tx) => Some(Box::new(tx)),
            Err(e) => {
                tracing::warn!(ifname, error = %e, "super-frames will be segmented in software");
                None
            }
        };
        add_trunk(datapath, trunk, sockets, super_frames)
            .map_err(|e| fail("adding to the datapath", &e))
    })();
    match result {
        Ok(counters) => {
            tracing::info!(ifname, io = %io, mode = %program.mode(), "uplink attached");
            Ok(Uplink::new(
                ifname, &facts, io, None, program, trunk, counters,
            ))
        }
        Err(e) => {
            let _ = program.detach();
            Err(e)
        }
    }
}

/// tc mode: the punt TAP (made, or taken back after a restart), the TC
/// programs on it and the uplink, and the TAP as the trunk's queue and
/// super-frame port. Undoes its own steps on failure.
fn attach_tc(
    ifname: &str,
    facts: &InterfaceFacts,
    trunk: TrunkId,
    datapath: &Datapath,
) -> Result<Uplink, UplinkError> {
    let fail = |step: &'static str, e: &dyn std::fmt::Display| UplinkError::Attach {
        step,
        ifname: ifname.to_owned(),
        reason: e.to_string(),
    };
    let punt = punt_tap_name(ifname);
    let tap =
        plumb::uplink_punt_tap(&punt, facts.mtu).map_err(|e| fail("making the punt TAP", &e))?;
    let mut program =
        UplinkProgram::attach_tc(ifname, &punt).map_err(|e| fail("attaching TC", &e))?;
    let result = (|| {
        // One descriptor reads and writes wire-sized frames, the other
        // writes super-frames: the same device, so nothing is segmented.
        let whole = tap
            .try_clone()
            .map_err(|e| fail("opening the punt TAP", &e))?;
        add_trunk(datapath, trunk, vec![Box::new(tap)], Some(Box::new(whole)))
            .map_err(|e| fail("adding to the datapath", &e))
    })();
    match result {
        Ok(counters) => {
            tracing::info!(ifname, io = %UplinkIo::Tc, punt = %punt, "uplink attached");
            Ok(Uplink::new(
                ifname,
                facts,
                UplinkIo::Tc,
                Some(punt),
                program,
                trunk,
                counters,
            ))
        }
        Err(e) => {
            let _ = program.clear_punt();
            let _ = program.detach();
            plumb::delete_host_tap(&punt);
            Err(e)
        }
    }
}

/// Adds trunk `trunk` to the datapath: its queues and the port its
/// super-frames leave through, counted by fresh counters (returned).
fn add_trunk(
    datapath: &Datapath,
    trunk: TrunkId,
    queues: Vec<Box<dyn PortIo>>,
    super_frames: Option<Box<dyn PortIo>>,
) -> std::io::Result<Arc<PortCounters>> {
    let counters = Arc::new(PortCounters::default());
    datapath.add_trunk(TrunkSpec {
        id: trunk,
        queues,
        super_frames,
        counters: counters.clone(),
    })?;
    Ok(counters)
}

impl Uplink {
    /// An uplink just attached, used by no network yet.
    fn new(
        ifname: &str,
        facts: &InterfaceFacts,
        io: UplinkIo,
        punt_tap: Option<String>,
        program: UplinkProgram,
        trunk: TrunkId,
        counters: Arc<PortCounters>,
    ) -> Uplink {
        Uplink {
            ifname: ifname.to_owned(),
            ifindex: facts.index,
            mac: facts.mac,
            io,
            punt_tap,
            program,
            trunk,
            counters,
            users: 0,
            nat_ports: Vec::new(),
        }
    }

    /// Where the steering runs (XDP native or generic, or tc).
    pub fn hook(&self) -> UplinkHook {
        self.program.mode()
    }

    /// Why the uplink no longer works, if it does not.
    pub fn fault(&self) -> Option<String> {
        let gone = || format!("uplink interface '{}' is gone", self.ifname);
        if self.counters.has_failed() {
            return Some(gone());
        }
        match Netlink::open().and_then(|mut nl| nl.link_info(&self.ifname)) {
            Ok(Some(info)) if info.index == self.ifindex => None,
            Ok(_) => Some(gone()),
            Err(_) => None,
        }
    }

    /// Steers an endpoint's frames to the switch.
    /// With `kernel`, the endpoint's unicast IP frames are left to the
    /// kernel fast path (a veth endpoint without policy); setting it again
    /// replaces the flag.
    pub fn steer(
        &mut self,
        vlan: u16,
        mac: Option<MacAddr>,
        ips: &[IpAddr],
        kernel: bool,
    ) -> Result<(), UplinkError> {
        if let Some(mac) = mac {
            self.program.add_mac(vlan, mac.0, kernel)?;
        }
        for ip in ips {
            self.program.add_ip(vlan, *ip, kernel)?;
        }
        Ok(())
    }

    pub fn unsteer(&mut self, vlan: u16, mac: Option<MacAddr>, ips: &[IpAddr]) {
        if let Some(mac) = mac {
            let _ = self.program.remove_mac(vlan, mac.0);
        }
        for ip in ips {
            let _ = self.program.remove_ip(vlan, *ip);
        }
    }

    /// Stops using the interface: the datapath closes the sockets (or the
    /// punt TAP), and the program is detached and the punt TAP deleted (or,
    /// with `keep_program`, both left for the next daemon, the program
    /// passing everything to the host meanwhile).
    pub fn release(mut self, datapath: &Datapath, keep_program: bool) {
        let _ = datapath.remove_trunk(self.trunk);
        if keep_program {
            if let Err(e) = self.program.clear_punt() {
                tracing::warn!(ifname = %self.ifname, error = %e, "could not hand the uplink's frames to the host");
            }
            return;
        }
        match self.program.detach() {
            Ok(()) => tracing::info!(ifname = %self.ifname, "uplink detached"),
            Err(e) => {
                tracing::warn!(ifname = %self.ifname, error = %e, "could not detach the steering program")
            }
        }
        if let Some(punt) = &self.punt_tap {
            plumb::delete_host_tap(punt);
        }
    }
}

/// Largest MTU of a network with an uplink: a tagged frame must fit one
/// AF_XDP chunk.
pub const MAX_MTU: u32 = crate::port::afxdp::MAX_FRAME_LEN as u32 - 22;
