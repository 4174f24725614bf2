//! `cargo xtask lab`: manage lab network namespaces by hand.

/// Subcommands of `cargo xtask lab`.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Remove every lab namespace, process and pin left behind.
    Down,
}

/// Runs a lab subcommand.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Down => down(),
    }
}

/// Removes every `dpl-*` namespace (stopping what runs in it), `/sys/fs/bpf/dpl-*` and the labs'
/// log directories, saying what it removes.
fn down() -> anyhow::Result<()> {
    let removed = dataplane_lab::down_all_with(|what| println!("removed {what}"))?;
    if removed == 0 {
        println!("no lab leftovers found");
    } else {
        println!("removed {removed} lab leftovers");
    }
    Ok(())
}
