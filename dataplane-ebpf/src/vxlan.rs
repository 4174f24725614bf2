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
    helpers::bpf_get_hash_recalc,
    programs::TcContext,
};
use dataplane_common::{
    net::{
        DEFAULT_TTL, ETH_HLEN, ETH_P_IP, IPPROTO_UDP, IPV4_HLEN, UDP_HLEN, VXLAN_ENCAP_LEN, VXLAN_FLAG_VNI,
        VXLAN_SRC_PORT_MAX, VXLAN_SRC_PORT_MIN,
    },
    NodeConfig, Route, Stat,
};

use crate::{
    csum,
    packet::{write, EthHdr, Ipv4Hdr, UdpHdr, VxlanHdr},
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
    // Spread flows over source ports as the kernel does, so the underlay's ECMP and RSS see them:
    // the hash of the inner flow, taken before the room is added (after it, the flow dissector
    // would read the not yet written outer header, the same for every flow).
    // SAFETY: a BPF helper call on this program's own skb.
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) };
    let port_range = u32::from(VXLAN_SRC_PORT_MAX - VXLAN_SRC_PORT_MIN);
    let src_port = VXLAN_SRC_PORT_MIN + (hash % port_range) as u16;

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

/// Removes the outer IPv4, UDP, VXLAN and inner Ethernet headers, keeping the outer Ethernet
/// header in front of the inner IPv4 packet.
#[inline(always)]
pub fn decap(ctx: &TcContext) -> Result<(), Stat> {
    crate::tunnel::shrink(ctx, VXLAN_ENCAP_LEN)
}
