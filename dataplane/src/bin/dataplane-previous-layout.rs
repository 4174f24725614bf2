//! The upgrade test's older agent: `dataplane` itself, built with the `previous-layout` feature
//! (the conntrack map in its previous layout, `conntrack_v0`). Never shipped.

#[path = "../main.rs"]
mod agent_main;

fn main() -> std::process::ExitCode {
    agent_main::main()
}
