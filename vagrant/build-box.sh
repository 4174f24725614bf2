#!/bin/bash
# Builds a Debian bookworm libvirt box from Debian's packages: debootstrap, a 4 GiB disk with one
# ext4 partition labelled dpvm-root, GRUB in its MBR, qcow2, tar. Run by `cargo xtask vm box`.
#
#   build-box.sh WORKDIR OUTPUT.box VAGRANT_PUBLIC_KEY
#
# The image has what the VMs need and nothing else: the kernel (Debian's 6.1), systemd, udev,
# iproute2, iperf3, ping, bpftool, an SSH server and a `vagrant` user with the well-known
# Vagrant key and password-less sudo. The first NIC takes DHCP (the management network); the
# private one is configured by the provisioning script. Interfaces keep the kernel's names
# (net.ifnames=0: eth0, eth1), so the scripts can name them.
set -euo pipefail

work=$1
out=$2
pubkey=$3
label=dpvm-root
mirror=http://deb.debian.org/debian
rootfs=$work/rootfs
mnt=$work/mnt
raw=$work/disk.raw
part=$work/part.img
loop=

cleanup() {
    set +e
    for m in proc sys dev; do mountpoint -q "$mnt/$m" && umount "$mnt/$m"; done
    mountpoint -q "$mnt" && umount "$mnt"
    [ -n "$loop" ] && losetup -d "$loop"
    # debootstrap mounts these in the target while it runs; a failed run can leave them.
    for m in dev/pts dev proc sys; do mountpoint -q "$rootfs/$m" && umount -l "$rootfs/$m"; done
    rm -rf --one-file-system "$rootfs" "$raw" "$part" "$mnt"
}
trap cleanup EXIT

cleanup
set -e
mkdir -p "$work" "$rootfs" "$mnt"

echo "[box] debootstrap bookworm (minbase + kernel, systemd, ssh, iproute2, iperf3, bpftool)"
debootstrap --variant=minbase \
    --include=linux-image-amd64,systemd-sysv,udev,kmod,iproute2,iperf3,bpftool,procps,openssh-server,openssh-client,sudo,grub-pc,iputils-ping,ethtool,ca-certificates \
    bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -30 "$work/debootstrap.log"
    exit 1
}

echo "[box] configuring the guest"
# Empty: every clone makes its own id (one id would give every VM the same DHCP lease).
: >"$rootfs/etc/machine-id"
rm -f "$rootfs/var/lib/dbus/machine-id"
echo dpvm >"$rootfs/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 dpvm\n' >"$rootfs/etc/hosts"
echo "LABEL=$label / ext4 defaults,noatime 0 1" >"$rootfs/etc/fstab"
mkdir -p "$rootfs/etc/systemd/network"
cat >"$rootfs/etc/systemd/network/90-management.network" <<NET
[Match]
Name=eth0

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no
NET
chroot "$rootfs" systemctl enable systemd-networkd ssh >/dev/null 2>&1
# Nobody waits for a network that the provisioning script configures later.
chroot "$rootfs" systemctl mask systemd-networkd-wait-online.service >/dev/null 2>&1
chroot "$rootfs" useradd -m -s /bin/bash vagrant
echo 'vagrant ALL=(ALL) NOPASSWD: ALL' >"$rootfs/etc/sudoers.d/vagrant"
chmod 0440 "$rootfs/etc/sudoers.d/vagrant"
install -d -m 0700 -o 1000 -g 1000 "$rootfs/home/vagrant/.ssh"
install -m 0600 -o 1000 -g 1000 "$pubkey" "$rootfs/home/vagrant/.ssh/authorized_keys"
echo 'UseDNS no' >"$rootfs/etc/ssh/sshd_config.d/vagrant.conf"
# Host keys are made at first boot, so no two VMs share them.
rm -f "$rootfs"/etc/ssh/ssh_host_*
cat >"$rootfs/etc/systemd/system/ssh-hostkeys.service" <<UNIT
[Unit]
Description=SSH host keys for this VM
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
UNIT
chroot "$rootfs" systemctl enable ssh-hostkeys.service >/dev/null 2>&1
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/*

kernel=$(cd "$rootfs/boot" && ls vmlinuz-* | sort -V | tail -1)
initrd=initrd.img-${kernel#vmlinuz-}
mkdir -p "$rootfs/boot/grub"
cat >"$rootfs/boot/grub/grub.cfg" <<CFG
set timeout=0
search --no-floppy --label --set=root $label
menuentry 'Debian bookworm' {
    linux /boot/$kernel root=LABEL=$label ro console=ttyS0,115200 net.ifnames=0 biosdevname=0
    initrd /boot/$initrd
}
CFG

echo "[box] disk: 4 GiB, one ext4 partition ($label), GRUB"
rm -f "$raw" "$part"
truncate -s 4G "$raw"
echo 'start=2048, type=83, bootable' | sfdisk -q "$raw"
truncate -s $((4096 - 1))M "$part"
mkfs.ext4 -q -L "$label" -d "$rootfs" "$part"
dd if="$part" of="$raw" bs=1M seek=1 conv=notrunc,sparse status=none
rm -f "$part"
rm -rf "$rootfs"
loop=$(losetup -f --show -P "$raw")
partx -a "$loop" 2>/dev/null || true
for _ in $(seq 50); do [ -b "${loop}p1" ] && break; sleep 0.1; done
mount "${loop}p1" "$mnt"
for m in proc sys dev; do mount --bind "/$m" "$mnt/$m"; done
chroot "$mnt" grub-install --target=i386-pc --boot-directory=/boot "$loop" >"$work/grub.log" 2>&1 || {
    cat "$work/grub.log"
    exit 1
}
for m in proc sys dev; do umount "$mnt/$m"; done
umount "$mnt"
losetup -d "$loop"
loop=

echo "[box] qcow2 and box"
qemu-img convert -O qcow2 "$raw" "$work/box.img"
rm -f "$raw"
echo '{"provider":"libvirt","format":"qcow2","virtual_size":4}' >"$work/metadata.json"
cat >"$work/Vagrantfile" <<VF
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.disk_bus = "virtio"
  end
end
VF
tar -C "$work" -cf "$out" metadata.json Vagrantfile box.img
rm -f "$work/box.img" "$work/metadata.json" "$work/Vagrantfile"
echo "[box] written $out"
