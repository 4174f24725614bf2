//! The maps, as BTF maps so that `bpftool map dump` prints named fields.
//!
//! Names, keys and values come from `dataplane-common`; the agent pins and fills them.

use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    macros::btf_map,
};
use dataplane_common::{
    monitor::{MONITOR_COUNT_SLOTS, MONITOR_EVENTS_BYTES},
    FlowKey, FragmentKey, FragmentNat, Ipv4Bytes, Ipv6Bytes, MonitorEvent, NatFlow, NodeConfig, NodeConfig6, Peer,
    Pools, Route, Route6, TunnelTemplates, Workload, Workload6, WorkloadSlot, CONNTRACK_MAX_ENTRIES,
    FRAGMENTS_MAX_ENTRIES, PEERS_MAX_ENTRIES, ROUTES6_MAX_ENTRIES, ROUTES_MAX_ENTRIES, STAT_COUNT,
    WORKLOADS_MAX_ENTRIES, WORKLOAD_SLOTS,
};

/// Destination prefix -> [`Route`] (`dataplane_common::ROUTES_MAP`).
#[btf_map(name = "routes_v1")]
pub static ROUTES: LpmTrie<Ipv4Bytes, Route, { ROUTES_MAX_ENTRIES as usize }> = LpmTrie::new();

/// Host-side ifindex -> the [`Workload`] behind it (`dataplane_common::WORKLOADS_MAP`).
#[btf_map(name = "workloads_v1")]
pub static WORKLOADS: HashMap<u32, Workload, { WORKLOADS_MAX_ENTRIES as usize }> = HashMap::new();

/// [`dataplane_common::workload_slot`] of a host-side ifindex -> the [`WorkloadSlot`] there
/// (`dataplane_common::WORKLOAD_SLOTS_MAP`): the workload without a hash lookup.
#[btf_map(name = "workload_slots_v1")]
pub static WORKLOAD_SLOTS_ARRAY: Array<WorkloadSlot, { WORKLOAD_SLOTS as usize }> = Array::new();

/// Peer node address -> [`Peer`] (`dataplane_common::PEERS_MAP`).
#[cfg_attr(not(feature = "previous-layout"), btf_map(name = "peers_v1"))]
// The upgrade test's older agent (dataplane-common's `previous-layout`).
#[cfg_attr(feature = "previous-layout", btf_map(name = "peers_v0"))]
pub static PEERS: HashMap<Ipv4Bytes, Peer, { PEERS_MAX_ENTRIES as usize }> = HashMap::new();

/// Slot 0: the enabled pools' prefixes (`dataplane_common::POOLS_MAP`).
#[btf_map(name = "pools_v1")]
pub static POOLS: Array<Pools, 1> = Array::new();

/// Slot 0: this node's [`NodeConfig`] (`dataplane_common::NODE_MAP`).
#[btf_map(name = "node_v1")]
pub static NODE: Array<NodeConfig, 1> = Array::new();

/// Slot 0: this node's prebuilt tunnel headers (`dataplane_common::TUNNEL_TEMPLATES_MAP`).
#[btf_map(name = "tunnel_templates_v1")]
pub static TUNNEL_TEMPLATES: Array<TunnelTemplates, 1> = Array::new();

/// Per-CPU counters, one slot per `dataplane_common::Stat` (`dataplane_common::STATS_MAP`).
#[btf_map(name = "stats_v1")]
pub static STATS: PerCpuArray<u64, { STAT_COUNT as usize }> = PerCpuArray::new();

/// Both directions of every translated flow -> [`NatFlow`] (`dataplane_common::CONNTRACK_MAP`).
#[cfg_attr(not(feature = "previous-layout"), btf_map(name = "conntrack_v1"))]
// The upgrade test's older agent (dataplane-common's `previous-layout`).
#[cfg_attr(feature = "previous-layout", btf_map(name = "conntrack_v0"))]
pub static CONNTRACK: HashMap<FlowKey, NatFlow, { CONNTRACK_MAX_ENTRIES as usize }> = HashMap::new();

/// Fragmented datagrams of translated flows -> the address their first fragment got
/// (`dataplane_common::FRAGMENTS_MAP`).
#[btf_map(name = "fragments_v1")]
pub static FRAGMENTS: LruHashMap<FragmentKey, FragmentNat, { FRAGMENTS_MAX_ENTRIES as usize }> = LruHashMap::new();

/// IPv6 destination prefix -> [`Route6`] (`dataplane_common::ROUTES6_MAP`).
#[btf_map(name = "routes6_v1")]
pub static ROUTES6: LpmTrie<Ipv6Bytes, Route6, { ROUTES6_MAX_ENTRIES as usize }> = LpmTrie::new();

/// Host-side ifindex -> the IPv6 side of the [`Workload6`] behind it
/// (`dataplane_common::WORKLOADS6_MAP`).
#[btf_map(name = "workloads6_v1")]
pub static WORKLOADS6: HashMap<u32, Workload6, { WORKLOADS_MAX_ENTRIES as usize }> = HashMap::new();

/// Peer node IPv6 address -> [`Peer`] (`dataplane_common::PEERS6_MAP`).
#[btf_map(name = "peers6_v1")]
pub static PEERS6: HashMap<Ipv6Bytes, Peer, { PEERS_MAX_ENTRIES as usize }> = HashMap::new();

/// Slot 0: this node's [`NodeConfig6`] (`dataplane_common::NODE6_MAP`).
#[btf_map(name = "node6_v1")]
pub static NODE6: Array<NodeConfig6, 1> = Array::new();

/// Events for `dataplane monitor` (`dataplane_common::monitor::MONITOR_EVENTS_MAP`).
#[btf_map(name = "monitor_events_v1")]
pub static MONITOR_EVENTS: RingBuf<MonitorEvent, { MONITOR_EVENTS_BYTES as usize }> = RingBuf::new();

/// Per-CPU counters of events emitted and lost (`dataplane_common::monitor::MONITOR_COUNTS_MAP`).
#[btf_map(name = "monitor_counts_v1")]
pub static MONITOR_COUNTS: PerCpuArray<u64, { MONITOR_COUNT_SLOTS as usize }> = PerCpuArray::new();
