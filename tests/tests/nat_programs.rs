//! natOutgoing SNAT and its connection tracking, with BPF_PROG_TEST_RUN on crafted packets:
//! translation of new and known flows, replies translated back, port choice and exhaustion,
//! TCP state, ICMP echo, and pools without natOutgoing left alone. Needs root.

use dataplane_common::{
    flow_state,
    net::{GATEWAY_MAC, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, TCP_FIN, TCP_SYN},
    FlowKey, NatFlow, Stat, FLOW_INBOUND, FLOW_OUTBOUND, PROG_FROM_UPLINK, PROG_FROM_WORKLOAD,
};
use dataplane_tests::{
    packet::{be16, fixture::*, ipv4_checksum, l4_checksum_ok, Packet},
    program::{monotonic_ns, skip_unless_root, Node, CLUSTER, NAT_PORTS, TC_ACT_OK, TC_ACT_REDIRECT},
};

/// Port of the service on the external host.
const DNS: u16 = 53;

fn udp_from_pod(src_port: u16) -> Vec<u8> {
    Packet::eth(POD_A_MAC, GATEWAY_MAC).ipv4(POD_A, EXTERNAL, IPPROTO_UDP).udp(src_port, DNS).payload(b"query").finish()
}

fn udp_reply_to_node(dst_port: u16) -> Vec<u8> {
    Packet::eth(UPLINK_MAC, UPLINK_MAC).ipv4(EXTERNAL, NODE, IPPROTO_UDP).udp(DNS, dst_port).payload(b"answer").finish()
}

/// The conntrack entry of `direction`.
fn entry(node: &Node, direction: u8) -> (FlowKey, NatFlow) {
    let entries: Vec<_> = node.conntrack().into_iter().filter(|(k, _)| k.direction == direction).collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries[0]
}

/// Reserves the translated `port` towards the external DNS server for another pod's live flow.
fn hold_port(node: &mut Node, port: u16) {
    let now = monotonic_ns();
    let flow = NatFlow {
        created_ns: now,
        last_seen_ns: now,
        pod_addr: POD_B,
        peer_addr: EXTERNAL,
        nat_addr: NODE,
        pod_port: port,
        peer_port: DNS,
        nat_port: port,
        protocol: IPPROTO_UDP,
        state: flow_state::ESTABLISHED,
        _pad: [0; 4],
    };
    let outbound = FlowKey {
        src: POD_B,
        dst: EXTERNAL,
        src_port: port,
        dst_port: DNS,
        protocol: IPPROTO_UDP,
        direction: FLOW_OUTBOUND,
        _pad: [0; 2],
    };
    let inbound = FlowKey {
        src: EXTERNAL,
        dst: NODE,
        src_port: DNS,
        dst_port: port,
        protocol: IPPROTO_UDP,
        direction: FLOW_INBOUND,
        _pad: [0; 2],
    };
    node.insert_conntrack(outbound, flow);
    node.insert_conntrack(inbound, flow);
}

#[test]
fn a_new_udp_flow_leaves_with_the_node_address_and_its_own_port() {
    if skip_unless_root() {
        return;
    }
    let node = Node::new("node-1");
    let packet = udp_from_pod(5555);
    let (verdict, out) = node.run(PROG_FROM_WORKLOAD, &packet);
    assert_eq!(verdict, TC_ACT_REDIRECT, "straight out of the uplink");
    assert_eq!(node.stat(Stat::SnatNew), 1);
    assert_eq!(&out[26..30], &NODE, "source: the node");
    assert_eq!(&out[30..34], &EXTERNAL, "destination unchanged");
    assert_eq!(be16(&out, 34), 5555, "the pod's port was free: kept");
    assert_eq!(out[22], 63, "TTL decremented");
    assert_eq!(ipv4_checksum(&out[14..34]), 0, "IPv4 checksum valid");
    assert!(l4_checksum_ok(&out, 14), "UDP checksum valid after the rewrite");
    assert_eq!(&out[42..], &packet[42..], "payload untouched");

    let (key, flow) = entry(&node, FLOW_OUTBOUND);
    assert_eq!((key.src, key.dst, key.src_port, key.dst_port), (POD_A, EXTERNAL, 5555, DNS));
    assert_eq!((flow.nat_addr, flow.nat_port, flow.state), (NODE, 5555, flow_state::NEW));
    let (key, _) = entry(&node, FLOW_INBOUND);
    assert_eq!((key.src, key.dst, key.src_port, key.dst_port), (EXTERNAL, NODE, DNS, 5555));
}

#[test]
fn the_next_packet_of_a_flow_reuses_its_translation() {
    if skip_unless_root() {
        return;
    }
    let node = Node::new("node-1");
    let (_, first) = node.run(PROG_FROM_WORKLOAD, &udp_from_pod(5555));
    let (verdict, second) = node.run(PROG_FROM_WORKLOAD, &udp_from_pod(5555));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(first, second);
    assert_eq!(node.stat(Stat::SnatNew), 1);
    assert_eq!(node.stat(Stat::SnatEstablished), 1);
    assert_eq!(node.conntrack().len(), 2, "still one flow");
}

#[test]
fn a_reply_is_translated_back_and_delivered_to_the_pod() {
    if skip_unless_root() {
        return;
    }
    let node = Node::new("node-1");
    node.run(PROG_FROM_WORKLOAD, &udp_from_pod(5555));
    let reply = udp_reply_to_node(5555);
    let (verdict, out) = node.run(PROG_FROM_UPLINK, &reply);
    assert_eq!(verdict, TC_ACT_REDIRECT, "into the pod");
    assert_eq!(node.stat(Stat::ReverseNat), 1);
    assert_eq!(&out[0..6], &POD_A_MAC);
    assert_eq!(&out[6..12], &GATEWAY_MAC);
    assert_eq!(&out[26..30], &EXTERNAL, "source unchanged");
    assert_eq!(&out[30..34], &POD_A, "destination: the pod again");
    assert_eq!(be16(&out, 36), 5555, "the pod's port");
    assert_eq!(ipv4_checksum(&out[14..34]), 0);
    assert!(l4_checksum_ok(&out, 14), "UDP checksum valid after the reverse rewrite");
    assert_eq!(entry(&node, FLOW_OUTBOUND).1.state, flow_state::ESTABLISHED, "the peer answered");
}

#[test]
fn traffic_to_the_node_of_no_flow_is_the_hosts_own() {
    if skip_unless_root() {
        return;
    }
    let node = Node::new("node-1");
    let packet = udp_reply_to_node(6000);
    let (verdict, out) = node.run(PROG_FROM_UPLINK, &packet);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, packet);
    assert_eq!(node.stat(Stat::ReverseNat), 0);
}

#[test]
fn a_taken_port_is_replaced_by_one_from_the_range_and_a_full_range_drops_new_flows() {
    if skip_unless_root() {
        return;
    }
    let mut node = Node::new("node-1");
    hold_port(&mut node, 5555);
    let (verdict, out) = node.run(PROG_FROM_WORKLOAD, &udp_from_pod(5555));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let port = be16(&out, 34);
    assert!((NAT_PORTS.0..=NAT_PORTS.1).contains(&port), "port {port} from the range");
    assert!(l4_checksum_ok(&out, 14));

    // Take the rest of the range: the next new flow has nowhere to go.
    for held in NAT_PORTS.0..=NAT_PORTS.1 {
        if held != port {
            hold_port(&mut node, held);
        }
    }
    hold_port(&mut node, 7777);
    let (verdict, _) = node.run(PROG_FROM_WORKLOAD, &udp_from_pod(7777));
    assert_eq!(verdict, dataplane_tests::program::TC_ACT_SHOT);
    assert_eq!(node.stat(Stat::DropNatPortsExhausted), 1);
    // The flows that exist keep working.
    let (verdict, again) = node.run(PROG_FROM_WORKLOAD, &udp_from_pod(5555));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(be16(&again, 34), port);
}

#[test]
fn tcp_state_follows_the_handshake_and_the_close() {
    if skip_unless_root() {
        return;
    }
    let node = Node::new("node-1");
    let syn = Packet::eth(POD_A_MAC, GATEWAY_MAC).ipv4(POD_A, EXTERNAL, IPPROTO_TCP).tcp(41000, 80, TCP_SYN).finish();
    let (verdict, out) = node.run(PROG_FROM_WORKLOAD, &syn);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert!(l4_checksum_ok(&out, 14), "TCP checksum valid after SNAT");
    assert_eq!(entry(&node, FLOW_OUTBOUND).1.state, flow_state::NEW);

    let syn_ack =
        Packet::eth(UPLINK_MAC, UPLINK_MAC).ipv4(EXTERNAL, NODE, IPPROTO_TCP).tcp(80, 41000, TCP_SYN | 0x10).finish();
    let (verdict, back) = node.run(PROG_FROM_UPLINK, &syn_ack);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert!(l4_checksum_ok(&back, 14), "TCP checksum valid after reverse NAT");
    assert_eq!(entry(&node, FLOW_OUTBOUND).1.state, flow_state::ESTABLISHED);

    let fin =
        Packet::eth(POD_A_MAC, GATEWAY_MAC).ipv4(POD_A, EXTERNAL, IPPROTO_TCP).tcp(41000, 80, TCP_FIN | 0x10).finish();
    node.run(PROG_FROM_WORKLOAD, &fin);
    assert_eq!(entry(&node, FLOW_OUTBOUND).1.state, flow_state::CLOSING);
}

#[test]
fn icmp_echo_is_translated_by_its_identifier() {
    if skip_unless_root() {
        return;
    }
    let node = Node::new("node-1");
    let request = Packet::eth(POD_A_MAC, GATEWAY_MAC)
        .ipv4(POD_A, EXTERNAL, IPPROTO_ICMP)
        .icmp_echo(8, 0x1234, 1)
        .payload(b"ping")
        .finish();
    let (verdict, out) = node.run(PROG_FROM_WORKLOAD, &request);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&out[26..30], &NODE);
    assert_eq!(be16(&out, 38), 0x1234, "identifier kept: it was free");
    assert!(l4_checksum_ok(&out, 14));

    let reply = Packet::eth(UPLINK_MAC, UPLINK_MAC)
        .ipv4(EXTERNAL, NODE, IPPROTO_ICMP)
        .icmp_echo(0, 0x1234, 1)
        .payload(b"ping")
        .finish();
    let (verdict, back) = node.run(PROG_FROM_UPLINK, &reply);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&back[30..34], &POD_A);
    assert!(l4_checksum_ok(&back, 14));
    assert_eq!(node.stat(Stat::ReverseNat), 1);
}

#[test]
fn pods_of_a_pool_without_nat_outgoing_are_not_translated() {
    if skip_unless_root() {
        return;
    }
    let node = Node::with_cluster("node-1", &CLUSTER.replace("natOutgoing: true", "natOutgoing: false"));
    let packet = udp_from_pod(5555);
    let (verdict, out) = node.run(PROG_FROM_WORKLOAD, &packet);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, packet);
    assert!(node.conntrack().is_empty());
    assert_eq!(node.stat(Stat::SnatNew), 0);
}

#[test]
fn traffic_between_pools_is_never_translated() {
    if skip_unless_root() {
        return;
    }
    let node = Node::new("node-1");
    // A remote pod of the same natOutgoing pool: encapsulated, not translated.
    let packet = Packet::eth(POD_A_MAC, GATEWAY_MAC).ipv4(POD_A, REMOTE_POD, IPPROTO_UDP).udp(5555, DNS).finish();
    let (verdict, out) = node.run(PROG_FROM_WORKLOAD, &packet);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&out[64 + 12..64 + 16], &POD_A, "inner source is still the pod");
    assert!(node.conntrack().is_empty());
}

#[test]
fn a_full_conntrack_table_refuses_new_flows_and_keeps_the_old_ones() {
    if skip_unless_root() {
        return;
    }
    // Room for two flows (two entries each).
    let node = Node::with_conntrack_capacity("node-1", 4);
    for port in [5555, 5556] {
        let (verdict, _) = node.run(PROG_FROM_WORKLOAD, &udp_from_pod(port));
        assert_eq!(verdict, TC_ACT_REDIRECT);
    }
    let (verdict, _) = node.run(PROG_FROM_WORKLOAD, &udp_from_pod(5557));
    assert_eq!(verdict, dataplane_tests::program::TC_ACT_SHOT);
    assert_eq!(node.stat(Stat::DropConntrackFull), 1);
    assert_eq!(node.conntrack().len(), 4, "no half-made flow left behind");
    let (verdict, _) = node.run(PROG_FROM_WORKLOAD, &udp_from_pod(5555));
    assert_eq!(verdict, TC_ACT_REDIRECT, "existing flows keep working");
    let (verdict, _) = node.run(PROG_FROM_UPLINK, &udp_reply_to_node(5556));
    assert_eq!(verdict, TC_ACT_REDIRECT, "and their replies come back");
}

#[test]
fn an_icmp_error_about_a_translated_flow_reaches_the_pod_translated_back() {
    if skip_unless_root() {
        return;
    }
    let node = Node::new("node-1");
    let (_, sent) = node.run(PROG_FROM_WORKLOAD, &udp_from_pod(5555));
    // A router on the way answers "fragmentation needed", quoting what it received: our packet.
    let router = [198, 51, 100, 1];
    let mut error = Packet::eth(UPLINK_MAC, UPLINK_MAC)
        .ipv4(router, NODE, IPPROTO_ICMP)
        .payload(&[3, 4, 0, 0, 0, 0, 0x05, 0x00])
        .finish();
    error.extend_from_slice(&sent[14..14 + 28]);
    let error = fix_lengths_and_icmp(error);
    let (verdict, out) = node.run(PROG_FROM_UPLINK, &error);
    assert_eq!(verdict, TC_ACT_REDIRECT, "into the pod");
    assert_eq!(&out[0..6], &POD_A_MAC);
    assert_eq!(&out[30..34], &POD_A, "the error's destination: the pod");
    assert_eq!(ipv4_checksum(&out[14..34]), 0);
    let quoted = &out[42..62];
    assert_eq!(&quoted[12..16], &POD_A, "the quoted source: the pod again");
    assert_eq!(ipv4_checksum(quoted), 0, "quoted header checksum fixed");
    assert_eq!(be16(&out, 62), 5555, "the quoted source port: the pod's");
    assert!(l4_checksum_ok(&out, 14), "ICMP checksum fixed");
    assert_eq!(node.stat(Stat::ReverseNat), 1);
}

/// Sets the outer IPv4 length and checksums of a hand-assembled ICMP error.
fn fix_lengths_and_icmp(mut packet: Vec<u8>) -> Vec<u8> {
    let total = (packet.len() - 14) as u16;
    packet[16..18].copy_from_slice(&total.to_be_bytes());
    packet[24..26].copy_from_slice(&[0, 0]);
    let check = ipv4_checksum(&packet[14..34]);
    packet[24..26].copy_from_slice(&check.to_be_bytes());
    packet[36..38].copy_from_slice(&[0, 0]);
    let check = ipv4_checksum(&packet[34..]);
    packet[36..38].copy_from_slice(&check.to_be_bytes());
    packet
}

#[test]
fn turning_nat_outgoing_off_leaves_existing_flows_translated_and_new_ones_not() {
    if skip_unless_root() {
        return;
    }
    let mut node = Node::new("node-1");
    node.run(PROG_FROM_WORKLOAD, &udp_from_pod(5555));
    node.reprogram_routes("node-1", &CLUSTER.replace("natOutgoing: true", "natOutgoing: false"));
    let (verdict, out) = node.run(PROG_FROM_WORKLOAD, &udp_from_pod(5555));
    assert_eq!(verdict, TC_ACT_REDIRECT, "the open flow keeps its translation");
    assert_eq!(&out[26..30], &NODE);
    let fresh = udp_from_pod(5556);
    let (verdict, out) = node.run(PROG_FROM_WORKLOAD, &fresh);
    assert_eq!(verdict, TC_ACT_OK, "a new flow is not translated any more");
    assert_eq!(out, fresh);
    assert_eq!(node.stat(Stat::SnatNew), 1);
}

#[test]
fn a_port_used_by_a_socket_of_the_node_is_never_given_to_a_pod() {
    if skip_unless_root() {
        return;
    }
    let node = Node::new("node-1");
    // The node's own socket (BPF_PROG_TEST_RUN looks sockets up in this process's namespace).
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind a UDP socket");
    let port = socket.local_addr().expect("local address").port();
    let (verdict, out) = node.run(PROG_FROM_WORKLOAD, &udp_from_pod(port));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let translated = be16(&out, 34);
    assert_ne!(translated, port, "the node's socket keeps its port");
    assert!((NAT_PORTS.0..=NAT_PORTS.1).contains(&translated), "{translated} from the range");
}

#[test]
fn replies_to_flows_opened_from_outside_towards_the_pod_are_not_translated() {
    if skip_unless_root() {
        return;
    }
    let node = Node::new("node-1");
    // The host of node-2 (outside the pools) opens a UDP flow to pod A, encapsulated by its
    // uplink egress; node-1 decapsulates it into the pod.
    let query = Packet::eth(UPLINK_MAC, UPLINK_MAC)
        .ipv4(PEER, NODE, IPPROTO_UDP)
        .udp(50000, dataplane_common::net::CALICO_VXLAN_PORT)
        .vxlan(dataplane_common::net::CALICO_VXLAN_VNI, PEER_VTEP_MAC, NODE_VTEP_MAC)
        .ipv4(PEER, POD_A, IPPROTO_UDP)
        .udp(33333, DNS)
        .payload(b"query")
        .finish();
    let (verdict, _) = node.run(PROG_FROM_UPLINK, &query);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    // The pod answers: not a new outbound flow, so it leaves as the pod.
    let answer =
        Packet::eth(POD_A_MAC, GATEWAY_MAC).ipv4(POD_A, PEER, IPPROTO_UDP).udp(DNS, 33333).payload(b"answer").finish();
    let (verdict, out) = node.run(PROG_FROM_WORKLOAD, &answer);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, answer, "untranslated");
    assert_eq!(node.stat(Stat::SnatNew), 0);

    // The same through the pod's interface (the node's stack forwarding a client's packet).
    let forwarded = Packet::eth(GATEWAY_MAC, POD_A_MAC).ipv4(EXTERNAL, POD_A, IPPROTO_UDP).udp(44444, 8080).finish();
    node.run(dataplane_common::PROG_TO_WORKLOAD, &forwarded);
    let reply = Packet::eth(POD_A_MAC, GATEWAY_MAC).ipv4(POD_A, EXTERNAL, IPPROTO_UDP).udp(8080, 44444).finish();
    let (verdict, out) = node.run(PROG_FROM_WORKLOAD, &reply);
    assert_eq!((verdict, out == reply), (TC_ACT_OK, true));
    assert_eq!(node.stat(Stat::SnatNew), 0);
}

#[test]
fn packets_that_cannot_open_a_flow_are_never_translated() {
    if skip_unless_root() {
        return;
    }
    let node = Node::new("node-1");
    let syn_ack =
        Packet::eth(POD_A_MAC, GATEWAY_MAC).ipv4(POD_A, EXTERNAL, IPPROTO_TCP).tcp(80, 41000, TCP_SYN | 0x10).finish();
    let echo_reply =
        Packet::eth(POD_A_MAC, GATEWAY_MAC).ipv4(POD_A, EXTERNAL, IPPROTO_ICMP).icmp_echo(0, 7, 1).finish();
    for packet in [syn_ack, echo_reply] {
        let (verdict, out) = node.run(PROG_FROM_WORKLOAD, &packet);
        assert_eq!((verdict, out == packet), (TC_ACT_OK, true));
    }
    assert!(node.conntrack().is_empty());
}
