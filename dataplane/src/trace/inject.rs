//! Running the packet through the kernel programs with BPF_PROG_TEST_RUN, on the live maps.

use std::{collections::BTreeMap, path::Path};

use anyhow::{bail, Context as _};
use aya::{
    maps::{HashMap, PerCpuArray},
    programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp},
    Ebpf,
};
use dataplane_common::{
    FlowKey, FragmentKey, FragmentNat, NatFlow, CONNTRACK_MAP, FRAGMENTS_MAP, NODE_MAP, PEERS_MAP, PROG_XDP_UPLINK,
    ROUTES_MAP, STATS_MAP, WORKLOADS_MAP,
};
use serde::Serialize;

use crate::pinned::{counters, PinnedMaps};

use super::*;

/// Size of the kernel's `struct __sk_buff`, the context BPF_PROG_TEST_RUN takes for TC programs.
pub(super) const SK_BUFF_SIZE: usize = 192;

/// Offset of `ifindex` in `struct __sk_buff`: the device the test packet arrives on.
pub(super) const SK_BUFF_IFINDEX: usize = 40;

/// What BPF_PROG_TEST_RUN made of the packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Injected {
    /// The program's return code.
    pub return_value: u32,
    /// The action it stands for.
    pub action: Option<Action>,
    /// Counters the run moved, by name.
    pub counters: BTreeMap<&'static str, u64>,
    /// The headers of the packet that came out, if it is IPv4.
    pub output: Option<Headers>,
    /// Where the run differs from the prediction (empty: it matched).
    pub mismatches: Vec<String>,
}

impl Injected {
    /// Whether the kernel did what was predicted.
    pub fn matched(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// Compares a test run with the prediction: the action, the one counter moved and, unless the
/// packet was dropped, the output headers.
pub fn compare(
    prediction: &Prediction,
    return_value: u32,
    counters: &BTreeMap<&'static str, u64>,
    output: Option<&Headers>,
) -> Vec<String> {
    let mut out = Vec::new();
    if return_value != prediction.action.code() {
        out.push(format!("verdict {} expected, the program returned {return_value}", prediction.action));
    }
    let moved: Vec<&str> = counters.iter().filter(|(_, n)| **n > 0).map(|(name, _)| *name).collect();
    if moved != [prediction.stat.name()] {
        out.push(format!("counter {} expected, the run moved {moved:?}", prediction.stat.name()));
    }
    if prediction.action != Action::Drop {
        match (&prediction.output, output) {
            (Some(want), Some(got)) => out.extend(header_mismatches(want, got)),
            (Some(_), None) => out.push("the output is not an IPv4 packet".to_owned()),
            (None, _) => {}
        }
    }
    out
}

/// The `struct __sk_buff` context that makes BPF_PROG_TEST_RUN run the packet on `ifindex`.
pub(super) fn skb_context(ifindex: u32) -> [u8; SK_BUFF_SIZE] {
    let mut ctx = [0u8; SK_BUFF_SIZE];
    ctx[SK_BUFF_IFINDEX..SK_BUFF_IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// Runs `packet` through `program` as if it arrived on `ifindex`, with the live maps under
/// `pin_path` (routes, workloads, peers, node), a fresh stats map and a private copy of the
/// conntrack map; compares the result with `prediction`.
pub fn inject(
    pin_path: &Path,
    program: &str,
    ifindex: u32,
    packet: &[u8],
    prediction: &Prediction,
    vxlan_port: u16,
) -> anyhow::Result<Injected> {
    let object = crate::backend::bpf::object();
    if object.is_empty() {
        bail!("this binary was built with AYA_BUILD_SKIP=1 and holds no kernel programs: rebuild without it");
    }
    let live = [ROUTES_MAP, WORKLOADS_MAP, PEERS_MAP, NODE_MAP];
    for name in live {
        // map_pin_path would create and pin an empty map where none is: never do that here.
        let path = pin_path.join(name);
        if !path.exists() {
            bail!("{} does not exist: is an agent running with --pin-path {}?", path.display(), pin_path.display());
        }
    }
    let mut loader = crate::backend::bpf::loader(crate::backend::bpf::KernelLog::Off);
    for name in live {
        loader.map_pin_path(name, pin_path.join(name));
    }
    let mut ebpf = loader.load(object).context("loading the kernel programs with the pinned maps")?;

    // The flows the live table holds, so an established flow is recognised, in a map of our own.
    let flows = match PinnedMaps::at(pin_path).read_conntrack() {
        Ok(flows) => flows,
        Err(_) if !pin_path.join(CONNTRACK_MAP).exists() => BTreeMap::new(),
        Err(error) => return Err(error),
    };
    {
        let map = ebpf.map_mut(CONNTRACK_MAP).context("the object has no conntrack map")?;
        let mut conntrack: HashMap<_, FlowKey, NatFlow> =
            HashMap::try_from(map).context("the conntrack map has an unexpected layout")?;
        for (key, flow) in &flows {
            conntrack.insert(key, flow, 0).context("copying the live conntrack table")?;
        }
    }

    // The live fragments table too, so a later fragment of a translated datagram is recognised.
    let fragments = PinnedMaps::at(pin_path).read_fragments().unwrap_or_default();
    {
        let map = ebpf.map_mut(FRAGMENTS_MAP).context("the object has no fragments map")?;
        let mut table: HashMap<_, FragmentKey, FragmentNat> =
            HashMap::try_from(map).context("the fragments map has an unexpected layout")?;
        for (key, entry) in &fragments {
            table.insert(key, entry, 0).context("copying the live fragments table")?;
        }
    }

    let prog: &mut SchedClassifier = ebpf
        .program_mut(program)
        .with_context(|| format!("program {program} missing from the object"))?
        .try_into()
        .with_context(|| format!("program {program} is not a TC classifier"))?;
    prog.load().with_context(|| format!("verifying program {program}"))?;
    let ctx = skb_context(ifindex);
    let mut out = vec![0u8; packet.len() + 256];
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..Default::default()
        })
        .with_context(|| format!("BPF_PROG_TEST_RUN of {program} on ifindex {ifindex}"))?;
    out.truncate(result.data_size_out as usize);

    let counters = moved_counters(&ebpf)?;
    let output = parse_headers(&out, vxlan_port);
    let mut mismatches = compare(prediction, result.return_value, &counters, output.as_ref());
    if let Some(key) = &prediction.remembers {
        let map = ebpf.map(CONNTRACK_MAP).context("the object has no conntrack map")?;
        let conntrack: HashMap<_, FlowKey, NatFlow> =
            HashMap::try_from(map).context("the conntrack map has an unexpected layout")?;
        if conntrack.get(key, 0).is_err() {
            mismatches.push(format!("the program did not remember the flow {}", describe_flow(key)));
        }
    }
    Ok(Injected {
        return_value: result.return_value,
        action: Action::from_code(result.return_value),
        counters,
        output,
        mismatches,
    })
}

/// Runs `packet` through `xdp_uplink` with the live routes, peers and node maps and a fresh
/// stats map; returns its return code and the counters it moved.
pub fn inject_xdp(pin_path: &Path, packet: &[u8]) -> anyhow::Result<(u32, BTreeMap<&'static str, u64>)> {
    let mut loader = crate::backend::bpf::loader(crate::backend::bpf::KernelLog::Off);
    for name in [ROUTES_MAP, PEERS_MAP, NODE_MAP] {
        loader.map_pin_path(name, pin_path.join(name));
    }
    let mut ebpf =
        loader.load(crate::backend::bpf::object()).context("loading the kernel programs with the pinned maps")?;
    let prog: &mut Xdp = ebpf
        .program_mut(PROG_XDP_UPLINK)
        .with_context(|| format!("program {PROG_XDP_UPLINK} missing from the object"))?
        .try_into()
        .with_context(|| format!("program {PROG_XDP_UPLINK} is not an XDP program"))?;
    prog.load().with_context(|| format!("verifying program {PROG_XDP_UPLINK}"))?;
    let result = prog
        .test_run(TestRunOptions { data_in: Some(packet), ..Default::default() })
        .with_context(|| format!("BPF_PROG_TEST_RUN of {PROG_XDP_UPLINK}"))?;
    let counters = moved_counters(&ebpf)?;
    Ok((result.return_value, counters))
}

/// The counters a test run moved, by name: the run's program has a fresh stats map of its own,
/// so every non-zero slot is the run's doing.
fn moved_counters(ebpf: &Ebpf) -> anyhow::Result<BTreeMap<&'static str, u64>> {
    let map = ebpf.map(STATS_MAP).context("the object has no stats map")?;
    let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(map).context("the stats map has an unexpected layout")?;
    Ok(counters(&stats)?
        .into_iter()
        .filter(|(_, total)| *total > 0)
        .map(|(stat, total)| (stat.name(), total))
        .collect())
}
