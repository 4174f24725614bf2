//! Prometheus metrics and the health endpoints (`--metrics-addr`).
//!
//! A deliberately small HTTP/1.1 responder: three GET paths, one response each, connection closed.
//! Counters come straight from the pinned maps at scrape time, so they are right even across
//! agent restarts; the agent's own counters (reconciles, errors, durations) live in [`Agent`].

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};
use tracing::{info, warn};

use crate::{datastore::Connection, pinned::PinnedMaps, stats};

/// What the agent itself counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Agent {
    /// Reconciles that completed.
    pub reconciles: u64,
    /// Reconciles that failed.
    pub reconcile_errors: u64,
    /// Seconds all completed reconciles took, summed.
    pub reconcile_seconds_sum: f64,
    /// Seconds the last completed reconcile took.
    pub last_reconcile_seconds: f64,
    /// Whether the last reconcile succeeded (the health check).
    pub last_reconcile_ok: bool,
    /// Whether the datastore answered the watcher's last attempt to read it.
    pub datastore_up: bool,
    /// Times the datastore went from readable to unreadable.
    pub datastore_losses: u64,
    /// Whole reads of the maps and of the route table by the backend (at start, after a failed
    /// write, on the slow resync; none per change).
    pub kernel_dumps: u64,
    /// Seconds from a new snapshot reaching the agent to the dataplane programmed from it.
    pub change_to_programmed: Histogram,
    /// Batches of changes the agent found queued when it last took changes from the watcher
    /// (1: it keeps up; more: they waited for a reconcile).
    pub queued_batches: u64,
}

/// Upper bounds (seconds) of [`Histogram`]'s buckets: a change is programmed in milliseconds on a
/// small cluster and may take seconds on a very large one.
pub const LATENCY_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// A Prometheus histogram of durations over [`LATENCY_BUCKETS`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// Observations at most each bucket's bound (not cumulative).
    pub buckets: [u64; LATENCY_BUCKETS.len()],
    /// Observations.
    pub count: u64,
    /// Their sum, seconds.
    pub sum: f64,
}

impl Histogram {
    /// Counts one duration.
    pub fn observe(&mut self, seconds: f64) {
        if let Some(bucket) = LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[bucket] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }

    /// The histogram in the text format, as `name`, with cumulative buckets.
    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut below = 0;
        for (bound, count) in LATENCY_BUCKETS.iter().zip(self.buckets) {
            below += count;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {below}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// The agent's counters, shared between the reconcile loop and the HTTP server.
pub type Shared = Arc<Mutex<Agent>>;

/// How many entries each map holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Occupancy {
    /// Routes map entries.
    pub routes: usize,
    /// Workloads map entries.
    pub workloads: usize,
    /// Peers map entries.
    pub peers: usize,
    /// Conntrack map entries (two per translated flow).
    pub conntrack: usize,
    /// Fragmented datagrams tracked (at `FRAGMENTS_MAX_ENTRIES` the oldest are evicted).
    pub fragments: usize,
}

/// Renders the metrics in the Prometheus text format.
pub fn render(agent: &Agent, counters: &[stats::Counter], occupancy: &Occupancy) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# HELP dataplane_packets_total Packets by fast-path decision, summed over CPUs.");
    let _ = writeln!(out, "# TYPE dataplane_packets_total counter");
    for counter in counters.iter().filter(|c| !c.stat.is_drop()) {
        let _ = writeln!(out, "dataplane_packets_total{{decision=\"{}\"}} {}", counter.stat.name(), counter.packets);
    }
    let _ = writeln!(out, "# HELP dataplane_drops_total Packets dropped by the fast path, by reason.");
    let _ = writeln!(out, "# TYPE dataplane_drops_total counter");
    for counter in counters.iter().filter(|c| c.stat.is_drop()) {
        let reason = counter.stat.name().trim_start_matches("drop_");
        let _ = writeln!(out, "dataplane_drops_total{{reason=\"{reason}\"}} {}", counter.packets);
    }
    let _ = writeln!(out, "# HELP dataplane_map_entries Entries in each pinned map.");
    let _ = writeln!(out, "# TYPE dataplane_map_entries gauge");
    for (map, entries) in [
        ("routes", occupancy.routes),
        ("workloads", occupancy.workloads),
        ("peers", occupancy.peers),
        ("conntrack", occupancy.conntrack),
        ("fragments", occupancy.fragments),
    ] {
        let _ = writeln!(out, "dataplane_map_entries{{map=\"{map}\"}} {entries}");
    }
    let gauges: [(&str, &str, &str, f64); 9] = [
        ("dataplane_reconciles_total", "counter", "Reconciles that completed.", agent.reconciles as f64),
        ("dataplane_reconcile_errors_total", "counter", "Reconciles that failed.", agent.reconcile_errors as f64),
        (
            "dataplane_reconcile_seconds_sum",
            "counter",
            "Seconds spent in completed reconciles.",
            agent.reconcile_seconds_sum,
        ),
        (
            "dataplane_last_reconcile_seconds",
            "gauge",
            "Duration of the last completed reconcile.",
            agent.last_reconcile_seconds,
        ),
        (
            "dataplane_last_reconcile_ok",
            "gauge",
            "1 if the last reconcile succeeded.",
            f64::from(u8::from(agent.last_reconcile_ok)),
        ),
        (
            "dataplane_datastore_up",
            "gauge",
            "1 if the datastore answered the last read; 0 while the last good state is kept without it.",
            f64::from(u8::from(agent.datastore_up)),
        ),
        (
            "dataplane_datastore_losses_total",
            "counter",
            "Times the datastore went from readable to unreadable.",
            agent.datastore_losses as f64,
        ),
        (
            "dataplane_kernel_dumps_total",
            "counter",
            "Whole reads of the maps and the route table (at start, after a failed write, on the slow resync; none per change).",
            agent.kernel_dumps as f64,
        ),
        (
            "dataplane_datastore_queue_depth",
            "gauge",
            "Batches of datastore changes found queued when the agent last took changes (1 when it keeps up).",
            agent.queued_batches as f64,
        ),
    ];
    for (name, kind, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    }
    agent.change_to_programmed.render(
        &mut out,
        "dataplane_change_to_programmed_seconds",
        "Seconds from a new datastore snapshot reaching the agent to the dataplane programmed from it.",
    );
    out
}

/// Counts the entries of the pinned maps under `pin_path`.
pub fn occupancy(pin_path: &Path) -> anyhow::Result<Occupancy> {
    let maps = PinnedMaps::at(pin_path);
    Ok(Occupancy {
        routes: maps.routes()?.keys().count(),
        workloads: maps.workloads()?.keys().count(),
        peers: maps.peers()?.keys().count(),
        conntrack: maps.conntrack()?.keys().count(),
        // An agent of the version before fragments were tracked has no such map.
        fragments: maps.fragments().map_or(0, |map| map.keys().count()),
    })
}

/// `/healthz` (readiness): 200 while the kernel holds a good state (the last reconcile
/// succeeded), 503 before the first one and after a failed one. The body says the datastore's
/// state either way; a datastore that is down does not fail it, since the last good state keeps
/// carrying traffic. Liveness is `/livez`: a restart would bring back neither a missing file nor
/// an unreachable API server, so a pod that waits for its datastore must not be restarted.
pub fn healthz(agent: &Agent, datastore_reason: Option<&str>) -> (&'static str, String) {
    let datastore = datastore_line(agent, datastore_reason);
    if agent.last_reconcile_ok {
        ("200 OK", format!("ok\n{datastore}"))
    } else if agent.reconciles == 0 && agent.reconcile_errors == 0 {
        ("503 Service Unavailable", format!("nothing programmed yet: no reconcile has run\n{datastore}"))
    } else {
        ("503 Service Unavailable", format!("the last reconcile failed (the agent's log says why)\n{datastore}"))
    }
}

/// One line on the datastore's state, for the health endpoints.
fn datastore_line(agent: &Agent, reason: Option<&str>) -> String {
    match (agent.datastore_up, reason) {
        (true, _) => "datastore up\n".to_owned(),
        (false, Some(reason)) => format!("datastore down: {reason}\n"),
        (false, None) => "datastore down (not read yet, or lost: the agent's log says why)\n".to_owned(),
    }
}

/// Serves `/metrics`, `/healthz` and `/livez` on `addr` until the task is dropped; `datastore` is the
/// watcher's view of its connection.
pub async fn serve(addr: SocketAddr, pin_path: PathBuf, agent: Shared, datastore: Connection) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("listening on --metrics-addr {addr}"))?;
    info!(%addr, "serving /metrics, /healthz and /livez");
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(connection) => connection,
            Err(error) => {
                warn!(%error, "accepting a metrics connection");
                continue;
            }
        };
        let mut request = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut request)).await;
        let Ok(Ok(len)) = read else { continue };
        let line = String::from_utf8_lossy(&request[..len]);
        let path = line.split_whitespace().nth(1).unwrap_or("/");
        let mut snapshot = agent.lock().map(|a| a.clone()).unwrap_or_default();
        snapshot.datastore_up = datastore.is_up();
        snapshot.datastore_losses = datastore.losses();
        let (status, body) = match path {
            "/metrics" => {
                let counters = stats::read(&pin_path).unwrap_or_default();
                let occupancy = occupancy(&pin_path).unwrap_or_default();
                ("200 OK", render(&snapshot, &counters, &occupancy))
            }
            "/healthz" => healthz(&snapshot, datastore.reason().as_deref()),
            "/livez" => ("200 OK", format!("alive\n{}", datastore_line(&snapshot, datastore.reason().as_deref()))),
            _ => ("404 Not Found", "try /metrics, /healthz or /livez\n".to_owned()),
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
    }
}

#[cfg(test)]
mod tests {
    use dataplane_common::Stat;

    use super::*;

    #[test]
    fn healthz_follows_the_programmed_state_and_shows_the_datastore() {
        let missing = "datastore file /x.yaml does not exist";
        let waiting = Agent::default();
        let (status, body) = healthz(&waiting, Some(missing));
        assert!(status.starts_with("503") && body.contains("no reconcile has run"), "{status} {body}");
        assert!(body.contains(&format!("datastore down: {missing}")), "{body}");
        // The file was deleted after a good reconcile: the state it left carries traffic.
        let kept = Agent { reconciles: 1, last_reconcile_ok: true, datastore_losses: 1, ..Agent::default() };
        let (status, body) = healthz(&kept, Some(missing));
        assert_eq!(status, "200 OK");
        assert_eq!(body, format!("ok\ndatastore down: {missing}\n"));
        let up = Agent { datastore_up: true, ..kept.clone() };
        assert_eq!(healthz(&up, None), ("200 OK", "ok\ndatastore up\n".to_owned()));
        let failed = Agent { reconcile_errors: 1, last_reconcile_ok: false, ..up };
        let (status, body) = healthz(&failed, None);
        assert!(status.starts_with("503") && body.contains("the last reconcile failed"), "{status} {body}");
    }

    #[test]
    fn renders_decisions_drops_occupancy_and_agent_counters() {
        let agent = Agent {
            reconciles: 3,
            reconcile_errors: 1,
            last_reconcile_ok: true,
            datastore_up: false,
            datastore_losses: 2,
            kernel_dumps: 4,
            queued_batches: 2,
            ..Agent::default()
        };
        let counters = [
            stats::Counter { stat: Stat::EncapVxlan, packets: 7 },
            stats::Counter { stat: Stat::DropSpoofedSource, packets: 2 },
        ];
        let occupancy = Occupancy { routes: 5, workloads: 2, peers: 1, conntrack: 4, fragments: 0 };
        let text = render(&agent, &counters, &occupancy);
        assert!(text.contains("dataplane_packets_total{decision=\"encap_vxlan\"} 7"), "{text}");
        assert!(text.contains("dataplane_drops_total{reason=\"spoofed_source\"} 2"), "{text}");
        assert!(text.contains("dataplane_map_entries{map=\"routes\"} 5"), "{text}");
        assert!(text.contains("dataplane_reconciles_total 3"), "{text}");
        assert!(text.contains("dataplane_kernel_dumps_total 4"), "{text}");
        assert!(text.contains("dataplane_datastore_queue_depth 2"), "{text}");
        assert!(text.contains("dataplane_change_to_programmed_seconds_count 0"), "{text}");
        assert!(text.contains("dataplane_reconcile_errors_total 1"), "{text}");
        assert!(text.contains("dataplane_last_reconcile_ok 1"), "{text}");
        assert!(text.contains("dataplane_datastore_up 0"), "{text}");
        assert!(text.contains("dataplane_datastore_losses_total 2"), "{text}");
        // Every sample line belongs to a declared metric (a histogram's samples to their family).
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| text.contains(&format!("# TYPE {base} histogram")))
                .unwrap_or(name);
            assert!(text.contains(&format!("# TYPE {family} ")), "{name} has no TYPE line");
        }
    }

    #[test]
    fn the_latency_histogram_counts_cumulatively_and_everything_in_inf() {
        let mut histogram = Histogram::default();
        for seconds in [0.0005, 0.003, 0.003, 0.2, 60.0] {
            histogram.observe(seconds);
        }
        let mut text = String::new();
        histogram.render(&mut text, "x_seconds", "help");
        assert!(text.contains("# TYPE x_seconds histogram"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"0.001\"} 1\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"0.005\"} 3\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"0.25\"} 4\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"10\"} 4\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"+Inf\"} 5\n"), "{text}");
        assert!(text.contains("x_seconds_count 5\n"), "{text}");
    }
}
