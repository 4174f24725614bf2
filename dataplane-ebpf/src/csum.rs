//! Internet checksums (RFC 1071) of the headers the programs write.

use crate::packet::Ipv4Hdr;

/// The one's-complement sum of `value`'s bytes as big-endian 16-bit words (an even size).
#[inline(always)]
pub fn sum_words<T: Copy>(value: &T) -> u32 {
    let size = core::mem::size_of::<T>();
    // SAFETY: `value` is a plain #[repr(C)] byte structure of `size` bytes without padding.
    let bytes = unsafe { core::slice::from_raw_parts(value as *const T as *const u8, size) };
    let mut sum: u32 = 0;
    let mut i = 0;
    while i + 1 < size {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}

/// Folds a sum into the 16-bit checksum field's bytes.
#[inline(always)]
pub fn fold(mut sum: u32) -> [u8; 2] {
    // Two folds are enough for the short headers and updates summed here.
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}

/// `check` after the words it covers changed from `old` to `new` (both an even size): RFC 1624's
/// incremental update (eqn. 3), so that a changed TTL or address costs a few additions instead of
/// a pass over the whole header.
#[inline(always)]
pub fn update<T: Copy>(check: [u8; 2], old: &T, new: &T) -> [u8; 2] {
    let words = (core::mem::size_of::<T>() / 2) as u32;
    // ~HC + sum(~m) + sum(m'), where sum(~m) = words * 0xffff - sum(m) in one's complement.
    let sum = u32::from(!u16::from_be_bytes(check)) + words * 0xffff - sum_words(old) + sum_words(new);
    fold(sum)
}

/// The checksum of an IPv4 header without options; its `check` field must be zero.
#[inline(always)]
pub fn ipv4_header(header: &Ipv4Hdr) -> [u8; 2] {
    fold(sum_words(header))
}
