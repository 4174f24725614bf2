//! `from_uplink`: packets arriving on the node's uplink. Tunnel packets from known peers are
//! decapsulated and delivered; everything else belongs to the kernel.

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use dataplane_common::{
    net::{ETH_P_IP, IPV4_IHL_MIN},
    route_flags, route_kind, Stat,
};

use crate::{
    ipip, nat,
    packet::{read, EthHdr, Ipv4Hdr},
    route::{self, IP_OFFSET},
    tunnel::{self, Arrival},
    verdict::{Outcome, Verdict},
    vxlan,
};

/// Decapsulates VXLAN and IP-in-IP addressed to this node from its peers.
#[inline(always)]
pub fn from_uplink(ctx: &TcContext) -> Outcome {
    // Without a configuration the agent has not started: leave the host's traffic alone.
    let Ok(node) = route::node_config() else {
        return Ok(Verdict::pass());
    };
    match tunnel::classify(ctx, &node)? {
        Arrival::Pass => Ok(Verdict::pass()),
        // Replies to pods' translated flows, or the host's own traffic.
        Arrival::ToNode(outer) => nat::inbound(ctx, &node, &outer),
        Arrival::Vxlan(inner) => deliver(ctx, inner, Stat::DecapVxlan, vxlan::decap),
        Arrival::Ipip(inner) => deliver(ctx, inner, Stat::DecapIpip, ipip::decap),
        Arrival::VxlanFragment => Ok(Verdict { stat: Stat::PassTunnelFragment, ..Verdict::pass() }),
    }
}

/// Decapsulates and delivers the inner packet (checked by `tunnel::classify`): into the pod it
/// is for, or to the kernel.
#[inline(always)]
pub fn deliver(ctx: &TcContext, mut inner: Ipv4Hdr, stat: Stat, decap: fn(&TcContext) -> Result<(), Stat>) -> Outcome {
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
