//! What the watching datastores (etcd, the Kubernetes API) share: how a burst of changes becomes
//! one snapshot, how the connection's state is logged and shown, how retries back off, and a
//! thread to run a watch on for callers without a runtime.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::sync::{oneshot, watch};
use tracing::{debug, error, info, warn};

use super::{Connection, Snapshot};

/// A burst of changes is sent once it has been quiet this long (a few ms: every millisecond
/// here is a millisecond before a new pod is reachable, and the writes of one burst, a
/// transaction or a controller's batch, arrive closer together than this)...
pub const QUIET: Duration = Duration::from_millis(3);
/// ...or this long after its first change, whichever comes first, so that a long stream of
/// writes (a calicoctl import, a rollout of many pods) still reaches the dataplane every 100 ms.
pub const MAX_DELAY: Duration = Duration::from_millis(100);
/// The first retry after a failure.
pub const BACKOFF_START: Duration = Duration::from_millis(200);
/// Retries back off up to this.
pub const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// The wait between a failed session with the datastore and the next: it doubles up to
/// [`BACKOFF_CAP`] and starts over after a session that had connected.
pub struct Retry {
    backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry { backoff: BACKOFF_START }
    }
}

impl Retry {
    /// Reports the session's `error` on `link` (with `hint`, what to look at) and waits the
    /// backoff; false when `closed` (nobody listens any more) ends first.
    pub async fn after(
        &mut self,
        link: &mut Link,
        error: &anyhow::Error,
        hint: &str,
        closed: impl std::future::Future<Output = ()>,
    ) -> bool {
        if link.connected {
            // The session worked for a while: this is a new outage, start the backoff over.
            self.backoff = BACKOFF_START;
        }
        link.failed(error, hint, self.backoff);
        tokio::select! {
            _ = tokio::time::sleep(self.backoff) => {}
            _ = closed => return false,
        }
        self.backoff = (self.backoff * 2).min(BACKOFF_CAP);
        true
    }
}

/// Sends `snapshot` if it differs from the last one sent. Returns false when nobody listens any
/// more. `source` names the datastore in the log ("etcd", "the Kubernetes API").
pub fn publish(
    snapshot: Snapshot,
    snapshots: &watch::Sender<Option<Snapshot>>,
    last: &mut Snapshot,
    first_change: Option<Instant>,
    source: &str,
) -> bool {
    if snapshot == *last {
        return true;
    }
    if snapshot.problems != last.problems {
        log_problems(&snapshot, source);
    }
    debug!(
        pools = snapshot.model.pools.len(),
        blocks = snapshot.model.blocks.len(),
        nodes = snapshot.model.nodes.len(),
        workloads = snapshot.model.workloads.len(),
        since_change_ms = first_change.map(|at| at.elapsed().as_millis() as u64),
        "snapshot sent"
    );
    *last = snapshot.clone();
    snapshots.send(Some(snapshot)).is_ok()
}

/// Says how many resources of `source` are skipped (each is named when the agent reconciles).
pub fn log_problems(snapshot: &Snapshot, source: &str) {
    if !snapshot.problems.is_empty() {
        warn!(count = snapshot.problems.len(), "some resources in {source} cannot be used and are skipped");
    }
}

/// Sleeps until `deadline`; never returns without one (the caller's select guards it).
pub async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline.into()).await;
    }
}

/// The connection's state, to log each change of it once and show it in the metrics.
#[derive(Debug)]
pub struct Link {
    /// The datastore, as a log line names it ("etcd", "the Kubernetes API").
    source: &'static str,
    /// A full read has succeeded in the current session.
    pub connected: bool,
    /// A full read has ever succeeded.
    ever_connected: bool,
    /// When the connection was lost, while it is.
    lost_at: Option<Instant>,
    /// Failed attempts since the last success.
    failures: u32,
    /// Where the state is shown (metrics).
    connection: Connection,
}

impl Link {
    /// A link to `source`, not connected yet, reporting to `connection`.
    pub fn new(source: &'static str, connection: Connection) -> Self {
        Link { source, connected: false, ever_connected: false, lost_at: None, failures: 0, connection }
    }

    /// The whole cluster was read: `items` keys or objects in `took`.
    pub fn read(&mut self, items: usize, took: Duration) {
        let (source, took_ms) = (self.source, took.as_millis() as u64);
        match (self.ever_connected, self.lost_at.take()) {
            (false, _) => info!(items, took_ms, "connected to {source}: read the cluster"),
            (true, Some(lost_at)) => info!(
                items,
                took_ms,
                down_ms = lost_at.elapsed().as_millis() as u64,
                "reconnected to {source}: read the cluster again; the dataplane resyncs"
            ),
            (true, None) => info!(items, took_ms, "read the cluster from {source} again"),
        }
        self.connected = true;
        self.ever_connected = true;
        self.failures = 0;
        self.connection.up();
    }

    /// A session failed; the next is tried after `retry_in`. `hint` says what may be wrong in
    /// the settings, for as long as the datastore never answered.
    pub fn failed(&mut self, error: &anyhow::Error, hint: &str, retry_in: Duration) {
        self.failures += 1;
        self.connection.down();
        let (source, attempts, retry_in_ms) = (self.source, self.failures, retry_in.as_millis() as u64);
        if self.connected {
            self.connected = false;
            self.lost_at = Some(Instant::now());
            warn!(retry_in_ms, "lost the connection to {source}: {error:#}; the last good state stays programmed");
        } else if !self.ever_connected {
            let hint = if hint.is_empty() { String::new() } else { format!(" ({hint})") };
            error!(
                attempts,
                retry_in_ms,
                "cannot reach {source}: {error:#}{hint}; nothing is programmed from {source} until it answers"
            );
        } else {
            let down_ms = self.lost_at.map(|at| at.elapsed().as_millis() as u64);
            warn!(
                attempts,
                down_ms, retry_in_ms, "{source} is still unreachable: {error:#}; the last good state stays programmed"
            );
        }
    }
}

/// A datastore watch on a thread of its own, with its own runtime, for callers that have none
/// (tests, one-shot commands). Dropping it stops the watch.
pub struct WatchThread {
    snapshots: std::sync::mpsc::Receiver<Snapshot>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    connection: Connection,
}

impl WatchThread {
    /// Runs `watch` (a datastore's watch function with its settings) on a thread named `name`.
    pub fn spawn<W, F>(name: &str, watch: W) -> anyhow::Result<Self>
    where
        W: FnOnce(watch::Sender<Option<Snapshot>>, Connection) -> F + Send + 'static,
        F: Future<Output = ()>,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .with_context(|| format!("starting the {name} watch's runtime"))?;
        let (forward, snapshots) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let connection = Connection::default();
        let reporter = connection.clone();
        let thread = std::thread::Builder::new()
            .name(format!("{name}-watch"))
            .spawn(move || {
                runtime.block_on(async move {
                    let (sender, mut receiver) = watch::channel(None);
                    let forwarding = async {
                        while receiver.changed().await.is_ok() {
                            let snapshot = receiver.borrow_and_update().clone();
                            if let Some(snapshot) = snapshot {
                                if forward.send(snapshot).is_err() {
                                    return;
                                }
                            }
                        }
                    };
                    tokio::select! {
                        _ = watch(sender, reporter) => {}
                        _ = forwarding => {}
                        _ = stopped => {}
                    }
                })
            })
            .with_context(|| format!("starting the {name} watch's thread"))?;
        Ok(WatchThread { snapshots, stop: Some(stop), thread: Some(thread), connection })
    }

    /// The next snapshot, waiting at most `timeout`; `None` on timeout or when the watch ended.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Snapshot> {
        self.snapshots.recv_timeout(timeout).ok()
    }

    /// Whether the datastore answered the last attempt to read it, and how often it was lost.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Whether the watch has ended (unusable settings).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|thread| thread.is_finished())
    }
}

impl Drop for WatchThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for WatchThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchThread").field("finished", &self.is_finished()).finish()
    }
}
