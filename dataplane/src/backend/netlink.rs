//! The netlink fallback: the same plan written as Calico's own kernel dataplane writes it, for
//! kernels that cannot run the fast path (or when `--mode netlink` asks for it).
//!
//! What a node gets, as on a node running calico-node in VXLAN mode:
//!
//! - `vxlan.calico` (VNI 4096, UDP 4789, `local <node address> dev <uplink>`, nolearning, MTU =
//!   uplink MTU - 50, the node's VTEP MAC, the node's VTEP address /32);
//! - for each remote VXLAN block: `<block> via <peer VTEP> dev vxlan.calico onlink`, the permanent
//!   neighbour `<peer VTEP> lladdr <peer VTEP MAC>` and the FDB entry `<peer VTEP MAC> dst <peer>`;
//! - for each remote block reached without encapsulation: `<block> via <peer> dev <uplink> onlink`;
//! - `blackhole <local block>`;
//! - for each local workload: `<pod>/32 dev caliX scope link` (unless the CNI plugin already added
//!   it), proxy ARP without delay on caliX so the kernel answers the pod's ARP for 169.254.1.1,
//!   and IP forwarding;
//! - when a pool has natOutgoing, Calico's masquerade rule and pool sets in nf_tables (`table ip
//!   dataplane`, see [`super::nftables`]).
//!
//! IPIP needs the kernel's ipip module (`tunl0`). Where it is missing, the blocks of IPIP pools
//! are reported as a problem naming the pool and left out; everything else is programmed.
//!
//! Ownership: routes carry protocol [`RTPROT_DATAPLANE`] (the BPF backend's host routes use the
//! same number, so switching backends replaces them), the device carries the alias
//! [`DEVICE_ALIAS`], and neighbours and FDB entries live on that device. Every step lists what is
//! programmed and writes only what differs, so a resync with no change writes nothing.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use anyhow::Context as _;
use dataplane_common::net::{
    tunnel_mtu, CALICO_VXLAN_DEVICE, CALICO_VXLAN_PORT, CALICO_VXLAN_VNI, IPIP_ENCAP_LEN, VXLAN_ENCAP_LEN,
};
use futures::TryStreamExt as _;
use ipnet::Ipv4Net;
use rtnetlink::{
    packet_route::{
        address::{AddressAttribute, AddressMessage},
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState},
        route::{RouteAttribute, RouteProtocol},
        AddressFamily,
    },
    Handle, LinkIpIp, LinkUnspec, LinkVxlan,
};
use tracing::{info, warn};

use super::{
    diff::{diff, Changes},
    nftables, vxlan_anchor,
};
use crate::{
    model::{MacAddr, Model, Problem},
    plan::{Encap, Plan, RouteTarget},
    rtnl::{
        self, errno, link_by_name, remove_owned_device, route_message, KernelRoute, LinkState, IPIP_DEVICE,
        RTPROT_DATAPLANE,
    },
    sys,
};

/// Calico's VXLAN device (defined once in dataplane-common).
pub const VXLAN_DEVICE: &str = CALICO_VXLAN_DEVICE;
/// Calico's VXLAN network identifier.
pub const VXLAN_VNI: u32 = CALICO_VXLAN_VNI;
/// The IANA VXLAN port, which Calico uses.
pub const VXLAN_PORT: u16 = CALICO_VXLAN_PORT;
/// The alias (`ip link show` prints it) that marks a device this backend made or adopted, so
/// that `cleanup` removes it and nothing else.
pub const DEVICE_ALIAS: &str = "dataplane netlink fallback";

/// How the kernel should route one prefix, with interfaces still named (see [`intent`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteIntent {
    /// `blackhole <block>`: a block affine to this node.
    Blackhole,
    /// `<block> via <next hop towards peer> dev <uplink> onlink`: a block reached unencapsulated.
    Direct {
        /// The owning node's address.
        peer: Ipv4Addr,
    },
    /// `<block> via <peer VTEP> dev vxlan.calico onlink`.
    Vxlan {
        /// The owning node's VTEP address.
        vtep: Ipv4Addr,
    },
    /// `<block> via <peer> dev tunl0 onlink`.
    Ipip {
        /// The owning node's address.
        peer: Ipv4Addr,
        /// The IPIP pool the block is in, for the problem when the kernel has no ipip module.
        pool: String,
    },
    /// `<pod>/32 dev <interface> scope link`: a workload on this node.
    Workload {
        /// The host side of the pod's veth.
        interface: String,
    },
}

/// This node's `vxlan.calico`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VxlanIntent {
    /// The node's address: the device's `local`.
    pub local: Ipv4Addr,
    /// The node's VTEP MAC.
    pub mac: MacAddr,
    /// The node's VTEP address, put on the device as a /32.
    pub addr: Ipv4Addr,
}

/// Everything the netlink backend should program on this node, before any I/O.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Intent {
    /// Prefix -> route.
    pub routes: BTreeMap<Ipv4Net, RouteIntent>,
    /// The VXLAN device, when some pool tunnels with VXLAN to or from this node.
    pub vxlan: Option<VxlanIntent>,
    /// Permanent neighbours on `vxlan.calico`: peer VTEP address -> peer VTEP MAC.
    pub neighbours: BTreeMap<Ipv4Addr, MacAddr>,
    /// FDB entries on `vxlan.calico`: peer VTEP MAC -> peer node address.
    pub fdb: BTreeMap<MacAddr, Ipv4Addr>,
    /// `Some` when some pool tunnels with IPIP to or from this node: the node's IPIP tunnel
    /// address, if it has one.
    pub ipip: Option<Option<Ipv4Addr>>,
    /// Host-side interfaces of local workloads: proxy ARP and forwarding on each.
    pub workloads: BTreeSet<String>,
    /// Resources left out, and why.
    pub problems: Vec<Problem>,
}

/// Turns the plan into what the kernel should hold. The model gives what the plan does not
/// carry: the peers' VTEP addresses (`spec.ipv4VXLANTunnelAddr`) and this node's IPIP address.
pub fn intent(plan: &Plan, model: &Model) -> Intent {
    let mut intent = Intent::default();
    let mut wants_vxlan = plan.peers.values().any(|peer| peer.vxlan);
    let mut wants_ipip = plan.peers.values().any(|peer| peer.ipip);
    for (prefix, route) in &plan.routes {
        let wanted = match &route.target {
            RouteTarget::LocalWorkload { interface, .. } => {
                intent.workloads.insert(interface.clone());
                RouteIntent::Workload { interface: interface.clone() }
            }
            RouteTarget::LocalBlock => RouteIntent::Blackhole,
            // Calico's kernel dataplane has no route for a pool as a whole: its blocks are routed.
            RouteTarget::Pool => continue,
            RouteTarget::RemoteBlock { node, node_addr, encap } => match encap {
                Encap::None => RouteIntent::Direct { peer: *node_addr },
                Encap::Ipip => {
                    wants_ipip = true;
                    let pool = route.pool.as_deref().unwrap_or_default().to_owned();
                    RouteIntent::Ipip { peer: *node_addr, pool }
                }
                Encap::Vxlan { vtep_mac } => {
                    wants_vxlan = true;
                    match vxlan_peer(model, &mut intent, node, *node_addr, *vtep_mac) {
                        Some(vtep) => RouteIntent::Vxlan { vtep },
                        None => continue,
                    }
                }
            },
        };
        intent.routes.insert(*prefix, wanted);
    }
    if wants_vxlan {
        intent.vxlan = own_vtep(plan, &mut intent.problems);
        if intent.vxlan.is_none() {
            // Without our own device, routes through it cannot exist.
            intent.routes.retain(|_, route| !matches!(route, RouteIntent::Vxlan { .. }));
            intent.neighbours.clear();
            intent.fdb.clear();
        }
    }
    if wants_ipip {
        intent.ipip = Some(model.node(&plan.node.name).and_then(|node| node.ipip_tunnel_addr));
    }
    // A node without a VTEP address that owns ten blocks is one problem, not ten.
    let mut seen = BTreeSet::new();
    intent.problems.retain(|problem| seen.insert(problem.to_string()));
    intent
}

/// Records the neighbour and FDB entry of the VXLAN peer `node`; returns its VTEP address, or
/// None (with a problem) when the peer has none or clashes with another peer.
fn vxlan_peer(
    model: &Model,
    intent: &mut Intent,
    node: &str,
    node_addr: Ipv4Addr,
    vtep_mac: MacAddr,
) -> Option<Ipv4Addr> {
    let Some(vtep) = model.node(node).and_then(|n| n.vxlan_tunnel_addr) else {
        intent.problems.push(Problem::new(
            "Node",
            node,
            "spec.ipv4VXLANTunnelAddr",
            "the node has no VXLAN tunnel address, so the netlink dataplane cannot route its VXLAN \
             blocks (the route goes via the peer's VTEP address): set spec.ipv4VXLANTunnelAddr \
             (calico-node sets it when VXLAN is on)",
        ));
        return None;
    };
    let clash = intent.neighbours.get(&vtep).is_some_and(|mac| *mac != vtep_mac)
        || intent.fdb.get(&vtep_mac).is_some_and(|addr| *addr != node_addr);
    if clash {
        intent.problems.push(Problem::new(
            "Node",
            node,
            "spec.vxlanTunnelMACAddr",
            format!(
                "the VTEP address {vtep} or MAC {vtep_mac} is also another node's, so the node's VXLAN \
                 blocks are not routed: every node needs its own VTEP address and MAC"
            ),
        ));
        return None;
    }
    intent.neighbours.insert(vtep, vtep_mac);
    intent.fdb.insert(vtep_mac, node_addr);
    Some(vtep)
}

/// This node's VTEP, or None with a problem naming the missing field.
fn own_vtep(plan: &Plan, problems: &mut Vec<Problem>) -> Option<VxlanIntent> {
    let node = &plan.node;
    let missing = |field: &str, what: &str| {
        Problem::new(
            "Node",
            node.name.as_str(),
            field,
            format!(
                "VXLAN is on towards other nodes but this node has no {what}, so {VXLAN_DEVICE} \
                 cannot be made and VXLAN blocks are not routed: set {field} (calico-node sets it when \
                 VXLAN is on)"
            ),
        )
    };
    let Some(mac) = node.vtep_mac else {
        problems.push(missing("spec.vxlanTunnelMACAddr", "VTEP MAC"));
        return None;
    };
    let Some(addr) = node.vtep_addr else {
        problems.push(missing("spec.ipv4VXLANTunnelAddr", "VXLAN tunnel address"));
        return None;
    };
    Some(VxlanIntent { local: node.addr.addr(), mac, addr })
}

/// What one apply changed, and what it left out.
#[derive(Debug, Default)]
pub struct NetlinkReport {
    /// Routes, devices, addresses, neighbours, FDB entries and sysctls written.
    pub written: usize,
    /// Routes, devices, addresses, neighbours and FDB entries removed.
    pub removed: usize,
    /// Workload interfaces that do not exist yet (retried on the next reconcile).
    pub missing: Vec<String>,
    /// Resources not programmed, and why.
    pub problems: Vec<Problem>,
}

/// Whether the kernel can do IP-in-IP, found once per agent.
#[derive(Clone, Debug, PartialEq, Eq)]
enum IpipSupport {
    Available,
    /// Why not, from the kernel's own answer.
    Missing(String),
}

/// Programs the plan as kernel routes, devices and neighbours over rtnetlink.
pub struct NetlinkBackend {
    handle: Handle,
    ipip: Option<IpipSupport>,
}

impl NetlinkBackend {
    /// Opens a netlink connection in the current network namespace (needs a tokio runtime).
    pub fn connect() -> anyhow::Result<Self> {
        Ok(NetlinkBackend { handle: rtnl::connect()?, ipip: None })
    }

    /// Makes the kernel match `plan`; the model gives the peers' VTEP addresses.
    #[tracing::instrument(name = "netlink", skip_all, fields(uplink = %uplink))]
    pub async fn apply(&mut self, plan: &Plan, model: &Model, uplink: &str) -> anyhow::Result<NetlinkReport> {
        let mut intent = intent(plan, model);
        let mut report = NetlinkReport { problems: std::mem::take(&mut intent.problems), ..Default::default() };
        let uplink_index = sys::ifindex(uplink)
            .with_context(|| format!("uplink interface {uplink:?} does not exist in this network namespace"))?;
        let uplink_mtu = sys::mtu(uplink)?;

        // The node forwards between its pods and the wire.
        if write_sysctl(Path::new("/proc/sys/net/ipv4/ip_forward"), "1")? {
            info!("net.ipv4.ip_forward set to 1");
            report.written += 1;
        }

        // Devices, then their addresses, neighbours and FDB entries, then the routes through them:
        // the first packet a route sends must find its neighbour.
        let vxlan_index = match &intent.vxlan {
            Some(vxlan) => {
                let mtu = tunnel_mtu(uplink_mtu, VXLAN_ENCAP_LEN);
                let index = self.ensure_vxlan(vxlan, uplink_index, mtu, &mut report).await?;
                self.sync_addresses(VXLAN_DEVICE, index, &BTreeSet::from([vxlan.addr]), &mut report).await?;
                self.sync_neighbours(index, &intent.neighbours, &mut report).await?;
                self.sync_fdb(index, &intent.fdb, &mut report).await?;
                Some(index)
            }
            None => None,
        };
        let ipip_index = match intent.ipip {
            Some(addr) => self.ensure_ipip(addr, tunnel_mtu(uplink_mtu, IPIP_ENCAP_LEN), &mut report).await?,
            None => None,
        };
        // Each IPIP pool is named once, with the kernel's own answer.
        if let (Some(_), None, Some(IpipSupport::Missing(reason))) = (intent.ipip, ipip_index, &self.ipip) {
            let pools: BTreeSet<String> = intent
                .routes
                .values()
                .filter_map(|route| match route {
                    RouteIntent::Ipip { pool, .. } => Some(pool.clone()),
                    _ => None,
                })
                .collect();
            for pool in pools {
                report.problems.push(Problem::new(
                    "IPPool",
                    pool.as_str(),
                    "spec.ipipMode",
                    format!(
                        "IPIP pool {pool} needs the ipip kernel module, which this kernel lacks ({reason}): \
                         its blocks on other nodes are not routed; use the BPF fast path (--mode bpf) or \
                         VXLAN (vxlanMode) for this pool"
                    ),
                ));
            }
        }

        self.sync_routes(&intent, uplink_index, vxlan_index, ipip_index, &mut report).await?;

        // No pool tunnels with VXLAN any more: the device goes, with its neighbours and FDB.
        if intent.vxlan.is_none() && remove_owned_device(&self.handle, VXLAN_DEVICE, DEVICE_ALIAS).await? {
            info!(device = VXLAN_DEVICE, "removed: no pool uses VXLAN towards this node any more");
            report.removed += 1;
        }

        sync_workload_sysctls(&intent.workloads, &mut report)?;
        sync_masquerade(plan, &mut report);
        report.missing.sort();
        report.missing.dedup();
        Ok(report)
    }

    /// Makes our routes in the main table exactly the intent's, with interfaces resolved; a
    /// workload route the CNI plugin already added is left to it.
    async fn sync_routes(
        &self,
        intent: &Intent,
        uplink_index: u32,
        vxlan_index: Option<u32>,
        ipip_index: Option<u32>,
        report: &mut NetlinkReport,
    ) -> anyhow::Result<()> {
        let (ours, foreign) = self.main_table().await?;
        let mut desired = BTreeMap::new();
        let mut next_hops = BTreeMap::new();
        for (prefix, route) in &intent.routes {
            let kernel = match route {
                RouteIntent::Blackhole => KernelRoute::Blackhole,
                RouteIntent::Direct { peer } => {
                    let gateway = match next_hops.get(peer) {
                        Some(gateway) => *gateway,
                        None => {
                            let gateway = self.next_hop(*peer).await?;
                            next_hops.insert(*peer, gateway);
                            gateway
                        }
                    };
                    KernelRoute::Via { gateway, ifindex: uplink_index, onlink: true, mtu: None }
                }
                RouteIntent::Vxlan { vtep } => {
                    let Some(ifindex) = vxlan_index else { continue };
                    KernelRoute::Via { gateway: *vtep, ifindex, onlink: true, mtu: None }
                }
                RouteIntent::Ipip { peer, .. } => {
                    let Some(ifindex) = ipip_index else { continue };
                    KernelRoute::Via { gateway: *peer, ifindex, onlink: true, mtu: None }
                }
                RouteIntent::Workload { interface } => {
                    let Some(ifindex) = sys::ifindex(interface) else {
                        report.missing.push(interface.clone());
                        continue;
                    };
                    // The CNI plugin adds this route when it wires the pod: keep its route, add
                    // ours only where none exists.
                    match foreign.get(prefix) {
                        Some(oifs) if oifs.contains(&Some(ifindex)) => continue,
                        Some(oifs) => {
                            warn!(%prefix, %interface, ?oifs, "a route not ours leads elsewhere; leaving it");
                            continue;
                        }
                        None => KernelRoute::Link { ifindex },
                    }
                }
            };
            desired.insert(*prefix, kernel);
        }
        let Changes { upserts, removals } = diff(&ours, &desired);
        report.written += upserts.len();
        report.removed += removals.len();
        for (prefix, route) in upserts {
            info!(%prefix, ?route, "writing route");
            self.handle
                .route()
                .add(route_message(prefix, route))
                .replace()
                .execute()
                .await
                .with_context(|| format!("installing route {prefix} ({route:?})"))?;
        }
        for prefix in removals {
            let route = ours[&prefix];
            info!(%prefix, ?route, "removing route");
            self.handle
                .route()
                .del(route_message(prefix, route))
                .execute()
                .await
                .with_context(|| format!("removing route {prefix} ({route:?})"))?;
        }
        Ok(())
    }

    /// Makes `vxlan.calico` exist with Calico's settings; returns its ifindex. A device whose
    /// identity (VNI, port, local address, lower device, learning, MAC) differs is made anew;
    /// MTU, alias and up are fixed in place.
    async fn ensure_vxlan(
        &self,
        vxlan: &VxlanIntent,
        uplink_index: u32,
        mtu: u32,
        report: &mut NetlinkReport,
    ) -> anyhow::Result<u32> {
        let mut existing = link_by_name(&self.handle, VXLAN_DEVICE).await?.map(|m| LinkState::parse(&m));
        if let Some(link) = &existing {
            let same = link.is_vxlan()
                && link.vni == Some(VXLAN_VNI)
                && link.port == Some(VXLAN_PORT)
                && link.local == Some(vxlan.local)
                && link.lower == Some(uplink_index)
                && link.learning == Some(false)
                && link.mac.as_deref() == Some(&vxlan.mac.0[..]);
            if !same {
                info!(device = VXLAN_DEVICE, ?link, "settings differ from the plan; making it anew");
                self.handle
                    .link()
                    .del(link.index)
                    .execute()
                    .await
                    .with_context(|| format!("deleting {VXLAN_DEVICE} to make it anew"))?;
                report.removed += 1;
                existing = None;
            }
        }
        let link = match existing {
            Some(link) => link,
            None => {
                let message = LinkVxlan::new(VXLAN_DEVICE, VXLAN_VNI)
                    .dev(uplink_index)
                    .port(VXLAN_PORT)
                    .local(vxlan.local)
                    // Calico programs every FDB entry itself and never floods to learn.
                    .learning(false)
                    .mtu(mtu)
                    .address(vxlan.mac.0.to_vec())
                    .build();
                self.handle.link().add(message).execute().await.with_context(|| {
                    format!(
                        "creating {VXLAN_DEVICE} (vxlan id {VXLAN_VNI} dstport {VXLAN_PORT} local {} dev ifindex \
                         {uplink_index} nolearning mtu {mtu} address {})",
                        vxlan.local, vxlan.mac
                    )
                })?;
                info!(device = VXLAN_DEVICE, local = %vxlan.local, mac = %vxlan.mac, mtu, "created");
                report.written += 1;
                let created = link_by_name(&self.handle, VXLAN_DEVICE)
                    .await?
                    .with_context(|| format!("{VXLAN_DEVICE} vanished right after it was created"))?;
                LinkState::parse(&created)
            }
        };
        self.fix_link(VXLAN_DEVICE, &link, mtu, report).await?;
        Ok(link.index)
    }

    /// Sets MTU, alias and up on a device of ours where they differ.
    async fn fix_link(&self, name: &str, link: &LinkState, mtu: u32, report: &mut NetlinkReport) -> anyhow::Result<()> {
        if link.mtu == Some(mtu) && link.up && link.alias.as_deref() == Some(DEVICE_ALIAS) {
            return Ok(());
        }
        let message = LinkUnspec::new_with_index(link.index).mtu(mtu).alias(DEVICE_ALIAS).up().build();
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .with_context(|| format!("setting {name} up with mtu {mtu} and alias {DEVICE_ALIAS:?}"))?;
        info!(device = name, ?link, mtu, "set up with our MTU and alias");
        report.written += 1;
        Ok(())
    }

    /// Makes `tunl0` usable if the kernel has IP-in-IP; returns its ifindex, or None when the
    /// kernel lacks the ipip module (remembered: modules do not appear while the agent runs).
    async fn ensure_ipip(
        &mut self,
        addr: Option<Ipv4Addr>,
        mtu: u32,
        report: &mut NetlinkReport,
    ) -> anyhow::Result<Option<u32>> {
        if let Some(IpipSupport::Missing(_)) = &self.ipip {
            return Ok(None);
        }
        let mut link = link_by_name(&self.handle, IPIP_DEVICE).await?;
        if link.is_none() {
            // Creating an ipip link makes the kernel load the module (which brings tunl0 in every
            // namespace); on a kernel without it the answer is "Unknown device type".
            let created = self.handle.link().add(LinkIpIp::new(IPIP_DEVICE).build()).execute().await;
            match created {
                Ok(()) => {}
                Err(error) if errno(&error) == Some(libc::EEXIST) => {}
                Err(error) => {
                    let module =
                        if Path::new("/sys/module/ipip").exists() { "loaded" } else { "absent from /sys/module" };
                    let reason = format!("creating {IPIP_DEVICE} failed: {error}; module ipip {module}");
                    warn!(%reason, "no IP-in-IP in this kernel");
                    self.ipip = Some(IpipSupport::Missing(reason));
                    return Ok(None);
                }
            }
            link = link_by_name(&self.handle, IPIP_DEVICE).await?;
        }
        self.ipip = Some(IpipSupport::Available);
        let Some(link) = link.map(|m| LinkState::parse(&m)) else {
            report.problems.push(Problem::new(
                "IPPool",
                "(IPIP pools)",
                "spec.ipipMode",
                format!("the kernel has IP-in-IP but no {IPIP_DEVICE} device appeared; IPIP blocks are not routed"),
            ));
            return Ok(None);
        };
        self.fix_link(IPIP_DEVICE, &link, mtu, report).await?;
        if let Some(addr) = addr {
            self.sync_addresses(IPIP_DEVICE, link.index, &BTreeSet::from([addr]), report).await?;
        }
        Ok(Some(link.index))
    }

    /// Makes the IPv4 addresses of device `index` exactly `wanted`, each as a /32.
    async fn sync_addresses(
        &self,
        name: &str,
        index: u32,
        wanted: &BTreeSet<Ipv4Addr>,
        report: &mut NetlinkReport,
    ) -> anyhow::Result<()> {
        let mut dump = self.handle.address().get().set_link_index_filter(index).execute();
        let mut present: BTreeMap<(Ipv4Addr, u8), AddressMessage> = BTreeMap::new();
        while let Some(message) = dump.try_next().await.with_context(|| format!("listing addresses of {name}"))? {
            if message.header.index != index {
                continue;
            }
            let addr = message.attributes.iter().find_map(|attribute| match attribute {
                AddressAttribute::Local(IpAddr::V4(addr)) | AddressAttribute::Address(IpAddr::V4(addr)) => Some(*addr),
                _ => None,
            });
            if let Some(addr) = addr {
                present.insert((addr, message.header.prefix_len), message);
            }
        }
        for addr in wanted {
            if !present.contains_key(&(*addr, 32)) {
                self.handle
                    .address()
                    .add(index, IpAddr::V4(*addr), 32)
                    .execute()
                    .await
                    .with_context(|| format!("adding {addr}/32 to {name}"))?;
                info!(device = name, %addr, "address added");
                report.written += 1;
            }
        }
        for ((addr, len), message) in present {
            if len != 32 || !wanted.contains(&addr) {
                self.handle
                    .address()
                    .del(message)
                    .execute()
                    .await
                    .with_context(|| format!("removing {addr}/{len} from {name}"))?;
                info!(device = name, %addr, len, "address removed");
                report.removed += 1;
            }
        }
        Ok(())
    }

    /// Makes the permanent neighbours of `vxlan.calico` exactly `wanted`.
    async fn sync_neighbours(
        &self,
        index: u32,
        wanted: &BTreeMap<Ipv4Addr, MacAddr>,
        report: &mut NetlinkReport,
    ) -> anyhow::Result<()> {
        let present = rtnl::permanent_neighbours(&self.handle, index).await?;
        let Changes { upserts, removals } = diff(&present, wanted);
        report.written += upserts.len();
        report.removed += removals.len();
        for (addr, mac) in upserts {
            info!(%addr, %mac, "writing permanent neighbour on {VXLAN_DEVICE}");
            self.handle
                .neighbours()
                .add(index, IpAddr::V4(addr))
                .link_layer_address(&mac.0)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .with_context(|| format!("neighbour {addr} lladdr {mac} dev {VXLAN_DEVICE} nud permanent"))?;
        }
        for addr in removals {
            info!(%addr, "removing neighbour from {VXLAN_DEVICE}");
            let mut message = NeighbourMessage::default();
            message.header.family = AddressFamily::Inet;
            message.header.ifindex = index;
            message.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(addr)));
            self.handle
                .neighbours()
                .del(message)
                .execute()
                .await
                .with_context(|| format!("removing neighbour {addr} from {VXLAN_DEVICE}"))?;
        }
        Ok(())
    }

    /// Makes the FDB of `vxlan.calico` exactly `wanted` (MAC -> peer node address).
    async fn sync_fdb(
        &self,
        index: u32,
        wanted: &BTreeMap<MacAddr, Ipv4Addr>,
        report: &mut NetlinkReport,
    ) -> anyhow::Result<()> {
        let present = rtnl::fdb_entries(&self.handle, index).await?;
        let Changes { upserts, removals } = diff(&present, wanted);
        report.written += upserts.len();
        report.removed += removals.len();
        for (mac, dst) in upserts {
            info!(%mac, %dst, "writing FDB entry on {VXLAN_DEVICE}");
            self.handle
                .neighbours()
                .add_bridge(index, &mac.0)
                .destination(IpAddr::V4(dst))
                .flags(NeighbourFlags::Own)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .with_context(|| format!("bridge fdb replace {mac} dev {VXLAN_DEVICE} dst {dst} self permanent"))?;
        }
        for mac in removals {
            let dst = present[&mac];
            info!(%mac, %dst, "removing FDB entry from {VXLAN_DEVICE}");
            self.handle
                .neighbours()
                .del(rtnl::fdb_message(index, mac, dst))
                .execute()
                .await
                .with_context(|| format!("bridge fdb del {mac} dev {VXLAN_DEVICE} dst {dst}"))?;
        }
        Ok(())
    }

    /// Our routes in the main table, and the prefixes of every other route there with their
    /// output interfaces.
    #[allow(clippy::type_complexity, reason = "two plain maps, named at the call")]
    async fn main_table(
        &self,
    ) -> anyhow::Result<(BTreeMap<Ipv4Net, KernelRoute>, BTreeMap<Ipv4Net, Vec<Option<u32>>>)> {
        let mut ours = BTreeMap::new();
        let mut foreign: BTreeMap<Ipv4Net, Vec<Option<u32>>> = BTreeMap::new();
        for message in rtnl::main_table_routes(&self.handle).await? {
            let Some(prefix) = rtnl::route_prefix(&message) else { continue };
            if message.header.protocol == RouteProtocol::Other(RTPROT_DATAPLANE) {
                if let Some(route) = rtnl::parse_route(&message) {
                    ours.insert(prefix, route);
                }
            } else {
                let oif = message.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(index) => Some(*index),
                    _ => None,
                });
                foreign.entry(prefix).or_default().push(oif);
            }
        }
        Ok((ours, foreign))
    }

    /// The gateway the kernel would use towards `addr` (`ip route get`), or `addr` if on-link.
    async fn next_hop(&self, addr: Ipv4Addr) -> anyhow::Result<Ipv4Addr> {
        rtnl::next_hop(&self.handle, addr).await
    }
}

/// What `cleanup` removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cleanup {
    /// Routes of protocol [`RTPROT_DATAPLANE`] removed from the main table.
    pub routes: usize,
    /// Devices carrying [`DEVICE_ALIAS`] removed (their neighbours and FDB entries go with them).
    pub devices: usize,
    /// Whether the natOutgoing table (`table ip dataplane`) was removed.
    pub nat_table: bool,
}

/// Removes everything the netlink backend made in this network namespace: every main-table route
/// of protocol [`RTPROT_DATAPLANE`] (whatever its shape, so the BPF backend's host routes too) and
/// `vxlan.calico` if it carries our alias, the fast path's `vxlan.dataplane`, and the natOutgoing table. Sysctls (forwarding, proxy ARP) are left as they are:
/// nothing records what they were before. Needs a tokio runtime. For `dataplane cleanup`.
pub async fn cleanup() -> anyhow::Result<Cleanup> {
    let handle = rtnl::connect()?;
    let mut removed = Cleanup::default();
    for message in rtnl::main_table_routes(&handle).await? {
        if message.header.protocol != RouteProtocol::Other(RTPROT_DATAPLANE) {
            continue;
        }
        let prefix = rtnl::route_prefix(&message);
        handle
            .route()
            .del(message)
            .execute()
            .await
            .with_context(|| format!("removing route {prefix:?} of protocol {RTPROT_DATAPLANE}"))?;
        removed.routes += 1;
    }
    for device in [VXLAN_DEVICE, IPIP_DEVICE] {
        if rtnl::remove_owned_device(&handle, device, DEVICE_ALIAS).await? {
            removed.devices += 1;
        }
    }
    // The fast path's VXLAN GRO anchor, which carries an alias of its own.
    if vxlan_anchor::remove(&handle).await? {
        removed.devices += 1;
    }
    removed.nat_table = nftables::remove().context("removing the natOutgoing table")?;
    if removed.nat_table {
        info!(table = nftables::TABLE, "removed the natOutgoing nftables table");
    }
    Ok(removed)
}

/// [`cleanup`] on a runtime of its own, for callers that have none (the CLI, tests). The netlink
/// socket is opened by the calling thread, so it works in the namespace that thread is in.
pub fn cleanup_blocking() -> anyhow::Result<Cleanup> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting an async runtime for the netlink cleanup")?
        .block_on(cleanup())
}

/// natOutgoing in nf_tables (see [`super::nftables`]). A kernel without nf_tables NAT leaves the
/// natOutgoing pools' pods without a way out, which is reported naming each pool; routing goes on.
fn sync_masquerade(plan: &Plan, report: &mut NetlinkReport) {
    match nftables::sync(plan) {
        Ok(changes) => {
            let removed = changes.iter().filter(|c| matches!(c, nftables::Change::DeleteTable)).count();
            report.removed += removed;
            report.written += changes.len() - removed;
        }
        Err(error) => {
            let pools: BTreeSet<&str> = plan
                .routes
                .values()
                .filter(|route| route.target == RouteTarget::Pool && route.nat_outgoing)
                .filter_map(|route| route.pool.as_deref())
                .collect();
            if pools.is_empty() {
                // Only the removal of a table no pool needs any more failed.
                warn!("could not remove table ip {}: {error:#}", nftables::TABLE);
            }
            for pool in pools {
                report.problems.push(Problem::new(
                    "IPPool",
                    pool,
                    "spec.natOutgoing",
                    format!(
                        "natOutgoing needs nf_tables NAT (table ip {}), which the kernel refused ({error:#}): pods of \
                         this pool reach only other pods; load nf_tables and nft_masq, or use the BPF fast path \
                         (--mode bpf)",
                        nftables::TABLE
                    ),
                ));
            }
        }
    }
}

/// Proxy ARP without delay and forwarding on every workload interface that exists.
fn sync_workload_sysctls(workloads: &BTreeSet<String>, report: &mut NetlinkReport) -> anyhow::Result<()> {
    // The kernel answers the pods' ARP for 169.254.1.1 (routed out of another interface) on
    // their veths, at once: the default proxy_delay would hold the first reply back.
    for interface in workloads {
        if sys::ifindex(interface).is_none() || !safe_interface_name(interface) {
            continue;
        }
        for (path, value) in [
            (format!("/proc/sys/net/ipv4/conf/{interface}/proxy_arp"), "1"),
            (format!("/proc/sys/net/ipv4/neigh/{interface}/proxy_delay"), "0"),
            (format!("/proc/sys/net/ipv4/conf/{interface}/forwarding"), "1"),
        ] {
            if write_sysctl(Path::new(&path), value)? {
                info!(%path, value, "sysctl written");
                report.written += 1;
            }
        }
    }
    Ok(())
}

/// Whether `name` can be put in a /proc/sys path: an interface name, not a path.
fn safe_interface_name(name: &str) -> bool {
    !name.is_empty() && name.len() < 16 && name != "." && name != ".." && !name.contains('/')
}

/// Writes `value` to the sysctl file `path` unless it already holds it; returns whether it wrote.
/// /proc/sys/net belongs to the network namespace of the process, so this is the node's.
fn write_sysctl(path: &Path, value: &str) -> anyhow::Result<bool> {
    let current = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if current.trim() == value {
        return Ok(false);
    }
    fs::write(path, value).with_context(|| format!("writing {value} to {}", path.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        datastore::file,
        fixtures::{ip, mac, net},
        model::EncapMode,
        plan::{self, PlannedRoute},
    };

    fn example(yaml: &str, node: &str) -> (Model, Plan) {
        let (model, problems) = file::parse(yaml).expect("example YAML");
        assert_eq!(problems, vec![]);
        let (plan, problems) = plan::compute(&model, node).expect("a plan");
        assert_eq!(problems, vec![]);
        (model, plan)
    }

    #[test]
    fn vxlan_example_is_calicos_vxlan_mode() {
        let (model, plan) = example(include_str!("../../../examples/two-nodes.yaml"), "node-1");
        let intent = intent(&plan, &model);
        assert_eq!(intent.problems, vec![]);
        assert_eq!(
            intent.vxlan,
            Some(VxlanIntent { local: ip("10.100.0.11"), mac: mac("66:d0:00:00:00:01"), addr: ip("10.244.1.0") })
        );
        assert_eq!(
            intent.routes,
            BTreeMap::from([
                (net("10.244.1.0/26"), RouteIntent::Blackhole),
                (net("10.244.1.2/32"), RouteIntent::Workload { interface: "cali0761ccbeace".into() }),
                (net("10.244.1.3/32"), RouteIntent::Workload { interface: "cali188d81a77fc".into() }),
                (net("10.244.2.0/26"), RouteIntent::Vxlan { vtep: ip("10.244.2.0") }),
            ])
        );
        assert_eq!(intent.neighbours, BTreeMap::from([(ip("10.244.2.0"), mac("66:d0:00:00:00:02"))]));
        assert_eq!(intent.fdb, BTreeMap::from([(mac("66:d0:00:00:00:02"), ip("10.100.0.12"))]));
        assert_eq!(intent.workloads, BTreeSet::from(["cali0761ccbeace".to_owned(), "cali188d81a77fc".to_owned()]));
        assert_eq!(intent.ipip, None);
    }

    #[test]
    fn never_routes_via_the_peer_and_needs_no_device() {
        let (model, plan) = example(include_str!("../../../examples/never.yaml"), "node-2");
        let intent = intent(&plan, &model);
        assert_eq!(intent.problems, vec![]);
        assert_eq!(intent.vxlan, None);
        assert_eq!(intent.ipip, None);
        assert!(intent.neighbours.is_empty() && intent.fdb.is_empty());
        let remote: Vec<_> =
            intent.routes.values().filter(|r| matches!(r, RouteIntent::Direct { .. })).cloned().collect();
        assert_eq!(remote, [RouteIntent::Direct { peer: ip("10.100.0.11") }]);
    }

    #[test]
    fn ipip_blocks_carry_their_pool_and_the_node_ipip_address() {
        let (model, plan) = example(include_str!("../../../examples/ipip.yaml"), "node-1");
        let intent = intent(&plan, &model);
        assert_eq!(intent.problems, vec![]);
        assert_eq!(intent.ipip, Some(Some(ip("10.244.1.0"))));
        assert_eq!(intent.vxlan, None);
        assert_eq!(
            intent.routes.get(&net("10.244.2.0/26")),
            Some(&RouteIntent::Ipip { peer: ip("10.100.0.12"), pool: "default-ipv4-ippool".into() })
        );
        assert_eq!(intent.routes.get(&net("10.244.1.0/26")), Some(&RouteIntent::Blackhole));
    }

    #[test]
    fn a_peer_without_a_vtep_address_is_one_problem_and_its_blocks_are_left_out() {
        let (mut model, _) = example(include_str!("../../../examples/two-nodes.yaml"), "node-1");
        model.nodes[1].vxlan_tunnel_addr = None;
        let mut second = model.blocks[1].clone();
        second.cidr = net("10.244.2.64/26");
        model.blocks.push(second);
        let (plan, _) = plan::compute(&model, "node-1").expect("a plan");
        let intent = intent(&plan, &model);
        let keys: Vec<_> = intent.problems.iter().map(|p| (p.name.as_str(), p.field.as_str())).collect();
        assert_eq!(keys, [("node-2", "spec.ipv4VXLANTunnelAddr")]);
        assert!(!intent.routes.contains_key(&net("10.244.2.0/26")));
        assert!(!intent.routes.contains_key(&net("10.244.2.64/26")));
        assert!(intent.neighbours.is_empty() && intent.fdb.is_empty());
        // Its VXLAN packets still arrive: the device is made.
        assert!(intent.vxlan.is_some());
    }

    #[test]
    fn without_an_own_vtep_no_vxlan_route_is_planned() {
        let (mut model, _) = example(include_str!("../../../examples/two-nodes.yaml"), "node-1");
        model.nodes[0].vxlan_tunnel_mac = None;
        let (plan, _) = plan::compute(&model, "node-1").expect("a plan");
        let intent = intent(&plan, &model);
        let keys: Vec<_> = intent.problems.iter().map(|p| (p.name.as_str(), p.field.as_str())).collect();
        assert_eq!(keys, [("node-1", "spec.vxlanTunnelMACAddr")]);
        assert_eq!(intent.vxlan, None);
        assert!(intent.routes.values().all(|r| !matches!(r, RouteIntent::Vxlan { .. })));
        assert!(intent.neighbours.is_empty() && intent.fdb.is_empty());
        // The local block and workloads are still programmed.
        assert_eq!(intent.routes.get(&net("10.244.1.0/26")), Some(&RouteIntent::Blackhole));
        assert_eq!(intent.workloads.len(), 2);
    }

    #[test]
    fn two_peers_sharing_a_vtep_mac_are_reported() {
        let (mut model, _) = example(include_str!("../../../examples/two-nodes.yaml"), "node-1");
        let mut third = model.nodes[1].clone();
        third.name = "node-3".into();
        third.addr = Some(net("10.100.0.13/24"));
        third.vxlan_tunnel_addr = Some(ip("10.244.3.0"));
        model.nodes.push(third);
        let mut block = model.blocks[1].clone();
        block.cidr = net("10.244.3.0/26");
        block.node = "node-3".into();
        model.blocks.push(block);
        let (plan, _) = plan::compute(&model, "node-1").expect("a plan");
        let intent = intent(&plan, &model);
        let keys: Vec<_> = intent.problems.iter().map(|p| (p.name.as_str(), p.field.as_str())).collect();
        assert_eq!(keys, [("node-3", "spec.vxlanTunnelMACAddr")]);
        assert_eq!(intent.fdb, BTreeMap::from([(mac("66:d0:00:00:00:02"), ip("10.100.0.12"))]));
    }

    #[test]
    fn pool_routes_are_not_programmed() {
        let (model, mut plan) = example(include_str!("../../../examples/two-nodes.yaml"), "node-1");
        plan.routes.insert(
            net("10.250.0.0/16"),
            PlannedRoute { target: RouteTarget::Pool, pool: Some("x".into()), nat_outgoing: false },
        );
        let intent = intent(&plan, &model);
        assert!(!intent.routes.contains_key(&net("10.250.0.0/16")));
        assert!(!intent.routes.contains_key(&net("10.244.0.0/16")));
    }

    #[test]
    fn a_cross_subnet_pool_tunnels_only_to_the_far_peer() {
        let (mut model, _) = example(include_str!("../../../examples/two-nodes.yaml"), "node-1");
        model.pools[0].vxlan_mode = EncapMode::CrossSubnet;
        let (plan, _) = plan::compute(&model, "node-1").expect("a plan");
        let intent = intent(&plan, &model);
        assert_eq!(intent.routes.get(&net("10.244.2.0/26")), Some(&RouteIntent::Direct { peer: ip("10.100.0.12") }));
        assert_eq!(intent.vxlan, None, "no peer tunnels, so no device");
    }

    #[test]
    fn only_interface_names_reach_proc_paths() {
        assert!(safe_interface_name("cali0761ccbeace"));
        for bad in ["", ".", "..", "../../x", "a/b", "cali0761ccbeace0"] {
            assert!(!safe_interface_name(bad), "{bad}");
        }
    }
}
