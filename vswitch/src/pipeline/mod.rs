//! The VFP model of the slow path: layers, rules and actions, connection
//! tracking, NAT, QoS, the flow cache and trace. It knows packets and never
//! port types (ARCHITECTURE.md section 3).

pub mod acl;
pub mod conntrack;
pub mod flowcache;
pub mod nat;
pub mod qos;
