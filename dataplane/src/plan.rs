//! The plan: what every destination prefix should do on one node, computed from the model.
//!
//! Pure: [`compute`] takes the model and the node's name and returns the plan; the backends turn
//! it into map entries (or kernel routes) and write only what differs from what is programmed.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::Ipv4Addr,
    sync::Arc,
};

use ipnet::Ipv4Net;

use crate::model::{EncapMode, IpPool, MacAddr, Model, Node, Problem, Workload};

/// How packets reach the node that owns a remote block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encap {
    /// Routed to the node's address without encapsulation.
    None,
    /// VXLAN to the node's address, with its VTEP MAC as inner destination.
    Vxlan {
        /// The owning node's VTEP MAC.
        vtep_mac: MacAddr,
    },
    /// IP-in-IP to the node's address.
    Ipip,
}

/// What a destination prefix is on this node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RouteTarget {
    /// A workload on this node, behind its host-side interface.
    LocalWorkload {
        /// The host-side interface (`caliXXXXXXXXXXX`).
        interface: String,
        /// The pod's MAC, if known.
        mac: Option<MacAddr>,
    },
    /// A block affine to this node (blackhole for addresses without a workload).
    LocalBlock,
    /// A block affine to another node.
    RemoteBlock {
        /// The owning node's name (shared: 100k routes name 10k nodes).
        node: Arc<str>,
        /// The owning node's address: next hop or tunnel destination.
        node_addr: Ipv4Addr,
        /// How to get there.
        encap: Encap,
    },
    /// A pool prefix: inside the pool but in no known block.
    Pool,
}

/// One planned route: a prefix, what it is, and the attributes of the pool it lies in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PlannedRoute {
    /// What the prefix is.
    pub target: RouteTarget,
    /// The pool containing the prefix, if any (its name shared by every route in it).
    pub pool: Option<Arc<str>>,
    /// The pool has `natOutgoing: true`.
    pub nat_outgoing: bool,
}

/// This node's own settings for the fast path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePlan {
    /// The node's name.
    pub name: String,
    /// The node's address with its subnet's prefix length.
    pub addr: Ipv4Net,
    /// The node's VTEP MAC, if it has one.
    pub vtep_mac: Option<MacAddr>,
    /// The node's VXLAN tunnel address, if it has one.
    pub vtep_addr: Option<Ipv4Addr>,
}

/// A peer node from which tunnel packets are accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PlannedPeer {
    /// Accept VXLAN from it.
    pub vxlan: bool,
    /// Accept IP-in-IP from it.
    pub ipip: bool,
}

/// A workload on this node, keyed in the plan by its interface name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PlannedWorkload {
    /// `namespace/name` of the workload endpoint.
    pub name: String,
    /// The pod's address (the only source accepted from its interface).
    pub addr: Ipv4Addr,
    /// The pod's MAC, if known.
    pub mac: Option<MacAddr>,
}

/// Everything one node's dataplane should hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// This node.
    pub node: NodePlan,
    /// Destination prefix -> route. Longest prefix wins, as in the kernel's LPM trie.
    pub routes: BTreeMap<Ipv4Net, PlannedRoute>,
    /// Peer node address -> the tunnels some pool runs between it and us (what the netlink
    /// fallback needs devices for).
    pub peers: BTreeMap<Ipv4Addr, PlannedPeer>,
    /// Every other node's address: the fast path accepts tunnel packets of either kind from all
    /// of them, whatever the pools' modes say now, so that a pool's mode change drops nothing
    /// while the nodes converge one after the other (as Calico's eBPF dataplane trusts any host).
    pub cluster_nodes: BTreeSet<Ipv4Addr>,
    /// Host-side interface name -> workload.
    pub workloads: BTreeMap<String, PlannedWorkload>,
}

impl Plan {
    /// The plan of `node` (whose address is `addr`) before any route, peer or workload: one
    /// description of this node for `compute` and the incremental planner alike.
    pub fn empty_for(node: &Node, addr: Ipv4Net) -> Plan {
        Plan {
            node: NodePlan {
                name: node.name.clone(),
                addr,
                vtep_mac: node.vxlan_tunnel_mac,
                vtep_addr: node.vxlan_tunnel_addr,
            },
            routes: BTreeMap::new(),
            peers: BTreeMap::new(),
            cluster_nodes: BTreeSet::new(),
            workloads: BTreeMap::new(),
        }
    }
}

/// Why no plan can be made for this node at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// The datastore has no Node resource with this name.
    #[error("node {0:?} is not in the datastore: add a Node resource named {0:?} or pass the right --node")]
    UnknownNode(String),
    /// The node has no address.
    #[error("node {0:?} has no address: set spec.bgp.ipv4Address (e.g. 10.0.0.1/24)")]
    NodeWithoutAddress(String),
}

/// Computes the plan for `node` from `model`.
///
/// Problems that affect single resources (a block in no pool, a workload without an address, a
/// peer without a VTEP MAC in a VXLAN pool) are returned beside the plan: the resource is left
/// out and the rest is planned.
pub fn compute(model: &Model, node: &str) -> Result<(Plan, Vec<Problem>), PlanError> {
    let this = model.node(node).ok_or_else(|| PlanError::UnknownNode(node.to_owned()))?;
    let local_addr = this.addr.ok_or_else(|| PlanError::NodeWithoutAddress(node.to_owned()))?;
    let mut problems = Vec::new();
    let mut plan = Plan::empty_for(this, local_addr);

    let pools = valid_pools(&model.pools, &mut problems);
    for pool in &pools {
        plan.routes.insert(pool.cidr.trunc(), route_in(Some(pool), RouteTarget::Pool, &fresh));
    }

    // First node wins for a repeated name, as in Model::node.
    let mut nodes: HashMap<&str, &Node> = HashMap::new();
    for other in &model.nodes {
        nodes.entry(other.name.as_str()).or_insert(other);
    }
    plan_blocks(model, &pools, &nodes, node, &local_addr, &mut plan, &mut problems);
    plan_workloads(&model.workloads, &pools, node, &mut plan.routes, &mut plan.workloads, &mut problems);
    plan_peers(model, &pools, node, &local_addr, &mut plan);
    plan.cluster_nodes = model
        .nodes
        .iter()
        .filter(|n| n.name != node)
        .filter_map(|n| n.addr.map(|addr| addr.addr()))
        .filter(|addr| *addr != local_addr.addr())
        .collect();

    // A node without a VTEP MAC that owns ten blocks is one problem, not ten.
    let mut seen = HashSet::new();
    problems.retain(|problem| seen.insert(problem.clone()));
    Ok((plan, problems))
}

/// Why a remote block cannot be reached: the [`Problem`] to report, naming the resource to fix.
pub type EncapError = Problem;

/// How this node (at `local`, its address with its subnet's prefix length) reaches `peer` for
/// a block of `pool`, following Calico: `Always` encapsulates, `CrossSubnet` only when the peer's
/// address is outside this node's subnet, `Never` routes plainly.
///
/// VXLAN needs the peer's VTEP MAC: without it the result is a problem naming the Node's
/// `spec.vxlanTunnelMACAddr`. A pool with both modes on, or a peer without an address, is a
/// problem too.
pub fn encap_between(pool: &IpPool, local: &Ipv4Net, peer: &Node) -> Result<Encap, EncapError> {
    let Some(peer_addr) = peer.addr else {
        return Err(Problem::new(
            "Node",
            peer.name.as_str(),
            "spec.bgp.ipv4Address",
            "the node has no address, so its blocks cannot be reached: set \
             spec.bgp.ipv4Address (e.g. 10.0.0.2/24)",
        ));
    };
    match tunnel_towards(pool, local, peer_addr.addr())? {
        Tunnel::None => Ok(Encap::None),
        Tunnel::Ipip => Ok(Encap::Ipip),
        Tunnel::Vxlan => match peer.vxlan_tunnel_mac {
            Some(vtep_mac) => Ok(Encap::Vxlan { vtep_mac }),
            None => Err(Problem::new(
                "Node",
                peer.name.as_str(),
                "spec.vxlanTunnelMACAddr",
                format!(
                    "the pool {} uses VXLAN towards this node but it has no VTEP MAC, so its blocks are not \
                     routed: set spec.vxlanTunnelMACAddr (calico-node sets it when VXLAN is on)",
                    pool.name
                ),
            )),
        },
    }
}

/// The kind of tunnel a pool asks for towards one peer address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tunnel {
    None,
    Vxlan,
    Ipip,
}

/// The tunnel `pool` asks for from `local` to `peer`, before checking what the peer has (its VTEP
/// MAC): accepting a peer's tunnel packets does not need it.
fn tunnel_towards(pool: &IpPool, local: &Ipv4Net, peer: Ipv4Addr) -> Result<Tunnel, Problem> {
    if pool.vxlan_mode != EncapMode::Never && pool.ipip_mode != EncapMode::Never {
        return Err(both_modes_problem(pool));
    }
    // `local` keeps the node's own address with the subnet's length (10.0.0.1/24): contains()
    // compares against its network.
    let same_subnet = local.contains(&peer);
    let wants = |mode: EncapMode| match mode {
        EncapMode::Never => false,
        EncapMode::Always => true,
        EncapMode::CrossSubnet => !same_subnet,
    };
    if wants(pool.vxlan_mode) {
        Ok(Tunnel::Vxlan)
    } else if wants(pool.ipip_mode) {
        Ok(Tunnel::Ipip)
    } else {
        Ok(Tunnel::None)
    }
}

fn both_modes_problem(pool: &IpPool) -> Problem {
    Problem::new(
        "IPPool",
        pool.name.as_str(),
        "spec.vxlanMode",
        format!(
            "vxlanMode is {} and ipipMode is {}: Calico allows only one encapsulation per pool, so the \
             pool is skipped; set one of them to Never",
            pool.vxlan_mode, pool.ipip_mode
        ),
    )
}

/// The pools that can be used, in the model's order: a pool with both encapsulations on is
/// invalid in Calico, and a pool overlapping an earlier one is ambiguous (which natOutgoing,
/// which encapsulation?), so both are reported and skipped.
pub(crate) fn valid_pools<'m>(
    all: impl IntoIterator<Item = &'m IpPool>,
    problems: &mut Vec<Problem>,
) -> Vec<&'m IpPool> {
    let mut pools: Vec<&IpPool> = Vec::new();
    for pool in all {
        if pool.vxlan_mode != EncapMode::Never && pool.ipip_mode != EncapMode::Never {
            problems.push(both_modes_problem(pool));
            continue;
        }
        let cidr = pool.cidr.trunc();
        if let Some(earlier) = pools.iter().find(|p| p.cidr.contains(&cidr) || cidr.contains(&p.cidr.trunc())) {
            problems.push(Problem::new(
                "IPPool",
                pool.name.as_str(),
                "spec.cidr",
                format!(
                    "{} overlaps the pool {} ({}), so this pool is skipped: pools must not overlap, \
                     change or delete one of them",
                    cidr, earlier.name, earlier.cidr
                ),
            ));
            continue;
        }
        pools.push(pool);
    }
    pools
}

/// The valid pool containing `prefix`, if any.
pub(crate) fn pool_of<'p>(pools: &[&'p IpPool], prefix: &Ipv4Net) -> Option<&'p IpPool> {
    pools.iter().copied().find(|pool| pool.cidr.contains(prefix))
}

/// Gives a planned route its copy of a node's or a pool's name: the whole-model plan makes one
/// per route ([`fresh`]); the incremental planner hands out one per name.
pub(crate) type Share<'a> = &'a dyn Fn(&str) -> Arc<str>;

/// A copy of `name` of its own.
pub(crate) fn fresh(name: &str) -> Arc<str> {
    Arc::from(name)
}

/// A route to `target` carrying the attributes of `pool`, its name from `share`.
pub(crate) fn route_in(pool: Option<&IpPool>, target: RouteTarget, share: Share) -> PlannedRoute {
    PlannedRoute { target, pool: pool.map(|p| share(&p.name)), nat_outgoing: pool.is_some_and(|p| p.nat_outgoing) }
}

/// Routes for the blocks with a confirmed, live affinity: local ones are blackholed (LocalBlock),
/// remote ones go to their node.
fn plan_blocks(
    model: &Model,
    pools: &[&IpPool],
    nodes: &HashMap<&str, &Node>,
    this_node: &str,
    local_addr: &Ipv4Net,
    plan: &mut Plan,
    problems: &mut Vec<Problem>,
) {
    // Block -> the node it is affine to, and every other node it is affine to too (a set made
    // only for a block claimed twice: a cluster has hundreds of thousands of blocks, each planned
    // on every change). The same affinity listed twice is one.
    let mut owners: BTreeMap<Ipv4Net, (&str, Option<BTreeSet<&str>>)> = BTreeMap::new();
    for block in model.blocks.iter().filter(|b| b.routes()) {
        let node = block.node.as_str();
        match owners.entry(block.cidr.trunc()) {
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert((node, None));
            }
            std::collections::btree_map::Entry::Occupied(mut slot) => {
                let (first, others) = slot.get_mut();
                if *first != node {
                    others.get_or_insert_with(|| BTreeSet::from([*first])).insert(node);
                }
            }
        }
    }
    for (cidr, (owner, others)) in owners {
        let many: Vec<&str>;
        let owners: &[&str] = match &others {
            None => std::slice::from_ref(&owner),
            Some(set) => {
                many = set.iter().copied().collect();
                &many
            }
        };
        match block_route(cidr, owners, pools, |name| nodes.get(name).copied(), this_node, local_addr, &fresh) {
            Ok(route) => {
                plan.routes.insert(cidr, route);
            }
            Err(problem) => problems.push(problem),
        }
    }
}

/// The route of one block that some routing affinities claim: `owners` are the nodes they name,
/// sorted and without repeats; `node` finds a node by name. A problem instead when the block is
/// claimed twice, lies in no valid pool, or its owner cannot be reached. The whole-model
/// [`compute`] and the incremental planner both decide a block here.
pub(crate) fn block_route<'n>(
    cidr: Ipv4Net,
    owners: &[&str],
    pools: &[&IpPool],
    node: impl Fn(&str) -> Option<&'n Node>,
    this_node: &str,
    local_addr: &Ipv4Net,
    share: Share,
) -> Result<PlannedRoute, Problem> {
    // Only problems name the block: formatting it for each of 100k blocks costs.
    let block_name = || cidr.to_string();
    let owner = match owners {
        [owner] => *owner,
        _ => {
            return Err(Problem::new(
                "BlockAffinity",
                block_name(),
                "spec.node",
                format!(
                    "the block is affine to several nodes ({}), so it is not routed at all: a block \
                     belongs to one node, delete the wrong affinities",
                    owners.join(", ")
                ),
            ));
        }
    };
    let Some(pool) = pool_of(pools, &cidr) else {
        return Err(Problem::new(
            "BlockAffinity",
            block_name(),
            "spec.cidr",
            format!(
                "the block (affine to {owner}) lies in no valid IP pool, so it is not routed: add the \
                 pool it was carved from, or delete the affinity"
            ),
        ));
    };
    if owner == this_node {
        return Ok(route_in(Some(pool), RouteTarget::LocalBlock, share));
    }
    let Some(peer) = node(owner) else {
        return Err(Problem::new(
            "BlockAffinity",
            block_name(),
            "spec.node",
            format!(
                "the block is affine to {owner:?}, which is not in the datastore, so it is not routed: \
                 add the Node or delete the affinity"
            ),
        ));
    };
    let Some(peer_addr) = peer.addr else {
        // Worded without the block, so that a node owning many blocks is reported once.
        return Err(Problem::new(
            "Node",
            owner,
            "spec.bgp.ipv4Address",
            "the node owns blocks but has no address, so they are not routed: set \
             spec.bgp.ipv4Address (e.g. 10.0.0.2/24)",
        ));
    };
    let encap = encap_between(pool, local_addr, peer)?;
    let target = RouteTarget::RemoteBlock { node: share(owner), node_addr: peer_addr.addr(), encap };
    Ok(route_in(Some(pool), target, share))
}

/// The workloads on this node: a /32 route to each one's interface, and its entry by interface.
pub(crate) fn plan_workloads<'w>(
    workloads: impl IntoIterator<Item = &'w Workload>,
    pools: &[&IpPool],
    this_node: &str,
    routes: &mut BTreeMap<Ipv4Net, PlannedRoute>,
    planned: &mut BTreeMap<String, PlannedWorkload>,
    problems: &mut Vec<Problem>,
) {
    for workload in workloads.into_iter().filter(|w| w.node == this_node) {
        let name = workload.full_name();
        let Some(first) = workload.addrs.first() else {
            problems.push(Problem::new(
                "WorkloadEndpoint",
                name,
                "spec.ipNetworks",
                "the endpoint has no IPv4 address, so it is not routed: list the pod's address, \
                 e.g. [10.244.1.2/32]",
            ));
            continue;
        };
        if workload.interface.is_empty() {
            problems.push(Problem::new(
                "WorkloadEndpoint",
                name,
                "spec.interfaceName",
                "the endpoint names no host-side interface, so it is not routed: set \
                 spec.interfaceName (cali + 11 hex digits)",
            ));
            continue;
        }
        if let Some(other) = planned.get(&workload.interface) {
            problems.push(Problem::new(
                "WorkloadEndpoint",
                name,
                "spec.interfaceName",
                format!(
                    "the interface {} is already used by {}, so this endpoint is skipped: each pod \
                     has its own interface",
                    workload.interface, other.name
                ),
            ));
            continue;
        }
        let addr = first.addr();
        let host = Ipv4Net::from(addr);
        if let Some(other) = planned.values().find(|w| w.addr == addr) {
            problems.push(Problem::new(
                "WorkloadEndpoint",
                name,
                "spec.ipNetworks",
                format!("the address {addr} is already used by {}, so this endpoint is skipped", other.name),
            ));
            continue;
        }
        let target = RouteTarget::LocalWorkload { interface: workload.interface.clone(), mac: workload.mac };
        routes.insert(host, route_in(pool_of(pools, &host), target, &fresh));
        planned.insert(workload.interface.clone(), PlannedWorkload { name, addr, mac: workload.mac });
    }
}

/// The other nodes from which tunnel packets are accepted: those towards which some valid pool
/// tunnels. Receiving needs no VTEP MAC, so a peer without one still counts here (its blocks are
/// reported where they are routed).
fn plan_peers(model: &Model, pools: &[&IpPool], this_node: &str, local_addr: &Ipv4Net, plan: &mut Plan) {
    for peer in model.nodes.iter().filter(|n| n.name != this_node) {
        // A node at this node's own address is no peer (and not in cluster_nodes either).
        let Some(peer_addr) = peer.addr.filter(|addr| addr.addr() != local_addr.addr()) else {
            continue;
        };
        let planned = peer_towards(pools, local_addr, peer_addr.addr());
        if planned.vxlan || planned.ipip {
            let entry = plan.peers.entry(peer_addr.addr()).or_default();
            entry.vxlan |= planned.vxlan;
            entry.ipip |= planned.ipip;
        }
    }
}

/// The tunnels the valid `pools` run between this node (at `local`) and a peer at `peer`.
pub(crate) fn peer_towards(pools: &[&IpPool], local: &Ipv4Net, peer: Ipv4Addr) -> PlannedPeer {
    let mut planned = PlannedPeer::default();
    for pool in pools {
        match tunnel_towards(pool, local, peer) {
            Ok(Tunnel::Vxlan) => planned.vxlan = true,
            Ok(Tunnel::Ipip) => planned.ipip = true,
            Ok(Tunnel::None) | Err(_) => {}
        }
    }
    planned
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AffinityState, Block};

    fn net(text: &str) -> Ipv4Net {
        text.parse().expect("test CIDR")
    }

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().expect("test address")
    }

    fn mac(text: &str) -> MacAddr {
        text.parse().expect("test MAC")
    }

    fn pool(name: &str, cidr: &str, vxlan: EncapMode, ipip: EncapMode, nat_outgoing: bool) -> IpPool {
        IpPool {
            name: name.into(),
            cidr: net(cidr),
            block_size: 26,
            vxlan_mode: vxlan,
            ipip_mode: ipip,
            nat_outgoing,
            disabled: false,
        }
    }

    /// A node at `addr` whose VTEP MAC ends in `n`.
    fn node(name: &str, addr: &str, n: u8) -> Node {
        Node {
            name: name.into(),
            addr: Some(net(addr)),
            vxlan_tunnel_addr: None,
            vxlan_tunnel_mac: Some(MacAddr([0x66, 0xd0, 0, 0, 0, n])),
            ipip_tunnel_addr: None,
        }
    }

    fn block(cidr: &str, node: &str) -> Block {
        Block { cidr: net(cidr), node: node.into(), state: AffinityState::Confirmed, deleted: false }
    }

    fn workload(name: &str, node: &str, addr: &str, interface: &str) -> Workload {
        Workload {
            namespace: "default".into(),
            name: name.into(),
            node: node.into(),
            addrs: vec![net(addr)],
            interface: interface.into(),
            mac: None,
        }
    }

    /// A cluster with one pool of the given modes, nodes n1 (10.0.0.1/24) and n2 (10.0.0.2/24)
    /// and one block each.
    fn two_nodes(vxlan: EncapMode, ipip: EncapMode) -> Model {
        Model {
            pools: vec![pool("p", "10.244.0.0/16", vxlan, ipip, true)],
            blocks: vec![block("10.244.1.0/26", "n1"), block("10.244.2.0/26", "n2")],
            nodes: vec![node("n1", "10.0.0.1/24", 1), node("n2", "10.0.0.2/24", 2)],
            workloads: vec![],
        }
    }

    fn plan_ok(model: &Model, node: &str) -> (Plan, Vec<Problem>) {
        compute(model, node).expect("a plan")
    }

    fn target(plan: &Plan, prefix: &str) -> Option<RouteTarget> {
        plan.routes.get(&net(prefix)).map(|r| r.target.clone())
    }

    fn remote(node: &str, addr: &str, encap: Encap) -> Option<RouteTarget> {
        Some(RouteTarget::RemoteBlock { node: node.into(), node_addr: ip(addr), encap })
    }

    fn problem_keys(problems: &[Problem]) -> Vec<(&str, &str, &str)> {
        problems.iter().map(|p| (p.kind.as_str(), p.name.as_str(), p.field.as_str())).collect()
    }

    #[test]
    fn two_nodes_vxlan_always() {
        let mut model = two_nodes(EncapMode::Always, EncapMode::Never);
        model.nodes[0].vxlan_tunnel_addr = Some(ip("10.244.1.0"));
        let (plan, problems) = plan_ok(&model, "n1");
        assert_eq!(problems, vec![]);
        assert_eq!(
            plan.node,
            NodePlan {
                name: "n1".into(),
                addr: net("10.0.0.1/24"),
                vtep_mac: Some(mac("66:d0:00:00:00:01")),
                vtep_addr: Some(ip("10.244.1.0")),
            }
        );
        assert_eq!(plan.routes.len(), 3);
        assert_eq!(target(&plan, "10.244.0.0/16"), Some(RouteTarget::Pool));
        assert_eq!(target(&plan, "10.244.1.0/26"), Some(RouteTarget::LocalBlock));
        assert_eq!(
            target(&plan, "10.244.2.0/26"),
            remote("n2", "10.0.0.2", Encap::Vxlan { vtep_mac: mac("66:d0:00:00:00:02") })
        );
        for route in plan.routes.values() {
            assert_eq!((route.pool.as_deref(), route.nat_outgoing), (Some("p"), true));
        }
        assert_eq!(plan.peers, BTreeMap::from([(ip("10.0.0.2"), PlannedPeer { vxlan: true, ipip: false })]));
        // The fast path's peers map is built from cluster_nodes alone: every peer must be in it.
        assert!(plan.peers.keys().all(|peer| plan.cluster_nodes.contains(peer)), "{:?}", plan.cluster_nodes);
        assert!(plan.workloads.is_empty());
    }

    #[test]
    fn cross_subnet_three_nodes_in_two_subnets() {
        let mut model = two_nodes(EncapMode::CrossSubnet, EncapMode::Never);
        model.nodes.push(node("n3", "10.1.0.3/24", 3));
        model.blocks.push(block("10.244.3.0/26", "n3"));
        let (plan, problems) = plan_ok(&model, "n1");
        assert_eq!(problems, vec![]);
        // Same subnet: plain routing to the peer's address.
        assert_eq!(target(&plan, "10.244.2.0/26"), remote("n2", "10.0.0.2", Encap::None));
        // Other subnet: VXLAN.
        assert_eq!(
            target(&plan, "10.244.3.0/26"),
            remote("n3", "10.1.0.3", Encap::Vxlan { vtep_mac: mac("66:d0:00:00:00:03") })
        );
        assert_eq!(plan.peers, BTreeMap::from([(ip("10.1.0.3"), PlannedPeer { vxlan: true, ipip: false })]));

        // The same with IPIP.
        model.pools[0].vxlan_mode = EncapMode::Never;
        model.pools[0].ipip_mode = EncapMode::CrossSubnet;
        let (plan, problems) = plan_ok(&model, "n1");
        assert_eq!(problems, vec![]);
        assert_eq!(target(&plan, "10.244.2.0/26"), remote("n2", "10.0.0.2", Encap::None));
        assert_eq!(target(&plan, "10.244.3.0/26"), remote("n3", "10.1.0.3", Encap::Ipip));
        assert_eq!(plan.peers, BTreeMap::from([(ip("10.1.0.3"), PlannedPeer { vxlan: false, ipip: true })]));
    }

    #[test]
    fn ipip_always() {
        let mut model = two_nodes(EncapMode::Never, EncapMode::Always);
        // IPIP needs no VTEP MAC.
        model.nodes[1].vxlan_tunnel_mac = None;
        let (plan, problems) = plan_ok(&model, "n1");
        assert_eq!(problems, vec![]);
        assert_eq!(target(&plan, "10.244.2.0/26"), remote("n2", "10.0.0.2", Encap::Ipip));
        assert_eq!(plan.peers, BTreeMap::from([(ip("10.0.0.2"), PlannedPeer { vxlan: false, ipip: true })]));
    }

    #[test]
    fn never_routes_plainly_and_has_no_peers() {
        let model = two_nodes(EncapMode::Never, EncapMode::Never);
        let (plan, problems) = plan_ok(&model, "n2");
        assert_eq!(problems, vec![]);
        assert_eq!(target(&plan, "10.244.1.0/26"), remote("n1", "10.0.0.1", Encap::None));
        assert_eq!(target(&plan, "10.244.2.0/26"), Some(RouteTarget::LocalBlock));
        assert!(plan.peers.is_empty());
    }

    #[test]
    fn nat_outgoing_follows_the_pool() {
        let model = Model {
            pools: vec![
                pool("nat", "10.244.0.0/16", EncapMode::Never, EncapMode::Never, true),
                pool("plain", "10.245.0.0/16", EncapMode::Never, EncapMode::Never, false),
            ],
            blocks: vec![block("10.244.1.0/26", "n1"), block("10.245.2.0/26", "n2")],
            nodes: vec![node("n1", "10.0.0.1/24", 1), node("n2", "10.0.0.2/24", 2)],
            workloads: vec![
                workload("a", "n1", "10.244.1.5/32", "calia"),
                workload("b", "n1", "10.245.9.9/32", "calib"),
                workload("outside", "n1", "192.168.7.7/32", "calic"),
            ],
        };
        let (plan, problems) = plan_ok(&model, "n1");
        assert_eq!(problems, vec![]);
        let attrs = |prefix: &str| {
            let route = plan.routes.get(&net(prefix)).expect("route");
            (route.pool.clone(), route.nat_outgoing)
        };
        assert_eq!(attrs("10.244.0.0/16"), (Some("nat".into()), true));
        assert_eq!(attrs("10.244.1.0/26"), (Some("nat".into()), true));
        assert_eq!(attrs("10.244.1.5/32"), (Some("nat".into()), true));
        assert_eq!(attrs("10.245.0.0/16"), (Some("plain".into()), false));
        assert_eq!(attrs("10.245.2.0/26"), (Some("plain".into()), false));
        assert_eq!(attrs("10.245.9.9/32"), (Some("plain".into()), false));
        // A workload in no pool is still routed, without a pool.
        assert_eq!(attrs("192.168.7.7/32"), (None, false));
    }

    #[test]
    fn block_outside_any_pool() {
        let mut model = two_nodes(EncapMode::Never, EncapMode::Never);
        model.blocks.push(block("10.99.0.0/26", "n2"));
        // Bigger than its pool: not inside it either.
        model.blocks.push(block("10.244.0.0/15", "n2"));
        let (plan, problems) = plan_ok(&model, "n1");
        assert_eq!(
            problem_keys(&problems),
            [("BlockAffinity", "10.99.0.0/26", "spec.cidr"), ("BlockAffinity", "10.244.0.0/15", "spec.cidr")]
        );
        assert_eq!(target(&plan, "10.99.0.0/26"), None);
        assert_eq!(target(&plan, "10.244.0.0/15"), None);
        assert_eq!(plan.routes.len(), 3, "the rest is planned");
    }

    #[test]
    fn block_claimed_by_two_nodes_is_not_routed() {
        let mut model = two_nodes(EncapMode::Never, EncapMode::Never);
        model.blocks.push(block("10.244.2.0/26", "n1"));
        // The same affinity twice is not a conflict.
        model.blocks.push(block("10.244.1.0/26", "n1"));
        let (plan, problems) = plan_ok(&model, "n1");
        assert_eq!(problem_keys(&problems), [("BlockAffinity", "10.244.2.0/26", "spec.node")]);
        assert!(problems[0].message.contains("n1, n2"), "{}", problems[0]);
        assert_eq!(target(&plan, "10.244.2.0/26"), None);
        assert_eq!(target(&plan, "10.244.1.0/26"), Some(RouteTarget::LocalBlock));
    }

    #[test]
    fn peer_missing_a_vtep_mac() {
        let mut model = two_nodes(EncapMode::Always, EncapMode::Never);
        model.nodes[1].vxlan_tunnel_mac = None;
        model.blocks.push(block("10.244.2.64/26", "n2"));
        let (plan, problems) = plan_ok(&model, "n1");
        // Reported once for its two blocks, naming the Node to fix.
        assert_eq!(problem_keys(&problems), [("Node", "n2", "spec.vxlanTunnelMACAddr")]);
        assert_eq!(target(&plan, "10.244.2.0/26"), None);
        assert_eq!(target(&plan, "10.244.2.64/26"), None);
        assert_eq!(target(&plan, "10.244.1.0/26"), Some(RouteTarget::LocalBlock));
        // Its VXLAN packets are still accepted: decapsulating needs no MAC.
        assert_eq!(plan.peers, BTreeMap::from([(ip("10.0.0.2"), PlannedPeer { vxlan: true, ipip: false })]));
    }

    #[test]
    fn owner_missing_or_without_address() {
        let mut model = two_nodes(EncapMode::Never, EncapMode::Never);
        model.nodes[1].addr = None;
        model.blocks.push(block("10.244.3.0/26", "ghost"));
        let (plan, problems) = plan_ok(&model, "n1");
        assert_eq!(
            problem_keys(&problems),
            [("Node", "n2", "spec.bgp.ipv4Address"), ("BlockAffinity", "10.244.3.0/26", "spec.node")]
        );
        assert_eq!(target(&plan, "10.244.2.0/26"), None);
        assert_eq!(target(&plan, "10.244.3.0/26"), None);
        assert!(plan.peers.is_empty());
    }

    #[test]
    fn local_workloads() {
        let mut model = two_nodes(EncapMode::Always, EncapMode::Never);
        let mut web = workload("web", "n1", "10.244.1.2/32", "cali0761ccbeace");
        web.mac = Some(mac("0a:58:0a:f4:01:02"));
        // The first IPv4 address is the pod's.
        web.addrs.push(net("10.244.1.9/32"));
        let mut no_addr = workload("no-addr", "n1", "10.244.1.3/32", "calinoaddr");
        no_addr.addrs.clear();
        model.workloads = vec![
            web,
            // A /24 written by mistake still means the host address.
            workload("sloppy", "n1", "10.244.1.4/24", "calisloppy"),
            no_addr,
            workload("no-if", "n1", "10.244.1.5/32", ""),
            workload("same-if", "n1", "10.244.1.6/32", "cali0761ccbeace"),
            workload("same-addr", "n1", "10.244.1.2/32", "calisameaddr"),
            workload("elsewhere", "n2", "10.244.2.2/32", "cali9fb0db7f13e"),
        ];
        let (plan, problems) = plan_ok(&model, "n1");
        assert_eq!(
            problem_keys(&problems),
            [
                ("WorkloadEndpoint", "default/no-addr", "spec.ipNetworks"),
                ("WorkloadEndpoint", "default/no-if", "spec.interfaceName"),
                ("WorkloadEndpoint", "default/same-if", "spec.interfaceName"),
                ("WorkloadEndpoint", "default/same-addr", "spec.ipNetworks"),
            ]
        );
        assert_eq!(
            plan.workloads,
            BTreeMap::from([
                (
                    "cali0761ccbeace".to_owned(),
                    PlannedWorkload {
                        name: "default/web".into(),
                        addr: ip("10.244.1.2"),
                        mac: Some(mac("0a:58:0a:f4:01:02")),
                    }
                ),
                (
                    "calisloppy".to_owned(),
                    PlannedWorkload { name: "default/sloppy".into(), addr: ip("10.244.1.4"), mac: None }
                ),
            ])
        );
        assert_eq!(
            plan.routes.get(&net("10.244.1.2/32")),
            Some(&PlannedRoute {
                target: RouteTarget::LocalWorkload {
                    interface: "cali0761ccbeace".into(),
                    mac: Some(mac("0a:58:0a:f4:01:02")),
                },
                pool: Some("p".into()),
                nat_outgoing: true,
            })
        );
        assert!(plan.routes.contains_key(&net("10.244.1.4/32")));
        // Workloads of other nodes are reached through their block.
        assert_eq!(target(&plan, "10.244.2.2/32"), None);
    }

    #[test]
    fn pending_and_deleted_affinities_are_ignored() {
        let mut model = two_nodes(EncapMode::Never, EncapMode::Never);
        model.blocks[1].state = AffinityState::Pending;
        model.blocks.push(Block { deleted: true, ..block("10.244.3.0/26", "n2") });
        model.blocks.push(Block { state: AffinityState::PendingDeletion, ..block("10.244.4.0/26", "n2") });
        // A pending claim by another node does not make a confirmed block conflicted, nor does
        // it need a pool.
        model.blocks.push(Block { state: AffinityState::Pending, ..block("10.244.1.0/26", "n2") });
        model.blocks.push(Block { state: AffinityState::Pending, ..block("10.99.0.0/26", "n2") });
        let (plan, problems) = plan_ok(&model, "n1");
        assert_eq!(problems, vec![]);
        assert_eq!(plan.routes.keys().copied().collect::<Vec<_>>(), [net("10.244.0.0/16"), net("10.244.1.0/26")]);
        assert_eq!(target(&plan, "10.244.1.0/26"), Some(RouteTarget::LocalBlock));
    }

    #[test]
    fn unknown_node_and_node_without_address() {
        let mut model = two_nodes(EncapMode::Never, EncapMode::Never);
        assert_eq!(compute(&model, "nope"), Err(PlanError::UnknownNode("nope".into())));
        model.nodes[0].addr = None;
        assert_eq!(compute(&model, "n1"), Err(PlanError::NodeWithoutAddress("n1".into())));
    }

    #[test]
    fn invalid_and_overlapping_pools_are_skipped() {
        let mut model = two_nodes(EncapMode::Never, EncapMode::Never);
        model.pools.push(pool("both", "10.50.0.0/16", EncapMode::Always, EncapMode::CrossSubnet, false));
        model.pools.push(pool("inner", "10.244.128.0/17", EncapMode::Always, EncapMode::Never, false));
        model.pools.push(pool("outer", "10.0.0.0/8", EncapMode::Never, EncapMode::Never, false));
        let mut disabled = pool("old", "10.246.0.0/16", EncapMode::Never, EncapMode::Never, false);
        disabled.disabled = true;
        model.pools.push(disabled);
        model.blocks.push(block("10.50.1.0/26", "n2"));
        model.blocks.push(block("10.246.2.0/26", "n2"));
        let (plan, problems) = plan_ok(&model, "n1");
        assert_eq!(
            problem_keys(&problems),
            [
                ("IPPool", "both", "spec.vxlanMode"),
                ("IPPool", "inner", "spec.cidr"),
                ("IPPool", "outer", "spec.cidr"),
                ("BlockAffinity", "10.50.1.0/26", "spec.cidr"),
            ]
        );
        assert_eq!(target(&plan, "10.244.0.0/16"), Some(RouteTarget::Pool));
        assert_eq!(target(&plan, "10.50.0.0/16"), None);
        assert_eq!(target(&plan, "10.244.128.0/17"), None);
        assert_eq!(target(&plan, "10.0.0.0/8"), None);
        // A disabled pool stops new allocations only: its blocks still route.
        assert_eq!(target(&plan, "10.246.0.0/16"), Some(RouteTarget::Pool));
        assert_eq!(target(&plan, "10.246.2.0/26"), remote("n2", "10.0.0.2", Encap::None));
    }

    #[test]
    fn block_of_another_size_is_accepted() {
        let mut model = two_nodes(EncapMode::Never, EncapMode::Never);
        model.blocks.push(block("10.244.3.0/28", "n2"));
        let (plan, problems) = plan_ok(&model, "n1");
        assert_eq!(problems, vec![]);
        assert_eq!(target(&plan, "10.244.3.0/28"), remote("n2", "10.0.0.2", Encap::None));
    }

    #[test]
    fn encap_between_decides_per_pool_and_peer() {
        let local = net("10.0.0.1/24");
        let near = node("near", "10.0.0.2/24", 2);
        let far = node("far", "10.9.0.2/24", 3);
        let vxlan = Encap::Vxlan { vtep_mac: mac("66:d0:00:00:00:03") };
        let cases = [
            (EncapMode::Never, EncapMode::Never, &near, Encap::None),
            (EncapMode::Never, EncapMode::Never, &far, Encap::None),
            (EncapMode::Always, EncapMode::Never, &far, vxlan),
            (EncapMode::CrossSubnet, EncapMode::Never, &near, Encap::None),
            (EncapMode::CrossSubnet, EncapMode::Never, &far, vxlan),
            (EncapMode::Never, EncapMode::Always, &near, Encap::Ipip),
            (EncapMode::Never, EncapMode::CrossSubnet, &near, Encap::None),
            (EncapMode::Never, EncapMode::CrossSubnet, &far, Encap::Ipip),
        ];
        for (vxlan_mode, ipip_mode, peer, expected) in cases {
            let p = pool("p", "10.244.0.0/16", vxlan_mode, ipip_mode, false);
            assert_eq!(encap_between(&p, &local, peer), Ok(expected), "{vxlan_mode} {ipip_mode} {}", peer.name);
        }
        let both = pool("both", "10.244.0.0/16", EncapMode::Always, EncapMode::Always, false);
        assert_eq!(encap_between(&both, &local, &far).map_err(|p| p.field), Err("spec.vxlanMode".to_owned()));
        let no_addr = Node { addr: None, ..far.clone() };
        let p = pool("p", "10.244.0.0/16", EncapMode::Never, EncapMode::Never, false);
        assert_eq!(encap_between(&p, &local, &no_addr).map_err(|p| p.field), Err("spec.bgp.ipv4Address".to_owned()));
    }

    #[test]
    fn plan_does_not_depend_on_input_order() {
        let mut model = two_nodes(EncapMode::Always, EncapMode::Never);
        model.nodes.push(node("n3", "10.0.0.3/24", 3));
        model.blocks.push(block("10.244.3.0/26", "n3"));
        model.blocks.push(block("10.244.9.0/26", "n1"));
        model.workloads =
            vec![workload("a", "n1", "10.244.1.2/32", "calia"), workload("b", "n1", "10.244.1.3/32", "calib")];
        let forward = plan_ok(&model, "n1");
        model.blocks.reverse();
        model.nodes.swap(1, 2);
        model.workloads.reverse();
        assert_eq!(plan_ok(&model, "n1"), forward);
    }

    /// The example cluster used by the demo: parsed with no problems, planned for node-1.
    #[test]
    fn example_two_nodes() {
        let (model, problems) =
            crate::datastore::file::parse(include_str!("../../examples/two-nodes.yaml")).expect("YAML");
        assert_eq!(problems, vec![]);
        assert_eq!((model.pools.len(), model.nodes.len(), model.blocks.len(), model.workloads.len()), (1, 2, 2, 3));
        let (plan, problems) = plan_ok(&model, "node-1");
        assert_eq!(problems, vec![]);
        assert_eq!(
            plan.node,
            NodePlan {
                name: "node-1".into(),
                addr: net("10.100.0.11/24"),
                vtep_mac: Some(mac("66:d0:00:00:00:01")),
                vtep_addr: Some(ip("10.244.1.0")),
            }
        );
        let in_pool =
            |target: RouteTarget| PlannedRoute { target, pool: Some("default-ipv4-ippool".into()), nat_outgoing: true };
        let local = |interface: &str, pod_mac: &str| {
            in_pool(RouteTarget::LocalWorkload { interface: interface.into(), mac: Some(mac(pod_mac)) })
        };
        assert_eq!(
            plan.routes,
            BTreeMap::from([
                (net("10.244.0.0/16"), in_pool(RouteTarget::Pool)),
                (net("10.244.1.0/26"), in_pool(RouteTarget::LocalBlock)),
                (net("10.244.1.2/32"), local("cali0761ccbeace", "0a:58:0a:f4:01:02")),
                (net("10.244.1.3/32"), local("cali188d81a77fc", "0a:58:0a:f4:01:03")),
                (
                    net("10.244.2.0/26"),
                    in_pool(RouteTarget::RemoteBlock {
                        node: "node-2".into(),
                        node_addr: ip("10.100.0.12"),
                        encap: Encap::Vxlan { vtep_mac: mac("66:d0:00:00:00:02") },
                    })
                ),
            ])
        );
        assert_eq!(plan.peers, BTreeMap::from([(ip("10.100.0.12"), PlannedPeer { vxlan: true, ipip: false })]));
        assert_eq!(
            plan.workloads,
            BTreeMap::from([
                (
                    "cali0761ccbeace".to_owned(),
                    PlannedWorkload {
                        name: "default/node--1-k8s-web--1-eth0".into(),
                        addr: ip("10.244.1.2"),
                        mac: Some(mac("0a:58:0a:f4:01:02")),
                    }
                ),
                (
                    "cali188d81a77fc".to_owned(),
                    PlannedWorkload {
                        name: "default/node--1-k8s-cache--1-eth0".into(),
                        addr: ip("10.244.1.3"),
                        mac: Some(mac("0a:58:0a:f4:01:03")),
                    }
                ),
            ])
        );
        // And node-2 sees the mirror image.
        let (plan, problems) = plan_ok(&model, "node-2");
        assert_eq!(problems, vec![]);
        assert_eq!(plan.workloads.keys().collect::<Vec<_>>(), ["cali9fb0db7f13e"]);
        assert_eq!(
            target(&plan, "10.244.1.0/26"),
            remote("node-1", "10.100.0.11", Encap::Vxlan { vtep_mac: mac("66:d0:00:00:00:01") })
        );
    }
}
