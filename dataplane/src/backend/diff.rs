//! Desired against programmed: the entries to write and the entries to remove.

use std::collections::BTreeMap;

/// What to change in a map so that it holds the desired entries.
#[derive(Debug, PartialEq, Eq)]
pub struct Changes<K, V> {
    /// Entries that are missing or hold a different value.
    pub upserts: Vec<(K, V)>,
    /// Keys present but no longer desired.
    pub removals: Vec<K>,
}

impl<K, V> Changes<K, V> {
    /// Whether the map already holds exactly the desired entries.
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removals.is_empty()
    }
}

/// Compares the programmed entries with the desired ones; entries already right are untouched.
pub fn diff<K: Ord + Clone, V: PartialEq + Clone>(
    programmed: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
) -> Changes<K, V> {
    let upserts = desired
        .iter()
        .filter(|(key, value)| programmed.get(key) != Some(value))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    let removals = programmed.keys().filter(|key| !desired.contains_key(key)).cloned().collect();
    Changes { upserts, removals }
}

/// [`diff`] restricted to `keys`: what a change touched, with nothing else compared.
pub fn diff_keys<K: Ord + Clone, V: PartialEq + Clone>(
    programmed: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
    keys: &std::collections::BTreeSet<K>,
) -> Changes<K, V> {
    let upserts = keys
        .iter()
        .filter_map(|key| {
            desired.get(key).filter(|value| programmed.get(key) != Some(*value)).map(|v| (key.clone(), v.clone()))
        })
        .collect();
    let removals =
        keys.iter().filter(|key| !desired.contains_key(*key) && programmed.contains_key(*key)).cloned().collect();
    Changes { upserts, removals }
}

/// The keys where `kernel` (a fresh read) holds otherwise than `known` (a copy of what this
/// process had written when the read started), each with the kernel's value (None: absent): the
/// slow resync's drift, computed apart from the event loop. A key the agent wrote while the read
/// ran may show as drift too; comparing it with the plan again only rewrites it.
pub fn drift<K: Ord + Clone, V: PartialEq + Clone>(
    known: &BTreeMap<K, V>,
    kernel: BTreeMap<K, V>,
) -> Vec<(K, Option<V>)> {
    let mut drifted: Vec<(K, Option<V>)> =
        known.keys().filter(|key| !kernel.contains_key(*key)).map(|key| (key.clone(), None)).collect();
    drifted.extend(kernel.into_iter().filter(|(key, value)| known.get(key) != Some(value)).map(|(k, v)| (k, Some(v))));
    drifted
}

/// Takes a [`drift`] into `programmed` (what the kernel holds at those keys is now what this
/// process knows it holds) and returns the drifted keys, to be compared with the plan again.
pub fn take_drift<K: Ord + Clone, V>(programmed: &mut BTreeMap<K, V>, drift: Vec<(K, Option<V>)>) -> Vec<K> {
    drift
        .into_iter()
        .map(|(key, value)| {
            match value {
                Some(value) => programmed.insert(key.clone(), value),
                None => programmed.remove(&key),
            };
            key
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_is_every_key_the_kernel_holds_otherwise() {
        let known = BTreeMap::from([(1, "a"), (2, "b"), (3, "c")]);
        // 2 changed behind our back, 3 went, 4 appeared.
        let kernel = BTreeMap::from([(1, "a"), (2, "x"), (4, "d")]);
        let mut found = drift(&known, kernel.clone());
        found.sort();
        assert_eq!(found, vec![(2, Some("x")), (3, None), (4, Some("d"))]);
        let mut programmed = known.clone();
        // Written by the agent after the read started: kept, as the drift does not name it.
        programmed.insert(5, "e");
        let mut drifted = take_drift(&mut programmed, found);
        drifted.sort();
        assert_eq!(drifted, vec![2, 3, 4]);
        assert_eq!(programmed, BTreeMap::from([(1, "a"), (2, "x"), (4, "d"), (5, "e")]));
        assert!(drift(&kernel, kernel.clone()).is_empty(), "no drift the second time");
    }

    #[test]
    fn equal_maps_need_no_change() {
        let map = BTreeMap::from([(1, "a"), (2, "b")]);
        assert!(diff(&map, &map.clone()).is_empty());
    }

    #[test]
    fn writes_new_and_changed_and_removes_stale() {
        let programmed = BTreeMap::from([(1, "a"), (2, "b"), (3, "c")]);
        let desired = BTreeMap::from([(1, "a"), (2, "B"), (4, "d")]);
        let changes = diff(&programmed, &desired);
        assert_eq!(changes.upserts, vec![(2, "B"), (4, "d")]);
        assert_eq!(changes.removals, vec![3]);
    }

    #[test]
    fn a_diff_of_keys_looks_at_nothing_else() {
        let programmed = BTreeMap::from([(1, "a"), (2, "b"), (3, "c"), (9, "z")]);
        let desired = BTreeMap::from([(1, "A"), (2, "b"), (4, "d"), (8, "y")]);
        let changes = diff_keys(&programmed, &desired, &[1, 2, 3, 4, 5].into());
        assert_eq!(changes.upserts, vec![(1, "A"), (4, "d")]);
        assert_eq!(changes.removals, vec![3], "9 and 8 are outside the keys");
    }

    #[test]
    fn empty_programmed_writes_everything() {
        let desired = BTreeMap::from([(7, 70), (8, 80)]);
        let changes = diff(&BTreeMap::new(), &desired);
        assert_eq!(changes.upserts.len(), 2);
        assert!(changes.removals.is_empty());
    }
}
