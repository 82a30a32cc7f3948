//! What `/metrics` shows: the counters `stats`, `port ls` and `policy ls`
//! show, and the sizes of the datapath's tables, gathered under the
//! controller's lock like any request and rendered in Prometheus' text
//! format ([`crate::metrics`]).
//!
//! Names follow Prometheus' conventions: `vswitch_` first, snake_case,
//! counters end in `_total`, bytes are `_bytes`. Label names:
//! `port`, `network`, `kind` (endpoint, host, uplink), `reason` (every drop
//! reason, zeros included, so a rate over a reason that never happened is
//! 0, not absent), `driver`, `protocol`, `policy`, `owner`, `owner_kind`.
//! Counters start from zero when the daemon starts and when a port is
//! created again (Prometheus' `rate` treats that as a reset).

use std::collections::HashMap;

use super::errors::internal;
use super::{ApiResult, Controller};
use crate::api;
use crate::metrics::Exposition;

impl Controller {
    /// The whole scrape. Fails only when the datapath thread does not
    /// answer.
    pub fn metrics_text(&self) -> ApiResult<String> {
        let mut out = Exposition::default();
        out.gauge("vswitch_up", "1 while vswitchd serves.")
            .sample(&[], 1);
        out.gauge(
            "vswitch_build_info",
            "The version of vswitchd, as a label; always 1.",
        )
        .sample(&[("version", env!("CARGO_PKG_VERSION"))], 1);
        self.port_metrics(&mut out)?;
        self.table_metrics(&mut out)?;
        self.acl_metrics(&mut out);
        Ok(out.render())
    }

    /// Per port: what `stats` shows, labelled with what `port ls` shows.
    fn port_metrics(&self, out: &mut Exposition) -> ApiResult<()> {
        let kinds: HashMap<String, api::PortKind> =
            self.ports().into_iter().map(|p| (p.name, p.kind)).collect();
        for s in self.stats(None)? {
            let kind = kinds
                .get(&s.port)
                .map(|k| k.to_string())
                .unwrap_or_default();
            let labels = [
                ("port", s.port.as_str()),
                ("network", s.network.as_str()),
                ("kind", kind.as_str()),
            ];
            let counters: [(&'static str, &'static str, u64); 9] = [
                (
                    "vswitch_port_rx_packets_total",
                    "Frames received from the port (a GSO super-frame counts once).",
                    s.rx_packets,
                ),
                (
                    "vswitch_port_rx_bytes_total",
                    "Bytes received from the port.",
                    s.rx_bytes,
                ),
                (
                    "vswitch_port_tx_packets_total",
                    "Frames sent to the port.",
                    s.tx_packets,
                ),
                (
                    "vswitch_port_tx_bytes_total",
                    "Bytes sent to the port.",
                    s.tx_bytes,
                ),
                (
                    "vswitch_port_mirrored_packets_total",
                    "Copies of mirror source ports' frames sent to the port (in tx too).",
                    s.mirrored_packets,
                ),
                (
                    "vswitch_port_mirrored_bytes_total",
                    "Bytes of the copies in vswitch_port_mirrored_packets_total.",
                    s.mirrored_bytes,
                ),
                (
                    "vswitch_port_flow_cache_hits_total",
                    "Frames whose ACL verdict came from the port's flow cache.",
                    s.flow_cache.hits,
                ),
                (
                    "vswitch_port_flow_cache_misses_total",
                    "Frames the port's ACL classifier had to decide.",
                    s.flow_cache.misses,
                ),
                (
                    "vswitch_port_flow_cache_evictions_total",
                    "Flows evicted from the port's full flow cache.",
                    s.flow_cache.evictions,
                ),
            ];
            for (name, help, value) in counters {
                out.counter(name, help).sample(&labels, value);
            }
            out.gauge(
                "vswitch_port_flow_cache_entries",
                "Flows in the port's flow cache.",
            )
            .sample(&labels, s.flow_cache.entries);
            let drops = out.counter(
                "vswitch_port_drops_total",
                "Frames dropped on the port, by reason (learn_refused and qos_exceeded count frames that went on).",
            );
            for (reason, n) in &s.drops {
                drops.sample(
                    &[labels[0], labels[1], labels[2], ("reason", reason.as_str())],
                    *n,
                );
            }
            if let Some(f) = &s.fast_path {
                let packets = out.counter(
                    "vswitch_port_fast_path_packets_total",
                    "veth endpoints: wire frames the kernel fast path forwarded from the port, delivered to it, or punted to vswitchd.",
                );
                for (path, n) in [
                    ("forwarded", f.forwarded_packets),
                    ("delivered", f.delivered_packets),
                    ("punted", f.punted_packets),
                ] {
                    packets.sample(&[labels[0], labels[1], labels[2], ("path", path)], n);
                }
                let bytes = out.counter(
                    "vswitch_port_fast_path_bytes_total",
                    "veth endpoints: bytes of the frames in vswitch_port_fast_path_packets_total.",
                );
                for (path, n) in [
                    ("forwarded", f.forwarded_bytes),
                    ("delivered", f.delivered_bytes),
                    ("punted", f.punted_bytes),
                ] {
                    bytes.sample(&[labels[0], labels[1], labels[2], ("path", path)], n);
                }
            }
        }
        Ok(())
    }

    /// Per network: learned MACs and NAT ports in use; connections tracked.
    fn table_metrics(&self, out: &mut Exposition) -> ApiResult<()> {
        let sizes = self.datapath.table_sizes().map_err(internal)?;
        let by_dp: HashMap<u32, (&str, &str)> = self
            .state
            .networks
            .iter()
            .filter_map(|n| {
                let rt = self.nets.get(&n.id)?;
                Some((rt.dp, (n.name.as_str(), n.driver.name())))
            })
            .collect();
        for (net, len) in &sizes.fdb {
            if let Some((name, driver)) = by_dp.get(net) {
                out.gauge(
                    "vswitch_fdb_entries",
                    "MAC addresses the network's forwarding database holds.",
                )
                .sample(&[("network", name), ("driver", driver)], *len as u64);
            }
        }
        for (net, in_use) in &sizes.nat_ports {
            if let Some((name, driver)) = by_dp.get(net) {
                let family = out.gauge(
                    "vswitch_nat_ports_in_use",
                    "Source ports (ICMP: echo identifiers) a nat network has handed to translated connections.",
                );
                for (protocol, n) in ["tcp", "udp", "icmp"].into_iter().zip(in_use) {
                    family.sample(
                        &[
                            ("network", name),
                            ("driver", driver),
                            ("protocol", protocol),
                        ],
                        *n as u64,
                    );
                }
            }
        }
        out.gauge(
            "vswitch_conntrack_entries",
            "Connections tracked, over all networks (see --conntrack-max).",
        )
        .sample(&[], sizes.conntrack as u64);
        Ok(())
    }

    /// Per ACL policy: the packets its rule matched, as `policy ls` counts
    /// them (a network's policy summed over its endpoints).
    fn acl_metrics(&self, out: &mut Exposition) {
        for view in self.policy_views(None) {
            let Some(hits) = view.hits else { continue };
            let (owner, owner_kind) = match (&view.endpoint, &view.network) {
                (Some(e), _) => (e.as_str(), "endpoint"),
                (None, Some(n)) => (n.as_str(), "network"),
                (None, None) => continue,
            };
            out.counter(
                "vswitch_acl_rule_hits_total",
                "Packets an ACL policy's rule matched.",
            )
            .sample(
                &[
                    ("policy", view.id.as_str()),
                    ("owner", owner),
                    ("owner_kind", owner_kind),
                ],
                hits,
            );
        }
    }
}
