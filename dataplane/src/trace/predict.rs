//! The prediction: a step-by-step mirror of the kernel programs' decisions over the live maps.

use std::{collections::BTreeMap, fmt, net::Ipv4Addr};

use dataplane_common::{
    net::{
        DEFAULT_TTL, GATEWAY_ADDR, GATEWAY_MAC, IPIP_ENCAP_LEN, IPPROTO_ICMP, IPPROTO_IPIP, IPPROTO_TCP, IPPROTO_UDP,
        VXLAN_ENCAP_LEN,
    },
    peer_flags, route_flags, route_kind, workload_flags, FlowKey, FlowTimeouts, FragmentKey, FragmentNat, Ipv4Bytes,
    NatFlow, NodeConfig, Peer, Route, Stat, Workload, CONNTRACK_MAP, FLOW_INBOUND, FLOW_OUTBOUND, FLOW_TO_POD,
    FRAGMENTS_MAP, NODE_MAP, PEERS_MAP, PROG_FROM_UPLINK, PROG_FROM_WORKLOAD, PROG_TO_UPLINK, PROG_TO_WORKLOAD,
    ROUTES_MAP, WORKLOADS_MAP,
};
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::{backend::entries::RouteKey, check, model::MacAddr, routes};

use super::*;

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
    /// `fragments_v1`: the translations of fragmented datagrams' first fragments.
    pub fragments: BTreeMap<FragmentKey, FragmentNat>,
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

pub(super) fn serialize_flow<S: serde::Serializer>(key: &Option<FlowKey>, serializer: S) -> Result<S::Ok, S::Error> {
    match key {
        Some(key) => serializer.serialize_str(&describe_flow(key)),
        None => serializer.serialize_none(),
    }
}

/// A conntrack key for a person: `proto src:port -> dst:port`.
pub(super) fn describe_flow(key: &FlowKey) -> String {
    format!(
        "{} {}:{} -> {}:{}",
        crate::conntrack::protocol_name(key.protocol),
        Ipv4Addr::from(key.src),
        key.src_port,
        Ipv4Addr::from(key.dst),
        key.dst_port
    )
}

pub(super) fn serialize_stat<S: serde::Serializer>(stat: &Stat, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(stat.name())
}

/// Builds a prediction step by step.
pub(super) struct Tracer<'a> {
    state: &'a State,
    probe: Probe,
    steps: Vec<String>,
    /// A flow the program notes on the way (`nat::note_towards_pod`).
    remembers: Option<FlowKey>,
}

/// A decision of the mirrored program, or the counter of a drop.
pub(super) type Outcome = Result<Decision, Stat>;

pub(super) struct Decision {
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
            let protocol = probe.proto.number();
            if let Some(nat_addr) = self.fragment_translation(probe.src, probe.dst, protocol, FLOW_OUTBOUND) {
                let ttl = self.decrement_ttl()?;
                self.step(format!(
                    "{FRAGMENTS_MAP}: its datagram's first fragment was translated: source {} -> {nat_addr}",
                    probe.src
                ));
                let output = Headers { src: nat_addr, ..self.output(ttl) };
                return Ok(Decision {
                    action: Action::Redirect,
                    stat: Stat::SnatFragment,
                    target: Some(format!("out of the uplink (ifindex {}), next hop by FIB", node.uplink_ifindex)),
                    output,
                });
            }
            if new_flows {
                return Err(self.drop_because(
                    Stat::DropNatFragment,
                    "a later fragment of no datagram whose first fragment was translated ({FRAGMENTS_MAP}): no \
                     ports to translate it by, and it must not leave with the pod's address: dropped",
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
            return self.inbound_later_fragment(tunnel, outer_src);
        }
        match (tunnel, outer_src) {
            (Some(Tunnel::Vxlan), Some(from)) => {
                self.step(format!("VXLAN from {from} to udp/{} of this node", node.vxlan_port));
                self.check_peer(from, peer_flags::VXLAN, "VXLAN")?;
                if probe.fragment == Fragment::First {
                    return self.pass_vxlan_fragment(tunnel, outer_src);
                }
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
                self.check_peer(probe.src, peer_flags::VXLAN, "VXLAN")?;
                if probe.fragment == Fragment::First {
                    return self.pass_vxlan_fragment(tunnel, outer_src);
                }
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

    /// `tunnel::classify`: the first fragment of an IP-in-IP packet is dropped, since
    /// decapsulating half a packet would deliver garbage and no device reassembles it.
    fn refuse_tunnel_fragment(&mut self, kind: &str) -> Result<(), Stat> {
        if self.probe.fragment == Fragment::First {
            return Err(self.drop_because(
                Stat::DropTunnelFragment,
                format!("the first fragment of a {kind} packet: the fabric's MTU is too small for the tunnel"),
            ));
        }
        Ok(())
    }

    /// `tunnel::classify`: the first fragment of a peer's VXLAN packet goes to the kernel, which
    /// reassembles the datagram for the VXLAN anchor's socket (its program delivers the inner
    /// packet, `decap_vxlan_reassembled`).
    fn pass_vxlan_fragment(&mut self, tunnel: Option<Tunnel>, outer_src: Option<Ipv4Addr>) -> Outcome {
        let output = self.input_headers(tunnel, outer_src);
        self.pass(
            Stat::PassTunnelFragment,
            "the first fragment of a peer's VXLAN packet (the fabric's MTU is too small for the tunnel): the kernel \
             reassembles it, and the program of vxlan.dataplane delivers it",
            output,
        )
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

    /// `nat::inbound_later_fragment`: a later fragment to this node (no transport header to
    /// recognise a tunnel or a flow by) takes the pod's address its datagram's first fragment got,
    /// or goes to the kernel, which reassembles.
    fn inbound_later_fragment(&mut self, tunnel: Option<Tunnel>, outer_src: Option<Ipv4Addr>) -> Outcome {
        let probe = self.probe;
        // A tunnel packet's fragments are keyed by its outer header.
        let (src, dst, protocol) = match (tunnel, outer_src, self.state.node) {
            (Some(Tunnel::Vxlan), Some(from), Some(node)) => (from, Ipv4Addr::from(node.addr), IPPROTO_UDP),
            (Some(Tunnel::Ipip), Some(from), Some(node)) => (from, Ipv4Addr::from(node.addr), IPPROTO_IPIP),
            _ => (probe.src, probe.dst, probe.proto.number()),
        };
        let untracked = self.input_headers(tunnel, outer_src);
        let Some(pod) = self.fragment_translation(src, dst, protocol, FLOW_INBOUND) else {
            return self.pass(
                Stat::PassUntrackedFragment,
                format!("a later fragment of no translated datagram in {FRAGMENTS_MAP}: the kernel reassembles it"),
                untracked,
            );
        };
        let Some(route) = self.route(pod).filter(|r| r.kind == route_kind::LOCAL_WORKLOAD) else {
            return self.pass(
                Stat::PassUntrackedFragment,
                "its pod is no local workload any more: to the kernel",
                untracked,
            );
        };
        let ttl = self.decrement_ttl()?;
        self.step(format!("{FRAGMENTS_MAP}: a later fragment of a translated reply: destination {dst} -> {pod}"));
        let output = Headers { dst: pod, ..self.output(ttl) };
        Ok(self.deliver_to_workload(&route, Stat::ReverseNatFragment, output))
    }

    /// `fragment::translation`: the address the first fragment of the probe's datagram (its
    /// identification is [`PROBE_IP_ID`]) was translated to, unless it timed out.
    fn fragment_translation(&self, src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, direction: u8) -> Option<Ipv4Addr> {
        let key = FragmentKey { src: src.octets(), dst: dst.octets(), id: PROBE_IP_ID, protocol, direction };
        let entry = self.state.fragments.get(&key).filter(|entry| !entry.expired(self.state.now_ns))?;
        Some(Ipv4Addr::from(entry.addr))
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
pub(super) fn vxlan_headers(node: &NodeConfig, route: &Route) -> TunnelHeaders {
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
pub(super) fn outer_headers(
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

/// `xdp_uplink`: it refuses what `tunnel::classify` refuses, which `from_uplink` drops with the
/// same reason (a tunnel fragment, a non-peer, a wrong VNI; malformed headers, which a trace's
/// packets never have), and passes everything else on. Returns whether it drops, and its counter.
pub fn xdp_decision(prediction: &Prediction) -> (bool, Stat) {
    match prediction.stat {
        stat @ (Stat::DropTunnelFragment | Stat::DropUnknownPeer | Stat::DropWrongVni) => (true, stat),
        _ => (false, Stat::XdpPassed),
    }
}
