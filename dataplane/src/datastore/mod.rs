//! Datastores turn outside formats (Calico YAML, Kubernetes objects, etcd keys) into the model.
//!
//! Each datastore runs as a task that sends a complete [`Snapshot`] of the cluster whenever it
//! changes; the agent keeps only the latest one and reconciles from it. A datastore that cannot
//! be read sends nothing, so the last good snapshot stays programmed.

pub mod etcd;
pub mod file;
pub mod kubernetes;

use std::{
    fs,
    path::{Path, PathBuf},
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

/// How often the file datastore checks its file for changes.
pub const FILE_POLL: Duration = Duration::from_secs(1);

/// Watches a YAML file: sends a snapshot at start and after every change (modification time or
/// length). An unreadable file is reported and the previous snapshot stays.
pub async fn watch_file(path: PathBuf, snapshots: watch::Sender<Option<Snapshot>>) {
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
                if snapshots.send(Some(Snapshot { model, problems })).is_err() {
                    return;
                }
            }
            Err(error) => error!("datastore file unusable, keeping the last good state: {error:#}"),
        }
    }
}

/// What tells us a file changed: modification time and length.
type FileStamp = (SystemTime, u64);

fn file_stamp(path: &Path) -> Option<FileStamp> {
    let meta = fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
