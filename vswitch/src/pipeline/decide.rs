//! The decision: from a received frame and the network's tables to a
//! [`Verdict`].
//!
//! Contract: [`Pipeline::decide`] does no I/O, reads the frame without
//! changing it and takes `now` from the caller, so every forwarding rule is
//! unit-testable without root, ports or sleeping. It is not pure in the
//! strict sense: learning updates the network's FDB, and a reply the switch
//! makes (l2bridge ARP and NDP proxy) is written into the pipeline's own
//! [`Pipeline::reply`] buffer. Both are memory the pipeline owns.
//!
//! The order is today's datapath's: admission (a sane header, port
//! security) -> a vNIC's MAC is its own -> l2bridge ingress (translation
//! back to the endpoint, or the proxy's answer) -> learning -> statics,
//! then the FDB -> unicast (never back out the ingress port) or flood
//! within the network. Networks share nothing: a verdict only names ports
//! of the network the frame entered.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::classify::{classify, PacketMeta};
use super::forward::{self, PortSecurity};
use super::l2bridge::{self, Ingress, Locals};
use super::verdict::{HeaderTransform, Verdict};
use super::{NetId, PortId};
use crate::datapath::DropReason;
use crate::fdb::{Fdb, FdbConfig, Learn};
use crate::port::Packet;
use crate::wire::MacAddr;

/// What a port is to the forwarding rules (not how its frames move).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRole {
    /// An endpoint or host port: never sends tagged frames.
    Vnic,
    /// The network's attachment to the wire, on `vlan` (0: untagged). With
    /// `l2bridge`, frames leave with that MAC as their source and arrive
    /// translated back (see [`l2bridge`]).
    Uplink {
        vlan: u16,
        l2bridge: Option<MacAddr>,
    },
}

/// A port as the pipeline sees it.
#[derive(Debug, Clone)]
pub struct PortPolicy {
    pub net: NetId,
    pub role: PortRole,
    /// `None` for trusted ports.
    pub security: Option<PortSecurity>,
    /// The endpoint's addresses, which an l2bridge network answers for.
    pub addrs: Vec<(IpAddr, MacAddr)>,
    /// A vNIC's own MAC: frames to it go to this port without learning,
    /// and no other port may send from it.
    pub mac: Option<MacAddr>,
}

struct PortState {
    net: NetId,
    role: PortRole,
    security: Option<PortSecurity>,
    addrs: Vec<IpAddr>,
    /// What a frame leaving through this port gets (l2bridge translation,
    /// VLAN tag).
    egress: HeaderTransform,
}

struct Network {
    fdb: Fdb<PortId>,
    ports: Vec<PortId>,
    /// Endpoint addresses, for l2bridge translation.
    locals: Locals,
    /// The MACs of the network's vNICs (endpoint and host ports).
    statics: HashMap<MacAddr, PortId>,
    /// The network reaches the wire through an l2bridge uplink.
    l2bridge: bool,
    /// Its vNICs take super-frames.
    offload: bool,
}

/// The verdict for one frame, with what was learned deciding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// The frame as classified (for the flow key, tracing, caching).
    pub meta: Option<PacketMeta>,
    /// Not a drop: the source MAC was not learned because the port has
    /// taught its maximum already (counted as `learn_refused`).
    pub learn_refused: bool,
}

impl Decision {
    fn drop(reason: DropReason, meta: Option<PacketMeta>) -> Decision {
        Decision {
            verdict: Verdict::Drop(reason),
            meta,
            learn_refused: false,
        }
    }
}

/// Every network's forwarding tables and every port's policy.
pub struct Pipeline {
    ports: HashMap<PortId, PortState>,
    nets: HashMap<NetId, Network>,
    /// Answers the switch makes itself (l2bridge ARP and NDP).
    reply: Packet,
}

impl Default for Pipeline {
    fn default() -> Self {
        Pipeline::new()
    }
}

impl Pipeline {
    pub fn new() -> Pipeline {
        Pipeline {
            ports: HashMap::new(),
            nets: HashMap::new(),
            reply: Packet::new(),
        }
    }

    /// Adds a network (a second add of the same id changes nothing).
    /// `offload`: its vNICs take super-frames.
    pub fn add_network(&mut self, net: NetId, fdb: FdbConfig, offload: bool) {
        self.nets.entry(net).or_insert_with(|| Network {
            fdb: Fdb::new(fdb),
            ports: Vec::new(),
            locals: Locals::new(),
            statics: HashMap::new(),
            l2bridge: false,
            offload,
        });
    }

    pub fn remove_network(&mut self, net: NetId) {
        self.nets.remove(&net);
    }

    pub fn has_network(&self, net: NetId) -> bool {
        self.nets.contains_key(&net)
    }

    /// Adds a port to its network; false (and nothing changed) if the
    /// network does not exist.
    pub fn add_port(&mut self, id: PortId, policy: PortPolicy) -> bool {
        let Some(net) = self.nets.get_mut(&policy.net) else {
            return false;
        };
        let egress = match policy.role {
            PortRole::Vnic => HeaderTransform::NONE,
            PortRole::Uplink { vlan, l2bridge } => {
                net.l2bridge |= l2bridge.is_some();
                let x = l2bridge.map_or(HeaderTransform::NONE, l2bridge::egress_transform);
                if vlan != 0 {
                    x.push_vlan(vlan)
                } else {
                    x
                }
            }
        };
        net.ports.push(id);
        net.locals.extend(policy.addrs.iter().copied());
        if let Some(mac) = policy.mac {
            net.statics.insert(mac, id);
        }
        self.ports.insert(
            id,
            PortState {
                net: policy.net,
                role: policy.role,
                security: policy.security,
                addrs: policy.addrs.iter().map(|(ip, _)| *ip).collect(),
                egress,
            },
        );
        true
    }

    pub fn remove_port(&mut self, port: PortId) {
        let Some(state) = self.ports.remove(&port) else {
            return;
        };
        if let Some(net) = self.nets.get_mut(&state.net) {
            net.ports.retain(|&p| p != port);
            net.fdb.forget_port(port);
            for ip in &state.addrs {
                net.locals.remove(ip);
            }
            net.statics.retain(|_, owner| *owner != port);
            if matches!(state.role, PortRole::Uplink { .. }) {
                net.l2bridge = false;
            }
        }
    }

    /// Whether the vNICs of `port`'s network take super-frames.
    pub fn takes_super_frames(&self, port: PortId) -> bool {
        let net = self.ports.get(&port).and_then(|p| self.nets.get(&p.net));
        net.is_some_and(|n| n.offload)
    }

    /// The transformation every frame leaving through `port` gets.
    pub fn egress(&self, port: PortId) -> HeaderTransform {
        self.ports
            .get(&port)
            .map_or(HeaderTransform::NONE, |p| p.egress)
    }

    /// The ports a [`Verdict::Flood`] goes to, each with its egress
    /// transformation.
    pub fn flood_targets(
        &self,
        net: NetId,
        except: PortId,
        local_only: bool,
    ) -> impl Iterator<Item = (PortId, &HeaderTransform)> + '_ {
        let ports = self.nets.get(&net).map_or(&[][..], |n| &n.ports[..]);
        ports.iter().filter_map(move |&out| {
            if out == except {
                return None;
            }
            let state = self.ports.get(&out)?;
            if local_only && matches!(state.role, PortRole::Uplink { .. }) {
                return None;
            }
            Some((out, &state.egress))
        })
    }

    /// The answer of the last [`Verdict::Reply`].
    pub fn reply(&self) -> &Packet {
        &self.reply
    }

    /// Expires learned addresses.
    pub fn age(&mut self, now: Instant) {
        for net in self.nets.values_mut() {
            net.fdb.age(now);
        }
    }

    /// The network's learned addresses: MAC, port, time since last seen.
    pub fn fdb_entries(&self, net: NetId, now: Instant) -> Vec<(MacAddr, PortId, Duration)> {
        self.nets
            .get(&net)
            .map(|n| n.fdb.entries(now).collect())
            .unwrap_or_default()
    }

    /// Decides what becomes of `frame`, received on `in_port`. `None` when
    /// the port or its network is unknown (removed while the frame was in
    /// flight): nothing to count it on.
    pub fn decide(&mut self, in_port: PortId, frame: &[u8], now: Instant) -> Option<Decision> {
        let src = self.ports.get(&in_port)?;
        let meta = match classify(frame) {
            Ok(meta) => meta,
            Err(reason) => return Some(Decision::drop(reason, None)),
        };
        let meta = Some(meta);
        let (from_wire, l2bridge_mac) = match src.role {
            PortRole::Uplink { l2bridge, .. } => (true, l2bridge),
            PortRole::Vnic => (false, None),
        };
        let (src_mac, mut dst_mac) = match forward::admit(src.security.as_ref(), !from_wire, frame)
        {
            Ok(addrs) => addrs,
            Err(reason) => return Some(Decision::drop(reason, meta)),
        };
        let net_id = src.net;
        let net = self.nets.get_mut(&net_id)?;
        // A vNIC's MAC is its own: nobody else, on the wire or spoofing,
        // may send from it (and so move it away from the vNIC).
        if net
            .statics
            .get(&src_mac)
            .is_some_and(|&owner| owner != in_port)
        {
            return Some(Decision::drop(DropReason::MacSpoofing, meta));
        }
        let mut xform = HeaderTransform::NONE;
        if let Some(uplink_mac) = l2bridge_mac {
            match l2bridge::ingress(frame, uplink_mac, &net.locals, &mut self.reply) {
                Ingress::Forward(x) => {
                    dst_mac = x.dst_after(dst_mac);
                    xform = x;
                }
                Ingress::Reply => {
                    return Some(Decision {
                        verdict: Verdict::Reply { out: in_port },
                        meta,
                        learn_refused: false,
                    })
                }
                Ingress::NotLocal => return Some(Decision::drop(DropReason::NotLocal, meta)),
            }
        }
        let learn_refused = net.fdb.learn(src_mac, in_port, now) == Learn::Refused;
        let verdict = if !dst_mac.is_multicast() {
            // The network's own vNICs are known without learning, so unicast
            // to a quiet endpoint is never flooded (onto the wire, too).
            let known = net.statics.get(&dst_mac).copied();
            match known.or_else(|| net.fdb.lookup(dst_mac, now)) {
                Some(out) if out == in_port => Verdict::Drop(DropReason::Hairpin),
                Some(out) => Verdict::Forward {
                    out,
                    xform: xform.then(
                        &self
                            .ports
                            .get(&out)
                            .map_or(HeaderTransform::NONE, |p| p.egress),
                    ),
                },
                None => Verdict::Flood {
                    net: net_id,
                    except: in_port,
                    local_only: false,
                    xform,
                },
            }
        } else {
            // An l2bridge network answers for its own endpoints: a question
            // about one of them needs no answer from the wire.
            let local_only =
                net.l2bridge && !from_wire && l2bridge::asks_for_local(frame, &net.locals);
            Verdict::Flood {
                net: net_id,
                except: in_port,
                local_only,
                xform,
            }
        };
        Some(Decision {
            verdict,
            meta,
            learn_refused,
        })
    }
}
