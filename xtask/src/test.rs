//! `cargo xtask test`: the whole suite.
//!
//! Stages, in order: prerequisites (`setup::ensure`), the agent's build, the unit tests (no root),
//! the integration tests (root, network namespaces, real traffic), which find the agent through
//! `DATAPLANE_BIN`, and with `--clean-room` (as CI runs it) the clean-room check. Output streams as
//! it comes; a summary line per stage closes the run.

use std::{
    fmt,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::bail;

use crate::setup;

/// Options of `cargo xtask test`.
#[derive(clap::Args)]
pub struct Options {
    /// Run only the unit tests (no root needed; no agent build, no integration tests).
    #[arg(long, conflicts_with = "filter")]
    pub unit: bool,
    /// Run only the integration tests whose name contains NAME (passed to the test harness).
    #[arg(long, value_name = "NAME")]
    pub filter: Option<String>,
    /// Also build the project in a fresh Debian root holding only what `cargo xtask setup`
    /// installs (`cargo xtask clean-room`; CI runs it, see .ci/run).
    #[arg(long)]
    pub clean_room: bool,
}

/// Packages whose tests need neither root nor the built agent.
const UNIT_PACKAGES: &[&str] = &["dataplane-common", "dataplane", "dataplane-lab", "xtask"];
/// The package of the root/netns integration tests.
const INTEGRATION_PACKAGE: &str = "dataplane-tests";

/// How a stage ended.
enum Outcome {
    Passed,
    Failed(String),
    Skipped(&'static str),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Passed => write!(f, "PASS"),
            Self::Failed(_) => write!(f, "FAIL"),
            Self::Skipped(_) => write!(f, "SKIP"),
        }
    }
}

/// One stage's name, outcome and duration.
struct Stage {
    name: &'static str,
    outcome: Outcome,
    took: Duration,
}

/// Runs the whole test suite.
pub fn run(options: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut stages = Vec::new();
    let integration_line = integration_command_line(options.filter.as_deref());

    // Prerequisites, then the agent: nothing after them can run without them (a build failure
    // would only repeat itself in the tests' build).
    let mut ok = stage(&mut stages, "setup", "checking (and installing) prerequisites", setup::ensure);
    let mut agent = None;
    let mut previous_agent = None;
    if options.unit {
        skip(&mut stages, "build", "--unit");
    } else if ok {
        ok = stage(&mut stages, "build", "building the agent: cargo build -p dataplane", || {
            let built = setup::build_agent(false)?;
            // The upgrade tests' older agent (tests/tests/upgrade.rs, every test named
            // `*upgrade*`): a second build of the agent, so only when those tests may run.
            if options.filter.as_deref().is_none_or(|filter| filter.contains("upgrade")) {
                previous_agent = Some(setup::build_previous_layout_agent(&built)?);
            }
            agent = Some(built);
            Ok(())
        });
    } else {
        skip(&mut stages, "build", "setup failed");
    }
    let blocked = if stages.iter().any(|s| s.name == "setup" && !matches!(s.outcome, Outcome::Passed)) {
        "setup failed"
    } else {
        "the agent did not build"
    };

    // Unit tests.
    let unit_line = format!(
        "cargo test --no-fail-fast {}",
        UNIT_PACKAGES.iter().map(|p| format!("-p {p}")).collect::<Vec<_>>().join(" ")
    );
    if ok {
        stage(&mut stages, "unit tests", &unit_line, || {
            let mut command = setup::cargo();
            command.current_dir(setup::workspace_root()?).args(["test", "--no-fail-fast"]);
            for package in UNIT_PACKAGES {
                command.args(["-p", package]);
            }
            run_streaming(&mut command, &unit_line)
        });
    } else {
        skip(&mut stages, "unit tests", blocked);
    }

    // Integration tests.
    if options.unit {
        skip(&mut stages, "integration tests", "--unit");
    } else if let Some(agent) = agent {
        let header = format!("DATAPLANE_BIN={} {integration_line}", agent.display());
        stage(&mut stages, "integration tests", &header, || {
            if !is_root() {
                bail!("the integration tests create network namespaces and load eBPF programs: run as root, or use --unit");
            }
            let mut command = setup::cargo();
            command.current_dir(setup::workspace_root()?).env("DATAPLANE_BIN", &agent);
            if let Some(previous) = &previous_agent {
                command.env("DATAPLANE_PREVIOUS_BIN", previous);
            }
            command.args(["test", "--no-fail-fast", "-p", INTEGRATION_PACKAGE, "--", "--test-threads=1"]);
            if let Some(filter) = &options.filter {
                command.arg(filter);
            }
            run_streaming(&mut command, &integration_line)
        });
    } else {
        skip(&mut stages, "integration tests", blocked);
    }

    // The clean room: independent of the stages above (it builds everything again in its own
    // root), so it runs even when they failed. A child process, because it moves itself into a
    // mount namespace of its own.
    if options.clean_room {
        stage(&mut stages, "clean room", "cargo xtask clean-room", || {
            let exe = std::env::current_exe().map_err(|error| anyhow::anyhow!("cannot find this xtask: {error}"))?;
            run_streaming(std::process::Command::new(exe).arg("clean-room"), "cargo xtask clean-room")
        });
    } else {
        skip(&mut stages, "clean room", "no --clean-room");
    }

    // Summary.
    println!();
    println!("==> summary ({})", minutes(started.elapsed()));
    for stage in &stages {
        let detail = match &stage.outcome {
            Outcome::Passed => String::new(),
            Outcome::Failed(error) => format!(": {}", error.lines().next().unwrap_or_default()),
            Outcome::Skipped(why) => format!(" ({why})"),
        };
        let took = if matches!(stage.outcome, Outcome::Skipped(_)) { "-".to_owned() } else { minutes(stage.took) };
        println!("    {} {:<18} {took:>7}{detail}", stage.outcome, stage.name);
    }
    let failed: Vec<&str> =
        stages.iter().filter(|stage| matches!(stage.outcome, Outcome::Failed(_))).map(|stage| stage.name).collect();
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    if options.unit {
        println!("    unit tests passed (integration tests not run: --unit)");
    } else {
        println!("    all tests passed");
    }
    Ok(())
}

/// The integration tests' command line, as a person would type it.
fn integration_command_line(filter: Option<&str>) -> String {
    let mut line = format!("cargo test --no-fail-fast -p {INTEGRATION_PACKAGE} -- --test-threads=1");
    if let Some(filter) = filter {
        line.push(' ');
        line.push_str(filter);
    }
    line
}

/// Runs one stage: prints its header, runs `body`, records the outcome; returns whether it passed.
fn stage(stages: &mut Vec<Stage>, name: &'static str, header: &str, body: impl FnOnce() -> anyhow::Result<()>) -> bool {
    println!();
    println!("==> {name}: {header}");
    let started = Instant::now();
    let outcome = match body() {
        Ok(()) => Outcome::Passed,
        Err(error) => {
            eprintln!("==> {name} FAILED: {error:#}");
            Outcome::Failed(format!("{error:#}"))
        }
    };
    let passed = matches!(outcome, Outcome::Passed);
    stages.push(Stage { name, outcome, took: started.elapsed() });
    passed
}

/// Records a stage that did not run.
fn skip(stages: &mut Vec<Stage>, name: &'static str, why: &'static str) {
    stages.push(Stage { name, outcome: Outcome::Skipped(why), took: Duration::ZERO });
}

/// Runs a command with inherited stdout/stderr and no stdin; fails if it exits non-zero.
fn run_streaming(command: &mut std::process::Command, shown: &str) -> anyhow::Result<()> {
    let status =
        command.stdin(Stdio::null()).status().map_err(|error| anyhow::anyhow!("cannot start `{shown}`: {error}"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status}); its output is above");
    }
    Ok(())
}

/// "1m 05s" or "12.3 s".
fn minutes(took: Duration) -> String {
    let seconds = took.as_secs_f64();
    if seconds < 60.0 {
        format!("{seconds:.1} s")
    } else {
        format!("{}m {:02}s", took.as_secs() / 60, took.as_secs() % 60)
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integration_line_carries_the_filter() {
        assert_eq!(integration_command_line(None), "cargo test --no-fail-fast -p dataplane-tests -- --test-threads=1");
        assert_eq!(
            integration_command_line(Some("vxlan")),
            "cargo test --no-fail-fast -p dataplane-tests -- --test-threads=1 vxlan"
        );
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(minutes(Duration::from_millis(12_345)), "12.3 s");
        assert_eq!(minutes(Duration::from_secs(65)), "1m 05s");
    }
}
