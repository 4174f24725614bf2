//! Backends apply a plan to the kernel: the BPF fast path (maps and TC programs), or, later,
//! netlink routes where the kernel cannot run the programs.

pub mod batch;
pub mod bpf;
pub mod clsact;
pub mod diff;
pub mod entries;
pub mod host_routes;
pub mod kernel_log;
pub mod netlink;
pub mod nftables;
pub mod veth;
pub mod vxlan_anchor;
pub mod xdp;
