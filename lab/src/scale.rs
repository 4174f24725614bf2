//! Large clusters for scale tests: a small cluster's YAML plus generated nodes, blocks and
//! workload endpoints that live on those generated nodes.
//!
//! Generated nodes exist only in the datastore (no namespace, no interfaces): the agent of a lab
//! node routes their blocks through their VTEPs and never delivers to their workloads, so only
//! the lab's own pods need real interfaces. The generated pool is 100.0.0.0/8 in /28 blocks
//! (room for 1,048,576), ten blocks per node up to [`MAX_NODES`] nodes, which then take the
//! further blocks in turn; node `n` has the address `10.101.0.0 + n + 1` and the first address
//! of its first block as VTEP; workload `i` takes the third address of block `i`.

use std::{fmt::Write as _, net::Ipv4Addr};

use dataplane::model::{AffinityState, Block, EncapMode, IpPool, MacAddr, Model, Node, Workload};
use ipnet::Ipv4Net;

/// Blocks each generated node owns, up to [`MAX_NODES`] nodes.
pub const BLOCKS_PER_NODE: usize = 10;
/// The most generated nodes: beyond `MAX_NODES * BLOCKS_PER_NODE` blocks the nodes own more
/// blocks each. Kubernetes supports 5,000 nodes, and the fast path's peers map holds 65,536.
pub const MAX_NODES: usize = 10_000;
/// The generated pool (every generated block is inside it).
pub const POOL_CIDR: &str = "100.0.0.0/8";
/// The generated pool's first address.
const POOL_START: u32 = 0x6400_0000;

/// How many nodes own `blocks` generated blocks.
pub fn nodes_for(blocks: usize) -> usize {
    blocks.div_ceil(BLOCKS_PER_NODE).min(MAX_NODES)
}

/// The generated node that owns block `index`: ten blocks per node, the nodes in turn.
pub fn node_of(index: usize) -> usize {
    (index / BLOCKS_PER_NODE) % MAX_NODES
}

/// `example` (Calico YAML) plus a pool, [`nodes_for`] `blocks` nodes owning `blocks` /28
/// blocks, and `workloads` workload endpoints on those nodes (at most one per block).
pub fn cluster(example: &str, blocks: usize, workloads: usize) -> String {
    let workloads = workloads.min(blocks);
    let nodes = nodes_for(blocks);
    let mut out = String::with_capacity(example.len() + blocks * 200 + nodes * 300 + workloads * 330);
    out.push_str(example);
    let _ = write!(
        out,
        "\n---\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: scale-pool}}\n\
         spec: {{cidr: {POOL_CIDR}, blockSize: 28, vxlanMode: Always, ipipMode: Never, natOutgoing: false}}\n"
    );
    for node in 0..nodes {
        let _ = write!(
            out,
            "---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {{name: scale-{node}}}\nspec:\n  \
             bgp: {{ipv4Address: {}/16}}\n  ipv4VXLANTunnelAddr: {}\n  vxlanTunnelMACAddr: \"66:d2:00:{}\"\n",
            dotted(0x0a65_0000 + node as u32 + 1),
            dotted(block_addr(node * BLOCKS_PER_NODE)),
            hex_bytes(node as u32, 3),
        );
    }
    for index in 0..blocks {
        let cidr = format!("{}/28", dotted(block_addr(index)));
        let _ = write!(
            out,
            "---\napiVersion: crd.projectcalico.org/v1\nkind: BlockAffinity\nmetadata: {{name: scale-{}}}\n\
             spec: {{cidr: {cidr}, node: scale-{}, state: confirmed, deleted: \"false\"}}\n",
            cidr.replace(['.', '/'], "-"),
            node_of(index),
        );
    }
    for index in 0..workloads {
        let addr = block_addr(index) + 2;
        let _ = write!(
            out,
            "---\napiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata: {{name: scale-{node}-k8s-pod--{index}-eth0, \
             namespace: scale}}\nspec: {{endpoint: eth0, interfaceName: cali{index:011x}, ipNetworks: [{}/32], \
             mac: \"0a:58:{}\", node: scale-{node}, orchestrator: k8s, pod: pod-{index}}}\n",
            dotted(addr),
            hex_bytes(addr, 4),
            node = node_of(index),
        );
    }
    out
}

/// `base` plus the same pool, nodes, blocks and workloads as [`cluster`], built as typed
/// resources (no YAML on the way): what the etcd benchmark writes into etcd and plans against.
pub fn model(base: &Model, blocks: usize, workloads: usize) -> Model {
    let workloads = workloads.min(blocks);
    let mut model = base.clone();
    model.pools.push(IpPool {
        name: "scale-pool".into(),
        cidr: POOL_CIDR.parse().unwrap_or_else(|_| Ipv4Net::default()),
        block_size: 28,
        vxlan_mode: EncapMode::Always,
        ipip_mode: EncapMode::Never,
        nat_outgoing: false,
        disabled: false,
    });
    model.nodes.extend((0..nodes_for(blocks)).map(|n| node(n, vtep_mac(n, 0))));
    model.blocks.extend((0..blocks).map(|index| block(index, node_of(index))));
    model.workloads.extend((0..workloads).map(|index| {
        let addr = block_addr(index) + 2;
        Workload {
            namespace: "scale".into(),
            name: format!("scale-{}-k8s-pod--{index}-eth0", node_of(index)),
            node: node_name(node_of(index)),
            addrs: vec![Ipv4Net::from(Ipv4Addr::from(addr))],
            interface: format!("cali{index:011x}"),
            mac: Some(MacAddr([0x0a, 0x58, (addr >> 24) as u8, (addr >> 16) as u8, (addr >> 8) as u8, addr as u8])),
        }
    }));
    model
}

/// The name of generated node `n`.
pub fn node_name(n: usize) -> String {
    format!("scale-{n}")
}

/// Generated node `n` with VTEP MAC `mac`: address `10.101.0.0 + n + 1`, VTEP the first address
/// of its first block.
pub fn node(n: usize, mac: MacAddr) -> Node {
    Node {
        name: node_name(n),
        addr: Ipv4Net::new(Ipv4Addr::from(0x0a65_0000 + n as u32 + 1), 16).ok(),
        vxlan_tunnel_addr: Some(Ipv4Addr::from(block_addr(n * BLOCKS_PER_NODE))),
        vxlan_tunnel_mac: Some(mac),
        ipip_tunnel_addr: None,
    }
}

/// The VTEP MAC of generated node `n` after `generation` changes: `66:d2:<generation>:<n>`.
pub fn vtep_mac(n: usize, generation: u8) -> MacAddr {
    let [_, a, b, c] = (n as u32).to_be_bytes();
    MacAddr([0x66, 0xd2, generation, a, b, c])
}

/// The `index`th /28 block of the generated pool, confirmed for generated node `node`.
pub fn block(index: usize, node: usize) -> Block {
    Block { cidr: block_cidr(index), node: node_name(node), state: AffinityState::Confirmed, deleted: false }
}

/// The `index`th /28 of the generated pool.
pub fn block_cidr(index: usize) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::from(block_addr(index)), 28).unwrap_or_default()
}

/// The `index`th /28 block of the generated pool.
fn block_addr(index: usize) -> u32 {
    POOL_START + (index as u32) * 16
}

fn dotted(addr: u32) -> String {
    std::net::Ipv4Addr::from(addr).to_string()
}

/// The low `count` bytes of `value` as colon-separated hex (a MAC's tail).
fn hex_bytes(value: u32, count: usize) -> String {
    let bytes = value.to_be_bytes();
    bytes[4 - count..].iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\n\
        spec: {cidr: 10.244.0.0/16, blockSize: 26, vxlanMode: Always}\n";

    #[test]
    fn the_generated_cluster_has_what_was_asked_for_and_nothing_the_datastore_skips() {
        let yaml = cluster(SMALL, 25, 12);
        let (model, problems) = dataplane::datastore::file::parse(&yaml).expect("parses");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(model.pools.len(), 2);
        assert_eq!(model.nodes.len(), 3);
        assert_eq!(model.blocks.len(), 25);
        assert_eq!(model.workloads.len(), 12);
        let plan = dataplane::plan::compute(&model, "scale-0").expect("plans").0;
        assert_eq!(plan.workloads.len(), 10, "scale-0 holds workloads 0-9");
    }

    #[test]
    fn the_typed_generator_builds_what_the_yaml_generator_writes() {
        let (base, _) = dataplane::datastore::file::parse(SMALL).expect("parses");
        let (from_yaml, _) = dataplane::datastore::file::parse(&cluster(SMALL, 25, 12)).expect("parses");
        assert_eq!(model(&base, 25, 12).sorted(), from_yaml.sorted());
    }

    #[test]
    fn a_million_blocks_fit_the_pool_on_at_most_max_nodes() {
        let pool: Ipv4Net = POOL_CIDR.parse().expect("the pool parses");
        let last = 1_000_000 + 2_000;
        assert!(pool.contains(&block_cidr(last)), "room for the bench's extra blocks beyond 1M");
        assert_eq!(nodes_for(1_000_000), MAX_NODES);
        assert_eq!(nodes_for(25), 3);
        // Every node's first block is its own, where its VTEP lives.
        assert_eq!(node_of(MAX_NODES * BLOCKS_PER_NODE - 1), MAX_NODES - 1);
        assert_eq!(node_of(MAX_NODES * BLOCKS_PER_NODE), 0);
        assert!((0..nodes_for(1_000_000)).all(|n| node_of(n * BLOCKS_PER_NODE) == n));
    }
}
