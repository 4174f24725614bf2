//! `cargo xtask clean-room`: builds the project in a fresh Debian bookworm root that holds only
//! what `cargo xtask setup` installs, so that a missing install step fails here (and in CI)
//! rather than on a user's machine.
//!
//! The root starts as debootstrap's `minbase` plus [`BASE_INCLUDE`] (what rustup itself needs
//! before any `cargo` command, `cargo xtask setup` included, can run). The host's Rust toolchains
//! and its CA bundle (for cargo's downloads: Debian's ca-certificates would bring openssl, which
//! setup installs) are mounted read-only; cargo's home, bpf-linker and the target directory live
//! inside the root.
//! Inside it, `cargo xtask setup` installs its Debian packages and bpf-linker, then `cargo xtask
//! build` builds the agent and its eBPF object as users do.
//!
//! Only the bare debootstrap base is cached (under [`CACHE`]), keyed by its recipe and by setup's
//! package list; every run copies it to a new root, so nothing setup installs is ever present
//! before setup runs (checked: see [`preinstalled`]). The mounts are made in a private mount
//! namespace of this process, so they go when it exits, however it exits (Ctrl-C included).

use std::{
    env, fs,
    io::{BufRead as _, BufReader},
    os::unix::{fs::PermissionsExt as _, io::AsRawFd as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::setup;

/// Where the base, the run's root and the logs live.
pub const CACHE: &str = "/var/cache/dataplane-cleanroom";
/// The Debian release users run.
const SUITE: &str = "bookworm";
/// debootstrap's smallest variant: the Essential packages and apt.
const VARIANT: &str = "minbase";
/// The mirror debootstrap fetches the base from (later apt runs use the host's sources).
/// What a machine needs before `cargo xtask setup` can run at all, since setup is itself a Rust
/// program that cargo links: rustup's own prerequisites. (cargo's HTTPS also needs CA
/// certificates: the host's bundle is mounted, see [`ROOT_CA_BUNDLE`].)
const BASE_INCLUDE: &[(&str, &str)] = &[
    ("gcc", "rustc links every binary through cc"),
    ("libc6-dev", "the C library and start files rustc links against"),
];
/// Bumped when the way the base is made changes in a way the key does not see.
const BASE_RECIPE: u32 = 1;
/// The host packages the check itself needs.
const HOST_PACKAGES: &[(&str, &str)] = &[("debootstrap", "the bare Debian root")];

/// Inside the root: the host's RUSTUP_HOME, read-only.
const ROOT_RUSTUP_HOME: &str = "/opt/rustup";
/// Inside the root: the host's rustup binary (read-only) and the proxies that name it.
const ROOT_RUSTUP_BIN: &str = "/opt/rustup-bin";
/// The proxies rustup answers to by name that the build runs.
const PROXIES: &[&str] = &["cargo", "rustc", "rustdoc"];
/// Inside the root: the source tree, read-only.
const ROOT_SOURCE: &str = "/src";
/// Inside the root: cargo's home (registry, `cargo install bpf-linker`).
const ROOT_CARGO_HOME: &str = "/root/.cargo";
/// Inside the root: the target directory.
const ROOT_TARGET: &str = "/build/target";
/// The host's CA bundle, for cargo's downloads from crates.io.
const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Inside the root: the host's CA bundle (read-only), named to cargo by CARGO_HTTP_CAINFO.
const ROOT_CA_BUNDLE: &str = "/opt/host-ca/ca-certificates.crt";

/// Options of `cargo xtask clean-room`.
#[derive(clap::Args)]
pub struct Options {
    /// Debootstrap the base again even if a cached one matches (a cold run, as on a fresh machine).
    #[arg(long)]
    pub no_cache: bool,
}

/// Prints one line of clean-room output.
fn say(line: &str) {
    println!("[clean-room] {line}");
}

/// Runs the check: base, root, `cargo xtask setup` and `cargo xtask build` inside it.
pub fn run(options: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut steps = Steps::default();
    let result = run_steps(options, &mut steps);
    say(&format!("steps: {}", steps.summary()));
    match result {
        Ok(()) => {
            say(&format!("PASS: the project builds with only what `cargo xtask setup` installs ({})", secs(started)));
            Ok(())
        }
        Err(error) => {
            let root = Path::new(CACHE).join("root");
            if root.exists() {
                say(&format!("the root is left at {} to look into; the next run removes it", root.display()));
            }
            Err(error.context(format!("the clean-room check failed after {}", secs(started))))
        }
    }
}

fn run_steps(options: &Options, steps: &mut Steps) -> anyhow::Result<()> {
    if !setup::is_root() {
        bail!("the clean-room check runs debootstrap, mount and chroot: run it as root");
    }
    let cache = Path::new(CACHE);
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let _lock = lock(&cache.join("lock"))?;
    private_mount_namespace()?;
    let host = Host::find()?;

    steps
        .run("host packages", "the check's own prerequisites: debootstrap", || setup::ensure_packages(HOST_PACKAGES))?;
    let key = base_key(&debootstrap_version()?);
    let base = steps.run("base", &format!("Debian {SUITE} {VARIANT} + {}", names(BASE_INCLUDE).join(" ")), || {
        ensure_base(cache, &key, options.no_cache)
    })?;
    let root = cache.join("root");
    steps.run("root", &format!("a fresh copy of the base at {}", root.display()), || make_root(&base, &root, &host))?;
    let mounts = mounts(&host);
    let mounted =
        steps.run("mounts", "/proc /sys /dev; the host's rustup, source tree and CA bundle (read-only)", || {
            Mounted::mount(&root, &mounts)
        })?;
    steps
        .run("setup", "cargo xtask setup, inside the root", || in_root(&root, &["cargo", "xtask", "setup"]))
        .context("`cargo xtask setup` failed in the clean root; its output is above")?;
    steps
        .run("build", "cargo xtask build (cargo build -p dataplane and the eBPF object), inside the root", || {
            in_root(&root, &["cargo", "xtask", "build"])
        })
        .context(
            "the build failed in the clean root: a prerequisite that `cargo xtask setup` does not install? \
             Add the Debian package to PACKAGES in xtask/src/setup.rs",
        )?;
    steps.run("teardown", "unmount, remove the root", || {
        mounted.unmount()?;
        remove_tree(&root)
    })?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Steps and their timings

/// The steps run so far, with how long each took.
#[derive(Default)]
struct Steps {
    done: Vec<(&'static str, Duration)>,
}

impl Steps {
    /// Runs one step, saying what it does and how long it took; a failure names the step.
    fn run<T>(
        &mut self,
        name: &'static str,
        what: &str,
        body: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        say(&format!("==> {name}: {what}"));
        let started = Instant::now();
        let result = body();
        let took = started.elapsed();
        self.done.push((name, took));
        match result {
            Ok(value) => {
                say(&format!("    {name} done in {:.0} s", took.as_secs_f64()));
                Ok(value)
            }
            Err(error) => Err(error.context(format!("step `{name}` failed after {:.0} s", took.as_secs_f64()))),
        }
    }

    /// "base 3 s, root 12 s, ..." in the order they ran.
    fn summary(&self) -> String {
        self.done
            .iter()
            .map(|(name, took)| format!("{name} {:.0} s", took.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn secs(started: Instant) -> String {
    let took = started.elapsed().as_secs();
    format!("{}m {:02}s", took / 60, took % 60)
}

fn names(packages: &[(&'static str, &str)]) -> Vec<&'static str> {
    packages.iter().map(|(name, _)| *name).collect()
}

// ---------------------------------------------------------------------------------------------
// The host

/// What of the host goes into the root.
struct Host {
    /// The host's RUSTUP_HOME (toolchains, settings).
    rustup_home: PathBuf,
    /// The host's rustup binary (every proxy is this one binary under another name).
    rustup_bin: PathBuf,
    /// The source tree.
    workspace: PathBuf,
}

impl Host {
    fn find() -> anyhow::Result<Self> {
        let rustup_home = env::var_os("RUSTUP_HOME").map(PathBuf::from).unwrap_or_else(|| {
            env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from).join(".rustup")
        });
        if !rustup_home.join("toolchains").is_dir() {
            bail!(
                "no rustup toolchains in {}: the check mounts the host's rustup into the root",
                rustup_home.display()
            );
        }
        let rustup_bin = env::split_paths(&env::var_os("PATH").unwrap_or_default())
            .chain([setup::cargo_home().join("bin")])
            .map(|dir| dir.join("rustup"))
            .find(|path| path.is_file())
            .context("rustup not found on PATH nor in $CARGO_HOME/bin")?;
        Ok(Self {
            rustup_home: rustup_home.canonicalize().unwrap_or(rustup_home),
            rustup_bin: rustup_bin.canonicalize().unwrap_or(rustup_bin),
            workspace: setup::workspace_root()?,
        })
    }
}

fn debootstrap_version() -> anyhow::Result<String> {
    let output = Command::new("dpkg-query")
        .args(["--show", "--showformat=${Version}", "debootstrap"])
        .output()
        .context("cannot run dpkg-query")?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Holds an exclusive lock on `path` while alive: two runs would share the root directory.
fn lock(path: &Path) -> anyhow::Result<fs::File> {
    let file = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own has no memory-safety preconditions.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!("another clean-room check is running (it holds {}); wait for it to finish", path.display());
    }
    Ok(file)
}

/// Moves this process into a mount namespace of its own whose mounts do not propagate to the
/// host's: every mount made here goes when the process exits, even when it is killed.
fn private_mount_namespace() -> anyhow::Result<()> {
    // SAFETY: unshare and mount take no pointers other than the NUL-terminated literals below.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNS) for the clean root's mounts");
        }
        let flags = libc::MS_REC | libc::MS_PRIVATE;
        if libc::mount(c"none".as_ptr(), c"/".as_ptr(), std::ptr::null(), flags, std::ptr::null()) != 0 {
            return Err(std::io::Error::last_os_error()).context("making / a private mount in the new namespace");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The base and the root

/// The cache key of the base: what goes into it (debootstrap's command line and version, the
/// recipe) and setup's package list, so that a change of either starts from a new debootstrap.
fn base_key(debootstrap_version: &str) -> String {
    let mut text = format!("recipe {BASE_RECIPE}\ndebootstrap {debootstrap_version}\n");
    text.push_str(&debootstrap_args(Path::new("ROOT")).join(" "));
    text.push('\n');
    for (package, _) in setup::PACKAGES {
        text.push_str(package);
        text.push('\n');
    }
    format!("{:016x}", fnv1a(text.as_bytes()))
}

/// 64-bit FNV-1a: a stable hash for a cache key (std's hasher is not stable across releases, and
/// a cryptographic hash is not needed to name a directory).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

/// debootstrap's arguments for a base at `dir`.
fn debootstrap_args(dir: &Path) -> Vec<String> {
    vec![
        format!("--variant={VARIANT}"),
        format!("--include={}", names(BASE_INCLUDE).join(",")),
        SUITE.to_owned(),
        dir.display().to_string(),
        setup::DEBIAN_MIRROR.to_owned(),
    ]
}

/// The cached base for `key`, made with debootstrap if absent (or `fresh`). Bases of other keys
/// are removed.
fn ensure_base(cache: &Path, key: &str, fresh: bool) -> anyhow::Result<PathBuf> {
    let base = cache.join(format!("base-{key}"));
    let stamp = cache.join(format!("base-{key}.done"));
    for entry in fs::read_dir(cache).with_context(|| format!("reading {}", cache.display()))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let current = name == format!("base-{key}") || name == format!("base-{key}.done");
        if name.starts_with("base-") && (!current || fresh) {
            say(&format!(
                "    removing {} ({})",
                entry.path().display(),
                if fresh { "--no-cache" } else { "stale key" }
            ));
            remove_tree(&entry.path())?;
        }
    }
    if base.is_dir() && stamp.is_file() {
        say(&format!("    cached: {} (key {key}: recipe, debootstrap and setup's package list)", base.display()));
        return Ok(base);
    }
    let partial = cache.join(format!("base-{key}.partial"));
    remove_tree(&partial)?;
    let log = cache.join("debootstrap.log");
    let args = debootstrap_args(&partial);
    say(&format!("    $ debootstrap {}  (log: {}; about 1-2 minutes)", args.join(" "), log.display()));
    setup::debootstrap(&args, &[], &log)?;
    fs::rename(&partial, &base).with_context(|| format!("renaming {} to {}", partial.display(), base.display()))?;
    fs::write(&stamp, key).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(base)
}

/// Copies the base to `root` and prepares it: the host's apt sources and DNS, a policy that keeps
/// packages from starting services, the mount points. Fails if anything setup installs is already
/// there (beyond Debian's Essential packages, which every Debian system has).
fn make_root(base: &Path, root: &Path, host: &Host) -> anyhow::Result<()> {
    if root.exists() {
        say(&format!("    removing the previous run's root {}", root.display()));
        remove_tree(root)?;
    }
    let status = Command::new("cp").arg("-a").arg(base).arg(root).status().context("cannot run cp")?;
    if !status.success() {
        bail!("cp -a {} {} failed ({status})", base.display(), root.display());
    }

    // apt: the host's sources (and the settings that make its mirror usable), not debootstrap's
    // single line.
    let sources = root.join("etc/apt/sources.list");
    if sources.exists() {
        fs::remove_file(&sources).with_context(|| format!("removing {}", sources.display()))?;
    }
    for (dir, wanted) in [("etc/apt/sources.list.d", &[".list", ".sources"][..]), ("etc/apt/apt.conf.d", &[""][..])] {
        copy_apt_files(&Path::new("/").join(dir), &root.join(dir), wanted)?;
    }
    if Path::new("/etc/apt/sources.list").is_file() {
        fs::copy("/etc/apt/sources.list", &sources).context("copying /etc/apt/sources.list")?;
    }
    // DNS: the host's resolver (its content; the host's file may be a symlink).
    let resolv = fs::read("/etc/resolv.conf").context("reading /etc/resolv.conf")?;
    let root_resolv = root.join("etc/resolv.conf");
    let _ = fs::remove_file(&root_resolv);
    fs::write(&root_resolv, resolv).with_context(|| format!("writing {}", root_resolv.display()))?;
    // A chroot has no init: packages that ship a service (etcd-server) must not start it here,
    // where it would outlive the check.
    let policy = root.join("usr/sbin/policy-rc.d");
    fs::write(&policy, "#!/bin/sh\n# The clean-room check: start no service in this chroot.\nexit 101\n")
        .with_context(|| format!("writing {}", policy.display()))?;
    fs::set_permissions(&policy, fs::Permissions::from_mode(0o755))?;

    // Mount points, and the rustup proxies (links to the mounted rustup binary).
    for mount in mounts(host) {
        let target = inside(root, mount.target);
        if mount.file {
            fs::create_dir_all(target.parent().unwrap_or(root))?;
            fs::write(&target, b"").with_context(|| format!("creating {}", target.display()))?;
        } else {
            fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
        }
    }
    for proxy in PROXIES {
        let link = inside(root, ROOT_RUSTUP_BIN).join(proxy);
        std::os::unix::fs::symlink("rustup", &link).with_context(|| format!("linking {}", link.display()))?;
    }
    fs::create_dir_all(inside(root, ROOT_CARGO_HOME))?;
    fs::create_dir_all(inside(root, ROOT_TARGET))?;

    let (essential, others) = preinstalled(&root.join("var/lib/dpkg"))?;
    if !essential.is_empty() {
        say(&format!("    in the base already, as on every Debian system (Essential: yes): {}", essential.join(" ")));
    }
    if !others.is_empty() {
        bail!(
            "the root already has {} before setup runs, so the check could not see setup miss them; the base must \
             be bare: remove them from BASE_INCLUDE in xtask/src/cleanroom.rs",
            others.join(" ")
        );
    }
    say(&format!("    none of setup's {} other packages is in the root", setup::PACKAGES.len() - essential.len()));
    Ok(())
}

/// Copies the regular files of `from` whose names end with one of `endings` into `to`.
fn copy_apt_files(from: &Path, to: &Path, endings: &[&str]) -> anyhow::Result<()> {
    fs::create_dir_all(to)?;
    let Ok(entries) = fs::read_dir(from) else { return Ok(()) };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let text = name.to_string_lossy();
        if entry.path().is_file() && endings.iter().any(|ending| text.ends_with(ending)) {
            fs::copy(entry.path(), to.join(&name))
                .with_context(|| format!("copying {} into {}", entry.path().display(), to.display()))?;
        }
    }
    Ok(())
}

/// setup's packages that the dpkg database at `admindir` has installed, split into Debian's
/// Essential ones (on every Debian system, so listing them in setup is harmless) and the others
/// (which would hide a missing install step).
fn preinstalled(admindir: &Path) -> anyhow::Result<(Vec<&'static str>, Vec<&'static str>)> {
    let all = names(setup::PACKAGES);
    let missing = setup::missing_of(&all, Some(admindir))?;
    let present: Vec<&'static str> = all.into_iter().filter(|name| !missing.contains(name)).collect();
    if present.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let output = Command::new("dpkg-query")
        .arg(format!("--admindir={}", admindir.display()))
        .args(["--show", "--showformat=${Package}\t${Essential}\n"])
        .args(&present)
        .output()
        .context("cannot run dpkg-query")?;
    let essential = essential_packages(&String::from_utf8_lossy(&output.stdout));
    Ok(present.into_iter().partition(|name| essential.iter().any(|e| e == name)))
}

/// Parses `dpkg-query --showformat='${Package}\t${Essential}\n'`: the Essential packages.
fn essential_packages(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .filter(|(_, essential)| essential.trim() == "yes")
        .map(|(package, _)| package.split(':').next().unwrap_or(package).to_owned())
        .collect()
}

/// `path` (absolute, as seen inside the root) under `root`.
fn inside(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Removes a directory tree that must have nothing mounted under it (checked first, in this
/// process's mount namespace: a live bind mount of /dev or the source tree must never be
/// removed through).
fn remove_tree(path: &Path) -> anyhow::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let under = mounts_under(&mountinfo, path);
    if !under.is_empty() {
        bail!("not removing {}: still mounted under it: {}", path.display(), under.join(" "));
    }
    if path.is_dir() {
        let status =
            Command::new("rm").arg("-rf").arg("--one-file-system").arg(path).status().context("cannot run rm")?;
        if !status.success() {
            bail!("rm -rf {} failed ({status})", path.display());
        }
    } else {
        fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// The mount points in `/proc/self/mountinfo` text at or under `dir`.
fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| point.replace("\\040", " "))
        .filter(|point| Path::new(point).starts_with(dir))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Mounts

/// One mount into the root.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    /// `mount`'s arguments before the target.
    args: Vec<String>,
    /// Where, inside the root.
    target: &'static str,
    /// The target is a file (a bind-mounted file), not a directory.
    file: bool,
}

impl Mount {
    fn fs(fstype: &str, options: &str, target: &'static str) -> Self {
        let args = vec!["-t".into(), fstype.into(), "-o".into(), options.into(), fstype.into()];
        Self { args, target, file: false }
    }

    fn bind_read_only(source: &Path, target: &'static str, file: bool) -> Self {
        let args = vec!["--bind".into(), "-o".into(), "ro".into(), source.display().to_string()];
        Self { args, target, file }
    }

    /// The `mount` command line for this mount into `root`.
    fn command_line(&self, root: &Path) -> Vec<String> {
        let mut line = vec!["mount".to_owned()];
        line.extend(self.args.iter().cloned());
        line.push(inside(root, self.target).display().to_string());
        line
    }
}

/// Every mount into the root, in mounting order.
fn mounts(host: &Host) -> Vec<Mount> {
    vec![
        // apt's and dpkg's maintainer scripts, and rustc, read /proc.
        Mount::fs("proc", "nosuid,nodev,noexec", "/proc"),
        Mount::fs("sysfs", "ro,nosuid,nodev,noexec", "/sys"),
        // /dev/null, /dev/urandom and friends.
        Mount { args: vec!["--bind".into(), "/dev".into()], target: "/dev", file: false },
        Mount::bind_read_only(&host.rustup_home, ROOT_RUSTUP_HOME, false),
        Mount::bind_read_only(&host.rustup_bin, "/opt/rustup-bin/rustup", true),
        Mount::bind_read_only(&host.workspace, ROOT_SOURCE, false),
        Mount::bind_read_only(Path::new(HOST_CA_BUNDLE), ROOT_CA_BUNDLE, true),
    ]
}

/// The mounts made, unmounted (in reverse order) by [`Mounted::unmount`] or when dropped.
struct Mounted {
    points: Vec<PathBuf>,
}

impl Mounted {
    fn mount(root: &Path, mounts: &[Mount]) -> anyhow::Result<Self> {
        let mut mounted = Self { points: Vec::new() };
        for mount in mounts {
            let line = mount.command_line(root);
            say(&format!("    $ {}", line.join(" ")));
            let status = Command::new(&line[0]).args(&line[1..]).status().context("cannot run mount")?;
            if !status.success() {
                bail!("`{}` failed ({status})", line.join(" "));
            }
            mounted.points.push(inside(root, mount.target));
        }
        Ok(mounted)
    }

    fn unmount(mut self) -> anyhow::Result<()> {
        self.unmount_all()
    }

    fn unmount_all(&mut self) -> anyhow::Result<()> {
        let mut failed = Vec::new();
        while let Some(point) = self.points.pop() {
            let ok = Command::new("umount").arg(&point).status().is_ok_and(|s| s.success())
                || Command::new("umount").arg("--lazy").arg(&point).status().is_ok_and(|s| s.success());
            if !ok {
                failed.push(point.display().to_string());
            }
        }
        if !failed.is_empty() {
            bail!("cannot unmount {}", failed.join(" "));
        }
        Ok(())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(error) = self.unmount_all() {
            say(&format!("WARNING {error:#} (they go when this process exits: its mount namespace is private)"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Commands inside the root

/// The command line that runs `command` in the root's source tree, with nothing of this
/// process's environment: the root's cargo home and target directory, the host's rustup.
fn chroot_command_line(root: &Path, command: &[&str]) -> Vec<String> {
    let mut line = vec!["chroot".to_owned(), root.display().to_string(), "/usr/bin/env".into(), "-i".into()];
    line.extend(["-C".to_owned(), ROOT_SOURCE.to_owned()]);
    line.extend([
        "HOME=/root".to_owned(),
        format!(
            "PATH={ROOT_CARGO_HOME}/bin:{ROOT_RUSTUP_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        ),
        format!("RUSTUP_HOME={ROOT_RUSTUP_HOME}"),
        format!("CARGO_HOME={ROOT_CARGO_HOME}"),
        format!("CARGO_TARGET_DIR={ROOT_TARGET}"),
        format!("CARGO_HTTP_CAINFO={ROOT_CA_BUNDLE}"),
        "LANG=C.UTF-8".to_owned(),
    ]);
    line.extend(command.iter().map(|arg| (*arg).to_owned()));
    line
}

/// Runs `command` inside the root, streaming its output; on failure the error quotes the first
/// error lines it printed.
fn in_root(root: &Path, command: &[&str]) -> anyhow::Result<()> {
    let line = chroot_command_line(root, command);
    say(&format!("    $ {}", line.join(" ")));
    let mut child = Command::new(&line[0])
        .args(&line[1..])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run chroot")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let reader = thread::spawn(move || {
        let mut errors = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if is_error_line(&line) && errors.len() < 8 {
                errors.push(shorten(&line, 300));
            }
        }
        errors
    });
    let status = child.wait().context("waiting for chroot")?;
    let errors = reader.join().unwrap_or_default();
    if !status.success() {
        let quoted =
            if errors.is_empty() { String::new() } else { format!("; first errors:\n  {}", errors.join("\n  ")) };
        bail!("`{}` exited with {status} in the clean root{quoted}", command.join(" "));
    }
    Ok(())
}

/// `line` cut to at most `max` characters (protoc's errors come as one line of several KB).
fn shorten(line: &str, max: usize) -> String {
    match line.char_indices().nth(max) {
        Some((at, _)) => format!("{} ...", &line[..at]),
        None => line.to_owned(),
    }
}

/// Whether a line of build output states an error worth quoting in the failure.
fn is_error_line(line: &str) -> bool {
    let line = line.trim_start();
    line.starts_with("error") || line.contains("File not found") || line.contains("not found:")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Host {
        Host {
            rustup_home: PathBuf::from("/root/.rustup"),
            rustup_bin: PathBuf::from("/root/.cargo/bin/rustup"),
            workspace: PathBuf::from("/work/repo"),
        }
    }

    #[test]
    fn the_mounts_are_the_kernel_file_systems_and_read_only_binds() {
        let root = Path::new("/var/cache/dataplane-cleanroom/root");
        let lines: Vec<String> = mounts(&host()).iter().map(|m| m.command_line(root).join(" ")).collect();
        assert_eq!(
            lines,
            [
                "mount -t proc -o nosuid,nodev,noexec proc /var/cache/dataplane-cleanroom/root/proc",
                "mount -t sysfs -o ro,nosuid,nodev,noexec sysfs /var/cache/dataplane-cleanroom/root/sys",
                "mount --bind /dev /var/cache/dataplane-cleanroom/root/dev",
                "mount --bind -o ro /root/.rustup /var/cache/dataplane-cleanroom/root/opt/rustup",
                "mount --bind -o ro /root/.cargo/bin/rustup /var/cache/dataplane-cleanroom/root/opt/rustup-bin/rustup",
                "mount --bind -o ro /work/repo /var/cache/dataplane-cleanroom/root/src",
                "mount --bind -o ro /etc/ssl/certs/ca-certificates.crt \
                 /var/cache/dataplane-cleanroom/root/opt/host-ca/ca-certificates.crt",
            ]
        );
        // Nothing of the host's ~/.cargo/bin but rustup itself: the host's bpf-linker must not be
        // found in the root, or setup would not install one there.
        assert!(lines.iter().all(|line| !line.contains("/root/.cargo/bin ")));
    }

    #[test]
    fn commands_in_the_root_get_a_clean_environment() {
        let line = chroot_command_line(Path::new("/r"), &["cargo", "xtask", "setup"]).join(" ");
        assert_eq!(
            line,
            "chroot /r /usr/bin/env -i -C /src HOME=/root \
             PATH=/root/.cargo/bin:/opt/rustup-bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
             RUSTUP_HOME=/opt/rustup CARGO_HOME=/root/.cargo CARGO_TARGET_DIR=/build/target \
             CARGO_HTTP_CAINFO=/opt/host-ca/ca-certificates.crt LANG=C.UTF-8 \
             cargo xtask setup"
        );
    }

    #[test]
    fn the_base_key_changes_with_debootstrap_and_is_stable() {
        let key = base_key("1.0.128+nmu2+deb12u2");
        assert_eq!(key.len(), 16);
        assert_eq!(key, base_key("1.0.128+nmu2+deb12u2"));
        assert_ne!(key, base_key("1.0.134"));
        // FNV-1a's published test vectors.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn the_base_key_covers_setups_package_list() {
        // The key's text lists every package of setup's; a list without libprotobuf-dev hashes
        // to another key.
        let with = fnv1a(names(setup::PACKAGES).join("\n").as_bytes());
        let without: Vec<&str> = names(setup::PACKAGES).into_iter().filter(|p| *p != "libprotobuf-dev").collect();
        assert_ne!(with, fnv1a(without.join("\n").as_bytes()));
        assert!(names(setup::PACKAGES).contains(&"libprotobuf-dev"));
    }

    #[test]
    fn the_base_includes_nothing_setup_installs() {
        for (package, _) in BASE_INCLUDE {
            assert!(!names(setup::PACKAGES).contains(package), "{package} is in the base and in setup's list");
        }
        let args = debootstrap_args(Path::new("/c/base")).join(" ");
        assert_eq!(args, "--variant=minbase --include=gcc,libc6-dev bookworm /c/base http://deb.debian.org/debian");
    }

    #[test]
    fn essential_packages_are_told_apart() {
        let output = "util-linux\tyes\nprocps\tno\nlibc6:amd64\tyes\niperf3\t\n";
        assert_eq!(essential_packages(output), ["util-linux", "libc6"]);
    }

    #[test]
    fn mounts_under_a_directory_are_found() {
        let mountinfo = "22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
                         80 22 0:5 / /var/cache/dataplane-cleanroom/root/dev rw - devtmpfs udev rw\n\
                         81 22 0:5 / /var/cache/dataplane-cleanroom/root-old rw - devtmpfs udev rw\n\
                         82 22 254:0 /w /var/cache/dataplane-cleanroom/root/src\\040x ro - ext4 /dev/vda rw\n";
        assert_eq!(
            mounts_under(mountinfo, Path::new("/var/cache/dataplane-cleanroom/root")),
            ["/var/cache/dataplane-cleanroom/root/dev", "/var/cache/dataplane-cleanroom/root/src x"]
        );
    }

    #[test]
    fn error_lines_are_recognised() {
        assert!(is_error_line("error: failed to run custom build command for `etcd-client v0.17.0`"));
        assert!(is_error_line("  google/protobuf/descriptor.proto: File not found."));
        assert!(!is_error_line("   Compiling etcd-client v0.17.0"));
        assert_eq!(shorten("abcdef", 3), "abc ...");
        assert_eq!(shorten("abc", 3), "abc");
    }
}
