//! The agent's Prometheus endpoint and health check, scraped while real traffic flows: the
//! counters a dashboard follows move with the packets, /healthz reports the last reconcile, and
//! the datastore's connection state follows the datastore (here a file replaced with garbage).

use dataplane_tests::workspace_root;
use std::{path::PathBuf, time::Duration};

use anyhow::{ensure, Context as _};
use dataplane_lab::{Lab, LabOptions};

/// The example cluster: VXLAN between node-1 and node-2.
const EXAMPLE: &str = "examples/two-nodes.yaml";
/// Where node-1's agent serves metrics, inside node-1's namespace.
const METRICS_ADDR: &str = "127.0.0.1:9091";

/// GET `path` from the agent, from inside `netns` (the agent listens on the node's loopback).
fn get(netns: &str, path: &str) -> anyhow::Result<(u16, String)> {
    dataplane_lab::http_get(netns, METRICS_ADDR, path)
}

/// Two GETs of /metrics on one kept-alive connection, the second asking for OpenMetrics as
/// Prometheus does: both answers, headers and body.
fn two_requests_on_one_connection(netns: &str) -> anyhow::Result<(String, String)> {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    dataplane_lab::in_netns(netns, || {
        let mut stream = std::net::TcpStream::connect(METRICS_ADDR).context("connecting to the agent")?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut reader = BufReader::new(stream.try_clone()?);
        // The first answer, read by its Content-Length: the connection stays open.
        let mut first = String::new();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            ensure!(reader.read_line(&mut line)? > 0, "the agent closed the connection after:\n{first}");
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().context("a Content-Length that is no number")?;
            }
            first.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        first.push_str(&String::from_utf8_lossy(&body));
        let accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
        write!(stream, "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\nConnection: close\r\n\r\n")?;
        let mut second = String::new();
        reader.read_to_string(&mut second)?;
        Ok((first, second))
    })
}

/// The value of the sample `name` (with its labels) in a Prometheus text body.
fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Every line of a `--log-format json` log is a JSON object with a level and a message, and the
/// reconcile's line carries its counts and the `reconcile` span with the node.
fn check_json_log(log: &str) -> anyhow::Result<()> {
    let mut programmed = None;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let event: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("a log line is not JSON: {line:?}"))?;
        ensure!(event["level"].is_string() && event["fields"]["message"].is_string(), "no level/message: {line}");
        if event["fields"]["message"] == "fast path programmed" {
            programmed = Some(event);
        }
    }
    let event = programmed.with_context(|| format!("no \"fast path programmed\" event in:\n{log}"))?;
    ensure!(event["fields"]["routes"].as_u64() == Some(5), "routes field: {event}");
    ensure!(event["span"]["name"] == "reconcile" && event["span"]["node"] == "node-1", "span: {event}");
    Ok(())
}

/// Scrapes until `name` reads `value` (the file datastore reads a change when inotify reports it); returns that body.
fn wait_for_sample(netns: &str, name: &str, value: f64) -> anyhow::Result<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let body = get(netns, "/metrics")?.1;
        if sample(&body, name) == Some(value) {
            return Ok(body);
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("{name} did not reach {value} within 10 s:\n{body}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn metrics_follow_the_traffic_and_health_reports_the_reconcile() -> anyhow::Result<()> {
    if dataplane_tests::skip_unless_root("metrics_follow_the_traffic_and_health_reports_the_reconcile") {
        return Ok(());
    }
    let root = workspace_root();
    let example = root.join(EXAMPLE);
    let bin =
        std::env::var_os("DATAPLANE_BIN").map(PathBuf::from).unwrap_or_else(|| root.join("target/debug/dataplane"));
    let model = dataplane_lab::load_model(&example)?;
    let lab = Lab::up(&model, LabOptions::default())?;
    // node-1 reads a copy the test may break; the lab removes its directory on teardown.
    let good = std::fs::read_to_string(&example).with_context(|| format!("reading {}", example.display()))?;
    let datastore = lab.dir().join("datastore.yaml");
    std::fs::write(&datastore, &good).with_context(|| format!("writing {}", datastore.display()))?;
    let netns = lab.node_netns("node-1")?.to_owned();
    let (bin_arg, store) = (bin.to_string_lossy().into_owned(), format!("file:{}", datastore.display()));
    let pin = lab.pin_path("node-1").to_string_lossy().into_owned();
    // node-1 logs JSON, as a DaemonSet feeding a log collector would.
    let argv = [
        bin_arg.as_str(),
        "--log-format",
        "json",
        "run",
        "--datastore",
        &store,
        "--node",
        "node-1",
        "--pin-path",
        &pin,
        "--metrics-addr",
        METRICS_ADDR,
        "--kernel-log",
        "drops",
    ];
    let mut agent = lab.spawn(&netns, &argv, "agent-node-1")?;
    agent.wait_for_log("fast path programmed", Duration::from_secs(60))?;
    check_json_log(&agent.log())?;
    let mut other = lab.start_agent("node-2", &bin, &example)?;
    other.wait_ready(Duration::from_secs(60))?;

    let (status, body) = get(&netns, "/healthz")?;
    ensure!(status == 200, "/healthz answered {status} after a good reconcile: {body}");

    let before = get(&netns, "/metrics")?.1;
    let encap = "dataplane_packets_total{decision=\"encap_vxlan\"}";
    let encap_before = sample(&before, encap).with_context(|| format!("no {encap} in:\n{before}"))?;
    ensure!(sample(&before, "dataplane_map_entries{map=\"routes\"}") == Some(5.0), "routes occupancy:\n{before}");
    ensure!(sample(&before, "dataplane_reconciles_total").is_some_and(|n| n >= 1.0), "reconciles:\n{before}");
    ensure!(sample(&before, "dataplane_last_reconcile_ok") == Some(1.0), "last reconcile:\n{before}");
    ensure!(sample(&before, "dataplane_datastore_up") == Some(1.0), "datastore state:\n{before}");
    ensure!(sample(&before, "dataplane_datastore_losses_total") == Some(0.0), "datastore losses:\n{before}");
    // The maps and the route table were read once, to adopt them; changes are written from what
    // the agent remembers, without reading them again.
    ensure!(sample(&before, "dataplane_kernel_dumps_total") == Some(2.0), "kernel dumps:\n{before}");
    // The first snapshot was programmed, so the change latency histogram has counted it.
    ensure!(
        sample(&before, "dataplane_change_to_programmed_seconds_count").is_some_and(|n| n >= 1.0),
        "change to programmed:\n{before}"
    );

    // A Prometheus server keeps its connection open and asks for OpenMetrics: both requests are
    // answered on one connection, the second in OpenMetrics with the same samples.
    let (first, second) = two_requests_on_one_connection(&netns)?;
    ensure!(first.starts_with("HTTP/1.1 200") && first.contains("version=0.0.4"), "first answer:\n{first}");
    ensure!(first.contains("dataplane_reconciles_total "), "first answer:\n{first}");
    ensure!(second.starts_with("HTTP/1.1 200"), "second answer on the same connection:\n{second}");
    ensure!(second.to_ascii_lowercase().contains("content-type: application/openmetrics-text"), "{second}");
    ensure!(second.contains(encap) && second.trim_end().ends_with("# EOF"), "OpenMetrics answer:\n{second}");

    let web1 = lab.pod("default/web-1")?;
    let web2 = lab.pod("default/web-2")?.addr.to_string();
    lab.exec(&web1.netns, &["ping", "-c", "5", "-i", "0.2", "-W", "2", &web2])?;
    let after = get(&netns, "/metrics")?.1;
    let encap_after = sample(&after, encap).with_context(|| format!("no {encap} in:\n{after}"))?;
    ensure!(encap_after >= encap_before + 5.0, "{encap} went from {encap_before} to {encap_after} over 5 pings");

    // Kernel logs (--kernel-log drops): a packet to a blackholed address of node-1's block is
    // logged with its program and reason; the pings' decisions are not.
    let _ = lab.exec(&web1.netns, &["ping", "-c", "1", "-W", "1", "10.244.1.50"]);
    let logged = "from_workload: drop_blackhole";
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !agent.log().contains(logged) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = agent.log();
    ensure!(log.contains(logged), "no kernel log line {logged:?} in:\n{log}");
    ensure!(!log.contains("from_workload: encap_vxlan"), "decisions logged with --kernel-log drops:\n{log}");

    let (status, _) = get(&netns, "/nothing-here")?;
    ensure!(status == 404, "an unknown path answered {status}");

    // The datastore becomes unreadable: the metric says so, the last good state keeps carrying
    // traffic, and /healthz stays up (restarting the pod would not bring the datastore back).
    std::fs::write(&datastore, "{ this is not YAML: [")?;
    let down = wait_for_sample(&netns, "dataplane_datastore_up", 0.0)?;
    ensure!(sample(&down, "dataplane_datastore_losses_total") == Some(1.0), "losses after the garbage:\n{down}");
    lab.exec(&web1.netns, &["ping", "-c", "2", "-i", "0.2", "-W", "2", &web2])?;
    let (status, body) = get(&netns, "/healthz")?;
    ensure!(status == 200, "/healthz answered {status} while the last good state is kept: {body}");
    std::fs::write(&datastore, &good)?;
    let up = wait_for_sample(&netns, "dataplane_datastore_up", 1.0)?;
    ensure!(sample(&up, "dataplane_datastore_losses_total") == Some(1.0), "losses after the repair:\n{up}");
    Ok(())
}
