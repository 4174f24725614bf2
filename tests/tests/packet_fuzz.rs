//! Packet fuzzing of the four attached programs through BPF_PROG_TEST_RUN.
//!
//! A proptest generator builds valid Ethernet/ARP/IPv4/UDP/TCP/ICMP/VXLAN/IPIP packets with the
//! packet builder, from addresses that matter to the fixture cluster (pods, the node, its peer, a
//! stranger) and random ones, then mutates them: truncation at every layer and anywhere, bit
//! flips, wrong versions, IHLs and lengths, fragments, IP options, bad checksums, random VNIs.
//! Every case runs through one program of one node whose maps persist across cases (conntrack
//! fills up as it would), and every output is checked against the rules in [`check`]. What
//! `from_uplink` gets, the uplink's XDP program gets first, held to [`check_xdp`]. Every case
//! `dataplane trace` can describe ([`probe_of`]: well-formed, whole or fragmented, tunnelled or
//! not) is first predicted by trace from the node's maps as they are, and the program must take
//! the decision, counter and (for XDP) the drop trace predicted: the mirror is held to the kernel
//! on generated packets, not only on hand-picked ones.
//!
//! IPv6 frames from pods (extension headers, fragments, neighbour solicitations) go through the
//! node's IPv6 maps (`program::fixture6`) and are held to [`check_ipv6`]: the same rules, in
//! IPv6's words.
//!
//! The seed is fixed so a failure reproduces; `DATAPLANE_FUZZ_CASES=N` runs longer and
//! `DATAPLANE_FUZZ_SEED=N` explores elsewhere. Needs root (CAP_BPF).

#![allow(clippy::unwrap_used, reason = "fixtures of a test: a failed unwrap is a failed test")]

use std::{cell::RefCell, collections::BTreeMap, net::Ipv4Addr, time::Instant};

use dataplane::trace::{predict, xdp_decision, Entry, Fragment, Origin, Probe, Proto, Tunnel};

use dataplane_common::{
    net::{
        CALICO_VXLAN_PORT, CALICO_VXLAN_VNI, ETH_HLEN, ETH_P_ARP, ETH_P_IP, GATEWAY_ADDR, GATEWAY_MAC, ICMP_ECHO_REPLY,
        ICMP_ECHO_REQUEST, IPPROTO_ICMP, IPPROTO_IPIP, IPPROTO_TCP, IPPROTO_UDP, IPV4_DF, IPV4_FRAG_OFFSET_MASK,
        IPV4_MF, TCP_FLAGS_OFFSET, TCP_SYN, UDP_HLEN, VXLAN_HLEN,
    },
    net::{
        ETH_P_IPV6, GATEWAY_ADDR_V6, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT,
        IPPROTO_HOPOPTS, IPPROTO_ICMPV6, IPPROTO_ROUTING, IPV6_HLEN, ND_HOP_LIMIT, ND_NEIGHBOR_ADVERT,
        ND_NEIGHBOR_SOLICIT,
    },
    FlowKey, NatFlow, Stat, FLOW_INBOUND, FLOW_OUTBOUND, FLOW_TO_POD, PROG_FROM_UPLINK, PROG_FROM_WORKLOAD,
    PROG_TO_UPLINK, PROG_TO_WORKLOAD, PROG_XDP_UPLINK,
};
use dataplane_tests::{
    packet::{fixture::*, ipv4_checksum, ipv6_transport, l4_checksum_v6_ok, Ipv6Header, Packet},
    program::{
        fixture6, skip_unless_root, Node, NAT_PORTS, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TESTED_IFINDEX, XDP_DROP,
        XDP_PASS,
    },
};
use proptest::{
    collection::vec,
    prelude::*,
    test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner},
};

#[path = "packet_fuzz/ipv6.rs"]
mod ipv6;
#[path = "packet_fuzz/probe.rs"]
mod probe;

use ipv6::check_ipv6;
use probe::probe_of;

/// Cases run by default: a few tens of thousands of packets (cases plus the replies they provoke).
const DEFAULT_CASES: u32 = 20_000;
/// The default seed, so that every run of the suite tries the same packets.
const DEFAULT_SEED: u64 = 0x00da_7a91_a4e0_0008;
/// Conntrack is checked entry by entry every this many cases (and at the end).
const CONNTRACK_CHECK_EVERY: u32 = 500;
/// The programs, in the order the generator picks them.
const PROGRAMS: [&str; 4] = [PROG_FROM_WORKLOAD, PROG_TO_WORKLOAD, PROG_FROM_UPLINK, PROG_TO_UPLINK];

// ---------------------------------------------------------------------------------------------
// The generator.

/// The transport layer of a generated packet.
#[derive(Clone, Debug)]
enum L4 {
    Udp { src_port: u16, dst_port: u16 },
    Tcp { src_port: u16, dst_port: u16, flags: u8 },
    IcmpEcho { kind: u8, id: u16, seq: u16 },
    Other { protocol: u8 },
}

/// A valid packet before mutation.
#[derive(Clone, Debug)]
enum Base {
    Arp {
        sha: [u8; 6],
        spa: [u8; 4],
        tpa: [u8; 4],
    },
    Ipv4 {
        eth_src: [u8; 6],
        src: [u8; 4],
        dst: [u8; 4],
        l4: L4,
        payload: usize,
    },
    Vxlan {
        outer_src: [u8; 4],
        outer_dst: [u8; 4],
        dst_port: u16,
        vni: u32,
        src: [u8; 4],
        dst: [u8; 4],
        l4: L4,
        payload: usize,
    },
    Ipip {
        outer_src: [u8; 4],
        outer_dst: [u8; 4],
        src: [u8; 4],
        dst: [u8; 4],
        l4: L4,
        payload: usize,
    },
    /// IPv6 from a pod (or wherever it is run): `ext` between the fixed header and `l4`.
    Ipv6 {
        src: [u8; 16],
        dst: [u8; 16],
        hop_limit: u8,
        ext: Ext6,
        l4: L4,
        payload: usize,
    },
    /// A neighbour solicitation, mostly for the gateway.
    Solicitation {
        src: [u8; 16],
        dst: [u8; 16],
        target: [u8; 16],
        hop_limit: u8,
        source_mac: Option<[u8; 6]>,
    },
    OtherEtherType {
        ether_type: u16,
        body: Vec<u8>,
    },
    Garbage {
        bytes: Vec<u8>,
    },
}

/// The extension headers of a generated IPv6 packet.
#[derive(Clone, Copy, Debug)]
enum Ext6 {
    None,
    HopByHop,
    DestinationOptions,
    Routing,
    /// A fragment header: offset (in eight-byte units, 0 for a first fragment) and "more".
    Fragment {
        offset: u16,
        more: bool,
    },
}

/// What is done to the valid packet.
#[derive(Clone, Debug)]
enum Mutation {
    /// Cut at the `n`th layer boundary (Ethernet, IPv4, transport, tunnel headers...), minus `minus` bytes.
    TruncateAtLayer { layer: usize, minus: usize },
    /// Cut anywhere (a fraction of the length, in 1/256).
    Truncate { fraction: u8 },
    /// Flip one bit (byte index taken modulo the length).
    FlipBit { index: usize, bit: u8 },
    /// Set a field of one of the IPv4 headers (`header` modulo their number), and maybe fix the checksum.
    Ipv4Field { header: usize, field: Ipv4Field, fix_checksum: bool },
    /// Insert `words` 32-bit words of options into one IPv4 header, with consistent lengths.
    Options { header: usize, words: u8, kind: u8 },
    /// Break one IPv4 header checksum.
    BadIpChecksum { header: usize },
    /// Break the innermost transport checksum.
    BadL4Checksum,
    /// A wrong UDP length in one UDP header.
    UdpLength { header: usize, len: u16 },
    /// Bytes appended after the IPv4 packet (Ethernet padding, or junk).
    Trailer { bytes: Vec<u8> },
    /// Set a field of the IPv6 header.
    Ipv6Field(Ipv6Field),
}

/// One IPv6 header field to overwrite.
#[derive(Clone, Debug)]
enum Ipv6Field {
    Version(u8),
    PayloadLength(u16),
    NextHeader(u8),
    HopLimit(u8),
    Source([u8; 16]),
}

/// One IPv4 header field to overwrite.
#[derive(Clone, Debug)]
enum Ipv4Field {
    Version(u8),
    Ihl(u8),
    TotalLength(u16),
    /// Flags and fragment offset: more-fragments, an offset, or both.
    Fragment(u16),
    Ttl(u8),
    Protocol(u8),
    Source([u8; 4]),
}

/// A case: a program and a packet for it.
#[derive(Clone, Debug)]
struct Case {
    program: usize,
    base: Base,
    mutations: Vec<Mutation>,
}

/// Addresses that mean something to the fixture cluster, and random ones.
fn address() -> impl Strategy<Value = [u8; 4]> {
    prop_oneof![
        3 => prop_oneof![Just(POD_A), Just(POD_B), Just(REMOTE_POD), Just(EXTERNAL)],
        2 => prop_oneof![Just(NODE), Just(PEER), Just(STRANGER), Just(POD_NONE), Just(GATEWAY_ADDR)],
        1 => any::<[u8; 4]>(),
    ]
}

/// Outer sources of tunnel packets: the peer most often, then non-peers.
fn outer_source() -> impl Strategy<Value = [u8; 4]> {
    prop_oneof![3 => Just(PEER), 1 => Just(STRANGER), 1 => Just(NODE), 1 => Just(POD_A), 1 => any::<[u8; 4]>()]
}

/// IPv6 addresses that mean something to the fixture cluster, and random ones.
fn address6() -> impl Strategy<Value = [u8; 16]> {
    use fixture6::*;
    prop_oneof![
        3 => prop_oneof![Just(POD_A), Just(POD_B), Just(REMOTE_POD), Just(EXTERNAL)],
        2 => prop_oneof![Just(NODE), Just(POD_NONE), Just(GATEWAY_ADDR_V6), Just(POD_A_LINK_LOCAL), Just(ALL_NODES)],
        1 => any::<[u8; 16]>(),
    ]
}

fn ext6() -> impl Strategy<Value = Ext6> {
    prop_oneof![
        6 => Just(Ext6::None),
        1 => Just(Ext6::HopByHop),
        1 => Just(Ext6::DestinationOptions),
        1 => Just(Ext6::Routing),
        2 => (prop_oneof![Just(0u16), 1u16..200], any::<bool>()).prop_map(|(offset, more)| Ext6::Fragment { offset, more }),
    ]
}

fn l4() -> impl Strategy<Value = L4> {
    let port = prop_oneof![
        Just(53u16),
        Just(80),
        Just(5201),
        Just(40000),
        Just(NAT_PORTS.0),
        Just(CALICO_VXLAN_PORT),
        any::<u16>()
    ];
    prop_oneof![
        3 => (port.clone(), port.clone()).prop_map(|(src_port, dst_port)| L4::Udp { src_port, dst_port }),
        3 => (port.clone(), port, prop_oneof![Just(0x02u8), Just(0x10), Just(0x11), Just(0x04), any::<u8>()])
            .prop_map(|(src_port, dst_port, flags)| L4::Tcp { src_port, dst_port, flags }),
        2 => (prop_oneof![Just(ICMP_ECHO_REQUEST), Just(ICMP_ECHO_REPLY), Just(3u8), Just(11u8), any::<u8>()], any::<u16>(), any::<u16>())
            .prop_map(|(kind, id, seq)| L4::IcmpEcho { kind, id, seq }),
        1 => prop_oneof![Just(IPPROTO_IPIP), Just(47u8), Just(132u8), any::<u8>()].prop_map(|protocol| L4::Other { protocol }),
    ]
}

/// Payload lengths: mostly small, sometimes too big for the tunnel (1500-byte MTU).
fn payload_len() -> impl Strategy<Value = usize> {
    prop_oneof![6 => 0usize..64, 1 => 64usize..1400, 1 => 1400usize..1600]
}

fn base() -> impl Strategy<Value = Base> {
    let mac = prop_oneof![Just(POD_A_MAC), Just(POD_B_MAC), Just(UPLINK_MAC), any::<[u8; 6]>()];
    prop_oneof![
        1 => (mac.clone(), address(), prop_oneof![Just(GATEWAY_ADDR), Just(POD_B), Just(REMOTE_POD), address()])
            .prop_map(|(sha, spa, tpa)| Base::Arp { sha, spa, tpa }),
        // Pod A's own source most often: spoofed ones stop at the first check.
        4 => (mac, prop_oneof![2 => Just(POD_A), 1 => address()], address(), l4(), payload_len())
            .prop_map(|(eth_src, src, dst, l4, payload)| Base::Ipv4 { eth_src, src, dst, l4, payload }),
        3 => (
            outer_source(),
            prop_oneof![4 => Just(NODE), 1 => address()],
            prop_oneof![4 => Just(CALICO_VXLAN_PORT), 1 => any::<u16>()],
            prop_oneof![4 => Just(CALICO_VXLAN_VNI), 1 => any::<u32>().prop_map(|vni| vni & 0x00ff_ffff)],
            (address(), address(), l4(), payload_len()),
        )
            .prop_map(|(outer_src, outer_dst, dst_port, vni, (src, dst, l4, payload))| Base::Vxlan {
                outer_src,
                outer_dst,
                dst_port,
                vni,
                src,
                dst,
                l4,
                payload
            }),
        2 => (outer_source(), prop_oneof![4 => Just(NODE), 1 => address()], address(), address(), l4(), payload_len())
            .prop_map(|(outer_src, outer_dst, src, dst, l4, payload)| Base::Ipip { outer_src, outer_dst, src, dst, l4, payload }),
        // Pod A's own source most often, as for IPv4.
        2 => (
            prop_oneof![2 => Just(fixture6::POD_A), 1 => address6()],
            address6(),
            prop_oneof![4 => Just(64u8), 1 => Just(1), 1 => any::<u8>()],
            ext6(),
            l4(),
            payload_len(),
        )
            .prop_map(|(src, dst, hop_limit, ext, l4, payload)| Base::Ipv6 { src, dst, hop_limit, ext, l4, payload }),
        1 => (
            prop_oneof![3 => Just(fixture6::POD_A_LINK_LOCAL), 1 => Just([0; 16]), 1 => address6()],
            prop_oneof![Just(fixture6::GATEWAY_SOLICITED_NODE), Just(GATEWAY_ADDR_V6), address6()],
            prop_oneof![4 => Just(GATEWAY_ADDR_V6), 1 => address6()],
            prop_oneof![4 => Just(ND_HOP_LIMIT), 1 => any::<u8>()],
            prop_oneof![Just(Some(POD_A_MAC)), Just(None)],
        )
            .prop_map(|(src, dst, target, hop_limit, source_mac)| Base::Solicitation { src, dst, target, hop_limit, source_mac }),
        1 => (prop_oneof![Just(0x86ddu16), Just(0x8100), Just(0x88cc), any::<u16>()], vec(any::<u8>(), 0..80))
            .prop_map(|(ether_type, body)| Base::OtherEtherType { ether_type, body }),
        1 => vec(any::<u8>(), 0..120).prop_map(|bytes| Base::Garbage { bytes }),
    ]
}

fn ipv4_field() -> impl Strategy<Value = Ipv4Field> {
    prop_oneof![
        (0u8..16).prop_map(Ipv4Field::Version),
        (0u8..16).prop_map(Ipv4Field::Ihl),
        any::<u16>().prop_map(Ipv4Field::TotalLength),
        prop_oneof![Just(0x2000u16), Just(0x0001), Just(0x2001), Just(0x6000), any::<u16>()]
            .prop_map(Ipv4Field::Fragment),
        prop_oneof![Just(0u8), Just(1), any::<u8>()].prop_map(Ipv4Field::Ttl),
        any::<u8>().prop_map(Ipv4Field::Protocol),
        address().prop_map(Ipv4Field::Source),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (0usize..8, prop_oneof![3 => Just(0usize), 1 => 1usize..4]).prop_map(|(layer, minus)| Mutation::TruncateAtLayer { layer, minus }),
        1 => any::<u8>().prop_map(|fraction| Mutation::Truncate { fraction }),
        3 => (any::<usize>(), 0u8..8).prop_map(|(index, bit)| Mutation::FlipBit { index, bit }),
        4 => (0usize..3, ipv4_field(), any::<bool>()).prop_map(|(header, field, fix_checksum)| Mutation::Ipv4Field { header, field, fix_checksum }),
        1 => (0usize..3, 1u8..11, prop_oneof![Just(1u8), Just(0), any::<u8>()]).prop_map(|(header, words, kind)| Mutation::Options { header, words, kind }),
        1 => (0usize..3).prop_map(|header| Mutation::BadIpChecksum { header }),
        1 => Just(Mutation::BadL4Checksum),
        1 => (0usize..2, any::<u16>()).prop_map(|(header, len)| Mutation::UdpLength { header, len }),
        1 => vec(any::<u8>(), 1..32).prop_map(|bytes| Mutation::Trailer { bytes }),
        2 => ipv6_field().prop_map(Mutation::Ipv6Field),
    ]
}

fn ipv6_field() -> impl Strategy<Value = Ipv6Field> {
    prop_oneof![
        (0u8..16).prop_map(Ipv6Field::Version),
        prop_oneof![Just(0u16), any::<u16>()].prop_map(Ipv6Field::PayloadLength),
        prop_oneof![Just(IPPROTO_HOPOPTS), Just(IPPROTO_FRAGMENT), Just(IPPROTO_ICMPV6), any::<u8>()]
            .prop_map(Ipv6Field::NextHeader),
        prop_oneof![Just(0u8), Just(1), Just(ND_HOP_LIMIT), any::<u8>()].prop_map(Ipv6Field::HopLimit),
        address6().prop_map(Ipv6Field::Source),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![4 => Just(0usize), 1 => Just(1usize), 4 => Just(2usize), 1 => Just(3usize)],
        base(),
        // A third of the packets stay valid: they reach the deeper paths (encap, NAT, decap).
        prop_oneof![1 => Just(Vec::new()), 2 => vec(mutation(), 1..4)],
    )
        .prop_map(|(program, base, mutations)| Case { program, base, mutations })
}

fn with_l4(packet: Packet, src: [u8; 4], dst: [u8; 4], l4: &L4, payload: usize) -> Packet {
    let body: Vec<u8> = (0..payload).map(|i| i as u8).collect();
    match *l4 {
        L4::Udp { src_port, dst_port } => packet.ipv4(src, dst, IPPROTO_UDP).udp(src_port, dst_port),
        L4::Tcp { src_port, dst_port, flags } => packet.ipv4(src, dst, IPPROTO_TCP).tcp(src_port, dst_port, flags),
        L4::IcmpEcho { kind, id, seq } => packet.ipv4(src, dst, IPPROTO_ICMP).icmp_echo(kind, id, seq),
        L4::Other { protocol } => packet.ipv4(src, dst, protocol),
    }
    .payload(&body)
}

fn with_l4_v6(packet: Packet, header: Ipv6Header, ext: Ext6, l4: &L4, payload: usize) -> Packet {
    let body: Vec<u8> = (0..payload).map(|i| i as u8).collect();
    let next_header = match *l4 {
        L4::Udp { .. } => IPPROTO_UDP,
        L4::Tcp { .. } => IPPROTO_TCP,
        L4::IcmpEcho { .. } => IPPROTO_ICMPV6,
        L4::Other { protocol } => protocol,
    };
    let first = match ext {
        Ext6::None => next_header,
        Ext6::HopByHop => IPPROTO_HOPOPTS,
        Ext6::DestinationOptions => IPPROTO_DSTOPTS,
        Ext6::Routing => IPPROTO_ROUTING,
        Ext6::Fragment { .. } => IPPROTO_FRAGMENT,
    };
    let packet = packet.ipv6_header(Ipv6Header { next_header: first, ..header });
    let packet = match ext {
        Ext6::None => packet,
        Ext6::HopByHop | Ext6::DestinationOptions => packet.ipv6_options(next_header),
        Ext6::Routing => packet.ipv6_routing(next_header),
        Ext6::Fragment { offset, more } => packet.ipv6_fragment(next_header, offset, more),
    };
    // A later fragment carries no transport header, only payload.
    let packet = match (l4.clone(), ext) {
        (_, Ext6::Fragment { offset, .. }) if offset > 0 => packet,
        (L4::Udp { src_port, dst_port }, _) => packet.udp(src_port, dst_port),
        (L4::Tcp { src_port, dst_port, flags }, _) => packet.tcp(src_port, dst_port, flags),
        // The ICMPv4 echo types map onto ICMPv6's; others stay as generated.
        (L4::IcmpEcho { kind, id, seq }, _) => {
            let kind = match kind {
                ICMP_ECHO_REQUEST => ICMPV6_ECHO_REQUEST,
                ICMP_ECHO_REPLY => ICMPV6_ECHO_REPLY,
                other => other,
            };
            packet.icmp_echo(kind, id, seq)
        }
        (L4::Other { .. }, _) => packet,
    };
    packet.payload(&body)
}

/// The valid packet of `base`, built with the packet builder.
fn build(base: &Base) -> Vec<u8> {
    match base {
        Base::Arp { sha, spa, tpa } => Packet::eth(*sha, [0xff; 6]).arp_request(*sha, *spa, *tpa).finish(),
        Base::Ipv4 { eth_src, src, dst, l4, payload } => {
            with_l4(Packet::eth(*eth_src, GATEWAY_MAC), *src, *dst, l4, *payload).finish()
        }
        Base::Vxlan { outer_src, outer_dst, dst_port, vni, src, dst, l4, payload } => {
            let outer = Packet::eth(UPLINK_MAC, UPLINK_MAC)
                .ipv4(*outer_src, *outer_dst, IPPROTO_UDP)
                .udp(50000, *dst_port)
                .vxlan(*vni, PEER_VTEP_MAC, NODE_VTEP_MAC);
            with_l4(outer, *src, *dst, l4, *payload).finish()
        }
        Base::Ipip { outer_src, outer_dst, src, dst, l4, payload } => {
            let outer = Packet::eth(UPLINK_MAC, UPLINK_MAC).ipv4(*outer_src, *outer_dst, IPPROTO_IPIP);
            with_l4(outer, *src, *dst, l4, *payload).finish()
        }
        Base::Ipv6 { src, dst, hop_limit, ext, l4, payload } => {
            let header = Ipv6Header { src: *src, dst: *dst, next_header: 0, hop_limit: *hop_limit };
            with_l4_v6(Packet::eth(POD_A_MAC, GATEWAY_MAC), header, *ext, l4, *payload).finish()
        }
        Base::Solicitation { src, dst, target, hop_limit, source_mac } => {
            let header = Ipv6Header { src: *src, dst: *dst, next_header: IPPROTO_ICMPV6, hop_limit: *hop_limit };
            let eth = Packet::eth(POD_A_MAC, [0x33, 0x33, 0xff, 0xee, 0xee, 0xee]);
            eth.ipv6_header(header).neighbour_solicitation(*target, *source_mac).finish()
        }
        Base::OtherEtherType { ether_type, body } => {
            let mut bytes = Packet::eth(POD_A_MAC, GATEWAY_MAC).payload(body).bytes;
            bytes[12..14].copy_from_slice(&ether_type.to_be_bytes());
            bytes
        }
        Base::Garbage { bytes } => bytes.clone(),
    }
}

fn mutate(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let headers = ipv4_chain(bytes);
    match mutation {
        Mutation::TruncateAtLayer { layer, minus } => {
            let layers = layer_boundaries(bytes);
            if let Some(at) = layers.get(layer % layers.len().max(1)) {
                bytes.truncate(at.saturating_sub(*minus));
            }
        }
        Mutation::Truncate { fraction } => {
            let at = bytes.len() * usize::from(*fraction) / 256;
            bytes.truncate(at);
        }
        Mutation::FlipBit { index, bit } => {
            if !bytes.is_empty() {
                let at = index % bytes.len();
                bytes[at] ^= 1 << bit;
            }
        }
        Mutation::Ipv4Field { header, field, fix_checksum } => {
            let Some(&ip) = headers.get(header % headers.len().max(1)) else {
                return;
            };
            match field {
                Ipv4Field::Version(v) => bytes[ip] = (v << 4) | (bytes[ip] & 0x0f),
                Ipv4Field::Ihl(ihl) => bytes[ip] = (bytes[ip] & 0xf0) | ihl,
                Ipv4Field::TotalLength(len) => bytes[ip + 2..ip + 4].copy_from_slice(&len.to_be_bytes()),
                Ipv4Field::Fragment(frag) => bytes[ip + 6..ip + 8].copy_from_slice(&frag.to_be_bytes()),
                Ipv4Field::Ttl(ttl) => bytes[ip + 8] = *ttl,
                Ipv4Field::Protocol(protocol) => bytes[ip + 9] = *protocol,
                Ipv4Field::Source(src) => bytes[ip + 12..ip + 16].copy_from_slice(src),
            }
            if *fix_checksum {
                fix_ipv4_checksum(bytes, ip);
            }
        }
        Mutation::Options { header, words, kind } => {
            let Some(&ip) = headers.get(header % headers.len().max(1)) else {
                return;
            };
            let ihl = usize::from(bytes[ip] & 0x0f) * 4;
            let added = usize::from(*words) * 4;
            let options: Vec<u8> = (0..added).map(|i| if i == 0 { *kind } else { 1 }).collect();
            bytes.splice(ip + ihl..ip + ihl, options);
            bytes[ip] = 0x40 | (((ihl + added) / 4) as u8).min(15);
            // Every IPv4 header up to this one grows by the options.
            for &outer in headers.iter().filter(|&&h| h <= ip) {
                let len = u16::from_be_bytes([bytes[outer + 2], bytes[outer + 3]]).wrapping_add(added as u16);
                bytes[outer + 2..outer + 4].copy_from_slice(&len.to_be_bytes());
                fix_ipv4_checksum(bytes, outer);
            }
        }
        Mutation::BadIpChecksum { header } => {
            if let Some(&ip) = headers.get(header % headers.len().max(1)) {
                bytes[ip + 10] ^= 0x5a;
            }
        }
        Mutation::BadL4Checksum => {
            if let Some(&ip) = headers.last() {
                let l4 = ip + usize::from(bytes[ip] & 0x0f) * 4;
                let field = match bytes[ip + 9] {
                    IPPROTO_TCP => 16,
                    IPPROTO_UDP => 6,
                    IPPROTO_ICMP => 2,
                    _ => return,
                };
                if let Some(byte) = bytes.get_mut(l4 + field) {
                    *byte ^= 0xa5;
                }
            }
        }
        Mutation::UdpLength { header, len } => {
            let udp: Vec<usize> = headers
                .iter()
                .filter(|&&ip| bytes[ip + 9] == IPPROTO_UDP)
                .map(|&ip| ip + usize::from(bytes[ip] & 0x0f) * 4)
                .filter(|&l4| l4 + UDP_HLEN <= bytes.len())
                .collect();
            if let Some(&l4) = udp.get(header % udp.len().max(1)) {
                bytes[l4 + 4..l4 + 6].copy_from_slice(&len.to_be_bytes());
            }
        }
        Mutation::Trailer { bytes: trailer } => bytes.extend_from_slice(trailer),
        Mutation::Ipv6Field(field) => {
            if ether_type(bytes) != Some(ETH_P_IPV6) || bytes.len() < IPV6_PAYLOAD {
                return;
            }
            let ip = ETH_HLEN;
            match field {
                Ipv6Field::Version(v) => bytes[ip] = (v << 4) | (bytes[ip] & 0x0f),
                Ipv6Field::PayloadLength(len) => bytes[ip + 4..ip + 6].copy_from_slice(&len.to_be_bytes()),
                Ipv6Field::NextHeader(next) => bytes[ip + 6] = *next,
                Ipv6Field::HopLimit(hop_limit) => bytes[ip + 7] = *hop_limit,
                Ipv6Field::Source(src) => bytes[ip + 8..ip + 24].copy_from_slice(src),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading packets back.

fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

fn ether_type(bytes: &[u8]) -> Option<u16> {
    (bytes.len() >= ETH_HLEN).then(|| be16(bytes, 12))
}

/// Offsets of the IPv4 headers, outermost first: the one after Ethernet, then the inner one of
/// VXLAN (UDP to port 4789 with an inner IPv4 EtherType) or IP-in-IP. Only whole headers count.
fn ipv4_chain(bytes: &[u8]) -> Vec<usize> {
    let mut chain = Vec::new();
    if ether_type(bytes) != Some(ETH_P_IP) {
        return chain;
    }
    let mut ip = ETH_HLEN;
    while chain.len() < 3 {
        if ip + 20 > bytes.len() || bytes[ip] >> 4 != 4 || bytes[ip] & 0x0f < 5 {
            break;
        }
        let ihl = usize::from(bytes[ip] & 0x0f) * 4;
        if ip + ihl > bytes.len() {
            break;
        }
        chain.push(ip);
        let l4 = ip + ihl;
        match bytes[ip + 9] {
            IPPROTO_UDP if l4 + UDP_HLEN <= bytes.len() && be16(bytes, l4 + 2) == CALICO_VXLAN_PORT => {
                let inner_eth = l4 + UDP_HLEN + VXLAN_HLEN;
                if inner_eth + ETH_HLEN > bytes.len() || be16(bytes, inner_eth + 12) != ETH_P_IP {
                    break;
                }
                ip = inner_eth + ETH_HLEN;
            }
            IPPROTO_IPIP => ip = l4,
            _ => break,
        }
    }
    chain
}

/// Whether an IPv4 header the packet announces (after Ethernet, inside IP-in-IP or VXLAN) is
/// not whole: its IHL reaches past the end, or it is cut short.
fn announces_a_cut_header(bytes: &[u8]) -> bool {
    let chain = ipv4_chain(bytes);
    let next = match chain.last() {
        None => return ether_type(bytes) == Some(ETH_P_IP),
        Some(&ip) => {
            let l4 = ip + usize::from(bytes[ip] & 0x0f) * 4;
            match bytes[ip + 9] {
                IPPROTO_IPIP => l4,
                IPPROTO_UDP if l4 + UDP_HLEN <= bytes.len() && be16(bytes, l4 + 2) == CALICO_VXLAN_PORT => {
                    let inner_eth = l4 + UDP_HLEN + VXLAN_HLEN;
                    if inner_eth + ETH_HLEN > bytes.len() || be16(bytes, inner_eth + 12) != ETH_P_IP {
                        return false;
                    }
                    inner_eth + ETH_HLEN
                }
                _ => return false,
            }
        }
    };
    chain.len() < 3 && (next + 20 > bytes.len() || next + usize::from(bytes[next] & 0x0f) * 4 > bytes.len())
}

/// Offset of what follows the fixed IPv6 header.
const IPV6_PAYLOAD: usize = ETH_HLEN + IPV6_HLEN;

/// Layer boundaries of a packet, for truncation: Ethernet, each IPv4 header, the IPv6 header and
/// the transport after its extension headers, transport headers.
fn layer_boundaries(bytes: &[u8]) -> Vec<usize> {
    let mut layers = vec![0, ETH_HLEN];
    if ether_type(bytes) == Some(ETH_P_IPV6) {
        layers.extend([ETH_HLEN + 1, IPV6_PAYLOAD]);
        if let Some((_, l4)) = ipv6_transport(bytes, ETH_HLEN) {
            layers.extend([l4, l4 + 4, l4 + 8, l4 + 20]);
        }
    }
    for ip in ipv4_chain(bytes) {
        layers.push(ip + 1);
        layers.push(ip + 20);
        let l4 = ip + usize::from(bytes[ip] & 0x0f) * 4;
        layers.push(l4 + 4);
        layers.push(l4 + 8);
        if bytes[ip + 9] == IPPROTO_TCP {
            layers.push(l4 + 20);
        }
    }
    if ether_type(bytes) == Some(ETH_P_ARP) {
        layers.push(ETH_HLEN + 8);
        layers.push(ETH_HLEN + 28);
    }
    layers.retain(|&at| at <= bytes.len());
    layers
}

fn fix_ipv4_checksum(bytes: &mut [u8], ip: usize) {
    let ihl = usize::from(bytes[ip] & 0x0f) * 4;
    if ihl < 20 || ip + ihl > bytes.len() {
        return;
    }
    bytes[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
    let check = ipv4_checksum(&bytes[ip..ip + ihl]);
    bytes[ip + 10..ip + 12].copy_from_slice(&check.to_be_bytes());
}

/// Whether the IPv4 header at `ip` (a member of [`ipv4_chain`]) has a right checksum.
fn ipv4_header_ok(bytes: &[u8], ip: usize) -> bool {
    let ihl = usize::from(bytes[ip] & 0x0f) * 4;
    ipv4_checksum(&bytes[ip..ip + ihl]) == 0
}

/// Whether the IPv4 packet at `ip` fills the frame exactly (total length to the end).
fn length_consistent(bytes: &[u8], ip: usize) -> bool {
    usize::from(be16(bytes, ip + 2)) == bytes.len() - ip
}

/// The innermost transport checksum: `Some(true)` when right (or UDP without checksum),
/// `Some(false)` when wrong, `None` when there is nothing to judge (truncated, fragment, other
/// protocol, lengths that do not match the frame).
fn l4_checksum_state(bytes: &[u8]) -> Option<bool> {
    let chain = ipv4_chain(bytes);
    let &ip = chain.last()?;
    if !chain.iter().all(|&h| length_consistent(bytes, h)) || be16(bytes, ip + 6) & 0x3fff != 0 {
        return None;
    }
    let l4 = ip + usize::from(bytes[ip] & 0x0f) * 4;
    let protocol = bytes[ip + 9];
    let field = match protocol {
        IPPROTO_TCP => 16,
        IPPROTO_UDP => 6,
        IPPROTO_ICMP => 2,
        _ => return None,
    };
    if l4 + field + 2 > bytes.len() {
        return None;
    }
    if protocol == IPPROTO_UDP && be16(bytes, l4 + 6) == 0 {
        return Some(true);
    }
    let mut data = Vec::with_capacity(bytes.len() - l4 + 12);
    if protocol != IPPROTO_ICMP {
        data.extend_from_slice(&bytes[ip + 12..ip + 20]);
        data.extend_from_slice(&[0, protocol]);
        data.extend_from_slice(&((bytes.len() - l4) as u16).to_be_bytes());
    }
    data.extend_from_slice(&bytes[l4..]);
    Some(
        ipv4_checksum(&data) == 0
            || (protocol == IPPROTO_UDP && be16(bytes, l4 + 6) == 0xffff && ipv4_checksum(&data) == 0xffff),
    )
}

fn addr_at(bytes: &[u8], at: usize) -> [u8; 4] {
    [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]
}

// ---------------------------------------------------------------------------------------------
// The rules every output must satisfy.

/// What one run changed, for the checks.
struct Run<'a> {
    program: &'static str,
    input: &'a [u8],
    verdict: u32,
    output: &'a [u8],
    /// The one counter that moved.
    stat: Stat,
    /// The node's peers (the only outer sources it may decapsulate).
    peers: &'a [[u8; 4]],
}

/// Checks one run against the rules; the error says which rule broke.
fn check(run: &Run) -> Result<(), String> {
    let Run { program, input, verdict, output, stat, peers } = *run;
    // The verdict is one the programs may return, and SHOT exactly when a drop reason counted it.
    if ![TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT].contains(&verdict) {
        return Err(format!("verdict {verdict} is not OK, SHOT or REDIRECT"));
    }
    if (verdict == TC_ACT_SHOT) != stat.is_drop() {
        return Err(format!("verdict {verdict} counted as {}", stat.name()));
    }

    if ether_type(input) == Some(ETH_P_IPV6) {
        return check_ipv6(run);
    }
    let in_chain = ipv4_chain(input);
    // The outermost IPv4 source as a program reads it: at its fixed offset, whatever the header says.
    let ipv4_frame = ether_type(input) == Some(ETH_P_IP);

    // No spoofed source leaves a workload: an IPv4 frame from pod A gets anywhere only with pod A's
    // address as its source (ARP and other EtherTypes go to the kernel unchanged: the fast path routes only IPv4).
    let spoofed = input.len() < ETH_HLEN + 20 || addr_at(input, ETH_HLEN + 12) != POD_A;
    if program == PROG_FROM_WORKLOAD && ipv4_frame && !stat.is_drop() && spoofed {
        return Err(format!("from_workload let a packet with source other than pod A through ({})", stat.name()));
    }

    // No packet from a non-peer is decapsulated, and a tunnel packet from a non-peer stays as it
    // came or is dropped.
    let outer_src = (input.len() >= ETH_HLEN + 20).then(|| addr_at(input, ETH_HLEN + 12));
    let from_peer = outer_src.is_some_and(|src| peers.contains(&src));
    if matches!(stat, Stat::DecapVxlan | Stat::DecapIpip) && !from_peer {
        return Err(format!("{} of a packet from {outer_src:?}, which is not a peer", stat.name()));
    }
    let tunnel_shaped = in_chain.len() > 1 || in_chain.first().is_some_and(|&ip| input[ip + 9] == IPPROTO_IPIP);
    if program == PROG_FROM_UPLINK && tunnel_shaped && !from_peer && verdict != TC_ACT_SHOT && output != input {
        return Err(format!("a tunnel packet from non-peer {outer_src:?} was rewritten ({})", stat.name()));
    }

    // What a program rewrote is well-formed, with right checksums where the input's were right.
    if verdict == TC_ACT_SHOT || output == input || ether_type(output) != Some(ETH_P_IP) {
        return Ok(());
    }
    let out_chain = ipv4_chain(output);
    let Some(&outer) = out_chain.first() else {
        // A cut inner header stays cut when the tunnel around it is removed: the kernel's
        // ip_rcv drops it (counted apart, see `Tally::cut_inner_passed`).
        if announces_a_cut_header(input) && verdict == TC_ACT_OK {
            return Ok(());
        }
        return Err(format!("{} wrote an IPv4 frame without a whole IPv4 header", stat.name()));
    };
    let in_headers_ok = !in_chain.is_empty() && in_chain.iter().all(|&ip| ipv4_header_ok(input, ip));
    if in_headers_ok {
        if let Some(&bad) = out_chain.iter().find(|&&ip| !ipv4_header_ok(output, ip)) {
            return Err(format!("{}: IPv4 header checksum wrong at offset {bad}", stat.name()));
        }
    }
    let in_lengths_ok = !in_chain.is_empty() && in_chain.iter().all(|&ip| length_consistent(input, ip));
    if in_lengths_ok && !length_consistent(output, outer) {
        return Err(format!(
            "{}: outer total length {} for {} bytes",
            stat.name(),
            be16(output, outer + 2),
            output.len() - outer
        ));
    }
    if in_headers_ok && l4_checksum_state(input) == Some(true) && l4_checksum_state(output) == Some(false) {
        return Err(format!("{}: transport checksum was right and is wrong after the rewrite", stat.name()));
    }
    // Encapsulated by this node: the outer source is the node, the inner source the sender.
    if matches!(stat, Stat::EncapVxlan | Stat::EncapIpip) {
        if addr_at(output, outer + 12) != NODE {
            return Err(format!("{}: outer source {:?} is not the node", stat.name(), addr_at(output, outer + 12)));
        }
        if program == PROG_FROM_WORKLOAD && out_chain.get(1).is_none_or(|&inner| addr_at(output, inner + 12) != POD_A) {
            return Err(format!("{}: the inner source is not pod A", stat.name()));
        }
    }
    Ok(())
}

/// XDP drops only what `from_uplink` drops, for the same reason; and what only the tunnel
/// decision refuses (a non-peer, a wrong VNI, a tunnel fragment), it always drops.
fn check_xdp(xdp_drop: Option<Stat>, tc_verdict: u32, tc_stat: Stat) -> Result<(), String> {
    match xdp_drop {
        Some(reason) if tc_verdict != TC_ACT_SHOT || tc_stat != reason => {
            Err(format!("dropped ({}) what from_uplink decides otherwise ({})", reason.name(), tc_stat.name()))
        }
        None if matches!(tc_stat, Stat::DropUnknownPeer | Stat::DropWrongVni | Stat::DropTunnelFragment) => {
            Err(format!("passed what from_uplink refuses ({})", tc_stat.name()))
        }
        _ => Ok(()),
    }
}

/// Every translated flow has both its entries, each keyed as its flow says, with a translated
/// port from the range or the pod's own; flows opened towards a pod are keyed by the pod's side.
fn check_conntrack(entries: &[(FlowKey, NatFlow)]) -> Result<(), String> {
    let map: BTreeMap<FlowKey, NatFlow> = entries.iter().copied().collect();
    let same_flow = |a: &NatFlow, b: &NatFlow| {
        (a.pod_addr, a.peer_addr, a.nat_addr, a.pod_port, a.peer_port, a.nat_port, a.protocol)
            == (b.pod_addr, b.peer_addr, b.nat_addr, b.pod_port, b.peer_port, b.nat_port, b.protocol)
    };
    for (key, flow) in &map {
        match key.direction {
            FLOW_OUTBOUND | FLOW_INBOUND => {
                let (own, twin) = if key.direction == FLOW_OUTBOUND {
                    (flow.outbound_key(), flow.inbound_key())
                } else {
                    (flow.inbound_key(), flow.outbound_key())
                };
                if own != *key {
                    return Err(format!("entry {key:?} holds a flow keyed {own:?}"));
                }
                match map.get(&twin) {
                    Some(other) if same_flow(flow, other) => {}
                    Some(other) => {
                        return Err(format!("entry {key:?}: its twin holds another flow {other:?}"));
                    }
                    None => return Err(format!("entry {key:?} has no twin {twin:?}")),
                }
                let in_range = (NAT_PORTS.0..=NAT_PORTS.1).contains(&flow.nat_port);
                if !in_range && flow.nat_port != flow.pod_port {
                    return Err(format!("flow {flow:?}: translated port outside {NAT_PORTS:?} and not the pod's"));
                }
                if flow.nat_addr != NODE {
                    return Err(format!("flow {flow:?} is translated to another address than the node's"));
                }
            }
            FLOW_TO_POD => {
                if (key.src, key.dst, key.src_port, key.dst_port)
                    != (flow.pod_addr, flow.peer_addr, flow.pod_port, flow.peer_port)
                {
                    return Err(format!("towards-pod entry {key:?} holds {flow:?}"));
                }
            }
            other => return Err(format!("entry {key:?} has unknown direction {other}")),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The run.

/// Counts of the run, printed at the end.
#[derive(Default)]
struct Tally {
    packets: BTreeMap<&'static str, u64>,
    stats: BTreeMap<&'static str, u64>,
    total: u64,
    /// Frames the kernel's test harness refuses (see [`test_run_refuses`]).
    refused: u64,
    /// Tunnel packets from a peer whose inner IPv4 header is cut, decapsulated and handed to the
    /// kernel as they are (it drops them) instead of being counted as malformed.
    cut_inner_passed: u64,
    /// Runs of the XDP program, and how many it dropped.
    xdp_runs: u64,
    xdp_drops: u64,
    /// Runs whose packet `dataplane trace` can describe, each predicted before it ran and
    /// compared with the kernel's counter.
    predicted: u64,
    /// Decisions on IPv6 frames from pods, by name.
    ipv6_stats: BTreeMap<&'static str, u64>,
}

/// One node, its counters as last read, and the tally.
struct Fuzzer {
    node: Node,
    peers: Vec<[u8; 4]>,
    last_stats: Vec<u64>,
    tally: Tally,
}

impl Fuzzer {
    /// Runs `packet` through `program` and checks the output; returns the output and its counter.
    fn run(&mut self, program: &'static str, packet: &[u8]) -> Result<Option<(Vec<u8>, Stat)>, String> {
        if test_run_refuses(packet) {
            self.tally.refused += 1;
            return Ok(None);
        }
        // The uplink's XDP program sees the packet first; the TC program still runs on it, so
        // that what XDP drops is compared with what TC decides.
        let xdp = if program == PROG_FROM_UPLINK { Some(self.run_xdp(packet)?) } else { None };
        // What `dataplane trace` predicts from the maps as they are before the run.
        let prediction = probe_of(program, packet).map(|(probe, entry)| predict(&probe, &entry, &self.node.state()));
        let (verdict, output) = self.node.run(program, packet);
        let stat = self.counted(program)?;
        if let Some(prediction) = prediction {
            self.tally.predicted += 1;
            if let Some(xdp) = xdp {
                let (drops, reason) = xdp_decision(&prediction);
                if xdp != drops.then_some(reason) {
                    return Err(format!(
                        "{PROG_XDP_UPLINK}: trace predicts {}, the program {}\n  in:  {}",
                        if drops { format!("a drop, {}", reason.name()) } else { "a pass".to_owned() },
                        xdp.map_or("passed".to_owned(), |stat| format!("dropped, {}", stat.name())),
                        hex(packet)
                    ));
                }
            }
            if prediction.stat != stat || prediction.action.code() != verdict {
                return Err(format!(
                    "{program}: trace predicts {} ({:?}), the program returned {verdict} and counted {}\n  steps: {:?}\n  in:  {}",
                    prediction.stat.name(),
                    prediction.action,
                    stat.name(),
                    prediction.steps,
                    hex(packet)
                ));
            }
        }
        if let Some(xdp) = xdp {
            check_xdp(xdp, verdict, stat)
                .map_err(|rule| format!("{PROG_XDP_UPLINK}: {rule}\n  in:  {}", hex(packet)))?;
        }
        *self.tally.stats.entry(stat.name()).or_default() += 1;
        if program == PROG_FROM_WORKLOAD && ether_type(packet) == Some(ETH_P_IPV6) {
            *self.tally.ipv6_stats.entry(stat.name()).or_default() += 1;
        }
        if matches!(stat, Stat::DecapVxlan | Stat::DecapIpip) && announces_a_cut_header(packet) {
            self.tally.cut_inner_passed += 1;
        }
        check(&Run { program, input: packet, verdict, output: &output, stat, peers: &self.peers })
            .map_err(|rule| format!("{program}: {rule}\n  in:  {}\n  out: {}", hex(packet), hex(&output)))?;
        Ok(Some((output, stat)))
    }

    /// Runs `packet` through the XDP program: it never changes a packet, and counts each run once.
    /// Returns the counter it moved if it dropped the packet (None: passed).
    fn run_xdp(&mut self, packet: &[u8]) -> Result<Option<Stat>, String> {
        let (verdict, output) = self.node.run_xdp(packet);
        let stat = self.counted(PROG_XDP_UPLINK)?;
        self.tally.xdp_runs += 1;
        let fail = |rule: String| format!("{PROG_XDP_UPLINK}: {rule}\n  in:  {}", hex(packet));
        match verdict {
            XDP_PASS if stat == Stat::XdpPassed && output == packet => Ok(None),
            XDP_PASS => Err(fail(format!("passed counted as {}, or changed", stat.name()))),
            XDP_DROP if stat.is_drop() => {
                self.tally.xdp_drops += 1;
                Ok(Some(stat))
            }
            other => Err(fail(format!("verdict {other} counted as {}", stat.name()))),
        }
    }

    /// The one counter the last run of `program` moved, by exactly one; the tally of runs.
    fn counted(&mut self, program: &'static str) -> Result<Stat, String> {
        let stats = self.node.stats();
        let moved: Vec<(Stat, u64)> = Stat::ALL
            .iter()
            .zip(stats.iter().zip(&self.last_stats))
            .filter(|(_, (now, before))| now != before)
            .map(|(stat, (now, before))| (*stat, now - before))
            .collect();
        self.last_stats = stats;
        *self.tally.packets.entry(program).or_default() += 1;
        self.tally.total += 1;
        let stat = match moved.as_slice() {
            [(stat, 1)] => *stat,
            _ => {
                return Err(format!("{program}: counters moved {moved:?}, not exactly one by one"));
            }
        };
        let total: u64 = self.last_stats.iter().sum();
        if total != self.tally.total {
            return Err(format!("stats total {total} after {} program runs", self.tally.total));
        }
        Ok(stat)
    }

    /// A case: the packet, and for a translated flow the reply from outside (and a damaged copy).
    fn case(&mut self, case: &Case) -> Result<(), String> {
        let mut packet = build(&case.base);
        for mutation in &case.mutations {
            mutate(&mut packet, mutation);
        }
        // The kernel runs no skb shorter than an Ethernet header (BPF_PROG_TEST_RUN refuses it
        // with EINVAL, and no device hands one to TC): a shorter cut keeps its first 14 bytes.
        if packet.len() < ETH_HLEN {
            packet.resize(ETH_HLEN, 0);
        }
        let program = PROGRAMS[case.program];
        let Some((output, stat)) = self.run(program, &packet)? else {
            return Ok(());
        };
        if matches!(stat, Stat::SnatNew | Stat::SnatEstablished) {
            if let Some(reply) = reply_to(&output) {
                self.run(PROG_FROM_UPLINK, &reply)?;
                let mut damaged = reply;
                for mutation in &case.mutations {
                    mutate(&mut damaged, mutation);
                }
                if damaged.len() < ETH_HLEN {
                    damaged.resize(ETH_HLEN, 0);
                }
                self.run(PROG_FROM_UPLINK, &damaged)?;
            }
        }
        Ok(())
    }
}

/// Frames BPF_PROG_TEST_RUN refuses with EINVAL: an IPv4 EtherType without a whole IPv4 header
/// behind it, or IPv6 without a whole IPv6 header (the kernel pulls them before running the
/// program). Such frames can reach TC on a real device; the programs read every header with
/// bounds-checked `bpf_skb_load_bytes`, and those cuts are run here one layer further in.
fn test_run_refuses(packet: &[u8]) -> bool {
    match ether_type(packet) {
        Some(ETH_P_IP) => packet.len() < ETH_HLEN + 20,
        Some(0x86dd) => packet.len() < ETH_HLEN + 40,
        _ => packet.len() < ETH_HLEN,
    }
}

/// The reply from outside to a translated packet as it left the node.
fn reply_to(sent: &[u8]) -> Option<Vec<u8>> {
    let &ip = ipv4_chain(sent).first()?;
    let l4 = ip + usize::from(sent[ip] & 0x0f) * 4;
    if l4 + 8 > sent.len() {
        return None;
    }
    let (src, dst) = (addr_at(sent, ip + 16), addr_at(sent, ip + 12));
    let packet = Packet::eth(UPLINK_MAC, UPLINK_MAC);
    let reply = match sent[ip + 9] {
        IPPROTO_UDP => packet.ipv4(src, dst, IPPROTO_UDP).udp(be16(sent, l4 + 2), be16(sent, l4)),
        IPPROTO_TCP => packet.ipv4(src, dst, IPPROTO_TCP).tcp(be16(sent, l4 + 2), be16(sent, l4), 0x12),
        IPPROTO_ICMP => {
            packet.ipv4(src, dst, IPPROTO_ICMP).icmp_echo(ICMP_ECHO_REPLY, be16(sent, l4 + 4), be16(sent, l4 + 6))
        }
        _ => return None,
    };
    Some(reply.payload(b"reply").finish())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|value| value.parse().ok())
}

#[test]
fn fuzzed_packets_keep_every_rule_in_every_program() {
    if skip_unless_root() {
        return;
    }
    // The generator's strategy types nest deeply; unoptimized, they need more than a test
    // thread's default stack.
    let fuzz = std::thread::Builder::new().stack_size(256 << 20).spawn(fuzz_packets).unwrap();
    if let Err(panic) = fuzz.join() {
        std::panic::resume_unwind(panic);
    }
}

fn fuzz_packets() {
    let cases = env_number("DATAPLANE_FUZZ_CASES").map_or(DEFAULT_CASES, |n| n as u32);
    let seed = env_number("DATAPLANE_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config { cases, failure_persistence: None, max_shrink_iters: 2_000, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes));

    let node = Node::dual_stack();
    let peers = node.peers();
    assert!(peers.contains(&PEER) && !peers.contains(&STRANGER), "fixture peers: {peers:?}");
    let last_stats = node.stats();
    let fuzzer = RefCell::new(Fuzzer { node, peers, last_stats, tally: Tally::default() });
    let ran = RefCell::new(0u32);

    let began = Instant::now();
    let result = runner.run(&case(), |case| {
        let mut fuzzer = fuzzer.borrow_mut();
        fuzzer.case(&case).map_err(TestCaseError::fail)?;
        let mut ran = ran.borrow_mut();
        *ran += 1;
        if ran.is_multiple_of(CONNTRACK_CHECK_EVERY) {
            check_conntrack(&fuzzer.node.conntrack()).map_err(TestCaseError::fail)?;
        }
        Ok(())
    });
    let fuzzer = fuzzer.into_inner();
    let elapsed = began.elapsed();
    let conntrack = fuzzer.node.conntrack();
    eprintln!(
        "packet fuzzing: seed {seed:#x}, {cases} cases, {} packets in {elapsed:.1?}; per program: {:?}",
        fuzzer.tally.total, fuzzer.tally.packets
    );
    eprintln!("decisions: {:?}", fuzzer.tally.stats);
    eprintln!("decisions on IPv6 from pods: {:?}", fuzzer.tally.ipv6_stats);
    eprintln!(
        "conntrack entries at the end: {}; frames the test harness refuses, not run: {}; peers' tunnel packets with a cut inner header decapsulated and passed to the kernel: {}",
        conntrack.len(),
        fuzzer.tally.refused,
        fuzzer.tally.cut_inner_passed
    );
    eprintln!("{PROG_XDP_UPLINK}: {} runs, {} dropped", fuzzer.tally.xdp_runs, fuzzer.tally.xdp_drops);
    eprintln!("runs predicted by `dataplane trace` first, all agreeing with the kernel: {}", fuzzer.tally.predicted);
    if let Err(failure) = result {
        panic!("{failure}\n(reproduce with DATAPLANE_FUZZ_SEED={seed})");
    }
    check_conntrack(&conntrack).unwrap();
    assert!(fuzzer.tally.xdp_drops > 0 && fuzzer.tally.xdp_drops < fuzzer.tally.xdp_runs, "XDP both drops and passes");
    // A good share of the runs is one trace can describe, so its prediction is really held to the kernel.
    assert!(fuzzer.tally.predicted * 10 > fuzzer.tally.total, "trace predicted only {} runs", fuzzer.tally.predicted);
    // The generator reaches the paths it is meant to reach; a fuzzer stuck on drops proves little.
    for stat in [
        Stat::EncapVxlan,
        Stat::DecapVxlan,
        Stat::DecapIpip,
        Stat::SnatNew,
        Stat::ReverseNat,
        Stat::DropMalformed,
        Stat::DropUnknownPeer,
        Stat::DropSpoofedSource,
        Stat::ArpReplied,
    ] {
        assert!(fuzzer.tally.stats.get(stat.name()).is_some_and(|n| *n > 0), "no packet reached {}", stat.name());
    }
    for stat in [
        Stat::DeliveredLocal,
        Stat::NdpReplied,
        Stat::NdpPassed,
        Stat::PassToStack,
        Stat::PassIpv6LinkScope,
        Stat::PassIpv6HopByHop,
        Stat::DropMalformed,
        Stat::DropSpoofedSource,
        Stat::DropBlackhole,
    ] {
        let reached = fuzzer.tally.ipv6_stats.get(stat.name()).is_some_and(|n| *n > 0);
        assert!(reached, "no IPv6 packet from a pod reached {}", stat.name());
    }
}
