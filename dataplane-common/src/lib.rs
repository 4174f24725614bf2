//! Types shared by the kernel programs (`dataplane-ebpf`) and the agent (`dataplane`).
//!
//! Every map's name, key and value is defined here once, `#[repr(C)]` with explicit padding, so
//! both sides read the same bytes and `bpftool map dump` prints the same named fields. With the
//! `user` feature the value types also implement `aya::Pod` and `bytemuck::Pod`.
#![no_std]
#![deny(missing_docs)]

pub mod layout;
pub mod maps;
pub mod monitor;
pub mod net;
pub mod stats;
pub mod templates;

pub use layout::{pinned_map, PinnedMap, PINNED_MAPS};
pub use maps::*;
pub use monitor::{MonitorEvent, MonitorLease, Program};
pub use stats::{Stat, STAT_COUNT};
pub use templates::{TunnelTemplates, TUNNEL_TEMPLATES_MAP};
