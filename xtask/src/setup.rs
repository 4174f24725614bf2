//! `cargo xtask setup` and the prerequisite checks every other command runs first.

/// Options of `cargo xtask setup`.
#[derive(clap::Args)]
pub struct Options {}

/// Options of `cargo xtask build`.
#[derive(clap::Args)]
pub struct BuildOptions {
    /// Build in release mode.
    #[arg(long)]
    pub release: bool,
}

/// Installs or checks every prerequisite.
pub fn run(_options: &Options) -> anyhow::Result<()> {
    anyhow::bail!("not written yet")
}

/// Builds the agent.
pub fn build(_options: &BuildOptions) -> anyhow::Result<()> {
    anyhow::bail!("not written yet")
}
