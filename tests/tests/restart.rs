//! Restart without loss: the pinned fast path carries traffic while the agent is down, and a new
//! agent adopts the pins (maps as they are, programs swapped into the links) without breaking a
//! running TCP stream. Both a clean stop (SIGTERM) and a crash (SIGKILL) are tried.

use dataplane_tests::{agent_bin, workspace_root};
use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _};
use dataplane_lab::{iperf, Lab, LabOptions};

/// The example cluster: VXLAN between node-1 and node-2.
const EXAMPLE: &str = "examples/two-nodes.yaml";
/// How long an agent may take to program its node.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Length of the stream that runs across the restarts.
const STREAM_SECONDS: &str = "8";

/// The agent's command line on `node`, as `Lab::start_agent` builds it.
fn agent_argv(lab: &Lab, node: &str, bin: &Path, datastore: &Path) -> Vec<String> {
    vec![
        bin.to_string_lossy().into_owned(),
        "run".into(),
        "--datastore".into(),
        format!("file:{}", datastore.display()),
        "--node".into(),
        node.into(),
        "--pin-path".into(),
        lab.pin_path(node).to_string_lossy().into_owned(),
    ]
}

#[test]
fn a_tcp_stream_survives_agent_restarts_and_crashes() -> anyhow::Result<()> {
    if dataplane_tests::skip_unless_root("a_tcp_stream_survives_agent_restarts_and_crashes") {
        return Ok(());
    }
    let datastore = workspace_root().join(EXAMPLE);
    let bin = agent_bin();
    let model = dataplane_lab::load_model(&datastore)?;
    let lab = Lab::up(&model, LabOptions::default())?;
    let client = lab.pod("default/web-1")?.clone();
    let server = lab.pod("default/web-2")?.clone();
    let start = |node: &str, name: &str| -> anyhow::Result<dataplane_lab::ChildHandle> {
        let argv = agent_argv(&lab, node, &bin, &datastore);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let netns = lab.node_netns(node)?.to_owned();
        let mut agent = lab.spawn(&netns, &argv, name)?;
        agent.wait_for_log("fast path programmed", READY_TIMEOUT)?;
        Ok(agent)
    };
    let mut node1 = start("node-1", "agent-node-1")?;
    let node2 = start("node-2", "agent-node-2")?;

    let mut iperf_server = lab.spawn(&server.netns, &["iperf3", "-s", "-1", "--forceflush"], "iperf3-server")?;
    iperf_server.wait_for_log("Server listening", Duration::from_secs(10))?;
    let server_addr = server.addr.to_string();
    let stream = lab.spawn(
        &client.netns,
        &["iperf3", "-c", &server_addr, "-t", STREAM_SECONDS, "-J", "--connect-timeout", "3000"],
        "iperf3-client",
    )?;
    iperf::wait_for_first_second(&mut iperf_server, Duration::from_secs(10))?;

    // A clean restart of node-1's agent: SIGTERM, then a new agent adopts the pins.
    let began = Instant::now();
    node1.terminate(Duration::from_secs(5))?;
    let restarted = start("node-1", "agent-node-1-restarted")?;
    let clean_restart = began.elapsed();
    ensure!(
        restarted.log().contains("adopted=true"),
        "the restarted agent did not adopt the pinned links:\n{}",
        restarted.log()
    );
    ensure!(
        restarted.log().contains("written=0"),
        "the restarted agent rewrote map entries that were already right:\n{}",
        restarted.log()
    );

    // A crash of node-2's agent: SIGKILL (no clean exit at all), then a new agent.
    std::thread::sleep(Duration::from_secs(1));
    let pid = node2.pid();
    lab.exec(lab.node_netns("node-2")?, &["kill", "-KILL", &pid.to_string()])?;
    std::thread::sleep(Duration::from_secs(1));
    let began = Instant::now();
    let recovered = start("node-2", "agent-node-2-recovered")?;
    let crash_recovery = began.elapsed();
    // A crash leaves the pins as complete as a clean stop does: the new agent adopts them as they
    // are, rewriting nothing.
    ensure!(
        recovered.log().contains("adopted=true") && recovered.log().contains("written=0"),
        "the agent started after the SIGKILL did not adopt the pinned state as it was:\n{}",
        recovered.log()
    );

    // The stream ran across both: it ends normally, with data all along.
    let mut stream = stream;
    let status = stream
        .wait_timeout(Duration::from_secs(30))?
        .with_context(|| format!("iperf3 did not finish:\n{}", stream.log()))?;
    let report = stream.log();
    ensure!(status.success(), "iperf3 failed across the restarts:\n{report}");
    let stream = iperf::parse(&report)?;
    let (per_second, retransmits) = (&stream.per_second, stream.retransmits);
    eprintln!(
        "clean restart took {clean_restart:?}, the new agent after SIGKILL was ready in {crash_recovery:?}; \
         one connection, {retransmits} retransmits; Gbit/s per second of the stream: {per_second:.2?}"
    );
    iperf::ensure_never_below(&stream, 0, iperf::UNTHROTTLED_FLOOR_GBPS)
        .with_context(|| format!("iperf3 report:\n{report}"))?;
    Ok(())
}
