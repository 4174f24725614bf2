//! Events for `dataplane monitor`: each decision the programs count is also written to the events
//! ring buffer, with the packet's first bytes, while a reader holds the lease.
//!
//! Without a reader the cost is one load from a global variable and a compare at the programs'
//! exit (the lease's deadline is 0 once a reader leaves): the lease lives in a data section of its
//! own, which the verifier turns into a direct pointer, so no map lookup is made. A killed
//! reader's lease runs out, and the first packet after that sets the deadline to 0 again.

use aya_ebpf::{
    bindings::{__sk_buff, xdp_md},
    cty::c_void,
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    },
    programs::{TcContext, XdpContext},
    Global,
};
use dataplane_common::{
    monitor::{lease_flags, MonitorCount, MONITOR_CAPTURE_BYTES},
    monitor_lease_section, MonitorLease, Program, Stat,
};

use crate::maps::{MONITOR_COUNTS, MONITOR_EVENTS};

/// Whether the programs carry the hook at all (`dataplane_common::monitor::MONITOR_HOOK_GLOBAL`);
/// only the bench's baseline turns it off.
#[unsafe(no_mangle)]
static MONITOR_HOOK: Global<u8> = Global::new(1);

/// The reader's lease (`dataplane_common::monitor::MONITOR_LEASE_SECTION`, pinned by the agent as
/// `MONITOR_LEASE_MAP`). A global rather than a map slot: reading it is one load, where a lookup
/// cost a few nanoseconds on every packet. Read and written volatile only, since a reader in
/// userspace changes it behind the compiler's back.
#[unsafe(no_mangle)]
#[unsafe(link_section = monitor_lease_section!())]
static mut MONITOR_LEASE: MonitorLease = MonitorLease::NONE;

/// The time of the decision if the reader wants it: a lease runs, and it asks for every decision
/// or this one is a drop.
#[inline(always)]
fn wanted(stat: Stat) -> Option<u64> {
    if MONITOR_HOOK.load() == 0 {
        return None;
    }
    let lease = &raw mut MONITOR_LEASE;
    // SAFETY: the global is this object's own, valid for its whole life; volatile, so that the
    // compiler neither folds it to its initial value nor caches it.
    let until_ns = unsafe { core::ptr::read_volatile(&raw const (*lease).until_ns) };
    // Decided before the clock is read: without a reader, no helper is called at all.
    if until_ns == 0 {
        return None;
    }
    // SAFETY: as above.
    let flags = unsafe { core::ptr::read_volatile(&raw const (*lease).flags) };
    if !stat.is_drop() && flags & lease_flags::ALL_DECISIONS == 0 {
        return None;
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now > until_ns {
        // The reader was killed (one that stops clears its lease): forget the lease, so that the
        // packets after this one do not read the clock either. A reader renews its lease long
        // before it runs out, so this never erases a live one (at worst a reader that stalled
        // past its lease loses events until its next renewal).
        // SAFETY: the global is this object's own; a torn write cannot happen to an aligned u64.
        unsafe { core::ptr::write_volatile(&raw mut (*lease).until_ns, 0) };
        return None;
    }
    Some(now)
}

/// How many of a packet's `len` bytes an event carries, in a form the verifier can bound to
/// 1..=MONITOR_CAPTURE_BYTES (the load helpers refuse a length it cannot bound, or zero).
#[inline(always)]
fn capture_len(len: usize) -> Option<u32> {
    if len == 0 {
        return None;
    }
    let last = if len > MONITOR_CAPTURE_BYTES { MONITOR_CAPTURE_BYTES - 1 } else { len - 1 } as u64;
    // The compiler knows `last` < MONITOR_CAPTURE_BYTES and would drop the mask below, but the
    // verifier loses that bound on the way: a volatile read hides it from the compiler, so the
    // mask stays and gives the verifier its bound.
    // SAFETY: reading a local variable.
    let last = unsafe { core::ptr::read_volatile(&last) };
    Some(((last & (MONITOR_CAPTURE_BYTES as u64 - 1)) + 1) as u32)
}

/// One more in the monitor's `slot`.
#[inline(always)]
fn count(slot: MonitorCount) {
    if let Some(counter) = MONITOR_COUNTS.get_ptr_mut(slot.index()) {
        // SAFETY: a per-CPU slot is only touched by this CPU, and programs do not nest on it.
        unsafe { *counter += 1 };
    }
}

/// Writes one event: the decision, and as many of the packet's first bytes as `load` copies into
/// the event's header (it returns whether the copy succeeded).
#[inline(always)]
fn emit(
    now: u64,
    program: Program,
    stat: Stat,
    ifindex: u32,
    packet_len: usize,
    load: impl FnOnce(*mut c_void, u32) -> bool,
) {
    let Some(mut entry) = MONITOR_EVENTS.reserve(0) else {
        count(MonitorCount::Lost);
        return;
    };
    let event = entry.as_mut_ptr();
    let captured = capture_len(packet_len);
    // SAFETY: `event` points at the reserved entry, which is ours to write until it is submitted;
    // `load` writes at most `captured` (<= MONITOR_CAPTURE_BYTES) bytes into its header.
    unsafe {
        (*event).time_ns = now;
        (*event).ifindex = ifindex;
        (*event).program = program as u32;
        (*event).stat = stat.index();
        (*event).packet_len = packet_len as u32;
        (*event)._pad = 0;
        let header = (*event).header.as_mut_ptr().cast::<c_void>();
        (*event).captured = captured.filter(|&len| load(header, len)).unwrap_or(0);
    }
    entry.submit(0);
    count(MonitorCount::Emitted);
}

/// Emits a TC program's decision while a reader holds the lease.
#[inline(always)]
pub fn tc(ctx: &TcContext, program: Program, stat: Stat, ifindex: u32) {
    if let Some(now) = wanted(stat) {
        emit_tc(ctx.skb.skb, now, program, stat, ifindex);
    }
}

/// The emission of [`tc`], out of line: a function of its own (a BPF subprogram) keeps its
/// registers out of the programs' bodies, which the verifier already finds crowded.
#[inline(never)]
fn emit_tc(skb: *mut __sk_buff, now: u64, program: Program, stat: Stat, ifindex: u32) {
    // SAFETY: reading a field of this program's own __sk_buff context.
    let packet_len = unsafe { (*skb).len } as usize;
    emit(now, program, stat, ifindex, packet_len, |header, len| {
        // SAFETY: copies `len` bytes from the packet's start into the event (see `emit`).
        unsafe { bpf_skb_load_bytes(skb as *const c_void, 0, header, len) == 0 }
    });
}

/// Emits the XDP program's decision while a reader holds the lease.
#[inline(always)]
pub fn xdp(ctx: &XdpContext, program: Program, stat: Stat, ifindex: u32) {
    if let Some(now) = wanted(stat) {
        emit_xdp(ctx.ctx, now, program, stat, ifindex);
    }
}

/// The emission of [`xdp`], out of line as [`emit_tc`] is.
#[inline(never)]
fn emit_xdp(xdp_md: *mut xdp_md, now: u64, program: Program, stat: Stat, ifindex: u32) {
    // SAFETY: reading fields of this program's own xdp_md context.
    let packet_len = unsafe { (*xdp_md).data_end.wrapping_sub((*xdp_md).data) } as usize;
    emit(now, program, stat, ifindex, packet_len, |header, len| {
        // SAFETY: copies `len` bytes from the frame's start into the event (see `emit`).
        unsafe { bpf_xdp_load_bytes(xdp_md, 0, header, len) == 0 }
    });
}
