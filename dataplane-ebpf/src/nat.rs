//! SNAT for pods of natOutgoing pools, and the reverse translation of their replies.
//!
//! Outbound (from_workload): a pod's packet to an address outside every pool gets the node's
//! address and a tracked port, and leaves by the uplink directly (handing it to the stack would
//! have it dropped as a martian: its source is now a local address). Inbound (from_uplink): a
//! packet to the node that matches a tracked flow gets the pod's address and port back and is
//! delivered into the pod. Checksums are fixed incrementally, so offloaded (partial) checksums and
//! GSO packets stay valid.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use dataplane_common::{
    net::{
        ICMP_CSUM_OFFSET, ICMP_DEST_UNREACH, ICMP_ECHO_ID_OFFSET, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_HLEN,
        ICMP_TIME_EXCEEDED, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPV4_FRAG_OFFSET_MASK, IPV4_HLEN, IPV4_IHL_MIN,
        TCP_ACK, TCP_CSUM_OFFSET, TCP_FLAGS_OFFSET, TCP_SYN, UDP_CSUM_OFFSET,
    },
    route_flags, route_kind, workload_flags, FlowKey, NodeConfig, Route, Stat, Workload, FLOW_INBOUND, FLOW_OUTBOUND,
};

use crate::{
    conntrack::{self, Flow},
    csum, fragment,
    maps::POOLS,
    packet::{read, write, Ipv4Hdr},
    route::{self, IP_OFFSET},
    verdict::{Outcome, Verdict},
};

/// Offset of the transport header (the fast path only handles IHL 5).
const L4_OFFSET: usize = IP_OFFSET + IPV4_HLEN;

/// Where a packet's translatable fields are.
#[derive(Clone, Copy)]
struct Transport {
    flow: Flow,
    /// Offset of the transport checksum.
    csum_offset: usize,
    /// Offsets of the source and destination ports (or of the echo identifier for both).
    src_port_offset: usize,
    dst_port_offset: usize,
    /// Whether the checksum covers the pseudo-header (TCP, UDP) or not (ICMP).
    pseudo_header: bool,
    /// UDP: a zero checksum means "none" and must stay zero.
    zero_means_none: bool,
}

/// Reads the transport identity of an IHL-5 packet: TCP, UDP, or ICMP echo. Anything else has
/// nothing to translate (None).
#[inline(always)]
fn transport(ctx: &TcContext, ip: &Ipv4Hdr) -> Result<Option<Transport>, Stat> {
    let mut flow = Flow { src: ip.src, dst: ip.dst, src_port: 0, dst_port: 0, protocol: ip.protocol, tcp_flags: 0 };
    match ip.protocol {
        IPPROTO_TCP => {
            let head: [u8; 20] = read(ctx, L4_OFFSET)?;
            flow.src_port = u16::from_be_bytes([head[0], head[1]]);
            flow.dst_port = u16::from_be_bytes([head[2], head[3]]);
            flow.tcp_flags = head[TCP_FLAGS_OFFSET];
            Ok(Some(Transport {
                flow,
                csum_offset: L4_OFFSET + TCP_CSUM_OFFSET,
                src_port_offset: L4_OFFSET,
                dst_port_offset: L4_OFFSET + 2,
                pseudo_header: true,
                zero_means_none: false,
            }))
        }
        IPPROTO_UDP => {
            let head: [u8; 8] = read(ctx, L4_OFFSET)?;
            flow.src_port = u16::from_be_bytes([head[0], head[1]]);
            flow.dst_port = u16::from_be_bytes([head[2], head[3]]);
            Ok(Some(Transport {
                flow,
                csum_offset: L4_OFFSET + UDP_CSUM_OFFSET,
                src_port_offset: L4_OFFSET,
                dst_port_offset: L4_OFFSET + 2,
                pseudo_header: true,
                zero_means_none: true,
            }))
        }
        IPPROTO_ICMP => {
            let head: [u8; 8] = read(ctx, L4_OFFSET)?;
            let id = u16::from_be_bytes([head[ICMP_ECHO_ID_OFFSET], head[ICMP_ECHO_ID_OFFSET + 1]]);
            // Requests carry the identifier as their "source port", replies as their "destination".
            match head[0] {
                ICMP_ECHO_REQUEST => flow.src_port = id,
                ICMP_ECHO_REPLY => flow.dst_port = id,
                _ => return Ok(None),
            }
            Ok(Some(Transport {
                flow,
                csum_offset: L4_OFFSET + ICMP_CSUM_OFFSET,
                src_port_offset: L4_OFFSET + ICMP_ECHO_ID_OFFSET,
                dst_port_offset: L4_OFFSET + ICMP_ECHO_ID_OFFSET,
                pseudo_header: false,
                zero_means_none: false,
            }))
        }
        _ => Ok(None),
    }
}

/// Rewrites one address and one port of the packet, fixing the transport checksum; the IPv4
/// header (with its checksum) is written by the caller.
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    t: &Transport,
    old_addr: [u8; 4],
    new_addr: [u8; 4],
    port_offset: usize,
    old_port: u16,
    new_port: u16,
) -> Result<(), Stat> {
    let mangled = if t.zero_means_none { u64::from(BPF_F_MARK_MANGLED_0) } else { 0 };
    if t.pseudo_header {
        ctx.l4_csum_replace(
            t.csum_offset,
            u64::from(u32::from_ne_bytes(old_addr)),
            u64::from(u32::from_ne_bytes(new_addr)),
            u64::from(BPF_F_PSEUDO_HDR) | mangled | 4,
        )
        .map_err(|_| Stat::DropPacketAccess)?;
    }
    if old_port != new_port {
        let (old, new) = (old_port.to_be_bytes(), new_port.to_be_bytes());
        ctx.l4_csum_replace(
            t.csum_offset,
            u64::from(u16::from_ne_bytes(old)),
            u64::from(u16::from_ne_bytes(new)),
            mangled | 2,
        )
        .map_err(|_| Stat::DropPacketAccess)?;
        write(ctx, port_offset, &new)?;
    }
    Ok(())
}

/// Whether a packet can open a flow: a TCP SYN (without ACK), any UDP datagram, an echo request.
/// An echo reply or a TCP segment of no known flow is a reply to something else.
#[inline(always)]
fn opens_flow(t: &Transport) -> bool {
    match t.flow.protocol {
        IPPROTO_TCP => t.flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
        // Requests carry their identifier as the source port; replies as the destination.
        IPPROTO_ICMP => t.flow.dst_port == 0,
        _ => true,
    }
}

/// Remembers a packet arriving at a local pod from outside the pools, so the pod's replies to it
/// are not translated. Called where such packets enter pods (decapsulation, the pod's interface).
#[inline(always)]
pub fn note_towards_pod(ctx: &TcContext, ip: &Ipv4Hdr) {
    if in_pool(ip.src) || ip.frag_off() & IPV4_FRAG_OFFSET_MASK != 0 || ip.ihl() != IPV4_IHL_MIN {
        return;
    }
    if let Ok(Some(t)) = transport(ctx, ip) {
        conntrack::note_towards_pod(&t.flow, conntrack::now());
    }
}

/// Whether `addr` lies in an IP pool: a few compares against the pools map, or (with more pools
/// than it holds) whether the route covering it has the in-pool flag, a second trie lookup.
#[inline(always)]
fn in_pool(addr: [u8; 4]) -> bool {
    if let Some(answer) = POOLS.get(0).and_then(|pools| pools.contain(addr)) {
        return answer;
    }
    route::lookup(addr).is_some_and(|route| route.flags & route_flags::IN_POOL != 0)
}

/// Whether a packet from `workload` to `ip.dst` (which matched no route) is SNATed: its pool has
/// natOutgoing (a flag the agent copies into the workload entry) and the destination is not this
/// node.
#[inline(always)]
pub fn applies(workload: &Workload, ip: &Ipv4Hdr, node: &NodeConfig) -> bool {
    workload.flags & workload_flags::NAT_OUTGOING != 0 && ip.dst != node.addr
}

/// Translates a pod's packet leaving the cluster to the node's address and sends it out of the
/// uplink. A flow already translated stays translated for its whole life; a new flow is only
/// translated when `new_flows` (its pool has natOutgoing now), else it goes to the stack as is.
#[inline(always)]
pub fn outbound(ctx: &TcContext, node: &NodeConfig, ip: &mut Ipv4Hdr, new_flows: bool) -> Outcome {
    if fragment::is_later(ip) {
        return outbound_later_fragment(ctx, node, ip, new_flows);
    }
    let Some(t) = transport(ctx, ip)? else {
        return Ok(Verdict::pass());
    };
    let now = conntrack::now();
    let (flow, stat) = match conntrack::live(&t.flow.key(FLOW_OUTBOUND), now, node) {
        Some(entry) if entry.nat_addr == node.addr => {
            conntrack::touch(entry, t.flow.tcp_flags, false, now);
            (*entry, Stat::SnatEstablished)
        }
        _ if new_flows && opens_flow(&t) && !conntrack::opened_towards_pod(&t.flow, node, now) => {
            (conntrack::create(ctx, &t.flow, node, now)?, Stat::SnatNew)
        }
        // A reply on a connection someone outside opened to the pod, or a packet that cannot
        // open one: it leaves as it is.
        _ => return Ok(Verdict::pass()),
    };
    if fragment::is_first(ip) {
        fragment::remember(ip, FLOW_OUTBOUND, flow.nat_addr, now);
    }
    rewrite(ctx, &t, ip.src, flow.nat_addr, t.src_port_offset, flow.pod_port, flow.nat_port)?;
    ip.check = csum::update(ip.check, &ip.src, &flow.nat_addr);
    ip.src = flow.nat_addr;
    route::forward(ip)?;
    write(ctx, IP_OFFSET, ip)?;
    route::to_uplink(node, stat)
}

/// A later fragment of a pod's datagram: the source its first fragment got (the transport
/// checksum, which covers the whole datagram, was fixed in the first fragment). One whose first
/// fragment was not seen is dropped if it could belong to a translated flow (see
/// `Stat::DropNatFragment`); from a pool without natOutgoing it goes to the stack as it is.
#[inline(always)]
fn outbound_later_fragment(ctx: &TcContext, node: &NodeConfig, ip: &mut Ipv4Hdr, new_flows: bool) -> Outcome {
    let Some(nat_addr) = fragment::translation(ip, FLOW_OUTBOUND, conntrack::now()) else {
        return if new_flows { Err(Stat::DropNatFragment) } else { Ok(Verdict::pass()) };
    };
    ip.check = csum::update(ip.check, &ip.src, &nat_addr);
    ip.src = nat_addr;
    route::forward(ip)?;
    write(ctx, IP_OFFSET, ip)?;
    route::to_uplink(node, Stat::SnatFragment)
}

/// Translates a reply to a tracked flow back to the pod and delivers it; packets of no tracked
/// flow are the host's own and go to the stack.
#[inline(always)]
pub fn inbound(ctx: &TcContext, node: &NodeConfig, ip: &Ipv4Hdr) -> Outcome {
    if fragment::is_later(ip) {
        return inbound_later_fragment(ctx, ip);
    }
    if ip.protocol == IPPROTO_ICMP {
        let kind: u8 = read(ctx, L4_OFFSET)?;
        if kind == ICMP_DEST_UNREACH || kind == ICMP_TIME_EXCEEDED {
            return icmp_error_inbound(ctx, ip);
        }
    }
    let Some(t) = transport(ctx, ip)? else {
        return Ok(Verdict::pass());
    };
    let Some(reverse) = conntrack::lookup(&t.flow.key(FLOW_INBOUND)) else {
        return Ok(Verdict::pass());
    };
    // Age and state live on the outbound entry.
    let now = conntrack::now();
    match conntrack::live(&conntrack::outbound_key(&reverse), now, node) {
        Some(entry) => conntrack::touch(entry, t.flow.tcp_flags, true, now),
        None => return Ok(Verdict::pass()),
    }
    let Some(route) = route::lookup(reverse.pod_addr) else {
        return Ok(Verdict::pass());
    };
    if route.kind != route_kind::LOCAL_WORKLOAD {
        return Ok(Verdict::pass());
    }
    if fragment::is_first(ip) {
        fragment::remember(ip, FLOW_INBOUND, reverse.pod_addr, now);
    }
    rewrite(ctx, &t, ip.dst, reverse.pod_addr, t.dst_port_offset, reverse.nat_port, reverse.pod_port)?;
    deliver_to_pod(ctx, ip, reverse.pod_addr, &route, Stat::ReverseNat)
}

/// A later fragment of a reply: the pod's address its first fragment got, and into the pod. One
/// of no datagram the table knows is the host's own (or its first fragment was not seen): the
/// kernel reassembles it.
#[inline(always)]
fn inbound_later_fragment(ctx: &TcContext, ip: &Ipv4Hdr) -> Outcome {
    let untracked = Verdict { stat: Stat::PassUntrackedFragment, ..Verdict::pass() };
    let Some(pod_addr) = fragment::translation(ip, FLOW_INBOUND, conntrack::now()) else {
        return Ok(untracked);
    };
    match route::lookup(pod_addr) {
        Some(route) if route.kind == route_kind::LOCAL_WORKLOAD => {
            deliver_to_pod(ctx, ip, pod_addr, &route, Stat::ReverseNatFragment)
        }
        // The pod left since the first fragment: the kernel has no use for the rest either.
        _ => Ok(untracked),
    }
}

/// Gives a reply the pod's address as its destination (the transport header, if any, is done)
/// and delivers it into the pod.
#[inline(always)]
fn deliver_to_pod(ctx: &TcContext, ip: &Ipv4Hdr, pod_addr: [u8; 4], route: &Route, stat: Stat) -> Outcome {
    let mut ip = *ip;
    ip.check = csum::update(ip.check, &ip.dst, &pod_addr);
    ip.dst = pod_addr;
    route::forward(&mut ip)?;
    write(ctx, IP_OFFSET, &ip)?;
    route::to_workload(ctx, route, stat)
}

/// Offset of the IPv4 header an ICMP error quotes.
const QUOTED_IP_OFFSET: usize = L4_OFFSET + ICMP_HLEN;
/// Offset of the transport header an ICMP error quotes (the quoted header has IHL 5: we sent it).
const QUOTED_L4_OFFSET: usize = QUOTED_IP_OFFSET + IPV4_HLEN;

/// Translates an ICMP error about a translated flow (fragmentation needed, unreachable, time
/// exceeded) back to the pod: the error's destination, and the quoted packet's source address and
/// port, with the quoted header's checksum and the ICMP checksum fixed; then delivers it.
#[inline(always)]
fn icmp_error_inbound(ctx: &TcContext, ip: &Ipv4Hdr) -> Outcome {
    let Ok(quoted) = read::<Ipv4Hdr>(ctx, QUOTED_IP_OFFSET) else {
        return Ok(Verdict::pass());
    };
    if quoted.version() != 4 || quoted.ihl() != IPV4_IHL_MIN || quoted.src != ip.dst {
        return Ok(Verdict::pass());
    }
    // The quoted packet is one we sent: node -> peer. Its reply would be peer -> node.
    let head: [u8; 8] = read(ctx, QUOTED_L4_OFFSET)?;
    let (src_port, dst_port, port_offset) = match quoted.protocol {
        IPPROTO_TCP | IPPROTO_UDP => {
            (u16::from_be_bytes([head[0], head[1]]), u16::from_be_bytes([head[2], head[3]]), QUOTED_L4_OFFSET)
        }
        IPPROTO_ICMP if head[0] == ICMP_ECHO_REQUEST => (
            u16::from_be_bytes([head[ICMP_ECHO_ID_OFFSET], head[ICMP_ECHO_ID_OFFSET + 1]]),
            0,
            QUOTED_L4_OFFSET + ICMP_ECHO_ID_OFFSET,
        ),
        _ => return Ok(Verdict::pass()),
    };
    let key = FlowKey {
        src: quoted.dst,
        dst: quoted.src,
        src_port: dst_port,
        dst_port: src_port,
        protocol: quoted.protocol,
        direction: FLOW_INBOUND,
        _pad: [0; 2],
    };
    let Some(reverse) = conntrack::lookup(&key) else {
        return Ok(Verdict::pass());
    };
    let Some(route) = route::lookup(reverse.pod_addr) else {
        return Ok(Verdict::pass());
    };
    if route.kind != route_kind::LOCAL_WORKLOAD {
        return Ok(Verdict::pass());
    }

    // The quoted header: source back to the pod, its checksum recomputed.
    let mut inner = quoted;
    inner.src = reverse.pod_addr;
    inner.check = [0; 2];
    inner.check = csum::ipv4_header(&inner);
    let icmp_csum = L4_OFFSET + ICMP_CSUM_OFFSET;
    let replace = |from: u64, to: u64, size: u64| {
        ctx.l4_csum_replace(icmp_csum, from, to, size).map_err(|_| Stat::DropPacketAccess)
    };
    replace(u64::from(u32::from_ne_bytes(quoted.src)), u64::from(u32::from_ne_bytes(inner.src)), 4)?;
    replace(u64::from(u16::from_ne_bytes(quoted.check)), u64::from(u16::from_ne_bytes(inner.check)), 2)?;
    write(ctx, QUOTED_IP_OFFSET, &inner)?;
    let (old_port, new_port) = (reverse.nat_port.to_be_bytes(), reverse.pod_port.to_be_bytes());
    replace(u64::from(u16::from_ne_bytes(old_port)), u64::from(u16::from_ne_bytes(new_port)), 2)?;
    write(ctx, port_offset, &new_port)?;

    let mut outer = *ip;
    outer.check = csum::update(outer.check, &outer.dst, &reverse.pod_addr);
    outer.dst = reverse.pod_addr;
    route::forward(&mut outer)?;
    write(ctx, IP_OFFSET, &outer)?;
    route::to_workload(ctx, &route, Stat::ReverseNat)
}
