//! The packet to trace: protocol, ports, fragments, options, and where it enters the node.

use std::net::Ipv4Addr;

use dataplane_common::{
    net::{
        ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_HLEN, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPV4_DF, IPV4_HLEN,
        IPV4_MF, UDP_HLEN,
    },
    FlowKey,
};
use serde::Serialize;

use super::*;

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
    pub(super) fn header_len(self) -> usize {
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
    pub(super) fn options_len(&self) -> usize {
        if self.options {
            IP_OPTIONS_WORD.len()
        } else {
            0
        }
    }

    /// The IPv4 flags and fragment offset of the packet.
    pub(super) fn frag_off(&self) -> u16 {
        match self.fragment {
            Fragment::None => IPV4_DF,
            Fragment::First => IPV4_MF,
            Fragment::Later => LATER_FRAGMENT_OFFSET,
        }
    }

    /// The transport identity the kernel's conntrack reads from this packet in `direction`:
    /// echo requests carry their identifier as the source port, replies as the destination port.
    pub(super) fn flow_key(&self, direction: u8) -> FlowKey {
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
    pub(super) fn icmp_type(&self) -> u8 {
        // The type is fixed by where the packet enters; see `with_origin`.
        if self.dport == 0 && self.sport != 0 {
            ICMP_ECHO_REQUEST
        } else {
            ICMP_ECHO_REPLY
        }
    }

    /// The headers of the probe itself, as a [`Headers`] (ports as conntrack reads them; a later
    /// fragment has none).
    pub(super) fn headers(&self, tunnel: Option<TunnelHeaders>) -> Headers {
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
