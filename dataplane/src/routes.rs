//! `dataplane routes`: the routes map as an operator reads it, like `calico-bpf routes dump`.

use std::{net::Ipv4Addr, path::Path};

use anyhow::Context as _;
use dataplane_common::{route_flags, route_kind, Route};
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::{model::MacAddr, pinned::PinnedMaps};

/// One entry of the routes map, in words.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteRow {
    /// The destination prefix.
    pub prefix: Ipv4Net,
    /// `local workload`, `local block (blackhole)`, `remote block`, `pool`, ...
    pub kind: &'static str,
    /// `vxlan`, `ipip` or `none` for remote blocks; empty otherwise.
    pub encap: &'static str,
    /// The pool of the prefix has natOutgoing.
    pub nat_outgoing: bool,
    /// The prefix is inside an IP pool.
    pub in_pool: bool,
    /// Remote block: the owning node's address.
    pub node_addr: Option<Ipv4Addr>,
    /// Local workload: its host-side ifindex.
    pub ifindex: Option<u32>,
    /// Local workload: the pod's MAC; remote VXLAN block: the peer's VTEP MAC.
    pub mac: Option<String>,
}

/// Describes one map entry.
pub fn describe(prefix: Ipv4Net, route: &Route) -> RouteRow {
    let kind = match route.kind {
        route_kind::LOCAL_WORKLOAD => "local workload",
        route_kind::LOCAL_BLOCK => "local block (blackhole)",
        route_kind::REMOTE_BLOCK => "remote block",
        route_kind::POOL => "pool",
        route_kind::LOCAL_HOST => "local host",
        route_kind::REMOTE_HOST => "remote host",
        _ => "unknown",
    };
    let remote = route.kind == route_kind::REMOTE_BLOCK;
    let encap = if !remote {
        ""
    } else if route.flags & route_flags::ENCAP_VXLAN != 0 {
        "vxlan"
    } else if route.flags & route_flags::ENCAP_IPIP != 0 {
        "ipip"
    } else {
        "none"
    };
    RouteRow {
        prefix,
        kind,
        encap,
        nat_outgoing: route.flags & route_flags::NAT_OUTGOING != 0,
        in_pool: route.flags & route_flags::IN_POOL != 0,
        node_addr: remote.then(|| Ipv4Addr::from(route.node_addr)),
        ifindex: (route.kind == route_kind::LOCAL_WORKLOAD).then_some(route.ifindex),
        mac: (route.mac != [0; 6]).then(|| MacAddr(route.mac).to_string()),
    }
}

/// Reads the pinned routes map under `pin_path`, most specific prefixes last within a network.
pub fn read(pin_path: &Path) -> anyhow::Result<Vec<RouteRow>> {
    let trie = PinnedMaps::at(pin_path).routes()?;
    let mut rows = Vec::new();
    for entry in trie.iter() {
        let (key, route) = entry.context("reading the routes map")?;
        let prefix = Ipv4Net::new(Ipv4Addr::from(key.data()), key.prefix_len() as u8)
            .with_context(|| format!("bad prefix length {} in the routes map", key.prefix_len()))?;
        rows.push(describe(prefix, &route));
    }
    rows.sort_by_key(|row| (row.prefix.network(), row.prefix.prefix_len()));
    Ok(rows)
}

/// The rows as an aligned table.
pub fn table(rows: &[RouteRow]) -> String {
    let mut out = format!(
        "{:<18} {:<24} {:<6} {:<4} {:<15} {:<8} {}\n",
        "PREFIX", "WHAT", "ENCAP", "NAT", "NODE", "IFINDEX", "MAC"
    );
    for row in rows {
        out.push_str(&format!(
            "{:<18} {:<24} {:<6} {:<4} {:<15} {:<8} {}\n",
            row.prefix.to_string(),
            row.kind,
            row.encap,
            if row.nat_outgoing { "yes" } else { "" },
            row.node_addr.map(|a| a.to_string()).unwrap_or_default(),
            row.ifindex.map(|i| i.to_string()).unwrap_or_default(),
            row.mac.clone().unwrap_or_default(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_vxlan_block_reads_as_such() {
        let route = Route {
            kind: route_kind::REMOTE_BLOCK,
            flags: route_flags::ENCAP_VXLAN | route_flags::IN_POOL | route_flags::NAT_OUTGOING,
            node_addr: [10, 100, 0, 12],
            mac: [0x66, 0xd0, 0, 0, 0, 2],
            ..Route::default()
        };
        let row = describe("10.244.2.0/26".parse().unwrap(), &route);
        assert_eq!((row.kind, row.encap, row.nat_outgoing), ("remote block", "vxlan", true));
        assert_eq!(row.node_addr, Some(Ipv4Addr::new(10, 100, 0, 12)));
        assert_eq!(row.mac.as_deref(), Some("66:d0:00:00:00:02"));
        let text = table(&[row]);
        assert!(text.contains("10.244.2.0/26") && text.contains("remote block") && text.contains("vxlan"), "{text}");
    }

    #[test]
    fn a_local_workload_shows_its_interface_and_mac() {
        let route = Route {
            kind: route_kind::LOCAL_WORKLOAD,
            ifindex: 7,
            mac: [0x0a, 0x58, 10, 244, 1, 2],
            ..Route::default()
        };
        let row = describe("10.244.1.2/32".parse().unwrap(), &route);
        assert_eq!((row.kind, row.encap, row.ifindex), ("local workload", "", Some(7)));
        assert_eq!(row.node_addr, None);
        assert_eq!(row.mac.as_deref(), Some("0a:58:0a:f4:01:02"));
        assert!(table(&[row]).contains("0a:58:0a:f4:01:02"));
    }
}
