//! `vxlan_anchor`: TC ingress of the VXLAN GRO anchor device (`vxlan.dataplane`), which sees what
//! the kernel's VXLAN socket decapsulated.
//!
//! Whole VXLAN packets never get there: `from_uplink` decapsulates them first. What does is a
//! peer's VXLAN datagram that an underlay fragmented (`from_uplink` passes its first fragment as
//! `pass_tunnel_fragment`, the kernel reassembles it and the socket decapsulates it): delivered
//! here as `from_uplink` delivers a whole one. Anything else reached the socket past the uplink's
//! checks (another interface, loopback) and is dropped as `drop_vxlan_socket`.

use aya_ebpf::{bindings::bpf_tunnel_key, helpers::bpf_skb_get_tunnel_key, programs::TcContext};
use dataplane_common::{net::ETH_P_IP, peer_flags, Stat};

use crate::{
    packet::{read, EthHdr},
    route::{self, IP_OFFSET},
    tunnel, uplink,
    verdict::Outcome,
};

/// Delivers a peer's reassembled VXLAN packet; drops what came from anyone else.
#[inline(always)]
pub fn vxlan_anchor(ctx: &TcContext) -> Outcome {
    // SAFETY: an all-zero bpf_tunnel_key is a valid value of this plain C struct.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    let size = core::mem::size_of::<bpf_tunnel_key>() as u32;
    // SAFETY: the helper writes at most `size` bytes into `key`, which is that big.
    let read_key = unsafe { bpf_skb_get_tunnel_key(ctx.skb.skb, &mut key, size, 0) };
    if read_key != 0 {
        return Err(Stat::DropVxlanSocket);
    }
    // SAFETY: the helper filled the IPv4 member (no BPF_F_TUNINFO_IPV6 flag); host byte order.
    let remote = unsafe { key.__bindgen_anon_1.remote_ipv4 }.to_be_bytes();
    // The peer check `from_uplink` made on the first fragment, made again on the whole datagram:
    // a non-peer's VXLAN (or the node's own, over loopback) came past the uplink.
    tunnel::check_peer(remote, peer_flags::VXLAN).map_err(|_| Stat::DropVxlanSocket)?;
    let node = route::node_config()?;
    // The anchor is an external (collect_metadata) device: it accepts every VNI.
    if key.tunnel_id != node.vni {
        return Err(Stat::DropWrongVni);
    }
    let eth: EthHdr = read(ctx, 0)?;
    if eth.ether_type() != ETH_P_IP {
        return Err(Stat::DropMalformed);
    }
    let inner = tunnel::inner_ipv4(ctx, IP_OFFSET)?;
    uplink::deliver(ctx, inner, Stat::DecapVxlanReassembled, already_decapsulated)
}

/// The socket removed the tunnel headers already.
#[inline(always)]
fn already_decapsulated(_ctx: &TcContext) -> Result<(), Stat> {
    Ok(())
}
