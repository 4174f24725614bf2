//! The pod's MAC, learned from the kernel for workloads the datastore gives none.
//!
//! Calico's Kubernetes datastore stores no pod MACs, so the fast path would deliver into those
//! pods with destination 00:00:00:00:00:00. The pod's MAC is the address of the other end of its
//! host veth (`caliXXX`): RTM_GETLINK on the host side names the peer (IFLA_LINK) and the
//! namespace it lives in as seen from here (IFLA_LINK_NETNSID); RTM_GETLINK of that index with
//! IFLA_TARGET_NETNSID (kernel 4.20+) then answers from the pod's namespace with its IFLA_ADDRESS.
//! Parsing the answers is pure; the requests are the edge.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context as _};
use futures::TryStreamExt as _;
use rtnetlink::{
    packet_core::DefaultNla,
    packet_route::link::{LinkAttribute, LinkMessage},
    Handle,
};
use tracing::{debug, info, warn};

use crate::model::MacAddr;

/// `IFLA_TARGET_NETNSID` (linux/if_link.h): run the link request in the namespace with this nsid.
/// netlink-packet-route has no variant for it, so it goes as a raw attribute.
const IFLA_TARGET_NETNSID: u16 = 46;

/// The other end of a veth, as its host side reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VethPeer {
    /// The peer's ifindex, in its own namespace.
    pub index: u32,
    /// The peer's namespace as an nsid of this one; None when the peer is in this namespace.
    pub netnsid: Option<i32>,
}

/// The peer named by a link message (IFLA_LINK, IFLA_LINK_NETNSID); None for a link without one
/// (not a veth).
pub fn peer_of(message: &LinkMessage) -> Option<VethPeer> {
    let mut index = None;
    let mut netnsid = None;
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::Link(peer) if *peer != 0 => index = Some(*peer),
            LinkAttribute::LinkNetNsId(id) if *id >= 0 => netnsid = Some(*id),
            _ => {}
        }
    }
    index.map(|index| VethPeer { index, netnsid })
}

/// The Ethernet address (IFLA_ADDRESS) of a link message, if it has a six-byte one.
pub fn address_of(message: &LinkMessage) -> Option<MacAddr> {
    message.attributes.iter().find_map(|attribute| match attribute {
        LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr),
        _ => None,
    })
}

/// The MAC of the pod end of the veth whose host side has `host_ifindex`.
pub async fn peer_mac(handle: &Handle, host_ifindex: u32) -> anyhow::Result<MacAddr> {
    let mut links = handle.link().get().match_index(host_ifindex).execute();
    let host = links
        .try_next()
        .await
        .with_context(|| format!("RTM_GETLINK ifindex {host_ifindex}"))?
        .with_context(|| format!("no answer for ifindex {host_ifindex}"))?;
    let Some(peer) = peer_of(&host) else {
        bail!("ifindex {host_ifindex} names no peer (IFLA_LINK): it is not a veth");
    };
    let mut request = handle.link().get().match_index(peer.index);
    if let Some(nsid) = peer.netnsid {
        request
            .message_mut()
            .attributes
            .push(LinkAttribute::Other(DefaultNla::new(IFLA_TARGET_NETNSID, nsid.to_ne_bytes().to_vec())));
    }
    let mut links = request.execute();
    let pod = links
        .try_next()
        .await
        .with_context(|| format!("RTM_GETLINK of the peer, ifindex {} in nsid {:?}", peer.index, peer.netnsid))?
        .with_context(|| format!("no answer for the peer, ifindex {} in nsid {:?}", peer.index, peer.netnsid))?;
    let mac = address_of(&pod).with_context(|| {
        format!("the peer (ifindex {} in nsid {:?}) has no Ethernet address", peer.index, peer.netnsid)
    })?;
    if mac == MacAddr::default() {
        bail!("the peer (ifindex {} in nsid {:?}) has the zero address", peer.index, peer.netnsid);
    }
    Ok(mac)
}

/// The pod MACs learned so far, by host interface, and the requests to learn new ones.
pub struct PeerMacs {
    handle: Handle,
    /// Interface -> (its ifindex when learned, the pod's MAC). A pod's MAC does not change while
    /// its veth lives; a new veth under the same name has a new ifindex and is learned again.
    learned: BTreeMap<String, (u32, MacAddr)>,
    /// Interfaces (with ifindex) whose failure was already logged at warn.
    warned: BTreeSet<(String, u32)>,
}

impl PeerMacs {
    /// Learns over `handle`'s netlink connection.
    pub fn new(handle: Handle) -> Self {
        PeerMacs { handle, learned: BTreeMap::new(), warned: BTreeSet::new() }
    }

    /// The pod MACs of `wanted` (interface, host ifindex), by interface; a workload whose MAC
    /// cannot be learned is left out (logged once at warn, later at debug) and tried again next
    /// time. Never fails: the fast path still delivers with a zero MAC.
    pub async fn learn(&mut self, wanted: &[(&str, u32)]) -> BTreeMap<String, MacAddr> {
        let keep: BTreeSet<(&str, u32)> = wanted.iter().copied().collect();
        self.learned.retain(|interface, (index, _)| keep.contains(&(interface.as_str(), *index)));
        self.warned.retain(|(interface, index)| keep.contains(&(interface.as_str(), *index)));
        let mut macs = BTreeMap::new();
        for &(interface, index) in wanted {
            if let Some((_, mac)) = self.learned.get(interface) {
                macs.insert(interface.to_owned(), *mac);
                continue;
            }
            match peer_mac(&self.handle, index).await {
                Ok(mac) => {
                    info!(
                        interface,
                        ifindex = index,
                        mac = %mac,
                        "learned the pod's MAC from its veth (the datastore has none)"
                    );
                    self.learned.insert(interface.to_owned(), (index, mac));
                    macs.insert(interface.to_owned(), mac);
                }
                Err(error) => {
                    let error = format!("{error:#}");
                    if self.warned.insert((interface.to_owned(), index)) {
                        warn!(
                            interface,
                            ifindex = index,
                            error,
                            "cannot learn the pod's MAC; delivering with 00:00:00:00:00:00 and retrying"
                        );
                    } else {
                        debug!(interface, ifindex = index, error, "still cannot learn the pod's MAC");
                    }
                }
            }
        }
        macs
    }
}

/// The pod MACs of `wanted` (interface, host ifindex), learned once by [`PeerMacs::learn`] on a
/// private runtime (for `dataplane check`, which is not async).
pub fn learn_once(wanted: &[(&str, u32)]) -> anyhow::Result<BTreeMap<String, MacAddr>> {
    if wanted.is_empty() {
        return Ok(BTreeMap::new());
    }
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(async { Ok(PeerMacs::new(crate::rtnl::connect()?).learn(wanted).await) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(attributes: Vec<LinkAttribute>) -> LinkMessage {
        let mut message = LinkMessage::default();
        message.attributes = attributes;
        message
    }

    #[test]
    fn a_host_veth_names_its_peer_and_the_peer_namespace() {
        let host = link(vec![
            LinkAttribute::IfName("cali1".into()),
            LinkAttribute::Link(2),
            LinkAttribute::LinkNetNsId(3),
            LinkAttribute::Address(vec![0xee; 6]),
        ]);
        assert_eq!(peer_of(&host), Some(VethPeer { index: 2, netnsid: Some(3) }));
        // Both ends in this namespace: no nsid, the peer is asked for here.
        assert_eq!(peer_of(&link(vec![LinkAttribute::Link(9)])), Some(VethPeer { index: 9, netnsid: None }));
        // Not a veth (or a dummy): nothing to learn from.
        assert_eq!(peer_of(&link(vec![LinkAttribute::IfName("dummy0".into())])), None);
        assert_eq!(peer_of(&link(vec![LinkAttribute::Link(0)])), None);
    }

    #[test]
    fn the_pod_side_answers_with_its_address() {
        let pod = link(vec![LinkAttribute::IfName("eth0".into()), LinkAttribute::Address(vec![0x3a, 1, 2, 3, 4, 5])]);
        assert_eq!(address_of(&pod), Some(MacAddr([0x3a, 1, 2, 3, 4, 5])));
        // An IPIP or other non-Ethernet link has no six-byte address.
        assert_eq!(address_of(&link(vec![LinkAttribute::Address(vec![10, 0, 0, 1])])), None);
        assert_eq!(address_of(&link(vec![])), None);
    }
}
