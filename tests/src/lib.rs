//! Helpers shared by the integration tests in `tests/`, which need root and network namespaces.
#![deny(missing_docs)]

pub mod certs;
pub mod kube_api;
pub mod kube_example;
pub mod packet;
pub mod program;
pub mod watch;

use std::path::{Path, PathBuf};

/// The workspace root: tests/ is one of its members.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// The agent binary: $DATAPLANE_BIN (set by `cargo xtask test`), else target/debug/dataplane.
pub fn agent_bin() -> PathBuf {
    std::env::var_os("DATAPLANE_BIN").map_or_else(|| workspace_root().join("target/debug/dataplane"), PathBuf::from)
}

/// A second pod of `nat-pool` on node-1 of examples/nat.yaml, to append to it as one more YAML
/// document: two pods can use the same source port towards the same server and so collide on
/// the node's address (one pod cannot collide with itself: its flows differ by their own ports).
pub const NAT_3: &str = "\
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata:
  name: node--1-k8s-nat--3-eth0
  namespace: default
spec:
  endpoint: eth0
  interfaceName: cali7a50102d5c2
  ipNetworks:
  - 10.244.1.3/32
  mac: 0a:58:0a:f4:01:03
  node: node-1
  orchestrator: k8s
  pod: nat-3
";

/// Skips `test` because of `why` (something this machine lacks): it says so, and the caller
/// returns. Under CI (`CI` set, as `.ci/run` runs) that is a failure instead: `cargo xtask setup`
/// provides everything the suite needs, so the suite can never pass by skipping what it exists
/// to test.
pub fn skip(test: &str, why: &str) {
    assert!(std::env::var_os("CI").is_none(), "{test} {why}, and under CI it must run, not be skipped");
    eprintln!("SKIPPED {test}: {why}");
}

/// Whether `test` must be skipped because this process is not root (network namespaces, eBPF
/// and BPF_PROG_TEST_RUN need it); see [`skip`].
pub fn skip_unless_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return false;
    }
    skip(test, "needs root (network namespaces, eBPF); run `cargo xtask test` as root");
    true
}
