//! The plan turned into the exact map entries the kernel programs read.
//!
//! Pure apart from the interface-index lookup it is given, so the translation is unit-tested.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use dataplane_common::{
    net::{CALICO_VXLAN_PORT, CALICO_VXLAN_VNI},
    peer_flags, route_flags, route_kind, workload_flags, workload_slot, FlowTimeouts, Ipv4Bytes, MacBytes, NodeConfig,
    Peer, PoolPrefix, Pools, Route, Workload, WorkloadSlot, POOLS_MAX, POOLS_TOO_MANY,
};
use ipnet::Ipv4Net;

use crate::{
    model::MacAddr,
    plan::{Encap, Plan, PlannedRoute, RouteTarget},
};

/// A routes map key: prefix length and network-order address.
pub type RouteKey = (u32, Ipv4Bytes);

/// The content every map should have.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MapEntries {
    /// The node map's single value.
    pub node: NodeConfig,
    /// The routes map.
    pub routes: BTreeMap<RouteKey, Route>,
    /// The workloads map, by host-side ifindex.
    pub workloads: BTreeMap<u32, Workload>,
    /// The peers map.
    pub peers: BTreeMap<Ipv4Bytes, Peer>,
}

/// The workload slots map derived from the workloads map: the occupied slots by index. Where
/// interfaces share a slot the lowest ifindex holds it (the others are found through the hash),
/// so the choice depends only on the workloads, never on the order they were written in.
pub fn workload_slots(workloads: &BTreeMap<u32, Workload>) -> BTreeMap<u32, WorkloadSlot> {
    let mut slots = BTreeMap::new();
    // Ascending ifindex: the first to claim a slot keeps it.
    for (&ifindex, &workload) in workloads {
        slots.entry(workload_slot(ifindex)).or_insert(WorkloadSlot { ifindex, workload });
    }
    slots
}

/// The pools map derived from the routes map: the prefixes of its pool routes, in key order, or
/// [`POOLS_TOO_MANY`] when they do not fit (the programs then ask the routes map).
pub fn pools(routes: &BTreeMap<RouteKey, Route>) -> Pools {
    let mut pools = Pools::default();
    for ((prefix_len, network), _) in routes.iter().filter(|(_, route)| route.kind == route_kind::POOL) {
        let Some(prefix) = pools.prefixes.get_mut(pools.count as usize) else {
            return Pools { count: POOLS_TOO_MANY, ..Pools::default() };
        };
        let mask = u32::MAX.checked_shl(32 - prefix_len).unwrap_or(0);
        *prefix = PoolPrefix { network: *network, mask: mask.to_be_bytes() };
        pools.count += 1;
    }
    debug_assert!(pools.count as usize <= POOLS_MAX);
    pools
}

/// What the kernel programs need to know about this host beyond the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uplink {
    /// The uplink's ifindex.
    pub ifindex: u32,
    /// The uplink's MTU.
    pub mtu: u32,
    /// The ports SNAT picks from when a flow's own port is taken (inclusive).
    pub nat_ports: (u16, u16),
}

/// A workload left out because its interface does not exist (yet).
#[derive(Debug, PartialEq, Eq)]
pub struct MissingInterface {
    /// The workload endpoint, `namespace/name`.
    pub workload: String,
    /// The interface that was not found.
    pub interface: String,
}

/// The interfaces (with ifindex) of the plan's workloads that have no MAC from the datastore
/// (Calico's Kubernetes datastore stores none) and exist on this node: the backend learns
/// theirs from the kernel. `ifindex` resolves interface names, as for [`from_plan`].
pub fn without_mac(plan: &Plan, ifindex: impl Fn(&str) -> Option<u32>) -> Vec<(&str, u32)> {
    plan.workloads
        .iter()
        .filter(|(_, workload)| workload.mac.is_none())
        .filter_map(|(interface, _)| ifindex(interface).map(|index| (interface.as_str(), index)))
        .collect()
}

/// The destination MAC the fast path writes on packets it delivers to a workload: the
/// datastore's when it has one, else the one learned from the pod's side of its veth, else zero
/// (delivery still works, as bpf_redirect_peer keeps the packet type, but the pod sees 00:00:..).
pub fn workload_mac(datastore: Option<MacAddr>, learned: Option<MacAddr>) -> MacBytes {
    datastore.or(learned).map(|m| m.0).unwrap_or_default()
}

/// The keys a change touched: only these routes and peers are translated and compared.
#[derive(Debug, Default)]
pub struct Within {
    /// Route prefixes.
    pub routes: BTreeSet<Ipv4Net>,
    /// Node addresses (peer entries).
    pub peers: BTreeSet<Ipv4Addr>,
}

/// Translates `plan` into map entries; `ifindex` resolves interface names on this node and
/// `learned` holds the MACs learned for workloads the datastore gives none (by interface).
pub fn from_plan(
    plan: &Plan,
    uplink: Uplink,
    ifindex: impl Fn(&str) -> Option<u32>,
    learned: &BTreeMap<String, MacAddr>,
) -> (MapEntries, Vec<MissingInterface>) {
    from_plan_within(plan, uplink, ifindex, learned, None)
}

/// [`from_plan`], with the routes and peers only `within` the keys a change touched (all of
/// them when `None`); the node and the workloads (a handful) are always whole.
pub fn from_plan_within(
    plan: &Plan,
    uplink: Uplink,
    ifindex: impl Fn(&str) -> Option<u32>,
    learned: &BTreeMap<String, MacAddr>,
    within: Option<&Within>,
) -> (MapEntries, Vec<MissingInterface>) {
    let mut entries = MapEntries {
        node: NodeConfig {
            addr: plan.node.addr.addr().octets(),
            uplink_ifindex: uplink.ifindex,
            vni: CALICO_VXLAN_VNI,
            vtep_mac: plan.node.vtep_mac.map(|m| m.0).unwrap_or_default(),
            vxlan_port: CALICO_VXLAN_PORT,
            uplink_mtu: uplink.mtu,
            nat_port_min: uplink.nat_ports.0,
            nat_port_max: uplink.nat_ports.1,
            // The defaults; the agent applies `--conntrack-timeouts` on top.
            timeouts: FlowTimeouts::DEFAULT,
        },
        ..MapEntries::default()
    };
    let mut missing = Vec::new();

    for (interface, workload) in &plan.workloads {
        match ifindex(interface) {
            Some(index) => {
                entries.workloads.insert(
                    index,
                    Workload {
                        addr: workload.addr.octets(),
                        mac: workload_mac(workload.mac, learned.get(interface).copied()),
                        flags: workload_flags_of(plan, workload.addr),
                        _pad: 0,
                    },
                );
            }
            None => missing.push(MissingInterface { workload: workload.name.clone(), interface: interface.clone() }),
        }
    }

    let routes: Box<dyn Iterator<Item = (&Ipv4Net, &PlannedRoute)>> = match within {
        None => Box::new(plan.routes.iter()),
        Some(within) => Box::new(within.routes.iter().filter_map(|prefix| plan.routes.get_key_value(prefix))),
    };
    for (prefix, planned) in routes {
        let mut route = Route::default();
        if planned.pool.is_some() {
            route.flags |= route_flags::IN_POOL;
        }
        if planned.nat_outgoing {
            route.flags |= route_flags::NAT_OUTGOING;
        }
        match &planned.target {
            RouteTarget::LocalWorkload { interface, mac } => {
                // Without its interface the workload cannot be reached: leave its /32 out, so
                // the block's blackhole answers instead of a redirect to nowhere.
                let Some(index) = ifindex(interface) else { continue };
                route.kind = route_kind::LOCAL_WORKLOAD;
                route.ifindex = index;
                route.mac = workload_mac(*mac, learned.get(interface).copied());
            }
            RouteTarget::LocalBlock => route.kind = route_kind::LOCAL_BLOCK,
            RouteTarget::RemoteBlock { node_addr, encap, .. } => {
                route.kind = route_kind::REMOTE_BLOCK;
                route.node_addr = node_addr.octets();
                match encap {
                    Encap::None => {}
                    Encap::Vxlan { vtep_mac } => {
                        route.flags |= route_flags::ENCAP_VXLAN;
                        route.mac = vtep_mac.0;
                    }
                    Encap::Ipip => route.flags |= route_flags::ENCAP_IPIP,
                }
            }
            RouteTarget::Pool => route.kind = route_kind::POOL,
        }
        entries.routes.insert((u32::from(prefix.prefix_len()), prefix.network().octets()), route);
    }

    // Tunnel packets of either kind from every node of the cluster (see Plan::cluster_nodes,
    // which holds every peer too).
    let peers: Box<dyn Iterator<Item = &Ipv4Addr>> = match within {
        None => Box::new(plan.cluster_nodes.iter()),
        Some(within) => Box::new(within.peers.iter().filter(|addr| plan.cluster_nodes.contains(*addr))),
    };
    for addr in peers {
        entries.peers.insert(addr.octets(), Peer { flags: peer_flags::VXLAN | peer_flags::IPIP });
    }
    (entries, missing)
}

/// A workload's flags, from the plan's route for its own /32 (its pool's natOutgoing).
fn workload_flags_of(plan: &Plan, addr: std::net::Ipv4Addr) -> u8 {
    match plan.routes.get(&ipnet::Ipv4Net::from(addr)) {
        Some(route) if route.nat_outgoing => workload_flags::NAT_OUTGOING,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::plan::{NodePlan, PlannedPeer, PlannedRoute, PlannedWorkload};

    const UPLINK: Uplink = Uplink { ifindex: 2, mtu: 1500, nat_ports: (20000, 29999) };

    fn plan() -> Plan {
        let mut plan = Plan {
            node: NodePlan {
                name: "node-1".into(),
                addr: "10.100.0.11/24".parse().unwrap(),
                vtep_mac: Some(MacAddr([0x66, 0xd0, 0, 0, 0, 1])),
                vtep_addr: Some(Ipv4Addr::new(10, 244, 1, 0)),
            },
            routes: BTreeMap::new(),
            peers: BTreeMap::new(),
            cluster_nodes: [Ipv4Addr::new(10, 100, 0, 12), Ipv4Addr::new(10, 100, 0, 13)].into(),
            workloads: BTreeMap::new(),
        };
        plan.routes.insert(
            "10.244.2.0/26".parse().unwrap(),
            PlannedRoute {
                target: RouteTarget::RemoteBlock {
                    node: "node-2".into(),
                    node_addr: Ipv4Addr::new(10, 100, 0, 12),
                    encap: Encap::Vxlan { vtep_mac: MacAddr([0x66, 0xd0, 0, 0, 0, 2]) },
                },
                pool: Some("default".into()),
                nat_outgoing: true,
            },
        );
        plan.routes.insert(
            "10.244.1.2/32".parse().unwrap(),
            PlannedRoute {
                target: RouteTarget::LocalWorkload { interface: "cali1".into(), mac: None },
                pool: Some("default".into()),
                nat_outgoing: false,
            },
        );
        plan.routes.insert(
            "10.244.1.3/32".parse().unwrap(),
            PlannedRoute {
                target: RouteTarget::LocalWorkload { interface: "cali-gone".into(), mac: None },
                pool: Some("default".into()),
                nat_outgoing: false,
            },
        );
        plan.workloads.insert(
            "cali1".into(),
            PlannedWorkload { name: "default/web-1".into(), addr: Ipv4Addr::new(10, 244, 1, 2), mac: None },
        );
        plan.workloads.insert(
            "cali-gone".into(),
            PlannedWorkload { name: "default/gone".into(), addr: Ipv4Addr::new(10, 244, 1, 3), mac: None },
        );
        plan.peers.insert(Ipv4Addr::new(10, 100, 0, 12), PlannedPeer { vxlan: true, ipip: false });
        plan
    }

    #[test]
    fn translates_routes_peers_and_workloads() {
        let (entries, _) = from_plan(&plan(), UPLINK, |name| (name == "cali1").then_some(7), &BTreeMap::new());
        assert_eq!(entries.node.addr, [10, 100, 0, 11]);
        assert_eq!(entries.node.vni, 4096);
        assert_eq!(entries.node.vxlan_port, 4789);
        assert_eq!(entries.node.uplink_ifindex, 2);
        assert_eq!(entries.node.uplink_mtu, 1500);

        let remote = entries.routes[&(26, [10, 244, 2, 0])];
        assert_eq!(remote.kind, route_kind::REMOTE_BLOCK);
        assert_eq!(remote.flags, route_flags::ENCAP_VXLAN | route_flags::IN_POOL | route_flags::NAT_OUTGOING);
        assert_eq!(remote.node_addr, [10, 100, 0, 12]);
        assert_eq!(remote.mac, [0x66, 0xd0, 0, 0, 0, 2]);

        let local = entries.routes[&(32, [10, 244, 1, 2])];
        assert_eq!(local.kind, route_kind::LOCAL_WORKLOAD);
        assert_eq!(local.ifindex, 7);
        assert_eq!(entries.workloads[&7].addr, [10, 244, 1, 2]);
        assert_eq!(entries.workloads[&7].flags, 0, "its pool has no natOutgoing");
        // Every node of the cluster may send either tunnel, whatever the pools' modes are now.
        assert_eq!(entries.peers[&[10, 100, 0, 12]].flags, peer_flags::VXLAN | peer_flags::IPIP);
        assert_eq!(entries.peers[&[10, 100, 0, 13]].flags, peer_flags::VXLAN | peer_flags::IPIP);
        assert_eq!(entries.peers.len(), 2);

        // The pool's natOutgoing reaches the workload entry, where the kernel reads it.
        let mut nat = plan();
        if let Some(route) = nat.routes.get_mut(&"10.244.1.2/32".parse().unwrap()) {
            route.nat_outgoing = true;
        }
        let (entries, _) = from_plan(&nat, UPLINK, |name| (name == "cali1").then_some(7), &BTreeMap::new());
        assert_eq!(entries.workloads[&7].flags, workload_flags::NAT_OUTGOING);
    }

    #[test]
    fn a_workload_without_its_interface_is_left_out_and_reported() {
        let (entries, missing) = from_plan(&plan(), UPLINK, |name| (name == "cali1").then_some(7), &BTreeMap::new());
        assert!(!entries.routes.contains_key(&(32, [10, 244, 1, 3])));
        assert_eq!(entries.workloads.len(), 1);
        assert_eq!(missing, vec![MissingInterface { workload: "default/gone".into(), interface: "cali-gone".into() }]);
    }

    #[test]
    fn the_datastore_mac_wins_over_a_learned_one() {
        let datastore = MacAddr([0x0a, 0x58, 10, 244, 1, 2]);
        let learned = MacAddr([0x3a, 0x11, 0x22, 0x33, 0x44, 0x55]);
        assert_eq!(workload_mac(Some(datastore), Some(learned)), datastore.0);
        assert_eq!(workload_mac(Some(datastore), None), datastore.0);
        assert_eq!(workload_mac(None, Some(learned)), learned.0);
        assert_eq!(workload_mac(None, None), [0; 6], "nothing known: zero, and delivery still works");
    }

    #[test]
    fn a_learned_mac_fills_the_workload_and_its_route() {
        let mut plan = plan();
        assert_eq!(without_mac(&plan, |_| Some(1)), vec![("cali-gone", 1), ("cali1", 1)]);
        assert_eq!(without_mac(&plan, |name| (name == "cali1").then_some(7)), vec![("cali1", 7)], "only existing ones");
        let learned_mac = MacAddr([0x3a, 0x11, 0x22, 0x33, 0x44, 0x55]);
        let learned = BTreeMap::from([("cali1".to_owned(), learned_mac)]);
        let (entries, _) = from_plan(&plan, UPLINK, |name| (name == "cali1").then_some(7), &learned);
        assert_eq!(entries.workloads[&7].mac, learned_mac.0);
        assert_eq!(entries.routes[&(32, [10, 244, 1, 2])].mac, learned_mac.0);

        // With a MAC from the datastore nothing is learned for it, and a stale learned one is ignored.
        let datastore = MacAddr([0x0a, 0x58, 10, 244, 1, 2]);
        if let Some(workload) = plan.workloads.get_mut("cali1") {
            workload.mac = Some(datastore);
        }
        if let Some(route) = plan.routes.get_mut(&"10.244.1.2/32".parse().unwrap()) {
            route.target = RouteTarget::LocalWorkload { interface: "cali1".into(), mac: Some(datastore) };
        }
        assert_eq!(without_mac(&plan, |_| Some(1)), vec![("cali-gone", 1)]);
        let (entries, _) = from_plan(&plan, UPLINK, |name| (name == "cali1").then_some(7), &learned);
        assert_eq!(entries.workloads[&7].mac, datastore.0);
        assert_eq!(entries.routes[&(32, [10, 244, 1, 2])].mac, datastore.0);
    }

    #[test]
    fn interfaces_sharing_a_slot_leave_it_to_the_lowest_ifindex() {
        let pod = |last: u8| Workload { addr: [10, 244, 1, last], mac: [0; 6], flags: 0, _pad: 0 };
        let high = 7 + dataplane_common::WORKLOAD_SLOTS;
        let workloads = BTreeMap::from([(high, pod(3)), (7, pod(2)), (9, pod(4))]);
        let slots = workload_slots(&workloads);
        assert_eq!(slots.len(), 2, "7 and {high} share one slot");
        assert_eq!(slots[&7], WorkloadSlot { ifindex: 7, workload: pod(2) });
        assert_eq!(slots[&9], WorkloadSlot { ifindex: 9, workload: pod(4) });
        // When 7 goes, the slot passes to the interface that shared it.
        let slots = workload_slots(&BTreeMap::from([(high, pod(3)), (9, pod(4))]));
        assert_eq!(slots[&7], WorkloadSlot { ifindex: high, workload: pod(3) });
    }

    #[test]
    fn the_pools_map_answers_as_the_routes_map_does() {
        let mut plan = plan();
        let pool = PlannedRoute { target: RouteTarget::Pool, pool: Some("default".into()), nat_outgoing: true };
        plan.routes.insert("10.244.0.0/16".parse().unwrap(), pool);
        let (entries, _) = from_plan(&plan, UPLINK, |_| Some(7), &BTreeMap::new());
        let derived = pools(&entries.routes);
        assert_eq!(derived.count, 1);
        assert_eq!(derived.prefixes[0], PoolPrefix { network: [10, 244, 0, 0], mask: [255, 255, 0, 0] });
        assert_eq!(derived.contain([10, 244, 2, 9]), Some(true));
        assert_eq!(derived.contain([10, 245, 0, 1]), Some(false));
        assert_eq!(derived.contain([10, 100, 0, 12]), Some(false), "a node's address is in no pool");

        // More pools than the map holds: the programs ask the routes map.
        let many: BTreeMap<RouteKey, Route> = (0..=POOLS_MAX as u8)
            .map(|i| ((24, [10, i, 0, 0]), Route { kind: route_kind::POOL, ..Route::default() }))
            .collect();
        assert_eq!(pools(&many).count, POOLS_TOO_MANY);
        assert_eq!(pools(&many).contain([10, 0, 0, 1]), None);
        assert_eq!(pools(&BTreeMap::new()).contain([10, 0, 0, 1]), None, "nothing written: ask the routes map");
    }
}
