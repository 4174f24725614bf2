//! The kernel programs of the dataplane. This file holds only the entry points; each concern
//! lives in its own module.
#![no_std]
#![no_main]
// Word stores into packet data at any alignment (`packet::write_words`) need inline BPF assembly.
#![expect(unstable_features, reason = "inline BPF assembly is unstable")]
#![feature(asm_experimental_arch)]

mod anchor;
mod arp;
mod conntrack;
mod csum;
mod fragment;
mod icmp;
mod ipip;
mod ipv6;
mod maps;
mod monitor;
mod nat;
mod ndp;
mod packet;
mod route;
mod tunnel;
mod uplink;
mod uplink_xdp;
mod verdict;
mod vxlan;
mod workload;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use dataplane_common::Program;

/// XDP of the node's uplink: drops the tunnel packets `from_uplink` would refuse before an skb
/// exists, and passes everything else on to it.
#[xdp]
pub fn xdp_uplink(ctx: XdpContext) -> u32 {
    verdict::finish_xdp(&ctx, Program::XdpUplink, uplink_xdp::xdp_uplink(&ctx))
}

/// TC ingress of every workload interface (`caliXXXXXXXXXXX`): traffic leaving a pod.
#[classifier]
pub fn from_workload(ctx: TcContext) -> i32 {
    verdict::finish(&ctx, Program::FromWorkload, workload::from_workload(&ctx))
}

/// TC ingress of the node's uplink: tunnel traffic from peer nodes.
#[classifier]
pub fn from_uplink(ctx: TcContext) -> i32 {
    verdict::finish(&ctx, Program::FromUplink, uplink::from_uplink(&ctx))
}

/// TC egress of every workload interface: what the node's stack sends into a pod.
#[classifier]
pub fn to_workload(ctx: TcContext) -> i32 {
    verdict::finish(&ctx, Program::ToWorkload, uplink::to_workload(&ctx))
}

/// TC egress of the node's uplink: the host's own traffic to pods on other nodes.
#[classifier]
pub fn to_uplink(ctx: TcContext) -> i32 {
    verdict::finish(&ctx, Program::ToUplink, uplink::to_uplink(&ctx))
}

/// TC ingress of the VXLAN GRO anchor device (`vxlan.dataplane`). The device exists so that its
/// UDP socket lets GRO merge VXLAN packets before `from_uplink` decapsulates them; what it
/// decapsulates itself is a peer's datagram the underlay fragmented (delivered) or came past
/// `from_uplink` (dropped).
#[classifier]
pub fn vxlan_anchor(ctx: TcContext) -> i32 {
    verdict::finish(&ctx, Program::VxlanAnchor, anchor::vxlan_anchor(&ctx))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach a panic, so this never runs.
    unsafe { core::hint::unreachable_unchecked() }
}
