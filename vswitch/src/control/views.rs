//! Read-only views of the state and the datapath: networks, endpoints,
//! ports, their counters and a network's FDB, as the API shows them.

use std::collections::HashMap;
use std::sync::Arc;

use super::errors::internal;
use super::state::{EndpointRecord, NetworkRecord};
use super::{ApiResult, Controller, DEFAULT_MTU};
use crate::api::{self, ApiError, EndpointState, ErrorKind};
use crate::datapath::{DropReason, PortCounters, PortId};

impl Controller {
    pub(super) fn network_view(&self, n: &NetworkRecord) -> api::Network {
        let mut subnets = Vec::new();
        if let Some(s) = n.subnet4 {
            subnets.push(api::Subnet {
                address_prefix: s.to_string(),
                gateway_address: n.gateway4.map(|g| g.to_string()),
            });
        }
        if let Some(s) = n.subnet6 {
            subnets.push(api::Subnet {
                address_prefix: s.to_string(),
                gateway_address: n.gateway6.map(|g| g.to_string()),
            });
        }
        api::Network {
            id: n.id.clone(),
            name: n.name.clone(),
            driver: n.driver.name().into(),
            subnets,
            mtu: n.mtu,
            mac_pool: api::MacPool {
                start_mac_address: n.mac_pool.start.to_string(),
                end_mac_address: n.mac_pool.end.to_string(),
            },
            options: n.options.clone(),
            host_interface: n.host_ifname.clone(),
            uplink_interface: n.parsed.interface.clone(),
            vlan_id: (n.parsed.vlan != 0).then_some(n.parsed.vlan),
            vsid: n.parsed.vsid,
            provider_address: self
                .nets
                .get(&n.id)
                .and_then(|rt| rt.overlay.as_ref())
                .map(|t| t.pa.to_string()),
            distributed_router_mac_address: self
                .nets
                .get(&n.id)
                .and_then(|rt| rt.overlay.as_ref())
                .map(|t| super::overlay::router_mac(t.pa).to_string()),
            state: match self.network_fault(n) {
                None => api::NetworkState::Up,
                Some(reason) => api::NetworkState::Degraded { reason },
            },
            endpoints: self
                .state
                .endpoints_of(&n.id)
                .map(|e| e.name.clone())
                .collect(),
            labels: n.labels.clone(),
        }
    }

    pub(super) fn endpoint_view(&self, e: &EndpointRecord) -> api::Endpoint {
        let net = self.state.network_by_id(&e.network_id);
        let state = match self.endpoints.get(&e.id) {
            Some(rt) => rt.current_state(e),
            None => EndpointState::Detached {
                reason: "not started".into(),
            },
        };
        api::Endpoint {
            backend: e.backend,
            id: e.id.clone(),
            name: e.name.clone(),
            network: net.map(|n| n.name.clone()).unwrap_or_default(),
            netns: e.netns.clone(),
            ifname: e.ifname.clone(),
            mac_address: e.mac.to_string(),
            ip: e.ipv4.map(|ip| ip.to_string()),
            prefix_length: e.ipv4.and(net.and_then(|n| n.subnet4)).map(|s| s.prefix()),
            ipv6: e.ipv6.map(|ip| ip.to_string()),
            ipv6_prefix_length: e.ipv6.and(net.and_then(|n| n.subnet6)).map(|s| s.prefix()),
            gateway_address: net.and_then(|n| n.gateway4).map(|g| g.to_string()),
            mtu: net.map(|n| n.mtu).unwrap_or(DEFAULT_MTU),
            allow_spoofing: e.allow_spoofing,
            dhcp_guard: e.dhcp_guard,
            router_guard: e.router_guard,
            default_acl_action: if e.default_block { "Block" } else { "Allow" }.to_owned(),
            policy_count: e.policies.len() + net.map_or(0, |n| n.policies.len()),
            mirror: e.mirror,
            state,
            handoff: e.handoff,
            labels: e.labels.clone(),
        }
    }

    // ---- ports, counters, fdb ----

    /// Every port: (view, counters).
    pub(super) fn port_table(&self) -> Vec<(api::Port, Option<&Arc<PortCounters>>)> {
        let mut out = Vec::new();
        for n in &self.state.networks {
            let rt = self.nets.get(&n.id);
            if let (Some(ifname), Some(mac)) = (&n.host_ifname, n.host_mac) {
                let host = rt.and_then(|rt| rt.host.as_ref());
                out.push((
                    api::Port {
                        name: host_port_name(&n.name),
                        id: n.host_port_id.unwrap_or_default(),
                        kind: api::PortKind::Host,
                        network: n.name.clone(),
                        interface: ifname.clone(),
                        netns: None,
                        mac_address: mac.to_string(),
                        backend: "tap".into(),
                        xdp_mode: None,
                        offload: n.parsed.offload,
                        state: match host {
                            Some(_) => EndpointState::Attached,
                            None => EndpointState::Detached {
                                reason: "network failed to start".into(),
                            },
                        },
                    },
                    host.map(|h| &h.counters),
                ));
            }
            if let Some(ifname) = &n.parsed.interface {
                let port = rt.and_then(|rt| rt.uplink.as_ref());
                let up = self.uplinks.get(ifname);
                out.push((
                    api::Port {
                        name: uplink_port_name(&n.name),
                        id: n.uplink_port_id.unwrap_or_default(),
                        kind: api::PortKind::Uplink,
                        network: n.name.clone(),
                        interface: ifname.clone(),
                        netns: None,
                        mac_address: up.map(|u| u.mac.to_string()).unwrap_or_default(),
                        backend: up
                            .map(|u| u.io)
                            .or(n.parsed.uplink_io)
                            .map_or("afxdp", |io| io.name())
                            .into(),
                        xdp_mode: up.and_then(|u| u.hook().xdp_mode()).map(|m| m.to_string()),
                        offload: true,
                        state: match self.network_fault(n) {
                            None => EndpointState::Attached,
                            Some(reason) => EndpointState::Detached { reason },
                        },
                    },
                    port.map(|p| &p.counters),
                ));
            }
            if let (Some(t), Some(port)) = (
                rt.and_then(|rt| rt.overlay.as_ref()),
                rt.and_then(|rt| rt.tunnel.as_ref()),
            ) {
                out.push((
                    api::Port {
                        name: tunnel_port_name(&n.name),
                        id: port.id,
                        kind: api::PortKind::Tunnel,
                        network: n.name.clone(),
                        interface: t.tap.clone(),
                        netns: None,
                        mac_address: String::new(),
                        backend: format!("vxlan vni {} pa {} udp {}", t.vni, t.pa, t.port),
                        xdp_mode: None,
                        offload: true,
                        state: match self.network_fault(n) {
                            None => EndpointState::Attached,
                            Some(reason) => EndpointState::Detached { reason },
                        },
                    },
                    Some(&port.counters),
                ));
            }
            for e in self.state.endpoints_of(&n.id) {
                if !n.driver.switched() {
                    continue;
                }
                let rt = self.endpoints.get(&e.id);
                out.push((
                    api::Port {
                        name: e.name.clone(),
                        id: e.port_id,
                        kind: api::PortKind::Endpoint,
                        network: n.name.clone(),
                        interface: e.ifname.clone(),
                        netns: Some(e.netns.clone()),
                        mac_address: e.mac.to_string(),
                        backend: e.backend.name().into(),
                        xdp_mode: None,
                        offload: n.parsed.offload || e.backend == api::Backend::Veth,
                        state: self.endpoint_view(e).state,
                    },
                    rt.and_then(|rt| rt.port.as_ref()).map(|p| &p.counters),
                ));
            }
        }
        out
    }

    pub(super) fn ports(&self) -> Vec<api::Port> {
        self.port_table().into_iter().map(|(p, _)| p).collect()
    }

    pub(super) fn stats(&self, port: Option<&str>) -> ApiResult<Vec<api::PortStats>> {
        let table = self.port_table();
        if let Some(name) = port {
            if !table.iter().any(|(p, _)| p.name == name) {
                return Err(ApiError::new(
                    ErrorKind::NotFound,
                    Some("port"),
                    format!("no port named '{name}' (see vswitchctl port ls)"),
                ));
            }
        }
        // Flow caches live in the datapath thread: one call for all.
        let caches: HashMap<PortId, api::FlowCacheStats> = self
            .datapath
            .flow_stats()
            .map_err(internal)?
            .into_iter()
            .map(|(id, s, len)| {
                let stats = api::FlowCacheStats {
                    hits: s.hits,
                    misses: s.misses,
                    entries: len as u64,
                    evictions: s.evictions,
                };
                (id, stats)
            })
            .collect();
        Ok(table
            .into_iter()
            .filter(|(p, _)| port.is_none_or(|name| p.name == name))
            .map(|(p, counters)| {
                let flow_cache = caches.get(&p.id).cloned().unwrap_or_default();
                let c = counters.map(|c| c.as_ref());
                let get = |f: fn(&PortCounters) -> u64| c.map(f).unwrap_or(0);
                let fast_path = match p.kind {
                    api::PortKind::Endpoint => self.veth_of(p.id).and_then(|h| self.fast_stats(h)),
                    api::PortKind::Tunnel => {
                        crate::sys::if_index(&p.interface).and_then(|i| self.fast_stats_of(i))
                    }
                    _ => None,
                };
                let fp = fast_path.clone().unwrap_or_default();
                api::PortStats {
                    port: p.name,
                    network: p.network,
                    rx_packets: get(|c| PortCounters::get(&c.rx_packets)) + fp.forwarded_packets,
                    rx_bytes: get(|c| PortCounters::get(&c.rx_bytes)) + fp.forwarded_bytes,
                    tx_packets: get(|c| PortCounters::get(&c.tx_packets)) + fp.delivered_packets,
                    tx_bytes: get(|c| PortCounters::get(&c.tx_bytes)) + fp.delivered_bytes,
                    fast_path,
                    rx_partial_checksums: get(|c| PortCounters::get(&c.rx_partial_checksums)),
                    mirrored_packets: get(|c| PortCounters::get(&c.mirrored_packets)),
                    mirrored_bytes: get(|c| PortCounters::get(&c.mirrored_bytes)),
                    drops: DropReason::ALL
                        .iter()
                        .map(|&r| (r.name().to_owned(), c.map(|c| c.drops(r)).unwrap_or(0)))
                        .collect(),
                    flow_cache,
                }
            })
            .collect())
    }

    pub(super) fn fdb(&self, network: &str) -> ApiResult<Vec<api::FdbEntry>> {
        let net = self.network(network)?;
        let Some(rt) = self.nets.get(&net.id) else {
            return Ok(Vec::new());
        };
        let mut names: HashMap<PortId, String> = HashMap::new();
        if let Some(h) = &rt.host {
            names.insert(h.id, host_port_name(&net.name));
        }
        for e in self.state.endpoints_of(&net.id) {
            if let Some(p) = self.endpoints.get(&e.id).and_then(|rt| rt.port.as_ref()) {
                names.insert(p.id, e.name.clone());
            }
        }
        let mut entries: Vec<api::FdbEntry> = self
            .datapath
            .fdb(rt.dp)
            .map_err(internal)?
            .into_iter()
            .map(|(mac, port, age)| api::FdbEntry {
                mac_address: mac.to_string(),
                port: names
                    .get(&port)
                    .cloned()
                    .unwrap_or_else(|| format!("#{port}")),
                age_seconds: age.as_secs(),
            })
            .collect();
        entries.sort_by(|a, b| a.mac_address.cmp(&b.mac_address));
        Ok(entries)
    }
}

/// The name `vswitchctl` shows for an overlay network's tunnel port.
pub fn tunnel_port_name(network: &str) -> String {
    format!("tunnel:{network}")
}

/// The name `vswitchctl` shows for a network's uplink port.
pub fn uplink_port_name(network: &str) -> String {
    format!("uplink:{network}")
}

/// The name `vswitchctl` shows for a network's host port.
pub fn host_port_name(network: &str) -> String {
    format!("host:{network}")
}
