//! Datagrams bigger than the MTU through natOutgoing, with BPF_PROG_TEST_RUN on crafted
//! fragments: the first fragment is translated with its flow and records the address it got;
//! the later ones (no ports) get the same address, both ways; the fragments put back together
//! carry a valid transport checksum; fragments of no known datagram meet their named rules; the
//! fragments table stays bounded under a flood of first fragments. Needs root.

use aya::maps::HashMap;
use dataplane_common::{
    net::{GATEWAY_MAC, IPPROTO_ICMP, IPPROTO_UDP, IPV4_HLEN, IPV4_MF, XDP_PASS},
    FragmentKey, FragmentNat, Stat, FLOW_INBOUND, FLOW_OUTBOUND, FRAGMENTS_MAP, FRAGMENTS_MAX_ENTRIES,
    PROG_FROM_UPLINK, PROG_FROM_WORKLOAD,
};
use dataplane_tests::{
    packet::{be16, fixture::*, ipv4_checksum, l4_checksum_ok, set_ipv4_checksum, Packet},
    program::{skip_unless_root, Node, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
};

/// Where the IPv4 header starts in a frame.
const IP: usize = 14;
/// Payload bytes per fragment (a multiple of 8, as a 1500-byte MTU cuts them).
const CHUNK: usize = 1480;
/// The echo service on the external host.
const ECHO: u16 = 7;
/// The pod's port.
const POD_PORT: u16 = 40000;

/// A datagram of `len` payload bytes (a pattern, so that a misplaced piece shows).
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Cuts the whole IPv4 frame `whole` into fragments of [`CHUNK`] bytes of IP payload, with
/// identification `id`, as the sender's stack would (DF cleared, MF on all but the last).
fn fragments(whole: &[u8], id: u16) -> Vec<Vec<u8>> {
    let body = &whole[IP + IPV4_HLEN..];
    body.chunks(CHUNK)
        .enumerate()
        .map(|(index, piece)| {
            let mut frame = whole[..IP + IPV4_HLEN].to_vec();
            frame.extend_from_slice(piece);
            let total = (IPV4_HLEN + piece.len()) as u16;
            frame[IP + 2..IP + 4].copy_from_slice(&total.to_be_bytes());
            frame[IP + 4..IP + 6].copy_from_slice(&id.to_be_bytes());
            let last = (index + 1) * CHUNK >= body.len();
            let flags = if last { 0 } else { IPV4_MF };
            frame[IP + 6..IP + 8].copy_from_slice(&(flags | (index * CHUNK / 8) as u16).to_be_bytes());
            set_ipv4_checksum(&mut frame, IP);
            frame
        })
        .collect()
}

/// Puts translated fragments back together as the receiver would: the first one's headers, every
/// fragment's payload at its offset, the total length and flags of a whole datagram.
fn reassemble(pieces: &[Vec<u8>]) -> Vec<u8> {
    let mut whole = pieces[0][..IP + IPV4_HLEN].to_vec();
    for piece in pieces {
        let offset = usize::from(be16(piece, IP + 6) & 0x1fff) * 8;
        assert_eq!(whole.len() - IP - IPV4_HLEN, offset, "fragments in order, none missing");
        whole.extend_from_slice(&piece[IP + IPV4_HLEN..]);
    }
    let total = (whole.len() - IP) as u16;
    whole[IP + 2..IP + 4].copy_from_slice(&total.to_be_bytes());
    whole[IP + 6..IP + 8].copy_from_slice(&[0, 0]);
    set_ipv4_checksum(&mut whole, IP);
    whole
}

fn udp_from_pod(len: usize) -> Vec<u8> {
    Packet::eth(POD_A_MAC, GATEWAY_MAC)
        .ipv4(POD_A, EXTERNAL, IPPROTO_UDP)
        .udp(POD_PORT, ECHO)
        .payload(&payload(len))
        .finish()
}

fn udp_reply_to_node(nat_port: u16, len: usize) -> Vec<u8> {
    Packet::eth(UPLINK_MAC, UPLINK_MAC)
        .ipv4(EXTERNAL, NODE, IPPROTO_UDP)
        .udp(ECHO, nat_port)
        .payload(&payload(len))
        .finish()
}

fn fragments_table(node: &Node) -> Vec<(FragmentKey, FragmentNat)> {
    let map = node.ebpf.map(FRAGMENTS_MAP).expect("the object has the fragments map");
    let map: HashMap<_, FragmentKey, FragmentNat> = HashMap::try_from(map).expect("the fragments map's layout");
    map.iter().map(|entry| entry.expect("a readable entry")).collect()
}

/// Sends `frames` through `program`, expecting `verdict` for each; returns the outputs.
fn run_all(node: &Node, program: &str, frames: &[Vec<u8>], verdict: u32) -> Vec<Vec<u8>> {
    frames
        .iter()
        .enumerate()
        .map(|(index, frame)| {
            let (got, out) = node.run(program, frame);
            assert_eq!(got, verdict, "fragment {index} of {}", frames.len());
            out
        })
        .collect()
}

#[test]
fn every_fragment_of_a_pods_datagram_leaves_with_the_node_address() {
    if skip_unless_root() {
        return;
    }
    let node = Node::new("node-1");
    let whole = udp_from_pod(4000);
    let pieces = fragments(&whole, 0x4242);
    assert_eq!(pieces.len(), 3);
    let out = run_all(&node, PROG_FROM_WORKLOAD, &pieces, TC_ACT_REDIRECT);
    assert_eq!(node.stat(Stat::SnatNew), 1, "the first fragment opens the flow");
    assert_eq!(node.stat(Stat::SnatFragment), 2, "the two later ones follow it");
    for (index, (sent, got)) in pieces.iter().zip(&out).enumerate() {
        assert_eq!(&got[IP + 12..IP + 16], &NODE, "fragment {index}: source the node");
        assert_eq!(&got[IP + 16..IP + 20], &EXTERNAL, "fragment {index}: destination unchanged");
        assert_eq!(be16(got, IP + 4), 0x4242, "fragment {index}: identification kept");
        assert_eq!(&got[IP + 6..IP + 8], &sent[IP + 6..IP + 8], "fragment {index}: offset and MF kept");
        assert_eq!(got[IP + 8], 63, "fragment {index}: TTL decremented");
        assert_eq!(ipv4_checksum(&got[IP..IP + IPV4_HLEN]), 0, "fragment {index}: IPv4 checksum valid");
    }
    for (index, (sent, got)) in pieces.iter().zip(&out).enumerate().skip(1) {
        assert_eq!(&got[IP + IPV4_HLEN..], &sent[IP + IPV4_HLEN..], "fragment {index}: payload untouched");
    }
    let whole_out = reassemble(&out);
    assert!(l4_checksum_ok(&whole_out, IP), "the reassembled datagram's UDP checksum is valid");
    assert_eq!(&whole_out[IP + IPV4_HLEN + 8..], &whole[IP + IPV4_HLEN + 8..], "the payload arrives whole");

    let table = fragments_table(&node);
    assert_eq!(table.len(), 1, "{table:?}");
    let (key, nat) = table[0];
    assert_eq!(
        (key.src, key.dst, key.id, key.protocol, key.direction),
        (POD_A, EXTERNAL, 0x4242, IPPROTO_UDP, FLOW_OUTBOUND)
    );
    assert_eq!(nat.addr, NODE);
    assert_eq!(node.conntrack().len(), 2, "one flow, tracked once");
}

#[test]
fn every_fragment_of_a_reply_is_delivered_to_the_pod() {
    if skip_unless_root() {
        return;
    }
    let node = Node::new("node-1");
    let (verdict, opened) = node.run(PROG_FROM_WORKLOAD, &udp_from_pod(16));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let nat_port = be16(&opened, IP + IPV4_HLEN);
    let whole = udp_reply_to_node(nat_port, 16000);
    let pieces = fragments(&whole, 0x0777);
    assert_eq!(pieces.len(), 11);
    let out = run_all(&node, PROG_FROM_UPLINK, &pieces, TC_ACT_REDIRECT);
    assert_eq!(node.stat(Stat::ReverseNat), 1);
    assert_eq!(node.stat(Stat::ReverseNatFragment), 10);
    for (index, got) in out.iter().enumerate() {
        assert_eq!(&got[..6], &POD_A_MAC, "fragment {index}: to the pod's MAC");
        assert_eq!(&got[IP + 12..IP + 16], &EXTERNAL, "fragment {index}: source unchanged");
        assert_eq!(&got[IP + 16..IP + 20], &POD_A, "fragment {index}: destination the pod");
        assert_eq!(ipv4_checksum(&got[IP..IP + IPV4_HLEN]), 0, "fragment {index}: IPv4 checksum valid");
    }
    let whole_out = reassemble(&out);
    assert_eq!(be16(&whole_out, IP + IPV4_HLEN + 2), POD_PORT, "the first fragment got the pod's port");
    assert!(l4_checksum_ok(&whole_out, IP), "the reassembled reply's UDP checksum is valid");
    assert_eq!(&whole_out[IP + IPV4_HLEN + 8..], &whole[IP + IPV4_HLEN + 8..], "the payload arrives whole");
    let inbound: Vec<_> = fragments_table(&node).into_iter().filter(|(k, _)| k.direction == FLOW_INBOUND).collect();
    assert_eq!(inbound.len(), 1);
    assert_eq!((inbound[0].0.src, inbound[0].0.dst, inbound[0].1.addr), (EXTERNAL, NODE, POD_A));
}

#[test]
fn a_fragmented_ping_is_translated_whole() {
    if skip_unless_root() {
        return;
    }
    let node = Node::new("node-1");
    let request = Packet::eth(POD_A_MAC, GATEWAY_MAC)
        .ipv4(POD_A, EXTERNAL, IPPROTO_ICMP)
        .icmp_echo(8, 0x0abc, 1)
        .payload(&payload(3000))
        .finish();
    let out = run_all(&node, PROG_FROM_WORKLOAD, &fragments(&request, 9), TC_ACT_REDIRECT);
    assert_eq!((node.stat(Stat::SnatNew), node.stat(Stat::SnatFragment)), (1, 2));
    assert!(out.iter().all(|got| got[IP + 12..IP + 16] == NODE));
    assert!(l4_checksum_ok(&reassemble(&out), IP), "the ICMP checksum covers the whole message");
    let echo_id = be16(&out[0], IP + IPV4_HLEN + 4);

    let reply = Packet::eth(UPLINK_MAC, UPLINK_MAC)
        .ipv4(EXTERNAL, NODE, IPPROTO_ICMP)
        .icmp_echo(0, echo_id, 1)
        .payload(&payload(3000))
        .finish();
    let back = run_all(&node, PROG_FROM_UPLINK, &fragments(&reply, 10), TC_ACT_REDIRECT);
    assert_eq!((node.stat(Stat::ReverseNat), node.stat(Stat::ReverseNatFragment)), (1, 2));
    assert!(back.iter().all(|got| got[IP + 16..IP + 20] == POD_A));
    let whole_back = reassemble(&back);
    assert_eq!(be16(&whole_back, IP + IPV4_HLEN + 4), 0x0abc, "the pod's identifier back");
    assert!(l4_checksum_ok(&whole_back, IP));
}

#[test]
fn fragments_of_no_known_datagram_meet_their_rules() {
    if skip_unless_root() {
        return;
    }
    let node = Node::new("node-1");
    // From the pod, before its first fragment: it cannot be translated and must not leave with
    // the pod's address.
    let pieces = fragments(&udp_from_pod(4000), 1);
    let (verdict, _) = node.run(PROG_FROM_WORKLOAD, &pieces[1]);
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(node.stat(Stat::DropNatFragment), 1);
    // The first fragment of another datagram of the same flow does not vouch for this one.
    node.run(PROG_FROM_WORKLOAD, &fragments(&udp_from_pod(4000), 2)[0]);
    let (verdict, _) = node.run(PROG_FROM_WORKLOAD, &pieces[2]);
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(node.stat(Stat::DropNatFragment), 2);

    // To the node, of no translated datagram: the host's own, to its stack as it came.
    let later = &fragments(&udp_reply_to_node(33333, 4000), 3)[1];
    let (verdict, out) = node.run(PROG_FROM_UPLINK, later);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(&out, later, "untouched");
    assert_eq!(node.stat(Stat::PassUntrackedFragment), 1);
    // The uplink's XDP program hands it on to TC, which decides (above).
    let (verdict, _) = node.run_xdp(later);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(node.stat(Stat::XdpPassed), 1);
}

#[test]
fn a_flood_of_first_fragments_that_never_complete_stays_bounded() {
    if skip_unless_root() {
        return;
    }
    let node = Node::new("node-1");
    let whole = udp_from_pod(2000);
    let flood = FRAGMENTS_MAX_ENTRIES + 500;
    for id in 0..flood {
        let (verdict, _) = node.run(PROG_FROM_WORKLOAD, &fragments(&whole, id as u16)[0]);
        assert_eq!(verdict, TC_ACT_REDIRECT);
    }
    let tracked = fragments_table(&node).len();
    assert!(tracked <= FRAGMENTS_MAX_ENTRIES as usize, "{tracked} datagrams tracked");
    assert_eq!(node.conntrack().len(), 2, "the flood is one flow: conntrack holds it once");
    // The latest datagram's last fragment still finds its translation.
    let latest = fragments(&whole, (flood - 1) as u16);
    let (verdict, out) = node.run(PROG_FROM_WORKLOAD, &latest[1]);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&out[IP + 12..IP + 16], &NODE);
    // The oldest were evicted: their last fragments are dropped, counted.
    let (verdict, _) = node.run(PROG_FROM_WORKLOAD, &fragments(&whole, 0)[1]);
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(node.stat(Stat::DropNatFragment), 1);
    eprintln!("{flood} incomplete datagrams: {tracked} tracked (at most {FRAGMENTS_MAX_ENTRIES})");
}
