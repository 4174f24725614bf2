//! A small layered packet builder and checker for BPF_PROG_TEST_RUN tests.
//!
//! Build: `Packet::eth(src, dst).ipv4(src, dst).udp(sport, dport).payload(b"..")`. Check: read
//! fields back at named offsets and verify checksums.

use dataplane_common::net::{
    ETH_HLEN, ETH_P_ARP, ETH_P_IP, IPPROTO_ICMP, IPPROTO_IPIP, IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN, UDP_HLEN,
    VXLAN_HLEN,
};

/// Fixed addresses of the test fixtures: one node, one peer, their pods.
pub mod fixture {
    /// This node's address.
    pub const NODE: [u8; 4] = [10, 100, 0, 11];
    /// The peer node's address.
    pub const PEER: [u8; 4] = [10, 100, 0, 12];
    /// A node that is not a peer.
    pub const STRANGER: [u8; 4] = [10, 100, 0, 99];
    /// This node's VTEP MAC.
    pub const NODE_VTEP_MAC: [u8; 6] = [0x66, 0xd0, 0, 0, 0, 1];
    /// The peer's VTEP MAC.
    pub const PEER_VTEP_MAC: [u8; 6] = [0x66, 0xd0, 0, 0, 0, 2];
    /// A pod on this node.
    pub const POD_A: [u8; 4] = [10, 244, 1, 2];
    /// POD_A's MAC.
    pub const POD_A_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02];
    /// A second pod on this node.
    pub const POD_B: [u8; 4] = [10, 244, 1, 3];
    /// POD_B's MAC.
    pub const POD_B_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x03];
    /// An address of this node's block without a workload.
    pub const POD_NONE: [u8; 4] = [10, 244, 1, 50];
    /// A pod on the peer node.
    pub const REMOTE_POD: [u8; 4] = [10, 244, 2, 2];
    /// An address outside every pool.
    pub const EXTERNAL: [u8; 4] = [192, 0, 2, 10];
    /// A MAC for the uplink side of frames.
    pub const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
}

/// A packet under construction.
#[derive(Clone, Debug)]
pub struct Packet {
    /// The frame so far.
    pub bytes: Vec<u8>,
}

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
        self.bytes.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
        self.bytes.extend_from_slice(&sha);
        self.bytes.extend_from_slice(&spa);
        self.bytes.extend_from_slice(&[0; 6]);
        self.bytes.extend_from_slice(&tpa);
        self
    }

    /// An IPv4 header (TTL 64, DF, no options); lengths and checksum are fixed by `finish`.
    pub fn ipv4(mut self, src: [u8; 4], dst: [u8; 4], protocol: u8) -> Self {
        // The outermost IPv4 header sets the EtherType; inner ones (IP-in-IP) leave it.
        if self.bytes[12..14] == [0, 0] {
            self.set_ether_type(ETH_P_IP);
        }
        self.bytes.extend_from_slice(&[0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, protocol, 0, 0]);
        self.bytes.extend_from_slice(&src);
        self.bytes.extend_from_slice(&dst);
        self
    }

    /// A UDP header (checksum 0).
    pub fn udp(mut self, src_port: u16, dst_port: u16) -> Self {
        self.bytes.extend_from_slice(&src_port.to_be_bytes());
        self.bytes.extend_from_slice(&dst_port.to_be_bytes());
        self.bytes.extend_from_slice(&[0, 0, 0, 0]);
        self
    }

    /// A TCP header (no options, window 65535) with `flags` (e.g. 0x02 for SYN).
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
        self.bytes.extend_from_slice(&[0x08, 0, 0, 0, vni[1], vni[2], vni[3], 0]);
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
    /// innermost transport checksum (TCP, UDP or ICMP; tunnel UDP headers keep checksum 0).
    pub fn finish(mut self) -> Vec<u8> {
        let mut offset = ETH_HLEN;
        let mut innermost = None;
        // Walk the IPv4 headers in order: outer, then (VXLAN or IPIP) inner ones.
        while offset + IPV4_HLEN <= self.bytes.len() && self.bytes[offset] == 0x45 {
            let total = (self.bytes.len() - offset) as u16;
            self.bytes[offset + 2..offset + 4].copy_from_slice(&total.to_be_bytes());
            self.bytes[offset + 10..offset + 12].copy_from_slice(&[0, 0]);
            let check = ipv4_checksum(&self.bytes[offset..offset + IPV4_HLEN]);
            self.bytes[offset + 10..offset + 12].copy_from_slice(&check.to_be_bytes());
            let protocol = self.bytes[offset + 9];
            innermost = Some(offset);
            let next = offset + IPV4_HLEN;
            if protocol == IPPROTO_UDP && next + UDP_HLEN <= self.bytes.len() {
                let len = (self.bytes.len() - next) as u16;
                self.bytes[next + 4..next + 6].copy_from_slice(&len.to_be_bytes());
                // VXLAN: the inner IPv4 header follows the UDP, VXLAN and inner Ethernet headers.
                offset = next + UDP_HLEN + VXLAN_HLEN + ETH_HLEN;
            } else if protocol == IPPROTO_IPIP {
                offset = next;
            } else {
                break;
            }
        }
        if let Some(ip) = innermost {
            set_l4_checksum(&mut self.bytes, ip);
        }
        self.bytes
    }

    fn set_ether_type(&mut self, ether_type: u16) {
        self.bytes[12..14].copy_from_slice(&ether_type.to_be_bytes());
    }
}

/// The RFC 1071 checksum of an IPv4 header (with its check field included).
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    dataplane::trace::checksum(header)
}

/// Reads a big-endian u16 at `offset`.
pub fn be16(bytes: &[u8], offset: usize) -> u16 {
    u16::from_be_bytes([bytes[offset], bytes[offset + 1]])
}

/// Offset of the transport checksum for `protocol`, if it has one we fill.
fn l4_checksum_offset(protocol: u8) -> Option<usize> {
    match protocol {
        IPPROTO_TCP => Some(16),
        IPPROTO_UDP => Some(6),
        IPPROTO_ICMP => Some(2),
        _ => None,
    }
}

/// The transport checksum of the IPv4 packet at `ip` as it should be (with the pseudo-header
/// for TCP and UDP), computed over the bytes with the checksum field taken as zero.
pub fn l4_checksum(bytes: &[u8], ip: usize) -> Option<u16> {
    let protocol = bytes[ip + 9];
    let field = l4_checksum_offset(protocol)?;
    let l4 = ip + IPV4_HLEN;
    let mut segment = bytes.get(l4..)?.to_vec();
    if segment.len() < field + 2 {
        return None;
    }
    segment[field..field + 2].copy_from_slice(&[0, 0]);
    let src = bytes.get(ip + 12..ip + 16)?.try_into().ok()?;
    let dst = bytes.get(ip + 16..ip + 20)?.try_into().ok()?;
    Some(dataplane::trace::transport_checksum(src, dst, protocol, &segment))
}

/// Whether the transport checksum of the IPv4 packet at `ip` is right.
pub fn l4_checksum_ok(bytes: &[u8], ip: usize) -> bool {
    let protocol = bytes[ip + 9];
    let Some(field) = l4_checksum_offset(protocol) else { return false };
    let at = ip + IPV4_HLEN + field;
    Some(be16(bytes, at)) == l4_checksum(bytes, ip)
}

fn set_l4_checksum(bytes: &mut [u8], ip: usize) {
    let protocol = bytes[ip + 9];
    if let (Some(field), Some(sum)) = (l4_checksum_offset(protocol), l4_checksum(bytes, ip)) {
        let at = ip + IPV4_HLEN + field;
        bytes[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    }
}

/// Recomputes the checksum of the (option-less) IPv4 header at `ip`, after a test edited it.
pub fn set_ipv4_checksum(bytes: &mut [u8], ip: usize) {
    bytes[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
    let check = ipv4_checksum(&bytes[ip..ip + IPV4_HLEN]);
    bytes[ip + 10..ip + 12].copy_from_slice(&check.to_be_bytes());
}
