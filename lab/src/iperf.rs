//! iperf3 in the lab: one reading of its JSON report (`iperf3 -J`) and one rule for a stream
//! that stalled, for every test that runs traffic across a change.

use std::time::Duration;

use anyhow::{ensure, Context as _};
use serde_json::Value;

use crate::process::ChildHandle;

/// A second of a stream below this many Gbit/s counts as a stall. Any flow the lab carries,
/// through the fast path or the kernel's own, moves far more than 1 Mbit/s even on a loaded
/// machine, while a broken path moves nothing: the floor tells the two apart without asking
/// for a throughput the machine may not have. For throttled streams (`iperf3 -b`), where a
/// higher floor would be above the stream's own rate.
pub const STALL_FLOOR_GBPS: f64 = 0.001;

/// The floor for an unthrottled stream across a change (an agent restart, a filter swapped in
/// place): a second that loses most of its rate to the change is a regression even when it is not
/// a full stall, and the lab's veths carry far more than this on a loaded machine.
pub const UNTHROTTLED_FLOOR_GBPS: f64 = 0.1;

/// Waits until an iperf3 server (`iperf3 -s --forceflush`, text output) reports its first
/// second of received data: the stream is up and carrying, so a test can start changing things.
pub fn wait_for_first_second(server: &mut ChildHandle, timeout: Duration) -> anyhow::Result<()> {
    // Every interval line of the text report ends in a rate ("... 9.41 Gbits/sec").
    server.wait_for_log("bits/sec", timeout).context("the iperf3 stream carried no data")
}

/// What an iperf3 client reported.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// Gbit/s of each interval (one a second by default), in order.
    pub per_second: Vec<f64>,
    /// Bytes the receiver got over the whole run.
    pub received_bytes: u64,
    /// TCP retransmits of the sender (0 for UDP).
    pub retransmits: u64,
}

/// Reads the JSON report of `iperf3 -J`.
pub fn parse(report: &str) -> anyhow::Result<Report> {
    let json: Value = serde_json::from_str(report).with_context(|| format!("iperf3 -J output:\n{report}"))?;
    let intervals =
        json["intervals"].as_array().with_context(|| format!("iperf3 report has no intervals:\n{report}"))?;
    let per_second = intervals.iter().map(|i| i["sum"]["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9).collect();
    Ok(Report {
        per_second,
        received_bytes: json["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0),
        retransmits: json["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
    })
}

/// Checks that the stream lasted at least `seconds` intervals, that none of them stalled (see
/// [`STALL_FLOOR_GBPS`]) and that the receiver got data.
pub fn ensure_never_stalled(report: &Report, seconds: usize) -> anyhow::Result<()> {
    ensure_never_below(report, seconds, STALL_FLOOR_GBPS)
}

/// Checks that the stream lasted at least `seconds` intervals, that every one of them carried more
/// than `floor_gbps` ([`STALL_FLOOR_GBPS`] for throttled streams, [`UNTHROTTLED_FLOOR_GBPS`]
/// otherwise) and that the receiver got data.
pub fn ensure_never_below(report: &Report, seconds: usize, floor_gbps: f64) -> anyhow::Result<()> {
    let per_second = &report.per_second;
    ensure!(per_second.len() >= seconds, "iperf3 reported {} of {seconds} seconds: {per_second:.3?}", per_second.len());
    ensure!(
        per_second.iter().all(|gbps| *gbps > floor_gbps),
        "a second of the stream carried {floor_gbps} Gbit/s or less: {per_second:.3?}"
    );
    ensure!(report.received_bytes > 0, "nothing received");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(per_second: &[f64], received: u64) -> String {
        let intervals: Vec<Value> =
            per_second.iter().map(|gbps| serde_json::json!({"sum": {"bits_per_second": gbps * 1e9}})).collect();
        serde_json::json!({"intervals": intervals, "end": {"sum_received": {"bytes": received}, "sum_sent": {"retransmits": 3}}})
            .to_string()
    }

    #[test]
    fn a_steady_stream_passes_and_a_stalled_second_or_a_short_run_fails() {
        let steady = parse(&report(&[9.5, 8.0, 0.5], 1000)).expect("parses");
        assert_eq!(steady.per_second.len(), 3);
        assert_eq!(steady.retransmits, 3);
        assert!(ensure_never_stalled(&steady, 3).is_ok());
        assert!(ensure_never_stalled(&steady, 4).is_err(), "a short run is not the whole stream");
        let stalled = parse(&report(&[9.5, 0.0, 8.0], 1000)).expect("parses");
        assert!(ensure_never_stalled(&stalled, 3).is_err());
        let empty = parse(&report(&[9.5, 8.0], 0)).expect("parses");
        assert!(ensure_never_stalled(&empty, 2).is_err(), "nothing received");
        assert!(parse("not json").is_err());
        let slowed = parse(&report(&[9.5, 0.05, 8.0], 1000)).expect("parses");
        assert!(ensure_never_stalled(&slowed, 3).is_ok(), "0.05 Gbit/s is no stall");
        assert!(ensure_never_below(&slowed, 3, UNTHROTTLED_FLOOR_GBPS).is_err(), "but is below the unthrottled floor");
    }
}
