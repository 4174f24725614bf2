//! Connection tracking for natOutgoing: the two entries of every translated flow, their state,
//! their timeouts, and the choice of a free port.
//!
//! The outbound entry (keyed by the pod's packets) is authoritative for state and age; the
//! inbound entry (keyed by the replies as they reach the node) exists so a reply finds its flow,
//! and its existence is what reserves the translated port: it is inserted with BPF_NOEXIST, so two
//! pods (or two CPUs) can never be given the same port towards the same peer.

use aya_ebpf::{
    bindings::{bpf_sock_tuple, BPF_ANY, BPF_F_CURRENT_NETNS, BPF_NOEXIST},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp},
    programs::TcContext,
};
use dataplane_common::{
    flow_state,
    net::{IPPROTO_TCP, IPPROTO_UDP, TCP_FIN, TCP_RST},
    FlowKey, NatFlow, NodeConfig, Stat, FLOW_TO_POD,
};

use crate::maps::CONNTRACK;

/// Ports tried for a new flow (its own first): bounded for the verifier, and plenty while the
/// range is far from full.
const PORT_ATTEMPTS: u32 = 32;
/// `-EEXIST` from a map insert: the key is taken.
const EEXIST: i32 = -17;

/// The transport identity of a packet, as conntrack keys it.
#[derive(Clone, Copy)]
pub struct Flow {
    /// Source address.
    pub src: [u8; 4],
    /// Destination address.
    pub dst: [u8; 4],
    /// Source port, or the identifier of an echo request.
    pub src_port: u16,
    /// Destination port, or the identifier of an echo reply.
    pub dst_port: u16,
    /// IP protocol.
    pub protocol: u8,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
}

impl Flow {
    /// The key of this packet's direction.
    pub fn key(&self, direction: u8) -> FlowKey {
        FlowKey {
            src: self.src,
            dst: self.dst,
            src_port: self.src_port,
            dst_port: self.dst_port,
            protocol: self.protocol,
            direction,
            _pad: [0; 2],
        }
    }
}

/// The outbound key of a tracked flow.
#[inline(always)]
pub fn outbound_key(flow: &NatFlow) -> FlowKey {
    flow.outbound_key()
}

/// The inbound key of a tracked flow.
#[inline(always)]
pub fn inbound_key(flow: &NatFlow) -> FlowKey {
    flow.inbound_key()
}

/// Whether `flow` has outlived its timeout at `now`, under this node's configured timeouts
/// (`node.timeouts`, which the callers already hold).
#[inline(always)]
pub fn expired(flow: &NatFlow, now: u64, node: &NodeConfig) -> bool {
    flow.expired_with(now, &node.timeouts)
}

/// The current time on the clock the entries use.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: a BPF helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// The live flow stored under `key`, if any.
#[inline(always)]
pub fn lookup(key: &FlowKey) -> Option<NatFlow> {
    // SAFETY: the pointer comes from a successful lookup and is read at once.
    CONNTRACK.get_ptr(key).map(|flow| unsafe { *flow })
}

/// The entry under `key` in place, if it is there and has not outlived its timeout: the one
/// lookup both for the check and for [`touch`].
#[inline(always)]
pub fn live(key: &FlowKey, now: u64, node: &NodeConfig) -> Option<&'static mut NatFlow> {
    let entry = CONNTRACK.get_ptr_mut(key)?;
    // SAFETY: the pointer comes from a successful lookup and stays valid for the program's run
    // (map values are freed after an RCU grace period); racing CPUs only race on a timestamp.
    let entry = unsafe { &mut *entry };
    if expired(entry, now, node) {
        return None;
    }
    Some(entry)
}

/// Records a packet on a flow's outbound `entry`: age, and the state the TCP flags imply.
#[inline(always)]
pub fn touch(entry: &mut NatFlow, tcp_flags: u8, is_reply: bool, now: u64) {
    entry.last_seen_ns = now;
    if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        entry.state = flow_state::CLOSING;
    } else if is_reply && entry.state == flow_state::NEW {
        entry.state = flow_state::ESTABLISHED;
    }
}

/// The key of a pod's replies to the inbound packet `packet` (outside -> pod), and of the
/// [`FLOW_TO_POD`] entry that remembers it.
#[inline(always)]
fn towards_pod_key(packet: &Flow) -> FlowKey {
    FlowKey {
        src: packet.dst,
        dst: packet.src,
        src_port: packet.dst_port,
        dst_port: packet.src_port,
        protocol: packet.protocol,
        direction: FLOW_TO_POD,
        _pad: [0; 2],
    }
}

/// Remembers (or refreshes) a flow opened from outside the pools towards a pod.
#[inline(always)]
pub fn note_towards_pod(packet: &Flow, now: u64) {
    let key = towards_pod_key(packet);
    if let Some(entry) = CONNTRACK.get_ptr_mut(&key) {
        // SAFETY: the pointer comes from a successful lookup; racing CPUs only race on a timestamp.
        let entry = unsafe { &mut *entry };
        entry.last_seen_ns = now;
        if packet.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            entry.state = flow_state::CLOSING;
        }
        return;
    }
    let flow = NatFlow {
        created_ns: now,
        last_seen_ns: now,
        pod_addr: packet.dst,
        peer_addr: packet.src,
        // Not translated: the pod answers as itself.
        nat_addr: packet.dst,
        pod_port: key.src_port,
        peer_port: key.dst_port,
        nat_port: key.src_port,
        protocol: packet.protocol,
        state: flow_state::ESTABLISHED,
        _pad: [0; 4],
    };
    // A full table only means the reply may be translated: nothing to drop here.
    let _ = CONNTRACK.insert(&key, &flow, u64::from(BPF_ANY));
}

/// Whether the pod's packet `packet` answers a live flow opened from outside towards it.
#[inline(always)]
pub fn opened_towards_pod(packet: &Flow, node: &NodeConfig, now: u64) -> bool {
    // The pod's packet is keyed as it travels: pod -> outside, as the entry is.
    let key = packet.key(FLOW_TO_POD);
    match CONNTRACK.get_ptr_mut(&key) {
        Some(entry) => {
            // SAFETY: the pointer comes from a successful lookup; racing CPUs only race on a timestamp.
            let entry = unsafe { &mut *entry };
            if expired(entry, now, node) {
                return false;
            }
            entry.last_seen_ns = now;
            true
        }
        None => false,
    }
}

/// Tracks a new outbound flow from a pod, translated to the node's address: keeps the pod's own
/// port when it is free towards this peer, else takes a free one from the configured range.
#[inline(always)]
pub fn create(ctx: &TcContext, packet: &Flow, node: &NodeConfig, now: u64) -> Result<NatFlow, Stat> {
    let mut flow = NatFlow {
        created_ns: now,
        last_seen_ns: now,
        pod_addr: packet.src,
        peer_addr: packet.dst,
        nat_addr: node.addr,
        pod_port: packet.src_port,
        peer_port: packet.dst_port,
        nat_port: packet.src_port,
        protocol: packet.protocol,
        state: flow_state::NEW,
        _pad: [0; 4],
    };
    if packet.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        flow.state = flow_state::CLOSING;
    }
    let range = u32::from(node.nat_port_max.saturating_sub(node.nat_port_min)) + 1;
    // SAFETY: a BPF helper without arguments.
    let start = unsafe { bpf_get_prandom_u32() };
    let mut attempt = 0;
    while attempt < PORT_ATTEMPTS {
        if attempt > 0 {
            flow.nat_port = node.nat_port_min + ((start.wrapping_add(attempt)) % range) as u16;
        }
        attempt += 1;
        // The node's own sockets share the address: a port one of them uses is not free.
        if host_socket_holds(ctx, &flow) {
            continue;
        }
        match claim(&flow, node, now) {
            Ok(()) => {
                if CONNTRACK.insert(&outbound_key(&flow), &flow, u64::from(BPF_ANY)).is_err() {
                    let _ = CONNTRACK.remove(&inbound_key(&flow));
                    return Err(Stat::DropConntrackFull);
                }
                return Ok(flow);
            }
            Err(Claim::Taken) => continue,
            Err(Claim::Full) => return Err(Stat::DropConntrackFull),
        }
    }
    Err(Stat::DropNatPortsExhausted)
}

enum Claim {
    Taken,
    Full,
}

/// Reserves `flow`'s translated port by inserting its inbound entry; a port held by an expired
/// flow is reclaimed.
#[inline(always)]
fn claim(flow: &NatFlow, node: &NodeConfig, now: u64) -> Result<(), Claim> {
    let key = inbound_key(flow);
    match CONNTRACK.insert(&key, flow, u64::from(BPF_NOEXIST)) {
        Ok(()) => Ok(()),
        Err(EEXIST) => {
            let Some(holder) = lookup(&key) else { return Err(Claim::Taken) };
            // Age lives on the holder's outbound entry.
            let live = match lookup(&outbound_key(&holder)) {
                Some(current) => !expired(&current, now, node),
                None => false,
            };
            if live {
                return Err(Claim::Taken);
            }
            let _ = CONNTRACK.remove(&outbound_key(&holder));
            let _ = CONNTRACK.remove(&key);
            match CONNTRACK.insert(&key, flow, u64::from(BPF_NOEXIST)) {
                Ok(()) => Ok(()),
                Err(EEXIST) => Err(Claim::Taken),
                Err(_) => Err(Claim::Full),
            }
        }
        Err(_) => Err(Claim::Full),
    }
}

/// The IPv4 part of `struct bpf_sock_tuple`, addresses and ports in network order.
#[repr(C)]
struct Ipv4SockTuple {
    saddr: [u8; 4],
    daddr: [u8; 4],
    sport: [u8; 2],
    dport: [u8; 2],
}

/// Whether a socket of the node itself would receive the replies of `flow` as translated: a
/// reply (peer -> node:nat_port) that the stack would deliver to a local socket.
#[inline(always)]
fn host_socket_holds(ctx: &TcContext, flow: &NatFlow) -> bool {
    let mut tuple = Ipv4SockTuple {
        saddr: flow.peer_addr,
        daddr: flow.nat_addr,
        sport: flow.peer_port.to_be_bytes(),
        dport: flow.nat_port.to_be_bytes(),
    };
    let size = core::mem::size_of::<Ipv4SockTuple>() as u32;
    let tuple = &mut tuple as *mut Ipv4SockTuple as *mut bpf_sock_tuple;
    let netns = BPF_F_CURRENT_NETNS as u64;
    let skb = ctx.skb.skb as *mut core::ffi::c_void;
    // SAFETY: the tuple lives on the stack with its true size; a socket found is released below.
    let socket = unsafe {
        match flow.protocol {
            IPPROTO_TCP => bpf_skc_lookup_tcp(skb, tuple, size, netns, 0),
            IPPROTO_UDP => bpf_sk_lookup_udp(skb, tuple, size, netns, 0),
            _ => return false,
        }
    };
    if socket.is_null() {
        return false;
    }
    // SAFETY: `socket` is the reference the lookup returned, released once.
    unsafe { bpf_sk_release(socket as *mut core::ffi::c_void) };
    true
}
