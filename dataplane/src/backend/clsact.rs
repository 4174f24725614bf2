//! Attaching the programs through a clsact qdisc, for kernels without tcx (before Linux 6.6,
//! e.g. Debian 12's 6.1).
//!
//! Each program is a direct-action `bpf` filter at our own priority and handle, named
//! `dataplane:<program>`, so `tc filter show` says whose it is and nothing of anyone else's is
//! ever touched: a filter is ours only when slot and name both match. Filters outlive the agent
//! (they hold the programs), so a new agent takes them over by replacing each one in place
//! (RTM_NEWTFILTER on the existing handle without NLM_F_EXCL: cls_bpf swaps the program under
//! RCU), and no packet ever meets the hook without a program.
//!
//! The qdisc is created when absent and never deleted: it may hold other tools' filters, and an
//! empty clsact qdisc costs nothing.
//!
//! Netlink is spoken synchronously here (one socket per call), so the agent, `dataplane check`
//! and `dataplane cleanup` share the code without an async runtime.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use anyhow::{bail, Context as _};
use aya::programs::TcAttachType;
use rtnetlink::{
    packet_core::{
        NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
    },
    packet_route::{
        tc::{TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
        RouteNetlinkMessage,
    },
    sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr},
};

/// The priority of our filters: 1, so they run before any other tool's filters on the hook
/// (our programs decide every packet with a direct-action verdict).
pub const FILTER_PRIORITY: u16 = 1;

/// The handle of our filters ("da7a"), one per hook.
pub const FILTER_HANDLE: u32 = 0xda7a;

/// Every filter of ours is named this followed by the program's name.
pub const NAME_PREFIX: &str = "dataplane:";

/// The filter kind of BPF classifiers.
const KIND_BPF: &str = "bpf";

/// The qdisc kind that gives an interface ingress and egress filter hooks.
const KIND_CLSACT: &str = "clsact";

/// ETH_P_ALL: our filters see every protocol.
const ETH_P_ALL: u16 = 0x0003;

/// The name our filter running `program` carries.
pub fn filter_name(program: &str) -> String {
    format!("{NAME_PREFIX}{program}")
}

/// One filter on a clsact hook, as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    /// Its priority (lower runs first).
    pub priority: u16,
    /// Its handle within the priority.
    pub handle: u32,
    /// Its kind (`bpf`, `u32`, `flower`, ...).
    pub kind: String,
    /// For a `bpf` filter: the name it was given.
    pub name: Option<String>,
    /// For a `bpf` filter: the id of the program it runs.
    pub program_id: Option<u32>,
}

impl Filter {
    /// Whether the agent made this filter: our slot and a name of ours.
    pub fn is_ours(&self) -> bool {
        self.in_our_slot() && self.kind == KIND_BPF && self.name.as_deref().is_some_and(|n| n.starts_with(NAME_PREFIX))
    }

    fn in_our_slot(&self) -> bool {
        self.priority == FILTER_PRIORITY && self.handle == FILTER_HANDLE
    }
}

/// What attaching a program to a hook takes, given the filters already on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Our slot is empty: create the filter (exclusively).
    Create,
    /// A filter of ours holds the slot (an earlier agent's, or ours with an older program):
    /// replace its program in place.
    Replace,
    /// Someone else's filter holds our slot: leave it, and say whose it is.
    Occupied(String),
}

/// Decides how to attach our filter on a hook holding `filters`.
pub fn step(filters: &[Filter]) -> Step {
    match filters.iter().find(|f| f.in_our_slot()) {
        None => Step::Create,
        Some(filter) if filter.is_ours() => Step::Replace,
        Some(filter) => Step::Occupied(format!(
            "{} filter {}",
            filter.kind,
            filter.name.as_deref().map_or_else(|| "without a name".to_owned(), |n| format!("named {n:?}"))
        )),
    }
}

/// The hook's parent handle: `ffff:fff2` (ingress) or `ffff:fff3` (egress) of the clsact qdisc.
fn parent(direction: TcAttachType) -> TcHandle {
    let minor = match direction {
        TcAttachType::Egress => TcHandle::MIN_EGRESS,
        _ => TcHandle::MIN_INGRESS,
    };
    TcHandle { major: u16::MAX, minor }
}

/// `tcm_info` of a filter: its priority and protocol (network byte order).
fn filter_info(priority: u16) -> u32 {
    (u32::from(priority) << 16) | u32::from(ETH_P_ALL.to_be())
}

/// Our filter's slot on a hook of `ifindex` (parent, priority, handle, kind `bpf`): what both
/// attaching and removing it name.
fn our_filter(ifindex: u32, direction: TcAttachType) -> TcMessage {
    let mut message = TcMessage::with_index(ifindex as i32);
    message.header.parent = parent(direction);
    message.header.handle = FILTER_HANDLE.into();
    message.header.info = filter_info(FILTER_PRIORITY);
    message.attributes.push(TcAttribute::Kind(KIND_BPF.to_owned()));
    message
}

/// The name of a hook, as tc spells it.
pub fn hook_name(direction: TcAttachType) -> &'static str {
    match direction {
        TcAttachType::Egress => "egress",
        _ => "ingress",
    }
}

/// Adds a clsact qdisc to `ifindex` unless it has one. Returns whether it added one.
pub fn ensure_qdisc(ifindex: u32) -> anyhow::Result<bool> {
    let mut message = TcMessage::with_index(ifindex as i32);
    message.header.parent = TcHandle::CLSACT;
    message.header.handle = TcHandle { major: u16::MAX, minor: 0 };
    message.attributes.push(TcAttribute::Kind(KIND_CLSACT.to_owned()));
    match request(RouteNetlinkMessage::NewQueueDiscipline(message), NLM_F_CREATE | NLM_F_EXCL) {
        Ok(_) => Ok(true),
        Err(error) if error.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(error) => Err(error).with_context(|| format!("adding a clsact qdisc to interface {ifindex}")),
    }
}

/// The filters on one hook of `ifindex`; none when it has no clsact qdisc.
pub fn filters(ifindex: u32, direction: TcAttachType) -> io::Result<Vec<Filter>> {
    let mut message = TcMessage::with_index(ifindex as i32);
    message.header.parent = parent(direction);
    let replies = match request(RouteNetlinkMessage::GetTrafficFilter(message), NLM_F_DUMP) {
        Ok(replies) => replies,
        // No clsact (or ingress) qdisc: no hook, so no filters.
        Err(error) if matches!(error.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => Vec::new(),
        Err(error) => return Err(error),
    };
    let mut found = Vec::new();
    for reply in replies {
        // The dump also lists each priority's filter chain head (handle 0): not a filter.
        if u32::from(reply.header.handle) == 0 {
            continue;
        }
        let mut filter = Filter {
            priority: (reply.header.info >> 16) as u16,
            handle: reply.header.handle.into(),
            kind: String::new(),
            name: None,
            program_id: None,
        };
        for attribute in &reply.attributes {
            match attribute {
                TcAttribute::Kind(kind) => filter.kind = kind.clone(),
                TcAttribute::Options(options) => {
                    for option in options {
                        match option {
                            TcOption::Bpf(TcFilterBpfOption::ProgName(name)) => filter.name = Some(name.clone()),
                            TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => filter.program_id = Some(*id),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        found.push(filter);
    }
    Ok(found)
}

/// Attaches `program` (its fd) to a hook of `interface` as our direct-action filter, creating the
/// clsact qdisc if needed and replacing our earlier filter in place. Returns whether it replaced.
pub fn attach(
    interface: &str,
    ifindex: u32,
    direction: TcAttachType,
    program: &str,
    program_fd: BorrowedFd<'_>,
) -> anyhow::Result<bool> {
    let hook = hook_name(direction);
    ensure_qdisc(ifindex).with_context(|| format!("preparing {interface} for TC filters"))?;
    let existing = filters(ifindex, direction).with_context(|| format!("listing the {hook} filters of {interface}"))?;
    let (flags, replaced) = match step(&existing) {
        Step::Create => (NLM_F_CREATE | NLM_F_EXCL, false),
        // Without NLM_F_EXCL the kernel changes the existing filter: cls_bpf swaps the program.
        Step::Replace => (NLM_F_CREATE, true),
        Step::Occupied(whose) => bail!(
            "the {hook} hook of {interface} has a {whose} at priority {FILTER_PRIORITY} handle {FILTER_HANDLE:#x}, \
             where the agent puts its own: remove it (tc filter del dev {interface} {hook} pref {FILTER_PRIORITY} \
             handle {FILTER_HANDLE:#x} bpf) or free that slot"
        ),
    };
    let mut message = our_filter(ifindex, direction);
    message.attributes.push(TcAttribute::Options(vec![
        TcOption::Bpf(TcFilterBpfOption::ProgFd(program_fd.as_raw_fd() as u32)),
        TcOption::Bpf(TcFilterBpfOption::ProgName(filter_name(program))),
        TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
    ]));
    request(RouteNetlinkMessage::NewTrafficFilter(message), flags)
        .with_context(|| format!("attaching {program} as a {hook} filter of {interface}"))?;
    Ok(replaced)
}

/// Removes our filter from a hook of `ifindex`, if it has one. Returns whether it did.
pub fn detach(ifindex: u32, direction: TcAttachType) -> anyhow::Result<bool> {
    let hook = hook_name(direction);
    let existing = filters(ifindex, direction).with_context(|| format!("listing the {hook} filters of {ifindex}"))?;
    if !existing.iter().any(Filter::is_ours) {
        return Ok(false);
    }
    match request(RouteNetlinkMessage::DelTrafficFilter(our_filter(ifindex, direction)), 0) {
        Ok(_) => Ok(true),
        // Gone meanwhile (its interface was deleted).
        Err(error) if matches!(error.raw_os_error(), Some(libc::ENOENT | libc::ENODEV)) => Ok(false),
        Err(error) => Err(error).with_context(|| format!("removing our {hook} filter of interface {ifindex}")),
    }
}

/// Removes our filters from every interface of this network namespace except the hooks in
/// `keep` (ifindex and direction). Returns how many it removed.
pub fn detach_all_except(
    interfaces: impl IntoIterator<Item = u32>,
    keep: &[(u32, TcAttachType)],
) -> anyhow::Result<usize> {
    let mut removed = 0;
    for ifindex in interfaces {
        for direction in [TcAttachType::Ingress, TcAttachType::Egress] {
            let kept = keep.contains(&(ifindex, direction));
            if !kept && detach(ifindex, direction)? {
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// Sends one rtnetlink request and collects the traffic-control messages of its reply; fails
/// with the kernel's error (as an `io::Error` carrying the errno).
fn request(message: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<TcMessage>> {
    Ok(rtnetlink_request(message, flags)?
        .into_iter()
        .filter_map(|reply| match reply {
            RouteNetlinkMessage::NewTrafficFilter(tc) | RouteNetlinkMessage::NewQueueDiscipline(tc) => Some(tc),
            _ => None,
        })
        .collect())
}

/// Sends one rtnetlink request synchronously and collects the messages of its reply; fails with
/// the kernel's error (as an `io::Error` carrying the errno).
pub(super) fn rtnetlink_request(message: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    header.sequence_number = 1;
    let mut request = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
    request.finalize();
    let mut buffer = vec![0; request.buffer_len()];
    request.serialize(&mut buffer);
    socket.send(&buffer, 0)?;

    let mut replies = Vec::new();
    loop {
        let (datagram, _) = socket.recv_from_full()?;
        let mut offset = 0;
        while offset < datagram.len() {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[offset..])
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error.to_string()))?;
            let length = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::Done(_) => return Ok(replies),
                // An error message with code 0 is the acknowledgement.
                NetlinkPayload::Error(error) => {
                    return match error.code {
                        None => Ok(replies),
                        Some(_) => Err(error.to_io()),
                    }
                }
                NetlinkPayload::InnerMessage(message) => replies.push(message),
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(priority: u16, handle: u32, kind: &str, name: Option<&str>) -> Filter {
        Filter { priority, handle, kind: kind.to_owned(), name: name.map(str::to_owned), program_id: Some(7) }
    }

    #[test]
    fn an_empty_slot_is_created_and_ours_is_replaced() {
        assert_eq!(step(&[]), Step::Create);
        // Other tools' filters elsewhere on the hook do not matter.
        let others =
            [filter(FILTER_PRIORITY, 1, "bpf", Some("cil_from_container")), filter(49152, FILTER_HANDLE, "u32", None)];
        assert_eq!(step(&others), Step::Create);
        let ours = filter(FILTER_PRIORITY, FILTER_HANDLE, "bpf", Some("dataplane:from_workload"));
        assert_eq!(step(&[others[0].clone(), ours]), Step::Replace);
    }

    #[test]
    fn someone_elses_filter_in_our_slot_is_left_alone_and_named() {
        let theirs = filter(FILTER_PRIORITY, FILTER_HANDLE, "bpf", Some("calico_from_wep"));
        assert!(!theirs.is_ours());
        assert_eq!(step(&[theirs]), Step::Occupied("bpf filter named \"calico_from_wep\"".to_owned()));
        let unnamed = filter(FILTER_PRIORITY, FILTER_HANDLE, "u32", None);
        assert_eq!(step(&[unnamed]), Step::Occupied("u32 filter without a name".to_owned()));
    }

    #[test]
    fn ours_needs_our_slot_kind_and_name() {
        assert!(filter(FILTER_PRIORITY, FILTER_HANDLE, "bpf", Some(&filter_name("to_uplink"))).is_ours());
        assert!(!filter(FILTER_PRIORITY + 1, FILTER_HANDLE, "bpf", Some("dataplane:to_uplink")).is_ours());
        assert!(!filter(FILTER_PRIORITY, FILTER_HANDLE + 1, "bpf", Some("dataplane:to_uplink")).is_ours());
        assert!(!filter(FILTER_PRIORITY, FILTER_HANDLE, "bpf", Some("to_uplink")).is_ours());
    }

    #[test]
    fn filter_info_puts_the_priority_above_the_protocol_in_network_order() {
        assert_eq!(filter_info(1), 0x0001_0300);
        assert_eq!(u32::from(parent(TcAttachType::Ingress)), 0xffff_fff2);
        assert_eq!(u32::from(parent(TcAttachType::Egress)), 0xffff_fff3);
    }
}
