//! The node's kernel routes against the plan: workload /32s and remote blocks.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use dataplane_common::{route_flags, route_kind, Route, ROUTES_MAP};
use ipnet::Ipv4Net;

use crate::{
    backend::entries::RouteKey,
    model::{MacAddr, Model},
    plan::{Encap, Plan, RouteTarget},
    routes,
};

use super::*;

/// Workloads of this node whose host-side interface is missing, or whose host route
/// `<pod>/32 dev <interface>` is missing or points elsewhere.
pub fn check_workloads(plan: &Plan, interfaces: &BTreeMap<String, u32>, host_routes: &[KernelRoute]) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (interface, workload) in &plan.workloads {
        let object = format!("WorkloadEndpoint {}", workload.name);
        if !interfaces.contains_key(interface) {
            findings.push(Finding::new(
                "workloads",
                object,
                format!("its interface {interface} does not exist on this node, so the pod is unreachable"),
                "the pod's veth is gone: delete the pod so that it is re-created, or correct spec.interfaceName \
                 if the pod uses another interface (Calico names it cali + 11 hex digits of \
                 sha1(\"<namespace>.<pod>\"))",
            ));
            continue;
        }
        let host = Ipv4Net::from(workload.addr);
        let routes: Vec<&KernelRoute> = host_routes.iter().filter(|r| r.dst == host).collect();
        if routes.iter().any(|r| r.interface == *interface) {
            continue;
        }
        let problem = match routes.first() {
            Some(other) => format!(
                "the host route {host} points at {} instead of {interface}, so the node's own traffic to the pod \
                 goes astray",
                other.interface
            ),
            None => format!(
                "the host route {host} dev {interface} is missing, so the node's own traffic to the pod (kubelet \
                 probes, host-network pods) does not reach it"
            ),
        };
        findings.push(Finding::new(
            "workloads",
            object,
            problem,
            format!(
                "ip route replace {host} dev {interface} scope link (the CNI plugin adds it when the pod starts; \
                 re-creating the pod also restores it)"
            ),
        ));
    }
    findings
}

/// Every remote block of the plan must have a route in the routes map to the node that owns it,
/// encapsulated as the pool says and, for VXLAN, with that node's VTEP MAC (the page's "check
/// whether the routing is normal" and the neighbour MAC check). Returns the findings and the
/// route keys they cover, so that the map diff does not report the same entry again.
pub fn check_remote_blocks(
    model: &Model,
    plan: &Plan,
    routes: &BTreeMap<RouteKey, Route>,
) -> (Vec<Finding>, BTreeSet<RouteKey>) {
    let mut findings = Vec::new();
    let mut covered = BTreeSet::new();
    for (prefix, planned) in &plan.routes {
        let RouteTarget::RemoteBlock { node, node_addr, encap } = &planned.target else {
            continue;
        };
        let key = route_key(prefix);
        let object = format!("block {prefix} of node {node}");
        let mut problems = Vec::new();
        match routes.get(&key) {
            None => {
                problems.push(format!("{ROUTES_MAP} has no route for it, so pods here cannot reach the pods in it"))
            }
            Some(route) if route.kind != route_kind::REMOTE_BLOCK => problems.push(format!(
                "{ROUTES_MAP} routes it as {}, not to node {node}",
                routes::describe(*prefix, route).kind
            )),
            Some(route) => {
                let programmed = Ipv4Addr::from(route.node_addr);
                if programmed != *node_addr {
                    let holder = model
                        .nodes
                        .iter()
                        .find(|n| n.addr.map(|a| a.addr()) == Some(programmed))
                        .map(|n| format!("node {}", n.name))
                        .unwrap_or_else(|| "no node of the cluster".to_owned());
                    problems.push(format!(
                        "its route goes to {programmed} ({holder}), but the block belongs to node {node} at {node_addr}"
                    ));
                }
                let encap_flags = route.flags & (route_flags::ENCAP_VXLAN | route_flags::ENCAP_IPIP);
                let (want_flags, want_mac) = match encap {
                    Encap::None => (0, None),
                    Encap::Vxlan { vtep_mac } => (route_flags::ENCAP_VXLAN, Some(*vtep_mac)),
                    Encap::Ipip => (route_flags::ENCAP_IPIP, None),
                };
                if encap_flags != want_flags {
                    problems.push(format!(
                        "its route encapsulates as {}, the pool says {}",
                        encap_name(encap_flags),
                        encap_name(want_flags)
                    ));
                } else if let Some(want) = want_mac {
                    if route.mac != want.0 {
                        problems.push(format!(
                            "its route's VTEP MAC is {}, but node {node}'s VTEP MAC (spec.vxlanTunnelMACAddr) is {want}",
                            MacAddr(route.mac)
                        ));
                    }
                }
            }
        }
        if !problems.is_empty() {
            covered.insert(key);
            findings.push(Finding::new("routes", object, problems.join("; "), FIX_AGENT));
        }
    }
    (findings, covered)
}
