//! The kernel programs' own log: how much they log (`--kernel-log`), and the bridge that carries
//! their aya-log records into the agent's log with the decisions' names.

use anyhow::Context as _;
use aya::Ebpf;
use tracing::info;

/// How much the kernel programs log through aya-log (`dataplane run --kernel-log`). Logging
/// costs a ring-buffer write per logged packet, so it is off unless asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelLog {
    /// Nothing (aya-log's level global set to 0: each call is one load and a branch).
    #[default]
    Off,
    /// Every dropped packet: program, drop reason, interface (aya-log's debug level).
    Drops,
    /// Every packet's decision as well (trace level): for a lab, not for a busy node.
    All,
}

impl KernelLog {
    /// The value of aya-log's `AYA_LOG_LEVEL` global (aya_log::Level numbering: debug 4, trace 5).
    pub(super) fn level(self) -> &'static u8 {
        match self {
            KernelLog::Off => &0,
            KernelLog::Drops => &(aya_log::Level::Debug as u8),
            KernelLog::All => &(aya_log::Level::Trace as u8),
        }
    }
}

/// Reads the programs' aya-log ring buffer whenever it has records and writes them to the log
/// crate, which the agent's tracing subscriber receives.
pub(super) fn forward_kernel_logs(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let logger = aya_log::EbpfLogger::init_with_logger(ebpf, KernelRecords)
        .context("opening the kernel programs' log buffer")?;
    // SAFETY: the logger owns the ring buffer's descriptor, which stays open (and the same) for
    // as long as the AsyncFd owns the logger.
    let mut readable =
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
            .map_err(|error| anyhow::anyhow!("polling the kernel programs' log buffer: {error}"))?;
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = readable.readable_mut().await else { return };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
    info!("kernel logs on: the programs' records follow, target dataplane::kernel");
    Ok(())
}

/// Forwards the programs' records to the agent's log at info level: `--kernel-log` alone decides
/// what the kernel logs, whatever RUST_LOG says of debug lines.
struct KernelRecords;

impl log::Log for KernelRecords {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let text = record.args().to_string();
        match DecisionRecord::parse(&text) {
            Some(decision) => info!(target: "dataplane::kernel", level = %record.level(), "{decision}"),
            None => info!(target: "dataplane::kernel", level = %record.level(), "{text}"),
        }
    }

    fn flush(&self) {}
}

/// A decision as `verdict::finish` logs it: `<program> <stat> <ifindex>`, three numbers, shown
/// with the program's and the stat's names from dataplane-common.
#[derive(Debug, PartialEq, Eq)]
struct DecisionRecord {
    program: dataplane_common::Program,
    stat: dataplane_common::Stat,
    ifindex: u32,
}

impl DecisionRecord {
    /// The record in `text`, or None for any other line (which is forwarded as it is).
    fn parse(text: &str) -> Option<DecisionRecord> {
        let mut numbers = text.split(' ').map(|field| field.parse::<u32>().ok());
        let (Some(Some(program)), Some(Some(stat)), Some(Some(ifindex)), None) =
            (numbers.next(), numbers.next(), numbers.next(), numbers.next())
        else {
            return None;
        };
        Some(DecisionRecord {
            program: dataplane_common::Program::from_index(program)?,
            stat: dataplane_common::Stat::from_index(stat)?,
            ifindex,
        })
    }
}

impl std::fmt::Display for DecisionRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} (ifindex {})", self.program.name(), self.stat.name(), self.ifindex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_records_are_shown_with_names_and_other_lines_pass_unchanged() {
        let line = format!(
            "{} {} 7",
            dataplane_common::Program::FromWorkload as u32,
            dataplane_common::Stat::DropBlackhole.index()
        );
        let decision = DecisionRecord::parse(&line).expect("a decision record");
        assert_eq!(decision.to_string(), "from_workload: drop_blackhole (ifindex 7)");
        for other in ["kernel logs on", "0 1", "0 1 2 3", "99 1 2", "0 31 2", "0 x 2", ""] {
            assert_eq!(DecisionRecord::parse(other), None, "{other:?}");
        }
    }
}
