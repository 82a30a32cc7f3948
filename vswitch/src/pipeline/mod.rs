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
//! The policy layers ([`layers`]): guards, the ACL classifier behind the
//! per-port flow cache, connection tracking, QoS. NAT port allocation is
//! built and tested but not yet run by `decide` (the nat driver is next).

pub mod acl;
pub mod classify;
pub mod conntrack;
pub mod decide;
pub mod flowcache;
pub mod forward;
pub mod l2bridge;
pub mod layers;
pub mod nat;
pub mod overlay;
pub mod qos;
pub mod translate;
pub mod verdict;

pub use classify::{classify, Direction, FlowKey, PacketMeta};
pub use decide::{
    Decision, FlowInfo, NetworkConfig, Pipeline, PortPolicy, PortRole, TableSizes, TraceStep,
};
pub use forward::{Guards, PortSecurity};
pub use layers::{AclOutcome, Layers};
pub use verdict::{apply, HeaderTransform, Verdict};

pub type PortId = u32;
pub type NetId = u32;
