//! The ARP responder for the pods' gateway 169.254.1.1 (Calico's link-local trick).
//!
//! Pods route everything via 169.254.1.1; the host side of their veth answers for it with
//! ee:ee:ee:ee:ee:ee. Calico relies on proxy_arp for this; here the program answers in place and
//! sends the reply back into the pod, so the node needs no proxy_arp.

use aya_ebpf::{bindings::TC_ACT_REDIRECT, helpers::bpf_redirect, programs::TcContext};
use dataplane_common::{
    net::{
        ARPHRD_ETHER, ARPOP_REPLY, ARPOP_REQUEST, ETH_ALEN, ETH_HLEN, ETH_P_ARP, ETH_P_IP, GATEWAY_ADDR, GATEWAY_MAC,
    },
    Stat,
};

use crate::{
    packet::{read, write, ArpEthIpv4, EthHdr},
    verdict::{Outcome, Verdict},
};

/// Length of an IPv4 address in ARP's `plen`.
const IPV4_ALEN: u8 = 4;

/// Answers an ARP request for the gateway arriving from the workload on `ifindex`; any other ARP
/// is left to the kernel (which, without proxy_arp, ignores it).
#[inline(always)]
pub fn answer_gateway(ctx: &TcContext, ifindex: u32) -> Outcome {
    let arp: ArpEthIpv4 = read(ctx, ETH_HLEN)?;
    let is_gateway_request = u16::from_be_bytes(arp.htype) == ARPHRD_ETHER
        && u16::from_be_bytes(arp.ptype) == ETH_P_IP
        && arp.hlen as usize == ETH_ALEN
        && arp.plen == IPV4_ALEN
        && u16::from_be_bytes(arp.op) == ARPOP_REQUEST
        && arp.tpa == GATEWAY_ADDR;
    if !is_gateway_request {
        return Ok(Verdict { stat: Stat::ArpPassed, ..Verdict::pass() });
    }

    let eth = EthHdr { dst: arp.sha, src: GATEWAY_MAC, ether_type: ETH_P_ARP.to_be_bytes() };
    let reply = ArpEthIpv4 {
        op: ARPOP_REPLY.to_be_bytes(),
        sha: GATEWAY_MAC,
        spa: GATEWAY_ADDR,
        tha: arp.sha,
        tpa: arp.spa,
        ..arp
    };
    write(ctx, 0, &eth)?;
    write(ctx, ETH_HLEN, &reply)?;
    // Out of the same interface, i.e. back into the pod.
    // SAFETY: a BPF helper call with plain integer arguments.
    let action = unsafe { bpf_redirect(ifindex, 0) };
    if action == i64::from(TC_ACT_REDIRECT) {
        Ok(Verdict { action: action as i32, stat: Stat::ArpReplied })
    } else {
        Err(Stat::DropRedirectFailed)
    }
}
