//! Internet checksums (RFC 1071) of the headers the programs write.

use crate::packet::Ipv4Hdr;

/// The checksum of an IPv4 header without options; its `check` field must be zero.
#[inline(always)]
pub fn ipv4_header(header: &Ipv4Hdr) -> [u8; 2] {
    // SAFETY: Ipv4Hdr is #[repr(C)], 20 bytes of plain bytes with no padding.
    let bytes: &[u8; 20] = unsafe { &*(header as *const Ipv4Hdr as *const [u8; 20]) };
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < bytes.len() {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    // Two folds are enough for 10 words: the first leaves at most 0x1_fffe.
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}
