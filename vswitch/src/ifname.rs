//! Interface names, checked once by the kernel's own rules.
//!
//! The kernel (`dev_valid_name` in `net/core/dev.c`) takes 1-15 bytes, not
//! `.` or `..`, without `/`, `:`, NUL or whitespace. It also reads a `%` as
//! a pattern (`eth%d` becomes the first free `eth0`, `eth1`, ...), so a name
//! with one would not be the name asked for: refused here too. Every layer
//! that names an interface (the API, netlink, TAPs, AF_XDP, the eBPF pin
//! directories) checks through [`IfName::new`] or [`IfName::checked`], so
//! they cannot disagree on what a valid name is and a request is refused
//! before anything changes. Layers with their own error type convert from
//! [`InvalidIfName`] rather than wrap the check in a function of their own.

use std::fmt;

/// `IFNAMSIZ` from `<linux/if.h>`, NUL included.
pub const IFNAMSIZ: usize = 16;

/// An interface name the kernel will accept as it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfName(String);

/// Why a string is not an interface name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IfNameError {
    #[error("empty; interface names are 1-15 bytes")]
    Empty,
    #[error("{0} bytes; interface names are 1-15 bytes")]
    TooLong(usize),
    #[error("'.' and '..' are not interface names")]
    Dot,
    #[error("contains {0:?}; interface names may not contain '/', ':', '%', NUL or whitespace")]
    BadChar(char),
}

/// A name refused by [`IfName::checked`], kept with the reason so each
/// layer's error can say both.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid interface name {name:?}: {reason}")]
pub struct InvalidIfName {
    pub name: String,
    #[source]
    pub reason: IfNameError,
}

impl IfName {
    pub fn new(name: &str) -> Result<IfName, IfNameError> {
        if name.is_empty() {
            return Err(IfNameError::Empty);
        }
        if name.len() >= IFNAMSIZ {
            return Err(IfNameError::TooLong(name.len()));
        }
        if name == "." || name == ".." {
            return Err(IfNameError::Dot);
        }
        // The kernel's isspace(): space, \t, \n, \v, \f, \r.
        if let Some(c) = name
            .chars()
            .find(|&c| matches!(c, '/' | ':' | '%' | '\0' | ' ' | '\t'..='\r'))
        {
            return Err(IfNameError::BadChar(c));
        }
        Ok(IfName(name.to_owned()))
    }

    /// [`IfName::new`] for callers whose errors name the refused string:
    /// `IfName::checked(name)?` where the caller's error is
    /// `From<InvalidIfName>`.
    pub fn checked(name: &str) -> Result<IfName, InvalidIfName> {
        IfName::new(name).map_err(|reason| InvalidIfName {
            name: name.to_owned(),
            reason,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as the kernel's `char[IFNAMSIZ]`, NUL-padded.
    pub fn to_c_array(&self) -> [u8; IFNAMSIZ] {
        let mut out = [0u8; IFNAMSIZ];
        out[..self.0.len()].copy_from_slice(self.0.as_bytes());
        out
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for IfName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for IfName {
    type Err = IfNameError;
    fn from_str(s: &str) -> Result<IfName, IfNameError> {
        IfName::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_rules() {
        for good in ["eth0", "a", "0123456789abcde", "vsh-1.a_b", "é0"] {
            assert_eq!(IfName::new(good).unwrap().as_str(), good);
        }
        assert_eq!(IfName::new(""), Err(IfNameError::Empty));
        assert_eq!(
            IfName::new("0123456789abcdef"),
            Err(IfNameError::TooLong(16))
        );
        // Multi-byte characters count in bytes, as the kernel does.
        assert_eq!(IfName::new(&"é".repeat(8)), Err(IfNameError::TooLong(16)));
        assert_eq!(IfName::new("."), Err(IfNameError::Dot));
        assert_eq!(IfName::new(".."), Err(IfNameError::Dot));
        for (bad, c) in [
            ("a/b", '/'),
            ("a:1", ':'),
            ("e%d", '%'),
            ("a b", ' '),
            ("a\tb", '\t'),
            ("a\nb", '\n'),
            ("a\u{b}b", '\u{b}'),
            ("a\rb", '\r'),
            ("a\0b", '\0'),
        ] {
            assert_eq!(IfName::new(bad), Err(IfNameError::BadChar(c)), "{bad:?}");
        }
    }

    #[test]
    fn checked_keeps_the_name() {
        assert_eq!(IfName::checked("eth0").unwrap().as_str(), "eth0");
        let e = IfName::checked("a/b").unwrap_err();
        assert_eq!(
            (e.name.as_str(), e.reason),
            ("a/b", IfNameError::BadChar('/'))
        );
        assert!(
            e.to_string()
                .starts_with(r#"invalid interface name "a/b": "#),
            "{e}"
        );
    }

    #[test]
    fn c_array_is_nul_padded() {
        let n = IfName::new("eth0").unwrap();
        let a = n.to_c_array();
        assert_eq!(&a[..5], b"eth0\0");
        assert!(a[4..].iter().all(|&b| b == 0));
    }
}
