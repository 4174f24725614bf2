//! Wire constants: header sizes, protocol numbers and Calico's fixed addresses.
//!
//! Multi-byte values are host-order numbers; the code that writes them to a packet converts them.

/// Length of an Ethernet header without VLAN tags.
pub const ETH_HLEN: usize = 14;
/// Length of a MAC address.
pub const ETH_ALEN: usize = 6;
/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of ARP.
pub const ETH_P_ARP: u16 = 0x0806;

/// Length of an IPv4 header without options (IHL 5).
pub const IPV4_HLEN: usize = 20;
/// The smallest legal IHL (header length in 32-bit words).
pub const IPV4_IHL_MIN: u8 = 5;
/// IPv4 "don't fragment" flag in the host-order `frag_off` field.
pub const IPV4_DF: u16 = 0x4000;
/// IPv4 "more fragments" flag in the host-order `frag_off` field.
pub const IPV4_MF: u16 = 0x2000;
/// Mask of the fragment offset in the host-order `frag_off` field.
pub const IPV4_FRAG_OFFSET_MASK: u16 = 0x1fff;
/// TTL of the outer header of encapsulated packets (Linux's default).
pub const DEFAULT_TTL: u8 = 64;

/// Address family of IPv4 (`AF_INET`), as the kernel's helpers expect it.
pub const AF_INET: u32 = 2;

/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of IP-in-IP.
pub const IPPROTO_IPIP: u8 = 4;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;

/// Length of a UDP header.
pub const UDP_HLEN: usize = 8;
/// Length of a VXLAN header.
pub const VXLAN_HLEN: usize = 8;
/// The VXLAN header flag that says the VNI field is valid (RFC 7348 "I" bit).
pub const VXLAN_FLAG_VNI: u8 = 0x08;
/// Calico's VXLAN UDP port (FelixConfiguration `vxlanPort`).
pub const CALICO_VXLAN_PORT: u16 = 4789;
/// Calico's VXLAN network identifier (FelixConfiguration `vxlanVNI`).
pub const CALICO_VXLAN_VNI: u32 = 4096;
/// Calico's VXLAN device, which the netlink fallback creates and a Calico node already has.
pub const CALICO_VXLAN_DEVICE: &str = "vxlan.calico";
/// Bytes VXLAN adds in front of the inner IPv4 header: outer IPv4, UDP, VXLAN, inner Ethernet.
pub const VXLAN_ENCAP_LEN: usize = IPV4_HLEN + UDP_HLEN + VXLAN_HLEN + ETH_HLEN;
/// Bytes IP-in-IP adds: one outer IPv4 header.
pub const IPIP_ENCAP_LEN: usize = IPV4_HLEN;
/// Lowest UDP source port of VXLAN packets (the kernel's default range, as `vxlan_src_port`).
pub const VXLAN_SRC_PORT_MIN: u16 = 32768;
/// One past the highest UDP source port of VXLAN packets.
pub const VXLAN_SRC_PORT_MAX: u16 = 61000;
/// Seed of [`flow_hash`], so that its value differs from a plain mix of the addresses.
pub const FLOW_HASH_SEED: u32 = 0x9e37_79b9;

/// A hash of an inner flow (addresses, the transport ports as the four bytes that follow the
/// IPv4 header, protocol) for the VXLAN source port when the stack has not hashed the packet: a
/// few multiplies, where the kernel's flow dissector (`bpf_get_hash_recalc`) parses the whole
/// packet again. Each input word goes through murmur3's 32-bit finaliser, so that flows that
/// differ in one port spread over the whole range.
pub const fn flow_hash(src: [u8; 4], dst: [u8; 4], ports: [u8; 4], protocol: u8) -> u32 {
    let mut hash = mix32(u32::from_ne_bytes(src) ^ FLOW_HASH_SEED);
    hash = mix32(hash ^ u32::from_ne_bytes(dst));
    mix32(hash ^ u32::from_ne_bytes(ports) ^ protocol as u32)
}

/// murmur3's 32-bit finaliser: every input bit moves about half of the output bits.
const fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 13;
    x = x.wrapping_mul(0xc2b2_ae35);
    x ^ (x >> 16)
}

/// The VXLAN UDP source port of a flow with `hash`, in `VXLAN_SRC_PORT_MIN..VXLAN_SRC_PORT_MAX`:
/// scaled by a multiply and a shift as the kernel's `udp_flow_src_port` does (no division).
pub const fn vxlan_src_port(hash: u32) -> u16 {
    let range = (VXLAN_SRC_PORT_MAX - VXLAN_SRC_PORT_MIN) as u64;
    VXLAN_SRC_PORT_MIN + ((hash as u64 * range) >> 32) as u16
}

/// The largest inner packet a tunnel with `encap_len` bytes of headers carries over an uplink
/// of `uplink_mtu` (Calico's 1450 for VXLAN and 1480 for IPIP on a 1500-byte uplink): the MTU the
/// netlink fallback gives its tunnel devices and the host's routes to remote blocks carry, and the
/// bound the kernel programs' `len + encap_len <= uplink_mtu` check sets. One definition for both.
pub const fn tunnel_mtu(uplink_mtu: u32, encap_len: usize) -> u32 {
    uplink_mtu.saturating_sub(encap_len as u32)
}

/// ICMP type "destination unreachable".
pub const ICMP_DEST_UNREACH: u8 = 3;
/// ICMP code "fragmentation needed and DF set" (of [`ICMP_DEST_UNREACH`]).
pub const ICMP_FRAG_NEEDED: u8 = 4;
/// Length of an ICMP header.
pub const ICMP_HLEN: usize = 8;
/// Bytes of the offending packet's payload an ICMP error quotes after its IPv4 header (RFC 792).
pub const ICMP_QUOTED_PAYLOAD: usize = 8;

/// ICMP type "echo reply".
pub const ICMP_ECHO_REPLY: u8 = 0;
/// ICMP type "echo request".
pub const ICMP_ECHO_REQUEST: u8 = 8;
/// ICMP type "time exceeded".
pub const ICMP_TIME_EXCEEDED: u8 = 11;
/// Offset of the checksum in a TCP header.
pub const TCP_CSUM_OFFSET: usize = 16;
/// Offset of the flags byte in a TCP header.
pub const TCP_FLAGS_OFFSET: usize = 13;
/// TCP FIN flag.
pub const TCP_FIN: u8 = 0x01;
/// TCP SYN flag.
pub const TCP_SYN: u8 = 0x02;
/// TCP RST flag.
pub const TCP_RST: u8 = 0x04;
/// TCP ACK flag.
pub const TCP_ACK: u8 = 0x10;
/// Offset of the checksum in a UDP header.
pub const UDP_CSUM_OFFSET: usize = 6;
/// Offset of the checksum in an ICMP header.
pub const ICMP_CSUM_OFFSET: usize = 2;
/// Offset of the echo identifier in an ICMP echo header.
pub const ICMP_ECHO_ID_OFFSET: usize = 4;
/// Default first port of the SNAT range: below the kernel's ephemeral range (32768-60999), so the
/// node's own new connections do not pick ports pods were given (as Calico's BPFPSNATPorts).
pub const NAT_PORT_MIN: u16 = 20000;
/// Default last port of the SNAT range.
pub const NAT_PORT_MAX: u16 = 29999;

// The programs' return codes, as the kernel reads them and BPF_PROG_TEST_RUN reports them. The
// kernel programs take theirs from aya's bindings; userspace compares against these.
/// TC verdict: let the packet continue (`TC_ACT_OK`).
pub const TC_ACT_OK: u32 = 0;
/// TC verdict: drop (`TC_ACT_SHOT`).
pub const TC_ACT_SHOT: u32 = 2;
/// TC verdict: redirected by a helper (`TC_ACT_REDIRECT`).
pub const TC_ACT_REDIRECT: u32 = 7;
/// XDP verdict: drop (`XDP_DROP` of `enum xdp_action`).
pub const XDP_DROP: u32 = 1;
/// XDP verdict: on to the stack (`XDP_PASS` of `enum xdp_action`).
pub const XDP_PASS: u32 = 2;

/// ARP hardware type of Ethernet.
pub const ARPHRD_ETHER: u16 = 1;
/// ARP opcode of a request.
pub const ARPOP_REQUEST: u16 = 1;
/// ARP opcode of a reply.
pub const ARPOP_REPLY: u16 = 2;
/// Length of an ARP packet for Ethernet and IPv4.
pub const ARP_ETH_IPV4_LEN: usize = 28;

/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// Address family of IPv6 (`AF_INET6`), as the kernel's helpers expect it.
pub const AF_INET6: u32 = 10;
/// Length of the fixed IPv6 header.
pub const IPV6_HLEN: usize = 40;
/// Length of an IPv6 address.
pub const IPV6_ALEN: usize = 16;
/// Length of an IPv6 fragment header.
pub const IPV6_FRAG_HLEN: usize = 8;
/// Extension headers other than the fragment header give their length in units of this many
/// bytes, not counting the first unit (RFC 8200).
pub const IPV6_EXT_LEN_UNIT: usize = 8;
/// IPv6 next header: Hop-by-Hop options, which every router on the path must examine.
pub const IPPROTO_HOPOPTS: u8 = 0;
/// IPv6 next header: the routing header.
pub const IPPROTO_ROUTING: u8 = 43;
/// IPv6 next header: the fragment header.
pub const IPPROTO_FRAGMENT: u8 = 44;
/// IPv6 next header: ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// IPv6 next header: destination options.
pub const IPPROTO_DSTOPTS: u8 = 60;
/// Mask of the fragment offset in the host-order offset field of an IPv6 fragment header.
pub const IPV6_FRAG_OFFSET_MASK: u16 = 0xfff8;
/// The "more fragments" bit of the same field.
pub const IPV6_FRAG_MORE: u16 = 0x0001;
/// The smallest MTU every IPv6 link carries (RFC 8200).
pub const IPV6_MIN_MTU: u32 = 1280;

/// Length of an ICMPv6 header (type, code, checksum, four bytes of the message).
pub const ICMPV6_HLEN: usize = 8;
/// ICMPv6 type "packet too big" (RFC 4443): path-MTU discovery's answer.
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
/// ICMPv6 type "echo request".
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
/// ICMPv6 type "echo reply".
pub const ICMPV6_ECHO_REPLY: u8 = 129;
/// ICMPv6 (neighbour discovery) type "router solicitation"; the first NDP type.
pub const ND_ROUTER_SOLICIT: u8 = 133;
/// ICMPv6 (neighbour discovery) type "neighbour solicitation".
pub const ND_NEIGHBOR_SOLICIT: u8 = 135;
/// ICMPv6 (neighbour discovery) type "neighbour advertisement".
pub const ND_NEIGHBOR_ADVERT: u8 = 136;
/// ICMPv6 (neighbour discovery) type "redirect"; the last NDP type.
pub const ND_REDIRECT: u8 = 137;
/// The hop limit every neighbour discovery message carries, so that a receiver knows it was
/// sent on the link (RFC 4861 7.1.1).
pub const ND_HOP_LIMIT: u8 = 255;
/// Length of a neighbour solicitation or advertisement without options: the ICMPv6 header
/// (with the flags or the reserved word) and the target address.
pub const ND_MSG_LEN: usize = ICMPV6_HLEN + IPV6_ALEN;
/// NDP option "source link-layer address".
pub const ND_OPT_SOURCE_LL_ADDR: u8 = 1;
/// NDP option "target link-layer address".
pub const ND_OPT_TARGET_LL_ADDR: u8 = 2;
/// Length of a link-layer address option for Ethernet (in bytes; on the wire it says 1 unit).
pub const ND_OPT_LL_ADDR_LEN: usize = 8;
/// NDP options give their length in units of this many bytes.
pub const ND_OPT_LEN_UNIT: usize = 8;
/// Neighbour advertisement flag "router": the sender forwards packets.
pub const ND_NA_FLAG_ROUTER: u8 = 0x80;
/// Neighbour advertisement flag "solicited": the answer to a solicitation.
pub const ND_NA_FLAG_SOLICITED: u8 = 0x40;
/// Neighbour advertisement flag "override": replace a cached link-layer address.
pub const ND_NA_FLAG_OVERRIDE: u8 = 0x20;

/// The pods' IPv6 default gateway `fe80::ecee:eeff:feee:eeee`: the EUI-64 link-local address
/// of the host side's `ee:ee:ee:ee:ee:ee`, answered by the neighbour discovery responder.
pub const GATEWAY_ADDR_V6: [u8; IPV6_ALEN] =
    [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0xec, 0xee, 0xee, 0xff, 0xfe, 0xee, 0xee, 0xee];
/// Bytes VXLAN over IPv6 adds in front of the inner packet: outer IPv6, UDP, VXLAN, inner
/// Ethernet (Calico's `vxlan-v6.calico` MTU is 1430 on a 1500-byte uplink).
pub const VXLAN_V6_ENCAP_LEN: usize = IPV6_HLEN + UDP_HLEN + VXLAN_HLEN + ETH_HLEN;
/// Calico's IPv6 VXLAN device, which a Calico node running IPv6 VXLAN has.
pub const CALICO_VXLAN_V6_DEVICE: &str = "vxlan-v6.calico";

/// The pods' default gateway, answered by the ARP responder (Calico's link-local trick).
pub const GATEWAY_ADDR: [u8; 4] = [169, 254, 1, 1];
/// The MAC of every workload interface on the host side, and of the gateway.
pub const GATEWAY_MAC: [u8; ETH_ALEN] = [0xee; ETH_ALEN];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vxlan_source_ports_stay_in_the_kernels_range() {
        for hash in [0, 1, u32::MAX / 2, u32::MAX - 1, u32::MAX] {
            let port = vxlan_src_port(hash);
            assert!((VXLAN_SRC_PORT_MIN..VXLAN_SRC_PORT_MAX).contains(&port), "hash {hash:#x} -> port {port}");
        }
        assert_eq!(vxlan_src_port(0), VXLAN_SRC_PORT_MIN);
        assert_eq!(vxlan_src_port(u32::MAX), VXLAN_SRC_PORT_MAX - 1);
    }

    #[test]
    fn flows_that_differ_in_one_field_get_their_own_source_port() {
        let (src, dst) = ([10, 244, 1, 2], [10, 244, 2, 2]);
        let port = |src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, protocol: u8| {
            let sport = sport.to_be_bytes();
            let dport = dport.to_be_bytes();
            vxlan_src_port(flow_hash(src, dst, [sport[0], sport[1], dport[0], dport[1]], protocol))
        };
        // The same flow, the same port: the underlay keeps its packets in order.
        assert_eq!(port(src, dst, 40000, 5201, IPPROTO_TCP), port(src, dst, 40000, 5201, IPPROTO_TCP));
        let mut ports = [0u16; 64];
        for (i, slot) in ports.iter_mut().enumerate() {
            *slot = port(src, dst, 40000 + i as u16, 5201, IPPROTO_TCP);
        }
        ports.sort_unstable();
        let distinct = 1 + ports.windows(2).filter(|pair| pair[0] != pair[1]).count();
        assert!(distinct >= 62, "64 source ports gave {distinct} outer ports");
        let base = port(src, dst, 40000, 5201, IPPROTO_TCP);
        assert_ne!(base, port(src, dst, 40000, 5202, IPPROTO_TCP), "destination port");
        assert_ne!(base, port(src, [10, 244, 2, 3], 40000, 5201, IPPROTO_TCP), "destination address");
        assert_ne!(base, port([10, 244, 1, 3], dst, 40000, 5201, IPPROTO_TCP), "source address");
        assert_ne!(base, port(src, dst, 40000, 5201, IPPROTO_UDP), "protocol");
    }

    #[test]
    fn the_ipv6_gateway_is_the_eui64_link_local_of_the_gateway_mac() {
        // EUI-64: the MAC split in two around ff:fe, with the universal/local bit flipped.
        let mac = GATEWAY_MAC;
        let interface_id = [mac[0] ^ 0x02, mac[1], mac[2], 0xff, 0xfe, mac[3], mac[4], mac[5]];
        assert_eq!(GATEWAY_ADDR_V6[..8], [0xfe, 0x80, 0, 0, 0, 0, 0, 0]);
        assert_eq!(GATEWAY_ADDR_V6[8..], interface_id);
        assert_eq!(tunnel_mtu(1500, VXLAN_V6_ENCAP_LEN), 1430, "Calico's vxlan-v6.calico MTU");
    }
}
