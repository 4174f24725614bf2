//! Prometheus metrics and the health endpoints (`--metrics-addr`).
//!
//! The exposition is the Prometheus client's (`prometheus-client`): the text format 0.0.4, or
//! OpenMetrics for a scraper that asks for it, over hyper's HTTP/1.1 server (keep-alive, HEAD,
//! content length). Counters come straight from the pinned maps at scrape time, so they are right
//! even across agent restarts; the agent's own counters (reconciles, errors, durations) live in
//! [`Agent`].

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

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

/// The exposition formats `/metrics` speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4 (what a scraper gets unless it asks for OpenMetrics).
    Prometheus,
    /// OpenMetrics text 1.0.0.
    OpenMetrics,
}

impl Format {
    /// What the scraper's `Accept` header asks for.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    /// The response's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Renders the metrics in the Prometheus text format.
pub fn render(agent: &Agent, counters: &[stats::Counter], occupancy: &Occupancy) -> String {
    render_as(Format::Prometheus, agent, counters, occupancy)
}

/// Renders the metrics in `format`.
pub fn render_as(format: Format, agent: &Agent, counters: &[stats::Counter], occupancy: &Occupancy) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape {
        agent: agent.clone(),
        counters: counters.to_vec(),
        occupancy: occupancy.clone(),
    }));
    let mut out = String::new();
    // Writing into a String cannot fail, and the collector's own encoding returns no error of its own.
    let written = match format {
        Format::Prometheus => prometheus_client::encoding::prometheus_text::encode(&mut out, &registry),
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry),
    };
    if written.is_err() {
        warn!("encoding the metrics failed");
    }
    out
}

/// One scrape's figures, read when the scrape came: the kernel's counters and the maps'
/// occupancy from the pins, the agent's own counters from [`Agent`].
#[derive(Debug)]
struct Scrape {
    agent: Agent,
    counters: Vec<stats::Counter>,
    occupancy: Occupancy,
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Counter names get their `_total` from the encoder.
        let mut packets = encoder.encode_descriptor(
            "dataplane_packets",
            "Packets by fast-path decision, summed over CPUs.",
            None,
            MetricType::Counter,
        )?;
        for counter in self.counters.iter().filter(|c| !c.stat.is_drop()) {
            ConstCounter::new(counter.packets).encode(packets.encode_family(&[("decision", counter.stat.name())])?)?;
        }
        let mut drops = encoder.encode_descriptor(
            "dataplane_drops",
            "Packets dropped by the fast path, by reason.",
            None,
            MetricType::Counter,
        )?;
        for counter in self.counters.iter().filter(|c| c.stat.is_drop()) {
            let reason = counter.stat.name().trim_start_matches("drop_");
            ConstCounter::new(counter.packets).encode(drops.encode_family(&[("reason", reason)])?)?;
        }
        let mut entries = encoder.encode_descriptor(
            "dataplane_map_entries",
            "Entries in each pinned map.",
            None,
            MetricType::Gauge,
        )?;
        let occupancy = &self.occupancy;
        for (map, count) in [
            ("routes", occupancy.routes),
            ("workloads", occupancy.workloads),
            ("peers", occupancy.peers),
            ("conntrack", occupancy.conntrack),
            ("fragments", occupancy.fragments),
        ] {
            ConstGauge::new(i64::try_from(count).unwrap_or(i64::MAX))
                .encode(entries.encode_family(&[("map", map)])?)?;
        }

        let agent = &self.agent;
        let counters: [(&str, &str, u64); 4] = [
            ("dataplane_reconciles", "Reconciles that completed.", agent.reconciles),
            ("dataplane_reconcile_errors", "Reconciles that failed.", agent.reconcile_errors),
            ("dataplane_datastore_losses", "Times the datastore went from readable to unreadable.", agent.datastore_losses),
            (
                "dataplane_kernel_dumps",
                "Whole reads of the maps and the route table (at start, after a failed write, on the slow resync; none per change).",
                agent.kernel_dumps,
            ),
        ];
        for (name, help, value) in counters {
            ConstCounter::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)?;
        }
        let seconds: [(&str, &str, f64); 2] = [
            // A running sum, kept under its name of old: as a counter the encoder would add `_total`.
            (
                "dataplane_reconcile_seconds_sum",
                "Seconds spent in completed reconciles, summed.",
                agent.reconcile_seconds_sum,
            ),
            (
                "dataplane_last_reconcile_seconds",
                "Duration of the last completed reconcile.",
                agent.last_reconcile_seconds,
            ),
        ];
        for (name, help, value) in seconds {
            ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
        }
        let states: [(&str, &str, i64); 3] = [
            ("dataplane_last_reconcile_ok", "1 if the last reconcile succeeded.", i64::from(agent.last_reconcile_ok)),
            (
                "dataplane_datastore_up",
                "1 if the datastore answered the last read; 0 while the last good state is kept without it.",
                i64::from(agent.datastore_up),
            ),
            (
                "dataplane_datastore_queue_depth",
                "Batches of datastore changes found queued when the agent last took changes (1 when it keeps up).",
                i64::try_from(agent.queued_batches).unwrap_or(i64::MAX),
            ),
        ];
        for (name, help, value) in states {
            ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
        }

        let histogram = &agent.change_to_programmed;
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS.iter().copied().zip(histogram.buckets).collect();
        encoder
            .encode_descriptor(
                "dataplane_change_to_programmed_seconds",
                "Seconds from a new datastore snapshot reaching the agent to the dataplane programmed from it.",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(histogram.sum, histogram.count, &buckets, None)
    }
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
pub fn healthz(agent: &Agent, datastore_reason: Option<&str>) -> (StatusCode, String) {
    let datastore = datastore_line(agent, datastore_reason);
    if agent.last_reconcile_ok {
        (StatusCode::OK, format!("ok\n{datastore}"))
    } else if agent.reconciles == 0 && agent.reconcile_errors == 0 {
        (StatusCode::SERVICE_UNAVAILABLE, format!("nothing programmed yet: no reconcile has run\n{datastore}"))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("the last reconcile failed (the agent's log says why)\n{datastore}"))
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

/// How long a client may take to send its request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// What the endpoints read: the pins, the agent's counters, the watcher's view of its datastore.
struct Endpoints {
    pin_path: PathBuf,
    agent: Shared,
    datastore: Connection,
}

impl Endpoints {
    /// The answer to one request.
    fn answer(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".to_owned());
        }
        let mut snapshot = self.agent.lock().map(|a| a.clone()).unwrap_or_default();
        snapshot.datastore_up = self.datastore.is_up();
        snapshot.datastore_losses = self.datastore.losses();
        let reason = self.datastore.reason();
        match request.uri().path() {
            "/metrics" => {
                let accept = request.headers().get(header::ACCEPT).and_then(|value| value.to_str().ok());
                let format = Format::negotiate(accept);
                let counters = stats::read(&self.pin_path).unwrap_or_default();
                let occupancy = occupancy(&self.pin_path).unwrap_or_default();
                let body = render_as(format, &snapshot, &counters, &occupancy);
                respond(StatusCode::OK, format.content_type(), body)
            }
            "/healthz" => {
                let (status, body) = healthz(&snapshot, reason.as_deref());
                plain(status, body)
            }
            "/livez" => plain(StatusCode::OK, format!("alive\n{}", datastore_line(&snapshot, reason.as_deref()))),
            _ => plain(StatusCode::NOT_FOUND, "try /metrics, /healthz or /livez\n".to_owned()),
        }
    }
}

/// A plain-text response.
fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", body)
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}

/// Serves `/metrics`, `/healthz` and `/livez` on `addr` until the task is dropped; `datastore` is the
/// watcher's view of its connection.
pub async fn serve(addr: SocketAddr, pin_path: PathBuf, agent: Shared, datastore: Connection) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("listening on --metrics-addr {addr}"))?;
    info!(%addr, "serving /metrics, /healthz and /livez");
    let endpoints = Arc::new(Endpoints { pin_path, agent, datastore });
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(connection) => connection,
            Err(error) => {
                warn!(%error, "accepting a metrics connection");
                continue;
            }
        };
        let endpoints = endpoints.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = endpoints.answer(&request);
                async move { Ok::<_, Infallible>(response) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                debug!(%peer, %error, "a metrics connection ended with an error");
            }
        });
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
        assert!(status == StatusCode::SERVICE_UNAVAILABLE && body.contains("no reconcile has run"), "{status} {body}");
        assert!(body.contains(&format!("datastore down: {missing}")), "{body}");
        // The file was deleted after a good reconcile: the state it left carries traffic.
        let kept = Agent { reconciles: 1, last_reconcile_ok: true, datastore_losses: 1, ..Agent::default() };
        let (status, body) = healthz(&kept, Some(missing));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, format!("ok\ndatastore down: {missing}\n"));
        let up = Agent { datastore_up: true, ..kept.clone() };
        assert_eq!(healthz(&up, None), (StatusCode::OK, "ok\ndatastore up\n".to_owned()));
        let failed = Agent { reconcile_errors: 1, last_reconcile_ok: false, ..up };
        let (status, body) = healthz(&failed, None);
        assert!(
            status == StatusCode::SERVICE_UNAVAILABLE && body.contains("the last reconcile failed"),
            "{status} {body}"
        );
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
        let mut agent = Agent::default();
        for seconds in [0.0005, 0.003, 0.003, 0.2, 60.0] {
            agent.change_to_programmed.observe(seconds);
        }
        let text = render(&agent, &[], &Occupancy::default());
        let name = "dataplane_change_to_programmed_seconds";
        assert!(text.contains(&format!("# TYPE {name} histogram")), "{text}");
        assert!(text.contains(&format!("{name}_bucket{{le=\"0.001\"}} 1\n")), "{text}");
        assert!(text.contains(&format!("{name}_bucket{{le=\"0.005\"}} 3\n")), "{text}");
        assert!(text.contains(&format!("{name}_bucket{{le=\"0.25\"}} 4\n")), "{text}");
        assert!(text.contains(&format!("{name}_bucket{{le=\"10\"}} 4\n")), "{text}");
        assert!(text.contains(&format!("{name}_bucket{{le=\"+Inf\"}} 5\n")), "{text}");
        assert!(text.contains(&format!("{name}_count 5\n")), "{text}");
    }

    #[test]
    fn a_scraper_that_asks_for_openmetrics_gets_it_and_every_other_the_prometheus_text() {
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        assert_eq!(Format::negotiate(Some("text/plain;version=0.0.4;q=0.3,*/*;q=0.2")), Format::Prometheus);
        let prometheus_2 = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus_2)), Format::OpenMetrics);
        let agent = Agent { reconciles: 2, ..Agent::default() };
        let counters = [stats::Counter { stat: Stat::EncapVxlan, packets: 7 }];
        let open = render_as(Format::OpenMetrics, &agent, &counters, &Occupancy::default());
        assert!(open.ends_with("# EOF\n"), "{open}");
        assert!(open.contains("# TYPE dataplane_packets counter"), "{open}");
        assert!(open.contains("dataplane_packets_total{decision=\"encap_vxlan\"} 7"), "{open}");
        assert!(open.contains("dataplane_reconciles_total 2"), "{open}");
        let text = render(&agent, &counters, &Occupancy::default());
        assert!(!text.contains("# EOF"), "{text}");
        assert!(text.contains("# TYPE dataplane_packets_total counter"), "{text}");
    }
}
