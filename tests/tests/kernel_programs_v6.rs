//! Per-packet behaviour of `from_workload` for IPv6, with BPF_PROG_TEST_RUN on crafted packets:
//! the gateway's neighbour advertisement, anti-spoofing, local delivery, the local block's
//! blackhole, what is left to the kernel and why, and malformed headers, extension headers and
//! fragments. Each test loads its own copy of the programs with the IPv6 maps written from
//! `program::fixture6` (the plan does not produce IPv6 entries yet). Needs root.

#![allow(clippy::unwrap_used, reason = "fixtures of a test: a failed unwrap is a failed test")]

use dataplane_common::{
    net::{
        ETH_HLEN, ETH_P_IPV6, GATEWAY_ADDR_V6, GATEWAY_MAC, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS,
        IPPROTO_ICMPV6, IPPROTO_ROUTING, IPPROTO_TCP, IPPROTO_UDP, IPV6_HLEN, ND_HOP_LIMIT, ND_NA_FLAG_OVERRIDE,
        ND_NA_FLAG_ROUTER, ND_NA_FLAG_SOLICITED, ND_NEIGHBOR_ADVERT, ND_OPT_TARGET_LL_ADDR, ND_ROUTER_SOLICIT,
    },
    route_kind, Route6, Stat, PROG_FROM_WORKLOAD,
};
use dataplane_tests::{
    packet::{be16, l4_checksum_v6_ok, Ipv6Header, Packet},
    program::{fixture6::*, skip_unless_root, Node, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
};

/// Offset of the IPv6 hop limit in a frame.
const HOP_LIMIT: usize = ETH_HLEN + 7;
/// Offset of what follows the fixed IPv6 header.
const PAYLOAD: usize = ETH_HLEN + IPV6_HLEN;

/// A UDP packet from pod A to `dst`, as it leaves the pod.
fn from_pod_a(dst: [u8; 16]) -> Vec<u8> {
    Packet::eth(POD_A_MAC, GATEWAY_MAC)
        .ipv6(POD_A, dst, IPPROTO_UDP)
        .udp(40000, 5201)
        .payload(b"hello through the IPv6 fast path")
        .finish()
}

/// A neighbour solicitation from pod A's link-local address for `target`.
fn solicitation(src: [u8; 16], dst: [u8; 16], target: [u8; 16], source_mac: Option<[u8; 6]>) -> Vec<u8> {
    Packet::eth(POD_A_MAC, [0x33, 0x33, 0xff, 0xee, 0xee, 0xee])
        .ipv6_header(Ipv6Header { src, dst, next_header: IPPROTO_ICMPV6, hop_limit: ND_HOP_LIMIT })
        .neighbour_solicitation(target, source_mac)
        .finish()
}

/// Runs `packet` through `from_workload` and checks that the kernel gets it unchanged, counted
/// as `stat`.
fn assert_passed(node: &Node, packet: &[u8], stat: Stat, what: &str) {
    let before = node.stat(stat);
    let (verdict, out) = node.run(PROG_FROM_WORKLOAD, packet);
    assert_eq!(verdict, TC_ACT_OK, "{what}: handed to the kernel");
    assert_eq!(out, packet, "{what}: not rewritten");
    assert_eq!(node.stat(stat), before + 1, "{what}: counted as {}", stat.name());
}

/// Runs `packet` through `from_workload` and checks that it is dropped, counted as `reason`.
fn assert_dropped(node: &Node, packet: &[u8], reason: Stat, what: &str) {
    let before = node.stat(reason);
    let (verdict, _) = node.run(PROG_FROM_WORKLOAD, packet);
    assert_eq!(verdict, TC_ACT_SHOT, "{what}: dropped");
    assert_eq!(node.stat(reason), before + 1, "{what}: counted as {}", reason.name());
}

/// Runs `packet` (from pod A to pod B) through `from_workload` and checks the delivery into pod
/// B: the gateway's Ethernet header, the hop limit one less, every other byte as sent.
fn assert_delivered_to_pod_b(node: &Node, packet: &[u8], what: &str) {
    let before = node.stat(Stat::DeliveredLocal);
    let (verdict, out) = node.run(PROG_FROM_WORKLOAD, packet);
    assert_eq!(verdict, TC_ACT_REDIRECT, "{what}: redirected into the pod");
    assert_eq!(node.stat(Stat::DeliveredLocal), before + 1, "{what}: counted as delivered_local");
    assert_eq!(out.len(), packet.len(), "{what}: same length");
    assert_eq!(&out[0..6], &POD_B_MAC, "{what}: Ethernet destination: pod B");
    assert_eq!(&out[6..12], &GATEWAY_MAC, "{what}: Ethernet source: the gateway");
    assert_eq!(be16(&out, 12), ETH_P_IPV6, "{what}: still IPv6");
    assert_eq!(out[HOP_LIMIT], packet[HOP_LIMIT] - 1, "{what}: hop limit decremented once, as a router does");
    assert_eq!(&out[ETH_HLEN..HOP_LIMIT], &packet[ETH_HLEN..HOP_LIMIT], "{what}: IPv6 header before the hop limit");
    assert_eq!(&out[HOP_LIMIT + 1..], &packet[HOP_LIMIT + 1..], "{what}: addresses, extension headers, payload");
}

#[test]
fn a_solicitation_for_the_gateway_is_answered_with_an_advertisement_from_the_gateway_mac() {
    if skip_unless_root() {
        return;
    }
    let node = Node::dual_stack();
    // Address resolution (to the solicited-node group, with the pod's MAC) and an unreachability
    // probe (unicast to the gateway, no option): the answer has the same shape.
    let requests = [
        solicitation(POD_A_LINK_LOCAL, GATEWAY_SOLICITED_NODE, GATEWAY_ADDR_V6, Some(POD_A_MAC)),
        solicitation(POD_A_LINK_LOCAL, GATEWAY_ADDR_V6, GATEWAY_ADDR_V6, None),
    ];
    for (i, request) in requests.iter().enumerate() {
        let (verdict, reply) = node.run(PROG_FROM_WORKLOAD, request);
        assert_eq!(verdict, TC_ACT_REDIRECT, "request {i}: the answer goes back out of the pod's interface");
        assert_eq!(node.stat(Stat::NdpReplied), i as u64 + 1);
        assert_eq!(reply.len(), ETH_HLEN + IPV6_HLEN + 32, "request {i}: advertisement with one option");
        assert_eq!(&reply[0..6], &POD_A_MAC, "Ethernet destination: the asking pod");
        assert_eq!(&reply[6..12], &GATEWAY_MAC, "Ethernet source: the gateway");
        assert_eq!(be16(&reply, 12), ETH_P_IPV6);
        let ip = &reply[ETH_HLEN..PAYLOAD];
        assert_eq!(ip[0] >> 4, 6);
        assert_eq!(be16(ip, 4), 32, "payload length");
        assert_eq!(ip[6], IPPROTO_ICMPV6);
        assert_eq!(ip[7], ND_HOP_LIMIT, "hop limit 255, or the pod discards it");
        assert_eq!(&ip[8..24], &GATEWAY_ADDR_V6, "source: the gateway");
        assert_eq!(&ip[24..40], &POD_A_LINK_LOCAL, "destination: the asking address");
        let icmp = &reply[PAYLOAD..];
        assert_eq!(icmp[0], ND_NEIGHBOR_ADVERT);
        assert_eq!(icmp[1], 0, "code");
        assert_eq!(icmp[4] & ND_NA_FLAG_ROUTER, ND_NA_FLAG_ROUTER, "router flag");
        assert_eq!(icmp[4] & ND_NA_FLAG_SOLICITED, ND_NA_FLAG_SOLICITED, "solicited flag");
        assert_eq!(icmp[4] & ND_NA_FLAG_OVERRIDE, ND_NA_FLAG_OVERRIDE, "override flag");
        assert_eq!(&icmp[5..8], &[0; 3], "reserved");
        assert_eq!(&icmp[8..24], &GATEWAY_ADDR_V6, "target: the gateway");
        assert_eq!(&icmp[24..26], &[ND_OPT_TARGET_LL_ADDR, 1], "target link-layer address option, one unit");
        assert_eq!(&icmp[26..32], &GATEWAY_MAC, "the gateway's MAC");
        assert!(l4_checksum_v6_ok(&reply, ETH_HLEN), "request {i}: ICMPv6 checksum over the pseudo-header");
    }
}

#[test]
fn neighbour_discovery_that_is_not_a_solicitation_for_the_gateway_is_left_to_the_kernel() {
    if skip_unless_root() {
        return;
    }
    let node = Node::dual_stack();
    let other_target = solicitation(POD_A_LINK_LOCAL, GATEWAY_SOLICITED_NODE, POD_B, Some(POD_A_MAC));
    assert_passed(&node, &other_target, Stat::NdpPassed, "a solicitation for another address");
    let dad = solicitation([0; 16], GATEWAY_SOLICITED_NODE, GATEWAY_ADDR_V6, None);
    assert_passed(&node, &dad, Stat::NdpPassed, "duplicate address detection (unspecified source)");
    let off_link = Packet::eth(POD_A_MAC, GATEWAY_MAC)
        .ipv6_header(Ipv6Header {
            src: POD_A_LINK_LOCAL,
            dst: GATEWAY_ADDR_V6,
            next_header: IPPROTO_ICMPV6,
            hop_limit: 64,
        })
        .neighbour_solicitation(GATEWAY_ADDR_V6, Some(POD_A_MAC))
        .finish();
    assert_passed(&node, &off_link, Stat::NdpPassed, "a solicitation whose hop limit is not 255");
    let router_solicitation = Packet::eth(POD_A_MAC, [0x33, 0x33, 0, 0, 0, 2])
        .ipv6_header(Ipv6Header {
            src: POD_A_LINK_LOCAL,
            dst: addr([0xff02, 0, 0, 0, 0, 0, 0, 2]),
            next_header: IPPROTO_ICMPV6,
            hop_limit: ND_HOP_LIMIT,
        })
        .payload(&[ND_ROUTER_SOLICIT, 0, 0, 0, 0, 0, 0, 0])
        .finish();
    assert_passed(&node, &router_solicitation, Stat::NdpPassed, "a router solicitation");
    assert_eq!(node.stat(Stat::NdpReplied), 0);
}

#[test]
fn a_source_that_is_not_the_pods_own_is_dropped() {
    if skip_unless_root() {
        return;
    }
    let node = Node::dual_stack();
    for (src, what) in [(POD_B, "another pod's address"), (EXTERNAL, "an address outside the pools")] {
        let spoofed = Packet::eth(POD_A_MAC, GATEWAY_MAC).ipv6(src, POD_B, IPPROTO_UDP).udp(1, 2).finish();
        assert_dropped(&node, &spoofed, Stat::DropSpoofedSource, what);
    }
    assert_eq!(node.stat(Stat::DeliveredLocal), 0);
}

#[test]
fn a_pod_on_this_node_gets_the_packet_by_redirect_with_the_hop_limit_decremented() {
    if skip_unless_root() {
        return;
    }
    let node = Node::dual_stack();
    let packet = from_pod_a(POD_B);
    assert_delivered_to_pod_b(&node, &packet, "UDP");
    let (_, out) = node.run(PROG_FROM_WORKLOAD, &packet);
    assert!(l4_checksum_v6_ok(&out, ETH_HLEN), "the hop limit is outside the pseudo-header: UDP checksum intact");
    let tcp = Packet::eth(POD_A_MAC, GATEWAY_MAC).ipv6(POD_A, POD_B, IPPROTO_TCP).tcp(40000, 80, 0x02).finish();
    assert_delivered_to_pod_b(&node, &tcp, "TCP SYN");

    let mut last_hop = packet.clone();
    last_hop[HOP_LIMIT] = 1;
    assert_dropped(&node, &last_hop, Stat::DropTtlExceeded, "hop limit 1");
}

#[test]
fn an_address_of_the_local_block_without_a_pod_is_dropped_as_the_blackhole_route_would() {
    if skip_unless_root() {
        return;
    }
    let node = Node::dual_stack();
    assert_dropped(&node, &from_pod_a(POD_NONE), Stat::DropBlackhole, "a free address of node-1's block");
}

#[test]
fn destinations_outside_the_pools_and_link_scope_traffic_are_the_kernels() {
    if skip_unless_root() {
        return;
    }
    let node = Node::dual_stack();
    assert_passed(&node, &from_pod_a(EXTERNAL), Stat::PassToStack, "outside every pool");
    assert_passed(&node, &from_pod_a(NODE), Stat::PassToStack, "the node's own address");
    assert_passed(&node, &from_pod_a(ALL_NODES), Stat::PassIpv6LinkScope, "a multicast destination");
    assert_passed(&node, &from_pod_a(GATEWAY_ADDR_V6), Stat::PassIpv6LinkScope, "a link-local destination");
    let link_local_source =
        Packet::eth(POD_A_MAC, GATEWAY_MAC).ipv6(POD_A_LINK_LOCAL, POD_B, IPPROTO_UDP).udp(1, 2).finish();
    assert_passed(&node, &link_local_source, Stat::PassIpv6LinkScope, "a link-local source (never forwarded)");
}

#[test]
fn a_block_of_a_never_pool_is_routed_plainly_and_vxlan_blocks_wait_for_the_ipv6_tunnel() {
    if skip_unless_root() {
        return;
    }
    let mut node = Node::dual_stack();
    // Until VXLAN over IPv6 is in the fast path, the kernel has the block's packets.
    assert_passed(&node, &from_pod_a(REMOTE_POD), Stat::PassToStack, "a VXLAN block of node-2");

    node.set_route6(
        BLOCK_LEN,
        REMOTE_BLOCK,
        Route6 { kind: route_kind::REMOTE_BLOCK, node_addr: PEER, ..Default::default() },
    );
    let packet = from_pod_a(REMOTE_POD);
    let (verdict, out) = node.run(PROG_FROM_WORKLOAD, &packet);
    assert_eq!(verdict, TC_ACT_REDIRECT, "to node-2 through the uplink's neighbour");
    assert_eq!(node.stat(Stat::RoutedPlain), 1);
    assert_eq!(out[HOP_LIMIT], packet[HOP_LIMIT] - 1, "hop limit decremented");
    assert_eq!(&out[HOP_LIMIT + 1..], &packet[HOP_LIMIT + 1..], "not encapsulated");
}

#[test]
fn a_workload_without_an_ipv6_address_keeps_its_ipv6_going_to_the_kernel() {
    if skip_unless_root() {
        return;
    }
    // Today's agent writes no IPv6 entries: everything IPv6 from its pods, well-formed or not,
    // goes to the kernel as it did before dual-stack.
    let node = Node::new("node-1");
    let what = "IPv6 of a pod without an IPv6 address";
    assert_passed(&node, &from_pod_a(POD_B), Stat::PassIpv6NoAddress, what);
    let request = solicitation(POD_A_LINK_LOCAL, GATEWAY_SOLICITED_NODE, GATEWAY_ADDR_V6, Some(POD_A_MAC));
    assert_passed(&node, &request, Stat::PassIpv6NoAddress, "its solicitation for the gateway");
    let packet = from_pod_a(POD_B);
    assert_passed(&node, &packet[..packet.len() - 1], Stat::PassIpv6NoAddress, "its payload cut short");
    assert_eq!(node.stat(Stat::NdpReplied) + node.stat(Stat::DropMalformed), 0);
}

#[test]
fn truncated_and_malformed_ipv6_headers_are_dropped_as_malformed() {
    if skip_unless_root() {
        return;
    }
    let node = Node::dual_stack();
    // BPF_PROG_TEST_RUN refuses frames whose fixed IPv6 header is cut (the kernel's own checks
    // before any program): the cuts tried here are in the payload. The packet fuzzer cuts
    // everywhere else.
    let packet = from_pod_a(POD_B);
    assert_dropped(&node, &packet[..packet.len() - 1], Stat::DropMalformed, "a payload one byte short of its length");
    assert_dropped(&node, &packet[..PAYLOAD + 4], Stat::DropMalformed, "a payload cut inside its UDP header");
    let mut too_long = packet.clone();
    too_long[ETH_HLEN + 4..ETH_HLEN + 6].copy_from_slice(&u16::MAX.to_be_bytes());
    assert_dropped(&node, &too_long, Stat::DropMalformed, "a payload length past the frame");
    let mut version_4 = packet.clone();
    version_4[ETH_HLEN] = 0x40;
    assert_dropped(&node, &version_4, Stat::DropMalformed, "version 4 under the IPv6 EtherType");
    // Ethernet padding after the stated payload is legal.
    let mut padded = packet.clone();
    padded.extend_from_slice(&[0; 6]);
    assert_delivered_to_pod_b(&node, &padded, "a frame longer than its payload");
    assert_eq!(node.stat(Stat::DropMalformed), 4);
    assert_eq!(node.stat(Stat::DeliveredLocal), 1, "only the padded frame");
}

#[test]
fn extension_headers_and_fragments_are_forwarded_as_a_router_forwards_them() {
    if skip_unless_root() {
        return;
    }
    let node = Node::dual_stack();
    let eth = || Packet::eth(POD_A_MAC, GATEWAY_MAC);
    let destination_options = eth().ipv6(POD_A, POD_B, IPPROTO_DSTOPTS).ipv6_options(IPPROTO_UDP).udp(1, 2).finish();
    assert_delivered_to_pod_b(&node, &destination_options, "destination options");
    let routing = eth().ipv6(POD_A, POD_B, IPPROTO_ROUTING).ipv6_routing(IPPROTO_UDP).udp(1, 2).finish();
    assert_delivered_to_pod_b(&node, &routing, "a routing header with no segments left");
    let first = eth().ipv6(POD_A, POD_B, IPPROTO_FRAGMENT).ipv6_fragment(IPPROTO_UDP, 0, true).udp(1, 2);
    assert_delivered_to_pod_b(&node, &first.payload(&[1; 64]).finish(), "a first fragment");
    let later = eth().ipv6(POD_A, POD_B, IPPROTO_FRAGMENT).ipv6_fragment(IPPROTO_UDP, 9, false);
    assert_delivered_to_pod_b(&node, &later.payload(&[2; 40]).finish(), "a later fragment");
    let chained = eth()
        .ipv6(POD_A, POD_B, IPPROTO_DSTOPTS)
        .ipv6_options(IPPROTO_FRAGMENT)
        .ipv6_fragment(IPPROTO_TCP, 0, true)
        .tcp(40000, 80, 0x02)
        .finish();
    assert_delivered_to_pod_b(&node, &chained, "destination options, then a fragment header");
    assert_eq!(node.stat(Stat::DeliveredLocal), 5);

    // The fragments' own rules still hold: spoofed, blackholed or leaving the pools alike.
    let spoofed = eth().ipv6(POD_B, POD_B, IPPROTO_FRAGMENT).ipv6_fragment(IPPROTO_UDP, 9, false).finish();
    assert_dropped(&node, &spoofed, Stat::DropSpoofedSource, "a spoofed later fragment");
    let blackholed = eth().ipv6(POD_A, POD_NONE, IPPROTO_FRAGMENT).ipv6_fragment(IPPROTO_UDP, 0, true).finish();
    assert_dropped(&node, &blackholed, Stat::DropBlackhole, "a fragment to a free address");
    let leaving = eth().ipv6(POD_A, EXTERNAL, IPPROTO_FRAGMENT).ipv6_fragment(IPPROTO_UDP, 0, true).finish();
    assert_passed(&node, &leaving, Stat::PassToStack, "a fragment leaving the pools");

    // Hop-by-Hop options must be read by every router: the kernel's.
    let hop_by_hop = eth().ipv6(POD_A, POD_B, IPPROTO_HOPOPTS).ipv6_options(IPPROTO_UDP).udp(1, 2).finish();
    assert_passed(&node, &hop_by_hop, Stat::PassIpv6HopByHop, "Hop-by-Hop options");
    let spoofed_hop_by_hop = eth().ipv6(EXTERNAL, POD_B, IPPROTO_HOPOPTS).ipv6_options(IPPROTO_UDP).finish();
    assert_dropped(&node, &spoofed_hop_by_hop, Stat::DropSpoofedSource, "Hop-by-Hop options from a spoofed source");
}
