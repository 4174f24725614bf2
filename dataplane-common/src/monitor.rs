//! `dataplane monitor`: the events the programs write to a ring buffer while a reader holds a
//! lease, and the maps that carry them.
//!
//! The programs emit nothing unless a reader has written a lease whose deadline (kernel monotonic
//! time, `bpf_ktime_get_ns`) lies ahead; a reader refreshes it while it runs, so one that is killed
//! stops the cost within [`MONITOR_LEASE_NS`]. An event carries the first bytes of the packet as
//! the program left it, and the reader decodes the headers (outer and inner) from them.

use core::mem::size_of;

/// Ring buffer of [`MonitorEvent`]s, pinned beside the other maps.
pub const MONITOR_EVENTS_MAP: &str = "monitor_events_v1";
/// Size of the events ring buffer in bytes (a power-of-two number of pages): about 5,000 events
/// queued before the programs start counting lost ones.
pub const MONITOR_EVENTS_BYTES: u32 = 1 << 20;

/// The reader's [`MonitorLease`], pinned under this name: the one-slot array that holds the
/// programs' data section [`MONITOR_LEASE_SECTION`]. (v1 was a BTF array the programs looked up
/// at every exit; v2 is read as plain memory, with no lookup.)
pub const MONITOR_LEASE_MAP: &str = "monitor_lease_v2";

/// The pin name of the lease before v2, removed when an agent starts and by cleanup.
pub const MONITOR_LEASE_MAP_V1: &str = "monitor_lease_v1";

/// The data section that holds the programs' lease, as a literal for `#[link_section]`.
#[macro_export]
macro_rules! monitor_lease_section {
    () => {
        ".bss.monitor"
    };
}

/// The data section (and so the map aya makes of it) that holds the programs' lease: a global
/// variable, which the programs read without a map lookup; the agent pins it as
/// [`MONITOR_LEASE_MAP`], so a reader writes it as it would any one-slot array.
pub const MONITOR_LEASE_SECTION: &str = monitor_lease_section!();

/// Per-CPU array of `u64` counters of the monitor itself, one slot per [`MonitorCount`].
pub const MONITOR_COUNTS_MAP: &str = "monitor_counts_v1";
/// Slots of the monitor's counters map.
pub const MONITOR_COUNT_SLOTS: u32 = 2;

/// How far ahead a reader sets its lease's deadline; it refreshes the lease several times within
/// this, so the deadline passes only when the reader is gone.
pub const MONITOR_LEASE_NS: u64 = 3_000_000_000;

/// Load-time global of the programs (a `u8`): 1, the object's value, keeps the monitor's hook at
/// their exit; 0 leaves it out (the verifier removes the code the constant decides). The bench
/// loads the programs both ways to measure what the hook costs without a reader.
pub const MONITOR_HOOK_GLOBAL: &str = "MONITOR_HOOK";

/// Bytes of the packet copied into an event: enough for Ethernet, IPv4, UDP and VXLAN outside and
/// Ethernet, IPv4 and the ports inside (92 bytes without IP options).
pub const MONITOR_CAPTURE_BYTES: usize = 128;

/// A slot of the monitor's counters map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MonitorCount {
    /// Events written to the ring buffer.
    Emitted = 0,
    /// Events not written because the ring buffer was full: the reader fell behind.
    Lost = 1,
}

impl MonitorLease {
    /// No reader: the programs emit nothing.
    pub const NONE: MonitorLease = MonitorLease { until_ns: 0, reader_pid: 0, flags: 0 };
}

impl MonitorCount {
    /// The slot's index in the counters map.
    pub const fn index(self) -> u32 {
        self as u32
    }
}

/// Bits of [`MonitorLease::flags`].
pub mod lease_flags {
    /// Emit every decision, not only drops.
    pub const ALL_DECISIONS: u32 = 1 << 0;
}

/// The value of the lease map's one slot: while `until_ns` lies ahead, the programs emit events.
/// It is the whole of [`MONITOR_LEASE_SECTION`], so its size is that map's value size.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct MonitorLease {
    /// Kernel monotonic time (ns) until which the reader wants events; 0: no reader.
    pub until_ns: u64,
    /// Process id of the reader (as its own namespace sees it), so a second reader can say who
    /// holds the lease.
    pub reader_pid: u32,
    /// Bits of [`lease_flags`].
    pub flags: u32,
}
const _: () = assert!(size_of::<MonitorLease>() == 16);

/// Which program wrote an event ([`MonitorEvent::program`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// [`crate::PROG_FROM_WORKLOAD`].
    FromWorkload = 0,
    /// [`crate::PROG_FROM_UPLINK`].
    FromUplink = 1,
    /// [`crate::PROG_TO_WORKLOAD`].
    ToWorkload = 2,
    /// [`crate::PROG_TO_UPLINK`].
    ToUplink = 3,
    /// [`crate::PROG_VXLAN_ANCHOR`].
    VxlanAnchor = 4,
    /// [`crate::PROG_XDP_UPLINK`].
    XdpUplink = 5,
}

impl Program {
    /// Every program, by index.
    pub const ALL: [Program; 6] = [
        Program::FromWorkload,
        Program::FromUplink,
        Program::ToWorkload,
        Program::ToUplink,
        Program::VxlanAnchor,
        Program::XdpUplink,
    ];

    /// The program's name in the object (and in pinned links and logs).
    pub const fn name(self) -> &'static str {
        match self {
            Program::FromWorkload => crate::PROG_FROM_WORKLOAD,
            Program::FromUplink => crate::PROG_FROM_UPLINK,
            Program::ToWorkload => crate::PROG_TO_WORKLOAD,
            Program::ToUplink => crate::PROG_TO_UPLINK,
            Program::VxlanAnchor => crate::PROG_VXLAN_ANCHOR,
            Program::XdpUplink => crate::PROG_XDP_UPLINK,
        }
    }

    /// The program an event's `program` field names, if any.
    pub fn from_index(index: u32) -> Option<Program> {
        Program::ALL.get(index as usize).copied()
    }
}

/// One decision on one packet, as a program wrote it to the events ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct MonitorEvent {
    /// Kernel monotonic time of the decision (ns).
    pub time_ns: u64,
    /// The interface the program runs on (the packet's `ifindex` at TC, `ingress_ifindex` at XDP).
    pub ifindex: u32,
    /// A [`Program`].
    pub program: u32,
    /// The [`crate::Stat`] slot that counted the decision or the drop.
    pub stat: u32,
    /// The packet's length in bytes.
    pub packet_len: u32,
    /// How many bytes of `header` hold the packet's first bytes.
    pub captured: u32,
    /// Explicit padding; always zero.
    pub _pad: u32,
    /// The packet's first bytes, from its Ethernet header on, as the program left it.
    pub header: [u8; MONITOR_CAPTURE_BYTES],
}
const _: () = assert!(size_of::<MonitorEvent>() == 32 + MONITOR_CAPTURE_BYTES);
// The programs bound the copy length with a mask of `MONITOR_CAPTURE_BYTES - 1`.
const _: () = assert!(MONITOR_CAPTURE_BYTES.is_power_of_two());

#[cfg(feature = "user")]
mod user {
    // SAFETY: #[repr(C)] with explicit padding and only integer fields: every byte pattern is valid.
    unsafe impl aya::Pod for super::MonitorLease {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::MonitorEvent {}
}
