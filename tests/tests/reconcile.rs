//! The fast path follows the datastore: the YAML changes under running agents (BPF mode), and
//! after each change the maps, the kernel routes the agent owns and the traffic are what the new
//! YAML says, with nothing stale left behind.
//!
//! The lab has three nodes on one subnet (10.100.0.0/24) and two pools: 10.244.0.0/16 (blocks
//! 10.244.N.0/26, pods web-N 10.244.N.2) and 10.245.0.0/16 (block 10.245.2.0/26 on node-2, pod
//! db-2 10.245.2.2). The datastore starts without node-3, then changes, one step at a time:
//!
//! 1. node-3 and its block (and web-3) are added: web-1 reaches web-3;
//! 2. block 10.244.2.0/26 moves from node-2 to node-3 (web-2's endpoint goes with it): the route
//!    follows the block, and web-1 no longer reaches web-2, which still sits on node-2;
//! 3. pool 10.245.0.0/16 is removed: its block's route goes, web-1 no longer reaches db-2;
//! 4. pool 10.244.0.0/16 goes from VXLAN to IPIP, then 5. to Never (plain routing): web-1 keeps
//!    reaching web-3, and node-1 counts encapsulations of the new kind.
//!
//! After each step node-1's routes map (`dataplane routes -o json`) must equal the routes the YAML
//! implies (written out independently here, not by the planner), and its kernel routes of protocol
//! 200 the blocks it implies. The time from writing the file to each agent's next "fast path
//! programmed" is printed (never asserted; it includes up to a second of the file datastore's
//! polling), with the reconcile's own time, as is the loss of a ping that runs from web-1 to web-3
//! across steps 2 to 5.
//!
//! The lab is torn down when the test ends, also on failure. Without root the test prints why it
//! is skipped and passes.

use dataplane_tests::agent_bin;
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _};
use dataplane::backend::host_routes::RTPROT_DATAPLANE;
use dataplane_lab::{AgentOptions, Cluster, Lab, LabPod};
use serde_json::Value;

/// How long an agent may take to reconcile after a change.
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(20);
/// What an agent logs after each reconcile of the fast path.
const PROGRAMMED: &str = "fast path programmed";

/// How pool 10.244.0.0/16 crosses between nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encap {
    Vxlan,
    Ipip,
    Never,
}

impl Encap {
    /// The `encap` of a remote block in `dataplane routes -o json`.
    fn route_encap(self) -> &'static str {
        match self {
            Encap::Vxlan => "vxlan",
            Encap::Ipip => "ipip",
            Encap::Never => "none",
        }
    }

    /// node-1's counter of packets sent to another node this way.
    fn counter(self) -> &'static str {
        match self {
            Encap::Vxlan => "encap_vxlan",
            Encap::Ipip => "encap_ipip",
            Encap::Never => "routed_plain",
        }
    }
}

/// One state of the datastore.
#[derive(Clone, Copy, Debug)]
struct State {
    /// node-3, its block 10.244.3.0/26 and web-3 exist.
    node_3: bool,
    /// The node block 10.244.2.0/26 is affine to.
    block_2_node: u8,
    /// Pool 10.245.0.0/16 exists.
    pool_db: bool,
    /// How pool 10.244.0.0/16 crosses between nodes (pool 10.245.0.0/16 always uses VXLAN).
    encap: Encap,
}

/// The node's address.
fn node_addr(node: u8) -> String {
    format!("10.100.0.1{node}")
}

/// Calico's host-side interface name of pod `default/<pod>`: "cali" + sha1("default.<pod>")[..11].
fn interface(pod: &str) -> &'static str {
    match pod {
        "web-1" => "cali0761ccbeace",
        "web-2" => "cali9fb0db7f13e",
        "web-3" => "cali4448cbddedf",
        "db-2" => "cali7271f52cfa2",
        _ => "unknown",
    }
}

fn pool_yaml(name: &str, cidr: &str, encap: Encap, nat_outgoing: bool) -> String {
    let vxlan = if encap == Encap::Vxlan { "Always" } else { "Never" };
    let ipip = if encap == Encap::Ipip { "Always" } else { "Never" };
    format!(
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: {name}\nspec:\n  blockSize: 26\n  \
         cidr: {cidr}\n  ipipMode: {ipip}\n  natOutgoing: {nat_outgoing}\n  nodeSelector: all()\n  vxlanMode: {vxlan}\n"
    )
}

/// A Node as calico-node leaves it for `encap`: a VXLAN tunnel address and MAC, or an IPIP
/// tunnel address, from its first block.
fn node_yaml(node: u8, encap: Encap) -> String {
    let addr = node_addr(node);
    let mut yaml = format!(
        "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: node-{node}\nspec:\n  addresses:\n  - \
         address: {addr}/24\n    type: CalicoNodeIP\n  bgp:\n    ipv4Address: {addr}/24\n"
    );
    match encap {
        Encap::Ipip => writeln!(yaml, "    ipv4IPIPTunnelAddr: 10.244.{node}.0").unwrap_or(()),
        Encap::Vxlan => {
            write!(yaml, "  ipv4VXLANTunnelAddr: 10.244.{node}.0\n  vxlanTunnelMACAddr: 66:d0:00:00:00:0{node}\n")
                .unwrap_or(())
        }
        Encap::Never => {}
    }
    yaml
}

fn block_yaml(node: u8, cidr: &str) -> String {
    let name = format!("node-{node}-{}", cidr.replace(['.', '/'], "-"));
    format!(
        "apiVersion: crd.projectcalico.org/v1\nkind: BlockAffinity\nmetadata:\n  name: {name}\nspec:\n  cidr: {cidr}\n  \
         deleted: \"false\"\n  node: node-{node}\n  state: confirmed\n"
    )
}

fn workload_yaml(node: u8, pod: &str, addr: &str) -> String {
    let octets: Vec<u8> = addr.split('.').filter_map(|o| o.parse().ok()).collect();
    let mac: String = octets.iter().map(|o| format!(":{o:02x}")).collect();
    format!(
        "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata:\n  name: node--{node}-k8s-{}-eth0\n  \
         namespace: default\nspec:\n  endpoint: eth0\n  interfaceName: {}\n  ipNetworks:\n  - {addr}/32\n  mac: \
         0a:58{mac}\n  node: node-{node}\n  orchestrator: k8s\n  pod: {pod}\n",
        pod.replace('-', "--"),
        interface(pod)
    )
}

/// The datastore YAML of `state`.
fn cluster_yaml(state: &State) -> String {
    let mut documents = vec![pool_yaml("default-ipv4-ippool", "10.244.0.0/16", state.encap, true)];
    if state.pool_db {
        documents.push(pool_yaml("db-ipv4-ippool", "10.245.0.0/16", Encap::Vxlan, false));
    }
    // VXLAN for the db pool needs every node's VTEP, whatever the other pool uses.
    let node_encap = if state.pool_db { Encap::Vxlan } else { state.encap };
    let nodes: &[u8] = if state.node_3 { &[1, 2, 3] } else { &[1, 2] };
    for node in nodes {
        documents.push(node_yaml(*node, node_encap));
    }
    documents.push(block_yaml(1, "10.244.1.0/26"));
    documents.push(workload_yaml(1, "web-1", "10.244.1.2"));
    documents.push(block_yaml(state.block_2_node, "10.244.2.0/26"));
    if state.block_2_node == 2 {
        documents.push(workload_yaml(2, "web-2", "10.244.2.2"));
    }
    // The db block and its pod stay when the pool goes (IPAM garbage collection is not ours).
    documents.push(block_yaml(2, "10.245.2.0/26"));
    documents.push(workload_yaml(2, "db-2", "10.245.2.2"));
    if state.node_3 {
        documents.push(block_yaml(3, "10.244.3.0/26"));
        documents.push(workload_yaml(3, "web-3", "10.244.3.2"));
    }
    format!("---\n{}", documents.join("---\n"))
}

/// node-1's routes map as `state` implies it: (prefix, kind, encap, node address).
fn expected_routes(state: &State) -> BTreeSet<(String, String, String, String)> {
    let row = |prefix: &str, kind: &str, encap: &str, node: &str| {
        (prefix.to_owned(), kind.to_owned(), encap.to_owned(), node.to_owned())
    };
    let mut rows = BTreeSet::new();
    rows.insert(row("10.244.0.0/16", "pool", "", ""));
    rows.insert(row("10.244.1.0/26", "local block (blackhole)", "", ""));
    rows.insert(row("10.244.1.2/32", "local workload", "", ""));
    rows.insert(row("10.244.2.0/26", "remote block", state.encap.route_encap(), &node_addr(state.block_2_node)));
    if state.node_3 {
        rows.insert(row("10.244.3.0/26", "remote block", state.encap.route_encap(), &node_addr(3)));
    }
    if state.pool_db {
        rows.insert(row("10.245.0.0/16", "pool", "", ""));
        rows.insert(row("10.245.2.0/26", "remote block", "vxlan", &node_addr(2)));
    }
    rows
}

/// node-1's kernel routes of protocol 200 as `state` implies them: (prefix, type, gateway).
fn expected_kernel_routes(state: &State) -> BTreeSet<(String, String, String)> {
    let mut routes = BTreeSet::new();
    routes.insert(("10.244.1.0/26".to_owned(), "blackhole".to_owned(), String::new()));
    routes.insert(("10.244.2.0/26".to_owned(), "unicast".to_owned(), node_addr(state.block_2_node)));
    if state.node_3 {
        routes.insert(("10.244.3.0/26".to_owned(), "unicast".to_owned(), node_addr(3)));
    }
    if state.pool_db {
        routes.insert(("10.245.2.0/26".to_owned(), "unicast".to_owned(), node_addr(2)));
    }
    routes
}

/// Per agent: from writing a change to its "fast path programmed", and the reconcile's own
/// `elapsed_ms`.
type Timings = BTreeMap<String, (Duration, Option<u64>)>;

fn programmed(cluster: &Cluster, node: &str) -> usize {
    cluster.agent(node).map_or(0, |a| a.log().matches(PROGRAMMED).count())
}

/// The `elapsed_ms` of `node`'s `index`th reconcile (counting from 0): the reconcile's own time.
fn reconcile_ms(cluster: &Cluster, node: &str, index: usize) -> Option<u64> {
    let log = cluster.agent(node)?.log();
    let line = log.lines().filter(|l| l.contains(PROGRAMMED)).nth(index)?.to_owned();
    line.split_whitespace().find_map(|w| w.strip_prefix("elapsed_ms=")?.parse().ok())
}

/// Writes `state` (atomically: the agents poll the file) and waits until every running agent
/// has reconciled once more. Returns, per agent, the time from the write to its "fast path
/// programmed" (which includes up to a second of the file datastore's polling) and the
/// reconcile's own time as it logs it.
fn change(cluster: &Cluster, state: &State) -> anyhow::Result<Timings> {
    let before: BTreeMap<String, usize> =
        cluster.agents().map(|a| (a.node().to_owned(), programmed(cluster, a.node()))).collect();
    write_atomically(cluster.datastore(), &cluster_yaml(state))?;
    let written = Instant::now();
    let mut took = BTreeMap::new();
    while took.len() < before.len() {
        for (node, count) in &before {
            if !took.contains_key(node) && programmed(cluster, node) > *count {
                took.insert(node.clone(), (written.elapsed(), reconcile_ms(cluster, node, *count)));
            }
        }
        ensure!(
            written.elapsed() < RECONCILE_TIMEOUT,
            "not every agent reconciled within {RECONCILE_TIMEOUT:?} of the change to {state:?}: {took:?}\n{}",
            cluster.logs()
        );
        thread::sleep(Duration::from_millis(10));
    }
    Ok(took)
}
/// Checks node-1's routes map and kernel routes against `state`.
fn expect_programmed(cluster: &Cluster, state: &State) -> anyhow::Result<()> {
    let bin = cluster.bin().to_string_lossy();
    let pins = cluster.lab.pin_path("node-1");
    let output = dataplane_lab::cmd::run(&[&*bin, "routes", "--pin-path", &pins.to_string_lossy(), "-o", "json"])?;
    let json: Value =
        serde_json::from_slice(&output.stdout).context("`dataplane routes -o json` did not print JSON")?;
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let routes: BTreeSet<(String, String, String, String)> = json
        .as_array()
        .context("`dataplane routes -o json` is not a list")?
        .iter()
        .map(|r| (text(&r["prefix"]), text(&r["kind"]), text(&r["encap"]), text(&r["node_addr"])))
        .collect();
    let expected = expected_routes(state);
    ensure!(
        routes == expected,
        "node-1's routes map after the change to {state:?}:\n  stale: {:?}\n  missing: {:?}",
        routes.difference(&expected).collect::<Vec<_>>(),
        expected.difference(&routes).collect::<Vec<_>>()
    );

    let protocol = RTPROT_DATAPLANE.to_string();
    let shown = cluster.lab.exec_stdout(
        cluster.lab.node_netns("node-1")?,
        &["ip", "-j", "route", "show", "table", "main", "proto", &protocol],
    )?;
    let json: Value = serde_json::from_str(&shown).context("ip -j route did not print JSON")?;
    let kernel: BTreeSet<(String, String, String)> = json
        .as_array()
        .context("ip -j route is not a list")?
        .iter()
        .map(|r| {
            let kind = r["type"].as_str().unwrap_or("unicast").to_owned();
            (text(&r["dst"]), kind, text(&r["gateway"]))
        })
        .collect();
    let expected = expected_kernel_routes(state);
    ensure!(
        kernel == expected,
        "node-1's kernel routes of protocol {protocol} after the change to {state:?}:\n  stale: {:?}\n  missing: {:?}",
        kernel.difference(&expected).collect::<Vec<_>>(),
        expected.difference(&kernel).collect::<Vec<_>>()
    );
    Ok(())
}

/// One decision counter of node-1's fast path.
fn counter(cluster: &Cluster, name: &str) -> anyhow::Result<u64> {
    let bin = cluster.bin().to_string_lossy();
    let pins = cluster.lab.pin_path("node-1");
    let output = dataplane_lab::cmd::run(&[&*bin, "stats", "--pin-path", &pins.to_string_lossy(), "-o", "json"])?;
    let json: Value = serde_json::from_slice(&output.stdout).context("`dataplane stats -o json` did not print JSON")?;
    json["decisions"][name].as_u64().with_context(|| format!("no decision counter {name}: {json}"))
}

/// Whether `from` gets replies from `to`: `reach` says whether it must.
fn expect_ping(cluster: &Cluster, from: &str, to: &str, reach: bool) -> anyhow::Result<()> {
    let (from, to) = (cluster.lab.pod(from)?, cluster.lab.pod(to)?);
    let replied = ping(&cluster.lab, from, to)?;
    ensure!(
        replied == reach,
        "{} {} {} ({})\n{}",
        from.key,
        if reach { "cannot reach" } else { "still reaches" },
        to.key,
        to.addr,
        cluster.logs()
    );
    Ok(())
}

/// The sequence numbers of the echo replies in a ping log.
fn replies(log: &str) -> BTreeSet<u64> {
    log.lines().filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("icmp_seq=")?.parse().ok())).collect()
}

/// The requests in (`after`, last reply] that got no reply.
fn lost_since(log: &str, after: u64) -> usize {
    let replies = replies(log);
    let last = replies.last().copied().unwrap_or(after);
    (after + 1..=last).filter(|seq| !replies.contains(seq)).count()
}

/// Replaces `path`'s contents in one step, so that an agent polling it never reads half a file.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let staging = path.with_extension("next");
    fs::write(&staging, text).with_context(|| format!("writing {}", staging.display()))?;
    fs::rename(&staging, path).with_context(|| format!("renaming {} to {}", staging.display(), path.display()))
}

/// Whether `from` gets a reply from `to`: two pings, 200 ms apart, each waiting up to 1 s (the
/// first may be lost while the pod resolves its gateway).
fn ping(lab: &Lab, from: &LabPod, to: &LabPod) -> anyhow::Result<bool> {
    let addr = to.addr.to_string();
    let output = lab.exec_status(&from.netns, &["ping", "-c", "3", "-i", "0.2", "-W", "1", &addr])?;
    Ok(String::from_utf8_lossy(&output.stdout).lines().any(|l| l.contains(" received") && !l.contains(" 0 received")))
}

#[test]
fn the_fast_path_follows_nodes_blocks_pools_and_modes_as_the_datastore_changes() -> anyhow::Result<()> {
    if dataplane_tests::skip_unless_root("the_fast_path_follows_nodes_blocks_pools_and_modes_as_the_datastore_changes")
    {
        return Ok(());
    }
    let began = Instant::now();
    let bin = agent_bin();
    ensure!(bin.exists(), "agent binary {} does not exist: build it with `cargo build -p dataplane`", bin.display());
    // The lab is built from the fullest state, so node-3 and every pod exist from the start.
    let full = State { node_3: true, block_2_node: 2, pool_db: true, encap: Encap::Vxlan };
    let staging = std::env::temp_dir().join(format!("dpl-reconcile-{}.yaml", std::process::id()));
    fs::write(&staging, cluster_yaml(&full))?;
    let model = Cluster::up(&staging, &bin);
    let _ = fs::remove_file(&staging);
    let mut cluster = model?;

    let mut state = State { node_3: false, ..full };
    write_atomically(cluster.datastore(), &cluster_yaml(&state))?;
    cluster.start("node-1", &AgentOptions::default())?;
    cluster.start("node-2", &AgentOptions::default())?;
    expect_programmed(&cluster, &state)?;
    expect_ping(&cluster, "default/web-1", "default/web-2", true)?;
    expect_ping(&cluster, "default/web-1", "default/db-2", true)?;
    expect_ping(&cluster, "default/web-1", "default/web-3", false)?;
    let mut timings: Vec<(&str, Timings)> = Vec::new();

    // 1. node-3 and its block join; its agent starts once the datastore has it.
    state.node_3 = true;
    timings.push(("add node-3 and its block", change(&cluster, &state)?));
    cluster.start("node-3", &AgentOptions::default())?;
    expect_programmed(&cluster, &state)?;
    expect_ping(&cluster, "default/web-1", "default/web-3", true)?;

    // A ping that runs across the remaining changes, web-1 to web-3 (which stays reachable).
    let web3 = cluster.lab.pod("default/web-3")?.addr.to_string();
    let web1_netns = cluster.lab.pod("default/web-1")?.netns.clone();
    let steady = cluster.lab.spawn(&web1_netns, &["ping", "-i", "0.02", "-W", "1", &web3], "steady-ping")?;

    // The steady ping's losses in each change (up to the last reply after its checks).
    let mut losses: Vec<usize> = Vec::new();
    thread::sleep(Duration::from_millis(200));
    let mut mark = replies(&steady.log()).last().copied().unwrap_or(0);
    let mut count_loss = |log: &str| {
        losses.push(lost_since(log, mark));
        mark = replies(log).last().copied().unwrap_or(mark);
    };

    // 2. The block of node-2 moves to node-3; web-2 (still on node-2) is cut off.
    state.block_2_node = 3;
    timings.push(("move 10.244.2.0/26 to node-3", change(&cluster, &state)?));
    expect_programmed(&cluster, &state)?;
    expect_ping(&cluster, "default/web-1", "default/web-2", false)?;
    expect_ping(&cluster, "default/web-1", "default/web-3", true)?;
    count_loss(&steady.log());

    // 3. The db pool goes: its block's route goes with it.
    state.pool_db = false;
    timings.push(("remove pool 10.245.0.0/16", change(&cluster, &state)?));
    expect_programmed(&cluster, &state)?;
    expect_ping(&cluster, "default/web-1", "default/db-2", false)?;
    count_loss(&steady.log());

    // 4 and 5. The pool's mode: VXLAN -> IPIP -> Never; node-1 counts the new kind of crossing.
    for encap in [Encap::Ipip, Encap::Never] {
        state.encap = encap;
        let label = if encap == Encap::Ipip { "pool VXLAN -> IPIP" } else { "pool IPIP -> Never" };
        timings.push((label, change(&cluster, &state)?));
        expect_programmed(&cluster, &state)?;
        let before = counter(&cluster, encap.counter())?;
        expect_ping(&cluster, "default/web-1", "default/web-3", true)?;
        let after = counter(&cluster, encap.counter())?;
        ensure!(after > before, "node-1's {} did not move in mode {encap:?}: {before} -> {after}", encap.counter());
        count_loss(&steady.log());
    }

    // The steady ping's loss across steps 2 to 5 (reported, not asserted: a mode change may
    // lose the packets in flight).
    let pid = steady.pid().to_string();
    cluster.lab.exec(&web1_netns, &["kill", "-INT", &pid])?;
    let mut steady = steady;
    let _ = steady.wait_timeout(Duration::from_secs(5))?;
    let summary = steady.log().lines().find(|l| l.contains("packets transmitted")).unwrap_or("no summary").to_owned();

    for (index, (change, took)) in timings.iter().enumerate() {
        let took: Vec<String> = took
            .iter()
            .map(|(node, (d, own))| format!("{node} {} ms (reconcile {} ms)", d.as_millis(), own.unwrap_or(0)))
            .collect();
        // The steady ping starts after the first change.
        let lost = index
            .checked_sub(1)
            .and_then(|i| losses.get(i))
            .map_or(String::new(), |n| format!("; steady ping lost {n} of its 20 ms requests"));
        eprintln!("change-to-programmed, {change}: {}{lost}", took.join(", "));
    }
    eprintln!("steady ping web-1 -> web-3 across changes 2-5: {summary}");
    eprintln!("reconcile test took {:?}", began.elapsed());
    Ok(())
}

/// The agent writes each change from what it remembers writing, without reading the kernel
/// again; what changes behind its back (a routes map entry removed, a host route deleted) is
/// repaired by the slow resync, which reads the maps and the route table afresh (a stray entry
/// added behind its back is removed).
#[test]
fn the_slow_resync_repairs_what_changed_behind_the_agents_back() -> anyhow::Result<()> {
    let Some(mut cluster) =
        Cluster::up_or_skip("the_slow_resync_repairs_what_changed_behind_the_agents_back", "examples/two-nodes.yaml")?
    else {
        return Ok(());
    };
    use aya::maps::{lpm_trie::Key, LpmTrie, Map, MapData};
    use dataplane_common::{Ipv4Bytes, Route, ROUTES_MAP};

    let options = AgentOptions { args: vec!["--resync-interval".into(), "1".into()], ..Default::default() };
    cluster.start("node-1", &options)?;
    let lab = &cluster.lab;
    let netns = lab.node_netns("node-1")?.to_owned();
    let pinned = MapData::from_pin(lab.pin_path("node-1").join(ROUTES_MAP)).context("opening the routes map")?;
    let mut routes: LpmTrie<MapData, Ipv4Bytes, Route> = LpmTrie::try_from(Map::LpmTrie(pinned))?;
    // node-2's block, in the map and as a host route.
    let key = Key::new(26, [10, 244, 2, 0]);
    let entry = routes.get(&key, 0).context("node-2's block is not in the routes map")?;
    let proto = RTPROT_DATAPLANE.to_string();
    let host_route = |lab: &Lab| lab.exec_stdout(&netns, &["ip", "route", "show", "10.244.2.0/26", "proto", &proto]);
    ensure!(!host_route(lab)?.trim().is_empty(), "no host route for node-2's block");

    routes.remove(&key).context("removing node-2's block behind the agent's back")?;
    lab.exec(&netns, &["ip", "route", "del", "10.244.2.0/26", "proto", &proto])?;
    // An entry the plan does not have: the resync (which reads the kernel apart from the event
    // loop and repairs only the keys that differ) must remove it too.
    let stray = Key::new(24, [10, 99, 0, 0]);
    routes.insert(&stray, entry, 0).context("adding a stray entry behind the agent's back")?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let back = routes.get(&key, 0).ok() == Some(entry)
            && routes.get(&stray, 0).is_err()
            && !host_route(lab)?.trim().is_empty();
        if back {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the resync did not restore node-2's block and remove the stray entry within 15 s:\n{}",
            cluster.log("node-1")
        );
        thread::sleep(Duration::from_millis(100));
    }
    cluster.stop("node-1")?;
    Ok(())
}
