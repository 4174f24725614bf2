//! The one packet builder: layered Ethernet/ARP/IPv4/IPv6/UDP/TCP/ICMP/ICMPv6/VXLAN frames with
//! their lengths and checksums fixed at the end, and the checksums themselves. `dataplane trace` builds its
//! probes with it, and the tests (`tests/src/packet.rs`) their crafted packets.
//!
//! Build: `Packet::eth(src, dst).ipv4(src, dst, protocol).udp(sport, dport).payload(b"..").finish()`.
//! Check: read fields back at named offsets and verify checksums.

use dataplane_common::net::{
    ARPHRD_ETHER, ARPOP_REQUEST, DEFAULT_TTL, ETH_ALEN, ETH_HLEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, ICMP_CSUM_OFFSET,
    IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_IPIP, IPPROTO_ROUTING,
    IPPROTO_TCP, IPPROTO_UDP, IPV4_DF, IPV4_HLEN, IPV6_EXT_LEN_UNIT, IPV6_FRAG_HLEN, IPV6_FRAG_OFFSET_MASK, IPV6_HLEN,
    ND_NEIGHBOR_SOLICIT, ND_OPT_LEN_UNIT, ND_OPT_LL_ADDR_LEN, ND_OPT_SOURCE_LL_ADDR, TCP_CSUM_OFFSET, UDP_CSUM_OFFSET,
    UDP_HLEN, VXLAN_FLAG_VNI, VXLAN_HLEN,
};

/// The IPv4 identification of every packet built here (`dataplane trace` finds a later
/// fragment's datagram in the fragments map by it).
pub const IPV4_ID: u16 = 0x1234;

/// A packet under construction.
#[derive(Clone, Debug)]
pub struct Packet {
    /// The frame so far.
    pub bytes: Vec<u8>,
}

/// The fields of an IPv4 header that vary; lengths and the checksum are fixed by [`Packet::finish`].
#[derive(Clone, Copy, Debug)]
pub struct Ipv4Header<'a> {
    /// Source address.
    pub src: [u8; 4],
    /// Destination address.
    pub dst: [u8; 4],
    /// The protocol of what follows.
    pub protocol: u8,
    /// Time to live.
    pub ttl: u8,
    /// Flags and fragment offset.
    pub frag_off: u16,
    /// Options, a multiple of four bytes.
    pub options: &'a [u8],
}

/// The fields of an IPv6 header that vary; the payload length is fixed by [`Packet::finish`].
#[derive(Clone, Copy, Debug)]
pub struct Ipv6Header {
    /// Source address.
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// What follows: an extension header or the transport.
    pub next_header: u8,
    /// Hop limit.
    pub hop_limit: u8,
}

/// The IPv6 fragment identification of every fragment header built here.
pub const IPV6_FRAGMENT_ID: u32 = 0x1234_5678;

/// The PadN option that fills an options header of the smallest size (RFC 8200 4.2).
const PAD_N: u8 = 1;

impl Packet {
    /// Starts an Ethernet frame; the EtherType is filled by the next layer.
    pub fn eth(src: [u8; 6], dst: [u8; 6]) -> Self {
        let mut bytes = Vec::with_capacity(128);
        bytes.extend_from_slice(&dst);
        bytes.extend_from_slice(&src);
        bytes.extend_from_slice(&[0, 0]);
        Packet { bytes }
    }

    /// An ARP request from (`sha`, `spa`) for `tpa`.
    pub fn arp_request(mut self, sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Self {
        self.set_ether_type(ETH_P_ARP);
        self.bytes.extend_from_slice(&ARPHRD_ETHER.to_be_bytes());
        self.bytes.extend_from_slice(&ETH_P_IP.to_be_bytes());
        self.bytes.extend_from_slice(&[ETH_ALEN as u8, 4]);
        self.bytes.extend_from_slice(&ARPOP_REQUEST.to_be_bytes());
        self.bytes.extend_from_slice(&sha);
        self.bytes.extend_from_slice(&spa);
        self.bytes.extend_from_slice(&[0; ETH_ALEN]);
        self.bytes.extend_from_slice(&tpa);
        self
    }

    /// An IPv4 header (TTL 64, DF, no options).
    pub fn ipv4(self, src: [u8; 4], dst: [u8; 4], protocol: u8) -> Self {
        self.ipv4_header(Ipv4Header { src, dst, protocol, ttl: DEFAULT_TTL, frag_off: IPV4_DF, options: &[] })
    }

    /// An IPv4 header with the given fields.
    pub fn ipv4_header(mut self, header: Ipv4Header<'_>) -> Self {
        // The outermost IPv4 header sets the EtherType; inner ones (IP-in-IP) leave it.
        if self.bytes[12..14] == [0, 0] {
            self.set_ether_type(ETH_P_IP);
        }
        // Version 4, and the header length in 32-bit words.
        let ihl = ((IPV4_HLEN + header.options.len()) / 4) as u8;
        self.bytes.extend_from_slice(&[0x40 | ihl, 0, 0, 0]);
        self.bytes.extend_from_slice(&IPV4_ID.to_be_bytes());
        self.bytes.extend_from_slice(&header.frag_off.to_be_bytes());
        self.bytes.extend_from_slice(&[header.ttl, header.protocol, 0, 0]);
        self.bytes.extend_from_slice(&header.src);
        self.bytes.extend_from_slice(&header.dst);
        self.bytes.extend_from_slice(header.options);
        self
    }

    /// An IPv6 header (hop limit 64) followed by `next_header`.
    pub fn ipv6(self, src: [u8; 16], dst: [u8; 16], next_header: u8) -> Self {
        self.ipv6_header(Ipv6Header { src, dst, next_header, hop_limit: DEFAULT_TTL })
    }

    /// An IPv6 header with the given fields.
    pub fn ipv6_header(mut self, header: Ipv6Header) -> Self {
        if self.bytes[12..14] == [0, 0] {
            self.set_ether_type(ETH_P_IPV6);
        }
        // Version 6, traffic class and flow label 0; the payload length comes in `finish`.
        self.bytes.extend_from_slice(&[0x60, 0, 0, 0, 0, 0, header.next_header, header.hop_limit]);
        self.bytes.extend_from_slice(&header.src);
        self.bytes.extend_from_slice(&header.dst);
        self
    }

    /// An options extension header of the smallest size (Hop-by-Hop or destination options,
    /// eight bytes filled with PadN) followed by `next_header`.
    pub fn ipv6_options(mut self, next_header: u8) -> Self {
        // Length 0: one unit of eight bytes; PadN covering the remaining four.
        self.bytes.extend_from_slice(&[next_header, 0, PAD_N, 4, 0, 0, 0, 0]);
        self
    }

    /// A routing header of type 0xfe (RFC 4727's experimental type) with no segments left,
    /// which every node passes over (RFC 8200 4.4), followed by `next_header`.
    pub fn ipv6_routing(mut self, next_header: u8) -> Self {
        self.bytes.extend_from_slice(&[next_header, 0, 0xfe, 0, 0, 0, 0, 0]);
        self
    }

    /// A fragment header followed by `next_header`: `offset` in units of eight bytes, `more`
    /// when more fragments follow.
    pub fn ipv6_fragment(mut self, next_header: u8, offset: u16, more: bool) -> Self {
        let field = (offset << 3) | u16::from(more);
        self.bytes.extend_from_slice(&[next_header, 0]);
        self.bytes.extend_from_slice(&field.to_be_bytes());
        self.bytes.extend_from_slice(&IPV6_FRAGMENT_ID.to_be_bytes());
        self
    }

    /// A neighbour solicitation for `target`, with a source link-layer address option when
    /// `source_mac` is given (duplicate address detection sends none).
    pub fn neighbour_solicitation(mut self, target: [u8; 16], source_mac: Option<[u8; 6]>) -> Self {
        self.bytes.extend_from_slice(&[ND_NEIGHBOR_SOLICIT, 0, 0, 0, 0, 0, 0, 0]);
        self.bytes.extend_from_slice(&target);
        if let Some(mac) = source_mac {
            self.bytes.extend_from_slice(&[ND_OPT_SOURCE_LL_ADDR, (ND_OPT_LL_ADDR_LEN / ND_OPT_LEN_UNIT) as u8]);
            self.bytes.extend_from_slice(&mac);
        }
        self
    }

    /// A UDP header (checksum 0).
    pub fn udp(mut self, src_port: u16, dst_port: u16) -> Self {
        self.bytes.extend_from_slice(&src_port.to_be_bytes());
        self.bytes.extend_from_slice(&dst_port.to_be_bytes());
        self.bytes.extend_from_slice(&[0, 0, 0, 0]);
        self
    }

    /// A TCP header (sequence 1, no options, window 65535) with `flags` (e.g. 0x02 for SYN).
    pub fn tcp(mut self, src_port: u16, dst_port: u16, flags: u8) -> Self {
        self.bytes.extend_from_slice(&src_port.to_be_bytes());
        self.bytes.extend_from_slice(&dst_port.to_be_bytes());
        self.bytes.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        self
    }

    /// An ICMP echo request (type 8) or reply (type 0) with `id` and `seq`.
    pub fn icmp_echo(mut self, kind: u8, id: u16, seq: u16) -> Self {
        self.bytes.extend_from_slice(&[kind, 0, 0, 0]);
        self.bytes.extend_from_slice(&id.to_be_bytes());
        self.bytes.extend_from_slice(&seq.to_be_bytes());
        self
    }

    /// A VXLAN header with the VNI flag set, followed by an inner Ethernet header.
    pub fn vxlan(mut self, vni: u32, inner_src: [u8; 6], inner_dst: [u8; 6]) -> Self {
        let vni = vni.to_be_bytes();
        self.bytes.extend_from_slice(&[VXLAN_FLAG_VNI, 0, 0, 0, vni[1], vni[2], vni[3], 0]);
        self.bytes.extend_from_slice(&inner_dst);
        self.bytes.extend_from_slice(&inner_src);
        self.bytes.extend_from_slice(&ETH_P_IP.to_be_bytes());
        self
    }

    /// Raw payload bytes.
    pub fn payload(mut self, data: &[u8]) -> Self {
        self.bytes.extend_from_slice(data);
        self
    }

    /// Fixes every IPv4 total length, UDP length and IPv4 checksum, outermost first, then the
    /// innermost transport checksum (TCP, UDP or ICMP; tunnel UDP headers keep checksum 0). An
    /// IPv6 frame gets its payload length, and past its extension headers its UDP length and
    /// its TCP, UDP or ICMPv6 checksum (none in a later fragment, which has no transport header).
    pub fn finish(mut self) -> Vec<u8> {
        if self.bytes.len() >= ETH_HLEN + IPV6_HLEN && self.bytes[12..14] == ETH_P_IPV6.to_be_bytes() {
            self.finish_ipv6();
            return self.bytes;
        }
        let mut offset = ETH_HLEN;
        let mut innermost = None;
        // Walk the IPv4 headers in order: outer, then (VXLAN or IPIP) inner ones.
        while offset + IPV4_HLEN <= self.bytes.len() && self.bytes[offset] >> 4 == 4 {
            let header_len = usize::from(self.bytes[offset] & 0x0f) * 4;
            if header_len < IPV4_HLEN || offset + header_len > self.bytes.len() {
                break;
            }
            let total = (self.bytes.len() - offset) as u16;
            self.bytes[offset + 2..offset + 4].copy_from_slice(&total.to_be_bytes());
            self.bytes[offset + 10..offset + 12].copy_from_slice(&[0, 0]);
            let check = checksum(&self.bytes[offset..offset + header_len]);
            self.bytes[offset + 10..offset + 12].copy_from_slice(&check.to_be_bytes());
            let protocol = self.bytes[offset + 9];
            innermost = Some((offset, header_len));
            let next = offset + header_len;
            if protocol == IPPROTO_UDP && next + UDP_HLEN <= self.bytes.len() {
                let len = (self.bytes.len() - next) as u16;
                self.bytes[next + 4..next + 6].copy_from_slice(&len.to_be_bytes());
                // VXLAN (as `vxlan` writes it): the inner IPv4 header follows the UDP, VXLAN and
                // inner Ethernet headers. Any other UDP payload is the innermost layer.
                let vxlan = next + UDP_HLEN;
                let inner = vxlan + VXLAN_HLEN + ETH_HLEN;
                let is_vxlan = inner < self.bytes.len()
                    && self.bytes[vxlan] == VXLAN_FLAG_VNI
                    && self.bytes[inner - 2..inner] == ETH_P_IP.to_be_bytes();
                if !is_vxlan {
                    break;
                }
                offset = inner;
            } else if protocol == IPPROTO_IPIP {
                offset = next;
            } else {
                break;
            }
        }
        if let Some((ip, header_len)) = innermost {
            let protocol = self.bytes[ip + 9];
            let l4 = ip + header_len;
            if let (Some(field), Some(sum)) = (l4_checksum_offset(protocol), segment_checksum(&self.bytes, ip, l4)) {
                self.bytes[l4 + field..l4 + field + 2].copy_from_slice(&sum.to_be_bytes());
            }
        }
        self.bytes
    }

    /// [`Packet::finish`] for an IPv6 frame.
    fn finish_ipv6(&mut self) {
        let ip = ETH_HLEN;
        let payload_len = (self.bytes.len() - ip - IPV6_HLEN) as u16;
        self.bytes[ip + 4..ip + 6].copy_from_slice(&payload_len.to_be_bytes());
        let Some((next_header, l4)) = ipv6_transport(&self.bytes, ip) else { return };
        if next_header == IPPROTO_UDP && l4 + UDP_HLEN <= self.bytes.len() {
            let len = (self.bytes.len() - l4) as u16;
            self.bytes[l4 + 4..l4 + 6].copy_from_slice(&len.to_be_bytes());
        }
        if let Some(sum) = segment_checksum_v6(&self.bytes, ip, l4, next_header) {
            let field = l4_checksum_offset_v6(next_header).unwrap_or_default();
            self.bytes[l4 + field..l4 + field + 2].copy_from_slice(&sum.to_be_bytes());
        }
    }

    fn set_ether_type(&mut self, ether_type: u16) {
        self.bytes[12..14].copy_from_slice(&ether_type.to_be_bytes());
    }
}

/// The RFC 1071 checksum of `data` (an odd last byte padded with zero): an IPv4 header's over
/// the header, a segment's through [`transport_checksum`].
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 =
        data.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
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

/// The checksum of the TCP, UDP or ICMPv6 `segment` of an IPv6 packet from `src` to `dst`, over
/// the segment as given (its checksum field zeroed by the caller) and the IPv6 pseudo-header,
/// which ICMPv6 sums too (RFC 8200 8.1); UDP sends a computed 0 as 0xffff.
pub fn transport_checksum_v6(src: [u8; 16], dst: [u8; 16], next_header: u8, segment: &[u8]) -> u16 {
    let mut summed = Vec::with_capacity(40 + segment.len());
    summed.extend_from_slice(&src);
    summed.extend_from_slice(&dst);
    summed.extend_from_slice(&(segment.len() as u32).to_be_bytes());
    summed.extend_from_slice(&[0, 0, 0, next_header]);
    summed.extend_from_slice(segment);
    let sum = checksum(&summed);
    if next_header == IPPROTO_UDP && sum == 0 {
        0xffff
    } else {
        sum
    }
}

/// The transport of the IPv6 packet at `ip`, past its extension headers: its next header value
/// and offset; None when the chain runs off the frame or the packet is a later fragment.
pub fn ipv6_transport(bytes: &[u8], ip: usize) -> Option<(u8, usize)> {
    let mut next_header = *bytes.get(ip + 6)?;
    let mut offset = ip + IPV6_HLEN;
    // A packet built here has a few extension headers at most.
    for _ in 0..8 {
        match next_header {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let len = (usize::from(*bytes.get(offset + 1)?) + 1) * IPV6_EXT_LEN_UNIT;
                next_header = *bytes.get(offset)?;
                offset += len;
            }
            IPPROTO_FRAGMENT => {
                let field = u16::from_be_bytes([*bytes.get(offset + 2)?, *bytes.get(offset + 3)?]);
                if field & IPV6_FRAG_OFFSET_MASK != 0 {
                    return None;
                }
                next_header = *bytes.get(offset)?;
                offset += IPV6_FRAG_HLEN;
            }
            _ => return (offset <= bytes.len()).then_some((next_header, offset)),
        }
    }
    None
}

/// Offset of the transport checksum for the IPv6 `next_header`, if it has one we fill.
fn l4_checksum_offset_v6(next_header: u8) -> Option<usize> {
    match next_header {
        IPPROTO_TCP => Some(TCP_CSUM_OFFSET),
        IPPROTO_UDP => Some(UDP_CSUM_OFFSET),
        IPPROTO_ICMPV6 => Some(ICMP_CSUM_OFFSET),
        _ => None,
    }
}

/// The transport checksum of the IPv6 packet at `ip` whose `next_header` segment starts at
/// `l4`, computed over the bytes with the checksum field taken as zero.
fn segment_checksum_v6(bytes: &[u8], ip: usize, l4: usize, next_header: u8) -> Option<u16> {
    let field = l4_checksum_offset_v6(next_header)?;
    let mut segment = bytes.get(l4..)?.to_vec();
    if segment.len() < field + 2 {
        return None;
    }
    segment[field..field + 2].copy_from_slice(&[0, 0]);
    let src = bytes.get(ip + 8..ip + 24)?.try_into().ok()?;
    let dst = bytes.get(ip + 24..ip + 40)?.try_into().ok()?;
    Some(transport_checksum_v6(src, dst, next_header, &segment))
}

/// Whether the transport checksum of the IPv6 packet at `ip` (TCP, UDP or ICMPv6, past its
/// extension headers) is right.
pub fn l4_checksum_v6_ok(bytes: &[u8], ip: usize) -> bool {
    let Some((next_header, l4)) = ipv6_transport(bytes, ip) else { return false };
    let Some(field) = l4_checksum_offset_v6(next_header) else { return false };
    bytes.len() >= l4 + field + 2 && Some(be16(bytes, l4 + field)) == segment_checksum_v6(bytes, ip, l4, next_header)
}

/// The RFC 1071 checksum of an IPv4 header (with its check field included).
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    checksum(header)
}

/// Reads a big-endian u16 at `offset`.
pub fn be16(bytes: &[u8], offset: usize) -> u16 {
    u16::from_be_bytes([bytes[offset], bytes[offset + 1]])
}

/// Offset of the transport checksum for `protocol`, if it has one we fill.
fn l4_checksum_offset(protocol: u8) -> Option<usize> {
    match protocol {
        IPPROTO_TCP => Some(TCP_CSUM_OFFSET),
        IPPROTO_UDP => Some(UDP_CSUM_OFFSET),
        IPPROTO_ICMP => Some(ICMP_CSUM_OFFSET),
        _ => None,
    }
}

/// The transport checksum of the IPv4 packet at `ip` whose segment starts at `l4`, computed
/// over the bytes with the checksum field taken as zero.
fn segment_checksum(bytes: &[u8], ip: usize, l4: usize) -> Option<u16> {
    let protocol = bytes[ip + 9];
    let field = l4_checksum_offset(protocol)?;
    let mut segment = bytes.get(l4..)?.to_vec();
    if segment.len() < field + 2 {
        return None;
    }
    segment[field..field + 2].copy_from_slice(&[0, 0]);
    let src = bytes.get(ip + 12..ip + 16)?.try_into().ok()?;
    let dst = bytes.get(ip + 16..ip + 20)?.try_into().ok()?;
    Some(transport_checksum(src, dst, protocol, &segment))
}

/// The transport checksum of the (option-less) IPv4 packet at `ip` as it should be (with the
/// pseudo-header for TCP and UDP), computed over the bytes with the checksum field taken as zero.
pub fn l4_checksum(bytes: &[u8], ip: usize) -> Option<u16> {
    segment_checksum(bytes, ip, ip + IPV4_HLEN)
}

/// Whether the transport checksum of the (option-less) IPv4 packet at `ip` is right.
pub fn l4_checksum_ok(bytes: &[u8], ip: usize) -> bool {
    let protocol = bytes[ip + 9];
    let Some(field) = l4_checksum_offset(protocol) else { return false };
    let at = ip + IPV4_HLEN + field;
    Some(be16(bytes, at)) == l4_checksum(bytes, ip)
}

/// Recomputes the checksum of the (option-less) IPv4 header at `ip`, after a test edited it.
pub fn set_ipv4_checksum(bytes: &mut [u8], ip: usize) {
    bytes[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
    let check = ipv4_checksum(&bytes[ip..ip + IPV4_HLEN]);
    bytes[ip + 10..ip + 12].copy_from_slice(&check.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_fixes_lengths_and_checksums_through_a_tunnel_and_options() {
        let frame = Packet::eth([2; 6], [4; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], IPPROTO_UDP)
            .udp(50000, 4789)
            .vxlan(4096, [6; 6], [8; 6])
            .ipv4_header(Ipv4Header {
                src: [10, 244, 1, 2],
                dst: [10, 244, 2, 2],
                protocol: IPPROTO_UDP,
                ttl: 9,
                frag_off: 0,
                options: &[1, 1, 1, 0],
            })
            .udp(53, 53)
            .payload(&[7; 11])
            .finish();
        let outer = ETH_HLEN;
        assert_eq!(usize::from(be16(&frame, outer + 2)), frame.len() - outer);
        assert_eq!(checksum(&frame[outer..outer + IPV4_HLEN]), 0);
        assert_eq!(be16(&frame, outer + IPV4_HLEN + UDP_CSUM_OFFSET), 0, "a tunnel's UDP checksum stays 0");
        let inner = outer + IPV4_HLEN + UDP_HLEN + VXLAN_HLEN + ETH_HLEN;
        assert_eq!(frame[inner], 0x46);
        assert_eq!(usize::from(be16(&frame, inner + 2)), frame.len() - inner);
        assert_eq!(checksum(&frame[inner..inner + 24]), 0);
        let l4 = inner + 24;
        let mut segment = frame[l4..].to_vec();
        let stored = be16(&segment, UDP_CSUM_OFFSET);
        segment[UDP_CSUM_OFFSET..UDP_CSUM_OFFSET + 2].copy_from_slice(&[0, 0]);
        assert_eq!(stored, transport_checksum([10, 244, 1, 2], [10, 244, 2, 2], IPPROTO_UDP, &segment));
    }

    #[test]
    fn finish_fixes_the_ipv6_payload_length_and_the_checksum_past_extension_headers() {
        let (src, dst) = ([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2], [0xfd; 16]);
        let frame = Packet::eth([2; 6], [4; 6])
            .ipv6(src, dst, IPPROTO_DSTOPTS)
            .ipv6_options(IPPROTO_FRAGMENT)
            .ipv6_fragment(IPPROTO_UDP, 0, true)
            .udp(53, 53)
            .payload(&[7; 11])
            .finish();
        assert_eq!(be16(&frame, 12), ETH_P_IPV6);
        assert_eq!(usize::from(be16(&frame, ETH_HLEN + 4)), frame.len() - ETH_HLEN - IPV6_HLEN);
        let l4 = ETH_HLEN + IPV6_HLEN + 8 + IPV6_FRAG_HLEN;
        assert_eq!(ipv6_transport(&frame, ETH_HLEN), Some((IPPROTO_UDP, l4)));
        assert_eq!(usize::from(be16(&frame, l4 + 4)), frame.len() - l4, "UDP length");
        assert!(l4_checksum_v6_ok(&frame, ETH_HLEN));
        // The same sum by hand: a correct checksum makes the whole sum over pseudo-header and
        // segment come out as zero.
        let mut summed = Vec::new();
        summed.extend_from_slice(&src);
        summed.extend_from_slice(&dst);
        summed.extend_from_slice(&((frame.len() - l4) as u32).to_be_bytes());
        summed.extend_from_slice(&[0, 0, 0, IPPROTO_UDP]);
        summed.extend_from_slice(&frame[l4..]);
        assert_eq!(checksum(&summed), 0);

        let later = Packet::eth([2; 6], [4; 6]).ipv6(src, dst, IPPROTO_FRAGMENT).ipv6_fragment(IPPROTO_UDP, 4, false);
        let later = later.payload(&[9; 16]).finish();
        assert_eq!(ipv6_transport(&later, ETH_HLEN), None, "a later fragment has no transport header");
        assert_eq!(&later[later.len() - 16..], &[9; 16], "and is not touched");
    }
}
