//! Waiting on a datastore watch (etcd or Kubernetes) for the snapshot a test expects.

use std::time::{Duration, Instant};

use anyhow::bail;
use dataplane::datastore::{watching::WatchThread, Snapshot};

/// Waits for a snapshot of `watch` that satisfies `wanted`; returns it and how long it took.
/// `what` names the awaited state in the error, which also shows the last snapshot received.
pub fn wait_for(
    watch: &WatchThread,
    what: &str,
    timeout: Duration,
    wanted: impl Fn(&Snapshot) -> bool,
) -> anyhow::Result<(Snapshot, Duration)> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut last = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match watch.recv_timeout(left) {
            Some(snapshot) if wanted(&snapshot) => return Ok((snapshot, started.elapsed())),
            Some(snapshot) => last = Some(snapshot),
            None if watch.is_finished() => bail!("the datastore watch ended while waiting for {what}"),
            None => bail!("no snapshot with {what} within {timeout:?}; the last one was {last:#?}"),
        }
    }
}
