//! `cargo xtask setup` and the prerequisite checks every other command runs first.
//!
//! Three kinds of prerequisite, checked and installed in this order (bpf-linker links LLVM 22, so
//! the Debian packages come first):
//!
//! 1. Debian packages (checked with `dpkg-query`, installed with `apt-get`, which needs root);
//! 2. the nightly toolchain's `rust-src` (aya-build compiles `core` for `bpfel-unknown-none` with
//!    `-Z build-std=core`);
//! 3. `bpf-linker` 0.13.0 built against LLVM 22 (the linker of the eBPF target).
//!
//! [`ensure`] checks everything in well under a second and installs only what is missing;
//! `cargo xtask setup` does the same, printing every check.

use std::{
    env,
    ffi::OsString,
    io::ErrorKind,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _};

/// Options of `cargo xtask setup`.
#[derive(clap::Args)]
pub struct Options {
    /// Only check; install nothing, and fail if anything is missing.
    #[arg(long)]
    pub check: bool,
}

/// Options of `cargo xtask build`.
#[derive(clap::Args)]
pub struct BuildOptions {
    /// Build in release mode.
    #[arg(long)]
    pub release: bool,
}

/// Debian packages the project needs, each with why.
pub(crate) const PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "bpf-linker links LLVM 22"),
    ("libpolly-22-dev", "bpf-linker links LLVM 22 (llvm-config lists Polly)"),
    ("bpftool", "map dumps"),
    ("iproute2", "ip, network namespaces"),
    ("iputils-ping", "ping in the lab"),
    ("iperf3", "throughput in the lab"),
    ("tcpdump", "packet captures"),
    ("tshark", "packet dissection"),
    ("ethtool", "NIC offload settings"),
    ("nftables", "nft for the netlink fallback and tests"),
    ("util-linux", "nsenter"),
    ("procps", "ps, sysctl"),
    ("etcd-server", "a real etcd for the etcdv3 datastore tests"),
    ("etcd-client", "etcdctl"),
    ("openssl", "certificates for the etcd TLS tests"),
    ("protobuf-compiler", "protoc for etcd's gRPC client"),
    ("libprotobuf-dev", "the well-known google/protobuf/*.proto files etcd's gRPC client imports"),
    ("psmisc", "fuser, killall"),
];

/// The nightly toolchain aya-build runs (`rustup run nightly ...`).
const NIGHTLY: &str = "nightly";
/// The bpf-linker version the project pins.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The LLVM major version bpf-linker must be built against (the nightly's LLVM).
const LLVM_MAJOR: u32 = 22;
/// Where Debian's llvm-22-dev lives.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Installs or checks every prerequisite, printing each check (`cargo xtask setup`).
pub fn run(options: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    if !options.check {
        refuse_unless_root_can_install()?;
    }
    let report = check(true)?;
    if report.is_complete() {
        say(&format!("everything is installed ({:.1} s)", started.elapsed().as_secs_f64()));
        return Ok(());
    }
    if options.check {
        bail!("missing: {}. Run `cargo xtask setup` (as root) to install it.", report.missing().join(", "));
    }
    install(&report)?;
    say(&format!("everything is installed ({:.1} s)", started.elapsed().as_secs_f64()));
    Ok(())
}

/// Checks every prerequisite quickly and installs only what is missing.
///
/// Every xtask command that builds or runs anything calls this first. When everything is present
/// it runs no installer, takes a fraction of a second and prints one line.
pub fn ensure() -> anyhow::Result<()> {
    let started = Instant::now();
    refuse_unless_root_can_install()?;
    let report = check(false)?;
    if report.is_complete() {
        say(&format!(
            "prerequisites present: {} Debian packages, {NIGHTLY} rust-src, {} ({:.2} s)",
            PACKAGES.len(),
            report.linker_summary(),
            started.elapsed().as_secs_f64()
        ));
        return Ok(());
    }
    say(&format!("missing: {}; installing it now", report.missing().join(", ")));
    install(&report)
}

/// `cargo xtask build`: ensure the prerequisites, then build the agent.
pub fn build(options: &BuildOptions) -> anyhow::Result<()> {
    ensure()?;
    let binary = build_agent(options.release)?;
    println!("[build] the agent is at {}", binary.display());
    Ok(())
}

/// Builds the agent (`cargo build -p dataplane`, whose build script builds the eBPF object) and
/// returns the absolute path of the binary, target/{debug,release}/dataplane.
///
/// Does not check the prerequisites: call [`ensure`] first.
pub fn build_agent(release: bool) -> anyhow::Result<PathBuf> {
    let root = workspace_root()?;
    let mut command = cargo();
    command.current_dir(&root).args(["build", "-p", "dataplane", "--message-format=json-render-diagnostics"]);
    if release {
        command.arg("--release");
    }
    let shown = format!("cargo build -p dataplane{}", if release { " --release" } else { "" });
    println!("[build] building the agent and its eBPF object: {shown}");
    if env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        println!(
            "[build] WARNING AYA_BUILD_SKIP is set: the agent embeds no eBPF object and cannot load the fast path"
        );
    }
    // Diagnostics and progress go to our stderr as usual; stdout carries JSON messages, one of
    // which names the binary (wherever the target directory is configured to be).
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let output = command.output().with_context(|| format!("cannot start `{shown}`"))?;
    if !output.status.success() {
        bail!("`{shown}` failed ({}); its errors are above", output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let binary = agent_from_messages(&stdout).unwrap_or_else(|| {
        let target = env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |dir| root.join(dir));
        target.join(if release { "release" } else { "debug" }).join("dataplane")
    });
    if !binary.is_file() {
        bail!("`{shown}` succeeded but {} does not exist", binary.display());
    }
    Ok(binary.canonicalize().unwrap_or(binary))
}

/// Finds the `dataplane` binary's path in cargo's JSON messages.
/// Builds the upgrade test's older agent: this tree with the conntrack map in its previous layout
/// (`cargo build -p dataplane --bin dataplane-previous-layout --features previous-layout`), and
/// returns the binary, beside `agent`.
pub fn build_previous_layout_agent(agent: &Path) -> anyhow::Result<PathBuf> {
    let shown = "cargo build -p dataplane --bin dataplane-previous-layout --features previous-layout";
    println!("[build] building the upgrade test's older agent: {shown}");
    let mut command = cargo();
    command.current_dir(workspace_root()?).args([
        "build",
        "-p",
        "dataplane",
        "--bin",
        "dataplane-previous-layout",
        "--features",
        "previous-layout",
    ]);
    let status = command.stdin(Stdio::null()).status().with_context(|| format!("cannot start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status}); its errors are above");
    }
    let binary = agent.with_file_name("dataplane-previous-layout");
    if !binary.is_file() {
        bail!("`{shown}` succeeded but {} does not exist", binary.display());
    }
    Ok(binary)
}

fn agent_from_messages(stdout: &str) -> Option<PathBuf> {
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter(|message| message["target"]["name"] == "dataplane")
        .filter_map(|message| message["executable"].as_str().map(PathBuf::from))
        .next_back()
}

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .with_context(|| format!("{} has no parent directory", manifest_dir.display()))
}

/// A `cargo` command: the cargo that runs this xtask, with `$CARGO_HOME/bin` on PATH so that
/// rustc finds bpf-linker even when the user's PATH lacks it.
pub fn cargo() -> Command {
    let mut command = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.env("PATH", path_with_cargo_bin());
    command
}

/// Runs the lab crate's `dataplane-lab` binary (demo, lab down) with `args`, streaming its output.
/// It needs the agent's crates, so it is built here, after [`ensure`], never as xtask's dependency.
pub fn run_lab_tool(args: &[&str]) -> anyhow::Result<()> {
    let root = workspace_root()?;
    let mut command = cargo();
    command
        .current_dir(&root)
        .args(["run", "--quiet", "-p", "dataplane-lab", "--bin", "dataplane-lab", "--"])
        .args(args);
    let shown = format!("cargo run -p dataplane-lab -- {}", args.join(" "));
    let status = command.status().with_context(|| format!("cannot start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Prints one line of setup output.
fn say(line: &str) {
    println!("[setup] {line}");
}

// ---------------------------------------------------------------------------------------------
// Checks

/// What the checks found.
struct Report {
    /// Debian packages not installed.
    missing_packages: Vec<&'static str>,
    /// The nightly toolchain has no rust-src.
    missing_rust_src: bool,
    /// bpf-linker: found and good, or why it must be (re)installed.
    linker: Result<Linker, String>,
}

impl Report {
    fn is_complete(&self) -> bool {
        self.missing_packages.is_empty() && !self.missing_rust_src && self.linker.is_ok()
    }

    fn missing(&self) -> Vec<String> {
        let mut missing = Vec::new();
        if !self.missing_packages.is_empty() {
            missing.push(format!("Debian packages {}", self.missing_packages.join(" ")));
        }
        if self.missing_rust_src {
            missing.push(format!("rust-src of the {NIGHTLY} toolchain"));
        }
        if self.linker.is_err() {
            missing.push(format!("bpf-linker {BPF_LINKER_VERSION} (LLVM {LLVM_MAJOR})"));
        }
        missing
    }

    fn linker_summary(&self) -> String {
        match &self.linker {
            Ok(linker) => linker.summary(),
            Err(_) => "no bpf-linker".to_owned(),
        }
    }
}

/// A usable bpf-linker.
struct Linker {
    path: PathBuf,
    llvm: LlvmOfLinker,
}

impl Linker {
    fn summary(&self) -> String {
        let llvm = match self.llvm {
            LlvmOfLinker::Major(major) => format!("LLVM {major}"),
            LlvmOfLinker::Unknown => "LLVM unknown".to_owned(),
        };
        format!("bpf-linker {BPF_LINKER_VERSION} ({llvm})")
    }
}

/// The LLVM a bpf-linker binary was built against.
#[derive(Debug, PartialEq, Eq)]
enum LlvmOfLinker {
    Major(u32),
    Unknown,
}

/// Runs every check; with `verbose`, prints each one and why it matters.
fn check(verbose: bool) -> anyhow::Result<Report> {
    let note = |line: String| {
        if verbose {
            say(&line);
        }
    };

    // Debian packages.
    let missing_packages = missing_packages()?;
    if verbose {
        for (package, why) in PACKAGES {
            let state = if missing_packages.contains(package) { "MISSING" } else { "ok     " };
            say(&format!("{state} Debian package {package:<18} ({why})"));
        }
    }

    // The nightly toolchain and its rust-src.
    let missing_rust_src = !nightly_has_rust_src()?;
    note(format!(
        "{} {NIGHTLY} toolchain's rust-src  (aya-build compiles core for bpfel-unknown-none with -Z build-std)",
        if missing_rust_src { "MISSING" } else { "ok     " }
    ));
    if verbose {
        match nightly_llvm_major() {
            Some(major) if major == LLVM_MAJOR => {
                say(&format!("ok      {NIGHTLY} toolchain uses LLVM {major}, the LLVM bpf-linker is built against"));
            }
            Some(major) => say(&format!(
                "WARNING the {NIGHTLY} toolchain uses LLVM {major}, but bpf-linker is built against LLVM {LLVM_MAJOR}; \
                 linking the eBPF object may fail"
            )),
            None => say(&format!("WARNING cannot tell which LLVM the {NIGHTLY} toolchain uses")),
        }
    }

    // bpf-linker.
    let linker = check_linker();
    match &linker {
        Ok(linker) => {
            note(format!("ok      {} at {}  (the eBPF target's linker)", linker.summary(), linker.path.display()))
        }
        Err(why) => note(format!("MISSING bpf-linker {BPF_LINKER_VERSION} built against LLVM {LLVM_MAJOR}: {why}")),
    }
    if verbose && linker.is_ok() && !cargo_bin_on_path() {
        say(&format!(
            "NOTE    {} is not on your PATH; xtask adds it for its own builds, add it to your shell's PATH \
             to run plain cargo commands",
            cargo_home().join("bin").display()
        ));
    }

    Ok(Report { missing_packages, missing_rust_src, linker })
}

/// The Debian packages of [`PACKAGES`] that are not installed.
fn missing_packages() -> anyhow::Result<Vec<&'static str>> {
    let names: Vec<&'static str> = PACKAGES.iter().map(|(package, _)| *package).collect();
    missing_of(&names, None)
}

/// The packages of `names` that are not installed, according to the dpkg database of this
/// machine or, with `admindir`, of another root (`dpkg-query --admindir`).
pub(crate) fn missing_of<'a>(names: &[&'a str], admindir: Option<&Path>) -> anyhow::Result<Vec<&'a str>> {
    let mut command = Command::new("dpkg-query");
    if let Some(admindir) = admindir {
        command.arg(format!("--admindir={}", admindir.display()));
    }
    let output = command
        .args(["--show", "--showformat=${Package}\t${db:Status-Abbrev}\n"])
        .args(names)
        .stdin(Stdio::null())
        .output();
    let output = match output {
        Ok(output) => output,
        Err(error) if error.kind() == ErrorKind::NotFound => {
            bail!("dpkg-query not found: this setup supports Debian bookworm (and derivatives) only")
        }
        Err(error) => return Err(error).context("cannot run dpkg-query"),
    };
    // dpkg-query exits 1 and complains on stderr about packages it has never heard of; those are
    // simply missing from its output.
    let installed = installed_packages(&String::from_utf8_lossy(&output.stdout));
    Ok(names.iter().copied().filter(|package| !installed.iter().any(|name| name == package)).collect())
}

/// Parses `dpkg-query --showformat='${Package}\t${db:Status-Abbrev}\n'`: the names of the
/// packages whose status is "installed" (the second letter of the abbreviation is `i`).
fn installed_packages(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .filter(|(_, status)| status.chars().nth(1) == Some('i'))
        .map(|(package, _)| package.split(':').next().unwrap_or(package).to_owned())
        .collect()
}

/// Whether the nightly toolchain has rust-src; fails if there is no nightly toolchain at all.
fn nightly_has_rust_src() -> anyhow::Result<bool> {
    let toolchains = rustup(&["toolchain", "list"])?;
    if !has_nightly(&toolchains) {
        bail!(
            "the `{NIGHTLY}` Rust toolchain is not installed, and it is required: aya-build builds the kernel \
             programs with `rustup run {NIGHTLY} cargo build -Z build-std=core`, and its LLVM ({LLVM_MAJOR}) \
             must match bpf-linker's. Install it with `rustup toolchain install {NIGHTLY}` and run this again.\n\
             Installed toolchains:\n{}",
            toolchains.trim_end()
        );
    }
    let components = rustup(&["component", "list", "--toolchain", NIGHTLY, "--installed"])?;
    Ok(components.lines().any(|line| line.trim() == "rust-src" || line.trim().starts_with("rust-src-")))
}

/// Whether `rustup toolchain list` shows the plain `nightly` toolchain (`nightly-<host>`, not a
/// dated `nightly-2025-01-01-<host>`).
fn has_nightly(toolchains: &str) -> bool {
    toolchains.lines().filter_map(|line| line.split_whitespace().next()).any(|name| {
        name == NIGHTLY
            || name
                .strip_prefix("nightly-")
                .is_some_and(|rest| rest.chars().next().is_some_and(|c| !c.is_ascii_digit()))
    })
}

/// The LLVM major version of the nightly toolchain's rustc.
fn nightly_llvm_major() -> Option<u32> {
    let output = Command::new("rustup").args(["run", NIGHTLY, "rustc", "-vV"]).stdin(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|version| version.split('.').next())
        .and_then(|major| major.trim().parse().ok())
}

/// Runs `rustup ARGS` and returns its stdout.
fn rustup(args: &[&str]) -> anyhow::Result<String> {
    let shown = format!("rustup {}", args.join(" "));
    let output = match Command::new("rustup").args(args).stdin(Stdio::null()).output() {
        Ok(output) => output,
        Err(error) if error.kind() == ErrorKind::NotFound => bail!(
            "rustup not found: the project needs rustup (stable for the agent, {NIGHTLY} with rust-src for the \
             kernel programs); see https://rustup.rs"
        ),
        Err(error) => return Err(error).with_context(|| format!("cannot run `{shown}`")),
    };
    if !output.status.success() {
        bail!("`{shown}` failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Finds bpf-linker on PATH or in `$CARGO_HOME/bin` and checks its version and LLVM.
fn check_linker() -> Result<Linker, String> {
    let path = find_linker().ok_or_else(|| format!("not on PATH nor in {}", cargo_home().join("bin").display()))?;
    let output = Command::new(&path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("{} does not run: {error}", path.display()))?;
    if !output.status.success() {
        return Err(format!(
            "`{} --version` failed ({}): {}",
            path.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let version = String::from_utf8_lossy(&output.stdout);
    let version = version.trim();
    if version != format!("bpf-linker {BPF_LINKER_VERSION}") {
        return Err(format!("{} is `{version}`, not {BPF_LINKER_VERSION}", path.display()));
    }
    let llvm = linker_llvm(&path);
    match llvm {
        LlvmOfLinker::Major(major) if major != LLVM_MAJOR => {
            Err(format!("{} is built against LLVM {major}, not {LLVM_MAJOR}", path.display()))
        }
        llvm => Ok(Linker { path, llvm }),
    }
}

/// bpf-linker on PATH, else in `$CARGO_HOME/bin`.
fn find_linker() -> Option<PathBuf> {
    env::split_paths(&path_with_cargo_bin()).map(|dir| dir.join("bpf-linker")).find(|path| path.is_file())
}

/// Which LLVM a bpf-linker binary uses: the `libLLVM.so.N` it links dynamically (Debian's
/// packages), else the features `cargo install` recorded for it.
fn linker_llvm(path: &Path) -> LlvmOfLinker {
    if let Ok(output) = Command::new("ldd").arg(path).stdin(Stdio::null()).output() {
        if let Some(major) = llvm_from_ldd(&String::from_utf8_lossy(&output.stdout)) {
            return LlvmOfLinker::Major(major);
        }
    }
    let installs = std::fs::read_to_string(cargo_home().join(".crates2.json")).unwrap_or_default();
    llvm_from_crates2(&installs).map_or(LlvmOfLinker::Unknown, LlvmOfLinker::Major)
}

/// The N of the first `libLLVM.so.N` or `libLLVM-N.so` in `ldd` output.
fn llvm_from_ldd(ldd: &str) -> Option<u32> {
    ldd.lines().find_map(|line| {
        let name = line.split_whitespace().next()?;
        let rest = name.strip_prefix("libLLVM.so.").or_else(|| name.strip_prefix("libLLVM-"))?;
        rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    })
}

/// The LLVM feature (`llvm-N`) that `cargo install` recorded for bpf-linker in `.crates2.json`.
fn llvm_from_crates2(json: &str) -> Option<u32> {
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    let installs = value["installs"].as_object()?;
    let (_, install) = installs.iter().find(|(key, _)| key.starts_with("bpf-linker "))?;
    install["features"].as_array()?.iter().filter_map(|f| f.as_str()?.strip_prefix("llvm-")?.parse().ok()).next()
}

/// `$CARGO_HOME`, else `~/.cargo`.
pub(crate) fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// Whether `$CARGO_HOME/bin` is on PATH.
fn cargo_bin_on_path() -> bool {
    let bin = cargo_home().join("bin");
    env::var_os("PATH").is_some_and(|path| env::split_paths(&path).any(|dir| dir == bin))
}

/// PATH with `$CARGO_HOME/bin` appended when it is not there already.
fn path_with_cargo_bin() -> OsString {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH").map(|path| env::split_paths(&path).collect()).unwrap_or_default();
    let bin = cargo_home().join("bin");
    if !dirs.contains(&bin) {
        dirs.push(bin);
    }
    env::join_paths(dirs).unwrap_or_else(|_| env::var_os("PATH").unwrap_or_default())
}

// ---------------------------------------------------------------------------------------------
// Installation

/// Installs what `report` says is missing, then checks again.
fn install(report: &Report) -> anyhow::Result<()> {
    if !report.missing_packages.is_empty() {
        install_packages(&report.missing_packages)?;
    }
    if report.missing_rust_src {
        say(&format!(
            "adding rust-src to the {NIGHTLY} toolchain: aya-build compiles core from source for bpfel-unknown-none"
        ));
        run_step(
            Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]),
            &format!("rustup component add rust-src --toolchain {NIGHTLY}"),
            "check that static.rust-lang.org is reachable, then run `cargo xtask setup` again",
        )?;
    }
    if let Err(why) = &report.linker {
        install_linker(why)?;
    }

    let after = check(false)?;
    if !after.is_complete() {
        bail!(
            "still missing after installing: {}. Run `cargo xtask setup` to see each check.",
            after.missing().join(", ")
        );
    }
    say(&format!(
        "prerequisites present: {} Debian packages, {NIGHTLY} rust-src, {}",
        PACKAGES.len(),
        after.linker_summary()
    ));
    Ok(())
}

/// Installs whatever of `packages` (Debian packages a command needs beyond [`PACKAGES`], each with
/// why) is missing, saying what and why; needs root only when something is missing.
pub fn ensure_packages(packages: &[(&'static str, &str)]) -> anyhow::Result<()> {
    let names: Vec<&'static str> = packages.iter().map(|(package, _)| *package).collect();
    let missing = missing_of(&names, None)?;
    if missing.is_empty() {
        return Ok(());
    }
    for (package, why) in packages.iter().filter(|(package, _)| missing.contains(package)) {
        say(&format!("will install {package}: {why}"));
    }
    if !is_root() {
        bail!(
            "Debian packages missing: {}; installing them needs root, and this runs as uid {}:\n  apt-get update && {}",
            missing.join(" "),
            euid(),
            apt_install_line(&missing)
        );
    }
    install_packages(&missing)
}

/// Debian's mirror of the project's root file systems (the clean room's and the image's).
pub(crate) const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";

/// Runs `debootstrap ARGS` with `env`, its output in `log`; on failure quotes the log's last lines.
pub(crate) fn debootstrap(args: &[String], env: &[(&str, String)], log: &Path) -> anyhow::Result<()> {
    let log_file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let status = Command::new("debootstrap")
        .args(args)
        .envs(env.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().context("duplicating the log's descriptor")?)
        .stderr(log_file)
        .status()
        .context("cannot run debootstrap")?;
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        bail!(
            "debootstrap failed ({status}): is {DEBIAN_MIRROR} reachable? Last lines of {}:\n{}",
            log.display(),
            lines[lines.len().saturating_sub(20)..].join("\n")
        );
    }
    Ok(())
}

/// Fails, naming the packages and the command to install them, when Debian packages are missing
/// and this does not run as root. Runs before every other check, so that it is the first thing a
/// non-root user reads.
fn refuse_unless_root_can_install() -> anyhow::Result<()> {
    if is_root() {
        return Ok(());
    }
    let missing = missing_packages()?;
    if missing.is_empty() {
        return Ok(());
    }
    bail!(
        "Debian packages missing: {}. Installing them needs root, and this runs as uid {}. \
         Run `cargo xtask setup` as root, or install them yourself:\n  apt-get update && {}",
        missing.join(" "),
        euid(),
        apt_install_line(&missing)
    )
}

/// The `apt-get install` command line for `missing`, as a person would type it.
fn apt_install_line(missing: &[&str]) -> String {
    format!("DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {}", missing.join(" "))
}

/// `apt-get update` once, then `apt-get install` the missing packages.
pub(crate) fn install_packages(missing: &[&str]) -> anyhow::Result<()> {
    refuse_unless_root_can_install()?;
    let install_line = apt_install_line(missing);
    say(&format!("installing Debian packages: {} (on a fresh machine, about a minute)", missing.join(" ")));
    let fix = "check that the Debian mirrors in /etc/apt/sources.list.d are reachable and that no other apt \
               or dpkg is stuck, then run `cargo xtask setup` again";
    run_step(apt_get().args(["update"]), "apt-get update", fix)?;
    run_step(apt_get().args(["install", "-y", "--no-install-recommends"]).args(missing), &install_line, fix)
}

/// An `apt-get` that asks nothing (tshark's debconf question included) and waits for a dpkg lock
/// held by another apt (unattended-upgrades on a freshly booted machine) instead of failing.
fn apt_get() -> Command {
    let mut command = Command::new("apt-get");
    command.env("DEBIAN_FRONTEND", "noninteractive").arg("-q").args([
        "-o",
        "DPkg::Lock::Timeout=600",
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
    ]);
    command
}

/// `cargo install bpf-linker` against Debian's LLVM 22, with `--locked`, then without.
fn install_linker(why: &str) -> anyhow::Result<()> {
    say(&format!("bpf-linker needs installing ({why})"));
    if !Path::new(LLVM_PREFIX).join("bin/llvm-config").is_file() {
        bail!(
            "{LLVM_PREFIX}/bin/llvm-config is missing, and bpf-linker builds against it: install llvm-22-dev and \
             libpolly-22-dev (`cargo xtask setup` as root does)"
        );
    }
    say(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR} from crates.io: this takes about 2-4 minutes"
    ));
    let install = |locked: bool| {
        let mut command = cargo();
        // Outside the workspace, so that its .cargo/config.toml does not apply.
        command.current_dir(env::temp_dir()).env("LLVM_PREFIX", LLVM_PREFIX).args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--force",
        ]);
        if locked {
            command.arg("--locked");
        }
        command.args(["--no-default-features", "--features", &format!("llvm-{LLVM_MAJOR}")]);
        command
    };
    let shown = |locked: bool| {
        format!(
            "LLVM_PREFIX={LLVM_PREFIX} cargo install bpf-linker --version {BPF_LINKER_VERSION} --force{} \
             --no-default-features --features llvm-{LLVM_MAJOR}",
            if locked { " --locked" } else { "" }
        )
    };
    let fix = "check that crates.io is reachable and that llvm-22-dev and libpolly-22-dev are installed, then run \
               `cargo xtask setup` again";
    if let Err(error) = run_step(&mut install(true), &shown(true), fix) {
        say(&format!("{error:#}"));
        say("retrying without --locked (newer dependency versions than the ones bpf-linker was released with)");
        run_step(&mut install(false), &shown(false), fix)?;
    }
    Ok(())
}

/// Runs one installation step with inherited output and no stdin, printing it first; on failure
/// says which step failed and what to do.
pub(crate) fn run_step(command: &mut Command, shown: &str, fix: &str) -> anyhow::Result<()> {
    say(&format!("$ {shown}"));
    let started = Instant::now();
    let status = command.stdin(Stdio::null()).status().with_context(|| format!("cannot start `{shown}`; {fix}"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status}); {fix}");
    }
    say(&format!("done in {:.0} s: {shown}", started.elapsed().as_secs_f64()));
    Ok(())
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

pub(crate) fn is_root() -> bool {
    euid() == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_query_output_is_parsed() {
        let output = "bpftool\tii \niperf3\trc \ntshark\tun \nlibfoo:amd64\tii \npsmisc\thi \n";
        assert_eq!(installed_packages(output), ["bpftool", "libfoo", "psmisc"]);
    }

    #[test]
    fn nightly_is_recognised() {
        assert!(has_nightly("stable-x86_64-unknown-linux-gnu (active, default)\nnightly-x86_64-unknown-linux-gnu\n"));
        assert!(!has_nightly(
            "stable-x86_64-unknown-linux-gnu (default)\nnightly-2025-01-01-x86_64-unknown-linux-gnu\n"
        ));
        assert!(!has_nightly("1.95.0-x86_64-unknown-linux-gnu\n"));
    }

    #[test]
    fn llvm_of_linker_from_ldd() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ff58726d000)\n\
                   \tlibLLVM.so.22.1 => /usr/lib/llvm-22/lib/libLLVM.so.22.1 (0x00007ff57e000000)\n";
        assert_eq!(llvm_from_ldd(ldd), Some(22));
        assert_eq!(llvm_from_ldd("\tlibLLVM-19.so => /usr/lib/x86_64-linux-gnu/libLLVM-19.so (0x1)\n"), Some(19));
        assert_eq!(llvm_from_ldd("\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)\n"), None);
    }

    #[test]
    fn llvm_of_linker_from_crates2() {
        let json = r#"{"installs":{"bpf-linker 0.13.0 (registry+https://github.com/rust-lang/crates.io-index)":
            {"version_req":"=0.13.0","bins":["bpf-linker"],"features":["llvm-22"],"all_features":false}}}"#;
        assert_eq!(llvm_from_crates2(json), Some(22));
        assert_eq!(llvm_from_crates2("{}"), None);
    }

    #[test]
    fn agent_path_from_cargo_messages() {
        let messages = concat!(
            r#"{"reason":"compiler-artifact","target":{"name":"dataplane","kind":["lib"]},"executable":null}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"name":"dataplane","kind":["bin"]},"executable":"/w/target/debug/dataplane"}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
            "\n"
        );
        assert_eq!(agent_from_messages(messages), Some(PathBuf::from("/w/target/debug/dataplane")));
    }
}
