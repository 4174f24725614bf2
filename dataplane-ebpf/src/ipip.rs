//! IP-in-IP (protocol 4) encapsulation and decapsulation, built here because the fast path must
//! not need the kernel's ipip module.

use aya_ebpf::{
    bindings::{bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4},
    programs::TcContext,
};
use dataplane_common::{
    net::{DEFAULT_TTL, ETH_HLEN, IPIP_ENCAP_LEN, IPPROTO_IPIP, IPV4_HLEN},
    NodeConfig, Route, Stat,
};

use crate::{
    csum,
    packet::{write, Ipv4Hdr},
};

/// Offset of the inner IPv4 header of an IP-in-IP packet.
pub const INNER_IP_OFFSET: usize = ETH_HLEN + IPV4_HLEN;

/// Puts an outer IPv4 header from this node to `route.node_addr` in front of the packet.
#[inline(always)]
pub fn encap(ctx: &TcContext, node: &NodeConfig, route: &Route, inner: &Ipv4Hdr) -> Result<(), Stat> {
    let inner_len = (ctx.len() as usize).saturating_sub(ETH_HLEN);
    ctx.adjust_room(IPIP_ENCAP_LEN as i32, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 as u64)
        .map_err(|_| Stat::DropAdjustRoomFailed)?;
    let mut outer = Ipv4Hdr {
        version_ihl: 0x45,
        tos: inner.tos,
        tot_len: ((inner_len + IPIP_ENCAP_LEN) as u16).to_be_bytes(),
        id: [0; 2],
        frag_off: [0; 2],
        ttl: DEFAULT_TTL,
        protocol: IPPROTO_IPIP,
        check: [0; 2],
        src: node.addr,
        dst: route.node_addr,
    };
    outer.check = csum::ipv4_header(&outer);
    write(ctx, ETH_HLEN, &outer)
}

/// Removes the outer IPv4 header.
#[inline(always)]
pub fn decap(ctx: &TcContext) -> Result<(), Stat> {
    crate::tunnel::shrink(ctx, IPIP_ENCAP_LEN)
}
