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
//! The order: admission (a sane header, port security) -> the port's
//! guards -> a vNIC's MAC is its own -> l2bridge ingress (translation back
//! to the endpoint, or the proxy's answer) -> learning -> statics, then the
//! FDB -> unicast (never back out the ingress port) or flood within the
//! network -> the policy layers of the ports involved (ACLs through the
//! flow cache, connection tracking, then QoS). Networks share nothing: a
//! verdict only names ports of the network the frame entered, and
//! connections are tracked per network.
//!
//! [`Pipeline::trace`] runs the same code with a log and without side
//! effects (nothing learned, tracked, cached, counted or charged).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use foldhash::{HashMap, HashMapExt};

use super::classify::{classify, Direction as Side, FlowKey, PacketMeta};
use super::conntrack::{self, Conntrack, Track};
use super::flowcache::{CacheStats, FlowCache};
use super::forward::{self, PortSecurity};
use super::l2bridge::{self, Ingress, Locals};
use super::layers::{conn_of, AclOutcome, Layers};
use super::qos::TokenBucket;
use super::verdict::{HeaderTransform, Verdict};
use super::{NetId, PortId};
use crate::datapath::DropReason;
use crate::fdb::{keyed_hash, Fdb, FdbConfig, KeyedHash, Learn};
use crate::policy::{AclAction, Direction};
use crate::port::Packet;
use crate::wire::MacAddr;

/// Flows kept per policed port, and how long an idle one is kept.
pub const FLOWS_PER_PORT: usize = 16_384;
pub const FLOW_IDLE: Duration = Duration::from_secs(60);

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
    /// Guards, ACLs, QoS (endpoints; trusted ports have the default).
    pub layers: Layers,
}

struct PortState {
    net: NetId,
    role: PortRole,
    security: Option<PortSecurity>,
    addrs: Vec<IpAddr>,
    /// What a frame leaving through this port gets (l2bridge translation,
    /// VLAN tag).
    egress: HeaderTransform,
    layers: Layers,
    /// Bumped by every policy change: flows cached before it are stale.
    generation: u32,
    bucket: Option<TokenBucket>,
    /// The ACL outcome of flows entering here (VFP's unified flow table).
    flows: FlowCache<FlowKey, AclOutcome, KeyedHash>,
}

impl PortState {
    fn vnic(&self) -> bool {
        self.role == PortRole::Vnic
    }
}

/// One step of a traced decision: the stage and what it found.
pub type TraceStep = (&'static str, String);

/// A port's flow cache, for `flows dump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowInfo {
    pub in_port: PortId,
    pub key: FlowKey,
    pub outcome: AclOutcome,
    pub idle: Duration,
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
    /// ACLs hold between two vNICs of the network too (false for
    /// l2bridge, which bridges same-host traffic without policy as
    /// Windows does; l2tunnel and the rest police it).
    police_local: bool,
}

/// A network as the pipeline is told about it.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetworkConfig {
    pub fdb: FdbConfig,
    /// Its vNICs take super-frames.
    pub offload: bool,
    /// See [`Network::police_local`].
    pub police_local: bool,
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
    conntrack: Conntrack,
    /// Answers the switch makes itself (l2bridge ARP and NDP).
    reply: Packet,
}

impl Default for Pipeline {
    fn default() -> Self {
        Pipeline::new(conntrack::Limits::default())
    }
}

impl Pipeline {
    pub fn new(limits: conntrack::Limits) -> Pipeline {
        Pipeline {
            ports: HashMap::new(),
            nets: HashMap::new(),
            conntrack: Conntrack::new(limits, conntrack::Timeouts::default()),
            reply: Packet::new(),
        }
    }

    /// Adds a network (a second add of the same id changes nothing).
    pub fn add_network(&mut self, net: NetId, cfg: NetworkConfig) {
        self.nets.entry(net).or_insert_with(|| Network {
            fdb: Fdb::new(cfg.fdb),
            ports: Vec::new(),
            locals: Locals::new(),
            statics: HashMap::new(),
            l2bridge: false,
            offload: cfg.offload,
            police_local: cfg.police_local,
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
        let now = Instant::now();
        self.ports.insert(
            id,
            PortState {
                net: policy.net,
                role: policy.role,
                security: policy.security,
                addrs: policy.addrs.iter().map(|(ip, _)| *ip).collect(),
                egress,
                bucket: policy.layers.qos.map(|rate| TokenBucket::new(rate, now)),
                layers: policy.layers,
                generation: 0,
                flows: FlowCache::with_hasher(FLOWS_PER_PORT, FLOW_IDLE, keyed_hash()),
            },
        );
        true
    }

    /// Replaces a port's policy layers. Flows cached under the old ones
    /// are recomputed at their next packet; a new rate starts full.
    pub fn set_layers(&mut self, port: PortId, layers: Layers, now: Instant) -> bool {
        let Some(state) = self.ports.get_mut(&port) else {
            return false;
        };
        if layers.qos != state.layers.qos {
            state.bucket = layers.qos.map(|rate| TokenBucket::new(rate, now));
        }
        state.layers = layers;
        state.generation = state.generation.wrapping_add(1);
        true
    }

    /// Replaces the addresses a port may send from (`None`: any).
    pub fn set_security(&mut self, port: PortId, security: Option<PortSecurity>) -> bool {
        let Some(state) = self.ports.get_mut(&port) else {
            return false;
        };
        state.security = security;
        true
    }

    /// A port's flow cache counters and size.
    pub fn flow_stats(&self) -> Vec<(PortId, CacheStats, usize)> {
        self.ports
            .iter()
            .map(|(&id, p)| (id, p.flows.stats(), p.flows.len()))
            .collect()
    }

    /// The flow caches of `port` (or every port).
    pub fn flows(&self, port: Option<PortId>, now: Instant) -> Vec<FlowInfo> {
        let mut out = Vec::new();
        for (&id, p) in &self.ports {
            if port.is_some_and(|want| want != id) {
                continue;
            }
            out.extend(p.flows.iter(now).map(|(key, outcome, idle)| FlowInfo {
                in_port: id,
                key: *key,
                outcome: *outcome,
                idle,
            }));
        }
        out
    }

    /// The tracked connections (of connections counted against `port`, or
    /// all).
    pub fn connections(&self, port: Option<PortId>, now: Instant) -> Vec<conntrack::ConnInfo> {
        let mut all = self.conntrack.dump(now);
        if let Some(port) = port {
            all.retain(|c| c.port == port);
        }
        all
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
        self.conntrack.forget_port(port);
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

    /// Expires learned addresses and idle connections.
    pub fn age(&mut self, now: Instant) {
        for net in self.nets.values_mut() {
            net.fdb.age(now);
        }
        self.conntrack.expire(now);
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
        self.run(in_port, frame, now, None)
    }

    /// What [`Pipeline::decide`] would decide, step by step, changing
    /// nothing.
    pub fn trace(
        &mut self,
        in_port: PortId,
        frame: &[u8],
        now: Instant,
    ) -> Option<(Decision, Vec<TraceStep>)> {
        let mut log = Vec::new();
        let decision = self.run(in_port, frame, now, Some(&mut log))?;
        Some((decision, log))
    }

    fn run(
        &mut self,
        in_port: PortId,
        frame: &[u8],
        now: Instant,
        mut trace: Option<&mut Vec<TraceStep>>,
    ) -> Option<Decision> {
        macro_rules! step {
            ($stage:expr, $($fmt:tt)*) => {
                if let Some(log) = trace.as_deref_mut() {
                    log.push(($stage, format!($($fmt)*)));
                }
            };
        }
        let dry = trace.is_some();
        let src = self.ports.get(&in_port)?;
        let meta = match classify(frame) {
            Ok(meta) => meta,
            Err(reason) => return Some(Decision::drop(reason, None)),
        };
        let (from_wire, l2bridge_mac) = match src.role {
            PortRole::Uplink { l2bridge, .. } => (true, l2bridge),
            PortRole::Vnic => (false, None),
        };
        let admitted = forward::admit(src.security.as_ref(), !from_wire, frame)
            .and_then(|addrs| forward::guard(src.layers.guards, frame).map(|()| addrs));
        let (src_mac, mut dst_mac) = match admitted {
            Ok(addrs) => addrs,
            Err(reason) => {
                step!("admit", "refused: {}", reason.name());
                return Some(Decision::drop(reason, Some(meta)));
            }
        };
        step!(
            "admit",
            "{} -> {}, {}",
            src_mac,
            dst_mac,
            if src.security.is_some() {
                "the endpoint's own addresses"
            } else {
                "trusted port"
            }
        );
        let meta = Some(meta);
        let net_id = src.net;
        let net = self.nets.get_mut(&net_id)?;
        // A vNIC's MAC is its own: nobody else, on the wire or spoofing,
        // may send from it (and so move it away from the vNIC).
        if net
            .statics
            .get(&src_mac)
            .is_some_and(|&owner| owner != in_port)
        {
            step!("admit", "{src_mac} belongs to another port");
            return Some(Decision::drop(DropReason::MacSpoofing, meta));
        }
        let mut xform = HeaderTransform::NONE;
        if let Some(uplink_mac) = l2bridge_mac {
            match l2bridge::ingress(frame, uplink_mac, &net.locals, &mut self.reply) {
                Ingress::Forward(x) => {
                    dst_mac = x.dst_after(dst_mac);
                    step!("l2bridge", "to the endpoint at {dst_mac}");
                    xform = x;
                }
                Ingress::Reply => {
                    step!("l2bridge", "the switch answers for its endpoint");
                    return Some(Decision {
                        verdict: Verdict::Reply { out: in_port },
                        meta,
                        learn_refused: false,
                    });
                }
                Ingress::NotLocal => return Some(Decision::drop(DropReason::NotLocal, meta)),
            }
        }
        let learn_refused = !dry && net.fdb.learn(src_mac, in_port, now) == Learn::Refused;
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
        let police_local = net.police_local;
        let out = match verdict {
            Verdict::Forward { out, .. } => {
                step!("fdb", "{dst_mac} is on port {out}");
                Some(out)
            }
            Verdict::Flood { .. } => {
                step!("fdb", "{dst_mac}: flood within the network");
                None
            }
            _ => {
                step!("fdb", "{dst_mac} is on the port it came from");
                return Some(Decision {
                    verdict,
                    meta,
                    learn_refused,
                });
            }
        };
        let m = meta.as_ref().expect("classified");
        if let Err(reason) = self.police(in_port, out, frame, m, police_local, now, &mut trace) {
            return Some(Decision {
                verdict: Verdict::Drop(reason),
                meta,
                learn_refused,
            });
        }
        Some(Decision {
            verdict,
            meta,
            learn_refused,
        })
    }

    /// The policy layers for a frame the FDB has placed: the sender's Out
    /// and the receiver's In ACL layer (through the sender's flow cache),
    /// connection tracking for their state, then the sender's QoS.
    #[allow(clippy::too_many_arguments)]
    fn police(
        &mut self,
        in_port: PortId,
        out: Option<PortId>,
        frame: &[u8],
        meta: &PacketMeta,
        police_local: bool,
        now: Instant,
        trace: &mut Option<&mut Vec<TraceStep>>,
    ) -> Result<(), DropReason> {
        macro_rules! step {
            ($stage:expr, $($fmt:tt)*) => {
                if let Some(log) = trace.as_deref_mut() {
                    log.push(($stage, format!($($fmt)*)));
                }
            };
        }
        let dry = trace.is_some();
        let src = &self.ports[&in_port];
        let dst = out.and_then(|o| self.ports.get(&o));
        let local = src.vnic() && dst.is_some_and(PortState::vnic);
        let exempt = local && !police_local;
        let out_layer = src.vnic() && src.layers.policed() && !exempt;
        let in_layer = dst.is_some_and(|d| d.vnic() && d.layers.policed()) && !exempt;
        if (out_layer || in_layer) && exempt {
            step!(
                "acl",
                "same-host traffic of an l2bridge network: not policed"
            );
        }
        let conn = if out_layer || in_layer {
            conn_of(frame, meta, src.net)
        } else {
            None
        };
        if let Some((tuple, seg)) = conn {
            let side = if src.vnic() {
                Side::FromVnic
            } else {
                Side::FromWire
            };
            let key = meta.flow_key(frame, src.net, in_port, side);
            let generation =
                u64::from(src.generation) << 32 | u64::from(dst.map_or(0, |d| d.generation));
            let cached = if dry {
                src.flows.peek(&key, generation, now).copied()
            } else {
                let src = self.ports.get_mut(&in_port).expect("looked up above");
                src.flows.get_mut(&key, generation, now).map(|o| {
                    o.hits += 1;
                    *o
                })
            };
            let src = &self.ports[&in_port];
            let dst = out.and_then(|o| self.ports.get(&o));
            let outcome = match cached {
                Some(o) => {
                    step!("flow_cache", "hit: the flow was decided before");
                    o
                }
                None => {
                    step!("flow_cache", "miss: the layers decide");
                    let (out_rule, out_action) = if out_layer {
                        src.layers.check(&tuple, Direction::Out)
                    } else {
                        (None, AclAction::Allow)
                    };
                    let (in_rule, in_action) = match dst {
                        Some(d) if in_layer => d.layers.check(&tuple, Direction::In),
                        _ => (None, AclAction::Allow),
                    };
                    AclOutcome {
                        allowed: out_action == AclAction::Allow && in_action == AclAction::Allow,
                        out_rule,
                        in_rule,
                        out_port: out,
                        hits: 1,
                    }
                }
            };
            if let Some(log) = trace.as_deref_mut() {
                if out_layer {
                    log.push(("acl.out", rule_text(&src.layers, outcome.out_rule, in_port)));
                }
                if let (Some(d), true) = (dst, in_layer) {
                    let port = out.expect("in layer of a port");
                    log.push(("acl.in", rule_text(&d.layers, outcome.in_rule, port)));
                }
            }
            if !dry {
                if let Some(rule) = outcome.out_rule.filter(|_| out_layer) {
                    src.layers.hit(rule);
                }
                if let (Some(rule), Some(d)) = (outcome.in_rule, dst) {
                    d.layers.hit(rule);
                }
                if cached.is_none() {
                    let src = self.ports.get_mut(&in_port).expect("looked up above");
                    src.flows.insert(key, outcome, generation, now);
                }
            }
            let track = if dry {
                let (track, state) = self.conntrack.peek(&tuple, seg, in_port, now);
                step!(
                    "conntrack",
                    "{track:?}{}",
                    state.map_or(String::new(), |s| format!(", {s:?}"))
                );
                Some(track)
            } else if outcome.allowed {
                Some(self.conntrack.track(tuple, seg, in_port, now))
            } else {
                self.conntrack.track_existing(tuple, seg, now)
            };
            if outcome.allowed {
                if track == Some(Track::Full) {
                    step!("conntrack", "a new connection, and the table is full");
                    return Err(DropReason::ConntrackFull);
                }
            } else {
                // A blocked packet still passes as the reply of (or an
                // error about) a connection allowed the other way: ACLs
                // are stateful.
                match track {
                    Some(Track::Established(conntrack::Dir::Reply) | Track::Related) => {
                        step!(
                            "acl",
                            "blocked, but a reply of an allowed connection: passes"
                        );
                    }
                    _ => return Err(DropReason::AclBlocked),
                }
            }
        }
        if src_qos(self, in_port, frame.len(), dry, now, trace).is_err() {
            return Err(DropReason::QosExceeded);
        }
        Ok(())
    }
}

/// QoS on what a vNIC sends: the frame must fit the bucket.
fn src_qos(
    p: &mut Pipeline,
    in_port: PortId,
    len: usize,
    dry: bool,
    now: Instant,
    trace: &mut Option<&mut Vec<TraceStep>>,
) -> Result<(), ()> {
    let Some(src) = p.ports.get_mut(&in_port) else {
        return Ok(());
    };
    let Some(bucket) = src.bucket.as_mut() else {
        return Ok(());
    };
    if let Some(log) = trace.as_deref_mut() {
        log.push(("qos", format!("at most {} bytes/s", bucket.rate())));
        return Ok(());
    }
    if dry || bucket.take(len as u64, now) {
        Ok(())
    } else {
        Err(())
    }
}

/// A trace's account of one ACL layer's answer.
fn rule_text(layers: &Layers, rule: Option<u32>, port: PortId) -> String {
    format!("port {port}: {}", layers.describe(rule))
}
