//! `cargo xtask bench`: pod-to-pod TCP throughput across two nodes through the BPF fast path, the
//! kernel's own vxlan device path (as Calico configures it) and plain routing, in one run.
//!
//! Checks the prerequisites, builds the agent, then runs the lab crate's `dataplane-bench`
//! binary, which needs the agent's crates (xtask must not: it has to build on a fresh machine).
//! The table is printed and written as Markdown to results/bench-<UTC timestamp>.md.

use anyhow::{bail, Context as _};

use crate::setup;

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct Options {
    /// A quick look: 2-second streams and one repetition instead of 5 s and three.
    #[arg(long)]
    quick: bool,
}

/// Runs the benchmark.
pub fn run(options: &Options) -> anyhow::Result<()> {
    setup::ensure()?;
    let agent = setup::build_agent(false)?;
    let workspace = setup::workspace_root()?;
    let agent = agent.to_string_lossy().into_owned();
    let workspace_arg = workspace.to_string_lossy().into_owned();
    let mut args = vec!["--agent", &agent, "--workspace", &workspace_arg];
    if options.quick {
        args.push("--quick");
    }
    // A debug build is enough (iperf3 and the kernel do the work being measured), and it reuses
    // what `build_agent` just built.
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
