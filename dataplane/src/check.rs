//! `dataplane check`: Calico's troubleshooting page, automated for one node.
//!
//! Every question of the page gets a check: are the programs attached where they should be, do
//! the maps hold what the datastore says, does every remote block have a route to the node that
//! owns it, does the node's tunnel address lie in one of its blocks, can the pools give every node
//! a block, do pools overlap, are there blocks outside every pool, does every workload have its
//! interface and its host /32 route. Each [`Finding`] names the object and the fix.
//!
//! The decisions are pure functions over the model, the plan and what was observed on the node;
//! reading the pins, the interfaces and the kernel's routes happens at the edges ([`run`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use aya::{
    maps::{lpm_trie::LpmTrie, Array, HashMap, Map, MapData},
    programs::{links::FdLink, links::PinnedLink, SchedClassifier, TcAttachType},
};
use dataplane_common::{
    route_flags, route_kind, workload_flags, FlowKey, Ipv4Bytes, NatFlow, NodeConfig, Peer, Route, Workload,
    CONNTRACK_MAP, NODE_MAP, PEERS_MAP, PROG_FROM_UPLINK, PROG_FROM_WORKLOAD, PROG_TO_UPLINK, PROG_TO_WORKLOAD,
    PROG_VXLAN_ANCHOR, PROG_XDP_UPLINK, ROUTES_MAP, WORKLOADS_MAP,
};
use futures::TryStreamExt as _;
use ipnet::Ipv4Net;
use serde::Serialize;

use rtnetlink::{
    packet_route::{
        link::{InfoData, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
        route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType},
        AddressFamily,
    },
    RouteMessageBuilder,
};

use crate::{
    agent::{Datastore, Mode},
    backend::{
        bpf::{link_pin_name, LINKS_DIR},
        clsact::{self, Filter},
        diff::{diff, Changes},
        entries::{self, MapEntries, RouteKey},
        netlink::{self, Intent, RouteIntent, IPIP_DEVICE, RTPROT_DATAPLANE, VXLAN_DEVICE, VXLAN_VNI},
        nftables, veth,
        vxlan_anchor::{self, ANCHOR_DEVICE},
        xdp::{self, XdpChoice, XdpMode},
    },
    datastore::etcd::EtcdConfig,
    model::{MacAddr, Model, Problem},
    plan::{self, Encap, Plan, RouteTarget},
    routes, sys,
};

/// What the agent tells its users to do when a map or a link is not as the datastore says: the
/// agent rewrites both on start and on every resync.
const FIX_AGENT: &str = "the agent rewrites this on every resync (30 s) and on start: if it persists, the agent \
                         is not running or failing for this node; restart it (`dataplane run`) and read its log";

/// One problem found: which check, the object it is about, what is wrong, and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The check that found it: `programs`, `maps`, `routes`, `tunnel`, `pools`, `blocks`,
    /// `workloads`, `node`, `datastore` or `plan`.
    pub check: &'static str,
    /// The object, as an operator names it: `IPPool default`, `routes_v1 10.244.2.0/26`, ...
    pub object: String,
    /// What is wrong.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

impl Finding {
    fn new(check: &'static str, object: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding { check, object: object.into(), problem: problem.into(), fix: fix.into() }
    }
}

/// How much was looked at, so that "no problems" means something.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Checked {
    /// Program attachments (pinned links and tcx hooks).
    pub links: usize,
    /// Expected map entries compared with the pinned maps.
    pub map_entries: usize,
    /// Remote blocks whose route was verified.
    pub remote_blocks: usize,
    /// Workloads on this node.
    pub workloads: usize,
    /// IP pools.
    pub pools: usize,
    /// Workloads the datastore gives no MAC (Kubernetes), with the MAC learned from the pod side
    /// of their veth that their entries are expected to hold: `namespace/name` -> MAC.
    pub learned_macs: BTreeMap<String, String>,
}

/// The result of `dataplane check` on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The node checked.
    pub node: String,
    /// Everything found wrong; empty when the node is healthy.
    pub findings: Vec<Finding>,
    /// What was checked.
    pub checked: Checked,
}

impl Report {
    /// Whether nothing was found.
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }
}

// ---------------------------------------------------------------------------------------------
// Pure checks over the model.

/// Overlapping pools, block sizes that do not fit the pool, and pools too small for the cluster
/// (the troubleshooting page's "IP pool addresses exhausted": fewer blocks than nodes).
pub fn check_pools(model: &Model) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (index, pool) in model.pools.iter().enumerate() {
        let cidr = pool.cidr.trunc();
        // The later of two overlapping pools is the one the planner skips: report it there.
        if let Some(earlier) =
            model.pools[..index].iter().find(|p| p.cidr.trunc().contains(&cidr) || cidr.contains(&p.cidr.trunc()))
        {
            findings.push(Finding::new(
                "pools",
                format!("IPPool {}", pool.name),
                format!(
                    "spec.cidr {cidr} overlaps IPPool {} ({}), so the dataplane skips this pool and its blocks",
                    earlier.name,
                    earlier.cidr.trunc()
                ),
                format!("pools must not overlap: change spec.cidr of {} or {}, or delete one", pool.name, earlier.name),
            ));
        }
        if pool.block_size > 32 || pool.block_size < cidr.prefix_len() {
            findings.push(Finding::new(
                "pools",
                format!("IPPool {}", pool.name),
                format!("spec.blockSize {} does not fit the pool {cidr}", pool.block_size),
                format!("set spec.blockSize between {} and 32 (Calico's default is 26)", cidr.prefix_len()),
            ));
            continue;
        }
        if pool.disabled {
            continue;
        }
        let blocks = 1u64 << (pool.block_size - cidr.prefix_len());
        let nodes = model.nodes.len() as u64;
        let allocated: BTreeSet<Ipv4Net> =
            model.blocks.iter().map(|b| b.cidr.trunc()).filter(|b| cidr.contains(b)).collect();
        if blocks < nodes {
            findings.push(Finding::new(
                "pools",
                format!("IPPool {}", pool.name),
                format!(
                    "the pool has {blocks} blocks of /{} ({} / {} addresses) but the cluster has {nodes} nodes: \
                     every node needs a block, so pods on some nodes get no address from it",
                    pool.block_size,
                    crate::ipam::size(&cidr),
                    1u64 << (32 - u32::from(pool.block_size)),
                ),
                "add an IP pool, or make this pool larger (a shorter prefix) or its blocks smaller (a larger \
                 blockSize)",
            ));
        } else if allocated.len() as u64 >= blocks {
            findings.push(Finding::new(
                "pools",
                format!("IPPool {}", pool.name),
                format!("every one of the pool's {blocks} blocks is allocated: a new node gets no block from it"),
                "add an IP pool, or release the blocks of nodes that are gone (`calicoctl ipam check`)",
            ));
        }
    }
    findings
}

/// Blocks that lie in no IP pool: Calico carves every block from a pool, so such a block is left
/// over from a deleted pool and routes nowhere.
pub fn check_blocks(model: &Model) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut seen = BTreeSet::new();
    for block in &model.blocks {
        let cidr = block.cidr.trunc();
        if !seen.insert((cidr, block.node.clone())) {
            continue;
        }
        if model.pools.iter().any(|pool| pool.cidr.trunc().contains(&cidr)) {
            continue;
        }
        findings.push(Finding::new(
            "blocks",
            format!("BlockAffinity {cidr}"),
            format!("the block (affine to {}) lies in no IP pool, so no node routes it", block.node),
            "re-create the pool it was carved from, or release the block and delete its affinity",
        ));
    }
    findings
}

/// The node's tunnel addresses must lie in one of its own blocks (the page's "check whether the
/// tunnel IP is normal"): Calico allocates them from the node's block, and one outside it usually
/// means the pool ran out of blocks or the node was renamed.
pub fn check_tunnel_addresses(model: &Model, node: &str) -> Vec<Finding> {
    let Some(this) = model.node(node) else {
        return Vec::new();
    };
    let blocks: Vec<Ipv4Net> =
        model.blocks.iter().filter(|b| b.node == node && b.routes()).map(|b| b.cidr.trunc()).collect();
    let listed = if blocks.is_empty() {
        "it has no block".to_owned()
    } else {
        format!("its blocks are {}", blocks.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", "))
    };
    let mut findings = Vec::new();
    for (field, addr) in
        [("spec.ipv4VXLANTunnelAddr", this.vxlan_tunnel_addr), ("spec.bgp.ipv4IPIPTunnelAddr", this.ipip_tunnel_addr)]
    {
        let Some(addr) = addr else { continue };
        if blocks.iter().any(|b| b.contains(&addr)) {
            continue;
        }
        findings.push(Finding::new(
            "tunnel",
            format!("Node {node}"),
            format!("{field} {addr} lies in none of the node's blocks ({listed})"),
            if blocks.is_empty() {
                "the node needs a block first: check the pools for exhaustion, then let calico-node allocate the \
                 tunnel address again (remove the field)"
                    .to_owned()
            } else {
                format!(
                    "remove {field} so that calico-node allocates it again from the node's block, or set it to a \
                     free address of {}",
                    blocks[0]
                )
            },
        ));
    }
    findings
}

/// Workloads of this node whose host-side interface is missing, or whose host route
/// `<pod>/32 dev <interface>` is missing or points elsewhere.
pub fn check_workloads(plan: &Plan, interfaces: &BTreeMap<String, u32>, host_routes: &[KernelRoute]) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (interface, workload) in &plan.workloads {
        let object = format!("WorkloadEndpoint {}", workload.name);
        if !interfaces.contains_key(interface) {
            findings.push(Finding::new(
                "workloads",
                object,
                format!("its interface {interface} does not exist on this node, so the pod is unreachable"),
                "the pod's veth is gone: delete the pod so that it is re-created, or correct spec.interfaceName \
                 if the pod uses another interface (Calico names it cali + 11 hex digits of \
                 sha1(\"<namespace>.<pod>\"))",
            ));
            continue;
        }
        let host = Ipv4Net::from(workload.addr);
        let routes: Vec<&KernelRoute> = host_routes.iter().filter(|r| r.dst == host).collect();
        if routes.iter().any(|r| r.interface == *interface) {
            continue;
        }
        let problem = match routes.first() {
            Some(other) => format!(
                "the host route {host} points at {} instead of {interface}, so the node's own traffic to the pod \
                 goes astray",
                other.interface
            ),
            None => format!(
                "the host route {host} dev {interface} is missing, so the node's own traffic to the pod (kubelet \
                 probes, host-network pods) does not reach it"
            ),
        };
        findings.push(Finding::new(
            "workloads",
            object,
            problem,
            format!(
                "ip route replace {host} dev {interface} scope link (the CNI plugin adds it when the pod starts; \
                 re-creating the pod also restores it)"
            ),
        ));
    }
    findings
}

/// Every remote block of the plan must have a route in the routes map to the node that owns it,
/// encapsulated as the pool says and, for VXLAN, with that node's VTEP MAC (the page's "check
/// whether the routing is normal" and the neighbour MAC check). Returns the findings and the
/// route keys they cover, so that the map diff does not report the same entry again.
pub fn check_remote_blocks(
    model: &Model,
    plan: &Plan,
    routes: &BTreeMap<RouteKey, Route>,
) -> (Vec<Finding>, BTreeSet<RouteKey>) {
    let mut findings = Vec::new();
    let mut covered = BTreeSet::new();
    for (prefix, planned) in &plan.routes {
        let RouteTarget::RemoteBlock { node, node_addr, encap } = &planned.target else {
            continue;
        };
        let key = route_key(prefix);
        let object = format!("block {prefix} of node {node}");
        let mut problems = Vec::new();
        match routes.get(&key) {
            None => {
                problems.push(format!("{ROUTES_MAP} has no route for it, so pods here cannot reach the pods in it"))
            }
            Some(route) if route.kind != route_kind::REMOTE_BLOCK => problems.push(format!(
                "{ROUTES_MAP} routes it as {}, not to node {node}",
                routes::describe(*prefix, route).kind
            )),
            Some(route) => {
                let programmed = Ipv4Addr::from(route.node_addr);
                if programmed != *node_addr {
                    let holder = model
                        .nodes
                        .iter()
                        .find(|n| n.addr.map(|a| a.addr()) == Some(programmed))
                        .map(|n| format!("node {}", n.name))
                        .unwrap_or_else(|| "no node of the cluster".to_owned());
                    problems.push(format!(
                        "its route goes to {programmed} ({holder}), but the block belongs to node {node} at {node_addr}"
                    ));
                }
                let encap_flags = route.flags & (route_flags::ENCAP_VXLAN | route_flags::ENCAP_IPIP);
                let (want_flags, want_mac) = match encap {
                    Encap::None => (0, None),
                    Encap::Vxlan { vtep_mac } => (route_flags::ENCAP_VXLAN, Some(*vtep_mac)),
                    Encap::Ipip => (route_flags::ENCAP_IPIP, None),
                };
                if encap_flags != want_flags {
                    problems.push(format!(
                        "its route encapsulates as {}, the pool says {}",
                        encap_name(encap_flags),
                        encap_name(want_flags)
                    ));
                } else if let Some(want) = want_mac {
                    if route.mac != want.0 {
                        problems.push(format!(
                            "its route's VTEP MAC is {}, but node {node}'s VTEP MAC (spec.vxlanTunnelMACAddr) is {want}",
                            MacAddr(route.mac)
                        ));
                    }
                }
            }
        }
        if !problems.is_empty() {
            covered.insert(key);
            findings.push(Finding::new("routes", object, problems.join("; "), FIX_AGENT));
        }
    }
    (findings, covered)
}

fn encap_name(flags: u32) -> &'static str {
    if flags & route_flags::ENCAP_VXLAN != 0 {
        "VXLAN"
    } else if flags & route_flags::ENCAP_IPIP != 0 {
        "IPIP"
    } else {
        "none"
    }
}

/// A routes map key for `prefix`.
pub fn route_key(prefix: &Ipv4Net) -> RouteKey {
    (u32::from(prefix.prefix_len()), prefix.network().octets())
}

/// What the pinned maps hold; a map that could not be read carries the reason.
#[derive(Debug)]
pub struct ObservedMaps {
    /// `node_v1`, slot 0.
    pub node: Result<NodeConfig, String>,
    /// `routes_v1`.
    pub routes: Result<BTreeMap<RouteKey, Route>, String>,
    /// `workloads_v1`.
    pub workloads: Result<BTreeMap<u32, Workload>, String>,
    /// `peers_v1`.
    pub peers: Result<BTreeMap<Ipv4Bytes, Peer>, String>,
}

/// Compares the pinned maps with the entries the datastore implies: every missing, extra and
/// different entry is a finding. Route keys in `skip` were already reported by
/// [`check_remote_blocks`]. `names` gives interface names by ifindex, for the messages.
pub fn diff_maps(
    expected: &MapEntries,
    observed: &ObservedMaps,
    skip: &BTreeSet<RouteKey>,
    names: &BTreeMap<u32, String>,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let unreadable = |map: &str, error: &String| {
        Finding::new(
            "maps",
            map.to_owned(),
            format!("the pinned map cannot be read: {error}"),
            "start the agent on this node (`dataplane run`), or pass the --pin-path it uses",
        )
    };

    match &observed.node {
        Err(error) => findings.push(unreadable(NODE_MAP, error)),
        Ok(node) => {
            let differences = node_differences(&expected.node, node);
            if !differences.is_empty() {
                findings.push(Finding::new(
                    "maps",
                    NODE_MAP,
                    format!("this node's settings differ from the datastore: {}", differences.join("; ")),
                    FIX_AGENT,
                ));
            }
        }
    }

    match &observed.routes {
        Err(error) => findings.push(unreadable(ROUTES_MAP, error)),
        Ok(routes) => {
            let text = |key: &RouteKey, route: &Route| route_text(&prefix_of(key), route, names);
            findings.extend(entry_findings(
                &expected.routes,
                routes,
                |key| skip.contains(key),
                |key| format!("{ROUTES_MAP} {}", prefix_of(key)),
                |key, difference| match difference {
                    Difference::Missing { want } => format!("missing: the datastore says {}", text(key, want)),
                    Difference::Differs { have, want } => {
                        format!("holds {}, the datastore says {}", text(key, have), text(key, want))
                    }
                    Difference::Extra { have } => {
                        format!("extra: holds {}, which the datastore does not have", text(key, have))
                    }
                },
            ));
        }
    }

    match &observed.workloads {
        Err(error) => findings.push(unreadable(WORKLOADS_MAP, error)),
        Ok(workloads) => findings.extend(entry_findings(
            &expected.workloads,
            workloads,
            |_| false,
            |index| match names.get(index) {
                Some(name) => format!("{WORKLOADS_MAP} ifindex {index} ({name})"),
                None => format!("{WORKLOADS_MAP} ifindex {index} (no such interface)"),
            },
            |_, difference| match difference {
                Difference::Missing { want } => format!(
                    "missing: the datastore says {}; its packets are dropped as drop_unknown_workload",
                    workload_text(want)
                ),
                Difference::Differs { have, want } => {
                    format!("holds {}, the datastore says {}", workload_text(have), workload_text(want))
                }
                Difference::Extra { have } => {
                    format!("extra: holds {}, which is no workload of this node", workload_text(have))
                }
            },
        )),
    }

    match &observed.peers {
        Err(error) => findings.push(unreadable(PEERS_MAP, error)),
        Ok(peers) => findings.extend(entry_findings(
            &expected.peers,
            peers,
            |_| false,
            |addr| format!("{PEERS_MAP} {}", Ipv4Addr::from(*addr)),
            |_, difference| match difference {
                Difference::Missing { want } => format!(
                    "missing: tunnel packets from this peer ({}) are dropped as drop_unknown_peer",
                    peer_text(want)
                ),
                Difference::Differs { have, want } => {
                    format!("accepts {}, the datastore says {}", peer_text(have), peer_text(want))
                }
                Difference::Extra { have } => {
                    format!("extra: accepts {} from an address that is no tunnelling peer", peer_text(have))
                }
            },
        )),
    }
    findings
}

/// How one map entry differs from what the datastore implies.
enum Difference<'a, V> {
    /// The datastore implies the entry, the map lacks it.
    Missing { want: &'a V },
    /// The map holds the key with another value.
    Differs { have: &'a V, want: &'a V },
    /// The map holds an entry the datastore does not imply.
    Extra { have: &'a V },
}

/// One finding per key of `want` that `have` lacks or holds differently (in key order), then one
/// per key of `have` that `want` lacks: the agent's own [`diff`], in words. Keys for which `skip`
/// holds are not compared; `object` names the entry and `say` words the difference.
fn entry_findings<K: Ord + Clone, V: PartialEq + Clone>(
    want: &BTreeMap<K, V>,
    have: &BTreeMap<K, V>,
    skip: impl Fn(&K) -> bool,
    object: impl Fn(&K) -> String,
    say: impl Fn(&K, Difference<'_, V>) -> String,
) -> Vec<Finding> {
    let finding = |key: &K, difference| Finding::new("maps", object(key), say(key, difference), FIX_AGENT);
    let Changes { upserts, removals } = diff(have, want);
    let mut findings = Vec::new();
    for (key, wanted) in upserts.iter().filter(|(key, _)| !skip(key)) {
        findings.push(match have.get(key) {
            None => finding(key, Difference::Missing { want: wanted }),
            Some(held) => finding(key, Difference::Differs { have: held, want: wanted }),
        });
    }
    for key in removals.iter().filter(|key| !skip(key)) {
        if let Some(held) = have.get(key) {
            findings.push(finding(key, Difference::Extra { have: held }));
        }
    }
    findings
}

/// The fields of the node map that differ, in words. The SNAT port range and the conntrack
/// timeouts are the agent's own settings (`--nat-port-range`, `--conntrack-timeouts`), not the
/// datastore's: they are only checked for sanity.
fn node_differences(want: &NodeConfig, have: &NodeConfig) -> Vec<String> {
    let mut out = Vec::new();
    if have.addr != want.addr {
        out.push(format!("addr is {}, should be {}", Ipv4Addr::from(have.addr), Ipv4Addr::from(want.addr)));
    }
    if have.uplink_ifindex != want.uplink_ifindex {
        out.push(format!("uplink_ifindex is {}, should be {}", have.uplink_ifindex, want.uplink_ifindex));
    }
    if have.uplink_mtu != want.uplink_mtu {
        out.push(format!("uplink_mtu is {}, should be {}", have.uplink_mtu, want.uplink_mtu));
    }
    if have.vni != want.vni {
        out.push(format!("vni is {}, should be {}", have.vni, want.vni));
    }
    if have.vxlan_port != want.vxlan_port {
        out.push(format!("vxlan_port is {}, should be {}", have.vxlan_port, want.vxlan_port));
    }
    if have.vtep_mac != want.vtep_mac {
        out.push(format!("vtep_mac is {}, should be {}", MacAddr(have.vtep_mac), MacAddr(want.vtep_mac)));
    }
    if have.nat_port_min == 0 || have.nat_port_min > have.nat_port_max {
        out.push(format!("the SNAT port range {}-{} is empty", have.nat_port_min, have.nat_port_max));
    }
    let t = &have.timeouts;
    if [t.tcp_new_s, t.tcp_established_s, t.tcp_closing_s, t.udp_s, t.icmp_s].contains(&0) {
        out.push(format!("a conntrack timeout is 0 s, so translated flows expire at once: {t:?}"));
    }
    out
}

fn prefix_of(key: &RouteKey) -> Ipv4Net {
    // Keys come from the map (prefix length <= 32 by the trie's rules) or from a plan.
    Ipv4Net::new(Ipv4Addr::from(key.1), key.0.min(32) as u8).unwrap_or_else(|_| Ipv4Net::from(Ipv4Addr::from(key.1)))
}

/// A route entry in words, as `dataplane routes` shows it.
fn route_text(prefix: &Ipv4Net, route: &Route, names: &BTreeMap<u32, String>) -> String {
    let row = routes::describe(*prefix, route);
    let mut text = row.kind.to_owned();
    if let Some(addr) = row.node_addr {
        text.push_str(&format!(" via {addr}"));
    }
    if !row.encap.is_empty() {
        text.push_str(&format!(" encap {}", row.encap));
    }
    if let Some(index) = row.ifindex {
        match names.get(&index) {
            Some(name) => text.push_str(&format!(" ifindex {index} ({name})")),
            None => text.push_str(&format!(" ifindex {index} (no such interface)")),
        }
    }
    if let Some(mac) = row.mac {
        text.push_str(&format!(" mac {mac}"));
    }
    if row.nat_outgoing {
        text.push_str(" natOutgoing");
    }
    if !row.in_pool {
        text.push_str(" (outside the pools)");
    }
    text
}

/// A workloads map entry in words: the pod's address and MAC, and `natOutgoing` when its pool
/// has it (the flag the hot path reads to decide SNAT).
pub fn workload_text(workload: &Workload) -> String {
    let mut text = format!("pod {} mac {}", Ipv4Addr::from(workload.addr), MacAddr(workload.mac));
    if workload.flags & workload_flags::NAT_OUTGOING != 0 {
        text.push_str(" natOutgoing");
    }
    text
}

fn peer_text(peer: &Peer) -> String {
    let mut kinds = Vec::new();
    if peer.flags & dataplane_common::peer_flags::VXLAN != 0 {
        kinds.push("VXLAN");
    }
    if peer.flags & dataplane_common::peer_flags::IPIP != 0 {
        kinds.push("IPIP");
    }
    if kinds.is_empty() {
        "nothing".to_owned()
    } else {
        kinds.join(" and ")
    }
}

// ---------------------------------------------------------------------------------------------
// Program attachments.

/// A TC hook of an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    /// TC ingress.
    Ingress,
    /// TC egress.
    Egress,
}

impl Hook {
    fn attach_type(self) -> TcAttachType {
        match self {
            Hook::Ingress => TcAttachType::Ingress,
            Hook::Egress => TcAttachType::Egress,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        }
    }
}

/// A program that should be attached to a hook, under its pin name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedLink {
    /// The interface.
    pub interface: String,
    /// The hook.
    pub hook: Hook,
    /// The program's name.
    pub program: &'static str,
}

/// The links the agent pins for `plan`: the uplink's ingress and egress, the VXLAN GRO anchor's
/// ingress when the node receives VXLAN and the anchor exists, and the ingress and egress of every
/// local workload whose interface exists (the agent attaches nothing to a missing one).
pub fn expected_links(plan: &Plan, uplink: &str, interfaces: &BTreeMap<String, u32>) -> BTreeMap<String, ExpectedLink> {
    let mut links = BTreeMap::new();
    let mut want = |interface: &str, hook: Hook, program: &'static str| {
        links.insert(
            link_pin_name(hook.attach_type(), interface),
            ExpectedLink { interface: interface.to_owned(), hook, program },
        );
    };
    want(uplink, Hook::Ingress, PROG_FROM_UPLINK);
    want(uplink, Hook::Egress, PROG_TO_UPLINK);
    if vxlan_anchor::wanted(plan) && interfaces.contains_key(ANCHOR_DEVICE) {
        want(ANCHOR_DEVICE, Hook::Ingress, PROG_VXLAN_ANCHOR);
    }
    for interface in plan.workloads.keys() {
        if interfaces.contains_key(interface) {
            want(interface, Hook::Ingress, PROG_FROM_WORKLOAD);
            want(interface, Hook::Egress, PROG_TO_WORKLOAD);
        }
    }
    links
}

/// The hook and interface a link pin name stands for (the reverse of `link_pin_name`).
pub fn parse_link_pin_name(name: &str) -> Option<(Hook, String)> {
    let (hook, escaped) = if let Some(rest) = name.strip_prefix("ingress_") {
        (Hook::Ingress, rest)
    } else if let Some(rest) = name.strip_prefix("egress_") {
        (Hook::Egress, rest)
    } else {
        return None;
    };
    // Undo the escaping in the opposite order: %2e first, then %25.
    Some((hook, crate::backend::bpf::unescape_pin_name(escaped)))
}

/// A program attached to a tcx hook: its id and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachedProgram {
    /// The program's id.
    pub id: u32,
    /// The program's name (truncated by the kernel to 15 characters).
    pub name: String,
}

/// What is attached on the node, as observed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedLinks {
    /// Every pin in `<pin path>/links`: the id of the program its link runs, or why it could not
    /// be read.
    pub pins: BTreeMap<String, Result<u32, String>>,
    /// For every expected link (by pin name): the programs on its hook, or why the hook could not
    /// be queried.
    pub hooks: BTreeMap<String, Result<Vec<AttachedProgram>, String>>,
    /// For every expected link (by pin name): the filters on its clsact hook (none without a
    /// clsact qdisc), or why they could not be listed.
    pub filters: BTreeMap<String, Result<Vec<Filter>, String>>,
    /// Our clsact filters on hooks no expected link names: (interface, hook) -> filter name.
    pub stray_filters: BTreeMap<(String, Hook), String>,
}

/// Whether the tcx hook of the expected link `pin` runs `program`.
fn on_tcx_hook(observed: &ObservedLinks, pin: &str, program: &str) -> bool {
    matches!(observed.hooks.get(pin), Some(Ok(programs)) if programs.iter().any(|p| p.name == program))
}

/// Compares the expected attachments with what the pins, the tcx hooks and the clsact filters
/// show. A program counts as attached by either method: a pinned tcx link running it, or our
/// clsact filter running it; both at once is a problem of its own (a half-finished switch).
pub fn check_links(
    expected: &BTreeMap<String, ExpectedLink>,
    observed: &ObservedLinks,
    interfaces: &BTreeMap<String, u32>,
    links_dir: &Path,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (pin, link) in expected {
        let object = format!("{} {} of {}", link.program, link.hook.name(), link.interface);
        let pin_path = links_dir.join(pin);
        let filter = match observed.filters.get(pin) {
            Some(Ok(filters)) => filters.iter().find(|f| f.is_ours()),
            _ => None,
        };
        if let Some(filter) = filter {
            let name = filter.name.as_deref().unwrap_or("");
            let problem = if name != clsact::filter_name(link.program) {
                Some(format!("our clsact {} filter of {} runs {name}", link.hook.name(), link.interface))
            } else if observed.pins.contains_key(pin) || on_tcx_hook(observed, pin, link.program) {
                Some(format!(
                    "attached twice: by our clsact filter and through tcx (link pin {}) (a switch of attach \
                     method left half done)",
                    pin_path.display()
                ))
            } else {
                None
            };
            if let Some(problem) = problem {
                findings.push(Finding::new(
                    "programs",
                    object,
                    problem,
                    "restart the agent (`dataplane run`): it attaches each program by one method and removes the other",
                ));
            }
            continue;
        }
        let attached = match observed.hooks.get(pin) {
            Some(Ok(programs)) => programs.iter().filter(|p| p.name == link.program).map(|p| p.id).collect(),
            // No tcx on this kernel, and no filter of ours either.
            Some(Err(error)) if !observed.pins.contains_key(pin) => {
                let filters = match observed.filters.get(pin) {
                    Some(Err(error)) => format!("its clsact filters cannot be listed ({error})"),
                    _ => "no clsact filter of ours is on it".to_owned(),
                };
                findings.push(Finding::new(
                    "programs",
                    object,
                    format!(
                        "not attached: {filters}, and the tcx {} hook of {} cannot be queried ({error}): packets on \
                         this hook bypass the fast path",
                        link.hook.name(),
                        link.interface
                    ),
                    "restart the agent (`dataplane run`) as root in the node's network namespace: it attaches every \
                     program at start",
                ));
                continue;
            }
            Some(Err(error)) => {
                findings.push(Finding::new(
                    "programs",
                    object,
                    format!("the tcx {} hook of {} cannot be queried: {error}", link.hook.name(), link.interface),
                    "run the check as root in the node's network namespace",
                ));
                continue;
            }
            None => Vec::new(),
        };
        let problem = match (observed.pins.get(pin), attached.is_empty()) {
            (None, true) => Some(format!(
                "not attached: no clsact filter of ours, and no link is pinned at {}: packets on this hook bypass \
                 the fast path",
                pin_path.display()
            )),
            (None, false) => Some(format!(
                "attached, but its link is not pinned at {}: it goes away with the process that holds it",
                pin_path.display()
            )),
            (Some(Err(error)), _) => Some(format!("the pinned link {} cannot be read: {error}", pin_path.display())),
            (Some(Ok(_)), true) => Some(format!(
                "a link is pinned at {} but the program is not attached to the hook (the interface was re-created?)",
                pin_path.display()
            )),
            (Some(Ok(id)), false) if !attached.contains(id) => {
                Some(format!("the pinned link runs program id {id}, but the hook runs {attached:?}"))
            }
            (Some(Ok(_)), false) => None,
        };
        if let Some(problem) = problem {
            findings.push(Finding::new(
                "programs",
                object,
                problem,
                "restart the agent (`dataplane run`): it attaches every program and pins its link at start",
            ));
        }
    }
    // XDP links are judged by `check_xdp`.
    for pin in observed.pins.keys().filter(|pin| !expected.contains_key(*pin) && xdp::parse_pin_name(pin).is_none()) {
        let pin_path = links_dir.join(pin);
        let (object, problem) = match parse_link_pin_name(pin) {
            Some((hook, interface)) if !interfaces.contains_key(&interface) => (
                format!("link {pin}"),
                format!("stale: pinned for the {} hook of {interface}, which no longer exists", hook.name()),
            ),
            Some((hook, interface)) => (
                format!("link {pin}"),
                format!(
                    "a program stays attached to the {} hook of {interface}, which the datastore does not give \
                     this node",
                    hook.name()
                ),
            ),
            None => (format!("link {pin}"), "not a link name the agent uses".to_owned()),
        };
        findings.push(Finding::new(
            "programs",
            object,
            problem,
            format!(
                "restart the agent (it removes links it does not want), or remove the pin: rm {}",
                pin_path.display()
            ),
        ));
    }
    for ((interface, hook), name) in &observed.stray_filters {
        findings.push(Finding::new(
            "programs",
            format!("filter {name} on {} of {interface}", hook.name()),
            format!(
                "our clsact filter stays on the {} hook of {interface}, which the datastore does not give this node",
                hook.name()
            ),
            format!(
                "restart the agent (it removes filters it does not want), or remove it: tc filter del dev {interface} \
                 {} pref {} handle {:#x} bpf",
                hook.name(),
                clsact::FILTER_PRIORITY,
                clsact::FILTER_HANDLE
            ),
        ));
    }
    findings
}

/// Compares the uplink's XDP program with its pinned link: `expected` says whether the agent
/// attaches one by default (`--xdp auto`: not on a veth) — a pinned one is checked either way;
/// `pins` as [`ObservedLinks::pins`] holds them (the XDP ones are `xdp_<interface>`), `kernel` is
/// what the kernel reports on the uplink (mode and program id, None without XDP).
pub fn check_xdp(
    uplink: &str,
    expected: bool,
    pins: &BTreeMap<String, Result<u32, String>>,
    kernel: &Result<Option<(XdpMode, u32)>, String>,
    links_dir: &Path,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let object = format!("{PROG_XDP_UPLINK} XDP of {uplink}");
    let pin = xdp::pin_name(uplink);
    let pin_path = links_dir.join(&pin);
    let restart = "restart the agent (`dataplane run`): it attaches the XDP program natively or generically and pins \
                   its link at start (its \"fast path programmed\" line says xdp=native|generic|none)";
    let problem = match (pins.get(&pin), kernel) {
        (None, Ok(_)) if !expected => None,
        (_, Err(error)) => Some(format!("the XDP state of {uplink} cannot be read: {error}")),
        (None, Ok(None)) => Some(format!(
            "not attached: {uplink} has no XDP program and no link is pinned at {}: tunnel packets from non-peers \
             each cost an skb before from_uplink drops them",
            pin_path.display()
        )),
        (None, Ok(Some((mode, id)))) => Some(format!(
            "{uplink} runs XDP program id {id} ({mode}), but no link is pinned at {}: another tool's program, or \
             one that goes away with the process that holds it",
            pin_path.display()
        )),
        (Some(Err(error)), _) => Some(format!("the pinned link {} cannot be read: {error}", pin_path.display())),
        (Some(Ok(_)), Ok(None)) => Some(format!(
            "a link is pinned at {} but {uplink} runs no XDP program (the interface was re-created?)",
            pin_path.display()
        )),
        (Some(Ok(pinned)), Ok(Some((_, id)))) if pinned != id => {
            Some(format!("the pinned link runs program id {pinned}, but {uplink} runs XDP program id {id}"))
        }
        (Some(Ok(_)), Ok(Some(_))) => None,
    };
    if let Some(problem) = problem {
        findings.push(Finding::new("programs", object, problem, restart));
    }
    for (other, interface) in pins.keys().filter_map(|p| xdp::parse_pin_name(p).map(|i| (p, i))) {
        if interface != uplink {
            findings.push(Finding::new(
                "programs",
                format!("link {other}"),
                format!("an XDP link is pinned for {interface}, which is not the uplink {uplink}"),
                format!(
                    "restart the agent with the right --uplink, or remove the pin: rm {}",
                    links_dir.join(other).display()
                ),
            ));
        }
    }
    findings
}

// ---------------------------------------------------------------------------------------------
// Datastore problems.

/// The datastore's and the planner's problems as findings, leaving out those about an object a
/// check above already reported (the planner also skips overlapping pools and blocks outside
/// every pool, and says so).
pub fn problem_findings(check: &'static str, problems: &[Problem], existing: &[Finding]) -> Vec<Finding> {
    let reported: BTreeSet<&str> = existing.iter().map(|f| f.object.as_str()).collect();
    let mut findings = Vec::new();
    for problem in problems {
        let object = format!("{} {}", problem.kind, problem.name);
        if reported.contains(object.as_str()) {
            continue;
        }
        findings.push(Finding::new(
            check,
            object,
            format!("{}: {}", problem.field, problem.message),
            format!("correct {} of {} {} in the datastore", problem.field, problem.kind, problem.name),
        ));
    }
    findings
}

// ---------------------------------------------------------------------------------------------
// The kernel's routes.

/// A route of the kernel's main table, as `/proc/net/route` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelRoute {
    /// The destination prefix.
    pub dst: Ipv4Net,
    /// The output interface (`*` for blackhole and unreachable routes).
    pub interface: String,
}

/// Parses `/proc/net/route` (the main table of the reader's network namespace). Addresses are
/// printed as the raw 32-bit word in host order, so the bytes are taken back in host order.
pub fn parse_proc_net_route(text: &str) -> Vec<KernelRoute> {
    let mut routes = Vec::new();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(interface), Some(dst), Some(mask)) = (fields.first(), fields.get(1), fields.get(7)) else {
            continue;
        };
        let (Ok(dst), Ok(mask)) = (u32::from_str_radix(dst, 16), u32::from_str_radix(mask, 16)) else {
            continue;
        };
        let dst = Ipv4Addr::from(dst.to_ne_bytes());
        let prefix_len = u32::from(Ipv4Addr::from(mask.to_ne_bytes())).count_ones() as u8;
        if let Ok(dst) = Ipv4Net::new(dst, prefix_len) {
            routes.push(KernelRoute { dst, interface: (*interface).to_owned() });
        }
    }
    routes
}

// ---------------------------------------------------------------------------------------------
// Reading the pinned maps (also used by `dataplane trace`).

fn open_pinned(pin_path: &Path, name: &str) -> anyhow::Result<MapData> {
    let path = pin_path.join(name);
    MapData::from_pin(&path).with_context(|| {
        format!("opening {}: is an agent running with --pin-path {}?", path.display(), pin_path.display())
    })
}

/// The pinned node map's single value.
pub fn read_node_map(pin_path: &Path) -> anyhow::Result<NodeConfig> {
    let map: Array<MapData, NodeConfig> = Array::try_from(Map::Array(open_pinned(pin_path, NODE_MAP)?))
        .context("the node map has an unexpected layout")?;
    map.get(&0, 0).context("reading the node map")
}

/// Every entry of the pinned routes map.
pub fn read_routes_map(pin_path: &Path) -> anyhow::Result<BTreeMap<RouteKey, Route>> {
    let trie: LpmTrie<MapData, Ipv4Bytes, Route> = LpmTrie::try_from(Map::LpmTrie(open_pinned(pin_path, ROUTES_MAP)?))
        .context("the routes map has an unexpected layout")?;
    trie.iter()
        .map(|entry| entry.map(|(key, route)| ((key.prefix_len(), key.data()), route)))
        .collect::<Result<_, _>>()
        .context("reading the routes map")
}

/// Every entry of the pinned workloads map.
pub fn read_workloads_map(pin_path: &Path) -> anyhow::Result<BTreeMap<u32, Workload>> {
    let map: HashMap<MapData, u32, Workload> = HashMap::try_from(Map::HashMap(open_pinned(pin_path, WORKLOADS_MAP)?))
        .context("the workloads map has an unexpected layout")?;
    map.iter().collect::<Result<_, _>>().context("reading the workloads map")
}

/// Every entry of the pinned peers map.
pub fn read_peers_map(pin_path: &Path) -> anyhow::Result<BTreeMap<Ipv4Bytes, Peer>> {
    let map: HashMap<MapData, Ipv4Bytes, Peer> = HashMap::try_from(Map::HashMap(open_pinned(pin_path, PEERS_MAP)?))
        .context("the peers map has an unexpected layout")?;
    map.iter().collect::<Result<_, _>>().context("reading the peers map")
}

/// Every entry of the pinned conntrack map.
pub fn read_conntrack_map(pin_path: &Path) -> anyhow::Result<BTreeMap<FlowKey, NatFlow>> {
    let map: HashMap<MapData, FlowKey, NatFlow> =
        HashMap::try_from(Map::HashMap(open_pinned(pin_path, CONNTRACK_MAP)?))
            .context("the conntrack map has an unexpected layout")?;
    map.iter().collect::<Result<_, _>>().context("reading the conntrack map")
}

/// Every pinned map the checks compare, each read on its own so one bad map does not hide the
/// others.
pub fn observe_maps(pin_path: &Path) -> ObservedMaps {
    let text = |error: anyhow::Error| format!("{error:#}");
    ObservedMaps {
        node: read_node_map(pin_path).map_err(text),
        routes: read_routes_map(pin_path).map_err(text),
        workloads: read_workloads_map(pin_path).map_err(text),
        peers: read_peers_map(pin_path).map_err(text),
    }
}

/// The pins under `<pin path>/links`, the programs and clsact filters on the hook of every
/// expected link, and our filters on any other hook of `interfaces`.
pub fn observe_links(
    pin_path: &Path,
    expected: &BTreeMap<String, ExpectedLink>,
    interfaces: &BTreeMap<String, u32>,
) -> ObservedLinks {
    let mut observed = ObservedLinks::default();
    let dir = pin_path.join(LINKS_DIR);
    if let Ok(entries) = fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let program = PinnedLink::from_pin(entry.path())
                .map_err(|e| e.to_string())
                .and_then(|pinned| FdLink::from(pinned).info().map_err(|e| e.to_string()))
                .map(|info| info.program_id());
            observed.pins.insert(name, program);
        }
    }
    for (pin, link) in expected {
        let programs = SchedClassifier::query_tcx(&link.interface, link.hook.attach_type())
            .map(|(_, infos)| {
                infos
                    .iter()
                    .map(|info| AttachedProgram { id: info.id(), name: info.name_as_str().unwrap_or("").to_owned() })
                    .collect()
            })
            .map_err(|e| format!("{e:#}"));
        observed.hooks.insert(pin.clone(), programs);
        let filters = match sys::ifindex(&link.interface) {
            Some(ifindex) => clsact::filters(ifindex, link.hook.attach_type()).map_err(|e| e.to_string()),
            None => Ok(Vec::new()),
        };
        observed.filters.insert(pin.clone(), filters);
    }
    for (interface, ifindex) in interfaces {
        for hook in [Hook::Ingress, Hook::Egress] {
            if expected.contains_key(&link_pin_name(hook.attach_type(), interface)) {
                continue;
            }
            // A hook that cannot be listed has nothing of ours that could be found either.
            let ours =
                clsact::filters(*ifindex, hook.attach_type()).unwrap_or_default().into_iter().find(Filter::is_ours);
            if let Some(filter) = ours {
                observed.stray_filters.insert((interface.clone(), hook), filter.name.unwrap_or_default());
            }
        }
    }
    observed
}

// ---------------------------------------------------------------------------------------------
// The netlink fallback (`dataplane run --mode netlink`, or auto on a kernel without the fast path).

/// `vxlan.calico` as observed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VxlanDevice {
    /// The device is administratively up.
    pub up: bool,
    /// Its MAC: the node's VTEP MAC.
    pub mac: Option<MacAddr>,
    /// Its VNI.
    pub vni: Option<u32>,
    /// Its local address: the node's address.
    pub local: Option<Ipv4Addr>,
}

/// A route of the main table, as observed (the first one of its prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObservedRoute {
    /// `blackhole <prefix>`.
    Blackhole,
    /// `<prefix> via <gateway> dev <interface> [onlink]`.
    Via {
        /// The next hop.
        gateway: Ipv4Addr,
        /// The output interface's name.
        interface: String,
    },
    /// `<prefix> dev <interface> scope link` or any other shape.
    Other,
}

/// What the netlink fallback programmed, as observed in this network namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedFallback {
    /// `vxlan.calico`, if it exists.
    pub device: Option<VxlanDevice>,
    /// Permanent neighbours on `vxlan.calico`: VTEP address -> MAC.
    pub neighbours: BTreeMap<Ipv4Addr, MacAddr>,
    /// FDB entries with a destination on `vxlan.calico`: MAC -> peer node address.
    pub fdb: BTreeMap<MacAddr, Ipv4Addr>,
    /// Main-table routes by prefix.
    pub routes: BTreeMap<Ipv4Net, ObservedRoute>,
    /// How many main-table routes carry the agent's protocol number (`proto 200`).
    pub ours: usize,
    /// The natOutgoing table (`table ip dataplane`), as far as it exists.
    pub nat: nftables::Observed,
    /// Why the natOutgoing table could not be read, if it could not.
    pub nat_error: Option<String>,
}

impl ObservedFallback {
    /// Whether the netlink fallback has programmed this node: its device, its routes or its
    /// natOutgoing table exist.
    pub fn present(&self) -> bool {
        self.device.is_some() || self.ours > 0 || self.nat.table
    }
}

const FIX_FALLBACK: &str = "the agent in netlink mode rewrites this on every resync (30 s) and on start: if it \
                            persists, restart it (`dataplane run --mode netlink`) and read its log";

/// The netlink fallback against the plan, as the troubleshooting page checks Calico's VXLAN mode:
/// `vxlan.calico` up with this node's VTEP MAC, a route per remote block via the owner's VTEP,
/// permanent neighbours and FDB entries with the peers' VTEP MACs, blackholes for local blocks.
pub fn check_fallback(plan: &Plan, intent: &Intent, observed: &ObservedFallback, uplink: &str) -> Vec<Finding> {
    let mut findings = Vec::new();
    let device_object = format!("device {VXLAN_DEVICE}");
    if let Some(want) = &intent.vxlan {
        match &observed.device {
            None => findings.push(Finding::new(
                "fallback",
                device_object.clone(),
                "does not exist, so no VXLAN block is reachable",
                FIX_FALLBACK,
            )),
            Some(device) => {
                if !device.up {
                    findings.push(Finding::new(
                        "fallback",
                        device_object.clone(),
                        "is down, so every VXLAN block is unreachable",
                        format!("ip link set {VXLAN_DEVICE} up"),
                    ));
                }
                if device.mac != Some(want.mac) {
                    findings.push(Finding::new(
                        "fallback",
                        device_object.clone(),
                        format!(
                            "its MAC is {}, but this node's VTEP MAC (spec.vxlanTunnelMACAddr) is {}: peers address \
                             their packets to the latter",
                            device.mac.map(|m| m.to_string()).unwrap_or_else(|| "unset".into()),
                            want.mac
                        ),
                        format!("ip link set {VXLAN_DEVICE} address {}", want.mac),
                    ));
                }
                if device.vni != Some(VXLAN_VNI) || device.local != Some(want.local) {
                    findings.push(Finding::new(
                        "fallback",
                        device_object.clone(),
                        format!(
                            "has VNI {:?} and local {:?}; Calico's are VNI {VXLAN_VNI} and the node's address {}",
                            device.vni, device.local, want.local
                        ),
                        format!("ip link del {VXLAN_DEVICE}, then restart the agent, which makes it again"),
                    ));
                }
            }
        }
    }

    // The peers' VTEPs: owner node by VTEP address, for the messages.
    let owners: BTreeMap<Ipv4Addr, &str> = plan
        .routes
        .iter()
        .filter_map(|(prefix, route)| match (&route.target, intent.routes.get(prefix)) {
            (RouteTarget::RemoteBlock { node, .. }, Some(RouteIntent::Vxlan { vtep })) => Some((*vtep, node.as_str())),
            _ => None,
        })
        .collect();
    let owner = |vtep: &Ipv4Addr| owners.get(vtep).map(|n| format!("node {n}")).unwrap_or_else(|| "a peer".into());

    for (vtep, mac) in &intent.neighbours {
        let fix = format!("ip neigh replace {vtep} lladdr {mac} dev {VXLAN_DEVICE} nud permanent");
        let object = format!("neighbour {vtep} dev {VXLAN_DEVICE}");
        match observed.neighbours.get(vtep) {
            None => findings.push(Finding::new(
                "fallback",
                object,
                format!("no permanent neighbour for the VTEP of {}", owner(vtep)),
                fix,
            )),
            Some(have) if have != mac => findings.push(Finding::new(
                "fallback",
                object,
                format!("lladdr {have}, but the VTEP MAC of {} is {mac}", owner(vtep)),
                fix,
            )),
            Some(_) => {}
        }
    }
    for (mac, dst) in &intent.fdb {
        let fix = format!("bridge fdb replace {mac} dev {VXLAN_DEVICE} dst {dst} self permanent");
        let object = format!("fdb {mac} dev {VXLAN_DEVICE}");
        match observed.fdb.get(mac) {
            None => findings.push(Finding::new("fallback", object, format!("no FDB entry sends it to {dst}"), fix)),
            Some(have) if have != dst => findings.push(Finding::new(
                "fallback",
                object,
                format!("the FDB entry sends it to {have}, but its node is at {dst}"),
                fix,
            )),
            Some(_) => {}
        }
    }

    for (prefix, want) in &intent.routes {
        let have = observed.routes.get(prefix);
        let (ok, fix) = match want {
            RouteIntent::Blackhole => {
                (matches!(have, Some(ObservedRoute::Blackhole)), format!("ip route replace blackhole {prefix}"))
            }
            RouteIntent::Vxlan { vtep } => (
                matches!(have, Some(ObservedRoute::Via { gateway, interface }) if gateway == vtep && interface == VXLAN_DEVICE),
                format!("ip route replace {prefix} via {vtep} dev {VXLAN_DEVICE} onlink"),
            ),
            RouteIntent::Direct { peer } => (
                matches!(have, Some(ObservedRoute::Via { interface, .. }) if interface == uplink),
                format!("ip route replace {prefix} via {peer} dev {uplink} onlink"),
            ),
            RouteIntent::Ipip { peer, .. } => (
                matches!(have, Some(ObservedRoute::Via { gateway, interface }) if gateway == peer && interface == IPIP_DEVICE),
                format!("ip route replace {prefix} via {peer} dev {IPIP_DEVICE} onlink"),
            ),
            // The workloads' host routes are checked with the workloads.
            RouteIntent::Workload { .. } => continue,
        };
        if ok {
            continue;
        }
        let owner = match plan.routes.get(prefix).map(|r| &r.target) {
            Some(RouteTarget::RemoteBlock { node, .. }) => format!("block of node {node}"),
            Some(RouteTarget::LocalBlock) => "block of this node".to_owned(),
            _ => "prefix".to_owned(),
        };
        let problem = match have {
            None => format!("the {owner} has no route"),
            Some(ObservedRoute::Blackhole) => format!("the {owner} is blackholed"),
            Some(ObservedRoute::Via { gateway, interface }) => {
                format!("the {owner} is routed via {gateway} dev {interface}")
            }
            Some(ObservedRoute::Other) => format!("the {owner} has a route of another shape"),
        };
        findings.push(Finding::new("fallback", format!("route {prefix}"), problem, fix));
    }
    findings.extend(check_masquerade(plan, observed));
    findings
}

/// natOutgoing of the fallback: Calico's masquerade rule and pool sets in `table ip dataplane`,
/// exactly while some pool has natOutgoing.
fn check_masquerade(plan: &Plan, observed: &ObservedFallback) -> Vec<Finding> {
    let table = format!("table ip {}", nftables::TABLE);
    if let Some(error) = &observed.nat_error {
        return vec![Finding::new(
            "fallback",
            table,
            format!("cannot be read, so natOutgoing was not checked: {error}"),
            "run the check as root in the node's network namespace, on a kernel with nf_tables",
        )];
    }
    let wanted = nftables::masquerade(plan);
    let mut findings = Vec::new();
    for change in nftables::changes(wanted.as_ref(), &observed.nat) {
        let (object, problem) = match &change {
            nftables::Change::AddTable => {
                (table.clone(), "does not exist, so pods of natOutgoing pools leave with their own addresses".into())
            }
            nftables::Change::DeleteTable => {
                (table.clone(), "still masquerades, but no pool has natOutgoing any more".into())
            }
            nftables::Change::AddSet(set) => (format!("set {set}"), "does not exist".into()),
            nftables::Change::FlushSet(set) => {
                let (have, want) = match (set, &wanted) {
                    (&nftables::MASQ_POOLS_SET, Some(w)) => (observed.nat.sets.get(*set), &w.masq_pools),
                    (_, Some(w)) => (observed.nat.sets.get(*set), &w.all_pools),
                    _ => continue,
                };
                let have = have.map(nftables::describe).unwrap_or_default();
                let want = want.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ");
                (format!("set {set}"), format!("holds {{{have}}}, but the pools are {{{want}}}"))
            }
            nftables::Change::AddChain => {
                (format!("chain {}", nftables::CHAIN), "does not exist, so nothing is masqueraded".into())
            }
            nftables::Change::FlushChain => (
                format!("chain {}", nftables::CHAIN),
                format!("does not hold exactly the masquerade rule (comment \"{}\")", nftables::RULE_COMMENT),
            ),
            nftables::Change::AddElements(..) | nftables::Change::AddRule => continue,
        };
        let fix = match change {
            nftables::Change::DeleteTable => format!("nft delete {table}"),
            _ => FIX_FALLBACK.to_owned(),
        };
        findings.push(Finding::new("fallback", object, problem, fix));
        // A missing table is one finding, not one per set and chain.
        if !observed.nat.table {
            break;
        }
    }
    findings
}

/// Reads `vxlan.calico`, its neighbours and FDB, and the main table over rtnetlink.
pub fn observe_fallback(interfaces: &BTreeMap<String, u32>) -> anyhow::Result<ObservedFallback> {
    let names: BTreeMap<u32, String> = interfaces.iter().map(|(name, index)| (*index, name.clone())).collect();
    let device_index = interfaces.get(VXLAN_DEVICE).copied();
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?.block_on(
        async move {
            let handle = netlink::connect()?;
            let mut observed = ObservedFallback::default();
            match nftables::observe() {
                Ok(nat) => observed.nat = nat,
                Err(error) => observed.nat_error = Some(format!("{error:#}")),
            }
            if let Some(index) = device_index {
                let mut links = handle.link().get().match_index(index).execute();
                if let Some(message) = links.try_next().await.context("reading vxlan.calico")? {
                    observed.device = Some(parse_vxlan_device(&message));
                }
                let mut dump = handle.neighbours().get().set_address_family(AddressFamily::Inet).execute();
                while let Some(message) = dump.try_next().await.context("listing neighbours")? {
                    if message.header.ifindex == index && message.header.state == NeighbourState::Permanent {
                        if let (Some(addr), Some(mac)) = (neighbour_ipv4(&message), neighbour_mac(&message)) {
                            observed.neighbours.insert(addr, mac);
                        }
                    }
                }
                let mut dump = handle.neighbours().get().set_address_family(AddressFamily::Bridge).execute();
                while let Some(message) = dump.try_next().await.context("listing FDB entries")? {
                    if message.header.ifindex == index {
                        if let (Some(addr), Some(mac)) = (neighbour_ipv4(&message), neighbour_mac(&message)) {
                            observed.fdb.insert(mac, addr);
                        }
                    }
                }
            }
            let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
            let mut dump = handle.route().get(query).execute();
            while let Some(message) = dump.try_next().await.context("listing routes")? {
                let table = message
                    .attributes
                    .iter()
                    .find_map(|a| if let RouteAttribute::Table(table) = a { Some(*table) } else { None })
                    .unwrap_or(u32::from(message.header.table));
                if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
                    continue;
                }
                if message.header.protocol == RouteProtocol::Other(RTPROT_DATAPLANE) {
                    observed.ours += 1;
                }
                let Some((prefix, route)) = parse_observed_route(&message, &names) else {
                    continue;
                };
                observed.routes.entry(prefix).or_insert(route);
            }
            Ok(observed)
        },
    )
}

fn parse_vxlan_device(message: &LinkMessage) -> VxlanDevice {
    let mut device = VxlanDevice { up: message.header.flags.contains(LinkFlags::Up), ..VxlanDevice::default() };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::Address(bytes) => device.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Data(InfoData::Vxlan(items)) = info {
                        for item in items {
                            match item {
                                InfoVxlan::Id(vni) => device.vni = Some(*vni),
                                InfoVxlan::Local(local) => device.local = Some(*local),
                                _ => {}
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    device
}

/// The IPv4 destination of a neighbour or FDB entry (an FDB entry carries it as raw bytes).
fn neighbour_ipv4(message: &NeighbourMessage) -> Option<Ipv4Addr> {
    message.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(addr)) => Some(*addr),
        NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
            <[u8; 4]>::try_from(bytes.as_slice()).ok().map(Ipv4Addr::from)
        }
        _ => None,
    })
}

fn neighbour_mac(message: &NeighbourMessage) -> Option<MacAddr> {
    message.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr),
        _ => None,
    })
}

fn parse_observed_route(message: &RouteMessage, names: &BTreeMap<u32, String>) -> Option<(Ipv4Net, ObservedRoute)> {
    let mut destination = Ipv4Addr::UNSPECIFIED;
    let mut gateway = None;
    let mut oif = None;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(addr)) => destination = *addr,
            RouteAttribute::Gateway(RouteAddress::Inet(addr)) => gateway = Some(*addr),
            RouteAttribute::Oif(index) => oif = Some(*index),
            _ => {}
        }
    }
    let prefix = Ipv4Net::new(destination, message.header.destination_prefix_length).ok()?;
    let route = match (message.header.kind, gateway, oif) {
        (RouteType::BlackHole, _, _) => ObservedRoute::Blackhole,
        (RouteType::Unicast, Some(gateway), Some(index)) => ObservedRoute::Via {
            gateway,
            interface: names.get(&index).cloned().unwrap_or_else(|| format!("ifindex {index}")),
        },
        _ => ObservedRoute::Other,
    };
    Some((prefix, route))
}

// ---------------------------------------------------------------------------------------------
// The command.

/// Settings of `dataplane check`.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Where the cluster comes from.
    pub datastore: Datastore,
    /// etcd settings, for `Datastore::Etcdv3`.
    pub etcd: EtcdConfig,
    /// This node's name.
    pub node: String,
    /// The uplink; found from the node's address when not given.
    pub uplink: Option<String>,
    /// The agent's pin directory.
    pub pin_path: PathBuf,
    /// Which dataplane to check: the fast path's pins, the netlink fallback's routes and device,
    /// or (auto) whichever the node has.
    pub mode: Mode,
}

/// Runs every check for the node, reading the datastore, the pins and this network namespace.
/// Errors only when the datastore cannot be read at all; everything else is a finding.
pub fn run(options: &CheckOptions) -> anyhow::Result<Report> {
    // Progress goes to the log (stderr), one line per stage: on a large cluster each takes a while.
    let started = std::time::Instant::now();
    let snapshot = crate::ipam::read_once(&options.datastore, &options.etcd)?;
    let model = &snapshot.model;
    tracing::info!(
        pools = model.pools.len(),
        blocks = model.blocks.len(),
        nodes = model.nodes.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "check: read the datastore"
    );
    let mut report = Report { node: options.node.clone(), findings: Vec::new(), checked: Checked::default() };
    report.checked.pools = model.pools.len();

    report.findings.extend(check_pools(model));
    report.findings.extend(check_blocks(model));
    let (plan, mut plan_problems) = match plan::compute(model, &options.node) {
        Ok(computed) => computed,
        Err(error) => {
            let fix = match &error {
                plan::PlanError::UnknownNode(node) => {
                    format!("add a Node resource named {node:?} to the datastore, or pass the right --node")
                }
                plan::PlanError::NodeWithoutAddress(_) => "set spec.bgp.ipv4Address (e.g. 10.0.0.1/24)".to_owned(),
            };
            report.findings.push(Finding::new("node", format!("Node {}", options.node), error.to_string(), fix));
            let datastore = problem_findings("datastore", &snapshot.problems, &report.findings);
            report.findings.extend(datastore);
            return Ok(report);
        }
    };
    report.findings.extend(check_tunnel_addresses(model, &options.node));
    tracing::info!(
        routes = plan.routes.len(),
        findings = report.findings.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "check: pools, blocks and tunnel addresses checked; the plan computed"
    );

    let interfaces = sys::interfaces()?;
    let names: BTreeMap<u32, String> = interfaces.iter().map(|(name, index)| (*index, name.clone())).collect();
    let host_routes = match fs::read_to_string("/proc/net/route") {
        Ok(text) => parse_proc_net_route(&text),
        Err(error) => {
            report.findings.push(Finding::new(
                "workloads",
                "/proc/net/route",
                format!("cannot read the kernel's routes: {error}"),
                "run the check where /proc is mounted",
            ));
            Vec::new()
        }
    };
    report.checked.workloads = plan.workloads.len();
    report.findings.extend(check_workloads(&plan, &interfaces, &host_routes));
    tracing::info!(
        workloads = plan.workloads.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "check: workload interfaces and routes checked; checking the dataplane"
    );

    let uplink = match &options.uplink {
        Some(uplink) => Some(uplink.clone()),
        None => sys::interface_with_address(plan.node.addr.addr())?,
    };
    match uplink {
        None => report.findings.push(Finding::new(
            "node",
            format!("Node {}", options.node),
            format!(
                "no interface of this network namespace holds the node's address {}, so the uplink is unknown and \
                 the maps and programs were not checked",
                plan.node.addr.addr()
            ),
            "run the check in the node's network namespace, pass --uplink, or fix spec.bgp.ipv4Address",
        )),
        Some(uplink) => match dataplane_mode(options, &interfaces) {
            Ok(Some(observed)) => {
                let intent = netlink::intent(&plan, model);
                report.checked.remote_blocks =
                    plan.routes.values().filter(|r| matches!(r.target, RouteTarget::RemoteBlock { .. })).count();
                report.findings.extend(check_fallback(&plan, &intent, &observed, &uplink));
                // The intent's own problems (a peer without a VTEP address) come with the plan's.
                plan_problems.extend(intent.problems);
            }
            Ok(None) => check_programmed(options, model, &plan, &uplink, &interfaces, &names, &mut report),
            Err(error) => report.findings.push(Finding::new(
                "fallback",
                "rtnetlink",
                format!("the kernel's routes and devices cannot be read: {error:#}"),
                "run the check as root in the node's network namespace",
            )),
        },
    }

    let datastore = problem_findings("datastore", &snapshot.problems, &report.findings);
    report.findings.extend(datastore);
    let planned = problem_findings("plan", &plan_problems, &report.findings);
    report.findings.extend(planned);
    tracing::info!(findings = report.findings.len(), elapsed_ms = started.elapsed().as_millis() as u64, "check: done");
    Ok(report)
}

/// `Some` with what the netlink fallback programmed when the node runs it: asked for with
/// `--mode netlink`, or (auto) when no fast path is pinned but the fallback's device or routes
/// exist. `None` for the fast path.
fn dataplane_mode(
    options: &CheckOptions,
    interfaces: &BTreeMap<String, u32>,
) -> anyhow::Result<Option<ObservedFallback>> {
    match options.mode {
        Mode::Bpf => Ok(None),
        Mode::Netlink => observe_fallback(interfaces).map(Some),
        Mode::Auto if options.pin_path.join(ROUTES_MAP).exists() => Ok(None),
        Mode::Auto => Ok(Some(observe_fallback(interfaces)?).filter(ObservedFallback::present)),
    }
}

/// The maps and the program attachments against the plan.
fn check_programmed(
    options: &CheckOptions,
    model: &Model,
    plan: &Plan,
    uplink: &str,
    interfaces: &BTreeMap<String, u32>,
    names: &BTreeMap<u32, String>,
    report: &mut Report,
) {
    let Some(&uplink_ifindex) = interfaces.get(uplink) else {
        report.findings.push(Finding::new(
            "node",
            format!("interface {uplink}"),
            "the uplink does not exist in this network namespace",
            "pass the right --uplink, or run the check in the node's network namespace",
        ));
        return;
    };
    let uplink_mtu = match sys::mtu(uplink) {
        Ok(mtu) => mtu,
        Err(error) => {
            report.findings.push(Finding::new(
                "node",
                format!("interface {uplink}"),
                format!("{error:#}"),
                "check the uplink",
            ));
            return;
        }
    };
    let observed = observe_maps(&options.pin_path);
    // The SNAT range and the timeouts are the agent's flags, not the datastore's: take what is
    // programmed.
    let nat_ports = match &observed.node {
        Ok(node) => (node.nat_port_min, node.nat_port_max),
        Err(_) => (dataplane_common::net::NAT_PORT_MIN, dataplane_common::net::NAT_PORT_MAX),
    };
    // Workloads without a MAC in the datastore (Kubernetes): the agent learned each pod's MAC
    // from its veth, so learn it here too and expect that one.
    let unknown = entries::without_mac(plan, |name| interfaces.get(name).copied());
    let learned = veth::learn_once(&unknown).unwrap_or_else(|error| {
        tracing::warn!(error = %format!("{error:#}"), "check: cannot learn the pods' MACs; expecting none");
        BTreeMap::new()
    });
    for (interface, mac) in &learned {
        let workload = plan.workloads.get(interface).map(|w| w.name.clone()).unwrap_or_default();
        report.checked.learned_macs.insert(workload, mac.to_string());
    }
    let (mut expected, _missing) = entries::from_plan(
        plan,
        entries::Uplink { ifindex: uplink_ifindex, mtu: uplink_mtu, nat_ports },
        |name| interfaces.get(name).copied(),
        &learned,
    );
    if let Ok(node) = &observed.node {
        expected.node.timeouts = node.timeouts;
    }
    let mut covered = BTreeSet::new();
    if let Ok(routes) = &observed.routes {
        let (findings, keys) = check_remote_blocks(model, plan, routes);
        report.findings.extend(findings);
        covered = keys;
    }
    report.checked.remote_blocks =
        plan.routes.values().filter(|r| matches!(r.target, RouteTarget::RemoteBlock { .. })).count();
    report.checked.map_entries = 1 + expected.routes.len() + expected.workloads.len() + expected.peers.len();
    report.findings.extend(diff_maps(&expected, &observed, &covered, names));

    let anchor = interfaces.get(ANCHOR_DEVICE).map(|_| sys::is_up(ANCHOR_DEVICE).unwrap_or(false));
    report.findings.extend(check_anchor(vxlan_anchor::wanted(plan), anchor));

    let links = expected_links(plan, uplink, interfaces);
    let observed_links = observe_links(&options.pin_path, &links, interfaces);
    let links_dir = options.pin_path.join(LINKS_DIR);
    report.findings.extend(check_links(&links, &observed_links, interfaces, &links_dir));
    // The agent's default (`--xdp auto`) attaches XDP to any uplink but a veth; one pinned by an
    // agent told otherwise is checked too.
    let veth = xdp::is_veth(uplink_ifindex).unwrap_or(false);
    let xdp_expected = !xdp::modes(XdpChoice::Auto, veth).is_empty();
    let xdp_pinned = observed_links.pins.contains_key(&xdp::pin_name(uplink));
    report.checked.links = links.len() + usize::from(xdp_expected || xdp_pinned);
    let kernel_xdp = xdp::observe(uplink_ifindex).map_err(|e| format!("{e:#}"));
    report.findings.extend(check_xdp(uplink, xdp_expected, &observed_links.pins, &kernel_xdp, &links_dir));
}

/// The VXLAN GRO anchor when the node receives VXLAN: `anchor` is None without the device, else
/// whether it is up (its UDP socket, which GRO needs, exists only while it is).
pub fn check_anchor(wanted: bool, anchor: Option<bool>) -> Option<Finding> {
    let problem = match (wanted, anchor) {
        (false, _) | (true, Some(true)) => return None,
        (true, None) => "missing",
        (true, Some(false)) => "down",
    };
    Some(Finding::new(
        "tunnel",
        format!("device {ANCHOR_DEVICE}"),
        format!(
            "the VXLAN GRO anchor is {problem}: VXLAN from peers still reaches the pods, but without receive GRO \
             (every segment alone, so slower)"
        ),
        "load the vxlan module (`modprobe vxlan`) and free the VXLAN port on the node's address: another VXLAN \
         device may hold it (`ip -d link show type vxlan`); the agent retries at every reconcile",
    ))
}

/// The report for a person: one block per finding with its fix, or one line saying all is well.
pub fn text(report: &Report) -> String {
    let c = &report.checked;
    let mut checked = format!(
        "checked {} program links, {} map entries, {} remote blocks, {} workloads, {} pools",
        c.links, c.map_entries, c.remote_blocks, c.workloads, c.pools
    );
    if !c.learned_macs.is_empty() {
        let macs: Vec<String> = c.learned_macs.iter().map(|(workload, mac)| format!("{workload} {mac}")).collect();
        checked.push_str(&format!("; MACs learned from the veths, as the datastore has none: {}", macs.join(", ")));
    }
    if report.ok() {
        return format!("node {}: no problems found ({checked})\n", report.node);
    }
    let mut out = format!("node {}: {} problem(s) found ({checked})\n", report.node, report.findings.len());
    for finding in &report.findings {
        out.push_str(&format!(
            "\n[{}] {}: {}\n    fix: {}\n",
            finding.check, finding.object, finding.problem, finding.fix
        ));
    }
    out
}

/// The report as JSON: `{node, ok, findings: [{check, object, problem, fix}], checked}`.
pub fn json(report: &Report) -> serde_json::Value {
    serde_json::json!({
        "node": report.node,
        "ok": report.ok(),
        "findings": report.findings,
        "checked": report.checked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        datastore::file,
        model::{AffinityState, Block, EncapMode, IpPool, Node},
    };

    fn net(text: &str) -> Ipv4Net {
        text.parse().expect("test CIDR")
    }

    fn example() -> Model {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/two-nodes.yaml");
        let (model, problems) = file::load(&path).expect("example loads");
        assert!(problems.is_empty(), "{problems:?}");
        model
    }

    fn pool(name: &str, cidr: &str, block_size: u8) -> IpPool {
        IpPool {
            name: name.into(),
            cidr: net(cidr),
            block_size,
            vxlan_mode: EncapMode::Always,
            ipip_mode: EncapMode::Never,
            nat_outgoing: false,
            disabled: false,
        }
    }

    fn objects(findings: &[Finding]) -> Vec<&str> {
        findings.iter().map(|f| f.object.as_str()).collect()
    }

    /// The example's node-1 with its interfaces: uplink eth0 = 2, web-1 = 5, cache-1 = 6.
    fn node_1() -> (Model, Plan, BTreeMap<String, u32>, MapEntries) {
        let model = example();
        let (plan, problems) = plan::compute(&model, "node-1").expect("plan");
        assert!(problems.is_empty());
        let interfaces = BTreeMap::from([
            ("lo".to_owned(), 1),
            ("eth0".to_owned(), 2),
            ("cali0761ccbeace".to_owned(), 5),
            ("cali188d81a77fc".to_owned(), 6),
        ]);
        let (entries, missing) = entries::from_plan(
            &plan,
            entries::Uplink { ifindex: 2, mtu: 1500, nat_ports: (20000, 29999) },
            |name| interfaces.get(name).copied(),
            &BTreeMap::new(),
        );
        assert!(missing.is_empty());
        (model, plan, interfaces, entries)
    }

    fn observed_from(entries: &MapEntries) -> ObservedMaps {
        ObservedMaps {
            node: Ok(entries.node),
            routes: Ok(entries.routes.clone()),
            workloads: Ok(entries.workloads.clone()),
            peers: Ok(entries.peers.clone()),
        }
    }

    #[test]
    fn the_example_cluster_has_no_model_problems() {
        let model = example();
        assert_eq!(check_pools(&model), vec![]);
        assert_eq!(check_blocks(&model), vec![]);
        assert_eq!(check_tunnel_addresses(&model, "node-1"), vec![]);
        assert_eq!(check_tunnel_addresses(&model, "node-2"), vec![]);
    }

    #[test]
    fn overlapping_pools_name_the_later_pool_and_the_fix() {
        let mut model = example();
        model.pools.push(pool("overlap", "10.244.128.0/17", 26));
        let findings = check_pools(&model);
        assert_eq!(objects(&findings), vec!["IPPool overlap"]);
        assert!(findings[0].problem.contains("overlaps IPPool default-ipv4-ippool"), "{findings:?}");
        assert!(findings[0].fix.contains("must not overlap"), "{findings:?}");
    }

    #[test]
    fn exhaustion_is_more_nodes_than_blocks() {
        let mut model = example();
        // A /26 pool of /28 blocks has 4 blocks; the cluster has 2 nodes: fine. With 5: not.
        model.pools = vec![pool("small", "10.244.0.0/26", 28)];
        model.blocks.clear();
        assert_eq!(check_pools(&model), vec![]);
        for n in 3..=5 {
            model.nodes.push(Node { name: format!("node-{n}"), ..Node::default() });
        }
        let findings = check_pools(&model);
        assert_eq!(objects(&findings), vec!["IPPool small"]);
        assert!(
            findings[0].problem.contains("4 blocks of /28") && findings[0].problem.contains("5 nodes"),
            "{findings:?}"
        );
        assert!(findings[0].fix.contains("add an IP pool"));
        // A block size that does not fit the pool is its own finding.
        model.pools = vec![pool("odd", "10.244.0.0/26", 24)];
        assert!(check_pools(&model)[0].problem.contains("blockSize 24 does not fit"));
    }

    #[test]
    fn a_full_pool_is_reported_even_with_enough_blocks_for_the_nodes() {
        let mut model = example();
        model.pools = vec![pool("tiny", "10.244.1.0/25", 26)];
        model.blocks.retain(|b| b.cidr == net("10.244.1.0/26"));
        model.blocks.push(Block {
            cidr: net("10.244.1.64/26"),
            node: "node-2".into(),
            state: AffinityState::Confirmed,
            deleted: false,
        });
        let findings = check_pools(&model);
        assert_eq!(objects(&findings), vec!["IPPool tiny"]);
        assert!(findings[0].problem.contains("every one of the pool's 2 blocks"), "{findings:?}");
    }

    #[test]
    fn a_block_outside_every_pool_is_named_with_its_node() {
        let mut model = example();
        model.blocks.push(Block {
            cidr: net("10.99.0.0/26"),
            node: "node-2".into(),
            state: AffinityState::Confirmed,
            deleted: false,
        });
        let findings = check_blocks(&model);
        assert_eq!(objects(&findings), vec!["BlockAffinity 10.99.0.0/26"]);
        assert!(findings[0].problem.contains("node-2"));
    }

    #[test]
    fn a_tunnel_address_outside_the_nodes_blocks() {
        let mut model = example();
        model.nodes[0].vxlan_tunnel_addr = Some(Ipv4Addr::new(10, 244, 2, 9));
        let findings = check_tunnel_addresses(&model, "node-1");
        assert_eq!(objects(&findings), vec!["Node node-1"]);
        assert!(
            findings[0].problem.contains("10.244.2.9") && findings[0].problem.contains("10.244.1.0/26"),
            "{findings:?}"
        );
        assert!(findings[0].fix.contains("10.244.1.0/26"));
    }

    #[test]
    fn healthy_maps_diff_to_nothing() {
        let (model, plan, _, entries) = node_1();
        let observed = observed_from(&entries);
        let (findings, covered) = check_remote_blocks(&model, &plan, observed.routes.as_ref().expect("routes"));
        assert!(findings.is_empty() && covered.is_empty(), "{findings:?}");
        assert_eq!(diff_maps(&entries, &observed, &covered, &BTreeMap::new()), vec![]);
    }

    #[test]
    fn a_missing_remote_block_route_is_reported_once() {
        let (model, plan, _, entries) = node_1();
        let mut observed = observed_from(&entries);
        let key = route_key(&net("10.244.2.0/26"));
        if let Ok(routes) = &mut observed.routes {
            routes.remove(&key);
        }
        let (findings, covered) = check_remote_blocks(&model, &plan, observed.routes.as_ref().expect("routes"));
        assert_eq!(objects(&findings), vec!["block 10.244.2.0/26 of node node-2"]);
        assert!(findings[0].problem.contains("no route"));
        assert!(findings[0].fix.contains("restart it"));
        assert!(covered.contains(&key));
        assert_eq!(diff_maps(&entries, &observed, &covered, &BTreeMap::new()), vec![]);
    }

    #[test]
    fn a_remote_block_routed_to_the_wrong_node_or_mac() {
        let (model, plan, _, entries) = node_1();
        let mut observed = observed_from(&entries);
        let key = route_key(&net("10.244.2.0/26"));
        if let Ok(routes) = &mut observed.routes {
            let route = routes.get_mut(&key).expect("remote block route");
            route.node_addr = [10, 100, 0, 11];
            route.mac = [0x66, 0xd0, 0, 0, 0, 9];
        }
        let (findings, _) = check_remote_blocks(&model, &plan, observed.routes.as_ref().expect("routes"));
        assert_eq!(findings.len(), 1);
        let problem = &findings[0].problem;
        assert!(
            problem.contains("goes to 10.100.0.11 (node node-1)") && problem.contains("node-2 at 10.100.0.12"),
            "{problem}"
        );
        assert!(
            problem.contains("VTEP MAC is 66:d0:00:00:00:09") && problem.contains("66:d0:00:00:00:02"),
            "{problem}"
        );
    }

    #[test]
    fn map_diff_lists_missing_extra_and_different_entries() {
        let (_, _, _, entries) = node_1();
        let mut observed = observed_from(&entries);
        if let Ok(routes) = &mut observed.routes {
            routes.remove(&route_key(&net("10.244.1.2/32")));
            routes.insert(
                route_key(&net("10.244.1.9/32")),
                Route { kind: route_kind::LOCAL_WORKLOAD, ifindex: 9, ..Route::default() },
            );
        }
        if let Ok(workloads) = &mut observed.workloads {
            workloads.get_mut(&6).expect("cache-1").addr = [10, 244, 1, 77];
        }
        if let Ok(peers) = &mut observed.peers {
            peers.clear();
        }
        if let Ok(node) = &mut observed.node {
            node.uplink_mtu = 9000;
            node.timeouts.udp_s = 0;
        }
        let names = BTreeMap::from([(5, "cali0761ccbeace".to_owned()), (6, "cali188d81a77fc".to_owned())]);
        let findings = diff_maps(&entries, &observed, &BTreeSet::new(), &names);
        let got: Vec<(&str, &str)> =
            findings.iter().map(|f| (f.object.as_str(), f.problem.split(':').next().unwrap_or(""))).collect();
        assert_eq!(
            got,
            vec![
                ("node_v1", "this node's settings differ from the datastore"),
                ("routes_v1 10.244.1.2/32", "missing"),
                ("routes_v1 10.244.1.9/32", "extra"),
                ("workloads_v1 ifindex 6 (cali188d81a77fc)", "holds pod 10.244.1.77 mac 0a"),
                ("peers_v1 10.100.0.12", "missing"),
            ]
        );
        assert!(findings[0].problem.contains("uplink_mtu is 9000, should be 1500"));
        assert!(findings[0].problem.contains("a conntrack timeout is 0 s"), "{}", findings[0].problem);
        assert!(findings[1].problem.contains("local workload ifindex 5 (cali0761ccbeace)"), "{}", findings[1].problem);
        assert!(findings[2].problem.contains("ifindex 9 (no such interface)"), "{}", findings[2].problem);
        assert!(findings[4].problem.contains("drop_unknown_peer"));
    }

    #[test]
    fn a_workload_entry_shows_its_nat_outgoing_flag() {
        let workload = Workload { addr: [10, 244, 1, 5], mac: [0x0a, 0x58, 0, 0, 0, 5], flags: 0, _pad: 0 };
        assert_eq!(workload_text(&workload), "pod 10.244.1.5 mac 0a:58:00:00:00:05");
        let nat = Workload { flags: workload_flags::NAT_OUTGOING, ..workload };
        assert_eq!(workload_text(&nat), "pod 10.244.1.5 mac 0a:58:00:00:00:05 natOutgoing");

        // A map entry that lost the flag: the finding says which side has it.
        let (_, _, _, mut entries) = node_1();
        entries.workloads.get_mut(&6).expect("cache-1").flags = workload_flags::NAT_OUTGOING;
        let mut observed = observed_from(&entries);
        if let Ok(workloads) = &mut observed.workloads {
            workloads.get_mut(&6).expect("cache-1").flags = 0;
        }
        let findings = diff_maps(&entries, &observed, &BTreeSet::new(), &BTreeMap::new());
        assert_eq!(findings.len(), 1, "{findings:?}");
        let (have, want) = findings[0].problem.split_once(", the datastore says ").expect("a difference");
        assert!(!have.contains("natOutgoing"), "{have}");
        assert!(want.ends_with(" natOutgoing"), "{want}");
    }

    #[test]
    fn an_unreadable_map_is_one_finding_with_the_fix() {
        let (_, _, _, entries) = node_1();
        let mut observed = observed_from(&entries);
        observed.routes = Err("No such file or directory".into());
        let findings = diff_maps(&entries, &observed, &BTreeSet::new(), &BTreeMap::new());
        assert_eq!(objects(&findings), vec!["routes_v1"]);
        assert!(findings[0].fix.contains("--pin-path"));
    }

    #[test]
    fn workloads_without_interface_or_host_route() {
        let (_, plan, mut interfaces, _) = node_1();
        let mut routes = vec![
            KernelRoute { dst: net("10.244.1.2/32"), interface: "cali0761ccbeace".into() },
            KernelRoute { dst: net("10.244.1.3/32"), interface: "cali188d81a77fc".into() },
        ];
        assert_eq!(check_workloads(&plan, &interfaces, &routes), vec![]);

        routes.remove(0);
        routes[0].interface = "eth0".into();
        let findings = check_workloads(&plan, &interfaces, &routes);
        // By interface name: web-1 (cali0761ccbeace) before cache-1 (cali188d81a77fc).
        assert_eq!(
            objects(&findings),
            vec![
                "WorkloadEndpoint default/node--1-k8s-web--1-eth0",
                "WorkloadEndpoint default/node--1-k8s-cache--1-eth0"
            ]
        );
        assert!(findings[0].problem.contains("10.244.1.2/32 dev cali0761ccbeace is missing"), "{findings:?}");
        assert!(findings[0].fix.starts_with("ip route replace 10.244.1.2/32 dev cali0761ccbeace scope link"));
        assert!(findings[1].problem.contains("points at eth0"), "{findings:?}");

        interfaces.remove("cali0761ccbeace");
        let findings = check_workloads(&plan, &interfaces, &routes);
        assert!(
            findings.iter().any(|f| f.problem.contains("interface cali0761ccbeace does not exist")),
            "{findings:?}"
        );
    }

    #[test]
    fn link_pin_names_round_trip() {
        for name in ["eth0", "vxlan.calico", "odd%name.x"] {
            let pin = link_pin_name(TcAttachType::Egress, name);
            assert_eq!(parse_link_pin_name(&pin), Some((Hook::Egress, name.to_owned())), "{pin}");
        }
        assert_eq!(parse_link_pin_name("something"), None);
    }

    fn healthy_links(expected: &BTreeMap<String, ExpectedLink>) -> ObservedLinks {
        let mut observed = ObservedLinks::default();
        for (id, (pin, link)) in expected.iter().enumerate() {
            observed.pins.insert(pin.clone(), Ok(id as u32 + 100));
            observed
                .hooks
                .insert(pin.clone(), Ok(vec![AttachedProgram { id: id as u32 + 100, name: link.program.to_owned() }]));
        }
        observed
    }

    #[test]
    fn links_expected_for_the_uplink_and_each_local_workload() {
        let (_, plan, interfaces, _) = node_1();
        let expected = expected_links(&plan, "eth0", &interfaces);
        let names: Vec<&str> = expected.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            vec![
                "egress_cali0761ccbeace",
                "egress_cali188d81a77fc",
                "egress_eth0",
                "ingress_cali0761ccbeace",
                "ingress_cali188d81a77fc",
                "ingress_eth0"
            ]
        );
        let observed = healthy_links(&expected);
        assert_eq!(check_links(&expected, &observed, &interfaces, Path::new("/pins/links")), vec![]);
    }

    #[test]
    fn a_missing_or_down_vxlan_anchor_is_a_tunnel_finding_only_where_vxlan_is_received() {
        assert!(check_anchor(false, None).is_none(), "no VXLAN: no anchor wanted");
        assert!(check_anchor(false, Some(false)).is_none());
        assert!(check_anchor(true, Some(true)).is_none(), "present and up");
        let missing = check_anchor(true, None).unwrap();
        assert_eq!((missing.check, missing.object.as_str()), ("tunnel", "device vxlan.dataplane"));
        assert!(missing.problem.contains("is missing") && missing.fix.contains("modprobe vxlan"), "{missing:?}");
        assert!(check_anchor(true, Some(false)).unwrap().problem.contains("is down"));
    }

    #[test]
    fn the_vxlan_anchors_link_is_expected_once_the_device_exists() {
        let (_, plan, mut interfaces, _) = node_1();
        assert!(vxlan_anchor::wanted(&plan), "the example's pool is VXLAN");
        // The agent attaches nothing to an anchor the kernel could not make.
        assert!(!expected_links(&plan, "eth0", &interfaces).contains_key("ingress_vxlan%2edataplane"));
        interfaces.insert(ANCHOR_DEVICE.to_owned(), 7);
        let expected = expected_links(&plan, "eth0", &interfaces);
        let anchor = &expected["ingress_vxlan%2edataplane"];
        assert_eq!(
            (anchor.interface.as_str(), anchor.hook, anchor.program),
            (ANCHOR_DEVICE, Hook::Ingress, PROG_VXLAN_ANCHOR)
        );
        let observed = healthy_links(&expected);
        assert_eq!(check_links(&expected, &observed, &interfaces, Path::new("/pins/links")), vec![]);
    }

    #[test]
    fn a_removed_pin_a_detached_program_and_a_stale_pin() {
        let (_, plan, interfaces, _) = node_1();
        let expected = expected_links(&plan, "eth0", &interfaces);
        let mut observed = healthy_links(&expected);
        // The pin of web-1's link removed: the link went with it.
        observed.pins.remove("ingress_cali0761ccbeace");
        observed.hooks.insert("ingress_cali0761ccbeace".into(), Ok(vec![]));
        // The uplink's egress pinned but detached.
        observed.hooks.insert("egress_eth0".into(), Ok(vec![]));
        // A pin left for a pod whose interface is gone.
        observed.pins.insert("ingress_caligone0000001".into(), Ok(7));
        let findings = check_links(&expected, &observed, &interfaces, Path::new("/pins/links"));
        assert_eq!(
            objects(&findings),
            vec![
                "to_uplink egress of eth0",
                "from_workload ingress of cali0761ccbeace",
                "link ingress_caligone0000001"
            ]
        );
        assert!(findings[0].problem.contains("not attached to the hook"), "{findings:?}");
        assert!(findings[1].problem.contains(
            "not attached: no clsact filter of ours, and no link is pinned at /pins/links/ingress_cali0761ccbeace"
        ));
        assert!(findings[1].fix.contains("restart the agent"));
        assert!(
            findings[2].problem.contains("stale") && findings[2].fix.contains("rm /pins/links/ingress_caligone0000001")
        );
    }

    #[test]
    fn the_uplinks_xdp_link_is_expected_pinned_and_running_its_program() {
        let dir = Path::new("/pins/links");
        let mut pins = BTreeMap::new();
        pins.insert("ingress_eth0".to_owned(), Ok(5));
        pins.insert(xdp::pin_name("eth0"), Ok(9));
        assert_eq!(check_xdp("eth0", true, &pins, &Ok(Some((XdpMode::Native, 9))), dir), vec![]);
        assert_eq!(check_xdp("eth0", true, &pins, &Ok(Some((XdpMode::Generic, 9))), dir), vec![]);
        let other = check_xdp("eth0", true, &pins, &Ok(Some((XdpMode::Native, 10))), dir);
        assert!(other[0].problem.contains("runs program id 9, but eth0 runs XDP program id 10"), "{other:?}");
        let detached = check_xdp("eth0", true, &pins, &Ok(None), dir);
        assert!(detached[0].problem.contains("runs no XDP program"), "{detached:?}");
        pins.remove(&xdp::pin_name("eth0"));
        let missing = check_xdp("eth0", true, &pins, &Ok(None), dir);
        assert_eq!(objects(&missing), vec!["xdp_uplink XDP of eth0"]);
        assert!(missing[0].problem.contains("not attached") && missing[0].fix.contains("restart the agent"));
        assert!(check_xdp("eth0", true, &pins, &Ok(Some((XdpMode::Native, 3))), dir)[0]
            .problem
            .contains("no link is pinned"));
        // A pin for another interface, and the stray-link check of the TC links leaves XDP pins alone.
        pins.insert(xdp::pin_name("eth0"), Ok(9));
        pins.insert(xdp::pin_name("eth1"), Ok(4));
        let stale = check_xdp("eth0", true, &pins, &Ok(Some((XdpMode::Native, 9))), dir);
        assert_eq!(objects(&stale), vec!["link xdp_eth1"]);
        assert!(stale[0].fix.contains("rm /pins/links/xdp_eth1"));
        let observed = ObservedLinks { pins, ..Default::default() };
        assert_eq!(check_links(&BTreeMap::new(), &observed, &BTreeMap::new(), dir).len(), 1, "only ingress_eth0");
    }

    /// What a node attached through clsact shows: no pins, no tcx (the query fails as on 6.1),
    /// our filter on every hook.
    fn clsact_links(expected: &BTreeMap<String, ExpectedLink>) -> ObservedLinks {
        let mut observed = ObservedLinks::default();
        for (id, (pin, link)) in expected.iter().enumerate() {
            observed.hooks.insert(pin.clone(), Err("tcx: Invalid argument (os error 22)".to_owned()));
            let theirs = Filter { priority: 49152, handle: 1, kind: "u32".to_owned(), name: None, program_id: None };
            let ours = Filter {
                priority: clsact::FILTER_PRIORITY,
                handle: clsact::FILTER_HANDLE,
                kind: "bpf".to_owned(),
                name: Some(clsact::filter_name(link.program)),
                program_id: Some(id as u32 + 100),
            };
            observed.filters.insert(pin.clone(), Ok(vec![ours, theirs]));
        }
        observed
    }

    #[test]
    fn clsact_filters_count_as_attached_without_pins_or_tcx() {
        let (_, plan, interfaces, _) = node_1();
        let expected = expected_links(&plan, "eth0", &interfaces);
        let observed = clsact_links(&expected);
        assert_eq!(check_links(&expected, &observed, &interfaces, Path::new("/pins/links")), vec![]);
    }

    #[test]
    fn a_missing_filter_a_wrong_program_a_hook_attached_twice_and_a_stray_filter() {
        let (_, plan, interfaces, _) = node_1();
        let expected = expected_links(&plan, "eth0", &interfaces);
        let mut observed = clsact_links(&expected);
        // web-1's ingress filter gone: only the other tool's filter is left.
        if let Some(Ok(filters)) = observed.filters.get_mut("ingress_cali0761ccbeace") {
            filters.retain(|f| !f.is_ours());
        }
        // The uplink's egress filter runs the wrong program.
        if let Some(Ok(filters)) = observed.filters.get_mut("egress_eth0") {
            filters[0].name = Some(clsact::filter_name(PROG_FROM_UPLINK));
        }
        // The uplink's ingress also keeps a tcx link pinned by an earlier agent.
        observed.pins.insert("ingress_eth0".into(), Ok(7));
        // A filter left on the veth of a pod the datastore no longer has.
        observed.stray_filters.insert(("caligone0000001".into(), Hook::Egress), clsact::filter_name(PROG_TO_WORKLOAD));
        let findings = check_links(&expected, &observed, &interfaces, Path::new("/pins/links"));
        assert_eq!(
            objects(&findings),
            vec![
                "to_uplink egress of eth0",
                "from_workload ingress of cali0761ccbeace",
                "from_uplink ingress of eth0",
                "filter dataplane:to_workload on egress of caligone0000001"
            ]
        );
        assert!(findings[3].fix.contains("tc filter del dev caligone0000001 egress pref 1 handle 0xda7a bpf"));
        assert!(findings[0].problem.contains("runs dataplane:from_uplink"), "{findings:?}");
        assert!(findings[1].problem.starts_with("not attached: no clsact filter of ours is on it"), "{findings:?}");
        assert!(findings[2].problem.contains("attached twice"), "{findings:?}");
    }

    #[test]
    fn planner_problems_are_not_repeated_for_objects_already_reported() {
        let mut model = example();
        model.pools.push(pool("overlap", "10.244.128.0/17", 26));
        model.blocks.push(Block {
            cidr: net("10.99.0.0/26"),
            node: "node-2".into(),
            state: AffinityState::Confirmed,
            deleted: false,
        });
        let mut findings = check_pools(&model);
        findings.extend(check_blocks(&model));
        let (_, problems) = plan::compute(&model, "node-1").expect("plan");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problem_findings("plan", &problems, &findings), vec![]);
        let other = vec![Problem::new("Node", "node-9", "spec.bgp.ipv4Address", "no address")];
        let extra = problem_findings("datastore", &other, &findings);
        assert_eq!(objects(&extra), vec!["Node node-9"]);
        assert!(extra[0].fix.contains("spec.bgp.ipv4Address"));
    }

    /// node-1's netlink fallback exactly as the intent says.
    fn healthy_fallback(plan: &Plan, intent: &Intent) -> ObservedFallback {
        let vxlan = intent.vxlan.expect("the example tunnels with VXLAN");
        let mut observed = ObservedFallback {
            device: Some(VxlanDevice {
                up: true,
                mac: Some(vxlan.mac),
                vni: Some(VXLAN_VNI),
                local: Some(vxlan.local),
            }),
            neighbours: intent.neighbours.clone(),
            fdb: intent.fdb.clone(),
            routes: BTreeMap::new(),
            ours: 3,
            nat: nftables::Observed::default(),
            nat_error: None,
        };
        if let Some(wanted) = nftables::masquerade(plan) {
            observed.nat = nftables::Observed {
                table: true,
                chain: true,
                sets: BTreeMap::from([
                    (nftables::MASQ_POOLS_SET.to_owned(), nftables::interval_elements(&wanted.masq_pools)),
                    (nftables::ALL_POOLS_SET.to_owned(), nftables::interval_elements(&wanted.all_pools)),
                ]),
                rules: vec![Some(nftables::RULE_COMMENT.to_owned())],
            };
        }
        for (prefix, route) in &intent.routes {
            let observed_route = match route {
                RouteIntent::Blackhole => ObservedRoute::Blackhole,
                RouteIntent::Vxlan { vtep } => ObservedRoute::Via { gateway: *vtep, interface: VXLAN_DEVICE.into() },
                _ => ObservedRoute::Other,
            };
            observed.routes.insert(*prefix, observed_route);
        }
        observed
    }

    #[test]
    fn a_healthy_fallback_has_no_findings() {
        let (model, plan, _, _) = node_1();
        let intent = netlink::intent(&plan, &model);
        assert_eq!(check_fallback(&plan, &intent, &healthy_fallback(&plan, &intent), "eth0"), vec![]);
        assert!(healthy_fallback(&plan, &intent).present());
        assert!(!ObservedFallback::default().present());
    }

    #[test]
    fn a_fallback_without_its_masquerade_or_with_a_stale_one() {
        let (model, plan, _, _) = node_1();
        let intent = netlink::intent(&plan, &model);
        let mut observed = healthy_fallback(&plan, &intent);
        observed.nat = nftables::Observed::default();
        let findings = check_fallback(&plan, &intent, &observed, "eth0");
        assert_eq!(objects(&findings), vec!["table ip dataplane"]);
        assert!(findings[0].problem.contains("does not exist"), "{findings:?}");

        // A pool set out of step is named with what it holds and what it should.
        let mut observed = healthy_fallback(&plan, &intent);
        observed.nat.sets.insert(
            nftables::ALL_POOLS_SET.to_owned(),
            nftables::interval_elements(&[net("10.244.0.0/16"), net("10.99.0.0/16")]),
        );
        observed.nat.rules.clear();
        let findings = check_fallback(&plan, &intent, &observed, "eth0");
        assert_eq!(objects(&findings), vec!["set all-ipam-pools", "chain postrouting"]);
        assert!(
            findings[0].problem.contains("holds {10.99.0.0/16, 10.244.0.0/16}, but the pools are {10.244.0.0/16}"),
            "{findings:?}"
        );

        // No pool has natOutgoing: the table should be gone.
        let mut plan = plan;
        for route in plan.routes.values_mut() {
            route.nat_outgoing = false;
        }
        let findings = check_fallback(&plan, &intent, &healthy_fallback(&node_1().1, &intent), "eth0");
        assert_eq!(objects(&findings), vec!["table ip dataplane"]);
        assert_eq!(findings[0].fix, "nft delete table ip dataplane");

        let observed = ObservedFallback { nat_error: Some("EPERM".into()), ..healthy_fallback(&plan, &intent) };
        assert!(check_fallback(&plan, &intent, &observed, "eth0")[0].problem.contains("cannot be read"));
    }

    #[test]
    fn a_fallback_with_the_device_down_and_a_wrong_neighbour_mac() {
        let (model, plan, _, _) = node_1();
        let intent = netlink::intent(&plan, &model);
        let mut observed = healthy_fallback(&plan, &intent);
        if let Some(device) = &mut observed.device {
            device.up = false;
        }
        let vtep = Ipv4Addr::new(10, 244, 2, 0);
        observed.neighbours.insert(vtep, MacAddr([0x66, 0xd0, 0, 0, 0, 0x99]));
        observed.fdb.clear();
        observed.routes.remove(&net("10.244.2.0/26"));
        observed.routes.insert(net("10.244.1.0/26"), ObservedRoute::Other);
        let findings = check_fallback(&plan, &intent, &observed, "eth0");
        assert_eq!(
            objects(&findings),
            vec![
                "device vxlan.calico",
                "neighbour 10.244.2.0 dev vxlan.calico",
                "fdb 66:d0:00:00:00:02 dev vxlan.calico",
                "route 10.244.1.0/26",
                "route 10.244.2.0/26",
            ]
        );
        assert_eq!(findings[0].fix, "ip link set vxlan.calico up");
        assert!(findings[1]
            .problem
            .contains("lladdr 66:d0:00:00:00:99, but the VTEP MAC of node node-2 is 66:d0:00:00:00:02"));
        assert_eq!(
            findings[1].fix,
            "ip neigh replace 10.244.2.0 lladdr 66:d0:00:00:00:02 dev vxlan.calico nud permanent"
        );
        assert_eq!(
            findings[2].fix,
            "bridge fdb replace 66:d0:00:00:00:02 dev vxlan.calico dst 10.100.0.12 self permanent"
        );
        assert!(findings[3].problem.contains("block of this node"), "{findings:?}");
        assert_eq!(findings[3].fix, "ip route replace blackhole 10.244.1.0/26");
        assert!(findings[4].problem.contains("block of node node-2 has no route"), "{findings:?}");
        assert_eq!(findings[4].fix, "ip route replace 10.244.2.0/26 via 10.244.2.0 dev vxlan.calico onlink");

        // No device at all.
        observed.device = None;
        let findings = check_fallback(&plan, &intent, &observed, "eth0");
        assert!(findings[0].problem.contains("does not exist"), "{findings:?}");
    }

    #[test]
    fn proc_net_route_parses_host_order_words() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    eth0\t00000000\t0100640A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                    cali0761ccbeace\t0201F40A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n\
                    *\t0001F40A\t00000000\t0201\t0\t0\t0\tC0FFFFFF\t0\t0\t0\n";
        let routes = parse_proc_net_route(text);
        if cfg!(target_endian = "little") {
            assert_eq!(
                routes,
                vec![
                    KernelRoute { dst: net("0.0.0.0/0"), interface: "eth0".into() },
                    KernelRoute { dst: net("10.244.1.2/32"), interface: "cali0761ccbeace".into() },
                    KernelRoute { dst: net("10.244.1.0/26"), interface: "*".into() },
                ]
            );
        }
    }

    #[test]
    fn report_text_says_nothing_is_wrong_or_lists_each_fix() {
        let mut report =
            Report { node: "node-1".into(), findings: vec![], checked: Checked { links: 4, ..Checked::default() } };
        assert!(text(&report).starts_with("node node-1: no problems found (checked 4 program links"));
        assert_eq!(json(&report)["ok"], true);
        // The MACs it expects without the datastore's word are named.
        let mut learned = report.clone();
        learned.checked.learned_macs.insert("default/web-1".into(), "0a:58:0a:f4:01:02".into());
        let said = text(&learned);
        assert!(
            said.contains("MACs learned from the veths, as the datastore has none: default/web-1 0a:58:0a:f4:01:02"),
            "{said}"
        );
        assert_eq!(json(&learned)["checked"]["learned_macs"]["default/web-1"], "0a:58:0a:f4:01:02");
        report.findings.push(Finding::new("pools", "IPPool x", "overlaps", "change it"));
        let printed = text(&report);
        assert!(printed.contains("[pools] IPPool x: overlaps\n    fix: change it"), "{printed}");
        assert_eq!(json(&report)["findings"][0]["object"], "IPPool x");
    }
}
