//! Docker's remote network driver (libnetwork's plugin protocol): what each
//! call of Docker means as requests to the controller.
//!
//! The contract. A Docker network made with `-d NAME` (the socket's name
//! under `/run/docker/plugins`) is a vswitch network; a container's
//! interface on it is a vswitch endpoint. Every call is translated into the
//! same [`Request`]s the CLI sends and answered from their [`Response`]s, so
//! validation is the controller's, once, and a refusal reaches `docker` as
//! `{"Err": "..."}` naming the Docker option at fault. Nothing is kept here:
//! Docker's IDs are labels on the records (`com.docker.network.id`,
//! `com.docker.endpoint.id`) in vswitchd's state file, so a restart of
//! either daemon loses nothing.
//!
//! Addresses come from Docker's IPAM (its `default` driver): `--subnet`,
//! `--gateway`, `--ip` and `--ip-range` mean what Docker users expect, and
//! vswitch only checks the addresses it is handed. Join hands Docker the
//! endpoint's vNIC by name in the host namespace (a hand-off endpoint,
//! `EndpointCreate::handoff`); Docker moves it into the sandbox, names it
//! `ethN` and gives it its addresses and routes, and moves it back before
//! DeleteEndpoint.

pub mod http;

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::api::{self, ApiError, Reply, Request, Response};
use crate::control::Controller;

/// Where Docker looks for a plugin called `vswitch`.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/vswitch.sock";
/// The label holding Docker's network ID on a vswitch network.
pub const NETWORK_LABEL: &str = "com.docker.network.id";
/// The label holding Docker's endpoint ID on a vswitch endpoint.
pub const ENDPOINT_LABEL: &str = "com.docker.endpoint.id";

const WINDOWS_NET: &str = "com.docker.network.windowsshim.";
const WINDOWS_EP: &str = "com.docker.endpoint.windowsshim.";
const GENERIC: &str = "com.docker.network.generic";
const PORTMAP: &str = "com.docker.network.portmap";
const MTU: &str = "com.docker.network.driver.mtu";

/// Whatever answers API requests: the controller, or a fake in tests.
pub trait Api: Send + Sync {
    fn call(&self, req: Request) -> Response;
}

impl Api for Mutex<Controller> {
    fn call(&self, req: Request) -> Response {
        tracing::debug!(request = ?req, "docker plugin request");
        self.lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .handle(req)
    }
}

/// A refusal, as Docker shows it (`Err`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverError(pub String);

type Result<T> = std::result::Result<T, DriverError>;

fn refuse(field: &str, message: impl std::fmt::Display) -> DriverError {
    DriverError(format!("vswitch: {field}: {message}"))
}

/// Answers one plugin call: `method` is the URL path without its slash
/// (`NetworkDriver.CreateNetwork`), `body` the JSON Docker posted. Returns
/// the HTTP status and the JSON to answer with.
pub fn answer(api: &dyn Api, method: &str, body: &[u8]) -> (u16, Value) {
    let result = match method {
        "Plugin.Activate" => Ok(json!({"Implements": ["NetworkDriver"]})),
        "NetworkDriver.GetCapabilities" => {
            Ok(json!({"Scope": "local", "ConnectivityScope": "local"}))
        }
        "NetworkDriver.CreateNetwork" => decode(body).and_then(|r| create_network(api, r)),
        "NetworkDriver.DeleteNetwork" => decode(body).and_then(|r| delete_network(api, r)),
        "NetworkDriver.CreateEndpoint" => decode(body).and_then(|r| create_endpoint(api, r)),
        "NetworkDriver.DeleteEndpoint" => decode(body).and_then(|r| delete_endpoint(api, r)),
        "NetworkDriver.Join" => decode(body).and_then(|r| join(api, r)),
        "NetworkDriver.EndpointOperInfo" => decode(body).and_then(|r| oper_info(api, r)),
        "NetworkDriver.ProgramExternalConnectivity" => {
            decode(body).and_then(|r| program_external(api, r))
        }
        // Leave: Docker moves the vNIC back itself. Revoke: port mappings
        // are the endpoint's policies (as in HNS) and go with it.
        "NetworkDriver.Leave" | "NetworkDriver.RevokeExternalConnectivity" => {
            decode::<EndpointRef>(body).map(|_| json!({}))
        }
        // Swarm (global scope) and node discovery: a local driver has
        // nothing to allocate and no use for other nodes.
        "NetworkDriver.AllocateNetwork" => Ok(json!({"Options": {}})),
        "NetworkDriver.FreeNetwork"
        | "NetworkDriver.DiscoverNew"
        | "NetworkDriver.DiscoverDelete" => Ok(json!({})),
        _ => {
            return (
                404,
                json!({"Err": format!("vswitch: {method}: not a call of the network driver protocol")}),
            )
        }
    };
    match result {
        Ok(v) => (200, v),
        Err(DriverError(e)) => {
            tracing::info!(method, error = %e, "docker plugin call refused");
            (500, json!({ "Err": e }))
        }
    }
}

fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        refuse(&path, format!("malformed request: {}", e.into_inner()))
    })
}

fn call(api: &dyn Api, req: Request, fields: &FieldNames) -> Result<Reply> {
    match api.call(req) {
        Response::Ok(reply) => Ok(reply),
        Response::Error(e) => Err(fields.error(&e)),
    }
}

/// How the controller's field names read in Docker's terms: the option
/// the user gave, or the `docker` flag.
#[derive(Default)]
struct FieldNames(BTreeMap<String, String>);

impl FieldNames {
    fn error(&self, e: &ApiError) -> DriverError {
        let field = e.field.as_deref().map(|f| {
            self.0
                .get(f)
                .cloned()
                .or_else(|| f.strip_prefix("options.").map(|o| format!("-o {o}")))
                .unwrap_or_else(|| f.to_owned())
        });
        match field {
            Some(f) => refuse(&f, &e.message),
            None => DriverError(format!("vswitch: {}", e.message)),
        }
    }

    fn set(&mut self, field: &str, docker: impl Into<String>) {
        self.0.insert(field.to_owned(), docker.into());
    }
}

// ---- networks ----

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct IpamData {
    #[serde(default)]
    pool: String,
    #[serde(default)]
    gateway: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateNetwork {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(default, rename = "IPv4Data")]
    ipv4_data: Option<Vec<IpamData>>,
    #[serde(default, rename = "IPv6Data")]
    ipv6_data: Option<Vec<IpamData>>,
    #[serde(default)]
    options: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NetworkRef {
    #[serde(rename = "NetworkID")]
    network_id: String,
}

/// A network's `-o` options as vswitch reads them.
#[derive(Debug, Default, PartialEq)]
struct NetworkOptions {
    driver: Option<String>,
    name: Option<String>,
    mtu: Option<u32>,
    mac_pool: Option<String>,
    outbound_nat: bool,
    outbound_nat_exceptions: Vec<String>,
    /// Options passed to the network as they are (`interface`, `vlanid`,
    /// `vsid`, and vswitch's own: `fdb_aging`, `nat_ports`...).
    options: BTreeMap<String, String>,
}

/// Reads `-o` options (Docker's generic options): vswitch's short names
/// and the Windows driver's long ones, which mean the same. Unknown
/// Windows options are refused here; anything else goes to the controller
/// as a network option, which refuses what it does not know.
fn network_options(
    generic: &Map<String, Value>,
    fields: &mut FieldNames,
) -> Result<NetworkOptions> {
    let mut out = NetworkOptions::default();
    for (key, value) in generic {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return Err(refuse(&format!("-o {key}"), "expected a string")),
        };
        let short = key.strip_prefix(WINDOWS_NET).unwrap_or(key);
        let windows = short.len() != key.len();
        let flag = format!("-o {key}");
        match short {
            "type" if !windows => {
                fields.set("driver", &flag);
                out.driver = Some(text);
            }
            "networkname" => {
                fields.set("name", &flag);
                out.name = Some(text);
            }
            "macpool" => {
                fields.set("mac_pool", &flag);
                out.mac_pool = Some(windows_mac_pool(&text));
            }
            "enable_outboundnat" => {
                out.outbound_nat = parse_bool(&text).ok_or_else(|| {
                    refuse(&flag, format!("expected true or false, got '{text}'"))
                })?;
            }
            "outboundnat_exceptions" => {
                out.outbound_nat_exceptions = text
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
            }
            "interface" | "vlanid" | "vsid" => {
                fields.set(&format!("options.{short}"), &flag);
                out.options.insert(short.to_owned(), text);
            }
            _ if windows => {
                return Err(refuse(
                    &flag,
                    "not an option vswitch supports; it knows interface, vlanid, vsid, macpool, \
                     enable_outboundnat, outboundnat_exceptions and networkname",
                ))
            }
            _ if key == MTU => {
                fields.set("mtu", &flag);
                let mtu = text
                    .parse()
                    .map_err(|_| refuse(&flag, format!("'{text}' is not an MTU")))?;
                out.mtu = Some(mtu);
            }
            _ => {
                out.options.insert(key.clone(), text);
            }
        }
    }
    if !out.outbound_nat_exceptions.is_empty() && !out.outbound_nat {
        return Err(refuse(
            &format!("-o {WINDOWS_NET}outboundnat_exceptions"),
            format!("needs -o {WINDOWS_NET}enable_outboundnat=true"),
        ));
    }
    Ok(out)
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Windows writes a MAC pool as twelve dash-separated octets
/// (`00-15-5D-52-C0-00-00-15-5D-52-CF-FF`); vswitch as `START-END` with
/// colons. Anything else is passed on for the controller to judge.
fn windows_mac_pool(text: &str) -> String {
    let octets: Vec<&str> = text.split('-').collect();
    if octets.len() == 12 && octets.iter().all(|o| o.len() == 2) {
        format!("{}-{}", octets[..6].join(":"), octets[6..].join(":"))
    } else {
        text.to_owned()
    }
}

/// `172.30.0.1/24` (Docker's IPAM writes gateways with the pool's prefix)
/// to `172.30.0.1`.
fn bare_address(text: &str) -> String {
    text.split('/').next().unwrap_or(text).to_owned()
}

/// The vswitch name of a network Docker made: `-o networkname`, or from
/// Docker's ID as `docker network ls` shortens it.
fn network_name(id: &str, options: &NetworkOptions) -> String {
    options
        .name
        .clone()
        .unwrap_or_else(|| format!("docker-{}", short_id(id)))
}

fn short_id(id: &str) -> String {
    id.chars().take(12).collect()
}

fn create_network(api: &dyn Api, req: CreateNetwork) -> Result<Value> {
    if req.network_id.is_empty() {
        return Err(refuse("NetworkID", "empty"));
    }
    let mut fields = FieldNames::default();
    fields.set("subnet", "--subnet");
    fields.set("gateway", "--gateway");
    let top = req.options.unwrap_or_default();
    let generic = match top.get(GENERIC) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(refuse(GENERIC, "expected an object of options")),
    };
    let opts = network_options(&generic, &mut fields)?;
    if let Some(existing) = find_network(api, &req.network_id)? {
        // Docker asks again for a network it already made (after its own
        // restart, say): what exists is the answer.
        tracing::info!(network = %existing.name, "docker network already exists");
        return Ok(json!({}));
    }
    let mut subnets = Vec::new();
    let mut gateways = Vec::new();
    for (family, data) in [("IPv4Data", &req.ipv4_data), ("IPv6Data", &req.ipv6_data)] {
        let data = data.as_deref().unwrap_or_default();
        if data.len() > 1 {
            return Err(refuse(
                "--subnet",
                format!("a vswitch network has one subnet per address family; Docker gave {} in {family}", data.len()),
            ));
        }
        for d in data.iter().filter(|d| !d.pool.is_empty()) {
            subnets.push(d.pool.clone());
            if !d.gateway.is_empty() {
                gateways.push(bare_address(&d.gateway));
            }
        }
    }
    let name = network_name(&req.network_id, &opts);
    let create = api::NetworkCreate {
        name: name.clone(),
        driver: opts.driver.clone().unwrap_or_else(|| "nat".to_owned()),
        subnets,
        gateways,
        mtu: opts.mtu,
        mac_pool: opts.mac_pool.clone(),
        options: opts.options.clone(),
        labels: BTreeMap::from([(NETWORK_LABEL.to_owned(), req.network_id.clone())]),
    };
    call(api, Request::NetworkCreate(create), &fields)?;
    if opts.outbound_nat {
        let policy = json!({"Type": "OutBoundNAT", "Settings": {"Exceptions": opts.outbound_nat_exceptions}});
        let add = api::PolicyAdd {
            endpoint: None,
            network: Some(name.clone()),
            policies: policy,
        };
        let mut fields = FieldNames::default();
        fields.set(
            "policies.Type",
            format!("-o {WINDOWS_NET}enable_outboundnat"),
        );
        fields.set(
            "policies.Settings.Exceptions",
            format!("-o {WINDOWS_NET}outboundnat_exceptions"),
        );
        if let Err(e) = call(api, Request::PolicyAdd(add), &fields) {
            let _ = api.call(Request::NetworkRemove { name });
            return Err(e);
        }
    }
    tracing::info!(network = %name, docker_id = %req.network_id, "docker network created");
    Ok(json!({}))
}

fn find_network(api: &dyn Api, docker_id: &str) -> Result<Option<api::Network>> {
    match call(api, Request::NetworkList, &FieldNames::default())? {
        Reply::Networks(nets) => Ok(nets
            .into_iter()
            .find(|n| n.labels.get(NETWORK_LABEL).map(String::as_str) == Some(docker_id))),
        _ => Err(DriverError(
            "vswitch: unexpected reply to NetworkList".into(),
        )),
    }
}

fn find_endpoint(api: &dyn Api, docker_id: &str) -> Result<Option<api::Endpoint>> {
    match call(api, Request::EndpointList, &FieldNames::default())? {
        Reply::Endpoints(eps) => Ok(eps
            .into_iter()
            .find(|e| e.labels.get(ENDPOINT_LABEL).map(String::as_str) == Some(docker_id))),
        _ => Err(DriverError(
            "vswitch: unexpected reply to EndpointList".into(),
        )),
    }
}

fn delete_network(api: &dyn Api, req: NetworkRef) -> Result<Value> {
    // Already gone is done: Docker retries deletions it did not see finish.
    if let Some(net) = find_network(api, &req.network_id)? {
        call(
            api,
            Request::NetworkRemove {
                name: net.name.clone(),
            },
            &FieldNames::default(),
        )?;
        tracing::info!(network = %net.name, "docker network removed");
    }
    Ok(json!({}))
}

// ---- endpoints ----

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Interface {
    #[serde(default)]
    address: String,
    #[serde(default, rename = "AddressIPv6")]
    address_ipv6: String,
    #[serde(default)]
    mac_address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateEndpoint {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
    #[serde(default)]
    interface: Option<Interface>,
    #[serde(default)]
    options: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EndpointRef {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct JoinRequest {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
    #[serde(default)]
    sandbox_key: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ExternalRequest {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
    #[serde(default)]
    options: Option<Map<String, Value>>,
}

/// One `docker run -p` binding as libnetwork passes it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PortBinding {
    proto: u8,
    port: u16,
    #[serde(default, rename = "HostIP")]
    host_ip: Option<String>,
    #[serde(default)]
    host_port: u16,
    #[serde(default)]
    host_port_end: u16,
}

/// `docker run -p` bindings as HNS PortMapping policies.
fn port_mappings(options: &Map<String, Value>) -> Result<Vec<Value>> {
    let Some(value) = options.get(PORTMAP).filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let bindings: Vec<PortBinding> = serde_json::from_value(value.clone())
        .map_err(|e| refuse("-p", format!("malformed port bindings: {e}")))?;
    let mut out = Vec::new();
    for b in bindings {
        if !matches!(b.proto, 6 | 17) {
            return Err(refuse(
                "-p",
                format!("protocol {}: vswitch maps tcp and udp", b.proto),
            ));
        }
        let host_ip = b.host_ip.unwrap_or_default();
        if !matches!(host_ip.as_str(), "" | "0.0.0.0" | "::") {
            return Err(refuse(
                "-p",
                format!("{host_ip}: a nat network maps ports on its uplink's address only"),
            ));
        }
        if b.host_port_end != 0 && b.host_port_end != b.host_port {
            return Err(refuse(
                "-p",
                format!(
                    "{}-{}: give one host port (or none for one the switch picks)",
                    b.host_port, b.host_port_end
                ),
            ));
        }
        // Docker gives a "::" binding beside the IPv4 one; vswitch's nat
        // is IPv4 only, and one mapping serves both.
        let doc = json!({"Type": "PortMapping", "Settings": {
            "Protocol": b.proto, "InternalPort": b.port, "ExternalPort": b.host_port}});
        if !out.contains(&doc) {
            out.push(doc);
        }
    }
    Ok(out)
}

/// `com.docker.endpoint.windowsshim.qospolicies`: a JSON list of HNS QOS
/// policies (the Windows driver's form, `{"MaximumOutgoingBandwidthInBytes": N}`,
/// `Type` optional).
fn qos_policies(text: &str) -> Result<Vec<Value>> {
    let field = format!("--driver-opt {WINDOWS_EP}qospolicies");
    let value: Value = serde_json::from_str(text)
        .map_err(|e| refuse(&field, format!("expected a JSON list of QOS policies: {e}")))?;
    let list = match value {
        Value::Array(a) => a,
        v @ Value::Object(_) => vec![v],
        _ => {
            return Err(refuse(
                &field,
                "expected a JSON list of QOS policies".to_owned(),
            ))
        }
    };
    list.into_iter()
        .map(|mut p| {
            let obj = p
                .as_object_mut()
                .ok_or_else(|| refuse(&field, "each policy is a JSON object"))?;
            if !obj.keys().any(|k| k.eq_ignore_ascii_case("type")) {
                obj.insert("Type".into(), "QOS".into());
            }
            Ok(p)
        })
        .collect()
}

fn create_endpoint(api: &dyn Api, req: CreateEndpoint) -> Result<Value> {
    let net = find_network(api, &req.network_id)?.ok_or_else(|| {
        refuse(
            "NetworkID",
            format!("no vswitch network for Docker network {}", req.network_id),
        )
    })?;
    if let Some(ep) = find_endpoint(api, &req.endpoint_id)? {
        return Err(refuse(
            "EndpointID",
            format!(
                "endpoint {} exists already as '{}'",
                req.endpoint_id, ep.name
            ),
        ));
    }
    let options = req.options.unwrap_or_default();
    let mut policies = port_mappings(&options)?;
    if !policies.is_empty() && net.driver != api::Driver::Nat.name() {
        return Err(refuse(
            "-p",
            format!(
                "ports are published on nat networks; '{}' is {}",
                net.name, net.driver
            ),
        ));
    }
    for (key, value) in &options {
        if key == &format!("{WINDOWS_EP}qospolicies") {
            let text = value
                .as_str()
                .ok_or_else(|| refuse(key, "expected a string"))?;
            policies.extend(qos_policies(text)?);
        } else if key.starts_with("com.docker.network.") {
            // Docker's own (exposed ports, the port map read above, ...).
        } else {
            return Err(refuse(
                &format!("--driver-opt {key}"),
                format!(
                    "not an endpoint option vswitch supports; it knows {WINDOWS_EP}qospolicies"
                ),
            ));
        }
    }
    let iface = req.interface.unwrap_or_default();
    let opt = |s: &str| (!s.is_empty()).then(|| bare_address(s));
    let mut fields = FieldNames::default();
    fields.set("ip", "--ip");
    fields.set("ipv6", "--ip6");
    fields.set("mac", "--mac-address");
    fields.set("policies", "-p");
    let create = api::EndpointCreate {
        name: format!("docker-{}", short_id(&req.endpoint_id)),
        network: net.name.clone(),
        ip: opt(&iface.address),
        ipv6: opt(&iface.address_ipv6),
        mac_address: (!iface.mac_address.is_empty()).then(|| iface.mac_address.clone()),
        policies: if policies.is_empty() {
            Value::Null
        } else {
            Value::Array(policies)
        },
        backend: Some(api::Backend::Veth),
        handoff: true,
        labels: BTreeMap::from([
            (ENDPOINT_LABEL.to_owned(), req.endpoint_id.clone()),
            (NETWORK_LABEL.to_owned(), req.network_id.clone()),
        ]),
        ..Default::default()
    };
    let ep = match call(api, Request::EndpointCreate(create), &fields)? {
        Reply::Endpoint(ep) => ep,
        _ => return Err(DriverError("vswitch: unexpected reply".into())),
    };
    tracing::info!(endpoint = %ep.name, network = %net.name, "docker endpoint created");
    // Docker takes back only what it did not give.
    let mut out = Map::new();
    if iface.address.is_empty() {
        if let (Some(ip), Some(len)) = (&ep.ip, ep.prefix_length) {
            out.insert("Address".into(), format!("{ip}/{len}").into());
        }
    }
    if iface.address_ipv6.is_empty() {
        if let (Some(ip), Some(len)) = (&ep.ipv6, ep.ipv6_prefix_length) {
            out.insert("AddressIPv6".into(), format!("{ip}/{len}").into());
        }
    }
    if iface.mac_address.is_empty() {
        out.insert("MacAddress".into(), ep.mac_address.clone().into());
    }
    Ok(json!({ "Interface": out }))
}

fn endpoint_of(api: &dyn Api, network_id: &str, endpoint_id: &str) -> Result<api::Endpoint> {
    find_endpoint(api, endpoint_id)?
        .filter(|e| e.labels.get(NETWORK_LABEL).map(String::as_str) == Some(network_id))
        .ok_or_else(|| {
            refuse(
                "EndpointID",
                format!(
                    "no vswitch endpoint for Docker endpoint {endpoint_id} of network {network_id}"
                ),
            )
        })
}

fn delete_endpoint(api: &dyn Api, req: EndpointRef) -> Result<Value> {
    if let Some(ep) = find_endpoint(api, &req.endpoint_id)? {
        call(
            api,
            Request::EndpointRemove {
                name: ep.name.clone(),
            },
            &FieldNames::default(),
        )?;
        tracing::info!(endpoint = %ep.name, network_id = %req.network_id, "docker endpoint removed");
    }
    Ok(json!({}))
}

fn join(api: &dyn Api, req: JoinRequest) -> Result<Value> {
    let ep = endpoint_of(api, &req.network_id, &req.endpoint_id)?;
    if !ep.handoff {
        return Err(refuse(
            "EndpointID",
            format!("'{}' was not made for Docker", ep.name),
        ));
    }
    let net = match call(
        api,
        Request::NetworkInspect {
            name: ep.network.clone(),
        },
        &FieldNames::default(),
    )? {
        Reply::Network(n) => n,
        _ => return Err(DriverError("vswitch: unexpected reply".into())),
    };
    let gateway = |v6: bool| {
        net.subnets
            .iter()
            .filter(|s| s.address_prefix.contains(':') == v6)
            .find_map(|s| s.gateway_address.clone())
            .unwrap_or_default()
    };
    tracing::info!(endpoint = %ep.name, sandbox = %req.sandbox_key, "docker endpoint joined");
    Ok(json!({
        "InterfaceName": {"SrcName": ep.ifname, "DstPrefix": "eth"},
        "Gateway": if ep.ip.is_some() { gateway(false) } else { String::new() },
        "GatewayIPv6": if ep.ipv6.is_some() { gateway(true) } else { String::new() },
        "StaticRoutes": [],
        // Never Docker's docker_gwbridge: the network's own gateway, or none.
        "DisableGatewayService": true,
    }))
}

fn mappings_of(api: &dyn Api, ep: &api::Endpoint) -> Result<Vec<Value>> {
    let req = Request::PolicyList {
        endpoint: Some(ep.name.clone()),
        network: None,
    };
    match call(api, req, &FieldNames::default())? {
        Reply::Policies(p) => Ok(p
            .into_iter()
            .filter(|p| p.kind == "PortMapping" && p.endpoint.as_deref() == Some(&ep.name))
            .map(|p| p.settings)
            .collect()),
        _ => Err(DriverError("vswitch: unexpected reply".into())),
    }
}

/// Reads an HNS PortMapping document's settings, v1 or v2 form.
fn mapping_fields(doc: &Value) -> Option<(u64, u64, u64)> {
    let settings = doc
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("settings"))
        .map(|(_, v)| v)
        .unwrap_or(doc);
    let get = |name: &str| {
        settings
            .as_object()?
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_u64())
    };
    Some((get("Protocol")?, get("InternalPort")?, get("ExternalPort")?))
}

fn oper_info(api: &dyn Api, req: EndpointRef) -> Result<Value> {
    let ep = endpoint_of(api, &req.network_id, &req.endpoint_id)?;
    let ports: Vec<Value> = mappings_of(api, &ep)?
        .iter()
        .filter_map(mapping_fields)
        .map(|(proto, port, host)| {
            json!({"Proto": proto, "IP": "", "Port": port, "HostIP": "", "HostPort": host, "HostPortEnd": host})
        })
        .collect();
    Ok(json!({"Value": {
        "vswitch.endpoint": ep.name,
        "vswitch.network": ep.network,
        PORTMAP: ports,
    }}))
}

/// Port bindings Docker hands over when the endpoint becomes the
/// container's gateway, which CreateEndpoint may not have had (a container
/// connected to this network after another): added as the endpoint's
/// PortMapping policies unless it has them.
fn program_external(api: &dyn Api, req: ExternalRequest) -> Result<Value> {
    let ep = endpoint_of(api, &req.network_id, &req.endpoint_id)?;
    let wanted = port_mappings(&req.options.unwrap_or_default())?;
    if wanted.is_empty() {
        return Ok(json!({}));
    }
    let net = find_network(api, &req.network_id)?;
    if net.is_none_or(|n| n.driver != api::Driver::Nat.name()) {
        // Published ports of a container whose gateway is not a nat
        // network: nothing to map them on (CreateEndpoint refused them).
        return Ok(json!({}));
    }
    let have: Vec<(u64, u64)> = mappings_of(api, &ep)?
        .iter()
        .filter_map(mapping_fields)
        .map(|(proto, port, _)| (proto, port))
        .collect();
    let missing: Vec<Value> = wanted
        .into_iter()
        .filter(|w| mapping_fields(w).is_none_or(|(proto, port, _)| !have.contains(&(proto, port))))
        .collect();
    if missing.is_empty() {
        return Ok(json!({}));
    }
    let add = api::PolicyAdd {
        endpoint: Some(ep.name.clone()),
        network: None,
        policies: Value::Array(missing),
    };
    let mut fields = FieldNames::default();
    fields.set("policies", "-p");
    call(api, Request::PolicyAdd(add), &fields)?;
    Ok(json!({}))
}

#[cfg(test)]
mod tests;
