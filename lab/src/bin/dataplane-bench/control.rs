//! The control plane at scale: how long the agent takes to program N blocks from an empty start,
//! how long it takes to converge after one change, and its peak memory.
//!
//! For each N, a fresh two-node lab (examples/two-nodes.yaml, so that nothing is pinned yet) and
//! one agent on node-1 whose datastore file is that cluster plus N generated blocks: a second
//! pool, 100.64.0.0/10 in /28 blocks (room for 262,144), ten blocks per generated node, each
//! node with its own address (10.101.0.0/16) and VTEP. Timed from the agent's start to its
//! "fast path programmed" line (process start, feature probe, program load, YAML parse, plan and
//! map writes); the change is one more block for one of the generated nodes, written to the file
//! with a rename, timed from the rename to the line that reports one more route (this includes
//! the file datastore's 1-second poll). The agent's own reconcile time (`elapsed_ms` of the line)
//! is reported too. Peak memory: VmHWM of the agent process after the change.

use std::{
    fmt::Write as _,
    fs,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use dataplane_lab::{Lab, LabOptions};

/// Blocks per generated node.
const BLOCKS_PER_NODE: usize = 10;
/// The agent line that ends a reconcile of the fast path.
const PROGRAMMED: &str = "fast path programmed";

/// The control plane's figures at one N.
#[derive(Clone, Debug)]
pub struct ControlCost {
    /// Generated blocks.
    pub blocks: usize,
    /// Generated nodes.
    pub nodes: usize,
    /// Routes the agent reported after the first reconcile.
    pub routes: u64,
    /// Seconds from the agent's start to the first "fast path programmed".
    pub program_seconds: f64,
    /// The first reconcile's own time (the line's elapsed_ms).
    pub program_reconcile_ms: u64,
    /// Seconds from the changed file's rename to the line with one more route.
    pub converge_seconds: f64,
    /// That reconcile's own time.
    pub converge_reconcile_ms: u64,
    /// VmHWM of the agent after the change, KiB.
    pub peak_kib: u64,
    /// Size of the datastore file, bytes.
    pub file_bytes: usize,
}

/// The generated cluster: the example's text plus a pool, `nodes` nodes and their blocks; with
/// `extra`, one more block for the first generated node.
fn generated_cluster(example: &str, blocks: usize, extra: bool) -> String {
    let mut out = String::with_capacity(example.len() + blocks * 220 + blocks / BLOCKS_PER_NODE * 420);
    out.push_str(example);
    out.push_str(
        "\n---\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: bench-pool}\n\
         spec: {cidr: 100.64.0.0/10, blockSize: 28, vxlanMode: Always, ipipMode: Never, natOutgoing: false}\n",
    );
    let nodes = blocks.div_ceil(BLOCKS_PER_NODE);
    for node in 0..nodes {
        let addr = 0x0a65_0000u32 + node as u32 + 1;
        let vtep = block_addr(node * BLOCKS_PER_NODE);
        let _ = write!(
            out,
            "---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {{name: bench-{node}}}\nspec:\n  \
             bgp: {{ipv4Address: {}/16}}\n  ipv4VXLANTunnelAddr: {}\n  vxlanTunnelMACAddr: \"66:d1:00:{:02x}:{:02x}:{:02x}\"\n",
            dotted(addr),
            dotted(vtep),
            (node >> 16) & 0xff,
            (node >> 8) & 0xff,
            node & 0xff
        );
    }
    let mut block = |index: usize, node: usize| {
        let cidr = format!("{}/28", dotted(block_addr(index)));
        let name = cidr.replace(['.', '/'], "-");
        let _ = write!(
            out,
            "---\napiVersion: crd.projectcalico.org/v1\nkind: BlockAffinity\nmetadata: {{name: bench-{node}-{name}}}\n\
             spec: {{cidr: {cidr}, node: bench-{node}, state: confirmed, deleted: \"false\"}}\n"
        );
    };
    for index in 0..blocks {
        block(index, index / BLOCKS_PER_NODE);
    }
    if extra {
        block(blocks, 0);
    }
    out
}

/// The `index`th /28 block of 100.64.0.0/10.
fn block_addr(index: usize) -> u32 {
    0x6440_0000 + (index as u32) * 16
}

fn dotted(addr: u32) -> String {
    let b = addr.to_be_bytes();
    format!("{}.{}.{}.{}", b[0], b[1], b[2], b[3])
}

/// The `key=value` field of a log line, as a number.
fn field(line: &str, key: &str) -> Option<u64> {
    let start = line.find(&format!("{key}="))? + key.len() + 1;
    line[start..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// The "fast path programmed" lines of `log`: (routes, elapsed_ms).
fn programmed_lines(log: &str) -> Vec<(u64, u64)> {
    log.lines()
        .filter(|l| l.contains(PROGRAMMED))
        .filter_map(|l| Some((field(l, "routes")?, field(l, "elapsed_ms")?)))
        .collect()
}

/// VmHWM of process `pid`, KiB.
fn peak_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmHWM:")?.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no VmHWM in {path}"))
}

/// Measures each N of `counts`.
pub fn run(workspace: &Path, agent: &Path, counts: &[usize]) -> anyhow::Result<Vec<ControlCost>> {
    let example_path = workspace.join("examples/two-nodes.yaml");
    let example = fs::read_to_string(&example_path).with_context(|| format!("reading {}", example_path.display()))?;
    let model = dataplane_lab::load_model(&example_path)?;
    let mut results = Vec::new();
    for &blocks in counts {
        let lab = Lab::up(&model, LabOptions::default())?;
        let file = lab.dir().join(format!("cluster-{blocks}.yaml"));
        let text = generated_cluster(&example, blocks, false);
        fs::write(&file, &text).with_context(|| format!("writing {}", file.display()))?;
        let timeout = Duration::from_secs(120 + blocks as u64 / 500);

        let started = Instant::now();
        let mut agent = lab.start_agent("node-1", agent, &file)?;
        agent.wait_ready(timeout)?;
        let program_seconds = started.elapsed().as_secs_f64();
        let Some(&(routes, program_reconcile_ms)) = programmed_lines(&agent.log()).first() else {
            bail!("no `{PROGRAMMED}` line with routes and elapsed_ms in the agent's log:\n{}", agent.log());
        };

        // One more block: written beside the file and renamed over it, so the poll never sees half.
        let changed = generated_cluster(&example, blocks, true);
        let staging = file.with_extension("yaml.new");
        fs::write(&staging, &changed).with_context(|| format!("writing {}", staging.display()))?;
        let started = Instant::now();
        fs::rename(&staging, &file).with_context(|| format!("renaming {}", staging.display()))?;
        let converge_reconcile_ms = loop {
            if let Some(&(_, ms)) = programmed_lines(&agent.log()).iter().find(|(r, _)| *r == routes + 1) {
                break ms;
            }
            if started.elapsed() > timeout {
                bail!("the agent did not program the added block within {timeout:?}:\n{}", agent.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let converge_seconds = started.elapsed().as_secs_f64();
        let peak_kib = peak_kib(agent.pid())?;
        agent.stop()?;
        let cost = ControlCost {
            blocks,
            nodes: blocks.div_ceil(BLOCKS_PER_NODE),
            routes,
            program_seconds,
            program_reconcile_ms,
            converge_seconds,
            converge_reconcile_ms,
            peak_kib,
            file_bytes: text.len(),
        };
        println!(
            "  {blocks:>7} blocks on {:>6} nodes ({:.1} MB of YAML, {routes} routes): programmed in {program_seconds:.2} s \
             (reconcile {program_reconcile_ms} ms), one change in {converge_seconds:.2} s (reconcile {converge_reconcile_ms} ms), \
             peak {:.1} MiB",
            cost.nodes,
            cost.file_bytes as f64 / 1e6,
            peak_kib as f64 / 1024.0
        );
        results.push(cost);
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_cluster_parses_into_the_blocks_and_nodes_asked_for() {
        let example = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\n\
                       spec: {cidr: 10.244.0.0/16, blockSize: 26, vxlanMode: Always}\n";
        let (model, problems) = dataplane::datastore::file::parse(&generated_cluster(example, 25, true))
            .expect("the generated cluster parses");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(model.nodes.len(), 3);
        assert_eq!(model.blocks.len(), 26);
    }

    #[test]
    fn fields_of_the_agent_line() {
        let line = "2026-11-23T18:00:00Z  INFO reconcile{node=node-1}: dataplane::agent: uplink=eth0 routes=12 \
                    workloads=2 peers=1 written=15 elapsed_ms=34 fast path programmed";
        assert_eq!(programmed_lines(line), vec![(12, 34)]);
        assert_eq!(field("a routes=7 b", "routes"), Some(7));
        assert_eq!(field("a b", "routes"), None);
    }
}
