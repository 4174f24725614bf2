//! Builds the kernel programs (`dataplane-ebpf`) for bpfel-unknown-none and leaves the object in
//! OUT_DIR, where `src/backend/bpf.rs` embeds it.
//!
//! `AYA_BUILD_SKIP=1` skips the eBPF build (for quick host-only work); the agent then embeds an
//! empty object and refuses to load it with a clear error.

use std::{env, fs, path::PathBuf};

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        let object = out_dir.join("dataplane");
        if !object.exists() {
            fs::write(&object, []).with_context(|| format!("writing {}", object.display()))?;
        }
    }
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    let ebpf_dir = manifest_dir.join("../dataplane-ebpf");
    let ebpf_dir = ebpf_dir.to_str().context("the eBPF crate's path is not UTF-8")?;
    // The upgrade test's older agent builds the programs with the previous map layouts too.
    let features: &[&str] =
        if env::var_os("CARGO_FEATURE_PREVIOUS_LAYOUT").is_some() { &["previous-layout"] } else { &[] };
    aya_build::build_ebpf(
        [aya_build::Package { name: "dataplane-ebpf", root_dir: ebpf_dir, features, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
