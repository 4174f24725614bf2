//! The decoder's tests: seed resources as users print them, and each way a resource can be wrong.

use super::*;
use crate::{
    datastore::file::parse,
    fixtures::{mac, net},
};

fn parse_ok(text: &str) -> (Model, Vec<Problem>) {
    parse(text).expect("test input is YAML")
}

/// Parses `text`, expects exactly one problem and returns it.
fn one_problem(text: &str) -> (Model, Problem) {
    let (model, mut problems) = parse_ok(text);
    assert_eq!(problems.len(), 1, "expected one problem, got {problems:#?}");
    let problem = problems.pop().expect("one problem");
    (model, problem)
}

/// `kubectl get ippool default-ipv4-ippool -o yaml`, from seeds/002.
pub(crate) const SEED_IPPOOL: &str = r#"
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  creationTimestamp: "2022-07-09T17:44:37Z"
  name: default-ipv4-ippool
  resourceVersion: "7202"
  uid: 49ecd163-1a83-4566-872a-fb0390102724
spec:
  allowedUses:
  - Workload
  - Tunnel
  blockSize: 26
  cidr: 10.48.0.0/24
  ipipMode: Never
  natOutgoing: true
  nodeSelector: all()
  vxlanMode: Never
"#;

/// `kubectl get blockaffinities -o yaml`, from seeds/003 (cut short before `kind: List`).
const SEED_BLOCK_AFFINITIES: &str = r#"
apiVersion: v1
items:
- apiVersion: crd.projectcalico.org/v1
  kind: BlockAffinity
  metadata:
    name: ipam-block-affinity-192-168-0-64-26
    namespace: ""
  spec:
    cidr: 192.168.0.64/26
    deleted: false
    node: calico-ipam-control-plane
    state: confirmed
- apiVersion: crd.projectcalico.org/v1
  kind: BlockAffinity
  metadata:
    name: ipam-block-affinity-192-168-1-64-26
  spec:
    cidr: 192.168.1.64/26
    deleted: false
    node: calico-ipam-worker
    state: confirmed
"#;

#[test]
fn seed_ippool() {
    let (model, problems) = parse_ok(SEED_IPPOOL);
    assert_eq!(problems, vec![]);
    assert_eq!(
        model.pools,
        vec![IpPool {
            name: "default-ipv4-ippool".into(),
            cidr: net("10.48.0.0/24"),
            block_size: 26,
            vxlan_mode: EncapMode::Never,
            ipip_mode: EncapMode::Never,
            nat_outgoing: true,
            disabled: false,
        }]
    );
}

#[test]
fn seed_block_affinity_list() {
    let (model, problems) = parse_ok(SEED_BLOCK_AFFINITIES);
    assert_eq!(problems, vec![]);
    assert_eq!(
        model.blocks,
        vec![
            Block {
                cidr: net("192.168.0.64/26"),
                node: "calico-ipam-control-plane".into(),
                state: AffinityState::Confirmed,
                deleted: false,
            },
            Block {
                cidr: net("192.168.1.64/26"),
                node: "calico-ipam-worker".into(),
                state: AffinityState::Confirmed,
                deleted: false,
            },
        ]
    );
}

#[test]
fn pool_defaults_and_modes_in_any_case() {
    let (model, problems) = parse_ok(
        r#"
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: p}
spec:
  cidr: 10.244.0.0/16
---
apiVersion: crd.projectcalico.org/v1
kind: IPPool
metadata: {name: q}
spec:
  cidr: 10.245.0.0/16
  blockSize: 28
  vxlanMode: crosssubnet
  ipipMode: NEVER
  disabled: true
"#,
    );
    assert_eq!(problems, vec![]);
    assert_eq!(model.pools.len(), 2);
    let p = &model.pools[0];
    assert_eq!((p.block_size, p.vxlan_mode, p.ipip_mode), (26, EncapMode::Never, EncapMode::Never));
    assert!(!p.nat_outgoing && !p.disabled);
    let q = &model.pools[1];
    assert_eq!((q.block_size, q.vxlan_mode, q.ipip_mode), (28, EncapMode::CrossSubnet, EncapMode::Never));
    assert!(q.disabled);
}

/// `calicoctl get ippools -o yaml` prints an IPPoolList.
#[test]
fn calicoctl_ippool_list() {
    let (model, problems) = parse_ok(
        r#"
apiVersion: projectcalico.org/v3
items:
- apiVersion: projectcalico.org/v3
  kind: IPPool
  metadata:
    creationTimestamp: "2024-01-01T00:00:00Z"
    name: default-ipv4-ippool
    resourceVersion: "812"
    uid: 0d6b0f8c-8f63-4a3e-9d63-3bd1b0d3d0a1
  spec:
    allowedUses:
    - Workload
    - Tunnel
    blockSize: 26
    cidr: 10.244.0.0/16
    ipipMode: Never
    natOutgoing: true
    nodeSelector: all()
    vxlanMode: Always
- metadata:
    name: no-kind-item
  spec:
    cidr: 10.250.0.0/16
kind: IPPoolList
metadata:
  resourceVersion: "900"
"#,
    );
    assert_eq!(problems, vec![]);
    let names: Vec<&str> = model.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["default-ipv4-ippool", "no-kind-item"]);
    assert_eq!(model.pools[0].vxlan_mode, EncapMode::Always);
}

/// `kubectl get nodes,ipamblocks -o yaml` prints one List of mixed kinds.
#[test]
fn kubectl_list_of_kubernetes_nodes_and_ipam_blocks() {
    let (model, problems) = parse_ok(
        r#"
apiVersion: v1
kind: List
metadata:
  resourceVersion: ""
items:
- apiVersion: v1
  kind: Node
  metadata:
    annotations:
      node.alpha.kubernetes.io/ttl: "0"
      projectcalico.org/IPv4Address: 10.100.0.11/24
      projectcalico.org/IPv4VXLANTunnelAddr: 10.244.1.0
      projectcalico.org/VXLANTunnelMACAddr: 66:d0:00:00:00:01
      projectcalico.org/IPv4IPIPTunnelAddr: 10.244.1.1
    labels:
      kubernetes.io/hostname: node-1
    name: node-1
  spec:
    podCIDR: 10.244.1.0/24
  status:
    addresses:
    - address: 10.100.0.11
      type: InternalIP
- apiVersion: crd.projectcalico.org/v1
  kind: IPAMBlock
  metadata:
    name: 10-244-1-0-26
  spec:
    affinity: host:node-1
    allocations: [0, null, 1]
    attributes:
    - handle_id: vxlan-tunnel-addr-node-1
    cidr: 10.244.1.0/26
    deleted: false
    strictAffinity: false
    unallocated: [2, 3]
- apiVersion: crd.projectcalico.org/v1
  kind: IPAMBlock
  metadata:
    name: 10-244-9-0-26
  spec:
    affinity: virtual:something
    cidr: 10.244.9.0/26
- apiVersion: crd.projectcalico.org/v1
  kind: IPAMBlock
  metadata:
    name: 10-244-8-0-26
  spec:
    cidr: 10.244.8.0/26
"#,
    );
    assert_eq!(problems, vec![]);
    assert_eq!(
        model.nodes,
        vec![Node {
            name: "node-1".into(),
            addr: Some(net("10.100.0.11/24")),
            vxlan_tunnel_addr: Some(Ipv4Addr::new(10, 244, 1, 0)),
            vxlan_tunnel_mac: Some(mac("66:d0:00:00:00:01")),
            ipip_tunnel_addr: Some(Ipv4Addr::new(10, 244, 1, 1)),
        }]
    );
    // Only the block with a host affinity routes somewhere.
    assert_eq!(
        model.blocks,
        vec![Block {
            cidr: net("10.244.1.0/26"),
            node: "node-1".into(),
            state: AffinityState::Confirmed,
            deleted: false,
        }]
    );
}

#[test]
fn calico_node_and_kubernetes_node_merge() {
    let (model, problems) = parse_ok(
        r#"
apiVersion: projectcalico.org/v3
kind: Node
metadata:
  name: node-2
  labels: {kubernetes.io/hostname: node-2}
spec:
  addresses:
  - address: 10.100.0.12/24
    type: CalicoNodeIP
  bgp:
    ipv4Address: 10.100.0.12/24
  ipv4VXLANTunnelAddr: 10.244.2.0
  orchRefs:
  - nodeName: node-2
    orchestrator: k8s
  vxlanTunnelMACAddr: 66:d0:00:00:00:02
---
apiVersion: v1
kind: Node
metadata:
  name: node-2
  annotations:
    projectcalico.org/IPv4Address: 10.100.0.12/24
    projectcalico.org/IPv4IPIPTunnelAddr: 10.244.2.1
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: bare}
spec:
  bgp: {ipv4Address: 10.100.1.5}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: no-bgp}
spec:
  addresses:
  - {address: "fd00::5", type: InternalIP}
  - {address: 10.100.1.6/24, type: CalicoNodeIP}
"#,
    );
    assert_eq!(problems, vec![]);
    assert_eq!(model.nodes.len(), 3);
    let node2 = model.node("node-2").expect("node-2");
    assert_eq!(node2.addr, Some(net("10.100.0.12/24")));
    assert_eq!(node2.vxlan_tunnel_addr, Some(Ipv4Addr::new(10, 244, 2, 0)));
    assert_eq!(node2.vxlan_tunnel_mac, Some(mac("66:d0:00:00:00:02")));
    assert_eq!(node2.ipip_tunnel_addr, Some(Ipv4Addr::new(10, 244, 2, 1)));
    // A bare address is a /32.
    assert_eq!(model.node("bare").and_then(|n| n.addr), Some(net("10.100.1.5/32")));
    assert_eq!(model.node("no-bgp").and_then(|n| n.addr), Some(net("10.100.1.6/24")));
}

#[test]
fn conflicting_node_descriptions_keep_the_first() {
    let (model, problem) = one_problem(
        r#"
kind: Node
metadata: {name: n}
spec: {bgp: {ipv4Address: 10.0.0.1/24}}
---
apiVersion: v1
kind: Node
metadata:
  name: n
  annotations: {projectcalico.org/IPv4Address: 10.0.0.2/24}
"#,
    );
    assert_eq!(model.node("n").and_then(|n| n.addr), Some(net("10.0.0.1/24")));
    assert_eq!((problem.kind.as_str(), problem.name.as_str()), ("Node", "n"));
    assert_eq!(problem.field, "spec.bgp.ipv4Address");
}

#[test]
fn workload_endpoint_as_calicoctl_prints_it() {
    let (model, problems) = parse_ok(
        r#"
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata:
  creationTimestamp: "2024-01-01T00:00:00Z"
  labels:
    projectcalico.org/namespace: shop
    projectcalico.org/orchestrator: k8s
    projectcalico.org/serviceaccount: default
  name: node--1-k8s-web--1-eth0
  namespace: shop
  resourceVersion: "1234"
  uid: 7a0c0f1e-0b8e-4b43-9d7c-1df0c1b0a0e2
spec:
  containerID: 3f1a
  endpoint: eth0
  interfaceName: cali0761ccbeace
  ipNetworks:
  - fd00:10:244::2/128
  - 10.244.1.2/32
  mac: 0a:58:0a:f4:01:02
  node: node-1
  orchestrator: k8s
  pod: web-1
  profiles:
  - kns.shop
  - ksa.shop.default
  serviceAccountName: default
  workload: ""
---
kind: WorkloadEndpoint
metadata: {name: bare}
spec: {node: node-1, interfaceName: calib}
"#,
    );
    assert_eq!(problems, vec![]);
    assert_eq!(
        model.workloads[0],
        Workload {
            namespace: "shop".into(),
            name: "node--1-k8s-web--1-eth0".into(),
            node: "node-1".into(),
            addrs: vec![net("10.244.1.2/32")],
            interface: "cali0761ccbeace".into(),
            mac: Some(mac("0a:58:0a:f4:01:02")),
        }
    );
    // Namespace defaults to "default"; no address is the plan's business.
    assert_eq!(model.workloads[1].full_name(), "default/bare");
    assert_eq!(model.workloads[1].addrs, vec![]);
    assert_eq!(model.workloads[1].mac, None);
}

#[test]
fn bad_pool_cidr() {
    let (model, problem) = one_problem("kind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.244.0.0/33}\n");
    assert!(model.pools.is_empty());
    assert_eq!((problem.kind.as_str(), problem.name.as_str(), problem.field.as_str()), ("IPPool", "p", "spec.cidr"));
    assert!(problem.message.contains("not a CIDR"), "{problem}");
}

#[test]
fn missing_pool_cidr() {
    let (_, problem) = one_problem("kind: IPPool\nmetadata: {name: p}\nspec: {}\n");
    assert_eq!(problem.field, "spec.cidr");
    assert!(problem.message.starts_with("missing"), "{problem}");
}

#[test]
fn ipv6_pool_is_skipped() {
    let (model, problem) = one_problem("kind: IPPool\nmetadata: {name: v6}\nspec: {cidr: 'fd00:10:244::/64'}\n");
    assert!(model.pools.is_empty());
    assert_eq!((problem.name.as_str(), problem.field.as_str()), ("v6", "spec.cidr"));
    assert!(problem.message.contains("IPv6 is not supported yet"), "{problem}");
}

#[test]
fn bad_block_size() {
    for (size, expected) in [("33", "between 16 and 32"), ("8", "between 16 and 32"), ("big", "expected a number")] {
        let text = format!("kind: IPPool\nmetadata: {{name: p}}\nspec: {{cidr: 10.244.0.0/16, blockSize: {size}}}\n");
        let (model, problem) = one_problem(&text);
        assert!(model.pools.is_empty());
        assert_eq!(problem.field, "spec.blockSize");
        assert!(problem.message.contains(expected), "{size}: {problem}");
    }
    // The default 26 does not fit a /28 pool either.
    let (_, problem) = one_problem("kind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.244.0.0/28}\n");
    assert_eq!(problem.field, "spec.blockSize");
}

#[test]
fn bad_encap_mode_and_bool() {
    let (_, problem) =
        one_problem("kind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.244.0.0/16, vxlanMode: Sometimes}\n");
    assert_eq!(problem.field, "spec.vxlanMode");
    let (_, problem) = one_problem("kind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.244.0.0/16, natOutgoing: 1}\n");
    assert_eq!(problem.field, "spec.natOutgoing");
}

#[test]
fn bad_mac() {
    let (model, problem) = one_problem(
        "kind: Node\nmetadata: {name: n}\nspec: {bgp: {ipv4Address: 10.0.0.1/24}, vxlanTunnelMACAddr: '66:d0:00'}\n",
    );
    assert!(model.nodes.is_empty());
    assert_eq!(
        (problem.kind.as_str(), problem.name.as_str(), problem.field.as_str()),
        ("Node", "n", "spec.vxlanTunnelMACAddr")
    );
    let (model, problem) =
        one_problem("kind: WorkloadEndpoint\nmetadata: {name: w, namespace: ns}\nspec: {node: n, mac: nonsense}\n");
    assert!(model.workloads.is_empty());
    assert_eq!((problem.name.as_str(), problem.field.as_str()), ("ns/w", "spec.mac"));
    let (_, problem) = one_problem(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: k\n  annotations: {projectcalico.org/VXLANTunnelMACAddr: xx}\n",
    );
    assert_eq!(problem.field, r#"metadata.annotations["projectcalico.org/VXLANTunnelMACAddr"]"#);
}

#[test]
fn bad_node_and_workload_addresses() {
    let (_, problem) = one_problem("kind: Node\nmetadata: {name: n}\nspec: {bgp: {ipv4Address: 10.0.0.300/24}}\n");
    assert_eq!(problem.field, "spec.bgp.ipv4Address");
    let (_, problem) = one_problem("kind: Node\nmetadata: {name: n}\nspec: {ipv4VXLANTunnelAddr: vtep}\n");
    assert_eq!(problem.field, "spec.ipv4VXLANTunnelAddr");
    let (_, problem) =
        one_problem("kind: WorkloadEndpoint\nmetadata: {name: w}\nspec: {node: n, ipNetworks: [10.244.1.x/32]}\n");
    assert_eq!((problem.name.as_str(), problem.field.as_str()), ("default/w", "spec.ipNetworks"));
    let (_, problem) =
        one_problem("kind: WorkloadEndpoint\nmetadata: {name: w}\nspec: {node: n, ipNetworks: 10.244.1.2/32}\n");
    assert_eq!(problem.field, "spec.ipNetworks");
}

#[test]
fn unknown_kind_is_skipped() {
    let (model, problem) = one_problem(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: deny-all}\nspec: {}\n---\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.244.0.0/16}\n",
    );
    assert_eq!(model.pools.len(), 1);
    assert_eq!(
        (problem.kind.as_str(), problem.name.as_str(), problem.field.as_str()),
        ("GlobalNetworkPolicy", "deny-all", "kind")
    );
    assert!(problem.message.contains("skipped"), "{problem}");
}

#[test]
fn documents_without_kind_or_not_mappings() {
    let (model, problems) = parse_ok("metadata: {name: x}\n---\n- a\n- b\n---\nplain words\n");
    assert_eq!(model, Model::default());
    let positions: Vec<(&str, &str)> = problems.iter().map(|p| (p.name.as_str(), p.field.as_str())).collect();
    assert_eq!(positions, [("x", "kind"), ("document 2", "kind"), ("document 3", "kind")]);
}

#[test]
fn missing_block_affinity_node() {
    let (model, problem) = one_problem(
        "apiVersion: crd.projectcalico.org/v1\nkind: BlockAffinity\nmetadata: {name: a}\nspec: {cidr: 10.244.1.0/26, state: confirmed}\n",
    );
    assert!(model.blocks.is_empty());
    assert_eq!(
        (problem.kind.as_str(), problem.name.as_str(), problem.field.as_str()),
        ("BlockAffinity", "a", "spec.node")
    );
    let (_, problem) = one_problem("kind: WorkloadEndpoint\nmetadata: {name: w}\nspec: {interfaceName: calia}\n");
    assert_eq!(problem.field, "spec.node");
}

#[test]
fn deleted_as_string_or_bool() {
    let (model, problems) = parse_ok(
        r#"
kind: BlockAffinity
metadata: {name: a}
spec: {cidr: 10.244.1.0/26, node: n1, state: confirmed, deleted: "false"}
---
kind: BlockAffinity
metadata: {name: b}
spec: {cidr: 10.244.2.0/26, node: n2, state: confirmed, deleted: "true"}
---
kind: BlockAffinity
metadata: {name: c}
spec: {cidr: 10.244.3.0/26, node: n3, state: pendingDeletion, deleted: true}
---
kind: BlockAffinity
metadata: {name: d}
spec: {cidr: 10.244.4.0/26, node: n4}
---
kind: BlockAffinity
metadata: {name: e}
spec: {cidr: 10.244.5.0/26, node: n5, deleted: "maybe"}
---
kind: BlockAffinity
metadata: {name: f}
spec: {cidr: 10.244.6.0/26, node: n6, state: claimed}
"#,
    );
    let seen: Vec<(&str, AffinityState, bool)> =
        model.blocks.iter().map(|b| (b.node.as_str(), b.state, b.deleted)).collect();
    assert_eq!(
        seen,
        [
            ("n1", AffinityState::Confirmed, false),
            ("n2", AffinityState::Confirmed, true),
            ("n3", AffinityState::PendingDeletion, true),
            ("n4", AffinityState::Confirmed, false),
        ]
    );
    let fields: Vec<(&str, &str)> = problems.iter().map(|p| (p.name.as_str(), p.field.as_str())).collect();
    assert_eq!(fields, [("e", "spec.deleted"), ("f", "spec.state")]);
}

#[test]
fn ipam_block_defers_to_block_affinity() {
    let (model, problems) = parse_ok(
        r#"
kind: IPAMBlock
metadata: {name: 10-244-1-0-26}
spec: {cidr: 10.244.1.0/26, affinity: "host:n1", deleted: false}
---
kind: BlockAffinity
metadata: {name: a}
spec: {cidr: 10.244.1.0/26, node: n1, state: pending, deleted: "false"}
---
kind: IPAMBlock
metadata: {name: 10-244-2-0-26}
spec: {cidr: 10.244.2.0/26, affinity: "host:n2"}
---
kind: IPAMBlock
metadata: {name: again}
spec: {cidr: 10.244.2.0/26, affinity: "host:n2"}
---
kind: IPAMBlock
metadata: {name: v6}
spec: {cidr: "fd00::/122", affinity: "host:n2"}
---
kind: IPAMBlock
metadata: {name: empty}
spec: {cidr: 10.244.3.0/26, affinity: "host:"}
"#,
    );
    let seen: Vec<(Ipv4Net, &str, AffinityState)> =
        model.blocks.iter().map(|b| (b.cidr, b.node.as_str(), b.state)).collect();
    assert_eq!(
        seen,
        [(net("10.244.1.0/26"), "n1", AffinityState::Pending), (net("10.244.2.0/26"), "n2", AffinityState::Confirmed),]
    );
    let fields: Vec<(&str, &str)> = problems.iter().map(|p| (p.name.as_str(), p.field.as_str())).collect();
    assert_eq!(fields, [("empty", "spec.affinity")]);
}

#[test]
fn duplicates_are_reported() {
    let (model, problems) = parse_ok(
        r#"
kind: IPPool
metadata: {name: p}
spec: {cidr: 10.244.0.0/16}
---
kind: IPPool
metadata: {name: p}
spec: {cidr: 10.245.0.0/16}
---
kind: WorkloadEndpoint
metadata: {name: w}
spec: {node: n}
---
kind: WorkloadEndpoint
metadata: {name: w, namespace: default}
spec: {node: n}
"#,
    );
    assert_eq!((model.pools.len(), model.workloads.len()), (1, 1));
    let names: Vec<(&str, &str)> = problems.iter().map(|p| (p.kind.as_str(), p.name.as_str())).collect();
    assert_eq!(names, [("IPPool", "p"), ("WorkloadEndpoint", "default/w")]);
}

#[test]
fn one_broken_resource_does_not_stop_the_others() {
    let (model, problems) = parse_ok(
        r#"
---
kind: IPPool
metadata: {name: broken}
spec: {cidr: not-a-cidr}
---
---
kind: IPPool
metadata: {name: good}
spec: {cidr: 10.244.0.0/16}
---
kind: List
items:
- kind: Node
  metadata: {name: broken-node}
  spec: {vxlanTunnelMACAddr: 12}
- kind: Node
  metadata: {name: n1}
  spec: {bgp: {ipv4Address: 10.0.0.1/24}}
- 42
---
kind: BlockAffinity
metadata: {name: b}
spec: {cidr: 10.244.1.0/26, node: n1, state: confirmed}
"#,
    );
    assert_eq!(model.pools.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["good"]);
    assert_eq!(model.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["n1"]);
    assert_eq!(model.blocks.len(), 1);
    let names: Vec<(&str, &str)> = problems.iter().map(|p| (p.name.as_str(), p.field.as_str())).collect();
    assert_eq!(
        names,
        [("broken", "spec.cidr"), ("broken-node", "spec.vxlanTunnelMACAddr"), ("document 4, items[2]", "kind")]
    );
}

#[test]
fn a_resource_with_an_empty_name_is_named_by_its_position() {
    let text =
        "kind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/16}\n---\nkind: IPPool\nmetadata: {name: ''}\n";
    let (model, problem) = one_problem(text);
    assert_eq!(model.pools.len(), 1);
    assert_eq!((problem.name.as_str(), problem.field.as_str()), ("document 2", "metadata.name"));
}
