//! The neighbour discovery responder for the pods' IPv6 gateway `fe80::ecee:eeff:feee:eeee`
//! (the link-local address of the host side's `ee:ee:ee:ee:ee:ee`, Calico's IPv6 default route).
//!
//! The program answers a pod's solicitation for the gateway in place with an advertisement from
//! `ee:ee:ee:ee:ee:ee` and sends it back into the pod, as `arp.rs` does for 169.254.1.1: the node
//! needs no link-local address on the host side, no proxy NDP and no forwarding sysctls for it.

use aya_ebpf::{bindings::TC_ACT_REDIRECT, helpers::bpf_redirect, programs::TcContext};
use dataplane_common::{
    net::{
        ETH_HLEN, ETH_P_IPV6, GATEWAY_ADDR_V6, GATEWAY_MAC, IPPROTO_ICMPV6, ND_HOP_LIMIT, ND_MSG_LEN,
        ND_NA_FLAG_OVERRIDE, ND_NA_FLAG_ROUTER, ND_NA_FLAG_SOLICITED, ND_NEIGHBOR_ADVERT, ND_NEIGHBOR_SOLICIT,
        ND_OPT_LEN_UNIT, ND_OPT_LL_ADDR_LEN, ND_OPT_TARGET_LL_ADDR, ND_REDIRECT, ND_ROUTER_SOLICIT,
    },
    Ipv6Bytes, MacBytes, Stat,
};

use crate::{
    csum,
    ipv6::{pseudo_header_sum, Ipv6Hdr, IPV6_PAYLOAD_OFFSET},
    packet::{read, write, EthHdr},
    verdict::{Outcome, Verdict},
};

/// A neighbour solicitation or advertisement without its options.
#[repr(C)]
#[derive(Clone, Copy)]
struct NeighbourMsg {
    kind: u8,
    code: u8,
    check: [u8; 2],
    /// Reserved in a solicitation; the flags in the first byte of an advertisement.
    flags: [u8; 4],
    target: Ipv6Bytes,
}
const _: () = assert!(core::mem::size_of::<NeighbourMsg>() == ND_MSG_LEN);

/// A link-layer address option for Ethernet.
#[repr(C)]
#[derive(Clone, Copy)]
struct LinkLayerOption {
    kind: u8,
    /// In units of [`ND_OPT_LEN_UNIT`].
    len: u8,
    addr: MacBytes,
}
const _: () = assert!(core::mem::size_of::<LinkLayerOption>() == ND_OPT_LL_ADDR_LEN);

/// The gateway's advertisement, from the IPv6 header on.
#[repr(C)]
#[derive(Clone, Copy)]
struct Advertisement {
    ip: Ipv6Hdr,
    msg: NeighbourMsg,
    option: LinkLayerOption,
}

/// What follows the IPv6 header of an advertisement.
const ADVERTISEMENT_PAYLOAD: usize = ND_MSG_LEN + ND_OPT_LL_ADDR_LEN;

/// Neighbour discovery from the workload on `ifindex` (an ICMPv6 packet `ip` whose payload
/// starts right after the fixed header): a solicitation for the gateway is answered, the rest of
/// neighbour discovery goes to the kernel; None for ICMPv6 that is not neighbour discovery.
#[inline(always)]
pub fn neighbour_discovery(ctx: &TcContext, ifindex: u32, ip: &Ipv6Hdr) -> Option<Outcome> {
    let kind: u8 = read(ctx, IPV6_PAYLOAD_OFFSET).ok()?;
    if !(ND_ROUTER_SOLICIT..=ND_REDIRECT).contains(&kind) {
        return None;
    }
    Some(answer_gateway(ctx, ifindex, ip))
}

/// Answers a valid solicitation for the gateway (RFC 4861 7.1.1: hop limit 255, code 0, long
/// enough; a unicast source, so not another node's duplicate address detection); anything else
/// is passed for the kernel to judge. The checksum is not verified: a corrupt solicitation gets
/// an answer the pod may use, which is the gateway's true address anyway.
#[inline(always)]
fn answer_gateway(ctx: &TcContext, ifindex: u32, ip: &Ipv6Hdr) -> Outcome {
    let passed = Ok(Verdict { stat: Stat::NdpPassed, ..Verdict::pass() });
    let Ok(solicitation) = read::<NeighbourMsg>(ctx, IPV6_PAYLOAD_OFFSET) else { return passed };
    let is_gateway_solicitation = solicitation.kind == ND_NEIGHBOR_SOLICIT
        && solicitation.code == 0
        && ip.hop_limit == ND_HOP_LIMIT
        && ip.payload_len() >= ND_MSG_LEN
        && solicitation.target == GATEWAY_ADDR_V6
        && ip.src != [0; 16];
    if !is_gateway_solicitation {
        return passed;
    }

    let eth: EthHdr = read(ctx, 0)?;
    // The advertisement's exact length: the solicitation may carry options, or none.
    let frame_len = ETH_HLEN + core::mem::size_of::<Advertisement>();
    // SAFETY: a helper call on this program's own skb with plain integer arguments.
    if unsafe { aya_ebpf::helpers::bpf_skb_change_tail(ctx.skb.skb, frame_len as u32, 0) } != 0 {
        return Err(Stat::DropAdjustRoomFailed);
    }
    let mut advert = Advertisement {
        ip: Ipv6Hdr {
            version_class_flow: [0x60, 0, 0, 0],
            payload_len: (ADVERTISEMENT_PAYLOAD as u16).to_be_bytes(),
            next_header: IPPROTO_ICMPV6,
            hop_limit: ND_HOP_LIMIT,
            src: GATEWAY_ADDR_V6,
            dst: ip.src,
        },
        msg: NeighbourMsg {
            kind: ND_NEIGHBOR_ADVERT,
            code: 0,
            check: [0; 2],
            // Override too: the address is the host side's own (its EUI-64 link-local), as the
            // kernel would answer for it.
            flags: [ND_NA_FLAG_ROUTER | ND_NA_FLAG_SOLICITED | ND_NA_FLAG_OVERRIDE, 0, 0, 0],
            target: GATEWAY_ADDR_V6,
        },
        option: LinkLayerOption {
            kind: ND_OPT_TARGET_LL_ADDR,
            len: (ND_OPT_LL_ADDR_LEN / ND_OPT_LEN_UNIT) as u8,
            addr: GATEWAY_MAC,
        },
    };
    let sum = pseudo_header_sum(&advert.ip.src, &advert.ip.dst, ADVERTISEMENT_PAYLOAD as u32, IPPROTO_ICMPV6)
        + csum::sum_words(&advert.msg)
        + csum::sum_words(&advert.option);
    advert.msg.check = csum::fold(sum);
    let reply_eth = EthHdr { dst: eth.src, src: GATEWAY_MAC, ether_type: ETH_P_IPV6.to_be_bytes() };
    write(ctx, 0, &reply_eth)?;
    write(ctx, ETH_HLEN, &advert)?;
    // Out of the same interface, i.e. back into the pod.
    // SAFETY: a BPF helper call with plain integer arguments.
    let action = unsafe { bpf_redirect(ifindex, 0) };
    if action == i64::from(TC_ACT_REDIRECT) {
        Ok(Verdict { action: action as i32, stat: Stat::NdpReplied })
    } else {
        Err(Stat::DropRedirectFailed)
    }
}
