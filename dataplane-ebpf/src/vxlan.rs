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
        flow_hash, vxlan_src_port, ETH_HLEN, IPPROTO_TCP, IPPROTO_UDP, IPV4_FRAG_OFFSET_MASK, IPV4_HLEN, IPV4_MF,
        UDP_HLEN, VXLAN_ENCAP_LEN,
    },
    templates::{template_flags, TEMPLATE_FRAME_OFFSET},
    NodeConfig, Route, Stat, TunnelTemplates,
};

use crate::{
    maps::TUNNEL_TEMPLATES,
    packet::{read, write_words, Ipv4Hdr},
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

/// The VNI as the three bytes of the VXLAN header.
#[inline(always)]
pub fn vni_bytes(vni: u32) -> [u8; 3] {
    let b = vni.to_be_bytes();
    [b[1], b[2], b[3]]
}

/// Wraps the IPv4 packet (whose header is `inner`) in VXLAN towards `route.node_addr`, with the
/// owning node's VTEP MAC as inner destination: this node's template with the packet's fields in
/// it (`dataplane_common::templates`). The outer Ethernet addresses are left to the redirect that
/// follows.
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

    let built;
    let templates = match TUNNEL_TEMPLATES.get(0) {
        Some(templates) if templates.written & template_flags::VXLAN != 0 => templates,
        // Before the agent wrote them: the same template, built here from the node map.
        _ => {
            built = TunnelTemplates::for_node(node);
            &built
        }
    };
    let header = templates.vxlan(inner.tos, inner_len as u16, route.node_addr, route.mac, src_port);
    write_words(ctx, TEMPLATE_FRAME_OFFSET, header.head, &header.words, None)
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
