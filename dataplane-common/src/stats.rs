//! The stats map's slots: one counter per packet decision and one per drop reason.
//!
//! The numbers are part of the pinned map's format: append new entries, never renumber.

/// Number of slots in the per-CPU stats map; room for entries appended later.
pub const STAT_COUNT: u32 = 64;

/// First slot of the drop reasons, so that decisions and drops never collide.
pub const DROP_BASE: u32 = 32;

/// One slot of the stats map: a decision taken on a packet, or the reason it was dropped.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Redirected into a workload on this node.
    DeliveredLocal = 0,
    /// Encapsulated in VXLAN towards the node that owns the destination block.
    EncapVxlan = 1,
    /// Encapsulated in IP-in-IP towards the node that owns the destination block.
    EncapIpip = 2,
    /// A VXLAN packet from a peer, decapsulated.
    DecapVxlan = 3,
    /// An IP-in-IP packet from a peer, decapsulated.
    DecapIpip = 4,
    /// Forwarded to the owning node without encapsulation (pool mode Never).
    RoutedPlain = 5,
    /// Not for the fast path: handed to the kernel's stack unchanged.
    PassToStack = 6,
    /// An ARP request for the gateway 169.254.1.1, answered.
    ArpReplied = 7,
    /// ARP that is not a request for the gateway: left to the kernel, which ignores it.
    ArpPassed = 8,
    /// Too big for the tunnel with DF set: answered with ICMP "fragmentation needed".
    IcmpFragNeeded = 9,
    /// A new flow from a natOutgoing pool left the cluster with the node's address.
    SnatNew = 10,
    /// A packet of a known translated flow, translated on its way out.
    SnatEstablished = 11,
    /// A reply to a translated flow, translated back and delivered to the pod.
    ReverseNat = 12,
    /// Leaving by the uplink untouched: not the host's traffic to a tunnelled block.
    EgressUnchanged = 13,
    /// Seen first by the uplink's XDP program and handed on to the TC programs: not a tunnel
    /// packet it refuses (those are counted by their drop reason).
    XdpPassed = 14,
    /// A later fragment of a pod's translated datagram: given the source its first fragment got.
    SnatFragment = 15,
    /// A later fragment of a reply to a translated flow: given the pod's address, delivered.
    ReverseNatFragment = 16,
    /// A later fragment to this node of no translated datagram it knows: the host's own (or one
    /// whose first fragment was not seen), handed to the kernel, which reassembles.
    PassUntrackedFragment = 17,
    /// The first fragment of a peer's VXLAN packet (an underlay that fragments): handed to the
    /// kernel, which reassembles the datagram for the VXLAN anchor's socket.
    PassTunnelFragment = 18,
    /// A peer's VXLAN packet the kernel reassembled and decapsulated (`vxlan.dataplane`), routed
    /// by the anchor's program: into the pod it is for, or to the kernel.
    DecapVxlanReassembled = 19,
    /// A pod's neighbour solicitation for its IPv6 gateway `fe80::ecee:eeff:feee:eeee`, answered.
    NdpReplied = 20,
    /// Neighbour discovery that is not a solicitation for the gateway (router solicitations, a
    /// pod's duplicate address detection, advertisements): left to the kernel.
    NdpPassed = 21,
    /// IPv6 from a workload with no IPv6 address written: the kernel's, as before dual-stack.
    PassIpv6NoAddress = 22,
    /// IPv6 that never leaves the link (a link-local or unspecified source, a link-local or
    /// multicast destination): the kernel's, which never forwards it.
    PassIpv6LinkScope = 23,
    /// IPv6 with a Hop-by-Hop options header, which every router must examine: the kernel's.
    PassIpv6HopByHop = 24,

    /// Too short or malformed headers (truncated Ethernet, IPv4 IHL < 5, bad lengths).
    DropMalformed = DROP_BASE,
    /// A workload sent a packet whose source is not its own address (anti-spoofing).
    DropSpoofedSource = DROP_BASE + 1,
    /// A packet from a workload interface the agent has not registered.
    DropUnknownWorkload = DROP_BASE + 2,
    /// A tunnel packet from an address that is not a known peer node.
    DropUnknownPeer = DROP_BASE + 3,
    /// A VXLAN packet without the VNI flag or with a VNI other than this cluster's.
    DropWrongVni = DROP_BASE + 4,
    /// The destination is in a block of this node but belongs to no workload (Calico's blackhole route).
    DropBlackhole = DROP_BASE + 5,
    /// The packet's TTL ran out.
    DropTtlExceeded = DROP_BASE + 6,
    /// The kernel refused to grow or shrink the packet (`bpf_skb_adjust_room`).
    DropAdjustRoomFailed = DROP_BASE + 7,
    /// Reading or writing the packet failed after it was validated.
    DropPacketAccess = DROP_BASE + 8,
    /// The redirect helper refused the target interface.
    DropRedirectFailed = DROP_BASE + 9,
    /// The agent has not written this node's configuration yet.
    DropNoNodeConfig = DROP_BASE + 10,
    /// The first fragment of an IP-in-IP packet: the fast path decapsulates whole packets only,
    /// and no device of the node reassembles IP-in-IP for it (VXLAN's are passed to the kernel).
    DropTunnelFragment = DROP_BASE + 11,
    /// SNAT found no free port for a new flow: the original and every port of the range are taken.
    DropNatPortsExhausted = DROP_BASE + 12,
    /// The conntrack table is full: the new flow cannot be tracked.
    DropConntrackFull = DROP_BASE + 13,
    /// A later fragment from a natOutgoing pod whose first fragment was not seen (it came out of
    /// order, or its entry expired or was evicted from a full fragments table): without ports it
    /// cannot be translated, and untranslated it would leave with the pod's address.
    DropNatFragment = DROP_BASE + 14,
    /// A pod sent a VXLAN or IP-in-IP packet: translated to its node's address it would be taken
    /// for the node's own tunnel traffic by the others (Calico drops these too).
    DropTunnelFromWorkload = DROP_BASE + 15,
    /// A packet the VXLAN GRO anchor device decapsulated: it came in past `from_uplink` (another
    /// interface), and the anchor exists only for its socket's GRO, never to deliver.
    DropVxlanSocket = DROP_BASE + 16,
}

impl Stat {
    /// Every slot in use, in slot order.
    pub const ALL: [Stat; 42] = [
        Stat::DeliveredLocal,
        Stat::EncapVxlan,
        Stat::EncapIpip,
        Stat::DecapVxlan,
        Stat::DecapIpip,
        Stat::RoutedPlain,
        Stat::PassToStack,
        Stat::ArpReplied,
        Stat::ArpPassed,
        Stat::IcmpFragNeeded,
        Stat::SnatNew,
        Stat::SnatEstablished,
        Stat::ReverseNat,
        Stat::EgressUnchanged,
        Stat::XdpPassed,
        Stat::SnatFragment,
        Stat::ReverseNatFragment,
        Stat::PassUntrackedFragment,
        Stat::PassTunnelFragment,
        Stat::DecapVxlanReassembled,
        Stat::NdpReplied,
        Stat::NdpPassed,
        Stat::PassIpv6NoAddress,
        Stat::PassIpv6LinkScope,
        Stat::PassIpv6HopByHop,
        Stat::DropMalformed,
        Stat::DropSpoofedSource,
        Stat::DropUnknownWorkload,
        Stat::DropUnknownPeer,
        Stat::DropWrongVni,
        Stat::DropBlackhole,
        Stat::DropTtlExceeded,
        Stat::DropAdjustRoomFailed,
        Stat::DropPacketAccess,
        Stat::DropRedirectFailed,
        Stat::DropNoNodeConfig,
        Stat::DropTunnelFragment,
        Stat::DropNatPortsExhausted,
        Stat::DropConntrackFull,
        Stat::DropNatFragment,
        Stat::DropTunnelFromWorkload,
        Stat::DropVxlanSocket,
    ];

    /// The slot's index in the stats map.
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// The stat in slot `index`, if any (the kernel's log records and monitor events carry slots).
    pub fn from_index(index: u32) -> Option<Stat> {
        Stat::ALL.iter().copied().find(|stat| stat.index() == index)
    }

    /// Whether this slot counts dropped packets.
    pub const fn is_drop(self) -> bool {
        self.index() >= DROP_BASE
    }

    /// A stable snake_case name, used in `dataplane stats` and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Stat::DeliveredLocal => "delivered_local",
            Stat::EncapVxlan => "encap_vxlan",
            Stat::EncapIpip => "encap_ipip",
            Stat::DecapVxlan => "decap_vxlan",
            Stat::DecapIpip => "decap_ipip",
            Stat::RoutedPlain => "routed_plain",
            Stat::PassToStack => "pass_to_stack",
            Stat::ArpReplied => "arp_replied",
            Stat::ArpPassed => "arp_passed",
            Stat::IcmpFragNeeded => "icmp_frag_needed",
            Stat::SnatNew => "snat_new",
            Stat::SnatEstablished => "snat_established",
            Stat::ReverseNat => "reverse_nat",
            Stat::EgressUnchanged => "egress_unchanged",
            Stat::XdpPassed => "xdp_passed",
            Stat::SnatFragment => "snat_fragment",
            Stat::ReverseNatFragment => "reverse_nat_fragment",
            Stat::PassUntrackedFragment => "pass_untracked_fragment",
            Stat::PassTunnelFragment => "pass_tunnel_fragment",
            Stat::DecapVxlanReassembled => "decap_vxlan_reassembled",
            Stat::NdpReplied => "ndp_replied",
            Stat::NdpPassed => "ndp_passed",
            Stat::PassIpv6NoAddress => "pass_ipv6_no_address",
            Stat::PassIpv6LinkScope => "pass_ipv6_link_scope",
            Stat::PassIpv6HopByHop => "pass_ipv6_hop_by_hop",
            Stat::DropMalformed => "drop_malformed",
            Stat::DropSpoofedSource => "drop_spoofed_source",
            Stat::DropUnknownWorkload => "drop_unknown_workload",
            Stat::DropUnknownPeer => "drop_unknown_peer",
            Stat::DropWrongVni => "drop_wrong_vni",
            Stat::DropBlackhole => "drop_blackhole",
            Stat::DropTtlExceeded => "drop_ttl_exceeded",
            Stat::DropAdjustRoomFailed => "drop_adjust_room_failed",
            Stat::DropPacketAccess => "drop_packet_access",
            Stat::DropRedirectFailed => "drop_redirect_failed",
            Stat::DropNoNodeConfig => "drop_no_node_config",
            Stat::DropTunnelFragment => "drop_tunnel_fragment",
            Stat::DropNatPortsExhausted => "drop_nat_ports_exhausted",
            Stat::DropConntrackFull => "drop_conntrack_full",
            Stat::DropNatFragment => "drop_nat_fragment",
            Stat::DropTunnelFromWorkload => "drop_tunnel_from_workload",
            Stat::DropVxlanSocket => "drop_vxlan_socket",
        }
    }
}

const _: () = assert!((Stat::ALL.len() as u32) <= STAT_COUNT);
const _: () = assert!((Stat::DropVxlanSocket as u32) < STAT_COUNT);
const _: () = assert!((Stat::PassIpv6HopByHop as u32) < DROP_BASE);
