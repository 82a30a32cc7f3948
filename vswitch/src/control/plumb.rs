//! Kernel plumbing for ports: namespaces, TAP devices, addresses, routes.
//!
//! Endpoint TAPs are created inside the endpoint's namespace and made
//! persistent, so the endpoint keeps its interface, addresses and routes
//! while the daemon is stopped or restarting; the daemon re-attaches to them
//! by name.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::netns::netlink::{LinkChange, Netlink, NetlinkError};
use crate::netns::{ensure_loopback_up, Netns, NetnsError};
use crate::port::tap::{Tap, TapError};
use crate::wire::MacAddr;

/// Whether a port's TAP is being made for the first time (it must not
/// exist) or taken back after a restart (it may exist, and is reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapOrigin {
    Fresh,
    Existing,
}

/// How a TAP is configured on its side of the wire.
pub struct TapConfig {
    pub ifname: String,
    pub mac: MacAddr,
    pub mtu: u32,
    pub ipv4: Option<(Ipv4Addr, u8)>,
    pub ipv6: Option<(Ipv6Addr, u8)>,
    /// Default routes to add (endpoints only).
    pub gateway4: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
    pub offload: bool,
    /// A veth endpoint's vNIC handed to a container runtime: made in the
    /// daemon's namespace with MAC and MTU only, and never touched again.
    pub handoff: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PlumbError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("{0} exists but is not a TAP device")]
    NotTap(String),
    #[error("{0} exists but is not a veth device")]
    NotVeth(String),
    #[error("{0} exists but is not a VXLAN device")]
    NotVxlan(String),
    #[error("datapath refused the port: {0}")]
    Datapath(String),
    #[error("write {0}: {1}")]
    Sysctl(String, std::io::Error),
}

pub fn resolve_netns(spec: &str) -> Result<Netns, NetnsError> {
    Netns::resolve(spec)
}

/// The inode of the namespace `spec` names now, if it names one.
pub fn netns_inode(spec: &str) -> Option<u64> {
    Netns::resolve(spec).and_then(|n| n.inode()).ok()
}

/// Whether two namespace specs name the same namespace.
pub fn same_netns(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    matches!((netns_inode(a), netns_inode(b)), (Some(x), Some(y)) if x == y)
}

/// Makes (or takes back) an endpoint's TAP inside its namespace.
pub fn endpoint_tap(ns: &Netns, cfg: &TapConfig, origin: TapOrigin) -> Result<Tap, PlumbError> {
    ns.run(|| {
        ensure_loopback_up()?;
        make_tap(cfg, origin)
    })?
}

/// Makes (or takes back) a network's host TAP in the daemon's namespace.
/// With `forward`, the host routes what arrives on it (IPv4 and IPv6
/// forwarding for this interface only).
pub fn host_tap(cfg: &TapConfig, origin: TapOrigin, forward: bool) -> Result<Tap, PlumbError> {
    let tap = make_tap(cfg, origin)?;
    if forward {
        for family in ["ipv4", "ipv6"] {
            let knob = format!("/proc/sys/net/{family}/conf/{}/forwarding", cfg.ifname);
            std::fs::write(&knob, "1").map_err(|e| PlumbError::Sysctl(knob, e))?;
        }
    }
    Ok(tap)
}

/// Runs in the namespace the TAP lives in. The TAP is made persistent only
/// once fully configured: if a step fails, dropping it removes the device.
fn make_tap(cfg: &TapConfig, origin: TapOrigin) -> Result<Tap, PlumbError> {
    let mut nl = Netlink::open()?;
    let tap = match origin {
        TapOrigin::Fresh => Tap::create(&cfg.ifname, cfg.offload)?,
        TapOrigin::Existing => match nl.link_info(&cfg.ifname)? {
            Some(info) if info.kind.as_deref() != Some("tun") => {
                return Err(PlumbError::NotTap(cfg.ifname.clone()))
            }
            _ => Tap::open(&cfg.ifname, cfg.offload)?,
        },
    };
    let index = nl
        .link_index(&cfg.ifname)?
        .ok_or_else(|| NetlinkError::NoSuchLink(cfg.ifname.clone()))?;
    configure_vnic(&mut nl, index, cfg)?;
    tap.set_persist(true)?;
    Ok(tap)
}

/// Configures a vNIC in its namespace (the calling thread's) as an endpoint
/// sees it: MTU, MAC, an EUI-64 link-local address, up, its addresses and
/// default routes.
fn configure_vnic(nl: &mut Netlink, index: u32, cfg: &TapConfig) -> Result<(), PlumbError> {
    // Only what differs: a vNIC taken back after a restart is up, and a
    // running veth may refuse a MAC change even to the same address.
    let now = nl.link_info_by_index(index)?;
    let change = LinkChange {
        mtu: (now.as_ref().map(|l| l.mtu) != Some(cfg.mtu)).then_some(cfg.mtu),
        mac: (now.as_ref().map(|l| l.mac) != Some(cfg.mac.0)).then_some(cfg.mac.0),
        ..LinkChange::default()
    };
    if change != LinkChange::default() {
        nl.link_set(index, &change)?;
    }
    if !now.as_ref().is_some_and(|l| l.up) {
        eui64_link_local(&cfg.ifname)?;
        nl.link_set(
            index,
            &LinkChange {
                up: Some(true),
                ..LinkChange::default()
            },
        )?;
    }
    if let Some((ip, prefix)) = cfg.ipv4 {
        nl.addr_add(index, IpAddr::V4(ip), prefix)?;
        if let Some(gw) = cfg.gateway4 {
            nl.route_add_default(index, IpAddr::V4(gw))?;
        }
    }
    if let Some((ip, prefix)) = cfg.ipv6 {
        nl.addr_add(index, IpAddr::V6(ip), prefix)?;
        if let Some(gw) = cfg.gateway6 {
            nl.route_add_default(index, IpAddr::V6(gw))?;
        }
    }
    Ok(())
}

/// Makes the kernel derive the interface's link-local address from its MAC
/// (EUI-64), whatever the namespace's default (`stable_privacy` in some
/// container runtimes): port security knows that address without asking.
/// Must run before the link goes up, in the interface's namespace (the
/// calling thread's: `/proc/sys/net` follows it). Without IPv6 in the
/// namespace there is no knob and nothing to do.
fn eui64_link_local(ifname: &str) -> Result<(), PlumbError> {
    let knob = format!("/proc/sys/net/ipv6/conf/{ifname}/addr_gen_mode");
    match std::fs::read_to_string(&knob) {
        Ok(mode) if mode.trim() == "0" => Ok(()),
        Ok(_) => std::fs::write(&knob, "0").map_err(|e| PlumbError::Sysctl(knob, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PlumbError::Sysctl(knob, e)),
    }
}

/// A veth endpoint's devices in the daemon's namespace: the host end of the
/// pair, a switch port the fast path runs on, and the punt TAP through which
/// the slow path sees what the kernel does not forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethNames {
    pub host: String,
    pub punt: String,
    /// The endpoint's end while it is in the daemon's namespace, when the
    /// vNIC is handed off (a container runtime renames it as it moves it).
    pub vnic: String,
}

impl VethNames {
    /// From the endpoint's id: unique, and stable across restarts.
    pub fn of(endpoint_id: &str) -> VethNames {
        let tag: String = endpoint_id
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(8)
            .collect();
        VethNames {
            host: format!("vse{tag}"),
            punt: format!("vsp{tag}"),
            vnic: format!("vsc{tag}"),
        }
    }
}

/// A veth endpoint's devices, made or taken back.
pub struct VethPort {
    pub host_index: u32,
    pub punt_index: u32,
    pub punt: Tap,
}

/// Makes (or takes back) a veth endpoint: the pair, its endpoint end
/// configured inside `ns` as a TAP endpoint's vNIC is, its host end and its
/// punt TAP up in the daemon's namespace (with no addresses of their own:
/// IPv6 off, so the host never speaks on them). A fresh one that fails
/// part-way is deleted.
pub fn endpoint_veth(
    ns: &Netns,
    cfg: &TapConfig,
    names: &VethNames,
    origin: TapOrigin,
) -> Result<VethPort, PlumbError> {
    let made = make_veth(ns, cfg, names, origin);
    if made.is_err() && origin == TapOrigin::Fresh {
        delete_veth(names);
    }
    made
}

fn make_veth(
    ns: &Netns,
    cfg: &TapConfig,
    names: &VethNames,
    origin: TapOrigin,
) -> Result<VethPort, PlumbError> {
    let mut nl = Netlink::open()?;
    if cfg.handoff && origin == TapOrigin::Existing && nl.link_index(&names.host)?.is_none() {
        // The pair goes whole: its vNIC went with the runtime's sandbox.
        return Err(PlumbError::Netlink(NetlinkError::NoSuchLink(
            names.host.clone(),
        )));
    }
    if origin == TapOrigin::Fresh || nl.link_index(&names.host)?.is_none() {
        let target = std::fs::File::open(ns.path()).map_err(|source| {
            PlumbError::Netns(NetnsError::Sys {
                call: "open",
                path: ns.path().to_owned(),
                source,
            })
        })?;
        // The endpoint's end is made inside its namespace, under its own
        // name: a refusal (the name is taken there) leaves no half pair.
        nl.veth_create_in(
            &names.host,
            &cfg.ifname,
            std::os::fd::AsRawFd::as_raw_fd(&target),
        )?;
    }
    match nl.link_info(&names.host)? {
        Some(info) if info.kind.as_deref() == Some("veth") => {}
        _ => return Err(PlumbError::NotVeth(names.host.clone())),
    }
    if cfg.handoff {
        // Wherever the runtime has moved it since, it is the runtime's to
        // configure: only a fresh one gets its MAC and MTU, and stays down.
        if origin == TapOrigin::Fresh {
            let index = nl
                .link_index(&cfg.ifname)?
                .ok_or_else(|| NetlinkError::NoSuchLink(cfg.ifname.clone()))?;
            nl.link_set(
                index,
                &LinkChange {
                    mtu: Some(cfg.mtu),
                    mac: Some(cfg.mac.0),
                    ..LinkChange::default()
                },
            )?;
        }
    } else {
        configure_in(ns, cfg)?;
    }
    let host_index = switch_side_up(&mut nl, &names.host, Some(cfg.mtu))?;
    let (punt, punt_index) = punt_tap(&mut nl, &names.punt, cfg.mtu)?;
    Ok(VethPort {
        host_index,
        punt_index,
        punt,
    })
}

/// Configures an endpoint's vNIC inside its namespace.
fn configure_in(ns: &Netns, cfg: &TapConfig) -> Result<(), PlumbError> {
    ns.run(|| -> Result<(), PlumbError> {
        ensure_loopback_up()?;
        let mut nl = Netlink::open()?;
        let index = nl
            .link_index(&cfg.ifname)?
            .ok_or_else(|| NetlinkError::NoSuchLink(cfg.ifname.clone()))?;
        configure_vnic(&mut nl, index, cfg)
    })?
}

/// Makes (or takes back) an uplink's punt TAP in the daemon's namespace,
/// with the uplink's MTU; see [`punt_tap`].
pub fn uplink_punt_tap(name: &str, mtu: u32) -> Result<Tap, PlumbError> {
    let mut nl = Netlink::open()?;
    punt_tap(&mut nl, name, mtu).map(|(tap, _)| tap)
}

/// Makes (or takes back) an overlay network's tunnel TAP in the daemon's
/// namespace; see [`punt_tap`]. Returns it with its ifindex.
pub fn tunnel_tap(name: &str, mtu: u32) -> Result<(Tap, u32), PlumbError> {
    let mut nl = Netlink::open()?;
    punt_tap(&mut nl, name, mtu)
}

/// Makes (or takes back) the VXLAN device of UDP port `port` in the
/// daemon's namespace: external mode, up, IPv6 off. Returns its ifindex.
pub fn vxlan_device(name: &str, port: u16) -> Result<u32, PlumbError> {
    let mut nl = Netlink::open()?;
    match nl.link_info(name)? {
        Some(info) if info.kind.as_deref() == Some("vxlan") => {}
        Some(_) => return Err(PlumbError::NotVxlan(name.to_owned())),
        None => nl.vxlan_create(name, port)?,
    }
    switch_side_up(&mut nl, name, None)
}

/// Deletes a device of the switch's own by name if it is of `kind` ("tun",
/// "vxlan"); anything else of that name is left alone. Failures are logged.
pub fn delete_own(name: &str, kind: &str) {
    let result = Netlink::open()
        .map_err(PlumbError::from)
        .and_then(|mut nl| delete_kind(&mut nl, name, kind));
    if let Err(e) = result {
        tracing::warn!(ifname = name, error = %e, "could not delete device");
    }
}

/// A punt TAP (an endpoint's or an uplink's), made or taken back: offloads
/// on (super-frames pass whole), IPv6 off, up, persistent. A fresh one that
/// fails part-way goes with the dropped descriptor. Returns it with its
/// ifindex.
fn punt_tap(nl: &mut Netlink, name: &str, mtu: u32) -> Result<(Tap, u32), PlumbError> {
    let tap = match nl.link_info(name)? {
        Some(info) if info.kind.as_deref() == Some("tun") => Tap::open(name, true)?,
        Some(_) => return Err(PlumbError::NotTap(name.to_owned())),
        None => Tap::create(name, true)?,
    };
    let index = switch_side_up(nl, name, Some(mtu))?;
    tap.set_persist(true)?;
    Ok((tap, index))
}

/// Brings up a device of the switch's own side (a veth's host end, a punt
/// TAP, a VXLAN device) with IPv6 off, and `mtu` if given; returns its
/// ifindex.
fn switch_side_up(nl: &mut Netlink, name: &str, mtu: Option<u32>) -> Result<u32, PlumbError> {
    let index = nl
        .link_index(name)?
        .ok_or_else(|| NetlinkError::NoSuchLink(name.to_owned()))?;
    silence_ipv6(name)?;
    nl.link_set(
        index,
        &LinkChange {
            mtu,
            up: Some(true),
            ..LinkChange::default()
        },
    )?;
    Ok(index)
}

/// Turns IPv6 off on a device of the switch's own (no link-local address,
/// no router solicitations or MLD reports sent into an endpoint).
fn silence_ipv6(ifname: &str) -> Result<(), PlumbError> {
    let knob = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    match std::fs::write(&knob, "1") {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PlumbError::Sysctl(knob, e)),
    }
}

/// Deletes a veth endpoint's devices (the pair goes with its host end)
/// that exist. Failures are logged: the caller is already undoing.
pub fn delete_veth(names: &VethNames) {
    let result = (|| -> Result<(), PlumbError> {
        let mut nl = Netlink::open()?;
        delete_kind(&mut nl, &names.host, "veth")?;
        delete_kind(&mut nl, &names.punt, "tun")
    })();
    if let Err(e) = result {
        tracing::warn!(host = %names.host, error = %e, "could not delete veth endpoint devices");
    }
}

/// Sets up an endpoint of the `none` driver: loopback only.
pub fn loopback_only(ns: &Netns) -> Result<(), PlumbError> {
    Ok(ns.run(ensure_loopback_up)??)
}

/// Deletes a TAP by name in the current namespace; anything else of that
/// name is left alone. Failures are logged: the caller is already undoing.
fn delete_tap(ifname: &str) -> Result<(), PlumbError> {
    delete_kind(&mut Netlink::open()?, ifname, "tun")
}

/// Deletes link `name` of the calling thread's namespace if it is of
/// `kind`; anything else of that name, or nothing, is left alone.
fn delete_kind(nl: &mut Netlink, name: &str, kind: &str) -> Result<(), PlumbError> {
    if let Some(info) = nl.link_info(name)? {
        if info.kind.as_deref() == Some(kind) {
            nl.link_del(info.index)?;
        }
    }
    Ok(())
}

pub fn delete_endpoint_tap(ns: &Netns, ifname: &str) {
    let result = ns.run(|| delete_tap(ifname)).map_err(PlumbError::from);
    if let Err(e) = result.and_then(|r| r) {
        tracing::warn!(netns = %ns, ifname, error = %e, "could not delete TAP");
    }
}

pub fn delete_host_tap(ifname: &str) {
    if let Err(e) = delete_tap(ifname) {
        tracing::warn!(ifname, error = %e, "could not delete host TAP");
    }
}
