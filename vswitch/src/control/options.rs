//! Driver options (`-o key=value`), parsed and checked once at creation.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::api::{ApiError, ErrorKind};
use crate::fdb::FdbConfig;
use crate::ifname::IfName;

use super::errors::invalid_ifname;
use super::uplink::UplinkIo;

/// Every option a network understands, with its meaning, for error messages.
pub const KNOWN: &[(&str, &str)] = &[
    (
        "fdb_aging",
        "seconds a learned MAC is kept without traffic (1..=86400, default 300)",
    ),
    (
        "fdb_max",
        "learned MACs kept per network (16..=1048576, default 8192)",
    ),
    (
        "fdb_max_per_port",
        "learned MACs one port may teach the network (1..=1048576, default 1024)",
    ),
    (
        "offload",
        "GSO/checksum offload on the network's TAPs (on|off, default on)",
    ),
    (
        "interface",
        "the uplink interface of a transparent, l2bridge or l2tunnel network; of an overlay network, the interface whose IPv4 address is the provider address",
    ),
    (
        "vlanid",
        "802.1Q VLAN of the network on its uplink (1..=4094)",
    ),
    (
        "uplink_io",
        "afxdp|tc: how the uplink hands frames to the switch (default: tc for a veth uplink, afxdp otherwise); networks sharing an uplink use one",
    ),
    (
        "vsid",
        "overlay: the virtual subnet id, carried as the VXLAN VNI (1..=16777215; required)",
    ),
    (
        "vxlanport",
        "overlay: the VXLAN UDP port (1..=65535, default 4789; HNS's VxlanPort)",
    ),
    (
        "nat_ports",
        "LO-HI: the source ports a nat network translates to (default: above the host's ephemeral range)",
    ),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkOptions {
    pub fdb: FdbConfig,
    /// Negotiate TSO/checksum offload with the kernel on TAP ports, so TCP
    /// crosses the switch in 64 KiB super-frames.
    pub offload: bool,
    /// The uplink interface (`interface`).
    pub interface: Option<String>,
    /// The VLAN on the uplink; 0 for untagged.
    pub vlan: u16,
    /// A nat network's source ports (`nat_ports=LO-HI`).
    pub nat_ports: Option<(u16, u16)>,
    /// The uplink's I/O mode, when the network chooses one (`uplink_io`);
    /// otherwise the one for the uplink's driver.
    pub uplink_io: Option<UplinkIo>,
    /// overlay: the VSID (VNI) and the VXLAN port.
    pub vsid: Option<u32>,
    pub vxlan_port: u16,
    /// overlay: the interface holding the provider address (`interface`,
    /// which for an overlay network names no uplink).
    pub provider_interface: Option<String>,
}

/// The IANA VXLAN port (RFC 7348).
pub const VXLAN_PORT: u16 = 4789;

impl Default for NetworkOptions {
    fn default() -> Self {
        NetworkOptions {
            fdb: FdbConfig {
                aging: Duration::from_secs(300),
                max_entries: 8192,
                max_per_port: crate::fdb::DEFAULT_MAX_PER_PORT,
            },
            offload: true,
            interface: None,
            vlan: 0,
            nat_ports: None,
            uplink_io: None,
            vsid: None,
            vxlan_port: VXLAN_PORT,
            provider_interface: None,
        }
    }
}

fn invalid(key: &str, expected: &str, got: &str) -> ApiError {
    ApiError::new(
        ErrorKind::InvalidArgument,
        Some(&format!("options.{key}")),
        format!("expected {expected}, got '{got}'"),
    )
}

fn number(key: &str, value: &str, range: std::ops::RangeInclusive<u64>) -> Result<u64, ApiError> {
    let expected = format!("a whole number in {}..={}", range.start(), range.end());
    value
        .parse::<u64>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| invalid(key, &expected, value))
}

impl NetworkOptions {
    /// The options of a network of `driver`: an overlay network's
    /// `interface` is its provider interface, not an uplink.
    pub fn for_driver(
        driver: crate::api::Driver,
        options: &BTreeMap<String, String>,
    ) -> Result<NetworkOptions, ApiError> {
        let mut parsed = NetworkOptions::parse(options)?;
        if driver.tunnel() {
            parsed.provider_interface = parsed.interface.take();
        }
        Ok(parsed)
    }

    pub fn parse(options: &BTreeMap<String, String>) -> Result<NetworkOptions, ApiError> {
        let mut parsed = NetworkOptions::default();
        for (key, value) in options {
            match key.as_str() {
                "fdb_aging" => {
                    parsed.fdb.aging = Duration::from_secs(number(key, value, 1..=86400)?);
                }
                "fdb_max" => parsed.fdb.max_entries = number(key, value, 16..=1 << 20)? as usize,
                "fdb_max_per_port" => {
                    parsed.fdb.max_per_port = number(key, value, 1..=1 << 20)? as usize
                }
                "offload" => {
                    parsed.offload = match value.as_str() {
                        "on" | "true" | "1" => true,
                        "off" | "false" | "0" => false,
                        _ => return Err(invalid(key, "on or off", value)),
                    }
                }
                "interface" => {
                    IfName::checked(value).map_err(|e| invalid_ifname("options.interface", e))?;
                    parsed.interface = Some(value.clone());
                }
                "vlanid" => parsed.vlan = number(key, value, 1..=4094)? as u16,
                "vsid" => parsed.vsid = Some(number(key, value, 1..=0xff_ffff)? as u32),
                "vxlanport" => parsed.vxlan_port = number(key, value, 1..=65535)? as u16,
                "uplink_io" => {
                    parsed.uplink_io = Some(
                        UplinkIo::parse(value).ok_or_else(|| invalid(key, "afxdp or tc", value))?,
                    );
                }
                "nat_ports" => {
                    let expected = "LO-HI, two ports 1024..=65535 with LO <= HI";
                    let (lo, hi) = value
                        .split_once('-')
                        .ok_or_else(|| invalid(key, expected, value))?;
                    let port = |s: &str| {
                        s.trim()
                            .parse::<u16>()
                            .ok()
                            .filter(|p| *p >= 1024)
                            .ok_or_else(|| invalid(key, expected, value))
                    };
                    let (lo, hi) = (port(lo)?, port(hi)?);
                    if lo > hi {
                        return Err(invalid(key, expected, value));
                    }
                    parsed.nat_ports = Some((lo, hi));
                }
                _ => {
                    let known: Vec<&str> = KNOWN.iter().map(|(k, _)| *k).collect();
                    return Err(ApiError::new(
                        ErrorKind::InvalidArgument,
                        Some(&format!("options.{key}")),
                        format!("unknown option; known options: {}", known.join(", ")),
                    ));
                }
            }
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults() {
        let o = NetworkOptions::parse(&BTreeMap::new()).unwrap();
        assert_eq!(o.fdb.aging, Duration::from_secs(300));
        assert_eq!(o.fdb.max_entries, 8192);
        assert!(o.offload);
    }

    #[test]
    fn values_and_errors() {
        let o = NetworkOptions::parse(&opts(&[("fdb_aging", "30"), ("offload", "off")])).unwrap();
        assert_eq!(o.fdb.aging, Duration::from_secs(30));
        assert!(!o.offload);
        let e = NetworkOptions::parse(&opts(&[("fdb_aging", "0")])).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("options.fdb_aging"));
        let o = NetworkOptions::parse(&opts(&[("interface", "eth1"), ("vlanid", "10")])).unwrap();
        assert_eq!((o.interface.as_deref(), o.vlan), (Some("eth1"), 10));
        for bad in ["0", "4095", "ten"] {
            let e = NetworkOptions::parse(&opts(&[("vlanid", bad)])).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("options.vlanid"));
        }
        let o = NetworkOptions::parse(&opts(&[("uplink_io", "tc")])).unwrap();
        assert_eq!(o.uplink_io, Some(UplinkIo::Tc));
        assert_eq!(
            NetworkOptions::parse(&BTreeMap::new()).unwrap().uplink_io,
            None
        );
        let e = NetworkOptions::parse(&opts(&[("uplink_io", "xdp")])).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("options.uplink_io"));
        let e = NetworkOptions::parse(&opts(&[("colour", "blue")])).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("options.colour"));
        assert!(e.message.contains("vlanid"), "{}", e.message);
        assert!(e.message.contains("fdb_aging"));
    }
}
