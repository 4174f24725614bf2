//! The project's rtnetlink library: the connection, links, routes, neighbours and FDB entries as
//! the agent reads and writes them, each parsed and encoded in one place.
//!
//! The netlink fallback ([`crate::backend::netlink`]), the fast path's host routes
//! ([`crate::backend::host_routes`]), its VXLAN GRO anchor ([`crate::backend::vxlan_anchor`]) and
//! `dataplane check` ([`crate::check`]) all talk to the kernel through these, so a route or a
//! neighbour means the same thing to the writer and to the reader that checks it.

use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::Context as _;
use futures::TryStreamExt as _;
use ipnet::Ipv4Net;
use rtnetlink::{
    packet_route::{
        link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState},
        route::{
            RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric, RouteProtocol,
            RouteScope, RouteType,
        },
        AddressFamily,
    },
    Handle, LinkUnspec, RouteMessageBuilder,
};

use crate::model::MacAddr;

/// The routing protocol number that marks routes this agent owns (`ip route show proto 200`), the
/// fallback's and the fast path's host routes alike, so that switching backends replaces them.
pub const RTPROT_DATAPLANE: u8 = 200;

/// The kernel's IP-in-IP device, which Calico uses (the ipip module's: it cannot be deleted).
pub const IPIP_DEVICE: &str = "tunl0";

/// An rtnetlink connection in the current network namespace, its task spawned on the current
/// tokio runtime.
pub fn connect() -> anyhow::Result<Handle> {
    let (connection, handle, _) = rtnetlink::new_connection().context("opening an rtnetlink socket")?;
    tokio::spawn(connection);
    Ok(handle)
}

/// The errno of a netlink error, if it is one.
pub fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|code| -code.get()),
        _ => None,
    }
}

/// One route of ours as the kernel holds it: the one route type every writer encodes with
/// [`route_message`] and every reader decodes with [`parse_route`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelRoute {
    /// `blackhole <prefix>`.
    Blackhole,
    /// `<prefix> via <gateway> dev <ifindex> [onlink] [mtu N]`.
    Via {
        /// The next hop.
        gateway: Ipv4Addr,
        /// The output interface.
        ifindex: u32,
        /// The `onlink` flag.
        onlink: bool,
        /// A route MTU (the BPF backend's host routes have one; ours do not).
        mtu: Option<u32>,
    },
    /// `<prefix> dev <ifindex> scope link`.
    Link {
        /// The output interface.
        ifindex: u32,
    },
}

/// Removes the device `name` if it carries `alias`, the mark of the agent's devices
/// ([`crate::backend::netlink::DEVICE_ALIAS`] for the fallback's; an IPIP fallback device cannot be deleted: it is only
/// brought down). Returns whether it did.
pub async fn remove_owned_device(handle: &Handle, name: &str, alias: &str) -> anyhow::Result<bool> {
    let Some(message) = link_by_name(handle, name).await? else {
        return Ok(false);
    };
    let link = LinkState::parse(&message);
    if link.alias.as_deref() != Some(alias) {
        return Ok(false);
    }
    if name == IPIP_DEVICE {
        // tunl0 belongs to the ipip module and cannot be deleted: take it down and drop our mark.
        let message = LinkUnspec::new_with_index(link.index).down().alias("").build();
        handle.link().set(message).execute().await.with_context(|| format!("taking {name} down"))?;
    } else {
        handle.link().del(link.index).execute().await.with_context(|| format!("deleting {name}"))?;
    }
    Ok(true)
}

/// The link called `name`, or None if there is no such device.
pub async fn link_by_name(handle: &Handle, name: &str) -> anyhow::Result<Option<LinkMessage>> {
    let mut replies = handle.link().get().match_name(name.to_owned()).execute();
    match replies.try_next().await {
        Ok(message) => Ok(message),
        Err(error) if errno(&error) == Some(libc::ENODEV) => Ok(None),
        Err(error) => Err(error).with_context(|| format!("looking up link {name}")),
    }
}

/// Every IPv4 route of the main table.
pub async fn main_table_routes(handle: &Handle) -> anyhow::Result<Vec<RouteMessage>> {
    let mut routes = Vec::new();
    each_main_table_route(handle, |message| routes.push(message)).await?;
    Ok(routes)
}

/// Hands every IPv4 route of the main table to `take` as the dump brings it, so that a reader
/// of 100k routes keeps what it needs of each instead of every message.
pub async fn each_main_table_route(handle: &Handle, mut take: impl FnMut(RouteMessage)) -> anyhow::Result<()> {
    let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
    let mut dump = handle.route().get(query).execute();
    while let Some(message) = dump.try_next().await.context("listing routes")? {
        if in_main_table(&message) {
            take(message);
        }
    }
    Ok(())
}

/// Whether a route of a dump is in the main table (the attribute, else the header's field).
pub fn in_main_table(message: &RouteMessage) -> bool {
    let table = message
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(message.header.table));
    table == u32::from(RouteHeader::RT_TABLE_MAIN)
}

/// A device's settings as the agent compares them (this backend's devices, and the fast path's
/// VXLAN GRO anchor).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkState {
    /// Its ifindex.
    pub index: u32,
    /// Its link kind (`vxlan`, `ipip`, ...).
    pub kind: Option<String>,
    /// vxlan: the VNI.
    pub vni: Option<u32>,
    /// vxlan: the UDP destination port.
    pub port: Option<u16>,
    /// vxlan: the local address.
    pub local: Option<Ipv4Addr>,
    /// vxlan: the lower device's ifindex.
    pub lower: Option<u32>,
    /// vxlan: whether it learns FDB entries from what it receives.
    pub learning: Option<bool>,
    /// vxlan: external mode (collect_metadata), as the fast path's GRO anchor runs.
    pub external: bool,
    /// Its MTU.
    pub mtu: Option<u32>,
    /// Its link-layer address.
    pub mac: Option<Vec<u8>>,
    /// Its alias (ours marks the devices the agent made).
    pub alias: Option<String>,
    /// Whether it is administratively up.
    pub up: bool,
}

impl LinkState {
    /// Reads a link message from the kernel.
    pub fn parse(message: &LinkMessage) -> Self {
        let mut state = LinkState {
            index: message.header.index,
            up: message.header.flags.contains(LinkFlags::Up),
            ..Default::default()
        };
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::Mtu(mtu) => state.mtu = Some(*mtu),
                LinkAttribute::Address(mac) => state.mac = Some(mac.clone()),
                LinkAttribute::IfAlias(alias) => state.alias = Some(alias.clone()),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(kind) => {
                                state.kind = Some(match kind {
                                    InfoKind::Vxlan => "vxlan".to_owned(),
                                    other => format!("{other:?}").to_lowercase(),
                                })
                            }
                            LinkInfo::Data(InfoData::Vxlan(vxlan)) => {
                                for item in vxlan {
                                    match item {
                                        InfoVxlan::Id(vni) => state.vni = Some(*vni),
                                        InfoVxlan::Port(port) => state.port = Some(*port),
                                        InfoVxlan::Local(local) => state.local = Some(*local),
                                        InfoVxlan::Link(lower) => state.lower = Some(*lower),
                                        InfoVxlan::Learning(learning) => state.learning = Some(*learning),
                                        InfoVxlan::CollectMetadata(on) => state.external = *on,
                                        _ => {}
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        state
    }

    /// Whether it is a vxlan device.
    pub fn is_vxlan(&self) -> bool {
        self.kind.as_deref() == Some("vxlan")
    }
}

/// The prefix of a route message (0.0.0.0/0 for the default route).
pub fn route_prefix(message: &RouteMessage) -> Option<Ipv4Net> {
    let destination = message
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(addr)) => Some(*addr),
            _ => None,
        })
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
    Ipv4Net::new(destination, message.header.destination_prefix_length).ok()
}

/// Reads one of our routes back from a dump; None for a shape we never make.
pub fn parse_route(message: &RouteMessage) -> Option<KernelRoute> {
    let mut gateway = None;
    let mut ifindex = None;
    let mut mtu = None;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Gateway(RouteAddress::Inet(addr)) => gateway = Some(*addr),
            RouteAttribute::Oif(index) => ifindex = Some(*index),
            RouteAttribute::Metrics(metrics) => {
                mtu = metrics.iter().find_map(|m| if let RouteMetric::Mtu(v) = m { Some(*v) } else { None })
            }
            _ => {}
        }
    }
    match (message.header.kind, gateway) {
        (RouteType::BlackHole, _) => Some(KernelRoute::Blackhole),
        (RouteType::Unicast, Some(gateway)) => Some(KernelRoute::Via {
            gateway,
            ifindex: ifindex?,
            onlink: message.header.flags.contains(RouteFlags::Onlink),
            mtu,
        }),
        (RouteType::Unicast, None) if message.header.scope == RouteScope::Link => {
            Some(KernelRoute::Link { ifindex: ifindex? })
        }
        _ => None,
    }
}

/// The netlink message for one of our routes, tagged with our protocol (a delete with the
/// protocol set only matches routes of that protocol).
pub fn route_message(prefix: Ipv4Net, route: KernelRoute) -> RouteMessage {
    let builder = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(prefix.network(), prefix.prefix_len())
        .protocol(RouteProtocol::Other(RTPROT_DATAPLANE));
    match route {
        KernelRoute::Blackhole => builder.kind(RouteType::BlackHole).build(),
        KernelRoute::Via { gateway, ifindex, onlink, mtu } => {
            let builder = builder.gateway(gateway).output_interface(ifindex);
            let mut message = if onlink { builder.onlink().build() } else { builder.build() };
            if let Some(mtu) = mtu {
                message.attributes.push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
            }
            message
        }
        KernelRoute::Link { ifindex } => builder.output_interface(ifindex).scope(RouteScope::Link).build(),
    }
}

/// An FDB entry of a VXLAN device, for deleting it.
pub fn fdb_message(index: u32, mac: MacAddr, dst: Ipv4Addr) -> NeighbourMessage {
    let mut message = NeighbourMessage::default();
    message.header.family = AddressFamily::Bridge;
    message.header.ifindex = index;
    message.header.flags = NeighbourFlags::Own;
    message.header.state = NeighbourState::Permanent;
    message.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    message.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
    message
}

/// The IPv4 destination of a neighbour or FDB entry. The parser only knows the address family of
/// neighbours: an FDB entry (family bridge) carries its destination as raw bytes.
pub fn neighbour_ipv4(message: &NeighbourMessage) -> Option<Ipv4Addr> {
    message.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(addr)) => Some(*addr),
        NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
            <[u8; 4]>::try_from(bytes.as_slice()).ok().map(Ipv4Addr::from)
        }
        _ => None,
    })
}

/// The link-layer address of a neighbour or FDB entry.
pub fn neighbour_mac(message: &NeighbourMessage) -> Option<MacAddr> {
    message.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr),
        _ => None,
    })
}

/// The permanent IPv4 neighbours on the device `index` (address -> MAC), as the fallback writes
/// them for the peers' VTEPs.
pub async fn permanent_neighbours(handle: &Handle, index: u32) -> anyhow::Result<BTreeMap<Ipv4Addr, MacAddr>> {
    let mut dump = handle.neighbours().get().set_address_family(AddressFamily::Inet).execute();
    let mut present = BTreeMap::new();
    while let Some(message) = dump.try_next().await.context("listing neighbours")? {
        if message.header.ifindex != index || message.header.state != NeighbourState::Permanent {
            continue;
        }
        if let (Some(addr), Some(mac)) = (neighbour_ipv4(&message), neighbour_mac(&message)) {
            present.insert(addr, mac);
        }
    }
    Ok(present)
}

/// The FDB entries of the device `index` (MAC -> destination node address).
pub async fn fdb_entries(handle: &Handle, index: u32) -> anyhow::Result<BTreeMap<MacAddr, Ipv4Addr>> {
    let mut dump = handle.neighbours().get().set_address_family(AddressFamily::Bridge).execute();
    let mut present = BTreeMap::new();
    while let Some(message) = dump.try_next().await.context("listing FDB entries")? {
        if message.header.ifindex != index {
            continue;
        }
        if let (Some(dst), Some(mac)) = (neighbour_ipv4(&message), neighbour_mac(&message)) {
            present.insert(mac, dst);
        }
    }
    Ok(present)
}

/// The gateway the kernel would use towards `addr` (`ip route get`), or `addr` if on-link.
pub async fn next_hop(handle: &Handle, addr: Ipv4Addr) -> anyhow::Result<Ipv4Addr> {
    let query = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(addr, 32).build();
    let mut replies = handle.route().get(query).execute();
    while let Some(reply) = replies.try_next().await.with_context(|| format!("route get {addr}"))? {
        for attribute in &reply.attributes {
            if let RouteAttribute::Gateway(RouteAddress::Inet(gateway)) = attribute {
                return Ok(*gateway);
            }
        }
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{ip, mac, net};

    #[test]
    fn route_messages_read_back_as_the_same_route() {
        let prefix = net("10.244.2.0/26");
        for route in [
            KernelRoute::Blackhole,
            KernelRoute::Via { gateway: ip("10.244.2.0"), ifindex: 7, onlink: true, mtu: None },
            KernelRoute::Via { gateway: ip("10.100.0.12"), ifindex: 2, onlink: true, mtu: Some(1450) },
            KernelRoute::Link { ifindex: 9 },
        ] {
            let message = route_message(prefix, route);
            assert_eq!(route_prefix(&message), Some(prefix));
            assert_eq!(message.header.protocol, RouteProtocol::Other(RTPROT_DATAPLANE));
            assert_eq!(parse_route(&message), Some(route), "{message:?}");
        }
    }

    #[test]
    fn fdb_messages_carry_mac_and_destination() {
        let message = fdb_message(4, mac("66:d0:00:00:00:02"), ip("10.100.0.12"));
        assert_eq!(neighbour_mac(&message), Some(mac("66:d0:00:00:00:02")));
        assert_eq!(neighbour_ipv4(&message), Some(ip("10.100.0.12")));
        assert_eq!(message.header.family, AddressFamily::Bridge);
        // As a dump hands it over: the destination of a bridge-family entry is raw bytes.
        let mut dumped = message.clone();
        dumped.attributes = vec![
            NeighbourAttribute::LinkLayerAddress(mac("66:d0:00:00:00:02").0.to_vec()),
            NeighbourAttribute::Destination(NeighbourAddress::Other(vec![10, 100, 0, 12])),
        ];
        assert_eq!(neighbour_ipv4(&dumped), Some(ip("10.100.0.12")));
    }
}
