//! The uplink's XDP program (`xdp_uplink`): attached natively where the driver has XDP and
//! generically (SKB mode) otherwise, through a bpf_link pinned beside the TC links, so that it
//! outlives the agent and the next agent swaps its own program into it (BPF_LINK_UPDATE).
//!
//! A veth uplink gets no XDP unless asked (`--xdp native|generic`): native XDP on a veth makes the
//! kernel take GSO from the veth's peer (every TCP segment then crosses one by one), which cut
//! pod-to-pod TCP to a quarter in the lab, and generic XDP copies every GSO packet and left the
//! VXLAN GRO anchor nothing to merge (BENCHMARKS.md).
//!
//! XDP is an addition: without it (a kernel or driver that refuses both modes) the TC program
//! `from_uplink` refuses the same packets, one skb later.

use std::{fmt, path::Path};

use anyhow::Context as _;
use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
        Xdp, XdpMode as AyaXdpMode,
    },
    util::KernelVersion,
    Ebpf,
};
use dataplane_common::PROG_XDP_UPLINK;
use rtnetlink::packet_route::{
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage, LinkXdp, XdpAttached},
    RouteNetlinkMessage,
};
use tracing::{info, warn};

use super::clsact;

/// How the XDP program runs on the uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver, before an skb exists.
    Native,
    /// In the stack (SKB mode): the driver has no XDP, so an skb exists, but GRO and the TC
    /// programs are still spared.
    Generic,
    /// Not attached: `from_uplink` alone judges tunnel packets.
    None,
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
            XdpMode::None => "none",
        })
    }
}

/// How the agent attaches the XDP program (`dataplane run --xdp`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpChoice {
    /// Native where the driver has it, else generic; none on a veth.
    #[default]
    Auto,
    /// Native only.
    Native,
    /// Generic (SKB mode) only.
    Generic,
    /// No XDP program.
    Off,
}

/// Prefix of the pin name of an XDP link in the links directory.
const PIN_PREFIX: &str = "xdp_";

/// The pin name of the XDP link of `interface`: `xdp_` and the name, escaped as the TC links'
/// names are (bpffs refuses dots).
pub fn pin_name(interface: &str) -> String {
    format!("{PIN_PREFIX}{}", super::bpf::escape_pin_name(interface))
}

/// The interface an XDP link pin name stands for (the reverse of [`pin_name`]).
pub fn parse_pin_name(name: &str) -> Option<String> {
    name.strip_prefix(PIN_PREFIX).map(super::bpf::unescape_pin_name)
}

/// The link message of `ifindex` (RTM_GETLINK).
fn get_link(ifindex: u32) -> anyhow::Result<Vec<LinkMessage>> {
    let mut message = LinkMessage::default();
    message.header.index = ifindex;
    let replies = clsact::rtnetlink_request(RouteNetlinkMessage::GetLink(message), 0)
        .with_context(|| format!("reading interface {ifindex} (RTM_GETLINK)"))?;
    Ok(replies
        .into_iter()
        .filter_map(|reply| match reply {
            RouteNetlinkMessage::NewLink(link) => Some(link),
            _ => None,
        })
        .collect())
}

/// Whether `ifindex` is a veth.
pub fn is_veth(ifindex: u32) -> anyhow::Result<bool> {
    Ok(get_link(ifindex)?.iter().flat_map(|link| &link.attributes).any(|attribute| {
        matches!(attribute, LinkAttribute::LinkInfo(infos)
            if infos.iter().any(|info| matches!(info, LinkInfo::Kind(InfoKind::Veth))))
    }))
}

/// The modes to try on an interface, in order: native, then generic, as `choice` says; none on
/// a veth unless asked (see the module's comment).
pub fn modes(choice: XdpChoice, veth: bool) -> &'static [(XdpMode, AyaXdpMode)] {
    match choice {
        XdpChoice::Auto if veth => &[],
        XdpChoice::Auto => &[(XdpMode::Native, AyaXdpMode::Driver), (XdpMode::Generic, AyaXdpMode::Skb)],
        XdpChoice::Native => &[(XdpMode::Native, AyaXdpMode::Driver)],
        XdpChoice::Generic => &[(XdpMode::Generic, AyaXdpMode::Skb)],
        XdpChoice::Off => &[],
    }
}

/// The XDP program the kernel has on `ifindex` (IFLA_XDP): how it runs and its id; None when
/// there is none.
pub fn observe(ifindex: u32) -> anyhow::Result<Option<(XdpMode, u32)>> {
    for link in get_link(ifindex)? {
        for attribute in &link.attributes {
            let LinkAttribute::Xdp(xdp) = attribute else { continue };
            let mode = xdp.iter().find_map(|a| match a {
                LinkXdp::Attached(XdpAttached::Driver) => Some(XdpMode::Native),
                LinkXdp::Attached(XdpAttached::SocketBuffer) => Some(XdpMode::Generic),
                _ => None,
            });
            let id = xdp.iter().find_map(|a| match a {
                LinkXdp::ProgId(id) => Some(*id),
                _ => None,
            });
            if let (Some(mode), Some(id)) = (mode, id) {
                return Ok(Some((mode, id)));
            }
        }
    }
    Ok(None)
}

/// Attaches `xdp_uplink` to `interface`, adopting the link an earlier agent pinned in `links_dir`
/// when there is one; natively if the driver can, else generically. A kernel or driver that
/// refuses both gets [`XdpMode::None`] and a warning: the TC programs keep doing the work.
pub fn attach(
    ebpf: &mut Ebpf,
    links_dir: &Path,
    interface: &str,
    ifindex: u32,
    choice: XdpChoice,
) -> anyhow::Result<XdpMode> {
    let pin = links_dir.join(pin_name(interface));
    let prog: &mut Xdp = ebpf
        .program_mut(PROG_XDP_UPLINK)
        .with_context(|| format!("program {PROG_XDP_UPLINK} missing"))?
        .try_into()
        .with_context(|| format!("program {PROG_XDP_UPLINK} is not an XDP program"))?;
    if prog.fd().is_err() {
        // Its load failed at start (and was reported then).
        return Ok(XdpMode::None);
    }
    if !KernelVersion::current().is_ok_and(|version| version >= KernelVersion::new(5, 9, 0)) {
        warn!(%interface, xdp = %XdpMode::None, "no XDP links before Linux 5.9: from_uplink alone refuses the tunnel packets");
        return Ok(XdpMode::None);
    }
    let veth = is_veth(ifindex)?;
    if modes(choice, veth).is_empty() {
        if choice == XdpChoice::Auto {
            info!(%interface, xdp = %XdpMode::None, "a veth uplink gets no XDP unless --xdp native|generic asks: native takes GSO from its peer, generic defeats the VXLAN GRO anchor");
        }
        // A link an earlier agent pinned goes with the stale-link sweep.
        return Ok(XdpMode::None);
    }
    if pin.exists() {
        match adopt(prog, &pin) {
            Ok(()) => {
                let mode = observe(ifindex)?.map_or(XdpMode::None, |(mode, _)| mode);
                info!(%interface, program = PROG_XDP_UPLINK, xdp = %mode, adopted = true, "attached");
                return Ok(mode);
            }
            // The interface it was attached to is gone (re-created): start afresh.
            Err(error) => {
                warn!(%interface, error = %format!("{error:#}"), "pinned XDP link is stale; attaching anew");
                super::bpf::remove_pin(&pin)?;
            }
        }
    }
    let mut refusals = Vec::new();
    for &(mode, flags) in modes(choice, veth) {
        let id = match prog.attach_to_if_index(ifindex, flags) {
            Ok(id) => id,
            Err(error) => {
                refusals.push(format!("{mode}: {error}"));
                continue;
            }
        };
        // A link of the kernel's (bpf_link) is what can be pinned; aya falls back to a netlink
        // attachment where the kernel refuses to create the link with EINVAL, which cannot.
        let link: FdLink = prog.take_link(id)?.try_into().with_context(|| {
            format!(
                "the kernel attached {PROG_XDP_UPLINK} to {interface} without a bpf_link, which cannot be pinned: \
                 remove it (ip link set dev {interface} xdp off) and run the agent on Linux 5.9+"
            )
        })?;
        link.pin(&pin).with_context(|| format!("pinning the XDP link at {}", pin.display()))?;
        info!(%interface, program = PROG_XDP_UPLINK, xdp = %mode, veth, adopted = false, "attached");
        return Ok(mode);
    }
    warn!(
        %interface,
        xdp = %XdpMode::None,
        "no XDP on the uplink ({}): from_uplink alone refuses the tunnel packets, after the kernel built their skbs",
        refusals.join("; ")
    );
    Ok(XdpMode::None)
}

/// Swaps `prog` into the XDP link pinned at `pin` (BPF_LINK_UPDATE).
fn adopt(prog: &mut Xdp, pin: &Path) -> anyhow::Result<()> {
    let pinned = PinnedLink::from_pin(pin).with_context(|| format!("opening pinned link {}", pin.display()))?;
    let link =
        XdpLink::try_from(FdLink::from(pinned)).with_context(|| format!("{} is not an XDP link", pin.display()))?;
    let id = prog.attach_to_link(link).context("updating the pinned XDP link")?;
    // The pin keeps the link: this process only lets go of its descriptor.
    let link: FdLink = prog.take_link(id)?.try_into().context("XDP link as fd link")?;
    drop(link);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_round_trip_and_are_told_from_tc_links() {
        for name in ["eth0", "vxlan.calico", "odd%name.1"] {
            let pin = pin_name(name);
            assert!(!pin.contains('.'), "{pin}");
            assert_eq!(parse_pin_name(&pin).as_deref(), Some(name));
        }
        assert_eq!(parse_pin_name("ingress_eth0"), None);
        assert_eq!(XdpMode::Native.to_string(), "native");
        assert_eq!(XdpMode::Generic.to_string(), "generic");
        assert_eq!(XdpMode::None.to_string(), "none");
    }

    #[test]
    fn auto_is_native_then_generic_and_nothing_on_a_veth() {
        let names = |choice, veth| modes(choice, veth).iter().map(|(m, _)| *m).collect::<Vec<_>>();
        assert_eq!(names(XdpChoice::Auto, false), [XdpMode::Native, XdpMode::Generic]);
        assert_eq!(names(XdpChoice::Auto, true), []);
        assert_eq!(names(XdpChoice::Native, true), [XdpMode::Native]);
        assert_eq!(names(XdpChoice::Generic, false), [XdpMode::Generic]);
        assert_eq!(names(XdpChoice::Off, false), []);
    }
}
