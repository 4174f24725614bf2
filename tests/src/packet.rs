//! Packets for BPF_PROG_TEST_RUN tests: the project's one packet builder and its checkers
//! (`dataplane::packet`, which `dataplane trace` builds its probes with), and the fixture
//! cluster's addresses.
//!
//! Build: `Packet::eth(src, dst).ipv4(src, dst).udp(sport, dport).payload(b"..")`. Check: read
//! fields back at named offsets and verify checksums.

pub use dataplane::packet::*;

/// Fixed addresses of the test fixtures: one node, one peer, their pods.
pub mod fixture {
    /// This node's address.
    pub const NODE: [u8; 4] = [10, 100, 0, 11];
    /// The peer node's address.
    pub const PEER: [u8; 4] = [10, 100, 0, 12];
    /// A node that is not a peer.
    pub const STRANGER: [u8; 4] = [10, 100, 0, 99];
    /// This node's VTEP MAC.
    pub const NODE_VTEP_MAC: [u8; 6] = [0x66, 0xd0, 0, 0, 0, 1];
    /// The peer's VTEP MAC.
    pub const PEER_VTEP_MAC: [u8; 6] = [0x66, 0xd0, 0, 0, 0, 2];
    /// A pod on this node.
    pub const POD_A: [u8; 4] = [10, 244, 1, 2];
    /// POD_A's MAC.
    pub const POD_A_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02];
    /// A second pod on this node.
    pub const POD_B: [u8; 4] = [10, 244, 1, 3];
    /// POD_B's MAC.
    pub const POD_B_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x03];
    /// An address of this node's block without a workload.
    pub const POD_NONE: [u8; 4] = [10, 244, 1, 50];
    /// A pod on the peer node.
    pub const REMOTE_POD: [u8; 4] = [10, 244, 2, 2];
    /// An address outside every pool.
    pub const EXTERNAL: [u8; 4] = [192, 0, 2, 10];
    /// A MAC for the uplink side of frames.
    pub const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
}
