//! The Vagrant cluster's life: a network namespace of its own holding libvirtd, its networks, the
//! VMs' taps and QEMU processes; `vagrant up` in it; and a teardown that removes all of it, also
//! after a failure half-way.
//!
//! libvirtd runs by hand (`libvirtd -d`, no systemd here) with its pid file under the cache, so
//! `down` ends exactly the processes that `up` started: libvirtd by its pid, then whatever else
//! still runs in the namespace (QEMU, dnsmasq: `ip netns pids`), by pid.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use super::{say, BOX_NAME, CACHE};

/// The network namespace everything of the cluster lives in.
pub const NETNS: &str = "dataplane-vm";
/// libvirt storage pool of the VMs' disks (a directory under the cache).
const STORAGE_POOL: &str = "dataplane-vm";
/// libvirt management network (DHCP, isolated: no forwarding, no NAT rules).
const MGMT_NETWORK: &str = "dataplane-vm-mgmt";
/// Its address range.
const MGMT_ADDRESS: &str = "192.168.121.0/24";
/// The private network the Vagrantfile defines (libvirt__network_name).
const PRIVATE_NETWORK: &str = "dataplane-private";
/// Prefix of the libvirt domains the Vagrantfile makes.
const DOMAIN_PREFIX: &str = "dataplane-vm_";
/// What `up` appends to /etc/libvirt/qemu.conf, marked, once: QEMU as root, no cgroups, no mount
/// namespace, no virtlogd, no security driver (libvirtd has no systemd to lean on here).
const QEMU_CONF_MARK: &str = "# dataplane xtask vm: libvirtd without systemd, in a network namespace";
const QEMU_CONF: &str = "user = \"root\"\ngroup = \"root\"\nsecurity_driver = \"none\"\nnamespaces = [ ]\n\
                         cgroup_controllers = [ ]\nstdio_handler = \"file\"\n";

/// The node VMs, as the Vagrantfile names them.
pub const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];

/// Paths and settings of the cluster.
pub struct Cluster {
    /// The workspace's vagrant/ directory (the Vagrantfile).
    vagrant_dir: PathBuf,
    /// Cache root: box, Vagrant's home, libvirt pool, state.
    cache: PathBuf,
}

impl Cluster {
    /// The cluster of the workspace at `workspace`.
    pub fn new(workspace: &Path) -> Cluster {
        Cluster { vagrant_dir: workspace.join("vagrant"), cache: PathBuf::from(CACHE) }
    }

    /// Vagrant's home (boxes, plugins' state).
    pub fn vagrant_home(&self) -> PathBuf {
        self.cache.join("vagrant.d")
    }

    fn state_dir(&self) -> PathBuf {
        self.cache.join("state")
    }

    fn ssh_config(&self) -> PathBuf {
        self.state_dir().join("ssh-config")
    }

    fn pid_file(&self) -> PathBuf {
        self.state_dir().join("libvirtd.pid")
    }

    fn pool_dir(&self) -> PathBuf {
        self.cache.join("pool")
    }

    /// A `vagrant` command run in the namespace, with this machine's settings: the local box,
    /// QEMU's TCG (`driver = "qemu"`, CPU qemu64), our pool and isolated management network.
    pub fn vagrant(&self, agent: Option<&Path>) -> Command {
        let mut command = in_netns("vagrant");
        command
            .current_dir(&self.vagrant_dir)
            .env("VAGRANT_HOME", self.vagrant_home())
            .env("VAGRANT_DOTFILE_PATH", self.state_dir().join("vagrant"))
            .env("VAGRANT_DEFAULT_PROVIDER", "libvirt")
            .env("VAGRANT_CHECKPOINT_DISABLE", "1")
            .env("DATAPLANE_VM_BOX", BOX_NAME)
            .env("DATAPLANE_VM_DRIVER", "qemu")
            .env("DATAPLANE_VM_CPU_MODEL", "qemu64")
            .env("DATAPLANE_VM_STORAGE_POOL", STORAGE_POOL)
            .env("DATAPLANE_VM_MGMT_NETWORK", MGMT_NETWORK)
            .env("DATAPLANE_VM_MGMT_ADDRESS", MGMT_ADDRESS)
            .env("DATAPLANE_VM_MGMT_MODE", "none")
            .stdin(Stdio::null());
        // Vagrant validates the whole Vagrantfile for every command, and the file provisioner
        // wants its source to exist: commands that upload nothing (destroy, ssh-config) get one
        // that always does.
        command.env("DATAPLANE_VM_AGENT", agent.unwrap_or(Path::new("/dev/null")));
        command
    }

    /// Brings the cluster up with `agent` uploaded into every VM. On failure everything is torn
    /// down again before the error is returned.
    pub fn up(&self, agent: &Path) -> anyhow::Result<()> {
        let started = Instant::now();
        let result = self.try_up(agent);
        match result {
            Ok(()) => {
                say(&format!("cluster up in {:.0} s: {}", started.elapsed().as_secs_f64(), NODES.join(", ")));
                Ok(())
            }
            Err(error) => {
                say(&format!("bringing the cluster up failed: {error:#}; tearing down what was made"));
                if let Err(down) = self.down() {
                    say(&format!("teardown after the failure also failed: {down:#}"));
                }
                Err(error)
            }
        }
    }

    fn try_up(&self, agent: &Path) -> anyhow::Result<()> {
        fs::create_dir_all(self.state_dir()).with_context(|| format!("creating {}", self.state_dir().display()))?;
        if netns_exists() {
            say(&format!("namespace {NETNS} exists from an earlier run: tearing that down first"));
            self.down()?;
            fs::create_dir_all(self.state_dir())?;
        }
        run(Command::new("ip").args(["netns", "add", NETNS]), "ip netns add")?;
        run(in_netns("ip").args(["link", "set", "lo", "up"]), "ip link set lo up (in the namespace)")?;
        self.start_libvirtd()?;
        self.define_pool()?;
        say("vagrant up (three VMs; under emulation the boot takes a few minutes)");
        let started = Instant::now();
        let status =
            self.vagrant(Some(agent)).args(["up", "--provider", "libvirt"]).status().context("cannot start vagrant")?;
        if !status.success() {
            bail!("`vagrant up` failed ({status}); its output is above");
        }
        say(&format!("vagrant up took {:.0} s", started.elapsed().as_secs_f64()));
        let output = self.vagrant(None).arg("ssh-config").output().context("cannot start vagrant ssh-config")?;
        if !output.status.success() {
            bail!("`vagrant ssh-config` failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        fs::write(self.ssh_config(), &output.stdout)
            .with_context(|| format!("writing {}", self.ssh_config().display()))?;
        Ok(())
    }

    /// Starts libvirtd in the namespace (once QEMU's settings are in place) and waits for it.
    fn start_libvirtd(&self) -> anyhow::Result<()> {
        let conf = Path::new("/etc/libvirt/qemu.conf");
        let current = fs::read_to_string(conf).with_context(|| format!("reading {}", conf.display()))?;
        if !current.contains(QEMU_CONF_MARK) {
            say(&format!("appending to {}: QEMU as root, no cgroups, namespaces or security driver", conf.display()));
            fs::write(conf, format!("{current}\n{QEMU_CONF_MARK}\n{QEMU_CONF}"))
                .with_context(|| format!("writing {}", conf.display()))?;
        }
        // libvirt's own NAT network would add forwarding rules; ours are isolated.
        let autostart = Path::new("/etc/libvirt/qemu/networks/autostart/default.xml");
        if autostart.exists() {
            say("disabling the autostart of libvirt's `default` NAT network");
            fs::remove_file(autostart).with_context(|| format!("removing {}", autostart.display()))?;
        }
        say(&format!("starting libvirtd in namespace {NETNS}"));
        let pid_file = self.pid_file();
        run(in_netns("libvirtd").arg("-d").arg("-p").arg(&pid_file), "libvirtd -d")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = virsh(&["version"]).map(|o| o.status.success()).unwrap_or(false);
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("libvirtd did not answer within 30 s (`virsh version`)");
            }
            thread::sleep(Duration::from_millis(300));
        }
    }

    fn define_pool(&self) -> anyhow::Result<()> {
        let dir = self.pool_dir();
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let target = dir.to_string_lossy().into_owned();
        virsh_ok(&["pool-define-as", STORAGE_POOL, "dir", "--target", &target])?;
        virsh_ok(&["pool-start", STORAGE_POOL])?;
        Ok(())
    }

    /// Removes everything `up` made: VMs, their disks, libvirt's networks and pool, libvirtd and
    /// every process left in the namespace, the namespace. Goes on past failures and reports them.
    pub fn down(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut problems = Vec::new();
        if !netns_exists() && !self.pid_file().exists() && !self.state_dir().exists() {
            say("nothing to tear down");
            return Ok(());
        }
        if netns_exists() && !libvirtd_alive(&self.pid_file()) {
            // A libvirtd is needed to remove what libvirt still has on disk (domains, networks).
            if let Err(error) = self.start_libvirtd() {
                problems.push(format!("starting libvirtd for the teardown: {error:#}"));
            }
        }
        if libvirtd_alive(&self.pid_file()) {
            let output = self.vagrant(None).args(["destroy", "-f"]).output();
            if let Some(output) = output.as_ref().ok().filter(|o| !o.status.success()) {
                let stderr = String::from_utf8_lossy(&output.stderr);
                let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
                say(&format!("`vagrant destroy -f` failed ({last}); removing what is left with virsh"));
            }
            problems.extend(remove_libvirt_objects());
            let domains = virsh_ok(&["list", "--all", "--name"]).unwrap_or_default();
            let left: Vec<&str> = domains.lines().map(str::trim).filter(|d| d.starts_with(DOMAIN_PREFIX)).collect();
            if !left.is_empty() {
                problems.push(format!("domains left after the teardown: {}", left.join(", ")));
            }
            self.stop_libvirtd(&mut problems);
        }
        kill_netns_processes(&mut problems);
        if netns_exists() {
            if let Err(error) = run(Command::new("ip").args(["netns", "del", NETNS]), "ip netns del") {
                problems.push(format!("{error:#}"));
            }
        }
        for dir in [self.state_dir(), self.pool_dir()] {
            if dir.exists() {
                if let Err(error) = fs::remove_dir_all(&dir) {
                    problems.push(format!("removing {}: {error}", dir.display()));
                }
            }
        }
        if problems.is_empty() {
            say(&format!(
                "torn down in {:.0} s: no VM, libvirtd, network or namespace left",
                started.elapsed().as_secs_f64()
            ));
            Ok(())
        } else {
            bail!("teardown left problems:\n  {}", problems.join("\n  "))
        }
    }

    fn stop_libvirtd(&self, problems: &mut Vec<String>) {
        let Some(pid) = read_pid(&self.pid_file()) else {
            return;
        };
        // SAFETY: kill(2) with a pid we started and SIGTERM has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while pid_alive(pid) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(200));
        }
        if pid_alive(pid) {
            problems.push(format!("libvirtd (pid {pid}) ignored SIGTERM for 15 s; killed"));
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = fs::remove_file(self.pid_file());
    }

    /// Runs `command` (a shell command line) as root on `node` over SSH; returns its output.
    pub fn ssh(&self, node: &str, command: &str) -> anyhow::Result<Output> {
        self.ssh_command(node)
            .arg(format!("sudo {command}"))
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot start ssh to {node}"))
    }

    /// Like [`Cluster::ssh`], failing with the command's output unless it succeeds; returns stdout.
    pub fn ssh_ok(&self, node: &str, command: &str) -> anyhow::Result<String> {
        let output = self.ssh(node, command)?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            bail!(
                "on {node}: `{command}` failed ({}):\n{stdout}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(stdout)
    }

    /// An `ssh` to `node` through the config `vagrant ssh-config` wrote, in the namespace.
    pub fn ssh_command(&self, node: &str) -> Command {
        let mut command = in_netns("ssh");
        command.arg("-F").arg(self.ssh_config()).args(["-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20", node]);
        command
    }

    /// Whether `up` has written the SSH config (the cluster is up).
    pub fn is_up(&self) -> bool {
        self.ssh_config().is_file() && netns_exists()
    }
}

/// `program` run in the cluster's namespace (`nsenter --net`, which keeps /sys as it is).
pub fn in_netns(program: &str) -> Command {
    let mut command = Command::new("nsenter");
    command.arg(format!("--net=/run/netns/{NETNS}")).arg(program);
    command
}

fn netns_exists() -> bool {
    Path::new("/run/netns").join(NETNS).exists()
}

fn virsh(args: &[&str]) -> anyhow::Result<Output> {
    Command::new("virsh")
        .args(["-q", "-c", "qemu:///system"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot start virsh")
}

fn virsh_ok(args: &[&str]) -> anyhow::Result<String> {
    let output = virsh(args)?;
    if !output.status.success() {
        bail!("`virsh {}` failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Removes our domains (with their disks), networks and pool from libvirt; returns the problems.
fn remove_libvirt_objects() -> Vec<String> {
    let mut problems = Vec::new();
    let mut attempt = |args: &[&str]| {
        if let Err(error) = virsh_ok(args) {
            problems.push(format!("{error:#}"));
        }
    };
    let domains = virsh_ok(&["list", "--all", "--name"]).unwrap_or_default();
    for domain in domains.lines().map(str::trim).filter(|d| d.starts_with(DOMAIN_PREFIX)) {
        let _ = virsh(&["destroy", domain]);
        attempt(&["undefine", domain, "--remove-all-storage"]);
    }
    let networks = virsh_ok(&["net-list", "--all", "--name"]).unwrap_or_default();
    for network in networks.lines().map(str::trim).filter(|n| [MGMT_NETWORK, PRIVATE_NETWORK].contains(n)) {
        let _ = virsh(&["net-destroy", network]);
        attempt(&["net-undefine", network]);
    }
    let pools = virsh_ok(&["pool-list", "--all", "--name"]).unwrap_or_default();
    if pools.lines().any(|p| p.trim() == STORAGE_POOL) {
        let volumes = virsh_ok(&["vol-list", STORAGE_POOL]).unwrap_or_default();
        for volume in volumes.lines().filter_map(|l| l.split_whitespace().next()) {
            attempt(&["vol-delete", volume, "--pool", STORAGE_POOL]);
        }
        let _ = virsh(&["pool-destroy", STORAGE_POOL]);
        attempt(&["pool-undefine", STORAGE_POOL]);
    }
    problems
}

/// Ends every process still in the namespace (QEMU, dnsmasq left by a crashed libvirtd), by pid.
fn kill_netns_processes(problems: &mut Vec<String>) {
    if !netns_exists() {
        return;
    }
    let pids = |_: ()| -> Vec<i32> {
        Command::new("ip")
            .args(["netns", "pids", NETNS])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    };
    let left = pids(());
    if left.is_empty() {
        return;
    }
    problems.push(format!("processes left in namespace {NETNS} after libvirtd stopped: {left:?}; ended them"));
    for pid in &left {
        // SAFETY: kill(2) on pids in our own namespace; no memory-safety preconditions.
        unsafe { libc::kill(*pid, libc::SIGTERM) };
    }
    thread::sleep(Duration::from_secs(2));
    for pid in pids(()) {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn pid_alive(pid: i32) -> bool {
    // Not a zombie of ours: libvirtd daemonizes, so it is nobody's child here.
    Path::new("/proc").join(pid.to_string()).exists()
}

fn libvirtd_alive(pid_file: &Path) -> bool {
    read_pid(pid_file).is_some_and(pid_alive)
}

/// Runs `command`, failing with its stderr.
pub fn run(command: &mut Command, shown: &str) -> anyhow::Result<()> {
    let output = command.stdin(Stdio::null()).output().with_context(|| format!("cannot start `{shown}`"))?;
    if !output.status.success() {
        bail!("`{shown}` failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}
