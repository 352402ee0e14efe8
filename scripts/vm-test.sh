#!/bin/sh
# The booted-VM test: what we ship, run by real systemd, real cloud-init and dpkg in a booted
# Debian bookworm guest, against the simulator at Azure's real addresses, with no test override.
#
#   scripts/vm-test.sh          (CI: AGENT_BOOTSTRAP_VM_TESTS=1 scripts/vm-test.sh)
#
# 1. The guest image: scripts/vm-image.sh (debootstrap, cached outside the clone by its inputs).
# 2. Per run, a copy of it gets: the simulator (/opt/azure-sim, tests/vm/azure-sim.service) serving
#    IMDS on a dummy interface at 169.254.169.254 and, over TLS on loopback, dev.azure.com,
#    download.agent.dev.azure.com and example.blob.core.windows.net (named in /etc/hosts), with a
#    certificate from a private test CA that is NOT in the system trust store: the image carries
#    only its PEM file (/etc/ssl/corp/corp-root-ca.pem), as a private CA's users have it;
#    our .deb in the simulated storage account; packaging/cloud-init.yaml itself as NoCloud
#    user-data, with only the package URL, its SHA-256 and CA_FILE filled in (so curl and
#    agent-bootstrap install --ca-file use the CA); the probe (tests/vm/probe.py).
# 3. Three boots of the same disk, with no network device (qemu -nic none):
#    install   cloud-init downloads and verifies the .deb, dpkg installs it, agent-bootstrap
#              install registers the agent; checked: the CA put into the system trust store by
#              update-ca-certificates (the system's OpenSSL now verifies the server), online on the
#              server, one registration, the agent's unit active under real systemd as the agent
#              user, the boot unit enabled and passing systemd-analyze verify;
#    reboot    the boot unit reconciled: still one registration, nothing downloaded again, online;
#              then the probe deletes the agent on the server;
#    deleted   the boot unit re-registered it: a new agent, online; then agent-bootstrap remove: no
#              unit, no process of the agent user, deregistered, the CA out of the system trust
#              store again; and no token in the journal or in any file of the guest.
# Each check is a `VMTEST PASS|FAIL` line the guest writes to its serial console.
#
# Acceleration: KVM when /dev/kvm works with hardware virtualization, else TCG (multi-threaded;
# about 20 s a boot on 2 cores). The paravirtual KVM of some sandboxes hangs a guest at its switch
# to 64-bit mode: it is detected (kvm_pvm, no vmx/svm) and TCG is used. AGENT_BOOTSTRAP_VM_ACCEL=
# kvm|tcg forces one. Without qemu-system-x86_64 or debootstrap, or not as root, the test prints
# `SKIPPED: <reason>` and exits 0, unless AGENT_BOOTSTRAP_VM_TESTS=1, which makes it run or fail.
# Needs: root, debootstrap, qemu-system-x86_64 (scripts/vm-setup.sh), e2fsprogs, the .deb from
# scripts/package.sh (built here if missing) and the simulator (cargo build -p azure-sim).
set -eu
cd "$(dirname "$0")/.."

required=${AGENT_BOOTSTRAP_VM_TESTS:-0}
# The first of the paths a glob gave that exists (none: nothing, status 1).
first() {
    for f in "$@"; do
        [ -e "$f" ] && { printf '%s\n' "$f"; return 0; }
    done
    return 1
}
skip() {
    if [ "$required" = 1 ]; then
        echo "vm-test.sh: FAILED: $* (AGENT_BOOTSTRAP_VM_TESTS=1 requires the booted-VM test)" >&2
        exit 1
    fi
    echo "SKIPPED: booted-VM test: $*"
    exit 0
}
[ "$(id -u)" = 0 ] || skip "not root (debootstrap, chroot and mkfs need it)"
command -v qemu-system-x86_64 >/dev/null 2>&1 || skip "qemu-system-x86_64 is not installed (scripts/vm-setup.sh)"
command -v debootstrap >/dev/null 2>&1 || skip "debootstrap is not installed (scripts/vm-setup.sh)"
command -v mkfs.ext4 >/dev/null 2>&1 || skip "mkfs.ext4 is not installed (e2fsprogs)"

accel=${AGENT_BOOTSTRAP_VM_ACCEL:-}
if [ -z "$accel" ]; then
    accel=tcg
    why="no usable /dev/kvm"
    if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
        if [ -d /sys/module/kvm_pvm ] || ! grep -qwE 'vmx|svm' /proc/cpuinfo; then
            why="/dev/kvm is paravirtual (no vmx/svm): guests hang entering 64-bit mode"
        else
            accel=kvm
            why="/dev/kvm with hardware virtualization"
        fi
    fi
    echo "vm-test.sh: accelerator $accel ($why)" >&2
fi
case $accel in
    kvm) qemu_accel="-accel kvm -cpu host" ;;
    tcg) qemu_accel="-accel tcg,thread=multi" ;;
    *) echo "vm-test.sh: AGENT_BOOTSTRAP_VM_ACCEL must be kvm or tcg, not '$accel'" >&2; exit 2 ;;
esac

# What we ship: the amd64 .deb (scripts/package.sh, which CI has run before this).
deb=$(first target/dist/agent-bootstrap_*_amd64.deb || true)
if [ -z "$deb" ]; then
    echo "vm-test.sh: no .deb in target/dist: running scripts/package.sh" >&2
    scripts/package.sh >&2
    deb=$(first target/dist/agent-bootstrap_*_amd64.deb)
fi
cargo build --locked --quiet -p azure-sim
sim=target/debug/azure-sim

base=$(scripts/vm-image.sh)
work=$(mktemp -d /var/tmp/agent-bootstrap-vm.XXXXXX)
keep_work=1
cleanup() {
    if [ "$keep_work" = 1 ]; then
        echo "vm-test.sh: the guest's disk and serial logs are kept in $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
root="$work/root"
echo "vm-test.sh: preparing the guest in $work" >&2
cp -a "$base" "$root"
rm -f "$root/.complete"

# The corporate root CA: the image carries its PEM file, not in the system trust store (install
# --ca-file puts it there, which the probe checks).
names="dev.azure.com download.agent.dev.azure.com example.blob.core.windows.net"
set --
for n in $names; do set -- "$@" --tls-name "$n"; done
"$sim" make-tls --dir "$work/tls" "$@"
ca_file=/etc/ssl/corp/corp-root-ca.pem
install -D -m 0644 "$work/tls/ca.pem" "$root$ca_file"
ca_body=$(grep -v -- '-----' "$work/tls/ca.pem" | tr -d '\n')
if tr -d '\n' <"$root/etc/ssl/certs/ca-certificates.crt" | grep -qF "$ca_body"; then
    echo "vm-test.sh: the image's trust store already holds the test CA" >&2
    exit 1
fi
printf '127.0.0.1 %s\n' "$names" >>"$root/etc/hosts"

# The simulator, its state and TLS material, and the storage account's files.
install -D -m 0755 "$sim" "$root/opt/azure-sim/azure-sim"
strip "$root/opt/azure-sim/azure-sim" 2>/dev/null || true
install -d -m 0755 "$root/var/lib/azure-sim"
cp -a "$work/tls" "$root/var/lib/azure-sim/tls"
install -D -m 0644 "$deb" "$root/srv/tools/$(basename "$deb")"
for unit in azure-sim vmtest-probe; do
    install -m 0644 "tests/vm/$unit.service" "$root/etc/systemd/system/"
    ln -sf "/etc/systemd/system/$unit.service" "$root/etc/systemd/system/multi-user.target.wants/$unit.service"
done
install -D -m 0755 tests/vm/probe.py "$root/usr/local/sbin/vmtest-probe"

# NoCloud: packaging/cloud-init.yaml as it is, with the values a user fills in.
seed="$root/var/lib/cloud/seed/nocloud"
mkdir -p "$seed"
printf 'instance-id: vmtest-0001\nlocal-hostname: vmtest\n' >"$seed/meta-data"
sha=$(sha256sum "$deb" | cut -d' ' -f1)
sed -e "s|^\( *PACKAGE_URL=\).*|\1https://example.blob.core.windows.net/tools/$(basename "$deb")|" \
    -e "s|^\( *PACKAGE_SHA256=\).*|\1$sha|" -e "s|^\( *CA_FILE=\).*|\1$ca_file|" \
    packaging/cloud-init.yaml >"$seed/user-data"
if diff packaging/cloud-init.yaml "$seed/user-data" | grep '^>' | grep -qv -e PACKAGE_URL= -e PACKAGE_SHA256= -e CA_FILE=; then
    echo "vm-test.sh: the user-data differs from packaging/cloud-init.yaml beyond the package's URL, SHA-256 and CA file" >&2
    exit 1
fi

disk="$work/disk.img"
truncate -s 3G "$disk"
mkfs.ext4 -q -F -L root -d "$root" "$disk"
kernel=$(first "$root"/boot/vmlinuz-*)
initrd=$(first "$root"/boot/initrd.img-*)

failed=0
for phase in install reboot deleted; do
    log="$work/serial-$phase.log"
    echo "vm-test.sh: boot ($phase)" >&2
    start=$(date +%s)
    # shellcheck disable=SC2086 # the accelerator's words
    timeout 600 qemu-system-x86_64 $qemu_accel -m 1536 -smp 2 -display none -nic none -no-reboot \
        -serial "file:$log" -kernel "$kernel" -initrd "$initrd" \
        -append "root=/dev/vda rw console=ttyS0 quiet panic=-1 vmtest.phase=$phase" \
        -drive "file=$disk,format=raw,if=virtio" </dev/null >"$work/qemu-$phase.log" 2>&1 || true
    tr -d '\r' <"$log" | grep '^VMTEST \(PASS\|FAIL\)' >&2 || true
    echo "vm-test.sh: boot ($phase) took $(( $(date +%s) - start )) s" >&2
    if ! tr -d '\r' <"$log" | grep -q "^VMTEST DONE $phase 0\$"; then
        failed=1
        echo "vm-test.sh: FAILED in the $phase boot; the end of its serial console:" >&2
        tr -d '\r' <"$log" | grep -v '^VMTEST \(PASS\|FAIL\)' | tail -n 60 >&2
        break
    fi
done
if [ "$failed" = 1 ]; then
    exit 1
fi
keep_work=0
echo "vm-test.sh: passed (install, reboot, delete and reboot, remove)" >&2
