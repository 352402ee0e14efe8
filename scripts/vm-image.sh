#!/bin/sh
# Prints the path of the booted-VM test's guest: a Debian bookworm root (debootstrap) with a
# kernel, a small initramfs, systemd, cloud-init, curl and the CA tools, as an Azure image of
# Debian carries them, building it first when it is missing. Nothing of ours is in it: the test
# (scripts/vm-test.sh) copies it and adds the simulator, the test CA and the user-data per run.
#
# Cached outside the clone (CI runs in a fresh clone), under
# ${AGENT_BOOTSTRAP_ROOT_CACHE:-/var/cache/agent-bootstrap-tests}, in a directory named by a hash
# of its inputs (suite, packages, mirror, this script): a rerun on the same machine skips the
# build (~90 s), a change of inputs makes a new one.
#
#   scripts/vm-image.sh
#
# Needs debootstrap and root. Messages go to stderr; stdout is the path alone.
set -eu
suite=bookworm
mirror=${AGENT_BOOTSTRAP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# What the guest needs: a kernel and real systemd (with dbus, for systemctl from units), udev,
# iproute2 (IMDS on a dummy interface), procps and python3 (the test's probe), by debootstrap;
# then, by apt-get in the root (debootstrap's own resolver cannot order cloud-init's Python
# dependencies), cloud-init, curl and ca-certificates (cloud-init's runcmd downloads over TLS)
# and libicu72, which the agent needs (.NET), as an image prepared for agents carries it.
packages=systemd,systemd-sysv,udev,dbus,linux-image-amd64,initramfs-tools,kmod,iproute2,procps,python3
extra="cloud-init curl ca-certificates libicu72"
cache=${AGENT_BOOTSTRAP_ROOT_CACHE:-/var/cache/agent-bootstrap-tests}
key=$( { printf '%s\n' "$suite" "$packages" "$extra" "$mirror"; cat "$0"; } | sha256sum | cut -c1-16)
root="$cache/vm-$suite-$key"
if [ -f "$root/.complete" ]; then
    printf '%s\n' "$root"
    exit 0
fi
command -v debootstrap >/dev/null 2>&1 || { echo "vm-image.sh: debootstrap is not installed" >&2; exit 1; }
mkdir -p "$cache"
tmp="$root.partial.$$"
rm -rf "$tmp"
trap 'rm -rf "$tmp"' EXIT
echo "vm-image.sh: building the $suite guest into $root" >&2
debootstrap --variant=minbase --include="$packages" "$suite" "$tmp" "$mirror" >"$cache/debootstrap-vm.log" 2>&1 \
    || { tail -n 20 "$cache/debootstrap-vm.log" >&2; exit 1; }
# shellcheck disable=SC2086 # a list of package names
{ chroot "$tmp" apt-get update -q && DEBIAN_FRONTEND=noninteractive chroot "$tmp" \
    apt-get install -y -q --no-install-recommends $extra; } >>"$cache/debootstrap-vm.log" 2>&1 \
    || { tail -n 20 "$cache/debootstrap-vm.log" >&2; exit 1; }

echo vmtest >"$tmp/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 vmtest\n' >"$tmp/etc/hosts"
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' >"$tmp/etc/fstab"
# The journal kept on disk, across the test's reboots (it is searched for tokens at the end).
mkdir -p "$tmp/var/log/journal"
# No getty on the serial console: it would hang up the tty the probe writes its results to.
for unit in serial-getty@ttyS0.service getty@tty1.service; do
    ln -sf /dev/null "$tmp/etc/systemd/system/$unit"
done
# cloud-init looks only at NoCloud (the seed directory the test writes), as an image made for one
# cloud looks only at that cloud's datasource.
mkdir -p "$tmp/etc/cloud/cloud.cfg.d"
printf 'datasource_list: [ NoCloud, None ]\n' >"$tmp/etc/cloud/cloud.cfg.d/90-datasource.cfg"
# The image has no locales package: its locale is the built-in C.UTF-8 (cloud-init's default,
# en_US.UTF-8, is not generated here and update-locale would refuse it).
printf 'locale: C.UTF-8\n' >"$tmp/etc/cloud/cloud.cfg.d/90-locale.cfg"
# A small initramfs: virtio disk and ext4 only (boots ~7 s faster under TCG than the generic one).
sed -i 's/^MODULES=.*/MODULES=list/' "$tmp/etc/initramfs-tools/initramfs.conf"
printf 'virtio_pci\nvirtio_blk\next4\n' >>"$tmp/etc/initramfs-tools/modules"
for dir in "$tmp"/lib/modules/*; do kver=$(basename "$dir"); done
chroot "$tmp" mkinitramfs -o "/boot/initrd.img-$kver" "$kver" >>"$cache/debootstrap-vm.log" 2>&1
chroot "$tmp" apt-get clean
rm -rf "$tmp"/var/lib/apt/lists/*

touch "$tmp/.complete"
rm -rf "$root"
mv "$tmp" "$root"
trap - EXIT
printf '%s\n' "$root"
