//! A lab node configured with the kernel's own features only, as Calico's standard dataplane
//! configures a node: no agent, no eBPF program.
//!
//! This is the other side of the interop test (a node of this dataplane talking to a node set up
//! the way calico-node sets it up) and the reference paths of the throughput benchmark:
//!
//! - [`configure_kernel_vxlan`]: Calico's VXLAN mode: a `vxlan.calico` device (VNI 4096, UDP 4789,
//!   the node's VTEP MAC and address, MTU 1450), `<block> via <peer VTEP> dev vxlan.calico onlink`
//!   with a permanent neighbour and FDB entry per peer.
//! - [`configure_kernel_plain`]: plain routing, `<block> via <peer node> dev eth0`, as Calico
//!   programs a pool with both modes Never (the throughput ceiling: no encapsulation at all).
//!
//! Both also do what Calico does for the node's own workloads and blocks: proxy ARP (with no
//! delay) on each `caliX`, so that the kernel answers the pods' ARP for 169.254.1.1,
//! `blackhole <local block>`, and IP forwarding. The lab already adds `<pod IP> dev caliX scope
//! link` for every pod.
//!
//! Every function returns the commands it ran, in order, so that a test or a benchmark can show a
//! person exactly how the node was set up.

use std::net::Ipv4Addr;

use anyhow::{bail, Context as _};
use dataplane::{
    model::{MacAddr, Model},
    plan::{self, Encap, Plan, RouteTarget},
};
use dataplane_common::net::{tunnel_mtu, CALICO_VXLAN_DEVICE, CALICO_VXLAN_PORT, CALICO_VXLAN_VNI, VXLAN_ENCAP_LEN};

use crate::Lab;

/// Calico's VXLAN device name.
pub const VXLAN_DEVICE: &str = CALICO_VXLAN_DEVICE;
/// MTU of `vxlan.calico` on the lab's 1500-byte uplinks: 1500 less VXLAN's overhead.
pub const VXLAN_DEVICE_MTU: u32 = tunnel_mtu(1500, VXLAN_ENCAP_LEN);

/// Configures node `node` of `lab` as Calico's VXLAN mode does with kernel features only; run
/// again, it restores that configuration (an existing `vxlan.calico` is kept, the rest replaced).
///
/// Remote blocks that the pool's mode reaches without encapsulation (Never, or CrossSubnet
/// towards a peer on this node's subnet) are routed `via <peer> dev eth0`, as Calico does; a
/// pool in IPIP mode is refused: Calico would need `tunl0`, and this kernel has no ipip module.
/// Returns the commands run.
pub fn configure_kernel_vxlan(lab: &Lab, model: &Model, node: &str) -> anyhow::Result<Vec<String>> {
    let plan = node_plan(model, node)?;
    let mut setup = Setup::new(lab, node)?;
    setup.workloads_and_blocks(&plan)?;

    let vtep_addr = plan.node.vtep_addr.with_context(|| {
        format!("node {node} has no VXLAN tunnel address (spec.ipv4VXLANTunnelAddr): Calico's VXLAN mode needs one")
    })?;
    let vtep_mac = plan.node.vtep_mac.with_context(|| {
        format!("node {node} has no VTEP MAC (spec.vxlanTunnelMACAddr): Calico's VXLAN mode needs one")
    })?;
    let local = plan.node.addr.addr().to_string();
    let vni = CALICO_VXLAN_VNI.to_string();
    let port = CALICO_VXLAN_PORT.to_string();
    let uplink = setup.uplink.clone();
    // Run again on a node that has the device (handing a node back to Calico, as calico-node
    // does when it starts), everything below is a replace and the device is kept as it is.
    let exists = lab.exec_status(&setup.netns, &["ip", "link", "show", VXLAN_DEVICE])?.status.success();
    // nolearning: Calico programs every FDB entry itself and never floods to learn.
    if !exists {
        setup.run(&[
            "ip",
            "link",
            "add",
            VXLAN_DEVICE,
            "type",
            "vxlan",
            "id",
            &vni,
            "dstport",
            &port,
            "local",
            &local,
            "dev",
            &uplink,
            "nolearning",
        ])?;
    }
    let mac = vtep_mac.to_string();
    let mtu = VXLAN_DEVICE_MTU.to_string();
    setup.run(&["ip", "link", "set", VXLAN_DEVICE, "address", &mac, "mtu", &mtu])?;
    setup.run(&["ip", "addr", "replace", &format!("{vtep_addr}/32"), "dev", VXLAN_DEVICE])?;
    setup.run(&["ip", "link", "set", VXLAN_DEVICE, "up"])?;

    for (prefix, route) in &plan.routes {
        let RouteTarget::RemoteBlock { node: peer, node_addr, encap } = &route.target else {
            continue;
        };
        let block = prefix.to_string();
        match encap {
            Encap::Vxlan { vtep_mac: peer_mac } => {
                let peer_vtep = peer_vtep_addr(model, peer)?;
                setup.vxlan_peer(&block, peer_vtep, *peer_mac, *node_addr)?;
            }
            Encap::None => setup.plain_route(&block, *node_addr)?,
            Encap::Ipip => bail!(
                "block {block} of node {peer} is reached with IP-in-IP, which Calico's kernel dataplane does \
                 through tunl0; this kernel has no ipip module, so kernel_calico cannot configure it"
            ),
        }
    }
    Ok(setup.commands)
}

/// Configures node `node` of `lab` to route every remote block plainly to the node that owns it
/// (`<block> via <peer node> dev eth0`), whatever the pool's mode: Calico's Never mode, and the
/// ceiling the encapsulating paths are measured against. Every node must be on one subnet.
/// Returns the commands run.
pub fn configure_kernel_plain(lab: &Lab, model: &Model, node: &str) -> anyhow::Result<Vec<String>> {
    let plan = node_plan(model, node)?;
    let mut setup = Setup::new(lab, node)?;
    setup.workloads_and_blocks(&plan)?;
    for (prefix, route) in &plan.routes {
        if let RouteTarget::RemoteBlock { node: peer, node_addr, .. } = &route.target {
            if !plan.node.addr.contains(node_addr) {
                bail!(
                    "node {peer} ({node_addr}) is not on node {node}'s subnet {}: plain routing needs one link",
                    plan.node.addr.trunc()
                );
            }
            setup.plain_route(&prefix.to_string(), *node_addr)?;
        }
    }
    Ok(setup.commands)
}

/// The dataplane's own plan for `node`: the same decisions (local and remote blocks, the pool's
/// mode towards each peer) that the agent would program, so both sides agree by construction.
fn node_plan(model: &Model, node: &str) -> anyhow::Result<Plan> {
    let (plan, problems) = plan::compute(model, node).with_context(|| format!("planning node {node}"))?;
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        bail!("the model has problems for node {node}:\n  {}", list.join("\n  "));
    }
    Ok(plan)
}

/// The VXLAN tunnel address of node `peer`.
fn peer_vtep_addr(model: &Model, peer: &str) -> anyhow::Result<Ipv4Addr> {
    model
        .node(peer)
        .and_then(|n| n.vxlan_tunnel_addr)
        .with_context(|| format!("node {peer} has no VXLAN tunnel address (spec.ipv4VXLANTunnelAddr)"))
}

/// Runs commands in one node's namespace and records them.
struct Setup<'l> {
    lab: &'l Lab,
    netns: String,
    uplink: String,
    commands: Vec<String>,
}

impl<'l> Setup<'l> {
    fn new(lab: &'l Lab, node: &str) -> anyhow::Result<Self> {
        let lab_node = lab.node(node)?;
        Ok(Setup { lab, netns: lab_node.netns.clone(), uplink: lab_node.uplink.clone(), commands: Vec::new() })
    }

    /// Runs `argv` in the node's namespace; fails with its output.
    fn run(&mut self, argv: &[&str]) -> anyhow::Result<()> {
        self.lab.exec(&self.netns, argv)?;
        self.commands.push(crate::cmd::display(argv));
        Ok(())
    }

    /// Sets a sysctl in the node's namespace.
    fn sysctl(&mut self, key: &str, value: &str) -> anyhow::Result<()> {
        self.run(&["sysctl", "-q", "-w", &format!("{key}={value}")])
    }

    /// What Calico does on every node for its own workloads and blocks.
    fn workloads_and_blocks(&mut self, plan: &Plan) -> anyhow::Result<()> {
        self.sysctl("net.ipv4.ip_forward", "1")?;
        for interface in plan.workloads.keys() {
            // The kernel answers the pod's ARP for 169.254.1.1 (routed out of another interface)
            // with the caliX MAC, at once: the default proxy_delay would hold replies back.
            self.sysctl(&format!("net.ipv4.conf.{interface}.proxy_arp"), "1")?;
            self.sysctl(&format!("net.ipv4.neigh.{interface}.proxy_delay"), "0")?;
            self.sysctl(&format!("net.ipv4.conf.{interface}.forwarding"), "1")?;
        }
        for (prefix, route) in &plan.routes {
            if route.target == RouteTarget::LocalBlock {
                self.run(&["ip", "route", "replace", "blackhole", &prefix.to_string()])?;
            }
        }
        Ok(())
    }

    /// Calico's VXLAN route to a remote block, with the neighbour and FDB entries it relies on.
    fn vxlan_peer(
        &mut self,
        block: &str,
        peer_vtep: Ipv4Addr,
        peer_mac: MacAddr,
        peer: Ipv4Addr,
    ) -> anyhow::Result<()> {
        let vtep = peer_vtep.to_string();
        let mac = peer_mac.to_string();
        self.run(&["ip", "route", "replace", block, "via", &vtep, "dev", VXLAN_DEVICE, "onlink"])?;
        self.run(&["ip", "neigh", "replace", &vtep, "lladdr", &mac, "dev", VXLAN_DEVICE, "nud", "permanent"])?;
        self.run(&[
            "bridge",
            "fdb",
            "replace",
            &mac,
            "dev",
            VXLAN_DEVICE,
            "dst",
            &peer.to_string(),
            "self",
            "permanent",
        ])
    }

    /// A remote block routed without encapsulation to the node that owns it.
    fn plain_route(&mut self, block: &str, peer: Ipv4Addr) -> anyhow::Result<()> {
        let uplink = self.uplink.clone();
        self.run(&["ip", "route", "replace", block, "via", &peer.to_string(), "dev", &uplink])
    }
}
