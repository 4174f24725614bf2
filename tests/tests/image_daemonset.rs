//! The agent's image run the way deploy/daemonset.yaml runs it: `cargo xtask image` builds it, podman
//! runs it privileged in node-1's network namespace (the pod's host network), the node's bpffs at
//! the manifest's mount path, the manifest's command, arguments and environment (the datastore
//! switched to the lab's file), carrying pod traffic to node-2's plain agent. Then a rolling update
//! of node-1: `podman stop` with the manifest's grace period and a new container from the image,
//! under an iperf3 stream, with no second of the stream stalled.
//!
//! podman needs three settings on this machine (each explained where it is set): the runc
//! runtime (crun 1.8 refuses a hybrid cgroup hierarchy), ulimits no higher than this process's
//! own (the sandbox withholds CAP_SYS_RESOURCE), and none of containers.conf's default sysctls
//! (runc refuses `net.ipv4.ping_group_range` in a network namespace it did not create; the
//! kubelet sets no such sysctl either).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use dataplane_lab::{Lab, LabOptions};
use dataplane_tests::{agent_bin, workspace_root};
use serde_json::Value;
use serde_yaml::Value as Yaml;

/// The example cluster: VXLAN between node-1 and node-2.
const EXAMPLE: &str = "examples/two-nodes.yaml";
/// The manifest whose pod this test runs.
const MANIFEST: &str = "deploy/daemonset.yaml";
/// Where the datastore file appears in the container.
const DATASTORE_IN_CONTAINER: &str = "/etc/dataplane/cluster.yaml";
/// How long an agent may take to program its node (the release agent from a cold page cache).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Length of the stream that runs across the rolling update.
const STREAM_SECONDS: &str = "8";
/// The RLIMIT_NPROC podman lowers itself to at start; its container cannot ask for more without
/// CAP_SYS_RESOURCE, which this sandbox does not grant.
const PODMAN_NPROC: u64 = 32 * 1024;

/// What the DaemonSet's pod runs, read from the manifest.
struct PodSpec {
    command: Vec<String>,
    args: Vec<String>,
    /// Environment: (name, value), a downward-API `spec.nodeName` resolved to the node.
    env: Vec<(String, String)>,
    privileged: bool,
    host_network: bool,
    /// (host path, mount path) of each hostPath volume the container mounts.
    host_mounts: Vec<(String, String)>,
    grace_seconds: u64,
    /// (path, port) of the liveness and readiness probes.
    probes: Vec<(String, u16)>,
}

fn strings(value: &Yaml, what: &str) -> anyhow::Result<Vec<String>> {
    value
        .as_sequence()
        .with_context(|| format!("{MANIFEST}: {what} is not a list"))?
        .iter()
        .map(|item| item.as_str().map(str::to_owned).with_context(|| format!("{MANIFEST}: {what} has a non-string")))
        .collect()
}

impl PodSpec {
    fn read(node: &str) -> anyhow::Result<Self> {
        let path = workspace_root().join(MANIFEST);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let manifest: Yaml = serde_yaml::from_str(&text).with_context(|| format!("{MANIFEST} is not YAML"))?;
        let pod = &manifest["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let mut env = Vec::new();
        for var in container["env"].as_sequence().into_iter().flatten() {
            let name = var["name"].as_str().context("env without a name")?.to_owned();
            let value = match (&var["value"], &var["valueFrom"]["fieldRef"]["fieldPath"]) {
                (Yaml::String(value), _) => value.clone(),
                (_, Yaml::String(field)) if field == "spec.nodeName" => node.to_owned(),
                (_, other) => bail!("{MANIFEST}: env {name} comes from {other:?}, which this test cannot supply"),
            };
            env.push((name, value));
        }
        let mut host_mounts = Vec::new();
        for mount in container["volumeMounts"].as_sequence().into_iter().flatten() {
            let name = &mount["name"];
            let volume = pod["volumes"]
                .as_sequence()
                .into_iter()
                .flatten()
                .find(|v| &v["name"] == name)
                .with_context(|| format!("{MANIFEST}: volumeMount {name:?} has no volume"))?;
            let host = volume["hostPath"]["path"].as_str().context("a volume that is not a hostPath")?;
            let at = mount["mountPath"].as_str().context("a volumeMount without mountPath")?;
            host_mounts.push((host.to_owned(), at.to_owned()));
        }
        let probe = |kind: &str| -> anyhow::Result<(String, u16)> {
            let get = &container[kind]["httpGet"];
            let path = get["path"].as_str().with_context(|| format!("{MANIFEST}: {kind} has no httpGet.path"))?;
            let port = get["port"].as_u64().with_context(|| format!("{MANIFEST}: {kind} has no numeric port"))?;
            Ok((path.to_owned(), u16::try_from(port).context("probe port")?))
        };
        Ok(Self {
            command: strings(&container["command"], "command")?,
            args: strings(&container["args"], "args")?,
            env,
            privileged: container["securityContext"]["privileged"] == true,
            host_network: pod["hostNetwork"] == true,
            host_mounts,
            grace_seconds: pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30),
            probes: vec![probe("livenessProbe")?, probe("readinessProbe")?],
        })
    }
}

/// Builds the image through `cargo xtask image`, as an operator does, and loads it into podman's
/// storage; returns podman's image id.
fn build_and_load_image() -> anyhow::Result<String> {
    let root = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let started = Instant::now();
    let output = Command::new(&cargo)
        .current_dir(&root)
        // The agent the suite runs (the debug build under `cargo xtask test`): a release build
        // would cost CI minutes and test the same manifest, mounts and restart.
        .args(["xtask", "image", "--agent"])
        .arg(dataplane_tests::agent_bin())
        .output()
        .context("cannot run `cargo xtask image`")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "`cargo xtask image` failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("cargo xtask image took {:.0} s:\n{stdout}", started.elapsed().as_secs_f64());
    let version = env!("CARGO_PKG_VERSION");
    let layout: PathBuf = root.join("target/image/oci");
    let source = format!("oci:{}:{version}", layout.display());
    let output = Command::new("podman").args(["pull", "-q", &source]).output().context("cannot run podman")?;
    ensure!(output.status.success(), "podman pull {source} failed: {}", String::from_utf8_lossy(&output.stderr));
    let id = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    ensure!(!id.is_empty(), "podman pull printed no image id");
    Ok(id)
}

/// Removes the named containers and the image when dropped, so that a failing test leaves no
/// container running in a namespace the lab is about to delete.
struct Podman {
    image: String,
    containers: Vec<String>,
}

impl Drop for Podman {
    fn drop(&mut self) {
        for name in &self.containers {
            let _ = Command::new("podman").args(["rm", "-f", "-t", "0", name]).output();
        }
        let _ = Command::new("podman").args(["rmi", "-f", &self.image]).output();
    }
}

/// This process's hard limit of `resource`: podman's container may not ask for more here.
fn hard_limit(resource: libc::__rlimit_resource_t) -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct it is given and nothing else.
    if unsafe { libc::getrlimit(resource, &mut limit) } != 0 {
        return 1024;
    }
    limit.rlim_max
}

/// podman's configuration for this test (CONTAINERS_CONF, in place of /etc/containers's): no
/// default sysctls, which a pod on the host network does not get from the kubelet either and which
/// runc refuses in a network namespace it did not create; runc as the runtime (crun 1.8 refuses
/// this machine's hybrid cgroup hierarchy: cgroup v1 beside a cgroup2 with a controller).
const CONTAINERS_CONF: &str = "[containers]\ndefault_sysctls = []\n\n[engine]\nruntime = \"runc\"\n";

/// `podman run` of the DaemonSet's container on `node` of `lab`, named `name`.
fn podman_run_argv(
    lab: &Lab,
    spec: &PodSpec,
    node: &str,
    image: &str,
    name: &str,
    datastore: &Path,
) -> anyhow::Result<Vec<String>> {
    let nofile = hard_limit(libc::RLIMIT_NOFILE);
    let nproc = hard_limit(libc::RLIMIT_NPROC).min(PODMAN_NPROC);
    let mut argv: Vec<String> =
        ["podman", "run", "--rm", "--name", name, "--runtime", "runc"].map(str::to_owned).into();
    argv.extend([
        "--ulimit".into(),
        format!("nofile={nofile}:{nofile}"),
        "--ulimit".into(),
        format!("nproc={nproc}:{nproc}"),
    ]);
    if spec.privileged {
        argv.push("--privileged".into());
    }
    ensure!(spec.host_network, "{MANIFEST} no longer runs in the host's network namespace; this test assumes it does");
    argv.push(format!("--network=ns:/run/netns/{}", lab.node_netns(node)?));
    for (host, at) in &spec.host_mounts {
        // The host's bpffs is the lab node's own directory on it: each node pins apart.
        ensure!(host == "/sys/fs/bpf", "{MANIFEST} mounts hostPath {host}, which the lab has no stand-in for");
        let node_bpffs = lab.pin_path(node);
        std::fs::create_dir_all(&node_bpffs).with_context(|| format!("creating {}", node_bpffs.display()))?;
        argv.extend(["-v".into(), format!("{}:{at}", node_bpffs.display())]);
    }
    argv.extend(["-v".into(), format!("{}:{DATASTORE_IN_CONTAINER}:ro", datastore.display())]);
    for (key, value) in
        spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain([("NO_COLOR", "1"), ("RUST_LOG", "info")])
    {
        argv.extend(["-e".into(), format!("{key}={value}")]);
    }
    let (entrypoint, command_args) = spec.command.split_first().context("the manifest's command is empty")?;
    argv.extend(["--entrypoint".into(), entrypoint.clone(), image.to_owned()]);
    argv.extend(command_args.iter().cloned());
    let mut replaced = false;
    for arg in &spec.args {
        if arg.starts_with("--datastore=") {
            argv.push(format!("--datastore=file:{DATASTORE_IN_CONTAINER}"));
            replaced = true;
        } else {
            argv.push(arg.clone());
        }
    }
    ensure!(replaced, "{MANIFEST} has no --datastore= argument to point at the lab's file");
    Ok(argv)
}

/// Gbit/s of each second of an iperf3 -J report; fails unless it ended normally.
fn per_second(report: &str) -> anyhow::Result<Vec<f64>> {
    let json: Value = serde_json::from_str(report).with_context(|| format!("iperf3 -J output:\n{report}"))?;
    let intervals = json["intervals"].as_array().context("iperf3 report has no intervals")?;
    ensure!(json["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0) > 0, "nothing received:\n{report}");
    Ok(intervals.iter().map(|i| i["sum"]["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9).collect())
}

#[test]
fn the_image_runs_as_the_daemonset_runs_it_and_rolls_under_a_stream() -> anyhow::Result<()> {
    let test = "the_image_runs_as_the_daemonset_runs_it_and_rolls_under_a_stream";
    if dataplane_tests::skip_unless_root(test) {
        return Ok(());
    }
    let image = build_and_load_image()?;
    let spec = PodSpec::read("node-1")?;
    let datastore = workspace_root().join(EXAMPLE).canonicalize().context("the example datastore")?;
    let model = dataplane_lab::load_model(&datastore)?;
    let lab = Lab::up(&model, LabOptions::default())?;
    let names = [format!("{}-node-1-a", lab.prefix()), format!("{}-node-1-b", lab.prefix())];
    let _podman = Podman { image: image.clone(), containers: names.to_vec() };
    let node1_netns = lab.node_netns("node-1")?.to_owned();
    let conf_path = lab.dir().join("containers.conf");
    std::fs::write(&conf_path, CONTAINERS_CONF).with_context(|| format!("writing {}", conf_path.display()))?;
    let conf = conf_path.to_str().context("the lab's directory is not UTF-8")?;

    let start = |name: &str| -> anyhow::Result<dataplane_lab::ChildHandle> {
        let argv = podman_run_argv(&lab, &spec, "node-1", &image, name, &datastore)?;
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut container = lab.spawn_with_env(&node1_netns, &argv, name, &[("CONTAINERS_CONF", conf)])?;
        container.wait_for_log("fast path programmed", READY_TIMEOUT)?;
        Ok(container)
    };
    let began = Instant::now();
    let mut first = start(&names[0])?;
    let first_ready = began.elapsed();
    let mut node2 = lab.start_agent("node-2", &agent_bin(), &datastore)?;
    node2.wait_ready(READY_TIMEOUT)?;

    // The pins landed on the node's bpffs, where they outlive the container.
    let pins = lab.pin_path("node-1").join("dataplane");
    ensure!(
        std::fs::read_dir(&pins).map(|d| d.count()).unwrap_or(0) > 0,
        "the container pinned nothing under {} (the host side of its /sys/fs/bpf/dataplane)",
        pins.display()
    );
    // The kubelet's probes, as the manifest states them, answer on the node.
    for (path, port) in &spec.probes {
        let (status, body) = dataplane_lab::http_get(&node1_netns, &format!("127.0.0.1:{port}"), path)?;
        ensure!(status == 200, "probe {path} on port {port} answered {status}: {body}");
    }

    let client = lab.pod("default/web-1")?.clone();
    let server = lab.pod("default/web-2")?.clone();
    ensure!(lab.ping_ok(&client, server.addr, 5)?, "web-1 cannot ping web-2 through the agent in the image");
    let mut iperf_server = lab.spawn(&server.netns, &["iperf3", "-s", "-1", "--forceflush"], "iperf3-server")?;
    iperf_server.wait_for_log("Server listening", Duration::from_secs(10))?;
    let server_addr = server.addr.to_string();
    let mut stream = lab.spawn(
        &client.netns,
        &["iperf3", "-c", &server_addr, "-t", STREAM_SECONDS, "-J", "--connect-timeout", "3000"],
        "iperf3-client",
    )?;
    std::thread::sleep(Duration::from_secs(2));

    // The rolling update of node-1: the kubelet stops the pod with the grace period, then starts
    // the new one from the image.
    let began = Instant::now();
    let stop = Command::new("podman")
        .env("CONTAINERS_CONF", conf)
        .args(["stop", "-t", &spec.grace_seconds.to_string(), &names[0]])
        .output()
        .context("cannot run podman stop")?;
    ensure!(stop.status.success(), "podman stop failed: {}", String::from_utf8_lossy(&stop.stderr));
    // podman run returns with the agent's exit status once the container is gone.
    let status = first
        .wait_timeout(Duration::from_secs(10))?
        .with_context(|| format!("podman run did not return after podman stop:\n{}", first.log()))?;
    ensure!(status.success(), "the agent did not exit cleanly on the kubelet's SIGTERM ({status}):\n{}", first.log());
    let stopped = began.elapsed();
    let second = start(&names[1])?;
    let rolled = began.elapsed();
    ensure!(
        second.log().contains("adopted=true") && second.log().contains("written=0"),
        "the new container did not adopt the pinned state as it was:\n{}",
        second.log()
    );

    let finished = stream
        .wait_timeout(Duration::from_secs(30))?
        .with_context(|| format!("iperf3 did not finish:\n{}", stream.log()))?;
    let report = stream.log();
    ensure!(finished.success(), "iperf3 failed across the rolling update:\n{report}");
    let per_second = per_second(&report)?;
    eprintln!(
        "first container programmed node-1 {first_ready:?} after podman run; podman stop returned in {stopped:?} \
         (the first container exited with {status}), the new one programmed it {rolled:?} after the stop began; \
         Gbit/s per second of the stream: {per_second:.2?}"
    );
    ensure!(
        per_second.iter().all(|gbps| *gbps > 0.1),
        "some second of the stream carried (almost) nothing across the rolling update: {per_second:.2?}"
    );
    ensure!(lab.ping_ok(&client, server.addr, 3)?, "web-1 cannot ping web-2 after the rolling update");
    Ok(())
}
