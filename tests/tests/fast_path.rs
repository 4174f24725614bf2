//! The whole fast path with real traffic, once per pool mode: VXLAN Always, IPIP Always, Never
//! and VXLAN CrossSubnet.
//!
//! Each test builds its own lab from an example cluster, runs one agent per node as a separate
//! process, and checks every direction a cluster carries with ping, a TCP stream and a UDP stream
//! (iperf3): pod to pod on one node, pod to pod across nodes both ways, host to local pod and
//! back, host to remote pod and back, pod to another node's address. It checks the wire with a
//! capture on the fabric (VXLAN with VNI 4096, IP protocol 4, or plain pod addresses), that the
//! sending node's counters match the mode, and that traffic to an address of a local block that
//! no workload holds is dropped and counted. The lab is torn down when the test ends, also on
//! failure. Without root the tests print why they are skipped and pass.
//!
//! The tests share one table-driven body, [`run_mode`]; a [`Mode`] says which example to load,
//! which dataplane the agents run and what each crossing between nodes must look like.
//!
//! The VXLAN and Never scenarios run a second time with the agents in `--mode netlink` (Calico's
//! kernel dataplane, which the agent falls back to): the same traffic in every direction and the
//! same captures on the fabric. The fast path's counters do not exist there, so what the kernel
//! path shows is checked instead: `vxlan.calico` with VNI 4096 and its TX counter for a VXLAN
//! crossing, the route via the peer on the uplink and no `vxlan.calico` for a plain one.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use dataplane_lab::{counters, AgentMode, AgentOptions, ChildHandle, Cluster, Lab};
use serde_json::Value;

/// How long one iperf3 client may run, start to end, before it is considered stuck.
const IPERF_TIMEOUT_S: &str = "20";
/// Seconds each iperf3 stream runs.
const IPERF_SECONDS: &str = "1";
/// The rate of the UDP stream.
const UDP_RATE: &str = "20M";
/// Most UDP loss tolerated, in percent. One-second streams on two shared cores lose a few
/// packets to receive-buffer bursts whatever the path; a broken path loses them all.
const UDP_MAX_LOSS: f64 = 10.0;

/// The netlink fallback's VXLAN device.
const VXLAN_DEVICE: &str = dataplane::backend::netlink::VXLAN_DEVICE;
/// In netlink mode, the name under which [`Cluster::counters`] reports `vxlan.calico`'s TX packets.
const VXLAN_TX: &str = "vxlan_tx_packets";

/// What a crossing between two nodes looks like on the fabric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    /// VXLAN to UDP 4789 with VNI 4096; the sender counts `encap_vxlan`.
    Vxlan,
    /// IP-in-IP (IP protocol 4); the sender counts `encap_ipip`.
    Ipip,
    /// Pod addresses as they are; the sender counts `routed_plain`.
    Plain,
}

impl Wire {
    /// The sending node's counter for this kind of crossing.
    fn counter(self) -> &'static str {
        match self {
            Wire::Vxlan => "encap_vxlan",
            Wire::Ipip => "encap_ipip",
            Wire::Plain => "routed_plain",
        }
    }

    /// The counters of the other kinds, which a crossing of this kind must leave alone.
    fn other_counters(self) -> Vec<&'static str> {
        [Wire::Vxlan, Wire::Ipip, Wire::Plain].into_iter().filter(|w| *w != self).map(Wire::counter).collect()
    }
}

/// Traffic between pods on two different nodes.
struct Crossing {
    /// A pod (`namespace/name`) on the sending node.
    from: &'static str,
    /// A pod on another node.
    to: &'static str,
    /// What the packets look like between the nodes.
    wire: Wire,
}

/// Which dataplane the agents run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dataplane {
    /// The BPF fast path (the agents' default).
    FastPath,
    /// The netlink fallback (`--mode netlink`).
    Netlink,
}

/// One pool mode under test.
struct Mode {
    /// The test's name, for messages.
    name: &'static str,
    /// The dataplane the agents run.
    dataplane: Dataplane,
    /// The example cluster, relative to the workspace root.
    example: &'static str,
    /// Two pods on one node.
    same_node: (&'static str, &'static str),
    /// Pods on different nodes, and what their traffic must look like.
    crossings: &'static [Crossing],
    /// An address of the first same-node pod's block that belongs to no workload.
    unused: Ipv4Addr,
}

#[test]
fn vxlan_always() -> anyhow::Result<()> {
    run_mode(&Mode {
        name: "vxlan_always",
        dataplane: Dataplane::FastPath,
        example: "examples/two-nodes.yaml",
        same_node: ("default/web-1", "default/cache-1"),
        crossings: &[Crossing { from: "default/web-1", to: "default/web-2", wire: Wire::Vxlan }],
        unused: Ipv4Addr::new(10, 244, 1, 50),
    })
}

#[test]
fn vxlan_always_netlink() -> anyhow::Result<()> {
    run_mode(&Mode {
        name: "vxlan_always_netlink",
        dataplane: Dataplane::Netlink,
        example: "examples/two-nodes.yaml",
        same_node: ("default/web-1", "default/cache-1"),
        crossings: &[Crossing { from: "default/web-1", to: "default/web-2", wire: Wire::Vxlan }],
        unused: Ipv4Addr::new(10, 244, 1, 50),
    })
}

#[test]
fn ipip_always() -> anyhow::Result<()> {
    run_mode(&Mode {
        name: "ipip_always",
        dataplane: Dataplane::FastPath,
        example: "examples/ipip.yaml",
        same_node: ("default/web-1", "default/cache-1"),
        crossings: &[Crossing { from: "default/web-1", to: "default/web-2", wire: Wire::Ipip }],
        unused: Ipv4Addr::new(10, 244, 1, 50),
    })
}

#[test]
fn never() -> anyhow::Result<()> {
    run_mode(&Mode {
        name: "never",
        dataplane: Dataplane::FastPath,
        example: "examples/never.yaml",
        same_node: ("default/web-1", "default/cache-1"),
        crossings: &[Crossing { from: "default/web-1", to: "default/web-2", wire: Wire::Plain }],
        unused: Ipv4Addr::new(10, 244, 1, 50),
    })
}

#[test]
fn never_netlink() -> anyhow::Result<()> {
    run_mode(&Mode {
        name: "never_netlink",
        dataplane: Dataplane::Netlink,
        example: "examples/never.yaml",
        same_node: ("default/web-1", "default/cache-1"),
        crossings: &[Crossing { from: "default/web-1", to: "default/web-2", wire: Wire::Plain }],
        unused: Ipv4Addr::new(10, 244, 1, 50),
    })
}

#[test]
fn vxlan_cross_subnet() -> anyhow::Result<()> {
    run_mode(&Mode {
        name: "vxlan_cross_subnet",
        dataplane: Dataplane::FastPath,
        example: "examples/cross-subnet.yaml",
        same_node: ("default/web-1", "default/cache-1"),
        crossings: &[
            // node-1 and node-2 share 10.100.0.0/24: routed plainly.
            Crossing { from: "default/web-1", to: "default/web-2", wire: Wire::Plain },
            // node-3 is on 10.100.1.0/24, behind the fabric's router: VXLAN.
            Crossing { from: "default/web-1", to: "default/web-3", wire: Wire::Vxlan },
        ],
        unused: Ipv4Addr::new(10, 244, 1, 50),
    })
}

/// Everything one mode must carry, in one lab.
fn run_mode(mode: &Mode) -> anyhow::Result<()> {
    let started = Instant::now();
    let Some(mut cluster) = Cluster::up_or_skip(mode.name, mode.example)? else {
        return Ok(());
    };
    let options = match mode.dataplane {
        Dataplane::FastPath => AgentOptions::default(),
        Dataplane::Netlink => AgentOptions::mode(AgentMode::Netlink),
    };
    cluster.start_all(&options)?;
    let result = check_mode(&cluster, mode);
    eprintln!("{}: {:.1} s", mode.name, started.elapsed().as_secs_f64());
    result.with_context(|| cluster.logs())
}

fn check_mode(cluster: &Cluster, mode: &Mode) -> anyhow::Result<()> {
    let lab = &cluster.lab;
    // An iperf3 server in every pod and every node: each check below is a client of one of them.
    let servers = Servers::start(lab)?;
    // Every check runs even when an earlier one fails, so that one run shows every broken
    // direction; the test fails at the end with all of them.
    let mut failures = Vec::new();
    let mut note = |result: anyhow::Result<()>| {
        if let Err(e) = result {
            eprintln!("FAILED: {e:#}");
            failures.push(format!("{e:#}"));
        }
    };

    // Pod to pod on one node, both ways.
    let (a, b) = (Endpoint::pod(lab, mode.same_node.0)?, Endpoint::pod(lab, mode.same_node.1)?);
    ensure!(a.node == b.node, "{} and {} must run on the same node", a.label, b.label);
    note(reach(cluster, &servers, &a, &b));
    note(reach(cluster, &servers, &b, &a));

    // Host to local pod and local pod to host.
    let host = Endpoint::node(lab, &a.node)?;
    note(reach(cluster, &servers, &host, &a));
    note(reach(cluster, &servers, &a, &host));

    for crossing in mode.crossings {
        let from = Endpoint::pod(lab, crossing.from)?;
        let to = Endpoint::pod(lab, crossing.to)?;
        ensure!(from.node != to.node, "{} and {} must run on different nodes", from.label, to.label);
        let from_host = Endpoint::node(lab, &from.node)?;
        let to_host = Endpoint::node(lab, &to.node)?;

        // The wire and the counters first, while only this crossing's ping runs.
        note(check_wire(cluster, mode.dataplane, &from, &to, crossing.wire));

        // Pod to pod across nodes, both ways.
        note(reach(cluster, &servers, &from, &to));
        note(reach(cluster, &servers, &to, &from));
        // Host to remote pod, and remote pod to host.
        note(reach(cluster, &servers, &from_host, &to));
        note(reach(cluster, &servers, &to, &from_host));
        // Pod to another node's address.
        note(reach(cluster, &servers, &from, &to_host));
    }

    note(check_blackhole(cluster, mode, &a));
    if !failures.is_empty() {
        bail!("{} of the checks failed:\n\n{}", failures.len(), failures.join("\n\n"));
    }
    Ok(())
}

/// Ping, a TCP stream and a UDP stream from `from` to `to`.
fn reach(cluster: &Cluster, servers: &Servers, from: &Endpoint, to: &Endpoint) -> anyhow::Result<()> {
    let what = format!("{} -> {}", from.label, to.label);
    cluster.lab.ping(&from.netns, to.addr).with_context(|| format!("ping {what}"))?;
    servers.ready(&to.netns)?;
    let tcp = iperf(&cluster.lab, &from.netns, to.addr, false).with_context(|| format!("TCP {what}"))?;
    ensure!(tcp.sent > 0 && tcp.received > 0, "TCP {what} moved no bytes: {tcp:?}");
    let udp = iperf(&cluster.lab, &from.netns, to.addr, true).with_context(|| format!("UDP {what}"))?;
    ensure!(udp.sent > 0 && udp.received > 0, "UDP {what} moved no bytes: {udp:?}");
    ensure!(
        udp.lost_percent < UDP_MAX_LOSS,
        "UDP {what} lost {:.2}% (at most {UDP_MAX_LOSS}%): {udp:?}",
        udp.lost_percent
    );
    eprintln!(
        "{what}: ping ok, TCP {:.2} Gbit/s, UDP {:.0} Mbit/s with {:.2}% loss",
        tcp.bits_per_second / 1e9,
        udp.bits_per_second / 1e6,
        udp.lost_percent
    );
    Ok(())
}

/// Captures on the sending node's fabric bridge while `from` pings `to` and checks what the
/// packets look like there, and that the sending node counted the right decision (the fast
/// path's counters, or in netlink mode the kernel's device and route).
fn check_wire(
    cluster: &Cluster,
    dataplane: Dataplane,
    from: &Endpoint,
    to: &Endpoint,
    wire: Wire,
) -> anyhow::Result<()> {
    let lab = &cluster.lab;
    let from_addr = lab.node(&from.node)?.addr.addr();
    let to_addr = lab.node(&to.node)?.addr.addr();
    let bridge = lab.fabric_bridge(&from.node)?;
    let before = counters(cluster, dataplane, &from.node)?;

    // Every kind of packet a crossing could become, so that the wrong kind shows too.
    let capture = lab.capture(lab.fabric_netns(), bridge, "icmp or udp port 4789 or ip proto 4")?;
    let pinged = lab.ping(&from.netns, to.addr);
    let text = capture.stop()?;
    pinged.with_context(|| format!("ping {} -> {} during the capture", from.label, to.label))?;
    let after = counters(cluster, dataplane, &from.node)?;

    let request = format!("{} > {}: ICMP echo request", from.addr, to.addr);
    let reply = format!("{} > {}: ICMP echo reply", to.addr, from.addr);
    let shown =
        format!("capture on fabric bridge {bridge} ({} -> {}, expected {wire:?}):\n{text}", from.label, to.label);
    ensure!(
        text.contains(&request) && text.contains(&reply),
        "no echo request and reply between the pods in the {shown}"
    );
    let vxlan = text.contains(": VXLAN");
    let ipip = text.contains("proto IPIP (4)");
    match wire {
        Wire::Vxlan => {
            ensure!(vxlan && text.contains("vni 4096"), "no VXLAN with vni 4096 in the {shown}");
            let outer = format!("> {to_addr}.4789: VXLAN");
            ensure!(
                text.contains(&outer) && text.contains(&format!("{from_addr}.")),
                "no VXLAN from {from_addr} to {to_addr}:4789 in the {shown}"
            );
            ensure!(!ipip, "IP-in-IP in the {shown}");
        }
        Wire::Ipip => {
            ensure!(ipip, "no IP protocol 4 (IPIP) in the {shown}");
            let outer = format!("{from_addr} > {to_addr}: IP ");
            ensure!(
                text.contains(&outer),
                "no IPIP packet {from_addr} > {to_addr} carrying the pods' packets in the {shown}"
            );
            ensure!(!vxlan, "VXLAN in the {shown}");
        }
        Wire::Plain => {
            // The filter matched the pods' ICMP itself: it crossed as it is.
            ensure!(!vxlan && !ipip, "encapsulated packets in the {shown}");
        }
    }

    if dataplane == Dataplane::Netlink {
        return check_kernel_path(cluster, from, to, wire, counters::growth(&before, &after, VXLAN_TX));
    }
    let grew = |name: &str| counters::growth(&before, &after, name);
    ensure!(
        grew(wire.counter()) >= 3,
        "node {}'s {} grew by {} during 3 pings {} -> {} (expected >= 3)\nbefore: {before:?}\nafter: {after:?}",
        from.node,
        wire.counter(),
        grew(wire.counter()),
        from.label,
        to.label
    );
    for other in wire.other_counters() {
        ensure!(grew(other) == 0, "node {}'s {other} grew by {} during a {wire:?} crossing", from.node, grew(other));
    }
    eprintln!(
        "wire {} -> {}: {wire:?} on {bridge}, {} +{}",
        from.label,
        to.label,
        wire.counter(),
        grew(wire.counter())
    );
    Ok(())
}

/// The fast path's counters, or in netlink mode the packets `vxlan.calico` sent ([`VXLAN_TX`],
/// 0 without the device).
fn counters(cluster: &Cluster, dataplane: Dataplane, node: &str) -> anyhow::Result<BTreeMap<String, u64>> {
    match dataplane {
        Dataplane::FastPath => counters::read(cluster.bin(), &cluster.lab.pin_path(node)),
        Dataplane::Netlink => {
            let netns = cluster.lab.node_netns(node)?;
            let output = cluster.lab.exec_status(netns, &["ip", "-j", "-s", "link", "show", "dev", VXLAN_DEVICE])?;
            if !output.status.success() {
                return Ok(BTreeMap::new());
            }
            let json: Value = serde_json::from_slice(&output.stdout).context("`ip -j -s link` printed no JSON")?;
            let packets = json[0]["stats64"]["tx"]["packets"]
                .as_u64()
                .with_context(|| format!("no stats64.tx.packets for {VXLAN_DEVICE}: {json}"))?;
            Ok(BTreeMap::from([(VXLAN_TX.to_owned(), packets)]))
        }
    }
}

/// What the netlink fallback's kernel path shows for a crossing from `from` to `to`: a VXLAN
/// crossing leaves through `vxlan.calico` (VNI 4096, `tx_packets` grew by the pings, here
/// `vxlan_tx`), a plain one through the uplink via the peer, with no `vxlan.calico` at all.
fn check_kernel_path(
    cluster: &Cluster,
    from: &Endpoint,
    to: &Endpoint,
    wire: Wire,
    vxlan_tx: u64,
) -> anyhow::Result<()> {
    let lab = &cluster.lab;
    let netns = lab.node_netns(&from.node)?;
    let to_addr = to.addr.to_string();
    let route = lab.exec_stdout(netns, &["ip", "route", "get", &to_addr])?;
    let device = lab.exec_status(netns, &["ip", "-d", "link", "show", "dev", VXLAN_DEVICE])?;
    let device_text = String::from_utf8_lossy(&device.stdout).into_owned();
    match wire {
        Wire::Vxlan => {
            ensure!(
                route.contains(&format!("dev {VXLAN_DEVICE}")),
                "node {}: {to_addr} not routed via {VXLAN_DEVICE}: {route}",
                from.node
            );
            ensure!(
                device_text.contains("vxlan id 4096"),
                "node {}'s {VXLAN_DEVICE} is not VNI 4096: {device_text}",
                from.node
            );
            ensure!(
                vxlan_tx >= 3,
                "node {}'s {VXLAN_DEVICE} sent {vxlan_tx} packets during 3 pings (expected >= 3)",
                from.node
            );
        }
        Wire::Plain => {
            let peer = lab.node(&to.node)?.addr.addr();
            let uplink = &lab.node(&from.node)?.uplink;
            ensure!(
                route.contains(&format!("via {peer} dev {uplink}")),
                "node {}: {to_addr} not routed via {peer} dev {uplink}: {route}",
                from.node
            );
            ensure!(
                !device.status.success(),
                "node {} has {VXLAN_DEVICE} though no pool tunnels: {device_text}",
                from.node
            );
        }
        Wire::Ipip => bail!("the netlink fallback cannot do IPIP on this kernel (no ipip module)"),
    }
    eprintln!("kernel path {} -> {}: {wire:?}, {}", from.label, to.label, route.trim());
    Ok(())
}

/// Traffic to an address of `pod`'s block that no workload holds is dropped, from a local pod,
/// from a remote pod and from the host, and the fast path counts what it drops (in netlink
/// mode the kernel's `blackhole <block>` route drops it, uncounted).
fn check_blackhole(cluster: &Cluster, mode: &Mode, pod: &Endpoint) -> anyhow::Result<()> {
    let lab = &cluster.lab;
    let unused = mode.unused.to_string();
    ensure!(
        lab.pods().all(|p| !p.addrs.contains(&mode.unused)),
        "{unused} belongs to a pod: the test needs an unused address"
    );
    let dropped = |netns: &str, who: &str| -> anyhow::Result<()> {
        let output = lab.exec_status(netns, &["ping", "-c", "2", "-i", "0.2", "-W", "1", &unused])?;
        ensure!(
            !output.status.success(),
            "{who} got a reply from {unused}, which no workload holds:\n{}",
            String::from_utf8_lossy(&output.stdout)
        );
        Ok(())
    };

    if mode.dataplane == Dataplane::Netlink {
        dropped(&pod.netns, &pod.label)?;
        for crossing in mode.crossings {
            let remote = Endpoint::pod(lab, crossing.to)?;
            dropped(&remote.netns, &remote.label)?;
        }
        return check_blackhole_route(cluster, pod, &dropped);
    }

    // From a pod on the same node: from_workload drops it.
    let before = counters::read(cluster.bin(), &cluster.lab.pin_path(&pod.node))?;
    dropped(&pod.netns, &pod.label)?;
    let after = counters::read(cluster.bin(), &cluster.lab.pin_path(&pod.node))?;
    let grew = counters::growth(&before, &after, "drop_blackhole");
    ensure!(
        grew >= 2,
        "node {}'s drop_blackhole grew by {grew} after 2 pings from {} to {unused}",
        pod.node,
        pod.label
    );

    // From a pod on each other node: dropped on arrival, and counted when it came
    // encapsulated (a plain packet is the kernel's blackhole route's to drop).
    for crossing in mode.crossings {
        let remote = Endpoint::pod(lab, crossing.to)?;
        let before = counters::read(cluster.bin(), &cluster.lab.pin_path(&pod.node))?;
        dropped(&remote.netns, &remote.label)?;
        let after = counters::read(cluster.bin(), &cluster.lab.pin_path(&pod.node))?;
        let grew = counters::growth(&before, &after, "drop_blackhole");
        if crossing.wire != Wire::Plain {
            ensure!(
                grew >= 2,
                "node {}'s drop_blackhole grew by {grew} after 2 {:?} pings from {} to {unused}",
                pod.node,
                crossing.wire,
                remote.label
            );
        }
    }

    check_blackhole_route(cluster, pod, &dropped)
}

/// From the host, traffic to the unused address meets the agent's kernel route
/// `blackhole <block>`.
fn check_blackhole_route(
    cluster: &Cluster,
    pod: &Endpoint,
    dropped: &dyn Fn(&str, &str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let host = cluster.lab.node(&pod.node)?;
    dropped(&host.netns, &format!("node {}", host.name))?;
    let routes = cluster.lab.exec_stdout(&host.netns, &["ip", "route", "show", "type", "blackhole"])?;
    ensure!(routes.contains("10.244.1.0/26"), "node {} has no `blackhole 10.244.1.0/26`: {routes:?}", host.name);
    Ok(())
}

/// Something traffic goes to or from: a pod or a node's own namespace.
struct Endpoint {
    /// For messages, e.g. `default/web-1` or `node node-1`.
    label: String,
    netns: String,
    addr: Ipv4Addr,
    /// The node it is on (or is).
    node: String,
}

impl Endpoint {
    fn pod(lab: &Lab, key: &str) -> anyhow::Result<Endpoint> {
        let pod = lab.pod(key)?;
        Ok(Endpoint { label: pod.key.clone(), netns: pod.netns.clone(), addr: pod.addr, node: pod.node.clone() })
    }

    fn node(lab: &Lab, name: &str) -> anyhow::Result<Endpoint> {
        let node = lab.node(name)?;
        Ok(Endpoint {
            label: format!("node {name}"),
            netns: node.netns.clone(),
            addr: node.addr.addr(),
            node: name.to_owned(),
        })
    }
}

/// An iperf3 server in every pod and node namespace of the lab, stopped when dropped.
struct Servers {
    servers: BTreeMap<String, ChildHandle>,
}

impl Servers {
    fn start(lab: &Lab) -> anyhow::Result<Servers> {
        let namespaces: Vec<String> =
            lab.pods().map(|p| p.netns.clone()).chain(lab.nodes().map(|n| n.netns.clone())).collect();
        let mut servers = BTreeMap::new();
        for netns in namespaces {
            let server = lab.spawn(&netns, &["iperf3", "-s", "--forceflush"], &format!("iperf3-server-{netns}"))?;
            servers.insert(netns, server);
        }
        Ok(Servers { servers })
    }

    /// Waits until the server in `netns` listens.
    fn ready(&self, netns: &str) -> anyhow::Result<()> {
        let server = self.servers.get(netns).with_context(|| format!("no iperf3 server in {netns}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.log().contains("Server listening") {
            ensure!(Instant::now() < deadline, "iperf3 server in {netns} is not listening:\n{}", server.log());
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

/// What an iperf3 client reported.
#[derive(Debug)]
struct IperfResult {
    sent: u64,
    received: u64,
    bits_per_second: f64,
    lost_percent: f64,
}

/// Runs an iperf3 client in `netns` against `to` for [`IPERF_SECONDS`] (TCP, or UDP at
/// [`UDP_RATE`]), retrying while the server is still busy with the previous test.
fn iperf(lab: &Lab, netns: &str, to: Ipv4Addr, udp: bool) -> anyhow::Result<IperfResult> {
    let to = to.to_string();
    let mut argv =
        vec!["timeout", IPERF_TIMEOUT_S, "iperf3", "-c", &to, "-t", IPERF_SECONDS, "-J", "--connect-timeout", "3000"];
    if udp {
        argv.extend(["-u", "-b", UDP_RATE]);
    }
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let output = lab.exec_status(netns, &argv)?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            let report: Value =
                serde_json::from_str(&stdout).with_context(|| format!("iperf3 -J printed no JSON:\n{stdout}"))?;
            return parse_iperf(&report, udp).with_context(|| format!("iperf3 JSON:\n{stdout}"));
        }
        let busy = stdout.contains("busy");
        attempts.push(format!("{}\n{stdout}{}", output.status, String::from_utf8_lossy(&output.stderr)));
        if !busy {
            break;
        }
        thread::sleep(Duration::from_millis(500));
    }
    bail!("`{}` failed:\n{}", lab.command_line(netns, &argv), attempts.join("\n"))
}

/// The figures of an iperf3 `-J` report.
fn parse_iperf(report: &Value, udp: bool) -> anyhow::Result<IperfResult> {
    let end = &report["end"];
    let number = |value: &Value, path: &str| value.as_f64().with_context(|| format!("no number at end.{path}"));
    if udp {
        // iperf3 3.12: end.sum holds the receiver's view (bytes, lost_percent) as the server
        // reported it back; end.streams[0].udp the same per stream.
        let sum = &end["sum"];
        let sent = number(&end["streams"][0]["udp"]["bytes"], "streams[0].udp.bytes")? as u64;
        let packets = number(&sum["packets"], "sum.packets")?;
        let lost = number(&sum["lost_packets"], "sum.lost_packets")?;
        Ok(IperfResult {
            sent,
            received: (packets - lost).max(0.0) as u64,
            bits_per_second: number(&sum["bits_per_second"], "sum.bits_per_second")?,
            lost_percent: number(&sum["lost_percent"], "sum.lost_percent")?,
        })
    } else {
        Ok(IperfResult {
            sent: number(&end["sum_sent"]["bytes"], "sum_sent.bytes")? as u64,
            received: number(&end["sum_received"]["bytes"], "sum_received.bytes")? as u64,
            bits_per_second: number(&end["sum_received"]["bits_per_second"], "sum_received.bits_per_second")?,
            lost_percent: 0.0,
        })
    }
}
