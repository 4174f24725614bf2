//! `cargo xtask lab`: manage lab network namespaces by hand.

/// Subcommands of `cargo xtask lab`.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Remove every lab namespace, process and pin left behind.
    Down,
}

/// Runs a lab subcommand.
pub fn run(_command: Command) -> anyhow::Result<()> {
    anyhow::bail!("not written yet")
}
