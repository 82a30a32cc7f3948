//! Every mapping of a domain error to an [`ApiError`], in one place: the
//! kernel-plumbing errors (namespaces, netlink, TAPs), uplink errors, state
//! file errors, and the helpers request validation uses to name the field
//! at fault.

use crate::api::{ApiError, ErrorKind};
use crate::ifname::InvalidIfName;
use crate::netns::NetnsError;
use crate::port::tap::TapError;

use super::plumb::PlumbError;
use super::state::StateError;
use super::uplink::UplinkError;

/// A request field holds a value the switch does not take.
pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::InvalidArgument, Some(field), message)
}

/// A request field holds a string the kernel would not take as an interface
/// name ([`crate::ifname::IfName::checked`]).
pub fn invalid_ifname(field: &str, e: InvalidIfName) -> ApiError {
    invalid(
        field,
        format!("'{}' is not an interface name: {}", e.name, e.reason),
    )
}

/// A request field names something already taken.
pub fn conflict(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::Conflict, Some(field), message)
}

/// Something failed that the request could not have prevented.
pub fn internal(message: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorKind::Internal, None, message.to_string())
}

/// A failure to plumb a port; `field` is the request field it concerns.
pub fn plumb_error(e: PlumbError, field: &str) -> ApiError {
    match e {
        PlumbError::Tap(TapError::Exists(name)) => ApiError::new(
            ErrorKind::Conflict,
            Some(field),
            format!("a link named {name} already exists in the namespace"),
        ),
        PlumbError::Netns(e) => netns_error(e),
        e => ApiError::new(ErrorKind::Internal, Some(field), e.to_string()),
    }
}

/// A namespace that cannot be resolved or entered: always the `netns` field.
pub fn netns_error(e: NetnsError) -> ApiError {
    let kind = match e {
        NetnsError::NotFound { .. } => ErrorKind::NotFound,
        NetnsError::InvalidName { .. } | NetnsError::NotNetns { .. } => ErrorKind::InvalidArgument,
        _ => ErrorKind::Internal,
    };
    ApiError::new(kind, Some("netns"), e.to_string())
}

/// An interface that cannot be (or stay) an uplink: the `options.interface`
/// field, except steering an endpoint's addresses, which concerns no field.
pub fn uplink_error(e: UplinkError) -> ApiError {
    let kind = match &e {
        UplinkError::NotFound(_) => ErrorKind::NotFound,
        UplinkError::Loopback(_) | UplinkError::Tap(_) => ErrorKind::InvalidArgument,
        UplinkError::Steer(_) => return internal(e),
        UplinkError::Netlink(_) | UplinkError::Attach { .. } => ErrorKind::Internal,
    };
    ApiError::new(kind, Some("options.interface"), e.to_string())
}

/// The state file could not be written: the change is undone.
pub fn state_error(e: StateError) -> ApiError {
    internal(e)
}
