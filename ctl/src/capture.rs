//! `vswitchctl capture`: tcpdump on a port's device, from the switch's side.
//!
//! The switch keeps no capture hook of its own (so capturing costs nothing
//! when nobody captures): the CLI asks the daemon where the port's device
//! is and runs tcpdump there. An endpoint's vNIC is captured inside the
//! endpoint's namespace (`nsenter --net`); for a veth endpoint that is the
//! veth end the kernel fast path delivers to and receives from, so
//! fast-path frames are seen too. Host and uplink ports are captured in the
//! daemon's namespace (found from the socket's peer), wherever the CLI
//! runs.
//!
//! Point of view: a vNIC or host port's device is the port's side, so the
//! switch's directions are the device's reversed; an uplink's device is
//! the wire, whose directions are the switch's. Either way frames leaving
//! the switch are seen after its translation (NAT, l2bridge's MAC, VLAN
//! tag) and frames entering it before.

use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{anyhow, Result};
use vswitch_api::{Port, PortKind, Reply, Request, Response};

use crate::cli::{CaptureArgs, Direction};

pub fn run(socket: &Path, args: &CaptureArgs) -> ExitCode {
    match prepare(socket, args) {
        Ok(mut cmd) => {
            // Replaces this process: ^C and the exit status are tcpdump's.
            let err = cmd.exec();
            crate::fail(anyhow!("cannot run {:?}: {err}", cmd.get_program()))
        }
        Err(err) => crate::fail(err),
    }
}

fn prepare(socket: &Path, args: &CaptureArgs) -> Result<Command> {
    let ports = match crate::client::call(socket, &Request::PortList)? {
        Response::Ok(Reply::Ports(ports)) => ports,
        Response::Ok(_) => return Err(anyhow!(crate::UNEXPECTED)),
        Response::Error(e) => return Err(e.into()),
    };
    let port = ports.iter().find(|p| p.name == args.port).ok_or_else(|| {
        anyhow!(
            "port: no port named '{}' (see 'vswitchctl port ls')",
            args.port
        )
    })?;
    let here = match port.kind {
        PortKind::Endpoint => None,
        PortKind::Host | PortKind::Uplink | PortKind::Tunnel => daemon_netns(socket),
    };
    let argv = command_line(port, here.as_deref(), args);
    if port.kind == PortKind::Uplink && port.backend == "afxdp" {
        eprintln!(
            "vswitchctl: note: {} is an AF_XDP uplink: XDP takes the switch's frames past the \
             kernel's capture point, so they may not show (an uplink in tc mode shows them)",
            port.interface
        );
    }
    let mut needed = vec![("tcpdump", "tcpdump")];
    if argv[0] == "nsenter" {
        needed.push(("nsenter", "util-linux"));
    }
    for (program, package) in needed {
        if find_in_path(program).is_none() {
            return Err(anyhow!(
                "capture needs {program}, which is not installed (Debian: apt-get install {package})"
            ));
        }
    }
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    Ok(cmd)
}

/// The namespace file of `netns` as the daemon reports it: a name under
/// /run/netns, or a path.
fn netns_path(netns: &str) -> String {
    if netns.contains('/') {
        netns.to_owned()
    } else {
        format!("/run/netns/{netns}")
    }
}

/// The network namespace of the daemon behind `socket` (its host and
/// uplink ports' devices are there), as /proc/PID/ns/net; `None` when it is
/// ours or cannot be told (another PID namespace: then ours is tried).
fn daemon_netns(socket: &Path) -> Option<String> {
    let stream = UnixStream::connect(socket).ok()?;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes and `len` holds
    // `cred`'s size; the descriptor is the stream's, open for the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 || cred.pid <= 0 {
        return None;
    }
    let theirs = format!("/proc/{}/ns/net", cred.pid);
    let (a, b) = (
        std::fs::metadata(&theirs).ok()?,
        std::fs::metadata("/proc/self/ns/net").ok()?,
    );
    ((a.dev(), a.ino()) != (b.dev(), b.ino())).then_some(theirs)
}

/// The command that captures `port` as `args` asks, program first;
/// `daemon_ns` is where host and uplink ports are (`None`: here).
pub(crate) fn command_line(
    port: &Port,
    daemon_ns: Option<&str>,
    args: &CaptureArgs,
) -> Vec<String> {
    let mut argv: Vec<String> = Vec::new();
    let netns = match port.kind {
        PortKind::Endpoint => port.netns.as_deref().map(netns_path),
        PortKind::Host | PortKind::Uplink | PortKind::Tunnel => daemon_ns.map(str::to_owned),
    };
    if let Some(ns) = netns {
        argv.extend(["nsenter".to_owned(), format!("--net={ns}"), "--".to_owned()]);
    }
    argv.extend(["tcpdump", "-i", &port.interface, "-n"].map(str::to_owned));
    // Write files as the caller, not as tcpdump's unprivileged user.
    argv.extend(["-Z", "root"].map(str::to_owned));
    match &args.write {
        Some(file) => {
            argv.extend(["-U".to_owned(), "-w".to_owned()]);
            argv.push(file.to_string_lossy().into_owned());
        }
        None => argv.push("-l".to_owned()),
    }
    if let Some(n) = args.count {
        argv.extend(["-c".to_owned(), n.to_string()]);
    }
    // The switch's directions are a vNIC's (or host port's) reversed,
    // and the wire's as they are.
    let wire = port.kind == PortKind::Uplink;
    match (args.direction, wire) {
        (Direction::In, false) | (Direction::Out, true) => {
            argv.extend(["-Q", "out"].map(str::to_owned))
        }
        (Direction::Out, false) | (Direction::In, true) => {
            argv.extend(["-Q", "in"].map(str::to_owned))
        }
        (Direction::Both, _) => {}
    }
    if !args.filter.is_empty() {
        argv.push("--".to_owned());
        argv.push(args.filter.join(" "));
    }
    argv
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use vswitch_api::EndpointState;

    use super::*;
    use crate::cli::{Cli, Command as Cmd};

    fn args(argv: &[&str]) -> CaptureArgs {
        let mut full = vec!["vswitchctl", "capture"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full).unwrap().command {
            Cmd::Capture(args) => args,
            other => panic!("not a capture: {other:?}"),
        }
    }

    fn port(kind: PortKind, interface: &str, netns: Option<&str>) -> Port {
        Port {
            name: "p".into(),
            id: 1,
            kind,
            network: "net1".into(),
            interface: interface.into(),
            netns: netns.map(str::to_owned),
            mac_address: "02:15:5d:00:00:02".into(),
            backend: "veth".into(),
            xdp_mode: None,
            offload: true,
            state: EndpointState::Attached,
        }
    }

    fn line(port: &Port, argv: &[&str]) -> String {
        command_line(port, None, &args(argv)).join(" ")
    }

    #[test]
    fn endpoint_capture_enters_its_namespace() {
        let ep = port(PortKind::Endpoint, "eth0", Some("ns1"));
        assert_eq!(
            line(&ep, &["ep1", "-c", "4", "-w", "out.pcap", "icmp"]),
            "nsenter --net=/run/netns/ns1 -- tcpdump -i eth0 -n -Z root -U -w out.pcap -c 4 -- icmp"
        );
        let ep = port(PortKind::Endpoint, "eth1", Some("/proc/42/ns/net"));
        assert_eq!(
            line(&ep, &["ep1"]),
            "nsenter --net=/proc/42/ns/net -- tcpdump -i eth1 -n -Z root -l"
        );
    }

    #[test]
    fn directions_are_the_switchs() {
        let ep = port(PortKind::Endpoint, "eth0", Some("ns1"));
        let tail = |dir: &str| line(&ep, &["--direction", dir, "-w", "-", "ep1"]);
        assert!(tail("in").ends_with("-U -w - -Q out"), "{}", tail("in"));
        assert!(tail("out").ends_with("-U -w - -Q in"), "{}", tail("out"));
        assert!(!tail("both").contains("-Q"), "{}", tail("both"));
    }

    #[test]
    fn host_port_runs_here_and_filter_words_join() {
        let host = port(PortKind::Host, "vsw-net1", None);
        assert_eq!(
            line(
                &host,
                &[
                    "host:net1",
                    "tcp",
                    "port",
                    "80",
                    "and",
                    "not",
                    "host",
                    "10.0.0.1"
                ]
            ),
            "tcpdump -i vsw-net1 -n -Z root -l -- tcp port 80 and not host 10.0.0.1"
        );
    }

    #[test]
    fn host_and_uplink_ports_are_captured_in_the_daemons_namespace() {
        let host = port(PortKind::Host, "vsw-net1", None);
        let ns = Some("/proc/42/ns/net");
        assert_eq!(
            command_line(&host, ns, &args(&["host:net1", "--direction", "in"])).join(" "),
            "nsenter --net=/proc/42/ns/net -- tcpdump -i vsw-net1 -n -Z root -l -Q out"
        );
        // The wire's directions are the switch's.
        let up = port(PortKind::Uplink, "eth1", None);
        assert_eq!(
            command_line(&up, ns, &args(&["uplink:net1", "--direction", "in"])).join(" "),
            "nsenter --net=/proc/42/ns/net -- tcpdump -i eth1 -n -Z root -l -Q in"
        );
        assert!(line(&up, &["uplink:net1", "--direction", "out"]).ends_with("-l -Q out"));
        // An endpoint's namespace is its own, wherever the daemon is.
        let ep = port(PortKind::Endpoint, "eth0", Some("ns1"));
        assert!(command_line(&ep, ns, &args(&["ep1"]))
            .join(" ")
            .starts_with("nsenter --net=/run/netns/ns1 --"));
    }

    #[test]
    fn bad_arguments_are_refused_by_the_parser() {
        for argv in [
            &["capture", "-c", "0", "ep1"][..],
            &["capture", "-c", "x", "ep1"],
            &["capture", "--direction", "sideways", "ep1"],
            &["capture"],
        ] {
            let mut full = vec!["vswitchctl"];
            full.extend_from_slice(argv);
            assert!(Cli::try_parse_from(full).is_err(), "{argv:?}");
        }
    }
}
