//! Thin wrappers over the system calls the agent needs: interfaces, addresses, bpffs.

use std::{
    collections::BTreeMap,
    ffi::{CStr, CString},
    fs,
    net::Ipv4Addr,
    path::Path,
};

use anyhow::{bail, Context as _};

/// The ifindex of `name` in this network namespace, if the interface exists.
pub fn ifindex(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Every interface of this network namespace, by name.
pub fn interfaces() -> anyhow::Result<BTreeMap<String, u32>> {
    // SAFETY: if_nameindex returns an array terminated by a zero entry, freed below.
    let head = unsafe { libc::if_nameindex() };
    if head.is_null() {
        return Err(std::io::Error::last_os_error()).context("listing interfaces (if_nameindex)");
    }
    let mut found = BTreeMap::new();
    let mut cursor = head;
    loop {
        // SAFETY: `cursor` stays within the array, which ends with a zero entry.
        let entry = unsafe { &*cursor };
        if entry.if_index == 0 || entry.if_name.is_null() {
            break;
        }
        // SAFETY: if_name is a NUL-terminated string owned by the array.
        let name = unsafe { std::ffi::CStr::from_ptr(entry.if_name) };
        found.insert(name.to_string_lossy().into_owned(), entry.if_index);
        // SAFETY: the terminating entry has not been reached, so the next one exists.
        cursor = unsafe { cursor.add(1) };
    }
    // SAFETY: `head` came from if_nameindex and is freed once.
    unsafe { libc::if_freenameindex(head) };
    Ok(found)
}

/// The MTU of interface `name` in this network namespace (`SIOCGIFMTU`; /sys/class/net would
/// show the namespace sysfs was mounted in, not ours).
pub fn mtu(name: &str) -> anyhow::Result<u32> {
    let request = interface_request(name, libc::SIOCGIFMTU, "SIOCGIFMTU")?;
    // SAFETY: SIOCGIFMTU filled the MTU member of the union.
    let mtu = unsafe { request.ifr_ifru.ifru_mtu };
    u32::try_from(mtu).with_context(|| format!("{name} reports MTU {mtu}"))
}

/// Whether interface `name` of this network namespace is up (`SIOCGIFFLAGS`).
pub fn is_up(name: &str) -> anyhow::Result<bool> {
    let request = interface_request(name, libc::SIOCGIFFLAGS, "SIOCGIFFLAGS")?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    Ok(flags & libc::IFF_UP as libc::c_short != 0)
}

/// Runs the interface ioctl `request` (called `what` in errors) for `name` on a datagram socket
/// of this network namespace; returns the ifreq the kernel filled.
fn interface_request(name: &str, request: libc::Ioctl, what: &str) -> anyhow::Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data; all zeroes is a valid (empty) request.
    let mut ifreq: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= ifreq.ifr_name.len() {
        bail!("interface name {name:?} is too long");
    }
    for (slot, byte) in ifreq.ifr_name.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: a plain datagram socket, closed below.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if socket < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("socket for {what}"));
    }
    // SAFETY: `ifreq` is a valid ifreq with a NUL-terminated name; the kernel fills its union.
    let rc = unsafe { libc::ioctl(socket, request, &mut ifreq) };
    let error = std::io::Error::last_os_error();
    // SAFETY: `socket` is ours and closed once.
    unsafe { libc::close(socket) };
    if rc != 0 {
        return Err(error).with_context(|| format!("{what} of {name}"));
    }
    Ok(ifreq)
}

/// The name of the interface that holds `addr`, if any.
pub fn interface_with_address(addr: Ipv4Addr) -> anyhow::Result<Option<String>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getifaddrs");
    }
    let mut found = None;
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned, not yet freed.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points to a sockaddr of the family it states.
        let family = unsafe { (*entry.ifa_addr).sa_family };
        if i32::from(family) != libc::AF_INET {
            continue;
        }
        // SAFETY: an AF_INET sockaddr is a sockaddr_in.
        let sin = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
        if Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)) == addr {
            // SAFETY: ifa_name is a NUL-terminated string owned by the list.
            let name = unsafe { CStr::from_ptr(entry.ifa_name) };
            found = Some(name.to_string_lossy().into_owned());
            break;
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(found)
}

/// Where bpffs is mounted by convention.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Makes sure `pin_path` is a directory on a bpffs, mounting one at /sys/fs/bpf if needed.
pub fn prepare_pin_path(pin_path: &Path) -> anyhow::Result<()> {
    if !pin_path.starts_with(BPFFS_ROOT) {
        bail!(
            "--pin-path {} is not under {BPFFS_ROOT}: pins must live on a bpffs so that they \
             survive the agent",
            pin_path.display()
        );
    }
    if !bpffs_mounted(Path::new(BPFFS_ROOT))? {
        let target = CString::new(BPFFS_ROOT).context("bpffs path")?;
        let fstype = CString::new("bpf").context("bpffs type")?;
        // SAFETY: all pointers are valid NUL-terminated strings; no mount data.
        let rc = unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| {
                format!("mounting bpffs at {BPFFS_ROOT} (the agent needs root, or mount it yourself)")
            });
        }
        tracing::info!(path = BPFFS_ROOT, "mounted bpffs");
    }
    create_private_dir(pin_path)
}

/// Creates `dir` (and its parents) and makes it root's alone (0700): the pinned maps hold the
/// cluster's addresses and flows, and a pinned program link could be replaced by anyone who can
/// open it. An existing directory is tightened too (an older agent made them 0755).
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::create_dir_all(dir).with_context(|| format!("creating pin directory {}", dir.display()))?;
    // The bpffs root is shared with every other BPF user of the host (sticky and open to all by
    // default): pins given right there keep their own 0600 modes, the root stays as it is.
    if dir == Path::new(BPFFS_ROOT) {
        return Ok(());
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(PIN_DIR_MODE))
        .with_context(|| format!("making pin directory {} private (mode 0700)", dir.display()))
}

/// Mode of the pin directories: only their owner (root) may list or open them.
pub const PIN_DIR_MODE: u32 = 0o700;

fn bpffs_mounted(at: &Path) -> anyhow::Result<bool> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    Ok(mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, fstype) = (fields.next(), fields.next(), fields.next());
        target.map(Path::new) == Some(at) && fstype == Some("bpf")
    }))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn pin_directories_are_made_private_and_existing_ones_tightened() {
        let base = std::env::temp_dir().join(format!("dataplane-pin-mode-{}", std::process::id()));
        let pins = base.join("pins");
        let links = pins.join("links");
        create_private_dir(&links).expect("creates");
        let mode = |dir: &Path| fs::metadata(dir).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&links), 0o700);
        fs::set_permissions(&pins, fs::Permissions::from_mode(0o755)).expect("chmod");
        create_private_dir(&pins).expect("exists already");
        assert_eq!(mode(&pins), 0o700, "an existing directory is tightened");
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn loopback_answers_and_unknown_or_overlong_names_are_errors() {
        // Every network namespace has lo (up or down, with an MTU); no namespace has this name.
        assert!(is_up("lo").is_ok());
        assert!(mtu("lo").expect("lo has an MTU") > 0);
        assert!(is_up("no-such-if0").is_err());
        assert!(mtu("a-name-longer-than-ifnamsiz").unwrap_err().to_string().contains("too long"));
    }
}
