//! The host packages the VM commands need, installed on first use (never by `cargo xtask setup`:
//! CI does not run VMs).
//!
//! QEMU comes from bookworm-backports: the machine's `qemu-utils` is the backports version, and
//! bookworm's own `qemu-system-x86` (7.2) conflicts with it. The backports source is given to apt
//! on the command line only (a sources directory of our own under the cache), so the machine's
//! apt configuration is left as it is.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _};

use super::say;
use crate::setup;

/// Packages installed from bookworm-backports, each with why.
const BACKPORTS: &[(&str, &str)] = &[("qemu-system-x86", "the VMs (TCG here, KVM where the CPU has VMX/SVM)")];

/// Packages installed from the machine's own sources, each with why.
const PACKAGES: &[(&str, &str)] = &[
    ("qemu-utils", "qemu-img: the box's qcow2"),
    ("debootstrap", "the box's root file system from Debian's packages"),
    ("fdisk", "sfdisk: the box's partition table"),
    ("e2fsprogs", "mkfs.ext4 -d: the box's file system from a directory"),
    ("util-linux", "losetup, nsenter"),
    ("vagrant", "the cluster"),
    ("vagrant-libvirt", "Vagrant's libvirt provider"),
    ("libvirt-daemon-system", "libvirtd and its QEMU driver"),
    ("libvirt-clients", "virsh"),
    ("dnsmasq-base", "DHCP on the VMs' management network"),
    ("openssh-client", "ssh into the VMs"),
    ("binutils", "strip: a small agent binary to upload"),
    ("iproute2", "the VMs' network namespace"),
];

/// The apt source line of bookworm-backports.
const BACKPORTS_SOURCE: &str =
    "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main";

/// Installs whatever of [`BACKPORTS`] and [`PACKAGES`] is missing, saying what and why.
pub fn ensure(cache: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let all: Vec<&str> = BACKPORTS.iter().chain(PACKAGES).map(|(name, _)| *name).collect();
    let missing = setup::missing_of(&all, None)?;
    if missing.is_empty() {
        say(&format!("VM prerequisites present: {} ({:.1} s)", all.join(" "), started.elapsed().as_secs_f64()));
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the VM commands need root (packages to install: {}; namespaces, libvirtd)", missing.join(" "));
    }
    for (name, why) in BACKPORTS.iter().chain(PACKAGES) {
        if missing.contains(name) {
            say(&format!("will install {name}: {why}"));
        }
    }
    let parts = apt_sources(cache)?;
    let parts_option = format!("Dir::Etc::SourceParts={}", parts.display());
    let apt = |args: &[&str]| {
        let mut command = Command::new("apt-get");
        command
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["-q", "-o", "DPkg::Lock::Timeout=600", "-o", &parts_option])
            .args(args)
            .stdin(Stdio::null());
        command
    };
    let fix = "check that Debian's mirrors are reachable and that no other apt runs";
    setup::run_step(&mut apt(&["update"]), "apt-get update (with bookworm-backports)", fix)?;
    let backports: Vec<&str> = BACKPORTS.iter().map(|(n, _)| *n).filter(|n| missing.contains(n)).collect();
    if !backports.is_empty() {
        let mut args = vec!["install", "-y", "--no-install-recommends", "-t", "bookworm-backports"];
        args.extend(&backports);
        setup::run_step(
            &mut apt(&args),
            &format!("apt-get install -t bookworm-backports {}", backports.join(" ")),
            fix,
        )?;
    }
    let rest: Vec<&str> = PACKAGES.iter().map(|(n, _)| *n).filter(|n| missing.contains(n)).collect();
    if !rest.is_empty() {
        let mut args = vec!["install", "-y", "--no-install-recommends"];
        args.extend(&rest);
        setup::run_step(&mut apt(&args), &format!("apt-get install {}", rest.join(" ")), fix)?;
    }
    say(&format!("VM prerequisites installed in {:.0} s", started.elapsed().as_secs_f64()));
    Ok(())
}

/// A sources directory for apt: the machine's own sources plus bookworm-backports.
fn apt_sources(cache: &Path) -> anyhow::Result<std::path::PathBuf> {
    let parts = cache.join("apt-sources.d");
    fs::create_dir_all(&parts).with_context(|| format!("creating {}", parts.display()))?;
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name_str = name.to_string_lossy();
            if name_str.ends_with(".list") || name_str.ends_with(".sources") {
                fs::copy(entry.path(), parts.join(&name))
                    .with_context(|| format!("copying {} into {}", entry.path().display(), parts.display()))?;
            }
        }
    }
    let backports = parts.join("dataplane-vm-backports.list");
    fs::write(&backports, format!("{BACKPORTS_SOURCE}\n"))
        .with_context(|| format!("writing {}", backports.display()))?;
    Ok(parts)
}
