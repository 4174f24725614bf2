//! Workloads without a MAC in the datastore (as Calico's Kubernetes datastore reads pods): the
//! agent learns each pod's MAC from the pod side of its veth, and a workload whose MAC cannot be
//! learned keeps 00:00:00:00:00:00 without failing the reconcile.
//!
//! The two-node lab runs real agents from the example cluster with every WorkloadEndpoint's MAC
//! removed. On node-1, cache-1's veth is replaced by a bridge of the same name (a host
//! interface with no peer): the agent warns once about it, however many resyncs follow, and still
//! programs web-1 with the MAC of web-1's eth0, which packets from web-2 then carry into web-1.
//! Needs root and the agent binary.

use std::{
    fs, thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _};
use dataplane::model::MacAddr;
use dataplane_lab::{Agent, AgentOptions, Cluster, Lab, LabPod};
use dataplane_tests::workspace_root;
use serde_json::Value;

/// The example cluster; its WorkloadEndpoints carry MACs, which the test removes.
const EXAMPLE: &str = "examples/two-nodes.yaml";
/// The warning the agent logs when it cannot learn a pod's MAC.
const CANNOT_LEARN: &str = "cannot learn the pod's MAC";
/// The line the agent logs when it has learned one.
const LEARNED: &str = "learned the pod's MAC from its veth";

/// The MAC of `pod`'s eth0, as `ip` prints it.
fn eth0_mac(lab: &Lab, pod: &LabPod) -> anyhow::Result<String> {
    let output = lab.exec(&pod.netns, &["ip", "-j", "link", "show", "eth0"])?;
    let links: Value = serde_json::from_slice(&output.stdout)?;
    links[0]["address"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no address for eth0 of {}: {links}", pod.key))
}

/// The MAC the workloads map of `agent` holds for `pod`.
fn programmed_mac(agent: &Agent, pod: &LabPod) -> anyhow::Result<String> {
    let workloads = dataplane::pinned::PinnedMaps::at(agent.pin_path()).read_workloads()?;
    let entry = workloads
        .values()
        .find(|w| std::net::Ipv4Addr::from(w.addr) == pod.addr)
        .with_context(|| format!("the workloads map of {} has no entry for {}", agent.node(), pod.key))?;
    Ok(MacAddr(entry.mac).to_string())
}

#[test]
fn pod_macs_are_learned_from_the_veths_and_a_failure_is_reported_once() -> anyhow::Result<()> {
    let test = "pod_macs_are_learned_from_the_veths_and_a_failure_is_reported_once";
    let Some(mut cluster) = Cluster::up_or_skip(test, EXAMPLE)? else {
        return Ok(());
    };
    let example = workspace_root().join(EXAMPLE);
    let lab = &cluster.lab;

    // The cluster as the Kubernetes datastore reads it: no WorkloadEndpoint has a MAC.
    let text = fs::read_to_string(&example).with_context(|| format!("reading {}", example.display()))?;
    let without_macs: String =
        text.lines().filter(|line| !line.starts_with("  mac: ")).map(|line| format!("{line}\n")).collect();
    ensure!(without_macs.len() < text.len(), "{EXAMPLE} has no WorkloadEndpoint MACs to remove");
    fs::write(cluster.datastore(), without_macs)?;

    // cache-1's host interface becomes a bridge (the dummy driver may be missing): no peer, so no MAC to learn.
    let cache1 = lab.pod("default/cache-1")?.clone();
    let node1_netns = lab.node_netns("node-1")?.to_owned();
    lab.exec(&node1_netns, &["ip", "link", "del", &cache1.interface])?;
    lab.exec(&node1_netns, &["ip", "link", "add", &cache1.interface, "type", "bridge"])?;
    lab.exec(&node1_netns, &["ip", "link", "set", &cache1.interface, "up"])?;

    // A resync every second: several applies follow the first one within the test.
    let options = AgentOptions { args: vec!["--resync-interval".into(), "1".into()], ..AgentOptions::default() };
    for node in ["node-1", "node-2"] {
        cluster.start(node, &options)?;
    }
    let lab = &cluster.lab;
    let (node1, node2) = (
        cluster.agent("node-1").context("no agent of node-1")?,
        cluster.agent("node-2").context("no agent of node-2")?,
    );
    let web1 = lab.pod("default/web-1")?.clone();
    let web2 = lab.pod("default/web-2")?.clone();

    // At least three more reconciles of node-1, so a repeated warning would show.
    let ready = |agent: &Agent| agent.log().matches(agent.ready_line()).count();
    let (before, deadline) = (ready(node1), Instant::now() + Duration::from_secs(20));
    while ready(node1) < before + 3 {
        ensure!(Instant::now() < deadline, "node-1 did not resync every second:\n{}", node1.log());
        thread::sleep(Duration::from_millis(200));
    }
    let log = node1.log();
    let warnings: Vec<&str> = log.lines().filter(|line| line.contains(CANNOT_LEARN)).collect();
    ensure!(
        warnings.len() == 1 && warnings[0].contains("WARN") && warnings[0].contains(&cache1.interface),
        "want exactly one warning about {} over the resyncs, got {warnings:#?}\n{log}",
        cache1.interface
    );
    // Learned once and kept across the resyncs.
    let learned = log.lines().filter(|line| line.contains(LEARNED) && line.contains(&web1.interface)).count();
    ensure!(learned == 1, "web-1's MAC learned {learned} times, want once:\n{log}");

    // The maps: web-1 with its eth0 MAC, cache-1 with none; web-2 on node-2 with its own.
    ensure!(programmed_mac(node1, &web1)? == eth0_mac(lab, &web1)?, "web-1:\n{log}");
    ensure!(programmed_mac(node1, &cache1)? == MacAddr::default().to_string(), "cache-1:\n{log}");
    ensure!(programmed_mac(node2, &web2)? == eth0_mac(lab, &web2)?, "web-2:\n{}", node2.log());

    // Real traffic: web-2's pings arrive in web-1 addressed to web-1's eth0.
    let mac = eth0_mac(lab, &web1)?;
    let capture = lab.capture(&web1.netns, "eth0", &format!("icmp and dst host {}", web1.addr))?;
    let pcap = capture.pcap_path().to_string_lossy().into_owned();
    let pinged = lab.ping_ok(&web2, web1.addr, 5);
    capture.stop()?;
    ensure!(pinged?, "web-2 cannot ping web-1\n{log}\n{}", node2.log());
    // -e prints the link-level header: "src > dst, ethertype IPv4 ...".
    let output = std::process::Command::new("tcpdump").args(["-r", &pcap, "-nn", "-e"]).output()?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let requests: Vec<&str> = text.lines().filter(|line| line.contains("ICMP echo request")).collect();
    ensure!(!requests.is_empty(), "no echo request captured in web-1:\n{text}");
    for line in &requests {
        ensure!(
            line.contains(&format!("> {mac}, ethertype IPv4")),
            "web-1 received a packet not addressed to {mac}:\n{text}"
        );
    }
    Ok(())
}
