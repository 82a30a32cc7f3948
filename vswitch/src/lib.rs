//! vswitch: a Linux software switch that reproduces the Hyper-V virtual
//! switch and the Windows container networking stack.
//!
//! The crate is the daemon's library: `control` serves the API and owns the
//! state, `datapath` moves frames between `port`s as the `pipeline` decides
//! (with the `fdb`), `netns`
//! plumbs links and addresses over netlink, `wire` parses packets,
//! `metrics` serves Prometheus scrapes, `docker` Docker's remote network
//! driver protocol, `overlay` shares networks and CA->PA mappings between
//! hosts.

pub use vswitch_api as api;

pub mod control;
pub mod datapath;
pub mod docker;
pub mod ebpf;
pub mod fdb;
pub mod ifname;
pub mod metrics;
pub mod netns;
pub mod overlay;
pub mod pipeline;
pub mod policy;
pub mod port;
pub mod sys;
pub mod wire;
