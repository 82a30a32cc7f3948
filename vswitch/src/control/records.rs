//! Checks of records loaded from the state file.
//!
//! A state file that parses can still be wrong: edited by hand, written by
//! another version, or restored from a backup. Each record loaded is held to
//! the rules a request is held to, against the records accepted before it;
//! one that breaks them is reported by name and kept out of the datapath,
//! while the rest start. It is never dropped from the file: the user
//! decides (`network rm`, `endpoint rm`).

use std::collections::HashSet;

use super::ipam::check_unicast_mac;
use super::state::{EndpointRecord, NetworkRecord, PolicyRecord};
use super::{check_name, uplink, NetworkOptions};
use crate::ifname::IfName;
use crate::wire::MacAddr;

/// Checks a network against the networks accepted before it; returns its
/// parsed options.
/// Saved policies parse as a request's would, with ids unique.
fn check_policies(policies: &[PolicyRecord]) -> Result<(), String> {
    let mut ids = HashSet::new();
    for p in policies {
        crate::policy::parse_policy(&p.document, "")
            .map_err(|e| format!("policy '{}': {e}", p.id))?;
        if !ids.insert(p.id.as_str()) {
            return Err(format!("two policies with id '{}'", p.id));
        }
    }
    Ok(())
}

pub fn check_network(
    net: &NetworkRecord,
    accepted: &[&NetworkRecord],
) -> Result<NetworkOptions, String> {
    check_name("name", &net.name).map_err(|e| e.message)?;
    check_policies(&net.policies)?;
    if let Some(other) = accepted
        .iter()
        .find(|o| o.name == net.name || o.id == net.id)
    {
        return Err(format!(
            "same name or ID as network '{}' ({})",
            other.name, other.id
        ));
    }
    if let Some(other) = accepted.iter().find(|o| o.dp_id == net.dp_id) {
        return Err(format!(
            "same datapath id {} as network '{}'",
            net.dp_id, other.name
        ));
    }
    let options =
        NetworkOptions::for_driver(net.driver, &net.options).map_err(|e| e.to_string())?;
    if net.host_ifname.is_some() != net.host_port_id.is_some()
        || (options.interface.is_some() || net.driver.tunnel()) != net.uplink_port_id.is_some()
    {
        return Err("port ids do not match the host port and uplink it has".into());
    }
    if !net.driver.switched()
        && (net.subnet4.is_some() || net.subnet6.is_some() || net.host_ifname.is_some())
    {
        return Err(format!(
            "the {} driver has no subnet and no host port",
            net.driver
        ));
    }
    if net.driver.has_uplink() != options.interface.is_some() {
        return Err(format!(
            "a {} network {} an uplink interface",
            net.driver.name(),
            if net.driver.has_uplink() {
                "needs"
            } else {
                "has no"
            }
        ));
    }
    if net.driver.tunnel() != options.vsid.is_some() {
        return Err(format!(
            "a {} network {} a vsid",
            net.driver.name(),
            if net.driver.tunnel() {
                "needs"
            } else {
                "has no"
            }
        ));
    }
    if let Some(vsid) = options.vsid {
        if let Some(other) = accepted.iter().find(|o| o.parsed.vsid == Some(vsid)) {
            return Err(format!("vsid {vsid} is network '{}'s too", other.name));
        }
    }
    if let Some(s) = net.subnet4 {
        s.check_usable().map_err(|e| format!("subnet: {e}"))?;
    }
    if let Some(s) = net.subnet6 {
        s.check_usable().map_err(|e| format!("subnet: {e}"))?;
    }
    for other in accepted {
        let clash4 = matches!((net.subnet4, other.subnet4), (Some(a), Some(b)) if a.overlaps(&b));
        let clash6 = matches!((net.subnet6, other.subnet6), (Some(a), Some(b)) if a.overlaps(&b));
        if clash4 || clash6 {
            return Err(format!("subnet overlaps network '{}'", other.name));
        }
    }
    match (net.gateway4, net.subnet4) {
        (Some(gw), Some(s)) if !s.is_host(gw) => {
            return Err(format!("gateway {gw} is not a host address of {s}"))
        }
        (Some(gw), None) => return Err(format!("gateway {gw} without an IPv4 subnet")),
        _ => {}
    }
    match (net.gateway6, net.subnet6) {
        (Some(gw), Some(s)) if !s.is_host(gw) => {
            return Err(format!("gateway {gw} is not a host address of {s}"))
        }
        (Some(gw), None) => return Err(format!("gateway {gw} without an IPv6 subnet")),
        _ => {}
    }
    let min_mtu = if net.subnet6.is_some() { 1280 } else { 68 };
    let max_mtu = if options.interface.is_some() {
        uplink::MAX_MTU
    } else {
        crate::port::tap::MAX_MTU
    };
    if !(min_mtu..=max_mtu).contains(&net.mtu) {
        return Err(format!("mtu {} is outside {min_mtu}..={max_mtu}", net.mtu));
    }
    match (&net.host_ifname, net.host_mac) {
        (Some(ifname), Some(mac)) => {
            IfName::new(ifname).map_err(|e| format!("host interface '{ifname}': {e}"))?;
            check_unicast_mac(mac).map_err(|e| format!("host MAC: {e}"))?;
            if accepted.iter().any(|o| o.host_mac == Some(mac)) {
                return Err(format!("host MAC {mac} is another network's"));
            }
            if accepted
                .iter()
                .any(|o| o.host_ifname.as_deref() == Some(ifname))
            {
                return Err(format!("host interface {ifname} is another network's"));
            }
        }
        (None, None) => {}
        _ => return Err("a host port needs both an interface name and a MAC".into()),
    }
    if let Some(ifname) = &options.interface {
        for other in accepted {
            // Accepted records carry their options parsed already.
            let theirs = &other.parsed;
            if theirs.interface.as_ref() != Some(ifname) {
                continue;
            }
            if net.driver.owns_uplink() || other.driver.owns_uplink() || theirs.vlan == options.vlan
            {
                return Err(format!(
                    "uplink {ifname} is already network '{}'s (a transparent network needs its own; others need distinct VLANs)",
                    other.name
                ));
            }
        }
    }
    Ok(options)
}

/// Checks an endpoint of `net` against the endpoints accepted before it;
/// `host_macs` are the networks' host-port MACs.
pub fn check_endpoint(
    ep: &EndpointRecord,
    net: &NetworkRecord,
    accepted: &[&EndpointRecord],
    host_macs: &HashSet<MacAddr>,
) -> Result<(), String> {
    check_name("name", &ep.name).map_err(|e| e.message)?;
    check_policies(&ep.policies)?;
    if let Some(other) = accepted.iter().find(|o| o.name == ep.name || o.id == ep.id) {
        return Err(format!("same name or ID as endpoint '{}'", other.name));
    }
    if let Some(other) = accepted.iter().find(|o| o.port_id == ep.port_id) {
        return Err(format!(
            "same port id {} as endpoint '{}'",
            ep.port_id, other.name
        ));
    }
    if ep.netns.is_empty() != ep.handoff {
        return Err(if ep.handoff {
            "a handed-off endpoint records no namespace".into()
        } else {
            "no namespace".into()
        });
    }
    if ep.handoff && ep.backend != crate::api::Backend::Veth {
        return Err("a handed-off endpoint is a veth endpoint".into());
    }
    if !net.driver.switched() {
        return match (ep.ipv4, ep.ipv6) {
            (None, None) => Ok(()),
            _ => Err("an endpoint of a none network has no address".into()),
        };
    }
    IfName::new(&ep.ifname).map_err(|e| format!("interface '{}': {e}", ep.ifname))?;
    check_unicast_mac(ep.mac).map_err(|e| format!("MAC: {e}"))?;
    if host_macs.contains(&ep.mac) || accepted.iter().any(|o| o.mac == ep.mac) {
        return Err(format!("MAC {} is already in use on this switch", ep.mac));
    }
    let peers = accepted.iter().filter(|o| o.network_id == ep.network_id);
    if let Some(ip) = ep.ipv4 {
        match net.subnet4 {
            Some(s) if s.is_host(ip) && Some(ip) != net.gateway4 => {}
            _ => {
                return Err(format!(
                    "address {ip} is not a free host address of the network"
                ))
            }
        }
        if let Some(o) = peers.clone().find(|o| o.ipv4 == Some(ip)) {
            return Err(format!("address {ip} is endpoint '{}'s too", o.name));
        }
    }
    if let Some(ip) = ep.ipv6 {
        match net.subnet6 {
            Some(s) if s.is_host(ip) && Some(ip) != net.gateway6 => {}
            _ => {
                return Err(format!(
                    "address {ip} is not a free host address of the network"
                ))
            }
        }
        if let Some(o) = peers.clone().find(|o| o.ipv6 == Some(ip)) {
            return Err(format!("address {ip} is endpoint '{}'s too", o.name));
        }
    }
    Ok(())
}
