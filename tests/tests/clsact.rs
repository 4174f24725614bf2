//! The fast path attached through a clsact qdisc, as on kernels without tcx (Debian 12's 6.1).
//!
//! This machine's kernel has tcx, so the agents run with `DATAPLANE_PROBE_DISABLE=tcx`, which
//! makes the probe report it missing and the agent attach direct-action filters instead; the
//! programs, maps and veths are the real ones. A 6.1 kernel itself cannot run here.
//!
//! - both nodes on clsact: ping and a TCP stream pod to pod across nodes; `tc filter show` lists
//!   our filters on every hook, the kernel lists no tcx attachment and no link is pinned; the
//!   counters move; `dataplane check` finds every program attached;
//! - node-1's agent restarts (SIGTERM, new agent) under a running TCP stream: the new agent
//!   replaces each filter in place (new program ids, same filters), and the stream loses nothing;
//!   node-2's agent is then killed (SIGKILL) under the same stream and its successor takes over
//!   the filters and adopts the maps without rewriting an entry;
//! - a pod leaving the datastore (its veth stays) loses its filters, and `dataplane check` agrees;
//! - `dataplane cleanup` removes the filters (and leaves another tool's filter alone), and
//!   traffic stops;
//! - an agent switching attach method under a running stream (tcx -> clsact -> tcx) leaves one
//!   attachment per hook, by the method it was told, and the stream loses nothing.
//!
//! Every test builds its own lab and runs the agents as separate processes. Without root the tests
//! print why they are skipped and pass.

use std::{
    collections::BTreeMap,
    os::fd::AsRawFd as _,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use aya::programs::{SchedClassifier, TcAttachType};
use dataplane_lab::{iperf, AgentOptions, ChildHandle, Cluster, Lab, LabPod, AGENT_READY};
use serde_json::Value;

/// Pool 10.244.0.0/16 vxlanMode Always; node-1 (web-1, cache-1) and node-2 (web-2).
const TWO_NODES: &str = "examples/two-nodes.yaml";
const WEB_1: &str = "default/web-1";
const WEB_2: &str = "default/web-2";
const CACHE_1: &str = "default/cache-1";
/// Agent options that make the probe report tcx missing, so the agent attaches through clsact.
fn no_tcx() -> AgentOptions {
    AgentOptions { env: vec![("DATAPLANE_PROBE_DISABLE".into(), "tcx".into())], ..AgentOptions::default() }
}
/// Length of a stream that runs across agent restarts.
const STREAM_SECONDS: &str = "10";
/// The name prefix of our filters, as `tc filter show` prints them.
const FILTER_PREFIX: &str = "dataplane:";

/// The helpers below read the cluster as this test needs.
/// `tc filter show dev <interface> <hook>` on `node`.
fn filters(cluster: &Cluster, node: &str, interface: &str, hook: &str) -> anyhow::Result<String> {
    cluster.on(node, &["tc", "filter", "show", "dev", interface, hook])
}

/// The hooks of `node` (uplink and the veths of its pods) with the program each must run.
fn hooks(cluster: &Cluster, node: &str) -> anyhow::Result<Vec<(String, &'static str, &'static str)>> {
    let uplink = cluster.lab.node(node)?.uplink.clone();
    let mut hooks = vec![(uplink.clone(), "ingress", "from_uplink"), (uplink, "egress", "to_uplink")];
    for pod in cluster.lab.pods().filter(|p| p.node == node) {
        hooks.push((pod.interface.clone(), "ingress", "from_workload"));
        hooks.push((pod.interface.clone(), "egress", "to_workload"));
    }
    Ok(hooks)
}

/// The tcx attachments on `node`'s hooks, as the kernel lists them (BPF_PROG_QUERY from a
/// thread in the node's namespace; this machine's bpftool predates tcx): "<interface> tcx/<hook>
/// <program>" for each.
fn tcx_attachments(cluster: &Cluster, node: &str) -> anyhow::Result<Vec<String>> {
    let path = format!("/run/netns/{}", cluster.lab.node_netns(node)?);
    let hooks: Vec<(String, &'static str)> = hooks(cluster, node)?.into_iter().map(|(i, h, _)| (i, h)).collect();
    let query = thread::spawn(move || -> anyhow::Result<Vec<String>> {
        let handle = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns(2) on a valid namespace fd; it changes only this thread's namespace.
        if unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("entering {path}"));
        }
        let mut found = Vec::new();
        for (interface, hook) in hooks {
            let direction = if hook == "ingress" { TcAttachType::Ingress } else { TcAttachType::Egress };
            let (_, programs) = SchedClassifier::query_tcx(&interface, direction)
                .with_context(|| format!("querying the tcx {hook} hook of {interface}"))?;
            for program in programs {
                found.push(format!("{interface} tcx/{hook} {}", program.name_as_str().unwrap_or("?")));
            }
        }
        Ok(found)
    });
    query.join().map_err(|_| anyhow::anyhow!("the tcx query thread panicked"))?
}

/// The pins under `node`'s links directory.
fn link_pins(cluster: &Cluster, node: &str) -> Vec<String> {
    let dir = cluster.lab.pin_path(node).join("links");
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Checks that every hook of `node` runs its program through our clsact filter and nothing
/// through tcx; returns the program id of each filter (by interface and hook).
fn expect_clsact(cluster: &Cluster, node: &str) -> anyhow::Result<BTreeMap<String, u32>> {
    let mut ids = BTreeMap::new();
    for (interface, hook, program) in hooks(cluster, node)? {
        let shown = filters(cluster, node, &interface, hook)?;
        let ours: Vec<&str> = shown.lines().filter(|l| l.contains(FILTER_PREFIX)).collect();
        ensure!(
            ours.len() == 1
                && ours[0].contains(&format!("{FILTER_PREFIX}{program} "))
                && ours[0].contains("direct-action")
                && shown.contains("pref 1 bpf")
                && shown.contains("handle 0xda7a"),
            "tc filter show dev {interface} {hook} on {node} should hold exactly our direct-action filter \
             running {program} at pref 1 handle 0xda7a:\n{shown}"
        );
        let id = ours[0]
            .split_whitespace()
            .skip_while(|w| *w != "id")
            .nth(1)
            .and_then(|id| id.parse().ok())
            .with_context(|| format!("no program id in {:?}", ours[0]))?;
        ids.insert(format!("{interface} {hook}"), id);
    }
    let tcx = tcx_attachments(cluster, node)?;
    ensure!(tcx.is_empty(), "{node} still has tcx attachments: {tcx:?}");
    let pins = link_pins(cluster, node);
    ensure!(pins.is_empty(), "{node} still has pinned links: {pins:?}");
    Ok(ids)
}

/// Checks that every hook of `node` runs its program through tcx and none has a filter of ours.
fn expect_tcx(cluster: &Cluster, node: &str) -> anyhow::Result<()> {
    let tcx = tcx_attachments(cluster, node)?;
    for (interface, hook, program) in hooks(cluster, node)? {
        let shown = filters(cluster, node, &interface, hook)?;
        ensure!(!shown.contains(FILTER_PREFIX), "{interface} {hook} on {node} keeps our filter:\n{shown}");
        let wanted = format!("{interface} tcx/{hook} {program}");
        ensure!(tcx.contains(&wanted), "{node} lacks {wanted}: {tcx:?}");
    }
    ensure!(tcx.len() == hooks(cluster, node)?.len(), "{node} has more tcx attachments than hooks: {tcx:?}");
    Ok(())
}

/// One counter of `node`'s fast path (`dataplane stats -o json`).
fn counter(cluster: &Cluster, node: &str, name: &str) -> anyhow::Result<u64> {
    let pins = cluster.lab.pin_path(node);
    let bin = cluster.bin().to_string_lossy();
    let output = dataplane_lab::cmd::run(&[&*bin, "stats", "--pin-path", &pins.to_string_lossy(), "-o", "json"])?;
    let json: Value = serde_json::from_slice(&output.stdout).context("`dataplane stats -o json` did not print JSON")?;
    json["decisions"][name].as_u64().with_context(|| format!("no decision counter {name}: {json}"))
}

/// `dataplane check -o json` on `node`: the findings of its "programs" check.
fn program_findings(cluster: &Cluster, node: &str) -> anyhow::Result<Vec<Value>> {
    let bin = cluster.bin().to_string_lossy();
    let datastore = format!("file:{}", cluster.datastore().display());
    let pins = cluster.lab.pin_path(node).to_string_lossy().into_owned();
    let argv = [&*bin, "check", "--datastore", &datastore, "--node", node, "--pin-path", &pins, "-o", "json"];
    let output = cluster.lab.exec_status(cluster.lab.node_netns(node)?, &argv)?;
    let json: Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!("`dataplane check -o json` did not print JSON: {}", String::from_utf8_lossy(&output.stderr))
    })?;
    let findings = json["findings"].as_array().with_context(|| format!("no findings array: {json}"))?;
    Ok(findings.iter().filter(|f| f["check"] == "programs").cloned().collect())
}

/// `ping -c 3 -W 1` from `from` to `to`; true when all three replies came back (two tries: the
/// first may lose a packet while the pod resolves its gateway).
fn ping(lab: &Lab, from: &LabPod, to: &LabPod) -> anyhow::Result<bool> {
    let to = to.addr.to_string();
    for _ in 0..2 {
        let output = lab.exec_status(&from.netns, &["ping", "-c", "3", "-W", "1", &to])?;
        if output.status.success() && String::from_utf8_lossy(&output.stdout).contains(" 3 received") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A TCP stream of [`STREAM_SECONDS`] from `client` to `server`, running in the background.
struct Stream {
    _server: ChildHandle,
    client: ChildHandle,
}

impl Stream {
    fn start(lab: &Lab, client: &LabPod, server: &LabPod) -> anyhow::Result<Stream> {
        let mut listener = lab.spawn(&server.netns, &["iperf3", "-s", "-1", "--forceflush"], "iperf3-server")?;
        listener.wait_for_log("Server listening", Duration::from_secs(10))?;
        let addr = server.addr.to_string();
        let argv = ["iperf3", "-c", &addr, "-t", STREAM_SECONDS, "-J", "--connect-timeout", "3000"];
        let client = lab.spawn(&client.netns, &argv, "iperf3-client")?;
        // It carries data before anything changes.
        iperf::wait_for_first_second(&mut listener, Duration::from_secs(10))?;
        Ok(Stream { _server: listener, client })
    }

    /// Waits for the end of the stream; it must end normally with data in every second. Returns
    /// the Gbit/s of each second.
    fn finish(mut self) -> anyhow::Result<Vec<f64>> {
        let status = self
            .client
            .wait_timeout(Duration::from_secs(30))?
            .with_context(|| format!("iperf3 did not finish:\n{}", self.client.log()))?;
        let report = self.client.log();
        ensure!(status.success(), "iperf3 failed:\n{report}");
        let stream = iperf::parse(&report)?;
        iperf::ensure_never_below(&stream, 5, iperf::UNTHROTTLED_FLOOR_GBPS)
            .with_context(|| format!("iperf3 report:\n{report}"))?;
        Ok(stream.per_second)
    }
}

/// A ping every 10 ms from one pod to another, running in the background.
struct SteadyPing {
    netns: String,
    process: ChildHandle,
}

impl SteadyPing {
    fn start(lab: &Lab, from: &LabPod, to: &LabPod) -> anyhow::Result<SteadyPing> {
        let addr = to.addr.to_string();
        let process = lab.spawn(&from.netns, &["ping", "-i", "0.01", "-W", "1", &addr], "steady-ping")?;
        thread::sleep(Duration::from_millis(300));
        Ok(SteadyPing { netns: from.netns.clone(), process })
    }

    /// Stops the ping (after 300 ms more) and returns its summary line.
    fn stop(mut self, lab: &Lab) -> anyhow::Result<String> {
        thread::sleep(Duration::from_millis(300));
        lab.exec(&self.netns, &["kill", "-INT", &self.process.pid().to_string()])?;
        let _ = self.process.wait_timeout(Duration::from_secs(5))?;
        let log = self.process.log();
        Ok(log.lines().find(|l| l.contains("packets transmitted")).unwrap_or("no summary").to_owned())
    }
}

#[test]
fn without_tcx_the_fast_path_runs_on_clsact_filters_restarts_in_place_and_cleans_up() -> anyhow::Result<()> {
    let Some(mut cluster) = Cluster::up_or_skip("clsact", TWO_NODES)? else { return Ok(()) };
    let began = Instant::now();
    cluster.start("node-1", &no_tcx())?;
    cluster.start("node-2", &no_tcx())?;
    for node in ["node-1", "node-2"] {
        let log = cluster.log(node);
        ensure!(log.contains("attach=clsact"), "the agent of {node} does not say it attaches through clsact:\n{log}");
    }
    let (web1, web2) = (cluster.lab.pod(WEB_1)?.clone(), cluster.lab.pod(WEB_2)?.clone());

    // Traffic across nodes, through the programs: node-1 encapsulates, node-2 decapsulates.
    let (encap, decap) = (counter(&cluster, "node-1", "encap_vxlan")?, counter(&cluster, "node-2", "decap_vxlan")?);
    ensure!(ping(&cluster.lab, &web1, &web2)?, "web-1 cannot ping web-2 on clsact filters");
    let ids = expect_clsact(&cluster, "node-1")?;
    expect_clsact(&cluster, "node-2")?;
    let findings = program_findings(&cluster, "node-1")?;
    ensure!(findings.is_empty(), "`dataplane check` finds the clsact attachments wrong: {findings:?}");

    // A TCP stream across an agent restart: the new agent replaces each filter's program in place.
    let stream = Stream::start(&cluster.lab, &web1, &web2)?;
    // And a 10 ms ping, whose losses across the restart are reported (not asserted).
    let steady = SteadyPing::start(&cluster.lab, &web1, &web2)?;
    let restart = Instant::now();
    cluster.start("node-1", &no_tcx())?;
    let restart_took = restart.elapsed();
    let steady_summary = steady.stop(&cluster.lab)?;
    let log = cluster.log("node-1");
    ensure!(
        log.contains("replaced=true") && !log.contains("replaced=false"),
        "the new agent did not replace every filter:\n{log}"
    );
    ensure!(log.contains("written=0"), "the new agent rewrote map entries that were already right:\n{log}");
    // A crash of node-2's agent during the same stream (SIGKILL: no clean exit at all): the
    // filters keep running the old programs, and the next agent adopts the pinned maps as they are.
    let pid = cluster.agent("node-2").context("node-2 has no agent")?.pid().to_string();
    cluster.lab.exec(cluster.lab.node_netns("node-2")?, &["kill", "-KILL", &pid])?;
    let crash = Instant::now();
    cluster.start("node-2", &no_tcx())?;
    let crash_took = crash.elapsed();
    let log = cluster.log("node-2");
    ensure!(
        log.contains("replaced=true") && !log.contains("replaced=false") && log.contains("written=0"),
        "the agent after the SIGKILL did not take over the filters and maps as they were:\n{log}"
    );
    let per_second = stream.finish()?;
    let new_ids = expect_clsact(&cluster, "node-1")?;
    for (hook, id) in &new_ids {
        ensure!(ids.get(hook) != Some(id), "the filter on {hook} still runs the old agent's program {id}");
    }
    let (encap_after, decap_after) =
        (counter(&cluster, "node-1", "encap_vxlan")?, counter(&cluster, "node-2", "decap_vxlan")?);
    ensure!(
        encap_after > encap && decap_after > decap,
        "the counters did not move: encap_vxlan {encap} -> {encap_after}, decap_vxlan {decap} -> {decap_after}"
    );
    eprintln!(
        "clsact restart (SIGTERM to programmed) took {restart_took:?}, after SIGKILL {crash_took:?}; \
         Gbit/s per second of the stream: \
         {per_second:.2?}; 10 ms ping across it: {steady_summary}; encap_vxlan {encap} -> {encap_after}"
    );

    // A pod leaves the datastore while its veth stays: the agent removes that veth's filters.
    let cache1 = cluster.lab.pod(CACHE_1)?.interface.clone();
    let reconciles = cluster.log("node-1").matches(AGENT_READY).count();
    let yaml = std::fs::read_to_string(cluster.datastore())?;
    let kept: Vec<&str> = yaml.split("\n---\n").filter(|doc| !doc.contains("pod: cache-1")).collect();
    let staging = cluster.datastore().with_extension("next");
    std::fs::write(&staging, kept.join("\n---\n"))?;
    std::fs::rename(&staging, cluster.datastore())?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.log("node-1").matches(AGENT_READY).count() <= reconciles {
        ensure!(Instant::now() < deadline, "node-1 did not reconcile after cache-1 left:\n{}", cluster.log("node-1"));
        thread::sleep(Duration::from_millis(50));
    }
    for hook in ["ingress", "egress"] {
        let shown = filters(&cluster, "node-1", &cache1, hook)?;
        ensure!(!shown.contains(FILTER_PREFIX), "cache-1 left, but {cache1} {hook} keeps our filter:\n{shown}");
    }
    let findings = program_findings(&cluster, "node-1")?;
    ensure!(findings.is_empty(), "`dataplane check` after cache-1 left: {findings:?}");

    // Another tool's filter on the uplink survives cleanup; ours go and traffic stops.
    let uplink = cluster.lab.node("node-1")?.uplink.clone();
    let theirs = [
        "tc", "filter", "add", "dev", &uplink, "ingress", "pref", "100", "protocol", "arp", "u32", "match", "u32", "0",
        "0",
    ];
    cluster.on("node-1", &theirs)?;
    cluster.agent_mut("node-1")?.process().terminate(Duration::from_secs(5))?;
    let bin = cluster.bin().to_string_lossy().into_owned();
    let pins = cluster.lab.pin_path("node-1").to_string_lossy().into_owned();
    let said = cluster.on("node-1", &[&bin, "cleanup", "--pin-path", &pins])?;
    for (interface, hook, _) in hooks(&cluster, "node-1")? {
        // (cache-1's veth is among the hooks: it has been without our filters since it left.)
        let shown = filters(&cluster, "node-1", &interface, hook)?;
        ensure!(!shown.contains(FILTER_PREFIX), "cleanup left our filter on {interface} {hook}:\n{shown}\n{said}");
    }
    let shown = filters(&cluster, "node-1", &uplink, "ingress")?;
    ensure!(shown.contains("pref 100 u32"), "cleanup removed another tool's filter:\n{shown}");
    ensure!(!ping(&cluster.lab, &web1, &web2)?, "web-1 still reaches web-2 after cleanup");
    eprintln!("clsact test took {:?}", began.elapsed());
    Ok(())
}

#[test]
fn switching_attach_method_under_a_stream_leaves_one_attachment_per_hook() -> anyhow::Result<()> {
    let Some(mut cluster) = Cluster::up_or_skip("clsact method switch", TWO_NODES)? else { return Ok(()) };
    let began = Instant::now();
    cluster.start("node-1", &AgentOptions::default())?;
    cluster.start("node-2", &AgentOptions::default())?;
    expect_tcx(&cluster, "node-1")?;
    let (web1, web2) = (cluster.lab.pod(WEB_1)?.clone(), cluster.lab.pod(WEB_2)?.clone());
    let stream = Stream::start(&cluster.lab, &web1, &web2)?;
    let steady = SteadyPing::start(&cluster.lab, &web1, &web2)?;

    // tcx links pinned, the new agent told to use clsact: filters in, links out.
    cluster.start("node-1", &no_tcx())?;
    let log = cluster.log("node-1");
    ensure!(log.contains("attach=clsact") && log.contains("removed_link=true"), "no switch to clsact:\n{log}");
    expect_clsact(&cluster, "node-1")?;
    thread::sleep(Duration::from_secs(1));

    // And back: links in, filters out.
    cluster.start("node-1", &AgentOptions::default())?;
    let log = cluster.log("node-1");
    ensure!(log.contains("attach=tcx") && log.contains("removed_filter=true"), "no switch back to tcx:\n{log}");
    expect_tcx(&cluster, "node-1")?;
    let findings = program_findings(&cluster, "node-1")?;
    ensure!(findings.is_empty(), "`dataplane check` after the switches: {findings:?}");

    let steady_summary = steady.stop(&cluster.lab)?;
    let per_second = stream.finish()?;
    if !ping(&cluster.lab, &web1, &web2)? {
        bail!("web-1 cannot ping web-2 after the switches:\n{}", cluster.log("node-1"));
    }
    eprintln!(
        "method switches: Gbit/s per second of the stream: {per_second:.2?}; 10 ms ping across them: \
         {steady_summary}; test took {:?}",
        began.elapsed()
    );
    Ok(())
}
