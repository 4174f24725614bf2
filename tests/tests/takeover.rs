//! Adoption beside Calico: a node configured exactly as Calico's kernel dataplane configures it
//! (`dataplane_lab::kernel_calico`: vxlan.calico holding UDP 4789, its routes, neighbours, FDB
//! entries and proxy ARP; no agent of ours ever ran there) is taken over by the agent, then handed
//! back (the agent stopped, Calico's configuration restored as calico-node restores it when it
//! starts, `dataplane cleanup`), while a ping and an iperf3 stream run across it: no ping lost and
//! no second of the stream stalled, either way.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _};
use dataplane_lab::{iperf, kernel_calico, AgentOptions, Cluster, Lab};
use serde_json::Value;

/// The example cluster: VXLAN between node-1 and node-2.
const EXAMPLE: &str = "examples/two-nodes.yaml";
/// The node that is taken over and handed back; node-2 stays Calico's throughout.
const NODE: &str = "node-1";
const PEER: &str = "node-2";
/// Length of the stream and of the ping (one every 50 ms) across both switches.
const STREAM_SECONDS: u64 = 12;
const PING_INTERVAL: &str = "0.05";

#[test]
fn a_calico_kernel_node_is_taken_over_and_handed_back_under_traffic() -> anyhow::Result<()> {
    let Some(mut cluster) =
        Cluster::up_or_skip("a_calico_kernel_node_is_taken_over_and_handed_back_under_traffic", EXAMPLE)?
    else {
        return Ok(());
    };
    let bin = cluster.bin().to_owned();
    let model = dataplane_lab::load_model(cluster.datastore())?;
    let lab = &cluster.lab;
    for node in [NODE, PEER] {
        kernel_calico::configure_kernel_vxlan(lab, &model, node)?;
    }
    let netns = lab.node_netns(NODE)?.to_owned();
    let block_route = |lab: &Lab| lab.exec_stdout(&netns, &["ip", "route", "show", "10.244.2.0/26"]);
    let calico_route = block_route(lab)?;
    ensure!(calico_route.contains(kernel_calico::VXLAN_DEVICE), "Calico's route is not set up: {calico_route}");
    ensure!(!lab.pin_path(NODE).exists(), "{NODE} has pins before the takeover: an agent ran there");

    let client = lab.pod("default/web-1")?.clone();
    let server = lab.pod("default/web-2")?.clone();
    ensure!(lab.ping_ok(&client, server.addr, 5)?, "Calico's kernel dataplane does not carry web-1 to web-2");
    let mut iperf_server = lab.spawn(&server.netns, &["iperf3", "-s", "-1", "--forceflush"], "iperf3-server")?;
    iperf_server.wait_for_log("Server listening", Duration::from_secs(10))?;
    let server_addr = server.addr.to_string();
    let seconds = STREAM_SECONDS.to_string();
    let mut stream = lab.spawn(
        &client.netns,
        &["iperf3", "-c", &server_addr, "-t", &seconds, "-J", "--connect-timeout", "3000"],
        "iperf3-client",
    )?;
    let count = (STREAM_SECONDS * 20).to_string();
    let mut ping = lab.spawn(&client.netns, &["ping", "-i", PING_INTERVAL, "-c", &count, &server_addr], "ping")?;
    thread::sleep(Duration::from_secs(2));

    // Calico -> this dataplane: the agent starts on the node as Calico left it.
    let began = Instant::now();
    cluster.start(NODE, &AgentOptions::default())?;
    let took_over = began.elapsed();
    let lab = &cluster.lab;
    ensure!(lab.pin_path(NODE).exists(), "the agent pinned nothing: it did not take the node over");
    // While the agent holds the node, its programs carry the traffic (not Calico's vxlan.calico,
    // which still exists and holds UDP 4789).
    let before = encapsulated(lab, &bin)?;
    thread::sleep(Duration::from_secs(4));
    let during = encapsulated(lab, &bin)?.saturating_sub(before);
    ensure!(during > 1000, "the fast path encapsulated {during} packets in 4 s of the stream: it did not take over");

    // This dataplane -> Calico: the agent stops (its pinned programs keep the traffic), calico-node
    // restores its configuration, `dataplane cleanup` removes the programs, pins and routes.
    let began = Instant::now();
    let agent_log = cluster.stop(NODE)?.log();
    let lab = &cluster.lab;
    let warnings: Vec<&str> = agent_log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
    eprintln!("the agent's warnings on Calico's node: {warnings:#?}");
    // vxlan.calico holds UDP 4789, so the GRO anchor cannot open its socket; vxlan.calico's own
    // socket GRO-merges VXLAN there all the same: the agent says so, and warns of no lost GRO.
    ensure!(
        agent_log.contains("no VXLAN GRO anchor needed")
            && agent_log.contains(&format!("holder={}", kernel_calico::VXLAN_DEVICE))
            && !warnings.iter().any(|line| line.contains("GRO")),
        "the agent misjudged GRO on Calico's node:\n{agent_log}"
    );
    kernel_calico::configure_kernel_vxlan(lab, &model, NODE)?;
    let pin_path = lab.pin_path(NODE);
    let pin_arg = pin_path.to_string_lossy();
    let bin_arg = bin.to_string_lossy();
    let cleanup = lab.exec_stdout(&netns, &[&bin_arg, "cleanup", "--pin-path", &pin_arg])?;
    let handed_back = began.elapsed();
    let route = block_route(lab)?;
    ensure!(
        route.contains(kernel_calico::VXLAN_DEVICE),
        "after the hand-back the block's route is not Calico's: {route:?} (was {calico_route:?}); cleanup said:\n{cleanup}"
    );
    let link = lab.exec_stdout(&netns, &["ip", "-d", "link", "show", kernel_calico::VXLAN_DEVICE])?;
    ensure!(link.contains("vxlan id 4096") && link.contains("dstport 4789"), "vxlan.calico is not Calico's: {link}");

    let finished = stream
        .wait_timeout(Duration::from_secs(STREAM_SECONDS + 20))?
        .with_context(|| format!("iperf3 did not finish:\n{}", stream.log()))?;
    let report = stream.log();
    ensure!(finished.success(), "iperf3 failed across the takeover:\n{report}");
    let stream = iperf::parse(&report)?;
    let per_second = &stream.per_second;
    ping.wait_timeout(Duration::from_secs(STREAM_SECONDS + 20))?.context("ping did not finish")?;
    let pings = ping.log();
    let summary = pings.lines().find(|l| l.contains("packet loss")).unwrap_or("no summary").to_owned();
    eprintln!(
        "takeover: agent ready {took_over:?} after start; hand-back (stop, Calico restored, cleanup) took \
         {handed_back:?}; the fast path encapsulated {during} packets in 4 s; ping: {summary}; Gbit/s per second: {per_second:.2?}; cleanup: {}",
        cleanup.trim()
    );
    ensure!(summary.contains(&format!("{count} received, 0% packet loss")), "pings were lost: {summary}");
    iperf::ensure_never_below(&stream, STREAM_SECONDS as usize, iperf::UNTHROTTLED_FLOOR_GBPS)
        .context("the stream across the takeover and hand-back")?;
    Ok(())
}

/// The `encap_vxlan` decisions counted on the taken-over node so far (`dataplane stats`).
fn encapsulated(lab: &Lab, bin: &std::path::Path) -> anyhow::Result<u64> {
    let pin = lab.pin_path(NODE);
    let bin = bin.to_string_lossy();
    let pin_arg = pin.to_string_lossy();
    let output = dataplane_lab::cmd::run(&[&*bin, "stats", "--pin-path", &pin_arg, "-o", "json"])?;
    let json: Value = serde_json::from_slice(&output.stdout).context("`dataplane stats -o json` did not print JSON")?;
    json["decisions"]["encap_vxlan"].as_u64().with_context(|| format!("no decisions.encap_vxlan in {json}"))
}
