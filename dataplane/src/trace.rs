//! `dataplane trace SRC DST`: what the fast path does with one packet on this node.
//!
//! The decision is taken from the LIVE pinned maps by [`predict`], a step-by-step mirror of the
//! kernel programs (`dataplane-ebpf`: `workload.rs`, `uplink.rs`, `nat.rs`, `route.rs`): the
//! workload entry and anti-spoofing, the longest-prefix route, the tunnel MTU, the TTL, VXLAN or
//! IPIP encapsulation with its outer header, SNAT of a new or a tracked flow, reverse NAT,
//! decapsulation, the ARP answer for the pods' gateway, IP options and fragments (left to the
//! kernel, or dropped where the fast path cannot handle them), the flows remembered as packets go
//! into pods (`to_workload`), and every drop with the name of the counter it increments.
//!
//! With `--inject` the packet is built ([`build_packet`]) and run through the program itself with
//! BPF_PROG_TEST_RUN ([`inject`]): the embedded object is loaded with the pinned routes, workloads,
//! peers and node maps, so it sees the live state, but with a fresh stats map (synthetic packets
//! must not move the node's counters) and a private copy of the conntrack map (a SNAT test run
//! creates a flow, which must not reserve a port in the live table). The verdict, the counter it
//! moved and the output headers are then compared with the prediction.

use std::{collections::BTreeMap, fmt, net::Ipv4Addr, path::Path};

use anyhow::{bail, Context as _};
use aya::{
    maps::{HashMap, PerCpuArray},
    programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp},
};
use dataplane_common::{
    net::{
        ARPHRD_ETHER, ARPOP_REQUEST, DEFAULT_TTL, ETH_ALEN, ETH_HLEN, ETH_P_ARP, ETH_P_IP, GATEWAY_ADDR, GATEWAY_MAC,
        ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_HLEN, IPIP_ENCAP_LEN, IPPROTO_ICMP, IPPROTO_IPIP, IPPROTO_TCP,
        IPPROTO_UDP, IPV4_DF, IPV4_HLEN, IPV4_MF, TCP_SYN, UDP_HLEN, VXLAN_ENCAP_LEN, VXLAN_FLAG_VNI, VXLAN_HLEN,
    },
    peer_flags, route_flags, route_kind, workload_flags, FlowKey, FlowTimeouts, Ipv4Bytes, MacBytes, NatFlow,
    NodeConfig, Peer, Route, Stat, Workload, CONNTRACK_MAP, FLOW_INBOUND, FLOW_OUTBOUND, FLOW_TO_POD, NODE_MAP,
    PEERS_MAP, PROG_FROM_UPLINK, PROG_FROM_WORKLOAD, PROG_TO_UPLINK, PROG_TO_WORKLOAD, PROG_XDP_UPLINK, ROUTES_MAP,
    STATS_MAP, WORKLOADS_MAP,
};
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::{
    backend::{entries::RouteKey, xdp::XdpMode},
    check,
    model::MacAddr,
    routes,
};

/// TC action: let the packet continue.
pub const TC_ACT_OK: u32 = 0;
/// TC action: drop.
pub const TC_ACT_SHOT: u32 = 2;
/// TC action: redirected by a helper.
pub const TC_ACT_REDIRECT: u32 = 7;

/// Length of a TCP header without options.
const TCP_HLEN: usize = 20;
/// Size of the kernel's `struct __sk_buff`, the context BPF_PROG_TEST_RUN takes for TC programs.
const SK_BUFF_SIZE: usize = 192;
/// Offset of `ifindex` in `struct __sk_buff`: the device the test packet arrives on.
const SK_BUFF_IFINDEX: usize = 40;
/// The UDP source port of the VXLAN packets built for `--from uplink`.
const VXLAN_PROBE_SPORT: u16 = 50000;
/// The fragment offset of a `--fragment later` probe, in 8-byte units: where the second fragment
/// of a 1500-byte packet starts.
const LATER_FRAGMENT_OFFSET: u16 = 1480 / 8;
/// The options word of an `--ip-options` probe: three NOPs and the end of the list.
const IP_OPTIONS_WORD: [u8; 4] = [1, 1, 1, 0];
/// Bytes of an ARP request for IPv4 over Ethernet.
const ARP_LEN: usize = 28;
/// MACs for the outer Ethernet header of packets from the uplink (the programs do not read them).
const UPLINK_PEER_MAC: MacBytes = [0x02, 0, 0, 0, 0, 0x02];
const UPLINK_OWN_MAC: MacBytes = [0x02, 0, 0, 0, 0, 0x01];

/// The transport protocol of the traced packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP (a SYN).
    Tcp,
    /// UDP.
    Udp,
    /// ICMP echo: a request from a workload or the host, a reply from the uplink.
    Icmp,
    /// An ARP request from SRC asking for DST (a pod asks for its gateway 169.254.1.1).
    Arp,
}

impl Proto {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => IPPROTO_TCP,
            Proto::Udp => IPPROTO_UDP,
            Proto::Icmp => IPPROTO_ICMP,
            // Not IP: no protocol number.
            Proto::Arp => 0,
        }
    }

    /// Bytes of the transport header the probe carries.
    fn header_len(self) -> usize {
        match self {
            Proto::Tcp => TCP_HLEN,
            Proto::Udp => UDP_HLEN,
            Proto::Icmp => ICMP_HLEN,
            Proto::Arp => 0,
        }
    }
}

/// Where the packet enters the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Sent by a pod: TC ingress of its host-side interface (`from_workload`).
    Workload,
    /// Arriving on the uplink (`from_uplink`): from a remote pod it comes encapsulated by its node.
    Uplink,
    /// Sent by the node itself, leaving by the uplink (`to_uplink`, TC egress).
    Host,
    /// Sent into the pod holding DST by the node's stack, from the host or forwarded from outside
    /// (`to_workload`, TC egress of the pod's interface).
    IntoPod,
}

/// Whether (and which part of) a fragmented packet the probe is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Fragment {
    /// A whole packet (DF set).
    #[default]
    None,
    /// The first fragment: MF set, offset 0; the transport header is there.
    First,
    /// A later fragment: offset > 0; no transport header.
    Later,
}

/// A tunnel kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Tunnel {
    /// VXLAN (UDP 4789, Calico's VNI 4096).
    Vxlan,
    /// IP-in-IP (protocol 4).
    Ipip,
}

/// The packet to trace: an IPv4 packet without options.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Probe {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Transport protocol.
    pub proto: Proto,
    /// TCP/UDP source port; for ICMP the echo identifier of a request.
    pub sport: u16,
    /// TCP/UDP destination port; for ICMP the echo identifier of a reply.
    pub dport: u16,
    /// TTL.
    pub ttl: u8,
    /// IPv4 total length in bytes (at least the headers).
    pub size: u16,
    /// A fragment? For a tunnel packet from the uplink this is the outer (tunnel) packet.
    pub fragment: Fragment,
    /// Whether the (inner) IPv4 header carries options (IHL 6).
    pub options: bool,
}

impl Probe {
    /// Bytes of IPv4 options the (inner) header carries.
    fn options_len(&self) -> usize {
        if self.options {
            IP_OPTIONS_WORD.len()
        } else {
            0
        }
    }

    /// The IPv4 flags and fragment offset of the packet.
    fn frag_off(&self) -> u16 {
        match self.fragment {
            Fragment::None => IPV4_DF,
            Fragment::First => IPV4_MF,
            Fragment::Later => LATER_FRAGMENT_OFFSET,
        }
    }

    /// The transport identity the kernel's conntrack reads from this packet in `direction`:
    /// echo requests carry their identifier as the source port, replies as the destination port.
    fn flow_key(&self, direction: u8) -> FlowKey {
        let (src_port, dst_port) = match self.proto {
            Proto::Icmp if self.icmp_type() == ICMP_ECHO_REQUEST => (self.sport, 0),
            Proto::Icmp => (0, self.dport),
            _ => (self.sport, self.dport),
        };
        FlowKey {
            src: self.src.octets(),
            dst: self.dst.octets(),
            src_port,
            dst_port,
            protocol: self.proto.number(),
            direction,
            _pad: [0; 2],
        }
    }

    /// ICMP: requests leave pods and the host, replies come back on the uplink.
    fn icmp_type(&self) -> u8 {
        // The type is fixed by where the packet enters; see `with_origin`.
        if self.dport == 0 && self.sport != 0 {
            ICMP_ECHO_REQUEST
        } else {
            ICMP_ECHO_REPLY
        }
    }

    /// The headers of the probe itself, as a [`Headers`] (ports as conntrack reads them; a later
    /// fragment has none).
    fn headers(&self, tunnel: Option<TunnelHeaders>) -> Headers {
        let (sport, dport) = match self.proto {
            _ if self.fragment == Fragment::Later && tunnel.is_none() => (None, None),
            Proto::Icmp if self.icmp_type() == ICMP_ECHO_REQUEST => (Some(self.sport), None),
            Proto::Icmp => (None, Some(self.dport)),
            _ => (Some(self.sport), Some(self.dport)),
        };
        Headers { tunnel, src: self.src, dst: self.dst, protocol: self.proto.number(), ttl: self.ttl, sport, dport }
    }
}

/// Makes an ICMP probe a request (identifier in `sport`) when it leaves a pod or the host, and a
/// reply (identifier in `dport`) when it arrives on the uplink, as the kernel's NAT reads them.
pub fn with_origin(mut probe: Probe, origin: Origin) -> Probe {
    if probe.proto == Proto::Icmp {
        // A zero identifier would make the request indistinguishable from a reply here.
        if origin == Origin::Uplink {
            (probe.sport, probe.dport) = (0, probe.dport.max(1));
        } else {
            (probe.sport, probe.dport) = (probe.sport.max(1), 0);
        }
    }
    let least = (IPV4_HLEN + probe.options_len() + probe.proto.header_len()) as u16;
    probe.size = probe.size.max(least);
    probe
}

/// Where the packet enters, resolved to what the program sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Entry {
    /// TC ingress of the workload interface with this ifindex.
    Workload {
        /// The interface's ifindex.
        ifindex: u32,
    },
    /// TC ingress of the uplink; encapsulated from `outer_src` when `tunnel` is set.
    Uplink {
        /// The tunnel the packet arrives in, if any.
        tunnel: Option<Tunnel>,
        /// The outer source (the sending node) of a tunnel packet.
        outer_src: Option<Ipv4Addr>,
    },
    /// TC egress of the uplink: the host's own packet.
    Host,
    /// TC egress of the workload interface with this ifindex: the stack sends into the pod.
    IntoPod {
        /// The interface's ifindex.
        ifindex: u32,
    },
}

/// The live state the programs read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// `node_v1` slot 0, if readable.
    pub node: Option<NodeConfig>,
    /// `routes_v1`.
    pub routes: BTreeMap<RouteKey, Route>,
    /// `workloads_v1`.
    pub workloads: BTreeMap<u32, Workload>,
    /// `peers_v1`.
    pub peers: BTreeMap<Ipv4Bytes, Peer>,
    /// `conntrack_v1`.
    pub conntrack: BTreeMap<FlowKey, NatFlow>,
    /// Now on the clock the flows are stamped with (`bpf_ktime_get_ns`, CLOCK_MONOTONIC).
    pub now_ns: u64,
}

/// The longest-prefix route for `addr`, as the LPM trie answers it.
pub fn lookup(routes: &BTreeMap<RouteKey, Route>, addr: Ipv4Addr) -> Option<(Ipv4Net, Route)> {
    (0..=32u8).rev().find_map(|len| {
        let net = Ipv4Net::new(addr, len).ok()?.trunc();
        routes.get(&(u32::from(len), net.network().octets())).map(|route| (net, *route))
    })
}

/// What the program returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// TC_ACT_OK: the packet continues (to the stack, or out).
    Pass,
    /// TC_ACT_REDIRECT: a helper sent it to another interface.
    Redirect,
    /// TC_ACT_SHOT: dropped.
    Drop,
}

impl Action {
    /// The TC return code.
    pub fn code(self) -> u32 {
        match self {
            Action::Pass => TC_ACT_OK,
            Action::Redirect => TC_ACT_REDIRECT,
            Action::Drop => TC_ACT_SHOT,
        }
    }

    /// The action for a TC return code.
    pub fn from_code(code: u32) -> Option<Action> {
        match code {
            TC_ACT_OK => Some(Action::Pass),
            TC_ACT_REDIRECT => Some(Action::Redirect),
            TC_ACT_SHOT => Some(Action::Drop),
            _ => None,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Pass => "pass (TC_ACT_OK)",
            Action::Redirect => "redirect (TC_ACT_REDIRECT)",
            Action::Drop => "drop (TC_ACT_SHOT)",
        })
    }
}

/// The outer headers of a tunnel packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TunnelHeaders {
    /// VXLAN or IPIP.
    pub kind: Tunnel,
    /// Outer source: the sending node.
    pub src: Ipv4Addr,
    /// Outer destination: the receiving node.
    pub dst: Ipv4Addr,
    /// VXLAN: the UDP destination port.
    pub dport: Option<u16>,
    /// VXLAN: the VNI.
    pub vni: Option<u32>,
    /// VXLAN: the inner source MAC (the sender's VTEP).
    pub inner_src_mac: Option<String>,
    /// VXLAN: the inner destination MAC (the receiver's VTEP).
    pub inner_dst_mac: Option<String>,
}

/// The headers of a packet (what leaves the program, or what is expected to).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Headers {
    /// The outer headers, when encapsulated.
    pub tunnel: Option<TunnelHeaders>,
    /// (Inner) source.
    pub src: Ipv4Addr,
    /// (Inner) destination.
    pub dst: Ipv4Addr,
    /// (Inner) IP protocol.
    pub protocol: u8,
    /// (Inner) TTL.
    pub ttl: u8,
    /// Source port, or the identifier of an ICMP echo request; `None` in a prediction means "any".
    pub sport: Option<u16>,
    /// Destination port, or the identifier of an ICMP echo reply.
    pub dport: Option<u16>,
}

impl fmt::Display for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(t) = &self.tunnel {
            match t.kind {
                Tunnel::Vxlan => {
                    write!(f, "VXLAN {} -> {}", t.src, t.dst)?;
                    if let Some(port) = t.dport {
                        write!(f, " udp/{port}")?;
                    }
                    if let Some(vni) = t.vni {
                        write!(f, " vni {vni}")?;
                    }
                    if let (Some(src), Some(dst)) = (&t.inner_src_mac, &t.inner_dst_mac) {
                        write!(f, " inner MAC {src} -> {dst}")?;
                    }
                }
                Tunnel::Ipip => write!(f, "IPIP {} -> {}", t.src, t.dst)?,
            }
            f.write_str(" | ")?;
        }
        let port = |p: Option<u16>| p.map(|p| format!(":{p}")).unwrap_or_default();
        match self.protocol {
            IPPROTO_ICMP => {
                write!(f, "icmp {} -> {}", self.src, self.dst)?;
                match (self.sport, self.dport) {
                    (Some(id), _) => write!(f, " echo request id {id}")?,
                    (None, Some(id)) => write!(f, " echo reply id {id}")?,
                    (None, None) => {}
                }
            }
            protocol => {
                let name = match protocol {
                    IPPROTO_TCP => "tcp".to_owned(),
                    IPPROTO_UDP => "udp".to_owned(),
                    other => format!("proto {other}"),
                };
                write!(f, "{name} {}{} -> {}{}", self.src, port(self.sport), self.dst, port(self.dport))?;
            }
        }
        write!(f, " ttl {}", self.ttl)
    }
}

/// What the fast path will do with the packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Prediction {
    /// The program that sees the packet.
    pub program: &'static str,
    /// The decisions, in the order the program takes them.
    pub steps: Vec<String>,
    /// The TC action.
    pub action: Action,
    /// The counter the program increments (a decision, or the drop reason).
    #[serde(serialize_with = "serialize_stat")]
    pub stat: Stat,
    /// Where a redirect sends the packet.
    pub target: Option<String>,
    /// The headers of the packet that leaves, unless it is dropped (or is no IPv4 packet).
    pub output: Option<Headers>,
    /// The flow the program remembers in the conntrack map (as a pod's reply travels), if any.
    #[serde(serialize_with = "serialize_flow")]
    pub remembers: Option<FlowKey>,
}

fn serialize_flow<S: serde::Serializer>(key: &Option<FlowKey>, serializer: S) -> Result<S::Ok, S::Error> {
    match key {
        Some(key) => serializer.serialize_str(&describe_flow(key)),
        None => serializer.serialize_none(),
    }
}

/// A conntrack key for a person: `proto src:port -> dst:port`.
fn describe_flow(key: &FlowKey) -> String {
    format!(
        "{} {}:{} -> {}:{}",
        crate::conntrack::protocol_name(key.protocol),
        Ipv4Addr::from(key.src),
        key.src_port,
        Ipv4Addr::from(key.dst),
        key.dst_port
    )
}

fn serialize_stat<S: serde::Serializer>(stat: &Stat, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(stat.name())
}

/// Builds a prediction step by step.
struct Tracer<'a> {
    state: &'a State,
    probe: Probe,
    steps: Vec<String>,
    /// A flow the program notes on the way (`nat::note_towards_pod`).
    remembers: Option<FlowKey>,
}

/// A decision of the mirrored program, or the counter of a drop.
type Outcome = Result<Decision, Stat>;

struct Decision {
    action: Action,
    stat: Stat,
    target: Option<String>,
    output: Headers,
}

impl Tracer<'_> {
    fn step(&mut self, text: impl Into<String>) {
        self.steps.push(text.into());
    }

    fn drop_because(&mut self, stat: Stat, why: impl Into<String>) -> Stat {
        self.step(why);
        stat
    }

    fn route(&mut self, addr: Ipv4Addr) -> Option<Route> {
        match lookup(&self.state.routes, addr) {
            Some((prefix, route)) => {
                let row = routes::describe(prefix, &route);
                let mut text = format!("{ROUTES_MAP} lookup {addr}: {prefix} {}", row.kind);
                if let Some(node) = row.node_addr {
                    text.push_str(&format!(" via node {node}"));
                }
                if !row.encap.is_empty() {
                    text.push_str(&format!(", encap {}", row.encap));
                }
                if let Some(index) = row.ifindex {
                    text.push_str(&format!(", ifindex {index}"));
                }
                if let Some(mac) = row.mac {
                    text.push_str(&format!(", mac {mac}"));
                }
                if row.nat_outgoing {
                    text.push_str(", natOutgoing");
                }
                self.step(text);
                Some(route)
            }
            None => {
                self.step(format!("{ROUTES_MAP} lookup {addr}: no route (outside every pool and block)"));
                None
            }
        }
    }

    /// `conntrack::expired`: under the timeouts of the node map (the agent's
    /// `--conntrack-timeouts`), or the defaults when the map cannot be read.
    fn expired(&self, flow: &NatFlow) -> bool {
        let timeouts = self.state.node.map(|node| node.timeouts).unwrap_or(FlowTimeouts::DEFAULT);
        flow.expired_with(self.state.now_ns, &timeouts)
    }

    /// `route::node_config`: the node map with an address, else the fast path drops.
    fn node_config(&mut self) -> Result<NodeConfig, Stat> {
        match self.state.node {
            Some(node) if node.addr != [0; 4] => Ok(node),
            _ => Err(self.drop_because(
                Stat::DropNoNodeConfig,
                format!("{NODE_MAP} is empty: the agent has not configured this node"),
            )),
        }
    }

    /// `route::decrement_ttl`.
    fn decrement_ttl(&mut self) -> Result<u8, Stat> {
        if self.probe.ttl <= 1 {
            return Err(self.drop_because(Stat::DropTtlExceeded, format!("TTL {} runs out here", self.probe.ttl)));
        }
        self.step(format!("TTL {} -> {}", self.probe.ttl, self.probe.ttl - 1));
        Ok(self.probe.ttl - 1)
    }

    fn output(&self, ttl: u8) -> Headers {
        Headers { ttl, ..self.probe.headers(None) }
    }

    fn pass(&mut self, stat: Stat, why: impl Into<String>, output: Headers) -> Outcome {
        self.step(why);
        Ok(Decision { action: Action::Pass, stat, target: None, output })
    }

    // -- from_workload ------------------------------------------------------------------------

    fn trace_from_workload(&mut self, ifindex: u32) -> Outcome {
        let probe = self.probe;
        if probe.proto == Proto::Arp {
            return Ok(self.answer_arp(ifindex));
        }
        let Some(workload) = self.state.workloads.get(&ifindex).copied() else {
            return Err(self.drop_because(
                Stat::DropUnknownWorkload,
                format!("{WORKLOADS_MAP} has no entry for ifindex {ifindex}: not a registered workload interface"),
            ));
        };
        let own = Ipv4Addr::from(workload.addr);
        if probe.src != own {
            return Err(self.drop_because(
                Stat::DropSpoofedSource,
                format!(
                    "{WORKLOADS_MAP}[{ifindex}] is pod {own}: the source {} is not its own (anti-spoofing)",
                    probe.src
                ),
            ));
        }
        self.step(format!("{WORKLOADS_MAP}[{ifindex}] is {}: the source is its own", check::workload_text(&workload)));
        if probe.options {
            let output = self.output(probe.ttl);
            return self.pass(Stat::PassToStack, "IP options: the kernel's router handles them", output);
        }
        // `workload::refuse_tunnel_packets`.
        let vxlan_port = self.state.node.map(|n| n.vxlan_port).unwrap_or(dataplane_common::net::CALICO_VXLAN_PORT);
        if probe.proto == Proto::Udp && probe.dport == vxlan_port && probe.fragment != Fragment::Later {
            return Err(self.drop_because(
                Stat::DropTunnelFromWorkload,
                format!(
                    "UDP to the VXLAN port {vxlan_port}: pods may not send the cluster's tunnel packets (another node would \
                     take them for this node's)"
                ),
            ));
        }
        let Some(route) = self.route(probe.dst) else {
            let node = self.node_config()?;
            if probe.dst.octets() == node.addr {
                let output = self.output(probe.ttl);
                return self.pass(Stat::PassToStack, "to this node's own address: handed to the stack", output);
            }
            let new_flows = self.nat_applies(&workload, &node);
            return self.nat_outbound(&node, new_flows);
        };
        match route.kind {
            route_kind::LOCAL_WORKLOAD => {
                let ttl = self.decrement_ttl()?;
                Ok(self.deliver_to_workload(&route, Stat::DeliveredLocal, self.output(ttl)))
            }
            route_kind::LOCAL_BLOCK => Err(self.drop_because(
                Stat::DropBlackhole,
                "a block of this node, but no workload has this address (Calico's blackhole route)",
            )),
            route_kind::REMOTE_BLOCK => self.forward_to_remote_node(ifindex, &route),
            _ => {
                let output = self.output(probe.ttl);
                self.pass(Stat::PassToStack, "not a block the fast path forwards: handed to the stack", output)
            }
        }
    }

    /// `arp::answer_gateway`: a request for the gateway is answered into the pod; any other ARP
    /// goes to the kernel, which (without proxy_arp) ignores it.
    fn answer_arp(&mut self, ifindex: u32) -> Decision {
        let probe = self.probe;
        let output = self.output(probe.ttl);
        if probe.dst.octets() == GATEWAY_ADDR {
            let target = format!(
                "back into the pod through ifindex {ifindex} (bpf_redirect): {} is-at {}",
                probe.dst,
                MacAddr(GATEWAY_MAC)
            );
            self.step(format!("ARP who-has {} tell {}: the pods' gateway, answered here", probe.dst, probe.src));
            return Decision { action: Action::Redirect, stat: Stat::ArpReplied, target: Some(target), output };
        }
        self.step(format!(
            "ARP who-has {} tell {}: not the gateway {}: to the kernel, which does not answer without proxy_arp",
            probe.dst,
            probe.src,
            Ipv4Addr::from(GATEWAY_ADDR)
        ));
        Decision { action: Action::Pass, stat: Stat::ArpPassed, target: None, output }
    }

    /// `route::to_workload`: into the pod's namespace, from the gateway's MAC.
    fn deliver_to_workload(&mut self, route: &Route, stat: Stat, output: Headers) -> Decision {
        let target = format!(
            "into the pod behind ifindex {} (bpf_redirect_peer), Ethernet {} -> {}",
            route.ifindex,
            MacAddr(GATEWAY_MAC),
            MacAddr(route.mac)
        );
        self.step(format!("delivered {target}"));
        Decision { action: Action::Redirect, stat, target: Some(target), output }
    }

    /// `workload::to_remote_node`.
    fn forward_to_remote_node(&mut self, ifindex: u32, route: &Route) -> Outcome {
        let node = self.node_config()?;
        let probe = self.probe;
        let (encap_len, name) = if route.flags & route_flags::ENCAP_VXLAN != 0 {
            (VXLAN_ENCAP_LEN, "VXLAN")
        } else if route.flags & route_flags::ENCAP_IPIP != 0 {
            (IPIP_ENCAP_LEN, "IPIP")
        } else {
            (0, "no encapsulation")
        };
        let len = usize::from(probe.size);
        // The probe is a single packet (not GSO); whole packets have DF set, like a TCP segment
        // from a pod, fragments do not (the kernel fragments them further if need be).
        if len + encap_len > node.uplink_mtu as usize && probe.fragment == Fragment::None {
            let mtu = (node.uplink_mtu as usize).saturating_sub(encap_len);
            self.step(format!(
                "{len} bytes + {encap_len} of {name} exceed the uplink MTU {} with DF set: answered with ICMP \
                 fragmentation needed, next-hop MTU {mtu}",
                node.uplink_mtu
            ));
            let output = Headers {
                tunnel: None,
                src: Ipv4Addr::from(GATEWAY_ADDR),
                dst: probe.src,
                protocol: IPPROTO_ICMP,
                ttl: DEFAULT_TTL,
                sport: None,
                dport: None,
            };
            return Ok(Decision {
                action: Action::Redirect,
                stat: Stat::IcmpFragNeeded,
                target: Some(format!("back into the pod through ifindex {ifindex} (bpf_redirect)")),
                output,
            });
        }
        self.step(format!("{len} bytes + {encap_len} of {name} fit the uplink MTU {}", node.uplink_mtu));
        let ttl = self.decrement_ttl()?;
        let peer = Ipv4Addr::from(route.node_addr);
        let uplink = format!("out of the uplink (ifindex {})", node.uplink_ifindex);
        if route.flags & route_flags::ENCAP_VXLAN != 0 {
            let tunnel = vxlan_headers(&node, route);
            self.step(format!(
                "VXLAN encapsulation: outer {} -> {peer} udp/{} vni {}, inner MAC {} -> {}",
                Ipv4Addr::from(node.addr),
                node.vxlan_port,
                node.vni,
                MacAddr(node.vtep_mac),
                MacAddr(route.mac)
            ));
            let output = Headers { tunnel: Some(tunnel), ..self.output(ttl) };
            Ok(Decision {
                action: Action::Redirect,
                stat: Stat::EncapVxlan,
                target: Some(format!("{uplink}, next hop by FIB")),
                output,
            })
        } else if route.flags & route_flags::ENCAP_IPIP != 0 {
            self.step(format!("IPIP encapsulation: outer {} -> {peer}", Ipv4Addr::from(node.addr)));
            let tunnel = TunnelHeaders {
                kind: Tunnel::Ipip,
                src: Ipv4Addr::from(node.addr),
                dst: peer,
                dport: None,
                vni: None,
                inner_src_mac: None,
                inner_dst_mac: None,
            };
            let output = Headers { tunnel: Some(tunnel), ..self.output(ttl) };
            Ok(Decision {
                action: Action::Redirect,
                stat: Stat::EncapIpip,
                target: Some(format!("{uplink}, next hop by FIB")),
                output,
            })
        } else {
            self.step(format!("routed without encapsulation to node {peer}"));
            Ok(Decision {
                action: Action::Redirect,
                stat: Stat::RoutedPlain,
                target: Some(format!("{uplink} to next hop {peer} (bpf_redirect_neigh)")),
                output: self.output(ttl),
            })
        }
    }

    /// `nat::applies`: the workload entry carries its pool's natOutgoing and the destination is
    /// not the node.
    fn nat_applies(&mut self, workload: &Workload, node: &NodeConfig) -> bool {
        let applies = workload.flags & workload_flags::NAT_OUTGOING != 0 && self.probe.dst.octets() != node.addr;
        self.step(if applies {
            "the pod's pool has natOutgoing: a new flow is translated to the node's address"
        } else {
            "the pod's pool has no natOutgoing: only a flow translated earlier stays translated"
        });
        applies
    }

    /// `nat::outbound`.
    fn nat_outbound(&mut self, node: &NodeConfig, new_flows: bool) -> Outcome {
        let probe = self.probe;
        if probe.fragment == Fragment::Later {
            if new_flows {
                return Err(self.drop_because(
                    Stat::DropNatFragment,
                    "a later fragment has no ports to translate by: dropped (natOutgoing needs whole packets or \
                     first fragments)",
                ));
            }
            let output = self.output(probe.ttl);
            return self.pass(Stat::PassToStack, "a later fragment of an untranslated flow: to the stack", output);
        }
        let key = probe.flow_key(FLOW_OUTBOUND);
        let node_addr = Ipv4Addr::from(node.addr);
        let tracked = self.state.conntrack.get(&key).copied();
        let (nat_addr, nat_port, stat) = match tracked {
            Some(flow) if !self.expired(&flow) && flow.nat_addr == node.addr => {
                self.step(format!(
                    "{CONNTRACK_MAP} has this flow: translated to {}:{} (established)",
                    Ipv4Addr::from(flow.nat_addr),
                    flow.nat_port
                ));
                (Ipv4Addr::from(flow.nat_addr), Some(flow.nat_port), Stat::SnatEstablished)
            }
            _ if new_flows && self.opened_towards_pod() => {
                let output = self.output(probe.ttl);
                return self.pass(
                    Stat::PassToStack,
                    format!(
                        "{CONNTRACK_MAP} remembers a flow opened from outside the pools towards this pod: its \
                         replies leave untranslated, to the stack"
                    ),
                    output,
                );
            }
            _ if new_flows => {
                if tracked.is_some() {
                    self.step(format!("{CONNTRACK_MAP} holds an expired or foreign entry for this flow: a new flow"));
                }
                let port = self.snat_port(node);
                (node_addr, port, Stat::SnatNew)
            }
            _ => {
                let output = self.output(probe.ttl);
                return self.pass(Stat::PassToStack, "leaves untranslated: handed to the stack", output);
            }
        };
        let ttl = self.decrement_ttl()?;
        self.step(format!(
            "source {}:{} -> {nat_addr}:{}",
            probe.src,
            key.src_port,
            nat_port.map(|p| p.to_string()).unwrap_or_else(|| "(a free port)".into())
        ));
        let output = Headers { src: nat_addr, sport: nat_port, ..self.output(ttl) };
        Ok(Decision {
            action: Action::Redirect,
            stat,
            target: Some(format!("out of the uplink (ifindex {}), next hop by FIB", node.uplink_ifindex)),
            output,
        })
    }

    /// `conntrack::opened_towards_pod`: a live entry of a flow someone outside the pools opened to
    /// the pod, keyed as the pod's reply travels. (The probe is always a packet that can open a
    /// flow: a TCP SYN, a UDP datagram or an echo request, as `nat::opens_flow` requires.)
    fn opened_towards_pod(&self) -> bool {
        let key = self.probe.flow_key(FLOW_TO_POD);
        self.state.conntrack.get(&key).is_some_and(|flow| !self.expired(flow))
    }

    /// `conntrack::create`: the pod's own port when no live flow holds it towards this peer;
    /// else a port of the range, which cannot be predicted (`None`).
    fn snat_port(&mut self, node: &NodeConfig) -> Option<u16> {
        let key = self.probe.flow_key(FLOW_OUTBOUND);
        let wanted = NatFlow {
            pod_addr: key.src,
            peer_addr: key.dst,
            nat_addr: node.addr,
            pod_port: key.src_port,
            peer_port: key.dst_port,
            nat_port: key.src_port,
            protocol: key.protocol,
            ..NatFlow::default()
        };
        let holder = self.state.conntrack.get(&wanted.inbound_key()).copied();
        let live = holder
            .is_some_and(|h| self.state.conntrack.get(&h.outbound_key()).is_some_and(|owner| !self.expired(owner)));
        if live {
            self.step(format!(
                "a new flow: port {} towards {} is held by another flow, so SNAT picks a free port of {}-{}",
                key.src_port, self.probe.dst, node.nat_port_min, node.nat_port_max
            ));
            None
        } else {
            self.step(format!(
                "a new flow: SNAT keeps the pod's port {} (free towards this peer, unless a socket of the node \
                 holds it)",
                key.src_port
            ));
            Some(key.src_port)
        }
    }

    // -- from_uplink --------------------------------------------------------------------------

    fn trace_from_uplink(&mut self, tunnel: Option<Tunnel>, outer_src: Option<Ipv4Addr>) -> Outcome {
        let probe = self.probe;
        if probe.proto == Proto::Arp {
            let output = self.output(probe.ttl);
            return self.pass(Stat::PassToStack, "ARP on the uplink is the kernel's", output);
        }
        let Some(node) = self.state.node.filter(|n| n.addr != [0; 4]) else {
            let output = self.input_headers(tunnel, outer_src);
            return self.pass(
                Stat::PassToStack,
                format!("{NODE_MAP} is empty: the host's traffic is left alone"),
                output,
            );
        };
        let node_addr = Ipv4Addr::from(node.addr);
        let outer_dst = if tunnel.is_some() { node_addr } else { probe.dst };
        if outer_dst != node_addr {
            let output = self.input_headers(tunnel, outer_src);
            return self.pass(
                Stat::PassToStack,
                format!("not addressed to this node ({node_addr}): the kernel routes it"),
                output,
            );
        }
        // The options of a plain packet are in the header the program checks first.
        if tunnel.is_none() && probe.options {
            let output = self.input_headers(tunnel, outer_src);
            return self.pass(Stat::PassToStack, "IP options: the kernel judges it", output);
        }
        if probe.fragment == Fragment::Later {
            let output = self.input_headers(tunnel, outer_src);
            return self.pass(
                Stat::PassToStack,
                "a later fragment: no transport header to recognise a tunnel or a flow by; the kernel reassembles",
                output,
            );
        }
        match (tunnel, outer_src) {
            (Some(Tunnel::Vxlan), Some(from)) => {
                self.step(format!("VXLAN from {from} to udp/{} of this node", node.vxlan_port));
                self.refuse_tunnel_fragment("VXLAN")?;
                self.check_peer(from, peer_flags::VXLAN, "VXLAN")?;
                self.step(format!("VNI {} matches", node.vni));
                self.deliver(Stat::DecapVxlan)
            }
            (Some(Tunnel::Ipip), Some(from)) => {
                self.step(format!("IPIP from {from} to this node"));
                self.refuse_tunnel_fragment("IPIP")?;
                self.check_peer(from, peer_flags::IPIP, "IPIP")?;
                self.deliver(Stat::DecapIpip)
            }
            _ if probe.proto == Proto::Udp && probe.dport == node.vxlan_port => {
                // A plain UDP datagram to the VXLAN port is parsed as VXLAN: its (zero) payload
                // has no VNI flag.
                self.step(format!("UDP to the VXLAN port {} is taken for VXLAN", node.vxlan_port));
                self.refuse_tunnel_fragment("VXLAN")?;
                self.check_peer(probe.src, peer_flags::VXLAN, "VXLAN")?;
                Err(self.drop_because(Stat::DropWrongVni, "no VXLAN header with the VNI flag and this cluster's VNI"))
            }
            _ => self.nat_inbound(),
        }
    }

    fn input_headers(&self, tunnel: Option<Tunnel>, outer_src: Option<Ipv4Addr>) -> Headers {
        let node = self.state.node.unwrap_or_default();
        let tunnel = match (tunnel, outer_src) {
            (Some(kind), Some(src)) => Some(outer_headers(kind, src, &node, &self.state.routes, self.probe.src)),
            _ => None,
        };
        self.probe.headers(tunnel)
    }

    /// `uplink::from_vxlan`/`from_ipip`: the first fragment of a tunnel packet is dropped, since
    /// decapsulating half a packet would deliver garbage.
    fn refuse_tunnel_fragment(&mut self, kind: &str) -> Result<(), Stat> {
        if self.probe.fragment == Fragment::First {
            return Err(self.drop_because(
                Stat::DropTunnelFragment,
                format!("the first fragment of a {kind} packet: the fabric's MTU is too small for the tunnel"),
            ));
        }
        Ok(())
    }

    /// `tunnel::check_peer`.
    fn check_peer(&mut self, from: Ipv4Addr, flag: u32, kind: &str) -> Result<(), Stat> {
        match self.state.peers.get(&from.octets()) {
            Some(peer) if peer.flags & flag != 0 => {
                self.step(format!("{PEERS_MAP}[{from}] accepts {kind}"));
                Ok(())
            }
            _ => Err(self.drop_because(Stat::DropUnknownPeer, format!("{PEERS_MAP} has no {kind} peer {from}"))),
        }
    }

    /// `uplink::deliver`: decapsulate, then into the pod or to the stack.
    fn deliver(&mut self, stat: Stat) -> Outcome {
        let probe = self.probe;
        let route = self.route(probe.dst);
        if let Some(route) = route {
            if route.kind == route_kind::LOCAL_BLOCK {
                return Err(self.drop_because(
                    Stat::DropBlackhole,
                    "a block of this node, but no workload has this address (Calico's blackhole route)",
                ));
            }
            if route.kind == route_kind::LOCAL_WORKLOAD && !probe.options {
                self.step("decapsulated");
                self.note_towards_pod();
                let ttl = self.decrement_ttl()?;
                return Ok(self.deliver_to_workload(&route, stat, self.output(ttl)));
            }
        }
        let output = self.output(probe.ttl);
        let why = if probe.options {
            "decapsulated and handed to the kernel, which handles the inner packet's IP options"
        } else {
            "decapsulated and handed to the kernel, which routes the inner packet"
        };
        self.pass(stat, why, output)
    }

    /// `nat::inbound`: a reply to a translated flow goes back to its pod.
    fn nat_inbound(&mut self) -> Outcome {
        let probe = self.probe;
        let key = probe.flow_key(FLOW_INBOUND);
        let untouched = self.output(probe.ttl);
        let Some(reverse) = self.state.conntrack.get(&key).copied() else {
            return self.pass(
                Stat::PassToStack,
                format!("{CONNTRACK_MAP} has no translated flow for it: the node's own traffic, to the stack"),
                untouched,
            );
        };
        let live = self.state.conntrack.get(&reverse.outbound_key()).is_some_and(|flow| !self.expired(flow));
        if !live {
            return self.pass(
                Stat::PassToStack,
                format!("the flow in {CONNTRACK_MAP} has expired: to the stack"),
                untouched,
            );
        }
        let pod = Ipv4Addr::from(reverse.pod_addr);
        self.step(format!(
            "{CONNTRACK_MAP}: a reply to pod {pod}:{} translated as port {}",
            reverse.pod_port, reverse.nat_port
        ));
        let Some(route) = self.route(pod).filter(|r| r.kind == route_kind::LOCAL_WORKLOAD) else {
            return self.pass(Stat::PassToStack, "the pod is no local workload any more: to the stack", untouched);
        };
        let ttl = self.decrement_ttl()?;
        // The port (or, for an echo reply, the identifier) goes back to the pod's own.
        let output = Headers { dst: pod, dport: Some(reverse.pod_port), ..self.output(ttl) };
        self.step(format!("destination {} -> {pod}:{}", probe.dst, reverse.pod_port));
        Ok(self.deliver_to_workload(&route, Stat::ReverseNat, output))
    }

    // -- to_uplink ----------------------------------------------------------------------------

    fn trace_to_uplink(&mut self) -> Outcome {
        let probe = self.probe;
        let unchanged = self.output(probe.ttl);
        if probe.proto == Proto::Arp {
            return self.pass(Stat::EgressUnchanged, "not IPv4: leaves untouched", unchanged);
        }
        if probe.options {
            return self.pass(Stat::EgressUnchanged, "IP options: leaves untouched", unchanged);
        }
        let Some(route) = self.route(probe.dst) else {
            return self.pass(Stat::EgressUnchanged, "leaves untouched", unchanged);
        };
        if route.kind != route_kind::REMOTE_BLOCK {
            return self.pass(Stat::EgressUnchanged, "not a remote block: leaves untouched", unchanged);
        }
        let Some(node) = self.state.node.filter(|n| n.addr != [0; 4]) else {
            return self.pass(Stat::EgressUnchanged, format!("{NODE_MAP} is empty: leaves untouched"), unchanged);
        };
        if route.flags & route_flags::ENCAP_VXLAN != 0 {
            self.step(format!("VXLAN encapsulation towards {}", Ipv4Addr::from(route.node_addr)));
            let output = Headers { tunnel: Some(vxlan_headers(&node, &route)), ..unchanged };
            self.pass(Stat::EncapVxlan, "leaves by the uplink", output)
        } else if route.flags & route_flags::ENCAP_IPIP != 0 {
            self.step(format!("IPIP encapsulation towards {}", Ipv4Addr::from(route.node_addr)));
            let tunnel = TunnelHeaders {
                kind: Tunnel::Ipip,
                src: Ipv4Addr::from(node.addr),
                dst: Ipv4Addr::from(route.node_addr),
                dport: None,
                vni: None,
                inner_src_mac: None,
                inner_dst_mac: None,
            };
            let output = Headers { tunnel: Some(tunnel), ..unchanged };
            self.pass(Stat::EncapIpip, "leaves by the uplink", output)
        } else {
            self.pass(Stat::EgressUnchanged, "no encapsulation towards this block: leaves untouched", unchanged)
        }
    }
}

impl Tracer<'_> {
    // -- to_workload --------------------------------------------------------------------------

    /// `uplink::to_workload`: the packet goes on untouched; a flow opened from outside the pools
    /// is remembered so that the pod's replies leave untranslated.
    fn trace_into_pod(&mut self, ifindex: u32) -> Outcome {
        let probe = self.probe;
        let unchanged = self.output(probe.ttl);
        if probe.proto == Proto::Arp {
            return self.pass(Stat::EgressUnchanged, "not IPv4: goes into the pod untouched", unchanged);
        }
        match self.state.workloads.get(&ifindex) {
            Some(workload) => self.step(format!("into pod {} by ifindex {ifindex}", Ipv4Addr::from(workload.addr))),
            None => self.step(format!("ifindex {ifindex} is no registered workload interface")),
        }
        self.note_towards_pod();
        self.pass(Stat::EgressUnchanged, "goes into the pod untouched", unchanged)
    }

    /// `nat::note_towards_pod`: a packet from outside the pools (a whole packet or first fragment
    /// without options, TCP/UDP/ICMP echo) is remembered in the conntrack map, keyed as the pod's
    /// reply will travel.
    fn note_towards_pod(&mut self) {
        let probe = self.probe;
        let in_pool = lookup(&self.state.routes, probe.src).is_some_and(|(_, r)| r.flags & route_flags::IN_POOL != 0);
        if in_pool {
            self.step(format!("{} is in a pool: nothing to remember", probe.src));
            return;
        }
        if probe.fragment == Fragment::Later || probe.options {
            self.step("a later fragment or a packet with IP options: not remembered");
            return;
        }
        // The transport identity as the kernel reads it, turned around to the reply's.
        let seen = probe.flow_key(FLOW_TO_POD);
        let key = FlowKey { src: seen.dst, dst: seen.src, src_port: seen.dst_port, dst_port: seen.src_port, ..seen };
        self.step(format!(
            "{} is outside the pools: {CONNTRACK_MAP} remembers the flow ({}), so the pod's replies leave \
             untranslated",
            probe.src,
            describe_flow(&key)
        ));
        self.remembers = Some(key);
    }
}

/// The outer headers this node writes for a VXLAN route.
fn vxlan_headers(node: &NodeConfig, route: &Route) -> TunnelHeaders {
    TunnelHeaders {
        kind: Tunnel::Vxlan,
        src: Ipv4Addr::from(node.addr),
        dst: Ipv4Addr::from(route.node_addr),
        dport: Some(node.vxlan_port),
        vni: Some(node.vni),
        inner_src_mac: Some(MacAddr(node.vtep_mac).to_string()),
        inner_dst_mac: Some(MacAddr(route.mac).to_string()),
    }
}

/// The outer headers a peer at `from` writes when it sends this node a packet from `inner_src`:
/// VXLAN from the peer's VTEP (the MAC of the route to `inner_src`) to this node's VTEP.
fn outer_headers(
    kind: Tunnel,
    from: Ipv4Addr,
    node: &NodeConfig,
    routes: &BTreeMap<RouteKey, Route>,
    inner_src: Ipv4Addr,
) -> TunnelHeaders {
    match kind {
        Tunnel::Vxlan => {
            let peer_mac = lookup(routes, inner_src).map(|(_, r)| r.mac).unwrap_or_default();
            TunnelHeaders {
                kind,
                src: from,
                dst: Ipv4Addr::from(node.addr),
                dport: Some(node.vxlan_port),
                vni: Some(node.vni),
                inner_src_mac: Some(MacAddr(peer_mac).to_string()),
                inner_dst_mac: Some(MacAddr(node.vtep_mac).to_string()),
            }
        }
        Tunnel::Ipip => TunnelHeaders {
            kind,
            src: from,
            dst: Ipv4Addr::from(node.addr),
            dport: None,
            vni: None,
            inner_src_mac: None,
            inner_dst_mac: None,
        },
    }
}

/// How a packet from `src` arrives on the uplink: encapsulated by the node that owns `src`'s
/// block when the route to that block tunnels (the peer's pool mode is the same), else plain.
pub fn infer_tunnel(routes: &BTreeMap<RouteKey, Route>, src: Ipv4Addr) -> (Option<Tunnel>, Option<Ipv4Addr>) {
    match lookup(routes, src) {
        Some((_, route)) if route.kind == route_kind::REMOTE_BLOCK => {
            let from = Some(Ipv4Addr::from(route.node_addr));
            if route.flags & route_flags::ENCAP_VXLAN != 0 {
                (Some(Tunnel::Vxlan), from)
            } else if route.flags & route_flags::ENCAP_IPIP != 0 {
                (Some(Tunnel::Ipip), from)
            } else {
                (None, None)
            }
        }
        _ => (None, None),
    }
}

/// The program that sees a packet entering at `entry`.
pub fn program_of(entry: &Entry) -> &'static str {
    match entry {
        Entry::Workload { .. } => PROG_FROM_WORKLOAD,
        Entry::Uplink { .. } => PROG_FROM_UPLINK,
        Entry::Host => PROG_TO_UPLINK,
        Entry::IntoPod { .. } => PROG_TO_WORKLOAD,
    }
}

/// What the program will do with `probe` entering at `entry`, given the live `state`: the same
/// decisions, in the same order, as the kernel programs.
pub fn predict(probe: &Probe, entry: &Entry, state: &State) -> Prediction {
    let mut tracer = Tracer { state, probe: *probe, steps: Vec::new(), remembers: None };
    let outcome = match *entry {
        Entry::Workload { ifindex } => tracer.trace_from_workload(ifindex),
        Entry::Uplink { tunnel, outer_src } => tracer.trace_from_uplink(tunnel, outer_src),
        Entry::Host => tracer.trace_to_uplink(),
        Entry::IntoPod { ifindex } => tracer.trace_into_pod(ifindex),
    };
    let program = program_of(entry);
    let remembers = tracer.remembers;
    match outcome {
        Ok(decision) => Prediction {
            program,
            steps: tracer.steps,
            action: decision.action,
            stat: decision.stat,
            target: decision.target,
            // An ARP frame has no IPv4 headers to predict.
            output: (probe.proto != Proto::Arp).then_some(decision.output),
            remembers,
        },
        Err(stat) => Prediction {
            program,
            steps: tracer.steps,
            action: Action::Drop,
            stat,
            target: None,
            output: None,
            remembers,
        },
    }
}

/// The workload interface a packet from `src` leaves by: the one whose pod has `src`; else (a
/// spoofed source) the first registered one, with `true` to say it was a stand-in.
pub fn choose_workload(state: &State, src: Ipv4Addr) -> Option<(u32, bool)> {
    if let Some((index, _)) = state.workloads.iter().find(|(_, w)| w.addr == src.octets()) {
        return Some((*index, false));
    }
    state.workloads.keys().next().map(|index| (*index, true))
}

// ---------------------------------------------------------------------------------------------
// Packets.

/// The RFC 1071 checksum of `data` (an odd last byte padded with zero).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 =
        data.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The fields of an IPv4 header that vary between the packets built here.
#[derive(Clone, Copy)]
struct Ipv4Fields {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    ttl: u8,
    total_len: u16,
    /// Flags and fragment offset.
    frag_off: u16,
    /// With the options word (IHL 6).
    options: bool,
}

/// An IPv4 header with its checksum (20 bytes, or 24 with the options word).
fn ipv4_header(fields: Ipv4Fields) -> Vec<u8> {
    let mut header = vec![0u8; IPV4_HLEN];
    header[2..4].copy_from_slice(&fields.total_len.to_be_bytes());
    header[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    header[6..8].copy_from_slice(&fields.frag_off.to_be_bytes());
    header[8] = fields.ttl;
    header[9] = fields.protocol;
    header[12..16].copy_from_slice(&fields.src.octets());
    header[16..20].copy_from_slice(&fields.dst.octets());
    if fields.options {
        header.extend_from_slice(&IP_OPTIONS_WORD);
    }
    // Version 4, and the header length in 32-bit words.
    header[0] = 0x40 | (header.len() / 4) as u8;
    let check = checksum(&header);
    header[10..12].copy_from_slice(&check.to_be_bytes());
    header
}

/// An outer header as a node sends it: whole, no options, DF, TTL 64, unless `frag_off` says
/// it is a fragment.
fn outer_ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, total_len: u16, frag_off: u16) -> Vec<u8> {
    ipv4_header(Ipv4Fields { src, dst, protocol, ttl: DEFAULT_TTL, total_len, frag_off, options: false })
}

/// The probe as an IPv4 packet: header (with options, fragment bits), transport header with its
/// checksum, zero payload. (A later fragment carries the same bytes: the programs do not read
/// them.)
pub fn ipv4_packet(probe: &Probe) -> Vec<u8> {
    let header_len = IPV4_HLEN + probe.options_len();
    let total = usize::from(probe.size).max(header_len + probe.proto.header_len());
    let mut l4 = vec![0u8; total - header_len];
    let checksum_at = match probe.proto {
        Proto::Tcp => {
            l4[0..2].copy_from_slice(&probe.sport.to_be_bytes());
            l4[2..4].copy_from_slice(&probe.dport.to_be_bytes());
            l4[4..8].copy_from_slice(&1u32.to_be_bytes());
            l4[12] = 0x50;
            l4[13] = TCP_SYN;
            l4[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
            16
        }
        Proto::Udp => {
            l4[0..2].copy_from_slice(&probe.sport.to_be_bytes());
            l4[2..4].copy_from_slice(&probe.dport.to_be_bytes());
            l4[4..6].copy_from_slice(&((total - IPV4_HLEN) as u16).to_be_bytes());
            6
        }
        Proto::Icmp => {
            let kind = probe.icmp_type();
            let id = if kind == ICMP_ECHO_REQUEST { probe.sport } else { probe.dport };
            l4[0] = kind;
            l4[4..6].copy_from_slice(&id.to_be_bytes());
            l4[6..8].copy_from_slice(&1u16.to_be_bytes());
            2
        }
        // Built by `arp_request`.
        Proto::Arp => return Vec::new(),
    };
    let protocol = probe.proto.number();
    let mut summed = Vec::with_capacity(12 + l4.len());
    if protocol != IPPROTO_ICMP {
        summed.extend_from_slice(&probe.src.octets());
        summed.extend_from_slice(&probe.dst.octets());
        summed.extend_from_slice(&[0, protocol]);
        summed.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    }
    summed.extend_from_slice(&l4);
    let mut sum = checksum(&summed);
    if protocol == IPPROTO_UDP && sum == 0 {
        sum = 0xffff;
    }
    l4[checksum_at..checksum_at + 2].copy_from_slice(&sum.to_be_bytes());
    let mut packet = ipv4_header(Ipv4Fields {
        src: probe.src,
        dst: probe.dst,
        protocol,
        ttl: probe.ttl,
        total_len: total as u16,
        frag_off: probe.frag_off(),
        options: probe.options,
    });
    packet.extend_from_slice(&l4);
    packet
}

/// An ARP request from `mac`/`probe.src` asking for `probe.dst`, broadcast.
fn arp_request(probe: &Probe, mac: MacBytes) -> Vec<u8> {
    let mut frame = Vec::with_capacity(ETH_HLEN + ARP_LEN);
    frame.extend_from_slice(&[0xff; ETH_ALEN]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    frame.extend_from_slice(&ARPHRD_ETHER.to_be_bytes());
    frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
    frame.extend_from_slice(&[ETH_ALEN as u8, 4]);
    frame.extend_from_slice(&ARPOP_REQUEST.to_be_bytes());
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&probe.src.octets());
    frame.extend_from_slice(&[0; ETH_ALEN]);
    frame.extend_from_slice(&probe.dst.octets());
    frame
}

fn ethernet(dst: MacBytes, src: MacBytes) -> Vec<u8> {
    let mut frame = Vec::with_capacity(128);
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
    frame
}

fn parse_mac(text: Option<&String>) -> MacBytes {
    text.and_then(|t| t.parse::<MacAddr>().ok()).map(|m| m.0).unwrap_or_default()
}

/// The frame that enters the program: from a pod (to the gateway MAC, from the pod's MAC), from
/// the uplink (encapsulated as the peer would send it, or plain), or from the host.
pub fn build_packet(probe: &Probe, entry: &Entry, state: &State) -> Vec<u8> {
    let pod_mac = |ifindex: u32| state.workloads.get(&ifindex).map(|w| w.mac).unwrap_or([0x0a, 0x58, 0, 0, 0, 1]);
    if probe.proto == Proto::Arp {
        let mac = match *entry {
            Entry::Workload { ifindex } => pod_mac(ifindex),
            _ => UPLINK_PEER_MAC,
        };
        return arp_request(probe, mac);
    }
    // A tunnel packet is fragmented outside: the inner packet is whole.
    let tunneled = matches!(entry, Entry::Uplink { tunnel: Some(_), outer_src: Some(_) });
    let inner = if tunneled { ipv4_packet(&Probe { fragment: Fragment::None, ..*probe }) } else { ipv4_packet(probe) };
    match *entry {
        Entry::Workload { ifindex } => {
            let mut frame = ethernet(GATEWAY_MAC, pod_mac(ifindex));
            frame.extend_from_slice(&inner);
            frame
        }
        Entry::Uplink { tunnel: Some(kind), outer_src: Some(from) } => {
            let node = state.node.unwrap_or_default();
            let outer = outer_headers(kind, from, &node, &state.routes, probe.src);
            let mut frame = ethernet(UPLINK_OWN_MAC, UPLINK_PEER_MAC);
            match kind {
                Tunnel::Vxlan => {
                    let total = IPV4_HLEN + UDP_HLEN + VXLAN_HLEN + ETH_HLEN + inner.len();
                    frame.extend_from_slice(&outer_ipv4_header(
                        outer.src,
                        outer.dst,
                        IPPROTO_UDP,
                        total as u16,
                        probe.frag_off(),
                    ));
                    frame.extend_from_slice(&VXLAN_PROBE_SPORT.to_be_bytes());
                    frame.extend_from_slice(&node.vxlan_port.to_be_bytes());
                    frame.extend_from_slice(&((total - IPV4_HLEN) as u16).to_be_bytes());
                    frame.extend_from_slice(&[0, 0]);
                    let vni = node.vni.to_be_bytes();
                    frame.extend_from_slice(&[VXLAN_FLAG_VNI, 0, 0, 0, vni[1], vni[2], vni[3], 0]);
                    frame.extend_from_slice(&ethernet(
                        parse_mac(outer.inner_dst_mac.as_ref()),
                        parse_mac(outer.inner_src_mac.as_ref()),
                    ));
                }
                Tunnel::Ipip => {
                    let total = IPV4_HLEN + inner.len();
                    frame.extend_from_slice(&outer_ipv4_header(
                        outer.src,
                        outer.dst,
                        IPPROTO_IPIP,
                        total as u16,
                        probe.frag_off(),
                    ));
                }
            }
            frame.extend_from_slice(&inner);
            frame
        }
        Entry::Uplink { .. } | Entry::Host => {
            let mut frame = ethernet(UPLINK_OWN_MAC, UPLINK_PEER_MAC);
            frame.extend_from_slice(&inner);
            frame
        }
        Entry::IntoPod { ifindex } => {
            // The stack sends it from the gateway's MAC to the pod's.
            let mut frame = ethernet(pod_mac(ifindex), GATEWAY_MAC);
            frame.extend_from_slice(&inner);
            frame
        }
    }
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

fn addr_at(bytes: &[u8], at: usize) -> Option<Ipv4Addr> {
    let octets: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(octets))
}

fn mac_at(bytes: &[u8], at: usize) -> Option<String> {
    let octets: [u8; 6] = bytes.get(at..at + 6)?.try_into().ok()?;
    Some(MacAddr(octets).to_string())
}

/// The headers of an Ethernet frame: a VXLAN (to `vxlan_port`) or IPIP tunnel if there is one,
/// and the IPv4 packet inside. `None` for anything that is not IPv4.
pub fn parse_headers(frame: &[u8], vxlan_port: u16) -> Option<Headers> {
    if be16(frame, 12)? != ETH_P_IP {
        return None;
    }
    let mut ip = ETH_HLEN;
    let mut tunnel = None;
    if *frame.get(ip)? >> 4 != 4 {
        return None;
    }
    let protocol = *frame.get(ip + 9)?;
    let l4 = ip + usize::from(frame.get(ip)? & 0x0f) * 4;
    if protocol == IPPROTO_UDP && be16(frame, l4 + 2)? == vxlan_port {
        let vxlan = l4 + UDP_HLEN;
        let vni = u32::from_be_bytes([0, *frame.get(vxlan + 4)?, *frame.get(vxlan + 5)?, *frame.get(vxlan + 6)?]);
        let inner_eth = vxlan + VXLAN_HLEN;
        tunnel = Some(TunnelHeaders {
            kind: Tunnel::Vxlan,
            src: addr_at(frame, ip + 12)?,
            dst: addr_at(frame, ip + 16)?,
            dport: Some(vxlan_port),
            vni: Some(vni),
            inner_src_mac: mac_at(frame, inner_eth + 6),
            inner_dst_mac: mac_at(frame, inner_eth),
        });
        ip = inner_eth + ETH_HLEN;
    } else if protocol == IPPROTO_IPIP {
        tunnel = Some(TunnelHeaders {
            kind: Tunnel::Ipip,
            src: addr_at(frame, ip + 12)?,
            dst: addr_at(frame, ip + 16)?,
            dport: None,
            vni: None,
            inner_src_mac: None,
            inner_dst_mac: None,
        });
        ip = l4;
    }
    let protocol = *frame.get(ip + 9)?;
    let l4 = ip + usize::from(frame.get(ip)? & 0x0f) * 4;
    let (sport, dport) = match protocol {
        IPPROTO_TCP | IPPROTO_UDP => (be16(frame, l4), be16(frame, l4 + 2)),
        IPPROTO_ICMP => match *frame.get(l4)? {
            ICMP_ECHO_REQUEST => (be16(frame, l4 + 4), None),
            ICMP_ECHO_REPLY => (None, be16(frame, l4 + 4)),
            _ => (None, None),
        },
        _ => (None, None),
    };
    Some(Headers {
        tunnel,
        src: addr_at(frame, ip + 12)?,
        dst: addr_at(frame, ip + 16)?,
        protocol,
        ttl: *frame.get(ip + 8)?,
        sport,
        dport,
    })
}

/// Where the packet that left differs from the prediction (empty: it matches). Fields the
/// prediction leaves open (`None`) are not compared.
pub fn header_mismatches(expected: &Headers, got: &Headers) -> Vec<String> {
    let mut out = Vec::new();
    match (&expected.tunnel, &got.tunnel) {
        (None, None) => {}
        (Some(_), None) => out.push("expected a tunnel header, the packet has none".to_owned()),
        (None, Some(t)) => {
            out.push(format!("expected no tunnel, the packet is in {:?} from {} to {}", t.kind, t.src, t.dst))
        }
        (Some(want), Some(have)) => {
            if want.kind != have.kind || want.src != have.src || want.dst != have.dst {
                out.push(format!(
                    "tunnel {:?} {} -> {} expected, got {:?} {} -> {}",
                    want.kind, want.src, want.dst, have.kind, have.src, have.dst
                ));
            }
            if want.vni.is_some() && want.vni != have.vni {
                out.push(format!("VNI {:?} expected, got {:?}", want.vni, have.vni));
            }
            if want.inner_dst_mac.is_some() && want.inner_dst_mac != have.inner_dst_mac {
                out.push(format!("inner MAC {:?} expected, got {:?}", want.inner_dst_mac, have.inner_dst_mac));
            }
        }
    }
    if (expected.src, expected.dst, expected.protocol) != (got.src, got.dst, got.protocol) {
        out.push(format!(
            "{} -> {} (protocol {}) expected, got {} -> {} (protocol {})",
            expected.src, expected.dst, expected.protocol, got.src, got.dst, got.protocol
        ));
    }
    if expected.ttl != got.ttl {
        out.push(format!("TTL {} expected, got {}", expected.ttl, got.ttl));
    }
    if expected.sport.is_some() && expected.sport != got.sport {
        out.push(format!("source port {:?} expected, got {:?}", expected.sport, got.sport));
    }
    if expected.dport.is_some() && expected.dport != got.dport {
        out.push(format!("destination port {:?} expected, got {:?}", expected.dport, got.dport));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Running the packet through the kernel program.

/// What BPF_PROG_TEST_RUN made of the packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Injected {
    /// The program's return code.
    pub return_value: u32,
    /// The action it stands for.
    pub action: Option<Action>,
    /// Counters the run moved, by name.
    pub counters: BTreeMap<&'static str, u64>,
    /// The headers of the packet that came out, if it is IPv4.
    pub output: Option<Headers>,
    /// Where the run differs from the prediction (empty: it matched).
    pub mismatches: Vec<String>,
}

impl Injected {
    /// Whether the kernel did what was predicted.
    pub fn matched(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// Compares a test run with the prediction: the action, the one counter moved and, unless the
/// packet was dropped, the output headers.
pub fn compare(
    prediction: &Prediction,
    return_value: u32,
    counters: &BTreeMap<&'static str, u64>,
    output: Option<&Headers>,
) -> Vec<String> {
    let mut out = Vec::new();
    if return_value != prediction.action.code() {
        out.push(format!("verdict {} expected, the program returned {return_value}", prediction.action));
    }
    let moved: Vec<&str> = counters.iter().filter(|(_, n)| **n > 0).map(|(name, _)| *name).collect();
    if moved != [prediction.stat.name()] {
        out.push(format!("counter {} expected, the run moved {moved:?}", prediction.stat.name()));
    }
    if prediction.action != Action::Drop {
        match (&prediction.output, output) {
            (Some(want), Some(got)) => out.extend(header_mismatches(want, got)),
            (Some(_), None) => out.push("the output is not an IPv4 packet".to_owned()),
            (None, _) => {}
        }
    }
    out
}

/// The `struct __sk_buff` context that makes BPF_PROG_TEST_RUN run the packet on `ifindex`.
fn skb_context(ifindex: u32) -> [u8; SK_BUFF_SIZE] {
    let mut ctx = [0u8; SK_BUFF_SIZE];
    ctx[SK_BUFF_IFINDEX..SK_BUFF_IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// Runs `packet` through `program` as if it arrived on `ifindex`, with the live maps under
/// `pin_path` (routes, workloads, peers, node), a fresh stats map and a private copy of the
/// conntrack map; compares the result with `prediction`.
pub fn inject(
    pin_path: &Path,
    program: &str,
    ifindex: u32,
    packet: &[u8],
    prediction: &Prediction,
    vxlan_port: u16,
) -> anyhow::Result<Injected> {
    let object = crate::backend::bpf::object();
    if object.is_empty() {
        bail!("this binary was built with AYA_BUILD_SKIP=1 and holds no kernel programs: rebuild without it");
    }
    let live = [ROUTES_MAP, WORKLOADS_MAP, PEERS_MAP, NODE_MAP];
    for name in live {
        // map_pin_path would create and pin an empty map where none is: never do that here.
        let path = pin_path.join(name);
        if !path.exists() {
            bail!("{} does not exist: is an agent running with --pin-path {}?", path.display(), pin_path.display());
        }
    }
    let mut loader = crate::backend::bpf::loader(crate::backend::bpf::KernelLog::Off);
    for name in live {
        loader.map_pin_path(name, pin_path.join(name));
    }
    let mut ebpf = loader.load(object).context("loading the kernel programs with the pinned maps")?;

    // The flows the live table holds, so an established flow is recognised, in a map of our own.
    let flows = match check::read_conntrack_map(pin_path) {
        Ok(flows) => flows,
        Err(_) if !pin_path.join(CONNTRACK_MAP).exists() => BTreeMap::new(),
        Err(error) => return Err(error),
    };
    {
        let map = ebpf.map_mut(CONNTRACK_MAP).context("the object has no conntrack map")?;
        let mut conntrack: HashMap<_, FlowKey, NatFlow> =
            HashMap::try_from(map).context("the conntrack map has an unexpected layout")?;
        for (key, flow) in &flows {
            conntrack.insert(key, flow, 0).context("copying the live conntrack table")?;
        }
    }

    let prog: &mut SchedClassifier = ebpf
        .program_mut(program)
        .with_context(|| format!("program {program} missing from the object"))?
        .try_into()
        .with_context(|| format!("program {program} is not a TC classifier"))?;
    prog.load().with_context(|| format!("verifying program {program}"))?;
    let ctx = skb_context(ifindex);
    let mut out = vec![0u8; packet.len() + 256];
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..Default::default()
        })
        .with_context(|| format!("BPF_PROG_TEST_RUN of {program} on ifindex {ifindex}"))?;
    out.truncate(result.data_size_out as usize);

    let map = ebpf.map(STATS_MAP).context("the object has no stats map")?;
    let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(map).context("the stats map has an unexpected layout")?;
    let mut counters = BTreeMap::new();
    for stat in Stat::ALL {
        let total: u64 =
            stats.get(&stat.index(), 0).with_context(|| format!("reading counter {}", stat.name()))?.iter().sum();
        if total > 0 {
            counters.insert(stat.name(), total);
        }
    }
    let output = parse_headers(&out, vxlan_port);
    let mut mismatches = compare(prediction, result.return_value, &counters, output.as_ref());
    if let Some(key) = &prediction.remembers {
        let map = ebpf.map(CONNTRACK_MAP).context("the object has no conntrack map")?;
        let conntrack: HashMap<_, FlowKey, NatFlow> =
            HashMap::try_from(map).context("the conntrack map has an unexpected layout")?;
        if conntrack.get(key, 0).is_err() {
            mismatches.push(format!("the program did not remember the flow {}", describe_flow(key)));
        }
    }
    Ok(Injected {
        return_value: result.return_value,
        action: Action::from_code(result.return_value),
        counters,
        output,
        mismatches,
    })
}

// ---------------------------------------------------------------------------------------------
// The command.

/// Settings of `dataplane trace`.
#[derive(Clone, Debug)]
pub struct TraceOptions {
    /// The packet (ports and ICMP identifiers as given).
    pub probe: Probe,
    /// Where it enters.
    pub origin: Origin,
    /// `--from workload`: the interface it enters by (default: the pod with the source address).
    pub iface: Option<String>,
    /// `--from uplink`: the tunnel it arrives in (default: as the route to the source says).
    pub encap: Option<EncapChoice>,
    /// `--from uplink`: the outer source of a tunnel packet (default: the node owning the source).
    pub outer_src: Option<Ipv4Addr>,
    /// The agent's pin directory.
    pub pin_path: std::path::PathBuf,
    /// Also run the packet through the program.
    pub inject: bool,
}

/// `--encap` of a packet from the uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EncapChoice {
    /// VXLAN.
    Vxlan,
    /// IP-in-IP.
    Ipip,
    /// A plain packet.
    None,
}

/// Everything `dataplane trace` found.
#[derive(Clone, Debug, Serialize)]
pub struct TraceReport {
    /// The packet.
    pub probe: Probe,
    /// Where it enters, resolved.
    pub entry: Entry,
    /// The interface it enters by.
    pub interface: String,
    /// Notes on how the entry was chosen.
    pub notes: Vec<String>,
    /// What the maps say will happen.
    pub prediction: Prediction,
    /// What the program did, with `--inject`.
    pub inject: Option<Injected>,
    /// `--from uplink` with an XDP program on the uplink: what it decides first.
    pub xdp: Option<XdpTrace>,
}

/// The live state under `pin_path`; a missing node map is left empty (the programs then drop).
pub fn read_state(pin_path: &Path) -> anyhow::Result<State> {
    Ok(State {
        node: check::read_node_map(pin_path).ok(),
        routes: check::read_routes_map(pin_path)?,
        workloads: check::read_workloads_map(pin_path)?,
        peers: check::read_peers_map(pin_path)?,
        conntrack: check::read_conntrack_map(pin_path).unwrap_or_default(),
        now_ns: monotonic_ns(),
    })
}

fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(now.tv_nsec as u64)
}

/// Traces the packet on this node (run it in the node's network namespace).
pub fn run(options: &TraceOptions) -> anyhow::Result<TraceReport> {
    let state = read_state(&options.pin_path)?;
    let interfaces = crate::sys::interfaces()?;
    let name_of = |index: u32| {
        interfaces
            .iter()
            .find(|(_, i)| **i == index)
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| format!("ifindex {index}"))
    };
    let probe = with_origin(options.probe, options.origin);
    let mut notes = Vec::new();
    let uplink_ifindex = state.node.map(|n| n.uplink_ifindex).unwrap_or(0);
    let (entry, ifindex) = match options.origin {
        Origin::Workload => {
            let ifindex = match &options.iface {
                Some(name) => *interfaces
                    .get(name)
                    .with_context(|| format!("--iface {name}: no such interface in this network namespace"))?,
                None => match choose_workload(&state, probe.src) {
                    Some((index, false)) => index,
                    Some((index, true)) => {
                        notes.push(format!(
                            "{} is no pod of this node: traced as sent from {} (choose another with --iface)",
                            probe.src,
                            name_of(index)
                        ));
                        index
                    }
                    None => bail!("{WORKLOADS_MAP} is empty: no workload interface to send from; pass --iface"),
                },
            };
            (Entry::Workload { ifindex }, ifindex)
        }
        Origin::Uplink => {
            let (mut tunnel, mut outer_src) = infer_tunnel(&state.routes, probe.src);
            match options.encap {
                Some(EncapChoice::None) => (tunnel, outer_src) = (None, None),
                Some(EncapChoice::Vxlan) => tunnel = Some(Tunnel::Vxlan),
                Some(EncapChoice::Ipip) => tunnel = Some(Tunnel::Ipip),
                None => {}
            }
            if options.outer_src.is_some() {
                outer_src = options.outer_src;
            }
            if tunnel.is_some() && outer_src.is_none() {
                bail!("{} is in no remote block: pass --outer-src, the node that sends the tunnel packet", probe.src);
            }
            if let (Some(kind), Some(from)) = (tunnel, outer_src) {
                notes.push(format!(
                    "arrives encapsulated in {kind:?} from {from}, as the node owning {} sends it",
                    probe.src
                ));
            }
            (Entry::Uplink { tunnel, outer_src }, uplink_ifindex)
        }
        Origin::Host => (Entry::Host, uplink_ifindex),
        Origin::IntoPod => {
            let ifindex = match &options.iface {
                Some(name) => *interfaces
                    .get(name)
                    .with_context(|| format!("--iface {name}: no such interface in this network namespace"))?,
                None => state
                    .workloads
                    .iter()
                    .find(|(_, w)| w.addr == probe.dst.octets())
                    .map(|(index, _)| *index)
                    .with_context(|| format!("{} is no pod of this node: pass --iface", probe.dst))?,
            };
            (Entry::IntoPod { ifindex }, ifindex)
        }
    };
    let prediction = predict(&probe, &entry, &state);
    let mut inject = if options.inject {
        if ifindex == 0 {
            bail!("{NODE_MAP} names no uplink: the packet has no interface to arrive on");
        }
        let packet = build_packet(&probe, &entry, &state);
        let vxlan_port = state.node.map(|n| n.vxlan_port).unwrap_or(dataplane_common::net::CALICO_VXLAN_PORT);
        Some(inject(&options.pin_path, prediction.program, ifindex, &packet, &prediction, vxlan_port)?)
    } else {
        None
    };
    let mut xdp = None;
    if matches!(entry, Entry::Uplink { .. }) && ifindex != 0 {
        match crate::backend::xdp::observe(ifindex) {
            Ok(Some((mode, _))) => {
                let (drops, stat) = xdp_decision(&prediction);
                let mut trace = XdpTrace { mode, drops, stat, inject: None };
                if options.inject {
                    let packet = build_packet(&probe, &entry, &state);
                    let (code, counters) = inject_xdp(&options.pin_path, &packet)?;
                    let expected = if drops { XDP_DROP } else { XDP_PASS };
                    let moved: Vec<&str> = counters.keys().copied().collect();
                    if let Some(injected) = inject.as_mut() {
                        if code != expected {
                            injected
                                .mismatches
                                .push(format!("{PROG_XDP_UPLINK}: code {expected} expected, it returned {code}"));
                        }
                        if moved != [stat.name()] {
                            injected.mismatches.push(format!(
                                "{PROG_XDP_UPLINK}: counter {} expected, the run moved {moved:?}",
                                stat.name()
                            ));
                        }
                    }
                    trace.inject = Some((code, counters));
                }
                xdp = Some(trace);
            }
            Ok(None) => notes.push(format!("no XDP program on the uplink: {} decides alone", prediction.program)),
            Err(error) => notes.push(format!("the uplink's XDP state cannot be read ({error:#})")),
        }
    }
    Ok(TraceReport { probe, entry, interface: name_of(ifindex), notes, prediction, inject, xdp })
}

/// What the uplink's XDP program decides before `from_uplink` sees the packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct XdpTrace {
    /// How it runs on the uplink.
    #[serde(serialize_with = "serialize_display")]
    pub mode: XdpMode,
    /// Whether it drops the packet (else it passes it on unchanged).
    pub drops: bool,
    /// The counter it moves: the drop reason, or `xdp_passed`.
    #[serde(serialize_with = "serialize_stat")]
    pub stat: Stat,
    /// With `--inject`: the XDP program's return code and the counters its run moved.
    pub inject: Option<(u32, BTreeMap<&'static str, u64>)>,
}

fn serialize_display<S: serde::Serializer, T: fmt::Display>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&value.to_string())
}

/// XDP's return codes (`enum xdp_action`).
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// `xdp_uplink`: it refuses what `tunnel::classify` refuses, which `from_uplink` drops with the
/// same reason (a tunnel fragment, a non-peer, a wrong VNI; malformed headers, which a trace's
/// packets never have), and passes everything else on. Returns whether it drops, and its counter.
pub fn xdp_decision(prediction: &Prediction) -> (bool, Stat) {
    match prediction.stat {
        stat @ (Stat::DropTunnelFragment | Stat::DropUnknownPeer | Stat::DropWrongVni) => (true, stat),
        _ => (false, Stat::XdpPassed),
    }
}

/// Runs `packet` through `xdp_uplink` with the live routes, peers and node maps and a fresh
/// stats map; returns its return code and the counters it moved.
pub fn inject_xdp(pin_path: &Path, packet: &[u8]) -> anyhow::Result<(u32, BTreeMap<&'static str, u64>)> {
    let mut loader = crate::backend::bpf::loader(crate::backend::bpf::KernelLog::Off);
    for name in [ROUTES_MAP, PEERS_MAP, NODE_MAP] {
        loader.map_pin_path(name, pin_path.join(name));
    }
    let mut ebpf =
        loader.load(crate::backend::bpf::object()).context("loading the kernel programs with the pinned maps")?;
    let prog: &mut Xdp = ebpf
        .program_mut(PROG_XDP_UPLINK)
        .with_context(|| format!("program {PROG_XDP_UPLINK} missing from the object"))?
        .try_into()
        .with_context(|| format!("program {PROG_XDP_UPLINK} is not an XDP program"))?;
    prog.load().with_context(|| format!("verifying program {PROG_XDP_UPLINK}"))?;
    let result = prog
        .test_run(TestRunOptions { data_in: Some(packet), ..Default::default() })
        .with_context(|| format!("BPF_PROG_TEST_RUN of {PROG_XDP_UPLINK}"))?;
    let map = ebpf.map(STATS_MAP).context("the object has no stats map")?;
    let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(map).context("the stats map has an unexpected layout")?;
    let mut counters = BTreeMap::new();
    for stat in Stat::ALL {
        let total: u64 =
            stats.get(&stat.index(), 0).with_context(|| format!("reading counter {}", stat.name()))?.iter().sum();
        if total > 0 {
            counters.insert(stat.name(), total);
        }
    }
    Ok((result.return_value, counters))
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{backend::entries, datastore::file, plan};

    const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
    const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
    const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
    const EXTERNAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
    const NODE_1: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 11);
    const NODE_2: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 12);

    /// node-1 of the example as the agent programs it: web-1 on ifindex 5, cache-1 on 6, uplink 2.
    fn state() -> State {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/two-nodes.yaml");
        let (model, _) = file::load(&path).expect("example loads");
        let (plan, _) = plan::compute(&model, "node-1").expect("plan");
        let ifindex = |name: &str| match name {
            "cali0761ccbeace" => Some(5),
            "cali188d81a77fc" => Some(6),
            _ => None,
        };
        let (e, _) = entries::from_plan(
            &plan,
            entries::Uplink { ifindex: 2, mtu: 1500, nat_ports: (20000, 29999) },
            ifindex,
            &Default::default(),
        );
        State {
            node: Some(e.node),
            routes: e.routes,
            workloads: e.workloads,
            peers: e.peers,
            conntrack: BTreeMap::new(),
            now_ns: 1_000_000_000_000,
        }
    }

    fn probe(src: Ipv4Addr, dst: Ipv4Addr, proto: Proto, origin: Origin) -> Probe {
        with_origin(
            Probe {
                src,
                dst,
                proto,
                sport: 33333,
                dport: 80,
                ttl: 64,
                size: 0,
                fragment: Fragment::None,
                options: false,
            },
            origin,
        )
    }

    fn from_pod(src: Ipv4Addr, dst: Ipv4Addr, proto: Proto) -> Prediction {
        let state = state();
        let (ifindex, _) = choose_workload(&state, src).expect("a workload");
        predict(&probe(src, dst, proto, Origin::Workload), &Entry::Workload { ifindex }, &state)
    }

    #[test]
    fn pod_to_remote_pod_is_vxlan_to_the_owning_node() {
        let p = from_pod(POD_A, REMOTE, Proto::Tcp);
        assert_eq!((p.program, p.action, p.stat), (PROG_FROM_WORKLOAD, Action::Redirect, Stat::EncapVxlan));
        let out = p.output.expect("output");
        let tunnel = out.tunnel.clone().expect("tunnel");
        assert_eq!(
            (tunnel.kind, tunnel.src, tunnel.dst, tunnel.vni, tunnel.dport),
            (Tunnel::Vxlan, NODE_1, NODE_2, Some(4096), Some(4789))
        );
        assert_eq!(tunnel.inner_dst_mac.as_deref(), Some("66:d0:00:00:00:02"));
        assert_eq!((out.src, out.dst, out.ttl, out.sport, out.dport), (POD_A, REMOTE, 63, Some(33333), Some(80)));
        let shown = out.to_string();
        assert!(shown.starts_with("VXLAN 10.100.0.11 -> 10.100.0.12 udp/4789 vni 4096"), "{shown}");
    }

    #[test]
    fn pod_to_local_pod_is_delivered() {
        let p = from_pod(POD_A, POD_B, Proto::Udp);
        assert_eq!((p.action, p.stat), (Action::Redirect, Stat::DeliveredLocal));
        assert!(p.target.expect("target").contains("ifindex 6"));
    }

    #[test]
    fn spoofed_source_and_unknown_interface_are_dropped() {
        let state = state();
        let spoofed = probe(Ipv4Addr::new(10, 244, 1, 99), REMOTE, Proto::Tcp, Origin::Workload);
        assert_eq!(choose_workload(&state, spoofed.src), Some((5, true)));
        let p = predict(&spoofed, &Entry::Workload { ifindex: 5 }, &state);
        assert_eq!((p.action, p.stat, p.output), (Action::Drop, Stat::DropSpoofedSource, None));
        let p = predict(&probe(POD_A, REMOTE, Proto::Tcp, Origin::Workload), &Entry::Workload { ifindex: 77 }, &state);
        assert_eq!(p.stat, Stat::DropUnknownWorkload);
    }

    #[test]
    fn blackhole_ttl_and_mtu() {
        let p = from_pod(POD_A, Ipv4Addr::new(10, 244, 1, 50), Proto::Tcp);
        assert_eq!((p.action, p.stat), (Action::Drop, Stat::DropBlackhole));
        let state = state();
        let mut short = probe(POD_A, REMOTE, Proto::Tcp, Origin::Workload);
        short.ttl = 1;
        assert_eq!(predict(&short, &Entry::Workload { ifindex: 5 }, &state).stat, Stat::DropTtlExceeded);
        let mut big = probe(POD_A, REMOTE, Proto::Tcp, Origin::Workload);
        big.size = 1500;
        let p = predict(&big, &Entry::Workload { ifindex: 5 }, &state);
        assert_eq!((p.action, p.stat), (Action::Redirect, Stat::IcmpFragNeeded));
        assert_eq!(p.output.expect("icmp").src, Ipv4Addr::new(169, 254, 1, 1));
        big.size = 1450;
        assert_eq!(predict(&big, &Entry::Workload { ifindex: 5 }, &state).stat, Stat::EncapVxlan);
    }

    #[test]
    fn external_destination_from_a_nat_outgoing_pool_is_snat_to_the_node() {
        let p = from_pod(POD_A, EXTERNAL, Proto::Tcp);
        assert_eq!((p.action, p.stat), (Action::Redirect, Stat::SnatNew));
        let out = p.output.expect("output");
        assert_eq!((out.src, out.sport, out.dst, out.tunnel), (NODE_1, Some(33333), EXTERNAL, None));
        // The workload entry's flag is shown where the trace reads the entry.
        assert!(p.steps.iter().any(|s| s.starts_with(WORKLOADS_MAP) && s.contains(" natOutgoing:")), "{:?}", p.steps);
        // To the node itself: no translation.
        let p = from_pod(POD_A, NODE_1, Proto::Tcp);
        assert_eq!((p.action, p.stat), (Action::Pass, Stat::PassToStack));
    }

    fn tracked(pod_port: u16, nat_port: u16, last_seen_ns: u64) -> NatFlow {
        NatFlow {
            created_ns: last_seen_ns,
            last_seen_ns,
            pod_addr: POD_A.octets(),
            peer_addr: EXTERNAL.octets(),
            nat_addr: NODE_1.octets(),
            pod_port,
            peer_port: 80,
            nat_port,
            protocol: IPPROTO_TCP,
            state: dataplane_common::flow_state::ESTABLISHED,
            _pad: [0; 4],
        }
    }

    #[test]
    fn a_tracked_flow_is_established_and_a_taken_port_is_not_predicted() {
        let mut state = state();
        let flow = tracked(33333, 20001, state.now_ns);
        state.conntrack.insert(flow.outbound_key(), flow);
        state.conntrack.insert(flow.inbound_key(), flow);
        let p = predict(&probe(POD_A, EXTERNAL, Proto::Tcp, Origin::Workload), &Entry::Workload { ifindex: 5 }, &state);
        assert_eq!(p.stat, Stat::SnatEstablished);
        assert_eq!(p.output.expect("output").sport, Some(20001));

        // Another pod's live flow holds port 33333 towards the same peer: a port from the range.
        let mut state = self::state();
        let other =
            NatFlow { pod_addr: POD_B.octets(), pod_port: 44444, nat_port: 33333, ..tracked(0, 0, state.now_ns) };
        state.conntrack.insert(other.outbound_key(), other);
        state.conntrack.insert(other.inbound_key(), other);
        let p = predict(&probe(POD_A, EXTERNAL, Proto::Tcp, Origin::Workload), &Entry::Workload { ifindex: 5 }, &state);
        assert_eq!((p.stat, p.output.expect("output").sport), (Stat::SnatNew, None));
    }

    #[test]
    fn a_reply_to_a_flow_opened_from_outside_is_not_translated() {
        let mut state = state();
        // The external host opened a flow to the pod's port 33333 from its port 80.
        let key = FlowKey {
            src: POD_A.octets(),
            dst: EXTERNAL.octets(),
            src_port: 33333,
            dst_port: 80,
            protocol: IPPROTO_TCP,
            direction: FLOW_TO_POD,
            _pad: [0; 2],
        };
        let flow = NatFlow { nat_addr: POD_A.octets(), ..tracked(33333, 33333, state.now_ns) };
        state.conntrack.insert(key, flow);
        let p = predict(&probe(POD_A, EXTERNAL, Proto::Tcp, Origin::Workload), &Entry::Workload { ifindex: 5 }, &state);
        assert_eq!((p.action, p.stat), (Action::Pass, Stat::PassToStack));
        assert_eq!(p.output.expect("output").src, POD_A);
        // Once it has expired, the pod's packet opens a translated flow again.
        state.now_ns += 4000 * 1_000_000_000;
        let p = predict(&probe(POD_A, EXTERNAL, Proto::Tcp, Origin::Workload), &Entry::Workload { ifindex: 5 }, &state);
        assert_eq!(p.stat, Stat::SnatNew);
    }

    #[test]
    fn flows_expire_under_the_nodes_timeouts() {
        let mut state = state();
        let flow = tracked(33333, 20001, state.now_ns - 20 * 1_000_000_000);
        state.conntrack.insert(flow.outbound_key(), flow);
        state.conntrack.insert(flow.inbound_key(), flow);
        let outbound = probe(POD_A, EXTERNAL, Proto::Tcp, Origin::Workload);
        // Idle 20 s: alive under the default established timeout (3600 s)...
        assert_eq!(predict(&outbound, &Entry::Workload { ifindex: 5 }, &state).stat, Stat::SnatEstablished);
        // ...expired when the agent runs with tcp-established=10.
        if let Some(node) = &mut state.node {
            node.timeouts.tcp_established_s = 10;
        }
        assert_eq!(predict(&outbound, &Entry::Workload { ifindex: 5 }, &state).stat, Stat::SnatNew);
    }

    #[test]
    fn replies_from_the_uplink_are_reverse_translated() {
        let mut state = state();
        let flow = tracked(33333, 20001, state.now_ns);
        state.conntrack.insert(flow.outbound_key(), flow);
        state.conntrack.insert(flow.inbound_key(), flow);
        let reply = with_origin(
            Probe {
                src: EXTERNAL,
                dst: NODE_1,
                proto: Proto::Tcp,
                sport: 80,
                dport: 20001,
                ttl: 64,
                size: 0,
                fragment: Fragment::None,
                options: false,
            },
            Origin::Uplink,
        );
        let entry = Entry::Uplink { tunnel: None, outer_src: None };
        let p = predict(&reply, &entry, &state);
        assert_eq!((p.program, p.action, p.stat), (PROG_FROM_UPLINK, Action::Redirect, Stat::ReverseNat));
        let out = p.output.expect("output");
        assert_eq!((out.dst, out.dport), (POD_A, Some(33333)));
        // Expired: to the stack.
        state.now_ns += 4000 * 1_000_000_000;
        assert_eq!(predict(&reply, &entry, &state).stat, Stat::PassToStack);
    }

    #[test]
    fn tunnel_packets_from_peers_are_decapsulated_and_strangers_dropped() {
        let state = state();
        let inbound = probe(REMOTE, POD_A, Proto::Tcp, Origin::Uplink);
        let (tunnel, from) = infer_tunnel(&state.routes, REMOTE);
        assert_eq!((tunnel, from), (Some(Tunnel::Vxlan), Some(NODE_2)));
        let p = predict(&inbound, &Entry::Uplink { tunnel, outer_src: from }, &state);
        assert_eq!((p.action, p.stat), (Action::Redirect, Stat::DecapVxlan));
        assert_eq!(p.output.expect("output").tunnel, None);
        let stranger = Entry::Uplink { tunnel, outer_src: Some(Ipv4Addr::new(10, 100, 0, 99)) };
        assert_eq!(predict(&inbound, &stranger, &state).stat, Stat::DropUnknownPeer);
        // A node of the cluster may send either tunnel (a pool's mode may be changing).
        let ipip = Entry::Uplink { tunnel: Some(Tunnel::Ipip), outer_src: from };
        assert_eq!(predict(&inbound, &ipip, &state).stat, Stat::DecapIpip);
        // To a free address of this node's block: blackhole after the peer check.
        let hole = probe(REMOTE, Ipv4Addr::new(10, 244, 1, 50), Proto::Tcp, Origin::Uplink);
        assert_eq!(predict(&hole, &Entry::Uplink { tunnel, outer_src: from }, &state).stat, Stat::DropBlackhole);
        // Plain traffic not for this node is the kernel's.
        let transit = probe(EXTERNAL, Ipv4Addr::new(10, 100, 0, 50), Proto::Udp, Origin::Uplink);
        assert_eq!(predict(&transit, &Entry::Uplink { tunnel: None, outer_src: None }, &state).stat, Stat::PassToStack);
    }

    #[test]
    fn host_traffic_to_remote_pods_is_encapsulated_on_egress() {
        let state = state();
        let p = predict(&probe(NODE_1, REMOTE, Proto::Icmp, Origin::Host), &Entry::Host, &state);
        assert_eq!((p.program, p.action, p.stat), (PROG_TO_UPLINK, Action::Pass, Stat::EncapVxlan));
        let p = predict(&probe(NODE_1, EXTERNAL, Proto::Icmp, Origin::Host), &Entry::Host, &state);
        assert_eq!(p.stat, Stat::EgressUnchanged);
    }

    #[test]
    fn without_a_node_config_pods_traffic_is_dropped() {
        let mut state = state();
        state.node = None;
        let p = predict(&probe(POD_A, REMOTE, Proto::Tcp, Origin::Workload), &Entry::Workload { ifindex: 5 }, &state);
        assert_eq!(p.stat, Stat::DropNoNodeConfig);
    }

    #[test]
    fn icmp_probes_carry_their_identifier_where_conntrack_reads_it() {
        let request = probe(POD_A, EXTERNAL, Proto::Icmp, Origin::Workload);
        assert_eq!((request.sport, request.dport, request.icmp_type()), (33333, 0, ICMP_ECHO_REQUEST));
        let reply = probe(EXTERNAL, NODE_1, Proto::Icmp, Origin::Uplink);
        assert_eq!((reply.sport, reply.dport, reply.icmp_type()), (0, 80, ICMP_ECHO_REPLY));
        let key = request.flow_key(FLOW_OUTBOUND);
        assert_eq!((key.src_port, key.dst_port), (33333, 0));
    }

    #[test]
    fn packets_round_trip_through_the_parser() {
        let state = state();
        // A VXLAN packet from node-2, as it would arrive.
        let inbound = probe(REMOTE, POD_A, Proto::Udp, Origin::Uplink);
        let entry = Entry::Uplink { tunnel: Some(Tunnel::Vxlan), outer_src: Some(NODE_2) };
        let frame = build_packet(&inbound, &entry, &state);
        let headers = parse_headers(&frame, 4789).expect("parses");
        let tunnel = headers.tunnel.clone().expect("tunnel");
        assert_eq!((tunnel.src, tunnel.dst, tunnel.vni), (NODE_2, NODE_1, Some(4096)));
        assert_eq!(tunnel.inner_src_mac.as_deref(), Some("66:d0:00:00:00:02"));
        assert_eq!(tunnel.inner_dst_mac.as_deref(), Some("66:d0:00:00:00:01"));
        assert_eq!(
            (headers.src, headers.dst, headers.sport, headers.dport, headers.ttl),
            (REMOTE, POD_A, Some(33333), Some(80), 64)
        );

        // A pod's packet, with valid checksums.
        let outbound = probe(POD_A, EXTERNAL, Proto::Tcp, Origin::Workload);
        let frame = build_packet(&outbound, &Entry::Workload { ifindex: 5 }, &state);
        assert_eq!(&frame[0..6], &GATEWAY_MAC);
        assert_eq!(&frame[6..12], &[0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02]);
        assert_eq!(checksum(&frame[ETH_HLEN..ETH_HLEN + IPV4_HLEN]), 0, "IPv4 header checksum");
        let ip = &frame[ETH_HLEN..];
        let mut pseudo = ip[12..20].to_vec();
        pseudo.extend_from_slice(&[0, IPPROTO_TCP, 0, (ip.len() - IPV4_HLEN) as u8]);
        pseudo.extend_from_slice(&ip[IPV4_HLEN..]);
        assert_eq!(checksum(&pseudo), 0, "TCP checksum");
        assert_eq!(parse_headers(&frame, 4789).expect("parses"), outbound.headers(None));

        // IPIP.
        let entry = Entry::Uplink { tunnel: Some(Tunnel::Ipip), outer_src: Some(NODE_2) };
        let headers = parse_headers(&build_packet(&inbound, &entry, &state), 4789).expect("parses");
        assert_eq!(headers.tunnel.map(|t| (t.kind, t.src)), Some((Tunnel::Ipip, NODE_2)));
    }

    #[test]
    fn comparison_reports_each_difference() {
        let p = from_pod(POD_A, REMOTE, Proto::Tcp);
        let expected = p.output.clone().expect("output");
        let moved = BTreeMap::from([("encap_vxlan", 1)]);
        assert_eq!(compare(&p, TC_ACT_REDIRECT, &moved, Some(&expected)), Vec::<String>::new());
        let mut wrong = expected.clone();
        if let Some(t) = &mut wrong.tunnel {
            t.dst = Ipv4Addr::new(10, 100, 0, 13);
        }
        wrong.ttl = 64;
        let drops = BTreeMap::from([("drop_blackhole", 1)]);
        let found = compare(&p, TC_ACT_SHOT, &drops, Some(&wrong));
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(found[0].contains("verdict") && found[1].contains("drop_blackhole"));
    }

    #[test]
    fn the_context_puts_the_ifindex_where_the_kernel_reads_it() {
        let ctx = skb_context(0x0102_0304);
        assert_eq!(u32::from_ne_bytes([ctx[40], ctx[41], ctx[42], ctx[43]]), 0x0102_0304);
        assert!(ctx[..40].iter().chain(&ctx[44..]).all(|b| *b == 0));
    }

    #[test]
    fn arp_for_the_gateway_is_answered_and_other_arp_passed() {
        let gateway = Ipv4Addr::from(GATEWAY_ADDR);
        let p = from_pod(POD_A, gateway, Proto::Arp);
        assert_eq!((p.action, p.stat, p.output), (Action::Redirect, Stat::ArpReplied, None));
        assert!(p.target.expect("target").contains("ee:ee:ee:ee:ee:ee"));
        let p = from_pod(POD_A, POD_B, Proto::Arp);
        assert_eq!((p.action, p.stat), (Action::Pass, Stat::ArpPassed));
        let state = state();
        let frame =
            build_packet(&probe(POD_A, gateway, Proto::Arp, Origin::Workload), &Entry::Workload { ifindex: 5 }, &state);
        assert_eq!(frame.len(), ETH_HLEN + ARP_LEN);
        assert_eq!(&frame[12..14], &ETH_P_ARP.to_be_bytes());
        assert_eq!(&frame[ETH_HLEN + 24..], &GATEWAY_ADDR);
    }

    #[test]
    fn ip_options_are_left_to_the_kernel_after_anti_spoofing() {
        let state = state();
        let with_options = Probe { options: true, ..probe(POD_A, REMOTE, Proto::Tcp, Origin::Workload) };
        let p = predict(&with_options, &Entry::Workload { ifindex: 5 }, &state);
        assert_eq!((p.action, p.stat), (Action::Pass, Stat::PassToStack));
        let spoofed = Probe { options: true, ..probe(EXTERNAL, REMOTE, Proto::Tcp, Origin::Workload) };
        assert_eq!(predict(&spoofed, &Entry::Workload { ifindex: 5 }, &state).stat, Stat::DropSpoofedSource);
        // Decapsulated, but the kernel delivers a packet with options.
        let inbound = Probe { options: true, ..probe(REMOTE, POD_A, Proto::Tcp, Origin::Uplink) };
        let entry = Entry::Uplink { tunnel: Some(Tunnel::Vxlan), outer_src: Some(NODE_2) };
        let p = predict(&inbound, &entry, &state);
        assert_eq!((p.action, p.stat), (Action::Pass, Stat::DecapVxlan));
        let frame = build_packet(&inbound, &entry, &state);
        let headers = parse_headers(&frame, 4789).expect("parses with IHL 6");
        assert_eq!((headers.src, headers.sport), (REMOTE, Some(33333)));
    }

    #[test]
    fn fragments_tunnel_first_dropped_later_passed_nat_later_dropped() {
        let state = state();
        let entry = Entry::Uplink { tunnel: Some(Tunnel::Vxlan), outer_src: Some(NODE_2) };
        let first = Probe { fragment: Fragment::First, ..probe(REMOTE, POD_A, Proto::Tcp, Origin::Uplink) };
        assert_eq!(predict(&first, &entry, &state).stat, Stat::DropTunnelFragment);
        let frame = build_packet(&first, &entry, &state);
        assert_eq!(u16::from_be_bytes([frame[ETH_HLEN + 6], frame[ETH_HLEN + 7]]), IPV4_MF, "the outer header");
        let later = Probe { fragment: Fragment::Later, ..first };
        assert_eq!(predict(&later, &entry, &state).stat, Stat::PassToStack);
        let ipip = Entry::Uplink { tunnel: Some(Tunnel::Ipip), outer_src: Some(NODE_2) };
        assert_eq!(predict(&first, &ipip, &state).stat, Stat::DropTunnelFragment);

        let out = Probe { fragment: Fragment::Later, ..probe(POD_A, EXTERNAL, Proto::Udp, Origin::Workload) };
        let p = predict(&out, &Entry::Workload { ifindex: 5 }, &state);
        assert_eq!((p.action, p.stat), (Action::Drop, Stat::DropNatFragment));
        let out = Probe { fragment: Fragment::First, ..out };
        assert_eq!(predict(&out, &Entry::Workload { ifindex: 5 }, &state).stat, Stat::SnatNew);
        // A big fragment has no DF: no "fragmentation needed", it is encapsulated.
        let big = Probe { fragment: Fragment::First, size: 1480, ..probe(POD_A, REMOTE, Proto::Tcp, Origin::Workload) };
        assert_eq!(predict(&big, &Entry::Workload { ifindex: 5 }, &state).stat, Stat::EncapVxlan);
    }

    #[test]
    fn packets_into_a_pod_from_outside_the_pools_are_remembered() {
        let state = state();
        let entry = Entry::IntoPod { ifindex: 5 };
        let p = predict(&probe(NODE_2, POD_A, Proto::Tcp, Origin::IntoPod), &entry, &state);
        assert_eq!((p.program, p.action, p.stat), (PROG_TO_WORKLOAD, Action::Pass, Stat::EgressUnchanged));
        let key = p.remembers.expect("remembered");
        assert_eq!(
            (Ipv4Addr::from(key.src), key.src_port, Ipv4Addr::from(key.dst), key.dst_port, key.direction),
            (POD_A, 80, NODE_2, 33333, FLOW_TO_POD)
        );
        let p = predict(&probe(REMOTE, POD_A, Proto::Tcp, Origin::IntoPod), &entry, &state);
        assert_eq!((p.stat, p.remembers), (Stat::EgressUnchanged, None), "a pod of a pool is not remembered");
    }
}
