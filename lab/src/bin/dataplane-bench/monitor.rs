//! What `dataplane monitor` costs the programs per packet: the same drop (and a passed packet)
//! through the programs loaded without the hook, with no reader's lease, with a lease that ran
//! out (a killed reader), and while a reader holds it, beside the empty program of the same type
//! in the same rounds.
//!
//! Each round is one BPF_PROG_TEST_RUN call of [`MONITOR_REPEAT`] runs (the programs do not
//! change these packets); between calls the events ring buffer is drained, as a reader would, so
//! that every emitting run writes an event, which the monitor's counters prove.

use std::{fmt::Write as _, os::fd::AsFd as _};

use anyhow::{ensure, Context as _};
use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use dataplane_common::net::{XDP_DROP, XDP_PASS};
use dataplane_common::{
    monitor::{
        lease_flags, MonitorCount, MONITOR_COUNTS_MAP, MONITOR_EVENTS_BYTES, MONITOR_EVENTS_MAP, MONITOR_LEASE_SECTION,
    },
    net::{GATEWAY_MAC, IPPROTO_UDP},
    MonitorEvent, MonitorLease, PROG_FROM_WORKLOAD, PROG_XDP_UPLINK,
};
use dataplane_tests::{
    packet::{fixture::*, Packet},
    program::{monotonic_ns, Node, TC_ACT_SHOT},
};

use crate::{
    packet::{
        from_external, program_fd, sized, test_run, vxlan_from_stranger, xdp_fd, EmptyProgram, OUT_HEADROOM, SMALL,
    },
    stats::{median, ratio},
};

/// Runs per call: fewer than the ring buffer holds, so a drained buffer never fills in a call.
const MONITOR_REPEAT: u32 = 4096;
const _: () = assert!((MONITOR_REPEAT as usize) * (size_of::<MonitorEvent>() + 8) < MONITOR_EVENTS_BYTES as usize);

/// The lease during a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lease {
    /// The same programs loaded without the hook (`MONITOR_HOOK_GLOBAL` = 0): the baseline.
    NoHook,
    /// No reader (the lease is 0, as a reader leaves it when it stops).
    None,
    /// A reader was killed: its deadline has passed (the programs forget such a lease at the first
    /// packet, so of a call's runs only the first meets it).
    Expired,
    /// A reader of drops holds it.
    Drops,
    /// A reader of every decision (`--all`) holds it.
    All,
}

impl Lease {
    fn describe(self) -> &'static str {
        match self {
            Lease::NoHook => "programs without the hook",
            Lease::None => "no reader",
            Lease::Expired => "lease ran out (killed reader)",
            Lease::Drops => "reader of drops",
            Lease::All => "reader of all (--all)",
        }
    }

    fn value(self) -> MonitorLease {
        let far = monotonic_ns() + 3_600_000_000_000;
        match self {
            Lease::NoHook | Lease::None => MonitorLease::default(),
            Lease::Expired => MonitorLease { until_ns: 1, reader_pid: 1, flags: 0 },
            Lease::Drops => MonitorLease { until_ns: far, reader_pid: 1, flags: 0 },
            Lease::All => MonitorLease { until_ns: far, reader_pid: 1, flags: lease_flags::ALL_DECISIONS },
        }
    }

    fn emits(self, drop: bool) -> bool {
        match self {
            Lease::NoHook | Lease::None | Lease::Expired => false,
            Lease::Drops => drop,
            Lease::All => true,
        }
    }
}

/// The per-packet cost of one path under one lease.
#[derive(Clone, Debug)]
pub struct MonitorCost {
    /// The packet and the decision.
    pub path: &'static str,
    /// The program.
    pub program: &'static str,
    /// The lease.
    pub lease: Lease,
    /// Median ns per run.
    pub ns: f64,
    /// The empty program of the same type, same frame, same rounds.
    pub empty_ns: f64,
}

/// Measures each path under each lease.
pub fn monitor_paths(rounds: usize) -> anyhow::Result<Vec<MonitorCost>> {
    let mut node = Node::new("node-1");
    let take = |node: &mut Node, name: &str| node.ebpf.take_map(name).with_context(|| format!("no map {name}"));
    let mut ring = RingBuf::try_from(take(&mut node, MONITOR_EVENTS_MAP)?)?;
    let mut leases: Array<MapData, MonitorLease> = Array::try_from(take(&mut node, MONITOR_LEASE_SECTION)?)?;
    let counts: PerCpuArray<MapData, u64> = PerCpuArray::try_from(take(&mut node, MONITOR_COUNTS_MAP)?)?;
    let mut bare = Node::without_monitor_hook("node-1");
    // A reader's lease in the hook-less programs' own maps: were the hook there, it would emit.
    let mut bare_leases: Array<MapData, MonitorLease> = Array::try_from(take(&mut bare, MONITOR_LEASE_SECTION)?)?;
    bare_leases.set(0, Lease::All.value(), 0)?;
    let bare_counts: PerCpuArray<MapData, u64> = PerCpuArray::try_from(take(&mut bare, MONITOR_COUNTS_MAP)?)?;
    let count = |slot: MonitorCount| -> anyhow::Result<u64> { Ok(counts.get(&slot.index(), 0)?.iter().sum()) };
    let empty_tc = EmptyProgram::load()?;
    let empty_xdp = EmptyProgram::load_xdp()?;
    let spoofed = Packet::eth(POD_A_MAC, GATEWAY_MAC)
        .ipv4(POD_B, REMOTE_POD, IPPROTO_UDP)
        .udp(40000, 5201)
        .payload(&[0; 18])
        .finish();
    type Case = (&'static str, &'static str, Vec<u8>, u32, bool);
    let cases: Vec<Case> = vec![
        ("drop: a spoofed source", PROG_FROM_WORKLOAD, spoofed, TC_ACT_SHOT, true),
        ("drop: VXLAN from a non-peer", PROG_XDP_UPLINK, sized(114, vxlan_from_stranger), XDP_DROP, true),
        ("pass: not a tunnel packet", PROG_XDP_UPLINK, sized(SMALL, |p| from_external(6000, p)), XDP_PASS, false),
    ];
    let mut results = Vec::new();
    for (path, program_name, packet, verdict, drop) in cases {
        let is_xdp = program_name == PROG_XDP_UPLINK;
        let empty = if is_xdp { empty_xdp.fd.as_fd() } else { empty_tc.fd.as_fd() };
        let leases_here: &[Lease] = if drop {
            &[Lease::NoHook, Lease::None, Lease::Expired, Lease::Drops]
        } else {
            &[Lease::NoHook, Lease::None, Lease::Drops, Lease::All]
        };
        // Per lease: runs, the empty program's runs, events emitted and lost. The leases take turns
        // within each round, so that a busy neighbour slows them alike.
        let mut measured: Vec<(Vec<f64>, Vec<f64>, u64, u64)> = vec![Default::default(); leases_here.len()];
        let mut out = vec![0u8; packet.len() + OUT_HEADROOM];
        for _ in 0..rounds {
            for (&lease, (runs, empty_runs, emitted, lost)) in leases_here.iter().zip(&mut measured) {
                let loaded = if lease == Lease::NoHook { &bare } else { &node };
                let program = if is_xdp { xdp_fd(loaded)? } else { program_fd(loaded, program_name)? };
                // Every call, since the programs forget a lease that ran out at its first packet.
                leases.set(0, lease.value(), 0)?;
                let (emitted_before, lost_before) = (count(MonitorCount::Emitted)?, count(MonitorCount::Lost)?);
                let (_, ns) = test_run(empty, &packet, &mut out, MONITOR_REPEAT).context("empty program loop")?;
                empty_runs.push(f64::from(ns));
                let (got, ns) =
                    test_run(program, &packet, &mut out, MONITOR_REPEAT).with_context(|| path.to_owned())?;
                ensure!(got == verdict, "{path} ({}): verdict {got}, expected {verdict}", lease.describe());
                runs.push(f64::from(ns));
                *emitted += count(MonitorCount::Emitted)? - emitted_before;
                *lost += count(MonitorCount::Lost)? - lost_before;
                while ring.next().is_some() {}
            }
        }
        for (&lease, (runs, empty_runs, emitted, lost)) in leases_here.iter().zip(measured) {
            let expected = if lease.emits(drop) { rounds as u64 * u64::from(MONITOR_REPEAT) } else { 0 };
            ensure!(
                emitted == expected && lost == 0,
                "{path} ({}): {emitted} events emitted and {lost} lost, expected {expected} and none lost",
                lease.describe()
            );
            let cost =
                MonitorCost { path, program: program_name, lease, ns: median(&runs), empty_ns: median(&empty_runs) };
            println!("  {path}, {}: {:.1} ns per run, empty {:.1} ns", lease.describe(), cost.ns, cost.empty_ns);
            results.push(cost);
        }
    }
    let bare_emitted: u64 = bare_counts.get(&MonitorCount::Emitted.index(), 0)?.iter().sum();
    ensure!(bare_emitted == 0, "the programs without the hook emitted {bare_emitted} events under a reader's lease");
    leases.set(0, MonitorLease::default(), 0)?;
    Ok(results)
}

/// The monitor's cost table: each row beside its empty program and beside the same path through
/// the programs without the hook.
pub fn monitor_table(costs: &[MonitorCost]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| packet and decision | program | monitor | ns/packet | empty (ns) | / empty | / without the hook |"
    );
    let _ = writeln!(out, "|---|---|---|---:|---:|---:|---:|");
    for c in costs {
        let bare = costs.iter().find(|n| n.path == c.path && n.lease == Lease::NoHook);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1} | {:.1} | **{:.2}** | {:.2} |",
            c.path,
            c.program,
            c.lease.describe(),
            c.ns,
            c.empty_ns,
            ratio(c.ns, c.empty_ns),
            bare.map_or(f64::NAN, |n| ratio(c.ns, n.ns))
        );
    }
    out
}
