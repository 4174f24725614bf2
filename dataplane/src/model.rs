//! The cluster as the dataplane sees it: pools, blocks and their affinities, nodes, workloads.
//!
//! Every datastore (file, Kubernetes, etcd) produces a [`Model`]; nothing here does I/O.

use std::{fmt, net::Ipv4Addr, str::FromStr};

use ipnet::Ipv4Net;

/// Calico's per-pool encapsulation setting (`vxlanMode`, `ipipMode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum EncapMode {
    /// Never encapsulate: route to the peer node's address.
    #[default]
    Never,
    /// Always encapsulate towards other nodes.
    Always,
    /// Encapsulate only towards nodes outside this node's subnet.
    CrossSubnet,
}

/// Why a string is not an encapsulation mode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not an encapsulation mode (expected Never, Always or CrossSubnet)")]
pub struct EncapModeParseError(pub String);

impl FromStr for EncapMode {
    type Err = EncapModeParseError;

    /// Parses `Never`, `Always` or `CrossSubnet` in any case; an empty string is `Never`, as in
    /// Calico, which fills in the default for an empty field.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "" | "never" => Ok(EncapMode::Never),
            "always" => Ok(EncapMode::Always),
            "crosssubnet" => Ok(EncapMode::CrossSubnet),
            _ => Err(EncapModeParseError(s.to_owned())),
        }
    }
}

impl fmt::Display for EncapMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Calico's own spelling, so that messages can be pasted back into YAML.
        let text = match self {
            EncapMode::Never => "Never",
            EncapMode::Always => "Always",
            EncapMode::CrossSubnet => "CrossSubnet",
        };
        f.write_str(text)
    }
}

/// An IP pool (`projectcalico.org/v3` `IPPool`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpPool {
    /// `metadata.name`.
    pub name: String,
    /// `spec.cidr`.
    pub cidr: Ipv4Net,
    /// `spec.blockSize` (default 26).
    pub block_size: u8,
    /// `spec.vxlanMode`.
    pub vxlan_mode: EncapMode,
    /// `spec.ipipMode`.
    pub ipip_mode: EncapMode,
    /// `spec.natOutgoing`.
    pub nat_outgoing: bool,
    /// `spec.disabled`.
    pub disabled: bool,
}

/// The state of a block's affinity to a node (`BlockAffinity` `spec.state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AffinityState {
    /// The block belongs to the node: it routes.
    Confirmed,
    /// Being claimed: does not route yet.
    Pending,
    /// Being released: no longer routes.
    PendingDeletion,
}

/// Why a string is not an affinity state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not an affinity state (expected confirmed, pending or pendingDeletion)")]
pub struct AffinityStateParseError(pub String);

impl FromStr for AffinityState {
    type Err = AffinityStateParseError;

    /// Parses `confirmed`, `pending` or `pendingDeletion`, in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "confirmed" => Ok(AffinityState::Confirmed),
            "pending" => Ok(AffinityState::Pending),
            "pendingdeletion" => Ok(AffinityState::PendingDeletion),
            _ => Err(AffinityStateParseError(s.to_owned())),
        }
    }
}

/// An IPAM block and the node it is affine to (`BlockAffinity`, or an `IPAMBlock`'s `affinity`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// The block's CIDR, e.g. 10.244.1.0/26.
    pub cidr: Ipv4Net,
    /// The node the block is affine to.
    pub node: String,
    /// The affinity's state.
    pub state: AffinityState,
    /// `spec.deleted`: a deleted affinity never routes.
    pub deleted: bool,
}

impl Block {
    /// Whether the block should be routed: a confirmed affinity that is not deleted.
    pub fn routes(&self) -> bool {
        self.state == AffinityState::Confirmed && !self.deleted
    }
}

/// A MAC address, parsed from `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

/// Why a string is not a MAC address.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a MAC address (expected six hex pairs like ee:ee:ee:ee:ee:ee)")]
pub struct MacParseError(pub String);

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(|| MacParseError(s.to_owned()))?;
            // from_str_radix alone would also take "+a".
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(MacParseError(s.to_owned()));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| MacParseError(s.to_owned()))?;
        }
        if parts.next().is_some() {
            return Err(MacParseError(s.to_owned()));
        }
        Ok(MacAddr(bytes))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// A node of the cluster (`projectcalico.org/v3` `Node`, or a Kubernetes Node's annotations).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    /// `metadata.name`.
    pub name: String,
    /// `spec.bgp.ipv4Address`: the node's address with its subnet's prefix length.
    pub addr: Option<Ipv4Net>,
    /// `spec.ipv4VXLANTunnelAddr`: the VTEP address, inside one of the node's blocks.
    pub vxlan_tunnel_addr: Option<Ipv4Addr>,
    /// `spec.vxlanTunnelMACAddr`: the VTEP MAC.
    pub vxlan_tunnel_mac: Option<MacAddr>,
    /// `spec.bgp.ipv4IPIPTunnelAddr`: the IPIP tunnel address.
    pub ipip_tunnel_addr: Option<Ipv4Addr>,
}

/// A pod's network endpoint on a node (`projectcalico.org/v3` `WorkloadEndpoint`, or a Pod).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `spec.node`: where the pod runs.
    pub node: String,
    /// `spec.ipNetworks`: the pod's addresses, normally one /32.
    pub addrs: Vec<Ipv4Net>,
    /// `spec.interfaceName`: the host side of the pod's veth (`cali` + 11 hex digits).
    pub interface: String,
    /// `spec.mac`: the pod's own MAC, where known.
    pub mac: Option<MacAddr>,
}

impl Workload {
    /// `namespace/name`, the name problems and plans use for a workload endpoint.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Everything the dataplane needs to know about the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    /// IP pools.
    pub pools: Vec<IpPool>,
    /// IPAM blocks with their affinities.
    pub blocks: Vec<Block>,
    /// Nodes.
    pub nodes: Vec<Node>,
    /// Workload endpoints, on every node.
    pub workloads: Vec<Workload>,
}

impl Model {
    /// The same model with every list in a fixed order: datastores list resources in their own
    /// orders, and this compares what they mean.
    pub fn sorted(&self) -> Model {
        let mut model = self.clone();
        model.pools.sort_by(|a, b| a.name.cmp(&b.name));
        model.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        model.workloads.sort_by_key(|w| w.full_name());
        model.blocks.sort_by(|a, b| (a.cidr, &a.node).cmp(&(b.cidr, &b.node)));
        model
    }

    /// The node called `name`, if the datastore has it.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// A resource the datastore could not use, reported and skipped while the rest is applied.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Problem {
    /// The resource's kind, e.g. `IPPool`.
    pub kind: String,
    /// The resource's name (`namespace/name` for namespaced kinds), or a position if it has none.
    pub name: String,
    /// The offending field, e.g. `spec.cidr`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl Problem {
    /// A problem with `field` of the resource `kind` `name`.
    pub fn new(
        kind: impl Into<String>,
        name: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Problem { kind: kind.into(), name: name.into(), field: field.into(), message: message.into() }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}: {}: {}", self.kind, self.name, self.field, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encap_mode_parses_any_case() {
        assert_eq!("Never".parse(), Ok(EncapMode::Never));
        assert_eq!("always".parse(), Ok(EncapMode::Always));
        assert_eq!("CROSSSUBNET".parse(), Ok(EncapMode::CrossSubnet));
        assert_eq!("".parse(), Ok(EncapMode::Never));
        assert!("sometimes".parse::<EncapMode>().is_err());
        assert_eq!(EncapMode::CrossSubnet.to_string(), "CrossSubnet");
    }

    #[test]
    fn affinity_state_parses() {
        assert_eq!("confirmed".parse(), Ok(AffinityState::Confirmed));
        assert_eq!("pending".parse(), Ok(AffinityState::Pending));
        assert_eq!("pendingDeletion".parse(), Ok(AffinityState::PendingDeletion));
        assert!("claimed".parse::<AffinityState>().is_err());
    }

    #[test]
    fn mac_round_trips() {
        let mac: MacAddr = "66:D0:00:00:00:01".parse().expect("valid MAC");
        assert_eq!(mac.to_string(), "66:d0:00:00:00:01");
        assert!("66:d0:00:00:00".parse::<MacAddr>().is_err());
        assert!("66:d0:00:00:00:01:02".parse::<MacAddr>().is_err());
        assert!("zz:d0:00:00:00:01".parse::<MacAddr>().is_err());
        assert!("+6:d0:00:00:00:01".parse::<MacAddr>().is_err());
    }

    #[test]
    fn block_routes_only_when_confirmed_and_not_deleted() {
        let mut block = Block {
            cidr: "10.244.1.0/26".parse().expect("valid CIDR"),
            node: "node-1".into(),
            state: AffinityState::Confirmed,
            deleted: false,
        };
        assert!(block.routes());
        block.deleted = true;
        assert!(!block.routes());
        block.deleted = false;
        block.state = AffinityState::Pending;
        assert!(!block.routes());
    }
}
