//! The forwarding pipeline (the VFP model): it knows packets and the roles
//! of ports, never their types (TAP, AF_XDP, packet socket).
//!
//! Per frame: [`classify`] parses it once into a [`PacketMeta`];
//! [`Pipeline::decide`] turns that and the network's tables into a
//! [`Verdict`]: out port or ports, one composed [`HeaderTransform`], a
//! reply the switch makes itself, or a drop reason. The datapath then
//! executes the verdict (the I/O). l2bridge translation, the ARP/NDP proxy
//! and VLAN tagging are transformations and verdicts like any other.
//!
//! The policy layers' parts, built and tested but not yet run by
//! `decide`: the ACL classifier, connection tracking, the flow cache, QoS
//! and NAT port allocation.

pub mod acl;
pub mod classify;
pub mod conntrack;
pub mod decide;
pub mod flowcache;
pub mod forward;
pub mod l2bridge;
pub mod nat;
pub mod qos;
pub mod verdict;

pub use classify::{classify, Direction, FlowKey, PacketMeta};
pub use decide::{Decision, Pipeline, PortPolicy, PortRole};
pub use forward::PortSecurity;
pub use verdict::{apply, HeaderTransform, Verdict};

pub type PortId = u32;
pub type NetId = u32;
