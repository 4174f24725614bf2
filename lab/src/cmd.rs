//! Running outside commands (`ip`, `nsenter`, `tcpdump`, ...) with errors that name the command.

use std::process::{Command, Output};

use anyhow::{bail, Context as _};

/// The path of a lab namespace's handle, as `ip netns add` creates it.
pub fn netns_path(netns: &str) -> String {
    format!("/run/netns/{netns}")
}

/// The argv that runs `argv` inside `netns`: `nsenter --net=/run/netns/<netns> -- argv...`.
///
/// nsenter enters only the network namespace. `ip netns exec` would also remount /sys in a private
/// mount namespace, which hides /sys/fs/bpf from the agent and loses its pins.
pub fn nsenter_argv(netns: &str, argv: &[&str]) -> Vec<String> {
    let mut full = vec!["nsenter".to_owned(), format!("--net={}", netns_path(netns)), "--".to_owned()];
    full.extend(argv.iter().map(|a| (*a).to_owned()));
    full
}

/// A command line as a person would type it, quoting arguments that need it.
pub fn display(argv: &[impl AsRef<str>]) -> String {
    argv.iter()
        .map(|a| {
            let a = a.as_ref();
            let plain = !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=+,@%".contains(c));
            if plain {
                a.to_owned()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Builds a [`Command`] from an argv.
pub fn command(argv: &[impl AsRef<str>]) -> anyhow::Result<Command> {
    let Some((program, args)) = argv.split_first() else {
        bail!("empty command line");
    };
    let mut command = Command::new(program.as_ref());
    command.args(args.iter().map(|a| a.as_ref()));
    Ok(command)
}

/// Runs `argv` and returns its output whatever its exit status; fails only if it cannot start.
pub fn run_status(argv: &[impl AsRef<str>]) -> anyhow::Result<Output> {
    command(argv)?.output().with_context(|| format!("cannot start `{}`", display(argv)))
}

/// Runs `argv` and fails, with its exit status, stdout and stderr, unless it exits with 0.
pub fn run(argv: &[impl AsRef<str>]) -> anyhow::Result<Output> {
    let output = run_status(argv)?;
    if !output.status.success() {
        bail!("{}", failure_message(argv, &output));
    }
    Ok(output)
}

/// Describes a failed command: the command, its exit status and what it printed.
pub fn failure_message(argv: &[impl AsRef<str>], output: &Output) -> String {
    let mut message = format!("`{}` failed ({})", display(argv), output.status);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !stdout.trim().is_empty() {
        message.push_str(&format!("\nstdout:\n{}", stdout.trim_end()));
    }
    if !stderr.trim().is_empty() {
        message.push_str(&format!("\nstderr:\n{}", stderr.trim_end()));
    }
    message
}

/// Runs `ip -n <netns> <args>` (or plain `ip <args>` without a namespace), failing with its stderr.
pub fn ip(netns: Option<&str>, args: &[&str]) -> anyhow::Result<()> {
    let mut argv = vec!["ip"];
    if let Some(netns) = netns {
        argv.extend(["-n", netns]);
    }
    argv.extend(args);
    run(&argv).map(|_| ())
}

/// Sets a sysctl inside `netns`: `/proc/sys/net` shows the namespace of the process that reads it.
pub fn sysctl(netns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    let setting = format!("{key}={value}");
    run(&nsenter_argv(netns, &["sysctl", "-q", "-w", &setting])).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_only_what_needs_it() {
        assert_eq!(display(&["ping", "-c", "3", "10.244.2.2"]), "ping -c 3 10.244.2.2");
        assert_eq!(display(&["sh", "-c", "grep . /x/*"]), "sh -c 'grep . /x/*'");
        assert_eq!(display(&["echo", "it's"]), r"echo 'it'\''s'");
    }

    #[test]
    fn nsenter_enters_only_the_network_namespace() {
        assert_eq!(
            nsenter_argv("dpl-1-node-1", &["ip", "link"]),
            ["nsenter", "--net=/run/netns/dpl-1-node-1", "--", "ip", "link"]
        );
    }
}
