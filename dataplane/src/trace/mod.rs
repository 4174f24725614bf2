//! `dataplane trace SRC DST`: what the fast path does with one packet on this node.
//!
//! The decision is taken from the LIVE pinned maps by [`predict`], a step-by-step mirror of the
//! kernel programs (`dataplane-ebpf`: `workload.rs`, `uplink.rs`, `nat.rs`, `route.rs`): the
//! workload entry and anti-spoofing, the longest-prefix route, the tunnel MTU, the TTL, VXLAN or
//! IPIP encapsulation with its outer header, SNAT of a new or a tracked flow, reverse NAT,
//! decapsulation, the ARP answer for the pods' gateway, IP options and fragments (left to the
//! kernel, or dropped where the fast path cannot handle them), the flows remembered as packets go
//! into pods (`to_workload`), and every drop with the name of the counter it increments.
//!
//! With `--inject` the packet is built ([`build_packet`]) and run through the program itself with
//! BPF_PROG_TEST_RUN ([`inject`]): the embedded object is loaded with the pinned routes, workloads,
//! peers and node maps, so it sees the live state, but with a fresh stats map (synthetic packets
//! must not move the node's counters) and a private copy of the conntrack map (a SNAT test run
//! creates a flow, which must not reserve a port in the live table). The verdict, the counter it
//! moved and the output headers are then compared with the prediction.

mod inject;
mod packet;
mod predict;
mod probe;
mod report;
#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, fmt, net::Ipv4Addr, path::Path};

use anyhow::{bail, Context as _};
use dataplane_common::{
    net::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS},
    Stat, NODE_MAP, PROG_XDP_UPLINK, WORKLOADS_MAP,
};
use serde::Serialize;

use crate::{backend::xdp::XdpMode, pinned::PinnedMaps};

pub use inject::*;
pub use packet::*;
pub use predict::*;
pub use probe::*;
pub use report::*;

/// Settings of `dataplane trace`.
#[derive(Clone, Debug)]
pub struct TraceOptions {
    /// The packet (ports and ICMP identifiers as given).
    pub probe: Probe,
    /// Where it enters.
    pub origin: Origin,
    /// `--from workload`: the interface it enters by (default: the pod with the source address).
    pub iface: Option<String>,
    /// `--from uplink`: the tunnel it arrives in (default: as the route to the source says).
    pub encap: Option<EncapChoice>,
    /// `--from uplink`: the outer source of a tunnel packet (default: the node owning the source).
    pub outer_src: Option<Ipv4Addr>,
    /// The agent's pin directory.
    pub pin_path: std::path::PathBuf,
    /// Also run the packet through the program.
    pub inject: bool,
}

/// `--encap` of a packet from the uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EncapChoice {
    /// VXLAN.
    Vxlan,
    /// IP-in-IP.
    Ipip,
    /// A plain packet.
    None,
}

/// Everything `dataplane trace` found.
#[derive(Clone, Debug, Serialize)]
pub struct TraceReport {
    /// The packet.
    pub probe: Probe,
    /// Where it enters, resolved.
    pub entry: Entry,
    /// The interface it enters by.
    pub interface: String,
    /// Notes on how the entry was chosen.
    pub notes: Vec<String>,
    /// What the maps say will happen.
    pub prediction: Prediction,
    /// What the program did, with `--inject`.
    pub inject: Option<Injected>,
    /// `--from uplink` with an XDP program on the uplink: what it decides first.
    pub xdp: Option<XdpTrace>,
}

/// The live state under `pin_path`; a missing node map is left empty (the programs then drop).
pub fn read_state(pin_path: &Path) -> anyhow::Result<State> {
    let maps = PinnedMaps::at(pin_path);
    Ok(State {
        node: maps.read_node().ok(),
        routes: maps.read_routes()?,
        workloads: maps.read_workloads()?,
        peers: maps.read_peers()?,
        conntrack: maps.read_conntrack().unwrap_or_default(),
        fragments: maps.read_fragments().unwrap_or_default(),
        now_ns: monotonic_ns(),
    })
}

fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(now.tv_nsec as u64)
}

/// Traces the packet on this node (run it in the node's network namespace).
pub fn run(options: &TraceOptions) -> anyhow::Result<TraceReport> {
    let state = read_state(&options.pin_path)?;
    let interfaces = crate::sys::interfaces()?;
    let name_of = |index: u32| {
        interfaces
            .iter()
            .find(|(_, i)| **i == index)
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| format!("ifindex {index}"))
    };
    let probe = with_origin(options.probe, options.origin);
    let mut notes = Vec::new();
    let uplink_ifindex = state.node.map(|n| n.uplink_ifindex).unwrap_or(0);
    let (entry, ifindex) = match options.origin {
        Origin::Workload => {
            let ifindex = match &options.iface {
                Some(name) => *interfaces
                    .get(name)
                    .with_context(|| format!("--iface {name}: no such interface in this network namespace"))?,
                None => match choose_workload(&state, probe.src) {
                    Some((index, false)) => index,
                    Some((index, true)) => {
                        notes.push(format!(
                            "{} is no pod of this node: traced as sent from {} (choose another with --iface)",
                            probe.src,
                            name_of(index)
                        ));
                        index
                    }
                    None => bail!("{WORKLOADS_MAP} is empty: no workload interface to send from; pass --iface"),
                },
            };
            (Entry::Workload { ifindex }, ifindex)
        }
        Origin::Uplink => {
            let (mut tunnel, mut outer_src) = infer_tunnel(&state.routes, probe.src);
            match options.encap {
                Some(EncapChoice::None) => (tunnel, outer_src) = (None, None),
                Some(EncapChoice::Vxlan) => tunnel = Some(Tunnel::Vxlan),
                Some(EncapChoice::Ipip) => tunnel = Some(Tunnel::Ipip),
                None => {}
            }
            if options.outer_src.is_some() {
                outer_src = options.outer_src;
            }
            if tunnel.is_some() && outer_src.is_none() {
                bail!("{} is in no remote block: pass --outer-src, the node that sends the tunnel packet", probe.src);
            }
            if let (Some(kind), Some(from)) = (tunnel, outer_src) {
                notes.push(format!(
                    "arrives encapsulated in {kind:?} from {from}, as the node owning {} sends it",
                    probe.src
                ));
            }
            (Entry::Uplink { tunnel, outer_src }, uplink_ifindex)
        }
        Origin::Host => (Entry::Host, uplink_ifindex),
        Origin::IntoPod => {
            let ifindex = match &options.iface {
                Some(name) => *interfaces
                    .get(name)
                    .with_context(|| format!("--iface {name}: no such interface in this network namespace"))?,
                None => state
                    .workloads
                    .iter()
                    .find(|(_, w)| w.addr == probe.dst.octets())
                    .map(|(index, _)| *index)
                    .with_context(|| format!("{} is no pod of this node: pass --iface", probe.dst))?,
            };
            (Entry::IntoPod { ifindex }, ifindex)
        }
    };
    let prediction = predict(&probe, &entry, &state);
    let mut inject = if options.inject {
        if ifindex == 0 {
            bail!("{NODE_MAP} names no uplink: the packet has no interface to arrive on");
        }
        let packet = build_packet(&probe, &entry, &state);
        let vxlan_port = state.node.map(|n| n.vxlan_port).unwrap_or(dataplane_common::net::CALICO_VXLAN_PORT);
        Some(inject(&options.pin_path, prediction.program, ifindex, &packet, &prediction, vxlan_port)?)
    } else {
        None
    };
    let mut xdp = None;
    if matches!(entry, Entry::Uplink { .. }) && ifindex != 0 {
        match crate::backend::xdp::observe(ifindex) {
            Ok(Some((mode, _))) => {
                let (drops, stat) = xdp_decision(&prediction);
                let mut trace = XdpTrace { mode, drops, stat, inject: None };
                if options.inject {
                    let packet = build_packet(&probe, &entry, &state);
                    let (code, counters) = inject_xdp(&options.pin_path, &packet)?;
                    let expected = if drops { XDP_DROP } else { XDP_PASS };
                    let moved: Vec<&str> = counters.keys().copied().collect();
                    if let Some(injected) = inject.as_mut() {
                        if code != expected {
                            injected
                                .mismatches
                                .push(format!("{PROG_XDP_UPLINK}: code {expected} expected, it returned {code}"));
                        }
                        if moved != [stat.name()] {
                            injected.mismatches.push(format!(
                                "{PROG_XDP_UPLINK}: counter {} expected, the run moved {moved:?}",
                                stat.name()
                            ));
                        }
                    }
                    trace.inject = Some((code, counters));
                }
                xdp = Some(trace);
            }
            Ok(None) => notes.push(format!("no XDP program on the uplink: {} decides alone", prediction.program)),
            Err(error) => notes.push(format!("the uplink's XDP state cannot be read ({error:#})")),
        }
    }
    Ok(TraceReport { probe, entry, interface: name_of(ifindex), notes, prediction, inject, xdp })
}

/// What the uplink's XDP program decides before `from_uplink` sees the packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct XdpTrace {
    /// How it runs on the uplink.
    #[serde(serialize_with = "serialize_display")]
    pub mode: XdpMode,
    /// Whether it drops the packet (else it passes it on unchanged).
    pub drops: bool,
    /// The counter it moves: the drop reason, or `xdp_passed`.
    #[serde(serialize_with = "serialize_stat")]
    pub stat: Stat,
    /// With `--inject`: the XDP program's return code and the counters its run moved.
    pub inject: Option<(u32, BTreeMap<&'static str, u64>)>,
}

fn serialize_display<S: serde::Serializer, T: fmt::Display>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&value.to_string())
}
