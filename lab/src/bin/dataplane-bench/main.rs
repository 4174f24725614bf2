//! `dataplane-bench` (run by `cargo xtask bench`): the project measured against its baselines in
//! one run, in parts, each printed as it runs:
//!
//! 1. `packet`: per-packet cost of every decision path with BPF_PROG_TEST_RUN, beside an empty TC
//!    program, and of the uplink's XDP program beside an empty XDP program ([`packet`]), and what
//!    `dataplane monitor` costs them with and without a reader ([`monitor`]); `flood`: a non-peer
//!    VXLAN flood over a veth dropped at XDP and at TC ([`packet::non_peer_flood`]).
//! 2. `lpm`: the VXLAN encap path's cost as the routes map grows to a million prefixes.
//! 3. `control`: the agent on a real etcd programming N blocks from an empty start, one change
//!    and a burst from the etcd put to the pinned map, and its peak memory ([`control`]).
//! 4. `throughput`: iperf3 in network-namespace labs through the fast path and its baselines
//!    ([`throughput`]).
//!
//! Every figure is a median over repeated runs beside a baseline measured in the same run. The
//! tables (Markdown, ready for BENCHMARKS.md) and SVG charts go to `results/<UTC timestamp>/`
//! under the workspace; the report is rewritten after each part, so a failing part keeps the
//! figures of the ones before it.

mod control;
mod monitor;
mod packet;
mod report;
mod stats;
mod throughput;

use std::{
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{bail, Context as _};
use clap::Parser;

use crate::{report::Results, stats::loadavg};

/// Options of `dataplane-bench`.
#[derive(Parser)]
#[command(name = "dataplane-bench", about = "Per-packet cost, LPM and control-plane scale, and lab throughput")]
struct Options {
    /// The agent binary to run in the labs.
    #[arg(long)]
    agent: PathBuf,
    /// The agent binary is a release build (the control-plane figures say which build they timed).
    #[arg(long)]
    agent_release: bool,
    /// The workspace root, where examples/ is and results/ goes.
    #[arg(long)]
    workspace: PathBuf,
    /// A quick look: fewer rounds, shorter streams, smaller N.
    #[arg(long)]
    quick: bool,
    /// Blocks of the control-plane part, comma-separated (default 1000,10000,100000; --quick
    /// 1000,10000); 1000000 fits too, in a longer run.
    #[arg(long, value_delimiter = ',')]
    control_blocks: Vec<usize>,
    /// Another build of the kernel programs (an object file, e.g. main's
    /// `target/debug/build/dataplane-*/out/dataplane`), measured in the packet part's rounds beside
    /// this one: before/after ratios from one run.
    #[arg(long)]
    baseline_object: Option<PathBuf>,
    /// The parts to run, comma-separated: packet, flood, lpm, control, throughput.
    #[arg(long, value_delimiter = ',', default_value = "packet,flood,lpm,control,throughput")]
    parts: Vec<Part>,
}

/// A part of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    Packet,
    Flood,
    Lpm,
    Control,
    Throughput,
}

fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    if !dataplane_lab::is_root() {
        bail!("the benchmark loads eBPF programs and creates network namespaces: run it as root");
    }
    let started = Instant::now();
    let load_before = loadavg();
    let dir = options.workspace.join("results").join(stats::utc_timestamp());
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let quick = options.quick;
    let mut results = Results::default();
    let run = |part| options.parts.contains(&part);

    if run(Part::Packet) {
        let effort = if quick {
            packet::Effort { rounds: 5, calls: 2000 }
        } else {
            packet::Effort { rounds: 11, calls: 10_000 }
        };
        println!(
            "==> Per-packet cost: every decision path at 64 and 1500 bytes beside the empty TC program, \
             {} rounds x {} BPF_PROG_TEST_RUN calls",
            effort.rounds, effort.calls
        );
        results.repeat_probe = Some(packet::repeat_probe()?);
        let baseline = match &options.baseline_object {
            Some(path) => Some(fs::read(path).with_context(|| format!("reading {}", path.display()))?),
            None => None,
        };
        results.paths = packet::decision_paths(effort, baseline.as_deref())?;
        println!("\n{}", report::paths_table(&results.paths));
        if let Some(path) = &options.baseline_object {
            println!("Beside the baseline build {} (same rounds):\n", path.display());
            println!("{}", report::baseline_table(&results.paths));
        }
        println!("==> The uplink's XDP program beside the empty XDP program; a non-peer VXLAN flood at XDP and at TC");
        for (name, translated, jitted) in packet::program_sizes()? {
            println!(
                "  {name}: {} instructions ({translated} bytes) translated, {jitted} bytes JIT-compiled",
                translated / 8
            );
        }
        results.xdp = packet::xdp_paths(effort.rounds)?;
        println!("==> What `dataplane monitor` costs per packet: no reader, a lease that ran out, a reader");
        // A call of 4096 runs takes well under a millisecond: many rounds for a steady median.
        results.monitor = monitor::monitor_paths(effort.rounds * 20)?;
        println!("\n{}", monitor::monitor_table(&results.monitor));
        println!("\n{}", report::xdp_tables(&results.xdp, None));
        write(&results, &dir, &options, started, &load_before)?;
    }
    if run(Part::Flood) {
        let (frames, rounds) = if quick { (200_000, 5) } else { (500_000, 11) };
        println!("==> A non-peer VXLAN flood over a veth, dropped at XDP and at TC");
        results.flood = Some(packet::non_peer_flood(frames, rounds)?);
        println!("\n{}", report::xdp_tables(&[], results.flood.as_ref()));
        write(&results, &dir, &options, started, &load_before)?;
    }
    if run(Part::Lpm) {
        let counts: &[usize] =
            if quick { &[10, 1_000, 10_000, 100_000] } else { &[10, 1_000, 10_000, 100_000, 1_000_000] };
        let effort =
            if quick { packet::Effort { rounds: 5, calls: 2000 } } else { packet::Effort { rounds: 9, calls: 10_000 } };
        println!("==> LPM scale: VXLAN encap with {counts:?} extra prefixes in the routes map");
        results.lpm = packet::lpm_scale(counts, effort)?;
        println!("\n{}", report::lpm_table(&results.lpm));
        write(&results, &dir, &options, started, &load_before)?;
    }
    if run(Part::Control) {
        let counts: &[usize] = if !options.control_blocks.is_empty() {
            &options.control_blocks
        } else if quick {
            &[1_000, 10_000]
        } else {
            &[1_000, 10_000, 100_000]
        };
        let agent = &options.agent;
        println!(
            "==> Control plane: the agent ({}) on etcd with {counts:?} blocks: from empty, one change, a burst",
            agent.display()
        );
        results.control = control::run(&options.workspace, agent, counts, &dir)?;
        results.control_build = if options.agent_release { "release" } else { "debug" };
        println!("\n{}", report::control_table(&results.control));
        write(&results, &dir, &options, started, &load_before)?;
    }
    if run(Part::Throughput) {
        let effort = if quick {
            // Three short runs: one run alone is at the mercy of whatever else the machine does.
            throughput::Effort { seconds: 2, repetitions: 3 }
        } else {
            throughput::Effort { seconds: 5, repetitions: 5 }
        };
        results.throughput = Some(throughput::run(&options.workspace, &options.agent, effort)?);
        if let Some(t) = &results.throughput {
            println!("\n{}", report::throughput_tables(t));
        }
        write(&results, &dir, &options, started, &load_before)?;
    }
    println!("==> Done in {:.0} s; results in {}", started.elapsed().as_secs_f64(), dir.display());
    Ok(())
}

/// Writes report.md and the charts into `dir`.
fn write(results: &Results, dir: &Path, options: &Options, started: Instant, load_before: &str) -> anyhow::Result<()> {
    let charts = report::charts(results, dir)?;
    let header = header(options, started, load_before);
    let file = dir.join("report.md");
    fs::write(&file, report::markdown(results, &header)).with_context(|| format!("writing {}", file.display()))?;
    println!("    written: {} and {}", file.display(), charts.join(", "));
    Ok(())
}

/// The report's title and the conditions of the run.
fn header(options: &Options, started: Instant, load_before: &str) -> String {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, m)| m.trim().to_owned()))
        })
        .unwrap_or_else(|| "?".to_owned());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "# dataplane benchmark\n\n`cargo xtask bench{}`, {}. Kernel {}, {cpus} x {cpu}; load average {load_before} at the start, {} now; \
         {:.0} s so far. Absolute figures move with the machine's load; ratios to a baseline measured in the same run are what to quote.\n",
        if options.quick { " --quick" } else { "" },
        stats::utc_readable(),
        kernel.trim(),
        loadavg(),
        started.elapsed().as_secs_f64()
    )
}
