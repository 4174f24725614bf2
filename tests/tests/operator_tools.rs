//! The operator's tools on a lab with known contents: `dataplane ipam show`, `dataplane check`
//! (healthy, then broken on purpose in each way it knows, then repaired) and `dataplane trace`
//! (predictions from the live maps, confirmed by running the packet through the kernel program).
//!
//! Each lab test builds its own lab from examples/two-nodes.yaml (node-1 10.100.0.11 with web-1
//! 10.244.1.2 and cache-1 10.244.1.3, node-2 10.100.0.12 with web-2 10.244.2.2; one VXLAN pool
//! 10.244.0.0/16 with natOutgoing), runs one agent per node, and runs the tools in the node's
//! network namespace as an operator would. Without root the lab tests print why they are skipped
//! and pass.

use dataplane_tests::{agent_bin, workspace_root};
use std::{fs, path::Path, process::Output, thread, time::Duration};

use anyhow::{bail, ensure, Context as _};
use dataplane_lab::{udp_socket_in, AgentMode, AgentOptions, Cluster};
use serde_json::Value;

/// The example cluster.
const EXAMPLE: &str = "examples/two-nodes.yaml";
/// web-1 on node-1, its interface and its host route.
const WEB_1: &str = "10.244.1.2";
const WEB_1_IFACE: &str = "cali0761ccbeace";
const WEB_1_ENDPOINT: &str = "WorkloadEndpoint default/node--1-k8s-web--1-eth0";
/// cache-1 on node-1.
const CACHE_1_IFACE: &str = "cali188d81a77fc";
/// web-2 on node-2, and node-2's block.
const WEB_2: &str = "10.244.2.2";
const NODE_2_BLOCK: &str = "10.244.2.0/26";
const NODE_1_ADDR: &str = "10.100.0.11";
const NODE_2_ADDR: &str = "10.100.0.12";

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn describe(argv: &str, output: &Output) -> String {
    format!(
        "`{argv}` exited with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        stdout(output),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The example's lab with a ready agent per node in `mode`; `None` when not root.
fn cluster(test: &str, mode: AgentMode) -> anyhow::Result<Option<Cluster>> {
    let Some(mut cluster) = Cluster::up_or_skip(test, EXAMPLE)? else {
        return Ok(None);
    };
    cluster.start_all(&AgentOptions::mode(mode))?;
    Ok(Some(cluster))
}

/// Runs `dataplane <args>` in `node`'s namespace, whatever its exit status.
fn dataplane(cluster: &Cluster, node: &str, args: &[&str]) -> anyhow::Result<(String, Output)> {
    let bin = cluster.bin().to_string_lossy().into_owned();
    let mut argv = vec![bin.as_str()];
    argv.extend(args);
    let netns = cluster.lab.node_netns(node)?;
    let line = cluster.lab.command_line(netns, &argv);
    Ok((line, cluster.lab.exec_status(netns, &argv)?))
}
/// `dataplane check` on `node` against `datastore`: exit code, text report and JSON report.
fn check_with(cluster: &Cluster, node: &str, datastore: &Path) -> anyhow::Result<(i32, String, Value)> {
    let datastore = format!("file:{}", datastore.display());
    let pin_path = cluster.lab.pin_path(node).to_string_lossy().into_owned();
    let args = ["check", "--datastore", &datastore, "--node", node, "--pin-path", &pin_path];
    let (line, text) = dataplane(cluster, node, &args)?;
    let mut with_json = args.to_vec();
    with_json.extend(["-o", "json"]);
    let (json_line, json) = dataplane(cluster, node, &with_json)?;
    let code = text.status.code().with_context(|| describe(&line, &text))?;
    ensure!(code == 0 || code == 1, "{}", describe(&line, &text));
    ensure!(json.status.code() == Some(code), "text and JSON disagree:\n{}", describe(&json_line, &json));
    let report: Value = serde_json::from_slice(&json.stdout).with_context(|| describe(&json_line, &json))?;
    Ok((code, stdout(&text), report))
}

fn check(cluster: &Cluster, node: &str) -> anyhow::Result<(i32, String, Value)> {
    check_with(cluster, node, cluster.datastore())
}

/// `dataplane trace <args> -o json` on `node`: exit code and report.
fn trace(cluster: &Cluster, node: &str, args: &[&str]) -> anyhow::Result<(i32, Value, String)> {
    let pin_path = cluster.lab.pin_path(node).to_string_lossy().into_owned();
    let mut argv = vec!["trace"];
    argv.extend(args);
    argv.extend(["--pin-path", &pin_path, "-o", "json"]);
    let (line, output) = dataplane(cluster, node, &argv)?;
    let report: Value = serde_json::from_slice(&output.stdout).with_context(|| describe(&line, &output))?;
    Ok((output.status.code().unwrap_or(-1), report, describe(&line, &output)))
}

/// The findings of a JSON check report.
fn findings(report: &Value) -> Vec<&Value> {
    report["findings"].as_array().map(|list| list.iter().collect()).unwrap_or_default()
}

/// The finding of `check` about `object`, or an error listing what was found.
fn finding<'a>(report: &'a Value, check: &str, object: &str) -> anyhow::Result<&'a Value> {
    findings(report)
        .into_iter()
        .find(|f| f["check"] == check && f["object"] == object)
        .with_context(|| format!("no [{check}] finding about {object:?} in:\n{report:#}"))
}

fn text_of(value: &Value) -> &str {
    value.as_str().unwrap_or("")
}

#[test]
fn ipam_show_prints_calicoctls_table_for_the_example() -> anyhow::Result<()> {
    let bin = agent_bin();
    if !bin.exists() {
        bail!("{} does not exist: build it with `cargo build -p dataplane`", bin.display());
    }
    let datastore = format!("file:{}", workspace_root().join(EXAMPLE).display());
    let output =
        std::process::Command::new(&bin).args(["ipam", "show", "--show-blocks", "--datastore", &datastore]).output()?;
    ensure!(output.status.success(), "{}", describe("dataplane ipam show --show-blocks", &output));
    let table = stdout(&output);
    // 3 pods and 2 VTEP addresses in the /16; per block, its node's pods and VTEP.
    let expected = "\
+----------+---------------+-----------+------------+--------------+
| GROUPING |     CIDR      | IPS TOTAL | IPS IN USE |   IPS FREE   |
+----------+---------------+-----------+------------+--------------+
| IP Pool  | 10.244.0.0/16 |     65536 | 5 (0%)     | 65531 (100%) |
| Block    | 10.244.1.0/26 |        64 | 3 (5%)     | 61 (95%)     |
| Block    | 10.244.2.0/26 |        64 | 2 (3%)     | 62 (97%)     |
+----------+---------------+-----------+------------+--------------+
";
    ensure!(table == expected, "ipam show --show-blocks printed:\n{table}\nexpected:\n{expected}");

    let output =
        std::process::Command::new(&bin).args(["ipam", "show", "--datastore", &datastore, "-o", "json"]).output()?;
    ensure!(output.status.success(), "{}", describe("dataplane ipam show -o json", &output));
    let json: Value = serde_json::from_slice(&output.stdout)?;
    let pool = &json["pools"][0];
    ensure!(
        pool["cidr"] == "10.244.0.0/16" && pool["total"] == 65536 && pool["in_use"] == 5 && pool["free"] == 65531,
        "unexpected pool numbers: {json:#}"
    );
    ensure!(pool.get("blocks").is_none(), "blocks listed without --show-blocks: {json:#}");
    Ok(())
}

#[test]
fn check_is_silent_on_a_healthy_cluster_and_names_each_break_with_its_fix() -> anyhow::Result<()> {
    let Some(mut cluster) =
        cluster("check_is_silent_on_a_healthy_cluster_and_names_each_break_with_its_fix", AgentMode::Bpf)?
    else {
        return Ok(());
    };
    for node in ["node-1", "node-2"] {
        let (code, text, report) = check(&cluster, node)?;
        ensure!(
            code == 0 && findings(&report).is_empty() && text.contains("no problems found"),
            "check on healthy {node} exited {code}:\n{text}\n{}",
            cluster.logs()
        );
        // The programs of the uplink and of each pod were looked at, both hooks, and the VXLAN GRO
        // anchor's ingress (the example's pool is VXLAN).
        let links = report["checked"]["links"].as_u64().unwrap_or(0);
        let expected_links = if node == "node-1" { 7 } else { 5 };
        ensure!(links == expected_links, "{node}: checked {links} links, expected {expected_links}: {report:#}");
    }

    // Nothing may repair what is broken below while check looks at it.
    cluster.stop("node-1")?;
    let pins = cluster.lab.pin_path("node-1");

    // 1. The pod's host route is gone (what the CNI plugin adds).
    let host_route = format!("{WEB_1}/32");
    cluster.on("node-1", &["ip", "route", "del", &host_route, "dev", WEB_1_IFACE])?;
    // 2. A program detached: its link's pin removed, which releases the link.
    let cache_link = pins.join("links").join(format!("ingress_{CACHE_1_IFACE}"));
    fs::remove_file(&cache_link).with_context(|| format!("removing {}", cache_link.display()))?;
    // 3. The route to node-2's block deleted from the routes map (LPM key: prefix length, address).
    let routes_pin = pins.join("routes_v1").to_string_lossy().into_owned();
    dataplane_lab::cmd::run(&[
        "bpftool",
        "map",
        "delete",
        "pinned",
        &routes_pin,
        "key",
        "26",
        "0",
        "0",
        "0",
        "10",
        "244",
        "2",
        "0",
    ])?;

    let (code, text, report) = check(&cluster, "node-1")?;
    eprintln!("dataplane check on the broken node-1:\n{text}");
    ensure!(code == 1, "check exited {code} on a broken node:\n{text}");
    let route = finding(&report, "workloads", WEB_1_ENDPOINT)?;
    ensure!(
        text_of(&route["problem"]).contains(&format!("{host_route} dev {WEB_1_IFACE} is missing"))
            && text_of(&route["fix"])
                .starts_with(&format!("ip route replace {host_route} dev {WEB_1_IFACE} scope link")),
        "host route finding: {route:#}"
    );
    let link = finding(&report, "programs", &format!("from_workload ingress of {CACHE_1_IFACE}"))?;
    ensure!(
        text_of(&link["problem"]).contains("not attached") && text_of(&link["fix"]).contains("restart the agent"),
        "link finding: {link:#}"
    );
    let block = finding(&report, "routes", &format!("block {NODE_2_BLOCK} of node node-2"))?;
    ensure!(text_of(&block["problem"]).contains("no route"), "block finding: {block:#}");
    // Each break once: the map diff does not repeat the block's route.
    ensure!(findings(&report).len() == 3, "expected exactly three findings:\n{text}");
    for needle in ["[workloads]", "[programs]", "[routes]", "fix: ip route replace"] {
        ensure!(text.contains(needle), "the text report lacks {needle:?}:\n{text}");
    }

    // The fixes the findings name: the route back, and the agent restarted.
    cluster.on("node-1", &["ip", "route", "add", &host_route, "dev", WEB_1_IFACE, "scope", "link"])?;
    cluster.start("node-1", &AgentOptions::mode(AgentMode::Bpf))?;
    let (code, text, _) = check(&cluster, "node-1")?;
    ensure!(code == 0, "check after the fixes exited {code}:\n{text}\n{}", cluster.logs());

    // 4. The maps differ from the datastore: the agent programmed one state, the datastore now
    // says node-2's block belongs to node-1 and node-2 has another VTEP MAC.
    cluster.stop("node-1")?;
    let yaml = fs::read_to_string(cluster.datastore())?;
    let edited = yaml.replace("vxlanTunnelMACAddr: 66:d0:00:00:00:02", "vxlanTunnelMACAddr: 66:d0:00:00:00:99");
    ensure!(edited != yaml, "the example's node-2 VTEP MAC moved: update this test");
    let changed = cluster.lab.dir().join("changed.yaml");
    fs::write(&changed, edited)?;
    let (code, text, report) = check_with(&cluster, "node-1", &changed)?;
    ensure!(code == 1, "check against a changed datastore exited {code}:\n{text}");
    let mac = finding(&report, "routes", &format!("block {NODE_2_BLOCK} of node node-2"))?;
    ensure!(
        text_of(&mac["problem"]).contains("VTEP MAC is 66:d0:00:00:00:02")
            && text_of(&mac["problem"]).contains("66:d0:00:00:00:99"),
        "VTEP MAC finding: {mac:#}"
    );
    let node = finding(&report, "maps", "node_v1");
    ensure!(node.is_err(), "node-1's own settings did not change, yet: {node:?}");
    Ok(())
}

#[test]
fn check_reports_datastore_problems_stale_links_and_missing_interfaces() -> anyhow::Result<()> {
    let Some(mut cluster) =
        cluster("check_reports_datastore_problems_stale_links_and_missing_interfaces", AgentMode::Bpf)?
    else {
        return Ok(());
    };
    cluster.stop("node-1")?;

    // A datastore with overlapping pools, a block outside every pool and a VTEP address outside
    // node-1's blocks; the rest as the agents run it.
    let yaml = fs::read_to_string(cluster.datastore())?;
    let mut broken = yaml.replace("ipv4VXLANTunnelAddr: 10.244.1.0", "ipv4VXLANTunnelAddr: 10.244.9.1");
    ensure!(broken != yaml, "the example's node-1 VTEP address moved: update this test");
    broken.push_str(
        "---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: overlapping}
spec: {cidr: 10.244.128.0/17, blockSize: 26, vxlanMode: Always, ipipMode: Never, natOutgoing: false}
---
apiVersion: crd.projectcalico.org/v1
kind: BlockAffinity
metadata: {name: node-2-10-99-0-0-26}
spec: {cidr: 10.99.0.0/26, node: node-2, state: confirmed, deleted: \"false\"}
",
    );
    let path = cluster.lab.dir().join("broken.yaml");
    fs::write(&path, broken)?;
    let (code, text, report) = check_with(&cluster, "node-1", &path)?;
    eprintln!("dataplane check against a broken datastore:\n{text}");
    ensure!(code == 1, "check exited {code}:\n{text}");
    let pool = finding(&report, "pools", "IPPool overlapping")?;
    ensure!(
        text_of(&pool["problem"]).contains("overlaps IPPool default-ipv4-ippool")
            && text_of(&pool["fix"]).contains("must not overlap"),
        "overlap finding: {pool:#}"
    );
    let block = finding(&report, "blocks", "BlockAffinity 10.99.0.0/26")?;
    ensure!(text_of(&block["problem"]).contains("lies in no IP pool"), "block finding: {block:#}");
    let tunnel = finding(&report, "tunnel", "Node node-1")?;
    ensure!(
        text_of(&tunnel["problem"]).contains("10.244.9.1") && text_of(&tunnel["fix"]).contains("10.244.1.0/26"),
        "tunnel finding: {tunnel:#}"
    );
    // The planner's own problems about the same objects are not repeated.
    ensure!(findings(&report).len() == 3, "expected exactly three findings:\n{text}");

    // A pod's interface disappears: the interface, its link and its map entries are named.
    cluster.on("node-1", &["ip", "link", "del", WEB_1_IFACE])?;
    let (code, text, report) = check(&cluster, "node-1")?;
    eprintln!("dataplane check after {WEB_1_IFACE} was deleted:\n{text}");
    ensure!(code == 1, "check exited {code}:\n{text}");
    let gone = finding(&report, "workloads", WEB_1_ENDPOINT)?;
    ensure!(text_of(&gone["problem"]).contains(&format!("interface {WEB_1_IFACE} does not exist")), "{gone:#}");
    let stale = finding(&report, "programs", &format!("link ingress_{WEB_1_IFACE}"))?;
    ensure!(
        text_of(&stale["problem"]).contains("stale") && text_of(&stale["fix"]).contains("rm "),
        "stale link finding: {stale:#}"
    );
    let entry = finding(&report, "maps", &format!("routes_v1 {WEB_1}/32"))?;
    ensure!(text_of(&entry["problem"]).starts_with("extra"), "routes entry finding: {entry:#}");
    Ok(())
}

#[test]
fn check_knows_the_netlink_fallback_its_device_neighbours_and_routes() -> anyhow::Result<()> {
    let Some(mut cluster) =
        cluster("check_knows_the_netlink_fallback_its_device_neighbours_and_routes", AgentMode::Netlink)?
    else {
        return Ok(());
    };
    // --mode auto finds the fallback (no pinned maps, but vxlan.calico and the agent's routes).
    for node in ["node-1", "node-2"] {
        let (code, text, _) = check(&cluster, node)?;
        ensure!(
            code == 0 && text.contains("no problems found"),
            "check on healthy {node} (netlink):\n{text}\n{}",
            cluster.logs()
        );
    }

    cluster.stop("node-1")?;
    // The page's checks, broken: the device down, the peer's VTEP neighbour with a wrong MAC,
    // and the route to node-2's block gone.
    cluster.on("node-1", &["ip", "link", "set", "vxlan.calico", "down"])?;
    cluster.on(
        "node-1",
        &[
            "ip",
            "neigh",
            "replace",
            "10.244.2.0",
            "lladdr",
            "66:d0:00:00:00:99",
            "dev",
            "vxlan.calico",
            "nud",
            "permanent",
        ],
    )?;
    // (Setting the device down already took its routes; delete in case a kernel keeps them.)
    let _ = cluster.on("node-1", &["ip", "route", "del", NODE_2_BLOCK]);
    let (code, text, report) = check(&cluster, "node-1")?;
    eprintln!("dataplane check on the broken netlink node-1:\n{text}");
    ensure!(code == 1, "check exited {code}:\n{text}");
    let device = finding(&report, "fallback", "device vxlan.calico")?;
    ensure!(text_of(&device["fix"]) == "ip link set vxlan.calico up", "device finding: {device:#}");
    let neighbour = finding(&report, "fallback", "neighbour 10.244.2.0 dev vxlan.calico")?;
    ensure!(
        text_of(&neighbour["problem"]).contains("66:d0:00:00:00:99")
            && text_of(&neighbour["fix"])
                == "ip neigh replace 10.244.2.0 lladdr 66:d0:00:00:00:02 dev vxlan.calico nud permanent",
        "neighbour finding: {neighbour:#}"
    );
    let route = finding(&report, "fallback", &format!("route {NODE_2_BLOCK}"))?;
    ensure!(
        text_of(&route["fix"]) == format!("ip route replace {NODE_2_BLOCK} via 10.244.2.0 dev vxlan.calico onlink"),
        "route finding: {route:#}"
    );

    // The fixes the findings name, applied as written, make the check clean again.
    for finding in findings(&report) {
        let fix = text_of(&finding["fix"]);
        ensure!(fix.starts_with("ip ") || fix.starts_with("bridge "), "not a command: {fix}");
        cluster.on("node-1", &fix.split_whitespace().collect::<Vec<_>>())?;
    }
    let (code, text, _) = check(&cluster, "node-1")?;
    ensure!(code == 0, "check after applying the fixes exited {code}:\n{text}");
    // And forcing --mode bpf on this node says the fast path is not there.
    let pins = cluster.lab.pin_path("node-1").to_string_lossy().into_owned();
    let datastore = format!("file:{}", cluster.datastore().display());
    let (line, output) = dataplane(
        &cluster,
        "node-1",
        &["check", "--datastore", &datastore, "--node", "node-1", "--pin-path", &pins, "--mode", "bpf"],
    )?;
    ensure!(
        output.status.code() == Some(1) && stdout(&output).contains("the pinned map cannot be read"),
        "{}",
        describe(&line, &output)
    );
    Ok(())
}

/// One row of the trace table: arguments, the counter the kernel must move, and the verdict.
struct Case {
    args: &'static [&'static str],
    counter: &'static str,
    action: &'static str,
}

#[test]
fn trace_predicts_from_the_live_maps_and_the_kernel_agrees() -> anyhow::Result<()> {
    let Some(cluster) = cluster("trace_predicts_from_the_live_maps_and_the_kernel_agrees", AgentMode::Bpf)? else {
        return Ok(());
    };

    // The example: pod to pod across nodes is VXLAN to node-2.
    let (code, report, run) = trace(&cluster, "node-1", &[WEB_1, WEB_2, "--proto", "tcp", "--dport", "80"])?;
    ensure!(code == 0, "{run}");
    let prediction = &report["prediction"];
    let tunnel = &prediction["output"]["tunnel"];
    ensure!(
        prediction["stat"] == "encap_vxlan"
            && prediction["action"] == "redirect"
            && tunnel["kind"] == "vxlan"
            && tunnel["dst"] == NODE_2_ADDR
            && tunnel["src"] == NODE_1_ADDR
            && tunnel["vni"] == 4096,
        "prediction: {prediction:#}"
    );
    let (_, text) = dataplane(
        &cluster,
        "node-1",
        &[
            "trace",
            WEB_1,
            WEB_2,
            "--proto",
            "tcp",
            "--dport",
            "80",
            "--pin-path",
            &cluster.lab.pin_path("node-1").to_string_lossy(),
        ],
    )?;
    let text = stdout(&text);
    eprintln!("dataplane trace {WEB_1} {WEB_2} --proto tcp --dport 80 on node-1:\n{text}");
    ensure!(
        text.contains("counter: encap_vxlan")
            && text.contains(&format!("output: VXLAN {NODE_1_ADDR} -> {NODE_2_ADDR}")),
        "trace text:\n{text}"
    );

    // Generate a real translated flow first, so "established" and reverse NAT have a flow to find:
    // web-1 sends UDP from port 40000 to the external host's port 9000.
    let web1 = cluster.lab.pod("default/web-1")?.clone();
    let external = cluster.lab.external().addr.to_string();
    let socket = udp_socket_in(&web1.netns, 40000, None)?;
    let pins = cluster.lab.pin_path("node-1").to_string_lossy().into_owned();
    let bin = cluster.bin().to_string_lossy().into_owned();
    let mut flows = Value::Null;
    let mut nat_port = None;
    // The first datagram may wait for the pod's ARP of its gateway: send until the flow shows.
    for _ in 0..20 {
        socket.send_to(b"hi", format!("{external}:9000")).context("sending from web-1")?;
        thread::sleep(Duration::from_millis(100));
        let output = dataplane_lab::cmd::run(&[bin.as_str(), "conntrack", "--pin-path", &pins, "-o", "json"])?;
        flows = serde_json::from_slice(&output.stdout)?;
        nat_port = flows
            .as_array()
            .and_then(|list| list.iter().find(|f| f["pod_port"] == 40000 && f["peer"] == external.as_str()))
            .and_then(|f| f["nat_port"].as_u64());
        if nat_port.is_some() {
            break;
        }
    }
    let nat_port = nat_port
        .with_context(|| format!("web-1's UDP flow to {external}:9000 is not in conntrack: {flows:#}"))?
        .to_string();
    let conntrack_before = flows.as_array().map(Vec::len).unwrap_or(0);

    let cases = [
        Case { args: &[WEB_1, WEB_2, "--proto", "tcp", "--dport", "80"], counter: "encap_vxlan", action: "redirect" },
        Case { args: &[WEB_1, "10.244.1.3", "--proto", "udp"], counter: "delivered_local", action: "redirect" },
        Case { args: &[WEB_1, "10.244.1.50"], counter: "drop_blackhole", action: "drop" },
        Case { args: &["10.244.1.99", WEB_2], counter: "drop_spoofed_source", action: "drop" },
        Case { args: &[WEB_1, WEB_2, "--ttl", "1"], counter: "drop_ttl_exceeded", action: "drop" },
        Case { args: &[WEB_1, WEB_2, "--size", "1480"], counter: "icmp_frag_needed", action: "redirect" },
        Case { args: &[WEB_1, NODE_1_ADDR], counter: "pass_to_stack", action: "pass" },
        Case {
            args: &[WEB_1, "192.0.2.10", "--proto", "udp", "--dport", "9999"],
            counter: "snat_new",
            action: "redirect",
        },
        Case { args: &[WEB_1, "192.0.2.10", "--proto", "icmp"], counter: "snat_new", action: "redirect" },
        Case {
            args: &[WEB_1, "192.0.2.10", "--proto", "udp", "--sport", "40000", "--dport", "9000"],
            counter: "snat_established",
            action: "redirect",
        },
        Case { args: &[WEB_2, WEB_1, "--from", "uplink"], counter: "decap_vxlan", action: "redirect" },
        Case { args: &[WEB_2, "10.244.1.50", "--from", "uplink"], counter: "drop_blackhole", action: "drop" },
        Case {
            args: &[WEB_2, WEB_1, "--from", "uplink", "--outer-src", "10.100.0.99"],
            counter: "drop_unknown_peer",
            action: "drop",
        },
        // node-2 may send IPIP too, though the pool is VXLAN: a mode change drops nothing.
        Case {
            args: &[WEB_2, WEB_1, "--from", "uplink", "--encap", "ipip"],
            counter: "decap_ipip",
            action: "redirect",
        },
        Case {
            args: &["192.0.2.10", NODE_1_ADDR, "--from", "uplink", "--dport", "22"],
            counter: "pass_to_stack",
            action: "pass",
        },
        Case { args: &[NODE_1_ADDR, WEB_2, "--from", "host"], counter: "encap_vxlan", action: "pass" },
        Case { args: &[NODE_1_ADDR, "192.0.2.10", "--from", "host"], counter: "egress_unchanged", action: "pass" },
        // A pod's VXLAN would pass for its node's own once translated: dropped.
        Case {
            args: &[WEB_1, "192.0.2.10", "--proto", "udp", "--dport", "4789"],
            counter: "drop_tunnel_from_workload",
            action: "drop",
        },
        // The gateway's ARP answer, and the rest of ARP left to the kernel.
        Case { args: &[WEB_1, "169.254.1.1", "--proto", "arp"], counter: "arp_replied", action: "redirect" },
        Case { args: &[WEB_1, WEB_2, "--proto", "arp"], counter: "arp_passed", action: "pass" },
        // IP options: the kernel's, from a pod and inside a tunnel.
        Case { args: &[WEB_1, WEB_2, "--ip-options"], counter: "pass_to_stack", action: "pass" },
        Case { args: &[WEB_2, WEB_1, "--from", "uplink", "--ip-options"], counter: "decap_vxlan", action: "pass" },
        // Fragments: a peer's VXLAN fragments go to the kernel, which reassembles them for the
        // anchor (later ones of no translated datagram too); natOutgoing cannot translate a later
        // fragment whose first it did not see.
        Case {
            args: &[WEB_2, WEB_1, "--from", "uplink", "--fragment", "first"],
            counter: "pass_tunnel_fragment",
            action: "pass",
        },
        Case {
            args: &[WEB_2, WEB_1, "--from", "uplink", "--fragment", "later"],
            counter: "pass_untracked_fragment",
            action: "pass",
        },
        Case {
            args: &[WEB_1, "192.0.2.10", "--proto", "udp", "--dport", "9999", "--fragment", "later"],
            counter: "drop_nat_fragment",
            action: "drop",
        },
        Case {
            args: &[WEB_1, WEB_2, "--fragment", "first", "--size", "1480"],
            counter: "encap_vxlan",
            action: "redirect",
        },
        // Into a pod from outside the pools: untouched, and the flow is remembered (the inject
        // checks the private conntrack copy for it).
        Case { args: &[NODE_2_ADDR, WEB_1, "--from", "into-pod"], counter: "egress_unchanged", action: "pass" },
    ];
    let mut table = String::new();
    for case in &cases {
        let mut args = case.args.to_vec();
        args.push("--inject");
        let (code, report, run) = trace(&cluster, "node-1", &args)?;
        let prediction = &report["prediction"];
        let inject = &report["inject"];
        table.push_str(&format!(
            "{:<70} predicted {:<20} kernel {}\n",
            case.args.join(" "),
            text_of(&prediction["stat"]),
            inject["counters"]
        ));
        ensure!(
            prediction["stat"] == case.counter && prediction["action"] == case.action,
            "trace {}: predicted {} {}, expected {} {}\n{run}",
            case.args.join(" "),
            prediction["action"],
            prediction["stat"],
            case.action,
            case.counter
        );
        ensure!(
            code == 0 && inject["mismatches"].as_array().is_some_and(Vec::is_empty),
            "trace {} --inject: the kernel disagrees\n{run}",
            case.args.join(" ")
        );
        ensure!(
            inject["counters"][case.counter] == 1,
            "trace {}: counters {}\n{run}",
            case.args.join(" "),
            inject["counters"]
        );
    }
    eprintln!("trace table on node-1:\n{table}");
    // The flow remembered on the way into the pod is named (and --inject found it in the map).
    let (_, report, run) = trace(&cluster, "node-1", &[NODE_2_ADDR, WEB_1, "--from", "into-pod", "--inject"])?;
    let remembered = format!("tcp {WEB_1}:80 -> {NODE_2_ADDR}:33333");
    ensure!(report["prediction"]["remembers"] == remembered.as_str(), "into-pod trace:\n{run}");

    // The reply to web-1's real flow, arriving from the external host, goes back to web-1.
    let (code, report, run) = trace(
        &cluster,
        "node-1",
        &[
            "192.0.2.10",
            NODE_1_ADDR,
            "--from",
            "uplink",
            "--proto",
            "udp",
            "--sport",
            "9000",
            "--dport",
            &nat_port,
            "--inject",
        ],
    )?;
    let prediction = &report["prediction"];
    ensure!(
        code == 0
            && prediction["stat"] == "reverse_nat"
            && prediction["output"]["dst"] == WEB_1
            && prediction["output"]["dport"] == 40000,
        "reverse NAT trace:\n{run}"
    );

    // The spoofed source, as a person reads it.
    let (_, text) = dataplane(&cluster, "node-1", &["trace", "10.244.1.99", WEB_2, "--inject", "--pin-path", &pins])?;
    let text = stdout(&text);
    eprintln!("dataplane trace 10.244.1.99 {WEB_2} --inject on node-1:\n{text}");
    ensure!(
        text.contains("counter: drop_spoofed_source") && text.contains("prediction matched"),
        "spoofed trace text:\n{text}"
    );

    // The natOutgoing example: SNAT to the node's address, confirmed by the kernel.
    let (code, report, run) =
        trace(&cluster, "node-1", &[WEB_1, "192.0.2.10", "--proto", "tcp", "--dport", "443", "--inject"])?;
    ensure!(
        code == 0
            && report["prediction"]["output"]["src"] == NODE_1_ADDR
            && report["inject"]["output"]["src"] == NODE_1_ADDR,
        "SNAT trace:\n{run}"
    );

    // The injected SNAT runs used a private conntrack table: the live one has no new flow.
    let flows = dataplane_lab::cmd::run(&[bin.as_str(), "conntrack", "--pin-path", &pins, "-o", "json"])?;
    let flows: Value = serde_json::from_slice(&flows.stdout)?;
    let after = flows.as_array().map(Vec::len).unwrap_or(0);
    ensure!(after == conntrack_before, "trace --inject changed the live conntrack table: {flows:#}");
    // Nor did the live counters move for synthetic packets: the spoofed packet was never real.
    let stats = dataplane_lab::cmd::run(&[bin.as_str(), "stats", "--pin-path", &pins, "-o", "json"])?;
    let stats: Value = serde_json::from_slice(&stats.stdout)?;
    ensure!(stats["drops"]["drop_spoofed_source"] == 0, "trace --inject moved the live counters: {stats:#}");

    // Real traffic still flows (the injections left the fast path alone).
    thread::sleep(Duration::from_millis(100));
    let ping = cluster.lab.exec_status(&web1.netns, &["ping", "-c", "2", "-W", "2", WEB_2])?;
    ensure!(ping.status.success(), "ping web-1 -> web-2 after the traces:\n{}\n{}", stdout(&ping), cluster.logs());
    Ok(())
}
