//! `vswitch-cni`: a CNI plugin (spec 1.0.0; 0.3.x and 0.4.0 results too)
//! that attaches a container's namespace to a vswitch network through
//! vswitchd's socket, as the CLI does.
//!
//! The network config reads like the Windows CNI plugins'
//! (microsoft/windows-container-networking):
//!
//! ```json
//! {"cniVersion": "1.0.0", "name": "vsnet", "type": "vswitch-cni",
//!  "networkType": "nat", "master": "eth1", "vlanId": 10,
//!  "ipam": {"subnet": "10.1.0.0/24", "routes": [{"GW": "10.1.0.1"}]},
//!  "dns": {"nameservers": ["10.0.0.10"], "search": ["svc.cluster.local"]},
//!  "capabilities": {"portMappings": true},
//!  "policies": [{"Name": "EndpointPolicy", "Value": {"Type": "ACL", "Settings": {...}}}]}
//! ```
//!
//! ADD makes the network on first use (the `name`, of `networkType`, on
//! `subnet` or `ipam.subnet`) and an endpoint `cni-CONTAINER-IFNAME` in
//! `CNI_NETNS` with every policy and runtime port mapping; vswitch's IPAM
//! picks its address. DEL removes the endpoint and succeeds when there is
//! none. CHECK compares the endpoint, its vNIC in the namespace and the
//! previous result. Errors are the spec's error object on stdout.

#[path = "client.rs"]
#[allow(dead_code)]
mod client;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{json, Map, Value};
use vswitch_api::{
    Endpoint, EndpointCreate, Network, NetworkCreate, Reply, Request, Response, DEFAULT_SOCKET,
};

const VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
const LABEL_CONTAINER: &str = "cni.containerid";
const LABEL_IFNAME: &str = "cni.ifname";
const LABEL_NETWORK: &str = "cni.network";

/// Fields of a network config this plugin reads, and those the runtime
/// or the spec put there.
const KNOWN: [&str; 21] = [
    "cniVersion",
    "name",
    "type",
    "args",
    "ipMasq",
    "ipam",
    "dns",
    "capabilities",
    "runtimeConfig",
    "prevResult",
    "socket",
    "networkType",
    "master",
    "interface",
    "vlanId",
    "subnet",
    "gateway",
    "backend",
    "policies",
    "AdditionalArgs",
    "additionalArgs",
];

/// The spec's error codes.
mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN: u32 = 11;
    /// Plugin-specific: vswitchd refused the request.
    pub const REFUSED: u32 = 100;
    /// Plugin-specific: CHECK found the attachment not as it should be.
    pub const CHECK_FAILED: u32 = 101;
}

#[derive(Debug)]
struct CniError {
    code: u32,
    msg: String,
    details: String,
}

fn fail(code: u32, msg: impl Into<String>) -> CniError {
    CniError {
        code,
        msg: msg.into(),
        details: String::new(),
    }
}

type Result<T> = std::result::Result<T, CniError>;

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    if command != "VERSION" {
        let _ = std::io::stdin().read_to_end(&mut stdin);
    }
    let version = serde_json::from_slice::<Value>(&stdin)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_owned))
        .filter(|v| VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| "1.0.0".to_owned());
    match run(&command, &stdin) {
        Ok(Some(out)) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            let obj =
                json!({"cniVersion": version, "code": e.code, "msg": e.msg, "details": e.details});
            println!("{obj}");
            ExitCode::from(1)
        }
    }
}

fn run(command: &str, stdin: &[u8]) -> Result<Option<Value>> {
    match command {
        "VERSION" => Ok(Some(
            json!({"cniVersion": "1.0.0", "supportedVersions": VERSIONS}),
        )),
        "ADD" | "DEL" | "CHECK" => {
            let conf = Config::parse(stdin)?;
            let env = Env::read(command)?;
            match command {
                "ADD" => add(&conf, &env).map(Some),
                "DEL" => del(&conf, &env).map(|()| None),
                _ => check(&conf, &env).map(|()| None),
            }
        }
        "" => Err(fail(code::INVALID_ENV, "CNI_COMMAND is not set")),
        other => Err(fail(
            code::INVALID_ENV,
            format!("CNI_COMMAND: unknown command '{other}'; expected ADD, DEL, CHECK or VERSION"),
        )),
    }
}

/// The runtime's environment.
struct Env {
    container: String,
    netns: String,
    ifname: String,
}

impl Env {
    fn read(command: &str) -> Result<Env> {
        let var = |name: &str| std::env::var(name).unwrap_or_default();
        let env = Env {
            container: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
        };
        let mut needed = vec![
            ("CNI_CONTAINERID", &env.container),
            ("CNI_IFNAME", &env.ifname),
        ];
        // DEL must work when the namespace is gone already.
        if command != "DEL" {
            needed.push(("CNI_NETNS", &env.netns));
        }
        for (name, value) in needed {
            if value.is_empty() {
                return Err(fail(code::INVALID_ENV, format!("{name} is not set")));
            }
        }
        Ok(env)
    }

    /// The endpoint's name: from the container id and interface, in the
    /// characters vswitch takes.
    fn endpoint_name(&self) -> String {
        let clean = |s: &str, n: usize| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .take(n)
                .collect()
        };
        format!(
            "cni-{}-{}",
            clean(&self.container, 40),
            clean(&self.ifname, 15)
        )
    }
}

/// A network config, checked.
struct Config {
    version: String,
    name: String,
    socket: PathBuf,
    driver: String,
    subnets: Vec<String>,
    gateways: Vec<String>,
    options: BTreeMap<String, String>,
    backend: Option<vswitch_api::Backend>,
    policies: Vec<Value>,
    port_mappings: Vec<Value>,
    dns: Value,
    prev_result: Option<Value>,
}

fn invalid(field: &str, msg: impl std::fmt::Display) -> CniError {
    fail(code::INVALID_CONFIG, format!("{field}: {msg}"))
}

fn string(v: &Value, field: &str) -> Result<Option<String>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err(invalid(field, "expected a string")),
    }
}

impl Config {
    fn parse(stdin: &[u8]) -> Result<Config> {
        let v: Value = serde_json::from_slice(stdin).map_err(|e| CniError {
            code: code::DECODE,
            msg: "the network config on stdin is not JSON".into(),
            details: e.to_string(),
        })?;
        let obj = v
            .as_object()
            .ok_or_else(|| fail(code::DECODE, "the network config is not a JSON object"))?;
        if let Some(k) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(invalid(
                k,
                format!(
                    "not a field vswitch-cni knows; it reads {}",
                    KNOWN[10..].join(", ")
                ),
            ));
        }
        let version = string(&v["cniVersion"], "cniVersion")?
            .ok_or_else(|| invalid("cniVersion", "missing"))?;
        if !VERSIONS.contains(&version.as_str()) {
            return Err(fail(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion: {version} is not one of {}",
                    VERSIONS.join(", ")
                ),
            ));
        }
        let name = string(&v["name"], "name")?.ok_or_else(|| invalid("name", "missing"))?;
        let socket = string(&v["socket"], "socket")?.unwrap_or_else(|| DEFAULT_SOCKET.into());
        let driver = string(&v["networkType"], "networkType")?.unwrap_or_else(|| "nat".into());
        let mut options = BTreeMap::new();
        for key in ["master", "interface"] {
            if let Some(i) = string(&v[key], key)? {
                options.insert("interface".to_owned(), i);
            }
        }
        match &v["vlanId"] {
            Value::Null => {}
            Value::Number(n) => {
                options.insert("vlanid".into(), n.to_string());
            }
            _ => return Err(invalid("vlanId", "expected a number")),
        }
        let ipam = &v["ipam"];
        if !ipam.is_null() && !ipam.is_object() {
            return Err(invalid("ipam", "expected an object"));
        }
        if let Some(t) = string(&ipam["type"], "ipam.type")? {
            return Err(fail(
                code::UNSUPPORTED_FIELD,
                format!("ipam.type: '{t}': vswitch-cni takes its addresses from vswitchd's IPAM; give ipam.subnet and no type"),
            ));
        }
        let mut subnets = Vec::new();
        for (field, value) in [("subnet", &v["subnet"]), ("ipam.subnet", &ipam["subnet"])] {
            subnets.extend(string(value, field)?);
        }
        let mut gateways = Vec::new();
        for (field, value) in [
            ("gateway", &v["gateway"]),
            ("ipam.gateway", &ipam["gateway"]),
        ] {
            gateways.extend(string(value, field)?);
        }
        if let Some(routes) = ipam["routes"].as_array() {
            for (i, r) in routes.iter().enumerate() {
                let gw = r.get("GW").or_else(|| r.get("gw"));
                if let Some(gw) = gw {
                    gateways.extend(string(gw, &format!("ipam.routes[{i}].GW"))?);
                }
            }
        }
        let backend = match string(&v["backend"], "backend")? {
            None => None,
            Some(b) => Some(b.parse().map_err(|e: String| invalid("backend", e))?),
        };
        let mut policies = Vec::new();
        for key in ["policies", "AdditionalArgs", "additionalArgs"] {
            let list = match &v[key] {
                Value::Null => continue,
                Value::Array(a) => a,
                _ => {
                    return Err(invalid(
                        key,
                        "expected a list of {\"Name\", \"Value\"} entries",
                    ))
                }
            };
            for (i, p) in list.iter().enumerate() {
                let field = format!("{key}[{i}]");
                match p["Name"].as_str() {
                    Some("EndpointPolicy") => {}
                    Some(other) => {
                        return Err(invalid(
                            &format!("{field}.Name"),
                            format!("'{other}': vswitch-cni applies EndpointPolicy entries"),
                        ))
                    }
                    None => return Err(invalid(&format!("{field}.Name"), "missing")),
                }
                if !p["Value"].is_object() {
                    return Err(invalid(
                        &format!("{field}.Value"),
                        "expected an HNS policy object",
                    ));
                }
                policies.push(p["Value"].clone());
            }
        }
        let mut port_mappings = Vec::new();
        if let Some(maps) = v["runtimeConfig"]["portMappings"].as_array() {
            for (i, m) in maps.iter().enumerate() {
                let field = format!("runtimeConfig.portMappings[{i}]");
                let port = |k: &str| -> Result<u64> {
                    m[k].as_u64()
                        .filter(|p| *p <= 65535)
                        .ok_or_else(|| invalid(&format!("{field}.{k}"), "expected a port number"))
                };
                let proto = match m["protocol"].as_str().unwrap_or("tcp") {
                    "tcp" | "TCP" => 6,
                    "udp" | "UDP" => 17,
                    other => {
                        return Err(invalid(
                            &format!("{field}.protocol"),
                            format!("'{other}': tcp or udp"),
                        ))
                    }
                };
                if m["hostIP"]
                    .as_str()
                    .is_some_and(|ip| !ip.is_empty() && ip != "0.0.0.0")
                {
                    return Err(invalid(
                        &format!("{field}.hostIP"),
                        "a nat network maps ports on its uplink's address only",
                    ));
                }
                port_mappings.push(json!({"Type": "PortMapping", "Settings": {
                    "Protocol": proto, "InternalPort": port("containerPort")?, "ExternalPort": port("hostPort")?}}));
            }
        }
        let dns = dns_of(&v["dns"]);
        Ok(Config {
            version,
            name,
            socket: socket.into(),
            driver,
            subnets,
            gateways,
            options,
            backend,
            policies,
            port_mappings,
            dns,
            prev_result: v.get("prevResult").cloned(),
        })
    }

    fn call(&self, req: Request) -> Result<Reply> {
        let resp = client::call(&self.socket, &req).map_err(|e| CniError {
            code: code::TRY_AGAIN,
            msg: format!("cannot reach vswitchd: {e:#}"),
            details: self.socket.display().to_string(),
        })?;
        match resp {
            Response::Ok(r) => Ok(r),
            Response::Error(e) => Err(CniError {
                code: code::REFUSED,
                msg: format!("vswitchd: {e}"),
                details: format!("{:?}", e.kind),
            }),
        }
    }

    fn network(&self) -> Result<Option<Network>> {
        match self.call(Request::NetworkList)? {
            Reply::Networks(nets) => Ok(nets.into_iter().find(|n| n.name == self.name)),
            _ => Err(fail(code::IO, "unexpected reply from vswitchd")),
        }
    }

    fn endpoint(&self, env: &Env) -> Result<Option<Endpoint>> {
        match self.call(Request::EndpointList)? {
            Reply::Endpoints(eps) => Ok(eps.into_iter().find(|e| {
                let l = |k: &str| e.labels.get(k).map(String::as_str);
                l(LABEL_CONTAINER) == Some(env.container.as_str())
                    && l(LABEL_IFNAME) == Some(env.ifname.as_str())
                    && l(LABEL_NETWORK) == Some(self.name.as_str())
            })),
            _ => Err(fail(code::IO, "unexpected reply from vswitchd")),
        }
    }

    /// The config's network, made now if vswitchd has none of its name.
    fn ensure_network(&self) -> Result<Network> {
        if let Some(net) = self.network()? {
            if net.driver != self.driver {
                return Err(invalid(
                    "networkType",
                    format!(
                        "network '{}' exists as a {} network, not {}",
                        net.name, net.driver, self.driver
                    ),
                ));
            }
            return Ok(net);
        }
        let create = NetworkCreate {
            name: self.name.clone(),
            driver: self.driver.clone(),
            subnets: self.subnets.clone(),
            gateways: self.gateways.clone(),
            options: self.options.clone(),
            labels: BTreeMap::from([(LABEL_NETWORK.to_owned(), self.name.clone())]),
            ..Default::default()
        };
        match self.call(Request::NetworkCreate(create)) {
            Ok(Reply::Network(n)) => Ok(n),
            Ok(_) => Err(fail(code::IO, "unexpected reply from vswitchd")),
            // Made meanwhile by another ADD of the same network.
            Err(e) => self.network()?.ok_or(e),
        }
    }
}

/// Windows configs write `Nameservers`/`Search`; the spec `nameservers`,
/// `domain`, `search`, `options`.
fn dns_of(v: &Value) -> Value {
    let mut out = Map::new();
    let Some(obj) = v.as_object() else {
        return Value::Object(out);
    };
    for key in ["nameservers", "domain", "search", "options"] {
        if let Some((_, val)) = obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)) {
            out.insert(key.to_owned(), val.clone());
        }
    }
    Value::Object(out)
}

fn result_of(conf: &Config, env: &Env, ep: &Endpoint, net: &Network) -> Value {
    let with_version = conf.version != "1.0.0";
    let mut ips = Vec::new();
    let mut routes = Vec::new();
    let gateway = |v6: bool| {
        net.subnets
            .iter()
            .filter(|s| s.address_prefix.contains(':') == v6)
            .find_map(|s| s.gateway_address.clone())
    };
    for (ip, len, v6) in [
        (&ep.ip, ep.prefix_length, false),
        (&ep.ipv6, ep.ipv6_prefix_length, true),
    ] {
        let (Some(ip), Some(len)) = (ip, len) else {
            continue;
        };
        let mut entry = json!({"address": format!("{ip}/{len}"), "interface": 0});
        if with_version {
            entry["version"] = if v6 { "6" } else { "4" }.into();
        }
        if let Some(gw) = gateway(v6) {
            entry["gateway"] = gw.clone().into();
            let dst = if v6 { "::/0" } else { "0.0.0.0/0" };
            routes.push(json!({"dst": dst, "gw": gw}));
        }
        ips.push(entry);
    }
    json!({
        "cniVersion": conf.version,
        "interfaces": [{"name": env.ifname, "mac": ep.mac_address, "sandbox": env.netns}],
        "ips": ips,
        "routes": routes,
        "dns": conf.dns,
    })
}

fn add(conf: &Config, env: &Env) -> Result<Value> {
    if let Some(ep) = conf.endpoint(env)? {
        // The runtime asks again (a retry after a lost answer): the same
        // attachment is the answer; another namespace is a conflict.
        if ep.netns != env.netns {
            return Err(fail(
                code::REFUSED,
                format!(
                    "container {} already has {} on network {} in {}",
                    env.container, env.ifname, conf.name, ep.netns
                ),
            ));
        }
        let net = conf.ensure_network()?;
        return Ok(result_of(conf, env, &ep, &net));
    }
    let net = conf.ensure_network()?;
    let mut policies = conf.policies.clone();
    policies.extend(conf.port_mappings.iter().cloned());
    let create = EndpointCreate {
        name: env.endpoint_name(),
        network: conf.name.clone(),
        netns: env.netns.clone(),
        ifname: Some(env.ifname.clone()),
        policies: if policies.is_empty() {
            Value::Null
        } else {
            Value::Array(policies)
        },
        backend: conf.backend,
        labels: BTreeMap::from([
            (LABEL_CONTAINER.to_owned(), env.container.clone()),
            (LABEL_IFNAME.to_owned(), env.ifname.clone()),
            (LABEL_NETWORK.to_owned(), conf.name.clone()),
        ]),
        ..Default::default()
    };
    match conf.call(Request::EndpointCreate(create))? {
        Reply::Endpoint(ep) => Ok(result_of(conf, env, &ep, &net)),
        _ => Err(fail(code::IO, "unexpected reply from vswitchd")),
    }
}

fn del(conf: &Config, env: &Env) -> Result<()> {
    if let Some(ep) = conf.endpoint(env)? {
        conf.call(Request::EndpointRemove { name: ep.name })?;
    }
    Ok(())
}

fn check(conf: &Config, env: &Env) -> Result<()> {
    if conf.version.starts_with("0.3") {
        return Err(fail(
            code::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion: CHECK needs 0.4.0 or later, not {}",
                conf.version
            ),
        ));
    }
    let ep = conf.endpoint(env)?.ok_or_else(|| {
        fail(
            code::UNKNOWN_CONTAINER,
            format!(
                "container {} has no {} on network {}",
                env.container, env.ifname, conf.name
            ),
        )
    })?;
    let bad = |msg: String| fail(code::CHECK_FAILED, msg);
    if ep.state != vswitch_api::EndpointState::Attached {
        return Err(bad(format!("endpoint {} is {:?}", ep.name, ep.state)));
    }
    if ep.netns != env.netns || ep.ifname != env.ifname {
        return Err(bad(format!(
            "endpoint {} is {} in {}, not {} in {}",
            ep.name, ep.ifname, ep.netns, env.ifname, env.netns
        )));
    }
    let mine: Vec<String> = [
        (&ep.ip, ep.prefix_length),
        (&ep.ipv6, ep.ipv6_prefix_length),
    ]
    .into_iter()
    .filter_map(|(ip, len)| Some(format!("{}/{}", ip.as_ref()?, len?)))
    .collect();
    if let Some(prev) = &conf.prev_result {
        let theirs: Vec<String> = prev["ips"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i["address"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if theirs != mine {
            return Err(bad(format!(
                "prevResult has addresses {theirs:?}; the endpoint has {mine:?}"
            )));
        }
    }
    // The vNIC itself, in the namespace, with its addresses.
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", env.netns))
        .args(["ip", "-o", "addr", "show", "dev", &env.ifname])
        .output()
        .map_err(|e| fail(code::IO, format!("cannot run nsenter: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(bad(format!("{} is missing from {}", env.ifname, env.netns)));
    }
    if let Some(missing) = mine.iter().find(|a| !text.contains(a.as_str())) {
        return Err(bad(format!(
            "{} in {} lacks its address {missing}",
            env.ifname, env.netns
        )));
    }
    Ok(())
}
