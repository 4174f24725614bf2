//! `dataplane datastore export --to etcdv3`: a model written into etcd in Calico's layout.
//!
//! [`keys`] turns a [`Model`] into the keys calicoctl and calico-node would have written (see
//! [`super::keys`] for the layout): the v3 resources as JSON with the fields the model holds, in
//! Calico's field names; one host affinity per block; one allocation block per block, with the
//! workloads' addresses (and the node's VXLAN and IPIP tunnel addresses) allocated in it, so that
//! `calicoctl ipam show --show-blocks` and `dataplane ipam show` count them as in use.
//!
//! [`write`] puts them in one etcd transaction when they fit in etcd's default limit of
//! operations per transaction ([`MAX_TXN_OPS`], etcd's `--max-txn-ops`), otherwise in
//! consecutive transactions of that size: a cluster larger than that cannot be written
//! atomically into an etcd with default settings. Keys already in etcd are overwritten; keys
//! that the model does not hold are left alone.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
};

use anyhow::{bail, Context as _};
use etcd_client::{Client, Txn, TxnOp};
use ipnet::Ipv4Net;
use serde_json::{json, Map, Value as Json};

use super::{connect_options, keys, timed, EtcdConfig};
use crate::model::{AffinityState, Model};

/// etcd's default `--max-txn-ops`: the most operations one transaction may hold.
pub const MAX_TXN_OPS: usize = 128;

/// The smallest block (largest number of addresses) an allocation block is written for: Calico
/// allows IPv4 block sizes from /20 to /32.
const LARGEST_BLOCK_PREFIX: u8 = 20;

/// What [`write`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// How many keys were put.
    pub keys: usize,
    /// In how many transactions.
    pub transactions: usize,
    /// etcd's revision after the last transaction.
    pub revision: i64,
}

/// The keys and values (JSON text) that describe `model` under `prefix`, in key order.
///
/// Fails on a block larger than Calico allows (shorter than /20), whose allocation block would
/// not be Calico's.
pub fn keys(model: &Model, prefix: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let prefix = keys::normalize_prefix(prefix);
    let resources = format!("{prefix}/resources/v3/projectcalico.org");
    let mut out = BTreeMap::new();

    for pool in &model.pools {
        let value = json!({
            "apiVersion": "projectcalico.org/v3",
            "kind": "IPPool",
            "metadata": {"name": pool.name},
            "spec": {
                "cidr": pool.cidr.to_string(),
                "blockSize": pool.block_size,
                "vxlanMode": pool.vxlan_mode.to_string(),
                "ipipMode": pool.ipip_mode.to_string(),
                "natOutgoing": pool.nat_outgoing,
                "disabled": pool.disabled,
            },
        });
        out.insert(format!("{resources}/ippools/{}", pool.name), value.to_string());
    }

    for node in &model.nodes {
        let mut spec = Map::new();
        let mut bgp = Map::new();
        if let Some(addr) = node.addr {
            bgp.insert("ipv4Address".into(), json!(addr.to_string()));
        }
        if let Some(ipip) = node.ipip_tunnel_addr {
            bgp.insert("ipv4IPIPTunnelAddr".into(), json!(ipip.to_string()));
        }
        if !bgp.is_empty() {
            spec.insert("bgp".into(), Json::Object(bgp));
        }
        if let Some(vtep) = node.vxlan_tunnel_addr {
            spec.insert("ipv4VXLANTunnelAddr".into(), json!(vtep.to_string()));
        }
        if let Some(mac) = node.vxlan_tunnel_mac {
            spec.insert("vxlanTunnelMACAddr".into(), json!(mac.to_string()));
        }
        let value = json!({
            "apiVersion": "projectcalico.org/v3",
            "kind": "Node",
            "metadata": {"name": node.name},
            "spec": spec,
        });
        out.insert(format!("{resources}/nodes/{}", node.name), value.to_string());
    }

    for workload in &model.workloads {
        let addrs: Vec<String> = workload.addrs.iter().map(|a| a.to_string()).collect();
        let mut spec = json!({
            "node": workload.node,
            "ipNetworks": addrs,
            "interfaceName": workload.interface,
        });
        if let Some(mac) = workload.mac {
            spec["mac"] = json!(mac.to_string());
        }
        let value = json!({
            "apiVersion": "projectcalico.org/v3",
            "kind": "WorkloadEndpoint",
            "metadata": {"name": workload.name, "namespace": workload.namespace},
            "spec": spec,
        });
        out.insert(
            format!("{resources}/workloadendpoints/{}/{}", workload.namespace, workload.name),
            value.to_string(),
        );
    }

    // One allocation block per block CIDR, affine to the first node the model gives it (a block
    // claimed by two nodes keeps both affinity keys, so the agent still reports the conflict).
    let mut blocks: BTreeMap<Ipv4Net, Allocations> = BTreeMap::new();
    for block in &model.blocks {
        let name = keys::format_block(&block.cidr);
        let value = json!({"state": affinity_state(block.state), "deleted": block.deleted});
        out.insert(format!("{prefix}/ipam/v2/host/{}/ipv4/block/{name}", block.node), value.to_string());
        if block.cidr.prefix_len() < LARGEST_BLOCK_PREFIX {
            bail!(
                "the block {} of node {} is larger than Calico's largest block (/{LARGEST_BLOCK_PREFIX}): \
                 it cannot be written as an allocation block",
                block.cidr,
                block.node
            );
        }
        blocks.entry(block.cidr).or_insert_with(|| Allocations::new(block.cidr, &block.node));
    }
    for node in &model.nodes {
        let handle = format!("vxlan-tunnel-addr-{}", node.name);
        if let Some(vtep) = node.vxlan_tunnel_addr {
            let secondary = json!({"node": node.name, "type": "vxlanTunnelAddress"});
            allocate(&mut blocks, vtep, &handle, secondary);
        }
        let handle = format!("ipip-tunnel-addr-{}", node.name);
        if let Some(ipip) = node.ipip_tunnel_addr {
            let secondary = json!({"node": node.name, "type": "ipipTunnelAddress"});
            allocate(&mut blocks, ipip, &handle, secondary);
        }
    }
    for workload in &model.workloads {
        let handle = format!("k8s-pod-network.{}.{}", workload.namespace, workload.name);
        for net in &workload.addrs {
            for addr in net.hosts() {
                let secondary = json!({
                    "namespace": workload.namespace,
                    "node": workload.node,
                    "pod": workload.name,
                });
                allocate(&mut blocks, addr, &handle, secondary.clone());
            }
        }
    }
    for (cidr, block) in blocks {
        out.insert(
            format!("{prefix}/ipam/v2/assignment/ipv4/block/{}", keys::format_block(&cidr)),
            block.to_json().to_string(),
        );
    }
    Ok(out)
}

/// Calico's spelling of an affinity state.
fn affinity_state(state: AffinityState) -> &'static str {
    match state {
        AffinityState::Confirmed => "confirmed",
        AffinityState::Pending => "pending",
        AffinityState::PendingDeletion => "pendingDeletion",
    }
}

/// An allocation block being filled: `allocations[ordinal]` is an index into `attributes`.
struct Allocations {
    cidr: Ipv4Net,
    node: String,
    allocations: Vec<Option<usize>>,
    attributes: Vec<Json>,
    /// Attribute index by handle, so that one pod's addresses share one attribute.
    handles: HashMap<String, usize>,
}

impl Allocations {
    fn new(cidr: Ipv4Net, node: &str) -> Self {
        let size = 1usize << (32 - u32::from(cidr.prefix_len()));
        Allocations {
            cidr,
            node: node.to_owned(),
            allocations: vec![None; size],
            attributes: Vec::new(),
            handles: HashMap::new(),
        }
    }

    /// The allocation block as Calico stores it.
    fn to_json(&self) -> Json {
        let allocations: Vec<Json> = self.allocations.iter().map(|slot| slot.map_or(Json::Null, Json::from)).collect();
        let unallocated: Vec<usize> = self
            .allocations
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.is_none())
            .map(|(ordinal, _)| ordinal)
            .collect();
        json!({
            "cidr": self.cidr.to_string(),
            "affinity": format!("host:{}", self.node),
            "strictAffinity": false,
            "allocations": allocations,
            "unallocated": unallocated,
            "attributes": self.attributes,
            "deleted": false,
        })
    }
}

/// Records `addr` as allocated to `handle` in the block that holds it; an address in no block of
/// the model is not recorded (Calico would not have handed it out from IPAM either).
fn allocate(blocks: &mut BTreeMap<Ipv4Net, Allocations>, addr: Ipv4Addr, handle: &str, secondary: Json) {
    // Blocks do not overlap: the one holding `addr`, if any, is the last that starts at or
    // before it (a lookup, not a scan: a cluster has hundreds of thousands of blocks).
    let Some((_, block)) = blocks.range_mut(..=Ipv4Net::from(addr)).next_back() else {
        return;
    };
    if !block.cidr.contains(&addr) {
        return;
    }
    let ordinal = (u32::from(addr) - u32::from(block.cidr.network())) as usize;
    let next = block.attributes.len();
    let index = *block.handles.entry(handle.to_owned()).or_insert(next);
    if index == next {
        block.attributes.push(json!({"handle_id": handle, "secondary": secondary}));
    }
    if let Some(slot) = block.allocations.get_mut(ordinal) {
        *slot = Some(index);
    }
}

/// Puts `keys` into etcd: in one transaction when there are at most [`MAX_TXN_OPS`], otherwise
/// in consecutive transactions of that many.
pub async fn write(config: &EtcdConfig, keys: &BTreeMap<String, String>) -> anyhow::Result<Written> {
    let options = connect_options(config)?;
    let endpoints: Vec<&str> = config.endpoints.iter().map(|e| e.trim()).filter(|e| !e.is_empty()).collect();
    let mut client = timed(Client::connect(&endpoints, Some(options)))
        .await
        .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))?;
    let entries: Vec<(&String, &String)> = keys.iter().collect();
    let mut written = Written { keys: 0, transactions: 0, revision: 0 };
    for chunk in entries.chunks(MAX_TXN_OPS) {
        let ops: Vec<TxnOp> = chunk.iter().map(|(key, value)| TxnOp::put(key.as_str(), value.as_str(), None)).collect();
        let response = timed(client.txn(Txn::new().and_then(ops)))
            .await
            .with_context(|| format!("writing {} keys to etcd in one transaction", chunk.len()))?;
        if !response.succeeded() {
            bail!("etcd did not apply the transaction of {} keys", chunk.len());
        }
        written.keys += chunk.len();
        written.transactions += 1;
        written.revision = response.header().map_or(0, |header| header.revision());
    }
    Ok(written)
}

/// Reads a Calico YAML file and writes it into etcd. Refuses a file with problems, listing them,
/// so that nothing half-read reaches the cluster.
pub async fn export_file(config: &EtcdConfig, path: &std::path::Path) -> anyhow::Result<(Model, Written)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (model, problems) =
        crate::datastore::file::parse(&text).with_context(|| format!("parsing {}", path.display()))?;
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(|problem| format!("  {problem}")).collect();
        bail!(
            "{} has {} problem(s); nothing was written, fix them first:\n{}",
            path.display(),
            problems.len(),
            list.join("\n")
        );
    }
    let keys = keys(&model, &config.prefix)?;
    let written = write(config, &keys).await?;
    Ok((model, written))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::etcd::convert::Cache;

    const EXAMPLE: &str = include_str!("../../../../examples/two-nodes.yaml");

    fn example() -> Model {
        let (model, problems) = crate::datastore::file::parse(EXAMPLE).expect("the example parses");
        assert!(problems.is_empty(), "{problems:#?}");
        model
    }

    #[test]
    fn the_example_has_calicos_keys() {
        let keys = keys(&example(), "/calico/").expect("keys");
        let names: Vec<&str> = keys.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "/calico/ipam/v2/assignment/ipv4/block/10.244.1.0-26",
                "/calico/ipam/v2/assignment/ipv4/block/10.244.2.0-26",
                "/calico/ipam/v2/host/node-1/ipv4/block/10.244.1.0-26",
                "/calico/ipam/v2/host/node-2/ipv4/block/10.244.2.0-26",
                "/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool",
                "/calico/resources/v3/projectcalico.org/nodes/node-1",
                "/calico/resources/v3/projectcalico.org/nodes/node-2",
                "/calico/resources/v3/projectcalico.org/workloadendpoints/default/node--1-k8s-cache--1-eth0",
                "/calico/resources/v3/projectcalico.org/workloadendpoints/default/node--1-k8s-web--1-eth0",
                "/calico/resources/v3/projectcalico.org/workloadendpoints/default/node--2-k8s-web--2-eth0",
            ]
        );
        let affinity: Json =
            serde_json::from_str(&keys["/calico/ipam/v2/host/node-1/ipv4/block/10.244.1.0-26"]).unwrap();
        assert_eq!(affinity, json!({"state": "confirmed", "deleted": false}));

        let pool: Json =
            serde_json::from_str(&keys["/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool"]).unwrap();
        assert_eq!(pool["spec"]["vxlanMode"], "Always");
        assert_eq!(pool["spec"]["natOutgoing"], true);
        assert_eq!(pool["spec"]["blockSize"], 26);

        let node: Json = serde_json::from_str(&keys["/calico/resources/v3/projectcalico.org/nodes/node-2"]).unwrap();
        assert_eq!(node["spec"]["bgp"]["ipv4Address"], "10.100.0.12/24");
        assert_eq!(node["spec"]["vxlanTunnelMACAddr"], "66:d0:00:00:00:02");

        // Block 10.244.1.0/26: the VTEP at ordinal 0, web-1 at 2, cache-1 at 3.
        let block: Json = serde_json::from_str(&keys["/calico/ipam/v2/assignment/ipv4/block/10.244.1.0-26"]).unwrap();
        assert_eq!(block["cidr"], "10.244.1.0/26");
        assert_eq!(block["affinity"], "host:node-1");
        let allocations = block["allocations"].as_array().unwrap();
        assert_eq!(allocations.len(), 64);
        let used: Vec<(usize, u64)> = allocations
            .iter()
            .enumerate()
            .filter_map(|(ordinal, slot)| slot.as_u64().map(|index| (ordinal, index)))
            .collect();
        assert_eq!(used, [(0, 0), (2, 1), (3, 2)]);
        let attributes = block["attributes"].as_array().unwrap();
        assert_eq!(attributes[0]["handle_id"], "vxlan-tunnel-addr-node-1");
        assert_eq!(attributes[1]["secondary"]["pod"], "node--1-k8s-web--1-eth0");
        assert_eq!(block["unallocated"].as_array().unwrap().len(), 61);
    }

    /// What the export writes reads back, through the etcd datastore's own conversion, as the
    /// same model with no problems.
    #[test]
    fn the_keys_read_back_as_the_same_model() {
        let model = example();
        let mut cache = Cache::new("/calico");
        for (key, value) in keys(&model, "/calico").expect("keys") {
            assert!(cache.put(key.as_bytes(), value.as_bytes()), "{key} is not read back");
        }
        let snapshot = cache.snapshot();
        assert!(snapshot.problems.is_empty(), "{:#?}", snapshot.problems);
        assert_eq!(snapshot.model.sorted(), model.sorted());
    }

    #[test]
    fn pending_and_deleted_affinities_and_ipip_addresses_round_trip() {
        let mut model = example();
        model.blocks[0].state = AffinityState::Pending;
        model.blocks[1].deleted = true;
        model.nodes[0].ipip_tunnel_addr = Some(Ipv4Addr::new(10, 244, 1, 1));
        let keys = keys(&model, "/calico").expect("keys");
        let mut cache = Cache::new("/calico");
        for (key, value) in &keys {
            cache.put(key.as_bytes(), value.as_bytes());
        }
        let snapshot = cache.snapshot();
        assert!(snapshot.problems.is_empty(), "{:#?}", snapshot.problems);
        assert_eq!(snapshot.model.sorted(), model.sorted());
        let block: Json = serde_json::from_str(&keys["/calico/ipam/v2/assignment/ipv4/block/10.244.1.0-26"]).unwrap();
        assert_eq!(block["allocations"][1], json!(1), "the IPIP address is allocated");
        assert_eq!(block["attributes"][1]["handle_id"], "ipip-tunnel-addr-node-1");
    }

    #[test]
    fn a_block_larger_than_calicos_is_refused() {
        let mut model = example();
        model.blocks[0].cidr = "10.244.0.0/16".parse().unwrap();
        let error = keys(&model, "/calico").unwrap_err();
        assert!(error.to_string().contains("10.244.0.0/16"), "{error}");
    }
}
