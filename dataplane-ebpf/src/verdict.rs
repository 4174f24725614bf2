//! What a program decided, and the one place where decisions and drops are counted (and, when
//! the agent turns kernel logs on, logged; when `dataplane monitor` reads, emitted).

use aya_ebpf::{
    bindings::{
        xdp_action::{XDP_DROP, XDP_PASS},
        TC_ACT_OK, TC_ACT_SHOT,
    },
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::{debug, trace};
use dataplane_common::{Program, Stat};

use crate::{maps::STATS, monitor};

/// A decision: the TC action to return and the stats slot that counts it.
#[derive(Clone, Copy)]
pub struct Verdict {
    /// TC action: `TC_ACT_OK`, or the value a redirect helper returned.
    pub action: i32,
    /// The decision's counter.
    pub stat: Stat,
}

impl Verdict {
    /// Hand the packet to the kernel's stack unchanged.
    pub const fn pass() -> Self {
        Verdict { action: TC_ACT_OK as i32, stat: Stat::PassToStack }
    }
}

/// The body of every program returns this: a decision, or the reason to drop the packet.
pub type Outcome = Result<Verdict, Stat>;

/// Counts the outcome in the stats map, logs it (drops at debug, decisions at trace; both off
/// unless the agent raised AYA_LOG_LEVEL) and returns the TC action: the programs' only exit.
///
/// The log record is three numbers, `<program> <stat> <ifindex>`, which the agent's log bridge
/// (`backend::bpf::DecisionRecord`) turns into names. Why not the names here: the verifier loses
/// the stat's constant value on its way into aya-log's writer and then walks every arm of
/// `Stat::name()` with its own string copy, which took the programs past its 1M-instruction limit.
#[inline(always)]
pub fn finish(ctx: &TcContext, program: Program, outcome: Outcome) -> i32 {
    // SAFETY: reading a field of this program's own __sk_buff context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let (action, stat) = match outcome {
        Ok(verdict) => {
            trace!(ctx, "{} {} {}", program as u32, verdict.stat.index(), ifindex);
            (verdict.action, verdict.stat)
        }
        Err(reason) => {
            debug!(ctx, "{} {} {}", program as u32, reason.index(), ifindex);
            (TC_ACT_SHOT as i32, reason)
        }
    };
    count(stat);
    monitor::tc(ctx, program, stat, ifindex);
    action
}

/// [`finish`] for the XDP program: counts and logs the same way, returns `XDP_PASS` for a
/// packet handed on and `XDP_DROP` for a refused one.
#[inline(always)]
pub fn finish_xdp(ctx: &XdpContext, program: Program, outcome: Result<Stat, Stat>) -> u32 {
    // SAFETY: reading a field of this program's own xdp_md context.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let (action, stat) = match outcome {
        Ok(stat) => {
            trace!(ctx, "{} {} {}", program as u32, stat.index(), ifindex);
            (XDP_PASS, stat)
        }
        Err(reason) => {
            debug!(ctx, "{} {} {}", program as u32, reason.index(), ifindex);
            (XDP_DROP, reason)
        }
    };
    count(stat);
    monitor::xdp(ctx, program, stat, ifindex);
    action
}

/// One more in `stat`'s slot of the stats map.
#[inline(always)]
fn count(stat: Stat) {
    if let Some(counter) = STATS.get_ptr_mut(stat.index()) {
        // SAFETY: a per-CPU slot is only touched by this CPU, and programs do not nest on it.
        unsafe { *counter += 1 };
    }
}
