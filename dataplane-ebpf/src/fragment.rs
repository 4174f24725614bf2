//! Fragments of translated datagrams: the first fragment (offset 0, more fragments) carries the
//! ports and is translated with the flow's conntrack entry; it records the address it got, keyed
//! by the datagram's identification, addresses and protocol, and the later fragments (which carry
//! no ports) look it up and get the same address.
//!
//! The table is an LRU hash of `FRAGMENTS_MAX_ENTRIES`: a flood of first fragments that never
//! complete evicts the oldest datagrams and never grows it. An entry is kept until it is evicted
//! or outlives the kernel's own reassembly timeout, not removed at the last fragment, since the
//! network may deliver a middle fragment after the last one.

use dataplane_common::{
    net::{IPV4_FRAG_OFFSET_MASK, IPV4_MF},
    FragmentKey, FragmentNat,
};

use crate::{maps::FRAGMENTS, packet::Ipv4Hdr};

/// A later fragment: no transport header, so no ports to find its flow by.
#[inline(always)]
pub fn is_later(ip: &Ipv4Hdr) -> bool {
    ip.frag_off() & IPV4_FRAG_OFFSET_MASK != 0
}

/// The first fragment of a datagram that has more: the one whose translation the later ones take.
#[inline(always)]
pub fn is_first(ip: &Ipv4Hdr) -> bool {
    ip.frag_off() & (IPV4_MF | IPV4_FRAG_OFFSET_MASK) == IPV4_MF
}

/// The datagram's key, from the header as it arrived (before any translation).
#[inline(always)]
fn key(ip: &Ipv4Hdr, direction: u8) -> FragmentKey {
    FragmentKey { src: ip.src, dst: ip.dst, id: u16::from_be_bytes(ip.id), protocol: ip.protocol, direction }
}

/// Records that the datagram of the first fragment `ip` (as it arrived) was translated to `addr`.
/// A failed insert is not the packet's failure: the first fragment goes on translated, and its
/// later fragments are counted by the rule that meets fragments of no known datagram.
#[inline(always)]
pub fn remember(ip: &Ipv4Hdr, direction: u8, addr: [u8; 4], now: u64) {
    let entry = FragmentNat { addr, _pad: 0, first_ns: now };
    let _ = FRAGMENTS.insert(&key(ip, direction), &entry, 0);
}

/// The address the first fragment of the later fragment `ip`'s datagram was translated to, if it
/// was seen and its datagram has not timed out.
#[inline(always)]
pub fn translation(ip: &Ipv4Hdr, direction: u8, now: u64) -> Option<[u8; 4]> {
    let entry = FRAGMENTS.get_ptr(&key(ip, direction))?;
    // SAFETY: the pointer comes from a successful lookup and is read at once.
    let entry = unsafe { *entry };
    if entry.expired(now) {
        return None;
    }
    Some(entry.addr)
}
