//! Helpers shared by the integration tests in `tests/`, which need root and network namespaces.
#![deny(missing_docs)]

pub mod kube_api;
pub mod kube_example;
pub mod packet;
pub mod program;

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
