//! The probe as bytes (Ethernet, ARP, IPv4, tunnels) and the headers read back from a frame.

use std::net::Ipv4Addr;

use dataplane_common::{
    net::{
        ARPHRD_ETHER, ARPOP_REQUEST, DEFAULT_TTL, ETH_ALEN, ETH_HLEN, ETH_P_ARP, ETH_P_IP, GATEWAY_MAC,
        ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, IPPROTO_ICMP, IPPROTO_IPIP, IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN, TCP_SYN,
        UDP_HLEN, VXLAN_FLAG_VNI, VXLAN_HLEN,
    },
    MacBytes,
};

use crate::model::MacAddr;

use super::*;

/// Length of a TCP header without options.
pub(super) const TCP_HLEN: usize = 20;

/// The UDP source port of the VXLAN packets built for `--from uplink`.
pub(super) const VXLAN_PROBE_SPORT: u16 = 50000;

/// The IPv4 identification of every probe: with its addresses and protocol, the key of its
/// datagram in the fragments map.
pub(crate) const PROBE_IP_ID: u16 = 0x1234;

/// The fragment offset of a `--fragment later` probe, in 8-byte units: where the second fragment
/// of a 1500-byte packet starts.
pub(super) const LATER_FRAGMENT_OFFSET: u16 = 1480 / 8;

/// The options word of an `--ip-options` probe: three NOPs and the end of the list.
pub(super) const IP_OPTIONS_WORD: [u8; 4] = [1, 1, 1, 0];

/// Bytes of an ARP request for IPv4 over Ethernet.
pub(super) const ARP_LEN: usize = 28;

/// MACs for the outer Ethernet header of packets from the uplink (the programs do not read them).
pub(super) const UPLINK_PEER_MAC: MacBytes = [0x02, 0, 0, 0, 0, 0x02];

pub(super) const UPLINK_OWN_MAC: MacBytes = [0x02, 0, 0, 0, 0, 0x01];

/// The RFC 1071 checksum of `data` (an odd last byte padded with zero): an IPv4 header's over
/// the header, a segment's through [`transport_checksum`]. The one checksum of the probes and
/// of the tests' packet builder.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 =
        data.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The fields of an IPv4 header that vary between the packets built here.
#[derive(Clone, Copy)]
pub(super) struct Ipv4Fields {
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
pub(super) fn ipv4_header(fields: Ipv4Fields) -> Vec<u8> {
    let mut header = vec![0u8; IPV4_HLEN];
    header[2..4].copy_from_slice(&fields.total_len.to_be_bytes());
    header[4..6].copy_from_slice(&PROBE_IP_ID.to_be_bytes());
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
pub(super) fn outer_ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, total_len: u16, frag_off: u16) -> Vec<u8> {
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
    let sum = transport_checksum(probe.src.octets(), probe.dst.octets(), protocol, &l4);
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

/// The checksum of the TCP, UDP or ICMP `segment` of an IPv4 packet from `src` to `dst`, over
/// the segment as given (its checksum field zeroed by the caller): TCP and UDP sum the
/// pseudo-header too, and UDP sends a computed 0 as 0xffff (0 means "no checksum").
pub fn transport_checksum(src: [u8; 4], dst: [u8; 4], protocol: u8, segment: &[u8]) -> u16 {
    let mut summed = Vec::with_capacity(12 + segment.len());
    if protocol != IPPROTO_ICMP {
        summed.extend_from_slice(&src);
        summed.extend_from_slice(&dst);
        summed.extend_from_slice(&[0, protocol]);
        summed.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    }
    summed.extend_from_slice(segment);
    let sum = checksum(&summed);
    if protocol == IPPROTO_UDP && sum == 0 {
        0xffff
    } else {
        sum
    }
}

/// An ARP request from `mac`/`probe.src` asking for `probe.dst`, broadcast.
pub(super) fn arp_request(probe: &Probe, mac: MacBytes) -> Vec<u8> {
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

pub(super) fn ethernet(dst: MacBytes, src: MacBytes) -> Vec<u8> {
    let mut frame = Vec::with_capacity(128);
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
    frame
}

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
