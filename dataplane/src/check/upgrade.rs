//! Whether the pin path is in the middle of an upgrade, or holds maps of another agent version.

use std::path::Path;

use dataplane_common::layout::PinnedMap;

use super::Finding;
use crate::migrate::{self, PinListing};

/// Findings about the layouts of the pinned maps: an upgrade an agent began and did not finish,
/// pins of an older agent this check's version would migrate, pins of a newer agent it cannot read.
pub fn check_upgrade(pin_path: &Path, listing: &PinListing) -> Vec<Finding> {
    let skew = migrate::version_skew(&listing.names);
    let mut findings = Vec::new();
    let pins =
        |list: &[(String, &PinnedMap)]| list.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>().join(", ");
    if listing.marker {
        let old = if skew.older.is_empty() {
            "no old pins remain".to_owned()
        } else {
            format!("old pins {}", pins(&skew.older))
        };
        findings.push(Finding::new(
            "upgrade",
            pin_path.join(migrate::MARKER).display().to_string(),
            format!(
                "an upgrade of the pinned maps began and did not finish ({old}); the older programs still carry \
                 the node with their own maps until a new agent swaps them"
            ),
            "start the agent again (`dataplane run`): it resumes the migration where it stopped and removes the \
             old pins; read the log of the agent that stopped for why",
        ));
    } else if !skew.older.is_empty() {
        findings.push(Finding::new(
            "upgrade",
            pins(&skew.older),
            format!(
                "the node's maps have an older layout than this version of dataplane ({}): an older agent runs \
                 here, and this check read the maps it could",
                skew.older.iter().map(|(_, ours)| ours.name).collect::<Vec<_>>().join(", ")
            ),
            "roll out the new agent (its start migrates the maps), or run the `dataplane check` of the agent \
             that runs on the node",
        ));
    }
    if !skew.newer.is_empty() {
        findings.push(Finding::new(
            "upgrade",
            pins(&skew.newer),
            "the node runs a newer agent, whose map layouts this version of dataplane cannot read",
            "run the `dataplane check` of the agent that runs on the node",
        ));
    }
    findings
}
