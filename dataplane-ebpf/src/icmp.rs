//! ICMP "fragmentation needed" for packets that would not fit the tunnel, so that path-MTU
//! discovery works instead of the packet vanishing.
//!
//! The offending packet is turned into the ICMP error in place: cut to its IPv4 header and the
//! first 8 bytes of payload, room made in front for a new IPv4 and ICMP header, and the result
//! sent back out of the workload's interface as if the gateway 169.254.1.1 had answered.

use aya_ebpf::{
    bindings::{bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, TC_ACT_REDIRECT},
    helpers::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use dataplane_common::{
    net::{
        DEFAULT_TTL, ETH_HLEN, ETH_P_IP, GATEWAY_ADDR, GATEWAY_MAC, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, ICMP_HLEN,
        ICMP_QUOTED_PAYLOAD, IPPROTO_ICMP, IPV4_HLEN,
    },
    Stat,
};

use crate::{
    csum,
    packet::{read, write, EthHdr, Ipv4Hdr},
    verdict::{Outcome, Verdict},
};

/// What the error quotes: the offending IPv4 header and the start of its payload.
const QUOTED_LEN: usize = IPV4_HLEN + ICMP_QUOTED_PAYLOAD;

/// The ICMP header and the quoted bytes, over which the ICMP checksum runs.
#[repr(C)]
#[derive(Clone, Copy)]
struct IcmpFragNeeded {
    kind: u8,
    code: u8,
    check: [u8; 2],
    unused: [u8; 2],
    next_hop_mtu: [u8; 2],
    quoted: [u8; QUOTED_LEN],
}
const _: () = assert!(core::mem::size_of::<IcmpFragNeeded>() == ICMP_HLEN + QUOTED_LEN);

/// Answers the (plain IPv4, IHL 5) packet from the workload on `ifindex` with "fragmentation
/// needed", advertising `mtu`.
#[inline(always)]
pub fn frag_needed(ctx: &TcContext, ifindex: u32, original: &Ipv4Hdr, mtu: u16) -> Outcome {
    let eth: EthHdr = read(ctx, 0)?;
    let quoted: [u8; QUOTED_LEN] = read(ctx, ETH_HLEN)?;
    // SAFETY: helper calls on this program's own skb with plain integer arguments.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (ETH_HLEN + QUOTED_LEN) as u32, 0) } != 0 {
        return Err(Stat::DropAdjustRoomFailed);
    }
    ctx.adjust_room((IPV4_HLEN + ICMP_HLEN) as i32, BPF_ADJ_ROOM_MAC, 0).map_err(|_| Stat::DropAdjustRoomFailed)?;

    let mut icmp = IcmpFragNeeded {
        kind: ICMP_DEST_UNREACH,
        code: ICMP_FRAG_NEEDED,
        check: [0; 2],
        unused: [0; 2],
        next_hop_mtu: mtu.to_be_bytes(),
        quoted,
    };
    icmp.check = csum::fold(csum::sum_words(&icmp));
    let mut ip = Ipv4Hdr {
        version_ihl: 0x45,
        tos: 0,
        tot_len: ((IPV4_HLEN + ICMP_HLEN + QUOTED_LEN) as u16).to_be_bytes(),
        id: [0; 2],
        frag_off: [0; 2],
        ttl: DEFAULT_TTL,
        protocol: IPPROTO_ICMP,
        check: [0; 2],
        src: GATEWAY_ADDR,
        dst: original.src,
    };
    ip.check = csum::ipv4_header(&ip);
    let reply_eth = EthHdr { dst: eth.src, src: GATEWAY_MAC, ether_type: ETH_P_IP.to_be_bytes() };
    write(ctx, 0, &reply_eth)?;
    write(ctx, ETH_HLEN, &ip)?;
    write(ctx, ETH_HLEN + IPV4_HLEN, &icmp)?;

    // SAFETY: a BPF helper call with plain integer arguments.
    let action = unsafe { bpf_redirect(ifindex, 0) };
    if action == i64::from(TC_ACT_REDIRECT) {
        Ok(Verdict { action: action as i32, stat: Stat::IcmpFragNeeded })
    } else {
        Err(Stat::DropRedirectFailed)
    }
}
