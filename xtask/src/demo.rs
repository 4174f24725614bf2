//! `cargo xtask demo`: a two-node lab carrying real traffic through the fast path.
//!
//! Checks the prerequisites, builds the agent, then runs `dataplane-lab demo` (the lab crate's
//! binary), which brings up examples/two-nodes.yaml in network namespaces and shows the traffic.

use crate::setup;

/// Options of `cargo xtask demo`.
#[derive(clap::Args)]
pub struct Options {}

/// Runs the demo.
pub fn run(_options: &Options) -> anyhow::Result<()> {
    setup::ensure()?;
    let agent = setup::build_agent(false)?;
    let workspace = setup::workspace_root()?;
    let agent = agent.to_string_lossy().into_owned();
    let workspace = workspace.to_string_lossy().into_owned();
    setup::run_lab_tool(&["demo", "--agent", &agent, "--workspace", &workspace])
}
