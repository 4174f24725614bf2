//! The netlink fallback on the lab: the plan written as Calico's own kernel dataplane writes it.
//!
//! - both nodes `--mode netlink`: pods talk both ways (ping, TCP), each node has `vxlan.calico`
//!   with Calico's settings, the routes, permanent neighbours and FDB entries, proxy ARP on the
//!   pods' veths, no BPF link; a resync with no change writes and removes nothing;
//! - node-1 on the fast path, node-2 on the fallback: our VXLAN and the kernel's interoperate;
//!   node-1 ran the fallback first, and the fast path, starting, removed its nf_tables table;
//! - `--mode auto` with `DATAPLANE_PROBE_DISABLE`: the agent says it fell back, traffic flows, and
//!   `--mode bpf` refuses naming the feature;
//! - an IPIP pool on this kernel (no ipip module): the agent says so clearly, keeps running, and
//!   programs everything else;
//! - changes of the datastore (a block goes, the pool stops using VXLAN, VXLAN comes back) remove
//!   exactly what went; `dataplane check` finds the masquerade's pool set out of step with a pool
//!   the stopped agent never saw; `cleanup` removes everything the backend made (routes,
//!   `vxlan.calico`, the natOutgoing table) and nothing else.
//!
//! Every test builds its own lab and runs the agents as separate processes. Without root the tests
//! print why they are skipped and pass.

use std::{
    fs,
    os::fd::AsRawFd as _,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use dataplane::{agent::NETLINK_READY, backend::nftables};
use dataplane_lab::{cluster::READY_TIMEOUT, AgentMode, AgentOptions, Cluster, Lab, LabPod};
use serde_json::Value;

/// Pool 10.244.0.0/16 vxlanMode Always; node-1 10.100.0.11 (VTEP 10.244.1.0 66:d0:00:00:00:01),
/// node-2 10.100.0.12 (VTEP 10.244.2.0 66:d0:00:00:00:02).
const TWO_NODES: &str = "examples/two-nodes.yaml";
/// The same cluster with ipipMode Always.
const IPIP: &str = "examples/ipip.yaml";
/// Pods: web-1 and cache-1 on node-1, web-2 on node-2.
const WEB_1: &str = "default/web-1";
const CACHE_1: &str = "default/cache-1";
const WEB_2: &str = "default/web-2";
/// Agent options for `mode` with extra `args` and `env` (`KEY=VALUE`).
fn agent_options(mode: AgentMode, args: &[&str], env: &[&str]) -> AgentOptions {
    AgentOptions {
        mode: Some(mode),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        env: env
            .iter()
            .filter_map(|e| e.split_once('='))
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect(),
    }
}

/// A 2 s iperf3 TCP stream from `client` to `server` (reversed with `reverse`); returns the bytes
/// received, which must be more than zero.
fn iperf3(lab: &Lab, client: &LabPod, server: &LabPod, reverse: bool) -> anyhow::Result<u64> {
    let mut listener = lab.spawn(&server.netns, &["iperf3", "-s", "-1", "--forceflush"], "iperf3-server")?;
    listener.wait_for_log("Server listening", Duration::from_secs(10))?;
    let server_addr = server.addr.to_string();
    let mut argv = vec!["iperf3", "-c", &server_addr, "-t", "2", "-J"];
    if reverse {
        argv.push("-R");
    }
    let output = lab.exec(&client.netns, &argv)?;
    let report: Value = serde_json::from_slice(&output.stdout).context("iperf3 -J did not print JSON")?;
    let received =
        report["end"]["sum_received"]["bytes"].as_u64().context("iperf3 JSON has no end.sum_received.bytes")?;
    ensure!(received > 0, "iperf3 {} -> {} moved no bytes", client.key, server.key);
    let (from, to) = if reverse { (&server.key, &client.key) } else { (&client.key, &server.key) };
    eprintln!("iperf3 {from} -> {to}: {received} bytes in 2 s");
    Ok(received)
}

/// Pings and TCP between `a` and `b`, both ways.
fn traffic_both_ways(cluster: &Cluster, a: &str, b: &str) -> anyhow::Result<()> {
    let lab = &cluster.lab;
    let (a, b) = (lab.pod(a)?, lab.pod(b)?);
    lab.ping(&a.netns, b.addr).with_context(|| cluster.logs())?;
    lab.ping(&b.netns, a.addr).with_context(|| cluster.logs())?;
    iperf3(lab, a, b, false).with_context(|| cluster.logs())?;
    iperf3(lab, a, b, true).with_context(|| cluster.logs())?;
    Ok(())
}

/// The value of `key=` in a log line.
fn field<'l>(line: &'l str, key: &str) -> Option<&'l str> {
    line.split_whitespace().find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

/// The lines of `log` that report a netlink reconcile.
fn reconciles(log: &str) -> Vec<&str> {
    log.lines().filter(|line| line.contains(NETLINK_READY)).collect()
}

/// Waits until `node`'s agent has reconciled `count` times.
fn wait_reconciles(cluster: &Cluster, node: &str, count: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while reconciles(&cluster.log(node)).len() < count {
        if Instant::now() > deadline {
            bail!("agent of {node} did not reconcile {count} times in 20 s\n{}", cluster.log(node));
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// examples/two-nodes.yaml's node-1: address, VTEP address, VTEP MAC, block.
const NODE_1: (&str, &str, &str, &str) = ("10.100.0.11", "10.244.1.0", "66:d0:00:00:00:01", "10.244.1.0/26");
/// examples/two-nodes.yaml's node-2: address, VTEP address, VTEP MAC, block.
const NODE_2: (&str, &str, &str, &str) = ("10.100.0.12", "10.244.2.0", "66:d0:00:00:00:02", "10.244.2.0/26");

/// What a node running the netlink fallback for examples/two-nodes.yaml must hold.
fn check_vxlan_node(cluster: &Cluster, node: &str) -> anyhow::Result<()> {
    let (me, peer) = if node == "node-1" { (NODE_1, NODE_2) } else { (NODE_2, NODE_1) };
    let ((addr, vtep, mac, local_block), (peer_addr, peer_vtep, peer_mac, remote_block)) = (me, peer);
    let link = cluster.on(node, &["ip", "-d", "link", "show", "vxlan.calico"])?;
    for needed in [
        "vxlan id 4096".to_owned(),
        "dstport 4789".to_owned(),
        format!("local {addr} dev eth0"),
        "nolearning".to_owned(),
        "mtu 1450".to_owned(),
        format!("link/ether {mac}"),
        "alias dataplane netlink fallback".to_owned(),
    ] {
        ensure!(link.contains(&needed), "{node}: `ip -d link show vxlan.calico` lacks {needed:?}:\n{link}");
    }
    ensure!(link.contains("UP"), "{node}: vxlan.calico is not up:\n{link}");
    let addrs = cluster.on(node, &["ip", "-4", "addr", "show", "dev", "vxlan.calico"])?;
    ensure!(addrs.contains(&format!("inet {vtep}/32")), "{node}: vxlan.calico lacks {vtep}/32:\n{addrs}");

    let route = cluster.on(node, &["ip", "route", "show", "exact", remote_block])?;
    let expected = format!("{remote_block} via {peer_vtep} dev vxlan.calico proto 200 onlink");
    ensure!(route.contains(&expected), "{node}: no `{expected}`:\n{route}");
    let route = cluster.on(node, &["ip", "route", "show", "exact", local_block])?;
    ensure!(
        route.contains(&format!("blackhole {local_block} proto 200")),
        "{node}: no blackhole {local_block}:\n{route}"
    );

    let neigh = cluster.on(node, &["ip", "neigh", "show", "dev", "vxlan.calico"])?;
    let expected = format!("{peer_vtep} lladdr {peer_mac} PERMANENT");
    ensure!(neigh.contains(&expected), "{node}: no neighbour `{expected}`:\n{neigh}");
    let fdb = cluster.on(node, &["bridge", "fdb", "show", "dev", "vxlan.calico"])?;
    let expected = format!("{peer_mac} dst {peer_addr} self permanent");
    ensure!(fdb.contains(&expected), "{node}: no FDB entry `{expected}`:\n{fdb}");

    // The fast path is not in use: nothing pinned, no link attached.
    let links = cluster.lab.pin_path(node).join("links");
    let attached = std::fs::read_dir(&links).map(|d| d.count()).unwrap_or(0);
    ensure!(attached == 0, "{node}: {attached} BPF links pinned under {}", links.display());
    Ok(())
}

/// Proxy ARP on, without delay, on every pod veth of `node`.
fn check_proxy_arp(cluster: &Cluster, node: &str) -> anyhow::Result<()> {
    for pod in cluster.lab.pods().filter(|p| p.node == node) {
        let interface = &pod.interface;
        let arp = cluster.on(node, &["cat", &format!("/proc/sys/net/ipv4/conf/{interface}/proxy_arp")])?;
        let delay = cluster.on(node, &["cat", &format!("/proc/sys/net/ipv4/neigh/{interface}/proxy_delay")])?;
        ensure!(
            (arp.trim(), delay.trim()) == ("1", "0"),
            "{node}: {interface} has proxy_arp {arp:?} and proxy_delay {delay:?}, expected 1 and 0"
        );
    }
    Ok(())
}

#[test]
fn both_nodes_on_the_netlink_fallback() -> anyhow::Result<()> {
    let Some(mut cluster) = Cluster::up_or_skip("both_nodes_on_the_netlink_fallback", TWO_NODES)? else {
        return Ok(());
    };
    // The CNI plugin's route to web-2 is gone: the agent must add its own.
    let web2 = cluster.lab.pod(WEB_2)?.clone();
    let web2_route = format!("{}/32", web2.addr);
    cluster.on("node-2", &["ip", "route", "del", &web2_route, "dev", &web2.interface])?;

    let started = Instant::now();
    for node in ["node-1", "node-2"] {
        cluster.start(node, &agent_options(AgentMode::Netlink, &["--resync-interval", "1"], &[]))?;
    }
    eprintln!("both agents programmed their nodes in {:?}", started.elapsed());

    traffic_both_ways(&cluster, WEB_1, WEB_2)?;
    check_vxlan_node(&cluster, "node-1").with_context(|| cluster.logs())?;
    check_vxlan_node(&cluster, "node-2").with_context(|| cluster.logs())?;
    for node in ["node-1", "node-2"] {
        check_proxy_arp(&cluster, node)?;
        let forward = cluster.on(node, &["cat", "/proc/sys/net/ipv4/ip_forward"])?;
        ensure!(forward.trim() == "1", "{node}: ip_forward is {forward:?}");
    }
    let route = cluster.on("node-2", &["ip", "route", "show", "exact", &web2_route])?;
    let expected = format!("{} dev {} proto 200 scope link", web2.addr, web2.interface);
    ensure!(route.contains(&expected), "node-2: the agent did not add `{expected}`:\n{route}");
    // Where the CNI plugin's route exists, the agent adds none of its own.
    let web1 = cluster.lab.pod(WEB_1)?;
    let route = cluster.on("node-1", &["ip", "route", "show", "exact", &format!("{}/32", web1.addr)])?;
    ensure!(!route.contains("proto 200"), "node-1: the agent replaced the CNI plugin's route:\n{route}");

    // Resyncs with no change touch nothing.
    for node in ["node-1", "node-2"] {
        wait_reconciles(&cluster, node, 3)?;
        let log = cluster.log(node);
        let lines = reconciles(&log);
        let first = lines[0];
        ensure!(
            field(first, "written").is_some_and(|n| n != "0"),
            "{node}: the first reconcile wrote nothing: {first}"
        );
        for line in &lines[1..] {
            ensure!(
                field(line, "written") == Some("0") && field(line, "removed") == Some("0"),
                "{node}: a resync with no change touched the kernel: {line}\n{log}"
            );
        }
        eprintln!("{node}: first reconcile: {first}\n{node}: resync: {}", lines[1]);
    }
    Ok(())
}

#[test]
fn fast_path_node_and_netlink_node_interoperate() -> anyhow::Result<()> {
    let Some(mut cluster) = Cluster::up_or_skip("fast_path_node_and_netlink_node_interoperate", TWO_NODES)? else {
        return Ok(());
    };
    // node-1 ran the fallback before: the fast path, starting, removes its vxlan.calico and its
    // natOutgoing table.
    cluster.start("node-1", &agent_options(AgentMode::Netlink, &[], &[]))?;
    let (status, killed) = cluster.agent_mut("node-1")?.process().terminate(Duration::from_secs(10))?;
    ensure!(status.success() && !killed, "the netlink agent of node-1 did not stop cleanly: {status}");
    let node_1 = cluster.lab.node_netns("node-1")?.to_owned();
    ensure!(in_netns(&node_1, nftables::observe)?.table, "the fallback left no table ip {}", nftables::TABLE);
    cluster.start("node-1", &agent_options(AgentMode::Bpf, &[], &[]))?;
    ensure!(
        !in_netns(&node_1, nftables::observe)?.table,
        "table ip {} stayed after the fast path started on node-1",
        nftables::TABLE
    );
    cluster.start("node-2", &agent_options(AgentMode::Netlink, &[], &[]))?;

    traffic_both_ways(&cluster, WEB_1, WEB_2)?;

    // Each node really runs its own backend.
    let links = cluster.lab.pin_path("node-1").join("links");
    let attached = std::fs::read_dir(&links).map(|d| d.count()).unwrap_or(0);
    ensure!(attached >= 3, "node-1 has {attached} pinned BPF links, expected uplink and pod hooks");
    // The fast path's only vxlan device is its GRO anchor, in external mode: no vxlan.calico.
    let vxlan = cluster.on("node-1", &["ip", "-d", "link", "show", "type", "vxlan"])?;
    let devices: Vec<&str> = vxlan.lines().filter(|l| !l.starts_with(' ')).collect();
    ensure!(
        devices.len() == 1 && devices[0].contains("vxlan.dataplane") && vxlan.contains("vxlan external"),
        "node-1 (fast path) has vxlan devices other than its external GRO anchor:\n{vxlan}"
    );
    check_vxlan_node(&cluster, "node-2").with_context(|| cluster.logs())?;
    Ok(())
}

#[test]
fn auto_falls_back_when_the_probe_finds_a_feature_missing() -> anyhow::Result<()> {
    let Some(mut cluster) = Cluster::up_or_skip("auto_falls_back_when_the_probe_finds_a_feature_missing", TWO_NODES)?
    else {
        return Ok(());
    };
    let disable = "DATAPLANE_PROBE_DISABLE=bpf_redirect_peer";

    // --mode bpf refuses, naming the feature.
    let options = agent_options(AgentMode::Bpf, &[], &[disable]);
    let mut refused = cluster.lab.start_agent_with("node-1", cluster.bin(), cluster.datastore(), &options)?;
    let status = refused.process().wait_timeout(READY_TIMEOUT)?;
    let stderr = refused.log();
    ensure!(
        status.is_some_and(|s| !s.success()),
        "--mode bpf ran although the probe reports a feature missing:\n{stderr}"
    );
    ensure!(
        stderr.contains("--mode bpf: this kernel lacks bpf_redirect_peer"),
        "--mode bpf failed without naming bpf_redirect_peer:\n{stderr}"
    );

    for node in ["node-1", "node-2"] {
        cluster.start(node, &agent_options(AgentMode::AutoFallingBack, &[], &[disable]))?;
        let log = cluster.log(node);
        ensure!(
            log.contains("falling back to the netlink dataplane: this kernel lacks bpf_redirect_peer")
                && log.contains("DATAPLANE_PROBE_DISABLE says so"),
            "{node}: the log does not say why it fell back:\n{log}"
        );
        if let Some(line) = log.lines().find(|line| line.contains("falling back")) {
            eprintln!("{node} says: {line}");
        }
    }
    let lab = &cluster.lab;
    let (web1, web2) = (lab.pod(WEB_1)?, lab.pod(WEB_2)?);
    lab.ping(&web1.netns, web2.addr).with_context(|| cluster.logs())?;
    lab.ping(&web2.netns, web1.addr).with_context(|| cluster.logs())?;
    for node in ["node-1", "node-2"] {
        let link = cluster.on(node, &["ip", "-d", "link", "show", "vxlan.calico"])?;
        ensure!(link.contains("vxlan id 4096"), "{node}: no vxlan.calico after the fallback:\n{link}");
    }
    Ok(())
}

#[test]
fn ipip_pool_without_the_ipip_module_is_reported_and_the_rest_is_programmed() -> anyhow::Result<()> {
    let Some(mut cluster) =
        Cluster::up_or_skip("ipip_pool_without_the_ipip_module_is_reported_and_the_rest_is_programmed", IPIP)?
    else {
        return Ok(());
    };
    if Path::new("/sys/module/ipip").exists() {
        eprintln!("SKIPPED ipip_pool_without_the_ipip_module: this kernel has the ipip module");
        return Ok(());
    }
    cluster.start("node-1", &agent_options(AgentMode::Netlink, &["--resync-interval", "1"], &[]))?;
    wait_reconciles(&cluster, "node-1", 2)?;
    let log = cluster.log("node-1");
    ensure!(
        log.contains("IPIP pool default-ipv4-ippool needs the ipip kernel module, which this kernel lacks")
            && log.contains("use the BPF fast path (--mode bpf) or VXLAN"),
        "the agent does not say clearly that IPIP needs the ipip module:\n{log}"
    );
    if let Some(line) = log.lines().find(|line| line.contains("needs the ipip kernel module")) {
        eprintln!("node-1 says: {line}");
    }
    ensure!(cluster.agent_mut("node-1")?.process().try_exit()?.is_none(), "the agent exited:\n{log}");

    // Everything else is programmed: the local block, the pods' routes and proxy ARP.
    let route = cluster.on("node-1", &["ip", "route", "show", "exact", "10.244.1.0/26"])?;
    ensure!(route.contains("blackhole 10.244.1.0/26 proto 200"), "node-1: no blackhole for its block:\n{route}");
    let remote = cluster.on("node-1", &["ip", "route", "show", "exact", "10.244.2.0/26"])?;
    ensure!(remote.trim().is_empty(), "node-1 routes the IPIP block anyway:\n{remote}");
    check_proxy_arp(&cluster, "node-1")?;
    let lab = &cluster.lab;
    let (web1, cache1) = (lab.pod(WEB_1)?, lab.pod(CACHE_1)?);
    lab.ping(&web1.netns, cache1.addr).with_context(|| cluster.logs())?;
    lab.ping(&cache1.netns, web1.addr).with_context(|| cluster.logs())?;
    Ok(())
}

/// An IP pool without natOutgoing and without blocks, to add to examples/two-nodes.yaml.
const EXTRA_POOL: &str = "\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: extra-pool
spec:
  blockSize: 26
  cidr: 10.250.0.0/16
  ipipMode: Never
  natOutgoing: false
  nodeSelector: all()
  vxlanMode: Always
";

/// The documents of a Calico YAML file.
fn documents(yaml: &str) -> Vec<String> {
    yaml.split("\n---\n").map(str::to_owned).collect()
}

/// Runs `f` on a thread that has entered network namespace `netns`.
fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let path = format!("/run/netns/{netns}");
    let thread = thread::spawn(move || {
        let handle = fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns(2) on a valid namespace fd; it changes only this thread's namespace.
        if unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("entering {path}"));
        }
        f()
    });
    thread.join().map_err(|_| anyhow::anyhow!("the thread in {netns} panicked"))?
}

/// Rewrites the datastore file and waits for the reconcile that follows.
fn change(cluster: &Cluster, node: &str, yaml: &str) -> anyhow::Result<String> {
    let before = reconciles(&cluster.log(node)).len();
    fs::write(cluster.datastore(), yaml).with_context(|| format!("writing {}", cluster.datastore().display()))?;
    wait_reconciles(cluster, node, before + 1)?;
    let log = cluster.log(node);
    Ok(reconciles(&log)[before].to_owned())
}

#[test]
fn changes_remove_exactly_what_went_and_cleanup_removes_the_rest() -> anyhow::Result<()> {
    let Some(mut cluster) =
        Cluster::up_or_skip("changes_remove_exactly_what_went_and_cleanup_removes_the_rest", TWO_NODES)?
    else {
        return Ok(());
    };
    // A copy of the example that the test can change.
    let original = fs::read_to_string(cluster.datastore())?;
    cluster.start("node-1", &agent_options(AgentMode::Netlink, &[], &[]))?;
    let neigh = |c: &Cluster| c.on("node-1", &["ip", "neigh", "show", "dev", "vxlan.calico"]);
    let fdb = |c: &Cluster| c.on("node-1", &["bridge", "fdb", "show", "dev", "vxlan.calico"]);
    let remote = |c: &Cluster| c.on("node-1", &["ip", "route", "show", "exact", "10.244.2.0/26"]);
    ensure!(neigh(&cluster)?.contains("10.244.2.0 lladdr 66:d0:00:00:00:02 PERMANENT"), "no neighbour at start");

    // node-2's block goes: its route, neighbour and FDB entry go; the device stays (node-2 may
    // still send VXLAN).
    let without_block: Vec<String> =
        documents(&original).into_iter().filter(|d| !d.contains("name: node-2-10-244-2-0-26")).collect();
    let line = change(&cluster, "node-1", &without_block.join("\n---\n"))?;
    ensure!(field(&line, "removed") == Some("3"), "removing a block removed other than route, neighbour, FDB: {line}");
    ensure!(remote(&cluster)?.trim().is_empty(), "the route to the gone block stayed:\n{}", remote(&cluster)?);
    ensure!(!neigh(&cluster)?.contains("10.244.2.0"), "the neighbour stayed:\n{}", neigh(&cluster)?);
    ensure!(!fdb(&cluster)?.contains("66:d0:00:00:00:02"), "the FDB entry stayed:\n{}", fdb(&cluster)?);

    // The pool stops using VXLAN: the block is routed via node-2 on the wire, the device goes.
    let never = original.replace("vxlanMode: Always", "vxlanMode: Never");
    ensure!(never != original, "the example no longer says vxlanMode: Always");
    change(&cluster, "node-1", &never)?;
    let route = remote(&cluster)?;
    ensure!(
        route.contains("10.244.2.0/26 via 10.100.0.12 dev eth0 proto 200 onlink"),
        "no plain route to node-2's block:\n{route}\n{}",
        cluster.logs()
    );
    let vxlan = cluster.on("node-1", &["ip", "-d", "link", "show", "type", "vxlan"])?;
    ensure!(vxlan.trim().is_empty(), "vxlan.calico stayed without a VXLAN pool:\n{vxlan}");

    // VXLAN again: the device is made anew with its route.
    change(&cluster, "node-1", &original)?;
    let route = remote(&cluster)?;
    ensure!(route.contains("via 10.244.2.0 dev vxlan.calico proto 200 onlink"), "VXLAN route not back:\n{route}");

    // Cleanup, after the agent stopped: no route of ours, no device; the CNI plugin's routes stay.
    let (status, killed) = cluster.agent_mut("node-1")?.process().terminate(Duration::from_secs(10))?;
    ensure!(status.success() && !killed, "the agent did not stop cleanly: {status}");
    let netns = cluster.lab.node_netns("node-1")?.to_owned();

    // A pool the stopped agent never saw: `dataplane check` finds the masquerade's pool set out
    // of step, naming what it holds and what it should.
    let with_pool = format!("{original}\n---\n{EXTRA_POOL}");
    fs::write(cluster.datastore(), with_pool)?;
    let datastore = format!("file:{}", cluster.datastore().display());
    let bin = cluster.bin().to_string_lossy().into_owned();
    let argv =
        [bin.as_str(), "check", "--datastore", &datastore, "--node", "node-1", "--mode", "netlink", "-o", "json"];
    let output = cluster.lab.exec_status(&netns, &argv)?;
    let report: Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("`dataplane check` printed no JSON: {}", String::from_utf8_lossy(&output.stderr)))?;
    let findings = report["findings"].as_array().cloned().unwrap_or_default();
    let set = findings
        .iter()
        .find(|f| f["object"] == "set all-ipam-pools")
        .with_context(|| format!("no finding about set all-ipam-pools after a pool was added:\n{report:#}"))?;
    let problem = set["problem"].as_str().unwrap_or("");
    ensure!(
        problem.contains("holds {10.244.0.0/16}, but the pools are {10.244.0.0/16, 10.250.0.0/16}"),
        "the finding does not name the sets' contents: {problem}"
    );
    ensure!(
        !findings.iter().any(|f| f["object"] == "set masq-ipam-pools"),
        "the new pool has no natOutgoing, yet check finds masq-ipam-pools wrong:\n{report:#}"
    );
    eprintln!("dataplane check: set all-ipam-pools {problem}");

    // The pool has natOutgoing: the masquerade table is there until cleanup.
    ensure!(in_netns(&netns, nftables::observe)?.table, "no table ip {} before cleanup", nftables::TABLE);
    let removed = in_netns(&netns, dataplane::backend::netlink::cleanup_blocking)?;
    ensure!(
        removed == dataplane::backend::netlink::Cleanup { routes: 2, devices: 1, nat_table: true },
        "cleanup removed {removed:?}, expected the blackhole and the VXLAN route, vxlan.calico and the nat table"
    );
    ensure!(!in_netns(&netns, nftables::observe)?.table, "table ip {} left after cleanup", nftables::TABLE);
    let ours = cluster.on("node-1", &["ip", "route", "show", "proto", "200"])?;
    ensure!(ours.trim().is_empty(), "routes of protocol 200 left after cleanup:\n{ours}");
    let vxlan = cluster.on("node-1", &["ip", "-d", "link", "show", "type", "vxlan"])?;
    ensure!(vxlan.trim().is_empty(), "vxlan.calico left after cleanup:\n{vxlan}");
    let web1 = cluster.lab.pod(WEB_1)?;
    let route = cluster.on("node-1", &["ip", "route", "show", "exact", &format!("{}/32", web1.addr)])?;
    ensure!(route.contains(&web1.interface), "cleanup removed the CNI plugin's route to {WEB_1}:\n{route}");
    Ok(())
}
