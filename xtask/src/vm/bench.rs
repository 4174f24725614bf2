//! `cargo xtask vm bench`: pod-to-pod traffic across the VMs for every path, against the kernel
//! baseline measured in the same VMs in the same run.
//!
//! Every path is set up on all three nodes by the guest's `dataplane-node` (vagrant/node.sh);
//! then node-1's pod pings the pods of node-2 and node-3, and runs iperf3 to node-2's pod: TCP,
//! then UDP with 64-byte datagrams at full speed (what counts there is packets per second that
//! arrive). Ratios are to the baseline, the kernel's `vxlan.calico` as Calico configures it.

use std::{fmt::Write as _, time::Instant};

use anyhow::{bail, Context as _};

use super::{cluster::Cluster, say};

/// How a path is set up on every node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    /// No agent: the kernel's vxlan.calico, as calico-node configures it.
    KernelVxlan,
    /// The agent with `--mode <mode>`, the pool in `<pool>` mode.
    Agent { mode: &'static str, pool: &'static str },
}

/// One row of the table.
#[derive(Clone, Copy, Debug)]
pub struct PathSpec {
    /// The row's name.
    pub name: &'static str,
    /// How it is set up.
    pub setup: Setup,
}

impl PathSpec {
    /// The agent with `--mode <mode>` and the pool in `<pool>` mode.
    const fn agent(name: &'static str, mode: &'static str, pool: &'static str) -> PathSpec {
        PathSpec { name, setup: Setup::Agent { mode, pool } }
    }

    /// The agent's "programmed" line this path must log: the netlink fallback's under `--mode
    /// netlink`, else the fast path's (so `--mode auto` falling back counts as a failure); None
    /// for the kernel baseline.
    pub fn ready(&self) -> Option<&'static str> {
        match self.setup {
            Setup::KernelVxlan => None,
            Setup::Agent { mode: "netlink", .. } => Some(NETLINK_READY),
            Setup::Agent { .. } => Some(FAST_PATH_READY),
        }
    }
}

/// The paths, baseline first.
pub const PATHS: &[PathSpec] = &[
    PathSpec { name: "kernel vxlan.calico (baseline)", setup: Setup::KernelVxlan },
    PathSpec::agent("fast path VXLAN", "auto", "vxlan"),
    PathSpec::agent("fast path IPIP", "auto", "ipip"),
    PathSpec::agent("fast path Never", "auto", "never"),
    PathSpec::agent("netlink fallback VXLAN", "netlink", "vxlan"),
    PathSpec::agent("netlink fallback IPIP", "netlink", "ipip"),
];

/// The agent's line once the fast path is programmed.
pub const FAST_PATH_READY: &str = "fast path programmed";
/// The agent's line once the netlink fallback is programmed.
pub const NETLINK_READY: &str = "netlink dataplane programmed";

/// The pods node-1's pod sends to: (node, pod address).
const PEERS: [(&str, &str); 2] = [("node-2", "10.244.2.2"), ("node-3", "10.244.3.2")];
/// The iperf3 server's pod.
const IPERF_SERVER: (&str, &str) = PEERS[0];
/// Datagram size of the UDP test: small packets, where per-packet cost dominates.
const UDP_LEN: u32 = 64;

/// What one path carried.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measured {
    /// Pings answered / sent, over both peers.
    pub ping_received: u32,
    /// Pings sent.
    pub ping_sent: u32,
    /// Mean ping round trip to node-2's pod, milliseconds.
    pub rtt_ms: f64,
    /// TCP goodput, bits per second (receiver).
    pub tcp_bps: f64,
    /// TCP retransmits.
    pub tcp_retransmits: u64,
    /// UDP datagrams per second that arrived.
    pub udp_pps: f64,
    /// Share of UDP datagrams lost, percent.
    pub udp_loss_percent: f64,
}

/// Sets up `path` on every node; returns each node's start-up lines (probe, ready) and what
/// `dataplane-node` warned about on the way (e.g. a pod route the previous setup's cleanup took).
pub fn set_up(cluster: &Cluster, nodes: &[&str], path: &PathSpec) -> anyhow::Result<Vec<(String, String)>> {
    let mut lines = Vec::new();
    for node in nodes {
        let command = match path.setup {
            Setup::KernelVxlan => "dataplane-node kernel-vxlan".to_owned(),
            Setup::Agent { mode, pool } => format!("dataplane-node agent {mode} {pool}"),
        };
        let output = cluster.ssh(node, &command)?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            bail!("setting up {} on {node}: `{command}` failed ({}):\n{stdout}{stderr}", path.name, output.status);
        }
        if let Some(ready) = path.ready() {
            if !stdout.contains(ready) {
                bail!("{} on {node}: the agent did not log `{ready}`; it logged:\n{stdout}", path.name);
            }
        }
        let mut line = stdout.trim().to_owned();
        for warning in stderr.lines().filter(|l| l.starts_with("reset:")) {
            say(&format!("  {node}: {warning}"));
            line.push_str(&format!("\nWARNING {warning}"));
        }
        lines.push((node.to_string(), line));
    }
    Ok(lines)
}

/// Measures the current path from node-1's pod.
pub fn measure(cluster: &Cluster, seconds: u32) -> anyhow::Result<Measured> {
    let mut measured = Measured::default();
    let mut silent = Vec::new();
    for (i, (node, addr)) in PEERS.iter().enumerate() {
        let output = cluster.ssh(super::cluster::NODES[0], &format!("dataplane-node ping {addr}"))?;
        let text = String::from_utf8_lossy(&output.stdout);
        let (sent, received, rtt) = parse_ping(&text).with_context(|| format!("ping to {node}'s pod: {text}"))?;
        measured.ping_sent += sent;
        measured.ping_received += received;
        if received == 0 {
            silent.push(format!("{node}'s pod {addr}"));
        }
        if i == 0 {
            measured.rtt_ms = rtt.unwrap_or(f64::NAN);
        }
    }
    // Every pod must answer: a path that reaches one peer and not the other does not work.
    if !silent.is_empty() {
        bail!(
            "no ping from node-1's pod to {} was answered; the nodes' state:\n{}",
            silent.join(" and "),
            diagnostics(cluster)
        );
    }
    cluster.ssh_ok(IPERF_SERVER.0, "dataplane-node iperf-server")?;
    let secs = seconds.to_string();
    let tcp = cluster.ssh_ok(
        super::cluster::NODES[0],
        &format!("dataplane-node iperf -c {} -t {secs} -J --connect-timeout 5000", IPERF_SERVER.1),
    )?;
    let (bps, retransmits) = parse_iperf_tcp(&tcp)?;
    measured.tcp_bps = bps;
    measured.tcp_retransmits = retransmits;
    let udp = cluster.ssh_ok(
        super::cluster::NODES[0],
        &format!("dataplane-node iperf -c {} -u -l {UDP_LEN} -b 0 -t {secs} -J --connect-timeout 5000", IPERF_SERVER.1),
    )?;
    let (pps, loss) = parse_iperf_udp(&udp)?;
    measured.udp_pps = pps;
    measured.udp_loss_percent = loss;
    Ok(measured)
}

/// What a person debugging a path that carries no traffic would look at first, from every node:
/// routes, the VTEP device, its neighbours and FDB, and the TC filters on the uplink and the pod.
fn diagnostics(cluster: &Cluster) -> String {
    const STATE: &str = "ip route; ip -br addr; ip -d link show vxlan.calico 2>/dev/null | head -3; \
                         ip neigh show dev vxlan.calico 2>/dev/null; bridge fdb show dev vxlan.calico 2>/dev/null; \
                         tc filter show dev \"$(. /etc/dataplane/node; echo $UPLINK)\" ingress; tail -5 /var/log/dataplane.log";
    let mut out = String::new();
    for node in super::cluster::NODES {
        let text = match cluster.ssh(node, &format!("bash -c '{STATE}'")) {
            Ok(output) => {
                format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
            }
            Err(error) => format!("(cannot ask: {error:#})"),
        };
        let _ = writeln!(out, "--- {node}\n{}", text.trim_end());
    }
    out
}

/// (sent, received, mean rtt ms) from `ping -q` output.
pub fn parse_ping(text: &str) -> anyhow::Result<(u32, u32, Option<f64>)> {
    let line = text.lines().find(|l| l.contains("packets transmitted")).context("no ping summary line")?;
    let number_before = |word: &str| -> Option<u32> {
        let at = line.find(word)?;
        line[..at].split_whitespace().last()?.parse().ok()
    };
    let sent = number_before("packets transmitted").context("no count of packets transmitted")?;
    let received = number_before("received").context("no count of packets received")?;
    // rtt min/avg/max/mdev = 0.512/0.734/1.021/0.170 ms
    let rtt = text
        .lines()
        .find(|l| l.starts_with("rtt") || l.starts_with("round-trip"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').nth(1))
        .and_then(|avg| avg.parse().ok());
    Ok((sent, received, rtt))
}

/// (receiver bits per second, retransmits) from iperf3 -J of a TCP test.
pub fn parse_iperf_tcp(json: &str) -> anyhow::Result<(f64, u64)> {
    let value: serde_json::Value = serde_json::from_str(json).context("iperf3 -J printed no JSON")?;
    if let Some(error) = value["error"].as_str() {
        bail!("iperf3 TCP: {error}");
    }
    let bps = value["end"]["sum_received"]["bits_per_second"].as_f64().context("iperf3 TCP: no end.sum_received")?;
    let retransmits = value["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    Ok((bps, retransmits))
}

/// (datagrams per second that arrived, loss percent) from iperf3 -J of a UDP test.
pub fn parse_iperf_udp(json: &str) -> anyhow::Result<(f64, f64)> {
    let value: serde_json::Value = serde_json::from_str(json).context("iperf3 -J printed no JSON")?;
    if let Some(error) = value["error"].as_str() {
        bail!("iperf3 UDP: {error}");
    }
    // The receiver's view: end.sum_received where iperf3 has it (3.11+), else end.sum, which a
    // UDP client fills with the server's counts at the end of the test.
    let end = &value["end"];
    let sum = if end["sum_received"]["packets"].is_number() { &end["sum_received"] } else { &end["sum"] };
    let packets = sum["packets"].as_f64().context("iperf3 UDP: no end.sum.packets")?;
    let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
    let seconds = sum["seconds"].as_f64().filter(|s| *s > 0.0).context("iperf3 UDP: no end.sum.seconds")?;
    let loss = if packets > 0.0 { 100.0 * lost / packets } else { 100.0 };
    Ok(((packets - lost).max(0.0) / seconds, loss))
}

/// The results table in Markdown, ratios against the first row (the baseline).
pub fn table(rows: &[(&str, Measured)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| path | ping ok | rtt ms | TCP Mbit/s | x base | retr | UDP {UDP_LEN} B kpps | x base | UDP loss % |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    let base = rows.first().map(|(_, m)| m.clone()).unwrap_or_default();
    for (name, m) in rows {
        let _ = writeln!(
            out,
            "| {name} | {}/{} | {:.2} | {:.0} | {} | {} | {:.1} | {} | {:.1} |",
            m.ping_received,
            m.ping_sent,
            m.rtt_ms,
            m.tcp_bps / 1e6,
            ratio(m.tcp_bps, base.tcp_bps),
            m.tcp_retransmits,
            m.udp_pps / 1e3,
            ratio(m.udp_pps, base.udp_pps),
            m.udp_loss_percent
        );
    }
    out
}

/// `value / base` as "1.23", or "-" without a base.
fn ratio(value: f64, base: f64) -> String {
    if base > 0.0 && value.is_finite() {
        format!("{:.2}", value / base)
    } else {
        "-".to_owned()
    }
}

/// Runs every path; returns the rows measured (stopping at the first path that fails to carry
/// traffic is wrong for a benchmark: a failing path is reported and the others still run).
pub fn run_paths(cluster: &Cluster, seconds: u32) -> (Vec<(&'static str, Measured)>, Vec<String>, Vec<String>) {
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    let mut startup = Vec::new();
    for path in PATHS {
        let started = Instant::now();
        say(&format!("path: {}", path.name));
        let result = set_up(cluster, &super::cluster::NODES, path).and_then(|lines| {
            for (node, line) in lines {
                startup.push(format!("{} / {node}: {}", path.name, line.replace('\n', " | ")));
            }
            measure(cluster, seconds)
        });
        match result {
            Ok(measured) => {
                say(&format!(
                    "  ping {}/{}, TCP {:.0} Mbit/s, UDP {:.1} kpps ({:.0} s)",
                    measured.ping_received,
                    measured.ping_sent,
                    measured.tcp_bps / 1e6,
                    measured.udp_pps / 1e3,
                    started.elapsed().as_secs_f64()
                ));
                rows.push((path.name, measured));
            }
            Err(error) => {
                say(&format!("  FAILED: {error:#}"));
                failures.push(format!("{}: {error:#}", path.name));
            }
        }
    }
    (rows, failures, startup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_summary_is_parsed() {
        let text = "PING 10.244.2.2 (10.244.2.2) 56(84) bytes of data.\n\n--- 10.244.2.2 ping statistics ---\n\
                    5 packets transmitted, 4 received, 20% packet loss, time 812ms\n\
                    rtt min/avg/max/mdev = 0.512/0.734/1.021/0.170 ms\n";
        assert_eq!(parse_ping(text).unwrap(), (5, 4, Some(0.734)));
        let none = "5 packets transmitted, 0 received, 100% packet loss, time 4000ms\n";
        assert_eq!(parse_ping(none).unwrap(), (5, 0, None));
        assert!(parse_ping("connect: Network is unreachable").is_err());
    }

    #[test]
    fn iperf_tcp_and_udp_results_are_read() {
        let tcp = r#"{"end":{"sum_sent":{"retransmits":3},"sum_received":{"bits_per_second":1.5e9}}}"#;
        assert_eq!(parse_iperf_tcp(tcp).unwrap(), (1.5e9, 3));
        let udp = r#"{"end":{"sum":{"packets":1000,"lost_packets":250,"seconds":5.0}}}"#;
        assert_eq!(parse_iperf_udp(udp).unwrap(), (150.0, 25.0));
        let error = r#"{"error":"unable to connect to server: Connection refused"}"#;
        assert!(parse_iperf_tcp(error).unwrap_err().to_string().contains("Connection refused"));
    }

    #[test]
    fn table_gives_ratios_to_the_first_row() {
        let base = Measured { tcp_bps: 1e9, udp_pps: 10_000.0, ping_sent: 10, ping_received: 10, ..Default::default() };
        let fast =
            Measured { tcp_bps: 1.5e9, udp_pps: 20_000.0, ping_sent: 10, ping_received: 10, ..Default::default() };
        let text = table(&[("base", base), ("fast", fast)]);
        let fast_row = text.lines().find(|l| l.starts_with("| fast")).unwrap();
        assert!(fast_row.contains("| 1500 | 1.50 |"), "{fast_row}");
        assert!(fast_row.contains("| 20.0 | 2.00 |"), "{fast_row}");
    }

    #[test]
    fn the_baseline_comes_first_and_every_path_says_how_it_is_ready() {
        assert_eq!(PATHS[0].setup, Setup::KernelVxlan);
        for path in &PATHS[1..] {
            let want = if path.name.starts_with("netlink") { NETLINK_READY } else { FAST_PATH_READY };
            assert_eq!(path.ready(), Some(want), "{}", path.name);
        }
    }
}
