//! The uplink's XDP program in the lab: attached natively to the node's veth (`--xdp native`: by
//! default a veth gets none, see backend/xdp.rs), it drops a flood of VXLAN from a non-peer
//! (counted as `drop_unknown_peer`) while the pods' own traffic keeps flowing; `dataplane check`
//! and `trace` see it; a restarted agent adopts its pinned link without a gap, and `dataplane
//! cleanup` removes it. Needs root.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _};
use dataplane_common::net::{CALICO_VXLAN_PORT, CALICO_VXLAN_VNI};
use dataplane_lab::{counters, AgentOptions, Cluster};
use serde_json::Value;

const EXAMPLE: &str = "examples/two-nodes.yaml";
const WEB_1: &str = "default/web-1";
const WEB_2: &str = "default/web-2";
/// VXLAN datagrams of the flood.
const FLOOD: u64 = 20_000;

/// The agents' options: native XDP on the veth uplink.
fn native_xdp() -> AgentOptions {
    AgentOptions { args: vec!["--xdp".into(), "native".into()], ..AgentOptions::default() }
}

/// `dataplane <args>` in `node`'s namespace: exit code and stdout.
fn dataplane(cluster: &Cluster, node: &str, args: &[&str]) -> anyhow::Result<(Option<i32>, String)> {
    let bin = cluster.bin().to_string_lossy();
    let mut argv = vec![&*bin];
    argv.extend(args);
    let output = cluster.lab.exec_status(cluster.lab.node_netns(node)?, &argv)?;
    Ok((output.status.code(), String::from_utf8_lossy(&output.stdout).into_owned()))
}

/// The XDP program on `node`'s uplink as `ip -d -j link` reports it: mode and program id.
fn xdp(cluster: &Cluster, node: &str) -> anyhow::Result<Option<(u64, u64)>> {
    let lab_node = cluster.lab.node(node)?;
    let json = cluster.lab.exec_stdout(&lab_node.netns, &["ip", "-d", "-j", "link", "show", &lab_node.uplink])?;
    let links: Value = serde_json::from_str(&json).context("`ip -j link` printed no JSON")?;
    let xdp = &links[0]["xdp"];
    Ok(xdp["mode"].as_u64().zip(xdp["prog"]["id"].as_u64()))
}

/// `ip link`'s XDP mode number of native XDP (XDP_ATTACHED_DRV).
const XDP_ATTACHED_DRV: u64 = 1;

/// A VXLAN datagram's payload: the VNI flag, Calico's VNI, and an inner Ethernet/IPv4 header
/// (it never gets as far as being read).
fn vxlan_payload() -> Vec<u8> {
    let vni = CALICO_VXLAN_VNI.to_be_bytes();
    let mut payload = vec![0x08, 0, 0, 0, vni[1], vni[2], vni[3], 0];
    payload.extend_from_slice(&[0x66, 0xd0, 0, 0, 0, 1, 0x66, 0xd0, 0, 0, 0, 2, 0x08, 0x00]);
    payload.extend_from_slice(&[0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 244, 2, 2, 10, 244, 1, 2]);
    payload.extend_from_slice(&[0; 8]);
    payload
}

#[test]
fn xdp_drops_a_non_peer_flood_while_pods_talk_and_survives_a_restart() -> anyhow::Result<()> {
    let test = "xdp_drops_a_non_peer_flood_while_pods_talk_and_survives_a_restart";
    let Some(mut cluster) = Cluster::up_or_skip(test, EXAMPLE)? else {
        return Ok(());
    };
    cluster.start_all(&native_xdp())?;
    let lab = &cluster.lab;
    for agent in cluster.agents() {
        let log = agent.log();
        ensure!(
            log.contains("xdp=native veth=true"),
            "agent of {} did not attach native XDP to its veth:\n{log}",
            agent.node()
        );
    }
    let (mode, first_id) = xdp(&cluster, "node-1")?.context("no XDP program on node-1's uplink")?;
    ensure!(mode == XDP_ATTACHED_DRV, "node-1's uplink runs XDP in mode {mode}, not native (driver)");

    // `dataplane check` sees it healthy; `trace --inject` of a non-peer's VXLAN says XDP drops it
    // first, and the XDP program's own run agrees.
    let datastore = format!("file:{}", cluster.datastore().display());
    let pins = cluster.lab.pin_path("node-1").to_string_lossy().into_owned();
    let check_args = ["check", "--datastore", datastore.as_str(), "--node", "node-1", "--pin-path", pins.as_str()];
    let (code, text) = dataplane(&cluster, "node-1", &check_args)?;
    ensure!(code == Some(0) && text.contains("checked 8 program links"), "check on node-1:\n{text}");
    let trace_args = ["trace", "10.244.2.2", "10.244.1.2", "--from", "uplink", "--outer-src", "10.100.0.99"];
    let (_, text) =
        dataplane(&cluster, "node-1", &[&trace_args[..], &["--inject", "--pin-path", pins.as_str()]].concat())?;
    ensure!(
        text.contains("xdp: xdp_uplink (native XDP of eth0) drops it before an skb exists (drop_unknown_peer)")
            && text.contains("xdp inject: drop, counters: drop_unknown_peer +1")
            && text.contains("prediction matched"),
        "trace of a non-peer's VXLAN on node-1:\n{text}"
    );

    // A flood of VXLAN from the external host, which is no peer, to node-1's VXLAN port, while
    // web-1 pings web-2 across the nodes.
    let web1 = lab.pod(WEB_1)?.clone();
    let web2 = lab.pod(WEB_2)?.clone();
    let node_1 = lab.node("node-1")?.addr.addr();
    let before = counters::read(cluster.bin(), &cluster.lab.pin_path("node-1"))?;
    let socket = dataplane_lab::udp_socket_in(&lab.external().netns, 0, None)?;
    let payload = vxlan_payload();
    let pinging = Arc::new(AtomicBool::new(true));
    let flooding = Arc::clone(&pinging);
    let flood = thread::spawn(move || -> anyhow::Result<u64> {
        let mut sent = 0;
        let mut tries = 0;
        // At least FLOOD datagrams, and on for as long as the pings take.
        while tries < FLOOD || flooding.load(Ordering::Relaxed) {
            tries += 1;
            // A full socket buffer only slows the flood down.
            if socket.send_to(&payload, (node_1, CALICO_VXLAN_PORT)).is_ok() {
                sent += 1;
            }
        }
        Ok(sent)
    });
    let to = web2.addr.to_string();
    let pinged = lab.exec_status(&web1.netns, &["ping", "-c", "5", "-i", "0.2", "-W", "1", &to]);
    pinging.store(false, Ordering::Relaxed);
    let sent = flood.join().map_err(|_| anyhow::anyhow!("the flood thread panicked"))??;
    let pinged = String::from_utf8_lossy(&pinged?.stdout).into_owned();
    let replies = pinged
        .split(", ")
        .find_map(|part| part.strip_suffix(" received"))
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    eprintln!("ping web-1 -> web-2 during the flood: {replies} of 5 replies");
    ensure!(replies >= 3, "web-1's pings to web-2 during the flood: {pinged}\n{}", cluster.logs());
    ensure!(lab.ping_ok(&web1, web2.addr, 3)?, "web-1 cannot ping web-2 after the flood");
    thread::sleep(Duration::from_millis(200));
    let after = counters::read(cluster.bin(), &cluster.lab.pin_path("node-1"))?;
    let dropped = after["drop_unknown_peer"] - before["drop_unknown_peer"];
    eprintln!("flood: {sent} sent, {dropped} counted drop_unknown_peer");
    // The fabric may lose some of a flood; most of it arrives, and all that arrives is dropped at XDP.
    ensure!(
        sent >= FLOOD / 2 && dropped > sent / 2,
        "{sent} VXLAN datagrams sent, {dropped} counted as drop_unknown_peer"
    );
    ensure!(after["xdp_passed"] > before["xdp_passed"], "XDP passed none of the pods' packets: {after:?}");
    ensure!(after["decap_vxlan"] > before["decap_vxlan"], "no VXLAN from node-2 decapsulated: {after:?}");

    // A restarted agent adopts the pinned link: the program is swapped in, never detached.
    cluster.stop("node-1")?;
    ensure!(xdp(&cluster, "node-1")?.is_some(), "XDP left the uplink with the agent");
    cluster.start("node-1", &native_xdp())?;
    let log = cluster.log("node-1");
    ensure!(
        log.lines().any(|l| l.contains("program=\"xdp_uplink\"") && l.contains("adopted=true")),
        "the restarted agent did not adopt the XDP link:\n{log}"
    );
    let (_, second_id) = xdp(&cluster, "node-1")?.context("no XDP program after the restart")?;
    ensure!(second_id != first_id, "the restarted agent's program was not swapped in (still id {first_id})");
    ensure!(cluster.lab.ping_ok(&web1, web2.addr, 3)?, "web-1 cannot ping web-2 after the restart");

    // Its pin removed, the link goes with it (on a veth `check` expects no XDP unless pinned, so
    // it cannot tell; its findings for a missing link are unit-tested in check.rs).
    cluster.stop("node-1")?;
    let xdp_pin = cluster.lab.pin_path("node-1").join("links").join("xdp_eth0");
    std::fs::remove_file(&xdp_pin).with_context(|| format!("removing {}", xdp_pin.display()))?;
    // The kernel lets the link go after its pin's inode is freed (after an RCU grace period, then
    // from a workqueue): on a busy machine that takes a moment.
    let started = Instant::now();
    while xdp(&cluster, "node-1")?.is_some() && started.elapsed() < Duration::from_secs(5) {
        thread::sleep(Duration::from_millis(20));
    }
    ensure!(xdp(&cluster, "node-1")?.is_none(), "XDP stayed on node-1's uplink 5 s after its pin went");

    // `dataplane cleanup` removes the XDP program with the rest.
    cluster.start("node-1", &native_xdp())?;
    ensure!(xdp(&cluster, "node-1")?.is_some(), "the agent did not attach XDP again");
    cluster.stop("node-1")?;
    let pin = cluster.lab.pin_path("node-1");
    let netns = cluster.lab.node_netns("node-1")?;
    let bin = cluster.bin().to_string_lossy().into_owned();
    cluster.lab.exec(netns, &[&bin, "cleanup", "--pin-path", &pin.to_string_lossy()])?;
    ensure!(xdp(&cluster, "node-1")?.is_none(), "`dataplane cleanup` left XDP on node-1's uplink");
    Ok(())
}
