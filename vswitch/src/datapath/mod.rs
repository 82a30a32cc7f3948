//! The slow-path datapath: one thread that owns every port and every
//! network's forwarding database, and moves frames between them.
//!
//! The control plane talks to it only through [`Datapath`], whose calls are
//! queued to the thread and answered when applied, so the thread's tables
//! need no locks. Counters are shared ([`PortCounters`]) and read lock-free.
//!
//! Per frame: classify -> decide (the [`pipeline`](crate::pipeline):
//! port security, l2bridge, learning, FDB, to a [`Verdict`]) -> execute
//! (here: apply the verdict's header transformation, send to its ports).
//! This module knows port types (TAP, AF_XDP trunk queue, packet socket);
//! the pipeline knows only their roles.

pub mod counters;
mod gro;
mod gso;
mod mirror;
mod offload;
#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;

use foldhash::{HashMap, HashMapExt};
use std::io;
use std::net::IpAddr;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use crate::pipeline::{NetId, PortId, PortSecurity};
pub use counters::{DropReason, PortCounters};
pub use mirror::PortMirroring;
pub use offload::KernelPort;

use crate::ebpf::fastpath::{FdbMirror, FlowTable};
use crate::ebpf::EchoIds;
use crate::pipeline::conntrack::{ConnInfo, Limits};
use crate::pipeline::flowcache::CacheStats;
use crate::pipeline::nat::NatConfig;
use crate::pipeline::verdict::pop_vlan;
use crate::pipeline::{
    apply, Decision, FlowInfo, HeaderTransform, Layers, NetworkConfig, Pipeline, PortPolicy,
    PortRole, TableSizes, TraceStep, Verdict,
};
use crate::port::{Packet, PortIo, VirtioNetHdr, BATCH, UPLINK_BATCH};
use crate::sys::{Epoll, EventFd};
use crate::wire::MacAddr;

pub type TrunkId = u32;

/// How often learned addresses are checked for expiry.
const AGING_TICK: Duration = Duration::from_secs(1);
const WAKE_TOKEN: u64 = u64::MAX;
/// Epoll tokens of trunk queues: this bit, the trunk id and the queue.
const TRUNK_TOKEN: u64 = 1 << 48;
/// Frames read at once from a port with a QOS rate.
const SHAPED_BATCH: usize = 4;
/// How often MACs learned on uplinks are mirrored into the kernel FDB: a
/// veth endpoint's flow to the wire moves to the kernel within this.
const MIRROR_TICK: Duration = Duration::from_millis(200);

/// Where a port's frames come from and go to.
pub enum PortKind {
    /// A vNIC the datapath reads and writes itself (a TAP).
    Local(Box<dyn PortIo>),
    /// A network's attachment to an uplink trunk, on one VLAN (0 for
    /// untagged). With `l2bridge`, frames leave with that MAC as their
    /// source and arrive translated back (see [`l2bridge`]).
    Uplink {
        trunk: TrunkId,
        vlan: u16,
        l2bridge: Option<MacAddr>,
    },
    /// An overlay network's tunnel port: a TAP whose frames the kernel
    /// encapsulates to other hosts (and through which it hands the slow
    /// path what it decapsulated and did not deliver itself).
    Tunnel(Box<dyn PortIo>),
}

/// A port as handed to the datapath.
pub struct PortSpec {
    pub id: PortId,
    pub net: NetId,
    pub kind: PortKind,
    pub counters: Arc<PortCounters>,
    /// `None` for trusted ports (host and uplink ports); endpoints get their
    /// own addresses here unless they may spoof.
    pub security: Option<PortSecurity>,
    /// Whether the port accepts GSO super-frames (offloading TAPs do).
    pub gso: bool,
    /// The endpoint's addresses, which an l2bridge network answers ARP and
    /// neighbour solicitations for.
    pub addrs: Vec<(IpAddr, MacAddr)>,
    /// A vNIC's own MAC: frames to it go to this port without learning,
    /// and no other port may send from it.
    pub mac: Option<MacAddr>,
    /// Guards, ACLs, QoS.
    pub layers: Layers,
    /// How the kernel fast path reaches the port (veth endpoints, uplinks),
    /// for offloaded flows.
    pub kernel: Option<KernelPort>,
}

/// An uplink device as handed to the datapath: one AF_XDP socket per
/// receive queue. Frames are sent through the first.
pub struct TrunkSpec {
    pub id: TrunkId,
    pub queues: Vec<Box<dyn PortIo>>,
    /// Where GSO super-frames leave, whole (a packet socket); without it
    /// they are segmented in software and sent through the first queue.
    pub super_frames: Option<Box<dyn PortIo>>,
    /// Frames on the wire side, before VLAN demultiplexing.
    pub counters: Arc<PortCounters>,
}

enum Command {
    AddNetwork {
        net: NetId,
        cfg: NetworkConfig,
    },
    RemoveNetwork {
        net: NetId,
    },
    AddTrunk(TrunkSpec),
    RemoveTrunk {
        trunk: TrunkId,
    },
    AddPort(PortSpec),
    RemovePort {
        port: PortId,
    },
    DumpFdb {
        net: NetId,
    },
    SetMirror {
        net: NetId,
        mirror: Option<FdbMirror>,
    },
    SetFlowTable(Option<FlowTable>),
    SetLayers {
        port: PortId,
        layers: Layers,
    },
    SetSecurity {
        port: PortId,
        security: Option<PortSecurity>,
    },
    FlowStats,
    TableSizes,
    DumpFlows {
        port: Option<PortId>,
    },
    Trace {
        port: PortId,
        frame: Vec<u8>,
    },
    SetNat {
        net: NetId,
        cfg: Option<NatConfig>,
        echo_ids: Option<EchoIds>,
    },
    SetPortMirror {
        port: PortId,
        role: PortMirroring,
    },
    SetRemote {
        net: NetId,
        ip: IpAddr,
        mac: Option<MacAddr>,
    },
    SetRouter {
        net: NetId,
        router: Option<crate::pipeline::overlay::Router>,
    },
}

/// A traced decision: what it was, and how it was reached; the ports it
/// goes to (a flood's, expanded).
pub struct TraceResult {
    pub decision: Decision,
    pub steps: Vec<TraceStep>,
    pub out_ports: Vec<PortId>,
}

enum Outcome {
    Done,
    Fdb(Vec<(MacAddr, PortId, Duration)>),
    FlowStats(Vec<(PortId, CacheStats, usize)>),
    TableSizes(TableSizes),
    Flows(Vec<FlowInfo>, Vec<ConnInfo>),
    Trace(Option<TraceResult>),
    Failed(io::Error),
}

struct Call {
    cmd: Command,
    reply: SyncSender<Outcome>,
}

/// Handle to the datapath thread. Dropping it stops the thread and closes
/// every port's file descriptor (persistent devices stay).
pub struct Datapath {
    calls: Option<Sender<Call>>,
    wake: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl Datapath {
    /// Starts the datapath thread; `limits` bound connection tracking.
    pub fn spawn(limits: Limits) -> io::Result<Datapath> {
        let epoll = Epoll::new()?;
        let wake = Arc::new(EventFd::new()?);
        epoll.add(wake.raw_fd(), WAKE_TOKEN)?;
        let (tx, rx) = mpsc::channel();
        let worker = Worker::new(epoll, wake.clone(), rx, limits);
        let thread = std::thread::Builder::new()
            .name("datapath".into())
            .spawn(move || {
                // Without its datapath the daemon would answer the API while
                // forwarding nothing. Exiting instead lets a supervisor (or
                // the user) restart it; the state and the endpoints' TAPs
                // are all still there.
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.run()));
                let why = match outcome {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "the datapath thread panicked".to_owned(),
                };
                tracing::error!(error = %why, "datapath stopped; exiting so vswitchd can be restarted");
                std::process::exit(70);
            })?;
        Ok(Datapath {
            calls: Some(tx),
            wake,
            thread: Some(thread),
        })
    }

    fn call(&self, cmd: Command) -> io::Result<Outcome> {
        let (reply, answer) = mpsc::sync_channel(1);
        let gone = || io::Error::other("datapath thread has stopped");
        self.calls
            .as_ref()
            .ok_or_else(gone)?
            .send(Call { cmd, reply })
            .map_err(|_| gone())?;
        self.wake.notify()?;
        match answer.recv().map_err(|_| gone())? {
            Outcome::Failed(e) => Err(e),
            outcome => Ok(outcome),
        }
    }

    /// `cfg.offload`: the network's vNICs take super-frames, so frames
    /// from its uplink may be joined into them.
    pub fn add_network(&self, net: NetId, cfg: NetworkConfig) -> io::Result<()> {
        self.call(Command::AddNetwork { net, cfg }).map(drop)
    }

    /// Removes a network; its ports must have been removed first.
    pub fn remove_network(&self, net: NetId) -> io::Result<()> {
        self.call(Command::RemoveNetwork { net }).map(drop)
    }

    /// Adds an uplink device; networks attach to it with uplink ports.
    pub fn add_trunk(&self, spec: TrunkSpec) -> io::Result<()> {
        self.call(Command::AddTrunk(spec)).map(drop)
    }

    /// Removes an uplink device; its sockets are closed when this returns.
    pub fn remove_trunk(&self, trunk: TrunkId) -> io::Result<()> {
        self.call(Command::RemoveTrunk { trunk }).map(drop)
    }

    pub fn add_port(&self, spec: PortSpec) -> io::Result<()> {
        self.call(Command::AddPort(spec)).map(drop)
    }

    /// Removes a port; when this returns its file descriptor is closed.
    pub fn remove_port(&self, port: PortId) -> io::Result<()> {
        self.call(Command::RemovePort { port }).map(drop)
    }

    /// The network's learned addresses: MAC, port, time since last seen.
    pub fn fdb(&self, net: NetId) -> io::Result<Vec<(MacAddr, PortId, Duration)>> {
        match self.call(Command::DumpFdb { net })? {
            Outcome::Fdb(entries) => Ok(entries),
            _ => Ok(Vec::new()),
        }
    }

    /// Mirrors (or, with `None`, stops mirroring) the MACs learned on a
    /// network's uplink port into the kernel fast path's FDB.
    pub fn set_mirror(&self, net: NetId, mirror: Option<FdbMirror>) -> io::Result<()> {
        self.call(Command::SetMirror { net, mirror }).map(drop)
    }

    /// Hands the datapath the kernel's flow map, where it offloads flows.
    pub fn set_flow_table(&self, table: Option<FlowTable>) -> io::Result<()> {
        self.call(Command::SetFlowTable(table)).map(drop)
    }

    /// Replaces a port's policy layers; cached flows are recomputed.
    pub fn set_layers(&self, port: PortId, layers: Layers) -> io::Result<()> {
        self.call(Command::SetLayers { port, layers }).map(drop)
    }

    /// Replaces the addresses a port may send from (`None`: any).
    pub fn set_security(&self, port: PortId, security: Option<PortSecurity>) -> io::Result<()> {
        self.call(Command::SetSecurity { port, security }).map(drop)
    }

    /// Makes `net` a nat network with `cfg` (or not, with `None`);
    /// `echo_ids` is where the echo identifiers it translates to go, for the
    /// uplink's XDP program.
    pub fn set_nat(
        &self,
        net: NetId,
        cfg: Option<NatConfig>,
        echo_ids: Option<EchoIds>,
    ) -> io::Result<()> {
        self.call(Command::SetNat { net, cfg, echo_ids }).map(drop)
    }

    /// Gives a port its port mirroring role (see mirror.rs); a source's
    /// offloaded flows are taken back, so its frames cross the datapath.
    pub fn set_port_mirror(&self, port: PortId, role: PortMirroring) -> io::Result<()> {
        self.call(Command::SetPortMirror { port, role }).map(drop)
    }

    /// Adds (`mac` given) or removes a customer address of overlay network
    /// `net` on another host.
    pub fn set_remote(&self, net: NetId, ip: IpAddr, mac: Option<MacAddr>) -> io::Result<()> {
        self.call(Command::SetRemote { net, ip, mac }).map(drop)
    }

    /// Replaces overlay network `net`'s distributed router (its
    /// RemoteSubnetRoute policies; `None`: none).
    pub fn set_router(
        &self,
        net: NetId,
        router: Option<crate::pipeline::overlay::Router>,
    ) -> io::Result<()> {
        self.call(Command::SetRouter { net, router }).map(drop)
    }

    /// Every port's flow cache counters and number of entries.
    pub fn flow_stats(&self) -> io::Result<Vec<(PortId, CacheStats, usize)>> {
        match self.call(Command::FlowStats)? {
            Outcome::FlowStats(s) => Ok(s),
            _ => Ok(Vec::new()),
        }
    }

    /// How full the FDBs, NAT pools and connection table are.
    pub fn table_sizes(&self) -> io::Result<TableSizes> {
        match self.call(Command::TableSizes)? {
            Outcome::TableSizes(s) => Ok(s),
            _ => Ok(TableSizes::default()),
        }
    }

    /// The flow cache entries and tracked connections of `port`, or all.
    pub fn flows(&self, port: Option<PortId>) -> io::Result<(Vec<FlowInfo>, Vec<ConnInfo>)> {
        match self.call(Command::DumpFlows { port })? {
            Outcome::Flows(f, c) => Ok((f, c)),
            _ => Ok((Vec::new(), Vec::new())),
        }
    }

    /// What the pipeline would do with `frame` arriving on `port`, changing
    /// nothing; `None` if the port is not in the datapath.
    pub fn trace(&self, port: PortId, frame: Vec<u8>) -> io::Result<Option<TraceResult>> {
        match self.call(Command::Trace { port, frame })? {
            Outcome::Trace(t) => Ok(t),
            _ => Ok(None),
        }
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        // Closing the channel tells the worker to stop.
        self.calls = None;
        let _ = self.wake.notify();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

enum SlotKind {
    Local(Box<dyn PortIo>),
    /// Sends through the trunk's queues; `vlan` is the trunk member it is.
    Uplink {
        trunk: TrunkId,
        vlan: u16,
    },
}

/// A port's I/O side; its forwarding side is in the pipeline.
struct PortSlot {
    kind: SlotKind,
    net: NetId,
    counters: Arc<PortCounters>,
    gso: bool,
    /// Sent to since the last flush.
    dirty: bool,
}

struct TrunkSlot {
    queues: Vec<Box<dyn PortIo>>,
    super_frames: Option<Box<dyn PortIo>>,
    /// The uplink port of each VLAN using this trunk.
    members: HashMap<u16, PortId>,
    counters: Arc<PortCounters>,
    dirty: bool,
}

/// The ports and the pipeline, apart from the receive batch so that
/// frames in the batch can be read while ports are written.
struct Tables {
    ports: HashMap<PortId, PortSlot>,
    pipeline: Pipeline,
    trunks: HashMap<TrunkId, TrunkSlot>,
    /// Frames leaving transformed are composed here (translated, tagged),
    /// so a flood can still hand the original to other ports.
    egress: Packet,
    /// Asks the kernel for nat networks' next hops.
    neighbours: Neighbours,
    /// Where each nat network's echo identifiers are steered.
    echo_ids: HashMap<NetId, EchoIds>,
    /// Networks whose uplink-learned MACs the kernel fast path knows.
    mirrors: HashMap<NetId, FdbMirror>,
    /// Flows handed to the kernel fast path.
    offloads: offload::Offloads,
    /// Port mirroring: sources and each network's destinations.
    port_mirrors: mirror::Mirrors,
}

/// Next-hop MACs of nat networks, from the kernel's neighbour table (the
/// uplink is the host's too; the kernel resolves, the switch asks).
struct Neighbours {
    netlink: Option<crate::netns::netlink::Netlink>,
    /// When each address was last asked about: at most every 100 ms, so a
    /// burst towards an unresolved hop costs one netlink call.
    asked: std::collections::HashMap<std::net::Ipv4Addr, Instant>,
}

impl Neighbours {
    const RETRY: Duration = Duration::from_millis(100);

    fn new() -> Neighbours {
        Neighbours {
            netlink: None,
            asked: std::collections::HashMap::new(),
        }
    }

    /// Asks the kernel for `ip`'s MAC on `ifindex`; on an answer, tells the
    /// pipeline (true). Otherwise starts the kernel's resolution.
    fn lookup(
        &mut self,
        pipeline: &mut Pipeline,
        net: NetId,
        ifindex: u32,
        ip: std::net::Ipv4Addr,
        now: Instant,
    ) -> bool {
        if self
            .asked
            .get(&ip)
            .is_some_and(|t| now.saturating_duration_since(*t) < Self::RETRY)
        {
            return false;
        }
        self.asked.insert(ip, now);
        if self.netlink.is_none() {
            match crate::netns::netlink::Netlink::open() {
                Ok(nl) => self.netlink = Some(nl),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open netlink for neighbour lookups");
                    return false;
                }
            }
        }
        let nl = self.netlink.as_mut().expect("opened above");
        match nl.neigh_get(ifindex, ip) {
            Ok(Some(n)) if n.usable() => {
                if let Some(mac) = n.mac {
                    pipeline.set_neighbour(net, ip, MacAddr(mac), now);
                    self.asked.remove(&ip);
                    // The switch's own frames bypass the kernel's neighbour
                    // code: a stale entry is confirmed again before the
                    // kernel forgets it.
                    if n.state & crate::netns::netlink::nud::STALE != 0 {
                        let _ = nl.neigh_resolve(ifindex, ip);
                    }
                    return true;
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, %ip, "neighbour lookup failed"),
        }
        if let Err(e) = nl.neigh_resolve(ifindex, ip) {
            tracing::debug!(error = %e, %ip, "could not start neighbour resolution");
        }
        false
    }
}

impl Tables {
    fn new(limits: Limits) -> Tables {
        Tables {
            ports: HashMap::new(),
            pipeline: Pipeline::new(limits),
            trunks: HashMap::new(),
            egress: Packet::new(),
            neighbours: Neighbours::new(),
            echo_ids: HashMap::new(),
            mirrors: HashMap::new(),
            offloads: offload::Offloads::new(),
            port_mirrors: mirror::Mirrors::new(),
        }
    }

    fn add_trunk(&mut self, epoll: &Epoll, spec: TrunkSpec) -> Outcome {
        for (q, io) in spec.queues.iter().enumerate() {
            let token = TRUNK_TOKEN | (u64::from(spec.id) << 16) | q as u64;
            if let Err(e) = epoll.add(io.raw_fd(), token) {
                for io in &spec.queues[..q] {
                    let _ = epoll.delete(io.raw_fd());
                }
                return Outcome::Failed(e);
            }
        }
        self.trunks.insert(
            spec.id,
            TrunkSlot {
                queues: spec.queues,
                super_frames: spec.super_frames,
                members: HashMap::new(),
                counters: spec.counters,
                dirty: false,
            },
        );
        Outcome::Done
    }

    fn add_port(&mut self, epoll: &Epoll, spec: PortSpec) -> Outcome {
        let failed = |msg: String| Outcome::Failed(io::Error::other(msg));
        if !self.pipeline.has_network(spec.net) {
            return failed(format!("datapath has no network {}", spec.net));
        }
        let (kind, role) = match spec.kind {
            PortKind::Local(io) => {
                if let Err(e) = epoll.add(io.raw_fd(), u64::from(spec.id)) {
                    return Outcome::Failed(e);
                }
                (SlotKind::Local(io), PortRole::Vnic)
            }
            PortKind::Tunnel(io) => {
                if let Err(e) = epoll.add(io.raw_fd(), u64::from(spec.id)) {
                    return Outcome::Failed(e);
                }
                (SlotKind::Local(io), PortRole::Tunnel)
            }
            PortKind::Uplink {
                trunk,
                vlan,
                l2bridge,
            } => {
                let Some(slot) = self.trunks.get_mut(&trunk) else {
                    return failed(format!("datapath has no trunk {trunk}"));
                };
                if slot.members.contains_key(&vlan) {
                    return failed(format!("VLAN {vlan} of trunk {trunk} is taken"));
                }
                slot.members.insert(vlan, spec.id);
                (
                    SlotKind::Uplink { trunk, vlan },
                    PortRole::Uplink { vlan, l2bridge },
                )
            }
        };
        let policy = PortPolicy {
            net: spec.net,
            role,
            security: spec.security,
            addrs: spec.addrs,
            mac: spec.mac,
            layers: spec.layers,
        };
        let added = self.pipeline.add_port(spec.id, policy);
        debug_assert!(added, "the network was checked above");
        self.offloads.set_port(spec.id, spec.kernel);
        self.ports.insert(
            spec.id,
            PortSlot {
                kind,
                net: spec.net,
                counters: spec.counters,
                gso: spec.gso,
                dirty: false,
            },
        );
        Outcome::Done
    }

    fn remove_port(&mut self, epoll: &Epoll, port: PortId) {
        self.offloads.remove_port(port);
        self.port_mirrors.remove(port);
        if let Some(slot) = self.ports.remove(&port) {
            match &slot.kind {
                SlotKind::Local(io) => {
                    let _ = epoll.delete(io.raw_fd());
                }
                SlotKind::Uplink { trunk, vlan } => {
                    if let Some(trunk) = self.trunks.get_mut(trunk) {
                        trunk.members.remove(vlan);
                    }
                }
            }
            self.pipeline.remove_port(port);
        }
    }
}

struct Worker {
    epoll: Epoll,
    wake: Arc<EventFd>,
    calls: Receiver<Call>,
    tables: Tables,
    batch: Vec<Packet>,
    /// Frames taken from an uplink queue at once: enough for a run of
    /// wire-sized TCP segments to fill a 64 KiB super-frame (see gro.rs).
    uplink_batch: Vec<Packet>,
    /// Shaped ports taken out of epoll, and when to read them again.
    paused: Vec<(PortId, Instant)>,
}

impl Worker {
    fn new(epoll: Epoll, wake: Arc<EventFd>, calls: Receiver<Call>, limits: Limits) -> Worker {
        Worker {
            epoll,
            wake,
            calls,
            tables: Tables::new(limits),
            batch: (0..BATCH).map(|_| Packet::new()).collect(),
            uplink_batch: (0..UPLINK_BATCH).map(|_| Packet::new()).collect(),
            paused: Vec::new(),
        }
    }

    /// Runs until the control side hangs up (`Ok`) or polling fails.
    fn run(mut self) -> io::Result<()> {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
        let mut ready: Vec<(u64, bool)> = Vec::with_capacity(64);
        let mut last_aging = Instant::now();
        let mut last_mirror = Instant::now();
        loop {
            ready.clear();
            // Wake for the first shaped port due to be read again.
            let timeout = self
                .paused
                .iter()
                .map(|(_, t)| t.saturating_duration_since(Instant::now()))
                .min()
                .map_or(AGING_TICK, |d| d.min(AGING_TICK));
            let timeout_ms = timeout.as_nanos().div_ceil(1_000_000) as i32;
            ready.extend(self.epoll.wait(&mut events, timeout_ms)?);
            let now = Instant::now();
            self.resume_shaped(now);
            for &(token, broken) in &ready {
                if token == WAKE_TOKEN {
                    self.wake.drain();
                    if !self.apply_calls() {
                        return Ok(());
                    }
                } else if token & TRUNK_TOKEN != 0 {
                    let trunk = ((token >> 16) & 0xffff_ffff) as TrunkId;
                    self.poll_trunk(trunk, (token & 0xffff) as usize, broken, now);
                } else {
                    self.poll_port(token as PortId, broken, now);
                }
            }
            self.tables.flush();
            if now.duration_since(last_aging) >= AGING_TICK {
                last_aging = now;
                self.tables.pipeline.age(now);
                self.tables.steer_echo_ids();
                self.tables.offloads.sync(&mut self.tables.pipeline, now);
            }
            if !self.tables.mirrors.is_empty() && now.duration_since(last_mirror) >= MIRROR_TICK {
                last_mirror = now;
                self.tables.sync_mirrors(now);
            }
        }
    }

    /// Applies queued control calls; false when the control side is gone.
    fn apply_calls(&mut self) -> bool {
        loop {
            match self.calls.try_recv() {
                Ok(call) => {
                    let outcome = self.apply(call.cmd);
                    let _ = call.reply.send(outcome);
                }
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn apply(&mut self, cmd: Command) -> Outcome {
        let t = &mut self.tables;
        match cmd {
            Command::AddNetwork { net, cfg } => {
                t.pipeline.add_network(net, cfg);
                Outcome::Done
            }
            Command::RemoveNetwork { net } => {
                t.offloads.forget_net(net);
                t.pipeline.remove_network(net);
                if let Some(mut m) = t.mirrors.remove(&net) {
                    m.clear();
                }
                Outcome::Done
            }
            Command::AddTrunk(spec) => t.add_trunk(&self.epoll, spec),
            Command::RemoveTrunk { trunk } => {
                if let Some(slot) = t.trunks.remove(&trunk) {
                    for io in &slot.queues {
                        let _ = self.epoll.delete(io.raw_fd());
                    }
                }
                Outcome::Done
            }
            Command::AddPort(spec) => t.add_port(&self.epoll, spec),
            Command::RemovePort { port } => {
                t.remove_port(&self.epoll, port);
                self.paused.retain(|(p, _)| *p != port);
                Outcome::Done
            }
            Command::DumpFdb { net } => Outcome::Fdb(t.pipeline.fdb_entries(net, Instant::now())),
            Command::SetFlowTable(table) => {
                t.offloads.set_table(table);
                Outcome::Done
            }
            Command::SetMirror { net, mirror } => {
                if let Some(mut old) = t.mirrors.remove(&net) {
                    old.clear();
                }
                if let Some(m) = mirror {
                    t.mirrors.insert(net, m);
                }
                Outcome::Done
            }
            Command::SetLayers { port, layers } => {
                // Offloaded flows were decided under the old policy.
                t.offloads.forget_port(port);
                if t.pipeline.set_layers(port, layers, Instant::now()) {
                    // A rate removed or changed: read it again at once.
                    for (p, until) in &mut self.paused {
                        if *p == port {
                            *until = Instant::now();
                        }
                    }
                    Outcome::Done
                } else {
                    Outcome::Failed(io::Error::other(format!("datapath has no port {port}")))
                }
            }
            Command::SetSecurity { port, security } => {
                t.offloads.forget_port(port);
                if t.pipeline.set_security(port, security) {
                    Outcome::Done
                } else {
                    Outcome::Failed(io::Error::other(format!("datapath has no port {port}")))
                }
            }
            Command::SetRemote { net, ip, mac } => {
                if t.pipeline.set_remote(net, ip, mac) {
                    Outcome::Done
                } else {
                    Outcome::Failed(io::Error::other(format!("datapath has no network {net}")))
                }
            }
            Command::SetRouter { net, router } => {
                if t.pipeline.set_router(net, router) {
                    Outcome::Done
                } else {
                    Outcome::Failed(io::Error::other(format!("datapath has no network {net}")))
                }
            }
            Command::SetNat { net, cfg, echo_ids } => {
                let router = cfg
                    .as_ref()
                    .and_then(|c| c.router.map(|r| (c.uplink_ifindex, r)));
                match echo_ids {
                    Some(e) => {
                        t.echo_ids.insert(net, e);
                    }
                    None => {
                        t.echo_ids.remove(&net);
                    }
                }
                if !t.pipeline.set_nat(net, cfg) {
                    return Outcome::Failed(io::Error::other(format!(
                        "datapath has no network {net}"
                    )));
                }
                // Most translated flows go to the router: have its MAC
                // before the first of them.
                if let Some((ifindex, router)) = router {
                    t.neighbours
                        .lookup(&mut t.pipeline, net, ifindex, router, Instant::now());
                }
                Outcome::Done
            }
            Command::SetPortMirror { port, role } => {
                let Some(net) = t.ports.get(&port).map(|p| p.net) else {
                    return Outcome::Failed(io::Error::other(format!(
                        "datapath has no port {port}"
                    )));
                };
                // Offloaded flows would carry a source's frames past the copies.
                t.offloads.forget_port(port);
                t.port_mirrors.set(port, net, role);
                Outcome::Done
            }
            Command::FlowStats => Outcome::FlowStats(t.pipeline.flow_stats()),
            Command::TableSizes => Outcome::TableSizes(t.pipeline.table_sizes()),
            Command::DumpFlows { port } => {
                let now = Instant::now();
                Outcome::Flows(
                    t.pipeline.flows(port, now),
                    t.pipeline.connections(port, now),
                )
            }
            Command::Trace { port, frame } => {
                let traced = t.pipeline.trace(port, &frame, Instant::now());
                Outcome::Trace(traced.map(|(decision, steps)| {
                    let out_ports = match decision.verdict {
                        Verdict::Forward { out, .. } | Verdict::Reply { out } => vec![out],
                        Verdict::Flood {
                            net,
                            except,
                            local_only,
                            ..
                        } => t
                            .pipeline
                            .flood_targets(net, except, local_only)
                            .map(|(p, _)| p)
                            .collect(),
                        Verdict::Drop(_) => Vec::new(),
                    };
                    TraceResult {
                        decision,
                        steps,
                        out_ports,
                    }
                }))
            }
        }
    }

    fn poll_port(&mut self, port: PortId, broken: bool, now: Instant) {
        if self.paused.iter().any(|(p, _)| *p == port) {
            return;
        }
        let Some(slot) = self.tables.ports.get_mut(&port) else {
            return;
        };
        let SlotKind::Local(io) = &mut slot.kind else {
            return;
        };
        // A shaped port is read a few frames at a time, so what it sends
        // beyond its rate before it is paused stays small.
        let shaped = self.tables.pipeline.is_shaped(port);
        let batch = if shaped {
            &mut self.batch[..SHAPED_BATCH]
        } else {
            &mut self.batch[..]
        };
        let n = receive(&self.epoll, io.as_mut(), batch, broken, &slot.counters);
        for pkt in &mut self.batch[..n] {
            self.tables.receive(port, pkt, now);
        }
        if let Some(until) = self.tables.pipeline.paused_until(port).filter(|t| *t > now) {
            // Over its rate: not read again until its debt is repaid. Its
            // frames wait in its own queue; nothing is dropped.
            if let Some(slot) = self.tables.ports.get(&port) {
                if let SlotKind::Local(io) = &slot.kind {
                    let _ = self.epoll.delete(io.raw_fd());
                }
                slot.counters.dropped(DropReason::QosExceeded);
            }
            self.paused.push((port, until));
        }
    }

    /// Reads shaped ports again whose time has come.
    fn resume_shaped(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.paused.len() {
            let (port, until) = self.paused[i];
            if until > now {
                i += 1;
                continue;
            }
            self.paused.swap_remove(i);
            if let Some(SlotKind::Local(io)) = self.tables.ports.get(&port).map(|s| &s.kind) {
                let _ = self.epoll.add(io.raw_fd(), u64::from(port));
            }
        }
    }

    fn poll_trunk(&mut self, trunk: TrunkId, queue: usize, broken: bool, now: Instant) {
        let Some(slot) = self.tables.trunks.get_mut(&trunk) else {
            return;
        };
        let Some(io) = slot.queues.get_mut(queue) else {
            return;
        };
        let n = receive(
            &self.epoll,
            io.as_mut(),
            &mut self.uplink_batch,
            broken,
            &slot.counters,
        );
        // Untag each frame and find its network's uplink port.
        let mut member: [Option<PortId>; UPLINK_BATCH] = [None; UPLINK_BATCH];
        for (i, pkt) in self.uplink_batch[..n].iter_mut().enumerate() {
            member[i] = self.tables.untag(trunk, pkt);
        }
        // Join runs of one flow into super-frames (see gro.rs) where the
        // network's vNICs take them; a run's frames share a port.
        let mut run: Option<(usize, gro::Run)> = None;
        for i in 0..n {
            let Some(port) = member[i] else {
                continue;
            };
            if let Some((h, r)) = &mut run {
                let (done, rest) = self.uplink_batch.split_at_mut(i);
                if member[*h] == Some(port) && gro::join(r, &mut done[*h], &rest[0]) {
                    continue;
                }
                gro::finish(r, &mut done[*h]);
                self.tables
                    .receive(member[*h].expect("a run has a port"), &mut done[*h], now);
            }
            run = if self.tables.takes_super_frames(port) {
                gro::start(&self.uplink_batch[i]).map(|r| (i, r))
            } else {
                None
            };
            if run.is_none() {
                self.tables.receive(port, &mut self.uplink_batch[i], now);
            }
        }
        if let Some((h, r)) = &run {
            gro::finish(r, &mut self.uplink_batch[*h]);
            self.tables.receive(
                member[*h].expect("a run has a port"),
                &mut self.uplink_batch[*h],
                now,
            );
        }
    }
}

/// Receives a batch from a ready descriptor. One that reports an error or
/// a hang-up with nothing to read (its device was deleted under the switch)
/// is taken out of epoll and flagged as failed, so a vanished device cannot
/// make the loop spin; the control plane reports it.
fn receive(
    epoll: &Epoll,
    io: &mut dyn PortIo,
    batch: &mut [Packet],
    broken: bool,
    counters: &PortCounters,
) -> usize {
    let error = match io.recv_batch(batch) {
        Ok(0) if broken => "error or hang-up on the descriptor".to_owned(),
        Ok(n) => return n,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            return 0
        }
        Err(e) => e.to_string(),
    };
    let _ = epoll.delete(io.raw_fd());
    counters
        .failed
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!(fd = io.raw_fd(), error, "device failed; no longer polled");
    0
}

impl Tables {
    /// A frame from the wire: untags it and returns the uplink port of the
    /// network its VLAN tag names (0: untagged).
    fn untag(&mut self, trunk: TrunkId, pkt: &mut Packet) -> Option<PortId> {
        let slot = self.trunks.get(&trunk)?;
        slot.counters.rx(pkt.frame().len());
        let vlan = pop_vlan(pkt).unwrap_or(0);
        let port = slot.members.get(&vlan).copied();
        if port.is_none() {
            slot.counters.dropped(DropReason::UnknownVlan);
        }
        // Counted on the network's uplink port, which `vswitchctl stats`
        // shows (the trunk is shared by the networks on the interface).
        if pkt.vnet.flags & VirtioNetHdr::F_NEEDS_CSUM != 0 {
            if let Some(member) = port.and_then(|p| self.ports.get(&p)) {
                member.counters.rx_partial_checksum();
            }
        }
        port
    }

    /// Tells the uplinks' XDP programs about echo identifiers the nat
    /// networks took or gave back, before the request leaves.
    /// Mirrors each network's uplink-learned MACs into the kernel FDB.
    fn sync_mirrors(&mut self, now: Instant) {
        for (net, mirror) in &mut self.mirrors {
            let learned: std::collections::HashSet<[u8; 6]> = self
                .pipeline
                .fdb_entries(*net, now)
                .into_iter()
                .filter(|(_, port, _)| *port == mirror.uplink_port)
                .map(|(mac, _, _)| mac.0)
                .collect();
            mirror.sync(&learned);
        }
    }

    fn steer_echo_ids(&mut self) {
        // Called per frame: nothing to look at without a nat network.
        if self.echo_ids.is_empty() {
            return;
        }
        for (net, id, add) in self.pipeline.take_echo_events() {
            let Some(map) = self.echo_ids.get_mut(&net) else {
                continue;
            };
            let result = if add { map.add(id) } else { map.remove(id) };
            if let Err(e) = result {
                tracing::warn!(error = %e, id, "could not steer an echo identifier");
            }
        }
    }

    /// Whether the vNICs of `port`'s network take super-frames.
    fn takes_super_frames(&self, port: PortId) -> bool {
        self.pipeline.takes_super_frames(port)
    }

    /// One received frame: decide, then execute the verdict.
    fn receive(&mut self, in_port: PortId, pkt: &mut Packet, now: Instant) {
        let Some(src) = self.ports.get(&in_port) else {
            return;
        };
        src.counters.rx(pkt.frame().len());
        let Some(mut decision) = self.pipeline.decide(in_port, pkt.frame(), now) else {
            return;
        };
        self.steer_echo_ids();
        if let Some((net, hop)) = decision.resolve {
            // A nat network's next hop without a MAC: ask the kernel, and
            // decide again if it knew.
            let ifindex = self.pipeline.nat_ifindex(net);
            let known = ifindex
                .is_some_and(|i| self.neighbours.lookup(&mut self.pipeline, net, i, hop, now));
            if known {
                match self.pipeline.decide(in_port, pkt.frame(), now) {
                    Some(d) => decision = d,
                    None => return,
                }
            }
        }
        let Some(src) = self.ports.get(&in_port) else {
            return;
        };
        if decision.learn_refused {
            src.counters.dropped(DropReason::LearnRefused);
        }
        match decision.verdict {
            Verdict::Drop(reason) => src.counters.dropped(reason),
            Verdict::Forward { out, xform } => {
                let mirrored = self.port_mirrors.involves(in_port, out);
                if let (Some(meta), false) = (&decision.meta, mirrored) {
                    let net = src.net;
                    self.offloads.consider(
                        &mut self.pipeline,
                        net,
                        in_port,
                        out,
                        &xform,
                        pkt.frame(),
                        meta,
                        now,
                    );
                }
                // The frame is ours and goes to one port: a vNIC gets it
                // transformed in place; an uplink composes it in `egress`
                // (a super-frame may still have to be segmented from the
                // original).
                let to_vnic = matches!(
                    self.ports.get(&out).map(|p| &p.kind),
                    Some(SlotKind::Local(_))
                );
                let net = src.net;
                if mirrored && self.port_mirrors.is_source(in_port) {
                    // As the source sent it.
                    self.mirror(net, in_port, out, pkt);
                }
                let xform = if to_vnic && !xform.is_none() {
                    if apply(&xform, pkt).is_err() {
                        if let Some(src) = self.ports.get(&in_port) {
                            src.counters.dropped(DropReason::TxFailed);
                        }
                        return;
                    }
                    HeaderTransform::NONE
                } else {
                    xform
                };
                transmit(
                    &mut self.ports,
                    &mut self.trunks,
                    &mut self.egress,
                    out,
                    pkt,
                    &xform,
                );
                if mirrored && !self.port_mirrors.is_source(in_port) {
                    // As the source received it (a source's frames only
                    // ever reach it as a vNIC: transformed in place).
                    self.mirror(net, in_port, out, pkt);
                }
            }
            Verdict::Flood {
                net,
                except,
                local_only,
                xform,
            } => {
                // Every copy gets `xform`: once, in place.
                if apply(&xform, pkt).is_err() {
                    src.counters.dropped(DropReason::TxFailed);
                    return;
                }
                for (out, egress) in self.pipeline.flood_targets(net, except, local_only) {
                    transmit(
                        &mut self.ports,
                        &mut self.trunks,
                        &mut self.egress,
                        out,
                        pkt,
                        egress,
                    );
                }
            }
            Verdict::Reply { out } => {
                let net = src.net;
                transmit(
                    &mut self.ports,
                    &mut self.trunks,
                    &mut self.egress,
                    out,
                    self.pipeline.reply(),
                    &self.pipeline.egress(out),
                );
                if self.port_mirrors.is_source(out) {
                    mirror_to(
                        &self.port_mirrors,
                        &mut self.ports,
                        &mut self.trunks,
                        &mut self.egress,
                        net,
                        in_port,
                        out,
                        self.pipeline.reply(),
                    );
                }
            }
        }
    }

    /// Copies a frame between `in_port` and `out` (one of them a mirror
    /// source) to `net`'s mirror destinations.
    fn mirror(&mut self, net: NetId, in_port: PortId, out: PortId, pkt: &Packet) {
        mirror_to(
            &self.port_mirrors,
            &mut self.ports,
            &mut self.trunks,
            &mut self.egress,
            net,
            in_port,
            out,
            pkt,
        );
    }

    fn flush(&mut self) {
        for slot in self.ports.values_mut() {
            if slot.dirty {
                slot.dirty = false;
                if let SlotKind::Local(io) = &mut slot.kind {
                    if io.flush().is_err() {
                        slot.counters.dropped(DropReason::TxFailed);
                    }
                }
            }
        }
        for trunk in self.trunks.values_mut() {
            if trunk.dirty {
                trunk.dirty = false;
                if let Some(io) = trunk.queues.first_mut() {
                    if io.flush().is_err() {
                        trunk.counters.dropped(DropReason::TxFailed);
                    }
                }
            }
        }
    }
}

/// Sends `pkt` out of `out`, transformed by `xform`. The original is never
/// changed: a transformed frame is composed in `egress`, and only when
/// there is something to change.
fn transmit(
    ports: &mut HashMap<PortId, PortSlot>,
    trunks: &mut HashMap<TrunkId, TrunkSlot>,
    egress: &mut Packet,
    out: PortId,
    pkt: &Packet,
    xform: &HeaderTransform,
) {
    let Some(slot) = ports.get_mut(&out) else {
        return;
    };
    let sent = match &mut slot.kind {
        SlotKind::Local(io) => {
            if pkt.vnet.is_gso() && !slot.gso {
                slot.counters.dropped(DropReason::GsoUnsupported);
                return;
            }
            if xform.is_none() {
                io.send(pkt).map(|()| (1, pkt.frame().len()))
            } else {
                egress.fill(pkt.frame());
                egress.vnet = pkt.vnet;
                send_transformed(io.as_mut(), egress, xform).map(|len| (1, len))
            }
        }
        SlotKind::Uplink { trunk, .. } => {
            let Some(trunk) = trunks.get_mut(trunk) else {
                return;
            };
            let Some(io) = trunk.queues.first_mut() else {
                return;
            };
            // Frames queued on the AF_XDP ring leave at the next flush; a
            // super-frame leaves at once. Flush first so that it cannot
            // overtake earlier frames of its flow.
            let queued = std::mem::replace(&mut trunk.dirty, true);
            let mut whole_sent = None;
            if let (true, Some(whole)) = (pkt.vnet.is_gso(), trunk.super_frames.as_mut()) {
                if queued {
                    let _ = io.flush();
                }
                egress.fill(pkt.frame());
                egress.vnet = pkt.vnet;
                match send_transformed(whole.as_mut(), egress, xform) {
                    Ok(len) => {
                        trunk.counters.tx(len);
                        whole_sent = Some(Ok((1, len)));
                    }
                    // The socket's buffer is full: segment it instead
                    // rather than lose 64 KiB.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::ENOBUFS)) => {}
                    Err(e) => whole_sent = Some(Err(e)),
                }
            }
            if let Some(result) = whole_sent {
                result
            } else if pkt.vnet.is_gso() {
                // Segment in software; each segment goes out as it is made,
                // transformed (tagged) on its own.
                let mut result = Ok((0, 0));
                let segments = gso::segment(pkt, egress, |seg| {
                    match send_transformed(io.as_mut(), seg, xform) {
                        Ok(len) => {
                            trunk.counters.tx(len);
                            if let Ok((n, bytes)) = &mut result {
                                *n += 1;
                                *bytes += len;
                            }
                            true
                        }
                        Err(e) => {
                            result = Err(e);
                            false
                        }
                    }
                });
                if segments.is_none() {
                    slot.counters.dropped(DropReason::GsoUnsupported);
                    return;
                }
                // A super-frame can fill the TX ring: push it out now.
                let _ = io.flush();
                result
            } else if xform.is_none() {
                // Nothing to change: no copy.
                io.send(pkt).map(|()| {
                    trunk.counters.tx(pkt.frame().len());
                    (1, pkt.frame().len())
                })
            } else {
                egress.fill(pkt.frame());
                egress.vnet = pkt.vnet;
                send_transformed(io.as_mut(), egress, xform).map(|len| {
                    trunk.counters.tx(len);
                    (1, len)
                })
            }
        }
    };
    match sent {
        Ok((packets, bytes)) => {
            slot.counters.tx_many(packets, bytes);
            slot.dirty = true;
        }
        Err(_) => slot.counters.dropped(DropReason::TxFailed),
    }
}

/// Sends a copy of `pkt` to each of `net`'s mirror destinations but
/// `in_port` and `out`, unchanged, and counts it there.
#[allow(clippy::too_many_arguments)]
fn mirror_to(
    mirrors: &mirror::Mirrors,
    ports: &mut HashMap<PortId, PortSlot>,
    trunks: &mut HashMap<TrunkId, TrunkSlot>,
    egress: &mut Packet,
    net: NetId,
    in_port: PortId,
    out: PortId,
    pkt: &Packet,
) {
    for dst in mirrors.targets(net, in_port, out) {
        let sent = |ports: &HashMap<PortId, PortSlot>| {
            ports
                .get(&dst)
                .map_or(0, |s| PortCounters::get(&s.counters.tx_packets))
        };
        let before = sent(ports);
        transmit(ports, trunks, egress, dst, pkt, &HeaderTransform::NONE);
        if sent(ports) != before {
            if let Some(slot) = ports.get(&dst) {
                slot.counters.mirrored(pkt.frame().len());
            }
        }
    }
}

/// Applies `xform` to the frame composed in `frame` and sends it. Returns
/// its length as sent.
fn send_transformed(
    io: &mut dyn PortIo,
    frame: &mut Packet,
    xform: &HeaderTransform,
) -> io::Result<usize> {
    apply(xform, frame).map_err(|_| io::Error::other("no room for a VLAN tag"))?;
    io.send(frame)?;
    Ok(frame.frame().len())
}
