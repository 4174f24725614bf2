//! Route lookup and forwarding: the LPM trie of prefixes, TTL, delivery into a workload and plain
//! routing to another node.

use aya_ebpf::{
    bindings::{bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1, TC_ACT_REDIRECT},
    btf_maps::lpm_trie::Key,
    helpers::{bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
};
use dataplane_common::{
    net::{AF_INET, ETH_HLEN, ETH_P_IP, GATEWAY_MAC},
    Ipv4Bytes, NodeConfig, Route, Stat,
};

use crate::{
    csum,
    maps::{NODE, ROUTES},
    packet::{write, EthHdr, Ipv4Hdr},
    verdict::{Outcome, Verdict},
};

/// Bits in an IPv4 address: the prefix length of a host lookup.
const IPV4_HOST_PREFIX: u32 = 32;

/// The longest-prefix route for `dst`, if any.
#[inline(always)]
pub fn lookup(dst: Ipv4Bytes) -> Option<Route> {
    ROUTES.get(&Key::new(IPV4_HOST_PREFIX, dst)).copied()
}

/// This node's configuration; until the agent has written it the fast path drops what it owns.
#[inline(always)]
pub fn node_config() -> Result<NodeConfig, Stat> {
    match NODE.get(0) {
        Some(node) if node.addr != [0; 4] => Ok(*node),
        _ => Err(Stat::DropNoNodeConfig),
    }
}

/// Decrements the TTL of `ip` as a router does, updating its checksum incrementally; the caller
/// writes the header (or [`decrement_ttl`] writes the changed bytes).
#[inline(always)]
pub fn forward(ip: &mut Ipv4Hdr) -> Result<(), Stat> {
    if ip.ttl <= 1 {
        return Err(Stat::DropTtlExceeded);
    }
    // TTL and protocol share one 16-bit word of the checksum.
    let before = [ip.ttl, ip.protocol];
    ip.ttl -= 1;
    ip.check = csum::update(ip.check, &before, &[ip.ttl, ip.protocol]);
    Ok(())
}

/// TTL, protocol and header checksum: the four bytes of an IPv4 header a router changes.
#[repr(C)]
#[derive(Clone, Copy)]
struct TtlToCheck {
    ttl: u8,
    protocol: u8,
    check: [u8; 2],
}

/// [`forward`] for the IPv4 header at `offset`, writing only the bytes that change.
#[inline(always)]
pub fn decrement_ttl(ctx: &TcContext, offset: usize, ip: &mut Ipv4Hdr) -> Result<(), Stat> {
    forward(ip)?;
    let changed = TtlToCheck { ttl: ip.ttl, protocol: ip.protocol, check: ip.check };
    write(ctx, offset + core::mem::offset_of!(Ipv4Hdr, ttl), &changed)
}

/// Delivers the (plain IPv4) packet into the local workload of `route`: straight into the pod's
/// namespace with `bpf_redirect_peer`, as if the gateway 169.254.1.1 had sent it.
#[inline(always)]
pub fn to_workload(ctx: &TcContext, route: &Route, stat: Stat) -> Outcome {
    let eth = EthHdr { dst: route.mac, src: GATEWAY_MAC, ether_type: ETH_P_IP.to_be_bytes() };
    write(ctx, 0, &eth)?;
    // SAFETY: a BPF helper call with plain integer arguments.
    let action = unsafe { bpf_redirect_peer(route.ifindex, 0) };
    redirected(action, stat)
}

/// Sends the packet out of the uplink to `next_hop`, which must be on-link; the kernel's
/// neighbour table supplies the MACs.
#[inline(always)]
pub fn to_next_hop(node: &NodeConfig, next_hop: Ipv4Bytes, stat: Stat) -> Outcome {
    let mut params = bpf_redir_neigh {
        nh_family: AF_INET,
        __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 { ipv4_nh: u32::from_ne_bytes(next_hop) },
    };
    // SAFETY: `params` lives on the stack for the duration of the call, with its true size.
    let action = unsafe {
        bpf_redirect_neigh(node.uplink_ifindex, &mut params, core::mem::size_of::<bpf_redir_neigh>() as i32, 0)
    };
    redirected(action, stat)
}

/// Sends an encapsulated packet out of the uplink; the kernel's FIB picks the next hop for the
/// outer destination (the peer itself, or a router in CrossSubnet setups).
#[inline(always)]
pub fn to_uplink(node: &NodeConfig, stat: Stat) -> Outcome {
    // SAFETY: a NULL `params` with length 0 asks the kernel for a FIB lookup.
    let action = unsafe { bpf_redirect_neigh(node.uplink_ifindex, core::ptr::null_mut(), 0, 0) };
    redirected(action, stat)
}

/// Offset of the IPv4 header in a plain (not encapsulated) frame.
pub const IP_OFFSET: usize = ETH_HLEN;

/// The outcome of a redirect helper's `action`: `stat` when it redirected, else a counted drop.
#[inline(always)]
pub fn redirected(action: i64, stat: Stat) -> Outcome {
    if action == i64::from(TC_ACT_REDIRECT) {
        Ok(Verdict { action: action as i32, stat })
    } else {
        Err(Stat::DropRedirectFailed)
    }
}
