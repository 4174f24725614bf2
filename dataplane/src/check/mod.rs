//! `dataplane check`: Calico's troubleshooting page, automated for one node.
//!
//! Every question of the page gets a check: are the programs attached where they should be, do
//! the maps hold what the datastore says, does every remote block have a route to the node that
//! owns it, does the node's tunnel address lie in one of its blocks, can the pools give every node
//! a block, do pools overlap, are there blocks outside every pool, does every workload have its
//! interface and its host /32 route. Each [`Finding`] names the object and the fix.
//!
//! The decisions are pure functions over the model, the plan and what was observed on the node;
//! reading the pins, the interfaces and the kernel's routes happens at the edges ([`run`]).

mod fallback;
mod kernel_routes;
mod links;
mod lint;
mod maps;
mod observe;
mod report;
#[cfg(test)]
mod tests;
mod upgrade;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::PathBuf,
};

use dataplane_common::ROUTES_MAP;

use crate::{
    agent::{Datastore, Mode},
    backend::{
        bpf::LINKS_DIR,
        entries::{self},
        netlink::{self},
        veth,
        vxlan_anchor::{self, ANCHOR_DEVICE},
        xdp::{self, XdpChoice},
    },
    datastore::etcd::EtcdConfig,
    model::Model,
    plan::{self, Plan, RouteTarget},
    sys,
};

pub use fallback::*;
pub use kernel_routes::*;
pub use links::*;
pub use lint::*;
pub use maps::*;
pub use observe::*;
pub use report::*;
pub use upgrade::*;

/// Settings of `dataplane check`.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Where the cluster comes from.
    pub datastore: Datastore,
    /// etcd settings, for `Datastore::Etcdv3`.
    pub etcd: EtcdConfig,
    /// This node's name.
    pub node: String,
    /// The uplink; found from the node's address when not given.
    pub uplink: Option<String>,
    /// The agent's pin directory.
    pub pin_path: PathBuf,
    /// Which dataplane to check: the fast path's pins, the netlink fallback's routes and device,
    /// or (auto) whichever the node has.
    pub mode: Mode,
}

/// Runs every check for the node, reading the datastore, the pins and this network namespace.
/// Errors only when the datastore cannot be read at all; everything else is a finding.
pub fn run(options: &CheckOptions) -> anyhow::Result<Report> {
    // Progress goes to the log (stderr), one line per stage: on a large cluster each takes a while.
    let started = std::time::Instant::now();
    let snapshot = crate::ipam::read_once(&options.datastore, &options.etcd)?;
    let model = &snapshot.model;
    tracing::info!(
        pools = model.pools.len(),
        blocks = model.blocks.len(),
        nodes = model.nodes.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "check: read the datastore"
    );
    let mut report = Report { node: options.node.clone(), findings: Vec::new(), checked: Checked::default() };
    report.checked.pools = model.pools.len();

    report.findings.extend(check_pools(model));
    report.findings.extend(check_blocks(model));
    let (plan, mut plan_problems) = match plan::compute(model, &options.node) {
        Ok(computed) => computed,
        Err(error) => {
            let fix = match &error {
                plan::PlanError::UnknownNode(node) => {
                    format!("add a Node resource named {node:?} to the datastore, or pass the right --node")
                }
                plan::PlanError::NodeWithoutAddress(_) => "set spec.bgp.ipv4Address (e.g. 10.0.0.1/24)".to_owned(),
            };
            report.findings.push(Finding::new("node", format!("Node {}", options.node), error.to_string(), fix));
            let datastore = problem_findings("datastore", &snapshot.problems, &report.findings);
            report.findings.extend(datastore);
            return Ok(report);
        }
    };
    report.findings.extend(check_tunnel_addresses(model, &options.node));
    tracing::info!(
        routes = plan.routes.len(),
        findings = report.findings.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "check: pools, blocks and tunnel addresses checked; the plan computed"
    );

    let interfaces = sys::interfaces()?;
    let names: BTreeMap<u32, String> = interfaces.iter().map(|(name, index)| (*index, name.clone())).collect();
    let host_routes = match fs::read_to_string("/proc/net/route") {
        Ok(text) => parse_proc_net_route(&text),
        Err(error) => {
            report.findings.push(Finding::new(
                "workloads",
                "/proc/net/route",
                format!("cannot read the kernel's routes: {error}"),
                "run the check where /proc is mounted",
            ));
            Vec::new()
        }
    };
    report.checked.workloads = plan.workloads.len();
    report.findings.extend(check_workloads(&plan, &interfaces, &host_routes));
    tracing::info!(
        workloads = plan.workloads.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "check: workload interfaces and routes checked; checking the dataplane"
    );

    let uplink = match &options.uplink {
        Some(uplink) => Some(uplink.clone()),
        None => sys::interface_with_address(plan.node.addr.addr())?,
    };
    match uplink {
        None => report.findings.push(Finding::new(
            "node",
            format!("Node {}", options.node),
            format!(
                "no interface of this network namespace holds the node's address {}, so the uplink is unknown and \
                 the maps and programs were not checked",
                plan.node.addr.addr()
            ),
            "run the check in the node's network namespace, pass --uplink, or fix spec.bgp.ipv4Address",
        )),
        Some(uplink) => match dataplane_mode(options, &interfaces) {
            Ok(Some(observed)) => {
                let intent = netlink::intent(&plan, model);
                report.checked.remote_blocks =
                    plan.routes.values().filter(|r| matches!(r.target, RouteTarget::RemoteBlock { .. })).count();
                report.findings.extend(check_fallback(&plan, &intent, &observed, &uplink));
                // The intent's own problems (a peer without a VTEP address) come with the plan's.
                plan_problems.extend(intent.problems);
            }
            Ok(None) => check_programmed(options, model, &plan, &uplink, &interfaces, &names, &mut report),
            Err(error) => report.findings.push(Finding::new(
                "fallback",
                "rtnetlink",
                format!("the kernel's routes and devices cannot be read: {error:#}"),
                "run the check as root in the node's network namespace",
            )),
        },
    }

    let datastore = problem_findings("datastore", &snapshot.problems, &report.findings);
    report.findings.extend(datastore);
    let planned = problem_findings("plan", &plan_problems, &report.findings);
    report.findings.extend(planned);
    tracing::info!(findings = report.findings.len(), elapsed_ms = started.elapsed().as_millis() as u64, "check: done");
    Ok(report)
}

/// `Some` with what the netlink fallback programmed when the node runs it: asked for with
/// `--mode netlink`, or (auto) when no fast path is pinned but the fallback's device or routes
/// exist. `None` for the fast path.
fn dataplane_mode(
    options: &CheckOptions,
    interfaces: &BTreeMap<String, u32>,
) -> anyhow::Result<Option<ObservedFallback>> {
    match options.mode {
        Mode::Bpf => Ok(None),
        Mode::Netlink => observe_fallback(interfaces).map(Some),
        Mode::Auto if options.pin_path.join(ROUTES_MAP).exists() => Ok(None),
        Mode::Auto => Ok(Some(observe_fallback(interfaces)?).filter(ObservedFallback::present)),
    }
}

/// The maps and the program attachments against the plan.
fn check_programmed(
    options: &CheckOptions,
    model: &Model,
    plan: &Plan,
    uplink: &str,
    interfaces: &BTreeMap<String, u32>,
    names: &BTreeMap<u32, String>,
    report: &mut Report,
) {
    let Some(&uplink_ifindex) = interfaces.get(uplink) else {
        report.findings.push(Finding::new(
            "node",
            format!("interface {uplink}"),
            "the uplink does not exist in this network namespace",
            "pass the right --uplink, or run the check in the node's network namespace",
        ));
        return;
    };
    let uplink_mtu = match sys::mtu(uplink) {
        Ok(mtu) => mtu,
        Err(error) => {
            report.findings.push(Finding::new(
                "node",
                format!("interface {uplink}"),
                format!("{error:#}"),
                "check the uplink",
            ));
            return;
        }
    };
    match crate::migrate::list_pins(&options.pin_path) {
        Ok(listing) => report.findings.extend(check_upgrade(&options.pin_path, &listing)),
        Err(error) => report.findings.push(Finding::new(
            "upgrade",
            options.pin_path.display().to_string(),
            format!("{error:#}"),
            "run the check as root, with the pin path of the node's agent (--pin-path)",
        )),
    }
    let observed = observe_maps(&options.pin_path);
    // The SNAT range and the timeouts are the agent's flags, not the datastore's: take what is
    // programmed.
    let nat_ports = match &observed.node {
        Ok(node) => (node.nat_port_min, node.nat_port_max),
        Err(_) => (dataplane_common::net::NAT_PORT_MIN, dataplane_common::net::NAT_PORT_MAX),
    };
    // Workloads without a MAC in the datastore (Kubernetes): the agent learned each pod's MAC
    // from its veth, so learn it here too and expect that one.
    let unknown = entries::without_mac(plan, |name| interfaces.get(name).copied());
    let learned = veth::learn_once(&unknown).unwrap_or_else(|error| {
        tracing::warn!(error = %format!("{error:#}"), "check: cannot learn the pods' MACs; expecting none");
        BTreeMap::new()
    });
    for (interface, mac) in &learned {
        let workload = plan.workloads.get(interface).map(|w| w.name.clone()).unwrap_or_default();
        report.checked.learned_macs.insert(workload, mac.to_string());
    }
    let (mut expected, _missing) = entries::from_plan(
        plan,
        entries::Uplink { ifindex: uplink_ifindex, mtu: uplink_mtu, nat_ports },
        |name| interfaces.get(name).copied(),
        &learned,
    );
    if let Ok(node) = &observed.node {
        expected.node.timeouts = node.timeouts;
    }
    let mut covered = BTreeSet::new();
    if let Ok(routes) = &observed.routes {
        let (findings, keys) = check_remote_blocks(model, plan, routes);
        report.findings.extend(findings);
        covered = keys;
    }
    report.checked.remote_blocks =
        plan.routes.values().filter(|r| matches!(r.target, RouteTarget::RemoteBlock { .. })).count();
    report.checked.map_entries = 1 + expected.routes.len() + expected.workloads.len() + expected.peers.len();
    report.findings.extend(diff_maps(&expected, &observed, &covered, names));

    let anchor = interfaces.get(ANCHOR_DEVICE).map(|_| sys::is_up(ANCHOR_DEVICE).unwrap_or(false));
    let wanted = vxlan_anchor::wanted(plan);
    // Only asked when the anchor is wanted and not up: a device holding the port is why it is not.
    let holder = if wanted && anchor != Some(true) { observe_gro_holder(expected.node.vxlan_port) } else { None };
    report.findings.extend(check_anchor(wanted, anchor, holder.as_deref()));

    let links = expected_links(plan, uplink, interfaces);
    let observed_links = observe_links(&options.pin_path, &links, interfaces);
    let links_dir = options.pin_path.join(LINKS_DIR);
    report.findings.extend(check_links(&links, &observed_links, interfaces, &links_dir));
    // The agent's default (`--xdp auto`) attaches XDP to any uplink but a veth; one pinned by an
    // agent told otherwise is checked too.
    let veth = xdp::is_veth(uplink_ifindex).unwrap_or(false);
    let xdp_expected = !xdp::modes(XdpChoice::Auto, veth).is_empty();
    let xdp_pinned = observed_links.pins.contains_key(&xdp::pin_name(uplink));
    report.checked.links = links.len() + usize::from(xdp_expected || xdp_pinned);
    let kernel_xdp = xdp::observe(uplink_ifindex).map_err(|e| format!("{e:#}"));
    report.findings.extend(check_xdp(uplink, xdp_expected, &observed_links.pins, &kernel_xdp, &links_dir));
}
