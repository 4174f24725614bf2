//! Kubernetes objects into the model, through the file datastore's per-resource code.
//!
//! Calico's CRDs (`crd.projectcalico.org/v1` IPPool, BlockAffinity, IPAMBlock) and the core
//! `Node` (with Calico's annotations) have the shapes [`ModelBuilder`] reads from a YAML file, so
//! they go to it as they are. A `Pod` is turned into the `WorkloadEndpoint` calico-node derives
//! from it in the Kubernetes datastore: named `<node>-k8s-<pod>-eth0` (dashes doubled), with the
//! interface `cali` + 11 hex digits of sha1("<namespace>.<pod>"), the pod's IPs, and no MAC (the
//! Kubernetes datastore does not store one). Host-network pods, pods not yet scheduled, finished
//! pods and pods without an IP are not workloads.

use std::{collections::BTreeMap, net::IpAddr, str::FromStr as _};

use serde_json::{json, Value as Json};

use crate::{
    datastore::{resources::ModelBuilder, Snapshot},
    model::Problem,
};

/// A kind of object the agent reads from the API server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Resource {
    /// API group; empty for the core group.
    pub group: &'static str,
    /// API version.
    pub version: &'static str,
    /// Kind, as in objects.
    pub kind: &'static str,
    /// Plural, as in URLs and RBAC rules.
    pub plural: &'static str,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
}

impl Resource {
    /// `apiVersion` of the objects: `v1`, or `<group>/<version>`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// Calico's CRD group in the Kubernetes datastore.
pub const CALICO_GROUP: &str = "crd.projectcalico.org";

/// Calico's IP pools.
pub const IP_POOLS: Resource =
    Resource { group: CALICO_GROUP, version: "v1", kind: "IPPool", plural: "ippools", namespaced: false };
/// Which node claims which block.
pub const BLOCK_AFFINITIES: Resource = Resource {
    group: CALICO_GROUP,
    version: "v1",
    kind: "BlockAffinity",
    plural: "blockaffinities",
    namespaced: false,
};
/// Calico's allocation blocks.
pub const IPAM_BLOCKS: Resource =
    Resource { group: CALICO_GROUP, version: "v1", kind: "IPAMBlock", plural: "ipamblocks", namespaced: false };
/// Kubernetes Nodes, with Calico's annotations.
pub const NODES: Resource = Resource { group: "", version: "v1", kind: "Node", plural: "nodes", namespaced: false };
/// Pods: the workloads.
pub const PODS: Resource = Resource { group: "", version: "v1", kind: "Pod", plural: "pods", namespaced: true };

/// Everything the agent reads (list and watch), in the order it reads them. The RBAC rules in
/// deploy/rbac.yaml grant exactly these.
pub const RESOURCES: [Resource; 5] = [IP_POOLS, BLOCK_AFFINITIES, IPAM_BLOCKS, NODES, PODS];

/// Calico CNI's annotation with the pod's IPs (comma-separated), written before kubelet fills
/// in `status.podIPs`.
pub const ANNOTATION_POD_IPS: &str = "cni.projectcalico.org/podIPs";
/// Calico CNI's annotation with the pod's IP; set to "" when the pod's network is torn down.
pub const ANNOTATION_POD_IP: &str = "cni.projectcalico.org/podIP";

/// The host-side interface Calico's CNI plugin gives a pod: `cali` and the first 11 hex digits
/// of sha1("<namespace>.<pod>") (libcalico-go's `VethNameForWorkload`).
pub fn interface_name(namespace: &str, pod: &str) -> String {
    let digest = sha1_smol::Sha1::from(format!("{namespace}.{pod}")).digest().to_string();
    format!("cali{}", &digest[..11])
}

/// The WorkloadEndpoint name Calico derives from a pod: node, `k8s`, pod and `eth0` joined by
/// dashes, each part with its own dashes doubled (`node-1`, `web-1` -> `node--1-k8s-web--1-eth0`).
pub fn workload_endpoint_name(node: &str, pod: &str) -> String {
    let escape = |part: &str| part.replace('-', "--");
    format!("{}-k8s-{}-eth0", escape(node), escape(pod))
}

/// An object's key in the cache: `namespace/name`, or `name` for cluster-wide kinds.
pub fn object_key(object: &Json) -> Option<String> {
    let name = object.pointer("/metadata/name")?.as_str()?;
    match object.pointer("/metadata/namespace").and_then(Json::as_str) {
        Some(namespace) if !namespace.is_empty() => Some(format!("{namespace}/{name}")),
        _ => Some(name.to_owned()),
    }
}

/// One object, ready for [`ModelBuilder`]; `None` where it adds nothing to the model.
#[derive(Clone, Debug, PartialEq)]
pub struct Converted {
    /// The resource in the shape ModelBuilder reads; `None` when it contributes nothing.
    pub resource: Option<serde_yaml::Value>,
    /// What was wrong with it (beyond what ModelBuilder finds).
    pub problems: Vec<Problem>,
}

/// Converts an object of `resource` as the API server sent it.
pub fn convert(resource: &Resource, object: &Json) -> Converted {
    let name = object_key(object).unwrap_or_else(|| "(no name)".to_owned());
    let mut object = object.clone();
    let Some(map) = object.as_object_mut() else {
        let problem = Problem::new(resource.kind, name, "", "not a JSON object; skipped");
        return Converted { resource: None, problems: vec![problem] };
    };
    // Items of a list from the API server leave out their kind and apiVersion.
    map.insert("kind".into(), Json::from(resource.kind));
    map.insert("apiVersion".into(), Json::from(resource.api_version()));
    let shaped = if *resource == PODS {
        match workload_endpoint(&name, &object) {
            Ok(Some(endpoint)) => endpoint,
            Ok(None) => return Converted { resource: None, problems: Vec::new() },
            Err(problem) => return Converted { resource: None, problems: vec![problem] },
        }
    } else {
        object
    };
    match serde_yaml::to_value(&shaped) {
        Ok(value) => Converted { resource: Some(value), problems: Vec::new() },
        Err(error) => {
            Converted { resource: None, problems: vec![Problem::new(resource.kind, name, "", error.to_string())] }
        }
    }
}

/// The WorkloadEndpoint calico-node derives from a pod, as a v3 resource; `None` when the pod is
/// not a workload (host network, not scheduled, finished, no IP yet). `name` is
/// `namespace/pod`, for problems.
fn workload_endpoint(name: &str, pod: &Json) -> Result<Option<Json>, Problem> {
    let text = |pointer: &str| pod.pointer(pointer).and_then(Json::as_str).unwrap_or("");
    let annotation = |key: &str| pod.pointer("/metadata/annotations").and_then(|a| a.get(key)?.as_str());
    let namespace = match text("/metadata/namespace") {
        "" => "default",
        namespace => namespace,
    };
    let pod_name = text("/metadata/name");
    let node = text("/spec/nodeName");
    if pod.pointer("/spec/hostNetwork").and_then(Json::as_bool) == Some(true) || node.is_empty() {
        return Ok(None);
    }
    // As libcalico-go's IsFinished: a finished pod's IPs are back in the pool; a pod being
    // deleted whose podIP annotation Calico CNI emptied has lost its network.
    let finished = matches!(text("/status/phase"), "Failed" | "Succeeded" | "Completed");
    let torn_down = pod.pointer("/metadata/deletionTimestamp").is_some() && annotation(ANNOTATION_POD_IP) == Some("");
    if finished || torn_down {
        return Ok(None);
    }
    let mut addresses = Vec::new();
    for (field, ip) in pod_ips(pod) {
        // Calico CNI's annotations write the address with its prefix (10.244.1.7/32).
        let address = ip.trim().split('/').next().unwrap_or_default();
        match IpAddr::from_str(address) {
            Ok(IpAddr::V4(ip)) => addresses.push(Json::from(format!("{ip}/32"))),
            // Dual-stack pods: IPv6 is not routed by this dataplane yet.
            Ok(IpAddr::V6(_)) => {}
            Err(_) => {
                return Err(Problem::new(
                    "Pod",
                    name,
                    field,
                    format!("{ip:?} is not an IP address; the pod is skipped"),
                ))
            }
        }
    }
    if addresses.is_empty() {
        return Ok(None);
    }
    Ok(Some(json!({
        "apiVersion": "projectcalico.org/v3",
        "kind": "WorkloadEndpoint",
        "metadata": {
            "name": workload_endpoint_name(node, pod_name),
            "namespace": namespace,
        },
        "spec": {
            "orchestrator": "k8s",
            "node": node,
            "pod": pod_name,
            "endpoint": "eth0",
            "interfaceName": interface_name(namespace, pod_name),
            "ipNetworks": addresses,
        },
    })))
}

/// The pod's IPs with the field each came from, in libcalico-go's order: `status.podIPs`,
/// `status.podIP`, then Calico CNI's annotations (set before kubelet reports the IPs).
fn pod_ips(pod: &Json) -> Vec<(String, &str)> {
    if let Some(Json::Array(ips)) = pod.pointer("/status/podIPs") {
        let found: Vec<(String, &str)> = ips
            .iter()
            .enumerate()
            .filter_map(|(i, entry)| Some((format!("status.podIPs[{i}].ip"), entry.get("ip")?.as_str()?)))
            .filter(|(_, ip)| !ip.is_empty())
            .collect();
        if !found.is_empty() {
            return found;
        }
    }
    if let Some(ip) = pod.pointer("/status/podIP").and_then(Json::as_str).filter(|ip| !ip.is_empty()) {
        return vec![("status.podIP".to_owned(), ip)];
    }
    let annotations = pod.pointer("/metadata/annotations").and_then(Json::as_object);
    for key in [ANNOTATION_POD_IPS, ANNOTATION_POD_IP] {
        if let Some(value) = annotations.and_then(|a| a.get(key)?.as_str()).filter(|v| !v.is_empty()) {
            let field = format!("metadata.annotations[{key:?}]");
            return value.split(',').map(|ip| (field.clone(), ip)).collect();
        }
    }
    Vec::new()
}

/// The objects read so far, converted, by resource and `namespace/name`.
#[derive(Clone, Debug, Default)]
pub struct Cache {
    objects: BTreeMap<(Resource, String), Converted>,
}

impl Cache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many objects are cached.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether no object is cached.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// An object was listed, added or modified.
    pub fn put(&mut self, resource: &Resource, object: &Json) {
        let Some(key) = object_key(object) else {
            // The API server always names objects; an unnamed one has nothing to key it by.
            return;
        };
        self.objects.insert((*resource, key), convert(resource, object));
    }

    /// An object was deleted. Returns whether it was cached.
    pub fn delete(&mut self, resource: &Resource, object: &Json) -> bool {
        match object_key(object) {
            Some(key) => self.objects.remove(&(*resource, key)).is_some(),
            None => false,
        }
    }

    /// Replaces every object of `resource` with `objects` (a fresh list).
    pub fn replace(&mut self, resource: &Resource, objects: &[Json]) {
        self.objects.retain(|(cached, _), _| cached != resource);
        for object in objects {
            self.put(resource, object);
        }
    }

    /// The whole cluster as the cached objects describe it.
    pub fn snapshot(&self) -> Snapshot {
        let mut builder = ModelBuilder::new();
        let mut problems = Vec::new();
        for ((resource, key), converted) in &self.objects {
            problems.extend(converted.problems.iter().cloned());
            if let Some(value) = &converted.resource {
                builder.add(value, &format!("{} {key}", resource.kind));
            }
        }
        let (model, found) = builder.finish();
        problems.extend(found);
        Snapshot { model, problems }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AffinityState, MacAddr};

    fn pod(namespace: &str, name: &str, node: &str, ip: &str) -> Json {
        json!({
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": "7"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
        })
    }

    #[test]
    fn interface_names_are_calicos() {
        // `printf %s default.web-1 | sha1sum`, as examples/two-nodes.yaml lists them.
        assert_eq!(interface_name("default", "web-1"), "cali0761ccbeace");
        assert_eq!(interface_name("default", "cache-1"), "cali188d81a77fc");
        assert_eq!(interface_name("default", "web-2"), "cali9fb0db7f13e");
    }

    #[test]
    fn endpoint_names_double_the_dashes() {
        assert_eq!(workload_endpoint_name("node-1", "web-1"), "node--1-k8s-web--1-eth0");
        assert_eq!(workload_endpoint_name("n", "p"), "n-k8s-p-eth0");
    }

    #[test]
    fn a_pod_becomes_its_workload_endpoint() {
        let mut cache = Cache::new();
        cache.put(&PODS, &pod("default", "web-1", "node-1", "10.244.1.2"));
        let snapshot = cache.snapshot();
        assert!(snapshot.problems.is_empty(), "{:#?}", snapshot.problems);
        let [workload] = &snapshot.model.workloads[..] else {
            panic!("one workload: {:#?}", snapshot.model.workloads);
        };
        assert_eq!(workload.full_name(), "default/node--1-k8s-web--1-eth0");
        assert_eq!(workload.node, "node-1");
        assert_eq!(workload.interface, "cali0761ccbeace");
        assert_eq!(workload.addrs, vec!["10.244.1.2/32".parse().expect("net")]);
        assert_eq!(workload.mac, None);
    }

    #[test]
    fn pods_that_are_not_workloads_are_left_out() {
        let mut host = pod("kube-system", "calico-node-x", "node-1", "10.100.0.11");
        host["spec"]["hostNetwork"] = json!(true);
        let mut pending = pod("default", "pending", "", "");
        pending["status"] = json!({"phase": "Pending"});
        let mut unscheduled = pod("default", "unscheduled", "", "");
        unscheduled["spec"]["nodeName"] = Json::Null;
        let mut done = pod("default", "job-1", "node-1", "10.244.1.9");
        done["status"]["phase"] = json!("Succeeded");
        let mut deleting = pod("default", "going", "node-1", "10.244.1.8");
        deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        deleting["metadata"]["annotations"] = json!({ANNOTATION_POD_IP: ""});
        let mut no_ip = pod("default", "starting", "node-1", "");
        no_ip["status"] = json!({"phase": "Pending"});
        let mut cache = Cache::new();
        for object in [&host, &pending, &unscheduled, &done, &deleting, &no_ip] {
            cache.put(&PODS, object);
        }
        let snapshot = cache.snapshot();
        assert!(snapshot.model.workloads.is_empty(), "{:#?}", snapshot.model.workloads);
        assert!(snapshot.problems.is_empty(), "{:#?}", snapshot.problems);
    }

    #[test]
    fn calicos_annotation_gives_the_ip_before_kubelet_does() {
        let mut early = pod("default", "web-3", "node-1", "");
        early["status"] = json!({"phase": "Pending"});
        early["metadata"]["annotations"] = json!({ANNOTATION_POD_IP: "10.244.1.7/32"});
        let mut cache = Cache::new();
        cache.put(&PODS, &early);
        let snapshot = cache.snapshot();
        assert_eq!(snapshot.model.workloads.len(), 1);
        assert_eq!(snapshot.model.workloads[0].addrs, vec!["10.244.1.7/32".parse().expect("net")]);
    }

    #[test]
    fn a_bad_pod_ip_is_reported_by_pod_and_field() {
        let mut cache = Cache::new();
        cache.put(&PODS, &pod("default", "web-1", "node-1", "10.244.1.2"));
        cache.put(&PODS, &pod("default", "broken", "node-1", "10.244.1.300"));
        let snapshot = cache.snapshot();
        assert_eq!(snapshot.model.workloads.len(), 1);
        let [problem] = &snapshot.problems[..] else { panic!("{:#?}", snapshot.problems) };
        assert_eq!((problem.kind.as_str(), problem.name.as_str()), ("Pod", "default/broken"));
        assert_eq!(problem.field, "status.podIPs[0].ip");
    }

    #[test]
    fn calico_crds_and_nodes_go_through_the_file_datastores_code() {
        let mut cache = Cache::new();
        cache.put(
            &BLOCK_AFFINITIES,
            &json!({"metadata": {"name": "node-1-10-244-1-0-26"}, "spec": {"cidr": "10.244.1.0/26", "node": "node-1", "state": "confirmed", "deleted": "false"}}),
        );
        cache.put(
            &BLOCK_AFFINITIES,
            &json!({"metadata": {"name": "node-3-10-244-3-0-26"}, "spec": {"cidr": "10.244.3.0/26", "node": "node-3", "state": "pending", "deleted": "false"}}),
        );
        cache.put(
            &BLOCK_AFFINITIES,
            &json!({"metadata": {"name": "bad"}, "spec": {"cidr": "10.244.999.0/26", "node": "node-3"}}),
        );
        cache.put(
            &NODES,
            &json!({"metadata": {"name": "node-1", "annotations": {
                "projectcalico.org/IPv4Address": "10.100.0.11/24",
                "projectcalico.org/IPv4VXLANTunnelAddr": "10.244.1.0",
                "projectcalico.org/VXLANTunnelMACAddr": "66:d0:00:00:00:01"}}}),
        );
        cache.put(
            &NODES,
            &json!({"metadata": {"name": "node-2", "annotations": {
                "projectcalico.org/IPv4Address": "10.100.0.12/24",
                "projectcalico.org/VXLANTunnelMACAddr": "not-a-mac"}}}),
        );
        let snapshot = cache.snapshot();
        assert_eq!(snapshot.model.blocks.len(), 2);
        assert!(snapshot
            .model
            .blocks
            .iter()
            .any(|b| b.node == "node-3" && b.state == AffinityState::Pending && !b.routes()));
        assert_eq!(snapshot.model.nodes.len(), 1);
        assert_eq!(snapshot.model.nodes[0].vxlan_tunnel_mac, Some(MacAddr([0x66, 0xd0, 0, 0, 0, 1])));
        let mut named: Vec<(&str, &str, &str)> =
            snapshot.problems.iter().map(|p| (p.kind.as_str(), p.name.as_str(), p.field.as_str())).collect();
        named.sort();
        assert_eq!(
            named,
            vec![
                ("BlockAffinity", "bad", "spec.cidr"),
                ("Node", "node-2", "metadata.annotations[\"projectcalico.org/VXLANTunnelMACAddr\"]"),
            ]
        );
        // A deletion takes the object out; a fresh list replaces the kind's objects.
        assert!(cache.delete(&BLOCK_AFFINITIES, &json!({"metadata": {"name": "bad"}})));
        cache.replace(&NODES, &[]);
        let snapshot = cache.snapshot();
        assert!(snapshot.problems.is_empty() && snapshot.model.nodes.is_empty());
    }
}
