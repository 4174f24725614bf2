//! `cargo xtask vm`: the Vagrant cluster of vagrant/ on this machine: three Debian 12 VMs (kernel
//! 6.1) under libvirt, each with a pod and the agent, carrying pod traffic across VMs.
//!
//! Where KVM cannot run a stock kernel (as on the project's machines, themselves VMs without
//! VMX/SVM), QEMU emulates the CPU (TCG): everything works, slowly, so throughput figures show
//! function and relative cost, not speed. Everything the VMs need lives in the network namespace
//! [`cluster::NETNS`] and goes with `cargo xtask vm down`. Nothing here runs in `cargo xtask test`
//! or `cargo xtask setup`: the host packages are installed by these commands, on first use.

mod bench;
mod cluster;
mod packages;

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context as _};

use crate::setup;
use cluster::{Cluster, NODES};

/// Where the box, Vagrant's home, the libvirt pool and the cluster's state are kept.
pub const CACHE: &str = "/var/cache/dataplane-vm";
/// The local box `vm box` builds.
pub const BOX_NAME: &str = "dataplane/bookworm-local";
/// Bumped whenever vagrant/build-box.sh changes what the box holds, so the cache is rebuilt.
const BOX_RECIPE: &str = "1";

/// Subcommands of `cargo xtask vm`.
#[derive(clap::Subcommand)]
pub enum VmCommand {
    /// Build the Debian bookworm libvirt box from Debian's packages (cached; --rebuild to redo).
    Box {
        /// Build it again even if the cached box is current.
        #[arg(long)]
        rebuild: bool,
    },
    /// Bring the three node VMs up (box built first if needed), the agent running in each.
    Up,
    /// Remove the VMs, libvirtd, its networks and storage, and the namespace.
    Down,
    /// SSH into a node VM (node-1, node-2, node-3), or run a command there.
    Ssh {
        /// The node.
        node: String,
        /// A command to run instead of a shell.
        command: Vec<String>,
    },
    /// `vagrant validate` for both providers (libvirt and VirtualBox); no VM is started.
    Validate,
    /// Check the agent on the guest kernel: attach=clsact in every VM (tcx on this host), the
    /// netlink fallback's IPIP carrying pod traffic; then tear down.
    Test,
    /// Every path pod to pod across VMs (ping, iperf3 TCP and small-packet UDP) against the
    /// kernel's vxlan.calico; table to results/vm-<UTC>/; then tear down.
    Bench(BenchOptions),
}

/// Options of `cargo xtask vm bench`.
#[derive(clap::Args)]
pub struct BenchOptions {
    /// Seconds of each iperf3 stream.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// Leave the cluster up afterwards (`cargo xtask vm down` removes it).
    #[arg(long)]
    keep: bool,
}

/// Prints one line of output of the VM commands.
pub fn say(line: &str) {
    println!("[vm] {line}");
}

/// Runs a `vm` subcommand.
pub fn run(command: VmCommand) -> anyhow::Result<()> {
    let workspace = setup::workspace_root()?;
    let cluster = Cluster::new(&workspace);
    match command {
        VmCommand::Down => cluster.down(),
        VmCommand::Validate => {
            packages::ensure(Path::new(CACHE))?;
            validate(&workspace)
        }
        VmCommand::Box { rebuild } => {
            packages::ensure(Path::new(CACHE))?;
            build_box(&workspace, &cluster, rebuild)
        }
        VmCommand::Ssh { node, command } => ssh(&cluster, &node, &command),
        VmCommand::Up => {
            let agent = prepare(&workspace, &cluster)?;
            cluster.up(&agent)?;
            for node in NODES {
                say(&format!("{node}: {}", cluster.ssh_ok(node, "dataplane-node probe-line")?.trim()));
            }
            say("`cargo xtask vm ssh node-1` logs in; `cargo xtask vm down` removes everything");
            Ok(())
        }
        VmCommand::Test => {
            let agent = prepare(&workspace, &cluster)?;
            let host = host_probe(&workspace)?;
            cluster.up(&agent)?;
            let result = probe_checks(&cluster, &host).and_then(|_| ipip_checks(&cluster));
            let down = cluster.down();
            result?;
            down
        }
        VmCommand::Bench(options) => bench(&workspace, &cluster, &options),
    }
}

/// Packages, `vagrant validate`, the box and a stripped agent: what `up` needs. Returns the agent.
fn prepare(workspace: &Path, cluster: &Cluster) -> anyhow::Result<PathBuf> {
    packages::ensure(Path::new(CACHE))?;
    validate(workspace)?;
    build_box(workspace, cluster, false)?;
    setup::ensure()?;
    let built = setup::build_agent(false)?;
    // The debug build carries ~150 MB of debug info; three uploads into emulated VMs do not need it.
    let agent = Path::new(CACHE).join("dataplane");
    let status = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&agent)
        .arg(&built)
        .status()
        .context("cannot run strip")?;
    if !status.success() {
        bail!("strip --strip-debug {} failed ({status})", built.display());
    }
    say(&format!("agent for the VMs: {} (from {})", agent.display(), built.display()));
    Ok(agent)
}

/// `vagrant validate` with the libvirt provider, then VirtualBox's.
///
/// VirtualBox is not in Debian bookworm, so it cannot be installed here. Vagrant refuses to
/// validate for a provider it finds unusable, and it decides that by running `VBoxManage
/// --version` only; a stand-in answering just that is put on PATH for this one command, so that
/// Vagrant's own validation of the `virtualbox` block (and of the whole Vagrantfile for that
/// provider) runs. Where VirtualBox is installed, the real VBoxManage is used.
fn validate(workspace: &Path) -> anyhow::Result<()> {
    let vagrant_dir = workspace.join("vagrant");
    let scratch = Path::new(CACHE).join("validate");
    fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    // The file provisioner checks that the agent exists; any file will do for validation.
    let agent = scratch.join("agent-placeholder");
    fs::write(&agent, b"").with_context(|| format!("writing {}", agent.display()))?;
    let has_vboxmanage = Command::new("VBoxManage").arg("--version").output().is_ok_and(|o| o.status.success());
    let stand_in_dir = scratch.join("bin");
    if !has_vboxmanage {
        fs::create_dir_all(&stand_in_dir)?;
        let stand_in = stand_in_dir.join("VBoxManage");
        fs::write(
            &stand_in,
            "#!/bin/sh\n# Stand-in for `vagrant validate` only: VirtualBox is not installable here.\n\
             [ \"$1\" = --version ] && echo 7.0.14r161095 && exit 0\necho \"VBoxManage stand-in: $*\" >&2\nexit 1\n",
        )?;
        fs::set_permissions(&stand_in, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    for provider in ["libvirt", "virtualbox"] {
        let mut command = Command::new("vagrant");
        command
            .arg("validate")
            .current_dir(&vagrant_dir)
            .env("VAGRANT_HOME", Path::new(CACHE).join("vagrant.d"))
            .env("VAGRANT_DOTFILE_PATH", scratch.join("dot"))
            .env("VAGRANT_CHECKPOINT_DISABLE", "1")
            .env("VAGRANT_DEFAULT_PROVIDER", provider)
            .env("DATAPLANE_VM_AGENT", &agent)
            .stdin(Stdio::null());
        if provider == "virtualbox" && !has_vboxmanage {
            let path = std::env::var("PATH").unwrap_or_default();
            command.env("PATH", format!("{}:{path}", stand_in_dir.display()));
        }
        let output = command.output().context("cannot run vagrant validate")?;
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        if !output.status.success() {
            bail!("`vagrant validate` with provider {provider} failed:\n{text}");
        }
        let how = if provider == "virtualbox" && !has_vboxmanage { " (VBoxManage stand-in)" } else { "" };
        say(&format!("vagrant validate, provider {provider}{how}: {}", text.trim()));
    }
    let _ = fs::remove_dir_all(&scratch);
    Ok(())
}

/// Builds the box unless the cached one is current, and adds it to Vagrant's home.
fn build_box(workspace: &Path, cluster: &Cluster, rebuild: bool) -> anyhow::Result<()> {
    let cache = Path::new(CACHE);
    let stamp = cache.join("box.recipe");
    let current = fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == BOX_RECIPE);
    let listed = Command::new("vagrant")
        .args(["box", "list"])
        .env("VAGRANT_HOME", cluster.vagrant_home())
        .env("VAGRANT_CHECKPOINT_DISABLE", "1")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.starts_with(BOX_NAME)));
    if current && listed && !rebuild {
        say(&format!("box {BOX_NAME} is cached in {} (recipe {BOX_RECIPE})", cluster.vagrant_home().display()));
        return Ok(());
    }
    let started = Instant::now();
    say("building the box: debootstrap bookworm, disk image, GRUB (about 3-5 minutes)");
    let work = cache.join("build");
    let file = cache.join("bookworm.box");
    let key = vagrant_public_key()?;
    let status = Command::new("bash")
        .arg(workspace.join("vagrant/build-box.sh"))
        .arg(&work)
        .arg(&file)
        .arg(&key)
        .stdin(Stdio::null())
        .status()
        .context("cannot run vagrant/build-box.sh")?;
    if !status.success() {
        bail!("vagrant/build-box.sh failed ({status}); its output is above (logs in {})", work.display());
    }
    let status = Command::new("vagrant")
        .args(["box", "add", "--force", "--name", BOX_NAME])
        .arg(&file)
        .env("VAGRANT_HOME", cluster.vagrant_home())
        .env("VAGRANT_CHECKPOINT_DISABLE", "1")
        .stdin(Stdio::null())
        .status()
        .context("cannot run vagrant box add")?;
    if !status.success() {
        bail!("vagrant box add {} failed ({status})", file.display());
    }
    // The box now lives in Vagrant's home; the tar was only the way in.
    let _ = fs::remove_file(&file);
    let _ = fs::remove_dir_all(&work);
    fs::write(&stamp, BOX_RECIPE).with_context(|| format!("writing {}", stamp.display()))?;
    say(&format!("box {BOX_NAME} built and added in {:.0} s", started.elapsed().as_secs_f64()));
    Ok(())
}

/// The public half of Vagrant's well-known insecure key, as the Debian package ships it.
fn vagrant_public_key() -> anyhow::Result<PathBuf> {
    let candidates = [
        "/usr/share/rubygems-integration/all/gems/vagrant-2.3.4/keys/vagrant.pub",
        "/opt/vagrant/embedded/gems/gems/vagrant/keys/vagrant.pub",
    ];
    if let Some(found) = candidates.iter().map(PathBuf::from).find(|p| p.is_file()) {
        return Ok(found);
    }
    let output = Command::new("find")
        .args(["/usr/share/rubygems-integration", "/usr/lib/ruby", "/opt/vagrant", "-path", "*/keys/vagrant.pub"])
        .stderr(Stdio::null())
        .output()
        .context("cannot run find")?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .map(PathBuf::from)
        .context("Vagrant's insecure public key (keys/vagrant.pub) not found: is the vagrant package installed?")
}

fn ssh(cluster: &Cluster, node: &str, command: &[String]) -> anyhow::Result<()> {
    if !NODES.contains(&node) {
        bail!("no node {node}: the nodes are {}", NODES.join(", "));
    }
    if !cluster.is_up() {
        bail!("the cluster is not up: `cargo xtask vm up` first");
    }
    let status = cluster.ssh_command(node).args(command).status().context("cannot start ssh")?;
    if !status.success() {
        bail!("ssh {node} exited with {status}");
    }
    Ok(())
}

/// The kernel-probe line of the agent started on this host, in a scratch namespace with one
/// veth uplink (no traffic: only the probe's decision is wanted). Fails unless it says tcx.
fn host_probe(workspace: &Path) -> anyhow::Result<String> {
    const NETNS: &str = "dataplane-vm-hostprobe";
    let pin = "/sys/fs/bpf/dataplane-vm-hostprobe";
    let agent = setup::build_agent(false)?;
    let _ = Command::new("ip").args(["netns", "del", NETNS]).stderr(Stdio::null()).status();
    cluster::run(Command::new("ip").args(["netns", "add", NETNS]), "ip netns add (host probe)")?;
    let result = (|| {
        let ip = |args: &[&str]| cluster::run(Command::new("ip").args(["-n", NETNS]).args(args), "ip (host probe)");
        ip(&["link", "set", "lo", "up"])?;
        // A veth pair: this host's kernel has no dummy module.
        ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer"])?;
        ip(&["link", "set", "eth0-peer", "up"])?;
        ip(&["addr", "add", "10.100.0.11/24", "dev", "eth0"])?;
        ip(&["link", "set", "eth0", "up"])?;
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{NETNS}"))
            .arg(&agent)
            .args(["run", "--node", "node-1", "--pin-path", pin, "--datastore"])
            .arg(format!("file:{}", workspace.join("examples/two-nodes.yaml").display()))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start the agent on the host")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("kernel probe") && tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(30));
        let _ = child.kill();
        let _ = child.wait();
        let _ = Command::new(&agent).args(["cleanup", "--pin-path", pin]).stdout(Stdio::null()).status();
        line.context("the agent on the host printed no kernel-probe line in 30 s")
    })();
    let _ = Command::new("ip").args(["netns", "del", NETNS]).status();
    let line = strip_ansi(&result?);
    say(&format!("host: {line}"));
    if attach_method(&line) != Some("tcx") {
        bail!("the host's agent should attach through tcx (kernel >= 6.6): {line}");
    }
    Ok(line)
}

/// `tcx` or `clsact` from the agent's "kernel probe: ... attach=..." line.
pub fn attach_method(line: &str) -> Option<&str> {
    let at = line.find("attach=")?;
    line[at + "attach=".len()..].split_whitespace().next()
}

/// Removes terminal colour codes.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The probe's decision on the guest kernel: every VM's agent (started by the provisioning with
/// `--mode auto`) attached through clsact, while the host's attached through tcx.
fn probe_checks(cluster: &Cluster, host_line: &str) -> anyhow::Result<Vec<String>> {
    let mut shown = vec![format!("host (kernel {}): {host_line}", kernel_release())];
    for node in NODES {
        let line = cluster.ssh_ok(node, "dataplane-node probe-line")?;
        let line = line.trim();
        let kernel = cluster.ssh_ok(node, "uname -r")?;
        if attach_method(line) != Some("clsact") {
            bail!("{node}: the agent should attach through clsact on the guest's kernel (no tcx before 6.6): {line}");
        }
        shown.push(format!("{node} (kernel {}): {line}", kernel.trim()));
        say(&format!("{node}: {line}"));
    }
    Ok(shown)
}

/// The netlink fallback's IPIP in the VMs: the guest has the ipip module this host lacks, node-1
/// routes node-2's block through tunl0, and ping goes pod to pod across VMs.
fn ipip_checks(cluster: &Cluster) -> anyhow::Result<Vec<String>> {
    let mut shown = Vec::new();
    let host_ipip = Command::new("modinfo").arg("ipip").output().is_ok_and(|o| o.status.success());
    shown.push(format!(
        "ipip module on this host: {}",
        if host_ipip { "present" } else { "absent (the fallback's IPIP cannot run here)" }
    ));
    let ipip = bench::PATHS.iter().find(|p| p.name == "netlink fallback IPIP").context("no netlink IPIP path")?;
    bench::set_up(cluster, &NODES, ipip)?;
    let modules = cluster.ssh_ok(NODES[0], "lsmod")?;
    if !modules.lines().any(|l| l.starts_with("ipip ")) {
        bail!("node-1 runs the netlink IPIP fallback but the ipip module is not loaded:\n{modules}");
    }
    let routes = cluster.ssh_ok(NODES[0], "ip route show 10.244.2.0/26")?;
    if !routes.contains("tunl0") {
        bail!("node-1's route to node-2's block does not go through tunl0: {routes}");
    }
    let ping = cluster.ssh_ok(NODES[0], "dataplane-node ping 10.244.2.2")?;
    let (sent, received, _) = bench::parse_ping(&ping)?;
    if received == 0 {
        bail!("the netlink fallback's IPIP carried no ping from node-1's pod to node-2's pod:\n{ping}");
    }
    let line =
        format!("netlink fallback IPIP in the VMs: {} ; ping pod to pod across VMs {received}/{sent}", routes.trim());
    say(&line);
    shown.push(line);
    Ok(shown)
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// `cargo xtask vm bench`: up, every path, table, down.
fn bench(workspace: &Path, cluster: &Cluster, options: &BenchOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut timings = Vec::new();
    let agent = prepare(workspace, cluster)?;
    timings.push(format!("prerequisites, box and agent build: {:.0} s", started.elapsed().as_secs_f64()));
    let host = host_probe(workspace)?;
    let up_started = Instant::now();
    cluster.up(&agent)?;
    timings.push(format!("vagrant up of three VMs: {:.0} s", up_started.elapsed().as_secs_f64()));
    let measure_started = Instant::now();
    let result = (|| {
        let mut checks = probe_checks(cluster, &host)?;
        let (rows, mut failures, startup) = bench::run_paths(cluster, options.seconds);
        // After the paths (the last is this very setup): switching from the netlink IPIP
        // fallback to the kernel baseline first is a transition of its own, not what is measured.
        match ipip_checks(cluster) {
            Ok(lines) => checks.extend(lines),
            Err(error) => failures.push(format!("IPIP fallback check: {error:#}")),
        }
        Ok::<_, anyhow::Error>((checks, rows, failures, startup))
    })();
    timings.push(format!("checks and six paths: {:.0} s", measure_started.elapsed().as_secs_f64()));
    let mut down_error = None;
    if options.keep {
        say("--keep: the cluster stays up (`cargo xtask vm down` removes it)");
    } else {
        let down_started = Instant::now();
        down_error = cluster.down().err();
        timings.push(format!("teardown: {:.0} s", down_started.elapsed().as_secs_f64()));
    }
    let (checks, rows, mut failures, startup) = result?;
    if let Some(error) = down_error {
        failures.push(format!("teardown: {error:#}"));
    }
    timings.push(format!("whole bench: {:.0} s", started.elapsed().as_secs_f64()));
    let report = report(&checks, &rows, &failures, &startup, &timings, options.seconds);
    println!("\n{report}");
    let dir = workspace.join("results").join(format!("vm-{}", utc_stamp()));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::write(dir.join("results.md"), &report).with_context(|| format!("writing {}", dir.display()))?;
    say(&format!("written to {}", dir.join("results.md").display()));
    if !failures.is_empty() {
        bail!("{} path(s) did not carry traffic:\n  {}", failures.len(), failures.join("\n  "));
    }
    Ok(())
}

/// The Markdown report of a bench run.
fn report(
    checks: &[String],
    rows: &[(&str, bench::Measured)],
    failures: &[String],
    startup: &[String],
    timings: &[String],
    seconds: u32,
) -> String {
    let mut out = String::from("# VM bench: three Debian 12 VMs (kernel 6.1), pod to pod across VMs\n\n");
    // `vm up` always runs the VMs with libvirt's driver qemu (TCG): /dev/kvm on these machines
    // cannot run a stock kernel.
    out.push_str(
        "**The VMs ran under QEMU's emulation (TCG, no usable KVM on this host).** The figures show that each \
         path works and what it costs relative to the kernel baseline measured in the same VMs in the same run; \
         they are not the speed of any path on real hardware.\n\n",
    );
    out.push_str(&format!(
        "From node-1's pod: 5 pings to each of node-2's and node-3's pods; iperf3 to node-2's pod, TCP and UDP \
         (64-byte datagrams, unlimited rate), {seconds} s each. Ratios (x base) against the first row.\n\n"
    ));
    out.push_str(&bench::table(rows));
    if !failures.is_empty() {
        bullets(&mut out, "Failed", failures);
    }
    bullets(&mut out, "Probe and fallback checks", checks);
    bullets(&mut out, "Agent start-up per path and node", startup);
    bullets(&mut out, "Timings", timings);
    out
}

/// A heading line and one Markdown bullet per item.
fn bullets(out: &mut String, heading: &str, items: &[String]) {
    out.push_str(&format!("\n{heading}:\n"));
    for item in items {
        out.push_str(&format!("- {item}\n"));
    }
}

/// The current UTC time as YYYYMMDDTHHMMSSZ.
fn utc_stamp() -> String {
    let secs = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    format!("{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Proleptic Gregorian date of `days` since 1970-01-01 (Howard Hinnant's civil_from_days).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_method_is_read_from_the_probe_line() {
        let guest = "2026-11-23T18:00:00Z  INFO kernel probe: every fast-path feature present features=9 attach=clsact";
        assert_eq!(attach_method(guest), Some("clsact"));
        assert_eq!(attach_method(&strip_ansi("\u{1b}[2mx\u{1b}[0m attach=tcx")), Some("tcx"));
        assert_eq!(attach_method("--mode netlink: programming kernel routes"), None);
    }

    #[test]
    fn the_report_lists_failures_only_when_there_are_some() {
        let lines = |text: &str| vec![text.to_owned()];
        let ok = report(&lines("probe ok"), &[], &[], &lines("node-1 ready"), &lines("whole bench: 1 s"), 5);
        assert!(!ok.contains("Failed:"), "{ok}");
        assert!(ok.contains("\nProbe and fallback checks:\n- probe ok\n"), "{ok}");
        assert!(ok.contains("\nTimings:\n- whole bench: 1 s\n"), "{ok}");
        let failed = report(&[], &[], &lines("fast path VXLAN: no ping"), &[], &[], 5);
        assert!(failed.contains("\nFailed:\n- fast path VXLAN: no ping\n"), "{failed}");
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    /// The scripts the VMs run are valid shell, and the Vagrantfile names the nodes and the
    /// addresses node.sh derives from a node's index (10.100.0.1N, block 10.244.N.0/26).
    #[test]
    fn vagrant_files_agree_with_each_other() {
        let root = setup::workspace_root().unwrap();
        for script in ["build-box.sh", "provision.sh", "node.sh"] {
            let path = root.join("vagrant").join(script);
            let status = Command::new("bash").arg("-n").arg(&path).status().unwrap();
            assert!(status.success(), "bash -n {}", path.display());
        }
        let vagrantfile = fs::read_to_string(root.join("vagrant/Vagrantfile")).unwrap();
        for (i, node) in NODES.iter().enumerate() {
            let entry = format!("{{ name: \"{node}\", ip: \"10.100.0.1{}\", index: {} }}", i + 1, i + 1);
            assert!(vagrantfile.contains(&entry), "Vagrantfile lacks {entry}");
        }
        let node_sh = fs::read_to_string(root.join("vagrant/node.sh")).unwrap();
        assert!(node_sh.contains("printf '10.100.0.%d' $((10 + $1))"));
        assert!(node_sh.contains(bench::FAST_PATH_READY) && node_sh.contains(bench::NETLINK_READY));
        // udev (systemd's 99-default.link) replaces a MAC set after the device exists: the
        // baseline's VTEP and the pods' veths get theirs in the creating message.
        assert!(node_sh.contains("ip link add \"$VXLAN_DEVICE\" address \"$(vtep_mac \"$INDEX\")\""));
        assert!(node_sh.contains("ip link add \"$cali\" address ee:ee:ee:ee:ee:ee type veth"));
    }
}
