//! IPv6 from a pod, with the decisions IPv4 takes (anti-spoofing, local delivery, the local
//! block's blackhole, the pools' routes) read from the IPv6 maps.
//!
//! A workload gets the IPv6 fast path only once the agent has written its IPv6 address; until
//! then its IPv6 is the kernel's, as it was before dual-stack. The fast path decides on the
//! addresses alone, as a router does: extension headers and fragments are forwarded as they are,
//! except Hop-by-Hop options, which every router must read (the kernel does).

use aya_ebpf::{
    bindings::{bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1},
    btf_maps::lpm_trie::Key,
    helpers::{bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
};
use dataplane_common::{
    net::{AF_INET6, ETH_HLEN, ETH_P_IPV6, GATEWAY_MAC, IPPROTO_HOPOPTS, IPPROTO_ICMPV6, IPV6_HLEN},
    route_flags, route_kind, Ipv6Bytes, NodeConfig, Route6, Stat, Workload6,
};

use crate::{
    csum,
    maps::{ROUTES6, WORKLOADS6},
    ndp,
    packet::{read, write, EthHdr},
    route,
    verdict::{Outcome, Verdict},
};

/// Offset of the IPv6 header in a plain (not encapsulated) frame.
pub const IPV6_OFFSET: usize = ETH_HLEN;
/// Offset of what follows the fixed IPv6 header of a plain frame.
pub const IPV6_PAYLOAD_OFFSET: usize = IPV6_OFFSET + IPV6_HLEN;
/// Bits in an IPv6 address: the prefix length of a host lookup.
const IPV6_HOST_PREFIX: u32 = 128;
/// The IP version an IPv6 header carries.
const IPV6_VERSION: u8 = 6;

/// The fixed IPv6 header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    /// Version (6), traffic class and flow label.
    pub version_class_flow: [u8; 4],
    /// Length of what follows this header, network order.
    pub payload_len: [u8; 2],
    /// What follows: an extension header or the transport.
    pub next_header: u8,
    /// Hop limit (IPv4's TTL).
    pub hop_limit: u8,
    /// Source address.
    pub src: Ipv6Bytes,
    /// Destination address.
    pub dst: Ipv6Bytes,
}
const _: () = assert!(core::mem::size_of::<Ipv6Hdr>() == IPV6_HLEN);

impl Ipv6Hdr {
    /// The IP version field.
    pub fn version(&self) -> u8 {
        self.version_class_flow[0] >> 4
    }

    /// The payload length as a number.
    pub fn payload_len(&self) -> usize {
        usize::from(u16::from_be_bytes(self.payload_len))
    }
}

/// Forwards a pod's IPv6 by the IPv6 routes map, as `from_workload` does IPv4.
#[inline(always)]
pub fn from_workload(ctx: &TcContext, ifindex: u32) -> Outcome {
    let Some(workload) = workload_of(ifindex) else {
        return Ok(Verdict { stat: Stat::PassIpv6NoAddress, ..Verdict::pass() });
    };
    let ip: Ipv6Hdr = read(ctx, IPV6_OFFSET)?;
    if ip.version() != IPV6_VERSION {
        return Err(Stat::DropMalformed);
    }
    // A payload cut short of its stated length is no packet to forward.
    let available = (ctx.len() as usize).saturating_sub(IPV6_PAYLOAD_OFFSET);
    if ip.payload_len() > available {
        return Err(Stat::DropMalformed);
    }
    if ip.next_header == IPPROTO_ICMPV6 {
        if let Some(outcome) = ndp::neighbour_discovery(ctx, ifindex, &ip) {
            return outcome;
        }
    }
    // Link-local and unspecified sources only speak to the host on this link.
    if is_link_local(&ip.src) || ip.src == [0; 16] {
        return Ok(Verdict { stat: Stat::PassIpv6LinkScope, ..Verdict::pass() });
    }
    if ip.src != workload.addr {
        return Err(Stat::DropSpoofedSource);
    }
    // Multicast is the host's to answer (nodes run no multicast router), link-local its own.
    if is_link_local(&ip.dst) || is_multicast(&ip.dst) {
        return Ok(Verdict { stat: Stat::PassIpv6LinkScope, ..Verdict::pass() });
    }
    if ip.next_header == IPPROTO_HOPOPTS {
        return Ok(Verdict { stat: Stat::PassIpv6HopByHop, ..Verdict::pass() });
    }

    // Outside every pool: the kernel's (natOutgoing for IPv6 is not in the fast path yet).
    let Some(route) = lookup(&ip.dst) else { return Ok(Verdict::pass()) };
    match route.kind {
        route_kind::LOCAL_WORKLOAD => {
            decrement_hop_limit(ctx, &ip)?;
            to_workload(ctx, &route)
        }
        route_kind::LOCAL_BLOCK => Err(Stat::DropBlackhole),
        route_kind::REMOTE_BLOCK => to_remote_node(ctx, &route, &ip),
        _ => Ok(Verdict::pass()),
    }
}

/// The IPv6 side of the workload behind the interface `ifindex`, if the agent wrote one.
#[inline(always)]
fn workload_of(ifindex: u32) -> Option<Workload6> {
    // SAFETY: the pointer comes from a successful lookup and is read at once.
    WORKLOADS6.get_ptr(&ifindex).map(|workload| unsafe { *workload })
}

/// The longest-prefix IPv6 route for `dst`, if any.
#[inline(always)]
pub fn lookup(dst: &Ipv6Bytes) -> Option<Route6> {
    ROUTES6.get(&Key::new(IPV6_HOST_PREFIX, *dst)).copied()
}

/// fe80::/10.
#[inline(always)]
fn is_link_local(addr: &Ipv6Bytes) -> bool {
    addr[0] == 0xfe && addr[1] & 0xc0 == 0x80
}

/// ff00::/8.
#[inline(always)]
fn is_multicast(addr: &Ipv6Bytes) -> bool {
    addr[0] == 0xff
}

/// Decrements the hop limit as a router does (IPv6 has no header checksum to update).
#[inline(always)]
fn decrement_hop_limit(ctx: &TcContext, ip: &Ipv6Hdr) -> Result<(), Stat> {
    if ip.hop_limit <= 1 {
        return Err(Stat::DropTtlExceeded);
    }
    write(ctx, IPV6_OFFSET + core::mem::offset_of!(Ipv6Hdr, hop_limit), &(ip.hop_limit - 1))
}

/// Delivers the packet into the local workload of `route`, as if the gateway had sent it.
#[inline(always)]
fn to_workload(ctx: &TcContext, route: &Route6) -> Outcome {
    let eth = EthHdr { dst: route.mac, src: GATEWAY_MAC, ether_type: ETH_P_IPV6.to_be_bytes() };
    write(ctx, 0, &eth)?;
    // SAFETY: a BPF helper call with plain integer arguments.
    let action = unsafe { bpf_redirect_peer(route.ifindex, 0) };
    route::redirected(action, Stat::DeliveredLocal)
}

/// Forwards to the node that owns the destination's block: plainly in a Never pool; VXLAN over
/// IPv6 is not in the fast path yet, and IP-in-IP is IPv4 only (Calico skips such IPv6 pools),
/// so both are left to the kernel.
#[inline(always)]
fn to_remote_node(ctx: &TcContext, route: &Route6, ip: &Ipv6Hdr) -> Outcome {
    if route.flags & (route_flags::ENCAP_VXLAN | route_flags::ENCAP_IPIP) != 0 {
        return Ok(Verdict::pass());
    }
    let node = route::node_config()?;
    decrement_hop_limit(ctx, ip)?;
    to_next_hop(&node, &route.node_addr)
}

/// Sends the packet out of the uplink to the on-link `next_hop`; the kernel's neighbour table
/// supplies the MACs.
#[inline(always)]
fn to_next_hop(node: &NodeConfig, next_hop: &Ipv6Bytes) -> Outcome {
    let mut words = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        words[i] = u32::from_ne_bytes([next_hop[4 * i], next_hop[4 * i + 1], next_hop[4 * i + 2], next_hop[4 * i + 3]]);
        i += 1;
    }
    let mut params =
        bpf_redir_neigh { nh_family: AF_INET6, __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 { ipv6_nh: words } };
    // SAFETY: `params` lives on the stack for the duration of the call, with its true size.
    let action = unsafe {
        bpf_redirect_neigh(node.uplink_ifindex, &mut params, core::mem::size_of::<bpf_redir_neigh>() as i32, 0)
    };
    route::redirected(action, Stat::RoutedPlain)
}

/// The one's-complement sum of the IPv6 pseudo-header (RFC 8200 8.1) that ICMPv6, UDP and TCP
/// checksums start from.
#[inline(always)]
pub fn pseudo_header_sum(src: &Ipv6Bytes, dst: &Ipv6Bytes, upper_len: u32, next_header: u8) -> u32 {
    csum::sum_words(src) + csum::sum_words(dst) + (upper_len >> 16) + (upper_len & 0xffff) + u32::from(next_header)
}
