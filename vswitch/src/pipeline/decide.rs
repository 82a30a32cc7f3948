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

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use foldhash::{HashMap, HashMapExt};

use super::classify::{classify, Direction as Side, FlowKey, PacketMeta};
use super::conntrack::{self, Conntrack, Track};
use super::conntrack::{Dir, Segment, Tuple};
use super::flowcache::{CacheStats, FlowCache};
use super::forward::{self, PortSecurity};
use super::l2bridge::{self, Ingress, Locals};
use super::layers::{conn_of, AclOutcome, Layers};
use super::nat::{self, Nat, NatConfig};
use super::qos::TokenBucket;
use super::verdict::{HeaderTransform, Verdict};
use super::{NetId, PortId};
use crate::datapath::DropReason;
use crate::fdb::{keyed_hash, Fdb, FdbConfig, KeyedHash, Learn};
use crate::policy::{AclAction, Direction};
use crate::port::Packet;
use crate::wire::MacAddr;

/// Logs a step of a traced decision (`trace` is `None` outside `trace`:
/// then nothing is formatted).
macro_rules! step {
    ($trace:ident, $stage:expr, $($fmt:tt)*) => {
        if let Some(log) = $trace.as_deref_mut() {
            log.push(($stage, format!($($fmt)*)));
        }
    };
}

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
    /// An overlay network's VXLAN tunnel port: endpoints on other hosts,
    /// by the MACs of the CA->PA table. Never flooded to: nothing crosses
    /// hosts but unicast to a known customer address.
    Tunnel,
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
    /// QoS: the port may not be read before then (its bucket is in debt).
    paused_until: Option<Instant>,
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
    /// A nat network's translation.
    nat: Option<Nat>,
    /// overlay: customer addresses on other hosts and their MACs (the
    /// CA->PA table without the PAs, which the tunnel port looks up).
    remotes: Locals,
    /// overlay: the tunnel port.
    tunnel: Option<PortId>,
    /// overlay: the distributed router, with RemoteSubnetRoute policies.
    router: Option<super::overlay::Router>,
}

impl Network {
    /// `mac` no longer names a remote address or router: it stops being
    /// the tunnel port's, unless another address or route still maps to
    /// it (an endpoint's IPv4 and IPv6 addresses share one MAC).
    fn release_tunnel_mac(&mut self, mac: MacAddr) {
        let routed = self
            .router
            .iter()
            .any(|r| r.routes.iter().any(|(_, m)| *m == mac));
        if routed || self.remotes.values().any(|v| *v == mac) {
            return;
        }
        if self.tunnel.is_some() && self.statics.get(&mac) == self.tunnel.as_ref() {
            self.statics.remove(&mac);
        }
    }
}

/// How full the tables that grow with traffic are (for `/metrics`): each
/// an O(1) read, so a scrape does not hold up the datapath thread.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableSizes {
    /// FDB entries per network, counting those expired since the last
    /// aging tick (a second at most) and not removed yet.
    pub fdb: Vec<(NetId, usize)>,
    /// NAT ports in use per nat network: TCP, UDP, ICMP.
    pub nat_ports: Vec<(NetId, [usize; 3])>,
    /// Tracked connections, all zones.
    pub conntrack: usize,
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
    /// The frame was dropped because this next hop's MAC is not known: the
    /// caller asks the kernel and tells [`Pipeline::set_neighbour`].
    pub resolve: Option<(NetId, Ipv4Addr)>,
}

impl Decision {
    fn drop(reason: DropReason, meta: Option<PacketMeta>) -> Decision {
        Decision {
            verdict: Verdict::Drop(reason),
            meta,
            learn_refused: false,
            resolve: None,
        }
    }
}

/// What the ACL layers see of a translated packet: the sender's side
/// before translation, the receiver's after, and what conntrack said.
#[derive(Debug, Clone, Copy)]
struct NatView {
    out_view: Tuple,
    in_view: Tuple,
    seg: Segment,
    track: Track,
}

fn v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
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
            nat: None,
            remotes: Locals::new(),
            router: None,
            tunnel: None,
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
            PortRole::Vnic | PortRole::Tunnel => HeaderTransform::NONE,
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
        if policy.role == PortRole::Tunnel {
            net.tunnel = Some(id);
            let routers = net
                .router
                .iter()
                .flat_map(|r| r.routes.iter().map(|(_, m)| m));
            for mac in net.remotes.values().chain(routers) {
                net.statics.insert(*mac, id);
            }
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
                paused_until: None,
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
            state.paused_until = None;
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

    /// Whether a port has a QoS rate.
    pub fn is_shaped(&self, port: PortId) -> bool {
        self.ports.get(&port).is_some_and(|p| p.bucket.is_some())
    }

    /// Until when a port must not be read (QoS shaping); the datapath asks
    /// after each batch.
    pub fn paused_until(&self, port: PortId) -> Option<Instant> {
        self.ports.get(&port)?.paused_until
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
            if net.tunnel == Some(port) {
                net.tunnel = None;
            }
        }
        self.conntrack.forget_port(port);
        self.release_nat_ports();
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
            if state.role == PortRole::Tunnel {
                return None;
            }
            Some((out, &state.egress))
        })
    }

    /// Adds (`mac` given) or removes an overlay network's remote customer
    /// address. Frames to its MAC go to the tunnel port; ARP and neighbour
    /// solicitations for it are answered by the switch.
    pub fn set_remote(&mut self, net: NetId, ip: IpAddr, mac: Option<MacAddr>) -> bool {
        let Some(n) = self.nets.get_mut(&net) else {
            return false;
        };
        let old = match mac {
            Some(mac) => n.remotes.insert(ip, mac),
            None => n.remotes.remove(&ip),
        };
        if let Some(old) = old {
            n.release_tunnel_mac(old);
        }
        if let (Some(mac), Some(tunnel)) = (mac, n.tunnel) {
            n.statics.entry(mac).or_insert(tunnel);
        }
        true
    }

    /// Replaces an overlay network's distributed router (`None`: it has no
    /// RemoteSubnetRoute). Frames to the remote routers' MACs go to the
    /// tunnel port.
    pub fn set_router(&mut self, net: NetId, router: Option<super::overlay::Router>) -> bool {
        let Some(n) = self.nets.get_mut(&net) else {
            return false;
        };
        let old = std::mem::replace(&mut n.router, router);
        for (_, mac) in old.iter().flat_map(|r| &r.routes) {
            n.release_tunnel_mac(*mac);
        }
        if let (Some(r), Some(tunnel)) = (&n.router, n.tunnel) {
            for (_, mac) in &r.routes {
                n.statics.entry(*mac).or_insert(tunnel);
            }
        }
        true
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
        self.release_nat_ports();
    }

    /// For an offloaded flow: counts the `packets` the kernel forwarded
    /// since the last call into its connection (see
    /// [`Conntrack::refresh`]). False when the flow must come back to the
    /// slow path: its connection ended, closes, or expired.
    pub fn refresh_offloaded(&mut self, key: &FlowKey, packets: u64, now: Instant) -> bool {
        let ip = |b: [u8; 16]| {
            let v6 = std::net::Ipv6Addr::from(b);
            match v6.to_ipv4_mapped() {
                Some(v4) if key.family == 4 => IpAddr::V4(v4),
                _ => IpAddr::V6(v6),
            }
        };
        let tuple = Tuple {
            zone: key.net,
            proto: key.proto,
            src: ip(key.src_ip),
            dst: ip(key.dst_ip),
            src_port: key.src_port,
            dst_port: key.dst_port,
        };
        self.conntrack.refresh(&tuple, packets, now)
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
        let dry = trace.is_some();
        let src = self.ports.get(&in_port)?;
        let meta = match classify(frame) {
            Ok(meta) => meta,
            Err(reason) => return Some(Decision::drop(reason, None)),
        };
        let (from_wire, l2bridge_mac) = match src.role {
            PortRole::Uplink { l2bridge, .. } => (true, l2bridge),
            PortRole::Vnic | PortRole::Tunnel => (false, None),
        };
        let from_vnic = src.role == PortRole::Vnic;
        let from_tunnel = src.role == PortRole::Tunnel;
        let admitted = forward::admit(src.security.as_ref(), !from_wire, frame)
            .and_then(|addrs| forward::guard(src.layers.guards, frame).map(|()| addrs));
        let (src_mac, mut dst_mac) = match admitted {
            Ok(addrs) => addrs,
            Err(reason) => {
                step!(trace, "admit", "refused: {}", reason.name());
                return Some(Decision::drop(reason, Some(meta)));
            }
        };
        step!(
            trace,
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
        let classified = meta;
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
            step!(trace, "admit", "{src_mac} belongs to another port");
            return Some(Decision::drop(DropReason::MacSpoofing, meta));
        }
        if net.nat.is_some() {
            if let Some(d) = self.nat_step(
                in_port,
                net_id,
                frame,
                &classified,
                from_wire,
                dst_mac,
                now,
                &mut trace,
            ) {
                return Some(d);
            }
        }
        let net = self.nets.get_mut(&net_id)?;
        let router_mac = net.router.as_ref().map(|r| r.mac);
        let lookup = |ip| {
            let gateway = net.router.as_ref().and_then(|r| r.answers(ip));
            gateway.or_else(|| net.remotes.get(&ip).copied())
        };
        if from_vnic
            && (!net.remotes.is_empty() || router_mac.is_some())
            && (dst_mac.is_multicast() || Some(dst_mac) == router_mac)
            && super::overlay::answer(frame, lookup, &mut self.reply)
        {
            step!(
                trace,
                "overlay",
                "the switch answers for a gateway or a customer address on another host"
            );
            return Some(Decision {
                verdict: Verdict::Reply { out: in_port },
                meta,
                learn_refused: false,
                resolve: None,
            });
        }
        let mut xform = HeaderTransform::NONE;
        if let Some(r) = net
            .router
            .as_ref()
            .filter(|r| r.mac == dst_mac && !from_wire)
        {
            match r.route(frame, &net.locals, from_tunnel) {
                super::overlay::Routed::To(next) => {
                    step!(
                        trace,
                        "overlay",
                        "routed by the distributed router to {next}"
                    );
                    xform = HeaderTransform::NONE.set_src(r.mac).set_dst(next);
                    xform.flags |= HeaderTransform::DEC_TTL;
                    dst_mac = next;
                }
                super::overlay::Routed::NoRoute => {
                    step!(
                        trace,
                        "overlay",
                        "the distributed router has no route for it"
                    );
                    return Some(Decision::drop(DropReason::NoMapping, meta));
                }
                super::overlay::Routed::TtlExceeded => {
                    return Some(Decision::drop(DropReason::TtlExceeded, meta));
                }
            }
        }
        if let Some(uplink_mac) = l2bridge_mac {
            match l2bridge::ingress(frame, uplink_mac, &net.locals, &mut self.reply) {
                Ingress::Forward(x) => {
                    dst_mac = x.dst_after(dst_mac);
                    step!(trace, "l2bridge", "to the endpoint at {dst_mac}");
                    xform = x;
                }
                Ingress::Reply => {
                    step!(trace, "l2bridge", "the switch answers for its endpoint");
                    return Some(Decision {
                        verdict: Verdict::Reply { out: in_port },
                        meta,
                        learn_refused: false,
                        resolve: None,
                    });
                }
                Ingress::NotLocal => return Some(Decision::drop(DropReason::NotLocal, meta)),
            }
        }
        // A nat network's subnet is private: nothing of it but translated
        // traffic goes to or comes from the wire.
        let private = net.nat.as_ref().is_some_and(|n| n.cfg.sources.is_none());
        if private && from_wire {
            return Some(Decision::drop(DropReason::NatNoBinding, meta));
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
                    local_only: private,
                    xform,
                },
            }
        } else {
            // An l2bridge network answers for its own endpoints: a question
            // about one of them needs no answer from the wire.
            let local_only = private
                || (net.l2bridge && !from_wire && l2bridge::asks_for_local(frame, &net.locals));
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
                step!(trace, "fdb", "{dst_mac} is on port {out}");
                Some(out)
            }
            Verdict::Flood { .. } => {
                step!(trace, "fdb", "{dst_mac}: flood within the network");
                None
            }
            _ => {
                step!(trace, "fdb", "{dst_mac} is on the port it came from");
                return Some(Decision {
                    verdict,
                    meta,
                    learn_refused,
                    resolve: None,
                });
            }
        };
        let m = meta.as_ref().expect("classified");
        if let Err(reason) =
            self.police(in_port, out, frame, m, police_local, now, &mut trace, None)
        {
            return Some(Decision {
                verdict: Verdict::Drop(reason),
                meta,
                learn_refused,
                resolve: None,
            });
        }
        Some(Decision {
            verdict,
            meta,
            learn_refused,
            resolve: None,
        })
    }

    /// Replaces a network's translation (`None`: not a nat network).
    pub fn set_nat(&mut self, net: NetId, cfg: Option<NatConfig>) -> bool {
        let Some(n) = self.nets.get_mut(&net) else {
            return false;
        };
        match (n.nat.as_mut(), cfg) {
            (Some(nat), Some(cfg)) => nat.reconfigure(cfg),
            (_, cfg) => n.nat = cfg.map(Nat::new),
        }
        true
    }

    /// Records the MAC of a nat network's next hop.
    pub fn set_neighbour(&mut self, net: NetId, ip: Ipv4Addr, mac: MacAddr, now: Instant) {
        if let Some(nat) = self.nets.get_mut(&net).and_then(|n| n.nat.as_mut()) {
            nat.set_neighbour(ip, mac, now);
        }
    }

    /// The uplink interface of a nat network (for neighbour lookups).
    pub fn nat_ifindex(&self, net: NetId) -> Option<u32> {
        let nat = self.nets.get(&net)?.nat.as_ref()?;
        Some(nat.cfg.uplink_ifindex)
    }

    /// Echo identifiers nat networks took or gave back: (network, id,
    /// taken).
    pub fn take_echo_events(&mut self) -> Vec<(NetId, u16, bool)> {
        let mut out = Vec::new();
        for (&id, n) in &mut self.nets {
            if let Some(nat) = n.nat.as_mut() {
                out.extend(nat.echo_events.drain(..).map(|(e, add)| (id, e, add)));
            }
        }
        out
    }

    /// NAT ports in use per network: (TCP, UDP, ICMP).
    pub fn nat_in_use(&self) -> Vec<(NetId, [usize; 3])> {
        self.nets
            .iter()
            .filter_map(|(&id, n)| Some((id, n.nat.as_ref()?.in_use())))
            .collect()
    }

    /// See [`TableSizes`].
    pub fn table_sizes(&self) -> TableSizes {
        TableSizes {
            fdb: self.nets.iter().map(|(&id, n)| (id, n.fdb.len())).collect(),
            nat_ports: self.nat_in_use(),
            conntrack: self.conntrack.len(),
        }
    }

    /// Gives NAT ports of connections conntrack removed back to their
    /// networks.
    fn release_nat_ports(&mut self) {
        for (zone, proto, port) in self.conntrack.take_freed() {
            if let Some(nat) = self.nets.get_mut(&zone).and_then(|n| n.nat.as_mut()) {
                nat.release(proto, port);
            }
        }
    }

    /// The nat layer: an endpoint's frame to the gateway for outside (or
    /// for the uplink's address and a mapped port), or a frame the uplink
    /// steered here, is translated and routed; `None` leaves the frame to
    /// the switching below (traffic inside the network, to the host).
    #[allow(clippy::too_many_arguments)]
    fn nat_step(
        &mut self,
        in_port: PortId,
        net_id: NetId,
        frame: &[u8],
        meta: &PacketMeta,
        from_wire: bool,
        dst_mac: MacAddr,
        now: Instant,
        trace: &mut Option<&mut Vec<TraceStep>>,
    ) -> Option<Decision> {
        let dry = trace.is_some();
        let drop = |reason| Some(Decision::drop(reason, Some(*meta)));
        let net = self.nets.get(&net_id)?;
        let nat = net.nat.as_ref()?;
        let Some((tuple, seg)) = conn_of(frame, meta, net_id).filter(|_| meta.family == 4) else {
            // Only IPv4 is translated. A nat network's uplink steers nothing
            // else here (and the switching below drops it); an l2bridge's
            // ARP, IPv6 and the rest are its endpoints' own traffic.
            return None;
        };
        let addr = IpAddr::V4(nat.cfg.addr);
        if from_wire && tuple.dst != addr {
            // An l2bridge network's own traffic with the wire: not ours.
            return None;
        }
        if !from_wire {
            let dst = v4(tuple.dst)?;
            // To the uplink's address: a mapped port (hairpin), or the
            // reply of a hairpinned connection; the rest is the host's.
            let to_switch = if dst == nat.cfg.addr {
                nat.mapping(tuple.proto, tuple.dst_port).is_some()
                    || self.conntrack.conn(&tuple).is_some()
            } else {
                nat.is_outside(dst) && v4(tuple.src).is_some_and(|s| nat.translates(s))
            };
            let via_gateway = match nat.cfg.gateway_mac {
                Some(mac) => dst_mac == mac,
                // OutBoundNAT on l2bridge: the gateway is on the wire.
                None => !dst_mac.is_multicast() && !net.statics.contains_key(&dst_mac),
            };
            if !via_gateway || !self.ports.get(&in_port)?.vnic() || !to_switch {
                return None;
            }
        }
        // A nat network's switch routes (it is the gateway): the TTL goes
        // down by one, and a packet with none left is answered, from the
        // gateway, with time exceeded. (On l2bridge the router is on the
        // wire and does this.)
        let routes = nat.cfg.sources.is_none();
        let l3 = usize::from(meta.l3);
        let ttl = frame.get(l3 + 8).copied().unwrap_or(0);
        if routes && ttl <= 1 {
            step!(trace, "nat", "TTL {ttl}: time exceeded");
            if from_wire || dry {
                return drop(DropReason::TtlExceeded);
            }
            let from = nat.cfg.gateway_mac.unwrap_or(nat.cfg.uplink_mac);
            time_exceeded(frame, l3, from, nat.cfg.gateway, &mut self.reply);
            return Some(Decision {
                verdict: Verdict::Reply { out: in_port },
                meta: Some(*meta),
                learn_refused: false,
                resolve: None,
            });
        }
        // The connection, and what the packet becomes.
        let mut new_conn: Option<(Tuple, Option<u16>, u32)> = None;
        let mut error_xform = None;
        let (to, track) = if let Segment::IcmpError { quoted } = seg {
            // The quoted packet is as its receiver saw it: translated.
            let found = self.conntrack.conn(&quoted.reversed()).or_else(|| {
                self.conntrack.conn(&quoted).map(|(o, r, d)| {
                    (
                        o,
                        r,
                        if d == Dir::Original {
                            Dir::Reply
                        } else {
                            Dir::Original
                        },
                    )
                })
            });
            let Some((o, r, d)) = found else {
                step!(trace, "nat", "an ICMP error about no translated connection");
                return drop(DropReason::NatNoBinding);
            };
            let (from, to) = match d {
                Dir::Reply => (r, o.reversed()),
                Dir::Original => (o, r.reversed()),
            };
            // Translate the error as the flow's packets are translated: the
            // outer addresses, and the quoted packet's addresses and ports
            // the other way round (translate.rs).
            let x = nat::rewrite(&from, &to);
            let mut out = tuple;
            if x.has(HeaderTransform::SET_SRC_IP) {
                out.src = to.src;
            }
            if x.has(HeaderTransform::SET_DST_IP) {
                out.dst = to.dst;
            }
            error_xform = Some(x);
            (out, Track::Related)
        } else {
            match self.conntrack.conn(&tuple) {
                Some((_, r, Dir::Original)) => (r.reversed(), Track::Established(Dir::Original)),
                Some((o, _, Dir::Reply)) => (o.reversed(), Track::Established(Dir::Reply)),
                None => {
                    if !seg.starts() {
                        if !from_wire && nat.cfg.sources.is_some() {
                            // OutBoundNAT: the reply of a connection the
                            // wire opened to the endpoint itself.
                            return None;
                        }
                        step!(
                            trace,
                            "nat",
                            "not the start of a connection, and none is known"
                        );
                        return drop(DropReason::NatNoBinding);
                    }
                    let zone = net_id;
                    let reply = |src: IpAddr, dst: IpAddr, sport: u16, dport: u16| Tuple {
                        zone,
                        proto: tuple.proto,
                        src,
                        dst,
                        src_port: sport,
                        dst_port: dport,
                    };
                    let mapping = if from_wire || v4(tuple.dst) == Some(nat.cfg.addr) {
                        nat.mapping(tuple.proto, tuple.dst_port).copied()
                    } else {
                        None
                    };
                    let internal_port = |ip: Ipv4Addr| {
                        let mac = net.locals.get(&IpAddr::V4(ip))?;
                        net.statics.get(mac).copied()
                    };
                    match (from_wire, mapping) {
                        (true, None) => {
                            step!(
                                trace,
                                "nat",
                                "no translated connection or port mapping for it"
                            );
                            return drop(DropReason::NatNoBinding);
                        }
                        (true, Some(m)) => {
                            // Inbound through a mapping: replies come from
                            // the endpoint, untranslated on the way in.
                            let r = reply(
                                IpAddr::V4(m.internal),
                                tuple.src,
                                m.internal_port,
                                tuple.src_port,
                            );
                            step!(
                                trace,
                                "nat",
                                "port mapping {}/{} -> {}:{}",
                                tuple.proto,
                                m.external,
                                m.internal,
                                m.internal_port
                            );
                            let owner = internal_port(m.internal).unwrap_or(in_port);
                            new_conn = Some((r, None, owner));
                            (r.reversed(), Track::New)
                        }
                        (false, m) => {
                            let port = if dry {
                                0
                            } else {
                                let nat = self.nets.get_mut(&net_id)?.nat.as_mut()?;
                                let mut got = nat.allocate(tuple.proto);
                                if got.is_none() {
                                    self.conntrack.reclaim_closed(zone, tuple.proto);
                                    self.release_nat_ports();
                                    let nat = self.nets.get_mut(&net_id)?.nat.as_mut()?;
                                    got = nat.allocate(tuple.proto);
                                }
                                match got {
                                    Some(p) => p,
                                    None => return drop(DropReason::NatExhausted),
                                }
                            };
                            let r = match (m, tuple.proto) {
                                // Hairpin: to a mapped port of the uplink's
                                // address, from an endpoint.
                                (Some(m), _) => {
                                    reply(IpAddr::V4(m.internal), addr, m.internal_port, port)
                                }
                                (None, conntrack::ICMP) => reply(tuple.dst, addr, port, 0),
                                (None, _) => reply(tuple.dst, addr, tuple.dst_port, port),
                            };
                            step!(
                                trace,
                                "nat",
                                "new connection: source becomes {addr}:{}",
                                if dry {
                                    "<a free port>".to_owned()
                                } else {
                                    port.to_string()
                                }
                            );
                            new_conn = Some((r, Some(port), in_port));
                            (r.reversed(), Track::New)
                        }
                    }
                }
            }
        };
        let mut x = error_xform.unwrap_or_else(|| nat::rewrite(&tuple, &to));
        if routes {
            x.flags |= HeaderTransform::DEC_TTL;
        }
        step!(
            trace,
            "nat",
            "{} {}:{} -> {}:{} becomes {}:{} -> {}:{}",
            track_name(track),
            tuple.src,
            tuple.src_port,
            tuple.dst,
            tuple.dst_port,
            to.src,
            to.src_port,
            to.dst,
            to.dst_port
        );
        // Where it goes: an endpoint of the network, or out of the uplink.
        let net = self.nets.get(&net_id)?;
        let nat = net.nat.as_ref()?;
        let dst = v4(to.dst)?;
        let (out, macs) = match net.locals.get(&IpAddr::V4(dst)) {
            Some(&mac) => {
                let out = *net.statics.get(&mac)?;
                (
                    out,
                    HeaderTransform::NONE
                        .set_dst(mac)
                        .set_src(nat.cfg.gateway_mac.unwrap_or(nat.cfg.uplink_mac)),
                )
            }
            None => {
                let uplink = net
                    .ports
                    .iter()
                    .copied()
                    .find(|p| self.ports.get(p).is_some_and(|s| !s.vnic()));
                let Some(uplink) = uplink else {
                    step!(trace, "nat", "the network has no uplink port");
                    return drop(DropReason::NatNoBinding);
                };
                let Some(hop) = nat.next_hop(dst) else {
                    step!(trace, "nat", "no route to {dst} on the uplink");
                    return drop(DropReason::NeighborUnresolved);
                };
                let Some(mac) = nat.neighbour(hop, now) else {
                    step!(trace, "nat", "next hop {hop}: MAC not known yet");
                    let mut d = Decision::drop(DropReason::NeighborUnresolved, Some(*meta));
                    d.resolve = Some((net_id, hop));
                    if !dry {
                        if let Some((r, port, owner)) = new_conn {
                            self.conntrack.track_translated(
                                tuple,
                                seg,
                                owner,
                                now,
                                Some((r, port)),
                            );
                        }
                    }
                    return Some(d);
                };
                step!(trace, "nat", "out of the uplink to next hop {hop} ({mac})");
                (
                    uplink,
                    HeaderTransform::NONE
                        .set_dst(mac)
                        .set_src(nat.cfg.uplink_mac),
                )
            }
        };
        let track = if dry {
            track
        } else {
            match new_conn {
                Some((r, port, owner)) => {
                    let t =
                        self.conntrack
                            .track_translated(tuple, seg, owner, now, Some((r, port)));
                    if t != Track::New {
                        if let Some(port) = port {
                            let nat = self.nets.get_mut(&net_id)?.nat.as_mut()?;
                            nat.release(tuple.proto, port);
                        }
                    }
                    t
                }
                None if track == Track::Related => track,
                None => self.conntrack.track(tuple, seg, in_port, now),
            }
        };
        if track == Track::Full {
            step!(
                trace,
                "conntrack",
                "a new connection, and the table is full"
            );
            return drop(DropReason::ConntrackFull);
        }
        let egress = self
            .ports
            .get(&out)
            .map_or(HeaderTransform::NONE, |p| p.egress);
        let xform = macs.then(&x).then(&egress);
        let view = NatView {
            out_view: tuple,
            in_view: to,
            seg,
            track,
        };
        let police_local = self.nets.get(&net_id)?.police_local;
        if let Err(reason) = self.police(
            in_port,
            Some(out),
            frame,
            meta,
            police_local,
            now,
            trace,
            Some(view),
        ) {
            return drop(reason);
        }
        Some(Decision {
            verdict: Verdict::Forward { out, xform },
            meta: Some(*meta),
            learn_refused: false,
            resolve: None,
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
        nat: Option<NatView>,
    ) -> Result<(), DropReason> {
        let dry = trace.is_some();
        let src = &self.ports[&in_port];
        let dst = out.and_then(|o| self.ports.get(&o));
        let local = src.vnic() && dst.is_some_and(PortState::vnic);
        let exempt = local && !police_local;
        let out_layer = src.vnic() && src.layers.policed() && !exempt;
        let in_layer = dst.is_some_and(|d| d.vnic() && d.layers.policed()) && !exempt;
        if (out_layer || in_layer) && exempt {
            step!(
                trace,
                "acl",
                "same-host traffic of an l2bridge network: not policed"
            );
        }
        let conn = match nat {
            _ if !(out_layer || in_layer) => None,
            Some(v) => Some((v.out_view, v.in_view, v.seg, Some(v.track))),
            None => conn_of(frame, meta, src.net).map(|(t, seg)| (t, t, seg, None)),
        };
        if let Some((tuple, in_view, seg, known)) = conn {
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
                    step!(trace, "flow_cache", "hit: the flow was decided before");
                    o
                }
                None => {
                    step!(trace, "flow_cache", "miss: the layers decide");
                    let (out_rule, out_action) = if out_layer {
                        src.layers.check(&tuple, Direction::Out)
                    } else {
                        (None, AclAction::Allow)
                    };
                    let (in_rule, in_action) = match dst {
                        Some(d) if in_layer => d.layers.check(&in_view, Direction::In),
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
            let track = if let Some(known) = known {
                // Translated: conntrack was asked already.
                Some(known)
            } else if dry {
                let (track, state) = self.conntrack.peek(&tuple, seg, in_port, now);
                step!(
                    trace,
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
                    step!(
                        trace,
                        "conntrack",
                        "a new connection, and the table is full"
                    );
                    return Err(DropReason::ConntrackFull);
                }
            } else {
                // A blocked packet still passes as the reply of (or an
                // error about) a connection allowed the other way: ACLs
                // are stateful.
                match track {
                    Some(Track::Established(conntrack::Dir::Reply) | Track::Related) => {
                        step!(
                            trace,
                            "acl",
                            "blocked, but a reply of an allowed connection: passes"
                        );
                    }
                    _ => return Err(DropReason::AclBlocked),
                }
            }
        }
        src_qos(self, in_port, frame.len(), dry, now, trace);
        Ok(())
    }
}

/// ICMP time exceeded (RFC 792) about the IPv4 packet at `frame[l3..]`,
/// from `gateway` (at `mac`) back to its sender, into `out`.
fn time_exceeded(frame: &[u8], l3: usize, mac: MacAddr, gateway: Ipv4Addr, out: &mut Packet) {
    let ip = &frame[l3..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let quoted = &ip[..(ihl + 8).min(ip.len())];
    let mut icmp = vec![11, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(quoted);
    let c = crate::wire::checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let len = (20 + icmp.len()) as u16;
    let mut f = frame[6..12].to_vec();
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0xc0]);
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
    f.extend_from_slice(&gateway.octets());
    f.extend_from_slice(&ip[12..16]);
    let c = crate::wire::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&icmp);
    out.fill(&f);
}

fn track_name(t: Track) -> &'static str {
    match t {
        Track::New => "new",
        Track::Established(Dir::Original) => "established",
        Track::Established(Dir::Reply) => "reply",
        Track::Related => "related",
        Track::Invalid => "invalid",
        Track::Full => "full",
    }
}

/// QoS on what a vNIC sends: the frame is charged; a bucket in debt
/// pauses the port (the datapath stops reading it until then).
fn src_qos(
    p: &mut Pipeline,
    in_port: PortId,
    len: usize,
    dry: bool,
    now: Instant,
    trace: &mut Option<&mut Vec<TraceStep>>,
) {
    let Some(src) = p.ports.get_mut(&in_port) else {
        return;
    };
    let Some(bucket) = src.bucket.as_mut() else {
        return;
    };
    if let Some(log) = trace.as_deref_mut() {
        log.push(("qos", format!("shaped to {} bytes/s", bucket.rate())));
        return;
    }
    if !dry {
        src.paused_until = bucket.charge(len as u64, now).map(|wait| now + wait);
    }
}

/// A trace's account of one ACL layer's answer.
fn rule_text(layers: &Layers, rule: Option<u32>, port: PortId) -> String {
    format!("port {port}: {}", layers.describe(rule))
}
