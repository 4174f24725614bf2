//! Per-packet behaviour of the kernel programs, with BPF_PROG_TEST_RUN on crafted packets.
//!
//! Each test loads its own copy of the programs (`dataplane_tests::program::Node`), runs a packet
//! and checks the verdict, the output bytes field by field and the stats map. Needs root.

#![allow(clippy::unwrap_used, reason = "fixtures of a test: a failed unwrap is a failed test")]

use dataplane_common::{
    net::{
        CALICO_VXLAN_PORT, CALICO_VXLAN_VNI, ETH_HLEN, GATEWAY_ADDR, GATEWAY_MAC, IPPROTO_UDP, IPV4_MF, VXLAN_ENCAP_LEN,
    },
    workload_slot, Stat, Workload, WorkloadSlot, PROG_FROM_UPLINK, PROG_FROM_WORKLOAD, WORKLOAD_SLOTS,
};
use dataplane_tests::{
    packet::{be16, fixture::*, ipv4_checksum, set_ipv4_checksum, Packet},
    program::CLUSTER,
    program::{skip_unless_root, Node, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TESTED_IFINDEX, XDP_DROP, XDP_PASS},
};

/// A UDP packet from pod A to `dst`, as it leaves the pod.
fn from_pod_a(dst: [u8; 4]) -> Vec<u8> {
    Packet::eth(POD_A_MAC, GATEWAY_MAC)
        .ipv4(POD_A, dst, IPPROTO_UDP)
        .udp(40000, 5201)
        .payload(b"hello through the fast path")
        .finish()
}

/// A VXLAN packet from `outer_src` to this node carrying `inner`'s IPv4 packet.
fn vxlan_to_node(outer_src: [u8; 4], vni: u32, inner_src: [u8; 4], inner_dst: [u8; 4]) -> Vec<u8> {
    Packet::eth(UPLINK_MAC, UPLINK_MAC)
        .ipv4(outer_src, NODE, IPPROTO_UDP)
        .udp(50000, CALICO_VXLAN_PORT)
        .vxlan(vni, PEER_VTEP_MAC, NODE_VTEP_MAC)
        .ipv4(inner_src, inner_dst, IPPROTO_UDP)
        .udp(5201, 40000)
        .payload(b"reply")
        .finish()
}

/// An IP-in-IP packet from `outer_src` to this node carrying remote pod -> pod A.
fn ipip_to_node(outer_src: [u8; 4]) -> Vec<u8> {
    Packet::eth(UPLINK_MAC, UPLINK_MAC).ipv4(outer_src, NODE, 4).ipv4(REMOTE_POD, POD_A, IPPROTO_UDP).udp(1, 2).finish()
}

/// `packet` with More Fragments set on its outer IPv4 header: the first fragment of a datagram.
fn first_fragment(mut packet: Vec<u8>) -> Vec<u8> {
    let flags = be16(&packet, ETH_HLEN + 6) | IPV4_MF;
    packet[ETH_HLEN + 6..ETH_HLEN + 8].copy_from_slice(&flags.to_be_bytes());
    set_ipv4_checksum(&mut packet, ETH_HLEN);
    packet
}

#[test]
fn arp_for_the_gateway_is_answered_with_the_gateway_mac() {
    if skip_unless_root() {
        return;
    }
    let node = Node::new("node-1");
    let request = Packet::eth(POD_A_MAC, [0xff; 6]).arp_request(POD_A_MAC, POD_A, GATEWAY_ADDR).finish();
    let (verdict, reply) = node.run(PROG_FROM_WORKLOAD, &request);
    assert_eq!(verdict, TC_ACT_REDIRECT, "the reply goes back out of the workload's interface");
    assert_eq!(&reply[0..6], &POD_A_MAC, "Ethernet destination: the asking pod");
    assert_eq!(&reply[6..12], &GATEWAY_MAC, "Ethernet source: the gateway");
    assert_eq!(be16(&reply, 20), 2, "ARP opcode: reply");
    assert_eq!(&reply[22..28], &GATEWAY_MAC, "sender MAC");
    assert_eq!(&reply[28..32], &GATEWAY_ADDR, "sender IP");
    assert_eq!(&reply[32..38], &POD_A_MAC, "target MAC");
    assert_eq!(&reply[38..42], &POD_A, "target IP");
    assert_eq!(node.stat(Stat::ArpReplied), 1);
}

#[test]
fn arp_for_other_addresses_is_left_alone() {
    if skip_unless_root() {
        return;
    }
    let node = Node::new("node-1");
    let request = Packet::eth(POD_A_MAC, [0xff; 6]).arp_request(POD_A_MAC, POD_A, POD_B).finish();
    let (verdict, out) = node.run(PROG_FROM_WORKLOAD, &request);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, request, "not rewritten");
    assert_eq!(node.stat(Stat::ArpPassed), 1);
    assert_eq!(node.stat(Stat::ArpReplied), 0);
}

#[test]
fn remote_pod_traffic_is_encapsulated_in_vxlan_byte_for_byte() {
    if skip_unless_root() {
        return;
    }
    let node = Node::new("node-1");
    let inner = from_pod_a(REMOTE_POD);
    let (verdict, out) = node.run(PROG_FROM_WORKLOAD, &inner);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(node.stat(Stat::EncapVxlan), 1);
    assert_eq!(out.len(), inner.len() + VXLAN_ENCAP_LEN);

    let ip = &out[ETH_HLEN..ETH_HLEN + 20];
    assert_eq!(ip[0], 0x45, "outer IPv4, no options");
    assert_eq!(be16(ip, 2) as usize, out.len() - ETH_HLEN, "outer total length");
    assert_eq!(ip[8], 64, "outer TTL");
    assert_eq!(ip[9], IPPROTO_UDP);
    assert_eq!(&ip[12..16], &NODE, "outer source: this node");
    assert_eq!(&ip[16..20], &PEER, "outer destination: the block's node");
    assert_eq!(ipv4_checksum(ip), 0, "outer header checksum is valid");

    let udp = &out[34..42];
    let sport = be16(udp, 0);
    assert!((32768..61000).contains(&sport), "source port {sport} in the kernel's VXLAN range");
    assert_eq!(be16(udp, 2), CALICO_VXLAN_PORT);
    assert_eq!(be16(udp, 4) as usize, out.len() - 34, "UDP length");
    assert_eq!(be16(udp, 6), 0, "no UDP checksum, as the kernel sends VXLAN");

    let vxlan = &out[42..50];
    assert_eq!(vxlan[0], 0x08, "VNI flag");
    assert_eq!(u32::from_be_bytes([0, vxlan[4], vxlan[5], vxlan[6]]), CALICO_VXLAN_VNI);

    assert_eq!(&out[50..56], &PEER_VTEP_MAC, "inner destination MAC: the peer's VTEP");
    assert_eq!(&out[56..62], &NODE_VTEP_MAC, "inner source MAC: our VTEP");
    assert_eq!(be16(&out, 62), 0x0800);

    let inner_ip = &out[64..84];
    assert_eq!(inner_ip[8], 63, "inner TTL decremented once, as a router does");
    assert_eq!(ipv4_checksum(inner_ip), 0, "inner checksum still valid");
    assert_eq!(&out[84..], &inner[34..], "transport header and payload untouched");
}

#[test]
fn vxlan_from_a_peer_is_decapsulated_into_the_pod() {
    if skip_unless_root() {
        return;
    }
    let node = Node::new("node-1");
    let packet = vxlan_to_node(PEER, CALICO_VXLAN_VNI, REMOTE_POD, POD_A);
    let (verdict, out) = node.run(PROG_FROM_UPLINK, &packet);
    assert_eq!(verdict, TC_ACT_REDIRECT, "redirected into the pod");
    assert_eq!(node.stat(Stat::DecapVxlan), 1);
    assert_eq!(out.len(), packet.len() - VXLAN_ENCAP_LEN);
    assert_eq!(&out[0..6], &POD_A_MAC, "destination: the pod's MAC");
    assert_eq!(&out[6..12], &GATEWAY_MAC, "source: the gateway");
    assert_eq!(be16(&out, 12), 0x0800);
    let ip = &out[14..34];
    assert_eq!(&ip[12..16], &REMOTE_POD);
    assert_eq!(&ip[16..20], &POD_A);
    assert_eq!(ip[8], 63, "TTL decremented");
    assert_eq!(ipv4_checksum(ip), 0);
    assert_eq!(&out[34..], &packet[84..], "transport header and payload untouched");
}

/// Pod C on node-2 (the tested interface there) sends `payload` to pod A on node-1 through both
/// nodes' programs of `cluster`: pod A gets the packet back with only the TTL (two routers), the
/// checksum and the MACs changed, and node-1 counts `decap`.
fn assert_round_trip(cluster: &str, payload: &[u8], decap: Stat) {
    let sender = Node::with_cluster("node-2", cluster);
    let receiver = Node::with_cluster("node-1", cluster);
    let original = Packet::eth([0x0a, 0x58, 0x0a, 0xf4, 0x02, 0x02], GATEWAY_MAC)
        .ipv4(REMOTE_POD, POD_A, IPPROTO_UDP)
        .udp(40000, 5201)
        .payload(payload)
        .finish();
    let (verdict, encapsulated) = sender.run(PROG_FROM_WORKLOAD, &original);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let (verdict, delivered) = receiver.run(PROG_FROM_UPLINK, &encapsulated);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(receiver.stat(decap), 1);
    let mut expected = original.clone();
    expected[0..6].copy_from_slice(&POD_A_MAC);
    expected[6..12].copy_from_slice(&GATEWAY_MAC);
    expected[22] -= 2;
    set_ipv4_checksum(&mut expected, ETH_HLEN);
    assert_eq!(delivered, expected);
}

#[test]
fn encapsulation_then_decapsulation_gives_back_the_packet() {
    if skip_unless_root() {
        return;
    }
    assert_round_trip(CLUSTER, &[0xab; 100], Stat::DecapVxlan);
}

#[test]
fn pod_to_pod_on_the_same_node_is_redirected_to_the_peer_pod() {
    if skip_unless_root() {
        return;
    }
    let node = Node::new("node-1");
    let (verdict, out) = node.run(PROG_FROM_WORKLOAD, &from_pod_a(POD_B));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&out[0..6], &POD_B_MAC);
    assert_eq!(&out[6..12], &GATEWAY_MAC);
    assert_eq!(out[22], 63);
    assert_eq!(node.stat(Stat::DeliveredLocal), 1);
}

#[test]
fn spoofed_source_is_dropped() {
    if skip_unless_root() {
        return;
    }
    let node = Node::new("node-1");
    let spoofed = Packet::eth(POD_A_MAC, GATEWAY_MAC).ipv4(POD_B, REMOTE_POD, IPPROTO_UDP).udp(1, 2).finish();
    let (verdict, _) = node.run(PROG_FROM_WORKLOAD, &spoofed);
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(node.stat(Stat::DropSpoofedSource), 1);
    assert_eq!(node.stat(Stat::EncapVxlan), 0);
}

#[test]
fn a_slot_tagged_with_another_interface_never_vouches_for_a_source() {
    if skip_unless_root() {
        return;
    }
    let mut node = Node::new("node-1");
    // The tested interface's slot, taken by an interface whose ifindex folds onto it (or left
    // from one that is gone), holding pod B's address: pod A's interface must not inherit it.
    let colliding = TESTED_IFINDEX + WORKLOAD_SLOTS;
    let pod_b = Workload { addr: POD_B, mac: POD_B_MAC, flags: 0, _pad: 0 };
    node.set_workload_slot(workload_slot(TESTED_IFINDEX), WorkloadSlot { ifindex: colliding, workload: pod_b });
    let spoofed = Packet::eth(POD_A_MAC, GATEWAY_MAC).ipv4(POD_B, REMOTE_POD, IPPROTO_UDP).udp(1, 2).finish();
    let (verdict, _) = node.run(PROG_FROM_WORKLOAD, &spoofed);
    assert_eq!(verdict, TC_ACT_SHOT, "pod B's address from pod A's interface");
    assert_eq!(node.stat(Stat::DropSpoofedSource), 1);
    // Pod A itself is still found, through the workloads hash.
    let (verdict, _) = node.run(PROG_FROM_WORKLOAD, &from_pod_a(REMOTE_POD));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(node.stat(Stat::EncapVxlan), 1);

    // An empty slot (tag 0) does not vouch for the empty address either.
    node.set_workload_slot(workload_slot(TESTED_IFINDEX), WorkloadSlot::EMPTY);
    let unspecified = Packet::eth(POD_A_MAC, GATEWAY_MAC).ipv4([0; 4], REMOTE_POD, IPPROTO_UDP).udp(1, 2).finish();
    let (verdict, _) = node.run(PROG_FROM_WORKLOAD, &unspecified);
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(node.stat(Stat::DropSpoofedSource), 2);
}

#[test]
fn vxlan_from_an_unknown_node_is_dropped() {
    if skip_unless_root() {
        return;
    }
    let node = Node::new("node-1");
    let (verdict, _) = node.run(PROG_FROM_UPLINK, &vxlan_to_node(STRANGER, CALICO_VXLAN_VNI, REMOTE_POD, POD_A));
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(node.stat(Stat::DropUnknownPeer), 1);
    assert_eq!(node.stat(Stat::DecapVxlan), 0);
}

#[test]
fn vxlan_with_another_vni_is_dropped() {
    if skip_unless_root() {
        return;
    }
    let node = Node::new("node-1");
    let (verdict, _) = node.run(PROG_FROM_UPLINK, &vxlan_to_node(PEER, 4097, REMOTE_POD, POD_A));
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(node.stat(Stat::DropWrongVni), 1);
}

#[test]
fn an_address_of_the_local_block_without_workload_is_blackholed() {
    if skip_unless_root() {
        return;
    }
    let node = Node::new("node-1");
    let (verdict, _) = node.run(PROG_FROM_WORKLOAD, &from_pod_a(POD_NONE));
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(node.stat(Stat::DropBlackhole), 1);
}

#[test]
fn traffic_outside_the_pools_from_a_pool_without_nat_goes_to_the_kernel() {
    if skip_unless_root() {
        return;
    }
    let node = Node::with_cluster("node-1", &CLUSTER.replace("natOutgoing: true", "natOutgoing: false"));
    let packet = from_pod_a(EXTERNAL);
    let (verdict, out) = node.run(PROG_FROM_WORKLOAD, &packet);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, packet);
    assert_eq!(node.stat(Stat::PassToStack), 1);
}

#[test]
fn truncated_and_malformed_ipv4_is_dropped_and_counted() {
    if skip_unless_root() {
        return;
    }
    let node = Node::new("node-1");
    // (BPF_PROG_TEST_RUN itself refuses frames whose IPv4 header is cut, so truncation is tried
    // further in: a VXLAN packet cut inside its VXLAN header.)
    let tunnel = vxlan_to_node(PEER, CALICO_VXLAN_VNI, REMOTE_POD, POD_A);
    let (verdict, _) = node.run(PROG_FROM_UPLINK, &tunnel[..ETH_HLEN + 20 + 8 + 4]);
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(node.stat(Stat::DecapVxlan), 0);
    let whole = from_pod_a(REMOTE_POD);
    // IHL 4: shorter than the fixed header.
    let mut bad_ihl = whole.clone();
    bad_ihl[ETH_HLEN] = 0x44;
    let (verdict, _) = node.run(PROG_FROM_WORKLOAD, &bad_ihl);
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(node.stat(Stat::DropMalformed), 2);
    assert_eq!(node.stat(Stat::EncapVxlan), 0);
}

#[test]
fn a_packet_too_big_for_the_tunnel_with_df_gets_fragmentation_needed() {
    if skip_unless_root() {
        return;
    }
    let node = Node::new("node-1");
    // 1460 bytes of IPv4: fits a 1500 uplink alone, not with 50 bytes of VXLAN.
    let big = Packet::eth(POD_A_MAC, GATEWAY_MAC)
        .ipv4(POD_A, REMOTE_POD, IPPROTO_UDP)
        .udp(40000, 5201)
        .payload(&[0x5a; 1432])
        .finish();
    assert_eq!(big.len() - ETH_HLEN, 1460);
    let (verdict, reply) = node.run(PROG_FROM_WORKLOAD, &big);
    assert_eq!(verdict, TC_ACT_REDIRECT, "the error goes back to the pod");
    assert_eq!(node.stat(Stat::IcmpFragNeeded), 1);
    assert_eq!(node.stat(Stat::EncapVxlan), 0);
    assert_eq!(reply.len(), ETH_HLEN + 20 + 8 + 28);
    assert_eq!(&reply[0..6], &POD_A_MAC);
    assert_eq!(&reply[6..12], &GATEWAY_MAC);
    let ip = &reply[14..34];
    assert_eq!(ip[9], 1, "ICMP");
    assert_eq!(&ip[12..16], &GATEWAY_ADDR, "from the gateway");
    assert_eq!(&ip[16..20], &POD_A, "to the sender");
    assert_eq!(ipv4_checksum(ip), 0);
    let icmp = &reply[34..];
    assert_eq!((icmp[0], icmp[1]), (3, 4), "destination unreachable, fragmentation needed");
    assert_eq!(be16(icmp, 6), 1450, "next-hop MTU: the uplink's less VXLAN's 50 bytes");
    assert_eq!(ipv4_checksum(icmp), 0, "ICMP checksum valid");
    assert_eq!(&icmp[8..36], &big[14..42], "quotes the original IPv4 header and 8 bytes");

    // Without DF nobody waits for an ICMP error: the packet is encapsulated as it is (the fast
    // path does not fragment; pods get the tunnel's MTU so they do not send such packets).
    let mut no_df = big.clone();
    no_df[20] = 0;
    let check = {
        no_df[24..26].copy_from_slice(&[0, 0]);
        ipv4_checksum(&no_df[14..34])
    };
    no_df[24..26].copy_from_slice(&check.to_be_bytes());
    let (verdict, _) = node.run(PROG_FROM_WORKLOAD, &no_df);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(node.stat(Stat::EncapVxlan), 1);
}

/// The fixture cluster with its pool in IP-in-IP mode.
fn ipip_cluster() -> String {
    CLUSTER.replace("vxlanMode: Always, ipipMode: Never", "vxlanMode: Never, ipipMode: Always")
}

#[test]
fn remote_pod_traffic_is_encapsulated_in_ipip_byte_for_byte() {
    if skip_unless_root() {
        return;
    }
    let node = Node::with_cluster("node-1", &ipip_cluster());
    let inner = from_pod_a(REMOTE_POD);
    let (verdict, out) = node.run(PROG_FROM_WORKLOAD, &inner);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(node.stat(Stat::EncapIpip), 1);
    assert_eq!(out.len(), inner.len() + 20);
    let outer = &out[14..34];
    assert_eq!(outer[0], 0x45);
    assert_eq!(be16(outer, 2) as usize, out.len() - ETH_HLEN, "outer total length");
    assert_eq!(outer[9], 4, "protocol IP-in-IP");
    assert_eq!(&outer[12..16], &NODE);
    assert_eq!(&outer[16..20], &PEER);
    assert_eq!(ipv4_checksum(outer), 0);
    assert_eq!(out[34 + 8], 63, "inner TTL decremented");
    assert_eq!(ipv4_checksum(&out[34..54]), 0);
    assert_eq!(&out[54..], &inner[34..]);
}

#[test]
fn ipip_encapsulation_then_decapsulation_gives_back_the_packet() {
    if skip_unless_root() {
        return;
    }
    assert_round_trip(&ipip_cluster(), &[0xcd; 200], Stat::DecapIpip);
}

#[test]
fn ipip_from_an_unknown_node_is_dropped() {
    if skip_unless_root() {
        return;
    }
    let node = Node::with_cluster("node-1", &ipip_cluster());
    let (verdict, _) = node.run(PROG_FROM_UPLINK, &ipip_to_node(STRANGER));
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(node.stat(Stat::DropUnknownPeer), 1);
}

#[test]
fn never_mode_routes_to_the_owning_node_without_encapsulation() {
    if skip_unless_root() {
        return;
    }
    let never = CLUSTER.replace("vxlanMode: Always", "vxlanMode: Never");
    let node = Node::with_cluster("node-1", &never);
    let packet = from_pod_a(REMOTE_POD);
    let (verdict, out) = node.run(PROG_FROM_WORKLOAD, &packet);
    assert_eq!(verdict, TC_ACT_REDIRECT, "to the uplink, next hop the owning node");
    assert_eq!(out.len(), packet.len(), "no encapsulation");
    assert_eq!(out[22], 63);
    assert_eq!(node.stat(Stat::RoutedPlain), 1);
}

#[test]
fn ip_options_and_tunnel_fragments_are_never_rewritten() {
    if skip_unless_root() {
        return;
    }
    let node = Node::new("node-1");
    // IHL 6 (one word of options, NOPs): the kernel's router handles it, unchanged by us.
    let mut with_options = from_pod_a(REMOTE_POD);
    with_options[14] = 0x46;
    with_options.splice(34..34, [1, 1, 1, 1]);
    let total = (with_options.len() - 14) as u16;
    with_options[16..18].copy_from_slice(&total.to_be_bytes());
    with_options[24..26].copy_from_slice(&[0, 0]);
    let check = ipv4_checksum(&with_options[14..38]);
    with_options[24..26].copy_from_slice(&check.to_be_bytes());
    let (verdict, out) = node.run(PROG_FROM_WORKLOAD, &with_options);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, with_options);

    // A first fragment of a peer's VXLAN packet (MF set): to the kernel unchanged, which
    // reassembles it for the VXLAN anchor's socket.
    let fragment = first_fragment(vxlan_to_node(PEER, CALICO_VXLAN_VNI, REMOTE_POD, POD_A));
    let (verdict, out) = node.run(PROG_FROM_UPLINK, &fragment);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, fragment);
    assert_eq!(node.stat(Stat::PassTunnelFragment), 1);
    // The same from a stranger: refused as any of its VXLAN.
    let (verdict, _) =
        node.run(PROG_FROM_UPLINK, &first_fragment(vxlan_to_node(STRANGER, CALICO_VXLAN_VNI, REMOTE_POD, POD_A)));
    assert_eq!((verdict, node.stat(Stat::DropUnknownPeer)), (TC_ACT_SHOT, 1));
    // A first fragment of a peer's IP-in-IP: nothing reassembles IP-in-IP for the fast path.
    let ipip = Node::with_cluster("node-1", &ipip_cluster());
    let (verdict, _) = ipip.run(PROG_FROM_UPLINK, &first_fragment(ipip_to_node(PEER)));
    assert_eq!((verdict, ipip.stat(Stat::DropTunnelFragment)), (TC_ACT_SHOT, 1));

    // A later fragment (offset != 0) carries no UDP header: of no translated datagram, so left
    // to the kernel, unchanged.
    let mut later = vxlan_to_node(PEER, CALICO_VXLAN_VNI, REMOTE_POD, POD_A);
    later[20] = 0x00;
    later[21] = 0x10;
    set_ipv4_checksum(&mut later, ETH_HLEN);
    let (verdict, out) = node.run(PROG_FROM_UPLINK, &later);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, later);
    assert_eq!(node.stat(Stat::DecapVxlan), 0);
    assert_eq!(node.stat(Stat::PassUntrackedFragment), 1);
}

/// The outer headers from the agent's templates are, byte for byte, the ones the programs build
/// from the node map before the templates are written (an agent that has not yet written them),
/// for VXLAN and IP-in-IP, at any TOS and length, on both encapsulating programs.
#[test]
fn encapsulation_from_the_templates_equals_the_one_built_from_the_node_map() {
    if skip_unless_root() {
        return;
    }
    for (mode, cluster) in [("VXLAN", CLUSTER.to_owned()), ("IP-in-IP", ipip_cluster())] {
        let templated = Node::with_cluster("node-1", &cluster);
        let mut built = Node::with_cluster("node-1", &cluster);
        built.clear_templates();
        for (tos, payload_len) in [(0u8, 0usize), (0xb8, 100), (0x03, 1300)] {
            let mut from_pod = Packet::eth(POD_A_MAC, GATEWAY_MAC)
                .ipv4(POD_A, REMOTE_POD, IPPROTO_UDP)
                .udp(40000, 5201)
                .payload(&vec![0x5a; payload_len])
                .finish();
            from_pod[ETH_HLEN + 1] = tos;
            set_ipv4_checksum(&mut from_pod, ETH_HLEN);
            let mut from_host = Packet::eth(UPLINK_MAC, [0x02, 0, 0, 0, 0, 0x12])
                .ipv4(NODE, REMOTE_POD, IPPROTO_UDP)
                .udp(33000, 5201)
                .payload(&vec![0xa5; payload_len])
                .finish();
            from_host[ETH_HLEN + 1] = tos;
            set_ipv4_checksum(&mut from_host, ETH_HLEN);
            for (program, packet) in [(PROG_FROM_WORKLOAD, &from_pod), (dataplane_common::PROG_TO_UPLINK, &from_host)] {
                let (verdict, out) = templated.run(program, packet);
                assert_eq!(built.run(program, packet), (verdict, out.clone()), "{mode} {program} tos {tos:#x}");
                assert!(out.len() > packet.len(), "{mode} {program}: encapsulated");
                assert_eq!(out[ETH_HLEN + 1], tos, "{mode} {program}: the outer TOS is the inner one");
                assert_eq!(ipv4_checksum(&out[ETH_HLEN..ETH_HLEN + 20]), 0, "{mode} {program}: outer checksum");
            }
        }
        let encapsulated = if mode == "VXLAN" { Stat::EncapVxlan } else { Stat::EncapIpip };
        assert_eq!(templated.stat(encapsulated), 6, "{mode}");
        assert_eq!(built.stat(encapsulated), 6, "{mode}");
    }
}

#[test]
fn host_traffic_to_a_remote_block_is_encapsulated_on_the_uplink_egress() {
    if skip_unless_root() {
        return;
    }
    let node = Node::new("node-1");
    let from_host = Packet::eth(UPLINK_MAC, [0x02, 0, 0, 0, 0, 0x12])
        .ipv4(NODE, REMOTE_POD, IPPROTO_UDP)
        .udp(33000, 5201)
        .payload(b"from the host")
        .finish();
    let (verdict, out) = node.run(dataplane_common::PROG_TO_UPLINK, &from_host);
    assert_eq!(verdict, TC_ACT_OK, "continues out of the uplink");
    assert_eq!(node.stat(Stat::EncapVxlan), 1);
    assert_eq!(out.len(), from_host.len() + VXLAN_ENCAP_LEN);
    assert_eq!(&out[0..12], &from_host[0..12], "the kernel's Ethernet addresses kept");
    assert_eq!(&out[30..34], &PEER);
    assert_eq!(&out[64 + 12..64 + 16], &NODE, "inner source: the host");
    assert_eq!(out[64 + 8], 64, "the host's own packet: TTL untouched");

    // Already encapsulated pod traffic (outer destination: a node) passes through untouched.
    let (verdict, again) = node.run(dataplane_common::PROG_TO_UPLINK, &out);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(again, out);
    assert_eq!(node.stat(Stat::EgressUnchanged), 1);
}

/// Each tunnel packet `from_uplink` refuses: XDP drops it first, with the same counter.
#[test]
fn xdp_drops_every_tunnel_packet_from_uplink_refuses_with_its_reason() {
    if skip_unless_root() {
        return;
    }
    let vxlan = vxlan_to_node(PEER, CALICO_VXLAN_VNI, REMOTE_POD, POD_A);
    let mut no_vni_flag = vxlan.clone();
    no_vni_flag[ETH_HLEN + 20 + 8] = 0;
    let mut inner_not_ipv4 = vxlan.clone();
    inner_not_ipv4[ETH_HLEN + 20 + 8 + 8 + 12] = 0x86;
    let mut inner_too_long = vxlan.clone();
    let inner = ETH_HLEN + VXLAN_ENCAP_LEN;
    inner_too_long[inner + 2..inner + 4].copy_from_slice(&2000u16.to_be_bytes());
    let cases: [(&str, Vec<u8>, Stat, bool); 10] = [
        (
            "VXLAN from a non-peer",
            vxlan_to_node(STRANGER, CALICO_VXLAN_VNI, REMOTE_POD, POD_A),
            Stat::DropUnknownPeer,
            false,
        ),
        ("VXLAN with another VNI", vxlan_to_node(PEER, 4097, REMOTE_POD, POD_A), Stat::DropWrongVni, false),
        ("VXLAN without the VNI flag", no_vni_flag, Stat::DropWrongVni, false),
        (
            "a first fragment of a stranger's VXLAN",
            first_fragment(vxlan_to_node(STRANGER, CALICO_VXLAN_VNI, REMOTE_POD, POD_A)),
            Stat::DropUnknownPeer,
            false,
        ),
        ("a first fragment of a peer's IPIP", first_fragment(ipip_to_node(PEER)), Stat::DropTunnelFragment, true),
        ("VXLAN cut inside its VXLAN header", vxlan[..ETH_HLEN + 20 + 8 + 4].to_vec(), Stat::DropMalformed, false),
        ("VXLAN cut inside its inner IPv4 header", vxlan[..inner + 10].to_vec(), Stat::DropMalformed, false),
        ("VXLAN carrying no IPv4", inner_not_ipv4, Stat::DropMalformed, false),
        ("VXLAN whose inner length overruns the frame", inner_too_long, Stat::DropMalformed, false),
        ("IPIP from a non-peer", ipip_to_node(STRANGER), Stat::DropUnknownPeer, true),
    ];
    for (what, packet, reason, ipip) in cases {
        let node = if ipip { Node::with_cluster("node-1", &ipip_cluster()) } else { Node::new("node-1") };
        let (verdict, _) = node.run_xdp(&packet);
        assert_eq!(verdict, XDP_DROP, "{what}");
        let counted: Vec<(Stat, u64)> = Stat::ALL.iter().copied().zip(node.stats()).filter(|(_, n)| *n > 0).collect();
        assert_eq!(counted, vec![(reason, 1)], "{what}");
        // The TC program refuses it for the same reason.
        let (verdict, _) = node.run(PROG_FROM_UPLINK, &packet);
        assert_eq!((verdict, node.stat(reason)), (TC_ACT_SHOT, 2), "{what}");
    }
}

/// What XDP does not refuse goes on unchanged, counted once as passed: a peer's tunnel packets
/// (decapsulated by TC after it), the host's own traffic, ARP and a later fragment.
#[test]
fn xdp_passes_everything_else_unchanged() {
    if skip_unless_root() {
        return;
    }
    let mut later = vxlan_to_node(STRANGER, CALICO_VXLAN_VNI, REMOTE_POD, POD_A);
    later[20] = 0x00;
    later[21] = 0x10;
    set_ipv4_checksum(&mut later, ETH_HLEN);
    let cases: [(&str, Vec<u8>, Stat); 6] = [
        ("a peer's VXLAN", vxlan_to_node(PEER, CALICO_VXLAN_VNI, REMOTE_POD, POD_A), Stat::DecapVxlan),
        (
            "a first fragment of a peer's VXLAN",
            first_fragment(vxlan_to_node(PEER, CALICO_VXLAN_VNI, REMOTE_POD, POD_A)),
            Stat::PassTunnelFragment,
        ),
        (
            "UDP to the node itself",
            Packet::eth(UPLINK_MAC, UPLINK_MAC)
                .ipv4(STRANGER, NODE, IPPROTO_UDP)
                .udp(53, 5353)
                .payload(b"dns")
                .finish(),
            Stat::PassToStack,
        ),
        (
            "a stranger's VXLAN to another address",
            Packet::eth(UPLINK_MAC, UPLINK_MAC)
                .ipv4(STRANGER, EXTERNAL, IPPROTO_UDP)
                .udp(50000, CALICO_VXLAN_PORT)
                .vxlan(CALICO_VXLAN_VNI, PEER_VTEP_MAC, NODE_VTEP_MAC)
                .ipv4(REMOTE_POD, POD_A, IPPROTO_UDP)
                .udp(1, 2)
                .finish(),
            Stat::PassToStack,
        ),
        ("a later fragment of a stranger's VXLAN", later, Stat::PassUntrackedFragment),
        ("ARP", Packet::eth(UPLINK_MAC, [0xff; 6]).arp_request(UPLINK_MAC, PEER, NODE).finish(), Stat::PassToStack),
    ];
    for (what, packet, tc_stat) in cases {
        let node = Node::new("node-1");
        let (verdict, out) = node.run_xdp(&packet);
        assert_eq!(verdict, XDP_PASS, "{what}");
        assert_eq!(out, packet, "{what}: XDP changes nothing");
        assert_eq!(node.stat(Stat::XdpPassed), 1, "{what}");
        let (_, _) = node.run(PROG_FROM_UPLINK, &packet);
        assert_eq!(node.stat(tc_stat), 1, "{what}: TC decides as without XDP");
        let total: u64 = node.stats().iter().sum();
        assert_eq!(total, 2, "{what}: one count per program run");
    }
}

/// Each inner flow keeps its own outer UDP source port, as with the kernel's vxlan device: the
/// underlay's ECMP and RSS spread flows by it. The same flow always gets the same port.
#[test]
fn each_inner_flow_gets_its_own_vxlan_source_port() {
    if skip_unless_root() {
        return;
    }
    let node = Node::new("node-1");
    let port_of = |src_port: u16| {
        let packet = Packet::eth(POD_A_MAC, GATEWAY_MAC)
            .ipv4(POD_A, REMOTE_POD, IPPROTO_UDP)
            .udp(src_port, 5201)
            .payload(b"one of many flows")
            .finish();
        let (verdict, out) = node.run(PROG_FROM_WORKLOAD, &packet);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        be16(&out, ETH_HLEN + 20)
    };
    let ports: std::collections::BTreeSet<u16> = (40000..40016).map(port_of).collect();
    assert!(ports.len() >= 12, "16 inner flows got only {} outer source ports: {ports:?}", ports.len());
    assert_eq!(port_of(40003), port_of(40003), "one flow, one port");
    // A test run's skb carries no socket hash, so the port is the inner 5-tuple's flow_hash: the
    // one definition in dataplane-common that the program uses.
    let (sport, dport) = (40003u16.to_be_bytes(), 5201u16.to_be_bytes());
    let hash =
        dataplane_common::net::flow_hash(POD_A, REMOTE_POD, [sport[0], sport[1], dport[0], dport[1]], IPPROTO_UDP);
    assert_eq!(port_of(40003), dataplane_common::net::vxlan_src_port(hash), "the port of the inner flow's hash");
}
