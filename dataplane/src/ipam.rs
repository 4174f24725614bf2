//! `dataplane ipam show [--show-blocks]`: IP pools and IPAM blocks with the addresses they hold,
//! in the table `calicoctl ipam show --show-blocks` prints.
//!
//! The model carries no IPAM allocation records, so "in use" is counted the way Calico allocates:
//! every workload endpoint's addresses, plus every node's VXLAN and IPIP tunnel addresses (Calico
//! takes those from the node's own block too). An address is counted once however many resources
//! name it. The numbers are computed by pure functions; reading the datastore is at the edge.

use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use anyhow::{bail, Context as _};
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::{
    agent::Datastore,
    datastore::{etcd::EtcdConfig, file, Snapshot},
    model::Model,
};

/// How long a one-shot read of etcd may take before the command gives up.
pub const ETCD_READ_TIMEOUT: Duration = Duration::from_secs(15);

/// Reads the whole cluster once from `datastore`: the file, one consistent read of etcd (the
/// first snapshot of a watch, which is a full read at one revision; the watch is then stopped),
/// or one list of every kind from the Kubernetes API.
pub fn read_once(datastore: &Datastore, etcd: &EtcdConfig) -> anyhow::Result<Snapshot> {
    match datastore {
        Datastore::File(path) => {
            let (model, problems) = file::load(path)?;
            Ok(Snapshot { model, problems })
        }
        Datastore::Etcdv3 => {
            etcd.check()?;
            let watch = crate::datastore::etcd::watch_thread(etcd.clone()).context("starting the etcd read")?;
            match watch.recv_timeout(ETCD_READ_TIMEOUT) {
                Some(snapshot) => Ok(snapshot),
                None => bail!(
                    "no answer from etcd at {} within {} s: check --etcd-endpoints (ETCD_ENDPOINTS) and \
                     the TLS settings",
                    etcd.endpoints.join(","),
                    ETCD_READ_TIMEOUT.as_secs()
                ),
            }
        }
        Datastore::Kubernetes(config) => crate::datastore::kubernetes::read_once(config),
    }
}

/// Addresses of one pool or block: how many there are and how many are taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BlockUsage {
    /// The block's CIDR.
    pub cidr: Ipv4Net,
    /// The node(s) the block is affine to, comma-separated (normally one).
    pub node: String,
    /// Every address of the block.
    pub total: u64,
    /// Addresses allocated to workloads and tunnel devices.
    pub in_use: u64,
    /// `total - in_use`.
    pub free: u64,
}

/// A pool with its numbers and the blocks carved from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PoolUsage {
    /// `metadata.name`.
    pub name: String,
    /// The pool's CIDR.
    pub cidr: Ipv4Net,
    /// Every address of the pool.
    pub total: u64,
    /// Addresses allocated in the pool (in its blocks or not).
    pub in_use: u64,
    /// `total - in_use`.
    pub free: u64,
    /// The pool's blocks, by address.
    pub blocks: Vec<BlockUsage>,
}

/// Every address Calico would have allocated: workloads' addresses and nodes' tunnel addresses.
pub fn allocated_addresses(model: &Model) -> BTreeSet<Ipv4Addr> {
    let mut addrs = BTreeSet::new();
    for workload in &model.workloads {
        addrs.extend(workload.addrs.iter().map(|net| net.addr()));
    }
    for node in &model.nodes {
        addrs.extend(node.vxlan_tunnel_addr);
        addrs.extend(node.ipip_tunnel_addr);
    }
    addrs
}

/// Number of addresses in `net` (2^(32 - prefix length)).
pub fn size(net: &Ipv4Net) -> u64 {
    1u64 << (32 - u32::from(net.prefix_len()))
}

/// How many of `addrs` lie in `net`.
fn count_in(net: &Ipv4Net, addrs: &BTreeSet<Ipv4Addr>) -> u64 {
    // The set is ordered: only the range of the network needs to be walked.
    addrs.range(net.network()..=net.broadcast()).count() as u64
}

/// The pools (by address) with their blocks. A block belongs to the first pool of the model that
/// contains it, as the planner decides; blocks outside every pool are not listed (`dataplane
/// check` reports them). A block affine to several nodes is listed once.
pub fn usage(model: &Model) -> Vec<PoolUsage> {
    let addrs = allocated_addresses(model);
    let mut pools: Vec<PoolUsage> = model
        .pools
        .iter()
        .map(|pool| {
            let cidr = pool.cidr.trunc();
            let total = size(&cidr);
            let in_use = count_in(&cidr, &addrs);
            PoolUsage { name: pool.name.clone(), cidr, total, in_use, free: total - in_use, blocks: Vec::new() }
        })
        .collect();

    let mut cidrs: Vec<Ipv4Net> = model.blocks.iter().map(|b| b.cidr.trunc()).collect();
    cidrs.sort_by_key(|net| (net.network(), net.prefix_len()));
    cidrs.dedup();
    for cidr in cidrs {
        let Some(pool) = pools.iter_mut().find(|p| p.cidr.contains(&cidr)) else {
            continue;
        };
        let mut nodes: Vec<&str> =
            model.blocks.iter().filter(|b| b.cidr.trunc() == cidr).map(|b| b.node.as_str()).collect();
        nodes.sort_unstable();
        nodes.dedup();
        let total = size(&cidr);
        let in_use = count_in(&cidr, &addrs);
        pool.blocks.push(BlockUsage { cidr, node: nodes.join(","), total, in_use, free: total - in_use });
    }
    pools.sort_by_key(|p| (p.cidr.network(), p.cidr.prefix_len()));
    pools
}

/// `n (p%)` as calicoctl prints it: the share rounded to a whole percent (half to even, as Go's
/// `%.0f`, which Rust's `{:.0}` also does).
fn with_percent(n: u64, total: u64) -> String {
    let percent = if total == 0 { 0.0 } else { n as f64 * 100.0 / total as f64 };
    format!("{n} ({percent:.0}%)")
}

/// The table of `calicoctl ipam show` (`show_blocks`: and `--show-blocks`), in its layout:
/// headers centred, the total right-aligned, the rest left-aligned.
pub fn table(pools: &[PoolUsage], show_blocks: bool) -> String {
    let mut rows: Vec<[String; 5]> = Vec::new();
    for pool in pools {
        rows.push([
            "IP Pool".into(),
            pool.cidr.to_string(),
            pool.total.to_string(),
            with_percent(pool.in_use, pool.total),
            with_percent(pool.free, pool.total),
        ]);
        if show_blocks {
            for block in &pool.blocks {
                rows.push([
                    "Block".into(),
                    block.cidr.to_string(),
                    block.total.to_string(),
                    with_percent(block.in_use, block.total),
                    with_percent(block.free, block.total),
                ]);
            }
        }
    }
    let header = ["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let rule = {
        let mut line = String::from("+");
        for width in widths {
            line.push_str(&"-".repeat(width + 2));
            line.push('+');
        }
        line.push('\n');
        line
    };
    let mut out = rule.clone();
    out.push('|');
    for (text, width) in header.iter().zip(widths) {
        let left = (width - text.len()) / 2;
        let right = width - text.len() - left;
        out.push_str(&format!(" {}{text}{} |", " ".repeat(left), " ".repeat(right)));
    }
    out.push('\n');
    out.push_str(&rule);
    for row in &rows {
        out.push('|');
        for (column, (cell, width)) in row.iter().zip(widths).enumerate() {
            if column == 2 {
                out.push_str(&format!(" {cell:>width$} |"));
            } else {
                out.push_str(&format!(" {cell:<width$} |"));
            }
        }
        out.push('\n');
    }
    out.push_str(&rule);
    out
}

/// The pools as JSON: `{"pools": [{name, cidr, total, in_use, free, blocks: [...]}]}`; blocks are
/// left out without `show_blocks`.
pub fn json(pools: &[PoolUsage], show_blocks: bool) -> serde_json::Value {
    let mut value = serde_json::json!({ "pools": pools });
    if !show_blocks {
        if let Some(list) = value["pools"].as_array_mut() {
            for pool in list {
                if let Some(object) = pool.as_object_mut() {
                    object.remove("blocks");
                }
            }
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        fixtures::{self, net},
        model::{AffinityState, Block, IpPool, Node, Workload},
    };

    /// The pools of these tests have natOutgoing, as the example's.
    fn pool(name: &str, cidr: &str, block_size: u8) -> IpPool {
        IpPool { nat_outgoing: true, ..fixtures::pool(name, cidr, block_size) }
    }

    fn block(cidr: &str, node: &str) -> Block {
        Block { cidr: net(cidr), node: node.into(), state: AffinityState::Confirmed, deleted: false }
    }

    fn workload(name: &str, addr: &str) -> Workload {
        Workload {
            namespace: "default".into(),
            name: name.into(),
            node: "n".into(),
            addrs: vec![net(addr)],
            interface: format!("cali{name}"),
            mac: None,
        }
    }

    fn node(name: &str, vtep: Option<&str>) -> Node {
        Node {
            name: name.into(),
            addr: Some(net("10.100.0.1/24")),
            vxlan_tunnel_addr: vtep.map(|a| a.parse().expect("test address")),
            ..Node::default()
        }
    }

    /// The example cluster: one /16 pool, two /26 blocks, three pods, two VTEPs.
    fn two_nodes() -> Model {
        Model {
            pools: vec![pool("default-ipv4-ippool", "10.244.0.0/16", 26)],
            blocks: vec![block("10.244.2.0/26", "node-2"), block("10.244.1.0/26", "node-1")],
            nodes: vec![node("node-1", Some("10.244.1.0")), node("node-2", Some("10.244.2.0"))],
            workloads: vec![
                workload("web-1", "10.244.1.2/32"),
                workload("cache-1", "10.244.1.3/32"),
                workload("web-2", "10.244.2.2/32"),
            ],
        }
    }

    #[test]
    fn counts_pods_and_tunnel_addresses_per_pool_and_block() {
        let pools = usage(&two_nodes());
        assert_eq!(pools.len(), 1);
        let pool = &pools[0];
        assert_eq!((pool.total, pool.in_use, pool.free), (65536, 5, 65531));
        let blocks: Vec<(String, u64, u64, &str)> =
            pool.blocks.iter().map(|b| (b.cidr.to_string(), b.total, b.in_use, b.node.as_str())).collect();
        assert_eq!(blocks, vec![("10.244.1.0/26".into(), 64, 3, "node-1"), ("10.244.2.0/26".into(), 64, 2, "node-2")]);
    }

    #[test]
    fn an_address_named_twice_counts_once_and_blocks_outside_pools_are_not_listed() {
        let mut model = two_nodes();
        model.workloads.push(workload("dup", "10.244.1.2/32"));
        model.blocks.push(block("10.99.0.0/26", "node-1"));
        model.blocks.push(block("10.244.1.0/26", "node-3"));
        let pools = usage(&model);
        assert_eq!(pools[0].in_use, 5);
        let cidrs: Vec<String> = pools[0].blocks.iter().map(|b| b.cidr.to_string()).collect();
        assert_eq!(cidrs, vec!["10.244.1.0/26", "10.244.2.0/26"]);
        assert_eq!(pools[0].blocks[0].node, "node-1,node-3");
    }

    #[test]
    fn a_block_goes_to_the_first_pool_that_contains_it() {
        let mut model = two_nodes();
        model.pools.push(pool("inner", "10.244.1.0/24", 26));
        let pools = usage(&model);
        // Sorted by address: the /16 first (same network, shorter prefix), then the /24.
        assert_eq!(pools[0].name, "default-ipv4-ippool");
        assert_eq!(pools[0].blocks.len(), 2);
        assert!(pools[1].blocks.is_empty());
        // The /24's own count still sees the addresses inside it.
        assert_eq!(pools[1].in_use, 3);
    }

    #[test]
    fn percentages_round_like_calicoctl() {
        // The seeds' own rows: 3 of 64 is "5%", 20 of 65536 is "0%", 65516 of 65536 is "100%".
        assert_eq!(with_percent(3, 64), "3 (5%)");
        assert_eq!(with_percent(61, 64), "61 (95%)");
        assert_eq!(with_percent(7, 64), "7 (11%)");
        assert_eq!(with_percent(20, 65536), "20 (0%)");
        assert_eq!(with_percent(65516, 65536), "65516 (100%)");
        assert_eq!(with_percent(12, 64), "12 (19%)");
        assert_eq!(with_percent(1, 16), "1 (6%)");
    }

    #[test]
    fn table_has_calicoctls_layout() {
        let text = table(&usage(&two_nodes()), true);
        let expected = "\
+----------+---------------+-----------+------------+--------------+
| GROUPING |     CIDR      | IPS TOTAL | IPS IN USE |   IPS FREE   |
+----------+---------------+-----------+------------+--------------+
| IP Pool  | 10.244.0.0/16 |     65536 | 5 (0%)     | 65531 (100%) |
| Block    | 10.244.1.0/26 |        64 | 3 (5%)     | 61 (95%)     |
| Block    | 10.244.2.0/26 |        64 | 2 (3%)     | 62 (97%)     |
+----------+---------------+-----------+------------+--------------+
";
        assert_eq!(text, expected);
        let pools_only = table(&usage(&two_nodes()), false);
        assert!(!pools_only.contains("Block"), "{pools_only}");
        assert!(pools_only.contains("| IP Pool  | 10.244.0.0/16 |"), "{pools_only}");
    }

    #[test]
    fn json_names_the_numbers() {
        let value = json(&usage(&two_nodes()), true);
        assert_eq!(value["pools"][0]["cidr"], "10.244.0.0/16");
        assert_eq!(value["pools"][0]["total"], 65536);
        assert_eq!(value["pools"][0]["in_use"], 5);
        assert_eq!(value["pools"][0]["blocks"][1]["cidr"], "10.244.2.0/26");
        assert_eq!(value["pools"][0]["blocks"][1]["in_use"], 2);
        let without = json(&usage(&two_nodes()), false);
        assert!(without["pools"][0].get("blocks").is_none());
    }

    #[test]
    fn example_file_reads_as_expected() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/two-nodes.yaml");
        let (model, problems) = file::load(&path).expect("example loads");
        assert!(problems.is_empty(), "{problems:?}");
        let pools = usage(&model);
        assert_eq!((pools[0].total, pools[0].in_use), (65536, 5));
    }
}
