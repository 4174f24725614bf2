//! A Calico-style cluster built from network namespaces, for the demo, the integration tests and
//! the benchmarks.
//!
//! [`Lab::up`] turns a [`Model`] into namespaces joined by veth pairs:
//!
//! ```text
//!   <prefix>-fabric        one bridge per node subnet (gateway = last free address), ip_forward=1,
//!     br0 ── n0-node-1     and brext (192.0.2.1/24) for the external host
//!     br0 ── n1-node-2
//!     brext ─ ext
//!   <prefix>-node-1        eth0 = node address, default via the subnet's gateway, ip_forward=1
//!     caliXXXXXXXXXXX      host side of each local pod (ee:ee:ee:ee:ee:ee), <podIP>/32 scope link
//!   <prefix>-node-1-web-1  eth0 = <podIP>/32, 169.254.1.1 scope link, default via 169.254.1.1
//!   <prefix>-ext           eth0 = 192.0.2.10/24, default via 192.0.2.1
//! ```
//!
//! Nothing answers the pods' ARP for 169.254.1.1 and no vxlan device exists: carrying pod traffic
//! is the dataplane's job. Dropping the [`Lab`] stops every process it started, deletes every
//! namespace and removes `/sys/fs/bpf/<prefix>`, also when a test panics.
#![deny(missing_docs)]

pub mod cluster;
pub mod cmd;
pub mod counters;
pub mod etcd;
pub mod iperf;
pub mod kernel_calico;
pub mod process;
pub mod scale;
pub mod topology;

use std::{
    collections::{hash_map::RandomState, BTreeMap, BTreeSet},
    fs,
    hash::{BuildHasher, Hasher},
    io::ErrorKind,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _};
use dataplane::model::Model;
use ipnet::Ipv4Net;

pub use cluster::Cluster;
use process::{send_signal, Registry};
pub use process::{Agent, Capture, ChildHandle, AGENT_READY};
pub use topology::Topology;
use topology::{CALI_HOST_MAC, ETH0, POD_GATEWAY};

/// Every lab name (namespaces, bpffs directory, log directory) starts with this.
pub const LAB_PREFIX: &str = "dpl-";

/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Where `ip netns add` keeps namespace handles.
const NETNS_DIR: &str = "/run/netns";

/// How to build a lab.
#[derive(Clone, Debug, Default)]
pub struct LabOptions {
    /// The name prefix; it must start with `dpl-`. Default: `dpl-` and six hex digits, fresh for
    /// every lab so that labs can run side by side.
    pub prefix: Option<String>,
    /// Keep the lab's directory (logs, pcaps) after teardown. It is always kept when the lab is
    /// dropped during a panic.
    pub keep_dir: bool,
}

/// A node of the lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabNode {
    /// The node's name in the model.
    pub name: String,
    /// The node's namespace.
    pub netns: String,
    /// The node's address with its prefix length, on `eth0`.
    pub addr: Ipv4Net,
    /// The node's uplink in its namespace (`eth0`).
    pub uplink: String,
    /// The bridge of the node's subnet in the fabric namespace.
    pub bridge: String,
    /// The subnet's gateway (an address of the fabric namespace).
    pub gateway: Ipv4Addr,
}

/// A pod of the lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabPod {
    /// `namespace/pod`, e.g. `default/web-1`.
    pub key: String,
    /// `namespace/name` of the workload endpoint in the model, e.g.
    /// `default/node--1-k8s-web--1-eth0` (the same as `key` for a model built from Pods).
    pub endpoint: String,
    /// The pod's namespace.
    pub netns: String,
    /// The pod's (first) address.
    pub addr: Ipv4Addr,
    /// All of the pod's addresses.
    pub addrs: Vec<Ipv4Addr>,
    /// The node the pod runs on.
    pub node: String,
    /// The host side of the pod's veth, in the node's namespace (`caliXXXXXXXXXXX`).
    pub interface: String,
    /// The MTU of the pod's `eth0`.
    pub mtu: u32,
}

/// A host outside the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabHost {
    /// The host's namespace.
    pub netns: String,
    /// The host's address.
    pub addr: Ipv4Addr,
}

/// The dataplane an agent is told to run (`dataplane run --mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentMode {
    /// `--mode bpf`: the fast path or nothing.
    Bpf,
    /// `--mode netlink`: the kernel routes, devices and nf_tables of the fallback.
    Netlink,
    /// `--mode auto`, expected to fall back to netlink (e.g. with `DATAPLANE_PROBE_DISABLE`).
    AutoFallingBack,
}

impl AgentMode {
    /// The value of `--mode`.
    pub fn arg(self) -> &'static str {
        match self {
            AgentMode::Bpf => "bpf",
            AgentMode::Netlink => "netlink",
            AgentMode::AutoFallingBack => "auto",
        }
    }

    /// The line the agent logs after each successful reconcile in this mode.
    pub fn ready_line(self) -> &'static str {
        match self {
            AgentMode::Bpf => AGENT_READY,
            AgentMode::Netlink | AgentMode::AutoFallingBack => dataplane::agent::NETLINK_READY,
        }
    }
}

/// How [`Lab::start_agent_with`] starts an agent; the default is what [`Lab::start_agent`] does.
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    /// `--mode`; None leaves the agent's default (auto, expected to run the fast path).
    pub mode: Option<AgentMode>,
    /// Arguments after the usual ones, e.g. `--nat-port-range 40000-40001`.
    pub args: Vec<String>,
    /// Environment variables besides `NO_COLOR` and `RUST_LOG`.
    pub env: Vec<(String, String)>,
}

impl AgentOptions {
    /// Options for `mode` without extra arguments.
    pub fn mode(mode: AgentMode) -> Self {
        AgentOptions { mode: Some(mode), ..AgentOptions::default() }
    }

    /// The line the agent will log when its backend is programmed.
    pub fn ready_line(&self) -> &'static str {
        self.mode.map_or(AGENT_READY, AgentMode::ready_line)
    }
}

/// A running lab; torn down when dropped.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    dir: PathBuf,
    keep_dir: bool,
    fabric_netns: String,
    nodes: BTreeMap<String, LabNode>,
    pods: BTreeMap<String, LabPod>,
    external: LabHost,
    /// Namespaces created so far, in creation order: exactly what teardown deletes.
    namespaces: Vec<String>,
    registry: Registry,
    log_names: Mutex<BTreeSet<String>>,
}

impl Lab {
    /// Builds the lab for `model`. On error, whatever was already created is torn down.
    pub fn up(model: &Model, options: LabOptions) -> anyhow::Result<Lab> {
        let prefix = match options.prefix {
            Some(prefix) if prefix.starts_with(LAB_PREFIX) => prefix,
            Some(prefix) => {
                bail!("lab prefix {prefix:?} must start with {LAB_PREFIX:?} (so `cargo xtask lab down` finds it)")
            }
            None => fresh_prefix(),
        };
        let topology = Topology::plan(model, &prefix)?;
        ensure_bpffs()?;

        let dir = std::env::temp_dir().join(&prefix);
        fs::create_dir_all(&dir).with_context(|| format!("creating the lab directory {}", dir.display()))?;

        let nodes = topology
            .nodes
            .iter()
            .map(|n| {
                let subnet = &topology.subnets[n.subnet];
                let node = LabNode {
                    name: n.name.clone(),
                    netns: n.netns.clone(),
                    addr: n.addr,
                    uplink: ETH0.to_owned(),
                    bridge: subnet.bridge.clone(),
                    gateway: subnet.gateway,
                };
                (n.name.clone(), node)
            })
            .collect();
        let pods = topology
            .pods
            .iter()
            .map(|p| {
                let pod = LabPod {
                    key: p.key.clone(),
                    endpoint: p.endpoint.clone(),
                    netns: p.netns.clone(),
                    addr: p.addrs[0],
                    addrs: p.addrs.clone(),
                    node: p.node.clone(),
                    interface: p.interface.clone(),
                    mtu: p.mtu,
                };
                (p.key.clone(), pod)
            })
            .collect();

        // From here on the lab exists: an error drops it, which removes what was made.
        let mut lab = Lab {
            prefix: prefix.clone(),
            dir,
            keep_dir: options.keep_dir,
            fabric_netns: topology.fabric_netns.clone(),
            nodes,
            pods,
            external: LabHost { netns: topology.external.netns.clone(), addr: topology.external.addr.addr() },
            namespaces: Vec::new(),
            registry: Arc::default(),
            log_names: Mutex::default(),
        };
        lab.build(&topology).with_context(|| format!("building lab {prefix}"))?;
        Ok(lab)
    }

    /// Creates the namespaces, links, addresses and routes of `topology`.
    fn build(&mut self, topology: &Topology) -> anyhow::Result<()> {
        fs::create_dir_all(bpffs_dir(&self.prefix))
            .with_context(|| format!("creating {}", bpffs_dir(&self.prefix).display()))?;

        // The fabric: one bridge per node subnet, routing between them.
        let fabric = topology.fabric_netns.as_str();
        self.add_netns(fabric)?;
        cmd::sysctl(fabric, "net.ipv4.ip_forward", "1")?;
        for subnet in &topology.subnets {
            let gateway = format!("{}/{}", subnet.gateway, subnet.net.prefix_len());
            cmd::ip(Some(fabric), &["link", "add", &subnet.bridge, "type", "bridge"])?;
            cmd::ip(Some(fabric), &["addr", "add", &gateway, "dev", &subnet.bridge])?;
            cmd::ip(Some(fabric), &["link", "set", &subnet.bridge, "up"])?;
        }
        let external = &topology.external;
        cmd::ip(Some(fabric), &["link", "add", &external.bridge, "type", "bridge"])?;
        cmd::ip(Some(fabric), &["addr", "add", &external.gateway.to_string(), "dev", &external.bridge])?;
        cmd::ip(Some(fabric), &["link", "set", &external.bridge, "up"])?;

        // Nodes: eth0 on their subnet's bridge.
        for node in &topology.nodes {
            let subnet = &topology.subnets[node.subnet];
            self.add_host(&node.netns, &node.fabric_veth, &subnet.bridge, node.addr, subnet.gateway, fabric)?;
            // A node routes between its pods and the fabric.
            cmd::sysctl(&node.netns, "net.ipv4.ip_forward", "1")?;
        }

        // The external host, outside every pool.
        self.add_host(
            &external.netns,
            &external.fabric_veth,
            &external.bridge,
            external.addr,
            external.gateway.addr(),
            fabric,
        )?;

        // Pods, wired as Calico's CNI plugin does.
        for pod in &topology.pods {
            let node_netns = self.node(&pod.node)?.netns.clone();
            self.add_netns(&pod.netns)?;
            let node = Some(node_netns.as_str());
            let inside = Some(pod.netns.as_str());
            cmd::ip(node, &["link", "add", &pod.interface, "type", "veth", "peer", "name", ETH0, "netns", &pod.netns])?;
            cmd::ip(node, &["link", "set", &pod.interface, "address", CALI_HOST_MAC, "up"])?;
            let mtu = pod.mtu.to_string();
            if let Some(mac) = pod.mac {
                cmd::ip(inside, &["link", "set", ETH0, "address", &mac.to_string()])?;
            }
            cmd::ip(inside, &["link", "set", ETH0, "mtu", &mtu, "up"])?;
            for addr in &pod.addrs {
                let host_route = format!("{addr}/32");
                cmd::ip(inside, &["addr", "add", &host_route, "dev", ETH0])?;
                cmd::ip(node, &["route", "add", &host_route, "dev", &pod.interface, "scope", "link"])?;
            }
            let gateway = POD_GATEWAY.to_string();
            cmd::ip(inside, &["route", "add", &gateway, "dev", ETH0, "scope", "link"])?;
            cmd::ip(inside, &["route", "add", "default", "via", &gateway, "dev", ETH0])?;
        }
        Ok(())
    }

    /// Creates a namespace with `lo` up, and remembers it for teardown.
    fn add_netns(&mut self, netns: &str) -> anyhow::Result<()> {
        cmd::ip(None, &["netns", "add", netns])?;
        self.namespaces.push(netns.to_owned());
        cmd::ip(Some(netns), &["link", "set", "lo", "up"])?;
        // IPv4 only, like the clusters modelled here: no router solicitations or DAD in captures.
        // Best effort: a kernel without IPv6 has nothing to turn off.
        for key in ["net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"] {
            let _ = cmd::sysctl(netns, key, "1");
        }
        Ok(())
    }

    /// Creates a host namespace whose `eth0` (with `addr`, default via `gateway`) is plugged into
    /// `bridge` of the fabric through `fabric_veth`.
    fn add_host(
        &mut self,
        netns: &str,
        fabric_veth: &str,
        bridge: &str,
        addr: Ipv4Net,
        gateway: Ipv4Addr,
        fabric: &str,
    ) -> anyhow::Result<()> {
        self.add_netns(netns)?;
        cmd::ip(Some(netns), &["link", "add", ETH0, "type", "veth", "peer", "name", fabric_veth, "netns", fabric])?;
        cmd::ip(Some(fabric), &["link", "set", fabric_veth, "master", bridge, "up"])?;
        cmd::ip(Some(netns), &["addr", "add", &addr.to_string(), "dev", ETH0])?;
        cmd::ip(Some(netns), &["link", "set", ETH0, "up"])?;
        cmd::ip(Some(netns), &["route", "add", "default", "via", &gateway.to_string(), "dev", ETH0])?;
        Ok(())
    }

    /// The lab's name prefix (`dpl-<hex>`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The lab's directory: process logs and pcaps.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The fabric namespace (bridges and routing between subnets).
    pub fn fabric_netns(&self) -> &str {
        &self.fabric_netns
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> anyhow::Result<&LabNode> {
        self.nodes.get(name).with_context(|| {
            format!("lab {} has no node {name:?} (it has {:?})", self.prefix, self.nodes.keys().collect::<Vec<_>>())
        })
    }

    /// The namespace of node `name`.
    pub fn node_netns(&self, name: &str) -> anyhow::Result<&str> {
        Ok(&self.node(name)?.netns)
    }

    /// The fabric bridge that node `name`'s uplink is plugged into: capture there to see its wire.
    pub fn fabric_bridge(&self, name: &str) -> anyhow::Result<&str> {
        Ok(&self.node(name)?.bridge)
    }

    /// Every node, by name.
    pub fn nodes(&self) -> impl Iterator<Item = &LabNode> {
        self.nodes.values()
    }

    /// The pod `namespace/pod` (or `namespace/<workload endpoint name>`).
    pub fn pod(&self, key: &str) -> anyhow::Result<&LabPod> {
        let by_endpoint = || self.pods.values().find(|p| p.endpoint == key);
        self.pods.get(key).or_else(by_endpoint).with_context(|| {
            format!("lab {} has no pod {key:?} (it has {:?})", self.prefix, self.pods.keys().collect::<Vec<_>>())
        })
    }

    /// Every pod, by `namespace/name`.
    pub fn pods(&self) -> impl Iterator<Item = &LabPod> {
        self.pods.values()
    }

    /// The external host, outside the cluster and every pool.
    pub fn external(&self) -> &LabHost {
        &self.external
    }

    /// Where the agent of node `name` pins its maps and links: `/sys/fs/bpf/<prefix>/<node>`.
    pub fn pin_path(&self, name: &str) -> PathBuf {
        bpffs_dir(&self.prefix).join(topology::sanitize(name))
    }

    /// The command line [`Lab::exec`] runs, for showing to a person.
    pub fn command_line(&self, netns: &str, argv: &[&str]) -> String {
        cmd::display(&cmd::nsenter_argv(netns, argv))
    }

    /// Runs `argv` in `netns` and returns its output; fails, with stdout and stderr, unless it
    /// exits with 0.
    pub fn exec(&self, netns: &str, argv: &[&str]) -> anyhow::Result<Output> {
        cmd::run(&cmd::nsenter_argv(netns, argv))
    }

    /// Runs `argv` in `netns` and returns its output whatever its exit status.
    pub fn exec_status(&self, netns: &str, argv: &[&str]) -> anyhow::Result<Output> {
        cmd::run_status(&cmd::nsenter_argv(netns, argv))
    }

    /// `ping -c 1 -W 1` from `from` to `to` until a reply comes (up to `tries` times); whether
    /// one came.
    pub fn ping_ok(&self, from: &LabPod, to: std::net::Ipv4Addr, tries: usize) -> anyhow::Result<bool> {
        let to = to.to_string();
        for _ in 0..tries {
            if self.exec_status(&from.netns, &["ping", "-c", "1", "-W", "1", &to])?.status.success() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// `ping -c 3` from `netns` to `to`, up to three tries half a second apart (a node resolves
    /// its neighbour on the first packet): passes when all three replies come from `to` itself,
    /// and returns ping's output; fails with every try's output.
    pub fn ping(&self, netns: &str, to: std::net::Ipv4Addr) -> anyhow::Result<String> {
        let to = to.to_string();
        let argv = ["ping", "-c", "3", "-i", "0.2", "-W", "2", &to];
        let from_to = format!("bytes from {to}: ");
        let mut tries = Vec::new();
        for _ in 0..3 {
            let output = self.exec_status(netns, &argv)?;
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            let replies = stdout.lines().filter(|l| l.contains(&from_to) && !l.contains("DIFFERENT ADDRESS")).count();
            if output.status.success() && replies == 3 {
                return Ok(stdout);
            }
            tries.push(format!("{}\n{stdout}{}", output.status, String::from_utf8_lossy(&output.stderr)));
            std::thread::sleep(Duration::from_millis(500));
        }
        anyhow::bail!("`{}` never got 3 replies from {to}:\n{}", self.command_line(netns, &argv), tries.join("\n"))
    }

    /// Runs `argv` in `netns` and returns its stdout; fails unless it exits with 0.
    pub fn exec_stdout(&self, netns: &str, argv: &[&str]) -> anyhow::Result<String> {
        let output = self.exec(netns, argv)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Starts `argv` in `netns` with stdout and stderr in `<lab dir>/<log_name>.log`.
    /// The process is stopped when the handle (or the lab) is dropped.
    pub fn spawn(&self, netns: &str, argv: &[&str], log_name: &str) -> anyhow::Result<ChildHandle> {
        self.spawn_with_env(netns, argv, log_name, &[])
    }

    /// [`Lab::spawn`] with extra environment variables.
    pub fn spawn_with_env(
        &self,
        netns: &str,
        argv: &[&str],
        log_name: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<ChildHandle> {
        let (name, log) = self.log_file(log_name)?;
        self.start(netns, argv, name, log, env)
    }

    /// Starts `argv` in `netns` with stdout and stderr in the file `log`.
    fn start(
        &self,
        netns: &str,
        argv: &[&str],
        name: String,
        log: PathBuf,
        env: &[(&str, &str)],
    ) -> anyhow::Result<ChildHandle> {
        let full = cmd::nsenter_argv(netns, argv);
        let line = cmd::display(&full);
        let stdout = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let stderr = stdout.try_clone().with_context(|| format!("opening {} twice", log.display()))?;
        let mut command = cmd::command(&full)?;
        command.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().with_context(|| format!("cannot start `{line}`"))?;
        Ok(ChildHandle::new(name, line, child, log, self.registry.clone()))
    }

    /// A fresh log file name in the lab's directory: `<name>.log`, `<name>-2.log`, ...
    fn log_file(&self, log_name: &str) -> anyhow::Result<(String, PathBuf)> {
        let base = topology::sanitize(log_name);
        let mut names = self.log_names.lock().map_err(|_| anyhow::anyhow!("log name registry poisoned"))?;
        let mut name = base.clone();
        let mut n = 1;
        while !names.insert(name.clone()) {
            n += 1;
            name = format!("{base}-{n}");
        }
        let path = self.dir.join(format!("{name}.log"));
        Ok((name, path))
    }

    /// Starts the agent of node `name` in the node's namespace:
    /// `<bin> run --datastore file:<datastore> --node <name> --pin-path <pin_path(name)>`.
    pub fn start_agent(&self, name: &str, bin: &Path, datastore: &Path) -> anyhow::Result<Agent> {
        self.start_agent_with(name, bin, datastore, &AgentOptions::default())
    }

    /// [`Lab::start_agent`] in a chosen mode, with extra arguments after the usual ones and extra
    /// environment variables; the agent's `wait_ready` waits for the mode's ready line.
    pub fn start_agent_with(
        &self,
        name: &str,
        bin: &Path,
        datastore: &Path,
        options: &AgentOptions,
    ) -> anyhow::Result<Agent> {
        let netns = self.node_netns(name)?.to_owned();
        if !bin.exists() {
            bail!("agent binary {} does not exist: build it with `cargo build -p dataplane`", bin.display());
        }
        let datastore = datastore.canonicalize().with_context(|| format!("datastore file {}", datastore.display()))?;
        let pin_path = self.pin_path(name);
        let bin = bin.to_string_lossy();
        let datastore_arg = format!("file:{}", datastore.display());
        let pin_arg = pin_path.to_string_lossy();
        let mut argv = vec![&*bin, "run", "--datastore", &datastore_arg, "--node", name, "--pin-path", &pin_arg];
        if let Some(mode) = options.mode {
            argv.extend(["--mode", mode.arg()]);
        }
        argv.extend(options.args.iter().map(String::as_str));
        // Plain text logs (no colour codes between words), at info unless the caller chose a level.
        let level = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
        let mut env = vec![("NO_COLOR", "1"), ("RUST_LOG", level.as_str())];
        env.extend(options.env.iter().map(|(key, value)| (key.as_str(), value.as_str())));
        let process = self.spawn_with_env(&netns, &argv, &format!("agent-{name}"), &env)?;
        Ok(Agent::new(name.to_owned(), pin_path, process, options.ready_line()))
    }

    /// Starts tcpdump on `iface` in `netns` with `filter`, writing a pcap in the lab's directory,
    /// and returns once tcpdump is listening.
    pub fn capture(&self, netns: &str, iface: &str, filter: &str) -> anyhow::Result<Capture> {
        let (name, log) = self.log_file(&format!("capture-{netns}-{iface}"))?;
        let pcap = log.with_extension("pcap");
        let pcap_arg = pcap.to_string_lossy();
        // --immediate-mode hands each packet over at once (else packets still in the kernel's ring
        // block when tcpdump is stopped are lost), -U writes it at once, and -Z root keeps tcpdump
        // able to write in our directory.
        let mut argv = vec!["tcpdump", "-i", iface, "-nn", "--immediate-mode", "-U", "-Z", "root", "-w", &pcap_arg];
        if !filter.is_empty() {
            argv.push(filter);
        }
        let mut process = self.start(netns, &argv, name, log, &[])?;
        process.wait_for_log("listening on", Duration::from_secs(10))?;
        Ok(Capture::new(pcap, process))
    }

    /// Tears the lab down; returns what could not be removed.
    fn teardown(&mut self) -> Vec<String> {
        let mut problems = Vec::new();

        // Our own children first, gently; whatever else runs in a namespace is found below.
        if let Ok(pids) = self.registry.lock() {
            for pid in pids.iter() {
                let _ = send_signal(*pid, libc::SIGTERM);
            }
        }
        for netns in self.namespaces.iter().rev() {
            if let Err(e) = kill_netns_processes(netns) {
                problems.push(format!("{e:#}"));
            }
        }
        for netns in self.namespaces.iter().rev() {
            if let Err(e) = cmd::ip(None, &["netns", "del", netns]) {
                problems.push(format!("{e:#}"));
            }
        }
        self.namespaces.clear();

        if let Err(e) = remove_tree(&bpffs_dir(&self.prefix)) {
            problems.push(format!("{e:#}"));
        }

        if thread::panicking() || self.keep_dir {
            eprintln!("lab {}: logs and captures kept in {}", self.prefix, self.dir.display());
        } else if let Err(e) = remove_tree(&self.dir) {
            problems.push(format!("{e:#}"));
        }
        problems
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let problems = self.teardown();
        if !problems.is_empty() {
            eprintln!(
                "lab {}: teardown left things behind (`cargo xtask lab down` removes them):\n  {}",
                self.prefix,
                problems.join("\n  ")
            );
        }
    }
}

/// A fresh lab prefix: `dpl-` and six hex digits from a random hash of the pid, the time and a
/// counter, that no existing namespace uses.
fn fresh_prefix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    loop {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.write_u32(COUNTER.fetch_add(1, Ordering::Relaxed));
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        hasher.write_u128(nanos);
        let prefix = format!("{LAB_PREFIX}{:06x}", hasher.finish() & 0xff_ffff);
        let taken = Path::new(NETNS_DIR).join(format!("{prefix}-fabric")).exists()
            || bpffs_dir(&prefix).exists()
            || std::env::temp_dir().join(&prefix).exists();
        if !taken {
            return prefix;
        }
    }
}

/// `/sys/fs/bpf/<prefix>`: the lab's pins.
fn bpffs_dir(prefix: &str) -> PathBuf {
    Path::new(BPFFS).join(prefix)
}

/// Reads a file datastore (Calico YAML) into a model for [`Lab::up`]. A resource the datastore
/// skips is an error here: a lab built from half a cluster would mislead whoever reads its results.
pub fn load_model(path: &Path) -> anyhow::Result<Model> {
    let (model, problems) = dataplane::datastore::file::load(path)?;
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        bail!("{} has resources the dataplane cannot use:\n  {}", path.display(), list.join("\n  "));
    }
    Ok(model)
}

/// Whether this process runs as root (the lab needs it).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `work` on a helper thread that entered the network namespace `netns` (setns changes only
/// the calling thread) and returns its result: sockets made there belong to that namespace, and
/// per-namespace queries (interfaces, tcx hooks) answer for it.
pub fn in_netns<T: Send + 'static>(
    netns: &str,
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    use std::os::fd::AsRawFd as _;
    let path = cmd::netns_path(netns);
    let worker = std::thread::spawn(move || -> anyhow::Result<T> {
        let handle = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns(2) on a valid descriptor; it moves only this short-lived thread.
        let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            bail!("setns({path}): {}", std::io::Error::last_os_error());
        }
        work().with_context(|| format!("in {path}"))
    });
    worker.join().map_err(|_| anyhow::anyhow!("the thread entering {netns} panicked"))?
}

/// GET `path` from the HTTP server at `addr` inside `netns` (an agent's metrics endpoint, which
/// listens on the node's loopback): the status and the body.
pub fn http_get(netns: &str, addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let (addr, request) = (addr.to_owned(), format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
    let text = in_netns(netns, move || {
        let mut stream = std::net::TcpStream::connect(&addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(request.as_bytes())?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text)
    })?;
    let status = text.split_whitespace().nth(1).and_then(|code| code.parse().ok());
    let status = status.with_context(|| format!("no HTTP status in the answer: {text:?}"))?;
    Ok((status, text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()))
}

/// A UDP socket bound to `port` (all addresses) inside the namespace `netns`, with `read_timeout`
/// on its receives; the caller can use it from its own thread.
pub fn udp_socket_in(netns: &str, port: u16, read_timeout: Option<Duration>) -> anyhow::Result<std::net::UdpSocket> {
    in_netns(netns, move || {
        let socket = std::net::UdpSocket::bind(std::net::SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
            .with_context(|| format!("binding UDP port {port}"))?;
        socket.set_read_timeout(read_timeout).context("setting a read timeout")?;
        Ok(socket)
    })
}

/// Sends each of `packets` (whole IPv4 packets, header included, as they are to leave) to `dst`
/// through a raw socket in `netns`: the kernel adds only the link layer, so fragments and
/// crafted headers go out as built. Returns how many were sent whole.
pub fn send_raw_ipv4(netns: &str, dst: Ipv4Addr, packets: Vec<Vec<u8>>) -> anyhow::Result<usize> {
    in_netns(netns, move || {
        use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
        // SAFETY: plain socket(2); the descriptor is owned below. IPPROTO_RAW implies IP_HDRINCL.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        anyhow::ensure!(raw >= 0, "raw IPv4 socket: {}", std::io::Error::last_os_error());
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(raw) };
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst.octets()) },
            sin_zero: [0; 8],
        };
        let mut sent = 0;
        for packet in packets {
            // SAFETY: the buffer and the address outlive the call; lengths are theirs.
            let n = unsafe {
                libc::sendto(
                    socket.as_raw_fd(),
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&to as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if usize::try_from(n).is_ok_and(|n| n == packet.len()) {
                sent += 1;
            }
        }
        Ok(sent)
    })
}

/// Mounts bpffs at /sys/fs/bpf unless one is mounted there already.
pub fn ensure_bpffs() -> anyhow::Result<()> {
    // Labs built side by side in one process must not both mount: the second mount would hide the
    // first one's pins.
    static MOUNTING: Mutex<()> = Mutex::new(());
    let _guard = MOUNTING.lock().map_err(|_| anyhow::anyhow!("bpffs mount lock poisoned"))?;
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&BPFFS) && fields.get(2) == Some(&"bpf")
    });
    if !mounted {
        cmd::run(&["mount", "-t", "bpf", "bpf", BPFFS])?;
    }
    Ok(())
}

/// Stops every process in `netns`: SIGTERM, up to 2 s to exit, then SIGKILL.
fn kill_netns_processes(netns: &str) -> anyhow::Result<()> {
    let mut left = netns_pids(netns)?;
    for (signal, wait) in [(libc::SIGTERM, Duration::from_secs(2)), (libc::SIGKILL, Duration::from_secs(2))] {
        if left.is_empty() {
            return Ok(());
        }
        for pid in &left {
            let _ = send_signal(*pid, signal);
        }
        let deadline = Instant::now() + wait;
        while !left.is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
            left = netns_pids(netns)?;
        }
    }
    if left.is_empty() {
        Ok(())
    } else {
        bail!("processes {left:?} in namespace {netns} survived SIGKILL")
    }
}

/// The processes in `netns` (`ip netns pids`; exited but unreaped ones are not listed).
fn netns_pids(netns: &str) -> anyhow::Result<Vec<u32>> {
    let output = cmd::run(&["ip", "netns", "pids", netns])?;
    Ok(String::from_utf8_lossy(&output.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect())
}

/// Removes a directory tree (bpffs pins included); a missing tree is not an error.
fn remove_tree(path: &Path) -> anyhow::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Names in `dir` that start with `dpl-`; none if `dir` does not exist.
fn lab_entries(dir: &Path) -> anyhow::Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(LAB_PREFIX) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Removes every lab leftover: `dpl-*` namespaces (and their processes), `/sys/fs/bpf/dpl-*` and
/// lab directories in the temp dir. Returns how many things it removed.
pub fn down_all() -> anyhow::Result<usize> {
    down_all_with(|_| {})
}

/// [`down_all`], calling `report` with a description of each thing removed.
pub fn down_all_with(mut report: impl FnMut(&str)) -> anyhow::Result<usize> {
    let mut removed = 0;
    let mut problems = Vec::new();

    let namespaces = lab_entries(Path::new(NETNS_DIR))?;
    for netns in &namespaces {
        if let Err(e) = kill_netns_processes(netns) {
            problems.push(format!("{e:#}"));
        }
    }
    for netns in &namespaces {
        match cmd::ip(None, &["netns", "del", netns]) {
            Ok(()) => {
                removed += 1;
                report(&format!("namespace {netns}"));
            }
            Err(e) => problems.push(format!("{e:#}")),
        }
    }

    let trees = [(Path::new(BPFFS).to_path_buf(), "pins"), (std::env::temp_dir(), "lab directory")];
    for (parent, what) in trees {
        for name in lab_entries(&parent)? {
            let path = parent.join(name);
            match remove_tree(&path) {
                Ok(()) => {
                    removed += 1;
                    report(&format!("{what} {}", path.display()));
                }
                Err(e) => problems.push(format!("{e:#}")),
            }
        }
    }

    if !problems.is_empty() {
        bail!("removed {removed} things but could not remove:\n  {}", problems.join("\n  "));
    }
    Ok(removed)
}

/// Polls `check` every 200 ms until it holds, up to `timeout`; `what` names the awaited state
/// in the error. Tests wait on a condition with it instead of sleeping a fixed time.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    while !check()? {
        anyhow::ensure!(std::time::Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
