//! The start-up feature probe: can this kernel run the fast path?
//!
//! Each check names the kernel feature the fast path needs, so `--mode bpf` can fail saying
//! exactly what is missing, and `--mode auto` can fall back knowing why.

use std::path::Path;

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_helper_supported, is_map_supported, is_program_supported, BpfHelper},
    util::KernelVersion,
};

/// One probed feature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Feature {
    /// What it is, as an operator searches for it.
    pub name: &'static str,
    /// Whether this kernel has it.
    pub present: bool,
    /// Why the fast path needs it.
    pub needed_for: &'static str,
}

/// Kernel helpers the TC programs call, with what each is for.
const HELPERS: [(BpfHelper, &str, &str); 6] = [
    (BpfHelper::BPF_FUNC_skb_adjust_room, "bpf_skb_adjust_room", "VXLAN/IPIP encapsulation and decapsulation"),
    (BpfHelper::BPF_FUNC_redirect_peer, "bpf_redirect_peer", "delivery into pods"),
    (BpfHelper::BPF_FUNC_redirect_neigh, "bpf_redirect_neigh", "sending to other nodes"),
    (BpfHelper::BPF_FUNC_l4_csum_replace, "bpf_l4_csum_replace", "natOutgoing checksum updates"),
    (BpfHelper::BPF_FUNC_skb_change_tail, "bpf_skb_change_tail", "ICMP fragmentation-needed replies"),
    (BpfHelper::BPF_FUNC_ktime_get_ns, "bpf_ktime_get_ns", "conntrack timeouts"),
];

/// Probes every feature the fast path needs.
pub fn probe() -> Vec<Feature> {
    let mut features = vec![Feature {
        name: "BTF (/sys/kernel/btf/vmlinux)",
        present: Path::new("/sys/kernel/btf/vmlinux").exists(),
        needed_for: "loading BTF maps that bpftool can print",
    }];
    features.push(Feature {
        name: "program type sched_cls (TC)",
        present: is_program_supported(ProgramType::SchedClassifier).unwrap_or(false),
        needed_for: "every fast-path program",
    });
    for (map, name, needed_for) in [
        (MapType::LpmTrie, "map type lpm_trie", "the routes map"),
        (MapType::Hash, "map type hash", "workloads, peers and conntrack"),
        (MapType::PerCpuArray, "map type percpu_array", "the stats map"),
    ] {
        features.push(Feature { name, present: is_map_supported(map).unwrap_or(false), needed_for });
    }
    for (helper, name, needed_for) in HELPERS {
        let present = is_helper_supported(ProgramType::SchedClassifier, helper).unwrap_or(false);
        features.push(Feature { name, present, needed_for });
    }
    features
}

/// Whether programs attach through tcx links (Linux 6.6+) rather than clsact qdiscs.
pub fn has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|version| version >= KernelVersion::new(6, 6, 0))
}

/// The missing features, as one sentence for an error or a log line; None when all are there.
pub fn missing(features: &[Feature]) -> Option<String> {
    let missing: Vec<String> =
        features.iter().filter(|f| !f.present).map(|f| format!("{} (needed for {})", f.name, f.needed_for)).collect();
    (!missing.is_empty()).then(|| missing.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_names_each_absent_feature_and_its_use() {
        let features = vec![
            Feature { name: "a", present: true, needed_for: "x" },
            Feature { name: "bpf_redirect_peer", present: false, needed_for: "delivery into pods" },
        ];
        assert_eq!(missing(&features).as_deref(), Some("bpf_redirect_peer (needed for delivery into pods)"));
        assert_eq!(missing(&features[..1]), None);
    }
}
