//! The BPF backend: loads the kernel programs, pins maps and links, keeps the maps equal to the
//! plan and the programs attached where the plan says.
//!
//! Everything lives under the pin path, so the fast path outlives the agent: a new agent loads
//! with the same pins, adopts the maps as they are, swaps its programs into the existing links
//! atomically (BPF_LINK_UPDATE) and writes only the map entries that differ.
//!
//! Programs attach by one of two methods ([`AttachMethod`]): pinned tcx links (Linux 6.6+), or
//! direct-action filters of a clsact qdisc (see [`super::clsact`]), which outlive the agent by
//! themselves and which the next agent replaces in place. An agent takes over whatever the one
//! before it attached, by either method: it attaches its own first, then removes the other
//! method's attachment of the same hook, so no packet meets a hook without a program and no hook
//! keeps both.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    net::Ipv4Addr,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData},
    programs::{
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        LinkOrder, SchedClassifier, TcAttachType, Xdp,
    },
    Ebpf, EbpfLoader,
};
use dataplane_common::{
    monitor::{MONITOR_LEASE_MAP, MONITOR_LEASE_MAP_V1, MONITOR_LEASE_SECTION},
    route_kind, FlowKey, FlowTimeouts, Ipv4Bytes, MonitorLease, NatFlow, NodeConfig, Peer, Pools, Route,
    TunnelTemplates, Workload, WorkloadSlot, CONNTRACK_MAP, NODE_MAP, PEERS_MAP, PINNED_MAPS, POOLS_MAP,
    PROG_FROM_UPLINK, PROG_FROM_WORKLOAD, PROG_TO_UPLINK, PROG_TO_WORKLOAD, PROG_VXLAN_ANCHOR, PROG_XDP_UPLINK,
    ROUTES_MAP, TUNNEL_TEMPLATES_MAP, WORKLOADS_MAP, WORKLOAD_SLOTS_MAP,
};
use ipnet::Ipv4Net;
use tracing::{info, warn};

use super::{
    batch, clsact,
    diff::{diff, diff_keys, drift, take_drift, Changes},
    entries::{self, MapEntries, RouteKey},
    host_routes::{self, HostRoutes},
    veth::PeerMacs,
    vxlan_anchor::{self, VxlanAnchor, ANCHOR_DEVICE},
    xdp::{self, XdpChoice, XdpMode},
};
use crate::{
    incremental::Changes as PlanChanges,
    pinned::PinnedMaps,
    plan::{Plan, PlannedRoute, RouteTarget},
    probe::AttachMethod,
    sys,
};

/// The kernel programs, built by the build script for bpfel-unknown-none.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dataplane"));

use super::kernel_log::forward_kernel_logs;
pub use super::kernel_log::KernelLog;

/// The embedded object, for tools and tests that load the programs without pins.
pub fn object() -> &'static [u8] {
    OBJECT
}

/// A loader of the embedded object with the kernel's log level set: every loader of the programs
/// (the agent, `trace --inject`, tests, benchmarks) starts from this, since aya-log's own default
/// is "log everything".
pub fn loader(log: KernelLog) -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    loader.override_global(aya_log::LEVEL, log.level(), true);
    loader
}

/// Every map the programs use (dataplane-common's table of pins); each is pinned as
/// `<pin path>/<name>`.
pub const MAPS: [&str; PINNED_MAPS.len()] = {
    let mut names = [""; PINNED_MAPS.len()];
    let mut i = 0;
    while i < PINNED_MAPS.len() {
        names[i] = PINNED_MAPS[i].name;
        i += 1;
    }
    names
};

/// Pins of earlier versions that this version no longer uses: removed when the agent loads (the
/// programs that still hold such a map keep it until they are swapped) and by cleanup.
pub const RETIRED_MAPS: [&str; 1] = [MONITOR_LEASE_MAP_V1];

/// The name aya gives the map pinned as `pin_name`: the map's own name, except for the lease,
/// which is the programs' data section (`MONITOR_LEASE_SECTION`).
pub fn object_map_name(pin_name: &str) -> &str {
    if pin_name == MONITOR_LEASE_MAP {
        MONITOR_LEASE_SECTION
    } else {
        pin_name
    }
}

/// Every program the agent loads.
const PROGRAMS: [&str; 5] = [PROG_FROM_WORKLOAD, PROG_TO_WORKLOAD, PROG_FROM_UPLINK, PROG_TO_UPLINK, PROG_VXLAN_ANCHOR];

/// Subdirectory of the pin path holding one pinned link per attached interface.
pub const LINKS_DIR: &str = "links";

/// What one reconcile changed.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Map entries and host routes written.
    pub written: usize,
    /// Map entries and host routes removed.
    pub removed: usize,
    /// Programs newly attached (or swapped into adopted links).
    pub attached: usize,
    /// Attachments removed: their interface left the plan, or an earlier agent made them by the
    /// other attach method.
    pub detached: usize,
    /// Workloads left out because their interface does not exist yet.
    pub missing: Vec<entries::MissingInterface>,
    /// When the maps held the plan (before attachments and host routes).
    pub maps_done: Option<std::time::Instant>,
    /// Where the apply's time went, step by step.
    pub steps: ApplySteps,
}

/// Where one apply's time went, step by step: the reconcile line prints each, so that a slow
/// event names the step that held it.
#[derive(Clone, Copy, Debug, Default)]
pub struct ApplySteps {
    /// The uplink's index and MTU, and the pods' MACs learned from their veths.
    pub learn: Duration,
    /// The plan (or the keys a change touched) translated into map entries.
    pub desired: Duration,
    /// The map writes, with the read of every map first when what was written is not known.
    pub write: Duration,
    /// The VXLAN anchor, TC and XDP attachments, stale links and the upgrade's last step.
    pub attach: Duration,
    /// The host routes: the peers' next hops, then the route messages.
    pub host_routes: Duration,
}

/// What this process last wrote to (or read from) the maps: the next apply writes only what
/// differs from it, without reading the kernel.
#[derive(Clone, Debug, Default)]
struct Programmed {
    node: Option<NodeConfig>,
    routes: BTreeMap<RouteKey, Route>,
    workloads: BTreeMap<u32, Workload>,
    /// The occupied workload slots, by slot index.
    slots: BTreeMap<u32, WorkloadSlot>,
    /// The pools map's value.
    pools: Option<Pools>,
    /// The tunnel templates map's value.
    templates: Option<TunnelTemplates>,
    peers: BTreeMap<Ipv4Bytes, Peer>,
}

/// What the slow resync found apart from the event loop: where the kernel holds otherwise than
/// this process had written when the read started, and how long the parts took.
pub struct KernelRead {
    /// The maps' drift; None when what this process wrote was not known when the read started.
    maps: Option<MapDrift>,
    table: host_routes::TableRead,
    /// Milliseconds copying what this process wrote, on the event loop, when the read started.
    pub copy_ms: u64,
    /// Milliseconds reading the maps and comparing them, on the blocking thread.
    pub maps_ms: u64,
    /// Milliseconds reading the route table and the peers' next hops and comparing the routes,
    /// on the blocking thread.
    pub table_ms: u64,
}

/// The map entries the kernel holds otherwise than this process wrote, with the kernel's value
/// (None: absent).
struct MapDrift {
    /// The node map's value, when it differs.
    node: Option<Option<NodeConfig>>,
    workloads: Vec<(u32, Option<Workload>)>,
    /// The occupied workload slots that differ, by slot index.
    slots: Vec<(u32, Option<WorkloadSlot>)>,
    /// The pools map's value, when it differs.
    pools: Option<Option<Pools>>,
    /// The tunnel templates map's value, when it differs.
    templates: Option<Option<TunnelTemplates>>,
    routes: Vec<(RouteKey, Option<Route>)>,
    peers: Vec<(Ipv4Bytes, Option<Peer>)>,
}

/// Every entry of the pinned maps under `pin_path`, read through their pins (its own
/// descriptors, so a blocking thread reads while the agent writes).
fn read_pinned(pin_path: &Path) -> anyhow::Result<Programmed> {
    let maps = PinnedMaps::at(pin_path);
    Ok(Programmed {
        node: maps.read_node().ok(),
        routes: maps.read_routes()?,
        workloads: maps.read_workloads()?,
        slots: read_pinned_slots(pin_path)?,
        pools: read_pinned_pools(pin_path).ok(),
        templates: read_pinned_templates(pin_path).ok(),
        peers: maps.read_peers()?,
    })
}

/// The slow resync's read, on a blocking thread: the maps under `pin_path` compared with
/// `known` (what the agent had written when the read started), then the route table through
/// `table`. The table is read over a netlink connection of this thread's own, so that a dump of
/// 100k routes and a question per peer neither run on the event loop's thread nor queue the
/// agent's own route writes behind them.
fn read_apart(
    pin_path: &Path,
    known: Option<Box<Programmed>>,
    table: host_routes::TableReader,
) -> anyhow::Result<KernelRead> {
    let started = std::time::Instant::now();
    let kernel = read_pinned(pin_path)?;
    let maps = known.map(|known| MapDrift {
        node: (known.node != kernel.node).then_some(kernel.node),
        workloads: drift(&known.workloads, kernel.workloads),
        slots: drift(&known.slots, kernel.slots),
        pools: (known.pools != kernel.pools).then_some(kernel.pools),
        templates: (known.templates != kernel.templates).then_some(kernel.templates),
        routes: drift(&known.routes, kernel.routes),
        peers: drift(&known.peers, kernel.peers),
    });
    let maps_ms = started.elapsed().as_millis() as u64;
    let started = std::time::Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("a runtime for the resync's read of the route table")?;
    let table = runtime.block_on(async { table.read(&crate::rtnl::connect()?).await })?;
    Ok(KernelRead { maps, table, copy_ms: 0, maps_ms, table_ms: started.elapsed().as_millis() as u64 })
}

/// The time since `*since`, which moves on to now: one step of a sequence timed in turn.
fn lap(since: &mut Instant) -> Duration {
    let now = Instant::now();
    let took = now.duration_since(*since);
    *since = now;
    took
}

/// The occupied slots of the workload slots map pinned under `pin_path`.
fn read_pinned_slots(pin_path: &Path) -> anyhow::Result<BTreeMap<u32, WorkloadSlot>> {
    let path = pin_path.join(WORKLOAD_SLOTS_MAP);
    let map = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let map = Array::try_from(aya::maps::Map::Array(map)).context("the workload slots map has an unexpected layout")?;
    read_slots(&map)
}

/// The value of the pools map pinned under `pin_path`.
fn read_pinned_pools(pin_path: &Path) -> anyhow::Result<Pools> {
    let path = pin_path.join(POOLS_MAP);
    let map = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let map: Array<MapData, Pools> =
        Array::try_from(aya::maps::Map::Array(map)).context("the pools map has an unexpected layout")?;
    map.get(&0, 0).context("reading the pools map")
}

/// The value of the tunnel templates map pinned under `pin_path`.
fn read_pinned_templates(pin_path: &Path) -> anyhow::Result<TunnelTemplates> {
    let path = pin_path.join(TUNNEL_TEMPLATES_MAP);
    let map = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let map: Array<MapData, TunnelTemplates> =
        Array::try_from(aya::maps::Map::Array(map)).context("the tunnel templates map has an unexpected layout")?;
    map.get(&0, 0).context("reading the tunnel templates map")
}

/// The occupied slots of a workload slots map.
fn read_slots<T: std::borrow::Borrow<MapData>>(
    map: &Array<T, WorkloadSlot>,
) -> anyhow::Result<BTreeMap<u32, WorkloadSlot>> {
    let mut slots = BTreeMap::new();
    for (index, slot) in (0..).zip(map.iter()) {
        let slot = slot.context("reading the workload slots map")?;
        if slot != WorkloadSlot::EMPTY {
            slots.insert(index, slot);
        }
    }
    Ok(slots)
}

/// The loaded programs and pinned maps of one node.
pub struct BpfBackend {
    ebpf: Ebpf,
    pin_path: PathBuf,
    /// How the programs attach.
    method: AttachMethod,
    /// Hooks this process has attached or adopted (by link pin name), with the ifindex and
    /// direction they had then.
    attached: BTreeMap<String, (u32, TcAttachType)>,
    /// Whether the first apply has removed what an earlier agent attached and no longer belongs.
    took_over: bool,
    /// The host's routes to blocks.
    host_routes: HostRoutes,
    /// Pod MACs learned from the workloads' veths, for workloads the datastore gives none.
    peer_macs: PeerMacs,
    /// The VXLAN GRO anchor device, kept while the plan has the node receive VXLAN.
    anchor: VxlanAnchor,
    /// The maps as this process last wrote them; None: read them from the kernel first (at
    /// start, to adopt the pins; after a failed write; after [`BpfBackend::forget`]).
    programmed: Option<Box<Programmed>>,
    /// The older pins found at start, removed once this agent's programs are attached.
    upgrade: crate::migrate::Upgrade,
    /// How many times the maps have been read whole from the kernel.
    map_dumps: u64,
    /// The uplink ifindex the XDP program was attached to (or found unattachable on), and how.
    xdp: Option<(u32, XdpMode)>,
    /// How the XDP program may be attached.
    xdp_choice: XdpChoice,
    /// Maps (by name) whose batch updates the kernel refused: written one entry at a time.
    no_batches: BTreeSet<&'static str>,
}

/// One program on one hook of one interface.
struct Attachment {
    interface: String,
    ifindex: u32,
    direction: TcAttachType,
    program: &'static str,
}

impl BpfBackend {
    /// Loads the programs, creating or adopting the pinned maps under `pin_path`; `method` says
    /// how they will attach, `xdp_choice` how the uplink gets its XDP program; with kernel logs
    /// on, their records are forwarded to the agent's log (target `dataplane::kernel`). `conntrack_max` sizes the conntrack map when it is created
    /// (None: the object's CONNTRACK_MAX_ENTRIES); a pinned map keeps the size it was made with.
    pub fn load(
        pin_path: &Path,
        method: AttachMethod,
        xdp_choice: XdpChoice,
        log: KernelLog,
        conntrack_max: Option<u32>,
    ) -> anyhow::Result<Self> {
        if OBJECT.is_empty() {
            bail!("this binary was built with AYA_BUILD_SKIP=1 and holds no kernel programs: rebuild without it");
        }
        sys::prepare_pin_path(pin_path)?;
        // Before anything is loaded: pins of a newer agent stop us here with the node untouched,
        // pins of an older one are carried over below.
        let upgrade = crate::migrate::survey(pin_path)?;
        let map_paths: Vec<(&str, PathBuf)> = MAPS.iter().map(|name| (*name, pin_path.join(name))).collect();
        let mut loader = loader(log);
        for (name, path) in &map_paths {
            loader.map_pin_path(object_map_name(name), path.as_path());
        }
        // aya writes a data section's initial value (no reader) into its map, adopted or not: a
        // reader's lease is read before and written back after, so a restart does not cut it.
        let lease_pin = pin_path.join(MONITOR_LEASE_MAP);
        let held_lease = if lease_pin.exists() {
            crate::pinned::PinnedMaps::at(pin_path).monitor_lease().and_then(|map| Ok(map.get(&0, 0)?)).ok()
        } else {
            None
        };
        if let Some(max_entries) = conntrack_max {
            // A map's size is fixed when it is created: an adopted pin keeps its own, and asking
            // aya for another would make it refuse the pin as incompatible.
            let pinned = pin_path.join(CONNTRACK_MAP);
            if pinned.exists() {
                info!(max_entries, pin = %pinned.display(), "--conntrack-max ignored: the pinned conntrack map keeps its size");
            } else {
                loader.map_max_entries(CONNTRACK_MAP, max_entries);
            }
        }
        let mut ebpf = loader.load(OBJECT).context("loading the kernel programs (is this kernel 5.10+ with BTF?)")?;
        // The new maps exist now, beside the old pins the running programs still use.
        upgrade.migrate(&mut ebpf)?;
        if let Some(lease) = held_lease.filter(|lease| *lease != MonitorLease::NONE) {
            let map = ebpf.map_mut(MONITOR_LEASE_SECTION).context("the object has no monitor lease")?;
            aya::maps::Array::<_, MonitorLease>::try_from(map)
                .and_then(|mut leases| leases.set(0, lease, 0))
                .context("restoring the monitor's lease")?;
        }
        for name in RETIRED_MAPS {
            remove_pin(&pin_path.join(name))?;
        }
        if log != KernelLog::Off {
            forward_kernel_logs(&mut ebpf)?;
        }
        for name in PROGRAMS {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()
                .with_context(|| format!("program {name} is not a TC classifier"))?;
            program.load().with_context(|| format!("verifying program {name}"))?;
        }
        // XDP only adds an earlier drop of what from_uplink refuses: a kernel that cannot load it
        // keeps the TC path (said once, here).
        let xdp: &mut Xdp = ebpf
            .program_mut(PROG_XDP_UPLINK)
            .with_context(|| format!("program {PROG_XDP_UPLINK} missing from the object"))?
            .try_into()
            .with_context(|| format!("program {PROG_XDP_UPLINK} is not an XDP program"))?;
        if xdp_choice == XdpChoice::Off {
            info!(xdp = %XdpMode::None, "XDP off (--xdp off, or the probe reports none): from_uplink alone refuses tunnel packets");
        } else if let Err(error) = xdp.load() {
            warn!(program = PROG_XDP_UPLINK, xdp = %XdpMode::None, error = %error, "the kernel refuses the XDP program; the TC programs do its work");
        }
        crate::sys::create_private_dir(&pin_path.join(LINKS_DIR))?;
        // One netlink connection for the routes, the pods' MACs and the anchor.
        let handle = crate::rtnl::connect()?;
        Ok(BpfBackend {
            ebpf,
            pin_path: pin_path.to_owned(),
            method,
            attached: BTreeMap::new(),
            took_over: false,
            host_routes: HostRoutes::new(handle.clone()),
            peer_macs: PeerMacs::new(handle.clone()),
            anchor: VxlanAnchor::new(handle),
            programmed: None,
            map_dumps: 0,
            xdp: None,
            xdp_choice,
            no_batches: BTreeSet::new(),
            upgrade,
        })
    }

    /// Drops what this process remembers of the kernel's state: the next apply reads the maps
    /// and the host routes again and repairs whatever else changed them (the slow resync).
    pub fn forget(&mut self) {
        self.programmed = None;
        self.host_routes.forget();
    }

    /// The slow resync's read of the maps (through their pins) and of the host routes, compared
    /// on a blocking thread with a copy of what this process has written, taken now: a future
    /// that borrows nothing, which the agent runs in a task of its own while it keeps applying
    /// events, then hands the result to [`BpfBackend::take_read`].
    pub fn read_later(&self) -> impl std::future::Future<Output = anyhow::Result<KernelRead>> + Send + 'static {
        let copied = std::time::Instant::now();
        let pin_path = self.pin_path.clone();
        let known = self.programmed.clone();
        let table = self.host_routes.reader();
        let copy_ms = copied.elapsed().as_millis() as u64;
        async move {
            let read = tokio::task::spawn_blocking(move || read_apart(&pin_path, known, table))
                .await
                .context("the resync's read of the kernel stopped")??;
            Ok(KernelRead { copy_ms, ..read })
        }
    }

    /// Takes in a [`BpfBackend::read_later`] read: what the kernel holds otherwise than this
    /// process wrote is taken as the kernel's, and returned as plan keys to compare again (the
    /// next apply repairs them, within those keys); None when nothing drifted. Costs what
    /// drifted: the compare ran apart.
    pub fn take_read(&mut self, read: KernelRead) -> Option<PlanChanges> {
        self.map_dumps += 1;
        let mut changes = PlanChanges::default();
        // The node and workloads maps are compared whole at every apply: a drift there needs
        // only an apply.
        let mut drifted = false;
        // Unknown (a failed write, before or since the read started): the next apply reads the
        // maps anyway.
        if let (Some(programmed), Some(maps)) = (self.programmed.as_mut(), read.maps) {
            let MapDrift { node, workloads, slots, pools, templates, routes, peers } = maps;
            if let Some(node) = node {
                programmed.node = node;
                drifted = true;
            }
            if let Some(pools) = pools {
                programmed.pools = pools;
                drifted = true;
            }
            if let Some(templates) = templates {
                programmed.templates = templates;
                drifted = true;
            }
            drifted |= !take_drift(&mut programmed.workloads, workloads).is_empty();
            drifted |= !take_drift(&mut programmed.slots, slots).is_empty();
            for (prefix_len, addr) in take_drift(&mut programmed.routes, routes) {
                match u8::try_from(prefix_len).ok().and_then(|len| Ipv4Net::new(Ipv4Addr::from(addr), len).ok()) {
                    Some(prefix) => {
                        changes.routes.insert(prefix);
                    }
                    // No prefix of ours: only a whole compare removes it.
                    None => changes.everything = true,
                }
            }
            changes.nodes.extend(take_drift(&mut programmed.peers, peers).into_iter().map(Ipv4Addr::from));
        }
        let (routes, moved) = self.host_routes.take_read(read.table);
        changes.routes.extend(routes);
        // A peer's next hop moved: every host route via it changes.
        changes.everything |= moved;
        (drifted || !changes.is_empty()).then_some(changes)
    }

    /// Whole reads of the maps and of the route table so far (none in steady state).
    pub fn dumps(&self) -> u64 {
        self.map_dumps + self.host_routes.dumps()
    }

    /// Makes the kernel match `plan`: attaches programs to the uplink and to every workload
    /// interface, then writes the map entries that differ and removes stale ones. With `touched`
    /// (what the incremental planner changed since the last apply), only those routes, peers and
    /// host routes are compared and written, unless this process does not know what the kernel
    /// holds (first apply, after a failed write, after [`BpfBackend::forget`]).
    pub async fn apply(
        &mut self,
        plan: &Plan,
        touched: Option<&PlanChanges>,
        uplink: &str,
        nat_ports: (u16, u16),
        timeouts: FlowTimeouts,
    ) -> anyhow::Result<ApplyReport> {
        let mut report = ApplyReport::default();
        let mut step = Instant::now();
        let uplink_ifindex = sys::ifindex(uplink)
            .with_context(|| format!("uplink interface {uplink:?} does not exist in this network namespace"))?;
        let uplink_mtu = sys::mtu(uplink)?;
        let known = self.programmed.as_ref().is_some_and(|programmed| {
            programmed.node.is_some_and(|node| node.uplink_ifindex == uplink_ifindex && node.uplink_mtu == uplink_mtu)
        }) && self.host_routes.knows_table();
        let within = touched.filter(|changes| known && !changes.everything).map(|changes| {
            let mut routes = changes.routes.clone();
            // A workload's /32 waits for its interface: look again at every apply.
            routes.extend(plan.workloads.values().map(|workload| Ipv4Net::from(workload.addr)));
            entries::Within { routes, peers: changes.nodes.clone() }
        });
        // The datastore may have no pod MACs (Kubernetes): learn those from the pods' veths.
        let learned = self.peer_macs.learn(&entries::without_mac(plan, sys::ifindex)).await;
        report.steps.learn = lap(&mut step);
        let (mut desired, missing) = entries::from_plan_within(
            plan,
            entries::Uplink { ifindex: uplink_ifindex, mtu: uplink_mtu, nat_ports },
            sys::ifindex,
            &learned,
            within.as_ref(),
        );
        desired.node.timeouts = timeouts;
        for gap in &missing {
            warn!(workload = %gap.workload, interface = %gap.interface, "workload interface not found; will retry");
        }
        report.missing = missing;
        report.steps.desired = lap(&mut step);

        // Maps first: a program attached to a new interface must find its workload entry.
        self.write_maps(&desired, within.as_ref(), &mut report)?;
        report.steps.write = lap(&mut step);
        report.maps_done = Some(step);

        // Receiving VXLAN: the anchor's socket makes GRO merge it before from_uplink decapsulates.
        let anchor_wanted = vxlan_anchor::wanted(plan);
        let anchor = if anchor_wanted {
            self.anchor.ensure(plan.node.addr.addr(), desired.node.vxlan_port).await?
        } else {
            None
        };

        let mut wanted: BTreeMap<String, Attachment> = BTreeMap::new();
        let mut want = |interface: &str, ifindex: u32, direction: TcAttachType, program: &'static str| {
            let attachment = Attachment { interface: interface.to_owned(), ifindex, direction, program };
            wanted.insert(link_pin_name(direction, interface), attachment);
        };
        want(uplink, uplink_ifindex, TcAttachType::Ingress, PROG_FROM_UPLINK);
        want(uplink, uplink_ifindex, TcAttachType::Egress, PROG_TO_UPLINK);
        if let Some((index, _)) = anchor {
            want(ANCHOR_DEVICE, index, TcAttachType::Ingress, PROG_VXLAN_ANCHOR);
        }
        for interface in plan.workloads.keys() {
            if let Some(index) = sys::ifindex(interface) {
                want(interface, index, TcAttachType::Ingress, PROG_FROM_WORKLOAD);
                want(interface, index, TcAttachType::Egress, PROG_TO_WORKLOAD);
            }
        }
        for (pin_name, attachment) in &wanted {
            if self.attached.get(pin_name).map(|(ifindex, _)| *ifindex) != Some(attachment.ifindex) {
                match self.method {
                    AttachMethod::Tcx => self.attach(attachment)?,
                    AttachMethod::Clsact => self.attach_filter(attachment)?,
                }
                self.attached.insert(pin_name.clone(), (attachment.ifindex, attachment.direction));
                report.attached += 1;
            }
        }
        // XDP on the uplink, by a pinned link whichever way the TC programs attach.
        if self.xdp.map(|(ifindex, _)| ifindex) != Some(uplink_ifindex) {
            let links = self.pin_path.join(LINKS_DIR);
            // XDP only adds an earlier drop: a failure here leaves the TC path, which does the same.
            let mode = match xdp::attach(&mut self.ebpf, &links, uplink, uplink_ifindex, self.xdp_choice) {
                Ok(mode) => mode,
                Err(error) => {
                    warn!(interface = %uplink, xdp = %XdpMode::None, "attaching XDP failed: {error:#}");
                    XdpMode::None
                }
            };
            self.xdp = Some((uplink_ifindex, mode));
            if mode != XdpMode::None {
                report.attached += 1;
            }
        }
        let xdp_pin = self.xdp.filter(|(_, mode)| *mode != XdpMode::None).map(|_| xdp::pin_name(uplink));
        report.detached = match self.method {
            AttachMethod::Tcx => self.remove_stale_links(&wanted.keys().cloned().chain(xdp_pin.clone()).collect())?,
            AttachMethod::Clsact => self.remove_stale_filters(&wanted, xdp_pin.as_deref())?,
        };
        self.took_over = true;
        // Every hook runs this agent's programs: the old pins can go.
        self.upgrade.finish(&mut self.ebpf).context("finishing the upgrade of the pinned maps")?;
        match anchor {
            // Up only now that its program drops whatever it would decapsulate.
            Some((index, false)) if self.anchor.set_up(index).await => report.written += 1,
            Some(_) => {}
            // Its hook was detached above; the device goes after it.
            None if !anchor_wanted && self.anchor.remove().await? => report.removed += 1,
            None => {}
        }
        report.steps.attach = lap(&mut step);

        // The host's own traffic to blocks: kernel routes that lead it to the uplink.
        let planned: Box<dyn Iterator<Item = (&Ipv4Net, &PlannedRoute)>> = match &within {
            None => Box::new(plan.routes.iter()),
            Some(within) => Box::new(within.routes.iter().filter_map(|prefix| plan.routes.get_key_value(prefix))),
        };
        let planned: Vec<(&Ipv4Net, &PlannedRoute)> = planned.collect();
        let next_hops = self
            .host_routes
            .next_hops(planned.iter().filter_map(|(_, r)| match &r.target {
                RouteTarget::RemoteBlock { node_addr, .. } => Some(*node_addr),
                _ => None,
            }))
            .await?;
        let next_hop = |peer| next_hops.get(&peer).copied().unwrap_or(peer);
        let routes: BTreeMap<Ipv4Net, host_routes::HostRoute> = planned
            .iter()
            .filter_map(|(prefix, route)| {
                host_routes::host_route(route, uplink_ifindex, uplink_mtu, next_hop).map(|route| (**prefix, route))
            })
            .collect();
        let (written, removed) = self.host_routes.apply(&routes, within.as_ref().map(|w| &w.routes)).await?;
        report.written += written;
        report.removed += removed;
        report.steps.host_routes = lap(&mut step);
        Ok(report)
    }

    /// How the XDP program runs on the uplink (`none` before the first apply).
    pub fn xdp_mode(&self) -> XdpMode {
        self.xdp.map_or(XdpMode::None, |(_, mode)| mode)
    }

    /// Deletes expired natOutgoing flows (the kernel also ignores them; this frees the space).
    pub fn sweep_conntrack(&mut self, timeouts: &FlowTimeouts) -> anyhow::Result<usize> {
        let mut map: HashMap<&mut MapData, FlowKey, NatFlow> = map_mut(&mut self.ebpf, CONNTRACK_MAP)?;
        crate::conntrack::sweep(&mut map, timeouts)
    }

    /// Every entry of the maps, as the kernel holds them.
    fn read_maps(&mut self) -> anyhow::Result<Programmed> {
        self.map_dumps += 1;
        let node: Array<&mut MapData, NodeConfig> = map_mut(&mut self.ebpf, NODE_MAP)?;
        let node = node.get(&0, 0).ok();
        let workloads: HashMap<&mut MapData, u32, Workload> = map_mut(&mut self.ebpf, WORKLOADS_MAP)?;
        let workloads = workloads.iter().collect::<Result<_, _>>().context("reading the workloads map")?;
        let slots = read_slots(&map_mut::<Array<&mut MapData, WorkloadSlot>>(&mut self.ebpf, WORKLOAD_SLOTS_MAP)?)?;
        let pools: Array<&mut MapData, Pools> = map_mut(&mut self.ebpf, POOLS_MAP)?;
        let pools = pools.get(&0, 0).ok();
        let templates: Array<&mut MapData, TunnelTemplates> = map_mut(&mut self.ebpf, TUNNEL_TEMPLATES_MAP)?;
        let templates = templates.get(&0, 0).ok();
        let peers: HashMap<&mut MapData, Ipv4Bytes, Peer> = map_mut(&mut self.ebpf, PEERS_MAP)?;
        let peers = peers.iter().collect::<Result<_, _>>().context("reading the peers map")?;
        let routes: LpmTrie<&mut MapData, Ipv4Bytes, Route> = map_mut(&mut self.ebpf, ROUTES_MAP)?;
        let routes = routes
            .iter()
            .map(|entry| entry.map(|(key, value)| ((key.prefix_len(), key.data()), value)))
            .collect::<Result<_, _>>()
            .context("reading the routes map")?;
        Ok(Programmed { node, routes, workloads, slots, pools, templates, peers })
    }

    /// Writes the entries that differ from what this process last wrote (the kernel's maps are
    /// read only when that is not known); on an error the next call reads them again.
    fn write_maps(
        &mut self,
        desired: &MapEntries,
        within: Option<&entries::Within>,
        report: &mut ApplyReport,
    ) -> anyhow::Result<()> {
        // What a change touched, as map keys; None: every key.
        let route_keys: Option<BTreeSet<RouteKey>> = within.map(|within| {
            within.routes.iter().map(|prefix| (u32::from(prefix.prefix_len()), prefix.network().octets())).collect()
        });
        let peer_keys: Option<BTreeSet<Ipv4Bytes>> =
            within.map(|within| within.peers.iter().map(|addr| addr.octets()).collect());
        let mut programmed = match self.programmed.take() {
            Some(programmed) => programmed,
            None => Box::new(self.read_maps()?),
        };
        if programmed.node != Some(desired.node) {
            let mut node: Array<&mut MapData, NodeConfig> = map_mut(&mut self.ebpf, NODE_MAP)?;
            node.set(0, desired.node, 0).context("writing the node map")?;
            programmed.node = Some(desired.node);
            report.written += 1;
        }
        // The outer headers the programs copy, from the node's own settings.
        let templates = TunnelTemplates::for_node(&desired.node);
        if programmed.templates != Some(templates) {
            let mut map: Array<&mut MapData, TunnelTemplates> = map_mut(&mut self.ebpf, TUNNEL_TEMPLATES_MAP)?;
            map.set(0, templates, 0).context("writing the tunnel templates map")?;
            programmed.templates = Some(templates);
            report.written += 1;
        }
        {
            // Slots before the hash: a removed workload's slot is emptied before its hash entry
            // goes, so no slot ever outlives the record it caches.
            let mut map: Array<&mut MapData, WorkloadSlot> = map_mut(&mut self.ebpf, WORKLOAD_SLOTS_MAP)?;
            sync(
                &mut map,
                &mut programmed.slots,
                &entries::workload_slots(&desired.workloads),
                None,
                report,
                |map, index, slot| map.set(*index, slot, 0).context("writing the workload slots map"),
                |map, index| map.set(*index, WorkloadSlot::EMPTY, 0).context("emptying a workload slot"),
            )?;
        }
        {
            let mut map: HashMap<&mut MapData, u32, Workload> = map_mut(&mut self.ebpf, WORKLOADS_MAP)?;
            sync(
                &mut map,
                &mut programmed.workloads,
                &desired.workloads,
                None,
                report,
                |map, key, value| map.insert(key, value, 0).context("writing the workloads map"),
                |map, key| already_gone(map.remove(key)).context("removing from the workloads map"),
            )?;
        }
        let upserts = upserts_of(&programmed.peers, &desired.peers, peer_keys.as_ref());
        let written = self.write_batch(PEERS_MAP, &upserts, |key| *key);
        programmed.peers.extend(upserts.into_iter().take(written));
        report.written += written;
        let upserts = upserts_of(&programmed.routes, &desired.routes, route_keys.as_ref());
        let written = self.write_batch(ROUTES_MAP, &upserts, |(prefix_len, addr)| Key::new(*prefix_len, *addr));
        programmed.routes.extend(upserts.into_iter().take(written));
        report.written += written;
        {
            let mut map: HashMap<&mut MapData, Ipv4Bytes, Peer> = map_mut(&mut self.ebpf, PEERS_MAP)?;
            sync(
                &mut map,
                &mut programmed.peers,
                &desired.peers,
                peer_keys.as_ref(),
                report,
                |map, key, value| map.insert(key, value, 0).context("writing the peers map"),
                |map, key| already_gone(map.remove(key)).context("removing from the peers map"),
            )?;
        }
        // The pools map derives from the pool routes: derived again only when a change touched
        // one, not from every route at each event (100k routes walked per event otherwise).
        let pools_touched = programmed.pools.is_none()
            || route_keys.as_ref().is_none_or(|keys| {
                keys.iter().any(|key| {
                    [programmed.routes.get(key), desired.routes.get(key)]
                        .into_iter()
                        .flatten()
                        .any(|route| route.kind == route_kind::POOL)
                })
            });
        {
            let mut map: LpmTrie<&mut MapData, Ipv4Bytes, Route> = map_mut(&mut self.ebpf, ROUTES_MAP)?;
            sync(
                &mut map,
                &mut programmed.routes,
                &desired.routes,
                route_keys.as_ref(),
                report,
                |map, (prefix_len, addr), value| {
                    map.insert(&Key::new(*prefix_len, *addr), value, 0).context("writing the routes map")
                },
                |map, (prefix_len, addr)| {
                    already_gone(map.remove(&Key::new(*prefix_len, *addr))).context("removing from the routes map")
                },
            )?;
        }
        // After the routes, from all of them (a change writes only the routes it touched).
        let pools = pools_touched.then(|| entries::pools(&programmed.routes));
        if let Some(pools) = pools.filter(|pools| programmed.pools != Some(*pools)) {
            let mut map: Array<&mut MapData, Pools> = map_mut(&mut self.ebpf, POOLS_MAP)?;
            map.set(0, pools, 0).context("writing the pools map")?;
            programmed.pools = Some(pools);
            report.written += 1;
        }
        self.programmed = Some(programmed);
        Ok(())
    }

    /// Writes `upserts` into the map `name` with batched updates when there are enough of them
    /// to pay and the kernel has them for this map; returns how many it wrote, in order (the
    /// caller writes the rest one at a time). The first refusal is remembered and said once.
    fn write_batch<K: Clone, V: aya::Pod, B: aya::Pod>(
        &mut self,
        name: &'static str,
        upserts: &[(K, V)],
        map_key: impl Fn(&K) -> B,
    ) -> usize {
        if upserts.len() < BATCH_MIN || self.no_batches.contains(name) {
            return 0;
        }
        let Some(map) = self.ebpf.map(name) else { return 0 };
        let data = match map {
            aya::maps::Map::LpmTrie(data) | aya::maps::Map::HashMap(data) => data,
            _ => return 0,
        };
        let keys: Vec<B> = upserts.iter().map(|(key, _)| map_key(key)).collect();
        let values: Vec<V> = upserts.iter().map(|(_, value)| *value).collect();
        match batch::update(data.fd().as_fd(), &keys, &values) {
            Ok(()) => upserts.len(),
            Err(batch::BatchError::Unsupported) => {
                info!(map = name, "this kernel has no batch update for the map: writing its entries one by one");
                self.no_batches.insert(name);
                0
            }
            Err(batch::BatchError::Failed { written, error }) => {
                warn!(map = name, written, %error, "batch update failed; writing the rest one by one");
                written
            }
        }
    }

    /// Attaches a program to a TC hook of an interface, adopting (and atomically updating) a
    /// link pinned by an earlier agent when there is one.
    fn attach(&mut self, attachment: &Attachment) -> anyhow::Result<()> {
        let Attachment { interface, direction, program, .. } = attachment;
        let pin = self.pin_path.join(LINKS_DIR).join(link_pin_name(*direction, interface));
        let prog: &mut SchedClassifier =
            self.ebpf.program_mut(program).with_context(|| format!("program {program} missing"))?.try_into()?;
        // A pin left by an earlier agent: swap our program into that link atomically.
        let adopted = if pin.exists() {
            let pinned =
                PinnedLink::from_pin(&pin).with_context(|| format!("opening pinned link {}", pin.display()))?;
            let link = SchedClassifierLink::try_from(FdLink::from(pinned))
                .with_context(|| format!("{} is not a tcx link", pin.display()))?;
            match prog.attach_to_link(link) {
                Ok(id) => Some(id),
                // The interface it was attached to is gone (a re-created pod): start afresh.
                Err(error) => {
                    warn!(%interface, %error, "pinned link is stale; attaching anew");
                    remove_pin(&pin)?;
                    None
                }
            }
        } else {
            None
        };
        let was_adopted = adopted.is_some();
        let link_id = match adopted {
            Some(id) => id,
            None => prog
                .attach_with_options(interface, *direction, TcAttachOptions::TcxOrder(LinkOrder::default()))
                .with_context(|| format!("attaching {program} to tcx {direction:?} of {interface}"))?,
        };
        let link: FdLink = prog.take_link(link_id)?.try_into().context("tcx link as fd link")?;
        if !was_adopted {
            link.pin(&pin).with_context(|| format!("pinning link at {}", pin.display()))?;
        }
        // A filter an earlier agent attached through clsact: tcx runs first, so our link already
        // decides every packet; the filter only has to go.
        let removed_filter = clsact::detach(attachment.ifindex, *direction)?;
        info!(%interface, ?direction, program, attach = "tcx", adopted = was_adopted, removed_filter, "attached");
        Ok(())
    }

    /// Attaches a program as our filter on a clsact hook of an interface, replacing in place the
    /// filter an earlier agent left there; then unpins the tcx link an earlier agent may have
    /// pinned for the hook.
    fn attach_filter(&mut self, attachment: &Attachment) -> anyhow::Result<()> {
        let Attachment { interface, ifindex, direction, program } = attachment;
        let prog: &mut SchedClassifier =
            self.ebpf.program_mut(program).with_context(|| format!("program {program} missing"))?.try_into()?;
        let fd = prog.fd().with_context(|| format!("program {program} is not loaded"))?;
        let replaced = clsact::attach(interface, *ifindex, *direction, program, fd.as_fd())?;
        // On a kernel with tcx the link runs before the filter, so the filter takes over the hook
        // only once the link is gone: the order keeps a program on the hook throughout.
        let pin = self.pin_path.join(LINKS_DIR).join(link_pin_name(*direction, interface));
        let removed_link = pin.exists();
        remove_pin(&pin)?;
        info!(%interface, ?direction, program, attach = "clsact", replaced, removed_link, "attached");
        Ok(())
    }

    /// Removes our filters no longer wanted. The first time, that is every filter of ours in the
    /// network namespace outside `wanted`, and every pinned tcx link (an earlier agent's); then,
    /// the hooks this agent attached that left the plan.
    fn remove_stale_filters(
        &mut self,
        wanted: &BTreeMap<String, Attachment>,
        xdp_pin: Option<&str>,
    ) -> anyhow::Result<usize> {
        let mut removed = 0;
        if !self.took_over {
            let keep: Vec<(u32, TcAttachType)> = wanted.values().map(|a| (a.ifindex, a.direction)).collect();
            let interfaces = sys::interfaces()?;
            removed += clsact::detach_all_except(interfaces.values().copied(), &keep)?;
            let dir = self.pin_path.join(LINKS_DIR);
            for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
                let entry = entry?;
                // The XDP link is pinned whichever way the TC programs attach.
                if xdp_pin.is_some_and(|pin| entry.file_name() == pin) {
                    continue;
                }
                remove_pin(&entry.path())?;
                info!(link = %entry.file_name().to_string_lossy(), "detached an earlier agent's tcx link");
                removed += 1;
            }
        } else {
            for (pin_name, (ifindex, direction)) in &self.attached {
                // An ifindex the kernel gave again to a wanted interface now holds that one's filter.
                let reused = wanted.values().any(|a| a.ifindex == *ifindex && a.direction == *direction);
                if !wanted.contains_key(pin_name) && !reused && clsact::detach(*ifindex, *direction)? {
                    info!(hook = %pin_name, "detached");
                    removed += 1;
                }
            }
        }
        self.attached.retain(|pin_name, _| wanted.contains_key(pin_name));
        Ok(removed)
    }

    /// Removes pinned links no longer wanted (unpinning detaches them).
    /// The first time, also removes the filters an earlier agent attached through clsact.
    fn remove_stale_links(&mut self, wanted: &BTreeSet<String>) -> anyhow::Result<usize> {
        let dir = self.pin_path.join(LINKS_DIR);
        let mut removed = 0;
        if !self.took_over {
            // Filters on wanted hooks went when their links were attached; these are the rest.
            let interfaces = sys::interfaces()?;
            removed += clsact::detach_all_except(interfaces.values().copied(), &[])?;
        }
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !wanted.contains(&name) {
                remove_pin(&entry.path())?;
                info!(link = %name, "detached");
                removed += 1;
            }
        }
        self.attached.retain(|pin_name, _| wanted.contains(pin_name));
        Ok(removed)
    }
}

/// The pin name of the link of `interface`'s TC hook. bpffs refuses names with a dot, which
/// interface names may have (`vxlan.calico`, `eth0.100`), so dots (and `%`) are %-escaped.
pub fn link_pin_name(direction: TcAttachType, interface: &str) -> String {
    let hook = match direction {
        TcAttachType::Egress => "egress",
        _ => "ingress",
    };
    format!("{hook}_{}", escape_pin_name(interface))
}

/// An interface name as a pin name may hold it: bpffs refuses dots, so dots (and `%`) are
/// %-escaped.
pub fn escape_pin_name(interface: &str) -> String {
    interface.replace('%', "%25").replace('.', "%2e")
}

/// The interface name of [`escape_pin_name`]'s result (%2e first, then %25).
pub fn unescape_pin_name(escaped: &str) -> String {
    escaped.replace("%2e", ".").replace("%25", "%")
}

/// Makes one map hold `desired`, given that it holds `programmed`: writes and removes only the
/// entries that differ, keeping `programmed` equal to the map after each write that succeeded.
fn sync<M, K: Ord + Clone, V: PartialEq + Clone>(
    map: &mut M,
    programmed: &mut BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
    within: Option<&BTreeSet<K>>,
    report: &mut ApplyReport,
    insert: impl Fn(&mut M, &K, &V) -> anyhow::Result<()>,
    remove: impl Fn(&mut M, &K) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let Changes { upserts, removals } = match within {
        Some(keys) => diff_keys(programmed, desired, keys),
        None => diff(programmed, desired),
    };
    for (key, value) in upserts {
        insert(map, &key, &value)?;
        programmed.insert(key, value);
        report.written += 1;
    }
    for key in removals {
        remove(map, &key)?;
        programmed.remove(&key);
        report.removed += 1;
    }
    Ok(())
}

/// Fewer entries than this are written one by one: a batch saves system calls, not work.
const BATCH_MIN: usize = 64;

/// The entries of `desired` (within `keys`, when given) that `programmed` lacks or holds with
/// another value.
fn upserts_of<K: Ord + Clone, V: PartialEq + Clone>(
    programmed: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
    keys: Option<&BTreeSet<K>>,
) -> Vec<(K, V)> {
    match keys {
        Some(keys) => diff_keys(programmed, desired, keys).upserts,
        None => diff(programmed, desired).upserts,
    }
}

/// A removal whose entry is already gone did what it was for. The slow resync's read can still
/// show a key that the agent removed after the read passed it; removing it again must not fail
/// the reconcile (which would fall back to reading every map on the event loop).
fn already_gone(removed: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match removed {
        Err(aya::maps::MapError::SyscallError(error)) if error.io_error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn map_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map_mut(name).with_context(|| format!("map {name} missing from the object"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type or layout"))
}

/// Removes the pin at `path`; one already gone is no error.
pub(crate) fn remove_pin(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("removing {}", path.display())),
    }
}

/// Removes everything the agent attached and pinned: its clsact filters on every interface of
/// this network namespace, and under `pin_path` the links (which detaches the programs) and
/// maps. Returns how many filters and pins were removed.
pub fn cleanup(pin_path: &Path) -> anyhow::Result<usize> {
    let interfaces = sys::interfaces()?;
    let mut removed =
        clsact::detach_all_except(interfaces.values().copied(), &[]).context("removing the agent's TC filters")?;
    if !pin_path.exists() {
        return Ok(removed);
    }
    let links = pin_path.join(LINKS_DIR);
    if links.exists() {
        for entry in fs::read_dir(&links).with_context(|| format!("listing {}", links.display()))? {
            remove_pin(&entry?.path())?;
            removed += 1;
        }
        fs::remove_dir(&links).with_context(|| format!("removing {}", links.display()))?;
    }
    for name in MAPS.into_iter().chain(RETIRED_MAPS) {
        let path = pin_path.join(name);
        if path.exists() {
            remove_pin(&path)?;
            removed += 1;
        }
    }
    // Any other version of our maps (an unfinished upgrade's old pins, or a newer agent's), and
    // the upgrade's marker.
    for entry in fs::read_dir(pin_path).with_context(|| format!("listing {}", pin_path.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = dataplane_common::layout::split_version(&name)
            .is_some_and(|(family, _)| dataplane_common::PINNED_MAPS.iter().any(|map| map.family() == family));
        if ours && !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            remove_pin(&entry.path())?;
            removed += 1;
        }
    }
    match fs::remove_dir(pin_path.join(crate::migrate::MARKER)) {
        Ok(()) => removed += 1,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).context("removing the upgrade's marker"),
    }
    // Leave a directory that still holds something we did not make.
    if fs::read_dir(pin_path).map(|mut d| d.next().is_none()).unwrap_or(false) {
        fs::remove_dir(pin_path).with_context(|| format!("removing {}", pin_path.display()))?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A map that refuses to write the key `refuse`.
    fn write(map: &mut BTreeMap<u32, u32>, key: &u32, value: &u32, refuse: u32) -> anyhow::Result<()> {
        if *key == refuse {
            bail!("refused");
        }
        map.insert(*key, *value);
        Ok(())
    }

    #[test]
    fn sync_writes_only_the_difference_and_tracks_what_the_map_holds() {
        let mut kernel = BTreeMap::from([(1, 10), (2, 20), (3, 30)]);
        let mut programmed = kernel.clone();
        let desired = BTreeMap::from([(1, 10), (2, 21), (4, 40)]);
        let mut report = ApplyReport::default();
        sync(
            &mut kernel,
            &mut programmed,
            &desired,
            None,
            &mut report,
            |m, k, v| write(m, k, v, 0),
            |m, k| {
                m.remove(k);
                Ok(())
            },
        )
        .expect("syncs");
        assert_eq!((report.written, report.removed), (2, 1), "one change, one addition, one removal");
        assert_eq!(kernel, desired);
        assert_eq!(programmed, desired);

        // Nothing to do the second time: no write at all.
        let mut report = ApplyReport::default();
        sync(
            &mut kernel,
            &mut programmed,
            &desired,
            None,
            &mut report,
            |_, _, _| bail!("no write expected"),
            |_, _| bail!("no removal expected"),
        )
        .expect("nothing to write");
        assert_eq!((report.written, report.removed), (0, 0));

        // Within a change's keys, the rest is not even compared: 2 and 4 stay as they are.
        let wanted = BTreeMap::from([(1, 11), (4, 99)]);
        let mut report = ApplyReport::default();
        sync(
            &mut kernel,
            &mut programmed,
            &wanted,
            Some(&BTreeSet::from([1, 3])),
            &mut report,
            |m, k, v| write(m, k, v, 0),
            |_, _| bail!("no removal expected"),
        )
        .expect("syncs the keys");
        assert_eq!((report.written, report.removed), (1, 0));
        assert_eq!(kernel, BTreeMap::from([(1, 11), (2, 21), (4, 40)]));
        assert_eq!(programmed, kernel);
    }

    #[test]
    fn removing_an_entry_already_gone_succeeds_and_other_errors_stay() {
        let syscall = |errno| {
            Err(aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_delete_elem",
                io_error: io::Error::from_raw_os_error(errno),
            }))
        };
        assert!(already_gone(syscall(libc::ENOENT)).is_ok());
        assert!(already_gone(syscall(libc::EPERM)).is_err());
        assert!(already_gone(Ok(())).is_ok());
    }

    #[test]
    fn a_failed_write_leaves_the_tracking_equal_to_what_was_written() {
        let mut kernel = BTreeMap::new();
        let mut programmed = BTreeMap::new();
        let desired = BTreeMap::from([(1, 10), (2, 20), (3, 30)]);
        let mut report = ApplyReport::default();
        let result =
            sync(&mut kernel, &mut programmed, &desired, None, &mut report, |m, k, v| write(m, k, v, 2), |_, _| Ok(()));
        assert!(result.is_err());
        assert_eq!(programmed, kernel, "the tracking holds exactly what reached the map");
    }
}
