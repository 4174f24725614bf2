//! The maps an agent pins under its `--pin-path`, opened in one place for every reader: the
//! CLI's `routes`, `stats` and `conntrack`, the metrics endpoint, `check` and `trace`.
//!
//! Each map is opened on its own when asked for, so that one missing or changed map does not
//! hide the others (`check` reports each one separately), and every opener says the same thing
//! when the pin is not there.

use std::{
    borrow::Borrow,
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use aya::maps::{lpm_trie::LpmTrie, Array, HashMap, Map, MapData, PerCpuArray, RingBuf};
use dataplane_common::{
    monitor::{MONITOR_COUNTS_MAP, MONITOR_EVENTS_MAP, MONITOR_LEASE_MAP},
    FlowKey, FragmentKey, FragmentNat, Ipv4Bytes, MonitorLease, NatFlow, NodeConfig, Peer, Route, Stat, Workload,
    CONNTRACK_MAP, FRAGMENTS_MAP, NODE_MAP, PEERS_MAP, ROUTES_MAP, STATS_MAP, WORKLOADS_MAP,
};

use crate::backend::entries::RouteKey;

/// The pinned maps under one pin directory.
#[derive(Clone, Debug)]
pub struct PinnedMaps {
    pin_path: PathBuf,
}

impl PinnedMaps {
    /// The maps an agent with `--pin-path pin_path` pinned (nothing is opened yet).
    pub fn at(pin_path: &Path) -> Self {
        PinnedMaps { pin_path: pin_path.to_owned() }
    }

    /// Opens the pin `name`, saying which agent setting would have made it.
    fn open(&self, name: &str) -> anyhow::Result<MapData> {
        let path = self.pin_path.join(name);
        MapData::from_pin(&path).with_context(|| {
            format!("opening {}: is an agent running with --pin-path {}?", path.display(), self.pin_path.display())
        })
    }

    /// The routes map: the LPM trie of destination prefixes.
    pub fn routes(&self) -> anyhow::Result<LpmTrie<MapData, Ipv4Bytes, Route>> {
        LpmTrie::try_from(Map::LpmTrie(self.open(ROUTES_MAP)?)).context("the routes map has an unexpected layout")
    }

    /// The workloads map: host-side interface index -> workload.
    pub fn workloads(&self) -> anyhow::Result<HashMap<MapData, u32, Workload>> {
        HashMap::try_from(Map::HashMap(self.open(WORKLOADS_MAP)?)).context("the workloads map has an unexpected layout")
    }

    /// The peers map: peer node address -> tunnel facts.
    pub fn peers(&self) -> anyhow::Result<HashMap<MapData, Ipv4Bytes, Peer>> {
        HashMap::try_from(Map::HashMap(self.open(PEERS_MAP)?)).context("the peers map has an unexpected layout")
    }

    /// The conntrack map of SNATed flows.
    pub fn conntrack(&self) -> anyhow::Result<HashMap<MapData, FlowKey, NatFlow>> {
        HashMap::try_from(Map::HashMap(self.open(CONNTRACK_MAP)?)).context("the conntrack map has an unexpected layout")
    }

    /// The fragments map: the translation each fragmented datagram's first fragment got.
    pub fn fragments(&self) -> anyhow::Result<HashMap<MapData, FragmentKey, FragmentNat>> {
        HashMap::try_from(Map::LruHashMap(self.open(FRAGMENTS_MAP)?))
            .context("the fragments map has an unexpected layout")
    }

    /// The node map: this node's configuration in its single slot.
    pub fn node(&self) -> anyhow::Result<Array<MapData, NodeConfig>> {
        Array::try_from(Map::Array(self.open(NODE_MAP)?)).context("the node map has an unexpected layout")
    }

    /// The per-CPU stats map: one slot per decision and drop reason.
    pub fn stats(&self) -> anyhow::Result<PerCpuArray<MapData, u64>> {
        PerCpuArray::try_from(Map::PerCpuArray(self.open(STATS_MAP)?)).context("the stats map has an unexpected layout")
    }

    /// `dataplane monitor`'s events ring buffer.
    pub fn monitor_events(&self) -> anyhow::Result<RingBuf<MapData>> {
        RingBuf::try_from(Map::RingBuf(self.open(MONITOR_EVENTS_MAP)?))
            .context("the monitor's events map is not a ring buffer")
    }

    /// `dataplane monitor`'s lease: whether, and until when, the programs emit events.
    pub fn monitor_lease(&self) -> anyhow::Result<Array<MapData, MonitorLease>> {
        Array::try_from(Map::Array(self.open(MONITOR_LEASE_MAP)?))
            .context("the monitor's lease map has an unexpected layout")
    }

    /// `dataplane monitor`'s per-CPU counters: events emitted and lost.
    pub fn monitor_counts(&self) -> anyhow::Result<PerCpuArray<MapData, u64>> {
        PerCpuArray::try_from(Map::PerCpuArray(self.open(MONITOR_COUNTS_MAP)?))
            .context("the monitor's counters map has an unexpected layout")
    }

    /// The node map's single value.
    pub fn read_node(&self) -> anyhow::Result<NodeConfig> {
        self.node()?.get(&0, 0).context("reading the node map")
    }

    /// Every entry of the routes map, keyed as the agent writes them.
    pub fn read_routes(&self) -> anyhow::Result<BTreeMap<RouteKey, Route>> {
        self.routes()?
            .iter()
            .map(|entry| entry.map(|(key, route)| ((key.prefix_len(), key.data()), route)))
            .collect::<Result<_, _>>()
            .context("reading the routes map")
    }

    /// Every entry of the workloads map.
    pub fn read_workloads(&self) -> anyhow::Result<BTreeMap<u32, Workload>> {
        self.workloads()?.iter().collect::<Result<_, _>>().context("reading the workloads map")
    }

    /// Every entry of the peers map.
    pub fn read_peers(&self) -> anyhow::Result<BTreeMap<Ipv4Bytes, Peer>> {
        self.peers()?.iter().collect::<Result<_, _>>().context("reading the peers map")
    }

    /// Every entry of the conntrack map.
    pub fn read_conntrack(&self) -> anyhow::Result<BTreeMap<FlowKey, NatFlow>> {
        self.conntrack()?.iter().collect::<Result<_, _>>().context("reading the conntrack map")
    }

    /// Every entry of the fragments map.
    pub fn read_fragments(&self) -> anyhow::Result<BTreeMap<FragmentKey, FragmentNat>> {
        self.fragments()?.iter().collect::<Result<_, _>>().context("reading the fragments map")
    }

    /// Every counter of the stats map, summed over CPUs.
    pub fn read_counters(&self) -> anyhow::Result<Vec<(Stat, u64)>> {
        counters(&self.stats()?)
    }
}

/// Every counter of a stats map (pinned, or a program's own fresh one), summed over CPUs, in
/// the order of [`Stat::ALL`].
pub fn counters<T: Borrow<MapData>>(stats: &PerCpuArray<T, u64>) -> anyhow::Result<Vec<(Stat, u64)>> {
    Stat::ALL
        .iter()
        .map(|stat| {
            let per_cpu = stats.get(&stat.index(), 0).with_context(|| format!("reading counter {}", stat.name()))?;
            Ok((*stat, per_cpu.iter().sum()))
        })
        .collect()
}
