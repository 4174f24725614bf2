//! `cargo xtask test`: the whole suite.

/// Options of `cargo xtask test`.
#[derive(clap::Args)]
pub struct Options {}

/// Runs the whole test suite.
pub fn run(_options: &Options) -> anyhow::Result<()> {
    anyhow::bail!("not written yet")
}
