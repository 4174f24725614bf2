//! Per-packet cost of every decision path of the kernel programs, with BPF_PROG_TEST_RUN, beside
//! an empty TC program measured in the same rounds; and the VXLAN encap path's cost as the routes
//! map (an LPM trie) grows.
//!
//! The programs are loaded with the tests' harness (`dataplane_tests::program::Node`: fresh,
//! unpinned maps filled through the agent's own YAML -> model -> plan -> entries path) and fed
//! packets from the tests' builder. Every measurement is `repeat = 1`, many calls: the kernel runs
//! all `repeat` iterations of one call on the same skb, so a program that rewrites the packet
//! (encap, decap, NAT, the ARP reply) would meet its own output from the second iteration on;
//! [`repeat_probe`] shows it with the stats counters. The figure of one call is the kernel's own
//! timing of the program run (`duration`, in ns), so the syscall and the skb allocation are not
//! in it; a round takes the mean over its calls, and the reported figure is the median over
//! rounds. The cases and the baseline go round in turn, so that a noisy neighbour slows all alike.
//!
//! Every case checks that it took the path it is named after: the verdict of every call, and the
//! path's stats counter grown by exactly the number of calls.
//!
//! The uplink's XDP program is measured beside an empty XDP program ([`xdp_paths`]; it never
//! rewrites a packet, so one call with a large `repeat` is valid), and a flood of VXLAN from a
//! non-peer is dropped at XDP and at TC in frames per second on one core ([`non_peer_flood`]).

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    time::Instant,
};

use anyhow::{ensure, Context as _};
use aya::{
    maps::{lpm_trie::Key, HashMap, LpmTrie},
    programs::{tc::SchedClassifier, TcAttachType, Xdp},
};
use dataplane_common::{
    net::{
        CALICO_VXLAN_PORT, CALICO_VXLAN_VNI, GATEWAY_ADDR, GATEWAY_MAC, IPPROTO_IPIP, IPPROTO_UDP, XDP_DROP, XDP_PASS,
    },
    FlowKey, Ipv4Bytes, NatFlow, Route, Stat, CONNTRACK_MAP, PROG_FROM_UPLINK, PROG_FROM_WORKLOAD, PROG_XDP_UPLINK,
    ROUTES_MAP,
};
use dataplane_tests::{
    packet::{fixture::*, Packet},
    program::{Node, CLUSTER, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
};

use crate::stats::median;

/// `bpf(2)` commands and the program type used here (uapi/linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `repeat` of one call of the XDP per-packet cost.
const XDP_REPEAT: u32 = 100_000;
/// Room for what a program adds to a packet (the biggest is VXLAN's 50 bytes).
pub(crate) const OUT_HEADROOM: usize = 256;
/// UDP port of the external service in the NAT cases.
const DNS: u16 = 53;
/// The pod's source port of the established NAT flow; new flows use ports from [`NEW_FLOW_PORTS`].
const ESTABLISHED_PORT: u16 = 5555;
/// First pod source port of the "SNAT new flow" calls: one port per call, so every call is a new flow.
const NEW_FLOW_PORTS: u16 = 10_000;
/// The largest pod frames whose encapsulation still fits the fixtures' 1500-byte uplink MTU:
/// pod MTU 1450 for VXLAN (50 bytes of headers) and 1480 for IP-in-IP (20), plus Ethernet.
const VXLAN_MAX_FRAME: usize = 1450 + 14;
const IPIP_MAX_FRAME: usize = 1480 + 14;
/// The packet sizes: the smallest Ethernet frame and a full one.
pub const SMALL: usize = 64;
/// See [`SMALL`].
pub const LARGE: usize = 1500;

/// How much to measure.
#[derive(Clone, Copy, Debug)]
pub struct Effort {
    /// Rounds (the median is taken over them).
    pub rounds: usize,
    /// `BPF_PROG_TEST_RUN` calls per case and round (the round's figure is their mean).
    pub calls: usize,
}

/// The measured cost of one decision path at one size.
#[derive(Clone, Debug)]
pub struct PathCost {
    /// The decision path, in the words.
    pub path: &'static str,
    /// The program it runs in.
    pub program: &'static str,
    /// The frame handed to the program, in bytes.
    pub frame: usize,
    /// The size class it stands for ([`SMALL`] or [`LARGE`]).
    pub size: usize,
    /// Median ns per packet.
    pub ns: f64,
    /// The empty program's median at the same frame size, same rounds.
    pub empty_ns: f64,
    /// The baseline build's median (`--baseline-object`), same rounds.
    pub baseline_ns: Option<f64>,
}

/// The cost of the VXLAN encap path with `prefixes` extra routes in the routes map.
#[derive(Clone, Debug)]
pub struct LpmCost {
    /// Generated prefixes in the map (besides the fixture's own routes).
    pub prefixes: usize,
    /// Their length.
    pub prefix_len: u8,
    /// Median ns per packet of the VXLAN encap path (64-byte frame).
    pub ns: f64,
    /// The empty program's median in the same rounds.
    pub empty_ns: f64,
    /// Seconds it took to insert the prefixes (one syscall each).
    pub insert_seconds: f64,
}

/// What `repeat > 1` does to a rewriting path: the counters after one call with `repeat` runs.
#[derive(Clone, Debug)]
pub struct RepeatProbe {
    /// The `repeat` of the call.
    pub repeat: u32,
    /// Growth of `encap_vxlan`.
    pub encapsulated: u64,
    /// Growth of every other counter, by name.
    pub others: Vec<(&'static str, u64)>,
    /// The empty program's ns per run in one call of [`LOOP_REPEAT`] runs, 64-byte frame.
    pub empty_loop_ns: f64,
    /// The same with `repeat = 1` (mean of many calls): the difference is what timing one call
    /// adds to every `repeat = 1` figure.
    pub empty_single_ns: f64,
    /// The paths that leave the packet as it is, timed in the same kind of loop: (path, ns per run).
    pub warm_loops: Vec<(&'static str, f64)>,
}

/// `repeat` of the empty program's loop in [`repeat_probe`].
pub const LOOP_REPEAT: u32 = 1_000_000;

/// A program loaded from two raw instructions, `r0 = TC_ACT_OK; exit`: the baseline.
pub struct EmptyProgram {
    pub(crate) fd: OwnedFd,
}

impl EmptyProgram {
    /// Loads the empty classifier with the `bpf` syscall.
    pub fn load() -> anyhow::Result<Self> {
        Self::load_raw(BPF_PROG_TYPE_SCHED_CLS, TC_ACT_OK, b"bench_empty").context("the empty TC program")
    }

    /// Loads the empty XDP program, `r0 = XDP_PASS; exit`: the XDP baseline.
    pub fn load_xdp() -> anyhow::Result<Self> {
        Self::load_raw(BPF_PROG_TYPE_XDP, XDP_PASS, b"bench_empty_xdp").context("the empty XDP program")
    }

    fn load_raw(program_type: u32, verdict: u32, name: &[u8]) -> anyhow::Result<Self> {
        // BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm verdict; then BPF_JMP | BPF_EXIT.
        let mut instructions = [0u8; 16];
        instructions[0] = 0xb7;
        instructions[4..8].copy_from_slice(&(verdict as i32).to_ne_bytes());
        instructions[8] = 0x95;
        Self::load_instructions(program_type, &instructions, name)
    }

    /// An XDP program that redirects every frame to `ifindex` (`bpf_redirect(ifindex, 0)`): on a
    /// veth, the frame reaches the peer of `ifindex` as an XDP frame, with no skb.
    fn load_xdp_redirect(ifindex: u32) -> anyhow::Result<Self> {
        // r1 = ifindex; r2 = 0; call bpf_redirect (helper 23); exit.
        let mut instructions = [0u8; 32];
        instructions[0] = 0xb7;
        instructions[1] = 0x01;
        instructions[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        instructions[8] = 0xb7;
        instructions[9] = 0x02;
        instructions[16] = 0x85;
        instructions[20..24].copy_from_slice(&23u32.to_ne_bytes());
        instructions[24] = 0x95;
        Self::load_instructions(BPF_PROG_TYPE_XDP, &instructions, b"bench_xdp_redir")
            .context("the redirecting XDP program")
    }

    fn load_instructions(program_type: u32, instructions: &[u8], name: &[u8]) -> anyhow::Result<Self> {
        let license = c"GPL";
        let mut attr = Attr::default();
        attr.put_u32(0, program_type);
        attr.put_u32(4, (instructions.len() / 8) as u32);
        attr.put_u64(8, instructions.as_ptr() as u64);
        attr.put_u64(16, license.as_ptr() as u64);
        attr.put_name(48, name);
        if program_type == BPF_PROG_TYPE_XDP {
            // expected_attach_type as aya loads xdp_uplink: an XDP link swaps only like for like.
            attr.put_u32(68, BPF_XDP);
        }
        let fd = bpf(BPF_PROG_LOAD, &mut attr).context("BPF_PROG_LOAD")?;
        // SAFETY: BPF_PROG_LOAD returned a new file descriptor that nothing else owns.
        Ok(Self { fd: unsafe { OwnedFd::from_raw_fd(fd as i32) } })
    }
}

/// A `union bpf_attr` as bytes, with the fields set by offset.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Default for Attr {
    fn default() -> Self {
        Attr([0; 128])
    }
}

impl Attr {
    fn put_u32(&mut self, offset: usize, value: u32) {
        self.0[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
    }
    fn put_u64(&mut self, offset: usize, value: u64) {
        self.0[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
    }
    fn get_u32(&self, offset: usize) -> u32 {
        u32::from_ne_bytes([self.0[offset], self.0[offset + 1], self.0[offset + 2], self.0[offset + 3]])
    }
    fn put_name(&mut self, offset: usize, name: &[u8]) {
        self.0[offset..offset + name.len()].copy_from_slice(name);
    }
}

fn bpf(command: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, zero-padded bpf_attr of the size passed, and every pointer in it
    // points to memory that outlives the call.
    let result = unsafe { libc::syscall(libc::SYS_bpf, command, attr.0.as_mut_ptr(), attr.0.len()) };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// One `BPF_PROG_TEST_RUN` call: the verdict and the kernel's time per run, in ns.
pub(crate) fn test_run(program: BorrowedFd<'_>, packet: &[u8], out: &mut [u8], repeat: u32) -> io::Result<(u32, u32)> {
    let mut attr = Attr::default();
    attr.put_u32(0, program.as_raw_fd() as u32);
    attr.put_u32(8, packet.len() as u32);
    attr.put_u32(12, out.len() as u32);
    attr.put_u64(16, packet.as_ptr() as u64);
    attr.put_u64(24, out.as_mut_ptr() as u64);
    attr.put_u32(32, repeat);
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok((attr.get_u32(4), attr.get_u32(36)))
}

/// The XDP program of `node`, as a file descriptor to test-run.
pub(crate) fn xdp_fd(node: &Node) -> anyhow::Result<BorrowedFd<'_>> {
    let program: &Xdp = node
        .ebpf
        .program(PROG_XDP_UPLINK)
        .with_context(|| format!("no program {PROG_XDP_UPLINK}"))?
        .try_into()
        .with_context(|| format!("{PROG_XDP_UPLINK} is not an XDP program"))?;
    Ok(program.fd().with_context(|| format!("{PROG_XDP_UPLINK} is not loaded"))?.as_fd())
}

/// The program `name` of `node`, as a file descriptor to test-run.
pub(crate) fn program_fd<'a>(node: &'a Node, name: &str) -> anyhow::Result<BorrowedFd<'a>> {
    let program: &SchedClassifier = node
        .ebpf
        .program(name)
        .with_context(|| format!("no program {name}"))?
        .try_into()
        .with_context(|| format!("{name} is not a classifier"))?;
    Ok(program.fd().with_context(|| format!("{name} is not loaded"))?.as_fd())
}

/// Mean ns per run over `calls` calls of `packet(call)`; every verdict must be `verdict`.
fn mean_ns(
    program: BorrowedFd<'_>,
    calls: usize,
    verdict: u32,
    mut packet: impl FnMut(usize) -> Vec<u8>,
) -> anyhow::Result<f64> {
    let mut total: u64 = 0;
    let mut out = Vec::new();
    for call in 0..calls {
        let input = packet(call);
        out.resize(input.len() + OUT_HEADROOM, 0);
        let (got, ns) = test_run(program, &input, &mut out, 1).context("BPF_PROG_TEST_RUN")?;
        ensure!(got == verdict, "verdict {got}, expected {verdict}");
        total += u64::from(ns);
    }
    Ok(total as f64 / calls.max(1) as f64)
}

/// A packet built around `payload`, padded so that the frame is `frame` bytes long.
pub(crate) fn sized(frame: usize, build: impl Fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let headers = build(&[]).len();
    build(&vec![0x5a; frame.saturating_sub(headers)])
}

/// A UDP packet from pod A to `dst`, as it leaves the pod.
fn from_pod_a(dst: [u8; 4], src_port: u16, payload: &[u8]) -> Vec<u8> {
    Packet::eth(POD_A_MAC, GATEWAY_MAC).ipv4(POD_A, dst, IPPROTO_UDP).udp(src_port, 5201).payload(payload).finish()
}

/// A UDP reply from the external host to this node's `port`, as it arrives on the uplink.
pub(crate) fn from_external(port: u16, payload: &[u8]) -> Vec<u8> {
    Packet::eth(UPLINK_MAC, UPLINK_MAC).ipv4(EXTERNAL, NODE, IPPROTO_UDP).udp(DNS, port).payload(payload).finish()
}

/// A UDP packet from the remote pod to pod A, in VXLAN from the peer node.
fn vxlan_from_peer(payload: &[u8]) -> Vec<u8> {
    Packet::eth(UPLINK_MAC, UPLINK_MAC)
        .ipv4(PEER, NODE, IPPROTO_UDP)
        .udp(50000, CALICO_VXLAN_PORT)
        .vxlan(CALICO_VXLAN_VNI, PEER_VTEP_MAC, NODE_VTEP_MAC)
        .ipv4(REMOTE_POD, POD_A, IPPROTO_UDP)
        .udp(5201, 40000)
        .payload(payload)
        .finish()
}

/// The same from a node that is no peer.
pub(crate) fn vxlan_from_stranger(payload: &[u8]) -> Vec<u8> {
    Packet::eth(UPLINK_MAC, UPLINK_MAC)
        .ipv4(STRANGER, NODE, IPPROTO_UDP)
        .udp(50000, CALICO_VXLAN_PORT)
        .vxlan(CALICO_VXLAN_VNI, PEER_VTEP_MAC, NODE_VTEP_MAC)
        .ipv4(REMOTE_POD, POD_A, IPPROTO_UDP)
        .udp(5201, 40000)
        .payload(payload)
        .finish()
}

/// The same in IP-in-IP.
fn ipip_from_peer(payload: &[u8]) -> Vec<u8> {
    Packet::eth(UPLINK_MAC, UPLINK_MAC)
        .ipv4(PEER, NODE, IPPROTO_IPIP)
        .ipv4(REMOTE_POD, POD_A, IPPROTO_UDP)
        .udp(5201, 40000)
        .payload(payload)
        .finish()
}

/// A UDP packet from pod A to the external host from `port`.
fn to_external(port: u16, payload: &[u8]) -> Vec<u8> {
    Packet::eth(POD_A_MAC, GATEWAY_MAC).ipv4(POD_A, EXTERNAL, IPPROTO_UDP).udp(port, DNS).payload(payload).finish()
}

/// Which fixture node a case runs on.
#[derive(Clone, Copy, PartialEq)]
enum Fixture {
    /// node-1 of the fixture cluster: VXLAN pool with natOutgoing.
    Vxlan,
    /// node-1 with the pool in IP-in-IP mode.
    Ipip,
}

/// One decision path at one size.
struct Case {
    path: &'static str,
    fixture: Fixture,
    program: &'static str,
    size: usize,
    /// The frame handed to the program (new flows get their own per call).
    packet: Vec<u8>,
    verdict: u32,
    stat: Stat,
    /// Every call a new flow: pod source port NEW_FLOW_PORTS + call.
    new_flow: bool,
}

/// Every decision path at both sizes (ARP only at 64: an ARP request is 42 bytes, padded).
fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for size in [SMALL, LARGE] {
        let tunnel = |max: usize| if size == LARGE { max } else { size };
        let mut add = |path, fixture, program, packet: Vec<u8>, verdict, stat, new_flow| {
            cases.push(Case { path, fixture, program, size, packet, verdict, stat, new_flow });
        };
        let w = PROG_FROM_WORKLOAD;
        let u = PROG_FROM_UPLINK;
        use Fixture::{Ipip, Vxlan};
        let local = sized(size, |p| from_pod_a(POD_B, 40000, p));
        add("local delivery", Vxlan, w, local, TC_ACT_REDIRECT, Stat::DeliveredLocal, false);
        let encap = sized(tunnel(VXLAN_MAX_FRAME), |p| from_pod_a(REMOTE_POD, 40000, p));
        add("VXLAN encap", Vxlan, w, encap, TC_ACT_REDIRECT, Stat::EncapVxlan, false);
        let encap = sized(tunnel(IPIP_MAX_FRAME), |p| from_pod_a(REMOTE_POD, 40000, p));
        add("IPIP encap", Ipip, w, encap, TC_ACT_REDIRECT, Stat::EncapIpip, false);
        // Decap: the inner frame is the size class (a 64-byte outer frame cannot hold a packet).
        let inner = tunnel(VXLAN_MAX_FRAME).saturating_sub(14 + 20 + 8);
        let decap = sized(inner + 50 + 14 + 20 + 8, vxlan_from_peer);
        add("VXLAN decap", Vxlan, u, decap, TC_ACT_REDIRECT, Stat::DecapVxlan, false);
        let inner = tunnel(IPIP_MAX_FRAME).saturating_sub(14 + 20 + 8);
        let decap = sized(inner + 20 + 14 + 20 + 8, ipip_from_peer);
        add("IPIP decap", Ipip, u, decap, TC_ACT_REDIRECT, Stat::DecapIpip, false);
        add(
            "SNAT new flow",
            Vxlan,
            w,
            sized(size, |p| to_external(NEW_FLOW_PORTS, p)),
            TC_ACT_REDIRECT,
            Stat::SnatNew,
            true,
        );
        let established = sized(size, |p| to_external(ESTABLISHED_PORT, p));
        add("SNAT established", Vxlan, w, established, TC_ACT_REDIRECT, Stat::SnatEstablished, false);
        let reply = sized(size, |p| from_external(ESTABLISHED_PORT, p));
        add("reverse NAT", Vxlan, u, reply, TC_ACT_REDIRECT, Stat::ReverseNat, false);
        if size == SMALL {
            let arp = Packet::eth(POD_A_MAC, [0xff; 6]).arp_request(POD_A_MAC, POD_A, GATEWAY_ADDR).finish();
            let arp = sized(size, |p| [arp.as_slice(), p].concat());
            add("ARP reply", Vxlan, w, arp, TC_ACT_REDIRECT, Stat::ArpReplied, false);
        }
        let spoofed = sized(size, |p| {
            Packet::eth(POD_A_MAC, GATEWAY_MAC).ipv4(POD_B, REMOTE_POD, IPPROTO_UDP).udp(1, 2).payload(p).finish()
        });
        add("spoofed drop", Vxlan, w, spoofed, TC_ACT_SHOT, Stat::DropSpoofedSource, false);
        // Traffic for the node itself (no tunnel, no flow) arriving on the uplink.
        let host = sized(size, |p| from_external(6000, p));
        add("pass to stack", Vxlan, u, host, TC_ACT_OK, Stat::PassToStack, false);
    }
    cases
}

/// Deletes the conntrack entries of the "SNAT new flow" calls, keeping the established flow.
fn forget_new_flows(node: &mut Node) -> anyhow::Result<()> {
    let map = node.ebpf.map_mut(CONNTRACK_MAP).context("no conntrack map")?;
    let mut conntrack: HashMap<_, FlowKey, NatFlow> = HashMap::try_from(map)?;
    let stale: Vec<FlowKey> = conntrack
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, flow)| flow.pod_port != ESTABLISHED_PORT)
        .map(|(key, _)| key)
        .collect();
    for key in &stale {
        conntrack.remove(key).context("deleting a conntrack entry")?;
    }
    Ok(())
}

/// One build of the kernel programs on both fixture nodes.
struct Build {
    vxlan: Node,
    ipip: Node,
}

impl Build {
    /// Both fixture nodes with `object`'s programs, and the established NAT flow opened.
    fn load(object: &[u8]) -> anyhow::Result<Self> {
        let vxlan = Node::with_object("node-1", CLUSTER, object);
        let ipip = Node::with_object(
            "node-1",
            &CLUSTER.replace("vxlanMode: Always, ipipMode: Never", "vxlanMode: Never, ipipMode: Always"),
            object,
        );
        // The established flow of "SNAT established" and "reverse NAT".
        let first = to_external(ESTABLISHED_PORT, b"open");
        let (verdict, _) = vxlan.run(PROG_FROM_WORKLOAD, &first);
        ensure!(verdict == TC_ACT_REDIRECT, "opening the NAT flow: verdict {verdict}");
        Ok(Self { vxlan, ipip })
    }

    fn node(&self, fixture: Fixture) -> &Node {
        node_of(fixture, &self.vxlan, &self.ipip)
    }
}

/// Measures every decision path at 64 and 1500 bytes beside the empty program; with a
/// `baseline` object (another build of the programs, e.g. main's), each case runs on it too,
/// in the same rounds, right after this build's.
pub fn decision_paths(effort: Effort, baseline: Option<&[u8]>) -> anyhow::Result<Vec<PathCost>> {
    let empty = EmptyProgram::load()?;
    let mut builds = vec![Build::load(dataplane::backend::bpf::object())?];
    if let Some(object) = baseline {
        builds.push(Build::load(object).context("the baseline object")?);
    }
    ensure!(
        effort.calls <= usize::from(u16::MAX - NEW_FLOW_PORTS),
        "at most {} calls per round: one pod port per new flow",
        u16::MAX - NEW_FLOW_PORTS
    );

    let mut cases = cases();
    let mut empty_rounds: Vec<(usize, Vec<f64>)> = cases.iter().map(|c| (c.packet.len(), Vec::new())).collect();
    // Rounds per build of every case: [this build, baseline].
    let mut build_rounds: Vec<Vec<Vec<f64>>> = cases.iter().map(|_| vec![Vec::new(); builds.len()]).collect();
    let before: Vec<Vec<u64>> =
        builds.iter().map(|b| cases.iter().map(|c| b.node(c.fixture).stat(c.stat)).collect()).collect();
    for round in 1..=effort.rounds {
        let started = Instant::now();
        for ((case, empty_round), rounds) in cases.iter_mut().zip(&mut empty_rounds).zip(&mut build_rounds) {
            // The baseline on a frame of the same length, right before the case.
            let packet = &case.packet;
            let ns = mean_ns(empty.fd.as_fd(), effort.calls, TC_ACT_OK, |_| packet.clone()).context("empty program")?;
            empty_round.1.push(ns);
            for (build, build_rounds) in builds.iter_mut().zip(rounds.iter_mut()) {
                let fd = program_fd(build.node(case.fixture), case.program)?;
                let ns = if case.new_flow {
                    let size = case.size;
                    mean_ns(fd, effort.calls, case.verdict, |call| {
                        sized(size, |p| to_external(NEW_FLOW_PORTS + call as u16, p))
                    })
                } else {
                    mean_ns(fd, effort.calls, case.verdict, |_| packet.clone())
                }
                .with_context(|| format!("{} ({} bytes)", case.path, case.size))?;
                build_rounds.push(ns);
                if case.new_flow {
                    // The next calls from these ports must be new flows again.
                    forget_new_flows(&mut build.vxlan)?;
                }
            }
        }
        println!(
            "  round {round}/{}: {} cases in {:.1} s",
            effort.rounds,
            cases.len(),
            started.elapsed().as_secs_f64()
        );
    }
    // Every call took the path it is named after, in every build.
    for (build, before) in builds.iter().zip(&before) {
        for (case, before) in cases.iter().zip(before) {
            let grown = build.node(case.fixture).stat(case.stat) - before;
            let expected: u64 = cases
                .iter()
                .filter(|c| c.stat == case.stat && c.fixture == case.fixture)
                .map(|_| (effort.rounds * effort.calls) as u64)
                .sum();
            ensure!(
                grown == expected,
                "{}: counter {:?} grew by {grown}, expected {expected}: a call took another path",
                case.path,
                case.stat
            );
        }
    }
    Ok(cases
        .iter()
        .zip(empty_rounds)
        .zip(build_rounds)
        .map(|((case, (_, empty)), rounds)| PathCost {
            path: case.path,
            program: case.program,
            frame: case.packet.len(),
            size: case.size,
            ns: median(&rounds[0]),
            empty_ns: median(&empty),
            baseline_ns: rounds.get(1).map(|r| median(r)),
        })
        .collect())
}

fn node_of<'a>(fixture: Fixture, vxlan: &'a Node, ipip: &'a Node) -> &'a Node {
    match fixture {
        Fixture::Vxlan => vxlan,
        Fixture::Ipip => ipip,
    }
}

/// One call of the VXLAN encap path with a large `repeat`: the counters say what the kernel ran.
pub fn repeat_probe() -> anyhow::Result<RepeatProbe> {
    let node = Node::new("node-1");
    let repeat = 100;
    let packet = from_pod_a(REMOTE_POD, 40000, &[0x5a; 18]);
    let fd = program_fd(&node, PROG_FROM_WORKLOAD)?;
    let mut out = vec![0; packet.len() + OUT_HEADROOM];
    test_run(fd, &packet, &mut out, repeat).context("BPF_PROG_TEST_RUN with repeat")?;
    let others = Stat::ALL
        .iter()
        .filter(|s| **s != Stat::EncapVxlan)
        .map(|s| (s.name(), node.stat(*s)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let empty = EmptyProgram::load()?;
    let small = sized(SMALL, |p| from_pod_a(REMOTE_POD, 40000, p));
    let mut out = vec![0; small.len() + OUT_HEADROOM];
    let mut loops = Vec::new();
    for _ in 0..5 {
        let (_, ns) = test_run(empty.fd.as_fd(), &small, &mut out, LOOP_REPEAT).context("empty program loop")?;
        loops.push(f64::from(ns));
    }
    let empty_single_ns = mean_ns(empty.fd.as_fd(), 10_000, TC_ACT_OK, |_| small.clone())?;
    // Spoofed drop and pass to stack do not touch the packet, so a loop reruns the same path;
    // the counters prove it.
    let mut warm_loops = Vec::new();
    for case in
        cases().into_iter().filter(|c| c.size == SMALL && matches!(c.stat, Stat::DropSpoofedSource | Stat::PassToStack))
    {
        let fd = program_fd(&node, case.program)?;
        let before = node.stat(case.stat);
        let mut runs = Vec::new();
        for _ in 0..5 {
            let (verdict, ns) = test_run(fd, &case.packet, &mut out, LOOP_REPEAT).context("warm loop")?;
            ensure!(verdict == case.verdict, "{}: verdict {verdict} in a loop", case.path);
            runs.push(f64::from(ns));
        }
        let grown = node.stat(case.stat) - before;
        ensure!(grown == 5 * u64::from(LOOP_REPEAT), "{}: {grown} runs counted in the loop", case.path);
        warm_loops.push((case.path, median(&runs)));
    }
    Ok(RepeatProbe {
        repeat,
        encapsulated: node.stat(Stat::EncapVxlan),
        others,
        empty_loop_ns: median(&loops),
        empty_single_ns,
        warm_loops,
    })
}

/// `count` prefixes spread evenly over 10.0.0.0/8 outside the pool's 10.244.0.0/16, so that the
/// lookup of a pod address walks a trie populated all around it; /26 (Calico's block size) while
/// they fit, longer when a million must.
fn generated_prefixes(count: usize) -> (u8, Vec<[u8; 4]>) {
    let space: u64 = 1 << 24;
    // A little more room than `count`: the candidates inside 10.244.0.0/16 are skipped.
    let stride = (space / (count as u64 + count as u64 / 128 + 1)).max(1);
    let len = (32 - stride.ilog2()).max(26) as u8;
    let align = 1u64 << (32 - u32::from(len));
    let mut prefixes = Vec::with_capacity(count);
    let mut index = 0u64;
    while prefixes.len() < count && index * stride < space {
        let offset = (index * stride) & !(align - 1);
        let addr = (0x0a00_0000u64 + offset) as u32;
        index += 1;
        if addr >> 16 == 0x0af4 {
            continue;
        }
        prefixes.push(addr.to_be_bytes());
    }
    (len, prefixes)
}

/// The VXLAN encap path's cost with each count of extra prefixes in the routes map.
pub fn lpm_scale(counts: &[usize], effort: Effort) -> anyhow::Result<Vec<LpmCost>> {
    let empty = EmptyProgram::load()?;
    let packet = sized(SMALL, |p| from_pod_a(REMOTE_POD, 40000, p));
    let mut results = Vec::new();
    for &count in counts {
        let mut node = Node::new("node-1");
        let (len, prefixes) = generated_prefixes(count);
        ensure!(prefixes.len() == count, "only {} prefixes fit for {count}", prefixes.len());
        let started = Instant::now();
        {
            let map = node.ebpf.map_mut(ROUTES_MAP).context("no routes map")?;
            let mut routes: LpmTrie<_, Ipv4Bytes, Route> = LpmTrie::try_from(map)?;
            // Every generated prefix routes like the fixture's remote block: to node-2 in VXLAN.
            let remote_block = routes.get(&Key::new(26, [10, 244, 2, 0]), 0).context("the fixture's remote block")?;
            for addr in &prefixes {
                routes
                    .insert(&Key::new(u32::from(len), *addr), remote_block, 0)
                    .with_context(|| format!("inserting prefix {} of {count}", routes_len_hint(addr, len)))?;
            }
        }
        let insert_seconds = started.elapsed().as_secs_f64();
        let fd = program_fd(&node, PROG_FROM_WORKLOAD)?;
        let before = node.stat(Stat::EncapVxlan);
        let (mut runs, mut empty_runs) = (Vec::new(), Vec::new());
        for _ in 0..effort.rounds {
            empty_runs.push(mean_ns(empty.fd.as_fd(), effort.calls, TC_ACT_OK, |_| packet.clone())?);
            runs.push(mean_ns(fd, effort.calls, TC_ACT_REDIRECT, |_| packet.clone())?);
        }
        let grown = node.stat(Stat::EncapVxlan) - before;
        ensure!(
            grown == (effort.rounds * effort.calls) as u64,
            "encap_vxlan grew by {grown}: a call took another path"
        );
        let cost = LpmCost {
            prefixes: count,
            prefix_len: len,
            ns: median(&runs),
            empty_ns: median(&empty_runs),
            insert_seconds,
        };
        println!(
            "  {count:>9} /{len} prefixes (inserted in {insert_seconds:.1} s): VXLAN encap {:.0} ns, empty {:.0} ns",
            cost.ns, cost.empty_ns
        );
        results.push(cost);
    }
    Ok(results)
}

/// The per-packet cost of one XDP decision (or of the TC program on the same frame, for
/// comparison), beside its empty program in the same rounds; each round one call of
/// [`XDP_REPEAT`] runs (valid: neither program changes the packet).
#[derive(Clone, Debug)]
pub struct XdpCost {
    /// What the packet is and what the program decides.
    pub path: &'static str,
    /// The program.
    pub program: &'static str,
    /// The frame, in bytes.
    pub frame: usize,
    /// Median ns per run.
    pub ns: f64,
    /// The empty program of the same type (XDP or TC), same frame, same rounds.
    pub empty_ns: f64,
}

/// Measures the uplink's XDP program on what it passes and what it drops beside the empty XDP
/// program, and `from_uplink` on the same non-peer VXLAN beside the empty TC program.
pub fn xdp_paths(rounds: usize) -> anyhow::Result<Vec<XdpCost>> {
    let node = Node::new("node-1");
    let empty_xdp = EmptyProgram::load_xdp()?;
    let empty_tc = EmptyProgram::load()?;
    let xdp = xdp_fd(&node)?;
    let tc = program_fd(&node, PROG_FROM_UPLINK)?;
    let stranger = sized(114, vxlan_from_stranger);
    type XdpCase = (&'static str, bool, Vec<u8>, u32, Stat);
    let cases: Vec<XdpCase> = vec![
        ("pass: a peer's VXLAN", true, sized(114, vxlan_from_peer), XDP_PASS, Stat::XdpPassed),
        ("pass: not a tunnel packet", true, sized(SMALL, |p| from_external(6000, p)), XDP_PASS, Stat::XdpPassed),
        ("drop: VXLAN from a non-peer", true, stranger.clone(), XDP_DROP, Stat::DropUnknownPeer),
        ("drop at TC: the same VXLAN from a non-peer", false, stranger, TC_ACT_SHOT, Stat::DropUnknownPeer),
    ];
    let mut results = Vec::new();
    for (path, is_xdp, packet, verdict, stat) in cases {
        let (program, empty) = if is_xdp { (xdp, empty_xdp.fd.as_fd()) } else { (tc, empty_tc.fd.as_fd()) };
        let mut out = vec![0u8; packet.len() + OUT_HEADROOM];
        let before = node.stat(stat);
        let (mut runs, mut empty_runs) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let (_, ns) = test_run(empty, &packet, &mut out, XDP_REPEAT).context("empty program loop")?;
            empty_runs.push(f64::from(ns));
            let (got, ns) = test_run(program, &packet, &mut out, XDP_REPEAT).with_context(|| path.to_owned())?;
            ensure!(got == verdict, "{path}: verdict {got}, expected {verdict}");
            runs.push(f64::from(ns));
        }
        let grown = node.stat(stat) - before;
        ensure!(grown == rounds as u64 * u64::from(XDP_REPEAT), "{path}: {stat:?} grew by {grown}");
        let program = if is_xdp { PROG_XDP_UPLINK } else { PROG_FROM_UPLINK };
        let cost = XdpCost { path, program, frame: packet.len(), ns: median(&runs), empty_ns: median(&empty_runs) };
        println!("  {path}: {:.1} ns per run, empty {:.1} ns", cost.ns, cost.empty_ns);
        results.push(cost);
    }
    Ok(results)
}

/// Each program's size as the kernel holds it: (name, translated bytes, JIT-compiled bytes).
/// A BPF instruction is 8 bytes (16 for a 64-bit load), so the first is a bound on the work of a path.
pub fn program_sizes() -> anyhow::Result<Vec<(&'static str, u32, u32)>> {
    let node = Node::new("node-1");
    let mut sizes = Vec::new();
    for name in [PROG_FROM_WORKLOAD, PROG_FROM_UPLINK, dataplane_common::PROG_TO_UPLINK, PROG_XDP_UPLINK] {
        let info = node.ebpf.program(name).with_context(|| format!("no program {name}"))?.info()?;
        sizes.push((name, info.size_translated().unwrap_or(0), info.size_jitted()));
    }
    Ok(sizes)
}

/// A non-peer VXLAN flood dropped at XDP and at TC, in frames per second of the receiving core.
#[derive(Clone, Debug)]
pub struct FloodRate {
    /// Frames sent per round and program.
    pub frames: u32,
    /// Rounds (each one flood through each program).
    pub rounds: usize,
    /// The frame, in bytes.
    pub frame: usize,
    /// Median frames dropped by `xdp_uplink` per second of the receiving NAPI thread's CPU time.
    pub xdp_pps: f64,
    /// The same for `from_uplink` (the frames passed by the empty XDP program).
    pub tc_pps: f64,
    /// Median over the rounds of the round's XDP rate over its TC rate (the two run back to back,
    /// so a busy neighbour slows both alike).
    pub ratio: f64,
}

/// A network namespace of the bench's own, deleted on drop.
struct BenchNetns(String);

impl Drop for BenchNetns {
    fn drop(&mut self) {
        let _ = dataplane_lab::cmd::run(&["ip", "netns", "del", &self.0]);
    }
}

/// `bpf(2)` commands of XDP links (uapi/linux/bpf.h), and the attach type.
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_XDP: u32 = 37;

/// Attaches `program` as the XDP program of `ifindex` (native where the driver has it); the link
/// detaches it when dropped.
fn xdp_link(program: BorrowedFd<'_>, ifindex: u32) -> io::Result<OwnedFd> {
    let mut attr = Attr::default();
    attr.put_u32(0, program.as_raw_fd() as u32);
    attr.put_u32(4, ifindex);
    attr.put_u32(8, BPF_XDP);
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: BPF_LINK_CREATE returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Swaps the program of an XDP link in place: the device keeps its NAPI context (and thread).
fn xdp_link_update(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = Attr::default();
    attr.put_u32(0, link.as_raw_fd() as u32);
    attr.put_u32(4, program.as_raw_fd() as u32);
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// The kernel thread that polls `device`'s NAPI context once it is threaded (`napi/<device>-<id>`).
fn napi_thread(device: &str) -> anyhow::Result<u32> {
    let prefix = format!("napi/{device}-");
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(&prefix) {
            return Ok(pid);
        }
    }
    anyhow::bail!("no NAPI thread {prefix}* (threaded NAPI on {device} did not start)")
}

/// Keeps thread `tid` on `cpu`.
fn pin_thread(tid: u32, cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one CPU set, for that thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid as i32, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Nanoseconds a thread has spent on a CPU (the first field of /proc/PID/schedstat).
fn cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/schedstat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.split_whitespace().next().and_then(|ns| ns.parse().ok()).with_context(|| format!("{path}: {text:?}"))
}

/// Sends `frames` copies of `packet` out of `ifindex` through an AF_PACKET socket.
fn send_frames(ifindex: u32, packet: &[u8], frames: u32) -> anyhow::Result<()> {
    // SAFETY: socket(2) with constant arguments; the descriptor is owned at once.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    ensure!(raw >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
    // SAFETY: a new descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set below.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_ifindex = ifindex as i32;
    // SAFETY: `address` is a sockaddr_ll of the size passed.
    let bound = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            std::ptr::from_ref(&address).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    ensure!(bound == 0, "binding the AF_PACKET socket: {}", io::Error::last_os_error());
    // Straight to the device's transmit, past the qdisc: the generator as cheap as it gets.
    let bypass: libc::c_int = 1;
    // SAFETY: setsockopt(2) with an int of the size passed.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            std::ptr::from_ref(&bypass).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    // Many frames per system call.
    const BATCH: usize = 64;
    let mut iov = libc::iovec { iov_base: packet.as_ptr().cast_mut().cast(), iov_len: packet.len() };
    // SAFETY: an all-zero mmsghdr is valid; each points at the one iovec of the frame.
    let mut messages: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for message in &mut messages {
        message.msg_hdr.msg_iov = &mut iov;
        message.msg_hdr.msg_iovlen = 1;
    }
    let mut left = frames as usize;
    while left > 0 {
        let batch = left.min(BATCH);
        // SAFETY: `messages` holds `batch` valid headers whose iovec outlives the call.
        let sent = unsafe { libc::sendmmsg(socket.as_raw_fd(), messages.as_mut_ptr(), batch as u32, 0) };
        if sent < 0 {
            let error = io::Error::last_os_error();
            // The veth's ring was full (the receiver behind): that frame is lost, not counted.
            ensure!(error.raw_os_error() == Some(libc::ENOBUFS), "sending a flood frame: {error}");
            left -= 1;
        } else {
            left -= sent as usize;
        }
    }
    Ok(())
}

/// Floods the uplink of a node in a namespace of its own with VXLAN from a non-peer. An AF_PACKET
/// socket sends into a first veth pair, whose far end (the relay) redirects every frame in XDP to
/// a second pair: the receiving end there gets XDP frames with no skb, as from a NIC's DMA. Its TC
/// ingress runs `from_uplink`, its XDP link either `xdp_uplink` (which drops each frame at once)
/// or the empty XDP program (each frame becomes an skb and goes through GRO and the stack to TC,
/// where `from_uplink` drops it). Threaded NAPI puts the receiver's whole receive side in one
/// kernel thread, so its CPU time divided into the frames dropped is the rate one core sustains.
/// (BPF_PROG_TEST_RUN's live frames, the generator this replaced, answers EPERM on this machine's
/// kernel even for a program that only drops.)
pub fn non_peer_flood(frames: u32, rounds: usize) -> anyhow::Result<FloodRate> {
    let tag = std::process::id() & 0xff_ffff;
    let netns = BenchNetns(format!("dpl-bench-{tag:x}"));
    // sender -> relay (XDP: redirect to forward) ; forward -> receiver (xdp_uplink or empty, TC).
    let [sender, relay, forward, receiver] = ["fs", "fa", "fc", "fr"].map(|p| format!("{p}{tag:x}"));
    dataplane_lab::cmd::run(&["ip", "netns", "add", &netns.0])?;
    // No IPv6 on the pairs: its neighbour discovery would reach xdp_uplink beside the flood.
    dataplane_lab::cmd::run(&[
        "ip",
        "netns",
        "exec",
        &netns.0,
        "sysctl",
        "-qw",
        "net.ipv6.conf.default.disable_ipv6=1",
    ])?;
    for (end, peer) in [(&sender, &relay), (&forward, &receiver)] {
        dataplane_lab::cmd::run(&["ip", "-n", &netns.0, "link", "add", end, "type", "veth", "peer", "name", peer])?;
    }
    for device in [&sender, &relay, &forward, &receiver] {
        dataplane_lab::cmd::run(&["ip", "-n", &netns.0, "link", "set", device, "up"])?;
    }
    let path = dataplane_lab::cmd::netns_path(&netns.0);
    let netns_name = netns.0.clone();
    let measure = std::thread::spawn(move || -> anyhow::Result<FloodRate> {
        let handle = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns(2) on a valid descriptor; it moves only this thread.
        if unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            anyhow::bail!("setns({path}): {}", io::Error::last_os_error());
        }
        // The sender on one core; the NAPI thread goes wherever the scheduler puts it.
        // SAFETY: a zeroed cpu_set_t with one CPU set, for this thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
        let ifindex_of = |name: &str| -> anyhow::Result<u32> {
            let c_name = std::ffi::CString::new(name)?;
            // SAFETY: a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
            ensure!(ifindex != 0, "{name} missing in the bench namespace");
            Ok(ifindex)
        };
        let (rx_ifindex, tx_ifindex) = (ifindex_of(&receiver)?, ifindex_of(&sender)?);
        let (relay_ifindex, forward_ifindex) = (ifindex_of(&relay)?, ifindex_of(&forward)?);
        let mut node = Node::new("node-1");
        {
            let tc: &mut SchedClassifier =
                node.ebpf.program_mut(PROG_FROM_UPLINK).context("no from_uplink")?.try_into()?;
            tc.attach(&receiver, TcAttachType::Ingress)
                .with_context(|| format!("attaching from_uplink to {receiver}"))?;
        }
        let empty = EmptyProgram::load_xdp()?;
        let xdp = xdp_fd(&node)?;
        let link = xdp_link(empty.fd.as_fd(), rx_ifindex).context("attaching the empty XDP program")?;
        // The relay turns the sender's skbs into XDP frames for the receiver, as a NIC's DMA would.
        let redirect = EmptyProgram::load_xdp_redirect(forward_ifindex)?;
        let _relay_link = xdp_link(redirect.fd.as_fd(), relay_ifindex).context("attaching the relay's XDP program")?;
        // An XDP program gives a veth a NAPI context; threaded, it runs in a thread of its own:
        // the relay's and the receiver's work land in separate threads.
        // (`ip netns exec` for the namespace's own /sys: this thread's view of /sys is the host's.)
        for device in [&relay, &receiver] {
            dataplane_lab::cmd::run(&[
                "ip",
                "netns",
                "exec",
                &netns_name,
                "sh",
                "-c",
                &format!("echo 1 > /sys/class/net/{device}/threaded"),
            ])?;
        }
        let napi = napi_thread(&receiver)?;
        // The receiver shares the sender's core and the relay has the other: the receiver then
        // runs when the sender yields, on a full ring, in whole NAPI batches (a receiver with a
        // core of its own would wake for every few frames, and its CPU time would be wake-ups).
        pin_thread(napi, 0);
        pin_thread(napi_thread(&relay)?, 1);
        let packet = sized(114, vxlan_from_stranger);
        // One flood through the XDP program now on the link: frames dropped per CPU-second.
        let flood = |node: &Node| -> anyhow::Result<(u64, f64)> {
            let (dropped_before, cpu_before) = (node.stat(Stat::DropUnknownPeer), cpu_ns(napi)?);
            send_frames(tx_ifindex, &packet, frames)?;
            // The NAPI thread may still be draining the veth's ring.
            let mut dropped = node.stat(Stat::DropUnknownPeer);
            loop {
                std::thread::sleep(std::time::Duration::from_millis(20));
                let now = node.stat(Stat::DropUnknownPeer);
                if now == dropped {
                    break;
                }
                dropped = now;
            }
            let cpu = cpu_ns(napi)? - cpu_before;
            let dropped = dropped - dropped_before;
            // Frames the veth's full ring refused never reached a program: only the ones that did
            // are counted, against the CPU time they took.
            ensure!(dropped <= u64::from(frames), "{dropped} drops of {frames} frames");
            ensure!(dropped > 0 && cpu > 0, "no frame of the flood reached the programs");
            Ok((dropped, dropped as f64 / (cpu as f64 / 1e9)))
        };
        let passed_before = node.stat(Stat::XdpPassed);
        let (mut xdp_rates, mut tc_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            xdp_link_update(link.as_fd(), xdp).context("swapping in xdp_uplink")?;
            let (xdp_dropped, xdp_rate) = flood(&node)?;
            xdp_link_update(link.as_fd(), empty.fd.as_fd()).context("swapping in the empty XDP program")?;
            let (tc_dropped, tc_rate) = flood(&node)?;
            println!(
                "    round: XDP dropped {xdp_dropped} at {:.2} M/CPU-s, TC dropped {tc_dropped} at {:.2} M/CPU-s",
                xdp_rate / 1e6,
                tc_rate / 1e6
            );
            xdp_rates.push(xdp_rate);
            tc_rates.push(tc_rate);
            ratios.push(xdp_rate / tc_rate);
        }
        // xdp_uplink passed none of the flood on: every frame it saw, it dropped.
        ensure!(node.stat(Stat::XdpPassed) == passed_before, "xdp_uplink passed frames of the flood");
        drop(link);
        Ok(FloodRate {
            frames,
            rounds,
            frame: packet.len(),
            xdp_pps: median(&xdp_rates),
            tc_pps: median(&tc_rates),
            ratio: median(&ratios),
        })
    });
    let rate = measure.join().map_err(|_| anyhow::anyhow!("the flood thread panicked"))??;
    println!(
        "  non-peer VXLAN flood, {} frames x {} rounds: XDP drops {:.2} Mpps, TC drops {:.2} Mpps per core ({:.1}x)",
        rate.frames,
        rate.rounds,
        rate.xdp_pps / 1e6,
        rate.tc_pps / 1e6,
        rate.ratio,
    );
    drop(netns);
    Ok(rate)
}

fn routes_len_hint(addr: &[u8; 4], len: u8) -> String {
    format!("{}.{}.{}.{}/{len}", addr[0], addr[1], addr[2], addr[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_prefixes_are_distinct_aligned_and_outside_the_pool() {
        for count in [10, 1000, 100_000, 1_000_000] {
            let (len, prefixes) = generated_prefixes(count);
            assert_eq!(prefixes.len(), count);
            let mask = !0u32 << (32 - len);
            let mut seen = std::collections::HashSet::new();
            for p in &prefixes {
                let addr = u32::from_be_bytes(*p);
                assert_eq!(addr & mask, addr, "aligned to /{len}");
                assert_eq!(p[0], 10);
                assert_ne!(p[1], 244, "outside the pool");
                assert!(seen.insert(addr));
            }
        }
        assert_eq!(generated_prefixes(1000).0, 26);
        assert_eq!(generated_prefixes(1_000_000).0, 28);
    }
}
