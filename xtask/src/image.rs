//! `cargo xtask image`: the agent's container image, built here from Debian's packages alone.
//!
//! 1. A root file system made by `debootstrap --variant=minbase` with [`ROOTFS_PACKAGES`] (the tools
//!    an operator runs inside the pod), stripped of documentation, logs and caches. It is cached
//!    under `target/image/` keyed by its recipe, so a second build reuses it.
//! 2. The release agent at [`AGENT_PATH`], the image's entrypoint and the DaemonSets' `command`.
//! 3. One layer written as a reproducible tar (sorted entries, fixed mtimes, numeric owners, no
//!    owner names), gzipped, and an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/`)
//!    around it: config and manifest JSON with sha256 digests. The same root file system and
//!    agent give the same digest. `skopeo copy oci:target/image/oci:TAG docker://...` pushes it.
//!
//! The OCI documents are three small JSON objects written with serde_json, rather than through
//! oci-spec and its builder/regex dependency tree, for one image of one layer.

use std::{
    collections::HashMap,
    fs,
    io::{self, Write},
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, ensure, Context as _};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::setup;

/// Options of `cargo xtask image`.
#[derive(clap::Args)]
pub struct Options {
    /// Rebuild the cached base root file system too.
    #[arg(long)]
    pub rebuild_base: bool,
    /// Put this agent binary in the image instead of building the release agent (the image test
    /// passes the debug agent the suite already built, to spare CI a release build).
    #[arg(long, value_name = "PATH")]
    pub agent: Option<PathBuf>,
}

/// The image's repository: what the manifests in deploy/ reference, with [`tag`].
pub const IMAGE_NAME: &str = "ghcr.io/dataplane/dataplane";
/// Where the agent lives in the image: its entrypoint and the DaemonSets' `command`.
pub const AGENT_PATH: &str = "usr/local/bin/dataplane";
/// Debian's suite the image is made of, and where its packages come from.
const SUITE: &str = "bookworm";
/// Packages beyond minbase, each with why: the tools an operator runs in the pod.
const ROOTFS_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip: routes, neighbours, links as the agent programmed them"),
    ("bpftool", "dumps of the pinned maps with their BTF field names"),
];
/// Paths (relative to the root) removed from the base: nothing an agent or an operator needs,
/// and the files that differ from one debootstrap run to the next (logs, caches, the machine id).
const STRIPPED: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "var/cache/apt",
    "var/cache/debconf/config.dat-old",
    "var/cache/debconf/templates.dat-old",
    "var/cache/ldconfig/aux-cache",
    "var/lib/apt/lists",
    "var/log",
    "etc/machine-id",
    "etc/hostname",
    "etc/resolv.conf",
    "etc/ssh",
    "dev",
    "proc",
    "sys",
    "run",
    "tmp",
];
/// What an operator runs in the pod, where the base must have it.
const OPERATOR_TOOLS: &[&str] = &["usr/bin/ip", "usr/sbin/bpftool"];
/// Directories every container runtime mounts over; empty in the image.
const MOUNT_POINTS: &[&str] = &["dev", "proc", "sys", "run", "tmp"];
/// The time every entry of the layer and the image config carry (2025-01-01T00:00:00Z), so that
/// the digest depends on content only; also given to debootstrap as SOURCE_DATE_EPOCH.
const EPOCH: u64 = 1_735_689_600;
const EPOCH_RFC3339: &str = "2025-01-01T00:00:00Z";
/// Bumped when the recipe of the base changes in a way the package list does not show.
const BASE_RECIPE_VERSION: u32 = 1;
/// Host packages the build needs, each with why.
const HOST_PACKAGES: &[(&str, &str)] = &[
    ("debootstrap", "the image's root file system from Debian's packages"),
    ("podman", "runs the image as the DaemonSet does (tests/tests/image_daemonset.rs)"),
    // crun 1.8 refuses this machine's hybrid cgroup hierarchy (cgroup v1 plus a cgroup2 with a
    // controller); runc runs the containers.
    ("runc", "podman's OCI runtime here"),
    ("binutils", "strip: the agent goes into the image without its debug info"),
];

/// The image's tag: the agent's version.
pub fn tag() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// The image's full reference, as the DaemonSets name it.
pub fn reference() -> String {
    format!("{IMAGE_NAME}:{}", tag())
}

/// What `cargo xtask image` built.
pub struct Built {
    /// The OCI image layout directory.
    pub layout: PathBuf,
    /// The manifest's digest (`sha256:...`): the image's digest.
    pub digest: String,
}

/// `cargo xtask image`: builds the image and prints its digest, size and contents.
pub fn run(options: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    let built = build(options.rebuild_base, options.agent.as_deref())?;
    say(&format!("built {} in {:.0} s: {}", reference(), started.elapsed().as_secs_f64(), built.digest));
    say(&format!("OCI layout at {}", built.layout.display()));
    say(&format!("load it: podman pull oci:{}:{}", built.layout.display(), tag()));
    Ok(())
}

/// Builds the image (prerequisites, the release agent or `agent`, cached base, layer, layout).
pub fn build(rebuild_base: bool, agent: Option<&Path>) -> anyhow::Result<Built> {
    check_manifests(&setup::workspace_root()?)?;
    setup::ensure()?;
    setup::ensure_packages(HOST_PACKAGES)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("cargo xtask image needs root: debootstrap chroots and creates files of other owners");
    }
    let agent = match agent {
        Some(agent) if agent.is_file() => agent.to_path_buf(),
        Some(agent) => bail!("--agent {}: no such file; build it first (cargo xtask build)", agent.display()),
        None => setup::build_agent(true)?,
    };
    let out = setup::workspace_root()?.join("target/image");
    let agent = stripped(&agent, &out)?;
    let base = base_rootfs(&out, rebuild_base)?;
    let layout = out.join("oci");
    let built = write_layout(&layout, &base, &agent)?;
    Ok(built)
}

/// A copy of `agent` in `out` without its debug info (DWARF is most of a Rust binary; the symbols
/// stay, so `--backtrace` still names functions). `strip` writes the same bytes for the same
/// input, so the image stays reproducible.
fn stripped(agent: &Path, out: &Path) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let copy = out.join("dataplane.stripped");
    let status = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&copy)
        .arg(agent)
        .status()
        .context("running strip (binutils)")?;
    if !status.success() {
        bail!("strip --strip-debug {} failed ({status})", agent.display());
    }
    Ok(copy)
}

/// Fails unless every container of every DaemonSet in deploy/ runs this image ([`reference`])
/// with [`AGENT_PATH`] as its command, so that what the manifests run is what the image holds.
fn check_manifests(root: &Path) -> anyhow::Result<()> {
    let deploy = root.join("deploy");
    let mut names: Vec<PathBuf> = fs::read_dir(&deploy)
        .with_context(|| format!("reading {}", deploy.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    names.sort();
    let command = vec![format!("/{AGENT_PATH}")];
    let mut containers = 0;
    for path in names {
        let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = <serde_yaml::Value as serde::Deserialize>::deserialize(document)
                .with_context(|| format!("{} is not YAML", path.display()))?;
            if value["kind"] != "DaemonSet" {
                continue;
            }
            for container in value["spec"]["template"]["spec"]["containers"].as_sequence().into_iter().flatten() {
                let name = container["name"].as_str().unwrap_or("?");
                let image = container["image"].as_str().unwrap_or_default();
                let runs: Vec<&str> =
                    container["command"].as_sequence().into_iter().flatten().filter_map(|c| c.as_str()).collect();
                ensure!(
                    image == reference() && runs == command,
                    "{}: container {name} runs image {image:?} with command {runs:?}, but `cargo xtask image` builds                      {} with the agent at {command:?}: fix the manifest",
                    path.display(),
                    reference()
                );
                containers += 1;
            }
        }
    }
    ensure!(containers > 0, "no DaemonSet container in {}", deploy.display());
    Ok(())
}

/// The recipe of the base root file system; its hash names the cache.
fn base_recipe() -> String {
    let packages: Vec<&str> = ROOTFS_PACKAGES.iter().map(|(name, _)| *name).collect();
    format!(
        "debootstrap --variant=minbase --include={} {SUITE} {}; strip {}; recipe {BASE_RECIPE_VERSION}",
        packages.join(","),
        setup::DEBIAN_MIRROR,
        STRIPPED.join(",")
    )
}

/// The cached base root file system, made by debootstrap if the cache lacks it.
fn base_rootfs(out: &Path, rebuild: bool) -> anyhow::Result<PathBuf> {
    let recipe = base_recipe();
    let key = hex(&Sha256::digest(recipe.as_bytes()))[..16].to_owned();
    let base = out.join(format!("base-{key}"));
    let stamp = out.join(format!("base-{key}.recipe"));
    if !rebuild && stamp.is_file() && base.is_dir() {
        say(&format!("base root file system cached at {} (--rebuild-base to make it again)", base.display()));
        return Ok(base);
    }
    let started = Instant::now();
    let scratch = out.join(format!("base-{key}.building"));
    for stale in [&scratch, &base] {
        if stale.exists() {
            fs::remove_dir_all(stale).with_context(|| format!("removing {}", stale.display()))?;
        }
    }
    let _ = fs::remove_file(&stamp);
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let packages: Vec<&str> = ROOTFS_PACKAGES.iter().map(|(name, _)| *name).collect();
    say(&format!("debootstrap {SUITE} minbase + {} (about 2-4 minutes; cached afterwards)", packages.join(" ")));
    let log = out.join("debootstrap.log");
    let args = [
        "--variant=minbase".to_owned(),
        format!("--include={}", packages.join(",")),
        SUITE.to_owned(),
        scratch.display().to_string(),
        setup::DEBIAN_MIRROR.to_owned(),
    ];
    setup::debootstrap(&args, &[("SOURCE_DATE_EPOCH", EPOCH.to_string())], &log)?;
    for path in STRIPPED {
        let path = scratch.join(path);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {
                fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?
            }
            Ok(_) => fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error).with_context(|| format!("looking at {}", path.display())),
        }
    }
    for tool in OPERATOR_TOOLS {
        ensure!(scratch.join(tool).is_file(), "debootstrap made no /{tool}: check {}", log.display());
    }
    for dir in MOUNT_POINTS {
        fs::create_dir_all(scratch.join(dir)).with_context(|| format!("creating /{dir} in the base"))?;
    }
    fs::set_permissions(scratch.join("tmp"), fs::Permissions::from_mode(0o1777)).context("chmod 1777 /tmp")?;
    fs::rename(&scratch, &base).with_context(|| format!("renaming {} to {}", scratch.display(), base.display()))?;
    fs::write(&stamp, &recipe).with_context(|| format!("writing {}", stamp.display()))?;
    say(&format!("base root file system made in {:.0} s at {}", started.elapsed().as_secs_f64(), base.display()));
    Ok(base)
}

/// One file of the layer: its path in the image and where its content and metadata come from.
struct Entry {
    path: String,
    source: PathBuf,
}

/// Every entry of `base` (relative paths, `/`-separated), plus the agent at [`AGENT_PATH`],
/// sorted by path so that the tar's order does not depend on the file system's.
fn entries(base: &Path, agent: &Path) -> anyhow::Result<Vec<Entry>> {
    let mut out = Vec::new();
    let mut pending = vec![base.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for item in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let item = item.with_context(|| format!("reading {}", dir.display()))?;
            let source = item.path();
            let path = source
                .strip_prefix(base)
                .context("an entry outside the base")?
                .to_str()
                .with_context(|| format!("{} is not UTF-8", source.display()))?
                .to_owned();
            if item.file_type().with_context(|| format!("stat {}", source.display()))?.is_dir() {
                pending.push(source.clone());
            }
            if path != AGENT_PATH {
                out.push(Entry { path, source });
            }
        }
    }
    out.push(Entry { path: AGENT_PATH.to_owned(), source: agent.to_path_buf() });
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// A writer that hashes what passes through it and counts it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new(), bytes: 0 }
    }

    /// The inner writer, the `sha256:...` digest and the byte count.
    fn finish(self) -> (W, String, u64) {
        (self.inner, format!("sha256:{}", hex(&self.hasher.finalize())), self.bytes)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the layer (gzipped tar) into `blobs`; returns (compressed digest, size, diff id,
/// uncompressed size, top-level names).
fn write_layer(blobs: &Path, base: &Path, agent: &Path) -> anyhow::Result<(String, u64, String, u64, Vec<String>)> {
    let scratch = blobs.join("layer.tmp");
    let file = fs::File::create(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    // flate2's encoder writes a zero mtime and no file name in the gzip header: reproducible.
    let gzip = flate2::write::GzEncoder::new(Hashing::new(io::BufWriter::new(file)), flate2::Compression::new(6));
    let mut tar = tar::Builder::new(Hashing::new(gzip));
    tar.mode(tar::HeaderMode::Deterministic);
    let mut top = Vec::new();
    // The first path of each hard-linked inode; later ones become hard-link entries.
    let mut linked: HashMap<(u64, u64), String> = HashMap::new();
    for entry in entries(base, agent)? {
        if !entry.path.contains('/') {
            top.push(entry.path.clone());
        }
        let meta = fs::symlink_metadata(&entry.source).with_context(|| format!("stat {}", entry.source.display()))?;
        let kind = meta.file_type();
        let mut header = tar::Header::new_ustar();
        header.set_mtime(EPOCH);
        header.set_uid(meta.uid().into());
        header.set_gid(meta.gid().into());
        header.set_mode(meta.mode() & 0o7777);
        let add = |tar: &mut tar::Builder<_>, header: &mut tar::Header, data: &mut dyn io::Read| {
            tar.append_data(header, &entry.path, data).with_context(|| format!("adding /{} to the layer", entry.path))
        };
        if kind.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            // Directories end in '/', as tar(1) writes them.
            tar.append_data(&mut header, format!("{}/", entry.path), io::empty())
                .with_context(|| format!("adding /{} to the layer", entry.path))?;
        } else if kind.is_symlink() {
            let target =
                fs::read_link(&entry.source).with_context(|| format!("readlink {}", entry.source.display()))?;
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            tar.append_link(&mut header, &entry.path, &target)
                .with_context(|| format!("adding /{} to the layer", entry.path))?;
        } else if kind.is_file() {
            let inode = (meta.dev(), meta.ino());
            if meta.nlink() > 1 {
                if let Some(first) = linked.get(&inode) {
                    header.set_entry_type(tar::EntryType::Link);
                    header.set_size(0);
                    tar.append_link(&mut header, &entry.path, first)
                        .with_context(|| format!("adding /{} to the layer", entry.path))?;
                    continue;
                }
                linked.insert(inode, entry.path.clone());
            }
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(meta.len());
            let mut file =
                fs::File::open(&entry.source).with_context(|| format!("opening {}", entry.source.display()))?;
            add(&mut tar, &mut header, &mut file)?;
        } else if kind.is_fifo() || kind.is_socket() || kind.is_char_device() || kind.is_block_device() {
            // The runtime provides /dev; nothing else in a minbase root is a device or socket.
            continue;
        }
    }
    let (gzip, diff_id, tar_bytes) = tar.into_inner().context("finishing the layer's tar")?.finish();
    let (writer, digest, size) = gzip.finish().context("finishing the layer's gzip")?.finish();
    writer.into_inner().map_err(|e| e.into_error()).context("writing the layer")?.sync_all().ok();
    let blob = blobs.join(digest.trim_start_matches("sha256:"));
    fs::rename(&scratch, &blob).with_context(|| format!("renaming the layer to {}", blob.display()))?;
    Ok((digest, size, diff_id, tar_bytes, top))
}

/// Writes a JSON blob into `blobs`; returns its digest and size.
fn write_blob(blobs: &Path, value: &serde_json::Value) -> anyhow::Result<(String, u64)> {
    let bytes = serde_json::to_vec(value).context("serialising a JSON blob")?;
    let digest = format!("sha256:{}", hex(&Sha256::digest(&bytes)));
    let path = blobs.join(digest.trim_start_matches("sha256:"));
    fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok((digest, bytes.len() as u64))
}

/// Writes the OCI image layout at `layout` (replacing any earlier one) and prints what is in it.
fn write_layout(layout: &Path, base: &Path, agent: &Path) -> anyhow::Result<Built> {
    if layout.exists() {
        fs::remove_dir_all(layout).with_context(|| format!("removing {}", layout.display()))?;
    }
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    let started = Instant::now();
    let (layer, layer_size, diff_id, tar_size, top) = write_layer(&blobs, base, agent)?;
    say(&format!("layer written in {:.1} s", started.elapsed().as_secs_f64()));
    let packages: Vec<&str> = ROOTFS_PACKAGES.iter().map(|(name, _)| *name).collect();
    let config = json!({
        "created": EPOCH_RFC3339,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": [format!("/{AGENT_PATH}")],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Labels": {
                "org.opencontainers.image.title": "dataplane",
                "org.opencontainers.image.version": tag(),
                "org.opencontainers.image.licenses": env!("CARGO_PKG_LICENSE"),
            },
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{
            "created": EPOCH_RFC3339,
            "created_by": format!("cargo xtask image: debootstrap --variant=minbase {SUITE} + {}, the agent at /{AGENT_PATH}", packages.join(" ")),
        }],
    });
    let (config_digest, config_size) = write_blob(&blobs, &config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer,
            "size": layer_size,
        }],
    });
    let (digest, manifest_size) = write_blob(&blobs, &manifest)?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": manifest_size,
            "annotations": {
                "org.opencontainers.image.ref.name": tag(),
                "io.containerd.image.name": reference(),
            },
        }],
    });
    let index_path = layout.join("index.json");
    fs::write(&index_path, serde_json::to_vec(&index).context("serialising index.json")?)
        .with_context(|| format!("writing {}", index_path.display()))?;
    fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).context("writing oci-layout")?;

    let agent_size = fs::metadata(agent).with_context(|| format!("stat {}", agent.display()))?.len();
    println!("image   {}", reference());
    println!("digest  {digest}");
    println!("size    {} compressed, {} unpacked", mib(layer_size), mib(tar_size));
    println!("layout  {}", layout.display());
    println!("base    debootstrap --variant=minbase {SUITE} + {}", packages.join(" "));
    println!("top     /{}", top.join(" /"));
    println!("agent   /{AGENT_PATH} ({}), the entrypoint", mib(agent_size));
    println!("tools   /{}", OPERATOR_TOOLS.join(" /"));
    Ok(Built { layout: layout.to_path_buf(), digest })
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn say(line: &str) {
    println!("[image] {line}");
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn the_manifests_reference_this_image_and_its_entrypoint() {
        let root = setup::workspace_root().expect("workspace root");
        check_manifests(&root).expect("deploy/ matches the image");
    }

    #[test]
    fn a_manifest_running_another_image_or_path_is_refused() {
        let root = std::env::temp_dir().join(format!("xtask-image-manifests-{}", std::process::id()));
        fs::create_dir_all(root.join("deploy")).expect("mkdir");
        let good = fs::read_to_string(setup::workspace_root().expect("root").join("deploy/daemonset.yaml"))
            .expect("daemonset.yaml");
        fs::write(root.join("deploy/daemonset.yaml"), &good).expect("write");
        check_manifests(&root).expect("the real manifest passes");
        for (from, to) in [
            (reference(), "ghcr.io/dataplane/dataplane:latest".to_owned()),
            (format!("/{AGENT_PATH}"), "/bin/dataplane".to_owned()),
        ] {
            fs::write(root.join("deploy/daemonset.yaml"), good.replace(&from, &to)).expect("write");
            let error = check_manifests(&root).expect_err("a different image or command");
            assert!(format!("{error:#}").contains(&to), "{error:#}");
        }
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn the_layer_is_reproducible_and_sorted() {
        let dir = std::env::temp_dir().join(format!("xtask-image-test-{}", std::process::id()));
        let base = dir.join("base");
        fs::create_dir_all(base.join("usr/local/bin")).expect("mkdir");
        fs::create_dir_all(base.join("etc")).expect("mkdir");
        fs::write(base.join("etc/b"), "b").expect("write");
        fs::write(base.join("etc/a"), "a").expect("write");
        fs::hard_link(base.join("etc/a"), base.join("etc/c")).expect("link");
        std::os::unix::fs::symlink("a", base.join("etc/d")).expect("symlink");
        let agent = dir.join("agent");
        fs::write(&agent, "agent").expect("write");
        let layer = |n: u32| {
            let blobs = dir.join(format!("blobs{n}"));
            fs::create_dir_all(&blobs).expect("mkdir");
            write_layer(&blobs, &base, &agent).expect("layer")
        };
        let first = layer(1);
        // Touch every file: mtimes change, content does not; the digest must not move.
        fs::write(base.join("etc/b"), "b").expect("rewrite");
        let second = layer(2);
        assert_eq!(first.0, second.0, "the same content gave two digests");
        assert_eq!(first.4, ["etc", "usr"]);
        let listing = Command::new("tar")
            .arg("-tvzf")
            .arg(dir.join("blobs1").join(first.0.trim_start_matches("sha256:")))
            .output()
            .expect("tar");
        let listing = String::from_utf8_lossy(&listing.stdout);
        let names: Vec<&str> = listing.lines().filter_map(|l| l.split_whitespace().nth(5)).collect();
        assert_eq!(
            names,
            [
                "etc/",
                "etc/a",
                "etc/b",
                "etc/c",
                "etc/d",
                "usr/",
                "usr/local/",
                "usr/local/bin/",
                "usr/local/bin/dataplane"
            ]
        );
        assert!(listing.contains("etc/c link to etc/a"), "{listing}");
        let _ = fs::remove_dir_all(&dir);
    }
}
