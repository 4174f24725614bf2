//! The probe as bytes (Ethernet, ARP, IPv4, tunnels) and the headers read back from a frame.

use std::net::Ipv4Addr;

use dataplane_common::{
    net::{
        DEFAULT_TTL, ETH_ALEN, ETH_HLEN, ETH_P_IP, GATEWAY_MAC, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, IPPROTO_ICMP,
        IPPROTO_IPIP, IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN, TCP_SYN, UDP_HLEN, VXLAN_HLEN,
    },
    MacBytes,
};

use crate::{
    model::MacAddr,
    packet::{Ipv4Header, Packet},
};

use super::*;

/// Length of a TCP header without options.
pub(super) const TCP_HLEN: usize = 20;

/// The UDP source port of the VXLAN packets built for `--from uplink`.
pub(super) const VXLAN_PROBE_SPORT: u16 = 50000;

/// The IPv4 identification of every probe (the packet builder's): with its addresses and
/// protocol, the key of its datagram in the fragments map.
pub(crate) const PROBE_IP_ID: u16 = crate::packet::IPV4_ID;

/// The fragment offset of a `--fragment later` probe, in 8-byte units: where the second fragment
/// of a 1500-byte packet starts.
pub(super) const LATER_FRAGMENT_OFFSET: u16 = 1480 / 8;

/// The options word of an `--ip-options` probe: three NOPs and the end of the list.
pub(super) const IP_OPTIONS_WORD: [u8; 4] = [1, 1, 1, 0];

/// MACs for the outer Ethernet header of packets from the uplink (the programs do not read them).
pub(super) const UPLINK_PEER_MAC: MacBytes = [0x02, 0, 0, 0, 0, 0x02];

pub(super) const UPLINK_OWN_MAC: MacBytes = [0x02, 0, 0, 0, 0, 0x01];

pub use crate::packet::{checksum, transport_checksum};

pub(super) fn parse_mac(text: Option<&String>) -> MacBytes {
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
        return Packet::eth(mac, [0xff; ETH_ALEN]).arp_request(mac, probe.src.octets(), probe.dst.octets()).finish();
    }
    let frame = match *entry {
        Entry::Workload { ifindex } => Packet::eth(pod_mac(ifindex), GATEWAY_MAC),
        Entry::Uplink { tunnel: Some(kind), outer_src: Some(from) } => {
            let node = state.node.unwrap_or_default();
            let outer = outer_headers(kind, from, &node, &state.routes, probe.src);
            let protocol = if kind == Tunnel::Vxlan { IPPROTO_UDP } else { IPPROTO_IPIP };
            let frame = Packet::eth(UPLINK_PEER_MAC, UPLINK_OWN_MAC).ipv4_header(Ipv4Header {
                src: outer.src.octets(),
                dst: outer.dst.octets(),
                protocol,
                ttl: DEFAULT_TTL,
                frag_off: probe.frag_off(),
                options: &[],
            });
            match kind {
                Tunnel::Vxlan => frame.udp(VXLAN_PROBE_SPORT, node.vxlan_port).vxlan(
                    node.vni,
                    parse_mac(outer.inner_src_mac.as_ref()),
                    parse_mac(outer.inner_dst_mac.as_ref()),
                ),
                Tunnel::Ipip => frame,
            }
        }
        Entry::Uplink { .. } | Entry::Host => Packet::eth(UPLINK_PEER_MAC, UPLINK_OWN_MAC),
        // The stack sends it from the gateway's MAC to the pod's.
        Entry::IntoPod { ifindex } => Packet::eth(GATEWAY_MAC, pod_mac(ifindex)),
    };
    // A tunnel packet is fragmented outside: the inner packet is whole.
    let tunneled = matches!(entry, Entry::Uplink { tunnel: Some(_), outer_src: Some(_) });
    let inner = if tunneled { Probe { fragment: Fragment::None, ..*probe } } else { *probe };
    with_probe(frame, &inner).finish()
}

/// `frame` carrying the probe's IPv4 packet: header (with options, fragment bits), transport
/// header, zero payload up to the probe's size. (A later fragment carries the same bytes: the
/// programs do not read them.)
fn with_probe(frame: Packet, probe: &Probe) -> Packet {
    let options: &[u8] = if probe.options { &IP_OPTIONS_WORD } else { &[] };
    let header_len = IPV4_HLEN + options.len();
    let total = usize::from(probe.size).max(header_len + probe.proto.header_len());
    let frame = frame.ipv4_header(Ipv4Header {
        src: probe.src.octets(),
        dst: probe.dst.octets(),
        protocol: probe.proto.number(),
        ttl: probe.ttl,
        frag_off: probe.frag_off(),
        options,
    });
    let frame = match probe.proto {
        Proto::Tcp => frame.tcp(probe.sport, probe.dport, TCP_SYN),
        Proto::Udp => frame.udp(probe.sport, probe.dport),
        Proto::Icmp => {
            let kind = probe.icmp_type();
            let id = if kind == ICMP_ECHO_REQUEST { probe.sport } else { probe.dport };
            frame.icmp_echo(kind, id, 1)
        }
        // Built by `build_packet`.
        Proto::Arp => frame,
    };
    frame.payload(&vec![0; total - header_len - probe.proto.header_len()])
}

pub(super) fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

pub(super) fn addr_at(bytes: &[u8], at: usize) -> Option<Ipv4Addr> {
    let octets: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(octets))
}

pub(super) fn mac_at(bytes: &[u8], at: usize) -> Option<String> {
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
