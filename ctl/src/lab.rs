//! `vswitchctl apply -f` and `delete -f`: reads the lab file, what the
//! daemon and the machine have, plans ([`crate::plan`]), then takes the
//! steps one by one, printing each as it is done.
//!
//! The fabric (namespaces, bridges, veth links) is made with `ip`, here in
//! the CLI: the daemon owns networks and endpoints, not namespaces. What a
//! lab made is kept in its record, `labs/NAME.json` beside the daemon's
//! socket (`/run/vswitch/labs/` by default): on tmpfs, like the namespaces
//! and links it lists, so both go at a reboot. The record is written after
//! every step, so a run that fails half-way still knows what it made.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, ExitCode};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use vswitch_api::{Reply, Request, Response};

use crate::cli::{ApplyArgs, DeleteArgs};
use crate::plan::{self, Current, Iface, IfaceState, Op, Plan, Record};
use crate::topology::{self, Fault, Lab};

/// What went wrong: faults of the file (each on its own line), or one
/// failure.
enum LabError {
    Faults(String, Vec<Fault>),
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for LabError {
    fn from(e: anyhow::Error) -> Self {
        LabError::Failed(e)
    }
}

pub fn apply(socket: &Path, args: &ApplyArgs) -> ExitCode {
    finish(run(
        socket,
        &args.file,
        args.dry_run,
        args.format.json,
        |lab, now, record| plan::apply(lab, now, record, args.prune),
        false,
    ))
}

pub fn delete(socket: &Path, args: &DeleteArgs) -> ExitCode {
    finish(run(
        socket,
        &args.file,
        args.dry_run,
        args.format.json,
        plan::delete,
        true,
    ))
}

fn finish(result: Result<(), LabError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(LabError::Faults(file, faults)) => {
            for f in faults {
                let at = match f.line {
                    Some((l, c)) => format!("{file}:{l}:{c}"),
                    None => file.clone(),
                };
                let field = if f.field.is_empty() {
                    String::new()
                } else {
                    format!("{}: ", f.field)
                };
                eprintln!("vswitchctl: {at}: {field}{}", f.message);
            }
            eprintln!("vswitchctl: {file}: refused, nothing changed");
            ExitCode::from(1)
        }
        Err(LabError::Failed(e)) => {
            let text = format!("{e:#}").replace('\n', " ");
            eprintln!("vswitchctl: {text}");
            ExitCode::from(1)
        }
    }
}

fn run(
    socket: &Path,
    path: &Path,
    dry_run: bool,
    json: bool,
    make_plan: impl Fn(&Lab, &Current, &Record) -> Result<Plan, Vec<Fault>>,
    deleting: bool,
) -> Result<(), LabError> {
    let shown = if path == Path::new("-") {
        "-".to_owned()
    } else {
        path.display().to_string()
    };
    let text = crate::read_input(path)
        .map_err(|e| anyhow!("cannot read {shown}: {}", crate::client::reason(&e)))?;
    let lab = topology::parse(&text, path).map_err(|f| LabError::Faults(shown.clone(), f))?;
    let record_file = record_path(socket, &lab.name);
    let mut record = read_record(&record_file)?;
    record.lab = lab.name.clone();
    let now = current(socket, &lab, &record)?;
    let plan = make_plan(&lab, &now, &record).map_err(|f| LabError::Faults(shown.clone(), f))?;

    let mut out = io::stdout().lock();
    if dry_run {
        let text = if json {
            format!(
                "{}\n",
                serde_json::to_string_pretty(&plan).map_err(anyhow::Error::from)?
            )
        } else {
            plan.text()
        };
        let _ = out.write_all(text.as_bytes());
        return Ok(());
    }
    if plan.steps.is_empty() && !json {
        let _ = out.write_all(plan.text().as_bytes());
    }
    for step in &plan.steps {
        take(socket, &step.op).with_context(|| step.line())?;
        plan::record_step(&mut record, step);
        write_record(&record_file, &record)?;
        if !json {
            let _ = writeln!(out, "{}", step.line());
            let _ = out.flush();
        }
    }
    if deleting {
        match std::fs::remove_file(&record_file) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow!("cannot remove {}: {e}", record_file.display()).into()),
        }
    } else {
        // What the file describes is the lab's from now on, made or found.
        record
            .networks
            .extend(lab.file.networks.iter().map(|n| n.name.clone()));
        record
            .endpoints
            .extend(lab.file.endpoints.iter().map(|e| e.name.clone()));
        write_record(&record_file, &record)?;
    }
    if json {
        let text = serde_json::to_string_pretty(&plan).map_err(anyhow::Error::from)?;
        let _ = writeln!(out, "{text}");
    }
    Ok(())
}

/// `labs/NAME.json` beside the socket: one record per daemon and lab.
fn record_path(socket: &Path, lab: &str) -> PathBuf {
    let dir = match socket.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    dir.join("labs").join(format!("{lab}.json"))
}

fn read_record(path: &Path) -> Result<Record> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{} is not a lab record", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Record::default()),
        Err(e) => Err(anyhow!("cannot read {}: {e}", path.display())),
    }
}

/// Written whole or not at all (temporary file, then rename).
fn write_record(path: &Path, record: &Record) -> Result<()> {
    let dir = path.parent().expect("record paths have a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(record)?;
    std::fs::write(&tmp, text + "\n").with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn call(socket: &Path, request: &Request) -> Result<Reply> {
    match crate::client::call(socket, request)? {
        Response::Ok(reply) => Ok(reply),
        Response::Error(e) => Err(e.into()),
    }
}

/// What the daemon has, and the parts of the machine the lab names.
fn current(socket: &Path, lab: &Lab, record: &Record) -> Result<Current> {
    let mut now = Current::default();
    match call(socket, &Request::NetworkList)? {
        Reply::Networks(n) => now.networks = n,
        _ => bail!(crate::UNEXPECTED),
    }
    match call(socket, &Request::EndpointList)? {
        Reply::Endpoints(e) => now.endpoints = e,
        _ => bail!(crate::UNEXPECTED),
    }
    let all = Request::PolicyList {
        endpoint: None,
        network: None,
    };
    match call(socket, &all)? {
        Reply::Policies(p) => now.policies = p,
        _ => bail!(crate::UNEXPECTED),
    }
    if let Ok(dir) = std::fs::read_dir("/run/netns") {
        now.namespaces = dir
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
    }
    for e in &lab.file.endpoints {
        if e.namespace.starts_with('/') && Path::new(&e.namespace).exists() {
            now.paths.insert(e.namespace.clone());
        }
    }
    for iface in plan::ifaces_to_probe(lab, record) {
        if let Some(state) = probe(&now, &iface) {
            now.ifaces.insert(iface, state);
        }
    }
    Ok(now)
}

/// An interface's state, `None` if it (or its namespace) is not there.
fn probe(now: &Current, iface: &Iface) -> Option<IfaceState> {
    if let Some(ns) = &iface.namespace {
        if !now.namespaces.contains(ns) {
            return None;
        }
    }
    let mut cmd = Process::new("ip");
    if let Some(ns) = &iface.namespace {
        cmd.args(["-n", ns]);
    }
    let out = cmd
        .args(["-j", "addr", "show", "dev", &iface.name])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let link = v.as_array()?.first()?;
    let up = link["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP"));
    let master = link["master"].as_str().map(str::to_owned);
    let addresses = link["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| {
                    Some(format!(
                        "{}/{}",
                        i["local"].as_str()?,
                        i["prefixlen"].as_u64()?
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    Some(IfaceState {
        up,
        master,
        addresses,
    })
}

/// Takes one step.
fn take(socket: &Path, op: &Op) -> Result<()> {
    if let Op::Request(request) = op {
        call(socket, request)?;
        return Ok(());
    }
    for cmd in op.commands() {
        let out = Process::new(&cmd[0])
            .args(&cmd[1..])
            .output()
            .with_context(|| format!("cannot run {}", cmd[0]))?;
        if !out.status.success() {
            bail!(
                "{}: {}",
                cmd.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_lives_beside_the_socket() {
        assert_eq!(
            record_path(Path::new("/run/vswitch/vswitchd.sock"), "lab"),
            Path::new("/run/vswitch/labs/lab.json")
        );
        assert_eq!(
            record_path(Path::new("x.sock"), "l"),
            Path::new("./labs/l.json")
        );
    }

    #[test]
    fn record_round_trips() {
        let dir = std::env::temp_dir().join(format!("vswitchctl-rec-{}", std::process::id()));
        let path = dir.join("labs").join("t.json");
        assert_eq!(read_record(&path).unwrap(), Record::default());
        let mut r = Record {
            lab: "t".into(),
            ..Default::default()
        };
        r.namespaces.insert("ns".into());
        r.links.insert(plan::LinkPair {
            a: Iface::new(None, "up0"),
            b: Iface::new(Some("f"), "p0"),
        });
        write_record(&path, &r).unwrap();
        assert_eq!(read_record(&path).unwrap(), r);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
