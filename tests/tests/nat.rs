//! natOutgoing with real traffic: SNAT to the node's address, connection tracking, and the
//! traffic that must never be translated.
//!
//! Each test builds its own lab from examples/nat.yaml (two nodes; pool nat-pool 10.244.0.0/16
//! with natOutgoing, pool no-nat-pool 10.245.0.0/16 without), runs the agents as separate
//! processes, and checks on the external host (192.0.2.10, outside every pool) what address the
//! pods' traffic arrives from: with tcpdump on its interface, or with a UDP socket living in its
//! namespace, whose `recv_from` is exactly what a server there would see. The lab is torn down
//! when the test ends, also on failure. Without root the tests print why they are skipped and pass.
//!
//! The first three scenarios (the external host sees only the node; a pod of a pool without
//! natOutgoing arrives as itself; pod-to-pod traffic is untranslated) run once more with both
//! agents in `--mode netlink`, where Calico's masquerade rule in nf_tables does the translation:
//! in one lab, to keep the suite short. The fast path's conntrack and counters do not exist there;
//! the captures and sockets on the external host judge alone, and turning natOutgoing off and on
//! again must remove and restore the agent's `table ip dataplane`.

use dataplane_tests::{agent_bin, workspace_root, NAT_3};
use std::{
    fs::{self, File},
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd as _,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use dataplane::{backend::nftables, pinned::PinnedMaps};
use dataplane_common::FRAGMENTS_MAX_ENTRIES;
use dataplane_lab::{counters, udp_socket_in, AgentMode, AgentOptions, ChildHandle, Cluster, Lab, LabPod};
use serde_json::Value;

/// The example cluster with two pools, one with natOutgoing and one without.
const EXAMPLE: &str = "examples/nat.yaml";
/// On node-1, in nat-pool (natOutgoing: true).
const NAT_1: &str = "default/nat-1";
/// On node-1, in no-nat-pool (natOutgoing: false).
const PLAIN_1: &str = "default/plain-1";
/// On node-2, in nat-pool.
const NAT_2: &str = "default/nat-2";
/// node-1's address: what the external host must see for nat-1's traffic.
const NODE_1_ADDR: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 11);
/// The external host's interface in its namespace (the lab names every host's uplink eth0).
const EXTERNAL_IFACE: &str = "eth0";
/// The UDP port the tests' own server listens on, on the external host.
const UDP_SERVER_PORT: u16 = 9000;
/// How long a UDP datagram may take to arrive before it counts as lost.
const UDP_WAIT: Duration = Duration::from_secs(2);

/// Which dataplane the agents run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dataplane {
    /// The BPF fast path (the agents' default), with its own SNAT and conntrack.
    FastPath,
    /// The netlink fallback (`--mode netlink`): the kernel's NAT with the agent's nf_tables rule.
    Netlink,
}

/// The lab of the cluster in `yaml` (Calico resources), which the agents read as their
/// datastore; no agent runs yet. `None` when not root.
fn up(test: &str, yaml: &str) -> anyhow::Result<Option<Cluster>> {
    if dataplane_tests::skip_unless_root(test) {
        return Ok(None);
    }
    // lab::Cluster copies a file into the lab's directory: the YAML goes through a staging file.
    let staging = std::env::temp_dir().join(format!("dpl-nat-{}.yaml", std::process::id()));
    fs::write(&staging, yaml).with_context(|| format!("writing {}", staging.display()))?;
    let cluster = Cluster::up(&staging, &agent_bin());
    let _ = fs::remove_file(&staging);
    cluster.map(Some)
}

/// The agents' options in `dataplane`, with `extra` arguments after the usual ones.
fn agent_options(dataplane: Dataplane, extra: &[&str]) -> AgentOptions {
    AgentOptions {
        mode: (dataplane == Dataplane::Netlink).then_some(AgentMode::Netlink),
        args: extra.iter().map(|a| (*a).to_owned()).collect(),
        ..AgentOptions::default()
    }
}

/// On the fast path, `dataplane conntrack` on node-1 lists a `protocol` flow of `pod`
/// translated to node-1. The netlink fallback's translations live in the kernel's own
/// conntrack: there the captures on the external host judge alone.
fn check_translated(cluster: &Cluster, dataplane: Dataplane, protocol: &str, pod: Ipv4Addr) -> anyhow::Result<()> {
    if dataplane == Dataplane::Netlink {
        return Ok(());
    }
    let flows = flows_of(&conntrack(cluster, "node-1")?, pod);
    ensure!(
        flows.iter().any(|(proto, _, nat_addr, _)| proto == protocol && *nat_addr == NODE_1_ADDR.to_string()),
        "no {protocol} flow of {pod} translated to {NODE_1_ADDR} in `dataplane conntrack`: {flows:?}"
    );
    Ok(())
}

/// Runs `dataplane <args> --pin-path <node's pins> -o json` and parses its output.
fn dataplane_json(cluster: &Cluster, node: &str, args: &[&str]) -> anyhow::Result<Value> {
    let bin = cluster.bin().to_string_lossy().into_owned();
    let pin_path = cluster.lab.pin_path(node).to_string_lossy().into_owned();
    let mut argv = vec![bin.as_str()];
    argv.extend(args);
    argv.extend(["--pin-path", &pin_path, "-o", "json"]);
    let output = dataplane_lab::cmd::run(&argv)?;
    serde_json::from_slice(&output.stdout)
        .with_context(|| format!("`{}` did not print JSON", dataplane_lab::cmd::display(&argv)))
}

/// `dataplane conntrack -o json` on `node`: one object per translated flow.
fn conntrack(cluster: &Cluster, node: &str) -> anyhow::Result<Vec<Value>> {
    let list = dataplane_json(cluster, node, &["conntrack"])?;
    list.as_array().cloned().context("`dataplane conntrack -o json` did not print a list")
}

/// One counter of `dataplane stats -o json` on `node` (a decision or a drop reason).
fn stat(cluster: &Cluster, node: &str, name: &str) -> anyhow::Result<u64> {
    counters::one(cluster.bin(), &cluster.lab.pin_path(node), name)
}

/// The example cluster's YAML.
fn example_yaml() -> anyhow::Result<String> {
    let path = workspace_root().join(EXAMPLE);
    fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// tcpdump keeping only the first `SNAPLEN` bytes of each packet: enough for the outer and the
/// inner (VXLAN) IPv4 and TCP headers, and small enough that seconds of iperf3 at full speed do
/// not fill the disk (the lab's own `capture` keeps whole packets).
struct HeaderCapture {
    pcap: PathBuf,
    process: ChildHandle,
}

/// Bytes kept per packet: Ethernet + IPv4 + UDP + VXLAN + inner Ethernet + IPv4 + TCP, with room.
const SNAPLEN: &str = "160";

impl HeaderCapture {
    /// Starts tcpdump on `iface` in `netns` with `filter`; returns once it listens. `name` must be
    /// unique in the test (it names the pcap in the lab's directory).
    fn start(lab: &Lab, netns: &str, iface: &str, filter: &str, name: &str) -> anyhow::Result<HeaderCapture> {
        let pcap = lab.dir().join(format!("{name}.pcap"));
        let pcap_arg = pcap.to_string_lossy().into_owned();
        // --immediate-mode and -U: every packet reaches the file before tcpdump is stopped;
        // -Z root: tcpdump keeps the right to write in the lab's directory.
        let argv = [
            "tcpdump",
            "-i",
            iface,
            "-nn",
            "-s",
            SNAPLEN,
            "--immediate-mode",
            "-U",
            "-Z",
            "root",
            "-w",
            &pcap_arg,
            filter,
        ];
        let mut process = lab.spawn(netns, &argv, name)?;
        process.wait_for_log("listening on", Duration::from_secs(10))?;
        Ok(HeaderCapture { pcap, process })
    }

    /// Stops tcpdump and returns the capture as `tcpdump -r -nn` prints it (a VXLAN packet's
    /// inner packet on the line after the outer one).
    fn stop(mut self) -> anyhow::Result<String> {
        self.process.terminate(Duration::from_secs(5))?;
        let pcap = self.pcap.to_string_lossy().into_owned();
        let output = dataplane_lab::cmd::run(&["tcpdump", "-r", &pcap, "-nn"])?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// Every `source > destination` address pair tcpdump printed (outer and inner headers alike;
/// ports dropped).
fn address_pairs(text: &str) -> Vec<(Ipv4Addr, Ipv4Addr)> {
    // "10.100.0.11.5201" (address and port) or "10.100.0.11" (ICMP): the first four parts.
    let addr = |token: &str| -> Option<Ipv4Addr> {
        let parts: Vec<&str> = token.trim_end_matches(':').split('.').take(4).collect();
        parts.join(".").parse().ok()
    };
    let mut pairs = Vec::new();
    for line in text.lines() {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        for window in tokens.windows(3) {
            if window[1] == ">" {
                if let (Some(src), Some(dst)) = (addr(window[0]), addr(window[2])) {
                    pairs.push((src, dst));
                }
            }
        }
    }
    pairs
}

/// The sources of the packets in `text` that went to `dst`, deduplicated.
fn sources_to(text: &str, dst: Ipv4Addr) -> Vec<Ipv4Addr> {
    let mut sources: Vec<Ipv4Addr> =
        address_pairs(text).into_iter().filter(|(_, d)| *d == dst).map(|(s, _)| s).collect();
    sources.sort();
    sources.dedup();
    sources
}

/// The external host's side of the UDP tests: a socket on port 9000 in its namespace.
struct UdpServer {
    socket: UdpSocket,
    addr: SocketAddrV4,
}

impl UdpServer {
    fn start(lab: &Lab) -> anyhow::Result<UdpServer> {
        let external = lab.external();
        let socket = udp_socket_in(&external.netns, UDP_SERVER_PORT, Some(UDP_WAIT))?;
        Ok(UdpServer { socket, addr: SocketAddrV4::new(external.addr, UDP_SERVER_PORT) })
    }

    /// Waits for one datagram and returns where it came from, as the external host sees it;
    /// `None` if nothing arrives within `UDP_WAIT`.
    fn receive(&self, expected: &[u8]) -> anyhow::Result<Option<SocketAddrV4>> {
        let mut buffer = [0u8; 256];
        loop {
            let (len, from) = match self.socket.recv_from(&mut buffer) {
                Ok(received) => received,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return Ok(None)
                }
                Err(e) => return Err(e).context("receiving on the external host"),
            };
            // A late datagram of an earlier exchange is not the one we wait for.
            if &buffer[..len] != expected {
                continue;
            }
            let std::net::SocketAddr::V4(from) = from else { bail!("an IPv6 sender: {from}") };
            return Ok(Some(from));
        }
    }
}

/// One UDP flow from a pod to the external server, from a fixed source port.
struct UdpFlow {
    /// Which pod and port, for messages.
    name: String,
    socket: UdpSocket,
}

impl UdpFlow {
    fn open(pod: &LabPod, port: u16) -> anyhow::Result<UdpFlow> {
        let socket = udp_socket_in(&pod.netns, port, Some(UDP_WAIT))?;
        Ok(UdpFlow { name: format!("{}:{port}", pod.key), socket })
    }

    /// Sends `message` to the server; returns the source the server saw (None: it never arrived).
    /// When it arrived and `answer` is set, the server echoes it and the reply must reach the pod.
    fn exchange(&self, server: &UdpServer, message: &str, answer: bool) -> anyhow::Result<Option<SocketAddrV4>> {
        self.socket.send_to(message.as_bytes(), server.addr).with_context(|| format!("sending from {}", self.name))?;
        let Some(seen_as) = server.receive(message.as_bytes())? else {
            return Ok(None);
        };
        if answer {
            server.socket.send_to(message.as_bytes(), seen_as).context("answering from the external host")?;
            let mut buffer = [0u8; 256];
            let (len, from) = self.socket.recv_from(&mut buffer).with_context(|| {
                format!("the answer to {message:?} (sent to {seen_as}) never reached {}", self.name)
            })?;
            ensure!(
                &buffer[..len] == message.as_bytes(),
                "{} got {:?} instead of its answer",
                self.name,
                &buffer[..len]
            );
            ensure!(from == server.addr.into(), "{} got its answer from {from}, not from {}", self.name, server.addr);
        }
        Ok(Some(seen_as))
    }
}

/// The conntrack entries of `pod`, as `(protocol, pod_port, nat_addr, nat_port)`.
fn flows_of(conntrack: &[Value], pod: Ipv4Addr) -> Vec<(String, u64, String, u64)> {
    let pod = pod.to_string();
    conntrack
        .iter()
        .filter(|flow| flow["pod"] == pod.as_str())
        .map(|flow| {
            (
                flow["protocol"].as_str().unwrap_or("?").to_owned(),
                flow["pod_port"].as_u64().unwrap_or(0),
                flow["nat_addr"].as_str().unwrap_or("?").to_owned(),
                flow["nat_port"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Runs iperf3 from `pod` to the server on the external host with `args`, returns the JSON
/// report.
fn iperf3(lab: &Lab, pod: &LabPod, args: &[&str]) -> anyhow::Result<Value> {
    let server = lab.external().addr.to_string();
    let mut argv = vec!["iperf3", "-c", &server, "-t", "2", "-J"];
    argv.extend(args);
    let output = lab.exec(&pod.netns, &argv)?;
    serde_json::from_slice(&output.stdout).with_context(|| format!("`{}` did not print JSON", argv.join(" ")))
}

/// Bytes at the receiving end of an iperf3 report.
fn received_bytes(report: &Value) -> anyhow::Result<u64> {
    report["end"]["sum_received"]["bytes"].as_u64().with_context(|| format!("no end.sum_received.bytes in {report}"))
}

#[test]
fn nat_outgoing_pod_reaches_the_external_host_as_its_node() -> anyhow::Result<()> {
    let test = "nat_outgoing_pod_reaches_the_external_host_as_its_node";
    let Some(mut cluster) = up(test, &example_yaml()?)? else {
        return Ok(());
    };
    // Leaving the cluster involves only node-1.
    cluster.start("node-1", &agent_options(Dataplane::FastPath, &[]))?;
    external_host_sees_only_the_node(&cluster, Dataplane::FastPath)
}

/// nat-1 (natOutgoing) pings, streams TCP both ways and UDP to the external host, and gets an
/// ICMP error back for a closed port; the external host sees only node-1's address. On the fast
/// path its conntrack lists each translated flow and its counters grew.
fn external_host_sees_only_the_node(cluster: &Cluster, dataplane: Dataplane) -> anyhow::Result<()> {
    let started = Instant::now();
    let lab = &cluster.lab;
    let nat1 = lab.pod(NAT_1)?;
    let external = lab.external().clone();

    // Everything IPv4 on the external host's wire, whichever direction.
    let capture = HeaderCapture::start(lab, &external.netns, EXTERNAL_IFACE, "ip", "capture-ext-nat")?;

    // ICMP echo.
    lab.ping(&nat1.netns, external.addr).with_context(|| cluster.logs())?;
    check_translated(cluster, dataplane, "icmp", nat1.addr)?;

    // TCP both ways of data, then UDP, against iperf3 on the external host.
    let mut server = lab.spawn(&external.netns, &["iperf3", "-s", "--forceflush"], "iperf3-server")?;
    server.wait_for_log("Server listening", Duration::from_secs(10))?;
    for (what, args) in [("tcp pod->external", &[][..]), ("tcp external->pod (-R)", &["-R"][..])] {
        let report = iperf3(lab, nat1, args).with_context(|| cluster.logs())?;
        let sent = report["end"]["sum_sent"]["bytes"].as_u64().context("no end.sum_sent.bytes")?;
        let received = received_bytes(&report)?;
        ensure!(sent > 0 && received > 0, "iperf3 {what} moved no bytes: sent {sent}, received {received}");
        eprintln!("iperf3 {what}: {received} bytes in 2 s ({:.2} Gbit/s)", received as f64 * 8.0 / 2e9);
    }
    // A TCP flow stays listed for 10 s after its FIN: look now.
    check_translated(cluster, dataplane, "tcp", nat1.addr)?;

    let report = iperf3(lab, nat1, &["-u", "-b", "50M"]).with_context(|| cluster.logs())?;
    let received = received_bytes(&report)?;
    let lost = report["end"]["sum_received"]["lost_percent"].as_f64().context("no end.sum_received.lost_percent")?;
    ensure!(received > 0 && lost < 5.0, "iperf3 udp: {received} bytes received, {lost}% lost");
    eprintln!("iperf3 udp pod->external at 50 Mbit/s: {received} bytes, {lost:.2}% lost");
    drop(server);
    check_translated(cluster, dataplane, "udp", nat1.addr)?;

    // An ICMP error about a translated flow finds its way back: a datagram to a port where
    // nothing listens makes the external host answer "port unreachable" to node-1, which must
    // reach the pod as ECONNREFUSED on its connected socket.
    let refused = udp_socket_in(&nat1.netns, 7001, Some(UDP_WAIT))?;
    refused.connect(SocketAddrV4::new(external.addr, UDP_SERVER_PORT + 1))?;
    let mut answer = None;
    for _ in 0..3 {
        refused.send(b"anyone there?")?;
        match refused.recv(&mut [0u8; 64]) {
            // Nothing came back within UDP_WAIT: try once more.
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            other => {
                answer = Some(other);
                break;
            }
        }
    }
    let refused_ok = matches!(&answer, Some(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused);
    ensure!(
        refused_ok,
        "a datagram from {NAT_1} to a closed port of the external host should end in ECONNREFUSED; got {answer:?}\n{}",
        cluster.logs()
    );

    // The external host saw only node-1's address, and nothing anywhere carried the pod's.
    let text = capture.stop()?;
    let sources = sources_to(&text, external.addr);
    ensure!(sources == [NODE_1_ADDR], "packets to {} came from {sources:?}, not only {NODE_1_ADDR}", external.addr);
    let pod_addr = nat1.addr.to_string();
    let leaks: Vec<&str> = text.lines().filter(|line| line.contains(&pod_addr)).take(5).collect();
    ensure!(leaks.is_empty(), "the external host's capture shows the pod's address {pod_addr}:\n{}", leaks.join("\n"));
    eprintln!("external capture: {} packets, all from {NODE_1_ADDR}", text.lines().count());

    if dataplane == Dataplane::Netlink {
        eprintln!("external host sees only the node ({:?}): {:?}", dataplane, started.elapsed());
        return Ok(());
    }
    let snat_new = stat(cluster, "node-1", "snat_new")?;
    let reverse_nat = stat(cluster, "node-1", "reverse_nat")?;
    ensure!(snat_new > 0 && reverse_nat > 0, "stats: snat_new {snat_new}, reverse_nat {reverse_nat}");
    eprintln!("stats: snat_new {snat_new}, reverse_nat {reverse_nat}; test took {:?}", started.elapsed());
    Ok(())
}

#[test]
fn pod_of_a_pool_without_nat_outgoing_is_not_translated() -> anyhow::Result<()> {
    let test = "pod_of_a_pool_without_nat_outgoing_is_not_translated";
    let Some(mut cluster) = up(test, &example_yaml()?)? else {
        return Ok(());
    };
    cluster.start("node-1", &agent_options(Dataplane::FastPath, &[]))?;
    pool_without_nat_outgoing_arrives_as_itself(&cluster, Dataplane::FastPath)?;
    // Nothing of a natOutgoing pool was sent in this lab.
    let snat_new = stat(&cluster, "node-1", "snat_new")?;
    ensure!(snat_new == 0, "stats: snat_new is {snat_new} though no pod of a natOutgoing pool sent anything");
    Ok(())
}

/// plain-1 (a pool without natOutgoing) pings the external host, whose echo requests arrive
/// with the pod's own address; the fast path tracks no flow of it.
fn pool_without_nat_outgoing_arrives_as_itself(cluster: &Cluster, dataplane: Dataplane) -> anyhow::Result<()> {
    let lab = &cluster.lab;
    let plain1 = lab.pod(PLAIN_1)?;
    let external = lab.external().clone();

    // The echo replies cannot come back (nothing routes 10.245.0.0/16 to node-1 outside the
    // cluster; the fabric answers them with "net unreachable"), so only the requests matter:
    // they must arrive with the pod's own address.
    let filter = "icmp[icmptype] == icmp-echo";
    let capture = HeaderCapture::start(lab, &external.netns, EXTERNAL_IFACE, filter, "capture-ext-plain")?;
    let target = external.addr.to_string();
    lab.exec_status(&plain1.netns, &["ping", "-c", "2", "-W", "1", &target])?;
    let text = capture.stop()?;
    let sources = sources_to(&text, external.addr);
    ensure!(
        sources == [plain1.addr],
        "echo requests from {PLAIN_1} reached {} from {sources:?}, not from {} only:\n{text}\n{}",
        external.addr,
        plain1.addr,
        cluster.logs()
    );

    eprintln!("{PLAIN_1}'s echo requests reached the external host from {}", plain1.addr);
    if dataplane == Dataplane::FastPath {
        let flows = flows_of(&conntrack(cluster, "node-1")?, plain1.addr);
        ensure!(flows.is_empty(), "`dataplane conntrack` tracks {PLAIN_1}, whose pool has no natOutgoing: {flows:?}");
    }
    Ok(())
}

#[test]
fn pod_to_pod_across_pools_and_nodes_is_not_translated() -> anyhow::Result<()> {
    let test = "pod_to_pod_across_pools_and_nodes_is_not_translated";
    let Some(mut cluster) = up(test, &example_yaml()?)? else {
        return Ok(());
    };
    cluster.start("node-1", &agent_options(Dataplane::FastPath, &[]))?;
    cluster.start("node-2", &agent_options(Dataplane::FastPath, &[]))?;
    pod_to_pod_is_untranslated(&cluster, Dataplane::FastPath)?;
    for node in ["node-1", "node-2"] {
        let snat_new = stat(&cluster, node, "snat_new")?;
        ensure!(snat_new == 0, "stats on {node}: snat_new is {snat_new} after pod-to-pod traffic only");
    }
    Ok(())
}

/// Pod to pod in one pool across nodes (ping, TCP), across pools and nodes, and across pools on
/// one node: the VXLAN packets on the fabric and the packets inside nat-1 carry the pods' own
/// addresses, and the fast path tracks none of it.
fn pod_to_pod_is_untranslated(cluster: &Cluster, dataplane: Dataplane) -> anyhow::Result<()> {
    let lab = &cluster.lab;
    let nat1 = lab.pod(NAT_1)?;
    let plain1 = lab.pod(PLAIN_1)?;
    let nat2 = lab.pod(NAT_2)?;

    // Between the nodes: VXLAN, whose inner header must carry the pods' own addresses.
    let bridge = lab.fabric_bridge("node-1")?;
    let fabric = HeaderCapture::start(lab, lab.fabric_netns(), bridge, "udp port 4789", "capture-fabric")?;
    // On one node, between the pools: seen inside nat-1.
    let local = HeaderCapture::start(lab, &nat1.netns, "eth0", "icmp", "capture-nat-1")?;

    // Same pool, across nodes: ping and a TCP stream.
    lab.ping(&nat1.netns, nat2.addr).with_context(|| cluster.logs())?;
    let mut server = lab.spawn(&nat2.netns, &["iperf3", "-s", "-1", "--forceflush"], "iperf3-server")?;
    server.wait_for_log("Server listening", Duration::from_secs(10))?;
    let nat2_addr = nat2.addr.to_string();
    let output =
        lab.exec(&nat1.netns, &["iperf3", "-c", &nat2_addr, "-t", "2", "-J"]).with_context(|| cluster.logs())?;
    let report: Value = serde_json::from_slice(&output.stdout).context("iperf3 -J did not print JSON")?;
    let received = received_bytes(&report)?;
    ensure!(received > 0, "iperf3 {NAT_1} -> {NAT_2} moved no bytes");
    drop(server);
    // Across pools and across nodes, both ways.
    lab.ping(&plain1.netns, nat2.addr).with_context(|| cluster.logs())?;
    // Across pools on one node.
    lab.ping(&plain1.netns, nat1.addr).with_context(|| cluster.logs())?;

    let fabric_text = fabric.stop()?;
    let local_text = local.stop()?;

    // Every packet to a pod came from a pod, never from a node (which SNAT would have made it).
    let pods = [nat1.addr, plain1.addr, nat2.addr];
    for (wire, text) in [("fabric bridge", &fabric_text), ("nat-1's eth0", &local_text)] {
        let pairs: Vec<_> = address_pairs(text).into_iter().filter(|(_, dst)| pods.contains(dst)).collect();
        ensure!(!pairs.is_empty(), "the capture on {wire} shows no packet to a pod:\n{text}");
        let translated: Vec<_> = pairs.iter().filter(|(src, _)| !pods.contains(src)).collect();
        ensure!(translated.is_empty(), "on {wire}, packets to pods came from non-pod sources: {translated:?}");
    }
    let fabric_pairs = address_pairs(&fabric_text);
    for (src, dst) in
        [(nat1.addr, nat2.addr), (nat2.addr, nat1.addr), (plain1.addr, nat2.addr), (nat2.addr, plain1.addr)]
    {
        ensure!(
            fabric_pairs.contains(&(src, dst)),
            "no VXLAN packet with inner {src} > {dst} on the fabric:\n{fabric_text}"
        );
    }
    let local_pairs = address_pairs(&local_text);
    for (src, dst) in [(plain1.addr, nat1.addr), (nat1.addr, plain1.addr)] {
        ensure!(local_pairs.contains(&(src, dst)), "no packet {src} > {dst} in nat-1:\n{local_text}");
    }

    eprintln!("pod-to-pod untranslated on the fabric (VXLAN inner headers) and inside nat-1");
    if dataplane == Dataplane::FastPath {
        for node in ["node-1", "node-2"] {
            let flows = conntrack(cluster, node)?;
            ensure!(flows.is_empty(), "`dataplane conntrack` on {node} tracks pod-to-pod traffic: {flows:?}");
        }
    }
    Ok(())
}

#[test]
fn nat_outgoing_in_netlink_mode() -> anyhow::Result<()> {
    let started = Instant::now();
    let yaml = example_yaml()?;
    let Some(mut cluster) = up("nat_outgoing_in_netlink_mode", &yaml)? else {
        return Ok(());
    };
    cluster.start("node-1", &agent_options(Dataplane::Netlink, &[]))?;
    cluster.start("node-2", &agent_options(Dataplane::Netlink, &[]))?;
    external_host_sees_only_the_node(&cluster, Dataplane::Netlink)?;
    pool_without_nat_outgoing_arrives_as_itself(&cluster, Dataplane::Netlink)?;
    pod_to_pod_is_untranslated(&cluster, Dataplane::Netlink)?;

    // natOutgoing off on the only pool that had it: the agent's table goes, and a new flow of
    // nat-1 arrives as the pod itself.
    let node_1 = cluster.lab.node_netns("node-1")?.to_owned();
    ensure!(nat_table_exists(&node_1)?, "node-1 has no table ip {} with natOutgoing on", nftables::TABLE);
    let nat1 = cluster.lab.pod(NAT_1)?.clone();
    let server = UdpServer::start(&cluster.lab)?;
    rewrite_datastore(&cluster, &set_nat_outgoing(&yaml, "nat-pool", false)?)?;
    ensure!(!nat_table_exists(&node_1)?, "table ip {} stayed with no natOutgoing pool", nftables::TABLE);
    let flow = UdpFlow::open(&nat1, 6002)?;
    let seen = flow.exchange(&server, "untranslated", false)?.with_context(|| cluster.logs())?;
    ensure!(seen == SocketAddrV4::new(nat1.addr, 6002), "with natOutgoing off, {} arrived as {seen}", flow.name);

    // On again: the table is back and new flows are translated.
    rewrite_datastore(&cluster, &yaml)?;
    ensure!(nat_table_exists(&node_1)?, "table ip {} did not come back", nftables::TABLE);
    let flow = UdpFlow::open(&nat1, 6003)?;
    let seen = flow.exchange(&server, "translated", true)?.with_context(|| cluster.logs())?;
    ensure!(seen.ip() == &NODE_1_ADDR, "with natOutgoing back on, {} arrived as {seen}", flow.name);
    eprintln!("nat_outgoing_in_netlink_mode: {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Whether the agent's natOutgoing table exists in `netns`, read over netlink from a thread in it.
fn nat_table_exists(netns: &str) -> anyhow::Result<bool> {
    let path = dataplane_lab::cmd::netns_path(netns);
    let reader = thread::spawn(move || -> anyhow::Result<bool> {
        let handle = File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns(2) on a valid descriptor; it moves only this short-lived thread.
        if unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns({path}): {}", std::io::Error::last_os_error());
        }
        Ok(nftables::observe()?.table)
    });
    reader.join().map_err(|_| anyhow::anyhow!("the thread entering {netns} panicked"))?
}

#[test]
fn turning_nat_outgoing_off_and_on_applies_to_new_flows_without_restart() -> anyhow::Result<()> {
    let Some(mut cluster) =
        up("turning_nat_outgoing_off_and_on_applies_to_new_flows_without_restart", &example_yaml()?)?
    else {
        return Ok(());
    };
    cluster.start("node-1", &agent_options(Dataplane::FastPath, &[]))?;
    let nat1 = cluster.lab.pod(NAT_1)?.clone();
    let server = UdpServer::start(&cluster.lab)?;

    // natOutgoing on: the external host sees node-1, with the pod's own port (free), and answers.
    let first = UdpFlow::open(&nat1, 6001)?;
    let seen = first.exchange(&server, "first", true)?.with_context(|| cluster.logs())?;
    ensure!(seen == SocketAddrV4::new(NODE_1_ADDR, 6001), "with natOutgoing on, {} arrived as {seen}", first.name);

    // Off: the agent polls its file (about every second) and reprograms.
    let yaml = example_yaml()?;
    let off = set_nat_outgoing(&yaml, "nat-pool", false)?;
    rewrite_datastore(&cluster, &off)?;
    let second = UdpFlow::open(&nat1, 6002)?;
    let seen = second.exchange(&server, "second", false)?.with_context(|| cluster.logs())?;
    ensure!(
        seen == SocketAddrV4::new(nat1.addr, 6002),
        "after natOutgoing was turned off, the new flow {} arrived as {seen}, not untranslated",
        second.name
    );
    // A flow keeps its translation for its whole life: the one opened before the change is still
    // seen as the node, and its answer still comes back.
    let old = first.exchange(&server, "first again", true)?.with_context(|| cluster.logs())?;
    ensure!(
        old == SocketAddrV4::new(NODE_1_ADDR, 6001),
        "after natOutgoing was turned off, the flow opened before arrived as {old}, not still translated"
    );

    // On again: new flows are translated again.
    rewrite_datastore(&cluster, &yaml)?;
    let third = UdpFlow::open(&nat1, 6003)?;
    let seen = third.exchange(&server, "third", true)?.with_context(|| cluster.logs())?;
    ensure!(seen == SocketAddrV4::new(NODE_1_ADDR, 6003), "with natOutgoing back on, {} arrived as {seen}", third.name);
    Ok(())
}

/// `yaml` with `natOutgoing` of pool `pool` set to `on`.
fn set_nat_outgoing(yaml: &str, pool: &str, on: bool) -> anyhow::Result<String> {
    let mut docs: Vec<String> = yaml.split("\n---\n").map(str::to_owned).collect();
    let doc = docs
        .iter_mut()
        .find(|doc| doc.contains("kind: IPPool") && doc.contains(&format!("  name: {pool}\n")))
        .with_context(|| format!("no IPPool {pool} in the example"))?;
    let (from, to) =
        if on { ("natOutgoing: false", "natOutgoing: true") } else { ("natOutgoing: true", "natOutgoing: false") };
    ensure!(doc.contains(from), "IPPool {pool} has no {from:?}:\n{doc}");
    *doc = doc.replace(from, to);
    Ok(docs.join("\n---\n"))
}

/// Writes `yaml` over the agents' datastore and waits until every agent has programmed its node
/// once more (a new ready line in its log).
fn rewrite_datastore(cluster: &Cluster, yaml: &str) -> anyhow::Result<()> {
    let before: Vec<usize> = cluster.agents().map(|a| a.log().matches(a.ready_line()).count()).collect();
    let started = Instant::now();
    fs::write(cluster.datastore(), yaml).with_context(|| format!("rewriting {}", cluster.datastore().display()))?;
    let deadline = started + Duration::from_secs(10);
    for (agent, before) in cluster.agents().zip(before) {
        while agent.log().matches(agent.ready_line()).count() <= before {
            ensure!(
                Instant::now() < deadline,
                "the agent of {} did not reprogram within 10 s of the change:\n{}",
                agent.node(),
                agent.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
    eprintln!("datastore rewritten; reprogrammed after {:?}", started.elapsed());
    Ok(())
}

#[test]
fn colliding_flows_get_ports_from_a_small_range_until_it_is_exhausted() -> anyhow::Result<()> {
    // The example plus nat-3, a second pod of nat-pool on node-1: one pod cannot collide with
    // itself (its flows differ by their own ports), two pods using the same source port can.
    let yaml = format!("{}---\n{NAT_3}", example_yaml()?);
    let Some(mut cluster) = up("colliding_flows_get_ports_from_a_small_range_until_it_is_exhausted", &yaml)? else {
        return Ok(());
    };
    cluster.start("node-1", &agent_options(Dataplane::FastPath, &["--nat-port-range", "40000-40001"]))?;
    let nat1 = cluster.lab.pod(NAT_1)?.clone();
    let nat3 = cluster.lab.pod("default/nat-3")?.clone();
    let server = UdpServer::start(&cluster.lab)?;
    let range = 40000..=40001;

    // Each pod opens flows from ports 5001 and 5002 to the same server port. nat-1's come first
    // and keep their own ports; nat-3's then collide and take the range's two ports.
    let mut flows = Vec::new();
    for port in [5001, 5002] {
        for pod in [&nat1, &nat3] {
            let flow = UdpFlow::open(pod, port)?;
            let seen = flow
                .exchange(&server, &format!("{} hello", flow.name), true)?
                .with_context(|| format!("{} never reached the external host\n{}", flow.name, cluster.logs()))?;
            ensure!(*seen.ip() == NODE_1_ADDR, "{} arrived as {seen}, not from {NODE_1_ADDR}", flow.name);
            flows.push((flow, seen.port()));
        }
    }
    let ports: Vec<u16> = flows.iter().map(|(_, port)| *port).collect();
    eprintln!("translated ports (nat-1:5001, nat-3:5001, nat-1:5002, nat-3:5002): {ports:?}");
    ensure!(ports[0] == 5001 && ports[2] == 5002, "nat-1's flows did not keep their free ports: {ports:?}");
    ensure!(
        range.contains(&ports[1]) && range.contains(&ports[3]) && ports[1] != ports[3],
        "nat-3's colliding flows did not get the two ports of 40000-40001: {ports:?}"
    );

    // A third collision finds the range full: dropped and counted.
    let exhausted_before = stat(&cluster, "node-1", "drop_nat_ports_exhausted")?;
    let nat1_third = UdpFlow::open(&nat1, 5003)?;
    nat1_third.exchange(&server, "nat-1 third", true)?.context("nat-1:5003 (a free port) never arrived")?;
    let beyond = UdpFlow::open(&nat3, 5003)?;
    let seen = beyond.exchange(&server, "beyond the range", false)?;
    ensure!(seen.is_none(), "{} arrived as {seen:?} though the port range was exhausted", beyond.name);
    let exhausted = stat(&cluster, "node-1", "drop_nat_ports_exhausted")?;
    ensure!(exhausted > exhausted_before, "drop_nat_ports_exhausted did not count the flow beyond the range");

    // The earlier flows keep their translations and keep passing traffic both ways.
    for (flow, port) in &flows {
        let seen = flow.exchange(&server, &format!("{} again", flow.name), true)?;
        ensure!(
            seen == Some(SocketAddrV4::new(NODE_1_ADDR, *port)),
            "{} now arrives as {seen:?}, not on port {port}",
            flow.name
        );
    }

    // conntrack lists the same translations.
    let conntrack = conntrack(&cluster, "node-1")?;
    let nat1_flows = flows_of(&conntrack, nat1.addr);
    let nat3_flows = flows_of(&conntrack, nat3.addr);
    for port in [5001, 5002, 5003] {
        ensure!(
            nat1_flows.contains(&("udp".to_owned(), port, NODE_1_ADDR.to_string(), port)),
            "no udp flow {}:{port} -> {NODE_1_ADDR}:{port} in conntrack: {nat1_flows:?}",
            nat1.addr
        );
    }
    for (index, port) in [(1, 5001), (3, 5002)] {
        let nat_port = u64::from(ports[index]);
        ensure!(
            nat3_flows.contains(&("udp".to_owned(), port, NODE_1_ADDR.to_string(), nat_port)),
            "no udp flow {}:{port} -> {NODE_1_ADDR}:{nat_port} in conntrack: {nat3_flows:?}",
            nat3.addr
        );
    }
    ensure!(
        !nat3_flows.iter().any(|(_, pod_port, _, _)| *pod_port == 5003),
        "the dropped flow {}:5003 is in conntrack: {nat3_flows:?}",
        nat3.addr
    );
    Ok(())
}

#[test]
fn an_idle_udp_flow_disappears_after_its_timeout() -> anyhow::Result<()> {
    let Some(mut cluster) = up("an_idle_udp_flow_disappears_after_its_timeout", &example_yaml()?)? else {
        return Ok(());
    };
    // A short UDP timeout, so the test does not wait the default minute.
    cluster.start("node-1", &agent_options(Dataplane::FastPath, &["--conntrack-timeouts", "udp=2"]))?;
    let nat1 = cluster.lab.pod(NAT_1)?.clone();
    let server = UdpServer::start(&cluster.lab)?;
    let flow = UdpFlow::open(&nat1, 7001)?;
    flow.exchange(&server, "before going idle", true)?.with_context(|| cluster.logs())?;
    let udp_flows = |cluster: &Cluster| -> anyhow::Result<usize> {
        Ok(flows_of(&conntrack(cluster, "node-1")?, nat1.addr).iter().filter(|f| f.0 == "udp" && f.1 == 7001).count())
    };
    ensure!(udp_flows(&cluster)? == 1, "the flow is not listed while live\n{}", cluster.logs());
    // Idle: the agent sweeps expired flows (every second with a 2 s timeout).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while udp_flows(&cluster)? > 0 {
        ensure!(
            std::time::Instant::now() < deadline,
            "the idle UDP flow was still listed 10 s after its 2 s timeout\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

/// Sizes of the big datagrams: each crosses the 1,500-byte fabric in 3 and 11 fragments.
const BIG_DATAGRAMS: [usize; 2] = [4_000, 16_000];
/// Datagrams of each size, each way.
const BIG_ROUNDS: u8 = 5;

/// A datagram of `size` bytes that differs from round to round, so a stale one cannot pass.
fn big_datagram(size: usize, round: u8) -> Vec<u8> {
    (0..size).map(|i| (i as u8).wrapping_mul(7).wrapping_add(round)).collect()
}

/// Waits for one datagram on `socket`; says who sent what.
fn receive_big(socket: &UdpSocket, whom: &str) -> anyhow::Result<(Vec<u8>, SocketAddrV4)> {
    let mut buffer = vec![0u8; 65_536];
    let (len, from) = socket.recv_from(&mut buffer).with_context(|| format!("{whom} received nothing"))?;
    let std::net::SocketAddr::V4(from) = from else { bail!("an IPv6 sender: {from}") };
    buffer.truncate(len);
    Ok((buffer, from))
}

#[test]
fn datagrams_bigger_than_the_mtu_cross_nat_outgoing_whole_both_ways() -> anyhow::Result<()> {
    let test = "datagrams_bigger_than_the_mtu_cross_nat_outgoing_whole_both_ways";
    let Some(mut cluster) = up(test, &example_yaml()?)? else {
        return Ok(());
    };
    cluster.start("node-1", &agent_options(Dataplane::FastPath, &[]))?;
    let lab = &cluster.lab;
    let nat1 = lab.pod(NAT_1)?;
    let server = UdpServer::start(lab)?;
    let pod = udp_socket_in(&nat1.netns, 7100, Some(UDP_WAIT))?;

    // 1. The pod sends, the external host echoes each datagram to where it came from.
    for size in BIG_DATAGRAMS {
        for round in 0..BIG_ROUNDS {
            let sent = big_datagram(size, round);
            pod.send_to(&sent, server.addr).context("sending from the pod")?;
            let (got, from) = receive_big(&server.socket, "the external host")
                .with_context(|| format!("a {size}-byte datagram from {NAT_1}:\n{}", cluster.logs()))?;
            ensure!(got == sent, "the external host got {} bytes, not the {size} sent", got.len());
            ensure!(*from.ip() == NODE_1_ADDR, "a {size}-byte datagram arrived from {from}, not from node-1");
            server.socket.send_to(&got, from).context("echoing from the external host")?;
            let (back, from) = receive_big(&pod, NAT_1).with_context(|| format!("the {size}-byte echo"))?;
            ensure!(back == sent, "{NAT_1} got {} bytes back, not its {size}", back.len());
            ensure!(from == server.addr, "{NAT_1} got its echo from {from}, not from {}", server.addr);
        }
    }
    eprintln!("{NAT_1} -> external: {} datagrams of each size echoed whole", BIG_ROUNDS);

    // 2. The external host sends to the pod's translated flow, the pod echoes.
    let (_, translated) = {
        let probe = big_datagram(16, 0);
        pod.send_to(&probe, server.addr)?;
        receive_big(&server.socket, "the external host")?
    };
    for size in BIG_DATAGRAMS {
        for round in 0..BIG_ROUNDS {
            let sent = big_datagram(size, round.wrapping_add(100));
            server.socket.send_to(&sent, translated).context("sending from the external host")?;
            let (got, from) = receive_big(&pod, NAT_1)
                .with_context(|| format!("a {size}-byte datagram to {translated}:\n{}", cluster.logs()))?;
            ensure!(got == sent, "{NAT_1} got {} bytes, not the {size} sent", got.len());
            ensure!(from == server.addr, "{NAT_1} got it from {from}");
            pod.send_to(&got, from).context("echoing from the pod")?;
            let (back, from) = receive_big(&server.socket, "the external host")?;
            ensure!(back == sent, "the external host got {} bytes back, not its {size}", back.len());
            ensure!(from == translated, "the echo came from {from}, not from the flow's {translated}");
        }
    }
    eprintln!("external -> {NAT_1}'s translated flow {translated}: {BIG_ROUNDS} datagrams of each size echoed whole");

    // Every fragment was translated by the fast path, none dropped.
    let (snat, reverse, dropped) = (
        stat(&cluster, "node-1", "snat_fragment")?,
        stat(&cluster, "node-1", "reverse_nat_fragment")?,
        stat(&cluster, "node-1", "drop_nat_fragment")?,
    );
    // Each way: 5 x (2 + 10) later fragments at least (the pod's MTU may cut them smaller).
    let later = u64::from(BIG_ROUNDS) * 12 * 2;
    ensure!(
        snat >= later && reverse >= later,
        "snat_fragment {snat}, reverse_nat_fragment {reverse}: fewer than {later}"
    );
    ensure!(dropped == 0, "drop_nat_fragment {dropped}");
    eprintln!("snat_fragment {snat}, reverse_nat_fragment {reverse}, drop_nat_fragment 0");

    // 3. A flood of first fragments that never complete (three times the table's room): the
    // fragments table stays within its size, and big datagrams still cross whole both ways.
    let flood = 3 * FRAGMENTS_MAX_ENTRIES as usize;
    let sent = send_first_fragments(nat1, FLOOD_TARGET, flood)?;
    ensure!(sent == flood, "the pod sent {sent} of {flood} first fragments");
    let pins = PinnedMaps::at(&cluster.lab.pin_path("node-1"));
    let held = pins.fragments()?.keys().count();
    ensure!(
        held <= FRAGMENTS_MAX_ENTRIES as usize && held > FRAGMENTS_MAX_ENTRIES as usize / 2,
        "after {flood} incomplete datagrams the fragments table holds {held} (room {FRAGMENTS_MAX_ENTRIES})"
    );
    eprintln!("{flood} incomplete datagrams: the fragments table holds {held} of {FRAGMENTS_MAX_ENTRIES}");
    for size in BIG_DATAGRAMS {
        let sent = big_datagram(size, 200);
        pod.send_to(&sent, server.addr).context("sending from the pod after the flood")?;
        let (got, from) = receive_big(&server.socket, "the external host")
            .with_context(|| format!("a {size}-byte datagram after the flood:\n{}", cluster.logs()))?;
        ensure!(got == sent && *from.ip() == NODE_1_ADDR, "after the flood: {} bytes from {from}", got.len());
        server.socket.send_to(&got, from)?;
        let (back, _) = receive_big(&pod, NAT_1).with_context(|| format!("the {size}-byte echo after the flood"))?;
        ensure!(back == sent, "{NAT_1} got {} bytes back after the flood, not its {size}", back.len());
    }
    ensure!(stat(&cluster, "node-1", "drop_nat_fragment")? == 0, "the flood made later fragments drop");
    eprintln!("after the flood: a datagram of each size echoed whole");
    Ok(())
}

/// An address of the external network that nobody holds: the flood goes there, so that no host's
/// reassembly queue fills up with it (only node-1's fragments table is under test).
const FLOOD_TARGET: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 99);

/// Sends `count` first fragments (MF set, offset 0, each with its own identification) of UDP
/// datagrams from `pod` to `dst` through a raw socket: datagrams whose other fragments never come.
fn send_first_fragments(pod: &LabPod, dst: Ipv4Addr, count: usize) -> anyhow::Result<usize> {
    use dataplane_tests::packet::{fixture, set_ipv4_checksum, Packet};
    let frame = Packet::eth(fixture::POD_A_MAC, fixture::UPLINK_MAC)
        .ipv4(pod.addr.octets(), dst.octets(), libc::IPPROTO_UDP as u8)
        .udp(7200, UDP_SERVER_PORT)
        .payload(&[0x5a; 64])
        .finish();
    let template = frame[dataplane_common::net::ETH_HLEN..].to_vec();
    let packets = (0..count)
        .map(|id| {
            let mut packet = template.clone();
            // Identification (never 0, which the kernel would replace), then MF with offset 0.
            packet[4..6].copy_from_slice(&((id % 0xffff) as u16 + 1).to_be_bytes());
            packet[6..8].copy_from_slice(&dataplane_common::net::IPV4_MF.to_be_bytes());
            set_ipv4_checksum(&mut packet, 0);
            packet
        })
        .collect();
    dataplane_lab::send_raw_ipv4(&pod.netns, dst, packets)
}
