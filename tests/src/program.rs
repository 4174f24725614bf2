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
    peer_flags, route_flags, route_kind, Ipv6Bytes, NodeConfig6, Route6, Workload6, NODE6_MAP, PEERS6_MAP, ROUTES6_MAP,
    WORKLOADS6_MAP,
};
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

/// The IPv6 side of [`CLUSTER`]: node-1 and node-2 with IPv6 addresses, a /48 pool carved into
/// /122 blocks (Calico's default), pods A and B on node-1 and C on node-2. The plan does not
/// produce IPv6 entries yet, so [`Node::write_ipv6_fixture`] writes these straight into the
/// IPv6 maps.
pub mod fixture6 {
    /// An IPv6 address from its eight 16-bit groups, as it is written (`fd00:10:244:1::2`).
    pub const fn addr(groups: [u16; 8]) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        let mut i = 0;
        while i < 8 {
            let group = groups[i].to_be_bytes();
            bytes[2 * i] = group[0];
            bytes[2 * i + 1] = group[1];
            i += 1;
        }
        bytes
    }

    /// The pool `fd00:10:244::/48`.
    pub const POOL: [u8; 16] = addr([0xfd00, 0x10, 0x244, 0, 0, 0, 0, 0]);
    /// The pool's prefix length.
    pub const POOL_LEN: u32 = 48;
    /// Calico's default IPv6 block size.
    pub const BLOCK_LEN: u32 = 122;
    /// node-1's block `fd00:10:244:1::/122`.
    pub const LOCAL_BLOCK: [u8; 16] = addr([0xfd00, 0x10, 0x244, 1, 0, 0, 0, 0]);
    /// node-2's block `fd00:10:244:2::/122`.
    pub const REMOTE_BLOCK: [u8; 16] = addr([0xfd00, 0x10, 0x244, 2, 0, 0, 0, 0]);
    /// Pod A on node-1 (on the tested interface).
    pub const POD_A: [u8; 16] = addr([0xfd00, 0x10, 0x244, 1, 0, 0, 0, 2]);
    /// Pod A's link-local address: the EUI-64 of its MAC `0a:58:0a:f4:01:02`.
    pub const POD_A_LINK_LOCAL: [u8; 16] = addr([0xfe80, 0, 0, 0, 0x0858, 0x0aff, 0xfef4, 0x0102]);
    /// Pod B on node-1.
    pub const POD_B: [u8; 16] = addr([0xfd00, 0x10, 0x244, 1, 0, 0, 0, 3]);
    /// An address of node-1's block without a workload.
    pub const POD_NONE: [u8; 16] = addr([0xfd00, 0x10, 0x244, 1, 0, 0, 0, 0x32]);
    /// Pod C on node-2.
    pub const REMOTE_POD: [u8; 16] = addr([0xfd00, 0x10, 0x244, 2, 0, 0, 0, 2]);
    /// node-1's IPv6 address.
    pub const NODE: [u8; 16] = addr([0xfd00, 0x100, 0, 0, 0, 0, 0, 0x11]);
    /// node-2's IPv6 address.
    pub const PEER: [u8; 16] = addr([0xfd00, 0x100, 0, 0, 0, 0, 0, 0x12]);
    /// An IPv6 address of no node of the cluster.
    pub const STRANGER: [u8; 16] = addr([0xfd00, 0x100, 0, 0, 0, 0, 0, 0x99]);
    /// An address outside every pool (the documentation prefix).
    pub const EXTERNAL: [u8; 16] = addr([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10]);
    /// The all-nodes multicast group.
    pub const ALL_NODES: [u8; 16] = addr([0xff02, 0, 0, 0, 0, 0, 0, 1]);
    /// The solicited-node multicast group of the gateway `fe80::ecee:eeff:feee:eeee`.
    pub const GATEWAY_SOLICITED_NODE: [u8; 16] = addr([0xff02, 0, 0, 0, 0, 1, 0xffee, 0xeeee]);
    /// node-1's IPv6 VTEP MAC.
    pub const NODE_VTEP_MAC: [u8; 6] = [0x66, 0xd6, 0, 0, 0, 1];
    /// node-2's IPv6 VTEP MAC.
    pub const PEER_VTEP_MAC: [u8; 6] = [0x66, 0xd6, 0, 0, 0, 2];
    /// Pod A's MAC (as in [`super::CLUSTER`]).
    pub const POD_A_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02];
    /// Pod B's MAC (as in [`super::CLUSTER`]).
    pub const POD_B_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x03];
}

impl Node {
    /// node-1 of [`CLUSTER`] with the IPv6 side of [`fixture6`] written too: a dual-stack node.
    pub fn dual_stack() -> Self {
        let mut node = Node::new("node-1");
        node.write_ipv6_fixture();
        node
    }

    /// Writes node-1's IPv6 entries of [`fixture6`], as the agent will once the plan has them.
    pub fn write_ipv6_fixture(&mut self) {
        use fixture6::*;
        let in_pool = route_flags::IN_POOL;
        let workload = |ifindex, mac| Route6 {
            kind: route_kind::LOCAL_WORKLOAD,
            flags: in_pool,
            ifindex,
            mac,
            ..Default::default()
        };
        self.set_route6(POOL_LEN, POOL, Route6 { kind: route_kind::POOL, flags: in_pool, ..Default::default() });
        self.set_route6(
            BLOCK_LEN,
            LOCAL_BLOCK,
            Route6 { kind: route_kind::LOCAL_BLOCK, flags: in_pool, ..Default::default() },
        );
        self.set_route6(128, POD_A, workload(TESTED_IFINDEX, POD_A_MAC));
        self.set_route6(128, POD_B, workload(OTHER_IFINDEX, POD_B_MAC));
        self.set_route6(
            BLOCK_LEN,
            REMOTE_BLOCK,
            Route6 {
                kind: route_kind::REMOTE_BLOCK,
                flags: in_pool | route_flags::ENCAP_VXLAN,
                node_addr: PEER,
                mac: PEER_VTEP_MAC,
                ..Default::default()
            },
        );
        self.set_workload6(TESTED_IFINDEX, Workload6 { addr: POD_A, mac: POD_A_MAC, ..Default::default() });
        self.set_workload6(OTHER_IFINDEX, Workload6 { addr: POD_B, mac: POD_B_MAC, ..Default::default() });
        let mut peers: HashMap<_, Ipv6Bytes, Peer> = HashMap::try_from(self.ebpf.map_mut(PEERS6_MAP).unwrap()).unwrap();
        peers.insert(PEER, Peer { flags: peer_flags::VXLAN }, 0).unwrap();
        let mut node: Array<_, NodeConfig6> = Array::try_from(self.ebpf.map_mut(NODE6_MAP).unwrap()).unwrap();
        node.set(0, NodeConfig6 { addr: NODE, vtep_mac: NODE_VTEP_MAC, _pad: [0; 2] }, 0).unwrap();
    }

    /// Writes the IPv6 route of `addr/prefix_len`.
    pub fn set_route6(&mut self, prefix_len: u32, addr: Ipv6Bytes, route: Route6) {
        let mut routes: LpmTrie<_, Ipv6Bytes, Route6> =
            LpmTrie::try_from(self.ebpf.map_mut(ROUTES6_MAP).unwrap()).unwrap();
        routes.insert(&Key::new(prefix_len, addr), route, 0).unwrap();
    }

    /// Writes the IPv6 side of the workload behind `ifindex`.
    pub fn set_workload6(&mut self, ifindex: u32, workload: Workload6) {
        let mut workloads: HashMap<_, u32, Workload6> =
            HashMap::try_from(self.ebpf.map_mut(WORKLOADS6_MAP).unwrap()).unwrap();
        workloads.insert(ifindex, workload, 0).unwrap();
    }
}
