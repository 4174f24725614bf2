//! VXLAN encapsulation and decapsulation, on the wire as Linux's vxlan device does it.
//!
//! `bpf_skb_adjust_room` with the ENCAP/DECAP flags inserts or removes the 50 bytes after the
//! Ethernet header and tells the kernel where the inner headers are, so GSO packets are segmented
//! (and checksummed) correctly after encapsulation instead of being dropped or sent whole.

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_ADJ_ROOM_ENCAP_L2_SHIFT, BPF_F_ADJ_ROOM_ENCAP_L2_ETH,
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
    },
    programs::TcContext,
};
use dataplane_common::{
    net::{
        flow_hash, vxlan_src_port, DEFAULT_TTL, ETH_HLEN, ETH_P_IP, IPPROTO_TCP, IPPROTO_UDP, IPV4_FRAG_OFFSET_MASK,
        IPV4_HLEN, IPV4_MF, UDP_HLEN, VXLAN_ENCAP_LEN, VXLAN_FLAG_VNI,
    },
    NodeConfig, Route, Stat,
};

use crate::{
    csum,
    packet::{read, write, EthHdr, Ipv4Hdr, UdpHdr, VxlanHdr},
    route::IP_OFFSET,
};

/// Offset of the UDP header of a VXLAN packet.
pub const UDP_OFFSET: usize = ETH_HLEN + IPV4_HLEN;
/// Offset of the VXLAN header.
pub const VXLAN_OFFSET: usize = UDP_OFFSET + UDP_HLEN;
/// Offset of the inner Ethernet header.
pub const INNER_ETH_OFFSET: usize = VXLAN_OFFSET + dataplane_common::net::VXLAN_HLEN;
/// Offset of the inner IPv4 header.
pub const INNER_IP_OFFSET: usize = INNER_ETH_OFFSET + ETH_HLEN;

/// Everything VXLAN puts between the outer Ethernet header and the inner IPv4 header.
#[repr(C)]
#[derive(Clone, Copy)]
struct VxlanEncap {
    ip: Ipv4Hdr,
    udp: UdpHdr,
    vxlan: VxlanHdr,
    inner_eth: EthHdr,
}
const _: () = assert!(core::mem::size_of::<VxlanEncap>() == VXLAN_ENCAP_LEN);

/// The VNI as the three bytes of the VXLAN header.
#[inline(always)]
pub fn vni_bytes(vni: u32) -> [u8; 3] {
    let b = vni.to_be_bytes();
    [b[1], b[2], b[3]]
}

/// Wraps the IPv4 packet (whose header is `inner`) in VXLAN towards `route.node_addr`, with the
/// owning node's VTEP MAC as inner destination. The outer Ethernet addresses are left to the
/// redirect that follows.
#[inline(always)]
pub fn encap(ctx: &TcContext, node: &NodeConfig, route: &Route, inner: &Ipv4Hdr) -> Result<(), Stat> {
    let inner_len = (ctx.len() as usize).saturating_sub(ETH_HLEN);
    // Spread flows over source ports as the kernel does, so the underlay's ECMP and RSS see them;
    // taken before the room is added, while the inner headers are still where they were read.
    let src_port = vxlan_src_port(flow_hash_of(ctx, inner));

    let flags = BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 as u64
        | BPF_F_ADJ_ROOM_ENCAP_L4_UDP as u64
        | BPF_F_ADJ_ROOM_ENCAP_L2_ETH as u64
        | ((ETH_HLEN as u64) << BPF_ADJ_ROOM_ENCAP_L2_SHIFT);
    ctx.adjust_room(VXLAN_ENCAP_LEN as i32, BPF_ADJ_ROOM_MAC, flags).map_err(|_| Stat::DropAdjustRoomFailed)?;

    // Outer IPv4 total length: everything VXLAN adds plus the inner IPv4 packet.
    let outer_len = inner_len + VXLAN_ENCAP_LEN;
    let mut outer = VxlanEncap {
        ip: Ipv4Hdr {
            version_ihl: 0x45,
            tos: inner.tos,
            tot_len: (outer_len as u16).to_be_bytes(),
            id: [0; 2],
            frag_off: [0; 2],
            ttl: DEFAULT_TTL,
            protocol: IPPROTO_UDP,
            check: [0; 2],
            src: node.addr,
            dst: route.node_addr,
        },
        udp: UdpHdr {
            src_port: src_port.to_be_bytes(),
            dst_port: node.vxlan_port.to_be_bytes(),
            len: ((outer_len - IPV4_HLEN) as u16).to_be_bytes(),
            // No UDP checksum, as Linux sends VXLAN over IPv4 by default.
            check: [0; 2],
        },
        vxlan: VxlanHdr { flags: VXLAN_FLAG_VNI, reserved1: [0; 3], vni: vni_bytes(node.vni), reserved2: 0 },
        inner_eth: EthHdr { dst: route.mac, src: node.vtep_mac, ether_type: ETH_P_IP.to_be_bytes() },
    };
    outer.ip.check = csum::ipv4_header(&outer.ip);
    write(ctx, ETH_HLEN, &outer)
}

/// The hash of the packet's flow: the one the stack gave the skb when it has one (a local TCP
/// socket's, as the kernel's vxlan device would use), else [`flow_hash`] of the inner header read
/// already and the four port bytes after it. Not `bpf_get_hash_recalc`: it runs the whole flow
/// dissector again, and was the costliest step of the encapsulation. (Both callers encapsulate
/// only IHL-5 packets, so the ports follow the 20-byte header.)
#[inline(always)]
fn flow_hash_of(ctx: &TcContext, inner: &Ipv4Hdr) -> u32 {
    // SAFETY: reading a field of this program's own __sk_buff context.
    let stack_hash = unsafe { (*ctx.skb.skb).hash };
    if stack_hash != 0 {
        return stack_hash;
    }
    // Fragments are hashed by their addresses only, as the flow dissector does, so that every
    // fragment of a datagram takes the same path.
    let fragment = inner.frag_off() & (IPV4_MF | IPV4_FRAG_OFFSET_MASK) != 0;
    let ports = match inner.protocol {
        IPPROTO_TCP | IPPROTO_UDP if !fragment => read::<[u8; 4]>(ctx, IP_OFFSET + IPV4_HLEN).unwrap_or([0; 4]),
        _ => [0; 4],
    };
    flow_hash(inner.src, inner.dst, ports, inner.protocol)
}

/// Removes the outer IPv4, UDP, VXLAN and inner Ethernet headers, keeping the outer Ethernet
/// header in front of the inner IPv4 packet.
#[inline(always)]
pub fn decap(ctx: &TcContext) -> Result<(), Stat> {
    crate::tunnel::shrink(ctx, VXLAN_ENCAP_LEN)
}
