//! "First light": real packets between pods on two nodes, through the eBPF fast path.
//!
//! Each test builds its own lab from examples/two-nodes.yaml (namespaces, veths, a fabric bridge),
//! runs one agent per node as a separate process, and checks what a user would check with ping,
//! iperf3, tcpdump, ip and bpftool. The lab is torn down when the test ends, also on failure.
//! Without root the tests print why they are skipped and pass.

use std::time::Duration;

use anyhow::{ensure, Context as _};
use dataplane_lab::{AgentOptions, Cluster};
use serde_json::Value;

/// The example cluster: pool 10.244.0.0/16 vxlanMode Always, node-1 and node-2 on 10.100.0.0/24.
const EXAMPLE: &str = "examples/two-nodes.yaml";
/// A pod on node-1.
const WEB_1: &str = "default/web-1";
/// A pod on node-2.
const WEB_2: &str = "default/web-2";
/// The example's lab with a ready fast-path agent per node; `None` when not root.
fn cluster(test: &str) -> anyhow::Result<Option<Cluster>> {
    let Some(mut cluster) = Cluster::up_or_skip(test, EXAMPLE)? else {
        return Ok(None);
    };
    cluster.start_all(&AgentOptions::default())?;
    Ok(Some(cluster))
}

/// Every object in a JSON document, depth first.
fn objects(value: &Value) -> Vec<&serde_json::Map<String, Value>> {
    let mut found = Vec::new();
    match value {
        Value::Object(map) => {
            found.push(map);
            for child in map.values() {
                found.extend(objects(child));
            }
        }
        Value::Array(items) => {
            for child in items {
                found.extend(objects(child));
            }
        }
        _ => {}
    }
    found
}

#[test]
fn first_light() -> anyhow::Result<()> {
    let Some(cluster) = cluster("first_light")? else {
        return Ok(());
    };
    let lab = &cluster.lab;
    let web1 = lab.pod(WEB_1)?;
    let web2 = lab.pod(WEB_2)?;
    ensure!(web1.node != web2.node, "{WEB_1} and {WEB_2} must run on different nodes");

    // Pod to pod across nodes, both ways.
    lab.ping(&web1.netns, web2.addr).with_context(|| cluster.logs())?;
    lab.ping(&web2.netns, web1.addr).with_context(|| cluster.logs())?;

    // A TCP stream: iperf3 for 3 s, which must move bytes.
    let mut server = lab.spawn(&web2.netns, &["iperf3", "-s", "-1", "--forceflush"], "iperf3-server")?;
    server.wait_for_log("Server listening", Duration::from_secs(10))?;
    let server_addr = web2.addr.to_string();
    let output =
        lab.exec(&web1.netns, &["iperf3", "-c", &server_addr, "-t", "3", "-J"]).with_context(|| cluster.logs())?;
    let report: Value = serde_json::from_slice(&output.stdout).context("iperf3 -J did not print JSON")?;
    let sent = report["end"]["sum_sent"]["bytes"].as_u64().context("iperf3 JSON has no end.sum_sent.bytes")?;
    let received =
        report["end"]["sum_received"]["bytes"].as_u64().context("iperf3 JSON has no end.sum_received.bytes")?;
    ensure!(sent > 0 && received > 0, "iperf3 moved no bytes: sent {sent}, received {received}");
    eprintln!("iperf3 {WEB_1} -> {WEB_2}: {received} bytes in 3 s");
    drop(server);

    // On the wire between the nodes: VXLAN to UDP 4789 with Calico's VNI.
    let bridge = lab.fabric_bridge(&web1.node)?;
    let capture = lab.capture(lab.fabric_netns(), bridge, "udp port 4789")?;
    let pinged = lab.exec(&web1.netns, &["ping", "-c", "2", "-W", "2", &server_addr]);
    let text = capture.stop()?;
    pinged.with_context(|| cluster.logs())?;
    ensure!(
        text.contains(".4789: VXLAN") && text.contains("vni 4096"),
        "the capture on fabric bridge {bridge} shows no VXLAN with vni 4096 to port 4789:\n{text}"
    );

    // The pod's gateway was answered by the fast path with Calico's MAC.
    let neigh = lab.exec_stdout(&web1.netns, &["ip", "neigh", "show", "169.254.1.1"])?;
    ensure!(
        neigh.contains("lladdr ee:ee:ee:ee:ee:ee"),
        "{WEB_1} has no neighbour 169.254.1.1 at ee:ee:ee:ee:ee:ee: {neigh:?}"
    );

    // Nothing of the kernel's own slow path: no vxlan device but the fast path's GRO anchor (in
    // external mode, which received nothing: from_uplink decided every VXLAN packet), no proxy
    // ARP, on any node.
    for node in lab.nodes() {
        let vxlan = lab.exec_stdout(&node.netns, &["ip", "-d", "link", "show", "type", "vxlan"])?;
        let devices: Vec<&str> = vxlan.lines().filter(|l| !l.starts_with(' ')).collect();
        ensure!(
            devices.len() == 1 && devices[0].contains("vxlan.dataplane") && vxlan.contains("vxlan external"),
            "node {} has vxlan devices other than the fast path's external GRO anchor:\n{vxlan}",
            node.name
        );
        let anchor = lab.exec_stdout(&node.netns, &["ip", "-s", "-j", "link", "show", "vxlan.dataplane"])?;
        let anchor: Value = serde_json::from_str(&anchor).context("`ip -s -j link show` printed no JSON")?;
        let received = anchor[0]["stats64"]["rx"]["packets"].as_u64();
        ensure!(received == Some(0), "the GRO anchor of {} received packets itself: {anchor}", node.name);
        let proxy_arp = lab.exec_stdout(&node.netns, &["sh", "-c", "grep -H . /proc/sys/net/ipv4/conf/*/proxy_arp"])?;
        ensure!(!proxy_arp.trim().is_empty(), "node {} shows no proxy_arp settings", node.name);
        for line in proxy_arp.lines() {
            ensure!(line.ends_with(":0"), "node {} has proxy ARP on: {line}", node.name);
        }
    }

    // The routes map is a BTF map: bpftool prints named fields.
    let pin = lab.pin_path(&web1.node).join("routes_v1");
    let pin_arg = pin.to_string_lossy();
    let output = dataplane_lab::cmd::run(&["bpftool", "-j", "map", "dump", "pinned", &pin_arg])?;
    let dump: Value = serde_json::from_slice(&output.stdout).context("bpftool -j did not print JSON")?;
    let keys_with_block = objects(&dump).into_iter().filter(|o| o.get("prefix_len") == Some(&Value::from(26))).count();
    let route_values =
        objects(&dump).into_iter().filter(|o| o.contains_key("kind") && o.contains_key("node_addr")).count();
    let text = String::from_utf8_lossy(&output.stdout);
    ensure!(keys_with_block > 0, "no key with prefix_len 26 (a /26 block) in {pin_arg}:\n{text}");
    ensure!(route_values > 0, "no Route value with named fields kind and node_addr in {pin_arg}:\n{text}");
    Ok(())
}

#[test]
fn pinned_fast_path_outlives_the_agent_until_cleanup() -> anyhow::Result<()> {
    let Some(mut cluster) = cluster("pinned_fast_path_outlives_the_agent_until_cleanup")? else {
        return Ok(());
    };
    let web1 = cluster.lab.pod(WEB_1)?.clone();
    let web2 = cluster.lab.pod(WEB_2)?.clone();
    cluster.lab.ping(&web1.netns, web2.addr).with_context(|| cluster.logs())?;

    // SIGTERM: the agents exit and leave their pins, which keep the programs attached.
    for node in cluster.node_names() {
        let agent = cluster.stop(&node)?;
        let routes = agent.pin_path().join("routes_v1");
        ensure!(routes.exists(), "agent of {} left no {} after SIGTERM", agent.node(), routes.display());
    }
    cluster.lab.ping(&web1.netns, web2.addr).context("traffic stopped with the agents")?;
    cluster.lab.ping(&web2.netns, web1.addr).context("traffic stopped with the agents")?;

    // `dataplane cleanup` removes the pins: the programs go, and with them the only path.
    let bin = cluster.bin().to_string_lossy().into_owned();
    for node in ["node-1", "node-2"] {
        let pin = cluster.lab.pin_path(node);
        let pin_arg = pin.to_string_lossy();
        let netns = cluster.lab.node_netns(node)?;
        cluster.lab.exec(netns, &[&bin, "cleanup", "--pin-path", &pin_arg])?;
        ensure!(!pin.join("routes_v1").exists(), "`dataplane cleanup` left {}/routes_v1", pin.display());
    }
    let to = web2.addr.to_string();
    let output = cluster.lab.exec_status(&web1.netns, &["ping", "-c", "3", "-W", "1", &to])?;
    ensure!(
        !output.status.success(),
        "ping {WEB_1} -> {WEB_2} still gets through after cleanup:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    Ok(())
}
