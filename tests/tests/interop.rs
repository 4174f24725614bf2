//! Interop on the wire with Calico's own VXLAN mode.
//!
//! node-1 runs this dataplane (the eBPF fast path); node-2 runs no agent and is configured only
//! with kernel features, as calico-node configures a node in VXLAN mode (`vxlan.calico`, VNI 4096,
//! port 4789, `via <VTEP> dev vxlan.calico onlink` routes with permanent neighbour and FDB
//! entries, proxy ARP on the pods' veths: see `dataplane_lab::kernel_calico`). Pods on the two
//! nodes must reach each other both ways, with ping and TCP, and the fast path must be what
//! encapsulates and decapsulates on node-1. Without root the test prints why it is skipped and
//! passes.

use std::{path::Path, time::Duration};

use anyhow::{ensure, Context as _};
use dataplane_lab::{counters, kernel_calico, AgentOptions, Cluster, Lab, LabPod};
use serde_json::Value;

/// The example cluster: pool 10.244.0.0/16 vxlanMode Always, node-1 and node-2 on 10.100.0.0/24.
const EXAMPLE: &str = "examples/two-nodes.yaml";
/// The node that runs this dataplane.
const BPF_NODE: &str = "node-1";
/// The node configured as Calico's kernel VXLAN mode configures it.
const KERNEL_NODE: &str = "node-2";
/// A pod on each.
const BPF_POD: &str = "default/web-1";
const KERNEL_POD: &str = "default/web-2";

#[test]
fn bpf_node_and_kernel_vxlan_node_interoperate() -> anyhow::Result<()> {
    let Some(mut cluster) = Cluster::up_or_skip("bpf_node_and_kernel_vxlan_node_interoperate", EXAMPLE)? else {
        return Ok(());
    };
    let model = dataplane_lab::load_model(cluster.datastore())?;
    let commands = kernel_calico::configure_kernel_vxlan(&cluster.lab, &model, KERNEL_NODE)?;
    eprintln!("{KERNEL_NODE} configured as Calico's kernel VXLAN mode:\n  {}", commands.join("\n  "));
    cluster.start(BPF_NODE, &AgentOptions::default())?;
    check(&cluster.lab, cluster.bin()).with_context(|| cluster.logs())
}

fn check(lab: &Lab, bin: &Path) -> anyhow::Result<()> {
    let bpf_pod = lab.pod(BPF_POD)?;
    let kernel_pod = lab.pod(KERNEL_POD)?;
    ensure!(bpf_pod.node == BPF_NODE && kernel_pod.node == KERNEL_NODE, "the example's pods moved");

    // The kernel node really is the kernel's: a vxlan device with Calico's settings, no pins.
    let kernel_netns = lab.node_netns(KERNEL_NODE)?;
    let link = lab.exec_stdout(kernel_netns, &["ip", "-d", "link", "show", kernel_calico::VXLAN_DEVICE])?;
    ensure!(
        link.contains("vxlan id 4096") && link.contains("dstport 4789") && link.contains("mtu 1450"),
        "{KERNEL_NODE} has no vxlan.calico with id 4096, dstport 4789, mtu 1450:\n{link}"
    );
    ensure!(!lab.pin_path(KERNEL_NODE).exists(), "{KERNEL_NODE} has pins: an agent ran there");

    let before = counters::read(bin, &lab.pin_path(BPF_NODE))?;
    let bridge = lab.fabric_bridge(BPF_NODE)?;
    let capture = lab.capture(lab.fabric_netns(), bridge, "udp port 4789")?;
    let pinged = lab.ping(&bpf_pod.netns, kernel_pod.addr).and_then(|_| lab.ping(&kernel_pod.netns, bpf_pod.addr));
    let text = capture.stop()?;
    pinged?;
    let after = counters::read(bin, &lab.pin_path(BPF_NODE))?;

    // Both directions crossed as VXLAN with Calico's VNI: the fast path's towards the kernel
    // node's VTEP, and the kernel's vxlan.calico towards node-1.
    let node1 = lab.node(BPF_NODE)?.addr.addr();
    let node2 = lab.node(KERNEL_NODE)?.addr.addr();
    for (from, to) in [(node1, node2), (node2, node1)] {
        let outer = format!("> {to}.4789: VXLAN");
        ensure!(
            text.lines().any(|l| l.contains(&format!("{from}.")) && l.contains(&outer) && l.contains("vni 4096")),
            "no VXLAN vni 4096 from {from} to {to}:4789 on fabric bridge {bridge}:\n{text}"
        );
    }
    // node-1's fast path did the work on its side.
    for counter in ["encap_vxlan", "decap_vxlan"] {
        let grew = counters::growth(&before, &after, counter);
        ensure!(grew >= 3, "{BPF_NODE}'s {counter} grew by {grew} during the pings (expected >= 3)");
    }

    // TCP both ways.
    for (client, server) in [(bpf_pod, kernel_pod), (kernel_pod, bpf_pod)] {
        let bytes = tcp_stream(lab, client, server)?;
        eprintln!("TCP {} -> {}: {bytes} bytes in 2 s", client.key, server.key);
    }
    Ok(())
}

/// A 2-second iperf3 TCP stream from `client` to `server`; returns the bytes received.
fn tcp_stream(lab: &Lab, client: &LabPod, server: &LabPod) -> anyhow::Result<u64> {
    let mut iperf = lab.spawn(&server.netns, &["iperf3", "-s", "-1", "--forceflush"], "iperf3-server")?;
    iperf.wait_for_log("Server listening", Duration::from_secs(10))?;
    let to = server.addr.to_string();
    let argv = ["timeout", "20", "iperf3", "-c", &to, "-t", "2", "-J", "--connect-timeout", "3000"];
    let output = lab.exec(&client.netns, &argv).with_context(|| format!("TCP {} -> {}", client.key, server.key))?;
    let report: Value = serde_json::from_slice(&output.stdout).context("iperf3 -J printed no JSON")?;
    let sent = report["end"]["sum_sent"]["bytes"].as_u64().context("iperf3 JSON has no end.sum_sent.bytes")?;
    let received =
        report["end"]["sum_received"]["bytes"].as_u64().context("iperf3 JSON has no end.sum_received.bytes")?;
    ensure!(
        sent > 0 && received > 0,
        "TCP {} -> {} moved no bytes: sent {sent}, received {received}",
        client.key,
        server.key
    );
    Ok(received)
}
