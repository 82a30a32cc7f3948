//! The daemon's persistent state: what the user asked for (networks and
//! endpoints), never what the kernel currently has. On start the daemon
//! reconciles the kernel with it.
//!
//! The file is rewritten whole on every change: written to a temporary file
//! in the same directory, fsynced, renamed over the old one, and the
//! directory fsynced, so a crash leaves either the old or the new state.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ipam::{Ipv4Cidr, Ipv6Cidr, MacPool};
use super::NetworkOptions;
pub use crate::api::Driver;
use crate::wire::MacAddr;

/// Bumped when the file format changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub id: String,
    pub name: String,
    pub driver: Driver,
    pub subnet4: Option<Ipv4Cidr>,
    pub gateway4: Option<Ipv4Addr>,
    pub subnet6: Option<Ipv6Cidr>,
    pub gateway6: Option<Ipv6Addr>,
    pub mtu: u32,
    pub mac_pool: MacPool,
    /// The options as the user gave them (validated at creation).
    pub options: BTreeMap<String, String>,
    #[serde(skip)]
    pub parsed: NetworkOptions,
    /// The host port's interface and MAC (`internal` only).
    pub host_ifname: Option<String>,
    #[serde(with = "opt_mac")]
    pub host_mac: Option<MacAddr>,
    /// The network's id in the datapath ([`crate::datapath::NetId`]); 0
    /// only in files written before ids were kept, until assigned on load.
    #[serde(default)]
    pub dp_id: u32,
    /// Datapath port ids of the host port and of the port on the uplink,
    /// when the network has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink_port_id: Option<u32>,
    /// Policies applying to every endpoint of the network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicyRecord>,
    /// The client's labels (`NetworkCreate::labels`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// overlay: static CA->PA entries (`network mapping add`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mappings: Vec<StaticMapping>,
}

/// A CA->PA entry given by hand: a customer address on the network, its
/// MAC, and the provider address of the VTEP it lives behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticMapping {
    pub ip: std::net::IpAddr,
    #[serde(with = "mac")]
    pub mac: MacAddr,
    pub pa: Ipv4Addr,
}

/// A policy as given: the HNS document itself (parsed again on every
/// start, so a record is checked exactly as a request is), and its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    pub id: String,
    pub document: serde_json::Value,
}

fn on() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub id: String,
    pub name: String,
    pub network_id: String,
    /// As given: a name under /run/netns or a path.
    pub netns: String,
    pub ifname: String,
    #[serde(with = "mac")]
    pub mac: MacAddr,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub allow_spoofing: bool,
    /// The endpoint's datapath port id ([`crate::datapath::PortId`]),
    /// reserved even for endpoints without a port (`none` driver); 0 as
    /// for [`NetworkRecord::dp_id`].
    #[serde(default)]
    pub port_id: u32,
    /// Hyper-V's DhcpGuard and RouterGuard (on unless turned off).
    #[serde(default = "on")]
    pub dhcp_guard: bool,
    #[serde(default = "on")]
    pub router_guard: bool,
    /// ACL-policed packets matching no rule are blocked (HNS: allowed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default_block: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicyRecord>,
    /// TAP (absent from older files) or veth.
    #[serde(default)]
    pub backend: crate::api::Backend,
    /// Hyper-V's port mirroring role (absent: none).
    #[serde(default, skip_serializing_if = "is_no_mirror")]
    pub mirror: crate::api::PortMirroring,
    /// The vNIC was made in the daemon's namespace for a container runtime
    /// to move (`EndpointCreate::handoff`); `netns` is empty, and the
    /// switch never configures the vNIC after creating it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub handoff: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn is_no_mirror(m: &crate::api::PortMirroring) -> bool {
    *m == crate::api::PortMirroring::None
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub networks: Vec<NetworkRecord>,
    pub endpoints: Vec<EndpointRecord>,
    /// The next datapath ids to hand out. Ids are never reused, even after
    /// their record is removed: flows, conntrack entries and pinned maps
    /// may still name them. (Absent from older files: then one past the
    /// highest id in use.)
    #[serde(default)]
    pub next_net_id: u32,
    #[serde(default)]
    pub next_port_id: u32,
}

impl State {
    /// A network id never handed out before.
    pub fn allocate_net_id(&mut self) -> u32 {
        let used = self.networks.iter().map(|n| n.dp_id).max().unwrap_or(0);
        let id = self.next_net_id.max(used + 1);
        self.next_net_id = id + 1;
        id
    }

    /// A port id never handed out before (ports of every network and
    /// endpoint share one space).
    pub fn allocate_port_id(&mut self) -> u32 {
        let used = self.port_ids().max().unwrap_or(0);
        let id = self.next_port_id.max(used + 1);
        self.next_port_id = id + 1;
        id
    }

    /// Every port id the records hold.
    pub fn port_ids(&self) -> impl Iterator<Item = u32> + '_ {
        let nets = self
            .networks
            .iter()
            .flat_map(|n| n.host_port_id.into_iter().chain(n.uplink_port_id));
        nets.chain(self.endpoints.iter().map(|e| e.port_id))
    }

    /// Gives ids to records saved before ids were kept: a network its own,
    /// a host port and an uplink port where the network has them, every
    /// endpoint a port. Returns whether any record changed (the state must
    /// then be saved, so the ids stay).
    pub fn assign_missing_ids(&mut self) -> bool {
        let mut changed = false;
        for i in 0..self.networks.len() {
            if self.networks[i].dp_id == 0 {
                self.networks[i].dp_id = self.allocate_net_id();
                changed = true;
            }
            let net = &self.networks[i];
            let needs_host = net.host_ifname.is_some() && net.host_port_id.is_none();
            // Whether the options name an uplink; a record whose options do
            // not parse is refused later, and has no port to number.
            let needs_uplink = net.uplink_port_id.is_none()
                && (net.driver.tunnel()
                    || super::NetworkOptions::for_driver(net.driver, &net.options)
                        .is_ok_and(|o| o.interface.is_some()));
            if needs_host {
                self.networks[i].host_port_id = Some(self.allocate_port_id());
                changed = true;
            }
            if needs_uplink {
                self.networks[i].uplink_port_id = Some(self.allocate_port_id());
                changed = true;
            }
        }
        for i in 0..self.endpoints.len() {
            if self.endpoints[i].port_id == 0 {
                self.endpoints[i].port_id = self.allocate_port_id();
                changed = true;
            }
        }
        changed
    }

    pub fn network(&self, name: &str) -> Option<&NetworkRecord> {
        self.networks.iter().find(|n| n.name == name)
    }

    pub fn network_by_id(&self, id: &str) -> Option<&NetworkRecord> {
        self.networks.iter().find(|n| n.id == id)
    }

    pub fn endpoint(&self, name: &str) -> Option<&EndpointRecord> {
        self.endpoints.iter().find(|e| e.name == name)
    }

    pub fn endpoints_of<'a>(
        &'a self,
        network_id: &'a str,
    ) -> impl Iterator<Item = &'a EndpointRecord> {
        self.endpoints
            .iter()
            .filter(move |e| e.network_id == network_id)
    }
}

/// Where the state lives, and the only code that reads or writes it.
pub struct StateFile {
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path} is not a valid state file: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} has format version {found}; this vswitchd reads version {FORMAT_VERSION}")]
    Version { path: PathBuf, found: u32 },
}

impl StateFile {
    pub fn new(dir: &Path) -> StateFile {
        StateFile {
            path: dir.join("state.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    fn io_err(&self, op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StateError {
        let path = path.to_owned();
        move |source| StateError::Io { op, path, source }
    }

    /// The saved state, or an empty one if there is none yet.
    pub fn load(&self) -> Result<State, StateError> {
        let text = match fs::read(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(State {
                    version: FORMAT_VERSION,
                    ..State::default()
                })
            }
            Err(e) => return Err(self.io_err("read", &self.path)(e)),
        };
        let state: State = serde_json::from_slice(&text).map_err(|source| StateError::Corrupt {
            path: self.path.clone(),
            source,
        })?;
        if state.version != FORMAT_VERSION {
            return Err(StateError::Version {
                path: self.path.clone(),
                found: state.version,
            });
        }
        Ok(state)
    }

    /// Replaces the saved state atomically.
    pub fn save(&self, state: &State) -> Result<(), StateError> {
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(state).expect("state serializes");
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(self.io_err("create", &tmp))?;
        file.write_all(&text).map_err(self.io_err("write", &tmp))?;
        file.sync_all().map_err(self.io_err("fsync", &tmp))?;
        fs::rename(&tmp, &self.path).map_err(self.io_err("rename", &self.path))?;
        // The new state is in place once renamed; a failed directory fsync
        // only weakens its durability across a power cut, so it is logged
        // rather than reported as a failed change (which callers undo).
        let dir = self.path.parent().unwrap_or(Path::new("."));
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            tracing::warn!(dir = %dir.display(), error = %e, "fsync of the state directory failed");
        }
        Ok(())
    }
}

mod mac {
    use super::MacAddr;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mac: &MacAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(mac)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<MacAddr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|_| D::Error::custom(format!("bad MAC '{s}'")))
    }
}

mod opt_mac {
    use super::MacAddr;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mac: &Option<MacAddr>, s: S) -> Result<S::Ok, S::Error> {
        match mac {
            Some(m) => super::mac::serialize(m, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<MacAddr>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super::mac")] MacAddr);
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> State {
        State {
            version: FORMAT_VERSION,
            networks: vec![NetworkRecord {
                id: "n-1".into(),
                name: "lab".into(),
                driver: Driver::Internal,
                subnet4: Some("10.9.0.0/24".parse().unwrap()),
                gateway4: Some(Ipv4Addr::new(10, 9, 0, 1)),
                subnet6: None,
                gateway6: None,
                mtu: 1500,
                mac_pool: MacPool::DEFAULT,
                options: BTreeMap::new(),
                parsed: NetworkOptions::default(),
                host_ifname: Some("vsh12345678".into()),
                host_mac: Some(MacAddr([2, 0x15, 0x5d, 1, 2, 3])),
                dp_id: 1,
                host_port_id: Some(1),
                uplink_port_id: None,
                policies: Vec::new(),
                labels: BTreeMap::new(),
                mappings: Vec::new(),
            }],
            endpoints: vec![EndpointRecord {
                id: "e-1".into(),
                name: "ep1".into(),
                network_id: "n-1".into(),
                netns: "ns1".into(),
                ifname: "eth0".into(),
                mac: MacAddr([2, 0x15, 0x5d, 1, 2, 4]),
                ipv4: Some(Ipv4Addr::new(10, 9, 0, 2)),
                ipv6: None,
                allow_spoofing: false,
                port_id: 2,
                dhcp_guard: true,
                router_guard: false,
                default_block: false,
                handoff: false,
                labels: BTreeMap::new(),
                backend: crate::api::Backend::Veth,
                mirror: crate::api::PortMirroring::Source,
                policies: vec![PolicyRecord {
                    id: "allow-web".into(),
                    document: serde_json::json!({"Type": "ACL", "Settings": {"Action": "Allow"}}),
                }],
            }],
            next_net_id: 2,
            next_port_id: 3,
        }
    }

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vswitch-state-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn round_trip() {
        let dir = tempdir("rt");
        let file = StateFile::new(&dir);
        assert_eq!(file.load().unwrap().networks.len(), 0);
        let state = sample();
        file.save(&state).unwrap();
        assert_eq!(file.load().unwrap(), state);
        assert!(!dir.join("state.json.tmp").exists());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn ids_are_assigned_to_old_records_and_never_reused() {
        let mut old = sample();
        old.networks[0].dp_id = 0;
        old.networks[0].host_port_id = None;
        old.endpoints[0].port_id = 0;
        old.next_net_id = 0;
        old.next_port_id = 0;
        // As a file from before ids were kept reads.
        let text = serde_json::to_value(&old).unwrap();
        let mut text = text.as_object().unwrap().clone();
        text.remove("next_net_id");
        text.remove("next_port_id");
        let mut loaded: State = serde_json::from_value(text.into()).unwrap();
        assert_eq!(loaded, old);
        assert!(loaded.assign_missing_ids());
        assert!(!loaded.assign_missing_ids());
        assert_eq!(loaded.networks[0].dp_id, 1);
        assert_eq!(loaded.networks[0].host_port_id, Some(1));
        assert_eq!(loaded.endpoints[0].port_id, 2);
        // Removing the endpoint does not free its id.
        loaded.endpoints.clear();
        assert_eq!(loaded.allocate_port_id(), 3);
        loaded.networks.clear();
        assert_eq!(loaded.allocate_net_id(), 2);
    }

    #[test]
    fn corrupt_and_future_files_are_refused() {
        let dir = tempdir("bad");
        let file = StateFile::new(&dir);
        fs::write(file.path(), b"{not json").unwrap();
        assert!(matches!(file.load(), Err(StateError::Corrupt { .. })));
        fs::write(
            file.path(),
            br#"{"version":99,"networks":[],"endpoints":[]}"#,
        )
        .unwrap();
        assert!(matches!(
            file.load(),
            Err(StateError::Version { found: 99, .. })
        ));
        fs::remove_dir_all(dir).unwrap();
    }
}
