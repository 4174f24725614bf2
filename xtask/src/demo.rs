//! `cargo xtask demo`: a two-node lab carrying real traffic through the fast path.
//!
//! Checks the prerequisites, builds the agent, then runs `dataplane-lab demo` (the lab crate's
//! binary), which brings up examples/two-nodes.yaml in network namespaces and shows the traffic.

use crate::setup;

/// Options of `cargo xtask demo`.
#[derive(clap::Args)]
pub struct Options {
    /// Where the agents read the cluster: the YAML file, or a real etcd server started in the lab
    /// and filled from the file with `dataplane datastore export --to etcdv3`.
    #[arg(long, value_parser = ["file", "etcdv3"], default_value = "file")]
    pub datastore: String,
}

/// Runs the demo.
pub fn run(options: &Options) -> anyhow::Result<()> {
    setup::ensure()?;
    let agent = setup::build_agent(false)?;
    let workspace = setup::workspace_root()?;
    let agent = agent.to_string_lossy().into_owned();
    let workspace = workspace.to_string_lossy().into_owned();
    setup::run_lab_tool(&["demo", "--agent", &agent, "--workspace", &workspace, "--datastore", &options.datastore])
}
