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

/// Hash of the peer nodes from which tunnel packets are accepted.
/// Key: the peer node's address (`Ipv4Bytes`); value: [`Peer`].
pub const PEERS_MAP: &str = "peers_v1";
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
/// Name of the program attached to TC egress of the node's uplink.
pub const PROG_TO_UPLINK: &str = "to_uplink";

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

/// The value of a workloads map entry: the pod behind a host-side interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Workload {
    /// The pod's IPv4 address: the only source address allowed from this interface.
    pub addr: Ipv4Bytes,
    /// The pod's MAC.
    pub mac: MacBytes,
    /// Explicit padding; always zero.
    pub _pad: [u8; 2],
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
}
const _: () = assert!(size_of::<NodeConfig>() == 24);

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are #[repr(C)] with only integer and byte-array fields and no implicit
    // padding (the size asserts above prove it), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::Route {}
    unsafe impl aya::Pod for super::Workload {}
    unsafe impl aya::Pod for super::Peer {}
    unsafe impl aya::Pod for super::NodeConfig {}
}
