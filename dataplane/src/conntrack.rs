//! `dataplane conntrack` (alias `nat`): the live natOutgoing translations, from the pinned map.

use std::{net::Ipv4Addr, path::Path};

use anyhow::Context as _;
use aya::maps::{HashMap, MapData};
use dataplane_common::{
    flow_state,
    net::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    FlowKey, FlowTimeouts, NatFlow, FLOW_OUTBOUND, FLOW_TO_POD,
};
use serde::Serialize;

use crate::pinned::PinnedMaps;

/// One translated flow as an operator reads it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Translation {
    /// `tcp`, `udp`, `icmp` or the protocol number.
    pub protocol: String,
    /// The pod's address.
    pub pod: Ipv4Addr,
    /// The pod's port (ICMP: echo identifier).
    pub pod_port: u16,
    /// The address the pod is seen as.
    pub nat_addr: Ipv4Addr,
    /// The translated port (ICMP: identifier).
    pub nat_port: u16,
    /// The peer outside the cluster.
    pub peer: Ipv4Addr,
    /// The peer's port (0 for ICMP).
    pub peer_port: u16,
    /// `new`, `established` or `closing`.
    pub state: &'static str,
    /// Seconds since the flow was created.
    pub age_s: u64,
    /// Seconds since its last packet.
    pub idle_s: u64,
}

/// Parses `--conntrack-timeouts`: comma-separated `NAME=SECONDS` with NAME one of tcp-new,
/// tcp-established, tcp-closing, udp, icmp; unnamed ones keep their defaults.
pub fn parse_timeouts(s: &str) -> Result<FlowTimeouts, String> {
    let mut timeouts = FlowTimeouts::DEFAULT;
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let usage =
            || format!("{item:?}: expected NAME=SECONDS with NAME tcp-new, tcp-established, tcp-closing, udp or icmp");
        let (name, seconds) = item.split_once('=').ok_or_else(usage)?;
        let seconds: u32 = seconds.trim().trim_end_matches('s').parse().map_err(|_| usage())?;
        if seconds == 0 {
            return Err(format!("{item:?}: a timeout of 0 s would expire every flow at once"));
        }
        let slot = match name.trim() {
            "tcp-new" => &mut timeouts.tcp_new_s,
            "tcp-established" => &mut timeouts.tcp_established_s,
            "tcp-closing" => &mut timeouts.tcp_closing_s,
            "udp" => &mut timeouts.udp_s,
            "icmp" => &mut timeouts.icmp_s,
            _ => return Err(usage()),
        };
        *slot = seconds;
    }
    Ok(timeouts)
}

/// Turns the outbound entries of the map into translations, ordered by pod then peer.
pub fn translations(entries: impl IntoIterator<Item = (FlowKey, NatFlow)>, now_ns: u64) -> Vec<Translation> {
    let mut out: Vec<Translation> = entries
        .into_iter()
        .filter(|(key, _)| key.direction == FLOW_OUTBOUND)
        .map(|(_, flow)| Translation {
            protocol: protocol_name(flow.protocol),
            pod: Ipv4Addr::from(flow.pod_addr),
            pod_port: flow.pod_port,
            nat_addr: Ipv4Addr::from(flow.nat_addr),
            nat_port: flow.nat_port,
            peer: Ipv4Addr::from(flow.peer_addr),
            peer_port: flow.peer_port,
            state: match flow.state {
                flow_state::NEW => "new",
                flow_state::ESTABLISHED => "established",
                flow_state::CLOSING => "closing",
                _ => "unknown",
            },
            age_s: now_ns.saturating_sub(flow.created_ns) / 1_000_000_000,
            idle_s: now_ns.saturating_sub(flow.last_seen_ns) / 1_000_000_000,
        })
        .collect();
    out.sort_by_key(|t| (t.pod, t.pod_port, t.peer, t.peer_port));
    out
}

/// An IP protocol's name (`tcp`, `udp`, `icmp`), or its number.
pub fn protocol_name(protocol: u8) -> String {
    match protocol {
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        IPPROTO_ICMP => "icmp".into(),
        other => other.to_string(),
    }
}

/// Reads the pinned conntrack map under `pin_path`.
pub fn read(pin_path: &Path) -> anyhow::Result<Vec<Translation>> {
    let entries = PinnedMaps::at(pin_path).read_conntrack()?;
    Ok(translations(entries, monotonic_ns()))
}

/// The clock the kernel programs stamp flows with (`bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(now.tv_nsec as u64)
}

/// The keys to delete: both entries of every expired flow, and inbound entries whose outbound
/// entry is gone. Pure: the sweeper reads the map, asks this, and deletes.
pub fn stale_keys(entries: &[(FlowKey, NatFlow)], now_ns: u64, timeouts: &FlowTimeouts) -> Vec<FlowKey> {
    let outbound: std::collections::BTreeMap<FlowKey, &NatFlow> =
        entries.iter().filter(|(k, _)| k.direction == FLOW_OUTBOUND).map(|(k, v)| (*k, v)).collect();
    let mut stale = Vec::new();
    for (key, flow) in entries {
        let dead = if key.direction == FLOW_OUTBOUND || key.direction == FLOW_TO_POD {
            flow.expired_with(now_ns, timeouts)
        } else {
            // Age lives on the outbound entry.
            outbound.get(&flow.outbound_key()).is_none_or(|owner| owner.expired_with(now_ns, timeouts))
        };
        if dead {
            stale.push(*key);
        }
    }
    stale
}

/// Deletes expired flows from the conntrack map; returns how many entries went.
pub fn sweep(map: &mut HashMap<&mut MapData, FlowKey, NatFlow>, timeouts: &FlowTimeouts) -> anyhow::Result<usize> {
    let entries = map.iter().collect::<Result<Vec<_>, _>>().context("reading the conntrack map")?;
    let stale = stale_keys(&entries, monotonic_ns(), timeouts);
    let mut removed = 0;
    for key in &stale {
        // A flow the kernel removed meanwhile is fine.
        if map.remove(key).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// The translations as an aligned table.
pub fn table(translations: &[Translation]) -> String {
    let mut out = format!(
        "{:<5} {:<22} {:<22} {:<22} {:<12} {:>7} {:>7}\n",
        "PROTO", "POD", "TRANSLATED", "PEER", "STATE", "AGE(s)", "IDLE(s)"
    );
    for t in translations {
        out.push_str(&format!(
            "{:<5} {:<22} {:<22} {:<22} {:<12} {:>7} {:>7}\n",
            t.protocol,
            format!("{}:{}", t.pod, t.pod_port),
            format!("{}:{}", t.nat_addr, t.nat_port),
            format!("{}:{}", t.peer, t.peer_port),
            t.state,
            t.age_s,
            t.idle_s
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use dataplane_common::FLOW_INBOUND;

    use super::*;

    fn flow() -> NatFlow {
        NatFlow {
            created_ns: 1_000_000_000,
            last_seen_ns: 9_000_000_000,
            pod_addr: [10, 244, 1, 2],
            peer_addr: [192, 0, 2, 10],
            nat_addr: [10, 100, 0, 11],
            pod_port: 5555,
            peer_port: 53,
            nat_port: 40001,
            protocol: IPPROTO_UDP,
            state: flow_state::ESTABLISHED,
            _pad: [0; 4],
        }
    }

    #[test]
    fn one_line_per_flow_from_its_outbound_entry() {
        let outbound = FlowKey { direction: FLOW_OUTBOUND, ..FlowKey::default() };
        let inbound = FlowKey { direction: FLOW_INBOUND, ..FlowKey::default() };
        let list = translations([(outbound, flow()), (inbound, flow())], 11_000_000_000);
        assert_eq!(list.len(), 1);
        let t = &list[0];
        assert_eq!((t.protocol.as_str(), t.pod_port, t.nat_port, t.peer_port), ("udp", 5555, 40001, 53));
        assert_eq!((t.state, t.age_s, t.idle_s), ("established", 10, 2));
        let text = table(&list);
        assert!(
            text.contains("10.244.1.2:5555") && text.contains("10.100.0.11:40001") && text.contains("192.0.2.10:53"),
            "{text}"
        );
    }

    #[test]
    fn expired_flows_and_orphans_are_stale_live_ones_are_not() {
        let live = flow();
        let mut old = flow();
        old.pod_port = 6000;
        old.nat_port = 6000;
        old.last_seen_ns = 0;
        old.protocol = IPPROTO_UDP;
        let mut orphan = flow();
        orphan.pod_port = 7000;
        orphan.nat_port = 7000;
        let entries = vec![
            (live.outbound_key(), live),
            (live.inbound_key(), live),
            (old.outbound_key(), old),
            (old.inbound_key(), old),
            (orphan.inbound_key(), orphan),
        ];
        // 61 s after `old` was last seen: past UDP's 60 s, while `live` was seen 52 s ago.
        let now = 61_000_000_000;
        let stale = stale_keys(&entries, now, &FlowTimeouts::DEFAULT);
        assert_eq!(stale.len(), 3, "{stale:?}");
        assert!(stale.contains(&old.outbound_key()) && stale.contains(&old.inbound_key()));
        assert!(stale.contains(&orphan.inbound_key()));
    }

    #[test]
    fn timeouts_parse_by_name_and_keep_the_rest() {
        let t = parse_timeouts("udp=2, icmp=5s").unwrap();
        assert_eq!((t.udp_s, t.icmp_s), (2, 5));
        assert_eq!(t.tcp_established_s, FlowTimeouts::DEFAULT.tcp_established_s);
        assert!(parse_timeouts("sctp=3").unwrap_err().contains("NAME=SECONDS"));
        assert!(parse_timeouts("udp=0").is_err());
        assert_eq!(parse_timeouts("").unwrap(), FlowTimeouts::DEFAULT);
    }

    #[test]
    fn json_names_the_fields() {
        let outbound = FlowKey { direction: FLOW_OUTBOUND, ..FlowKey::default() };
        let value = serde_json::to_value(translations([(outbound, flow())], 11_000_000_000)).unwrap();
        assert_eq!(value[0]["nat_port"], 40001);
        assert_eq!(value[0]["pod"], "10.244.1.2");
    }
}
