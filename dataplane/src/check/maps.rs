//! The pinned maps against the entries the plan asks for.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use dataplane_common::{
    route_flags, workload_flags, Ipv4Bytes, NodeConfig, Peer, Route, Workload, NODE_MAP, PEERS_MAP, ROUTES_MAP,
    WORKLOADS_MAP,
};
use ipnet::Ipv4Net;

use crate::{
    backend::{
        diff::{diff, Changes},
        entries::{MapEntries, RouteKey},
    },
    model::MacAddr,
    routes,
};

use super::*;

pub(super) fn encap_name(flags: u32) -> &'static str {
    if flags & route_flags::ENCAP_VXLAN != 0 {
        "VXLAN"
    } else if flags & route_flags::ENCAP_IPIP != 0 {
        "IPIP"
    } else {
        "none"
    }
}

/// A routes map key for `prefix`.
pub fn route_key(prefix: &Ipv4Net) -> RouteKey {
    (u32::from(prefix.prefix_len()), prefix.network().octets())
}

/// What the pinned maps hold; a map that could not be read carries the reason.
#[derive(Debug)]
pub struct ObservedMaps {
    /// `node_v1`, slot 0.
    pub node: Result<NodeConfig, String>,
    /// `routes_v1`.
    pub routes: Result<BTreeMap<RouteKey, Route>, String>,
    /// `workloads_v1`.
    pub workloads: Result<BTreeMap<u32, Workload>, String>,
    /// `peers_v1`.
    pub peers: Result<BTreeMap<Ipv4Bytes, Peer>, String>,
}

/// Compares the pinned maps with the entries the datastore implies: every missing, extra and
/// different entry is a finding. Route keys in `skip` were already reported by
/// [`check_remote_blocks`]. `names` gives interface names by ifindex, for the messages.
pub fn diff_maps(
    expected: &MapEntries,
    observed: &ObservedMaps,
    skip: &BTreeSet<RouteKey>,
    names: &BTreeMap<u32, String>,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let unreadable = |map: &str, error: &String| {
        Finding::new(
            "maps",
            map.to_owned(),
            format!("the pinned map cannot be read: {error}"),
            "start the agent on this node (`dataplane run`), or pass the --pin-path it uses",
        )
    };

    match &observed.node {
        Err(error) => findings.push(unreadable(NODE_MAP, error)),
        Ok(node) => {
            let differences = node_differences(&expected.node, node);
            if !differences.is_empty() {
                findings.push(Finding::new(
                    "maps",
                    NODE_MAP,
                    format!("this node's settings differ from the datastore: {}", differences.join("; ")),
                    FIX_AGENT,
                ));
            }
        }
    }

    match &observed.routes {
        Err(error) => findings.push(unreadable(ROUTES_MAP, error)),
        Ok(routes) => {
            let text = |key: &RouteKey, route: &Route| route_text(&prefix_of(key), route, names);
            findings.extend(entry_findings(
                &expected.routes,
                routes,
                |key| skip.contains(key),
                |key| format!("{ROUTES_MAP} {}", prefix_of(key)),
                |key, difference| match difference {
                    Difference::Missing { want } => format!("missing: the datastore says {}", text(key, want)),
                    Difference::Differs { have, want } => {
                        format!("holds {}, the datastore says {}", text(key, have), text(key, want))
                    }
                    Difference::Extra { have } => {
                        format!("extra: holds {}, which the datastore does not have", text(key, have))
                    }
                },
            ));
        }
    }

    match &observed.workloads {
        Err(error) => findings.push(unreadable(WORKLOADS_MAP, error)),
        Ok(workloads) => findings.extend(entry_findings(
            &expected.workloads,
            workloads,
            |_| false,
            |index| match names.get(index) {
                Some(name) => format!("{WORKLOADS_MAP} ifindex {index} ({name})"),
                None => format!("{WORKLOADS_MAP} ifindex {index} (no such interface)"),
            },
            |_, difference| match difference {
                Difference::Missing { want } => format!(
                    "missing: the datastore says {}; its packets are dropped as drop_unknown_workload",
                    workload_text(want)
                ),
                Difference::Differs { have, want } => {
                    format!("holds {}, the datastore says {}", workload_text(have), workload_text(want))
                }
                Difference::Extra { have } => {
                    format!("extra: holds {}, which is no workload of this node", workload_text(have))
                }
            },
        )),
    }

    match &observed.peers {
        Err(error) => findings.push(unreadable(PEERS_MAP, error)),
        Ok(peers) => findings.extend(entry_findings(
            &expected.peers,
            peers,
            |_| false,
            |addr| format!("{PEERS_MAP} {}", Ipv4Addr::from(*addr)),
            |_, difference| match difference {
                Difference::Missing { want } => format!(
                    "missing: tunnel packets from this peer ({}) are dropped as drop_unknown_peer",
                    peer_text(want)
                ),
                Difference::Differs { have, want } => {
                    format!("accepts {}, the datastore says {}", peer_text(have), peer_text(want))
                }
                Difference::Extra { have } => {
                    format!("extra: accepts {} from an address that is no tunnelling peer", peer_text(have))
                }
            },
        )),
    }
    findings
}

/// How one map entry differs from what the datastore implies.
pub(super) enum Difference<'a, V> {
    /// The datastore implies the entry, the map lacks it.
    Missing { want: &'a V },
    /// The map holds the key with another value.
    Differs { have: &'a V, want: &'a V },
    /// The map holds an entry the datastore does not imply.
    Extra { have: &'a V },
}

/// One finding per key of `want` that `have` lacks or holds differently (in key order), then one
/// per key of `have` that `want` lacks: the agent's own [`diff`], in words. Keys for which `skip`
/// holds are not compared; `object` names the entry and `say` words the difference.
pub(super) fn entry_findings<K: Ord + Clone, V: PartialEq + Clone>(
    want: &BTreeMap<K, V>,
    have: &BTreeMap<K, V>,
    skip: impl Fn(&K) -> bool,
    object: impl Fn(&K) -> String,
    say: impl Fn(&K, Difference<'_, V>) -> String,
) -> Vec<Finding> {
    let finding = |key: &K, difference| Finding::new("maps", object(key), say(key, difference), FIX_AGENT);
    let Changes { upserts, removals } = diff(have, want);
    let mut findings = Vec::new();
    for (key, wanted) in upserts.iter().filter(|(key, _)| !skip(key)) {
        findings.push(match have.get(key) {
            None => finding(key, Difference::Missing { want: wanted }),
            Some(held) => finding(key, Difference::Differs { have: held, want: wanted }),
        });
    }
    for key in removals.iter().filter(|key| !skip(key)) {
        if let Some(held) = have.get(key) {
            findings.push(finding(key, Difference::Extra { have: held }));
        }
    }
    findings
}

/// The fields of the node map that differ, in words. The SNAT port range and the conntrack
/// timeouts are the agent's own settings (`--nat-port-range`, `--conntrack-timeouts`), not the
/// datastore's: they are only checked for sanity.
pub(super) fn node_differences(want: &NodeConfig, have: &NodeConfig) -> Vec<String> {
    let mut out = Vec::new();
    if have.addr != want.addr {
        out.push(format!("addr is {}, should be {}", Ipv4Addr::from(have.addr), Ipv4Addr::from(want.addr)));
    }
    if have.uplink_ifindex != want.uplink_ifindex {
        out.push(format!("uplink_ifindex is {}, should be {}", have.uplink_ifindex, want.uplink_ifindex));
    }
    if have.uplink_mtu != want.uplink_mtu {
        out.push(format!("uplink_mtu is {}, should be {}", have.uplink_mtu, want.uplink_mtu));
    }
    if have.vni != want.vni {
        out.push(format!("vni is {}, should be {}", have.vni, want.vni));
    }
    if have.vxlan_port != want.vxlan_port {
        out.push(format!("vxlan_port is {}, should be {}", have.vxlan_port, want.vxlan_port));
    }
    if have.vtep_mac != want.vtep_mac {
        out.push(format!("vtep_mac is {}, should be {}", MacAddr(have.vtep_mac), MacAddr(want.vtep_mac)));
    }
    if have.nat_port_min == 0 || have.nat_port_min > have.nat_port_max {
        out.push(format!("the SNAT port range {}-{} is empty", have.nat_port_min, have.nat_port_max));
    }
    let t = &have.timeouts;
    if [t.tcp_new_s, t.tcp_established_s, t.tcp_closing_s, t.udp_s, t.icmp_s].contains(&0) {
        out.push(format!("a conntrack timeout is 0 s, so translated flows expire at once: {t:?}"));
    }
    out
}

pub(super) fn prefix_of(key: &RouteKey) -> Ipv4Net {
    // Keys come from the map (prefix length <= 32 by the trie's rules) or from a plan.
    Ipv4Net::new(Ipv4Addr::from(key.1), key.0.min(32) as u8).unwrap_or_else(|_| Ipv4Net::from(Ipv4Addr::from(key.1)))
}

/// A route entry in words, as `dataplane routes` shows it.
pub(super) fn route_text(prefix: &Ipv4Net, route: &Route, names: &BTreeMap<u32, String>) -> String {
    let row = routes::describe(*prefix, route);
    let mut text = row.kind.to_owned();
    if let Some(addr) = row.node_addr {
        text.push_str(&format!(" via {addr}"));
    }
    if !row.encap.is_empty() {
        text.push_str(&format!(" encap {}", row.encap));
    }
    if let Some(index) = row.ifindex {
        match names.get(&index) {
            Some(name) => text.push_str(&format!(" ifindex {index} ({name})")),
            None => text.push_str(&format!(" ifindex {index} (no such interface)")),
        }
    }
    if let Some(mac) = row.mac {
        text.push_str(&format!(" mac {mac}"));
    }
    if row.nat_outgoing {
        text.push_str(" natOutgoing");
    }
    if !row.in_pool {
        text.push_str(" (outside the pools)");
    }
    text
}

/// A workloads map entry in words: the pod's address and MAC, and `natOutgoing` when its pool
/// has it (the flag the hot path reads to decide SNAT).
pub fn workload_text(workload: &Workload) -> String {
    let mut text = format!("pod {} mac {}", Ipv4Addr::from(workload.addr), MacAddr(workload.mac));
    if workload.flags & workload_flags::NAT_OUTGOING != 0 {
        text.push_str(" natOutgoing");
    }
    text
}

pub(super) fn peer_text(peer: &Peer) -> String {
    let mut kinds = Vec::new();
    if peer.flags & dataplane_common::peer_flags::VXLAN != 0 {
        kinds.push("VXLAN");
    }
    if peer.flags & dataplane_common::peer_flags::IPIP != 0 {
        kinds.push("IPIP");
    }
    if kinds.is_empty() {
        "nothing".to_owned()
    } else {
        kinds.join(" and ")
    }
}
