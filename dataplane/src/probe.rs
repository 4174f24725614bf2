//! The start-up feature probe: can this kernel run the fast path?
//!
//! Each check names the kernel feature the fast path needs, so `--mode bpf` can fail saying
//! exactly what is missing, and `--mode auto` can fall back knowing why.
//!
//! [`DISABLE_ENV`] (`DATAPLANE_PROBE_DISABLE=bpf_redirect_peer,tcx`) makes the probe report
//! features as missing although the kernel has them: the only way to exercise the fallback on a
//! kernel that has everything. A feature is named by its full name or by one of its words
//! (`bpf_redirect_peer`, `lpm_trie`, `BTF`, `tcx`, `sched_cls`).
//!
//! tcx is not required: it only picks how the programs attach ([`attach_method`]). Without it
//! (Linux before 6.6, e.g. Debian 12's 6.1) they attach as filters of a clsact qdisc.

use std::path::Path;

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_helper_supported, is_map_supported, is_program_supported, BpfHelper},
    util::KernelVersion,
};

/// The environment variable naming features the probe must report missing (comma-separated).
pub const DISABLE_ENV: &str = "DATAPLANE_PROBE_DISABLE";

/// One probed feature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Feature {
    /// What it is, as an operator searches for it.
    pub name: &'static str,
    /// Whether this kernel has it (false also when [`DISABLE_ENV`] names it).
    pub present: bool,
    /// Why the fast path needs it.
    pub needed_for: &'static str,
    /// Reported missing because [`DISABLE_ENV`] names it, whatever the kernel has.
    pub disabled: bool,
    /// The fast path cannot run without it (false: it only picks between two ways of working).
    pub required: bool,
}

/// The name of the tcx feature, which picks the [`AttachMethod`].
pub const TCX: &str = "tcx (Linux 6.6+)";

/// The name of the XDP feature: without it the uplink gets no XDP program.
pub const XDP: &str = "program type xdp";

/// Whether the uplink's XDP program may be attached: the probe found XDP (and [`DISABLE_ENV`]
/// does not hide it).
pub fn xdp_allowed(features: &[Feature]) -> bool {
    features.iter().any(|f| f.name == XDP && f.present)
}

/// How the TC programs are attached to their hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMethod {
    /// tcx links (Linux 6.6+), pinned and updated atomically by the next agent.
    Tcx,
    /// Direct-action filters of a clsact qdisc, replaced in place by the next agent.
    Clsact,
}

impl std::fmt::Display for AttachMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachMethod::Tcx => "tcx",
            AttachMethod::Clsact => "clsact",
        })
    }
}

/// tcx when the probe found it (and [`DISABLE_ENV`] does not hide it), clsact otherwise.
pub fn attach_method(features: &[Feature]) -> AttachMethod {
    if features.iter().any(|f| f.name == TCX && f.present) {
        AttachMethod::Tcx
    } else {
        AttachMethod::Clsact
    }
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

/// Probes every feature the fast path needs, then marks the features named in [`DISABLE_ENV`]
/// as missing. Returns the features and the names in the variable that matched no feature
/// (so that a typo is reported rather than silently testing nothing).
pub fn probe() -> (Vec<Feature>, Vec<String>) {
    let mut features = probe_kernel();
    let unknown = match std::env::var(DISABLE_ENV) {
        Ok(spec) => disable(&mut features, &spec),
        Err(_) => Vec::new(),
    };
    (features, unknown)
}

/// What the kernel itself offers, without [`DISABLE_ENV`].
pub fn probe_kernel() -> Vec<Feature> {
    let mut features = vec![Feature {
        name: "BTF (/sys/kernel/btf/vmlinux)",
        present: Path::new("/sys/kernel/btf/vmlinux").exists(),
        needed_for: "loading BTF maps that bpftool can print",
        disabled: false,
        required: true,
    }];
    features.push(Feature {
        name: "program type sched_cls (TC)",
        present: is_program_supported(ProgramType::SchedClassifier).unwrap_or(false),
        needed_for: "every fast-path program",
        disabled: false,
        required: true,
    });
    for (map, name, needed_for) in [
        (MapType::LpmTrie, "map type lpm_trie", "the routes map"),
        (MapType::Hash, "map type hash", "workloads, peers and conntrack"),
        (MapType::PerCpuArray, "map type percpu_array", "the stats map"),
    ] {
        let present = is_map_supported(map).unwrap_or(false);
        features.push(Feature { name, present, needed_for, disabled: false, required: true });
    }
    for (helper, name, needed_for) in HELPERS {
        let present = is_helper_supported(ProgramType::SchedClassifier, helper).unwrap_or(false);
        features.push(Feature { name, present, needed_for, disabled: false, required: true });
    }
    features.push(Feature {
        name: XDP,
        present: is_program_supported(ProgramType::Xdp).unwrap_or(false),
        needed_for:
            "dropping refused tunnel packets on the uplink before an skb exists (without it: from_uplink alone)",
        disabled: false,
        required: false,
    });
    features.push(Feature {
        name: TCX,
        present: has_tcx(),
        needed_for: "attaching the programs through tcx links (without it: through a clsact qdisc)",
        disabled: false,
        required: false,
    });
    features
}

/// Marks every feature named in `spec` (comma-separated; a full name or one word of it, any
/// case) as missing, and says so in the log. Returns the names that matched no feature.
pub fn disable(features: &mut [Feature], spec: &str) -> Vec<String> {
    let mut unknown = Vec::new();
    for token in spec.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let mut matched = false;
        for feature in features.iter_mut() {
            let named = feature.name.eq_ignore_ascii_case(token)
                || feature.name.split_whitespace().any(|word| word.eq_ignore_ascii_case(token));
            if named {
                matched = true;
                if feature.present {
                    tracing::warn!(feature = feature.name, "{DISABLE_ENV} reports this feature as missing");
                }
                feature.present = false;
                feature.disabled = true;
            }
        }
        if !matched {
            unknown.push(token.to_owned());
        }
    }
    unknown
}

/// Whether programs attach through tcx links (Linux 6.6+) rather than clsact qdiscs.
pub fn has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|version| version >= KernelVersion::new(6, 6, 0))
}

/// The missing required features, as one sentence for an error or a log line; None when all
/// are there.
pub fn missing(features: &[Feature]) -> Option<String> {
    let missing: Vec<String> = features
        .iter()
        .filter(|f| f.required && !f.present)
        .map(|f| {
            let forced = if f.disabled { format!("; {DISABLE_ENV} says so") } else { String::new() };
            format!("{} (needed for {}{forced})", f.name, f.needed_for)
        })
        .collect();
    (!missing.is_empty()).then(|| missing.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_names_each_absent_feature_and_its_use() {
        let features = vec![
            Feature { name: "a", present: true, needed_for: "x", disabled: false, required: true },
            Feature {
                name: "bpf_redirect_peer",
                present: false,
                needed_for: "delivery into pods",
                disabled: false,
                required: true,
            },
        ];
        assert_eq!(missing(&features).as_deref(), Some("bpf_redirect_peer (needed for delivery into pods)"));
        assert_eq!(missing(&features[..1]), None);
    }

    fn all_present() -> Vec<Feature> {
        ["BTF (/sys/kernel/btf/vmlinux)", "map type lpm_trie", "bpf_redirect_peer", "tcx (Linux 6.6+)"]
            .into_iter()
            .map(|name| Feature { name, present: true, needed_for: "x", disabled: false, required: name != TCX })
            .collect()
    }

    #[test]
    fn disable_matches_a_full_name_or_one_word_in_any_case() {
        let mut features = all_present();
        let unknown = disable(&mut features, " bpf_redirect_peer , LPM_TRIE,btf,,tcx (Linux 6.6+)");
        assert_eq!(unknown, Vec::<String>::new());
        assert!(features.iter().all(|f| !f.present), "{features:?}");
    }

    #[test]
    fn disable_reports_names_that_match_nothing_and_leaves_the_rest() {
        let mut features = all_present();
        let unknown = disable(&mut features, "bpf_redirect_per,lpm_trie");
        assert_eq!(unknown, ["bpf_redirect_per"]);
        let missing = missing(&features).expect("lpm_trie disabled");
        assert_eq!(missing, "map type lpm_trie (needed for x; DATAPLANE_PROBE_DISABLE says so)");
        // "map" is a word of "map type lpm_trie": a word matches, a part of a word does not.
        let mut features = all_present();
        assert_eq!(disable(&mut features, "redirect"), ["redirect"]);
        assert!(features.iter().all(|f| f.present));
    }

    #[test]
    fn tcx_picks_the_attach_method_and_is_never_missing() {
        let mut features = all_present();
        assert_eq!(attach_method(&features), AttachMethod::Tcx);
        assert_eq!(disable(&mut features, "tcx"), Vec::<String>::new());
        assert_eq!(attach_method(&features), AttachMethod::Clsact);
        // Without tcx the fast path still runs: nothing required is missing.
        assert_eq!(missing(&features), None);
        assert_eq!(AttachMethod::Clsact.to_string(), "clsact");
    }

    #[test]
    fn xdp_is_optional_and_can_be_switched_off() {
        let mut features = all_present();
        features.push(Feature { name: XDP, present: true, needed_for: "x", disabled: false, required: false });
        assert!(xdp_allowed(&features));
        assert_eq!(disable(&mut features, "xdp"), Vec::<String>::new());
        assert!(!xdp_allowed(&features));
        assert_eq!(missing(&features), None, "the fast path runs without XDP");
    }

    #[test]
    fn a_kernel_without_tcx_attaches_through_clsact() {
        let mut features = all_present();
        features.retain(|f| f.name != TCX);
        assert_eq!(attach_method(&features), AttachMethod::Clsact);
        features.push(Feature { name: TCX, present: false, needed_for: "x", disabled: false, required: false });
        assert_eq!(attach_method(&features), AttachMethod::Clsact);
    }
}
