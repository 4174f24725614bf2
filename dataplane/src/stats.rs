//! `dataplane stats`: the per-CPU stats map, summed, as counters a person reads or as JSON.

use std::{collections::BTreeMap, path::Path};

use dataplane_common::Stat;

use crate::pinned::PinnedMaps;

/// One counter: its slot and the packets it counted on all CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counter {
    /// The decision or drop reason.
    pub stat: Stat,
    /// Packets, summed over CPUs.
    pub packets: u64,
}

/// Reads every named counter from the pinned stats map under `pin_path`.
pub fn read(pin_path: &Path) -> anyhow::Result<Vec<Counter>> {
    let counters = PinnedMaps::at(pin_path).read_counters()?;
    Ok(counters.into_iter().map(|(stat, packets)| Counter { stat, packets }).collect())
}

/// The counters as an aligned table: decisions first, then drops with their reasons.
pub fn table(counters: &[Counter]) -> String {
    let width = counters.iter().map(|c| c.stat.name().len()).max().unwrap_or(0);
    let mut out = String::new();
    for (title, drops) in [("decisions", false), ("drops", true)] {
        out.push_str(title);
        out.push('\n');
        for counter in counters.iter().filter(|c| c.stat.is_drop() == drops) {
            out.push_str(&format!("  {:<width$}  {:>12}\n", counter.stat.name(), counter.packets));
        }
    }
    out
}

/// The counters as a JSON object `{"decisions": {name: n}, "drops": {name: n}}`.
pub fn json(counters: &[Counter]) -> serde_json::Value {
    let mut decisions = BTreeMap::new();
    let mut drops = BTreeMap::new();
    for counter in counters {
        let section = if counter.stat.is_drop() { &mut drops } else { &mut decisions };
        section.insert(counter.stat.name(), counter.packets);
    }
    serde_json::json!({ "decisions": decisions, "drops": drops })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters() -> Vec<Counter> {
        vec![Counter { stat: Stat::EncapVxlan, packets: 12 }, Counter { stat: Stat::DropSpoofedSource, packets: 3 }]
    }

    #[test]
    fn table_separates_decisions_from_drops() {
        let text = table(&counters());
        let decisions = text.find("decisions").unwrap();
        let drops = text.find("drops").unwrap();
        let encap = text.find("encap_vxlan").unwrap();
        let spoofed = text.find("drop_spoofed_source").unwrap();
        assert!(decisions < encap && encap < drops && drops < spoofed, "{text}");
        assert!(text.contains("12") && text.contains("3"));
    }

    #[test]
    fn json_names_every_counter() {
        let value = json(&counters());
        assert_eq!(value["decisions"]["encap_vxlan"], 12);
        assert_eq!(value["drops"]["drop_spoofed_source"], 3);
    }

    #[test]
    fn every_stat_has_a_distinct_name() {
        let names: std::collections::BTreeSet<_> = Stat::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names.len(), Stat::ALL.len());
    }
}
