//! `cargo xtask demo`: a two-node lab carrying real traffic through the fast path.

/// Options of `cargo xtask demo`.
#[derive(clap::Args)]
pub struct Options {}

/// Runs the demo.
pub fn run(_options: &Options) -> anyhow::Result<()> {
    anyhow::bail!("not written yet")
}
