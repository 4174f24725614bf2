//! natOutgoing for the netlink fallback, as Calico's kernel dataplane does it, written in
//! nf_tables over netlink.
//!
//! Calico (iptables mode) keeps two ipsets, `cali40masq-ipam-pools` (the pools with
//! `natOutgoing: true`) and `cali40all-ipam-pools` (every pool), and one rule in nat POSTROUTING:
//! masquerade (random-fully) a packet whose source is in the first and whose destination is in
//! neither. This module programs the same in a table of its own:
//!
//! ```text
//! table ip dataplane {
//!     set masq-ipam-pools { type ipv4_addr; flags interval; elements = { <natOutgoing pools> } }
//!     set all-ipam-pools  { type ipv4_addr; flags interval; elements = { <all pools> } }
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         ip saddr @masq-ipam-pools ip daddr != @all-ipam-pools masquerade random-fully
//!     }
//! }
//! ```
//!
//! The messages are built here from the kernel's nf_tables UAPI (linux/netfilter/nf_tables.h)
//! rather than through a crate: the Rust nf_tables crates either wrap libnftnl (a C library the
//! nodes would need) or are GPL-licensed, and the handful of message kinds below is small.
//!
//! The table exists only while some pool has natOutgoing. Every sync reads the table back and
//! writes only what differs (a changed set is rewritten whole), all in one nf_tables
//! transaction, so packets never see half a change and a resync with no change writes nothing.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
};

use anyhow::{bail, Context as _};
use ipnet::{Ipv4Net, Ipv4Subnets};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use crate::plan::{Plan, RouteTarget};

/// The table this agent owns (family `ip`).
pub const TABLE: &str = "dataplane";
/// The set of pools whose pods are masqueraded (Calico's `cali40masq-ipam-pools`).
pub const MASQ_POOLS_SET: &str = "masq-ipam-pools";
/// The set of every pool (Calico's `cali40all-ipam-pools`).
pub const ALL_POOLS_SET: &str = "all-ipam-pools";
/// The base chain holding the masquerade rule.
pub const CHAIN: &str = "postrouting";
/// The comment on the masquerade rule; a rule without it is not ours and is replaced. Bump the
/// version when the rule's expressions change so that agents rewrite it.
pub const RULE_COMMENT: &str = "dataplane natOutgoing v1";

/// What natOutgoing needs on this node: the pools' CIDRs, sorted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Masquerade {
    /// Pools with `natOutgoing: true`.
    pub masq_pools: Vec<Ipv4Net>,
    /// Every pool.
    pub all_pools: Vec<Ipv4Net>,
}

/// The node-level decision: masquerade only when some pool has natOutgoing (Calico writes the
/// rule only then too). Every pool of the plan counts, wherever its blocks live.
pub fn masquerade(plan: &Plan) -> Option<Masquerade> {
    let mut masq_pools = Vec::new();
    let mut all_pools = Vec::new();
    for (prefix, route) in &plan.routes {
        if route.target != RouteTarget::Pool {
            continue;
        }
        all_pools.push(*prefix);
        if route.nat_outgoing {
            masq_pools.push(*prefix);
        }
    }
    if masq_pools.is_empty() {
        return None;
    }
    Some(Masquerade { masq_pools, all_pools })
}

/// One element of an interval set: a range starts at `key`, or (`end`) the range before it
/// stops just below `key`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Element {
    /// The boundary address.
    pub key: Ipv4Addr,
    /// An interval end (`NFT_SET_ELEM_INTERVAL_END`).
    pub end: bool,
}

/// The interval set elements covering `cidrs`: overlapping and adjacent ranges are merged first
/// (the kernel refuses overlapping intervals, and a start sharing its key with an end is
/// ambiguous), and a range reaching 255.255.255.255 has no end element.
pub fn interval_elements(cidrs: &[Ipv4Net]) -> BTreeSet<Element> {
    let mut ranges: Vec<(u64, u64)> = cidrs
        .iter()
        .map(|cidr| (u64::from(u32::from(cidr.network())), u64::from(u32::from(cidr.broadcast())) + 1))
        .collect();
    ranges.sort();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    let mut elements = BTreeSet::new();
    for (start, end) in merged {
        elements.insert(Element { key: Ipv4Addr::from(start as u32), end: false });
        if let Ok(end) = u32::try_from(end) {
            elements.insert(Element { key: Ipv4Addr::from(end), end: true });
        }
    }
    elements
}

/// An interval set's elements as the prefixes they cover, for people: `10.244.0.0/16, ...`.
pub fn describe(elements: &BTreeSet<Element>) -> String {
    let mut prefixes = Vec::new();
    let mut start: Option<Ipv4Addr> = None;
    for element in elements {
        match (start, element.end) {
            (None, false) => start = Some(element.key),
            (Some(first), true) => {
                // The end element is one past the range.
                let last = Ipv4Addr::from(u32::from(element.key).saturating_sub(1));
                prefixes.extend(Ipv4Subnets::new(first, last, 0).map(|net| net.to_string()));
                start = None;
            }
            // Elements out of pairs (a set someone else wrote) are shown as they are.
            (Some(first), false) => {
                prefixes.push(format!("{first}-?"));
                start = Some(element.key);
            }
            (None, true) => prefixes.push(format!("?-{}", element.key)),
        }
    }
    // A range to the top of the address space has no end element.
    if let Some(first) = start {
        prefixes.extend(Ipv4Subnets::new(first, Ipv4Addr::BROADCAST, 0).map(|net| net.to_string()));
    }
    prefixes.join(", ")
}

/// Our table as the kernel holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// The table exists.
    pub table: bool,
    /// The base chain exists.
    pub chain: bool,
    /// Sets of the table by name, with their elements.
    pub sets: BTreeMap<String, BTreeSet<Element>>,
    /// The comments of the chain's rules, in order (None for a rule without one).
    pub rules: Vec<Option<String>>,
}

/// Set elements per NEWSETELEM message: about 40 bytes each, well inside an attribute's 64 KiB.
const MAX_ELEMENTS_PER_MESSAGE: usize = 1024;

/// One write, in the order a transaction must make them (sets before the rule that looks them up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Create the table.
    AddTable,
    /// Delete the table with everything in it.
    DeleteTable,
    /// Create an empty interval set of IPv4 addresses.
    AddSet(&'static str),
    /// Remove every element of a set.
    FlushSet(&'static str),
    /// Add elements to a set.
    AddElements(&'static str, BTreeSet<Element>),
    /// Create the nat postrouting base chain.
    AddChain,
    /// Remove every rule of the chain.
    FlushChain,
    /// Append the masquerade rule.
    AddRule,
}

/// The writes that make `observed` what `wanted` asks for; empty when they agree.
pub fn changes(wanted: Option<&Masquerade>, observed: &Observed) -> Vec<Change> {
    let Some(wanted) = wanted else {
        return if observed.table { vec![Change::DeleteTable] } else { vec![] };
    };
    let mut changes = Vec::new();
    let fresh = !observed.table;
    if fresh {
        changes.push(Change::AddTable);
    }
    for (name, cidrs) in [(MASQ_POOLS_SET, &wanted.masq_pools), (ALL_POOLS_SET, &wanted.all_pools)] {
        let elements = interval_elements(cidrs);
        match observed.sets.get(name).filter(|_| !fresh) {
            None => changes.push(Change::AddSet(name)),
            Some(current) if *current == elements => continue,
            // A changed set is rewritten whole inside the transaction: interval elements come in
            // start/end pairs, and replacing them all avoids overlaps between old and new ranges.
            Some(_) => changes.push(Change::FlushSet(name)),
        }
        // A netlink attribute holds at most 64 KiB: many pools take several messages.
        let elements: Vec<Element> = elements.into_iter().collect();
        for chunk in elements.chunks(MAX_ELEMENTS_PER_MESSAGE) {
            changes.push(Change::AddElements(name, chunk.iter().copied().collect()));
        }
    }
    let ours = [Some(RULE_COMMENT.to_owned())];
    if fresh || !observed.chain {
        changes.extend([Change::AddChain, Change::AddRule]);
    } else if observed.rules != ours {
        changes.extend([Change::FlushChain, Change::AddRule]);
    }
    changes
}

/// Makes the kernel's table match the plan; returns the writes made (0 on a resync with no change).
#[tracing::instrument(name = "nftables", skip_all)]
pub fn sync(plan: &Plan) -> anyhow::Result<Vec<Change>> {
    let wanted = masquerade(plan);
    let (mut socket, observed) = match open_and_observe() {
        // No nf_tables in this kernel: nothing to remove, and nothing to add when no pool asks.
        Err(error) if wanted.is_none() && nf_tables_absent(&error) => return Ok(vec![]),
        result => result?,
    };
    let changes = changes(wanted.as_ref(), &observed);
    if !changes.is_empty() {
        socket.transaction(&changes).with_context(|| format!("writing table ip {TABLE}: {changes:?}"))?;
        for change in &changes {
            tracing::info!(?change, "nftables written");
        }
    }
    Ok(changes)
}

/// Reads our table in this network namespace (for `dataplane check`); a kernel without nf_tables
/// has none.
pub fn observe() -> anyhow::Result<Observed> {
    match open_and_observe() {
        Err(error) if nf_tables_absent(&error) => Ok(Observed::default()),
        result => result.map(|(_, observed)| observed),
    }
}

/// Deletes our table if it exists; returns whether it did. For `dataplane cleanup` and the fast
/// path's start.
pub fn remove() -> anyhow::Result<bool> {
    let (mut socket, observed) = match open_and_observe() {
        Err(error) if nf_tables_absent(&error) => return Ok(false),
        result => result?,
    };
    if !observed.table {
        return Ok(false);
    }
    socket.transaction(&[Change::DeleteTable])?;
    Ok(true)
}

fn open_and_observe() -> anyhow::Result<(NfSocket, Observed)> {
    let mut socket = NfSocket::open()?;
    let observed = socket.observe()?;
    Ok((socket, observed))
}

/// Whether `error` says this kernel has no nf_tables at all (no NETLINK_NETFILTER protocol, or
/// no nf_tables subsystem behind it): then no table of ours can exist either.
fn nf_tables_absent(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .any(|cause| matches!(cause.raw_os_error(), Some(libc::EPROTONOSUPPORT | libc::EOPNOTSUPP)))
}

// ---------------------------------------------------------------------------------------------
// The wire format: netlink messages of the nfnetlink subsystem NFNL_SUBSYS_NFTABLES, each an
// nlmsghdr, an nfgenmsg and attributes (integers in network byte order).

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFPROTO_IPV4: u8 = 2;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
/// An attribute's type without its NLA_F_NESTED and NLA_F_NET_BYTEORDER flags.
const NLA_TYPE_MASK: u16 = 0x3fff;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NF_INET_POST_ROUTING: u32 = 4;
/// `srcnat`.
const NF_IP_PRI_NAT_SRC: u32 = 100;
const NF_ACCEPT: u32 = 1;

const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
/// libnftnl's userdata TLV type for a rule comment, so that `nft list` shows it.
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_REG_1: u32 = 1;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_FLAGS: u16 = 5;
const NFT_LOOKUP_F_INV: u32 = 1;
const NFTA_MASQ_FLAGS: u16 = 1;
const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 1 << 4;
/// Offsets of the IPv4 source and destination addresses in the IPv4 header.
const IPV4_SADDR_OFFSET: u32 = 12;
const IPV4_DADDR_OFFSET: u32 = 16;

const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_ID: u16 = 10;
const NFT_SET_INTERVAL: u32 = 0x4;
/// nft's `ipv4_addr` data type, so that `nft list` prints addresses.
const NFT_TYPE_IPADDR: u32 = 7;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFT_SET_ELEM_INTERVAL_END: u32 = 1;
const NFTA_DATA_VALUE: u16 = 1;

/// Attributes being built into a message body.
#[derive(Default)]
struct Attrs(Vec<u8>);

impl Attrs {
    fn bytes(mut self, kind: u16, value: &[u8]) -> Self {
        let len = u16::try_from(4 + value.len()).expect("a netlink attribute fits in 64 KiB");
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
        self
    }

    fn string(self, kind: u16, value: &str) -> Self {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.bytes(kind, &bytes)
    }

    fn be32(self, kind: u16, value: u32) -> Self {
        self.bytes(kind, &value.to_be_bytes())
    }

    fn nested(self, kind: u16, inner: Attrs) -> Self {
        self.bytes(kind | NLA_F_NESTED, &inner.0)
    }
}

/// Names one of our sets: the start of a set element message or dump filter.
fn our_set(set: &str) -> Attrs {
    Attrs::default().string(NFTA_SET_ELEM_LIST_TABLE, TABLE).string(NFTA_SET_ELEM_LIST_SET, set)
}

/// Names our chain: the start of a rule message or dump filter.
fn our_chain() -> Attrs {
    Attrs::default().string(NFTA_RULE_TABLE, TABLE).string(NFTA_RULE_CHAIN, CHAIN)
}

/// One nf_tables expression: `NFTA_LIST_ELEM { NFTA_EXPR_NAME, NFTA_EXPR_DATA }`.
fn expression(name: &str, data: Attrs) -> Attrs {
    Attrs::default().string(NFTA_EXPR_NAME, name).nested(NFTA_EXPR_DATA, data)
}

fn load_address(offset: u32) -> Attrs {
    expression(
        "payload",
        Attrs::default()
            .be32(NFTA_PAYLOAD_DREG, NFT_REG_1)
            .be32(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER)
            .be32(NFTA_PAYLOAD_OFFSET, offset)
            .be32(NFTA_PAYLOAD_LEN, 4),
    )
}

fn lookup(set: &str, inverted: bool) -> Attrs {
    let data = Attrs::default().string(NFTA_LOOKUP_SET, set).be32(NFTA_LOOKUP_SREG, NFT_REG_1);
    expression("lookup", if inverted { data.be32(NFTA_LOOKUP_FLAGS, NFT_LOOKUP_F_INV) } else { data })
}

/// `ip saddr @masq-ipam-pools ip daddr != @all-ipam-pools masquerade random-fully`.
fn masquerade_rule() -> Attrs {
    let mut expressions = Attrs::default();
    for expr in [
        load_address(IPV4_SADDR_OFFSET),
        lookup(MASQ_POOLS_SET, false),
        load_address(IPV4_DADDR_OFFSET),
        lookup(ALL_POOLS_SET, true),
        expression("masq", Attrs::default().be32(NFTA_MASQ_FLAGS, NF_NAT_RANGE_PROTO_RANDOM_FULLY)),
    ] {
        expressions = expressions.nested(NFTA_LIST_ELEM, expr);
    }
    let mut comment = vec![NFTNL_UDATA_RULE_COMMENT, (RULE_COMMENT.len() + 1) as u8];
    comment.extend_from_slice(RULE_COMMENT.as_bytes());
    comment.push(0);
    our_chain().nested(NFTA_RULE_EXPRESSIONS, expressions).bytes(NFTA_RULE_USERDATA, &comment)
}

fn element_list(set: &str, elements: &BTreeSet<Element>) -> Attrs {
    let mut list = Attrs::default();
    for element in elements {
        let mut attrs =
            Attrs::default().nested(NFTA_SET_ELEM_KEY, Attrs::default().bytes(NFTA_DATA_VALUE, &element.key.octets()));
        if element.end {
            attrs = attrs.be32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
        }
        list = list.nested(NFTA_LIST_ELEM, attrs);
    }
    our_set(set).nested(NFTA_SET_ELEM_LIST_ELEMENTS, list)
}

/// The message type, flags and body of one change.
fn change_message(change: &Change) -> (u16, u16, Attrs) {
    let table = || Attrs::default().string(NFTA_TABLE_NAME, TABLE);
    let create = NLM_F_CREATE;
    match change {
        Change::AddTable => (NFT_MSG_NEWTABLE, create, table()),
        Change::DeleteTable => (NFT_MSG_DELTABLE, 0, table()),
        Change::AddSet(name) => (
            NFT_MSG_NEWSET,
            create,
            Attrs::default()
                .string(NFTA_SET_TABLE, TABLE)
                .string(NFTA_SET_NAME, name)
                .be32(NFTA_SET_FLAGS, NFT_SET_INTERVAL)
                .be32(NFTA_SET_KEY_TYPE, NFT_TYPE_IPADDR)
                .be32(NFTA_SET_KEY_LEN, 4)
                // The kernel wants an id naming the set within the transaction; ours go by name.
                .be32(NFTA_SET_ID, if *name == MASQ_POOLS_SET { 1 } else { 2 }),
        ),
        // A DELSETELEM without elements flushes the set.
        Change::FlushSet(name) => (NFT_MSG_DELSETELEM, 0, our_set(name)),
        Change::AddElements(name, elements) => (NFT_MSG_NEWSETELEM, create, element_list(name, elements)),
        Change::AddChain => (
            NFT_MSG_NEWCHAIN,
            create,
            Attrs::default()
                .string(NFTA_CHAIN_TABLE, TABLE)
                .string(NFTA_CHAIN_NAME, CHAIN)
                .nested(
                    NFTA_CHAIN_HOOK,
                    Attrs::default()
                        .be32(NFTA_HOOK_HOOKNUM, NF_INET_POST_ROUTING)
                        .be32(NFTA_HOOK_PRIORITY, NF_IP_PRI_NAT_SRC),
                )
                .be32(NFTA_CHAIN_POLICY, NF_ACCEPT)
                .string(NFTA_CHAIN_TYPE, "nat"),
        ),
        // A DELRULE without a handle flushes the chain.
        Change::FlushChain => (NFT_MSG_DELRULE, 0, our_chain()),
        Change::AddRule => (NFT_MSG_NEWRULE, create | NLM_F_APPEND, masquerade_rule()),
    }
}

/// Appends one netlink message: nlmsghdr, nfgenmsg (version 0, `res_id` big-endian), body.
fn push_message(buffer: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, family: u8, res_id: u16, body: &[u8]) {
    let len = u32::try_from(16 + 4 + body.len()).expect("a message fits in 4 GiB");
    buffer.extend_from_slice(&len.to_ne_bytes());
    buffer.extend_from_slice(&kind.to_ne_bytes());
    buffer.extend_from_slice(&flags.to_ne_bytes());
    buffer.extend_from_slice(&seq.to_ne_bytes());
    buffer.extend_from_slice(&0u32.to_ne_bytes());
    buffer.extend_from_slice(&[family, 0]);
    buffer.extend_from_slice(&res_id.to_be_bytes());
    buffer.extend_from_slice(body);
}

fn nft_type(message: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | message
}

/// A transaction: BATCH_BEGIN, one message per change (each acknowledged), BATCH_END.
fn batch(changes: &[Change], first_seq: u32) -> Vec<u8> {
    let mut buffer = Vec::new();
    push_message(&mut buffer, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, first_seq, 0, NFNL_SUBSYS_NFTABLES, &[]);
    for (i, change) in changes.iter().enumerate() {
        let (message, flags, body) = change_message(change);
        let seq = first_seq + 1 + i as u32;
        push_message(&mut buffer, nft_type(message), NLM_F_REQUEST | NLM_F_ACK | flags, seq, NFPROTO_IPV4, 0, &body.0);
    }
    let end = first_seq + 1 + changes.len() as u32;
    push_message(&mut buffer, NFNL_MSG_BATCH_END, NLM_F_REQUEST, end, 0, NFNL_SUBSYS_NFTABLES, &[]);
    buffer
}

/// One received netlink message.
struct Message<'b> {
    kind: u16,
    seq: u32,
    /// After the nlmsghdr.
    payload: &'b [u8],
}

impl Message<'_> {
    /// The (negative) errno of an NLMSG_ERROR message; 0 is an acknowledgement.
    fn error_code(&self) -> i32 {
        self.payload.get(..4).and_then(|code| code.try_into().ok()).map_or(0, i32::from_ne_bytes)
    }
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Splits a datagram into its netlink messages.
fn messages(mut bytes: &[u8]) -> anyhow::Result<Vec<Message<'_>>> {
    let mut out = Vec::new();
    while bytes.len() >= 16 {
        let len = u32_at(bytes, 0).unwrap_or(0) as usize;
        if len < 16 || len > bytes.len() {
            bail!("a malformed netlink message from the kernel (length {len}, {} bytes left)", bytes.len());
        }
        out.push(Message {
            kind: u16_at(bytes, 4).unwrap_or(0),
            seq: u32_at(bytes, 8).unwrap_or(0),
            payload: &bytes[16..len],
        });
        bytes = &bytes[len.next_multiple_of(4).min(bytes.len())..];
    }
    Ok(out)
}

/// The attributes of a message body or nested attribute: type (flags masked) -> value.
fn attributes(mut bytes: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let len = u16_at(bytes, 0).unwrap_or(0) as usize;
        let kind = u16_at(bytes, 2).unwrap_or(0) & NLA_TYPE_MASK;
        if len < 4 || len > bytes.len() {
            break;
        }
        out.push((kind, &bytes[4..len]));
        bytes = &bytes[len.next_multiple_of(4).min(bytes.len())..];
    }
    out
}

fn attribute<'b>(attrs: &[(u16, &'b [u8])], kind: u16) -> Option<&'b [u8]> {
    attrs.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v)
}

fn string(value: Option<&[u8]>) -> Option<&str> {
    std::str::from_utf8(value?.split(|b| *b == 0).next()?).ok()
}

/// The comment of a rule from its userdata TLVs.
fn rule_comment(userdata: &[u8]) -> Option<String> {
    let mut rest = userdata;
    while rest.len() >= 2 {
        let (kind, len) = (rest[0], rest[1] as usize);
        let value = rest.get(2..2 + len)?;
        if kind == NFTNL_UDATA_RULE_COMMENT {
            return string(Some(value)).map(str::to_owned);
        }
        rest = &rest[2 + len..];
    }
    None
}

/// The elements of a GETSETELEM answer's body.
fn parse_elements(body: &[u8]) -> Vec<Element> {
    let attrs = attributes(body);
    let Some(list) = attribute(&attrs, NFTA_SET_ELEM_LIST_ELEMENTS) else {
        return vec![];
    };
    attributes(list)
        .into_iter()
        .filter(|(kind, _)| *kind == NFTA_LIST_ELEM)
        .filter_map(|(_, element)| {
            let element = attributes(element);
            let key = attributes(attribute(&element, NFTA_SET_ELEM_KEY)?);
            let octets: [u8; 4] = attribute(&key, NFTA_DATA_VALUE)?.try_into().ok()?;
            let flags = attribute(&element, NFTA_SET_ELEM_FLAGS)
                .and_then(|v| v.try_into().ok())
                .map(u32::from_be_bytes)
                .unwrap_or(0);
            Some(Element { key: Ipv4Addr::from(octets), end: flags & NFT_SET_ELEM_INTERVAL_END != 0 })
        })
        .collect()
}

/// A NETLINK_NETFILTER socket in the calling thread's network namespace.
struct NfSocket {
    socket: Socket,
    seq: u32,
}

/// How long to wait for the kernel's answer before giving up (it answers within the send).
const RECEIVE_TIMEOUT_SECS: libc::time_t = 5;
/// Room for one datagram from the kernel (a dump answer is split into datagrams of a page or so).
const RECEIVE_BUFFER: usize = 64 * 1024;

impl NfSocket {
    fn open() -> anyhow::Result<Self> {
        let mut socket = Socket::new(NETLINK_NETFILTER).context("opening a NETLINK_NETFILTER socket")?;
        socket.bind_auto().context("binding a NETLINK_NETFILTER socket")?;
        socket.connect(&SocketAddr::new(0, 0)).context("connecting a NETLINK_NETFILTER socket to the kernel")?;
        let timeout = libc::timeval { tv_sec: RECEIVE_TIMEOUT_SECS, tv_usec: 0 };
        // SAFETY: the fd is open and `timeout` is a valid timeval of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("setting a receive timeout on the netlink socket");
        }
        let seq =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as u32).unwrap_or(1);
        Ok(NfSocket { socket, seq })
    }

    fn next_seq(&mut self, count: u32) -> u32 {
        let first = self.seq;
        self.seq = self.seq.wrapping_add(count);
        first
    }

    fn receive(&self) -> anyhow::Result<Vec<u8>> {
        let mut buffer = Vec::with_capacity(RECEIVE_BUFFER);
        self.socket.recv(&mut buffer, 0).context("reading nf_tables' answer")?;
        Ok(buffer)
    }

    /// Dumps `message` objects of family ip; returns each answer's body (after the nfgenmsg).
    /// ENOENT (the table does not exist) is an empty answer.
    fn dump(&mut self, message: u16, filter: Attrs) -> anyhow::Result<Vec<Vec<u8>>> {
        let seq = self.next_seq(1);
        let mut request = Vec::new();
        push_message(&mut request, nft_type(message), NLM_F_REQUEST | NLM_F_DUMP, seq, NFPROTO_IPV4, 0, &filter.0);
        self.socket.send(&request, 0).context("sending an nf_tables dump request")?;
        let mut bodies = Vec::new();
        loop {
            let datagram = self.receive()?;
            for reply in messages(&datagram)? {
                if reply.seq != seq {
                    continue;
                }
                match reply.kind {
                    NLMSG_DONE => return Ok(bodies),
                    NLMSG_ERROR => {
                        let code = reply.error_code();
                        if code == 0 || code == -libc::ENOENT {
                            return Ok(bodies);
                        }
                        return Err(std::io::Error::from_raw_os_error(-code))
                            .with_context(|| format!("dumping nf_tables objects (message {message})"));
                    }
                    _ => bodies.push(reply.payload.get(4..).unwrap_or_default().to_vec()),
                }
            }
        }
    }

    /// Reads our table: whether it exists, its chain, sets with elements, and the chain's rules.
    fn observe(&mut self) -> anyhow::Result<Observed> {
        let mut observed = Observed::default();
        let is_ours = |body: &[u8], kind: u16| string(attribute(&attributes(body), kind)) == Some(TABLE);
        observed.table = self.dump(NFT_MSG_GETTABLE, Attrs::default())?.iter().any(|b| is_ours(b, NFTA_TABLE_NAME));
        if !observed.table {
            return Ok(observed);
        }
        observed.chain = self.dump(NFT_MSG_GETCHAIN, Attrs::default())?.iter().any(|body| {
            let attrs = attributes(body);
            string(attribute(&attrs, NFTA_CHAIN_TABLE)) == Some(TABLE)
                && string(attribute(&attrs, NFTA_CHAIN_NAME)) == Some(CHAIN)
        });
        let sets: Vec<String> = self
            .dump(NFT_MSG_GETSET, Attrs::default().string(NFTA_SET_TABLE, TABLE))?
            .iter()
            .filter(|body| is_ours(body, NFTA_SET_TABLE))
            .filter_map(|body| string(attribute(&attributes(body), NFTA_SET_NAME)).map(str::to_owned))
            .collect();
        for set in sets {
            let elements =
                self.dump(NFT_MSG_GETSETELEM, our_set(&set))?.iter().flat_map(|b| parse_elements(b)).collect();
            observed.sets.insert(set, elements);
        }
        if observed.chain {
            observed.rules = self
                .dump(NFT_MSG_GETRULE, our_chain())?
                .iter()
                .filter(|body| is_ours(body, NFTA_RULE_TABLE))
                .map(|body| attribute(&attributes(body), NFTA_RULE_USERDATA).and_then(rule_comment))
                .collect();
        }
        Ok(observed)
    }

    /// Writes `changes` as one transaction: all of them or, on the first error, none.
    fn transaction(&mut self, changes: &[Change]) -> anyhow::Result<()> {
        let first = self.next_seq(changes.len() as u32 + 2);
        self.socket.send(&batch(changes, first), 0).context("sending an nf_tables transaction")?;
        let mut pending: BTreeSet<u32> = (first + 1..=first + changes.len() as u32).collect();
        let mut errors = Vec::new();
        while !pending.is_empty() {
            let datagram = self.receive()?;
            for reply in messages(&datagram)? {
                if reply.kind != NLMSG_ERROR || !pending.remove(&reply.seq) {
                    continue;
                }
                let code = reply.error_code();
                if code != 0 {
                    let change = &changes[(reply.seq - first - 1) as usize];
                    errors.push(format!("{change:?}: {}", std::io::Error::from_raw_os_error(-code)));
                }
            }
            // After a failure the kernel aborts the transaction and may not answer every message.
            if !errors.is_empty() {
                break;
            }
        }
        if !errors.is_empty() {
            bail!("nf_tables refused the transaction ({})", errors.join("; "));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PlannedRoute;

    fn net(text: &str) -> Ipv4Net {
        text.parse().expect("test CIDR")
    }

    fn element(key: &str, end: bool) -> Element {
        Element { key: key.parse().expect("test address"), end }
    }

    fn plan_with(pools: &[(&str, bool)]) -> Plan {
        let yaml = include_str!("../../../examples/two-nodes.yaml");
        let (model, _) = crate::datastore::file::parse(yaml).expect("example YAML");
        let (mut plan, _) = crate::plan::compute(&model, "node-1").expect("a plan");
        plan.routes.retain(|_, route| route.target != RouteTarget::Pool);
        for (cidr, nat_outgoing) in pools {
            plan.routes.insert(
                net(cidr),
                PlannedRoute { target: RouteTarget::Pool, pool: Some((*cidr).into()), nat_outgoing: *nat_outgoing },
            );
        }
        plan
    }

    #[test]
    fn masquerade_only_when_a_pool_has_nat_outgoing() {
        assert_eq!(masquerade(&plan_with(&[("10.244.0.0/16", false)])), None);
        assert_eq!(
            masquerade(&plan_with(&[("10.244.0.0/16", true), ("10.245.0.0/16", false)])),
            Some(Masquerade {
                masq_pools: vec![net("10.244.0.0/16")],
                all_pools: vec![net("10.244.0.0/16"), net("10.245.0.0/16")],
            })
        );
        // Blocks and workloads inside a pool are not pools.
        let plan = plan_with(&[("10.244.0.0/16", true)]);
        assert_eq!(masquerade(&plan).map(|m| m.all_pools), Some(vec![net("10.244.0.0/16")]));
    }

    #[test]
    fn intervals_merge_and_end_one_past_the_range() {
        assert_eq!(
            interval_elements(&[net("10.244.0.0/16")]),
            BTreeSet::from([element("10.244.0.0", false), element("10.245.0.0", true)])
        );
        // Adjacent and nested ranges merge into one interval.
        assert_eq!(
            interval_elements(&[net("10.245.0.0/16"), net("10.244.0.0/16"), net("10.244.8.0/24")]),
            BTreeSet::from([element("10.244.0.0", false), element("10.246.0.0", true)])
        );
        assert_eq!(
            interval_elements(&[net("10.0.0.0/24"), net("10.0.2.0/24")]),
            BTreeSet::from([
                element("10.0.0.0", false),
                element("10.0.1.0", true),
                element("10.0.2.0", false),
                element("10.0.3.0", true)
            ])
        );
        // A range to the top of the address space has no end element.
        assert_eq!(interval_elements(&[net("255.0.0.0/8")]), BTreeSet::from([element("255.0.0.0", false)]));
        assert_eq!(interval_elements(&[]), BTreeSet::new());
    }

    #[test]
    fn sets_are_described_as_the_prefixes_they_cover() {
        let cidrs = [net("10.244.0.0/16"), net("10.245.0.0/16"), net("10.0.2.0/24"), net("255.0.0.0/8")];
        assert_eq!(describe(&interval_elements(&cidrs)), "10.0.2.0/24, 10.244.0.0/15, 255.0.0.0/8");
        assert_eq!(describe(&BTreeSet::from([element("10.0.0.0", true)])), "?-10.0.0.0");
    }

    fn in_step(wanted: &Masquerade) -> Observed {
        Observed {
            table: true,
            chain: true,
            sets: BTreeMap::from([
                (MASQ_POOLS_SET.to_owned(), interval_elements(&wanted.masq_pools)),
                (ALL_POOLS_SET.to_owned(), interval_elements(&wanted.all_pools)),
            ]),
            rules: vec![Some(RULE_COMMENT.to_owned())],
        }
    }

    #[test]
    fn a_table_in_step_needs_no_write() {
        let wanted = Masquerade { masq_pools: vec![net("10.244.0.0/16")], all_pools: vec![net("10.244.0.0/16")] };
        assert_eq!(changes(Some(&wanted), &in_step(&wanted)), vec![]);
        assert_eq!(changes(None, &Observed::default()), vec![]);
    }

    #[test]
    fn a_missing_table_is_made_whole_sets_before_the_rule() {
        let wanted = Masquerade {
            masq_pools: vec![net("10.244.0.0/16")],
            all_pools: vec![net("10.244.0.0/16"), net("10.250.0.0/16")],
        };
        let all = interval_elements(&wanted.all_pools);
        assert_eq!(
            changes(Some(&wanted), &Observed::default()),
            vec![
                Change::AddTable,
                Change::AddSet(MASQ_POOLS_SET),
                Change::AddElements(MASQ_POOLS_SET, interval_elements(&wanted.masq_pools)),
                Change::AddSet(ALL_POOLS_SET),
                Change::AddElements(ALL_POOLS_SET, all),
                Change::AddChain,
                Change::AddRule,
            ]
        );
    }

    #[test]
    fn only_what_differs_is_written() {
        let before = Masquerade { masq_pools: vec![net("10.244.0.0/16")], all_pools: vec![net("10.244.0.0/16")] };
        let after = Masquerade {
            masq_pools: vec![net("10.244.0.0/16")],
            all_pools: vec![net("10.244.0.0/16"), net("10.250.0.0/16")],
        };
        assert_eq!(
            changes(Some(&after), &in_step(&before)),
            vec![
                Change::FlushSet(ALL_POOLS_SET),
                Change::AddElements(ALL_POOLS_SET, interval_elements(&after.all_pools))
            ]
        );
        // A foreign or stale rule in our chain is replaced; a missing set is made.
        let mut observed = in_step(&after);
        observed.rules = vec![None, Some(RULE_COMMENT.to_owned())];
        observed.sets.remove(MASQ_POOLS_SET);
        assert_eq!(
            changes(Some(&after), &observed),
            vec![
                Change::AddSet(MASQ_POOLS_SET),
                Change::AddElements(MASQ_POOLS_SET, interval_elements(&after.masq_pools)),
                Change::FlushChain,
                Change::AddRule,
            ]
        );
        // No pool needs it any more: the table goes.
        assert_eq!(changes(None, &in_step(&after)), vec![Change::DeleteTable]);
    }

    #[test]
    fn a_kernel_without_nf_tables_is_told_from_other_errors() {
        let absent = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::EPROTONOSUPPORT))
            .context("opening a NETLINK_NETFILTER socket");
        assert!(nf_tables_absent(&absent));
        let refused = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::EPERM)).context("dumping");
        assert!(!nf_tables_absent(&refused));
        assert!(!nf_tables_absent(&anyhow::anyhow!("nf_tables refused the transaction")));
    }

    #[test]
    fn thousands_of_pools_are_split_over_messages() {
        // 1500 disjoint /24 pools: 3000 elements.
        let pools: Vec<Ipv4Net> =
            (0..1500u32).map(|i| Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (i << 9)), 24).expect("a /24")).collect();
        let wanted = Masquerade { masq_pools: pools.clone(), all_pools: pools };
        let mut total = 0;
        for change in changes(Some(&wanted), &Observed::default()) {
            if let Change::AddElements(_, elements) = &change {
                assert!(elements.len() <= MAX_ELEMENTS_PER_MESSAGE);
                total += elements.len();
                // The attribute holding them stays under 64 KiB.
                let (_, _, body) = change_message(&change);
                assert!(body.0.len() < usize::from(u16::MAX), "{}", body.0.len());
            }
        }
        assert_eq!(total, 2 * 3000);
    }

    #[test]
    fn element_lists_read_back_as_written() {
        let elements = interval_elements(&[net("10.244.0.0/16"), net("10.0.0.0/8")]);
        let body = element_list(MASQ_POOLS_SET, &elements);
        let attrs = attributes(&body.0);
        assert_eq!(string(attribute(&attrs, NFTA_SET_ELEM_LIST_SET)), Some(MASQ_POOLS_SET));
        assert_eq!(parse_elements(&body.0).into_iter().collect::<BTreeSet<_>>(), elements);
    }

    #[test]
    fn the_rule_carries_its_comment_and_five_expressions() {
        let rule = masquerade_rule();
        let attrs = attributes(&rule.0);
        assert_eq!(attribute(&attrs, NFTA_RULE_USERDATA).and_then(rule_comment).as_deref(), Some(RULE_COMMENT));
        let expressions = attributes(attribute(&attrs, NFTA_RULE_EXPRESSIONS).expect("expressions"));
        let names: Vec<_> =
            expressions.iter().map(|(_, e)| string(attribute(&attributes(e), NFTA_EXPR_NAME))).collect();
        assert_eq!(names, [Some("payload"), Some("lookup"), Some("payload"), Some("lookup"), Some("masq")]);
    }

    #[test]
    fn a_batch_is_framed_and_every_change_asks_for_an_ack() {
        let changes = [Change::AddTable, Change::AddChain];
        let bytes = batch(&changes, 100);
        let parsed = messages(&bytes).expect("well-formed");
        let kinds: Vec<_> = parsed.iter().map(|m| (m.kind, m.seq)).collect();
        assert_eq!(
            kinds,
            [
                (NFNL_MSG_BATCH_BEGIN, 100),
                (nft_type(NFT_MSG_NEWTABLE), 101),
                (nft_type(NFT_MSG_NEWCHAIN), 102),
                (NFNL_MSG_BATCH_END, 103)
            ]
        );
        // res_id of the batch markers names the nf_tables subsystem, big-endian.
        assert_eq!(&parsed[0].payload[2..4], &NFNL_SUBSYS_NFTABLES.to_be_bytes());
    }

    #[test]
    fn an_error_message_carries_its_errno_and_an_ack_zero() {
        // nlmsghdr then nlmsgerr's code (the echoed request is left out: it is not read).
        let error = |seq: u32, code: i32| {
            let mut bytes = 20u32.to_ne_bytes().to_vec();
            bytes.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            bytes.extend_from_slice(&0u16.to_ne_bytes());
            bytes.extend_from_slice(&seq.to_ne_bytes());
            bytes.extend_from_slice(&0u32.to_ne_bytes());
            bytes.extend_from_slice(&code.to_ne_bytes());
            bytes
        };
        let bytes = [error(7, -libc::ENOENT), error(8, 0)].concat();
        let parsed = messages(&bytes).expect("well-formed");
        let codes: Vec<_> = parsed.iter().map(|m| (m.kind, m.seq, m.error_code())).collect();
        assert_eq!(codes, [(NLMSG_ERROR, 7, -libc::ENOENT), (NLMSG_ERROR, 8, 0)]);
    }
}
