//! The results as Markdown tables (ready for BENCHMARKS.md) and SVG charts drawn with plotters.

use std::{fmt::Write as _, path::Path};

use anyhow::Context as _;
use plotters::prelude::*;

use crate::{
    control::{quantile, ControlCost},
    packet::{FloodRate, LpmCost, PathCost, RepeatProbe, XdpCost, LARGE, SMALL},
    stats::ratio,
    throughput::{PathResult, Test, Throughput, CLIENT, SERVER},
};

/// Everything one run measured; a part not run is empty.
#[derive(Default)]
pub struct Results {
    /// Per-packet cost of each decision path.
    pub paths: Vec<PathCost>,
    /// What repeat > 1 does to a rewriting path.
    pub repeat_probe: Option<RepeatProbe>,
    /// LPM scale.
    pub lpm: Vec<LpmCost>,
    /// Control plane scale.
    pub control: Vec<ControlCost>,
    /// The agent build the control plane figures timed: "release" or "debug".
    pub control_build: &'static str,
    /// Lab throughput.
    pub throughput: Option<Throughput>,
    /// The uplink's XDP program per packet.
    pub xdp: Vec<XdpCost>,
    /// The non-peer VXLAN flood at XDP and at TC.
    pub flood: Option<FloodRate>,
    /// What `dataplane monitor` costs per packet, with and without a reader.
    pub monitor: Vec<crate::monitor::MonitorCost>,
}

/// The XDP per-packet table and the flood's rates.
pub fn xdp_tables(xdp: &[XdpCost], flood: Option<&FloodRate>) -> String {
    let mut out = String::new();
    if !xdp.is_empty() {
        let _ = writeln!(
            out,
            "| packet and decision | program | frame (B) | ns/packet | empty (ns) | / empty | above empty (ns) |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
    }
    for c in xdp {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1} | {:.1} | **{:.2}** | {:.1} |",
            c.path,
            c.program,
            c.frame,
            c.ns,
            c.empty_ns,
            ratio(c.ns, c.empty_ns),
            c.ns - c.empty_ns
        );
    }
    if let Some(f) = flood {
        let _ = writeln!(
            out,
            "\nNon-peer VXLAN flood ({}-byte frames over a veth, median of {} rounds of {} frames), frames dropped per CPU-second of the receiving NAPI thread: at XDP {:.2} M, at TC {:.2} M; XDP / TC, median of the rounds' ratios: **{:.1}x**.",
            f.frame,
            f.rounds,
            f.frames,
            f.xdp_pps / 1e6,
            f.tc_pps / 1e6,
            f.ratio
        );
    }
    out
}

/// The per-packet table.
pub fn paths_table(paths: &[PathCost]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| decision path | program | frame (B) | ns/packet | empty (ns) | / empty | above empty (ns) | frame (B) | ns/packet | empty (ns) | / empty | above empty (ns) |");
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let names: Vec<&str> = paths.iter().filter(|p| p.size == SMALL).map(|p| p.path).collect();
    let cells = |cost: Option<&PathCost>| match cost {
        Some(c) => format!(
            "{} | {:.0} | {:.0} | **{:.2}** | {:.0}",
            c.frame,
            c.ns,
            c.empty_ns,
            ratio(c.ns, c.empty_ns),
            c.ns - c.empty_ns
        ),
        None => "— | — | — | — | —".to_owned(),
    };
    for name in names {
        let small = paths.iter().find(|p| p.path == name && p.size == SMALL);
        let large = paths.iter().find(|p| p.path == name && p.size == LARGE);
        let program = small.map_or("", |p| p.program);
        let _ = writeln!(out, "| {name} | {program} | {} | {} |", cells(small), cells(large));
    }
    out
}

/// Every decision path on this build beside the baseline build of the same rounds
/// (`--baseline-object`), as ratios to the empty program and to each other.
pub fn baseline_table(paths: &[PathCost]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| decision path | frame (B) | baseline / empty | this / empty | this / baseline |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    for c in paths {
        let Some(baseline) = c.baseline_ns else { continue };
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} | **{:.2}** | {:.2} |",
            c.path,
            c.frame,
            ratio(baseline, c.empty_ns),
            ratio(c.ns, c.empty_ns),
            ratio(c.ns, baseline)
        );
    }
    out
}

/// The LPM scale table.
pub fn lpm_table(lpm: &[LpmCost]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| prefixes in the routes map | length | insert (s) | VXLAN encap ns/packet | empty program (ns) | / empty | / smallest map |");
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|");
    let first = lpm.first().map_or(0.0, |c| c.ns);
    for c in lpm {
        let _ = writeln!(
            out,
            "| {} | /{} | {:.1} | {:.0} | {:.0} | {:.2} | {:.2} |",
            c.prefixes,
            c.prefix_len,
            c.insert_seconds,
            c.ns,
            c.empty_ns,
            ratio(c.ns, c.empty_ns),
            ratio(c.ns, first)
        );
    }
    out
}

/// The control plane tables: from empty, the burst and memory per N; then each kind of change.
pub fn control_table(control: &[ControlCost]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| blocks | nodes | etcd keys | routes | program from empty (s) | of which to every route in the maps (s) | its reconcile (ms) | maps done in it (ms) | burst of 1,000 puts to the last in the map (s) | after the last put (ms) | agent peak RSS (MiB) |");
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for c in control {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.2} | {} | {} | {} | {:.2} | {:.0} | {:.1} |",
            c.blocks,
            c.nodes,
            c.keys,
            c.routes,
            c.program_seconds,
            c.maps_ready_seconds.map_or("—".to_owned(), |s| format!("{s:.2}")),
            c.program_reconcile_ms,
            c.program_maps_ms.map_or("—".to_owned(), |ms| ms.to_string()),
            c.burst_seconds,
            c.burst_after_last_put_ms,
            c.peak_kib as f64 / 1024.0
        );
    }
    if let (Some(first), Some(last)) = (control.first(), control.last()) {
        if last.blocks > first.blocks {
            let slope = (last.peak_kib as f64 - first.peak_kib as f64) * 1024.0 / (last.blocks - first.blocks) as f64;
            let _ = writeln!(
                out,
                "\nPeak RSS per block from {} to {} blocks: {slope:.0} bytes.",
                first.blocks, last.blocks
            );
        }
    }
    let _ = writeln!(out, "\nOne change, from just before the etcd request to the entry in the pinned map (ms):\n");
    let _ = writeln!(out, "| blocks | change | events | p50 | p99 | max |");
    let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|");
    for c in control {
        for (kind, samples) in &c.events {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.1} | {:.1} | {:.1} |",
                c.blocks,
                kind.name(),
                samples.len(),
                quantile(samples, 0.5),
                quantile(samples, 0.99),
                quantile(samples, 1.0)
            );
        }
        let all: Vec<f64> = c.events.values().flatten().copied().collect();
        let _ = writeln!(
            out,
            "| {} | **every kind** | {} | {:.1} | **{:.1}** | {:.1} |",
            c.blocks,
            all.len(),
            quantile(&all, 0.5),
            quantile(&all, 0.99),
            quantile(&all, 1.0)
        );
        let _ = writeln!(
            out,
            "| {} | every kind, from etcd's commit | {} | {:.1} | {:.1} | {:.1} |",
            c.blocks,
            c.after_ack.len(),
            quantile(&c.after_ack, 0.5),
            quantile(&c.after_ack, 0.99),
            quantile(&c.after_ack, 1.0)
        );
    }
    out
}

/// The throughput tables: pod to pod with ratios, SNAT side by side.
pub fn throughput_tables(t: &Throughput) -> String {
    let mut out = String::new();
    let find = |name: &str| t.pod_to_pod.iter().find(|p| p.name == name);
    let plain = find("plain routing");
    let kernel = find("kernel vxlan");
    let _ = writeln!(
        out,
        "Pod to pod ({CLIENT} on node-1 -> {SERVER} on node-2), median of {} run(s) of {} s; ratios of the median to plain routing (the ceiling) and to the kernel's vxlan device path.\n",
        t.effort.repetitions, t.effort.seconds
    );
    let _ = writeln!(out, "| path | TCP 1 stream (Gbit/s) | / plain | / kernel vxlan | TCP 4 streams (Gbit/s) | / plain | / kernel vxlan | UDP 64 B (Mpps) | / plain | / kernel vxlan | CPU-s per Gbit (TCP 1) | / plain | / kernel vxlan |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for path in &t.pod_to_pod {
        let mut row = format!("| {} ", path.name);
        for test in Test::ALL {
            let value = path.median(test);
            let vs = |other: Option<&PathResult>| other.map_or(f64::NAN, |o| ratio(value, o.median(test)));
            let _ = write!(row, "| {value:.3} | {:.2} | {:.2} ", vs(plain), vs(kernel));
        }
        let cpu = path.cores_per_gbit(Test::Tcp1);
        let cpu_vs = |other: Option<&PathResult>| other.map_or(f64::NAN, |o| ratio(cpu, o.cores_per_gbit(Test::Tcp1)));
        let _ = writeln!(out, "{row}| {} | {:.2} | {:.2} |", cpu_cell(path), cpu_vs(plain), cpu_vs(kernel));
    }
    let _ = writeln!(out, "\nPod to the external host (web-1 -> 192.0.2.10, natOutgoing), same runs:\n");
    let _ = writeln!(
        out,
        "| path | TCP 1 stream (Gbit/s) | TCP 4 streams (Gbit/s) | UDP 64 B (Mpps) | CPU-s per Gbit (TCP 1) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    for path in &t.snat {
        let _ = writeln!(
            out,
            "| {} | {:.3} | {:.3} | {:.3} | {} |",
            path.name,
            path.median(Test::Tcp1),
            path.median(Test::Tcp4),
            path.median(Test::Udp64),
            cpu_cell(path)
        );
    }
    if let [bpf, nft] = t.snat.as_slice() {
        let _ = writeln!(
            out,
            "\nBPF SNAT / nft masquerade: TCP 1 stream {:.2}, TCP 4 streams {:.2}, UDP 64 B {:.2}.",
            ratio(bpf.median(Test::Tcp1), nft.median(Test::Tcp1)),
            ratio(bpf.median(Test::Tcp4), nft.median(Test::Tcp4)),
            ratio(bpf.median(Test::Udp64), nft.median(Test::Udp64))
        );
    }
    let _ = writeln!(out, "\nHow each path is built:\n");
    for path in t.pod_to_pod.iter().chain(&t.snat) {
        let _ = writeln!(out, "- **{}**: {}", path.name, path.how);
    }
    let _ = writeln!(
        out,
        "\nSanity: node-1's encap_vxlan counter grew by {} on the BPF VXLAN path; node-1's vxlan.calico sent {} packets on the kernel path (GSO packets count once).",
        t.bpf_encapsulated, t.kernel_sent
    );
    out
}

/// CPU-seconds per Gbit of one TCP stream (cores busy per Gbit/s), or why it cannot be told: when
/// the measured processes kept every core busy through every run, the figure only says how fast
/// the path was.
fn cpu_cell(path: &PathResult) -> String {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let saturated =
        path.samples.iter().filter(|(t, _)| *t == Test::Tcp1).flat_map(|(_, s)| s).all(|s| s.cores >= 0.95 * cpus);
    if saturated {
        format!("n/a ({cpus:.0} cores busy)")
    } else {
        format!("{:.3}", path.cores_per_gbit(Test::Tcp1))
    }
}

/// The whole report.
pub fn markdown(results: &Results, header: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{header}");
    if !results.paths.is_empty() {
        let _ = writeln!(out, "## Per-packet cost (BPF_PROG_TEST_RUN)\n");
        let _ = writeln!(out, "Small frames left, full frames right; ratio to the empty TC program measured on a frame of the same length in the same rounds. Chart: `packet.svg`.\n");
        out.push_str(&paths_table(&results.paths));
        if results.paths.iter().any(|p| p.baseline_ns.is_some()) {
            let _ = writeln!(
                out,
                "\nThe same paths on the baseline build (`--baseline-object`), measured in the same rounds:\n"
            );
            out.push_str(&baseline_table(&results.paths));
        }
        if let Some(probe) = &results.repeat_probe {
            let others: Vec<String> = probe.others.iter().map(|(n, c)| format!("{n} {c}")).collect();
            let _ = writeln!(
                out,
                "\nWhy `repeat = 1`: one call of the VXLAN encap path with `repeat = {}` counted encap_vxlan {} and {}: the kernel reruns the program on the skb it already rewrote.",
                probe.repeat,
                probe.encapsulated,
                if others.is_empty() { "nothing else".to_owned() } else { others.join(", ") }
            );
            let _ = writeln!(
                out,
                "\nThe empty program costs {:.1} ns per run inside one call of `repeat = {}`, and {:.0} ns as one call of `repeat = 1`: \
                 about {:.0} ns of every `repeat = 1` figure is the fixed cost of one timed call (clock reads, caches cooled by the syscall), the same for every path; \
                 the \"above empty\" column takes it out.\n",
                probe.empty_loop_ns,
                crate::packet::LOOP_REPEAT,
                probe.empty_single_ns,
                probe.empty_single_ns - probe.empty_loop_ns
            );
            for (path, ns) in &probe.warm_loops {
                let _ = writeln!(
                    out,
                    "- {path} (it leaves the packet as it is, so a loop is valid): {ns:.1} ns per run in the same loop, {:.2} x the empty program's.",
                    ratio(*ns, probe.empty_loop_ns)
                );
            }
        }
        out.push('\n');
    }
    if !results.xdp.is_empty() || results.flood.is_some() {
        let _ = writeln!(out, "## The uplink's XDP program\n");
        let _ = writeln!(out, "Per packet: one call of `repeat = 100000` per round (neither program changes the packet), beside the empty program of the same type on the same frame. Flood: an AF_PACKET sender floods a veth whose TC ingress runs from_uplink and whose XDP link runs xdp_uplink (dropped at XDP) or the empty XDP program (each frame goes through GRO and the stack to from_uplink, which drops it); threaded NAPI puts the receive side in one kernel thread, whose CPU time is the divisor.\n");
        out.push_str(&xdp_tables(&results.xdp, results.flood.as_ref()));
        out.push('\n');
    }
    if !results.monitor.is_empty() {
        let _ = writeln!(out, "## What `dataplane monitor` costs per packet\n");
        let _ = writeln!(out, "The same packets with no reader, with a lease that ran out (a killed reader) and while a reader holds the lease; one call of `repeat = 4096` per round, the events ring buffer drained between calls, every emitted event counted.\n");
        out.push_str(&crate::monitor::monitor_table(&results.monitor));
        out.push('\n');
    }
    if !results.lpm.is_empty() {
        let _ = writeln!(
            out,
            "## LPM scale: VXLAN encap (64-byte frame) with more prefixes in the routes map\n\nChart: `lpm.svg`.\n"
        );
        out.push_str(&lpm_table(&results.lpm));
        out.push('\n');
    }
    if !results.control.is_empty() {
        let _ = writeln!(
            out,
            "## Control plane (etcd): N blocks from an empty start, one change, a burst\n\nThe agent's {} build. Chart: `control.svg`.\n",
            results.control_build
        );
        out.push_str(&control_table(&results.control));
        out.push('\n');
    }
    if let Some(t) = &results.throughput {
        let _ = writeln!(out, "## Throughput in the lab (iperf3)\n\nChart: `throughput.svg`.\n");
        out.push_str(&throughput_tables(t));
    }
    out
}

/// Draws every chart the results have into `dir`; returns the files written.
pub fn charts(results: &Results, dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut written = Vec::new();
    if !results.paths.is_empty() {
        packet_chart(&results.paths, &dir.join("packet.svg")).context("drawing packet.svg")?;
        written.push("packet.svg".to_owned());
    }
    if !results.lpm.is_empty() {
        lpm_chart(&results.lpm, &dir.join("lpm.svg")).context("drawing lpm.svg")?;
        written.push("lpm.svg".to_owned());
    }
    if !results.control.is_empty() {
        control_chart(&results.control, &dir.join("control.svg")).context("drawing control.svg")?;
        written.push("control.svg".to_owned());
    }
    if let Some(t) = &results.throughput {
        throughput_chart(t, &dir.join("throughput.svg")).context("drawing throughput.svg")?;
        written.push("throughput.svg".to_owned());
    }
    Ok(written)
}

/// Horizontal bars, one per label, with a caption; `values` in the labels' order.
fn bars(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    caption: &str,
    unit: &str,
    labels: &[String],
    values: &[f64],
    color: RGBColor,
) -> anyhow::Result<()> {
    let max = values.iter().copied().filter(|v| v.is_finite()).fold(0.0, f64::max).max(1e-9) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(170)
        .build_cartesian_2d(0f64..max, (0..labels.len()).into_segmented())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc(unit)
        .y_labels(labels.len())
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => labels.get(*i).cloned().unwrap_or_default(),
            SegmentValue::Last => String::new(),
        })
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .draw_series(
            Histogram::horizontal(&chart)
                .style(color.filled())
                .margin(4)
                .data(values.iter().enumerate().map(|(i, v)| (i, if v.is_finite() { *v } else { 0.0 }))),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

fn packet_chart(paths: &[PathCost], file: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(file, (1200, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (left, right) = root.split_horizontally(600);
    for (area, size, color) in [(&left, SMALL, BLUE), (&right, LARGE, RED)] {
        let rows: Vec<&PathCost> = paths.iter().filter(|p| p.size == size).collect();
        let mut labels = vec!["empty TC program".to_owned()];
        let mut values = vec![rows.first().map_or(0.0, |p| p.empty_ns)];
        for row in &rows {
            labels.push(row.path.to_owned());
            values.push(row.ns);
        }
        let caption = format!("ns per packet, {size}-byte class (median)");
        bars(area, &caption, "ns per packet", &labels, &values, color)?;
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

fn lpm_chart(lpm: &[LpmCost], file: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(file, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let max_n = lpm.iter().map(|c| c.prefixes).max().unwrap_or(10) as f64 * 2.0;
    let max_ns = lpm.iter().map(|c| c.ns.max(c.empty_ns)).fold(0.0, f64::max) * 1.2 + 1.0;
    let mut chart = ChartBuilder::on(&root)
        .caption("VXLAN encap, 64-byte frame, vs prefixes in the routes map", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((5f64..max_n).log_scale(), 0f64..max_ns)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("prefixes (log scale)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc("ns per packet (median)")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let encap: Vec<(f64, f64)> = lpm.iter().map(|c| (c.prefixes as f64, c.ns)).collect();
    let empty: Vec<(f64, f64)> = lpm.iter().map(|c| (c.prefixes as f64, c.empty_ns)).collect();
    for (points, color, name) in [(encap, BLUE, "VXLAN encap"), (empty, BLACK, "empty TC program")] {
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

fn control_chart(control: &[ControlCost], file: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(file, (1200, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (left, right) = root.split_horizontally(600);
    let max_n = control.iter().map(|c| c.blocks).max().unwrap_or(10) as f64 * 2.0;
    let p99 = |c: &ControlCost| quantile(&c.events.values().flatten().copied().collect::<Vec<_>>(), 0.99) / 1e3;
    let series_time = [
        (
            "program from empty (s)",
            control.iter().map(|c| (c.blocks as f64, c.program_seconds)).collect::<Vec<_>>(),
            BLUE,
        ),
        ("one change, p99 (s)", control.iter().map(|c| (c.blocks as f64, p99(c))).collect(), RED),
    ];
    let series_memory = [(
        "agent peak RSS (MiB)",
        control.iter().map(|c| (c.blocks as f64, c.peak_kib as f64 / 1024.0)).collect::<Vec<_>>(),
        GREEN,
    )];
    for (area, caption, series) in
        [(&left, "Agent time vs blocks", &series_time[..]), (&right, "Agent peak memory vs blocks", &series_memory[..])]
    {
        let max_y = series.iter().flat_map(|(_, p, _)| p.iter().map(|(_, y)| *y)).fold(0.0, f64::max) * 1.2 + 0.1;
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((50f64..max_n).log_scale(), 0f64..max_y)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("blocks (log scale)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for (name, points, color) in series {
            let color = *color;
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart
                .draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .border_style(BLACK)
            .background_style(WHITE)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

fn throughput_chart(t: &Throughput, file: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(file, (1500, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let areas = root.split_evenly((1, 3));
    let all: Vec<&PathResult> = t.pod_to_pod.iter().chain(&t.snat).collect();
    let labels: Vec<String> = all.iter().map(|p| p.name.to_owned()).collect();
    for (area, (test, color)) in areas.iter().zip([(Test::Tcp1, BLUE), (Test::Tcp4, MAGENTA), (Test::Udp64, RED)]) {
        let values: Vec<f64> = all.iter().map(|p| p.median(test)).collect();
        let unit = if test == Test::Udp64 { "Mpps" } else { "Gbit/s" };
        bars(area, test.title(), unit, &labels, &values, color)?;
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
