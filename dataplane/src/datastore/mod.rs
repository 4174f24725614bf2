//! Datastores turn outside formats (Calico YAML, Kubernetes objects, etcd keys) into the model.
//!
//! Each datastore runs as a task that sends a complete [`Snapshot`] of the cluster whenever it
//! changes; the agent keeps only the latest one and reconciles from it. A datastore that cannot
//! be read sends nothing, so the last good snapshot stays programmed.

pub mod etcd;
pub mod file;
pub mod kubernetes;
pub mod watching;

use std::{
    fs,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use tokio::sync::watch;
use tracing::error;

use crate::model::{Model, Problem};

/// The whole cluster as one datastore read it at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The cluster.
    pub model: Model,
    /// Resources that were skipped, with the reason.
    pub problems: Vec<Problem>,
}

/// Whether the datastore can be read, as its watcher last found it: shared by the watcher, which
/// reports each success and failure, and the metrics endpoint, which shows it. A datastore that
/// has never been read counts as down.
#[derive(Clone, Debug, Default)]
pub struct Connection(Arc<ConnectionState>);

#[derive(Debug, Default)]
struct ConnectionState {
    up: AtomicBool,
    losses: AtomicU64,
}

impl Connection {
    /// A read (or a whole watch start-up) succeeded.
    pub fn up(&self) {
        self.0.up.store(true, Ordering::Relaxed);
    }

    /// The datastore could not be read; counts a loss when it was up.
    pub fn down(&self) {
        if self.0.up.swap(false, Ordering::Relaxed) {
            self.0.losses.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether the last attempt to read the datastore succeeded.
    pub fn is_up(&self) -> bool {
        self.0.up.load(Ordering::Relaxed)
    }

    /// How many times the datastore went from readable to unreadable.
    pub fn losses(&self) -> u64 {
        self.0.losses.load(Ordering::Relaxed)
    }
}

/// How often the file datastore checks its file for changes.
pub const FILE_POLL: Duration = Duration::from_secs(1);

/// Watches a YAML file: sends a snapshot at start and after every change (modification time or
/// length). An unreadable file is reported, `connection` marked down, and the previous snapshot
/// stays.
pub async fn watch_file(path: PathBuf, snapshots: watch::Sender<Option<Snapshot>>, connection: Connection) {
    let mut poll = tokio::time::interval(FILE_POLL);
    let mut seen = None;
    loop {
        poll.tick().await;
        let stamp = file_stamp(&path);
        if stamp == seen {
            continue;
        }
        seen = stamp;
        match file::load(&path) {
            Ok((model, problems)) => {
                connection.up();
                if snapshots.send(Some(Snapshot { model, problems })).is_err() {
                    return;
                }
            }
            Err(error) => {
                connection.down();
                error!("datastore file unusable, keeping the last good state: {error:#}");
            }
        }
    }
}

/// What tells us a file changed: modification time and length.
type FileStamp = (SystemTime, u64);

fn file_stamp(path: &Path) -> Option<FileStamp> {
    let meta = fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_counts_each_loss_once() {
        let connection = Connection::default();
        assert!(!connection.is_up(), "never read is down");
        connection.down();
        assert_eq!(connection.losses(), 0, "failing before the first read is no loss");
        connection.up();
        connection.up();
        assert!(connection.is_up());
        connection.down();
        connection.down();
        assert_eq!((connection.is_up(), connection.losses()), (false, 1));
        connection.up();
        connection.down();
        assert_eq!(connection.losses(), 2);
    }
}
