//! `dataplane-lab demo` (run by `cargo xtask demo`): a two-node lab carrying real traffic through
//! the fast path.
//!
//! Brings up examples/two-nodes.yaml as network namespaces, starts one agent per node, then shows
//! each step with the command it runs. Any failing step fails the demo; the lab
//! is torn down in every case (dropping it removes every namespace, process and pin).
//!
//! With `--datastore etcdv3` the cluster lives in a real etcd server started in the lab's fabric
//! namespace, on the nodes' gateway address: the file is exported into it with
//! `dataplane datastore export --to etcdv3`, and the agents run with `--datastore etcdv3`.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _};
use dataplane_lab::{etcd, Agent, ChildHandle, Lab, LabOptions, AGENT_READY};

/// Where the demo's agents read the cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DatastoreKind {
    /// The YAML file itself (`--datastore file:PATH`).
    #[default]
    File,
    /// A real etcd server in the lab, filled from the file with `dataplane datastore export`.
    Etcdv3,
}

/// Options of `dataplane-lab demo`.
#[derive(clap::Args)]
pub struct Options {
    /// The agent binary to run on every node.
    #[arg(long)]
    pub agent: PathBuf,
    /// The workspace root, where examples/ is.
    #[arg(long)]
    pub workspace: PathBuf,
    /// Where the agents read the cluster: the file, or an etcd server started in the lab.
    #[arg(long, value_enum, default_value_t = DatastoreKind::File)]
    pub datastore: DatastoreKind,
}

/// The example cluster, relative to the workspace root.
const EXAMPLE: &str = "examples/two-nodes.yaml";

/// The pods the demo sends traffic between: one on each node.
const CLIENT: &str = "default/web-1";
const SERVER: &str = "default/web-2";

/// How long an agent may take to program its node.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the demo.
pub fn run(options: &Options) -> anyhow::Result<()> {
    let bin = options.agent.clone();
    if !dataplane_lab::is_root() {
        bail!("the demo creates network namespaces and loads eBPF programs: run it as root");
    }
    let datastore = options.workspace.join(EXAMPLE);

    heading(&format!("The cluster: {EXAMPLE}"));
    let model = dataplane_lab::load_model(&datastore)?;
    for pool in &model.pools {
        println!(
            "  pool {} {} vxlanMode {:?} ipipMode {:?} natOutgoing {}",
            pool.name, pool.cidr, pool.vxlan_mode, pool.ipip_mode, pool.nat_outgoing
        );
    }
    for node in &model.nodes {
        let addr = node.addr.map_or_else(|| "(no address)".to_owned(), |a| a.to_string());
        println!("  node {} {addr}", node.name);
    }

    heading("Bringing up the lab (network namespaces, veth pairs, bridges)");
    let lab = Lab::up(&model, LabOptions::default())?;
    println!("  lab {} is up; its logs are in {}", lab.prefix(), lab.dir().display());
    let prefix = lab.prefix().to_owned();

    // Every handle the steps create (agents, servers, captures) is dropped before the lab.
    let result = steps(&lab, &bin, &datastore, options.datastore);

    heading("Tearing down");
    drop(lab);
    let leftovers = leftover_namespaces(&prefix);
    if leftovers.is_empty() {
        println!("  removed every namespace, process and pin of lab {prefix}");
    } else {
        println!("  namespaces left behind: {leftovers:?} (`cargo xtask lab down` removes them)");
    }

    match result {
        Ok(()) => {
            let from = match options.datastore {
                DatastoreKind::File => "the file datastore",
                DatastoreKind::Etcdv3 => "etcd",
            };
            println!("\ndemo passed: pod traffic crossed nodes through the eBPF fast path, programmed from {from}");
            Ok(())
        }
        Err(e) => Err(e.context("the demo failed (the lab has been torn down)")),
    }
}

/// The demo's steps, in a lab that is already up.
fn steps(lab: &Lab, bin: &Path, datastore: &Path, kind: DatastoreKind) -> anyhow::Result<()> {
    heading("The pods and their addresses");
    for pod in lab.pods() {
        println!("  {} on {}: {} (host side {}, MTU {})", pod.key, pod.node, pod.addr, pod.interface, pod.mtu);
        show(lab, &pod.netns, &["ip", "-4", "-br", "addr", "show", "dev", "eth0"])?;
        show(lab, &pod.netns, &["ip", "route"])?;
    }

    // Declared before the agents, so that it is dropped (stopped) after them.
    let mut etcd: Option<ChildHandle> = None;
    let mut agents: Vec<DemoAgent> = Vec::new();
    let nodes: Vec<String> = lab.nodes().map(|n| n.name.clone()).collect();
    match kind {
        DatastoreKind::File => {
            heading("Starting one agent per node");
            for node in &nodes {
                let agent = lab.start_agent(node, bin, datastore)?;
                println!("$ {} &", agent.command_line());
                agents.push(DemoAgent::File(agent));
            }
        }
        DatastoreKind::Etcdv3 => {
            let first = nodes.first().context("the lab has no node")?;
            let endpoint = format!("http://{}:2379", lab.node(first)?.gateway);
            etcd = Some(start_etcd(lab, &endpoint)?);
            heading(&format!("Exporting {EXAMPLE} into etcd in Calico's layout"));
            let bin_arg = bin.to_string_lossy();
            let file_arg = datastore.to_string_lossy();
            let export =
                [&*bin_arg, "datastore", "export", "--to", "etcdv3", &*file_arg, "--etcd-endpoints", &endpoint];
            show(lab, lab.fabric_netns(), &export).context("exporting the cluster into etcd")?;
            let etcdctl = etcd::find_binary("etcdctl")
                .context("etcdctl is not installed: `cargo xtask setup` installs Debian's etcd-client")?;
            let etcdctl = etcdctl.to_string_lossy();
            let endpoints = format!("--endpoints={endpoint}");
            let list = [&*etcdctl, &*endpoints, "get", "--prefix", "/calico", "--keys-only"];
            println!("$ {}", lab.command_line(lab.fabric_netns(), &list));
            let output = lab.exec(lab.fabric_netns(), &list)?;
            // etcdctl separates keys with empty lines.
            for key in String::from_utf8_lossy(&output.stdout).lines().filter(|line| !line.is_empty()) {
                println!("  {key}");
            }

            heading("Starting one agent per node on --datastore etcdv3");
            for node in &nodes {
                let netns = lab.node_netns(node)?.to_owned();
                let pin_path = lab.pin_path(node);
                let pin_arg = pin_path.to_string_lossy();
                let argv = [
                    &*bin_arg,
                    "run",
                    "--datastore",
                    "etcdv3",
                    "--etcd-endpoints",
                    &endpoint,
                    "--node",
                    node,
                    "--pin-path",
                    &pin_arg,
                ];
                println!("$ {} &", lab.command_line(&netns, &argv));
                let process = lab.spawn(&netns, &argv, &format!("agent-{node}"))?;
                agents.push(DemoAgent::Etcd { node: node.clone(), pin_path: pin_path.clone(), process });
            }
        }
    }
    for agent in &mut agents {
        agent.wait_ready(READY_TIMEOUT)?;
        println!("  agent of {} is ready (pins in {})", agent.node(), agent.pin_path().display());
    }

    let client = lab.pod(CLIENT)?;
    let server = lab.pod(SERVER)?;
    let server_addr = server.addr.to_string();
    let client_addr = client.addr.to_string();

    heading(&format!("ping {CLIENT} -> {SERVER} (node {} -> node {})", client.node, server.node));
    show(lab, &client.netns, &["ping", "-c", "3", "-W", "2", &server_addr]).with_context(|| agent_logs(&agents))?;

    heading(&format!("ping {SERVER} -> {CLIENT}"));
    show(lab, &server.netns, &["ping", "-c", "3", "-W", "2", &client_addr]).with_context(|| agent_logs(&agents))?;

    heading(&format!("iperf3: TCP for 5 s from {CLIENT} to {SERVER}"));
    let iperf_server = ["iperf3", "-s", "-1", "--forceflush"];
    println!("$ {} &", lab.command_line(&server.netns, &iperf_server));
    let mut iperf = lab.spawn(&server.netns, &iperf_server, "iperf3-server")?;
    iperf.wait_for_log("Server listening", Duration::from_secs(10))?;
    show(lab, &client.netns, &["iperf3", "-c", &server_addr, "-t", "5"]).with_context(|| agent_logs(&agents))?;
    drop(iperf);

    heading(&format!("{CLIENT}'s ARP entry for its gateway 169.254.1.1 (answered by the eBPF program)"));
    let neigh = show(lab, &client.netns, &["ip", "neigh", "show", "169.254.1.1"])?;
    if !neigh.contains("ee:ee:ee:ee:ee:ee") {
        bail!("{CLIENT} has no ARP entry 169.254.1.1 -> ee:ee:ee:ee:ee:ee:\n{neigh}");
    }

    let bridge = lab.fabric_bridge(&client.node)?;
    heading(&format!("VXLAN on the wire: tcpdump on fabric bridge {bridge} during a ping"));
    println!("$ {}", lab.command_line(lab.fabric_netns(), &["tcpdump", "-i", bridge, "-nn", "udp port 4789"]));
    let capture = lab.capture(lab.fabric_netns(), bridge, "udp port 4789")?;
    lab.exec(&client.netns, &["ping", "-c", "2", "-W", "2", &server_addr]).with_context(|| agent_logs(&agents))?;
    let text = capture.stop()?;
    for line in text.lines().take(8) {
        println!("  {line}");
    }
    if !text.contains("vni 4096") {
        bail!("the capture on {bridge} shows no VXLAN packet with VNI 4096:\n{text}");
    }

    let pin = lab.pin_path(&client.node).join("routes_v1");
    heading(&format!("The routes map of {} (pinned BTF map: named fields)", client.node));
    let pin_arg = pin.to_string_lossy();
    let dump = ["bpftool", "map", "dump", "pinned", &pin_arg];
    println!("$ {}", dataplane_lab::cmd::display(&dump));
    let output = dataplane_lab::cmd::run(&dump)?;
    // The raw dump is long: its first entries show the named fields.
    let raw = String::from_utf8_lossy(&output.stdout);
    print_indented(&raw.lines().take(24).collect::<Vec<_>>().join("\n"));
    println!("  ...");

    let pin_dir = lab.pin_path(&client.node).to_string_lossy().into_owned();
    let bin_arg = bin.to_string_lossy().into_owned();
    for (title, command) in [
        ("The same map as `dataplane routes` prints it", "routes"),
        ("Every decision and drop the programs counted (`dataplane stats`)", "stats"),
    ] {
        heading(&format!("{title} on {}", client.node));
        let argv = [bin_arg.as_str(), command, "--pin-path", pin_dir.as_str()];
        println!("$ {}", dataplane_lab::cmd::display(&argv));
        let output = dataplane_lab::cmd::run(&argv)?;
        print_indented(&String::from_utf8_lossy(&output.stdout));
    }

    heading("Stopping the agents (SIGTERM: the pinned programs keep forwarding)");
    for agent in &mut agents {
        agent.stop()?;
        println!("  agent of {} stopped", agent.node());
    }
    if let Some(mut etcd) = etcd.take() {
        etcd.terminate(Duration::from_secs(5))?;
        println!("  etcd stopped");
    }
    Ok(())
}

/// An agent of the demo: started by the lab on the file datastore, or by the demo on etcd.
enum DemoAgent {
    /// `dataplane run --datastore file:PATH`, started by [`Lab::start_agent`].
    File(Agent),
    /// `dataplane run --datastore etcdv3`.
    Etcd {
        /// The node it runs on.
        node: String,
        /// Its pinned maps.
        pin_path: PathBuf,
        /// The process.
        process: ChildHandle,
    },
}

impl DemoAgent {
    fn node(&self) -> &str {
        match self {
            DemoAgent::File(agent) => agent.node(),
            DemoAgent::Etcd { node, .. } => node,
        }
    }

    fn pin_path(&self) -> &Path {
        match self {
            DemoAgent::File(agent) => agent.pin_path(),
            DemoAgent::Etcd { pin_path, .. } => pin_path,
        }
    }

    fn log(&self) -> String {
        match self {
            DemoAgent::File(agent) => agent.log(),
            DemoAgent::Etcd { process, .. } => process.log(),
        }
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        match self {
            DemoAgent::File(agent) => agent.wait_ready(timeout),
            DemoAgent::Etcd { node, process, .. } => process
                .wait_for_log(AGENT_READY, timeout)
                .with_context(|| format!("agent for node {node} is not ready")),
        }
    }

    /// SIGTERM; fails if the agent needed SIGKILL or exited with an error.
    fn stop(&mut self) -> anyhow::Result<()> {
        match self {
            DemoAgent::File(agent) => agent.stop().map(|_| ()),
            DemoAgent::Etcd { node, process, .. } => {
                let (status, killed) = process.terminate(Duration::from_secs(10))?;
                if killed || !status.success() {
                    bail!(
                        "agent for node {node} did not stop cleanly on SIGTERM ({status}, killed: \
                         {killed})\nlog:\n{}",
                        process.log()
                    );
                }
                Ok(())
            }
        }
    }
}

/// Starts etcd in the fabric namespace listening on `endpoint` (the nodes' gateway, which both
/// nodes reach over their eth0), showing its command line, and waits until it answers.
fn start_etcd(lab: &Lab, endpoint: &str) -> anyhow::Result<ChildHandle> {
    heading(&format!("Starting etcd in the fabric namespace on {endpoint}"));
    let argv = etcd::command(lab, "demo", endpoint, &[])?;
    let shown: Vec<&str> = argv.iter().map(String::as_str).collect();
    println!("$ {} &", lab.command_line(lab.fabric_netns(), &shown));
    let (process, took) = etcd::start(lab, &argv, endpoint)?;
    println!("  etcd answers after {took:?}");
    Ok(process)
}

/// Prints a section heading.
fn heading(title: &str) {
    println!("\n==> {title}");
}

/// Prints a command, runs it in `netns`, prints its output and returns its stdout.
fn show(lab: &Lab, netns: &str, argv: &[&str]) -> anyhow::Result<String> {
    println!("$ {}", lab.command_line(netns, argv));
    let output = lab.exec(netns, argv)?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    print_indented(&stdout);
    Ok(stdout)
}

/// Prints text indented by two spaces.
fn print_indented(text: &str) {
    for line in text.lines() {
        println!("  {line}");
    }
}

/// The agents' logs, to explain a failed step.
fn agent_logs(agents: &[DemoAgent]) -> String {
    let mut text = String::from("agent logs:");
    for agent in agents {
        text.push_str(&format!("\n--- agent of {} ---\n{}", agent.node(), agent.log().trim_end()));
    }
    text
}

/// Namespaces of lab `prefix` that still exist.
fn leftover_namespaces(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(prefix))
        .collect()
}
