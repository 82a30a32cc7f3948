//! Command-line grammar of `vswitchctl` and its translation into API requests.
//!
//! Values the daemon understands better than we do (drivers, CIDRs, MACs,
//! namespaces) are passed through as typed by the user: the daemon validates
//! them and names the offending field, so every client reports the same error.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use vswitch_api::{EndpointCreate, NetworkCreate, Request};

const ABOUT: &str = "\
Control vswitchd, a Linux software switch that reproduces the Hyper-V virtual switch.
Networks are virtual switches; endpoints are vNICs in network namespaces plugged into them.";

const QUICK_START: &str = "\
Quick start:
  vswitchctl network create -d internal --subnet 10.1.0.0/24 --gateway 10.1.0.1 net1
  ip netns add ns1 && vswitchctl endpoint create --network net1 --netns ns1 ep1
  vswitchctl endpoint ls

Run 'vswitchctl COMMAND --help' for each command's arguments.";

const NETWORK_CREATE_EXAMPLES: &str = "\
Options (-o KEY=VALUE):
  fdb_aging=SECONDS   how long a learned MAC is kept without traffic (default 300)
  fdb_max=N           learned MACs kept per network (default 8192)
  offload=on|off      TSO/checksum offload on the network's TAPs (default on)
  interface=IFNAME    the uplink of a transparent or l2bridge network (required for them)
  vlanid=N            802.1Q VLAN of the network on its uplink, 1-4094

Examples:
  vswitchctl network create -d internal --subnet 10.1.0.0/24 --gateway 10.1.0.1 net1
  vswitchctl network create -d private --subnet 10.2.0.0/24 --subnet fd00:2::/64 --mtu 9000 net2
  vswitchctl network create -d l2bridge --subnet 192.168.1.0/24 --gateway 192.168.1.1 -o interface=eth1 wire
  vswitchctl network create -d transparent --subnet 192.168.2.0/24 -o interface=eth2 -o vlanid=20 tr";

const ENDPOINT_CREATE_EXAMPLES: &str = "\
Examples:
  ip netns add ns1
  vswitchctl endpoint create --network net1 --netns ns1 ep1
  vswitchctl endpoint create --network net1 --netns /proc/1234/ns/net --ip 10.1.0.10 --ifname eth1 ep2";

#[derive(Debug, Parser)]
#[command(name = "vswitchctl", version, about = ABOUT, after_help = QUICK_START)]
pub struct Cli {
    /// Unix socket vswitchd listens on, e.g. --socket /tmp/vswitchd.sock
    #[arg(
        long,
        global = true,
        display_order = 1000,
        value_name = "PATH",
        env = vswitch_api::SOCKET_ENV,
        default_value = vswitch_api::DEFAULT_SOCKET
    )]
    pub socket: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage networks (virtual switches)
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Manage endpoints (vNICs in network namespaces)
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// List switch ports (endpoint and host vNICs)
    #[command(subcommand)]
    Port(PortCommand),
    /// Show traffic and drop counters of every port, or of one
    Stats {
        /// Port to show, with each drop reason, e.g. ep1 or host:net1
        port: Option<String>,
        #[command(flatten)]
        format: JsonFlag,
    },
    /// Show the MAC learning tables
    #[command(subcommand)]
    Fdb(FdbCommand),
}

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create a network
    #[command(after_help = NETWORK_CREATE_EXAMPLES)]
    Create(NetworkCreateArgs),
    /// List networks
    #[command(visible_alias = "list")]
    Ls(JsonFlag),
    /// Show everything about a network, as JSON
    Inspect {
        /// Network to show, e.g. net1
        name: String,
        #[command(flatten)]
        format: JsonFlag,
    },
    /// Remove a network
    #[command(visible_alias = "remove")]
    Rm {
        /// Network to remove, e.g. net1
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct NetworkCreateArgs {
    #[arg(short = 'd', long, value_name = "DRIVER", help = driver_help(), long_help = driver_long_help())]
    pub driver: String,
    /// Subnet in CIDR form; give once per address family, e.g. --subnet 10.1.0.0/24 --subnet fd00:1::/64
    #[arg(long = "subnet", value_name = "CIDR")]
    pub subnets: Vec<String>,
    /// Gateway address inside its subnet; once per address family, e.g. --gateway 10.1.0.1
    #[arg(long = "gateway", value_name = "IP")]
    pub gateways: Vec<String>,
    /// MTU of the network's ports, e.g. --mtu 9000 [default: chosen by vswitchd]
    #[arg(long, value_name = "N")]
    pub mtu: Option<u32>,
    /// Range endpoint MACs are allocated from, e.g. --mac-pool 02:15:5d:00:00:00-02:15:5d:00:ff:ff
    #[arg(long, value_name = "START-END")]
    pub mac_pool: Option<String>,
    /// Driver option, repeatable, e.g. -o interface=eth1 -o vlanid=10 (list below)
    #[arg(short = 'o', long = "opt", value_name = "KEY=VALUE", value_parser = parse_option)]
    pub options: Vec<(String, String)>,
    #[command(flatten)]
    pub format: JsonFlag,
    /// Name of the new network, e.g. net1
    pub name: String,
}

#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// Create an endpoint: a vNIC in a network namespace, connected to a network
    #[command(after_help = ENDPOINT_CREATE_EXAMPLES)]
    Create(EndpointCreateArgs),
    /// List endpoints
    #[command(visible_alias = "list")]
    Ls(JsonFlag),
    /// Show everything about an endpoint, as JSON
    Inspect {
        /// Endpoint to show, e.g. ep1
        name: String,
        #[command(flatten)]
        format: JsonFlag,
    },
    /// Remove an endpoint and its interface
    #[command(visible_alias = "remove")]
    Rm {
        /// Endpoint to remove, e.g. ep1
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct EndpointCreateArgs {
    /// Network to connect to, e.g. --network net1
    #[arg(long, value_name = "NET")]
    pub network: String,
    /// Namespace to put the interface in: a name under /run/netns or a path, e.g. --netns ns1 or --netns /proc/1234/ns/net
    #[arg(long, value_name = "NS")]
    pub netns: String,
    /// Static IPv4 address, e.g. --ip 10.1.0.10 [default: allocated from the subnet]
    #[arg(long, value_name = "IP")]
    pub ip: Option<String>,
    /// Static IPv6 address, e.g. --ipv6 fd00:1::10 [default: allocated if the network has an IPv6 subnet]
    #[arg(long, value_name = "IP")]
    pub ipv6: Option<String>,
    /// MAC address, e.g. --mac 02:15:5d:12:34:56 [default: allocated from the network's MAC pool]
    #[arg(long, value_name = "MAC")]
    pub mac: Option<String>,
    /// Interface name inside the namespace, e.g. --ifname eth1 [default: eth0]
    #[arg(long, value_name = "IF")]
    pub ifname: Option<String>,
    /// Let the endpoint send from MAC or IP addresses that are not its own
    #[arg(long)]
    pub allow_spoofing: bool,
    #[command(flatten)]
    pub format: JsonFlag,
    /// Name of the new endpoint, e.g. ep1
    pub name: String,
}

#[derive(Debug, Subcommand)]
pub enum PortCommand {
    /// List ports
    #[command(visible_alias = "list")]
    Ls(JsonFlag),
}

#[derive(Debug, Subcommand)]
pub enum FdbCommand {
    /// Show the MAC addresses a network has learned, with their port and age
    Show {
        /// Network whose table to show, e.g. net1
        network: String,
        #[command(flatten)]
        format: JsonFlag,
    },
}

#[derive(Debug, Clone, Copy, Default, Args)]
pub struct JsonFlag {
    /// Print the daemon's answer as JSON instead of text, for scripts
    #[arg(long)]
    pub json: bool,
}

/// A command line that clap accepted but that is still wrong; reported like a
/// clap error (exit status 2) against the subcommand at `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError {
    pub path: &'static [&'static str],
    pub message: String,
}

fn driver_help() -> String {
    format!(
        "Network driver, one of: {}; e.g. -d internal",
        vswitch_api::DRIVERS.join(", ")
    )
}

fn driver_long_help() -> String {
    let mut text = "Network driver; e.g. -d internal:".to_owned();
    for d in vswitch_api::Driver::ALL {
        text.push_str(&format!("\n  {:<12} {}", d.name(), d.summary()));
    }
    text
}

/// Parses one `-o KEY=VALUE`. The value may be empty, the key may not.
pub fn parse_option(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some(("", _)) => Err("the key before '=' is empty".to_owned()),
        Some((key, value)) => Ok((key.to_owned(), value.to_owned())),
        None => Err("expected KEY=VALUE, e.g. -o vlanid=10".to_owned()),
    }
}

impl Command {
    /// The request this command sends to the daemon.
    pub fn request(&self) -> Result<Request, UsageError> {
        Ok(match self {
            Command::Network(NetworkCommand::Create(args)) => {
                Request::NetworkCreate(args.request()?)
            }
            Command::Network(NetworkCommand::Ls(_)) => Request::NetworkList,
            Command::Network(NetworkCommand::Inspect { name, .. }) => {
                Request::NetworkInspect { name: name.clone() }
            }
            Command::Network(NetworkCommand::Rm { name }) => {
                Request::NetworkRemove { name: name.clone() }
            }
            Command::Endpoint(EndpointCommand::Create(args)) => {
                Request::EndpointCreate(args.request())
            }
            Command::Endpoint(EndpointCommand::Ls(_)) => Request::EndpointList,
            Command::Endpoint(EndpointCommand::Inspect { name, .. }) => {
                Request::EndpointInspect { name: name.clone() }
            }
            Command::Endpoint(EndpointCommand::Rm { name }) => {
                Request::EndpointRemove { name: name.clone() }
            }
            Command::Port(PortCommand::Ls(_)) => Request::PortList,
            Command::Stats { port, .. } => Request::Stats { port: port.clone() },
            Command::Fdb(FdbCommand::Show { network, .. }) => Request::FdbShow {
                network: network.clone(),
            },
        })
    }
}

impl NetworkCreateArgs {
    fn request(&self) -> Result<NetworkCreate, UsageError> {
        let mut options = BTreeMap::new();
        for (key, value) in &self.options {
            if options.insert(key.clone(), value.clone()).is_some() {
                return Err(UsageError {
                    path: &["network", "create"],
                    message: format!("option '{key}' given more than once with -o"),
                });
            }
        }
        Ok(NetworkCreate {
            name: self.name.clone(),
            driver: self.driver.clone(),
            subnets: self.subnets.clone(),
            gateways: self.gateways.clone(),
            mtu: self.mtu,
            mac_pool: self.mac_pool.clone(),
            options,
        })
    }
}

impl EndpointCreateArgs {
    fn request(&self) -> EndpointCreate {
        EndpointCreate {
            name: self.name.clone(),
            network: self.network.clone(),
            netns: self.netns.clone(),
            ip: self.ip.clone(),
            ipv6: self.ipv6.clone(),
            mac_address: self.mac.clone(),
            ifname: self.ifname.clone(),
            allow_spoofing: self.allow_spoofing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vswitchctl").chain(args.iter().copied()))
    }

    fn request(args: &[&str]) -> Request {
        parse(args).unwrap().command.request().unwrap()
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn network_create_full() {
        let req = request(&[
            "network",
            "create",
            "-d",
            "internal",
            "--subnet",
            "10.1.0.0/24",
            "--subnet",
            "fd00:1::/64",
            "--gateway",
            "10.1.0.1",
            "--mtu",
            "9000",
            "--mac-pool",
            "02:15:5d:00:00:00-02:15:5d:00:ff:ff",
            "-o",
            "vlanid=10",
            "--opt",
            "empty=",
            "net1",
        ]);
        let expected = NetworkCreate {
            name: "net1".into(),
            driver: "internal".into(),
            subnets: vec!["10.1.0.0/24".into(), "fd00:1::/64".into()],
            gateways: vec!["10.1.0.1".into()],
            mtu: Some(9000),
            mac_pool: Some("02:15:5d:00:00:00-02:15:5d:00:ff:ff".into()),
            options: BTreeMap::from([
                ("vlanid".to_owned(), "10".to_owned()),
                ("empty".to_owned(), String::new()),
            ]),
        };
        assert_eq!(req, Request::NetworkCreate(expected));
    }

    #[test]
    fn network_create_minimal_passes_driver_through() {
        // The daemon, not the CLI, judges the driver name.
        let req = request(&["network", "create", "--driver", "bogus", "n"]);
        assert_eq!(
            req,
            Request::NetworkCreate(NetworkCreate {
                name: "n".into(),
                driver: "bogus".into(),
                ..Default::default()
            })
        );
    }

    #[test]
    fn network_create_needs_driver_and_name() {
        let err = parse(&["network", "create", "n"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        let err = parse(&["network", "create", "-d", "internal"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn option_without_equals_is_a_usage_error() {
        let err = parse(&["network", "create", "-d", "internal", "-o", "vlan", "n"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn duplicate_option_key_is_refused() {
        let cli = parse(&[
            "network", "create", "-d", "internal", "-o", "a=1", "-o", "a=2", "n",
        ])
        .unwrap();
        let err = cli.command.request().unwrap_err();
        assert_eq!(err.path, &["network", "create"]);
        assert!(err.message.contains("'a'"), "{}", err.message);
    }

    #[test]
    fn parse_option_cases() {
        assert_eq!(parse_option("k=v"), Ok(("k".into(), "v".into())));
        assert_eq!(parse_option("k=a=b"), Ok(("k".into(), "a=b".into())));
        assert_eq!(parse_option("k="), Ok(("k".into(), String::new())));
        assert!(parse_option("=v").is_err());
        assert!(parse_option("kv").is_err());
    }

    #[test]
    fn list_and_remove_aliases() {
        for noun in ["network", "endpoint", "port"] {
            for verb in ["ls", "list"] {
                let want = match noun {
                    "network" => Request::NetworkList,
                    "endpoint" => Request::EndpointList,
                    _ => Request::PortList,
                };
                assert_eq!(request(&[noun, verb]), want);
            }
        }
        for verb in ["rm", "remove"] {
            assert_eq!(
                request(&["network", verb, "n1"]),
                Request::NetworkRemove { name: "n1".into() }
            );
            assert_eq!(
                request(&["endpoint", verb, "e1"]),
                Request::EndpointRemove { name: "e1".into() }
            );
        }
    }

    #[test]
    fn inspect_requests() {
        assert_eq!(
            request(&["network", "inspect", "n1"]),
            Request::NetworkInspect { name: "n1".into() }
        );
        assert_eq!(
            request(&["endpoint", "inspect", "e1", "--json"]),
            Request::EndpointInspect { name: "e1".into() }
        );
    }

    #[test]
    fn endpoint_create_full() {
        let req = request(&[
            "endpoint",
            "create",
            "--network",
            "net1",
            "--netns",
            "ns1",
            "--ip",
            "10.1.0.10",
            "--ipv6",
            "fd00:1::10",
            "--mac",
            "02:15:5d:12:34:56",
            "--ifname",
            "eth1",
            "--allow-spoofing",
            "ep1",
        ]);
        assert_eq!(
            req,
            Request::EndpointCreate(EndpointCreate {
                name: "ep1".into(),
                network: "net1".into(),
                netns: "ns1".into(),
                ip: Some("10.1.0.10".into()),
                ipv6: Some("fd00:1::10".into()),
                mac_address: Some("02:15:5d:12:34:56".into()),
                ifname: Some("eth1".into()),
                allow_spoofing: true,
            })
        );
    }

    #[test]
    fn endpoint_create_needs_network_and_netns() {
        let err = parse(&["endpoint", "create", "--network", "n", "ep"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        let err = parse(&["endpoint", "create", "--netns", "ns", "ep"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn stats_and_fdb_requests() {
        assert_eq!(request(&["stats"]), Request::Stats { port: None });
        assert_eq!(
            request(&["stats", "ep1", "--json"]),
            Request::Stats {
                port: Some("ep1".into())
            }
        );
        assert_eq!(
            request(&["fdb", "show", "net1"]),
            Request::FdbShow {
                network: "net1".into()
            }
        );
    }

    #[test]
    fn socket_flag_anywhere() {
        let cli = parse(&["--socket", "/tmp/a.sock", "network", "ls"]).unwrap();
        assert_eq!(cli.socket, PathBuf::from("/tmp/a.sock"));
        let cli = parse(&["network", "ls", "--socket", "/tmp/b.sock"]).unwrap();
        assert_eq!(cli.socket, PathBuf::from("/tmp/b.sock"));
        if std::env::var_os(vswitch_api::SOCKET_ENV).is_none() {
            let cli = parse(&["network", "ls"]).unwrap();
            assert_eq!(cli.socket, PathBuf::from(vswitch_api::DEFAULT_SOCKET));
        }
    }

    #[test]
    fn help_names_drivers_and_socket_default() {
        let top = Cli::command().render_long_help().to_string();
        assert!(top.contains(vswitch_api::DEFAULT_SOCKET), "{top}");
        assert!(top.contains("Hyper-V"), "{top}");
        let mut cmd = Cli::command();
        let create = cmd
            .find_subcommand_mut("network")
            .unwrap()
            .find_subcommand_mut("create")
            .unwrap();
        let help = create.render_long_help().to_string();
        for driver in vswitch_api::Driver::ALL {
            assert!(help.contains(driver.name()), "{help}");
            assert!(help.contains(driver.summary()), "{help}");
        }
    }
}
