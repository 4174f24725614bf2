//! `from_workload`: every packet a pod sends, seen at TC ingress of its host-side interface.

use aya_ebpf::programs::TcContext;
use dataplane_common::{
    net::{
        CALICO_VXLAN_PORT, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, IPIP_ENCAP_LEN, IPPROTO_IPIP, IPPROTO_UDP, IPV4_DF,
        IPV4_FRAG_OFFSET_MASK, IPV4_HLEN, IPV4_IHL_MIN, VXLAN_ENCAP_LEN,
    },
    route_flags, route_kind, workload_slot, NodeConfig, Route, Stat, Workload,
};

use crate::{
    arp, icmp, ipip, ipv6,
    maps::{WORKLOADS, WORKLOAD_SLOTS_ARRAY},
    nat,
    packet::{read, EthHdr, Ipv4Hdr, UdpHdr},
    route::{self, IP_OFFSET},
    verdict::{Outcome, Verdict},
    vxlan,
};

/// Answers ARP for the gateway, drops spoofed sources, and forwards IPv4 by the routes map:
/// into a local pod, encapsulated to the node owning a remote block, or to the kernel.
#[inline(always)]
pub fn from_workload(ctx: &TcContext) -> Outcome {
    // SAFETY: reading a field of this program's own __sk_buff context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let eth: EthHdr = read(ctx, 0)?;
    match eth.ether_type() {
        ETH_P_ARP => return arp::answer_gateway(ctx, ifindex),
        ETH_P_IP => {}
        ETH_P_IPV6 => return ipv6::from_workload(ctx, ifindex),
        // The rest is the kernel's business.
        _ => return Ok(Verdict::pass()),
    }

    let mut ip: Ipv4Hdr = read(ctx, IP_OFFSET)?;
    if ip.version() != 4 || ip.ihl() < IPV4_IHL_MIN {
        return Err(Stat::DropMalformed);
    }
    let Some(workload) = workload_of(ifindex) else { return Err(Stat::DropUnknownWorkload) };
    if ip.src != workload.addr {
        return Err(Stat::DropSpoofedSource);
    }
    // Options are rare and legal: the kernel's router handles them.
    if ip.ihl() != IPV4_IHL_MIN {
        return Ok(Verdict::pass());
    }
    // Read once: the tunnel check, NAT and the remote paths all need it (local delivery does not,
    // so a missing configuration only drops where it matters).
    let node = route::node_config();
    refuse_tunnel_packets(ctx, &ip, &node)?;

    let Some(route) = route::lookup(ip.dst) else {
        // Outside every pool: leaves the cluster, translated if the pod's pool says so (or if
        // the flow was translated when it began).
        let node = node?;
        if ip.dst == node.addr {
            return Ok(Verdict::pass());
        }
        let new_flows = nat::applies(&workload, &ip, &node);
        return nat::outbound(ctx, &node, &mut ip, new_flows);
    };
    match route.kind {
        route_kind::LOCAL_WORKLOAD => {
            route::decrement_ttl(ctx, IP_OFFSET, &mut ip)?;
            route::to_workload(ctx, &route, Stat::DeliveredLocal)
        }
        route_kind::LOCAL_BLOCK => Err(Stat::DropBlackhole),
        route_kind::REMOTE_BLOCK => to_remote_node(ctx, ifindex, &route, &mut ip, &node?),
        _ => Ok(Verdict::pass()),
    }
}

/// The workload behind the interface `ifindex`: from its slot when the slot is tagged with this
/// very ifindex (an array index, no hashing), else from the workloads hash.
#[inline(always)]
fn workload_of(ifindex: u32) -> Option<Workload> {
    if let Some(slot) = WORKLOAD_SLOTS_ARRAY.get(workload_slot(ifindex)) {
        // An empty slot is tagged 0: never a match, even for a context without a device.
        if slot.ifindex == ifindex && ifindex != 0 {
            return Some(slot.workload);
        }
    }
    // SAFETY: the pointer comes from a successful lookup and is read at once.
    WORKLOADS.get_ptr(&ifindex).map(|workload| unsafe { *workload })
}

/// Drops VXLAN and IP-in-IP sent by a pod: SNATed to the node's address, or routed plainly, a
/// receiving node would take them for this node's own tunnel traffic and deliver whatever inner
/// packet the pod wrote (with any source). Pods have no business sending the cluster's tunnels.
#[inline(always)]
fn refuse_tunnel_packets(ctx: &TcContext, ip: &Ipv4Hdr, node: &Result<NodeConfig, Stat>) -> Result<(), Stat> {
    // A later fragment has no header to tell; its first fragment was refused already.
    if ip.frag_off() & IPV4_FRAG_OFFSET_MASK != 0 {
        return Ok(());
    }
    match ip.protocol {
        IPPROTO_IPIP => Err(Stat::DropTunnelFromWorkload),
        IPPROTO_UDP => {
            // A datagram too short for its header is the kernel's to judge.
            let Ok(udp) = read::<UdpHdr>(ctx, IP_OFFSET + IPV4_HLEN) else { return Ok(()) };
            let vxlan_port = node.as_ref().map(|node| node.vxlan_port).unwrap_or(CALICO_VXLAN_PORT);
            if u16::from_be_bytes(udp.dst_port) == vxlan_port {
                return Err(Stat::DropTunnelFromWorkload);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Forwards to the node that owns the destination's block, as the pool's mode says.
#[inline(always)]
fn to_remote_node(ctx: &TcContext, ifindex: u32, route: &Route, ip: &mut Ipv4Hdr, node: &NodeConfig) -> Outcome {
    let encap_len = if route.flags & route_flags::ENCAP_VXLAN != 0 {
        VXLAN_ENCAP_LEN
    } else if route.flags & route_flags::ENCAP_IPIP != 0 {
        IPIP_ENCAP_LEN
    } else {
        0
    };
    // A GSO packet is cut to the MTU later; a single packet too big for the tunnel with DF set
    // gets the ICMP error that path-MTU discovery waits for.
    // SAFETY: reading a field of this program's own __sk_buff context.
    let is_gso = unsafe { (*ctx.skb.skb).gso_size } != 0;
    let len = usize::from(u16::from_be_bytes(ip.tot_len));
    let fits = len + encap_len <= node.uplink_mtu as usize;
    if !fits && !is_gso && ip.frag_off() & IPV4_DF != 0 {
        let mtu = (node.uplink_mtu as usize).saturating_sub(encap_len) as u16;
        return icmp::frag_needed(ctx, ifindex, ip, mtu);
    }
    route::decrement_ttl(ctx, IP_OFFSET, ip)?;
    if route.flags & route_flags::ENCAP_VXLAN != 0 {
        vxlan::encap(ctx, node, route, ip)?;
        route::to_uplink(node, Stat::EncapVxlan)
    } else if route.flags & route_flags::ENCAP_IPIP != 0 {
        ipip::encap(ctx, node, route, ip)?;
        route::to_uplink(node, Stat::EncapIpip)
    } else {
        route::to_next_hop(node, route.node_addr, Stat::RoutedPlain)
    }
}
