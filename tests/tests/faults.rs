//! Load and faults in the lab, each with real traffic through the fast path: a flood of new
//! natOutgoing flows that fills the conntrack table and the SNAT port range, the datastore file
//! replaced with garbage under an iperf3 stream, the Kubernetes API gone for a minute under an
//! iperf3 stream, and a datastore of thousands of workloads and blocks. (The agent killed with
//! SIGKILL under iperf3 is `restart.rs`.)
//!
//! The Kubernetes API here is the tests' recorded-response server (`dataplane_tests::kube_api`,
//! see kubernetes_datastore.rs for why no real API server runs on this machine); the agents'
//! client side is the real one.
//!
//! Each test builds its own lab, runs the agents as separate processes, and tears everything down
//! when it ends, also on failure. Without root the tests print why they are skipped and pass.
//! Timings are printed, never asserted: the machine may be shared. The scale test runs 20k
//! blocks and 2k workloads in the suite; `DATAPLANE_FAULTS_FULL=1` runs the 100k blocks
//! and 10k workloads (over a minute on a debug agent).

use dataplane_tests::{
    agent_bin,
    kube_api::KubeApi,
    kube_example::{affinity, serve_example, AFFINITIES},
    workspace_root, NAT_3,
};
use std::{
    fs,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use dataplane_common::{CONNTRACK_MAP, ROUTES_MAP};
use dataplane_lab::{
    counters, iperf, udp_socket_in, wait_until, Agent, AgentOptions, ChildHandle, Lab, LabOptions, LabPod, AGENT_READY,
};
use serde_json::Value;

/// How long an agent may take to program its node (generous: the machine may be loaded).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a UDP datagram may take to arrive before it counts as lost.
const UDP_WAIT: Duration = Duration::from_secs(2);
/// The rate of the tests' iperf3 streams: these tests judge whether a stream stalls, not its
/// speed, and a capped stream leaves the shared machine's cores to the agents.
const STREAM_BITRATE: &str = "500M";
/// The UDP port of the tests' server on the external host.
const UDP_SERVER_PORT: u16 = 9000;
/// node-1's address in both example clusters: what the external host sees for SNAT flows.
const NODE_1_ADDR: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 11);

/// Skips (returns false) when not root; checks the agent binary exists.
fn can_run(test: &str) -> anyhow::Result<bool> {
    if dataplane_tests::skip_unless_root(test) {
        return Ok(false);
    }
    let bin = agent_bin();
    ensure!(bin.exists(), "agent binary {} does not exist: build it with `cargo build -p dataplane`", bin.display());
    Ok(true)
}

/// A lab for the cluster in `yaml`, with `yaml` written as a datastore file in the lab's
/// directory that the test may rewrite.
fn lab_with_datastore(yaml: &str) -> anyhow::Result<(Lab, PathBuf)> {
    let (model, problems) = dataplane::datastore::file::parse(yaml)?;
    ensure!(problems.is_empty(), "the test cluster has resources the dataplane skips: {problems:?}");
    let lab = Lab::up(&model, LabOptions::default())?;
    let datastore = lab.dir().join("datastore.yaml");
    fs::write(&datastore, yaml).with_context(|| format!("writing {}", datastore.display()))?;
    Ok((lab, datastore))
}

/// Starts the agent of `node` reading `datastore`, with `args` after the usual ones, and waits
/// until it has programmed its node.
fn start_agent(lab: &Lab, node: &str, datastore: &Path, args: &[&str]) -> anyhow::Result<Agent> {
    let options = AgentOptions { args: args.iter().map(|a| (*a).to_owned()).collect(), ..AgentOptions::default() };
    let mut agent = lab.start_agent_with(node, &agent_bin(), datastore, &options)?;
    agent.wait_ready(READY_TIMEOUT)?;
    Ok(agent)
}

/// Reads one file of the example clusters.
fn example(name: &str) -> anyhow::Result<String> {
    let path = workspace_root().join("examples").join(name);
    fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// A field of /proc/<pid>/status in KiB (VmRSS, VmHWM).
fn memory_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
        .with_context(|| format!("no {field} in {path}"))
}

/// One counter of `dataplane stats` on `node` (a decision or a drop reason).
fn stat(lab: &Lab, node: &str, name: &str) -> anyhow::Result<u64> {
    counters::one(&agent_bin(), &lab.pin_path(node), name)
}

/// The pinned map `name` of `node` as bpftool sees it: (max_entries, entries now).
fn map_occupancy(lab: &Lab, node: &str, name: &str) -> anyhow::Result<(u64, usize)> {
    let pin = lab.pin_path(node).join(name).to_string_lossy().into_owned();
    let show = dataplane_lab::cmd::run(&["bpftool", "-j", "map", "show", "pinned", &pin])?;
    let show: Value = serde_json::from_slice(&show.stdout).context("bpftool map show did not print JSON")?;
    let max = show["max_entries"].as_u64().with_context(|| format!("no max_entries in {show}"))?;
    let dump = dataplane_lab::cmd::run(&["bpftool", "-j", "map", "dump", "pinned", &pin])?;
    let dump: Value = serde_json::from_slice(&dump.stdout).context("bpftool map dump did not print JSON")?;
    let entries = dump.as_array().with_context(|| format!("bpftool map dump of {pin} is not a list"))?.len();
    Ok((max, entries))
}

/// Receives every datagram that arrives at `server` until none comes for `UDP_WAIT`: where
/// each came from (as the external host sees it) and what it said.
fn drain(server: &UdpSocket) -> anyhow::Result<Vec<(SocketAddrV4, String)>> {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 256];
    loop {
        match server.recv_from(&mut buffer) {
            Ok((len, std::net::SocketAddr::V4(from))) => {
                seen.push((from, String::from_utf8_lossy(&buffer[..len]).into_owned()));
            }
            Ok((_, from)) => bail!("an IPv6 sender: {from}"),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Ok(seen)
            }
            Err(e) => return Err(e).context("receiving on the external host"),
        }
    }
}

/// Sends `message` from `flow` to the server and back: Some(source seen by the server) when
/// the datagram arrived and the server's answer reached the pod, None when it never arrived.
fn exchange(
    flow: &UdpSocket,
    server: &UdpSocket,
    to: SocketAddrV4,
    message: &str,
) -> anyhow::Result<Option<SocketAddrV4>> {
    flow.send_to(message.as_bytes(), to).context("sending from the pod")?;
    let Some((seen_as, _)) = drain(server)?.into_iter().find(|(_, text)| text == message) else {
        return Ok(None);
    };
    server.send_to(message.as_bytes(), seen_as).context("answering from the external host")?;
    let mut buffer = [0u8; 256];
    let (len, _) =
        flow.recv_from(&mut buffer).with_context(|| format!("the answer to {message:?} never reached the pod"))?;
    ensure!(&buffer[..len] == message.as_bytes(), "the pod got {:?} instead of its answer", &buffer[..len]);
    Ok(Some(seen_as))
}

/// Starts `iperf3 -s -1` in `server_netns` and a client of `seconds` in `client`'s namespace
/// towards `server_addr`, at most `bitrate` (iperf3's `-b`, e.g. `200M`; `0` is unlimited);
/// returns (server, client) once the stream carries data.
fn iperf3_stream(
    lab: &Lab,
    server_netns: &str,
    server_addr: Ipv4Addr,
    client: &LabPod,
    seconds: u32,
    bitrate: &str,
) -> anyhow::Result<(ChildHandle, ChildHandle)> {
    let mut server = lab.spawn(server_netns, &["iperf3", "-s", "-1", "--forceflush"], "iperf3-server")?;
    server.wait_for_log("Server listening", Duration::from_secs(20))?;
    let (addr, time) = (server_addr.to_string(), seconds.to_string());
    let client = lab.spawn(
        &client.netns,
        &["iperf3", "-c", &addr, "-t", &time, "-b", bitrate, "-J", "--connect-timeout", "5000"],
        "iperf3-client",
    )?;
    iperf::wait_for_first_second(&mut server, Duration::from_secs(20))?;
    Ok((server, client))
}

/// Waits for the iperf3 client to end and checks that every second of its stream carried data
/// (the stream never stalled); returns the Gbit/s of each second.
fn stream_never_stalled(mut client: ChildHandle, seconds: u32) -> anyhow::Result<Vec<f64>> {
    let status = client
        .wait_timeout(Duration::from_secs(u64::from(seconds) + 60))?
        .with_context(|| format!("iperf3 did not finish:\n{}", client.log()))?;
    let report = client.log();
    ensure!(status.success(), "iperf3 failed:\n{report}");
    let stream = iperf::parse(&report)?;
    iperf::ensure_never_stalled(&stream, seconds as usize).with_context(|| format!("iperf3 report:\n{report}"))?;
    Ok(stream.per_second)
}

/// The conntrack table of the flood test: small so that a few dozen flows fill it.
const FLOOD_CONNTRACK_MAX: u64 = 64;
/// The SNAT port range of the flood test: two ports, so that three collisions exhaust it.
const FLOOD_PORTS: std::ops::RangeInclusive<u16> = 40000..=40001;
/// Flows the flood opens once the table has room for fewer than half of them.
const FLOOD_FLOWS: u16 = 120;
/// Seconds of the TCP stream that runs across the flood.
const FLOOD_STREAM_SECONDS: u32 = 14;

#[test]
fn a_flood_of_new_flows_fills_conntrack_and_the_port_range_and_old_flows_keep_passing() -> anyhow::Result<()> {
    let test = "a_flood_of_new_flows_fills_conntrack_and_the_port_range_and_old_flows_keep_passing";
    if !can_run(test)? {
        return Ok(());
    }
    let yaml = format!("{}---\n{NAT_3}", example("nat.yaml")?);
    let (lab, datastore) = lab_with_datastore(&yaml)?;
    let (max_arg, range_arg) =
        (FLOOD_CONNTRACK_MAX.to_string(), format!("{}-{}", FLOOD_PORTS.start(), FLOOD_PORTS.end()));
    let agent =
        start_agent(&lab, "node-1", &datastore, &["--conntrack-max", &max_arg, "--nat-port-range", &range_arg])?;
    let _node2 = start_agent(&lab, "node-2", &datastore, &[])?;
    let (max_entries, _) = map_occupancy(&lab, "node-1", CONNTRACK_MAP)?;
    ensure!(max_entries == FLOOD_CONNTRACK_MAX, "--conntrack-max {FLOOD_CONNTRACK_MAX} made a map of {max_entries}");
    let rss_before = memory_kib(agent.pid(), "VmRSS")?;

    let nat1 = lab.pod("default/nat-1")?.clone();
    let nat3 = lab.pod("default/nat-3")?.clone();
    let external = lab.external().clone();
    let server = udp_socket_in(&external.netns, UDP_SERVER_PORT, Some(UDP_WAIT))?;
    let to = SocketAddrV4::new(external.addr, UDP_SERVER_PORT);

    // Opened before the flood: a UDP flow and a TCP stream (iperf3 to the external host).
    let long_lived = udp_socket_in(&nat1.netns, 7000, Some(UDP_WAIT))?;
    let seen = exchange(&long_lived, &server, to, "before the flood")?
        .context("nat-1:7000 never reached the external host")?;
    ensure!(*seen.ip() == NODE_1_ADDR, "nat-1:7000 arrived as {seen}, not from {NODE_1_ADDR}");
    let (_iperf_server, stream) =
        iperf3_stream(&lab, &external.netns, external.addr, &nat1, FLOOD_STREAM_SECONDS, STREAM_BITRATE)?;

    // Port range: nat-1 and nat-3 send from the same five ports; nat-1's keep their ports,
    // nat-3's collide, two take the range's ports and three find it exhausted.
    let (exhausted_before, full_before) =
        (stat(&lab, "node-1", "drop_nat_ports_exhausted")?, stat(&lab, "node-1", "drop_conntrack_full")?);
    let mut sockets = Vec::new();
    for pod in [&nat1, &nat3] {
        for port in 20001..=20005 {
            let socket = udp_socket_in(&pod.netns, port, Some(UDP_WAIT))?;
            socket.send_to(format!("{} {port}", pod.key).as_bytes(), to)?;
            sockets.push(socket);
        }
    }
    let arrived = drain(&server)?;
    let from_nat3: Vec<u16> =
        arrived.iter().filter(|(_, text)| text.starts_with("default/nat-3")).map(|(from, _)| from.port()).collect();
    let exhausted = stat(&lab, "node-1", "drop_nat_ports_exhausted")? - exhausted_before;
    eprintln!("port range {range_arg}: nat-3's colliding flows arrived from ports {from_nat3:?}; drop_nat_ports_exhausted +{exhausted}");
    ensure!(
        arrived.iter().filter(|(_, text)| text.starts_with("default/nat-1")).count() == 5,
        "nat-1's five flows did not all arrive: {arrived:?}"
    );
    ensure!(
        from_nat3.len() == 2 && from_nat3.iter().all(|port| FLOOD_PORTS.contains(port)),
        "nat-3's colliding flows should take exactly the range's two ports: {from_nat3:?}"
    );
    ensure!(exhausted == 3, "drop_nat_ports_exhausted counted {exhausted}, not the 3 flows beyond the range");

    // The flood: many new flows from nat-1 until the table is full.
    let started = Instant::now();
    for port in 21000..21000 + FLOOD_FLOWS {
        let socket = udp_socket_in(&nat1.netns, port, Some(UDP_WAIT))?;
        socket.send_to(format!("flood {port}").as_bytes(), to)?;
        sockets.push(socket);
    }
    let sent_in = started.elapsed();
    let admitted = drain(&server)?.iter().filter(|(_, text)| text.starts_with("flood")).count();
    let full = stat(&lab, "node-1", "drop_conntrack_full")? - full_before;
    let (max_entries, occupancy) = map_occupancy(&lab, "node-1", CONNTRACK_MAP)?;
    eprintln!(
        "flood: {FLOOD_FLOWS} new flows sent in {sent_in:?}; {admitted} admitted, drop_conntrack_full +{full}; \
         conntrack {occupancy}/{max_entries} entries"
    );
    ensure!(occupancy as u64 <= max_entries, "conntrack holds {occupancy} entries, beyond its {max_entries}");
    ensure!(admitted < usize::from(FLOOD_FLOWS), "every flood flow got through: the table never filled");
    ensure!(
        full == u64::from(FLOOD_FLOWS) - admitted as u64,
        "drop_conntrack_full counted {full}, but {} flood flows were refused",
        usize::from(FLOOD_FLOWS) - admitted
    );
    // Two entries per flow: a full table has no room for one more flow.
    ensure!(occupancy as u64 + 2 > max_entries, "the table refused flows with {occupancy}/{max_entries} entries");

    // Full: one more new flow is refused and counted; the flows opened before keep passing.
    let late = udp_socket_in(&nat1.netns, 22000, Some(UDP_WAIT))?;
    ensure!(exchange(&late, &server, to, "one more")?.is_none(), "a new flow passed though conntrack was full");
    ensure!(stat(&lab, "node-1", "drop_conntrack_full")? > full_before + full, "the refused flow was not counted");
    let again = exchange(&long_lived, &server, to, "after the flood")?
        .context("nat-1:7000 stopped passing once conntrack was full")?;
    ensure!(again == seen, "nat-1:7000 now arrives as {again}, not {seen}");
    let per_second = stream_never_stalled(stream, FLOOD_STREAM_SECONDS)?;
    let (_, occupancy_after) = map_occupancy(&lab, "node-1", CONNTRACK_MAP)?;
    ensure!(occupancy_after as u64 <= max_entries, "conntrack holds {occupancy_after} entries, beyond {max_entries}");
    let rss_after = memory_kib(agent.pid(), "VmRSS")?;
    eprintln!(
        "TCP stream across the flood, Gbit/s per second: {per_second:.2?}; agent RSS {rss_before} KiB before, \
         {rss_after} KiB after; conntrack {occupancy_after}/{max_entries} at the end"
    );
    // The flood lives in the kernel's fixed-size map; the agent only sweeps it. A generous
    // ceiling, far above the tens of MiB it uses, that a leak per flow would still cross.
    ensure!(rss_after < 512 * 1024, "the agent grew to {rss_after} KiB RSS during the flood");
    drop(sockets);
    Ok(())
}

/// GET `path` from an agent's metrics endpoint at `addr` inside `netns`; returns the body.
fn metrics_get(netns: &str, addr: &str, path: &str) -> anyhow::Result<String> {
    Ok(dataplane_lab::http_get(netns, addr, path)?.1)
}

/// The value of sample `name` in a Prometheus text body.
fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The routes= field of the agent's last "fast path programmed" line.
fn last_routes(log: &str) -> Option<u64> {
    let line = log.lines().rfind(|line| line.contains(AGENT_READY))?;
    let rest = &line[line.find(" routes=")? + " routes=".len()..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Where node-1's agent serves metrics in the garbage test, inside node-1's namespace.
const METRICS_ADDR: &str = "127.0.0.1:9091";
/// Seconds of the stream that runs while the datastore is garbage.
const GARBAGE_STREAM_SECONDS: u32 = 12;
/// A block node-2 claims once the file is good again: the update that shows updates resumed.
const EXTRA_AFFINITY: &str = "\
---
apiVersion: crd.projectcalico.org/v1
kind: BlockAffinity
metadata:
  name: node-2-10-244-2-64-26
spec:
  cidr: 10.244.2.64/26
  node: node-2
  state: confirmed
";

#[test]
fn a_garbage_datastore_keeps_the_last_good_state_under_an_iperf3_stream() -> anyhow::Result<()> {
    let test = "a_garbage_datastore_keeps_the_last_good_state_under_an_iperf3_stream";
    if !can_run(test)? {
        return Ok(());
    }
    let good = example("two-nodes.yaml")?;
    let (lab, datastore) = lab_with_datastore(&good)?;
    let agent = start_agent(&lab, "node-1", &datastore, &["--metrics-addr", METRICS_ADDR])?;
    let _node2 = start_agent(&lab, "node-2", &datastore, &[])?;
    let netns = lab.node_netns("node-1")?.to_owned();
    let routes = last_routes(&agent.log()).with_context(|| agent.log())?;
    let routes_map = |lab: &Lab| -> anyhow::Result<usize> { Ok(map_occupancy(lab, "node-1", ROUTES_MAP)?.1) };
    let routes_before = routes_map(&lab)?;

    let web1 = lab.pod("default/web-1")?.clone();
    let web2 = lab.pod("default/web-2")?.clone();
    let (_server, stream) = iperf3_stream(&lab, &web2.netns, web2.addr, &web1, GARBAGE_STREAM_SECONDS, STREAM_BITRATE)?;

    // Garbage: the agent says so in its log and its metrics, and keeps what it programmed.
    let broke = Instant::now();
    fs::write(&datastore, "{ this is not YAML: [\u{0}\u{1}")?;
    let log_line = "datastore file unusable, keeping the last good state";
    wait_until("the agent logging the unusable file", Duration::from_secs(20), || Ok(agent.log().contains(log_line)))?;
    wait_until("dataplane_datastore_up reading 0", Duration::from_secs(20), || {
        Ok(sample(&metrics_get(&netns, METRICS_ADDR, "/metrics")?, "dataplane_datastore_up") == Some(0.0))
    })?;
    let reported = broke.elapsed();
    thread::sleep(Duration::from_secs(4));
    ensure!(routes_map(&lab)? == routes_before, "the routes map changed while the datastore was garbage");
    ensure!(
        last_routes(&agent.log()) == Some(routes),
        "the agent reprogrammed while the datastore was garbage:\n{}",
        agent.log()
    );

    // Good again, with one more block: the metric comes back and the update is programmed.
    let repaired = Instant::now();
    fs::write(&datastore, format!("{good}\n{EXTRA_AFFINITY}"))?;
    wait_until("dataplane_datastore_up reading 1 again", Duration::from_secs(20), || {
        Ok(sample(&metrics_get(&netns, METRICS_ADDR, "/metrics")?, "dataplane_datastore_up") == Some(1.0))
    })?;
    wait_until("the extra block programmed after the repair", Duration::from_secs(20), || {
        Ok(last_routes(&agent.log()) == Some(routes + 1))
    })?;
    let resumed = repaired.elapsed();
    ensure!(routes_map(&lab)? == routes_before + 1, "the routes map did not gain the extra block");
    let body = metrics_get(&netns, METRICS_ADDR, "/metrics")?;
    ensure!(sample(&body, "dataplane_datastore_losses_total") == Some(1.0), "losses after the repair:\n{body}");

    let per_second = stream_never_stalled(stream, GARBAGE_STREAM_SECONDS)?;
    eprintln!(
        "garbage reported (log + metric) {reported:?} after the write; repair programmed {resumed:?} after; \
         routes map {routes_before} -> {}; stream Gbit/s per second: {per_second:.2?}",
        routes_before + 1
    );
    Ok(())
}

/// The scale test's default size, run in the suite: blocks and workloads of generated nodes.
const SCALE_DEFAULT: (usize, usize) = (20_000, 2_000);
/// The size, with `DATAPLANE_FAULTS_FULL=1`.
const SCALE_FULL: (usize, usize) = (100_000, 10_000);
/// The memory bound the agent must stay within at either size (VmHWM): generous, several times
/// what it needs, so that only a leak or a per-block blow-up crosses it.
const SCALE_MEMORY_BOUND_KIB: u64 = 1024 * 1024;

/// A numeric field (`peers=3`) of the agent's last "fast path programmed" line.
fn last_field(log: &str, field: &str) -> Option<u64> {
    let line = log.lines().rfind(|line| line.contains(AGENT_READY))?;
    let needle = format!(" {field}=");
    let rest = &line[line.find(&needle)? + needle.len()..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[test]
fn thousands_of_workloads_and_blocks_converge_within_a_memory_bound() -> anyhow::Result<()> {
    let test = "thousands_of_workloads_and_blocks_converge_within_a_memory_bound";
    if !can_run(test)? {
        return Ok(());
    }
    let (blocks, workloads) =
        if std::env::var_os("DATAPLANE_FAULTS_FULL").is_some_and(|v| v == "1") { SCALE_FULL } else { SCALE_DEFAULT };
    let small = example("two-nodes.yaml")?;
    let (lab, small_datastore) = lab_with_datastore(&small)?;
    // node-1 reads the big cluster; node-2 the example alone (it only has to carry the pings).
    let yaml = dataplane_lab::scale::cluster(&small, blocks, workloads);
    let datastore = lab.dir().join("scale.yaml");
    fs::write(&datastore, &yaml).with_context(|| format!("writing {}", datastore.display()))?;
    // What node-1 programs for the example plus the generated pool alone; each generated block
    // adds one route, each generated node one peer.
    let (small_model, _) = dataplane::datastore::file::parse(&dataplane_lab::scale::cluster(&small, 0, 0))?;
    let (small_plan, _) = dataplane::plan::compute(&small_model, "node-1")?;
    let nodes = blocks.div_ceil(dataplane_lab::scale::BLOCKS_PER_NODE);
    let want_routes = (small_plan.routes.len() + blocks) as u64;

    let started = Instant::now();
    let mut agent = lab.start_agent_with("node-1", &agent_bin(), &datastore, &AgentOptions::default())?;
    // A debug agent parses 100k blocks in about a minute on a quiet machine; this one may not be.
    agent.wait_ready(Duration::from_secs(900))?;
    let converged = started.elapsed();
    let _node2 = start_agent(&lab, "node-2", &small_datastore, &[])?;
    let log = agent.log();
    let reconcile_ms = last_field(&log, "elapsed_ms");
    ensure!(last_field(&log, "routes") == Some(want_routes), "routes: want {want_routes}\n{log}");
    ensure!(
        last_field(&log, "peers") == Some((small_plan.peers.len() + nodes) as u64),
        "peers: want {} + {nodes}\n{log}",
        small_plan.peers.len()
    );
    // Only this node's pods are delivered to; the generated nodes' workloads are theirs.
    ensure!(last_field(&log, "workloads") == Some(small_plan.workloads.len() as u64), "workloads\n{log}");
    let (routes_max, routes_held) = map_occupancy(&lab, "node-1", ROUTES_MAP)?;
    ensure!(routes_held as u64 == want_routes, "the routes map holds {routes_held} of {want_routes} routes");

    // The fast path carries traffic both ways with the big plan in place.
    let web1 = lab.pod("default/web-1")?.clone();
    let web2 = lab.pod("default/web-2")?.clone();
    for (from, to) in [(&web1, &web2), (&web2, &web1)] {
        let to_addr = to.addr.to_string();
        let ok = (0..5).any(|_| {
            lab.exec_status(&from.netns, &["ping", "-c", "1", "-W", "2", &to_addr]).is_ok_and(|o| o.status.success())
        });
        ensure!(ok, "{} cannot ping {} with {blocks} blocks programmed\n{}", from.key, to.key, agent.log());
    }
    let peak = memory_kib(agent.pid(), "VmHWM")?;
    let rss = memory_kib(agent.pid(), "VmRSS")?;
    eprintln!(
        "{blocks} blocks on {nodes} nodes, {workloads} workloads ({} MB of YAML): agent ready {converged:?} after \
         its start (its reconcile {reconcile_ms:?} ms); routes map {routes_held}/{routes_max}; VmHWM {} MiB, \
         VmRSS {} MiB (bound {} MiB)",
        yaml.len() / 1_000_000,
        peak / 1024,
        rss / 1024,
        SCALE_MEMORY_BOUND_KIB / 1024
    );
    ensure!(peak < SCALE_MEMORY_BOUND_KIB, "the agent peaked at {peak} KiB, beyond {SCALE_MEMORY_BOUND_KIB} KiB");
    Ok(())
}

/// How long the Kubernetes API is gone.
const OUTAGE: Duration = Duration::from_secs(60);
/// Seconds of the stream across the outage: the outage, the reconnect (backoff capped at 5 s)
/// and the change after it, with room.
const OUTAGE_STREAM_SECONDS: u32 = 75;
/// The rate of that stream: low, since it runs for over a minute on a shared machine.
const OUTAGE_BITRATE: &str = "100M";

#[test]
fn an_iperf3_stream_survives_the_kubernetes_api_gone_for_a_minute() -> anyhow::Result<()> {
    let test = "an_iperf3_stream_survives_the_kubernetes_api_gone_for_a_minute";
    if !can_run(test)? {
        return Ok(());
    }
    let (lab, _) = lab_with_datastore(&example("two-nodes.yaml")?)?;
    // The API server listens in the fabric namespace on the nodes' gateway, as in
    // kubernetes_datastore.rs: the agents reach it over their uplinks.
    let gateway = lab.node("node-1")?.gateway;
    let fabric = PathBuf::from(dataplane_lab::cmd::netns_path(lab.fabric_netns()));
    let mut api = KubeApi::start_at(lab.prefix(), std::net::SocketAddr::new(gateway.into(), 6443), Some(fabric))?;
    serve_example(&api);
    let kubeconfig = api.kubeconfig()?.to_string_lossy().into_owned();
    let bin = agent_bin().to_string_lossy().into_owned();
    let mut agents = Vec::new();
    for node in ["node-1", "node-2"] {
        let pin = lab.pin_path(node).to_string_lossy().into_owned();
        let argv = [
            &*bin,
            "run",
            "--datastore",
            "kubernetes",
            "--kubeconfig",
            &kubeconfig,
            "--node",
            node,
            "--pin-path",
            &pin,
        ];
        let mut agent = lab.spawn(lab.node_netns(node)?, &argv, &format!("agent-{node}"))?;
        agent.wait_for_log(AGENT_READY, READY_TIMEOUT)?;
        agents.push(agent);
    }
    let routes_before: Vec<usize> = ["node-1", "node-2"]
        .iter()
        .map(|node| Ok(map_occupancy(&lab, node, ROUTES_MAP)?.1))
        .collect::<anyhow::Result<_>>()?;
    let web1 = lab.pod("default/web-1")?.clone();
    let web2 = lab.pod("default/web-2")?.clone();
    let (_server, stream) = iperf3_stream(&lab, &web2.netns, web2.addr, &web1, OUTAGE_STREAM_SECONDS, OUTAGE_BITRATE)?;

    // Gone: each agent says it lost the API and keeps what it programmed.
    let programmed_before: Vec<usize> = agents.iter().map(|a| a.log().matches(AGENT_READY).count()).collect();
    api.stop();
    let stopped = Instant::now();
    for agent in &agents {
        wait_until("the agent logging the lost API", Duration::from_secs(30), || {
            Ok(agent.log().contains("lost the connection to the Kubernetes API"))
        })?;
    }
    thread::sleep(OUTAGE.saturating_sub(stopped.elapsed()));
    for (index, (agent, node)) in agents.iter().zip(["node-1", "node-2"]).enumerate() {
        ensure!(
            agent.log().contains("the Kubernetes API is still unreachable"),
            "{node}'s agent did not report the API still unreachable:\n{}",
            agent.log()
        );
        let routes = map_occupancy(&lab, node, ROUTES_MAP)?.1;
        ensure!(
            routes == routes_before[index],
            "{node}'s routes map went from {} to {routes} without the API",
            routes_before[index]
        );
    }

    // Back: each agent reconnects and resyncs (a fresh list, then a reconcile).
    let restarted = Instant::now();
    api.start()?;
    let mut resynced = Vec::new();
    for (agent, before) in agents.iter().zip(&programmed_before) {
        wait_until("the agent reconnecting", Duration::from_secs(60), || {
            Ok(agent.log().contains("reconnected to the Kubernetes API"))
        })?;
        wait_until("the resync after the reconnect", Duration::from_secs(60), || {
            Ok(agent.log().matches(AGENT_READY).count() > *before)
        })?;
        resynced.push(restarted.elapsed());
    }
    // A change made after the return is programmed: node-2 claims a second block.
    let routes = last_routes(&agents[0].log()).with_context(|| agents[0].log())?;
    let changed = Instant::now();
    api.apply(AFFINITIES, affinity("node-2", "10.244.2.64/26"));
    wait_until("node-1 programming node-2's new block", Duration::from_secs(60), || {
        Ok(last_routes(&agents[0].log()) == Some(routes + 1))
    })?;
    let change_took = changed.elapsed();
    ensure!(map_occupancy(&lab, "node-1", ROUTES_MAP)?.1 == routes_before[0] + 1, "the routes map lacks the new block");

    let per_second = stream_never_stalled(stream, OUTAGE_STREAM_SECONDS)?;
    let slowest = per_second.iter().copied().fold(f64::INFINITY, f64::min);
    eprintln!(
        "API gone {OUTAGE:?}; resynced {resynced:?} after its return; a change after the return programmed in \
         {change_took:?}; stream of {OUTAGE_STREAM_SECONDS} s at {OUTAGE_BITRATE}: slowest second {slowest:.3} Gbit/s"
    );
    drop(agents);
    drop(api);
    Ok(())
}
