//! Unit tests of the checks.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
};

use aya::programs::TcAttachType;
use dataplane_common::{
    route_kind, workload_flags, Route, Workload, PROG_FROM_UPLINK, PROG_TO_WORKLOAD, PROG_VXLAN_ANCHOR,
};

use crate::{
    backend::{
        bpf::link_pin_name,
        clsact::{self, Filter},
        entries::{self, MapEntries},
        netlink::{self, Intent, RouteIntent, VXLAN_DEVICE, VXLAN_VNI},
        nftables,
        vxlan_anchor::{self, ANCHOR_DEVICE},
        xdp::{self, XdpMode},
    },
    model::{MacAddr, Model, Problem},
    plan::{self, Plan},
};

use super::*;
use crate::{
    fixtures::{net, pool, two_nodes},
    model::{AffinityState, Block, Node},
};

fn objects(findings: &[Finding]) -> Vec<&str> {
    findings.iter().map(|f| f.object.as_str()).collect()
}

/// The example's node-1 with its interfaces: uplink eth0 = 2, web-1 = 5, cache-1 = 6.
fn node_1() -> (Model, Plan, BTreeMap<String, u32>, MapEntries) {
    let model = two_nodes();
    let (plan, problems) = plan::compute(&model, "node-1").expect("plan");
    assert!(problems.is_empty());
    let interfaces = BTreeMap::from([
        ("lo".to_owned(), 1),
        ("eth0".to_owned(), 2),
        ("cali0761ccbeace".to_owned(), 5),
        ("cali188d81a77fc".to_owned(), 6),
    ]);
    let (entries, missing) = entries::from_plan(
        &plan,
        entries::Uplink { ifindex: 2, mtu: 1500, nat_ports: (20000, 29999) },
        |name| interfaces.get(name).copied(),
        &BTreeMap::new(),
    );
    assert!(missing.is_empty());
    (model, plan, interfaces, entries)
}

fn observed_from(entries: &MapEntries) -> ObservedMaps {
    ObservedMaps {
        node: Ok(entries.node),
        routes: Ok(entries.routes.clone()),
        workloads: Ok(entries.workloads.clone()),
        peers: Ok(entries.peers.clone()),
    }
}

#[test]
fn the_example_cluster_has_no_model_problems() {
    let model = two_nodes();
    assert_eq!(check_pools(&model), vec![]);
    assert_eq!(check_blocks(&model), vec![]);
    assert_eq!(check_tunnel_addresses(&model, "node-1"), vec![]);
    assert_eq!(check_tunnel_addresses(&model, "node-2"), vec![]);
}

#[test]
fn overlapping_pools_name_the_later_pool_and_the_fix() {
    let mut model = two_nodes();
    model.pools.push(pool("overlap", "10.244.128.0/17", 26));
    let findings = check_pools(&model);
    assert_eq!(objects(&findings), vec!["IPPool overlap"]);
    assert!(findings[0].problem.contains("overlaps IPPool default-ipv4-ippool"), "{findings:?}");
    assert!(findings[0].fix.contains("must not overlap"), "{findings:?}");
}

#[test]
fn exhaustion_is_more_nodes_than_blocks() {
    let mut model = two_nodes();
    // A /26 pool of /28 blocks has 4 blocks; the cluster has 2 nodes: fine. With 5: not.
    model.pools = vec![pool("small", "10.244.0.0/26", 28)];
    model.blocks.clear();
    assert_eq!(check_pools(&model), vec![]);
    for n in 3..=5 {
        model.nodes.push(Node { name: format!("node-{n}"), ..Node::default() });
    }
    let findings = check_pools(&model);
    assert_eq!(objects(&findings), vec!["IPPool small"]);
    assert!(findings[0].problem.contains("4 blocks of /28") && findings[0].problem.contains("5 nodes"), "{findings:?}");
    assert!(findings[0].fix.contains("add an IP pool"));
    // A block size that does not fit the pool is its own finding.
    model.pools = vec![pool("odd", "10.244.0.0/26", 24)];
    assert!(check_pools(&model)[0].problem.contains("blockSize 24 does not fit"));
}

#[test]
fn a_full_pool_is_reported_even_with_enough_blocks_for_the_nodes() {
    let mut model = two_nodes();
    model.pools = vec![pool("tiny", "10.244.1.0/25", 26)];
    model.blocks.retain(|b| b.cidr == net("10.244.1.0/26"));
    model.blocks.push(Block {
        cidr: net("10.244.1.64/26"),
        node: "node-2".into(),
        state: AffinityState::Confirmed,
        deleted: false,
    });
    let findings = check_pools(&model);
    assert_eq!(objects(&findings), vec!["IPPool tiny"]);
    assert!(findings[0].problem.contains("every one of the pool's 2 blocks"), "{findings:?}");
}

#[test]
fn a_block_outside_every_pool_is_named_with_its_node() {
    let mut model = two_nodes();
    model.blocks.push(Block {
        cidr: net("10.99.0.0/26"),
        node: "node-2".into(),
        state: AffinityState::Confirmed,
        deleted: false,
    });
    let findings = check_blocks(&model);
    assert_eq!(objects(&findings), vec!["BlockAffinity 10.99.0.0/26"]);
    assert!(findings[0].problem.contains("node-2"));
}

#[test]
fn a_tunnel_address_outside_the_nodes_blocks() {
    let mut model = two_nodes();
    model.nodes[0].vxlan_tunnel_addr = Some(Ipv4Addr::new(10, 244, 2, 9));
    let findings = check_tunnel_addresses(&model, "node-1");
    assert_eq!(objects(&findings), vec!["Node node-1"]);
    assert!(
        findings[0].problem.contains("10.244.2.9") && findings[0].problem.contains("10.244.1.0/26"),
        "{findings:?}"
    );
    assert!(findings[0].fix.contains("10.244.1.0/26"));
}

#[test]
fn healthy_maps_diff_to_nothing() {
    let (model, plan, _, entries) = node_1();
    let observed = observed_from(&entries);
    let (findings, covered) = check_remote_blocks(&model, &plan, observed.routes.as_ref().expect("routes"));
    assert!(findings.is_empty() && covered.is_empty(), "{findings:?}");
    assert_eq!(diff_maps(&entries, &observed, &covered, &BTreeMap::new()), vec![]);
}

#[test]
fn a_missing_remote_block_route_is_reported_once() {
    let (model, plan, _, entries) = node_1();
    let mut observed = observed_from(&entries);
    let key = route_key(&net("10.244.2.0/26"));
    if let Ok(routes) = &mut observed.routes {
        routes.remove(&key);
    }
    let (findings, covered) = check_remote_blocks(&model, &plan, observed.routes.as_ref().expect("routes"));
    assert_eq!(objects(&findings), vec!["block 10.244.2.0/26 of node node-2"]);
    assert!(findings[0].problem.contains("no route"));
    assert!(findings[0].fix.contains("restart it"));
    assert!(covered.contains(&key));
    assert_eq!(diff_maps(&entries, &observed, &covered, &BTreeMap::new()), vec![]);
}

#[test]
fn a_remote_block_routed_to_the_wrong_node_or_mac() {
    let (model, plan, _, entries) = node_1();
    let mut observed = observed_from(&entries);
    let key = route_key(&net("10.244.2.0/26"));
    if let Ok(routes) = &mut observed.routes {
        let route = routes.get_mut(&key).expect("remote block route");
        route.node_addr = [10, 100, 0, 11];
        route.mac = [0x66, 0xd0, 0, 0, 0, 9];
    }
    let (findings, _) = check_remote_blocks(&model, &plan, observed.routes.as_ref().expect("routes"));
    assert_eq!(findings.len(), 1);
    let problem = &findings[0].problem;
    assert!(
        problem.contains("goes to 10.100.0.11 (node node-1)") && problem.contains("node-2 at 10.100.0.12"),
        "{problem}"
    );
    assert!(problem.contains("VTEP MAC is 66:d0:00:00:00:09") && problem.contains("66:d0:00:00:00:02"), "{problem}");
}

#[test]
fn map_diff_lists_missing_extra_and_different_entries() {
    let (_, _, _, entries) = node_1();
    let mut observed = observed_from(&entries);
    if let Ok(routes) = &mut observed.routes {
        routes.remove(&route_key(&net("10.244.1.2/32")));
        routes.insert(
            route_key(&net("10.244.1.9/32")),
            Route { kind: route_kind::LOCAL_WORKLOAD, ifindex: 9, ..Route::default() },
        );
    }
    if let Ok(workloads) = &mut observed.workloads {
        workloads.get_mut(&6).expect("cache-1").addr = [10, 244, 1, 77];
    }
    if let Ok(peers) = &mut observed.peers {
        peers.clear();
    }
    if let Ok(node) = &mut observed.node {
        node.uplink_mtu = 9000;
        node.timeouts.udp_s = 0;
    }
    let names = BTreeMap::from([(5, "cali0761ccbeace".to_owned()), (6, "cali188d81a77fc".to_owned())]);
    let findings = diff_maps(&entries, &observed, &BTreeSet::new(), &names);
    let got: Vec<(&str, &str)> =
        findings.iter().map(|f| (f.object.as_str(), f.problem.split(':').next().unwrap_or(""))).collect();
    assert_eq!(
        got,
        vec![
            ("node_v1", "this node's settings differ from the datastore"),
            ("routes_v1 10.244.1.2/32", "missing"),
            ("routes_v1 10.244.1.9/32", "extra"),
            ("workloads_v1 ifindex 6 (cali188d81a77fc)", "holds pod 10.244.1.77 mac 0a"),
            ("peers_v1 10.100.0.12", "missing"),
        ]
    );
    assert!(findings[0].problem.contains("uplink_mtu is 9000, should be 1500"));
    assert!(findings[0].problem.contains("a conntrack timeout is 0 s"), "{}", findings[0].problem);
    assert!(findings[1].problem.contains("local workload ifindex 5 (cali0761ccbeace)"), "{}", findings[1].problem);
    assert!(findings[2].problem.contains("ifindex 9 (no such interface)"), "{}", findings[2].problem);
    assert!(findings[4].problem.contains("drop_unknown_peer"));
}

#[test]
fn a_workload_entry_shows_its_nat_outgoing_flag() {
    let workload = Workload { addr: [10, 244, 1, 5], mac: [0x0a, 0x58, 0, 0, 0, 5], flags: 0, _pad: 0 };
    assert_eq!(workload_text(&workload), "pod 10.244.1.5 mac 0a:58:00:00:00:05");
    let nat = Workload { flags: workload_flags::NAT_OUTGOING, ..workload };
    assert_eq!(workload_text(&nat), "pod 10.244.1.5 mac 0a:58:00:00:00:05 natOutgoing");

    // A map entry that lost the flag: the finding says which side has it.
    let (_, _, _, mut entries) = node_1();
    entries.workloads.get_mut(&6).expect("cache-1").flags = workload_flags::NAT_OUTGOING;
    let mut observed = observed_from(&entries);
    if let Ok(workloads) = &mut observed.workloads {
        workloads.get_mut(&6).expect("cache-1").flags = 0;
    }
    let findings = diff_maps(&entries, &observed, &BTreeSet::new(), &BTreeMap::new());
    assert_eq!(findings.len(), 1, "{findings:?}");
    let (have, want) = findings[0].problem.split_once(", the datastore says ").expect("a difference");
    assert!(!have.contains("natOutgoing"), "{have}");
    assert!(want.ends_with(" natOutgoing"), "{want}");
}

#[test]
fn an_unreadable_map_is_one_finding_with_the_fix() {
    let (_, _, _, entries) = node_1();
    let mut observed = observed_from(&entries);
    observed.routes = Err("No such file or directory".into());
    let findings = diff_maps(&entries, &observed, &BTreeSet::new(), &BTreeMap::new());
    assert_eq!(objects(&findings), vec!["routes_v1"]);
    assert!(findings[0].fix.contains("--pin-path"));
}

#[test]
fn workloads_without_interface_or_host_route() {
    let (_, plan, mut interfaces, _) = node_1();
    let mut routes = vec![
        KernelRoute { dst: net("10.244.1.2/32"), interface: "cali0761ccbeace".into() },
        KernelRoute { dst: net("10.244.1.3/32"), interface: "cali188d81a77fc".into() },
    ];
    assert_eq!(check_workloads(&plan, &interfaces, &routes), vec![]);

    routes.remove(0);
    routes[0].interface = "eth0".into();
    let findings = check_workloads(&plan, &interfaces, &routes);
    // By interface name: web-1 (cali0761ccbeace) before cache-1 (cali188d81a77fc).
    assert_eq!(
        objects(&findings),
        vec!["WorkloadEndpoint default/node--1-k8s-web--1-eth0", "WorkloadEndpoint default/node--1-k8s-cache--1-eth0"]
    );
    assert!(findings[0].problem.contains("10.244.1.2/32 dev cali0761ccbeace is missing"), "{findings:?}");
    assert!(findings[0].fix.starts_with("ip route replace 10.244.1.2/32 dev cali0761ccbeace scope link"));
    assert!(findings[1].problem.contains("points at eth0"), "{findings:?}");

    interfaces.remove("cali0761ccbeace");
    let findings = check_workloads(&plan, &interfaces, &routes);
    assert!(findings.iter().any(|f| f.problem.contains("interface cali0761ccbeace does not exist")), "{findings:?}");
}

#[test]
fn link_pin_names_round_trip() {
    for name in ["eth0", "vxlan.calico", "odd%name.x"] {
        let pin = link_pin_name(TcAttachType::Egress, name);
        assert_eq!(parse_link_pin_name(&pin), Some((Hook::Egress, name.to_owned())), "{pin}");
    }
    assert_eq!(parse_link_pin_name("something"), None);
}

fn healthy_links(expected: &BTreeMap<String, ExpectedLink>) -> ObservedLinks {
    let mut observed = ObservedLinks::default();
    for (id, (pin, link)) in expected.iter().enumerate() {
        observed.pins.insert(pin.clone(), Ok(id as u32 + 100));
        observed
            .hooks
            .insert(pin.clone(), Ok(vec![AttachedProgram { id: id as u32 + 100, name: link.program.to_owned() }]));
    }
    observed
}

#[test]
fn links_expected_for_the_uplink_and_each_local_workload() {
    let (_, plan, interfaces, _) = node_1();
    let expected = expected_links(&plan, "eth0", &interfaces);
    let names: Vec<&str> = expected.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        vec![
            "egress_cali0761ccbeace",
            "egress_cali188d81a77fc",
            "egress_eth0",
            "ingress_cali0761ccbeace",
            "ingress_cali188d81a77fc",
            "ingress_eth0"
        ]
    );
    let observed = healthy_links(&expected);
    assert_eq!(check_links(&expected, &observed, &interfaces, Path::new("/pins/links")), vec![]);
}

#[test]
fn a_missing_or_down_vxlan_anchor_is_a_tunnel_finding_only_where_vxlan_is_received() {
    assert!(check_anchor(false, None, None).is_none(), "no VXLAN: no anchor wanted");
    assert!(check_anchor(false, Some(false), None).is_none());
    assert!(check_anchor(true, Some(true), None).is_none(), "present and up");
    let missing = check_anchor(true, None, None).unwrap();
    assert_eq!((missing.check, missing.object.as_str()), ("tunnel", "device vxlan.dataplane"));
    assert!(missing.problem.contains("is missing") && missing.fix.contains("modprobe vxlan"), "{missing:?}");
    assert!(check_anchor(true, Some(false), None).unwrap().problem.contains("is down"));
    // Calico's vxlan.calico up on the port: its socket merges VXLAN as the anchor's would.
    assert!(check_anchor(true, Some(false), Some("vxlan.calico")).is_none(), "down, but another device gives GRO");
    assert!(check_anchor(true, None, Some("vxlan.calico")).is_none());
}

#[test]
fn the_vxlan_anchors_link_is_expected_once_the_device_exists() {
    let (_, plan, mut interfaces, _) = node_1();
    assert!(vxlan_anchor::wanted(&plan), "the example's pool is VXLAN");
    // The agent attaches nothing to an anchor the kernel could not make.
    assert!(!expected_links(&plan, "eth0", &interfaces).contains_key("ingress_vxlan%2edataplane"));
    interfaces.insert(ANCHOR_DEVICE.to_owned(), 7);
    let expected = expected_links(&plan, "eth0", &interfaces);
    let anchor = &expected["ingress_vxlan%2edataplane"];
    assert_eq!(
        (anchor.interface.as_str(), anchor.hook, anchor.program),
        (ANCHOR_DEVICE, Hook::Ingress, PROG_VXLAN_ANCHOR)
    );
    let observed = healthy_links(&expected);
    assert_eq!(check_links(&expected, &observed, &interfaces, Path::new("/pins/links")), vec![]);
}

#[test]
fn a_removed_pin_a_detached_program_and_a_stale_pin() {
    let (_, plan, interfaces, _) = node_1();
    let expected = expected_links(&plan, "eth0", &interfaces);
    let mut observed = healthy_links(&expected);
    // The pin of web-1's link removed: the link went with it.
    observed.pins.remove("ingress_cali0761ccbeace");
    observed.hooks.insert("ingress_cali0761ccbeace".into(), Ok(vec![]));
    // The uplink's egress pinned but detached.
    observed.hooks.insert("egress_eth0".into(), Ok(vec![]));
    // A pin left for a pod whose interface is gone.
    observed.pins.insert("ingress_caligone0000001".into(), Ok(7));
    let findings = check_links(&expected, &observed, &interfaces, Path::new("/pins/links"));
    assert_eq!(
        objects(&findings),
        vec!["to_uplink egress of eth0", "from_workload ingress of cali0761ccbeace", "link ingress_caligone0000001"]
    );
    assert!(findings[0].problem.contains("not attached to the hook"), "{findings:?}");
    assert!(findings[1].problem.contains(
        "not attached: no clsact filter of ours, and no link is pinned at /pins/links/ingress_cali0761ccbeace"
    ));
    assert!(findings[1].fix.contains("restart the agent"));
    assert!(
        findings[2].problem.contains("stale") && findings[2].fix.contains("rm /pins/links/ingress_caligone0000001")
    );
}

#[test]
fn the_uplinks_xdp_link_is_expected_pinned_and_running_its_program() {
    let dir = Path::new("/pins/links");
    let mut pins = BTreeMap::new();
    pins.insert("ingress_eth0".to_owned(), Ok(5));
    pins.insert(xdp::pin_name("eth0"), Ok(9));
    assert_eq!(check_xdp("eth0", true, &pins, &Ok(Some((XdpMode::Native, 9))), dir), vec![]);
    assert_eq!(check_xdp("eth0", true, &pins, &Ok(Some((XdpMode::Generic, 9))), dir), vec![]);
    let other = check_xdp("eth0", true, &pins, &Ok(Some((XdpMode::Native, 10))), dir);
    assert!(other[0].problem.contains("runs program id 9, but eth0 runs XDP program id 10"), "{other:?}");
    let detached = check_xdp("eth0", true, &pins, &Ok(None), dir);
    assert!(detached[0].problem.contains("runs no XDP program"), "{detached:?}");
    pins.remove(&xdp::pin_name("eth0"));
    let missing = check_xdp("eth0", true, &pins, &Ok(None), dir);
    assert_eq!(objects(&missing), vec!["xdp_uplink XDP of eth0"]);
    assert!(missing[0].problem.contains("not attached") && missing[0].fix.contains("restart the agent"));
    assert!(check_xdp("eth0", true, &pins, &Ok(Some((XdpMode::Native, 3))), dir)[0]
        .problem
        .contains("no link is pinned"));
    // A pin for another interface, and the stray-link check of the TC links leaves XDP pins alone.
    pins.insert(xdp::pin_name("eth0"), Ok(9));
    pins.insert(xdp::pin_name("eth1"), Ok(4));
    let stale = check_xdp("eth0", true, &pins, &Ok(Some((XdpMode::Native, 9))), dir);
    assert_eq!(objects(&stale), vec!["link xdp_eth1"]);
    assert!(stale[0].fix.contains("rm /pins/links/xdp_eth1"));
    let observed = ObservedLinks { pins, ..Default::default() };
    assert_eq!(check_links(&BTreeMap::new(), &observed, &BTreeMap::new(), dir).len(), 1, "only ingress_eth0");
}

/// What a node attached through clsact shows: no pins, no tcx (the query fails as on 6.1),
/// our filter on every hook.
fn clsact_links(expected: &BTreeMap<String, ExpectedLink>) -> ObservedLinks {
    let mut observed = ObservedLinks::default();
    for (id, (pin, link)) in expected.iter().enumerate() {
        observed.hooks.insert(pin.clone(), Err("tcx: Invalid argument (os error 22)".to_owned()));
        let theirs = Filter { priority: 49152, handle: 1, kind: "u32".to_owned(), name: None, program_id: None };
        let ours = Filter {
            priority: clsact::FILTER_PRIORITY,
            handle: clsact::FILTER_HANDLE,
            kind: "bpf".to_owned(),
            name: Some(clsact::filter_name(link.program)),
            program_id: Some(id as u32 + 100),
        };
        observed.filters.insert(pin.clone(), Ok(vec![ours, theirs]));
    }
    observed
}

#[test]
fn clsact_filters_count_as_attached_without_pins_or_tcx() {
    let (_, plan, interfaces, _) = node_1();
    let expected = expected_links(&plan, "eth0", &interfaces);
    let observed = clsact_links(&expected);
    assert_eq!(check_links(&expected, &observed, &interfaces, Path::new("/pins/links")), vec![]);
}

#[test]
fn a_missing_filter_a_wrong_program_a_hook_attached_twice_and_a_stray_filter() {
    let (_, plan, interfaces, _) = node_1();
    let expected = expected_links(&plan, "eth0", &interfaces);
    let mut observed = clsact_links(&expected);
    // web-1's ingress filter gone: only the other tool's filter is left.
    if let Some(Ok(filters)) = observed.filters.get_mut("ingress_cali0761ccbeace") {
        filters.retain(|f| !f.is_ours());
    }
    // The uplink's egress filter runs the wrong program.
    if let Some(Ok(filters)) = observed.filters.get_mut("egress_eth0") {
        filters[0].name = Some(clsact::filter_name(PROG_FROM_UPLINK));
    }
    // The uplink's ingress also keeps a tcx link pinned by an earlier agent.
    observed.pins.insert("ingress_eth0".into(), Ok(7));
    // A filter left on the veth of a pod the datastore no longer has.
    observed.stray_filters.insert(("caligone0000001".into(), Hook::Egress), clsact::filter_name(PROG_TO_WORKLOAD));
    let findings = check_links(&expected, &observed, &interfaces, Path::new("/pins/links"));
    assert_eq!(
        objects(&findings),
        vec![
            "to_uplink egress of eth0",
            "from_workload ingress of cali0761ccbeace",
            "from_uplink ingress of eth0",
            "filter dataplane:to_workload on egress of caligone0000001"
        ]
    );
    assert!(findings[3].fix.contains("tc filter del dev caligone0000001 egress pref 1 handle 0xda7a bpf"));
    assert!(findings[0].problem.contains("runs dataplane:from_uplink"), "{findings:?}");
    assert!(findings[1].problem.starts_with("not attached: no clsact filter of ours is on it"), "{findings:?}");
    assert!(findings[2].problem.contains("attached twice"), "{findings:?}");
}

#[test]
fn planner_problems_are_not_repeated_for_objects_already_reported() {
    let mut model = two_nodes();
    model.pools.push(pool("overlap", "10.244.128.0/17", 26));
    model.blocks.push(Block {
        cidr: net("10.99.0.0/26"),
        node: "node-2".into(),
        state: AffinityState::Confirmed,
        deleted: false,
    });
    let mut findings = check_pools(&model);
    findings.extend(check_blocks(&model));
    let (_, problems) = plan::compute(&model, "node-1").expect("plan");
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert_eq!(problem_findings("plan", &problems, &findings), vec![]);
    let other = vec![Problem::new("Node", "node-9", "spec.bgp.ipv4Address", "no address")];
    let extra = problem_findings("datastore", &other, &findings);
    assert_eq!(objects(&extra), vec!["Node node-9"]);
    assert!(extra[0].fix.contains("spec.bgp.ipv4Address"));
}

/// node-1's netlink fallback exactly as the intent says.
fn healthy_fallback(plan: &Plan, intent: &Intent) -> ObservedFallback {
    let vxlan = intent.vxlan.expect("the example tunnels with VXLAN");
    let mut observed = ObservedFallback {
        device: Some(VxlanDevice { up: true, mac: Some(vxlan.mac), vni: Some(VXLAN_VNI), local: Some(vxlan.local) }),
        neighbours: intent.neighbours.clone(),
        fdb: intent.fdb.clone(),
        routes: BTreeMap::new(),
        ours: 3,
        nat: nftables::Observed::default(),
        nat_error: None,
    };
    if let Some(wanted) = nftables::masquerade(plan) {
        observed.nat = nftables::Observed {
            table: true,
            chain: true,
            sets: BTreeMap::from([
                (nftables::MASQ_POOLS_SET.to_owned(), nftables::interval_elements(&wanted.masq_pools)),
                (nftables::ALL_POOLS_SET.to_owned(), nftables::interval_elements(&wanted.all_pools)),
            ]),
            rules: vec![Some(nftables::RULE_COMMENT.to_owned())],
        };
    }
    for (prefix, route) in &intent.routes {
        let observed_route = match route {
            RouteIntent::Blackhole => ObservedRoute::Blackhole,
            RouteIntent::Vxlan { vtep } => ObservedRoute::Via { gateway: *vtep, interface: VXLAN_DEVICE.into() },
            _ => ObservedRoute::Other,
        };
        observed.routes.insert(*prefix, observed_route);
    }
    observed
}

#[test]
fn a_healthy_fallback_has_no_findings() {
    let (model, plan, _, _) = node_1();
    let intent = netlink::intent(&plan, &model);
    assert_eq!(check_fallback(&plan, &intent, &healthy_fallback(&plan, &intent), "eth0"), vec![]);
    assert!(healthy_fallback(&plan, &intent).present());
    assert!(!ObservedFallback::default().present());
}

#[test]
fn a_fallback_without_its_masquerade_or_with_a_stale_one() {
    let (model, plan, _, _) = node_1();
    let intent = netlink::intent(&plan, &model);
    let mut observed = healthy_fallback(&plan, &intent);
    observed.nat = nftables::Observed::default();
    let findings = check_fallback(&plan, &intent, &observed, "eth0");
    assert_eq!(objects(&findings), vec!["table ip dataplane"]);
    assert!(findings[0].problem.contains("does not exist"), "{findings:?}");

    // A pool set out of step is named with what it holds and what it should.
    let mut observed = healthy_fallback(&plan, &intent);
    observed.nat.sets.insert(
        nftables::ALL_POOLS_SET.to_owned(),
        nftables::interval_elements(&[net("10.244.0.0/16"), net("10.99.0.0/16")]),
    );
    observed.nat.rules.clear();
    let findings = check_fallback(&plan, &intent, &observed, "eth0");
    assert_eq!(objects(&findings), vec!["set all-ipam-pools", "chain postrouting"]);
    assert!(
        findings[0].problem.contains("holds {10.99.0.0/16, 10.244.0.0/16}, but the pools are {10.244.0.0/16}"),
        "{findings:?}"
    );

    // No pool has natOutgoing: the table should be gone.
    let mut plan = plan;
    for route in plan.routes.values_mut() {
        route.nat_outgoing = false;
    }
    let findings = check_fallback(&plan, &intent, &healthy_fallback(&node_1().1, &intent), "eth0");
    assert_eq!(objects(&findings), vec!["table ip dataplane"]);
    assert_eq!(findings[0].fix, "nft delete table ip dataplane");

    let observed = ObservedFallback { nat_error: Some("EPERM".into()), ..healthy_fallback(&plan, &intent) };
    assert!(check_fallback(&plan, &intent, &observed, "eth0")[0].problem.contains("cannot be read"));
}

#[test]
fn a_fallback_with_the_device_down_and_a_wrong_neighbour_mac() {
    let (model, plan, _, _) = node_1();
    let intent = netlink::intent(&plan, &model);
    let mut observed = healthy_fallback(&plan, &intent);
    if let Some(device) = &mut observed.device {
        device.up = false;
    }
    let vtep = Ipv4Addr::new(10, 244, 2, 0);
    observed.neighbours.insert(vtep, MacAddr([0x66, 0xd0, 0, 0, 0, 0x99]));
    observed.fdb.clear();
    observed.routes.remove(&net("10.244.2.0/26"));
    observed.routes.insert(net("10.244.1.0/26"), ObservedRoute::Other);
    let findings = check_fallback(&plan, &intent, &observed, "eth0");
    assert_eq!(
        objects(&findings),
        vec![
            "device vxlan.calico",
            "neighbour 10.244.2.0 dev vxlan.calico",
            "fdb 66:d0:00:00:00:02 dev vxlan.calico",
            "route 10.244.1.0/26",
            "route 10.244.2.0/26",
        ]
    );
    assert_eq!(findings[0].fix, "ip link set vxlan.calico up");
    assert!(findings[1]
        .problem
        .contains("lladdr 66:d0:00:00:00:99, but the VTEP MAC of node node-2 is 66:d0:00:00:00:02"));
    assert_eq!(findings[1].fix, "ip neigh replace 10.244.2.0 lladdr 66:d0:00:00:00:02 dev vxlan.calico nud permanent");
    assert_eq!(findings[2].fix, "bridge fdb replace 66:d0:00:00:00:02 dev vxlan.calico dst 10.100.0.12 self permanent");
    assert!(findings[3].problem.contains("block of this node"), "{findings:?}");
    assert_eq!(findings[3].fix, "ip route replace blackhole 10.244.1.0/26");
    assert!(findings[4].problem.contains("block of node node-2 has no route"), "{findings:?}");
    assert_eq!(findings[4].fix, "ip route replace 10.244.2.0/26 via 10.244.2.0 dev vxlan.calico onlink");

    // No device at all.
    observed.device = None;
    let findings = check_fallback(&plan, &intent, &observed, "eth0");
    assert!(findings[0].problem.contains("does not exist"), "{findings:?}");
}

#[test]
fn proc_net_route_parses_host_order_words() {
    let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                eth0\t00000000\t0100640A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                cali0761ccbeace\t0201F40A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n\
                *\t0001F40A\t00000000\t0201\t0\t0\t0\tC0FFFFFF\t0\t0\t0\n";
    let routes = parse_proc_net_route(text);
    if cfg!(target_endian = "little") {
        assert_eq!(
            routes,
            vec![
                KernelRoute { dst: net("0.0.0.0/0"), interface: "eth0".into() },
                KernelRoute { dst: net("10.244.1.2/32"), interface: "cali0761ccbeace".into() },
                KernelRoute { dst: net("10.244.1.0/26"), interface: "*".into() },
            ]
        );
    }
}

#[test]
fn report_text_says_nothing_is_wrong_or_lists_each_fix() {
    let mut report =
        Report { node: "node-1".into(), findings: vec![], checked: Checked { links: 4, ..Checked::default() } };
    assert!(text(&report).starts_with("node node-1: no problems found (checked 4 program links"));
    assert_eq!(json(&report)["ok"], true);
    // The MACs it expects without the datastore's word are named.
    let mut learned = report.clone();
    learned.checked.learned_macs.insert("default/web-1".into(), "0a:58:0a:f4:01:02".into());
    let said = text(&learned);
    assert!(
        said.contains("MACs learned from the veths, as the datastore has none: default/web-1 0a:58:0a:f4:01:02"),
        "{said}"
    );
    assert_eq!(json(&learned)["checked"]["learned_macs"]["default/web-1"], "0a:58:0a:f4:01:02");
    report.findings.push(Finding::new("pools", "IPPool x", "overlaps", "change it"));
    let printed = text(&report);
    assert!(printed.contains("[pools] IPPool x: overlaps\n    fix: change it"), "{printed}");
    assert_eq!(json(&report)["findings"][0]["object"], "IPPool x");
}

/// The pin listing of a node whose maps all have this version's layouts, with `extra` added.
fn listing_with(extra: &[&str], marker: bool) -> crate::migrate::PinListing {
    let mut names: Vec<String> = dataplane_common::PINNED_MAPS.iter().map(|map| map.name.to_owned()).collect();
    names.extend(extra.iter().map(|name| (*name).to_owned()));
    names.sort();
    crate::migrate::PinListing { names, marker }
}

#[test]
fn pins_of_this_version_raise_no_upgrade_finding() {
    assert_eq!(check_upgrade(Path::new("/sys/fs/bpf/dataplane"), &listing_with(&[], false)), Vec::new());
}

#[test]
fn an_unfinished_upgrade_names_the_old_pins_and_says_to_start_the_agent() {
    let findings = check_upgrade(Path::new("/sys/fs/bpf/dataplane"), &listing_with(&["conntrack_v0"], true));
    assert_eq!(findings.len(), 1, "{findings:#?}");
    assert_eq!(findings[0].check, "upgrade");
    assert_eq!(findings[0].object, "/sys/fs/bpf/dataplane/upgrading");
    assert!(findings[0].problem.contains("did not finish") && findings[0].problem.contains("conntrack_v0"));
    assert!(findings[0].fix.contains("resumes"));
}

#[test]
fn pins_of_an_older_agent_without_a_marker_are_an_agent_not_yet_upgraded() {
    let findings = check_upgrade(Path::new("/p"), &listing_with(&["peers_v0"], false));
    assert_eq!(findings.len(), 1, "{findings:#?}");
    assert_eq!(findings[0].object, "peers_v0");
    assert!(findings[0].problem.contains("older layout") && findings[0].problem.contains("peers_v1"));
}

#[test]
fn pins_of_a_newer_agent_are_reported_as_unreadable() {
    let findings = check_upgrade(Path::new("/p"), &listing_with(&["routes_v2", "not_a_map"], false));
    assert_eq!(findings.len(), 1, "{findings:#?}");
    assert_eq!(findings[0].object, "routes_v2");
    assert!(findings[0].problem.contains("newer agent"));
}
