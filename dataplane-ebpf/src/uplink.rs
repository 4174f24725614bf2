//! `from_uplink`: packets arriving on the node's uplink. Tunnel packets from known peers are
//! decapsulated and delivered; everything else belongs to the kernel.

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use dataplane_common::{
    net::{ETH_P_IP, IPPROTO_IPIP, IPPROTO_UDP, IPV4_FRAG_OFFSET_MASK, IPV4_IHL_MIN, IPV4_MF, VXLAN_FLAG_VNI},
    peer_flags, route_flags, route_kind, NodeConfig, Stat,
};

use crate::{
    ipip, nat,
    packet::{read, EthHdr, Ipv4Hdr, UdpHdr, VxlanHdr},
    route::{self, IP_OFFSET},
    tunnel,
    verdict::{Outcome, Verdict},
    vxlan,
};

/// Decapsulates VXLAN and IP-in-IP addressed to this node from its peers.
#[inline(always)]
pub fn from_uplink(ctx: &TcContext) -> Outcome {
    let Ok(eth) = read::<EthHdr>(ctx, 0) else {
        return Ok(Verdict::pass());
    };
    if eth.ether_type() != ETH_P_IP {
        return Ok(Verdict::pass());
    }
    let Ok(outer) = read::<Ipv4Hdr>(ctx, IP_OFFSET) else {
        return Ok(Verdict::pass());
    };
    // Without a configuration the agent has not started: leave the host's traffic alone.
    let Ok(node) = route::node_config() else {
        return Ok(Verdict::pass());
    };
    // We never send tunnel packets with options; the kernel judges anything else.
    if outer.version() != 4 || outer.ihl() != IPV4_IHL_MIN || outer.dst != node.addr {
        return Ok(Verdict::pass());
    }
    let frag = outer.frag_off();
    // A later fragment carries no transport header to recognise a tunnel by.
    if frag & IPV4_FRAG_OFFSET_MASK != 0 {
        return Ok(Verdict::pass());
    }
    let is_fragment = frag & IPV4_MF != 0;
    match outer.protocol {
        IPPROTO_UDP => {
            let udp: UdpHdr = read(ctx, vxlan::UDP_OFFSET)?;
            if u16::from_be_bytes(udp.dst_port) == node.vxlan_port {
                return from_vxlan(ctx, &node, &outer, is_fragment);
            }
            nat::inbound(ctx, &node, &outer)
        }
        IPPROTO_IPIP => from_ipip(ctx, &outer, is_fragment),
        // Replies to pods' translated flows, or the host's own traffic.
        _ => nat::inbound(ctx, &node, &outer),
    }
}

#[inline(always)]
fn from_vxlan(ctx: &TcContext, node: &NodeConfig, outer: &Ipv4Hdr, is_fragment: bool) -> Outcome {
    if is_fragment {
        return Err(Stat::DropTunnelFragment);
    }
    tunnel::check_peer(outer.src, peer_flags::VXLAN)?;
    let header: VxlanHdr = read(ctx, vxlan::VXLAN_OFFSET)?;
    if header.flags & VXLAN_FLAG_VNI == 0 || header.vni != vxlan::vni_bytes(node.vni) {
        return Err(Stat::DropWrongVni);
    }
    let inner_eth: EthHdr = read(ctx, vxlan::INNER_ETH_OFFSET)?;
    if inner_eth.ether_type() != ETH_P_IP {
        return Err(Stat::DropMalformed);
    }
    let inner: Ipv4Hdr = read(ctx, vxlan::INNER_IP_OFFSET)?;
    deliver(ctx, inner, vxlan::INNER_IP_OFFSET, Stat::DecapVxlan, vxlan::decap)
}

#[inline(always)]
fn from_ipip(ctx: &TcContext, outer: &Ipv4Hdr, is_fragment: bool) -> Outcome {
    if is_fragment {
        return Err(Stat::DropTunnelFragment);
    }
    tunnel::check_peer(outer.src, peer_flags::IPIP)?;
    let inner: Ipv4Hdr = read(ctx, ipip::INNER_IP_OFFSET)?;
    deliver(ctx, inner, ipip::INNER_IP_OFFSET, Stat::DecapIpip, ipip::decap)
}

/// Decapsulates and delivers the inner packet: into the pod it is for, or to the kernel.
#[inline(always)]
fn deliver(
    ctx: &TcContext,
    mut inner: Ipv4Hdr,
    inner_offset: usize,
    stat: Stat,
    decap: fn(&TcContext) -> Result<(), Stat>,
) -> Outcome {
    if inner.version() != 4 || inner.ihl() < IPV4_IHL_MIN {
        return Err(Stat::DropMalformed);
    }
    // The inner packet must fit what arrived (its header inside its length, its length inside the
    // frame): the stack would drop a cut-short one anyway, and it is no decapsulation to count.
    let inner_len = usize::from(u16::from_be_bytes(inner.tot_len));
    let available = (ctx.len() as usize).saturating_sub(inner_offset);
    if usize::from(inner.ihl()) * 4 > inner_len || inner_len > available {
        return Err(Stat::DropMalformed);
    }
    let route = route::lookup(inner.dst);
    if let Some(route) = route {
        if route.kind == route_kind::LOCAL_BLOCK {
            return Err(Stat::DropBlackhole);
        }
        if route.kind == route_kind::LOCAL_WORKLOAD && inner.ihl() == IPV4_IHL_MIN {
            decap(ctx)?;
            // A host of another node opening a flow to this pod: its replies stay untranslated.
            nat::note_towards_pod(ctx, &inner);
            route::decrement_ttl(ctx, IP_OFFSET, &mut inner)?;
            return route::to_workload(ctx, &route, stat);
        }
    }
    // For the host itself (or with IP options): the kernel routes the inner packet.
    decap(ctx)?;
    Ok(Verdict { action: TC_ACT_OK as i32, stat })
}

/// Encapsulates the host's own packets to pods on other nodes, on their way out of the uplink.
///
/// The kernel routes such packets `via <node> dev <uplink> onlink` (the agent's host routes), so
/// they arrive here with the right Ethernet addresses for the outer header already; pods' packets
/// were encapsulated at their own interface and pass through untouched.
#[inline(always)]
pub fn to_uplink(ctx: &TcContext) -> Outcome {
    let Ok(eth) = read::<EthHdr>(ctx, 0) else {
        return Ok(unchanged());
    };
    if eth.ether_type() != ETH_P_IP {
        return Ok(unchanged());
    }
    let Ok(ip) = read::<Ipv4Hdr>(ctx, IP_OFFSET) else {
        return Ok(unchanged());
    };
    if ip.version() != 4 || ip.ihl() != IPV4_IHL_MIN {
        return Ok(unchanged());
    }
    let Some(route) = route::lookup(ip.dst) else {
        return Ok(unchanged());
    };
    if route.kind != route_kind::REMOTE_BLOCK {
        return Ok(unchanged());
    }
    let Ok(node) = route::node_config() else {
        return Ok(unchanged());
    };
    if route.flags & route_flags::ENCAP_VXLAN != 0 {
        vxlan::encap(ctx, &node, &route, &ip)?;
        Ok(Verdict { action: TC_ACT_OK as i32, stat: Stat::EncapVxlan })
    } else if route.flags & route_flags::ENCAP_IPIP != 0 {
        ipip::encap(ctx, &node, &route, &ip)?;
        Ok(Verdict { action: TC_ACT_OK as i32, stat: Stat::EncapIpip })
    } else {
        Ok(unchanged())
    }
}

/// An egress packet the program leaves as it is.
#[inline(always)]
fn unchanged() -> Verdict {
    Verdict { stat: Stat::EgressUnchanged, ..Verdict::pass() }
}

/// Packets the node's stack sends into a pod (from the host itself, or forwarded from outside):
/// flows opened from outside the pools are remembered so the pod's replies leave untranslated.
#[inline(always)]
pub fn to_workload(ctx: &TcContext) -> Outcome {
    let Ok(eth) = read::<EthHdr>(ctx, 0) else {
        return Ok(unchanged());
    };
    if eth.ether_type() != ETH_P_IP {
        return Ok(unchanged());
    }
    let Ok(ip) = read::<Ipv4Hdr>(ctx, IP_OFFSET) else {
        return Ok(unchanged());
    };
    if ip.version() == 4 {
        nat::note_towards_pod(ctx, &ip);
    }
    Ok(unchanged())
}
