//! Datastores turn outside formats (Calico YAML, Kubernetes objects, etcd keys) into the model.
//!
//! Each datastore runs as a task. The file and Kubernetes watchers send a complete [`Snapshot`]
//! of the cluster whenever it changes (the agent plans each as a [`Delta::Replace`]); the etcd
//! watcher sends the agent typed [`Delta`]s, one whole read as a `Replace` and then each burst's
//! changes. A datastore that cannot be read sends nothing, so the last good state stays
//! programmed.

pub mod etcd;
pub mod file;
pub mod file_watch;
pub mod kubernetes;
pub mod resources;
pub mod watching;

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc, Mutex,
};

pub use file_watch::watch_file;

use ipnet::Ipv4Net;

use crate::model::{Block, IpPool, Model, Node, Problem, Workload};

/// One change of the cluster, as a watcher decoded it: the unit the incremental planner
/// ([`crate::incremental::Planner`]) consumes, so that a change costs what it touches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delta {
    /// An IP pool was created or changed.
    UpsertPool(IpPool),
    /// The IP pool of this name is gone.
    RemovePool(String),
    /// A node was created or changed.
    UpsertNode(Node),
    /// The node of this name is gone.
    RemoveNode(String),
    /// A workload endpoint was created or changed.
    UpsertWorkload(Workload),
    /// The workload endpoint `namespace/name` is gone.
    RemoveWorkload(String),
    /// A block affinity (`BlockAffinity`, or an etcd host key) was created or changed.
    UpsertAffinity(Block),
    /// The affinity of this block to this node is gone.
    RemoveAffinity {
        /// The block.
        cidr: Ipv4Net,
        /// The node it was affine to.
        node: String,
    },
    /// An allocation block's affinity (`IPAMBlock`, or an etcd assignment key) was written.
    UpsertAllocation(Block),
    /// The allocation block of this CIDR is gone, or names no host any more.
    RemoveAllocation(Ipv4Net),
    /// Everything, after a whole read (start, reconnect, compaction, a file re-read, a
    /// Kubernetes relist): the planner plans it whole and the backends diff every key.
    Replace {
        /// Pools, nodes, workloads, and the blocks of the affinities.
        model: Model,
        /// The allocation blocks' affinities, kept apart so that a later
        /// [`Delta::RemoveAllocation`] finds them (the file and Kubernetes datastores merge
        /// theirs into `model.blocks` and send none here).
        allocations: Vec<Block>,
    },
}

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
    /// Why it is down, when the watcher said.
    reason: Mutex<Option<String>>,
}

impl Connection {
    /// A read (or a whole watch start-up) succeeded.
    pub fn up(&self) {
        self.0.up.store(true, Ordering::Relaxed);
        self.set_reason(None);
    }

    /// The datastore could not be read; counts a loss when it was up.
    pub fn down(&self) {
        if self.0.up.swap(false, Ordering::Relaxed) {
            self.0.losses.fetch_add(1, Ordering::Relaxed);
        }
        self.set_reason(None);
    }

    /// [`Connection::down`], saying why (for `/healthz`).
    pub fn fail(&self, reason: String) {
        self.down();
        self.set_reason(Some(reason));
    }

    /// Why the datastore is down, if the watcher said.
    pub fn reason(&self) -> Option<String> {
        self.0.reason.lock().ok().and_then(|reason| reason.clone())
    }

    fn set_reason(&self, reason: Option<String>) {
        if let Ok(mut slot) = self.0.reason.lock() {
            *slot = reason;
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
        connection.fail("file missing".to_owned());
        assert_eq!(connection.losses(), 2);
        assert_eq!(connection.reason().as_deref(), Some("file missing"));
        connection.up();
        assert_eq!(connection.reason(), None, "up clears the reason");
    }
}
