//! `xdp_uplink`: the uplink's first look at a packet, before the kernel builds an skb for it.
//!
//! It refuses the tunnel packets `from_uplink` would refuse (a non-peer, a wrong VNI, IP-in-IP
//! fragments, malformed or cut-short headers), with the same decision (`tunnel::classify`) and the same drop
//! reasons, so a flood of them costs no skb; everything else goes on to the TC programs as it
//! came, which decide as they did without XDP.

use aya_ebpf::programs::XdpContext;
use dataplane_common::Stat;

use crate::{route, tunnel};

/// The counter of a packet handed on, or the reason to drop it.
#[inline(always)]
pub fn xdp_uplink(ctx: &XdpContext) -> Result<Stat, Stat> {
    // Without a configuration the agent has not started: TC leaves everything alone, so XDP does.
    let Ok(node) = route::node_config() else {
        return Ok(Stat::XdpPassed);
    };
    tunnel::classify(ctx, &node)?;
    Ok(Stat::XdpPassed)
}
