//! `cargo xtask bench`: the project measured against its baselines in one run: per-packet cost
//! of every decision path (BPF_PROG_TEST_RUN beside an empty TC program), the LPM lookup and the
//! control plane at scale, and pod-to-pod throughput in network-namespace labs through the fast
//! path and its kernel baselines. See BENCHMARKS.md for the method and the latest figures.
//!
//! Checks the prerequisites, builds the agent (in release for the full run: the control-plane
//! figures are its times; `--quick` reuses the debug build),
//! then runs the lab crate's `dataplane-bench` binary, which needs the agent's crates (xtask must
//! not: it has to build on a fresh machine). Tables and SVG charts go to results/<UTC timestamp>/.

use anyhow::{bail, Context as _};

use crate::setup;

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct Options {
    /// A quick look (under 10 minutes): fewer rounds, three 2-second streams, N up to 10k.
    #[arg(long)]
    quick: bool,
    /// Only these parts, comma-separated: packet, flood, lpm, control, throughput (default: all).
    #[arg(long)]
    parts: Option<String>,
    /// The control part's cluster sizes in blocks, comma-separated (default 1000,10000,100000;
    /// with --quick 1000,10000), e.g. 1000,10000,100000,1000000.
    #[arg(long)]
    control_blocks: Option<String>,
    /// Another build of the kernel programs (an object file, e.g. main's
    /// `target/debug/build/dataplane-*/out/dataplane`), timed in the packet part's rounds beside
    /// this build: before/after ratios from one run.
    #[arg(long)]
    baseline_object: Option<String>,
}

/// Runs the benchmark.
pub fn run(options: &Options) -> anyhow::Result<()> {
    setup::ensure()?;
    // The control-plane part times the agent itself, so the full run builds it in release; a
    // quick look reuses the debug build the tests use (a cold release build takes long here).
    let release = !options.quick;
    let agent = setup::build_agent(release)?;
    let workspace = setup::workspace_root()?;
    let agent = agent.to_string_lossy().into_owned();
    let workspace_arg = workspace.to_string_lossy().into_owned();
    let mut args = vec!["--agent", &agent, "--workspace", &workspace_arg];
    if options.quick {
        args.push("--quick");
    }
    if release {
        args.push("--agent-release");
    }
    if let Some(parts) = &options.parts {
        args.extend(["--parts", parts]);
    }
    if let Some(blocks) = &options.control_blocks {
        args.extend(["--control-blocks", blocks]);
    }
    if let Some(object) = &options.baseline_object {
        args.extend(["--baseline-object", object]);
    }
    // A debug build of the bench itself is enough: the kernel, iperf3 and the agent do the work
    // being measured.
    let mut command = setup::cargo();
    command
        .current_dir(&workspace)
        .args(["run", "--quiet", "-p", "dataplane-lab", "--bin", "dataplane-bench", "--"])
        .args(&args);
    let shown = format!("cargo run -p dataplane-lab --bin dataplane-bench -- {}", args.join(" "));
    println!("[bench] {shown}");
    let status = command.status().with_context(|| format!("cannot start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}
