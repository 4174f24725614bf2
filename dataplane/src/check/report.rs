//! What a check found and how it is shown: findings, what was looked at, text and JSON.

use std::collections::BTreeMap;

use serde::Serialize;

/// What the agent tells its users to do when a map or a link is not as the datastore says: the
/// agent rewrites both on start and on every resync.
pub(super) const FIX_AGENT: &str =
    "the agent rewrites this on every resync (30 s) and on start: if it persists, the agent \
                         is not running or failing for this node; restart it (`dataplane run`) and read its log";

/// One problem found: which check, the object it is about, what is wrong, and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The check that found it: `programs`, `maps`, `routes`, `tunnel`, `pools`, `blocks`,
    /// `workloads`, `node`, `upgrade`, `datastore` or `plan`.
    pub check: &'static str,
    /// The object, as an operator names it: `IPPool default`, `routes_v1 10.244.2.0/26`, ...
    pub object: String,
    /// What is wrong.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

impl Finding {
    pub(super) fn new(
        check: &'static str,
        object: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Finding { check, object: object.into(), problem: problem.into(), fix: fix.into() }
    }
}

/// How much was looked at, so that "no problems" means something.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Checked {
    /// Program attachments (pinned links and tcx hooks).
    pub links: usize,
    /// Expected map entries compared with the pinned maps.
    pub map_entries: usize,
    /// Remote blocks whose route was verified.
    pub remote_blocks: usize,
    /// Workloads on this node.
    pub workloads: usize,
    /// IP pools.
    pub pools: usize,
    /// Workloads the datastore gives no MAC (Kubernetes), with the MAC learned from the pod side
    /// of their veth that their entries are expected to hold: `namespace/name` -> MAC.
    pub learned_macs: BTreeMap<String, String>,
}

/// The result of `dataplane check` on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The node checked.
    pub node: String,
    /// Everything found wrong; empty when the node is healthy.
    pub findings: Vec<Finding>,
    /// What was checked.
    pub checked: Checked,
}

impl Report {
    /// Whether nothing was found.
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }
}

/// The report for a person: one block per finding with its fix, or one line saying all is well.
pub fn text(report: &Report) -> String {
    let c = &report.checked;
    let mut checked = format!(
        "checked {} program links, {} map entries, {} remote blocks, {} workloads, {} pools",
        c.links, c.map_entries, c.remote_blocks, c.workloads, c.pools
    );
    if !c.learned_macs.is_empty() {
        let macs: Vec<String> = c.learned_macs.iter().map(|(workload, mac)| format!("{workload} {mac}")).collect();
        checked.push_str(&format!("; MACs learned from the veths, as the datastore has none: {}", macs.join(", ")));
    }
    if report.ok() {
        return format!("node {}: no problems found ({checked})\n", report.node);
    }
    let mut out = format!("node {}: {} problem(s) found ({checked})\n", report.node, report.findings.len());
    for finding in &report.findings {
        out.push_str(&format!(
            "\n[{}] {}: {}\n    fix: {}\n",
            finding.check, finding.object, finding.problem, finding.fix
        ));
    }
    out
}

/// The report as JSON: `{node, ok, findings: [{check, object, problem, fix}], checked}`.
pub fn json(report: &Report) -> serde_json::Value {
    serde_json::json!({
        "node": report.node,
        "ok": report.ok(),
        "findings": report.findings,
        "checked": report.checked,
    })
}
