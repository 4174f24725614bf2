//! The maps the agent fills and the kernel programs read: names, sizes, keys and values.
//!
//! Map names carry a format version (`_v1`): a future layout gets a new name, so an agent can tell
//! a pinned map it understands from one it must migrate. Addresses are stored as the four bytes of
//! the address in network order, which `bpftool` prints as `[10,244,1,0]`.

use core::mem::size_of;

/// An IPv4 address as it appears on the wire (network byte order).
pub type Ipv4Bytes = [u8; 4];
/// A MAC address.
pub type MacBytes = [u8; 6];
/// An IPv6 address as it appears on the wire (network byte order).
pub type Ipv6Bytes = [u8; 16];

/// LPM trie of destination prefixes: workloads (/32), IPAM blocks, pools and nodes.
/// Key: `Key<Ipv4Bytes>` (prefix length in bits, then the address); value: [`Route`].
pub const ROUTES_MAP: &str = "routes_v1";
/// Capacity of the routes map: blocks of a large cluster plus this node's workloads.
pub const ROUTES_MAX_ENTRIES: u32 = 1 << 20;

/// Hash of this node's workload interfaces, for anti-spoofing.
/// Key: the host-side interface's ifindex (`u32`); value: [`Workload`].
pub const WORKLOADS_MAP: &str = "workloads_v1";
/// Capacity of the workloads map.
pub const WORKLOADS_MAX_ENTRIES: u32 = 16384;

/// Array of workload slots: the workload behind an interface, found without hashing.
/// Index: [`workload_slot`] of the host-side ifindex; value: [`WorkloadSlot`]. A cache of the
/// workloads map written with it: when two interfaces share a slot the lower ifindex holds it and
/// the other is found through the hash, so a slot is never the only record of a workload.
pub const WORKLOAD_SLOTS_MAP: &str = "workload_slots_v1";
/// Slots in the workload slots map: far more than the pods of a node, few enough that the slow
/// resync reads them whole cheaply; a power of two, so that the slot of an ifindex is a mask.
pub const WORKLOAD_SLOTS: u32 = 4096;
const _: () = assert!(WORKLOAD_SLOTS.is_power_of_two());

/// The slot of the interface `ifindex` in the workload slots map. Interface indexes grow with
/// every veth a node creates, so they are folded into the array rather than bounded by it.
pub const fn workload_slot(ifindex: u32) -> u32 {
    ifindex & (WORKLOAD_SLOTS - 1)
}

/// The value of a workload slot: the workload, tagged with the whole ifindex it belongs to.
/// A program uses the slot only when the tag equals its own interface's ifindex, so a slot of a
/// colliding interface, or an empty one, never stands for another interface's pod.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct WorkloadSlot {
    /// The host-side ifindex the slot holds; 0 (no interface has it) for an empty slot.
    pub ifindex: u32,
    /// The workload behind that interface, as in the workloads map.
    pub workload: Workload,
}
const _: () = assert!(size_of::<WorkloadSlot>() == 16);

impl WorkloadSlot {
    /// An empty slot: what the agent writes where no workload is.
    pub const EMPTY: WorkloadSlot =
        WorkloadSlot { ifindex: 0, workload: Workload { addr: [0; 4], mac: [0; 6], flags: 0, _pad: 0 } };
}

/// One-slot array holding the enabled IP pools' prefixes ([`Pools`]): whether an address is in a
/// pool, told by a few masked compares instead of a lookup in the routes trie.
pub const POOLS_MAP: &str = "pools_v1";
/// Pools the pools map holds; a cluster with more has [`POOLS_TOO_MANY`] written and the
/// programs ask the routes map instead.
pub const POOLS_MAX: usize = 8;
/// [`Pools::count`] when the cluster has more pools than [`POOLS_MAX`].
pub const POOLS_TOO_MANY: u32 = u32::MAX;

/// An IP pool's prefix as an address and a mask, both in network order, so that
/// `addr & mask == network` compares the four bytes whatever the CPU's byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PoolPrefix {
    /// The pool's network address.
    pub network: Ipv4Bytes,
    /// The pool's netmask.
    pub mask: Ipv4Bytes,
}
const _: () = assert!(size_of::<PoolPrefix>() == 8);

/// The value of the pools map: the enabled pools, the first `count` entries of `prefixes`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Pools {
    /// How many of `prefixes` hold a pool (0: not written), or [`POOLS_TOO_MANY`].
    pub count: u32,
    /// The pools' prefixes; the rest are zero.
    pub prefixes: [PoolPrefix; POOLS_MAX],
}
const _: () = assert!(size_of::<Pools>() == 4 + 8 * POOLS_MAX);

impl Pools {
    /// Whether `addr` lies in one of the pools; None when this cannot tell: too many pools, or
    /// none written (before the agent's first write, or a cluster without pools, where the
    /// routes map answers just as well).
    #[inline(always)]
    pub fn contain(&self, addr: Ipv4Bytes) -> Option<bool> {
        if self.count == 0 || self.count > POOLS_MAX as u32 {
            return None;
        }
        let addr = u32::from_ne_bytes(addr);
        let mut i = 0;
        while i < POOLS_MAX {
            if i as u32 >= self.count {
                break;
            }
            let prefix = self.prefixes[i];
            if addr & u32::from_ne_bytes(prefix.mask) == u32::from_ne_bytes(prefix.network) {
                return Some(true);
            }
            i += 1;
        }
        Some(false)
    }
}

/// Hash of the peer nodes from which tunnel packets are accepted.
/// Key: the peer node's address (`Ipv4Bytes`); value: [`Peer`].
#[cfg(not(feature = "previous-layout"))]
pub const PEERS_MAP: &str = "peers_v1";
/// The peers map as the previous layout names it (the `previous-layout` build).
#[cfg(feature = "previous-layout")]
pub const PEERS_MAP: &str = previous::PEERS_MAP_V0;
/// Capacity of the peers map.
pub const PEERS_MAX_ENTRIES: u32 = 65536;

/// One-slot array holding this node's [`NodeConfig`].
pub const NODE_MAP: &str = "node_v1";

/// Per-CPU array of `u64` counters, one slot per [`crate::Stat`].
pub const STATS_MAP: &str = "stats_v1";

/// Name of the program attached to TC ingress of every workload interface (`caliXXXXXXXXXXX`).
pub const PROG_FROM_WORKLOAD: &str = "from_workload";
/// Name of the program attached to TC ingress of the node's uplink.
pub const PROG_FROM_UPLINK: &str = "from_uplink";
/// Name of the program attached to TC egress of every workload interface.
pub const PROG_TO_WORKLOAD: &str = "to_workload";
/// Name of the program attached to TC egress of the node's uplink.
pub const PROG_TO_UPLINK: &str = "to_uplink";
/// Name of the program attached to TC ingress of the VXLAN GRO anchor device: it drops and
/// counts whatever that device decapsulated.
pub const PROG_VXLAN_ANCHOR: &str = "vxlan_anchor";
/// Name of the XDP program of the node's uplink: it drops the tunnel packets `from_uplink` would
/// refuse before an skb exists, and passes everything else to the TC programs untouched.
pub const PROG_XDP_UPLINK: &str = "xdp_uplink";

/// What a destination prefix is, from this node's point of view ([`Route::kind`]).
pub mod route_kind {
    /// A workload on this node: deliver into its interface.
    pub const LOCAL_WORKLOAD: u32 = 1;
    /// A block affine to this node, where no workload matched: drop (Calico's blackhole route).
    pub const LOCAL_BLOCK: u32 = 2;
    /// A block affine to another node: forward to that node, encapsulated or not.
    pub const REMOTE_BLOCK: u32 = 3;
    /// Inside an IP pool but in no known block: left to the kernel.
    pub const POOL: u32 = 4;
    /// An address of this node.
    pub const LOCAL_HOST: u32 = 5;
    /// An address of another node of the cluster.
    pub const REMOTE_HOST: u32 = 6;
}

/// Bits of [`Route::flags`].
pub mod route_flags {
    /// Reach the owning node through VXLAN.
    pub const ENCAP_VXLAN: u32 = 1 << 0;
    /// Reach the owning node through IP-in-IP.
    pub const ENCAP_IPIP: u32 = 1 << 1;
    /// The prefix is in a pool with `natOutgoing: true`.
    pub const NAT_OUTGOING: u32 = 1 << 2;
    /// The prefix is inside an enabled IP pool.
    pub const IN_POOL: u32 = 1 << 3;
}

/// The value of a routes map entry: what to do with a packet whose destination matches.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Route {
    /// One of [`route_kind`].
    pub kind: u32,
    /// Bits of [`route_flags`].
    pub flags: u32,
    /// Local workload: ifindex of its host-side interface. Otherwise 0.
    pub ifindex: u32,
    /// Remote block or host: the address of the node that owns it (the tunnel's destination).
    pub node_addr: Ipv4Bytes,
    /// Local workload: the pod's MAC. Remote VXLAN block: the owning node's VTEP MAC.
    pub mac: MacBytes,
    /// Explicit padding; always zero.
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<Route>() == 24);

/// Bits of [`Workload::flags`].
pub mod workload_flags {
    /// The pod's pool has `natOutgoing: true`: its new flows leaving the pools are translated.
    /// (Carried here so that the hot path needs no second route lookup for the pod's own /32.)
    pub const NAT_OUTGOING: u8 = 1 << 0;
}

/// The value of a workloads map entry: the pod behind a host-side interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Workload {
    /// The pod's IPv4 address: the only source address allowed from this interface.
    pub addr: Ipv4Bytes,
    /// The pod's MAC.
    pub mac: MacBytes,
    /// Bits of [`workload_flags`].
    pub flags: u8,
    /// Explicit padding; always zero.
    pub _pad: u8,
}
const _: () = assert!(size_of::<Workload>() == 12);

/// Bits of [`Peer::flags`].
pub mod peer_flags {
    /// VXLAN packets from this peer are accepted.
    pub const VXLAN: u32 = 1 << 0;
    /// IP-in-IP packets from this peer are accepted.
    pub const IPIP: u32 = 1 << 1;
}

/// The value of a peers map entry: a node allowed to send us tunnel packets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Peer {
    /// Bits of [`peer_flags`].
    pub flags: u32,
}
const _: () = assert!(size_of::<Peer>() == 4);

/// The single value of the node map: this node's own settings.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct NodeConfig {
    /// This node's address on its uplink: the source of tunnel packets.
    pub addr: Ipv4Bytes,
    /// ifindex of the uplink, where encapsulated packets leave.
    pub uplink_ifindex: u32,
    /// The VXLAN network identifier (Calico: 4096).
    pub vni: u32,
    /// This node's VTEP MAC: the inner source MAC of VXLAN packets.
    pub vtep_mac: MacBytes,
    /// The VXLAN UDP port (Calico: 4789).
    pub vxlan_port: u16,
    /// MTU of the uplink: encapsulated packets must fit in it.
    pub uplink_mtu: u32,
    /// First port SNAT may pick when a flow's own source port is taken.
    pub nat_port_min: u16,
    /// Last port SNAT may pick.
    pub nat_port_max: u16,
    /// How long translated flows live without packets.
    pub timeouts: FlowTimeouts,
}
const _: () = assert!(size_of::<NodeConfig>() == 48);

/// Seconds a flow may stay silent, by protocol and state (`--conntrack-timeouts`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FlowTimeouts {
    /// A TCP flow that never got an answer.
    pub tcp_new_s: u32,
    /// An answered TCP flow.
    pub tcp_established_s: u32,
    /// A TCP flow after FIN or RST.
    pub tcp_closing_s: u32,
    /// UDP, answered or not.
    pub udp_s: u32,
    /// ICMP echo.
    pub icmp_s: u32,
}
const _: () = assert!(size_of::<FlowTimeouts>() == 20);

impl FlowTimeouts {
    /// The defaults (see [`flow_timeout`]).
    pub const DEFAULT: FlowTimeouts = FlowTimeouts {
        tcp_new_s: (flow_timeout::TCP_NEW / flow_timeout::SECOND) as u32,
        tcp_established_s: (flow_timeout::TCP_ESTABLISHED / flow_timeout::SECOND) as u32,
        tcp_closing_s: (flow_timeout::TCP_CLOSING / flow_timeout::SECOND) as u32,
        udp_s: (flow_timeout::UDP / flow_timeout::SECOND) as u32,
        icmp_s: (flow_timeout::ICMP / flow_timeout::SECOND) as u32,
    };
}

impl Default for FlowTimeouts {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// LPM trie of IPv6 destination prefixes: workloads (/128), IPAM blocks, pools and nodes, with the
/// same [`route_kind`]s and [`route_flags`] as the IPv4 routes: one set of decisions for both
/// families. Key: `Key<Ipv6Bytes>`; value: [`Route6`].
pub const ROUTES6_MAP: &str = "routes6_v1";
/// Capacity of the IPv6 routes map (as the IPv4 one's).
pub const ROUTES6_MAX_ENTRIES: u32 = ROUTES_MAX_ENTRIES;

/// The value of an IPv6 routes map entry: [`Route`] with the owning node's IPv6 address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Route6 {
    /// One of [`route_kind`].
    pub kind: u32,
    /// Bits of [`route_flags`].
    pub flags: u32,
    /// Local workload: ifindex of its host-side interface. Otherwise 0.
    pub ifindex: u32,
    /// Remote block or host: the IPv6 address of the node that owns it (the tunnel's destination
    /// over the IPv6 underlay, or the next hop in a Never pool).
    pub node_addr: Ipv6Bytes,
    /// Local workload: the pod's MAC. Remote VXLAN block: the owning node's IPv6 VTEP MAC.
    pub mac: MacBytes,
    /// Explicit padding; always zero.
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<Route6>() == 36);

/// Hash of this node's workload interfaces that have an IPv6 address, for anti-spoofing.
/// Key: the host-side interface's ifindex (`u32`, as in the workloads map); value: [`Workload6`].
/// A workload without an entry here has its IPv6 left to the kernel, as before dual-stack.
pub const WORKLOADS6_MAP: &str = "workloads6_v1";

/// The value of an IPv6 workloads map entry: the IPv6 side of the pod behind an interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Workload6 {
    /// The pod's IPv6 address: the only global source address allowed from this interface.
    pub addr: Ipv6Bytes,
    /// The pod's MAC.
    pub mac: MacBytes,
    /// Bits of [`workload_flags`].
    pub flags: u8,
    /// Explicit padding; always zero.
    pub _pad: u8,
}
const _: () = assert!(size_of::<Workload6>() == 24);

/// Hash of the peer nodes from which tunnel packets over IPv6 are accepted.
/// Key: the peer node's IPv6 address (`Ipv6Bytes`); value: [`Peer`].
pub const PEERS6_MAP: &str = "peers6_v1";

/// One-slot array holding this node's IPv6 settings ([`NodeConfig6`]); the rest (uplink, VNI,
/// port, MTU) is in the node map.
pub const NODE6_MAP: &str = "node6_v1";

/// The single value of the IPv6 node map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct NodeConfig6 {
    /// This node's IPv6 address on its uplink: the source of tunnel packets over IPv6; all zero
    /// while the node has none.
    pub addr: Ipv6Bytes,
    /// This node's IPv6 VTEP MAC (Calico's `vxlanTunnelMACAddrV6`): the inner source MAC.
    pub vtep_mac: MacBytes,
    /// Explicit padding; always zero.
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<NodeConfig6>() == 24);

/// Hash of translated flows (natOutgoing), two entries per flow.
/// Key: [`FlowKey`]; value: [`NatFlow`]. A plain hash, not LRU: when it is full new flows are
/// refused and counted, and live flows are never evicted to make room.
#[cfg(not(feature = "previous-layout"))]
pub const CONNTRACK_MAP: &str = "conntrack_v1";
/// The conntrack map as the previous layout names it (the `previous-layout` build).
#[cfg(feature = "previous-layout")]
pub const CONNTRACK_MAP: &str = previous::CONNTRACK_MAP_V0;
/// Capacity of the conntrack map (entries; a flow takes two).
pub const CONNTRACK_MAX_ENTRIES: u32 = 131072;

/// [`FlowKey::direction`] of the entry keyed by the pod's own packets.
pub const FLOW_OUTBOUND: u8 = 1;
/// [`FlowKey::direction`] of the entry keyed by the replies, as they arrive at the node.
pub const FLOW_INBOUND: u8 = 2;
/// [`FlowKey::direction`] of a flow opened from outside the pools towards a pod (a host, or a
/// client through the node), keyed like the pod's replies: those must leave untranslated, as
/// they do behind Calico's MASQUERADE rule, which only sees new connections.
pub const FLOW_TO_POD: u8 = 3;

/// A conntrack key: one direction of a flow as seen on the wire. ICMP echo carries its
/// identifier as the source port of requests and the destination port of replies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FlowKey {
    /// Source address.
    pub src: Ipv4Bytes,
    /// Destination address.
    pub dst: Ipv4Bytes,
    /// Source port (host order).
    pub src_port: u16,
    /// Destination port (host order).
    pub dst_port: u16,
    /// IP protocol.
    pub protocol: u8,
    /// [`FLOW_OUTBOUND`] or [`FLOW_INBOUND`].
    pub direction: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FlowKey>() == 16);

/// Life stages of a translated flow ([`NatFlow::state`]); each has its own timeout.
pub mod flow_state {
    /// Only the pod has spoken (TCP SYN, first UDP datagram or echo request).
    pub const NEW: u8 = 1;
    /// The peer answered.
    pub const ESTABLISHED: u8 = 2;
    /// A TCP FIN or RST was seen.
    pub const CLOSING: u8 = 3;
}

/// Nanoseconds a flow lives without packets, per protocol and [`flow_state`].
pub mod flow_timeout {
    /// One second in nanoseconds.
    pub const SECOND: u64 = 1_000_000_000;
    /// A TCP flow that never got an answer.
    pub const TCP_NEW: u64 = 30 * SECOND;
    /// An answered TCP flow: long, like the kernel's established timeout scaled down.
    pub const TCP_ESTABLISHED: u64 = 3600 * SECOND;
    /// A TCP flow after FIN or RST.
    pub const TCP_CLOSING: u64 = 10 * SECOND;
    /// UDP, answered or not.
    pub const UDP: u64 = 60 * SECOND;
    /// ICMP echo.
    pub const ICMP: u64 = 30 * SECOND;
}

/// A conntrack value: the translation of one flow, stored under both of its keys.
#[cfg(not(feature = "previous-layout"))]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct NatFlow {
    /// `bpf_ktime_get_ns` when the flow was created.
    pub created_ns: u64,
    /// `bpf_ktime_get_ns` of the last packet (kept current on the outbound entry).
    pub last_seen_ns: u64,
    /// The pod's address (the original source).
    pub pod_addr: Ipv4Bytes,
    /// The peer outside the pools.
    pub peer_addr: Ipv4Bytes,
    /// The address the pod is translated to (the node's).
    pub nat_addr: Ipv4Bytes,
    /// The pod's port (or ICMP echo identifier).
    pub pod_port: u16,
    /// The peer's port (0 for ICMP).
    pub peer_port: u16,
    /// The translated port (or identifier).
    pub nat_port: u16,
    /// IP protocol.
    pub protocol: u8,
    /// One of [`flow_state`].
    pub state: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 4],
}
const _: () = assert!(size_of::<NatFlow>() == 40);
/// A conntrack value in the previous layout (the `previous-layout` build).
#[cfg(feature = "previous-layout")]
pub type NatFlow = previous::NatFlowV0;

/// Layouts of earlier versions, kept so that the agent can migrate their pins.
///
/// `conntrack_v0` and `peers_v0` are what the upgrade test's older agent runs with (a build with
/// the `previous-layout` feature): the conntrack value with the timestamps last, and the peers
/// map under an older name. No release shipped them; they exist so that real migrations with
/// live traffic are tested.
pub mod previous {
    use super::Ipv4Bytes;

    /// The pin name of the conntrack map in the previous layout.
    pub const CONNTRACK_MAP_V0: &str = "conntrack_v0";

    /// The pin name of the peers map before v1: the same layout under an older name, so that the
    /// upgrade test also carries a map the agent owns, which it rewrites from the plan before
    /// the swap (a peer missing at the swap would drop the tunnel traffic from that node).
    pub const PEERS_MAP_V0: &str = "peers_v0";

    /// A conntrack value in the previous layout: the timestamps after the addresses.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    #[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
    pub struct NatFlowV0 {
        /// The pod's address (the original source).
        pub pod_addr: Ipv4Bytes,
        /// The peer outside the pools.
        pub peer_addr: Ipv4Bytes,
        /// The address the pod is translated to (the node's).
        pub nat_addr: Ipv4Bytes,
        /// The pod's port (or ICMP echo identifier).
        pub pod_port: u16,
        /// The peer's port (0 for ICMP).
        pub peer_port: u16,
        /// The translated port (or identifier).
        pub nat_port: u16,
        /// IP protocol.
        pub protocol: u8,
        /// One of [`flow_state`](super::flow_state).
        pub state: u8,
        /// Explicit padding; always zero.
        pub _pad: [u8; 4],
        /// `bpf_ktime_get_ns` when the flow was created.
        pub created_ns: u64,
        /// `bpf_ktime_get_ns` of the last packet.
        pub last_seen_ns: u64,
    }
    const _: () = assert!(core::mem::size_of::<NatFlowV0>() == 40);
}

impl NatFlow {
    /// The key of the pod's packets.
    pub const fn outbound_key(&self) -> FlowKey {
        FlowKey {
            src: self.pod_addr,
            dst: self.peer_addr,
            src_port: self.pod_port,
            dst_port: self.peer_port,
            protocol: self.protocol,
            direction: FLOW_OUTBOUND,
            _pad: [0; 2],
        }
    }

    /// The key of the replies as they reach the node: from the peer to the translated address.
    /// (ICMP echo replies carry the identifier where TCP and UDP carry the destination port.)
    pub const fn inbound_key(&self) -> FlowKey {
        FlowKey {
            src: self.peer_addr,
            dst: self.nat_addr,
            src_port: self.peer_port,
            dst_port: self.nat_port,
            protocol: self.protocol,
            direction: FLOW_INBOUND,
            _pad: [0; 2],
        }
    }

    /// How long the flow may stay silent, by protocol and state, with the default timeouts.
    pub const fn timeout_ns(&self) -> u64 {
        self.timeout_ns_with(&FlowTimeouts::DEFAULT)
    }

    /// How long the flow may stay silent under `timeouts`.
    pub const fn timeout_ns_with(&self, timeouts: &FlowTimeouts) -> u64 {
        let seconds = match (self.protocol, self.state) {
            (crate::net::IPPROTO_TCP, flow_state::ESTABLISHED) => timeouts.tcp_established_s,
            (crate::net::IPPROTO_TCP, flow_state::CLOSING) => timeouts.tcp_closing_s,
            (crate::net::IPPROTO_TCP, _) => timeouts.tcp_new_s,
            (crate::net::IPPROTO_ICMP, _) => timeouts.icmp_s,
            _ => timeouts.udp_s,
        };
        seconds as u64 * flow_timeout::SECOND
    }

    /// Whether the flow has outlived its default timeout at `now_ns` (`bpf_ktime_get_ns` clock).
    pub const fn expired(&self, now_ns: u64) -> bool {
        self.expired_with(now_ns, &FlowTimeouts::DEFAULT)
    }

    /// Whether the flow has outlived its timeout under `timeouts` at `now_ns`.
    pub const fn expired_with(&self, now_ns: u64, timeouts: &FlowTimeouts) -> bool {
        now_ns.saturating_sub(self.last_seen_ns) > self.timeout_ns_with(timeouts)
    }
}

/// Fragments of translated datagrams: (identification, addresses, protocol, direction) ->
/// [`FragmentNat`], the address the first fragment was translated to, so that the later
/// fragments (which carry no ports) get the same. An LRU hash: bounded, the oldest datagrams
/// evicted first.
pub const FRAGMENTS_MAP: &str = "fragments_v1";
/// Datagrams in flight whose fragments the programs can translate at once.
pub const FRAGMENTS_MAX_ENTRIES: u32 = 8192;
/// How long after its first fragment a datagram's later fragments are still translated: the
/// kernel's own reassembly timeout (`net.ipv4.ipfrag_time`, 30 s).
pub const FRAGMENT_TIMEOUT_NS: u64 = 30 * flow_timeout::SECOND;

/// The key of a fragmented datagram, as its fragments arrive (before translation).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FragmentKey {
    /// Source address.
    pub src: Ipv4Bytes,
    /// Destination address.
    pub dst: Ipv4Bytes,
    /// The IPv4 identification (host order).
    pub id: u16,
    /// IP protocol.
    pub protocol: u8,
    /// [`FLOW_OUTBOUND`] (a pod's datagram, source translated) or [`FLOW_INBOUND`] (a reply,
    /// destination translated).
    pub direction: u8,
}
const _: () = assert!(size_of::<FragmentKey>() == 12);

/// The translation a datagram's first fragment chose.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FragmentNat {
    /// The address written into the later fragments: the new source (outbound) or the pod's
    /// address as the new destination (inbound).
    pub addr: Ipv4Bytes,
    /// Explicit padding; always zero.
    pub _pad: u32,
    /// When the first fragment passed (`bpf_ktime_get_ns` clock).
    pub first_ns: u64,
}
const _: () = assert!(size_of::<FragmentNat>() == 16);

impl FragmentNat {
    /// Whether the datagram's later fragments may still come at `now_ns`.
    pub const fn expired(&self, now_ns: u64) -> bool {
        now_ns.saturating_sub(self.first_ns) > FRAGMENT_TIMEOUT_NS
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are #[repr(C)] with only integer and byte-array fields and no implicit
    // padding (the size asserts above prove it), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::Route {}
    unsafe impl aya::Pod for super::Workload {}
    unsafe impl aya::Pod for super::WorkloadSlot {}
    unsafe impl aya::Pod for super::Pools {}
    unsafe impl aya::Pod for super::Peer {}
    unsafe impl aya::Pod for super::NodeConfig {}
    unsafe impl aya::Pod for super::FlowKey {}
    #[cfg(not(feature = "previous-layout"))]
    unsafe impl aya::Pod for super::NatFlow {}
    unsafe impl aya::Pod for super::previous::NatFlowV0 {}
    unsafe impl aya::Pod for super::FlowTimeouts {}
    unsafe impl aya::Pod for super::FragmentKey {}
    unsafe impl aya::Pod for super::FragmentNat {}
    unsafe impl aya::Pod for super::Route6 {}
    unsafe impl aya::Pod for super::Workload6 {}
    unsafe impl aya::Pod for super::NodeConfig6 {}
}
