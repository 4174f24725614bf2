//! The example cluster (examples/two-nodes.yaml) as a Kubernetes API server holds it: Calico's
//! CRDs, Nodes with calico-node's annotations and Pods as kubelet and Calico CNI leave them,
//! written as `kubectl get -o json` prints them. Served by [`crate::kube_api::KubeApi`].

use serde_json::{json, Value};

use crate::kube_api::KubeApi;

/// Where the API serves Nodes.
pub const NODES: &str = "/api/v1/nodes";
/// Where the API serves Pods.
pub const PODS: &str = "/api/v1/pods";
/// Where the API serves Calico's IPPools.
pub const POOLS: &str = "/apis/crd.projectcalico.org/v1/ippools";
/// Where the API serves Calico's BlockAffinities.
pub const AFFINITIES: &str = "/apis/crd.projectcalico.org/v1/blockaffinities";
/// Where the API serves Calico's IPAMBlocks.
pub const BLOCKS: &str = "/apis/crd.projectcalico.org/v1/ipamblocks";

/// `kubectl get node node-N -o json` for a node calico-node has registered.
pub fn node(name: &str, addr: &str, vtep: &str, mac: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": format!("5f0c2a4e-0000-4000-8000-{:012}", name.len()),
            "creationTimestamp": "2026-11-01T08:00:00Z",
            "labels": {
                "beta.kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux"
            },
            "annotations": {
                "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///var/run/containerd/containerd.sock",
                "node.alpha.kubernetes.io/ttl": "0",
                "projectcalico.org/IPv4Address": format!("{addr}/24"),
                "projectcalico.org/IPv4VXLANTunnelAddr": vtep,
                "projectcalico.org/VXLANTunnelMACAddr": mac,
                "volumes.kubernetes.io/controller-managed-attach-detach": "true"
            }
        },
        "spec": {"podCIDR": format!("{vtep}/24"), "podCIDRs": [format!("{vtep}/24")]},
        "status": {
            "addresses": [{"address": addr, "type": "InternalIP"}, {"address": name, "type": "Hostname"}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kubelet is posting ready status", "lastHeartbeatTime": "2026-11-23T08:00:00Z",
                "lastTransitionTime": "2026-11-01T08:01:00Z"}],
            "nodeInfo": {"architecture": "amd64", "containerRuntimeVersion": "containerd://1.7.24",
                "kernelVersion": "6.12.0", "kubeletVersion": "v1.33.2", "operatingSystem": "linux",
                "osImage": "Debian GNU/Linux 13 (trixie)"}
        }
    })
}

/// `kubectl get ippool default-ipv4-ippool -o json`.
pub fn pool() -> Value {
    json!({
        "apiVersion": "crd.projectcalico.org/v1",
        "kind": "IPPool",
        "metadata": {
            "name": "default-ipv4-ippool",
            "generation": 1,
            "uid": "49ecd163-1a83-4566-872a-fb0390102724",
            "creationTimestamp": "2026-11-01T08:02:00Z",
            "annotations": {"projectcalico.org/metadata": "{\"creationTimestamp\":null}"}
        },
        "spec": {"allowedUses": ["Workload", "Tunnel"], "blockSize": 26, "cidr": "10.244.0.0/16",
            "ipipMode": "Never", "natOutgoing": true, "nodeSelector": "all()", "vxlanMode": "Always"}
    })
}

/// `10.244.1.0/26` -> `10-244-1-0-26`, as Calico names its IPAM objects.
pub fn dashed(cidr: &str) -> String {
    cidr.replace(['.', '/'], "-")
}

/// `kubectl get blockaffinity <node>-<block> -o json` (v1 CRDs store `deleted` as a string).
pub fn affinity(node: &str, cidr: &str) -> Value {
    json!({
        "apiVersion": "crd.projectcalico.org/v1",
        "kind": "BlockAffinity",
        "metadata": {
            "name": format!("{node}-{}", dashed(cidr)),
            "generation": 2,
            "uid": format!("a1f0{:032x}", cidr.len() * 7 + node.len()),
            "creationTimestamp": "2026-11-01T08:03:00Z",
            "labels": {"projectcalico.org/ip-version": "4", "projectcalico.org/node": node},
            "annotations": {"projectcalico.org/metadata": "{\"creationTimestamp\":null}"}
        },
        "spec": {"cidr": cidr, "deleted": "false", "node": node, "state": "confirmed"}
    })
}

/// `kubectl get ipamblock <block> -o json`: ordinal 0 is the VXLAN tunnel address, then the pods.
pub fn ipam_block(node: &str, cidr: &str, pods: &[(&str, &str)]) -> Value {
    let mut allocations = vec![json!(0)];
    let mut attributes = vec![json!({"handle_id": format!("vxlan-tunnel-addr-{node}"),
        "secondary": {"node": node, "type": "vxlanTunnelAddress"}})];
    for (index, (namespace, pod)) in pods.iter().enumerate() {
        // Pods take the ordinals from 2 on, as in the example (.2, .3).
        while allocations.len() < index + 2 {
            allocations.push(Value::Null);
        }
        allocations.push(json!(index + 1));
        attributes.push(json!({"handle_id": format!("k8s-pod-network.{:064x}", index + 7),
            "secondary": {"namespace": namespace, "node": node, "pod": pod,
                "timestamp": "2026-11-01 08:10:00.000000000 +0000 UTC"}}));
    }
    while allocations.len() < 64 {
        allocations.push(Value::Null);
    }
    let unallocated: Vec<usize> = (0..64).filter(|i| allocations[*i].is_null()).collect();
    json!({
        "apiVersion": "crd.projectcalico.org/v1",
        "kind": "IPAMBlock",
        "metadata": {
            "name": dashed(cidr),
            "generation": 4,
            "creationTimestamp": "2026-11-01T08:03:00Z",
            "annotations": {"projectcalico.org/metadata": "{\"creationTimestamp\":null}"}
        },
        "spec": {"affinity": format!("host:{node}"), "allocations": allocations, "attributes": attributes,
            "cidr": cidr, "deleted": false, "sequenceNumber": 1_763_884_800_000_000_000_u64,
            "sequenceNumberForAllocation": {"0": 1_763_884_800_000_000_000_u64},
            "strictAffinity": false, "unallocated": unallocated}
    })
}

/// `kubectl get pod -o json` for a running pod that Calico CNI set up.
pub fn pod(namespace: &str, name: &str, app: &str, node: &str, node_addr: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": format!("7c3e{:032x}", name.len() * 31 + ip.len()),
            "creationTimestamp": "2026-11-01T08:10:00Z",
            "labels": {"app": app},
            "annotations": {
                "cni.projectcalico.org/containerID": format!("{:064x}", name.len() * 1_000_003),
                "cni.projectcalico.org/podIP": format!("{ip}/32"),
                "cni.projectcalico.org/podIPs": format!("{ip}/32")
            }
        },
        "spec": {
            "containers": [{"name": app, "image": "registry.k8s.io/e2e-test-images/agnhost:2.53",
                "ports": [{"containerPort": 80, "protocol": "TCP"}], "resources": {},
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent"}],
            "dnsPolicy": "ClusterFirst",
            "enableServiceLinks": true,
            "nodeName": node,
            "restartPolicy": "Always",
            "schedulerName": "default-scheduler",
            "serviceAccount": "default",
            "serviceAccountName": "default",
            "terminationGracePeriodSeconds": 30
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-01T08:10:05Z"}],
            "hostIP": node_addr,
            "hostIPs": [{"ip": node_addr}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "qosClass": "BestEffort",
            "startTime": "2026-11-01T08:10:00Z"
        }
    })
}

/// calico-node itself: a host-network pod, not a workload.
pub fn calico_node_pod(node: &str, node_addr: &str) -> Value {
    let mut object =
        pod("calico-system", &format!("calico-node-{}", &node[5..]), "calico-node", node, node_addr, node_addr);
    object["spec"]["hostNetwork"] = json!(true);
    if let Some(annotations) = object["metadata"]["annotations"].as_object_mut() {
        annotations.clear();
    }
    object
}

/// The example cluster (examples/two-nodes.yaml) as the Kubernetes datastore holds it.
pub fn example_objects() -> Vec<(&'static str, Value)> {
    vec![
        (POOLS, pool()),
        (NODES, node("node-1", "10.100.0.11", "10.244.1.0", "66:d0:00:00:00:01")),
        (NODES, node("node-2", "10.100.0.12", "10.244.2.0", "66:d0:00:00:00:02")),
        (AFFINITIES, affinity("node-1", "10.244.1.0/26")),
        (AFFINITIES, affinity("node-2", "10.244.2.0/26")),
        (BLOCKS, ipam_block("node-1", "10.244.1.0/26", &[("default", "web-1"), ("default", "cache-1")])),
        (BLOCKS, ipam_block("node-2", "10.244.2.0/26", &[("default", "web-2")])),
        (PODS, pod("default", "web-1", "web", "node-1", "10.100.0.11", "10.244.1.2")),
        (PODS, pod("default", "cache-1", "cache", "node-1", "10.100.0.11", "10.244.1.3")),
        (PODS, pod("default", "web-2", "web", "node-2", "10.100.0.12", "10.244.2.2")),
        (PODS, calico_node_pod("node-1", "10.100.0.11")),
        (PODS, calico_node_pod("node-2", "10.100.0.12")),
    ]
}

/// Serves every object of [`example_objects`].
pub fn serve_example(api: &KubeApi) {
    for (path, object) in example_objects() {
        api.apply(path, object);
    }
}
