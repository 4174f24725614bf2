//! Kernel routes for the node's own traffic to pod blocks, as Calico's dataplane installs them.
//!
//! Pods' packets never reach these routes (the TC programs redirect them first), but the host's
//! own sockets need them: `blackhole <local block>`, and `<remote block> via <next hop> dev
//! <uplink> onlink` with the tunnel's MTU over this uplink, so host packets to remote pods leave by the uplink,
//! where `to_uplink` encapsulates them. Routes are tagged with our own protocol number, so a
//! resync lists exactly ours and touches nothing else in the table.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use anyhow::Context as _;
use dataplane_common::net::{tunnel_mtu, IPIP_ENCAP_LEN, VXLAN_ENCAP_LEN};
use futures::{stream, StreamExt as _, TryStreamExt as _};
use ipnet::Ipv4Net;
use rtnetlink::{
    packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST},
    packet_route::{
        route::{RouteMessage, RouteProtocol},
        RouteNetlinkMessage,
    },
    sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr},
    Handle, RouteMessageBuilder,
};

use super::diff::{diff, diff_keys, drift, take_drift, Changes};
pub use crate::rtnl::RTPROT_DATAPLANE;
use crate::{
    plan::{Encap, Plan, PlannedRoute, RouteTarget},
    rtnl::{self, KernelRoute},
};

/// Route requests sent before the first answer is awaited.
const IN_FLIGHT: usize = 64;

/// One kernel route for a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum HostRoute {
    /// `blackhole <block>`: a local block's addresses without a workload.
    Blackhole,
    /// `<block> via <gateway> dev <ifindex> onlink [mtu N]`.
    Via {
        /// The next hop towards the block's node.
        gateway: Ipv4Addr,
        /// The uplink.
        ifindex: u32,
        /// The route's MTU: the tunnel's, when the block is reached encapsulated.
        mtu: Option<u32>,
    },
}

/// The MTU of a route to a block reached with `encap` over an uplink of `uplink_mtu`: the
/// tunnel's, as the kernel programs and the netlink fallback's devices have it; none unencapsulated.
pub fn route_mtu(encap: &Encap, uplink_mtu: u32) -> Option<u32> {
    match encap {
        Encap::None => None,
        Encap::Vxlan { .. } => Some(tunnel_mtu(uplink_mtu, VXLAN_ENCAP_LEN)),
        Encap::Ipip => Some(tunnel_mtu(uplink_mtu, IPIP_ENCAP_LEN)),
    }
}

/// The routes the plan needs over the uplink (`uplink_ifindex`, `uplink_mtu`); `next_hop` gives
/// the gateway towards a node's address (the node itself when it is on-link).
pub fn desired(
    plan: &Plan,
    uplink_ifindex: u32,
    uplink_mtu: u32,
    next_hop: impl Fn(Ipv4Addr) -> Ipv4Addr,
) -> BTreeMap<Ipv4Net, HostRoute> {
    plan.routes
        .iter()
        .filter_map(|(prefix, planned)| {
            host_route(planned, uplink_ifindex, uplink_mtu, &next_hop).map(|route| (*prefix, route))
        })
        .collect()
}

/// The host route one planned route needs, if any (blocks only: a pod's /32 and a pool are the
/// fast path's business).
pub fn host_route(
    planned: &PlannedRoute,
    uplink_ifindex: u32,
    uplink_mtu: u32,
    next_hop: impl Fn(Ipv4Addr) -> Ipv4Addr,
) -> Option<HostRoute> {
    match &planned.target {
        RouteTarget::LocalBlock => Some(HostRoute::Blackhole),
        RouteTarget::RemoteBlock { node_addr, encap, .. } => Some(HostRoute::Via {
            gateway: next_hop(*node_addr),
            ifindex: uplink_ifindex,
            mtu: route_mtu(encap, uplink_mtu),
        }),
        RouteTarget::LocalWorkload { .. } | RouteTarget::Pool => None,
    }
}

/// Reads and writes this agent's routes in the main table over rtnetlink.
///
/// It remembers what it wrote, so a change costs one route message and no dump: the table is
/// read only the first time, after a failed write and after [`HostRoutes::forget`] (the agent's
/// slow resync). The next hop towards each peer is remembered the same way.
pub struct HostRoutes {
    handle: Handle,
    /// Our routes as this process last wrote or read them; None: read the table first.
    programmed: Option<BTreeMap<Ipv4Net, HostRoute>>,
    /// `ip route get` answers by peer address.
    next_hops: BTreeMap<Ipv4Addr, Ipv4Addr>,
    /// Route dumps done (table reads), for the metrics.
    dumps: u64,
}

impl HostRoutes {
    /// Reads and writes over `handle`'s netlink connection.
    pub fn new(handle: Handle) -> Self {
        HostRoutes { handle, programmed: None, next_hops: BTreeMap::new(), dumps: 0 }
    }

    /// Drops what is remembered: the next apply reads the table and asks the next hops again.
    pub fn forget(&mut self) {
        self.programmed = None;
        self.next_hops.clear();
    }

    /// Whether this process knows what the table holds (else the next apply reads it, and must
    /// be given every desired route).
    pub fn knows_table(&self) -> bool {
        self.programmed.is_some()
    }

    /// How many times the table has been read.
    pub fn dumps(&self) -> u64 {
        self.dumps
    }

    /// The gateways towards `addrs` (`ip route get`, or the address itself when on-link), remembered until [`HostRoutes::forget`], asking the kernel about the
    /// unknown ones [`IN_FLIGHT`] at a time: from empty, or after the slow resync forgot them,
    /// a cluster of 10k nodes is 10k questions, not 10k round trips one after the other.
    pub async fn next_hops(
        &mut self,
        addrs: impl IntoIterator<Item = Ipv4Addr>,
    ) -> anyhow::Result<BTreeMap<Ipv4Addr, Ipv4Addr>> {
        let wanted: BTreeSet<Ipv4Addr> = addrs.into_iter().collect();
        let unknown: Vec<Ipv4Addr> = wanted.iter().filter(|addr| !self.next_hops.contains_key(addr)).copied().collect();
        self.next_hops.extend(ask_next_hops(&self.handle, unknown).await?);
        Ok(wanted.into_iter().filter_map(|addr| self.next_hops.get(&addr).map(|gateway| (addr, *gateway))).collect())
    }

    /// The routes this agent installed earlier.
    pub async fn programmed(&self) -> anyhow::Result<BTreeMap<Ipv4Net, HostRoute>> {
        tokio::task::spawn_blocking(table_apart).await.context("the read of the route table stopped")?
    }

    /// What the slow resync's read of the table needs, taken now: a copy of the routes this
    /// process wrote (to compare the table with, apart from the event loop) and the peers whose
    /// next hops it knows. [`TableReader::read`] then runs on any runtime, over any connection.
    pub fn reader(&self) -> TableReader {
        TableReader { known: self.programmed.clone(), peers: self.next_hops.keys().copied().collect() }
    }

    /// Takes in a [`TableReader::read`] read: returns the prefixes whose route differs from
    /// what this process wrote (to be compared with the plan again), and whether a peer's next
    /// hop moved (then every route via it is stale).
    pub fn take_read(&mut self, read: TableRead) -> (Vec<Ipv4Net>, bool) {
        self.dumps += 1;
        // Unknown yet (a failed write): the next apply reads the table anyway.
        let drifted = match (&mut self.programmed, read.drift) {
            (Some(programmed), Some(drift)) => take_drift(programmed, drift),
            _ => Vec::new(),
        };
        let moved = read.next_hops.iter().any(|(peer, gateway)| self.next_hops.get(peer).is_some_and(|g| g != gateway));
        self.next_hops.extend(read.next_hops);
        (drifted, moved)
    }

    /// Makes our routes equal to `desired`, or, `within` a change's prefixes, only those; returns
    /// (written, removed). A failed write makes the next call read the table again.
    pub async fn apply(
        &mut self,
        desired: &BTreeMap<Ipv4Net, HostRoute>,
        within: Option<&BTreeSet<Ipv4Net>>,
    ) -> anyhow::Result<(usize, usize)> {
        let (mut programmed, within) = match self.programmed.take() {
            Some(programmed) => (programmed, within),
            None => {
                self.dumps += 1;
                // A table just read is compared whole.
                (self.programmed().await?, None)
            }
        };
        let Changes { upserts, removals } = match within {
            Some(keys) => diff_keys(&programmed, desired, keys),
            None => diff(&programmed, desired),
        };
        let counts = (upserts.len(), removals.len());
        // Many requests in flight on the one connection, answered in any order: a start with
        // 100k blocks is not 100k round trips. On an error `programmed` is dropped, so the next
        // apply reads what the kernel holds.
        let handle = &self.handle;
        stream::iter(upserts.iter().copied())
            .map(|(prefix, route)| async move {
                handle
                    .route()
                    .add(message(prefix, route))
                    .replace()
                    .execute()
                    .await
                    .with_context(|| format!("installing route {prefix} ({route:?})"))
            })
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        programmed.extend(upserts);
        let removed: Vec<(Ipv4Net, HostRoute)> =
            removals.iter().filter_map(|prefix| programmed.get(prefix).map(|route| (*prefix, *route))).collect();
        stream::iter(removed)
            .map(|(prefix, route)| async move {
                match handle.route().del(message(prefix, route)).execute().await {
                    // Gone already (the resync's read can show a route removed since): done.
                    Err(error) if rtnl::errno(&error) == Some(libc::ESRCH) => Ok(()),
                    removed => removed.with_context(|| format!("removing route {prefix}")),
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        for prefix in &removals {
            programmed.remove(prefix);
        }
        self.programmed = Some(programmed);
        Ok(counts)
    }
}

impl From<HostRoute> for KernelRoute {
    /// A host route in the one route type: a `Via` is always `onlink`.
    fn from(route: HostRoute) -> Self {
        match route {
            HostRoute::Blackhole => KernelRoute::Blackhole,
            HostRoute::Via { gateway, ifindex, mtu } => KernelRoute::Via { gateway, ifindex, onlink: true, mtu },
        }
    }
}

/// The netlink message for one of our routes.
fn message(prefix: Ipv4Net, route: HostRoute) -> RouteMessage {
    rtnl::route_message(prefix, route.into())
}

/// The slow resync's read of the route table, to run apart from the event loop.
pub struct TableReader {
    /// Our routes as this process had written them when the read was asked for; None: unknown.
    known: Option<BTreeMap<Ipv4Net, HostRoute>>,
    /// The peers whose next hops this process knows.
    peers: Vec<Ipv4Addr>,
}

impl TableReader {
    /// Reads our routes and the peers' next hops over `handle` and compares the routes with
    /// what this process had written.
    pub async fn read(self, handle: &Handle) -> anyhow::Result<TableRead> {
        // Blocking: the caller runs this on a thread of its own.
        let routes = table_apart()?;
        let drift = self.known.map(|known| drift(&known, routes));
        let next_hops = ask_next_hops(handle, self.peers).await?;
        Ok(TableRead { drift, next_hops: next_hops.into_iter().collect() })
    }
}

/// What the slow resync read of the route table, apart from the event loop.
pub struct TableRead {
    /// Our routes that the table holds otherwise than this process wrote, with the table's
    /// route (None: absent); None when what it wrote was not known.
    drift: Option<Vec<(Ipv4Net, Option<HostRoute>)>>,
    /// The next hops of the peers known before the read.
    next_hops: BTreeMap<Ipv4Addr, Ipv4Addr>,
}

/// Our routes in the main table, read over a blocking netlink socket of this thread's own, one
/// datagram at a time. rtnetlink's connection reads a whole dump ahead of its reader and keeps
/// every message decoded until it is taken: at 100k routes 36 MB, the agent's peak during a
/// resync (heaptrack, 2026-12-07); here one datagram and our routes are all that is held.
fn table_apart() -> anyhow::Result<BTreeMap<Ipv4Net, HostRoute>> {
    let mut socket = Socket::new(NETLINK_ROUTE).context("opening a netlink socket for the route table")?;
    socket.bind_auto().context("binding the route table's netlink socket")?;
    socket.connect(&SocketAddr::new(0, 0)).context("connecting the route table's netlink socket")?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = 1;
    let query = RouteNetlinkMessage::GetRoute(RouteMessageBuilder::<Ipv4Addr>::new().build());
    let mut request = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(query));
    request.finalize();
    let mut buffer = vec![0; request.buffer_len()];
    request.serialize(&mut buffer);
    socket.send(&buffer, 0).context("asking for the route table")?;
    let mut routes = BTreeMap::new();
    loop {
        let (datagram, _) = socket.recv_from_full().context("reading the route table")?;
        let mut offset = 0;
        while offset < datagram.len() {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[offset..])
                .context("decoding the route table")?;
            let length = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::Done(_) => return Ok(routes),
                NetlinkPayload::Error(error) => {
                    return Err(error.to_io()).context("the kernel refused to list the route table");
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(message))
                    if message.header.protocol == RouteProtocol::Other(RTPROT_DATAPLANE)
                        && rtnl::in_main_table(&message) =>
                {
                    if let Some((prefix, route)) = parse(&message) {
                        routes.insert(prefix, route);
                    }
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

/// The next hops towards `addrs`, [`IN_FLIGHT`] questions at a time.
async fn ask_next_hops(handle: &Handle, addrs: Vec<Ipv4Addr>) -> anyhow::Result<Vec<(Ipv4Addr, Ipv4Addr)>> {
    stream::iter(addrs)
        .map(|addr| async move { rtnl::next_hop(handle, addr).await.map(|gateway| (addr, gateway)) })
        .buffer_unordered(IN_FLIGHT)
        .try_collect()
        .await
}

/// Reads one of our routes back from a dump; None for a shape host routes never have.
fn parse(message: &RouteMessage) -> Option<(Ipv4Net, HostRoute)> {
    let prefix = rtnl::route_prefix(message)?;
    let route = match rtnl::parse_route(message)? {
        KernelRoute::Blackhole => HostRoute::Blackhole,
        KernelRoute::Via { gateway, ifindex, mtu, .. } => HostRoute::Via { gateway, ifindex, mtu },
        KernelRoute::Link { .. } => return None,
    };
    Some((prefix, route))
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_route::route::RouteAttribute;

    use super::*;
    use crate::{fixtures::two_nodes, plan};

    #[test]
    fn local_blocks_are_blackholed_and_remote_blocks_go_via_the_uplink_with_the_tunnel_mtu() {
        let model = two_nodes();
        let (plan, _) = plan::compute(&model, "node-1").unwrap();
        let routes = desired(&plan, 2, 1500, |addr| addr);
        assert_eq!(routes[&"10.244.1.0/26".parse().unwrap()], HostRoute::Blackhole);
        assert_eq!(
            routes[&"10.244.2.0/26".parse().unwrap()],
            HostRoute::Via { gateway: Ipv4Addr::new(10, 100, 0, 12), ifindex: 2, mtu: Some(1450) },
            "Calico's VXLAN MTU on a 1500-byte uplink"
        );
        assert_eq!(routes.len(), 2, "no routes for workloads or pools: {routes:?}");
    }

    /// The host's routes follow the uplink's MTU as the kernel programs do: a jumbo-frame uplink
    /// and a cloud's 1460-byte one.
    #[test]
    fn the_route_mtu_is_the_uplinks_less_the_tunnel() {
        let model = two_nodes();
        let (plan, _) = plan::compute(&model, "node-1").unwrap();
        let block = "10.244.2.0/26".parse().unwrap();
        for (uplink_mtu, vxlan) in [(9000, 8950), (1460, 1410)] {
            let routes = desired(&plan, 2, uplink_mtu, |addr| addr);
            assert!(
                matches!(routes[&block], HostRoute::Via { mtu: Some(m), .. } if m == vxlan),
                "{uplink_mtu}: {routes:?}"
            );
        }
        assert_eq!(route_mtu(&Encap::Ipip, 9000), Some(8980));
        assert_eq!(route_mtu(&Encap::Ipip, 1460), Some(1440));
        assert_eq!(route_mtu(&Encap::None, 9000), None, "unencapsulated routes take the uplink's own");
        // The kernel programs' check: an inner packet of exactly the route's MTU fits the uplink.
        let RouteTarget::RemoteBlock { encap, .. } = &plan.routes[&block].target else { panic!("not remote") };
        assert!(matches!(encap, Encap::Vxlan { .. }));
        assert_eq!(route_mtu(encap, 1460).map(|m| m as usize + VXLAN_ENCAP_LEN), Some(1460));
    }

    #[test]
    fn an_off_link_peer_is_reached_through_the_gateway() {
        let model = two_nodes();
        let (plan, _) = plan::compute(&model, "node-1").unwrap();
        let gateway = Ipv4Addr::new(10, 100, 0, 254);
        let routes = desired(&plan, 2, 1500, |_| gateway);
        assert!(matches!(routes[&"10.244.2.0/26".parse().unwrap()], HostRoute::Via { gateway: g, .. } if g == gateway));
    }

    #[test]
    fn messages_read_back_as_the_same_route() {
        let prefix: Ipv4Net = "10.244.2.0/26".parse().unwrap();
        for route in [
            HostRoute::Blackhole,
            HostRoute::Via { gateway: Ipv4Addr::new(10, 100, 0, 12), ifindex: 2, mtu: Some(1450) },
            HostRoute::Via { gateway: Ipv4Addr::new(10, 100, 0, 12), ifindex: 2, mtu: None },
        ] {
            let mut msg = message(prefix, route);
            msg.attributes.push(RouteAttribute::Oif(2));
            assert_eq!(parse(&msg), Some((prefix, route)));
        }
    }
}
