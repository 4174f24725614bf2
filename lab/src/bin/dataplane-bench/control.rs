//! The control plane at scale, with a real etcd as the datastore: how long the agent takes to
//! program N blocks from an empty start, how long one change takes from the etcd put to the
//! entry in the pinned map, how long a burst of puts takes, and the agent's peak memory.
//!
//! For each N, a fresh two-node lab (examples/two-nodes.yaml, so that nothing is pinned yet), an
//! etcd server (Debian's etcd-server) in the fabric namespace, and the example cluster plus N
//! generated blocks ([`dataplane_lab::scale::model`]: a second pool, 100.0.0.0/8 in /28 blocks,
//! ten blocks per generated node up to 10,000 nodes) written into it in Calico's etcdv3 layout (`datastore export`'s
//! keys). One agent on node-1 reads it with `--datastore etcdv3`.
//!
//! - **Program from empty**: from starting the agent to its `fast path programmed` line with
//!   every route (process start, probe, program load, the etcd read, plan, map writes and host
//!   routes); the line's own `elapsed_ms` and, where the agent reports it, `maps_ms` (the map
//!   writes alone).
//! - **One change**: events of five kinds in turn (add a block, delete a block, move a block to
//!   another node, change a node's VTEP MAC, a new workload on node-1), spaced by a random 0-100
//!   ms, each timed from just before the etcd request to the first read of the pinned map that
//!   holds the entry the change implies (polled every 100 µs).
//! - **Burst**: 1,000 new blocks put one after the other as fast as etcd takes them, timed from
//!   the first put to the last block visible in the map.
//! - After each phase the routes, workloads and peers maps and `ip route show proto 200` must
//!   equal what `plan::compute` says for the cluster the bench wrote: the bench fails otherwise.
//! - **Peak memory**: VmHWM of the agent at the end.
//!
//! The agent runs with a 10-s slow resync, so that the events meet resyncs.

use std::{
    collections::BTreeMap,
    fs,
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use aya::maps::{lpm_trie::Key, HashMap, LpmTrie, Map, MapData};
use dataplane::{
    backend::{
        entries::{self, MapEntries},
        host_routes::{self, HostRoute},
    },
    check,
    datastore::etcd::{export, EtcdConfig},
    model::{Block, Model, Workload as ModelWorkload},
    pinned::PinnedMaps,
    plan,
};
use dataplane_common::{Ipv4Bytes, Route, Workload, ROUTES_MAP, WORKLOADS_MAP};
use dataplane_lab::{etcd, scale, ChildHandle, Lab, LabOptions};

use crate::stats;
use etcd_client::{Client, GetOptions, Txn, TxnOp};
use ipnet::Ipv4Net;

/// The agent line that ends a reconcile of the fast path.
const PROGRAMMED: &str = "fast path programmed";
/// The agent's lines that time the steps of a start from empty, printed with the figures.
const STEPS: [&str; 4] = ["read every key", "read the cluster", "turned into one replace", PROGRAMMED];
/// The node the agent runs on.
const NODE: &str = "node-1";
/// Calico's key prefix.
const PREFIX: &str = "/calico";
/// Events of each phase (at least 200, the kinds in turn).
const EVENTS: usize = 200;
/// Puts of the burst.
const BURST: usize = 1000;
/// The agent's slow resync period: shorter than the change phase, so that its events meet
/// resyncs (each one reads every map and route of the cluster) and their latency shows whether
/// an event waits behind one.
const RESYNC: Duration = Duration::from_secs(10);
/// The slowest events named with the time of their put, to be found in the agent's log.
const SLOWEST: usize = 5;
/// How long one change may take before the bench gives up on it.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// The kinds of change, in the order the events take them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum EventKind {
    AddBlock,
    DeleteBlock,
    MoveBlock,
    VtepChange,
    LocalWorkload,
}

impl EventKind {
    const ALL: [EventKind; 5] = [
        EventKind::AddBlock,
        EventKind::DeleteBlock,
        EventKind::MoveBlock,
        EventKind::VtepChange,
        EventKind::LocalWorkload,
    ];

    /// How the tables name it.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::AddBlock => "add a block",
            EventKind::DeleteBlock => "delete a block",
            EventKind::MoveBlock => "move a block",
            EventKind::VtepChange => "a node's VTEP MAC",
            EventKind::LocalWorkload => "a new local workload",
        }
    }
}

/// The control plane's figures at one N.
#[derive(Clone, Debug)]
pub struct ControlCost {
    /// Generated blocks.
    pub blocks: usize,
    /// Generated nodes.
    pub nodes: usize,
    /// Keys written into etcd.
    pub keys: usize,
    /// Routes in the routes map after the first reconcile.
    pub routes: u64,
    /// Seconds from the agent's start to the first "fast path programmed".
    pub program_seconds: f64,
    /// The first reconcile's own time (the line's elapsed_ms).
    pub program_reconcile_ms: u64,
    /// The first reconcile's map writes (the line's maps_ms), where the agent reports it.
    pub program_maps_ms: Option<u64>,
    /// Seconds from the agent's start to the maps holding every route: the programmed line's
    /// time less what the reconcile did after the maps (attachments, host routes).
    pub maps_ready_seconds: Option<f64>,
    /// Milliseconds from the put to the entry in the map, by kind.
    pub events: BTreeMap<EventKind, Vec<f64>>,
    /// Milliseconds from etcd's acknowledgement of the put (its commit) to the entry in the
    /// map, every kind: the agent's share without etcd's commit.
    pub after_ack: Vec<f64>,
    /// Seconds from the burst's first put to its last block in the map.
    pub burst_seconds: f64,
    /// Of which after the last put returned.
    pub burst_after_last_put_ms: f64,
    /// VmHWM of the agent at the end, KiB.
    pub peak_kib: u64,
}

/// A small deterministic generator for the events' choices and spacing (splitmix64): the bench
/// needs reproducible, not secure, randomness, and one function is less than a dependency.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Moves this thread into the network namespace `netns` (setns changes only the calling thread),
/// so that its sockets reach the lab's etcd.
fn enter_netns(netns: &str) -> anyhow::Result<()> {
    let path = dataplane_lab::cmd::netns_path(netns);
    let handle = fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns(2) on a valid descriptor; it moves only this thread.
    if unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns({path}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Starts etcd in the fabric namespace on `endpoint` with its data in the lab's directory, and
/// waits until it answers.
fn start_etcd(lab: &Lab, endpoint: &str) -> anyhow::Result<ChildHandle> {
    // 8 GiB: the million-block cluster and its history fit.
    let argv = etcd::command(lab, "bench", endpoint, &["--quota-backend-bytes", "8589934592"])?;
    Ok(etcd::start(lab, &argv, endpoint)?.0)
}

/// The bench's own connection to etcd, on the thread that entered the fabric namespace.
struct Etcd {
    runtime: tokio::runtime::Runtime,
    client: Client,
    /// When etcd acknowledged the last transaction (committed it).
    acked: Option<Instant>,
}

impl Etcd {
    /// Connects to `endpoint`, retrying while etcd starts.
    fn connect(endpoint: &str, etcd: &mut ChildHandle) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("a tokio runtime")?;
        let started = Instant::now();
        loop {
            let attempt = runtime.block_on(async {
                let mut client = Client::connect([endpoint], None).await?;
                client.status().await?;
                Ok::<_, etcd_client::Error>(client)
            });
            match attempt {
                Ok(client) => return Ok(Etcd { runtime, client, acked: None }),
                Err(error) => {
                    if let Some(status) = etcd.try_exit()? {
                        bail!("etcd exited with {status}:\n{}", etcd.log());
                    }
                    if started.elapsed() > Duration::from_secs(30) {
                        bail!("etcd did not answer on {endpoint} within 30 s ({error}):\n{}", etcd.log());
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Reads every key under `prefix` in pages of `page` keys, as the agent does but decoding
    /// nothing: etcd's and the transport's share of the agent's read. Returns the keys and the
    /// bytes of keys and values.
    fn read_paged(&mut self, prefix: &str, page: i64) -> anyhow::Result<(usize, usize)> {
        let mut kv = self.client.kv_client().max_decoding_message_size(MAX_MESSAGE);
        let end = dataplane::datastore::etcd::keys::range_end(prefix.as_bytes());
        self.runtime.block_on(async {
            let (mut keys, mut bytes, mut revision) = (0, 0, 0);
            let mut start = prefix.as_bytes().to_vec();
            loop {
                let mut options = GetOptions::new().with_range(end.clone()).with_limit(page);
                if revision > 0 {
                    options = options.with_revision(revision);
                }
                let response = kv.get(start.clone(), Some(options)).await.context("an etcd range read")?;
                revision = response.header().map_or(revision, |header| header.revision());
                keys += response.kvs().len();
                bytes += response.kvs().iter().map(|pair| pair.key().len() + pair.value().len()).sum::<usize>();
                match response.kvs().last() {
                    Some(last) if response.more() => {
                        start = last.key().to_vec();
                        start.push(0);
                    }
                    _ => return Ok((keys, bytes)),
                }
            }
        })
    }

    /// Puts and deletes in one transaction.
    fn txn(&mut self, puts: &BTreeMap<String, String>, deletes: &[String]) -> anyhow::Result<()> {
        let mut ops: Vec<TxnOp> = deletes.iter().map(|key| TxnOp::delete(key.as_str(), None)).collect();
        ops.extend(puts.iter().map(|(key, value)| TxnOp::put(key.as_str(), value.as_str(), None)));
        let client = &mut self.client;
        self.runtime.block_on(client.txn(Txn::new().and_then(ops))).context("an etcd transaction")?;
        self.acked = Some(Instant::now());
        Ok(())
    }
}

/// Largest range response the bench's client takes (a page of 10,000 allocation blocks).
const MAX_MESSAGE: usize = 256 << 20;
/// Page sizes of the bench's own range reads, to split etcd's time from the agent's decoding:
/// the agent's page and a larger one.
const PAGES: [i64; 2] = [2_000, 10_000];

/// Seconds `etcdctl get --prefix PREFIX` takes with `flags` (its output thrown away), from this
/// thread's network namespace.
fn etcdctl_get(endpoint: &str, flags: &[&str]) -> anyhow::Result<f64> {
    let started = Instant::now();
    let status = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "--command-timeout=300s", "get", "--prefix", &format!("{PREFIX}/")])
        .args(flags)
        .stdout(std::process::Stdio::null())
        .status()
        .context("running etcdctl")?;
    ensure!(status.success(), "etcdctl get {flags:?} failed ({status})");
    Ok(started.elapsed().as_secs_f64())
}

/// Times etcd alone serving the cluster: etcdctl (the count, keys only, keys and values) and
/// the bench's own paged range reads, printed beside the agent's read.
fn etcd_alone(etcd: &mut Etcd, endpoint: &str) -> anyhow::Result<()> {
    // etcdctl 3.4 has no --count-only: one key and the range's count in the JSON answer.
    let count = etcdctl_get(endpoint, &["--limit=1", "--write-out=json"])?;
    let keys = etcdctl_get(endpoint, &["--keys-only"])?;
    let whole = etcdctl_get(endpoint, &[])?;
    println!("    etcd alone: etcdctl get --prefix: the count (--limit=1) {count:.2} s, --keys-only {keys:.2} s, keys and values {whole:.2} s");
    for page in PAGES {
        let started = Instant::now();
        let (keys, bytes) = etcd.read_paged(&format!("{PREFIX}/"), page)?;
        println!(
            "    etcd alone: range reads of {page} keys, no decoding: {keys} keys, {:.1} MiB in {:.2} s",
            bytes as f64 / (1 << 20) as f64,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Calico's keys for `model` (which holds only what the change writes).
fn keys_of(model: &Model) -> anyhow::Result<BTreeMap<String, String>> {
    export::keys(model, PREFIX)
}

/// A model holding only `blocks`.
fn only_blocks(blocks: Vec<Block>) -> Model {
    Model { blocks, ..Model::default() }
}

/// What the cluster in etcd is, as the bench wrote it.
struct Cluster {
    model: Model,
    /// Generated block index -> its owner node's number, for the blocks that exist.
    owners: BTreeMap<usize, usize>,
    /// The next generated block index never used.
    next_block: usize,
    /// Generated nodes.
    nodes: usize,
    /// VTEP MAC changes so far per node.
    generations: BTreeMap<usize, u8>,
    /// New local workloads so far.
    workloads: usize,
}

impl Cluster {
    fn block_position(&self, index: usize) -> Option<usize> {
        let cidr = scale::block_cidr(index);
        self.model.blocks.iter().position(|b| b.cidr == cidr)
    }
}

/// The routes map entry that `model` gives the prefix `key` on node-1, or the entry a lookup
/// of it then falls back to (the pool's), computed by the agent's own plan and translation on a
/// model cut down to what decides it.
fn expected_route(
    base: &Model,
    extra_nodes: &[dataplane::model::Node],
    blocks: &[Block],
    key: (u32, Ipv4Bytes),
) -> anyhow::Result<Route> {
    let mut model = base.clone();
    model.nodes.extend(extra_nodes.iter().cloned());
    model.blocks.extend(blocks.iter().cloned());
    let entries = planned_entries(&model, &BTreeMap::new(), 0)?;
    let prefix = Ipv4Net::new(Ipv4Addr::from(key.1), key.0 as u8).context("a route key")?;
    // The longest prefix holding the key, as the trie answers a lookup.
    entries
        .routes
        .iter()
        .filter(|((len, addr), _)| {
            Ipv4Net::new(Ipv4Addr::from(*addr), *len as u8).is_ok_and(|net| net.contains(&prefix))
        })
        .max_by_key(|((len, _), _)| *len)
        .map(|(_, route)| *route)
        .with_context(|| format!("the plan has no route holding {prefix}"))
}

/// The map entries `plan::compute` and the backend's translation give `model` on node-1.
fn planned_entries(model: &Model, interfaces: &BTreeMap<String, u32>, uplink: u32) -> anyhow::Result<MapEntries> {
    let (plan, _) = plan::compute(model, NODE).context("planning the generated cluster")?;
    let uplink = entries::Uplink { ifindex: uplink, mtu: 1500, nat_ports: (1, 1) };
    let (entries, _) = entries::from_plan(&plan, uplink, |name| interfaces.get(name).copied(), &BTreeMap::new());
    Ok(entries)
}

/// Interface name -> ifindex in `netns` (`ip -o link show`).
fn interfaces(lab: &Lab, netns: &str) -> anyhow::Result<BTreeMap<String, u32>> {
    let text = lab.exec_stdout(netns, &["ip", "-o", "link", "show"])?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(": ");
            let index = fields.next()?.trim().parse().ok()?;
            let name = fields.next()?.split('@').next()?.to_owned();
            Some((name, index))
        })
        .collect())
}

/// `ip -j route show proto 200` in `netns`, as the agent's own route type.
fn kernel_host_routes(
    lab: &Lab,
    netns: &str,
    interfaces: &BTreeMap<String, u32>,
) -> anyhow::Result<BTreeMap<Ipv4Net, HostRoute>> {
    let proto = host_routes::RTPROT_DATAPLANE.to_string();
    let text = lab.exec_stdout(netns, &["ip", "-j", "route", "show", "proto", &proto])?;
    let routes: Vec<serde_json::Value> =
        serde_json::from_str(if text.trim().is_empty() { "[]" } else { &text }).context("ip -j route output")?;
    let mut out = BTreeMap::new();
    for route in routes {
        let dst = route["dst"].as_str().context("a route without dst")?;
        let prefix: Ipv4Net = if dst.contains('/') { dst.parse()? } else { Ipv4Net::from(dst.parse::<Ipv4Addr>()?) };
        let host = if route["type"].as_str() == Some("blackhole") {
            HostRoute::Blackhole
        } else {
            let gateway = route["gateway"].as_str().context("a via route without gateway")?.parse()?;
            let dev = route["dev"].as_str().context("a via route without dev")?;
            let mtu = route["metrics"]
                .as_array()
                .and_then(|metrics| metrics.iter().find_map(|m| m["mtu"].as_u64()))
                .map(|mtu| mtu as u32);
            HostRoute::Via {
                gateway,
                ifindex: *interfaces.get(dev).with_context(|| format!("no interface {dev}"))?,
                mtu,
            }
        };
        out.insert(prefix, host);
    }
    Ok(out)
}

/// The first few differences of two maps, for the failure message.
fn differences<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
    want: &BTreeMap<K, V>,
    have: &BTreeMap<K, V>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (key, value) in want {
        match have.get(key) {
            None => out.push(format!("missing {key:?} = {value:?}")),
            Some(other) if other != value => out.push(format!("{key:?}: holds {other:?}, want {value:?}")),
            Some(_) => {}
        }
    }
    out.extend(have.keys().filter(|key| !want.contains_key(*key)).map(|key| format!("extra {key:?}")));
    out.truncate(5);
    out
}

/// Fails unless the pinned maps and node-1's proto-200 routes are what `plan::compute` says for
/// `model`.
fn verify(lab: &Lab, model: &Model, pin_path: &Path, phase: &str) -> anyhow::Result<()> {
    let netns = lab.node_netns(NODE)?;
    let interfaces = interfaces(lab, netns)?;
    let uplink_name = &lab.node(NODE)?.uplink;
    let uplink = *interfaces.get(uplink_name).with_context(|| format!("no uplink {uplink_name} in {netns}"))?;
    let want = planned_entries(model, &interfaces, uplink)?;
    let mut wrong = Vec::new();
    let routes = PinnedMaps::at(pin_path).read_routes()?;
    wrong.extend(differences(&want.routes, &routes).into_iter().map(|d| format!("routes map: {d}")));
    let workloads = PinnedMaps::at(pin_path).read_workloads()?;
    wrong.extend(differences(&want.workloads, &workloads).into_iter().map(|d| format!("workloads map: {d}")));
    let peers = PinnedMaps::at(pin_path).read_peers()?;
    wrong.extend(differences(&want.peers, &peers).into_iter().map(|d| format!("peers map: {d}")));

    let (plan, _) = plan::compute(model, NODE)?;
    let default = lab.exec_stdout(netns, &["ip", "-j", "route", "show", "default"])?;
    let default: serde_json::Value = serde_json::from_str(&default).context("ip -j route show default")?;
    let gateway: Option<Ipv4Addr> = default[0]["gateway"].as_str().and_then(|g| g.parse().ok());
    let subnet = plan.node.addr;
    let link = lab.exec_stdout(netns, &["ip", "-j", "link", "show", "dev", uplink_name])?;
    let link: serde_json::Value = serde_json::from_str(&link).context("ip -j link show")?;
    let uplink_mtu = link[0]["mtu"].as_u64().and_then(|m| u32::try_from(m).ok()).context("the uplink's MTU")?;
    let want_host = host_routes::desired(&plan, uplink, uplink_mtu, |peer| {
        if subnet.contains(&peer) {
            peer
        } else {
            gateway.unwrap_or(peer)
        }
    });
    let have_host = kernel_host_routes(lab, netns, &interfaces)?;
    wrong.extend(differences(&want_host, &have_host).into_iter().map(|d| format!("proto 200 routes: {d}")));
    ensure!(
        wrong.is_empty(),
        "after {phase} the kernel differs from plan::compute for the cluster in etcd:\n  {}",
        wrong.join("\n  ")
    );
    println!(
        "    {phase}: {} routes, {} workloads, {} peers and {} proto 200 routes equal plan::compute",
        routes.len(),
        workloads.len(),
        peers.len(),
        have_host.len()
    );
    Ok(())
}

/// The pinned maps the events are read from.
struct Pinned {
    routes: LpmTrie<MapData, Ipv4Bytes, Route>,
    workloads: HashMap<MapData, u32, Workload>,
}

impl Pinned {
    fn open(pin_path: &Path) -> anyhow::Result<Self> {
        let open = |name: &str| {
            MapData::from_pin(pin_path.join(name)).with_context(|| format!("opening {}", pin_path.join(name).display()))
        };
        Ok(Pinned {
            routes: LpmTrie::try_from(Map::LpmTrie(open(ROUTES_MAP)?))?,
            workloads: HashMap::try_from(Map::HashMap(open(WORKLOADS_MAP)?))?,
        })
    }

    /// What a lookup of `key` finds (the longest prefix holding it).
    fn route(&self, key: (u32, Ipv4Bytes)) -> Option<Route> {
        self.routes.get(&Key::new(key.0, key.1), 0).ok()
    }
}

/// What an event must make the maps show.
enum Expect {
    Routes(Vec<((u32, Ipv4Bytes), Route)>),
    Workload(u32, Workload),
}

impl Expect {
    fn met(&self, pinned: &Pinned) -> bool {
        match self {
            Expect::Routes(routes) => routes.iter().all(|(key, route)| pinned.route(*key).as_ref() == Some(route)),
            Expect::Workload(index, workload) => pinned.workloads.get(index, 0).ok().as_ref() == Some(workload),
        }
    }
}

/// Waits until `expect` holds; the time since `started`.
fn wait_for(
    pinned: &Pinned,
    expect: &Expect,
    started: Instant,
    what: &str,
    agent: &ChildHandle,
) -> anyhow::Result<Duration> {
    loop {
        if expect.met(pinned) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > CHANGE_TIMEOUT {
            bail!(
                "{what} did not reach the pinned map within {CHANGE_TIMEOUT:?}; the agent's log: {}",
                agent.log_path().display()
            );
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

fn route_key(cidr: &Ipv4Net) -> (u32, Ipv4Bytes) {
    check::route_key(cidr)
}

/// Makes one change of `kind` in etcd and in `cluster`; returns what the maps must then show and
/// the time from just before the request.
fn event(
    kind: EventKind,
    cluster: &mut Cluster,
    base: &Model,
    etcd: &mut Etcd,
    lab: &Lab,
    random: &mut Random,
) -> anyhow::Result<(Expect, Instant)> {
    let gen_node = |n: usize, generations: &BTreeMap<usize, u8>| {
        scale::node(n, scale::vtep_mac(n, generations.get(&n).copied().unwrap_or(0)))
    };
    match kind {
        EventKind::AddBlock => {
            let (index, owner) = (cluster.next_block, random.below(cluster.nodes));
            cluster.next_block += 1;
            let block = scale::block(index, owner);
            let expect = expected_route(
                base,
                &[gen_node(owner, &cluster.generations)],
                std::slice::from_ref(&block),
                route_key(&block.cidr),
            )?;
            let puts = keys_of(&only_blocks(vec![block.clone()]))?;
            cluster.model.blocks.push(block.clone());
            cluster.owners.insert(index, owner);
            let started = Instant::now();
            etcd.txn(&puts, &[])?;
            Ok((Expect::Routes(vec![(route_key(&block.cidr), expect)]), started))
        }
        EventKind::DeleteBlock => {
            let (&index, _) = cluster.owners.iter().nth(random.below(cluster.owners.len())).context("no block left")?;
            let position = cluster.block_position(index).context("a block the bench lost")?;
            let block = cluster.model.blocks.remove(position);
            cluster.owners.remove(&index);
            let deletes: Vec<String> = keys_of(&only_blocks(vec![block.clone()]))?.into_keys().collect();
            let expect = expected_route(base, &[], &[], route_key(&block.cidr))?;
            let started = Instant::now();
            etcd.txn(&BTreeMap::new(), &deletes)?;
            Ok((Expect::Routes(vec![(route_key(&block.cidr), expect)]), started))
        }
        EventKind::MoveBlock => {
            let (&index, &from) =
                cluster.owners.iter().nth(random.below(cluster.owners.len())).context("no block left")?;
            let to = (from + 1 + random.below(cluster.nodes - 1)) % cluster.nodes;
            let position = cluster.block_position(index).context("a block the bench lost")?;
            let old = cluster.model.blocks[position].clone();
            let new = scale::block(index, to);
            // The old affinity goes; the new one and the allocation block (its affinity) are put.
            let old_keys = keys_of(&only_blocks(vec![old]))?;
            let puts = keys_of(&only_blocks(vec![new.clone()]))?;
            let deletes: Vec<String> = old_keys.into_keys().filter(|key| !puts.contains_key(key)).collect();
            let expect = expected_route(
                base,
                &[gen_node(to, &cluster.generations)],
                std::slice::from_ref(&new),
                route_key(&new.cidr),
            )?;
            cluster.model.blocks[position] = new.clone();
            cluster.owners.insert(index, to);
            let started = Instant::now();
            etcd.txn(&puts, &deletes)?;
            Ok((Expect::Routes(vec![(route_key(&new.cidr), expect)]), started))
        }
        EventKind::VtepChange => {
            let n = random.below(cluster.nodes);
            let generation = cluster.generations.entry(n).or_insert(0);
            *generation = generation.wrapping_add(1);
            let node = gen_node(n, &cluster.generations);
            let owned: Vec<Block> = cluster.model.blocks.iter().filter(|b| b.node == node.name).cloned().collect();
            let mut expect = Vec::new();
            for block in &owned {
                expect.push((
                    route_key(&block.cidr),
                    expected_route(base, std::slice::from_ref(&node), &owned, route_key(&block.cidr))?,
                ));
            }
            let puts = keys_of(&Model { nodes: vec![node.clone()], ..Model::default() })?;
            let slot = cluster.model.nodes.iter_mut().find(|m| m.name == node.name).context("a node the bench lost")?;
            *slot = node;
            let started = Instant::now();
            etcd.txn(&puts, &[])?;
            Ok((Expect::Routes(expect), started))
        }
        EventKind::LocalWorkload => {
            let i = cluster.workloads;
            cluster.workloads += 1;
            // Its veth first (not timed): the agent programs workloads whose interface exists.
            let interface = format!("calibench{i:05x}");
            let netns = lab.node_netns(NODE)?;
            let peer = format!("benchp{i:05x}");
            lab.exec(netns, &["ip", "link", "add", &interface, "type", "veth", "peer", "name", &peer])?;
            lab.exec(netns, &["ip", "link", "set", &interface, "up"])?;
            lab.exec(netns, &["ip", "link", "set", &peer, "up"])?;
            let ifindex = *interfaces(lab, netns)?.get(&interface).context("the dummy interface")?;
            // node-1's example block is 10.244.1.0/26; the bench's pods take 10.244.1.10 on.
            let addr = Ipv4Addr::new(10, 244, 1, 10 + (i % 50) as u8);
            ensure!(i < 50, "more local workloads than node-1's block has room for");
            let workload = ModelWorkload {
                namespace: "bench".into(),
                name: format!("node--1-k8s-bench--{i}-eth0"),
                node: NODE.into(),
                addrs: vec![Ipv4Net::from(addr)],
                interface: interface.clone(),
                mac: Some(dataplane::model::MacAddr([0x0a, 0x58, 10, 244, 1, 10 + i as u8])),
            };
            let mut small = base.clone();
            small.workloads.push(workload.clone());
            let entries = planned_entries(&small, &BTreeMap::from([(interface, ifindex)]), 0)?;
            let value = *entries.workloads.get(&ifindex).context("the plan left the bench's workload out")?;
            let puts = keys_of(&Model { workloads: vec![workload.clone()], ..Model::default() })?;
            cluster.model.workloads.push(workload);
            let started = Instant::now();
            etcd.txn(&puts, &[])?;
            Ok((Expect::Workload(ifindex, value), started))
        }
    }
}

/// VmHWM of process `pid`, KiB.
fn peak_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmHWM:")?.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no VmHWM in {path}"))
}

/// The `key=value` field of a log line, as a number.
fn field(line: &str, key: &str) -> Option<u64> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    line[start..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Measures each N of `counts`; the agent's log of each N is kept in `logs` as
/// `control-agent-<N>.log`, to read beside the slowest events.
pub fn run(workspace: &Path, agent: &Path, counts: &[usize], logs: &Path) -> anyhow::Result<Vec<ControlCost>> {
    let example_path = workspace.join("examples/two-nodes.yaml");
    let base = dataplane_lab::load_model(&example_path)?;
    let mut results = Vec::new();
    for &blocks in counts {
        let lab = Lab::up(&base, LabOptions::default())?;
        // The measurement runs on a thread inside the fabric namespace, where etcd listens.
        let cost = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    enter_netns(lab.fabric_netns())?;
                    measure(&lab, &base, agent, blocks, logs)
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the control-plane measurement panicked"))?
        })?;
        results.push(cost);
    }
    Ok(results)
}

/// One N, in a lab that is up, on a thread in the fabric namespace.
fn measure(lab: &Lab, base: &Model, agent: &Path, blocks: usize, logs: &Path) -> anyhow::Result<ControlCost> {
    let endpoint = format!("http://{}:2379", lab.node(NODE)?.gateway);
    let mut etcd_process = start_etcd(lab, &endpoint)?;
    let mut etcd = Etcd::connect(&endpoint, &mut etcd_process)?;
    // The base model's pool and nodes decide the expected entries; the scale pool too.
    let small = scale::model(base, 0, 0);
    let model = scale::model(base, blocks, 0);
    let nodes = scale::nodes_for(blocks);
    let keys = keys_of(&model)?;
    let started = Instant::now();
    let config = EtcdConfig { endpoints: vec![endpoint.clone()], prefix: PREFIX.into(), ..EtcdConfig::default() };
    let written = etcd.runtime.block_on(export::write(&config, &keys))?;
    println!(
        "  {blocks} blocks on {nodes} nodes: {} keys written into etcd in {} transactions, {:.1} s",
        written.keys,
        written.transactions,
        started.elapsed().as_secs_f64()
    );

    etcd_alone(&mut etcd, &endpoint)?;

    let pin_path = lab.pin_path(NODE);
    let pin_arg = pin_path.to_string_lossy();
    let bin = agent.to_string_lossy();
    let resync = RESYNC.as_secs().to_string();
    let argv = [
        &*bin,
        "run",
        "--datastore",
        "etcdv3",
        "--etcd-endpoints",
        &endpoint,
        "--node",
        NODE,
        "--pin-path",
        &pin_arg,
        "--resync-interval",
        &resync,
    ];
    let expected_routes = plan::compute(&model, NODE)?.0.routes.len() as u64;
    let started = Instant::now();
    let mut agent = lab.spawn(lab.node_netns(NODE)?, &argv, "agent-node-1")?;
    let timeout = Duration::from_secs(120 + blocks as u64 / 1000);
    let line = loop {
        let log = agent.log();
        if let Some(line) = log.lines().find(|l| l.contains(PROGRAMMED)) {
            break line.to_owned();
        }
        if let Some(status) = agent.try_exit()? {
            bail!("the agent exited with {status}:\n{log}");
        }
        ensure!(started.elapsed() < timeout, "the agent did not program within {timeout:?}:\n{log}");
        std::thread::sleep(Duration::from_millis(5));
    };
    let program_seconds = started.elapsed().as_secs_f64();
    // Where the start went: the agent's own lines for the etcd read, the replace and the reconcile.
    for line in agent.log().lines().filter(|l| STEPS.iter().any(|step| l.contains(step))) {
        println!("    agent: {}", line.split_once("INFO ").map_or(line, |(_, rest)| rest));
    }
    let routes = field(&line, "routes").context("no routes= in the programmed line")?;
    ensure!(routes == expected_routes, "the first reconcile has {routes} routes, want {expected_routes}: {line}");
    let program_reconcile_ms = field(&line, "elapsed_ms").context("no elapsed_ms= in the programmed line")?;
    let program_maps_ms = field(&line, "maps_ms");
    let maps_ready_seconds =
        program_maps_ms.map(|maps| program_seconds - program_reconcile_ms.saturating_sub(maps) as f64 / 1e3);
    println!(
        "  programmed from empty in {program_seconds:.2} s (reconcile {program_reconcile_ms} ms{})",
        maps_ready_seconds.map(|s| format!(", every route in the maps after {s:.2} s")).unwrap_or_default()
    );
    let mut cluster = Cluster {
        owners: (0..blocks).map(|index| (index, scale::node_of(index))).collect(),
        model,
        next_block: blocks,
        nodes,
        generations: BTreeMap::new(),
        workloads: 0,
    };
    verify(lab, &cluster.model, &pin_path, "programming from empty")?;

    let pinned = Pinned::open(&pin_path)?;
    let mut random = Random(0x5eed_0000 + blocks as u64);
    let mut events: BTreeMap<EventKind, Vec<f64>> = BTreeMap::new();
    // Every event with the wall-clock time of its put, to find the slowest in the agent's log.
    let mut timeline: Vec<(f64, EventKind, String)> = Vec::new();
    let mut after_ack: Vec<f64> = Vec::new();
    // etcd's own share: from the request to its acknowledgement (the commit, its disk's fsync).
    let mut commits: Vec<f64> = Vec::new();
    for n in 0..EVENTS {
        std::thread::sleep(Duration::from_millis(random.below(101) as u64));
        let kind = EventKind::ALL[n % EventKind::ALL.len()];
        let at = stats::utc_precise();
        let (expect, put) = event(kind, &mut cluster, &small, &mut etcd, lab, &mut random)?;
        let took = wait_for(&pinned, &expect, put, kind.name(), &agent)?;
        let took_ms = took.as_secs_f64() * 1e3;
        let acked = etcd.acked.map_or(Duration::ZERO, |acked| acked.saturating_duration_since(put));
        after_ack.push(took.saturating_sub(acked).as_secs_f64() * 1e3);
        commits.push(acked.as_secs_f64() * 1e3);
        events.entry(kind).or_default().push(took_ms);
        timeline.push((took_ms, kind, at));
    }
    for (kind, samples) in &events {
        println!("    {:<22} {}", kind.name(), summary(samples));
    }
    println!("    {:<22} {}", "etcd's commit", summary(&commits));
    println!("    {:<22} {}", "after etcd's commit", summary(&after_ack));
    timeline.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (took_ms, kind, at) in timeline.iter().take(SLOWEST) {
        println!("      slow: {took_ms:.1} ms, {}, put at {at}", kind.name());
    }
    verify(lab, &cluster.model, &pin_path, "the events")?;

    // The burst: new blocks, one put each, as fast as etcd takes them.
    let mut last = None;
    let first_put = Instant::now();
    for _ in 0..BURST {
        let (index, owner) = (cluster.next_block, random.below(cluster.nodes));
        cluster.next_block += 1;
        let block = scale::block(index, owner);
        etcd.txn(&keys_of(&only_blocks(vec![block.clone()]))?, &[])?;
        cluster.model.blocks.push(block.clone());
        cluster.owners.insert(index, owner);
        last = Some((block, owner));
    }
    let last_put = Instant::now();
    let (block, owner) = last.context("an empty burst")?;
    let node = scale::node(owner, scale::vtep_mac(owner, cluster.generations.get(&owner).copied().unwrap_or(0)));
    let expect = expected_route(&small, &[node], std::slice::from_ref(&block), route_key(&block.cidr))?;
    wait_for(&pinned, &Expect::Routes(vec![(route_key(&block.cidr), expect)]), first_put, "the burst", &agent)?;
    let burst_seconds = first_put.elapsed().as_secs_f64();
    let burst_after_last_put_ms = last_put.elapsed().as_secs_f64() * 1e3;
    println!("    burst of {BURST} puts: the last block in the map {burst_seconds:.2} s after the first put ({burst_after_last_put_ms:.0} ms after the last)");
    // The last block's entry can land before the others of a batch: wait until all are in.
    let deadline = Instant::now() + CHANGE_TIMEOUT;
    loop {
        match verify(lab, &cluster.model, &pin_path, "the burst") {
            Ok(()) => break,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(error) => return Err(error),
        }
    }

    let peak_kib = peak_kib(agent.pid())?;
    agent.terminate(Duration::from_secs(10))?;
    let kept = logs.join(format!("control-agent-{blocks}.log"));
    match fs::copy(agent.log_path(), &kept) {
        Ok(_) => println!("    the agent's log: {}", kept.display()),
        Err(error) => println!("    the agent's log could not be kept ({error})"),
    }
    etcd_process.terminate(Duration::from_secs(10))?;
    println!("    agent peak RSS {:.1} MiB", peak_kib as f64 / 1024.0);
    Ok(ControlCost {
        blocks,
        nodes,
        keys: written.keys,
        routes,
        program_seconds,
        program_reconcile_ms,
        program_maps_ms,
        maps_ready_seconds,
        events,
        after_ack,
        burst_seconds,
        burst_after_last_put_ms,
        peak_kib,
    })
}

/// The `q` quantile (0..=1) of `samples` (nearest rank).
pub fn quantile(samples: &[f64], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// `p50 / p99 / max` of `samples`, in ms.
pub fn summary(samples: &[f64]) -> String {
    format!(
        "{} events: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        samples.len(),
        quantile(samples, 0.5),
        quantile(samples, 0.99),
        quantile(samples, 1.0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_the_agent_line() {
        let line = "2026-11-23T18:00:00Z  INFO reconcile{node=node-1}: dataplane::agent: uplink=eth0 routes=12 \
                    workloads=2 peers=1 written=15 maps_ms=3 elapsed_ms=34 fast path programmed";
        assert_eq!(field(line, "routes"), Some(12));
        assert_eq!(field(line, "maps_ms"), Some(3));
        assert_eq!(field(line, "elapsed_ms"), Some(34));
        assert_eq!(field("a b", "routes"), None);
    }

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let samples: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(quantile(&samples, 0.5), 100.0);
        assert_eq!(quantile(&samples, 0.99), 198.0);
        assert_eq!(quantile(&samples, 1.0), 200.0);
    }

    #[test]
    fn a_moved_block_routes_to_its_new_node() {
        let base = scale::model(&Model::default(), 0, 0);
        let mut base = base;
        base.nodes.push(dataplane::model::Node {
            name: NODE.into(),
            addr: "10.100.0.11/24".parse().ok(),
            ..Default::default()
        });
        let node = scale::node(3, scale::vtep_mac(3, 0));
        let block = scale::block(7, 3);
        let route =
            expected_route(&base, std::slice::from_ref(&node), std::slice::from_ref(&block), route_key(&block.cidr))
                .expect("a route");
        assert_eq!(route.node_addr, node.addr.expect("an address").addr().octets());
        // Without the block a lookup of its prefix finds the pool's entry.
        let pool = expected_route(&base, &[], &[], route_key(&block.cidr)).expect("the pool's route");
        assert_ne!(pool, route);
        assert_eq!(pool.node_addr, [0; 4]);
    }
}
