//! `cargo xtask`: the project's one entry point for setup, build, test, clean-room, demo, lab and bench.

mod bench;
mod cleanroom;
mod demo;
mod image;
mod lab;
mod setup;
mod test;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, test and demonstrate the dataplane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install or check every prerequisite (Debian packages, rust-src, bpf-linker).
    Setup(setup::Options),
    /// Build the agent with its embedded eBPF object.
    Build(setup::BuildOptions),
    /// Run the whole test suite, unit tests and root/netns integration tests.
    Test(test::Options),
    /// The agent's container image from Debian's packages (OCI layout in target/image/oci).
    Image(image::Options),
    /// Build the project in a fresh Debian bookworm root holding only what `setup` installs.
    CleanRoom(cleanroom::Options),
    /// Bring up a two-node lab, carry traffic through the fast path, tear it down.
    Demo(demo::Options),
    /// TCP throughput pod to pod: BPF fast path vs kernel vxlan vs plain routing.
    Bench(bench::Options),
    /// Manage lab network namespaces.
    Lab {
        #[command(subcommand)]
        command: lab::Command,
    },
    /// The Vagrant cluster: three Debian 12 VMs (kernel 6.1) carrying pod traffic (box, up, down,
    /// ssh, validate, test, bench); installs its own host packages on first use.
    Vm {
        #[command(subcommand)]
        command: vm::VmCommand,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup(options) => setup::run(&options),
        Command::Build(options) => setup::build(&options),
        Command::Test(options) => test::run(&options),
        Command::Image(options) => image::run(&options),
        Command::CleanRoom(options) => cleanroom::run(&options),
        Command::Demo(options) => demo::run(&options),
        Command::Bench(options) => bench::run(&options),
        Command::Lab { command } => lab::run(command),
        Command::Vm { command } => vm::run(command),
    }
}
