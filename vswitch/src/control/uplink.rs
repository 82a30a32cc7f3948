//! Uplinks: existing interfaces the switch shares with the host. Each is
//! attached once (XDP program plus one AF_XDP socket per receive queue),
//! whatever number of networks use it, one VLAN each.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::datapath::{Datapath, PortCounters, TrunkId, TrunkSpec};
use crate::ebpf::EbpfError;
use crate::ebpf::{ensure_bpffs, UplinkProgram, XdpMode};
use crate::netns::netlink::{Netlink, NetlinkError};
use crate::port::afxdp::XskPort;
use crate::port::packet::SuperFrameTx;
use crate::port::PortIo;
use crate::wire::MacAddr;

/// An attached uplink interface.
pub struct Uplink {
    pub ifname: String,
    pub ifindex: u32,
    pub mac: MacAddr,
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
fn addresses(ifname: &str) -> Vec<(IpAddr, u8)> {
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

/// Attaches the XDP program and one AF_XDP socket per receive queue, and
/// hands the sockets to the datapath as trunk `trunk`.
pub fn attach(ifname: &str, trunk: TrunkId, datapath: &Datapath) -> Result<Uplink, UplinkError> {
    let facts = inspect(ifname)?;
    let fail = |step: &'static str, e: &dyn std::fmt::Display| UplinkError::Attach {
        step,
        ifname: ifname.to_owned(),
        reason: e.to_string(),
    };
    ensure_bpffs().map_err(|e| fail("mounting bpffs", &e))?;
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
        let counters = Arc::new(PortCounters::default());
        datapath
            .add_trunk(TrunkSpec {
                id: trunk,
                queues: sockets,
                super_frames,
                counters: counters.clone(),
            })
            .map_err(|e| fail("adding to the datapath", &e))?;
        Ok(counters)
    })();
    match result {
        Ok(counters) => {
            tracing::info!(ifname, mode = %program.mode(), "uplink attached");
            Ok(Uplink {
                ifname: ifname.to_owned(),
                ifindex: facts.index,
                mac: facts.mac,
                program,
                trunk,
                counters,
                users: 0,
                nat_ports: Vec::new(),
            })
        }
        Err(e) => {
            let _ = program.detach();
            Err(e)
        }
    }
}

impl Uplink {
    pub fn mode(&self) -> XdpMode {
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

    /// Stops using the interface: the datapath closes the sockets, and the
    /// program is detached (or, with `keep_program`, left pinned for the
    /// next daemon, passing everything to the host meanwhile).
    pub fn release(self, datapath: &Datapath, keep_program: bool) {
        let _ = datapath.remove_trunk(self.trunk);
        if keep_program {
            return;
        }
        match self.program.detach() {
            Ok(()) => tracing::info!(ifname = %self.ifname, "uplink detached"),
            Err(e) => tracing::warn!(ifname = %self.ifname, error = %e, "could not detach XDP"),
        }
    }
}

/// Largest MTU of a network with an uplink: a tagged frame must fit one
/// AF_XDP chunk.
pub const MAX_MTU: u32 = crate::port::afxdp::MAX_FRAME_LEN as u32 - 22;
