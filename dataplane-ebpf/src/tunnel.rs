//! What VXLAN and IP-in-IP share on the receive side: accepting only known peers, and removing
//! the tunnel headers.

use aya_ebpf::{
    bindings::{bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_DECAP_L3_IPV4, BPF_F_ADJ_ROOM_FIXED_GSO},
    programs::TcContext,
};
use dataplane_common::{Ipv4Bytes, Stat};

use crate::maps::PEERS;

/// Accepts tunnel packets only from a peer node that may send this kind (`peer_flags`).
#[inline(always)]
pub fn check_peer(src: Ipv4Bytes, kind: u32) -> Result<(), Stat> {
    match PEERS.get_ptr(&src) {
        // SAFETY: the pointer comes from a successful lookup and is read at once.
        Some(peer) if unsafe { (*peer).flags } & kind != 0 => Ok(()),
        _ => Err(Stat::DropUnknownPeer),
    }
}

/// Removes `len` bytes after the Ethernet header.
#[inline(always)]
pub fn shrink(ctx: &TcContext, len: usize) -> Result<(), Stat> {
    // The DECAP flag (Linux 6.3+) lets the kernel fix up skb->protocol and the GSO state; older
    // kernels reject it, and then the plain shrink does (IPv4 in IPv4 needs no protocol change).
    // FIXED_GSO on both: a GRO-merged packet's gso_size already is the inner segments' payload.
    let flags = BPF_F_ADJ_ROOM_DECAP_L3_IPV4 as u64 | BPF_F_ADJ_ROOM_FIXED_GSO as u64;
    let with_decap = ctx.adjust_room(-(len as i32), BPF_ADJ_ROOM_MAC, flags);
    if with_decap.is_ok() {
        return Ok(());
    }
    // Without FIXED_GSO the shrink grows gso_size by `len`: wrong for a GRO-merged tunnel packet,
    // whose gso_size already is the inner segments' payload (the pod's TCP would misjudge the MSS).
    ctx.adjust_room(-(len as i32), BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO as u64)
        .map_err(|_| Stat::DropAdjustRoomFailed)
}
