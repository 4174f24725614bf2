//! `dataplane run`: the watch-and-converge loop.
//!
//! datastore -> deltas -> incremental plan -> backend, on start, whenever the datastore changes
//! (only what a change touched is planned and written), and on a periodic resync (the kernel is
//! read apart from the event loop, and only what differs from what the agent wrote is compared
//! with the plan again). A failed read keeps the last good state in the kernel.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
};
use tracing::{error, info, info_span, warn, Instrument as _};

use crate::{
    backend::{
        bpf::{self, BpfBackend},
        netlink::{self, NetlinkBackend},
        nftables, vxlan_anchor,
    },
    datastore::{self, Delta, Snapshot},
    incremental::{Changes, Planner},
    metrics,
    model::Problem,
    probe, sys,
};

/// What the agent reads the cluster from: whole snapshots (the file and Kubernetes datastores,
/// each one a [`Delta::Replace`]) or deltas (etcd).
enum Feed {
    Snapshots(watch::Receiver<Option<Snapshot>>),
    Deltas(mpsc::UnboundedReceiver<Vec<Delta>>),
}

impl Feed {
    /// The next changes, and how many batches they were (the queue the agent found); None
    /// when the watcher stopped. Cancel-safe: nothing is taken before it is returned.
    async fn next(&mut self) -> Option<(Vec<Delta>, usize)> {
        match self {
            Feed::Snapshots(snapshots) => loop {
                snapshots.changed().await.ok()?;
                let Some(snapshot) = snapshots.borrow_and_update().clone() else { continue };
                for problem in &snapshot.problems {
                    warn!("skipped: {problem}");
                }
                return Some((vec![Delta::Replace { model: snapshot.model, allocations: Vec::new() }], 1));
            },
            Feed::Deltas(deltas) => {
                let mut batch = deltas.recv().await?;
                // Whatever queued meanwhile is planned in the same reconcile.
                let mut batches = 1;
                while let Ok(more) = deltas.try_recv() {
                    batch.extend(more);
                    batches += 1;
                }
                Some((batch, batches))
            }
        }
    }
}

/// Default directory of the pinned maps and links.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/dataplane";

/// Which backend programs the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The BPF fast path where the kernel probe finds every feature it needs, netlink routes
    /// otherwise (the log says which feature is missing). DATAPLANE_PROBE_DISABLE=NAME[,NAME]
    /// makes the probe report features as missing (e.g. bpf_redirect_peer, tcx), to try the
    /// fallback on a kernel that has everything.
    Auto,
    /// The BPF fast path, or fail naming the missing kernel feature.
    Bpf,
    /// Kernel routes, devices and neighbours over netlink, as Calico's own dataplane programs
    /// them (vxlan.calico, blackhole and via routes, proxy ARP); no BPF program is attached.
    Netlink,
}

/// The agent logs this after every successful reconcile of the netlink backend (the BPF
/// backend logs "fast path programmed").
pub const NETLINK_READY: &str = "netlink dataplane programmed";

/// The backend the agent drives.
enum Backend {
    /// Maps, TC and XDP programs (boxed: it is much larger than the other).
    Bpf(Box<BpfBackend>),
    /// Kernel routes, devices and neighbours.
    Netlink(NetlinkBackend),
}

/// A mistake in the agent's settings, found before anything is programmed: the flag, what is
/// wrong with it, and the fix. It stops the agent in every mode: `--mode auto` falls back to
/// netlink for what the kernel lacks, never to hide a configuration error.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {problem}: {fix}")]
pub struct ConfigError {
    /// The flag (or setting) at fault, as the operator typed it.
    pub flag: &'static str,
    /// What is wrong with its value.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

/// Checks the settings that need no datastore, before anything is touched: the pin path must be
/// on the bpffs (also in `--mode netlink`, which removes an earlier fast path pinned there), a
/// named uplink must exist, the datastore's settings must be usable. `interface_exists` answers
/// for this network namespace.
pub fn check_settings(options: &RunOptions, interface_exists: impl Fn(&str) -> bool) -> Result<(), ConfigError> {
    let pin_path = &options.pin_path;
    let escapes = pin_path.components().any(|c| c == std::path::Component::ParentDir);
    if !pin_path.starts_with(sys::BPFFS_ROOT) || escapes {
        return Err(ConfigError {
            flag: "--pin-path",
            problem: format!("{} is not under {} (the bpffs)", pin_path.display(), sys::BPFFS_ROOT),
            fix: format!(
                "pins must live on a bpffs to outlive the agent; give a directory under {}, e.g. the default {DEFAULT_PIN_PATH}",
                sys::BPFFS_ROOT
            ),
        });
    }
    if let Some(uplink) = &options.uplink {
        if !interface_exists(uplink) {
            return Err(ConfigError {
                flag: "--uplink",
                problem: format!("{uplink:?} is not an interface of this network namespace"),
                fix: "name the node's interface that holds its address (`ip -br addr` lists them), or leave \
                      --uplink out to find it from the node's address"
                    .to_owned(),
            });
        }
    }
    if let Datastore::File(path) = &options.datastore {
        if path.is_dir() {
            return Err(ConfigError {
                flag: "--datastore",
                problem: format!("file:{} is a directory", path.display()),
                fix: "name the YAML file of Calico resources in it, e.g. file:/etc/calico/cluster.yaml".to_owned(),
            });
        }
    }
    Ok(())
}

/// Whether `error` from loading the kernel programs is the kernel refusing them (a map type, a
/// BTF feature or a program the verifier rejects): only then may `--mode auto` fall back. Decided
/// on aya's error types in the cause chain, not on messages.
pub fn kernel_refused(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.is::<aya::EbpfError>()
            || cause.is::<aya::programs::ProgramError>()
            || cause.is::<aya::maps::MapError>()
            || cause.is::<aya::BtfError>()
    })
}

/// Picks and starts the backend `options.mode` asks for; `--mode auto` falls back to netlink,
/// saying why, when the probe finds a feature missing or the kernel refuses the programs; any
/// other failure (a pin path it cannot use, no root) stops the agent.
async fn select_backend(options: &RunOptions) -> anyhow::Result<Backend> {
    if options.mode == Mode::Netlink {
        info!("--mode netlink: programming kernel routes, devices and neighbours over netlink");
        return start_netlink(options).await;
    }
    let (features, unknown) = probe::probe();
    if !unknown.is_empty() {
        let known: Vec<&str> = features.iter().map(|f| f.name).collect();
        warn!(
            "{} names no probed feature: {}; the features are: {}",
            probe::DISABLE_ENV,
            unknown.join(", "),
            known.join(", ")
        );
    }
    if let Some(missing) = probe::missing(&features) {
        match options.mode {
            Mode::Bpf => bail!("--mode bpf: this kernel lacks {missing}"),
            _ => {
                warn!("falling back to the netlink dataplane: this kernel lacks {missing}");
                return start_netlink(options).await;
            }
        }
    }
    let method = probe::attach_method(&features);
    let xdp = if probe::xdp_allowed(&features) { options.xdp } else { crate::backend::xdp::XdpChoice::Off };
    info!(features = features.len(), attach = %method, ?xdp, "kernel probe: every fast-path feature present");
    // Loading and verifying takes a while: off the runtime's thread, so the datastore watcher and
    // the metrics endpoint run meanwhile.
    let (pin_path, log, conntrack_max) = (options.pin_path.clone(), options.kernel_log, options.conntrack_max);
    let loaded = tokio::task::spawn_blocking(move || BpfBackend::load(&pin_path, method, xdp, log, conntrack_max))
        .await
        .context("loading the kernel programs")?;
    match loaded {
        Ok(backend) => {
            info!(pin_path = %options.pin_path.display(), "kernel programs loaded");
            // A netlink run before this one may have left vxlan.calico: the fast path does not use
            // it, and its socket holds the VXLAN port that the fast path's GRO anchor needs.
            match remove_other_backends_device(netlink::VXLAN_DEVICE, netlink::DEVICE_ALIAS).await {
                Ok(true) => info!(device = netlink::VXLAN_DEVICE, "removed the netlink fallback's device"),
                Ok(false) => {}
                Err(error) => warn!("could not remove the netlink fallback's {}: {error:#}", netlink::VXLAN_DEVICE),
            }
            // Nor does it use the fallback's masquerade rule, which would translate in the kernel
            // what the fast path translates itself.
            match nftables::remove() {
                Ok(true) => info!(table = nftables::TABLE, "removed the netlink fallback's natOutgoing table"),
                Ok(false) => {}
                Err(error) => warn!("could not remove the netlink fallback's natOutgoing table: {error:#}"),
            }
            Ok(Backend::Bpf(Box::new(backend)))
        }
        Err(error) if options.mode == Mode::Auto && kernel_refused(&error) => {
            warn!("falling back to the netlink dataplane: the kernel programs did not load: {error:#}");
            start_netlink(options).await
        }
        Err(error) => Err(error),
    }
}

/// Starts the netlink backend, removing a fast path pinned by an earlier agent first: its
/// programs would otherwise keep redirecting packets from stale maps past the kernel's routes.
async fn start_netlink(options: &RunOptions) -> anyhow::Result<Backend> {
    let mut removed = bpf::cleanup(&options.pin_path)
        .with_context(|| format!("removing the fast path pinned under {}", options.pin_path.display()))?;
    // The fast path's VXLAN GRO anchor holds the VXLAN port that vxlan.calico needs.
    if remove_other_backends_device(vxlan_anchor::ANCHOR_DEVICE, vxlan_anchor::ANCHOR_ALIAS)
        .await
        .context("removing the fast path's VXLAN GRO anchor")?
    {
        removed += 1;
    }
    if removed > 0 {
        warn!(
            removed,
            pin_path = %options.pin_path.display(),
            "removed the pinned fast path: this node now runs the netlink dataplane"
        );
    }
    Ok(Backend::Netlink(NetlinkBackend::connect()?))
}

/// Removes the device `name` if the other backend made it (it carries that backend's `alias`),
/// over a netlink connection of its own: the chosen backend has none yet. Returns whether it did.
async fn remove_other_backends_device(name: &str, alias: &str) -> anyhow::Result<bool> {
    crate::rtnl::remove_owned_device(&crate::rtnl::connect()?, name, alias).await
}

/// Where the cluster's resources come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Datastore {
    /// A YAML file of Calico resources, re-read when it changes.
    File(PathBuf),
    /// Calico's etcdv3 datastore; its settings come from the `--etcd-*` options.
    Etcdv3,
    /// Calico's Kubernetes datastore (KDD): CRDs, Nodes and Pods from the API server.
    Kubernetes(datastore::kubernetes::KubernetesConfig),
}

impl std::str::FromStr for Datastore {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some(("file", path)) if !path.is_empty() => Ok(Datastore::File(PathBuf::from(path))),
            _ if s == "etcdv3" => Ok(Datastore::Etcdv3),
            // Its settings (--kubeconfig, the node) are filled in by the command line.
            _ if s == "kubernetes" => Ok(Datastore::Kubernetes(Default::default())),
            _ => Err(format!(
                "unknown datastore {s:?}: expected file:PATH (e.g. file:/etc/calico/cluster.yaml), \
                 etcdv3 or kubernetes"
            )),
        }
    }
}

/// Settings of one agent.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Where the cluster comes from.
    pub datastore: Datastore,
    /// This node's name, as in the datastore.
    pub node: String,
    /// The uplink; found from the node's address when not given.
    pub uplink: Option<String>,
    /// Directory of pinned maps and links.
    pub pin_path: PathBuf,
    /// Backend choice.
    pub mode: Mode,
    /// Full resync period.
    pub resync: Duration,
    /// The ports SNAT picks from when a flow's own source port is taken (inclusive).
    pub nat_ports: (u16, u16),
    /// How long translated flows live without packets.
    pub conntrack_timeouts: dataplane_common::FlowTimeouts,
    /// Entries of the conntrack map when this agent creates it; None: the built-in size.
    pub conntrack_max: Option<u32>,
    /// Where to serve /metrics and /healthz; None: not at all.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// etcd settings, used with `Datastore::Etcdv3`.
    pub etcd: datastore::etcd::EtcdConfig,
    /// What the kernel programs log.
    pub kernel_log: bpf::KernelLog,
    /// XDP on the uplink.
    pub xdp: crate::backend::xdp::XdpChoice,
}

/// How often expired natOutgoing flows are deleted from the conntrack map.
const CONNTRACK_SWEEP: Duration = Duration::from_secs(10);

/// Runs the agent until SIGTERM or SIGINT; the pinned fast path stays in place after it exits.
pub async fn run(options: RunOptions) -> anyhow::Result<()> {
    check_settings(&options, |name| sys::ifindex(name).is_some())?;
    match &options.datastore {
        Datastore::Etcdv3 => options.etcd.check().map_err(|error| ConfigError {
            flag: "--datastore etcdv3",
            problem: format!("cannot use its settings: {error:#}"),
            fix: "correct the --etcd-* option (ETCD_* variable) it names".to_owned(),
        })?,
        Datastore::Kubernetes(config) => datastore::kubernetes::check(config).await.map_err(|error| ConfigError {
            flag: "--datastore kubernetes",
            problem: format!("cannot use its settings: {error:#}"),
            fix: "give a usable kubeconfig with --kubeconfig (KUBECONFIG), or run in a pod with a service account"
                .to_owned(),
        })?,
        Datastore::File(_) => {}
    }
    let agent_metrics = metrics::Shared::default();
    let connection = datastore::Connection::default();
    let metrics_server = options.metrics_addr.map(|addr| {
        let (pin_path, agent, connection) = (options.pin_path.clone(), agent_metrics.clone(), connection.clone());
        tokio::spawn(async move {
            if let Err(error) = metrics::serve(addr, pin_path, agent, connection).await {
                error!("metrics endpoint stopped: {error:#}");
            }
        })
    });

    let (sender, snapshots) = watch::channel(None);
    let (watcher, mut feed) = match &options.datastore {
        Datastore::File(path) => {
            (tokio::spawn(datastore::watch_file(path.clone(), sender, connection)), Feed::Snapshots(snapshots))
        }
        Datastore::Etcdv3 => {
            let (deltas, receiver) = mpsc::unbounded_channel();
            (
                tokio::spawn(datastore::etcd::watch_deltas(options.etcd.clone(), deltas, connection)),
                Feed::Deltas(receiver),
            )
        }
        Datastore::Kubernetes(config) => {
            (tokio::spawn(datastore::kubernetes::watch(config.clone(), sender, connection)), Feed::Snapshots(snapshots))
        }
    };
    let mut planner = Planner::new(&options.node);
    // Nothing read yet: nothing to program.
    let mut read = false;
    // What the plan changed since the last successful apply; `everything` after a failure.
    let mut pending = Changes { everything: true, ..Changes::default() };
    let mut reported: Vec<Problem> = Vec::new();
    // The watcher reads (and reports a missing file) while the programs load; its snapshot waits
    // in the channel.
    let mut backend = select_backend(&options).await?;
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut resync = tokio::time::interval(options.resync);
    resync.tick().await;
    // Sweep often enough that a flow is gone soon after its (possibly short) timeout.
    let shortest =
        [options.conntrack_timeouts.udp_s, options.conntrack_timeouts.icmp_s, options.conntrack_timeouts.tcp_closing_s]
            .into_iter()
            .min()
            .unwrap_or(1);
    let mut sweep = tokio::time::interval(CONNTRACK_SWEEP.min(Duration::from_secs(u64::from(shortest).max(2) / 2)));
    // The slow resync's read of the kernel, while it runs.
    let mut kernel_read: Option<tokio::task::JoinHandle<anyhow::Result<bpf::KernelRead>>> = None;
    // When the snapshot being reconciled reached the agent; None for a resync.
    let mut woke: Option<Instant>;
    // How long the planner took over the deltas being reconciled (the log says, for profiling a
    // whole read); None for a resync.
    let mut planned: Option<Duration>;
    loop {
        woke = None;
        planned = None;
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = sweep.tick() => {
                // Only the fast path keeps a conntrack map.
                let Backend::Bpf(backend) = &mut backend else { continue };
                match backend.sweep_conntrack(&options.conntrack_timeouts) {
                    Ok(0) => {}
                    Ok(removed) => info!(removed, "expired natOutgoing flows swept"),
                    Err(error) => warn!("conntrack sweep failed: {error:#}"),
                }
                continue;
            }
            batch = feed.next() => {
                let Some((deltas, batches)) = batch else {
                    bail!("the datastore watcher stopped");
                };
                woke = Some(Instant::now());
                read = true;
                for delta in deltas {
                    planner.apply(delta, &mut pending);
                }
                planned = woke.map(|woke| woke.elapsed());
                if let Ok(mut agent) = agent_metrics.lock() {
                    agent.queued_batches = batches as u64;
                }
            }
            _ = resync.tick() => {
                // The slow resync: the kernel's state is read again instead of trusted, and
                // whatever else changed it is repaired. The fast path's maps and routes are read
                // in a task of their own, so no event waits behind a read of 100k entries.
                match &backend {
                    Backend::Bpf(backend) => {
                        if kernel_read.is_none() {
                            kernel_read = Some(tokio::spawn(backend.read_later()));
                        }
                        continue;
                    }
                    Backend::Netlink(_) => pending.everything = true,
                }
            }
            read_done = async {
                match kernel_read.as_mut() {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                }
            } => {
                kernel_read = None;
                let Backend::Bpf(backend) = &mut backend else { continue };
                match read_done.map_err(anyhow::Error::from).and_then(|read| read) {
                    Ok(read) => {
                        let (copy_ms, maps_ms, table_ms) = (read.copy_ms, read.maps_ms, read.table_ms);
                        let taken = Instant::now();
                        // Even with nothing drifted the resync ends in a reconcile: it retries what
                        // an earlier one could not finish (a pod's MAC not learned yet, a workload
                        // interface that appeared since), with no key to write.
                        let drift = backend.take_read(read);
                        info!(
                            copy_ms,
                            maps_ms,
                            table_ms,
                            take_ms = taken.elapsed().as_millis() as u64,
                            "the resync read the kernel"
                        );
                        if let Some(drift) = drift {
                            warn!(
                                routes = drift.routes.len(),
                                peers = drift.nodes.len(),
                                everything = drift.everything,
                                "the kernel holds otherwise than this agent wrote: repairing"
                            );
                            pending.everything |= drift.everything;
                            pending.routes.extend(drift.routes);
                            pending.nodes.extend(drift.nodes);
                        }
                    }
                    Err(error) => {
                        // Compared whole on the next apply, from a read on the event loop.
                        warn!("the resync could not read the kernel in the background: {error:#}");
                        backend.forget();
                        pending.everything = true;
                    }
                }
            }
        }
        if read {
            report_problems(&planner, &mut reported);
            let span = info_span!("reconcile", node = %options.node);
            let started = Instant::now();
            let result = reconcile(&mut backend, &options, &planner, &pending, planned).instrument(span).await;
            pending = Changes { everything: result.is_err(), ..Changes::default() };
            if let Ok(mut agent) = agent_metrics.lock() {
                agent.last_reconcile_ok = result.is_ok();
                if let Backend::Bpf(backend) = &backend {
                    agent.kernel_dumps = backend.dumps();
                }
                if let (Ok(()), Some(woke)) = (&result, woke) {
                    agent.change_to_programmed.observe(woke.elapsed().as_secs_f64());
                }
                match &result {
                    Ok(()) => {
                        let seconds = started.elapsed().as_secs_f64();
                        agent.reconciles += 1;
                        agent.reconcile_seconds_sum += seconds;
                        agent.last_reconcile_seconds = seconds;
                    }
                    Err(_) => agent.reconcile_errors += 1,
                }
            }
            if let Err(error) = result {
                error!("reconcile failed, keeping the last programmed state: {error:#}");
            }
        }
    }
    watcher.abort();
    if let Some(server) = metrics_server {
        server.abort();
    }
    match backend {
        Backend::Bpf(_) => info!("exiting; the pinned fast path stays in place until the next agent adopts it"),
        Backend::Netlink(_) => info!("exiting; the kernel routes and devices stay in place"),
    }
    Ok(())
}

/// Logs the problems of the plan that were not logged the last time (`reported`).
fn report_problems(planner: &Planner, reported: &mut Vec<Problem>) {
    let problems = planner.problems();
    if problems == *reported {
        return;
    }
    let before: std::collections::HashSet<&Problem> = reported.iter().collect();
    for problem in problems.iter().filter(|problem| !before.contains(problem)) {
        warn!("not planned: {problem}");
    }
    *reported = problems;
}

/// One pass of plan -> backend, writing what `changes` touched (everything when it says so).
async fn reconcile(
    backend: &mut Backend,
    options: &RunOptions,
    planner: &Planner,
    changes: &Changes,
    planned: Option<Duration>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let plan = planner.plan().map_err(|error| anyhow::anyhow!("{error}"))?;
    let uplink_started = Instant::now();
    let uplink = match &options.uplink {
        Some(uplink) => uplink.clone(),
        None => sys::interface_with_address(plan.node.addr.addr())?.with_context(|| {
            format!(
                "no interface holds node {}'s address {}: pass --uplink or fix spec.bgp.ipv4Address",
                options.node,
                plan.node.addr.addr()
            )
        })?,
    };
    let backend = match backend {
        Backend::Bpf(backend) => backend,
        Backend::Netlink(backend) => {
            // The fallback reads the model too (its devices): not the path this scales.
            let report = backend.apply(plan, &planner.model(), &uplink).await?;
            for problem in &report.problems {
                warn!("not programmed: {problem}");
            }
            for interface in &report.missing {
                warn!(%interface, "workload interface not found; will retry");
            }
            info!(
                %uplink,
                routes = plan.routes.len(),
                workloads = plan.workloads.len(),
                peers = plan.peers.len(),
                written = report.written,
                removed = report.removed,
                missing_interfaces = report.missing.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "{NETLINK_READY}"
            );
            return Ok(());
        }
    };
    let uplink_took = uplink_started.elapsed();
    let report = backend.apply(plan, Some(changes), &uplink, options.nat_ports, options.conntrack_timeouts).await?;
    let steps = report.steps;
    info!(
        %uplink,
        routes = plan.routes.len(),
        workloads = plan.workloads.len(),
        peers = plan.peers.len(),
        written = report.written,
        removed = report.removed,
        attached = report.attached,
        detached = report.detached,
        xdp = %backend.xdp_mode(),
        missing_interfaces = report.missing.len(),
        plan_ms = planned.map_or(0, |planned| planned.as_millis() as u64),
        maps_ms = report.maps_done.map_or(0, |done| done.duration_since(started).as_millis() as u64),
        elapsed_ms = started.elapsed().as_millis() as u64,
        uplink_ms = ms(uplink_took),
        learn_ms = ms(steps.learn),
        desired_ms = ms(steps.desired),
        write_ms = ms(steps.write),
        attach_ms = ms(steps.attach),
        host_routes_ms = ms(steps.host_routes),
        kernel_dumps = backend.dumps(),
        "fast path programmed"
    );
    Ok(())
}

/// Milliseconds, with the microseconds as a fraction: the reconcile line's steps are often far
/// below one millisecond.
fn ms(took: Duration) -> f64 {
    took.as_micros() as f64 / 1e3
}

/// Parses a port range `MIN-MAX` (inclusive, MIN <= MAX, both non-zero).
pub fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let usage = || format!("{s:?} is not a port range: expected MIN-MAX, e.g. 20000-29999");
    let (min, max) = s.split_once('-').ok_or_else(usage)?;
    let min: u16 = min.trim().parse().map_err(|_| usage())?;
    let max: u16 = max.trim().parse().map_err(|_| usage())?;
    if min == 0 || min > max {
        return Err(usage());
    }
    Ok((min, max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse_and_bad_ones_say_the_form() {
        assert_eq!(parse_port_range("32768-60999"), Ok((32768, 60999)));
        assert_eq!(parse_port_range("100-100"), Ok((100, 100)));
        for bad in ["", "1", "5-1", "0-10", "a-b", "1-70000"] {
            assert!(parse_port_range(bad).unwrap_err().contains("MIN-MAX"), "{bad}");
        }
    }

    #[test]
    fn parses_file_datastore() {
        assert_eq!("file:/tmp/c.yaml".parse(), Ok(Datastore::File(PathBuf::from("/tmp/c.yaml"))));
        assert_eq!("kubernetes".parse(), Ok(Datastore::Kubernetes(Default::default())));
    }

    fn options(pin_path: &str, uplink: Option<&str>) -> RunOptions {
        RunOptions {
            datastore: Datastore::File(PathBuf::from("/etc/calico/cluster.yaml")),
            node: "node-1".to_owned(),
            uplink: uplink.map(str::to_owned),
            pin_path: PathBuf::from(pin_path),
            mode: Mode::Auto,
            resync: Duration::from_secs(30),
            nat_ports: (20000, 29999),
            conntrack_timeouts: Default::default(),
            conntrack_max: None,
            metrics_addr: None,
            etcd: Default::default(),
            kernel_log: Default::default(),
            xdp: crate::backend::xdp::XdpChoice::Auto,
        }
    }

    #[test]
    fn settings_errors_name_the_flag_and_the_fix() {
        let exists = |name: &str| name == "eth0";
        assert!(check_settings(&options(DEFAULT_PIN_PATH, Some("eth0")), exists).is_ok());
        assert!(check_settings(&options("/sys/fs/bpf/dpl-1/node-1", None), exists).is_ok());
        for pin in ["/tmp/pins", "sys/fs/bpf/x", "/sys/fs/bpfx", "/sys/fs/bpf/../../tmp/x"] {
            let error = check_settings(&options(pin, None), exists).expect_err(pin);
            assert_eq!(error.flag, "--pin-path", "{pin}");
            let text = error.to_string();
            assert!(text.starts_with("--pin-path ") && text.contains(DEFAULT_PIN_PATH), "{text}");
        }
        let error = check_settings(&options(DEFAULT_PIN_PATH, Some("eht0")), exists).expect_err("typo");
        assert_eq!(error.flag, "--uplink");
        assert!(error.to_string().contains("\"eht0\" is not an interface"), "{error}");
        assert!(!error.to_string().contains("  "), "one line of prose: {error}");
        let mut directory = options(DEFAULT_PIN_PATH, None);
        directory.datastore = Datastore::File(std::env::temp_dir());
        assert_eq!(check_settings(&directory, exists).expect_err("a directory").flag, "--datastore");
    }

    #[test]
    fn only_the_kernel_refusing_the_programs_counts_as_lacking() {
        let verifier = anyhow::Error::new(aya::programs::ProgramError::NotLoaded).context("verifying program x");
        assert!(kernel_refused(&verifier.context("loading")), "aya's errors under context");
        let config = anyhow::Error::new(ConfigError { flag: "--pin-path", problem: "p".into(), fix: "f".into() });
        assert!(!kernel_refused(&config));
        let io =
            anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::PermissionDenied)).context("mounting bpffs");
        assert!(!kernel_refused(&io), "no root is not a missing kernel feature");
    }

    #[test]
    fn rejects_unknown_datastores_with_the_accepted_form() {
        let error = "mysql://x".parse::<Datastore>().unwrap_err();
        assert!(error.contains("file:PATH"), "{error}");
        assert!("file:".parse::<Datastore>().is_err());
    }
}
