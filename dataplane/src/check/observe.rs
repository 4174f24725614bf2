//! Reading the node: the kernel's routes, the pinned maps, the attached programs, the netlink fallback's devices.

use std::{collections::BTreeMap, fs, net::Ipv4Addr, path::Path};

use anyhow::Context as _;
use aya::programs::{links::FdLink, links::PinnedLink, SchedClassifier};
use futures::TryStreamExt as _;
use ipnet::Ipv4Net;

use rtnetlink::packet_route::{
    link::LinkMessage,
    route::{RouteMessage, RouteProtocol},
};

use crate::{
    backend::{
        bpf::{link_pin_name, LINKS_DIR},
        clsact::{self, Filter},
        netlink::VXLAN_DEVICE,
        nftables, vxlan_anchor,
    },
    model::MacAddr,
    pinned::PinnedMaps,
    rtnl::{self, KernelRoute as RouteOfKernel, LinkState, RTPROT_DATAPLANE},
    sys,
};

use super::*;

/// A route of the kernel's main table, as `/proc/net/route` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelRoute {
    /// The destination prefix.
    pub dst: Ipv4Net,
    /// The output interface (`*` for blackhole and unreachable routes).
    pub interface: String,
}

/// Parses `/proc/net/route` (the main table of the reader's network namespace). Addresses are
/// printed as the raw 32-bit word in host order, so the bytes are taken back in host order.
pub fn parse_proc_net_route(text: &str) -> Vec<KernelRoute> {
    let mut routes = Vec::new();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(interface), Some(dst), Some(mask)) = (fields.first(), fields.get(1), fields.get(7)) else {
            continue;
        };
        let (Ok(dst), Ok(mask)) = (u32::from_str_radix(dst, 16), u32::from_str_radix(mask, 16)) else {
            continue;
        };
        let dst = Ipv4Addr::from(dst.to_ne_bytes());
        let prefix_len = u32::from(Ipv4Addr::from(mask.to_ne_bytes())).count_ones() as u8;
        if let Ok(dst) = Ipv4Net::new(dst, prefix_len) {
            routes.push(KernelRoute { dst, interface: (*interface).to_owned() });
        }
    }
    routes
}

/// Every pinned map the checks compare, each read on its own so one bad map does not hide the
/// others.
pub fn observe_maps(pin_path: &Path) -> ObservedMaps {
    let text = |error: anyhow::Error| format!("{error:#}");
    let maps = PinnedMaps::at(pin_path);
    ObservedMaps {
        node: maps.read_node().map_err(text),
        routes: maps.read_routes().map_err(text),
        workloads: maps.read_workloads().map_err(text),
        peers: maps.read_peers().map_err(text),
    }
}

/// The pins under `<pin path>/links`, the programs and clsact filters on the hook of every
/// expected link, and our filters on any other hook of `interfaces`.
pub fn observe_links(
    pin_path: &Path,
    expected: &BTreeMap<String, ExpectedLink>,
    interfaces: &BTreeMap<String, u32>,
) -> ObservedLinks {
    let mut observed = ObservedLinks::default();
    let dir = pin_path.join(LINKS_DIR);
    if let Ok(entries) = fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let program = PinnedLink::from_pin(entry.path())
                .map_err(|e| e.to_string())
                .and_then(|pinned| FdLink::from(pinned).info().map_err(|e| e.to_string()))
                .map(|info| info.program_id());
            observed.pins.insert(name, program);
        }
    }
    for (pin, link) in expected {
        let programs = SchedClassifier::query_tcx(&link.interface, link.hook.attach_type())
            .map(|(_, infos)| {
                infos
                    .iter()
                    .map(|info| AttachedProgram { id: info.id(), name: info.name_as_str().unwrap_or("").to_owned() })
                    .collect()
            })
            .map_err(|e| format!("{e:#}"));
        observed.hooks.insert(pin.clone(), programs);
        let filters = match sys::ifindex(&link.interface) {
            Some(ifindex) => clsact::filters(ifindex, link.hook.attach_type()).map_err(|e| e.to_string()),
            None => Ok(Vec::new()),
        };
        observed.filters.insert(pin.clone(), filters);
    }
    for (interface, ifindex) in interfaces {
        for hook in [Hook::Ingress, Hook::Egress] {
            if expected.contains_key(&link_pin_name(hook.attach_type(), interface)) {
                continue;
            }
            // A hook that cannot be listed has nothing of ours that could be found either.
            let ours =
                clsact::filters(*ifindex, hook.attach_type()).unwrap_or_default().into_iter().find(Filter::is_ours);
            if let Some(filter) = ours {
                observed.stray_filters.insert((interface.clone(), hook), filter.name.unwrap_or_default());
            }
        }
    }
    observed
}

/// `vxlan.calico` as observed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VxlanDevice {
    /// The device is administratively up.
    pub up: bool,
    /// Its MAC: the node's VTEP MAC.
    pub mac: Option<MacAddr>,
    /// Its VNI.
    pub vni: Option<u32>,
    /// Its local address: the node's address.
    pub local: Option<Ipv4Addr>,
}

/// A route of the main table, as observed (the first one of its prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObservedRoute {
    /// `blackhole <prefix>`.
    Blackhole,
    /// `<prefix> via <gateway> dev <interface> [onlink]`.
    Via {
        /// The next hop.
        gateway: Ipv4Addr,
        /// The output interface's name.
        interface: String,
    },
    /// `<prefix> dev <interface> scope link` or any other shape.
    Other,
}

/// What the netlink fallback programmed, as observed in this network namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedFallback {
    /// `vxlan.calico`, if it exists.
    pub device: Option<VxlanDevice>,
    /// Permanent neighbours on `vxlan.calico`: VTEP address -> MAC.
    pub neighbours: BTreeMap<Ipv4Addr, MacAddr>,
    /// FDB entries with a destination on `vxlan.calico`: MAC -> peer node address.
    pub fdb: BTreeMap<MacAddr, Ipv4Addr>,
    /// Main-table routes by prefix.
    pub routes: BTreeMap<Ipv4Net, ObservedRoute>,
    /// How many main-table routes carry the agent's protocol number (`proto 200`).
    pub ours: usize,
    /// The natOutgoing table (`table ip dataplane`), as far as it exists.
    pub nat: nftables::Observed,
    /// Why the natOutgoing table could not be read, if it could not.
    pub nat_error: Option<String>,
}

impl ObservedFallback {
    /// Whether the netlink fallback has programmed this node: its device, its routes or its
    /// natOutgoing table exist.
    pub fn present(&self) -> bool {
        self.device.is_some() || self.ours > 0 || self.nat.table
    }
}

/// Another VXLAN device up on `port`, whose socket gives GRO in the anchor's stead (the agent's
/// own test, `vxlan_anchor::other_vxlan_up_on`); None when there is none or netlink cannot say.
pub fn observe_gro_holder(port: u16) -> Option<String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    runtime.block_on(async move {
        let handle = rtnl::connect().ok()?;
        vxlan_anchor::other_vxlan_up_on(&handle, port).await
    })
}

/// Reads `vxlan.calico`, its neighbours and FDB, and the main table over rtnetlink.
pub fn observe_fallback(interfaces: &BTreeMap<String, u32>) -> anyhow::Result<ObservedFallback> {
    let names: BTreeMap<u32, String> = interfaces.iter().map(|(name, index)| (*index, name.clone())).collect();
    let device_index = interfaces.get(VXLAN_DEVICE).copied();
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?.block_on(
        async move {
            let handle = rtnl::connect()?;
            let mut observed = ObservedFallback::default();
            match nftables::observe() {
                Ok(nat) => observed.nat = nat,
                Err(error) => observed.nat_error = Some(format!("{error:#}")),
            }
            if let Some(index) = device_index {
                let mut links = handle.link().get().match_index(index).execute();
                if let Some(message) = links.try_next().await.context("reading vxlan.calico")? {
                    observed.device = Some(parse_vxlan_device(&message));
                }
                observed.neighbours = rtnl::permanent_neighbours(&handle, index).await?;
                observed.fdb = rtnl::fdb_entries(&handle, index).await?;
            }
            for message in rtnl::main_table_routes(&handle).await? {
                if message.header.protocol == RouteProtocol::Other(RTPROT_DATAPLANE) {
                    observed.ours += 1;
                }
                let Some((prefix, route)) = parse_observed_route(&message, &names) else {
                    continue;
                };
                observed.routes.entry(prefix).or_insert(route);
            }
            Ok(observed)
        },
    )
}

/// The parts of `vxlan.calico` the check compares, from the one link parser.
pub(super) fn parse_vxlan_device(message: &LinkMessage) -> VxlanDevice {
    let link = LinkState::parse(message);
    VxlanDevice {
        up: link.up,
        mac: link.mac.and_then(|bytes| <[u8; 6]>::try_from(bytes.as_slice()).ok()).map(MacAddr),
        vni: link.vni,
        local: link.local,
    }
}

/// A route of the main table as the check compares it, from the one route parser: every shape the
/// fallback does not write (a link-scope route, an unreachable one, ...) is `Other`.
pub(super) fn parse_observed_route(
    message: &RouteMessage,
    names: &BTreeMap<u32, String>,
) -> Option<(Ipv4Net, ObservedRoute)> {
    let prefix = rtnl::route_prefix(message)?;
    let route = match rtnl::parse_route(message) {
        Some(RouteOfKernel::Blackhole) => ObservedRoute::Blackhole,
        Some(RouteOfKernel::Via { gateway, ifindex, .. }) => ObservedRoute::Via {
            gateway,
            interface: names.get(&ifindex).cloned().unwrap_or_else(|| format!("ifindex {ifindex}")),
        },
        _ => ObservedRoute::Other,
    };
    Some((prefix, route))
}
