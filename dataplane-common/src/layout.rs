//! Every pinned map in one table: its pin name (with the format version `_vN`), its kind, its
//! capacity and the shape of its key and value, field by field.
//!
//! A pinned map outlives the agent that made it, so its layout is a promise to the next agent.
//! The shapes here are what the layout fingerprint is computed from: the agent's unit tests keep
//! a ledger of fingerprints per pin name and fail when a layout changes under a name that did not
//! change, or when a new version has no migration from the one before (see the agent's
//! `migrate` module).

use core::mem::size_of;

use crate::{
    monitor::{
        MonitorEvent, MonitorLease, MONITOR_COUNTS_MAP, MONITOR_COUNT_SLOTS, MONITOR_EVENTS_BYTES, MONITOR_EVENTS_MAP,
        MONITOR_LEASE_MAP,
    },
    FlowKey, FlowTimeouts, FragmentKey, FragmentNat, Ipv4Bytes, Ipv6Bytes, NodeConfig, NodeConfig6, Peer, PoolPrefix,
    Pools, Route, Route6, Workload, Workload6, WorkloadSlot, CONNTRACK_MAP, CONNTRACK_MAX_ENTRIES, FRAGMENTS_MAP,
    FRAGMENTS_MAX_ENTRIES, NODE6_MAP, NODE_MAP, PEERS6_MAP, PEERS_MAP, PEERS_MAX_ENTRIES, POOLS_MAP, POOLS_MAX,
    ROUTES6_MAP, ROUTES6_MAX_ENTRIES, ROUTES_MAP, ROUTES_MAX_ENTRIES, STATS_MAP, STAT_COUNT, WORKLOADS6_MAP,
    WORKLOADS_MAP, WORKLOADS_MAX_ENTRIES, WORKLOAD_SLOTS, WORKLOAD_SLOTS_MAP,
};

/// One field of a map key or value: where it sits and what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// The field's name in the Rust type (and in the BTF `bpftool` prints).
    pub name: &'static str,
    /// The field's type, as written in the type's definition.
    pub type_name: &'static str,
    /// Byte offset from the start of the value.
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
}

/// The shape of a map key or value: a struct with its fields, or a plain integer or byte array
/// (no fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The type's name.
    pub type_name: &'static str,
    /// Size in bytes.
    pub size: usize,
    /// Alignment in bytes.
    pub align: usize,
    /// The fields, in declaration order; empty for an integer or a byte array.
    pub fields: &'static [Field],
}

impl Layout {
    /// Whether the fields cover every byte exactly once, in order: no implicit padding, and no
    /// field left out of the description (which would otherwise leave a change unseen).
    pub fn is_complete(&self) -> bool {
        if self.fields.is_empty() {
            return true;
        }
        let mut next = 0;
        for field in self.fields {
            if field.offset != next {
                return false;
            }
            next += field.size;
        }
        next == self.size
    }
}

/// The shape of `Type { field: FieldType, ... }` or of a plain `Type`, checked by the compiler:
/// a field named with the wrong type does not build, and [`Layout::is_complete`] catches one left
/// out.
#[macro_export]
macro_rules! layout {
    ($type:ty { $($field:ident : $field_type:ty),* $(,)? }) => {{
        $(
            // Fails to build when the field's real type differs from the one described.
            const _: fn(&$type) -> &$field_type = |value| &value.$field;
        )*
        $crate::layout::Layout {
            type_name: stringify!($type),
            size: ::core::mem::size_of::<$type>(),
            align: ::core::mem::align_of::<$type>(),
            fields: &[$($crate::layout::Field {
                name: stringify!($field),
                type_name: stringify!($field_type),
                offset: ::core::mem::offset_of!($type, $field),
                size: ::core::mem::size_of::<$field_type>(),
            }),*],
        }
    }};
    ($type:ty) => {
        $crate::layout::Layout {
            type_name: stringify!($type),
            size: ::core::mem::size_of::<$type>(),
            align: ::core::mem::align_of::<$type>(),
            fields: &[],
        }
    };
}

/// The kernel's kind of map (part of the layout: a pin of another kind cannot be adopted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    /// `BPF_MAP_TYPE_LPM_TRIE`.
    LpmTrie,
    /// `BPF_MAP_TYPE_HASH`.
    Hash,
    /// `BPF_MAP_TYPE_LRU_HASH`.
    LruHash,
    /// `BPF_MAP_TYPE_ARRAY`.
    Array,
    /// `BPF_MAP_TYPE_PERCPU_ARRAY`.
    PerCpuArray,
    /// `BPF_MAP_TYPE_RINGBUF` (capacity in bytes; the "value" is the record the programs write).
    RingBuf,
}

impl MapKind {
    /// A stable name, for the fingerprint and for messages.
    pub const fn name(self) -> &'static str {
        match self {
            MapKind::LpmTrie => "lpm_trie",
            MapKind::Hash => "hash",
            MapKind::LruHash => "lru_hash",
            MapKind::Array => "array",
            MapKind::PerCpuArray => "percpu_array",
            MapKind::RingBuf => "ringbuf",
        }
    }
}

/// One pinned map: everything an agent must agree on to adopt another agent's pin.
#[derive(Clone, Copy, Debug)]
pub struct PinnedMap {
    /// The pin's file name under the pin path: `<family>_v<version>`.
    pub name: &'static str,
    /// The kernel's kind of map.
    pub kind: MapKind,
    /// Capacity the object declares (entries; bytes for a ring buffer).
    pub max_entries: u32,
    /// The key, then every struct nested in it.
    pub key: &'static [Layout],
    /// The value, then every struct nested in it.
    pub value: &'static [Layout],
}

/// The family and version of a pin name `<family>_v<version>`; None for a name of another form.
pub fn split_version(name: &str) -> Option<(&str, u32)> {
    let (family, version) = name.rsplit_once("_v")?;
    if family.is_empty() || version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((family, version.parse().ok()?))
}

impl PinnedMap {
    /// The name without its version: what stays the same across versions (`routes`).
    pub fn family(&self) -> &'static str {
        split_version(self.name).map_or(self.name, |(family, _)| family)
    }

    /// The format version from the pin name (`routes_v1` -> 1).
    pub fn version(&self) -> u32 {
        split_version(self.name).map_or(0, |(_, version)| version)
    }

    /// A 64-bit FNV-1a hash of the kind, capacity and every key and value field's name, type,
    /// offset and size: it changes whenever the pinned bytes would mean something else.
    pub fn fingerprint(&self) -> u64 {
        let mut hash = Fnv::new();
        hash.text(self.kind.name());
        hash.number(self.max_entries as usize);
        for (part, layouts) in [("key", self.key), ("value", self.value)] {
            hash.text(part);
            for layout in layouts {
                hash.text(layout.type_name);
                hash.number(layout.size);
                hash.number(layout.align);
                for field in layout.fields {
                    hash.text(field.name);
                    hash.text(field.type_name);
                    hash.number(field.offset);
                    hash.number(field.size);
                }
            }
        }
        hash.0
    }
}

/// FNV-1a, 64 bits: small, no_std, and stable across Rust versions (unlike `Hash`).
struct Fnv(u64);

impl Fnv {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> Self {
        Fnv(Self::OFFSET)
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    /// A string, ended so that "ab","c" and "a","bc" differ.
    fn text(&mut self, text: &str) {
        self.bytes(text.as_bytes());
        self.bytes(&[0]);
    }

    fn number(&mut self, number: usize) {
        self.bytes(&(number as u64).to_le_bytes());
    }
}

/// The key of the routes trie: aya's `lpm_trie::Key`, a prefix length then the address.
/// (aya's is packed; with these two fields the bytes are the same.)
#[repr(C)]
struct LpmKeyV4 {
    prefix_len: u32,
    addr: Ipv4Bytes,
}
const _: () = assert!(size_of::<LpmKeyV4>() == 8);

/// The key of the IPv6 routes trie, as [`LpmKeyV4`].
#[repr(C)]
struct LpmKeyV6 {
    prefix_len: u32,
    addr: Ipv6Bytes,
}
const _: () = assert!(size_of::<LpmKeyV6>() == 20);

/// The previous layout of the conntrack value, kept to migrate its pins (see
/// [`crate::maps::previous`]).
const NAT_FLOW_V0: Layout = layout!(crate::maps::previous::NatFlowV0 {
    pod_addr: Ipv4Bytes,
    peer_addr: Ipv4Bytes,
    nat_addr: Ipv4Bytes,
    pod_port: u16,
    peer_port: u16,
    nat_port: u16,
    protocol: u8,
    state: u8,
    _pad: [u8; 4],
    created_ns: u64,
    last_seen_ns: u64,
});

#[cfg(not(feature = "previous-layout"))]
use crate::NatFlow;

/// The conntrack value's layout in this build.
#[cfg(not(feature = "previous-layout"))]
const NAT_FLOW: Layout = layout!(NatFlow {
    created_ns: u64,
    last_seen_ns: u64,
    pod_addr: Ipv4Bytes,
    peer_addr: Ipv4Bytes,
    nat_addr: Ipv4Bytes,
    pod_port: u16,
    peer_port: u16,
    nat_port: u16,
    protocol: u8,
    state: u8,
    _pad: [u8; 4],
});
/// The conntrack value's layout in this build (the previous one).
#[cfg(feature = "previous-layout")]
const NAT_FLOW: Layout = NAT_FLOW_V0;

/// Every map the programs use, as it is pinned: the one table the agent loads, adopts, migrates
/// and cleans up from.
pub const PINNED_MAPS: [PinnedMap; 17] = [
    PinnedMap {
        name: ROUTES_MAP,
        kind: MapKind::LpmTrie,
        max_entries: ROUTES_MAX_ENTRIES,
        key: &[layout!(LpmKeyV4 { prefix_len: u32, addr: Ipv4Bytes })],
        value: &[layout!(Route {
            kind: u32,
            flags: u32,
            ifindex: u32,
            node_addr: Ipv4Bytes,
            mac: crate::MacBytes,
            _pad: [u8; 2],
        })],
    },
    PinnedMap {
        name: WORKLOADS_MAP,
        kind: MapKind::Hash,
        max_entries: WORKLOADS_MAX_ENTRIES,
        key: &[layout!(u32)],
        value: &[layout!(Workload { addr: Ipv4Bytes, mac: crate::MacBytes, flags: u8, _pad: u8 })],
    },
    PinnedMap {
        name: WORKLOAD_SLOTS_MAP,
        kind: MapKind::Array,
        max_entries: WORKLOAD_SLOTS,
        key: &[layout!(u32)],
        value: &[
            layout!(WorkloadSlot { ifindex: u32, workload: Workload }),
            layout!(Workload { addr: Ipv4Bytes, mac: crate::MacBytes, flags: u8, _pad: u8 }),
        ],
    },
    PinnedMap {
        name: POOLS_MAP,
        kind: MapKind::Array,
        max_entries: 1,
        key: &[layout!(u32)],
        value: &[
            layout!(Pools { count: u32, prefixes: [PoolPrefix; POOLS_MAX] }),
            layout!(PoolPrefix { network: Ipv4Bytes, mask: Ipv4Bytes }),
        ],
    },
    PinnedMap {
        name: crate::TUNNEL_TEMPLATES_MAP,
        kind: MapKind::Array,
        max_entries: 1,
        key: &[layout!(u32)],
        value: &[layout!(crate::TunnelTemplates {
            written: u32,
            vxlan_sum: u16,
            ipip_sum: u16,
            vxlan: [u64; crate::templates::VXLAN_TEMPLATE_WORDS],
            ipip: [u64; crate::templates::IPIP_TEMPLATE_WORDS],
        })],
    },
    PinnedMap {
        name: PEERS_MAP,
        kind: MapKind::Hash,
        max_entries: PEERS_MAX_ENTRIES,
        key: &[layout!(Ipv4Bytes)],
        value: &[layout!(Peer { flags: u32 })],
    },
    PinnedMap {
        name: NODE_MAP,
        kind: MapKind::Array,
        max_entries: 1,
        key: &[layout!(u32)],
        value: &[
            layout!(NodeConfig {
                addr: Ipv4Bytes,
                uplink_ifindex: u32,
                vni: u32,
                vtep_mac: crate::MacBytes,
                vxlan_port: u16,
                uplink_mtu: u32,
                nat_port_min: u16,
                nat_port_max: u16,
                timeouts: FlowTimeouts,
            }),
            layout!(FlowTimeouts {
                tcp_new_s: u32,
                tcp_established_s: u32,
                tcp_closing_s: u32,
                udp_s: u32,
                icmp_s: u32
            }),
        ],
    },
    PinnedMap {
        name: STATS_MAP,
        kind: MapKind::PerCpuArray,
        max_entries: STAT_COUNT,
        key: &[layout!(u32)],
        value: &[layout!(u64)],
    },
    PinnedMap {
        name: CONNTRACK_MAP,
        kind: MapKind::Hash,
        max_entries: CONNTRACK_MAX_ENTRIES,
        key: &[layout!(FlowKey {
            src: Ipv4Bytes,
            dst: Ipv4Bytes,
            src_port: u16,
            dst_port: u16,
            protocol: u8,
            direction: u8,
            _pad: [u8; 2],
        })],
        value: &[NAT_FLOW],
    },
    PinnedMap {
        name: FRAGMENTS_MAP,
        kind: MapKind::LruHash,
        max_entries: FRAGMENTS_MAX_ENTRIES,
        key: &[layout!(FragmentKey { src: Ipv4Bytes, dst: Ipv4Bytes, id: u16, protocol: u8, direction: u8 })],
        value: &[layout!(FragmentNat { addr: Ipv4Bytes, _pad: u32, first_ns: u64 })],
    },
    PinnedMap {
        name: ROUTES6_MAP,
        kind: MapKind::LpmTrie,
        max_entries: ROUTES6_MAX_ENTRIES,
        key: &[layout!(LpmKeyV6 { prefix_len: u32, addr: Ipv6Bytes })],
        value: &[layout!(Route6 {
            kind: u32,
            flags: u32,
            ifindex: u32,
            node_addr: Ipv6Bytes,
            mac: crate::MacBytes,
            _pad: [u8; 2],
        })],
    },
    PinnedMap {
        name: WORKLOADS6_MAP,
        kind: MapKind::Hash,
        max_entries: WORKLOADS_MAX_ENTRIES,
        key: &[layout!(u32)],
        value: &[layout!(Workload6 { addr: Ipv6Bytes, mac: crate::MacBytes, flags: u8, _pad: u8 })],
    },
    PinnedMap {
        name: PEERS6_MAP,
        kind: MapKind::Hash,
        max_entries: PEERS_MAX_ENTRIES,
        key: &[layout!(Ipv6Bytes)],
        value: &[layout!(Peer { flags: u32 })],
    },
    PinnedMap {
        name: NODE6_MAP,
        kind: MapKind::Array,
        max_entries: 1,
        key: &[layout!(u32)],
        value: &[layout!(NodeConfig6 { addr: Ipv6Bytes, vtep_mac: crate::MacBytes, _pad: [u8; 2] })],
    },
    PinnedMap {
        name: MONITOR_EVENTS_MAP,
        kind: MapKind::RingBuf,
        max_entries: MONITOR_EVENTS_BYTES,
        key: &[],
        value: &[layout!(MonitorEvent {
            time_ns: u64,
            ifindex: u32,
            program: u32,
            stat: u32,
            packet_len: u32,
            captured: u32,
            _pad: u32,
            header: [u8; crate::monitor::MONITOR_CAPTURE_BYTES],
        })],
    },
    PinnedMap {
        name: MONITOR_LEASE_MAP,
        kind: MapKind::Array,
        max_entries: 1,
        key: &[layout!(u32)],
        value: &[layout!(MonitorLease { until_ns: u64, reader_pid: u32, flags: u32 })],
    },
    PinnedMap {
        name: MONITOR_COUNTS_MAP,
        kind: MapKind::PerCpuArray,
        max_entries: MONITOR_COUNT_SLOTS,
        key: &[layout!(u32)],
        value: &[layout!(u64)],
    },
];

/// Layouts of earlier versions that the agent still migrates from, by pin name.
pub const PREVIOUS_LAYOUTS: [(&str, &[Layout]); 1] = [(crate::maps::previous::CONNTRACK_MAP_V0, &[NAT_FLOW_V0])];

/// The entry of [`PINNED_MAPS`] for the pin `name`.
pub fn pinned_map(name: &str) -> Option<&'static PinnedMap> {
    PINNED_MAPS.iter().find(|map| map.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_layout_describes_every_byte() {
        for map in &PINNED_MAPS {
            for layout in map.key.iter().chain(map.value) {
                assert!(
                    layout.is_complete(),
                    "{}: the description of {} misses bytes or a field",
                    map.name,
                    layout.type_name
                );
            }
        }
        for (name, layouts) in PREVIOUS_LAYOUTS {
            for layout in layouts {
                assert!(
                    layout.is_complete(),
                    "{name}: the description of {} misses bytes or a field",
                    layout.type_name
                );
            }
        }
    }

    #[test]
    fn every_pin_name_carries_a_version_and_names_are_unique() {
        for (i, map) in PINNED_MAPS.iter().enumerate() {
            assert!(split_version(map.name).is_some(), "{} has no _vN suffix", map.name);
            assert!(
                PINNED_MAPS[..i].iter().all(|other| other.family() != map.family()),
                "two pinned maps of family {}",
                map.family()
            );
        }
        assert_eq!(split_version("routes_v12"), Some(("routes", 12)));
        assert_eq!(split_version("monitor_lease_v2"), Some(("monitor_lease", 2)));
        assert_eq!(split_version("links"), None);
        assert_eq!(split_version("routes_vx"), None);
    }

    #[test]
    fn the_fingerprint_sees_a_moved_field() {
        let map = pinned_map(CONNTRACK_MAP).copied().expect("conntrack is pinned");
        let moved = PinnedMap { value: &[NAT_FLOW_V0], ..map };
        let resized = PinnedMap { max_entries: map.max_entries * 2, ..map };
        if map.value[0] != NAT_FLOW_V0 {
            assert_ne!(map.fingerprint(), moved.fingerprint());
        }
        assert_ne!(map.fingerprint(), resized.fingerprint());
    }
}
