//! The translation of Docker's calls, against a fake controller that
//! records the requests and answers as told.

use std::sync::Mutex;

use serde_json::{json, Value};

use super::*;
use crate::api::{ErrorKind, Network, NetworkState};

#[derive(Default)]
struct Fake {
    seen: Mutex<Vec<Request>>,
    networks: Mutex<Vec<Network>>,
    /// The answer to the next mutating request, when not success.
    refuse: Mutex<Option<ApiError>>,
}

fn network(name: &str, docker_id: &str, driver: &str) -> Network {
    Network {
        id: "n".into(),
        name: name.into(),
        driver: driver.into(),
        subnets: vec![api::Subnet {
            address_prefix: "172.30.0.0/24".into(),
            gateway_address: Some("172.30.0.1".into()),
        }],
        mtu: 1500,
        mac_pool: api::MacPool {
            start_mac_address: String::new(),
            end_mac_address: String::new(),
        },
        options: BTreeMap::new(),
        host_interface: None,
        uplink_interface: None,
        vlan_id: None,
        vsid: None,
        provider_address: None,
        distributed_router_mac_address: None,
        endpoints: vec![],
        state: NetworkState::Up,
        labels: BTreeMap::from([(NETWORK_LABEL.to_owned(), docker_id.to_owned())]),
    }
}

impl Api for Fake {
    fn call(&self, req: Request) -> Response {
        self.seen.lock().unwrap().push(req.clone());
        match req {
            Request::NetworkList => {
                Response::Ok(Reply::Networks(self.networks.lock().unwrap().clone()))
            }
            Request::EndpointList => Response::Ok(Reply::Endpoints(vec![])),
            Request::NetworkCreate(c) => match self.refuse.lock().unwrap().take() {
                Some(e) => Response::Error(e),
                None => {
                    let n = network(&c.name, &c.labels[NETWORK_LABEL], &c.driver);
                    self.networks.lock().unwrap().push(n.clone());
                    Response::Ok(Reply::Network(n))
                }
            },
            _ => match self.refuse.lock().unwrap().take() {
                Some(e) => Response::Error(e),
                None => Response::Ok(Reply::Removed {
                    name: String::new(),
                    warning: None,
                }),
            },
        }
    }
}

fn post(api: &Fake, method: &str, body: Value) -> (u16, Value) {
    answer(api, method, body.to_string().as_bytes())
}

fn created(api: &Fake) -> api::NetworkCreate {
    api.seen
        .lock()
        .unwrap()
        .iter()
        .find_map(|r| match r {
            Request::NetworkCreate(c) => Some(c.clone()),
            _ => None,
        })
        .expect("a NetworkCreate was sent")
}

#[test]
fn handshake() {
    let api = Fake::default();
    assert_eq!(
        post(&api, "Plugin.Activate", json!({})),
        (200, json!({"Implements": ["NetworkDriver"]}))
    );
    let (status, caps) = post(&api, "NetworkDriver.GetCapabilities", json!({}));
    assert_eq!((status, caps["Scope"].as_str()), (200, Some("local")));
    let (status, err) = post(&api, "NetworkDriver.Fly", json!({}));
    assert_eq!(status, 404);
    assert!(err["Err"].as_str().unwrap().contains("NetworkDriver.Fly"));
}

#[test]
fn windows_and_short_options_mean_the_same() {
    let id = "0123456789abcdef0123";
    let api = Fake::default();
    let body = json!({
        "NetworkID": id,
        "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "192.168.1.0/24", "Gateway": "192.168.1.1/24"}],
        "IPv6Data": [],
        "Options": {"com.docker.network.enable_ipv6": false, "com.docker.network.generic": {
            "type": "l2bridge",
            "com.docker.network.windowsshim.interface": "eth1",
            "com.docker.network.windowsshim.vlanid": "10",
            "com.docker.network.windowsshim.macpool": "00-15-5D-52-C0-00-00-15-5D-52-CF-FF",
            "com.docker.network.windowsshim.networkname": "wire",
            "com.docker.network.driver.mtu": "1400",
            "fdb_aging": "60"
        }}
    });
    assert_eq!(
        post(&api, "NetworkDriver.CreateNetwork", body),
        (200, json!({}))
    );
    let c = created(&api);
    assert_eq!(c.name, "wire");
    assert_eq!(c.driver, "l2bridge");
    assert_eq!(c.subnets, vec!["192.168.1.0/24"]);
    assert_eq!(c.gateways, vec!["192.168.1.1"]);
    assert_eq!(c.mtu, Some(1400));
    assert_eq!(
        c.mac_pool.as_deref(),
        Some("00:15:5D:52:C0:00-00:15:5D:52:CF:FF")
    );
    assert_eq!(c.options["interface"], "eth1");
    assert_eq!(c.options["vlanid"], "10");
    assert_eq!(c.options["fdb_aging"], "60");
    assert_eq!(c.labels[NETWORK_LABEL], id);

    let api = Fake::default();
    let body = json!({"NetworkID": id, "Options": {"com.docker.network.generic": {"vlanid": "7"}}});
    post(&api, "NetworkDriver.CreateNetwork", body);
    let c = created(&api);
    assert_eq!(
        (c.name.as_str(), c.driver.as_str()),
        ("docker-0123456789ab", "nat")
    );
    assert_eq!(c.options["vlanid"], "7");
}

#[test]
fn refusals_name_the_docker_option() {
    let cases = [
        (
            json!({"com.docker.network.windowsshim.dnsservers": "1.1.1.1"}),
            "com.docker.network.windowsshim.dnsservers",
        ),
        (
            json!({"com.docker.network.windowsshim.enable_outboundnat": "perhaps"}),
            "enable_outboundnat",
        ),
        (
            json!({"com.docker.network.windowsshim.outboundnat_exceptions": "10.0.0.0/8"}),
            "needs -o",
        ),
    ];
    for (generic, expect) in cases {
        let api = Fake::default();
        let body = json!({"NetworkID": "abc", "Options": {"com.docker.network.generic": generic}});
        let (status, err) = post(&api, "NetworkDriver.CreateNetwork", body);
        assert_eq!(status, 500);
        let text = err["Err"].as_str().unwrap();
        assert!(text.contains(expect), "{text}");
    }
    // The controller's field, in Docker's words.
    let api = Fake::default();
    *api.refuse.lock().unwrap() = Some(ApiError::new(
        ErrorKind::InvalidArgument,
        Some("options.vlanid"),
        "expected 1-4094",
    ));
    let body = json!({"NetworkID": "abc", "Options": {"com.docker.network.generic": {
        "com.docker.network.windowsshim.vlanid": "5000"}}});
    let (status, err) = post(&api, "NetworkDriver.CreateNetwork", body);
    assert_eq!(status, 500);
    assert_eq!(
        err["Err"],
        "vswitch: -o com.docker.network.windowsshim.vlanid: expected 1-4094"
    );
    let api = Fake::default();
    *api.refuse.lock().unwrap() = Some(ApiError::new(
        ErrorKind::InvalidArgument,
        Some("driver"),
        "unknown driver 'x'",
    ));
    let body =
        json!({"NetworkID": "abc", "Options": {"com.docker.network.generic": {"type": "x"}}});
    assert_eq!(
        post(&api, "NetworkDriver.CreateNetwork", body).1["Err"],
        "vswitch: -o type: unknown driver 'x'"
    );
    // Malformed JSON names its path.
    let (status, err) = post(
        &Fake::default(),
        "NetworkDriver.CreateNetwork",
        json!({"NetworkID": 5}),
    );
    assert_eq!(status, 500);
    assert!(err["Err"].as_str().unwrap().contains("NetworkID"), "{err}");
}

#[test]
fn outbound_nat_becomes_a_network_policy() {
    let api = Fake::default();
    let body = json!({"NetworkID": "abc", "IPv4Data": [{"Pool": "10.0.0.0/24", "Gateway": "10.0.0.1/24"}],
        "Options": {"com.docker.network.generic": {"type": "l2bridge", "interface": "eth1",
        "com.docker.network.windowsshim.enable_outboundnat": "true",
        "com.docker.network.windowsshim.outboundnat_exceptions": "10.0.0.0/8, 192.168.0.0/16"}}});
    assert_eq!(post(&api, "NetworkDriver.CreateNetwork", body).0, 200);
    let add = api.seen.lock().unwrap().iter().find_map(|r| match r {
        Request::PolicyAdd(a) => Some(a.clone()),
        _ => None,
    });
    let add = add.expect("a PolicyAdd");
    assert_eq!(add.network.as_deref(), Some("docker-abc"));
    assert_eq!(
        add.policies,
        json!({"Type": "OutBoundNAT", "Settings": {"Exceptions": ["10.0.0.0/8", "192.168.0.0/16"]}})
    );
}

#[test]
fn port_bindings_become_port_mappings() {
    let options = json!({PORTMAP: [
        {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080},
        {"Proto": 6, "IP": "", "Port": 80, "HostIP": "::", "HostPort": 8080, "HostPortEnd": 8080},
        {"Proto": 17, "IP": "", "Port": 53, "HostIP": "", "HostPort": 0, "HostPortEnd": 0}
    ]});
    let got = port_mappings(options.as_object().unwrap()).unwrap();
    assert_eq!(
        got,
        vec![
            json!({"Type": "PortMapping", "Settings": {"Protocol": 6, "InternalPort": 80, "ExternalPort": 8080}}),
            json!({"Type": "PortMapping", "Settings": {"Protocol": 17, "InternalPort": 53, "ExternalPort": 0}}),
        ]
    );
    let bad = json!({PORTMAP: [{"Proto": 6, "Port": 80, "HostIP": "127.0.0.1", "HostPort": 8080}]});
    assert!(port_mappings(bad.as_object().unwrap())
        .unwrap_err()
        .0
        .contains("127.0.0.1"));
    let range = json!({PORTMAP: [{"Proto": 6, "Port": 80, "HostPort": 8080, "HostPortEnd": 8090}]});
    assert!(port_mappings(range.as_object().unwrap())
        .unwrap_err()
        .0
        .contains("8080-8090"));
    assert_eq!(mapping_fields(&got[0]), Some((6, 80, 8080)),);
}

#[test]
fn qos_policies_take_the_windows_form() {
    let got = qos_policies(r#"[{"MaximumOutgoingBandwidthInBytes": 1000000}]"#).unwrap();
    assert_eq!(
        got,
        vec![json!({"Type": "QOS", "MaximumOutgoingBandwidthInBytes": 1000000})]
    );
    assert!(qos_policies("fast").unwrap_err().0.contains("qospolicies"));
}

#[test]
fn endpoints_are_handed_off_with_dockers_addresses() {
    let api = Fake::default();
    api.networks
        .lock()
        .unwrap()
        .push(network("docker-abc", "abc", "nat"));
    let body = json!({"NetworkID": "abc", "EndpointID": "e0123456789abcdef",
        "Interface": {"Address": "172.30.0.5/24", "AddressIPv6": "", "MacAddress": ""},
        "Options": {"com.docker.network.endpoint.exposedports": [], "com.docker.endpoint.windowsshim.qospolicies": "[{\"MaximumOutgoingBandwidthInBytes\": 1000}]"}});
    // The fake answers EndpointCreate with Removed: an unexpected reply,
    // after the request was sent; the request is what is checked here.
    let _ = post(&api, "NetworkDriver.CreateEndpoint", body);
    let create = api.seen.lock().unwrap().iter().find_map(|r| match r {
        Request::EndpointCreate(c) => Some(c.clone()),
        _ => None,
    });
    let c = create.expect("an EndpointCreate");
    assert!(c.handoff);
    assert_eq!(c.name, "docker-e0123456789a");
    assert_eq!(c.network, "docker-abc");
    assert_eq!(c.ip.as_deref(), Some("172.30.0.5"));
    assert_eq!(c.netns, "");
    assert_eq!(c.labels[ENDPOINT_LABEL], "e0123456789abcdef");
    assert_eq!(
        c.policies,
        json!([{"Type": "QOS", "MaximumOutgoingBandwidthInBytes": 1000}])
    );

    let body = json!({"NetworkID": "abc", "EndpointID": "e1", "Options": {"colour": "blue"}});
    let (status, err) = post(&api, "NetworkDriver.CreateEndpoint", body);
    assert_eq!(status, 500);
    assert!(
        err["Err"].as_str().unwrap().contains("--driver-opt colour"),
        "{err}"
    );
    let body = json!({"NetworkID": "nope", "EndpointID": "e1"});
    let (_, err) = post(&api, "NetworkDriver.CreateEndpoint", body);
    assert!(err["Err"].as_str().unwrap().contains("NetworkID"), "{err}");
}

#[test]
fn deleting_what_is_gone_succeeds() {
    let api = Fake::default();
    assert_eq!(
        post(
            &api,
            "NetworkDriver.DeleteNetwork",
            json!({"NetworkID": "x"})
        ),
        (200, json!({}))
    );
    assert_eq!(
        post(
            &api,
            "NetworkDriver.DeleteEndpoint",
            json!({"NetworkID": "x", "EndpointID": "y"})
        ),
        (200, json!({}))
    );
    assert_eq!(
        post(
            &api,
            "NetworkDriver.Leave",
            json!({"NetworkID": "x", "EndpointID": "y"})
        )
        .0,
        200
    );
}
