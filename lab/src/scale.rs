//! Large clusters for scale tests: a small cluster's YAML plus generated nodes, blocks and
//! workload endpoints that live on those generated nodes.
//!
//! Generated nodes exist only in the datastore (no namespace, no interfaces): the agent of a lab
//! node routes their blocks through their VTEPs and never delivers to their workloads, so only
//! the lab's own pods need real interfaces. The generated pool is 100.64.0.0/10 in /28 blocks
//! (room for 262,144), ten blocks per node; node `n` has the address `10.101.0.0 + n + 1` and
//! the first address of its first block as VTEP; workload `i` takes the third address of block
//! `i`.

use std::{fmt::Write as _, net::Ipv4Addr};

use dataplane::model::{AffinityState, Block, EncapMode, IpPool, MacAddr, Model, Node, Workload};
use ipnet::Ipv4Net;

/// Blocks each generated node owns.
pub const BLOCKS_PER_NODE: usize = 10;
/// The generated pool (every generated block is inside it).
pub const POOL_CIDR: &str = "100.64.0.0/10";

/// `example` (Calico YAML) plus a pool, `blocks.div_ceil(BLOCKS_PER_NODE)` nodes owning `blocks`
/// /28 blocks, and `workloads` workload endpoints on those nodes (at most one per block).
pub fn cluster(example: &str, blocks: usize, workloads: usize) -> String {
    let workloads = workloads.min(blocks);
    let nodes = blocks.div_ceil(BLOCKS_PER_NODE);
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
            index / BLOCKS_PER_NODE,
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
            node = index / BLOCKS_PER_NODE,
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
    model.nodes.extend((0..blocks.div_ceil(BLOCKS_PER_NODE)).map(|n| node(n, vtep_mac(n, 0))));
    model.blocks.extend((0..blocks).map(|index| block(index, index / BLOCKS_PER_NODE)));
    model.workloads.extend((0..workloads).map(|index| {
        let addr = block_addr(index) + 2;
        Workload {
            namespace: "scale".into(),
            name: format!("scale-{}-k8s-pod--{index}-eth0", index / BLOCKS_PER_NODE),
            node: node_name(index / BLOCKS_PER_NODE),
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
    0x6440_0000 + (index as u32) * 16
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
}
