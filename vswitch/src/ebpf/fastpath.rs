//! The kernel fast path (`xdp-prog/fastpath.bpf.c`): TC programs on veth
//! endpoints' host ends and on their punt TAPs, and the maps the slow path
//! fills for them (ports, FDB, networks) and reads back (counters).
//!
//! Everything is pinned in one directory per switch instance (see
//! [`FastPath::pin_dir_for`]): maps and programs by name, each attachment (a
//! tcx link) under `links/<interface>`. A daemon that stops or dies leaves
//! them in place, so frames the kernel forwards keep flowing; the next
//! instance adopts what it finds when the pinned `meta` map names this
//! build's layout and program version, and replaces all of it, saying so,
//! when it does not.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifier, TcAttachOptions, TcAttachType};
use aya::programs::{LinkOrder, ProgramError};
use aya::Ebpf;

use super::{ensure_bpffs, EbpfError, PIN_ROOT};
use crate::ifname::IfName;
use crate::pipeline::{FlowKey, HeaderTransform};

static FASTPATH_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fastpath.bpf.o"));

/// `FP_LAYOUT` in xdp-prog/fastpath.h.
pub const LAYOUT: u32 = 5;

/// `FP_MAX_PORTS`: slots of the per-CPU `counters` array.
const FP_MAX_PORTS: u32 = 4096;

const MAP_PORTS: &str = "ports";
const MAP_FDB: &str = "fdb";
const MAP_NETS: &str = "nets";
const MAP_COUNTERS: &str = "counters";
const MAP_META: &str = "meta";
const MAP_UPLINKS: &str = "uplinks";
const MAP_IPS: &str = "endpoint_ips";
const MAP_FLOWS: &str = "flows";
const MAP_TUNNELS: &str = "tunnels";
const MAP_PEERS: &str = "peers";
const MAP_VTEPS: &str = "vteps";
const MAPS: [&str; 11] = [
    MAP_TUNNELS,
    MAP_PEERS,
    MAP_VTEPS,
    MAP_FLOWS,
    MAP_PORTS,
    MAP_FDB,
    MAP_NETS,
    MAP_COUNTERS,
    MAP_META,
    MAP_UPLINKS,
    MAP_IPS,
];
const LINKS: &str = "links";
/// Links of [`Program::VtepGuard`], which shares its device with others.
const GUARD_LINKS: &str = "links/guard";

/// The programs, by the section function name in fastpath.bpf.c.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// On an endpoint's host veth: what the endpoint sends.
    Port,
    /// On a punt TAP: what the slow path sends to the endpoint.
    Inject,
    /// On an uplink, behind its XDP program: frames from the wire for veth
    /// endpoints.
    Uplink,
    /// On an overlay network's tunnel TAP: what the slow path sends to
    /// other hosts.
    TunnelInject,
    /// On a VXLAN device: decapsulated frames from other hosts.
    Tunnel,
    /// On the provider interface: VXLAN no network accepts is dropped and
    /// counted.
    VtepGuard,
}

impl Program {
    pub const ALL: [Program; 6] = [
        Program::Port,
        Program::Inject,
        Program::Uplink,
        Program::TunnelInject,
        Program::Tunnel,
        Program::VtepGuard,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Program::Port => "vswitch_port",
            Program::Inject => "vswitch_inject",
            Program::Uplink => "vswitch_uplink",
            Program::TunnelInject => "vswitch_tunnel_inject",
            Program::Tunnel => "vswitch_tunnel",
            Program::VtepGuard => "vswitch_vtep_guard",
        }
    }

    fn index(self) -> usize {
        Program::ALL
            .iter()
            .position(|p| *p == self)
            .expect("listed")
    }
}

/// `fp_port.flags` (xdp-prog/fastpath.h).
pub mod port_flags {
    pub const SLOW: u32 = 1 << 0;
    pub const SPOOF: u32 = 1 << 1;
    pub const INJECT: u32 = 1 << 3;
    pub const SLOW_IN: u32 = 1 << 4;
    pub const TUNNEL: u32 = 1 << 5;
    pub const VXLAN: u32 = 1 << 6;
}

/// `fp_fdb.flags`.
pub mod fdb_flags {
    pub const ENDPOINT: u32 = 1 << 0;
    pub const UPLINK: u32 = 1 << 1;
    pub const SLOW: u32 = 1 << 2;
    pub const TUNNEL: u32 = 1 << 3;
}

/// `fp_net.flags`.
pub mod net_flags {
    pub const L2BRIDGE: u32 = 1 << 0;
    pub const VLAN: u32 = 1 << 1;
    pub const SLOW: u32 = 1 << 2;
    pub const TUNNEL: u32 = 1 << 3;
}

/// `struct fp_port`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct FpPort {
    pub port_id: u32,
    pub net: u32,
    pub flags: u32,
    pub peer: u32,
    pub mac: [u8; 6],
    pub pad: [u8; 2],
    pub ipv4: [u8; 4],
    pub ipv6: [u8; 16],
    pub ll6: [u8; 16],
    /// The device's slot in `counters` ([`FastPath::slot`]).
    pub slot: u32,
}

/// `struct fp_fdb_key`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct FdbKey {
    pub net: u32,
    pub mac: [u8; 6],
    pub pad: [u8; 2],
}

/// `struct fp_fdb`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct FdbEntry {
    pub ifindex: u32,
    pub flags: u32,
    pub slot: u32,
    /// [`fdb_flags::TUNNEL`]: the provider address, network byte order.
    pub remote: [u8; 4],
}

/// `struct fp_net`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct FpNet {
    pub flags: u32,
    pub uplink: u32,
    pub vlan: u16,
    pub uplink_mac: [u8; 6],
    pub uplink_slot: u32,
    pub vni: u32,
    pub vxlan: u32,
    /// Network byte order.
    pub local_pa: [u8; 4],
    pub tunnel_slot: u32,
}

/// `struct fp_tunnel`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct FpTunnel {
    pub net: u32,
    pub punt: u32,
    pub slot: u32,
    pub pad: u32,
}

/// `struct fp_peer_key`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct PeerKey {
    pub net: u32,
    /// Network byte order.
    pub pa: [u8; 4],
}

/// `struct fp_vtep`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct FpVtep {
    pub ifindex: u32,
    pub slot: u32,
}

/// `struct fp_uplink_key`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct UplinkKey {
    pub ifindex: u32,
    pub vlan: u16,
    pub pad: [u8; 2],
}

/// `struct fp_uplink`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct FpUplink {
    pub net: u32,
    pub flags: u32,
    pub mac: [u8; 6],
    pub pad: [u8; 2],
    pub slot: u32,
}

/// `struct fp_ip_key`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct IpKey {
    pub net: u32,
    pub family: u8,
    pub pad: [u8; 3],
    pub addr: [u8; 16],
}

impl IpKey {
    pub fn new(net: u32, ip: std::net::IpAddr) -> IpKey {
        let mut key = IpKey {
            net,
            ..IpKey::default()
        };
        match ip {
            std::net::IpAddr::V4(v4) => {
                key.family = 4;
                key.addr[..4].copy_from_slice(&v4.octets());
            }
            std::net::IpAddr::V6(v6) => {
                key.family = 6;
                key.addr = v6.octets();
            }
        }
        key
    }
}

/// `struct fp_ip`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct FpIp {
    pub ifindex: u32,
    pub flags: u32,
    pub mac: [u8; 6],
    pub pad: [u8; 2],
    pub slot: u32,
}

/// `fp_flow.flags`.
pub mod flow_flags {
    pub const PEER: u32 = 1 << 0;
    pub const UPLINK: u32 = 1 << 1;
}

/// `struct fp_flow`: an offloaded flow's verdict and the kernel's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct FpFlow {
    pub ifindex: u32,
    pub flags: u32,
    /// The destination's counter slot (0 for an uplink).
    pub slot: u32,
    pub pad: u32,
    pub xform: HeaderTransform,
    pub packets: u64,
    pub bytes: u64,
    pub last_seen: u64,
}

/// `struct fp_counters`, also as summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct FpCounters {
    pub fast_rx_packets: u64,
    pub fast_rx_bytes: u64,
    pub fast_tx_packets: u64,
    pub fast_tx_bytes: u64,
    pub punted_packets: u64,
    pub punted_bytes: u64,
    pub injected_packets: u64,
    pub injected_bytes: u64,
    pub drops: [u64; 32],
}

impl FpCounters {
    fn add(&mut self, o: &FpCounters) {
        self.fast_rx_packets += o.fast_rx_packets;
        self.fast_rx_bytes += o.fast_rx_bytes;
        self.fast_tx_packets += o.fast_tx_packets;
        self.fast_tx_bytes += o.fast_tx_bytes;
        self.punted_packets += o.punted_packets;
        self.punted_bytes += o.punted_bytes;
        self.injected_packets += o.injected_packets;
        self.injected_bytes += o.injected_bytes;
        for (a, b) in self.drops.iter_mut().zip(o.drops.iter()) {
            *a += b;
        }
    }
}

/// `struct fp_meta`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
struct FpMeta {
    layout: u32,
    reserved: u32,
    version: u64,
}

// SAFETY: plain #[repr(C)] integers and byte arrays with no padding the
// kernel could leave uninitialised (every gap is a named field).
unsafe impl aya::Pod for FpPort {}
unsafe impl aya::Pod for FdbKey {}
unsafe impl aya::Pod for FdbEntry {}
unsafe impl aya::Pod for FpNet {}
unsafe impl aya::Pod for FpCounters {}
unsafe impl aya::Pod for FpMeta {}
unsafe impl aya::Pod for UplinkKey {}
unsafe impl aya::Pod for FpUplink {}
unsafe impl aya::Pod for IpKey {}
unsafe impl aya::Pod for FpIp {}
unsafe impl aya::Pod for FpFlow {}
unsafe impl aya::Pod for FpTunnel {}
unsafe impl aya::Pod for PeerKey {}
unsafe impl aya::Pod for FpVtep {}
// SAFETY: as above; both are asserted to be 64 bytes with every byte a
// named field (classify.rs, verdict.rs).
unsafe impl aya::Pod for FlowKey {}
unsafe impl aya::Pod for HeaderTransform {}

const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<FpPort>() == 64);
    assert!(offset_of!(FpPort, mac) == 16);
    assert!(offset_of!(FpPort, ipv4) == 24);
    assert!(offset_of!(FpPort, ipv6) == 28);
    assert!(offset_of!(FpPort, ll6) == 44);
    assert!(offset_of!(FpPort, slot) == 60);
    assert!(size_of::<FdbKey>() == 12);
    assert!(size_of::<FdbEntry>() == 16);
    assert!(size_of::<FpNet>() == 36);
    assert!(offset_of!(FpNet, uplink_mac) == 10);
    assert!(offset_of!(FpNet, vni) == 20);
    assert!(size_of::<FpTunnel>() == 16);
    assert!(size_of::<PeerKey>() == 8);
    assert!(size_of::<FpVtep>() == 8);
    assert!(size_of::<FpCounters>() == 64 + 32 * 8);
    assert!(size_of::<FpMeta>() == 16);
    assert!(size_of::<UplinkKey>() == 8);
    assert!(size_of::<FpUplink>() == 20);
    assert!(size_of::<IpKey>() == 24);
    assert!(offset_of!(IpKey, addr) == 8);
    assert!(size_of::<FpIp>() == 20);
    assert!(size_of::<FpFlow>() == 104);
    assert!(offset_of!(FpFlow, xform) == 16);
    assert!(offset_of!(FpFlow, packets) == 80);
};

/// The version of the embedded programs: a hash of the object file, so any
/// change to the C side is a new version.
pub fn program_version() -> u64 {
    fnv1a(FASTPATH_OBJ)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// How [`FastPath::open`] found bpffs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Nothing was pinned: loaded fresh.
    Loaded,
    /// A previous instance's programs and maps, adopted as they are.
    Adopted,
    /// A previous instance's objects of another layout or version, removed
    /// and loaded fresh (their attachments were detached).
    Replaced { layout: u32, version: u64 },
}

/// One attachment as `vswitchctl datapath show` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub ifname: String,
    pub ifindex: u32,
    pub program: &'static str,
    /// True when the kernel lists the program on the device's tcx ingress.
    pub attached: bool,
}

/// The loaded fast path: its programs and typed maps.
pub struct FastPath {
    dir: PathBuf,
    origin: Origin,
    /// By [`Program::index`].
    progs: Vec<SchedClassifier>,
    tunnels: HashMap<MapData, u32, FpTunnel>,
    peers: HashMap<MapData, PeerKey, u32>,
    vteps: HashMap<MapData, u32, FpVtep>,
    ports: HashMap<MapData, u32, FpPort>,
    uplinks: HashMap<MapData, UplinkKey, FpUplink>,
    ips: HashMap<MapData, IpKey, FpIp>,
    fdb: HashMap<MapData, FdbKey, FdbEntry>,
    nets: HashMap<MapData, u32, FpNet>,
    counters: PerCpuArray<MapData, FpCounters>,
    /// The counter slot of each device (by ifindex); 0 is no port's.
    slots: std::collections::HashMap<u32, u32>,
}

impl fmt::Debug for FastPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FastPath")
            .field("dir", &self.dir)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

fn map_err(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> EbpfError {
    move |source| EbpfError::Map {
        map,
        op,
        source: Box::new(source),
    }
}

fn pin_err(path: &Path) -> impl FnOnce(aya::pin::PinError) -> EbpfError + '_ {
    move |source| EbpfError::Pin {
        path: path.to_owned(),
        source: Box::new(source),
    }
}

fn load_err(program: &'static str) -> impl FnOnce(ProgramError) -> EbpfError {
    move |source| EbpfError::Load {
        program,
        source: Box::new(source),
    }
}

fn dir_err(path: &Path) -> impl FnOnce(io::Error) -> EbpfError + '_ {
    move |source| EbpfError::PinDir {
        path: path.to_owned(),
        source,
    }
}

impl FastPath {
    /// The pin directory of the switch whose state lives in `state_dir`:
    /// one per instance, so daemons in different namespaces (whose ifindexes
    /// and network ids overlap) never share maps. The name is longer than
    /// any interface name, so it cannot meet an uplink's pin directory.
    pub fn pin_dir_for(state_dir: &Path) -> PathBuf {
        let canonical = state_dir
            .canonicalize()
            .unwrap_or_else(|_| state_dir.to_owned());
        let hash = fnv1a(canonical.as_os_str().as_encoded_bytes());
        Path::new(PIN_ROOT).join(format!("fastpath-{:08x}", hash as u32))
    }

    /// Adopts what a previous instance pinned in `dir`, or loads the
    /// programs fresh (replacing pins of another version).
    pub fn open(dir: &Path) -> Result<FastPath, EbpfError> {
        ensure_bpffs()?;
        if private_mounts() {
            // `ip netns exec` gives its command a mount namespace of its own
            // and a fresh /sys: pins made there die with the daemon, and
            // the fast path with them. `nsenter --net` keeps the host's.
            tracing::warn!(dir = %dir.display(),
                "vswitchd runs in a mount namespace of its own: its pins vanish when it exits, so forwarding stops across a restart (start it with `nsenter --net=...`, not `ip netns exec`)");
        }
        std::fs::create_dir_all(dir.join(GUARD_LINKS)).map_err(dir_err(dir))?;
        let ours = (LAYOUT, program_version());
        let origin = match read_meta(dir) {
            Some(found) if found == ours => Origin::Adopted,
            Some((layout, version)) => {
                tracing::warn!(dir = %dir.display(), layout, version = format_args!("{version:016x}"),
                    "pinned fast path is from another build: replacing it (kernel forwarding stops until ports re-attach)");
                remove_pins(dir)?;
                load_and_pin(dir, ours.1)?;
                Origin::Replaced { layout, version }
            }
            None => {
                remove_pins(dir)?;
                load_and_pin(dir, ours.1)?;
                Origin::Loaded
            }
        };
        let fp = FastPath::from_pins(dir, origin)?;
        tracing::info!(dir = %dir.display(), origin = ?fp.origin,
            version = format_args!("{:016x}", ours.1), "fast path ready");
        Ok(fp)
    }

    fn from_pins(dir: &Path, origin: Origin) -> Result<FastPath, EbpfError> {
        let prog =
            |p: Program| SchedClassifier::from_pin(dir.join(p.name())).map_err(load_err(p.name()));
        let map = |name: &'static str| -> Result<MapData, EbpfError> {
            MapData::from_pin(dir.join(name)).map_err(map_err(name, "opening the pinned map"))
        };
        Ok(FastPath {
            dir: dir.to_owned(),
            origin,
            progs: Program::ALL
                .into_iter()
                .map(prog)
                .collect::<Result<_, _>>()?,
            tunnels: HashMap::try_from(Map::HashMap(map(MAP_TUNNELS)?))
                .map_err(map_err(MAP_TUNNELS, "checking key and value sizes"))?,
            peers: HashMap::try_from(Map::HashMap(map(MAP_PEERS)?))
                .map_err(map_err(MAP_PEERS, "checking key and value sizes"))?,
            vteps: HashMap::try_from(Map::HashMap(map(MAP_VTEPS)?))
                .map_err(map_err(MAP_VTEPS, "checking key and value sizes"))?,
            uplinks: HashMap::try_from(Map::HashMap(map(MAP_UPLINKS)?))
                .map_err(map_err(MAP_UPLINKS, "checking key and value sizes"))?,
            ips: HashMap::try_from(Map::HashMap(map(MAP_IPS)?))
                .map_err(map_err(MAP_IPS, "checking key and value sizes"))?,
            ports: HashMap::try_from(Map::HashMap(map(MAP_PORTS)?))
                .map_err(map_err(MAP_PORTS, "checking key and value sizes"))?,
            fdb: HashMap::try_from(Map::HashMap(map(MAP_FDB)?))
                .map_err(map_err(MAP_FDB, "checking key and value sizes"))?,
            nets: HashMap::try_from(Map::HashMap(map(MAP_NETS)?))
                .map_err(map_err(MAP_NETS, "checking key and value sizes"))?,
            counters: PerCpuArray::try_from(Map::PerCpuArray(map(MAP_COUNTERS)?))
                .map_err(map_err(MAP_COUNTERS, "checking key and value sizes"))?,
            slots: std::collections::HashMap::new(),
        }
        .with_slots_in_use())
    }

    /// Takes back the slots an adopted instance's entries hold.
    fn with_slots_in_use(mut self) -> FastPath {
        let ports: Vec<(u32, u32)> = self
            .ports
            .iter()
            .filter_map(Result::ok)
            .map(|(i, p)| (i, p.slot))
            .collect();
        let uplinks: Vec<(u32, u32)> = self
            .uplinks
            .iter()
            .filter_map(Result::ok)
            .map(|(k, u)| (k.ifindex, u.slot))
            .collect();
        self.slots
            .extend(ports.into_iter().chain(uplinks).filter(|(_, s)| *s != 0));
        self
    }

    /// The counter slot of device `ifindex`, given (and zeroed) on first
    /// use.
    pub fn slot(&mut self, ifindex: u32) -> Result<u32, EbpfError> {
        if let Some(&slot) = self.slots.get(&ifindex) {
            return Ok(slot);
        }
        let used: std::collections::HashSet<u32> = self.slots.values().copied().collect();
        let slot = (1..FP_MAX_PORTS)
            .find(|s| !used.contains(s))
            .ok_or(EbpfError::Missing("a free counter slot"))?;
        let cpus = aya::util::nr_cpus().map_err(|(_, source)| EbpfError::PinDir {
            path: PathBuf::from("/sys/devices/system/cpu/possible"),
            source,
        })?;
        let zero = PerCpuValues::try_from(vec![FpCounters::default(); cpus]).map_err(|source| {
            EbpfError::Map {
                map: MAP_COUNTERS,
                op: "zeroing a slot",
                source: Box::new(MapError::from(source)),
            }
        })?;
        self.counters
            .set(slot, zero, 0)
            .map_err(map_err(MAP_COUNTERS, "zeroing a slot"))?;
        self.slots.insert(ifindex, slot);
        Ok(slot)
    }

    /// The counter slot `ifindex` holds (0: none).
    pub fn slot_of(&self, ifindex: u32) -> u32 {
        self.slots.get(&ifindex).copied().unwrap_or(0)
    }

    /// Gives a device's counter slot back.
    pub fn release_slot(&mut self, ifindex: u32) {
        self.slots.remove(&ifindex);
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    pub fn pin_dir(&self) -> &Path {
        &self.dir
    }

    /// Where the link of `which` on `ifname` is pinned: one per device,
    /// but for the VTEP guard, which shares the provider interface with an
    /// uplink's program.
    fn link_path(&self, ifname: &IfName, which: Program) -> PathBuf {
        let dir = if which == Program::VtepGuard {
            GUARD_LINKS
        } else {
            LINKS
        };
        self.dir.join(dir).join(ifname.as_str())
    }

    fn program(&mut self, which: Program) -> &mut SchedClassifier {
        &mut self.progs[which.index()]
    }

    /// Attaches `which` to the tcx ingress of `ifname` (in the calling
    /// thread's namespace) and pins the link. A pinned link still attached
    /// there with the same program is kept: that is how a restart adopts.
    /// Returns true when it was kept.
    pub fn attach(&mut self, ifname: &IfName, which: Program) -> Result<bool, EbpfError> {
        let path = self.link_path(ifname, which);
        if path.exists() {
            if self.is_attached(ifname, which) {
                return Ok(true);
            }
            // The device went away (and maybe came back): the link is
            // defunct.
            unpin_link(&path)?;
        }
        let prog = self.program(which);
        let id = prog
            .attach_with_options(
                ifname.as_str(),
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::first()),
            )
            .map_err(|source| EbpfError::Load {
                program: which.name(),
                source: Box::new(source),
            })?;
        let link = prog.take_link(id).map_err(load_err(which.name()))?;
        let link = FdLink::try_from(link).map_err(|_| EbpfError::NotALink {
            ifname: ifname.as_str().to_owned(),
        })?;
        link.pin(&path).map_err(pin_err(&path))?;
        Ok(false)
    }

    /// Whether `which` is on the tcx ingress of `ifname` now.
    fn is_attached(&self, ifname: &IfName, which: Program) -> bool {
        let prog = &self.progs[which.index()];
        let Ok(ours) = prog.info().map(|i| i.id()) else {
            return false;
        };
        match SchedClassifier::query_tcx(ifname.as_str(), TcAttachType::Ingress) {
            Ok((_, progs)) => progs.iter().any(|p| p.id() == ours),
            Err(_) => false,
        }
    }

    /// Detaches whatever this instance pinned on `ifname`. Nothing pinned
    /// is success.
    pub fn detach(&mut self, ifname: &IfName) -> Result<(), EbpfError> {
        let path = self.link_path(ifname, Program::Port);
        if path.exists() {
            unpin_link(&path)?;
        }
        Ok(())
    }

    /// Detaches the VTEP guard from `ifname`, if this instance attached it.
    pub fn detach_guard(&mut self, ifname: &IfName) -> Result<(), EbpfError> {
        let path = self.link_path(ifname, Program::VtepGuard);
        if path.exists() {
            unpin_link(&path)?;
        }
        Ok(())
    }

    pub fn set_tunnel(&mut self, vni: u32, entry: &FpTunnel) -> Result<(), EbpfError> {
        self.tunnels
            .insert(vni, *entry, 0)
            .map_err(map_err(MAP_TUNNELS, "insert"))
    }

    pub fn remove_tunnel(&mut self, vni: u32) -> Result<(), EbpfError> {
        ignore_missing(self.tunnels.remove(&vni)).map_err(map_err(MAP_TUNNELS, "remove"))
    }

    pub fn set_peer(&mut self, key: PeerKey) -> Result<(), EbpfError> {
        self.peers
            .insert(key, 1, 0)
            .map_err(map_err(MAP_PEERS, "insert"))
    }

    pub fn remove_peer(&mut self, key: PeerKey) -> Result<(), EbpfError> {
        ignore_missing(self.peers.remove(&key)).map_err(map_err(MAP_PEERS, "remove"))
    }

    /// The peers of network `net` the kernel accepts VXLAN from.
    pub fn peers_of(&self, net: u32) -> Vec<PeerKey> {
        self.peers
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.net == net)
            .collect()
    }

    pub fn set_vtep(&mut self, port: u16, entry: &FpVtep) -> Result<(), EbpfError> {
        self.vteps
            .insert(u32::from(port), *entry, 0)
            .map_err(map_err(MAP_VTEPS, "insert"))
    }

    pub fn remove_vtep(&mut self, port: u16) -> Result<(), EbpfError> {
        ignore_missing(self.vteps.remove(&u32::from(port))).map_err(map_err(MAP_VTEPS, "remove"))
    }

    /// The FDB entries of network `net` (tunnel entries, for a resync).
    pub fn fdb_of(&self, net: u32) -> Vec<(FdbKey, FdbEntry)> {
        self.fdb
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, _)| k.net == net)
            .collect()
    }

    pub fn set_port(&mut self, ifindex: u32, port: &FpPort) -> Result<(), EbpfError> {
        self.ports
            .insert(ifindex, *port, 0)
            .map_err(map_err(MAP_PORTS, "insert"))
    }

    pub fn remove_port(&mut self, ifindex: u32) -> Result<(), EbpfError> {
        self.release_slot(ifindex);
        ignore_missing(self.ports.remove(&ifindex)).map_err(map_err(MAP_PORTS, "remove"))
    }

    pub fn set_fdb(&mut self, net: u32, mac: [u8; 6], entry: FdbEntry) -> Result<(), EbpfError> {
        let key = FdbKey {
            net,
            mac,
            pad: [0; 2],
        };
        self.fdb
            .insert(key, entry, 0)
            .map_err(map_err(MAP_FDB, "insert"))
    }

    pub fn remove_fdb(&mut self, net: u32, mac: [u8; 6]) -> Result<(), EbpfError> {
        let key = FdbKey {
            net,
            mac,
            pad: [0; 2],
        };
        ignore_missing(self.fdb.remove(&key)).map_err(map_err(MAP_FDB, "remove"))
    }

    pub fn set_uplink(&mut self, key: UplinkKey, entry: &FpUplink) -> Result<(), EbpfError> {
        self.uplinks
            .insert(key, *entry, 0)
            .map_err(map_err(MAP_UPLINKS, "insert"))
    }

    pub fn remove_uplink(&mut self, key: UplinkKey) -> Result<(), EbpfError> {
        ignore_missing(self.uplinks.remove(&key)).map_err(map_err(MAP_UPLINKS, "remove"))
    }

    pub fn set_ip(&mut self, key: IpKey, entry: &FpIp) -> Result<(), EbpfError> {
        self.ips
            .insert(key, *entry, 0)
            .map_err(map_err(MAP_IPS, "insert"))
    }

    pub fn remove_ip(&mut self, key: IpKey) -> Result<(), EbpfError> {
        ignore_missing(self.ips.remove(&key)).map_err(map_err(MAP_IPS, "remove"))
    }

    /// A handle on the FDB for the datapath thread, which mirrors the MACs
    /// learned on network `net`'s uplink port into it.
    pub fn fdb_mirror(&self, net: u32, uplink_port: u32) -> Result<FdbMirror, EbpfError> {
        let data = MapData::from_pin(self.dir.join(MAP_FDB))
            .map_err(map_err(MAP_FDB, "opening the pinned map"))?;
        Ok(FdbMirror {
            fdb: HashMap::try_from(Map::HashMap(data))
                .map_err(map_err(MAP_FDB, "checking key and value sizes"))?,
            net,
            uplink_port,
            mirrored: std::collections::HashSet::new(),
        })
    }

    /// A handle on the offloaded flows for the datapath thread.
    pub fn flow_table(&self) -> Result<FlowTable, EbpfError> {
        let data = MapData::from_pin(self.dir.join(MAP_FLOWS))
            .map_err(map_err(MAP_FLOWS, "opening the pinned map"))?;
        Ok(FlowTable {
            map: HashMap::try_from(Map::HashMap(data))
                .map_err(map_err(MAP_FLOWS, "checking key and value sizes"))?,
        })
    }

    pub fn set_net(&mut self, net: u32, entry: &FpNet) -> Result<(), EbpfError> {
        self.nets
            .insert(net, *entry, 0)
            .map_err(map_err(MAP_NETS, "insert"))
    }

    pub fn remove_net(&mut self, net: u32) -> Result<(), EbpfError> {
        ignore_missing(self.nets.remove(&net)).map_err(map_err(MAP_NETS, "remove"))
    }

    /// The kernel's counters for `ifindex`, summed over CPUs (zero before
    /// the first frame).
    pub fn counters(&self, ifindex: u32) -> FpCounters {
        let mut sum = FpCounters::default();
        let Some(&slot) = self.slots.get(&ifindex) else {
            return sum;
        };
        if let Ok(per_cpu) = self.counters.get(&slot, 0) {
            for c in per_cpu.iter() {
                sum.add(c);
            }
        }
        sum
    }

    /// Removes the entries of devices not in `live` (left by an instance
    /// whose ports are gone), and FDB entries that lead to them.
    pub fn retain_ports(&mut self, live: &[u32]) -> Result<(), EbpfError> {
        let stale: Vec<u32> = self
            .ports
            .keys()
            .filter_map(Result::ok)
            .filter(|i| !live.contains(i))
            .collect();
        for ifindex in &stale {
            self.remove_port(*ifindex)?;
        }
        let dead: Vec<FdbKey> = self
            .fdb
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, e)| e.flags & fdb_flags::ENDPOINT != 0 && !live.contains(&e.ifindex))
            .map(|(k, _)| k)
            .collect();
        for key in dead {
            ignore_missing(self.fdb.remove(&key)).map_err(map_err(MAP_FDB, "remove"))?;
        }
        Ok(())
    }

    /// Every pinned attachment, with whether the kernel still runs it.
    pub fn attachments(&self) -> Vec<Attachment> {
        let mut out = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.join(GUARD_LINKS)) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Ok(ifname) = IfName::new(&name) else {
                    continue;
                };
                out.push(Attachment {
                    attached: self.is_attached(&ifname, Program::VtepGuard),
                    ifindex: crate::sys::if_index(&name).unwrap_or(0),
                    ifname: name,
                    program: Program::VtepGuard.name(),
                });
            }
        }
        let Ok(entries) = std::fs::read_dir(self.dir.join(LINKS)) else {
            return out;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(ifname) = IfName::new(&name) else {
                continue;
            };
            let ifindex = crate::sys::if_index(&name).unwrap_or(0);
            let which = match self.ports.get(&ifindex, 0) {
                Ok(p) if p.flags & port_flags::INJECT != 0 => Program::Inject,
                Ok(p) if p.flags & port_flags::TUNNEL != 0 => Program::TunnelInject,
                Ok(p) if p.flags & port_flags::VXLAN != 0 => Program::Tunnel,
                Ok(_) => Program::Port,
                Err(_) => Program::Uplink,
            };
            out.push(Attachment {
                attached: self.is_attached(&ifname, which),
                ifname: name,
                ifindex,
                program: which.name(),
            });
        }
        out.sort_by(|a, b| a.ifname.cmp(&b.ifname));
        out
    }
}

/// The MACs the slow path learned on one network's uplink port, mirrored
/// into the kernel FDB as "on the wire", so a veth endpoint's frames to them
/// leave through the uplink without the slow path. Owned by the datapath
/// thread, which syncs it from its FDB.
pub struct FdbMirror {
    fdb: HashMap<MapData, FdbKey, FdbEntry>,
    pub net: u32,
    pub uplink_port: u32,
    mirrored: std::collections::HashSet<[u8; 6]>,
}

impl fmt::Debug for FdbMirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FdbMirror")
            .field("net", &self.net)
            .field("mirrored", &self.mirrored.len())
            .finish_non_exhaustive()
    }
}

impl FdbMirror {
    fn key(&self, mac: [u8; 6]) -> FdbKey {
        FdbKey {
            net: self.net,
            mac,
            pad: [0; 2],
        }
    }

    /// Makes the kernel's uplink entries of this network exactly `learned`.
    pub fn sync(&mut self, learned: &std::collections::HashSet<[u8; 6]>) {
        let gone: Vec<[u8; 6]> = self.mirrored.difference(learned).copied().collect();
        for mac in gone {
            let key = self.key(mac);
            // Only an uplink entry: never an endpoint's that replaced it.
            if matches!(self.fdb.get(&key, 0), Ok(e) if e.flags & fdb_flags::UPLINK != 0) {
                let _ = self.fdb.remove(&key);
            }
            self.mirrored.remove(&mac);
        }
        for mac in learned {
            if self.mirrored.contains(mac) {
                continue;
            }
            let key = self.key(*mac);
            if let Ok(e) = self.fdb.get(&key, 0) {
                // A previous instance's mirror entry is taken over; an
                // endpoint's own MAC is left alone.
                if e.flags & fdb_flags::UPLINK != 0 {
                    self.mirrored.insert(*mac);
                }
                continue;
            }
            let entry = FdbEntry {
                flags: fdb_flags::UPLINK,
                ..FdbEntry::default()
            };
            match self.fdb.insert(key, entry, 0) {
                Ok(()) => {
                    self.mirrored.insert(*mac);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "kernel FDB full: the slow path keeps forwarding");
                    break;
                }
            }
        }
    }

    /// Removes every entry this mirror made.
    pub fn clear(&mut self) {
        self.sync(&std::collections::HashSet::new());
    }
}

/// The kernel's offloaded flows, as the datapath thread installs, reads and
/// removes them.
pub struct FlowTable {
    map: HashMap<MapData, FlowKey, FpFlow>,
}

impl fmt::Debug for FlowTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowTable").finish_non_exhaustive()
    }
}

impl FlowTable {
    /// Offloads a flow; fails when the map is full (the slow path keeps it).
    pub fn insert(&mut self, key: &FlowKey, flow: &FpFlow) -> Result<(), EbpfError> {
        self.map
            .insert(*key, *flow, 0)
            .map_err(map_err(MAP_FLOWS, "insert"))
    }

    /// The kernel's packet count of an offloaded flow, if it is there.
    pub fn packets(&self, key: &FlowKey) -> Option<u64> {
        self.map.get(key, 0).ok().map(|f| f.packets)
    }

    pub fn remove(&mut self, key: &FlowKey) {
        let _ = self.map.remove(key);
    }

    /// Every offloaded flow's key (a restarted daemon takes them over or
    /// drops them).
    pub fn keys(&self) -> Vec<FlowKey> {
        self.map.keys().filter_map(Result::ok).collect()
    }
}

/// True when this process's mount namespace is not init's.
fn private_mounts() -> bool {
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    matches!((ns("self"), ns("1")), (Some(a), Some(b)) if a != b)
}

/// The layout and version the pinned `meta` map records, if there is one.
fn read_meta(dir: &Path) -> Option<(u32, u64)> {
    let data = MapData::from_pin(dir.join(MAP_META)).ok()?;
    let map: aya::maps::Array<MapData, FpMeta> =
        aya::maps::Array::try_from(Map::Array(data)).ok()?;
    let meta = map.get(&0, 0).ok()?;
    Some((meta.layout, meta.version))
}

/// Loads the object, pins its maps and programs in `dir` and records the
/// version in `meta`.
fn load_and_pin(dir: &Path, version: u64) -> Result<(), EbpfError> {
    let mut ebpf = Ebpf::load(FASTPATH_OBJ).map_err(|source| EbpfError::Parse {
        program: "fastpath",
        source: Box::new(source),
    })?;
    for which in Program::ALL {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(which.name())
            .ok_or(EbpfError::Missing(which.name()))?
            .try_into()
            .map_err(load_err(which.name()))?;
        prog.load().map_err(load_err(which.name()))?;
        let path = dir.join(which.name());
        prog.pin(&path).map_err(pin_err(&path))?;
    }
    for name in MAPS {
        let map = ebpf.map(name).ok_or(EbpfError::Missing(name))?;
        let path = dir.join(name);
        map.pin(&path).map_err(pin_err(&path))?;
    }
    let meta = ebpf
        .take_map(MAP_META)
        .ok_or(EbpfError::Missing(MAP_META))?;
    let mut meta: aya::maps::Array<MapData, FpMeta> =
        aya::maps::Array::try_from(meta).map_err(map_err(MAP_META, "typing"))?;
    // Written last: a half-pinned directory has no meta and is replaced.
    meta.set(
        0,
        FpMeta {
            layout: LAYOUT,
            reserved: 0,
            version,
        },
        0,
    )
    .map_err(map_err(MAP_META, "write"))?;
    Ok(())
}

/// Unpins a link; closing the last descriptor (here) detaches it.
fn unpin_link(path: &Path) -> Result<(), EbpfError> {
    match PinnedLink::from_pin(path) {
        Ok(link) => {
            let fd = link.unpin().map_err(|source| EbpfError::Unpin {
                path: path.to_owned(),
                source,
            })?;
            drop(fd);
            Ok(())
        }
        // Not a link (or unreadable): remove the file all the same.
        Err(_) => std::fs::remove_file(path).map_err(|source| EbpfError::Unpin {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Removes everything pinned in `dir`: links first (detaching them), then
/// programs and maps.
fn remove_pins(dir: &Path) -> Result<(), EbpfError> {
    for links in [GUARD_LINKS, LINKS] {
        if let Ok(entries) = std::fs::read_dir(dir.join(links)) {
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    unpin_link(&entry.path())?;
                }
            }
        }
    }
    // meta first, so an interrupted removal is never mistaken for a
    // complete pin set.
    let names = std::iter::once(MAP_META)
        .chain(MAPS.into_iter().filter(|m| *m != MAP_META))
        .chain(Program::ALL.iter().map(|p| p.name()));
    for name in names {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(EbpfError::Unpin { path, source }),
        }
    }
    Ok(())
}

fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::DropReason;

    /// The C enum in drop_reasons.h is the Rust DropReason, name for name
    /// and number for number.
    #[test]
    fn drop_reasons_match_the_c_header() {
        let header = include_str!("../../../xdp-prog/drop_reasons.h");
        let mut found = Vec::new();
        for line in header.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("DROP_") {
                if let Some((name, num)) = rest.trim_end_matches(',').split_once(" = ") {
                    found.push((name.to_ascii_lowercase(), num.parse::<u8>().unwrap()));
                }
            }
        }
        let ours: Vec<(String, u8)> = DropReason::ALL
            .iter()
            .map(|r| (r.name().to_owned(), *r as u8))
            .collect();
        assert_eq!(found, ours);
        assert!(ours.len() <= 32, "fp_counters.drops has 32 slots");
    }

    #[test]
    fn layout_matches_the_c_header() {
        let header = include_str!("../../../xdp-prog/fastpath.h");
        assert!(header.contains(&format!("#define FP_LAYOUT {LAYOUT}\n")));
    }

    #[test]
    fn pin_dirs_differ_per_state_dir_and_cannot_be_interface_names() {
        let a = FastPath::pin_dir_for(Path::new("/var/lib/vswitch"));
        let b = FastPath::pin_dir_for(Path::new("/tmp/other"));
        assert_ne!(a, b);
        let name = a.file_name().unwrap().to_str().unwrap();
        assert!(
            IfName::new(name).is_err(),
            "{name} could be an uplink's pin dir"
        );
    }
}
