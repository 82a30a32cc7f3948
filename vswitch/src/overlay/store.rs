//! The overlay's shared store: networks and CA->PA mappings in etcd, shared
//! by every host of an overlay.
//!
//! # Contract
//!
//! The daemon is synchronous, so [`Store`] is a blocking handle over a
//! thread of its own that runs a current-thread tokio runtime for the etcd
//! client (`etcd-client`, etcd's v3 gRPC API). Every blocking call returns
//! within [`CALL_DEADLINE`], whatever etcd does: a change that cannot reach
//! etcd in time is *queued* (kept in the store's desired set) and published
//! when etcd answers again. [`Store::start`] returns at once even when etcd is
//! down; the store then keeps trying in the background.
//!
//! What other hosts do reaches the sink as [`Event`]s, in order, from a
//! thread of their own (so a sink that takes the controller's lock cannot
//! hold up a call made under that lock). The sink sees this host's records
//! too: it gets the whole picture, as etcd has it.
//!
//! * Networks are not on any lease: they outlive the host that defined them.
//! * Mappings hang on this host's lease (kept alive every ttl/3). A clean
//!   [`Store::stop`] revokes it, so the others drop this host's mappings at
//!   once; a crash leaves them until the lease expires.
//! * A mapping is claimed by a transaction: granted only if the key is absent
//!   or already this host's, never settled by the last writer.
//! * The store keeps a desired set: every mapping it holds, and the network
//!   writes and releases etcd has not taken yet. A mapping of this host's
//!   that disappears from etcd while it still holds it (deleted by hand, or
//!   its lease lost) is claimed again.
//!
//! # Keys
//!
//! Under `prefix` (default [`DEFAULT_PREFIX`], versioned so that a later
//! schema can live beside this one):
//!
//! ```text
//! {prefix}networks/{name}        {"v":1,"name":...,"spec":{...}}
//! {prefix}mappings/{vsid}/{ca}   {"v":1,"vsid":...,"ca":...,"mac":...,"pa":...,"host":...}
//! ```
//!
//! `ca` is the address in Rust's canonical text form (RFC 5952 for IPv6),
//! so one address has one key. A key or value under the prefix that this
//! version does not understand is skipped with a warning, never fatal.
//!
//! # Reconnect and resync
//!
//! When a call, the watch or a keepalive fails, the store counts itself
//! disconnected, emits `Connected(false)` and retries with backoff. On each
//! (re)connect it: keeps its lease if etcd still has it, or grants a new
//! one; republishes its desired set (pending network writes, pending
//! releases, and every mapping it holds, claimed by transaction again; a
//! claim someone else took meanwhile is dropped with a warning and a
//! [`Event::Conflict`]); reads everything under the prefix at one revision R
//! and emits it as a [`Event::Snapshot`] that replaces what the sink knew;
//! watches from R + 1, so nothing is missed or seen twice; then emits
//! `Connected(true)`. A watch that etcd cancels because R + 1 was compacted
//! away takes a new snapshot.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue,
    LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
    WatchStream,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc as tokio_mpsc;
use tokio::time::{timeout, Instant};

/// Where keys live unless configured otherwise.
pub const DEFAULT_PREFIX: &str = "/vswitch/v1/";
/// A host's lease unless configured otherwise.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// The longest any blocking call of [`Store`] waits.
pub const CALL_DEADLINE: Duration = Duration::from_secs(2);
/// One etcd round trip, inside the store; shorter than [`CALL_DEADLINE`] so
/// that a caller hears the outcome (or "queued") before its deadline.
const OP_TIMEOUT: Duration = Duration::from_millis(1500);
/// Reconnect backoff: first retry, and the longest wait between two.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Values of this schema carry `"v": 1`.
const SCHEMA: u64 = 1;
/// etcd refuses requests over 1.5 MiB; stay clear of it.
const MAX_VALUE: usize = 1 << 20;
/// Optimistic transactions retried this often before giving up.
const TXN_ATTEMPTS: usize = 8;

/// How to reach etcd and who this host is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// etcd client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// This host's id: 1-64 of `[A-Za-z0-9._-]`.
    pub host_id: String,
    /// The lease this host's mappings hang on (whole seconds, at least 1;
    /// etcd raises it to its own minimum, 2 s with default timings).
    pub lease_ttl: Duration,
    /// Every key is under this prefix; it ends with `/`.
    pub prefix: String,
}

impl StoreConfig {
    /// A configuration with the default lease TTL and prefix.
    pub fn new(endpoints: Vec<String>, host_id: impl Into<String>) -> Self {
        StoreConfig {
            endpoints,
            host_id: host_id.into(),
            lease_ttl: DEFAULT_LEASE_TTL,
            prefix: DEFAULT_PREFIX.to_string(),
        }
    }

    fn validate(&self) -> Result<(), StoreError> {
        check_host_id(&self.host_id)?;
        if self.endpoints.is_empty() {
            return Err(StoreError::Invalid(
                "no etcd endpoint given: pass at least one URL such as http://127.0.0.1:2379"
                    .into(),
            ));
        }
        for e in &self.endpoints {
            let rest = e.strip_prefix("http://").ok_or_else(|| {
                StoreError::Invalid(format!(
                    "etcd endpoint '{e}' is not an http:// URL (TLS is not supported yet)"
                ))
            })?;
            if rest.is_empty() || rest.contains(char::is_whitespace) {
                return Err(StoreError::Invalid(format!(
                    "etcd endpoint '{e}' names no host"
                )));
            }
        }
        if self.lease_ttl < Duration::from_secs(1) || self.lease_ttl.subsec_nanos() != 0 {
            return Err(StoreError::Invalid(format!(
                "lease TTL {:?} is not a whole number of seconds, at least 1",
                self.lease_ttl
            )));
        }
        let p = &self.prefix;
        if !p.starts_with('/') || !p.ends_with('/') || p.contains(char::is_whitespace) {
            return Err(StoreError::Invalid(format!(
                "key prefix '{p}' must start and end with '/' and hold no spaces"
            )));
        }
        Ok(())
    }
}

/// A network definition as shared between hosts: opaque JSON to the store
/// (the daemon stores a `vswitch_api::NetworkCreate`); keyed by name.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedNetwork {
    pub name: String,
    pub spec: serde_json::Value,
}

/// One CA->PA mapping record: an endpoint's customer address on a virtual
/// subnet, and the provider address of the host that has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub vsid: u32,
    pub ca: IpAddr,
    pub mac: [u8; 6],
    pub pa: Ipv4Addr,
    pub host: String,
}

/// What the sink hears, in the order etcd saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The full picture after a (re)connect: every network and mapping etcd
    /// holds. Replaces what the sink knew.
    Snapshot {
        networks: Vec<SharedNetwork>,
        mappings: Vec<Mapping>,
    },
    NetworkPut(SharedNetwork),
    NetworkGone(String),
    MappingPut(Mapping),
    MappingGone {
        vsid: u32,
        ca: IpAddr,
    },
    /// A claim this host made while etcd was out of reach (answered
    /// [`Claim::Queued`]) turned out to be `host`'s when etcd returned; this
    /// host dropped it.
    Conflict {
        vsid: u32,
        ca: IpAddr,
        host: String,
    },
    /// Connection state changed: `true` once in sync and watching.
    Connected(bool),
}

/// How a claim went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// etcd holds the mapping as this host's.
    Granted,
    /// etcd did not answer in time: accepted locally, published (by
    /// transaction) when it returns; a conflict then is an [`Event::Conflict`].
    Queued,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("the address is already claimed by host '{host}'")]
    Taken { host: String },
    #[error("{0}")]
    Invalid(String),
    #[error("the overlay store is unavailable: {0}")]
    Unavailable(String),
}

/// Host ids: 1-64 of `[A-Za-z0-9._-]`.
pub fn check_host_id(id: &str) -> Result<(), StoreError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "'{id}' is not a valid host id: 1-64 letters, digits, '.', '_' or '-'"
        )))
    }
}

/// Network names, by the control plane's rule: 1-64 of `[A-Za-z0-9_.-]`,
/// starting with a letter or digit.
pub fn check_network_name(name: &str) -> Result<(), StoreError> {
    let ok = crate::api::is_valid_name(name);
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "'{name}' is not a valid network name: 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )))
    }
}

/// The largest VSID: a VXLAN network identifier has 24 bits.
pub const MAX_VSID: u32 = 0xFF_FFFF;

fn check_mapping(m: &Mapping) -> Result<(), StoreError> {
    if m.vsid > MAX_VSID {
        return Err(StoreError::Invalid(format!(
            "VSID {} is over {MAX_VSID}, the largest VXLAN network identifier",
            m.vsid
        )));
    }
    if m.ca.is_unspecified() || m.ca.is_multicast() {
        return Err(StoreError::Invalid(format!(
            "customer address {} is not a unicast address",
            m.ca
        )));
    }
    if m.pa.is_unspecified() || m.pa.is_multicast() || m.pa.is_broadcast() {
        return Err(StoreError::Invalid(format!(
            "provider address {} is not a unicast address",
            m.pa
        )));
    }
    check_host_id(&m.host)
}

// ---------------------------------------------------------------------------
// Keys and values. Pure functions, unit-tested without etcd.

/// What a key under the prefix names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyRef {
    Network(String),
    Mapping { vsid: u32, ca: IpAddr },
}

fn network_key(prefix: &str, name: &str) -> String {
    format!("{prefix}networks/{name}")
}

fn mapping_key(prefix: &str, vsid: u32, ca: IpAddr) -> String {
    format!("{prefix}mappings/{vsid}/{ca}")
}

/// Parses a key under `prefix`; refuses anything this schema did not write
/// (non-canonical numbers or addresses included, so one record has one key).
fn parse_key(prefix: &str, key: &[u8]) -> Result<KeyRef, String> {
    let key = std::str::from_utf8(key).map_err(|_| "key is not UTF-8".to_string())?;
    let rest = key
        .strip_prefix(prefix)
        .ok_or_else(|| format!("key '{key}' is outside {prefix}"))?;
    if let Some(name) = rest.strip_prefix("networks/") {
        check_network_name(name).map_err(|e| e.to_string())?;
        return Ok(KeyRef::Network(name.to_string()));
    }
    if let Some(m) = rest.strip_prefix("mappings/") {
        let (vsid, ca) = m
            .split_once('/')
            .ok_or_else(|| format!("mapping key '{key}' has no address"))?;
        let vsid_n: u32 = vsid
            .parse()
            .map_err(|_| format!("mapping key '{key}': '{vsid}' is not a VSID"))?;
        let ca_ip: IpAddr = ca
            .parse()
            .map_err(|_| format!("mapping key '{key}': '{ca}' is not an IP address"))?;
        if vsid_n.to_string() != vsid || ca_ip.to_string() != ca || vsid_n > MAX_VSID {
            return Err(format!("mapping key '{key}' is not in canonical form"));
        }
        return Ok(KeyRef::Mapping {
            vsid: vsid_n,
            ca: ca_ip,
        });
    }
    Err(format!("key '{key}' is of no kind this version knows"))
}

#[derive(Serialize, Deserialize)]
struct NetworkValue {
    v: u64,
    name: String,
    spec: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct MappingValue {
    v: u64,
    vsid: u32,
    ca: IpAddr,
    mac: String,
    pa: Ipv4Addr,
    host: String,
}

fn format_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn encode_network(net: &SharedNetwork) -> Vec<u8> {
    serde_json::to_vec(&NetworkValue {
        v: SCHEMA,
        name: net.name.clone(),
        spec: net.spec.clone(),
    })
    .expect("a JSON value serializes")
}

fn encode_mapping(m: &Mapping) -> Vec<u8> {
    serde_json::to_vec(&MappingValue {
        v: SCHEMA,
        vsid: m.vsid,
        ca: m.ca,
        mac: format_mac(&m.mac),
        pa: m.pa,
        host: m.host.clone(),
    })
    .expect("a mapping serializes")
}

/// A record as read back from etcd.
#[derive(Debug, Clone, PartialEq)]
enum Record {
    Network(SharedNetwork),
    Mapping(Mapping),
}

/// Checks the schema version first, so that a record of a later schema is
/// named as such rather than as malformed.
fn check_version(value: &[u8]) -> Result<(), String> {
    let raw: serde_json::Value =
        serde_json::from_slice(value).map_err(|e| format!("value is not JSON: {e}"))?;
    match raw.get("v").and_then(serde_json::Value::as_u64) {
        Some(SCHEMA) => Ok(()),
        Some(v) => Err(format!("value is of schema version {v}, not {SCHEMA}")),
        None => Err("value has no schema version \"v\"".into()),
    }
}

fn decode(key: &KeyRef, value: &[u8]) -> Result<Record, String> {
    check_version(value)?;
    match key {
        KeyRef::Network(name) => {
            let v: NetworkValue =
                serde_json::from_slice(value).map_err(|e| format!("bad network value: {e}"))?;
            if &v.name != name {
                return Err(format!(
                    "network value names '{}', its key '{name}'",
                    v.name
                ));
            }
            Ok(Record::Network(SharedNetwork {
                name: v.name,
                spec: v.spec,
            }))
        }
        KeyRef::Mapping { vsid, ca } => {
            let v: MappingValue =
                serde_json::from_slice(value).map_err(|e| format!("bad mapping value: {e}"))?;
            if v.vsid != *vsid || v.ca != *ca {
                return Err(format!(
                    "mapping value is for {}/{}, its key for {vsid}/{ca}",
                    v.vsid, v.ca
                ));
            }
            let mac = parse_mac(&v.mac).ok_or_else(|| format!("bad MAC address '{}'", v.mac))?;
            let m = Mapping {
                vsid: v.vsid,
                ca: v.ca,
                mac,
                pa: v.pa,
                host: v.host,
            };
            check_mapping(&m).map_err(|e| e.to_string())?;
            Ok(Record::Mapping(m))
        }
    }
}

/// A key and value read from etcd, or why it is skipped.
fn decode_kv(prefix: &str, kv: &KeyValue) -> Result<Record, String> {
    let key = parse_key(prefix, kv.key())?;
    decode(&key, kv.value())
}

/// Who owns a mapping record, from its value alone (for a claim's
/// transaction, which must not take over a record it cannot read).
fn owner_of(value: &[u8]) -> Option<String> {
    check_version(value).ok()?;
    let v: MappingValue = serde_json::from_slice(value).ok()?;
    Some(v.host)
}

// ---------------------------------------------------------------------------
// The blocking handle.

/// What the callers and the store's thread share: the desired set. Never
/// held across an await.
#[derive(Default)]
struct Desired {
    /// Whether the store's thread is publishing changes as they come (then a
    /// call hands its change to the thread), or not (then the change waits
    /// here for the next resync, which `dirty` tells to look again).
    live: bool,
    dirty: bool,
    seq: u64,
    /// Every mapping this host holds, by (vsid, ca), with the sequence
    /// number of the call that set it.
    mappings: BTreeMap<(u32, IpAddr), (u64, Mapping)>,
    /// Releases not yet done in etcd.
    releases: BTreeMap<(u32, IpAddr), u64>,
    /// Network writes not yet done in etcd: a definition, or `None` to delete.
    networks: BTreeMap<String, (u64, Option<SharedNetwork>)>,
}

struct Shared {
    desired: Mutex<Desired>,
    connected: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Desired> {
        self.desired.lock().unwrap_or_else(|p| p.into_inner())
    }
}

type Reply<T> = std_mpsc::SyncSender<Result<T, StoreError>>;

enum Command {
    Claim {
        key: (u32, IpAddr),
        seq: u64,
        reply: Reply<Claim>,
    },
    Release {
        key: (u32, IpAddr),
        seq: u64,
        reply: Reply<()>,
    },
    /// Publish the pending write of this network, if any.
    Network {
        name: String,
        reply: Reply<()>,
    },
    Stop {
        revoke: bool,
    },
}

/// Hooks the tests use to make rare orders of events happen on demand.
#[derive(Default)]
struct Hooks {
    /// Runs once, between a snapshot (at the revision given) and the watch
    /// that starts after it.
    #[cfg(test)]
    before_watch: Option<Box<dyn FnOnce(i64) + Send>>,
}

/// The etcd-backed store; see the module documentation.
pub struct Store {
    host_id: String,
    shared: Arc<Shared>,
    commands: tokio_mpsc::UnboundedSender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl Store {
    /// Starts the store's thread and returns at once; the store connects
    /// (and reconnects) in the background. Refuses a bad configuration.
    pub fn start(
        cfg: StoreConfig,
        sink: Box<dyn Fn(Event) + Send + 'static>,
    ) -> Result<Store, StoreError> {
        Self::start_with(cfg, sink, Hooks::default())
    }

    fn start_with(
        cfg: StoreConfig,
        sink: Box<dyn Fn(Event) + Send + 'static>,
        hooks: Hooks,
    ) -> Result<Store, StoreError> {
        cfg.validate()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot start the store's runtime: {e}"))
            })?;
        let shared = Arc::new(Shared {
            desired: Mutex::new(Desired::default()),
            connected: AtomicBool::new(false),
        });
        let (events, events_rx) = std_mpsc::channel::<Event>();
        std::thread::Builder::new()
            .name("store-events".into())
            .spawn(move || {
                for ev in events_rx {
                    sink(ev);
                }
            })
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot start the store's event thread: {e}"))
            })?;
        let (commands, commands_rx) = tokio_mpsc::unbounded_channel();
        let host_id = cfg.host_id.clone();
        let worker = Worker {
            cfg,
            shared: shared.clone(),
            events,
            commands: commands_rx,
            lease: None,
            announced: false,
            hooks,
        };
        let thread = std::thread::Builder::new()
            .name("store".into())
            .spawn(move || runtime.block_on(worker.run()))
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot start the store's thread: {e}"))
            })?;
        Ok(Store {
            host_id,
            shared,
            commands,
            thread: Some(thread),
        })
    }

    /// Defines (or redefines) a network for every host. Not on the lease:
    /// networks outlive hosts. Queued when etcd is out of reach.
    pub fn put_network(&self, net: &SharedNetwork) -> Result<(), StoreError> {
        check_network_name(&net.name)?;
        if encode_network(net).len() > MAX_VALUE {
            return Err(StoreError::Invalid(format!(
                "network '{}' is over {MAX_VALUE} bytes as JSON",
                net.name
            )));
        }
        self.network_write(net.name.clone(), Some(net.clone()))
    }

    /// Removes a network's shared definition. Queued when etcd is out of
    /// reach.
    pub fn delete_network(&self, name: &str) -> Result<(), StoreError> {
        check_network_name(name)?;
        self.network_write(name.to_string(), None)
    }

    fn network_write(&self, name: String, op: Option<SharedNetwork>) -> Result<(), StoreError> {
        {
            let mut d = self.shared.lock();
            d.seq += 1;
            let seq = d.seq;
            d.networks.insert(name.clone(), (seq, op));
            if !d.live {
                d.dirty = true;
                return Ok(());
            }
        }
        self.call(|reply| Command::Network { name, reply })
            .unwrap_or(Ok(()))
    }

    /// Claims `m.ca` on `m.vsid` for this host, on its lease: granted only if
    /// etcd has no record for the address or has this host's (a transaction),
    /// otherwise `Taken` by the host that has it. `m.host` must be this host.
    pub fn claim(&self, m: &Mapping) -> Result<Claim, StoreError> {
        check_mapping(m)?;
        if m.host != self.host_id {
            return Err(StoreError::Invalid(format!(
                "mapping is for host '{}', this store is host '{}'",
                m.host, self.host_id
            )));
        }
        let key = (m.vsid, m.ca);
        let seq = {
            let mut d = self.shared.lock();
            d.seq += 1;
            let seq = d.seq;
            d.mappings.insert(key, (seq, m.clone()));
            d.releases.remove(&key);
            if !d.live {
                d.dirty = true;
                return Ok(Claim::Queued);
            }
            seq
        };
        self.call(|reply| Command::Claim { key, seq, reply })
            .unwrap_or(Ok(Claim::Queued))
    }

    /// Gives up this host's claim on (vsid, ca); deletes the record only if
    /// it is this host's (a transaction), so releasing what another host
    /// holds changes nothing. Queued when etcd is out of reach.
    pub fn release(&self, vsid: u32, ca: IpAddr) -> Result<(), StoreError> {
        let key = (vsid, ca);
        let seq = {
            let mut d = self.shared.lock();
            d.seq += 1;
            let seq = d.seq;
            d.mappings.remove(&key);
            d.releases.insert(key, seq);
            if !d.live {
                d.dirty = true;
                return Ok(());
            }
            seq
        };
        self.call(|reply| Command::Release { key, seq, reply })
            .unwrap_or(Ok(()))
    }

    /// Whether the store is in sync with etcd and watching it.
    pub fn connected(&self) -> bool {
        self.shared.connected.load(Ordering::SeqCst)
    }

    /// Stops cleanly: revokes the lease, so the other hosts drop this host's
    /// mappings at once. Events already sent may still reach the sink.
    pub fn stop(self) {
        // Drop does it.
    }

    /// Ends the store as a crash would: keepalives stop and the lease is
    /// left to expire, taking this host's mappings with it only then.
    pub fn abandon(mut self) {
        self.shutdown(false);
    }

    fn shutdown(&mut self, revoke: bool) {
        if let Some(thread) = self.thread.take() {
            let _ = self.commands.send(Command::Stop { revoke });
            let _ = thread.join();
        }
    }

    /// Hands a command to the store's thread and waits for its answer until
    /// the deadline. `None`: no answer in time (the change stays queued);
    /// `Some(Err(Unavailable))`: the thread is gone.
    fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Option<Result<T, StoreError>> {
        let (reply, answer) = std_mpsc::sync_channel(1);
        if self.commands.send(make(reply)).is_err() {
            return Some(Err(StoreError::Unavailable("the store has stopped".into())));
        }
        match answer.recv_timeout(CALL_DEADLINE) {
            Ok(r) => Some(r),
            Err(std_mpsc::RecvTimeoutError::Timeout) => None,
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                Some(Err(StoreError::Unavailable("the store has stopped".into())))
            }
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.shutdown(true);
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("host_id", &self.host_id)
            .field("connected", &self.connected())
            .finish()
    }
}

// ---------------------------------------------------------------------------
// The store's thread.

/// Why etcd could not be used. Every one of these counts as "etcd out of
/// reach": the store goes back to reconnecting.
#[derive(Debug)]
enum Fault {
    Etcd(etcd_client::Error),
    Timeout(&'static str),
    Closed(&'static str),
    /// etcd says the lease is gone (it expired while keepalives did not get
    /// through): not an outage, but the mappings must be claimed again.
    LeaseLost(i64),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Etcd(e) => write!(f, "{e}"),
            Fault::Timeout(what) => write!(f, "{what}: no answer within {OP_TIMEOUT:?}"),
            Fault::Closed(what) => write!(f, "{what} closed"),
            Fault::LeaseLost(id) => write!(f, "lease {id} expired"),
        }
    }
}

/// One etcd round trip with the store's deadline.
async fn op<T>(
    what: &'static str,
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Fault> {
    match timeout(OP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Fault::Etcd(e)),
        Err(_) => Err(Fault::Timeout(what)),
    }
}

/// How a claim's transaction went.
enum ClaimOutcome {
    Granted,
    Taken(String),
}

/// A live connection: the client, the watch and the lease's keepalive.
struct Session {
    client: Client,
    lease: i64,
    watch: WatchStream,
    keeper: LeaseKeeper,
    keepalives: LeaseKeepAliveStream,
    last_keepalive: Instant,
}

/// Why the connected loop ended.
enum Exit {
    Stop { revoke: bool },
    Down(Fault),
    Resnapshot,
}

struct Worker {
    cfg: StoreConfig,
    shared: Arc<Shared>,
    events: std_mpsc::Sender<Event>,
    commands: tokio_mpsc::UnboundedReceiver<Command>,
    /// The lease this host's mappings hang on, kept across reconnects while
    /// etcd keeps it.
    lease: Option<i64>,
    /// Whether `Connected(true)` is the last connection event sent.
    announced: bool,
    #[cfg_attr(not(test), allow(dead_code))]
    hooks: Hooks,
}

impl Worker {
    async fn run(mut self) {
        let mut backoff = RETRY_FIRST;
        let mut warned = false;
        loop {
            match self.connect().await {
                Ok(session) => {
                    backoff = RETRY_FIRST;
                    match self.serve(session).await {
                        (Exit::Stop { revoke }, session) => {
                            if revoke {
                                self.revoke(session).await;
                            }
                            return;
                        }
                        (Exit::Down(Fault::LeaseLost(lease)), _) => {
                            tracing::warn!(
                                lease,
                                "etcd expired this host's lease; claiming again on a new one"
                            );
                            self.lease = None;
                            self.go_down();
                            continue;
                        }
                        (Exit::Down(fault), _) => {
                            tracing::warn!(error = %fault, "etcd out of reach; changes are queued until it returns");
                            warned = true;
                            self.go_down();
                        }
                        (Exit::Resnapshot, _) => unreachable!("serve handles resnapshots"),
                    }
                }
                Err(fault) => {
                    self.go_down();
                    if warned {
                        tracing::debug!(error = %fault, "etcd still out of reach");
                    } else {
                        tracing::warn!(error = %fault, "etcd out of reach; changes are queued until it returns");
                        warned = true;
                    }
                }
            }
            // Wait before the next try, answering calls meanwhile.
            let until = Instant::now() + backoff;
            backoff = (backoff * 2).min(RETRY_MAX);
            loop {
                tokio::select! {
                    cmd = self.commands.recv() => match cmd {
                        None => return,
                        Some(Command::Stop { revoke }) => {
                            if revoke && self.lease.is_some() {
                                // etcd may be back; one try, bounded.
                                if let Ok(mut client) = self.client().await {
                                    let id = self.lease.unwrap_or_default();
                                    let _ = op("lease revoke", client.lease_revoke(id)).await;
                                }
                            }
                            return;
                        }
                        Some(cmd) => answer_queued(cmd),
                    },
                    _ = tokio::time::sleep_until(until) => break,
                }
            }
        }
    }

    fn emit(&self, ev: Event) {
        let _ = self.events.send(ev);
    }

    fn go_down(&mut self) {
        self.shared.lock().live = false;
        self.shared.connected.store(false, Ordering::SeqCst);
        if self.announced {
            self.announced = false;
            self.emit(Event::Connected(false));
        }
    }

    async fn client(&self) -> Result<Client, Fault> {
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        op("connect", Client::connect(&self.cfg.endpoints, Some(opts))).await
    }

    /// Connects, keeps or renews the lease, republishes the desired set,
    /// snapshots and watches.
    async fn connect(&mut self) -> Result<Session, Fault> {
        let mut client = self.client().await?;
        let lease = match self.lease {
            Some(id) => {
                let ttl = op("lease lookup", client.lease_time_to_live(id, None)).await?;
                (ttl.ttl() > 0).then_some(id)
            }
            None => None,
        };
        let lease = match lease {
            Some(id) => id,
            None => {
                let ttl = self.cfg.lease_ttl.as_secs() as i64;
                let granted = op("lease grant", client.lease_grant(ttl, None)).await?;
                if let Some(old) = self.lease {
                    tracing::info!(
                        old_lease = old,
                        lease = granted.id(),
                        "lease expired while out of reach; granted a new one"
                    );
                }
                granted.id()
            }
        };
        self.lease = Some(lease);
        let (keeper, keepalives) = op("lease keepalive", client.lease_keep_alive(lease)).await?;
        self.republish(&mut client, lease).await?;
        let watch = self.snapshot_and_watch(&mut client).await?;
        self.shared.connected.store(true, Ordering::SeqCst);
        if !self.announced {
            self.announced = true;
            tracing::info!(lease, "in sync with etcd");
            self.emit(Event::Connected(true));
        }
        Ok(Session {
            client,
            lease,
            watch,
            keeper,
            keepalives,
            last_keepalive: Instant::now(),
        })
    }

    /// Publishes every queued change and every mapping held, until a pass
    /// finds nothing new; then calls go straight to this thread.
    async fn republish(&mut self, client: &mut Client, lease: i64) -> Result<(), Fault> {
        loop {
            let (mappings, releases, networks) = {
                let mut d = self.shared.lock();
                d.dirty = false;
                (d.mappings.clone(), d.releases.clone(), d.networks.clone())
            };
            for (key, seq) in releases {
                release_txn(client, &self.cfg, key).await?;
                let mut d = self.shared.lock();
                if d.releases.get(&key) == Some(&seq) {
                    d.releases.remove(&key);
                }
            }
            for (name, (seq, net)) in networks {
                write_network(client, &self.cfg, &name, net.as_ref()).await?;
                self.network_done(&name, seq);
            }
            for (key, (seq, m)) in mappings {
                if let ClaimOutcome::Taken(host) = claim_txn(client, &self.cfg, &m, lease).await? {
                    self.conflict(key, seq, host);
                }
            }
            let mut d = self.shared.lock();
            if !d.dirty {
                d.live = true;
                return Ok(());
            }
        }
    }

    fn network_done(&self, name: &str, seq: u64) {
        let mut d = self.shared.lock();
        if d.networks.get(name).is_some_and(|(s, _)| *s == seq) {
            d.networks.remove(name);
        }
    }

    /// A queued claim that etcd gives to another host: dropped, reported.
    fn conflict(&self, key: (u32, IpAddr), seq: u64, host: String) {
        let (vsid, ca) = key;
        {
            let mut d = self.shared.lock();
            if d.mappings.get(&key).is_some_and(|(s, _)| *s == seq) {
                d.mappings.remove(&key);
            }
        }
        tracing::warn!(vsid, %ca, %host, "queued claim lost: the address is another host's");
        self.emit(Event::Conflict { vsid, ca, host });
    }

    /// Reads everything under the prefix at one revision, emits it, and
    /// watches from the next revision; again if that one is compacted away.
    async fn snapshot_and_watch(&mut self, client: &mut Client) -> Result<WatchStream, Fault> {
        let prefix = self.cfg.prefix.clone();
        let got = op(
            "snapshot",
            client.get(prefix.as_bytes(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let revision = got.header().map(|h| h.revision()).unwrap_or(0);
        let mut networks = Vec::new();
        let mut mappings = Vec::new();
        for kv in got.kvs() {
            match decode_kv(&prefix, kv) {
                Ok(Record::Network(n)) => networks.push(n),
                Ok(Record::Mapping(m)) => mappings.push(m),
                Err(reason) => skip(kv.key(), &reason),
            }
        }
        tracing::debug!(
            revision,
            networks = networks.len(),
            mappings = mappings.len(),
            "snapshot"
        );
        self.emit(Event::Snapshot { networks, mappings });
        #[cfg(test)]
        if let Some(hook) = self.hooks.before_watch.take() {
            hook(revision);
        }
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        op("watch", client.watch(prefix.as_bytes(), Some(opts))).await
    }

    /// The connected loop: calls, watch events, keepalives.
    async fn serve(&mut self, mut s: Session) -> (Exit, Session) {
        let ttl = self.cfg.lease_ttl;
        let mut tick = tokio::time::interval(ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let exit = tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    None => Some(Exit::Stop { revoke: true }),
                    Some(Command::Stop { revoke }) => Some(Exit::Stop { revoke }),
                    Some(cmd) => self.command(&mut s, cmd).await.err().map(Exit::Down),
                },
                msg = s.watch.message() => match msg {
                    Ok(Some(resp)) => match self.watched(resp) {
                        Ok(lost) => self.reclaim(&mut s, lost).await.err().map(Exit::Down),
                        Err(exit) => Some(exit),
                    },
                    Ok(None) => Some(Exit::Down(Fault::Closed("watch"))),
                    Err(e) => Some(Exit::Down(Fault::Etcd(e))),
                },
                _ = tick.tick() => match op("keepalive", s.keeper.keep_alive()).await {
                    Ok(()) => None,
                    Err(f) => Some(Exit::Down(f)),
                },
                msg = s.keepalives.message() => match msg {
                    Ok(Some(resp)) if resp.ttl() > 0 => {
                        s.last_keepalive = Instant::now();
                        None
                    }
                    Ok(Some(_)) => Some(Exit::Down(Fault::LeaseLost(s.lease))),
                    Ok(None) => Some(Exit::Down(Fault::Closed("keepalive stream"))),
                    Err(e) => Some(Exit::Down(Fault::Etcd(e))),
                },
                _ = tokio::time::sleep_until(s.last_keepalive + ttl) => {
                    Some(Exit::Down(Fault::Timeout("keepalive")))
                }
            };
            match exit {
                None => {}
                Some(Exit::Resnapshot) => {
                    tracing::info!("watch fell behind a compaction; taking a new snapshot");
                    match self.snapshot_and_watch(&mut s.client).await {
                        Ok(w) => s.watch = w,
                        Err(f) => return (Exit::Down(f), s),
                    }
                }
                Some(exit) => return (exit, s),
            }
        }
    }

    /// One call, while connected. A fault leaves the change queued (the
    /// caller hears `Queued`/`Ok`) and takes the store back to reconnecting.
    async fn command(&mut self, s: &mut Session, cmd: Command) -> Result<(), Fault> {
        match cmd {
            Command::Claim { key, seq, reply } => {
                let m = match self.shared.lock().mappings.get(&key) {
                    Some((cur, m)) if *cur == seq => m.clone(),
                    // Superseded by a later call, which answers for itself.
                    _ => {
                        let _ = reply.send(Ok(Claim::Queued));
                        return Ok(());
                    }
                };
                match claim_txn(&mut s.client, &self.cfg, &m, s.lease).await {
                    Ok(ClaimOutcome::Granted) => {
                        let _ = reply.send(Ok(Claim::Granted));
                    }
                    Ok(ClaimOutcome::Taken(host)) => {
                        {
                            let mut d = self.shared.lock();
                            if d.mappings.get(&key).is_some_and(|(cur, _)| *cur == seq) {
                                d.mappings.remove(&key);
                            }
                        }
                        let _ = reply.send(Err(StoreError::Taken { host }));
                    }
                    Err(f) => {
                        let _ = reply.send(Ok(Claim::Queued));
                        return Err(f);
                    }
                }
            }
            Command::Release { key, seq, reply } => {
                let r = release_txn(&mut s.client, &self.cfg, key).await;
                let _ = reply.send(Ok(()));
                r?;
                let mut d = self.shared.lock();
                if d.releases.get(&key) == Some(&seq) {
                    d.releases.remove(&key);
                }
            }
            Command::Network { name, reply } => {
                let pending = self.shared.lock().networks.get(&name).cloned();
                if let Some((cur, net)) = pending {
                    let r = write_network(&mut s.client, &self.cfg, &name, net.as_ref()).await;
                    let _ = reply.send(Ok(()));
                    r?;
                    self.network_done(&name, cur);
                } else {
                    let _ = reply.send(Ok(()));
                }
            }
            Command::Stop { .. } => unreachable!("serve handles Stop"),
        }
        Ok(())
    }

    /// Watch events to the sink. `Ok`: the mappings of this host that were
    /// deleted by someone else; `Err` when the watch must be replaced.
    fn watched(&mut self, resp: etcd_client::WatchResponse) -> Result<Vec<(u32, IpAddr)>, Exit> {
        if resp.canceled() {
            if resp.compact_revision() > 0 {
                return Err(Exit::Resnapshot);
            }
            let reason = resp.cancel_reason().to_string();
            tracing::warn!(%reason, "etcd canceled the watch");
            return Err(Exit::Down(Fault::Closed("watch")));
        }
        let prefix = &self.cfg.prefix;
        let mut lost = Vec::new();
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = match parse_key(prefix, kv.key()) {
                Ok(k) => k,
                Err(reason) => {
                    skip(kv.key(), &reason);
                    continue;
                }
            };
            let event = match (ev.event_type(), key) {
                (EventType::Delete, KeyRef::Network(name)) => Event::NetworkGone(name),
                (EventType::Delete, KeyRef::Mapping { vsid, ca }) => {
                    // Ours and not released: deleted behind this host's back.
                    if self.shared.lock().mappings.contains_key(&(vsid, ca)) {
                        lost.push((vsid, ca));
                    }
                    Event::MappingGone { vsid, ca }
                }
                (EventType::Put, key) => match decode(&key, kv.value()) {
                    Ok(Record::Network(n)) => Event::NetworkPut(n),
                    Ok(Record::Mapping(m)) => Event::MappingPut(m),
                    Err(reason) => {
                        skip(kv.key(), &reason);
                        continue;
                    }
                },
            };
            self.emit(event);
        }
        Ok(lost)
    }

    /// Claims again what this host holds and etcd lost (deleted by hand, or
    /// on a lease that expired: then the claim fails and the resync that
    /// follows grants a new lease).
    async fn reclaim(&mut self, s: &mut Session, lost: Vec<(u32, IpAddr)>) -> Result<(), Fault> {
        for key in lost {
            let Some((seq, m)) = self.shared.lock().mappings.get(&key).cloned() else {
                continue;
            };
            tracing::info!(vsid = key.0, ca = %key.1, "this host's mapping was deleted; claiming it again");
            if let ClaimOutcome::Taken(host) =
                claim_txn(&mut s.client, &self.cfg, &m, s.lease).await?
            {
                self.conflict(key, seq, host);
            }
        }
        Ok(())
    }

    async fn revoke(&mut self, mut s: Session) {
        match op("lease revoke", s.client.lease_revoke(s.lease)).await {
            Ok(_) => tracing::info!(
                lease = s.lease,
                "lease revoked; this host's mappings are gone"
            ),
            Err(f) => {
                tracing::warn!(error = %f, "could not revoke the lease; it expires on its own")
            }
        }
        self.lease = None;
    }
}

/// A call that arrived while reconnecting: its change is in the desired
/// set already, so the next resync publishes it.
fn answer_queued(cmd: Command) {
    match cmd {
        Command::Claim { reply, .. } => {
            let _ = reply.send(Ok(Claim::Queued));
        }
        Command::Release { reply, .. } | Command::Network { reply, .. } => {
            let _ = reply.send(Ok(()));
        }
        Command::Stop { .. } => {}
    }
}

fn skip(key: &[u8], reason: &str) {
    let key = String::from_utf8_lossy(key);
    tracing::warn!(%key, %reason, "skipping a record this version does not understand");
}

fn first_kv(resp: &etcd_client::TxnResponse) -> Option<KeyValue> {
    resp.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().first().cloned(),
        _ => None,
    })
}

/// Claims by optimistic transaction: put if the key does not exist, or if
/// it is this host's as of the revision just read; never over another's.
async fn claim_txn(
    client: &mut Client,
    cfg: &StoreConfig,
    m: &Mapping,
    lease: i64,
) -> Result<ClaimOutcome, Fault> {
    let key = mapping_key(&cfg.prefix, m.vsid, m.ca);
    let value = encode_mapping(m);
    let put = || {
        TxnOp::put(
            key.as_bytes(),
            value.clone(),
            Some(PutOptions::new().with_lease(lease)),
        )
    };
    for _ in 0..TXN_ATTEMPTS {
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.as_bytes(),
                CompareOp::Equal,
                0,
            )])
            .and_then([put()])
            .or_else([TxnOp::get(key.as_bytes(), None)]);
        let resp = op("claim", client.txn(txn)).await?;
        if resp.succeeded() {
            return Ok(ClaimOutcome::Granted);
        }
        // Deleted between the compare and the read: try again.
        let Some(kv) = first_kv(&resp) else { continue };
        let Some(owner) = owner_of(kv.value()) else {
            skip(
                kv.key(),
                "unreadable record holds the address; not taking it over",
            );
            return Ok(ClaimOutcome::Taken("(unreadable record)".into()));
        };
        if owner != cfg.host_id {
            return Ok(ClaimOutcome::Taken(owner));
        }
        if kv.value() == value.as_slice() && kv.lease() == lease {
            return Ok(ClaimOutcome::Granted);
        }
        // Ours, but older (another MAC, or a lease of a previous run).
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_bytes(),
                CompareOp::Equal,
                kv.mod_revision(),
            )])
            .and_then([put()]);
        if op("claim", client.txn(txn)).await?.succeeded() {
            return Ok(ClaimOutcome::Granted);
        }
    }
    Err(Fault::Closed(
        "claim: the record kept changing under the transaction",
    ))
}

/// Deletes a mapping record only if it is this host's, as of the revision
/// read.
async fn release_txn(
    client: &mut Client,
    cfg: &StoreConfig,
    (vsid, ca): (u32, IpAddr),
) -> Result<(), Fault> {
    let key = mapping_key(&cfg.prefix, vsid, ca);
    for _ in 0..TXN_ATTEMPTS {
        let got = op("release", client.get(key.as_bytes(), None)).await?;
        let Some(kv) = got.kvs().first() else {
            return Ok(());
        };
        if owner_of(kv.value()).as_deref() != Some(cfg.host_id.as_str()) {
            return Ok(());
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_bytes(),
                CompareOp::Equal,
                kv.mod_revision(),
            )])
            .and_then([TxnOp::delete(key.as_bytes(), None)]);
        if op("release", client.txn(txn)).await?.succeeded() {
            return Ok(());
        }
    }
    Err(Fault::Closed(
        "release: the record kept changing under the transaction",
    ))
}

async fn write_network(
    client: &mut Client,
    cfg: &StoreConfig,
    name: &str,
    net: Option<&SharedNetwork>,
) -> Result<(), Fault> {
    let key = network_key(&cfg.prefix, name);
    match net {
        Some(net) => op("network put", client.put(key, encode_network(net), None))
            .await
            .map(drop),
        None => op("network delete", client.delete(key, None))
            .await
            .map(drop),
    }
}

#[cfg(test)]
mod tests;
