//! The packets `dataplane trace` can describe, for the fuzzer to hold its prediction against the
//! kernel.

use super::*;

/// The IPv4 identification the packet builder and `dataplane trace` give every packet: trace
/// finds a later fragment's datagram by it.
const BUILDER_IP_ID: u16 = 0x1234;

/// The packet as `dataplane trace` describes one, and where it enters: a well-formed IPv4 packet
/// without options (in a well-formed VXLAN or IP-in-IP packet when it arrives on the uplink)
/// with TCP, UDP or the ICMP echo its origin sends, whole (DF), a first fragment or a later one.
/// None for everything else (malformed or mutated past what a probe says), which only the rules
/// in [`check`] judge.
pub(super) fn probe_of(program: &str, frame: &[u8]) -> Option<(Probe, Entry)> {
    if ether_type(frame)? != ETH_P_IP {
        return None;
    }
    let outer = ETH_HLEN;
    let fragment = whole_ipv4(frame, outer)?;
    let (origin, entry) = match program {
        PROG_FROM_WORKLOAD => (Origin::Workload, Entry::Workload { ifindex: TESTED_IFINDEX }),
        PROG_TO_WORKLOAD => (Origin::IntoPod, Entry::IntoPod { ifindex: TESTED_IFINDEX }),
        PROG_TO_UPLINK => (Origin::Host, Entry::Host),
        _ => (Origin::Uplink, Entry::Uplink { tunnel: None, outer_src: None }),
    };
    let protocol = frame[outer + 9];
    let outer_src = Ipv4Addr::from(addr_at(frame, outer + 12));
    let after_outer = outer + 20;
    // Trace's tunnel packets are addressed to this node; one to another address is not decapsulated.
    let to_node = addr_at(frame, outer + 16) == NODE;
    let tunnel = if origin != Origin::Uplink {
        None
    } else if (protocol == IPPROTO_IPIP || protocol == IPPROTO_UDP) && !to_node {
        return None;
    } else if protocol == IPPROTO_IPIP {
        Some((Tunnel::Ipip, after_outer))
    } else if protocol == IPPROTO_UDP
        && frame.len() >= after_outer + UDP_HLEN
        && be16(frame, after_outer + 2) == CALICO_VXLAN_PORT
    {
        let vxlan = after_outer + UDP_HLEN;
        let vni = CALICO_VXLAN_VNI.to_be_bytes();
        let header = [0x08, 0, 0, 0, vni[1], vni[2], vni[3], 0];
        let udp_len_ok = usize::from(be16(frame, after_outer + 4)) == frame.len() - after_outer;
        let inner_eth = vxlan + VXLAN_HLEN;
        let shaped = frame.len() >= inner_eth + ETH_HLEN
            && frame[vxlan..inner_eth] == header
            && be16(frame, inner_eth + 12) == ETH_P_IP;
        if !(udp_len_ok && shaped) {
            return None;
        }
        Some((Tunnel::Vxlan, inner_eth + ETH_HLEN))
    } else {
        None
    };
    let (ip, probe_fragment) = match tunnel {
        // The tunnel's outer packet may be the fragment; the packet inside is whole.
        Some((_, inner)) => (inner, (whole_ipv4(frame, inner)? == Fragment::None).then_some(fragment)?),
        None => (outer, fragment),
    };
    let protocol = frame[ip + 9];
    let l4 = ip + 20;
    let later = probe_fragment == Fragment::Later && tunnel.is_none();
    let (proto, sport, dport) = match protocol {
        _ if later => (proto_of(protocol)?, 0, 0),
        // Trace's TCP probe is a SYN: what opens a flow.
        IPPROTO_TCP if frame.len() >= l4 + 20 && frame[l4 + TCP_FLAGS_OFFSET] == TCP_SYN => {
            (Proto::Tcp, be16(frame, l4), be16(frame, l4 + 2))
        }
        IPPROTO_UDP if frame.len() >= l4 + UDP_HLEN => (Proto::Udp, be16(frame, l4), be16(frame, l4 + 2)),
        IPPROTO_ICMP if frame.len() >= l4 + 8 && frame[l4 + 1] == 0 => {
            let id = be16(frame, l4 + 4);
            match (frame[l4], origin) {
                (ICMP_ECHO_REPLY, Origin::Uplink) if id != 0 => (Proto::Icmp, 0, id),
                (ICMP_ECHO_REQUEST, Origin::Workload | Origin::Host | Origin::IntoPod) if id != 0 => {
                    (Proto::Icmp, id, 0)
                }
                _ => return None,
            }
        }
        _ => return None,
    };
    let probe = Probe {
        src: Ipv4Addr::from(addr_at(frame, ip + 12)),
        dst: Ipv4Addr::from(addr_at(frame, ip + 16)),
        proto,
        sport,
        dport,
        ttl: frame[ip + 8],
        size: be16(frame, ip + 2),
        fragment: probe_fragment,
        options: false,
    };
    let entry = match (entry, tunnel) {
        (Entry::Uplink { .. }, Some((tunnel, _))) => Entry::Uplink { tunnel: Some(tunnel), outer_src: Some(outer_src) },
        (entry, _) => entry,
    };
    Some((probe, entry))
}

/// The transport protocol a probe names, for a later fragment (which carries no ports).
pub(super) fn proto_of(protocol: u8) -> Option<Proto> {
    match protocol {
        IPPROTO_TCP => Some(Proto::Tcp),
        IPPROTO_UDP => Some(Proto::Udp),
        IPPROTO_ICMP => Some(Proto::Icmp),
        _ => None,
    }
}

/// The IPv4 header at `ip`, if it is one trace builds: version 4, no options, a right checksum,
/// a total length that is the rest of the frame, the builder's identification, and flags that say
/// whole (DF), first fragment (MF) or later fragment (an offset, no DF).
pub(super) fn whole_ipv4(frame: &[u8], ip: usize) -> Option<Fragment> {
    if frame.len() < ip + 20 || frame[ip] != 0x45 || !ipv4_header_ok(frame, ip) {
        return None;
    }
    if usize::from(be16(frame, ip + 2)) != frame.len() - ip || be16(frame, ip + 4) != BUILDER_IP_ID {
        return None;
    }
    let flags = be16(frame, ip + 6);
    match (flags & IPV4_DF != 0, flags & IPV4_MF != 0, flags & IPV4_FRAG_OFFSET_MASK) {
        (true, false, 0) => Some(Fragment::None),
        (false, true, 0) => Some(Fragment::First),
        (false, _, offset) if offset > 0 => Some(Fragment::Later),
        _ => None,
    }
}
