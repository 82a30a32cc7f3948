//! The control plane's side of the kernel fast path: what it tells the
//! eBPF maps about veth endpoints and their networks, and what it reads
//! back (counters, attachments).
//!
//! The fast path is opened when the first veth endpoint needs it, in the
//! pin directory of this switch instance; a daemon with only TAP endpoints
//! loads nothing into the kernel. A port's entries say what the kernel may
//! forward without the slow path: a policed or shaped port is marked slow
//! (both ways), a network whose same-host traffic is policed (l2tunnel) is
//! slow as a whole. Whenever an endpoint's layers change, its entries are
//! rewritten before the request returns.

use super::endpoints::endpoint_ips;
use super::errors::internal;
use super::plumb::{VethNames, VethPort};
use super::state::{EndpointRecord, NetworkRecord};
use super::{ApiResult, Controller};
use crate::api::{self, Driver};
use crate::datapath::{DropReason, NetId};
use crate::ebpf::fastpath::{
    fdb_flags, net_flags, port_flags, FastPath, FdbEntry, FpIp, FpNet, FpPort, FpUplink, IpKey,
    Origin, Program, UplinkKey,
};
use crate::ebpf::EbpfError;
use crate::ifname::IfName;
use crate::pipeline::forward::link_local_of;
use crate::pipeline::Layers;
use std::net::IpAddr;

/// A veth endpoint's kernel objects, as the controller tracks them.
#[derive(Debug, Clone)]
pub(super) struct VethHandle {
    pub names: VethNames,
    pub host_index: u32,
    pub punt_index: u32,
    pub net: NetId,
    pub mac: [u8; 6],
    /// Entries of `endpoint_ips` (l2bridge networks with a kernel uplink).
    pub ips: Vec<IpAddr>,
    /// The host veth's counter slot.
    pub slot: u32,
}

/// Whether the kernel may carry a network's traffic to and from its uplink:
/// transparent and l2bridge networks without network policies (OutBoundNAT
/// and ACLs on the network are the slow path's).
pub(super) fn kernel_uplink(net: &NetworkRecord) -> bool {
    matches!(net.driver, Driver::Transparent | Driver::L2Bridge)
        && net.policies.is_empty()
        && net.parsed.interface.is_some()
}

pub(super) fn fast_error(e: EbpfError) -> api::ApiError {
    internal(format!("kernel fast path: {}", crate::sys::error_chain(&e)))
}

pub(super) fn ifname(name: &str) -> ApiResult<IfName> {
    IfName::new(name).map_err(|e| internal(format!("device name {name}: {e}")))
}

/// What the kernel must leave to the slow path for this port.
/// Whether the kernel delivers the endpoint's frames from the wire: its
/// network's uplink is the kernel's, and the port has nothing the slow path
/// must see.
pub(super) fn kernel_delivers(net: &NetworkRecord, ep: &EndpointRecord, layers: &Layers) -> bool {
    kernel_uplink(net) && flags_of(Some(net), ep, layers) & port_flags::SLOW == 0
}

/// l2tunnel polices same-host traffic too: its ports are slow whatever
/// their own layers (the kernel then forwards only flows the slow path
/// offloaded after deciding them). A mirror source is slow both ways, and
/// the datapath offloads none of its flows: its copies are made there.
fn flags_of(net: Option<&NetworkRecord>, ep: &EndpointRecord, layers: &Layers) -> u32 {
    let mut flags = 0;
    let policed_net = net.is_some_and(|n| n.driver == Driver::L2Tunnel);
    let mirrored = ep.mirror == api::PortMirroring::Source;
    if policed_net || mirrored || layers.policed() || layers.qos.is_some() {
        flags |= port_flags::SLOW | port_flags::SLOW_IN;
    }
    if ep.allow_spoofing {
        flags |= port_flags::SPOOF;
    }
    flags
}

impl Controller {
    /// The fast path, opened (or adopted) on first use.
    pub(super) fn fast_path(&mut self) -> ApiResult<&mut FastPath> {
        if self.fast.is_none() {
            let dir = FastPath::pin_dir_for(self.file.dir());
            let fp = FastPath::open(&dir).map_err(fast_error)?;
            let table = fp.flow_table().map_err(fast_error)?;
            self.datapath
                .set_flow_table(Some(table))
                .map_err(internal)?;
            self.fast = Some(fp);
        }
        Ok(self.fast.as_mut().expect("just opened"))
    }

    /// Attaches the programs to a veth endpoint's devices and describes it
    /// to the kernel. Undoes its own steps on failure.
    pub(super) fn fast_attach(
        &mut self,
        net: &NetworkRecord,
        dp_net: NetId,
        ep: &EndpointRecord,
        veth: &VethPort,
        names: &VethNames,
        layers: &Layers,
    ) -> ApiResult<VethHandle> {
        let (slot, punt_slot) = {
            let fp = self.fast_path()?;
            let host = fp.slot(veth.host_index).map_err(fast_error)?;
            (host, fp.slot(veth.punt_index).map_err(fast_error)?)
        };
        let handle = VethHandle {
            slot,
            names: names.clone(),
            host_index: veth.host_index,
            punt_index: veth.punt_index,
            net: dp_net,
            mac: ep.mac.0,
            ips: if kernel_uplink(net) && net.driver == Driver::L2Bridge {
                endpoint_ips(ep)
            } else {
                Vec::new()
            },
        };
        let flags = flags_of(Some(net), ep, layers);
        let result = (|| -> ApiResult<()> {
            let host = ifname(&names.host)?;
            let punt = ifname(&names.punt)?;
            let fp = self.fast_path()?;
            let port = ep.port_id;
            let entry = port_entry(ep, dp_net, veth.punt_index, slot, flags);
            // Entries first, programs second: a program never runs on a
            // device the maps do not know.
            fp.set_port(veth.host_index, &entry).map_err(fast_error)?;
            fp.set_port(
                veth.punt_index,
                &FpPort {
                    port_id: port,
                    net: dp_net,
                    flags: port_flags::INJECT,
                    peer: veth.host_index,
                    slot: punt_slot,
                    ..FpPort::default()
                },
            )
            .map_err(fast_error)?;
            fp.set_fdb(dp_net, ep.mac.0, fdb_entry(veth.host_index, slot, flags))
                .map_err(fast_error)?;
            let kept_port = fp.attach(&host, Program::Port).map_err(fast_error)?;
            let kept_inject = fp.attach(&punt, Program::Inject).map_err(fast_error)?;
            if kept_port && kept_inject {
                tracing::debug!(endpoint = %ep.name, "fast path attachments adopted");
            }
            if self.fast_network(net, dp_net)? && net.driver == Driver::L2Bridge {
                let fp = self.fast_path()?;
                for ip in endpoint_ips(ep) {
                    fp.set_ip(
                        IpKey::new(dp_net, ip),
                        &ip_entry(veth.host_index, slot, ep, flags),
                    )
                    .map_err(fast_error)?;
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            self.fast_detach(&handle);
            return Err(e);
        }
        Ok(handle)
    }

    /// Takes a veth endpoint out of the kernel's tables and detaches its
    /// programs. Failures are logged: the caller is removing it anyway.
    pub(super) fn fast_detach(&mut self, h: &VethHandle) {
        let Some(fp) = self.fast.as_mut() else {
            return;
        };
        let mut steps = vec![
            fp.remove_fdb(h.net, h.mac),
            fp.remove_port(h.host_index),
            fp.remove_port(h.punt_index),
        ];
        for ip in &h.ips {
            steps.push(fp.remove_ip(IpKey::new(h.net, *ip)));
        }
        for name in [&h.names.host, &h.names.punt] {
            if let Ok(n) = IfName::new(name) {
                if let Err(e) = fp.detach(&n) {
                    tracing::warn!(ifname = %name, error = %crate::sys::error_chain(&e), "could not detach fast path program");
                }
            }
        }
        for e in steps.into_iter().filter_map(Result::err) {
            tracing::warn!(host = %h.names.host, error = %crate::sys::error_chain(&e), "could not clear fast path entry");
        }
    }

    /// Rewrites an endpoint's port and FDB entries after its layers or
    /// settings changed, so a new policy holds at once.
    pub(super) fn fast_sync(&mut self, ep: &EndpointRecord, layers: &Layers) -> ApiResult<()> {
        let Some(h) = self
            .endpoints
            .get(&ep.id)
            .and_then(|rt| rt.port.as_ref())
            .and_then(|p| p.veth.clone())
        else {
            return Ok(());
        };
        let net = self.state.network_by_id(&ep.network_id).cloned();
        let flags = flags_of(net.as_ref(), ep, layers);
        let fp = self.fast_path()?;
        let entry = port_entry(ep, h.net, h.punt_index, h.slot, flags);
        fp.set_port(h.host_index, &entry).map_err(fast_error)?;
        fp.set_fdb(h.net, h.mac, fdb_entry(h.host_index, h.slot, flags))
            .map_err(fast_error)?;
        for ip in &h.ips {
            fp.set_ip(
                IpKey::new(h.net, *ip),
                &ip_entry(h.host_index, h.slot, ep, flags),
            )
            .map_err(fast_error)?;
        }
        // Frames from the wire: to the kernel only while it may forward.
        if let Some(net) = net {
            let kernel = kernel_delivers(&net, ep, layers);
            self.steer_endpoint(&net, ep, &endpoint_ips(ep), kernel)?;
        }
        Ok(())
    }

    /// Describes a network to the kernel: its flags and, when the kernel
    /// may use its uplink, the uplink (both directions: the TC program on
    /// it, its (ifindex, VLAN) entry, and the mirror of MACs learned on it).
    /// Returns whether the kernel uses the uplink.
    pub(super) fn fast_network(&mut self, net: &NetworkRecord, dp_net: NetId) -> ApiResult<bool> {
        let mut entry = FpNet::default();
        if net.driver == Driver::L2Tunnel {
            entry.flags |= net_flags::SLOW;
        }
        if let Some(t) = self.nets.get(&net.id).and_then(|rt| rt.overlay.as_ref()) {
            let vxlan = self.overlay_vtep_index(t.port);
            let fp = self.fast.as_ref();
            entry.flags |= net_flags::TUNNEL;
            entry.vni = t.vni;
            entry.vxlan = vxlan;
            entry.local_pa = t.pa.octets();
            entry.tunnel_slot = fp.map_or(0, |fp| fp.slot_of(t.tap_index));
        }
        let uplink = net
            .parsed
            .interface
            .as_ref()
            .filter(|_| kernel_uplink(net))
            .and_then(|i| Some((i.clone(), self.uplinks.get(i)?)))
            .map(|(i, up)| (i, up.ifindex, up.mac));
        let uplink_port = self
            .nets
            .get(&net.id)
            .and_then(|rt| rt.uplink.as_ref())
            .map(|p| p.id);
        let (Some((ifname_, ifindex, mac)), Some(uplink_port)) = (uplink, uplink_port) else {
            self.fast_path()?
                .set_net(dp_net, &entry)
                .map_err(fast_error)?;
            return Ok(false);
        };
        let vlan = net.parsed.vlan;
        entry.uplink = ifindex;
        entry.vlan = vlan;
        if vlan != 0 {
            entry.flags |= net_flags::VLAN;
        }
        let l2bridge = net.driver == Driver::L2Bridge;
        if l2bridge {
            entry.flags |= net_flags::L2BRIDGE;
            entry.uplink_mac = mac.0;
        }
        let fresh = self.fast_nets.insert(dp_net);
        let fp = self.fast_path()?;
        let uplink_slot = fp.slot(ifindex).map_err(fast_error)?;
        entry.uplink_slot = uplink_slot;
        fp.set_net(dp_net, &entry).map_err(fast_error)?;
        fp.set_uplink(
            UplinkKey {
                ifindex,
                vlan,
                pad: [0; 2],
            },
            &FpUplink {
                net: dp_net,
                flags: if l2bridge { net_flags::L2BRIDGE } else { 0 },
                mac: mac.0,
                pad: [0; 2],
                slot: uplink_slot,
            },
        )
        .map_err(fast_error)?;
        fp.attach(&ifname(&ifname_)?, Program::Uplink)
            .map_err(fast_error)?;
        if fresh {
            let mirror = fp.fdb_mirror(dp_net, uplink_port).map_err(fast_error)?;
            if let Err(e) = self.datapath.set_mirror(dp_net, Some(mirror)) {
                self.fast_nets.remove(&dp_net);
                return Err(internal(e));
            }
        }
        Ok(true)
    }

    /// Forgets a network that stops: its kernel entries (the datapath drops
    /// its mirror with it).
    pub(super) fn fast_forget_network(&mut self, net: &NetworkRecord, dp_net: NetId) {
        self.fast_nets.remove(&dp_net);
        let ifindex = net
            .parsed
            .interface
            .as_ref()
            .and_then(|i| self.uplinks.get(i))
            .map(|u| u.ifindex);
        let Some(fp) = self.fast.as_mut() else {
            return;
        };
        let _ = fp.remove_net(dp_net);
        if let Some(ifindex) = ifindex {
            let _ = fp.remove_uplink(UplinkKey {
                ifindex,
                vlan: net.parsed.vlan,
                pad: [0; 2],
            });
        }
    }

    /// An uplink no network uses any more: its TC program goes.
    pub(super) fn fast_release_uplink(&mut self, ifname_: &str) {
        if let (Some(fp), Ok(name)) = (self.fast.as_mut(), IfName::new(ifname_)) {
            if let Some(index) = crate::sys::if_index(ifname_) {
                fp.release_slot(index);
            }
            if let Err(e) = fp.detach(&name) {
                tracing::warn!(ifname = ifname_, error = %crate::sys::error_chain(&e), "could not detach the uplink's fast path program");
            }
        }
    }

    /// After a restart: entries for devices no endpoint claimed are a dead
    /// instance's, and go.
    pub(super) fn fast_sweep(&mut self) {
        let live: Vec<u32> = self
            .endpoints
            .values()
            .filter_map(|rt| rt.port.as_ref()?.veth.as_ref())
            .flat_map(|h| [h.host_index, h.punt_index])
            .chain(self.overlay_devices())
            .collect();
        if let Some(fp) = self.fast.as_mut() {
            if let Err(e) = fp.retain_ports(&live) {
                tracing::warn!(error = %crate::sys::error_chain(&e), "could not sweep stale fast path entries");
            }
        }
    }

    /// The veth handle of the endpoint with datapath port `id`.
    pub(super) fn veth_of(&self, id: crate::datapath::PortId) -> Option<&VethHandle> {
        self.endpoints
            .values()
            .filter_map(|rt| rt.port.as_ref())
            .find(|p| p.id == id)?
            .veth
            .as_ref()
    }

    /// A veth endpoint's kernel counters, for `stats`.
    pub(super) fn fast_stats(&self, h: &VethHandle) -> Option<api::FastPathStats> {
        self.fast_stats_of(h.host_index)
    }

    /// The kernel's counters of device `ifindex` (a veth's host end, a
    /// tunnel TAP), for `stats`.
    pub(super) fn fast_stats_of(&self, ifindex: u32) -> Option<api::FastPathStats> {
        let fp = self.fast.as_ref()?;
        let c = fp.counters(ifindex);
        Some(api::FastPathStats {
            forwarded_packets: c.fast_rx_packets,
            forwarded_bytes: c.fast_rx_bytes,
            delivered_packets: c.fast_tx_packets,
            delivered_bytes: c.fast_tx_bytes,
            punted_packets: c.punted_packets,
            punted_bytes: c.punted_bytes,
            drops: DropReason::ALL
                .iter()
                .map(|&r| (r.name().to_owned(), c.drops[r as usize]))
                .collect(),
        })
    }

    pub(super) fn datapath_show(&self) -> api::DatapathInfo {
        let version = format!("{:016x}", crate::ebpf::fastpath::program_version());
        let layout = crate::ebpf::fastpath::LAYOUT;
        let Some(fp) = self.fast.as_ref() else {
            return api::DatapathInfo {
                loaded: false,
                pin_dir: FastPath::pin_dir_for(self.file.dir()).display().to_string(),
                layout,
                version,
                origin: "none".into(),
                attachments: Vec::new(),
                vteps: Vec::new(),
            };
        };
        let owner = |index: u32| -> String {
            for e in &self.state.endpoints {
                let veth = self
                    .endpoints
                    .get(&e.id)
                    .and_then(|rt| rt.port.as_ref()?.veth.as_ref());
                if let Some(h) = veth {
                    if h.host_index == index || h.punt_index == index {
                        return e.name.clone();
                    }
                }
            }
            String::new()
        };
        api::DatapathInfo {
            loaded: true,
            pin_dir: fp.pin_dir().display().to_string(),
            layout,
            version,
            origin: match fp.origin() {
                Origin::Loaded => "loaded".into(),
                Origin::Adopted => "adopted".into(),
                Origin::Replaced { layout, version } => {
                    format!("replaced (layout {layout}, version {version:016x})")
                }
            },
            attachments: fp
                .attachments()
                .into_iter()
                .map(|a| api::Attachment {
                    port: owner(a.ifindex),
                    interface: a.ifname,
                    ifindex: a.ifindex,
                    program: a.program.into(),
                    hook: "tcx ingress".into(),
                    attached: a.attached,
                })
                .collect(),
            vteps: self.overlay_vteps(),
        }
    }
}

/// An endpoint's `ports` entry for its host veth: who it is, where its
/// punted frames go, and what it may send from.
fn port_entry(ep: &EndpointRecord, net: NetId, punt_index: u32, slot: u32, flags: u32) -> FpPort {
    FpPort {
        port_id: ep.port_id,
        net,
        flags,
        peer: punt_index,
        mac: ep.mac.0,
        ipv4: ep.ipv4.map_or([0; 4], |ip| ip.octets()),
        ipv6: ep.ipv6.map_or([0; 16], |ip| ip.octets()),
        ll6: link_local_of(ep.mac).octets(),
        slot,
        ..FpPort::default()
    }
}

fn ip_entry(ifindex: u32, slot: u32, ep: &EndpointRecord, port_flags_: u32) -> FpIp {
    FpIp {
        ifindex,
        flags: fdb_entry(ifindex, slot, port_flags_).flags,
        slot,
        mac: ep.mac.0,
        pad: [0; 2],
    }
}

fn fdb_entry(ifindex: u32, slot: u32, port_flags_: u32) -> FdbEntry {
    let mut flags = fdb_flags::ENDPOINT;
    if port_flags_ & port_flags::SLOW_IN != 0 {
        flags |= fdb_flags::SLOW;
    }
    FdbEntry {
        ifindex,
        flags,
        slot,
        ..FdbEntry::default()
    }
}
