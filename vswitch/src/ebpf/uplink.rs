//! The uplink steering program (`xdp-prog/uplink.bpf.c`) and its maps.
//!
//! Contract: once attached, frames for registered endpoint MACs, and unicast
//! IP / ARP / neighbour solicitations for registered endpoint IPs, go to the
//! AF_XDP socket registered for the receive queue; everything else goes to
//! the host stack, as does an endpoint frame arriving on a queue with no
//! socket.
//!
//! NAT (nat mode): for an IPv4 address of the uplink given to
//! [`UplinkProgram::set_nat_range`], unicast IPv4 to it goes to the switch
//! when it is TCP/UDP to a port in the range or added with
//! [`UplinkProgram::add_nat_port`], an ICMP echo reply with an id in the
//! range, or an ICMP unreachable / time exceeded / parameter problem quoting
//! a packet sent from that address with such a source port or echo request
//! id. Everything else to the address (other ports, ARP, fragments after the
//! first, which carry no ports) stays the host's.
//!
//! Lifetime: the attachment is a BPF link pinned at
//! `/sys/fs/bpf/vswitch/<ifname>/link`, with the maps pinned beside it for
//! inspection (`bpftool map dump pinned ...`). Dropping an [`UplinkProgram`]
//! leaves the program attached; the sockets close with the process, so it
//! then hands every frame to the host. [`UplinkProgram::detach`] removes it.
//!
//! A previous instance's program is *replaced, not taken over*: `attach`
//! unpins the old link (which detaches it once no process holds it) and
//! attaches a fresh program. Taking over would keep the old maps and mode,
//! but there is nothing to keep: the old sockets are gone (the old program
//! was passing everything to the host, as no program does), the daemon
//! re-registers endpoints (and NAT ranges and ports) from its state, and
//! attaching fresh re-probes the mode and guarantees the map layouts match
//! this loader.
//!
//! VLANs: the VID is read from the 802.1Q tag in the frame, or, where the
//! driver keeps the tag out of band (a veth whose peer has TX VLAN offload,
//! the default; a NIC stripping tags) and implements the
//! `bpf_xdp_metadata_rx_vlan_tag` kfunc, from the driver: then the program
//! is the device-bound build (see `devbound.rs`, loaded without aya), which
//! also puts the tag back into each frame it hands the switch. Where the
//! device-bound build cannot be loaded (generic mode, an old kernel), the
//! plain build runs and a NIC that strips tags needs `ethtool -K IF rxvlan
//! off`. Only one 802.1Q (0x8100) tag is parsed: 802.1ad (0x88a8) frames
//! are looked up as untagged, and stacked tags by their outer VID, both by
//! destination MAC only.
//!
//! TC mode ([`UplinkProgram::attach_tc`], for veth uplinks): the same
//! steering, built as a TC program (`-DUPLINK_TC`), runs on the uplink's
//! tcx ingress, last, behind the kernel fast path's program (which goes
//! first and hands on what it does not deliver). The skb keeps its GSO,
//! which XDP on a veth would cost. "The switch" is then the uplink's punt
//! TAP, whose ifindex is in the one-entry `tc_ports` map, and the program's
//! second half runs on the punt TAP's tcx ingress, sending what the switch
//! writes there out of the uplink. With no punt TAP set (see
//! [`UplinkProgram::clear_punt`]) frames for the switch go to the host, as
//! with no AF_XDP socket. Both links are pinned beside the maps
//! (`tc_link`, `inject_link`); an attach in either mode first removes every
//! link pinned in the directory, so one uplink never has two steering
//! programs.
//!
//! Pins are named by interface only, so an uplink name must be unique across
//! the network namespaces of one bpffs (the daemon's uplinks live in its own
//! namespace).

use crate::sys::error_chain;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, XskMap};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifier, TcAttachOptions, TcAttachType};
use aya::programs::{LinkOrder, Program, ProgramError, Xdp};
use aya::Ebpf;

use super::{ensure_bpffs, EbpfError, PIN_ROOT};
use crate::ifname::IfName;

static UPLINK_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/uplink.bpf.o"));
static UPLINK_TC_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/uplink_tc.bpf.o"));

const PROGRAM: &str = "vswitch_uplink";
/// The TC build's steering program (uplink tcx ingress) and its inject
/// program (punt TAP tcx ingress).
const PROGRAM_TC: &str = "vswitch_uplink_tc";
const PROGRAM_INJECT: &str = "vswitch_uinject";
const MAP_XSKS: &str = "xsks";
const MAP_TC_PORTS: &str = "tc_ports";
const MAP_MACS: &str = "endpoint_macs";
const MAP_IPS: &str = "endpoint_ips";
const MAP_NAT_RANGES: &str = "nat_ranges";
const MAP_NAT_PORTS: &str = "nat_ports";
const MAP_STATS: &str = "stats";
const LINK_PIN: &str = "link";
const LINK_TC_PIN: &str = "tc_link";
const LINK_INJECT_PIN: &str = "inject_link";

/// `struct uplink_mac_key` (xdp-prog/uplink.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
struct MacKey {
    vlan: u16,
    mac: [u8; 6],
}

/// `struct uplink_ip_key` (xdp-prog/uplink.h): IPv4 in `addr[..4]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
struct IpKey {
    vlan: u16,
    family: u8,
    pad: u8,
    addr: [u8; 16],
}

/// `struct uplink_nat_key` (xdp-prog/uplink.h): `addr` in network order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
struct NatKey {
    vlan: u16,
    pad: [u8; 2],
    addr: [u8; 4],
}

/// `struct uplink_nat_range` (xdp-prog/uplink.h): host byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
struct NatRange {
    lo: u16,
    hi: u16,
}

/// `struct uplink_nat_port_key` (xdp-prog/uplink.h): `port` in host byte
/// order, `addr` in network order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
struct NatPortKey {
    vlan: u16,
    proto: u8,
    pad: u8,
    port: u16,
    pad2: [u8; 2],
    addr: [u8; 4],
}

/// `struct uplink_tc_ports` (xdp-prog/uplink.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
struct TcPorts {
    uplink: u32,
    punt: u32,
}

const _: () = assert!(std::mem::size_of::<TcPorts>() == 8);
const _: () = assert!(std::mem::size_of::<MacKey>() == 8);
const _: () = assert!(std::mem::size_of::<IpKey>() == 20);
const _: () = assert!(std::mem::size_of::<NatKey>() == 8);
const _: () = assert!(std::mem::size_of::<NatRange>() == 4);
const _: () = assert!(std::mem::size_of::<NatPortKey>() == 12);

// SAFETY: all are #[repr(C)] with only integer fields and no implicit
// padding (sizes asserted above), so every byte pattern is a valid value.
unsafe impl aya::Pod for MacKey {}
// SAFETY: as for MacKey.
unsafe impl aya::Pod for IpKey {}
// SAFETY: as for MacKey.
unsafe impl aya::Pod for NatKey {}
// SAFETY: as for MacKey.
unsafe impl aya::Pod for NatRange {}
// SAFETY: as for MacKey.
unsafe impl aya::Pod for NatPortKey {}
// SAFETY: as for MacKey.
unsafe impl aya::Pod for TcPorts {}

/// The datapath's handle on a nat network's echo identifiers in the XDP
/// program's `nat_ports` map.
pub struct EchoIds {
    map: HashMap<MapData, NatPortKey, u32>,
    vlan: u16,
    addr: Ipv4Addr,
}

impl EchoIds {
    /// Replies with identifier `id` go to the switch.
    pub fn add(&mut self, id: u16) -> Result<(), MapError> {
        let key = nat_port_key(self.vlan, self.addr, libc::IPPROTO_ICMP as u8, id);
        self.map.insert(key, 0, 0)
    }

    pub fn remove(&mut self, id: u16) -> Result<(), MapError> {
        let key = nat_port_key(self.vlan, self.addr, libc::IPPROTO_ICMP as u8, id);
        ignore_missing(self.map.remove(&key))
    }
}

/// `UPLINK_FAMILY_*` (xdp-prog/uplink.h).
const FAMILY_IPV4: u8 = 4;
const FAMILY_IPV6: u8 = 6;

/// `enum uplink_stat` (xdp-prog/uplink.h); never renumbered.
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
enum UplinkStat {
    Redirected = 0,
    Passed = 1,
    Malformed = 2,
    NoSocket = 3,
    VlanRestored = 4,
    Nat = 5,
    Kernel = 6,
    Injected = 7,
}

/// `UPLINK_STAT_MAX`.
const STAT_COUNT: u32 = 8;
const _: () = assert!(UplinkStat::Injected as u32 + 1 == STAT_COUNT);

/// `UPLINK_EP_KERNEL`: the endpoint value flag for veth endpoints the
/// kernel fast path delivers to.
const EP_KERNEL: u32 = 1;

/// How the program runs on the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver, before an skb exists.
    Native,
    /// In the core stack on the skb (any interface; slower).
    Generic,
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        })
    }
}

/// Where the steering runs on the uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UplinkHook {
    /// XDP, handing the switch's frames to AF_XDP sockets.
    Xdp(XdpMode),
    /// tcx ingress, handing them to the uplink's punt TAP.
    Tc,
}

impl UplinkHook {
    pub fn xdp_mode(self) -> Option<XdpMode> {
        match self {
            UplinkHook::Xdp(mode) => Some(mode),
            UplinkHook::Tc => None,
        }
    }
}

impl fmt::Display for UplinkHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UplinkHook::Xdp(mode) => mode.fmt(f),
            UplinkHook::Tc => f.write_str("tc"),
        }
    }
}

/// The program's counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpStats {
    /// Frames handed to an AF_XDP socket.
    pub redirected: u64,
    /// Frames left to the host (not for an endpoint).
    pub passed: u64,
    /// Frames too short for their headers (left to the host).
    pub malformed: u64,
    /// Endpoint frames left to the host because no socket was registered on
    /// their receive queue.
    pub no_socket: u64,
    /// Frames for the switch whose VLAN tag the driver had out of band, put
    /// back into the frame (device-bound program only).
    pub vlan_restored: u64,
    /// Frames of translated flows (replies, connections to static mappings,
    /// ICMP errors about them) steered to the switch. Counted when decided,
    /// so also in `redirected` or, with no socket on the queue, `no_socket`.
    pub nat: u64,
    /// Unicast IP frames for veth endpoints, left to the TC fast path.
    pub kernel: u64,
    /// TC mode: frames the switch wrote to the punt TAP, sent out of the
    /// uplink.
    pub injected: u64,
}

/// The steering program attached to one uplink. See the module docs.
pub struct UplinkProgram {
    ifname: String,
    mode: UplinkHook,
    /// The device-bound build runs: VLAN tags the driver keeps out of band
    /// are seen. (TC mode sees them always.)
    vlan_metadata: bool,
    pin_dir: PathBuf,
    /// The steering program's link (XDP, or tcx on the uplink).
    link: PinnedLink,
    /// TC mode: the inject program's link on the punt TAP.
    inject: Option<PinnedLink>,
    /// TC mode only.
    tc_ports: Option<Array<MapData, TcPorts>>,
    maps: PinnedMaps,
    /// Owns the loaded program; dropping it leaves the pinned link attached.
    _ebpf: Ebpf,
}

impl fmt::Debug for UplinkProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UplinkProgram")
            .field("ifname", &self.ifname)
            .field("mode", &self.mode)
            .field("vlan_metadata", &self.vlan_metadata)
            .field("pin_dir", &self.pin_dir)
            .finish_non_exhaustive()
    }
}

impl UplinkProgram {
    /// Loads the program and attaches it to `ifname` (in the calling thread's
    /// network namespace): native (driver) mode if the driver supports it,
    /// generic (skb) otherwise. Replaces a program a previous instance left
    /// pinned (see the module docs).
    pub fn attach(ifname: &str) -> Result<UplinkProgram, EbpfError> {
        // The name also names the pin directory: checked before either.
        IfName::checked(ifname)?;
        let ifindex = if_index(ifname)?;
        let pin_dir = fresh_pin_dir(ifname)?;
        unpinned_on_error(pin_dir, |pin_dir| {
            UplinkProgram::load_pinned(ifname, ifindex, pin_dir)
        })
    }

    /// Loads the TC build and attaches it: steering on the tcx ingress of
    /// `ifname` (last on the hook), inject on that of `punt`, the uplink's
    /// punt TAP (both in the calling thread's namespace). Replaces what a
    /// previous instance left pinned, in either mode (see the module docs).
    pub fn attach_tc(ifname: &str, punt: &str) -> Result<UplinkProgram, EbpfError> {
        IfName::checked(ifname)?;
        IfName::checked(punt)?;
        let ifindex = if_index(ifname)?;
        let punt_index = if_index(punt)?;
        let pin_dir = fresh_pin_dir(ifname)?;
        // A vswitchd still running holds its link open: unpinning did not
        // detach it, and two steering programs must not run.
        if steering_on_tcx(ifname) {
            return Err(EbpfError::ForeignProgram {
                ifname: ifname.to_string(),
            });
        }
        unpinned_on_error(pin_dir, |pin_dir| {
            UplinkProgram::load_pinned_tc(ifname, ifindex, punt, punt_index, pin_dir)
        })
    }

    fn load_pinned_tc(
        ifname: &str,
        ifindex: u32,
        punt: &str,
        punt_index: u32,
        pin_dir: PathBuf,
    ) -> Result<UplinkProgram, EbpfError> {
        let mut ebpf = Ebpf::load(UPLINK_TC_OBJ).map_err(|source| EbpfError::Parse {
            program: PROGRAM_TC,
            source: Box::new(source),
        })?;
        for name in [PROGRAM_TC, PROGRAM_INJECT] {
            program::<SchedClassifier>(&mut ebpf, name)?
                .load()
                .map_err(load_error(name))?;
        }
        let maps = PinnedMaps::take(&mut ebpf, &pin_dir, false)?;
        let mut tc_ports: Array<MapData, TcPorts> =
            Array::try_from(pin_map(&mut ebpf, &pin_dir, MAP_TC_PORTS)?)
                .map_err(|e| typed(MAP_TC_PORTS, e))?;
        tc_ports
            .set(
                0,
                TcPorts {
                    uplink: ifindex,
                    punt: punt_index,
                },
                0,
            )
            .map_err(|source| EbpfError::Map {
                map: MAP_TC_PORTS,
                op: "setting the uplink and punt TAP",
                source: Box::new(source),
            })?;

        // The inject side first: steering sends the switch frames only once
        // the way back exists. Links are pinned only when both are attached
        // (until then, dropping one detaches it).
        let inject = attach_tcx(&mut ebpf, PROGRAM_INJECT, punt, LinkOrder::default())?;
        // Last on the hook: the fast path's program (first) delivers to veth
        // endpoints before steering sees the frame, whichever attaches first.
        let steering = attach_tcx(&mut ebpf, PROGRAM_TC, ifname, LinkOrder::last())?;
        let inject = pin_link(inject, &pin_dir.join(LINK_INJECT_PIN))?;
        let link = pin_link(steering, &pin_dir.join(LINK_TC_PIN))?;

        tracing::info!(ifname, punt, pin = %pin_dir.display(), "attached the uplink TC programs");
        Ok(UplinkProgram {
            ifname: ifname.to_string(),
            mode: UplinkHook::Tc,
            vlan_metadata: true,
            pin_dir,
            link,
            inject: Some(inject),
            tc_ports: Some(tc_ports),
            maps,
            _ebpf: ebpf,
        })
    }

    /// Loads the program, pins its maps in `pin_dir`, attaches it and pins
    /// the link.
    fn load_pinned(
        ifname: &str,
        ifindex: u32,
        pin_dir: PathBuf,
    ) -> Result<UplinkProgram, EbpfError> {
        let mut ebpf = Ebpf::load(UPLINK_OBJ).map_err(|source| EbpfError::Parse {
            program: PROGRAM,
            source: Box::new(source),
        })?;
        program::<Xdp>(&mut ebpf, PROGRAM)?
            .load()
            .map_err(load_error(PROGRAM))?;

        let maps = PinnedMaps::take(&mut ebpf, &pin_dir, true)?;

        // Attach last, so that a failure before it leaves nothing attached.
        // The device-bound build first (native only), on the maps just
        // pinned; the plain one if it cannot be had.
        let link_path = pin_dir.join(LINK_PIN);
        let (link, mode, vlan_metadata) =
            match super::devbound::attach(ifindex, &pin_dir, PROGRAM, &link_path) {
                Ok(()) => {
                    let link =
                        PinnedLink::from_pin(&link_path).map_err(|_| EbpfError::NotALink {
                            ifname: ifname.to_string(),
                        })?;
                    (link, UplinkHook::Xdp(XdpMode::Native), true)
                }
                Err(e) if e.is_busy() => {
                    return Err(EbpfError::ForeignProgram {
                        ifname: ifname.to_string(),
                    })
                }
                Err(e) => {
                    tracing::debug!(ifname, error = %error_chain(&e),
                        "no device-bound XDP program; VLAN tags kept out of band stay unseen");
                    let (link, mode) = attach_plain(&mut ebpf, ifname, &link_path)?;
                    (link, UplinkHook::Xdp(mode), false)
                }
            };

        tracing::info!(ifname, %mode, vlan_metadata, pin = %pin_dir.display(),
            "attached the uplink XDP program");
        Ok(UplinkProgram {
            ifname: ifname.to_string(),
            mode,
            vlan_metadata,
            pin_dir,
            link,
            inject: None,
            tc_ports: None,
            maps,
            _ebpf: ebpf,
        })
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Where the steering runs: XDP (native or generic) or tc.
    pub fn mode(&self) -> UplinkHook {
        self.mode
    }

    /// True when the program reads VLAN tags the driver keeps out of band
    /// (the device-bound build runs, or the TC build).
    pub fn reads_vlan_metadata(&self) -> bool {
        self.vlan_metadata
    }

    /// Directory in bpffs holding the link and map pins.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Directs endpoint frames received on `queue` to the AF_XDP socket `fd`,
    /// which must be bound to this interface and queue.
    pub fn register_xsk(&mut self, queue: u32, fd: RawFd) -> Result<(), EbpfError> {
        self.maps
            .xsks
            .as_mut()
            .ok_or(EbpfError::Missing(MAP_XSKS))?
            .set(queue, fd, 0)
            .map_err(|source| EbpfError::Map {
                map: MAP_XSKS,
                op: "registering a socket",
                source: Box::new(source),
            })
    }

    /// Forgets the socket of `queue`; its frames go to the host again. (The
    /// kernel also drops the entry when the socket closes.)
    pub fn unregister_xsk(&mut self, queue: u32) -> Result<(), EbpfError> {
        let xsks = self
            .maps
            .xsks
            .as_mut()
            .ok_or(EbpfError::Missing(MAP_XSKS))?;
        ignore_missing(xsks.unset(queue)).map_err(|source| EbpfError::Map {
            map: MAP_XSKS,
            op: "unregistering a socket",
            source: Box::new(source),
        })
    }

    /// TC mode: frames for the switch go to the host from now on, as with
    /// no AF_XDP socket in XDP mode (the daemon stops and leaves the
    /// program attached; nobody reads the punt TAP). Nothing in XDP mode.
    pub fn clear_punt(&mut self) -> Result<(), EbpfError> {
        let Some(map) = self.tc_ports.as_mut() else {
            return Ok(());
        };
        let ports = map.get(&0, 0).map_err(|source| EbpfError::Map {
            map: MAP_TC_PORTS,
            op: "reading the uplink and punt TAP",
            source: Box::new(source),
        })?;
        map.set(0, TcPorts { punt: 0, ..ports }, 0)
            .map_err(|source| EbpfError::Map {
                map: MAP_TC_PORTS,
                op: "clearing the punt TAP",
                source: Box::new(source),
            })
    }

    /// Steers frames whose destination is `mac` on `vlan` (0 = untagged) to
    /// the switch: an endpoint with its own MAC (transparent mode).
    /// With `kernel`, its unicast IP frames are left to the TC fast path
    /// (a veth endpoint with no policy) instead.
    pub fn add_mac(&mut self, vlan: u16, mac: [u8; 6], kernel: bool) -> Result<(), EbpfError> {
        let key = MacKey {
            vlan: check_vlan(vlan)?,
            mac,
        };
        self.maps
            .macs
            .insert(key, if kernel { EP_KERNEL } else { 0 }, 0)
            .map_err(|source| EbpfError::Map {
                map: MAP_MACS,
                op: "adding an endpoint MAC",
                source: Box::new(source),
            })
    }

    /// Undoes [`UplinkProgram::add_mac`]; removing an absent MAC is not an
    /// error.
    pub fn remove_mac(&mut self, vlan: u16, mac: [u8; 6]) -> Result<(), EbpfError> {
        let key = MacKey {
            vlan: check_vlan(vlan)?,
            mac,
        };
        ignore_missing(self.maps.macs.remove(&key)).map_err(|source| EbpfError::Map {
            map: MAP_MACS,
            op: "removing an endpoint MAC",
            source: Box::new(source),
        })
    }

    /// Steers unicast IP to `ip`, ARP for it and neighbour solicitations for
    /// it on `vlan` to the switch: an endpoint behind the uplink's MAC
    /// (l2bridge mode).
    /// `kernel` as for [`UplinkProgram::add_mac`].
    pub fn add_ip(&mut self, vlan: u16, ip: IpAddr, kernel: bool) -> Result<(), EbpfError> {
        let key = ip_key(check_vlan(vlan)?, ip);
        let value = if kernel { EP_KERNEL } else { 0 };
        self.maps
            .ips
            .insert(key, value, 0)
            .map_err(|source| EbpfError::Map {
                map: MAP_IPS,
                op: "adding an endpoint IP",
                source: Box::new(source),
            })
    }

    /// Undoes [`UplinkProgram::add_ip`]; removing an absent IP is not an
    /// error.
    pub fn remove_ip(&mut self, vlan: u16, ip: IpAddr) -> Result<(), EbpfError> {
        let key = ip_key(check_vlan(vlan)?, ip);
        ignore_missing(self.maps.ips.remove(&key)).map_err(|source| EbpfError::Map {
            map: MAP_IPS,
            op: "removing an endpoint IP",
            source: Box::new(source),
        })
    }

    /// Steers to the switch the IPv4 traffic to `addr` on `vlan` that
    /// belongs to flows it translates to that address: TCP/UDP to a port in
    /// `lo..=hi`, echo replies with an id in it, and ICMP errors about such
    /// packets (see the module docs). The rest of the traffic to `addr`
    /// stays the host's. Replaces the range `addr` had.
    pub fn set_nat_range(
        &mut self,
        vlan: u16,
        addr: Ipv4Addr,
        lo: u16,
        hi: u16,
    ) -> Result<(), EbpfError> {
        if lo > hi {
            return Err(EbpfError::InvalidNatRange { lo, hi });
        }
        let key = nat_key(check_vlan(vlan)?, addr);
        self.maps
            .nat_ranges
            .insert(key, NatRange { lo, hi }, 0)
            .map_err(|source| EbpfError::Map {
                map: MAP_NAT_RANGES,
                op: "setting a NAT range",
                source: Box::new(source),
            })
    }

    /// Undoes [`UplinkProgram::set_nat_range`]: all traffic to `addr` is the
    /// host's again, ports added with [`UplinkProgram::add_nat_port`]
    /// included (they stay in their map, unused, until removed or a range is
    /// set again). Clearing an absent range is not an error.
    pub fn clear_nat_range(&mut self, vlan: u16, addr: Ipv4Addr) -> Result<(), EbpfError> {
        let key = nat_key(check_vlan(vlan)?, addr);
        ignore_missing(self.maps.nat_ranges.remove(&key)).map_err(|source| EbpfError::Map {
            map: MAP_NAT_RANGES,
            op: "clearing a NAT range",
            source: Box::new(source),
        })
    }

    /// Steers to the switch TCP or UDP (`proto`, `libc::IPPROTO_TCP` or
    /// `IPPROTO_UDP`) to `port` at `addr` on `vlan`, and ICMP errors about
    /// packets sent from it: the external port of a static port mapping. It
    /// may lie outside the range; it only takes effect while `addr` has a
    /// range ([`UplinkProgram::set_nat_range`]).
    pub fn add_nat_port(
        &mut self,
        vlan: u16,
        addr: Ipv4Addr,
        proto: u8,
        port: u16,
    ) -> Result<(), EbpfError> {
        let key = nat_port_key(check_vlan(vlan)?, addr, check_nat_proto(proto)?, port);
        self.maps
            .nat_ports
            .insert(key, 0, 0)
            .map_err(|source| EbpfError::Map {
                map: MAP_NAT_PORTS,
                op: "adding a NAT port",
                source: Box::new(source),
            })
    }

    /// Undoes [`UplinkProgram::add_nat_port`]; removing an absent port is
    /// not an error.
    pub fn remove_nat_port(
        &mut self,
        vlan: u16,
        addr: Ipv4Addr,
        proto: u8,
        port: u16,
    ) -> Result<(), EbpfError> {
        let key = nat_port_key(check_vlan(vlan)?, addr, check_nat_proto(proto)?, port);
        ignore_missing(self.maps.nat_ports.remove(&key)).map_err(|source| EbpfError::Map {
            map: MAP_NAT_PORTS,
            op: "removing a NAT port",
            source: Box::new(source),
        })
    }

    /// A handle on the NAT port map for the datapath thread, which adds
    /// and removes echo identifiers as translated pings come and go.
    pub fn echo_ids(&self, vlan: u16, addr: Ipv4Addr) -> Result<EchoIds, EbpfError> {
        let path = self.pin_dir.join(MAP_NAT_PORTS);
        let data = MapData::from_pin(&path).map_err(|source| EbpfError::Map {
            map: MAP_NAT_PORTS,
            op: "opening the pinned NAT port map",
            source: Box::new(source),
        })?;
        let map = HashMap::try_from(Map::HashMap(data)).map_err(|source| EbpfError::Map {
            map: MAP_NAT_PORTS,
            op: "typing the NAT port map",
            source: Box::new(source),
        })?;
        Ok(EchoIds {
            map,
            vlan: check_vlan(vlan)?,
            addr,
        })
    }

    /// The program's counters, summed over CPUs.
    pub fn stats(&self) -> Result<XdpStats, EbpfError> {
        let read = |stat: UplinkStat| -> Result<u64, EbpfError> {
            let per_cpu =
                self.maps
                    .stats
                    .get(&(stat as u32), 0)
                    .map_err(|source| EbpfError::Map {
                        map: MAP_STATS,
                        op: "reading counters",
                        source: Box::new(source),
                    })?;
            Ok(per_cpu.iter().copied().fold(0u64, u64::wrapping_add))
        };
        Ok(XdpStats {
            redirected: read(UplinkStat::Redirected)?,
            passed: read(UplinkStat::Passed)?,
            malformed: read(UplinkStat::Malformed)?,
            no_socket: read(UplinkStat::NoSocket)?,
            vlan_restored: read(UplinkStat::VlanRestored)?,
            nat: read(UplinkStat::Nat)?,
            kernel: read(UplinkStat::Kernel)?,
            injected: read(UplinkStat::Injected)?,
        })
    }

    /// Removes the program from the interface and its pins from bpffs.
    pub fn detach(self) -> Result<(), EbpfError> {
        let UplinkProgram {
            ifname,
            mode,
            pin_dir,
            link,
            inject,
            _ebpf,
            ..
        } = self;
        let link_pin = match mode {
            UplinkHook::Xdp(_) => LINK_PIN,
            UplinkHook::Tc => LINK_TC_PIN,
        };
        // Unpinning leaves this fd as the last reference; closing it (drop)
        // detaches the program.
        let unpin = |link: PinnedLink, name: &str| {
            link.unpin().map(drop).map_err(|source| EbpfError::Unpin {
                path: pin_dir.join(name),
                source,
            })
        };
        unpin(link, link_pin)?;
        if let Some(link) = inject {
            unpin(link, LINK_INJECT_PIN)?;
        }
        remove_pins(&pin_dir)?;
        // Only succeeds when empty, which is all we want to clean up.
        let _ = std::fs::remove_dir(&pin_dir);
        tracing::info!(ifname, %mode, "detached the uplink steering program");
        Ok(())
    }
}

/// The maps both builds share, taken from the loaded object and pinned.
struct PinnedMaps {
    /// XDP mode only.
    xsks: Option<XskMap<MapData>>,
    macs: HashMap<MapData, MacKey, u32>,
    ips: HashMap<MapData, IpKey, u32>,
    nat_ranges: HashMap<MapData, NatKey, NatRange>,
    nat_ports: HashMap<MapData, NatPortKey, u32>,
    stats: PerCpuArray<MapData, u64>,
}

impl PinnedMaps {
    /// With `xsks`, the XDP build's socket map too.
    fn take(ebpf: &mut Ebpf, pin_dir: &Path, xsks: bool) -> Result<PinnedMaps, EbpfError> {
        let xsks = if xsks {
            Some(
                XskMap::try_from(pin_map(ebpf, pin_dir, MAP_XSKS)?)
                    .map_err(|e| typed(MAP_XSKS, e))?,
            )
        } else {
            None
        };
        Ok(PinnedMaps {
            xsks,
            macs: HashMap::try_from(pin_map(ebpf, pin_dir, MAP_MACS)?)
                .map_err(|e| typed(MAP_MACS, e))?,
            ips: HashMap::try_from(pin_map(ebpf, pin_dir, MAP_IPS)?)
                .map_err(|e| typed(MAP_IPS, e))?,
            nat_ranges: HashMap::try_from(pin_map(ebpf, pin_dir, MAP_NAT_RANGES)?)
                .map_err(|e| typed(MAP_NAT_RANGES, e))?,
            nat_ports: HashMap::try_from(pin_map(ebpf, pin_dir, MAP_NAT_PORTS)?)
                .map_err(|e| typed(MAP_NAT_PORTS, e))?,
            stats: PerCpuArray::try_from(pin_map(ebpf, pin_dir, MAP_STATS)?)
                .map_err(|e| typed(MAP_STATS, e))?,
        })
    }
}

fn pin_map(ebpf: &mut Ebpf, pin_dir: &Path, name: &'static str) -> Result<Map, EbpfError> {
    let map = ebpf.take_map(name).ok_or(EbpfError::Missing(name))?;
    let path = pin_dir.join(name);
    map.pin(&path).map_err(|source| EbpfError::Pin {
        path,
        source: Box::new(source),
    })?;
    Ok(map)
}

fn typed(name: &'static str, source: MapError) -> EbpfError {
    EbpfError::Map {
        map: name,
        op: "checking key and value sizes",
        source: Box::new(source),
    }
}

/// The index of interface `name` in the calling thread's namespace.
fn if_index(name: &str) -> Result<u32, EbpfError> {
    crate::sys::if_index(name).ok_or_else(|| EbpfError::NoSuchInterface(name.to_string()))
}

/// The pin directory of `ifname`, made if need be, with what a previous
/// instance pinned there (in either mode) removed.
fn fresh_pin_dir(ifname: &str) -> Result<PathBuf, EbpfError> {
    ensure_bpffs()?;
    let pin_dir = Path::new(PIN_ROOT).join(ifname);
    std::fs::create_dir_all(&pin_dir).map_err(|source| EbpfError::PinDir {
        path: pin_dir.clone(),
        source,
    })?;
    if remove_pins(&pin_dir)? {
        tracing::info!(
            ifname,
            "replacing the steering program of a previous instance"
        );
    }
    Ok(pin_dir)
}

/// Runs `load` on `pin_dir`: a failed attach (another program on the
/// interface, say) must not leave pinned maps behind.
fn unpinned_on_error(
    pin_dir: PathBuf,
    load: impl FnOnce(PathBuf) -> Result<UplinkProgram, EbpfError>,
) -> Result<UplinkProgram, EbpfError> {
    load(pin_dir.clone()).inspect_err(|_| {
        let _ = remove_pins(&pin_dir);
        let _ = std::fs::remove_dir(&pin_dir);
    })
}

/// Loading (or attaching) program `name` failed.
fn load_error(name: &'static str) -> impl Fn(ProgramError) -> EbpfError + Copy {
    move |source| EbpfError::Load {
        program: name,
        source: Box::new(source),
    }
}

/// The program `name` of the object, as the kind `P` (`Xdp`,
/// `SchedClassifier`).
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, EbpfError>
where
    &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(EbpfError::Missing(name))?
        .try_into()
        .map_err(load_error(name))
}

/// Attaches the loaded TC program `name` to the tcx ingress of `ifname` at
/// `order`; the link detaches again when dropped unpinned.
fn attach_tcx(
    ebpf: &mut Ebpf,
    name: &'static str,
    ifname: &str,
    order: LinkOrder,
) -> Result<FdLink, EbpfError> {
    let load_err = load_error(name);
    let prog = program::<SchedClassifier>(ebpf, name)?;
    let id = prog
        .attach_with_options(
            ifname,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(order),
        )
        .map_err(load_err)?;
    let link = prog.take_link(id).map_err(load_err)?;
    FdLink::try_from(link).map_err(|_| EbpfError::NotALink {
        ifname: ifname.to_string(),
    })
}

/// Whether a TC steering program runs on `ifname`'s tcx ingress (the
/// kernel keeps the first 15 bytes of a program's name).
fn steering_on_tcx(ifname: &str) -> bool {
    let name = &PROGRAM_TC[..PROGRAM_TC.len().min(15)];
    match SchedClassifier::query_tcx(ifname, TcAttachType::Ingress) {
        Ok((_, progs)) => progs.iter().any(|p| p.name_as_str() == Some(name)),
        Err(_) => false,
    }
}

/// Attaches the aya-loaded (plain) build in the best mode and pins its link
/// at `link_path`.
fn attach_plain(
    ebpf: &mut Ebpf,
    ifname: &str,
    link_path: &Path,
) -> Result<(PinnedLink, XdpMode), EbpfError> {
    let program = program::<Xdp>(ebpf, PROGRAM)?;
    let (link_id, mode) = attach_best_mode(program, ifname)?;
    let link = program.take_link(link_id).map_err(load_error(PROGRAM))?;
    // Until pinned, dropping the link (on an error) detaches it again.
    let link = FdLink::try_from(link).map_err(|_| EbpfError::NotALink {
        ifname: ifname.to_string(),
    })?;
    Ok((pin_link(link, link_path)?, mode))
}

/// Pins `link` at `path`; dropped unpinned on an error, it detaches.
fn pin_link(link: FdLink, path: &Path) -> Result<PinnedLink, EbpfError> {
    link.pin(path).map_err(|source| EbpfError::Pin {
        path: path.to_path_buf(),
        source: Box::new(source),
    })
}

/// Tries native mode, then generic. A busy interface (another program
/// attached) is reported as such instead of falling back.
fn attach_best_mode(
    program: &mut Xdp,
    ifname: &str,
) -> Result<(aya::programs::xdp::XdpLinkId, XdpMode), EbpfError> {
    use aya::programs::XdpMode as Flags;

    let native = match program.attach(ifname, Flags::Driver) {
        Ok(id) => return Ok((id, XdpMode::Native)),
        Err(e) if is_busy(&e) => {
            return Err(EbpfError::ForeignProgram {
                ifname: ifname.to_string(),
            })
        }
        Err(e) => e,
    };
    tracing::debug!(ifname, error = %error_chain(&native), "native XDP refused, trying generic");
    match program.attach(ifname, Flags::Skb) {
        Ok(id) => Ok((id, XdpMode::Generic)),
        Err(e) if is_busy(&e) => Err(EbpfError::ForeignProgram {
            ifname: ifname.to_string(),
        }),
        Err(generic) => Err(EbpfError::Attach {
            ifname: ifname.to_string(),
            native: error_chain(&native),
            generic: Box::new(generic),
        }),
    }
}

/// EBUSY: a link or program already holds the mode; EEXIST: a program holds
/// the other mode (native and generic cannot coexist).
fn is_busy(e: &ProgramError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if matches!(io.raw_os_error(), Some(libc::EBUSY) | Some(libc::EEXIST)) {
                return true;
            }
        }
        source = err.source();
    }
    false
}

/// Removes the link and map pins in `dir`, of either mode; true when a
/// steering link was pinned (a previous instance's program, now detached
/// unless a process still holds its link).
fn remove_pins(dir: &Path) -> Result<bool, EbpfError> {
    let mut had_link = false;
    for name in [LINK_PIN, LINK_TC_PIN, LINK_INJECT_PIN] {
        let path = dir.join(name);
        // Through the link, so that it is gone when this returns (closing
        // the last descriptor detaches it at once; a plain unlink of the
        // pin leaves that to a kernel worker).
        let removed = match PinnedLink::from_pin(&path) {
            Ok(link) => link.unpin().map(drop).map(|()| true),
            Err(_) => match std::fs::remove_file(&path) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e),
            },
        }
        .map_err(|source| EbpfError::Unpin {
            path: path.clone(),
            source,
        })?;
        had_link |= removed && name != LINK_INJECT_PIN;
    }
    for name in [
        MAP_TC_PORTS,
        MAP_XSKS,
        MAP_MACS,
        MAP_IPS,
        MAP_NAT_RANGES,
        MAP_NAT_PORTS,
        MAP_STATS,
    ] {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(EbpfError::Unpin { path, source }),
        }
    }
    Ok(had_link)
}

fn check_vlan(vlan: u16) -> Result<u16, EbpfError> {
    if vlan < 4095 {
        Ok(vlan)
    } else {
        Err(EbpfError::InvalidVlan(vlan))
    }
}

fn ip_key(vlan: u16, ip: IpAddr) -> IpKey {
    let mut addr = [0u8; 16];
    let family = match ip {
        IpAddr::V4(v4) => {
            addr[..4].copy_from_slice(&v4.octets());
            FAMILY_IPV4
        }
        IpAddr::V6(v6) => {
            addr.copy_from_slice(&v6.octets());
            FAMILY_IPV6
        }
    };
    IpKey {
        vlan,
        family,
        pad: 0,
        addr,
    }
}

fn check_nat_proto(proto: u8) -> Result<u8, EbpfError> {
    match i32::from(proto) {
        // ICMP: an echo identifier the switch translates to.
        libc::IPPROTO_TCP | libc::IPPROTO_UDP | libc::IPPROTO_ICMP => Ok(proto),
        _ => Err(EbpfError::InvalidNatProtocol(proto)),
    }
}

fn nat_key(vlan: u16, addr: Ipv4Addr) -> NatKey {
    NatKey {
        vlan,
        pad: [0; 2],
        addr: addr.octets(),
    }
}

fn nat_port_key(vlan: u16, addr: Ipv4Addr, proto: u8, port: u16) -> NatPortKey {
    NatPortKey {
        vlan,
        proto,
        pad: 0,
        port,
        pad2: [0; 2],
        addr: addr.octets(),
    }
}

/// Map deletes report ENOENT for an absent key; removal is idempotent here.
fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::SyscallError(ref e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(())
        }
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testnet::{is_root, VethNet};
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// A fresh veth topology; none when not root (the test is skipped:
    /// it needs root for `needs`).
    fn veth_net(needs: &str) -> Option<VethNet> {
        if !is_root() {
            eprintln!("skipped: needs root ({needs})");
            return None;
        }
        Some(VethNet::new().expect("building the veth topology"))
    }

    #[test]
    fn ip_keys_match_the_c_layout() {
        let k = ip_key(7, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)));
        assert_eq!((k.vlan, k.family, k.pad), (7, FAMILY_IPV4, 0));
        assert_eq!(k.addr[..4], [10, 0, 0, 5]);
        assert!(k.addr[4..].iter().all(|&b| b == 0));

        let v6 = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x50);
        let k = ip_key(0, IpAddr::V6(v6));
        assert_eq!(k.family, FAMILY_IPV6);
        assert_eq!(k.addr, v6.octets());
    }

    #[test]
    fn nat_keys_match_the_c_layout() {
        use std::mem::offset_of;
        assert_eq!((offset_of!(NatKey, vlan), offset_of!(NatKey, addr)), (0, 4));
        assert_eq!((offset_of!(NatRange, lo), offset_of!(NatRange, hi)), (0, 2));
        assert_eq!(
            (
                offset_of!(NatPortKey, vlan),
                offset_of!(NatPortKey, proto),
                offset_of!(NatPortKey, port),
                offset_of!(NatPortKey, addr)
            ),
            (0, 2, 4, 8)
        );

        let k = nat_key(7, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(k.vlan, 7);
        assert_eq!(k.pad, [0; 2]);
        assert_eq!(k.addr, [192, 0, 2, 1], "network order");

        let k = nat_port_key(0, Ipv4Addr::new(192, 0, 2, 1), 17, 0x1234);
        assert_eq!((k.vlan, k.proto, k.pad, k.pad2), (0, 17, 0, [0; 2]));
        assert_eq!(k.port, 0x1234, "host order, as the program converts it");
        assert_eq!(k.addr, [192, 0, 2, 1]);
    }

    #[test]
    fn nat_protocols() {
        assert!(check_nat_proto(libc::IPPROTO_TCP as u8).is_ok());
        assert!(check_nat_proto(libc::IPPROTO_UDP as u8).is_ok());
        assert!(check_nat_proto(libc::IPPROTO_ICMP as u8).is_ok());
        assert!(check_nat_proto(libc::IPPROTO_GRE as u8).is_err());
    }

    #[test]
    fn vlan_range() {
        assert!(check_vlan(0).is_ok());
        assert!(check_vlan(4094).is_ok());
        assert!(check_vlan(4095).is_err());
    }

    /// `ip -j link show` of `dev` in `ns` lists an "xdp" object when a
    /// program is attached.
    fn has_xdp(ns: &str, dev: &str) -> bool {
        let out = std::process::Command::new("ip")
            .args(["-n", ns, "-j", "link", "show", "dev", dev])
            .output()
            .expect("ip link show");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).contains("\"xdp\"")
    }

    #[test]
    fn attach_replaces_a_previous_instance_and_detach_removes_it() {
        let Some(net) = veth_net("namespaces, XDP") else {
            return;
        };
        let first = net
            .in_a(|| UplinkProgram::attach(&net.a))
            .expect("first attach");
        assert_eq!(
            first.mode(),
            UplinkHook::Xdp(XdpMode::Native),
            "veth supports native XDP"
        );
        assert!(
            first.reads_vlan_metadata(),
            "veth implements the VLAN metadata kfunc: the device-bound build runs"
        );
        assert!(first.pin_dir().join(LINK_PIN).exists());
        assert!(has_xdp(&net.ns_a, &net.a));

        // A daemon that exits without detaching leaves the program pinned and
        // attached.
        drop(first);
        assert!(has_xdp(&net.ns_a, &net.a));

        // The next instance replaces it.
        let mut second = net
            .in_a(|| UplinkProgram::attach(&net.a))
            .expect("re-attach");
        second
            .add_ip(
                0,
                IpAddr::V4(std::net::Ipv4Addr::new(10, 77, net.subnet, 9)),
                false,
            )
            .unwrap();
        assert!(has_xdp(&net.ns_a, &net.a));
        let pin_dir = second.pin_dir().to_path_buf();

        second.detach().expect("detach");
        assert!(!has_xdp(&net.ns_a, &net.a), "program still attached");
        assert!(!pin_dir.exists(), "pins left behind");
    }

    /// An Ethernet frame from `src` to `dst`, 802.1Q-tagged when `vlan` is
    /// given, of a local experimental EtherType, ending in `marker`.
    fn marked_frame(dst: [u8; 6], src: [u8; 6], vlan: Option<u16>, marker: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        if let Some(vid) = vlan {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&vid.to_be_bytes());
        }
        f.extend_from_slice(&[0x88, 0xb5]);
        f.resize(f.len() + 46, 0);
        f.extend_from_slice(marker);
        f
    }

    /// Reads the TAP until a frame ending in `marker` arrives (or 2 s).
    fn read_tap(tap: &mut crate::port::tap::Tap, marker: &[u8]) -> Option<Vec<u8>> {
        use crate::port::{Packet, PortIo};
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut batch: Vec<Packet> = (0..4).map(|_| Packet::new()).collect();
        while std::time::Instant::now() < deadline {
            let n = tap.recv_batch(&mut batch).unwrap_or(0);
            if let Some(p) = batch[..n].iter().find(|p| p.frame().ends_with(marker)) {
                return Some(p.frame().to_vec());
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        None
    }

    #[test]
    fn tc_mode_steers_to_the_punt_tap_and_sends_what_it_writes() {
        use super::super::testnet::RawSocket;
        use crate::port::{tap::Tap, Packet, PortIo};
        use std::time::Duration;
        let Some(net) = veth_net("namespaces, TC, TAP") else {
            return;
        };
        let punt = format!("{}t", net.a);
        let mut tap = net.in_a(|| Tap::create(&punt, true)).expect("punt TAP");
        net.ip(&net.ns_a, &["link", "set", &punt, "up"]).unwrap();

        // A previous instance's XDP program is replaced, not stacked.
        drop(
            net.in_a(|| UplinkProgram::attach(&net.a))
                .expect("XDP attach"),
        );
        let mut prog = net
            .in_a(|| UplinkProgram::attach_tc(&net.a, &punt))
            .expect("TC attach");
        assert_eq!(prog.mode(), UplinkHook::Tc);
        assert!(
            !has_xdp(&net.ns_a, &net.a),
            "the XDP program stayed attached"
        );
        assert!(prog.pin_dir().join(LINK_TC_PIN).exists());
        assert!(!prog.pin_dir().join(LINK_PIN).exists());

        let ep = [0x02, 0xee, 0, 0, net.subnet, 9];
        prog.add_mac(0, ep, false).unwrap();
        prog.add_mac(7, ep, false).unwrap();
        let raw_b = net
            .in_b(|| RawSocket::open(&net.b))
            .expect("packet socket in b");

        // To an endpoint MAC: on the punt TAP. Tagged: the stack takes the
        // tag out of the frame before TC, and the TAP puts it back.
        raw_b
            .send(&marked_frame(ep, net.mac_b, None, b"plain"))
            .unwrap();
        let got = read_tap(&mut tap, b"plain").expect("untagged frame on the punt TAP");
        assert_eq!(&got[12..14], &[0x88, 0xb5]);
        raw_b
            .send(&marked_frame(ep, net.mac_b, Some(7), b"tagged"))
            .unwrap();
        let got = read_tap(&mut tap, b"tagged").expect("VLAN 7 frame on the punt TAP");
        assert_eq!(&got[12..16], &[0x81, 0x00, 0, 7], "tag back in the frame");
        // An unknown VLAN's frame is the host's.
        let passed = prog.stats().unwrap().passed;
        raw_b
            .send(&marked_frame(ep, net.mac_b, Some(8), b"vlan8"))
            .unwrap();
        assert!(read_tap(&mut tap, b"vlan8").is_none());
        assert!(prog.stats().unwrap().passed > passed);

        // The host keeps its own traffic.
        let ip_a = Ipv4Addr::from(net.ip_a).to_string();
        let ping = net
            .exec(&net.ns_b, &["ping", "-c", "1", "-W", "2", &ip_a])
            .unwrap();
        assert!(ping.status.success(), "b cannot ping a's own address");

        // What the switch writes to the punt TAP leaves on the uplink.
        let mut pkt = Packet::new();
        pkt.fill(&marked_frame(net.mac_b, ep, None, b"inject"));
        tap.send(&pkt).unwrap();
        assert!(
            raw_b
                .recv_matching(Duration::from_secs(2), |f| f.ends_with(b"inject"))
                .is_some(),
            "a frame written to the punt TAP did not reach the wire"
        );
        let stats = prog.stats().unwrap();
        assert!(stats.redirected >= 2 && stats.injected >= 1, "{stats:?}");

        // With the punt TAP cleared (a clean stop keeping the program),
        // the switch's frames are the host's.
        prog.clear_punt().unwrap();
        let no_socket = prog.stats().unwrap().no_socket;
        raw_b
            .send(&marked_frame(ep, net.mac_b, None, b"cleared"))
            .unwrap();
        assert!(read_tap(&mut tap, b"cleared").is_none());
        assert!(prog.stats().unwrap().no_socket > no_socket);

        // And XDP replaces TC in turn: never two steering programs.
        let pin_dir = prog.pin_dir().to_path_buf();
        drop(prog);
        let xdp = net
            .in_a(|| UplinkProgram::attach(&net.a))
            .expect("XDP attach");
        assert!(!pin_dir.join(LINK_TC_PIN).exists());
        assert!(
            !steering_on_tcx_in(&net, &net.a),
            "TC steering stayed attached"
        );
        xdp.detach().unwrap();
        assert!(!pin_dir.exists(), "pins left behind");
    }

    fn steering_on_tcx_in(net: &VethNet, dev: &str) -> bool {
        net.in_a(|| steering_on_tcx(dev))
    }

    #[test]
    fn falls_back_to_generic_mode() {
        let Some(net) = veth_net("namespaces, XDP") else {
            return;
        };
        // The bridge driver has no native XDP (and this kernel has no dummy).
        let dummy = format!("{}d", net.a);
        net.ip(&net.ns_a, &["link", "add", &dummy, "type", "bridge"])
            .unwrap();
        let prog = net.in_a(|| UplinkProgram::attach(&dummy)).expect("attach");
        assert_eq!(prog.mode(), UplinkHook::Xdp(XdpMode::Generic));
        assert!(
            !prog.reads_vlan_metadata(),
            "device-bound programs are native only"
        );
        assert!(has_xdp(&net.ns_a, &dummy));
        prog.detach().unwrap();
        assert!(!has_xdp(&net.ns_a, &dummy));
    }

    #[test]
    fn refuses_a_foreign_program() {
        let Some(net) = veth_net("namespaces, XDP") else {
            return;
        };
        // A program attached by someone else, without a vswitch pin.
        let prog = net.in_a(|| UplinkProgram::attach(&net.a)).expect("attach");
        let link_path = prog.pin_dir().join(LINK_PIN);
        let held = prog.link;
        let fd_link: FdLink = held.into();
        std::fs::remove_file(&link_path).unwrap();
        let err = net
            .in_a(|| UplinkProgram::attach(&net.a))
            .expect_err("must not steal the interface");
        assert!(matches!(err, EbpfError::ForeignProgram { .. }), "{err}");
        let pins = Path::new(PIN_ROOT).join(&net.a);
        assert!(
            !pins.exists(),
            "a refused attach left pins in {}",
            pins.display()
        );
        drop(fd_link);
        assert!(!has_xdp(&net.ns_a, &net.a));
        let _ = std::fs::remove_dir_all(pins);
    }

    /// Waits until the NAT counter reaches `at_least`, then a little longer,
    /// so that a frame counted when it should not have been shows up too.
    /// Frames from one sender are processed in order: once a frame sent last
    /// ("marker") is counted, the ones before it have been decided.
    fn settled_nat(prog: &UplinkProgram, at_least: u64) -> u64 {
        use std::time::{Duration, Instant};
        let deadline = Instant::now() + Duration::from_secs(3);
        while prog.stats().unwrap().nat < at_least && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(100));
        prog.stats().unwrap().nat
    }

    const NAT_LO: u16 = 40000;
    const NAT_HI: u16 = 40009;

    /// A veth pair with the program attached to `a` and a NAT range for
    /// `a`'s address; no AF_XDP socket, so steered frames still reach the
    /// host (counted `no_socket`) and replies flow.
    fn nat_uplink() -> Option<(VethNet, UplinkProgram)> {
        let net = veth_net("namespaces, XDP")?;
        let mut prog = net.in_a(|| UplinkProgram::attach(&net.a)).expect("attach");
        prog.set_nat_range(0, Ipv4Addr::from(net.ip_a), NAT_LO, NAT_HI)
            .unwrap();
        Some((net, prog))
    }

    #[test]
    fn nat_steers_tcp_and_udp_to_the_switch_ports() {
        use std::net::{SocketAddr, TcpStream, UdpSocket};
        use std::time::Duration;
        let Some((net, mut prog)) = nat_uplink() else {
            return;
        };
        let ip_a = Ipv4Addr::from(net.ip_a);
        let udp = net
            .in_b(|| UdpSocket::bind("0.0.0.0:0"))
            .expect("UDP socket in b");
        // The payload reads as ports in the range wherever it is parsed as
        // a header, as a fragment after the first would be without the
        // offset check.
        let send = |ip: Ipv4Addr, port: u16, len: usize| {
            let payload: Vec<u8> = NAT_LO.to_be_bytes().into_iter().cycle().take(len).collect();
            udp.send_to(&payload, (ip, port)).expect("send");
        };
        let udp_proto = libc::IPPROTO_UDP as u8;

        // In range: the switch's (and, with no socket, the host's after all).
        let before = prog.stats().unwrap();
        send(ip_a, 40005, 8);
        assert_eq!(settled_nat(&prog, before.nat + 1), before.nat + 1);
        let after = prog.stats().unwrap();
        assert!(after.no_socket > before.no_socket, "{after:?}");
        assert!(after.redirected == before.redirected, "{after:?}");

        // With IP options (IHL 6: four NOPs), the ports are found after
        // them.
        let with_options = net
            .in_b(|| UdpSocket::bind("0.0.0.0:0"))
            .expect("UDP socket in b");
        set_ip_options(&with_options, &[1, 1, 1, 1]);
        let n = prog.stats().unwrap().nat;
        with_options.send_to(b"x", (ip_a, NAT_HI)).unwrap();
        assert_eq!(settled_nat(&prog, n + 1), n + 1, "ports after the options");

        // Out of range: the host's. The in-range marker after it shows it
        // was decided.
        let before = prog.stats().unwrap();
        send(ip_a, 50000, 8);
        send(ip_a, NAT_LO, 8);
        assert_eq!(settled_nat(&prog, before.nat + 1), before.nat + 1);
        assert!(prog.stats().unwrap().passed > before.passed);

        // A static mapping's port, outside the range; for UDP only.
        prog.add_nat_port(0, ip_a, udp_proto, 50000).unwrap();
        let n = prog.stats().unwrap().nat;
        send(ip_a, 50000, 8);
        assert_eq!(settled_nat(&prog, n + 1), n + 1);
        let n = prog.stats().unwrap().nat;
        let refused = net.in_b(|| {
            TcpStream::connect_timeout(&SocketAddr::from((ip_a, 50000)), Duration::from_secs(2))
        });
        assert!(refused.is_err(), "nothing listens in a");
        send(ip_a, NAT_HI, 8);
        assert_eq!(settled_nat(&prog, n + 1), n + 1, "TCP 50000 is not mapped");

        // TCP in range: the SYN is the switch's.
        let n = prog.stats().unwrap().nat;
        let _ = net.in_b(|| {
            TcpStream::connect_timeout(
                &SocketAddr::from((ip_a, NAT_LO + 3)),
                Duration::from_secs(2),
            )
        });
        assert_eq!(settled_nat(&prog, n + 1), n + 1);

        prog.remove_nat_port(0, ip_a, udp_proto, 50000).unwrap();
        prog.remove_nat_port(0, ip_a, udp_proto, 50000)
            .expect("removing twice is fine");
        let n = prog.stats().unwrap().nat;
        send(ip_a, 50000, 8);
        send(ip_a, NAT_LO, 8);
        assert_eq!(settled_nat(&prog, n + 1), n + 1);

        // Fragmented (MTU 1500): the first fragment carries the port, the
        // second nothing to decide by, so it is the host's.
        let n = prog.stats().unwrap().nat;
        send(ip_a, 40005, 3000);
        send(ip_a, NAT_LO, 8);
        assert_eq!(settled_nat(&prog, n + 2), n + 2);

        // Per address: clearing a's range leaves a second address's.
        let ip_a2 = Ipv4Addr::new(10, 77, net.subnet, 3);
        net.ip(
            &net.ns_a,
            &["addr", "add", &format!("{ip_a2}/24"), "dev", &net.a],
        )
        .unwrap();
        prog.set_nat_range(0, ip_a2, NAT_LO, NAT_HI).unwrap();
        prog.clear_nat_range(0, ip_a).unwrap();
        prog.clear_nat_range(0, ip_a)
            .expect("clearing twice is fine");
        let n = prog.stats().unwrap().nat;
        send(ip_a, 40005, 8);
        send(ip_a2, 40005, 8);
        assert_eq!(settled_nat(&prog, n + 1), n + 1);

        assert!(matches!(
            prog.set_nat_range(0, ip_a, 2, 1),
            Err(EbpfError::InvalidNatRange { lo: 2, hi: 1 })
        ));
        assert!(matches!(
            prog.add_nat_port(0, ip_a, libc::IPPROTO_GRE as u8, 1),
            Err(EbpfError::InvalidNatProtocol(47))
        ));
        prog.detach().unwrap();
    }

    fn set_ip_options(sock: &std::net::UdpSocket, options: &[u8]) {
        use std::os::fd::AsRawFd;
        // SAFETY: options is valid for the length passed.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_OPTIONS,
                options.as_ptr().cast(),
                options.len() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "IP_OPTIONS: {}", io::Error::last_os_error());
    }

    /// Sends an ICMP echo request with identifier `id` through a raw socket.
    fn send_echo_request(sock: &std::os::fd::OwnedFd, dst: Ipv4Addr, id: u16) {
        use std::os::fd::AsRawFd;
        let mut msg = [0u8; 16];
        msg[0] = 8; // echo request
        msg[4..6].copy_from_slice(&id.to_be_bytes());
        msg[6..8].copy_from_slice(&1u16.to_be_bytes());
        let mut sum: u32 = msg
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        msg[2..4].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        // SAFETY: sockaddr_in is plain data; all-zero is valid.
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        addr.sin_family = libc::AF_INET as u16;
        addr.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
        // SAFETY: msg and addr are valid for the lengths passed.
        let n = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        assert_eq!(
            n,
            msg.len() as isize,
            "sendto: {}",
            io::Error::last_os_error()
        );
    }

    #[test]
    fn nat_steers_echo_replies_and_icmp_errors_about_the_switch_flows() {
        use std::net::UdpSocket;
        use std::os::fd::{FromRawFd, OwnedFd};
        let Some((net, prog)) = nat_uplink() else {
            return;
        };
        let ip_a = Ipv4Addr::from(net.ip_a);
        let ip_b = Ipv4Addr::from(net.ip_b);
        let raw = net.in_a(|| {
            // SAFETY: plain socket(2) call.
            let fd = unsafe {
                libc::socket(
                    libc::AF_INET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::IPPROTO_ICMP,
                )
            };
            assert!(fd >= 0, "raw ICMP socket: {}", io::Error::last_os_error());
            // SAFETY: fd is a fresh socket we own.
            unsafe { OwnedFd::from_raw_fd(fd) }
        });

        // b answers a's pings: the reply to an id the switch took is the
        // switch's; any other is the host's, in the range or not (the
        // host's ping picks any id).
        let mut prog = prog;
        for id in [NAT_LO, NAT_LO + 1, NAT_HI] {
            prog.add_nat_port(0, ip_a, libc::IPPROTO_ICMP as u8, id)
                .unwrap();
        }
        let n = prog.stats().unwrap().nat;
        send_echo_request(&raw, ip_b, NAT_LO + 1);
        assert_eq!(settled_nat(&prog, n + 1), n + 1);
        let n = prog.stats().unwrap().nat;
        send_echo_request(&raw, ip_b, 7);
        send_echo_request(&raw, ip_b, NAT_LO + 2);
        send_echo_request(&raw, ip_b, NAT_HI);
        assert_eq!(
            settled_nat(&prog, n + 1),
            n + 1,
            "echo ids 7 and NAT_LO + 2 are the host's"
        );

        // UDP from a switch port at a to a closed port in b: b's port
        // unreachable quotes it and is the switch's; the same from a host
        // port is the host's.
        let from_switch = net
            .in_a(|| UdpSocket::bind((ip_a, NAT_LO + 7)))
            .expect("UDP socket in a");
        let from_host = net
            .in_a(|| UdpSocket::bind((ip_a, NAT_HI + 100)))
            .expect("UDP socket in a");
        let n = prog.stats().unwrap().nat;
        from_switch.send_to(b"x", (ip_b, 9)).unwrap();
        assert_eq!(settled_nat(&prog, n + 1), n + 1);
        let n = prog.stats().unwrap().nat;
        from_host.send_to(b"x", (ip_b, 9)).unwrap();
        send_echo_request(&raw, ip_b, NAT_LO);
        assert_eq!(
            settled_nat(&prog, n + 1),
            n + 1,
            "an error about a host flow"
        );
        prog.detach().unwrap();
    }
}
