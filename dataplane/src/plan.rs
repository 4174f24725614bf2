//! The plan: what every destination prefix should do on one node, computed from the model.
//!
//! Pure: [`compute`] takes the model and the node's name and returns the plan; the backends turn
//! it into map entries (or kernel routes) and write only what differs from what is programmed.

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnet::Ipv4Net;

use crate::model::{MacAddr, Model, Problem};

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
        /// The owning node's name.
        node: String,
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
    /// The pool containing the prefix, if any.
    pub pool: Option<String>,
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
    /// Peer node address -> what it may send us.
    pub peers: BTreeMap<Ipv4Addr, PlannedPeer>,
    /// Host-side interface name -> workload.
    pub workloads: BTreeMap<String, PlannedWorkload>,
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
    let _ = (model, node);
    todo!("filled in by the plan work")
}
