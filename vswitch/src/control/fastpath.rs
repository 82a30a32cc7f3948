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

use super::errors::internal;
use super::plumb::{VethNames, VethPort};
use super::state::{EndpointRecord, NetworkRecord};
use super::{ApiResult, Controller};
use crate::api::{self, Driver};
use crate::datapath::{DropReason, NetId};
use crate::ebpf::fastpath::{
    fdb_flags, net_flags, port_flags, FastPath, FdbEntry, FpNet, FpPort, Origin, Program,
};
use crate::ebpf::EbpfError;
use crate::ifname::IfName;
use crate::pipeline::forward::link_local_of;
use crate::pipeline::Layers;

/// A veth endpoint's kernel objects, as the controller tracks them.
#[derive(Debug, Clone)]
pub(super) struct VethHandle {
    pub names: VethNames,
    pub host_index: u32,
    pub punt_index: u32,
    pub net: NetId,
    pub mac: [u8; 6],
}

fn fast_error(e: EbpfError) -> api::ApiError {
    internal(format!("kernel fast path: {}", crate::sys::error_chain(&e)))
}

fn ifname(name: &str) -> ApiResult<IfName> {
    IfName::new(name).map_err(|e| internal(format!("device name {name}: {e}")))
}

/// What the kernel must leave to the slow path for this port.
fn flags_of(ep: &EndpointRecord, layers: &Layers) -> u32 {
    let mut flags = 0;
    if layers.policed() || layers.qos.is_some() {
        flags |= port_flags::SLOW | port_flags::SLOW_IN;
    }
    if ep.allow_spoofing {
        flags |= port_flags::SPOOF;
    }
    flags
}

fn net_entry(net: &NetworkRecord) -> FpNet {
    let mut flags = 0;
    if net.driver == Driver::L2Tunnel {
        flags |= net_flags::SLOW;
    }
    FpNet {
        flags,
        ..FpNet::default()
    }
}

impl Controller {
    /// The fast path, opened (or adopted) on first use.
    pub(super) fn fast_path(&mut self) -> ApiResult<&mut FastPath> {
        if self.fast.is_none() {
            let dir = FastPath::pin_dir_for(self.file.dir());
            self.fast = Some(FastPath::open(&dir).map_err(fast_error)?);
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
        let handle = VethHandle {
            names: names.clone(),
            host_index: veth.host_index,
            punt_index: veth.punt_index,
            net: dp_net,
            mac: ep.mac.0,
        };
        let flags = flags_of(ep, layers);
        let result = (|| -> ApiResult<()> {
            let host = ifname(&names.host)?;
            let punt = ifname(&names.punt)?;
            let fp = self.fast_path()?;
            let port = ep.port_id;
            let mut entry = FpPort {
                port_id: port,
                net: dp_net,
                flags,
                peer: veth.punt_index,
                mac: ep.mac.0,
                ll6: link_local_of(ep.mac).octets(),
                ..FpPort::default()
            };
            if let Some(ip) = ep.ipv4 {
                entry.ipv4 = ip.octets();
            }
            if let Some(ip) = ep.ipv6 {
                entry.ipv6 = ip.octets();
            }
            // Entries first, programs second: a program never runs on a
            // device the maps do not know.
            fp.set_net(dp_net, &net_entry(net)).map_err(fast_error)?;
            fp.set_port(veth.host_index, &entry).map_err(fast_error)?;
            fp.set_port(
                veth.punt_index,
                &FpPort {
                    port_id: port,
                    net: dp_net,
                    flags: port_flags::INJECT,
                    peer: veth.host_index,
                    ..FpPort::default()
                },
            )
            .map_err(fast_error)?;
            fp.set_fdb(dp_net, ep.mac.0, fdb_entry(veth.host_index, flags))
                .map_err(fast_error)?;
            let kept_port = fp.attach(&host, Program::Port).map_err(fast_error)?;
            let kept_inject = fp.attach(&punt, Program::Inject).map_err(fast_error)?;
            if kept_port && kept_inject {
                tracing::debug!(endpoint = %ep.name, "fast path attachments adopted");
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
        let steps = [
            fp.remove_fdb(h.net, h.mac),
            fp.remove_port(h.host_index),
            fp.remove_port(h.punt_index),
        ];
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
        let flags = flags_of(ep, layers);
        let fp = self.fast_path()?;
        let mut entry = FpPort {
            port_id: 0,
            net: h.net,
            flags,
            peer: h.punt_index,
            mac: h.mac,
            ll6: link_local_of(ep.mac).octets(),
            ..FpPort::default()
        };
        if let Some(port) = fp.port(h.host_index) {
            entry = FpPort { flags, ..port };
        }
        fp.set_port(h.host_index, &entry).map_err(fast_error)?;
        fp.set_fdb(h.net, h.mac, fdb_entry(h.host_index, flags))
            .map_err(fast_error)
    }

    /// After a restart: entries for devices no endpoint claimed are a dead
    /// instance's, and go.
    pub(super) fn fast_sweep(&mut self) {
        let live: Vec<u32> = self
            .endpoints
            .values()
            .filter_map(|rt| rt.port.as_ref()?.veth.as_ref())
            .flat_map(|h| [h.host_index, h.punt_index])
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
        let fp = self.fast.as_ref()?;
        let c = fp.counters(h.host_index);
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
        }
    }
}

fn fdb_entry(ifindex: u32, port_flags_: u32) -> FdbEntry {
    let mut flags = fdb_flags::ENDPOINT;
    if port_flags_ & port_flags::SLOW_IN != 0 {
        flags |= fdb_flags::SLOW;
    }
    FdbEntry { ifindex, flags }
}
