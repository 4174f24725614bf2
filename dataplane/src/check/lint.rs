//! Pure checks of the cluster's resources: pools, blocks, tunnel addresses, the model's problems.

use std::collections::BTreeSet;

use ipnet::Ipv4Net;

use crate::model::{Model, Problem};

use super::*;

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
