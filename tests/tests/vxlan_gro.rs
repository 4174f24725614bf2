//! The VXLAN GRO anchor: with the fast path receiving VXLAN, the kernel merges VXLAN packets per
//! inner flow before `from_uplink` decapsulates them, as it does for its own vxlan.calico.
//!
//! The lab's uplinks are veths, which carry a sender's GSO packets whole, so GRO has nothing to
//! merge there by default. This test makes the wire segment as a real NIC does: node-1's uplink
//! sends with TSO and GSO off (every VXLAN packet leaves at most one MTU), and node-2's uplink
//! receives with GRO on (veth NAPI GRO, Linux 5.13+; the fabric's end towards it sends without
//! TSO, which veth requires before it hands packets to NAPI). Then, with real traffic (iperf3
//! web-1 -> web-2, node-1 to node-2, VXLAN Always, BPF fast path on both):
//!
//! - node-2's agent made `vxlan.dataplane`: a vxlan device in external mode on port 4789 and
//!   node-2's address, up, with the fast path's alias, and `dataplane check` finds its program;
//! - web-2 receives TCP segments averaging well above one MTU (TcpInSegs of web-2's namespace
//!   against the bytes iperf3 received), and node-2's `decap_vxlan` counter moved;
//! - control, same lab: node-2's agent stopped (the pinned fast path keeps running) and the
//!   anchor deleted by hand, web-2's segments average below 3 x 1450 bytes: the merge was the
//!   anchor's;
//! - a new agent makes the anchor again; a VXLAN packet reaching its socket past `from_uplink`
//!   (node-2 sending it to its own address, over loopback) is decapsulated by the device and
//!   dropped by its program, counted as `drop_vxlan_socket`;
//! - `dataplane cleanup` removes the anchor, and so does the netlink fallback taking over the node
//!   (its `vxlan.calico` needs the port);
//! - another VXLAN device holding the port leaves the anchor down with one warning, and traffic
//!   flows (without GRO).
//!
//! Without root the test prints why it is skipped and passes.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{ensure, Context as _};
use dataplane_lab::{
    counters::{self, growth},
    AgentMode, AgentOptions, Cluster, Lab,
};
use serde_json::Value;

/// Pool 10.244.0.0/16 vxlanMode Always; node-1 (web-1, cache-1) and node-2 (web-2).
const TWO_NODES: &str = "examples/two-nodes.yaml";
const WEB_1: &str = "default/web-1";
const WEB_2: &str = "default/web-2";
/// The anchor device the BPF backend keeps while the node receives VXLAN.
const ANCHOR: &str = "vxlan.dataplane";
/// Length of each measured stream.
const STREAM_SECONDS: &str = "3";
/// The line between merged and unmerged: three segments of a 1450-byte pod MTU.
const MERGED_BYTES: f64 = 3.0 * 1450.0;

#[test]
fn vxlan_receive_gro_merges_with_the_anchor() -> anyhow::Result<()> {
    let test = "vxlan_receive_gro_merges_with_the_anchor";
    let Some(mut cluster) = Cluster::up_or_skip(test, TWO_NODES)? else {
        return Ok(());
    };
    let result = run(&mut cluster);
    // The lab (namespaces, pins, processes) goes when `cluster` drops, failing or not.
    result.with_context(|| cluster.logs())
}

/// A peer's VXLAN datagram that the underlay fragmented (two IPv4 fragments of the outer UDP
/// datagram, sent by node-1 through a raw socket) reaches web-2 whole: node-2's `from_uplink`
/// passes the first fragment to the kernel (`pass_tunnel_fragment`) and the later one with it,
/// the kernel reassembles the datagram for the anchor's socket, and the anchor's program delivers
/// the inner packet into the pod (`decap_vxlan_reassembled`). The same fragments from an address
/// that is no peer are refused at the first fragment (`drop_unknown_peer`) and nothing arrives.
#[test]
fn a_peers_vxlan_fragmented_by_the_underlay_is_reassembled_and_delivered() -> anyhow::Result<()> {
    let test = "a_peers_vxlan_fragmented_by_the_underlay_is_reassembled_and_delivered";
    let Some(mut cluster) = Cluster::up_or_skip(test, TWO_NODES)? else {
        return Ok(());
    };
    cluster.start("node-1", &AgentOptions::default())?;
    cluster.start("node-2", &AgentOptions::default())?;
    let result = fragmented_vxlan(&cluster);
    result.with_context(|| cluster.logs())
}

/// The inner UDP port web-2 listens on.
const FRAGMENTED_PORT: u16 = 7300;
/// The inner datagram's payload: its VXLAN packet does not fit one 1500-byte frame.
const FRAGMENTED_PAYLOAD: usize = 2400;

fn fragmented_vxlan(cluster: &Cluster) -> anyhow::Result<()> {
    let (node1, node2) = (cluster.lab.node("node-1")?.clone(), cluster.lab.node("node-2")?.clone());
    let (web1, web2) = (cluster.lab.pod(WEB_1)?.clone(), cluster.lab.pod(WEB_2)?.clone());
    ensure!(anchor_link(cluster, "node-2")?.is_some(), "node-2's agent made no {ANCHOR}");
    let socket = dataplane_lab::udp_socket_in(&web2.netns, FRAGMENTED_PORT, Some(Duration::from_secs(3)))?;
    let payload: Vec<u8> = (0..FRAGMENTED_PAYLOAD).map(|i| (i % 251) as u8).collect();

    // From node-1, a peer: the whole datagram arrives.
    let before = stats(cluster, "node-2")?;
    let fragments = vxlan_fragments(node1.addr.addr(), node2.addr.addr(), web1.addr, web2.addr, &payload, 0x4a11);
    let sent = dataplane_lab::send_raw_ipv4(&node1.netns, node2.addr.addr(), fragments)?;
    ensure!(sent == 2, "node-1 sent {sent} of the 2 fragments");
    let mut buffer = vec![0u8; FRAGMENTED_PAYLOAD + 100];
    let (n, from) = socket.recv_from(&mut buffer).context("web-2 received nothing from the fragmented VXLAN")?;
    ensure!(buffer[..n] == payload[..], "web-2 received {n} bytes from {from}, not the {FRAGMENTED_PAYLOAD} sent");
    ensure!(from.ip() == std::net::IpAddr::V4(web1.addr), "web-2's datagram came from {from}, not web-1");
    let after = stats(cluster, "node-2")?;
    for (counter, want) in [("pass_tunnel_fragment", 1), ("decap_vxlan_reassembled", 1), ("pass_untracked_fragment", 1)]
    {
        let grew = growth(&before, &after, counter);
        ensure!(grew == want, "node-2's {counter} grew by {grew}, not {want}");
    }

    // The same from an address no node holds: refused at its first fragment, nothing arrives.
    let stranger = std::net::Ipv4Addr::new(10, 100, 0, 99);
    let before = after;
    let fragments = vxlan_fragments(stranger, node2.addr.addr(), web1.addr, web2.addr, &payload, 0x4a12);
    dataplane_lab::send_raw_ipv4(&node1.netns, node2.addr.addr(), fragments)?;
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    ensure!(socket.recv_from(&mut buffer).is_err(), "a stranger's fragmented VXLAN reached web-2");
    let after = stats(cluster, "node-2")?;
    ensure!(growth(&before, &after, "drop_unknown_peer") == 1, "the stranger's first fragment was not refused");
    ensure!(growth(&before, &after, "decap_vxlan_reassembled") == 0, "the stranger's datagram was delivered");
    Ok(())
}

/// The two IPv4 fragments (without link layer) of a VXLAN datagram from `outer_src` to
/// `outer_dst` carrying `inner_src` -> `inner_dst`:[`FRAGMENTED_PORT`] UDP with `payload`; `id` is
/// the outer identification. The outer UDP checksum is 0, as VXLAN senders leave it.
fn vxlan_fragments(
    outer_src: std::net::Ipv4Addr,
    outer_dst: std::net::Ipv4Addr,
    inner_src: std::net::Ipv4Addr,
    inner_dst: std::net::Ipv4Addr,
    payload: &[u8],
    id: u16,
) -> Vec<Vec<u8>> {
    use dataplane_common::net::{CALICO_VXLAN_PORT, CALICO_VXLAN_VNI, ETH_HLEN, IPPROTO_UDP, IPV4_MF};
    use dataplane_tests::packet::{set_ipv4_checksum, Packet};
    // node-1's and node-2's VTEP MACs in examples/two-nodes.yaml.
    let (node1_vtep, node2_vtep) = ([0x66, 0xd0, 0, 0, 0, 1], [0x66, 0xd0, 0, 0, 0, 2]);
    let frame = Packet::eth([0; 6], [0; 6])
        .ipv4(outer_src.octets(), outer_dst.octets(), IPPROTO_UDP)
        .udp(50123, CALICO_VXLAN_PORT)
        .vxlan(CALICO_VXLAN_VNI, node1_vtep, node2_vtep)
        .ipv4(inner_src.octets(), inner_dst.octets(), IPPROTO_UDP)
        .udp(40000, FRAGMENTED_PORT)
        .payload(payload)
        .finish();
    let datagram = &frame[ETH_HLEN..];
    let (header, mut body) = (datagram[..20].to_vec(), datagram[20..].to_vec());
    body[6..8].copy_from_slice(&[0, 0]);
    // The first fragment carries a multiple of 8 bytes of the outer payload.
    let split = 1400;
    let mut fragments = Vec::new();
    for (offset, part, more) in [(0, &body[..split], true), (split, &body[split..], false)] {
        let mut packet = header.clone();
        packet.extend_from_slice(part);
        let total = packet.len() as u16;
        packet[2..4].copy_from_slice(&total.to_be_bytes());
        packet[4..6].copy_from_slice(&id.to_be_bytes());
        let flags_offset = if more { IPV4_MF } else { 0 } | (offset / 8) as u16;
        packet[6..8].copy_from_slice(&flags_offset.to_be_bytes());
        set_ipv4_checksum(&mut packet, 0);
        fragments.push(packet);
    }
    fragments
}

fn run(cluster: &mut Cluster) -> anyhow::Result<()> {
    cluster.start("node-1", &AgentOptions::default())?;
    cluster.start("node-2", &AgentOptions::default())?;
    let node2 = cluster.lab.node("node-2")?.clone();

    // The anchor as the agent made it.
    let anchor = anchor_link(cluster, "node-2")?.context("node-2's agent made no vxlan.dataplane")?;
    let info = &anchor["linkinfo"];
    ensure!(info["info_kind"] == "vxlan", "{ANCHOR} is not a vxlan device: {anchor:#}");
    ensure!(info["info_data"]["external"] == true, "{ANCHOR} is not in external mode: {anchor:#}");
    ensure!(info["info_data"]["port"] == 4789, "{ANCHOR} is not on port 4789: {anchor:#}");
    ensure!(
        info["info_data"]["local"] == node2.addr.addr().to_string(),
        "{ANCHOR} is not on node-2's address: {anchor:#}"
    );
    ensure!(flags(&anchor).contains(&"UP".to_owned()), "{ANCHOR} is not up: {anchor:#}");
    ensure!(
        anchor["ifalias"].as_str().is_some_and(|a| a.contains("dataplane")),
        "{ANCHOR} has no alias of ours: {anchor:#}"
    );
    // The uplink's two hooks, two per pod, and the anchor's ingress.
    let pods = cluster.lab.pods().filter(|p| p.node == "node-2").count();
    let links = format!("checked {} program links", 2 + 2 * pods + 1);
    let check = check_text(cluster, "node-2")?;
    ensure!(check.contains(&links), "`dataplane check` did not check the anchor's program ({links}):\n{check}");

    // A segmenting wire: node-1 sends one MTU at a time, node-2 receives through NAPI GRO.
    let node1_netns = cluster.lab.node_netns("node-1")?.to_owned();
    cluster.lab.exec(&node1_netns, &["ethtool", "-K", "eth0", "tso", "off", "gso", "off"])?;
    let fabric_end = fabric_end(cluster, "node-2")?;
    cluster.lab.exec(cluster.lab.fabric_netns(), &["ethtool", "-K", &fabric_end, "tso", "off", "gso", "off"])?;
    cluster.lab.exec(&node2.netns, &["ethtool", "-K", "eth0", "gro", "on"])?;

    let before = stats(cluster, "node-2")?;
    let merged = stream(cluster)?;
    let after = stats(cluster, "node-2")?;
    let decapsulated = growth(&before, &after, "decap_vxlan");
    eprintln!(
        "with the anchor: {} bytes in {} segments, {:.0} bytes each; decap_vxlan +{decapsulated}",
        merged.bytes,
        merged.segments,
        merged.per_segment()
    );
    ensure!(decapsulated > 0, "node-2's from_uplink decapsulated nothing: {after:?}");
    ensure!(
        merged.per_segment() > MERGED_BYTES,
        "with the anchor web-2's segments average {:.0} bytes, not above {MERGED_BYTES}: GRO did not merge ({merged:?})",
        merged.per_segment()
    );

    // Control: the same wire and fast path without the anchor.
    cluster.stop("node-2")?;
    cluster.lab.exec(&node2.netns, &["ip", "link", "del", ANCHOR])?;
    let unmerged = stream(cluster)?;
    eprintln!(
        "without the anchor: {} bytes in {} segments, {:.0} bytes each",
        unmerged.bytes,
        unmerged.segments,
        unmerged.per_segment()
    );
    ensure!(
        unmerged.per_segment() < MERGED_BYTES,
        "without the anchor web-2's segments still average {:.0} bytes: the merge above was not the anchor's \
         ({unmerged:?})",
        unmerged.per_segment()
    );

    // A new agent makes it again; VXLAN past from_uplink is dropped by the anchor's program.
    cluster.start("node-2", &AgentOptions::default())?;
    ensure!(anchor_link(cluster, "node-2")?.is_some(), "the new agent of node-2 made no {ANCHOR}");
    let before = stats(cluster, "node-2")?;
    send_vxlan_over_loopback(cluster, &node2.netns, &node2.addr.addr().to_string())?;
    let mut dropped = 0;
    for _ in 0..20 {
        dropped = growth(&before, &stats(cluster, "node-2")?, "drop_vxlan_socket");
        if dropped > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(dropped > 0, "a VXLAN packet over loopback was not counted as drop_vxlan_socket");

    // Cleanup removes it.
    cluster.stop("node-2")?;
    let pin_path = cluster.lab.pin_path("node-2").to_string_lossy().into_owned();
    let bin = cluster.bin().to_string_lossy().into_owned();
    cluster.lab.exec(&node2.netns, &[&bin, "cleanup", "--pin-path", &pin_path])?;
    ensure!(anchor_link(cluster, "node-2")?.is_none(), "`dataplane cleanup` left {ANCHOR} in place");

    // The netlink fallback taking over removes it: its vxlan.calico needs the port.
    cluster.start("node-2", &AgentOptions::default())?;
    ensure!(anchor_link(cluster, "node-2")?.is_some(), "the fast path on node-2 made no {ANCHOR} after the cleanup");
    cluster.stop("node-2")?;
    cluster.start("node-2", &AgentOptions::mode(AgentMode::Netlink))?;
    ensure!(anchor_link(cluster, "node-2")?.is_none(), "the netlink fallback on node-2 left {ANCHOR} in place");
    let calico = cluster.lab.exec_stdout(&node2.netns, &["ip", "-d", "link", "show", "vxlan.calico"])?;
    ensure!(calico.contains("vxlan id 4096"), "no vxlan.calico after the netlink fallback took over:\n{calico}");

    // Another VXLAN device holding the port (not ours, so the agent leaves it): the fast path
    // still programs the node and carries traffic, and says once why it has no anchor...
    cluster.stop("node-2")?;
    cluster.lab.exec(&node2.netns, &[&bin, "cleanup", "--pin-path", &pin_path])?;
    let held = ["ip", "link", "add", "held", "type", "vxlan", "id", "42", "dstport", "4789"];
    cluster.lab.exec(&node2.netns, &held)?;
    cluster.lab.exec(&node2.netns, &["ip", "link", "set", "held", "up"])?;
    cluster.start("node-2", &AgentOptions::default())?;
    let log = cluster.log("node-2");
    // ... and that the device holding the port gives GRO in the anchor's stead (its socket merges
    // VXLAN to the port whatever the device), which is no loss: no warning.
    ensure!(
        log.contains("no VXLAN GRO anchor needed while another VXLAN device holds the port")
            && log.contains("holder=held")
            && !log.contains("cannot have the VXLAN GRO anchor"),
        "node-2's agent did not say which device holds the port:\n{log}"
    );
    let anchor = anchor_link(cluster, "node-2")?.context("no vxlan.dataplane left down")?;
    ensure!(!flags(&anchor).contains(&"UP".to_owned()), "{ANCHOR} is up although another device holds the port");
    let (web1, web2) = (cluster.lab.pod(WEB_1)?, cluster.lab.pod(WEB_2)?);
    ensure!(cluster.lab.ping_ok(web1, web2.addr, 5)?, "no ping web-1 -> web-2 while the anchor cannot be up");
    // `dataplane check` finds nothing to fix: the device holding the port gives the GRO.
    let check = check_text(cluster, "node-2")?;
    ensure!(
        !check.contains("the VXLAN GRO anchor is"),
        "`dataplane check` reported the anchor although `held` gives GRO on the port:\n{check}"
    );
    // Once the holder is gone and the anchor is still down (the agent retries only at its next
    // reconcile), the anchor that is down is named, with the fix.
    cluster.lab.exec(&node2.netns, &["ip", "link", "del", "held"])?;
    let check = check_output(cluster, "node-2")?;
    let text = String::from_utf8_lossy(&check.stdout);
    ensure!(
        !check.status.success()
            && text.contains("[tunnel] device vxlan.dataplane: the VXLAN GRO anchor is down")
            && text.contains("modprobe vxlan"),
        "`dataplane check` did not name the anchor that is down:\n{text}"
    );
    Ok(())
}

/// What web-2 received during one stream.
#[derive(Debug)]
struct Received {
    /// Bytes iperf3's receiver counted.
    bytes: u64,
    /// TCP segments web-2's stack received (TcpInSegs), each GRO-merged packet counting once.
    segments: u64,
}

impl Received {
    fn per_segment(&self) -> f64 {
        self.bytes as f64 / self.segments.max(1) as f64
    }
}

/// The helpers below read and drive the cluster as this test needs.
/// `ip -d -j link show vxlan.dataplane` in `node`'s namespace, or None without the device.
fn anchor_link(cluster: &Cluster, node: &str) -> anyhow::Result<Option<Value>> {
    let output = cluster.lab.exec_status(cluster.lab.node_netns(node)?, &["ip", "-d", "-j", "link", "show", ANCHOR])?;
    if !output.status.success() {
        return Ok(None);
    }
    let json: Value = serde_json::from_slice(&output.stdout).context("`ip -j link show` printed no JSON")?;
    Ok(Some(json[0].clone()))
}

/// `dataplane check` of `node`, pass or fail.
fn check_output(cluster: &Cluster, node: &str) -> anyhow::Result<std::process::Output> {
    let bin = cluster.bin().to_string_lossy();
    let datastore = format!("file:{}", cluster.datastore().display());
    let pin_path = cluster.lab.pin_path(node).to_string_lossy().into_owned();
    let argv = [&*bin, "check", "--datastore", &datastore, "--node", node, "--pin-path", &pin_path];
    cluster.lab.exec_status(cluster.lab.node_netns(node)?, &argv)
}

/// `dataplane check` of `node`, which must pass; its text.
fn check_text(cluster: &Cluster, node: &str) -> anyhow::Result<String> {
    let output = check_output(cluster, node)?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.success(),
        "`dataplane check` of {node} failed:\n{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(text)
}

/// The fabric's end of `node`'s uplink veth (the interface whose index node's eth0 names as
/// its link).
fn fabric_end(cluster: &Cluster, node: &str) -> anyhow::Result<String> {
    let uplink = cluster.lab.exec_stdout(cluster.lab.node_netns(node)?, &["ip", "-j", "link", "show", "eth0"])?;
    let uplink: Value = serde_json::from_str(&uplink).context("`ip -j link show eth0` printed no JSON")?;
    let peer = uplink[0]["link_index"].as_u64().with_context(|| format!("eth0 of {node} names no peer: {uplink}"))?;
    let fabric = cluster.lab.exec_stdout(cluster.lab.fabric_netns(), &["ip", "-j", "link", "show"])?;
    let fabric: Value = serde_json::from_str(&fabric).context("`ip -j link show` printed no JSON")?;
    fabric
        .as_array()
        .and_then(|links| links.iter().find(|l| l["ifindex"].as_u64() == Some(peer)))
        .and_then(|l| l["ifname"].as_str())
        .map(str::to_owned)
        .with_context(|| format!("no interface {peer} in the fabric namespace: {fabric}"))
}

/// The counters of `node`'s fast path (`dataplane stats -o json`), decisions and drops.
fn stats(cluster: &Cluster, node: &str) -> anyhow::Result<BTreeMap<String, u64>> {
    counters::read(cluster.bin(), &cluster.lab.pin_path(node))
}

/// An iperf3 stream web-1 -> web-2; what web-2 received.
fn stream(cluster: &Cluster) -> anyhow::Result<Received> {
    let web1 = cluster.lab.pod(WEB_1)?;
    let web2 = cluster.lab.pod(WEB_2)?;
    let mut server = cluster.lab.spawn(&web2.netns, &["iperf3", "-s", "-1", "--forceflush"], "iperf3-server")?;
    server.wait_for_log("Server listening", Duration::from_secs(10))?;
    let segments_before = in_segments(&cluster.lab, &web2.netns)?;
    let addr = web2.addr.to_string();
    let argv = ["iperf3", "-c", &addr, "-t", STREAM_SECONDS, "-J", "--connect-timeout", "3000"];
    let output = cluster.lab.exec(&web1.netns, &argv)?;
    let segments = in_segments(&cluster.lab, &web2.netns)? - segments_before;
    let report: Value = serde_json::from_slice(&output.stdout).context("iperf3 -J printed no JSON")?;
    let bytes = report["end"]["sum_received"]["bytes"]
        .as_u64()
        .with_context(|| format!("no end.sum_received.bytes in {report}"))?;
    ensure!(bytes > 0, "the stream moved nothing: {report}");
    Ok(Received { bytes, segments })
}

/// Sends one VXLAN datagram (VNI 4096, an inner IPv4 frame) from `netns` to `addr`:4789; to
/// the node's own address it goes over loopback, where no fast-path program runs.
fn send_vxlan_over_loopback(cluster: &Cluster, netns: &str, addr: &str) -> anyhow::Result<()> {
    let vxlan = r"\x08\x00\x00\x00\x00\x10\x00\x00";
    let ethernet = r"\x0a\x58\x0a\xf4\x02\x02\x0a\x58\x0a\xf4\x01\x02\x08\x00";
    let ipv4 = r"\x45\x00\x00\x14\x00\x00\x40\x00\x40\xfd\x00\x00\x0a\xf4\x01\x02\x0a\xf4\x02\x02";
    // Through a file: bash's printf writes at every NUL byte, and each write is a datagram.
    let script = format!(
        "f=$(mktemp) && printf '{vxlan}{ethernet}{ipv4}' >\"$f\" && cat \"$f\" >/dev/udp/{addr}/4789; s=$?; rm -f \"$f\"; exit $s"
    );
    cluster.lab.exec(netns, &["bash", "-c", &script])?;
    Ok(())
}

/// TcpInSegs of `netns` (`/proc/net/snmp`, what `nstat` reads).
fn in_segments(lab: &Lab, netns: &str) -> anyhow::Result<u64> {
    let snmp = lab.exec_stdout(netns, &["cat", "/proc/net/snmp"])?;
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next(), tcp.next());
    let (names, values) = names.zip(values).with_context(|| format!("no Tcp lines in /proc/net/snmp:\n{snmp}"))?;
    let column = names.split_whitespace().position(|n| n == "InSegs").context("no InSegs column")?;
    values
        .split_whitespace()
        .nth(column)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no InSegs value in {values:?}"))
}

/// The interface's flags as `ip -j` lists them.
fn flags(link: &Value) -> Vec<String> {
    link["flags"]
        .as_array()
        .map(|f| f.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}
