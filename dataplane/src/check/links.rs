//! The programs' attachments (pinned links, tcx hooks, XDP, the GRO anchor) against the plan.

use std::{collections::BTreeMap, path::Path};

use aya::programs::TcAttachType;
use dataplane_common::{
    PROG_FROM_UPLINK, PROG_FROM_WORKLOAD, PROG_TO_UPLINK, PROG_TO_WORKLOAD, PROG_VXLAN_ANCHOR, PROG_XDP_UPLINK,
};

use crate::{
    backend::{
        bpf::link_pin_name,
        clsact::{self, Filter},
        vxlan_anchor::{self, ANCHOR_DEVICE},
        xdp::{self, XdpMode},
    },
    plan::Plan,
};

use super::*;

/// A TC hook of an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    /// TC ingress.
    Ingress,
    /// TC egress.
    Egress,
}

impl Hook {
    pub(super) fn attach_type(self) -> TcAttachType {
        match self {
            Hook::Ingress => TcAttachType::Ingress,
            Hook::Egress => TcAttachType::Egress,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        }
    }
}

/// A program that should be attached to a hook, under its pin name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedLink {
    /// The interface.
    pub interface: String,
    /// The hook.
    pub hook: Hook,
    /// The program's name.
    pub program: &'static str,
}

/// The links the agent pins for `plan`: the uplink's ingress and egress, the VXLAN GRO anchor's
/// ingress when the node receives VXLAN and the anchor exists, and the ingress and egress of every
/// local workload whose interface exists (the agent attaches nothing to a missing one).
pub fn expected_links(plan: &Plan, uplink: &str, interfaces: &BTreeMap<String, u32>) -> BTreeMap<String, ExpectedLink> {
    let mut links = BTreeMap::new();
    let mut want = |interface: &str, hook: Hook, program: &'static str| {
        links.insert(
            link_pin_name(hook.attach_type(), interface),
            ExpectedLink { interface: interface.to_owned(), hook, program },
        );
    };
    want(uplink, Hook::Ingress, PROG_FROM_UPLINK);
    want(uplink, Hook::Egress, PROG_TO_UPLINK);
    if vxlan_anchor::wanted(plan) && interfaces.contains_key(ANCHOR_DEVICE) {
        want(ANCHOR_DEVICE, Hook::Ingress, PROG_VXLAN_ANCHOR);
    }
    for interface in plan.workloads.keys() {
        if interfaces.contains_key(interface) {
            want(interface, Hook::Ingress, PROG_FROM_WORKLOAD);
            want(interface, Hook::Egress, PROG_TO_WORKLOAD);
        }
    }
    links
}

/// The hook and interface a link pin name stands for (the reverse of `link_pin_name`).
pub fn parse_link_pin_name(name: &str) -> Option<(Hook, String)> {
    let (hook, escaped) = if let Some(rest) = name.strip_prefix("ingress_") {
        (Hook::Ingress, rest)
    } else if let Some(rest) = name.strip_prefix("egress_") {
        (Hook::Egress, rest)
    } else {
        return None;
    };
    // Undo the escaping in the opposite order: %2e first, then %25.
    Some((hook, crate::backend::bpf::unescape_pin_name(escaped)))
}

/// A program attached to a tcx hook: its id and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachedProgram {
    /// The program's id.
    pub id: u32,
    /// The program's name (truncated by the kernel to 15 characters).
    pub name: String,
}

/// What is attached on the node, as observed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedLinks {
    /// Every pin in `<pin path>/links`: the id of the program its link runs, or why it could not
    /// be read.
    pub pins: BTreeMap<String, Result<u32, String>>,
    /// For every expected link (by pin name): the programs on its hook, or why the hook could not
    /// be queried.
    pub hooks: BTreeMap<String, Result<Vec<AttachedProgram>, String>>,
    /// For every expected link (by pin name): the filters on its clsact hook (none without a
    /// clsact qdisc), or why they could not be listed.
    pub filters: BTreeMap<String, Result<Vec<Filter>, String>>,
    /// Our clsact filters on hooks no expected link names: (interface, hook) -> filter name.
    pub stray_filters: BTreeMap<(String, Hook), String>,
}

/// Whether the tcx hook of the expected link `pin` runs `program`.
pub(super) fn on_tcx_hook(observed: &ObservedLinks, pin: &str, program: &str) -> bool {
    matches!(observed.hooks.get(pin), Some(Ok(programs)) if programs.iter().any(|p| p.name == program))
}

/// Compares the expected attachments with what the pins, the tcx hooks and the clsact filters
/// show. A program counts as attached by either method: a pinned tcx link running it, or our
/// clsact filter running it; both at once is a problem of its own (a half-finished switch).
pub fn check_links(
    expected: &BTreeMap<String, ExpectedLink>,
    observed: &ObservedLinks,
    interfaces: &BTreeMap<String, u32>,
    links_dir: &Path,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (pin, link) in expected {
        let object = format!("{} {} of {}", link.program, link.hook.name(), link.interface);
        let pin_path = links_dir.join(pin);
        let filter = match observed.filters.get(pin) {
            Some(Ok(filters)) => filters.iter().find(|f| f.is_ours()),
            _ => None,
        };
        if let Some(filter) = filter {
            let name = filter.name.as_deref().unwrap_or("");
            let problem = if name != clsact::filter_name(link.program) {
                Some(format!("our clsact {} filter of {} runs {name}", link.hook.name(), link.interface))
            } else if observed.pins.contains_key(pin) || on_tcx_hook(observed, pin, link.program) {
                Some(format!(
                    "attached twice: by our clsact filter and through tcx (link pin {}) (a switch of attach \
                     method left half done)",
                    pin_path.display()
                ))
            } else {
                None
            };
            if let Some(problem) = problem {
                findings.push(Finding::new(
                    "programs",
                    object,
                    problem,
                    "restart the agent (`dataplane run`): it attaches each program by one method and removes the other",
                ));
            }
            continue;
        }
        let attached = match observed.hooks.get(pin) {
            Some(Ok(programs)) => programs.iter().filter(|p| p.name == link.program).map(|p| p.id).collect(),
            // No tcx on this kernel, and no filter of ours either.
            Some(Err(error)) if !observed.pins.contains_key(pin) => {
                let filters = match observed.filters.get(pin) {
                    Some(Err(error)) => format!("its clsact filters cannot be listed ({error})"),
                    _ => "no clsact filter of ours is on it".to_owned(),
                };
                findings.push(Finding::new(
                    "programs",
                    object,
                    format!(
                        "not attached: {filters}, and the tcx {} hook of {} cannot be queried ({error}): packets on \
                         this hook bypass the fast path",
                        link.hook.name(),
                        link.interface
                    ),
                    "restart the agent (`dataplane run`) as root in the node's network namespace: it attaches every \
                     program at start",
                ));
                continue;
            }
            Some(Err(error)) => {
                findings.push(Finding::new(
                    "programs",
                    object,
                    format!("the tcx {} hook of {} cannot be queried: {error}", link.hook.name(), link.interface),
                    "run the check as root in the node's network namespace",
                ));
                continue;
            }
            None => Vec::new(),
        };
        let problem = match (observed.pins.get(pin), attached.is_empty()) {
            (None, true) => Some(format!(
                "not attached: no clsact filter of ours, and no link is pinned at {}: packets on this hook bypass \
                 the fast path",
                pin_path.display()
            )),
            (None, false) => Some(format!(
                "attached, but its link is not pinned at {}: it goes away with the process that holds it",
                pin_path.display()
            )),
            (Some(Err(error)), _) => Some(format!("the pinned link {} cannot be read: {error}", pin_path.display())),
            (Some(Ok(_)), true) => Some(format!(
                "a link is pinned at {} but the program is not attached to the hook (the interface was re-created?)",
                pin_path.display()
            )),
            (Some(Ok(id)), false) if !attached.contains(id) => {
                Some(format!("the pinned link runs program id {id}, but the hook runs {attached:?}"))
            }
            (Some(Ok(_)), false) => None,
        };
        if let Some(problem) = problem {
            findings.push(Finding::new(
                "programs",
                object,
                problem,
                "restart the agent (`dataplane run`): it attaches every program and pins its link at start",
            ));
        }
    }
    // XDP links are judged by `check_xdp`.
    for pin in observed.pins.keys().filter(|pin| !expected.contains_key(*pin) && xdp::parse_pin_name(pin).is_none()) {
        let pin_path = links_dir.join(pin);
        let (object, problem) = match parse_link_pin_name(pin) {
            Some((hook, interface)) if !interfaces.contains_key(&interface) => (
                format!("link {pin}"),
                format!("stale: pinned for the {} hook of {interface}, which no longer exists", hook.name()),
            ),
            Some((hook, interface)) => (
                format!("link {pin}"),
                format!(
                    "a program stays attached to the {} hook of {interface}, which the datastore does not give \
                     this node",
                    hook.name()
                ),
            ),
            None => (format!("link {pin}"), "not a link name the agent uses".to_owned()),
        };
        findings.push(Finding::new(
            "programs",
            object,
            problem,
            format!(
                "restart the agent (it removes links it does not want), or remove the pin: rm {}",
                pin_path.display()
            ),
        ));
    }
    for ((interface, hook), name) in &observed.stray_filters {
        findings.push(Finding::new(
            "programs",
            format!("filter {name} on {} of {interface}", hook.name()),
            format!(
                "our clsact filter stays on the {} hook of {interface}, which the datastore does not give this node",
                hook.name()
            ),
            format!(
                "restart the agent (it removes filters it does not want), or remove it: tc filter del dev {interface} \
                 {} pref {} handle {:#x} bpf",
                hook.name(),
                clsact::FILTER_PRIORITY,
                clsact::FILTER_HANDLE
            ),
        ));
    }
    findings
}

/// Compares the uplink's XDP program with its pinned link: `expected` says whether the agent
/// attaches one by default (`--xdp auto`: not on a veth) — a pinned one is checked either way;
/// `pins` as [`ObservedLinks::pins`] holds them (the XDP ones are `xdp_<interface>`), `kernel` is
/// what the kernel reports on the uplink (mode and program id, None without XDP).
pub fn check_xdp(
    uplink: &str,
    expected: bool,
    pins: &BTreeMap<String, Result<u32, String>>,
    kernel: &Result<Option<(XdpMode, u32)>, String>,
    links_dir: &Path,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let object = format!("{PROG_XDP_UPLINK} XDP of {uplink}");
    let pin = xdp::pin_name(uplink);
    let pin_path = links_dir.join(&pin);
    let restart = "restart the agent (`dataplane run`): it attaches the XDP program natively or generically and pins \
                   its link at start (its \"fast path programmed\" line says xdp=native|generic|none)";
    let problem = match (pins.get(&pin), kernel) {
        (None, Ok(_)) if !expected => None,
        (_, Err(error)) => Some(format!("the XDP state of {uplink} cannot be read: {error}")),
        (None, Ok(None)) => Some(format!(
            "not attached: {uplink} has no XDP program and no link is pinned at {}: tunnel packets from non-peers \
             each cost an skb before from_uplink drops them",
            pin_path.display()
        )),
        (None, Ok(Some((mode, id)))) => Some(format!(
            "{uplink} runs XDP program id {id} ({mode}), but no link is pinned at {}: another tool's program, or \
             one that goes away with the process that holds it",
            pin_path.display()
        )),
        (Some(Err(error)), _) => Some(format!("the pinned link {} cannot be read: {error}", pin_path.display())),
        (Some(Ok(_)), Ok(None)) => Some(format!(
            "a link is pinned at {} but {uplink} runs no XDP program (the interface was re-created?)",
            pin_path.display()
        )),
        (Some(Ok(pinned)), Ok(Some((_, id)))) if pinned != id => {
            Some(format!("the pinned link runs program id {pinned}, but {uplink} runs XDP program id {id}"))
        }
        (Some(Ok(_)), Ok(Some(_))) => None,
    };
    if let Some(problem) = problem {
        findings.push(Finding::new("programs", object, problem, restart));
    }
    for (other, interface) in pins.keys().filter_map(|p| xdp::parse_pin_name(p).map(|i| (p, i))) {
        if interface != uplink {
            findings.push(Finding::new(
                "programs",
                format!("link {other}"),
                format!("an XDP link is pinned for {interface}, which is not the uplink {uplink}"),
                format!(
                    "restart the agent with the right --uplink, or remove the pin: rm {}",
                    links_dir.join(other).display()
                ),
            ));
        }
    }
    findings
}

/// The VXLAN GRO anchor when the node receives VXLAN: `anchor` is None without the device, else
/// whether it is up (its UDP socket, which GRO needs, exists only while it is). `holder`, another
/// VXLAN device up on the port (Calico's `vxlan.calico`), gives the same GRO: no finding then.
pub fn check_anchor(wanted: bool, anchor: Option<bool>, holder: Option<&str>) -> Option<Finding> {
    if holder.is_some() {
        return None;
    }
    let problem = match (wanted, anchor) {
        (false, _) | (true, Some(true)) => return None,
        (true, None) => "missing",
        (true, Some(false)) => "down",
    };
    Some(Finding::new(
        "tunnel",
        format!("device {ANCHOR_DEVICE}"),
        format!(
            "the VXLAN GRO anchor is {problem}: VXLAN from peers still reaches the pods, but without receive GRO \
             (every segment alone, so slower)"
        ),
        "load the vxlan module (`modprobe vxlan`) and free the VXLAN port on the node's address: another VXLAN \
         device may hold it (`ip -d link show type vxlan`); the agent retries at every reconcile",
    ))
}
