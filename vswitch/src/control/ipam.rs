//! Address management: subnets, address allocation, MAC pools.
//!
//! Pure functions over the addresses already in use; the controller owns
//! the state and passes it in, so everything here is unit-tested directly.

use std::collections::HashSet;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::wire::MacAddr;

/// Why a CIDR or pool string was refused; shown after the field name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An IPv4 subnet such as `10.1.0.0/24` (host bits must be zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix: u8,
}

/// An IPv6 subnet such as `fd00:1::/64` (host bits must be zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv6Cidr {
    addr: Ipv6Addr,
    prefix: u8,
}

fn split_cidr(s: &str) -> Result<(&str, u8), ParseError> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| ParseError(format!("expected ADDRESS/PREFIX, got '{s}'")))?;
    let len = len
        .parse::<u8>()
        .map_err(|_| ParseError(format!("prefix length '{len}' is not a number")))?;
    Ok((addr, len))
}

fn mask4(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

fn mask6(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    }
}

impl Ipv4Cidr {
    /// Largest prefix a network may have: room for a gateway and endpoints.
    pub const MAX_PREFIX: u8 = 30;

    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Ipv4Cidr> {
        (prefix <= 32 && u32::from(addr) & !mask4(prefix) == 0).then_some(Ipv4Cidr { addr, prefix })
    }

    pub fn network(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !mask4(self.prefix))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask4(self.prefix) == u32::from(self.addr)
    }

    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// An address endpoints may hold: inside, and neither the network nor
    /// the broadcast address.
    pub fn is_host(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && ip != self.network() && ip != self.broadcast()
    }

    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) + 1)
    }

    /// Refuses subnets no endpoint can live in: ranges the kernel treats
    /// as special, whose addresses would not work on an interface (or, for
    /// loopback, would put 127.0.0.1 on a host port).
    pub fn check_usable(&self) -> Result<(), ParseError> {
        const RESERVED: [(Ipv4Addr, u8, &str); 4] = [
            (Ipv4Addr::new(0, 0, 0, 0), 8, "'this network'"),
            (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
            (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast"),
            (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved and broadcast"),
        ];
        for (addr, prefix, what) in RESERVED {
            let range = Ipv4Cidr { addr, prefix };
            if self.overlaps(&range) {
                return Err(ParseError(format!(
                    "{self} overlaps {range}, the {what} range; endpoint addresses must be unicast"
                )));
            }
        }
        Ok(())
    }

    /// The lowest host address not in `taken`.
    pub fn allocate(&self, taken: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let first = u32::from(self.addr) + 1;
        let last = u32::from(self.broadcast()) - 1;
        (first..=last)
            .map(Ipv4Addr::from)
            .find(|ip| !taken.contains(ip))
    }
}

impl FromStr for Ipv4Cidr {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let (addr, prefix) = split_cidr(s)?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| ParseError(format!("'{addr}' is not an IPv4 address")))?;
        if prefix > Self::MAX_PREFIX {
            return Err(ParseError(format!(
                "prefix /{prefix} is too long: expected /{} or shorter",
                Self::MAX_PREFIX
            )));
        }
        Ipv4Cidr::new(addr, prefix).ok_or_else(|| {
            let net = Ipv4Addr::from(u32::from(addr) & mask4(prefix));
            ParseError(format!(
                "{s} has host bits set; did you mean {net}/{prefix}?"
            ))
        })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl TryFrom<String> for Ipv4Cidr {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, ParseError> {
        s.parse()
    }
}

impl From<Ipv4Cidr> for String {
    fn from(c: Ipv4Cidr) -> String {
        c.to_string()
    }
}

impl Ipv6Cidr {
    pub const MAX_PREFIX: u8 = 120;

    pub fn new(addr: Ipv6Addr, prefix: u8) -> Option<Ipv6Cidr> {
        (prefix <= 128 && u128::from(addr) & !mask6(prefix) == 0)
            .then_some(Ipv6Cidr { addr, prefix })
    }

    pub fn network(&self) -> Ipv6Addr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & mask6(self.prefix) == u128::from(self.addr)
    }

    pub fn overlaps(&self, other: &Ipv6Cidr) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// Inside, and not the subnet-router anycast address (all host bits 0).
    pub fn is_host(&self, ip: Ipv6Addr) -> bool {
        self.contains(ip) && ip != self.addr
    }

    pub fn first_host(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.addr) + 1)
    }

    /// Refuses subnets no endpoint can live in: an endpoint's address must
    /// be global unicast (2000::/3) or unique local (fc00::/7); everything
    /// else is loopback, unspecified, link-local (the kernel's own on every
    /// interface), multicast or reserved.
    pub fn check_usable(&self) -> Result<(), ParseError> {
        let usable = [
            Ipv6Cidr {
                addr: Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0),
                prefix: 3,
            },
            Ipv6Cidr {
                addr: Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
                prefix: 7,
            },
        ];
        if usable
            .iter()
            .any(|u| u.contains(self.addr) && u.prefix <= self.prefix)
        {
            Ok(())
        } else {
            Err(ParseError(format!(
                "{self} is not inside 2000::/3 (global unicast) or fc00::/7 (unique local); endpoint addresses must be unicast"
            )))
        }
    }

    /// The lowest host address not in `taken`.
    pub fn allocate(&self, taken: &HashSet<Ipv6Addr>) -> Option<Ipv6Addr> {
        let first = u128::from(self.addr) + 1;
        let last = u128::from(self.addr) | !mask6(self.prefix);
        (first..=last)
            .map(Ipv6Addr::from)
            .find(|ip| !taken.contains(ip))
    }
}

impl FromStr for Ipv6Cidr {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let (addr, prefix) = split_cidr(s)?;
        let addr: Ipv6Addr = addr
            .parse()
            .map_err(|_| ParseError(format!("'{addr}' is not an IPv6 address")))?;
        if prefix > Self::MAX_PREFIX {
            return Err(ParseError(format!(
                "prefix /{prefix} is too long: expected /{} or shorter",
                Self::MAX_PREFIX
            )));
        }
        Ipv6Cidr::new(addr, prefix).ok_or_else(|| {
            let net = Ipv6Addr::from(u128::from(addr) & mask6(prefix));
            ParseError(format!(
                "{s} has host bits set; did you mean {net}/{prefix}?"
            ))
        })
    }
}

impl fmt::Display for Ipv6Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl TryFrom<String> for Ipv6Cidr {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, ParseError> {
        s.parse()
    }
}

impl From<Ipv6Cidr> for String {
    fn from(c: Ipv6Cidr) -> String {
        c.to_string()
    }
}

/// What address allocation needs of a subnet, for either family.
pub trait Subnet: Copy + fmt::Display {
    type Addr: Copy + Eq + std::hash::Hash + fmt::Display + FromStr;
    /// `IPv4` or `IPv6`, for messages.
    const FAMILY: &'static str;
    fn is_host(&self, ip: Self::Addr) -> bool;
    fn allocate(&self, taken: &HashSet<Self::Addr>) -> Option<Self::Addr>;
}

impl Subnet for Ipv4Cidr {
    type Addr = Ipv4Addr;
    const FAMILY: &'static str = "IPv4";
    fn is_host(&self, ip: Ipv4Addr) -> bool {
        Ipv4Cidr::is_host(self, ip)
    }
    fn allocate(&self, taken: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        Ipv4Cidr::allocate(self, taken)
    }
}

impl Subnet for Ipv6Cidr {
    type Addr = Ipv6Addr;
    const FAMILY: &'static str = "IPv6";
    fn is_host(&self, ip: Ipv6Addr) -> bool {
        Ipv6Cidr::is_host(self, ip)
    }
    fn allocate(&self, taken: &HashSet<Ipv6Addr>) -> Option<Ipv6Addr> {
        Ipv6Cidr::allocate(self, taken)
    }
}

/// A range of locally administered unicast MACs endpoints are given
/// addresses from (HNS `MacPools`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacPool {
    pub start: MacAddr,
    pub end: MacAddr,
}

impl MacPool {
    /// Hyper-V's OUI 00:15:5d with the locally-administered bit set.
    pub const DEFAULT: MacPool = MacPool {
        start: MacAddr([0x02, 0x15, 0x5d, 0x00, 0x00, 0x00]),
        end: MacAddr([0x02, 0x15, 0x5d, 0xff, 0xff, 0xff]),
    };

    pub fn size(&self) -> u64 {
        self.end.to_u64() - self.start.to_u64() + 1
    }

    /// A free MAC from the pool, starting the search at `seed` (random in
    /// the daemon, so two hosts rarely pick the same address).
    pub fn allocate(&self, taken: &HashSet<MacAddr>, seed: u64) -> Option<MacAddr> {
        let size = self.size();
        let start = self.start.to_u64();
        (0..size)
            .map(|i| MacAddr::from_u64(start + (seed.wrapping_add(i)) % size))
            .find(|mac| !taken.contains(mac))
    }
}

/// A MAC an endpoint or pool may use: unicast and not all-zero.
pub fn check_unicast_mac(mac: MacAddr) -> Result<(), ParseError> {
    if mac.is_zero() {
        Err(ParseError(format!("{mac} is the all-zero address")))
    } else if mac.is_multicast() {
        Err(ParseError(format!(
            "{mac} is a multicast address (low bit of the first byte set)"
        )))
    } else {
        Ok(())
    }
}

fn parse_mac(s: &str) -> Result<MacAddr, ParseError> {
    s.parse::<MacAddr>()
        .map_err(|_| ParseError(format!("'{s}' is not a MAC address like 02:15:5d:00:00:01")))
}

/// Parses a MAC an endpoint asked for.
pub fn parse_unicast_mac(s: &str) -> Result<MacAddr, ParseError> {
    let mac = parse_mac(s)?;
    check_unicast_mac(mac)?;
    Ok(mac)
}

impl FromStr for MacPool {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let (a, b) = s
            .split_once('-')
            .filter(|(a, _)| a.len() == 17)
            .or_else(|| Some((s.get(..17)?, s.get(18..)?)).filter(|_| s.len() == 35))
            .ok_or_else(|| ParseError(format!("expected START-END, got '{s}'")))?;
        let (start, end) = (parse_mac(a)?, parse_mac(b)?);
        for mac in [start, end] {
            check_unicast_mac(mac)?;
            if !mac.is_local_admin() {
                return Err(ParseError(format!(
                    "{mac} is not locally administered (second-lowest bit of the first byte)"
                )));
            }
        }
        if start.to_u64() > end.to_u64() || start.0[0] != end.0[0] {
            return Err(ParseError(format!(
                "{start} must not be above {end}, and both must share the first byte"
            )));
        }
        Ok(MacPool { start, end })
    }
}

impl fmt::Display for MacPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

impl TryFrom<String> for MacPool {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, ParseError> {
        s.parse()
    }
}

impl From<MacPool> for String {
    fn from(p: MacPool) -> String {
        p.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_ranges_are_not_usable() {
        for bad in [
            "0.0.0.0/0",
            "0.0.0.0/8",
            "127.0.0.0/8",
            "127.1.0.0/16",
            "224.0.0.0/24",
            "239.1.0.0/16",
            "240.0.0.0/24",
            "255.255.255.0/24",
        ] {
            let c: Ipv4Cidr = bad.parse().unwrap();
            assert!(c.check_usable().is_err(), "{bad}");
        }
        for good in [
            "10.0.0.0/8",
            "192.168.1.0/24",
            "1.0.0.0/24",
            "223.255.255.0/24",
        ] {
            let c: Ipv4Cidr = good.parse().unwrap();
            assert!(c.check_usable().is_ok(), "{good}");
        }
        for bad in [
            "::/0",
            "::/64",
            "::/120",
            "fe80::/64",
            "ff02::/64",
            "::ffff:0:0/96",
            "::/2",
            "fc00::/6",
        ] {
            let c: Ipv6Cidr = bad.parse().unwrap_or_else(|e| panic!("{bad}: {e}"));
            assert!(c.check_usable().is_err(), "{bad}");
        }
        for good in ["fd00:1::/64", "2001:db8::/64", "fc00::/7", "2000::/3"] {
            let c: Ipv6Cidr = good.parse().unwrap();
            assert!(c.check_usable().is_ok(), "{good}");
        }
    }

    #[test]
    fn cidr4_parse() {
        let c: Ipv4Cidr = "10.1.0.0/24".parse().unwrap();
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 1, 0, 255));
        assert!(c.contains(Ipv4Addr::new(10, 1, 0, 7)));
        assert!(!c.contains(Ipv4Addr::new(10, 1, 1, 7)));
        let e = "10.1.0.5/24".parse::<Ipv4Cidr>().unwrap_err();
        assert!(e.0.contains("did you mean 10.1.0.0/24"), "{e}");
        assert!("10.1.0.0/33".parse::<Ipv4Cidr>().is_err());
        assert!("10.1.0.0/31".parse::<Ipv4Cidr>().is_err());
        assert!("10.1.0.0".parse::<Ipv4Cidr>().is_err());
        assert!("banana/24".parse::<Ipv4Cidr>().is_err());
        assert!("fd00::/64".parse::<Ipv4Cidr>().is_err());
    }

    #[test]
    fn cidr_overlap() {
        let a: Ipv4Cidr = "10.0.0.0/16".parse().unwrap();
        let b: Ipv4Cidr = "10.0.5.0/24".parse().unwrap();
        let c: Ipv4Cidr = "10.1.0.0/24".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
        let x: Ipv6Cidr = "fd00::/48".parse().unwrap();
        let y: Ipv6Cidr = "fd00:0:0:1::/64".parse().unwrap();
        assert!(x.overlaps(&y));
    }

    #[test]
    fn allocation_skips_network_gateway_and_taken() {
        let c: Ipv4Cidr = "10.0.0.0/29".parse().unwrap();
        let mut taken: HashSet<Ipv4Addr> = [Ipv4Addr::new(10, 0, 0, 1)].into();
        let mut got = Vec::new();
        while let Some(ip) = c.allocate(&taken) {
            taken.insert(ip);
            got.push(ip.octets()[3]);
        }
        assert_eq!(got, vec![2, 3, 4, 5, 6]); // never .0 or .7
    }

    #[test]
    fn allocation6() {
        let c: Ipv6Cidr = "fd00:1::/64".parse().unwrap();
        let taken: HashSet<Ipv6Addr> = [c.first_host()].into();
        assert_eq!(c.allocate(&taken), Some("fd00:1::2".parse().unwrap()));
        assert!(!c.is_host("fd00:1::".parse().unwrap()));
    }

    #[test]
    fn mac_pool() {
        let p: MacPool = "02:00:00:00:00:00-02:00:00:00:00:03".parse().unwrap();
        assert_eq!(p.size(), 4);
        let mut taken = HashSet::new();
        for _ in 0..4 {
            let m = p.allocate(&taken, 7).unwrap();
            assert!(m.to_u64() >= p.start.to_u64() && m.to_u64() <= p.end.to_u64());
            taken.insert(m);
        }
        assert_eq!(p.allocate(&taken, 0), None);
        assert!("03:00:00:00:00:00-03:00:00:00:00:03"
            .parse::<MacPool>()
            .is_err());
        assert!("00:00:00:00:00:01-00:00:00:00:00:03"
            .parse::<MacPool>()
            .is_err());
        assert!("02:00:00:00:00:09-02:00:00:00:00:03"
            .parse::<MacPool>()
            .is_err());
    }

    #[test]
    fn endpoint_macs() {
        assert!(parse_unicast_mac("02:15:5d:00:00:01").is_ok());
        assert!(parse_unicast_mac("00:00:00:00:00:00").is_err());
        assert!(parse_unicast_mac("01:00:5e:00:00:01").is_err());
        assert!(parse_unicast_mac("ff:ff:ff:ff:ff:ff").is_err());
        assert!(parse_unicast_mac("zz").is_err());
    }
}
