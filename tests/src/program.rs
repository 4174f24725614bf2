//! Loading the kernel programs for BPF_PROG_TEST_RUN, with maps filled as the agent fills them.
//!
//! Each [`Node`] is its own copy of the programs with fresh, unpinned maps, filled through the
//! agent's own path (YAML -> model -> plan -> map entries). Needs root (CAP_BPF).

#![allow(clippy::unwrap_used, reason = "test fixtures: a failed unwrap is a failed test")]

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, PerCpuArray},
    programs::{tc::SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use dataplane::{backend::entries, datastore::file, plan, trace::State};
use dataplane_common::{
    FlowKey, FragmentKey, FragmentNat, Ipv4Bytes, NatFlow, NodeConfig, Peer, Route, Stat, Workload, CONNTRACK_MAP,
    FRAGMENTS_MAP, NODE_MAP, PEERS_MAP, PROG_FROM_UPLINK, PROG_FROM_WORKLOAD, PROG_TO_UPLINK, PROG_TO_WORKLOAD,
    PROG_XDP_UPLINK, ROUTES_MAP, STATS_MAP, WORKLOADS_MAP,
};
use dataplane_common::{Pools, TunnelTemplates, WorkloadSlot, POOLS_MAP, TUNNEL_TEMPLATES_MAP, WORKLOAD_SLOTS_MAP};

pub use dataplane_common::net::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS};

/// Interface of the tested workload: BPF_PROG_TEST_RUN runs skbs on the loopback (ifindex 1).
pub const TESTED_IFINDEX: u32 = 1;
/// The SNAT port range in the fixtures: small, so that exhausting it is quick.
pub const NAT_PORTS: (u16, u16) = (40000, 40003);
/// The uplink's MTU in the fixtures.
pub const UPLINK_MTU: u32 = 1500;
/// A second workload's interface; never used as the ingress device, only as redirect target.
pub const OTHER_IFINDEX: u32 = 1000;

/// The fixture cluster: node-1 and node-2, a VXLAN pool with natOutgoing, pods A and B on
/// node-1 (A on the tested interface) and C on node-2 (on the tested interface there).
pub const CLUSTER: &str = r#"
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: default-ipv4-ippool}
spec: {cidr: 10.244.0.0/16, blockSize: 26, vxlanMode: Always, ipipMode: Never, natOutgoing: true}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: node-1}
spec:
  bgp: {ipv4Address: 10.100.0.11/24}
  ipv4VXLANTunnelAddr: 10.244.1.0
  vxlanTunnelMACAddr: "66:d0:00:00:00:01"
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: node-2}
spec:
  bgp: {ipv4Address: 10.100.0.12/24}
  ipv4VXLANTunnelAddr: 10.244.2.0
  vxlanTunnelMACAddr: "66:d0:00:00:00:02"
---
apiVersion: crd.projectcalico.org/v1
kind: BlockAffinity
metadata: {name: ipam-block-affinity-10-244-1-0-26}
spec: {cidr: 10.244.1.0/26, node: node-1, state: confirmed, deleted: "false"}
---
apiVersion: crd.projectcalico.org/v1
kind: BlockAffinity
metadata: {name: ipam-block-affinity-10-244-2-0-26}
spec: {cidr: 10.244.2.0/26, node: node-2, state: confirmed, deleted: "false"}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: node--1-k8s-pod--a-eth0, namespace: default}
spec: {node: node-1, pod: pod-a, interfaceName: calitesteda0001, ipNetworks: [10.244.1.2/32], mac: "0a:58:0a:f4:01:02"}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: node--1-k8s-pod--b-eth0, namespace: default}
spec: {node: node-1, pod: pod-b, interfaceName: caliothereb0001, ipNetworks: [10.244.1.3/32], mac: "0a:58:0a:f4:01:03"}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: node--2-k8s-pod--c-eth0, namespace: default}
spec: {node: node-2, pod: pod-c, interfaceName: calitestedc0001, ipNetworks: [10.244.2.2/32], mac: "0a:58:0a:f4:02:02"}
"#;

/// One node's programs with their own maps, filled as the agent would fill them.
pub struct Node {
    /// The loaded programs and their maps.
    pub ebpf: Ebpf,
}

impl Node {
    /// `name`'s programs with maps filled from [`CLUSTER`].
    pub fn new(name: &str) -> Self {
        Self::with_cluster(name, CLUSTER)
    }

    /// `name`'s programs with maps filled from `cluster` (Calico YAML).
    pub fn with_cluster(name: &str, cluster: &str) -> Self {
        Self::build(name, cluster, None, dataplane::backend::bpf::object(), true)
    }

    /// [`Node::with_cluster`] with another build of the kernel programs (the bench's baseline
    /// object: the same maps, filled the same way).
    pub fn with_object(name: &str, cluster: &str, object: &[u8]) -> Self {
        Self::build(name, cluster, None, object, true)
    }

    /// `name`'s programs without the `dataplane monitor` hook at their exit: the baseline of
    /// what the hook costs when no reader holds the lease.
    pub fn without_monitor_hook(name: &str) -> Self {
        Self::build(name, CLUSTER, None, dataplane::backend::bpf::object(), false)
    }

    /// `name`'s programs with a conntrack map of only `entries` entries, to fill it quickly.
    pub fn with_conntrack_capacity(name: &str, entries: u32) -> Self {
        Self::build(name, CLUSTER, Some(entries), dataplane::backend::bpf::object(), true)
    }

    fn build(name: &str, cluster: &str, conntrack_capacity: Option<u32>, object: &[u8], monitor_hook: bool) -> Self {
        let (model, problems) = file::parse(cluster).expect("fixture parses");
        assert!(problems.is_empty(), "{problems:?}");
        let (plan, problems) = plan::compute(&model, name).expect("fixture plans");
        assert!(problems.is_empty(), "{problems:?}");
        let (desired, missing) = entries::from_plan(
            &plan,
            entries::Uplink { ifindex: 2, mtu: UPLINK_MTU, nat_ports: NAT_PORTS },
            fixture_ifindex,
            &Default::default(),
        );
        assert!(missing.is_empty());

        let mut loader = dataplane::backend::bpf::loader(dataplane::backend::bpf::KernelLog::Off);
        if let Some(entries) = conntrack_capacity {
            loader.map_max_entries(CONNTRACK_MAP, entries);
        }
        if !monitor_hook {
            loader.override_global(dataplane_common::monitor::MONITOR_HOOK_GLOBAL, &0u8, true);
        }
        let mut ebpf = loader.load(object).expect("object loads");
        for program in [PROG_FROM_WORKLOAD, PROG_FROM_UPLINK, PROG_TO_UPLINK, PROG_TO_WORKLOAD] {
            let program: &mut SchedClassifier =
                ebpf.program_mut(program).expect("program exists").try_into().expect("classifier");
            program.load().expect("the verifier accepts the program");
        }
        let xdp: &mut Xdp = ebpf.program_mut(PROG_XDP_UPLINK).expect("program exists").try_into().expect("XDP");
        xdp.load().expect("the verifier accepts the XDP program");
        let mut node: Array<_, NodeConfig> = Array::try_from(ebpf.map_mut(NODE_MAP).unwrap()).unwrap();
        node.set(0, desired.node, 0).unwrap();
        write_templates(&mut ebpf, &desired.node);
        let mut routes: LpmTrie<_, Ipv4Bytes, Route> = LpmTrie::try_from(ebpf.map_mut(ROUTES_MAP).unwrap()).unwrap();
        for ((len, addr), route) in &desired.routes {
            routes.insert(&Key::new(*len, *addr), *route, 0).unwrap();
        }
        let mut workloads: HashMap<_, u32, Workload> = HashMap::try_from(ebpf.map_mut(WORKLOADS_MAP).unwrap()).unwrap();
        for (index, workload) in &desired.workloads {
            workloads.insert(*index, *workload, 0).unwrap();
        }
        write_slots(&mut ebpf, &desired.workloads);
        write_pools(&mut ebpf, &desired.routes);
        let mut peers: HashMap<_, Ipv4Bytes, Peer> = HashMap::try_from(ebpf.map_mut(PEERS_MAP).unwrap()).unwrap();
        for (addr, peer) in &desired.peers {
            peers.insert(*addr, *peer, 0).unwrap();
        }
        Node { ebpf }
    }

    /// Runs `program` on `packet`; returns the TC verdict and the output packet.
    pub fn run(&self, program: &str, packet: &[u8]) -> (u32, Vec<u8>) {
        let program: &SchedClassifier = self.ebpf.program(program).unwrap().try_into().unwrap();
        let mut out = vec![0u8; packet.len() + 256];
        let result = program
            .test_run(TestRunOptions { data_in: Some(packet), data_out: Some(&mut out), ..Default::default() })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    /// Runs the uplink's XDP program on `packet`; returns the XDP verdict and the output frame.
    pub fn run_xdp(&self, packet: &[u8]) -> (u32, Vec<u8>) {
        let program: &Xdp = self.ebpf.program(PROG_XDP_UPLINK).unwrap().try_into().unwrap();
        let mut out = vec![0u8; packet.len() + 256];
        let result = program
            .test_run(TestRunOptions { data_in: Some(packet), data_out: Some(&mut out), ..Default::default() })
            .expect("BPF_PROG_TEST_RUN of the XDP program");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    /// A counter of the stats map, summed over CPUs.
    pub fn stat(&self, stat: Stat) -> u64 {
        let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(self.ebpf.map(STATS_MAP).unwrap()).unwrap();
        stats.get(&stat.index(), 0).unwrap().iter().sum()
    }
}

/// [`crate::skip_unless_root`] for the BPF_PROG_TEST_RUN tests.
pub fn skip_unless_root() -> bool {
    crate::skip_unless_root("this BPF_PROG_TEST_RUN test")
}

impl Node {
    /// Rewrites the routes and workloads maps from `cluster`, as the agent does when the datastore
    /// changes (the peers, node and conntrack maps stay).
    pub fn reprogram_routes(&mut self, name: &str, cluster: &str) {
        let (model, _) = file::parse(cluster).expect("fixture parses");
        let (plan, _) = plan::compute(&model, name).expect("fixture plans");
        let uplink = entries::Uplink { ifindex: 2, mtu: UPLINK_MTU, nat_ports: NAT_PORTS };
        let (desired, _) = entries::from_plan(&plan, uplink, fixture_ifindex, &Default::default());
        let mut routes: LpmTrie<_, Ipv4Bytes, Route> =
            LpmTrie::try_from(self.ebpf.map_mut(ROUTES_MAP).unwrap()).unwrap();
        for ((len, addr), route) in &desired.routes {
            routes.insert(&Key::new(*len, *addr), *route, 0).unwrap();
        }
        // The workload entries carry their pool's natOutgoing too.
        let mut workloads: HashMap<_, u32, Workload> =
            HashMap::try_from(self.ebpf.map_mut(WORKLOADS_MAP).unwrap()).unwrap();
        for (index, workload) in &desired.workloads {
            workloads.insert(*index, *workload, 0).unwrap();
        }
        write_slots(&mut self.ebpf, &desired.workloads);
        write_pools(&mut self.ebpf, &desired.routes);
    }

    /// Writes `slot` at `index` of the workload slots map, as a stale or colliding slot would be.
    pub fn set_workload_slot(&mut self, index: u32, slot: WorkloadSlot) {
        let mut slots: Array<_, WorkloadSlot> =
            Array::try_from(self.ebpf.map_mut(WORKLOAD_SLOTS_MAP).unwrap()).unwrap();
        slots.set(index, slot, 0).unwrap();
    }

    /// Every conntrack entry.
    pub fn conntrack(&self) -> Vec<(FlowKey, NatFlow)> {
        let map: HashMap<_, FlowKey, NatFlow> = HashMap::try_from(self.ebpf.map(CONNTRACK_MAP).unwrap()).unwrap();
        map.iter().map(|entry| entry.unwrap()).collect()
    }

    /// Inserts a conntrack entry, as a flow of another pod would have.
    pub fn insert_conntrack(&mut self, key: FlowKey, flow: NatFlow) {
        let mut map: HashMap<_, FlowKey, NatFlow> =
            HashMap::try_from(self.ebpf.map_mut(CONNTRACK_MAP).unwrap()).unwrap();
        map.insert(key, flow, 0).unwrap();
    }
}

/// Fills the workload slots map from `workloads` as the agent does (every slot it derives).
/// An object built before the slots existed (the bench's baseline) has no such map.
fn write_slots(ebpf: &mut Ebpf, workloads: &std::collections::BTreeMap<u32, Workload>) {
    let Some(map) = ebpf.map_mut(WORKLOAD_SLOTS_MAP) else { return };
    let mut slots: Array<_, WorkloadSlot> = Array::try_from(map).unwrap();
    for (index, slot) in entries::workload_slots(workloads) {
        slots.set(index, slot, 0).unwrap();
    }
}

/// Writes the pools map from `routes` as the agent does; skipped, like [`write_slots`], for an
/// object without the map.
fn write_pools(ebpf: &mut Ebpf, routes: &std::collections::BTreeMap<entries::RouteKey, Route>) {
    let Some(map) = ebpf.map_mut(POOLS_MAP) else { return };
    let mut pools: Array<_, Pools> = Array::try_from(map).unwrap();
    pools.set(0, entries::pools(routes), 0).unwrap();
}

/// Writes the tunnel templates from the node's configuration as the agent does; skipped, like
/// [`write_slots`], for an object without the map.
fn write_templates(ebpf: &mut Ebpf, node: &NodeConfig) {
    let Some(map) = ebpf.map_mut(TUNNEL_TEMPLATES_MAP) else { return };
    let mut templates: Array<_, TunnelTemplates> = Array::try_from(map).unwrap();
    templates.set(0, TunnelTemplates::for_node(node), 0).unwrap();
}

impl Node {
    /// Empties the tunnel templates map, as before the agent's first write: the programs then
    /// build the same headers from the node map.
    pub fn clear_templates(&mut self) {
        let mut templates: Array<_, TunnelTemplates> =
            Array::try_from(self.ebpf.map_mut(TUNNEL_TEMPLATES_MAP).unwrap()).unwrap();
        templates.set(0, TunnelTemplates::default(), 0).unwrap();
    }
}

/// Now on the clock the kernel programs stamp flows with (`bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Interfaces of the fixtures: the tested workload's is the loopback BPF_PROG_TEST_RUN runs on.
fn fixture_ifindex(interface: &str) -> Option<u32> {
    Some(if interface.starts_with("calitested") { TESTED_IFINDEX } else { OTHER_IFINDEX })
}

impl Node {
    /// Every counter of the stats map, summed over CPUs, in [`Stat::ALL`] order.
    pub fn stats(&self) -> Vec<u64> {
        let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(self.ebpf.map(STATS_MAP).unwrap()).unwrap();
        Stat::ALL.iter().map(|stat| stats.get(&stat.index(), 0).unwrap().iter().sum()).collect()
    }

    /// The addresses in the peers map: the nodes whose tunnel packets this node decapsulates.
    pub fn peers(&self) -> Vec<Ipv4Bytes> {
        let map: HashMap<_, Ipv4Bytes, Peer> = HashMap::try_from(self.ebpf.map(PEERS_MAP).unwrap()).unwrap();
        map.keys().map(|key| key.unwrap()).collect()
    }

    /// Everything the programs read, as `dataplane trace` reads it from the pins: what its
    /// prediction of the next packet starts from.
    pub fn state(&self) -> State {
        let node: Array<_, NodeConfig> = Array::try_from(self.ebpf.map(NODE_MAP).unwrap()).unwrap();
        let routes: LpmTrie<_, Ipv4Bytes, Route> = LpmTrie::try_from(self.ebpf.map(ROUTES_MAP).unwrap()).unwrap();
        let workloads: HashMap<_, u32, Workload> = HashMap::try_from(self.ebpf.map(WORKLOADS_MAP).unwrap()).unwrap();
        let peers: HashMap<_, Ipv4Bytes, Peer> = HashMap::try_from(self.ebpf.map(PEERS_MAP).unwrap()).unwrap();
        let conntrack: HashMap<_, FlowKey, NatFlow> = HashMap::try_from(self.ebpf.map(CONNTRACK_MAP).unwrap()).unwrap();
        let fragments: HashMap<_, FragmentKey, FragmentNat> =
            HashMap::try_from(self.ebpf.map(FRAGMENTS_MAP).unwrap()).unwrap();
        State {
            node: node.get(&0, 0).ok(),
            routes: routes
                .iter()
                .map(|entry| entry.map(|(key, route)| ((key.prefix_len(), key.data()), route)))
                .collect::<Result<_, _>>()
                .unwrap(),
            workloads: workloads.iter().collect::<Result<_, _>>().unwrap(),
            peers: peers.iter().collect::<Result<_, _>>().unwrap(),
            conntrack: conntrack.iter().collect::<Result<_, _>>().unwrap(),
            fragments: fragments.iter().collect::<Result<_, _>>().unwrap(),
            now_ns: monotonic_ns(),
        }
    }
}
