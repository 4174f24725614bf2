//! Upgrades across a map layout change, with real traffic.
//!
//! The older agent is this tree built with the `previous-layout` feature
//! (`dataplane-previous-layout`): its conntrack map is `conntrack_v0`, the same flows in another
//! field order, and its peers map `peers_v0` (which the new agent rewrites from the plan). It runs the two-node lab of examples/nat.yaml with an iperf3 stream between the
//! nodes' pods and UDP flows that node-1 translates (natOutgoing) to the external host; then:
//! - the current agent replaces it: no second of the stream falls below the floor, every flow
//!   keeps the port the external host saw, its conntrack entries are in `conntrack_v1` and the
//!   old pin is gone;
//! - an upgrade that crashes halfway through the conntrack migration (the agent's test hook
//!   aborts it after a few entries) leaves the node running the old programs, and the next start
//!   resumes and finishes it;
//! - the older agent started on the upgraded node refuses, names the pins and the fix, and leaves
//!   every pin, program and flow as it was.

use std::{
    collections::BTreeSet,
    fs,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, ensure, Context as _};
use aya::maps::{HashMap, Map, MapData};
use dataplane::{migrate, pinned::PinnedMaps};
use dataplane_common::{
    previous::{NatFlowV0, PEERS_MAP_V0},
    FlowKey, CONNTRACK_MAP,
};
use dataplane_lab::{iperf, udp_socket_in, Agent, AgentOptions, Cluster, LabPod};

/// Two nodes; pool nat-pool (natOutgoing) with nat-1 on node-1 and nat-2 on node-2.
const EXAMPLE: &str = "examples/nat.yaml";
/// The pod whose flows node-1 translates.
const NAT_1: &str = "default/nat-1";
/// The pod on node-2, the stream's server.
const NAT_2: &str = "default/nat-2";
/// node-1's address: the translated source the external host sees.
const NODE_1_ADDR: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 11);
/// The external host's UDP server port.
const SERVER_PORT: u16 = 9000;
/// The pod's first UDP source port; the flows use the ports after it.
const FIRST_POD_PORT: u16 = 41000;
/// How many translated UDP flows live across the upgrade (two conntrack entries each).
const FLOWS: u16 = 6;
/// How many conntrack entries the crashing agent migrates before it aborts.
const ABORT_AFTER: usize = 3;
/// Length of the stream across the upgrade.
const STREAM_SECONDS: usize = 10;
/// How long an agent may take to program its node.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a datagram may take before it counts as lost.
const UDP_WAIT: Duration = Duration::from_secs(2);

/// The older agent: $DATAPLANE_PREVIOUS_BIN (set by `cargo xtask test`), else beside the agent.
fn previous_bin() -> anyhow::Result<PathBuf> {
    let bin = std::env::var_os("DATAPLANE_PREVIOUS_BIN")
        .map_or_else(|| dataplane_tests::agent_bin().with_file_name("dataplane-previous-layout"), PathBuf::from);
    ensure!(
        bin.exists(),
        "the older agent {} does not exist: build it with `cargo build -p dataplane --bin \
         dataplane-previous-layout --features previous-layout` (cargo xtask test does, unless its \
         --filter leaves out every test with `upgrade` in its name)",
        bin.display()
    );
    Ok(bin)
}

/// Starts `bin` as `node`'s agent with `env` and waits until it has programmed the node.
fn start(cluster: &Cluster, node: &str, bin: &Path, env: &[(&str, &str)]) -> anyhow::Result<Agent> {
    let options = AgentOptions {
        env: env.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect(),
        ..AgentOptions::default()
    };
    let mut agent = cluster.lab.start_agent_with(node, bin, cluster.datastore(), &options)?;
    agent.wait_ready(READY_TIMEOUT).with_context(|| format!("agent of {node}:\n{}", agent.log()))?;
    Ok(agent)
}

/// Starts `bin` as `node`'s agent and waits for it to exit on its own; returns it and its status.
fn start_and_exit(
    cluster: &Cluster,
    node: &str,
    bin: &Path,
    env: &[(&str, &str)],
) -> anyhow::Result<(Agent, std::process::ExitStatus)> {
    let options = AgentOptions {
        env: env.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect(),
        ..AgentOptions::default()
    };
    let mut agent = cluster.lab.start_agent_with(node, bin, cluster.datastore(), &options)?;
    let status = agent.process().wait_timeout(READY_TIMEOUT)?;
    let Some(status) = status else { bail!("the agent of {node} did not exit:\n{}", agent.log()) };
    Ok((agent, status))
}

/// The external host's UDP server and the pod's translated flows to it.
struct Flows {
    server: UdpSocket,
    server_addr: SocketAddrV4,
    pods: Vec<(u16, UdpSocket)>,
}

impl Flows {
    fn open(cluster: &Cluster, pod: &LabPod) -> anyhow::Result<Flows> {
        let external = cluster.lab.external();
        let server = udp_socket_in(&external.netns, SERVER_PORT, Some(UDP_WAIT))?;
        let pods = (0..FLOWS)
            .map(|i| Ok((FIRST_POD_PORT + i, udp_socket_in(&pod.netns, FIRST_POD_PORT + i, Some(UDP_WAIT))?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Flows { server, server_addr: SocketAddrV4::new(external.addr, SERVER_PORT), pods })
    }

    /// Every flow sends one datagram, the external host answers it; returns, per flow, the
    /// source the external host saw.
    fn exchange(&self, round: &str) -> anyhow::Result<Vec<SocketAddrV4>> {
        let mut seen = Vec::new();
        for (port, socket) in &self.pods {
            let message = format!("{round} {port}");
            socket.send_to(message.as_bytes(), self.server_addr).context("sending from the pod")?;
            let mut buffer = [0u8; 256];
            let from = loop {
                let (len, from) = self.server.recv_from(&mut buffer).with_context(|| {
                    format!("{round}: the datagram of pod port {port} never reached the external host")
                })?;
                if &buffer[..len] == message.as_bytes() {
                    break from;
                }
            };
            let std::net::SocketAddr::V4(from) = from else { bail!("an IPv6 sender: {from}") };
            ensure!(*from.ip() == NODE_1_ADDR, "{round}: pod port {port} reached the external host as {from}");
            self.server.send_to(message.as_bytes(), from).context("answering from the external host")?;
            let (len, _) = socket
                .recv_from(&mut buffer)
                .with_context(|| format!("{round}: the answer to pod port {port} (sent to {from}) never came back"))?;
            ensure!(&buffer[..len] == message.as_bytes(), "{round}: pod port {port} got another answer");
            seen.push(from);
        }
        Ok(seen)
    }
}

/// The conntrack entries in the previous layout's pin.
fn previous_conntrack(pin_path: &Path) -> anyhow::Result<Vec<(FlowKey, NatFlowV0)>> {
    let data = MapData::from_pin(pin_path.join(dataplane_common::previous::CONNTRACK_MAP_V0))?;
    let map: HashMap<MapData, FlowKey, NatFlowV0> = HashMap::try_from(Map::HashMap(data))?;
    Ok(map.iter().collect::<Result<_, _>>()?)
}

/// Every entry of the old map is in the new one as the same flow: same translation, and the
/// same creation time (a flow lost and made again by a new packet would have a new one).
fn ensure_carried(old: &[(FlowKey, NatFlowV0)], pin_path: &Path) -> anyhow::Result<()> {
    let migrated = PinnedMaps::at(pin_path).read_conntrack()?;
    for (key, flow) in old {
        let new = migrated.get(key).with_context(|| format!("{key:?} of conntrack_v0 is not in {CONNTRACK_MAP}"))?;
        ensure!(
            (new.created_ns, new.pod_addr, new.pod_port, new.nat_addr, new.nat_port, new.peer_addr, new.peer_port)
                == (
                    flow.created_ns,
                    flow.pod_addr,
                    flow.pod_port,
                    flow.nat_addr,
                    flow.nat_port,
                    flow.peer_addr,
                    flow.peer_port
                ),
            "{key:?}: {flow:?} became {new:?}"
        );
    }
    Ok(())
}

/// The names under the pin path (maps, the links directory's pins, the marker).
fn pins(pin_path: &Path) -> anyhow::Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for dir in [pin_path.to_owned(), pin_path.join("links")] {
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            names.insert(entry?.path().strip_prefix(pin_path)?.display().to_string());
        }
    }
    Ok(names)
}

/// The `upgrade` findings of `bin check -o json` on node-1.
fn upgrade_findings(cluster: &Cluster, bin: &Path, pin_path: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let datastore = format!("file:{}", cluster.datastore().display());
    let (bin, pin_path) = (bin.to_string_lossy(), pin_path.to_string_lossy());
    let argv = [&*bin, "check", "--datastore", &datastore, "--node", "node-1", "--pin-path", &*pin_path, "-o", "json"];
    let netns = cluster.lab.node_netns("node-1")?;
    let output = cluster.lab.exec_status(netns, &argv)?;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!("{}: {}", cluster.lab.command_line(netns, &argv), String::from_utf8_lossy(&output.stderr))
    })?;
    let findings = report["findings"].as_array().cloned().unwrap_or_default();
    Ok(findings.into_iter().filter(|f| f["check"] == "upgrade").collect())
}

/// Runs an iperf3 stream from nat-1 to nat-2 while `during` runs; checks every second of it.
fn stream_across(cluster: &Cluster, during: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<iperf::Report> {
    let client = cluster.lab.pod(NAT_1)?.clone();
    let server = cluster.lab.pod(NAT_2)?.clone();
    let mut iperf_server =
        cluster.lab.spawn(&server.netns, &["iperf3", "-s", "-1", "--forceflush"], "iperf3-server")?;
    iperf_server.wait_for_log("Server listening", Duration::from_secs(10))?;
    let seconds = STREAM_SECONDS.to_string();
    let server_addr = server.addr.to_string();
    let mut stream = cluster.lab.spawn(
        &client.netns,
        &["iperf3", "-c", &server_addr, "-t", &seconds, "-J", "--connect-timeout", "3000"],
        "iperf3-client",
    )?;
    iperf::wait_for_first_second(&mut iperf_server, Duration::from_secs(10))?;
    during()?;
    let status = stream.wait_timeout(Duration::from_secs(STREAM_SECONDS as u64 + 20))?;
    ensure!(status.is_some_and(|status| status.success()), "iperf3 client failed:\n{}", stream.log());
    let report = iperf::parse(&stream.log())?;
    iperf::ensure_never_below(&report, STREAM_SECONDS, iperf::UNTHROTTLED_FLOOR_GBPS)?;
    Ok(report)
}

#[test]
fn an_upgrade_across_a_layout_change_keeps_the_stream_and_every_translated_flow() -> anyhow::Result<()> {
    let test = "an_upgrade_across_a_layout_change_keeps_the_stream_and_every_translated_flow";
    let Some(cluster) = Cluster::up_or_skip(test, EXAMPLE)? else { return Ok(()) };
    let (previous, current) = (previous_bin()?, dataplane_tests::agent_bin());
    let mut node1 = start(&cluster, "node-1", &previous, &[])?;
    let mut node2 = start(&cluster, "node-2", &previous, &[])?;
    let pin_path = cluster.lab.pin_path("node-1");
    let flows = Flows::open(&cluster, cluster.lab.pod(NAT_1)?)?;
    let before = flows.exchange("before")?;
    let old_entries = previous_conntrack(&pin_path)?;
    ensure!(old_entries.len() >= 2 * FLOWS as usize, "conntrack_v0 holds {} entries", old_entries.len());

    // Both nodes are upgraded, one after the other, while the stream crosses them.
    let mut upgraded = Vec::new();
    let report = stream_across(&cluster, || {
        node1.stop()?;
        upgraded.push(start(&cluster, "node-1", &current, &[])?);
        node2.stop()?;
        upgraded.push(start(&cluster, "node-2", &current, &[])?);
        Ok(())
    })?;
    let [upgraded, upgraded2] =
        <[Agent; 2]>::try_from(upgraded).map_err(|_| anyhow::anyhow!("an agent did not start"))?;
    ensure!(
        upgraded2.log().contains("upgrade done"),
        "node-2's agent did not finish the upgrade:\n{}",
        upgraded2.log()
    );
    let names2 = pins(&cluster.lab.pin_path("node-2"))?;
    ensure!(!names2.contains("conntrack_v0"), "node-2's pins after the upgrade: {names2:?}");
    let log = upgraded.log();
    eprintln!("stream across the upgrade (Gbit/s per second): {:.2?}", report.per_second);
    eprintln!(
        "{}",
        log.lines().filter(|line| line.contains("migrat") || line.contains("upgrad")).collect::<Vec<_>>().join("\n")
    );

    ensure!(log.contains("map migrated"), "the current agent migrated nothing:\n{log}");
    ensure!(log.contains("upgrade done"), "the current agent did not finish the upgrade:\n{log}");
    ensure!(log.contains("rewritten from the plan"), "the current agent rewrote no map it owns:\n{log}");
    let names = pins(&pin_path)?;
    ensure!(
        !names.contains("conntrack_v0") && names.contains(CONNTRACK_MAP) && !names.contains(PEERS_MAP_V0),
        "pins after the upgrade: {names:?}"
    );
    let peers = PinnedMaps::at(&pin_path).read_peers()?;
    ensure!(!peers.is_empty(), "{} is empty after the upgrade", dataplane_common::PEERS_MAP);
    ensure!(!names.contains(migrate::MARKER), "the upgrade's marker is left: {names:?}");
    ensure_carried(&old_entries, &pin_path)?;
    let after = flows.exchange("after")?;
    ensure!(before == after, "the flows' translations changed: before {before:?}, after {after:?}");
    eprintln!("{} flows kept their ports across the upgrade: {after:?}", after.len());
    Ok(())
}

#[test]
fn an_upgrade_that_crashes_halfway_through_its_migration_resumes_and_a_downgrade_is_refused() -> anyhow::Result<()> {
    let test = "an_upgrade_that_crashes_halfway_through_its_migration_resumes_and_a_downgrade_is_refused";
    let Some(cluster) = Cluster::up_or_skip(test, EXAMPLE)? else { return Ok(()) };
    let (previous, current) = (previous_bin()?, dataplane_tests::agent_bin());
    let mut node1 = start(&cluster, "node-1", &previous, &[])?;
    let _node2 = start(&cluster, "node-2", &previous, &[])?;
    let pin_path = cluster.lab.pin_path("node-1");
    let flows = Flows::open(&cluster, cluster.lab.pod(NAT_1)?)?;
    let before = flows.exchange("before")?;
    let old_entries = previous_conntrack(&pin_path)?;
    node1.stop()?;

    // The crash: the agent aborts after migrating a few entries, before any program is swapped.
    let abort_after = ABORT_AFTER.to_string();
    let (crashed, status) = start_and_exit(&cluster, "node-1", &current, &[(migrate::ABORT_AFTER_ENV, &abort_after)])?;
    ensure!(!status.success(), "the agent asked to crash exited with {status}:\n{}", crashed.log());
    ensure!(crashed.log().contains("aborting halfway"), "the agent did not reach the hook:\n{}", crashed.log());
    let names = pins(&pin_path)?;
    ensure!(
        names.contains("conntrack_v0") && names.contains(CONNTRACK_MAP) && names.contains(migrate::MARKER),
        "after the crash the old pin, the new one and the marker should all be there: {names:?}"
    );
    let partial = PinnedMaps::at(&pin_path).read_conntrack()?;
    ensure!(partial.len() == ABORT_AFTER, "the crashed agent migrated {} entries, not {ABORT_AFTER}", partial.len());
    // The old programs still carry the node, with their own map.
    let during = flows.exchange("after the crash")?;
    ensure!(before == during, "after the crash the translations changed: {before:?} -> {during:?}");
    // `dataplane check` tells the operator what happened and what to do.
    let marker = pin_path.join(migrate::MARKER).display().to_string();
    let upgrade = upgrade_findings(&cluster, &current, &pin_path)?;
    ensure!(
        upgrade.iter().any(
            |f| f["object"] == marker.as_str() && f["problem"].as_str().is_some_and(|p| p.contains("conntrack_v0"))
        ),
        "check does not report the unfinished upgrade at {marker}: {upgrade:#?}"
    );

    // The restart resumes.
    let resumed = start(&cluster, "node-1", &current, &[])?;
    let log = resumed.log();
    ensure!(log.contains("resuming an upgrade"), "the restarted agent did not resume:\n{log}");
    ensure!(
        log.contains(&format!("present={ABORT_AFTER}")),
        "the resumed pass did not skip the migrated entries:\n{log}"
    );
    let names = pins(&pin_path)?;
    ensure!(
        !names.contains("conntrack_v0") && !names.contains(migrate::MARKER),
        "after the resumed upgrade: {names:?}"
    );
    ensure_carried(&old_entries, &pin_path)?;
    let upgrade = upgrade_findings(&cluster, &current, &pin_path)?;
    ensure!(upgrade.is_empty(), "check still reports an upgrade after the resumed one finished: {upgrade:#?}");
    let after = flows.exchange("after the resumed upgrade")?;
    ensure!(before == after, "the translations changed across the resumed upgrade: {before:?} -> {after:?}");

    // The downgrade: the older agent refuses and changes nothing.
    let mut resumed = resumed;
    resumed.stop()?;
    let pins_before = pins(&pin_path)?;
    let flows_before = PinnedMaps::at(&pin_path).read_conntrack()?;
    let (refused, status) = start_and_exit(&cluster, "node-1", &previous, &[])?;
    let log = refused.log();
    ensure!(!status.success(), "the older agent started on the upgraded node:\n{log}");
    ensure!(
        log.contains("refusing to start") && log.contains(CONNTRACK_MAP) && log.contains("dataplane cleanup"),
        "the refusal does not name the pins and the fix:\n{log}"
    );
    ensure!(pins(&pin_path)? == pins_before, "the refused agent changed the pins");
    let flows_after = PinnedMaps::at(&pin_path).read_conntrack()?;
    ensure!(
        flows_after.keys().collect::<Vec<_>>() == flows_before.keys().collect::<Vec<_>>(),
        "the refused agent changed the conntrack map"
    );
    let refused_after = flows.exchange("after the refused downgrade")?;
    ensure!(before == refused_after, "the translations changed after the refusal: {before:?} -> {refused_after:?}");
    eprintln!(
        "downgrade refused:\n{}",
        log.lines().filter(|line| line.contains("refusing")).collect::<Vec<_>>().join("\n")
    );
    Ok(())
}
