//! What VXLAN and IP-in-IP share on the receive side: which arrivals are acceptable tunnel
//! packets (one decision for `from_uplink` and `xdp_uplink`), and removing the tunnel headers.

use aya_ebpf::{
    bindings::{bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_DECAP_L3_IPV4, BPF_F_ADJ_ROOM_FIXED_GSO},
    programs::TcContext,
};
use dataplane_common::{
    net::{ETH_P_IP, IPPROTO_IPIP, IPPROTO_UDP, IPV4_FRAG_OFFSET_MASK, IPV4_IHL_MIN, IPV4_MF, VXLAN_FLAG_VNI},
    peer_flags, Ipv4Bytes, NodeConfig, Stat,
};

use crate::{
    ipip,
    maps::PEERS,
    packet::{EthHdr, Frame, Ipv4Hdr, UdpHdr, VxlanHdr},
    route::IP_OFFSET,
    vxlan,
};

/// What arrived on the uplink, as far as the tunnels are concerned.
pub enum Arrival {
    /// Not for the programs: the kernel's (not IPv4, not to this node, options).
    Pass,
    /// IPv4 to this node that is no tunnel packet (with this outer header): a reply to a
    /// translated flow, or the host's own traffic.
    ToNode(Ipv4Hdr),
    /// An acceptable VXLAN packet from a peer, with its inner IPv4 header.
    Vxlan(Ipv4Hdr),
    /// An acceptable IP-in-IP packet from a peer, with its inner IPv4 header.
    Ipip(Ipv4Hdr),
    /// The first fragment of a peer's VXLAN packet: the kernel reassembles the datagram and
    /// the VXLAN anchor's socket decapsulates it (its program delivers the inner packet).
    VxlanFragment,
}

/// Classifies an uplink arrival; `Err` is the reason to refuse it: a tunnel packet from a
/// non-peer, with a wrong VNI, an IP-in-IP fragment, or malformed or cut-short headers (also a UDP
/// header cut short). Both uplink programs decide with this, so XDP drops exactly what TC would.
#[inline(always)]
pub fn classify<F: Frame>(frame: &F, node: &NodeConfig) -> Result<Arrival, Stat> {
    let Ok(eth) = frame.read_at::<EthHdr>(0) else {
        return Ok(Arrival::Pass);
    };
    if eth.ether_type() != ETH_P_IP {
        return Ok(Arrival::Pass);
    }
    let Ok(outer) = frame.read_at::<Ipv4Hdr>(IP_OFFSET) else {
        return Ok(Arrival::Pass);
    };
    // We never send tunnel packets with options; the kernel judges anything else.
    if outer.version() != 4 || outer.ihl() != IPV4_IHL_MIN || outer.dst != node.addr {
        return Ok(Arrival::Pass);
    }
    let frag = outer.frag_off();
    // A later fragment carries no transport header to recognise a tunnel by: for the node, where
    // NAT knows it if its datagram's first fragment was a translated reply.
    if frag & IPV4_FRAG_OFFSET_MASK != 0 {
        return Ok(Arrival::ToNode(outer));
    }
    let is_fragment = frag & IPV4_MF != 0;
    match outer.protocol {
        IPPROTO_UDP => {
            let udp: UdpHdr = frame.read_at(vxlan::UDP_OFFSET)?;
            if u16::from_be_bytes(udp.dst_port) != node.vxlan_port {
                return Ok(Arrival::ToNode(outer));
            }
            check_peer(outer.src, peer_flags::VXLAN)?;
            if is_fragment {
                return Ok(Arrival::VxlanFragment);
            }
            let header: VxlanHdr = frame.read_at(vxlan::VXLAN_OFFSET)?;
            if header.flags & VXLAN_FLAG_VNI == 0 || header.vni != vxlan::vni_bytes(node.vni) {
                return Err(Stat::DropWrongVni);
            }
            let inner_eth: EthHdr = frame.read_at(vxlan::INNER_ETH_OFFSET)?;
            if inner_eth.ether_type() != ETH_P_IP {
                return Err(Stat::DropMalformed);
            }
            let inner = inner_ipv4(frame, vxlan::INNER_IP_OFFSET)?;
            Ok(Arrival::Vxlan(inner))
        }
        IPPROTO_IPIP => {
            if is_fragment {
                return Err(Stat::DropTunnelFragment);
            }
            check_peer(outer.src, peer_flags::IPIP)?;
            let inner = inner_ipv4(frame, ipip::INNER_IP_OFFSET)?;
            Ok(Arrival::Ipip(inner))
        }
        _ => Ok(Arrival::ToNode(outer)),
    }
}

/// The inner IPv4 header at `offset`, which must fit what arrived (its header inside its length,
/// its length inside the frame): the stack would drop a cut-short one anyway, and it is no
/// decapsulation to count.
#[inline(always)]
pub fn inner_ipv4<F: Frame>(frame: &F, offset: usize) -> Result<Ipv4Hdr, Stat> {
    let inner: Ipv4Hdr = frame.read_at(offset)?;
    if inner.version() != 4 || inner.ihl() < IPV4_IHL_MIN {
        return Err(Stat::DropMalformed);
    }
    let inner_len = usize::from(u16::from_be_bytes(inner.tot_len));
    let available = frame.frame_len().saturating_sub(offset);
    if usize::from(inner.ihl()) * 4 > inner_len || inner_len > available {
        return Err(Stat::DropMalformed);
    }
    Ok(inner)
}

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
