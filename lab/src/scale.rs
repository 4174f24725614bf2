//! Large clusters for scale tests: a small cluster's YAML plus generated nodes, blocks and
//! workload endpoints that live on those generated nodes.
//!
//! Generated nodes exist only in the datastore (no namespace, no interfaces): the agent of a lab
//! node routes their blocks through their VTEPs and never delivers to their workloads, so only
//! the lab's own pods need real interfaces. The generated pool is 100.64.0.0/10 in /28 blocks
//! (room for 262,144), ten blocks per node; node `n` has the address `10.101.0.0 + n + 1` and
//! the first address of its first block as VTEP; workload `i` takes the third address of block
//! `i`.

use std::fmt::Write as _;

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
}
