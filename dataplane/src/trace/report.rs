//! The trace for a person.

use dataplane_common::{CONNTRACK_MAP, PROG_XDP_UPLINK};

use super::*;

/// The report for a person.
pub fn text(report: &TraceReport) -> String {
    let p = &report.prediction;
    let probe = &report.probe;
    let mut out = match probe.proto {
        Proto::Arp => format!("packet: ARP who-has {} tell {}\n", probe.dst, probe.src),
        _ => format!("packet: {}\n", probe.headers(None)),
    };
    if probe.options {
        out.push_str("        with IP options\n");
    }
    match probe.fragment {
        Fragment::None => {}
        Fragment::First => out.push_str("        first fragment (MF)\n"),
        Fragment::Later => out.push_str("        later fragment (offset > 0)\n"),
    }
    let hook = if matches!(report.entry, Entry::Host | Entry::IntoPod { .. }) { "egress" } else { "ingress" };
    if let Some(xdp) = &report.xdp {
        let what = if xdp.drops {
            format!("drops it before an skb exists ({}); {} below never sees it", xdp.stat.name(), p.program)
        } else {
            format!("passes it on unchanged ({}) to {}", xdp.stat.name(), p.program)
        };
        out.push_str(&format!("xdp: {PROG_XDP_UPLINK} ({} XDP of {}) {what}\n", xdp.mode, report.interface));
        if let Some((code, counters)) = &xdp.inject {
            let counters: Vec<String> = counters.iter().map(|(name, n)| format!("{name} +{n}")).collect();
            let action = match *code {
                XDP_DROP => "drop".to_owned(),
                XDP_PASS => "pass".to_owned(),
                other => format!("code {other}"),
            };
            out.push_str(&format!("  xdp inject: {action}, counters: {}\n", counters.join(", ")));
        }
    }
    out.push_str(&format!("program: {} (TC {hook} of {})\n", p.program, report.interface));
    for note in &report.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    for (n, step) in p.steps.iter().enumerate() {
        out.push_str(&format!("  {}. {step}\n", n + 1));
    }
    out.push_str(&format!("verdict: {}", p.action));
    if let Some(target) = &p.target {
        out.push_str(&format!(": {target}"));
    }
    out.push('\n');
    out.push_str(&format!("counter: {}\n", p.stat.name()));
    if let Some(output) = &p.output {
        out.push_str(&format!("output: {output}\n"));
    }
    if let Some(key) = &p.remembers {
        out.push_str(&format!("remembers: {} in {CONNTRACK_MAP}\n", describe_flow(key)));
    }
    if let Some(injected) = &report.inject {
        out.push_str(
            "inject: BPF_PROG_TEST_RUN with the live routes, workloads, peers and node maps, a fresh stats map \
             and a private copy of the conntrack map (the live table is untouched)\n",
        );
        let action =
            injected.action.map(|a| a.to_string()).unwrap_or_else(|| format!("code {}", injected.return_value));
        out.push_str(&format!("  verdict: {action}\n"));
        let counters: Vec<String> = injected.counters.iter().map(|(name, n)| format!("{name} +{n}")).collect();
        out.push_str(&format!("  counters: {}\n", counters.join(", ")));
        match &injected.output {
            Some(headers) => out.push_str(&format!("  output: {headers}\n")),
            None => out.push_str("  output: not an IPv4 packet\n"),
        }
        if injected.matched() {
            out.push_str("prediction matched\n");
        } else {
            out.push_str("prediction did NOT match:\n");
            for mismatch in &injected.mismatches {
                out.push_str(&format!("  - {mismatch}\n"));
            }
        }
    }
    out
}
