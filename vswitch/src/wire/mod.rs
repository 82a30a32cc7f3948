//! Packet views over byte buffers, in the style of smoltcp's `wire`.
//!
//! Contract, the same for every protocol file:
//!
//! - A view `XxxPacket<T: AsRef<[u8]>>` wraps a buffer without copying.
//!   `new_checked` is for anything received: once it returns `Ok`, no
//!   accessor of the view panics, whatever the bytes are. `new_unchecked` is
//!   for emitting into a buffer the caller has sized; accessors and setters of
//!   an unchecked view may panic on a short buffer.
//! - Setters need `T: AsMut<[u8]>`.
//! - A plain `XxxRepr` struct is `parse`d from a checked view and `emit`ted
//!   into a view over a buffer of at least `buffer_len()` bytes.
//! - Numeric fields the switch does not know round-trip unchanged through
//!   `Unknown(_)` variants, so a frame is never altered just by being looked at.
//! - Nothing here allocates: these run for every frame on the datapath.

pub mod arp;
pub mod ethernet;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;

use std::net::{Ipv4Addr, Ipv6Addr};

pub use arp::{ArpOperation, ArpPacket, ArpRepr};
pub use ethernet::{
    vlan_pop, vlan_push, EtherType, EthernetFrame, EthernetRepr, MacAddr, MacParseError,
};
pub use icmpv6::{Icmpv6Packet, Icmpv6Type, NaFlags, NdpRepr};
pub use ipv4::{Ipv4Packet, Ipv4Repr};
pub use ipv6::{Ipv6Packet, Ipv6Repr};
pub use tcp::{TcpFlags, TcpPacket, TcpRepr};
pub use udp::{UdpPacket, UdpRepr};

/// Why a buffer could not be read as a packet. `Copy` and free of
/// allocation so the datapath can count drops by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{what}: truncated, need {need} bytes, have {have}")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("{what}: malformed, {reason}")]
    Malformed {
        what: &'static str,
        reason: &'static str,
    },
    #[error("{what}: unsupported, {reason}")]
    Unsupported {
        what: &'static str,
        reason: &'static str,
    },
    #[error("{what}: bad checksum")]
    BadChecksum { what: &'static str },
}

pub type Result<T> = std::result::Result<T, WireError>;

/// Returns `Truncated` unless `have >= need`.
pub(crate) fn need(what: &'static str, need: usize, have: usize) -> Result<()> {
    if have < need {
        Err(WireError::Truncated { what, need, have })
    } else {
        Ok(())
    }
}

/// Declares a `u8`/`u16` protocol number enum whose unknown values round-trip.
macro_rules! enum_with_unknown {
    (
        $(#[$meta:meta])*
        pub enum $name:ident($ty:ty) {
            $( $(#[$vmeta:meta])* $variant:ident = $value:expr ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// A value this switch has no name for; kept as is.
            Unknown($ty),
        }

        impl From<$ty> for $name {
            fn from(value: $ty) -> Self {
                match value {
                    $( $value => $name::$variant, )+
                    other => $name::Unknown(other),
                }
            }
        }

        impl From<$name> for $ty {
            fn from(value: $name) -> Self {
                match value {
                    $( $name::$variant => $value, )+
                    $name::Unknown(other) => other,
                }
            }
        }
    };
}
pub(crate) use enum_with_unknown;

enum_with_unknown! {
    /// IPv4 protocol / IPv6 next header numbers.
    pub enum IpProtocol(u8) {
        HopByHop = 0,
        Icmp = 1,
        Tcp = 6,
        Udp = 17,
        Icmpv6 = 58,
    }
}

/// Ones' complement accumulator for the internet checksum (RFC 1071).
///
/// Feed it the pseudo-header and the message with `add_bytes`, then `finish`.
/// Only the last slice added may have an odd length (RFC 1071 pads the end of
/// the message, not the middle); every pseudo-header part is even.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checksum {
    sum: u64,
}

impl Checksum {
    pub const fn new() -> Self {
        Checksum { sum: 0 }
    }

    pub fn add_bytes(&mut self, data: &[u8]) -> &mut Self {
        // 2^16 = 1 (mod 2^16 - 1), so adding 32-bit big-endian words and
        // folding later gives the same result as 16-bit words, in half the
        // additions. A u64 cannot overflow for any buffer that fits in memory
        // many times over.
        let mut words = data.chunks_exact(4);
        for w in &mut words {
            self.sum += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
        }
        let rest = words.remainder();
        let mut pairs = rest.chunks_exact(2);
        for p in &mut pairs {
            self.sum += u64::from(u16::from_be_bytes([p[0], p[1]]));
        }
        if let [last] = pairs.remainder() {
            self.sum += u64::from(*last) << 8;
        }
        self
    }

    pub fn add_u16(&mut self, value: u16) -> &mut Self {
        self.sum += u64::from(value);
        self
    }

    pub fn add_u32(&mut self, value: u32) -> &mut Self {
        self.sum += u64::from(value);
        self
    }

    /// The folded 16-bit ones' complement sum, before complementing.
    pub fn folded(&self) -> u16 {
        let mut s = self.sum;
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    /// The value to store in a checksum field (complement of the sum). Over a
    /// message that already holds a correct checksum, this is 0.
    pub fn finish(&self) -> u16 {
        !self.folded()
    }
}

/// Internet checksum of `data`: the value to write into a zeroed checksum
/// field, or 0 when run over data whose checksum field is already correct.
pub fn checksum(data: &[u8]) -> u16 {
    Checksum::new().add_bytes(data).finish()
}

/// Accumulator preloaded with the IPv4 pseudo-header for TCP/UDP (RFC 793,
/// RFC 768): source, destination, zero, protocol, upper-layer length.
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: IpProtocol, len: u16) -> Checksum {
    let mut c = Checksum::new();
    c.add_bytes(&src.octets())
        .add_bytes(&dst.octets())
        .add_u16(u16::from(u8::from(protocol)))
        .add_u16(len);
    c
}

/// Accumulator preloaded with the IPv6 pseudo-header for TCP/UDP/ICMPv6
/// (RFC 8200 section 8.1): source, destination, 32-bit upper-layer length,
/// zeros, next header.
pub fn pseudo_header_v6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: IpProtocol,
    len: u32,
) -> Checksum {
    let mut c = Checksum::new();
    c.add_bytes(&src.octets())
        .add_bytes(&dst.octets())
        .add_u32(len)
        .add_u16(u16::from(u8::from(next_header)));
    c
}

/// What the property tests of every protocol file share (issue 6, item
/// 13): arbitrary bytes, and valid packets damaged a little so the checks
/// deep inside a parser are reached too, not only the first length check.
#[cfg(test)]
pub(crate) mod testing {
    use proptest::prelude::*;
    use proptest::test_runner::Config;

    /// Longest arbitrary buffer: more than any MTU-sized frame.
    pub const MAX_LEN: usize = 2000;

    /// Cases from `PROPTEST_CASES` (256 when unset; `scripts/fuzz-wire.sh`
    /// sets millions). No regression files are written into the source
    /// tree: a failure found becomes a fixture test beside the code.
    pub fn config() -> Config {
        Config {
            failure_persistence: None,
            ..Config::default()
        }
    }

    /// Arbitrary bytes, 0 to `MAX_LEN` of them.
    pub fn bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..MAX_LEN)
    }

    /// `valid` with up to two bytes overwritten and, half the time, cut
    /// short at an arbitrary length.
    pub fn damaged(valid: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
        valid
            .prop_flat_map(|v| {
                let n = v.len();
                (
                    Just(v),
                    prop::collection::vec((0..n.max(1), any::<u8>()), 0..3),
                    prop_oneof![Just(n), 0..=n],
                )
            })
            .prop_map(|(mut v, edits, cut)| {
                for (at, b) in edits {
                    if let Some(x) = v.get_mut(at) {
                        *x = b;
                    }
                }
                v.truncate(cut);
                v
            })
    }

    /// Arbitrary addresses, for pseudo-headers and endpoint tables.
    pub fn v6_addr() -> impl Strategy<Value = std::net::Ipv6Addr> {
        any::<[u8; 16]>().prop_map(std::net::Ipv6Addr::from)
    }

    pub fn v4_addr() -> impl Strategy<Value = std::net::Ipv4Addr> {
        any::<[u8; 4]>().prop_map(std::net::Ipv4Addr::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_rfc1071_example() {
        // RFC 1071 section 3 example words: 0001 f203 f4f5 f6f7 -> sum ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(Checksum::new().add_bytes(&data).folded(), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn checksum_odd_length_pads_with_zero() {
        assert_eq!(
            checksum(&[0x12, 0x34, 0x56]),
            checksum(&[0x12, 0x34, 0x56, 0x00])
        );
        // 2-byte remainder after the 4-byte words is taken too.
        assert_eq!(
            checksum(&[1, 2, 3, 4, 5, 6]),
            !(0x0102u16 + 0x0304 + 0x0506)
        );
    }

    #[test]
    fn checksum_verifies_to_zero() {
        let mut data = [0x45, 0x00, 0x00, 0x1c, 0xab, 0xcd, 0x00, 0x00, 0x12, 0x34];
        let c = checksum(&data);
        data[6..8].copy_from_slice(&c.to_be_bytes());
        assert_eq!(checksum(&data), 0);
    }

    #[test]
    fn checksum_folds_many_carries() {
        let data = [0xffu8; 4096];
        assert_eq!(Checksum::new().add_bytes(&data).folded(), 0xffff);
        assert_eq!(checksum(&data), 0);
    }

    #[test]
    fn ip_protocol_round_trip() {
        for v in 0..=255u8 {
            assert_eq!(u8::from(IpProtocol::from(v)), v);
        }
        assert_eq!(IpProtocol::from(6), IpProtocol::Tcp);
        assert_eq!(IpProtocol::from(253), IpProtocol::Unknown(253));
    }

    #[test]
    fn error_messages_say_what() {
        let e = WireError::Truncated {
            what: "ethernet",
            need: 14,
            have: 3,
        };
        assert_eq!(e.to_string(), "ethernet: truncated, need 14 bytes, have 3");
    }
}
