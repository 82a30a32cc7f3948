//! `vswitchd`: the switch daemon. Owns the networks and endpoints, serves the
//! control API on a Unix socket (and, with `--metrics`, Prometheus scrapes
//! over TCP), and runs the datapath.

use std::fs::{self, OpenOptions};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing_subscriber::filter::LevelFilter;
use vswitch::api::{DEFAULT_SOCKET, DEFAULT_STATE_DIR};
use vswitch::control::server::Server;
use vswitch::control::shared::Shared;
use vswitch::control::Controller;
use vswitch::metrics::MetricsServer;
use vswitch::overlay::store::{Store, StoreConfig};
use vswitch::pipeline::conntrack::Limits;

/// The vswitch daemon: a software switch reproducing the Hyper-V virtual
/// switch with namespaces, TAPs and a userspace datapath.
///
/// State is restored from --state-dir on start. SIGTERM or SIGINT stop the
/// daemon cleanly; endpoints stay configured in their namespaces and are
/// re-attached on the next start.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Directory holding state.json (created 0700 if missing).
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Path of the control socket (mode 0600, root only).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    log_level: LevelFilter,
    /// On a clean stop, remove the XDP programs from uplink interfaces.
    /// Without it they stay attached (passing every frame to the host) and
    /// the next start replaces them.
    #[arg(long)]
    detach_on_exit: bool,
    /// Connections tracked in all (stateful ACLs); past it, new ones are
    /// dropped (counted as conntrack_full) and established ones go on.
    #[arg(long, default_value_t = Limits::default().global, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=16_777_216))]
    conntrack_max: usize,
    /// Connections tracked per endpoint port (where they start), so one
    /// busy endpoint cannot take the whole table.
    #[arg(long, default_value_t = Limits::default().per_port, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=16_777_216))]
    conntrack_max_per_port: usize,
    /// Serve Prometheus metrics at http://ADDRESS/metrics (an IP address
    /// and port, e.g. 127.0.0.1:9477). Off unless given; anyone who can
    /// reach the address can read the counters and names.
    #[arg(long, value_name = "ADDRESS", value_parser = metrics_address)]
    metrics: Option<SocketAddr>,
    /// Serve Docker's remote network driver protocol on a Unix socket
    /// (mode 0600), by default /run/docker/plugins/vswitch.sock: Docker
    /// then knows the driver by the socket's name (`docker network create
    /// -d vswitch ...`). dockerd must run in vswitchd's network namespace.
    #[arg(long, value_name = "PATH", num_args = 0..=1, require_equals = true,
          default_missing_value = vswitch::docker::DEFAULT_SOCKET)]
    docker_plugin: Option<PathBuf>,
    /// This host's provider address (PA): the outer IPv4 source of overlay
    /// networks' VXLAN packets, and the address other hosts send them to.
    /// Without it, an overlay network takes the IPv4 address of its
    /// `-o interface`.
    #[arg(long, value_name = "IP", value_parser = provider_address)]
    provider_address: Option<std::net::Ipv4Addr>,
    /// etcd of the overlay's shared store, e.g. http://192.168.1.100:2379
    /// (repeatable): overlay networks and CA->PA mappings are shared with
    /// every host that uses it. Needs --provider-address. Without it,
    /// overlay networks work on this host with static mappings.
    #[arg(long = "etcd", value_name = "URL")]
    etcd: Vec<String>,
    /// This host's id in the shared store (1-64 letters, digits, '.', '_'
    /// or '-') [default: the host name]
    #[arg(long, value_name = "ID")]
    host_id: Option<String>,
    /// Seconds a crashed host's mappings stay in the shared store (its
    /// lease; a clean stop removes them at once).
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::builder::RangedU64ValueParser::<u64>::new().range(2..=3600))]
    etcd_lease_ttl: u64,
}

/// `--provider-address`: a unicast IPv4 address.
fn provider_address(text: &str) -> Result<std::net::Ipv4Addr, String> {
    match text.parse::<std::net::Ipv4Addr>() {
        Ok(ip) if !(ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast()) => Ok(ip),
        Ok(ip) => Err(format!(
            "{ip} cannot be a provider address: a unicast IPv4 address is needed"
        )),
        Err(_) => Err(format!("'{text}' is not an IPv4 address")),
    }
}

/// `--metrics`: an IP address and port; host names are not resolved (a
/// daemon's listening address should not depend on DNS at boot).
fn metrics_address(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!("'{text}' is not an IP address and port, such as 127.0.0.1:9477 or [::1]:9477")
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.etcd.is_empty() && args.provider_address.is_none() {
        anyhow::bail!("--etcd needs --provider-address: the address other hosts reach this one's endpoints at");
    }
    if let Some(id) = &args.host_id {
        vswitch::overlay::store::check_host_id(id)
            .map_err(|e| anyhow::anyhow!("--host-id: {e}"))?;
    }
    tracing_subscriber::fmt()
        .with_max_level(args.log_level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&args.state_dir)
        .with_context(|| format!("create state dir {}", args.state_dir.display()))?;
    // One daemon per state directory: a second one would fight over TAPs.
    let lock_path = args.state_dir.join("lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("open {}", lock_path.display()))?;
    // SAFETY: flock on an fd we own; no memory is passed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "another vswitchd is using {} ({})",
            args.state_dir.display(),
            std::io::Error::last_os_error()
        );
    }

    // Bind before restoring: a second daemon on the same socket fails early,
    // and clients that connect during restore simply wait for the lock.
    let server = Server::bind(&args.socket)
        .with_context(|| format!("listen on {}", args.socket.display()))?;
    // A taken metrics address, too, stops the daemon before it touches
    // the kernel.
    let metrics = args
        .metrics
        .map(|addr| {
            MetricsServer::bind(addr).with_context(|| format!("--metrics: cannot listen on {addr}"))
        })
        .transpose()?;
    let controller = Controller::open_with(
        &args.state_dir,
        Limits {
            global: args.conntrack_max,
            per_port: args.conntrack_max_per_port,
        },
        args.provider_address,
    )
    .context("restore state")?;
    let controller = Arc::new(Mutex::new(controller));
    // After restore: Docker's first call may come at once, and must find
    // the networks and endpoints it made before.
    let _docker = args
        .docker_plugin
        .as_ref()
        .map(|path| {
            let plugin = vswitch::docker::http::spawn(path, controller.clone())
                .with_context(|| format!("--docker-plugin: cannot listen on {}", path.display()))?;
            tracing::info!(socket = %path.display(), "serving the Docker network driver");
            anyhow::Ok(plugin)
        })
        .transpose()?;
    if !args.etcd.is_empty() {
        let host_id = match &args.host_id {
            Some(id) => id.clone(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .context("--host-id not given, and the host name is unreadable")?
                .trim()
                .to_owned(),
        };
        let mut cfg = StoreConfig::new(args.etcd.clone(), host_id.clone());
        cfg.lease_ttl = std::time::Duration::from_secs(args.etcd_lease_ttl);
        let ctl = controller.clone();
        let store = Store::start(
            cfg,
            Box::new(move |ev| {
                ctl.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .apply_shared(ev)
            }),
        )
        .map_err(|e| anyhow::anyhow!("--etcd: {e}"))?;
        tracing::info!(etcd = ?args.etcd, host_id = %host_id, "overlay store started");
        controller
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_shared(Shared { store, host_id });
    }
    if let Some(metrics) = metrics {
        let addr = metrics.local_addr().context("metrics listener address")?;
        let ctl = controller.clone();
        metrics
            .spawn(move || {
                ctl.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .metrics_text()
                    .map_err(|e| e.to_string())
            })
            .context("start the metrics thread")?;
        tracing::info!(address = %addr, "serving metrics at /metrics");
    }

    let stop = server.stop_handle();
    let mut signals = Signals::new([SIGTERM, SIGINT]).context("install signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                tracing::info!(signal = sig, "stopping");
                stop.stop();
            }
        })?;

    tracing::info!(socket = %args.socket.display(), state_dir = %args.state_dir.display(), "vswitchd ready");
    server.run(controller.clone());
    let mut ctl = controller.lock().unwrap_or_else(|p| p.into_inner());
    ctl.stop_shared();
    ctl.shutdown(!args.detach_on_exit);
    drop(ctl);

    // Exiting closes every port's descriptor. Endpoint TAPs are persistent,
    // so they keep their addresses and routes until the next start.
    tracing::info!("vswitchd stopped");
    drop(lock);
    Ok(())
}
