//! The outer headers this node puts in front of the packets it tunnels, prebuilt by the agent.
//!
//! Everything in a VXLAN or IP-in-IP outer header but six fields is the same for every packet a
//! node sends: its address, the TTL, the protocol, the VXLAN port, VNI and its own VTEP MAC. The
//! agent writes those bytes once, with the IPv4 checksum summed over them, into the one-slot
//! tunnel templates map; per packet the programs OR in the fields that vary (the inner TOS, the
//! lengths, the peer's address and VTEP MAC from the route they looked up, the UDP source port of
//! the flow) and finish the checksum with a few additions, then store the header with word-sized
//! stores instead of building it byte by byte. The peer's part comes from the route the program
//! has already read, so a template per peer would only add a lookup.

use core::mem::size_of;

use crate::{
    net::{DEFAULT_TTL, ETH_HLEN, ETH_P_IP, IPPROTO_IPIP, IPPROTO_UDP, IPV4_HLEN, VXLAN_FLAG_VNI},
    Ipv4Bytes, MacBytes, NodeConfig,
};

/// One-slot array holding this node's [`TunnelTemplates`].
pub const TUNNEL_TEMPLATES_MAP: &str = "tunnel_templates_v1";

/// Bits of [`TunnelTemplates::written`]: which templates the agent has written.
pub mod template_flags {
    /// The VXLAN template is written.
    pub const VXLAN: u32 = 1 << 0;
    /// The IP-in-IP template is written.
    pub const IPIP: u32 = 1 << 1;
}

/// The first byte of every IPv4 header the programs write: version 4, IHL 5.
pub const IPV4_VERSION_IHL: u8 = 0x45;

/// Where the template's words start in the frame: after the outer Ethernet header (left to the
/// redirect that follows, or already right on the uplink's egress) and the IPv4 header's first
/// two bytes (version/IHL, then the inner packet's TOS), on an eight-byte boundary of the frame.
pub const TEMPLATE_FRAME_OFFSET: usize = ETH_HLEN + 2;
/// Words of the VXLAN template: frame bytes 16..64 (the rest of the outer IPv4 header, UDP,
/// VXLAN, the inner Ethernet header).
pub const VXLAN_TEMPLATE_WORDS: usize = 6;
/// Words of the IP-in-IP template: frame bytes 16..32; the last two bytes of the outer IPv4
/// header (the second half of the destination address) follow them.
pub const IPIP_TEMPLATE_WORDS: usize = 2;
const _: () = assert!(TEMPLATE_FRAME_OFFSET + 8 * VXLAN_TEMPLATE_WORDS == ETH_HLEN + crate::net::VXLAN_ENCAP_LEN);
const _: () = assert!(TEMPLATE_FRAME_OFFSET + 8 * IPIP_TEMPLATE_WORDS + 2 == ETH_HLEN + crate::net::IPIP_ENCAP_LEN);

/// The value of the tunnel templates map: this node's outer headers with every per-packet field
/// zero. Words hold frame bytes in memory order (byte `i` of the frame from
/// [`TEMPLATE_FRAME_OFFSET`] is byte `i % 8` of word `i / 8` in memory), so the programs copy
/// eight bytes with one load and one store.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct TunnelTemplates {
    /// Bits of [`template_flags`]; 0 before the agent wrote them (the programs then build the
    /// same headers from the node map).
    pub written: u32,
    /// The one's-complement sum (folded, not inverted) of the VXLAN outer IPv4 header's fixed
    /// 16-bit words: what its checksum covers but the TOS, the total length and the destination.
    pub vxlan_sum: u16,
    /// The same for the IP-in-IP outer header.
    pub ipip_sum: u16,
    /// Frame bytes 16..64 of a VXLAN packet, per-packet fields zero.
    pub vxlan: [u64; VXLAN_TEMPLATE_WORDS],
    /// Frame bytes 16..32 of an IP-in-IP packet, per-packet fields zero.
    pub ipip: [u64; IPIP_TEMPLATE_WORDS],
}
const _: () = assert!(size_of::<TunnelTemplates>() == 8 + 8 * (VXLAN_TEMPLATE_WORDS + IPIP_TEMPLATE_WORDS));

/// A VXLAN outer header ready to store at frame offset [`ETH_HLEN`]: the IPv4 header's first two
/// bytes, then six words (frame bytes 16..64), each in memory order.
#[derive(Clone, Copy)]
pub struct VxlanHeader {
    /// Frame bytes 14..16: version/IHL and TOS.
    pub head: u16,
    /// Frame bytes 16..64.
    pub words: [u64; VXLAN_TEMPLATE_WORDS],
}

/// An IP-in-IP outer header ready to store at frame offset [`ETH_HLEN`].
#[derive(Clone, Copy)]
pub struct IpipHeader {
    /// Frame bytes 14..16: version/IHL and TOS.
    pub head: u16,
    /// Frame bytes 16..32.
    pub words: [u64; IPIP_TEMPLATE_WORDS],
    /// Frame bytes 32..34: the last two bytes of the destination address.
    pub tail: u16,
}

/// Where byte `i` of a word in memory sits in the word's value.
const fn shift(i: usize) -> u32 {
    if cfg!(target_endian = "little") {
        8 * i as u32
    } else {
        56 - 8 * i as u32
    }
}

/// `byte` placed at byte `i` of a word in memory.
#[inline(always)]
const fn byte_at(byte: u8, i: usize) -> u64 {
    (byte as u64) << shift(i)
}

/// `value` in network order at bytes `i` and `i + 1` of a word in memory.
#[inline(always)]
const fn be16_at(value: u16, i: usize) -> u64 {
    let bytes = value.to_be_bytes();
    byte_at(bytes[0], i) | byte_at(bytes[1], i + 1)
}

/// Two bytes, in memory order, as the `u16` that stores them.
#[inline(always)]
const fn pair(first: u8, second: u8) -> u16 {
    u16::from_ne_bytes([first, second])
}

/// The sum of an outer IPv4 header's fixed words: version/IHL (TOS zero), TTL and protocol, the
/// source address.
#[inline(always)]
const fn fixed_sum(src: Ipv4Bytes, protocol: u8) -> u16 {
    fold(
        u16::from_be_bytes([IPV4_VERSION_IHL, 0]) as u32
            + u16::from_be_bytes([DEFAULT_TTL, protocol]) as u32
            + u16::from_be_bytes([src[0], src[1]]) as u32
            + u16::from_be_bytes([src[2], src[3]]) as u32,
    )
}

/// The IPv4 header checksum from a template's fixed-field sum and the fields the packet adds.
#[inline(always)]
const fn ipv4_check(fixed_sum: u16, tos: u8, tot_len: u16, dst: Ipv4Bytes) -> u16 {
    // The version/IHL byte is in the fixed sum; the TOS is the low byte of its 16-bit word.
    let sum = fixed_sum as u32
        + tos as u32
        + tot_len as u32
        + u16::from_be_bytes([dst[0], dst[1]]) as u32
        + u16::from_be_bytes([dst[2], dst[3]]) as u32;
    !fold(sum)
}

/// A one's-complement sum folded into 16 bits (not inverted).
#[inline(always)]
const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

impl TunnelTemplates {
    /// The templates of the node `node` describes: the outer IPv4 header from its address with
    /// Linux's default TTL and no fragmentation flags, VXLAN on its port and VNI with its VTEP MAC
    /// as inner source, as the programs have always written them. None written (all zero) for a
    /// node without an address yet. Register arithmetic only, so that the programs can build it
    /// too (before the agent wrote the map) without a stack frame of their own.
    #[inline(always)]
    pub const fn for_node(node: &NodeConfig) -> Self {
        let [a, b, c, d] = node.addr;
        if u32::from_ne_bytes(node.addr) == 0 {
            return TunnelTemplates { written: 0, vxlan_sum: 0, ipip_sum: 0, vxlan: [0; 6], ipip: [0; 2] };
        }
        // Frame bytes 24..32 of both: the checksum (zero here), the source, the destination's
        // first half (zero here).
        let source = byte_at(a, 2) | byte_at(b, 3) | byte_at(c, 4) | byte_at(d, 5);
        let vni = node.vni.to_be_bytes();
        let mac = node.vtep_mac;
        let ether_type = ETH_P_IP.to_be_bytes();
        TunnelTemplates {
            written: template_flags::VXLAN | template_flags::IPIP,
            vxlan_sum: fixed_sum(node.addr, IPPROTO_UDP),
            ipip_sum: fixed_sum(node.addr, IPPROTO_IPIP),
            vxlan: [
                // 16..24: total length, id and flags (zero), TTL, protocol.
                byte_at(DEFAULT_TTL, 6) | byte_at(IPPROTO_UDP, 7),
                source,
                // 32..40: the destination's second half, source port (zero), the VXLAN port, the
                // UDP length (zero).
                be16_at(node.vxlan_port, 4),
                // 40..48: no UDP checksum, as Linux sends VXLAN over IPv4; the VXLAN flags, three
                // reserved bytes, the VNI's first two bytes.
                byte_at(VXLAN_FLAG_VNI, 2) | byte_at(vni[1], 6) | byte_at(vni[2], 7),
                // 48..56: the VNI's last byte, reserved, the inner destination (the peer's VTEP).
                byte_at(vni[3], 0),
                // 56..64: the inner source, this node's VTEP, and the inner EtherType.
                byte_at(mac[0], 0)
                    | byte_at(mac[1], 1)
                    | byte_at(mac[2], 2)
                    | byte_at(mac[3], 3)
                    | byte_at(mac[4], 4)
                    | byte_at(mac[5], 5)
                    | byte_at(ether_type[0], 6)
                    | byte_at(ether_type[1], 7),
            ],
            ipip: [byte_at(DEFAULT_TTL, 6) | byte_at(IPPROTO_IPIP, 7), source],
        }
    }

    /// The VXLAN outer header of an inner IPv4 packet of `inner_len` bytes with TOS `tos`,
    /// towards `dst` whose VTEP MAC is `dst_vtep`, from UDP source port `src_port`.
    #[inline(always)]
    pub fn vxlan(&self, tos: u8, inner_len: u16, dst: Ipv4Bytes, dst_vtep: MacBytes, src_port: u16) -> VxlanHeader {
        let tot_len = inner_len.wrapping_add(crate::net::VXLAN_ENCAP_LEN as u16);
        let udp_len = tot_len.wrapping_sub(IPV4_HLEN as u16);
        let check = ipv4_check(self.vxlan_sum, tos, tot_len, dst);
        let t = &self.vxlan;
        VxlanHeader {
            head: pair(IPV4_VERSION_IHL, tos),
            words: [
                // 16..24: total length, id, flags, TTL, protocol.
                t[0] | be16_at(tot_len, 0),
                // 24..32: checksum, source, the destination's first half.
                t[1] | be16_at(check, 0) | byte_at(dst[0], 6) | byte_at(dst[1], 7),
                // 32..40: the destination's second half, UDP source port, port, length.
                t[2] | byte_at(dst[2], 0) | byte_at(dst[3], 1) | be16_at(src_port, 2) | be16_at(udp_len, 6),
                // 40..48: UDP checksum (none), VXLAN flags and VNI.
                t[3],
                // 48..56: the VNI's last byte, reserved, the inner destination MAC.
                t[4] | byte_at(dst_vtep[0], 2)
                    | byte_at(dst_vtep[1], 3)
                    | byte_at(dst_vtep[2], 4)
                    | byte_at(dst_vtep[3], 5)
                    | byte_at(dst_vtep[4], 6)
                    | byte_at(dst_vtep[5], 7),
                // 56..64: the inner source MAC and EtherType.
                t[5],
            ],
        }
    }

    /// The IP-in-IP outer header of an inner IPv4 packet of `inner_len` bytes with TOS `tos`,
    /// towards `dst`.
    #[inline(always)]
    pub fn ipip(&self, tos: u8, inner_len: u16, dst: Ipv4Bytes) -> IpipHeader {
        let tot_len = inner_len.wrapping_add(crate::net::IPIP_ENCAP_LEN as u16);
        let check = ipv4_check(self.ipip_sum, tos, tot_len, dst);
        let t = &self.ipip;
        IpipHeader {
            head: pair(IPV4_VERSION_IHL, tos),
            words: [t[0] | be16_at(tot_len, 0), t[1] | be16_at(check, 0) | byte_at(dst[0], 6) | byte_at(dst[1], 7)],
            tail: pair(dst[2], dst[3]),
        }
    }
}

/// Lays out a header as the programs store it: the 2-byte head, then the 8-byte words, in frame
/// order from the start of `bytes`.
fn lay_out(head: u16, words: &[u64], bytes: &mut [u8]) {
    bytes[..2].copy_from_slice(&head.to_ne_bytes());
    for (word, chunk) in words.iter().zip(bytes[2..].chunks_exact_mut(8)) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
}

impl VxlanHeader {
    /// The header's 50 bytes in frame order (frame offsets 14..64).
    pub fn to_bytes(&self) -> [u8; crate::net::VXLAN_ENCAP_LEN] {
        let mut bytes = [0u8; crate::net::VXLAN_ENCAP_LEN];
        lay_out(self.head, &self.words, &mut bytes);
        bytes
    }
}

impl IpipHeader {
    /// The header's 20 bytes in frame order (frame offsets 14..34).
    pub fn to_bytes(&self) -> [u8; IPV4_HLEN] {
        let mut bytes = [0u8; IPV4_HLEN];
        lay_out(self.head, &self.words, &mut bytes);
        bytes[IPV4_HLEN - 2..].copy_from_slice(&self.tail.to_ne_bytes());
        bytes
    }
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)] with only integer and integer-array fields and no implicit padding (the size
// assert above proves it), so every bit pattern is a valid value.
unsafe impl aya::Pod for TunnelTemplates {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{CALICO_VXLAN_PORT, CALICO_VXLAN_VNI, VXLAN_ENCAP_LEN};

    const NODE: NodeConfig = NodeConfig {
        addr: [10, 100, 0, 11],
        uplink_ifindex: 2,
        vni: CALICO_VXLAN_VNI,
        vtep_mac: [0x66, 0xd0, 0, 0, 0, 1],
        vxlan_port: CALICO_VXLAN_PORT,
        uplink_mtu: 1500,
        nat_port_min: 20000,
        nat_port_max: 29999,
        timeouts: crate::FlowTimeouts::DEFAULT,
    };

    /// The folded one's-complement sum of `bytes` as big-endian 16-bit words.
    fn ones_sum(bytes: &[u8]) -> u16 {
        fold(bytes.chunks(2).map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]]))).sum())
    }

    /// The checksum of a whole IPv4 header, the way a receiver checks it: zero when right.
    fn verify(header: &[u8]) -> u16 {
        !ones_sum(header)
    }

    #[test]
    fn the_vxlan_header_from_the_template_is_the_one_built_field_by_field() {
        let templates = TunnelTemplates::for_node(&NODE);
        let peer_vtep = [0x66, 0xd0, 0, 0, 0, 2];
        for (tos, inner_len, dst, port) in [
            (0u8, 84u16, [10, 100, 0, 12], 40000u16),
            (0xb8, 1450, [192, 168, 255, 254], 60999),
            (3, 20, [1, 2, 3, 4], 32768),
        ] {
            let bytes = templates.vxlan(tos, inner_len, dst, peer_vtep, port).to_bytes();
            let tot_len = inner_len + VXLAN_ENCAP_LEN as u16;
            let mut expected = [0u8; VXLAN_ENCAP_LEN];
            expected[..12].copy_from_slice(&[0x45, tos, (tot_len >> 8) as u8, tot_len as u8, 0, 0, 0, 0, 64, 17, 0, 0]);
            expected[12..16].copy_from_slice(&NODE.addr);
            expected[16..20].copy_from_slice(&dst);
            let check = !ones_sum(&expected[..20]);
            expected[10..12].copy_from_slice(&check.to_be_bytes());
            expected[20..22].copy_from_slice(&port.to_be_bytes());
            expected[22..24].copy_from_slice(&CALICO_VXLAN_PORT.to_be_bytes());
            expected[24..26].copy_from_slice(&(tot_len - 20).to_be_bytes());
            expected[28..36].copy_from_slice(&[0x08, 0, 0, 0, 0, 0x10, 0x00, 0]);
            expected[36..42].copy_from_slice(&peer_vtep);
            expected[42..48].copy_from_slice(&NODE.vtep_mac);
            expected[48..50].copy_from_slice(&ETH_P_IP.to_be_bytes());
            assert_eq!(bytes, expected, "tos {tos} len {inner_len} dst {dst:?}");
            assert_eq!(verify(&bytes[..20]), 0, "the checksum verifies");
        }
    }

    #[test]
    fn the_ipip_header_from_the_template_is_the_one_built_field_by_field() {
        let templates = TunnelTemplates::for_node(&NODE);
        for (tos, inner_len, dst) in [(0u8, 84u16, [10, 100, 0, 12]), (0xfc, 1480, [255, 255, 255, 254])] {
            let bytes = templates.ipip(tos, inner_len, dst).to_bytes();
            let tot_len = inner_len + 20;
            let mut expected =
                [0x45, tos, (tot_len >> 8) as u8, tot_len as u8, 0, 0, 0, 0, 64, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            expected[12..16].copy_from_slice(&NODE.addr);
            expected[16..20].copy_from_slice(&dst);
            let check = !ones_sum(&expected);
            expected[10..12].copy_from_slice(&check.to_be_bytes());
            assert_eq!(bytes, expected, "tos {tos} len {inner_len} dst {dst:?}");
            assert_eq!(verify(&bytes), 0);
        }
    }

    #[test]
    fn a_node_without_an_address_has_no_templates() {
        let templates = TunnelTemplates::for_node(&NodeConfig { addr: [0; 4], ..NODE });
        assert_eq!(templates, TunnelTemplates::default());
        assert_eq!(TunnelTemplates::for_node(&NODE).written, template_flags::VXLAN | template_flags::IPIP);
    }
}
