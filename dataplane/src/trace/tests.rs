//! Unit tests of the prediction, the packets and the report.

use std::{collections::BTreeMap, net::Ipv4Addr};

use dataplane_common::{
    net::{
        ETH_HLEN, ETH_P_ARP, GATEWAY_ADDR, GATEWAY_MAC, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, IPPROTO_TCP, IPPROTO_UDP,
        IPV4_HLEN, IPV4_MF,
    },
    FlowKey, FragmentKey, FragmentNat, NatFlow, Stat, FLOW_INBOUND, FLOW_OUTBOUND, FLOW_TO_POD, FRAGMENT_TIMEOUT_NS,
    PROG_FROM_UPLINK, PROG_FROM_WORKLOAD, PROG_TO_UPLINK, PROG_TO_WORKLOAD, WORKLOADS_MAP,
};

use super::*;
use crate::{backend::entries, plan};

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const NODE_1: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 11);
const NODE_2: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 12);

/// node-1 of the example as the agent programs it: web-1 on ifindex 5, cache-1 on 6, uplink 2.
fn state() -> State {
    let model = crate::fixtures::two_nodes();
    let (plan, _) = plan::compute(&model, "node-1").expect("plan");
    let ifindex = |name: &str| match name {
        "cali0761ccbeace" => Some(5),
        "cali188d81a77fc" => Some(6),
        _ => None,
    };
    let (e, _) = entries::from_plan(
        &plan,
        entries::Uplink { ifindex: 2, mtu: 1500, nat_ports: (20000, 29999) },
        ifindex,
        &Default::default(),
    );
    State {
        node: Some(e.node),
        routes: e.routes,
        workloads: e.workloads,
        peers: e.peers,
        conntrack: BTreeMap::new(),
        fragments: BTreeMap::new(),
        now_ns: 1_000_000_000_000,
    }
}

fn probe(src: Ipv4Addr, dst: Ipv4Addr, proto: Proto, origin: Origin) -> Probe {
    with_origin(
        Probe { src, dst, proto, sport: 33333, dport: 80, ttl: 64, size: 0, fragment: Fragment::None, options: false },
        origin,
    )
}

fn from_pod(src: Ipv4Addr, dst: Ipv4Addr, proto: Proto) -> Prediction {
    let state = state();
    let (ifindex, _) = choose_workload(&state, src).expect("a workload");
    predict(&probe(src, dst, proto, Origin::Workload), &Entry::Workload { ifindex }, &state)
}

#[test]
fn pod_to_remote_pod_is_vxlan_to_the_owning_node() {
    let p = from_pod(POD_A, REMOTE, Proto::Tcp);
    assert_eq!((p.program, p.action, p.stat), (PROG_FROM_WORKLOAD, Action::Redirect, Stat::EncapVxlan));
    let out = p.output.expect("output");
    let tunnel = out.tunnel.clone().expect("tunnel");
    assert_eq!(
        (tunnel.kind, tunnel.src, tunnel.dst, tunnel.vni, tunnel.dport),
        (Tunnel::Vxlan, NODE_1, NODE_2, Some(4096), Some(4789))
    );
    assert_eq!(tunnel.inner_dst_mac.as_deref(), Some("66:d0:00:00:00:02"));
    assert_eq!((out.src, out.dst, out.ttl, out.sport, out.dport), (POD_A, REMOTE, 63, Some(33333), Some(80)));
    let shown = out.to_string();
    assert!(shown.starts_with("VXLAN 10.100.0.11 -> 10.100.0.12 udp/4789 vni 4096"), "{shown}");
}

#[test]
fn pod_to_local_pod_is_delivered() {
    let p = from_pod(POD_A, POD_B, Proto::Udp);
    assert_eq!((p.action, p.stat), (Action::Redirect, Stat::DeliveredLocal));
    assert!(p.target.expect("target").contains("ifindex 6"));
}

#[test]
fn spoofed_source_and_unknown_interface_are_dropped() {
    let state = state();
    let spoofed = probe(Ipv4Addr::new(10, 244, 1, 99), REMOTE, Proto::Tcp, Origin::Workload);
    assert_eq!(choose_workload(&state, spoofed.src), Some((5, true)));
    let p = predict(&spoofed, &Entry::Workload { ifindex: 5 }, &state);
    assert_eq!((p.action, p.stat, p.output), (Action::Drop, Stat::DropSpoofedSource, None));
    let p = predict(&probe(POD_A, REMOTE, Proto::Tcp, Origin::Workload), &Entry::Workload { ifindex: 77 }, &state);
    assert_eq!(p.stat, Stat::DropUnknownWorkload);
}

#[test]
fn blackhole_ttl_and_mtu() {
    let p = from_pod(POD_A, Ipv4Addr::new(10, 244, 1, 50), Proto::Tcp);
    assert_eq!((p.action, p.stat), (Action::Drop, Stat::DropBlackhole));
    let state = state();
    let mut short = probe(POD_A, REMOTE, Proto::Tcp, Origin::Workload);
    short.ttl = 1;
    assert_eq!(predict(&short, &Entry::Workload { ifindex: 5 }, &state).stat, Stat::DropTtlExceeded);
    let mut big = probe(POD_A, REMOTE, Proto::Tcp, Origin::Workload);
    big.size = 1500;
    let p = predict(&big, &Entry::Workload { ifindex: 5 }, &state);
    assert_eq!((p.action, p.stat), (Action::Redirect, Stat::IcmpFragNeeded));
    assert_eq!(p.output.expect("icmp").src, Ipv4Addr::new(169, 254, 1, 1));
    big.size = 1450;
    assert_eq!(predict(&big, &Entry::Workload { ifindex: 5 }, &state).stat, Stat::EncapVxlan);
}

#[test]
fn external_destination_from_a_nat_outgoing_pool_is_snat_to_the_node() {
    let p = from_pod(POD_A, EXTERNAL, Proto::Tcp);
    assert_eq!((p.action, p.stat), (Action::Redirect, Stat::SnatNew));
    let out = p.output.expect("output");
    assert_eq!((out.src, out.sport, out.dst, out.tunnel), (NODE_1, Some(33333), EXTERNAL, None));
    // The workload entry's flag is shown where the trace reads the entry.
    assert!(p.steps.iter().any(|s| s.starts_with(WORKLOADS_MAP) && s.contains(" natOutgoing:")), "{:?}", p.steps);
    // To the node itself: no translation.
    let p = from_pod(POD_A, NODE_1, Proto::Tcp);
    assert_eq!((p.action, p.stat), (Action::Pass, Stat::PassToStack));
}

fn tracked(pod_port: u16, nat_port: u16, last_seen_ns: u64) -> NatFlow {
    NatFlow {
        created_ns: last_seen_ns,
        last_seen_ns,
        pod_addr: POD_A.octets(),
        peer_addr: EXTERNAL.octets(),
        nat_addr: NODE_1.octets(),
        pod_port,
        peer_port: 80,
        nat_port,
        protocol: IPPROTO_TCP,
        state: dataplane_common::flow_state::ESTABLISHED,
        _pad: [0; 4],
    }
}

#[test]
fn a_tracked_flow_is_established_and_a_taken_port_is_not_predicted() {
    let mut state = state();
    let flow = tracked(33333, 20001, state.now_ns);
    state.conntrack.insert(flow.outbound_key(), flow);
    state.conntrack.insert(flow.inbound_key(), flow);
    let p = predict(&probe(POD_A, EXTERNAL, Proto::Tcp, Origin::Workload), &Entry::Workload { ifindex: 5 }, &state);
    assert_eq!(p.stat, Stat::SnatEstablished);
    assert_eq!(p.output.expect("output").sport, Some(20001));

    // Another pod's live flow holds port 33333 towards the same peer: a port from the range.
    let mut state = self::state();
    let other = NatFlow { pod_addr: POD_B.octets(), pod_port: 44444, nat_port: 33333, ..tracked(0, 0, state.now_ns) };
    state.conntrack.insert(other.outbound_key(), other);
    state.conntrack.insert(other.inbound_key(), other);
    let p = predict(&probe(POD_A, EXTERNAL, Proto::Tcp, Origin::Workload), &Entry::Workload { ifindex: 5 }, &state);
    assert_eq!((p.stat, p.output.expect("output").sport), (Stat::SnatNew, None));
}

#[test]
fn a_reply_to_a_flow_opened_from_outside_is_not_translated() {
    let mut state = state();
    // The external host opened a flow to the pod's port 33333 from its port 80.
    let key = FlowKey {
        src: POD_A.octets(),
        dst: EXTERNAL.octets(),
        src_port: 33333,
        dst_port: 80,
        protocol: IPPROTO_TCP,
        direction: FLOW_TO_POD,
        _pad: [0; 2],
    };
    let flow = NatFlow { nat_addr: POD_A.octets(), ..tracked(33333, 33333, state.now_ns) };
    state.conntrack.insert(key, flow);
    let p = predict(&probe(POD_A, EXTERNAL, Proto::Tcp, Origin::Workload), &Entry::Workload { ifindex: 5 }, &state);
    assert_eq!((p.action, p.stat), (Action::Pass, Stat::PassToStack));
    assert_eq!(p.output.expect("output").src, POD_A);
    // Once it has expired, the pod's packet opens a translated flow again.
    state.now_ns += 4000 * 1_000_000_000;
    let p = predict(&probe(POD_A, EXTERNAL, Proto::Tcp, Origin::Workload), &Entry::Workload { ifindex: 5 }, &state);
    assert_eq!(p.stat, Stat::SnatNew);
}

#[test]
fn flows_expire_under_the_nodes_timeouts() {
    let mut state = state();
    let flow = tracked(33333, 20001, state.now_ns - 20 * 1_000_000_000);
    state.conntrack.insert(flow.outbound_key(), flow);
    state.conntrack.insert(flow.inbound_key(), flow);
    let outbound = probe(POD_A, EXTERNAL, Proto::Tcp, Origin::Workload);
    // Idle 20 s: alive under the default established timeout (3600 s)...
    assert_eq!(predict(&outbound, &Entry::Workload { ifindex: 5 }, &state).stat, Stat::SnatEstablished);
    // ...expired when the agent runs with tcp-established=10.
    if let Some(node) = &mut state.node {
        node.timeouts.tcp_established_s = 10;
    }
    assert_eq!(predict(&outbound, &Entry::Workload { ifindex: 5 }, &state).stat, Stat::SnatNew);
}

#[test]
fn replies_from_the_uplink_are_reverse_translated() {
    let mut state = state();
    let flow = tracked(33333, 20001, state.now_ns);
    state.conntrack.insert(flow.outbound_key(), flow);
    state.conntrack.insert(flow.inbound_key(), flow);
    let reply = with_origin(
        Probe {
            src: EXTERNAL,
            dst: NODE_1,
            proto: Proto::Tcp,
            sport: 80,
            dport: 20001,
            ttl: 64,
            size: 0,
            fragment: Fragment::None,
            options: false,
        },
        Origin::Uplink,
    );
    let entry = Entry::Uplink { tunnel: None, outer_src: None };
    let p = predict(&reply, &entry, &state);
    assert_eq!((p.program, p.action, p.stat), (PROG_FROM_UPLINK, Action::Redirect, Stat::ReverseNat));
    let out = p.output.expect("output");
    assert_eq!((out.dst, out.dport), (POD_A, Some(33333)));
    // Expired: to the stack.
    state.now_ns += 4000 * 1_000_000_000;
    assert_eq!(predict(&reply, &entry, &state).stat, Stat::PassToStack);
}

#[test]
fn tunnel_packets_from_peers_are_decapsulated_and_strangers_dropped() {
    let state = state();
    let inbound = probe(REMOTE, POD_A, Proto::Tcp, Origin::Uplink);
    let (tunnel, from) = infer_tunnel(&state.routes, REMOTE);
    assert_eq!((tunnel, from), (Some(Tunnel::Vxlan), Some(NODE_2)));
    let p = predict(&inbound, &Entry::Uplink { tunnel, outer_src: from }, &state);
    assert_eq!((p.action, p.stat), (Action::Redirect, Stat::DecapVxlan));
    assert_eq!(p.output.expect("output").tunnel, None);
    let stranger = Entry::Uplink { tunnel, outer_src: Some(Ipv4Addr::new(10, 100, 0, 99)) };
    assert_eq!(predict(&inbound, &stranger, &state).stat, Stat::DropUnknownPeer);
    // A node of the cluster may send either tunnel (a pool's mode may be changing).
    let ipip = Entry::Uplink { tunnel: Some(Tunnel::Ipip), outer_src: from };
    assert_eq!(predict(&inbound, &ipip, &state).stat, Stat::DecapIpip);
    // To a free address of this node's block: blackhole after the peer check.
    let hole = probe(REMOTE, Ipv4Addr::new(10, 244, 1, 50), Proto::Tcp, Origin::Uplink);
    assert_eq!(predict(&hole, &Entry::Uplink { tunnel, outer_src: from }, &state).stat, Stat::DropBlackhole);
    // Plain traffic not for this node is the kernel's.
    let transit = probe(EXTERNAL, Ipv4Addr::new(10, 100, 0, 50), Proto::Udp, Origin::Uplink);
    assert_eq!(predict(&transit, &Entry::Uplink { tunnel: None, outer_src: None }, &state).stat, Stat::PassToStack);
}

#[test]
fn host_traffic_to_remote_pods_is_encapsulated_on_egress() {
    let state = state();
    let p = predict(&probe(NODE_1, REMOTE, Proto::Icmp, Origin::Host), &Entry::Host, &state);
    assert_eq!((p.program, p.action, p.stat), (PROG_TO_UPLINK, Action::Pass, Stat::EncapVxlan));
    let p = predict(&probe(NODE_1, EXTERNAL, Proto::Icmp, Origin::Host), &Entry::Host, &state);
    assert_eq!(p.stat, Stat::EgressUnchanged);
}

#[test]
fn without_a_node_config_pods_traffic_is_dropped() {
    let mut state = state();
    state.node = None;
    let p = predict(&probe(POD_A, REMOTE, Proto::Tcp, Origin::Workload), &Entry::Workload { ifindex: 5 }, &state);
    assert_eq!(p.stat, Stat::DropNoNodeConfig);
}

#[test]
fn icmp_probes_carry_their_identifier_where_conntrack_reads_it() {
    let request = probe(POD_A, EXTERNAL, Proto::Icmp, Origin::Workload);
    assert_eq!((request.sport, request.dport, request.icmp_type()), (33333, 0, ICMP_ECHO_REQUEST));
    let reply = probe(EXTERNAL, NODE_1, Proto::Icmp, Origin::Uplink);
    assert_eq!((reply.sport, reply.dport, reply.icmp_type()), (0, 80, ICMP_ECHO_REPLY));
    let key = request.flow_key(FLOW_OUTBOUND);
    assert_eq!((key.src_port, key.dst_port), (33333, 0));
}

#[test]
fn packets_round_trip_through_the_parser() {
    let state = state();
    // A VXLAN packet from node-2, as it would arrive.
    let inbound = probe(REMOTE, POD_A, Proto::Udp, Origin::Uplink);
    let entry = Entry::Uplink { tunnel: Some(Tunnel::Vxlan), outer_src: Some(NODE_2) };
    let frame = build_packet(&inbound, &entry, &state);
    let headers = parse_headers(&frame, 4789).expect("parses");
    let tunnel = headers.tunnel.clone().expect("tunnel");
    assert_eq!((tunnel.src, tunnel.dst, tunnel.vni), (NODE_2, NODE_1, Some(4096)));
    assert_eq!(tunnel.inner_src_mac.as_deref(), Some("66:d0:00:00:00:02"));
    assert_eq!(tunnel.inner_dst_mac.as_deref(), Some("66:d0:00:00:00:01"));
    assert_eq!(
        (headers.src, headers.dst, headers.sport, headers.dport, headers.ttl),
        (REMOTE, POD_A, Some(33333), Some(80), 64)
    );

    // A pod's packet, with valid checksums.
    let outbound = probe(POD_A, EXTERNAL, Proto::Tcp, Origin::Workload);
    let frame = build_packet(&outbound, &Entry::Workload { ifindex: 5 }, &state);
    assert_eq!(&frame[0..6], &GATEWAY_MAC);
    assert_eq!(&frame[6..12], &[0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02]);
    assert_eq!(checksum(&frame[ETH_HLEN..ETH_HLEN + IPV4_HLEN]), 0, "IPv4 header checksum");
    let ip = &frame[ETH_HLEN..];
    let mut pseudo = ip[12..20].to_vec();
    pseudo.extend_from_slice(&[0, IPPROTO_TCP, 0, (ip.len() - IPV4_HLEN) as u8]);
    pseudo.extend_from_slice(&ip[IPV4_HLEN..]);
    assert_eq!(checksum(&pseudo), 0, "TCP checksum");
    assert_eq!(parse_headers(&frame, 4789).expect("parses"), outbound.headers(None));

    // IPIP.
    let entry = Entry::Uplink { tunnel: Some(Tunnel::Ipip), outer_src: Some(NODE_2) };
    let headers = parse_headers(&build_packet(&inbound, &entry, &state), 4789).expect("parses");
    assert_eq!(headers.tunnel.map(|t| (t.kind, t.src)), Some((Tunnel::Ipip, NODE_2)));
}

#[test]
fn comparison_reports_each_difference() {
    let p = from_pod(POD_A, REMOTE, Proto::Tcp);
    let expected = p.output.clone().expect("output");
    let moved = BTreeMap::from([("encap_vxlan", 1)]);
    assert_eq!(compare(&p, TC_ACT_REDIRECT, &moved, Some(&expected)), Vec::<String>::new());
    let mut wrong = expected.clone();
    if let Some(t) = &mut wrong.tunnel {
        t.dst = Ipv4Addr::new(10, 100, 0, 13);
    }
    wrong.ttl = 64;
    let drops = BTreeMap::from([("drop_blackhole", 1)]);
    let found = compare(&p, TC_ACT_SHOT, &drops, Some(&wrong));
    assert_eq!(found.len(), 4, "{found:?}");
    assert!(found[0].contains("verdict") && found[1].contains("drop_blackhole"));
}

#[test]
fn the_context_puts_the_ifindex_where_the_kernel_reads_it() {
    let ctx = skb_context(0x0102_0304);
    assert_eq!(u32::from_ne_bytes([ctx[40], ctx[41], ctx[42], ctx[43]]), 0x0102_0304);
    assert!(ctx[..40].iter().chain(&ctx[44..]).all(|b| *b == 0));
}

#[test]
fn arp_for_the_gateway_is_answered_and_other_arp_passed() {
    let gateway = Ipv4Addr::from(GATEWAY_ADDR);
    let p = from_pod(POD_A, gateway, Proto::Arp);
    assert_eq!((p.action, p.stat, p.output), (Action::Redirect, Stat::ArpReplied, None));
    assert!(p.target.expect("target").contains("ee:ee:ee:ee:ee:ee"));
    let p = from_pod(POD_A, POD_B, Proto::Arp);
    assert_eq!((p.action, p.stat), (Action::Pass, Stat::ArpPassed));
    let state = state();
    let frame =
        build_packet(&probe(POD_A, gateway, Proto::Arp, Origin::Workload), &Entry::Workload { ifindex: 5 }, &state);
    assert_eq!(frame.len(), ETH_HLEN + dataplane_common::net::ARP_ETH_IPV4_LEN);
    assert_eq!(&frame[12..14], &ETH_P_ARP.to_be_bytes());
    assert_eq!(&frame[ETH_HLEN + 24..], &GATEWAY_ADDR);
}

#[test]
fn ip_options_are_left_to_the_kernel_after_anti_spoofing() {
    let state = state();
    let with_options = Probe { options: true, ..probe(POD_A, REMOTE, Proto::Tcp, Origin::Workload) };
    let p = predict(&with_options, &Entry::Workload { ifindex: 5 }, &state);
    assert_eq!((p.action, p.stat), (Action::Pass, Stat::PassToStack));
    let spoofed = Probe { options: true, ..probe(EXTERNAL, REMOTE, Proto::Tcp, Origin::Workload) };
    assert_eq!(predict(&spoofed, &Entry::Workload { ifindex: 5 }, &state).stat, Stat::DropSpoofedSource);
    // Decapsulated, but the kernel delivers a packet with options.
    let inbound = Probe { options: true, ..probe(REMOTE, POD_A, Proto::Tcp, Origin::Uplink) };
    let entry = Entry::Uplink { tunnel: Some(Tunnel::Vxlan), outer_src: Some(NODE_2) };
    let p = predict(&inbound, &entry, &state);
    assert_eq!((p.action, p.stat), (Action::Pass, Stat::DecapVxlan));
    let frame = build_packet(&inbound, &entry, &state);
    let headers = parse_headers(&frame, 4789).expect("parses with IHL 6");
    assert_eq!((headers.src, headers.sport), (REMOTE, Some(33333)));
}

#[test]
fn fragments_tunnel_first_passed_or_dropped_later_passed_nat_later_dropped() {
    let state = state();
    let entry = Entry::Uplink { tunnel: Some(Tunnel::Vxlan), outer_src: Some(NODE_2) };
    let first = Probe { fragment: Fragment::First, ..probe(REMOTE, POD_A, Proto::Tcp, Origin::Uplink) };
    let p = predict(&first, &entry, &state);
    assert_eq!((p.action, p.stat), (Action::Pass, Stat::PassTunnelFragment));
    let stranger = Entry::Uplink { tunnel: Some(Tunnel::Vxlan), outer_src: Some(Ipv4Addr::new(10, 100, 0, 99)) };
    assert_eq!(predict(&first, &stranger, &state).stat, Stat::DropUnknownPeer, "the peer check comes first");
    let frame = build_packet(&first, &entry, &state);
    assert_eq!(u16::from_be_bytes([frame[ETH_HLEN + 6], frame[ETH_HLEN + 7]]), IPV4_MF, "the outer header");
    let later = Probe { fragment: Fragment::Later, ..first };
    assert_eq!(predict(&later, &entry, &state).stat, Stat::PassUntrackedFragment);
    let ipip = Entry::Uplink { tunnel: Some(Tunnel::Ipip), outer_src: Some(NODE_2) };
    assert_eq!(predict(&first, &ipip, &state).stat, Stat::DropTunnelFragment);

    let out = Probe { fragment: Fragment::Later, ..probe(POD_A, EXTERNAL, Proto::Udp, Origin::Workload) };
    let p = predict(&out, &Entry::Workload { ifindex: 5 }, &state);
    assert_eq!((p.action, p.stat), (Action::Drop, Stat::DropNatFragment));
    let out = Probe { fragment: Fragment::First, ..out };
    assert_eq!(predict(&out, &Entry::Workload { ifindex: 5 }, &state).stat, Stat::SnatNew);
    // A big fragment has no DF: no "fragmentation needed", it is encapsulated.
    let big = Probe { fragment: Fragment::First, size: 1480, ..probe(POD_A, REMOTE, Proto::Tcp, Origin::Workload) };
    assert_eq!(predict(&big, &Entry::Workload { ifindex: 5 }, &state).stat, Stat::EncapVxlan);
}

#[test]
fn later_fragments_of_translated_datagrams_take_their_first_fragments_address() {
    let mut state = state();
    let node = state.node.expect("node").addr;
    let key = |src: Ipv4Addr, dst: Ipv4Addr, direction| FragmentKey {
        src: src.octets(),
        dst: dst.octets(),
        id: PROBE_IP_ID,
        protocol: IPPROTO_UDP,
        direction,
    };
    let first_ns = state.now_ns - 1_000_000_000;
    let out = Probe { fragment: Fragment::Later, ..probe(POD_A, EXTERNAL, Proto::Udp, Origin::Workload) };
    state.fragments.insert(key(POD_A, EXTERNAL, FLOW_OUTBOUND), FragmentNat { addr: node, _pad: 0, first_ns });
    let p = predict(&out, &Entry::Workload { ifindex: 5 }, &state);
    assert_eq!((p.action, p.stat), (Action::Redirect, Stat::SnatFragment));
    assert_eq!(p.output.expect("output").src, Ipv4Addr::from(node));

    let node_addr = Ipv4Addr::from(node);
    let back = Probe { fragment: Fragment::Later, ..probe(EXTERNAL, node_addr, Proto::Udp, Origin::Uplink) };
    let plain = Entry::Uplink { tunnel: None, outer_src: None };
    assert_eq!(predict(&back, &plain, &state).stat, Stat::PassUntrackedFragment, "no entry yet");
    state
        .fragments
        .insert(key(EXTERNAL, node_addr, FLOW_INBOUND), FragmentNat { addr: POD_A.octets(), _pad: 0, first_ns });
    let p = predict(&back, &plain, &state);
    assert_eq!((p.action, p.stat, p.output.expect("output").dst), (Action::Redirect, Stat::ReverseNatFragment, POD_A));

    // Past the kernel's reassembly timeout the entry counts for nothing.
    state.now_ns += FRAGMENT_TIMEOUT_NS + 2_000_000_000;
    assert_eq!(predict(&back, &plain, &state).stat, Stat::PassUntrackedFragment);
    assert_eq!(predict(&out, &Entry::Workload { ifindex: 5 }, &state).stat, Stat::DropNatFragment);
}

#[test]
fn packets_into_a_pod_from_outside_the_pools_are_remembered() {
    let state = state();
    let entry = Entry::IntoPod { ifindex: 5 };
    let p = predict(&probe(NODE_2, POD_A, Proto::Tcp, Origin::IntoPod), &entry, &state);
    assert_eq!((p.program, p.action, p.stat), (PROG_TO_WORKLOAD, Action::Pass, Stat::EgressUnchanged));
    let key = p.remembers.expect("remembered");
    assert_eq!(
        (Ipv4Addr::from(key.src), key.src_port, Ipv4Addr::from(key.dst), key.dst_port, key.direction),
        (POD_A, 80, NODE_2, 33333, FLOW_TO_POD)
    );
    let p = predict(&probe(REMOTE, POD_A, Proto::Tcp, Origin::IntoPod), &entry, &state);
    assert_eq!((p.stat, p.remembers), (Stat::EgressUnchanged, None), "a pod of a pool is not remembered");
}
