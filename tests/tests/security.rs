//! Security, as tests: what a workload cannot do to its node and its neighbours, what the agent
//! leaves readable on the node, and where its metrics listen.
//!
//! The per-packet rules run through BPF_PROG_TEST_RUN; the lab test repeats them with real veths,
//! a packet socket in a pod's namespace crafting the frames, and a capture where they would land.
//! Needs root.

#![allow(clippy::unwrap_used, reason = "fixtures of a test: a failed unwrap is a failed test")]

use std::{
    ffi::CString,
    net::Ipv4Addr,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::Path,
    time::Duration,
};

use anyhow::{ensure, Context as _};
use dataplane_common::{
    net::{CALICO_VXLAN_PORT, CALICO_VXLAN_VNI, ETH_HLEN, GATEWAY_MAC, IPPROTO_IPIP, IPPROTO_UDP},
    Stat, PROG_FROM_UPLINK, PROG_FROM_WORKLOAD,
};
use dataplane_lab::{AgentOptions, Cluster, Lab, LabPod};
use dataplane_tests::{
    agent_bin,
    packet::{fixture::*, Packet},
    program::{skip_unless_root, Node, TC_ACT_REDIRECT, TC_ACT_SHOT},
    workspace_root,
};

/// A VXLAN packet as a pod would craft it: outer `outer_src` -> node-2's address, port 4789, the
/// cluster's VNI, carrying a packet "from" pod B to pod C on node-2.
fn crafted_vxlan(eth_src: [u8; 6], outer_src: [u8; 4]) -> Vec<u8> {
    Packet::eth(eth_src, GATEWAY_MAC)
        .ipv4(outer_src, PEER, IPPROTO_UDP)
        .udp(40000, CALICO_VXLAN_PORT)
        .vxlan(CALICO_VXLAN_VNI, NODE_VTEP_MAC, PEER_VTEP_MAC)
        .ipv4(POD_B, REMOTE_POD, IPPROTO_UDP)
        .udp(5000, 5001)
        .payload(b"injected")
        .finish()
}

/// The same as IP-in-IP.
fn crafted_ipip(eth_src: [u8; 6], outer_src: [u8; 4]) -> Vec<u8> {
    Packet::eth(eth_src, GATEWAY_MAC)
        .ipv4(outer_src, PEER, IPPROTO_IPIP)
        .ipv4(POD_B, REMOTE_POD, IPPROTO_UDP)
        .udp(5000, 5001)
        .payload(b"injected")
        .finish()
}

/// A pod that writes a peer node's address (its own node's, or the receiver's) as the outer
/// source of a tunnel packet is stopped at its own interface as spoofed, before any node could
/// take it for a peer's.
#[test]
fn a_pod_cannot_send_tunnel_packets_with_a_node_address() {
    if skip_unless_root() {
        return;
    }
    let node = Node::new("node-1");
    let mut drops = 0;
    for outer_src in [NODE, PEER] {
        for packet in [crafted_vxlan(POD_A_MAC, outer_src), crafted_ipip(POD_A_MAC, outer_src)] {
            let (verdict, _) = node.run(PROG_FROM_WORKLOAD, &packet);
            assert_eq!(verdict, TC_ACT_SHOT, "a tunnel packet with source {outer_src:?} left pod A");
            drops += 1;
            assert_eq!(node.stat(Stat::DropSpoofedSource), drops);
        }
    }
    // The receiving node would indeed have taken them for its peer's: that is why they must not leave.
    let receiver = Node::new("node-2");
    let mut as_received = crafted_vxlan(UPLINK_MAC, NODE);
    as_received[ETH_HLEN + 16..ETH_HLEN + 20].copy_from_slice(&PEER);
    let (verdict, _) = receiver.run(PROG_FROM_UPLINK, &as_received);
    assert_eq!((verdict, receiver.stat(Stat::DecapVxlan)), (TC_ACT_REDIRECT, 1));
}

/// A pod in a natOutgoing pool that sends a tunnel packet with its own address to another node
/// goes out translated to its node's address: the receiving node sees its peer's address on it.
///
/// Found by this test (see RELIABILITY.md): node-1 used to translate pod A's VXLAN packet to
/// node-1's address, and node-2 decapsulated it and delivered the inner packet (with whatever
/// source pod A wrote) to pod C. Now `from_workload` drops VXLAN (UDP to the VXLAN port) and
/// IP-in-IP from pods, as Calico does, counted as drop_tunnel_from_workload.
#[test]
fn a_pod_tunnel_packet_translated_to_its_node_address_is_not_decapsulated_as_the_peer() {
    if skip_unless_root() {
        return;
    }
    let sender = Node::new("node-1");
    let receiver = Node::new("node-2");
    for packet in [crafted_vxlan(POD_A_MAC, POD_A), crafted_ipip(POD_A_MAC, POD_A)] {
        let (verdict, out) = sender.run(PROG_FROM_WORKLOAD, &packet);
        eprintln!(
            "sender: verdict {verdict}, snat_new {}, pass {}",
            sender.stat(Stat::SnatNew),
            sender.stat(Stat::PassToStack)
        );
        if verdict == TC_ACT_SHOT {
            continue;
        }
        let outer_src = &out[ETH_HLEN + 12..ETH_HLEN + 16];
        let (verdict, _) = receiver.run(PROG_FROM_UPLINK, &out);
        eprintln!(
            "receiver: verdict {verdict}, outer source {outer_src:?}, decap_vxlan {}, decap_ipip {}",
            receiver.stat(Stat::DecapVxlan),
            receiver.stat(Stat::DecapIpip)
        );
        assert!(
            receiver.stat(Stat::DecapVxlan) + receiver.stat(Stat::DecapIpip) == 0,
            "node-2 decapsulated pod A's tunnel packet as node-1's (outer source {outer_src:?})"
        );
    }
}

/// The agent's ClusterRole only reads: every rule's verbs are among get, list and watch, and no
/// rule uses a wildcard.
#[test]
fn the_cluster_role_is_read_only() {
    let text = std::fs::read_to_string(workspace_root().join("deploy/rbac.yaml")).unwrap();
    let mut roles = 0;
    for document in text.split("\n---") {
        let resource: serde_yaml::Value = serde_yaml::from_str(document).unwrap();
        if resource["kind"] != "ClusterRole" && resource["kind"] != "Role" {
            continue;
        }
        roles += 1;
        let rules = resource["rules"].as_sequence().expect("rules");
        assert!(!rules.is_empty());
        for rule in rules {
            for field in ["verbs", "resources", "apiGroups"] {
                let values = rule[field].as_sequence().unwrap_or_else(|| panic!("{field} of {rule:?}"));
                assert!(values.iter().all(|v| v.as_str() != Some("*")), "wildcard in {field}: {rule:?}");
            }
            for verb in rule["verbs"].as_sequence().unwrap() {
                let verb = verb.as_str().unwrap();
                assert!(["get", "list", "watch"].contains(&verb), "the role may {verb}: {rule:?}");
            }
        }
    }
    assert_eq!(roles, 1, "deploy/rbac.yaml should hold the agent's one ClusterRole");
}

// ---------------------------------------------------------------------------------------------
// The same with real veths: a packet socket in a pod's namespace crafts the frames.

/// The example cluster: node-1 with web-1 and cache-1, node-2 with web-2, VXLAN, natOutgoing.
const EXAMPLE: &str = "examples/two-nodes.yaml";
/// A metrics port given bare, as `--metrics-addr 19091`.
const METRICS_PORT: &str = "19091";
/// The UDP port the crafted inner packets go to.
const PROBE_PORT: u16 = 5001;
/// An EtherType no stack handles (IEEE local experimental), for frames that only a switch would carry.
const ETH_P_EXPERIMENTAL: u16 = 0x88b5;

/// A packet socket bound to one interface of the namespace its thread is in.
struct RawSocket(std::os::fd::OwnedFd);

impl RawSocket {
    fn open(interface: &str) -> anyhow::Result<RawSocket> {
        use std::os::fd::FromRawFd as _;
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call; the descriptor is owned at once.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
        ensure!(fd >= 0, "socket(AF_PACKET): {}", std::io::Error::last_os_error());
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let socket = RawSocket(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        let name = CString::new(interface)?;
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        ensure!(ifindex != 0, "no interface {interface} here");
        // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set below.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = protocol;
        address.sll_ifindex = ifindex as i32;
        use std::os::fd::AsRawFd as _;
        // SAFETY: address is a valid sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                socket.0.as_raw_fd(),
                (&address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        ensure!(rc == 0, "bind to {interface}: {}", std::io::Error::last_os_error());
        let timeout = libc::timeval { tv_sec: 0, tv_usec: 200_000 };
        // SAFETY: a valid timeval for SO_RCVTIMEO.
        unsafe {
            libc::setsockopt(
                socket.0.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        Ok(socket)
    }

    fn send(&self, frame: &[u8]) -> anyhow::Result<()> {
        use std::os::fd::AsRawFd as _;
        // SAFETY: frame is a valid buffer of its length.
        let sent = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        ensure!(sent == frame.len() as isize, "send: {}", std::io::Error::last_os_error());
        Ok(())
    }

    /// Frames received within `window` (the socket also sees its own outgoing frames).
    fn receive_for(&self, window: Duration) -> Vec<Vec<u8>> {
        use std::os::fd::AsRawFd as _;
        let deadline = std::time::Instant::now() + window;
        let mut frames = Vec::new();
        while std::time::Instant::now() < deadline {
            let mut buffer = vec![0u8; 2048];
            // SAFETY: buffer is valid for its length.
            let got = unsafe { libc::recv(self.0.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), 0) };
            if got > 0 {
                buffer.truncate(got as usize);
                frames.push(buffer);
            }
        }
        frames
    }
}

/// Runs `work` on a thread inside the network namespace `netns` (a name under /run/netns).
fn in_netns<T: Send + 'static>(
    netns: &str,
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    use std::os::fd::AsRawFd as _;
    let path = Path::new("/run/netns").join(netns);
    std::thread::spawn(move || {
        let namespace = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: setns on this thread only, with a namespace descriptor.
        let rc = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) };
        ensure!(rc == 0, "setns {}: {}", path.display(), std::io::Error::last_os_error());
        work()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread in {netns} panicked"))?
}

/// The MAC of `eth0` in `netns`.
fn pod_mac(lab: &Lab, netns: &str) -> anyhow::Result<[u8; 6]> {
    let text = lab.exec_stdout(netns, &["ip", "-br", "link", "show", "eth0"])?;
    let field = text.split_whitespace().nth(2).with_context(|| format!("ip -br link: {text}"))?;
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(field.split(':')) {
        *byte = u8::from_str_radix(part, 16).with_context(|| format!("MAC {field}"))?;
    }
    Ok(mac)
}

/// The counters of a node's fast path (`dataplane stats -o json`), decisions and drops together.
fn stats(lab: &Lab, node: &str) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    let bin = agent_bin();
    let pin = lab.pin_path(node);
    let output = dataplane_lab::cmd::run(&[
        &*bin.to_string_lossy(),
        "stats",
        "--pin-path",
        &pin.to_string_lossy(),
        "-o",
        "json",
    ])?;
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).context("stats JSON")?;
    let mut counters = std::collections::BTreeMap::new();
    for section in ["decisions", "drops"] {
        for (name, value) in json[section].as_object().context("stats sections")? {
            counters.insert(name.clone(), value.as_u64().unwrap_or(0));
        }
    }
    Ok(counters)
}

fn octets(addr: Ipv4Addr) -> [u8; 4] {
    addr.octets()
}

/// Every file and directory under `dir` belongs to root and is closed to group and others.
fn check_private(dir: &Path, seen: &mut usize) -> anyhow::Result<()> {
    let meta = std::fs::symlink_metadata(dir).with_context(|| format!("stat {}", dir.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    ensure!(meta.uid() == 0, "{} belongs to uid {}", dir.display(), meta.uid());
    ensure!(mode & 0o077 == 0, "{} has mode {mode:o}: group or others may read it", dir.display());
    *seen += 1;
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            check_private(&entry?.path(), seen)?;
        }
    }
    Ok(())
}

#[test]
fn a_pod_cannot_spoof_a_node_or_reach_a_neighbour_at_layer_2_and_the_agent_keeps_its_state_private(
) -> anyhow::Result<()> {
    let Some(mut cluster) = Cluster::up_or_skip(
        "a_pod_cannot_spoof_a_node_or_reach_a_neighbour_at_layer_2_and_the_agent_keeps_its_state_private",
        EXAMPLE,
    )?
    else {
        return Ok(());
    };
    let options = AgentOptions { args: vec!["--metrics-addr".into(), METRICS_PORT.into()], ..Default::default() };
    cluster.start("node-1", &options)?;
    cluster.start("node-2", &AgentOptions::default())?;
    let lab = &cluster.lab;
    let web1: LabPod = lab.pod("default/web-1")?.clone();
    let cache1: LabPod = lab.pod("default/cache-1")?.clone();
    let web2: LabPod = lab.pod("default/web-2")?.clone();
    let node1_addr = octets(lab.node("node-1")?.addr.addr());
    let node2_addr = octets(lab.node("node-2")?.addr.addr());

    // The pins: root's alone.
    let mut pins = 0;
    check_private(&lab.pin_path("node-1"), &mut pins)?;
    eprintln!("pin tree of node-1: {pins} entries, all root's and closed to group and others");
    ensure!(pins > 5, "too few pins under {}: {pins}", lab.pin_path("node-1").display());

    // Metrics given a bare port listen on loopback only.
    let listening = lab.exec_stdout(lab.node_netns("node-1")?, &["ss", "-Hltn"])?;
    let on_port: Vec<&str> = listening.lines().filter(|l| l.contains(&format!(":{METRICS_PORT} "))).collect();
    eprintln!("listening on {METRICS_PORT}: {on_port:?}");
    ensure!(
        on_port.len() == 1 && on_port[0].contains(&format!("127.0.0.1:{METRICS_PORT}")),
        "--metrics-addr {METRICS_PORT} should listen on 127.0.0.1 only:\n{listening}"
    );

    let web1_mac = pod_mac(lab, &web1.netns)?;
    let cache1_mac = pod_mac(lab, &cache1.netns)?;
    let (web1_addr, cache1_addr, web2_addr) = (octets(web1.addr), octets(cache1.addr), octets(web2.addr));
    let before = stats(lab, "node-1")?;
    let in_web2 = lab.capture(&web2.netns, "eth0", &format!("udp port {PROBE_PORT}"))?;
    let in_cache1 =
        lab.capture(&cache1.netns, "eth0", &format!("ether proto {ETH_P_EXPERIMENTAL:#06x} or udp port {PROBE_PORT}"))?;

    // From web-1: tunnel packets with node-1's and node-2's address as outer source, carrying a
    // packet "from cache-1" to web-2; an ARP request for cache-1's address and one for the
    // gateway; a frame to cache-1's MAC; and one honest packet to web-2, the control.
    let tunnel = |outer_src: [u8; 4], ipip: bool| {
        let outer = Packet::eth(web1_mac, GATEWAY_MAC);
        let inner = if ipip {
            outer.ipv4(outer_src, node2_addr, IPPROTO_IPIP)
        } else {
            outer.ipv4(outer_src, node2_addr, IPPROTO_UDP).udp(40000, CALICO_VXLAN_PORT).vxlan(
                CALICO_VXLAN_VNI,
                NODE_VTEP_MAC,
                PEER_VTEP_MAC,
            )
        };
        inner.ipv4(cache1_addr, web2_addr, IPPROTO_UDP).udp(5000, PROBE_PORT).payload(b"spoofed").finish()
    };
    let spoofed =
        [tunnel(node1_addr, false), tunnel(node2_addr, false), tunnel(node1_addr, true), tunnel(node2_addr, true)];
    let arp_neighbour = Packet::eth(web1_mac, [0xff; 6]).arp_request(web1_mac, web1_addr, cache1_addr).finish();
    let arp_gateway =
        Packet::eth(web1_mac, [0xff; 6]).arp_request(web1_mac, web1_addr, dataplane_common::net::GATEWAY_ADDR).finish();
    let mut to_neighbour_mac = Packet::eth(web1_mac, cache1_mac).payload(&[0x5a; 46]).bytes;
    to_neighbour_mac[12..14].copy_from_slice(&ETH_P_EXPERIMENTAL.to_be_bytes());
    let honest = Packet::eth(web1_mac, GATEWAY_MAC)
        .ipv4(web1_addr, web2_addr, IPPROTO_UDP)
        .udp(5000, PROBE_PORT)
        .payload(b"honest")
        .finish();
    let spoofed_count = spoofed.len() as u64;
    // IPv4 frames cut inside the IPv4 header: BPF_PROG_TEST_RUN refuses them, a veth carries them.
    let honest_copy = honest.clone();
    let cut: Vec<Vec<u8>> =
        [ETH_HLEN, ETH_HLEN + 1, ETH_HLEN + 12, ETH_HLEN + 19].iter().map(|&len| honest_copy[..len].to_vec()).collect();
    let cut_count = cut.len() as u64;
    let arp_replies = in_netns(&web1.netns, move || {
        let socket = RawSocket::open("eth0")?;
        for frame in &spoofed {
            socket.send(frame)?;
        }
        for frame in &cut {
            socket.send(frame)?;
        }
        socket.send(&to_neighbour_mac)?;
        socket.send(&honest)?;
        socket.send(&arp_neighbour)?;
        socket.send(&arp_gateway)?;
        // ARP replies (opcode 2) to web-1, by the address they answer for.
        let replies: Vec<[u8; 4]> = socket
            .receive_for(Duration::from_millis(1500))
            .into_iter()
            .filter(|f| f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2])
            .map(|f| [f[28], f[29], f[30], f[31]])
            .collect();
        Ok(replies)
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let web2_saw = in_web2.stop()?;
    let cache1_saw = in_cache1.stop()?;
    let after = stats(lab, "node-1")?;
    let moved = |name: &str| after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0);

    eprintln!("ARP replies to web-1 for: {arp_replies:?}");
    eprintln!("web-2 saw:\n{web2_saw}");
    eprintln!("cache-1 saw:\n{cache1_saw}");
    eprintln!(
        "node-1 counters moved: drop_spoofed_source {}, drop_malformed {}, arp_replied {}, arp_passed {}",
        moved("drop_spoofed_source"),
        moved("drop_malformed"),
        moved("arp_replied"),
        moved("arp_passed")
    );
    // The control went through: the path from the raw socket to web-2 works.
    ensure!(
        web2_saw.contains(&format!("{}.5000 > {}.{PROBE_PORT}", web1.addr, web2.addr)),
        "the honest packet did not reach web-2:\n{web2_saw}"
    );
    // Nothing "from cache-1" reached web-2: every tunnel packet with a node's address stopped at web-1's interface.
    ensure!(!web2_saw.contains(&format!("{}.5000", cache1.addr)), "a spoofed inner packet reached web-2:\n{web2_saw}");
    ensure!(
        moved("drop_spoofed_source") == spoofed_count,
        "expected {spoofed_count} spoofed drops on node-1, counted {}",
        moved("drop_spoofed_source")
    );
    // The gateway answers; cache-1's address does not (no proxy ARP, no bridge).
    ensure!(
        arp_replies.contains(&dataplane_common::net::GATEWAY_ADDR),
        "no ARP reply for the gateway: {arp_replies:?}"
    );
    ensure!(!arp_replies.contains(&cache1_addr), "someone answered ARP for cache-1's address to web-1");
    ensure!(moved("arp_passed") >= 1 && moved("arp_replied") >= 1);
    // The cut frames were counted as malformed at web-1's interface.
    ensure!(
        moved("drop_malformed") == cut_count,
        "expected {cut_count} malformed drops, counted {}",
        moved("drop_malformed")
    );
    // The frame to cache-1's MAC was not switched to it.
    ensure!(cache1_saw.trim().is_empty(), "cache-1 received a frame from web-1:\n{cache1_saw}");

    cluster.stop("node-1")?;
    cluster.stop("node-2")?;
    Ok(())
}

/// The natOutgoing gap with real traffic: web-1 sends, from an ordinary UDP socket (no privilege
/// needed), a VXLAN payload to node-2's port 4789 carrying a packet "from cache-1" to web-2. The
/// packet leaves node-1 translated to node-1's address, so node-2 takes it for its peer's.
///
/// Found by this test (see RELIABILITY.md): web-2 used to receive the inner packet; now node-1
/// drops it at web-1's interface (drop_tunnel_from_workload).
#[test]
fn an_unprivileged_pod_cannot_inject_vxlan_through_natoutgoing() -> anyhow::Result<()> {
    let Some(mut cluster) =
        Cluster::up_or_skip("an_unprivileged_pod_cannot_inject_vxlan_through_natoutgoing", EXAMPLE)?
    else {
        return Ok(());
    };
    cluster.start_all(&AgentOptions::default())?;
    let lab = &cluster.lab;
    let web1 = lab.pod("default/web-1")?.clone();
    let cache1 = lab.pod("default/cache-1")?.clone();
    let web2 = lab.pod("default/web-2")?.clone();
    let node2_addr = lab.node("node-2")?.addr.addr();
    let frame = Packet::eth(UPLINK_MAC, UPLINK_MAC)
        .ipv4(octets(web1.addr), octets(node2_addr), IPPROTO_UDP)
        .udp(40000, CALICO_VXLAN_PORT)
        .vxlan(CALICO_VXLAN_VNI, NODE_VTEP_MAC, PEER_VTEP_MAC)
        .ipv4(octets(cache1.addr), octets(web2.addr), IPPROTO_UDP)
        .udp(5000, PROBE_PORT)
        .payload(b"injected")
        .finish();
    // What the pod's socket sends: the VXLAN header onwards.
    let payload = frame[ETH_HLEN + 20 + 8..].to_vec();
    let in_web2 = lab.capture(&web2.netns, "eth0", &format!("udp port {PROBE_PORT}"))?;
    in_netns(&web1.netns, move || {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
        for _ in 0..3 {
            socket.send_to(&payload, (node2_addr, CALICO_VXLAN_PORT))?;
        }
        Ok(())
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let web2_saw = in_web2.stop()?;
    eprintln!("web-2 saw:\n{web2_saw}");
    cluster.stop("node-1")?;
    cluster.stop("node-2")?;
    ensure!(
        !web2_saw.contains(&format!("{}.5000 > {}.{PROBE_PORT}", cache1.addr, web2.addr)),
        "web-2 received a packet \"from cache-1\" that web-1 injected through node-2's VXLAN port:\n{web2_saw}"
    );
    Ok(())
}
