//! The lab's shape, decided before anything is created: names, subnets, gateways and MTUs.
//!
//! Pure: [`Topology::plan`] turns a [`Model`] and a name prefix into every namespace, interface,
//! address and route the lab will create, so that the choices can be unit-tested without root.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use anyhow::{bail, Context as _};
use dataplane::model::{EncapMode, MacAddr, Model};
use ipnet::Ipv4Net;

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// The uplink of every node, and the pod side of every workload veth.
pub const ETH0: &str = "eth0";

/// The MAC of the host side of every workload veth, as Calico sets it.
pub const CALI_HOST_MAC: &str = "ee:ee:ee:ee:ee:ee";

/// The pods' gateway: answered by the dataplane, never configured on any interface.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The external host's address (TEST-NET-1, outside every pool) and its prefix length.
pub const EXTERNAL_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// The fabric's address on the external host's subnet: the external host's default gateway.
pub const EXTERNAL_GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// Prefix length of the external subnet.
pub const EXTERNAL_PREFIX_LEN: u8 = 24;

/// MTU of a pod whose pool encapsulates in VXLAN (50 bytes of overhead).
pub const MTU_VXLAN: u32 = 1450;
/// MTU of a pod whose pool encapsulates in IP-in-IP (20 bytes of overhead).
pub const MTU_IPIP: u32 = 1480;
/// MTU of a pod whose pool does not encapsulate, and of every other link.
pub const MTU_PLAIN: u32 = 1500;

/// One node subnet: a bridge in the fabric namespace with the subnet's gateway on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetPlan {
    /// The subnet, e.g. 10.100.0.0/24.
    pub net: Ipv4Net,
    /// The bridge in the fabric namespace.
    pub bridge: String,
    /// The fabric's address on the bridge: the nodes' default gateway.
    pub gateway: Ipv4Addr,
}

/// One node: a namespace whose `eth0` is plugged into its subnet's bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePlan {
    /// The node's name in the model.
    pub name: String,
    /// The node's namespace.
    pub netns: String,
    /// The node's address with its subnet's prefix length, on `eth0`.
    pub addr: Ipv4Net,
    /// Index into [`Topology::subnets`].
    pub subnet: usize,
    /// The fabric side of the node's `eth0`.
    pub fabric_veth: String,
}

/// One pod: a namespace whose `eth0` is the peer of the workload's `caliX` in its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPlan {
    /// `namespace/pod`, e.g. `default/web-1`.
    pub key: String,
    /// `namespace/name` of the workload in the model (a WorkloadEndpoint's own name, such as
    /// `default/node--1-k8s-web--1-eth0`).
    pub endpoint: String,
    /// The pod's namespace.
    pub netns: String,
    /// The node the pod runs on.
    pub node: String,
    /// The host side of the veth, in the node namespace (`spec.interfaceName`).
    pub interface: String,
    /// The pod's addresses, each configured as a /32.
    pub addrs: Vec<Ipv4Addr>,
    /// The pod side's MAC, if the model gives one.
    pub mac: Option<MacAddr>,
    /// The pod side's MTU, from the encapsulation of the pod's pool.
    pub mtu: u32,
}

/// The external host, outside every pool, for traffic leaving the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalPlan {
    /// The external host's namespace.
    pub netns: String,
    /// Its address and prefix length.
    pub addr: Ipv4Net,
    /// The fabric's address on the external subnet (with the same prefix length).
    pub gateway: Ipv4Net,
    /// The bridge in the fabric namespace.
    pub bridge: String,
    /// The fabric side of the external host's `eth0`.
    pub fabric_veth: String,
}

/// Everything the lab creates, by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// The prefix of every namespace and of the bpffs directory (`dpl-<hex>`).
    pub prefix: String,
    /// The fabric namespace: bridges and routing between subnets.
    pub fabric_netns: String,
    /// Node subnets, in order of first appearance.
    pub subnets: Vec<SubnetPlan>,
    /// Nodes, in model order.
    pub nodes: Vec<NodePlan>,
    /// Pods, in model order.
    pub pods: Vec<PodPlan>,
    /// The external host.
    pub external: ExternalPlan,
}

impl Topology {
    /// Decides every name and address of a lab for `model`, with namespaces named `<prefix>-...`.
    pub fn plan(model: &Model, prefix: &str) -> anyhow::Result<Topology> {
        let external_net =
            Ipv4Net::new(EXTERNAL_ADDR, EXTERNAL_PREFIX_LEN).context("the external subnet's prefix length")?.trunc();

        // Nodes first: their addresses decide the subnets and the gateways.
        let mut node_addrs = Vec::new();
        let mut netns_names = BTreeSet::new();
        for node in &model.nodes {
            let Some(addr) = node.addr else {
                bail!("node {:?} has no address (spec.bgp.ipv4Address): the lab cannot wire it", node.name);
            };
            if addr.trunc().contains(&EXTERNAL_ADDR) || external_net.contains(&addr.addr()) {
                bail!("node {:?} address {addr} overlaps the lab's external subnet {external_net}", node.name);
            }
            node_addrs.push(addr);
        }
        let subnets = group_subnets(&node_addrs)?;

        let mut nodes = Vec::new();
        for (index, (node, addr)) in model.nodes.iter().zip(&node_addrs).enumerate() {
            let netns = format!("{prefix}-{}", sanitize(&node.name));
            if !netns_names.insert(netns.clone()) {
                bail!("two nodes map to the same namespace name {netns:?}");
            }
            let subnet = subnets
                .iter()
                .position(|s| s.net == addr.trunc())
                .context("a node's subnet is missing from the grouping")?;
            nodes.push(NodePlan {
                name: node.name.clone(),
                netns,
                addr: *addr,
                subnet,
                fabric_veth: ifname(&format!("n{index}-{}", sanitize(&node.name))),
            });
        }

        let mut pods = Vec::new();
        let mut interfaces: BTreeMap<(String, String), String> = BTreeMap::new();
        for workload in &model.workloads {
            let pod_name = pod_name(&workload.name, &workload.node);
            let key = format!("{}/{pod_name}", workload.namespace);
            let endpoint = format!("{}/{}", workload.namespace, workload.name);
            let Some(node) = nodes.iter().find(|n| n.name == workload.node) else {
                bail!("workload {key} runs on node {:?}, which the model does not have", workload.node);
            };
            if workload.interface.is_empty() || workload.interface.len() > IFNAME_MAX {
                bail!(
                    "workload {key} has interfaceName {:?}: it must be 1 to {IFNAME_MAX} characters",
                    workload.interface
                );
            }
            if workload.interface == ETH0 {
                bail!("workload {key} has interfaceName eth0, which is the node's uplink in the lab");
            }
            let clash = interfaces.insert((workload.node.clone(), workload.interface.clone()), key.clone());
            if let Some(other) = clash {
                bail!("workloads {other} and {key} share interfaceName {:?}", workload.interface);
            }
            let addrs: Vec<Ipv4Addr> = workload.addrs.iter().map(|a| a.addr()).collect();
            let Some(first) = addrs.first() else {
                bail!("workload {key} has no address (spec.ipNetworks)");
            };

            // The pod name alone reads best; add the Kubernetes namespace only to break a tie.
            let mut netns = format!("{prefix}-{}-{}", sanitize(&node.name), sanitize(&pod_name));
            if netns_names.contains(&netns) {
                netns = format!(
                    "{prefix}-{}-{}-{}",
                    sanitize(&node.name),
                    sanitize(&workload.namespace),
                    sanitize(&pod_name)
                );
            }
            if !netns_names.insert(netns.clone()) {
                bail!("workload {key} maps to namespace {netns:?}, which is already taken");
            }

            if pods.iter().any(|p: &PodPlan| p.key == key) {
                bail!("two workloads are pod {key} (the second is {endpoint})");
            }
            pods.push(PodPlan {
                key,
                endpoint,
                netns,
                node: node.name.clone(),
                interface: workload.interface.clone(),
                mac: workload.mac,
                mtu: pod_mtu(model, *first),
                addrs,
            });
        }

        let external = ExternalPlan {
            netns: format!("{prefix}-ext"),
            addr: Ipv4Net::new(EXTERNAL_ADDR, EXTERNAL_PREFIX_LEN).context("external address")?,
            gateway: Ipv4Net::new(EXTERNAL_GATEWAY, EXTERNAL_PREFIX_LEN).context("external gateway")?,
            bridge: "brext".to_owned(),
            fabric_veth: "ext".to_owned(),
        };
        let fabric_netns = format!("{prefix}-fabric");
        for name in [&external.netns, &fabric_netns] {
            if netns_names.contains(name) {
                bail!("a node or pod maps to the lab's reserved namespace name {name:?}");
            }
        }

        Ok(Topology { prefix: prefix.to_owned(), fabric_netns, subnets, nodes, pods, external })
    }
}

/// Turns a name into something safe in a namespace or interface name: `[A-Za-z0-9_.-]`, other
/// characters become `-`.
pub fn sanitize(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '-' })
        .collect();
    if cleaned.is_empty() {
        "x".to_owned()
    } else {
        cleaned
    }
}

/// The pod's name for a workload called `name` on `node`.
///
/// A Calico WorkloadEndpoint is named `<node>-<orchestrator>-<pod>-<endpoint>` with every `-`
/// inside a part doubled (`node--1-k8s-web--1-eth0` is pod `web-1` on `node-1`); people and tests
/// name the pod. A name that is not in that form (a Pod's own name) is the pod's name already.
pub fn pod_name(name: &str, node: &str) -> String {
    let mut parts = Vec::new();
    let mut part = String::new();
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '-' {
            part.push(c);
        } else if chars.peek() == Some(&'-') {
            chars.next();
            part.push('-');
        } else {
            parts.push(std::mem::take(&mut part));
        }
    }
    parts.push(part);
    match parts.as_slice() {
        [wep_node, orchestrator, pod, endpoint]
            if wep_node == node && !orchestrator.is_empty() && !pod.is_empty() && !endpoint.is_empty() =>
        {
            pod.clone()
        }
        _ => name.to_owned(),
    }
}

/// Cuts a name to the kernel's interface name limit.
pub fn ifname(name: &str) -> String {
    name.chars().take(IFNAME_MAX).collect()
}

/// Groups node addresses by their network, in order of first appearance, and gives each subnet a
/// bridge name (`br0`, `br1`, ...) and a gateway that no node uses.
pub fn group_subnets(node_addrs: &[Ipv4Net]) -> anyhow::Result<Vec<SubnetPlan>> {
    let mut subnets: Vec<SubnetPlan> = Vec::new();
    for addr in node_addrs {
        let net = addr.trunc();
        if subnets.iter().any(|s| s.net == net) {
            continue;
        }
        // Overlapping subnets of different lengths would make the fabric's routing ambiguous.
        if let Some(other) = subnets.iter().find(|s| s.net.contains(&net) || net.contains(&s.net)) {
            bail!("node subnets {} and {net} overlap: give nodes on one link the same prefix length", other.net);
        }
        let used: Vec<Ipv4Addr> = node_addrs.iter().filter(|a| a.trunc() == net).map(|a| a.addr()).collect();
        let gateway = choose_gateway(net, &used)?;
        subnets.push(SubnetPlan { net, bridge: format!("br{}", subnets.len()), gateway });
    }
    Ok(subnets)
}

/// The subnet's gateway: its last usable address, or the highest one below it that no node uses.
pub fn choose_gateway(net: Ipv4Net, used: &[Ipv4Addr]) -> anyhow::Result<Ipv4Addr> {
    net.hosts()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .find(|candidate| !used.contains(candidate))
        .with_context(|| format!("subnet {net} has no free address left for the fabric's gateway"))
}

/// The MTU of a pod with address `addr`: 1450 in a VXLAN pool, 1480 in an IP-in-IP pool, else 1500.
pub fn pod_mtu(model: &Model, addr: Ipv4Addr) -> u32 {
    // The most specific pool wins, as the dataplane's own lookup does.
    let pool = model.pools.iter().filter(|p| p.cidr.contains(&addr)).max_by_key(|p| p.cidr.prefix_len());
    match pool {
        Some(p) if p.vxlan_mode != EncapMode::Never => MTU_VXLAN,
        Some(p) if p.ipip_mode != EncapMode::Never => MTU_IPIP,
        _ => MTU_PLAIN,
    }
}

#[cfg(test)]
mod tests {
    use dataplane::model::{IpPool, Node, Workload};

    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("test literal")
    }

    fn pool(cidr: &str, vxlan: EncapMode, ipip: EncapMode) -> IpPool {
        IpPool {
            name: cidr.to_owned(),
            cidr: net(cidr),
            block_size: 26,
            vxlan_mode: vxlan,
            ipip_mode: ipip,
            nat_outgoing: false,
            disabled: false,
        }
    }

    fn node(name: &str, addr: &str) -> Node {
        Node { name: name.to_owned(), addr: Some(net(addr)), ..Node::default() }
    }

    fn workload(ns: &str, name: &str, node: &str, addr: &str, interface: &str) -> Workload {
        Workload {
            namespace: ns.to_owned(),
            name: name.to_owned(),
            node: node.to_owned(),
            addrs: vec![net(addr)],
            interface: interface.to_owned(),
            mac: None,
        }
    }

    fn two_nodes() -> Model {
        Model {
            pools: vec![pool("10.244.0.0/16", EncapMode::Always, EncapMode::Never)],
            blocks: vec![],
            nodes: vec![node("node-1", "10.100.0.11/24"), node("node-2", "10.100.0.12/24")],
            workloads: vec![
                workload("default", "web-1", "node-1", "10.244.1.2/32", "cali1a2b3c4d5e6"),
                workload("default", "cache-1", "node-1", "10.244.1.3/32", "cali0123456789a"),
                workload("default", "web-2", "node-2", "10.244.2.2/32", "califedcba98765"),
            ],
        }
    }

    #[test]
    fn sanitize_keeps_safe_characters_and_replaces_the_rest() {
        assert_eq!(sanitize("node-1.example_a"), "node-1.example_a");
        assert_eq!(sanitize("a/b c:d"), "a-b-c-d");
        assert_eq!(sanitize(""), "x");
    }

    #[test]
    fn workload_endpoint_names_give_the_pod_name() {
        assert_eq!(pod_name("node--1-k8s-web--1-eth0", "node-1"), "web-1");
        assert_eq!(pod_name("node1-k8s-web-eth0", "node1"), "web");
        assert_eq!(pod_name("my--node-cni-a--b--c-eth0", "my-node"), "a-b-c");
        // Not a WorkloadEndpoint name for this node: kept as it is.
        assert_eq!(pod_name("web-1", "node-1"), "web-1");
        assert_eq!(pod_name("node--2-k8s-web--1-eth0", "node-1"), "node--2-k8s-web--1-eth0");
    }

    #[test]
    fn ifname_cuts_to_fifteen_characters() {
        assert_eq!(ifname("n0-a-very-long-node-name"), "n0-a-very-long-");
        assert_eq!(ifname("n1-short"), "n1-short");
    }

    #[test]
    fn nodes_on_one_network_share_a_subnet() {
        let subnets =
            group_subnets(&[net("10.100.0.11/24"), net("10.100.1.5/24"), net("10.100.0.12/24")]).expect("groups");
        assert_eq!(subnets.len(), 2);
        assert_eq!(subnets[0].net, net("10.100.0.0/24"));
        assert_eq!(subnets[0].bridge, "br0");
        assert_eq!(subnets[1].net, net("10.100.1.0/24"));
        assert_eq!(subnets[1].bridge, "br1");
    }

    #[test]
    fn overlapping_subnets_are_refused() {
        assert!(group_subnets(&[net("10.100.0.11/24"), net("10.100.0.12/16")]).is_err());
    }

    #[test]
    fn gateway_is_the_last_usable_address_unless_a_node_has_it() {
        let subnet = net("10.100.0.0/24");
        assert_eq!(choose_gateway(subnet, &[]).expect("free"), Ipv4Addr::new(10, 100, 0, 254));
        let used = [Ipv4Addr::new(10, 100, 0, 254), Ipv4Addr::new(10, 100, 0, 253)];
        assert_eq!(choose_gateway(subnet, &used).expect("free"), Ipv4Addr::new(10, 100, 0, 252));
        let full = net("10.0.0.0/30");
        assert!(choose_gateway(full, &[Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]).is_err());
    }

    #[test]
    fn mtu_follows_the_pools_encapsulation() {
        let model = Model {
            pools: vec![
                pool("10.244.0.0/16", EncapMode::Always, EncapMode::Never),
                pool("10.245.0.0/16", EncapMode::Never, EncapMode::CrossSubnet),
                pool("10.246.0.0/16", EncapMode::Never, EncapMode::Never),
                pool("10.247.0.0/16", EncapMode::CrossSubnet, EncapMode::Never),
            ],
            ..Model::default()
        };
        assert_eq!(pod_mtu(&model, Ipv4Addr::new(10, 244, 1, 2)), 1450);
        assert_eq!(pod_mtu(&model, Ipv4Addr::new(10, 245, 1, 2)), 1480);
        assert_eq!(pod_mtu(&model, Ipv4Addr::new(10, 246, 1, 2)), 1500);
        assert_eq!(pod_mtu(&model, Ipv4Addr::new(10, 247, 1, 2)), 1450);
        assert_eq!(pod_mtu(&model, Ipv4Addr::new(192, 168, 1, 2)), 1500);
    }

    #[test]
    fn two_nodes_plan() {
        let topology = Topology::plan(&two_nodes(), "dpl-abc123").expect("plans");
        assert_eq!(topology.fabric_netns, "dpl-abc123-fabric");
        assert_eq!(topology.external.netns, "dpl-abc123-ext");
        assert_eq!(topology.subnets.len(), 1);
        assert_eq!(topology.subnets[0].gateway, Ipv4Addr::new(10, 100, 0, 254));
        assert_eq!(topology.nodes[0].netns, "dpl-abc123-node-1");
        assert_eq!(topology.nodes[1].fabric_veth, "n1-node-2");
        let web1 = &topology.pods[0];
        assert_eq!(web1.key, "default/web-1");
        assert_eq!(web1.netns, "dpl-abc123-node-1-web-1");
        assert_eq!(web1.interface, "cali1a2b3c4d5e6");
        assert_eq!(web1.addrs, vec![Ipv4Addr::new(10, 244, 1, 2)]);
        assert_eq!(web1.mtu, 1450);
        for plan in &topology.nodes {
            assert!(plan.fabric_veth.len() <= IFNAME_MAX);
        }
    }

    #[test]
    fn same_pod_name_in_two_namespaces_gets_distinct_netns() {
        let mut model = two_nodes();
        model.workloads.push(workload("other", "web-1", "node-1", "10.244.1.9/32", "cali99999999999"));
        let topology = Topology::plan(&model, "dpl-1").expect("plans");
        assert_eq!(topology.pods[3].netns, "dpl-1-node-1-other-web-1");
    }

    #[test]
    fn bad_models_are_refused_with_a_reason() {
        let mut model = two_nodes();
        model.workloads[0].node = "node-9".to_owned();
        assert!(Topology::plan(&model, "dpl-1").is_err());

        let mut model = two_nodes();
        model.workloads[0].interface = "cali-name-too-long".to_owned();
        assert!(Topology::plan(&model, "dpl-1").is_err());

        let mut model = two_nodes();
        model.nodes[0].addr = None;
        assert!(Topology::plan(&model, "dpl-1").is_err());

        let mut model = two_nodes();
        model.workloads[1].interface = model.workloads[0].interface.clone();
        assert!(Topology::plan(&model, "dpl-1").is_err());
    }
}
