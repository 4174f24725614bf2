//! The fast path's counters as the tests read them: through `dataplane stats -o json`, the
//! operator's own command, and the growth of one counter between two readings.

use std::{collections::BTreeMap, path::Path};

use anyhow::Context as _;
use serde_json::Value;

/// The counters of the agent pinned at `pin_path` (`<bin> stats -o json`), decisions and drops
/// in one map, by name.
pub fn read(bin: &Path, pin_path: &Path) -> anyhow::Result<BTreeMap<String, u64>> {
    let (bin, pin_arg) = (bin.to_string_lossy(), pin_path.to_string_lossy());
    let output = crate::cmd::run(&[&*bin, "stats", "--pin-path", &pin_arg, "-o", "json"])?;
    let json: Value = serde_json::from_slice(&output.stdout).context("`dataplane stats -o json` did not print JSON")?;
    let mut counters = BTreeMap::new();
    for section in ["decisions", "drops"] {
        let map = json[section].as_object().with_context(|| format!("stats JSON has no {section:?} object: {json}"))?;
        for (name, value) in map {
            let packets = value.as_u64().with_context(|| format!("counter {name} is not a number: {value}"))?;
            counters.insert(name.clone(), packets);
        }
    }
    Ok(counters)
}

/// One counter (a decision or a drop reason) of the agent pinned at `pin_path`; an error names
/// the counters there are when `name` is not one of them.
pub fn one(bin: &Path, pin_path: &Path, name: &str) -> anyhow::Result<u64> {
    let counters = read(bin, pin_path)?;
    counters
        .get(name)
        .copied()
        .with_context(|| format!("`dataplane stats -o json` has no counter {name}: {counters:?}"))
}

/// How much counter `name` grew between two readings (a counter missing from both is 0).
pub fn growth(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, name: &str) -> u64 {
    let read = |counters: &BTreeMap<String, u64>| counters.get(name).copied().unwrap_or(0);
    read(after).saturating_sub(read(before))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_is_the_difference_and_never_negative() {
        let before = BTreeMap::from([("encap_vxlan".to_owned(), 5), ("drop_blackhole".to_owned(), 9)]);
        let after = BTreeMap::from([("encap_vxlan".to_owned(), 12), ("drop_blackhole".to_owned(), 3)]);
        assert_eq!(growth(&before, &after, "encap_vxlan"), 7);
        assert_eq!(growth(&before, &after, "drop_blackhole"), 0, "a reset counter did not grow");
        assert_eq!(growth(&before, &after, "delivered_local"), 0);
    }
}
