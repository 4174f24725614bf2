//! "Day one": a mistyped flag or a missing file says so, with real agents in the lab.
//!
//! - A datastore file that does not exist yet is reported at once, and programmed the moment it
//!   is written (on a 9000-byte uplink, whose MTU the host's routes follow); deleted later, it is reported while the last good state keeps pods talking
//!   across nodes, and the health endpoint and the metric say the datastore is down.
//! - A pin path off the bpffs and an uplink that does not exist stop the agent in `--mode auto`
//!   (no fallback to netlink), naming the flag, printing no backtrace although RUST_BACKTRACE is
//!   set, and leaving nothing behind: no pins, no programs on the hooks, no vxlan.calico, no
//!   routes of the agent's, no nf_tables table.
//!
//! Each test builds its own lab and tears it down when it ends, also on failure. Without root
//! the tests print why they are skipped and pass.

use std::{
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _};
use aya::programs::{SchedClassifier, TcAttachType};
use dataplane_lab::{http_get, in_netns, ChildHandle, Lab, LabOptions, AGENT_READY};
use dataplane_tests::{agent_bin, workspace_root};

/// The example cluster: node-1 and node-2, one VXLAN pool, web-1 on node-1 and web-2 on node-2.
const EXAMPLE: &str = "examples/two-nodes.yaml";
/// How long an agent may take to load its programs (generous: the machine may be loaded).
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// The deadline for reporting a missing or deleted file.
const REPORT_DEADLINE: Duration = Duration::from_secs(2);
/// The deadline for programming a file that appeared.
const PROGRAM_DEADLINE: Duration = Duration::from_secs(1);
/// Where node-1's agent serves /metrics and /healthz, on the node's loopback.
const METRICS_ADDR: &str = "127.0.0.1:9091";
/// What the agent logs about a datastore file that does not exist.
const MISSING: &str = "does not exist (deleted, or not written yet)";

/// The example's lab, or None when not root.
fn lab(test: &str) -> anyhow::Result<Option<(Lab, PathBuf)>> {
    if dataplane_tests::skip_unless_root(test) {
        return Ok(None);
    }
    let bin = agent_bin();
    ensure!(bin.exists(), "agent binary {} does not exist: build it with `cargo build -p dataplane`", bin.display());
    let example = workspace_root().join(EXAMPLE);
    let lab = Lab::up(&dataplane_lab::load_model(&example)?, LabOptions::default())?;
    Ok(Some((lab, example)))
}

/// Starts `dataplane <args>` in node-1's namespace with plain logs and RUST_BACKTRACE=1, as a
/// user's shell often has it.
fn start(lab: &Lab, args: &[&str], log_name: &str) -> anyhow::Result<ChildHandle> {
    let bin = agent_bin().to_string_lossy().into_owned();
    let mut argv = vec![bin.as_str()];
    argv.extend_from_slice(args);
    let env = [("NO_COLOR", "1"), ("RUST_LOG", "info"), ("RUST_BACKTRACE", "1")];
    lab.spawn_with_env(lab.node_netns("node-1")?, &argv, log_name, &env)
}

/// GET `path` from node-1's agent: (status, body).
fn get(lab: &Lab, path: &str) -> anyhow::Result<(u16, String)> {
    http_get(lab.node_netns("node-1")?, METRICS_ADDR, path)
}

/// Polls `what` every 10 ms until it holds or `deadline` passes; returns how long it took.
fn within(deadline: Duration, what: &str, mut holds: impl FnMut() -> bool) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while !holds() {
        ensure!(start.elapsed() < deadline, "{what}: not within {deadline:?}");
        thread::sleep(Duration::from_millis(10));
    }
    Ok(start.elapsed())
}

/// Entries of node-1's routes map (0 before the maps exist).
fn routes(pin_path: &Path) -> usize {
    dataplane::routes::read(pin_path).map(|rows| rows.len()).unwrap_or(0)
}

#[test]
fn a_missing_file_is_reported_programmed_when_it_appears_and_a_deleted_one_keeps_the_last_state() -> anyhow::Result<()>
{
    let Some((lab, example)) = lab("a_missing_file_is_reported_programmed_when_it_appears")? else {
        return Ok(());
    };
    let yaml = std::fs::read_to_string(&example).with_context(|| format!("reading {}", example.display()))?;
    let (model, _) = dataplane::datastore::file::parse(&yaml)?;
    let (plan, _) = dataplane::plan::compute(&model, "node-1")?;
    let datastore = lab.dir().join("datastore.yaml");
    let pin_path = lab.pin_path("node-1");
    let (store_arg, pin_arg) = (format!("file:{}", datastore.display()), pin_path.to_string_lossy().into_owned());
    // A jumbo-frame uplink: the host's routes to remote blocks must follow it, as the programs do.
    let uplink = lab.node("node-1")?.uplink.clone();
    lab.exec(lab.node_netns("node-1")?, &["ip", "link", "set", "dev", &uplink, "mtu", "9000"])?;
    let args = ["run", "--datastore", &store_arg, "--node", "node-1", "--pin-path", &pin_arg];
    let mut agent = start(&lab, &[&args[..], &["--metrics-addr", METRICS_ADDR]].concat(), "agent-node-1")?;

    agent.wait_for_log(MISSING, REPORT_DEADLINE).context("the missing file was not reported at once")?;
    agent.wait_for_log("kernel programs loaded", LOAD_TIMEOUT)?;
    let (status, body) = get(&lab, "/healthz")?;
    ensure!(status == 503 && body.contains("datastore down") && body.contains(MISSING), "/healthz: {status} {body}");
    thread::sleep(Duration::from_millis(300));
    ensure!(routes(&pin_path) == 0 && agent.programmed() == 0, "programmed without a file:\n{}", agent.log());

    std::fs::write(&datastore, &yaml).with_context(|| format!("writing {}", datastore.display()))?;
    let took = within(PROGRAM_DEADLINE, "node-1's routes map filled from the new file", || {
        routes(&pin_path) == plan.routes.len()
    })
    .with_context(|| agent.log())?;
    println!("programmed {took:?} after the file appeared");
    agent.wait_for_log(AGENT_READY, LOAD_TIMEOUT)?;
    let host_routes = lab.exec_stdout(lab.node_netns("node-1")?, &["ip", "route", "show", "proto", "200"])?;
    ensure!(
        host_routes.lines().any(|r| r.starts_with("10.244.2.0/26 via ") && r.contains(" mtu 8950")),
        "the route to node-2's block does not carry the uplink's 9000 less VXLAN's 50:\n{host_routes}"
    );

    let mut node_2 = lab.start_agent("node-2", &agent_bin(), &example)?;
    node_2.wait_ready(LOAD_TIMEOUT)?;
    let (web_1, web_2) = (lab.pod("default/web-1")?, lab.pod("default/web-2")?);
    ensure!(lab.ping_ok(web_1, web_2.addr, 5)?, "web-1 cannot reach web-2 across nodes");

    // Deleted under traffic: reported at once, the datastore is down, the pods still talk.
    let reported = agent.log().matches(MISSING).count();
    std::fs::remove_file(&datastore)?;
    within(REPORT_DEADLINE, "the deleted file reported", || agent.log().matches(MISSING).count() > reported)
        .with_context(|| agent.log())?;
    lab.exec(&web_1.netns, &["ping", "-c", "5", "-i", "0.2", "-W", "2", &web_2.addr.to_string()])
        .context("the last good state stopped carrying traffic")?;
    ensure!(routes(&pin_path) == plan.routes.len(), "the routes map changed without a datastore");
    let (status, body) = get(&lab, "/healthz")?;
    ensure!(status == 200 && body.contains("datastore down"), "/healthz with the last good state: {status} {body}");
    let metrics = get(&lab, "/metrics")?.1;
    ensure!(metrics.lines().any(|l| l == "dataplane_datastore_up 0"), "metrics:\n{metrics}");
    Ok(())
}

/// Everything the agent would have left on node-1: an empty list when it left nothing.
fn leftovers(lab: &Lab, pin_dirs: &[&Path]) -> anyhow::Result<Vec<String>> {
    let netns = lab.node_netns("node-1")?.to_owned();
    let uplink = lab.node("node-1")?.uplink.clone();
    let mut found: Vec<String> = pin_dirs.iter().filter(|d| d.exists()).map(|d| format!("{}", d.display())).collect();
    let links = lab.exec_stdout(&netns, &["ip", "-o", "link", "show"])?;
    for device in ["vxlan.calico", "vxlan.dataplane"] {
        if links.contains(&format!(" {device}:")) || links.contains(&format!(" {device}@")) {
            found.push(format!("device {device}"));
        }
    }
    let routes = lab.exec_stdout(&netns, &["ip", "route", "show", "proto", "200"])?;
    found.extend(routes.lines().map(|route| format!("route {route}")));
    if lab.exec_status(&netns, &["nft", "list", "table", "ip", "dataplane"])?.status.success() {
        found.push("nf_tables table ip dataplane".to_owned());
    }
    let qdiscs = lab.exec_stdout(&netns, &["tc", "qdisc", "show", "dev", &uplink])?;
    if qdiscs.contains("clsact") {
        found.push(format!("clsact qdisc on {uplink}"));
    }
    let attached = in_netns(&netns, move || {
        let mut programs = Vec::new();
        for direction in [TcAttachType::Ingress, TcAttachType::Egress] {
            programs.extend(
                SchedClassifier::query_tcx(&uplink, direction)?
                    .1
                    .into_iter()
                    .map(|p| format!("tcx program {} on {uplink}", p.name_as_str().unwrap_or("?"))),
            );
        }
        Ok(programs)
    })?;
    found.extend(attached);
    Ok(found)
}

#[test]
fn configuration_errors_stop_auto_mode_before_anything_is_programmed() -> anyhow::Result<()> {
    let Some((lab, example)) = lab("configuration_errors_stop_auto_mode_before_anything_is_programmed")? else {
        return Ok(());
    };
    let store_arg = format!("file:{}", example.display());
    let off_bpffs = lab.dir().join("pins");
    let on_bpffs = lab.pin_path("node-1");
    let (off_arg, on_arg) = (off_bpffs.to_string_lossy().into_owned(), on_bpffs.to_string_lossy().into_owned());
    let run = ["run", "--datastore", &store_arg, "--node", "node-1", "--mode", "auto"];
    let cases: [(&str, Vec<&str>, &str); 2] = [
        ("--pin-path", vec!["--pin-path", &off_arg], "Error: --pin-path "),
        ("--uplink", vec!["--pin-path", &on_arg, "--uplink", "eht0"], "Error: --uplink \"eht0\""),
    ];
    for (flag, extra, error) in cases {
        let mut agent = start(&lab, &[&run[..], &extra].concat(), &format!("agent{flag}"))?;
        let status = agent.wait_timeout(Duration::from_secs(20))?.with_context(|| format!("{flag}: still running"))?;
        let log = agent.log();
        ensure!(status.code() == Some(1), "{flag}: exited with {status}:\n{log}");
        ensure!(log.contains(error), "{flag}: the error does not name the flag:\n{log}");
        ensure!(!log.contains("falling back") && !log.contains("programs loaded"), "{flag}: went on:\n{log}");
        ensure!(!log.to_lowercase().contains("backtrace"), "{flag}: a backtrace with RUST_BACKTRACE=1:\n{log}");
        let left = leftovers(&lab, &[&off_bpffs, &on_bpffs])?;
        ensure!(left.is_empty(), "{flag}: left behind {left:?}\n{log}");
    }

    // The backtrace is there when asked for.
    let mut agent = start(&lab, &[&run[..], &["--pin-path", &off_arg, "--backtrace"]].concat(), "agent-backtrace")?;
    let status = agent.wait_timeout(Duration::from_secs(20))?.context("--backtrace: still running")?;
    let log = agent.log();
    ensure!(status.code() == Some(1) && log.contains("Stack backtrace:"), "--backtrace ({status}):\n{log}");
    Ok(())
}
