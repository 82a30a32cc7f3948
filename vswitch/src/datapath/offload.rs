//! Flow offload: flows whose verdict the slow path has computed, handed to
//! the kernel fast path (`flows` in xdp-prog/fastpath.bpf.c) so their later
//! packets never reach userspace.
//!
//! A flow is offloaded when its packet was forwarded from a port whose
//! frames pass the kernel program (a veth endpoint) to a port the kernel can
//! reach (another veth endpoint, or an uplink), its transformation is one the
//! kernel performs (MAC rewrites, a VLAN push), neither port is shaped (QOS
//! is the slow path's), and connection tracking holds its connection as
//! established. The key is the slow path's own flow key, which the kernel
//! program builds the same way.
//!
//! The kernel counts what it forwards; once a second [`Offloads::sync`]
//! feeds those counts to connection tracking, so an offloaded connection
//! stays alive while it flows, and takes back every flow whose connection
//! ended (TCP FIN and RST always reach the slow path), closes or expired. A
//! port's policy change or removal takes its flows back at once.

use foldhash::{HashMap, HashMapExt};
use std::time::Instant;

use crate::ebpf::fastpath::{flow_flags, FlowTable, FpFlow};
use crate::pipeline::{Direction, FlowKey, HeaderTransform, NetId, PacketMeta, Pipeline, PortId};

/// How the kernel reaches a port, for flows to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelPort {
    /// A veth endpoint: `bpf_redirect_peer` to its host end (`ifindex`),
    /// counted at its `slot`. Its own frames pass the kernel program, so
    /// flows from it can be offloaded too.
    Peer { ifindex: u32, slot: u32 },
    /// An uplink: out of this ifindex.
    Uplink(u32),
}

/// What the kernel may do to an offloaded flow's frames.
const KERNEL_XFORMS: u16 =
    HeaderTransform::SET_SRC_MAC | HeaderTransform::SET_DST_MAC | HeaderTransform::PUSH_VLAN;

const TCP: u8 = 6;
const UDP: u8 = 17;
const TCP_FLAGS: usize = 13;
/// FIN, SYN, RST: connection tracking must see them.
const TCP_CONTROL: u8 = 0x07;

/// An offloaded flow (its source port is its key's `in_port`).
struct Offloaded {
    out: PortId,
    /// The kernel's count when last read.
    packets: u64,
}

pub(super) struct Offloads {
    table: Option<FlowTable>,
    ports: HashMap<PortId, KernelPort>,
    flows: HashMap<FlowKey, Offloaded>,
}

impl Offloads {
    pub fn new() -> Offloads {
        Offloads {
            table: None,
            ports: HashMap::new(),
            flows: HashMap::new(),
        }
    }

    /// The kernel's flow map, once the fast path exists. Flows a previous
    /// instance left are taken back: their connections are not tracked here.
    pub fn set_table(&mut self, table: Option<FlowTable>) {
        self.clear();
        self.table = table;
        if let Some(t) = self.table.as_mut() {
            for key in t.keys() {
                t.remove(&key);
            }
        }
    }

    pub fn set_port(&mut self, port: PortId, kernel: Option<KernelPort>) {
        match kernel {
            Some(k) => {
                self.ports.insert(port, k);
            }
            None => {
                self.ports.remove(&port);
            }
        }
    }

    pub fn remove_port(&mut self, port: PortId) {
        self.forget_port(port);
        self.ports.remove(&port);
    }

    /// Takes back every flow from or to `port` (its policy changed).
    pub fn forget_port(&mut self, port: PortId) {
        self.take_back(|k, f| k.in_port == port || f.out == port);
    }

    /// Takes back every flow of network `net`.
    pub fn forget_net(&mut self, net: NetId) {
        self.take_back(|k, _| k.net == net);
    }

    fn clear(&mut self) {
        self.take_back(|_, _| true);
    }

    fn take_back(&mut self, mut which: impl FnMut(&FlowKey, &Offloaded) -> bool) {
        let Some(table) = self.table.as_mut() else {
            self.flows.clear();
            return;
        };
        self.flows.retain(|k, f| {
            if which(k, f) {
                table.remove(k);
                false
            } else {
                true
            }
        });
    }

    /// Offloads the flow of a frame the slow path just forwarded from
    /// `in_port` to `out` with `xform`, if the kernel can carry it (see the
    /// module docs). `shaped` says whether a port has a QOS rate.
    #[allow(clippy::too_many_arguments)]
    pub fn consider(
        &mut self,
        pipeline: &mut Pipeline,
        net: NetId,
        in_port: PortId,
        out: PortId,
        xform: &HeaderTransform,
        frame: &[u8],
        meta: &PacketMeta,
        now: Instant,
    ) {
        let Some(table) = self.table.as_mut() else {
            return;
        };
        let (Some(KernelPort::Peer { .. }), Some(&to)) =
            (self.ports.get(&in_port), self.ports.get(&out))
        else {
            return;
        };
        if xform.flags & !KERNEL_XFORMS != 0
            || pipeline.is_shaped(in_port)
            || pipeline.is_shaped(out)
        {
            return;
        }
        match meta.proto {
            TCP => {
                let flags = frame.get(usize::from(meta.l4) + TCP_FLAGS);
                if flags.is_none_or(|f| f & TCP_CONTROL != 0) {
                    return;
                }
            }
            UDP => {}
            _ => return,
        }
        if meta.vlan.is_some() {
            return;
        }
        let key = meta.flow_key(frame, net, in_port, Direction::FromVnic);
        if self.flows.contains_key(&key) || !pipeline.refresh_offloaded(&key, 0, now) {
            return;
        }
        let (ifindex, slot, flags) = match to {
            KernelPort::Peer { ifindex, slot } => (ifindex, slot, flow_flags::PEER),
            // The uplink's counters are not the port's: slot 0.
            KernelPort::Uplink(i) => (i, 0, flow_flags::UPLINK),
        };
        let flow = FpFlow {
            ifindex,
            flags,
            slot,
            pad: 0,
            xform: *xform,
            packets: 0,
            bytes: 0,
            last_seen: 0,
        };
        match table.insert(&key, &flow) {
            Ok(()) => {
                self.flows.insert(key, Offloaded { out, packets: 0 });
            }
            Err(e) => tracing::debug!(error = %e, "flow not offloaded; the slow path keeps it"),
        }
    }

    /// Feeds the kernel's counts to connection tracking and takes back the
    /// flows whose connection is over.
    pub fn sync(&mut self, pipeline: &mut Pipeline, now: Instant) {
        let Some(table) = self.table.as_mut() else {
            return;
        };
        self.flows.retain(|key, f| {
            let Some(packets) = table.packets(key) else {
                return false;
            };
            let delta = packets.saturating_sub(f.packets);
            f.packets = packets;
            if pipeline.refresh_offloaded(key, delta, now) {
                true
            } else {
                table.remove(key);
                false
            }
        });
    }
}
