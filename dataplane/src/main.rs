//! `dataplane`: the agent and its command line.

use std::{io::IsTerminal as _, net::Ipv4Addr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use dataplane::{
    agent::{self, Datastore, Mode, RunOptions, DEFAULT_PIN_PATH},
    backend, check,
    datastore::{etcd::EtcdConfig, kubernetes::KubernetesConfig},
    trace,
};

/// `--nat-port-range`'s default, from dataplane-common's NAT_PORT_MIN/MAX.
const DEFAULT_NAT_PORTS: &str = "20000-29999";
const _: () = assert!(dataplane_common::net::NAT_PORT_MIN == 20000 && dataplane_common::net::NAT_PORT_MAX == 29999);

#[derive(Parser)]
#[command(name = "dataplane", version, about = "eBPF fast path for Calico-style pod networking")]
struct Cli {
    /// Log lines as text for a person or as one JSON object per line for a log collector.
    /// RUST_LOG sets what is logged (default info).
    #[arg(long, global = true, value_enum, env = "LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// On an error, print where in the code it arose (a backtrace) after the error and its causes.
    /// RUST_LIB_BACKTRACE=1 does the same; RUST_BACKTRACE alone does not (it is for panics).
    #[arg(long, global = true)]
    backtrace: bool,
    #[command(subcommand)]
    command: Command,
}

/// How log lines are written (to stderr).
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// `time level span: message key=value ...`, coloured on a terminal.
    Text,
    /// One JSON object per line: timestamp, level, fields (message included), target, spans.
    Json,
}

/// How `dataplane monitor` prints.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum MonitorFormat {
    /// One line per event for a person.
    Text,
    /// One JSON object per line.
    Json,
}

/// How inspection commands print.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    /// Aligned text for a person.
    Table,
    /// JSON for tools.
    Json,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once at start-up")]
enum Command {
    /// Run the agent on this node: program the fast path and keep it equal to the datastore.
    Run {
        #[command(flatten)]
        datastore: DatastoreArgs,
        #[command(flatten)]
        on: NodeArgs,
        /// Backend: the BPF fast path, netlink routes, or the best the kernel supports.
        #[arg(long, value_enum, default_value_t = Mode::Auto)]
        mode: Mode,
        /// Ports SNAT may give a natOutgoing flow whose own source port is taken (the default is
        /// outside the kernel's ephemeral range, so the node's own connections do not collide).
        #[arg(long, value_parser = agent::parse_port_range, default_value = DEFAULT_NAT_PORTS)]
        nat_port_range: (u16, u16),
        /// How long natOutgoing flows live without packets: NAME=SECONDS,... with NAME tcp-new (30),
        /// tcp-established (3600), tcp-closing (10), udp (60), icmp (30); unnamed ones keep these.
        #[arg(long, value_parser = dataplane::conntrack::parse_timeouts, default_value = "")]
        conntrack_timeouts: dataplane_common::FlowTimeouts,
        /// Entries of the conntrack map (two per natOutgoing flow) [default: 131072]. A map's size
        /// is fixed when it is created: this applies only when no pinned conntrack map exists yet
        /// (first start, or after `dataplane cleanup`); an adopted map keeps its size.
        #[arg(long, value_parser = clap::value_parser!(u32).range(2..))]
        conntrack_max: Option<u32>,
        /// Serve Prometheus metrics on /metrics, readiness on /healthz (200 while a good state is
        /// programmed; the body says the datastore's state) and liveness on /livez at this address:
        /// a bare port (9091) means loopback only (127.0.0.1:9091); name an address to expose
        /// it (0.0.0.0:9091). Off when not given.
        #[arg(long, env = "METRICS_ADDR", value_parser = parse_metrics_addr)]
        metrics_addr: Option<std::net::SocketAddr>,
        /// Seconds between full resyncs.
        #[arg(long, default_value_t = 30)]
        resync_interval: u64,
        /// What the kernel programs log (through aya-log, into this agent's log): nothing, every
        /// drop with its reason, or every packet's decision.
        #[arg(long, value_enum, default_value_t = backend::bpf::KernelLog::Off)]
        kernel_log: backend::bpf::KernelLog,
        /// XDP on the uplink, to drop refused tunnel packets before an skb exists: auto is native
        /// where the driver has it, else generic, and none on a veth (native XDP there takes GSO
        /// from its peer and generic defeats the VXLAN GRO anchor); or force native, generic, off.
        #[arg(long, value_enum, default_value_t = backend::xdp::XdpChoice::Auto)]
        xdp: backend::xdp::XdpChoice,
    },
    /// Print the routes map: every prefix, what it does, encapsulation, natOutgoing, peer node.
    Routes {
        #[command(flatten)]
        maps: MapsArgs,
    },
    /// Print the fast path's counters: every decision and every drop reason.
    Stats {
        #[command(flatten)]
        maps: MapsArgs,
    },
    /// Stream the fast path's drops (or, with --all, every decision) as they happen: time,
    /// interface, program, reason, addresses and ports, inside tunnels too. Ctrl-C stops it.
    Monitor {
        /// Directory of the pinned maps.
        #[arg(long, default_value = DEFAULT_PIN_PATH)]
        pin_path: PathBuf,
        /// Every decision, not only drops (costs the programs more while it runs).
        #[arg(long)]
        all: bool,
        /// Only packets of this pod: namespace/name, name (namespace default) or its address.
        #[arg(long, value_name = "POD")]
        pod: Vec<String>,
        /// Only this reason, as `dataplane stats` names it (e.g. drop_spoofed_source).
        #[arg(long, value_name = "REASON")]
        reason: Vec<String>,
        /// Only packets carrying this address (source or destination, outside or inside a tunnel).
        #[arg(long, value_name = "ADDR")]
        addr: Vec<Ipv4Addr>,
        /// Text for a person, or one JSON object per line.
        #[arg(short = 'o', long, value_enum, default_value_t = MonitorFormat::Text)]
        output: MonitorFormat,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long, value_name = "SECONDS")]
        duration: Option<f64>,
    },
    /// List the live natOutgoing translations: protocol, pod, translated port, peer, state, age.
    #[command(visible_alias = "nat")]
    Conntrack {
        #[command(flatten)]
        maps: MapsArgs,
    },
    /// Remove everything the agent made: detaches the programs, frees the maps, deletes its routes.
    Cleanup {
        /// Directory of the pinned maps and links.
        #[arg(long, default_value = DEFAULT_PIN_PATH)]
        pin_path: PathBuf,
    },
    /// IP address management, as calicoctl shows it.
    Ipam {
        #[command(subcommand)]
        command: IpamCommand,
    },
    /// Move the cluster between datastores.
    Datastore {
        #[command(subcommand)]
        command: DatastoreCommand,
    },
    /// Check this node as Calico's troubleshooting page does; exits 1 when something is wrong.
    Check {
        #[command(flatten)]
        datastore: DatastoreArgs,
        #[command(flatten)]
        on: NodeArgs,
        /// The dataplane to check: the fast path (bpf), the netlink fallback, or whichever the
        /// node runs (auto: the fast path when its maps are pinned).
        #[arg(long, value_enum, default_value_t = Mode::Auto)]
        mode: Mode,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// What the fast path does with a packet on this node, from the live maps; --inject runs it
    /// through the program (BPF_PROG_TEST_RUN) to confirm. Exits 1 when the run disagrees.
    Trace {
        /// Source address.
        src: Ipv4Addr,
        /// Destination address.
        dst: Ipv4Addr,
        /// Transport protocol (icmp: an echo request from a pod or the host, a reply from the uplink).
        #[arg(long, value_enum, default_value_t = trace::Proto::Tcp)]
        proto: trace::Proto,
        /// Source port (icmp from a pod or the host: the echo identifier).
        #[arg(long, default_value_t = 33333)]
        sport: u16,
        /// Destination port (icmp from the uplink: the echo identifier).
        #[arg(long, default_value_t = 80)]
        dport: u16,
        /// Where the packet enters: sent by a pod, arriving on the uplink, sent by the node, or
        /// sent into the pod holding DST by the node's stack.
        #[arg(long, value_enum, default_value_t = trace::Origin::Workload)]
        from: trace::Origin,
        /// A fragment: the first (MF set) or a later one (offset > 0); for a tunnel packet from the
        /// uplink, the outer packet is the fragment.
        #[arg(long, value_enum, default_value_t = trace::Fragment::None)]
        fragment: trace::Fragment,
        /// The (inner) IPv4 header carries options (IHL 6).
        #[arg(long)]
        ip_options: bool,
        /// --from workload or into-pod: the pod's interface [default: the pod holding SRC, or DST].
        #[arg(long)]
        iface: Option<String>,
        /// --from uplink: the tunnel it arrives in [default: as the route to SRC's block says].
        #[arg(long, value_enum)]
        encap: Option<trace::EncapChoice>,
        /// --from uplink: the node that sends the tunnel packet [default: the owner of SRC's block].
        #[arg(long)]
        outer_src: Option<Ipv4Addr>,
        /// TTL of the packet.
        #[arg(long, default_value_t = 64)]
        ttl: u8,
        /// IPv4 total length in bytes [default: just the headers].
        #[arg(long, default_value_t = 0)]
        size: u16,
        /// Directory of the agent's pinned maps.
        #[arg(long, default_value = DEFAULT_PIN_PATH)]
        pin_path: PathBuf,
        /// Also run the packet through the kernel program and compare.
        #[arg(long)]
        inject: bool,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

/// `dataplane ipam` subcommands.
#[derive(Subcommand)]
enum IpamCommand {
    /// Pools (and with --show-blocks their blocks) with IPs total, in use and free.
    Show {
        /// Also list every block under its pool.
        #[arg(long)]
        show_blocks: bool,
        #[command(flatten)]
        datastore: DatastoreArgs,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

/// Where `dataplane datastore export` writes.
#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportTarget {
    /// Calico's etcdv3 layout on an etcd server.
    Etcdv3,
}

/// `dataplane datastore` subcommands.
#[derive(Subcommand)]
enum DatastoreCommand {
    /// Write a Calico YAML file (the file datastore's format) into etcd in Calico's layout;
    /// refuses a file with problems.
    Export {
        /// The datastore to write to.
        #[arg(long, value_enum)]
        to: ExportTarget,
        /// The YAML file of Calico resources.
        file: PathBuf,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
}

/// Which node this is and where its agent keeps its state: the same for `run` and `check`.
#[derive(clap::Args)]
struct NodeArgs {
    /// This node's name, as in the datastore.
    #[arg(long, env = "NODENAME")]
    node: String,
    /// The node's uplink interface [default: the one holding the node's address].
    #[arg(long)]
    uplink: Option<String>,
    /// Directory of the agent's pinned maps and links (on a bpffs; `run` mounts it if missing).
    #[arg(long, default_value = DEFAULT_PIN_PATH)]
    pin_path: PathBuf,
}

/// The pinned maps a printing command reads, and how it prints them.
#[derive(clap::Args)]
struct MapsArgs {
    /// Directory of the pinned maps.
    #[arg(long, default_value = DEFAULT_PIN_PATH)]
    pin_path: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

/// Where the read-only commands find the cluster: the same settings as `run`.
#[derive(clap::Args)]
struct DatastoreArgs {
    /// Where the cluster's resources are: file:PATH (a YAML of Calico resources), etcdv3, or
    /// kubernetes (Calico's CRDs, Nodes and Pods from the API server, as calico-node reads them).
    #[arg(long, env = "DATASTORE_TYPE")]
    datastore: Datastore,
    /// A kubeconfig file (kubernetes datastore) [default: ~/.kube/config, or the pod's service
    /// account].
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// etcd's settings (etcdv3 datastore).
    #[command(flatten)]
    etcd: EtcdArgs,
}

/// How to reach Calico's etcd: the same for every command that reads or writes it.
#[derive(clap::Args)]
struct EtcdArgs {
    /// etcd client URLs, comma-separated (etcdv3 datastore).
    #[arg(long, env = "ETCD_ENDPOINTS", value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    etcd_endpoints: Vec<String>,
    /// CA certificate for etcd (PEM).
    #[arg(long, env = "ETCD_CA_CERT_FILE")]
    etcd_ca_cert_file: Option<PathBuf>,
    /// Client certificate for etcd (PEM).
    #[arg(long, env = "ETCD_CERT_FILE")]
    etcd_cert_file: Option<PathBuf>,
    /// Client key for etcd (PEM).
    #[arg(long, env = "ETCD_KEY_FILE")]
    etcd_key_file: Option<PathBuf>,
    /// Prefix of Calico's keys in etcd.
    #[arg(long, env = "ETCD_PREFIX", default_value = "/calico")]
    etcd_prefix: String,
}

impl EtcdArgs {
    /// The client's settings.
    fn config(&self) -> EtcdConfig {
        EtcdConfig {
            endpoints: self.etcd_endpoints.clone(),
            ca_cert_file: self.etcd_ca_cert_file.clone(),
            cert_file: self.etcd_cert_file.clone(),
            key_file: self.etcd_key_file.clone(),
            prefix: self.etcd_prefix.clone(),
        }
    }
}

impl DatastoreArgs {
    /// The datastore with its settings; `node` limits the Kubernetes datastore to the pods
    /// scheduled on it (`None`: every pod, for cluster-wide commands).
    fn datastore(&self, node: Option<&str>) -> Datastore {
        match &self.datastore {
            Datastore::Kubernetes(_) => Datastore::Kubernetes(KubernetesConfig {
                kubeconfig: self.kubeconfig.clone(),
                node: node.map(str::to_owned),
            }),
            other => other.clone(),
        }
    }

    fn etcd(&self) -> EtcdConfig {
        self.etcd.config()
    }
}

/// Whether an error is printed with its backtrace: `--backtrace` or RUST_LIB_BACKTRACE=1, never
/// RUST_BACKTRACE alone, which users' shells often set for panics.
fn wants_backtrace(flag: bool, lib_backtrace: Option<&str>) -> bool {
    flag || lib_backtrace.is_some_and(|value| value != "0")
}

/// How a failed command reports: the error and its causes on one line, as `Error: a: b: c`,
/// then the backtrace only when asked for.
fn error_report(error: &anyhow::Error, backtrace: bool) -> String {
    if backtrace {
        format!("Error: {error:?}")
    } else {
        format!("Error: {error:#}")
    }
}

pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    let backtrace = wants_backtrace(cli.backtrace, std::env::var("RUST_LIB_BACKTRACE").ok().as_deref());
    // anyhow captures a backtrace when RUST_LIB_BACKTRACE (else RUST_BACKTRACE) says so: capture
    // exactly when it will be printed.
    // Set before any other thread exists (no runtime, no logger yet), so nothing reads the
    // environment meanwhile.
    std::env::set_var("RUST_LIB_BACKTRACE", if backtrace { "1" } else { "0" });
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{}", error_report(&error, backtrace));
            ExitCode::FAILURE
        }
    }
}

/// Runs the command `cli` names.
fn run(cli: Cli) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().with_current_span(true).with_span_list(true).init(),
    }
    match cli.command {
        Command::Run {
            datastore,
            on: NodeArgs { node, uplink, pin_path },
            mode,
            resync_interval,
            nat_port_range,
            conntrack_timeouts,
            conntrack_max,
            metrics_addr,
            kernel_log,
            xdp,
        } => {
            let options = RunOptions {
                datastore: datastore.datastore(Some(&node)),
                etcd: datastore.etcd(),
                node,
                uplink,
                pin_path,
                mode,
                resync: Duration::from_secs(resync_interval.max(1)),
                nat_ports: nat_port_range,
                conntrack_timeouts,
                conntrack_max,
                metrics_addr,
                kernel_log,
                xdp,
            };
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(agent::run(options))
        }
        Command::Routes { maps: MapsArgs { pin_path, output } } => {
            let rows = dataplane::routes::read(&pin_path)?;
            match output {
                Output::Table => print!("{}", dataplane::routes::table(&rows)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
            }
            Ok(())
        }
        Command::Monitor { pin_path, all, pod, reason, addr, output, count, duration } => {
            let duration = match duration {
                Some(seconds) => Some(
                    Duration::try_from_secs_f64(seconds)
                        .map_err(|_| anyhow::anyhow!("--duration {seconds}: not a number of seconds"))?,
                ),
                None => None,
            };
            let options = dataplane::monitor::Options {
                pin_path,
                all,
                filter: dataplane::monitor::Filter { pods: pod, reasons: reason, addrs: addr },
                json: output == MonitorFormat::Json,
                count,
                duration,
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the monitor's runtime")?;
            runtime.block_on(dataplane::monitor::run(&options, &mut std::io::stdout().lock()))
        }
        Command::Stats { maps: MapsArgs { pin_path, output } } => {
            let counters = dataplane::stats::read(&pin_path)?;
            match output {
                Output::Table => print!("{}", dataplane::stats::table(&counters)),
                Output::Json => println!("{:#}", dataplane::stats::json(&counters)),
            }
            Ok(())
        }
        Command::Conntrack { maps: MapsArgs { pin_path, output } } => {
            let translations = dataplane::conntrack::read(&pin_path)?;
            match output {
                Output::Table => print!("{}", dataplane::conntrack::table(&translations)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&translations)?),
            }
            Ok(())
        }
        Command::Cleanup { pin_path } => {
            let removed = backend::bpf::cleanup(&pin_path)?;
            println!("removed {removed} TC filters and pinned objects under {}", pin_path.display());
            // The fast path's host routes and the netlink fallback's routes and vxlan.calico.
            let report = backend::netlink::cleanup_blocking()?;
            println!(
                "removed {} kernel routes of protocol {} and {} devices",
                report.routes,
                backend::host_routes::RTPROT_DATAPLANE,
                report.devices
            );
            if report.nat_table {
                println!("removed the natOutgoing table (table ip {})", backend::nftables::TABLE);
            }
            Ok(())
        }
        Command::Ipam { command: IpamCommand::Show { show_blocks, datastore, output } } => {
            let snapshot = dataplane::ipam::read_once(&datastore.datastore(None), &datastore.etcd())?;
            for problem in &snapshot.problems {
                tracing::warn!("skipped: {problem}");
            }
            let pools = dataplane::ipam::usage(&snapshot.model);
            match output {
                Output::Table => print!("{}", dataplane::ipam::table(&pools, show_blocks)),
                Output::Json => println!("{:#}", dataplane::ipam::json(&pools, show_blocks)),
            }
            Ok(())
        }
        Command::Datastore { command: DatastoreCommand::Export { to: ExportTarget::Etcdv3, file, etcd } } => {
            let config = etcd.config();
            let (model, written) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(dataplane::datastore::etcd::export::export_file(&config, &file))?;
            println!(
                "exported {}: {} pools, {} nodes, {} blocks, {} workload endpoints as {} keys under {} \
                 in {} transaction(s), etcd revision {}",
                file.display(),
                model.pools.len(),
                model.nodes.len(),
                model.blocks.len(),
                model.workloads.len(),
                written.keys,
                dataplane::datastore::etcd::keys::normalize_prefix(&config.prefix),
                written.transactions,
                written.revision
            );
            Ok(())
        }
        Command::Check { datastore, on: NodeArgs { node, uplink, pin_path }, mode, output } => {
            let options = check::CheckOptions {
                datastore: datastore.datastore(Some(&node)),
                etcd: datastore.etcd(),
                node,
                uplink,
                pin_path,
                mode,
            };
            // Exit 1 means "problems found"; 2 means the check itself could not run.
            let report = match check::run(&options) {
                Ok(report) => report,
                Err(error) => {
                    eprintln!("Error: {error:#}");
                    std::process::exit(2);
                }
            };
            match output {
                Output::Table => print!("{}", check::text(&report)),
                Output::Json => println!("{:#}", check::json(&report)),
            }
            if !report.ok() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Trace {
            src,
            dst,
            proto,
            sport,
            dport,
            from,
            iface,
            encap,
            outer_src,
            ttl,
            size,
            fragment,
            ip_options,
            pin_path,
            inject,
            output,
        } => {
            let options = trace::TraceOptions {
                probe: trace::Probe { src, dst, proto, sport, dport, ttl, size, fragment, options: ip_options },
                origin: from,
                iface,
                encap,
                outer_src,
                pin_path,
                inject,
            };
            let report = trace::run(&options)?;
            match output {
                Output::Table => print!("{}", trace::text(&report)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            }
            if report.inject.as_ref().is_some_and(|injected| !injected.matched()) {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// `--metrics-addr`: an address and port, or a bare port meaning loopback only, so that the
/// metrics are exposed beyond the node only when the operator names an address.
fn parse_metrics_addr(text: &str) -> Result<std::net::SocketAddr, String> {
    let text = text.trim();
    if let Ok(port) = text.parse::<u16>() {
        return Ok(std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port)));
    }
    text.parse()
        .map_err(|_| format!("{text:?} is neither a port (9091: loopback only) nor an address and port (0.0.0.0:9091)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_metrics_port_binds_to_loopback_only() {
        assert_eq!(parse_metrics_addr("9091"), Ok("127.0.0.1:9091".parse().expect("address")));
        assert_eq!(parse_metrics_addr("0.0.0.0:9091"), Ok("0.0.0.0:9091".parse().expect("address")));
        assert_eq!(parse_metrics_addr("[::1]:9091"), Ok("[::1]:9091".parse().expect("address")));
        for wrong in ["", "99999", "0.0.0.0", "localhost:9091", "9091x"] {
            let error = parse_metrics_addr(wrong).expect_err(wrong);
            assert!(error.contains("0.0.0.0:9091"), "{error}");
        }
        let cli = Cli::try_parse_from([
            "dataplane",
            "run",
            "--datastore",
            "file:/x",
            "--node",
            "n",
            "--metrics-addr",
            "9091",
        ])
        .expect("a bare port is accepted");
        let Command::Run { metrics_addr, .. } = cli.command else { panic!("not run") };
        assert_eq!(metrics_addr, Some("127.0.0.1:9091".parse().expect("address")));
    }

    #[test]
    fn errors_print_their_causes_and_a_backtrace_only_when_asked() {
        assert!(!wants_backtrace(false, None), "RUST_BACKTRACE alone is for panics");
        assert!(!wants_backtrace(false, Some("0")));
        assert!(wants_backtrace(false, Some("1")));
        assert!(wants_backtrace(true, None));
        let error = anyhow::anyhow!("no such file").context("reading /x").context("starting");
        assert_eq!(error_report(&error, false), "Error: starting: reading /x: no such file");
        assert!(error_report(&error, true).contains("Caused by:"), "{}", error_report(&error, true));
        let cli = Cli::try_parse_from(["dataplane", "routes", "--backtrace"]).expect("a global flag");
        assert!(cli.backtrace);
    }

    /// The DaemonSets in deploy/ must start the agent with arguments this CLI accepts: the
    /// default one on Calico's Kubernetes datastore, the alternative on etcdv3.
    #[test]
    fn the_daemonsets_run_a_command_line_the_agent_accepts() {
        let manifests = [
            ("deploy/daemonset.yaml", include_str!("../../deploy/daemonset.yaml")),
            ("deploy/daemonset-etcd.yaml", include_str!("../../deploy/daemonset-etcd.yaml")),
        ];
        for (file, text) in manifests {
            let manifest: serde_yaml::Value =
                serde_yaml::from_str(text).unwrap_or_else(|e| panic!("{file} is not YAML: {e}"));
            let container = &manifest["spec"]["template"]["spec"]["containers"][0];
            assert_eq!(manifest["spec"]["template"]["spec"]["hostNetwork"], true, "{file}");
            assert_eq!(container["securityContext"]["privileged"], true, "{file}");
            let mut argv = vec!["dataplane".to_owned()];
            for arg in container["args"].as_sequence().expect("args") {
                argv.push(arg.as_str().expect("string arg").to_owned());
            }
            // NODENAME comes from the downward API in the pod.
            argv.push("--node=node-1".to_owned());
            let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{file}: {argv:?}: {e}"));
            let Command::Run { datastore, on: NodeArgs { node, pin_path, .. }, metrics_addr, .. } = cli.command else {
                panic!("{file} does not run `dataplane run`");
            };
            match (file, datastore.datastore(Some(&node))) {
                ("deploy/daemonset.yaml", Datastore::Kubernetes(config)) => {
                    // Only this node's pods are read.
                    assert_eq!(config.node.as_deref(), Some("node-1"));
                }
                ("deploy/daemonset-etcd.yaml", Datastore::Etcdv3) => {}
                (file, other) => panic!("{file} runs the agent on {other:?}"),
            }
            assert_eq!(pin_path, PathBuf::from(DEFAULT_PIN_PATH), "{file}");
            assert_eq!(metrics_addr.map(|a| a.port()), Some(9091), "{file}: the probes use port 9091");
            // A datastore that is down must not restart the pod: liveness is not the health check.
            assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/livez", "{file}");
            assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/healthz", "{file}");
            for probe in ["livenessProbe", "readinessProbe"] {
                assert_eq!(container[probe]["httpGet"]["port"], 9091, "{file}: {probe} must ask the metrics port");
            }
        }
    }

    /// Every object in deploy/ is what the Kubernetes API's own schema (the k8s-openapi types)
    /// makes of it: read as its type and written back, it is unchanged. k8s-openapi ignores a
    /// field it does not know, so a misspelt or misplaced field (which the API server would drop
    /// or refuse) shows as a difference here.
    #[test]
    fn every_object_in_deploy_survives_the_api_schema_unchanged() {
        use k8s_openapi::api::{
            apps::v1::DaemonSet,
            core::v1::ServiceAccount,
            rbac::v1::{ClusterRole, ClusterRoleBinding},
        };
        fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(
            file: &str,
            json: &serde_json::Value,
        ) -> serde_json::Value {
            let typed: T = serde_json::from_value(json.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
            serde_json::to_value(typed).expect("a k8s-openapi object serialises")
        }
        let files = [
            ("deploy/daemonset.yaml", include_str!("../../deploy/daemonset.yaml")),
            ("deploy/daemonset-etcd.yaml", include_str!("../../deploy/daemonset-etcd.yaml")),
            ("deploy/rbac.yaml", include_str!("../../deploy/rbac.yaml")),
        ];
        let mut objects = 0;
        for (file, text) in files {
            for document in serde_yaml::Deserializer::from_str(text) {
                let yaml = <serde_yaml::Value as serde::Deserialize>::deserialize(document)
                    .unwrap_or_else(|e| panic!("{file} is not YAML: {e}"));
                if yaml.is_null() {
                    continue;
                }
                let json = serde_json::to_value(&yaml).expect("YAML as JSON");
                let back = match json["kind"].as_str() {
                    Some("DaemonSet") => round_trip::<DaemonSet>(file, &json),
                    Some("ServiceAccount") => round_trip::<ServiceAccount>(file, &json),
                    Some("ClusterRole") => round_trip::<ClusterRole>(file, &json),
                    Some("ClusterRoleBinding") => round_trip::<ClusterRoleBinding>(file, &json),
                    other => panic!("{file}: kind {other:?} has no schema check here; add its k8s-openapi type"),
                };
                assert_eq!(back, json, "{file}: {} has fields the API schema does not know", json["kind"]);
                objects += 1;
            }
        }
        assert_eq!(objects, 5, "deploy/ holds two DaemonSets and rbac.yaml's three objects");
    }
}
