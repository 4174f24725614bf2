//! The Kubernetes datastore (`--datastore kubernetes`) against a recorded-response API server.
//!
//! Why not a real API server: there is none on the test machines, and running one needs etcd,
//! certificates and a control plane that do not fit in a test. So the API server here is
//! [`dataplane_tests::kube_api::KubeApi`], a small HTTP server that speaks the two requests the
//! agent makes the way the real one answers them: lists with a `resourceVersion`, and chunked
//! watch streams of ADDED/MODIFIED/DELETED/BOOKMARK events or an ERROR 410 when the version is
//! gone. It serves Calico-shaped objects written as `kubectl get -o json` prints them for a
//! Calico cluster equal to examples/two-nodes.yaml (CRDs of crd.projectcalico.org/v1, Nodes with
//! calico-node's annotations, Pods with kubelet's status and Calico CNI's annotations). The
//! client side is the real one: kube-rs through the agent's own datastore code.
//!
//! The Kubernetes datastore has no pod MACs (calico-node's WorkloadEndpoints in KDD carry none),
//! so the models are compared with the file's MACs left out.
//!
//! The last test runs real agents on the two-node lab, reading the server from the lab's fabric
//! namespace; it needs root and the agent binary. Pods ping each other across the nodes through
//! the fast path; it measures change -> "fast path programmed" and checks what was programmed
//! (routes, workloads) from the agents' own reports, and keeps traffic flowing through a 10 s
//! outage of the API server. As the datastore has no pod MACs, the agents learn each pod's MAC
//! from its veth: the maps hold it (`dataplane routes`, the pinned workloads map) and packets
//! captured in the pods are addressed to their own eth0.

use std::{
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _};
use dataplane::{
    datastore::{
        kubernetes::{self, KubernetesConfig, WatchThread},
        Snapshot,
    },
    model::Model,
};
use dataplane_lab::{ChildHandle, Lab, LabOptions, AGENT_READY};
use dataplane_tests::{
    agent_bin,
    kube_api::KubeApi,
    kube_example::{affinity, example_objects, node, pod, serve_example, AFFINITIES, BLOCKS, NODES, PODS, POOLS},
    watch::wait_for,
    workspace_root,
};
use serde_json::{json, Value};

/// The example cluster of the file datastore, served by the API server of the tests.
const EXAMPLE: &str = "examples/two-nodes.yaml";
/// How long a change may take to arrive as a snapshot (it takes milliseconds; the margin is for
/// a loaded machine).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an agent may take to program its fast path again after a change or a restart.
const PROGRAMMED_TIMEOUT: Duration = Duration::from_secs(20);

/// The example cluster as the file datastore reads it, without pod MACs (the Kubernetes
/// datastore has none).
fn example_model() -> anyhow::Result<Model> {
    let mut model = dataplane_lab::load_model(&workspace_root().join(EXAMPLE))?;
    for workload in &mut model.workloads {
        workload.mac = None;
    }
    Ok(model)
}

/// A watch of `api`, for all pods (`node` None) or one node's.
fn start_watch(api: &KubeApi, node: Option<&str>) -> anyhow::Result<WatchThread> {
    kubernetes::watch_thread(KubernetesConfig { kubeconfig: Some(api.kubeconfig()?), node: node.map(str::to_owned) })
}

/// The example cluster served, and a watch on it that has sent it.
fn example_served(test: &str, node: Option<&str>) -> anyhow::Result<(KubeApi, WatchThread, Model)> {
    let api = KubeApi::start_local(test)?;
    serve_example(&api);
    let mut model = example_model()?;
    if let Some(node) = node {
        model.workloads.retain(|w| w.node == node);
    }
    let watch = start_watch(&api, node)?;
    let (snapshot, took) =
        wait_for(&watch, "the example cluster", CHANGE_TIMEOUT, |s| s.model.sorted() == model.sorted())?;
    eprintln!("{test}: first snapshot {took:?} after the watch started");
    ensure!(snapshot.problems.is_empty(), "problems: {:#?}", snapshot.problems);
    Ok((api, watch, model))
}

fn has_block(snapshot: &Snapshot, cidr: &str, node: &str) -> bool {
    snapshot.model.blocks.iter().any(|b| b.cidr.to_string() == cidr && b.node == node && b.routes())
}

/// The request lines (method and URL) of `kind` (e.g. `/api/v1/pods`) that were watches.
fn watches_of(api: &KubeApi, kind: &str) -> Vec<String> {
    api.requests().into_iter().filter(|r| r.contains(&format!("{kind}?")) && r.contains("watch=true")).collect()
}

fn lists_of(api: &KubeApi, kind: &str) -> Vec<String> {
    api.requests().into_iter().filter(|r| r.contains(&format!("{kind}?")) && !r.contains("watch=true")).collect()
}

#[test]
fn the_example_cluster_reads_the_same_from_the_kubernetes_api_as_from_the_file() -> anyhow::Result<()> {
    let (api, _watch, model) = example_served("reads_the_example", None)?;
    // The plan is the same as from the file: the dataplane cannot tell the datastores apart.
    let (snapshot_model, file_model) = (model.sorted(), example_model()?.sorted());
    assert_eq!(snapshot_model, file_model);
    for node in ["node-1", "node-2"] {
        let (from_api, _) = dataplane::plan::compute(&snapshot_model, node)?;
        let (from_file, _) = dataplane::plan::compute(&file_model, node)?;
        assert_eq!(from_api, from_file, "{node}'s plan");
    }
    // Every kind listed once, then watched from the list's resourceVersion.
    let deadline = Instant::now() + CHANGE_TIMEOUT;
    while api.open_watches() < 5 {
        ensure!(Instant::now() < deadline, "the watches did not open: {:#?}", api.requests());
        thread::sleep(Duration::from_millis(10));
    }
    for kind in [NODES, PODS, POOLS, AFFINITIES, BLOCKS] {
        ensure!(lists_of(&api, kind).len() == 1, "lists of {kind}: {:?}", api.requests());
        let watches = watches_of(&api, kind);
        ensure!(watches.len() == 1 && watches[0].contains("resourceVersion=112"), "watches of {kind}: {watches:?}");
    }

    // An agent reads only its own node's pods (field selector), as calico-node does.
    let (api, _watch, model) = example_served("reads_one_node", Some("node-2"))?;
    ensure!(model.workloads.len() == 1, "node-2 has one workload: {:#?}", model.workloads);
    let pods = lists_of(&api, PODS);
    ensure!(pods.iter().all(|r| r.contains("fieldSelector=spec.nodeName%3Dnode-2")), "{pods:?}");
    Ok(())
}

#[test]
fn changes_arrive_as_new_snapshots() -> anyhow::Result<()> {
    let (api, watch, _) = example_served("changes", Some("node-1"))?;
    let mut timings = Vec::new();

    // node-2 claims a second block.
    let started = Instant::now();
    api.apply(AFFINITIES, affinity("node-2", "10.244.2.64/26"));
    let (_, took) = wait_for(&watch, "the new block", CHANGE_TIMEOUT, |s| has_block(s, "10.244.2.64/26", "node-2"))?;
    timings.push(("block affinity added", took.max(started.elapsed())));

    // node-2 moves to a new address.
    let started = Instant::now();
    api.apply(NODES, node("node-2", "10.100.0.22", "10.244.2.0", "66:d0:00:00:00:02"));
    wait_for(&watch, "node-2's new address", CHANGE_TIMEOUT, |s| {
        s.model.nodes.iter().any(|n| n.name == "node-2" && n.addr == Some("10.100.0.22/24".parse().expect("net")))
    })?;
    timings.push(("node address changed", started.elapsed()));

    // A pod starts on node-1: first with Calico CNI's annotation only, then kubelet's status.
    let started = Instant::now();
    let mut web3 = pod("default", "web-3", "web", "node-1", "10.100.0.11", "10.244.1.4");
    web3["status"] = json!({"phase": "Pending"});
    api.apply(PODS, web3);
    let (snapshot, _) = wait_for(&watch, "web-3", CHANGE_TIMEOUT, |s| {
        s.model.workloads.iter().any(|w| w.full_name() == "default/node--1-k8s-web--3-eth0")
    })?;
    timings.push(("pod appeared", started.elapsed()));
    let web3 = snapshot
        .model
        .workloads
        .iter()
        .find(|w| w.full_name() == "default/node--1-k8s-web--3-eth0")
        .context("web-3")?;
    // `printf %s default.web-3 | sha1sum`: 4448cbddedf...
    assert_eq!(web3.interface, "cali4448cbddedf");
    assert_eq!(web3.addrs, vec!["10.244.1.4/32".parse()?]);
    // A pod on another node is not this agent's (the server filters it out).
    api.apply(PODS, pod("default", "web-4", "web", "node-2", "10.100.0.12", "10.244.2.4"));

    // The pod goes.
    let started = Instant::now();
    api.delete(PODS, "default/web-3");
    let (snapshot, _) = wait_for(&watch, "web-3 gone", CHANGE_TIMEOUT, |s| {
        !s.model.workloads.iter().any(|w| w.name.contains("web--3"))
    })?;
    timings.push(("pod deleted", started.elapsed()));
    ensure!(
        snapshot.model.workloads.iter().all(|w| w.node == "node-1"),
        "node-1's agent sees another node's pod: {:#?}",
        snapshot.model.workloads
    );
    for (what, took) in timings {
        eprintln!("API server change -> snapshot: {what}: {took:?}");
    }
    Ok(())
}

#[test]
fn a_broken_watch_resumes_and_a_410_forces_a_list() -> anyhow::Result<()> {
    let (api, watch, _) = example_served("resumes", None)?;
    let change = api.apply(AFFINITIES, affinity("node-2", "10.244.2.64/26"));
    wait_for(&watch, "the first change", CHANGE_TIMEOUT, |s| has_block(s, "10.244.2.64/26", "node-2"))?;

    // Cut every watch mid-stream: they come back from the last resourceVersion they saw, without
    // listing again.
    let lists_before = api.requests().iter().filter(|r| !r.contains("watch=true")).count();
    api.break_watches();
    let deadline = Instant::now() + CHANGE_TIMEOUT;
    while watches_of(&api, AFFINITIES).len() < 2 || api.open_watches() < 5 {
        ensure!(Instant::now() < deadline, "the watches did not come back: {:#?}", api.requests());
        thread::sleep(Duration::from_millis(10));
    }
    let resumed = watches_of(&api, AFFINITIES);
    ensure!(
        resumed.last().is_some_and(|r| r.contains(&format!("resourceVersion={change}"))),
        "the block affinity watch did not resume from {change}: {resumed:?}"
    );
    let lists_after = api.requests().iter().filter(|r| !r.contains("watch=true")).count();
    ensure!(lists_after == lists_before, "a broken watch made the agent list again: {:#?}", api.requests());
    let started = Instant::now();
    api.apply(AFFINITIES, affinity("node-2", "10.244.2.128/26"));
    wait_for(&watch, "a change after the resume", CHANGE_TIMEOUT, |s| has_block(s, "10.244.2.128/26", "node-2"))?;
    eprintln!("change after a resumed watch -> snapshot {:?}", started.elapsed());

    // A change the watch does not see in time, then the history is compacted and the watch
    // cut: its resourceVersion is gone (410), so the agent lists again and loses nothing.
    // (Watches that end within a second, twice in a row, are opened again only after 200 ms, so
    // that a server ending every watch at once is not hammered: let the resumed ones age.)
    thread::sleep(Duration::from_millis(1100));
    api.hold_watches(true);
    api.delete(AFFINITIES, "node-2-10-244-2-64-26");
    api.compact();
    api.hold_watches(false);
    let started = Instant::now();
    api.break_watches();
    let (snapshot, _) = wait_for(&watch, "the change missed by the watch", CHANGE_TIMEOUT, |s| {
        !has_block(s, "10.244.2.64/26", "node-2")
    })?;
    eprintln!("410 Gone -> list -> snapshot {:?}", started.elapsed());
    ensure!(has_block(&snapshot, "10.244.2.128/26", "node-2") && has_block(&snapshot, "10.244.1.0/26", "node-1"));
    ensure!(lists_of(&api, AFFINITIES).len() >= 2, "no list after the 410: {:#?}", api.requests());
    Ok(())
}

#[test]
fn broken_objects_are_reported_and_the_rest_is_applied() -> anyhow::Result<()> {
    let (api, watch, model) = example_served("broken", None)?;
    let mut bad_block = affinity("node-2", "10.244.2.64/26");
    bad_block["spec"]["cidr"] = json!("10.244.2.300/26");
    api.apply(AFFINITIES, bad_block);
    api.apply(NODES, node("node-2", "10.100.0.12", "10.244.2.0", "66:d0:00:00:00"));
    api.apply(AFFINITIES, affinity("node-1", "10.244.1.64/26"));
    let (snapshot, _) = wait_for(&watch, "both problems and the good block", CHANGE_TIMEOUT, |s| {
        s.problems.len() == 2 && has_block(s, "10.244.1.64/26", "node-1")
    })?;
    let mut named: Vec<(String, String, String)> =
        snapshot.problems.iter().map(|p| (p.kind.clone(), p.name.clone(), p.field.clone())).collect();
    named.sort();
    assert_eq!(
        named,
        vec![
            ("BlockAffinity".into(), "node-2-10-244-2-64-26".into(), "spec.cidr".into()),
            ("Node".into(), "node-2".into(), "metadata.annotations[\"projectcalico.org/VXLANTunnelMACAddr\"]".into()),
        ]
    );
    for problem in &snapshot.problems {
        eprintln!("reported: {problem}");
    }
    // The rest is applied: node-1, the pool, the blocks and the pods are all there.
    assert!(snapshot.model.nodes.iter().any(|n| n.name == "node-1"));
    assert_eq!(snapshot.model.pools, model.pools);
    assert_eq!(snapshot.model.workloads.len(), model.workloads.len());
    Ok(())
}

#[test]
fn the_last_state_stays_while_the_api_server_is_gone() -> anyhow::Result<()> {
    let (mut api, watch, _) = example_served("outage", Some("node-1"))?;
    api.stop();
    // Changed while the agent cannot see it (the store outlives the server).
    api.apply(AFFINITIES, affinity("node-2", "10.244.2.64/26"));
    api.delete(PODS, "default/cache-1");
    // Nothing is sent while the server is away: the last good snapshot stays.
    ensure!(watch.recv_timeout(Duration::from_secs(10)).is_none(), "a snapshot came without an API server");
    let restarted = Instant::now();
    api.start()?;
    let (snapshot, took) = wait_for(&watch, "the resync after the outage", Duration::from_secs(20), |s| {
        has_block(s, "10.244.2.64/26", "node-2")
    })?;
    eprintln!("API server back -> full resync snapshot {took:?} ({:?} after the restart)", restarted.elapsed());
    ensure!(
        !snapshot.model.workloads.iter().any(|w| w.name.contains("cache")),
        "the pod deleted during the outage is still there"
    );
    // Every kind was listed again after the outage.
    ensure!(lists_of(&api, POOLS).len() >= 2, "{:#?}", api.requests());
    Ok(())
}

/// `dataplane ARGS` (the agent binary); its stdout, or an error with its stderr.
fn dataplane(args: &[&str]) -> anyhow::Result<String> {
    let bin = agent_bin();
    ensure!(bin.exists(), "agent binary {} does not exist: build it with `cargo build -p dataplane`", bin.display());
    let output = std::process::Command::new(&bin).args(args).output()?;
    ensure!(
        output.status.success(),
        "dataplane {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

#[test]
fn ipam_show_reads_the_kubernetes_api_as_it_reads_the_file() -> anyhow::Result<()> {
    let api = KubeApi::start_local("ipam_show")?;
    serve_example(&api);
    let kubeconfig = api.kubeconfig()?;
    let kubeconfig = kubeconfig.to_string_lossy();
    let args =
        ["ipam", "show", "--show-blocks", "-o", "json", "--datastore", "kubernetes", "--kubeconfig", &kubeconfig];
    let from_api: Value = serde_json::from_str(&dataplane(&args)?)?;
    let file = format!("file:{}", workspace_root().join(EXAMPLE).display());
    let from_file: Value =
        serde_json::from_str(&dataplane(&["ipam", "show", "--show-blocks", "-o", "json", "--datastore", &file])?)?;
    assert_eq!(from_api, from_file);
    // Three pods and two VXLAN tunnel addresses, in two blocks: every pod of the cluster is read.
    assert_eq!(from_api["pools"][0]["in_use"], 5, "{from_api:#}");
    assert_eq!(from_api["pools"][0]["blocks"].as_array().map(Vec::len), Some(2), "{from_api:#}");
    ensure!(lists_of(&api, PODS).iter().all(|r| !r.contains("fieldSelector")), "{:?}", api.requests());
    // Unreachable: the command says so and names the setting.
    drop(api);
    let output = std::process::Command::new(agent_bin()).args(args).output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(!output.status.success() && stderr.contains("KUBECONFIG"), "{stderr}");
    Ok(())
}

#[test]
fn run_refuses_a_kubeconfig_it_cannot_read() -> anyhow::Result<()> {
    let bin = agent_bin();
    ensure!(bin.exists(), "agent binary {} does not exist: build it with `cargo build -p dataplane`", bin.display());
    let args = ["run", "--datastore", "kubernetes", "--kubeconfig", "/nonexistent/kubeconfig", "--node", "node-1"];
    let output = std::process::Command::new(&bin).args(args).output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(!output.status.success(), "the agent started without a kubeconfig: {stderr}");
    ensure!(stderr.contains("/nonexistent/kubeconfig") && stderr.contains("KUBECONFIG"), "{stderr}");
    Ok(())
}

/// Waits for `needle` in the agent's log.
fn wait_log(agent: &ChildHandle, needle: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !agent.log().contains(needle) {
        ensure!(Instant::now() < deadline, "{} never said {needle:?}:\n{}", agent.name(), agent.log());
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The MAC of `pod`'s eth0, as `ip` prints it (`0a:58:0a:f4:01:02`).
fn eth0_mac(lab: &Lab, pod: &dataplane_lab::LabPod) -> anyhow::Result<String> {
    let output = lab.exec(&pod.netns, &["ip", "-j", "link", "show", "eth0"])?;
    let links: Value = serde_json::from_slice(&output.stdout)?;
    links[0]["address"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no address for eth0 of {}: {links}", pod.key))
}

#[test]
fn agents_run_from_the_kubernetes_api_on_the_two_node_lab() -> anyhow::Result<()> {
    let test = "agents_run_from_the_kubernetes_api_on_the_two_node_lab";
    if dataplane_tests::skip_unless_root(test) {
        return Ok(());
    }
    let bin = agent_bin();
    ensure!(bin.exists(), "agent binary {} does not exist: build it with `cargo build -p dataplane`", bin.display());
    let lab = Lab::up(&dataplane_lab::load_model(&workspace_root().join(EXAMPLE))?, LabOptions::default())?;
    // The API server listens in the fabric namespace on the gateway of the nodes' subnet: both
    // agents reach it from their node's namespace over eth0, as calico-node reaches the API.
    let gateway = lab.node("node-1")?.gateway;
    let fabric = std::path::PathBuf::from(format!("/run/netns/{}", lab.fabric_netns()));
    let mut api = KubeApi::start_at(lab.prefix(), SocketAddr::new(gateway.into(), 6443), Some(fabric))?;
    serve_example(&api);
    let kubeconfig = api.kubeconfig()?;
    let (bin_text, kubeconfig_text) = (bin.to_string_lossy().into_owned(), kubeconfig.to_string_lossy().into_owned());
    let mut agents = Vec::new();
    for node in ["node-1", "node-2"] {
        let netns = lab.node_netns(node)?.to_owned();
        let pin = lab.pin_path(node);
        let pin = pin.to_string_lossy();
        let argv = [
            &*bin_text,
            "run",
            "--datastore",
            "kubernetes",
            "--kubeconfig",
            &kubeconfig_text,
            "--node",
            node,
            "--pin-path",
            &pin,
        ];
        agents.push(lab.spawn(&netns, &argv, &format!("agent-{node}"))?);
    }
    for agent in &mut agents {
        agent.wait_for_log(AGENT_READY, Duration::from_secs(60))?;
    }
    for agent in &agents {
        wait_log(agent, "connected to the Kubernetes API", Duration::from_secs(5))?;
    }
    let (node1, node2) = (&agents[0], &agents[1]);
    // Each node delivers to its own pods and routes the other's block.
    ensure!(
        node1.programmed_field("workloads", usize::MAX)? == 2 && node2.programmed_field("workloads", usize::MAX)? == 1,
        "{}\n{}",
        node1.log(),
        node2.log()
    );
    // `dataplane check` reads the same cluster from the API server and finds this node healthy.
    for node in ["node-1", "node-2"] {
        let pin = lab.pin_path(node);
        let argv = [
            &*bin_text,
            "check",
            "--datastore",
            "kubernetes",
            "--kubeconfig",
            &kubeconfig_text,
            "--node",
            node,
            "--pin-path",
            &*pin.to_string_lossy(),
        ];
        let output = lab.exec_status(lab.node_netns(node)?, &argv)?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        ensure!(
            output.status.success(),
            "dataplane check on {node} failed:\n{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        // It compared the learned MACs, and says which.
        for pod in lab.pods().filter(|pod| pod.node == node) {
            let expected = format!("{} {}", pod.endpoint, eth0_mac(&lab, pod)?);
            ensure!(stdout.contains(&expected), "dataplane check on {node} does not name {expected:?}:\n{stdout}");
        }
    }
    let mut timings = Vec::new();
    let web1 = lab.pod("default/web-1")?.clone();
    let web2 = lab.pod("default/web-2")?.clone();
    for (from, to) in [(&web1, &web2), (&web2, &web1)] {
        ensure!(
            lab.ping_ok(from, to.addr, 5)?,
            "{} cannot ping {}\n{}\n{}",
            from.key,
            to.key,
            node1.log(),
            node2.log()
        );
    }

    // The Kubernetes datastore has no pod MACs: each agent learned every pod's from its veth.
    // The routes and workloads maps hold the pod's own eth0 MAC, and the fast path's packets
    // arrive in the pod addressed to it (not to 00:00:00:00:00:00).
    for pod in lab.pods() {
        let mac = eth0_mac(&lab, pod)?;
        let pin = lab.pin_path(&pod.node);
        let routes: Value =
            serde_json::from_str(&dataplane(&["routes", "-o", "json", "--pin-path", &pin.to_string_lossy()])?)?;
        let prefix = format!("{}/32", pod.addr);
        let route = routes
            .as_array()
            .and_then(|rows| rows.iter().find(|row| row["prefix"] == prefix.as_str()))
            .with_context(|| format!("`dataplane routes` on {} has no {prefix}: {routes}", pod.node))?;
        ensure!(
            route["mac"] == mac.as_str(),
            "{}: the route to {prefix} has mac {}, but the pod's eth0 is {mac}",
            pod.node,
            route["mac"]
        );
        let workloads = dataplane::pinned::PinnedMaps::at(&pin).read_workloads()?;
        let entry = workloads
            .values()
            .find(|w| std::net::Ipv4Addr::from(w.addr) == pod.addr)
            .with_context(|| format!("the workloads map of {} has no entry for {}", pod.node, pod.key))?;
        ensure!(
            dataplane::model::MacAddr(entry.mac).to_string() == mac,
            "{}: the workloads map holds mac {} for {}, but its eth0 is {mac}",
            pod.node,
            dataplane::model::MacAddr(entry.mac),
            pod.key
        );
    }
    // Across the nodes (from_uplink delivers) and within node-1 (from_workload delivers).
    let cache1 = lab.pod("default/cache-1")?.clone();
    for (from, to) in [(&web2, &web1), (&web1, &web2), (&cache1, &web1)] {
        let mac = eth0_mac(&lab, to)?;
        let capture = lab.capture(&to.netns, "eth0", &format!("icmp and dst host {}", to.addr))?;
        let pcap = capture.pcap_path().to_string_lossy().into_owned();
        let pinged = lab.ping_ok(from, to.addr, 3);
        capture.stop()?;
        ensure!(pinged?, "{} cannot ping {} during the capture", from.key, to.key);
        // -e prints the link-level header: "src > dst, ethertype IPv4 ...".
        let output = std::process::Command::new("tcpdump").args(["-r", &pcap, "-nn", "-e"]).output()?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let requests: Vec<&str> = text.lines().filter(|line| line.contains("ICMP echo request")).collect();
        ensure!(!requests.is_empty(), "no echo request from {} captured in {}:\n{text}", from.key, to.key);
        for line in &requests {
            ensure!(
                line.contains(&format!("> {mac}, ethertype IPv4")),
                "{} received a packet not addressed to its eth0 MAC {mac}:\n{text}",
                to.key
            );
        }
    }

    // node-2 claims a second block: node-1 routes it.
    let routes = node1.programmed_field("routes", usize::MAX)?;
    let started = Instant::now();
    api.apply(AFFINITIES, affinity("node-2", "10.244.2.64/26"));
    timings.push(("block affinity added", node1.wait_programmed_field("routes", routes + 1, started, CHANGE_TIMEOUT)?));
    // ...and gives it back.
    let started = Instant::now();
    api.delete(AFFINITIES, "node-2-10-244-2-64-26");
    timings.push(("block affinity deleted", node1.wait_programmed_field("routes", routes, started, CHANGE_TIMEOUT)?));

    // web-2 goes and comes back: node-2 stops and starts delivering to it.
    let web2_pod = example_objects().into_iter().find(|(_, o)| o["metadata"]["name"] == "web-2").context("web-2")?.1;
    let started = Instant::now();
    api.delete(PODS, "default/web-2");
    timings.push(("pod deleted", node2.wait_programmed_field("workloads", 0, started, CHANGE_TIMEOUT)?));
    let started = Instant::now();
    api.apply(PODS, web2_pod);
    timings.push(("pod added", node2.wait_programmed_field("workloads", 1, started, CHANGE_TIMEOUT)?));
    ensure!(lab.ping_ok(&web1, web2.addr, 5)?, "web-1 cannot reach web-2 after its pod came back\n{}", node2.log());

    // node-2's VTEP MAC changes: node-1 reprograms its route to node-2's block.
    let before = node1.programmed();
    let started = Instant::now();
    api.apply(NODES, node("node-2", "10.100.0.12", "10.244.2.0", "66:d0:00:00:00:22"));
    timings.push(("node VTEP MAC changed", node1.wait_programmed(before, started, PROGRAMMED_TIMEOUT)?));
    for (what, took) in &timings {
        eprintln!("API server change -> fast path programmed: {what}: {took:?}");
    }

    // The API server goes away for 10 s: the agents keep the fast path and say so; back: they
    // list everything again and resync.
    let before: Vec<usize> = agents.iter().map(ChildHandle::programmed).collect();
    api.stop();
    // Changed during the outage: seen only through the resync.
    api.apply(NODES, node("node-2", "10.100.0.12", "10.244.2.0", "66:d0:00:00:00:02"));
    for agent in &agents {
        wait_log(agent, "lost the connection to the Kubernetes API", Duration::from_secs(5))?;
    }
    thread::sleep(Duration::from_secs(10));
    for agent in &agents {
        wait_log(agent, "the Kubernetes API is still unreachable", Duration::from_secs(1))?;
        let routes = agent.programmed_field("routes", usize::MAX)?;
        ensure!(routes > 0, "{} dropped its routes during the outage", agent.name());
    }
    let restarted = Instant::now();
    api.start()?;
    for (agent, before) in agents.iter().zip(before) {
        wait_log(agent, "reconnected to the Kubernetes API", Duration::from_secs(20))?;
        let took = agent.wait_programmed(before, restarted, PROGRAMMED_TIMEOUT)?;
        eprintln!("{} resynced {took:?} after the API server came back", agent.name());
    }
    ensure!(
        node1.programmed_field("workloads", usize::MAX)? == 2 && node2.programmed_field("workloads", usize::MAX)? == 1
    );
    for (from, to) in [(&web1, &web2), (&web2, &web1)] {
        ensure!(lab.ping_ok(from, to.addr, 5)?, "{} cannot ping {} after the resync", from.key, to.key);
    }
    drop(agents);
    drop(api);
    Ok(())
}
