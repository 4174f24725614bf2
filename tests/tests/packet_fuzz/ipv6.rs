//! The fuzzer's rules for IPv6 frames.

use super::*;

/// The rules for an IPv6 frame: no spoofed source leaves a pod, what goes to the kernel goes
/// unchanged, a delivery rewrites only the Ethernet header and the hop limit and only towards a
/// pod of this node, an advertisement answers only a solicitation for the gateway and is valid,
/// and every drop has its reason in the packet.
pub(super) fn check_ipv6(run: &Run) -> Result<(), String> {
    use fixture6::*;
    let Run { program, input, verdict, output, stat, .. } = *run;
    let addr = |bytes: &[u8], at: usize| -> [u8; 16] { bytes[at..at + 16].try_into().unwrap() };
    let (src, dst) = (addr(input, ETH_HLEN + 8), addr(input, ETH_HLEN + 24));
    let hop_limit = input[ETH_HLEN + 7];
    let well_formed = input[ETH_HLEN] >> 4 == 6 && usize::from(be16(input, ETH_HLEN + 4)) <= input.len() - IPV6_PAYLOAD;
    if verdict == TC_ACT_OK && output != input {
        return Err(format!("IPv6 handed to the kernel was rewritten ({})", stat.name()));
    }
    if program != PROG_FROM_WORKLOAD {
        return if stat.is_drop() || verdict != TC_ACT_OK {
            Err(format!("{program} took IPv6 ({}), which only from_workload routes", stat.name()))
        } else {
            Ok(())
        };
    }
    match stat {
        Stat::DeliveredLocal => {
            let pod_mac = match dst {
                POD_A => POD_A_MAC,
                POD_B => POD_B_MAC,
                _ => return Err(format!("delivered to {dst:02x?}, no pod of this node")),
            };
            if src != POD_A || !well_formed || hop_limit <= 1 {
                return Err(format!(
                    "delivered a packet from {src:02x?}, hop limit {hop_limit}, well-formed {well_formed}"
                ));
            }
            let expected_eth = [&pod_mac[..], &GATEWAY_MAC[..], &ETH_P_IPV6.to_be_bytes()[..]].concat();
            if output.len() != input.len()
                || output[..ETH_HLEN] != expected_eth[..]
                || output[ETH_HLEN..ETH_HLEN + 7] != input[ETH_HLEN..ETH_HLEN + 7]
                || output[ETH_HLEN + 7] != hop_limit - 1
                || output[ETH_HLEN + 8..] != input[ETH_HLEN + 8..]
            {
                return Err("a delivery changed more than the Ethernet header and the hop limit".to_owned());
            }
            let in_ok = ipv6_transport(input, ETH_HLEN).is_some() && l4_checksum_v6_ok(input, ETH_HLEN);
            if in_ok && !l4_checksum_v6_ok(output, ETH_HLEN) {
                return Err("the transport checksum was right and is wrong after the delivery".to_owned());
            }
        }
        Stat::NdpReplied => {
            let solicited = input[ETH_HLEN + 6] == IPPROTO_ICMPV6
                && input.get(IPV6_PAYLOAD) == Some(&ND_NEIGHBOR_SOLICIT)
                && input.len() >= IPV6_PAYLOAD + 24
                && addr(input, IPV6_PAYLOAD + 8) == GATEWAY_ADDR_V6
                && hop_limit == ND_HOP_LIMIT
                && src != [0; 16];
            if !solicited || !well_formed {
                return Err("answered what is no valid solicitation for the gateway".to_owned());
            }
            let advertises = output.len() == IPV6_PAYLOAD + 32
                && output[0..6] == input[6..12]
                && output[ETH_HLEN + 7] == ND_HOP_LIMIT
                && addr(output, ETH_HLEN + 8) == GATEWAY_ADDR_V6
                && addr(output, ETH_HLEN + 24) == src
                && output[IPV6_PAYLOAD] == ND_NEIGHBOR_ADVERT
                && addr(output, IPV6_PAYLOAD + 8) == GATEWAY_ADDR_V6
                && output[IPV6_PAYLOAD + 26..IPV6_PAYLOAD + 32] == GATEWAY_MAC
                && l4_checksum_v6_ok(output, ETH_HLEN);
            if !advertises {
                return Err("the advertisement is not the gateway's, or its checksum is wrong".to_owned());
            }
        }
        Stat::DropMalformed if well_formed => return Err("a well-formed IPv6 packet dropped as malformed".to_owned()),
        Stat::DropSpoofedSource if src == POD_A => return Err("pod A's own source dropped as spoofed".to_owned()),
        Stat::DropTtlExceeded if hop_limit > 1 => return Err(format!("hop limit {hop_limit} dropped as exceeded")),
        Stat::DropBlackhole if dst[..15] != LOCAL_BLOCK[..15] || dst[15] >= 64 || dst == POD_A || dst == POD_B => {
            return Err(format!("{dst:02x?} blackholed, not a free address of the local block"));
        }
        Stat::DropMalformed
        | Stat::DropSpoofedSource
        | Stat::DropTtlExceeded
        | Stat::DropBlackhole
        | Stat::DropAdjustRoomFailed => {}
        stat if stat.is_drop() => return Err(format!("IPv6 dropped as {}, which no IPv6 rule gives", stat.name())),
        _ => {}
    }
    // Whatever the fast path forwards carries pod A's own source.
    if verdict == TC_ACT_REDIRECT && stat != Stat::NdpReplied && src != POD_A {
        return Err(format!("from_workload forwarded IPv6 from {src:02x?}, not pod A ({})", stat.name()));
    }
    Ok(())
}
