//! The VXLAN GRO anchor: a kernel vxlan device in external (collect_metadata) mode that the fast
//! path keeps while the node receives VXLAN, for its UDP socket alone.
//!
//! The kernel merges VXLAN packets per inner flow (udp4_gro_receive -> vxlan_gro_receive) only
//! when a UDP tunnel socket with a gro_receive callback is bound to the destination port. Without
//! one, `from_uplink` decapsulates one wire packet at a time (1.3 KB each between VMs); with one,
//! it decapsulates GRO-merged packets of tens of KB, as the kernel's own vxlan.calico receives.
//! Every whole VXLAN packet to the node's address on the uplink is decided by `from_uplink` before
//! the socket sees it. The socket also reassembles a peer's VXLAN that the underlay fragmented
//! (`from_uplink` passes those fragments): the `vxlan_anchor` program on the device's ingress
//! delivers it; what reaches the device from anyone else is dropped (`drop_vxlan_socket`).

use std::net::Ipv4Addr;

use anyhow::Context as _;
use dataplane_common::net::CALICO_VXLAN_PORT;
use futures::TryStreamExt as _;
use rtnetlink::{packet_route::link::LinkAttribute, Handle, LinkUnspec, LinkVxlan};
use tracing::{info, warn};

use crate::{
    plan::Plan,
    rtnl::{link_by_name, remove_owned_device, LinkState},
};

/// The anchor device's name (not `vxlan.calico`, which the netlink fallback owns).
pub const ANCHOR_DEVICE: &str = "vxlan.dataplane";

/// The alias that marks the anchor as the fast path's, so that cleanup removes it.
pub const ANCHOR_ALIAS: &str = "dataplane fast path VXLAN GRO anchor";

/// Whether `plan` has this node receive VXLAN: some pool runs VXLAN between it and a peer.
pub fn wanted(plan: &Plan) -> bool {
    plan.peers.values().any(|peer| peer.vxlan)
}

/// Whether `link` is our anchor (it carries [`ANCHOR_ALIAS`]).
fn ours(link: &LinkState) -> bool {
    link.alias.as_deref() == Some(ANCHOR_ALIAS)
}

/// Whether `link` is our anchor in external mode on `local`:`port` (up or not).
fn matches(link: &LinkState, local: Ipv4Addr, port: u16) -> bool {
    link.is_vxlan() && link.external && link.port == Some(port) && link.local == Some(local) && ours(link)
}

/// Keeps the anchor device as the plan wants it, over its own netlink connection.
pub struct VxlanAnchor {
    handle: Handle,
    /// Whether the agent has said that it cannot have the device: it retries every reconcile
    /// (a device in the way may go), but says so once.
    warned: bool,
    /// The VXLAN port the anchor is for (the last `ensure`'s).
    port: u16,
}

impl VxlanAnchor {
    /// Keeps the anchor over `handle`'s netlink connection.
    pub fn new(handle: Handle) -> Self {
        VxlanAnchor { handle, warned: false, port: CALICO_VXLAN_PORT }
    }

    /// Makes the anchor exist in external mode on `local`:`port`; returns its ifindex and whether
    /// it is up, or None when the kernel cannot make it (warned once: the node then receives VXLAN
    /// without GRO) or a device of that name that is not ours is in the way. A new device is left
    /// down: its socket opens when it goes up ([`VxlanAnchor::set_up`]), which the caller does
    /// once the program that drops what it decapsulates is attached.
    pub async fn ensure(&mut self, local: Ipv4Addr, port: u16) -> anyhow::Result<Option<(u32, bool)>> {
        self.port = port;
        if let Some(existing) = link_by_name(&self.handle, ANCHOR_DEVICE).await? {
            let state = LinkState::parse(&existing);
            if !ours(&state) {
                if !self.warned {
                    warn!(
                        device = ANCHOR_DEVICE,
                        "a device of this name that the agent did not make is in the way: VXLAN is received \
                         without GRO until it is removed"
                    );
                    self.warned = true;
                }
                return Ok(None);
            }
            if matches(&state, local, port) {
                return Ok(Some((state.index, state.up)));
            }
            info!(device = ANCHOR_DEVICE, ?state, "settings differ from the plan; making it anew");
            self.handle
                .link()
                .del(state.index)
                .execute()
                .await
                .with_context(|| format!("deleting {ANCHOR_DEVICE} to make it anew"))?;
        }
        // No lower device: the socket listens on every interface, and a vxlan device's lower
        // device only matters for what it sends, which is nothing.
        let message =
            LinkVxlan::new(ANCHOR_DEVICE, 0).collect_metadata(true).port(port).local(local).learning(false).build();
        if let Err(error) = self.handle.link().add(message).execute().await {
            self.say_once(&error).await;
            return Ok(None);
        }
        let created = link_by_name(&self.handle, ANCHOR_DEVICE)
            .await?
            .with_context(|| format!("{ANCHOR_DEVICE} vanished right after it was created"))?;
        let index = created.header.index;
        let message = LinkUnspec::new_with_index(index).alias(ANCHOR_ALIAS).build();
        if let Err(error) = self.handle.link().set(message).execute().await {
            // Without our alias no later agent would take it for ours: do not leave it behind.
            let _ = self.handle.link().del(index).execute().await;
            return Err(error).with_context(|| format!("marking {ANCHOR_DEVICE} with alias {ANCHOR_ALIAS:?}"));
        }
        info!(device = ANCHOR_DEVICE, %local, port, "created the VXLAN GRO anchor (external mode)");
        Ok(Some((index, false)))
    }

    /// Brings the anchor up, which opens its UDP socket; whether it is up. Opening fails when
    /// another VXLAN device holds the port: warned once, left down, retried every reconcile.
    pub async fn set_up(&mut self, index: u32) -> bool {
        let message = LinkUnspec::new_with_index(index).up().build();
        match self.handle.link().set(message).execute().await {
            Ok(()) => {
                info!(device = ANCHOR_DEVICE, "up: VXLAN to this node is GRO-merged before from_uplink");
                self.warned = false;
                true
            }
            Err(error) => {
                self.say_once(&error).await;
                false
            }
        }
    }

    /// Says once why the node has no anchor. When another VXLAN device that is up holds the port
    /// (Calico's `vxlan.calico` on a node its own dataplane configured), that device's socket is
    /// what keeps the anchor's from opening, and it gives the port GRO just the same: no loss.
    async fn say_once(&mut self, error: &rtnetlink::Error) {
        if self.warned {
            return;
        }
        self.warned = true;
        match other_vxlan_up_on(&self.handle, self.port).await {
            Some(holder) => info!(
                device = ANCHOR_DEVICE,
                holder = %holder,
                port = self.port,
                %error,
                "no VXLAN GRO anchor needed while another VXLAN device holds the port: its socket GRO-merges \
                 VXLAN before from_uplink as the anchor's would; retrying at every reconcile in case it goes"
            ),
            None => warn!(
                device = ANCHOR_DEVICE,
                port = self.port,
                %error,
                "cannot have the VXLAN GRO anchor (no vxlan module?): VXLAN is received without GRO, one wire \
                 packet at a time, which costs throughput between VMs; retrying at every reconcile"
            ),
        }
    }

    /// Removes the anchor if it is ours; returns whether it did.
    pub async fn remove(&self) -> anyhow::Result<bool> {
        remove(&self.handle).await
    }
}

/// The name of a VXLAN device other than the anchor that is up on `port`, if any: its socket
/// GRO-merges VXLAN to the port as the anchor's would (Calico's `vxlan.calico` on a node being
/// taken over).
pub async fn other_vxlan_up_on(handle: &Handle, port: u16) -> Option<String> {
    let mut links = handle.link().get().execute();
    while let Ok(Some(message)) = links.try_next().await {
        let state = LinkState::parse(&message);
        if state.is_vxlan() && state.up && state.port == Some(port) && !ours(&state) {
            let name = message.attributes.iter().find_map(|attribute| match attribute {
                LinkAttribute::IfName(name) => Some(name.clone()),
                _ => None,
            });
            return Some(name.unwrap_or_else(|| format!("ifindex {}", state.index)));
        }
    }
    None
}

/// Removes the anchor device if it carries [`ANCHOR_ALIAS`]; returns whether it did.
pub async fn remove(handle: &Handle) -> anyhow::Result<bool> {
    let removed = remove_owned_device(handle, ANCHOR_DEVICE, ANCHOR_ALIAS).await?;
    if removed {
        info!(device = ANCHOR_DEVICE, "removed the VXLAN GRO anchor");
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::plan::{NodePlan, PlannedPeer};

    fn plan(peers: &[(&str, PlannedPeer)]) -> Plan {
        Plan {
            node: NodePlan { name: "n1".into(), addr: "10.0.0.1/24".parse().unwrap(), vtep_mac: None, vtep_addr: None },
            routes: BTreeMap::new(),
            peers: peers.iter().map(|(addr, peer)| (addr.parse().unwrap(), *peer)).collect(),
            cluster_nodes: BTreeSet::new(),
            workloads: BTreeMap::new(),
        }
    }

    #[test]
    fn wanted_only_when_some_peer_runs_vxlan() {
        let vxlan = PlannedPeer { vxlan: true, ipip: false };
        let ipip = PlannedPeer { vxlan: false, ipip: true };
        assert!(!wanted(&plan(&[])));
        assert!(!wanted(&plan(&[("10.0.0.2", ipip)])));
        assert!(wanted(&plan(&[("10.0.0.2", ipip), ("10.0.0.3", vxlan)])));
    }

    #[test]
    fn only_our_external_device_on_the_port_and_address_matches() {
        let local: Ipv4Addr = "10.0.0.1".parse().unwrap();
        let anchor = LinkState {
            kind: Some("vxlan".into()),
            external: true,
            port: Some(4789),
            local: Some(local),
            alias: Some(ANCHOR_ALIAS.into()),
            ..Default::default()
        };
        assert!(matches(&anchor, local, 4789));
        assert!(!matches(&anchor, local, 8472));
        assert!(!matches(&anchor, "10.0.0.9".parse().unwrap(), 4789));
        assert!(!matches(&LinkState { external: false, ..anchor.clone() }, local, 4789));
        assert!(!matches(&LinkState { alias: None, ..anchor.clone() }, local, 4789));
        assert!(!matches(&LinkState { kind: Some("ipip".into()), ..anchor.clone() }, local, 4789));
    }
}
