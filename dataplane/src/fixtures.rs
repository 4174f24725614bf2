//! Fixtures of the unit tests: addresses written as text, the example cluster, a plain pool.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::{
    datastore::file,
    model::{EncapMode, IpPool, MacAddr, Model, Problem},
};

/// The example cluster every guide uses: two nodes, one VXLAN pool with natOutgoing.
pub const TWO_NODES: &str = include_str!("../../examples/two-nodes.yaml");

/// A CIDR written as text.
pub fn net(text: &str) -> Ipv4Net {
    text.parse().expect("test CIDR")
}

/// An address written as text.
pub fn ip(text: &str) -> Ipv4Addr {
    text.parse().expect("test address")
}

/// A MAC written as text.
pub fn mac(text: &str) -> MacAddr {
    text.parse().expect("test MAC")
}

/// A cluster read from Calico YAML, with the problems the datastore reported.
pub fn parse(yaml: &str) -> (Model, Vec<Problem>) {
    file::parse(yaml).expect("test YAML")
}

/// [`TWO_NODES`], which must read without a problem.
pub fn two_nodes() -> Model {
    let (model, problems) = parse(TWO_NODES);
    assert!(problems.is_empty(), "{problems:?}");
    model
}

/// An enabled VXLAN (Always) pool without natOutgoing; a test changes what it needs with
/// `IpPool { nat_outgoing: true, ..pool(..) }`.
pub fn pool(name: &str, cidr: &str, block_size: u8) -> IpPool {
    IpPool {
        name: name.into(),
        cidr: net(cidr),
        block_size,
        vxlan_mode: EncapMode::Always,
        ipip_mode: EncapMode::Never,
        nat_outgoing: false,
        disabled: false,
    }
}
