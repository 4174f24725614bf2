//! `dataplane monitor`: the kernel programs' drops (or every decision) as they happen, read from
//! the events ring buffer pinned beside the maps, decoded, filtered and printed as text or JSON.
//!
//! The programs emit only while this reader's lease (the lease map's one slot) lies ahead of the
//! kernel's monotonic clock; the reader renews it every second and clears it when it stops, and a
//! reader that is killed stops costing the programs anything once the lease runs out
//! (`MONITOR_LEASE_NS`). One reader at a time: two would split the events between them.

use std::{
    io::Write,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _};
use aya::maps::{Array, MapData};
use dataplane_common::{
    monitor::{lease_flags, MonitorCount, MONITOR_LEASE_NS},
    net::{
        CALICO_VXLAN_PORT, ETH_HLEN, ETH_P_IP, IPPROTO_IPIP, IPPROTO_TCP, IPPROTO_UDP, IPV4_FRAG_OFFSET_MASK, UDP_HLEN,
        VXLAN_HLEN,
    },
    MonitorEvent, MonitorLease, Program, Stat,
};
use serde_json::json;
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use crate::{
    conntrack::{monotonic_ns, protocol_name},
    pinned::PinnedMaps,
};

/// How often the reader renews its lease and looks at the lost-events counter: well inside
/// `MONITOR_LEASE_NS`, so a live reader's lease never runs out.
const RENEW_EVERY: Duration = Duration::from_secs(1);

/// What to show and how.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Directory of the pinned maps.
    pub pin_path: PathBuf,
    /// Every decision, not only drops.
    pub all: bool,
    /// Which events to print.
    pub filter: Filter,
    /// One JSON object per line instead of text.
    pub json: bool,
    /// Stop after printing this many events.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

/// The filters as given on the command line; an event must pass every kind given (and any one
/// value of a kind).
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Pods by `namespace/name`, `name` (namespace `default`) or address.
    pub pods: Vec<String>,
    /// Reasons (stats slot names such as `drop_spoofed_source`).
    pub reasons: Vec<String>,
    /// Addresses the packet carries as a source or destination, outside or inside a tunnel.
    pub addrs: Vec<Ipv4Addr>,
}

/// A pod the filter resolved: its address and, when it runs on this node, its interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pod {
    addr: Ipv4Addr,
    ifindex: Option<u32>,
}

/// The filter with names turned into addresses, interfaces and slots.
#[derive(Clone, Debug, Default)]
pub struct Matcher {
    pods: Vec<Pod>,
    reasons: Vec<Stat>,
    addrs: Vec<Ipv4Addr>,
}

impl Matcher {
    /// Resolves `filter`: reasons by name, pods by address or by their interface on this node and
    /// its entry in the workloads map under `pin_path`.
    pub fn resolve(filter: &Filter, all: bool, pin_path: &Path) -> anyhow::Result<Matcher> {
        let mut reasons = Vec::new();
        for name in &filter.reasons {
            let stat = Stat::ALL.iter().copied().find(|stat| stat.name() == name).with_context(|| {
                let names: Vec<&str> = Stat::ALL.iter().map(|stat| stat.name()).collect();
                format!("--reason {name}: no such reason; the reasons are {}", names.join(", "))
            })?;
            if !stat.is_drop() && !all {
                bail!("--reason {name} is a decision, not a drop: add --all to see decisions");
            }
            reasons.push(stat);
        }
        let mut pods = Vec::new();
        for pod in &filter.pods {
            pods.push(resolve_pod(pod, pin_path)?);
        }
        Ok(Matcher { pods, reasons, addrs: filter.addrs.clone() })
    }

    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &Event) -> bool {
        let addrs = event.addrs();
        (self.reasons.is_empty() || self.reasons.contains(&event.stat))
            && (self.addrs.is_empty() || self.addrs.iter().any(|addr| addrs.contains(addr)))
            && (self.pods.is_empty()
                || self.pods.iter().any(|pod| addrs.contains(&pod.addr) || pod.ifindex == Some(event.ifindex)))
    }
}

/// `namespace/name`, `name` or an address -> the pod's address (and interface on this node).
fn resolve_pod(pod: &str, pin_path: &Path) -> anyhow::Result<Pod> {
    if let Ok(addr) = pod.parse::<Ipv4Addr>() {
        return Ok(Pod { addr, ifindex: None });
    }
    let (namespace, name) = pod.split_once('/').unwrap_or(("default", pod));
    let interface = crate::datastore::kubernetes::convert::interface_name(namespace, name);
    let ifindex = crate::sys::ifindex(&interface).with_context(|| {
        format!("--pod {pod}: no interface {interface} on this node (a pod on another node is filtered by its address)")
    })?;
    let workloads = PinnedMaps::at(pin_path).workloads()?;
    let workload = workloads
        .get(&ifindex, 0)
        .with_context(|| format!("--pod {pod}: interface {interface} is not in the agent's workloads map"))?;
    Ok(Pod { addr: Ipv4Addr::from(workload.addr), ifindex: Some(ifindex) })
}

/// The addresses, protocol and ports of one IPv4 header (and what follows it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// IP protocol number.
    pub protocol: u8,
    /// Source and destination port (TCP and UDP, first fragment, captured).
    pub ports: Option<(u16, u16)>,
}

impl Flow {
    fn text(&self) -> String {
        let proto = protocol_name(self.protocol);
        match self.ports {
            Some((sport, dport)) => format!("{proto} {}:{sport} -> {}:{dport}", self.src, self.dst),
            None => format!("{proto} {} -> {}", self.src, self.dst),
        }
    }

    fn json(&self) -> serde_json::Value {
        let mut value = json!({
            "src": self.src.to_string(),
            "dst": self.dst.to_string(),
            "protocol": protocol_name(self.protocol),
        });
        if let Some((sport, dport)) = self.ports {
            value["src_port"] = json!(sport);
            value["dst_port"] = json!(dport);
        }
        value
    }
}

/// A tunnel the packet was seen in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tunnel {
    /// VXLAN (UDP to the cluster's VXLAN port).
    Vxlan,
    /// IP-in-IP.
    Ipip,
}

impl Tunnel {
    fn name(self) -> &'static str {
        match self {
            Tunnel::Vxlan => "vxlan",
            Tunnel::Ipip => "ipip",
        }
    }
}

/// The headers decoded from an event's captured bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    /// The outermost IPv4 header (None: not IPv4, e.g. ARP, or cut short).
    pub outer: Option<Flow>,
    /// For a tunnel packet: the tunnel and the packet inside it (if captured).
    pub inner: Option<(Tunnel, Option<Flow>)>,
}

/// Decodes Ethernet, IPv4 and the ports, and the same inside VXLAN (to `vxlan_port`) or IP-in-IP.
pub fn decode(bytes: &[u8], vxlan_port: u16) -> Headers {
    if be16(bytes, 12) != Some(ETH_P_IP) {
        return Headers::default();
    }
    let Some((outer, payload)) = ipv4(bytes, ETH_HLEN) else { return Headers::default() };
    let inner = match (outer.protocol, outer.ports) {
        (IPPROTO_UDP, Some((_, dport))) if dport == vxlan_port => {
            let inner_eth = payload + UDP_HLEN + VXLAN_HLEN;
            let inner = (be16(bytes, inner_eth + 12) == Some(ETH_P_IP))
                .then(|| ipv4(bytes, inner_eth + ETH_HLEN).map(|(flow, _)| flow))
                .flatten();
            Some((Tunnel::Vxlan, inner))
        }
        (IPPROTO_IPIP, _) => Some((Tunnel::Ipip, ipv4(bytes, payload).map(|(flow, _)| flow))),
        _ => None,
    };
    Headers { outer: Some(outer), inner }
}

/// The IPv4 header at `at`: its flow and the offset of its payload.
fn ipv4(bytes: &[u8], at: usize) -> Option<(Flow, usize)> {
    let version_ihl = *bytes.get(at)?;
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || header_len < 20 {
        return None;
    }
    let field = |offset: usize| -> Option<[u8; 4]> { bytes.get(at + offset..at + offset + 4)?.try_into().ok() };
    let src = Ipv4Addr::from(field(12)?);
    let dst = Ipv4Addr::from(field(16)?);
    let protocol = *bytes.get(at + 9)?;
    let first_fragment = be16(bytes, at + 6)? & IPV4_FRAG_OFFSET_MASK == 0;
    let payload = at + header_len;
    let ports = (first_fragment && matches!(protocol, IPPROTO_TCP | IPPROTO_UDP))
        .then(|| Some((be16(bytes, payload)?, be16(bytes, payload + 2)?)))
        .flatten();
    Some((Flow { src, dst, protocol, ports }, payload))
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

/// One event, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Wall-clock time of the decision.
    pub time: SystemTime,
    /// The interface the program ran on.
    pub ifindex: u32,
    /// Its name in this network namespace (the ifindex if it has none).
    pub interface: String,
    /// The program (None: an index this agent does not know).
    pub program: Option<Program>,
    /// The decision or drop reason.
    pub stat: Stat,
    /// The packet's length.
    pub packet_len: u32,
    /// Its headers.
    pub headers: Headers,
}

impl Event {
    /// Every address the packet carries, outside and inside a tunnel.
    fn addrs(&self) -> Vec<Ipv4Addr> {
        let inner = self.headers.inner.and_then(|(_, flow)| flow);
        [self.headers.outer, inner].into_iter().flatten().flat_map(|flow| [flow.src, flow.dst]).collect()
    }

    fn program_name(&self) -> &'static str {
        self.program.map_or("unknown", Program::name)
    }

    /// One line for a person.
    pub fn text(&self) -> String {
        let mut line = format!(
            "{} {} {} {} len {}",
            rfc3339(self.time),
            self.interface,
            self.program_name(),
            self.stat.name(),
            self.packet_len
        );
        match self.headers.outer {
            Some(outer) => line.push_str(&format!(" {}", outer.text())),
            None => line.push_str(" not ipv4"),
        }
        if let Some((tunnel, inner)) = self.headers.inner {
            match inner {
                Some(inner) => line.push_str(&format!(" {} [{}]", tunnel.name(), inner.text())),
                None => line.push_str(&format!(" {} [not captured]", tunnel.name())),
            }
        }
        line
    }

    /// One JSON object.
    pub fn json(&self) -> serde_json::Value {
        let since_epoch = self.time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut value = json!({
            "type": if self.stat.is_drop() { "drop" } else { "decision" },
            "time": rfc3339(self.time),
            "time_unix_ns": since_epoch.as_nanos() as u64,
            "interface": self.interface,
            "ifindex": self.ifindex,
            "program": self.program_name(),
            "reason": self.stat.name(),
            "len": self.packet_len,
            "packet": self.headers.outer.map(|flow| flow.json()),
        });
        if let Some((tunnel, inner)) = self.headers.inner {
            value["tunnel"] = json!(tunnel.name());
            value["inner"] = inner.map_or(serde_json::Value::Null, |flow| flow.json());
        }
        value
    }
}

/// `time` as `YYYY-MM-DDTHH:MM:SS.uuuuuuZ`.
fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, of_day) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_date(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since.subsec_micros()
    )
}

/// Days since 1970-01-01 -> (year, month, day) in the proleptic Gregorian calendar, counted in
/// 400-year eras that start on 1 March (so the leap day ends a year).
fn civil_date(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468; // 0000-03-01 to 1970-01-01
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The monitor's counters under `pin_path`: events emitted and lost, summed over CPUs.
pub fn counts(pin_path: &Path) -> anyhow::Result<(u64, u64)> {
    let counts = PinnedMaps::at(pin_path).monitor_counts()?;
    let read = |slot: MonitorCount| -> anyhow::Result<u64> {
        Ok(counts.get(&slot.index(), 0).context("reading the monitor's counters")?.iter().sum())
    };
    Ok((read(MonitorCount::Emitted)?, read(MonitorCount::Lost)?))
}

/// The lease map under `pin_path`.
fn lease_map(pin_path: &Path) -> anyhow::Result<Array<MapData, MonitorLease>> {
    PinnedMaps::at(pin_path).monitor_lease()
}

/// The lease as it is now under `pin_path` (for tests and `monitor`'s refusal of a second reader).
pub fn lease(pin_path: &Path) -> anyhow::Result<MonitorLease> {
    lease_map(pin_path)?.get(&0, 0).context("reading the monitor's lease")
}

/// Reads events until Ctrl-C, SIGTERM, `count` events or `duration`, writing each that passes
/// the filter to `out`; says on stderr (or as a JSON object) how many the kernel lost.
pub async fn run(options: &Options, out: &mut impl Write) -> anyhow::Result<()> {
    let pin_path = &options.pin_path;
    let matcher = Matcher::resolve(&options.filter, options.all, pin_path)?;
    let mut leases = lease_map(pin_path)?;
    let pid = std::process::id();
    let held = leases.get(&0, 0).context("reading the monitor's lease")?;
    if held.until_ns > monotonic_ns() && held.reader_pid != pid {
        bail!(
            "another `dataplane monitor` (pid {}) is reading this node's events; one reader at a time, since two \
             would split the events between them (its lease runs out {} ms after it stops)",
            held.reader_pid,
            MONITOR_LEASE_NS / 1_000_000
        );
    }
    let ring = PinnedMaps::at(pin_path).monitor_events()?;
    // SAFETY: the ring buffer owns its file descriptor and keeps it open, unreplaced, for as long
    // as the AsyncFd that owns the ring buffer exists.
    let mut ring = unsafe { AsyncFd::register(ring) }.context("watching the events ring buffer")?;
    let vxlan_port = node_vxlan_port(pin_path);
    let interfaces = crate::sys::interfaces().unwrap_or_default();
    let names: std::collections::BTreeMap<u32, String> =
        interfaces.into_iter().map(|(name, ifindex)| (ifindex, name)).collect();
    // Kernel monotonic time -> wall clock, fixed once: both clocks run at the same rate.
    let wall_offset_ns = wall_ns().saturating_sub(monotonic_ns());
    let flags = if options.all { lease_flags::ALL_DECISIONS } else { 0 };
    let renew = |leases: &mut Array<MapData, MonitorLease>| -> anyhow::Result<()> {
        let lease = MonitorLease { until_ns: monotonic_ns() + MONITOR_LEASE_NS, reader_pid: pid, flags };
        leases.set(0, lease, 0).context("writing the monitor's lease")
    };
    let (_, mut lost_seen) = counts(pin_path)?;
    // Events queued before this reader came are stale: drain them before the lease starts.
    while ring.get_mut().next().is_some() {}
    renew(&mut leases)?;

    let mut terminate = tokio::signal::unix::signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut interrupt = tokio::signal::unix::signal(SignalKind::interrupt()).context("handling SIGINT")?;
    let mut ticks = tokio::time::interval(RENEW_EVERY);
    let deadline = options.duration.map(|duration| tokio::time::Instant::now() + duration);
    let mut printed = 0u64;
    let outcome: anyhow::Result<()> = async {
        loop {
            tokio::select! {
                _ = terminate.recv() => return Ok(()),
                _ = interrupt.recv() => return Ok(()),
                _ = sleep_until(deadline) => return Ok(()),
                _ = ticks.tick() => {
                    renew(&mut leases)?;
                    let (_, lost) = counts(pin_path)?;
                    if lost > lost_seen {
                        report_lost(out, options.json, lost - lost_seen, lost)?;
                        lost_seen = lost;
                    }
                }
                guard = ring.readable_mut() => {
                    let mut guard = guard.context("waiting for events")?;
                    while let Some(item) = guard.get_inner_mut().next() {
                        let Some(event) = parse(&item, wall_offset_ns, vxlan_port, &names) else { continue };
                        if !matcher.matches(&event) {
                            continue;
                        }
                        if options.json {
                            writeln!(out, "{}", event.json())?;
                        } else {
                            writeln!(out, "{}", event.text())?;
                        }
                        out.flush()?;
                        printed += 1;
                        if options.count.is_some_and(|count| printed >= count) {
                            return Ok(());
                        }
                    }
                    guard.clear_ready();
                }
            }
        }
    }
    .await;
    // Stop the programs' emission now rather than when the lease runs out.
    let cleared = leases.set(0, MonitorLease::default(), 0).context("clearing the monitor's lease");
    outcome.and(cleared)
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn report_lost(out: &mut impl Write, json: bool, now: u64, total: u64) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", json!({ "type": "lost", "lost": now, "lost_total": total }))?;
    } else {
        eprintln!(
            "dataplane monitor: {now} events lost (the reader fell behind; {total} lost since the agent started)"
        );
    }
    Ok(())
}

/// Decodes one ring buffer record; None for a record of another size or a reason this agent does
/// not know (programs of another version).
fn parse(
    bytes: &[u8],
    wall_offset_ns: u64,
    vxlan_port: u16,
    names: &std::collections::BTreeMap<u32, String>,
) -> Option<Event> {
    if bytes.len() != std::mem::size_of::<MonitorEvent>() {
        return None;
    }
    let raw: MonitorEvent = bytemuck::pod_read_unaligned(bytes);
    let stat = Stat::from_index(raw.stat)?;
    let captured = (raw.captured as usize).min(raw.header.len());
    Some(Event {
        time: UNIX_EPOCH + Duration::from_nanos(raw.time_ns.saturating_add(wall_offset_ns)),
        ifindex: raw.ifindex,
        interface: names.get(&raw.ifindex).cloned().unwrap_or_else(|| format!("if{}", raw.ifindex)),
        program: Program::from_index(raw.program),
        stat,
        packet_len: raw.packet_len,
        headers: decode(&raw.header[..captured], vxlan_port),
    })
}

/// The node's VXLAN port from the node map (the agent's --vxlan-port), or Calico's.
fn node_vxlan_port(pin_path: &Path) -> u16 {
    let read = || -> Option<u16> {
        let config = PinnedMaps::at(pin_path).read_node().ok()?;
        (config.vxlan_port != 0).then_some(config.vxlan_port)
    };
    read().unwrap_or(CALICO_VXLAN_PORT)
}

fn wall_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(protocol: u8, src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0u8; 12];
        bytes.extend_from_slice(&ETH_P_IP.to_be_bytes());
        bytes.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, protocol, 0, 0]);
        bytes.extend_from_slice(&src);
        bytes.extend_from_slice(&dst);
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn a_plain_udp_packet_decodes_to_its_flow() {
        let bytes = packet(IPPROTO_UDP, [10, 244, 1, 2], [10, 244, 2, 2], &[0x9c, 0x40, 0x14, 0x51, 0, 8, 0, 0]);
        let headers = decode(&bytes, CALICO_VXLAN_PORT);
        let outer = headers.outer.expect("an IPv4 header");
        assert_eq!(outer.src, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(outer.dst, Ipv4Addr::new(10, 244, 2, 2));
        assert_eq!(outer.ports, Some((40000, 5201)));
        assert_eq!(headers.inner, None);
    }

    #[test]
    fn vxlan_and_ipip_decode_outer_and_inner() {
        let inner = packet(IPPROTO_TCP, [10, 244, 2, 2], [10, 244, 1, 2], &[0, 80, 0x9c, 0x40]);
        let mut payload = vec![0x9c, 0x41, 0x12, 0xb5, 0, 0, 0, 0];
        payload.extend_from_slice(&[0x08, 0, 0, 0, 0, 0x10, 0, 0]);
        payload.extend_from_slice(&inner);
        let bytes = packet(IPPROTO_UDP, [10, 100, 0, 99], [10, 100, 0, 11], &payload);
        let headers = decode(&bytes, CALICO_VXLAN_PORT);
        assert_eq!(headers.outer.and_then(|flow| flow.ports), Some((40001, CALICO_VXLAN_PORT)));
        let (tunnel, flow) = headers.inner.expect("a tunnel");
        assert_eq!(tunnel, Tunnel::Vxlan);
        let flow = flow.expect("the inner header");
        assert_eq!(
            (flow.src, flow.dst, flow.ports),
            (Ipv4Addr::new(10, 244, 2, 2), Ipv4Addr::new(10, 244, 1, 2), Some((80, 40000)))
        );
        // The same datagram to another port is plain UDP.
        assert_eq!(decode(&bytes, 8472).inner, None);

        let ipip = packet(IPPROTO_IPIP, [10, 100, 0, 12], [10, 100, 0, 11], &inner[ETH_HLEN..]);
        let (tunnel, flow) = decode(&ipip, CALICO_VXLAN_PORT).inner.expect("a tunnel");
        assert_eq!(tunnel, Tunnel::Ipip);
        assert_eq!(flow.map(|flow| flow.dst), Some(Ipv4Addr::new(10, 244, 1, 2)));
    }

    #[test]
    fn cut_short_and_non_ipv4_captures_decode_to_what_is_there() {
        let bytes = packet(IPPROTO_UDP, [10, 244, 1, 2], [10, 244, 2, 2], &[0x9c]);
        assert_eq!(decode(&bytes, CALICO_VXLAN_PORT).outer.and_then(|flow| flow.ports), None);
        assert_eq!(decode(&bytes[..20], CALICO_VXLAN_PORT), Headers::default());
        let mut arp = bytes.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(decode(&arp, CALICO_VXLAN_PORT), Headers::default());
    }

    #[test]
    fn filters_pass_only_matching_events() {
        let bytes = packet(IPPROTO_UDP, [10, 244, 1, 9], [10, 244, 2, 2], &[0, 1, 0, 2]);
        let event = Event {
            time: UNIX_EPOCH,
            ifindex: 7,
            interface: "cali0761ccbeace".into(),
            program: Some(Program::FromWorkload),
            stat: Stat::DropSpoofedSource,
            packet_len: 60,
            headers: decode(&bytes, CALICO_VXLAN_PORT),
        };
        let by = |reasons: Vec<Stat>, addrs: Vec<Ipv4Addr>, pods: Vec<Pod>| Matcher { pods, reasons, addrs };
        assert!(by(vec![], vec![], vec![]).matches(&event));
        assert!(by(vec![Stat::DropSpoofedSource], vec![], vec![]).matches(&event));
        assert!(!by(vec![Stat::DropBlackhole], vec![], vec![]).matches(&event));
        assert!(by(vec![], vec![Ipv4Addr::new(10, 244, 2, 2)], vec![]).matches(&event));
        assert!(!by(vec![], vec![Ipv4Addr::new(10, 244, 2, 3)], vec![]).matches(&event));
        // A pod matches by its interface even when the packet does not carry its address (spoofed).
        let web1 = Pod { addr: Ipv4Addr::new(10, 244, 1, 2), ifindex: Some(7) };
        assert!(by(vec![], vec![], vec![web1]).matches(&event));
        assert!(!by(vec![], vec![], vec![Pod { ifindex: Some(8), ..web1 }]).matches(&event));
        assert!(!by(vec![Stat::DropSpoofedSource], vec![], vec![Pod { ifindex: None, ..web1 }]).matches(&event));
    }

    #[test]
    fn reasons_are_checked_by_name_and_decisions_need_all() {
        let filter = |reason: &str| Filter { reasons: vec![reason.into()], ..Filter::default() };
        let pins = Path::new("/nonexistent");
        assert!(Matcher::resolve(&filter("drop_blackhole"), false, pins).is_ok());
        assert!(Matcher::resolve(&filter("blackhole"), false, pins).is_err());
        assert!(Matcher::resolve(&filter("encap_vxlan"), false, pins).is_err());
        assert!(Matcher::resolve(&filter("encap_vxlan"), true, pins).is_ok());
    }

    #[test]
    fn times_print_as_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        // 2024-02-29T12:34:56.5Z: a leap day.
        let leap = UNIX_EPOCH + Duration::from_millis(1_709_210_096_500);
        assert_eq!(rfc3339(leap), "2024-02-29T12:34:56.500000Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn json_events_carry_every_field() {
        let inner = packet(IPPROTO_UDP, [10, 244, 2, 2], [10, 244, 1, 2], &[0, 1, 0, 2]);
        let mut payload = vec![0x9c, 0x41, 0x12, 0xb5, 0, 0, 0, 0, 0x08, 0, 0, 0, 0, 0x10, 0, 0];
        payload.extend_from_slice(&inner);
        let bytes = packet(IPPROTO_UDP, [10, 100, 0, 99], [10, 100, 0, 11], &payload);
        let event = Event {
            time: UNIX_EPOCH,
            ifindex: 2,
            interface: "eth0".into(),
            program: Some(Program::FromUplink),
            stat: Stat::DropUnknownPeer,
            packet_len: 92,
            headers: decode(&bytes, CALICO_VXLAN_PORT),
        };
        let value = event.json();
        assert_eq!(value["type"], "drop");
        assert_eq!(value["reason"], "drop_unknown_peer");
        assert_eq!(value["program"], "from_uplink");
        assert_eq!(value["interface"], "eth0");
        assert_eq!(value["packet"]["src"], "10.100.0.99");
        assert_eq!(value["tunnel"], "vxlan");
        assert_eq!(value["inner"]["dst"], "10.244.1.2");
        assert_eq!(
            event.text(),
            "1970-01-01T00:00:00.000000Z eth0 from_uplink drop_unknown_peer len 92 \
             udp 10.100.0.99:40001 -> 10.100.0.11:4789 vxlan [udp 10.244.2.2:1 -> 10.244.1.2:2]"
        );
    }
}
