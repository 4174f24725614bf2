//! Processes the lab starts inside its namespaces: any command, the agent, tcpdump.
//!
//! Every process writes stdout and stderr to a log file in the lab's directory, and is stopped
//! (SIGTERM, then SIGKILL) when its handle is dropped, so a failing test leaves nothing running.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Child, ExitStatus},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::cmd;

/// How often logs and exit statuses are polled.
const POLL: Duration = Duration::from_millis(50);

/// How long a process may take to exit after SIGTERM when its handle is dropped.
const DROP_GRACE: Duration = Duration::from_secs(3);

/// The agent logs this after every successful reconcile.
pub const AGENT_READY: &str = "fast path programmed";

/// Pids of the lab's children that have not been reaped yet, so that the lab's teardown can stop
/// them even when their handles outlive it. A pid stays ours until we reap it, so it cannot have
/// been reused by another process while it is in this set.
pub(crate) type Registry = Arc<Mutex<BTreeSet<u32>>>;

/// Sends `signal` to `pid`.
pub(crate) fn send_signal(pid: u32, signal: libc::c_int) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| std::io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A process started by the lab in one of its namespaces; stopped when dropped.
#[derive(Debug)]
pub struct ChildHandle {
    name: String,
    command_line: String,
    child: Child,
    log: PathBuf,
    exit: Option<ExitStatus>,
    registry: Registry,
}

impl ChildHandle {
    pub(crate) fn new(name: String, command_line: String, child: Child, log: PathBuf, registry: Registry) -> Self {
        if let Ok(mut pids) = registry.lock() {
            pids.insert(child.id());
        }
        ChildHandle { name, command_line, child, log, exit: None, registry }
    }

    /// The process id (of the command itself: nsenter execs it without forking).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The name the process was given when spawned (also its log file's name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The full command line, with the nsenter prefix.
    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    /// The log file holding the process's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// What the process has written so far to stdout and stderr.
    pub fn log(&self) -> String {
        match fs::read(&self.log) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("(cannot read {}: {e})", self.log.display()),
        }
    }

    /// The exit status if the process has exited (reaping it), else `None`.
    pub fn try_exit(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            let status = self.child.try_wait().with_context(|| format!("waiting for {}", self.name))?;
            if let Some(status) = status {
                self.reaped(status);
            }
        }
        Ok(self.exit)
    }

    fn reaped(&mut self, status: ExitStatus) {
        self.exit = Some(status);
        if let Ok(mut pids) = self.registry.lock() {
            pids.remove(&self.child.id());
        }
    }

    /// Waits until the log contains `needle`; fails, with the log, if the process exits first or
    /// `timeout` passes.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.try_exit()? {
                // It may have printed the line just before exiting.
                if self.log().contains(needle) {
                    return Ok(());
                }
                bail!(
                    "{} exited ({status}) before logging {needle:?}\ncommand: {}\nlog {}:\n{}",
                    self.name,
                    self.command_line,
                    self.log.display(),
                    self.log()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not log {needle:?} within {timeout:?}\ncommand: {}\nlog {}:\n{}",
                    self.name,
                    self.command_line,
                    self.log.display(),
                    self.log()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(POLL);
        }
    }

    /// Sends SIGTERM and waits up to `grace` for the process to exit; then sends SIGKILL.
    /// Returns the exit status and whether SIGKILL was needed.
    pub fn terminate(&mut self, grace: Duration) -> anyhow::Result<(ExitStatus, bool)> {
        if let Some(status) = self.try_exit()? {
            return Ok((status, false));
        }
        // ESRCH cannot happen for an unreaped child; any other error shows in the wait below.
        let _ = send_signal(self.pid(), libc::SIGTERM);
        if let Some(status) = self.wait_timeout(grace)? {
            return Ok((status, false));
        }
        let _ = send_signal(self.pid(), libc::SIGKILL);
        let status = self.child.wait().with_context(|| format!("waiting for {} after SIGKILL", self.name))?;
        self.reaped(status);
        Ok((status, true))
    }
}

/// How often the agent's log is polled for a new "fast path programmed" line: short, because
/// tests report how long after a datastore write the agent programmed it.
const PROGRAMMED_POLL: Duration = Duration::from_millis(2);

/// For a handle that runs the agent: its [`AGENT_READY`] lines, one per successful reconcile.
impl ChildHandle {
    /// How many times the agent has programmed its fast path so far.
    pub fn programmed(&self) -> usize {
        self.log().matches(AGENT_READY).count()
    }

    /// Waits until the agent programs its fast path again after `before` passes (a count from
    /// [`ChildHandle::programmed`]); returns how long after `since` that happened.
    pub fn wait_programmed(&self, before: usize, since: Instant, timeout: Duration) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.programmed() > before {
                return Ok(since.elapsed());
            }
            thread::sleep(PROGRAMMED_POLL);
        }
        bail!("{} did not program its fast path again within {timeout:?}:\n{}", self.name, self.log())
    }

    /// A numeric field (`routes=5`) of the agent's `nth` [`AGENT_READY`] line, counting from 1;
    /// `usize::MAX` for the last one.
    pub fn programmed_field(&self, field: &str, nth: usize) -> anyhow::Result<usize> {
        let log = self.log();
        let lines: Vec<&str> = log.lines().filter(|line| line.contains(AGENT_READY)).collect();
        let line = match nth {
            usize::MAX => lines.last(),
            nth => lines.get(nth.saturating_sub(1)),
        }
        .with_context(|| format!("{} has no {nth}th {AGENT_READY:?} line:\n{log}", self.name))?;
        let needle = format!(" {field}=");
        let start = line.find(&needle).with_context(|| format!("no {field}= in {line}"))? + needle.len();
        let digits: String = line[start..].chars().take_while(|c| c.is_ascii_digit()).collect();
        digits.parse().with_context(|| format!("{field}= is not a number in {line}"))
    }

    /// Waits until the agent's last [`AGENT_READY`] line has `field` equal to `want`; returns how
    /// long after `since` that was seen.
    pub fn wait_programmed_field(
        &self,
        field: &str,
        want: usize,
        since: Instant,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.programmed_field(field, usize::MAX).ok() == Some(want) {
                return Ok(since.elapsed());
            }
            thread::sleep(PROGRAMMED_POLL);
        }
        bail!("{} never programmed {field}={want} within {timeout:?}:\n{}", self.name, self.log())
    }
}

impl Drop for ChildHandle {
    fn drop(&mut self) {
        if let Err(e) = self.terminate(DROP_GRACE) {
            eprintln!("lab: stopping {} (pid {}): {e:#}", self.name, self.pid());
        }
    }
}

/// A running agent (`dataplane run`) in a node's namespace.
#[derive(Debug)]
pub struct Agent {
    node: String,
    pin_path: PathBuf,
    process: ChildHandle,
    ready: &'static str,
}

impl Agent {
    pub(crate) fn new(node: String, pin_path: PathBuf, process: ChildHandle, ready: &'static str) -> Self {
        Agent { node, pin_path, process, ready }
    }

    /// The line the agent logs after each successful reconcile of its backend.
    pub fn ready_line(&self) -> &'static str {
        self.ready
    }

    /// The node the agent runs for.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Where the agent pins its maps and links.
    pub fn pin_path(&self) -> &Path {
        &self.pin_path
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The agent's command line, with the nsenter prefix.
    pub fn command_line(&self) -> &str {
        self.process.command_line()
    }

    /// Waits until the agent logs that it programmed its backend (the fast path, or the netlink
    /// dataplane when started so); the error holds its log.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.process
            .wait_for_log(self.ready, timeout)
            .with_context(|| format!("agent for node {} is not ready", self.node))
    }

    /// Stops the agent with SIGTERM (which leaves its pins) and waits for it to exit.
    /// Fails if it needed SIGKILL or exited with an error; the error holds its log.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let (status, killed) = self.process.terminate(Duration::from_secs(10))?;
        if killed {
            bail!("agent for node {} ignored SIGTERM for 10 s and was killed\nlog:\n{}", self.node, self.log());
        }
        if !status.success() {
            bail!("agent for node {} exited with {status} after SIGTERM\nlog:\n{}", self.node, self.log());
        }
        Ok(status)
    }

    /// Everything the agent has logged so far (stderr and stdout).
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The agent's process handle.
    pub fn process(&mut self) -> &mut ChildHandle {
        &mut self.process
    }
}

/// A running tcpdump writing a pcap file.
#[derive(Debug)]
pub struct Capture {
    pcap: PathBuf,
    process: ChildHandle,
}

impl Capture {
    pub(crate) fn new(pcap: PathBuf, process: ChildHandle) -> Self {
        Capture { pcap, process }
    }

    /// The pcap file (kept in the lab's directory until the lab is torn down).
    pub fn pcap_path(&self) -> &Path {
        &self.pcap
    }

    /// Stops tcpdump (SIGTERM flushes the file) and returns `tcpdump -r FILE -nn -v` as text.
    pub fn stop(mut self) -> anyhow::Result<String> {
        self.process.terminate(Duration::from_secs(5))?;
        let pcap = self.pcap.to_string_lossy().into_owned();
        let output = cmd::run(&["tcpdump", "-r", &pcap, "-nn", "-v"])?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}
