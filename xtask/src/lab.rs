//! `cargo xtask lab`: manage lab network namespaces by hand.

use crate::setup;

/// Subcommands of `cargo xtask lab`.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Remove every lab namespace, process and pin left behind.
    Down,
}

/// Runs a lab subcommand through the lab crate's `dataplane-lab` binary.
pub fn run(command: Command) -> anyhow::Result<()> {
    setup::ensure()?;
    match command {
        Command::Down => setup::run_lab_tool(&["down"]),
    }
}
