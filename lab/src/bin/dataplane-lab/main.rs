//! `dataplane-lab`: the lab-driving commands behind `cargo xtask demo` and `cargo xtask lab`.
//!
//! They live here, not in xtask, because they need the agent's crates (and so the eBPF toolchain
//! and protoc), which xtask must not need: `cargo xtask setup` has to build on a fresh machine.

mod demo;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "dataplane-lab", about = "Calico-style clusters in network namespaces")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bring up a two-node lab, carry traffic through the fast path, tear it down.
    Demo(demo::Options),
    /// Remove every lab namespace, process and pin left behind.
    Down,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo(options) => demo::run(&options),
        Command::Down => {
            let removed = dataplane_lab::down_all_with(|what| println!("removed {what}"))?;
            if removed == 0 {
                println!("no lab leftovers found");
            } else {
                println!("removed {removed} lab leftovers");
            }
            Ok(())
        }
    }
}
