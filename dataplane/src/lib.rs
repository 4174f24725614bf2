//! The dataplane agent: reads the cluster from a datastore, plans this node's fast path and
//! programs it into the kernel.
#![deny(missing_docs)]

pub mod agent;
pub mod backend;
pub mod check;
pub mod conntrack;
pub mod datastore;
#[cfg(test)]
mod fixtures;
pub mod incremental;
pub mod ipam;
pub mod metrics;
pub mod model;
pub mod monitor;
pub mod packet;
pub mod pinned;
pub mod plan;
pub mod probe;
pub mod routes;
pub mod rtnl;
pub mod stats;
pub mod sys;
pub mod trace;
