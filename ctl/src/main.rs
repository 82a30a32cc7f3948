//! `vswitchctl`: the command-line client of `vswitchd`.
//!
//! Exit status: 0 on success, 1 when the call failed (the reason is one line
//! on stderr, `vswitchctl: ...`), 2 for a malformed command line.

mod capture;
mod cli;
mod client;
mod lab;
mod plan;
mod render;
mod topology;

use std::io::{self, Read, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, Result};
use clap::{CommandFactory, Parser};
use serde::Serialize;
use vswitch_api::{Reply, Response};

use cli::{
    Cli, Command, CommandError, DatapathCommand, EndpointCommand, FdbCommand, FlowsCommand,
    MappingCommand, NetworkCommand, PolicyCommand, PortCommand, UsageError,
};

pub(crate) const UNEXPECTED: &str = "unexpected reply from daemon";

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Apply(args) => return lab::apply(&cli.socket, args),
        Command::Delete(args) => return lab::delete(&cli.socket, args),
        Command::Capture(args) => return capture::run(&cli.socket, args),
        _ => {}
    }
    let request = match cli.command.request(&mut read_input) {
        Ok(request) => request,
        Err(CommandError::Usage(err)) => usage_error(err),
        Err(CommandError::Input(message)) => return fail(anyhow!(message)),
    };
    let result = client::call(&cli.socket, &request).and_then(|resp| output(&cli.command, resp));
    match result {
        Ok(text) => match io::stdout().lock().write_all(text.as_bytes()) {
            // `vswitchctl ... | head` is not a failure.
            Ok(()) => ExitCode::SUCCESS,
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(e) => fail(anyhow!("cannot write to stdout: {e}")),
        },
        Err(err) => fail(err),
    }
}

fn fail(err: anyhow::Error) -> ExitCode {
    // One line, whatever the daemon put in its message.
    let text = format!("{err:#}").replace('\n', " ");
    eprintln!("vswitchctl: {text}");
    ExitCode::from(1)
}

/// A file named on the command line; `-` is stdin.
pub(crate) fn read_input(path: &Path) -> io::Result<String> {
    if path == Path::new("-") {
        let mut text = String::new();
        io::stdin().lock().read_to_string(&mut text)?;
        Ok(text)
    } else {
        std::fs::read_to_string(path)
    }
}

/// Reports `err` the way clap reports its own errors, against the
/// subcommand it concerns, and exits with status 2.
fn usage_error(err: UsageError) -> ! {
    let mut cmd = Cli::command();
    cmd.build();
    let mut sub = &mut cmd;
    for name in err.path {
        sub = sub
            .find_subcommand_mut(name)
            .expect("UsageError names a real subcommand");
    }
    sub.error(clap::error::ErrorKind::ValueValidation, err.message)
        .exit()
}

/// A removal's warning goes to stderr, so scripts reading stdout see the
/// same line either way.
fn warn(warning: Option<String>) {
    if let Some(w) = warning {
        eprintln!("vswitchctl: warning: {w}");
    }
}

/// What to print for the daemon's answer to `command`.
fn output(command: &Command, response: Response) -> Result<String> {
    let reply = match response {
        Response::Ok(reply) => reply,
        Response::Error(err) => return Err(err.into()),
    };
    let text = match (command, reply) {
        (Command::Network(NetworkCommand::Create(args)), Reply::Network(net)) => {
            if args.format.json {
                json(&net)?
            } else {
                line(render::network_created(&net))
            }
        }
        (Command::Network(NetworkCommand::Ls(format)), Reply::Networks(nets)) => {
            if format.json {
                json(&nets)?
            } else {
                render::networks(&nets)
            }
        }
        (Command::Network(NetworkCommand::Inspect { .. }), Reply::Network(net)) => json(&net)?,
        (Command::Network(NetworkCommand::Rm { .. }), Reply::Removed { name, warning }) => {
            warn(warning);
            line(format!("removed network {name}"))
        }
        (Command::Endpoint(EndpointCommand::Create(args)), Reply::Endpoint(ep)) => {
            if args.format.json {
                json(&ep)?
            } else {
                line(render::endpoint_created(&ep))
            }
        }
        (Command::Endpoint(EndpointCommand::Ls(format)), Reply::Endpoints(eps)) => {
            if format.json {
                json(&eps)?
            } else {
                render::endpoints(&eps)
            }
        }
        // `set` answers with the endpoint as it now is, shown as `inspect` shows it.
        (
            Command::Endpoint(EndpointCommand::Inspect { .. } | EndpointCommand::Set(_)),
            Reply::Endpoint(ep),
        ) => json(&ep)?,
        (Command::Endpoint(EndpointCommand::Rm { .. }), Reply::Removed { name, warning }) => {
            warn(warning);
            line(format!("removed endpoint {name}"))
        }
        (Command::Port(PortCommand::Ls(format)), Reply::Ports(ports)) => {
            if format.json {
                json(&ports)?
            } else {
                render::ports(&ports)
            }
        }
        (Command::Stats { port, format }, Reply::Stats(stats)) => {
            if format.json {
                json(&stats)?
            } else {
                render::stats(&stats, port.is_some())
            }
        }
        (Command::Fdb(FdbCommand::Show { format, .. }), Reply::Fdb(entries)) => {
            if format.json {
                json(&entries)?
            } else {
                render::fdb(&entries)
            }
        }
        (Command::Policy(PolicyCommand::Add { format, .. }), Reply::Policies(views)) => {
            if format.json {
                json(&views)?
            } else {
                render::policies_added(&views)
            }
        }
        (Command::Policy(PolicyCommand::Ls { format, .. }), Reply::Policies(views)) => {
            if format.json {
                json(&views)?
            } else {
                render::policies(&views)
            }
        }
        (Command::Policy(PolicyCommand::Rm { owner, .. }), Reply::Removed { name, warning }) => {
            warn(warning);
            let owner = render::owner(owner.endpoint.as_deref(), owner.network.as_deref());
            line(format!("removed policy '{name}' from {owner}"))
        }
        (Command::Trace(args), Reply::Trace(trace)) => {
            if args.format.json {
                json(&trace)?
            } else {
                render::trace(&trace)
            }
        }
        (Command::Flows(FlowsCommand::Dump { format, .. }), Reply::Flows(flows)) => {
            if format.json {
                json(&flows)?
            } else {
                render::flows(&flows)
            }
        }
        (
            Command::Network(
                NetworkCommand::Mappings { format, .. }
                | NetworkCommand::Mapping(MappingCommand::Add { format, .. }),
            ),
            Reply::Mappings(m),
        ) => {
            if format.json {
                json(&m)?
            } else {
                render::mappings(&m)
            }
        }
        (
            Command::Network(NetworkCommand::Mapping(MappingCommand::Rm { ip, .. })),
            Reply::Mappings(_),
        ) => line(format!("removed mapping {ip}")),
        (Command::Datapath(DatapathCommand::Show(format)), Reply::Datapath(info)) => {
            if format.json {
                json(&info)?
            } else {
                render::datapath(&info)
            }
        }
        _ => return Err(anyhow!(UNEXPECTED)),
    };
    Ok(text)
}

/// Pretty JSON of a reply's payload (not of the `{"Ok": ...}` envelope).
fn json<T: Serialize>(value: &T) -> Result<String> {
    Ok(line(serde_json::to_string_pretty(value)?))
}

fn line(mut text: String) -> String {
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use vswitch_api::{ApiError, ErrorKind};

    fn command(args: &[&str]) -> Command {
        Cli::try_parse_from(std::iter::once("vswitchctl").chain(args.iter().copied()))
            .unwrap()
            .command
    }

    #[test]
    fn api_error_prints_field_and_message() {
        let resp = Response::Error(ApiError::new(
            ErrorKind::InvalidArgument,
            Some("Type"),
            "unknown driver 'bogus'",
        ));
        let err = output(&command(&["network", "ls"]), resp).unwrap_err();
        assert_eq!(format!("{err:#}"), "Type: unknown driver 'bogus'");
    }

    #[test]
    fn mismatched_reply_is_refused() {
        let resp = Response::Ok(Reply::Removed {
            name: "x".into(),
            warning: None,
        });
        let err = output(&command(&["network", "ls"]), resp).unwrap_err();
        assert_eq!(err.to_string(), UNEXPECTED);
        let resp = Response::Ok(Reply::Removed {
            name: "x".into(),
            warning: None,
        });
        let err = output(&command(&["endpoint", "inspect", "x"]), resp).unwrap_err();
        assert_eq!(err.to_string(), UNEXPECTED);
        // Removed carries no noun, so any Removed answers any removal.
        let resp = Response::Ok(Reply::Removed {
            name: "x".into(),
            warning: None,
        });
        assert!(output(&command(&["network", "rm", "x"]), resp).is_ok());
    }

    #[test]
    fn json_prints_the_payload_only() {
        let net = render::tests::network();
        let resp = Response::Ok(Reply::Networks(vec![net.clone()]));
        let text = output(&command(&["network", "ls", "--json"]), resp).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(value.is_array(), "{text}");
        assert_eq!(value[0]["Name"], "net1");
        assert_eq!(value, serde_json::to_value(vec![net]).unwrap());
    }

    #[test]
    fn inspect_is_pretty_json() {
        let resp = Response::Ok(Reply::Endpoint(render::tests::endpoint()));
        let text = output(&command(&["endpoint", "inspect", "ep1"]), resp).unwrap();
        assert!(text.starts_with("{\n  \"ID\": \"77aa\",\n"), "{text}");
        assert!(text.ends_with("}\n"));
    }

    #[test]
    fn create_prints_one_line_or_json() {
        let args = [
            "endpoint",
            "create",
            "--network",
            "net1",
            "--netns",
            "ns1",
            "ep1",
        ];
        let resp = Response::Ok(Reply::Endpoint(render::tests::endpoint()));
        assert_eq!(
            output(&command(&args), resp).unwrap(),
            "created endpoint ep1: 10.1.0.2/24 02:15:5d:12:34:56 in ns1 eth0\n"
        );
        let mut with_json = args.to_vec();
        with_json.insert(2, "--json");
        let resp = Response::Ok(Reply::Endpoint(render::tests::endpoint()));
        let text = output(&command(&with_json), resp).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["MacAddress"], "02:15:5d:12:34:56");
    }

    #[test]
    fn remove_prints_name() {
        let resp = Response::Ok(Reply::Removed {
            name: "ep1".into(),
            warning: None,
        });
        assert_eq!(
            output(&command(&["endpoint", "remove", "ep1"]), resp).unwrap(),
            "removed endpoint ep1\n"
        );
    }

    #[test]
    fn endpoint_set_prints_the_endpoint_as_inspect_does() {
        let inspect = output(
            &command(&["endpoint", "inspect", "ep1"]),
            Response::Ok(Reply::Endpoint(render::tests::endpoint())),
        )
        .unwrap();
        let set = output(
            &command(&["endpoint", "set", "--dhcp-guard", "off", "ep1"]),
            Response::Ok(Reply::Endpoint(render::tests::endpoint())),
        )
        .unwrap();
        assert_eq!(set, inspect);
        assert!(set.contains("\"DhcpGuard\": true"), "{set}");
    }

    #[test]
    fn policy_rm_names_the_owner() {
        let resp = Response::Ok(Reply::Removed {
            name: "allow-web".into(),
            warning: None,
        });
        assert_eq!(
            output(
                &command(&["policy", "rm", "--network", "net1", "allow-web"]),
                resp
            )
            .unwrap(),
            "removed policy 'allow-web' from network net1\n"
        );
    }

    #[test]
    fn policy_add_prints_ids_or_json() {
        let view = vswitch_api::PolicyView {
            id: "allow-web".into(),
            kind: "ACL".into(),
            endpoint: Some("ep1".into()),
            network: None,
            settings: serde_json::json!({"Type": "ACL"}),
            hits: None,
        };
        let args = ["policy", "add", "--endpoint", "ep1", "--file", "a.json"];
        let resp = Response::Ok(Reply::Policies(vec![view.clone()]));
        assert_eq!(
            output(&command(&args), resp).unwrap(),
            "added ACL policy 'allow-web' to endpoint ep1\n"
        );
        let mut with_json = args.to_vec();
        with_json.push("--json");
        let resp = Response::Ok(Reply::Policies(vec![view]));
        let value: serde_json::Value =
            serde_json::from_str(&output(&command(&with_json), resp).unwrap()).unwrap();
        assert_eq!(value[0]["ID"], "allow-web");
    }
}
