//! The slow-path datapath: one thread that owns every port and every
//! network's forwarding database, and moves frames between them.
//!
//! The control plane talks to it only through [`Datapath`], whose calls are
//! queued to the thread and answered when applied, so the thread's tables
//! need no locks. Counters are shared ([`PortCounters`]) and read lock-free.
//!
//! Per frame: parse the Ethernet header -> port security (source MAC and
//! IP of endpoint ports) -> learn the source -> look up the destination ->
//! unicast, or flood within the network (never back out the ingress port).
//! Networks share nothing: a frame can only leave through a port of the
//! network it entered.

pub mod counters;
mod forward;
mod l2bridge;

use std::collections::HashMap;
use std::io;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use counters::{DropReason, PortCounters};
pub use forward::PortSecurity;

use crate::fdb::{Fdb, FdbConfig};
use crate::port::{Packet, PortIo, BATCH};
use crate::sys::{Epoll, EventFd};
use crate::wire::MacAddr;

pub type PortId = u32;
pub type NetId = u32;

/// How often learned addresses are checked for expiry.
const AGING_TICK: Duration = Duration::from_secs(1);
const WAKE_TOKEN: u64 = u64::MAX;

/// A port as handed to the datapath.
pub struct PortSpec {
    pub id: PortId,
    pub net: NetId,
    pub io: Box<dyn PortIo>,
    pub counters: Arc<PortCounters>,
    /// `None` for trusted ports (the host port); endpoints get their own
    /// addresses here unless they may spoof.
    pub security: Option<PortSecurity>,
    /// Whether the port accepts GSO super-frames (offloading TAPs do).
    pub gso: bool,
}

enum Command {
    AddNetwork { net: NetId, fdb: FdbConfig },
    RemoveNetwork { net: NetId },
    AddPort(PortSpec),
    RemovePort { port: PortId },
    DumpFdb { net: NetId },
}

enum Outcome {
    Done,
    Fdb(Vec<(MacAddr, PortId, Duration)>),
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
    pub fn spawn() -> io::Result<Datapath> {
        let epoll = Epoll::new()?;
        let wake = Arc::new(EventFd::new()?);
        epoll.add(wake.raw_fd(), WAKE_TOKEN)?;
        let (tx, rx) = mpsc::channel();
        let worker = Worker::new(epoll, wake.clone(), rx);
        let thread = std::thread::Builder::new()
            .name("datapath".into())
            .spawn(move || worker.run())?;
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

    pub fn add_network(&self, net: NetId, fdb: FdbConfig) -> io::Result<()> {
        self.call(Command::AddNetwork { net, fdb }).map(drop)
    }

    /// Removes a network; its ports must have been removed first.
    pub fn remove_network(&self, net: NetId) -> io::Result<()> {
        self.call(Command::RemoveNetwork { net }).map(drop)
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

struct PortSlot {
    net: NetId,
    io: Box<dyn PortIo>,
    counters: Arc<PortCounters>,
    security: Option<PortSecurity>,
    gso: bool,
    /// Sent to since the last flush.
    dirty: bool,
}

struct NetSlot {
    fdb: Fdb<PortId>,
    ports: Vec<PortId>,
}

/// The forwarding tables, apart from the receive batch so that frames in
/// the batch can be read while ports are written.
#[derive(Default)]
struct Tables {
    ports: HashMap<PortId, PortSlot>,
    nets: HashMap<NetId, NetSlot>,
}

struct Worker {
    epoll: Epoll,
    wake: Arc<EventFd>,
    calls: Receiver<Call>,
    tables: Tables,
    batch: Vec<Packet>,
}

impl Worker {
    fn new(epoll: Epoll, wake: Arc<EventFd>, calls: Receiver<Call>) -> Worker {
        Worker {
            epoll,
            wake,
            calls,
            tables: Tables::default(),
            batch: (0..BATCH).map(|_| Packet::new()).collect(),
        }
    }

    fn run(mut self) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
        let mut ready: Vec<u64> = Vec::with_capacity(64);
        let mut last_aging = Instant::now();
        loop {
            ready.clear();
            match self.epoll.wait(&mut events, AGING_TICK.as_millis() as i32) {
                Ok(tokens) => ready.extend(tokens),
                Err(e) => {
                    tracing::error!(error = %e, "datapath poll failed");
                    return;
                }
            }
            let now = Instant::now();
            for &token in &ready {
                if token == WAKE_TOKEN {
                    self.wake.drain();
                    if !self.apply_calls() {
                        return;
                    }
                } else {
                    self.poll_port(token as PortId, now);
                }
            }
            self.tables.flush();
            if now.duration_since(last_aging) >= AGING_TICK {
                last_aging = now;
                for net in self.tables.nets.values_mut() {
                    net.fdb.age(now);
                }
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
            Command::AddNetwork { net, fdb } => {
                t.nets.entry(net).or_insert_with(|| NetSlot {
                    fdb: Fdb::new(fdb),
                    ports: Vec::new(),
                });
                Outcome::Done
            }
            Command::RemoveNetwork { net } => {
                t.nets.remove(&net);
                Outcome::Done
            }
            Command::AddPort(spec) => {
                let Some(net) = t.nets.get_mut(&spec.net) else {
                    return Outcome::Failed(io::Error::other(format!(
                        "datapath has no network {}",
                        spec.net
                    )));
                };
                if let Err(e) = self.epoll.add(spec.io.raw_fd(), spec.id as u64) {
                    return Outcome::Failed(e);
                }
                net.ports.push(spec.id);
                t.ports.insert(
                    spec.id,
                    PortSlot {
                        net: spec.net,
                        io: spec.io,
                        counters: spec.counters,
                        security: spec.security,
                        gso: spec.gso,
                        dirty: false,
                    },
                );
                Outcome::Done
            }
            Command::RemovePort { port } => {
                if let Some(slot) = t.ports.remove(&port) {
                    let _ = self.epoll.delete(slot.io.raw_fd());
                    if let Some(net) = t.nets.get_mut(&slot.net) {
                        net.ports.retain(|&p| p != port);
                        net.fdb.forget_port(port);
                    }
                }
                Outcome::Done
            }
            Command::DumpFdb { net } => {
                let now = Instant::now();
                let entries = t
                    .nets
                    .get(&net)
                    .map(|n| n.fdb.entries(now).collect())
                    .unwrap_or_default();
                Outcome::Fdb(entries)
            }
        }
    }

    fn poll_port(&mut self, port: PortId, now: Instant) {
        let Some(slot) = self.tables.ports.get_mut(&port) else {
            return;
        };
        let n = match slot.io.recv_batch(&mut self.batch) {
            Ok(n) => n,
            Err(e) => {
                tracing::trace!(port, error = %e, "receive failed");
                return;
            }
        };
        for pkt in &self.batch[..n] {
            self.tables.forward(port, pkt, now);
        }
    }
}

impl Tables {
    fn forward(&mut self, in_port: PortId, pkt: &Packet, now: Instant) {
        let Some(src) = self.ports.get(&in_port) else {
            return;
        };
        let frame = pkt.frame();
        src.counters.rx(frame.len());
        let (src_mac, dst_mac) = match forward::admit(src.security.as_ref(), frame) {
            Ok(addrs) => addrs,
            Err(reason) => {
                src.counters.dropped(reason);
                return;
            }
        };
        let Some(net) = self.nets.get_mut(&src.net) else {
            return;
        };
        net.fdb.learn(src_mac, in_port, now);
        if !dst_mac.is_multicast() {
            match net.fdb.lookup(dst_mac, now) {
                Some(out) if out == in_port => {
                    if let Some(src) = self.ports.get(&in_port) {
                        src.counters.dropped(DropReason::Hairpin);
                    }
                }
                Some(out) => transmit(&mut self.ports, out, pkt),
                None => flood(&mut self.ports, &net.ports, in_port, pkt),
            }
        } else {
            flood(&mut self.ports, &net.ports, in_port, pkt);
        }
    }

    fn flush(&mut self) {
        for slot in self.ports.values_mut() {
            if slot.dirty {
                slot.dirty = false;
                if slot.io.flush().is_err() {
                    slot.counters.dropped(DropReason::TxFailed);
                }
            }
        }
    }
}

fn flood(ports: &mut HashMap<PortId, PortSlot>, members: &[PortId], in_port: PortId, pkt: &Packet) {
    for &out in members {
        if out != in_port {
            transmit(ports, out, pkt);
        }
    }
}

fn transmit(ports: &mut HashMap<PortId, PortSlot>, out: PortId, pkt: &Packet) {
    let Some(slot) = ports.get_mut(&out) else {
        return;
    };
    if pkt.vnet.is_gso() && !slot.gso {
        slot.counters.dropped(DropReason::GsoUnsupported);
        return;
    }
    match slot.io.send(pkt) {
        Ok(()) => {
            slot.counters.tx(pkt.frame().len());
            slot.dirty = true;
        }
        Err(_) => slot.counters.dropped(DropReason::TxFailed),
    }
}
