//! Throughput in the lab: iperf3 pod -> pod across two nodes (and pod -> external host for SNAT)
//! through the fast path and its baselines, every path up at once and the runs taken in turn.
//!
//! - **BPF VXLAN / IPIP / Never**: examples/two-nodes.yaml, ipip.yaml, never.yaml with one agent
//!   per node.
//! - **kernel vxlan**: two-nodes.yaml with no agent, both nodes configured as Calico's VXLAN mode
//!   configures them with the kernel's own `vxlan.calico` device ([`kernel_calico`]).
//! - **plain routing**: no agent and no encapsulation, `<block> via <peer node>` on both nodes:
//!   the ceiling.
//! - **BPF SNAT** and **nft masquerade**: web-1 to the external host (outside every pool) through
//!   the agent's natOutgoing, and through plain routing plus one nftables masquerade rule.
//!
//! Every pod has its pool's MTU (1450 for VXLAN, 1480 for IPIP, 1500 otherwise, as Calico sets
//! it); the plain path keeps 1450 (the same segments as the VXLAN paths it is the ceiling of).
//! Tests: one TCP stream, four TCP streams (`-P 4`), and UDP with 18-byte payloads (64-byte
//! frames on the wire with the FCS) at full speed, whose figure is the packets per second the
//! receiver got. CPU: the iperf3 client's and server's own CPU time over the run (the client's
//! from getrusage of the reaped children, the server's from its threads' schedstat), as cores
//! busy, divided by Gbit/s. This kernel has no IRQ time accounting, so the softirq work done in
//! their context (the veth receive side, the programs, GRO, the stack) is in it; work deferred to
//! ksoftirqd is not. The machine's own busy time would count the other work on a shared machine.

use std::{path::Path, time::Duration};

use anyhow::{bail, ensure, Context as _};
use dataplane_lab::{kernel_calico, Agent, ChildHandle, Lab, LabOptions, LabPod};

use crate::stats::{children_cpu_ns, median, process_cpu_ns};

/// The client pod (on node-1) and the server pod (on node-2).
pub const CLIENT: &str = "default/web-1";
/// See [`CLIENT`].
pub const SERVER: &str = "default/web-2";
/// How long an agent may take to program its node.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// UDP payload of the packet-rate test: 18 + 8 + 20 + 14 + 4 (FCS) = 64 bytes on the wire.
const UDP_PAYLOAD: &str = "18";

/// One iperf3 test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Test {
    /// One TCP stream, Gbit/s.
    Tcp1,
    /// Four TCP streams, Gbit/s.
    Tcp4,
    /// UDP 64-byte frames as fast as iperf3 sends them, Mpps received.
    Udp64,
}

impl Test {
    /// Every test, in table order.
    pub const ALL: [Test; 3] = [Test::Tcp1, Test::Tcp4, Test::Udp64];

    /// Column title.
    pub fn title(self) -> &'static str {
        match self {
            Test::Tcp1 => "TCP 1 stream (Gbit/s)",
            Test::Tcp4 => "TCP 4 streams (Gbit/s)",
            Test::Udp64 => "UDP 64 B (Mpps)",
        }
    }
}

/// Options of the throughput part.
#[derive(Clone, Copy, Debug)]
pub struct Effort {
    /// Seconds per iperf3 run.
    pub seconds: u32,
    /// Runs per path and test.
    pub repetitions: u32,
}

/// One run's figure.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Gbit/s for TCP, Mpps for UDP.
    pub value: f64,
    /// Gbit/s carried (for CPU per Gbit/s; UDP counts its bits too).
    pub gbits: f64,
    /// Cores the iperf3 client and server kept busy over the run (with the softirq work the
    /// kernel did in their context: the veths' receive side, the programs, the stack).
    pub cores: f64,
}

/// A path's results.
#[derive(Clone, Debug)]
pub struct PathResult {
    /// Short name.
    pub name: &'static str,
    /// How it is built.
    pub how: String,
    /// Runs per test, in [`Test::ALL`] order.
    pub samples: Vec<(Test, Vec<Sample>)>,
}

impl PathResult {
    /// The median figure of `test` (0 when not run).
    pub fn median(&self, test: Test) -> f64 {
        self.samples
            .iter()
            .find(|(t, _)| *t == test)
            .map_or(0.0, |(_, s)| median(&s.iter().map(|s| s.value).collect::<Vec<_>>()))
    }

    /// Median cores busy per Gbit/s of `test`.
    pub fn cores_per_gbit(&self, test: Test) -> f64 {
        self.samples.iter().find(|(t, _)| *t == test).map_or(f64::NAN, |(_, s)| {
            median(&s.iter().filter(|s| s.gbits > 0.0).map(|s| s.cores / s.gbits).collect::<Vec<_>>())
        })
    }
}

/// Everything the throughput part measured.
#[derive(Clone, Debug)]
pub struct Throughput {
    /// Pod -> pod paths: BPF VXLAN, BPF IPIP, BPF Never, kernel vxlan, plain routing.
    pub pod_to_pod: Vec<PathResult>,
    /// Pod -> external host: BPF SNAT, nft masquerade.
    pub snat: Vec<PathResult>,
    /// Sanity: packets the BPF VXLAN path encapsulated and the kernel's device sent.
    pub bpf_encapsulated: u64,
    /// See [`Throughput::bpf_encapsulated`].
    pub kernel_sent: u64,
    /// Seconds per run and runs.
    pub effort: Effort,
}

/// One path under test: its lab and what keeps it running. Fields drop in order: the iperf3
/// server and the agents stop before the lab is torn down.
struct PathUnderTest {
    name: &'static str,
    how: String,
    server: ChildHandle,
    _agents: Vec<Agent>,
    client: LabPod,
    /// Where the client sends: the server pod or the external host.
    target: String,
    samples: Vec<(Test, Vec<Sample>)>,
    lab: Lab,
}

/// Runs every path and test.
pub fn run(workspace: &Path, agent: &Path, effort: Effort) -> anyhow::Result<Throughput> {
    let example = |name: &str| workspace.join("examples").join(name);
    let vxlan_yaml = example("two-nodes.yaml");
    let vxlan = dataplane_lab::load_model(&vxlan_yaml)?;
    let ipip_yaml = example("ipip.yaml");
    let never_yaml = example("never.yaml");

    println!("==> Bringing up seven labs (each path its own)");
    let mut paths = Vec::new();
    let how = "one agent per node (tc programs, VXLAN in BPF)";
    paths.push(agent_path("BPF VXLAN", how, &vxlan_yaml, agent, Target::Pod)?);
    let how = "one agent per node (tc programs, IP-in-IP in BPF)";
    paths.push(agent_path("BPF IPIP", how, &ipip_yaml, agent, Target::Pod)?);
    let how = "one agent per node (tc programs, no encapsulation)";
    paths.push(agent_path("BPF Never", how, &never_yaml, agent, Target::Pod)?);
    paths.push(kernel_vxlan_path(&vxlan)?);
    paths.push(plain_path(&vxlan, None)?);
    let how = "one agent per node, natOutgoing in BPF (web-1 -> external host)";
    paths.push(agent_path("BPF SNAT", how, &vxlan_yaml, agent, Target::External)?);
    paths.push(plain_path(&vxlan, Some(Masquerade))?);
    for path in &paths {
        println!("  {:<16} lab {}: {}", path.name, path.lab.prefix(), path.how);
    }

    // Warm-up: the first stream of a fresh path pays for neighbour resolution and cold caches.
    for path in &paths {
        iperf(path, Test::Tcp1, 1).with_context(|| format!("warm-up stream through the {} path", path.name))?;
    }
    let before_bpf = bpf_encap_count(&paths[0], agent)?;
    let before_kernel = vxlan_device_tx(&paths[3])?;

    println!(
        "==> {} x {} s per path and test (TCP 1 stream, TCP 4 streams, UDP 64 B), paths in turn",
        effort.repetitions, effort.seconds
    );
    for repetition in 1..=effort.repetitions {
        for test in Test::ALL {
            for path in &mut paths {
                let sample = iperf(path, test, effort.seconds)
                    .with_context(|| format!("{test:?} through the {} path", path.name))?;
                let unit = if test == Test::Udp64 { "Mpps" } else { "Gbit/s" };
                println!(
                    "  run {repetition}: {:<16} {:<24} {:7.3} {unit:<6} ({:.2} cores busy)",
                    path.name,
                    test.title(),
                    sample.value,
                    sample.cores
                );
                match path.samples.iter_mut().find(|(t, _)| *t == test) {
                    Some((_, samples)) => samples.push(sample),
                    None => path.samples.push((test, vec![sample])),
                }
            }
        }
    }

    // The paths were what they claim: the fast path encapsulated, the kernel's device sent.
    let bpf_encapsulated = bpf_encap_count(&paths[0], agent)?.saturating_sub(before_bpf);
    ensure!(bpf_encapsulated > 0, "the BPF path's encap_vxlan counter did not grow: the fast path carried nothing");
    let kernel_sent = vxlan_device_tx(&paths[3])?.saturating_sub(before_kernel);
    ensure!(kernel_sent > 0, "vxlan.calico sent no packets on the kernel path");

    let results: Vec<PathResult> =
        paths.iter().map(|p| PathResult { name: p.name, how: p.how.clone(), samples: p.samples.clone() }).collect();
    // Tear the labs down before returning: nothing else should be left running.
    drop(paths);
    let (pod_to_pod, snat) = results.split_at(5);
    Ok(Throughput { pod_to_pod: pod_to_pod.to_vec(), snat: snat.to_vec(), bpf_encapsulated, kernel_sent, effort })
}

/// Where a path's client sends.
#[derive(Clone, Copy, PartialEq)]
enum Target {
    /// The server pod on node-2.
    Pod,
    /// The lab's external host.
    External,
}

/// A fast-path lab: one agent per node on `datastore`.
fn agent_path(
    name: &'static str,
    how: &str,
    datastore: &Path,
    agent: &Path,
    target: Target,
) -> anyhow::Result<PathUnderTest> {
    let model = dataplane_lab::load_model(datastore)?;
    let lab = Lab::up(&model, LabOptions::default())?;
    let mut agents = Vec::new();
    let nodes: Vec<String> = lab.nodes().map(|n| n.name.clone()).collect();
    for node in &nodes {
        agents.push(lab.start_agent(node, agent, datastore)?);
    }
    for agent in &mut agents {
        agent.wait_ready(READY_TIMEOUT)?;
    }
    PathUnderTest::ready(name, how.to_owned(), lab, agents, target)
}

/// Calico's kernel VXLAN mode on both nodes, no agent.
fn kernel_vxlan_path(model: &dataplane::model::Model) -> anyhow::Result<PathUnderTest> {
    let lab = Lab::up(model, LabOptions::default())?;
    for node in lab.nodes().map(|n| n.name.clone()).collect::<Vec<_>>() {
        kernel_calico::configure_kernel_vxlan(&lab, model, &node)?;
    }
    let how = "no agent; vxlan.calico, routes via VTEP onlink, permanent neigh + FDB, proxy_arp".to_owned();
    PathUnderTest::ready("kernel vxlan", how, lab, Vec::new(), Target::Pod)
}

/// Plain routing with an nftables masquerade rule on node-1, the kernel's natOutgoing.
struct Masquerade;

/// nftables on node-1: masquerade what the pool sends outside the pool, as Calico's iptables
/// natOutgoing rule does.
const NFT_MASQUERADE: &str = "table ip dataplane_bench {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 masquerade
  }
}
";

/// Plain routing on both nodes, no agent, no encapsulation; with `masquerade`, the SNAT baseline.
fn plain_path(model: &dataplane::model::Model, masquerade: Option<Masquerade>) -> anyhow::Result<PathUnderTest> {
    let lab = Lab::up(model, LabOptions::default())?;
    for node in lab.nodes().map(|n| n.name.clone()).collect::<Vec<_>>() {
        kernel_calico::configure_kernel_plain(&lab, model, &node)?;
    }
    if masquerade.is_none() {
        let how = "no agent; <block> via <peer node> dev eth0, proxy_arp (no encapsulation)".to_owned();
        return PathUnderTest::ready("plain routing", how, lab, Vec::new(), Target::Pod);
    }
    let client_node = lab.pod(CLIENT)?.node.clone();
    let netns = lab.node_netns(&client_node)?.to_owned();
    let rules = lab.dir().join("masquerade.nft");
    std::fs::write(&rules, NFT_MASQUERADE).with_context(|| format!("writing {}", rules.display()))?;
    let rules_arg = rules.to_string_lossy();
    lab.exec(&netns, &["nft", "-f", &rules_arg]).context("loading the nftables masquerade rule")?;
    let how = "no agent; plain routing + nftables `masquerade` for 10.244.0.0/16 leaving the pool".to_owned();
    PathUnderTest::ready("nft masquerade", how, lab, Vec::new(), Target::External)
}

impl PathUnderTest {
    /// Checks that the client reaches its target and starts the iperf3 server there.
    fn ready(name: &'static str, how: String, lab: Lab, agents: Vec<Agent>, target: Target) -> anyhow::Result<Self> {
        let client = lab.pod(CLIENT)?.clone();
        let (server_netns, to) = match target {
            Target::Pod => {
                let server = lab.pod(SERVER)?;
                ensure!(client.node != server.node, "{CLIENT} and {SERVER} must run on different nodes");
                (server.netns.clone(), server.addr.to_string())
            }
            Target::External => (lab.external().netns.clone(), lab.external().addr.to_string()),
        };
        lab.exec(&client.netns, &["ping", "-c", "2", "-i", "0.2", "-W", "2", &to])
            .with_context(|| format!("{CLIENT} cannot reach {to} through the {name} path"))?;
        let mut server = lab.spawn(&server_netns, &["iperf3", "-s", "--forceflush"], "iperf3-server")?;
        server.wait_for_log("Server listening", Duration::from_secs(10))?;
        Ok(PathUnderTest { name, how, server, _agents: agents, client, target: to, samples: Vec::new(), lab })
    }
}

/// One iperf3 run of `test` for `seconds` from the client to the path's target.
fn iperf(path: &PathUnderTest, test: Test, seconds: u32) -> anyhow::Result<Sample> {
    let time = seconds.to_string();
    let limit = (seconds + 30).to_string();
    let mut argv =
        vec!["timeout", &limit, "iperf3", "-c", &path.target, "-t", &time, "-J", "--connect-timeout", "3000"];
    match test {
        Test::Tcp1 => {}
        Test::Tcp4 => argv.extend(["-P", "4"]),
        Test::Udp64 => argv.extend(["-u", "-l", UDP_PAYLOAD, "-b", "0"]),
    }
    let (client_before, server_before) = (children_cpu_ns(), process_cpu_ns(path.server.pid()));
    let started = std::time::Instant::now();
    let output = path.lab.exec(&path.client.netns, &argv)?;
    let wall = started.elapsed().as_secs_f64();
    let (client_after, server_after) = (children_cpu_ns(), process_cpu_ns(path.server.pid()));
    let text = String::from_utf8_lossy(&output.stdout);
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("iperf3's -J output does not parse:\n{text}"))?;
    // The client (reaped by the run, so in the children's times) and the server: their own CPU
    // time, not the machine's, which other work on a shared machine fills too.
    let cores = match (client_before, client_after, server_before, server_after) {
        (Some(c0), Some(c1), Some(s0), Some(s1)) if wall > 0.0 => {
            (c1.saturating_sub(c0) + s1.saturating_sub(s0)) as f64 / 1e9 / wall
        }
        _ => f64::NAN,
    };
    let end = &json["end"];
    match test {
        Test::Tcp1 | Test::Tcp4 => {
            let bits = end["sum_received"]["bits_per_second"]
                .as_f64()
                .with_context(|| format!("no end.sum_received.bits_per_second in iperf3's output:\n{text}"))?;
            Ok(Sample { value: bits / 1e9, gbits: bits / 1e9, cores })
        }
        Test::Udp64 => {
            let sum = &end["sum"];
            let (Some(packets), Some(lost), Some(secs)) =
                (sum["packets"].as_f64(), sum["lost_packets"].as_f64(), sum["seconds"].as_f64())
            else {
                bail!("no end.sum.packets/lost_packets/seconds in iperf3's UDP output:\n{text}");
            };
            ensure!(secs > 0.0, "iperf3 ran for 0 s");
            let pps = (packets - lost).max(0.0) / secs;
            // 64 bytes on the wire per packet, as the frame sizes of the per-packet tables.
            Ok(Sample { value: pps / 1e6, gbits: pps * 64.0 * 8.0 / 1e9, cores })
        }
    }
}

/// The BPF path's `encap_vxlan` counter on node-1 (`dataplane stats`).
fn bpf_encap_count(path: &PathUnderTest, agent: &Path) -> anyhow::Result<u64> {
    let pin = path.lab.pin_path(&path.client.node);
    let agent = agent.to_string_lossy();
    let pin = pin.to_string_lossy();
    let output = dataplane_lab::cmd::run(&[&*agent, "stats", "--pin-path", &pin])?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("encap_vxlan")).then(|| words.next()?.parse().ok())?
        })
        .with_context(|| format!("no encap_vxlan counter in `dataplane stats`:\n{text}"))
}

/// Packets sent by node-1's `vxlan.calico` on the kernel path, from its namespace's /proc/net/dev.
fn vxlan_device_tx(path: &PathUnderTest) -> anyhow::Result<u64> {
    let netns = path.lab.node_netns(&path.client.node)?;
    let text = path.lab.exec_stdout(netns, &["cat", "/proc/net/dev"])?;
    let device = format!("{}:", kernel_calico::VXLAN_DEVICE);
    // "  name: rx_bytes rx_packets (6 more rx fields) tx_bytes tx_packets ..."
    text.lines()
        .find_map(|line| {
            let rest = line.trim_start().strip_prefix(&device)?;
            rest.split_whitespace().nth(9)?.parse().ok()
        })
        .with_context(|| format!("no {device} line in /proc/net/dev:\n{text}"))
}
