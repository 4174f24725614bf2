//! Upgrades of the pinned maps: what a new agent does with the pins of an agent whose map
//! layouts differ from its own.
//!
//! Every pin is `<family>_v<version>` ([`dataplane_common::layout`]). At start, before it loads
//! anything, the agent surveys its pin path ([`survey`]):
//! - a pin of a *newer* version than its own: the node runs a newer agent whose maps this one
//!   cannot read. It refuses to start ([`Refusal`]) and changes nothing: the programs, links and
//!   maps in place keep carrying the traffic.
//! - a pin of an *older* version: an upgrade. The new object is loaded with new, empty maps beside
//!   the old pins (the old programs keep using those), every map is carried into its new layout
//!   ([`Upgrade::migrate`]: kernel state converted entry by entry, maps the agent owns written
//!   from the plan by the first apply), the programs are swapped, and only then are the old pins
//!   removed ([`Upgrade::finish`]).
//!
//! A marker directory under the pin path ([`MARKER`]) says an upgrade is under way. An agent that
//! dies in the middle leaves the old pins (still authoritative: the old programs run until the
//! swap) and a partly filled new map. The next start finds them and resumes: entries are copied
//! only where the new map has none, so a second pass never overwrites what a first pass or a new
//! program wrote.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use aya::{
    maps::{HashMap, Map, MapData, MapError},
    Ebpf,
};
use dataplane_common::{
    layout::{split_version, PinnedMap},
    PINNED_MAPS,
};
use tracing::{info, warn};

/// Directory under the pin path that exists while an upgrade is under way (from the first
/// converted entry until the old pins are gone). bpffs holds pins and directories only, so the
/// journal is a directory; the old pins beside it are its contents.
pub const MARKER: &str = "upgrading";

/// Test hook: with this variable set to N, the agent aborts (as a crash would) after converting
/// N entries of a map, so that the upgrade test can restart it halfway through a migration.
pub const ABORT_AFTER_ENV: &str = "DATAPLANE_ABORT_MIGRATION_AFTER";

/// `BPF_NOEXIST`: insert only where the key is absent.
const BPF_NOEXIST: u64 = 1;

/// How a map's entries cross a change of its layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carry {
    /// The agent owns every entry: its first apply writes the new map whole from the plan before
    /// it swaps the programs.
    Refill,
    /// State the programs keep that may start over: the new map starts empty (counters restart
    /// from zero, a monitor reader re-opens).
    Restart,
    /// State the programs keep that must survive (live translated flows): each older version
    /// needs a [`Conversion`].
    Convert,
}

/// How the map family `family` crosses a layout change.
pub fn carry(family: &str) -> Carry {
    match family {
        "routes" | "workloads" | "peers" | "node" | "routes6" | "workloads6" | "peers6" | "node6" => Carry::Refill,
        "conntrack" | "fragments" => Carry::Convert,
        _ => Carry::Restart,
    }
}

/// Counts of one conversion pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    /// Entries written into the new map.
    pub copied: usize,
    /// Entries the new map already had (a resumed pass, or a flow a new program created).
    pub present: usize,
}

/// Converts the entries of the old pin into the loaded object's new map, where absent; aborts
/// after `abort_after` written entries (the test hook).
type Convert = fn(old_pin: &Path, ebpf: &mut Ebpf, abort_after: Option<usize>) -> anyhow::Result<Copied>;

/// A conversion of one map from an older pin to this agent's layout.
pub struct Conversion {
    /// The older pin's name.
    pub from: &'static str,
    /// This agent's pin name.
    pub to: &'static str,
    convert: Convert,
}

/// Every conversion this agent can do.
#[cfg(not(feature = "previous-layout"))]
pub const CONVERSIONS: &[Conversion] = &[Conversion {
    from: dataplane_common::previous::CONNTRACK_MAP_V0,
    to: dataplane_common::CONNTRACK_MAP,
    convert: conntrack_v0_to_v1,
}];
/// Every conversion this agent can do (the previous layout's build knows no older one).
#[cfg(feature = "previous-layout")]
pub const CONVERSIONS: &[Conversion] = &[];

/// conntrack_v0 -> conntrack_v1: the same fields, the timestamps moved first.
#[cfg(not(feature = "previous-layout"))]
fn conntrack_v0_to_v1(old_pin: &Path, ebpf: &mut Ebpf, abort_after: Option<usize>) -> anyhow::Result<Copied> {
    use dataplane_common::{previous::NatFlowV0, FlowKey, NatFlow, CONNTRACK_MAP};
    let old = open_hash::<FlowKey, NatFlowV0>(old_pin)?;
    let map = ebpf.map_mut(CONNTRACK_MAP).with_context(|| format!("map {CONNTRACK_MAP} missing from the object"))?;
    let mut new: HashMap<&mut MapData, FlowKey, NatFlow> =
        HashMap::try_from(map).with_context(|| format!("map {CONNTRACK_MAP} has an unexpected layout"))?;
    copy_absent(&old, &mut new, abort_after, |flow| NatFlow {
        created_ns: flow.created_ns,
        last_seen_ns: flow.last_seen_ns,
        pod_addr: flow.pod_addr,
        peer_addr: flow.peer_addr,
        nat_addr: flow.nat_addr,
        pod_port: flow.pod_port,
        peer_port: flow.peer_port,
        nat_port: flow.nat_port,
        protocol: flow.protocol,
        state: flow.state,
        _pad: [0; 4],
    })
}

/// Opens an older pin as a hash map (plain or LRU) of `K` -> `V`.
#[cfg_attr(feature = "previous-layout", expect(dead_code, reason = "the previous layout converts nothing"))]
fn open_hash<K: aya::Pod, V: aya::Pod>(pin: &Path) -> anyhow::Result<HashMap<MapData, K, V>> {
    let data = MapData::from_pin(pin).with_context(|| format!("opening {}", pin.display()))?;
    HashMap::try_from(Map::HashMap(data))
        .or_else(|_| {
            let data = MapData::from_pin(pin)?;
            HashMap::try_from(Map::LruHashMap(data))
        })
        .with_context(|| format!("{} does not have the layout its name says", pin.display()))
}

/// Writes every entry of `old`, converted, into `new` where its key is absent. Entries are read
/// first, then written: the old programs may still add flows meanwhile, which the pass after the
/// swap copies.
#[cfg_attr(feature = "previous-layout", expect(dead_code, reason = "the previous layout converts nothing"))]
fn copy_absent<K: aya::Pod, V0: aya::Pod, V: aya::Pod>(
    old: &HashMap<MapData, K, V0>,
    new: &mut HashMap<&mut MapData, K, V>,
    abort_after: Option<usize>,
    convert: impl Fn(V0) -> V,
) -> anyhow::Result<Copied> {
    let entries: Vec<(K, V0)> = old.iter().filter_map(Result::ok).collect();
    let mut counts = Copied::default();
    for (key, value) in entries {
        if abort_after.is_some_and(|limit| counts.copied >= limit) {
            warn!(env = ABORT_AFTER_ENV, copied = counts.copied, "aborting halfway through a migration, as asked");
            std::process::abort();
        }
        match new.insert(key, convert(value), BPF_NOEXIST) {
            Ok(()) => counts.copied += 1,
            Err(MapError::SyscallError(error)) if error.io_error.raw_os_error() == Some(libc::EEXIST) => {
                counts.present += 1;
            }
            // Flattened: an aya error in the chain would make the agent fall back to netlink,
            // which removes the fast path the node still runs on.
            Err(error) => anyhow::bail!("writing a converted entry: {error}"),
        }
    }
    Ok(counts)
}

/// A start refused because the pins belong to a newer agent.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to start: {pin_path} holds maps of a newer agent ({newer}), whose layout this agent \
     cannot read (it uses {ours}). Nothing was changed: the programs, links and maps in place keep \
     carrying the node's traffic. Fix: run the newer agent again (or any version that knows these \
     layouts). To start over with this version anyway, `dataplane cleanup --pin-path {pin_path}` \
     removes the fast path first (traffic stops until this agent has programmed the node, and \
     translated flows are lost)."
)]
pub struct Refusal {
    /// The pin path.
    pub pin_path: String,
    /// The newer pins, comma-separated.
    pub newer: String,
    /// This agent's names of the same maps, comma-separated.
    pub ours: String,
}

/// One pin of an older version found at start.
#[derive(Debug)]
pub struct OldPin {
    /// Its name under the pin path.
    pub name: String,
    /// This agent's name of the same map.
    pub current: &'static str,
    /// How its entries cross.
    pub carry: Carry,
}

/// What the survey of the pin path found: the older pins to carry over, if any.
#[derive(Debug, Default)]
pub struct Upgrade {
    pin_path: PathBuf,
    /// Older pins, in name order.
    pub old_pins: Vec<OldPin>,
    /// Whether an earlier agent began this upgrade and did not finish it.
    pub resumed: bool,
}

/// What a pin path holds, as the upgrade logic sees it: the pins' names and whether an upgrade's
/// marker is there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PinListing {
    /// The names of the pinned objects (not directories), sorted.
    pub names: Vec<String>,
    /// Whether the [`MARKER`] directory exists: an upgrade began and did not finish.
    pub marker: bool,
}

/// Lists `pin_path`; a path that does not exist holds nothing.
pub fn list_pins(pin_path: &Path) -> anyhow::Result<PinListing> {
    let mut listing = PinListing::default();
    let entries = match fs::read_dir(pin_path) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(listing),
        Err(error) => return Err(error).with_context(|| format!("listing {}", pin_path.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", pin_path.display()))?;
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            listing.marker |= entry.file_name() == MARKER;
            continue;
        }
        listing.names.push(entry.file_name().to_string_lossy().into_owned());
    }
    listing.names.sort();
    Ok(listing)
}

/// Pins of this agent's map families whose version is not this agent's: `(pin, this agent's
/// entry for the same map)`.
#[derive(Clone, Debug, Default)]
pub struct VersionSkew {
    /// Pins of a newer agent, which this one cannot read.
    pub newer: Vec<(String, &'static PinnedMap)>,
    /// Pins of an older agent, which this one migrates.
    pub older: Vec<(String, &'static PinnedMap)>,
}

/// Sorts the pins whose version differs from this agent's layouts ([`PINNED_MAPS`]); names of
/// other families (links, the marker) are not maps of a layout and are left out.
pub fn version_skew(names: &[String]) -> VersionSkew {
    let mut skew = VersionSkew::default();
    for name in names {
        let Some((family, version)) = split_version(name) else { continue };
        let Some(current) = PINNED_MAPS.iter().find(|map| map.family() == family) else { continue };
        if version > current.version() {
            skew.newer.push((name.clone(), current));
        } else if version < current.version() {
            skew.older.push((name.clone(), current));
        }
    }
    skew
}

/// Reads the pin path before anything is loaded: refuses a downgrade, finds an upgrade's old pins.
pub fn survey(pin_path: &Path) -> anyhow::Result<Upgrade> {
    let listing = list_pins(pin_path)?;
    let mut upgrade = Upgrade { pin_path: pin_path.to_owned(), resumed: listing.marker, ..Upgrade::default() };
    let skew = version_skew(&listing.names);
    if !skew.newer.is_empty() {
        return Err(Refusal {
            pin_path: pin_path.display().to_string(),
            newer: skew.newer.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>().join(", "),
            ours: skew.newer.iter().map(|(_, ours)| ours.name).collect::<Vec<_>>().join(", "),
        }
        .into());
    }
    for (name, current) in skew.older {
        let (current, carry) = (current.name, carry(current.family()));
        if carry == Carry::Convert && !CONVERSIONS.iter().any(|c| c.from == name && c.to == current) {
            anyhow::bail!(
                "{} holds {name}, which this agent cannot convert to {current}: no migration is known; \
                 nothing was changed. Upgrade through a version that knows {name}, or remove the \
                 fast path with `dataplane cleanup --pin-path {}` (translated flows are lost)",
                pin_path.display(),
                pin_path.display()
            );
        }
        upgrade.old_pins.push(OldPin { name, current, carry });
    }
    Ok(upgrade)
}

impl Upgrade {
    /// Whether there is anything to carry over or to clean up.
    pub fn is_empty(&self) -> bool {
        self.old_pins.is_empty() && !self.resumed
    }

    /// Carries every old map into the freshly loaded object's new maps: conversions now, maps the
    /// agent owns at its first apply (which writes the maps before it attaches). Call after the
    /// object is loaded and before any program is swapped.
    pub fn migrate(&self, ebpf: &mut Ebpf) -> anyhow::Result<()> {
        if self.old_pins.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = self.old_pins.iter().map(|pin| pin.name.as_str()).collect();
        if self.resumed {
            info!(old = ?names, "resuming an upgrade an earlier agent did not finish");
        } else {
            info!(old = ?names, "upgrading the pinned maps to this agent's layouts");
        }
        crate::sys::create_private_dir(&self.pin_path.join(MARKER))?;
        let abort_after = std::env::var(ABORT_AFTER_ENV).ok().and_then(|value| value.parse().ok());
        self.convert(ebpf, abort_after)?;
        for pin in &self.old_pins {
            match pin.carry {
                Carry::Refill => {
                    info!(from = %pin.name, to = pin.current, "map is rewritten from the plan by the first apply, before the swap")
                }
                Carry::Restart => info!(from = %pin.name, to = pin.current, "map starts empty in its new layout"),
                Carry::Convert => {}
            }
        }
        Ok(())
    }

    /// Runs every conversion once.
    fn convert(&self, ebpf: &mut Ebpf, abort_after: Option<usize>) -> anyhow::Result<()> {
        for pin in self.old_pins.iter().filter(|pin| pin.carry == Carry::Convert) {
            let Some(conversion) = CONVERSIONS.iter().find(|c| c.from == pin.name && c.to == pin.current) else {
                continue;
            };
            let counts = (conversion.convert)(&self.pin_path.join(&pin.name), ebpf, abort_after)
                .map_err(|error| anyhow::anyhow!("migrating {} to {}: {error:#}", pin.name, pin.current))?;
            info!(from = %pin.name, to = pin.current, copied = counts.copied, present = counts.present, "map migrated");
        }
        Ok(())
    }

    /// After the programs were swapped: copies what the old programs added since the first pass,
    /// then removes the old pins and the marker.
    pub fn finish(&mut self, ebpf: &mut Ebpf) -> anyhow::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        self.convert(ebpf, None)?;
        for pin in &self.old_pins {
            crate::backend::bpf::remove_pin(&self.pin_path.join(&pin.name))?;
        }
        match fs::remove_dir(self.pin_path.join(MARKER)) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(error).with_context(|| format!("removing {}", self.pin_path.join(MARKER).display()))
            }
        }
        if !self.old_pins.is_empty() {
            info!(removed = self.old_pins.len(), "upgrade done: the old pins are removed");
        }
        self.old_pins.clear();
        self.resumed = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pinned map's layout fingerprint, by pin name, as released. A layout change shows
    /// here as a mismatch: give the map a new version (its `_vN`), record the new fingerprint
    /// beside the old one, and add a conversion (or a [`carry`] that needs none).
    const LEDGER: &[(&str, u64)] = &[
        ("routes_v1", 0x4248_a724_f5a8_0589),
        ("workloads_v1", 0x8323_41bd_fba5_d43e),
        ("workload_slots_v1", 0x5e42_b6fe_e8f9_6f95),
        ("pools_v1", 0x75f1_16fe_21ca_c3eb),
        ("tunnel_templates_v1", 0x9f9b_93f2_4150_03ab),
        // The upgrade test's older agent: the layout of v1 under an older name (see
        // dataplane_common::previous).
        ("peers_v0", 0x615f_d9ca_bbbb_4cf6),
        ("peers_v1", 0x615f_d9ca_bbbb_4cf6),
        ("node_v1", 0x6f3a_b18d_fe5e_f1f8),
        ("stats_v1", 0x9d3a_3836_df2d_92b7),
        ("conntrack_v0", 0x9b1c_465e_3cbb_a872),
        ("conntrack_v1", 0x9a5e_2072_9ab7_d715),
        ("fragments_v1", 0x4106_d17b_0803_d46b),
        ("monitor_events_v1", 0xfd45_b496_9362_4496),
        ("monitor_lease_v2", 0x9377_a825_a928_d524),
        ("monitor_counts_v1", 0xa184_6bcd_93e2_e395),
        ("routes6_v1", 0xbdbd_2339_53f1_0183),
        ("workloads6_v1", 0x7e1c_d045_49ae_f53e),
        ("peers6_v1", 0xd22c_1a01_ad2e_3bc8),
        ("node6_v1", 0x9cac_2c5a_dbc8_1d8f),
    ];

    /// The stats map's slots as released: which counter a slot holds is part of the pinned map's
    /// layout, so a slot is never renumbered or reused (new counters take new slots).
    const STAT_SLOTS: &[(&str, u32)] = &[
        ("delivered_local", 0),
        ("encap_vxlan", 1),
        ("encap_ipip", 2),
        ("decap_vxlan", 3),
        ("decap_ipip", 4),
        ("routed_plain", 5),
        ("pass_to_stack", 6),
        ("arp_replied", 7),
        ("arp_passed", 8),
        ("icmp_frag_needed", 9),
        ("snat_new", 10),
        ("snat_established", 11),
        ("reverse_nat", 12),
        ("egress_unchanged", 13),
        ("xdp_passed", 14),
        ("snat_fragment", 15),
        ("reverse_nat_fragment", 16),
        ("pass_untracked_fragment", 17),
        ("pass_tunnel_fragment", 18),
        ("decap_vxlan_reassembled", 19),
        ("ndp_replied", 20),
        ("ndp_passed", 21),
        ("pass_ipv6_no_address", 22),
        ("pass_ipv6_link_scope", 23),
        ("pass_ipv6_hop_by_hop", 24),
        ("drop_malformed", 32),
        ("drop_spoofed_source", 33),
        ("drop_unknown_workload", 34),
        ("drop_unknown_peer", 35),
        ("drop_wrong_vni", 36),
        ("drop_blackhole", 37),
        ("drop_ttl_exceeded", 38),
        ("drop_adjust_room_failed", 39),
        ("drop_packet_access", 40),
        ("drop_redirect_failed", 41),
        ("drop_no_node_config", 42),
        ("drop_tunnel_fragment", 43),
        ("drop_nat_ports_exhausted", 44),
        ("drop_conntrack_full", 45),
        ("drop_nat_fragment", 46),
        ("drop_tunnel_from_workload", 47),
        ("drop_vxlan_socket", 48),
    ];

    #[test]
    fn stats_slots_are_only_ever_appended() {
        for (name, index) in STAT_SLOTS {
            let now = dataplane_common::Stat::from_index(*index).map(dataplane_common::Stat::name);
            assert_eq!(
                now,
                Some(*name),
                "stats_v1 slot {index} held {name}: renumbering a slot makes an upgraded agent read \
                 the previous one's counters under the wrong names; append the counter instead"
            );
        }
    }

    #[test]
    fn a_layout_change_comes_with_a_new_version_and_a_migration() {
        let mut wrong = Vec::new();
        for map in &PINNED_MAPS {
            let fingerprint = map.fingerprint();
            match LEDGER.iter().find(|(name, _)| *name == map.name) {
                Some((_, recorded)) if *recorded == fingerprint => {}
                Some((_, recorded)) => wrong.push(format!(
                    "{}: layout changed (fingerprint {fingerprint:#018x}, recorded {recorded:#018x}) but \
                     its version did not: name it {}_v{}, record the new fingerprint, and give it a migration",
                    map.name,
                    map.family(),
                    map.version() + 1
                )),
                None => wrong
                    .push(format!("{}: not in the ledger: record (\"{}\", {fingerprint:#018x})", map.name, map.name)),
            }
            // Every older version of a map whose state must survive has its conversion.
            if carry(map.family()) == Carry::Convert {
                for (name, _) in LEDGER {
                    if split_version(name)
                        .is_some_and(|(family, version)| family == map.family() && version < map.version())
                        && !CONVERSIONS.iter().any(|c| c.from == *name && c.to == map.name)
                    {
                        wrong.push(format!("{}: no conversion from {name}", map.name));
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    /// A directory holding empty files named like pins (the survey reads names only).
    fn pin_dir(test: &str, names: &[&str], marker: bool) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dataplane-survey-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join(crate::backend::bpf::LINKS_DIR)).expect("temp dir");
        for name in names {
            fs::write(dir.join(name), b"").expect("temp file");
        }
        if marker {
            fs::create_dir(dir.join(MARKER)).expect("marker");
        }
        dir
    }

    #[test]
    fn pins_of_this_version_need_nothing() {
        let names: Vec<&str> = PINNED_MAPS.iter().map(|map| map.name).collect();
        let dir = pin_dir("same", &names, false);
        let upgrade = survey(&dir).expect("same version");
        assert!(upgrade.is_empty(), "{upgrade:?}");
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn older_pins_are_an_upgrade_and_each_says_how_it_crosses() {
        let dir = pin_dir("older", &["conntrack_v0", "routes_v1", "monitor_lease_v1", "unrelated_v3"], false);
        let upgrade = survey(&dir).expect("an upgrade");
        let found: Vec<(&str, &str, Carry)> =
            upgrade.old_pins.iter().map(|pin| (pin.name.as_str(), pin.current, pin.carry)).collect();
        assert_eq!(
            found,
            [
                ("conntrack_v0", dataplane_common::CONNTRACK_MAP, Carry::Convert),
                ("monitor_lease_v1", "monitor_lease_v2", Carry::Restart)
            ]
        );
        assert!(!upgrade.resumed);
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn a_marker_left_by_a_crash_resumes() {
        let dir = pin_dir("resume", &["conntrack_v0", "conntrack_v1"], true);
        let upgrade = survey(&dir).expect("a resumed upgrade");
        assert!(upgrade.resumed);
        assert_eq!(upgrade.old_pins.len(), 1);
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn newer_pins_are_refused_naming_them_and_the_fix() {
        let dir = pin_dir("newer", &["routes_v1", "conntrack_v9", "peers_v4"], false);
        let error = survey(&dir).expect_err("a downgrade");
        let refusal = error.downcast_ref::<Refusal>().expect("a Refusal");
        assert_eq!(refusal.newer, "conntrack_v9, peers_v4");
        let message = error.to_string();
        assert!(message.contains("dataplane cleanup --pin-path"), "{message}");
        assert!(message.contains("Nothing was changed"), "{message}");
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn an_older_version_without_a_conversion_is_refused() {
        let dir = pin_dir("unknown", &["fragments_v0"], false);
        let error = survey(&dir).expect_err("no conversion");
        assert!(error.to_string().contains("cannot convert"), "{error}");
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn the_object_declares_every_pinned_map_as_the_table_says() {
        use aya_obj::generated::bpf_map_type;
        use dataplane_common::layout::MapKind;
        let object = crate::backend::bpf::object();
        assert!(!object.is_empty(), "built with AYA_BUILD_SKIP: no object to check");
        let object = aya_obj::Object::parse(object).expect("the embedded object parses");
        for map in &PINNED_MAPS {
            let name = crate::backend::bpf::object_map_name(map.name);
            let Some(declared) = object.maps.get(name) else { panic!("{name} is not in the object") };
            let kind = match map.kind {
                MapKind::LpmTrie => bpf_map_type::BPF_MAP_TYPE_LPM_TRIE,
                MapKind::Hash => bpf_map_type::BPF_MAP_TYPE_HASH,
                MapKind::LruHash => bpf_map_type::BPF_MAP_TYPE_LRU_HASH,
                MapKind::Array => bpf_map_type::BPF_MAP_TYPE_ARRAY,
                MapKind::PerCpuArray => bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY,
                MapKind::RingBuf => bpf_map_type::BPF_MAP_TYPE_RINGBUF,
            } as u32;
            let key = map.key.first().map_or(0, |layout| layout.size) as u32;
            let value = map.value.first().map_or(0, |layout| layout.size) as u32;
            // A ring buffer has no key or value in the kernel: its capacity is all there is.
            let (key, value) = if map.kind == MapKind::RingBuf { (0, 0) } else { (key, value) };
            assert_eq!(
                (declared.map_type(), declared.key_size(), declared.value_size(), declared.max_entries()),
                (kind, key, value, map.max_entries),
                "{}: the object's (type, key size, value size, capacity) differ from dataplane-common's table",
                map.name
            );
        }
        // And the object pins nothing the table does not know (data sections and aya-log's
        // buffers are not pinned).
        for name in object.maps.keys() {
            let pinned = PINNED_MAPS.iter().any(|map| crate::backend::bpf::object_map_name(map.name) == name);
            assert!(
                pinned || name.starts_with('.') || name.starts_with("AYA_"),
                "{name} is in the object but not in PINNED_MAPS"
            );
        }
    }

    #[test]
    fn the_previous_conntrack_layout_is_what_the_ledger_recorded() {
        let (_, layouts) = dataplane_common::layout::PREVIOUS_LAYOUTS[0];
        let current = dataplane_common::pinned_map(dataplane_common::CONNTRACK_MAP).expect("conntrack is pinned");
        let previous = dataplane_common::PinnedMap { name: "conntrack_v0", value: layouts, ..*current };
        let recorded = LEDGER.iter().find(|(name, _)| *name == "conntrack_v0").map(|(_, fp)| *fp);
        assert_eq!(Some(previous.fingerprint()), recorded);
    }
}
