//! Header layouts and the only place the programs read or write packet bytes.
//!
//! The TC programs read and write the linear packet data between `data` and `data_end` directly
//! where the bytes are there (headers nearly always are), and go through
//! `bpf_skb_load_bytes`/`bpf_skb_store_bytes` (via [`TcContext`]) otherwise, which reach paged
//! data too; the XDP program reads its (linear) frame directly. Either way an access past the end
//! fails and the caller turns that into a counted drop. Multi-byte fields are kept as byte arrays in
//! network order so no field is ever read with the wrong endianness or alignment.

use aya_ebpf::programs::{TcContext, XdpContext};
use dataplane_common::{net::ETH_ALEN, Ipv4Bytes, MacBytes, Stat};

/// An Ethernet header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    /// Destination MAC.
    pub dst: MacBytes,
    /// Source MAC.
    pub src: MacBytes,
    /// EtherType, network order.
    pub ether_type: [u8; 2],
}

impl EthHdr {
    /// The EtherType as a number.
    pub fn ether_type(&self) -> u16 {
        u16::from_be_bytes(self.ether_type)
    }
}

/// An IPv4 header without options.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    /// Version (4) and IHL.
    pub version_ihl: u8,
    /// DSCP and ECN.
    pub tos: u8,
    /// Total length, network order.
    pub tot_len: [u8; 2],
    /// Identification, network order.
    pub id: [u8; 2],
    /// Flags and fragment offset, network order.
    pub frag_off: [u8; 2],
    /// Time to live.
    pub ttl: u8,
    /// Protocol of the payload.
    pub protocol: u8,
    /// Header checksum, network order.
    pub check: [u8; 2],
    /// Source address.
    pub src: Ipv4Bytes,
    /// Destination address.
    pub dst: Ipv4Bytes,
}

impl Ipv4Hdr {
    /// Header length in 32-bit words.
    pub fn ihl(&self) -> u8 {
        self.version_ihl & 0x0f
    }

    /// The IP version field.
    pub fn version(&self) -> u8 {
        self.version_ihl >> 4
    }

    /// Flags and fragment offset as a number.
    pub fn frag_off(&self) -> u16 {
        u16::from_be_bytes(self.frag_off)
    }
}

/// A UDP header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UdpHdr {
    /// Source port, network order.
    pub src_port: [u8; 2],
    /// Destination port, network order.
    pub dst_port: [u8; 2],
    /// Length of header and payload, network order.
    pub len: [u8; 2],
    /// Checksum, network order (0: none, as the kernel sends VXLAN over IPv4).
    pub check: [u8; 2],
}

/// A VXLAN header (RFC 7348).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct VxlanHdr {
    /// Flags: the "I" bit says the VNI is valid.
    pub flags: u8,
    /// Reserved.
    pub reserved1: [u8; 3],
    /// The VXLAN network identifier, network order.
    pub vni: [u8; 3],
    /// Reserved.
    pub reserved2: u8,
}

/// An ARP packet for Ethernet and IPv4.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ArpEthIpv4 {
    /// Hardware type, network order.
    pub htype: [u8; 2],
    /// Protocol type, network order.
    pub ptype: [u8; 2],
    /// Hardware address length.
    pub hlen: u8,
    /// Protocol address length.
    pub plen: u8,
    /// Operation, network order.
    pub op: [u8; 2],
    /// Sender MAC.
    pub sha: [u8; ETH_ALEN],
    /// Sender IPv4 address.
    pub spa: Ipv4Bytes,
    /// Target MAC.
    pub tha: [u8; ETH_ALEN],
    /// Target IPv4 address.
    pub tpa: Ipv4Bytes,
}

/// Past this offset a read or write always takes the helper: a bound the verifier needs to accept a
/// variable offset into the packet (every header the programs read lies well inside it).
const DIRECT_ACCESS_LIMIT: usize = 512;

/// Reads a `T` at `offset`; a packet too short for it is malformed.
///
/// Straight from the linear area between `data` and `data_end` when the bytes are there (headers
/// nearly always are), else through `bpf_skb_load_bytes`, which also reaches paged data: the same
/// bytes either way, the direct read without a helper call and a copy.
#[inline(always)]
pub fn read<T: Copy>(ctx: &TcContext, offset: usize) -> Result<T, Stat> {
    let start = ctx.data();
    if offset < DIRECT_ACCESS_LIMIT && start + offset + core::mem::size_of::<T>() <= ctx.data_end() {
        // SAFETY: the span lies inside the linear packet data (checked just above, as the verifier
        // demands); headers have no alignment in a frame, hence the unaligned read.
        return Ok(unsafe { core::ptr::read_unaligned((start + offset) as *const T) });
    }
    ctx.load::<T>(offset).map_err(|_| Stat::DropMalformed)
}

/// Writes `value` at `offset`: straight into the linear data when the span is there, else through
/// `bpf_skb_store_bytes`. A helper call costs about as much as a map lookup here (the bench's
/// probes), and a packet's path writes two or three headers.
///
/// Direct writes are safe on a cloned skb: for a program that writes packet data, the verifier
/// adds a prologue that makes the head private first (`bpf_unclone_prologue`).
#[inline(always)]
pub fn write<T: Copy>(ctx: &TcContext, offset: usize, value: &T) -> Result<(), Stat> {
    let start = ctx.data();
    if offset < DIRECT_ACCESS_LIMIT && start + offset + core::mem::size_of::<T>() <= ctx.data_end() {
        // SAFETY: the span lies inside the linear packet data (checked just above, as the verifier
        // demands); headers have no alignment in a frame, hence the unaligned write.
        unsafe { core::ptr::write_unaligned((start + offset) as *mut T, *value) };
        return Ok(());
    }
    ctx.store(offset, value, 0).map_err(|_| Stat::DropPacketAccess)
}

/// Stores a prebuilt header of `N` words at `offset` (frame bytes `offset - 2 .. offset + 8 * N +
/// tail`): `head` in the two bytes before the words, then the words, then `tail` after them when
/// given. One store instruction per word where the span is in the linear data; else the same bytes
/// through `bpf_skb_store_bytes`.
///
/// Why not [`write`]: a header has no alignment in a frame, so `write_unaligned` compiles to one
/// load and one store per byte on this target (about 300 instructions for VXLAN's 50 bytes). The
/// BPF instruction set stores a word at any address in packet data on the architectures where
/// the verifier does not demand strict alignment (x86-64, arm64), and the words are stored with
/// inline BPF assembly so that the compiler is told no alignment it could rely on.
#[inline(always)]
pub fn write_words<const N: usize>(
    ctx: &TcContext,
    offset: usize,
    head: u16,
    words: &[u64; N],
    tail: Option<u16>,
) -> Result<(), Stat> {
    let start = ctx.data();
    let tail_len = if tail.is_some() { 2 } else { 0 };
    let end = offset + 8 * N + tail_len;
    if end < DIRECT_ACCESS_LIMIT && start + end <= ctx.data_end() {
        let at = start + offset;
        // SAFETY: every store lies inside the linear packet data, checked just above as the verifier
        // demands (`offset >= 2`: the head's two bytes are inside it too).
        unsafe {
            store_u16(at - 2, head);
            let mut i = 0;
            while i < N {
                store_u64(at + 8 * i, words[i]);
                i += 1;
            }
            if let Some(tail) = tail {
                store_u16(at + 8 * N, tail);
            }
        }
        return Ok(());
    }
    // Paged data: the same bytes in frame order, through the helper.
    let head_bytes = head.to_ne_bytes();
    ctx.store(offset - 2, &head_bytes, 0).map_err(|_| Stat::DropPacketAccess)?;
    let mut i = 0;
    while i < N {
        ctx.store(offset + 8 * i, &words[i].to_ne_bytes(), 0).map_err(|_| Stat::DropPacketAccess)?;
        i += 1;
    }
    if let Some(tail) = tail {
        ctx.store(offset + 8 * N, &tail.to_ne_bytes(), 0).map_err(|_| Stat::DropPacketAccess)?;
    }
    Ok(())
}

/// One BPF 8-byte store of `value` at `address`.
///
/// # Safety
/// `address` must be a packet pointer the verifier knows has 8 bytes behind it.
#[inline(always)]
unsafe fn store_u64(address: usize, value: u64) {
    // SAFETY: the caller's promise; a plain store instruction with no other effect.
    unsafe { core::arch::asm!("*(u64 *)({0} + 0) = {1}", in(reg) address, in(reg) value, options(nostack)) };
}

/// One BPF 2-byte store of `value` at `address`.
///
/// # Safety
/// `address` must be a packet pointer the verifier knows has 2 bytes behind it.
#[inline(always)]
unsafe fn store_u16(address: usize, value: u16) {
    // SAFETY: the caller's promise; a plain store instruction with no other effect.
    unsafe { core::arch::asm!("*(u16 *)({0} + 0) = {1}", in(reg) address, in(reg) u64::from(value), options(nostack)) };
}

/// Read access to a frame, so that a decision (`tunnel::classify`) is written once for the TC
/// and the XDP programs.
pub trait Frame {
    /// Reads a `T` at `offset`; a frame too short for it is malformed.
    fn read_at<T: Copy>(&self, offset: usize) -> Result<T, Stat>;
    /// The frame's length in bytes, from the Ethernet header on.
    fn frame_len(&self) -> usize;
}

impl Frame for TcContext {
    #[inline(always)]
    fn read_at<T: Copy>(&self, offset: usize) -> Result<T, Stat> {
        read(self, offset)
    }

    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.len() as usize
    }
}

impl Frame for XdpContext {
    #[inline(always)]
    fn read_at<T: Copy>(&self, offset: usize) -> Result<T, Stat> {
        let start = self.data();
        if start + offset + core::mem::size_of::<T>() > self.data_end() {
            return Err(Stat::DropMalformed);
        }
        // SAFETY: the span lies inside the frame (checked just above, as the verifier demands);
        // headers have no alignment in a frame, hence the unaligned read.
        Ok(unsafe { core::ptr::read_unaligned((start + offset) as *const T) })
    }

    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.data_end() - self.data()
    }
}
