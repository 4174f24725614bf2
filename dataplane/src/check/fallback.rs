//! The netlink fallback's routes, neighbours, FDB and natOutgoing table against the plan.

use std::{collections::BTreeMap, net::Ipv4Addr};

use crate::{
    backend::{
        netlink::{Intent, RouteIntent, VXLAN_DEVICE, VXLAN_VNI},
        nftables,
    },
    plan::{Plan, RouteTarget},
    rtnl::IPIP_DEVICE,
};

use super::*;

pub(super) const FIX_FALLBACK: &str =
    "the agent in netlink mode rewrites this on every resync (30 s) and on start: if it \
                            persists, restart it (`dataplane run --mode netlink`) and read its log";

/// The netlink fallback against the plan, as the troubleshooting page checks Calico's VXLAN mode:
/// `vxlan.calico` up with this node's VTEP MAC, a route per remote block via the owner's VTEP,
/// permanent neighbours and FDB entries with the peers' VTEP MACs, blackholes for local blocks.
pub fn check_fallback(plan: &Plan, intent: &Intent, observed: &ObservedFallback, uplink: &str) -> Vec<Finding> {
    let mut findings = Vec::new();
    let device_object = format!("device {VXLAN_DEVICE}");
    if let Some(want) = &intent.vxlan {
        match &observed.device {
            None => findings.push(Finding::new(
                "fallback",
                device_object.clone(),
                "does not exist, so no VXLAN block is reachable",
                FIX_FALLBACK,
            )),
            Some(device) => {
                if !device.up {
                    findings.push(Finding::new(
                        "fallback",
                        device_object.clone(),
                        "is down, so every VXLAN block is unreachable",
                        format!("ip link set {VXLAN_DEVICE} up"),
                    ));
                }
                if device.mac != Some(want.mac) {
                    findings.push(Finding::new(
                        "fallback",
                        device_object.clone(),
                        format!(
                            "its MAC is {}, but this node's VTEP MAC (spec.vxlanTunnelMACAddr) is {}: peers address \
                             their packets to the latter",
                            device.mac.map(|m| m.to_string()).unwrap_or_else(|| "unset".into()),
                            want.mac
                        ),
                        format!("ip link set {VXLAN_DEVICE} address {}", want.mac),
                    ));
                }
                if device.vni != Some(VXLAN_VNI) || device.local != Some(want.local) {
                    findings.push(Finding::new(
                        "fallback",
                        device_object.clone(),
                        format!(
                            "has VNI {:?} and local {:?}; Calico's are VNI {VXLAN_VNI} and the node's address {}",
                            device.vni, device.local, want.local
                        ),
                        format!("ip link del {VXLAN_DEVICE}, then restart the agent, which makes it again"),
                    ));
                }
            }
        }
    }

    // The peers' VTEPs: owner node by VTEP address, for the messages.
    let owners: BTreeMap<Ipv4Addr, &str> = plan
        .routes
        .iter()
        .filter_map(|(prefix, route)| match (&route.target, intent.routes.get(prefix)) {
            (RouteTarget::RemoteBlock { node, .. }, Some(RouteIntent::Vxlan { vtep })) => Some((*vtep, &**node)),
            _ => None,
        })
        .collect();
    let owner = |vtep: &Ipv4Addr| owners.get(vtep).map(|n| format!("node {n}")).unwrap_or_else(|| "a peer".into());

    for (vtep, mac) in &intent.neighbours {
        let fix = format!("ip neigh replace {vtep} lladdr {mac} dev {VXLAN_DEVICE} nud permanent");
        let object = format!("neighbour {vtep} dev {VXLAN_DEVICE}");
        match observed.neighbours.get(vtep) {
            None => findings.push(Finding::new(
                "fallback",
                object,
                format!("no permanent neighbour for the VTEP of {}", owner(vtep)),
                fix,
            )),
            Some(have) if have != mac => findings.push(Finding::new(
                "fallback",
                object,
                format!("lladdr {have}, but the VTEP MAC of {} is {mac}", owner(vtep)),
                fix,
            )),
            Some(_) => {}
        }
    }
    for (mac, dst) in &intent.fdb {
        let fix = format!("bridge fdb replace {mac} dev {VXLAN_DEVICE} dst {dst} self permanent");
        let object = format!("fdb {mac} dev {VXLAN_DEVICE}");
        match observed.fdb.get(mac) {
            None => findings.push(Finding::new("fallback", object, format!("no FDB entry sends it to {dst}"), fix)),
            Some(have) if have != dst => findings.push(Finding::new(
                "fallback",
                object,
                format!("the FDB entry sends it to {have}, but its node is at {dst}"),
                fix,
            )),
            Some(_) => {}
        }
    }

    for (prefix, want) in &intent.routes {
        let have = observed.routes.get(prefix);
        let (ok, fix) = match want {
            RouteIntent::Blackhole => {
                (matches!(have, Some(ObservedRoute::Blackhole)), format!("ip route replace blackhole {prefix}"))
            }
            RouteIntent::Vxlan { vtep } => (
                matches!(have, Some(ObservedRoute::Via { gateway, interface }) if gateway == vtep && interface == VXLAN_DEVICE),
                format!("ip route replace {prefix} via {vtep} dev {VXLAN_DEVICE} onlink"),
            ),
            RouteIntent::Direct { peer } => (
                matches!(have, Some(ObservedRoute::Via { interface, .. }) if interface == uplink),
                format!("ip route replace {prefix} via {peer} dev {uplink} onlink"),
            ),
            RouteIntent::Ipip { peer, .. } => (
                matches!(have, Some(ObservedRoute::Via { gateway, interface }) if gateway == peer && interface == IPIP_DEVICE),
                format!("ip route replace {prefix} via {peer} dev {IPIP_DEVICE} onlink"),
            ),
            // The workloads' host routes are checked with the workloads.
            RouteIntent::Workload { .. } => continue,
        };
        if ok {
            continue;
        }
        let owner = match plan.routes.get(prefix).map(|r| &r.target) {
            Some(RouteTarget::RemoteBlock { node, .. }) => format!("block of node {node}"),
            Some(RouteTarget::LocalBlock) => "block of this node".to_owned(),
            _ => "prefix".to_owned(),
        };
        let problem = match have {
            None => format!("the {owner} has no route"),
            Some(ObservedRoute::Blackhole) => format!("the {owner} is blackholed"),
            Some(ObservedRoute::Via { gateway, interface }) => {
                format!("the {owner} is routed via {gateway} dev {interface}")
            }
            Some(ObservedRoute::Other) => format!("the {owner} has a route of another shape"),
        };
        findings.push(Finding::new("fallback", format!("route {prefix}"), problem, fix));
    }
    findings.extend(check_masquerade(plan, observed));
    findings
}

/// natOutgoing of the fallback: Calico's masquerade rule and pool sets in `table ip dataplane`,
/// exactly while some pool has natOutgoing.
pub(super) fn check_masquerade(plan: &Plan, observed: &ObservedFallback) -> Vec<Finding> {
    let table = format!("table ip {}", nftables::TABLE);
    if let Some(error) = &observed.nat_error {
        return vec![Finding::new(
            "fallback",
            table,
            format!("cannot be read, so natOutgoing was not checked: {error}"),
            "run the check as root in the node's network namespace, on a kernel with nf_tables",
        )];
    }
    let wanted = nftables::masquerade(plan);
    let mut findings = Vec::new();
    for change in nftables::changes(wanted.as_ref(), &observed.nat) {
        let (object, problem) = match &change {
            nftables::Change::AddTable => {
                (table.clone(), "does not exist, so pods of natOutgoing pools leave with their own addresses".into())
            }
            nftables::Change::DeleteTable => {
                (table.clone(), "still masquerades, but no pool has natOutgoing any more".into())
            }
            nftables::Change::AddSet(set) => (format!("set {set}"), "does not exist".into()),
            nftables::Change::FlushSet(set) => {
                let (have, want) = match (set, &wanted) {
                    (&nftables::MASQ_POOLS_SET, Some(w)) => (observed.nat.sets.get(*set), &w.masq_pools),
                    (_, Some(w)) => (observed.nat.sets.get(*set), &w.all_pools),
                    _ => continue,
                };
                let have = have.map(nftables::describe).unwrap_or_default();
                let want = want.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ");
                (format!("set {set}"), format!("holds {{{have}}}, but the pools are {{{want}}}"))
            }
            nftables::Change::AddChain => {
                (format!("chain {}", nftables::CHAIN), "does not exist, so nothing is masqueraded".into())
            }
            nftables::Change::FlushChain => (
                format!("chain {}", nftables::CHAIN),
                format!("does not hold exactly the masquerade rule (comment \"{}\")", nftables::RULE_COMMENT),
            ),
            nftables::Change::AddElements(..) | nftables::Change::AddRule => continue,
        };
        let fix = match change {
            nftables::Change::DeleteTable => format!("nft delete {table}"),
            _ => FIX_FALLBACK.to_owned(),
        };
        findings.push(Finding::new("fallback", object, problem, fix));
        // A missing table is one finding, not one per set and chain.
        if !observed.nat.table {
            break;
        }
    }
    findings
}
