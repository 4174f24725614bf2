//! One real etcd server (Debian's etcd-server) in a lab's fabric namespace, as the demo, the
//! control-plane bench and the etcd datastore tests use it: started on the nodes' gateway
//! address, its data in the lab's directory, ready once `etcdctl endpoint health` answers.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{process::ChildHandle, Lab};

/// How long a fresh etcd may take to answer its first health check.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The peer URL of the single-member cluster: only etcd itself uses it.
const PEER_URL: &str = "http://127.0.0.1:2380";

/// A binary on PATH, or in /usr/bin or /usr/sbin, where Debian puts etcd.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The command line of a single-member etcd named `name` serving clients on `endpoint`, with
/// its data in the lab's directory (so a restart keeps the keys) and `extra` arguments after.
pub fn command(lab: &Lab, name: &str, endpoint: &str, extra: &[&str]) -> anyhow::Result<Vec<String>> {
    let etcd =
        find_binary("etcd").context("etcd is not installed: `cargo xtask setup` installs Debian's etcd-server")?;
    let data = lab.dir().join("etcd-data");
    let mut argv: Vec<String> = [
        &*etcd.to_string_lossy(),
        "--name",
        name,
        "--data-dir",
        &data.to_string_lossy(),
        "--listen-client-urls",
        endpoint,
        "--advertise-client-urls",
        endpoint,
        "--listen-peer-urls",
        PEER_URL,
        "--initial-advertise-peer-urls",
        PEER_URL,
        "--initial-cluster",
        &format!("{name}={PEER_URL}"),
    ]
    .iter()
    .map(|arg| (*arg).to_owned())
    .collect();
    argv.extend(extra.iter().map(|arg| (*arg).to_owned()));
    Ok(argv)
}

/// Starts `argv` (from [`command`]) in the fabric namespace and waits until etcd answers on
/// `endpoint`; fails with etcd's log if it exits or stays silent. Returns the running server and
/// how long it took to answer.
pub fn start(lab: &Lab, argv: &[String], endpoint: &str) -> anyhow::Result<(ChildHandle, Duration)> {
    let etcdctl = find_binary("etcdctl")
        .context("etcdctl is not installed: `cargo xtask setup` installs Debian's etcd-client")?;
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut process = lab.spawn(lab.fabric_netns(), &argv, "etcd")?;
    let etcdctl = etcdctl.to_string_lossy();
    let endpoints = format!("--endpoints={endpoint}");
    let health = [&*etcdctl, &*endpoints, "--command-timeout=1s", "endpoint", "health"];
    let started = Instant::now();
    loop {
        if lab.exec_status(lab.fabric_netns(), &health)?.status.success() {
            return Ok((process, started.elapsed()));
        }
        if let Some(status) = process.try_exit()? {
            bail!("etcd exited with {status}:\n{}", process.log());
        }
        if started.elapsed() > READY_TIMEOUT {
            bail!("etcd did not answer within {READY_TIMEOUT:?}:\n{}", process.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
