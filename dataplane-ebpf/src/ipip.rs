//! IP-in-IP (protocol 4) encapsulation and decapsulation, built here because the fast path must
//! not need the kernel's ipip module.

use aya_ebpf::{
    bindings::{bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4},
    programs::TcContext,
};
use dataplane_common::{
    net::{ETH_HLEN, IPIP_ENCAP_LEN, IPV4_HLEN},
    templates::{template_flags, TEMPLATE_FRAME_OFFSET},
    NodeConfig, Route, Stat, TunnelTemplates,
};

use crate::{
    maps::TUNNEL_TEMPLATES,
    packet::{write_words, Ipv4Hdr},
};

/// Offset of the inner IPv4 header of an IP-in-IP packet.
pub const INNER_IP_OFFSET: usize = ETH_HLEN + IPV4_HLEN;

/// Puts an outer IPv4 header from this node to `route.node_addr` in front of the packet: this
/// node's template with the packet's fields in it.
#[inline(always)]
pub fn encap(ctx: &TcContext, node: &NodeConfig, route: &Route, inner: &Ipv4Hdr) -> Result<(), Stat> {
    let inner_len = (ctx.len() as usize).saturating_sub(ETH_HLEN);
    ctx.adjust_room(IPIP_ENCAP_LEN as i32, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 as u64)
        .map_err(|_| Stat::DropAdjustRoomFailed)?;
    let built;
    let templates = match TUNNEL_TEMPLATES.get(0) {
        Some(templates) if templates.written & template_flags::IPIP != 0 => templates,
        // Before the agent wrote them: the same template, built here from the node map.
        _ => {
            built = TunnelTemplates::for_node(node);
            &built
        }
    };
    let header = templates.ipip(inner.tos, inner_len as u16, route.node_addr);
    write_words(ctx, TEMPLATE_FRAME_OFFSET, header.head, &header.words, Some(header.tail))
}

/// Removes the outer IPv4 header.
#[inline(always)]
pub fn decap(ctx: &TcContext) -> Result<(), Stat> {
    crate::tunnel::shrink(ctx, IPIP_ENCAP_LEN)
}
