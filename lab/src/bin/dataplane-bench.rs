//! `dataplane-bench` (run by `cargo xtask bench`): pod-to-pod TCP throughput across two nodes
//! through three paths, side by side in one run.
//!
//! - **BPF fast path**: examples/two-nodes.yaml (VXLAN Always) with one agent per node.
//! - **kernel vxlan**: the same cluster with no agent, both nodes configured as Calico's VXLAN mode
//!   configures them with the kernel's own `vxlan.calico` device ([`kernel_calico`]).
//! - **plain routing**: no agent and no encapsulation, `<block> via <peer node>` on both nodes:
//!   the ceiling the two tunnels are measured against.
//!
//! Each path gets its own lab; all three are up at once, and the repetitions go round the paths in
//! turn (BPF, kernel, plain, BPF, ...), so that a noisy neighbour on a shared machine slows every
//! path alike instead of one of them. Only one iperf3 stream runs at any time. Every pod has the
//! MTU of the VXLAN pool (1450), so the plain path carries segments of the same size. The figure
//! of a path is the median of its repetitions (iperf3 receiver rate, one TCP stream); the result
//! is printed as a table with the ratios and written as Markdown to
//! `results/bench-<UTC timestamp>.md` under the workspace.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, ensure, Context as _};
use clap::Parser;
use dataplane_lab::{kernel_calico, Agent, ChildHandle, Lab, LabOptions, LabPod};

/// The example cluster, relative to the workspace root.
const EXAMPLE: &str = "examples/two-nodes.yaml";
/// The client pod (on node-1) and the server pod (on node-2).
const CLIENT: &str = "default/web-1";
const SERVER: &str = "default/web-2";
/// How long an agent may take to program its node.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Issue 3's target: the fast path within 15% of the kernel's vxlan device path.
const TARGET_VS_KERNEL: f64 = 0.85;

/// Options of `dataplane-bench`.
#[derive(Parser)]
#[command(name = "dataplane-bench", about = "TCP throughput: BPF fast path vs kernel vxlan vs plain routing")]
struct Options {
    /// The agent binary to run on every node of the BPF path.
    #[arg(long)]
    agent: PathBuf,
    /// The workspace root, where examples/ is and results/ goes.
    #[arg(long)]
    workspace: PathBuf,
    /// A quick look: 2-second streams, one repetition (rougher figures).
    #[arg(long)]
    quick: bool,
}

/// One path under test: its lab and what keeps it running. Fields drop in order: the iperf3
/// server and the agents stop before the lab is torn down.
struct PathUnderTest {
    /// Short name for the table.
    name: &'static str,
    /// How the path is built, for the report.
    how: String,
    _server: ChildHandle,
    _agents: Vec<Agent>,
    client: LabPod,
    server_pod: LabPod,
    /// Receiver rates of the measured runs, in Gbit/s.
    runs: Vec<f64>,
    lab: Lab,
}

fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    if !dataplane_lab::is_root() {
        bail!("the benchmark creates network namespaces and loads eBPF programs: run it as root");
    }
    let (seconds, repetitions) = if options.quick { (2, 1) } else { (5, 3) };
    let datastore = options.workspace.join(EXAMPLE);
    let model = dataplane_lab::load_model(&datastore)?;
    let started = Instant::now();
    let load_before = loadavg();

    println!("==> Bringing up three labs from {EXAMPLE}");
    let mut paths =
        vec![bpf_path(&model, &options.agent, &datastore)?, kernel_vxlan_path(&model)?, plain_path(&model)?];
    for path in &paths {
        println!("  {:<14} lab {}: {}", path.name, path.lab.prefix(), path.how);
    }

    // Warm-up: the first stream of a fresh path pays for neighbour resolution and cold caches.
    for path in &paths {
        iperf(path, 1).with_context(|| format!("warm-up stream through the {} path", path.name))?;
    }
    let before_bpf = bpf_encap_count(&paths[0], &options.agent)?;
    let before_kernel = vxlan_device_tx(&paths[1])?;

    println!("==> {repetitions} x {seconds} s of one TCP stream {CLIENT} -> {SERVER} per path, in turn");
    for repetition in 1..=repetitions {
        for path in &mut paths {
            let gbits = iperf(path, seconds).with_context(|| format!("stream through the {} path", path.name))?;
            println!("  run {repetition}: {:<14} {gbits:6.2} Gbit/s", path.name);
            path.runs.push(gbits);
        }
    }

    // The paths were what they claim: the fast path encapsulated, the kernel's device sent.
    let bpf_encapsulated = bpf_encap_count(&paths[0], &options.agent)?.saturating_sub(before_bpf);
    ensure!(bpf_encapsulated > 0, "the BPF path's encap_vxlan counter did not grow: the fast path carried nothing");
    let kernel_sent = vxlan_device_tx(&paths[1])?.saturating_sub(before_kernel);
    ensure!(kernel_sent > 0, "vxlan.calico sent no packets on the kernel path");

    let medians: Vec<f64> = paths.iter().map(|p| median(&p.runs)).collect();
    let report = Report {
        seconds,
        repetitions,
        paths: paths.iter().zip(&medians).map(|(p, m)| (p.name, p.how.clone(), p.runs.clone(), *m)).collect(),
        bpf_encapsulated,
        kernel_sent,
        load: (load_before, loadavg()),
        elapsed: started.elapsed(),
    };
    // Tear the labs down before writing: nothing else should be left running.
    drop(paths);

    let markdown = report.markdown();
    println!("\n{}", report.table());
    let dir = options.workspace.join("results");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join(format!("bench-{}.md", utc_timestamp()));
    fs::write(&file, markdown).with_context(|| format!("writing {}", file.display()))?;
    println!("written to {}", file.display());
    Ok(())
}

/// The fast path: one agent per node, VXLAN in the kernel programs.
fn bpf_path(model: &dataplane::model::Model, agent: &Path, datastore: &Path) -> anyhow::Result<PathUnderTest> {
    let lab = Lab::up(model, LabOptions::default())?;
    let mut agents = Vec::new();
    let nodes: Vec<String> = lab.nodes().map(|n| n.name.clone()).collect();
    for node in &nodes {
        agents.push(lab.start_agent(node, agent, datastore)?);
    }
    for agent in &mut agents {
        agent.wait_ready(READY_TIMEOUT)?;
    }
    let how = "one agent per node (tc programs, VXLAN encap/decap in BPF)".to_owned();
    PathUnderTest::ready("BPF fast path", how, lab, agents)
}

/// Calico's kernel VXLAN mode on both nodes, no agent.
fn kernel_vxlan_path(model: &dataplane::model::Model) -> anyhow::Result<PathUnderTest> {
    let lab = Lab::up(model, LabOptions::default())?;
    for node in lab.nodes().map(|n| n.name.clone()).collect::<Vec<_>>() {
        kernel_calico::configure_kernel_vxlan(&lab, model, &node)?;
    }
    let how = "no agent; vxlan.calico, routes via VTEP onlink, permanent neigh + FDB, proxy_arp".to_owned();
    PathUnderTest::ready("kernel vxlan", how, lab, Vec::new())
}

/// Plain routing on both nodes, no agent, no encapsulation.
fn plain_path(model: &dataplane::model::Model) -> anyhow::Result<PathUnderTest> {
    let lab = Lab::up(model, LabOptions::default())?;
    for node in lab.nodes().map(|n| n.name.clone()).collect::<Vec<_>>() {
        kernel_calico::configure_kernel_plain(&lab, model, &node)?;
    }
    let how = "no agent; <block> via <peer node> dev eth0, proxy_arp (no encapsulation)".to_owned();
    PathUnderTest::ready("plain routing", how, lab, Vec::new())
}

impl PathUnderTest {
    /// Checks that the client reaches the server pod and starts the iperf3 server.
    fn ready(name: &'static str, how: String, lab: Lab, agents: Vec<Agent>) -> anyhow::Result<Self> {
        let client = lab.pod(CLIENT)?.clone();
        let server_pod = lab.pod(SERVER)?.clone();
        ensure!(client.node != server_pod.node, "{CLIENT} and {SERVER} must run on different nodes");
        let to = server_pod.addr.to_string();
        lab.exec(&client.netns, &["ping", "-c", "2", "-i", "0.2", "-W", "2", &to])
            .with_context(|| format!("{CLIENT} cannot reach {SERVER} through the {name} path"))?;
        let mut server = lab.spawn(&server_pod.netns, &["iperf3", "-s", "--forceflush"], "iperf3-server")?;
        server.wait_for_log("Server listening", Duration::from_secs(10))?;
        Ok(PathUnderTest { name, how, _server: server, _agents: agents, client, server_pod, runs: Vec::new(), lab })
    }
}

/// One TCP stream of `seconds` from the client to the server pod; the receiver's rate in Gbit/s.
fn iperf(path: &PathUnderTest, seconds: u32) -> anyhow::Result<f64> {
    let to = path.server_pod.addr.to_string();
    let time = seconds.to_string();
    let limit = (seconds + 30).to_string();
    // -f m: every rate in Mbit/s, so that the receiver line parses the same at any speed.
    let argv = ["timeout", &limit, "iperf3", "-c", &to, "-t", &time, "-f", "m", "--connect-timeout", "3000"];
    let output = path.lab.exec(&path.client.netns, &argv)?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mbits = receiver_mbits(&text).with_context(|| format!("no receiver rate in iperf3's output:\n{text}"))?;
    Ok(mbits / 1000.0)
}

/// The rate on iperf3's summary line for the receiver, e.g.
/// `[  5]   0.00-5.04  sec  5.50 GBytes  9371 Mbits/sec                  receiver`.
fn receiver_mbits(text: &str) -> Option<f64> {
    let line = text.lines().rev().find(|l| l.trim_end().ends_with("receiver"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let unit = words.iter().position(|w| *w == "Mbits/sec")?;
    words.get(unit.checked_sub(1)?)?.parse().ok()
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

/// The median of `runs` (the mean of the middle two for an even count); 0 for none.
fn median(runs: &[f64]) -> f64 {
    let mut sorted = runs.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The 1-minute load average, to show how busy the machine was.
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// The figures of one benchmark run.
struct Report {
    seconds: u32,
    repetitions: u32,
    /// (name, how, runs in Gbit/s, median) per path: BPF, kernel vxlan, plain.
    paths: Vec<(&'static str, String, Vec<f64>, f64)>,
    bpf_encapsulated: u64,
    kernel_sent: u64,
    load: (String, String),
    elapsed: Duration,
}

impl Report {
    fn median(&self, index: usize) -> f64 {
        self.paths.get(index).map_or(0.0, |p| p.3)
    }

    /// `a / b`, or NaN when `b` is 0.
    fn ratio(a: f64, b: f64) -> f64 {
        if b > 0.0 {
            a / b
        } else {
            f64::NAN
        }
    }

    /// The headline ratios: (BPF / kernel vxlan, BPF / plain, kernel vxlan / plain).
    fn ratios(&self) -> (f64, f64, f64) {
        let (bpf, kernel, plain) = (self.median(0), self.median(1), self.median(2));
        (Self::ratio(bpf, kernel), Self::ratio(bpf, plain), Self::ratio(kernel, plain))
    }

    fn verdict(&self) -> String {
        let (vs_kernel, _, _) = self.ratios();
        if vs_kernel >= TARGET_VS_KERNEL {
            format!("meets issue 3's target of >= {TARGET_VS_KERNEL}")
        } else {
            format!("MISSES issue 3's target of >= {TARGET_VS_KERNEL}")
        }
    }

    /// The table printed on the terminal.
    fn table(&self) -> String {
        let mut out = String::new();
        let plain = self.median(2);
        let _ = writeln!(out, "{:<14}  {:>24}  {:>13}  {:>8}", "path", "runs (Gbit/s)", "median Gbit/s", "/ plain");
        for (name, _, runs, median) in &self.paths {
            let runs: Vec<String> = runs.iter().map(|r| format!("{r:.2}")).collect();
            let _ = writeln!(
                out,
                "{name:<14}  {:>24}  {median:>13.2}  {:>8.2}",
                runs.join(" "),
                Self::ratio(*median, plain)
            );
        }
        let (vs_kernel, bpf_plain, kernel_plain) = self.ratios();
        let _ = writeln!(out, "\nBPF / kernel vxlan = {vs_kernel:.2}: {}", self.verdict());
        let _ = writeln!(out, "BPF / plain = {bpf_plain:.2}, kernel vxlan / plain = {kernel_plain:.2}");
        out
    }

    /// The Markdown written to results/.
    fn markdown(&self) -> String {
        let mut out = String::new();
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let (vs_kernel, bpf_plain, kernel_plain) = self.ratios();
        let _ = writeln!(out, "# Pod-to-pod TCP throughput across two nodes\n");
        let _ = writeln!(
            out,
            "`cargo xtask bench`, {}. One iperf3 TCP stream {CLIENT} (node-1) -> {SERVER} (node-2), \
             {} s per run, {} run(s) per path taken in turn, median of the receiver rate. Pod MTU 1450 \
             on every path. Kernel {}, {cpus} CPUs, load average {} before and {} after; {:.0} s in all.\n",
            utc_readable(),
            self.seconds,
            self.repetitions,
            kernel.trim(),
            self.load.0,
            self.load.1,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(out, "| path | how | runs (Gbit/s) | median (Gbit/s) | / plain |");
        let _ = writeln!(out, "|---|---|---|---:|---:|");
        let plain = self.median(2);
        for (name, how, runs, median) in &self.paths {
            let runs: Vec<String> = runs.iter().map(|r| format!("{r:.2}")).collect();
            let _ = writeln!(
                out,
                "| {name} | {how} | {} | {median:.2} | {:.2} |",
                runs.join(", "),
                Self::ratio(*median, plain)
            );
        }
        let _ = writeln!(out, "\n- BPF / kernel vxlan: **{vs_kernel:.2}** ({})", self.verdict());
        let _ = writeln!(out, "- BPF / plain: {bpf_plain:.2}; kernel vxlan / plain: {kernel_plain:.2}");
        let _ = writeln!(
            out,
            "- Sanity: node-1's encap_vxlan counter grew by {} on the BPF path; node-1's vxlan.calico sent {} \
             packets on the kernel path (GSO packets count once).",
            self.bpf_encapsulated, self.kernel_sent
        );
        out
    }
}

/// The current UTC time as `YYYYMMDDTHHMMSSZ`, for file names.
fn utc_timestamp() -> String {
    let (year, month, day, hour, minute, second) = utc_now();
    format!("{year:04}{month:02}{day:02}T{hour:02}{minute:02}{second:02}Z")
}

/// The current UTC time as `YYYY-MM-DD HH:MM:SS UTC`, for people.
fn utc_readable() -> String {
    let (year, month, day, hour, minute, second) = utc_now();
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02} UTC")
}

/// Year, month, day, hour, minute and second of the current UTC time.
fn utc_now() -> (u64, u64, u64, u64, u64, u64) {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    (year, month, day, rest / 3600, rest % 3600 / 60, rest % 60)
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiver_rate_is_read_from_the_summary() {
        let text = "[  5]   0.00-5.00   sec  5.51 GBytes  9462 Mbits/sec    0             sender\n\
                    [  5]   0.00-5.04   sec  5.50 GBytes  9371 Mbits/sec                  receiver\n\niperf Done.\n";
        assert_eq!(receiver_mbits(text), Some(9371.0));
        assert_eq!(receiver_mbits("iperf3: error - unable to connect"), None);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn dates_from_day_counts() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_415), (2025, 11, 23));
    }
}
